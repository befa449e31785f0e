"""Video sinks on PyAV and pyvirtualcam: file, RTMP, virtual camera, null.

``open_sink(spec, width=, height=, fps=, audio_from=)`` returns a :class:`Sink` with ``write(Output)`` and
an idempotent ``close()``; it is a context manager.

Specs
-----
- a file path ending in ``.mp4``/``.m4v``/``.mov`` (H.264), ``.mkv`` (H.264) or ``.webm`` (VP9): libx264 in
  yuv420p (CRF 20, preset ``veryfast`` unless told) or libvpx-vp9 (realtime deadline).
- ``rtmp://`` / ``rtmps://``: FLV with H.264 (``zerolatency``, key frame every 2 s, CBR-ish bitrate) + AAC.
  The connection is made in ``open_sink`` (an unreachable server is a :class:`UserError` there, bounded by
  ``connect_timeout_s``). Frames are paced at their timestamps (like ``ffmpeg -re``), and when there is no
  input audio a silent AAC track is sent (many services refuse video-only streams).
- ``virtualcam:`` / ``virtualcam:DEVICE`` / ``virtualcam:?backend=NAME&device=DEV``: pyvirtualcam
  (v4l2loopback on Linux, OBS on Windows/macOS, or any backend registered with
  ``pyvirtualcam.register_backend``); frames are paced at ``fps``. No device/backend → UserError.
- ``null:``: discards frames, counts them and their latency (benchmarks).

Decisions
---------
- Audio (``audio_from`` = a file :class:`~realtime.sources.Source` or a path): packets are copied unchanged
  when the output container can hold the codec (AAC/MP3/Opus/AC-3/FLAC in mp4, nearly anything in mkv,
  Opus/Vorbis in webm, AAC/MP3 in flv), otherwise decoded and re-encoded (AAC; Opus for webm). Audio is
  muxed alongside the video as frames arrive, up to the time of the latest video frame, so an output closed
  early (Ctrl-C, an error) holds audio up to where the video stops, and a complete run holds all of it.
  Live sources have no re-openable audio (``Source.path is None``): their output is video-only.
- Timestamps: video pts come from ``Output.pts``/``time_base`` minus ``time_origin`` seconds (default: the
  source's ``time_origin`` — 0 for an untrimmed file, so the source timestamps are kept exactly, the seek
  position for ``start=``; the first frame's time for live inputs). The audio is shifted by the same amount,
  so they stay in sync. Non-increasing pts are bumped by one tick (counted in ``pts_fixed``); frames without
  pts get ``index / fps``.
- A frame whose size differs from the sink's is scaled to fit inside it keeping its aspect ratio, centred on
  black (``resize="fit"``, the default; ``"stretch"`` ignores the aspect ratio). Counted in ``resized``.
  H.264/VP9 in yuv420p need even sizes: an odd width/height is rounded down to even.
- Files are written under their real name, not a temporary one: ``close()`` always runs (``with`` /
  ``finally``) and finalises the container (encoder flush + trailer), so after Ctrl-C or an error the file
  is playable and holds every frame written so far. Renaming on close would lose everything if the process
  were killed before the rename. A file sink that received no frame at all removes its file on close
  (nothing half-written is left behind). The header is written in ``open_sink``, so an output path that
  cannot be written fails there, before any processing; an existing file is only replaced then.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
import weakref
from fractions import Fraction
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import av
import cv2
import numpy as np

from models.errors import UserError
from realtime.frames import Output, now_ns
from realtime.io.sources import Source, _one_line, _Pacer

log = logging.getLogger(__name__)

# container format by file extension
FILE_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm"}
# audio codecs each container can hold unchanged (decoder names); anything else is re-encoded
COPYABLE_AUDIO = {
    "mp4": {"aac", "mp3", "ac3", "eac3", "opus", "flac", "alac"},
    "mov": {"aac", "mp3", "ac3", "eac3", "alac", "pcm_s16le", "pcm_s24le"},
    "matroska": {"aac", "mp3", "ac3", "eac3", "opus", "vorbis", "flac", "alac", "dts", "pcm_s16le", "pcm_s24le"},
    "webm": {"opus", "vorbis"},
    "flv": {"aac", "mp3"},
}
REENCODE_AUDIO = {"webm": ("libopus", 48000)}  # (encoder, sample rate); the rest get AAC
DEFAULT_ENCODER_TB = Fraction(1, 90000)  # encoder time base for files: exact for 24/25/30/60 and 1000/1001
SINK_HINT = "a .mp4/.mkv/.webm/.mov file, rtmp://, virtualcam: or null:"


def fit_image(image: np.ndarray, width: int, height: int, mode: str = "fit") -> np.ndarray:
    """Scale ``image`` [h, w, 3] uint8 to [height, width, 3].

    ``fit``: keep the aspect ratio, centre on black (letterbox/pillarbox). ``stretch``: scale each axis.
    Returns the input unchanged (no copy) when it already has the size.
    """
    h, w = image.shape[:2]
    if (w, h) == (width, height):
        return image
    if mode == "stretch":
        interp = cv2.INTER_AREA if w * h > width * height else cv2.INTER_LINEAR
        return cv2.resize(image, (width, height), interpolation=interp)
    scale = min(width / w, height / h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (nw, nh), interpolation=interp)
    out = np.zeros((height, width, 3), np.uint8)
    y0, x0 = (height - nh) // 2, (width - nw) // 2
    out[y0 : y0 + nh, x0 : x0 + nw] = resized
    return out


class Sink:
    """Base class: takes :class:`Output` frames. Use :func:`open_sink`."""

    spec: str  # what the user gave
    kind: str  # "file", "rtmp", "virtualcam" or "null"
    width: int  # frame size the sink delivers (pixels)
    height: int
    fps: float  # nominal frame rate

    def __init__(self, spec: str, kind: str, width: int, height: int, fps: float, resize: str) -> None:
        if resize not in ("fit", "stretch"):
            raise UserError(f"unknown resize mode {resize!r} (expected fit or stretch)")
        if width <= 0 or height <= 0 or fps <= 0:
            raise UserError(f"bad output size/fps {width}x{height}@{fps:g}")
        self.spec, self.kind = spec, kind
        self.width, self.height, self.fps = int(width), int(height), float(fps)
        self._resize = resize
        self.frames_written = 0  # frames accepted by write()
        self.resized = 0  # frames scaled because their size differed from the sink's
        self.closed = False

    def _prepare(self, out: Output) -> np.ndarray:
        img = out.image
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"Output.image must be HxWx3 uint8 RGB, got {img.dtype} {img.shape}")
        if img.shape[:2] != (self.height, self.width):
            self.resized += 1
            img = fit_image(img, self.width, self.height, self._resize)
        return np.ascontiguousarray(img)

    def write(self, out: Output) -> None:
        """Deliver one frame (resized to the sink's size if needed)."""
        raise NotImplementedError

    def close(self) -> None:
        """Finish the output (flush, trailer, release the device). Idempotent."""
        self.closed = True

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # an exception (or Ctrl-C) is already on its way: finalise, but never mask it
            self.close()
        except Exception as e:
            log.warning("%s: error while closing after %s: %s", self.spec, exc_type.__name__, e)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r}, {self.width}x{self.height}@{self.fps:g})"


