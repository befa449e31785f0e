"""Synthetic face clips with known similarity motion, made from ``skimage.data.astronaut()``.

Small API for tests (and anyone else's tests)::

    from clips import make_clip, moving_motion   # tests/ is on sys.path (conftest); or: from tests.clips import ...
    clip = make_clip(tmp_path / "pan.mp4", moving_motion(45))   # written with PyAV, read back decoded
    clip.frames      # [T, H, W, 3] uint8 decoded frames
    clip.matrices    # [T, 2, 3] astronaut pixels → frame pixels (ground truth)
    clip.as_frames() # list[realtime.frames.Frame] with pts/time_base

Motions are arrays of [T, 2, 3] affines from astronaut pixel coordinates to frame pixel coordinates.
:class:`OracleLandmarks` is a landmark source (``realtime.tracking.LandmarkSource``) that returns the
ground-truth mesh (MediaPipe's mesh of the still portrait moved by the clip's motion) plus controlled noise.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

FACE_CENTRE = (225.0, 125.0)  # centre of the astronaut's face in the 512×512 portrait (pixels)
DEFAULT_SIZE = (640, 480)  # (width, height)


@functools.cache
def astronaut() -> np.ndarray:
    """The scikit-image astronaut portrait, [512, 512, 3] uint8 RGB (read-only)."""
    import skimage.data

    img = np.ascontiguousarray(skimage.data.astronaut())
    img.setflags(write=False)
    return img


def similarity(angle_deg: float = 0.0, scale: float = 1.0, dst_centre: tuple[float, float] | None = None,
               src_centre: tuple[float, float] = FACE_CENTRE, size: tuple[int, int] = DEFAULT_SIZE) -> np.ndarray:
    """[2, 3] similarity taking ``src_centre`` (astronaut px) to ``dst_centre`` (frame px, default: frame
    centre), rotated counter-clockwise on screen by ``angle_deg`` and scaled by ``scale``."""
    if dst_centre is None:
        dst_centre = (size[0] / 2.0, size[1] / 2.0)
    a = np.deg2rad(angle_deg)
    c, s = scale * np.cos(a), scale * np.sin(a)
    r = np.array([[c, s], [-s, c]])  # y axis points down: this turns the face counter-clockwise on screen
    t = np.asarray(dst_centre, np.float64) - r @ np.asarray(src_centre, np.float64)
    return np.concatenate([r, t[:, None]], axis=1)


def transform(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Points [..., 2] through a [2, 3] affine."""
    m = np.asarray(m, np.float64)
    return np.asarray(pts, np.float64) @ m[:, :2].T + m[:, 2]


def static_motion(n: int, scale: float = 1.2, size: tuple[int, int] = DEFAULT_SIZE) -> np.ndarray:
    """The face still at the frame centre. [n, 2, 3]."""
    return np.repeat(similarity(0.0, scale, size=size)[None], n, axis=0)


def moving_motion(n: int, size: tuple[int, int] = DEFAULT_SIZE, speed_px: float = 4.0, turn_deg: float = 0.4,
                  zoom: float = 0.004, scale: float = 1.1) -> np.ndarray:
    """Steady pan to the right (``speed_px`` px/frame) while turning ``turn_deg``°/frame and zooming by
    ``zoom``/frame; centred on the frame at the clip's midpoint. [n, 2, 3]."""
    w, h = size
    out = []
    for i in range(n):
        k = i - (n - 1) / 2.0
        out.append(similarity(turn_deg * k, scale * (1.0 + zoom * k), (w / 2.0 + speed_px * k, h / 2.0), size=size))
    return np.stack(out)


def exit_motion(n: int, size: tuple[int, int] = DEFAULT_SIZE, scale: float = 1.1, away_frames: int = 10) -> np.ndarray:
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
        xs.append(similarity(0.0, scale, (x, h / 2.0), size=size))
    return np.stack(xs)


