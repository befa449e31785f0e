"""models.tflite + models.face_mesh: reader safety, interpreter semantics, parity with MediaPipe, gradients."""

from __future__ import annotations

import importlib.util
import math

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data

from benchmarks.bench_face_mesh import MediaPipeRuntime, similarity_warp
from models import face_mesh
from models.errors import CheckpointError, UserError
from models.face_mesh import (
    DETECTOR_MODEL,
    LANDMARK_MODEL,
    FaceMesh,
    TfliteModule,
    crop,
    mediapipe_model_path,
    project_landmarks,
    rect_to_affine,
    roi_from_landmarks,
    ssd_anchors,
)
from models.legacy import read_tflite
from models.tflite import TfliteGraph, TfliteOp, TfliteTensor, fold_dequantize, parse_tflite

HAS_MEDIAPIPE = importlib.util.find_spec("mediapipe") is not None
needs_mp = pytest.mark.skipif(not HAS_MEDIAPIPE, reason="needs mediapipe==0.10.21 (pip install --no-deps)")


@pytest.fixture(scope="module")
def mesh():
    return FaceMesh().eval()


@pytest.fixture(scope="module")
def ref():
    return MediaPipeRuntime()


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return data.astronaut()


def _t(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 255


# ---------------------------------------------------------------------------------------------------------------
# Reader
# ---------------------------------------------------------------------------------------------------------------
@needs_mp
def test_reader_parses_wheel_models_through_legacy():
    g = read_tflite(mediapipe_model_path(LANDMARK_MODEL))
    assert g.tensors[g.inputs[0]].shape == (1, 192, 192, 3)
    assert [g.tensors[i].shape for i in g.outputs] == [(1, 1, 1, 1404), (1, 1, 1, 1)]
    deq = [op for op in g.ops if op.name == "DEQUANTIZE"]
    assert deq and all(g.tensors[op.inputs[0]].dtype == "FLOAT16" for op in deq)
    folded = fold_dequantize(g)
    assert not any(op.name == "DEQUANTIZE" for op in folded.ops)
    w = folded.tensors[deq[0].outputs[0]].data
    assert w is not None and w.dtype == np.float32 and np.isfinite(w).all() and np.abs(w).max() > 0
    conv = next(op for op in g.ops if op.name == "CONV_2D")
    assert conv.options["padding"] == "SAME" and conv.options["stride_w"] == 2
    d = read_tflite(mediapipe_model_path(DETECTOR_MODEL))
    assert [d.tensors[i].shape for i in d.outputs] == [(1, 896, 16), (1, 896, 1)]
    assert {op.options.get("new_shape", [0])[-1] for op in d.ops if op.name == "RESHAPE"} == {1, 16}


@needs_mp
def test_reader_refuses_corrupt_files(tmp_path):
    buf = mediapipe_model_path(LANDMARK_MODEL).read_bytes()
    with pytest.raises(CheckpointError, match="TFL3"):
        parse_tflite(b"\0" * 64, "x.tflite")
    with pytest.raises(CheckpointError, match="truncated|corrupt|values"):
        parse_tflite(buf[: len(buf) // 3], "cut.tflite")
    with pytest.raises(CheckpointError, match="cannot read"):
        read_tflite(tmp_path / "missing.tflite")


def test_missing_mediapipe_is_a_user_error(monkeypatch):
    monkeypatch.setattr(face_mesh.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError) as e:
        face_mesh.FaceLandmarks()
    assert "mediapipe" in str(e.value).lower() and "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------------------------
# Interpreter semantics on a hand-built graph (no mediapipe needed)
# ---------------------------------------------------------------------------------------------------------------
def _tf_same_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, s: int) -> np.ndarray:
    """Reference TF 'SAME' conv, NHWC input, OHWI weights, by explicit loops over output pixels."""
    _, h, wd, _ = x.shape
    o, k, _, _ = w.shape
    oh, ow = -(-h // s), -(-wd // s)
    ph = max((oh - 1) * s + k - h, 0) // 2
    pw = max((ow - 1) * s + k - wd, 0) // 2
    xp = np.zeros((h + 2 * k, wd + 2 * k, x.shape[3]), np.float64)
    xp[ph:ph + h, pw:pw + wd] = x[0]
    y = np.zeros((1, oh, ow, o))
    for i in range(oh):
        for j in range(ow):
            patch = xp[i * s:i * s + k, j * s:j * s + k]
            y[0, i, j] = np.einsum("hwc,ohwc->o", patch, w) + b
    return y


def _tensor(i: int, shape: tuple[int, ...], data: np.ndarray | None = None, dtype: str = "FLOAT32") -> TfliteTensor:
    return TfliteTensor(index=i, name=f"t{i}", shape=shape, dtype=dtype, data=data)


def test_interpreter_matches_tflite_semantics():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 7, 6, 3)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    alpha = rng.uniform(0.1, 0.3, (1, 1, 4)).astype(np.float32)
    tensors = [
        _tensor(0, (1, 7, 6, 3)),
        _tensor(1, (4, 3, 3, 3), w.astype(np.float16), "FLOAT16"),  # fp16 weight + DEQUANTIZE, as MediaPipe
        _tensor(2, (4, 3, 3, 3)),
        _tensor(3, (4,), b),
        _tensor(4, (1, 4, 3, 4)),  # conv SAME stride 2 (asymmetric TF padding on both axes)
        _tensor(5, (1, 1, 4), alpha),
        _tensor(6, (1, 4, 3, 4)),  # prelu
        _tensor(7, (4, 2), np.array([[0, 0], [0, 0], [0, 0], [0, 2]], np.int32), "INT32"),
        _tensor(8, (1, 4, 3, 6)),  # channel pad
        _tensor(9, (1, 12, 6)),  # reshape in NHWC element order
        _tensor(10, (1, 24, 6)),  # concat along axis 1
    ]
    ops = [
        TfliteOp("DEQUANTIZE", [1], [2]),
        TfliteOp("CONV_2D", [0, 2, 3], [4], {"padding": "SAME", "stride_w": 2, "stride_h": 2, "activation": "NONE"}),
        TfliteOp("PRELU", [4, 5], [6]),
        TfliteOp("PAD", [6, 7], [8]),
        TfliteOp("RESHAPE", [8], [9], {"new_shape": [1, -1, 6]}),
        TfliteOp("CONCATENATION", [9, 9], [10], {"axis": 1, "activation": "NONE"}),
    ]
    m = TfliteModule(TfliteGraph(tensors=tensors, ops=ops, inputs=[0], outputs=[10, 6]))
    xt = torch.from_numpy(x).permute(0, 3, 1, 2)
    out, pre = m(torch.cat([xt, xt]))  # batch 2 through a batch-1 graph
    conv = _tf_same_conv(x, w.astype(np.float16).astype(np.float64), b, 2)
    ref_pre = np.where(conv >= 0, conv, conv * alpha)
    assert pre.shape == (2, 4, 3, 4) and np.allclose(pre[1].detach().numpy(), ref_pre[0], atol=1e-4)
    ref_pad = np.concatenate([ref_pre, np.zeros((1, 4, 3, 2))], -1).reshape(1, 12, 6)
    assert out.shape == (2, 24, 6)
    assert np.allclose(out[0].detach().numpy(), np.concatenate([ref_pad, ref_pad], 1)[0], atol=1e-4)


def test_interpreter_refuses_unknown_ops():
    g = TfliteGraph(tensors=[_tensor(0, (1, 2, 2, 1)), _tensor(1, (1, 2, 2, 1))],
                    ops=[TfliteOp("BUILTIN_999", [0], [1])], inputs=[0], outputs=[1])
    with pytest.raises(UserError, match="not supported"):
        TfliteModule(g)


def test_anchor_layout():
    a = ssd_anchors()
    assert a.shape == (896, 2)
    assert torch.allclose(a[0], torch.tensor([0.5 / 16, 0.5 / 16])) and torch.equal(a[0], a[1])
    assert torch.allclose(a[512], torch.tensor([0.5 / 8, 0.5 / 8])) and torch.equal(a[512], a[517])
    assert torch.allclose(a[-1], torch.tensor([7.5 / 8, 7.5 / 8]))


def test_crop_and_projection_are_inverse():
    rect = torch.tensor([[60.0, 50.0, 40.0, 40.0, 0.3]])
    m = rect_to_affine(rect, 192)[0]
    # crop corners (index coords 0 and 192) land on the rotated rect's corners
    c, s = math.cos(0.3), math.sin(0.3)
    tl = torch.tensor([60 - 20 * c + 20 * s, 50 - 20 * s - 20 * c])
    assert torch.allclose(m[:, 2], tl, atol=1e-4)
    # a bright dot in the image shows up where project_landmarks says the crop point maps to
    img = torch.zeros(1, 3, 100, 120)
    img[..., 61, 71] = 1.0
    out = crop(img, rect, 192)
    v, u = np.unravel_index(int(out[0, 0].argmax()), (192, 192))
    p = project_landmarks(torch.tensor([[[u + 0.5, v + 0.5, 0.0]]]), rect, 192)[0, 0]
    assert abs(float(p[0]) - 71.5) < 0.5 and abs(float(p[1]) - 61.5) < 0.5


# ---------------------------------------------------------------------------------------------------------------
# Parity with MediaPipe's runtime
# ---------------------------------------------------------------------------------------------------------------
@needs_mp
def test_landmarks_same_tensor_parity(mesh, ref, astronaut):
    """Identical 192² crops into torch and MediaPipe's TFLite runtime: mean difference far below the 1 px bar."""
    rects = torch.tensor([[225.2, 130.5, 143.0, 143.0, 0.094], [230.0, 140.0, 180.0, 180.0, -0.3]])
    imgs = [astronaut, similarity_warp(astronaut, 15, 0.85, (10, -5))]
    worst = 0.0
    for img, r in zip(imgs, rects):
        c = (crop(_t(img), r[None], 192)[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        with torch.no_grad():
            lm, score = mesh.landmarks(_t(c))
        lm_r, logit_r = ref.landmarks_raw(c)
        d = np.linalg.norm(lm[0, :, :2].numpy() - lm_r[:, :2], axis=1)
        worst = max(worst, float(d.mean()))
        assert d.max() < 0.01 and np.abs(lm[0, :, 2].numpy() - lm_r[:, 2]).max() < 0.01
        assert abs(float(score[0]) - 1 / (1 + math.exp(-logit_r))) < 1e-4
    assert worst < 1e-3  # measured ~3e-5 px; the acceptance bar is 1 px


@needs_mp
def test_detector_raw_parity_and_face_found(mesh, ref, astronaut):
    i128 = cv2.resize(astronaut, (128, 128), interpolation=cv2.INTER_AREA)
    with torch.no_grad():
        reg, logit = mesh.detector.raw(_t(i128))
        dets = mesh.detector.detect(_t(astronaut))[0]
    reg_r, cls_r = ref.detector_raw(i128)
    assert np.abs(reg[0].numpy() - reg_r).max() < 1e-3 and np.abs(logit[0].numpy() - cls_r).max() < 1e-3
    assert len(dets) == 1 and float(dets[0].score) > 0.9
    box = dets[0].box.numpy()
    assert 150 < box[0] < 200 and 60 < box[1] < 110 and 250 < box[2] < 300 and 150 < box[3] < 200  # her face
    score, mbox, mkp = ref.detect(astronaut)[0]
    assert np.abs(box - mbox).max() < 0.05 and np.abs(dets[0].keypoints.numpy() - mkp).max() < 0.05
    assert abs(float(dets[0].score) - score) < 1e-4


@needs_mp
def test_whole_pipeline_matches_mediapipe_face_mesh(mesh, ref, astronaut):
    for img in (astronaut, similarity_warp(astronaut, -18, 1.15, (-15, 25)), np.ascontiguousarray(astronaut[10:410])):
        with torch.no_grad():
            lm, score, rect = mesh(_t(img))
        mp_lm = ref.face_mesh(img)
        assert mp_lm is not None and float(score[0]) > 0.5
        d = np.linalg.norm(lm[0, :, :2].numpy() - mp_lm[:, :2], axis=1) * 192 / float(rect[0, 2])
        assert d.mean() < 0.2, d.mean()  # at 192² crop scale; measured ~0.02 px
        assert np.abs(lm[0, :, 2].numpy() - mp_lm[:, 2]).max() < 0.5


# ---------------------------------------------------------------------------------------------------------------
# Differentiability and robustness
# ---------------------------------------------------------------------------------------------------------------
@needs_mp
def test_gradients_reach_the_input_image(mesh, astronaut):
    img = _t(astronaut).requires_grad_(True)
    rect = torch.tensor([[225.2, 130.5, 143.0, 143.0, 0.094]])
    lm, score = mesh.landmarks_from_rect(img, rect)
    target = lm.detach() + torch.randn_like(lm)
    loss = F.mse_loss(lm, target) - score.log().sum()
    loss.backward()
    g = img.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    # gradients live where the crop reads, not in the far corner
    assert g[..., 100:160, 160:290].abs().sum() > 0 and g[..., 400:, 400:].abs().sum() == 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in mesh.landmarks.parameters())
    mesh.zero_grad()


@needs_mp
def test_landmark_roi_tracks_and_blank_images_do_not_crash(mesh, astronaut):
    x = torch.cat([_t(astronaut), torch.full((1, 3, 512, 512), 0.5)])
    with torch.no_grad():
        lm, score, rect = mesh(x)
        assert lm.shape == (2, 468, 3) and score.shape == (2,) and rect.shape == (2, 5)
        assert float(score[0]) > 0.9 and float(score[1]) == 0 and torch.isnan(lm[1]).all()
        # second pass from the landmark ROI (MediaPipe's tracking path) lands on the same points
        r2 = roi_from_landmarks(lm[:1])
        lm2, s2 = mesh.landmarks_from_rect(x[:1], r2)
    d = (lm2[0, :, :2] - lm[0, :, :2]).norm(dim=1).mean() * 192 / float(r2[0, 2])
    assert float(s2[0]) > 0.9 and float(d) < 2.0
