"""aiortc tuning for 60 fps — the ONE place where stylestream overrides aiortc's video limits (DESIGN §5).

aiortc 1.16 ships conservative defaults for video calls; each override below names what it replaces:

* ``codecs.h264.MAX_FRAME_RATE`` / ``codecs.vpx.MAX_FRAME_RATE``: 30 → ``fps`` (60), the encoders' frame rate.
* ``codecs.h264.MIN/MAX_BITRATE`` (0.5–3 Mbps) and ``codecs.vpx.MIN/MAX_BITRATE`` (0.25–1.5 Mbps) →
  ``min_bitrate``–``max_bitrate`` (0.3–20 Mbps); REMB from the receiver moves the target inside these bounds.
* ``*.DEFAULT_BITRATE`` (1 Mbps H.264, 0.5 Mbps VP8) → ``bits_per_pixel`` × width × height × fps.
* ``mediastreams.VIDEO_PTIME``: 1/30 → 1/``fps`` (pacing of aiortc's own dummy/file tracks).
* ``rtcrtpsender.get_encoder`` → :class:`TunedH264Encoder` (stock: libx264, preset medium, Baseline level 3.1):
  h264_nvenc when PyAV and a GPU offer it, else libx264 ``ultrafast``/zerolatency; Constrained Baseline at
  level 4.2 (1080p60 fits); real 90 kHz timestamps; re-opens for a new bitrate at most every 2 s. VP8 →
  :class:`TunedVp8Encoder` (stock settings, patched bounds, timings).
* The answer's codec order (stock: the browser's, VP8 first) → :func:`prefer_codecs` puts ``codec`` first.

Level 3.1 allows 1280×720 at 30 fps (108 000 macroblocks/s); 1920×1080 at 60 fps needs 489 600, i.e. level 4.2.
The SDP keeps the browser's ``profile-level-id`` (aiortc matches H.264 by profile only and sends
``level-asymmetry-allowed=1``); browsers decode higher levels than the one they advertise.

The encoders still run where aiortc runs them: one executor thread per sender. Each tuned encoder keeps rolling
timings (``encode_ms``) and says which FFmpeg encoder it opened (``codec_name``), for the server's stats.
:func:`apply` patches module attributes process-wide and is idempotent; :func:`restore` undoes it.
"""

from __future__ import annotations

import collections
import fractions
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import av
from aiortc import mediastreams, rtcrtpsender
from aiortc.codecs import get_encoder as _stock_get_encoder
from aiortc.codecs import h264, vpx
from aiortc.codecs.base import Encoder
from aiortc.mediastreams import VIDEO_TIME_BASE, convert_timebase

from models.config import opt

log = logging.getLogger(__name__)


@dataclass
class RtcTuning:
    """Video-encoder limits for the live server (CLI flags of `serve` set them)."""

    fps: int = opt(60, "nominal encoder frame rate (aiortc: 30); frames are sent as fast as they are produced",
                   min=1, max=240)
    min_bitrate: int = opt(300_000, "bps floor for congestion control (REMB) (aiortc: 0.5 M H.264, 0.25 M VP8)",
                           min=10_000, cli=False)
    max_bitrate_mbps: float = opt(20.0, "Mbps ceiling (aiortc: 3 H.264, 1.5 VP8)", min=0.31, max=1000.0,
                                  flag="--max-bitrate")
    bits_per_pixel: float = opt(0.08, "starting bitrate = this × width × height × fps, clamped to the bounds",
                                min=0.0, cli=False)
    codec: str = opt("h264", "preferred codec in the answer (the other stays as a fallback)", choices=("h264", "vp8"))
    h264_encoder: str = opt("auto", "H.264 encoder: auto = h264_nvenc when it opens, else libx264",
                            choices=("auto", "h264_nvenc", "libx264"))
    x264_preset: str = opt("ultrafast", "libx264 preset (aiortc: medium); ultrafast keeps 720p60 on 2 CPU cores")
    h264_level: str = opt("4.2", "H.264 level (aiortc: 3.1); 4.2 carries 1080p60", cli=False)
    gop_seconds: float = opt(4.0, "periodic key frame every N seconds (plus one on every PLI/FIR)", min=0.1,
                             cli=False)

    @property
    def max_bitrate(self) -> int:
        """bps ceiling."""
        return int(self.max_bitrate_mbps * 1e6)


_lock = threading.Lock()
_active: RtcTuning | None = None
_STOCK: dict[str, Any] = {}
_nvenc_ok: bool | None = None


def active() -> RtcTuning | None:
    """The tuning :func:`apply` installed, or None (stock aiortc)."""
    return _active


