"""Offline editing (StylePortraitVideo): Eq. 7 loss terms, video adaptation, `stylestream edit` end to end."""

from __future__ import annotations

import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from export.artifacts import exported_models
from export.onnx import export_bundle
from models.bundle import DEFAULT_BUNDLE, load_bundle
from models.editing import EditStack
from realtime.cli import main
from realtime.engines import EngineOptions, EngineSpec, make_engine
from realtime.io.sources import open_source
from realtime.pipeline.calibration import CalibrationConfig, Calibrator
from realtime.vision.align import align_crop
from realtime.vision.topology import BROW_LEFT_UPPER, BROW_RIGHT_UPPER, EYE_LEFT_LOOP, EYE_RIGHT_LOOP, LIPS_INNER_LOOP
from realtime.vision.tracking import track_sequence
from tests.media import _add_audio, _write_audio
from training.adapt import AdaptConfig, adapt_generator, invert_crops, reconstruction, save_adapted
from training.expression import (
    ExpressionConfig,
    eye_mask,
    eye_term,
    lip_term,
    optimise_expression,
    reg_term,
    temporal_term,
)
from training.losses import RandomConvPerceptual, load_face_mesh

BUNDLE = DEFAULT_BUNDLE
needs_bundle = pytest.mark.skipif(not (BUNDLE / "bundle.json").exists(), reason="default bundle missing")


def _landmarks(b: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 468, 3, generator=g) * 40 + 12


# ------------------------------------------------------------------------------------------------ loss terms
def test_lip_term_zero_for_identical_and_known_for_shift() -> None:
    lm = _landmarks()
    assert float(lip_term(lm, lm.clone(), 64)) == 0.0
    moved = lm.clone()
    moved[:, list(LIPS_INNER_LOOP), 1] += 3.2  # every inner-lip point 3.2 px down → (3.2 / 64)²
    assert float(lip_term(moved, lm, 64)) == pytest.approx((3.2 / 64) ** 2, rel=1e-5)
    other = lm.clone()
    other[:, 1, :2] += 10.0  # a landmark outside the inner lips does not count
    assert float(lip_term(other, lm, 64)) == 0.0


def test_temporal_and_reg_terms() -> None:
    dw = torch.full((5, 10, 64), 0.3)
    assert float(temporal_term(dw)) == 0.0
    assert float(reg_term(dw)) == pytest.approx(0.09)
    assert float(reg_term(torch.zeros(3, 10, 64))) == 0.0
    alt = torch.zeros(4, 10, 64)
    alt[1::2] = 1.0  # 0,1,0,1 → every neighbour differs by 1
    assert float(temporal_term(alt)) == pytest.approx(1.0)
    # the previous chunk's last Δw links the chunks
    assert float(temporal_term(dw, prev=torch.full((10, 64), 0.3))) == 0.0
    assert float(temporal_term(dw, prev=torch.zeros(10, 64))) == pytest.approx(0.09 / 5)
    assert float(temporal_term(dw[:1])) == 0.0


