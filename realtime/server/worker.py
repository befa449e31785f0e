"""The server's streams on the pipeline's one stage runner.

:class:`PeerWorker` is one stream: a live, tolerant :class:`~realtime.pipeline.runner.StageRunner` with 1-slot
drop-oldest queues (each stage always works on the newest frame), fed with WebRTC frames (or a server-side source's
frames), converting to RGB before tracking (with the peer's size and frame-rate caps) and to I420 after processing.
:class:`Broadcast` (viewer mode) reads one server-side source on a capture thread into one PeerWorker whose output
track every viewer subscribes to through aiortc's ``MediaRelay``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import av
import cv2
import numpy as np
import torch
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamTrack

from models.config import opt
from realtime.frames import Frame, Output
from realtime.pipeline import FrameProcessor, StageRunner
from realtime.pipeline.runner import Tracker
from realtime.server.media import OutputTrack, Rate


@dataclass(frozen=True)
class StreamsConfig:
    """How the server's streams share the CPU (CLI flags of `serve`; measured in docs/scale.md)."""

    mesh_every: int = opt(2, "run the face mesh on every n-th frame of a stream and carry the landmarks by optical "
                             "flow in between (1: every frame; docs/tracking.md has the steadiness cost)", min=1, max=8)
    op_threads: int = opt(2, "threads inside one OpenCV / torch / ONNX Runtime call (0: each library's default); the "
                             "streams and their stages already run in parallel, and big nested pools fight for the "
                             "cores (4 streams on 2 cores: 1 left a core idle, 2 gave the most fps; docs/scale.md)",
                          min=0, max=256)


def limit_op_threads(threads: int) -> None:
    """OpenCV's and torch's process-wide thread pools to ``threads`` (0: leave them as they are)."""
    if threads > 0:
        cv2.setNumThreads(threads)
        torch.set_num_threads(threads)


def frame_to_rgb(src: av.VideoFrame) -> np.ndarray:
    """A decoded frame as [H, W, 3] uint8 RGB: I420 through OpenCV (BT.601 limited range, as swscale; 0.16 vs
    0.47 ms at 640×480 on a fresh frame, whose swscale context PyAV sets up every time), else PyAV's conversion."""
    if src.format.name == "yuv420p" and src.width % 2 == 0 and src.height % 2 == 0:
        return cv2.cvtColor(src.to_ndarray(format="yuv420p"), cv2.COLOR_YUV2RGB_I420)
    return src.to_ndarray(format="rgb24")


