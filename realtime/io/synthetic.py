"""Synthetic talking-head clips with ground truth, made from real portraits (DESIGN §4, issue 5 item 1).

A portrait (``skimage.data.astronaut()`` by default, or any folder of images/videos) gets its 468 MediaPipe
face-mesh landmarks once. Every frame is then a landmark-driven piecewise-affine warp of that portrait:

1. **Expression**: five linear displacement fields on the mesh (``jaw_open``, ``smile``, ``blink``,
   ``brow_raise``, ``pucker``), built once per portrait in a face-local frame (eye line = u, down = v, unit =
   inter-ocular distance). An open jaw gets a painted mouth interior (dark cavity, upper/lower teeth hint).
2. **Head pose**: the deformed 3-D landmarks (MediaPipe's z, in pixels) are rotated about a head centre
   behind the face (``R = Rz(roll)·Rx(pitch)·Ry(yaw)``) and projected orthographically. A ring of anchors
   on the head outline turns with the head, an outer ring stays put, so hair/neck bend smoothly.
3. **Camera**: a global similarity (translation, scale, in-plane rotation) of the whole frame.
4. **Photometric**: gain, linear light gradient, white balance, Gaussian blur, sensor noise, JPEG.

The warp is a backward map: Delaunay triangles over (mesh + anchor rings) are rasterised in the output frame
far-to-near (painter's algorithm, so a turned head occludes its far cheek), each pixel takes its triangle's
affine map back into the portrait, and one ``cv2.remap`` samples it. Outside the outer ring the map is the
inverse similarity.

Ground truth per frame: the 468 landmarks in output pixels after the warp (pixel-index coordinates, pixel i
has its centre at i, like ``realtime.tracking``; z in the same pixel scale), the pose (yaw, pitch, roll in
degrees) and the expression parameters. Pose and expression are relative to the source portrait (its own
pose/expression counts as zero). Conventions: yaw > 0 turns the nose towards the image's right (+x), pitch > 0
turns it up (−y), roll > 0 rotates the face clockwise on screen; the camera rotation adds to roll.

Frame ``i`` depends only on (config, portraits, i): clips are deterministic by seed and randomly accessible
(:class:`SyntheticClip` ``[i]``). Nothing is cached on disk.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import av
import cv2
import numpy as np
from scipy.spatial import Delaunay
from skimage import data as skdata

from models.config import opt
from models.errors import UserError
from realtime.vision.geometry import invert_affine
from realtime.vision.mediapipe_runtime import detect_landmarks
from realtime.vision.topology import (
    BROW_LEFT_LOWER,
    BROW_LEFT_UPPER,
    BROW_RIGHT_LOWER,
    BROW_RIGHT_UPPER,
    CHIN,
    EYE_LEFT_CORNERS,
    EYE_LEFT_LOWER,
    EYE_LEFT_UPPER,
    EYE_RIGHT_CORNERS,
    EYE_RIGHT_LOWER,
    EYE_RIGHT_UPPER,
    FACE_OVAL,
    FOREHEAD_TOP,
    LIPS_INNER_LOOP,
    LIPS_LOWER_INNER,
    LIPS_LOWER_OUTER,
    LIPS_UPPER_INNER,
    LIPS_UPPER_OUTER,
    MOUTH_CORNERS_INNER,
    MOUTH_CORNERS_OUTER,
    NOSE_RIDGE,
    NUM_LANDMARKS,
    rotate,
)

if TYPE_CHECKING:
    from realtime.io.sources import DemoOptions

log = logging.getLogger(__name__)

EXPRESSIONS = ("jaw_open", "smile", "blink", "brow_raise", "pucker")
IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})
VIDEO_EXTS = frozenset({".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".ts", ".flv"})

# Mesh index sets (realtime.vision.topology; "left" is the image's left) in the groupings this module uses.
BROW_LEFT = BROW_LEFT_UPPER + BROW_LEFT_LOWER
BROW_RIGHT = BROW_RIGHT_UPPER + BROW_RIGHT_LOWER
# the inner-lip loop traversed upper lip first (the painted mouth's anti-aliased edge depends on vertex order)
MOUTH_INNER_LOOP = rotate(LIPS_INNER_LOOP[::-1], MOUTH_CORNERS_INNER[0])
CONTOUR_POINTS = tuple(dict.fromkeys(
    FACE_OVAL + BROW_LEFT + BROW_RIGHT + EYE_LEFT_UPPER + EYE_LEFT_LOWER + EYE_LEFT_CORNERS + EYE_RIGHT_UPPER
    + EYE_RIGHT_LOWER + EYE_RIGHT_CORNERS + LIPS_UPPER_OUTER + LIPS_LOWER_OUTER + LIPS_UPPER_INNER + LIPS_LOWER_INNER
    + MOUTH_CORNERS_OUTER + MOUTH_CORNERS_INNER + NOSE_RIDGE
))  # landmarks drawn on contact sheets
RING_DEPTH = 0.2  # head-outline anchors' depth: 0 = the nearest face-oval point's depth, 1 = the rotation axis
JAW_DROP = 0.36  # chin drop at jaw_open = 1, in inter-ocular distances


# ----------------------------------------------------------------------------------------------- config
@dataclass
class SynthConfig:
    """One synthetic clip. Amplitudes are maxima; the random trajectories stay inside them."""

    width: int = opt(640, "output frame width in pixels", min=16)
    height: int = opt(480, "output frame height in pixels", min=16)
    fps: float = opt(30.0, "frames per second (trajectories are functions of time, so fps only changes sampling)",
                     min=0.0)
    seconds: float = opt(5.0, "clip length; math.inf for an endless clip", min=0.0)
    seed: int = opt(0, "everything random derives from it (trajectories, portrait choice, noise)")
    face_scale: float = opt(0.42, "face height (forehead top to chin) as a fraction of the frame height", min=0.0,
                            max=2.0)
    max_yaw: float = opt(25.0, "degrees, |yaw| bound (nose to image right is positive)", min=0.0)
    max_pitch: float = opt(25.0, "degrees, |pitch| bound (nose up is positive)", min=0.0)
    max_roll: float = opt(25.0, "degrees, |roll| bound including the camera rotation (clockwise is positive)", min=0.0)
    expression_strength: float = opt(1.0, "scales every expression trajectory (0: the portrait's own expression)",
                                     min=0.0)
    motion_strength: float = opt(1.0, "scales head pose and camera motion amplitudes (0: static head and camera)",
                                 min=0.0)
    lighting: bool = opt(True, "gain, linear light gradient and white-balance drift")
    blur: bool = opt(True, "varying Gaussian blur (defocus / motion softness)")
    noise: bool = opt(True, "additive sensor noise")
    jpeg: bool = opt(True, "JPEG compression artefacts")
    portrait_index: int | None = opt(None, "which portrait to use (None: chosen from the seed)", min=0)
    jitter: float = opt(1.0, "scales fast small head jitter on top of the slow trajectories", min=0.0)


@dataclass
class SyntheticFrame:
    """One generated frame and its ground truth."""

    image: np.ndarray  # [H, W, 3] uint8 RGB
    landmarks: np.ndarray  # [468, 3] float32, image pixels (x, y, z·scale) — ground truth after the warp
    pose: np.ndarray  # [3] float32 yaw, pitch, roll in degrees, relative to the source portrait
    expression: dict[str, float]  # jaw_open, smile, blink, brow_raise, pucker in [0, 1]
    index: int  # frame number in the clip


@dataclass
class Portrait:
    """A source face: the image and its face-mesh landmarks (found once with MediaPipe)."""

    image: np.ndarray  # [H, W, 3] uint8 RGB
    landmarks: np.ndarray  # [468, 3] float32, pixel-index coords (x, y) and z in the same pixel scale
    name: str = ""  # where it came from (file name, "astronaut", "clip.mp4#12")


@dataclass
class FrameParams:
    """Everything that defines one frame, before rendering. ``SyntheticClip.params(i)`` draws these."""

    yaw: float = 0.0  # head yaw, degrees
    pitch: float = 0.0  # head pitch, degrees
    roll: float = 0.0  # head roll, degrees (excluding the camera rotation)
    expression: dict[str, float] = field(default_factory=lambda: dict.fromkeys(EXPRESSIONS, 0.0))  # in [0, 1]
    tx: float = 0.0  # camera translation x, fraction of the frame width
    ty: float = 0.0  # camera translation y, fraction of the frame height
    scale: float = 1.0  # camera zoom relative to cfg.face_scale
    angle: float = 0.0  # camera in-plane rotation, degrees clockwise
    gain: float = 1.0  # global brightness gain
    gradient: tuple[float, float] = (0.0, 0.0)  # light gradient: relative gain change across half the frame (x, y)
    white_balance: tuple[float, float, float] = (1.0, 1.0, 1.0)  # per-channel RGB gains
    blur_sigma: float = 0.0  # Gaussian blur sigma in pixels (0: none)
    noise_sigma: float = 0.0  # additive noise sigma in 8-bit levels (0: none)
    jpeg_quality: int = 0  # JPEG quality 1..100 (0: no compression)

    @property
    def pose(self) -> np.ndarray:
        """[3] float32 (yaw, pitch, roll + camera angle) in degrees."""
        return np.array([self.yaw, self.pitch, self.roll + self.angle], np.float32)


# -------------------------------------------------------------------------------------------- portraits
def _video_frames(path: Path, max_frames: int) -> list[np.ndarray]:
    try:
        with av.open(str(path)) as c:
            vs = c.streams.video[0]
            total = vs.frames or 0
            step = max(1, total // max_frames) if total else 15
            frames = [f.to_ndarray(format="rgb24") for i, f in enumerate(c.decode(vs)) if i % step == 0]
    except (av.error.FFmpegError, IndexError, OSError) as exc:
        log.warning("skipping %s: cannot decode (%s)", path, exc)
        return []
    return frames[:max_frames]


@functools.lru_cache(maxsize=1)
def _astronaut() -> Portrait:
    img = np.ascontiguousarray(skdata.astronaut())  # [512, 512, 3] uint8
    lm = detect_landmarks([img])[0]
    if lm is None:  # pragma: no cover - MediaPipe finds it
        raise UserError("MediaPipe found no face in skimage.data.astronaut()")
    return Portrait(img, lm, "astronaut")


def load_portraits(folder: str | Path | None = None, *, frames_per_video: int = 8,
                   max_side: int = 1024, mirror: bool = False) -> list[Portrait]:
    """Portraits with landmarks. None: ``skimage.data.astronaut()``.

    ``folder`` may be a folder (images and videos inside, sorted by name, not recursive) or one image/video
    file. Videos contribute up to ``frames_per_video`` evenly spaced frames. Images larger than ``max_side``
    are downscaled. Images without a detectable face are skipped with a warning. ``mirror`` adds each
    portrait flipped left-right (its landmarks found again by MediaPipe, so indices keep their meaning):
    twice the identities for training.

    Raises:
        UserError: missing path, or no face found in anything it holds.
    """
    if folder is None:
        p = _astronaut()
        out = [Portrait(p.image.copy(), p.landmarks.copy(), p.name)]
        return _with_mirrors(out) if mirror else out
    root = Path(folder)
    if not root.exists():
        raise UserError(f"portrait folder not found: {root}")
    files = sorted(f for f in root.iterdir() if f.is_file()) if root.is_dir() else [root]
    images: list[tuple[np.ndarray, str]] = []
    for f in files:
        ext = f.suffix.lower()
        if ext in IMAGE_EXTS:
            bgr = cv2.imread(str(f), cv2.IMREAD_COLOR)
            if bgr is None:
                log.warning("skipping %s: not a readable image", f)
                continue
            images.append((cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), f.name))
        elif ext in VIDEO_EXTS:
            images += [(fr, f"{f.name}#{k}") for k, fr in enumerate(_video_frames(f, frames_per_video))]
    resized = []
    for img, name in images:
        s = max_side / max(img.shape[:2])
        if s < 1:
            img = cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
        resized.append((np.ascontiguousarray(img), name))
    found = detect_landmarks([im for im, _ in resized])
    out = []
    for (img, name), lm in zip(resized, found):
        if lm is None:
            log.warning("skipping %s: no face found", name)
            continue
        out.append(Portrait(img, lm, name))
    if not out:
        raise UserError(f"no face found in any image or video in {root} (looked at {len(resized)} images)")
    return _with_mirrors(out) if mirror else out


def _with_mirrors(portraits: list[Portrait]) -> list[Portrait]:
    flipped = [np.ascontiguousarray(p.image[:, ::-1]) for p in portraits]
    found = detect_landmarks(flipped)
    return portraits + [Portrait(img, lm, p.name + "~mirror")
                        for p, img, lm in zip(portraits, flipped, found) if lm is not None]


# ---------------------------------------------------------------------------------------- face geometry
def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


@dataclass
class _FaceModel:
    """Per-portrait geometry, in the (resized, padded) portrait canvas."""

    rest: np.ndarray  # [468, 3] float64 landmarks
    basis: np.ndarray  # [5, 468, 3] float64 displacement per unit expression (order EXPRESSIONS)
    center: np.ndarray  # [3] rotation centre (x, y, z) of the head
    inner_ring: np.ndarray  # [Ni, 3] anchors on the head outline (turn with the head, z = centre z)
    ring_jaw: np.ndarray  # [Ni, 3] displacement of those anchors at jaw_open = 1
    outer_ring: np.ndarray  # [No, 2] anchors that only follow the camera
    triangles: np.ndarray  # [T, 3] int32 Delaunay triangles over (rest, inner ring, outer ring) in 2-D
    orientation: np.ndarray  # [T] sign of the signed area in the portrait; 0 = never culled (edge-on / anchors)
    sort_bias: np.ndarray  # [T] added to the painter's depth: anchor triangles are drawn before face ones
    iod: float  # inter-ocular distance in pixels
    face_h: float  # forehead-top-to-chin distance in pixels


def _face_frame(lm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Face-local frame: origin (eye midpoint), unit u (eye line), unit v (down), inter-ocular distance."""
    xy = lm[:, :2]
    eye_l = xy[list(EYE_LEFT_UPPER + EYE_LEFT_LOWER + EYE_LEFT_CORNERS)].mean(0)
    eye_r = xy[list(EYE_RIGHT_UPPER + EYE_RIGHT_LOWER + EYE_RIGHT_CORNERS)].mean(0)
    d = eye_r - eye_l
    iod = float(np.hypot(*d))
    u = d / iod
    v = np.array([-u[1], u[0]])
    return (eye_l + eye_r) * 0.5, u, v, iod


