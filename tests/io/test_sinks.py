"""realtime.sinks: file round trips with audio, Ctrl-C safety, bad outputs, RTMP, virtual camera, null."""

from __future__ import annotations

import gc
import glob
import json
import os
import socket
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from models.errors import UserError
from realtime.frames import Frame, Output
from realtime.io.sinks import fit_image, open_sink
from realtime.io.sources import open_source
from tests.media import pattern_frame, probe, write_clip, write_resolution_change


def to_output(f: Frame) -> Output:
    return Output(image=f.image, index=f.index, pts=f.pts, time_base=f.time_base, capture_ns=f.capture_ns)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def copy_through(src_spec: str, out: Path, **source_kw: object):
    with open_source(src_spec, **source_kw) as src, open_sink(
        str(out), width=src.width, height=src.height, fps=src.fps, audio_from=src
    ) as sink:
        frames = [to_output(f) for f in src]
        for o in frames:
            sink.write(o)
    return frames, sink


@pytest.mark.parametrize(
    ("ext", "video", "audio", "mode"),
    [(".mp4", "h264", "aac", "copy"), (".mkv", "h264", "aac", "copy"), (".webm", "vp9", "opus", "encode")],
)
def test_file_round_trip_keeps_frames_pts_and_audio(tmp_path: Path, ext: str, video: str, audio: str,
                                                    mode: str) -> None:
    clip = write_clip(tmp_path / "in.mp4", width=320, height=240, fps=30, seconds=1.0, audio=True)
    frames, sink = copy_through(str(clip.path), tmp_path / f"out{ext}")
    assert sink.audio_mode == mode and sink.frames_written == 30 and sink.closed
    info = probe(tmp_path / f"out{ext}", keep_first=True)
    assert (info.frames, info.video_codec, info.audio_codec) == (30, video, audio)
    assert info.pts_monotonic and info.sizes[0] == (320, 240)
    src_times = [float(o.pts * o.time_base) for o in frames]
    assert info.pts_s == pytest.approx(src_times, abs=2e-3)  # timestamps kept (webm stores ms)
    assert info.video_seconds == pytest.approx(1.0, abs=0.01)
    assert info.audio_seconds == pytest.approx(1.0, abs=0.03)
    assert info.audio_start_s == pytest.approx(0.0, abs=0.03)
    assert np.abs(info.first_rgb.astype(int) - pattern_frame(0, 320, 240).astype(int)).mean() < 5.0


def test_trimmed_file_starts_at_zero_with_matching_audio(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "in.mp4", seconds=2.0, fps=30, audio=True)
    _, sink = copy_through(str(clip.path), tmp_path / "out.mp4", start=0.5, duration=0.5)
    info = probe(tmp_path / "out.mp4")
    assert info.frames == 15 and info.pts_s[0] == pytest.approx(0.0, abs=1e-3) and info.pts_monotonic
    assert info.audio_seconds == pytest.approx(0.5, abs=0.03)


def test_audio_from_a_path_and_a_video_only_source(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "in.mp4", seconds=0.5, fps=30, audio=True)
    with open_source("demo:?seconds=0.5&fps=30&size=96x64") as src, open_sink(
        str(tmp_path / "demo.mkv"), width=96, height=64, fps=30, audio_from=clip.path
    ) as sink:
        for f in src:
            sink.write(to_output(f))
    info = probe(tmp_path / "demo.mkv")
    assert info.frames == 15 and info.audio_codec == "aac" and info.audio_seconds == pytest.approx(0.5, abs=0.03)
    # no audio anywhere: a video-only file
    with open_sink(str(tmp_path / "silent.mp4"), width=96, height=64, fps=30) as sink:
        sink.write(Output(np.zeros((64, 96, 3), np.uint8), 0, 0, Fraction(1, 30), 0))
    assert sink.audio_mode == "none" and probe(tmp_path / "silent.mp4").audio_codec is None
    # unreadable audio input: a warning, and the video is still written
    (tmp_path / "noise.mp4").write_bytes(b"\x00garbage" * 100)
    with open_sink(str(tmp_path / "v.mp4"), width=96, height=64, fps=30, audio_from=tmp_path / "noise.mp4") as sink:
        sink.write(Output(np.zeros((64, 96, 3), np.uint8), 0, 0, Fraction(1, 30), 0))
    assert sink.audio_mode == "none" and probe(tmp_path / "v.mp4").frames == 1


@pytest.mark.parametrize("exc", [KeyboardInterrupt, RuntimeError])
def test_interrupted_sink_leaves_playable_file_with_every_frame(tmp_path: Path, exc: type[BaseException]) -> None:
    clip = write_clip(tmp_path / "in.mp4", seconds=1.0, fps=30, audio=True)
    out = tmp_path / "partial.mp4"
    n = 12
    with pytest.raises(exc), open_source(str(clip.path)) as src, open_sink(
        str(out), width=src.width, height=src.height, fps=src.fps, audio_from=src
    ) as sink:
        for f in src:
            sink.write(to_output(f))
            if f.index == n - 1:
                raise exc()
    assert sink.closed and sink.frames_written == n
    info = probe(out)
    assert info.decode_error is None and info.frames == n and info.pts_monotonic
    assert info.audio_seconds == pytest.approx(n / 30, abs=0.03)  # audio stops where the video stops


