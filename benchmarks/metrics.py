"""Fidelity and temporal-stability metrics shared by the benchmarks, the demo and the docs.

All image inputs are float tensors in [-1, 1] (``data_range`` 2) unless said otherwise.

* :func:`psnr` — peak signal-to-noise ratio in dB (``inf`` for identical inputs); :func:`mean_frame_psnr` —
  the per-frame mean used for videos.
* :func:`ssim` — structural similarity (the training losses' implementation, one definition).
* :func:`temporal_consistency` — Video2StyleGAN's TC: mean RMSE between each frame and its aligned neighbours
  within ±``radius`` frames (6 neighbours for radius 3). 0 for a static clip.
* :func:`warping_error` — Lai et al. 2018: mean squared difference between each output frame and the previous
  output frame warped by the optical flow of the *input* video, over pixels that are not occluded (forward-backward
  flow check). ~0 for a pure translation warped with its true flow.
* :func:`landmark_error` — mean Euclidean distance between two landmark sets, ignoring missing detections.

Tracking against a known motion (``realtime.io.stills`` clips; quads are FFHQ crop quads [T, 4, 2], frame px):

* :func:`jitter` — frame-to-frame crop movement the true motion does not explain, in crop px.
* :func:`alignment_error` — per-frame crop corner error, relative to the motion or absolute, in crop px.
* :func:`lag_frames` — the delay that best aligns tracked quads with the true ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
import torch

from realtime.vision.geometry import apply_affine, invert_affine
from training.losses import mean_frame_psnr, temporal_consistency  # noqa: F401 - one definition, re-exported
from training.losses import ssim as _ssim


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0) -> float:
    """a, b: same shape. Mean over everything → dB; ``inf`` when identical."""
    mse = (a.float() - b.float()).square().mean().item()
    if mse == 0:
        return math.inf
    return 10.0 * math.log10(data_range**2 / mse)


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0) -> float:
    """Mean SSIM of image batches [B, C, H, W] (training/losses.py: one definition)."""
    return float(_ssim(a.float(), b.float(), data_range=data_range).mean())


def _to_gray_u8(img: np.ndarray) -> np.ndarray:
    if img.dtype != np.uint8:
        img = np.clip((img.astype(np.float32) + 1.0) * 127.5, 0, 255).astype(np.uint8)
    return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if img.ndim == 3 else img


def optical_flow(prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
    """Dense flow from ``nxt`` back to ``prev`` ([H, W, 2], pixels): prev(x + flow(x)) ≈ nxt(x) (Farnebäck)."""
    return cv2.calcOpticalFlowFarneback(_to_gray_u8(nxt), _to_gray_u8(prev), None, 0.5, 4, 21, 5, 7, 1.5, 0)


def warp(img: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Sample ``img`` at x + flow(x) (bilinear, border replicate)."""
    h, w = flow.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(img, gx + flow[..., 0], gy + flow[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def occlusion_mask(flow_bwd: np.ndarray, flow_fwd: np.ndarray, alpha: float = 0.01, beta: float = 0.5) -> np.ndarray:
    """Valid (non-occluded) pixels by forward-backward consistency (Sundaram et al.; Lai et al. 2018).

    flow_bwd maps frame t → t−1 (``optical_flow(f[t-1], f[t])``), flow_fwd maps t−1 → t. Returns [H, W] bool.
    """
    fwd_at = warp(flow_fwd.astype(np.float32), flow_bwd.astype(np.float32))
    s = flow_bwd + fwd_at
    lhs = (s**2).sum(-1)
    rhs = alpha * ((flow_bwd**2).sum(-1) + (fwd_at**2).sum(-1)) + beta
    return lhs <= rhs


def warping_error(outputs: Sequence[np.ndarray], inputs: Sequence[np.ndarray] | None = None,
                  flows: Sequence[np.ndarray] | None = None) -> float:
    """Lai et al. 2018 warping error of an output video.

    outputs: T frames [H, W, 3] (uint8, or float in [-1, 1]); flows: T−1 backward flows (frame t → t−1) of the
    *input* video, or None to estimate them from ``inputs`` (Farnebäck). Returns the mean over t of the masked
    MSE between output t and output t−1 warped to t, with images scaled to [0, 1].
    """
    if len(outputs) < 2:
        return 0.0

    def unit(x: np.ndarray) -> np.ndarray:
        return x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else (x.astype(np.float32) + 1.0) / 2.0

    errs = []
    for t in range(1, len(outputs)):
        if flows is not None:
            fb = np.asarray(flows[t - 1], np.float32)
            h, w = fb.shape[:2]
            gx, gy = np.meshgrid(np.arange(w), np.arange(h))
            sx, sy = gx + fb[..., 0], gy + fb[..., 1]
            mask = (sx >= 0) & (sx <= w - 1) & (sy >= 0) & (sy <= h - 1)  # source inside the previous frame
        else:
            assert inputs is not None, "give the input frames or their flows"
            fb = optical_flow(inputs[t - 1], inputs[t])
            ff = optical_flow(inputs[t], inputs[t - 1])
            mask = occlusion_mask(fb, ff)
        warped = warp(unit(outputs[t - 1]), fb)
        d = ((unit(outputs[t]) - warped) ** 2).mean(-1)
        if mask.any():
            errs.append(float(d[mask].mean()))
    return float(np.mean(errs)) if errs else 0.0


def landmark_error(ref: Sequence[np.ndarray | None], rec: Sequence[np.ndarray | None]) -> tuple[float, int]:
    """Mean Euclidean distance (x, y) over frames where both sets exist → (error, frames used)."""
    d = [float(np.linalg.norm(a[:, :2] - b[:, :2], axis=1).mean()) for a, b in zip(ref, rec, strict=True)
         if a is not None and b is not None]
    return (float(np.mean(d)) if d else math.nan), len(d)


# ---------------------------------------------------------------------------------- tracking vs known motion
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
    back = [apply_affine(invert_affine(r), q[t]) for t, r in enumerate(motions)]
    rest = np.mean(back, axis=0)
    return np.asarray([np.linalg.norm(q[t] - apply_affine(r, rest), axis=-1).mean() * scale[t]
                       for t, r in enumerate(motions)])


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
