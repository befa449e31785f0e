"""The frame pipeline: capture → tracking → device worker → sink, on threads with bounded queues (DESIGN §2).

* **Live sources** (cameras, network streams, live-paced files): every queue holds at most ``queue_size`` items
  and drops the *oldest* when full, so latency stays bounded when a stage is slow; drops are counted per queue.
* **File jobs**: queues block instead (lossless, ordered), and the alignment quads are smoothed non-causally
  with a Gaussian over a sliding look-ahead window (StylePortraitVideo §3.1) before the device worker sees them.

The device worker (:class:`FrameProcessor`) owns all model work: align → encode (FrEN on key frames, ViEN with
previous-frame fine-layer reuse otherwise) → edit → synthesize → paste back. Per-stream latent state lives in
:class:`StreamState`, never in a global, so one processor can serve many streams (the live server).

Key frames (Video2StyleGAN reuses fine layers forever; we refresh them): FrEN runs on the first frame, after the
face was lost, every ``key_interval`` frames and when the aligned crop drifts from the last key frame's
(lighting or appearance change). A refresh blends the new fine layers in over ``fine_blend_frames`` frames so the
appearance does not jump.
"""

from __future__ import annotations

import collections
import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from models.editing import EditContext, EditStack
from realtime.engines import Engine
from realtime.frames import Frame, Output, Track, now_ns

# ----------------------------------------------------------------------------------------------------------------
# Configuration


@dataclass
class PipelineConfig:
    """How frames are processed. CLI flags are generated from these fields."""

    key_interval: int = 30  # run FrEN (refresh fine layers) every N frames; 0 = only first frame and after loss
    fine_blend_frames: int = 4  # frames over which refreshed fine layers are blended in
    drift_threshold: float = 0.12  # mean |Δ| of a 16×16 crop thumbnail vs the last key frame forcing a refresh
    queue_size: int = 2  # live mode: capacity of each inter-stage queue (oldest dropped when full)
    smoothing_sigma: float = 2.0  # file mode: Gaussian σ (frames) over alignment quads; 0 = off
    side_by_side: bool = False  # output original | filtered side by side (double width)
    color_match: bool = False  # match the generated face's colour statistics to the original skin
    align: str = "auto"  # "device": grid_sample on the engine's device; "cpu": OpenCV; "auto": device on CUDA


# ----------------------------------------------------------------------------------------------------------------
# Timing


class StageTimes:
    """Rolling per-stage milliseconds (thread-safe), plus totals for the run summary."""

    def __init__(self, window: int = 240):
        self._lock = threading.Lock()
        self._recent: dict[str, collections.deque[float]] = {}
        self._total: dict[str, list[float]] = {}
        self.window = window

    def add(self, stage: str, ms: float) -> None:
        with self._lock:
            self._recent.setdefault(stage, collections.deque(maxlen=self.window)).append(ms)
            self._total.setdefault(stage, []).append(ms)

    @contextlib.contextmanager
    def measure(self, stage: str, into: dict[str, float] | None = None):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            ms = (time.perf_counter() - t0) * 1e3
            self.add(stage, ms)
            if into is not None:
                into[stage] = into.get(stage, 0.0) + ms

    def recent(self) -> dict[str, float]:
        """Mean ms per stage over the rolling window."""
        with self._lock:
            return {k: float(np.mean(v)) for k, v in self._recent.items() if v}

    def summary(self) -> dict[str, dict[str, float]]:
        with self._lock:
            out = {}
            for k, v in self._total.items():
                a = np.asarray(v)
                out[k] = {"mean_ms": float(a.mean()), "p50_ms": float(np.percentile(a, 50)),
                          "p90_ms": float(np.percentile(a, 90)), "n": int(a.size)}
            return out


# ----------------------------------------------------------------------------------------------------------------
# Bounded queues


class _Closed:
    pass


CLOSED = _Closed()