# ============================================================================================ audio ==
class _Audio:
    """Feeds the output's audio stream up to a time (seconds on the output clock)."""

    def feed(self, until_s: float) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _AudioFromFile(_Audio):
    """Audio from a file, shifted by ``-origin_s`` seconds: packets copied, or decoded and re-encoded."""

    def __init__(self, out: av.container.OutputContainer, path: str, stream_index: int | None,
                 origin_s: float, copy: bool | None, encoder: tuple[str, int]) -> None:
        self._in = av.open(path)
        streams = self._in.streams.audio
        self._ist = next((s for s in streams if s.index == stream_index), streams[0]) if streams else None
        if self._ist is None:
            raise UserError(f"no audio stream in {path}")
        name = self._ist.codec_context.name
        can_copy = name in COPYABLE_AUDIO.get(out.format.name.split(",")[0], set())
        self.copy = can_copy if copy is None else (copy and can_copy)
        self._origin = origin_s
        self._tb = Fraction(self._ist.time_base)
        if self.copy:
            self._ost = out.add_stream_from_template(self._ist)
        else:
            codec, rate = encoder
            self._ost = out.add_stream(codec, rate=rate)
            self._ost.layout = "stereo" if (self._ist.codec_context.channels or 2) >= 2 else "mono"
        self._out = out
        self._packets = self._in.demux(self._ist)
        self._pending: av.Packet | None = None
        self._done = False
        self._next_pts: int | None = None  # re-encode: sample counter at the output rate
        if origin_s > 0:
            self._in.seek(int(origin_s / self._tb), stream=self._ist, backward=True)

    def _next_packet(self) -> av.Packet | None:
        if self._pending is not None:
            p, self._pending = self._pending, None
            return p
        while not self._done:
            try:
                p = next(self._packets)
            except StopIteration:
                self._done = True
                return None
            except av.error.FFmpegError as e:  # truncated input: the audio ends here
                log.warning("audio input ended early: %s", e)
                self._done = True
                return None
            if p.size == 0 or p.pts is None:
                continue
            return p
        return None

    def feed(self, until_s: float) -> None:
        origin_ticks = round(Fraction(self._origin) / self._tb)
        while True:
            p = self._next_packet()
            if p is None:
                return
            start = float((p.pts - origin_ticks) * self._tb)
            if start >= until_s:
                self._pending = p
                return
            end = start + float((p.duration or 0) * self._tb)
            if end <= 0:
                continue  # entirely before the output's time zero
            if self.copy:
                p.pts -= origin_ticks
                if p.dts is not None:
                    p.dts -= origin_ticks
                p.stream = self._ost
                self._out.mux(p)
            else:
                self._encode(p)

    def _encode(self, p: av.Packet) -> None:
        try:
            frames = self._ist.decode(p)
        except av.error.InvalidDataError:
            return
        cc = self._ost.codec_context
        for f in frames:
            if f.pts is None:
                continue
            t = float(f.pts * f.time_base) - self._origin
            if t + f.samples / f.sample_rate <= 0:
                continue
            if self._next_pts is None:
                self._next_pts = max(0, round(t * cc.sample_rate))
            f.pts = None  # the encoder's resampler/fifo counts samples from the first pts
            for q in self._resample(f):
                q.pts = self._next_pts
                q.time_base = Fraction(1, cc.sample_rate)
                self._next_pts += q.samples
                self._out.mux(self._ost.encode(q))

    def _resample(self, f: av.AudioFrame) -> list[av.AudioFrame]:
        cc = self._ost.codec_context
        if not hasattr(self, "_resampler"):
            self._resampler = av.AudioResampler(format=cc.format, layout=cc.layout, rate=cc.sample_rate,
                                                frame_size=cc.frame_size or None)
        return list(self._resampler.resample(f))

    def close(self) -> None:
        if not self.copy and self._next_pts is not None:
            try:
                if hasattr(self, "_resampler"):
                    for q in self._resampler.resample(None):
                        q.pts, q.time_base = self._next_pts, Fraction(1, self._ost.codec_context.sample_rate)
                        self._next_pts += q.samples
                        self._out.mux(self._ost.encode(q))
                self._out.mux(self._ost.encode(None))
            except (av.error.FFmpegError, ValueError) as e:
                log.warning("audio encoder flush failed: %s", e)
        self._in.close()


