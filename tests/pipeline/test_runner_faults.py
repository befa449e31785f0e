"""Tolerant StageRunner (server peers) when the model fails: frames go out without it, counted; the model is retried
after a back-off and the stream recovers by itself; strict runners still stop on the first error."""

from __future__ import annotations

import threading

import pytest

from realtime.engines import EngineSpec, make_engine
from realtime.engines.serial import ForwardingEngine
from realtime.frames import Frame, Output
from realtime.io import stills
from realtime.pipeline import FrameProcessor, PipelineConfig, StageRunner
from realtime.pipeline.runner import RETRY_MAX_S
from realtime.vision.tracking import FaceTracker, TrackerConfig


class Flaky(ForwardingEngine):
    """A real engine that raises ConnectionError (like an unreachable model server) while ``down`` is set."""

    def __init__(self, engine):
        super().__init__(engine)
        self.down = threading.Event()
        self.calls = 0

    def _check(self):
        self.calls += 1
        if self.down.is_set():
            raise ConnectionError("model server unreachable")

    def encode_key(self, crops):
        self._check()
        return self._engine.encode_key(crops)

    def encode_reuse(self, crops, prev_ws):
        self._check()
        return self._engine.encode_reuse(crops, prev_ws)

    def synthesize(self, ws, style_deltas=None):
        self._check()
        return self._engine.synthesize(ws, style_deltas)

    def close(self):
        self._engine.close()


@pytest.fixture(scope="module")
def frames():
    mats = stills.static_motion(8)
    return stills.render(mats), mats


def _runner(engine, mats, tolerant: bool):
    outs: list[Output] = []
    got = threading.Semaphore(0)

    def emit(out: Output) -> None:
        outs.append(out)
        got.release()

    tracker = lambda: FaceTracker(TrackerConfig(), source=stills.OracleLandmarks(mats))  # noqa: E731
    # regenerate: every frame calls the model (transfer without an edit passes the frame through untouched)
    proc = FrameProcessor(engine, PipelineConfig(composite="regenerate"))
    runner = StageRunner(proc, tracker, live=True, queue_size=4, tolerant=tolerant, emit=emit, name="flaky")
    return runner.start(), outs, got


def test_tolerant_runner_counts_frames_without_the_model_and_recovers(tiny_bundle, frames):
    images, mats = frames
    eng = Flaky(make_engine(tiny_bundle, EngineSpec("torch", "cpu", "fp32")))
    runner, outs, got = _runner(eng, mats, tolerant=True)
    index = 0

    def step() -> Output:
        nonlocal index
        runner.submit(Frame(image=images[index % len(images)], index=index))
        index += 1
        assert got.acquire(timeout=30)
        return outs[-1]

    try:
        for _ in range(4):
            step()
        assert runner.faults() == {"state": "ok", "errors": 0, "frames_without_model": 0, "recoveries": 0,
                                   "failing_s": None, "last_outage_s": None}
        faces_before = runner.state.faces
        eng.down.set()
        calls = eng.calls
        for _ in range(6):
            out = step()
            assert out.image.shape == images[0].shape  # every frame still goes out
        f = runner.faults()
        assert f["state"] == "failing" and f["frames_without_model"] == 6 and 1 <= f["errors"] <= 2
        assert eng.calls - calls <= 2  # backing off: the failing model is not called on every frame
        assert "ConnectionError: model server unreachable" in (runner.error or "")
        eng.down.clear()
        deadline = 0
        while runner.faults()["state"] != "ok" and deadline < 200:
            step()
            deadline += 1
            threading.Event().wait(RETRY_MAX_S / 40)
        f = runner.faults()
        assert f["state"] == "ok" and f["recoveries"] == 1 and f["last_outage_s"] is not None
        assert runner.state.faces > faces_before
        assert "model server unreachable" in (runner.error or "")  # the last failure stays readable
    finally:
        runner.stop(10)
    assert not runner.alive()


def test_strict_runner_stops_on_the_first_model_error(tiny_bundle, frames):
    images, mats = frames
    eng = Flaky(make_engine(tiny_bundle, EngineSpec("torch", "cpu", "fp32")))
    eng.down.set()
    runner, _, _ = _runner(eng, mats, tolerant=False)
    runner.submit(Frame(image=images[0], index=0))
    runner.join(30)
    assert not runner.alive()
    with pytest.raises(ConnectionError):
        runner.raise_error()