class StageQueue:
    """Bounded FIFO between two stages. ``drop_oldest`` (live) evicts the oldest item when full and counts it;
    otherwise ``put`` blocks (file jobs). ``close()`` lets the consumer drain and then receive :data:`CLOSED`."""

    def __init__(self, maxsize: int, drop_oldest: bool, name: str = ""):
        self.maxsize, self.drop_oldest, self.name = max(1, maxsize), drop_oldest, name
        self._items: collections.deque[Any] = collections.deque()
        self._cv = threading.Condition()
        self._closed = False
        self.dropped = 0
        self.dropped_items: list[Any] = []  # the last few dropped items (for accounting), bounded

    def put(self, item: Any, stop: threading.Event | None = None) -> bool:
        """Returns False if the queue was closed (item not queued)."""
        with self._cv:
            while len(self._items) >= self.maxsize and not self._closed:
                if self.drop_oldest:
                    self._items.popleft()
                    self.dropped += 1
                    break
                self._cv.wait(0.1)
                if stop is not None and stop.is_set() and not self.drop_oldest:
                    # A hard stop: don't block forever on a consumer that is gone.
                    return False
            if self._closed:
                return False
            self._items.append(item)
            self._cv.notify_all()
            return True

    def get(self, timeout: float | None = None) -> Any:
        """Next item, or CLOSED when closed and drained. ``timeout`` → None when nothing arrived in time."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            while not self._items:
                if self._closed:
                    return CLOSED
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cv.wait(0.1 if remaining is None else min(0.1, remaining))
            item = self._items.popleft()
            self._cv.notify_all()
            return item

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    def __len__(self) -> int:
        with self._cv:
            return len(self._items)


# ----------------------------------------------------------------------------------------------------------------
# Per-stream latent state and the device worker


@dataclass
class StreamState:
    """Everything one video stream carries from frame to frame (never shared between streams)."""

    prev_ws: torch.Tensor | None = None  # [1, num_ws, w_dim] on the engine device
    since_key: int = 0  # frames since the last FrEN refresh
    key_thumb: torch.Tensor | None = None  # [3, 16, 16] crop thumbnail at the last key frame
    blend_from: torch.Tensor | None = None  # fine layers being blended away from
    blend_to: torch.Tensor | None = None  # fine layers being blended towards
    blend_step: int = 0
    frames: int = 0
    key_frames: int = 0
    faces: int = 0
    last_source: str = ""  # "key", "reuse" or "none" for the last frame
    extra: dict[str, Any] = field(default_factory=dict)  # room for edits / compositor state

    def reset_latent(self) -> None:
        self.prev_ws = None
        self.key_thumb = None
        self.blend_from = self.blend_to = None
        self.blend_step = 0


class FrameProcessor:
    """align → encode (key / reuse) → edit → synthesize → paste back, for one frame of one stream."""

    def __init__(self, engine: Engine, config: PipelineConfig | None = None, edits: EditStack | None = None,
                 times: StageTimes | None = None, calibration: Any = None):
        """One processor per stream: ``engine`` may be shared between streams, ``edits`` (live strengths),
        ``times`` and a live calibration (``calibration``: a :class:`realtime.pipeline.calibration.CalibrationConfig`, default
        settings when None) belong to this stream."""
        self.base_engine = engine  # shared; never closed by the processor
        self.engine = engine  # the base engine, or this stream's own after a live calibration
        self.cfg = config or PipelineConfig()
        self.edits = edits
        self.times = times or StageTimes()
        self.enabled = True  # live toggle: False passes frames through untouched
        self.calibration_cfg = calibration
        self.calibrator: Any = None  # realtime.pipeline.calibration.Calibrator, made on the first calibrate()
        self._revert = False

    # -- live calibration (StylePortraitVideo adaptation on a few seconds of this stream) -----------------------

    def calibrate(self) -> bool:
        """Start a live calibration (any thread; no model work here): the next face frames are recorded, a copy of
        the base generator is adapted to them in a worker process, and this stream switches to its own engine
        between two frames. False when one is already under way."""
        from realtime.engines import engine_like
        from realtime.pipeline.calibration import Calibrator

        if self.calibrator is None:
            base = self.base_engine
            device = base.device if base.device.type == "cuda" else torch.device("cpu")
            onnx = base.spec.backend == "onnx"  # the worker exports the adapted bundle too
            self.calibrator = Calibrator(self.calibration_cfg, device=device,
                                         export_precision=base.precision if onnx else None,
                                         build=lambda bundle, model_dir: engine_like(base, bundle, model_dir))
        return bool(self.calibrator.start(self.base_engine.bundle))

    def reset_calibration(self) -> None:
        """Cancel a calibration under way and go back to the base engine (at the next frame)."""
        if self.calibrator is not None:
            self.calibrator.cancel()
        self._revert = True

    def calibration_status(self) -> dict[str, Any]:
        return self.calibrator.status() if self.calibrator is not None else {"state": "idle", "progress": 0.0}

    def _use_engine(self, engine: Engine) -> None:
        old, self.engine = self.engine, engine
        if old is not self.base_engine and old is not engine:
            old.close()

    def _poll_calibration(self) -> None:
        """Device thread, between frames: revert or swap in a finished calibration's engine."""
        if self._revert:
            self._revert = False
            self._use_engine(self.base_engine)
        if self.calibrator is not None:
            engine = self.calibrator.take()
            if engine is not None:
                self._use_engine(engine)

    def release(self) -> None:
        """End of the stream: cancel a calibration and close this stream's own engine (not the shared one)."""
        if self.calibrator is not None:
            self.calibrator.cancel()
            self.calibrator.join(30)  # the adaptation stops at its next step
        self._use_engine(self.base_engine)

    # -- latent policy ------------------------------------------------------------------------------------------

    def _needs_key(self, state: StreamState, thumb: torch.Tensor) -> str | None:
        if state.prev_ws is None:
            return "start"
        if self.cfg.key_interval and state.since_key >= self.cfg.key_interval:
            return "interval"
        drift = float((thumb - state.key_thumb).abs().mean()) if state.key_thumb is not None else 0.0
        if self.cfg.drift_threshold > 0 and drift > self.cfg.drift_threshold:
            return "drift"
        return None

    def encode(self, crop: torch.Tensor, state: StreamState) -> tuple[torch.Tensor, str]:
        """crop [1, 3, S, S] on the engine device → (ws [1, num_ws, w_dim], "key" | "reuse")."""
        eng = self.engine
        c = eng.num_coarse
        thumb = torch.nn.functional.adaptive_avg_pool2d(crop.float(), 16)[0]
        why = self._needs_key(state, thumb)
        if why == "start":
            ws = eng.encode_key(crop)
            src = "key"
        elif why is not None:
            key_ws = eng.encode_key(crop)
            ws = eng.encode_reuse(crop, state.prev_ws)
            # Blend the refreshed fine layers in over a few frames instead of switching at once.
            state.blend_from, state.blend_to, state.blend_step = ws[:, c:].clone(), key_ws[:, c:], 0
            src = "key"
        else:
            ws = eng.encode_reuse(crop, state.prev_ws)
            src = "reuse"
        if src == "key":
            state.since_key = 0
            state.key_thumb = thumb
            state.key_frames += 1
        else:
            state.since_key += 1
        if state.blend_to is not None:
            state.blend_step += 1
            n = max(1, self.cfg.fine_blend_frames)
            t = min(1.0, state.blend_step / n)
            ws = torch.cat([ws[:, :c], torch.lerp(state.blend_from, state.blend_to, t)], dim=1)
            if t >= 1.0:
                state.blend_from = state.blend_to = None
        state.prev_ws = ws
        return ws, src

    # -- one frame ----------------------------------------------------------------------------------------------

    def process(self, frame: Frame, track: Track, state: StreamState) -> Output:
        from realtime.frames import Crop
        from realtime.vision import align as _align
        from realtime.vision.composite import CompositeConfig, Compositor

        timings: dict[str, float] = {}
        state.frames += 1
        image = frame.image
        compositor = state.extra.get("compositor")
        if compositor is None:
            compositor = state.extra["compositor"] = Compositor(CompositeConfig(color_match=self.cfg.color_match))
        self._poll_calibration()
        eng = self.engine
        if not self.enabled:
            result, face = image, False
        elif track.has_face:
            state.faces += 1
            with self.times.measure("align", timings):
                on_device = self.cfg.align == "device" or (self.cfg.align == "auto" and eng.device.type == "cuda")
                if on_device:
                    img_t = torch.from_numpy(image).to(eng.device).permute(2, 0, 1).unsqueeze(0)
                    crop, to_frame = _align.align_crops_torch(img_t, track.quad[None], eng.crop_size)
                    to_frame = to_frame[0]
                else:
                    c = _align.align_crop(image, track.quad, eng.crop_size)
                    crop = torch.from_numpy(c.image).permute(2, 0, 1).unsqueeze(0).to(eng.device)
                    to_frame = c.to_frame
            with self.times.measure("encode", timings):
                ws, src = self.encode(crop, state)
            if self.calibrator is not None and self.calibrator.recording:
                self.calibrator.record(crop, ws)  # the unedited latent: calibration reconstructs the user
            style_deltas = None
            if self.edits is not None and self.edits.active():
                with self.times.measure("edit", timings):
                    ctx = EditContext(landmarks=track.landmarks, to_frame=to_frame, crop_size=eng.crop_size)
                    ws, style_deltas = self.edits.apply(ws, context=ctx)
            with self.times.measure("generate", timings):
                fake = eng.synthesize(ws, style_deltas)  # [1, 3, R, R]
            with self.times.measure("composite", timings):
                r = fake.shape[-1]
                crop_img = crop[0].permute(1, 2, 0).cpu().numpy() if self.cfg.color_match else crop[0]
                if r != eng.crop_size:  # re-express the crop transform for the generator's resolution
                    crop_img = torch.nn.functional.interpolate(crop[:, :3], size=(r, r), mode="bilinear",
                                                               align_corners=False, antialias=True)[0]
                    if self.cfg.color_match:
                        crop_img = crop_img.permute(1, 2, 0).cpu().numpy()
                    to_frame = rescale_affine(to_frame, eng.crop_size / r)
                out = compositor.composite(frame, track, Crop(image=crop_img, to_frame=to_frame, size=r), fake[0])
                result, face = out.image, out.face
            state.last_source = src
        else:
            state.reset_latent()
            state.last_source = "none"
            with self.times.measure("composite", timings):
                out = compositor.composite(frame, track, None, None)  # hold the last face, then fade out
                result, face = out.image, out.face
        if self.cfg.side_by_side:
            result = np.concatenate([image, result], axis=1)
        return Output(image=np.ascontiguousarray(result), index=frame.index, pts=frame.pts,
                      time_base=frame.time_base, capture_ns=frame.capture_ns, face=bool(face), timings_ms=timings)


