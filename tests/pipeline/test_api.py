"""The public Python API used the way its docstring shows: ``from realtime import Filter, FilterTrack, …``."""

from __future__ import annotations

import asyncio
import fractions

import av
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from models.errors import UserError
from realtime import Filter, FilterTrack, open_sink, open_source  # the lazy re-exports the docstring promises
from realtime.io.stills import load_still
from tests.media import probe


def portrait(size: tuple[int, int] = (320, 240)) -> np.ndarray:
    """A real face (Grace Hopper, never trained on) in a [H, W, 3] uint8 RGB frame."""
    still = load_still("grace_hopper")
    img = still.image
    h = min(img.shape[0], img.shape[1] * size[1] // size[0])
    w = h * size[0] // size[1]
    cut = img[:h, (img.shape[1] - w) // 2:(img.shape[1] - w) // 2 + w]
    return np.ascontiguousarray(av.VideoFrame.from_ndarray(cut, format="rgb24")
                                .reformat(width=size[0], height=size[1]).to_ndarray(format="rgb24"))


def test_filter_one_frame_edits_and_bad_input(tiny_bundle):
    frame = portrait()
    with Filter(tiny_bundle, {"brighter": 1.0}, backend="torch", composite="regenerate") as f:
        assert "brighter" in f.edit_names and f.edits["brighter"] == 1.0
        out = f(frame, timestamp=0.0)
        assert out.image.shape == frame.shape and out.image.dtype == np.uint8
        assert out.face and out.stats["composite"] == "regenerate" and "generate" in out.stats["stages_ms"]
        assert not np.array_equal(out.image, frame)
        f.set_edit("brighter", 0.0)
        with pytest.raises(UserError, match="no_such_edit"):
            f.set_edit("no_such_edit", 1.0)
        with pytest.raises(UserError, match="uint8"):
            f(frame.astype(np.float32))
        other = f.stream()  # a second stream on the same engine, its own state
        assert other.engine is f.engine and other.state is not f.state
        assert other(frame).image.shape == frame.shape
        other.close()
    with pytest.raises(UserError, match="unknown edit|no_such_edit"):
        Filter(tiny_bundle, {"no_such_edit": 1.0}, backend="torch")


def test_filter_run_source_into_sink(tiny_bundle, tmp_path):
    out = tmp_path / "out.mp4"
    with Filter(tiny_bundle, backend="torch") as f, open_source("demo:?seconds=1&fps=10&size=160x120") as src, \
            open_sink(str(out), width=160, height=120, fps=10) as sink:
        stats = f.run(src, sink)
    assert stats.frames_out == 10
    info = probe(out)
    assert info.frames == 10 and set(info.sizes) == {(160, 120)} and info.decode_error is None


class StillTrack(MediaStreamTrack):
    """An aiortc source track: ``count`` copies of one frame at 10 fps, then the end of the stream."""

    kind = "video"

    def __init__(self, image: np.ndarray, count: int):
        super().__init__()
        self.image, self.count, self.sent = image, count, 0

    async def recv(self) -> av.VideoFrame:
        if self.sent >= self.count:
            self.stop()
            raise MediaStreamError
        await asyncio.sleep(0.02)
        vf = av.VideoFrame.from_ndarray(self.image, format="rgb24")
        vf.pts, vf.time_base = self.sent, fractions.Fraction(1, 10)
        self.sent += 1
        return vf


def test_filter_track_filters_an_aiortc_track(tiny_bundle):
    """FilterTrack over a finite source track: filtered frames of the same size come out of recv() until the
    source ends, and the worker threads stop."""
    frame = portrait()

    async def main() -> list[av.VideoFrame]:
        flt = Filter(tiny_bundle, backend="torch", composite="regenerate")
        track = FilterTrack(StillTrack(frame, 12), flt)
        got = []
        try:
            while True:
                got.append(await asyncio.wait_for(track.recv(), 30))
        except MediaStreamError:
            pass
        finally:
            await asyncio.get_running_loop().run_in_executor(None, track.close)
            flt.close()
        return got

    got = asyncio.run(main())
    assert got, "no frame came out of the FilterTrack"
    images = [g.to_ndarray(format="rgb24") for g in got]
    assert all(i.shape == frame.shape for i in images)
    assert any(not np.array_equal(i, frame) for i in images)  # the face was regenerated
