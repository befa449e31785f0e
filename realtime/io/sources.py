"""Video sources on PyAV: files, V4L2 cameras, network streams and the synthetic ``demo:`` clip.

``open_source(spec)`` returns a :class:`Source`: an iterable of :class:`~realtime.frames.Frame`
(image [H, W, 3] uint8 RGB24, converted once here) that is also a context manager.

Specs
-----
- a path to any file FFmpeg can read (``clip.mp4``, ``file:///abs/clip.mkv``); never reconnects.
  ``start=`` / ``duration=`` (seconds) seek and trim; ``realtime=True`` releases frames at their pts pace
  (a stand-in for a camera in overload tests and benchmarks; it also makes the source count as live).
- ``/dev/videoN``: a V4L2 camera (PyAV ``format="v4l2"``); ``size=(w, h)``, ``fps``, ``input_format``
  (e.g. ``"mjpeg"``) as keywords or in the spec: ``/dev/video0?size=1280x720&fps=30&input_format=mjpeg``.
- ``rtmp://``, ``rtmps://``, ``rtsp://``, ``rtsps://``, ``srt://``, ``udp://``, ``http(s)://``: network streams.
  Live ones reconnect with exponential back-off (``reconnect_tries`` consecutive failed tries, delays
  ``backoff_s · 2^k`` capped at ``max_backoff_s``); the first connection is retried the same way and a
  :class:`UserError` is raised when every try failed. An ``http(s)`` URL is live unless FFmpeg knows its
  duration (a plain file on a web server); ``live=`` overrides. Timestamps stay monotonic across
  reconnects (later connections are shifted to continue one frame after the last frame).
- ``demo:`` / ``demo:NAME?seconds=5&fps=30&size=640x480&seed=0&realtime=1``: a synthetic face clip from one of
  :data:`DEMO_GENERATORS`: ``portrait`` (the default; the synthetic talking head of ``realtime/io/synthetic.py``:
  expressions, head pose, lighting, camera noise; it finds the portrait's landmarks with MediaPipe on first use)
  or ``astronaut`` (a cheap similarity-motion clip, :func:`astronaut_clip`); more with
  :func:`register_demo_generator`. ``seconds=inf`` runs forever. Deterministic by seed.

Decisions (documented so the pipeline and the CLI can rely on them)
-------------------------------------------------------------------
- Every problem a user can cause raises :class:`models.errors.UserError` with a one-line message, at
  ``open_source`` time wherever possible: missing/empty/unreadable file, garbage bytes, an mp4 whose index
  (moov) is missing, no video stream, unsupported scheme, unreachable server, missing camera.
- A file that is truncated *after* a readable header (an mp4 with its index first, a cut MPEG-TS)
  decodes every frame that is decodable, then ends cleanly: no exception, ``source.truncated`` is True,
  ``source.end_reason`` says why and a warning is logged. A partial recording is still worth filtering.
- Undecodable packets in the middle of a stream are skipped and counted (``decode_errors``), as FFmpeg does.
- Frames come out upright: a display matrix (a phone's portrait recording is stored sideways with "rotate -90";
  front cameras may mirror) is applied when decoding, as players and FFmpeg's autorotate do, so the face
  tracker sees an upright face and sinks write the upright picture (with no matrix). ``width``/``height`` are
  the upright size (files and recordings behind a URL are peeked at open; a live stream's size follows its
  first frame); ``rotation`` / ``mirrored`` say what was applied. Angles that are
  not a multiple of 90° are logged once and left as stored.
- A resolution change mid-stream is not an error: frames simply change size; ``width``/``height`` follow
  the most recent frame and ``size_changes`` counts the changes. Sinks resize (see ``realtime.sinks``).
- ``Frame.index`` counts the frames this source yielded (0, 1, 2, … after any ``start`` seek). ``Frame.pts``
  is the stream's own timestamp in ``Frame.time_base`` (unchanged for files, so the audio a sink copies
  from the same file stays in sync); synthetic frames get ``pts = index`` with ``time_base = 1/fps``.
- A source is iterated once. ``close()`` may be called from another thread (Ctrl-C) and returns within
  0.5 s: iteration stops at the next frame and the container is closed by whichever side holds it last.
  A reader blocked inside FFmpeg (a stalled network read, a reconnection) notices within
  ``read_timeout_s`` / ``open_timeout_s``; join the capture thread with a timeout of that order.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import av
import cv2
import numpy as np
from skimage import data as skdata

from models.errors import UserError
from realtime.frames import Frame, now_ns
from realtime.io.synthetic import portrait_demo

log = logging.getLogger(__name__)

LIVE_SCHEMES = frozenset({"rtmp", "rtmps", "rtsp", "rtsps", "srt", "udp"})  # always live
HTTP_SCHEMES = frozenset({"http", "https"})  # live unless the duration is known
SUPPORTED_HINT = "a video file, /dev/videoN, rtmp://, rtsp://, srt://, udp://, http(s):// or demo:"
DEFAULT_FPS = 30.0  # used when a stream does not say its rate

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
_V4L2_RE = re.compile(r"^/dev/video\d+$")


@dataclass(frozen=True)
class AudioInfo:
    """The first audio stream of a source (what a sink needs to copy or re-encode it)."""

    codec: str  # decoder name, e.g. "aac", "opus"
    sample_rate: int  # Hz
    channels: int
    layout: str  # e.g. "stereo"
    duration_s: float | None  # length of the audio stream when known
    stream_index: int  # index of the stream inside the container


class Source:
    """Base class: an iterable of :class:`Frame` with stream properties. Use :func:`open_source`."""

    spec: str  # what the user gave
    kind: str  # "file", "v4l2", "url" or "demo"
    fps: float  # nominal frame rate (frames per second)
    width: int  # pixels; follows the most recent frame
    height: int  # pixels; follows the most recent frame
    is_live: bool  # True: frames arrive in real time and the pipeline may drop (DESIGN §2)
    realtime: bool  # True: frames are released at their timestamp pace
    audio: AudioInfo | None = None  # first audio stream, None when there is none
    path: str | None = None  # local file or URL a sink may re-open to copy the audio (None: not possible)
    start_s: float = 0.0  # seek position applied (files)
    duration_s: float | None = None  # length that will be read, seconds, when known
    frame_count: int | None = None  # expected number of frames when known (progress bars)
    time_base: Fraction | None = None  # unit of Frame.pts (the video stream's; 1/fps for synthetic frames)
    rotation: int = 0  # degrees counter-clockwise the display matrix turns the stored picture (applied)
    mirrored: bool = False  # the display matrix mirrors the picture left-right after the rotation (applied)

    def __init__(self) -> None:
        self.frames_read = 0  # frames yielded so far
        self.size_changes = 0  # times the frame size changed mid-stream
        self.decode_errors = 0  # packets that failed to decode and were skipped
        self.reconnects = 0  # successful reconnections of a live stream
        self.truncated = False  # the input ended early (cut file): frames up to the cut were yielded
        self.end_reason = ""  # why iteration ended ("end of file", "closed", "truncated: …", …)
        self._stop = threading.Event()
        self._iterated = False

    # -- public API ---------------------------------------------------------------------------------------
    @property
    def audio_stream_info(self) -> AudioInfo | None:
        """Alias of :attr:`audio`."""
        return self.audio

    @property
    def time_origin(self) -> float | None:
        """Seconds a sink subtracts from every timestamp so the output starts near 0.

        Files (also when paced with ``realtime``) and demo clips: the seek position (0.0 untrimmed — source
        timestamps are kept as they are, and audio copied from the same file shifts by the same amount).
        Cameras and live network streams: None, meaning "the first frame's time".
        """
        return None if self.is_live and self.kind in ("url", "v4l2") else self.start_s

    def __iter__(self) -> Iterator[Frame]:
        if self._iterated:
            raise RuntimeError(f"source {self.spec!r} can be iterated only once")
        self._iterated = True
        return self._frames()

    def close(self) -> None:
        """Stop iteration and release the input. Idempotent; safe from another thread."""
        self._stop.set()
        self._release()

    @property
    def closed(self) -> bool:
        return self._stop.is_set()

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.spec!r}, {self.width}x{self.height}@{self.fps:g}, "
            f"live={self.is_live}, audio={self.audio.codec if self.audio else None})"
        )

    # -- for subclasses -----------------------------------------------------------------------------------
    def _frames(self) -> Iterator[Frame]:
        raise NotImplementedError

    def _release(self) -> None:
        pass

    def _note_size(self, w: int, h: int) -> None:
        if (w, h) != (self.width, self.height):
            if self.frames_read > 0:
                self.size_changes += 1
                log.info("%s: frame size changed to %dx%d", self.spec, w, h)
            self.width, self.height = w, h


class _Pacer:
    """Holds frames back to their timestamp pace; never delays a frame that is already late (no catch-up bursts).

    ``stop``: an event whose setting interrupts the sleep (sources: close() from another thread).
    ``reanchor_after_s``: when a frame is this far behind schedule, restart the schedule from it so later frames
    are not rushed (sinks behind a slow pipeline); None: keep the original schedule (sources)."""

    def __init__(self, stop: threading.Event | None = None, reanchor_after_s: float | None = None) -> None:
        self._stop = stop
        self._reanchor = reanchor_after_s
        self._wall0: float | None = None
        self._t0 = 0.0

    def wait(self, t: float) -> None:
        now = time.perf_counter()
        if self._wall0 is None:
            self._wall0, self._t0 = now, t
            return
        delay = self._wall0 + (t - self._t0) - now
        if delay > 0:
            if self._stop is not None:
                self._stop.wait(delay)
            else:
                time.sleep(delay)
        elif self._reanchor is not None and delay < -self._reanchor:
            self._wall0, self._t0 = now, t


# ================================================================================================ PyAV ==
@dataclass(frozen=True)
class Orientation:
    """What a frame's display matrix asks for, in PyAV's terms (``VideoStream.set_display_rotation``): turn the
    stored picture ``rotation`` degrees counter-clockwise (a multiple of 90), then mirror it left-right when
    ``mirrored``. ``Orientation()`` leaves the picture as stored."""

    rotation: int = 0
    mirrored: bool = False

    def apply(self, image: np.ndarray) -> np.ndarray:
        """[H, W, C] as stored → upright (a view; the caller copies)."""
        out = np.rot90(image, self.rotation // 90) if self.rotation else image
        return out[:, ::-1] if self.mirrored else out

    def size(self, width: int, height: int) -> tuple[int, int]:
        """The upright (width, height) of a stored picture."""
        return (height, width) if self.rotation % 180 else (width, height)


UPRIGHT = Orientation()
_warned_angles: set[float] = set()


@functools.lru_cache(maxsize=64)
def orientation_of_matrix(matrix: bytes) -> Orientation:
    """FFmpeg's ``AV_FRAME_DATA_DISPLAYMATRIX`` (nine int32, 16.16 fixed point) → :class:`Orientation`; the same
    choice as FFmpeg's autorotate (hflip negates the first column; the angle is ``-atan2(b, a)``)."""
    m = struct.unpack("<9i", matrix[:36])
    a, b, c, d = (v / 65536.0 for v in (m[0], m[1], m[3], m[4]))
    mirrored = a * d - b * c < 0
    if mirrored:
        a, c = -a, -c
    angle = -math.degrees(math.atan2(b, a))
    quarter = round(angle / 90.0)
    if abs(angle - quarter * 90.0) > 1.0:
        if round(angle) not in _warned_angles:
            _warned_angles.add(round(angle))
            log.warning("the video's display matrix rotates by %.1f°, not a multiple of 90°: frames are used as stored",
                        angle)
        return UPRIGHT
    rotation = (quarter % 4) * 90
    return Orientation(rotation - 360 if rotation > 180 else rotation, mirrored)


