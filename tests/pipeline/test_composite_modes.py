"""The two compositing modes (DESIGN §9) on every runner: transfer keeps the user's own frame (exactly, without an
edit), regenerate pastes the generator's face; auto picks between them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from models.bundle import DEFAULT_BUNDLE, load_bundle
from realtime import cli
from realtime.api import Filter
from realtime.engines import EngineSpec, TorchEngine, make_engine
from realtime.frames import Frame, Output
from realtime.io.sources import open_source
from realtime.io.stills import load_still, make_clip, webcam_motion
from realtime.pipeline import FrameProcessor, PipelineConfig
from realtime.pipeline.processor import StreamState
from realtime.vision import transfer
from realtime.vision.composite import face_mask, mask_bbox, paste_roi
from realtime.vision.geometry import crop_affine, landmarks_to_crop
from realtime.vision.tracking import FaceTracker
from tests import REPO
from tests.media import probe

CLIP = "demo:?seconds=1&fps=10&size=320x240"


class CountingEngine(TorchEngine):
    """Counts the generator's calls and the batch sizes it was given."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.synth_batches: list[int] = []
        self.encodes = 0

    def encode_key(self, crops):
        self.encodes += 1
        return super().encode_key(crops)

    def encode_reuse(self, crops, prev_ws):
        self.encodes += 1
        return super().encode_reuse(crops, prev_ws)

    def synthesize(self, ws, style_deltas=None):
        self.synth_batches.append(int(ws.shape[0]))
        return super().synthesize(ws, style_deltas)


class Recorder:
    """A sink that keeps every output (the test compares them with the frames that went in)."""

    def __init__(self) -> None:
        self.outputs: list[Output] = []

    def write(self, out: Output) -> None:
        self.outputs.append(out)


def _run(flt: Filter, spec: str = CLIP) -> tuple[list[Frame], list[Output]]:
    with open_source(spec, live=False) as src:
        frames = list(src)
    sink = Recorder()
    flt.run(frames, sink, live=False)
    return frames, sink.outputs


def test_transfer_without_an_edit_leaves_every_frame_exactly_as_it_came(tiny_bundle):
    eng = CountingEngine(tiny_bundle, device="cpu")
    with Filter(engine=eng, composite="transfer", live=False) as flt:
        frames, outs = _run(flt)
    assert len(outs) == len(frames) == 10
    assert all(np.array_equal(o.image, f.image) for o, f in zip(outs, frames, strict=True))  # bit-exact
    assert eng.synth_batches == [] and eng.encodes == 0  # no model work at all


def test_transfer_with_an_edit_moves_the_face_and_leaves_the_rest(tmp_path):
    """The default bundle's smile on the demo face: the generator renders G(w) and G(w+Δ) in one call, the face
    changes, and nothing outside the face mask's box changes."""
    bundle = load_bundle(DEFAULT_BUNDLE)
    eng = CountingEngine(bundle, device="cpu")
    with Filter(engine=eng, edits={"smile": 2.0}, composite="transfer", live=False) as flt:
        frames, outs = _run(flt, "demo:?seconds=1&fps=10&size=480x360")
        tracker_cfg = flt.tracker_config
    assert eng.synth_batches and set(eng.synth_batches) == {2}  # reconstruction + edit, one batch of two
    changed = [not np.array_equal(o.image, f.image) for o, f in zip(outs, frames, strict=True)]
    assert sum(changed) >= 8  # every frame with a face is edited
    # outside the face: untouched (the box of the face mask, through the crop transform, bounds every change)
    with FaceTracker(tracker_cfg) as tracker:
        track = tracker.track(frames[5])
    size = bundle.crop_size
    to_frame = crop_affine(track.quad, size)
    x0, y0, x1, y1 = paste_roi(to_frame, mask_bbox(face_mask(landmarks_to_crop(track.landmarks, to_frame), size)),
                               480, 360)
    out = outs[5].image.copy()
    out[max(0, y0 - 8):y1 + 8, max(0, x0 - 8):x1 + 8] = frames[5].image[max(0, y0 - 8):y1 + 8,
                                                                         max(0, x0 - 8):x1 + 8]
    assert np.array_equal(out, frames[5].image)
    assert outs[5].face


