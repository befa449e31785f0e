"""BatchingEngine: one engine shared by several streams, their concurrent model calls merged into batched calls.

The server's streams each run a device thread that calls ``encode_key`` / ``encode_reuse`` / ``synthesize`` with
one frame (B = 1; the transfer compositing mode renders B = 2). Run one at a time (:class:`SerialEngine`), N streams
cost N engine calls per stage; here the calls that arrive while the wrapped engine is busy — or within a short
window after it becomes free — are concatenated along the batch dimension into **one call per kind**, and each
caller gets its own rows back::

    stream 1: synthesize(ws₁ [1, …]) ─┐                                   ┌─▶ image₁ [1, 3, R, R]
    stream 2: synthesize(ws₂ [1, …]) ─┼─▶ engine.synthesize([ws₁; ws₂; ws₃]) ─┼─▶ image₂
    stream 3: synthesize(ws₃ [2, …]) ─┘        one call, B = 4                └─▶ image₃ [2, 3, R, R]

No extra thread: a caller that finds a free slot becomes a *leader*; it waits up to ``window_ms`` (by default 1 ms
on CUDA, none on a CPU or Triton engine) for the other streams whose next call of that kind is due within the window
(from the rhythm of their earlier calls; a stream with a call queued already, or out of phase, is not waited for — so
a lone stream never waits, and nobody waits longer than the window), takes every queued call of the oldest call's
kind (up to ``max_rows`` rows), runs them as one call and hands the rows out; it keeps leading until its own call is
done, then a waiting caller leads.
``concurrency`` leaders may run at once: 1 for CUDA and TensorRT engines (one device queue; CUDA graphs and
TensorRT contexts are not re-entrant), the CPU's cores for CPU engines and Triton, whose calls are thread-safe — on
a CPU one merged call at a time left a core idle while every stream waited for it (measured: docs/scale.md).
Per-stream state stays with the stream (the previous W+ is an input of ``encode_reuse``), so the wrapped engine is
stateless and any caller's rows can share a call.

**When the wrapped engine fails** (anything but a ValueError / TypeError about one call's inputs: a model server
that is down or stalled, say), the calls queued behind the failed call fail with it at once, and until a call
succeeds again only one call at a time goes through to the engine as a probe — the others fail at once with the
last error instead of each waiting out its own timeout (measured: a stalled Triton server kept four streams' frames
waiting up to 3 s with a 1 s timeout without this). The streams' runners pass frames on without the model
meanwhile and retry after their back-off.

Calls merge only when they are the same kind: the same method, the same per-row shapes, and for ``synthesize`` the
same StyleSpace layer set with ``[B, C]`` deltas whose B matches the call's (any other delta shape runs alone). An
error in a merged call is raised in every caller of that call. ``stats()`` counts calls, engine calls and the
batch-size histogram (rows per engine call).
"""

from __future__ import annotations

import collections
import copy
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import torch

from models.config import opt
from realtime.engines.base import Engine
from realtime.engines.serial import ForwardingEngine

ACTIVE_S = 1.0  # a stream's call rhythm is forgotten after this long without a call


@dataclass(frozen=True)
class BatchConfig:
    """How the server's streams share one engine (CLI flags of `serve`)."""

    batching: bool = opt(True, "merge the streams' concurrent model calls into one batched call per kind "
                               "(--no-batching: one call at a time)")
    batch_window_ms: float = opt(-1.0, "how long a free engine waits for other streams' calls that are due before "
                                       "it runs a merged call (never for a lone stream); -1: auto = 1 ms on a CUDA "
                                       "engine, 0 on a CPU or Triton engine (there only calls that queued while the "
                                       "engine was busy merge: a merged call is no cheaper per row on a CPU, and "
                                       "Triton batches on the server)", min=-1.0, max=2.0)
    batch_max: int = opt(8, "most rows in one batched call (capped by the engine's own limit: a TensorRT profile's "
                            "max batch, a Triton model's max_batch_size)", min=1, max=64)
    batch_concurrency: int = opt(0, "merged calls in flight at once; 0: 1 on CUDA / TensorRT, the CPU cores for CPU "
                                    "engines and Triton", min=0, max=256)


def default_window_ms(engine: Engine) -> float:
    """The window ``batch_window_ms = -1`` means: 1 ms on CUDA (bigger batches are cheaper per row on a GPU), 0 on
    a CPU (measured: no cheaper per row, and waiting added latency at 8 streams) and for Triton (its own queue)."""
    return 1.0 if engine.device.type == "cuda" and engine.spec.backend != "triton" else 0.0


def default_concurrency(engine: Engine) -> int:
    """Merged calls in flight at once: 1 on CUDA (and TensorRT), the usable CPU cores for CPU engines and Triton."""
    if engine.spec.backend == "tensorrt" or (engine.device.type == "cuda" and engine.spec.backend != "triton"):
        return 1
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


class EngineClosed(RuntimeError):
    """A call on a closed (or closing) batching engine."""


