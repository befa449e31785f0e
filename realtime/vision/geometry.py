"""Affine geometry between frames and aligned crops (pixel-centre conventions: pixel i has its centre at i)."""

from __future__ import annotations

import numpy as np


def rescale_affine(to_frame: np.ndarray, s: float) -> np.ndarray:
    """A crop→frame affine for a crop resampled by 1/s: x_old = s·(x_new + ½) − ½ (pixel centres kept)."""
    pre = np.array([[s, 0.0, 0.5 * s - 0.5], [0.0, s, 0.5 * s - 0.5], [0.0, 0.0, 1.0]])
    return np.asarray(to_frame, np.float64) @ pre