def orientation_of(frame: av.VideoFrame) -> Orientation:
    """The :class:`Orientation` a decoded frame's side data asks for (UPRIGHT without a display matrix)."""
    sd = frame.side_data.get("DISPLAYMATRIX")
    return orientation_of_matrix(bytes(sd)) if sd is not None else UPRIGHT


def _fps_of(stream: av.VideoStream) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate and 0 < float(rate) < 1000:
            return float(rate)
    return DEFAULT_FPS


def _audio_info(container: av.container.InputContainer) -> AudioInfo | None:
    if not container.streams.audio:
        return None
    a = container.streams.audio[0]
    cc = a.codec_context
    dur = float(a.duration * a.time_base) if a.duration and a.time_base else None
    if dur is None and container.duration:
        dur = container.duration / av.time_base
    layout = cc.layout.name if cc.layout else ""
    return AudioInfo(cc.name, int(cc.sample_rate or 0), int(cc.channels or 0), layout, dur, a.index)


def _one_line(exc: BaseException) -> str:
    """FFmpeg/OS error → short one-line reason without the repeated file name."""
    if isinstance(exc, av.error.FFmpegError):
        msg = exc.strerror or str(exc)
    elif isinstance(exc, OSError) and exc.strerror:
        msg = exc.strerror
    else:
        msg = str(exc) or type(exc).__name__
    return " ".join(msg.split())


