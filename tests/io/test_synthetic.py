"""realtime/io/synthetic.py: determinism, ground truth vs image (MediaPipe), expressions, pose signs, timing."""

from __future__ import annotations

import itertools
import math

import av
import cv2
import numpy as np
import pytest

from models.errors import UserError
from realtime.io import sources, synthetic
from realtime.io.synthetic import (
    EXPRESSIONS,
    FrameParams,
    SynthConfig,
    SyntheticClip,
    _face_frame,
    detect_landmarks,
    load_portraits,
    synthetic_clip,
)
from realtime.vision.topology import (
    BROW_LEFT_LOOP,
    BROW_RIGHT_LOOP,
    CHEEK_LEFT,
    CHEEK_RIGHT,
    LIPS_LOWER_INNER,
    LIPS_UPPER_INNER,
    MOUTH_LEFT,
    MOUTH_RIGHT,
    NOSE_TIP,
)

EYE_L_TOP, EYE_L_BOTTOM = 159, 145
EYE_R_TOP, EYE_R_BOTTOM = 386, 374


@pytest.fixture(scope="module")
def portraits():
    return load_portraits()  # the astronaut, landmarks from MediaPipe (once per module)


def _small(seed: int = 0, **kw) -> SynthConfig:
    base = dict(width=320, height=240, fps=10.0, seconds=2.0, seed=seed)
    base.update(kw)
    return SynthConfig(**base)


def _iod(lm: np.ndarray) -> float:
    return _face_frame(lm.astype(np.float64))[3]


def _clean(clip: SyntheticClip, **kw) -> FrameParams:
    """Neutral parameters: no camera motion, no photometric effects; keyword overrides."""
    fp = FrameParams()
    expr = {k: kw.pop(k) for k in list(kw) if k in EXPRESSIONS}
    fp.expression.update(expr)
    for k, v in kw.items():
        setattr(fp, k, v)
    return fp


# --------------------------------------------------------------------------------------------- basics
def test_same_seed_same_frames_different_seed_different(portraits):
    a = list(itertools.islice(synthetic_clip(_small(seed=3), portraits), 6))
    b = list(itertools.islice(synthetic_clip(_small(seed=3), portraits), 6))
    c = list(itertools.islice(synthetic_clip(_small(seed=4), portraits), 6))
    for fa, fb in zip(a, b):
        assert np.array_equal(fa.image, fb.image)
        assert np.array_equal(fa.landmarks, fb.landmarks)
        assert np.array_equal(fa.pose, fb.pose)
        assert fa.expression == fb.expression
    for fa, fc in zip(a, c):
        assert not np.array_equal(fa.image, fc.image)
        assert np.abs(fa.landmarks - fc.landmarks).max() > 1.0
    # random access renders the same frame as iteration, and consecutive frames differ (it moves)
    clip = SyntheticClip(_small(seed=3), portraits)
    assert np.array_equal(clip[5].image, a[5].image)
    assert np.abs(a[0].landmarks - a[5].landmarks).max() > 0.5


def test_size_fps_length_and_types(portraits):
    cfg = _small(width=200, height=150, fps=12.0, seconds=1.5)
    frames = list(synthetic_clip(cfg, portraits))
    assert len(frames) == 18 == len(SyntheticClip(cfg, portraits))
    for i, f in enumerate(frames):
        assert f.index == i
        assert f.image.shape == (150, 200, 3) and f.image.dtype == np.uint8 and f.image.flags.c_contiguous
        assert f.landmarks.shape == (468, 3) and f.landmarks.dtype == np.float32
        assert f.pose.shape == (3,) and f.pose.dtype == np.float32
        assert set(f.expression) == set(EXPRESSIONS)
        assert all(0.0 <= v <= 1.0 for v in f.expression.values())
        assert np.all(np.abs(f.pose) <= 25.0 + 1e-4)
    # trajectories are functions of time: frame 6 at 12 fps is frame 12 at 24 fps
    c12 = SyntheticClip(cfg, portraits)
    c24 = SyntheticClip(_small(width=200, height=150, fps=24.0, seconds=1.5), portraits)
    assert len(c24) == 36
    assert np.allclose(c12.params(6).pose, c24.params(12).pose)
    assert np.allclose(c12[6].landmarks, c24[12].landmarks, atol=1e-3)
    # the face is where the config says: face height ≈ face_scale · frame height, centred-ish
    lm = frames[0].landmarks
    face_h = float(np.hypot(*(lm[152, :2] - lm[10, :2])))
    assert 0.3 * 150 < face_h < 0.55 * 150
    assert 50 < lm[:, 0].mean() < 150 and 35 < lm[:, 1].mean() < 115
    # endless clips iterate lazily
    endless = SyntheticClip(_small(seconds=math.inf), portraits)
    assert endless.num_frames is None
    assert len(list(itertools.islice(endless, 3))) == 3