def _expression_basis(lm: np.ndarray) -> np.ndarray:
    """[5, 468, 3] displacement fields (pixels per unit parameter) for EXPRESSIONS on landmarks lm [468, 3]."""
    o, eu, ev, D = _face_frame(lm)
    rel = lm[:, :2] - o
    u = rel @ eu / D  # [468] face-local coordinates in inter-ocular units
    v = rel @ ev / D
    n = len(lm)
    fields = np.zeros((len(EXPRESSIONS), n, 2))  # in (u, v) units of D
    dz = np.zeros((len(EXPRESSIONS), n))

    # ---- jaw_open: everything below the lip line moves down, lens-shaped at the lips, hinge at the ears
    corners = list(MOUTH_CORNERS_OUTER + MOUTH_CORNERS_INNER)
    u0 = float(u[list(MOUTH_CORNERS_OUTER)].mean())
    a = float(abs(u[MOUTH_CORNERS_OUTER[1]] - u[MOUTH_CORNERS_OUTER[0]]) * 0.5)  # mouth half width
    # lip line: average of upper and lower inner lip at each u (interpolate both curves)
    uu = np.linspace(u0 - a, u0 + a, 41)
    up_curve = np.interp(uu, *_sorted_uv(u, v, list(LIPS_UPPER_INNER + MOUTH_CORNERS_INNER)))
    lo_curve = np.interp(uu, *_sorted_uv(u, v, list(LIPS_LOWER_INNER + MOUTH_CORNERS_INNER)))
    line = np.interp(u, uu, (up_curve + lo_curve) * 0.5)  # flat beyond the corners
    v_lower_lip = float(v[list(LIPS_LOWER_OUTER)].max())
    w_low = _smoothstep((v - line) / 0.06 + 0.5)
    w_low[list(LIPS_UPPER_INNER + LIPS_UPPER_OUTER)] = 0.0
    w_low[list(LIPS_LOWER_INNER + LIPS_LOWER_OUTER)] = 1.0
    w_low[corners] = 0.5
    du = np.abs(u - u0)
    lip_profile = np.sqrt(np.clip(1.0 - (du / (a * 1.15)) ** 2, 0.0, 1.0))
    jaw_profile = np.clip(1.0 - (du / 1.3) ** 3, 0.0, 1.0)  # the jaw is rigid; its hinge is near the ears
    t = _smoothstep((v - v_lower_lip) / 0.3)
    profile = lip_profile * (1 - t) + jaw_profile * t
    profile = np.maximum(profile, jaw_profile * 0.6)  # cheeks beside the mouth stretch a little too
    fields[0, :, 1] = JAW_DROP * w_low * profile
    # the mouth narrows slightly as it opens
    near_mouth = np.exp(-((u - u0) ** 2 + (v - line) ** 2) / (2 * (a * 0.9) ** 2))
    fields[0, :, 0] = -0.06 * np.sign(u - u0) * np.clip(du / a, 0, 1) * near_mouth

    # ---- smile: mouth corners up and out, cheeks lift, lower lids rise a little
    for c in MOUTH_CORNERS_OUTER:
        cu, cv = u[c], v[c]
        side = np.sign(cu - u0)
        g = np.exp(-((u - cu) ** 2 + (v - cv) ** 2) / (2 * 0.28**2))
        g *= _smoothstep((u - u0) * side / (a * 0.5))  # only its own side of the mouth
        fields[1, :, 0] += side * 0.10 * g
        fields[1, :, 1] += -0.12 * g
        cheek = np.exp(-((u - (cu + side * 0.12)) ** 2 + (v - (cv - 0.35)) ** 2) / (2 * 0.25**2))
        fields[1, :, 1] += -0.05 * cheek
    for lower in (EYE_LEFT_LOWER, EYE_RIGHT_LOWER):
        fields[1, list(lower), 1] += -0.025

    # ---- blink: upper lid descends to the lower lid; the lid skin above stretches down
    eyes = ((EYE_LEFT_UPPER, EYE_LEFT_LOWER, EYE_LEFT_CORNERS), (EYE_RIGHT_UPPER, EYE_RIGHT_LOWER, EYE_RIGHT_CORNERS))
    for upper, lower_i, corner in eyes:
        cu_, lower_v = _sorted_uv(u, v, list(lower_i + corner))
        ucu, upper_v = _sorted_uv(u, v, list(upper + corner))
        gap = np.interp(u, cu_, lower_v) - np.interp(u, ucu, upper_v)  # lid opening at each u (≥ 0 inside)
        gap = np.clip(gap, 0.0, None)
        u_lo, u_hi = float(cu_.min()), float(cu_.max())
        inside = _smoothstep((u - u_lo) / 0.06) * _smoothstep((u_hi - u) / 0.06)
        lid_v = np.interp(u, ucu, upper_v)
        above = lid_v - v  # > 0 above the upper lid
        w = np.where(above >= -1e-6, np.clip(1.0 - above / 0.38, 0.0, 1.0), 0.0)
        close = 0.92 * gap * inside
        fields[2, :, 1] += close * w
        fields[2, list(upper), 1] = 0.92 * gap[list(upper)]
        fields[2, list(lower_i), 1] += -0.06 * gap[list(lower_i)]

    # ---- brow_raise: brows up, forehead compresses, upper lid skin stretches
    bu, bv = _sorted_uv(u, v, list(BROW_LEFT + BROW_RIGHT))
    brow_v = np.interp(u, bu, bv)
    eye_v = float(v[list(EYE_LEFT_UPPER + EYE_RIGHT_UPPER)].mean())
    top_v = float(v[FOREHEAD_TOP])
    above_b = np.clip((brow_v - v) / max(brow_v.mean() - top_v, 1e-3), 0.0, 1.0)
    below_b = np.clip((v - brow_v) / max(eye_v - float(bv.mean()), 1e-3), 0.0, 1.0)
    wb = np.where(v <= brow_v, 1.0 - 0.75 * above_b, 1.0 - 0.9 * below_b)
    wb = np.where(v > eye_v + 0.05, 0.0, wb)
    lateral = _smoothstep((1.35 - np.abs(u)) / 0.4)
    fields[3, :, 1] = -0.16 * wb * lateral

    # ---- pucker: lips gather towards the centre and push forward, lips round up/down
    r = np.hypot((u - u0) / a, (v - line) / (a * 0.8))
    g = np.exp(-(r**2) / (2 * 0.75**2))
    fields[4, :, 0] = -0.38 * (u - u0) * g
    fields[4, list(LIPS_UPPER_OUTER), 1] += -0.035
    fields[4, list(LIPS_LOWER_OUTER), 1] += 0.035
    dz[4] = -0.18 * g

    basis = np.zeros((len(EXPRESSIONS), n, 3))
    basis[:, :, :2] = (fields[..., :1] * eu + fields[..., 1:] * ev) * D
    basis[:, :, 2] = dz * D
    return basis


