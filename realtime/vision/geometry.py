"""2-D affine maps between frame and crop pixels (numpy; one definition for the whole project).

An affine is a [2, 3] float64 matrix ``m`` taking points ``p`` (pixel-index coordinates: pixel i has its centre
at i) to ``m[:, :2] @ p + m[:, 2]``. A crop's ``to_frame`` maps crop pixels to frame pixels (:func:`crop_affine`
builds it from an FFHQ quad); its inverse maps frame pixels into the crop.
"""

from __future__ import annotations

import numpy as np


def crop_affine(quad: np.ndarray, size: int) -> np.ndarray:
    """Affine [2, 3] float64 taking crop pixel coords (0…size-1) to frame pixel coords.

    The crop's outer edges (-0.5 and size-0.5) land on the quad's edges, like PIL's QUAD transform in the
    FFHQ script. quad: [4, 2] (TL, BL, BR, TR).
    """
    q = np.asarray(quad, np.float64)
    ex = (q[3] - q[0]) / size  # frame step per crop column
    ey = (q[1] - q[0]) / size  # frame step per crop row
    origin = q[0] + 0.5 * ex + 0.5 * ey  # centre of crop pixel (0, 0)
    return np.array([[ex[0], ey[0], origin[0]], [ex[1], ey[1], origin[1]]], np.float64)


def invert_affine(m: np.ndarray) -> np.ndarray:
    """Inverse of a [2, 3] affine (or a batch [..., 2, 3])."""
    m = np.asarray(m, np.float64)
    a = m[..., :2]
    ainv = np.linalg.inv(a)
    t = -np.einsum("...ij,...j->...i", ainv, m[..., 2])
    return np.concatenate([ainv, t[..., None]], axis=-1)


def apply_affine(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Map points [..., 2] through a [2, 3] affine → [..., 2] float64."""
    m = np.asarray(m, np.float64)
    p = np.asarray(pts, np.float64)
    return p @ m[:, :2].T + m[:, 2]


def affine_scale(m: np.ndarray) -> float:
    """The mean linear scale of an affine [2, 3]: sqrt(|det|) (1 for a rigid motion)."""
    return float(np.sqrt(abs(np.linalg.det(np.asarray(m, np.float64)[:, :2]))))


def landmarks_to_crop(landmarks: np.ndarray, to_frame: np.ndarray, *, keep_z: bool = False) -> np.ndarray:
    """Frame-pixel landmarks → crop pixels through the inverse of ``to_frame`` [2, 3].

    Args:
        landmarks: [K, 2|3] frame pixels (x, y[, z in the same pixel scale]).
        keep_z: also return z, scaled like x and y (needs [K, 3] input).
    Returns: [K, 2] float64 (x, y), or with ``keep_z`` [K, 3] float32 (x, y, z).
    """
    lm = np.asarray(landmarks)
    inv = invert_affine(to_frame)
    xy = apply_affine(inv, lm[:, :2])
    if not keep_z:
        return xy
    return np.concatenate([xy, lm[:, 2:3] * affine_scale(inv)], axis=1).astype(np.float32)


def rescale_affine(to_frame: np.ndarray, s: float) -> np.ndarray:
    """A crop→frame affine for a crop resampled by 1/s: x_old = s·(x_new + ½) − ½ (pixel centres kept)."""
    pre = np.array([[s, 0.0, 0.5 * s - 0.5], [0.0, s, 0.5 * s - 0.5], [0.0, 0.0, 1.0]])
    return np.asarray(to_frame, np.float64) @ pre
