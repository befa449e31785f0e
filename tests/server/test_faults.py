"""Live streams against a real Triton server that is killed and restarted, or stalled (SIGSTOP): frames keep
flowing without the model (counted), per-request timeouts bound the latency, the streams recover by themselves,
and every stream / peer stops when asked (no hung thread).

One module-scoped Python-backend repository of the tiny bundle and one server (realtime/engines/triton_server.py);
the streams share one TritonEngine through the server's BatchingEngine, as `serve --backend triton` does."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import aioice.ice
import numpy as np
import pytest

from export.triton_python import write_python_repository
from realtime.api import Filter
from realtime.engines import BatchingEngine, EngineOptions, EngineSpec, make_engine
from realtime.engines.triton_server import TritonServer
from realtime.frames import Frame, Output, now_ns
from realtime.pipeline import PipelineConfig, StageRunner
from realtime.server import rtc_tuning
from realtime.server.client import LiveClient, clip_frames
from tests.server.live import serving

pytestmark = [pytest.mark.triton, pytest.mark.slow, pytest.mark.timeout(300)]

TIMEOUT_S = 0.5  # the engine's per-request timeout in these tests


@pytest.fixture(scope="module")
def server(tiny_bundle, tmp_path_factory):
    repo = tmp_path_factory.mktemp("faults") / "repo"
    write_python_repository(tiny_bundle, repo, max_batch=8, queue_delay_us=2000, ensemble=False)
    srv = TritonServer(repo, grpc=False).start()
    yield srv
    srv.close()


def _filter(bundle, url: str) -> Filter:
    eng = make_engine(bundle, EngineSpec("triton", "cpu", options=EngineOptions(triton_url=url, timeout_s=TIMEOUT_S)))
    return Filter(engine=eng, edits={"brighter": 4.0}, pipeline=PipelineConfig())


def _wait(cond: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return bool(cond())


class Stream:
    """A live, tolerant StageRunner fed 320×240 face frames at ``fps``; records (time, latency ms, face)."""

    def __init__(self, name: str, make_processor: Any, make_tracker: Any, frames: list[np.ndarray], fps: float):
        self.out: list[tuple[float, float, bool]] = []
        self.runner = StageRunner(make_processor(), make_tracker, live=True, queue_size=1, tolerant=True,
                                  emit=self._emit, name=name)
        self.frames, self.fps = frames, fps
        self._stop = threading.Event()
        self._feeder = threading.Thread(target=self._feed, daemon=True)

    def _emit(self, out: Output) -> None:
        self.out.append((time.monotonic(), (now_ns() - out.capture_ns) / 1e6, out.face))

    def _feed(self) -> None:
        i = 0
        t0 = time.monotonic()
        while not self._stop.is_set():
            img = self.frames[i % len(self.frames)]
            self.runner.submit(Frame(image=img, index=i, capture_ns=now_ns()))
            i += 1
            self._stop.wait(max(0.0, t0 + i / self.fps - time.monotonic()))

    def start(self) -> Stream:
        self.runner.start()
        self._feeder.start()
        return self

    def since(self, t: float) -> list[tuple[float, float, bool]]:
        return [o for o in self.out if o[0] >= t]

    def stop(self) -> None:
        self._stop.set()
        self._feeder.join(5)
        self.runner.stop(5)


def _max_gap(outs: list[tuple[float, float, bool]], start: float, end: float) -> float:
    times = [start] + [o[0] for o in outs] + [end]
    return max(b - a for a, b in zip(times, times[1:]))


def test_streams_keep_flowing_through_a_restart_and_a_stall_and_recover(server, tiny_bundle):
    flt = _filter(tiny_bundle, server.http_url)
    make_processor, make_tracker = flt.stream_factories()
    assert isinstance(flt.shared, BatchingEngine)
    frames = clip_frames(320, 240, count=30)
    streams = [Stream(f"s{i}", make_processor, make_tracker, frames, fps=12) for i in range(2)]
    try:
        for s in streams:
            s.start()
        assert _wait(lambda: all(s.runner.state.faces >= 10 for s in streams), 60), "healthy streams process faces"
        assert all(s.runner.faults()["state"] == "ok" for s in streams)

        # -- kill -9 mid-stream, then restart on the same ports
        t_kill = time.monotonic()
        server.kill()
        time.sleep(3.0)
        t_end = time.monotonic()
        for s in streams:
            f = s.runner.faults()
            assert f["state"] == "failing" and f["errors"] >= 1 and f["frames_without_model"] >= 10, f
            assert "Triton inference" in (s.runner.error or "")
            flowing = s.since(t_kill + 0.5)
            assert len(flowing) >= 0.6 * 12 * 2.5, len(flowing)  # frames keep going out at the input rate
            assert _max_gap(s.since(t_kill), t_kill, t_end) < 1.0
        faces_down = [s.runner.state.faces for s in streams]
        server.start(keep_ports=True)
        assert _wait(lambda: all(s.runner.faults()["recoveries"] >= 1 for s in streams), 30), \
            [s.runner.faults() for s in streams]
        assert _wait(lambda: all(s.runner.state.faces > n + 5 for s, n in zip(streams, faces_down)), 20)
        assert all(s.runner.faults()["state"] == "ok" for s in streams)

        # -- SIGSTOP: the server accepts connections and never answers; requests time out after TIMEOUT_S
        t_stop = time.monotonic()
        server.pause()
        try:
            time.sleep(4.0)
            t_end = time.monotonic()
            for s in streams:
                f = s.runner.faults()
                assert f["state"] == "failing" and f["frames_without_model"] >= 10, f
                assert "timed out" in (s.runner.error or "").lower(), s.runner.error
                outs = s.since(t_stop)
                # a frame waits at most for its own request and one queued ahead of it in the shared engine
                assert max(o[1] for o in outs) < 3 * TIMEOUT_S * 1e3 + 1000, max(o[1] for o in outs)
                assert _max_gap(outs, t_stop, t_end) < 3 * TIMEOUT_S + 1.0
                assert len(s.since(t_stop + 1.5)) >= 0.5 * 12 * 2.5
        finally:
            server.resume()
        assert _wait(lambda: all(s.runner.faults()["recoveries"] >= 2 for s in streams), 30)
        f = streams[0].runner.faults()
        assert f["last_outage_s"] is not None and 2.5 < f["last_outage_s"] < 15  # ≈ the 4 s stall
    finally:
        for s in streams:
            s.stop()
        flt.close()
    assert not any(s.runner.alive() for s in streams)  # no hung stream


# ------------------------------------------------------------------------------------------- serve + LiveClient


def test_a_peer_of_serve_rides_out_a_model_server_restart(server, tiny_bundle, monkeypatch):
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
    flt = _filter(tiny_bundle, server.http_url)
    make_processor, make_tracker = flt.stream_factories()

    async def main() -> dict[str, Any]:
        async with serving(make_processor, make_tracker) as (live, url):
            client = LiveClient(url, clip_frames(320, 240, count=30), fps=15)
            await client.connect(timeout=30)
            try:
                assert await client.wait_frames(20, timeout=60) >= 20
                session = next(iter(live.sessions.values()))
                assert session.worker is not None
                runner = session.worker.runner
                await asyncio.to_thread(server.kill)
                t0 = time.monotonic()
                got = await client.wait_frames(20, timeout=10)  # the video keeps coming while the models are down
                assert got >= 20 and time.monotonic() - t0 < 6
                assert await asyncio.to_thread(_wait, lambda: client.stats is not None and
                                               client.stats["faults"]["state"] == "failing", 5)
                await asyncio.to_thread(server.start, True)
                assert await asyncio.to_thread(_wait, lambda: runner.faults()["recoveries"] >= 1, 30)
                assert await asyncio.to_thread(_wait, lambda: client.stats is not None and
                                               client.stats["faults"]["recoveries"] >= 1, 5)
                stats = dict(client.stats or {})
            finally:
                await client.close()
            assert await asyncio.to_thread(_wait, lambda: not live.sessions, 15), "the peer closes"
            assert not runner.alive()  # its threads ended: no hung peer
            return stats

    try:
        rtc_tuning.apply(rtc_tuning.RtcTuning())
        stats = asyncio.run(main())
    finally:
        rtc_tuning.restore()
        flt.close()
    assert stats["faults"]["frames_without_model"] > 0 and stats["faults"]["errors"] >= 1
    assert stats["faults"]["state"] == "ok"