def rescale_affine(to_frame: np.ndarray, s: float) -> np.ndarray:
    """A crop→frame affine for a crop resampled by 1/s: x_old = s·(x_new + ½) − ½ (pixel centres kept)."""
    pre = np.array([[s, 0.0, 0.5 * s - 0.5], [0.0, s, 0.5 * s - 0.5], [0.0, 0.0, 1.0]])
    return np.asarray(to_frame, np.float64) @ pre


# ----------------------------------------------------------------------------------------------------------------
# Offline quad smoothing over a sliding window


class LookaheadSmoother:
    """Non-causal Gaussian smoothing of alignment quads with a bounded look-ahead (file jobs).

    A frame is released once ``radius = ceil(3σ)`` later frames have been tracked, with its quad smoothed over
    the raw quads of up to ``radius`` frames on either side. Frames without a face pass through unchanged and
    act as breaks (``realtime.tracking.smooth_quads`` does not smooth across them)."""

    def __init__(self, sigma: float):
        self.sigma = sigma
        self.radius = max(1, math.ceil(3 * sigma)) if sigma > 0 else 0
        self._history: collections.deque[Track] = collections.deque(maxlen=max(1, self.radius))
        self._pending: collections.deque[tuple[Frame, Track]] = collections.deque()

    def push(self, frame: Frame, track: Track) -> list[tuple[Frame, Track]]:
        if self.radius == 0:
            return [(frame, track)]
        self._pending.append((frame, track))
        out = []
        while len(self._pending) > self.radius:
            out.append(self._release())
        return out

    def flush(self) -> list[tuple[Frame, Track]]:
        out = []
        while self._pending:
            out.append(self._release())
        return out

    def _release(self) -> tuple[Frame, Track]:
        from realtime.vision.tracking import smooth_quads

        frame, track = self._pending[0]
        window = list(self._history) + [t for _, t in list(self._pending)[: self.radius + 1]]
        centre = len(self._history)
        self._history.append(track)
        self._pending.popleft()
        if not track.has_face:
            return frame, track
        smoothed = smooth_quads([t.quad if t.has_face else None for t in window], sigma=self.sigma)
        q = smoothed[centre]
        if q is None:
            return frame, track
        return frame, Track(landmarks=track.landmarks, score=track.score, quad=np.asarray(q, np.float32),
                            detected=track.detected)