def test_bounds_are_honoured(portraits):
    cfg = _small(seconds=20.0, fps=5.0, max_yaw=10.0, max_pitch=5.0, max_roll=3.0, expression_strength=0.0)
    clip = SyntheticClip(cfg, portraits)
    poses = np.array([clip.params(i).pose for i in range(len(clip))])
    assert np.abs(poses[:, 0]).max() <= 10.0 + 1e-4 and np.abs(poses[:, 0]).max() > 2.0
    assert np.abs(poses[:, 1]).max() <= 5.0 + 1e-4
    assert np.abs(poses[:, 2]).max() <= 3.0 + 1e-4
    assert all(v == 0.0 for i in range(0, len(clip), 7) for v in clip.params(i).expression.values())
    still = SyntheticClip(_small(motion_strength=0.0, expression_strength=0.0, lighting=False, blur=False,
                                 noise=False, jpeg=False), portraits)
    assert np.array_equal(still[0].image, still[9].image)


def test_motion_is_smooth_and_seeds_may_be_negative(portraits):
    """Talking-head motion: small steps frame to frame, larger drift over a second (no jumps, not static)."""
    clip = SyntheticClip(_small(fps=30.0, seconds=6.0, seed=-7, expression_strength=0.0), portraits)
    lms = np.array([clip.landmarks(clip.params(i)) for i in range(len(clip))])[:, :, :2]
    iod = _iod(lms[0])
    step = np.linalg.norm(np.diff(lms, axis=0), axis=2).mean(1) / iod  # [n-1] mean landmark step per frame
    drift = np.linalg.norm(lms[30:] - lms[:-30], axis=2).mean(1) / iod  # over one second
    assert step.max() < 0.04, step.max()
    assert drift.mean() > 5 * step.mean(), (drift.mean(), step.mean())
    # expressions move on their own time scales but never jump by more than a blink does
    talk = SyntheticClip(_small(fps=30.0, seconds=6.0, seed=5), portraits)
    ex = np.array([[talk.params(i).expression[k] for k in EXPRESSIONS] for i in range(len(talk))])
    assert np.abs(np.diff(ex[:, [0, 1, 3, 4]], axis=0)).max() < 0.5  # jaw, smile, brow, pucker
    assert ex[:, 0].max() > 0.3 and ex[:, 0].min() < 0.05  # the jaw opens and closes (speech)