def post(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> None:
    """``fn(*args)`` on ``loop`` from a worker thread; a closed loop (shutdown) is not an error."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(fn, *args)


class PeerWorker:
    """One server stream (see the module docstring). ``submit`` (any thread, non-blocking) takes an
    ``av.VideoFrame`` from WebRTC or a :class:`Frame` from a server-side source; ``deliver(yuv_frame, capture_ns)`` is
    called from the device thread for every output."""

    def __init__(self, name: str, processor: FrameProcessor, make_tracker: Callable[[], Tracker],
                 deliver: Callable[[av.VideoFrame, int], None], on_end: Callable[[], None] | None = None):
        self.name, self.processor, self.deliver = name, processor, deliver
        self.max_size: tuple[int, int] | None = None  # (w, h) processing cap from a "request"
        self.max_fps: float | None = None  # frame-rate cap from a "request"
        self.capped = 0  # input frames skipped by the frame-rate cap
        self.in_size: tuple[int, int] = (0, 0)
        self.out_size: tuple[int, int] = (0, 0)
        self._index = 0
        self._last_accept = 0.0
        self.runner = StageRunner(processor, make_tracker, live=True, queue_size=1, tolerant=True,
                                  prepare=self._to_frame, emit=self._to_yuv, name=name, on_end=on_end)
        self.times = processor.times

    @property
    def view(self) -> str:
        return self.processor.view

    @view.setter
    def view(self, mode: str) -> None:
        self.processor.view = mode

    @property
    def ready(self) -> threading.Event:
        return self.runner.ready

    @property
    def error(self) -> str | None:
        return self.runner.error

    def fail(self, what: str, exc: BaseException) -> None:
        self.runner.fail(what, exc)

    def start(self) -> None:
        self.runner.start()

    def submit(self, item: av.VideoFrame | Frame, recv_ns: int | None = None) -> None:
        self.runner.submit(item, recv_ns)

    def finish(self) -> None:
        """No more input: the threads drain and stop."""
        self.runner.finish()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop both threads now, wait for them (call off the event loop), free the stream's own engine."""
        self.runner.stop(timeout)

    def alive(self) -> bool:
        return self.runner.alive()

    # -- the runner's hooks (its threads) ------------------------------------------------------------------

    def _to_frame(self, src: av.VideoFrame | Frame, recv_ns: int) -> Frame | None:
        if self.max_fps:
            t = time.monotonic()
            if t - self._last_accept < 0.95 / self.max_fps:
                self.capped += 1
                return None
            self._last_accept = t
        with self.times.measure("to_rgb"):
            if isinstance(src, Frame):
                image, pts, tb = src.image, src.pts, src.time_base
            else:
                image, pts, tb = frame_to_rgb(src), src.pts, src.time_base
            h, w = image.shape[:2]
            self.in_size = (w, h)
            cap = self.max_size
            if cap and (w > cap[0] or h > cap[1]):
                s = min(cap[0] / w, cap[1] / h)
                nw, nh = max(16, int(w * s) // 2 * 2), max(16, int(h * s) // 2 * 2)
                image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
            image = np.ascontiguousarray(image)
        frame = Frame(image=image, index=self._index, pts=pts, time_base=tb, capture_ns=recv_ns)
        self._index += 1
        return frame

    def _to_yuv(self, out: Output) -> None:
        with self.times.measure("to_yuv"):
            image = out.image
            h, w = image.shape[:2]
            if w % 2 or h % 2:
                image = np.ascontiguousarray(image[: h // 2 * 2, : w // 2 * 2])
            # OpenCV's BT.601 limited-range I420 matches swscale's and is ~7× faster at 720p
            vf = av.VideoFrame.from_ndarray(cv2.cvtColor(image, cv2.COLOR_RGB2YUV_I420), format="yuv420p")
        self.out_size = (vf.width, vf.height)
        self.deliver(vf, out.capture_ns)

    def stats(self) -> dict[str, Any]:
        st, proc, runner = self.runner.state, self.processor, self.runner
        return {
            "stages_ms": {k: round(v, 2) for k, v in self.times.recent().items()},
            "drops": {"input": runner.inbox.dropped, "tracking": runner.q_device.dropped, "fps_cap": self.capped},
            "latent": st.last_source or "none", "key_frames": st.key_frames, "frames": st.frames,
            "faces": st.faces, "face": runner.face_now, "filter": proc.enabled, "view": proc.view,
            "composite": {"mode": proc.composite_mode, "now": st.composite or None},
            "edits": proc.edits.strengths() if proc.edits is not None else {},
            "in_size": list(self.in_size), "out_size": list(self.out_size), "error": runner.error,
            "faults": runner.faults(),
            "calibration": proc.calibration_status(),
        }


class Broadcast:
    """Viewer mode: one capture thread reads the source, one :class:`PeerWorker` processes it, one
    :class:`OutputTrack` feeds a ``MediaRelay`` that every viewer subscribes to."""

    def __init__(self, spec: str, processor: FrameProcessor, make_tracker: Callable[[], Tracker],
                 open_source: Callable[[str], Any], loop: asyncio.AbstractEventLoop):
        self.spec, self.loop = spec, loop
        self.source = open_source(spec)
        self.track = OutputTrack()
        self.relay = MediaRelay()
        self.in_rate = Rate()
        self.ended = False
        self.worker = PeerWorker("broadcast", processor, make_tracker,
                                 deliver=lambda vf, ns: post(loop, self.track.deliver, vf, ns),
                                 on_end=lambda: post(loop, self._end))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._capture, name="stylestream-broadcast-capture", daemon=True)

    def start(self) -> None:
        self.worker.start()
        self._thread.start()

    def _capture(self) -> None:
        try:
            for frame in self.source:
                if self._stop.is_set():
                    break
                self.in_rate.tick()
                self.worker.submit(frame, frame.capture_ns)
        except Exception as exc:
            self.worker.fail("source", exc)
        finally:
            self.worker.finish()

    def _end(self) -> None:
        self.ended = True
        self.track.end()

    def subscribe(self) -> MediaStreamTrack:
        return self.relay.subscribe(self.track, buffered=False)

    def stop(self) -> None:
        """Stop reading and processing (blocking; call off the loop)."""
        self._stop.set()
        with contextlib.suppress(Exception):
            self.source.close()
        self._thread.join(timeout=5)
        self.worker.stop()