class _Silence(_Audio):
    """A silent AAC track (RTMP services want audio)."""

    def __init__(self, out: av.container.OutputContainer, rate: int = 48000) -> None:
        self._ost = out.add_stream("aac", rate=rate)
        self._ost.layout = "stereo"
        self._out, self._rate, self._samples = out, rate, 0

    def feed(self, until_s: float) -> None:
        cc = self._ost.codec_context
        n = cc.frame_size or 1024
        while self._samples / self._rate < until_s:
            f = av.AudioFrame(format=cc.format.name, layout="stereo", samples=n)
            for plane in f.planes:
                plane.update(bytes(plane.buffer_size))
            f.sample_rate, f.pts, f.time_base = self._rate, self._samples, Fraction(1, self._rate)
            self._samples += n
            self._out.mux(self._ost.encode(f))

    def close(self) -> None:
        try:
            self._out.mux(self._ost.encode(None))
        except (av.error.FFmpegError, ValueError) as e:
            log.warning("audio encoder flush failed: %s", e)


# ====================================================================================== PyAV sinks ==
class AVSink(Sink):
    """Encodes to a file or an RTMP server with PyAV. Use :func:`open_sink`."""

    def __init__(
        self,
        spec: str,
        *,
        kind: str,
        target: str,
        fmt: str,
        width: int,
        height: int,
        fps: float,
        audio_path: str | None,
        audio_stream: int | None,
        time_origin: float | None,
        resize: str,
        video_codec: str | None,
        crf: int | None,
        preset: str | None,
        bitrate: int | None,
        copy_audio: bool | None,
        silent_audio: bool,
        pace: bool,
        connect_timeout_s: float,
        time_base: Fraction | None,
    ) -> None:
        super().__init__(spec, kind, width, height, fps, resize)
        self.width, self.height = max(2, self.width // 2 * 2), max(2, self.height // 2 * 2)  # yuv420p: even
        self._target, self._time_origin = target, time_origin
        self._pacer = _Pacer(reanchor_after_s=1.0) if pace else None
        self._last_pts = -1
        self._last_t = 0.0
        self.pts_fixed = 0  # frames whose pts had to be bumped to keep the output strictly increasing
        self.audio_mode = "none"  # "copy", "encode", "silent" or "none"
        self._audio: _Audio | None = None
        frame_rate = Fraction(self.fps).limit_denominator(1001000)
        self._tb = time_base or (Fraction(1, 1000) if fmt == "flv" else DEFAULT_ENCODER_TB)

        self._existed = kind == "file" and os.path.exists(target)
        options = {"flvflags": "no_duration_filesize"} if fmt == "flv" else {}
        timeout = (connect_timeout_s, connect_timeout_s) if kind == "rtmp" else None
        try:
            self._out = av.open(target, "w", format=fmt, options=options, timeout=timeout)
        except (av.error.FFmpegError, OSError) as e:
            raise self._open_error(e) from e
        # A sink dropped (or still open at exit) before its first frame: a Ctrl-C between open_sink() returning and
        # the caller's `with` taking it, or inside this constructor. Its file would be a bare header: remove it.
        self._unstarted = weakref.finalize(self, _discard_unstarted, self._out, target if kind == "file" else None)
        try:
            codec = video_codec or ("libvpx-vp9" if fmt == "webm" else "libx264")
            vs = self._out.add_stream(codec, rate=frame_rate)
            vs.width, vs.height, vs.pix_fmt = self.width, self.height, "yuv420p"
            cc = vs.codec_context
            cc.time_base = self._tb
            vs.time_base = self._tb
            if codec == "libx264":
                opts = {"preset": preset or "veryfast"}
                if kind == "rtmp":
                    rate = bitrate or 2_500_000
                    opts.update(tune="zerolatency", g=str(max(1, round(2 * self.fps))), bf="0")
                    cc.bit_rate = rate
                    opts.update(maxrate=str(rate), bufsize=str(2 * rate))
                elif bitrate:
                    cc.bit_rate = bitrate
                else:
                    opts["crf"] = str(20 if crf is None else crf)
                vs.options = opts
            elif codec == "libvpx-vp9":
                opts = {"deadline": "realtime", "cpu-used": "8", "row-mt": "1"}
                if bitrate:
                    cc.bit_rate = bitrate
                else:
                    opts["crf"] = str(32 if crf is None else crf)
                    cc.bit_rate = 0
                vs.options = opts
            self._vs = vs
            fmt_name = self._out.format.name.split(",")[0]
            if audio_path is not None:
                encoder = REENCODE_AUDIO.get(fmt_name, ("aac", 48000))
                origin = time_origin if time_origin is not None else 0.0
                try:
                    audio = _AudioFromFile(self._out, audio_path, audio_stream, origin, copy_audio, encoder)
                    self._audio, self.audio_mode = audio, ("copy" if audio.copy else "encode")
                except (UserError, av.error.FFmpegError, OSError) as e:  # keep going without sound
                    log.warning("%s: cannot take audio from %s (%s); writing video only",
                                spec, audio_path, _one_line(e))
            if self._audio is None and silent_audio:
                self._audio = _Silence(self._out)
                self.audio_mode = "silent"
            self._out.start_encoding()  # opens the file / connects, writes the header: fail here, not later
        except UserError:
            self._abort()
            raise
        except (av.error.FFmpegError, OSError) as e:
            self._abort()
            raise self._open_error(e) from e

    def _open_error(self, e: BaseException) -> UserError:
        if self.kind == "rtmp":
            return UserError(f"cannot connect to RTMP server {self.spec}: {_one_line(e)}")
        return UserError(f"cannot write output file {self.spec}: {_one_line(e)}")

    def _abort(self) -> None:
        """Undo a failed open: close without trailer and remove a file we created."""
        self._unstarted.detach()
        with contextlib.suppress(Exception):
            if self._audio is not None:
                self._audio.close()
        with contextlib.suppress(Exception):
            self._out.close()
        self.closed = True
        if self.kind == "file" and not self._existed and os.path.exists(self._target):
            os.unlink(self._target)

    def write(self, out: Output) -> None:
        if self.closed:
            raise RuntimeError(f"sink {self.spec!r} is closed")
        img = self._prepare(out)
        if out.pts is not None and out.time_base is not None:
            t = float(out.pts * out.time_base)
        else:
            t = out.index / self.fps
        if self._time_origin is None:
            self._time_origin = t  # live input: the output starts at its first frame
        t -= self._time_origin
        pts = round(Fraction(t) / self._tb)
        if pts <= self._last_pts:
            if self.frames_written:
                self.pts_fixed += 1
            pts = self._last_pts + 1
        self._last_pts = pts
        self._last_t = float(pts * self._tb)
        if self._pacer is not None:
            self._pacer.wait(self._last_t)
        vf = av.VideoFrame.from_ndarray(img, format="rgb24")
        vf.pts, vf.time_base = pts, self._tb
        try:
            packets = self._vs.encode(vf)
            if self._audio is not None:
                self._audio.feed(self._last_t + 1.0 / self.fps)
            self._out.mux(packets)
        except (av.error.FFmpegError, OSError) as e:
            what = "RTMP connection lost" if self.kind == "rtmp" else "cannot write output"
            raise UserError(f"{what} ({self.spec}): {_one_line(e)}") from e
        self.frames_written += 1
        if self.frames_written == 1:
            self._unstarted.detach()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._unstarted.detach()
        error: BaseException | None = None
        try:
            if self.frames_written:
                self._out.mux(self._vs.encode(None))
                if self._audio is not None:
                    self._audio.feed(self._last_t + 1.0 / self.fps)
            if self._audio is not None:
                self._audio.close()
        except (av.error.FFmpegError, OSError, ValueError) as e:
            error = e
        finally:
            try:
                self._out.close()
            except (av.error.FFmpegError, OSError) as e:
                error = error or e
            if self.kind == "file" and self.frames_written == 0 and os.path.exists(self._target):
                os.unlink(self._target)  # a header without frames is not a video: leave nothing behind
        if error is not None:
            raise UserError(f"could not finish {self.spec}: {_one_line(error)}") from error


def _discard_unstarted(container: av.container.OutputContainer, path: str | None) -> None:
    """Close the container of a sink that was never closed and got no frame, and remove its file (a header)."""
    with contextlib.suppress(Exception):
        container.close()
    if path is not None:
        with contextlib.suppress(OSError):
            os.unlink(path)


# ===================================================================================== virtual cam ==
class VirtualCameraSink(Sink):
    """Sends frames to a pyvirtualcam device, paced at ``fps``. Use :func:`open_sink` with ``virtualcam:``."""

    def __init__(self, spec: str, *, width: int, height: int, fps: float, backend: str | None,
                 device: str | None, resize: str, pace: bool, **backend_kw: Any) -> None:
        super().__init__(spec, "virtualcam", width, height, fps, resize)
        try:
            import pyvirtualcam  # noqa: PLC0415 - optional at import: only this sink needs it
            from pyvirtualcam.camera import BACKENDS  # noqa: PLC0415
        except ImportError as e:  # pragma: no cover - it is a dependency
            raise UserError(f"virtual camera needs pyvirtualcam (pip install pyvirtualcam): {e}") from e
        if backend is not None and backend not in BACKENDS:
            known = ", ".join(sorted(BACKENDS)) or "none"
            raise UserError(f"unknown virtual-camera backend {backend!r} (available here: {known})")
        if not BACKENDS:
            raise UserError("no virtual-camera backend on this system (pyvirtualcam supports Linux, Windows, macOS)")
        try:
            self._cam = pyvirtualcam.Camera(self.width, self.height, self.fps, fmt=pyvirtualcam.PixelFormat.RGB,
                                            device=device, backend=backend, **backend_kw)
        except Exception as e:  # backends raise RuntimeError/ValueError/OSError
            reason = "; ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__
            raise UserError(
                f"no virtual camera available ({reason}). Linux: sudo modprobe v4l2loopback devices=1 "
                "exclusive_caps=1 card_label=stylestream; Windows/macOS: install OBS and start its virtual "
                "camera once"
            ) from e
        self.backend, self.device = self._cam.backend, self._cam.device
        self._period = 1.0 / self.fps
        self._due: float | None = None
        self._pace = pace

    def write(self, out: Output) -> None:
        if self.closed:
            raise RuntimeError(f"sink {self.spec!r} is closed")
        img = self._prepare(out)
        if self._pace and self._due is not None:
            now = time.perf_counter()
            if now < self._due:
                time.sleep(self._due - now)
        self._cam.send(img)
        sent = time.perf_counter()
        if self._due is None or sent > self._due + self._period / 2:
            self._due = sent + self._period  # late (or first): restart the cadence, no catch-up burst
        else:
            self._due += self._period
        self.frames_written += 1

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._cam.close()


# ============================================================================================ null ==
class NullSink(Sink):
    """Discards frames; counts them and measures capture→sink latency. For benchmarks."""

    def __init__(self, spec: str, *, width: int, height: int, fps: float) -> None:
        super().__init__(spec, "null", width, height, fps, "fit")
        self.latencies_ms: list[float] = []  # capture→write latency of each frame (ms)

    def write(self, out: Output) -> None:
        if self.closed:
            raise RuntimeError(f"sink {self.spec!r} is closed")
        self.latencies_ms.append((now_ns() - out.capture_ns) / 1e6)
        self.frames_written += 1


# ========================================================================================= opening ==
def _check_output_path(path: Path, overwrite: bool, inputs: list[str]) -> None:
    if path.is_dir():
        raise UserError(f"output is a folder, not a file: {path}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"output folder does not exist: {parent}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write output file (folder is not writable): {path}")
    if path.exists():
        if not overwrite:
            raise UserError(f"output file exists (use --overwrite to replace it): {path}")
        if not os.access(path, os.W_OK):
            raise UserError(f"cannot write output file (permission denied): {path}")
        for src in inputs:
            try:
                if os.path.samefile(src, path):
                    raise UserError(f"output would overwrite the input: {path}")
            except OSError:
                pass


def open_sink(
    spec: str,
    *,
    width: int,
    height: int,
    fps: float,
    audio_from: Source | str | os.PathLike[str] | None = None,
    time_origin: float | None | str = "auto",
    resize: str = "fit",
    overwrite: bool = True,
    video_codec: str | None = None,
    crf: int | None = None,
    preset: str | None = None,
    bitrate: int | None = None,
    copy_audio: bool | None = None,
    silent_audio: bool | None = None,
    pace: bool | None = None,
    backend: str | None = None,
    device: str | None = None,
    connect_timeout_s: float = 5.0,
    time_base: Fraction | None = None,
) -> Sink:
    """Open an output (see the module docstring for specs and decisions).

    Args:
        spec: output file path, ``rtmp://…``, ``virtualcam:[DEVICE][?backend=..&device=..]`` or ``null:``.
        width, height, fps: the frames the sink delivers; other sizes are resized (``resize``).
        audio_from: a file Source (its ``path``/``audio``/``time_origin`` are used) or a media path whose
            first audio stream is copied/re-encoded. Live sources carry no audio (video-only output).
        time_origin: seconds subtracted from every timestamp; "auto": the Source's ``time_origin``
            (0.0 for a path); None: the first frame's time.
        resize: "fit" (keep aspect, black bars) or "stretch".
        overwrite: replace an existing output file (False: UserError if it exists).
        video_codec, crf, preset, bitrate: encoder overrides (e.g. "h264_nvenc", 18, "fast", 4_000_000).
        copy_audio: None: copy when the container allows, else re-encode; False: always re-encode.
        silent_audio: add a silent AAC track when there is no audio (default: RTMP only).
        pace: hold frames back to real time (default: RTMP and virtual camera yes, files no).
        backend, device: virtual-camera backend name (pyvirtualcam) and device.
        connect_timeout_s: RTMP connection/write timeout.
        time_base: encoder time base (default 1/90000; 1/1000 for RTMP).

    Raises:
        UserError: one line, before any frame is processed, when the output cannot be opened.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(f"no output given (expected {SINK_HINT})")
    spec = spec.strip()
    low = spec.lower()
    if low in ("null", "null:") or low.startswith("null:"):
        return NullSink(spec, width=width, height=height, fps=fps)
    if low.startswith("virtualcam:") or low == "virtualcam":
        rest = spec.partition(":")[2]
        dev, _, query = rest.partition("?")
        q = dict(parse_qsl(query))
        return VirtualCameraSink(
            spec, width=width, height=height, fps=fps, backend=backend or q.get("backend"),
            device=device or q.get("device") or dev or None, resize=resize, pace=True if pace is None else pace,
        )

    audio_path: str | None = None
    audio_stream: int | None = None
    origin: float | None
    inputs: list[str] = []
    if isinstance(audio_from, Source):
        if audio_from.path is not None:
            inputs.append(audio_from.path)
        if audio_from.audio is not None and audio_from.path is not None:
            audio_path, audio_stream = audio_from.path, audio_from.audio.stream_index
        elif audio_from.audio is not None:
            log.warning("%s: audio of a live source is not recorded (video only)", audio_from.spec)
        origin = audio_from.time_origin if time_origin == "auto" else time_origin  # type: ignore[assignment]
    else:
        if audio_from is not None:
            audio_path = os.fspath(audio_from)
            inputs.append(audio_path)
            if not os.path.exists(audio_path):
                raise UserError(f"audio input not found: {audio_path}")
        origin = 0.0 if time_origin == "auto" else time_origin  # type: ignore[assignment]
    common: dict[str, Any] = dict(
        width=width, height=height, fps=fps, audio_path=audio_path, audio_stream=audio_stream, resize=resize,
        video_codec=video_codec, crf=crf, preset=preset, bitrate=bitrate, copy_audio=copy_audio,
        connect_timeout_s=connect_timeout_s, time_base=time_base,
    )

    m = re.match(r"^([A-Za-z][A-Za-z0-9+.\-]*)://", spec)
    scheme = m.group(1).lower() if m else None
    if scheme in ("rtmp", "rtmps"):
        if not urlsplit(spec).hostname:
            raise UserError(f"bad RTMP URL (no host): {spec}")
        return AVSink(spec, kind="rtmp", target=spec, fmt="flv", time_origin=origin,
                      silent_audio=True if silent_audio is None else silent_audio,
                      pace=True if pace is None else pace, **common)
    if scheme == "file":
        spec_path = urlsplit(spec).path
    elif scheme is not None:
        raise UserError(f"unsupported output '{scheme}://' (expected {SINK_HINT})")
    else:
        spec_path = spec
    path = Path(spec_path)
    if path.is_dir():
        raise UserError(f"output is a folder, not a file: {path}")
    fmt = FILE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UserError(f"cannot tell the output format from {path.name!r} (expected {SINK_HINT})")
    _check_output_path(path, overwrite, inputs)
    return AVSink(spec, kind="file", target=str(path), fmt=fmt, time_origin=origin,
                  silent_audio=bool(silent_audio), pace=bool(pace), **common)