def render(matrices: np.ndarray, size: tuple[int, int] = DEFAULT_SIZE, noise_std: float = 0.0, seed: int = 0,
           background: tuple[int, int, int] = (96, 104, 110), image: np.ndarray | None = None) -> np.ndarray:
    """Warp the portrait by each matrix onto a plain background, plus camera noise. → [T, H, W, 3] uint8."""
    src = astronaut() if image is None else image
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
    """A decoded synthetic clip and its ground truth."""

    frames: np.ndarray  # [T, H, W, 3] uint8 RGB, as decoded from the file
    matrices: np.ndarray  # [T, 2, 3] astronaut px → frame px
    pts: list[int]
    time_base: Fraction
    path: Path

    def as_frames(self) -> list:
        """The clip as ``realtime.frames.Frame`` objects."""
        from realtime.frames import Frame

        return [Frame(image=f, index=i, pts=p, time_base=self.time_base)
                for i, (f, p) in enumerate(zip(self.frames, self.pts))]


def make_clip(path: Path | str, matrices: np.ndarray, size: tuple[int, int] = DEFAULT_SIZE, fps: int = 30,
              noise_std: float = 2.0, seed: int = 0) -> Clip:
    """Render, write with PyAV to ``path`` and read back. The returned frames are the decoded ones."""
    frames = render(matrices, size, noise_std, seed)
    write_video(path, frames, fps)
    decoded, pts, tb = read_video(path)
    assert decoded.shape == frames.shape, (decoded.shape, frames.shape)
    return Clip(decoded, np.asarray(matrices, np.float64), pts, tb, Path(path))


# ----------------------------------------------------------------------------------- ground truth mesh


@functools.cache
def astronaut_landmarks() -> np.ndarray:
    """MediaPipe's 468-point mesh of the still portrait (static mode), [468, 3] float64 astronaut px."""
    import mediapipe as mp

    img = astronaut()
    with warnings.catch_warnings():  # protobuf's "label() is deprecated" from inside MediaPipe
        warnings.simplefilter("ignore", DeprecationWarning)
        fm = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1)
    with fm:
        res = fm.process(np.array(img))
    if not res.multi_face_landmarks:
        raise RuntimeError("MediaPipe found no face in the astronaut portrait")
    h, w = img.shape[:2]
    return np.array([[p.x * w - 0.5, p.y * h - 0.5, p.z * w] for p in res.multi_face_landmarks[0].landmark[:468]])


def true_landmarks(matrix: np.ndarray) -> np.ndarray:
    """Ground-truth mesh [468, 3] (frame px) for one frame's matrix [2, 3]; z scaled with the motion."""
    ref = astronaut_landmarks()
    out = np.empty_like(ref)
    out[:, :2] = transform(matrix, ref[:, :2])
    out[:, 2] = ref[:, 2] * float(np.sqrt(abs(np.linalg.det(np.asarray(matrix)[:, :2]))))
    return out


class OracleLandmarks:
    """A landmark source returning the ground-truth mesh plus simulated detector noise.

    Noise per frame: each point gets iid N(0, point_px²) per axis, and the whole mesh shifts by
    N(0, shift_px²) and scales about its centre by 1 + N(0, scale_std²) — MediaPipe's own jitter is
    dominated by such ROI-driven common motion. Frames whose face centre is outside the frame give no face.
    """

    def __init__(self, matrices: np.ndarray, point_px: float = 1.0, shift_px: float = 1.5,
                 scale_std: float = 0.006, seed: int = 0) -> None:
        self.matrices = np.asarray(matrices, np.float64)
        self.point_px, self.shift_px, self.scale_std = point_px, shift_px, scale_std
        self.seed = seed
        self.reset()

    def reset(self) -> None:
        self.i = 0
        self.rng = np.random.default_rng(self.seed)

    def process(self, image: np.ndarray) -> list:
        from realtime.vision.tracking import FaceObservation

        m = self.matrices[min(self.i, len(self.matrices) - 1)]
        self.i += 1
        lm = true_landmarks(m)
        h, w = image.shape[:2]
        c = lm[:, :2].mean(0)
        if not (0 <= c[0] < w and 0 <= c[1] < h):
            return []
        r = self.rng
        lm[:, :2] = c + (lm[:, :2] - c) * (1.0 + r.normal(0.0, self.scale_std))
        lm[:, :2] += r.normal(0.0, self.shift_px, 2) + r.normal(0.0, self.point_px, (lm.shape[0], 2))
        return [FaceObservation(lm.astype(np.float32), 0.9, 0, self.i == 1)]

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------------------- metrics


