"""One WebRTC peer: its connection, data channel, worker (camera mode) and tasks, and the data-channel messages.

Messages (JSON text, ≤ 4 KiB), browser → server, one handler each in :attr:`Session.HANDLERS`::

    {"type": "filter", "on": true}                  {"type": "edit", "name": "smile", "value": 1.5}
    {"type": "view", "mode": "filtered" | "side_by_side" | "original"}
    {"type": "composite", "mode": "auto" | "transfer" | "regenerate"}   (DESIGN §9: keep the user's face or replace it)
    {"type": "request", "width": 1280, "height": 720, "fps": 60}   (processing size cap and frame-rate cap)
    {"type": "calibrate", "action": "start" | "reset"}   (live calibration: record, adapt in the background, swap)
    {"type": "ping", "t": 123.4}                    {"type": "bye"}

server → browser: ``hello`` (edits with ranges, mode, codec preference), ``stats`` (every ``stats_interval_s``),
``pong``, ``ack`` and ``error``. Handlers only flip state; model work never runs on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from models.errors import UserError
from realtime.frames import now_ns
from realtime.pipeline import COMPOSITES, VIEWS
from realtime.server import rtc_tuning
from realtime.server.media import OutputTrack, Rate
from realtime.server.worker import PeerWorker

if TYPE_CHECKING:  # the server owns its sessions; sessions only call back into it
    from realtime.server.app import LiveServer

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 4096


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


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
        """Parse one message and run its handler; the reply (``ack`` unless the handler says otherwise)."""
        if not isinstance(raw, str) or len(raw) > MAX_MESSAGE_BYTES:
            raise UserError(f"messages are JSON text of at most {MAX_MESSAGE_BYTES} bytes")
        try:
            msg = json.loads(raw)
        except (ValueError, RecursionError):
            raise UserError("message is not JSON") from None
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
            raise UserError('message must be an object with a "type"')
        kind = msg["type"]
        entry = self.HANDLERS.get(kind)
        if entry is None:
            raise UserError(f"unknown message type {kind[:40]!r}")
        needs_worker, handler = entry
        worker = self.server.worker_for(self)
        if needs_worker and worker is None:
            raise UserError("no video yet")
        reply = handler(self, msg, worker)
        return {"type": "ack", "of": kind} if reply is ... else reply

    def _ping(self, msg: dict[str, Any], worker: PeerWorker | None) -> dict[str, Any]:
        return {"type": "pong", "t": msg.get("t") if _number(msg.get("t")) else None}

    def _bye(self, msg: dict[str, Any], worker: PeerWorker | None) -> None:
        self.spawn(self.close("bye"))

    def _filter(self, msg: dict[str, Any], worker: PeerWorker) -> Any:
        on = msg.get("on")
        if not isinstance(on, bool):
            raise UserError('"filter" needs "on": true|false')
        worker.processor.enabled = on
        return ...

    def _edit(self, msg: dict[str, Any], worker: PeerWorker) -> Any:
        name, value = msg.get("name"), msg.get("value")
        if not isinstance(name, str) or not _number(value):
            raise UserError('"edit" needs "name": string and "value": number')
        if worker.processor.edits is None:
            raise UserError("this bundle has no edits")
        worker.processor.edits.set_strength(name, float(value))
        return ...

    def _view(self, msg: dict[str, Any], worker: PeerWorker) -> Any:
        mode = msg.get("mode")
        if mode not in VIEWS:
            raise UserError(f'"view" mode must be one of {", ".join(VIEWS)}')
        worker.view = mode
        return ...

    def _composite(self, msg: dict[str, Any], worker: PeerWorker) -> Any:
        mode = msg.get("mode")
        if mode not in COMPOSITES:
            raise UserError(f'"composite" mode must be one of {", ".join(COMPOSITES)}')
        worker.processor.composite_mode = mode
        return ...

    def _request(self, msg: dict[str, Any], worker: PeerWorker) -> Any:
        if self.server.broadcast is not None:
            raise UserError("viewer mode: the server's source sets the size and frame rate")
        w, h, fps = msg.get("width"), msg.get("height"), msg.get("fps")
        if w is not None or h is not None:
            if not all(isinstance(v, int) and not isinstance(v, bool) and 16 <= v <= 7680 for v in (w, h)):
                raise UserError('"request" width/height must be integers in 16..7680')
            worker.max_size = (int(w), int(h))
        if fps is not None:
            if not _number(fps) or not 1 <= fps <= 240:
                raise UserError('"request" fps must be a number in 1..240')
            worker.max_fps = float(fps)
        return ...

    def _calibrate(self, msg: dict[str, Any], worker: PeerWorker) -> Any:
        action = msg.get("action", "start")
        proc = worker.processor
        if action == "start":
            if not proc.enabled or proc.view == "original":
                raise UserError("turn the filter on to calibrate")
            if self.server.calibrating(other_than=worker):
                raise UserError("another stream is calibrating; try again when it has finished")
            if not proc.calibrate():
                raise UserError("a calibration is already under way")
        elif action == "reset":
            proc.reset_calibration()
        else:
            raise UserError('"calibrate" action must be "start" or "reset"')
        return ...

    # message type → (needs a worker, handler); a handler returns the reply, ``...`` for a plain ack, or None
    HANDLERS: dict[str, tuple[bool, Callable[..., Any]]] = {
        "ping": (False, _ping), "bye": (False, _bye), "filter": (True, _filter), "edit": (True, _edit),
        "view": (True, _view), "composite": (True, _composite), "request": (True, _request),
        "calibrate": (True, _calibrate),
    }

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
