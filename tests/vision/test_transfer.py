"""Edit transfer (realtime/vision/transfer.py): pass-through, known displacements, caps, ROI, resolutions, plans."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest
import torch

from models.bundle import DEFAULT_BUNDLE, load_bundle
from models.editing import EditContext, EditSpec, EditStack
from realtime.vision.align import align_crop, crop_affine, quad_from_landmarks
from realtime.vision.composite import face_mask, landmarks_to_crop, mask_bbox, paste_roi
from realtime.vision.transfer import (
    LIPS,
    REGION_LANDMARKS,
    EditPlan,
    EditTransfer,
    TransferConfig,
    cap_residual,
    landmark_field,
    plan_edits,
)
from tests import clips


def _texture(h: int, w: int, seed: int = 0, sigma: float = 1.5) -> np.ndarray:
    """Band-limited random colour texture [h, w, 3] uint8 (phase correlation locks onto it)."""
    rng = np.random.default_rng(seed)
    t = cv2.GaussianBlur(rng.normal(0, 1, (h, w, 3)).astype(np.float32), (0, 0), sigma)
    t = (t - t.mean()) / t.std()
    return np.clip(128 + 40 * t, 0, 255).astype(np.uint8)


def _scene(crop_size: int = 64, textured: bool = True):
    """A face (the astronaut's mesh, rotated 10°) in a 640×480 frame: frame, landmarks, to_frame, mask."""
    m = clips.similarity(10.0, 1.2)
    frame = _texture(480, 640) if textured else clips.render(m[None], noise_std=2.0)[0]
    lm = clips.true_landmarks(m).astype(np.float32)
    to_frame = crop_affine(quad_from_landmarks(lm), crop_size)
    mask = face_mask(landmarks_to_crop(lm, to_frame), crop_size)
    return frame, lm, to_frame, mask


def _render_lm(lm: np.ndarray, to_frame: np.ndarray, crop_size: int, r: int) -> np.ndarray:
    s = crop_size / r
    return (landmarks_to_crop(lm, to_frame) + 0.5) / s - 0.5


class FixedMesh:
    """A landmark source for renders that answers [recon landmarks, edited landmarks] — lets a test set the
    edit's landmark motion exactly. Counts its calls."""

    def __init__(self, lm0: np.ndarray, lm1: np.ndarray) -> None:
        self.lm = torch.as_tensor(np.stack([lm0, lm1]), dtype=torch.float32)
        self.calls = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[0] == 2 and x.ndim == 4
        self.calls += 1
        return self.lm


def _shift(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Translation (dx, dy) taking patch a to patch b (b(x) ≈ a(x − d)): ECC on grey, sub-pixel."""
    ga = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY).astype(np.float32)
    gb = cv2.cvtColor(b, cv2.COLOR_RGB2GRAY).astype(np.float32)
    warp = np.eye(2, 3, dtype=np.float32)
    crit = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 200, 1e-5)
    _, warp = cv2.findTransformECC(ga, gb, warp, cv2.MOTION_TRANSLATION, crit, None, 5)
    return warp[:, 2].astype(np.float64)  # b(x) ≈ a(x − t): the template a sits at +t in b


def _renders(r: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    rec = torch.from_numpy(_texture(r, r, seed, sigma=1.0)).permute(2, 0, 1).float() / 127.5 - 1.0
    ed = rec.clone()
    ed[0, r // 2, r // 2] += 0.01  # different, so the transfer runs (the fixed mesh supplies the motion)
    return rec, ed


# --------------------------------------------------------------------------------------------- pass-through


@pytest.mark.parametrize("geometry", ["landmarks", "flow", "none"])
def test_identical_renders_return_the_frame_untouched(geometry: str) -> None:
    frame, lm, tf, mask = _scene()
    before = frame.copy()
    rec, _ = _renders(64)
    mesh = FixedMesh(np.zeros((468, 3)), np.ones((468, 3)))
    tr = EditTransfer(TransferConfig(geometry=geometry, appearance=1.0), mesh=mesh)
    out = tr.apply(frame, tf, 64, lm, rec, rec.clone(), mask, appearance=1.0)
    assert out is frame and np.array_equal(frame, before)
    assert mesh.calls == 0  # no generator difference: nothing is computed at all
    # an empty plan (no active edit) is a pass-through too, whatever the renders
    _, ed = _renders(64)
    assert tr.apply(frame, tf, 64, lm, rec, ed, mask, plan=plan_edits({}, {})) is frame


# ------------------------------------------------------------------------------------- known displacements


@pytest.mark.parametrize(("crop_size", "r"), [(64, 64), (128, 64), (64, 32), (256, 64)])
def test_a_known_landmark_motion_moves_the_frame_by_it(crop_size: int, r: int) -> None:
    """The mouth's landmarks move by d render px → the frame's mouth moves by to_frame·(crop/R)·d frame px,
    and the pinned eyes stay (within 0.1 of it)."""
    frame, lm, tf, mask = _scene(crop_size)
    lm_r = _render_lm(lm, tf, crop_size, r)
    d = np.array([1.2, -0.8]) * (r / 64)  # render px
    lm1 = lm_r.copy()
    mouth = list(REGION_LANDMARKS["mouth"])
    lm1[mouth] += d
    mesh = FixedMesh(np.c_[lm_r, np.zeros(468)], np.c_[lm1, np.zeros(468)])
    tr = EditTransfer(TransferConfig(smoothing=0.0), mesh=mesh)
    rec, ed = _renders(r)
    plan = EditPlan(regions=("mouth",), key="t")
    out = tr.apply(frame, tf, crop_size, lm, rec, ed, mask, plan=plan)
    expected = np.asarray(tf)[:, :2] @ d * (crop_size / r)  # frame px
    assert np.linalg.norm(expected) > 4.0  # a motion worth measuring
    c = np.round(lm[[13, 14]].mean(0)[:2]).astype(int)  # between the lips
    half = 14
    got = _shift(frame[c[1] - half:c[1] + half, c[0] - half:c[0] + half],
                 out[c[1] - half:c[1] + half, c[0] - half:c[0] + half])
    assert np.linalg.norm(got - expected) < 0.2 * np.linalg.norm(expected) + 0.3, (got, expected)
    e = np.round(lm[[33, 133]].mean(0)[:2]).astype(int)  # an eye: pinned
    still = _shift(frame[e[1] - half:e[1] + half, e[0] - half:e[0] + half],
                   out[e[1] - half:e[1] + half, e[0] - half:e[0] + half])
    assert np.linalg.norm(still) < 0.1 * np.linalg.norm(expected) + 0.2, still


def test_the_field_reproduces_the_landmark_motion_at_the_landmarks() -> None:
    frame, lm, tf, mask = _scene()
    lm_r = _render_lm(lm, tf, 64, 64)
    disp = np.zeros((468, 2))
    c = lm_r[list(LIPS)].mean(0)
    q = (lm_r[list(LIPS)] - c) / 8.0  # a smooth motion: corners out and up, the middle down
    disp[list(LIPS)] = np.c_[0.8 * q[:, 0], -0.6 * q[:, 0] ** 2 + 0.3]
    field = landmark_field(lm_r, disp, 64, regions=("mouth",), grid=64, lam=1e-6)
    dst = (lm_r + disp)[list(LIPS)].astype(np.float32)
    at = np.stack([cv2.remap(field[..., k], dst[None, :, 0], dst[None, :, 1], cv2.INTER_LINEAR)[0]
                   for k in range(2)], -1)
    err = np.linalg.norm(at + disp[list(LIPS)], axis=1)
    assert err.mean() < 0.1 * np.linalg.norm(disp[list(LIPS)], axis=1).mean(), err.mean()


def test_rigid_removes_a_whole_face_shift_and_keep_gap_keeps_the_lips_closed() -> None:
    _, lm, tf, _ = _scene()
    lm_r = _render_lm(lm, tf, 64, 64)
    shift = np.tile([0.7, -0.4], (468, 1))
    f = landmark_field(lm_r, shift, 64, regions=("mouth",), rigid=True, grid=64)
    assert np.abs(f).max() < 0.05  # a pure shift of everything is not an expression
    disp = np.zeros((468, 2))
    disp[[13, 0]] = [0.0, -1.0]  # upper lip up
    disp[[14, 17]] = [0.0, 1.0]  # lower lip down: the mouth would open
    f_open = landmark_field(lm_r, disp, 64, regions=("mouth",), grid=64)
    f_kept = landmark_field(lm_r, disp, 64, regions=("mouth",), keep_gap=True, grid=64)
    assert np.abs(f_open).max() > 0.5 and np.abs(f_kept).max() < 0.05


def test_flow_geometry_reproduces_a_known_warp_of_the_render() -> None:
    """The edited render is the reconstruction warped by a smooth bump; the frame moves the same way. (DIS
    recovers only 30–90 % of a 1 px motion on a 64² render, depending on its preset and upscale — measured —
    one reason the landmark geometry is the default; at 256² MEDIUM it gets ~87 %.)"""
    frame, lm, tf, mask = _scene()
    r = 64
    lm_r = _render_lm(lm, tf, 64, r)
    rec = _texture(r, r, 5, sigma=1.2)
    c = lm_r[[13, 14]].mean(0)
    g = np.arange(r, dtype=np.float32)
    gx, gy = np.meshgrid(g, g)
    bump = np.exp(-((gx - c[0]) ** 2 + (gy - c[1]) ** 2) / (2 * 6.0**2)).astype(np.float32)
    f = np.array([1.0, -0.7], np.float32)  # backward: edited(u) = recon(u + f·bump(u))
    ed = cv2.remap(rec, gx + f[0] * bump, gy + f[1] * bump, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    to_t = [torch.from_numpy(x).permute(2, 0, 1).float() / 127.5 - 1.0 for x in (rec, ed)]
    tr = EditTransfer(TransferConfig(geometry="flow", smoothing=0.0, flow_sigma=0.5, flow_px=256))
    out = tr.apply(frame, tf, 64, lm, to_t[0], to_t[1], mask, plan=EditPlan(regions=("face",)))
    expected = -(np.asarray(tf)[:, :2] @ f)  # content moves against the backward field
    p = np.round(np.asarray(tf) @ np.array([c[0], c[1], 1.0])).astype(int)
    half = 10
    got = _shift(frame[p[1] - half:p[1] + half, p[0] - half:p[0] + half],
                 out[p[1] - half:p[1] + half, p[0] - half:p[0] + half])
    assert np.linalg.norm(got - expected) < 0.3 * np.linalg.norm(expected), (got, expected)


# ------------------------------------------------------------------------------------------ appearance caps


def test_chroma_and_luma_caps_hold_on_the_frame() -> None:
    frame, lm, tf, mask = _scene(textured=False)
    rec = torch.zeros(3, 64, 64)
    ed = rec.clone()
    ed[0] += 0.6  # +76 levels of red: large luma and chroma change
    ed[2] -= 0.3
    cfg = TransferConfig(geometry="none", chroma_cap=3.0, luma_cap=10.0, residual_sigma=0.0)
    out = EditTransfer(cfg).apply(frame, tf, 64, lm, rec, ed, mask, appearance=1.0)
    a = cv2.cvtColor(frame, cv2.COLOR_RGB2YCrCb).astype(np.float32)
    b = cv2.cvtColor(out, cv2.COLOR_RGB2YCrCb).astype(np.float32)
    d = b - a
    unclipped = (out > 0).all(-1) & (out < 255).all(-1)
    assert np.abs(d[..., 0])[unclipped].max() <= 10.0 + 1.5
    assert np.abs(d[..., 1:])[unclipped].max() <= 3.0 + 1.5
    assert d[..., 1].max() > 2.0  # the cap is reached (Cr up: redder), not just a no-op
    res = cap_residual(np.array([[76.0, 0.0, -38.0]], np.float32), 10.0, 3.0)
    ycc = res @ np.array([[0.299, 0.587, 0.114], [0.5, -0.418688, -0.081312], [-0.168736, -0.331264, 0.5]]).T
    assert np.all(np.abs(ycc[0]) <= [10.0 + 1e-4, 3.0 + 1e-4, 3.0 + 1e-4])


# ---------------------------------------------------------------------------------------------- the ROI


@pytest.mark.parametrize("geometry", ["landmarks", "flow"])
def test_nothing_changes_outside_the_mask(geometry: str) -> None:
    crop_size, r = 128, 64
    frame, lm, tf, mask = _scene(crop_size)
    lm_r = _render_lm(lm, tf, crop_size, r)
    lm1 = lm_r + 1.5  # every landmark moves: the field reaches the mask's edge
    mesh = FixedMesh(np.c_[lm_r, np.zeros(468)], np.c_[lm1, np.zeros(468)])
    rec, _ = _renders(r, 7)
    ed = torch.roll(rec, shifts=(2, 1), dims=(1, 2))
    tr = EditTransfer(TransferConfig(geometry=geometry, appearance=1.0, chroma_cap=20.0), mesh=mesh)
    out = tr.apply(frame, tf, crop_size, lm, rec, ed, mask, plan=EditPlan(regions=("face",), appearance=1.0))
    x0, y0, x1, y1 = paste_roi(tf, mask_bbox(mask), 640, 480)
    outside = np.ones((480, 640), bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(out[outside], frame[outside])
    fmask = cv2.warpAffine(mask, np.asarray(tf), (640, 480), flags=cv2.INTER_LINEAR)
    zero = cv2.dilate((fmask > 0).astype(np.uint8), np.ones((5, 5), np.uint8)) == 0
    assert np.array_equal(out[zero], frame[zero])  # inside the box too, wherever the mask is 0
    assert np.abs(out.astype(int) - frame.astype(int))[fmask > 0.9].mean() > 2.0  # and it did change the face


# --------------------------------------------------------------------------------------- state and plans


def test_mesh_runs_on_schedule_and_at_once_when_the_edit_changes() -> None:
    frame, lm, tf, mask = _scene()
    lm_r = _render_lm(lm, tf, 64, 64)
    mesh = FixedMesh(np.c_[lm_r, np.zeros(468)], np.c_[lm_r + 0.5, np.zeros(468)])
    tr = EditTransfer(TransferConfig(mesh_every=3), mesh=mesh)
    rec, ed = _renders(64)
    a, b = EditPlan(regions=("mouth",), key="a"), EditPlan(regions=("mouth",), key="b")
    for _ in range(6):
        tr.apply(frame, tf, 64, lm, rec, ed, mask, plan=a)
    assert mesh.calls == 2
    tr.apply(frame, tf, 64, lm, rec, ed, mask, plan=b)
    assert mesh.calls == 3


class GatedMesh(FixedMesh):
    """A FixedMesh whose answer waits until the test opens the gate (a slow face mesh), and which says on which
    thread it ran."""

    def __init__(self, lm0: np.ndarray, lm1: np.ndarray) -> None:
        super().__init__(lm0, lm1)
        self.gate = threading.Event()
        self.threads: list[str] = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.threads.append(threading.current_thread().name)
        if self.calls > 0:  # the first run (nothing to show before it) must not wait
            assert self.gate.wait(10), "the gate was never opened"
        return super().__call__(x)


def test_live_refresh_runs_in_the_background() -> None:
    """background=True (live streams): the first measurement runs on the frame; later refreshes run on a helper
    thread, the frames that trigger them do not wait, and the new motion is taken once it is ready."""
    frame, lm, tf, mask = _scene()
    lm_r = _render_lm(lm, tf, 64, 64)
    mesh = GatedMesh(np.c_[lm_r, np.zeros(468)], np.c_[lm_r + 0.5, np.zeros(468)])
    tr = EditTransfer(TransferConfig(mesh_every=2, smoothing=0.0), mesh=mesh, background=True)
    rec, ed = _renders(64)
    plan = EditPlan(regions=("mouth",), key="k")
    first = tr.apply(frame, tf, 64, lm, rec, ed, mask, plan=plan)
    assert mesh.calls == 1 and mesh.threads == [threading.current_thread().name]
    tr.apply(frame, tf, 64, lm, rec, ed, mask, plan=plan)
    assert tr._pending is None
    tr.apply(frame, tf, 64, lm, rec, ed, mask, plan=plan)  # due: submitted, not waited for (the gate is shut)
    assert tr._pending is not None and tr.needs_renders(plan) is False  # a run is in flight
    for _ in range(3):
        out = tr.apply(frame, tf, 64, lm, None, None, mask, plan=plan)  # frames flow meanwhile
        assert np.array_equal(out, first)
    assert mesh.calls == 1 and tr.mesh_runs == 1
    mesh.gate.set()
    for _ in range(100):
        if tr._pending is not None and tr._pending[0].done():
            break
        time.sleep(0.01)
    tr.apply(frame, tf, 64, lm, None, None, mask, plan=plan)
    assert tr.mesh_runs == 2 and mesh.threads[1].startswith("stylestream-render-mesh")
    # an edit change measures on the frame at once, and a run still in flight for the old edit is dropped
    tr.apply(frame, tf, 64, lm, rec, ed, mask, plan=EditPlan(regions=("mouth",), key="k2"))
    assert tr.mesh_runs == 3


def test_renders_are_only_needed_when_the_mesh_runs() -> None:
    """Geometry-only: the caller may skip the generator on frames needs_renders() declines — same output."""
    frame, lm, tf, mask = _scene()
    lm_r = _render_lm(lm, tf, 64, 64)
    mesh = FixedMesh(np.c_[lm_r, np.zeros(468)], np.c_[lm_r + 0.5, np.zeros(468)])
    always, lazy = EditTransfer(TransferConfig(mesh_every=4), mesh=mesh), EditTransfer(TransferConfig(mesh_every=4),
                                                                                        mesh=mesh)
    rec, ed = _renders(64)
    plan = EditPlan(regions=("mouth",), key="k")
    needed = []
    for t in range(9):
        shifted = lm.copy()
        shifted[:, 0] += 0.3 * t  # the face moves: the field follows it without new renders
        a = always.apply(frame, tf, 64, shifted, rec, ed, mask, plan=plan)
        need = lazy.needs_renders(plan)
        needed.append(need)
        b = lazy.apply(frame, tf, 64, shifted, rec if need else None, ed if need else None, mask, plan=plan)
        assert np.array_equal(a, b)
    assert needed == [True, False, False, False, True, False, False, False, True]
    with pytest.raises(ValueError):
        EditTransfer(mesh=mesh).apply(frame, tf, 64, lm, None, None, mask, plan=plan)
    style = EditPlan(regions=(), appearance=1.0)
    assert lazy.needs_renders(style)  # a residual needs the renders on every frame


def test_plan_from_edit_specs() -> None:
    specs = {s.name: s for s in [
        EditSpec("smile", "w_direction", extra={"measure": "smile"}),
        EditSpec("mouth_open", "w_direction", extra={"measure": "mouth_open"}),
        EditSpec("eyes_open", "w_direction", extra={"measure": "eyes_open"}),
        EditSpec("yaw", "w_direction", extra={"measure": "yaw"}),
        EditSpec("yaw_to_15", "pose_expression", extra={"target": {"yaw": 15.0}}),
        EditSpec("mouth_style", "style_channel", style_layer="b32.conv0", channel=1, extra={"region": "mouth"}),
        EditSpec("keep_mouth", "keep_mouth"),
    ]}
    p = plan_edits(specs, {"smile": 1.5, "keep_mouth": 1.0, "yaw": 0.0})
    assert p.regions == ("mouth",) and p.rigid and p.keep_gap and p.appearance == 0.0 and p.keep_mouth == 1.0
    assert plan_edits(specs, {"smile": 1.5}).keep_mouth == 0.0
    assert plan_edits(specs, {"eyes_open": 1.0, "keep_mouth": 0.5}).keep_mouth == 0.0  # no mouth motion to keep
    p = plan_edits(specs, {"mouth_open": 1.0, "eyes_open": 2.0})
    assert p.regions == ("eyes", "mouth") and not p.rigid and not p.keep_gap
    assert p.appearance_regions == ("mouth_inner",)  # the opened mouth's interior comes from the render
    p = plan_edits(specs, {"yaw_to_15": 0.5})
    assert p.regions == ("face",) and not p.rigid and p.pose
    assert EditTransfer().needs_renders(p)  # pose edits use the flow geometry (measured better), every frame
    p = plan_edits(specs, {"mouth_style": 2.0})
    assert p.regions == () and p.appearance == 1.0 and p.appearance_regions == ("mouth",)
    assert plan_edits(specs, {"smile": 1.0}).key != plan_edits(specs, {"smile": 1.5}).key
    assert plan_edits(specs, {"smile": 1.0}, TransferConfig(regions=False)).regions == ("face",)
    # an edit's own displacement gain (EditSpec.extra["transfer_gain"]); the largest of the active edits wins
    specs["smile"].extra["transfer_gain"] = 1.3
    assert plan_edits(specs, {"smile": 1.0}).gain == 1.3 and plan_edits(specs, {"eyes_open": 1.0}).gain == 1.0
    assert plan_edits(specs, {"smile": 1.0, "eyes_open": 1.0}).gain == 1.3


def _lip_shifts(plans: list[EditPlan]) -> list[np.ndarray]:
    """A mouth edit (the render mesh's mouth points moved by (0.6, -0.4) px) transferred with each plan: how far the
    lips moved, measured by phase correlation in a window between them."""
    frame, lm, tf, mask = _scene(64)
    lm_r = _render_lm(lm, tf, 64, 64)
    lm1 = lm_r.copy()
    lm1[list(REGION_LANDMARKS["mouth"])] += np.array([0.6, -0.4])
    rec, ed = _renders(64)
    c = np.round(lm[[13, 14]].mean(0)[:2]).astype(int)  # between the lips
    window = np.s_[c[1] - 14:c[1] + 14, c[0] - 14:c[0] + 14]
    moved = []
    for plan in plans:
        mesh = FixedMesh(np.c_[lm_r, np.zeros(468)], np.c_[lm1, np.zeros(468)])
        tr = EditTransfer(TransferConfig(smoothing=0.0), mesh=mesh)
        out = tr.apply(frame, tf, 64, lm, rec, ed, mask, plan=plan)
        moved.append(_shift(frame[window], out[window]))
    return moved


def test_the_edit_gain_scales_the_motion() -> None:
    """A plan's gain multiplies the landmark motion the frame gets (what transfer_gain does for weak edits)."""
    moved = _lip_shifts([EditPlan(regions=("mouth",), gain=gain, key=gain) for gain in (1.0, 2.0)])
    assert np.linalg.norm(moved[0]) > 1.0
    assert np.linalg.norm(moved[1] - 2 * moved[0]) < 0.2 * np.linalg.norm(2 * moved[0]), moved


def test_keep_mouth_holds_the_lips_in_place() -> None:
    """keep_mouth=k: the lips keep k of their own place under a mouth edit (1: not moved at all)."""
    moved = [float(np.linalg.norm(m)) for m in
             _lip_shifts([EditPlan(regions=("mouth",), keep_mouth=keep, key=keep) for keep in (0.0, 0.5, 1.0)])]
    assert moved[0] > 1.0 and 0.3 * moved[0] < moved[1] < 0.7 * moved[0] and moved[2] < 0.15 * moved[0], moved


def test_the_default_bundle_smile_moves_the_mouth_not_the_eyes() -> None:
    """End to end with the bundle's generator and the real render face mesh (models/face_mesh.py)."""
    b = load_bundle(DEFAULT_BUNDLE)
    stack = EditStack.from_bundle(b)
    frame, lm, _, _ = _scene(textured=False)
    crop = align_crop(frame, quad_from_landmarks(lm), b.crop_size)
    mask = face_mask(landmarks_to_crop(lm, crop.to_frame), b.crop_size)
    with torch.no_grad():
        ws = b.fren(crop.image[None])
        stack.set_strengths({"smile": 2.0}, reset=True)
        we, _ = stack.apply(ws, EditContext(landmarks=lm, to_frame=crop.to_frame, crop_size=b.crop_size))
        imgs = b.generator.synthesis(torch.cat([ws, we]), noise_mode="const").clamp(-1, 1)
    plan = plan_edits(stack.specs, stack.strengths())
    out = EditTransfer().apply(frame, crop.to_frame, b.crop_size, lm, imgs[0], imgs[1], mask, plan=plan)
    diff = np.abs(out.astype(int) - frame.astype(int)).sum(-1)

    def box(idx: tuple[int, ...], pad: int = 4) -> np.ndarray:
        p = lm[list(idx), :2]
        x0, y0 = np.floor(p.min(0)).astype(int) - pad
        x1, y1 = np.ceil(p.max(0)).astype(int) + pad
        return diff[y0:y1, x0:x1]

    assert box(LIPS).mean() > 3.0  # the mouth changed
    assert box(REGION_LANDMARKS["eyes"][:16]).mean() < 0.1 * box(LIPS).mean()  # the eyes (pinned) hardly