# ---------------------------------------------------------------------------------- ground truth
def test_ground_truth_landmarks_match_mediapipe_on_the_warped_image(portraits):
    """MediaPipe run on generated frames finds the face where the ground truth says it is."""
    clip = SyntheticClip(SynthConfig(width=480, height=360, seed=1), portraits)
    cases = [
        dict(),
        dict(yaw=18.0, jaw_open=0.6),
        dict(yaw=-18.0, pitch=8.0, smile=1.0),
        dict(pitch=-12.0, roll=10.0, angle=4.0, tx=0.08, ty=-0.05, scale=1.1, brow_raise=1.0),
        dict(yaw=10.0, blink=1.0, pucker=0.8, gain=0.8, noise_sigma=3.0, blur_sigma=0.8, jpeg_quality=60),
    ]
    frames = [clip.render(_clean(clip, **c)) for c in cases]
    found = detect_landmarks([f.image for f in frames])
    errs, baseline = [], []
    neutral = frames[0].landmarks
    for f, lm in zip(frames, found):
        assert lm is not None
        iod = _iod(f.landmarks)
        errs.append(float(np.linalg.norm(lm[:, :2] - f.landmarks[:, :2], axis=1).mean() / iod))
        baseline.append(float(np.linalg.norm(lm[:, :2] - neutral[:, :2], axis=1).mean() / iod))
    print("mean landmark error / inter-ocular distance per frame:", np.round(errs, 4),
          f"(iod ≈ {_iod(neutral):.1f} px); neutral-landmark baseline:", np.round(baseline, 4))
    assert max(errs) < 0.08, errs  # a few px at ~70 px inter-ocular distance
    assert np.mean(errs) < 0.05, errs
    # the warps moved the face far more than the residual: the ground truth explains the image
    assert np.mean(baseline[1:]) > 3 * np.mean(errs[1:]), (baseline, errs)


# ------------------------------------------------------------------------------------ expressions
def test_expressions_move_the_right_landmarks(portraits):
    clip = SyntheticClip(_small(width=480, height=360), portraits)
    rest = clip.landmarks(_clean(clip))
    iod = _iod(rest)

    def lm(**kw):
        return clip.landmarks(_clean(clip, **kw))

    def far_from(lm_a, idx):  # landmarks not in idx stayed (within tol·iod) — for locality checks
        return np.linalg.norm(lm_a[idx, :2] - rest[idx, :2], axis=1).max() / iod

    up, lo = list(LIPS_UPPER_INNER), list(LIPS_LOWER_INNER)
    # jaw_open: lower inner lip down, upper inner lip (almost) still, forehead still
    j = lm(jaw_open=1.0)
    assert (j[14, 1] - rest[14, 1]) / iod > 0.25
    assert np.all(j[lo, 1] >= rest[lo, 1] - 1e-3)
    assert np.abs(j[up, 1] - rest[up, 1]).max() / iod < 0.03
    assert far_from(j, [10, 151, 159, 386]) < 0.01
    assert (j[152, 1] - rest[152, 1]) / iod > 0.25  # the chin follows
    # smile: mouth corners up and out, lower lip middle nearly still
    s = lm(smile=1.0)
    assert (rest[MOUTH_LEFT, 1] - s[MOUTH_LEFT, 1]) / iod > 0.06
    assert (rest[MOUTH_RIGHT, 1] - s[MOUTH_RIGHT, 1]) / iod > 0.06
    width_rest = rest[MOUTH_RIGHT, 0] - rest[MOUTH_LEFT, 0]
    assert (s[MOUTH_RIGHT, 0] - s[MOUTH_LEFT, 0]) - width_rest > 0.1 * iod
    assert abs(s[17, 1] - rest[17, 1]) / iod < 0.03
    # blink: each eye's vertical opening shrinks to < 25 %
    b = lm(blink=1.0)
    for top, bottom in ((EYE_L_TOP, EYE_L_BOTTOM), (EYE_R_TOP, EYE_R_BOTTOM)):
        assert (b[bottom, 1] - b[top, 1]) < 0.25 * (rest[bottom, 1] - rest[top, 1])
    assert far_from(b, [13, 14, 152, 61, 291]) < 0.01
    # brow raise: brows up, mouth still
    br = lm(brow_raise=1.0)
    brows = list(BROW_LEFT_LOOP + BROW_RIGHT_LOOP)
    assert np.mean(rest[brows, 1] - br[brows, 1]) / iod > 0.1
    assert far_from(br, [13, 14, 61, 291, 152]) < 0.01
    # pucker: mouth narrower, lips forward (smaller z)
    p = lm(pucker=1.0)
    assert width_rest - (p[MOUTH_RIGHT, 0] - p[MOUTH_LEFT, 0]) > 0.15 * iod
    assert p[[0, 17], 2].mean() < rest[[0, 17], 2].mean() - 0.05 * iod


