"""The frame pipeline and the `run` / `camera` commands: ordering, audio, overload, Ctrl-C, bad input."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from models.bundle import load_bundle
from models.editing import EditStack, tensor_key
from models.errors import UserError
from realtime import cli
from realtime.engines import TorchEngine
from realtime.frames import Crop, Frame, Track
from realtime.io.sinks import open_sink
from realtime.io.sources import open_source
from realtime.pipeline import (
    CLOSED,
    FrameProcessor,
    LookaheadSmoother,
    Pipeline,
    PipelineConfig,
    StageQueue,
    StreamState,
)
from realtime.vision.tracking import FaceTracker, TrackerConfig
from tests import REPO
from tests.bundles import make_tiny_e4e_bundle
from tests.media import (
    probe,
    write_audio_only,
    write_clip,
    write_empty,
    write_garbage,
    write_resolution_change,
    write_rotated_clip,
    write_truncated_mp4,
)

# ---------------------------------------------------------------------------------------------- units


def test_stage_queue_drop_oldest_and_lossless():
    q = StageQueue(2, drop_oldest=True)
    for i in range(5):
        q.put(i)
    assert q.dropped == 3 and [q.get(), q.get()] == [3, 4]
    q.close()
    assert q.get() is CLOSED
    lossless = StageQueue(1, drop_oldest=False)
    lossless.put(1)
    t0 = time.monotonic()

    threading.Timer(0.3, lossless.get).start()
    lossless.put(2)  # blocks until the consumer takes item 1
    assert time.monotonic() - t0 >= 0.25 and lossless.dropped == 0 and lossless.get() == 2


def test_lookahead_smoother_releases_every_frame_in_order_and_smooths():
    rng = np.random.default_rng(0)
    base = np.array([[100, 100], [100, 300], [300, 300], [300, 100]], np.float32)
    sm = LookaheadSmoother(sigma=2.0)
    out = []
    raw = []
    for i in range(40):
        q = base + rng.normal(0, 3, size=(4, 2)).astype(np.float32)
        raw.append(q)
        tr = Track(landmarks=np.zeros((468, 3), np.float32), score=1.0, quad=q) if i != 20 else Track(None)
        out += sm.push(Frame(np.zeros((4, 4, 3), np.uint8), index=i), tr)
    out += sm.flush()
    assert [f.index for f, _ in out] == list(range(40))
    assert not out[20][1].has_face
    jit_raw = np.mean([np.abs(raw[i + 1] - raw[i]).mean() for i in range(5, 15)])
    jit_sm = np.mean([np.abs(out[i + 1][1].quad - out[i][1].quad).mean() for i in range(5, 15)])
    assert jit_sm < 0.5 * jit_raw


class _CountingEngine(TorchEngine):
    def __init__(self, *a, delay_s: float = 0.0, **k):
        super().__init__(*a, **k)
        self.keys = self.reuses = self.coarses = 0
        self.delay_s = delay_s

    def encode_key(self, crops):
        self.keys += 1
        return super().encode_key(crops)

    def encode_reuse(self, crops, prev_ws):
        self.reuses += 1
        return super().encode_reuse(crops, prev_ws)

    def encode_coarse(self, crops, prev_ws):
        self.coarses += 1
        return super().encode_coarse(crops, prev_ws)

    def synthesize(self, ws, style_deltas=None):
        if self.delay_s:
            time.sleep(self.delay_s)  # a deliberately slow engine (overload test)
        return super().synthesize(ws, style_deltas)


def test_key_frame_policy_interval_drift_and_fine_blend(tiny_bundle_dir):
    eng = _CountingEngine(load_bundle(tiny_bundle_dir), device="cpu")
    proc = FrameProcessor(eng, PipelineConfig(key_interval=5, fine_blend_frames=3, drift_threshold=0.5))
    st = StreamState()
    crop = Crop(image=torch.rand(3, 64, 64) * 2 - 1, to_frame=np.eye(2, 3), size=64)
    sources = [proc.encode(crop, st).source for _ in range(13)]
    assert [i for i, s in enumerate(sources) if s == "key"] == [0, 6, 12]  # first, then after 5 reuse frames
    assert eng.keys == 3 and eng.reuses == 12  # a refresh runs both encoders
    proc.encode(crop, st)
    other = Crop(image=torch.full_like(crop.image, 0.8), to_frame=crop.to_frame, size=64)  # lighting change: drift
    enc = proc.encode(other, st)
    assert enc.source == "key" and enc.why == "drift" and st.latent.blend_to is not None
    assert not torch.equal(enc.ws[:, eng.num_coarse:], st.latent.blend_to)  # blended in, not switched at once
    for _ in range(2):
        proc.encode(other, st)
    assert st.latent.blend_to is None  # blend finished after fine_blend_frames


def test_reuse_modes_pick_the_encoder_and_carry_the_fine_layers(tiny_bundle):
    """--reuse: auto is ViEN with one and coarse reuse without; coarse reuse carries the key frame's fine rows
    exactly and a refresh runs the key encoder once (its own coarse rows); off encodes every frame; vien without a
    ViEN is one UserError before any frame."""
    crops = [Crop(image=torch.rand(3, 64, 64) * 2 - 1, to_frame=np.eye(2, 3), size=64) for _ in range(7)]

    def run(engine, **cfg):
        proc = FrameProcessor(engine, PipelineConfig(key_interval=4, fine_blend_frames=0, drift_threshold=0, **cfg))
        st = StreamState()
        return [proc.encode(c, st) for c in crops]

    eng = _CountingEngine(tiny_bundle, device="cpu")
    run(eng)  # auto, the bundle has a ViEN
    assert (eng.keys, eng.reuses, eng.coarses) == (2, 6, 0)  # frames 0 and 5 are key frames, a refresh runs ViEN too
    eng = _CountingEngine(tiny_bundle, device="cpu")
    enc = run(eng, reuse="coarse")
    assert (eng.keys, eng.reuses, eng.coarses) == (2, 0, 5)  # the refresh at frame 5: one key-encoder run, nothing else
    assert [e.source for e in enc] == ["key", "reuse", "reuse", "reuse", "reuse", "key", "reuse"]
    c = eng.num_coarse
    for t in (1, 2, 3, 4):
        assert torch.equal(enc[t].ws[:, c:], enc[0].ws[:, c:])  # the key frame's fine rows, exactly
        torch.testing.assert_close(enc[t].ws[:, :c], eng.encode_key(crops[t].image[None])[:, :c])
    assert torch.equal(enc[6].ws[:, c:], enc[5].ws[:, c:]) and not torch.equal(enc[5].ws[:, c:], enc[0].ws[:, c:])
    eng = _CountingEngine(tiny_bundle, device="cpu")
    enc = run(eng, reuse="off")
    assert (eng.keys, eng.reuses, eng.coarses) == (7, 0, 0)
    assert [e.why for e in enc] == ["start"] + ["every"] * 6
    torch.testing.assert_close(enc[3].ws, eng.encode_key(crops[3].image[None]))

    e4e = _CountingEngine(make_tiny_e4e_bundle(), device="cpu")
    assert not e4e.has_vien
    run(e4e)  # auto without a ViEN: coarse reuse
    assert (e4e.keys, e4e.coarses) == (2, 5)
    with pytest.raises(UserError, match="--reuse vien: bundle 'tiny-e4e' has no ViEN; use --reuse coarse"):
        FrameProcessor(e4e, PipelineConfig(reuse="vien"))


def test_edit_stack_composition_identity_and_unknown_names(tiny_bundle_dir):
    b = load_bundle(tiny_bundle_dir)
    stack = EditStack.from_bundle(b)
    ws = torch.randn(2, 10, 64)
    assert stack.apply(ws)[0] is ws and not stack.active()  # strength 0 = identity
    stack.set_strength("brighter", 2.0)
    out, deltas = stack.apply(ws)
    d = b.extra[tensor_key("brighter")]
    assert torch.allclose(out, ws + 2 * d) and deltas is None  # "brighter" moves every W+ entry
    with pytest.raises(UserError, match="unknown edit 'smile'"):
        stack.set_strength("smile", 1.0)


# ---------------------------------------------------------------------------------------------- CLI runs


def _run_cli(argv, capsys):
    rc = cli.main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_run_keeps_frames_audio_and_timestamps(tmp_path, tiny_bundle_dir, capsys):
    clip = write_clip(tmp_path / "in.mp4", width=320, height=240, fps=15, seconds=1.0, audio=True)
    out = tmp_path / "out.mp4"
    rc, _, err = _run_cli(["run", str(clip.path), "-o", str(out), "--bundle", str(tiny_bundle_dir)], capsys)
    assert rc == 0, err
    src, dst = probe(clip.path), probe(out)
    assert dst.frames == src.frames == 15
    assert abs(dst.video_seconds - src.video_seconds) < 0.1
    assert dst.audio_seconds > 0 and abs(dst.audio_seconds - src.audio_seconds) < 0.1
    assert dst.pts_monotonic
    report = json.loads((tmp_path / "out.mp4.stylestream.json").read_text())
    assert report["stats"]["frames_out"] == 15 and report["stats"]["faces"] == 0  # a pattern clip has no face


def test_run_with_a_face_edit_side_by_side(tmp_path, tiny_bundle_dir, capsys):
    out = tmp_path / "sbs.mp4"
    rc, _, err = _run_cli(["run", "demo:?seconds=1&fps=10&size=480x360", "-o", str(out), "--bundle",
                           str(tiny_bundle_dir), "--edit", "brighter=1.5", "--side-by-side"], capsys)
    assert rc == 0, err
    info = probe(out)
    assert info.frames == 10 and info.sizes[0] == (960, 360)
    report = json.loads((tmp_path / "sbs.mp4.stylestream.json").read_text())
    assert report["stats"]["faces"] >= 8 and report["edits"] == {"brighter": 1.5}
    assert report["stats"]["key_frames"] >= 1


def test_resolution_change_mid_stream_keeps_going(tmp_path, tiny_bundle_dir, capsys):
    path = write_resolution_change(tmp_path / "rc.mkv")
    out = tmp_path / "rc_out.mp4"
    rc, _, err = _run_cli(["run", str(path), "-o", str(out), "--bundle", str(tiny_bundle_dir)], capsys)
    assert rc == 0, err
    assert probe(out).frames == probe(path).frames


@pytest.mark.slow
def test_overload_drops_frames_and_keeps_latency_bounded(tiny_bundle_dir):
    eng = _CountingEngine(load_bundle(tiny_bundle_dir), device="cpu", delay_s=0.15)
    # regenerate: every frame does model work (transfer with no edit passes frames through untouched)
    proc = FrameProcessor(eng, PipelineConfig(queue_size=1, composite="regenerate"))
    src = open_source("demo:?seconds=3&fps=30&size=480x360", realtime=True)
    assert src.is_live
    with src, open_sink("null:", width=480, height=360, fps=30) as sink, \
            FaceTracker(TrackerConfig(fps=30)) as tracker:
        stats = Pipeline(src, tracker, proc, sink, live=True).run()
    assert stats.frames_in == 90
    assert sum(stats.dropped.values()) > 30 and stats.frames_out < 60
    # Without drops the 90th frame would wait ~90·0.15 − 3 ≈ 10 s; bounded queues keep it well under 1.5 s.
    assert stats.latency_summary()["p99_ms"] < 1500


def _interrupt_cli(argv: list[str], ready: Callable[[], bool], timeout: float = 60) -> tuple[int, str]:
    """Run ``python -m realtime.cli ARGV``, wait until ``ready()`` (or the command ends), then Ctrl-C it:
    (exit code, stderr)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    p = subprocess.Popen([sys.executable, "-m", "realtime.cli", *argv], cwd=REPO, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not ready() and p.poll() is None:
            time.sleep(0.3)
        time.sleep(1.0)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    return p.returncode, err


@pytest.mark.slow
def test_sigint_leaves_a_playable_file_with_every_processed_frame(tmp_path, tiny_bundle_dir):
    out = tmp_path / "int.mp4"
    rc, err = _interrupt_cli(["run", "demo:?seconds=60&fps=30&size=320x240", "-o", str(out), "--bundle",
                              str(tiny_bundle_dir)], ready=lambda: out.exists() and out.stat().st_size >= 20_000)
    assert rc == 130, err
    report = json.loads((tmp_path / "int.mp4.stylestream.json").read_text())
    written = report["stats"]["frames_out"]
    assert report["stats"]["interrupted"] and 0 < written < 1800
    assert probe(out).frames == written
    assert "Traceback" not in err


def _signal_at(argv: list[str], sig: int, moment: Callable[[str], bool], env: dict[str, str],
               timeout: float = 90) -> tuple[int, str]:
    """Start ``python -m realtime.cli ARGV``, send ``sig`` as soon as ``moment(stderr so far)`` is true (polled
    every 2 ms) → (exit code, stderr)."""
    err_path = Path(env["STYLESTREAM_CACHE"]).parent / f"stderr-{time.monotonic_ns()}.txt"
    with err_path.open("w") as err_file:
        p = subprocess.Popen([sys.executable, "-m", "realtime.cli", *argv], cwd=REPO, env=env,
                             stdout=subprocess.DEVNULL, stderr=err_file)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and p.poll() is None and not moment(err_path.read_text()):
                time.sleep(0.002)
            assert p.poll() is None, "the command ended before the moment came: " + err_path.read_text()[-2000:]
            p.send_signal(sig)
            p.wait(60)
        finally:
            if p.poll() is None:
                p.kill()
    return p.returncode, err_path.read_text()


@pytest.mark.slow
def test_a_signal_during_start_up_is_one_line_exit_130_and_no_broken_file(tmp_path, tiny_bundle_dir):
    """Issue 17.6: Ctrl-C at ~1 s printed a KeyboardInterrupt traceback (the command was still importing) and
    SIGTERM at ~2 s could leave a 48-byte unplayable mp4. At every moment of start-up — loading the command,
    during the first run's ONNX export, right after the output file is created — one line, exit 130, and no
    file or a playable one; the interrupted export leaves a cache the next run can use."""
    out = tmp_path / "out.mp4"
    env = {k: v for k, v in os.environ.items() if k != "STYLESTREAM_MEDIAPIPE_LOGS"}
    env.update(PYTHONUNBUFFERED="1", STYLESTREAM_CACHE=str(tmp_path / "cache"))
    run = ["run", "demo:?seconds=30&fps=15&size=320x240", "-o", str(out), "--bundle", str(tiny_bundle_dir)]
    started = 0.0
    trials = [  # (what, signal, backend, moment)
        ("loading the command", signal.SIGINT, "onnx", lambda err: time.monotonic() - started > 1.0),
        ("exporting to ONNX", signal.SIGTERM, "onnx", lambda err: "exporting fren" in err),
        ("the output file was just created", signal.SIGINT, "torch", lambda err: out.exists()),
        ("the output file was just created", signal.SIGTERM, "torch", lambda err: out.exists()),
    ]
    for what, sig, backend, moment in trials:
        started = time.monotonic()
        rc, err = _signal_at([*run, "--backend", backend], sig, moment, env)
        lines = [ln for ln in err.splitlines() if ln.strip() and "━" not in ln and "stylestream: " not in ln
                 and not ln.startswith(" ")]
        assert rc == 130 and "Traceback" not in err, (what, sig, rc, err)
        assert lines and re.fullmatch(r"stylestream run: interrupted|interrupted: \d+ frames written to .*",
                                      lines[-1]), (what, sig, err)
        if out.exists():  # nothing, or a video with every frame it says
            info = probe(out)
            assert info.frames > 0 and info.decode_error is None, (what, sig, info)
            out.unlink()
    r = subprocess.run([sys.executable, "-m", "realtime.cli", "run", "demo:?seconds=0.6&fps=5&size=320x240", "-o",
                        str(out), "--bundle", str(tiny_bundle_dir), "--backend", "onnx"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0 and probe(out).frames == 3, r.stderr[-2000:]


@pytest.mark.parametrize(
    "kind,message",
    [
        ("missing", "not found|No such file|does not exist"),
        ("empty", "empty"),
        ("garbage", "not a video|cannot read|Invalid|unrecognised|could not"),
        ("truncated_index", "truncated|index|moov|cannot read|Invalid"),
        ("audio_only", "no video stream"),
        ("scheme", "unsupported|not supported"),
        ("rtmp_down", "cannot connect|unreachable|refused|could not|failed"),
        ("bad_output", "cannot write|cannot create|does not exist|not writable|Permission"),
        ("bundle_missing", "bundle not found"),
        ("bundle_broken", "not valid JSON"),
        ("unknown_edit", "unknown edit 'smile'"),
    ],
)
def test_bad_input_is_one_clear_line_and_nonzero_exit(tmp_path, tiny_bundle_dir, kind, message, capsys):
    inp = str(tmp_path / "in.mp4")
    out = str(tmp_path / "out.mp4")
    bundle = str(tiny_bundle_dir)
    extra: list[str] = []
    if kind == "missing":
        inp = str(tmp_path / "nope.mp4")
    elif kind == "empty":
        write_empty(inp)
    elif kind == "garbage":
        write_garbage(inp)
    elif kind == "truncated_index":
        write_truncated_mp4(inp, keep=0.5, index_first=False)  # index lost: nothing decodable
    elif kind == "audio_only":
        inp = str(write_audio_only(tmp_path / "a.m4a"))
    elif kind == "scheme":
        inp = "gopher://example/video"
    elif kind == "rtmp_down":
        write_clip(inp, width=160, height=120, fps=10, seconds=0.5)
        out = "rtmp://127.0.0.1:9/live/x"
    elif kind == "bad_output":
        write_clip(inp, width=160, height=120, fps=10, seconds=0.5)
        out = str(tmp_path / "no" / "such" / "dir" / "out.mp4")
        Path(tmp_path / "no").write_text("a file where a folder should be")
    elif kind == "bundle_missing":
        write_clip(inp, width=160, height=120, fps=10, seconds=0.5)
        bundle = str(tmp_path / "nobundle")
    elif kind == "bundle_broken":
        write_clip(inp, width=160, height=120, fps=10, seconds=0.5)

        shutil.copytree(tiny_bundle_dir, tmp_path / "broken")
        (tmp_path / "broken" / "bundle.json").write_text("{oops")
        bundle = str(tmp_path / "broken")
    elif kind == "unknown_edit":
        write_clip(inp, width=160, height=120, fps=10, seconds=0.5)
        extra = ["--edit", "smile=1"]
    rc, _, err = _run_cli(["run", inp, "-o", out, "--bundle", bundle, *extra], capsys)
    assert rc == 2
    lines = [line for line in err.strip().splitlines() if line.startswith("stylestream")]
    assert len(lines) == 1 and "Traceback" not in err

    assert re.search(message, lines[0], re.IGNORECASE), lines[0]


def test_portrait_phone_video_is_tracked_and_written_upright(tmp_path, tiny_bundle_dir, capsys):
    """Issue 17.5: a portrait phone recording (stored sideways, rotate -90 in its display matrix) came out sideways,
    exit 0, no warning, and the face tracker saw a sideways face. Now the frames are turned upright when decoded,
    so the output is the upright picture (no display matrix needed) and the face is tracked on every frame."""
    with open_source("demo:astronaut?seconds=1&fps=10&size=240x320") as demo:  # portrait, face upright
        upright = [f.image for f in demo]
    phone = write_rotated_clip(tmp_path / "phone.mp4", upright, degrees=-90)
    out = tmp_path / "out.mp4"
    rc, _, err = _run_cli(["run", str(phone), "-o", str(out), "--bundle", str(tiny_bundle_dir)], capsys)
    assert rc == 0, err
    info = probe(out)
    assert info.frames == 10 and set(info.sizes) == {(240, 320)} and info.rotations == {0}
    report = json.loads((tmp_path / "out.mp4.stylestream.json").read_text())
    assert report["stats"]["faces"] == 10, report["stats"]
    assert (report["source"]["rotation"], report["source"]["mirrored"]) == (-90, False)


def test_truncated_recording_with_index_first_is_filtered_up_to_the_cut(tmp_path, tiny_bundle_dir, capsys):
    inp = write_truncated_mp4(tmp_path / "cut.mp4", keep=0.5, index_first=True, seconds=2.0, fps=15)
    rc, _, err = _run_cli(["run", str(inp), "-o", str(tmp_path / "o.mp4"), "--bundle", str(tiny_bundle_dir)], capsys)
    assert rc == 0, err
    assert 5 < probe(tmp_path / "o.mp4").frames < 30


def test_list_edits(tiny_bundle_dir, capsys):
    rc, out, _ = _run_cli(["run", "--list-edits", "--bundle", str(tiny_bundle_dir)], capsys)
    assert rc == 0 and "brighter" in out and "w_direction" in out


def test_camera_into_a_registered_virtual_camera_backend(tiny_bundle_dir, capsys):
    received: list[np.ndarray] = []

    class Backend:
        def __init__(self, *, width, height, fps, fourcc, device, **kw):
            self.width, self.height = width, height

        def close(self):
            pass

        def send(self, frame):
            received.append(np.array(frame).reshape(self.height, self.width, 3))

        def device(self):
            return "test-cam"

        def native_fourcc(self):
            return None

    name = "stylestream-test-pipeline"
    pyvirtualcam = pytest.importorskip("pyvirtualcam")  # optional: the sink imports it on use
    pyvirtualcam.register_backend(name, Backend)
    rc, _, err = _run_cli(["camera", "--source", "demo:?seconds=1&fps=10&size=320x240", "-o",
                           f"virtualcam:?backend={name}", "--bundle", str(tiny_bundle_dir)], capsys)
    assert rc == 0, err
    assert 1 <= len(received) <= 10 and received[0].shape == (240, 320, 3)


@pytest.mark.slow
def test_camera_finishes_a_calibration_the_source_outran_or_fails_clearly(tmp_path, tiny_bundle_dir, capsys):
    """Issue 17.12: `camera --source FILE --calibrate --save-calibrated DIR` with a file that ends before the
    calibration finishes saved nothing, said nothing and exited 0. Now a calibration that is adapting is finished
    and saved after the source ends; one that cannot finish (too few face frames) is one clear line, exit 2."""
    with open_source("demo:astronaut?seconds=1.5&fps=10&size=320x240") as demo:
        clip = write_rotated_clip(tmp_path / "short.mp4", [f.image for f in demo], degrees=0, fps=10)
    saved = tmp_path / "calibrated"
    common = ["camera", "--source", str(clip), "-o", "null:", "--bundle", str(tiny_bundle_dir), "--backend", "torch",
              "--calibrate", "--calibrate-stride", "1", "--save-calibrated", str(saved)]
    rc, _, err = _run_cli([*common, "--calibrate-frames", "4", "--calibrate-iters", "20"], capsys)
    assert rc == 0, err
    assert "the source ended; finishing the calibration" in err and "saved the calibrated bundle" in err, err
    cal = load_bundle(saved)
    assert cal.provenance["calibrated"]["frames"] == 4 and cal.name.startswith(f"{load_bundle(tiny_bundle_dir).name}"
                                                                               "+calibrated-")
    shutil.rmtree(saved)
    rc, _, err = _run_cli([*common, "--calibrate-frames", "100"], capsys)
    assert rc == 2 and not saved.exists(), err
    lines = [ln for ln in err.splitlines() if ln.startswith("stylestream camera: error")]
    assert len(lines) == 1 and "of the 100 face frames" in lines[0] and "nothing saved" in lines[0], err


@pytest.mark.slow
def test_camera_calibrates_live_saves_the_bundle_and_keeps_streaming(tmp_path, tiny_bundle_dir):
    """`camera --calibrate --save-calibrated`: the stream keeps being written while the generator adapts in the
    background; the calibrated bundle is saved and loads; Ctrl-C still leaves a playable file."""

    out, saved = tmp_path / "cal.mp4", tmp_path / "calibrated"
    rc, err = _interrupt_cli(["camera", "--source", "demo:?seconds=120&fps=15&size=320x240", "-o", str(out),
                              "--bundle", str(tiny_bundle_dir), "--calibrate", "--calibrate-frames", "4",
                              "--calibrate-stride", "1", "--calibrate-iters", "30", "--save-calibrated", str(saved),
                              "--backend", "onnx"], ready=lambda: (saved / "bundle.json").exists(), timeout=150)
    assert rc == 130, err
    assert "calibration: active" in err and "saved the calibrated bundle" in err, err
    cal = load_bundle(saved)
    base = load_bundle(tiny_bundle_dir)
    assert cal.provenance["calibrated"]["psnr_after"] > cal.provenance["calibrated"]["psnr_before"]
    moved = sum(float((a - b).abs().sum()) for a, b in zip(cal.generator.synthesis.parameters(),
                                                            base.generator.synthesis.parameters(), strict=True))
    assert moved > 0 and torch.equal(cal.fren.head[2].weight, base.fren.head[2].weight)
    report = json.loads((tmp_path / "cal.mp4.stylestream.json").read_text())
    assert probe(out).frames == report["stats"]["frames_out"] > 0
    assert "Traceback" not in err