def test_eye_mask_and_eye_term_only_see_the_eyes() -> None:
    lm = torch.zeros(1, 468, 3)
    lm[0, :, 0], lm[0, :, 1] = 32.0, 46.0  # everything at the mouth …
    lm[0, list(EYE_LEFT_LOOP), 0] = 22 + torch.cos(torch.linspace(0, 6.28, len(EYE_LEFT_LOOP))) * 4  # … but the eyes
    lm[0, list(EYE_LEFT_LOOP), 1] = 26 + torch.sin(torch.linspace(0, 6.28, len(EYE_LEFT_LOOP))) * 2
    lm[0, list(EYE_RIGHT_LOOP), 0] = 42 + torch.cos(torch.linspace(0, 6.28, len(EYE_RIGHT_LOOP))) * 4
    lm[0, list(EYE_RIGHT_LOOP), 1] = 26 + torch.sin(torch.linspace(0, 6.28, len(EYE_RIGHT_LOOP))) * 2

    lm[0, list(BROW_LEFT_UPPER), 0], lm[0, list(BROW_LEFT_UPPER), 1] = 22.0, 21.0
    lm[0, list(BROW_RIGHT_UPPER), 0], lm[0, list(BROW_RIGHT_UPPER), 1] = 42.0, 21.0
    m = eye_mask(lm, 64)
    assert m.shape == (1, 1, 64, 64)
    assert float(m[0, 0, 26, 22]) > 0.9 and float(m[0, 0, 26, 42]) > 0.9
    assert float(m[0, 0, 50, 32]) < 0.01  # the mouth is outside
    perc = RandomConvPerceptual()
    a = torch.rand(1, 3, 64, 64) * 2 - 1
    b = a.clone()
    b[..., 44:, :] = -a[..., 44:, :]  # change only the lower face
    assert float(eye_term(perc, a, b, m)) < 1e-3
    c = a.clone()
    c[..., 20:32, 14:50] = 1.0  # change the eyes
    assert float(eye_term(perc, c, b, m)) > 1e-2


# ------------------------------------------------------------------------------------------------ models
@pytest.fixture(scope="module")
def clip() -> tuple[object, torch.Tensor]:
    if not (BUNDLE / "bundle.json").exists():
        pytest.skip("default bundle missing")
    with open_source("demo:portrait?seconds=0.4&fps=15&seed=9103&size=320x240") as src:
        frames = list(src)
    tracks = track_sequence(frames)
    crops = torch.stack([align_crop(f.image, t.quad, 64).image
                         for f, t in zip(frames, tracks, strict=True) if t.has_face]).float()
    assert crops.shape[0] >= 4
    return load_bundle(BUNDLE), crops


