"""realtime.sources: files, bad inputs, truncation, resolution changes, live reconnects, demo: clips."""

from __future__ import annotations

import http.server
import re
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from models.errors import UserError
from realtime.io.sources import open_source, register_demo_generator
from tests.media import (
    pattern_frame,
    write_audio_only,
    write_clip,
    write_empty,
    write_garbage,
    write_resolution_change,
    write_rotated_clip,
    write_truncated_mp4,
)


def closed_port() -> int:
    """A local TCP port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_file_source_frames_props_and_content(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "in.mp4", width=320, height=240, fps=30, seconds=1.0, audio=True)
    with open_source(str(clip.path)) as src:
        assert (src.width, src.height, src.fps, src.is_live, src.kind) == (320, 240, 30.0, False, "file")
        assert src.frame_count == 30 and src.duration_s == pytest.approx(1.0, abs=0.01)
        assert src.audio is not None and src.audio.codec == "aac" and src.audio.sample_rate == 48000
        assert src.path == str(clip.path) and src.time_origin == 0.0
        frames = list(src)
    assert len(frames) == 30 and src.frames_read == 30
    assert [f.index for f in frames] == list(range(30))
    assert [f.time_s for f in frames] == pytest.approx([i / 30 for i in range(30)], abs=1e-3)
    for f in frames:
        assert f.image.shape == (240, 320, 3) and f.image.dtype == np.uint8 and f.image.flags.c_contiguous
    # RGB order and content survive H.264: compare with the pattern that was encoded
    for i in (0, 17, 29):
        diff = np.abs(frames[i].image.astype(int) - pattern_frame(i, 320, 240).astype(int))
        assert diff.mean() < 4.0, i
    assert src.end_reason == "end of file" and not src.truncated


def test_start_and_duration_seek_and_trim(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "in.mp4", seconds=2.0, fps=30, audio=False)
    with open_source(str(clip.path), start=0.5, duration=0.3) as src:
        frames = list(src)
        assert src.time_origin == 0.5 and src.frame_count == 9
    assert len(frames) == 9
    assert frames[0].time_s == pytest.approx(0.5, abs=1e-3) and frames[0].index == 0
    assert frames[-1].time_s == pytest.approx(0.5 + 8 / 30, abs=1e-3)
    # the picture is the one at 0.5 s, not the first key frame before it
    assert np.abs(frames[0].image.astype(int) - pattern_frame(15, 320, 240).astype(int)).mean() < 4.0
    with open_source(str(clip.path), start=0.5, realtime=True) as paced:
        assert paced.is_live and paced.time_origin == 0.5  # a sink still shifts audio and video alike
    with pytest.raises(UserError, match="past the end"):
        open_source(str(clip.path), start=5.0)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.mp4", r"input file not found: .*missing\.mp4"),
        (lambda d: write_empty(d / "empty.mp4"), r"input file is empty \(0 bytes\)"),
        (lambda d: write_garbage(d / "garbage.mp4"), r"not a video file FFmpeg can read"),
        (lambda d: write_truncated_mp4(d / "cut.mp4", index_first=False), r"truncated or unfinished mp4.*moov"),
        (lambda d: write_audio_only(d / "song.m4a"), r"no video stream in .*song\.m4a \(found: audio aac\)"),
        (lambda d: d, r"input is a folder"),
        (lambda d: "ftp://example.com/clip.mp4", r"unsupported input scheme 'ftp:'"),
        (lambda d: "/dev/video97", r"camera /dev/video97 not found"),
        (lambda d: "demo:nosuchclip", r"unknown demo clip 'nosuchclip'"),
        (lambda d: "demo:?size=big", r"bad size 'big'"),
    ],
    ids=["missing", "zero-bytes", "garbage", "truncated-no-index", "audio-only", "folder", "scheme", "camera",
         "demo-name", "demo-size"],
)
def test_bad_inputs_raise_one_line_user_error(tmp_path: Path, make, message: str) -> None:
    spec = str(make(tmp_path))
    with pytest.raises(UserError, match=message) as info:
        open_source(spec)
    assert "\n" not in str(info.value)


def test_truncated_mp4_with_index_decodes_what_is_there_then_stops(tmp_path: Path) -> None:
    path = write_truncated_mp4(tmp_path / "cut.mp4", keep=0.5, index_first=True, seconds=2.0, fps=30)
    with open_source(str(path)) as src:
        assert src.frame_count == 60  # the index still announces the full length
        frames = list(src)  # no exception: the decodable half comes out
    assert 10 < len(frames) < 60
    assert src.truncated and src.end_reason.startswith("truncated")
    assert all(b.pts > a.pts for a, b in zip(frames, frames[1:]))


def test_resolution_change_mid_stream_keeps_going(tmp_path: Path) -> None:
    path = write_resolution_change(tmp_path / "switch.ts", sizes=((320, 240), (480, 360)), frames_each=10)
    with open_source(str(path)) as src:
        frames = list(src)
    assert [f.image.shape[:2] for f in frames] == [(240, 320)] * 10 + [(360, 480)] * 10
    assert src.size_changes == 1 and (src.width, src.height) == (480, 360)
    assert all(b.pts > a.pts for a, b in zip(frames, frames[1:]))


def test_unreachable_rtmp_server_fails_in_bounded_time() -> None:
    url = f"rtmp://127.0.0.1:{closed_port()}/live/stream"
    t0 = time.monotonic()
    with pytest.raises(UserError, match=r"cannot connect to rtmp://127\.0\.0\.1:\d+/live/stream: .*3 tries"):
        open_source(url, reconnect_tries=3, backoff_s=0.05)
    elapsed = time.monotonic() - t0
    assert 0.05 + 0.1 <= elapsed < 5.0  # it did back off between tries, and gave up


class _FlakyServer(http.server.ThreadingHTTPServer):
    """Serves one file ``serve_times`` times, then answers 404 (a live stream that goes away)."""

    def __init__(self, payload: bytes, serve_times: int) -> None:
        payload_ref, remaining = payload, [serve_times]

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                if remaining[0] <= 0:
                    self.send_error(404)
                    return
                remaining[0] -= 1
                self.send_response(200)
                self.send_header("Content-Type", "video/mp2t")
                self.send_header("Content-Length", str(len(payload_ref)))
                self.end_headers()
                self.wfile.write(payload_ref)

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)


def test_live_url_reconnects_and_keeps_pts_increasing(tmp_path: Path) -> None:
    ts = write_resolution_change(tmp_path / "a.ts", sizes=((160, 120),), frames_each=15)
    server = _FlakyServer(ts.read_bytes(), serve_times=2)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/live.ts"
        with open_source(url, live=True, reconnect_tries=2, backoff_s=0.05) as src:
            assert src.is_live and src.path is None and src.time_origin is None
            frames = list(src)
    finally:
        server.shutdown()
        server.server_close()
    assert len(frames) == 30  # both connections' frames, then it gave up
    assert src.reconnects == 1 and src.end_reason.startswith("stream lost")
    times = [f.time_s for f in frames]
    assert all(b > a for a, b in zip(times, times[1:]))
    assert times[15] - times[14] == pytest.approx(1 / 30, abs=1e-3)  # continues one frame later


@pytest.mark.slow
def test_close_does_not_hang_on_a_stalled_live_stream(tmp_path: Path) -> None:
    payload = write_resolution_change(tmp_path / "a.ts", sizes=((160, 120),), frames_each=15).read_bytes()
    release = threading.Event()

    class Stall(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.end_headers()
            self.wfile.write(payload)
            self.wfile.flush()
            release.wait(10)  # keep the connection open, send nothing more

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stall)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    got: list[int] = []
    try:
        src = open_source(f"http://127.0.0.1:{server.server_address[1]}/s.ts", live=True, read_timeout_s=1.0,
                          open_timeout_s=1.0, reconnect_tries=1)
        thread = threading.Thread(target=lambda: [got.append(f.index) for f in src])
        thread.start()
        deadline = time.monotonic() + 10
        while len(got) < 10 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)  # the reader is now blocked waiting for more data
        t0 = time.monotonic()
        src.close()
        assert time.monotonic() - t0 < 1.0  # Ctrl-C is not held up by the network read
        thread.join(5.0)  # the reader itself stops within the read/open timeouts (FFmpeg calls block)
        assert not thread.is_alive() and len(got) >= 10 and src.end_reason == "closed"
    finally:
        release.set()
        server.shutdown()
        server.server_close()


def test_files_never_reconnect(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "in.mp4", seconds=0.3, audio=False)
    with open_source(str(clip.path)) as src:
        assert len(list(src)) == 9 and src.reconnects == 0


def test_realtime_file_is_paced_and_counts_as_live(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "in.mp4", seconds=0.4, fps=30, audio=False)
    with open_source(str(clip.path), realtime=True) as src:
        assert src.is_live
        t0 = time.monotonic()
        n = sum(1 for _ in src)
        elapsed = time.monotonic() - t0
    assert n == 12 and elapsed >= 11 / 30 * 0.9


def test_close_from_another_thread_stops_an_endless_source() -> None:
    src = open_source("demo:?seconds=inf&fps=50&size=64x48&realtime=1")
    assert src.is_live and src.frame_count is None
    got: list[int] = []

    def consume() -> None:
        for f in src:
            got.append(f.index)

    thread = threading.Thread(target=consume)
    thread.start()
    deadline = time.monotonic() + 10.0
    while len(got) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    src.close()
    n_at_close = len(got)
    thread.join(2.0)
    assert not thread.is_alive() and src.end_reason == "closed"
    assert n_at_close >= 5 and len(got) <= n_at_close + 1


def test_demo_source_is_deterministic_by_seed_and_moves() -> None:
    def grab(spec: str) -> list[np.ndarray]:
        with open_source(spec) as src:
            assert (src.width, src.height, src.fps, src.frame_count) == (96, 64, 10.0, 10)
            return [f.image for f in src]

    a = grab("demo:?seconds=1&fps=10&size=96x64&seed=3")
    b = grab("demo:?seconds=1&fps=10&size=96x64&seed=3")
    c = grab("demo:?seconds=1&fps=10&size=96x64&seed=4")
    assert len(a) == 10 and all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[5], c[5])
    assert np.abs(a[0].astype(int) - a[9].astype(int)).mean() > 3.0  # the face moves


def test_demo_generator_is_replaceable() -> None:
    def flat(opt):
        for i in range(3):
            yield np.full((opt.height, opt.width, 3), i, np.uint8)

    register_demo_generator("flat-test", flat)
    with open_source("demo:flat-test?size=32x16&fps=5") as src:
        frames = list(src)
    assert [int(f.image[0, 0, 0]) for f in frames] == [0, 1, 2]
    assert [f.pts for f in frames] == [0, 1, 2] and frames[1].time_s == pytest.approx(0.2)


def _oriented_picture(width: int, height: int) -> np.ndarray:
    """Smooth and asymmetric: red grows to the right, green downwards, a blue block at the top left."""
    img = np.zeros((height, width, 3), np.uint8)
    img[..., 0] = np.linspace(0, 255, width, dtype=np.float32)[None, :].astype(np.uint8)
    img[..., 1] = np.linspace(0, 255, height, dtype=np.float32)[:, None].astype(np.uint8)
    img[: height // 4, : width // 4, 2] = 255
    return img


class _RangeServer(http.server.ThreadingHTTPServer):
    """Serves one file with byte ranges, as a web server serves a recording (an mp4's index may be at its end)."""

    def __init__(self, payload: bytes) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                start = 0
                rng = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
                if rng:
                    start = int(rng.group(1))
                end = int(rng.group(2)) + 1 if rng and rng.group(2) else len(payload)
                self.send_response(206 if rng else 200)
                self.send_header("Content-Type", "video/mp4")
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(end - start))
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(payload)}")
                self.end_headers()
                self.wfile.write(payload[start:end])

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)