def test_open_jaw_paints_a_dark_mouth(portraits):
    clip = SyntheticClip(_small(width=480, height=360), portraits)
    closed = clip.render(_clean(clip))
    opened = clip.render(_clean(clip, jaw_open=1.0))
    lm = opened.landmarks
    cx = int(round((lm[13, 0] + lm[14, 0]) / 2))
    y_mid = int(round(lm[13, 1] * 0.3 + lm[14, 1] * 0.7))  # lower part of the opening: cavity, not teeth
    patch = opened.image[y_mid - 2 : y_mid + 3, cx - 3 : cx + 4].astype(float).mean()
    face = closed.image[int(lm[1, 1]) - 4 : int(lm[1, 1]) + 4, int(lm[1, 0]) - 4 : int(lm[1, 0]) + 4].mean()
    assert patch < 0.45 * face, (patch, face)
    # the teeth hint: brighter just under the upper lip than in the middle of the opening
    y_teeth = int(round(lm[13, 1] + 0.08 * (lm[14, 1] - lm[13, 1]) + 1))
    teeth = opened.image[y_teeth : y_teeth + 2, cx - 3 : cx + 4].astype(float).mean()
    assert teeth > patch + 40


# ---------------------------------------------------------------------------------------------- pose
def test_pose_signs(portraits):
    clip = SyntheticClip(_small(width=480, height=360), portraits)

    def asym(lm):  # > 0 when the nose is nearer the right cheek
        return (lm[CHEEK_RIGHT, 0] - lm[NOSE_TIP, 0]) / (lm[CHEEK_RIGHT, 0] - lm[CHEEK_LEFT, 0]) - 0.5

    rest = clip.landmarks(_clean(clip))
    right, left = clip.landmarks(_clean(clip, yaw=20.0)), clip.landmarks(_clean(clip, yaw=-20.0))
    a0 = asym(rest)
    assert asym(right) < a0 - 0.08  # nose towards the image's right → nearer the right cheek edge
    assert asym(left) > a0 + 0.08
    iod = _iod(rest)
    # pitch > 0: nose tip rises relative to the eyes
    up = clip.landmarks(_clean(clip, pitch=20.0))
    eyes = [EYE_L_TOP, EYE_R_TOP]
    assert (up[NOSE_TIP, 1] - up[eyes, 1].mean()) < (rest[NOSE_TIP, 1] - rest[eyes, 1].mean()) - 0.1 * iod
    # roll > 0 and camera angle > 0: clockwise on screen (the right eye goes down)
    for kw in (dict(roll=15.0), dict(angle=15.0)):
        r = clip.landmarks(_clean(clip, **kw))
        before = math.atan2(rest[EYE_R_TOP, 1] - rest[EYE_L_TOP, 1], rest[EYE_R_TOP, 0] - rest[EYE_L_TOP, 0])
        after = math.atan2(r[EYE_R_TOP, 1] - r[EYE_L_TOP, 1], r[EYE_R_TOP, 0] - r[EYE_L_TOP, 0])
        assert math.degrees(after - before) == pytest.approx(15.0, abs=2.5)
    # the reported pose adds the camera angle to roll
    assert np.allclose(_clean(clip, roll=5.0, angle=3.0).pose, [0, 0, 8.0])


def test_pose_yaw_sign_seen_by_mediapipe(portraits):
    """The image agrees with the ground truth about which way the head turned."""
    clip = SyntheticClip(_small(width=480, height=360), portraits)
    frames = [clip.render(_clean(clip, yaw=y)) for y in (-20.0, 0.0, 20.0)]
    found = detect_landmarks([f.image for f in frames])
    assert all(f is not None for f in found)

    def asym(lm):
        return (lm[CHEEK_RIGHT, 0] - lm[NOSE_TIP, 0]) / (lm[CHEEK_RIGHT, 0] - lm[CHEEK_LEFT, 0])

    a = [asym(lm) for lm in found]
    assert a[0] > a[1] > a[2], a