class AVSource(Source):
    """A PyAV input: file, V4L2 device or network URL. Use :func:`open_source`."""

    def __init__(
        self,
        spec: str,
        target: str,
        *,
        kind: str,
        live: bool | None,
        realtime: bool | None,
        start: float | None,
        duration: float | None,
        fmt: str | None = None,
        options: dict[str, str] | None = None,
        open_timeout_s: float = 10.0,
        read_timeout_s: float = 10.0,
        reconnect_tries: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        threads: bool = True,
    ) -> None:
        super().__init__()
        self.spec, self.kind = spec, kind
        self._target, self._fmt, self._options = target, fmt, dict(options or {})
        self._timeout = (open_timeout_s, read_timeout_s)
        self._tries = max(1, int(reconnect_tries))
        self._backoff, self._max_backoff = backoff_s, max_backoff_s
        self._threads = threads
        self._lock = threading.Lock()  # guards self._container against close() from another thread
        self._container: av.container.InputContainer | None = None

        if kind == "file":
            self._check_file(target)
        container = self._connect(first=True)
        self._container = container
        vs = container.streams.video[0]
        cc = vs.codec_context
        self.fps = _fps_of(vs)
        self.time_base = Fraction(vs.time_base) if vs.time_base else None
        self.width, self.height = int(cc.width or 0), int(cc.height or 0)
        self.audio = _audio_info(container)
        known_duration = container.duration is not None and container.duration > 0
        if live is None:
            live = kind in ("v4l2",) or (kind == "url" and not known_duration)
        if kind == "file" or (kind == "url" and not live and known_duration):
            # upright size before the first frame (sinks open with it); a recording behind a URL is peeked too
            first = self._peek_orientation()
            self.width, self.height = first.size(self.width, self.height)
            self.rotation, self.mirrored = first.rotation, first.mirrored
        self.is_live = bool(live) or bool(realtime)
        self.realtime = bool(realtime) if realtime is not None else False
        self._reconnect = self.is_live and kind != "file" and not realtime
        self.path = target if kind in ("file", "url") and not live else None

        total = container.duration / av.time_base if known_duration else None
        self.start_s = float(start or 0.0)
        if total is not None:
            self.duration_s = max(0.0, total - self.start_s)
            if duration is not None:
                self.duration_s = min(self.duration_s, float(duration))
        else:
            self.duration_s = float(duration) if duration is not None else None
        self._end_s = self.start_s + float(duration) if duration is not None else None
        # where the index says the video ends (truncation check); None when unknown
        self._video_end_s: float | None = None
        if vs.duration and vs.time_base and kind == "file":
            self._video_end_s = float((vs.start_time or 0) * vs.time_base + vs.duration * vs.time_base)
        if self.duration_s is not None:
            self.frame_count = int(round(self.duration_s * self.fps))
        if vs.frames and start is None and duration is None:
            self.frame_count = int(vs.frames)
        if start:
            if self.is_live and kind != "file":
                raise UserError(f"--start cannot seek in a live stream: {spec}")
            if total is not None and self.start_s >= total:
                raise UserError(f"start {self.start_s:g}s is past the end of {spec} ({total:.2f}s long)")
            # seek to the key frame at or before start; frames before start are decoded and dropped
            container.seek(int(self.start_s / vs.time_base), stream=vs, backward=True)

    # -- opening ------------------------------------------------------------------------------------------
    @staticmethod
    def _check_file(path: str) -> None:
        p = Path(path)
        if not p.exists():
            raise UserError(f"input file not found: {path}")
        if p.is_dir():
            raise UserError(f"input is a folder, not a video file: {path}")
        if not os.access(p, os.R_OK):
            raise UserError(f"cannot read input file (permission denied): {path}")
        if p.stat().st_size == 0:
            raise UserError(f"input file is empty (0 bytes): {path}")

    def _open_once(self) -> av.container.InputContainer:
        timeout = None if self.kind == "file" else self._timeout
        container = av.open(self._target, "r", format=self._fmt, options=self._options, timeout=timeout)
        try:
            if not container.streams.video:
                found = ", ".join(f"{s.type} {s.codec_context.name}" for s in container.streams) or "nothing"
                raise UserError(f"no video stream in {self.spec} (found: {found})")
            vs = container.streams.video[0]
            if self._threads:
                vs.thread_type = "AUTO" if self.kind == "file" else "SLICE"
        except BaseException:
            container.close()
            raise
        return container

    def _peek_orientation(self) -> Orientation:
        """The display matrix of a file's (or a recording URL's) first frame, read through a second, short-lived
        container (PyAV has no getter for the stream's own matrix)."""
        try:
            with av.open(self._target, "r", format=self._fmt, options=self._options) as c:
                for vf in c.decode(video=0):
                    return orientation_of(vf)
        except (av.error.FFmpegError, OSError, StopIteration):  # undecodable start: the reader will say so
            pass
        return UPRIGHT

    def _file_error(self, exc: BaseException) -> UserError:
        path = self._target
        if isinstance(exc, av.error.InvalidDataError | av.error.DemuxerNotFoundError):
            with open(path, "rb") as f:
                head = f.read(12)
            if head[4:8] == b"ftyp":  # an ISO-BMFF file (mp4/mov/m4a) without a readable index
                return UserError(
                    f"{path} is a truncated or unfinished mp4/mov (its index 'moov' is missing; "
                    "was the recording interrupted?)"
                )
            return UserError(f"not a video file FFmpeg can read (unknown format or corrupt data): {path}")
        if isinstance(exc, PermissionError):
            return UserError(f"cannot read input file (permission denied): {path}")
        return UserError(f"cannot open {path}: {_one_line(exc)}")

    def _connect(self, *, first: bool) -> av.container.InputContainer:
        """Open the input. Files: once. Live inputs: up to ``reconnect_tries`` tries with back-off."""
        if self.kind == "file":
            try:
                return self._open_once()
            except UserError:
                raise
            except (av.error.FFmpegError, OSError) as e:
                raise self._file_error(e) from e
        if self.kind == "v4l2" and first:
            try:
                return self._open_once()
            except UserError:
                raise
            except (av.error.FFmpegError, OSError) as e:
                raise UserError(f"cannot open camera {self._target}: {_one_line(e)}") from e
        last: BaseException | None = None
        for attempt in range(self._tries):
            if self._stop.is_set():
                break
            if attempt:
                delay = min(self._max_backoff, self._backoff * 2 ** (attempt - 1))
                log.warning("%s: retrying in %.1fs (%d/%d): %s", self.spec, delay, attempt, self._tries - 1,
                            _one_line(last) if last else "")
                if self._stop.wait(delay):
                    break
            try:
                return self._open_once()
            except UserError:
                raise
            except (av.error.FFmpegError, OSError) as e:
                last = e
        reason = _one_line(last) if last else "closed"
        tries = f"{self._tries} tr{'y' if self._tries == 1 else 'ies'}"
        raise UserError(f"cannot connect to {self.spec}: {reason} (gave up after {tries})")

    # -- reading ------------------------------------------------------------------------------------------
    def _release(self, wait_s: float = -1) -> None:
        # A reader blocked in a network read holds the lock (bounded by read_timeout_s); close() from another
        # thread waits briefly and otherwise leaves the container to the reader, which sees the stop flag.
        if not self._lock.acquire(timeout=wait_s):
            return
        try:
            if self._container is not None:
                self._container.close()
                self._container = None
        finally:
            self._lock.release()

    def close(self) -> None:
        self._stop.set()
        self._release(wait_s=0.5)

    def _frames(self) -> Iterator[Frame]:
        pacer = _Pacer(self._stop) if self.realtime else None
        tb0: Fraction | None = None  # time base of the frames yielded
        offset = Fraction(0)  # seconds added to timestamps of the current connection (live reconnects)
        last_t: Fraction | None = None
        frame_dt = Fraction(1) / Fraction(self.fps).limit_denominator(1001000)
        fresh_connection = False
        try:
            while not self._stop.is_set():
                ended = "end of stream"
                for vf in self._decode_connection():
                    if vf.pts is not None and vf.time_base is not None:
                        tb = Fraction(vf.time_base)
                        t = Fraction(vf.pts) * tb
                    else:  # elementary streams without timestamps: count frames
                        tb, t = frame_dt, (last_t + frame_dt if last_t is not None else Fraction(0))
                    if tb0 is None:
                        tb0 = self.time_base = tb
                    if fresh_connection:  # continue one frame after the last frame of the previous connection
                        offset = (last_t + frame_dt - t) if last_t is not None else Fraction(0)
                        fresh_connection = False
                    t_out = t + offset
                    if self.start_s and t_out < self.start_s - frame_dt / 2:
                        continue  # decoded only to reach the seek position
                    if self._end_s is not None and t_out >= self._end_s - frame_dt / 2:
                        ended = "end of requested duration"
                        break
                    if last_t is not None and t_out <= last_t and self.kind != "file":
                        t_out = last_t + frame_dt  # keep live timestamps strictly increasing
                    last_t = t_out
                    if pacer is not None:
                        pacer.wait(float(t_out))
                        if self._stop.is_set():
                            break
                    orient = orientation_of(vf)
                    image = np.ascontiguousarray(orient.apply(vf.to_ndarray(format="rgb24")))
                    self.rotation, self.mirrored = orient.rotation, orient.mirrored
                    self._note_size(image.shape[1], image.shape[0])
                    pts = round(t_out / tb0)  # == vf.pts for files (same time base, no offset)
                    frame = Frame(image=image, index=self.frames_read, pts=pts, time_base=tb0,
                                  capture_ns=now_ns())
                    self.frames_read += 1
                    yield frame
                else:
                    ended = self.end_reason or ended
                    if ended == "end of file" and last_t is not None and self._ends_early(last_t + frame_dt):
                        self._mark_broken(EOFError(f"file ends at {float(last_t + frame_dt):.2f}s of "
                                                   f"{self._video_end_s:.2f}s"))
                        ended = self.end_reason
                if self._stop.is_set():
                    ended = "closed"
                self.end_reason = ended
                if not self._reconnect or self._stop.is_set() or ended != "end of stream" and not (
                    ended.startswith("stream error")
                ):
                    break
                # live stream ended or failed: reconnect with back-off
                self._release()
                try:
                    container = self._connect(first=False)
                except UserError as e:
                    self.end_reason = f"stream lost: {e}"
                    log.warning("%s", self.end_reason)
                    break
                with self._lock:
                    if self._stop.is_set():
                        container.close()
                        break
                    self._container = container
                self.reconnects += 1
                self.end_reason = ""
                fresh_connection = True
                log.info("%s: reconnected (%d)", self.spec, self.reconnects)
        finally:
            if self._stop.is_set():
                self.end_reason = "closed"
            self._release()

    def _decode_connection(self) -> Iterator[av.VideoFrame]:
        """Decoded frames of the current container until EOF, an error, or close()."""
        with self._lock:
            container = self._container
            if container is None:
                return
            vs = container.streams.video[0]
            packets = container.demux(vs)
        while True:
            with self._lock:
                if self._container is not container:  # closed by another thread
                    return
                try:
                    packet = next(packets)
                except StopIteration:
                    self.end_reason = "end of file" if self.kind == "file" else "end of stream"
                    return
                except (av.error.FFmpegError, OSError) as e:
                    # the container died mid-stream: a cut file, or a dropped connection
                    frames = self._flush(vs)
                    self._mark_broken(e)
                    packet = None
                if packet is not None:
                    try:
                        frames = vs.decode(packet)
                    except av.error.InvalidDataError as e:
                        self.decode_errors += 1
                        frames = []
                        if packet.size and self.kind == "file" and self._is_cut(container, packet):
                            self._mark_broken(e)
                            frames = self._flush(vs)
                            packet = None
                        else:
                            log.debug("%s: skipped an undecodable packet: %s", self.spec, e)
            yield from frames
            if packet is None:
                return

    def _ends_early(self, t_end: Fraction) -> bool:
        """A file's video stopped well before the end its header announces (cut download/recording)."""
        if self._video_end_s is None:
            return False
        end = self._video_end_s if self._end_s is None else min(self._video_end_s, self._end_s)
        return float(t_end) < end - max(0.25, 3.0 / self.fps)

    def _flush(self, vs: av.VideoStream) -> list[av.VideoFrame]:
        try:
            return list(vs.decode(None))
        except (av.error.FFmpegError, ValueError):
            return []

    def _is_cut(self, container: av.container.InputContainer, packet: av.Packet) -> bool:
        """True when ``packet`` reaches past the end of the file (a truncated file, not a bad packet)."""
        pos = packet.pos
        try:
            size = os.path.getsize(self._target)
        except OSError:
            return False
        return pos is not None and pos >= 0 and pos + packet.size > size

    def _mark_broken(self, exc: BaseException) -> None:
        if self.kind == "file":
            self.truncated = True
            self.end_reason = f"truncated: stopped after {self.frames_read} frames ({_one_line(exc)})"
            log.warning("%s is truncated or damaged: decoded %d frames, then stopped (%s)",
                        self.spec, self.frames_read, _one_line(exc))
        else:
            self.end_reason = f"stream error: {_one_line(exc)}"
            log.warning("%s: %s", self.spec, self.end_reason)


