"""Edit transfer: the user's own frame supplies identity and detail, the generator only the edit (DESIGN §9).

The caller renders the reconstruction G(w) and the edited G(w+Δ) (one batch of two) and hands both, with the
tracked landmarks, the crop's affine and the face mask, to :meth:`EditTransfer.apply`, which

1. derives the edit's **geometry** — a backward displacement field, in render pixels:
   * ``"landmarks"`` (default, chosen by measurement: docs in the benchmark and the report): the face mesh on
     both renders; the per-landmark motion mesh(G(w+Δ)) − mesh(G(w)) is attached to the frame's *own* tracked
     landmarks (so it lands on the user's mouth and eyes, not where the generator drew them) and interpolated by
     a regularised thin-plate spline. Only the landmarks of the edits' regions move (:func:`plan_edits`: smile,
     mouth_open → mouth and jaw; eyes_open → eyes; brow_raise → brows; pose → the whole face); the others are
     pinned, the similarity motion the pinned ones show is removed, and a smile keeps the lips' gap (a warp has
     no teeth). Pose edits (yaw/pitch) use ``pose_geometry``: "flow" by default (measured stronger and steadier
     there), or "landmarks" reduced to the rigid head motion that explains the mesh motion best;
   * ``"flow"``: dense optical flow (OpenCV DIS) from G(w+Δ) back to G(w), limited to the same regions;
   * ``"none"``: appearance only;
2. derives the edit's **appearance** — the residual G(w+Δ) − warp(G(w)), low-passed to what the generator
   resolves, capped in luma and chroma (YCrCb; the small generators' edits paint green/magenta blotches that
   must not reach the real face), and limited to the edit's region: style channels (mouth/skin/hair colour) use
   it in their region, a mouth-opening edit fills the opened lips from the edited render; expression and pose
   edits are geometry only;
3. warps the original frame at **full resolution** by the field (carried from render pixels through the crop's
   affine into frame pixels, tapered to zero at the face mask's edge), adds the residual inside the mask, and
   returns the new frame. Only the face mask's bounding box is touched (like composite.paste_back); identical
   renders (Δ = 0) or an empty plan return the input frame itself.

Per-stream state (:class:`EditTransfer`): the landmark motion (temporally low-passed), refreshed every
``mesh_every`` frames or at once when the edit changes — the render mesh costs ~8 ms per image on one CPU thread
— with the field gliding to each new measurement; between refreshes the motion, attached to landmark indices,
follows the tracked face, and :meth:`EditTransfer.needs_renders` tells the caller it may skip the encoder and the
generator altogether on those frames (geometry-only edits).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

from models.config import opt
from models.errors import UserError
from models.face_mesh import LANDMARK_MODEL, LANDMARK_SIZE, FaceLandmarks, crop, mediapipe_model_path, project_landmarks
from realtime.vision.composite import mask_bbox, paste_roi
from realtime.vision.geometry import invert_affine, landmarks_to_crop
from realtime.vision.topology import (
    BROW_LEFT_LOOP,
    BROW_RIGHT_LOOP,
    EYE_LEFT_LOOP,
    EYE_RIGHT_LOOP,
    FACE_OVAL,
    LIPS_INNER_LOOP,
    LIPS_LOWER_INNER,
    LIPS_LOWER_OUTER,
    LIPS_OUTER_LOOP,
    LIPS_UPPER_INNER,
    LIPS_UPPER_OUTER,
)

Mesh = Callable[[torch.Tensor], torch.Tensor]  # renders [B, 3, R, R] in [-1, 1] → landmarks [B, 468, 3] render px

# Landmarks that carry the field (MediaPipe mesh indices), in groups an edit can move.
LIPS = LIPS_OUTER_LOOP + LIPS_INNER_LOOP
JAW = (288, 397, 365, 379, 378, 400, 377, 152, 148, 176, 149, 150, 136, 172, 58,  # lower face oval
       18, 200, 199, 175, 83, 313, 205, 425, 187, 411)  # chin and lower cheeks
EYES = EYE_LEFT_LOOP + EYE_RIGHT_LOOP
BROWS = BROW_LEFT_LOOP + BROW_RIGHT_LOOP
UPPER_OVAL = (361, 323, 454, 356, 389, 251, 284, 332, 297, 338, 10, 109, 67, 103, 54, 21, 162, 127, 234, 93, 132)
NOSE_CHEEKS = (1, 2, 4, 5, 6, 168, 197, 195, 98, 327, 49, 279, 50, 280, 101, 330, 118, 347, 151, 9, 108, 337,
               69, 299)
FIELD_LANDMARKS = LIPS + JAW + EYES + BROWS + UPPER_OVAL + NOSE_CHEEKS
# upper and lower lip contours, paired point by point (inner lips, then outer lips; corners excluded)
LIPS_UPPER = LIPS_UPPER_INNER + LIPS_UPPER_OUTER
LIPS_LOWER = LIPS_LOWER_INNER + LIPS_LOWER_OUTER
INNER_LOOP = LIPS_INNER_LOOP
APPEARANCE_REGIONS = ("mouth", "eyes", "brows", "skin", "hair", "mouth_inner", "face")
OPENING = ("mouth_open", "jaw_open")  # measures/parameters whose edits may open the mouth
REGION_LANDMARKS: dict[str, tuple[int, ...]] = {
    "mouth": LIPS + JAW,
    "eyes": EYES,
    "brows": BROWS,
    "face": FIELD_LANDMARKS,
}
# face-mesh measure / pose-expression parameter → region (models.editing PARAMS; training.directions MEASURES)
MEASURE_REGION = {"smile": "mouth", "mouth_open": "mouth", "jaw_open": "mouth", "pucker": "mouth",
                  "eyes_open": "eyes", "blink": "eyes", "brow_raise": "brows",
                  "yaw": "face", "pitch": "face", "roll": "face"}
POSE = ("yaw", "pitch", "roll")


@dataclass
class TransferConfig:
    """How an edit is transferred from the generator's renders onto the user's own face (flags: --transfer-*)."""

    geometry: str = opt("landmarks", "edit geometry from the face mesh on both renders (landmarks), optical flow "
                                     "(flow) or none", choices=("landmarks", "flow", "none"))
    gain: float = opt(1.0, "multiplier on the edit's displacement (small generators' edits are weak)", min=0.0,
                      max=5.0)
    appearance: float = opt(0.0, "residual weight for expression/pose edits: 0 = geometry only … 1 = full residual",
                            min=0.0, max=1.0)
    style_appearance: float = opt(1.0, "residual weight for appearance edits (style channels, random identity)",
                                  min=0.0, max=1.0, cli=False)
    mouth_appearance: float = opt(1.0, "residual weight inside the opened lips for mouth-opening edits (dark "
                                       "interior)", min=0.0, max=1.0, cli=False)
    mouth_luma_cap: float = opt(96.0, "max |Δ luma| in levels inside the opened lips", min=0.0, max=255.0, cli=False)
    chroma_cap: float = opt(4.0, "max |Δ chroma| (Cr, Cb) in levels the residual may add", min=0.0, max=255.0)
    luma_cap: float = opt(32.0, "max |Δ luma| in levels the residual may add", min=0.0, max=255.0, cli=False)
    residual_sigma: float = opt(1.0, "Gaussian σ of the residual's low-pass, in render pixels", min=0.0, max=16.0,
                                cli=False)
    regions: bool = opt(True, "move only the landmarks of the edits' regions (mouth/eyes/brows), pin the rest",
                        cli=False)
    rigid: bool = opt(True, "expression edits (not mouth-opening ones): remove the pinned landmarks' similarity "
                            "motion", cli=False)
    keep_gap: bool = opt(True, "edits not meant to open the mouth keep the lips' gap and thickness (a warp has no "
                               "teeth)", cli=False)
    pose_geometry: str = opt("flow", "pose edits (yaw/pitch targets): flow (measured stronger there) or landmarks",
                             choices=("flow", "landmarks"), cli=False)
    pose_rigid: bool = opt(True, "landmark geometry for pose edits: a rigid head motion fitted to the mesh motion",
                           cli=False)
    max_shift: float = opt(0.08, "displacements are clamped to this fraction of the render side", min=0.0, max=0.5,
                           cli=False)
    smoothing: float = opt(0.5, "temporal low-pass of the displacements: weight of the previous frame's (0 = off)",
                           min=0.0, max=0.99, cli=False)
    mesh_every: int = opt(8, "run the face mesh on the renders every N frames (and on any edit change)", min=1,
                          max=1000)
    tps_lambda: float = opt(1e-4, "thin-plate-spline regularisation (larger = smoother, less exact)", min=0.0,
                            cli=False)
    field_px: int = opt(32, "the spline is evaluated on this grid over the render, then bilinear", min=4, max=256,
                        cli=False)
    refit_px: float = opt(0.3, "refit the spline when a landmark moved this far (render px) since the last fit",
                          min=0.0, cli=False)
    work_px: int = opt(128, "the frame displacement is formed on a grid of at most this side over the crop", min=16,
                       max=1024, cli=False)
    ring: float = opt(1.45, "zero-displacement anchors on the face oval scaled by this about its centre", min=1.0,
                      max=4.0, cli=False)
    flow_px: int = opt(128, "flow: renders are upscaled to this side before DIS", min=16, max=1024, cli=False)
    flow_sigma: float = opt(1.0, "flow: Gaussian σ (render px) applied to the flow field", min=0.0, max=16.0,
                            cli=False)


@dataclass
class EditPlan:
    """What the transfer takes from the active edits (:func:`plan_edits`)."""

    regions: tuple[str, ...] = ("face",)  # REGION_LANDMARKS groups whose landmarks the edit moves
    rigid: bool = False  # remove the similarity motion of the pinned landmarks (expression edits)
    keep_gap: bool = False  # keep the lips' gap and thickness (no active edit is meant to open the mouth)
    pose: bool = False  # a pose edit: the whole-face motion is reduced to a rigid head motion
    appearance: float = 0.0  # residual weight
    appearance_regions: tuple[str, ...] = ()  # where the residual acts (APPEARANCE_REGIONS); () = the whole mask
    gain: float = 1.0  # the active edits' own displacement gain (EditSpec.extra["transfer_gain"]; max of them)
    keep_mouth: float = 0.0  # a keep_mouth edit's strength: the lips keep k × their own place (0…1)
    key: Hashable = None  # changes whenever the active edits or strengths change (refreshes the displacement)


def plan_edits(specs: dict[str, Any], strengths: dict[str, float], config: TransferConfig | None = None) -> EditPlan:
    """Plan for the active edits of an EditStack (``stack.specs``, ``stack.strengths()``).

    Regions come from each spec's fitted measure (``extra.measure``) or pose/expression target (``extra.target``):
    smile/mouth_open → mouth, eyes_open → eyes, brow_raise → brows, yaw/pitch → the whole face as a rigid head;
    an edit without either (unknown route) moves the whole face freely. Appearance edits (style_channel,
    random_identity) bring ``style_appearance`` in their ``extra.region`` and no geometry of their own;
    expression and pose edits bring ``appearance`` (default 0: geometry only); mouth-opening edits fill the
    opened lips (``mouth_appearance``).
    """
    cfg = config or TransferConfig()
    active = {n: k for n, k in strengths.items() if k != 0 and n in specs}
    gain = max((float((getattr(specs[n], "extra", {}) or {}).get("transfer_gain", 1.0)) for n in active), default=1.0)
    regions: set[str] = set()
    app_regions: set[str] = set()
    app = keep_mouth = 0.0
    pose = opening = False
    for name in active:
        s = specs[name]
        kind = getattr(s, "kind", "")
        extra = getattr(s, "extra", {}) or {}
        if kind in ("style_channel", "random_identity"):
            app = max(app, cfg.style_appearance)
            region = extra.get("region", "face") if cfg.regions else "face"
            app_regions.add(region if region in APPEARANCE_REGIONS else "face")
            continue
        if kind == "keep_mouth":
            keep_mouth = max(keep_mouth, min(max(float(active[name]), 0.0), 1.0))
            continue
        if cfg.appearance > 0:
            app = max(app, cfg.appearance)
            app_regions.add("face")
        names = list(extra.get("target", {})) if kind == "pose_expression" else [extra.get("measure", "")]
        for m in names:
            regions.add(MEASURE_REGION.get(m, "face"))
            pose |= m in POSE
            opening |= m in OPENING
    if opening and cfg.mouth_appearance > 0 and cfg.geometry != "none":
        app = max(app, cfg.mouth_appearance)
        app_regions.add("mouth_inner")
    if not cfg.regions and regions:
        regions = {"face"}
    key = tuple(sorted((n, round(float(k), 6)) for n, k in active.items()))
    # rigid: not for mouth-opening edits — at large strengths their renders are too distorted for the pinned
    # landmarks' similarity motion to mean anything (measured: mouth_open=3 off-target PSNR 27.8 dB with, 35.8 without)
    return EditPlan(tuple(sorted(regions)), rigid=cfg.rigid and not pose and not opening and "face" not in regions,
                    keep_gap=cfg.keep_gap and "mouth" in regions and not opening and not pose,
                    pose=pose and cfg.pose_rigid and "face" in regions, appearance=app,
                    appearance_regions=() if "face" in app_regions else tuple(sorted(app_regions)), gain=gain,
                    keep_mouth=keep_mouth if "mouth" in regions or "face" in regions else 0.0, key=key)


class RenderMesh(torch.nn.Module):
    """MediaPipe's 468-point landmark network (models/face_mesh.py) on FFHQ-aligned renders at a fixed ROI (the
    same construction as training.losses.CropFaceMesh, which realtime/ may not import):
    x [B, 3, R, R] in [-1, 1] → landmarks [B, 468, 3] in render pixel-index coordinates."""

    ROI = (0.5006, 0.6148, 0.9544)  # centre x, centre y, side, as fractions of R

    def __init__(self) -> None:
        super().__init__()
        self.net = FaceLandmarks()
        self.requires_grad_(False)
        self.eval()

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.shape[-1]
        cx, cy, side = self.ROI
        rect = x.new_tensor([[cx * s, cy * s, side * s, side * s, 0.0]]).expand(x.shape[0], -1)
        lm, _ = self.net(crop((x.float() + 1) / 2, rect, LANDMARK_SIZE))
        return project_landmarks(lm, rect, LANDMARK_SIZE) - x.new_tensor([0.5, 0.5, 0.0])


_SHARED_MESH: RenderMesh | None = None
_SHARED_MESH_LOCK = threading.Lock()
_MESH_POOL: ThreadPoolExecutor | None = None  # live streams' background face-mesh runs (one thread, shared)


def _mesh_pool() -> ThreadPoolExecutor:
    global _MESH_POOL
    with _SHARED_MESH_LOCK:
        if _MESH_POOL is None:
            _MESH_POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stylestream-render-mesh")
        return _MESH_POOL


def shared_render_mesh() -> RenderMesh:
    """One :class:`RenderMesh` for the process (a stateless network in eval mode: streams and threads share it).
    Raises UserError where MediaPipe's .tflite weights are missing (models/face_mesh.py)."""
    global _SHARED_MESH
    with _SHARED_MESH_LOCK:
        if _SHARED_MESH is None:
            _SHARED_MESH = RenderMesh()
        return _SHARED_MESH