@needs_bundle
def test_adaptation_lowers_reconstruction_error(clip: tuple[object, torch.Tensor], tmp_path: Path) -> None:
    torch.set_num_threads(1)
    bundle = load_bundle(BUNDLE)
    crops = clip[1]
    ws = invert_crops(bundle, crops)
    assert ws.shape == (crops.shape[0], 10, 64)
    before = reconstruction(bundle, crops, ws)["psnr"]
    summary = adapt_generator(bundle, crops, ws, AdaptConfig(iters=12, batch=4))
    after = reconstruction(bundle, crops, ws)["psnr"]
    assert after > before + 0.3, (before, after)
    assert summary["loss_last"] < summary["loss_first"]
    # the mapping network (and so the edit directions' W space) is untouched; the adapted bundle round-trips
    ref = load_bundle(BUNDLE)
    for (k, a), (_, b) in zip(bundle.generator.mapping.state_dict().items(),
                              ref.generator.mapping.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    out = save_adapted(bundle, tmp_path / "adapted", summary, source="test")
    again = load_bundle(out)
    assert "adapted" in again.provenance
    # issue 17.14: it is no longer "default" (the name /config, info and reports show)
    assert again.name != ref.name and again.name.startswith(f"{ref.name}+adapted-20"), again.name
    assert again.provenance["adapted"]["from"] == ref.name
    assert reconstruction(again, crops, ws)["psnr"] == pytest.approx(after, abs=1e-3)


@needs_bundle
def test_expression_optimisation_pulls_lips_to_target(clip: tuple[object, torch.Tensor]) -> None:
    torch.set_num_threads(1)
    mesh = load_face_mesh()
    if mesh is None:
        pytest.skip("face mesh weights missing")
    bundle, crops = clip
    crops = crops[:4]
    ws = invert_crops(bundle, crops)
    stack = EditStack.from_bundle(bundle)
    stack.set_strengths({"smile": 2.0}, reset=True)
    we, sd = stack.apply(ws)
    with torch.no_grad():
        target = mesh(crops)
    cfg = ExpressionConfig(iters=6, lr=3e-3, chunk=3)  # two chunks (3 + 1 frames), linked by the temporal term
    dw, summary = optimise_expression(bundle.generator, we, target, mesh, sd or None, cfg)
    assert dw.shape == we.shape and torch.isfinite(dw).all() and float(dw.abs().sum()) > 0
    assert summary["chunks"] == 2
    with torch.no_grad():
        g = bundle.generator
        lip0 = float(lip_term(mesh(g.synthesis(we, noise_mode="const", style_deltas=sd or None)), target, 64))
        lip1 = float(lip_term(mesh(g.synthesis(we + dw, noise_mode="const", style_deltas=sd or None)), target, 64))
    assert lip1 < lip0


# ------------------------------------------------------------------------------------------------ CLI
def _write_portrait_clip(path: Path, seconds: float = 0.6, fps: int = 10) -> int:
    with open_source(f"demo:portrait?seconds={seconds}&fps={fps}&seed=9104&size=320x240") as src:
        frames = [f.image for f in src]
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = 320, 240, "yuv420p"
        vs.options = {"preset": "ultrafast", "crf": "12"}
        a = _add_audio(out, "aac", 48000)
        for i, img in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(img, format="rgb24")
            vf.pts, vf.time_base = i, Fraction(1, fps)
            out.mux(vs.encode(vf))
        out.mux(vs.encode(None))
        _write_audio(out, a, seconds)
    return len(frames)


def _probe(path: Path) -> tuple[int, bool]:
    with av.open(str(path)) as c:
        has_audio = bool(c.streams.audio)
        n = sum(1 for _ in c.decode(video=0))
    return n, has_audio


@needs_bundle
def test_edit_cli_end_to_end_and_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in.mp4"
    n = _write_portrait_clip(src)
    out, work = tmp_path / "out.mp4", tmp_path / "work"
    argv = ["edit", str(src), "-o", str(out), "--edit", "smile=1.5", "--adapt", "--adapt-iters", "2",
            "--preserve-expression", "--expr-iters", "1", "--work", str(work)]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert "reused" not in first
    frames, audio = _probe(out)
    assert frames == n and audio
    for name in ("tracks.npz", "latents.pt", "adapted/bundle.json", "deltas.pt", "state.json"):
        assert (work / name).exists(), name
    # the output differs from the input where the face is (the edit was applied)
    with av.open(str(src)) as a, av.open(str(out)) as b:
        fa = next(a.decode(video=0)).to_ndarray(format="rgb24").astype(np.float32)
        fb = next(b.decode(video=0)).to_ndarray(format="rgb24").astype(np.float32)
    assert np.abs(fa - fb).mean() > 0.2
    assert main(argv) == 0
    second = capsys.readouterr().out
    for phase in ("track", "invert", "adapt", "optimise"):
        assert f"{phase}: reused" in second, second
    assert _probe(out)[0] == n
    # a changed option redoes only what depends on it
    assert main([*argv[:-2], "--expr-iters", "2", "--work", str(work)]) == 0
    third = capsys.readouterr().out
    assert "adapt: reused" in third and "optimise: reused" not in third


@pytest.mark.parametrize("argv, message", [
    (["edit", "/nonexistent/clip.mp4", "-o", "OUT"], "not found"),
    (["edit", "demo:portrait?seconds=0.2", "-o", "OUT", "--edit", "frown=1"], "unknown edit"),
    (["edit", "demo:portrait?seconds=0.2", "-o", "OUT", "--preserve-expression"], "needs at least one --edit"),
    (["edit", "demo:portrait?seconds=0.2"], "no output"),
    (["edit", "demo:portrait?seconds=0.2", "-o", "OUT", "--edit", "smile"], "NAME=STRENGTH"),
])
def test_edit_cli_bad_input_is_one_line(argv: list[str], message: str, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    argv = [str(tmp_path / "o.mp4") if a == "OUT" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "o.mp4").exists()


@needs_bundle
@pytest.mark.slow
def test_calibrator_adapts_a_copy_in_background_and_hands_it_over_once(clip: tuple[object, torch.Tensor]) -> None:
    bundle = load_bundle(BUNDLE)
    crops = clip[1]
    n = crops.shape[0]
    ws = invert_crops(bundle, crops)
    before = reconstruction(bundle, crops, ws)["psnr"]
    built: list[object] = []
    cal = Calibrator(CalibrationConfig(frames=n, stride=1, iters=12), build=lambda b, _d: built.append(b) or b)
    assert cal.take() is None and cal.status()["state"] == "idle"  # nothing to hand over yet
    assert cal.start(bundle) and cal.recording and cal.busy
    assert not cal.start(bundle)  # one at a time
    for i in range(n):
        cal.record(crops[i:i + 1], ws[i:i + 1])
    assert cal.state in ("adapting", "building", "ready")
    cal.join(60)
    assert cal.state == "ready", cal.error
    result = cal.take()
    assert result is built[0] and cal.state == "active" and cal.take() is None  # handed over once
    assert result.generator is not bundle.generator and result.fren is bundle.fren  # a copy of G only
    assert reconstruction(bundle, crops, ws)["psnr"] == pytest.approx(before, abs=1e-4)  # the base is untouched
    after = reconstruction(result, crops, ws)["psnr"]
    assert after > before + 0.3
    st = cal.status()
    assert st["psnr"]["before"] == pytest.approx(before, abs=0.01) and st["psnr"]["after"] == pytest.approx(after,
                                                                                                          abs=0.01)
    assert set(st["seconds"]) == {"record", "start", "adapt", "build", "total"}
    assert result.provenance["calibrated"]["frames"] == n
    assert "heldout_before" not in st["psnr"]  # stride 1: every frame trains, none is held out

    # stride 2: the frames in between are held out, and the adaptation helps them too (same face, same session)
    cal = Calibrator(CalibrationConfig(frames=n // 2, stride=2, iters=12))
    assert cal.start(bundle)
    for i in range(n // 2 * 2):
        cal.record(crops[i:i + 1], ws[i:i + 1])
    cal.join(60)
    held = cal.status()["psnr"]
    assert cal.state == "ready" and held["heldout_after"] > held["heldout_before"], held


@needs_bundle
@pytest.mark.slow
def test_calibrator_stride_cancel_and_failure(clip: tuple[object, torch.Tensor]) -> None:
    bundle = load_bundle(BUNDLE)
    crops = clip[1][:4]
    ws = invert_crops(bundle, crops)
    cal = Calibrator(CalibrationConfig(frames=2, stride=2, iters=400))
    assert cal.start(bundle)
    for i in range(3):  # stride 2: frames 0 and 2 are kept, so the third record launches the adaptation
        assert cal.recording
        cal.record(crops[i:i + 1], ws[i:i + 1])
    assert cal.state == "adapting"
    cal.cancel()  # abandoned mid-adaptation: nothing is handed over
    cal.join(60)
    assert cal.state == "idle" and cal.take() is None

    # cancelled while the stream's engine is being built: nothing is handed over, the state stays idle

    building, go = threading.Event(), threading.Event()

    def slow_build(b: object, _dir: object) -> object:
        building.set()
        go.wait(30)
        return b

    cal = Calibrator(CalibrationConfig(frames=1, stride=1, iters=2), build=slow_build)
    assert cal.start(bundle)
    cal.record(crops[:1], ws[:1])
    assert building.wait(60) and cal.state == "building"
    cal.cancel()
    go.set()
    cal.join(30)
    assert cal.state == "idle" and cal.take() is None and cal.start(bundle)

    def broken(_bundle: object, _dir: object) -> object:
        raise RuntimeError("no device left")

    cal = Calibrator(CalibrationConfig(frames=1, stride=1, iters=2), build=broken)
    assert cal.start(bundle)
    cal.record(crops[:1], ws[:1])
    cal.join(60)
    assert cal.state == "failed" and "no device left" in cal.status()["error"] and cal.take() is None
    assert cal.start(bundle)  # a failed calibration can be retried
    with pytest.raises(ValueError, match="≥ 1"):
        Calibrator(CalibrationConfig(frames=0))


@pytest.mark.slow
def test_calibrator_reports_every_phase_it_spends(tiny_bundle, tmp_path: Path) -> None:
    """Issue 17.11: on a loaded machine request → swap took ≈ 53 s while the camera printed "adapted 19.4 s, engine
    built 0.3 s": the worker's start (shown as "adapting 0 %") and the ONNX export (shown as "building 0 %") were
    missing. Every phase is now a named phase with its own wall time, and the parts add up to the total the
    caller waited."""
    g = torch.Generator().manual_seed(0)
    s = tiny_bundle.crop_size
    crops = torch.rand(4, 3, s, s, generator=g) * 2 - 1
    ws = invert_crops(tiny_bundle, crops)

    base_dir = tmp_path / "base-onnx"  # the stream's own export: its encoders are copied, not exported again
    export_bundle(tiny_bundle, base_dir, precision="fp32")
    built: list[dict[str, float]] = []

    def build(bundle: object, model_dir: object) -> object:
        assert set(exported_models(model_dir, bundle, "fp32")) == {"fren", "vien", "synthesis"}
        eng = make_engine(bundle, EngineSpec("onnx", "cpu", "fp32", options=EngineOptions(model_dir=model_dir)))
        ref = make_engine(tiny_bundle, EngineSpec("onnx", "cpu", "fp32", options=EngineOptions(model_dir=base_dir)))
        built.append({"fren": float((eng.encode_key(crops[:1]) - ref.encode_key(crops[:1])).abs().max()),
                      "synthesis": float((eng.synthesize(ws[:1]) - ref.synthesize(ws[:1])).abs().max())})
        time.sleep(0.3)
        return bundle

    cal = Calibrator(CalibrationConfig(frames=4, stride=1, iters=60), build=build, export_precision="fp32",
                     export_from=base_dir)
    t0 = time.perf_counter()
    assert cal.start(tiny_bundle)
    time.sleep(0.3)  # no face in view at first: that wait is a phase too, or the parts would not add up
    for i in range(4):
        cal.record(crops[i:i + 1], ws[i:i + 1])
    seen: list[str] = []
    progress: dict[str, float] = {}
    while cal.busy and time.perf_counter() - t0 < 120:
        st = cal.status()
        if not seen or seen[-1] != st["phase"]:
            seen.append(st["phase"])
        progress[st["phase"]] = max(progress.get(st["phase"], 0.0), st["progress"])
        time.sleep(0.005)
    waited = time.perf_counter() - t0
    assert cal.state == "ready", cal.error
    assert seen == ["starting", "adapting", "exporting", "building"], seen
    assert progress["adapting"] > 0.5 and progress["exporting"] > 0.5, progress
    sec = cal.status()["seconds"]
    assert set(sec) == {"wait", "record", "start", "adapt", "export", "build", "total"}, sec
    assert sec["wait"] >= 0.3, sec
    assert sec["build"] >= 0.3 and sec["start"] > 0.5 and sec["export"] > 0.1, sec  # a process start takes seconds
    parts = sum(v for k, v in sec.items() if k != "total")
    assert abs(parts - sec["total"]) < 0.1 and abs(sec["total"] - waited) < 0.2, (sec, waited)
    assert cal.take().name.startswith(f"{tiny_bundle.name}+calibrated-20")
    assert built[0]["fren"] == 0.0 and built[0]["synthesis"] > 1e-3, built  # encoders reused, generator adapted