def apply(tuning: RtcTuning | None = None) -> RtcTuning:
    """Install ``tuning`` into aiortc (process-wide; idempotent; a later call replaces an earlier one)."""
    global _active
    t = tuning or RtcTuning()
    if t.codec not in ("h264", "vp8"):
        raise ValueError(f"codec must be h264 or vp8, got {t.codec!r}")
    if t.h264_encoder not in ("auto", "h264_nvenc", "libx264"):
        raise ValueError(f"h264_encoder must be auto, h264_nvenc or libx264, got {t.h264_encoder!r}")
    with _lock:
        if not _STOCK:
            _STOCK.update(
                h264_fps=h264.MAX_FRAME_RATE, vpx_fps=vpx.MAX_FRAME_RATE, ptime=mediastreams.VIDEO_PTIME,
                h264_min=h264.MIN_BITRATE, h264_max=h264.MAX_BITRATE, h264_def=h264.DEFAULT_BITRATE,
                vpx_min=vpx.MIN_BITRATE, vpx_max=vpx.MAX_BITRATE, vpx_def=vpx.DEFAULT_BITRATE,
                get_encoder=rtcrtpsender.get_encoder,
            )
        h264.MAX_FRAME_RATE = vpx.MAX_FRAME_RATE = t.fps
        mediastreams.VIDEO_PTIME = 1.0 / t.fps
        h264.MIN_BITRATE = vpx.MIN_BITRATE = t.min_bitrate
        h264.MAX_BITRATE = vpx.MAX_BITRATE = t.max_bitrate
        h264.DEFAULT_BITRATE = vpx.DEFAULT_BITRATE = _clamp(int(t.bits_per_pixel * 640 * 480 * t.fps), t)
        rtcrtpsender.get_encoder = _get_encoder
        _active = t
    return t


def restore() -> None:
    """Put aiortc's stock values back."""
    global _active
    with _lock:
        if not _STOCK:
            return
        h264.MAX_FRAME_RATE, vpx.MAX_FRAME_RATE = _STOCK["h264_fps"], _STOCK["vpx_fps"]
        mediastreams.VIDEO_PTIME = _STOCK["ptime"]
        h264.MIN_BITRATE, h264.MAX_BITRATE, h264.DEFAULT_BITRATE = (_STOCK["h264_min"], _STOCK["h264_max"],
                                                                   _STOCK["h264_def"])
        vpx.MIN_BITRATE, vpx.MAX_BITRATE, vpx.DEFAULT_BITRATE = _STOCK["vpx_min"], _STOCK["vpx_max"], _STOCK["vpx_def"]
        rtcrtpsender.get_encoder = _STOCK["get_encoder"]
        _active = None


def _clamp(bitrate: int, t: RtcTuning) -> int:
    return max(t.min_bitrate, min(int(bitrate), t.max_bitrate))


def _get_encoder(codec: Any) -> Encoder:
    t = _active or RtcTuning()
    mime = codec.mimeType.lower()
    if mime == "video/h264":
        return TunedH264Encoder(t)
    if mime == "video/vp8":
        return TunedVp8Encoder(t)
    return _stock_get_encoder(codec)


