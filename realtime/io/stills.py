"""Known-motion clips from a still photo: video frames whose exact face motion is known.

A still portrait (any RGB image with one face: ``skimage.data.astronaut()``, matplotlib's
``sample_data/grace_hopper.jpg``, or an image file) is moved over a plain background by a sequence of 2-D
similarities (*motions*: [T, 2, 3] affines, still pixels → frame pixels), camera noise is added, and the clip
can be written with PyAV and read back, so the frames are real decoded video. Because the motion is known,
so is the ground truth of every frame: the face mesh (MediaPipe's mesh of the still, moved by the motion),
the FFHQ crop quad, the face centre. Tests, benchmarks and the docs measure tracking, alignment and
paste-back against it::

    from realtime.io.stills import load_still, make_clip, webcam_motion
    clip = make_clip("pan.mp4", webcam_motion(90, seed=1))      # the astronaut, like a webcam: sway, ±5° roll
    clip.frames      # [T, H, W, 3] uint8 decoded frames
    clip.matrices    # [T, 2, 3] still px → frame px (ground truth)
    clip.as_frames() # list[realtime.frames.Frame] with pts/time_base
    true_quads(clip.matrices)                                    # [T, 4, 2] ground-truth FFHQ quads

:class:`OracleLandmarks` is a landmark source (``realtime.vision.tracking.LandmarkSource``) that returns the
ground-truth mesh plus simulated detector noise, for measuring the stabiliser without MediaPipe's own noise.
Coordinates are pixel-index coordinates (pixel i has its centre at i), as everywhere in realtime.vision.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import matplotlib.cbook
import numpy as np
import skimage.data

from models.errors import UserError
from realtime.frames import Frame
from realtime.io.sources import smooth_path
from realtime.vision.align import quad_from_landmarks, quad_size
from realtime.vision.geometry import affine_scale, apply_affine
from realtime.vision.mediapipe_runtime import detect_landmarks
from realtime.vision.tracking import FaceObservation

DEFAULT_SIZE = (640, 480)  # (width, height) of the frames
ASTRONAUT_CENTRE = (225.0, 125.0)  # centre of the astronaut's face in the 512×512 portrait (pixels, by eye)


# ----------------------------------------------------------------------------------------------- stills
@dataclass(eq=False)
class Still:
    """A still portrait with one face."""

    image: np.ndarray  # [H, W, 3] uint8 RGB, read-only
    centre: tuple[float, float]  # the face centre in still pixels: motions move this point
    name: str  # "astronaut", "grace_hopper" or the file name

    @functools.cached_property
    def landmarks(self) -> np.ndarray:
        """MediaPipe's 468-point mesh of the still (static image mode), [468, 3] float64 still px (z·width)."""
        lm = detect_landmarks([self.image])[0]
        if lm is None:
            raise UserError(f"MediaPipe found no face in the still {self.name!r}")
        return lm.astype(np.float64)

    @property
    def face_side(self) -> float:
        """Side of the face's FFHQ crop quad at scale 1, still pixels (needs MediaPipe)."""
        return quad_size(quad_from_landmarks(self.landmarks))


def _read_only(img: np.ndarray) -> np.ndarray:
    img = np.ascontiguousarray(img)
    img.setflags(write=False)
    return img


def _grace_hopper() -> np.ndarray:
    path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


# name → (image loader, face centre in still px). Grace Hopper's centre is the centre of MediaPipe's landmark box
# (170.8…356.2, 130.5…332.6), measured once; tests/test_stills.py checks both against MediaPipe.
NAMED_STILLS: dict[str, tuple[Callable[[], np.ndarray], tuple[float, float]]] = {
    "astronaut": (skimage.data.astronaut, ASTRONAUT_CENTRE),  # 512×512; the default bundle's training identity
    "grace_hopper": (_grace_hopper, (263.5, 231.5)),  # 512 wide × 600 high; never used for training
}


@functools.cache
def _named(name: str) -> Still:
    loader, centre = NAMED_STILLS[name]
    return Still(_read_only(loader()), centre, name)


