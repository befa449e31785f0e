"""MediaPipe's face detector and 468-point face mesh in torch, differentiable, weights from the wheel's .tflite.

* :class:`TfliteModule` — a generic interpreter for the TFLite op set these models use (CONV_2D,
  DEPTHWISE_CONV_2D, ADD, PRELU, RELU, MAX_POOL_2D, PAD, RESHAPE, CONCATENATION, DEQUANTIZE folded at build), built
  once into an ``nn.Module`` with ``nn.Parameter`` weights. Activations run NCHW; NHWC→NCHW is handled once at
  build (weights permuted, PAD/CONCAT axes remapped, RESHAPE goes through NHWC as TFLite does).
* :class:`FaceDetector` — ``face_detection_short_range.tflite`` (128×128, RGB in [-1, 1], letterboxed), SSD anchors,
  box/keypoint decoding and MediaPipe's weighted NMS.
* :class:`FaceLandmarks` — ``face_landmark.tflite`` (192×192, RGB in [0, 1]) → 468×3 landmarks + presence score.
* :class:`FaceMesh` — detector → ROI → crop → landmarks, plus :meth:`FaceMesh.landmarks_from_rect`, the helper
  that runs the landmark net on a rect of a full image and returns landmarks in image pixels.

Conventions (all MediaPipe's, see docs/face_mesh.md):

* Images are ``[B, 3, H, W]`` float RGB in [0, 1]. Pixel coordinates are continuous: the image spans
  ``[0, W] × [0, H]`` and pixel ``i`` has its centre at ``i + 0.5`` — the convention MediaPipe's normalised
  coordinates use (normalised × size = our pixels).
* A rect is ``[B, 5]`` = ``(cx, cy, w, h, rotation)`` in pixels / radians (MediaPipe's ``NormalizedRect`` times
  the image size). A crop point ``(u, v) ∈ [0, S]²`` maps to ``c + R(θ) · ((u/S − ½)·w, (v/S − ½)·h)``.
* Landmarks ``[B, 468, 3]``: x, y in pixels of whichever frame is named; z in the same pixel scale as x
  (MediaPipe's z × image width), smaller = closer to the camera.

Everything on the tensor path is torch and differentiable (crop via ``grid_sample``); only NMS selection and ROI
choice are discrete. The only I/O is :func:`mediapipe_model_path` + :func:`models.legacy.read_tflite`.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.errors import UserError
from models.legacy import read_tflite
from models.tflite import TfliteGraph, fold_dequantize

LANDMARK_MODEL = "modules/face_landmark/face_landmark.tflite"
DETECTOR_MODEL = "modules/face_detection/face_detection_short_range.tflite"
NUM_LANDMARKS = 468
LANDMARK_SIZE = 192
DETECTOR_SIZE = 128
# Detector keypoints, in model order (the subject's right eye comes first).
DETECTOR_KEYPOINTS = ("right_eye", "left_eye", "nose_tip", "mouth_center", "right_ear_tragion", "left_ear_tragion")
# Landmark indices MediaPipe uses to orient the ROI when tracking from landmarks (right / left eye outer corner).
ROI_EYE_LANDMARKS = (33, 263)


# ---------------------------------------------------------------------------------------------------------------
# Locating the weights (the one place that touches the filesystem)
# ---------------------------------------------------------------------------------------------------------------
def mediapipe_model_path(rel: str) -> Path:
    """Path of a model file inside the installed mediapipe package (not imported). Missing → UserError."""
    spec = importlib.util.find_spec("mediapipe")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("MediaPipe is not installed: pip install --no-deps mediapipe==0.10.21 (its .tflite face "
                        "models are needed; see README 'Install by hand')")
    for root in spec.submodule_search_locations:
        p = Path(root) / rel
        if p.is_file():
            return p
    raise UserError(f"the installed mediapipe package has no {rel}; install mediapipe==0.10.21, which ships it")


def load_graph(rel: str) -> TfliteGraph:
    """Read one of the wheel's .tflite models through models.legacy (the only foreign-checkpoint reader)."""
    return read_tflite(mediapipe_model_path(rel))


