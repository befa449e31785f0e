"""What every stage runner is made of: per-stage timings, bounded queues, run statistics and the offline look-ahead
smoother of alignment quads."""

from __future__ import annotations

import collections
import contextlib
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from realtime.frames import Frame, Track
from realtime.vision.tracking import smooth_quads


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
    def measure(self, stage: str, into: dict[str, float] | None = None) -> Iterator[None]:
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


class _Closed:
    def __repr__(self) -> str:
        return "CLOSED"


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

    def put(self, item: Any, stop: threading.Event | None = None) -> bool:
        """Returns False if the queue was closed (item not queued) or ``stop`` was set while blocked."""
        with self._cv:
            while len(self._items) >= self.maxsize and not self._closed:
                if self.drop_oldest:
                    self._items.popleft()
                    self.dropped += 1
                    break
                self._cv.wait(0.1)
                if stop is not None and stop.is_set():
                    return False  # a hard stop: don't block forever on a consumer that is gone
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

    def wait_for_room(self, stop: threading.Event | None = None) -> None:
        """Block until a ``put`` would neither drop nor block (or the queue is closed, or ``stop`` is set)."""
        with self._cv:
            while len(self._items) >= self.maxsize and not self._closed and not (stop is not None and stop.is_set()):
                self._cv.wait(0.1)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        with self._cv:
            return len(self._items)


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


class LookaheadSmoother:
    """Non-causal Gaussian smoothing of alignment quads with a bounded look-ahead (file jobs).

    A frame is released once ``radius = ceil(3σ)`` later frames have been tracked, with its quad smoothed over
    the raw quads of up to ``radius`` frames on either side. Frames without a face pass through unchanged and
    act as breaks (:func:`realtime.vision.tracking.smooth_quads` does not smooth across them)."""

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