# ================================================================================================ demo ==
@dataclass(frozen=True)
class DemoOptions:
    """Parameters of a synthetic clip (from ``demo:NAME?seconds=..&fps=..&size=WxH&seed=..``)."""

    seconds: float = 5.0  # clip length; math.inf for an endless clip
    fps: float = 30.0  # frames per second
    width: int = 640  # pixels
    height: int = 480  # pixels
    seed: int = 0  # everything random derives from it
    extra: dict[str, str] = field(default_factory=dict)  # generator-specific options from the spec


DemoGenerator = Callable[[DemoOptions], Iterator[np.ndarray]]  # yields [H, W, 3] uint8 RGB frames
DEFAULT_DEMO = "portrait"  # `demo:` with no name: the synthetic talking head of realtime/io/synthetic.py


def smooth_path(rng: np.random.Generator, n_terms: int = 3) -> Callable[[float], float]:
    """A smooth random function of time in about [-1, 1]: a sum of slow sinusoids (0.08–0.5 Hz)."""
    freqs = rng.uniform(0.08, 0.5, n_terms)
    phases = rng.uniform(0, 2 * math.pi, n_terms)
    amps = rng.uniform(0.5, 1.0, n_terms)
    amps /= amps.sum()
    return lambda t: float(np.sum(amps * np.sin(2 * math.pi * freqs * t + phases)))


