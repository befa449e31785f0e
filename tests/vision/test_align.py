"""FFHQ alignment: the quad, warps of any size, FFHQ padding, torch/CPU agreement, known-motion recovery."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from realtime.frames import Frame, Track
from realtime.vision.align import (
    AlignConfig,
    align,
    align_crop,
    align_crops_torch,
    ffhq_quad,
    quad_from_landmarks,
    quad_size,
)
from realtime.vision.geometry import apply_affine, crop_affine, invert_affine
from realtime.vision.topology import EYE_LEFT, EYE_RIGHT
from realtime.vision.tracking import FaceTracker, TrackerConfig, track_sequence
from tests import clips


def _ffhq_reference(lm68: np.ndarray) -> np.ndarray:
    """Straight transcription of ffhq-dataset/download_ffhq.py recreate_aligned_images (quad part)."""
    lm_eye_left, lm_eye_right = lm68[36:42], lm68[42:48]
    eye_left, eye_right = np.mean(lm_eye_left, axis=0), np.mean(lm_eye_right, axis=0)
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (lm68[48] + lm68[54]) * 0.5
    eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def test_quad_is_the_ffhq_script_quad() -> None:
    rng = np.random.default_rng(1)
    for _ in range(5):
        lm68 = rng.uniform(50, 400, (68, 2))
        ref = _ffhq_reference(lm68)
        got = ffhq_quad(lm68[36:42].mean(0), lm68[42:48].mean(0), lm68[48], lm68[54])
        np.testing.assert_allclose(got, ref, atol=1e-3)


def test_quad_from_mesh_is_upright_and_similarity_equivariant() -> None:
    lm = clips.true_landmarks(clips.similarity())
    q = quad_from_landmarks(lm)
    tl, bl, br, tr = q
    assert tl[0] < tr[0] and tl[1] < bl[1] and br[0] > bl[0]  # TL, BL, BR, TR on an upright face
    eyes = 0.5 * (lm[list(EYE_LEFT), :2].mean(0) + lm[list(EYE_RIGHT), :2].mean(0))
    assert tl[1] < eyes[1] < bl[1]
    for angle, scale, centre in ((30.0, 0.7, (100.0, 300.0)), (-75.0, 1.6, (400.0, 90.0))):
        m = clips.similarity(angle, scale, centre)
        q_moved = quad_from_landmarks(np.c_[apply_affine(m, lm[:, :2]), lm[:, 2]])
        np.testing.assert_allclose(q_moved, apply_affine(m, q), atol=2e-3)


@pytest.mark.parametrize("size", [128, 256, 1024])
def test_crop_affine_maps_crop_edges_to_the_quad(size: int) -> None:
    q = quad_from_landmarks(clips.true_landmarks(clips.similarity(20.0, 1.3)))
    m = crop_affine(q, size)
    edges = np.array([[-0.5, -0.5], [-0.5, size - 0.5], [size - 0.5, size - 0.5], [size - 0.5, -0.5]])
    np.testing.assert_allclose(apply_affine(m, edges), q, atol=1e-3)
    back = apply_affine(invert_affine(m), apply_affine(m, edges))
    np.testing.assert_allclose(back, edges, atol=1e-6)
    frame = clips.render(clips.static_motion(1, scale=1.3))[0]
    crop = align_crop(frame, q, size)
    assert crop.image.shape == (3, size, size) and crop.image.dtype == torch.float32 and crop.size == size
    assert crop.image.min() >= -1.0 and crop.image.max() <= 1.0
    np.testing.assert_allclose(crop.to_frame, m)


def test_aligned_crop_undoes_rotation() -> None:
    """The same face rotated by 40° gives (nearly) the same crop."""
    frames = clips.render(np.stack([clips.similarity(0.0, 1.2), clips.similarity(40.0, 1.2)]))
    crops = []
    for f, m in zip(frames, (clips.similarity(0.0, 1.2), clips.similarity(40.0, 1.2))):
        crops.append(align_crop(f, quad_from_landmarks(clips.true_landmarks(m)), 256).hwc())
    diff = np.abs(crops[0] - crops[1])[32:-32, 32:-32].mean() * 127.5
    assert diff < 4.0, diff  # mean abs difference in 8-bit levels


def test_padding_only_when_the_quad_leaves_the_frame() -> None:
    inside = clips.render(clips.static_motion(1, scale=1.2))[0]
    q = quad_from_landmarks(clips.true_landmarks(clips.similarity(0.0, 1.2)))
    a, b = align_crop(inside, q, 256, pad=True), align_crop(inside, q, 256, pad=False)
    torch.testing.assert_close(a.image, b.image, rtol=0, atol=0)

    # face at the left edge: part of the quad is outside the frame
    m = clips.similarity(0.0, 1.2, (40.0, 240.0))
    edge = clips.render(m[None])[0]
    q = quad_from_landmarks(clips.true_landmarks(m))
    assert q[:, 0].min() < -20
    padded = align_crop(edge, q, 256, pad=True).hwc()
    plain = align_crop(edge, q, 256, pad=False).hwc()
    inv = invert_affine(crop_affine(q, 256))
    u_edge = apply_affine(inv, np.array([[0.0, 240.0]]))[0, 0]  # crop column of the frame's left edge
    assert 20 < u_edge < 200
    out_cols = slice(0, int(u_edge) - 25)
    # outside: reflected content blurred and faded towards the median → much smoother than plain reflection
    tv_pad = np.abs(np.diff(padded[:, out_cols], axis=1)).mean()
    tv_plain = np.abs(np.diff(plain[:, out_cols], axis=1)).mean()
    assert tv_pad < 0.5 * tv_plain, (tv_pad, tv_plain)
    # well inside the frame the crop is untouched
    in_cols = slice(int(u_edge) + 60, 256)
    np.testing.assert_allclose(padded[:, in_cols], plain[:, in_cols], atol=1e-5)
    assert np.isfinite(padded).all()


@pytest.mark.parametrize("case", ["inside", "shrink", "padded"])
def test_torch_and_cpu_warps_agree(case: str) -> None:
    if case == "inside":
        m, size, n = clips.similarity(15.0, 1.2), (640, 480), 256
    elif case == "shrink":  # the crop shrinks the frame ≥ 2×: both paths box-filter first
        m, size, n = clips.similarity(-10.0, 2.6, (320.0, 300.0), size=(640, 600)), (640, 600), 128
    else:
        m, size, n = clips.similarity(25.0, 1.2, (30.0, 60.0)), (640, 480), 256
    frame = clips.render(m[None], size=size, noise_std=3.0)[0]
    q = quad_from_landmarks(clips.true_landmarks(m))
    cpu = align_crop(frame, q, n)
    t = torch.from_numpy(frame).permute(2, 0, 1)[None]
    crops, to_frame = align_crops_torch(t, q[None], n)
    np.testing.assert_allclose(to_frame[0], cpu.to_frame)
    got = crops[0].permute(1, 2, 0).numpy()
    diff = np.abs(got - cpu.hwc()) * 127.5  # 8-bit levels
    assert diff.mean() < 0.35 and np.percentile(diff, 99.9) < 4.0, (diff.mean(), diff.max())


def test_torch_path_is_batched() -> None:
    ms = [clips.similarity(a, 1.1) for a in (0.0, 20.0, -30.0)]
    frames = clips.render(np.stack(ms))
    qs = np.stack([quad_from_landmarks(clips.true_landmarks(m)) for m in ms])
    crops, to_frame = align_crops_torch(torch.from_numpy(frames).permute(0, 3, 1, 2), qs, 128)
    assert crops.shape == (3, 3, 128, 128) and to_frame.shape == (3, 2, 3)
    for i in range(3):
        single, _ = align_crops_torch(torch.from_numpy(frames[i : i + 1]).permute(0, 3, 1, 2), qs[i : i + 1], 128)
        torch.testing.assert_close(crops[i], single[0])


def test_alignment_recovers_known_motion(tmp_path, record_property) -> None:
    """Real MediaPipe on a PyAV clip with known pan + rotation + zoom: crop error in px at 256."""
    clip = clips.make_clip(tmp_path / "moving.mp4", clips.moving_motion(40))
    truth = clips.true_quads(clip.matrices)
    offline = np.stack([t.quad for t in track_sequence(clip.as_frames())])
    with FaceTracker(TrackerConfig()) as tracker:
        live = np.stack([tracker.track(f).quad for f in clip.as_frames()])
    err_off = clips.alignment_error(offline, truth, 256)
    err_live = clips.alignment_error(live, truth, 256)
    abs_off = clips.alignment_error(offline, truth, 256, relative=False)
    abs_live = clips.alignment_error(live, truth, 256, relative=False)
    record_property("align_err_px256_offline_motion_mean", float(err_off.mean()))
    record_property("align_err_px256_offline_abs_mean", float(abs_off.mean()))
    record_property("align_err_px256_live_abs_mean", float(abs_live.mean()))
    print(f"alignment error @256 (motion-following): offline mean {err_off.mean():.2f} max {err_off.max():.2f}, "
          f"live mean {err_live.mean():.2f}; absolute: offline {abs_off.mean():.2f}, live {abs_live.mean():.2f}")
    assert err_off.mean() < 1.0 and err_off.max() < 2.0, err_off
    assert err_live.mean() < 1.5, err_live
    assert abs_off.mean() < 1.5 and abs_off.max() < 3.0, abs_off
    assert abs_live.mean() < 1.5, abs_live  # the live filter follows the motion without lag
    # the size of the crop follows the zoom
    assert abs(quad_size(offline[-1]) / quad_size(offline[0]) - quad_size(truth[-1]) / quad_size(truth[0])) < 0.02


def test_align_stage_helper() -> None:
    m = clips.similarity(0.0, 1.2)
    frame = Frame(clips.render(m[None])[0], 0)
    assert align(frame, Track(landmarks=None)) is None
    lm = clips.true_landmarks(m).astype(np.float32)
    crop = align(frame, Track(landmarks=lm, quad=quad_from_landmarks(lm)), AlignConfig(size=128))
    assert crop is not None and crop.image.shape == (3, 128, 128)
