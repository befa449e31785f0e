"""The public Python API, for people who embed the filter (a video-call bot, an aiortc or OBS script, a benchmark).

::

    import numpy as np
    from realtime import Filter

    with Filter(edits={"smile": 1.5}) as f:           # the built-in bundle; or Filter("path/to/bundle", ...)
        result = f(rgb_frame)                          # [H, W, 3] uint8 RGB in → result.image out (same size)
        print(result.face, result.stats["stages_ms"])
        f.set_edit("smile", 0.5)                       # strengths may change on every frame

* :class:`Filter` — one stream: tracking, per-stream latent state and edits inside; ``f(frame)`` runs synchronously on
  the calling thread; ``f.run(source, sink)`` runs the threaded pipeline over a source into a sink;
  ``f.stream()`` is another stream on the same engine (a server's peers).
* :class:`FilterTrack` — an aiortc ``MediaStreamTrack`` that filters another track on worker threads (never inside
  ``recv()``), for aiortc apps.
* :func:`open_source` / :func:`open_sink` — files, cameras, network streams, ``demo:`` clips; files, RTMP, virtual
  camera, ``null:``.

The CLI commands are thin users of this module. ``realtime/__init__.py`` re-exports these names lazily, so importing
``realtime.vision`` (say, from training code) never loads the pipeline or the server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from models.bundle import DEFAULT_BUNDLE, Bundle, load_bundle
from models.config import check
from models.editing import EditStack
from models.errors import UserError
from realtime.engines import BatchConfig, BatchingEngine, Engine, EngineOptions, EngineSpec, SerialEngine, make_engine
from realtime.frames import Frame, Output, Track
from realtime.io.sinks import open_sink
from realtime.io.sources import Source, open_source
from realtime.pipeline import FrameProcessor, Pipeline, PipelineConfig, RunStats, StageRunner, StreamState
from realtime.pipeline.calibration import CalibrationConfig
from realtime.server.media import OutputTrack
from realtime.server.worker import post
from realtime.vision.tracking import FaceTracker, TrackerConfig
from realtime.vision.transfer import TransferConfig

__all__ = ["Filter", "FilterResult", "FilterTrack", "load", "open_sink", "open_source"]


def load(bundle: str | os.PathLike | Bundle | None = None) -> Bundle:
    """A bundle: an already loaded one, a bundle folder, or the built-in default bundle (None)."""
    if isinstance(bundle, Bundle):
        return bundle
    if bundle is None:
        if not (DEFAULT_BUNDLE / "bundle.json").exists():
            raise UserError(f"the built-in bundle is missing ({DEFAULT_BUNDLE}); reinstall stylestream or pass a "
                            "bundle folder")
        return load_bundle(DEFAULT_BUNDLE)
    return load_bundle(bundle)


def edit_stack(bundle: Bundle, strengths: Mapping[str, float] | None = None) -> EditStack:
    """The bundle's edits with ``strengths`` set (an unknown name or a strength outside its range is a UserError)."""
    stack = EditStack.from_bundle(bundle)
    for name, value in (strengths or {}).items():
        stack.set_strength(name, float(value))
    return stack


@dataclass
class FilterResult:
    """One filtered frame."""

    image: np.ndarray  # [H, W', 3] uint8 RGB (W' = 2W when the view is side by side)
    face: bool  # a face was found and filtered (or is being held / faded out)
    stats: dict[str, Any] = field(default_factory=dict)  # stages_ms, latent ("key" | "reuse" | "none"), frame index