@functools.lru_cache(maxsize=1)
def _astronaut_canvas() -> tuple[np.ndarray, int]:
    """The portrait [512, 512, 3] inside blurred edge colours: ([1024, 1024, 3] uint8, padding 256)."""
    pad = 256  # the portrait is extended by blurred edge colours so moving it never shows a border
    portrait = skdata.astronaut()  # [512, 512, 3] uint8; face centre ≈ (225, 118), mouth ≈ (225, 146)
    src = cv2.GaussianBlur(cv2.copyMakeBorder(portrait, pad, pad, pad, pad, cv2.BORDER_REPLICATE), (0, 0), 24)
    src[pad:-pad, pad:-pad] = portrait
    src.flags.writeable = False
    return src, pad


def astronaut_clip(opt: DemoOptions) -> Iterator[np.ndarray]:
    """A talking-head clip from ``skimage.data.astronaut()``.

    The portrait moves on a smooth random similarity trajectory (translation ±6 % of the frame, rotation
    ±7°, scale ±8 %, from ``seed``), the mouth opens and closes (a local warp below the lips), the lighting
    drifts and camera noise (σ=2) is added. Frame ``i`` depends only on (options, i). Yields [H, W, 3] uint8.
    """
    src, pad = _astronaut_canvas()
    face_c = (225.0 + pad, 118.0 + pad)
    mouth = (225.0 + pad, 146.0 + pad)
    w, h = opt.width, opt.height
    rng = np.random.default_rng(opt.seed)
    px, py, pr, ps, pm, pl = (smooth_path(rng) for _ in range(6))
    base_scale = 0.36 * h / 130.0  # the face (≈130 px tall in the portrait) fills ~36 % of the frame height
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    noise_field = 2.0 * np.random.default_rng([opt.seed, 1 << 20]).standard_normal((h + 64, w + 64, 3), np.float32)
    n = None if math.isinf(opt.seconds) else int(round(opt.seconds * opt.fps))
    i = 0
    while n is None or i < n:
        t = i / opt.fps
        s = base_scale * (1.0 + 0.08 * ps(t))
        ang = math.radians(7.0 * pr(t))
        centre = (w * (0.5 + 0.06 * px(t)), h * (0.45 + 0.06 * py(t)))
        # inverse similarity: output pixel -> portrait pixel
        ca, sa = math.cos(ang) / s, math.sin(ang) / s
        dx, dy = xs - centre[0], ys - centre[1]
        mx = ca * dx + sa * dy + face_c[0]
        my = -sa * dx + ca * dy + face_c[1]
        # mouth opening: pull pixels below the lips upward in the source (= lower lip moves down)
        openness = 0.5 + 0.5 * pm(t * 2.5)
        r2 = ((mx - mouth[0]) / 22.0) ** 2 + ((my - mouth[1] - 6.0) / 12.0) ** 2
        my = my - np.float32(6.0 * openness) * np.exp(-r2) * (my > mouth[1])
        img = cv2.remap(src, mx.astype(np.float32), my.astype(np.float32), cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_REPLICATE)
        gain = 1.0 + 0.08 * pl(t)
        # camera noise: a per-frame random window into one pre-drawn noise field (fresh noise costs 15 ms)
        oy, ox = np.random.default_rng([opt.seed, i]).integers(0, 64, 2)
        noise = noise_field[oy : oy + h, ox : ox + w]
        out = np.clip(img.astype(np.float32) * np.float32(gain) + noise, 0, 255).astype(np.uint8)
        yield out
        i += 1