def _warm_render_mesh() -> None:
    """Build the shared render mesh and run it once, so a live stream's first edit measurement finds it ready
    (measured: the first one took ~145 ms on the frame and queued the next four frames behind it)."""
    mesh = shared_render_mesh()
    mesh(torch.zeros(2, 3, 64, 64))


def transfer_available() -> bool:
    """Whether the landmark geometry can run here (MediaPipe's face-mesh weights are installed)."""
    try:
        mediapipe_model_path(LANDMARK_MODEL)
    except UserError:
        return False
    return True


# --------------------------------------------------------------------------------------------- field helpers


def _tps_kernel(d2: np.ndarray) -> np.ndarray:
    """Thin-plate radial basis r² log r, from squared distances (0 at 0)."""
    return 0.5 * d2 * np.log(np.maximum(d2, 1e-20))


def tps_field(points: np.ndarray, values: np.ndarray, size: int, grid: int, lam: float = 1e-3) -> np.ndarray:
    """Regularised thin-plate spline through ``values`` [K, 2] at ``points`` [K, 2] (pixels of a size² image),
    evaluated on a grid×grid lattice spanning pixel centres 0…size−1. Returns [grid, grid, 2] float32.

    ``lam`` trades exactness at the points for smoothness (coordinates are scaled to [0, 1] first)."""
    p = np.asarray(points, np.float64) / size
    k = p.shape[0]
    a = np.zeros((k + 3, k + 3))
    sq = (p * p).sum(1)
    a[:k, :k] = _tps_kernel(np.maximum(sq[:, None] + sq[None] - 2.0 * (p @ p.T), 0.0)) + lam * np.eye(k)
    a[:k, k] = 1.0
    a[:k, k + 1:] = p
    a[k, :k] = 1.0
    a[k + 1:, :k] = p.T
    rhs = np.zeros((k + 3, 2))
    rhs[:k] = values
    # torch's LAPACK, not numpy's: once torch is loaded, numpy's threaded OpenBLAS takes ~200 ms for this
    # 200² solve on a 2-core machine (its threads spin against torch's), torch's ~1 ms.
    coef = torch.linalg.solve(torch.from_numpy(a), torch.from_numpy(rhs)).numpy().astype(np.float32)
    t = (np.arange(grid, dtype=np.float32) * np.float32((size - 1.0) / max(grid - 1, 1) / size))
    gx, gy = np.meshgrid(t, t)
    q = np.stack([gx.ravel(), gy.ravel()], 1)
    p32 = p.astype(np.float32)
    d2 = (q * q).sum(1)[:, None] + (p32 * p32).sum(1)[None] - 2.0 * (q @ p32.T)
    out = _tps_kernel(np.maximum(d2, 0.0)) @ coef[:k] + coef[k] + q @ coef[k + 1:]
    return out.reshape(grid, grid, 2).astype(np.float32)