def test_a_phone_recording_behind_a_url_opens_with_its_upright_size(tmp_path: Path) -> None:
    """A portrait phone video fetched over HTTP: frames were turned upright, but the size announced at open (what
    sinks open with) was the stored, sideways one. A recording URL is peeked like a file."""
    upright = _oriented_picture(96, 160)
    path = write_rotated_clip(tmp_path / "phone.mp4", [upright] * 3, degrees=-90, hflip=False)
    server = _RangeServer(path.read_bytes())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with open_source(f"http://127.0.0.1:{server.server_address[1]}/phone.mp4") as src:
            assert not src.is_live and (src.width, src.height, src.rotation) == (96, 160, -90)
            frames = list(src)
    finally:
        server.shutdown()
        server.server_close()
    assert len(frames) == 3 and all(f.image.shape == upright.shape for f in frames)


@pytest.mark.parametrize("degrees,hflip", [(-90, False), (90, False), (180, False), (0, True), (90, True),
                                           (-90, True), (180, True)])
def test_display_matrix_is_honoured_frames_come_out_upright(tmp_path: Path, degrees: int, hflip: bool) -> None:
    """Issue 17.5: a phone video (stored sideways + a display matrix) came out sideways. Frames, width and height
    are the upright picture's, for every rotation and mirroring the matrix can express."""
    upright = _oriented_picture(96, 160)  # portrait, as the phone's user saw it
    path = write_rotated_clip(tmp_path / "phone.mp4", [upright] * 3, degrees=degrees, hflip=hflip)
    with open_source(str(path)) as src:
        assert (src.width, src.height) == (96, 160)
        frames = list(src)
    assert len(frames) == 3
    for f in frames:
        assert f.image.shape == upright.shape and f.image.flags.c_contiguous
        assert np.abs(f.image.astype(int) - upright.astype(int)).mean() < 4.0