# ---------------------------------------------------------------------------------------------------------------
# Generic TFLite → torch interpreter
# ---------------------------------------------------------------------------------------------------------------
def _same_pad(size: int, k: int, s: int, d: int = 1) -> tuple[int, int]:
    """TF 'SAME' padding (before, after) for one spatial axis: the extra pixel goes after."""
    out = -(-size // s)
    total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
    return total // 2, total - total // 2


def _activation(x: Tensor, name: str) -> Tensor:
    if name == "NONE":
        return x
    if name == "RELU":
        return F.relu(x)
    if name == "RELU6":
        return F.hardtanh(x, 0.0, 6.0)
    if name == "RELU_N1_TO_1":
        return F.hardtanh(x, -1.0, 1.0)
    if name == "TANH":
        return torch.tanh(x)
    raise UserError(f"unsupported fused activation {name} in TFLite model")


_NHWC_TO_NCHW_AXIS = {0: 0, 1: 2, 2: 3, 3: 1}


class _Conv(nn.Module):
    """CONV_2D / DEPTHWISE_CONV_2D with TF padding and fused activation. Input/output NCHW."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray | None, opts: dict, in_hw: tuple[int, int],
                 depthwise: bool) -> None:
        super().__init__()
        if depthwise:  # TFLite [1, kh, kw, C*M] -> torch [C*M, 1, kh, kw]
            w = weight.transpose(3, 0, 1, 2)
        else:  # TFLite [O, kh, kw, I] -> torch [O, I, kh, kw]
            w = weight.transpose(0, 3, 1, 2)
        wt = torch.from_numpy(np.ascontiguousarray(w, np.float32))
        self.weight = nn.Parameter(wt.contiguous(memory_format=torch.channels_last))  # [O, I/groups, kh, kw]
        self.bias = nn.Parameter(torch.from_numpy(bias.astype(np.float32))) if bias is not None else None
        self.stride = (opts["stride_h"], opts["stride_w"])
        self.dilation = (opts.get("dilation_h", 1), opts.get("dilation_w", 1))
        self.groups = w.shape[0] // max(1, opts.get("depth_multiplier", 1)) if depthwise else 1
        self.act = opts.get("activation", "NONE")
        kh, kw = w.shape[2], w.shape[3]
        if opts["padding"] == "SAME":
            ph = _same_pad(in_hw[0], kh, self.stride[0], self.dilation[0])
            pw = _same_pad(in_hw[1], kw, self.stride[1], self.dilation[1])
        else:
            ph = pw = (0, 0)
        # Symmetric padding goes into conv2d itself; asymmetric (TF's extra pixel after) needs F.pad.
        self.sym = (ph[0], pw[0]) if ph[0] == ph[1] and pw[0] == pw[1] else (0, 0)
        self.pad = None if self.sym != (0, 0) or (ph, pw) == ((0, 0), (0, 0)) else (pw[0], pw[1], ph[0], ph[1])

    def forward(self, x: Tensor) -> Tensor:
        if self.pad is not None:
            x = F.pad(x, self.pad)
        y = F.conv2d(x, self.weight, self.bias, self.stride, self.sym, self.dilation, self.groups)
        return _activation(y, self.act)


class _MaxPool(nn.Module):
    def __init__(self, opts: dict, in_hw: tuple[int, int]) -> None:
        super().__init__()
        self.k = (opts["filter_h"], opts["filter_w"])
        self.s = (opts["stride_h"], opts["stride_w"])
        self.act = opts.get("activation", "NONE")
        if opts["padding"] == "SAME":
            ph = _same_pad(in_hw[0], self.k[0], self.s[0])
            pw = _same_pad(in_hw[1], self.k[1], self.s[1])
            self.pad = (pw[0], pw[1], ph[0], ph[1]) if any(ph + pw) else None
        else:
            self.pad = None

    def forward(self, x: Tensor) -> Tensor:
        if self.pad is not None:
            x = F.pad(x, self.pad, value=float("-inf"))
        return _activation(F.max_pool2d(x, self.k, self.s), self.act)


class _PReLU(nn.Module):
    def __init__(self, alpha: np.ndarray) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.from_numpy(alpha.reshape(-1).astype(np.float32)))  # [C]

    def forward(self, x: Tensor) -> Tensor:
        return F.prelu(x, self.weight)


@dataclass
class _Step:
    kind: str  # op name
    module: int  # index into TfliteModule.layers, -1 for parameter-free ops
    inputs: list[int]  # tensor indices read
    output: int  # tensor index written
    arg: object = None  # static argument (pad widths, axis, shape, activation)


class TfliteModule(nn.Module):
    """A TFLite graph (first subgraph) as a torch module. Input NCHW ``[B, C, H, W]``; outputs in TFLite layout.

    4-D activations are kept NCHW internally; graph outputs that are 4-D are returned NHWC (TFLite layout) with
    the batch size of the input. Only the op set of MediaPipe's face models is supported; anything else raises
    UserError at build time, never silently at run time.
    """

    def __init__(self, graph: TfliteGraph, channels_last: bool = True) -> None:
        super().__init__()
        g = fold_dequantize(graph)
        # Run activations in channels-last memory (still NCHW shapes): ~1.5x faster on CPU for these nets.
        self.channels_last = channels_last
        self.input_shape = g.tensors[g.inputs[0]].shape  # NHWC, batch 1
        self.output_shapes = [g.tensors[i].shape for i in g.outputs]
        self.input_index = g.inputs[0]
        self.output_indices = list(g.outputs)
        self.ndim = {t.index: len(t.shape) for t in g.tensors}
        self.layers = nn.ModuleList()
        self.steps: list[_Step] = []
        const = {t.index for t in g.tensors if t.data is not None}

        def hw(idx: int) -> tuple[int, int]:
            s = g.tensors[idx].shape
            return (s[1], s[2])

        for op in g.ops:
            name, ins, out = op.name, op.inputs, op.outputs[0]
            if len(op.outputs) != 1:
                raise UserError(f"TFLite op {name} with {len(op.outputs)} outputs is not supported")
            if name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
                bias = g.const(ins[2]) if len(ins) > 2 and ins[2] >= 0 else None
                self.layers.append(_Conv(g.const(ins[1]), bias, op.options, hw(ins[0]), name == "DEPTHWISE_CONV_2D"))
                self.steps.append(_Step(name, len(self.layers) - 1, [ins[0]], out))
            elif name == "PRELU":
                self.layers.append(_PReLU(g.const(ins[1])))
                self.steps.append(_Step(name, len(self.layers) - 1, [ins[0]], out))
            elif name == "MAX_POOL_2D":
                self.layers.append(_MaxPool(op.options, hw(ins[0])))
                self.steps.append(_Step(name, len(self.layers) - 1, [ins[0]], out))
            elif name in ("ADD", "MUL"):
                if any(i in const for i in ins):
                    raise UserError(f"TFLite {name} with a constant operand is not supported")
                self.steps.append(_Step(name, -1, list(ins), out, op.options.get("activation", "NONE")))
            elif name in ("RELU", "RELU6", "LOGISTIC", "TANH"):
                self.steps.append(_Step(name, -1, [ins[0]], out))
            elif name == "PAD":
                p = g.const(ins[1]).astype(np.int64).reshape(-1, 2)
                if len(p) == 4:  # NHWC paddings -> F.pad order for NCHW: (W, H, C, N)
                    widths = (p[2, 0], p[2, 1], p[1, 0], p[1, 1], p[3, 0], p[3, 1], p[0, 0], p[0, 1])
                else:
                    widths = tuple(v for row in p[::-1] for v in row)
                if p[0].any():
                    raise UserError("TFLite PAD on the batch axis is not supported")
                self.steps.append(_Step(name, -1, [ins[0]], out, tuple(int(v) for v in widths)))
            elif name == "RESHAPE":
                shape = op.options.get("new_shape") or (
                    [int(v) for v in g.const(ins[1]).astype(np.int64)] if len(ins) > 1 else list(g.tensors[out].shape))
                if not shape:
                    shape = list(g.tensors[out].shape)
                self.steps.append(_Step(name, -1, [ins[0]], out, tuple(shape[1:])))
            elif name == "CONCATENATION":
                nd = self.ndim[out]
                axis = op.options.get("axis", 0) % nd
                if nd == 4:
                    axis = _NHWC_TO_NCHW_AXIS[axis]
                if axis == 0:
                    raise UserError("TFLite CONCATENATION on the batch axis is not supported")
                self.steps.append(_Step(name, -1, list(ins), out, (axis, op.options.get("activation", "NONE"))))
            else:
                raise UserError(f"TFLite op {name} is not supported by models.face_mesh.TfliteModule")
            for i in ins:
                if i >= 0 and i in const and name not in ("CONV_2D", "DEPTHWISE_CONV_2D", "PRELU", "PAD", "RESHAPE"):
                    raise UserError(f"TFLite {name} reads constant tensor {g.tensors[i].name!r}: not supported")

    def forward(self, x: Tensor) -> list[Tensor]:
        """x: ``[B, C, H, W]`` (the model's NHWC input, transposed) → graph outputs in TFLite layout, batch B."""
        _, h, w, c = self.input_shape
        assert x.ndim == 4 and tuple(x.shape[1:]) == (c, h, w), f"expected [B, {c}, {h}, {w}], got {tuple(x.shape)}"
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        env: dict[int, Tensor] = {self.input_index: x}
        for st in self.steps:
            a = env[st.inputs[0]]
            k = st.kind
            if st.module >= 0:
                y = self.layers[st.module](a)
            elif k == "ADD":
                y = _activation(a + env[st.inputs[1]], st.arg)  # type: ignore[arg-type]
            elif k == "MUL":
                y = _activation(a * env[st.inputs[1]], st.arg)  # type: ignore[arg-type]
            elif k == "RELU":
                y = F.relu(a)
            elif k == "RELU6":
                y = F.hardtanh(a, 0.0, 6.0)
            elif k == "LOGISTIC":
                y = torch.sigmoid(a)
            elif k == "TANH":
                y = torch.tanh(a)
            elif k == "PAD":
                y = F.pad(a, st.arg)  # type: ignore[arg-type]
            elif k == "RESHAPE":
                if a.ndim == 4:  # back to TFLite's NHWC element order before flattening
                    a = a.permute(0, 2, 3, 1)
                y = a.reshape(a.shape[0], *st.arg)  # type: ignore[misc]
                if y.ndim == 4:
                    y = y.permute(0, 3, 1, 2)
            elif k == "CONCATENATION":
                axis, act = st.arg  # type: ignore[misc]
                y = _activation(torch.cat([env[i] for i in st.inputs], axis), act)
            else:  # pragma: no cover - refused at build
                raise AssertionError(k)
            env[st.output] = y
        outs = []
        for i in self.output_indices:
            o = env[i]
            outs.append(o.permute(0, 2, 3, 1).contiguous() if o.ndim == 4 else o)
        return outs


# ---------------------------------------------------------------------------------------------------------------
# Rects, crops and projections
# ---------------------------------------------------------------------------------------------------------------
def rect_to_affine(rect: Tensor, size: int) -> Tensor:
    """Affine from crop *index* coords to image *index* coords, as MediaPipe's OpenCV ImageToTensor warps.

    rect: ``[B, 5]`` (cx, cy, w, h, rotation) in pixels/radians → ``[B, 2, 3]``. MediaPipe maps the rect's corner
    points onto the crop's corner points (0, 0)…(S, S) with OpenCV's ``warpPerspective``, whose coordinates are
    pixel indices; we reproduce that exactly so crops match MediaPipe's own.
    """
    assert rect.ndim == 2 and rect.shape[1] == 5, f"rect must be [B, 5], got {tuple(rect.shape)}"
    cx, cy, w, h, th = rect.unbind(1)
    c, s = torch.cos(th), torch.sin(th)
    # image = M @ (u, v, 1): u in [0, S] spans the rect's width along the rotated x axis.
    a = c * w / size
    b = -s * h / size
    d = s * w / size
    e = c * h / size
    tx = cx - 0.5 * (a * size + b * size)
    ty = cy - 0.5 * (d * size + e * size)
    return torch.stack([torch.stack([a, b, tx], 1), torch.stack([d, e, ty], 1)], 1)


def crop(image: Tensor, rect: Tensor, size: int, border: str = "border") -> Tensor:
    """Differentiable rotated crop. image ``[B, 3, H, W]``, rect ``[B, 5]`` → ``[B, 3, size, size]``.

    Bilinear, like MediaPipe; ``border`` is ``"border"`` (replicate, the landmark model) or ``"zeros"``
    (the detector's letterbox).
    """
    assert image.ndim == 4 and rect.shape[0] == image.shape[0], "image [B, C, H, W] and rect [B, 5] needed"
    bsz, _, hh, ww = image.shape
    m = rect_to_affine(rect.to(image.dtype), size)  # [B, 2, 3]
    idx = torch.arange(size, dtype=image.dtype, device=image.device)
    vv, uu = torch.meshgrid(idx, idx, indexing="ij")
    uv1 = torch.stack([uu, vv, torch.ones_like(uu)], -1).reshape(1, -1, 3)  # [1, S*S, 3]
    xy = uv1 @ m.transpose(1, 2)  # [B, S*S, 2] image index coords
    gx = (xy[..., 0] + 0.5) / ww * 2 - 1
    gy = (xy[..., 1] + 0.5) / hh * 2 - 1
    grid = torch.stack([gx, gy], -1).reshape(bsz, size, size, 2)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode=border, align_corners=False)


def project_landmarks(lm: Tensor, rect: Tensor, size: int) -> Tensor:
    """Crop landmarks ``[B, N, 3]`` (pixels of a ``size``² crop) → image pixels, as LandmarkProjectionCalculator."""
    cx, cy, w, h, th = rect.unbind(1)
    x = lm[..., 0] / size - 0.5
    y = lm[..., 1] / size - 0.5
    c, s = torch.cos(th)[:, None], torch.sin(th)[:, None]
    px = (c * x - s * y) * w[:, None] + cx[:, None]
    py = (s * x + c * y) * h[:, None] + cy[:, None]
    pz = lm[..., 2] / size * w[:, None]
    return torch.stack([px, py, pz], -1)


def _normalize_radians(a: Tensor) -> Tensor:
    return a - 2 * math.pi * torch.floor((a + math.pi) / (2 * math.pi))


def roi_from_points(box: Tensor, start: Tensor, end: Tensor, scale: float = 1.5) -> Tensor:
    """MediaPipe's DetectionsToRects + RectTransformation(scale, square_long) in pixels.

    box ``[B, 4]`` (xmin, ymin, xmax, ymax), start/end ``[B, 2]`` the points whose direction sets the rotation
    (target angle 0) → rect ``[B, 5]``.
    """
    cx = (box[:, 0] + box[:, 2]) / 2
    cy = (box[:, 1] + box[:, 3]) / 2
    long = torch.maximum(box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]) * scale
    rot = _normalize_radians(-torch.atan2(-(end[:, 1] - start[:, 1]), end[:, 0] - start[:, 0]))
    return torch.stack([cx, cy, long, long, rot], 1)


