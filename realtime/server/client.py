"""A Python WebRTC client for `stylestream serve` (tests, benchmarks, headless checks on loopback).

It sends a synthetic face clip (or any frames) with the frame number stamped into the top-left corner as 16
black/white 16×16 blocks (12 bits of index + 4 check bits, robust to video coding), receives the processed
video, reads the stamp back and so measures true end-to-end latency: capture → encode → network → server
(decode, track, filter, encode) → network → decode. The filter only touches the face, so the stamp survives.

    client = LiveClient("http://127.0.0.1:8080/", frames=clip_frames(640, 480), fps=30)
    await client.connect()
    await client.wait_frames(30, timeout=20)
    client.send({"type": "edit", "name": "smile", "value": 2})
    print(client.summary())
    await client.close()

``light=True`` (benchmarks with several clients on the server's machine): the clip is stamped and H.264-encoded
once, up front (:class:`PreEncodedTrack`), and sent as packets — no encoder runs per frame in the client — and only
the stamp's rows of each received frame are read. A default client spends most of its CPU encoding; a light one
leaves the cores to the server.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import math
import time
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import aiohttp
import av
import cv2
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import VIDEO_TIME_BASE, AudioStreamTrack, MediaStreamError, MediaStreamTrack

from realtime.io.sources import open_source

STAMP_BITS = 16  # 12 index bits + 4 check bits
STAMP_BLOCK = 16  # pixels per block side
STAMP_ORIGIN = (8, 8)  # (x, y) of the first block
STAMP_MOD = 1 << 12


def _check(index: int) -> int:
    return (index * 7 + 3) % 16


def stamp_bits(index: int) -> list[int]:
    i = index % STAMP_MOD
    value = (i << 4) | _check(i)
    return [(value >> (STAMP_BITS - 1 - k)) & 1 for k in range(STAMP_BITS)]


def stamp_i420(yuv: np.ndarray, width: int, height: int, index: int) -> None:
    """Write the stamp into an I420 buffer [H*3/2, W] in place (luma 16/235, neutral chroma)."""
    x0, y0 = STAMP_ORIGIN
    b = STAMP_BLOCK
    u_off = height
    for k, bit in enumerate(stamp_bits(index)):
        x = x0 + k * b
        yuv[y0 : y0 + b, x : x + b] = 235 if bit else 16
        # chroma planes: U then V, each [H/2, W/2] packed as H/4 rows of W in the I420 layout
        for plane in (0, 1):
            cy0, cx0 = y0 // 2, x // 2
            for row in range(cy0, cy0 + b // 2):
                flat = plane * (height // 2) * (width // 2) + row * (width // 2) + cx0
                r, c = divmod(flat, width)
                yuv[u_off + r, c : c + b // 2] = 128


def read_stamp(luma: np.ndarray) -> int | None:
    """The frame index from a luma plane [H, W] (any size ≥ the stamp), or None when it does not read."""
    x0, y0 = STAMP_ORIGIN
    b, q = STAMP_BLOCK, STAMP_BLOCK // 4
    if luma.shape[0] < y0 + b or luma.shape[1] < x0 + STAMP_BITS * b:
        return None
    bits = []
    for k in range(STAMP_BITS):
        x = x0 + k * b
        v = float(luma[y0 + q : y0 + b - q, x + q : x + b - q].mean())
        if 80 < v < 170:
            return None
        bits.append(int(v >= 128))
    value = 0
    for bit in bits:
        value = (value << 1) | bit
    index, check = value >> 4, value & 15
    return index if _check(index) == check else None


def clip_frames(width: int, height: int, count: int = 30, seed: int = 0, still: bool = False) -> list[np.ndarray]:
    """``count`` frames of the ``demo:`` astronaut clip at ``width``×``height`` as RGB arrays (looped by the
    track); ``still``: the first frame repeated (for tests that compare outputs)."""
    n = 1 if still else count
    with open_source(f"demo:?seconds={n / 30 + 0.5:g}&fps=30&size={width}x{height}&seed={seed}") as src:
        frames = [f.image for _, f in zip(range(n), src)]
    return frames


class _PacedTrack(MediaStreamTrack):
    """A track that hands out frame ``index`` at ``index / fps`` seconds after its first ``recv``."""

    fps: float
    index: int
    _start: float | None

    async def _next_index(self) -> int:
        """Wait until the next frame is due; its index (the caller increments ``index`` once it is sent)."""
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        delay = self._start + self.index / self.fps - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.5:  # far behind (a slow machine): restart the clock instead of bursting
            self._start = time.monotonic() - self.index / self.fps
        return self.index


class StampedTrack(_PacedTrack):
    """Video from RGB frames (looped) at ``fps``, each stamped with its index; remembers when each was sent."""

    kind = "video"

    def __init__(self, frames: Sequence[np.ndarray], fps: float = 30.0, stamp: bool = True):
        super().__init__()
        if not frames:
            raise ValueError("no frames")
        self.fps, self.stamp = fps, stamp
        self.height, self.width = frames[0].shape[:2]
        self._yuv = [cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2YUV_I420) for f in frames]
        self.rgb = list(frames)
        self.sent: dict[int, float] = {}  # stamp index → monotonic send time (the last STAMP_MOD frames)
        self.index = 0
        self._start: float | None = None

    async def recv(self) -> av.VideoFrame:
        i = await self._next_index()
        yuv = self._yuv[i % len(self._yuv)].copy()
        if self.stamp:
            stamp_i420(yuv, self.width, self.height, i)
        frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        frame.pts = int(i * 90_000 / self.fps)
        frame.time_base = VIDEO_TIME_BASE
        self.sent[i % STAMP_MOD] = time.monotonic()
        self.index += 1
        return frame

    def source_rgb(self, index: int) -> np.ndarray:
        return self.rgb[index % len(self.rgb)]


def encode_h264(frames: Sequence[np.ndarray], fps: float, bitrate: int = 1_500_000, gop: int = 30) -> list[bytes]:
    """Annex-B H.264 access units, one per I420 frame [H*3/2, W] (libx264 ultrafast/zerolatency, Constrained
    Baseline, an IDR with SPS/PPS every ``gop`` frames)."""
    h, w = frames[0].shape[0] * 2 // 3, frames[0].shape[1]
    codec = av.CodecContext.create("libx264", "w")
    codec.width, codec.height, codec.pix_fmt = w, h, "yuv420p"
    codec.framerate = Fraction(round(fps), 1)
    codec.time_base = Fraction(1, round(fps))
    codec.bit_rate = bitrate
    codec.gop_size = gop
    codec.options = {"preset": "ultrafast", "tune": "zerolatency", "profile": "baseline", "level": "4.2"}
    units: list[bytes] = []
    for i, yuv in enumerate(frames):
        vf = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        vf.pts = i
        data = b"".join(bytes(p) for p in codec.encode(vf))
        units.append(data)
    tail = b"".join(bytes(p) for p in codec.encode(None))
    if tail:  # zerolatency emits every frame at once; anything late belongs to the last one
        units[-1] += tail
    if not all(units):
        raise RuntimeError("the encoder held frames back (expected one access unit per frame)")
    return units


class PreEncodedTrack(_PacedTrack):
    """:class:`StampedTrack`'s video, stamped and H.264-encoded once: ``recv()`` returns ``av.Packet``s (aiortc
    packetises them without encoding). The clip loops every ``len(frames)`` frames (a multiple of the GOP, so the
    loop starts on an IDR); the stamps count 0 … len − 1, so latencies are read modulo the loop."""

    kind = "video"

    def __init__(self, frames: Sequence[np.ndarray], fps: float = 30.0, gop: int = 30):
        super().__init__()
        if not frames:
            raise ValueError("no frames")
        n = max(gop, len(frames) // gop * gop)
        self.fps = fps
        self.height, self.width = frames[0].shape[:2]
        yuvs = []
        for i in range(n):
            yuv = cv2.cvtColor(np.ascontiguousarray(frames[i % len(frames)]), cv2.COLOR_RGB2YUV_I420)
            stamp_i420(yuv, self.width, self.height, i)
            yuvs.append(yuv)
        self.units = encode_h264(yuvs, fps, gop=gop)
        self.sent: dict[int, float] = {}
        self.index = 0
        self._start: float | None = None

    async def recv(self) -> av.Packet:
        i = await self._next_index()
        packet = av.Packet(self.units[i % len(self.units)])
        packet.pts = int(i * 90_000 / self.fps)
        packet.time_base = VIDEO_TIME_BASE
        self.sent[(i % len(self.units)) % STAMP_MOD] = time.monotonic()
        self.index += 1
        return packet


def _stamp_rows(frame: av.VideoFrame) -> np.ndarray:
    """The luma rows that hold the stamp, without converting the frame."""
    plane = frame.planes[0]
    rows = min(frame.height, STAMP_ORIGIN[1] + STAMP_BLOCK)
    return np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:rows, : frame.width]


class LiveClient:
    """One peer of `stylestream serve`: sends ``frames`` (camera mode) or only receives (viewer mode); ``light``:
    pre-encoded H.264 out, only the stamp read back (module docstring)."""

    def __init__(self, url: str, frames: Sequence[np.ndarray] | None = None, fps: float = 30.0,
                 token: str | None = None, keep_frames: int = 0, receive_only: bool = False,
                 send_audio: bool = False, light: bool = False):
        self.url = url.rstrip("/")
        self.token = token
        self.light = light
        self.track: StampedTrack | PreEncodedTrack | None = None
        if not receive_only and frames is not None:
            self.track = PreEncodedTrack(frames, fps) if light else StampedTrack(frames, fps)
        self.pc: RTCPeerConnection | None = None
        self.channel: Any = None
        self.hello: dict[str, Any] | None = None
        self.stats: dict[str, Any] | None = None
        self.messages: collections.deque[dict[str, Any]] = collections.deque(maxlen=200)
        self.frames = 0
        self.stamped = 0
        self.latency_ms: list[float] = []
        self.recv_times: list[float] = []
        self.kept: collections.deque[tuple[int | None, np.ndarray]] = collections.deque(maxlen=max(1, keep_frames))
        self.keep_frames = keep_frames
        self.session: str | None = None
        self.send_audio = send_audio  # also send a silent audio track (the server must drop it, not queue it)
        self._tasks: list[asyncio.Task[Any]] = []
        self._channel_open = asyncio.Event()
        self._frame_event = asyncio.Event()

    async def connect(self, timeout: float = 20.0) -> None:
        pc = self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.channel = pc.createDataChannel("control")

        @self.channel.on("open")
        def _open() -> None:
            self._channel_open.set()

        @self.channel.on("message")
        def _message(raw: Any) -> None:
            with contextlib.suppress(ValueError, TypeError):
                msg = json.loads(raw)
                self.messages.append(msg)
                if msg.get("type") == "hello":
                    self.hello = msg
                elif msg.get("type") == "stats":
                    self.stats = msg

        @pc.on("track")
        def _track(track: MediaStreamTrack) -> None:
            if track.kind == "video":
                self._tasks.append(asyncio.ensure_future(self._receive(track)))

        if self.track is not None:
            pc.addTrack(self.track)
            if isinstance(self.track, PreEncodedTrack):  # the packets are H.264: offer nothing else
                h264 = [c for c in RTCRtpSender.getCapabilities("video").codecs
                        if c.mimeType in ("video/H264", "video/rtx")]
                pc.getTransceivers()[0].setCodecPreferences(h264)
        else:
            pc.addTransceiver("video", direction="recvonly")
        if self.send_audio:
            pc.addTrack(AudioStreamTrack())
        await pc.setLocalDescription(await pc.createOffer())
        body = {"sdp": pc.localDescription.sdp, "type": "offer"}
        if self.token is not None:
            body["token"] = self.token
        async with aiohttp.ClientSession() as http, http.post(self.url + "/offer", json=body,
                                                                timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            answer = await r.json()
            if r.status != 200:
                await pc.close()
                raise ConnectionError(f"/offer → {r.status}: {answer.get('error')}")
        self.session = answer.get("session")
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        await asyncio.wait_for(self._channel_open.wait(), timeout)

    async def _receive(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                t = time.monotonic()
                self.frames += 1
                self.recv_times.append(t)
                index = read_stamp(_stamp_rows(frame) if self.light else
                                   frame.to_ndarray(format="yuv420p")[: frame.height])
                if index is not None and self.track is not None:
                    sent = self.track.sent.get(index)
                    if sent is not None and 0 <= t - sent < 10:
                        self.stamped += 1
                        self.latency_ms.append((t - sent) * 1e3)
                if self.keep_frames:
                    self.kept.append((index, frame.to_ndarray(format="rgb24")))
                self._frame_event.set()
        except MediaStreamError:
            pass

    def send(self, msg: dict[str, Any]) -> None:
        if self.channel is None or self.channel.readyState != "open":
            raise ConnectionError("data channel is not open")
        self.channel.send(json.dumps(msg))

    async def wait_frames(self, n: int, timeout: float) -> int:
        """Wait until ``n`` more frames arrived (or ``timeout``); returns how many arrived."""
        target = self.frames + n
        deadline = time.monotonic() + timeout
        while self.frames < target and time.monotonic() < deadline:
            self._frame_event.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._frame_event.wait(), max(0.01, deadline - time.monotonic()))
        return self.frames - (target - n)

    async def wait_message(self, kind: str, timeout: float, where: Any = None) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        seen = len(self.messages)
        while time.monotonic() < deadline:
            for m in list(self.messages)[max(0, seen - 1):]:
                if m.get("type") == kind and (where is None or where(m)):
                    return m
            await asyncio.sleep(0.05)
        return None

    def summary(self, since: float | None = None) -> dict[str, Any]:
        """fps received and end-to-end latency (stamped frames) — since ``since`` (monotonic) when given."""
        times = [t for t in self.recv_times if since is None or t >= since]
        fps = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 2 else 0.0
        lat = np.asarray(self.latency_ms[-len(times):] if since is not None else self.latency_ms, np.float64)

        def pct(p: float) -> float:
            return float(np.percentile(lat, p)) if lat.size else math.nan

        return {"frames": len(times), "fps": round(fps, 2), "stamped": int(lat.size),
                "latency_ms": {"p50": round(pct(50), 1), "p90": round(pct(90), 1), "mean":
                               round(float(lat.mean()), 1) if lat.size else math.nan}}

    async def close(self) -> None:
        if self.channel is not None and self.channel.readyState == "open":
            with contextlib.suppress(Exception):
                self.send({"type": "bye"})
            await asyncio.sleep(0.05)
        if self.pc is not None:
            await self.pc.close()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        if self.track is not None:
            self.track.stop()