def _to_hwc(img: torch.Tensor) -> np.ndarray:
    """[3, R, R] (or [1, 3, R, R]) in [-1, 1] → [R, R, 3] float32 in levels 0…255."""
    t = img.detach()
    if t.ndim == 4:
        t = t[0]
    return ((t.float().clamp(-1, 1) + 1.0) * 127.5).permute(1, 2, 0).cpu().numpy()


def _luma_u8(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.clip(img + 0.5, 0, 255).astype(np.uint8), cv2.COLOR_RGB2GRAY)


def remap_field(img: np.ndarray, field: np.ndarray) -> np.ndarray:
    """Sample ``img`` [R, R, C] at u + field(u) (bilinear, border replicate); field [R, R, 2] pixels."""
    r = field.shape[0]
    g = np.arange(r, dtype=np.float32)
    gx, gy = np.meshgrid(g, g)
    return cv2.remap(img, gx + field[..., 0], gy + field[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


# YCrCb (ITU-R BT.601, full range, as OpenCV's COLOR_RGB2YCrCb) without the offsets: Δ RGB ↔ Δ (Y, Cr, Cb).
_RGB2YCC = np.array([[0.299, 0.587, 0.114], [0.5, -0.418688, -0.081312], [-0.168736, -0.331264, 0.5]], np.float32)
_YCC2RGB = np.linalg.inv(_RGB2YCC).astype(np.float32)


def cap_residual(res: np.ndarray, luma_cap: float, chroma_cap: float) -> np.ndarray:
    """Clip a residual [..., 3] (RGB levels) so |ΔY| ≤ luma_cap and |ΔCr|, |ΔCb| ≤ chroma_cap."""
    ycc = res @ _RGB2YCC.T
    np.clip(ycc[..., 0], -luma_cap, luma_cap, out=ycc[..., 0])
    np.clip(ycc[..., 1:], -chroma_cap, chroma_cap, out=ycc[..., 1:])
    return ycc @ _YCC2RGB.T


# ---------------------------------------------------------------------------------------------- the transfer


def similarity_fit(p: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares similarity motion of points p [K, 2] displaced by d [K, 2]: d ≈ p @ A.T + t with
    A = [[a, −b], [b, a]]. Returns (A [2, 2], t [2])."""
    c = p.mean(0)
    q = p - c
    dm = d.mean(0)
    e = d - dm
    den = float((q * q).sum()) or 1.0
    a = float((q * e).sum()) / den
    b = float((q[:, 0] * e[:, 1] - q[:, 1] * e[:, 0]).sum()) / den
    mat = np.array([[a, -b], [b, a]])
    return mat, dm - c @ mat.T


def head_motion_fit(pts3: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Small rigid head motion explaining a landmark displacement: d ≈ (a·z − c·y + s·x + tx, b·z + c·x + s·y + ty)
    for landmarks pts3 [K, 3] (x, y, z centred) — a and b the yaw and pitch (image shift per unit depth), c the
    roll, s a scale, t a shift. Least squares → params [6]."""
    q = np.asarray(pts3, np.float64) - np.asarray(pts3, np.float64).mean(0)
    x, y, z = q[:, 0], q[:, 1], q[:, 2]
    one, zero = np.ones_like(x), np.zeros_like(x)
    a = np.concatenate([np.stack([z, zero, -y, x, one, zero], 1), np.stack([zero, z, x, y, zero, one], 1)])
    return np.linalg.lstsq(a, np.concatenate([d[:, 0], d[:, 1]]), rcond=None)[0]


def head_motion(params: np.ndarray, pts3: np.ndarray) -> np.ndarray:
    """The displacement [K, 2] of :func:`head_motion_fit`'s model at landmarks pts3 [K, 3] (centred here)."""
    q = np.asarray(pts3, np.float64) - np.asarray(pts3, np.float64).mean(0)
    a, b, c, sc, tx, ty = params
    return np.stack([a * q[:, 2] - c * q[:, 1] + sc * q[:, 0] + tx, b * q[:, 2] + c * q[:, 0] + sc * q[:, 1] + ty], 1)


def landmark_field(lm: np.ndarray, disp: np.ndarray, size: int, *, regions: tuple[str, ...] = ("face",),
                   rigid: bool = False, keep_gap: bool = False, pose: tuple[np.ndarray, np.ndarray] | None = None,
                   gain: float = 1.0, grid: int = 32, lam: float = 1e-4, ring: float = 1.45,
                   keep_mouth: float = 0.0) -> np.ndarray:
    """Backward displacement field of a landmark motion.

    Args:
        lm: [468, 2] the face's landmarks (pixels of a size² image).
        disp: [468, 2] how the edit moves each landmark (pixels).
        regions: REGION_LANDMARKS groups that move; every other field landmark is pinned (zero motion).
        rigid: first remove the similarity motion the pinned landmarks show (a generator's expression edit
            often also shifts or scales the whole face a little).
        keep_gap: move each upper/lower lip pair by their mean motion (the mouth neither opens nor closes, the
            lips keep their thickness).
        pose: (landmarks [468, 3] the displacement was measured on, the face's landmarks [468, 3] with depth, both
            in these pixels): a pose edit — the whole-face motion becomes the rigid head motion that best explains
            it (:func:`head_motion_fit`), re-evaluated on the face's own 3-D landmarks; the non-rigid rest is kept
            only in the expression regions among ``regions``.
        gain: multiplier on the motion.
        keep_mouth: 0…1, the lips keep this fraction of their own place (a keep_mouth edit: the user's mouth, as
            they speak, under a smile that still moves the cheeks and jaw).
    Returns: [grid, grid, 2] float32 field over the image (lattice over pixel centres 0…size−1): the output at
    u samples the input at u + field(u); at the displaced landmark p + d it samples p.
    """
    moving = sorted(set().union(*(REGION_LANDMARKS[r] for r in regions))) if regions else []
    idx = list(FIELD_LANDMARKS)
    w = np.zeros(468)
    w[moving] = 1.0
    d = np.asarray(disp, np.float64)[:, :2]
    src_all = np.asarray(lm, np.float64)[:, :2]
    if pose is not None:
        expr = [g for g in regions if g != "face"]
        keep = np.zeros(468)
        if expr:
            keep[sorted(set().union(*(REGION_LANDMARKS[g] for g in expr)))] = 1.0
        params = head_motion_fit(pose[0][idx], d[idx])
        head_src = head_motion(params, pose[0])
        d = head_motion(params, pose[1]) + keep[:, None] * (d - head_src)
        w[:] = 1.0
    elif rigid:
        pinned = [i for i in idx if w[i] == 0]
        if len(pinned) >= 3:
            a, t = similarity_fit(src_all[pinned], d[pinned])
            d = d - (src_all @ a.T + t)
    if keep_gap:
        up, lo = list(LIPS_UPPER), list(LIPS_LOWER)
        mean = 0.5 * (d[up] + d[lo])
        d[up] = mean
        d[lo] = mean
    if keep_mouth > 0:
        w[list(LIPS)] *= 1.0 - keep_mouth
    d = d * (w[:, None] * gain)
    src = src_all[idx]
    dd = d[idx]
    oval = src_all[list(FACE_OVAL)]
    c = oval.mean(0)
    anchors = c + (oval[::2] - c) * ring
    pts = np.concatenate([src + dd, anchors])
    vals = np.concatenate([-dd, np.zeros_like(anchors)])
    return tps_field(pts, vals, size, grid, lam)


def _hull(img: np.ndarray, pts: np.ndarray, grow: float = 1.0) -> None:
    """Fill the convex hull of pts [K, 2] (grown ``grow`` × about their mean) with 1.0, anti-aliased, in img."""
    c = pts.mean(0)
    hull = cv2.convexHull((c + (pts - c) * grow).astype(np.float32))
    cv2.fillConvexPoly(img, np.round(hull * 16).astype(np.int32), 1.0, lineType=cv2.LINE_AA, shift=4)


def appearance_weights(lm: np.ndarray, size: int, regions: tuple[str, ...], inner: np.ndarray | None = None
                       ) -> np.ndarray:
    """Soft [size, size] float32 map of where the residual may act, from the face's landmarks [468, 2] (pixels of
    a size² image): "mouth" (lips), "eyes", "brows", "skin" (face oval minus those), "hair" (outside the face
    oval: within the face mask that is the hairline over the forehead), "mouth_inner" (the polygon of the inner
    lips at ``inner`` [468, 2], the edited geometry: an opened mouth's interior)."""
    out = np.zeros((size, size), np.float32)
    for g in regions:
        m = np.zeros((size, size), np.float32)
        if g == "mouth_inner":
            pts = (inner if inner is not None else lm)[list(INNER_LOOP)].astype(np.float32)
            cv2.fillPoly(m, [np.round(pts * 16).astype(np.int32)], 1.0, lineType=cv2.LINE_AA, shift=4)
        elif g == "mouth":
            _hull(m, lm[list(LIPS[:20])], 1.15)
        elif g == "eyes":
            _hull(m, lm[list(EYES[:16])], 1.4)
            _hull(m, lm[list(EYES[16:])], 1.4)
        elif g == "brows":
            _hull(m, lm[list(BROWS[:10])], 1.4)
            _hull(m, lm[list(BROWS[10:])], 1.4)
        elif g == "hair":
            m[:] = 1.0
            cv2.fillPoly(m, [np.round(lm[list(FACE_OVAL)] * 16).astype(np.int32)], 0.0, lineType=cv2.LINE_AA,
                         shift=4)
        elif g == "skin":
            cv2.fillPoly(m, [np.round(lm[list(FACE_OVAL)] * 16).astype(np.int32)], 1.0, lineType=cv2.LINE_AA,
                         shift=4)
            holes = np.zeros_like(m)
            for part in ("mouth", "eyes", "brows"):
                holes = np.maximum(holes, appearance_weights(lm, size, (part,)))
            m *= 1.0 - holes
        else:
            m[:] = 1.0
        np.maximum(out, m, out=out)
    sigma = size / 64.0
    return cv2.GaussianBlur(out, (0, 0), sigma) if sigma >= 0.5 else out


class EditTransfer:
    """Per-stream edit transfer (see the module docstring). Not thread-safe: one instance per stream."""

    def __init__(self, config: TransferConfig | None = None, mesh: Mesh | None = None, *,
                 background: bool = False) -> None:
        """mesh: landmarks of renders ([B, 3, R, R] in [-1, 1] → [B, 468, ≥2] render px); by default the process's
        :func:`shared_render_mesh`, built on first use.

        background: live streams. The periodic refresh of the face mesh on the renders (every ``mesh_every``
        frames; ~15 ms on one CPU thread, more than the rest of the frame) runs on a background thread and its
        result is taken on the first frame after it is ready, gliding in as usual; the frame that triggered it
        does not wait. The first measurement of an edit and any edit change still run on the frame (there is
        nothing to show before them). File jobs keep it off: their output must not depend on thread timing."""
        self.cfg = config or TransferConfig()
        self.background = background
        if self.cfg.geometry not in ("landmarks", "flow", "none"):
            raise ValueError(f"unknown transfer geometry {self.cfg.geometry!r} (landmarks, flow or none)")
        self._mesh = mesh
        self._dis: Any = None
        self._grid_cache: tuple[Any, np.ndarray, np.ndarray] = (None, np.zeros(0), np.zeros(0))
        self.reset()
        if background and mesh is None and self.cfg.geometry == "landmarks" and _SHARED_MESH is None:
            _mesh_pool().submit(_warm_render_mesh)  # once a process; errors (no MediaPipe weights) surface later

    def reset(self) -> None:
        """Forget the temporal state (a new face, a cut)."""
        self._disp: np.ndarray | None = None  # landmarks: [468, 2] displacement in units of the render side
        self._field: np.ndarray | None = None  # flow: last field in units of the render side
        self._since = 0
        self._key: Hashable = None
        self._fresh = False  # the displacement changed since the field was fitted
        self._mesh3: np.ndarray | None = None  # [468, 3] render px: the reconstruction's mesh at the last refresh
        self._r: int | None = None  # render side of the last renders
        self._shown: np.ndarray | None = None  # the field used on the last frame
        self._glide: tuple[np.ndarray, int] | None = None  # (field glided from, frames since) after a refresh
        self._fit: tuple[np.ndarray, np.ndarray] | None = None  # (landmarks [468, 2] render px, field) of the fit
        self._pending: tuple[Future, int] | None = None  # background mesh run in flight: (future, render side)
        self.mesh_runs = 0
        self.field_fits = 0

    def _grid(self, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Pixel coordinate grids (x, y) [h, w] float32 for a ROI size (w, h): views into one cached pair."""
        have = self._grid_cache[0]
        if have is None or have[0] < size[0] or have[1] < size[1]:
            big = (max(size[0], have[0] if have else 0) + 32, max(size[1], have[1] if have else 0) + 32)
            gy, gx = np.mgrid[0:big[1], 0:big[0]].astype(np.float32)
            self._grid_cache = (big, gx, gy)
        return self._grid_cache[1][:size[1], :size[0]], self._grid_cache[2][:size[1], :size[0]]

    def _landmark_field(self, lm_r: np.ndarray, lm3_r: np.ndarray, disp: np.ndarray, r: int, plan: EditPlan,
                        changed: bool) -> np.ndarray:
        """The spline field. Refitted when the displacement was refreshed, the edit changed, or the face's
        landmarks moved more than ``refit_px`` render px since the last fit (otherwise the last field, which
        lives in crop coordinates and so follows the face). After a refresh of the displacement the field glides
        from the one shown to the new one over ``mesh_every`` frames (no step every N frames)."""
        cfg = self.cfg
        idx = list(FIELD_LANDMARKS)
        if (self._fit is None or self._fresh or changed
                or float(np.abs(lm_r[idx] - self._fit[0][idx]).max()) > cfg.refit_px):
            pose = (self._mesh3, lm3_r) if plan.pose and self._mesh3 is not None else None
            target = landmark_field(lm_r, disp, r, regions=plan.regions, rigid=plan.rigid, keep_gap=plan.keep_gap,
                                    pose=pose, gain=cfg.gain * plan.gain, grid=cfg.field_px, lam=cfg.tps_lambda,
                                    ring=cfg.ring, keep_mouth=plan.keep_mouth)
            if changed or self._shown is None:
                self._glide = None
            elif self._fresh and cfg.mesh_every > 1:
                self._glide = (self._shown.copy(), 0)
            self._fit, self._fresh = (lm_r.copy(), target), False
            self.field_fits += 1
        field = self._fit[1]
        if self._glide is not None:
            start, n = self._glide
            n += 1
            t = min(1.0, n / max(1, cfg.mesh_every))
            field = start + (field - start) * np.float32(t)
            self._glide = None if t >= 1.0 else (start, n)
        self._shown = field
        return field

    # -- geometry in render space ---------------------------------------------------------------------------
    def _mesh_fn(self) -> Mesh:
        if self._mesh is None:
            self._mesh = shared_render_mesh()
        return self._mesh

    def _smooth(self, prev: np.ndarray | None, new: np.ndarray, changed: bool) -> np.ndarray:
        a = self.cfg.smoothing
        if prev is None or changed or a <= 0:
            return new
        return a * prev + (1.0 - a) * new

    def _landmark_displacement(self, recon: torch.Tensor | None, edited: torch.Tensor | None, r: int,
                               changed: bool) -> np.ndarray:
        """[468, 2] displacement edited − recon in render px (clamped, temporally low-passed, refreshed every
        ``mesh_every`` frames or when the edit changed)."""
        if changed:
            self._pending = None  # a run for the previous edit: its result no longer applies
        elif self._pending is not None and self._pending[0].done():
            future, r_then = self._pending
            self._pending = None
            self._take(future.result(), r_then, False)
        if self._disp is None or changed or self._since + 1 >= max(1, self.cfg.mesh_every):
            if self.background and self._disp is not None and not changed:
                if self._pending is None and recon is not None and edited is not None:
                    batch = torch.stack([recon, edited]).float()
                    self._pending = (_mesh_pool().submit(self._mesh_fn(), batch), r)
                    self._since = 0
                # else: a run is still in flight (or this frame skipped the renders): the refresh waits for it
            else:
                assert recon is not None and edited is not None
                self._take(self._mesh_fn()(torch.stack([recon, edited]).float()), r, changed)
                self._since = 0
        else:
            self._since += 1
        assert self._disp is not None
        return self._disp * r

    def _take(self, lm_t: torch.Tensor, r: int, changed: bool) -> None:
        """Take one face-mesh run on (recon, edited) [2, 468, ≥2] render px as the new displacement."""
        lm = lm_t.detach().to("cpu", torch.float64).numpy()
        self.mesh_runs += 1
        self._mesh3 = lm[0, :, :3] if lm.shape[2] >= 3 else np.c_[lm[0, :, :2], np.zeros(lm.shape[1])]
        d = (lm[1, :, :2] - lm[0, :, :2]) / r
        n = np.linalg.norm(d, axis=1, keepdims=True)
        d = d * np.minimum(1.0, self.cfg.max_shift / np.maximum(n, 1e-12))
        self._disp, self._fresh = self._smooth(self._disp, d, changed), True

    def _flow_field(self, rec: np.ndarray, edi: np.ndarray, lm_r: np.ndarray, plan: EditPlan, changed: bool
                    ) -> np.ndarray:
        """Backward field [R, R, 2] (render px): edited(u) ≈ recon(u + field(u)) (DIS on luma), limited to the
        plan's regions like the landmark field (a soft hull of the moving landmarks; rigid: the similarity
        motion the flow shows at the pinned landmarks removed)."""
        cfg = self.cfg
        r = rec.shape[0]
        up = max(r, cfg.flow_px)
        a, b = _luma_u8(edi), _luma_u8(rec)
        if up != r:
            a = cv2.resize(a, (up, up), interpolation=cv2.INTER_CUBIC)
            b = cv2.resize(b, (up, up), interpolation=cv2.INTER_CUBIC)
        if self._dis is None:
            self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        f = self._dis.calc(a, b, None)
        if up != r:
            f = cv2.resize(f, (r, r), interpolation=cv2.INTER_AREA) * np.float32(r / up)
        if cfg.flow_sigma > 0:
            f = cv2.GaussianBlur(f, (0, 0), cfg.flow_sigma)
        if plan.regions and "face" not in plan.regions:
            idx = list(FIELD_LANDMARKS)
            if plan.rigid:
                moving = set().union(*(REGION_LANDMARKS[g] for g in plan.regions))
                pinned = [i for i in idx if i not in moving]
                pp = lm_r[pinned].astype(np.float32)
                fp = np.stack([cv2.remap(f[..., c], pp[None, :, 0], pp[None, :, 1], cv2.INTER_LINEAR)[0]
                               for c in range(2)], -1)
                am, t = similarity_fit(lm_r[pinned], -fp.astype(np.float64))
                g = np.arange(r, dtype=np.float64)
                gx, gy = np.meshgrid(g, g)
                f = f + (np.stack([gx, gy], -1) @ am.T + t).astype(np.float32)
            hull = np.zeros((r, r), np.float32)
            for g in plan.regions:
                _hull(hull, lm_r[list(REGION_LANDMARKS[g])])
            hull = cv2.GaussianBlur(cv2.dilate(hull, np.ones((3, 3), np.uint8)), (0, 0), 1.5)
            f = f * hull[..., None]
        elif not plan.regions:
            f = np.zeros_like(f)
        f = self._smooth(self._field, f / r, changed) * r
        self._field = f / r
        return (f * np.float32(cfg.gain * plan.gain)).astype(np.float32)

    # -- the frame ------------------------------------------------------------------------------------------
    def _geometry(self, plan: EditPlan) -> str:
        """The geometry this plan uses: none without regions, ``pose_geometry`` for pose edits."""
        cfg = self.cfg
        if not plan.regions or cfg.gain == 0:
            return "none"
        if plan.pose and cfg.geometry == "landmarks":
            return cfg.pose_geometry
        return cfg.geometry

    def needs_renders(self, plan: EditPlan, appearance: float | None = None) -> bool:
        """Whether the next :meth:`apply` with ``plan`` uses the renders. When False the caller may skip encoding
        and the generator for this frame and pass ``recon=edited=None``: with landmark geometry and no residual
        the renders are only read when the face mesh runs (every ``mesh_every`` frames, and on edit changes);
        in between the displacement, attached to the landmarks, follows the tracked face."""
        cfg = self.cfg
        app = plan.appearance if appearance is None else float(appearance)
        geometry = self._geometry(plan)
        if geometry == "none" and app <= 0.0:
            return False  # nothing to transfer
        if app > 0 or geometry == "flow":
            return True
        if plan.key != self._key or self._disp is None:
            return True
        if self.background and self._pending is not None:
            return False  # a background run is in flight: this frame cannot start another one
        return self._since + 1 >= max(1, cfg.mesh_every)

    def apply(self, frame: np.ndarray, to_frame: np.ndarray, crop_size: int, landmarks: np.ndarray,
              recon: torch.Tensor | None, edited: torch.Tensor | None, mask: np.ndarray, *,
              plan: EditPlan | None = None, appearance: float | None = None) -> np.ndarray:
        """Transfer the edit (recon → edited) onto the user's face.

        Args:
            frame: [H, W, 3] uint8 RGB (never modified).
            to_frame: [2, 3] crop px → frame px (the crop of side ``crop_size`` the encoder saw).
            crop_size: side N of that crop.
            landmarks: [468, ≥2] tracked landmarks, frame px.
            recon, edited: [3, R, R] (or [1, 3, R, R]) generator renders in [-1, 1]; R may differ from N. Both
                None on frames where :meth:`needs_renders` is False (the generator was skipped).
            mask: [N, N] float in [0, 1] (realtime.composite.face_mask of this crop).
            plan: which regions move and how much residual (:func:`plan_edits`); default: the whole face moves,
                residual ``config.appearance``.
            appearance: residual weight override.
        Returns: [H, W, 3] uint8 — ``frame`` itself when the renders are identical or nothing is to be done,
        else a new array equal to ``frame`` outside the face mask's bounding box.
        """
        cfg = self.cfg
        plan = plan or EditPlan(appearance=cfg.appearance)
        app = plan.appearance if appearance is None else float(appearance)
        geometry = self._geometry(plan)
        if geometry == "none" and app <= 0.0:
            return frame
        if recon is None or edited is None:
            if self.needs_renders(plan, appearance) or self._r is None:
                raise ValueError("this frame needs the renders (EditTransfer.needs_renders said so)")
            r = self._r
        else:
            recon = recon[0] if recon.ndim == 4 else recon
            edited = edited[0] if edited.ndim == 4 else edited
            r = int(recon.shape[-1])
            assert recon.shape == (3, r, r) and edited.shape == recon.shape, (recon.shape, edited.shape)
            if torch.equal(recon, edited):
                return frame
            self._r = r
        assert mask.shape == (crop_size, crop_size), (mask.shape, crop_size)
        h, w = frame.shape[:2]
        box = mask_bbox(mask)
        roi = paste_roi(to_frame, box, w, h) if box is not None else None
        if roi is None:
            return frame
        changed = plan.key != self._key
        self._key = plan.key
        x0, y0, x1, y1 = roi
        s = crop_size / r  # crop px per render px
        lm_r = (landmarks_to_crop(landmarks, to_frame) + 0.5) / s - 0.5  # [468, 2] render px
        field = None  # backward field in render px, on a lattice of its own resolution over the render
        disp = None
        if geometry == "landmarks":
            disp = self._landmark_displacement(recon, edited, r, changed)
            lm = np.asarray(landmarks, np.float64)
            depth = lm[:, 2] / (s * math.sqrt(abs(np.linalg.det(np.asarray(to_frame, np.float64)[:, :2])))) \
                if lm.shape[1] >= 3 else np.zeros(len(lm))
            field = self._landmark_field(lm_r, np.c_[lm_r, depth], disp, r, plan, changed)
        rec = edi = None
        if geometry == "flow" or app > 0:
            rec, edi = _to_hwc(recon), _to_hwc(edited)
        if geometry == "flow":
            assert rec is not None and edi is not None
            field = self._flow_field(rec, edi, lm_r, plan, changed)
        # Everything is formed on a small working grid over the crop (side wg) and carried into the frame's ROI
        # by 4-channel warps (OpenCV vectorises 4-channel warps; 2- and 3-channel ones are 5× slower).
        m = np.asarray(to_frame, np.float64)
        size = (x1 - x0, y1 - y0)
        inv = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        wg = min(crop_size, max(16, cfg.work_px))
        roi2w = invert_affine(m)  # frame px → crop px …
        roi2w[:, 2] += roi2w[:, 0] * x0 + roi2w[:, 1] * y0  # … from ROI px
        roi2w *= wg / crop_size
        roi2w[:, 2] += 0.5 * wg / crop_size - 0.5  # → working-grid px

        def on_work(img: np.ndarray, side: int, border: int = cv2.BORDER_REPLICATE) -> np.ndarray:
            """A render-space image (a lattice of ``side`` over pixel centres 0…r−1) sampled on the work grid."""
            k = (side - 1) / (r - 1)
            lat = np.array([[r / wg * k, 0.0, (0.5 * r / wg - 0.5) * k], [0.0, r / wg * k, (0.5 * r / wg - 0.5) * k]])
            return cv2.warpAffine(img, lat, (wg, wg), flags=inv, borderMode=border)

        mask_w = np.asarray(mask if wg == crop_size else cv2.resize(mask, (wg, wg), interpolation=cv2.INTER_AREA),
                            np.float32)
        pack = np.zeros((wg, wg, 4), np.float32)  # dx, dy (frame px), mask, 0
        pack[..., 2] = mask_w
        if field is not None:
            taper = np.minimum(mask_w * 2.0, 1.0)[..., None]
            pack[..., :2] = (on_work(field, field.shape[0]) @ (m[:, :2] * s).T.astype(np.float32)) * taper
        packed = cv2.warpAffine(pack, roi2w, size, flags=inv, borderMode=cv2.BORDER_CONSTANT)
        mask_roi = packed[..., 2]
        out_roi: np.ndarray | None = None
        if field is not None:
            pad = int(math.ceil(float(np.abs(pack[..., :2]).max()))) + 2
            sx0, sy0, sx1, sy1 = max(0, x0 - pad), max(0, y0 - pad), min(w, x1 + pad), min(h, y1 + pad)
            gx, gy = self._grid(size)
            mapx = packed[..., 0] + gx
            mapy = packed[..., 1] + gy
            if x0 != sx0:
                mapx += np.float32(x0 - sx0)
            if y0 != sy0:
                mapy += np.float32(y0 - sy0)
            src = cv2.cvtColor(frame[sy0:sy1, sx0:sx1], cv2.COLOR_RGB2RGBA)  # 4-channel remap is vectorised too
            out_roi = cv2.cvtColor(cv2.remap(src, mapx, mapy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE),
                                   cv2.COLOR_RGBA2RGB)
        if app > 0:
            assert rec is not None and edi is not None
            f_r = field
            if f_r is not None and f_r.shape[0] != r:
                f_r = cv2.resize(f_r, (r, r), interpolation=cv2.INTER_LINEAR)
            res = edi - (remap_field(rec, f_r) if f_r is not None else rec)
            if cfg.residual_sigma > 0:
                res = cv2.GaussianBlur(res, (0, 0), cfg.residual_sigma)
            regions = tuple(g for g in plan.appearance_regions if g != "mouth_inner")
            inner_w = None
            if "mouth_inner" in plan.appearance_regions and disp is not None:
                inner_w = appearance_weights(lm_r, r, ("mouth_inner",), lm_r + disp * cfg.gain * plan.gain)
            total = np.zeros((r, r, 4), np.float32)  # residual (3), interior weight
            if regions or not plan.appearance_regions:
                total[..., :3] = cap_residual(res, cfg.luma_cap, cfg.chroma_cap) * np.float32(app)
                if regions:
                    total[..., :3] *= appearance_weights(lm_r, r, regions)[..., None]
            if inner_w is not None:
                total[..., 3] = inner_w
            res_roi = cv2.warpAffine(on_work(total, r), roi2w, size, flags=inv, borderMode=cv2.BORDER_CONSTANT)
            cur = (out_roi if out_roi is not None else frame[y0:y1, x0:x1]).astype(np.float32)
            if inner_w is not None:
                # An opened mouth: the warp only stretches the lip line across the gap. There, take the low-passed
                # base and move it towards the edited render (its dark interior), luma capped at mouth_luma_cap.
                w_in = res_roi[..., 3:]
                sig = 1.5 * s * float(np.sqrt(abs(np.linalg.det(m[:, :2]))))  # 1.5 render px in frame px
                soft = cv2.GaussianBlur(cur, (0, 0), sig)
                ed4 = cv2.cvtColor(cv2.GaussianBlur(edi, (0, 0), cfg.residual_sigma), cv2.COLOR_RGB2RGBA)
                ed_roi = cv2.warpAffine(on_work(ed4, r), roi2w, size, flags=inv, borderMode=cv2.BORDER_REPLICATE)
                fill = soft + cap_residual(ed_roi[..., :3] - soft, cfg.mouth_luma_cap, cfg.chroma_cap) * np.float32(app)
                cur += (fill - cur) * w_in
            cur += res_roi[..., :3] * mask_roi[..., None]
            out_roi = np.clip(cur + 0.5, 0, 255).astype(np.uint8)
        if out_roi is None:
            return frame
        out = frame.copy()
        out[y0:y1, x0:x1] = out_roi
        return out