def load_still(still: str | Path = "astronaut") -> Still:
    """A named still (:data:`NAMED_STILLS`, cached) or an image file (its face centre found with MediaPipe).

    Raises:
        UserError: unreadable file, or no face in it.
    """
    if isinstance(still, str) and still in NAMED_STILLS:
        return _named(still)
    path = Path(still)
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise UserError(f"not a readable image: {path} (or a still name: {', '.join(NAMED_STILLS)})")
    s = Still(_read_only(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)), (0.0, 0.0), path.name)
    lo, hi = s.landmarks[:, :2].min(0), s.landmarks[:, :2].max(0)
    s.centre = (float(lo[0] + hi[0]) / 2, float(lo[1] + hi[1]) / 2)
    return s


def _still(still: Still | str | Path | None) -> Still:
    return still if isinstance(still, Still) else load_still("astronaut" if still is None else still)


# ---------------------------------------------------------------------------------------------- motions
def similarity(angle_deg: float = 0.0, scale: float = 1.0, dst_centre: tuple[float, float] | None = None,
               src_centre: tuple[float, float] = ASTRONAUT_CENTRE, size: tuple[int, int] = DEFAULT_SIZE
               ) -> np.ndarray:
    """[2, 3] similarity taking ``src_centre`` (still px) to ``dst_centre`` (frame px, default: frame centre),
    rotated counter-clockwise on screen by ``angle_deg`` and scaled by ``scale``."""
    if dst_centre is None:
        dst_centre = (size[0] / 2.0, size[1] / 2.0)
    a = np.deg2rad(angle_deg)
    c, s = scale * np.cos(a), scale * np.sin(a)
    r = np.array([[c, s], [-s, c]])  # y axis points down: this turns the face counter-clockwise on screen
    t = np.asarray(dst_centre, np.float64) - r @ np.asarray(src_centre, np.float64)
    return np.concatenate([r, t[:, None]], axis=1)


def static_motion(n: int, scale: float = 1.2, size: tuple[int, int] = DEFAULT_SIZE,
                  centre: tuple[float, float] = ASTRONAUT_CENTRE) -> np.ndarray:
    """The face still at the frame centre. [n, 2, 3]."""
    return np.repeat(similarity(0.0, scale, None, centre, size)[None], n, axis=0)


def moving_motion(n: int, size: tuple[int, int] = DEFAULT_SIZE, speed_px: float = 4.0, turn_deg: float = 0.4,
                  zoom: float = 0.004, scale: float = 1.1, centre: tuple[float, float] = ASTRONAUT_CENTRE
                  ) -> np.ndarray:
    """Steady pan to the right (``speed_px`` px/frame) while turning ``turn_deg``°/frame and zooming by
    ``zoom``/frame; centred on the frame at the clip's midpoint. [n, 2, 3]."""
    w, h = size
    out = []
    for i in range(n):
        k = i - (n - 1) / 2.0
        out.append(similarity(turn_deg * k, scale * (1.0 + zoom * k), (w / 2.0 + speed_px * k, h / 2.0), centre,
                              size))
    return np.stack(out)


def swing_motion(n: int, period: float = 40.0, amp_px: float = 170.0, size: tuple[int, int] = DEFAULT_SIZE,
                 turn_deg: float = 8.0, scale: float = 1.0, centre: tuple[float, float] = ASTRONAUT_CENTRE
                 ) -> np.ndarray:
    """A fast head swing: left and right across the frame by ``amp_px`` (and 20 px up and down) with a
    ``period``-frame sine, turning ±``turn_deg``°; peak speed amp·2π/period px/frame (27 at the defaults,
    810 px/s at 30 fps). [n, 2, 3]."""
    w, h = size
    ph = 2.0 * np.pi * np.arange(n) / period
    return np.stack([similarity(turn_deg * np.sin(a), scale, (w / 2.0 + amp_px * np.sin(a), h / 2.0 + 20.0 * np.cos(a)),
                                centre, size) for a in ph])


