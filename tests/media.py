"""Synthetic test media written with PyAV into temporary folders.

Import from any test::

    from tests.media import write_clip, probe
    clip = write_clip(tmp_path / "in.mp4", width=320, height=240, fps=30, seconds=1.0, audio=True)
    info = probe(clip.path)      # frames, pts, sizes, audio duration ... read back with PyAV

Every writer returns the path (or a :class:`Clip` with what was written) and never needs network or devices.
Pixel content is :func:`pattern_frame` — a deterministic gradient with a moving bar — so tests can check
content as well as counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

AUDIO_RATE = 48000  # Hz, default sample rate of the synthetic tone


@dataclass(frozen=True)
class Clip:
    """What a writer put in a file."""

    path: Path
    width: int
    height: int
    fps: int
    frames: int  # video frames written
    seconds: float  # frames / fps
    audio_seconds: float  # seconds of audio samples written (0.0 without audio)


@dataclass
class Probe:
    """A file read back with PyAV (every frame decoded)."""

    frames: int = 0  # decoded video frames
    pts_s: list[float] = field(default_factory=list)  # presentation time of each video frame, seconds
    sizes: list[tuple[int, int]] = field(default_factory=list)  # (width, height) of each video frame
    video_codec: str | None = None
    audio_codec: str | None = None
    audio_samples: int = 0  # decoded audio samples (per channel)
    audio_rate: int = 0  # Hz
    audio_start_s: float | None = None  # pts of the first decoded audio frame, seconds
    format_name: str = ""
    first_rgb: np.ndarray | None = None  # [H, W, 3] uint8 of the first video frame
    rotations: set[int] = field(default_factory=set)  # display-matrix rotation of the frames (0: none)
    decode_error: str | None = None  # set if decoding stopped on an error

    @property
    def audio_seconds(self) -> float:
        return self.audio_samples / self.audio_rate if self.audio_rate else 0.0

    @property
    def video_seconds(self) -> float:
        """Span of the video: last pts − first pts + one frame (from the median frame step)."""
        if not self.pts_s:
            return 0.0
        step = float(np.median(np.diff(self.pts_s))) if len(self.pts_s) > 1 else 0.0
        return self.pts_s[-1] - self.pts_s[0] + step

    @property
    def pts_monotonic(self) -> bool:
        return all(b > a for a, b in zip(self.pts_s, self.pts_s[1:]))


def pattern_frame(index: int, width: int, height: int) -> np.ndarray:
    """Deterministic test picture for frame ``index``: colour gradient + a bright bar that moves 4 px/frame.

    Returns [height, width, 3] uint8 RGB.
    """
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    img = np.empty((height, width, 3), np.uint8)
    img[..., 0] = x.astype(np.uint8)
    img[..., 1] = y.astype(np.uint8)
    img[..., 2] = ((x + y) / 2 + index * 3) % 256
    bar = (index * 4) % max(1, width - 8)
    img[:, bar : bar + 8] = 255
    return img


def _tone(n: int, start: int, rate: int, channels: int, freq: float = 440.0) -> np.ndarray:
    t = (np.arange(start, start + n, dtype=np.float64)) / rate
    s = (0.2 * np.sin(2 * math.pi * freq * t)).astype(np.float32)
    return np.repeat(s[None, :], channels, axis=0)  # [channels, n] planar float


def _add_audio(container: av.container.OutputContainer, codec: str, rate: int) -> av.AudioStream:
    stream = container.add_stream(codec, rate=rate)
    stream.layout = "stereo"
    return stream


def _write_audio(container: av.container.OutputContainer, stream: av.AudioStream, seconds: float) -> int:
    """Encode ``seconds`` of a 440 Hz tone; returns samples written."""
    rate = stream.codec_context.sample_rate
    fmt = stream.codec_context.format.name if stream.codec_context.format else "fltp"
    total = int(round(seconds * rate))
    chunk = stream.codec_context.frame_size or 1024
    done = 0
    while done < total:
        n = min(chunk, total - done)
        data = _tone(n, done, rate, 2)
        if fmt.startswith("s16"):
            data = (data * 32767).astype(np.int16)
        elif fmt.startswith("s32"):
            data = (data * 2147483647).astype(np.int32)
        if not fmt.endswith("p"):  # packed formats want [1, n*channels]
            data = data.T.reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(data, format=fmt, layout="stereo")
        frame.sample_rate = rate
        frame.pts = done
        frame.time_base = Fraction(1, rate)
        container.mux(stream.encode(frame))
        done += n
    container.mux(stream.encode(None))
    return total


def write_clip(
    path: str | Path,
    *,
    width: int = 320,
    height: int = 240,
    fps: int = 30,
    seconds: float = 1.0,
    audio: bool = True,
    audio_seconds: float | None = None,
    sample_rate: int = AUDIO_RATE,
    faststart: bool = False,
    video_codec: str | None = None,
    audio_codec: str | None = None,
) -> Clip:
    """Write a clip: H.264 (yuv420p) video of ``round(seconds*fps)`` pattern frames + an AAC tone.

    The container follows the extension (.mp4, .mkv, .mov, .ts; .webm gets VP9 + Opus). ``faststart`` puts
    the mp4 index (moov) before the media data. ``audio_seconds`` defaults to the video length.
    """
    path = Path(path)
    ext = path.suffix.lower()
    vcodec = video_codec or ("libvpx-vp9" if ext == ".webm" else "libx264")
    acodec = audio_codec or ("libopus" if ext == ".webm" else "aac")
    n = int(round(seconds * fps))
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as out:
        vs = out.add_stream(vcodec, rate=fps)
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        if vcodec == "libx264":
            vs.options = {"preset": "ultrafast", "g": str(fps)}
        elif vcodec == "libvpx-vp9":
            vs.options = {"deadline": "realtime", "cpu-used": "8"}
        as_ = _add_audio(out, acodec, sample_rate) if audio else None
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(pattern_frame(i, width, height), format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            out.mux(vs.encode(frame))
        out.mux(vs.encode(None))
        a_written = _write_audio(out, as_, seconds if audio_seconds is None else audio_seconds) if as_ else 0
    return Clip(path, width, height, fps, n, n / fps, a_written / sample_rate)


def write_rotated_clip(path: str | Path, upright: list[np.ndarray], *, degrees: int, hflip: bool = False,
                       fps: int = 10) -> Path:
    """Write frames the way a phone does: stored sideways, with a display matrix (PyAV's
    ``set_display_rotation``: ``degrees`` counter-clockwise, then ``hflip``) that shows ``upright`` ([H, W, 3]
    uint8 RGB, even sizes) as they are. A phone held upright records ``degrees=-90``."""
    path = Path(path)
    k = (degrees // 90) % 4
    stored = [np.ascontiguousarray(np.rot90(f[:, ::-1] if hflip else f, -k)) for f in upright]
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.height, vs.width = stored[0].shape[:2]
        vs.pix_fmt = "yuv420p"
        vs.options = {"preset": "ultrafast", "crf": "12"}
        vs.set_display_rotation(degrees, hflip=hflip)
        for i, img in enumerate(stored):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            out.mux(vs.encode(frame))
        out.mux(vs.encode(None))
    return path


def write_audio_only(path: str | Path, *, seconds: float = 1.0, sample_rate: int = AUDIO_RATE) -> Path:
    """An .m4a/.mp4/.mka file holding only an AAC tone (no video stream)."""
    path = Path(path)
    with av.open(str(path), "w") as out:
        _write_audio(out, _add_audio(out, "aac", sample_rate), seconds)
    return path


def write_truncated_mp4(
    path: str | Path, *, keep: float = 0.5, index_first: bool = True, seconds: float = 2.0, fps: int = 30
) -> Path:
    """An mp4 cut to ``keep`` of its bytes, as left by a crashed recorder or an interrupted download.

    ``index_first=True``: the index (moov) comes first, so the start of the media is decodable.
    ``index_first=False``: the index was at the end and is gone — nothing is decodable.
    """
    path = Path(path)
    full = path.with_name(path.stem + ".full" + path.suffix)
    write_clip(full, seconds=seconds, fps=fps, audio=True, faststart=index_first)
    data = full.read_bytes()
    full.unlink()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def write_empty(path: str | Path) -> Path:
    """A zero-byte file."""
    path = Path(path)
    path.write_bytes(b"")
    return path


def write_garbage(path: str | Path, *, size: int = 64 * 1024, seed: int = 0) -> Path:
    """``size`` random bytes (no container FFmpeg can probe)."""
    path = Path(path)
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())
    return path


def write_resolution_change(
    path: str | Path,
    *,
    sizes: tuple[tuple[int, int], ...] = ((320, 240), (480, 360)),
    frames_each: int = 10,
    fps: int = 30,
) -> Path:
    """An MPEG-TS H.264 stream whose resolution changes mid-stream: ``frames_each`` frames per (w, h) size.

    Each segment comes from its own encoder with in-band SPS/PPS, as in a live stream that switches
    resolution; the file has one video stream.
    """
    path = Path(path)
    tb = Fraction(1, fps)
    with av.open(str(path), "w", format="mpegts") as out:
        w0, h0 = sizes[0]
        vs = out.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = w0, h0, "yuv420p"
        vs.options = {"preset": "ultrafast"}
        index = 0
        for w, h in sizes:
            enc = av.CodecContext.create("libx264", "w")
            enc.width, enc.height, enc.pix_fmt = w, h, "yuv420p"
            enc.time_base, enc.framerate = tb, Fraction(fps)
            enc.options = {"preset": "ultrafast", "bframes": "0"}
            frames = []
            for _ in range(frames_each):
                f = av.VideoFrame.from_ndarray(pattern_frame(index, w, h), format="rgb24")
                f.pts, f.time_base = index, tb
                frames.append(f)
                index += 1
            packets = [p for f in frames for p in enc.encode(f)] + list(enc.encode(None))
            for p in packets:
                p.stream = vs
                p.time_base = tb
                out.mux(p)
    return path


def probe(path: str | Path, *, keep_first: bool = False) -> Probe:
    """Decode every video and audio frame of ``path`` and report what is there (see :class:`Probe`)."""
    info = Probe()
    with av.open(str(path)) as c:
        info.format_name = c.format.name
        v = c.streams.video[0] if c.streams.video else None
        a = c.streams.audio[0] if c.streams.audio else None
        if v is not None:
            info.video_codec = v.codec_context.name
        if a is not None:
            info.audio_codec = a.codec_context.name
            info.audio_rate = a.codec_context.sample_rate
        streams = [s for s in (v, a) if s is not None]
        try:
            for packet in c.demux(*streams):
                for frame in packet.decode():
                    if isinstance(frame, av.VideoFrame):
                        info.frames += 1
                        info.pts_s.append(float(frame.pts * frame.time_base) if frame.pts is not None else 0.0)
                        info.sizes.append((frame.width, frame.height))
                        info.rotations.add(int(frame.rotation))
                        if keep_first and info.first_rgb is None:
                            info.first_rgb = frame.to_ndarray(format="rgb24")
                    elif isinstance(frame, av.AudioFrame):
                        if info.audio_start_s is None and frame.pts is not None:
                            info.audio_start_s = float(frame.pts * frame.time_base)
                        info.audio_samples += frame.samples
        except av.error.FFmpegError as e:  # truncated input: report, keep what was decoded
            info.decode_error = str(e)
    return info