class _Call:
    """One caller's request, waiting to be merged."""

    __slots__ = ("method", "key", "args", "rows", "thread", "done", "result", "error")

    def __init__(self, method: str, key: tuple[Any, ...], args: tuple[Any, ...], rows: int):
        self.method, self.key, self.args, self.rows = method, key, args, rows
        self.thread = threading.get_ident()
        self.done = False
        self.result: torch.Tensor | None = None
        self.error: BaseException | None = None

    def outcome(self) -> torch.Tensor:
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def _copy_error(exc: BaseException) -> BaseException:
    """Each caller raises its own copy (one exception object raised in several threads shares a traceback)."""
    try:
        dup = copy.copy(exc)
    except Exception:  # noqa: BLE001 - an exception type that cannot be copied: share it
        return exc
    return dup if isinstance(dup, BaseException) else exc


class BatchingEngine(ForwardingEngine):
    """An :class:`Engine` over ``engine`` that merges concurrent calls (see the module docstring).

    ``window_ms`` (≤ 2 ms by the config's bound) and ``max_rows`` come from :class:`BatchConfig`; the engine's
    ``max_batch`` (a TensorRT profile, a Triton model config) caps ``max_rows``. ``close()`` fails the queued
    calls, waits for the running one and closes the wrapped engine."""

    def __init__(self, engine: Engine, config: BatchConfig | None = None):
        super().__init__(engine)
        cfg = config or BatchConfig()
        window_ms = cfg.batch_window_ms if cfg.batch_window_ms >= 0 else default_window_ms(engine)
        self.window_s = window_ms / 1e3
        self.max_rows = cfg.batch_max
        if engine.max_batch is not None:  # a TensorRT profile's or a Triton model's limit
            self.max_rows = min(self.max_rows, engine.max_batch)
        self.concurrency = cfg.batch_concurrency or default_concurrency(engine)
        self._cv = threading.Condition()
        self._pending: collections.deque[_Call] = collections.deque()
        self._leaders = 0  # merged calls in flight
        self._failing: BaseException | None = None  # the last engine failure, until a call succeeds again
        self.fast_failures = 0  # calls failed at once while the engine was failing
        self._closed = False
        # (caller thread, method) → (last call, smoothed interval between its calls), monotonic seconds
        self._rhythm: dict[tuple[int, str], tuple[float, float | None]] = {}
        self.calls = 0  # calls made by the streams
        self.engine_calls = 0  # calls of the wrapped engine
        self.histogram: dict[str, collections.Counter[int]] = {m: collections.Counter() for m in
                                                                ("encode_key", "encode_reuse", "encode_coarse",
                                                                 "synthesize")}

    # -- the Engine methods ---------------------------------------------------------------------------------

    def encode_key(self, crops: torch.Tensor) -> torch.Tensor:
        key = ("encode_key", tuple(crops.shape[1:]), crops.dtype, crops.device)
        return self._submit(_Call("encode_key", key, (crops,), int(crops.shape[0])))

    def encode_reuse(self, crops: torch.Tensor, prev_ws: torch.Tensor) -> torch.Tensor:
        return self._with_prev("encode_reuse", crops, prev_ws)

    def encode_coarse(self, crops: torch.Tensor, prev_ws: torch.Tensor) -> torch.Tensor:
        return self._with_prev("encode_coarse", crops, prev_ws)

    def _with_prev(self, method: str, crops: torch.Tensor, prev_ws: torch.Tensor) -> torch.Tensor:
        """A call that takes crops and the previous W+ (encode_reuse, encode_coarse), both concatenated."""
        key = (method, tuple(crops.shape[1:]), tuple(prev_ws.shape[1:]), crops.dtype, crops.device)
        if prev_ws.shape[0] != crops.shape[0]:
            key += (object(),)  # mismatched rows: the wrapped engine says what is wrong, to this caller alone
        return self._submit(_Call(method, key, (crops, prev_ws), int(crops.shape[0])))

    def synthesize(self, ws: torch.Tensor, style_deltas: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        b = int(ws.shape[0])
        key: tuple[Any, ...] = ("synthesize", tuple(ws.shape[1:]), ws.dtype, ws.device)
        if style_deltas:
            layers = tuple(sorted((k, tuple(v.shape[1:])) for k, v in style_deltas.items()))
            key += (layers,)
            if any(v.ndim < 1 or v.shape[0] != b for v in style_deltas.values()):
                key += (object(),)  # deltas broadcast over the batch: cannot be concatenated, run alone
        return self._submit(_Call("synthesize", key, (ws, style_deltas or None), b))

    def close(self) -> None:
        with self._cv:
            self._closed = True
            for call in self._pending:
                call.error, call.done = EngineClosed("the shared engine was closed"), True
            self._pending.clear()
            self._cv.notify_all()
            while self._leaders:
                self._cv.wait()
            self._leaders = self.concurrency  # nobody leads any more
        self._engine.close()

    # -- statistics -----------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Calls by the streams, calls of the wrapped engine, and per method the rows-per-engine-call histogram."""
        with self._cv:
            hist = {m: dict(sorted(h.items())) for m, h in self.histogram.items() if h}
            return {"calls": self.calls, "engine_calls": self.engine_calls, "batch_rows": hist,
                    "window_ms": self.window_s * 1e3, "max_rows": self.max_rows, "concurrency": self.concurrency,
                    "failing": self._failing is not None, "fast_failures": self.fast_failures}

    # -- merging --------------------------------------------------------------------------------------------

    def _submit(self, call: _Call) -> torch.Tensor:
        with self._cv:
            if self._closed:
                raise EngineClosed("the shared engine was closed")
            self._note(call, time.monotonic())
            self.calls += 1
            if self._failing is not None and (self._leaders or self._pending):
                self.fast_failures += 1  # a probe is under way: fail now rather than wait out its timeout
                raise _copy_error(self._failing)
            self._pending.append(call)
            self._cv.notify_all()  # a leader waiting out its window may take this call
            while not call.done and self._leaders >= (1 if self._failing is not None else self.concurrency):
                self._cv.wait()
            if call.done:
                return call.outcome()
            self._leaders += 1  # this caller leads
        try:
            while not call.done:
                batch = self._take()
                if not batch:  # this call is in another leader's merged call, running now
                    break
                self._execute(batch)
        finally:
            with self._cv:
                self._leaders -= 1
                self._cv.notify_all()
                while not call.done:
                    self._cv.wait()
        return call.outcome()

    def _note(self, call: _Call, now: float) -> None:
        key = (call.thread, call.method)
        last, period = self._rhythm.get(key, (None, None))
        if last is not None and now - last < ACTIVE_S:
            period = now - last if period is None else 0.8 * period + 0.2 * (now - last)
        self._rhythm[key] = (now, period)
        if len(self._rhythm) > 64:  # streams that ended (with no window, _expected never prunes them)
            for k, (t, _) in list(self._rhythm.items()):
                if now - t > ACTIVE_S:
                    del self._rhythm[k]

    def _expected(self, now: float, method: str) -> float | None:
        """Until when (monotonic) a leader's window waits for streams without a queued call whose next ``method``
        call is due within the window (from the rhythm of their earlier calls): each is waited for until it is a
        window overdue. None: nobody is due (a lone stream, or the others out of phase)."""
        queued = {c.thread for c in self._pending}
        until = None
        for (thread, m), (last, period) in list(self._rhythm.items()):
            if now - last > ACTIVE_S:
                del self._rhythm[(thread, m)]
            elif m == method and period is not None and thread not in queued \
                    and abs(last + period - now) < self.window_s:
                until = max(until or 0.0, last + period + self.window_s)
        return until

    def _take(self) -> list[_Call]:
        """The next batch: the queued calls of the oldest call's kind (waiting out the window when more may come)."""
        with self._cv:
            deadline = time.monotonic() + self.window_s
            while True:
                if not self._pending:  # another leader took them while this one waited
                    return []
                key = self._pending[0].key
                if self.window_s <= 0 or self._closed:
                    break
                rows = sum(c.rows for c in self._pending if c.key == key)
                now = time.monotonic()
                until = self._expected(now, self._pending[0].method)
                if rows >= self.max_rows or now >= deadline or until is None:
                    break
                self._cv.wait(min(deadline, until) - now)
            batch: list[_Call] = []
            rows = 0
            for c in list(self._pending):
                if c.key == key and (not batch or rows + c.rows <= self.max_rows):
                    batch.append(c)
                    rows += c.rows
                    self._pending.remove(c)
            self.engine_calls += 1
            self.histogram[batch[0].method][rows] += 1
            return batch

    def _execute(self, batch: list[_Call]) -> None:
        method = batch[0].method
        fn = getattr(self._engine, method)
        try:
            if len(batch) == 1:
                results = [fn(*batch[0].args)]
            else:
                out = fn(*_concat([c.args for c in batch]))
                results = list(torch.split(out, [c.rows for c in batch]))
        except BaseException as exc:  # noqa: BLE001 - every caller of the merged call gets the error
            with self._cv:
                failed = list(batch)
                if not isinstance(exc, ValueError | TypeError):  # the engine fails, not this call's inputs
                    self._failing = exc
                    failed += list(self._pending)  # queued behind it: they would wait and fail the same way
                    self.fast_failures += len(self._pending)
                    self._pending.clear()
                for c in failed:
                    c.error, c.done = _copy_error(exc), True
                self._cv.notify_all()
            return
        with self._cv:
            self._failing = None  # the engine works (again)
            for c, r in zip(batch, results):
                c.result, c.done = r, True
            self._cv.notify_all()


def _concat(args: list[tuple[Any, ...]]) -> tuple[Any, ...]:
    """The arguments of several calls of one kind, concatenated along the batch dimension."""
    out: list[Any] = []
    for i, first in enumerate(args[0]):
        if first is None:
            out.append(None)
        elif isinstance(first, dict):
            out.append({k: torch.cat([a[i][k] for a in args]) for k in first})
        else:
            out.append(torch.cat([a[i] for a in args]))
    return tuple(out)
