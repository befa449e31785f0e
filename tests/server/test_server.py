"""The live server on loopback: aiortc clients in this process, a tiny random bundle, real MediaPipe tracking.

Every client and server here uses host candidates on 127.0.0.1 only (aioice patched), no STUN, and every loop
is bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import gc
import json
import logging
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import aioice.ice
import av
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, mediastreams, rtcrtpsender
from aiortc.codecs import h264, vpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from models.bundle import load_bundle
from models.errors import UserError
from realtime import cli
from realtime.api import Filter
from realtime.engines import EngineSpec, make_engine
from realtime.pipeline import PipelineConfig
from realtime.pipeline.calibration import CalibrationConfig
from realtime.server import rtc_tuning
from realtime.server.app import LiveServer, check_bind, parse_ice_server
from realtime.server.client import LiveClient, StampedTrack, clip_frames, read_stamp, stamp_i420
from tests import REPO
from tests.server import live

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def tiny(tiny_bundle_dir: Path) -> tuple[Any, Any, list[Any]]:
    return tiny_factories(tiny_bundle_dir)


def tiny_factories(path: Path, calibration: Any = None, composite: str = "regenerate") -> tuple[Any, Any, list[Any]]:
    """(make_processor, make_tracker, edit specs) over the bundle at ``path`` (the session's tiny bundle). The tests
    start in regenerate mode: the random generator's face replacing the input's is what they look for."""
    bundle = load_bundle(path)
    flt = Filter(engine=make_engine(bundle, EngineSpec("torch", "cpu", "fp32")), pipeline=PipelineConfig(),
                 calibration=calibration, composite=composite)
    make_processor, make_tracker = flt.stream_factories()
    return make_processor, make_tracker, list(flt.processor.edits.specs.values())


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """ICE host candidates on 127.0.0.1 only: nothing leaves the machine, whatever its interfaces."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
    yield
    rtc_tuning.restore()


def serving(tiny, **config: Any) -> contextlib.AbstractAsyncContextManager[tuple[LiveServer, str]]:
    make_processor, make_tracker, specs = tiny
    return live.serving(make_processor, make_tracker, specs, **config)


def face_box(width: int, height: int) -> tuple[slice, slice]:
    """Where the demo clip's face is (centre (0.5w, 0.45h), ~36 % of the height tall)."""
    cy, cx, r = int(0.45 * height), width // 2, int(0.12 * height)
    return slice(cy - r, cy + r), slice(cx - r, cx + r)


def mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


async def wait_until(cond: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        await asyncio.sleep(0.1)
    return bool(cond())


# ------------------------------------------------------------------------------------------------- units


def test_stamp_round_trip():
    h, w = 120, 320
    yuv = np.full((h * 3 // 2, w), 100, np.uint8)
    for i in (0, 1, 77, 4095, 5000):
        stamp_i420(yuv, w, h, i)
        assert read_stamp(yuv[:h]) == i % 4096
    assert read_stamp(np.full((h, w), 100, np.uint8)) is None


def test_bind_needs_token_and_ice_urls():
    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    check_bind("0.0.0.0", "secret")
    with pytest.raises(UserError, match="--token"):
        check_bind("0.0.0.0", None)
    assert cli.main(["serve", "--host", "0.0.0.0"]) == 2  # one-line error before any model loads
    s = parse_ice_server("turn:alice:p%40ss@turn.example.org:3478?transport=udp")
    assert (s.urls, s.username, s.credential) == ("turn:turn.example.org:3478?transport=udp", "alice", "p@ss")
    assert parse_ice_server("stun:stun.example.org:3478").username is None
    for bad in ("http://x", "turn:host:3478", "stun:", "nonsense"):
        with pytest.raises(UserError):
            parse_ice_server(bad)


def test_tuning_patches_aiortc_and_encodes_720p_at_level_42():
    t = rtc_tuning.apply(rtc_tuning.RtcTuning(fps=60, h264_encoder="libx264"))
    try:
        assert h264.MAX_FRAME_RATE == vpx.MAX_FRAME_RATE == 60 and abs(mediastreams.VIDEO_PTIME - 1 / 60) < 1e-9
        assert h264.MAX_BITRATE == vpx.MAX_BITRATE == t.max_bitrate
        codec = type("C", (), {"mimeType": "video/H264"})()
        enc = rtcrtpsender.get_encoder(codec)
        assert isinstance(enc, rtc_tuning.TunedH264Encoder)
        enc.target_bitrate = 50_000_000
        assert enc.target_bitrate == t.max_bitrate  # REMB clamps to our bounds, not aiortc's 3 Mbps
        frame = av.VideoFrame.from_ndarray(np.zeros((720, 1280, 3), np.uint8), format="rgb24")
        frame.pts, frame.time_base = 0, mediastreams.VIDEO_TIME_BASE
        payloads, _ = enc.encode(frame)
        assert payloads and enc.codec_name == "libx264" and enc.describe()["width"] == 1280
        fresh = rtc_tuning.TunedH264Encoder(t)
        nals = list(fresh._encode_frame(frame, True))
        sps = next(n for n in nals if n[0] & 0x1F == 7)
        assert sps[1] == 66 and sps[3] == 42  # Constrained Baseline, level 4.2 (aiortc: 3.1)
    finally:
        rtc_tuning.restore()
    assert h264.MAX_FRAME_RATE == 30 and rtcrtpsender.get_encoder is not rtc_tuning._get_encoder


# ------------------------------------------------------------------------------------------------- HTTP


def test_http_validation_tokens_and_garbage(tiny):
    async def main() -> None:
        async with serving(tiny, token="s3cret", offer_max_bytes=8192) as (server, url), \
                aiohttp.ClientSession() as http:
            async def post(body: bytes | str, **headers: str) -> int:
                headers.setdefault("Content-Type", "application/json")
                async with http.post(url + "/offer", data=body, headers=headers) as r:
                    payload = await r.json()
                    assert "error" in payload
                    return r.status

            good_token = {"X-Stylestream-Token": "s3cret"}
            assert await post("{not json", **good_token) == 400
            assert await post(json.dumps([1, 2]), **good_token) == 400
            assert await post(json.dumps({"type": "offer", "sdp": 5}), **good_token) == 400
            assert await post(json.dumps({"type": "offer", "sdp": "v=0\r\nm=video garbage\r\n"}), **good_token) \
                == 400
            assert await post(json.dumps({"type": "offer", "sdp": "v=0\r\n" + "a" * 20000}), **good_token) == 400
            assert await post(b"\xff\xfe\x00garbage", **good_token) == 400
            offer = json.dumps({"type": "offer", "sdp": "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"})
            assert await post(offer, **{"X-Stylestream-Token": "wrong"}) == 401
            assert await post(offer) == 401
            assert await post(json.dumps({"type": "offer", "sdp": "v=0", "token": "nope"})) == 401
            async with http.get(url + "/config") as r:
                assert r.status == 401
            async with http.get(url + "/config?token=s3cret") as r:
                cfg = await r.json()
                assert r.status == 200 and cfg["mode"] == "camera" and cfg["ice_servers"] == []
                assert [e["name"] for e in cfg["edits"]] == ["brighter"]
            async with http.get(url + "/stats", headers={"Authorization": "Bearer s3cret"}) as r:
                assert r.status == 200 and (await r.json())["sessions"] == []
            # garbage on every endpoint: never a 5xx, never a dead server
            rng = np.random.default_rng(0)
            for path in ("/", "/app.js", "/style.css", "/config", "/offer", "/stats", "/../etc/passwd", "/x" * 50):
                for method in ("GET", "POST", "PUT", "DELETE"):
                    async with http.request(method, url + path, data=rng.bytes(300)) as r:
                        assert r.status < 500, (method, path, r.status)
            async with http.get(url + "/") as r:
                html = await r.text()
                assert r.status == 200 and "app.js" in html and r.headers["X-Content-Type-Options"] == "nosniff"
            async with http.get(url + "/app.js") as r:
                assert r.status == 200 and "RTCPeerConnection" in await r.text()
            assert not server.sessions

    asyncio.run(main())


# ------------------------------------------------------------------------------------------------- video


@pytest.mark.slow
def test_processed_frames_come_back_and_respond_to_controls(tiny):
    w, h = 320, 240
    still = clip_frames(w, h, still=True)

    async def main() -> None:
        async with serving(tiny) as (server, url):
            client = LiveClient(url, still, fps=15, keep_frames=8)
            await client.connect()
            assert client.hello is not None and client.hello["edits"][0]["name"] == "brighter"
            assert await client.wait_frames(12, timeout=40) >= 12, "no processed frames came back"
            ok = await wait_until(lambda: client.stats is not None and client.stats.get("faces", 0) > 3, 10)
            assert ok, f"server found no faces: {client.stats}"
            st = client.stats
            assert st["encoder"]["encoder"] in ("libx264", "h264_nvenc") and st["fps_out"] > 0
            assert st["codec"] == "video/H264"  # preferred over the offer's first codec (VP8)
            assert {"tracking", "encode", "generate", "composite"} <= set(st["stages_ms"])
            assert st["latent"] in ("key", "reuse")
            src = still[0]
            fy, fx = face_box(w, h)

            async def snapshot(n: int = 4) -> list[np.ndarray]:
                await client.wait_frames(6, timeout=20)  # let a change reach the video
                frames = [f for i, f in list(client.kept)[-n:] if i is not None]
                assert frames, "stamps unreadable"
                return frames

            base = await snapshot()
            # the face is replaced, the background is not
            assert mean_abs(base[-1][fy, fx], src[fy, fx]) > 12, "face region unchanged"
            assert mean_abs(base[-1][h - 40 :, :60], src[h - 40 :, :60]) < 8, "background changed"
            jitter = max(mean_abs(a[fy, fx], base[-1][fy, fx]) for a in base)
            # a slider change over the data channel changes the output
            client.send({"type": "edit", "name": "brighter", "value": 8.0})
            assert await client.wait_message("ack", 5, lambda m: m.get("of") == "edit")
            await wait_until(lambda: client.stats is not None and client.stats["edits"]["brighter"] == 8.0, 5)
            await asyncio.sleep(0.3)
            edited = await snapshot()
            change = mean_abs(edited[-1][fy, fx], base[-1][fy, fx])
            assert change > max(4.0, 3 * jitter), (change, jitter)
            # transfer mode without an edit: the user's own face, untouched
            client.send({"type": "edit", "name": "brighter", "value": 0.0})
            client.send({"type": "composite", "mode": "transfer"})
            assert await client.wait_message("ack", 5, lambda m: m.get("of") == "composite")
            assert await wait_until(lambda: client.stats and client.stats["composite"] == {"mode": "transfer",
                                                                                          "now": "transfer"}, 10)
            await asyncio.sleep(0.3)
            kept = await snapshot()
            assert mean_abs(kept[-1][fy, fx], src[fy, fx]) < 8, "transfer without an edit changed the face"
            client.send({"type": "composite", "mode": "regenerate"})
            # filter off: the output is the input again
            client.send({"type": "filter", "on": False})
            await asyncio.sleep(0.5)
            off = await snapshot()
            assert mean_abs(off[-1][fy, fx], src[fy, fx]) < 8
            # bad messages get errors, the session survives
            for bad in ("nope", json.dumps({"type": "edit", "name": "missing", "value": 1}),
                        json.dumps({"type": "view", "mode": "sideways"}), json.dumps({"type": "x" * 5000}),
                        json.dumps({"type": "composite", "mode": "paste"}),
                        json.dumps({"type": "request", "width": -1, "height": 5})):
                client.channel.send(bad)
            assert await client.wait_message("error", 5)
            client.send({"type": "view", "mode": "side_by_side"})
            client.send({"type": "filter", "on": True})
            assert await wait_until(lambda: client.stats and client.stats["out_size"] == [2 * w, h], 15)
            assert len(server.sessions) == 1
            await client.close()
            assert await wait_until(lambda: not server.sessions, 10)
            assert server.history[-1]["closed"] == "bye" and server.history[-1]["faces"] > 0

    asyncio.run(main())


def test_eight_concurrent_clients_then_nothing_left(tiny):
    frames = clip_frames(256, 192, count=8)

    async def main() -> None:
        threads_before = {t.ident for t in threading.enumerate()}
        async with serving(tiny, max_sessions=8) as (server, url):
            tasks_before = len(asyncio.all_tasks())
            clients = [LiveClient(url, frames, fps=10) for _ in range(8)]
            await asyncio.gather(*(c.connect(timeout=30) for c in clients))
            with pytest.raises(ConnectionError, match="503"):
                await LiveClient(url, frames, fps=10).connect()
            got = await asyncio.gather(*(c.wait_frames(3, timeout=60) for c in clients))
            assert all(n >= 3 for n in got), got
            assert len(server.sessions) == 8
            # 8 peers of tracking + model work, and the event loop still wakes up in time (work is on threads).
            # 16 busy worker threads share the GIL (5 ms switch interval), so on a loaded 2-core machine a
            # wake-up can wait a few switches; model work on the loop would instead cost whole frames of all
            # 8 peers (8 × ≥ 40 ms) per wake-up.
            lag = server.loop_lag()
            assert lag["p50"] < 150, lag
            names = {t.name for t in threading.enumerate()}
            assert sum(n.startswith("stylestream-peer-") for n in names) == 16  # tracking + device per peer
            await asyncio.gather(*(c.close() for c in clients))
            assert await wait_until(lambda: not server.sessions, 20), list(server.sessions)
            assert await wait_until(lambda: len(asyncio.all_tasks()) <= tasks_before, 10), \
                [t.get_coro() for t in asyncio.all_tasks()]
            del clients
            gc.collect()
            assert len(server.peer_connections) == 0
        leftover = [t for t in threading.enumerate() if t.ident not in threads_before
                    and not t.name.startswith("stylestream-pool")]  # the encoder pool is shared, not per peer
        assert not leftover, [t.name for t in leftover]

    asyncio.run(main())


def test_viewer_mode_broadcasts_one_source(tiny):
    async def main() -> None:
        src = "demo:?seconds=inf&fps=15&size=320x240"
        async with serving(tiny, source=src) as (server, url):
            viewers = [LiveClient(url, receive_only=True), LiveClient(url, receive_only=True, send_audio=True)]
            for v in viewers:
                await v.connect()
            got = await asyncio.gather(*(v.wait_frames(8, timeout=40) for v in viewers))
            assert all(n >= 8 for n in got), got
            assert await wait_until(lambda: viewers[1].stats and viewers[1].stats["faces"] > 0, 10)
            assert viewers[0].stats["mode"] == "viewer"
            # the audio nobody asked for is read and dropped, not queued without bound
            audio = [r.track for s in server.sessions.values() for r in s.pc.getReceivers()
                     if r.track is not None and r.track.kind == "audio"]
            assert len(audio) == 1 and audio[0]._queue.qsize() < 10
            viewers[0].send({"type": "request", "width": 640, "height": 480})
            assert await viewers[0].wait_message("error", 5)  # the source sets the size
            for v in viewers:
                await v.close()
            assert await wait_until(lambda: not server.sessions, 10)
        assert server.broadcast is not None and not server.broadcast.worker.alive()

    asyncio.run(main())


@pytest.mark.slow
def test_live_calibration_swaps_the_generator_without_stopping_the_stream(tiny_bundle_dir):
    """A "calibrate" message: the stream records, adapts in a worker process and switches to its own engine while
    frames keep coming; another stream cannot calibrate meanwhile and keeps the shared engine; "reset" goes back."""
    tiny = tiny_factories(tiny_bundle_dir, calibration=CalibrationConfig(frames=4, stride=1, iters=40))
    w, h = 256, 192
    still = clip_frames(w, h, still=True)

    def calibration(c: LiveClient) -> dict[str, Any]:
        return (c.stats or {}).get("calibration", {})

    async def main() -> None:
        async with serving(tiny) as (server, url):
            a, b = LiveClient(url, still, fps=15), LiveClient(url, still, fps=15)
            for c in (a, b):
                await c.connect()
            assert await wait_until(lambda: all(c.stats and c.stats.get("faces", 0) > 2 for c in (a, b)), 40)
            assert calibration(a)["state"] == "idle"
            a.send({"type": "calibrate"})
            assert await a.wait_message("ack", 5, lambda m: m.get("of") == "calibrate")
            assert await wait_until(lambda: calibration(a).get("state") in ("adapting", "building", "ready",
                                                                            "active"), 20), calibration(a)
            b.send({"type": "calibrate", "action": "start"})  # one calibration at a time
            err = await b.wait_message("error", 5)
            assert err is not None and "another stream" in err["message"]
            before = a.frames
            assert await wait_until(lambda: calibration(a).get("state") == "active", 90), calibration(a)
            assert a.frames - before >= 10, "the stream stopped while calibrating"
            st = calibration(a)
            assert st["psnr"]["after"] > st["psnr"]["before"] and {"record", "adapt"} <= set(st["seconds"])
            sa, sb = (next(s for s in server.sessions.values() if s.id == c.session) for c in (a, b))
            pa, pb = sa.worker.processor, sb.worker.processor
            assert pa.engine is not pa.base_engine and pb.engine is pb.base_engine  # only a's stream changed
            assert await a.wait_frames(5, timeout=20) >= 5  # and it goes on with its own engine
            a.send({"type": "calibrate", "action": "sideways"})
            assert await a.wait_message("error", 5)
            a.send({"type": "calibrate", "action": "reset"})
            assert await wait_until(lambda: pa.engine is pa.base_engine and calibration(a).get("state") == "idle",
                                    10)
            assert pa.calibrator.result is None  # the stream's own engine is closed and let go
            for c in (a, b):
                await c.close()
            assert await wait_until(lambda: not server.sessions, 10)
            assert pa.calibrator.state == "idle"

    asyncio.run(main())


@pytest.mark.slow
def test_cli_serves_https_and_stops_on_sigint(tmp_path, tiny_bundle_dir):
    """`stylestream serve` end to end: HTTPS with a self-signed certificate, token, Ctrl-C stops it cleanly."""


    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    proc = subprocess.Popen([sys.executable, "-m", "realtime.cli", "serve", "--port", "0", "--bundle",
                             str(tiny_bundle_dir), "--device", "cpu", "--token", "t0k",
                             "--tls-cert", str(tmp_path / "cert.pem"), "--tls-key", str(tmp_path / "key.pem"),
                             "--stats-json", str(tmp_path / "stats.json")],
                            cwd=REPO, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        url = None
        deadline = time.monotonic() + 60
        assert proc.stderr is not None
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            m = re.search(r"open (https://\S+?)/\?token=t0k", line)
            url = m.group(1) if m else None
        assert url, "server did not start"

        async def fetch() -> tuple[int, int, dict[str, Any]]:
            ctx = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
            ctx.check_hostname = False
            async with aiohttp.ClientSession() as http:
                async with http.get(url + "/config", ssl=ctx) as r:
                    denied = r.status
                async with http.get(url + "/config?token=t0k", ssl=ctx) as r:
                    return denied, r.status, await r.json()

        denied, status, cfg = asyncio.run(fetch())
        assert (denied, status, cfg["mode"]) == (401, 200, "camera") and cfg["bundle"] and "engine" in cfg
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        assert "stopped" in proc.stderr.read()
        assert json.loads((tmp_path / "stats.json").read_text())["sessions"] == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_peer_that_never_connects_is_freed(tiny):
    """An offer whose peer never completes ICE holds its slot only until --connect-timeout."""


    async def main() -> None:
        async with serving(tiny, connect_timeout_s=1.5, max_sessions=1) as (server, url), \
                aiohttp.ClientSession() as http:
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            pc.addTrack(StampedTrack(clip_frames(64, 48, still=True)))
            await pc.setLocalDescription(await pc.createOffer())
            body = {"sdp": pc.localDescription.sdp, "type": "offer"}
            await pc.close()  # gone before the answer: ICE can never complete
            async with http.post(url + "/offer", json=body) as r:
                assert r.status == 200
            async with http.post(url + "/offer", json=body) as r:
                assert r.status == 503  # the slot is taken…
            assert len(server.sessions) == 1
            assert await wait_until(lambda: not server.sessions, 10)  # …until the timeout frees it
            assert server.history[-1]["closed"].startswith("not connected")
            assert not any(t.name.startswith("stylestream-peer-") for t in threading.enumerate())

    asyncio.run(main())


def test_two_sessions_starting_at_once_leave_the_process_stderr_alone(tiny):
    """Issue 17.1: each session's tracking thread used to swap the process-wide ``sys.stderr`` (and fd 2) while its
    MediaPipe graphs started; two overlapping sessions finishing out of order left ``sys.stderr`` on a discarded
    buffer, so later tracebacks and the "stopped" line were lost. Sessions must not touch either."""
    frames = clip_frames(256, 192, count=8)
    stderr_before, fd2_before = sys.stderr, os.fstat(2)
    seen: set[tuple[int, int, int]] = set()
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            st = os.fstat(2)
            seen.add((id(sys.stderr), st.st_dev, st.st_ino))
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample, daemon=True)

    async def main() -> None:
        async with serving(tiny, max_sessions=4) as (_server, url):
            sampler.start()
            for _ in range(2):  # twice: the second pair reuses nothing from the first
                clients = [LiveClient(url, frames, fps=10) for _ in range(2)]
                await asyncio.gather(*(c.connect(timeout=30) for c in clients))
                got = await asyncio.gather(*(c.wait_frames(3, timeout=60) for c in clients))
                assert all(n >= 3 for n in got), got
                await asyncio.gather(*(c.close() for c in clients))

    try:
        asyncio.run(main())
    finally:
        sampling.set()
        sampler.join(5)
    assert sys.stderr is stderr_before
    assert seen == {(id(stderr_before), fd2_before.st_dev, fd2_before.st_ino)}, \
        f"sys.stderr or fd 2 changed {len(seen) - 1} time(s) while sessions started"


async def _real_offer() -> str:
    """A real browser-like offer (aiortc, one video track); its peer is closed at once, so ICE never completes."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTrack(StampedTrack(clip_frames(64, 48, still=True)))
    await pc.setLocalDescription(await pc.createOffer())
    body = json.dumps({"sdp": pc.localDescription.sdp, "type": "offer"})
    await pc.close()
    return body


async def _raw_post(url: str, body: bytes, pieces: int = 1, pause_s: float = 0.0,
                    headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    """POST /offer over a plain socket, the body split into ``pieces`` sent ``pause_s`` apart → (status, JSON)."""
    host, port = url.split("://", 1)[1].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = {"Host": f"{host}:{port}", "Content-Type": "application/json", "Content-Length": str(len(body)),
            "Connection": "close", **(headers or {})}
    writer.write(("POST /offer HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in head.items()) + "\r\n").encode())
    step = -(-len(body) // pieces)
    for i in range(0, len(body), step):
        writer.write(body[i : i + step])
        await writer.drain()
        if i + step < len(body):
            await asyncio.sleep(pause_s)
    response = await asyncio.wait_for(reader.read(), 20)
    writer.close()
    status = int(response.split(b" ", 2)[1])
    return status, json.loads(response.split(b"\r\n\r\n", 1)[1] or b"{}")


def test_offer_body_in_two_tcp_pieces_is_read_whole(tiny):
    """Issue 17.2: /offer read its body with one ``content.read(n)``, so a body arriving in two TCP pieces ≥ 50 ms
    apart was cut and refused as "offer is not JSON"."""

    async def main() -> None:
        async with serving(tiny, connect_timeout_s=1.5) as (server, url):
            body = (await _real_offer()).encode()
            status, answer = await _raw_post(url, body, pieces=2, pause_s=0.2)
            assert status == 200, answer
            assert answer["type"] == "answer" and answer["sdp"].startswith("v=0")
            status, answer = await _raw_post(url, body, pieces=5, pause_s=0.06)
            assert status == 200, answer
            assert await wait_until(lambda: not server.sessions, 10)

    asyncio.run(main())


def test_deeply_nested_json_offer_is_a_400_not_a_traceback(tiny, caplog):
    """Issue 17.3: ``[[[[…]]]]`` deep enough to exhaust the decoder's recursion → 400, nothing logged."""

    async def main() -> None:
        async with serving(tiny) as (_server, url), aiohttp.ClientSession() as http:
            for body in ("[" * 30000 + "]" * 30000, '{"a":' * 10000 + "1" + "}" * 10000):
                async with http.post(url + "/offer", data=body, headers={"Content-Type": "application/json"}) as r:
                    assert r.status == 400, (r.status, await r.text())
                    assert "JSON" in (await r.json())["error"]

    with caplog.at_level(logging.ERROR):
        asyncio.run(main())
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_a_token_that_is_not_utf8_is_a_401_not_a_500(tiny):
    """A header aiohttp decodes into surrogates (bytes that are not UTF-8), or a JSON "\\ud800" token, used to
    raise UnicodeEncodeError in the token check: 500 and a traceback in the log, for anyone, without a token."""

    async def main() -> None:
        async with serving(tiny, token="s3cret") as (server, url), aiohttp.ClientSession() as http:
            async with http.get(url + "/config", headers={"X-Stylestream-Token": "\udcff\udcfe"}) as r:
                assert r.status == 401
            body = '{"type": "offer", "sdp": "v=0", "token": "\\ud800"}'
            async with http.post(url + "/offer", data=body, headers={"Content-Type": "application/json"}) as r:
                assert r.status == 401
            async with http.get(url + "/config", headers={"X-Stylestream-Token": "s3cret"}) as r:
                assert r.status == 200

    asyncio.run(main())


def test_offers_need_json_and_this_page_as_origin(tiny):
    """Issue 17.4: without a token any web page the user visited could take every session slot (a "simple"
    cross-origin POST needs no CORS pre-flight). /offer now requires application/json and an Origin that is the
    served page's own (or one of --allowed-origin); a request without Origin (a non-browser client) still works."""
    junk_offer = json.dumps({"type": "offer", "sdp": "v=0"})  # passes the checks under test, then fails as SDP

    async def main() -> None:
        async with serving(tiny, allowed_origins=["https://app.example"]) as (server, url), \
                aiohttp.ClientSession() as http:
            port = url.rsplit(":", 1)[1]

            async def post(body: str = junk_offer, **headers: str) -> tuple[int, str]:
                headers.setdefault("Content-Type", "application/json")
                async with http.post(url + "/offer", data=body, headers=headers) as r:
                    return r.status, (await r.json())["error"]

            for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
                status, err = await post(**{"Content-Type": ctype})
                assert status == 415 and "application/json" in err, (ctype, status, err)
            for origin in ("http://evil.example", "null", f"http://127.0.0.1:{int(port) + 1}",
                           f"https://127.0.0.1:{port}", "https://app.example.evil"):
                status, err = await post(Origin=origin)
                assert status == 403 and "origin" in err.lower(), (origin, status, err)
            # DNS rebinding: evil.example resolves to 127.0.0.1, so Host and Origin agree with each other
            status, _ = await post(Origin=f"http://evil.example:{port}", Host=f"evil.example:{port}")
            assert status == 403
            for origin, host in ((f"http://127.0.0.1:{port}", None), (f"http://localhost:{port}", f"localhost:{port}"),
                                 ("https://app.example", None)):
                status, err = await post(Origin=origin, **({"Host": host} if host else {}))
                assert status == 400 and "m= line" in err, (origin, status, err)  # past the checks
            status, err = await post()  # no Origin: a non-browser client
            assert status == 400 and "m= line" in err
            for path in ("/config", "/stats"):  # a rebound page may not read them either (TURN credentials)
                async with http.get(url + path, headers={"Host": f"evil.example:{port}"}) as r:
                    assert r.status == 403 and "DNS-rebound" in (await r.json())["error"], path
                async with http.get(url + path) as r:
                    assert r.status == 200, path
            assert not server.sessions
            # the real client (no Origin, application/json) still connects
            client = LiveClient(url, clip_frames(128, 96, count=4), fps=10)
            await client.connect()
            assert await client.wait_frames(2, timeout=40) >= 2
            await client.close()

    asyncio.run(main())