# ----------------------------------------------------------------------------------------------------------------
# The threaded pipeline


@dataclass
class RunStats:
    """What a run did; printed as the summary table and written as JSON."""

    frames_in: int = 0
    frames_out: int = 0
    faces: int = 0
    key_frames: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0
    latency_ms: list[float] = field(default_factory=list)
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    interrupted: bool = False

    @property
    def fps(self) -> float:
        return self.frames_out / self.wall_s if self.wall_s > 0 else 0.0

    def latency_summary(self) -> dict[str, float]:
        if not self.latency_ms:
            return {}
        a = np.asarray(self.latency_ms)
        return {"p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
                "p99_ms": float(np.percentile(a, 99)), "max_ms": float(a.max())}

    def to_dict(self) -> dict[str, Any]:
        return {"frames_in": self.frames_in, "frames_out": self.frames_out, "faces": self.faces,
                "key_frames": self.key_frames, "dropped": self.dropped, "wall_s": self.wall_s, "fps": self.fps,
                "latency": self.latency_summary(), "stages": self.stages, "interrupted": self.interrupted}


class Pipeline:
    """Runs source → tracker → processor → sink on threads until the source ends or :meth:`stop` is called.

    ``source`` is any iterable of :class:`Frame`; ``tracker`` has ``track(frame) -> Track``; ``sink`` has
    ``write(Output)``. ``live`` selects drop-oldest queues and causal stabilisation; otherwise lossless queues
    and the look-ahead smoother. ``on_output`` is called in the sink thread after each write (progress bars).
    """

    def __init__(self, source: Iterable[Frame], tracker: Any, processor: FrameProcessor, sink: Any, live: bool,
                 config: PipelineConfig | None = None, on_output: Callable[[Output, RunStats], None] | None = None,
                 max_frames: int | None = None):
        self.source, self.tracker, self.processor, self.sink = source, tracker, processor, sink
        self.live = live
        self.cfg = config or processor.cfg
        self.on_output = on_output
        self.max_frames = max_frames
        self.state = StreamState()
        self.times = processor.times
        size = self.cfg.queue_size if live else 8
        self.q_track = StageQueue(size, live, "capture→tracking")
        self.q_device = StageQueue(size, live, "tracking→device")
        self.q_sink = StageQueue(size, live, "device→sink")
        self.stats = RunStats()
        self._stop = threading.Event()  # graceful: stop reading, drain what is in flight
        self._abort = threading.Event()  # hard: stop everything now
        self._errors: list[BaseException] = []

    def drops(self) -> int:
        return self.q_track.dropped + self.q_device.dropped + self.q_sink.dropped

    def stop(self) -> None:
        """Stop reading the source; frames already read are still processed and written."""
        if self._stop.is_set():
            self._abort.set()  # a second stop aborts the drain
        self._stop.set()
        self.stats.interrupted = True

    def _guard(self, fn: Callable[[], None], closes: StageQueue | None) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                self._errors.append(exc)
                self._stop.set()
                self._abort.set()
            finally:
                if closes is not None:
                    closes.close()

        return run

    def _capture(self) -> None:
        it = iter(self.source)
        while not self._stop.is_set():
            if self.max_frames is not None and self.stats.frames_in >= self.max_frames:
                break
            with self.times.measure("decode"):
                frame = next(it, None)
            if frame is None:
                break
            self.stats.frames_in += 1
            if not self.q_track.put(frame, self._abort):
                break

    def _track(self) -> None:
        smoother = None if self.live else LookaheadSmoother(self.cfg.smoothing_sigma)
        while not self._abort.is_set():
            frame = self.q_track.get()
            if frame is CLOSED:
                break
            with self.times.measure("tracking"):
                track = self.tracker.track(frame)
            ready = [(frame, track)] if smoother is None else smoother.push(frame, track)
            for item in ready:
                self.q_device.put(item, self._abort)
        if smoother is not None and not self._abort.is_set():
            for item in smoother.flush():
                self.q_device.put(item, self._abort)

    def _device(self) -> None:
        while not self._abort.is_set():
            item = self.q_device.get()
            if item is CLOSED:
                break
            frame, track = item
            out = self.processor.process(frame, track, self.state)
            self.q_sink.put(out, self._abort)

    def run(self) -> RunStats:
        """Run to completion in the calling thread (which writes to the sink). Re-raises a stage's error after
        every thread has stopped and the sink has received every processed frame."""
        threads = [
            threading.Thread(target=self._guard(self._capture, self.q_track), name="stylestream-capture", daemon=True),
            threading.Thread(target=self._guard(self._track, self.q_device), name="stylestream-tracking",
                             daemon=True),
            threading.Thread(target=self._guard(self._device, self.q_sink), name="stylestream-device", daemon=True),
        ]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        try:
            while True:
                out = self.q_sink.get(timeout=0.2)
                if out is None:
                    if self._abort.is_set():
                        break
                    continue
                if out is CLOSED:
                    break
                with self.times.measure("sink"):
                    self.sink.write(out)
                self.stats.frames_out += 1
                self.stats.latency_ms.append((now_ns() - out.capture_ns) / 1e6)
                if self.on_output is not None:
                    self.on_output(out, self.stats)
        except BaseException:
            self._stop.set()
            self._abort.set()
            raise
        finally:
            self._stop.set()
            for q in (self.q_track, self.q_device, self.q_sink):
                if self._abort.is_set():
                    q.close()
            for t in threads:
                t.join(timeout=10)
            self.stats.wall_s = time.perf_counter() - t0
            self.stats.faces = self.state.faces
            self.stats.key_frames = self.state.key_frames
            self.stats.dropped = {q.name: q.dropped for q in (self.q_track, self.q_device, self.q_sink)}
            self.stats.stages = self.times.summary()
        if self._errors:
            raise self._errors[0]
        return self.stats