def exit_motion(n: int, size: tuple[int, int] = DEFAULT_SIZE, scale: float = 1.1, away_frames: int = 10,
                centre: tuple[float, float] = ASTRONAUT_CENTRE) -> np.ndarray:
    """The face slides out of the frame to the right, stays away ``away_frames`` frames, and slides back. [n, 2, 3]."""
    w, h = size
    travel = (n - away_frames) // 2
    xs = []
    for i in range(n):
        if i < travel:
            x = w / 2 + (w * 0.5 + 300 * scale) * i / max(1, travel - 1)
        elif i < travel + away_frames:
            x = w + 400.0 * scale
        else:
            j = i - travel - away_frames
            x = w + 300 * scale - (w * 0.5 + 300 * scale) * j / max(1, n - travel - away_frames - 1)
        xs.append(similarity(0.0, scale, (x, h / 2.0), centre, size))
    return np.stack(xs)


def webcam_motion(n: int, size: tuple[int, int] = DEFAULT_SIZE, *, seed: int = 0, fps: float = 30.0,
                  scale: float = 1.1, shift: float = 0.04, roll_deg: float = 5.0, zoom: float = 0.04,
                  centre: tuple[float, float] = ASTRONAUT_CENTRE) -> np.ndarray:
    """A person in front of a webcam: the face sways by up to ``shift`` of the frame size, rolls by up to
    ±``roll_deg``° and moves to/from the camera by up to ±``zoom`` (relative scale), each along a smooth random
    path (sums of 0.08–0.5 Hz sinusoids, deterministic by ``seed``) around the frame centre. [n, 2, 3]."""
    w, h = size
    rng = np.random.default_rng(seed)
    px, py, pr, pz = (smooth_path(rng) for _ in range(4))
    out = []
    for i in range(n):
        t = i / fps
        dst = (w * (0.5 + shift * px(t)), h * (0.5 + shift * py(t)))
        out.append(similarity(roll_deg * pr(t), scale * (1.0 + zoom * pz(t)), dst, centre, size))
    return np.stack(out)


# ---------------------------------------------------------------------------------------------- frames
def render(matrices: np.ndarray, size: tuple[int, int] = DEFAULT_SIZE, noise_std: float = 0.0, seed: int = 0,
           background: tuple[int, int, int] = (96, 104, 110), image: np.ndarray | None = None,
           still: Still | str | None = None) -> np.ndarray:
    """Warp the still (``image``, else ``still``, default the astronaut) by each matrix onto a plain background,
    plus Gaussian camera noise of ``noise_std`` levels. → [T, H, W, 3] uint8."""
    src = image if image is not None else _still(still).image
    rng = np.random.default_rng(seed)
    w, h = size
    frames = np.empty((len(matrices), h, w, 3), np.uint8)
    for i, m in enumerate(matrices):
        f = cv2.warpAffine(src, np.asarray(m, np.float64), (w, h), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=background)
        if noise_std > 0:
            f = np.clip(f + rng.normal(0.0, noise_std, f.shape), 0, 255).astype(np.uint8)
        frames[i] = f
    return frames


def write_video(path: Path | str, frames: np.ndarray, fps: int = 30, codec: str = "libx264", crf: int = 12) -> Path:
    """Encode [T, H, W, 3] uint8 RGB frames with PyAV (H.264 yuv420p by default)."""
    path = Path(path)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": str(crf), "preset": "ultrafast"}
        for f in frames:
            for pkt in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                out.mux(pkt)
        for pkt in stream.encode():
            out.mux(pkt)
    return path


def read_video(path: Path | str) -> tuple[np.ndarray, list[int], Fraction]:
    """Decode a video with PyAV → (frames [T, H, W, 3] uint8 RGB, pts per frame, time_base)."""
    with av.open(str(path)) as inp:
        stream = inp.streams.video[0]
        frames, pts = [], []
        for fr in inp.decode(stream):
            frames.append(fr.to_ndarray(format="rgb24"))
            pts.append(int(fr.pts) if fr.pts is not None else len(pts))
        tb = Fraction(stream.time_base) if stream.time_base is not None else Fraction(1, 30)
    return np.stack(frames), pts, tb


