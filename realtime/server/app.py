"""The live server: aiohttp serves the page, aiortc carries the video, a data channel carries controls and stats.

Two modes:

* **camera** (default): each browser sends its webcam; the server filters it and sends it back. Per peer a
  :class:`~realtime.server.worker.PeerWorker` runs the pipeline's stage runner (tracking thread, device thread,
  1-slot drop-oldest queues, so each stage always works on the newest frame and latency stays bounded). The engine is
  shared between peers (their concurrent calls merged by :class:`realtime.engines.BatchingEngine`); edits, the latent
  state and the tracker belong to the peer.
* **viewer** (``source=``): one server-side source (``rtmp://…``, a file, ``demo:``) is processed once by the same
  worker and broadcast to every viewer through aiortc's ``MediaRelay`` (:class:`~realtime.server.worker.Broadcast`).

The asyncio loop only moves frames: it hands decoded frames to the worker (a non-blocking put) and returns the
newest processed frame when aiortc's sender asks (:class:`~realtime.server.media.OutputTrack`). Encoding runs in
aiortc's executor threads with the overrides of :mod:`realtime.server.rtc_tuning`. Sessions and their data-channel
messages: :mod:`realtime.server.session`.

HTTP endpoints (all JSON errors are ``{"error": "..."}``):

========  ===========  =========================================================================================
GET       /            the page (``realtime/server/web/index.html``, ``app.js``, ``style.css``)
GET       /config      mode, ICE servers, edits, whether a token is needed (token required when one is set)
POST      /offer       ``{"sdp": "...", "type": "offer", "token"?: "..."}`` → ``{"sdp", "type": "answer", "session"}``;
                       400 malformed/oversized, 401 wrong token, 403 foreign ``Origin``, 415 not
                       ``application/json``, 503 when ``max_sessions`` are running
GET       /stats       every session's stats (token required when one is set)
========  ===========  =========================================================================================

Mutating requests (``POST /offer``) must be ``Content-Type: application/json`` and, when they carry an ``Origin``
header (browsers always send one on POST), come from the served page itself or one of ``allowed_origins``: without a
token, any web page the user visits could otherwise post offers (a form-encoded or ``text/plain`` POST needs no CORS
pre-flight) and take every session slot. On a server without a token the page's host must also be loopback or the
bound address, so a DNS-rebound name (``evil.example`` → 127.0.0.1, Host and Origin agreeing) is refused too. A
request without ``Origin`` (a non-browser client such as :mod:`realtime.server.client`) is allowed.

The token may come as ``Authorization: Bearer T``, ``X-Stylestream-Token: T``, ``?token=T`` or the offer's
``token`` field. A peer is freed (threads joined, tracker closed, connection closed) when it says bye, its connection
fails or closes, its track ends, or it does not connect within ``connect_timeout_s``.
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
import ssl
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np
from aiohttp import web
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from models.config import opt
from models.errors import UserError
from realtime.io.sources import open_source, paced_like_a_camera
from realtime.pipeline import VIEWS, FrameProcessor
from realtime.server import rtc_tuning
from realtime.server.media import OutputTrack
from realtime.server.session import Session
from realtime.server.worker import Broadcast, PeerWorker, post

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent / "web"
STATIC_FILES = {"/": ("index.html", "text/html"), "/index.html": ("index.html", "text/html"),
                "/app.js": ("app.js", "text/javascript"), "/style.css": ("style.css", "text/css")}
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

    host: str = opt("127.0.0.1", "interface to bind; anything but loopback needs --token")
    port: int = opt(8080, "TCP port of the page and the signalling endpoints (0: any free port)", min=0, max=65535)
    token: str | None = opt(None, "shared secret the page must send (required off loopback)")
    ice_servers: list[str] = opt(default_factory=list, help="STUN/TURN server: stun:HOST[:PORT] or "
                                 "turn:USER:PASS@HOST[:PORT] (default: none, host candidates only)",
                                 flag="--ice-server", metavar="URL", repeat=True)
    max_sessions: int = opt(4, "concurrent peers; more get HTTP 503", min=1, max=1024)
    source: str | None = opt(None, "viewer mode: process this rtmp://…|file|demo: source once and broadcast it to "
                                   "every viewer")
    offer_max_bytes: int = opt(64 * 1024, "largest accepted /offer body", min=1024, cli=False)
    stats_interval_s: float = opt(0.5, "how often stats go to each peer over the data channel", min=0.05, cli=False)
    connect_timeout_s: float = opt(20.0, "close peers not connected after this many seconds", min=0.1,
                                   flag="--connect-timeout")
    tuning: rtc_tuning.RtcTuning = field(default_factory=rtc_tuning.RtcTuning)  # encoder overrides (own flags)
    tls_cert: str | None = opt(None, "PEM certificate: serve HTTPS (browsers allow the camera only on https or "
                                     "localhost)", metavar="FILE")
    tls_key: str | None = opt(None, "PEM private key for --tls-cert", metavar="FILE")
    allowed_origins: list[str] = opt(default_factory=list, help="another web origin (scheme://host[:port]) whose "
                                     "pages may start sessions; the served page's own origin always may",
                                     flag="--allowed-origin", metavar="ORIGIN", repeat=True)


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


def normalize_origin(origin: str) -> str:
    """``scheme://host[:port]`` in the form browsers send it (lower case, no default port, no trailing slash);
    UserError for anything else (a path, a query, another scheme)."""
    o = origin.strip().rstrip("/")
    try:
        u = urlsplit(o)
        port = u.port
    except ValueError:
        u, port = None, None
    if u is None or u.scheme.lower() not in ("http", "https") or not u.hostname or u.path or u.query or u.fragment \
            or u.username or u.password:
        raise UserError(f"bad --allowed-origin {origin!r}: expected scheme://host[:port], e.g. https://example.org")
    scheme, host = u.scheme.lower(), u.hostname.lower()
    host = f"[{host}]" if ":" in host else host
    default = {"http": 80, "https": 443}[scheme]
    return f"{scheme}://{host}" + (f":{port}" if port is not None and port != default else "")


def ice_server_json(s: RTCIceServer) -> dict[str, Any]:
    d: dict[str, Any] = {"urls": s.urls}
    if s.username:
        d["username"], d["credential"] = s.username, s.credential
    return d


# ------------------------------------------------------------------------------------------------ server


class LiveServer:
    """The aiohttp application and every session. ``make_processor()`` returns a fresh
    :class:`FrameProcessor` per peer (shared engine, own edits/config/timings); ``make_tracker()`` a fresh
    tracker (called in the peer's tracking thread); ``info`` goes into /config (bundle name, engine, …)."""

    def __init__(self, config: ServeConfig, make_processor: Callable[[], FrameProcessor],
                 make_tracker: Callable[[], Any], info: dict[str, Any] | None = None,
                 open_source: Callable[[str], Any] | None = None, edit_specs: Iterable[Any] = (),
                 engine_stats: Callable[[], dict[str, Any]] | None = None):
        self.config = config
        self.engine_stats = engine_stats  # the shared engine's counters (batching), in /stats
        self.make_processor, self.make_tracker = make_processor, make_tracker
        self.info = dict(info or {})
        self.edit_specs = [_spec_json(s) for s in edit_specs]
        self.ice_servers = [parse_ice_server(u) for u in config.ice_servers]
        self.allowed_origins = {normalize_origin(o) for o in config.allowed_origins}
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
            opener = self._open_source or _live_opener(open_source)
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
        # surrogatepass: a header or JSON string that is not valid UTF-8 is a wrong token (401), not a 500
        return isinstance(given, str) and hmac.compare_digest(given.encode("utf-8", "surrogatepass"),
                                                              want.encode("utf-8", "surrogatepass"))

    def _refusal(self, request: web.Request) -> web.Response | None:
        """Why a mutating request may not proceed (see the module doc): not JSON → 415, a foreign Origin → 403."""
        if request.content_type != "application/json":
            return _json_error(415, f"expected Content-Type: application/json, not {request.content_type}")
        origin = request.headers.get("Origin")
        if origin is None:  # not a browser (browsers send Origin with every POST)
            return None
        try:
            given = normalize_origin(origin)
        except UserError:
            return _json_error(403, f"cross-origin request refused (Origin: {origin[:100]})")
        if given in self.allowed_origins:
            return None
        try:
            page = normalize_origin(f"{request.scheme}://{request.host}")
        except UserError:
            return _json_error(403, "cross-origin request refused (no usable Host header)")
        if given != page:
            return _json_error(403, f"cross-origin request refused: Origin {given} is not this page ({page}); "
                                    f"start the server with --allowed-origin {given} to allow it")
        return self._rebound(request)

    def _rebound(self, request: web.Request) -> web.Response | None:
        """Without a token, a request whose Host is neither loopback nor the address the server listens on (a
        DNS-rebound name: evil.example resolving to 127.0.0.1) is refused on every endpoint that answers with
        data — /config carries the TURN credentials."""
        if self.config.token:
            return None
        try:
            host = urlsplit(normalize_origin(f"{request.scheme}://{request.host}")).hostname or ""
        except UserError:
            return _json_error(403, "request refused (no usable Host header)")
        if is_loopback(host) or host == self.config.host.strip("[]").lower():
            return None
        return _json_error(403, f"request refused: the page was loaded as {host}, which is not this server's "
                                "address (a DNS-rebound name?); use the address it listens on, or --token")

    # -- endpoints -----------------------------------------------------------------------------------------

    async def static(self, request: web.Request) -> web.StreamResponse:
        name, ctype = STATIC_FILES[request.path]
        body = (WEB_DIR / name).read_bytes()
        return web.Response(body=body, content_type=ctype, charset="utf-8", headers=SECURITY_HEADERS)

    async def get_config(self, request: web.Request) -> web.Response:
        if (refused := self._rebound(request)) is not None:
            return refused
        if not self._token_ok(request):
            return _json_error(401, "wrong or missing token", token_required=True)
        return _json({"mode": self.mode, "token_required": bool(self.config.token),
                      "ice_servers": [ice_server_json(s) for s in self.ice_servers],
                      "edits": self.edit_specs, "fps": self.config.tuning.fps, "codec": self.config.tuning.codec,
                      "max_sessions": self.config.max_sessions, "sessions": len(self.sessions),
                      "source": self.config.source if self.config.source and "://" not in self.config.source
                      else ("network stream" if self.config.source else None), **self.info})

    async def get_stats(self, request: web.Request) -> web.Response:
        if (refused := self._rebound(request)) is not None:
            return refused
        if not self._token_ok(request):
            return _json_error(401, "wrong or missing token")
        return _json({"mode": self.mode, "loop_lag_ms": self.loop_lag(),
                      "engine": self.engine_stats() if self.engine_stats is not None else None,
                      "sessions": [s.stats() for s in list(self.sessions.values())]})

    async def offer(self, request: web.Request) -> web.Response:
        cfg = self.config
        if request.content_length is not None and request.content_length > cfg.offer_max_bytes:
            return _json_error(400, f"offer larger than {cfg.offer_max_bytes} bytes")
        refused = self._refusal(request)
        if refused is not None:
            return refused
        auth = request.headers.get("Authorization", "")
        header_token = request.headers.get("X-Stylestream-Token") or request.query.get("token") \
            or (auth if auth.lower().startswith("bearer ") else None)
        if cfg.token and header_token is not None and not self._token_ok(request):
            return _json_error(401, "wrong token")
        raw = await _read_body(request, cfg.offer_max_bytes)
        if raw is None:
            return _json_error(400, f"offer larger than {cfg.offer_max_bytes} bytes")
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return _json_error(400, "offer is not JSON")
        except RecursionError:  # [[[[…]]]] nested past the decoder's recursion limit
            return _json_error(400, "offer is not JSON (nested too deeply)")
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
                                        deliver=lambda vf, ns: post(loop, out_track.deliver, vf, ns))

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
    def opener(spec: str) -> Any:
        return open_source(spec, live=True, realtime=True if paced_like_a_camera(spec) else None)

    return opener


async def _read_body(request: web.Request, limit: int) -> bytes | None:
    """The whole request body (however many TCP pieces it arrives in), or None when it is over ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(limit + 1 - size)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return None


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
