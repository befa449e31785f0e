"""Paste-back: mask, identity round trip, CPU/torch agreement, colour matching, face loss and fades."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from realtime.frames import Crop, Frame, Track
from realtime.vision.align import align_crop, align_crops_torch, quad_from_landmarks
from realtime.vision.composite import (
    CompositeConfig,
    Compositor,
    FaceHold,
    PersonSegmenter,
    _crop_uint8,
    face_mask,
    match_color,
    paste_back,
    paste_back_torch,
    skin_region,
)
from realtime.vision.geometry import apply_affine, landmarks_to_crop
from realtime.vision.tracking import FaceTracker
from tests import clips


def _scene(angle: float = 10.0, scale: float = 1.2, size: int = 256):
    m = clips.similarity(angle, scale)
    frame = clips.render(m[None], noise_std=2.0)[0]
    lm = clips.true_landmarks(m).astype(np.float32)
    q = quad_from_landmarks(lm)
    crop = align_crop(frame, q, size)
    track = Track(landmarks=lm, score=1.0, quad=q)
    return frame, track, crop


def _frame_alpha(mask: np.ndarray, crop: Crop, shape: tuple[int, ...]) -> np.ndarray:
    return cv2.warpAffine(mask, crop.to_frame, (shape[1], shape[0]), flags=cv2.INTER_LINEAR)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return 10.0 * np.log10(255.0**2 / max(mse, 1e-12))


def test_mask_covers_the_face_and_the_forehead() -> None:
    frame, track, crop = _scene()
    lm_c = landmarks_to_crop(track.landmarks, crop.to_frame)
    mask = face_mask(lm_c, crop.size)
    assert mask.shape == (256, 256) and mask.dtype == np.float32
    assert mask.min() >= 0.0 and mask.max() <= 1.0
    assert mask[0, 0] == 0 and mask[-1, -1] == 0 and mask[0, -1] == 0
    nose = np.round(lm_c[1]).astype(int)
    assert mask[nose[1], nose[0]] > 0.99
    assert ((mask > 0.05) & (mask < 0.95)).sum() > 500  # feathered, not a hard edge
    top = lm_c[10]  # top of MediaPipe's face oval (mid forehead)
    above = np.round(top + [0.0, -0.08 * crop.size]).astype(int)
    no_forehead = face_mask(lm_c, crop.size, CompositeConfig(forehead=0.0))
    assert mask[above[1], above[0]] > 0.5 > no_forehead[above[1], above[0]]
    # the feather scales with the crop: same relative mask at 512
    crop512 = align_crop(frame, track.quad, 512)
    m512 = face_mask(landmarks_to_crop(track.landmarks, crop512.to_frame), 512)
    small = cv2.resize(m512, (256, 256), interpolation=cv2.INTER_AREA)
    assert np.abs(small - mask).mean() < 0.01


@pytest.mark.parametrize("size", [256, 512])
def test_identity_generator_reproduces_the_frame(size: int, record_property) -> None:
    frame, track, crop = _scene(size=size)
    mask = face_mask(landmarks_to_crop(track.landmarks, crop.to_frame), size)
    out = paste_back(frame, crop.hwc(), crop.to_frame, mask)
    inside = _frame_alpha(mask, crop, frame.shape) > 0.5
    assert inside.sum() > 5000
    value = psnr(out[inside], frame[inside])
    record_property(f"identity_psnr_db_{size}", value)
    print(f"identity paste PSNR inside the mask @{size}: {value:.1f} dB")
    assert value >= 35.0
    # outside the mask's box nothing changed at all
    changed = np.any(out != frame, axis=2)
    ys, xs = np.nonzero(changed)
    corners = apply_affine(crop.to_frame, np.array([[0, 0], [size, 0], [0, size], [size, size]], float))
    assert xs.min() >= corners[:, 0].min() - 2 and xs.max() <= corners[:, 0].max() + 2
    assert (~changed[: int(corners[:, 1].min()) - 2]).all()


def test_paste_detects_a_wrong_transform() -> None:
    """The round-trip test can fail: pasting through a slightly wrong affine breaks it."""
    frame, track, crop = _scene()
    mask = face_mask(landmarks_to_crop(track.landmarks, crop.to_frame), crop.size)
    shifted = crop.to_frame.copy()
    shifted[:, 2] += 1.5
    out = paste_back(frame, crop.hwc(), shifted, mask)
    inside = _frame_alpha(mask, crop, frame.shape) > 0.5
    assert psnr(out[inside], frame[inside]) < 35.0


def test_torch_and_cpu_paste_agree() -> None:
    frames, faces, masks, tfs = [], [], [], []
    for angle in (10.0, -25.0):
        frame, track, crop = _scene(angle)
        frames.append(frame)
        faces.append(-crop.hwc())  # an "edited" face: inverted colours, so the paste is visible
        masks.append(face_mask(landmarks_to_crop(track.landmarks, crop.to_frame), crop.size))
        tfs.append(crop.to_frame)
    out_t = paste_back_torch(
        torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2),
        torch.from_numpy(np.stack(faces)).permute(0, 3, 1, 2),
        np.stack(tfs),
        torch.from_numpy(np.stack(masks))[:, None],
        alpha=np.array([1.0, 0.6]),
    )
    assert out_t.dtype == torch.uint8
    for i, a in enumerate((1.0, 0.6)):
        cpu = paste_back(frames[i], faces[i], tfs[i], masks[i], alpha=a)
        got = out_t[i].permute(1, 2, 0).numpy()
        diff = np.abs(got.astype(int) - cpu.astype(int))
        assert np.abs(cpu.astype(int) - frames[i]).mean() > 2  # something was pasted
        assert diff.mean() < 0.2 and np.percentile(diff, 99.9) <= 3, (diff.mean(), diff.max())


def test_torch_align_then_paste_round_trip() -> None:
    frame, track, crop = _scene()
    t = torch.from_numpy(frame).permute(2, 0, 1)[None]
    crops, tf = align_crops_torch(t, track.quad[None], 256)
    mask = face_mask(landmarks_to_crop(track.landmarks, tf[0]), 256)
    out = paste_back_torch(t, crops, tf, torch.from_numpy(mask)[None, None])[0].permute(1, 2, 0).numpy()
    inside = _frame_alpha(mask, crop, frame.shape) > 0.5
    assert psnr(out[inside], frame[inside]) >= 35.0


def test_colour_matching_restores_skin_tone() -> None:
    frame, track, crop = _scene()
    lm_c = landmarks_to_crop(track.landmarks, crop.to_frame)
    skin = skin_region(lm_c, crop.size)
    assert 2000 < skin.sum() < 0.5 * crop.size**2
    tinted = np.clip(crop.hwc() * 0.8 + np.array([0.25, -0.1, -0.2], np.float32), -1, 1)
    fixed = match_color(tinted, crop.hwc(), skin)
    err_before = np.abs(tinted[skin].mean(0) - crop.hwc()[skin].mean(0)).max()
    err_after = np.abs(fixed[skin].mean(0) - crop.hwc()[skin].mean(0)).max()
    assert err_before > 0.1 and err_after < 0.02, (err_before, err_after)


def test_face_hold_state_machine() -> None:
    hold = FaceHold(CompositeConfig(hold_s=0.2, fade_out_s=0.2, fade_in_s=0.2, fps=10.0))
    seq = [True] * 3 + [False] * 8 + [True] * 3
    states = [hold.update(h, t=i * 0.1) for i, h in enumerate(seq)]
    modes = [s.mode for s in states]
    alphas = [round(s.alpha, 3) for s in states]
    assert modes[:3] == ["live"] * 3 and alphas[2] == 1.0
    assert modes[3:5] == ["hold", "hold"] and alphas[3:5] == [1.0, 1.0]  # held 0.2 s at full strength
    assert 0.0 < alphas[6] < 1.0  # then fading …
    assert modes[8:11] == ["off"] * 3 and alphas[8] == 0.0  # … to the untouched frame
    assert modes[11] == "live" and 0.0 < alphas[11] < 1.0 and alphas[12] == 1.0  # fade back in


def test_frames_without_a_face_come_out_unchanged() -> None:
    comp = Compositor()
    frame = Frame(clips.render(clips.static_motion(1))[0], 0)
    out = comp.composite(frame, Track(landmarks=None), None, None)
    assert out.image is frame.image and not out.face
    # a broken face never raises: the frame goes through untouched
    _, track, crop = _scene()
    out = comp.composite(Frame(frame.image, 1), track, crop, np.zeros((7, 7, 3), np.float32))
    np.testing.assert_array_equal(out.image, frame.image)


def test_face_leaving_and_reentering_fades(tmp_path) -> None:
    """Real tracking on a PyAV clip; an inverting "generator"; no exception, hold, fade out, fade in."""
    clip = clips.make_clip(tmp_path / "exit.mp4", clips.exit_motion(44, away_frames=14))
    comp = Compositor(CompositeConfig(hold_s=0.1, fade_out_s=0.1, fade_in_s=0.1))
    strength, faces = [], []
    with FaceTracker() as tracker:
        for frame in clip.as_frames():
            track = tracker.track(frame)
            crop = align_crop(frame.image, track.quad, 256) if track.has_face else None
            face = -crop.hwc() if crop is not None else None
            out = comp.composite(frame, track, crop, face)
            assert out.image.shape == frame.image.shape and out.index == frame.index
            strength.append(float(np.abs(out.image.astype(int) - frame.image).mean()))
            faces.append(track.has_face)
    faces_a = np.array(faces)
    gone = np.flatnonzero(~faces_a)
    assert gone.size >= 8
    lost, back = gone[0], gone[-1] + 1
    assert max(strength[:lost]) > 2.0  # filter on before the loss
    assert strength[lost] > 0.0  # held right after the loss …
    away = strength[lost:back]
    assert any(0.0 < v < 0.8 * strength[lost] for v in away)  # … faded gradually (not cut) …
    assert strength[back - 1] == 0.0  # … to untouched frames while the face is away
    assert 0.0 < strength[back] < strength[back + 2]  # fades back in when the face returns
    assert strength[back + 2] > 1.0


def test_person_segmentation_keeps_the_background_out() -> None:
    frame, track, crop = _scene()
    seg = PersonSegmenter()
    try:
        person = seg(_crop_uint8(crop.hwc()))
        empty = seg(np.full((256, 256, 3), 100, np.uint8))
    finally:
        seg.close()
    assert person.shape == (256, 256) and float(person.min()) >= 0.0 and float(person.max()) <= 1.0
    lm_c = landmarks_to_crop(track.landmarks, crop.to_frame)
    nose = np.round(lm_c[1]).astype(int)
    assert person[nose[1], nose[0]] > 0.8  # the face is a person
    assert empty.mean() < 0.2  # a plain wall is not
    mask = face_mask(lm_c, 256, person=empty)
    assert mask.max() < 0.5  # no person → nothing pasted
    comp = Compositor(CompositeConfig(segmentation=True, color_match=True))
    for i in range(10):  # past the fade-in
        out = comp.composite(Frame(frame, i), track, crop, -crop.hwc())
    comp.close()
    assert out.face and np.abs(out.image.astype(int) - frame).mean() > 0.5


def test_in_place_paste_matches_copy() -> None:
    frame, track, crop = _scene()
    outs = []
    for in_place in (False, True):
        comp = Compositor(CompositeConfig(in_place=in_place, fade_in_s=0.0))
        f = Frame(frame.copy(), 0)
        out = comp.composite(f, track, crop, -crop.hwc())
        assert out.face and (out.image is f.image) == in_place
        outs.append(out.image)
    np.testing.assert_array_equal(outs[0], outs[1])
    assert np.abs(outs[0].astype(int) - frame).mean() > 1.0