def roi_from_landmarks(landmarks: Tensor, scale: float = 1.5) -> Tensor:
    """Tracking ROI from the previous frame's landmarks ``[B, 468, 2|3]`` (image pixels) → rect ``[B, 5]``."""
    xy = landmarks[..., :2]
    box = torch.cat([xy.amin(1), xy.amax(1)], 1)
    return roi_from_points(box, xy[:, ROI_EYE_LANDMARKS[0]], xy[:, ROI_EYE_LANDMARKS[1]], scale)


# ---------------------------------------------------------------------------------------------------------------
# Landmark network
# ---------------------------------------------------------------------------------------------------------------
class FaceLandmarks(nn.Module):
    """MediaPipe face mesh (``face_landmark.tflite``): crop ``[B, 3, 192, 192]`` RGB in [0, 1] → landmarks + score.

    Returns ``(landmarks [B, 468, 3], score [B])``: x, y in crop pixels (0…192), z in the same scale relative to
    the face centre; score = sigmoid(face-presence logit). MediaPipe rejects faces with score < 0.5.
    """

    size = LANDMARK_SIZE

    def __init__(self, graph: TfliteGraph | None = None) -> None:
        super().__init__()
        self.net = TfliteModule(graph if graph is not None else load_graph(LANDMARK_MODEL))
        assert self.net.input_shape == (1, 192, 192, 3), self.net.input_shape

    def raw(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Raw outputs: ``([B, 1404], [B])`` landmark regressions and face-presence logit."""
        lm, flag = self.net(x)
        return lm.reshape(x.shape[0], -1), flag.reshape(x.shape[0])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x ``[B, 3, 192, 192]`` in [0, 1] → (landmarks ``[B, 468, 3]`` crop px, score ``[B]``)."""
        lm, logit = self.raw(x)
        return lm.reshape(-1, NUM_LANDMARKS, 3), torch.sigmoid(logit)


# ---------------------------------------------------------------------------------------------------------------
# Detector
# ---------------------------------------------------------------------------------------------------------------
def ssd_anchors(size: int = DETECTOR_SIZE, strides: tuple[int, ...] = (8, 16, 16, 16)) -> Tensor:
    """Anchor centres ``[896, 2]`` (x, y in [0, 1]) of SsdAnchorsCalculator for the short-range face detector.

    fixed_anchor_size with aspect ratio 1 plus the interpolated-scale anchor: 2 anchors per cell per layer;
    consecutive layers with the same stride share a feature map (16² × 2 + 8² × 6 = 896).
    """
    out: list[Tensor] = []
    i = 0
    while i < len(strides):
        j = i
        while j < len(strides) and strides[j] == strides[i]:
            j += 1
        n_per_cell = 2 * (j - i)
        fm = math.ceil(size / strides[i])
        ys, xs = torch.meshgrid(torch.arange(fm), torch.arange(fm), indexing="ij")
        c = torch.stack([(xs + 0.5) / fm, (ys + 0.5) / fm], -1).reshape(-1, 1, 2)
        out.append(c.expand(-1, n_per_cell, 2).reshape(-1, 2))
        i = j
    return torch.cat(out).float()


@dataclass
class Detection:
    """One face detection in image pixels (tensors, differentiable w.r.t. the input through the weighted mean)."""

    score: Tensor  # [] probability
    box: Tensor  # [4] xmin, ymin, xmax, ymax (pixels)
    keypoints: Tensor  # [6, 2] x, y (pixels), order DETECTOR_KEYPOINTS


def _iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of one box a ``[4]`` with boxes b ``[N, 4]`` → ``[N]``."""
    x0 = torch.maximum(a[0], b[:, 0])
    y0 = torch.maximum(a[1], b[:, 1])
    x1 = torch.minimum(a[2], b[:, 2])
    y1 = torch.minimum(a[3], b[:, 3])
    inter = (x1 - x0).clamp(min=0) * (y1 - y0).clamp(min=0)
    area = lambda t: (t[..., 2] - t[..., 0]).clamp(min=0) * (t[..., 3] - t[..., 1]).clamp(min=0)  # noqa: E731
    union = area(a) + area(b) - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(union))


def weighted_nms(boxes: Tensor, keypoints: Tensor, scores: Tensor, iou: float = 0.3) -> list[Detection]:
    """MediaPipe's WEIGHTED non-max suppression. boxes ``[N, 4]``, keypoints ``[N, K, 2]``, scores ``[N]``.

    Repeatedly take the best remaining detection, gather every remaining one with IoU > ``iou`` (itself
    included), and emit their score-weighted mean box/keypoints with the best one's score.
    """
    order = torch.argsort(scores.detach(), descending=True)
    remaining = order
    out: list[Detection] = []
    while remaining.numel():
        top = remaining[0]
        sim = _iou(boxes[top].detach(), boxes[remaining].detach())
        member = sim > iou
        member[0] = True
        cl = remaining[member]
        w = scores[cl]
        tot = w.sum()
        box = (boxes[cl] * w[:, None]).sum(0) / tot
        kp = (keypoints[cl] * w[:, None, None]).sum(0) / tot
        out.append(Detection(score=scores[top], box=box, keypoints=kp))
        remaining = remaining[~member]
    return out


class FaceDetector(nn.Module):
    """BlazeFace short-range detector (``face_detection_short_range.tflite``), differentiable.

    ``forward`` takes the 128² model input ``[B, 3, 128, 128]`` RGB in [0, 1] (mapped to [-1, 1] inside) and
    returns ``(boxes [B, 896, 4], keypoints [B, 896, 6, 2], scores [B, 896])`` in model-input coordinates
    normalised to [0, 1]. :meth:`detect` runs the whole MediaPipe detection graph on full images.
    """

    size = DETECTOR_SIZE

    def __init__(self, graph: TfliteGraph | None = None) -> None:
        super().__init__()
        self.net = TfliteModule(graph if graph is not None else load_graph(DETECTOR_MODEL))
        assert self.net.input_shape == (1, 128, 128, 3), self.net.input_shape
        self.register_buffer("anchors", ssd_anchors(), persistent=False)

    def raw(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x ``[B, 3, 128, 128]`` in [0, 1] → raw ``(regressors [B, 896, 16], logits [B, 896])``."""
        reg, cls = self.net(x * 2 - 1)
        return reg, cls.reshape(x.shape[0], -1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x ``[B, 3, 128, 128]`` in [0, 1] → boxes ``[B, 896, 4]``, keypoints ``[B, 896, 6, 2]``, scores ``[B, 896]``.

        Boxes are (xmin, ymin, xmax, ymax); all coordinates normalised to the 128² input.
        """
        reg, logit = self.raw(x)
        a = self.anchors[None]  # [1, 896, 2]; anchor w = h = 1 (fixed_anchor_size)
        r = reg / self.size
        c = r[..., 0:2] + a
        half = r[..., 2:4] / 2
        boxes = torch.cat([c - half, c + half], -1)
        kps = r[..., 4:16].reshape(*r.shape[:2], 6, 2) + a[:, :, None]
        scores = torch.sigmoid(logit.clamp(-100.0, 100.0))
        return boxes, kps, scores

    def letterbox_rect(self, image: Tensor) -> Tensor:
        """The square rect ``[B, 5]`` MediaPipe letterboxes a full image into (keep_aspect_ratio)."""
        bsz, _, h, w = image.shape
        side = float(max(h, w))
        r = torch.tensor([w / 2, h / 2, side, side, 0.0], dtype=image.dtype, device=image.device)
        return r.expand(bsz, 5)

    def detect(self, image: Tensor, min_score: float = 0.5, iou: float = 0.3) -> list[list[Detection]]:
        """Full images ``[B, 3, H, W]`` in [0, 1] → per image, detections (pixels) sorted by score."""
        if image.ndim == 3:
            image = image[None]
        rect = self.letterbox_rect(image)
        x = crop(image, rect, self.size, border="zeros")
        boxes, kps, scores = self(x)
        results: list[list[Detection]] = []
        for b in range(image.shape[0]):
            keep = scores[b].detach() >= min_score
            side, ox, oy = rect[b, 2], rect[b, 0] - rect[b, 2] / 2, rect[b, 1] - rect[b, 3] / 2
            off = torch.stack([ox, oy])
            bx = boxes[b][keep] * side + torch.cat([off, off])
            kp = kps[b][keep] * side + off
            results.append(weighted_nms(bx, kp, scores[b][keep], iou))
        return results


def roi_from_detection(det: Detection, scale: float = 1.5) -> Tensor:
    """FaceDetectionFrontDetectionToRoi: eyes set the rotation, box ×1.5, square on the long side → ``[1, 5]``."""
    return roi_from_points(det.box[None], det.keypoints[None, 0], det.keypoints[None, 1], scale)


# ---------------------------------------------------------------------------------------------------------------
# Detector + landmarks
# ---------------------------------------------------------------------------------------------------------------
class FaceMesh(nn.Module):
    """Detector + landmark network, MediaPipe's static-image face-mesh graph in torch."""

    def __init__(self, detector: FaceDetector | None = None, landmarks: FaceLandmarks | None = None) -> None:
        super().__init__()
        self.detector = detector if detector is not None else FaceDetector()
        self.landmarks = landmarks if landmarks is not None else FaceLandmarks()

    def landmarks_from_rect(self, image: Tensor, rect: Tensor) -> tuple[Tensor, Tensor]:
        """image ``[B, 3, H, W]`` in [0, 1], rect ``[B, 5]`` → (landmarks ``[B, 468, 3]`` image px, score ``[B]``)."""
        x = crop(image, rect, LANDMARK_SIZE, border="border")
        lm, score = self.landmarks(x)
        return project_landmarks(lm, rect, LANDMARK_SIZE), score

    def forward(self, image: Tensor, min_score: float = 0.5) -> tuple[Tensor, Tensor, Tensor]:
        """image ``[B, 3, H, W]`` in [0, 1] → (landmarks ``[B, 468, 3]`` px, score ``[B]``, rect ``[B, 5]``).

        One face per image (the best detection). Images with no detection get NaN landmarks, score 0 and a NaN
        rect, so a batch never fails as a whole.
        """
        dets = self.detector.detect(image, min_score=min_score)
        nan = torch.full((5,), float("nan"), dtype=image.dtype, device=image.device)
        rects = torch.stack([roi_from_detection(d[0])[0] if d else nan for d in dets])
        found = torch.tensor([bool(d) for d in dets], device=image.device)
        safe = torch.where(found[:, None], rects, self.detector.letterbox_rect(image))
        lm, score = self.landmarks_from_rect(image, safe)
        lm = torch.where(found[:, None, None], lm, torch.full_like(lm, float("nan")))
        return lm, score * found, rects