def nvenc_available() -> bool:
    """True when PyAV's FFmpeg has h264_nvenc and it opens on this machine (probed once, ~0.1–1 s)."""
    global _nvenc_ok
    if _nvenc_ok is None:
        try:
            ctx = av.CodecContext.create("h264_nvenc", "w")
            ctx.width, ctx.height, ctx.pix_fmt = 256, 256, "yuv420p"
            ctx.time_base = fractions.Fraction(1, 30)
            ctx.open()
            frame = av.VideoFrame(256, 256, "yuv420p")
            frame.pts = 0
            list(ctx.encode(frame))
            _nvenc_ok = True
        except Exception as exc:  # no such codec, no GPU/driver, no free NVENC session
            log.info("h264_nvenc unavailable: %s", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            _nvenc_ok = False
    return _nvenc_ok


class _Timed:
    """Rolling encode timings shared by the tuned encoders (read by the server's stats)."""

    codec_name: str = ""
    width: int = 0
    height: int = 0

    def _init_timing(self) -> None:
        self.encode_times: collections.deque[float] = collections.deque(maxlen=120)
        self.frames_encoded = 0
        self.key_frames = 0

    def encode_ms(self) -> float:
        """Mean encode time over the last 120 frames (ms)."""
        times = list(self.encode_times)
        return sum(times) / len(times) if times else 0.0

    def describe(self) -> dict[str, Any]:
        return {"encoder": self.codec_name, "width": self.width, "height": self.height,
                "bitrate": int(getattr(self, "target_bitrate", 0)), "encode_ms": round(self.encode_ms(), 2),
                "frames": self.frames_encoded, "key_frames": self.key_frames}


class TunedH264Encoder(_Timed, h264.H264Encoder):
    """aiortc's H.264 encoder (same RTP packetisation) with our FFmpeg encoder, level, rate and bitrate."""

    def __init__(self, tuning: RtcTuning) -> None:
        super().__init__()
        self.tuning = tuning
        self._init_timing()
        self._bitrate: int | None = None  # None until REMB says something: resolution default
        self._opened_at = 0.0
        self.codec_name = ""

    @property  # type: ignore[override]
    def target_bitrate(self) -> int:
        if self._bitrate is not None:
            return self._bitrate
        w, h = (self.width, self.height) if self.width else (640, 480)
        return _clamp(int(self.tuning.bits_per_pixel * w * h * self.tuning.fps), self.tuning)

    @target_bitrate.setter
    def target_bitrate(self, bitrate: int) -> None:
        self._bitrate = _clamp(bitrate, self.tuning)

    def _open(self, width: int, height: int) -> Any:
        t = self.tuning
        names = ["h264_nvenc", "libx264"] if t.h264_encoder == "auto" else [t.h264_encoder]
        if "h264_nvenc" in names and t.h264_encoder == "auto" and not nvenc_available():
            names.remove("h264_nvenc")
        self.width, self.height = width, height
        last: Exception | None = None
        for name in names:
            try:
                ctx = av.CodecContext.create(name, "w")
                ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
                ctx.bit_rate = self.target_bitrate
                ctx.framerate = fractions.Fraction(t.fps, 1)
                ctx.time_base = VIDEO_TIME_BASE  # real (90 kHz) timestamps: variable frame rate is fine
                ctx.gop_size = max(1, int(t.gop_seconds * t.fps))
                ctx.max_b_frames = 0
                if name == "h264_nvenc":
                    ctx.options = {"preset": "p1", "tune": "ull", "zerolatency": "1", "delay": "0", "rc": "cbr",
                                   "profile": "baseline", "level": t.h264_level, "forced-idr": "1"}
                else:
                    ctx.options = {"preset": t.x264_preset, "tune": "zerolatency", "profile": "baseline",
                                   "level": t.h264_level.replace(".", "")}
                ctx.open()
            except Exception as exc:  # encoder missing or refusing this size: try the next one
                last = exc
                log.warning("cannot open %s at %dx%d: %s", name, width, height, exc)
                continue
            self.codec_name = name
            self._opened_at = time.monotonic()
            return ctx
        raise RuntimeError(f"no H.264 encoder opens at {width}x{height}: {last}")

    def _encode_frame(self, frame: av.VideoFrame, force_keyframe: bool) -> Iterator[bytes]:
        c = self.codec
        if c is not None:
            stale = abs(self.target_bitrate - c.bit_rate) / max(1, c.bit_rate) > 0.25
            # Re-opening costs a key frame: follow the bitrate at most every 2 s.
            if frame.width != c.width or frame.height != c.height or (
                    stale and time.monotonic() - self._opened_at > 2.0):
                self.codec = None
        if self.codec is None:
            self.codec = self._open(frame.width, frame.height)
            force_keyframe = True
        if frame.format.name != "yuv420p":
            frame = frame.reformat(format="yuv420p")
        if force_keyframe:
            frame.pict_type = av.video.frame.PictureType.I
            self.key_frames += 1
        data = b"".join(bytes(p) for p in self.codec.encode(frame))
        if force_keyframe:
            frame.pict_type = av.video.frame.PictureType.NONE
        if data:
            yield from self._split_bitstream(data)

    def encode(self, frame: Any, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        timestamp = convert_timebase(frame.pts, frame.time_base, VIDEO_TIME_BASE)
        t0 = time.perf_counter()
        packages = list(self._encode_frame(frame, force_keyframe))
        self.encode_times.append((time.perf_counter() - t0) * 1e3)
        self.frames_encoded += 1
        return self._packetize(packages), timestamp


class TunedVp8Encoder(_Timed, vpx.Vp8Encoder):
    """aiortc's VP8 encoder (bitrate bounds come from the patched module values) with timings."""

    def __init__(self, tuning: RtcTuning) -> None:
        super().__init__()
        self.tuning = tuning
        self._init_timing()
        self.codec_name = "libvpx"

    def encode(self, frame: Any, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        self.width, self.height = frame.width, frame.height
        t0 = time.perf_counter()
        out = super().encode(frame, force_keyframe)
        self.encode_times.append((time.perf_counter() - t0) * 1e3)
        self.frames_encoded += 1
        self.key_frames += int(force_keyframe)
        return out


def sender_encoder(sender: Any) -> Any:
    """The encoder an ``RTCRtpSender`` created (None before its first frame). aiortc keeps it private."""
    return getattr(sender, "_RTCRtpSender__encoder", None)


def prefer_codecs(pc: Any, codec: str) -> None:
    """After ``setRemoteDescription(offer)``: put ``codec`` ("h264"/"vp8") first in every video transceiver's
    negotiated list (with its RTX), so the answer — and the browser's sender — use it when the offer had it."""
    want = f"video/{codec}".lower()
    for tr in pc.getTransceivers():
        if tr.kind != "video" or not getattr(tr, "_codecs", None):
            continue
        codecs = list(tr._codecs)
        main = [c for c in codecs if c.mimeType.lower() != "video/rtx"]
        rtx = [c for c in codecs if c.mimeType.lower() == "video/rtx"]
        main.sort(key=lambda c: c.mimeType.lower() != want)  # stable: keeps the offer's order otherwise
        ordered = []
        for c in main:
            ordered.append(c)
            ordered += [r for r in rtx if r.parameters.get("apt") == c.payloadType]
        tr._codecs = ordered