def test_sink_without_frames_leaves_no_file_and_close_is_idempotent(tmp_path: Path) -> None:
    out = tmp_path / "nothing.mp4"
    sink = open_sink(str(out), width=64, height=48, fps=25)
    assert out.exists()  # the header is written at open: an unwritable path fails before processing
    sink.close()
    sink.close()
    assert not out.exists()


def test_sink_left_unclosed_before_its_first_frame_leaves_no_file(tmp_path: Path) -> None:
    """Issue 17.6: a Ctrl-C / SIGTERM between ``open_sink`` returning and the caller's ``with`` taking it (the
    handler raises KeyboardInterrupt at the next bytecode) left the sink unclosed: a 48-byte header, no video.
    A file sink that is dropped (or still open at exit) without a frame removes its file."""
    out = tmp_path / "dropped.mp4"
    sink = open_sink(str(out), width=64, height=48, fps=25)
    assert out.stat().st_size > 0
    del sink
    gc.collect()
    assert not out.exists()
    # with frames, dropping it unclosed cannot make a valid file either; the file is left for what it holds
    sink = open_sink(str(out), width=64, height=48, fps=25)
    sink.write(Output(image=pattern_frame(0, 64, 48), index=0, pts=0, time_base=Fraction(1, 25), capture_ns=0))
    sink.close()
    assert probe(out).frames == 1


def test_resolution_change_is_resized_into_the_output(tmp_path: Path) -> None:
    path = write_resolution_change(tmp_path / "switch.ts", sizes=((320, 240), (480, 360)), frames_each=10)
    frames, sink = copy_through(str(path), tmp_path / "out.mp4")
    assert len(frames) == 20 and sink.resized == 10
    info = probe(tmp_path / "out.mp4")
    assert info.frames == 20 and set(info.sizes) == {(320, 240)} and info.pts_monotonic


