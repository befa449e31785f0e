"""The server's media plumbing: the processed-video track aiortc's sender pulls from, and a rolling rate meter."""

from __future__ import annotations

import asyncio
import collections
import time

import av
from aiortc.mediastreams import VIDEO_TIME_BASE, MediaStreamError, MediaStreamTrack

from realtime.frames import now_ns


class Rate:
    """Rolling events per second over the last ``window_s`` seconds (ticked by one thread)."""

    def __init__(self, window_s: float = 2.0):
        self.window_s = window_s
        self._t: collections.deque[float] = collections.deque()
        self.count = 0

    def tick(self, t: float | None = None) -> None:
        t = time.monotonic() if t is None else t
        self._t.append(t)
        self.count += 1
        while self._t and t - self._t[0] > self.window_s:
            self._t.popleft()

    def fps(self) -> float:
        try:  # may be read from another thread than the one ticking
            first, last, n = self._t[0], self._t[-1], len(self._t)
        except IndexError:
            return 0.0
        if n < 2 or time.monotonic() - last > self.window_s:
            return 0.0
        return (n - 1) / max(1e-6, last - first)


class OutputTrack(MediaStreamTrack):
    """The processed video: holds only the newest frame; ``recv`` waits for the next one (paced by the input).
    ``deliver`` must be called on the event loop (workers use ``loop.call_soon_threadsafe``)."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self._frame: av.VideoFrame | None = None
        self._capture_ns = 0
        self._event = asyncio.Event()
        self._t0: int | None = None
        self._last_pts = -1
        self.replaced = 0  # frames overwritten before the sender took them (sender/encoder slower than us)
        self.rate = Rate()
        self.latency_ms: collections.deque[float] = collections.deque(maxlen=120)  # worker receive → sender

    def deliver(self, frame: av.VideoFrame, capture_ns: int) -> None:
        if self.readyState != "live":
            return
        if self._frame is not None:
            self.replaced += 1
        self._frame, self._capture_ns = frame, capture_ns
        self._event.set()

    def end(self) -> None:
        """The input ended: wake the sender so it sees the end."""
        self.stop()

    def stop(self) -> None:
        super().stop()
        self._event.set()

    async def recv(self) -> av.VideoFrame:
        while self._frame is None:
            if self.readyState != "live":
                raise MediaStreamError
            self._event.clear()
            await self._event.wait()
        if self.readyState != "live":
            raise MediaStreamError
        frame, capture_ns = self._frame, self._capture_ns
        self._frame = None
        now = now_ns()
        if self._t0 is None:
            self._t0 = now
        pts = max(self._last_pts + 1, (now - self._t0) * 90_000 // 1_000_000_000)  # real time, 90 kHz
        self._last_pts = pts
        frame.pts, frame.time_base = pts, VIDEO_TIME_BASE
        self.rate.tick()
        self.latency_ms.append((now - capture_ns) / 1e6)
        return frame