# The built-in demo clips, by name (``demo:NAME``).
DEMO_GENERATORS: dict[str, DemoGenerator] = {"portrait": portrait_demo, "astronaut": astronaut_clip}


def register_demo_generator(name: str, generator: DemoGenerator) -> None:
    """Make ``demo:NAME`` produce ``generator(options)`` (for plug-ins and tests); replaces one of that name."""
    DEMO_GENERATORS[name] = generator


class DemoSource(Source):
    """Frames from a registered demo generator. Use :func:`open_source` with ``demo:``."""

    def __init__(self, spec: str, name: str, opt: DemoOptions, *, live: bool | None, realtime: bool | None):
        super().__init__()
        if name not in DEMO_GENERATORS:
            raise UserError(f"unknown demo clip {name!r} (known: {', '.join(sorted(DEMO_GENERATORS))})")
        if opt.fps <= 0 or opt.width < 16 or opt.height < 16 or opt.seconds <= 0:
            raise UserError(f"bad demo options in {spec!r}: need seconds>0, fps>0, size at least 16x16")
        self.spec, self.kind = spec, "demo"
        self._gen, self._opt = DEMO_GENERATORS[name], opt
        self.fps, self.width, self.height = float(opt.fps), opt.width, opt.height
        self.time_base = Fraction(1) / Fraction(self.fps).limit_denominator(1001000)
        self.realtime = bool(realtime)
        self.is_live = bool(live) if live is not None else self.realtime
        if not math.isinf(opt.seconds):
            self.duration_s = float(opt.seconds)
            self.frame_count = int(round(opt.seconds * opt.fps))

    def _frames(self) -> Iterator[Frame]:
        tb = self.time_base
        assert tb is not None
        pacer = _Pacer(self._stop) if self.realtime else None
        gen = self._gen(self._opt)
        try:
            for i, image in enumerate(gen):
                if self._stop.is_set():
                    break
                if pacer is not None:
                    pacer.wait(float(i * tb))
                    if self._stop.is_set():
                        break
                image = np.ascontiguousarray(image, dtype=np.uint8)
                self._note_size(image.shape[1], image.shape[0])
                self.frames_read += 1
                yield Frame(image=image, index=i, pts=i, time_base=tb, capture_ns=now_ns())
            self.end_reason = "closed" if self._stop.is_set() else "end of clip"
        finally:
            close = getattr(gen, "close", None)
            if close is not None:
                close()