@dataclass
class Clip:
    """A decoded known-motion clip and its ground truth."""

    frames: np.ndarray  # [T, H, W, 3] uint8 RGB, as decoded from the file
    matrices: np.ndarray  # [T, 2, 3] still px → frame px
    pts: list[int]
    time_base: Fraction
    path: Path

    def as_frames(self) -> list[Frame]:
        """The clip as :class:`realtime.frames.Frame` objects."""
        return [Frame(image=f, index=i, pts=p, time_base=self.time_base)
                for i, (f, p) in enumerate(zip(self.frames, self.pts, strict=True))]


def make_clip(path: Path | str, matrices: np.ndarray, size: tuple[int, int] = DEFAULT_SIZE, fps: int = 30,
              noise_std: float = 2.0, seed: int = 0, still: Still | str | None = None) -> Clip:
    """Render, write with PyAV to ``path`` and read back. The returned frames are the decoded ones."""
    frames = render(matrices, size, noise_std, seed, still=still)
    write_video(path, frames, fps)
    decoded, pts, tb = read_video(path)
    assert decoded.shape == frames.shape, (decoded.shape, frames.shape)
    return Clip(decoded, np.asarray(matrices, np.float64), pts, tb, Path(path))


# ---------------------------------------------------------------------------------------- ground truth
def true_landmarks(matrix: np.ndarray, still: Still | str | None = None) -> np.ndarray:
    """Ground-truth mesh [468, 3] float64 (frame px) for one frame's matrix [2, 3]; z scaled with the motion."""
    ref = _still(still).landmarks
    out = np.empty_like(ref)
    out[:, :2] = apply_affine(matrix, ref[:, :2])
    out[:, 2] = ref[:, 2] * affine_scale(matrix)
    return out


def true_quads(matrices: np.ndarray, still: Still | str | None = None) -> np.ndarray:
    """FFHQ quads [T, 4, 2] float64 of the ground-truth mesh."""
    return np.stack([quad_from_landmarks(true_landmarks(m, still)) for m in matrices]).astype(np.float64)


class OracleLandmarks:
    """A landmark source returning the ground-truth mesh plus simulated detector noise.

    Noise per frame: each point gets iid N(0, point_px²) per axis, and the whole mesh shifts by
    N(0, shift_px²) and scales about its centre by 1 + N(0, scale_std²) — MediaPipe's own jitter is
    dominated by such ROI-driven common motion. Frames whose face centre is outside the frame give no face.
    """

    def __init__(self, matrices: np.ndarray, point_px: float = 1.0, shift_px: float = 1.5,
                 scale_std: float = 0.006, seed: int = 0, still: Still | str | None = None) -> None:
        self.matrices = np.asarray(matrices, np.float64)
        self.point_px, self.shift_px, self.scale_std = point_px, shift_px, scale_std
        self.seed = seed
        self.still = _still(still)
        self.reset()

    def reset(self) -> None:
        self.i = 0
        self.rng = np.random.default_rng(self.seed)

    def process(self, image: np.ndarray) -> list[FaceObservation]:
        m = self.matrices[min(self.i, len(self.matrices) - 1)]
        self.i += 1
        lm = true_landmarks(m, self.still)
        h, w = image.shape[:2]
        c = lm[:, :2].mean(0)
        if not (0 <= c[0] < w and 0 <= c[1] < h):
            return []
        r = self.rng
        lm[:, :2] = c + (lm[:, :2] - c) * (1.0 + r.normal(0.0, self.scale_std))
        lm[:, :2] += r.normal(0.0, self.shift_px, 2) + r.normal(0.0, self.point_px, (lm.shape[0], 2))
        return [FaceObservation(lm.astype(np.float32), 0.9, 0, self.i == 1)]

    def follow(self, moved: dict[int, np.ndarray]) -> None:
        pass  # the oracle knows where the face is: nothing to move

    def close(self) -> None:
        pass