class Filter:
    """The face filter for one stream of frames (see the module docstring).

    Args:
        bundle: a bundle folder, a loaded :class:`Bundle`, or None for the built-in bundle.
        edits: initial strengths, e.g. ``{"smile": 1.5}`` (``Filter.edit_names`` lists them).
        device / backend / precision: the engine (``backend="auto"``: ONNX Runtime on CPU after a one-time
            export, torch on CUDA); ``engine_options`` are :class:`EngineOptions` fields (``model_dir=…``,
            ``threads=…``). ``spec`` (an :class:`EngineSpec`) replaces all of these; ``engine`` instead shares an
            existing engine (another stream).
        pipeline: latent policy, queues, view (:class:`PipelineConfig`); ``live`` selects causal stabilisation.
        composite: "transfer" (the user's own face, moved by the edit), "regenerate" (the generator's face) or
            "auto" (the default: transfer, except random_identity and a calibrated generator); ``transfer`` tunes
            the transfer (:class:`TransferConfig`).
        calibration: settings of live calibration (``filter.processor.calibrate()``).
    """

    def __init__(self, bundle: str | os.PathLike | Bundle | None = None, edits: Mapping[str, float] | None = None, *,
                 device: str = "auto", backend: str = "auto", precision: str = "auto",
                 pipeline: PipelineConfig | None = None, calibration: CalibrationConfig | None = None,
                 spec: EngineSpec | None = None, engine: Engine | None = None, live: bool = True,
                 tracker: TrackerConfig | None = None, composite: str | None = None,
                 transfer: TransferConfig | None = None, **engine_options: Any):
        self.bundle = engine.bundle if engine is not None else load(bundle)
        stack = edit_stack(self.bundle, edits)  # bad edit names fail before the engine is built
        self.owns_engine = engine is None
        if engine is None:
            spec = spec or EngineSpec(backend, device, precision, EngineOptions(**engine_options))
            engine = make_engine(self.bundle, spec)
        self.engine = engine
        self.live = live
        self.tracker_config = tracker or TrackerConfig(smoothing="one_euro" if live else "none")
        cfg = dataclasses.replace(pipeline or PipelineConfig())
        if composite is not None:
            cfg.composite = composite
        self.processor = FrameProcessor(self.engine, check(cfg), edits=stack, calibration=calibration,
                                        transfer=transfer)
        self.state = StreamState()
        self.shared: BatchingEngine | SerialEngine | None = None  # the streams' engine (stream_factories)
        self._tracker: FaceTracker | None = None
        self._index = 0

    # -- edits and view ------------------------------------------------------------------------------------

    @property
    def edit_names(self) -> list[str]:
        return list(self.processor.edits.names) if self.processor.edits is not None else []

    @property
    def edits(self) -> dict[str, float]:
        return self.processor.edits.strengths() if self.processor.edits is not None else {}

    def set_edit(self, name: str, strength: float) -> None:
        """Change one edit's strength (any thread; it applies from the next frame)."""
        if self.processor.edits is None:
            raise UserError("this bundle has no edits")
        self.processor.edits.set_strength(name, float(strength))

    @property
    def composite(self) -> str:
        """auto, transfer or regenerate (may change on every frame, from any thread)."""
        return self.processor.composite_mode

    @composite.setter
    def composite(self, mode: str) -> None:
        self.processor.composite_mode = mode

    @property
    def view(self) -> str:
        return self.processor.view

    @view.setter
    def view(self, mode: str) -> None:
        self.processor.view = mode

    # -- one frame, synchronously --------------------------------------------------------------------------

    def _track(self, frame: Frame) -> Track:
        if not self.processor.wants_landmarks():
            return Track(landmarks=None)
        if self._tracker is None:
            self._tracker = FaceTracker(self.tracker_config)
        with self.processor.times.measure("tracking"):
            return self._tracker.track(frame)

    def __call__(self, image: np.ndarray, timestamp: float | None = None) -> FilterResult:
        """Filter one RGB frame ([H, W, 3] uint8) on the calling thread; ``timestamp`` in seconds (optional: the
        face-loss fades and the live stabiliser use it, else frames are assumed at the tracker's frame rate)."""
        arr = np.asarray(image)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
            raise UserError(f"Filter expects an [H, W, 3] uint8 RGB frame, got {arr.dtype} {arr.shape}")
        pts, tb = (None, None) if timestamp is None else (round(timestamp * 1_000_000), Fraction(1, 1_000_000))
        frame = Frame(image=np.ascontiguousarray(arr), index=self._index, pts=pts, time_base=tb)
        self._index += 1
        out = self.processor.process(frame, self._track(frame), self.state)
        return FilterResult(image=out.image, face=out.face,
                            stats={"index": frame.index, "latent": self.state.last_source or "none",
                                   "composite": self.state.composite, "stages_ms": dict(out.timings_ms)})

    # -- the threaded pipeline -----------------------------------------------------------------------------

    def run(self, source: Source | Iterable[Frame], sink: Any, *, live: bool | None = None,
            on_output: Callable[[Output, RunStats], None] | None = None, max_frames: int | None = None,
            pipeline: Callable[[Pipeline], None] | None = None) -> RunStats:
        """Filter ``source`` into ``sink`` on the stage runner's threads (capture → tracking → device → sink);
        ``live`` defaults to the source's own ``is_live``. ``pipeline(p)`` sees the :class:`Pipeline` before it runs
        (e.g. to install a Ctrl-C handler that calls ``p.stop()``)."""
        live = getattr(source, "is_live", self.live) if live is None else live
        fps = getattr(source, "fps", None) or self.tracker_config.fps
        cfg = dataclasses.replace(self.tracker_config, smoothing="one_euro" if live else "none", fps=fps)
        with FaceTracker(cfg) as tracker:
            p = Pipeline(source, tracker, self.processor, sink, live=live, on_output=on_output, max_frames=max_frames)
            if pipeline is not None:
                pipeline(p)
            return p.run()

    # -- more streams on the same engine --------------------------------------------------------------------

    def stream(self, engine: Engine | None = None) -> Filter:
        """Another stream on this filter's engine (or ``engine``): its own edits (starting from this one's
        strengths), latent state, view, tracker and calibration."""
        return Filter(engine=engine or self.engine, edits={k: v for k, v in self.edits.items() if v},
                      pipeline=self.processor.cfg, calibration=self.processor.calibration_cfg, live=self.live,
                      tracker=self.tracker_config, composite=self.composite, transfer=self.processor.transfer_cfg)

    def stream_factories(self, batching: BatchConfig | None = None
                         ) -> tuple[Callable[[], FrameProcessor], Callable[[], FaceTracker]]:
        """(make_processor, make_tracker) for a server: each peer gets its own processor over this filter's engine,
        shared through a :class:`BatchingEngine` (the peers' concurrent model calls merged into batched calls;
        ``batching.batching=False``: a :class:`SerialEngine`, one call at a time — CUDA graphs and ONNX Runtime
        sessions are not re-entrant). The shared engine is :attr:`shared` (its ``stats()``)."""
        cfg = batching or BatchConfig()
        shared = BatchingEngine(self.engine, cfg) if cfg.batching else SerialEngine(self.engine)
        self.shared = shared

        def make_processor() -> FrameProcessor:
            return self.stream(shared).processor

        def make_tracker() -> FaceTracker:
            return FaceTracker(dataclasses.replace(self.tracker_config, smoothing="one_euro"))

        return make_processor, make_tracker

    # -- lifetime ------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Free the tracker, a calibration's own engine and (when this filter made it) the engine."""
        if self._tracker is not None:
            self._tracker.close()
            self._tracker = None
        self.processor.release()
        if self.owns_engine:  # the streams' wrapper first: it lets calls in flight end, then closes the engine
            (self.shared if self.shared is not None else self.engine).close()

    def __enter__(self) -> Filter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FilterTrack(MediaStreamTrack):
    """An aiortc video track that is ``track`` filtered by ``filter`` (for aiortc apps)::

        pc.addTrack(FilterTrack(incoming_track, Filter(edits={"smile": 1})))

    A reader task hands every incoming frame to the filter's stage runner (tracking and model work on its own
    threads, newest frame first); ``recv()`` only waits for the newest processed frame, so it never blocks the event
    loop. Construct it on the event loop that will read it."""

    kind = "video"

    def __init__(self, track: MediaStreamTrack, filter: Filter):  # noqa: A002 - the public name of the argument
        super().__init__()
        self.source_track, self.filter = track, filter
        loop = asyncio.get_running_loop()
        self._out = OutputTrack()
        self.runner = StageRunner(filter.processor, lambda: FaceTracker(filter.tracker_config), live=True,
                                  queue_size=1, tolerant=True, prepare=self._to_frame, emit=self._emit,
                                  name="filter-track")
        self._loop = loop
        self._index = 0
        self.runner.start()
        self._reader = asyncio.ensure_future(self._read())

    def _to_frame(self, vf: av.VideoFrame, recv_ns: int) -> Frame:
        frame = Frame(image=vf.to_ndarray(format="rgb24"), index=self._index, pts=vf.pts, time_base=vf.time_base,
                      capture_ns=recv_ns)
        self._index += 1
        return frame

    def _emit(self, out: Output) -> None:
        vf = av.VideoFrame.from_ndarray(out.image, format="rgb24")
        post(self._loop, self._out.deliver, vf, out.capture_ns)

    async def _read(self) -> None:
        try:
            while True:
                self.runner.submit(await self.source_track.recv())
        except MediaStreamError:
            pass
        finally:
            self.runner.finish()
            self._out.end()

    async def recv(self) -> av.VideoFrame:
        return await self._out.recv()

    def stop(self) -> None:
        super().stop()
        self._reader.cancel()
        self._out.stop()
        self.runner.abort()  # the threads end by themselves; join off the loop with close()

    def close(self) -> None:
        """Stop and wait for the worker threads (call off the event loop)."""
        self.stop()
        self.runner.join(10)
