"""Test-side names for known-motion clips of ``skimage.data.astronaut()`` (the code lives in the package).

The clips themselves (motions, rendering, PyAV write/read, ground-truth mesh and quads, the noisy oracle
landmark source) are ``realtime.io.stills``; the tracking metrics are ``benchmarks.metrics``. This module keeps
the short names the tests use, with the astronaut as the still::

    from tests import clips
    clip = clips.make_clip(tmp_path / "pan.mp4", clips.moving_motion(45))   # written with PyAV, read back decoded
    clip.frames      # [T, H, W, 3] uint8 decoded frames
    clip.matrices    # [T, 2, 3] astronaut pixels → frame pixels (ground truth)
    clips.jitter(tracked_quads, clips.true_quads(clip.matrices))

Nothing outside tests/ may import this module (.importlinter).
"""

from __future__ import annotations

import numpy as np

from benchmarks.metrics import alignment_error, jitter, lag_frames
from realtime.io.stills import (
    Clip,
    OracleLandmarks,
    exit_motion,
    load_still,
    make_clip,
    moving_motion,
    render,
    similarity,
    static_motion,
    swing_motion,
    true_landmarks,
    true_quads,
)

__all__ = [
    "Clip", "OracleLandmarks", "alignment_error", "astronaut", "exit_motion", "jitter", "lag_frames", "make_clip",
    "moving_motion", "render", "similarity", "static_motion", "swing_motion", "true_landmarks", "true_quads",
]


def astronaut() -> np.ndarray:
    """The scikit-image astronaut portrait, [512, 512, 3] uint8 RGB (read-only)."""
    return load_still("astronaut").image
