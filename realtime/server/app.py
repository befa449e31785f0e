"""The live server: aiohttp serves the page, aiortc carries the video, a data channel carries controls and stats.

Two modes:

* **camera** (default): each browser sends its webcam; the server filters it and sends it back. Per peer:
  a :class:`PeerWorker` with two threads — *tracking* (RGB conversion + MediaPipe, per-peer
  :class:`~realtime.tracking.FaceTracker`) and *device* (:class:`~realtime.pipeline.FrameProcessor`: align,
  encode with previous-frame reuse, edit, generate, paste back, then RGB→YUV) — joined by 1-slot drop-oldest
  :class:`~realtime.pipeline.StageQueue` s, so each stage always works on the newest frame and latency stays
  bounded. The engine is shared between peers (its calls are serialised by
  :class:`realtime.engines.SerialEngine`); edits, the latent state (:class:`~realtime.pipeline.StreamState`) and
  the tracker belong to the peer.
* **viewer** (``source=``): one server-side source (``rtmp://…``, a file, ``demo:``) is processed once by the same
  worker and broadcast to every viewer through aiortc's ``MediaRelay``; controls change the broadcast.

The asyncio loop only moves frames: it hands decoded frames to the worker (a non-blocking put) and returns the
newest processed frame when aiortc's sender asks (:class:`OutputTrack`). Encoding runs in aiortc's executor
threads with the overrides of :mod:`realtime.rtc_tuning`.

HTTP endpoints (all JSON errors are ``{"error": "..."}``):

========  ===========  =========================================================================================
GET       /            the page (``realtime/server/web/index.html``, ``app.js``, ``style.css``)
GET       /config      mode, ICE servers, edits, whether a token is needed (token required when one is set)
POST      /offer       ``{"sdp": "...", "type": "offer", "token"?: "..."}`` → ``{"sdp", "type": "answer", "session"}``;
                       400 malformed/oversized, 401 wrong token, 503 when ``max_sessions`` are running
GET       /stats       every session's stats (token required when one is set)
========  ===========  =========================================================================================

The token may come as ``Authorization: Bearer T``, ``X-Stylestream-Token: T``, ``?token=T`` or the offer's
``token`` field. Data-channel protocol (JSON text messages, ≤ 4 KiB), browser → server::

    {"type": "filter", "on": true}                  {"type": "edit", "name": "smile", "value": 1.5}
    {"type": "view", "mode": "filtered" | "side_by_side" | "original"}
    {"type": "request", "width": 1280, "height": 720, "fps": 60}   (processing size cap and frame-rate cap)
    {"type": "calibrate", "action": "start" | "reset"}   (live calibration: record, adapt in the background, swap)
    {"type": "ping", "t": 123.4}                    {"type": "bye"}

server → browser: ``hello`` (edits with ranges, mode, codec preference), ``stats`` (every ``stats_interval_s``),
``pong``, ``ack`` and ``error``. A peer is freed (threads joined, tracker closed, connection closed) when it says
bye, its connection fails or closes, its track ends, or it does not connect within ``connect_timeout_s``.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import hmac
import ipaddress
import json
import logging
import secrets
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import av
import cv2
import numpy as np
from aiohttp import web
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import VIDEO_TIME_BASE, MediaStreamError, MediaStreamTrack

from models.errors import UserError
from realtime.frames import Frame, Track, now_ns
from realtime.pipeline import CLOSED, FrameProcessor, StageQueue, StreamState
from realtime.server import rtc_tuning

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent / "web"
STATIC_FILES = {"/": ("index.html", "text/html"), "/index.html": ("index.html", "text/html"),
                "/app.js": ("app.js", "text/javascript"), "/style.css": ("style.css", "text/css")}
VIEWS = ("filtered", "side_by_side", "original")
MAX_MESSAGE_BYTES = 4096
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; media-src 'self' blob: mediastream:; "
                               "connect-src 'self'; frame-ancestors 'none'",
}


@dataclass
class ServeConfig:
    """How `stylestream serve` listens and behaves (CLI flags of the same names)."""

    host: str = "127.0.0.1"  # interface to bind; anything but loopback needs a token
    port: int = 8080  # TCP port of the page and the signalling endpoints (0: any free port)
    token: str | None = None  # shared secret for /offer, /config and /stats (required off loopback)
    ice_servers: list[str] = field(default_factory=list)  # STUN/TURN URLs; none by default (no external server)
    max_sessions: int = 4  # concurrent peers; more get 503
    source: str | None = None  # viewer mode: process this source once and broadcast it to every viewer
    offer_max_bytes: int = 64 * 1024  # largest accepted /offer body
    stats_interval_s: float = 0.5  # how often stats go to each peer over the data channel
    connect_timeout_s: float = 20.0  # a peer that has not connected by then is closed
    tuning: rtc_tuning.RtcTuning = field(default_factory=rtc_tuning.RtcTuning)  # encoder overrides
    tls_cert: str | None = None  # PEM certificate: serve HTTPS (browsers allow the camera only on https or localhost)
    tls_key: str | None = None  # PEM private key for tls_cert


# ------------------------------------------------------------------------------------------------- helpers


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost."""
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to expose the server beyond this machine without a token."""
    if not is_loopback(host) and not token:
        raise UserError(f"--host {host} exposes the server beyond this machine: pass --token SECRET as well "
                        "(the page asks for it), or keep the default --host 127.0.0.1")


def parse_ice_server(url: str) -> RTCIceServer:
    """``stun:HOST[:PORT]`` or ``turn[s]:[USER:PASS@]HOST[:PORT][?transport=udp|tcp]`` → RTCIceServer."""
    u = url.strip()
    scheme, sep, rest = u.partition(":")
    if not sep or scheme.lower() not in ("stun", "stuns", "turn", "turns") or not rest:
        raise UserError(f"bad --ice-server {url!r}: expected stun:HOST[:PORT] or turn:USER:PASS@HOST[:PORT]")
    user = cred = None
    if "@" in rest:
        auth, rest = rest.rsplit("@", 1)
        user, _, cred = auth.partition(":")
        user, cred = unquote(user), unquote(cred)
    host = rest.split("?", 1)[0]
    if not host or host.startswith(":"):
        raise UserError(f"bad --ice-server {url!r}: no host")
    if scheme.lower().startswith("turn") and not (user and cred):
        raise UserError(f"--ice-server {url!r}: TURN needs USER:PASS@ in the URL")
    return RTCIceServer(urls=f"{scheme.lower()}:{rest}", username=user, credential=cred)


def ice_server_json(s: RTCIceServer) -> dict[str, Any]:
    d: dict[str, Any] = {"urls": s.urls}
    if s.username:
        d["username"], d["credential"] = s.username, s.credential
    return d


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


# --------------------------------------------------------------------------------------------- the tracks


class OutputTrack(MediaStreamTrack):
    """The processed video: holds only the newest frame; ``recv`` waits for the next one (paced by the input).
    ``deliver`` must be called on the event loop (the worker uses ``call_soon_threadsafe``)."""

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


# ------------------------------------------------------------------------------------------- the worker


class PeerWorker:
    """Tracking thread + device thread for one stream, newest-frame policy (see the module docstring).

    ``submit`` (any thread, non-blocking) takes an ``av.VideoFrame`` from WebRTC or a :class:`Frame` from a
    server-side source; ``deliver(yuv_frame, capture_ns)`` is called from the device thread for every output."""

    def __init__(self, name: str, processor: FrameProcessor, make_tracker: Callable[[], Any],
                 deliver: Callable[[av.VideoFrame, int], None], on_end: Callable[[], None] | None = None):
        self.name, self.processor, self.make_tracker = name, processor, make_tracker
        self.deliver, self.on_end = deliver, on_end
        self.inbox = StageQueue(1, drop_oldest=True, name="input")
        self.q_device = StageQueue(1, drop_oldest=True, name="tracking→device")
        self.state = StreamState()
        self.times = processor.times
        self.view = "filtered"
        self.max_size: tuple[int, int] | None = None  # (w, h) processing cap from a "request"
        self.max_fps: float | None = None  # frame-rate cap from a "request"
        self.capped = 0  # input frames skipped by the frame-rate cap
        self.face_now = False
        self.in_size: tuple[int, int] = (0, 0)
        self.out_size: tuple[int, int] = (0, 0)
        self.error: str | None = None
        self.ready = threading.Event()  # tracker built
        self._index = 0
        self._last_accept = 0.0
        self._threads = [threading.Thread(target=self._tracking, name=f"stylestream-{name}-tracking", daemon=True),
                         threading.Thread(target=self._device, name=f"stylestream-{name}-device", daemon=True)]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def submit(self, item: av.VideoFrame | Frame, recv_ns: int | None = None) -> None:
        self.inbox.put((item, now_ns() if recv_ns is None else recv_ns))

    def finish(self) -> None:
        """No more input: the threads drain and stop."""
        self.inbox.close()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop both threads now and wait for them (call off the event loop: the device thread may be mid-frame),
        then free the stream's own engine (live calibration)."""
        self.inbox.close()
        self.q_device.close()
        for t in self._threads:
            if t.is_alive() and t is not threading.current_thread():
                t.join(timeout)
        if not self.alive():
            self.processor.release()

    def alive(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def _fail(self, what: str, exc: BaseException) -> None:
        msg = f"{what}: {type(exc).__name__}: {exc}".splitlines()[0][:300]
        if self.error != msg:
            log.warning("%s %s", self.name, msg, exc_info=exc)
        self.error = msg

    def _tracking(self) -> None:
        tracker = None
        try:
            tracker = self.make_tracker()  # MediaPipe graph: built here, never on the event loop
        except BaseException as exc:  # noqa: BLE001 - reported in the stats, frames pass through untouched
            self._fail("tracker", exc)
        self.ready.set()
        try:
            while True:
                item = self.inbox.get()
                if item is CLOSED:
                    break
                src, recv_ns = item
                if self.max_fps:
                    t = time.monotonic()
                    if t - self._last_accept < 0.95 / self.max_fps:
                        self.capped += 1
                        continue
                    self._last_accept = t
                try:
                    frame = self._to_frame(src, recv_ns)
                except Exception as exc:  # a frame PyAV cannot convert: skip it
                    self._fail("input frame", exc)
                    continue
                track = Track(landmarks=None)
                # Original view and filter off need no landmarks: skip MediaPipe (re-detects when back on).
                if tracker is not None and self.view != "original" and self.processor.enabled:
                    try:
                        with self.times.measure("tracking"):
                            track = tracker.track(frame)
                    except Exception as exc:
                        self._fail("tracking", exc)
                self.face_now = track.has_face
                self.q_device.put((frame, track))
        finally:
            self.q_device.close()
            if tracker is not None:
                with contextlib.suppress(Exception):
                    tracker.close()

    def _to_frame(self, src: av.VideoFrame | Frame, recv_ns: int) -> Frame:
        with self.times.measure("to_rgb"):
            if isinstance(src, Frame):
                image, pts, tb = src.image, src.pts, src.time_base
            else:
                image, pts, tb = src.to_ndarray(format="rgb24"), src.pts, src.time_base
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

    def _device(self) -> None:
        try:
            while True:
                item = self.q_device.get()
                if item is CLOSED:
                    break
                frame, track = item
                image = frame.image
                if self.view != "original":
                    try:
                        self.processor.cfg.side_by_side = self.view == "side_by_side"
                        image = self.processor.process(frame, track, self.state).image
                    except Exception as exc:  # keep the video going; the stats say what broke
                        self._fail("processing", exc)
                        image = frame.image
                with self.times.measure("to_yuv"):
                    h, w = image.shape[:2]
                    if w % 2 or h % 2:
                        image = np.ascontiguousarray(image[: h // 2 * 2, : w // 2 * 2])
                    # OpenCV's BT.601 limited-range I420 matches swscale's and is ~7× faster at 720p
                    vf = av.VideoFrame.from_ndarray(cv2.cvtColor(image, cv2.COLOR_RGB2YUV_I420), format="yuv420p")
                self.out_size = (vf.width, vf.height)
                self.deliver(vf, frame.capture_ns)
        finally:
            if self.on_end is not None:
                self.on_end()

    def stats(self) -> dict[str, Any]:
        st = self.state
        return {
            "stages_ms": {k: round(v, 2) for k, v in self.times.recent().items()},
            "drops": {"input": self.inbox.dropped, "tracking": self.q_device.dropped, "fps_cap": self.capped},
            "latent": st.last_source or "none", "key_frames": st.key_frames, "frames": st.frames,
            "faces": st.faces, "face": self.face_now, "filter": self.processor.enabled, "view": self.view,
            "edits": self.processor.edits.strengths() if self.processor.edits is not None else {},
            "in_size": list(self.in_size), "out_size": list(self.out_size), "error": self.error,
            "calibration": self.processor.calibration_status(),
        }


def _post(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> None:
    """``fn(*args)`` on ``loop`` from a worker thread; a closed loop (shutdown) is not an error."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(fn, *args)


# ----------------------------------------------------------------------------------------------- sessions


class Session:
    """One peer: its connection, data channel, worker (camera mode) and tasks."""

    def __init__(self, server: LiveServer, pc: RTCPeerConnection):
        self.server, self.pc = server, pc
        self.id = secrets.token_hex(6)
        self.created = time.monotonic()
        self.channel: Any = None
        self.worker: PeerWorker | None = None
        self.out_track: OutputTrack | None = None
        self.in_rate = Rate()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.closed = False
        self.close_reason = ""

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # -- media ---------------------------------------------------------------------------------------------

    async def read_input(self, track: MediaStreamTrack) -> None:
        """Hand every decoded browser frame to the worker (the worker keeps only the newest)."""
        try:
            while True:
                frame = await track.recv()
                self.in_rate.tick()
                if self.worker is not None:
                    self.worker.submit(frame, now_ns())
        except MediaStreamError:
            pass
        finally:
            if not self.closed:
                self.spawn(self.close("input track ended"))

    async def watch_connect(self) -> None:
        await asyncio.sleep(self.server.config.connect_timeout_s)
        if self.pc.connectionState != "connected" and not self.closed:
            await self.close(f"not connected after {self.server.config.connect_timeout_s:g} s")

    async def send_stats(self) -> None:
        while not self.closed:
            await asyncio.sleep(self.server.config.stats_interval_s)
            self.send({"type": "stats", **self.stats()})

    # -- data channel --------------------------------------------------------------------------------------

    def send(self, msg: dict[str, Any]) -> None:
        ch = self.channel
        if ch is not None and ch.readyState == "open":
            with contextlib.suppress(Exception):
                ch.send(json.dumps(msg, default=str))

    def on_message(self, raw: Any) -> None:
        try:
            reply = self.handle(raw)
        except UserError as exc:
            reply = {"type": "error", "message": str(exc)}
        except Exception as exc:  # never let a message kill the session
            log.warning("session %s: bad message: %s", self.id, exc)
            reply = {"type": "error", "message": "bad message"}
        if reply is not None:
            self.send(reply)

    def handle(self, raw: Any) -> dict[str, Any] | None:
        if not isinstance(raw, str) or len(raw) > MAX_MESSAGE_BYTES:
            raise UserError(f"messages are JSON text of at most {MAX_MESSAGE_BYTES} bytes")
        try:
            msg = json.loads(raw)
        except ValueError:
            raise UserError("message is not JSON") from None
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
            raise UserError('message must be an object with a "type"')
        kind = msg["type"]
        worker = self.server.worker_for(self)
        if kind == "ping":
            return {"type": "pong", "t": msg.get("t") if isinstance(msg.get("t"), int | float) else None}
        if kind == "bye":
            self.spawn(self.close("bye"))
            return None
        if worker is None:
            raise UserError("no video yet")
        proc = worker.processor
        if kind == "filter":
            on = msg.get("on")
            if not isinstance(on, bool):
                raise UserError('"filter" needs "on": true|false')
            proc.enabled = on
        elif kind == "edit":
            name, value = msg.get("name"), msg.get("value")
            if not isinstance(name, str) or isinstance(value, bool) or not isinstance(value, int | float) \
                    or not np.isfinite(value):
                raise UserError('"edit" needs "name": string and "value": number')
            if proc.edits is None:
                raise UserError("this bundle has no edits")
            proc.edits.set_strength(name, float(value))
        elif kind == "view":
            mode = msg.get("mode")
            if mode not in VIEWS:
                raise UserError(f'"view" mode must be one of {", ".join(VIEWS)}')
            worker.view = mode
        elif kind == "request":
            if self.server.broadcast is not None:
                raise UserError("viewer mode: the server's source sets the size and frame rate")
            w, h, fps = msg.get("width"), msg.get("height"), msg.get("fps")
            if w is not None or h is not None:
                if not all(isinstance(v, int) and not isinstance(v, bool) and 16 <= v <= 7680 for v in (w, h)):
                    raise UserError('"request" width/height must be integers in 16..7680')
                worker.max_size = (int(w), int(h))
            if fps is not None:
                if isinstance(fps, bool) or not isinstance(fps, int | float) or not 1 <= fps <= 240:
                    raise UserError('"request" fps must be a number in 1..240')
                worker.max_fps = float(fps)
        elif kind == "calibrate":
            action = msg.get("action", "start")
            if action == "start":
                if not proc.enabled or worker.view == "original":
                    raise UserError("turn the filter on to calibrate")
                if self.server.calibrating(other_than=worker):
                    raise UserError("another stream is calibrating; try again when it has finished")
                if not proc.calibrate():
                    raise UserError("a calibration is already under way")
            elif action == "reset":
                proc.reset_calibration()
            else:
                raise UserError('"calibrate" action must be "start" or "reset"')
        else:
            raise UserError(f"unknown message type {kind[:40]!r}")
        return {"type": "ack", "of": kind}

    # -- stats and teardown --------------------------------------------------------------------------------

    def encoder(self) -> dict[str, Any] | None:
        for sender in self.pc.getSenders():
            enc = rtc_tuning.sender_encoder(sender)
            if enc is not None and hasattr(enc, "describe"):
                return enc.describe()
        return None

    def codec(self) -> str | None:
        """The negotiated video codec (both directions use the answer's first codec)."""
        for tr in self.pc.getTransceivers():
            codecs = getattr(tr, "_codecs", None)
            if tr.kind == "video" and codecs:
                return str(codecs[0].mimeType)
        return None

    def stats(self) -> dict[str, Any]:
        worker = self.server.worker_for(self)
        track = self.out_track if self.out_track is not None else self.server.broadcast_track
        out: dict[str, Any] = {"session": self.id, "mode": self.server.mode, "state": self.pc.connectionState,
                               "fps_in": round(self.in_rate.fps(), 2), "frames_in": self.in_rate.count,
                               "encoder": self.encoder(), "codec": self.codec(),
                               "age_s": round(time.monotonic() - self.created, 1),
                               "loop_lag_ms": self.server.loop_lag()}
        if self.server.broadcast is not None:
            out["fps_in"] = round(self.server.broadcast.in_rate.fps(), 2)
            out["frames_in"] = self.server.broadcast.in_rate.count
        if track is not None:
            lat = list(track.latency_ms)
            out.update(fps_out=round(track.rate.fps(), 2), frames_out=track.rate.count,
                       latency_ms={"last": round(lat[-1], 1) if lat else None,
                                   "mean": round(float(np.mean(lat)), 1) if lat else None,
                                   "p90": round(float(np.percentile(lat, 90)), 1) if lat else None})
        if worker is not None:
            out.update(worker.stats())
            if track is not None:
                out["drops"]["output"] = track.replaced
        return out

    async def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        log.info("session %s closed: %s", self.id, reason)
        with contextlib.suppress(Exception):
            self.server.history.append({**self.stats(), "closed": reason})
        current = asyncio.current_task()
        for task in list(self.tasks):
            if task is not current:
                task.cancel()
        if self.out_track is not None:
            self.out_track.stop()
        if self.worker is not None:
            await asyncio.to_thread(self.worker.stop)
        with contextlib.suppress(Exception):
            await self.pc.close()
        for task in list(self.tasks):
            if task is not current:
                with contextlib.suppress(BaseException):
                    await task
        self.server.sessions.pop(self.id, None)
        self.channel = None
        self.worker = None


# --------------------------------------------------------------------------------------------- broadcast


class Broadcast:
    """Viewer mode: one capture thread reads the source, one :class:`PeerWorker` processes it, one
    :class:`OutputTrack` feeds a ``MediaRelay`` that every viewer subscribes to."""

    def __init__(self, spec: str, processor: FrameProcessor, make_tracker: Callable[[], Any],
                 open_source: Callable[[str], Any], loop: asyncio.AbstractEventLoop):
        self.spec, self.loop = spec, loop
        self.source = open_source(spec)
        self.track = OutputTrack()
        self.relay = MediaRelay()
        self.in_rate = Rate()
        self.ended = False
        self.worker = PeerWorker("broadcast", processor, make_tracker,
                                 deliver=lambda vf, ns: _post(loop, self.track.deliver, vf, ns),
                                 on_end=lambda: _post(loop, self._end))
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
            self.worker._fail("source", exc)
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


# ------------------------------------------------------------------------------------------------ server


class LiveServer:
    """The aiohttp application and every session. ``make_processor()`` returns a fresh
    :class:`FrameProcessor` per peer (shared engine, own edits/config/timings); ``make_tracker()`` a fresh
    tracker (called in the peer's tracking thread); ``info`` goes into /config (bundle name, engine, …)."""

    def __init__(self, config: ServeConfig, make_processor: Callable[[], FrameProcessor],
                 make_tracker: Callable[[], Any], info: dict[str, Any] | None = None,
                 open_source: Callable[[str], Any] | None = None, edit_specs: Iterable[Any] = ()):
        self.config = config
        self.make_processor, self.make_tracker = make_processor, make_tracker
        self.info = dict(info or {})
        self.edit_specs = [_spec_json(s) for s in edit_specs]
        self.ice_servers = [parse_ice_server(u) for u in config.ice_servers]
        self._open_source = open_source
        self.sessions: dict[str, Session] = {}
        self.history: collections.deque[dict[str, Any]] = collections.deque(maxlen=100)  # stats of closed sessions
        self.peer_connections: weakref.WeakSet[RTCPeerConnection] = weakref.WeakSet()
        self.broadcast: Broadcast | None = None
        self._pending = 0  # offers being answered (count against max_sessions)
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self.loop_lag_ms: collections.deque[float] = collections.deque(maxlen=600)  # event-loop wake-up delays
        self._monitor: asyncio.Task[None] | None = None

    @property
    def mode(self) -> str:
        return "viewer" if self.config.source else "camera"

    @property
    def broadcast_track(self) -> OutputTrack | None:
        return self.broadcast.track if self.broadcast is not None else None

    def worker_for(self, session: Session) -> PeerWorker | None:
        return self.broadcast.worker if self.broadcast is not None else session.worker

    def calibrating(self, other_than: PeerWorker | None = None) -> bool:
        """Whether a stream other than ``other_than`` is recording or adapting (one calibration at a time: the
        adaptation competes with every stream for the device)."""
        workers = [self.broadcast.worker] if self.broadcast is not None else \
            [s.worker for s in list(self.sessions.values()) if s.worker is not None]
        return any(w is not other_than and w.processor.calibrator is not None and w.processor.calibrator.busy
                   for w in workers)

    # -- app -----------------------------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.offer_max_bytes + 1024,
                              middlewares=[_error_middleware])
        for path in STATIC_FILES:
            app.router.add_get(path, self.static)
        app.router.add_get("/config", self.get_config)
        app.router.add_post("/offer", self.offer)
        app.router.add_get("/stats", self.get_stats)
        app.on_startup.append(self._startup)
        app.on_shutdown.append(self._shutdown)
        return app

    async def _startup(self, app: web.Application) -> None:
        rtc_tuning.apply(self.config.tuning)
        loop = asyncio.get_running_loop()
        # aiortc encodes with run_in_executor(None, …): give the loop a pool sized for the sessions.
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(4, 2 * self.config.max_sessions + 2), thread_name_prefix="stylestream-pool")
        loop.set_default_executor(self._executor)
        self._monitor = asyncio.ensure_future(self._watch_loop())
        if self.config.source:
            from realtime.io.sources import open_source as default_open

            opener = self._open_source or _live_opener(default_open)
            self.broadcast = Broadcast(self.config.source, self.make_processor(), self.make_tracker, opener, loop)
            self.broadcast.start()

    async def _shutdown(self, app: web.Application) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
        await self.close_all()

    async def _watch_loop(self, period: float = 0.05) -> None:
        """How late the event loop wakes up: the evidence that no model work blocks it."""
        while True:
            t = time.perf_counter()
            await asyncio.sleep(period)
            self.loop_lag_ms.append(max(0.0, (time.perf_counter() - t - period) * 1e3))

    def loop_lag(self) -> dict[str, float]:
        lag = np.asarray(self.loop_lag_ms, np.float64)
        if not lag.size:
            return {}
        return {"p50": round(float(np.percentile(lag, 50)), 2), "p99": round(float(np.percentile(lag, 99)), 2),
                "max": round(float(lag.max()), 2)}

    async def close_all(self) -> None:
        await asyncio.gather(*(s.close("server shutting down") for s in list(self.sessions.values())),
                             return_exceptions=True)
        if self.broadcast is not None:
            self.broadcast.track.stop()
            await asyncio.to_thread(self.broadcast.stop)

    # -- auth ----------------------------------------------------------------------------------------------

    def _token_ok(self, request: web.Request, body_token: Any = None) -> bool:
        want = self.config.token
        if not want:
            return True
        given = request.headers.get("X-Stylestream-Token") or request.query.get("token")
        auth = request.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if given is None and isinstance(body_token, str):
            given = body_token
        return isinstance(given, str) and hmac.compare_digest(given.encode(), want.encode())

    # -- endpoints -----------------------------------------------------------------------------------------

    async def static(self, request: web.Request) -> web.StreamResponse:
        name, ctype = STATIC_FILES[request.path]
        body = (WEB_DIR / name).read_bytes()
        return web.Response(body=body, content_type=ctype, charset="utf-8", headers=SECURITY_HEADERS)

    async def get_config(self, request: web.Request) -> web.Response:
        if not self._token_ok(request):
            return _json_error(401, "wrong or missing token", token_required=True)
        return _json({"mode": self.mode, "token_required": bool(self.config.token),
                      "ice_servers": [ice_server_json(s) for s in self.ice_servers],
                      "edits": self.edit_specs, "fps": self.config.tuning.fps, "codec": self.config.tuning.codec,
                      "max_sessions": self.config.max_sessions, "sessions": len(self.sessions),
                      "source": self.config.source if self.config.source and "://" not in self.config.source
                      else ("network stream" if self.config.source else None), **self.info})

    async def get_stats(self, request: web.Request) -> web.Response:
        if not self._token_ok(request):
            return _json_error(401, "wrong or missing token")
        return _json({"mode": self.mode, "loop_lag_ms": self.loop_lag(),
                      "sessions": [s.stats() for s in list(self.sessions.values())]})

    async def offer(self, request: web.Request) -> web.Response:
        cfg = self.config
        if request.content_length is not None and request.content_length > cfg.offer_max_bytes:
            return _json_error(400, f"offer larger than {cfg.offer_max_bytes} bytes")
        auth = request.headers.get("Authorization", "")
        header_token = request.headers.get("X-Stylestream-Token") or request.query.get("token") \
            or (auth if auth.lower().startswith("bearer ") else None)
        if cfg.token and header_token is not None and not self._token_ok(request):
            return _json_error(401, "wrong token")
        raw = await request.content.read(cfg.offer_max_bytes + 1)
        if len(raw) > cfg.offer_max_bytes:
            return _json_error(400, f"offer larger than {cfg.offer_max_bytes} bytes")
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return _json_error(400, "offer is not JSON")
        if not isinstance(body, dict):
            return _json_error(400, "offer must be a JSON object")
        if not self._token_ok(request, body.get("token")):
            return _json_error(401, "wrong or missing token")
        sdp, kind = body.get("sdp"), body.get("type")
        if kind != "offer" or not isinstance(sdp, str) or not sdp.startswith("v=0") or "\nm=" not in sdp:
            return _json_error(400, 'expected {"type": "offer", "sdp": "v=0 …"} with at least one m= line')
        if "m=video" not in sdp:
            return _json_error(400, "the offer has no video")
        if len(self.sessions) + self._pending >= cfg.max_sessions:
            return _json_error(503, f"server full ({cfg.max_sessions} sessions); try again later")
        if self.broadcast is not None and self.broadcast.ended:
            return _json_error(503, "the broadcast source has ended")
        self._pending += 1
        try:
            return await self._answer(sdp)
        finally:
            self._pending -= 1

    async def _answer(self, sdp: str) -> web.Response:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=list(self.ice_servers)))  # [] = no external STUN
        self.peer_connections.add(pc)
        session = Session(self, pc)
        loop = asyncio.get_running_loop()
        if self.broadcast is None:
            session.out_track = OutputTrack()
            out_track = session.out_track

            session.worker = PeerWorker(f"peer-{session.id}", self.make_processor(), self.make_tracker,
                                        deliver=lambda vf, ns: _post(loop, out_track.deliver, vf, ns))

        @pc.on("datachannel")
        def on_datachannel(channel: Any) -> None:
            session.channel = channel
            channel.on("message", session.on_message)
            session.send({"type": "hello", "session": session.id, "mode": self.mode, "edits": self.edit_specs,
                          "views": list(VIEWS), **self.info})

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed") and not session.closed:
                await session.close(f"connection {pc.connectionState}")

        got_video: list[MediaStreamTrack] = []
        others: list[MediaStreamTrack] = []  # audio, extra video: read and dropped (aiortc queues them unbounded)

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "video" and not got_video and self.broadcast is None:
                got_video.append(track)
            else:
                others.append(track)

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            if self.broadcast is None:
                if not got_video:
                    raise ValueError("camera mode needs the browser's video (sendrecv)")
                assert session.out_track is not None
                pc.addTrack(session.out_track)
            else:
                pc.addTrack(self.broadcast.subscribe())
            rtc_tuning.prefer_codecs(pc, self.config.tuning.codec)
            answer = await pc.createAnswer()
            await pc.setLocalDescription(answer)
        except Exception as exc:  # garbage SDP, no common codec, …
            await _close_quietly(pc)
            msg = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            return _json_error(400, f"cannot use this offer: {msg}")
        self.sessions[session.id] = session
        if session.worker is not None:
            session.worker.start()
            session.spawn(session.read_input(got_video[0]))
        for track in others:
            session.spawn(_drain(track))
        session.spawn(session.watch_connect())
        session.spawn(session.send_stats())
        local = pc.localDescription
        return _json({"sdp": local.sdp, "type": local.type, "session": session.id})


def _spec_json(s: Any) -> dict[str, Any]:
    lo, hi = s.range
    return {"name": s.name, "kind": s.kind, "description": s.description, "min": float(lo), "max": float(hi),
            "default": float(s.default)}


def _live_opener(open_source: Callable[..., Any]) -> Callable[[str], Any]:
    from realtime.io.sources import paced_like_a_camera

    def opener(spec: str) -> Any:
        return open_source(spec, live=True, realtime=True if paced_like_a_camera(spec) else None)

    return opener


async def _drain(track: MediaStreamTrack) -> None:
    """Read and drop a track nobody uses, so its frames do not pile up in aiortc's queue."""
    with contextlib.suppress(MediaStreamError):
        while True:
            await track.recv()


async def _close_quietly(pc: RTCPeerConnection) -> None:
    with contextlib.suppress(Exception):
        await pc.close()


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(obj, default=str), status=status, content_type="application/json",
                        headers=SECURITY_HEADERS)