# ---------------------------------------------------------------------------------------------- demo
def test_demo_portrait_is_a_built_in_source(portraits, monkeypatch):
    monkeypatch.setattr(synthetic, "_astronaut", lambda: portraits[0])
    assert sources.DEMO_GENERATORS["portrait"] is synthetic.portrait_demo and sources.DEFAULT_DEMO == "portrait"
    with sources.open_source("demo:portrait?seconds=0.3&fps=10&size=160x120&seed=2&jpeg=0&max_yaw=5") as src:
        frames = list(src)
    assert len(frames) == 3
    assert frames[0].image.shape == (120, 160, 3)
    clip = SyntheticClip(SynthConfig(width=160, height=120, fps=10, seconds=0.3, seed=2, jpeg=False, max_yaw=5),
                         portraits)
    assert np.array_equal(frames[1].image, clip[1].image)
    with pytest.raises(UserError, match="unknown option"):
        list(synthetic.portrait_demo(sources.DemoOptions(extra={"nonsense": "1"})))


# ------------------------------------------------------------------------------------------ portraits
def test_load_portraits_from_a_folder_of_images_and_videos(tmp_path, portraits):
    face = portraits[0].image
    cv2.imwrite(str(tmp_path / "a_face.png"), cv2.cvtColor(face, cv2.COLOR_RGB2BGR))
    rng = np.random.default_rng(0)
    cv2.imwrite(str(tmp_path / "b_noise.png"), rng.integers(0, 255, (128, 128, 3), dtype=np.uint8))
    (tmp_path / "c_notes.txt").write_text("not an image")
    with av.open(str(tmp_path / "d_clip.mp4"), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 256, 256, "yuv420p"
        small = cv2.resize(face[:, ::-1], (256, 256), interpolation=cv2.INTER_AREA)  # mirrored, half size
        for _ in range(4):
            for pkt in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(small), format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    got = load_portraits(tmp_path, frames_per_video=2)
    names = [p.name for p in got]
    assert names[0] == "a_face.png" and all(n.startswith("d_clip.mp4#") for n in names[1:]) and len(names) == 3
    assert np.abs(got[0].landmarks - portraits[0].landmarks).max() < 1e-3  # same image, same landmarks
    lm_v = got[1].landmarks
    assert got[1].image.shape == (256, 256, 3)
    # mirrored + half size: the nose tip is where the mirrored, scaled original says (± MediaPipe noise)
    expect_x = (511 - portraits[0].landmarks[1, 0] + 0.5) * 0.5 - 0.5
    assert abs(lm_v[1, 0] - expect_x) < 3.0
    # each clip uses one of them, chosen by seed or by portrait_index
    clip = SyntheticClip(_small(portrait_index=1), got)
    assert clip.portrait.name == names[1]
    assert {SyntheticClip(_small(seed=s), got).portrait.name for s in range(12)} == set(names)
    # mirrored copies: landmarks found again, so index 1 is still the nose tip (now mirrored)
    both = load_portraits(mirror=True)
    assert [p.name for p in both] == ["astronaut", "astronaut~mirror"]
    assert abs(both[1].landmarks[1, 0] - (511 - both[0].landmarks[1, 0])) < 2.0
    assert abs(both[1].landmarks[33, 0] - (511 - both[0].landmarks[263, 0])) < 3.0  # eye corners swap
    with pytest.raises(UserError, match="no face found"):
        only_noise = tmp_path / "noise_only"
        only_noise.mkdir()
        cv2.imwrite(str(only_noise / "x.png"), rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
        load_portraits(only_noise)
    with pytest.raises(UserError, match="not found"):
        load_portraits(tmp_path / "missing")