def test_auto_picks_regenerate_for_random_identity_and_a_calibrated_generator():
    bundle = load_bundle(DEFAULT_BUNDLE)
    eng = make_engine(bundle, EngineSpec("torch", "cpu"))
    with Filter(engine=eng, live=False) as flt:
        proc: FrameProcessor = flt.processor
        assert flt.composite == "auto" and proc.resolve_composite() == "transfer"
        flt.set_edit("smile", 1.0)
        assert proc.resolve_composite() == "transfer"
        flt.set_edit("random_identity", 1.0)  # an edit that must replace the face
        assert proc.resolve_composite() == "regenerate"
        flt.set_edit("random_identity", 0.0)
        other = make_engine(bundle, EngineSpec("torch", "cpu"))
        proc._use_engine(other)  # what a finished live calibration does: the stream's own generator
        assert proc.resolve_composite() == "regenerate"
        flt.composite = "transfer"  # an explicit choice wins
        assert proc.resolve_composite() == "transfer"
        proc._use_engine(proc.base_engine)
        with pytest.raises(Exception, match="composite must be one of"):
            flt.composite = "paste"


def test_a_live_transfer_stream_warms_its_render_mesh_before_the_first_frame(tiny_bundle):
    """The runner prepares a live stream: in transfer mode its EditTransfer exists before any frame and the shared
    render mesh is built on the background thread (docs/live.md: the first face frame 29–33 ms vs 188–210 ms); file
    jobs and regenerate streams get nothing ahead."""
    eng = make_engine(tiny_bundle, EngineSpec("torch", "cpu"))
    proc = FrameProcessor(eng, PipelineConfig(composite="transfer"))
    live, offline = StreamState(live=True), StreamState(live=False)
    proc.prepare_stream(live)
    proc.prepare_stream(offline)
    assert live.transfer is not None and live.transfer.background and offline.transfer is None
    transfer._mesh_pool().submit(lambda: None).result(timeout=60)  # the warm-up ran before this on the one thread
    assert transfer._SHARED_MESH is not None
    regen = StreamState(live=True)
    FrameProcessor(eng, PipelineConfig(composite="regenerate")).prepare_stream(regen)
    assert regen.transfer is None


@pytest.mark.parametrize("mode", ["transfer", "regenerate"])
def test_run_cli_in_each_mode(tmp_path, tiny_bundle_dir, mode, capsys):
    out = tmp_path / f"{mode}.mp4"
    rc = cli.main(["run", CLIP, "-o", str(out), "--bundle", str(tiny_bundle_dir), "--backend", "torch",
                   "--edit", "brighter=2", "--composite", mode])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert probe(out).frames == 10
    report = json.loads(Path(str(out) + ".stylestream.json").read_text())
    assert report["pipeline_config"]["composite"] == mode and report["stats"]["faces"] >= 8


def test_bad_composite_flag_is_one_line(tiny_bundle_dir, tmp_path):
    r = subprocess.run([sys.executable, "-m", "realtime.cli", "run", CLIP, "-o", str(tmp_path / "o.mp4"),
                        "--composite", "paste"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "invalid choice: 'paste'" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_offline_edit_in_each_mode(tmp_path, capsys):
    """`stylestream edit` on a face no training run saw (Grace Hopper, moving like a webcam): with
    `--composite transfer` the person keeps their own face (the face region stays close to the input), with
    `--composite regenerate` the generator's face replaces it (far from the input)."""
    still = load_still("grace_hopper")
    size = (320, 240)
    clip = make_clip(tmp_path / "in.mp4", webcam_motion(6, size, centre=still.centre, scale=0.55), size, fps=10,
                     still=still)
    fy, fx = slice(60, 180), slice(100, 220)  # the face (scale 0.55 of a 200-px face around the frame centre)
    err = {}
    for mode in ("transfer", "regenerate"):
        out = tmp_path / f"{mode}.mp4"
        stats = tmp_path / f"{mode}.json"
        rc = cli.main(["edit", str(clip.path), "-o", str(out), "--edit", "smile=1.5", "--composite", mode, "--work",
                       str(tmp_path / f"w-{mode}"), "--stats-json", str(stats)])
        assert rc == 0, capsys.readouterr().err
        assert json.loads(stats.read_text())["composite"] == mode
        with av.open(str(out)) as c:
            img = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)][-1].astype(np.float32)  # faded in
        err[mode] = float(np.abs(img[fy, fx] - clip.frames[-1][fy, fx].astype(np.float32)).mean())
    assert err["transfer"] < 0.5 * err["regenerate"], err
