"""realtime/io/stills.py: known-motion clips from still photos, and their ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.metrics import alignment_error
from realtime.io.stills import (
    NAMED_STILLS,
    OracleLandmarks,
    load_still,
    make_clip,
    render,
    similarity,
    true_landmarks,
    true_quads,
    webcam_motion,
)
from realtime.vision.geometry import affine_scale
from realtime.vision.tracking import track_sequence


@pytest.mark.parametrize("name", sorted(NAMED_STILLS))
def test_named_stills_and_their_face_centres(name: str) -> None:
    still = load_still(name)
    assert still.image.dtype == np.uint8 and still.image.ndim == 3 and not still.image.flags.writeable
    lo, hi = still.landmarks[:, :2].min(0), still.landmarks[:, :2].max(0)  # MediaPipe on the still
    assert np.abs(np.asarray(still.centre) - (lo + hi) / 2).max() < 3.0, (still.centre, (lo + hi) / 2)
    assert load_still(name) is still  # cached: MediaPipe runs once per process


def test_webcam_motion_stays_in_its_bounds_and_is_deterministic() -> None:
    size = (640, 480)
    m = webcam_motion(300, size, seed=3, scale=1.0, shift=0.04, roll_deg=5.0, zoom=0.04)
    assert m.shape == (300, 2, 3)
    angle = np.degrees(np.arctan2(-m[:, 1, 0], m[:, 0, 0]))  # counter-clockwise on screen
    scale = np.array([affine_scale(x) for x in m])
    centre = np.array([x[:, :2] @ np.array((225.0, 125.0)) + x[:, 2] for x in m])
    assert np.abs(angle).max() <= 5.0 + 1e-9 and np.abs(angle).max() > 2.0  # it does roll, within ±5°
    assert np.abs(scale - 1.0).max() <= 0.04 + 1e-9 and np.ptp(scale) > 0.02
    assert np.abs(centre - (320.0, 240.0)).max(0).tolist() <= [0.04 * 640 + 1e-9, 0.04 * 480 + 1e-9]
    step = np.linalg.norm(np.diff(centre, axis=0), axis=1)
    assert step.max() < 2.0  # smooth: a webcam sway, not a jump
    np.testing.assert_array_equal(m, webcam_motion(300, size, seed=3, scale=1.0))
    assert not np.array_equal(m, webcam_motion(300, size, seed=4, scale=1.0))


def test_unseen_face_clip_ground_truth_matches_mediapipe(tmp_path) -> None:
    """Grace Hopper (never used for training) swaying like a webcam: the tracked crop follows the known motion."""
    still = load_still("grace_hopper")
    mats = webcam_motion(24, seed=1, scale=0.5, centre=still.centre)
    clip = make_clip(tmp_path / "grace.mp4", mats, still=still)
    assert clip.frames.shape == (24, 480, 640, 3)
    tracked = np.stack([t.quad for t in track_sequence(clip.as_frames())])
    truth = true_quads(clip.matrices, still)
    # crop px at 256. Measured: follows the motion to ~1 px (relative); MediaPipe's own mesh of the half-size face
    # sits ~3.6 px from its mesh of the full-size still (absolute). A wrong motion or mesh would be tens of px.
    rel = alignment_error(tracked, truth, 256)
    absolute = alignment_error(tracked, truth, 256, relative=False)
    assert rel.mean() < 2.0 and absolute.mean() < 6.0, (rel, absolute)


def test_oracle_landmarks_are_the_moved_mesh_plus_the_requested_noise() -> None:
    m = similarity(3.0, 1.1)[None].repeat(40, 0)
    frames = render(m)
    exact = OracleLandmarks(m, point_px=0.0, shift_px=0.0, scale_std=0.0)
    np.testing.assert_allclose(exact.process(frames[0])[0].landmarks, true_landmarks(m[0]), atol=1e-3)
    noisy = OracleLandmarks(m, point_px=1.0, shift_px=0.0, scale_std=0.0, seed=1)
    d = np.concatenate([noisy.process(f)[0].landmarks[:, :2] - true_landmarks(m[0])[:, :2] for f in frames])
    assert abs(float(d.std()) - 1.0) < 0.05  # N(0, 1 px) per axis