# ============================================================================================ opening ==
def _parse_size(value: str, what: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*[xX*]\s*(\d+)\s*", value)
    if not m:
        raise UserError(f"bad size {value!r} in {what} (expected WIDTHxHEIGHT, e.g. 640x480)")
    return int(m.group(1)), int(m.group(2))


def _query(spec: str, query: str) -> dict[str, str]:
    return {k.lower(): v for k, v in parse_qsl(query, keep_blank_values=True)}


def _flag(value: str) -> bool:
    return value.strip().lower() not in ("0", "false", "no", "off", "")


def _num(q: dict[str, str], key: str, spec: str, default: float) -> float:
    if key not in q:
        return default
    try:
        return float(q[key])
    except ValueError:
        raise UserError(f"bad value {key}={q[key]!r} in {spec!r} (expected a number)") from None


def parse_demo_spec(spec: str) -> tuple[str, DemoOptions, dict[str, str]]:
    """``demo:NAME?k=v&..`` → (generator name, options, raw query)."""
    rest = spec[len("demo:") :]
    name, _, query = rest.partition("?")
    name = name.strip("/") or DEFAULT_DEMO
    q = _query(spec, query)
    w, h = _parse_size(q["size"], spec) if "size" in q else (640, 480)
    known = {"seconds", "fps", "size", "seed", "realtime", "live"}
    opt = DemoOptions(
        seconds=_num(q, "seconds", spec, 5.0),
        fps=_num(q, "fps", spec, 30.0),
        width=w,
        height=h,
        seed=int(_num(q, "seed", spec, 0)),
        extra={k: v for k, v in q.items() if k not in known},
    )
    return name, opt, q


def paced_like_a_camera(spec: str) -> bool:
    """Whether a live consumer should release this source at its frame rate (``realtime=True``): files and
    ``demo:`` clips would otherwise be read as fast as they decode; cameras and network streams pace themselves."""
    return spec.lower().startswith(("demo", "file:")) or Path(spec).is_file()


def open_source(
    spec: str,
    *,
    live: bool | None = None,
    realtime: bool | None = None,
    start: float | None = None,
    duration: float | None = None,
    size: tuple[int, int] | None = None,
    fps: float | None = None,
    input_format: str | None = None,
    options: dict[str, str] | None = None,
    reconnect_tries: int = 5,
    backoff_s: float = 0.5,
    max_backoff_s: float = 8.0,
    open_timeout_s: float = 10.0,
    read_timeout_s: float = 10.0,
) -> Source:
    """Open a video source (see the module docstring for the specs and the error policy).

    Args:
        spec: file path, ``file://`` URL, ``/dev/videoN``, network URL or ``demo:...``.
        live: force live (drop-oldest in the pipeline, reconnects) or not; None: decided by the kind.
        realtime: release frames at their timestamp pace (files, demo). Implies live unless ``live`` says no.
        start, duration: seconds; files only (seek to ``start``, stop after ``duration``).
        size, fps, input_format: V4L2 capture settings (e.g. (1280, 720), 30, "mjpeg").
        options: extra FFmpeg demuxer/protocol options (e.g. ``{"rtsp_transport": "udp"}``, ``{"listen": "1"}``).
        reconnect_tries, backoff_s, max_backoff_s: live reconnect policy (tries per (re)connection).
        open_timeout_s, read_timeout_s: network timeouts (a stalled live stream counts as lost).

    Returns:
        a :class:`Source`; iterate it for :class:`Frame` objects, close it (or use ``with``).

    Raises:
        UserError: with a one-line message for anything the user can fix.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(f"no input given (expected {SUPPORTED_HINT})")
    spec = spec.strip()
    if start is not None and start < 0:
        raise UserError(f"--start must be ≥ 0 seconds, got {start:g}")
    if duration is not None and duration <= 0:
        raise UserError(f"--duration must be > 0 seconds, got {duration:g}")

    if spec.lower().startswith("demo:") or spec.lower() == "demo":
        name, opt, q = parse_demo_spec(spec if ":" in spec else "demo:")
        rt = realtime if realtime is not None else (_flag(q["realtime"]) if "realtime" in q else None)
        lv = live if live is not None else (_flag(q["live"]) if "live" in q else None)
        if start or duration:
            opt = DemoOptions(
                seconds=min(opt.seconds, duration) if duration else opt.seconds,
                fps=opt.fps, width=opt.width, height=opt.height, seed=opt.seed, extra=opt.extra,
            )
        return DemoSource(spec, name, opt, live=lv, realtime=rt)

    common: dict[str, Any] = dict(
        live=live, realtime=realtime, start=start, duration=duration, reconnect_tries=reconnect_tries,
        backoff_s=backoff_s, max_backoff_s=max_backoff_s, open_timeout_s=open_timeout_s,
        read_timeout_s=read_timeout_s,
    )
    path_part, _, query = spec.partition("?")
    if _V4L2_RE.match(path_part):
        q = _query(spec, query)
        if size is None and "size" in q:
            size = _parse_size(q["size"], spec)
        fps = fps if fps is not None else (_num(q, "fps", spec, 0.0) or None)
        input_format = input_format or q.get("input_format")
        if not os.path.exists(path_part):
            raise UserError(f"camera {path_part} not found (is it connected? list cameras: v4l2-ctl --list-devices)")
        opts = dict(options or {})
        if size:
            opts["video_size"] = f"{size[0]}x{size[1]}"
        if fps:
            opts["framerate"] = f"{fps:g}"
        if input_format:
            opts["input_format"] = input_format
        return AVSource(spec, path_part, kind="v4l2", fmt="v4l2", options=opts, **common)

    m = _SCHEME_RE.match(spec)
    scheme = m.group(1).lower() if m and len(m.group(1)) > 1 else None  # "C:\\clip.mp4" is a path
    if scheme == "file":
        u = urlsplit(spec)
        return AVSource(spec, unquote(u.path), kind="file", options=options, **common)
    if scheme in LIVE_SCHEMES or scheme in HTTP_SCHEMES:
        opts = dict(options or {})
        if scheme in ("rtsp", "rtsps"):
            opts.setdefault("rtsp_transport", "tcp")
        if scheme in LIVE_SCHEMES:
            opts.setdefault("fflags", "nobuffer")
            if common["live"] is None:
                common["live"] = True
        return AVSource(spec, spec, kind="url", options=opts, **common)
    if scheme is not None and not os.path.exists(spec):
        raise UserError(f"unsupported input scheme '{scheme}:' in {spec!r} (expected {SUPPORTED_HINT})")
    return AVSource(spec, spec, kind="file", options=options, **common)