def true_quads(matrices: np.ndarray) -> np.ndarray:
    """FFHQ quads [T, 4, 2] of the ground-truth mesh."""
    from realtime.vision.align import quad_from_landmarks

    return np.stack([quad_from_landmarks(true_landmarks(m)) for m in matrices]).astype(np.float64)


def crop_px(quads: np.ndarray, size: int) -> np.ndarray:
    """Frame px → crop px factor per frame (size / quad side). quads [T, 4, 2] → [T]."""
    q = np.asarray(quads, np.float64)
    side = 0.5 * (np.linalg.norm(q[:, 3] - q[:, 0], axis=-1) + np.linalg.norm(q[:, 1] - q[:, 0], axis=-1))
    return size / side


def jitter(quads: np.ndarray, truth: np.ndarray, size: int = 256) -> float:
    """Mean frame-to-frame corner movement not explained by the true motion, in crop px at ``size``.

    quads, truth: [T, 4, 2] frame px. For a still face this is plain frame-to-frame crop jitter.
    """
    q, g = np.asarray(quads, np.float64), np.asarray(truth, np.float64)
    d = np.diff(q - g, axis=0)  # [T-1, 4, 2]
    return float((np.linalg.norm(d, axis=-1).mean(-1) * crop_px(g[1:], size)).mean())


def alignment_error(quads: np.ndarray, truth: np.ndarray, size: int = 256, relative: bool = True) -> np.ndarray:
    """Per-frame mean corner error [T] in crop px at ``size``.

    relative=True: how well the crop follows the known motion. Every tracked quad is pulled back into the
    first frame by the inverse true motion, their mean is the face's tracked quad "at rest", and each frame
    is compared with that quad carried forward by the true motion. A constant bias of the detector on this
    particular face cancels; everything that moves differently from the face counts.
    relative=False: plain distance to the ground-truth quads.
    """
    q, g = np.asarray(quads, np.float64), np.asarray(truth, np.float64)
    scale = crop_px(g, size)
    if not relative:
        return np.linalg.norm(q - g, axis=-1).mean(-1) * scale
    motions = [_fit_similarity(g[0], g[t]) for t in range(len(q))]  # exact: quads move by the similarity
    back = [transform(_invert(r), q[t]) for t, r in enumerate(motions)]
    rest = np.mean(back, axis=0)
    return np.asarray([np.linalg.norm(q[t] - transform(r, rest), axis=-1).mean() * scale[t]
                       for t, r in enumerate(motions)])


def _invert(m: np.ndarray) -> np.ndarray:
    a = np.linalg.inv(m[:, :2])
    return np.concatenate([a, (-a @ m[:, 2])[:, None]], axis=1)


def _fit_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity [2, 3] mapping points src [K, 2] → dst [K, 2]."""
    m, _ = cv2.estimateAffinePartial2D(np.asarray(src, np.float32), np.asarray(dst, np.float32), method=cv2.LMEDS)
    if m is None:
        raise ValueError("cannot fit a similarity")
    return m.astype(np.float64)


def lag_frames(quads: np.ndarray, truth: np.ndarray, max_lag: float = 5.0, step: float = 0.05) -> float:
    """Delay (frames) that best aligns the tracked quad centres with the true ones (>0: tracked lags)."""
    q = np.asarray(quads, np.float64).reshape(len(quads), -1)
    g = np.asarray(truth, np.float64).reshape(len(truth), -1)
    n = len(q)
    t = np.arange(n, dtype=np.float64)
    best, best_k = np.inf, 0.0
    lo = int(np.ceil(max_lag)) + 1
    for k in np.arange(-max_lag, max_lag + step / 2, step):
        idx = t[lo : n - lo] - k
        gi = np.stack([np.interp(idx, t, g[:, j]) for j in range(g.shape[1])], axis=1)
        err = float(((q[lo : n - lo] - gi) ** 2).sum(1).mean())
        if err < best:
            best, best_k = err, float(k)
    return best_k
