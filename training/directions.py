"""Edit discovery: W directions, StyleSpace channels, the lip subspace, random identity (issue 6).

Routes, all fitted by :func:`fit_edits` (``stylestream edits fit``):

* **Supervised** (:func:`supervised_directions`): synthetic clips (realtime/io/synthetic.py) have exact pose and
  expression parameters; their aligned crops are encoded by the bundle's FrEN and W+ is regressed on *all*
  parameters at once (multi-output linear model ``W ≈ μ + B·y``). Row k of B is the mean change of W per unit
  of parameter k *with the other parameters held fixed* — the regression itself orthogonalises an expression
  against the pose (and the other expressions). Restricted to the coarse layers (pose/expression live there).
  The same fit gives the linear read-out ``y ≈ A·W + a`` the pose/expression targets use.
* **InterFaceGAN** (:func:`interfacegan_directions`): W+ samples (from the mapping network, or — for an
  autoencoder-trained generator whose z space is not a face distribution — Gaussian samples around the encoded
  latents), rendered, labelled by face-mesh measures (training/measures.py: mouth open, smile, eye openness,
  brow raise, yaw, pitch, roll), a linear boundary per attribute (logistic regression on the top/bottom 30 %),
  unit normal, orthogonalised against the yaw/pitch normals for expression attributes.
* **StyleSpace** (:func:`stylespace_channels`): per channel of every affine output, the render's response to
  a ±σ nudge (a central-difference JVP, i.e. the gradient map of the StyleSpace paper), scored by how much of
  it falls inside a face-mesh region mask (mouth, eyes, brows, skin, hair).
* **Lip subspace** (:func:`lip_basis`): the Jacobian of the inner-lip landmarks (differentiable face mesh) with
  respect to the coarse W+ layers; its top right-singular vectors are the directions keep_mouth removes.
* **Random identity** (:func:`random_identity_direction`): a fixed random δw on the appearance layers, scaled to
  the spread of the encoded latents and with the pose/expression directions projected out.

* **Measure gradient** (:func:`gradient_direction`): the mean gradient of the face-mesh measure of the render
  with respect to W+ (on training frames, not the scoring frames) — the steepest first-order direction for that
  measure. Expressions only: the mesh's 2-D pose proxies could be met by deforming the face instead of turning it.

Which route ships for an attribute is decided by measurement (:func:`score_direction`): the candidate that
moves its face-mesh measure furthest per unit of non-targeted landmark motion wins.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch

from models.config import opt
from models.editing import PARAMS, EditSpec, landmark_features, tensor_key
from realtime.io.synthetic import SynthConfig, SyntheticClip
from realtime.vision.align import align_crop, quad_from_landmarks
from realtime.vision.geometry import landmarks_to_crop
from realtime.vision.topology import (
    BROW_LEFT_LOOP,
    BROW_RIGHT_LOOP,
    EYE_LEFT,
    EYE_LEFT_LOOP,
    EYE_RIGHT,
    EYE_RIGHT_LOOP,
    FACE_OVAL,
    FOREHEAD_TOP,
    LIPS_INNER_LOOP,
    LIPS_OUTER_LOOP,
)
from training.measures import MEASURE_REGION, MEASURES, POSE_MEASURES, face_measures, stack_measures
from training.pose_expression import PETrainConfig, train_pose_expression

log = logging.getLogger("stylestream.edits")

Mesh = Callable[[torch.Tensor], torch.Tensor]  # crops [B, 3, S, S] in [-1, 1] → landmarks [B, 468, 3] crop px

# ------------------------------------------------------------------------------------------ synthetic data
@dataclass
class EncodedSet:
    """Aligned synthetic crops, their FrEN codes and exact ground truth."""

    crops: torch.Tensor  # [N, 3, S, S] float32 in [-1, 1]
    ws: torch.Tensor  # [N, num_ws, w_dim] FrEN codes
    params: torch.Tensor  # [N, len(PARAMS)] yaw, pitch, roll (deg), 5 expressions in [0, 1]
    landmarks: torch.Tensor  # [N, 468, 3] ground-truth landmarks in crop px
    clip: torch.Tensor  # [N] int64 clip id
    index: torch.Tensor  # [N] int64 frame index in its clip
    nuisance: torch.Tensor | None = None  # [N, len(NUISANCE)] camera/photometric parameters (regressed out)

    def __len__(self) -> int:
        return int(self.ws.shape[0])

    def subset(self, m: torch.Tensor) -> EncodedSet:
        nu = self.nuisance[m] if self.nuisance is not None else None
        return EncodedSet(self.crops[m], self.ws[m], self.params[m], self.landmarks[m], self.clip[m], self.index[m],
                          nu)

    def pairs(self, gap: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Index pairs (i, j) of frames ``gap`` apart in the same clip."""
        key = {(int(c), int(i)): n for n, (c, i) in enumerate(zip(self.clip, self.index))}
        a, b = [], []
        for (c, i), n in key.items():
            m = key.get((c, i + gap))
            if m is not None:
                a.append(n)
                b.append(m)
        return torch.tensor(a, dtype=torch.long), torch.tensor(b, dtype=torch.long)


NUISANCE = ("gain", "gradient_x", "gradient_y", "wb_r", "wb_g", "wb_b", "blur", "zoom")


def nuisance_of(fp: Any) -> list[float]:
    """Camera/photometric parameters of a synthetic frame that are not pose or expression."""
    return [fp.gain, *fp.gradient, *fp.white_balance, fp.blur_sigma, fp.scale]