def _sorted_uv(u: np.ndarray, v: np.ndarray, idx: list[int]) -> tuple[np.ndarray, np.ndarray]:
    uu, vv = u[idx], v[idx]
    o = np.argsort(uu)
    return uu[o], vv[o]


def _ellipse(center: np.ndarray, axes: np.ndarray, eu: np.ndarray, n: int) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    ev = np.array([-eu[1], eu[0]])
    return center + np.cos(t)[:, None] * axes[0] * eu + np.sin(t)[:, None] * axes[1] * ev


def _visible_depth(lm: np.ndarray, max_slope: float = 1.8) -> np.ndarray:
    """Clamp the mesh depth so no surface is steeper than ``max_slope`` (dz per pixel) in the portrait.

    The side of the head is seen edge-on in a portrait: several mesh rows share almost the same pixels at very
    different depths, and the portrait has no texture for that surface. Turning the head would unfold it into
    zig-zag slivers. With the clamp (z_i ← min_j z_j + slope·|xy_i − xy_j|) those points move with the surface
    the portrait shows there. lm [468, 3]; returns a copy.
    """
    xy = lm[:, :2]
    dist = np.sqrt(((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1))
    out = lm.copy()
    for _ in range(2):
        out[:, 2] = (out[None, :, 2] + max_slope * dist).min(1)
    return out


def _face_model(lm: np.ndarray) -> _FaceModel:
    lm = _visible_depth(lm.astype(np.float64))
    o, eu, ev, D = _face_frame(lm)
    rel = lm[:, :2] - o
    u, v = rel @ eu, rel @ ev
    c2 = o + eu * (u.min() + u.max()) * 0.5 + ev * (v.min() + v.max()) * 0.5  # face box centre
    half = np.array([(u.max() - u.min()) * 0.5, (v.max() - v.min()) * 0.5])
    face_w = 2 * half[0]
    zc = float(lm[:, 2].mean() + 0.55 * face_w)
    center = np.array([c2[0], c2[1] + 0.1 * half[1], zc])
    inner2 = _ellipse(c2, half * np.array([1.32, 1.22]), eu, 28)
    # the head outline turns with the face: each anchor takes the depth of the nearest face-oval point, pushed
    # a little towards the axis (it never overtakes the face edge, and hair moves with the forehead)
    oval = lm[list(FACE_OVAL)]
    nearest = np.argmin(((inner2[:, None, :] - oval[None, :, :2]) ** 2).sum(-1), axis=1)
    z_ring = oval[nearest, 2] + RING_DEPTH * (zc - oval[nearest, 2])
    inner = np.concatenate([inner2, z_ring[:, None]], 1)
    outer = _ellipse(c2, half * np.array([2.4, 2.1]), eu, 36)
    pts = np.concatenate([lm[:, :2], inner2, outer])
    tri = Delaunay(pts).simplices.astype(np.int32)
    # the head outline below the mouth follows the chin when the jaw opens (neck/skin stretch)
    mouth_v = float(((lm[list(MOUTH_CORNERS_OUTER), :2] - o) @ ev).mean())
    ru, rv = (inner2 - o) @ eu, (inner2 - o) @ ev
    u0 = float(((lm[list(MOUTH_CORNERS_OUTER), :2] - o) @ eu).mean())
    w_ring = _smoothstep((rv - mouth_v) / (0.5 * D)) * np.clip(1.0 - (np.abs(ru - u0) / (1.3 * D)) ** 3, 0.0, 1.0)
    ring_jaw = np.zeros((len(inner2), 3))
    ring_jaw[:, :2] = (0.8 * JAW_DROP * D * w_ring)[:, None] * ev
    face_h = float(np.hypot(*(lm[CHIN, :2] - lm[FOREHEAD_TOP, :2])))
    p = pts[tri]
    area = (p[:, 1, 0] - p[:, 0, 0]) * (p[:, 2, 1] - p[:, 0, 1]) - (p[:, 1, 1] - p[:, 0, 1]) * (p[:, 2, 0] - p[:, 0, 0])
    n_face = len(lm)
    # back-face culling only for face triangles that look at the camera in the portrait; edge-on ones (the
    # side of the head, seen at a grazing angle) fold in the portrait already and are drawn double-sided
    q = np.concatenate([lm, inner])[np.minimum(tri, n_face + len(inner2) - 1)]
    normal = np.cross(q[:, 1] - q[:, 0], q[:, 2] - q[:, 0])
    facing = np.abs(normal[:, 2]) / np.maximum(np.linalg.norm(normal, axis=1), 1e-9)
    cullable = (tri < n_face).all(1) & (facing > 0.35)
    bias = np.where((tri >= n_face).any(1), 1e6, 0.0) + np.where((tri >= n_face + len(inner2)).any(1), 1e6, 0.0)
    orient = np.sign(area) * cullable
    return _FaceModel(lm, _expression_basis(lm), center, inner, ring_jaw, outer, tri, orient, bias, D, face_h)


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """R = Rz(roll) · Rx(pitch) · Ry(yaw) in image axes (x right, y down, z away from the camera)."""
    y, p, r = (math.radians(a) for a in (yaw, pitch, roll))
    cy, sy, cp, sp, cr, sr = math.cos(y), math.sin(y), math.cos(p), math.sin(p), math.cos(r), math.sin(r)
    ry = np.array([[cy, 0, -sy], [0, 1, 0], [sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, sp], [0, -sp, cp]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return rz @ rx @ ry


def _pad_canvas(img: np.ndarray, pad: int) -> np.ndarray:
    """Extend an image by ``pad`` pixels of blurred edge colour so camera motion never shows a border."""
    h, w = img.shape[:2]
    lo = cv2.resize(img, (max(2, w // 8), max(2, h // 8)), interpolation=cv2.INTER_AREA)
    m = max(1, pad // 8) + 2
    lo = cv2.GaussianBlur(cv2.copyMakeBorder(lo, m, m, m, m, cv2.BORDER_REPLICATE), (0, 0), 3.0)
    big = cv2.resize(lo, (w + 2 * pad, h + 2 * pad), interpolation=cv2.INTER_LINEAR)
    # paste the image, feathered into the blurred surround over f pixels at its border
    f = 12.0
    rx = np.clip(np.minimum(np.arange(w) + 1, w - np.arange(w)) / f, 0, 1).astype(np.float32)
    ry = np.clip(np.minimum(np.arange(h) + 1, h - np.arange(h)) / f, 0, 1).astype(np.float32)
    alpha = np.minimum(ry[:, None], rx[None, :])[..., None]
    rect = big[pad : pad + h, pad : pad + w].astype(np.float32)
    big[pad : pad + h, pad : pad + w] = (img * alpha + rect * (1 - alpha) + 0.5).astype(np.uint8)
    return big


# ------------------------------------------------------------------------------------------ trajectories
class _Path:
    """Smooth random function of time in [-1, 1]: offset + sum of slow sinusoids + a little fast jitter."""

    def __init__(self, rng: np.random.Generator, fmin: float = 0.05, fmax: float = 0.45, n: int = 3,
                 offset: float = 0.25, jitter: float = 0.0) -> None:
        self.f = rng.uniform(fmin, fmax, n)
        self.ph = rng.uniform(0, 2 * np.pi, n)
        amp = rng.uniform(0.4, 1.0, n)
        self.off = rng.uniform(-offset, offset)
        self.amp = amp / amp.sum() * (1.0 - abs(self.off) - jitter)
        self.jf = rng.uniform(1.0, 2.5, 2)
        self.jph = rng.uniform(0, 2 * np.pi, 2)
        self.jit = jitter

    def __call__(self, t: float) -> float:
        s = self.off + float(np.sum(self.amp * np.sin(2 * np.pi * self.f * t + self.ph)))
        s += self.jit * 0.5 * float(np.sum(np.sin(2 * np.pi * self.jf * t + self.jph)))
        return float(np.clip(s, -1.0, 1.0))


class _Speech:
    """Talking-like jaw motion: 2.5–4.5 Hz syllables under a slow envelope with pauses, in [0, 1]."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.syl = rng.uniform(2.5, 4.5)
        self.ph = rng.uniform(0, 2 * np.pi, 3)
        self.env = _Path(rng, 0.08, 0.35, 3, offset=0.3)
        self.mod = rng.uniform(0.2, 0.6)

    def __call__(self, t: float) -> float:
        phase = 2 * np.pi * self.syl * t + self.ph[0] + 0.8 * np.sin(2 * np.pi * self.mod * t + self.ph[1])
        syll = 0.5 - 0.5 * math.cos(phase)  # 0..1
        env = _smoothstep(np.array(0.5 + 0.8 * self.env(t)))  # 0..1, often 0 (pauses)
        return float(np.clip(syll**1.3 * float(env), 0.0, 1.0))


class _Blinks:
    """Blink events every 1.5–6 s, each a ~0.25 s bump (fast close, slower open), in [0, 1]."""

    def __init__(self, rng: np.random.Generator, horizon: float) -> None:
        times, t = [], rng.uniform(0.2, 2.5)
        while t < horizon:
            times.append(t)
            t += rng.uniform(1.5, 6.0)
        self.times = np.array(times)
        self.period = horizon

    def __call__(self, t: float) -> float:
        t = t % self.period
        if not len(self.times):
            return 0.0
        d = t - self.times
        d = d[(d > -0.1) & (d < 0.3)]
        if not len(d):
            return 0.0
        x = float(d[np.argmin(np.abs(d - 0.05))])
        if x < 0:
            val = 1.0 - (x / -0.1)
        elif x < 0.06:
            val = 1.0
        else:
            val = 1.0 - (x - 0.06) / 0.24
        return float(np.clip(val, 0.0, 1.0))


class _Bursts:
    """Occasional smooth activations (e.g. a brow raise) in [0, 1]."""

    def __init__(self, rng: np.random.Generator, rate: float, level: float = 0.0) -> None:
        self.p = _Path(rng, 0.05, 0.3 * rate, 3, offset=0.2)
        self.level = level

    def __call__(self, t: float) -> float:
        return float(_smoothstep(np.array((self.p(t) - self.level) / (1 - self.level) * 1.2)))


# ------------------------------------------------------------------------------------------------ clip
class SyntheticClip:
    """A deterministic synthetic clip: ``len(clip)`` frames (unbounded if seconds is inf), ``clip[i]`` renders
    frame i, iterating yields every frame in order. ``params(i)`` / ``render(params)`` split the random draw
    from the rendering (tests and training can render chosen poses and expressions)."""

    def __init__(self, cfg: SynthConfig, portraits: Sequence[Portrait] | None = None) -> None:
        if cfg.width < 16 or cfg.height < 16 or cfg.fps <= 0 or cfg.seconds <= 0:
            raise UserError(f"bad synthetic clip size/timing: {cfg.width}x{cfg.height} @ {cfg.fps} fps, "
                            f"{cfg.seconds} s (need ≥ 16x16, fps > 0, seconds > 0)")
        if not 0 < cfg.face_scale <= 2:
            raise UserError(f"face_scale must be in (0, 2], got {cfg.face_scale}")
        self.cfg = cfg
        portraits = list(portraits) if portraits is not None else load_portraits(None)
        if not portraits:
            raise UserError("no portraits given")
        rng = _rng(cfg.seed, 1)
        k = cfg.portrait_index if cfg.portrait_index is not None else int(rng.integers(len(portraits)))
        self.portrait = portraits[k % len(portraits)]
        self._prepare(self.portrait)
        self._draw_trajectories(_rng(cfg.seed, 2))
        h, w = cfg.height, cfg.width
        self._ys, self._xs = np.mgrid[0:h, 0:w].astype(np.float32)  # [H, W] pixel coordinates
        self._noise_bank: np.ndarray | None = None

    # -- set-up -----------------------------------------------------------------------------------------
    def _prepare(self, p: Portrait) -> None:
        cfg = self.cfg
        lm = p.landmarks.astype(np.float64)
        face_h = float(np.hypot(*(lm[CHIN, :2] - lm[FOREHEAD_TOP, :2])))
        self.base_scale = cfg.face_scale * cfg.height / face_h  # portrait px → output px at zoom 1
        img = p.image
        if abs(self.base_scale - 1.0) > 0.02:  # resample once so the per-frame warp is close to 1:1
            interp = cv2.INTER_AREA if self.base_scale < 1 else cv2.INTER_CUBIC
            img = cv2.resize(img, None, fx=self.base_scale, fy=self.base_scale, interpolation=interp)
        s = np.array([img.shape[1] / p.image.shape[1], img.shape[0] / p.image.shape[0]])
        lm = lm.copy()
        lm[:, :2] = (lm[:, :2] + 0.5) * s - 0.5
        lm[:, 2] *= s[0]
        pad = int(max(cfg.width, cfg.height) * 0.8)  # beyond it remap reflects (only with extreme zoom-out)
        self.canvas = _pad_canvas(img, pad)
        lm[:, :2] += pad
        self.model = _face_model(lm)
        self.zoom = float(s[0] / self.base_scale)  # canvas px per output px at zoom 1 (≈ 1)

    def _draw_trajectories(self, rng: np.random.Generator) -> None:
        cfg = self.cfg
        horizon = cfg.seconds if math.isfinite(cfg.seconds) else 600.0
        jit = 0.06 * cfg.jitter
        self._yaw, self._pitch, self._roll = (_Path(rng, 0.04, 0.35, 3, 0.3, jit) for _ in range(3))
        self._tx, self._ty, self._zoom, self._angle = (_Path(rng, 0.03, 0.25, 3, 0.3, 0.0) for _ in range(4))
        self._jaw = _Speech(rng)
        self._smile = _Bursts(rng, 1.0, level=0.0)
        self._blink = _Blinks(rng, horizon)
        self._brow = _Bursts(rng, 1.5, level=0.3)
        self._pucker = _Bursts(rng, 1.0, level=0.55)
        self._light = [_Path(rng, 0.02, 0.15, 2, 0.5, 0.0) for _ in range(6)]
        self._photo_blur = _Path(rng, 0.05, 0.5, 2, 0.5)
        self._photo_noise = _Path(rng, 0.02, 0.2, 2, 0.5)
        self._jpeg_q = int(rng.integers(45, 93))
        self._pose_amp = rng.uniform(0.6, 1.0, 3)  # clips differ in how far they turn

    # -- public -----------------------------------------------------------------------------------------
    def __len__(self) -> int:
        if not math.isfinite(self.cfg.seconds):
            raise TypeError("an endless clip (seconds=inf) has no length")
        return int(round(self.cfg.seconds * self.cfg.fps))

    @property
    def num_frames(self) -> int | None:
        """Frames in the clip, None when endless."""
        return len(self) if math.isfinite(self.cfg.seconds) else None

    def __iter__(self) -> Iterator[SyntheticFrame]:
        n = self.num_frames
        i = 0
        while n is None or i < n:
            yield self[i]
            i += 1

    def __getitem__(self, i: int) -> SyntheticFrame:
        n = self.num_frames
        if i < 0 or (n is not None and i >= n):
            raise IndexError(i)
        return self.render(self.params(i), i)

    def params(self, i: int) -> FrameParams:
        """The random parameters of frame i (pure function of seed and i)."""
        cfg = self.cfg
        t = i / cfg.fps
        ms, es = cfg.motion_strength, cfg.expression_strength
        cam_angle = min(4.0, 0.4 * cfg.max_roll) * ms * self._angle(t)  # camera roll uses part of the roll budget
        cam_angle = float(np.clip(cam_angle, -cfg.max_roll, cfg.max_roll))
        roll_bound = max(0.0, cfg.max_roll - abs(cam_angle))
        yaw = float(np.clip(cfg.max_yaw * ms * self._pose_amp[0] * self._yaw(t), -cfg.max_yaw, cfg.max_yaw))
        pitch = float(np.clip(cfg.max_pitch * ms * self._pose_amp[1] * 0.8 * self._pitch(t), -cfg.max_pitch,
                              cfg.max_pitch))
        roll = float(np.clip(cfg.max_roll * ms * self._pose_amp[2] * 0.5 * self._roll(t), -roll_bound, roll_bound))
        smile = self._smile(t)
        expr = {
            "jaw_open": self._jaw(t),
            "smile": smile,
            "blink": self._blink(t),
            "brow_raise": self._brow(t),
            "pucker": self._pucker(t) * (1.0 - smile),
        }
        expr = {k: float(np.clip(v * es, 0.0, 1.0)) for k, v in expr.items()}
        fp = FrameParams(yaw=yaw, pitch=pitch, roll=roll, expression=expr,
                         tx=0.06 * ms * self._tx(t), ty=0.05 * ms * self._ty(t),
                         scale=max(0.3, 1.0 + 0.08 * ms * self._zoom(t)), angle=cam_angle)
        if cfg.lighting:
            li = [p(t) for p in self._light]
            fp.gain = 1.0 + 0.22 * li[0]
            fp.gradient = (0.25 * li[1], 0.15 * li[2])
            fp.white_balance = (1.0 + 0.07 * li[3], 1.0 + 0.03 * li[4], 1.0 + 0.07 * li[5])
        if cfg.blur:
            fp.blur_sigma = max(0.0, 1.3 * self._photo_blur(t))
        if cfg.noise:
            fp.noise_sigma = 2.5 + 1.8 * self._photo_noise(t)
        if cfg.jpeg:
            fp.jpeg_quality = self._jpeg_q
        return fp

    def landmarks(self, fp: FrameParams) -> np.ndarray:
        """Ground-truth landmarks [468, 3] float32 in output pixels for these parameters."""
        return self._geometry(fp)[0][:NUM_LANDMARKS].astype(np.float32)

    def render(self, fp: FrameParams, index: int = 0) -> SyntheticFrame:
        """Render one frame from explicit parameters."""
        cfg = self.cfg
        dst3, src2, fwd = self._geometry(fp)
        img = self._warp(dst3, src2, fwd)
        jaw = fp.expression.get("jaw_open", 0.0)
        if jaw > 0.02:
            self._paint_mouth(img, dst3[:NUM_LANDMARKS], jaw)
        img = self._photometric(img, fp, index)
        assert img.shape == (cfg.height, cfg.width, 3) and img.dtype == np.uint8
        return SyntheticFrame(img, dst3[:NUM_LANDMARKS].astype(np.float32), fp.pose,
                              {k: float(fp.expression.get(k, 0.0)) for k in EXPRESSIONS}, index)

    # -- geometry ---------------------------------------------------------------------------------------
    def _camera(self, fp: FrameParams) -> np.ndarray:
        """[2, 3] similarity: canvas px → output px."""
        cfg, m = self.cfg, self.model
        s = fp.scale / self.zoom
        a = math.radians(fp.angle)
        r = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) * s
        face_c = m.center[:2]
        target = np.array([cfg.width * (0.5 + fp.tx), cfg.height * (0.5 + fp.ty)])
        return np.concatenate([r, (target - r @ face_c)[:, None]], 1)

    def _geometry(self, fp: FrameParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """→ dst [N, 3] (output px, z in output px scale; N = 468 + rings), src [N, 2] canvas px, camera [2, 3]."""
        m = self.model
        e = np.array([float(fp.expression.get(k, 0.0)) for k in EXPRESSIONS])
        pts = m.rest + np.tensordot(e, m.basis, axes=1)  # [468, 3]
        pts = np.concatenate([pts, m.inner_ring + e[0] * m.ring_jaw])
        rot = _rotation(fp.yaw, fp.pitch, fp.roll)
        head = (pts - m.center) @ rot.T + m.center
        cam = self._camera(fp)
        outer = np.concatenate([m.outer_ring, np.full((len(m.outer_ring), 1), m.center[2] + 1e4)], 1)
        allp = np.concatenate([head, outer])
        dst = np.empty_like(allp)
        dst[:, :2] = allp[:, :2] @ cam[:, :2].T + cam[:, 2]
        scale = float(np.sqrt(abs(np.linalg.det(cam[:, :2]))))
        # z in output pixel scale, re-centred like MediaPipe's (mean face depth as in the portrait); the
        # painter's algorithm in _warp only needs the order, which the shift keeps
        dst[:, 2] = (allp[:, 2] - head[:NUM_LANDMARKS, 2].mean() + m.rest[:, 2].mean()) * scale
        src = np.concatenate([m.rest[:, :2], m.inner_ring[:, :2], m.outer_ring])
        return dst, src, cam

    def _warp(self, dst3: np.ndarray, src2: np.ndarray, cam: np.ndarray) -> np.ndarray:
        """Backward piecewise-affine warp of the canvas: dst [N, 3] output px, src [N, 2] canvas px → [H, W, 3]."""
        cfg, m = self.cfg, self.model
        h, w = cfg.height, cfg.width
        inv_cam = invert_affine(cam)
        # outside the outer ring the map is the inverse camera similarity
        out = cv2.warpAffine(self.canvas, inv_cam, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                             borderMode=cv2.BORDER_REFLECT)
        tri = m.triangles
        d = dst3[:, :2]
        x0, y0 = np.maximum(np.floor(d.min(0)).astype(int) - 1, 0)
        x1, y1 = np.minimum(np.ceil(d.max(0)).astype(int) + 2, [w, h])
        if x1 <= x0 or y1 <= y0:
            return out
        # per-triangle affine dst → src: [x_s, y_s] = M @ [x, y, 1]
        dt = d[tri]  # [T, 3, 2]
        dh = np.concatenate([dt, np.ones((len(tri), 3, 1))], 2)  # [T, 3, 3], one vertex per row
        det = np.linalg.det(dh)
        ok = np.abs(det) > 1e-6
        # back-face culling: a triangle whose orientation flipped is behind the surface in front of it
        ok &= np.sign(det) * m.orientation >= 0
        dh[~ok] = np.eye(3)
        mats = np.linalg.solve(dh, src2[tri]).transpose(0, 2, 1)  # [T, 2, 3]
        # ROI-local pixel coordinates: fold the ROI offset into the matrices
        mats[:, :, 2] += mats[:, :, 0] * x0 + mats[:, :, 1] * y0
        bg = inv_cam.copy()
        bg[:, 2] += bg[:, 0] * x0 + bg[:, 1] * y0
        all_m = np.concatenate([mats, bg[None]]).reshape(-1, 6).astype(np.float32)  # last row: background
        # rasterise triangle ids far → near (painter's algorithm: the turned head hides its far side)
        rw, rh = x1 - x0, y1 - y0
        idx = np.full((rh, rw), len(tri), np.int32)
        fixed = np.round((dt - [x0, y0]) * 16.0).astype(np.int32)
        for t in np.argsort(-(dst3[tri, 2].mean(1) + m.sort_bias), kind="stable"):
            if ok[t]:
                cv2.fillConvexPoly(idx, fixed[t], int(t), lineType=cv2.LINE_8, shift=4)
        xs, ys = self._xs[:rh, :rw], self._ys[:rh, :rw]
        c = [np.take(row, idx) for row in np.ascontiguousarray(all_m.T)]  # 6 × [rh, rw]
        mapx = c[0] * xs
        mapx += c[1] * ys
        mapx += c[2]
        mapy = c[3] * xs
        mapy += c[4] * ys
        mapy += c[5]
        out[y0:y1, x0:x1] = cv2.remap(self.canvas, mapx, mapy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        return out

    def _paint_mouth(self, img: np.ndarray, lm: np.ndarray, jaw: float) -> None:
        """Paint a dark mouth cavity with an upper/lower teeth hint inside the inner-lip loop (in place)."""
        loop = lm[list(MOUTH_INNER_LOOP), :2]
        x0, y0 = np.floor(loop.min(0)).astype(int) - 3
        x1, y1 = np.ceil(loop.max(0)).astype(int) + 4
        h, w = img.shape[:2]
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if x1 - x0 < 3 or y1 - y0 < 3:
            return
        rw, rh = x1 - x0, y1 - y0
        mask = np.zeros((rh, rw), np.uint8)
        poly = np.round((loop - [x0, y0]) * 16).astype(np.int32)
        cv2.fillPoly(mask, [poly], 255, lineType=cv2.LINE_AA, shift=4)
        if not mask.any():
            return
        up = lm[[MOUTH_CORNERS_INNER[0], *LIPS_UPPER_INNER, MOUTH_CORNERS_INNER[1]], :2]
        lo_ = lm[[MOUTH_CORNERS_INNER[0], *LIPS_LOWER_INNER, MOUTH_CORNERS_INNER[1]], :2]
        xs = np.arange(x0, x1, dtype=np.float64)
        ou, ol = np.argsort(up[:, 0]), np.argsort(lo_[:, 0])
        y_up = np.interp(xs, up[ou, 0], up[ou, 1])[None, :]
        y_lo = np.interp(xs, lo_[ol, 0], lo_[ol, 1])[None, :]
        ys = np.arange(y0, y1, dtype=np.float64)[:, None]
        gap = np.maximum(y_lo - y_up, 1e-3)
        t = (ys - y_up) / gap  # 0 at the upper lip, 1 at the lower lip
        xc = float(loop[:, 0].mean())
        half = max(float(np.ptp(loop[:, 0])) * 0.5, 1.0)
        xr = np.abs(xs[None, :] - xc) / half
        mouth_scale = float(np.hypot(*(lm[291, :2] - lm[61, :2])))
        tooth_h = np.minimum(0.11 * mouth_scale / gap, 0.35)
        # cavity: dark red-brown, darkest in the middle of the throat, a tongue hint at the bottom
        depth = np.clip(1.0 - 2.2 * (t - 0.5) ** 2 - 0.8 * xr**2, 0, 1)
        cav = np.array([112.0, 44.0, 46.0])[None, None, :] * (1.0 - 0.7 * depth[..., None])
        tongue = _smoothstep((t - 0.62) / 0.25) * _smoothstep((0.85 - xr) / 0.3) * float(np.clip(jaw * 1.5, 0, 1))
        cav = cav * (1 - 0.8 * tongue[..., None]) + np.array([168.0, 78.0, 82.0]) * 0.8 * tongue[..., None]
        # teeth: off-white bands under the upper lip and above the lower lip, fading to the corners
        side = _smoothstep((0.78 - xr) / 0.25)
        upper_t = _smoothstep((tooth_h - t) / np.maximum(tooth_h * 0.35, 1e-3)) * side
        lower_t = 0.55 * _smoothstep((t - (1.0 - tooth_h * 0.6)) / np.maximum(tooth_h * 0.3, 1e-3)) * side
        shade = 0.82 + 0.18 * np.clip(1.0 - xr, 0, 1)
        tooth = np.array([222.0, 214.0, 196.0])[None, None, :] * shade[..., None]
        # faint gaps between teeth
        gaps = 1.0 - 0.18 * np.clip(np.cos((xs[None, :] - xc) / max(mouth_scale * 0.075, 1.0) * np.pi) ** 40, 0, 1)
        tw = np.clip(upper_t + lower_t, 0, 1)[..., None]
        colour = cav * (1 - tw) + tooth * gaps[..., None] * tw
        # keep the existing lighting level of the face
        region = img[y0:y1, x0:x1].astype(np.float32)
        alpha = (mask.astype(np.float32) / 255.0) * float(_smoothstep(np.array((jaw - 0.02) / 0.25)))
        alpha = cv2.GaussianBlur(alpha, (0, 0), 0.7)[..., None]
        region = region * (1 - alpha) + colour.astype(np.float32) * alpha
        img[y0:y1, x0:x1] = np.clip(region, 0, 255).astype(np.uint8)

    # -- photometric ------------------------------------------------------------------------------------
    def _photometric(self, img: np.ndarray, fp: FrameParams, index: int) -> np.ndarray:
        h, w = img.shape[:2]
        gx, gy = fp.gradient
        lighting = fp.gain != 1.0 or gx or gy or fp.white_balance != (1.0, 1.0, 1.0)
        if fp.blur_sigma >= 0.3:
            img = cv2.GaussianBlur(img, (0, 0), fp.blur_sigma)
        if lighting or fp.noise_sigma > 0:
            out = img.astype(np.float32)
            if lighting:
                col = (1.0 + gx * (np.arange(w, dtype=np.float32) - w / 2) / (w / 2))[None, :, None]
                row = (1.0 + gy * (np.arange(h, dtype=np.float32) - h / 2) / (h / 2))[:, None, None]
                wb = np.asarray(fp.white_balance, np.float32) * np.float32(fp.gain)
                out *= row * (col * wb[None, None, :])
            if fp.noise_sigma > 0:
                out += self._noise(index) * np.float32(fp.noise_sigma)
            img = np.clip(out, 0, 255).astype(np.uint8)
        if fp.jpeg_quality > 0:
            bgr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
            ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(fp.jpeg_quality)])
            if ok:
                img = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        return np.ascontiguousarray(img)

    def _noise(self, index: int) -> np.ndarray:
        """[H, W, 3] float32 unit Gaussian noise for frame ``index``: a random window of a per-clip bank."""
        h, w = self.cfg.height, self.cfg.width
        n = h * w * 3
        if self._noise_bank is None:
            self._noise_bank = _rng(self.cfg.seed, 3).standard_normal(2 * n, np.float32)
        r = _rng(self.cfg.seed, 4, index)
        off = int(r.integers(0, n))
        sign = np.float32(1.0 if r.random() < 0.5 else -1.0)
        return self._noise_bank[off : off + n].reshape(h, w, 3) * sign


def _rng(seed: int, *keys: int) -> np.random.Generator:
    """Independent stream ``keys`` of a seed (any int, negative ones too)."""
    return np.random.default_rng([int(seed) % (1 << 63), *keys])


def synthetic_clip(cfg: SynthConfig, portraits: list[Portrait] | None = None) -> Iterator[SyntheticFrame]:
    """Frames of a synthetic clip with ground truth, in order (deterministic by ``cfg.seed``)."""
    yield from SyntheticClip(cfg, portraits)


# ------------------------------------------------------------------------------------------------ demo:
def config_from_demo(opt: DemoOptions) -> tuple[SynthConfig, str | None]:
    """``demo:portrait`` options (:class:`realtime.io.sources.DemoOptions`) → SynthConfig and an optional portrait
    folder (``portraits=`` / ``folder=``); the other extra options set SynthConfig fields (UserError if unknown)."""
    extra: dict[str, str] = dict(opt.extra or {})
    cfg = SynthConfig(width=int(opt.width), height=int(opt.height), fps=float(opt.fps), seconds=float(opt.seconds),
                      seed=int(opt.seed))
    folder = extra.pop("portraits", None) or extra.pop("folder", None)
    types = {f.name: f.type for f in dataclasses.fields(SynthConfig)}
    for k, v in extra.items():
        if k not in types or k in ("width", "height", "fps", "seconds", "seed"):
            raise UserError(f"unknown option {k}= for demo:portrait (known: portraits, "
                            + ", ".join(n for n in types if n not in ("width", "height", "fps", "seconds", "seed"))
                            + ")")
        typ = str(types[k])
        try:
            if "bool" in typ:
                val: object = v.strip().lower() not in ("0", "false", "no", "off", "")
            elif "int" in typ:
                val = int(v)
            else:
                val = float(v)
        except ValueError:
            raise UserError(f"bad value {k}={v!r} for demo:portrait") from None
        setattr(cfg, k, val)
    return cfg, folder


def portrait_demo(opt: DemoOptions) -> Iterator[np.ndarray]:
    """``demo:portrait`` generator: yields [H, W, 3] uint8 frames of :func:`synthetic_clip`.

    Extra spec options: ``portraits=FOLDER`` and any :class:`SynthConfig` field (``face_scale=0.5``,
    ``max_yaw=10``, ``jpeg=0``, ...).
    """
    cfg, folder = config_from_demo(opt)
    portraits = load_portraits(folder) if folder else None
    for f in SyntheticClip(cfg, portraits):
        yield f.image


# ----------------------------------------------------------------------------------------- sheet / CLI
def contact_sheet(frames: Sequence[SyntheticFrame], cols: int = 4, tile_w: int = 320, draw_landmarks: bool = True
                  ) -> np.ndarray:
    """Tile frames into one RGB image [rows·h, cols·tile_w, 3] uint8, with ground-truth landmarks as dots and
    the pose/expression written under each tile."""
    tiles = []
    for f in frames:
        h0, w0 = f.image.shape[:2]
        s = tile_w / w0
        tile = cv2.resize(f.image, (tile_w, int(round(h0 * s))), interpolation=cv2.INTER_AREA)
        if draw_landmarks:  # the contours only (oval, brows, eyes, lips, nose ridge) so the face stays visible
            for x, y in f.landmarks[list(CONTOUR_POINTS), :2] * s + (s - 1) * 0.5:
                cv2.circle(tile, (int(round(x * 4)), int(round(y * 4))), 2, (60, 255, 60), -1, cv2.LINE_AA, shift=2)
        short = {"jaw_open": "jaw", "smile": "smi", "blink": "bli", "brow_raise": "bro", "pucker": "puc"}
        ex = " ".join(f"{short.get(k, k)} {v:.1f}" for k, v in f.expression.items())
        bar = np.full((30, tile_w, 3), 255, np.uint8)
        cv2.putText(bar, f"#{f.index} yaw{f.pose[0]:+.0f} pit{f.pose[1]:+.0f} rol{f.pose[2]:+.0f}", (4, 12),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(bar, ex, (4, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.36, (0, 0, 0), 1, cv2.LINE_AA)
        tiles.append(np.concatenate([tile, bar]))
    blank = np.full_like(tiles[0], 255)
    tiles += [blank] * (-len(tiles) % cols)
    return np.concatenate([np.concatenate(tiles[r : r + cols], 1) for r in range(0, len(tiles), cols)])


GALLERY = (  # (label, FrameParams overrides) shown by gallery(): each expression alone, then poses
    ("neutral", {}), ("jaw_open 1", {"jaw_open": 1.0}), ("smile 1", {"smile": 1.0}), ("blink 1", {"blink": 1.0}),
    ("brow_raise 1", {"brow_raise": 1.0}), ("pucker 1", {"pucker": 1.0}), ("yaw +25", {"yaw": 25.0}),
    ("yaw -25", {"yaw": -25.0}), ("pitch +25", {"pitch": 25.0}), ("pitch -25", {"pitch": -25.0}),
    ("roll +20", {"roll": 20.0}), ("yaw 15 pitch -10 jaw .6 smile .5",
                                   {"yaw": 15.0, "pitch": -10.0, "jaw_open": 0.6, "smile": 0.5}),
)


def gallery(clip: SyntheticClip, width: int, cols: int = 6) -> np.ndarray:
    """Face crops of :data:`GALLERY` (no camera motion or photometric effects), [rows·h, width, 3] uint8."""
    tile = width // cols
    tiles = []
    for label, kw in GALLERY:
        fp = FrameParams()
        for k, v in kw.items():
            if k in EXPRESSIONS:
                fp.expression[k] = v
            else:
                setattr(fp, k, v)
        f = clip.render(fp)
        c = f.landmarks[:, :2].mean(0)
        half = 0.9 * float(np.ptp(f.landmarks[:, 1]))
        m = np.array([[2 * half / tile, 0, c[0] - half], [0, 2 * half / tile, c[1] - half * 0.95]])
        crop = cv2.warpAffine(f.image, m, (tile, tile), flags=cv2.INTER_AREA | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_REPLICATE)
        bar = np.full((16, tile, 3), 255, np.uint8)
        cv2.putText(bar, label, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.33, (0, 0, 0), 1, cv2.LINE_AA)
        tiles.append(np.concatenate([crop, bar]))
    tiles += [np.full_like(tiles[0], 255)] * (-len(tiles) % cols)
    sheet = np.concatenate([np.concatenate(tiles[r : r + cols], 1) for r in range(0, len(tiles), cols)])
    pad = width - sheet.shape[1]
    return cv2.copyMakeBorder(sheet, 0, 0, 0, pad, cv2.BORDER_CONSTANT, value=(255, 255, 255)) if pad else sheet


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m realtime.io.synthetic``: write a contact sheet and/or time the generator."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--portraits", help="folder of portrait images/videos (default: skimage astronaut)")
    ap.add_argument("--sheet", help="write a contact sheet PNG of frames spread over the clip (and seeds)")
    ap.add_argument("--seeds", type=int, default=3, help="clips (seeds 0..n-1) on the sheet")
    ap.add_argument("--per-seed", type=int, default=4, help="frames per clip on the sheet")
    ap.add_argument("--bench", type=int, default=0, help="time this many consecutive frames of seed 0")
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--no-landmarks", action="store_true", help="sheet without landmark dots")
    ap.add_argument("--tile-width", type=int, default=200, help="width of one clip frame on the sheet")
    args = ap.parse_args(argv)
    portraits = load_portraits(args.portraits)
    if args.bench:
        clip = SyntheticClip(SynthConfig(width=args.width, height=args.height, seconds=args.seconds), portraits)
        n = min(args.bench, len(clip))
        clip[0]  # warm-up (noise bank)
        times = []
        for i in range(n):
            t0 = time.perf_counter()
            clip[i]
            times.append(time.perf_counter() - t0)
        ms = np.array(times) * 1e3
        print(f"{args.width}x{args.height}: {n} frames, median {np.median(ms):.1f} ms/frame, "
              f"min {ms.min():.1f}, mean {ms.mean():.1f}, p90 {np.percentile(ms, 90):.1f}")
    if args.sheet:
        frames = []
        for seed in range(args.seeds):
            clip = SyntheticClip(SynthConfig(width=args.width, height=args.height, seconds=args.seconds, seed=seed),
                                 portraits)
            n = len(clip)
            frames += [clip[int(k * (n - 1) / max(args.per_seed - 1, 1))] for k in range(args.per_seed)]
        sheet = contact_sheet(frames, cols=args.per_seed, tile_w=args.tile_width,
                              draw_landmarks=not args.no_landmarks)
        top = gallery(SyntheticClip(SynthConfig(width=args.width, height=args.height), portraits), sheet.shape[1])
        sheet = np.concatenate([top, np.full((6, sheet.shape[1], 3), 255, np.uint8), sheet])
        Path(args.sheet).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(args.sheet, cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
        print(f"wrote {args.sheet} ({len(frames)} frames)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
