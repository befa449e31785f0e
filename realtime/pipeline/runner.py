"""The one stage runner, used by file jobs, the live camera, every server peer and the public API (DESIGN §2).

::

    submit(item) ─▶ [inbox] ─▶ tracking thread ─▶ [tracking→device] ─▶ device thread ─▶ emit(output)
                               prepare(item) → Frame                    FrameProcessor.process
                               tracker.track(frame) → Track             (align → encode → edit → generate → composite)
                               (file jobs: look-ahead quad smoothing)

* **live** (cameras, network streams, WebRTC peers): every queue holds ``queue_size`` items and drops the *oldest*
  when full, so each stage works on the newest frame and latency stays bounded; drops are counted per queue. The
  tracking thread starts on a frame only when the device queue has room for it, so no tracked frame is thrown away
  when the device stage is the slower one (the input queue keeps the newest frame meanwhile; with four streams on
  two cores, frames tracked and then dropped had cost a large share of the server's CPU: docs/scale.md).
* **lossless** (file jobs): queues block (ordered, nothing dropped) and the alignment quads are smoothed non-causally
  over a bounded look-ahead before the device thread sees them (StylePortraitVideo §3.1).

:class:`Pipeline` drives a runner from a :class:`~realtime.io.sources.Source` into a sink (a capture thread in front,
the sink written on the caller's thread behind) for ``stylestream run`` / ``camera`` and the API's ``Filter.run``;
the server's peers feed it WebRTC frames (``realtime/server/worker.py``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from realtime.frames import Frame, Output, Track, now_ns
from realtime.pipeline.processor import FrameProcessor, StreamState
from realtime.pipeline.stages import CLOSED, LookaheadSmoother, RunStats, StageQueue

log = logging.getLogger(__name__)

LOSSLESS_QUEUE = 8  # queue capacity of file jobs (they block instead of dropping)
RETRY_S = 0.25  # tolerant mode: first back-off after a processing error (then doubled per failed retry)
RETRY_MAX_S = 2.0  # longest back-off: a recovered model server is used again within this long


class Tracker(Protocol):
    def track(self, frame: Frame) -> Track: ...

    def close(self) -> None: ...


class StageRunner:
    """Tracking thread + device thread for one stream (see the module docstring).

    ``make_tracker()`` is called in the tracking thread (MediaPipe graphs are built there, never on an event loop);
    ``prepare(item)`` turns a submitted item into a :class:`Frame` (None skips it; default: the item is a Frame);
    ``emit(output)`` receives every processed frame on the device thread. ``tolerant`` (server peers): an error in
    tracking or processing never stops the stream — the frame goes out without the model (the last face held, then
    faded to the untouched frame), :attr:`error` says what broke, and the model is retried after a back-off
    (:data:`RETRY_S`, doubling up to :data:`RETRY_MAX_S`) during which frames skip it, so a model server that is
    down or stalled costs each frame nothing and the stream recovers by itself (:meth:`faults` counts it all);
    otherwise the first error stops the runner and :meth:`raise_error` re-raises it."""

    def __init__(self, processor: FrameProcessor, make_tracker: Callable[[], Tracker], *, live: bool,
                 emit: Callable[[Output], None], prepare: Callable[[Any, int], Frame | None] | None = None,
                 queue_size: int | None = None, tolerant: bool = False, close_tracker: bool = True,
                 name: str = "stream", on_end: Callable[[], None] | None = None):
        self.processor, self.make_tracker, self.live = processor, make_tracker, live
        self.emit, self.prepare, self.tolerant = emit, prepare, tolerant
        self.close_tracker, self.name, self.on_end = close_tracker, name, on_end
        size = (queue_size or processor.cfg.queue_size) if live else LOSSLESS_QUEUE
        self.inbox = StageQueue(size, live, "input→tracking")
        self.q_device = StageQueue(size, live, "tracking→device")
        self.state = StreamState(live=live)
        processor.prepare_stream(self.state)
        self.times = processor.times
        self.error: str | None = None  # tolerant mode: the last failure, for the stats
        self.fault_errors = 0  # tolerant mode: frames whose processing raised
        self.fault_frames = 0  # frames sent without the model (after an error, or skipped while backing off)
        self.recoveries = 0  # outages that ended with a frame processed again
        self.failing_since: float | None = None  # monotonic start of the current outage (None: processing works)
        self.last_outage_s: float | None = None
        self._retry_at = 0.0
        self._backoff = 0.0
        self._outage_frames = 0
        self.errors: list[BaseException] = []  # strict mode: what stopped the runner
        self.face_now = False
        self.ready = threading.Event()  # the tracker is built (or failed)
        self.abort_event = threading.Event()
        self._threads = [threading.Thread(target=self._guard(self._tracking, self.q_device), daemon=True,
                                          name=f"stylestream-{name}-tracking"),
                         threading.Thread(target=self._guard(self._device, None), daemon=True,
                                          name=f"stylestream-{name}-device")]

    # -- control (any thread) ------------------------------------------------------------------------------

    def start(self) -> StageRunner:
        for t in self._threads:
            t.start()
        return self

    def submit(self, item: Any, recv_ns: int | None = None) -> bool:
        """Hand over one input (blocks in lossless mode until there is room). False once the runner stopped."""
        return self.inbox.put((item, now_ns() if recv_ns is None else recv_ns), self.abort_event)

    def finish(self) -> None:
        """No more input: the stages drain what they hold and stop."""
        self.inbox.close()

    def abort(self) -> None:
        """Stop now: queued frames are dropped (the frame in flight still completes)."""
        self.abort_event.set()
        self.inbox.close()
        self.q_device.close()

    def join(self, timeout: float | None = None) -> None:
        for t in self._threads:
            if t.is_alive() and t is not threading.current_thread():
                t.join(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Abort, wait for both threads (call off an event loop: the device thread may be mid-frame), then free the
        stream's own engine (live calibration)."""
        self.abort()
        self.join(timeout)
        if not self.alive():
            self.processor.release()

    def alive(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def raise_error(self) -> None:
        if self.errors:
            raise self.errors[0]

    def drops(self) -> dict[str, int]:
        return {self.inbox.name: self.inbox.dropped, self.q_device.name: self.q_device.dropped}

    def faults(self) -> dict[str, Any]:
        """Tolerant mode: processing errors, frames sent without the model, outages recovered from, and whether the
        model is failing now (for how long)."""
        since = self.failing_since
        return {"state": "ok" if since is None else "failing", "errors": self.fault_errors,
                "frames_without_model": self.fault_frames, "recoveries": self.recoveries,
                "failing_s": None if since is None else round(time.monotonic() - since, 2),
                "last_outage_s": None if self.last_outage_s is None else round(self.last_outage_s, 2)}

    # -- the threads ---------------------------------------------------------------------------------------

    def _guard(self, fn: Callable[[], None], closes: StageQueue | None) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - strict mode: re-raised by the runner's owner
                self.errors.append(exc)
                self.abort()
            finally:
                if closes is not None:
                    closes.close()

        return run

    def fail(self, what: str, exc: BaseException) -> None:
        """Tolerant mode: remember and log a failure once per distinct message; strict mode: re-raise."""
        if not self.tolerant:
            raise exc
        msg = f"{what}: {type(exc).__name__}: {exc}".splitlines()[0][:300]
        if self.error != msg:
            log.warning("%s %s", self.name, msg, exc_info=exc)
        self.error = msg

    def _tracking(self) -> None:
        tracker: Tracker | None = None
        try:
            tracker = self.make_tracker()
        except Exception as exc:  # tolerant: frames pass through untouched, the stats say why
            self.fail("tracker", exc)
        finally:
            self.ready.set()
        smoother = None if self.live else LookaheadSmoother(self.processor.cfg.smoothing_sigma)
        try:
            while not self.abort_event.is_set():
                if self.live:
                    self.q_device.wait_for_room(self.abort_event)  # then track the newest input, not a stale one
                item = self.inbox.get()
                if item is CLOSED:
                    break
                raw, recv_ns = item
                try:
                    frame = self.prepare(raw, recv_ns) if self.prepare is not None else raw
                except Exception as exc:  # a frame that cannot be converted: skip it
                    self.fail("input frame", exc)
                    continue
                if frame is None:
                    continue
                track = Track(landmarks=None)
                if tracker is not None and (not self.live or self.processor.wants_landmarks()):
                    try:
                        with self.times.measure("tracking"):
                            track = tracker.track(frame)
                    except Exception as exc:
                        self.fail("tracking", exc)
                self.face_now = track.has_face
                ready = [(frame, track)] if smoother is None else smoother.push(frame, track)
                for pair in ready:
                    self.q_device.put(pair, self.abort_event)
            if smoother is not None and not self.abort_event.is_set():
                for pair in smoother.flush():
                    self.q_device.put(pair, self.abort_event)
        finally:
            if tracker is not None and self.close_tracker:
                with contextlib.suppress(Exception):
                    tracker.close()

    def _without_model(self, frame: Frame, track: Track) -> Output:
        """A frame the model did not process: the last face held, then faded out (the no-face path), else untouched."""
        self.fault_frames += 1
        self._outage_frames += 1
        try:
            return self.processor.composite(frame, track, None, None, self.state)
        except Exception:  # noqa: BLE001 - the untouched frame always works
            return self.processor.layout(frame, frame.image)

    def _failed(self) -> None:
        self.state.latent.reset()  # after the outage: a key frame, not a reuse of a W+ from before it
        if self.state.transfer is not None:
            self.state.transfer.reset()
        now = time.monotonic()
        self.fault_errors += 1
        self._backoff = RETRY_S if self.failing_since is None else min(RETRY_MAX_S, self._backoff * 2)
        self._retry_at = now + self._backoff
        if self.failing_since is None:
            self.failing_since, self._outage_frames = now, 0
            log.warning("%s: frames go out without the model (%s); retrying every %g–%g s", self.name, self.error,
                        RETRY_S, RETRY_MAX_S)

    def _recovered(self) -> None:
        assert self.failing_since is not None
        self.last_outage_s = time.monotonic() - self.failing_since
        self.failing_since = None
        self.recoveries += 1
        self._backoff = 0.0
        log.warning("%s: recovered: the model processes frames again after %.1f s (%d frames went out without it)",
                    self.name, self.last_outage_s, self._outage_frames)

    def _device(self) -> None:
        try:
            while not self.abort_event.is_set():
                item = self.q_device.get()
                if item is CLOSED:
                    break
                frame, track = item
                if (self.failing_since is not None and time.monotonic() < self._retry_at
                        and self.processor.wants_landmarks()):
                    out = self._without_model(frame, track)  # backing off: the model is not tried on this frame
                else:
                    try:
                        out = self.processor.process(frame, track, self.state)
                    except Exception as exc:  # tolerant: keep the video going; the stats say what broke
                        self.fail("processing", exc)
                        self._failed()
                        out = self._without_model(frame, track)
                    else:
                        if self.failing_since is not None:
                            self._recovered()
                self.emit(out)
        finally:
            if self.on_end is not None:
                self.on_end()


class Pipeline:
    """Runs source → :class:`StageRunner` → sink until the source ends or :meth:`stop` is called.

    ``source`` is any iterable of :class:`Frame`; ``tracker`` has ``track(frame) -> Track`` (its owner closes it);
    ``sink`` has ``write(Output)``. ``live`` selects drop-oldest queues and causal stabilisation; otherwise lossless
    queues and the look-ahead smoother. ``on_output`` is called in the sink thread after each write (progress bars).
    """

    def __init__(self, source: Iterable[Frame], tracker: Tracker, processor: FrameProcessor, sink: Any, live: bool,
                 on_output: Callable[[Output, RunStats], None] | None = None, max_frames: int | None = None):
        self.source, self.tracker, self.processor, self.sink = source, tracker, processor, sink
        self.live, self.on_output, self.max_frames = live, on_output, max_frames
        self.times = processor.times
        self.stats = RunStats()
        self._stop = threading.Event()  # graceful: stop reading, drain what is in flight
        self.runner = StageRunner(processor, lambda: tracker, live=live, emit=self._emit, close_tracker=False,
                                  name="pipeline")
        size = processor.cfg.queue_size if live else LOSSLESS_QUEUE
        self.q_sink = StageQueue(size, live, "device→sink")
        self.runner.on_end = self.q_sink.close

    @property
    def state(self) -> StreamState:
        return self.runner.state

    def drops(self) -> int:
        return sum(self.runner.drops().values()) + self.q_sink.dropped

    def stop(self) -> None:
        """Stop reading the source; frames already read are still processed and written. A second call aborts
        the frames in flight."""
        if self._stop.is_set():
            self.runner.abort()
            self.q_sink.close()
        self._stop.set()
        self.stats.interrupted = True

    def _emit(self, out: Output) -> None:
        self.q_sink.put(out, self.runner.abort_event)

    def _capture(self) -> None:
        try:
            it = iter(self.source)
            while not self._stop.is_set():
                if self.max_frames is not None and self.stats.frames_in >= self.max_frames:
                    break
                with self.times.measure("decode"):
                    frame = next(it, None)
                if frame is None:
                    break
                self.stats.frames_in += 1
                if not self.runner.submit(frame, frame.capture_ns):
                    break
        except BaseException as exc:  # noqa: BLE001 - re-raised by run() in the caller's thread
            self.runner.errors.append(exc)
            self.runner.abort()
            self.q_sink.close()
        finally:
            self.runner.finish()

    def run(self) -> RunStats:
        """Run to completion in the calling thread (which writes to the sink). Re-raises a stage's error after
        every thread has stopped and the sink has received every processed frame."""
        capture = threading.Thread(target=self._capture, name="stylestream-capture", daemon=True)
        t0 = time.perf_counter()
        self.runner.start()
        capture.start()
        try:
            while True:
                out = self.q_sink.get(timeout=0.2)
                if out is None:
                    if self.runner.abort_event.is_set() and not self.runner.alive():
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
            self.runner.abort()
            raise
        finally:
            self._stop.set()
            capture.join(timeout=10)
            self.runner.join(timeout=10)
            self.stats.wall_s = time.perf_counter() - t0
            self.stats.faces = self.state.faces
            self.stats.key_frames = self.state.key_frames
            self.stats.dropped = {**self.runner.drops(), self.q_sink.name: self.q_sink.dropped}
            self.stats.stages = self.times.summary()
        self.runner.raise_error()
        return self.stats