def random_expression(rng: np.random.Generator) -> dict[str, float]:
    """Independent expression draws (each present with probability ½, uniform strength) — decorrelates the
    parameters, which the natural trajectories (sparse smiles and blinks) do not."""
    e = {k: float(rng.uniform(0, 1)) if rng.uniform() < 0.5 else 0.0 for k in PARAMS[3:]}
    e["pucker"] *= 1.0 - e["smile"]
    return e


@torch.no_grad()
def encode_synthetic(bundle: Any, seeds: Sequence[int], frames: int, *, randomize: bool = True, stride: int = 1,
                     batch: int = 32) -> EncodedSet:
    """Render ``frames`` frames (every ``stride``-th) of synthetic clips ``seeds``, align, encode with FrEN.

    randomize: replace each frame's expression by :func:`random_expression` (pose, camera and photometrics stay
    the clip's own). Held-out measurement uses the natural trajectories (randomize=False).
    """
    if bundle.fren is None:
        raise ValueError("the bundle has no FrEN to encode with")
    size = bundle.crop_size
    crops, params, lms, clips, idx, nuis = [], [], [], [], [], []
    for c, seed in enumerate(seeds):
        clip = SyntheticClip(SynthConfig(seed=int(seed), seconds=frames * stride / 30.0 + 1.0))
        rng = np.random.default_rng(10_000 + int(seed))
        for i in range(0, frames * stride, stride):
            fp = clip.params(i)
            if randomize:
                fp.expression = random_expression(rng)
            fr = clip.render(fp, i)
            crop = align_crop(fr.image, quad_from_landmarks(fr.landmarks), size)
            crops.append(crop.image)
            lms.append(torch.from_numpy(landmarks_to_crop(fr.landmarks, crop.to_frame, keep_z=True)))
            params.append(torch.tensor([*fr.pose.tolist(), *(fr.expression[k] for k in PARAMS[3:])]))
            clips.append(c)
            idx.append(i)
            nuis.append(nuisance_of(fp))
    x = torch.stack(crops)
    fren = bundle.fren
    dev = next(fren.parameters()).device
    ws = torch.cat([fren(x[k:k + batch].to(dev)).cpu() for k in range(0, len(x), batch)])
    return EncodedSet(x, ws, torch.stack(params).float(), torch.stack(lms).float(), torch.tensor(clips),
                      torch.tensor(idx), torch.tensor(nuis, dtype=torch.float32))


# ------------------------------------------------------------------------------------------ rendering helpers
@torch.no_grad()
def render(g: Any, ws: torch.Tensor, style_deltas: dict[str, torch.Tensor] | None = None, batch: int = 64
           ) -> torch.Tensor:
    """G.synthesis in batches: ws [N, num_ws, w_dim] → images [N, 3, R, R] in [-1, 1] (clamped)."""
    dev = next(g.parameters()).device
    out = []
    for k in range(0, ws.shape[0], batch):
        sd = {n: t[k:k + batch].to(dev) for n, t in style_deltas.items()} if style_deltas else None
        out.append(g.synthesis(ws[k:k + batch].to(dev), style_deltas=sd).clamp(-1, 1).cpu())
    return torch.cat(out)


@torch.no_grad()
def mesh_landmarks(mesh: Mesh, images: torch.Tensor, batch: int = 32) -> torch.Tensor:
    """Face-mesh landmarks of renders [N, 3, S, S] → [N, 468, 3] crop px."""
    return torch.cat([mesh(images[k:k + batch]).cpu() for k in range(0, images.shape[0], batch)])


def region_of(measure: str) -> list[int]:
    return list(MEASURE_REGION.get(measure, ()))


def non_target_motion(lm: torch.Tensor, lm0: torch.Tensor, measure: str) -> torch.Tensor:
    """Mean displacement [N] (px) of the landmarks outside ``measure``'s region, after removing the common
    translation (so a pose edit counts only its deformation… of everything but itself: pose edits move every
    landmark by design and report the motion of all of them)."""
    keep = torch.ones(lm.shape[1], dtype=torch.bool)
    keep[region_of(measure)] = False
    d = lm[:, keep, :2] - lm0[:, keep, :2]
    return d.norm(dim=-1).mean(1)


# ------------------------------------------------------------------------------------------ supervised route
@dataclass
class LinearFit:
    """W ≈ mean + params·B (forward model) and params ≈ W·A + a (read-out), on the listed layers."""

    layers: list[int]  # W+ entries used
    mean: torch.Tensor  # [num_ws, w_dim] mean code
    B: torch.Tensor  # [P, num_ws, w_dim] ΔW per unit parameter (zero outside layers)
    readout_w: torch.Tensor  # [P, len(layers)·w_dim]
    readout_b: torch.Tensor  # [P]
    param_std: torch.Tensor  # [P] spread of each parameter in the data
    r2: dict[str, float] = field(default_factory=dict)  # held-out R² of the read-out per parameter


