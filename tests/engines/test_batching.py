"""BatchingEngine: concurrent streams' calls merged into one engine call per kind, rows back to the right caller,
errors to every caller of a merged call, a bounded window, closing."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from realtime.engines import BatchConfig, BatchingEngine, Engine, EngineSpec, SerialEngine, make_engine
from realtime.engines.batching import EngineClosed
from realtime.engines.serial import ForwardingEngine

N = 4


class Recording(ForwardingEngine):
    """A real engine whose calls are recorded (method, rows); ``gate``: the first call waits until it is set, so the
    callers that arrive meanwhile queue behind it; ``fail``: calls of that many rows or more raise."""

    def __init__(self, engine: Engine, gate: threading.Event | None = None, fail_rows: int | None = None):
        super().__init__(engine)
        self.log: list[tuple[str, int]] = []
        self.gate, self.fail_rows = gate, fail_rows
        self.closed = False

    def _enter(self, method: str, rows: int) -> None:
        first = not self.log
        self.log.append((method, rows))
        if first and self.gate is not None:
            assert self.gate.wait(10)
        if self.fail_rows is not None and rows >= self.fail_rows:
            raise ValueError(f"{method} failed on {rows} rows")

    def encode_key(self, crops):
        self._enter("encode_key", crops.shape[0])
        return self._engine.encode_key(crops)

    def encode_reuse(self, crops, prev_ws):
        self._enter("encode_reuse", crops.shape[0])
        return self._engine.encode_reuse(crops, prev_ws)

    def encode_coarse(self, crops, prev_ws):
        self._enter("encode_coarse", crops.shape[0])
        return self._engine.encode_coarse(crops, prev_ws)

    def synthesize(self, ws, style_deltas=None):
        self._enter("synthesize", ws.shape[0])
        return self._engine.synthesize(ws, style_deltas)

    def close(self):
        self.closed = True


@pytest.fixture(scope="module")
def engine(tiny_bundle):
    return make_engine(tiny_bundle, EngineSpec("torch", "cpu", "fp32"))


def _inputs(engine, i: int, rows: int = 1):
    g = torch.Generator().manual_seed(100 + i)
    crops = torch.rand(rows, 3, engine.crop_size, engine.crop_size, generator=g) * 2 - 1
    return crops


def _queued(batching: BatchingEngine, n: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with batching._cv:
            if len(batching._pending) >= n:
                return True
        time.sleep(0.002)
    return False


def _run_threads(fns):
    results: dict[int, object] = {}

    def run(i, fn):
        try:
            results[i] = fn()
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate(fns)]
    for t in threads:
        t.start()
    return threads, results



def _held(rec, fn):
    """Start ``fn`` on a thread; return (threads, results) once its call is inside the engine, held by the gate."""
    threads, results = _run_threads([fn])
    deadline = time.monotonic() + 10
    while not rec.log and time.monotonic() < deadline:
        time.sleep(0.002)
    return threads, results


def _queued_behind(b, rec, first, calls, timeout: float = 10):
    """``first`` held inside the engine, ``calls`` queued behind it, then the gate opened: (first's result, the
    calls' results in order)."""
    held, r0 = _held(rec, first)
    more, rs = _run_threads(calls)
    assert _queued(b, len(calls)), "the other callers queue while the engine is busy"
    rec.gate.set()
    for t in held + more:
        t.join(timeout)
    return r0[0], [rs[i] for i in range(len(calls))]

def test_declared_attributes_and_a_lone_call_equals_the_engine(engine):
    b = BatchingEngine(engine)
    for attr in ("name", "device", "precision", "spec", "crop_size", "resolution", "num_ws", "w_dim", "num_coarse",
                 "has_vien", "bundle"):
        assert getattr(b, attr) == getattr(engine, attr)
    assert isinstance(b, Engine)
    crops = _inputs(engine, 0)
    ws = b.encode_key(crops)
    torch.testing.assert_close(ws, engine.encode_key(crops), rtol=0, atol=0)
    torch.testing.assert_close(b.encode_reuse(crops, ws), engine.encode_reuse(crops, ws), rtol=0, atol=0)
    torch.testing.assert_close(b.synthesize(ws), engine.synthesize(ws), rtol=0, atol=0)
    assert b.stats()["engine_calls"] == 3 and b.stats()["calls"] == 3


def test_concurrent_callers_are_merged_and_get_their_own_rows(engine):
    """The first call holds the engine (gate) while N others queue; they then run as ONE call whose rows go back to
    the right callers, equal to unbatched calls (one caller sends 2 rows, as the transfer mode does)."""
    gate = threading.Event()
    rec = Recording(engine, gate=gate)
    b = BatchingEngine(rec, BatchConfig(batch_window_ms=0.0, batch_concurrency=1))
    crops = [_inputs(engine, i, rows=2 if i == 2 else 1) for i in range(N + 1)]
    ws_ref = [engine.encode_key(c) for c in crops]
    r0, rs = _queued_behind(b, rec, lambda: b.encode_key(crops[0]), [lambda c=c: b.encode_key(c) for c in crops[1:]])
    got = [r0, *rs]
    for i, (w, ref) in enumerate(zip(got, ws_ref)):
        assert isinstance(w, torch.Tensor), w
        assert w.shape == ref.shape, i
        torch.testing.assert_close(w, ref, rtol=1e-5, atol=1e-5)
    assert rec.log == [("encode_key", 1), ("encode_key", N + 1)]  # 5 stream calls → 2 engine calls
    st = b.stats()
    assert st["calls"] == N + 1 and st["engine_calls"] == 2
    assert st["batch_rows"]["encode_key"] == {1: 1, N + 1: 1}


def test_merged_calls_respect_the_engine_s_max_batch(engine):
    """An engine that takes at most 2 rows a call (a TensorRT profile, a Triton model's max_batch_size): 4 queued
    calls go as two calls of 2, never one of 4 (which the server would refuse, failing every stream)."""

    class Capped(Recording):
        max_batch = 2

    gate = threading.Event()
    rec = Capped(engine, gate=gate)
    b = BatchingEngine(rec, BatchConfig(batch_window_ms=0.0, batch_concurrency=1))
    assert b.max_rows == 2 and b.max_batch == 2
    crops = [_inputs(engine, 60 + i) for i in range(5)]
    _queued_behind(b, rec, lambda: b.encode_key(crops[0]), [lambda c=c: b.encode_key(c) for c in crops[1:]])
    assert rec.log == [("encode_key", 1), ("encode_key", 2), ("encode_key", 2)]


def test_coarse_reuse_calls_are_merged_too(engine):
    """--reuse coarse (encode_coarse) from several streams: queued calls run as one, each caller gets its rows."""
    gate = threading.Event()
    rec = Recording(engine, gate=gate)
    b = BatchingEngine(rec, BatchConfig(batch_window_ms=0.0, batch_concurrency=1))
    crops = [_inputs(engine, 20 + i) for i in range(N)]
    prev = [engine.encode_key(_inputs(engine, 40 + i)) for i in range(N)]
    want = [engine.encode_coarse(c, w) for c, w in zip(crops, prev)]
    _, results = _queued_behind(b, rec, lambda: b.encode_key(crops[0]),
                                [lambda c=c, w=w: b.encode_coarse(c, w) for c, w in zip(crops, prev)])
    for i in range(N):
        torch.testing.assert_close(results[i], want[i], rtol=1e-5, atol=1e-5)
    assert rec.log == [("encode_key", 1), ("encode_coarse", N)]
    assert b.stats()["batch_rows"]["encode_coarse"] == {N: 1}


def test_many_threads_synthesize_and_reuse_rows_back_to_the_right_caller(engine):
    """Free-running threads (no gate): every result equals its own unbatched call, and some calls were merged."""
    b = BatchingEngine(Recording(engine), BatchConfig(batch_window_ms=2.0))
    ws = [engine.encode_key(_inputs(engine, i)) for i in range(N)]
    crops = [_inputs(engine, 50 + i) for i in range(N)]
    want_img = [engine.synthesize(w) for w in ws]
    want_reuse = [engine.encode_reuse(c, w) for c, w in zip(crops, ws)]
    bad: list[str] = []
    start = threading.Barrier(N)

    def stream(i):
        start.wait()
        for _ in range(15):
            img = b.synthesize(ws[i])
            if not torch.allclose(img, want_img[i], atol=1e-5, rtol=1e-5):
                bad.append(f"synthesize {i}")
            r = b.encode_reuse(crops[i], ws[i])
            if not torch.allclose(r, want_reuse[i], atol=1e-5, rtol=1e-5):
                bad.append(f"encode_reuse {i}")

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(N)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not bad
    st = b.stats()
    assert st["calls"] == N * 30
    assert st["engine_calls"] < st["calls"], st  # merging happened
    assert max(st["batch_rows"]["synthesize"]) > 1


def test_style_deltas_merge_by_layer_set_only(engine):
    """[B, C] deltas on the same layers merge (and stay each caller's); another layer set, or deltas that do not
    carry the call's batch, run on their own."""
    gate = threading.Event()
    rec = Recording(engine, gate=gate)
    b = BatchingEngine(rec, BatchConfig(batch_window_ms=0.0, batch_concurrency=1))
    synthesis = engine.bundle.generator.synthesis
    ws = [engine.encode_key(_inputs(engine, i)) for i in range(4)]
    styles = synthesis.styles(ws[0])
    la, lb = list(styles)[:2]
    d = [{la: torch.randn(1, styles[la].shape[1], generator=torch.Generator().manual_seed(i))} for i in range(3)]
    d.append({lb: torch.randn(1, styles[lb].shape[1])})
    broadcast = {la: torch.randn(1, styles[la].shape[1])}
    two = torch.cat([ws[0], ws[1]])  # B = 2 with [1, C] deltas (broadcast): cannot be concatenated
    calls = [lambda: b.synthesize(ws[0], d[0]), lambda: b.synthesize(ws[1], d[1]),
             lambda: b.synthesize(ws[2], d[2]), lambda: b.synthesize(ws[3], d[3]),
             lambda: b.synthesize(two, broadcast)]
    want = [engine.synthesize(ws[i], d[i]) for i in range(4)] + [engine.synthesize(two, broadcast)]
    _, rs = _queued_behind(b, rec, lambda: b.synthesize(ws[0]), calls, timeout=30)
    for i, w in enumerate(want):
        torch.testing.assert_close(rs[i], w, rtol=1e-5, atol=1e-5)
    assert sorted(rec.log[1:]) == [("synthesize", 1), ("synthesize", 2), ("synthesize", 3)]


def test_an_error_in_a_merged_call_reaches_every_caller_in_it(engine):
    gate = threading.Event()
    rec = Recording(engine, gate=gate, fail_rows=2)
    b = BatchingEngine(rec, BatchConfig(batch_window_ms=0.0, batch_concurrency=1))
    crops = [_inputs(engine, i) for i in range(N + 1)]
    r0, errors = _queued_behind(b, rec, lambda: b.encode_key(crops[0]),
                                [lambda c=c: b.encode_key(c) for c in crops[1:]])
    assert isinstance(r0, torch.Tensor)  # the lone first call succeeded
    assert all(isinstance(e, ValueError) and "failed on 4 rows" in str(e) for e in errors), errors
    assert len({id(e) for e in errors}) == N  # each caller raises its own copy
    assert isinstance(b.encode_key(crops[0]), torch.Tensor)  # the engine still works afterwards


def test_with_concurrency_2_a_second_merged_call_runs_while_the_first_is_busy(engine):
    """Two slots (a CPU engine on two cores): while one merged call is held inside the engine, the next caller
    leads a second one; the callers queued behind both still merge, and every caller gets its own rows."""
    gate = threading.Event()
    rec = Recording(engine, gate=gate)
    b = BatchingEngine(rec, BatchConfig(batch_window_ms=0.0, batch_concurrency=2))
    crops = [_inputs(engine, i) for i in range(5)]
    want = [engine.encode_key(c) for c in crops]
    first, r0 = _held(rec, lambda: b.encode_key(crops[0]))
    more, rs = _run_threads([lambda c=c: b.encode_key(c) for c in crops[1:]])
    for t in more:
        t.join(10)  # the second slot served them while the first call is still held
    assert all(isinstance(rs[i], torch.Tensor) for i in range(4)), rs
    assert first[0].is_alive()
    gate.set()
    first[0].join(10)
    for i, r in enumerate([r0[0]] + [rs[i] for i in range(4)]):
        torch.testing.assert_close(r, want[i], rtol=1e-5, atol=1e-5)
    assert rec.log[0] == ("encode_key", 1) and sum(n for _, n in rec.log) == 5
    assert b.stats()["concurrency"] == 2


@pytest.mark.slow
def test_a_lone_stream_never_waits_and_a_due_stream_holds_a_batch_at_most_the_window(engine):
    """With a (test-only) 400 ms window: a single stream's calls return at once; a second stream that called every
    300 ms and then went quiet is waited for when its next call is due — at most the window, not longer."""
    b = BatchingEngine(engine, BatchConfig(batch_window_ms=400.0, batch_concurrency=1))
    ws = engine.encode_key(_inputs(engine, 0))
    t0 = time.perf_counter()
    for _ in range(5):
        b.synthesize(ws)
    assert time.perf_counter() - t0 < 1.0  # 5 × 400 ms if it waited

    def rhythm():
        for _ in range(4):
            b.synthesize(ws)
            time.sleep(0.3)

    other = threading.Thread(target=rhythm)  # a second stream: every 300 ms, then silent
    other.start()
    other.join(10)
    t0 = time.perf_counter()
    b.synthesize(ws)  # the other stream's next call is due about now
    waited = time.perf_counter() - t0
    assert 0.25 < waited < 1.5, waited
    time.sleep(0.9)
    t0 = time.perf_counter()
    b.synthesize(ws)  # overdue by more than the window now: not waited for
    assert time.perf_counter() - t0 < 0.2


def test_calls_of_different_shapes_or_kinds_never_merge(engine):
    gate = threading.Event()
    rec = Recording(engine, gate=gate)
    b = BatchingEngine(rec, BatchConfig(batch_window_ms=0.0, batch_concurrency=1))
    ws = engine.encode_key(_inputs(engine, 0))
    crops = _inputs(engine, 1)
    _, rs = _queued_behind(b, rec, lambda: b.synthesize(ws), [
        lambda: b.encode_key(crops), lambda: b.synthesize(ws), lambda: b.encode_reuse(crops, ws),
        lambda: b.synthesize(ws)])
    assert all(isinstance(r, torch.Tensor) for r in rs), rs
    assert sorted(rec.log[1:]) == [("encode_key", 1), ("encode_reuse", 1), ("synthesize", 2)]


def test_close_fails_queued_calls_waits_for_the_running_one_and_closes_the_engine(engine):
    gate = threading.Event()
    rec = Recording(engine, gate=gate)
    b = BatchingEngine(rec, BatchConfig(batch_window_ms=0.0, batch_concurrency=1))
    crops = _inputs(engine, 0)
    first, r0 = _held(rec, lambda: b.encode_key(crops))
    more, rs = _run_threads([lambda: b.encode_key(crops)] * 2)
    assert _queued(b, 2)
    closer = threading.Thread(target=b.close)
    closer.start()
    for t in more:
        t.join(10)
    assert all(isinstance(rs[i], EngineClosed) for i in range(2)), rs  # queued calls fail at once
    assert closer.is_alive() and not rec.closed  # close waits for the call inside the engine
    gate.set()
    closer.join(10)
    first[0].join(10)
    assert isinstance(r0[0], torch.Tensor) and rec.closed
    with pytest.raises(EngineClosed):
        b.encode_key(crops)


def test_serial_engine_counts_one_engine_call_per_call(engine):
    s = SerialEngine(engine)
    ws = s.encode_key(_inputs(engine, 0))
    s.synthesize(ws)
    assert s.calls == 2


def test_a_failing_engine_fails_queued_calls_at_once_and_lets_one_probe_through(engine):
    """An engine failure (a server down, not a bad input): the calls queued behind it fail with it; while it is
    failing, a call that arrives during a probe fails at once instead of waiting; a successful call ends it."""
    gate = threading.Event()
    rec = Recording(engine, gate=gate)
    b = BatchingEngine(rec, BatchConfig(batch_window_ms=0.0, batch_concurrency=1))

    def down(*_a, **_k):
        rec.log.append(("down", 1))
        if len(rec.log) == 1:
            assert gate.wait(10)
        raise ConnectionError("model server down")

    crops = _inputs(engine, 0)
    rec.encode_key = down  # type: ignore[method-assign]
    r0, rs = _queued_behind(b, rec, lambda: b.encode_key(crops), [lambda: b.encode_key(crops)] * 3)
    assert all(isinstance(r, ConnectionError) for r in [r0, *rs])
    assert len(rec.log) == 1  # the queued calls did not each try the engine
    assert b.stats()["failing"] and b.stats()["fast_failures"] == 3
    with pytest.raises(ConnectionError):  # a probe: goes through, fails
        b.encode_key(crops)
    assert len(rec.log) == 2
    del rec.encode_key  # the server is back
    assert isinstance(b.encode_key(crops), torch.Tensor)
    assert not b.stats()["failing"]


def test_the_call_rhythm_of_ended_streams_is_forgotten(engine):
    """Each stream's call rhythm is kept per (thread, method); with no window nothing read it back, so a server's
    ended streams piled up there for its whole life. Stale ones now go once there are many."""
    b = BatchingEngine(engine, BatchConfig(batch_window_ms=0.0))
    stale = time.monotonic() - 10.0
    b._rhythm.update({(1000 + i, "synthesize"): (stale, 0.033) for i in range(100)})
    b.encode_key(_inputs(engine, 0))
    assert len(b._rhythm) == 1  # this call's own