def test_fit_image_letterboxes_and_stretches() -> None:
    white = np.full((100, 100, 3), 255, np.uint8)
    fit = fit_image(white, 320, 240)
    assert fit.shape == (240, 320, 3)
    assert fit[:, :39].max() == 0 and fit[:, -39:].max() == 0 and fit[:, 41:279].min() == 255
    assert fit_image(white, 320, 240, "stretch").min() == 255
    same = pattern_frame(0, 64, 48)
    assert fit_image(same, 64, 48) is same


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "no" / "such" / "dir" / "out.mp4", r"output folder does not exist"),
        (lambda d: d, r"output is a folder"),
        (lambda d: "/sys/stylestream-out.mp4", r"cannot write output file /sys/stylestream-out\.mp4: "),
        (lambda d: d / "out.xyz", r"cannot tell the output format from 'out\.xyz'"),
        (lambda d: "ftp://example.com/out.mp4", r"unsupported output 'ftp://'"),
    ],
    ids=["missing-folder", "folder", "unwritable", "extension", "scheme"],
)
def test_unwritable_outputs_fail_at_open(tmp_path: Path, make, message: str) -> None:
    with pytest.raises(UserError, match=message) as info:
        open_sink(str(make(tmp_path)), width=64, height=48, fps=30)
    assert "\n" not in str(info.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_read_only_folder_fails_at_open(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(UserError, match="not writable"):
            open_sink(str(ro / "out.mp4"), width=64, height=48, fps=30)
    finally:
        ro.chmod(0o700)


def test_output_may_not_overwrite_its_input(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "in.mp4", seconds=0.2, audio=True)
    size = clip.path.stat().st_size
    with open_source(str(clip.path)) as src, pytest.raises(UserError, match="overwrite the input"):
        open_sink(str(clip.path), width=320, height=240, fps=30, audio_from=src)
    assert clip.path.stat().st_size == size
    with pytest.raises(UserError, match="output file exists"):
        open_sink(str(clip.path), width=320, height=240, fps=30, overwrite=False)


def test_rtmp_sink_to_unreachable_server_fails_fast() -> None:
    url = f"rtmp://127.0.0.1:{closed_port()}/live/stream"
    t0 = time.monotonic()
    with pytest.raises(UserError, match=r"cannot connect to RTMP server rtmp://127\.0\.0\.1:\d+/live/stream: "):
        open_sink(url, width=320, height=240, fps=30, connect_timeout_s=2.0)
    assert time.monotonic() - t0 < 4.0


_RTMP_RECEIVER = """
import av, json, sys
c = av.open(sys.argv[1], options={"listen": "1"}, timeout=20)
streams = [[s.type, s.codec_context.name] for s in c.streams]
n = 0
try:
    for _ in c.decode(video=0):
        n += 1
except av.error.FFmpegError:
    pass
print(json.dumps({"streams": streams, "frames": n}))
"""


def test_rtmp_sink_streams_h264_and_aac_to_a_server() -> None:
    # the receiver is FFmpeg in listen mode in another process (in-process it would contend for the GIL)
    url = f"rtmp://127.0.0.1:{closed_port()}/live/test"
    proc = subprocess.Popen([sys.executable, "-c", _RTMP_RECEIVER, url], stdout=subprocess.PIPE, text=True)
    try:
        sink = None
        deadline = time.monotonic() + 15
        while sink is None:
            try:
                sink = open_sink(url, width=160, height=120, fps=30)
            except UserError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        t0 = time.monotonic()
        with sink:
            for i in range(12):
                sink.write(Output(pattern_frame(i, 160, 120), i, i, Fraction(1, 30), 0))
        assert time.monotonic() - t0 >= 11 / 30 * 0.9  # paced like ffmpeg -re
        out, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
    got = json.loads(out)
    assert got == {"streams": [["video", "h264"], ["audio", "aac"]], "frames": 12}
    assert sink.audio_mode == "silent"


class MemoryCamera:
    """A pyvirtualcam backend that keeps what it is sent (registered as 'memory-test')."""

    instances: list[MemoryCamera] = []
    fail: str | None = None

    def __init__(self, *, width: int, height: int, fps: float, fourcc: int, device: str | None, **kw: object):
        if MemoryCamera.fail:
            raise RuntimeError(MemoryCamera.fail)
        self.width, self.height, self.fps, self.fourcc = width, height, fps, fourcc
        self._device = device or "memory0"
        self.frames: list[np.ndarray] = []
        self.times: list[float] = []
        self.closed = False
        MemoryCamera.instances.append(self)

    def send(self, frame: np.ndarray) -> None:
        self.frames.append(frame.reshape(self.height, self.width, 3).copy())
        self.times.append(time.perf_counter())

    def close(self) -> None:
        self.closed = True

    def device(self) -> str:
        return self._device

    def native_fourcc(self) -> int | None:
        return None


@pytest.fixture
def memory_backend():
    pyvirtualcam = pytest.importorskip("pyvirtualcam")  # optional: the virtual-camera sink imports it on use
    pyvirtualcam.register_backend("memory-test", MemoryCamera)
    MemoryCamera.instances.clear()
    MemoryCamera.fail = None
    yield MemoryCamera
    MemoryCamera.fail = None


def test_virtual_camera_gets_every_frame_paced(memory_backend) -> None:
    fps, n = 50.0, 10
    with open_sink("virtualcam:?backend=memory-test&device=cam7", width=64, height=48, fps=fps) as sink:
        assert (sink.backend, sink.device) == ("memory-test", "cam7")
        for i in range(n):
            sink.write(Output(pattern_frame(i, 64, 48), i, None, None, 0))
        sink.write(Output(np.full((96, 128, 3), 200, np.uint8), n, None, None, 0))  # other size: fitted
    cam = memory_backend.instances[-1]
    assert cam.closed and cam.fps == fps and (cam.width, cam.height) == (64, 48)
    assert len(cam.frames) == n + 1 and sink.resized == 1
    assert all(np.array_equal(cam.frames[i], pattern_frame(i, 64, 48)) for i in range(n))
    assert cam.frames[-1].min() == 200
    gaps = np.diff(cam.times)
    # paced: never faster than fps (a late frame may shorten the next gap to keep the cadence, not more)
    assert cam.times[-1] - cam.times[0] >= n / fps * 0.95
    assert gaps.min() > 0.45 / fps and gaps.mean() < 3 / fps


def test_virtual_camera_failures_are_user_errors(memory_backend) -> None:
    memory_backend.fail = "device busy"
    with pytest.raises(UserError, match=r"no virtual camera available \(.*device busy\)"):
        open_sink("virtualcam:", backend="memory-test", width=64, height=48, fps=30)
    with pytest.raises(UserError, match="unknown virtual-camera backend 'obs-nope'"):
        open_sink("virtualcam:", backend="obs-nope", width=64, height=48, fps=30)


@pytest.mark.skipif(bool(glob.glob("/dev/video*")), reason="a video device exists on this machine")
def test_virtual_camera_without_v4l2loopback_is_a_clear_error() -> None:
    with pytest.raises(UserError, match=r"no virtual camera available .*v4l2loopback") as info:
        open_sink("virtualcam:", backend="v4l2loopback", width=64, height=48, fps=30)
    assert "\n" not in str(info.value)


def test_null_sink_counts_frames_and_latency() -> None:
    with open_sink("null:", width=64, height=48, fps=30) as sink:
        for f in open_source("demo:?seconds=0.2&fps=30&size=64x48"):
            sink.write(to_output(f))
    assert sink.kind == "null" and sink.frames_written == 6
    assert len(sink.latencies_ms) == 6 and min(sink.latencies_ms) >= 0