def _ridge(x: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    """argmin ‖x·b − y‖² + lam·‖b‖², x [N, D] centred, y [N, K] centred → b [D, K] (float64 solve)."""
    x64, y64 = x.double(), y.double()
    n, d = x64.shape
    if d <= n:
        a = x64.T @ x64 + lam * torch.eye(d, dtype=torch.float64)
        return torch.linalg.solve(a, x64.T @ y64).float()
    a = x64 @ x64.T + lam * torch.eye(n, dtype=torch.float64)
    return (x64.T @ torch.linalg.solve(a, y64)).float()


def supervised_directions(data: EncodedSet, layers: Sequence[int], holdout_clip: int | None = None) -> LinearFit:
    """Multi-output regression of W+ (on ``layers``) on the known parameters, and the ridge read-out back.

    holdout_clip: clip id left out of the read-out fit to report its R² (then refitted on everything)."""
    layers = list(layers)
    ws, y = data.ws, data.params
    mean = ws.mean(0)
    x = (ws - mean)[:, layers].flatten(1)  # [N, L·w]
    ym, ys = y.mean(0), y.std(0).clamp_min(1e-6)
    yc = (y - ym) / ys
    # forward model: x ≈ [yc, nuisance]·Bn; the camera/photometric covariates (when known) take the part of W
    # that follows the lighting, so a pose direction does not carry the clips' chance lighting correlations.
    # Per unit of the raw parameter divide by its std.
    cov = yc
    if data.nuisance is not None:
        nu = data.nuisance
        cov = torch.cat([yc, (nu - nu.mean(0)) / nu.std(0).clamp_min(1e-6)], 1)
    bn = _ridge(cov, x, lam=1e-3 * len(x)).T[:, : len(PARAMS)]  # [D, P]
    b_full = torch.zeros(len(PARAMS), *ws.shape[1:])
    b_full[:, layers] = (bn.T / ys[:, None]).view(len(PARAMS), len(layers), ws.shape[2])
    # read-out: ridge, λ chosen on the held-out clip
    r2: dict[str, float] = {}
    lam = 1.0
    if holdout_clip is not None and (data.clip == holdout_clip).any() and (data.clip != holdout_clip).any():
        tr, te = data.clip != holdout_clip, data.clip == holdout_clip
        best = None
        xm = x[tr].mean(0)
        for cand in (1e-2, 1e-1, 1.0, 10.0, 100.0):
            a = _ridge(x[tr] - xm, yc[tr] - yc[tr].mean(0), cand * x.shape[1] / 64)
            pred = (x[te] - xm) @ a + yc[tr].mean(0)
            err = ((pred - yc[te]) ** 2).mean(0)
            score = float(err.mean())
            if best is None or score < best[0]:
                best = (score, cand, err)
        assert best is not None
        lam = best[1]
        var = yc[te].var(0).clamp_min(1e-6)
        r2 = {k: float(1 - best[2][i] / var[i]) for i, k in enumerate(PARAMS)}
    a = _ridge(x, yc, lam * x.shape[1] / 64)  # [D, P]
    readout_w = (a * ys[None]).T  # [P, D] on raw (w − mean) … fold the mean into the bias
    readout_b = ym - readout_w @ mean[layers].flatten()
    return LinearFit(layers, mean, b_full, readout_w, readout_b, y.std(0), r2)


def landmark_readout(data: EncodedSet, lam: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Ridge from :func:`landmark_features` of crop landmarks to the parameters → (weight [P, F], bias [P])."""
    f = landmark_features(data.landmarks)
    fm, ym = f.mean(0), data.params.mean(0)
    a = _ridge(f - fm, data.params - ym, lam)  # [F, P]
    return a.T.contiguous(), ym - a.T @ fm


# ------------------------------------------------------------------------------------------ InterFaceGAN route
@torch.no_grad()
def sample_ws(bundle: Any, n: int, source: str, data: EncodedSet | None = None, seed: int = 0,
              spread: float = 1.5) -> torch.Tensor:
    """W+ samples [n, num_ws, w_dim]. source "mapping": G.mapping(z); "encoded": Gaussian with the mean and
    covariance of the encoded latents (top 32 principal components, ``spread`` × their std)."""
    gen = torch.Generator().manual_seed(seed)
    g = bundle.generator
    if source == "mapping":
        z = torch.randn(n, g.z_dim, generator=gen)
        return g.mapping(z.to(next(g.parameters()).device)).cpu()
    if source != "encoded" or data is None:
        raise ValueError("source must be 'mapping' or 'encoded' (with data)")
    flat = data.ws.flatten(1)
    mean = flat.mean(0)
    u, s, vt = torch.linalg.svd(flat - mean, full_matrices=False)
    k = min(32, vt.shape[0])
    std = s[:k] / math.sqrt(max(1, flat.shape[0] - 1))
    eps = torch.randn(n, k, generator=gen) * std * spread
    return (mean + eps @ vt[:k]).view(n, *data.ws.shape[1:])


def _logistic_normal(x: torch.Tensor, y: torch.Tensor, steps: int = 300, l2: float = 1e-3) -> torch.Tensor:
    """Unit normal of a logistic-regression boundary separating y ∈ {0, 1}; x [N, D] standardised inside."""
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-6)
    xs = (x - mu) / sd
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    optim = torch.optim.LBFGS([w, b], lr=1, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optim.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xs @ w + b, y) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    optim.step(closure)
    n = (w.detach() / sd)  # back to raw coordinates
    return n / n.norm().clamp_min(1e-12)


def interfacegan_directions(ws: torch.Tensor, measures: torch.Tensor, layers: Sequence[int],
                            quantile: float = 0.3, orthogonal_to_pose: bool = True) -> dict[str, torch.Tensor]:
    """InterFaceGAN: per measure, the unit normal [num_ws, w_dim] (zero outside ``layers``) of a linear boundary
    between the top and bottom ``quantile`` of samples; expressions orthogonalised against the yaw/pitch normals
    (the conditional manipulation of Shen et al.). Sign: towards larger measure. ws [N, num_ws, w_dim],
    measures [N, len(MEASURES)]."""
    layers = list(layers)
    x = ws[:, layers].flatten(1)
    normals: dict[str, torch.Tensor] = {}
    for k, name in enumerate(MEASURES):
        m = measures[:, k]
        ok = torch.isfinite(m)
        lo, hi = torch.quantile(m[ok], quantile), torch.quantile(m[ok], 1 - quantile)
        sel = ok & ((m <= lo) | (m >= hi))
        if sel.sum() < 8:
            continue
        normals[name] = _logistic_normal(x[sel], (m[sel] >= hi).float())
    if orthogonal_to_pose:
        pose = [normals[p] for p in ("yaw", "pitch") if p in normals]
        q, _ = torch.linalg.qr(torch.stack(pose, 1)) if pose else (None, None)
        for name in list(normals):
            if name in POSE_MEASURES or q is None:
                continue
            v = normals[name] - q @ (q.T @ normals[name])
            normals[name] = v / v.norm().clamp_min(1e-12)
    out = {}
    for name, v in normals.items():
        full = torch.zeros(ws.shape[1:])
        full[layers] = v.view(len(layers), ws.shape[2])
        out[name] = full
    return out


# ------------------------------------------------------------------------------------------ measure-gradient route
def gradient_direction(g: Any, mesh: Mesh, ws: torch.Tensor, measure: str, layers: Sequence[int],
                       norm: float) -> torch.Tensor:
    """The mean gradient of a face-mesh measure with respect to W+ (on ``layers``) over frames ws: the
    first-order steepest direction, scaled to ``norm``. [num_ws, w_dim]."""
    layers = list(layers)
    w = ws.detach().clone().requires_grad_(True)
    m = face_measures(mesh(g.synthesis(w)))[measure].sum()
    (grad,) = torch.autograd.grad(m, w)
    d = torch.zeros(ws.shape[1:])
    d[layers] = grad[:, layers].mean(0)
    return d * (norm / float(d.norm().clamp_min(1e-12)))


# ------------------------------------------------------------------------------------------ scoring a direction
@dataclass
class DirectionScore:
    """How a direction behaves on real encoded frames (face mesh on the renders)."""

    slope: float  # Δ target measure per unit strength (measure units)
    slope_sigma: float  # the same in standard deviations of the measure over the data
    off_target_px: float  # mean non-targeted landmark displacement per unit strength, crop px
    monotonic: float  # fraction of frames whose measure is monotonic over the strengths
    means: list[float]  # mean measure at each strength
    off_image: float = 0.0  # mean |Δimage| ([-1, 1] units) outside the measure's region per unit strength

    def selectivity(self) -> float:
        """Target effect per unit of collateral change: landmarks elsewhere, and colour/texture elsewhere (a
        direction can move the mesh's reading by repainting the face, which is not the edit we want)."""
        return self.slope_sigma / (self.off_target_px + 0.05) / (1.0 + self.off_image / 0.02)


@torch.no_grad()
def score_direction(g: Any, mesh: Mesh, ws: torch.Tensor, delta: torch.Tensor, measure: str,
                    strengths: Sequence[float] = (-2, -1, 0, 1, 2), measure_std: float = 1.0) -> DirectionScore:
    """Apply ws + s·delta ([num_ws, w_dim] or [N, num_ws, w_dim]) at each strength, render, measure."""
    vals, lms, imgs = [], [], []
    for s in strengths:
        img = render(g, ws + s * delta)
        lm = mesh_landmarks(mesh, img)
        imgs.append(img)
        lms.append(lm)
        vals.append(face_measures(lm)[measure])
    v = torch.stack(vals, 1)  # [N, S]
    st = torch.tensor(list(strengths), dtype=torch.float32)
    sc = st - st.mean()
    slope = float(((v - v.mean(1, keepdim=True)) * sc).sum(1).mean() / sc.pow(2).sum())
    diffs = v[:, 1:] - v[:, :-1]
    sign = 1.0 if slope >= 0 else -1.0
    mono = float(((diffs * sign) >= 0).all(1).float().mean())
    i0 = list(strengths).index(0) if 0 in strengths else 0
    span = max(abs(s) for s in strengths) or 1.0
    off, off_img = [], []
    size = imgs[0].shape[-1]
    outside = ~_region_mask(lms[i0], measure, size)  # [N, H, W]
    for k, s in enumerate(strengths):
        if s != strengths[i0]:
            off.append(float(non_target_motion(lms[k], lms[i0], measure).mean()) / abs(s - strengths[i0]))
            diff = (imgs[k] - imgs[i0]).abs().mean(1)  # [N, H, W]
            off_img.append(float((diff * outside).sum() / outside.sum().clamp_min(1)) / abs(s - strengths[i0]))
    return DirectionScore(slope, slope / max(measure_std, 1e-6), float(np.mean(off)) if off else 0.0, mono,
                          [float(x) for x in v.mean(0)], float(np.mean(off_img)) if off_img else 0.0
                          ) if span else DirectionScore(0, 0, 0, 0, [])


def _region_mask(lm: torch.Tensor, measure: str, size: int) -> torch.Tensor:
    """[N, size, size] bool: where an edit of ``measure`` may change the image (pose: everywhere)."""
    if measure in POSE_MEASURES:
        return torch.ones(lm.shape[0], size, size, dtype=torch.bool)
    masks = region_masks(lm, size)
    name = {"mouth_open": "mouth", "smile": "mouth", "eyes_open": "eyes", "brow_raise": "brows"}[measure]
    m = masks[name]
    if measure in ("mouth_open", "smile"):  # the chin and cheeks move with the mouth
        m = m | masks["skin"] & _below(lm, size)
    k = torch.ones(1, 1, 5, 5)
    return torch.nn.functional.conv2d(m[:, None].float(), k, padding=2)[:, 0] > 0  # dilate 2 px


def _below(lm: torch.Tensor, size: int) -> torch.Tensor:
    """[N, size, size]: rows below the nose tip."""
    ys = torch.arange(size).view(1, size, 1).float()
    return (ys > lm[:, 1, 1].view(-1, 1, 1)).expand(-1, size, size)


# ------------------------------------------------------------------------------------------ StyleSpace
def region_masks(lm: torch.Tensor, size: int) -> dict[str, torch.Tensor]:
    """Face-mesh region masks [B, size, size] bool from crop landmarks [B, 468, ≥2]: mouth, eyes, brows, skin
    (face oval minus the others), hair (above the face oval's top, beside/over the forehead)."""
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("mouth", "eyes", "brows", "skin", "hair")}
    for pts in lm[..., :2].cpu().numpy():
        def poly(idx: Sequence[int], grow: float = 1.0, pts: np.ndarray = pts) -> np.ndarray:
            p = pts[list(idx)]
            c = p.mean(0)
            p = c + (p - c) * grow
            m = np.zeros((size, size), np.uint8)
            cv2.fillPoly(m, [np.round(p).astype(np.int32)], 1)
            return m.astype(bool)

        mouth = poly(LIPS_OUTER_LOOP, 1.15)
        eyes = poly(EYE_LEFT_LOOP, 1.4) | poly(EYE_RIGHT_LOOP, 1.4)
        brows = poly(BROW_LEFT_LOOP, 1.5) | poly(BROW_RIGHT_LOOP, 1.5)
        oval = poly(FACE_OVAL)
        skin = oval & ~mouth & ~eyes & ~brows
        head = poly(FACE_OVAL, 1.35)
        top = pts[FOREHEAD_TOP, 1]
        eye_y = pts[list(EYE_LEFT + EYE_RIGHT), 1].mean()
        ys = np.arange(size)[:, None] * np.ones((1, size))
        hair = head & ~oval & (ys < eye_y) | (ys < top) & head
        for k, v in (("mouth", mouth), ("eyes", eyes), ("brows", brows), ("skin", skin), ("hair", hair)):
            out[k].append(v)
    return {k: torch.from_numpy(np.stack(v)) for k, v in out.items()}


@dataclass
class ChannelScore:
    layer: str  # StyleSpace layer
    channel: int  # channel index
    region: str  # best region
    localisation: float  # fraction of the render's response inside the region, over the region's area share
    inside: float  # fraction of the response inside the region
    magnitude: float  # mean |Δimage| per σ over the whole image
    sigma: float  # std of the channel over the encoded data


@torch.no_grad()
def stylespace_channels(g: Any, ws: torch.Tensor, landmarks: torch.Tensor, crop_size: int,
                        regions: Sequence[str] | None = None, min_resolution: int = 8, step: float = 1.0
                        ) -> list[ChannelScore]:
    """Score every StyleSpace channel by where its response lies. ws [B, num_ws, w_dim] (a few encoded frames),
    landmarks [B, 468, ≥2] crop px (crops of side ``crop_size``) of the same frames. For each channel the render's
    response to ±``step``·σ (central difference = the directional derivative along the channel, i.e. its
    gradient map) is split by face-mesh region masks. Returns one score per channel (its best region)."""
    dev = next(g.parameters()).device
    ws = ws.to(dev)
    size = g.img_resolution
    masks = {k: v.to(dev).float() for k, v in region_masks(landmarks * (size / crop_size), size).items()}
    regions = list(regions or masks)
    area = {k: masks[k].mean().clamp_min(1e-4) for k in regions}
    styles = g.synthesis.styles(ws)
    out: list[ChannelScore] = []
    b = ws.shape[0]
    for layer in g.synthesis.style_layers:
        if layer.resolution < min_resolution:
            continue
        s = styles[layer.name]
        sigma = s.std(0).clamp_min(1e-3)  # [C] (over only a few frames: a floor keeps dead channels finite)
        c = layer.channels
        for c0 in range(0, c, 16):
            cs = list(range(c0, min(c, c0 + 16)))
            eye = torch.zeros(len(cs), c, device=dev)
            eye[torch.arange(len(cs)), torch.tensor(cs)] = 1.0
            delta = (eye * sigma * step)[:, None].expand(-1, b, -1).reshape(-1, c)  # [n·B, C]
            wsr = ws.repeat(len(cs), 1, 1)
            plus = g.synthesis(wsr, style_deltas={layer.name: delta})
            minus = g.synthesis(wsr, style_deltas={layer.name: -delta})
            resp = ((plus - minus) / 2).abs().sum(1).view(len(cs), b, size, size)  # [n, B, H, W]
            total = resp.sum((2, 3)).clamp_min(1e-8)  # [n, B]
            for j, ch in enumerate(cs):
                best = None
                for r in regions:
                    inside = float(((resp[j] * masks[r]).sum((1, 2)) / total[j]).mean())
                    loc = inside / float(area[r])
                    if best is None or loc > best[0]:
                        best = (loc, r, inside)
                assert best is not None
                out.append(ChannelScore(layer.name, ch, best[1], best[0], best[2],
                                        float(resp[j].mean()) / step, float(sigma[ch])))
    return out


def pick_channels(scores: Sequence[ChannelScore], regions: Sequence[str], min_magnitude_quantile: float = 0.5,
                  min_inside: float = 0.15) -> dict[str, ChannelScore]:
    """Per region, the most localised channel among those with a response above the median; a region whose best
    channel puts less than ``min_inside`` of its effect inside gets none (it would not be a regional edit)."""
    mags = torch.tensor([s.magnitude for s in scores])
    thr = float(torch.quantile(mags, min_magnitude_quantile)) if len(scores) else 0.0
    best: dict[str, ChannelScore] = {}
    for r in regions:
        cand = [s for s in scores if s.magnitude >= thr]
        if not cand:
            continue
        # localisation measured for this region (recompute from stored best only when it is the best region)
        own = [s for s in cand if s.region == r and s.inside >= min_inside]
        if own:
            best[r] = max(own, key=lambda s: s.localisation * math.sqrt(s.magnitude))
    return best


# ------------------------------------------------------------------------------------------ lip subspace
def lip_basis(g: Any, mesh: Mesh, ws: torch.Tensor, layers: Sequence[int], rank: int = 12) -> torch.Tensor:
    """Orthonormal basis [rank, num_ws·w_dim] of the W+ directions (on ``layers``) that move the inner-lip
    landmarks most: top right-singular vectors of the stacked Jacobians ∂(inner-lip xy)/∂W over frames ws."""
    layers = list(layers)
    rows = []
    for k in range(ws.shape[0]):
        w0 = ws[k:k + 1].detach().clone()
        sub = w0[:, layers].clone().requires_grad_(True)

        def f(sub: torch.Tensor, w0: torch.Tensor = w0) -> torch.Tensor:
            w = w0.clone()
            w[:, layers] = sub
            return mesh(g.synthesis(w))[0, list(LIPS_INNER_LOOP), :2].flatten()

        jac = torch.autograd.functional.jacobian(f, sub, vectorize=False)  # [2K, 1, L, w_dim]
        rows.append(jac.reshape(jac.shape[0], -1))
    j = torch.cat(rows).float()  # [B·2K, L·w]
    _, s, vt = torch.linalg.svd(j, full_matrices=False)
    rank = min(rank, vt.shape[0])
    basis = torch.zeros(rank, *ws.shape[1:])
    basis[:, layers] = vt[:rank].view(rank, len(layers), ws.shape[2])
    log.info("lip subspace: top %d of %d singular values hold %.0f%% of the Jacobian energy", rank, len(s),
             100 * float(s[:rank].pow(2).sum() / s.pow(2).sum()))
    return basis.flatten(1)


# ------------------------------------------------------------------------------------------ random identity
def random_identity_direction(data: EncodedSet, layers: Sequence[int], avoid: torch.Tensor | None = None,
                              seed: int = 1234, sigmas: float = 2.0) -> torch.Tensor:
    """A fixed random δw [num_ws, w_dim] on ``layers``, per layer scaled to the spread of the encoded latents
    (strength 1 ≈ ``sigmas`` standard deviations of the data), with the rows of ``avoid`` [K, num_ws, w_dim]
    (pose/expression directions) projected out."""
    gen = torch.Generator().manual_seed(seed)
    std = data.ws.std(0)  # [num_ws, w_dim]
    d = torch.zeros_like(std)
    layers = list(layers)
    d[layers] = torch.randn(len(layers), std.shape[1], generator=gen) * std[layers]
    if avoid is not None and len(avoid):
        sub = avoid[:, layers].flatten(1)  # only the part of each direction on these layers can overlap
        sub = sub[sub.norm(dim=1) > 1e-8]
        if len(sub):
            q, _ = torch.linalg.qr(sub.T)  # [D, K]
            flat = d[layers].flatten()
            d[layers] = (flat - q @ (q.T @ flat)).view(len(layers), -1)
    target = sigmas * float(std[layers].pow(2).sum().sqrt())
    return d * (target / float(d.norm().clamp_min(1e-12)))


# ------------------------------------------------------------------------------------------ the whole fit
@dataclass
class FitConfig:
    """`stylestream edits fit` options."""

    seeds: list[int] = opt(default_factory=lambda: [101, 102, 103, 104, 105], help="synthetic clips (last: validation)")
    frames: int = opt(100, "frames per clip", min=1)
    stride: int = opt(1, "frame stride inside a clip", min=1)
    igan_samples: int = opt(1000, "InterFaceGAN samples (0: skip that route)", min=0)
    igan_source: str = opt("encoded", "'encoded' (Gaussian around encoded latents) or 'mapping' (G.mapping(z))",
                           choices=("encoded", "mapping"))
    pe_steps: int = opt(200, "pose/expression MLP steps (0: linear map only)", min=0)
    pe_landmark: float = opt(1.0, "landmark-loss weight of the MLP (0: no face mesh in the MLP loss)", min=0.0)
    gradient_route: bool = opt(True, "also try the mean measure-gradient direction (needs the face mesh)")
    max_gain: float = opt(4.0, "calibration: a direction is scaled by at most this to reach 1σ of its measure", min=0.0)
    lip_rank: int = opt(12, "keep_mouth: dimensions of the removed lip subspace", min=1)
    style_frames: int = opt(8, "frames for StyleSpace attribution", min=1)
    score_frames: int = opt(24, "validation frames for choosing between routes", min=1)
    seed: int = opt(0, "everything random")
    identity_layers: str = opt("auto", "random_identity layers: 'auto' (the upper half of W+) or '4,5,6'")


EXPRESSION_EDITS = {  # edit name → (measure, supervised parameter, one-line description)
    "smile": ("smile", "smile", "smile (mouth corners up/out)"),
    "mouth_open": ("mouth_open", "jaw_open", "open / close the mouth"),
    "eyes_open": ("eyes_open", "blink", "open / close the eyes"),
    "brow_raise": ("brow_raise", "brow_raise", "raise / lower the eyebrows"),
    "yaw": ("yaw", "yaw", "turn the head (+: nose to the image's right)"),
    "pitch": ("pitch", "pitch", "tilt the head (+: nose up)"),
}


def fit_edits(bundle: Any, cfg: FitConfig, mesh: Mesh | None, command: str = "") -> tuple[list[EditSpec],
                                                                                         dict[str, torch.Tensor],
                                                                                         dict[str, Any]]:
    """Fit every edit on ``bundle`` → (specs, tensors for Bundle.extra, report). mesh: the differentiable
    face mesh on crops (training.losses.load_face_mesh); without it the InterFaceGAN route, route choice,
    StyleSpace attribution on renders and keep_mouth are skipped."""
    t0 = time.time()
    g = bundle.generator
    layout = g.layout
    coarse = list(range(layout.num_coarse))
    prov = {"command": command, "made_by": "training.directions.fit_edits", "config": cfg.__dict__.copy()}
    report: dict[str, Any] = {"routes": {}}
    log.info("encoding %d synthetic clips × %d frames", len(cfg.seeds), cfg.frames)
    data = encode_synthetic(bundle, cfg.seeds, cfg.frames, stride=cfg.stride, randomize=True)
    val_clip = len(cfg.seeds) - 1
    fit = supervised_directions(data, coarse, holdout_clip=val_clip)
    report["readout_r2"] = fit.r2
    log.info("supervised read-out R² on the validation clip: %s",
             ", ".join(f"{k} {v:.2f}" for k, v in fit.r2.items()))
    tensors: dict[str, torch.Tensor] = {}
    specs: list[EditSpec] = []
    val = data.subset(data.clip == val_clip)
    gen = torch.Generator().manual_seed(cfg.seed)
    pick = torch.randperm(len(val), generator=gen)[: cfg.score_frames]
    val_ws = val.ws[pick]
    train_ws = data.ws[data.clip != val_clip]
    grad_ws = train_ws[torch.randperm(len(train_ws), generator=gen)[: cfg.score_frames]]  # not the scoring frames
    base_measures = face_measures(val.landmarks)
    m_std = {k: float(v.std()) for k, v in base_measures.items()}

    igan: dict[str, torch.Tensor] = {}
    if mesh is not None and cfg.igan_samples > 0:
        log.info("InterFaceGAN: %d %s samples", cfg.igan_samples, cfg.igan_source)
        samples = sample_ws(bundle, cfg.igan_samples, cfg.igan_source, data, seed=cfg.seed)
        meas = stack_measures(face_measures(mesh_landmarks(mesh, render(g, samples))))
        igan = interfacegan_directions(samples, meas, coarse)
        # scale unit normals to one std of the data's projection
        for name, n in igan.items():
            proj = (data.ws * n).sum((1, 2))
            igan[name] = n * float(proj.std())

    for name, (measure, param, desc) in EXPRESSION_EDITS.items():
        k = PARAMS.index(param)
        cands = {"supervised": fit.B[k] * float(fit.param_std[k])}  # one std of the parameter per unit
        if param == "blink":
            cands["supervised"] = -cands["supervised"]  # eyes_open = −blink
        if measure in igan:
            cands["interfacegan"] = igan[measure]
        # not for the pose: the mesh's 2-D pose proxies can be satisfied by deforming the face instead of
        # turning it; the supervised labels are real 3-D pose
        if mesh is not None and cfg.gradient_route and measure not in POSE_MEASURES:
            cands["gradient"] = gradient_direction(g, mesh, grad_ws, measure, coarse,
                                                   float(cands["supervised"].norm()))
        chosen, scores, gains = "supervised", {}, {}
        if mesh is not None:
            for route, d in cands.items():
                sc = score_direction(g, mesh, val_ws, d, measure, (-1.0, 0.0, 1.0), m_std[measure])
                # calibrate: strength 1 should move the measure by one std of the data (gain capped)
                gains[route] = float(min(max(1.0 / max(sc.slope_sigma, 1e-6), 0.1), cfg.max_gain))
                scores[route] = score_direction(g, mesh, val_ws, d * gains[route], measure, (-1.0, 0.0, 1.0),
                                                m_std[measure])
            valid = {r: s for r, s in scores.items() if s.slope > 0}
            if valid:
                chosen = max(valid, key=lambda r: valid[r].selectivity())
        gain = gains.get(chosen, 1.0)
        report["routes"][name] = {"chosen": chosen, "gain": gains,
                                  **{r: s.__dict__ for r, s in scores.items()}}
        log.info("%s: %s", name, ", ".join(f"{r} ×{gains[r]:.2f} slope {s.slope_sigma:+.2f}σ off "
                                          f"{s.off_target_px:.2f}px img {s.off_image:.3f}"
                                          for r, s in scores.items()) + f" → {chosen}")
        tensors[tensor_key(name)] = (cands[chosen] * gain).contiguous()
        unit = (f"one standard deviation of the {measure} face-mesh measure on the training clips" if gains else
                f"one standard deviation of the training clips' {param} parameter")
        specs.append(EditSpec(name, "w_direction", desc, layers=None, range=(-3.0, 3.0),
                              extra={"route": chosen, "measure": measure, "unit": unit, "layers_used": coarse,
                                     "gain": gain, "keep_mouth": name not in ("mouth_open", "yaw", "pitch"),
                                     "provenance": prov}))

    # random identity (privacy mask)
    if cfg.identity_layers == "auto":
        id_layers = list(range(layout.num_ws // 2, layout.num_ws))
    else:
        id_layers = [int(x) for x in cfg.identity_layers.split(",") if x.strip()]
    tensors[tensor_key("random_identity")] = random_identity_direction(data, id_layers, fit.B, seed=cfg.seed + 7)
    specs.append(EditSpec("random_identity", "random_identity",
                          "privacy mask: a fixed random appearance (identity layers), pose/expression kept",
                          layers=None, range=(0.0, 3.0),
                          extra={"layers_used": id_layers, "unit": "2 standard deviations of the encoded latents",
                                 "seed": cfg.seed + 7, "provenance": prov}))

    # pose/expression network + targets
    log.info("pose/expression network: %d steps", cfg.pe_steps)
    pe_cfg = PETrainConfig(steps=cfg.pe_steps, landmark=cfg.pe_landmark if mesh is not None else 0.0,
                           seed=cfg.seed)
    # the linear part of the network starts from the shipped expression directions, converted to ΔW per unit
    # of the parameter (measure-per-parameter slope on the ground truth), where they beat the regression
    init = LinearFit(fit.layers, fit.mean, fit.B.clone(), fit.readout_w, fit.readout_b, fit.param_std, fit.r2)
    gt_measures = face_measures(data.landmarks)
    for name, (measure, param, _) in EXPRESSION_EDITS.items():
        k = PARAMS.index(param)
        if k < 3 or report["routes"].get(name, {}).get("chosen") == "supervised":
            continue
        y, m = data.params[:, k], gt_measures[measure]
        per_param = float(((m - m.mean()) * (y - y.mean())).mean() / y.var().clamp_min(1e-8))
        init.B[k] = tensors[tensor_key(name)] * (per_param / max(m_std[measure], 1e-8))
    net, pe_report = train_pose_expression(bundle, data, init, pe_cfg, mesh)
    report["pose_expression"] = pe_report
    tensors.update(net.to_extra())
    tensors["pose_expression.w_readout.weight"] = fit.readout_w.contiguous()
    tensors["pose_expression.w_readout.bias"] = fit.readout_b.contiguous()
    lw, lb = landmark_readout(data)
    tensors["pose_expression.lm_readout.weight"] = lw
    tensors["pose_expression.lm_readout.bias"] = lb
    net_cfg = net.config()
    for name, target, desc in (("yaw_to_15", {"yaw": 15.0}, "turn the head to yaw +15° (fraction of the way)"),
                               ("pitch_to_0", {"pitch": 0.0}, "level the head to pitch 0° (fraction of the way)"),
                               ("neutral_expression", dict.fromkeys(PARAMS[3:], 0.0),
                                "neutral expression (fraction of the way)")):
        specs.append(EditSpec(name, "pose_expression", desc, range=(0.0, 1.5),
                              extra={"target": target, "net": net_cfg, "keep_mouth": name != "neutral_expression",
                                     "provenance": prov}))

    # keep_mouth: the inner-lip subspace
    if mesh is not None:
        log.info("keep_mouth: inner-lip Jacobian on %d frames", min(8, len(val_ws)))
        tensors[tensor_key("keep_mouth", "basis")] = lip_basis(g, mesh, val_ws[:8], coarse, cfg.lip_rank)
        specs.append(EditSpec("keep_mouth", "keep_mouth",
                              "keep the original mouth motion under other edits (0…1)", range=(0.0, 1.0),
                              extra={"rank": cfg.lip_rank, "provenance": prov}))

    # StyleSpace channels per region
    sframes = data.subset(torch.arange(len(data)) < cfg.style_frames)
    scores = stylespace_channels(g, sframes.ws, sframes.landmarks, bundle.crop_size)
    best = pick_channels(scores, ("mouth", "eyes", "brows", "skin", "hair"))
    for region, sc in best.items():
        name = f"{region}_style"
        specs.append(EditSpec(name, "style_channel", f"StyleSpace channel localised to the {region} "
                              f"({sc.layer}#{sc.channel}, {100 * sc.inside:.0f}% of its effect inside)",
                              style_layer=sc.layer, channel=sc.channel, scale=3.0 * sc.sigma, range=(-3.0, 3.0),
                              extra={"region": region, "localisation": sc.localisation, "inside": sc.inside,
                                     "unit": "3 standard deviations of the channel", "provenance": prov}))
    report["style_channels"] = {r: s.__dict__ for r, s in best.items()}
    report["fit_seconds"] = round(time.time() - t0, 1)
    return specs, tensors, report


def merge_into_bundle(bundle: Any, specs: Sequence[EditSpec], tensors: dict[str, torch.Tensor]) -> None:
    """Add/overwrite ``specs`` in ``bundle.edits`` (same name replaced) and their tensors in ``bundle.extra``
    (stale ``edit.<name>.*`` and ``pose_expression.*`` tensors of replaced edits are dropped)."""
    names = {s.name for s in specs}
    bundle.edits = [e for e in bundle.edits if e.get("name") not in names] + [s.to_dict() for s in specs]
    drop = [k for k in bundle.extra if k.split(".")[1:2] and k.startswith("edit.") and k.split(".")[1] in names]
    if any(k.startswith("pose_expression.") for k in tensors):
        drop += [k for k in bundle.extra if k.startswith("pose_expression.")]
    for k in drop:
        bundle.extra.pop(k, None)
    bundle.extra.update({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