def _json_error(status: int, message: str, **extra: Any) -> web.Response:
    return _json({"error": message, **extra}, status=status)


@web.middleware
async def _error_middleware(request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
    """Every failure is a short JSON error; nothing a client sends produces a traceback page."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status >= 400:
            return _json_error(exc.status, exc.reason)
        raise
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return _json_error(500, "internal error")


async def run_server(server: LiveServer, ready: Callable[[str], None] | None = None,
                     stop: asyncio.Event | None = None) -> None:
    """Serve until ``stop`` is set (or forever); ``ready(url)`` is called once listening."""
    app = server.make_app()
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    ssl_context = None
    if server.config.tls_cert:
        import ssl

        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            ssl_context.load_cert_chain(server.config.tls_cert, server.config.tls_key)
        except (OSError, ssl.SSLError) as exc:
            await runner.cleanup()
            cfg = server.config
            raise UserError(f"cannot use --tls-cert {cfg.tls_cert} / --tls-key {cfg.tls_key}: {exc}") from None
    site = web.TCPSite(runner, server.config.host, server.config.port, ssl_context=ssl_context)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise UserError(f"cannot listen on {server.config.host}:{server.config.port}: {exc.strerror or exc}") \
            from None
    port = runner.addresses[0][1] if runner.addresses else server.config.port
    host = server.config.host
    url = f"http{'s' if ssl_context else ''}://{'[' + host + ']' if ':' in host else host}:{port}/"
    if ready is not None:
        ready(url)
    try:
        await (stop.wait() if stop is not None else asyncio.Event().wait())
    finally:
        await runner.cleanup()
