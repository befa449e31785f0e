"""Training losses, one ``nn.Module`` per loss. Images are [B, 3, H, W] in [-1, 1] unless a docstring says else.

Choices (see docs/training.md):

* :class:`L2Loss` — mean squared error.
* :class:`SSIMLoss` / :class:`MSSSIMLoss` — 1 − (MS-)SSIM with an 11-tap Gaussian window (σ 1.5) on images
  mapped to [0, 1]; MS-SSIM uses as many of the 5 standard scales as the image size allows (weights
  renormalised), so it works at 64².
* :class:`LPIPSLoss` — LPIPS (VGG16 or AlexNet trunk + linear heads). Needs weights the *user* supplies
  (torchvision-style trunk state dict, optionally the LPIPS ``lin`` heads); nothing is ever downloaded, and a
  missing file is a :class:`~models.errors.UserError` with one clear line.
* :class:`LandmarkLoss` — landmark term on a differentiable face mesh's *continuous* outputs (Video2StyleGAN
  uses FAN heatmaps, not argmax coordinates; MediaPipe's mesh regresses coordinates directly, so those are the
  continuous outputs; :class:`CropFaceMesh` runs it on aligned crops): mean Euclidean distance in crop-normalised
  units between the mesh's 2-D landmarks on the reconstruction and the target landmarks (the mesh on the
  target, or ground truth when the data has it).
* :class:`MeshLoss` — our stand-in for 3DDFAv2's vertex loss: mean squared distance of the 468 3-D landmarks
  after removing the translation (centroid), in crop-normalised units.
* :class:`LatentLoss` — mean squared W+ error, where the true W+ is known (generator samples).
* :class:`RandomConvPerceptual` — the weights-free perceptual term: features of a *fixed random* conv net
  (deterministic from a seed, so nothing is stored or downloaded) at four scales plus image-gradient L1. Random
  conv features are a known weak-but-useful perceptual prior (Ulyanov et al. "Deep Image Prior"; He et al.
  "A Powerful Generative Model Using Random Weights"); the gradient term sharpens edges. When
  ``models/face_mesh.py`` exists, :class:`FeaturePerceptual` can use any frozen extractor's features instead
  (the torch face mesh exposes only its outputs, not intermediate activations, so the default stays random-conv).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from models.errors import UserError
from models.face_mesh import LANDMARK_SIZE, FaceLandmarks, crop, project_landmarks

# ------------------------------------------------------------------------------------------------ pixels


class L2Loss(nn.Module):
    """Mean squared error between two tensors of equal shape → scalar."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        assert x.shape == y.shape, (x.shape, y.shape)
        return F.mse_loss(x, y)


def _gauss_window(size: int, sigma: float, channels: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    t = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(t**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def _ssim_terms(x: torch.Tensor, y: torch.Tensor, win: torch.Tensor, c1: float, c2: float):
    ch = x.shape[1]
    mu_x = F.conv2d(x, win, groups=ch)
    mu_y = F.conv2d(y, win, groups=ch)
    sxx = F.conv2d(x * x, win, groups=ch) - mu_x**2
    syy = F.conv2d(y * y, win, groups=ch) - mu_y**2
    sxy = F.conv2d(x * y, win, groups=ch) - mu_x * mu_y
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    lum = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    return lum * cs, cs  # [B, C, h, w] each


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5,
         data_range: float = 2.0) -> torch.Tensor:
    """SSIM per image [B] (Wang et al. 2004, Gaussian window, valid convolution)."""
    x = x.to(torch.float32) / data_range
    y = y.to(torch.float32) / data_range
    window = min(window, x.shape[-1], x.shape[-2])
    win = _gauss_window(window, sigma, x.shape[1], x.device, x.dtype)
    s, _ = _ssim_terms(x, y, win, 0.01**2, 0.03**2)
    return s.mean(dim=(1, 2, 3))


class SSIMLoss(nn.Module):
    """1 − SSIM (mean over the batch). 0 for identical images."""

    def __init__(self, window: int = 11, sigma: float = 1.5):
        super().__init__()
        self.window, self.sigma = window, sigma

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 1.0 - ssim(x, y, self.window, self.sigma).mean()


MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def ms_ssim(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5,
            data_range: float = 2.0) -> torch.Tensor:
    """MS-SSIM per image [B]. Uses the largest number of the 5 scales that keep ≥ ``window`` pixels."""
    x = x.to(torch.float32) / data_range
    y = y.to(torch.float32) / data_range
    size = min(x.shape[-2:])
    levels = max(1, min(5, int(math.floor(math.log2(size / window))) + 1))
    w = torch.tensor(MS_SSIM_WEIGHTS[:levels], device=x.device)
    w = w / w.sum()
    win = _gauss_window(min(window, size), sigma, x.shape[1], x.device, x.dtype)
    vals = []
    for lvl in range(levels):
        s, cs = _ssim_terms(x, y, win, 0.01**2, 0.03**2)
        if lvl == levels - 1:
            vals.append(s.mean(dim=(1, 2, 3)))
        else:
            vals.append(cs.mean(dim=(1, 2, 3)))
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    v = torch.stack(vals, 1).clamp_min(1e-6)  # [B, levels]
    return torch.prod(v ** w[None], dim=1)


class MSSSIMLoss(nn.Module):
    """1 − MS-SSIM (mean over the batch)."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 1.0 - ms_ssim(x, y).mean()


# ------------------------------------------------------------------------------------------- perceptual


class RandomConvPerceptual(nn.Module):
    """Weights-free perceptual distance: a fixed random conv net (seeded) + image gradients.

    Four stride-2 3×3 conv + leaky-ReLU stages (32, 64, 96, 128 channels), He-initialised from ``seed`` and
    frozen; the distance is the mean over stages of the L1 distance between channel-normalised features, plus
    ``grad_weight`` × L1 between horizontal/vertical finite differences. 0 for identical inputs.
    """

    def __init__(self, seed: int = 1234, widths: Sequence[int] = (32, 64, 96, 128), grad_weight: float = 1.0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        layers = []
        cin = 3
        for cout in widths:
            conv = nn.Conv2d(cin, cout, 3, stride=2, padding=1)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * math.sqrt(2.0 / (cin * 9)))
                conv.bias.zero_()
            layers.append(conv)
            cin = cout
        self.layers = nn.ModuleList(layers)
        self.grad_weight = grad_weight
        self.requires_grad_(False)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for conv in self.layers:
            x = F.leaky_relu(conv(x), 0.2)
            out.append(x / (x.pow(2).mean(dim=1, keepdim=True) + 1e-6).sqrt())
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fx, fy = self.features(x), self.features(y)
        loss = sum(F.l1_loss(a, b) for a, b in zip(fx, fy, strict=True)) / len(fx)
        if self.grad_weight:
            gx = (x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :])
            gy = (y[..., :, 1:] - y[..., :, :-1], y[..., 1:, :] - y[..., :-1, :])
            loss = loss + self.grad_weight * 0.5 * (F.l1_loss(gx[0], gy[0]) + F.l1_loss(gx[1], gy[1]))
        return loss  # type: ignore[return-value]


class FeaturePerceptual(nn.Module):
    """Perceptual distance on the features of any frozen extractor ``features(x) -> list of [B, C, h, w]``
    (e.g. the torch face mesh's intermediate activations): mean L1 of channel-normalised features."""

    def __init__(self, features: Callable[[torch.Tensor], list[torch.Tensor]]):
        super().__init__()
        self._features = features

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fx, fy = self._features(x), self._features(y)

        def norm(f: torch.Tensor) -> torch.Tensor:
            return f / (f.pow(2).mean(dim=1, keepdim=True) + 1e-6).sqrt()

        return sum(F.l1_loss(norm(a), norm(b.detach())) for a, b in zip(fx, fy, strict=True)) / len(fx)  # type: ignore


# ------------------------------------------------------------------------------------------------- LPIPS

_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
_VGG16_TAPS = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (torchvision indices)
_ALEX_TAPS = (1, 4, 7, 9, 11)  # relu1 … relu5


def _vgg16_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    cin = 3
    for v in _VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, int(v), 3, padding=1), nn.ReLU(inplace=False)]
            cin = int(v)
    return nn.Sequential(*layers)


def _alexnet_features() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU())


_CHANNELS = {"vgg": (64, 128, 256, 512, 512), "alex": (64, 192, 384, 256, 256)}


class LPIPSLoss(nn.Module):
    """LPIPS (Zhang et al. 2018) with user-supplied weights; never downloads.

    Args:
        net: "vgg" or "alex".
        backbone: path to a torchvision-style state dict of the trunk (keys ``features.N.weight`` as in
            ``vgg16().state_dict()`` / ``alexnet().state_dict()``, or without the ``features.`` prefix).
        lin: optional path to the LPIPS linear heads (``lin0.model.1.weight`` … as in the lpips package's
            ``weights/v0.1/{net}.pth``). Without it the heads are uniform (LPIPS "baseline" variant).
    """

    def __init__(self, net: str = "vgg", backbone: str | Path | None = None, lin: str | Path | None = None):
        super().__init__()
        if net not in _CHANNELS:
            raise UserError(f"LPIPS net must be 'vgg' or 'alex', got {net!r}")
        if backbone is None:
            raise UserError(f"LPIPS-{net} needs backbone weights: pass a local {net} state dict "
                            "(nothing is downloaded; use the weights-free perceptual loss otherwise)")
        self.net = net
        self.features = _vgg16_features() if net == "vgg" else _alexnet_features()
        self.taps = _VGG16_TAPS if net == "vgg" else _ALEX_TAPS
        state = self._load(backbone, "backbone")
        state = {k.removeprefix("features."): v for k, v in state.items() if not k.startswith("classifier")}
        try:
            self.features.load_state_dict(state)
        except RuntimeError as exc:
            raise UserError(f"{backbone}: not a {net} trunk state dict ({str(exc).splitlines()[0]})") from None
        self.lins = nn.ParameterList(nn.Parameter(torch.full((c,), 1.0 / c)) for c in _CHANNELS[net])
        if lin is not None:
            ls = self._load(lin, "LPIPS heads")
            try:
                for i, p in enumerate(self.lins):
                    p.data.copy_(ls[f"lin{i}.model.1.weight"].flatten())
            except (KeyError, RuntimeError) as exc:
                raise UserError(f"{lin}: not LPIPS {net} heads ({exc})") from None
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None])
        self.requires_grad_(False)

    @staticmethod
    def _load(path: str | Path, what: str) -> dict[str, torch.Tensor]:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"LPIPS {what} weights not found: {p}")
        try:
            if p.suffix == ".safetensors":
                return load_file(str(p))
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:  # corrupt or foreign file
            raise UserError(f"cannot read LPIPS {what} weights {p}: {exc}") from None
        if not isinstance(obj, dict):
            raise UserError(f"{p}: expected a state dict")
        return obj

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = (x - self.shift) / self.scale
        y = (y - self.shift) / self.scale
        total = x.new_zeros(())
        k = 0
        for i, layer in enumerate(self.features):
            x, y = layer(x), layer(y)
            if i in self.taps:
                nx = x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                ny = y / (y.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                total = total + ((nx - ny) ** 2 * self.lins[k][None, :, None, None]).sum(1).mean()
                k += 1
                if k == len(self.taps):
                    break
        return total


# ------------------------------------------------------------------------------------- landmarks & mesh


# ------------------------------------------------------------------------------------------------ video metrics
# (benchmarks/metrics.py re-exports them; the training loops evaluate with them too)


def mean_frame_psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> float:
    """Video PSNR: the mean over frames of each frame's PSNR. a, b: [T, C, H, W]."""
    mse = (a.float() - b.float()).square().flatten(1).mean(1).clamp_min(1e-10)
    return float((10 * torch.log10(data_range**2 / mse)).mean())


def temporal_consistency(frames: torch.Tensor, radius: int = 3, data_range: float = 2.0) -> float:
    """frames [T, C, H, W] (aligned crops) → mean RMSE (in units of ``data_range``) to neighbours within ±radius
    (Video2StyleGAN's TC)."""
    t = frames.shape[0]
    if t < 2:
        return 0.0
    errs = []
    for k in range(1, radius + 1):
        if k >= t:
            break
        d = (frames[k:].float() - frames[:-k].float()) / data_range
        rmse = d.square().flatten(1).mean(1).sqrt()  # [T-k]
        errs.append(rmse)
        errs.append(rmse)  # the pair counts for both frames (i→i+k and i+k→i)
    return float(torch.cat(errs).mean())


class LandmarkLoss(nn.Module):
    """Landmark term on continuous face-mesh outputs.

    ``mesh(x)`` maps crops [B, 3, S, S] in [-1, 1] to landmarks [B, 468, ≥2] in crop pixels (differentiable).
    ``forward(x, target)``: target is either crops (the mesh runs on them, without gradient) or landmarks
    [B, 468, ≥2] (ground truth). Returns the mean 2-D Euclidean distance divided by the crop side.
    """

    def __init__(self, mesh: Callable[[torch.Tensor], torch.Tensor] | None = None):
        super().__init__()
        self.mesh = mesh

    def landmarks(self, x: torch.Tensor) -> torch.Tensor:
        if self.mesh is None:
            raise UserError("the landmark loss needs models/face_mesh.py (the differentiable face mesh)")
        return self.mesh(x)

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        size = x.shape[-1]
        pred = self.landmarks(x)[..., :2]
        if target.ndim == 4:
            with torch.no_grad():
                target = self.landmarks(target)
        return landmark_distance(pred, target[..., :2].to(pred.dtype)) / size


def landmark_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean Euclidean distance between landmark sets [B, K, D] (in their units) → scalar."""
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).pow(2).sum(-1).clamp_min(1e-12).sqrt().mean()


class MeshLoss(nn.Module):
    """3-D mesh vertex loss on 468 landmarks [B, 468, 3] (crop pixels, z like x): mean squared distance after
    removing each set's centroid, in units of the crop side. ``mesh`` as in :class:`LandmarkLoss` when called
    on images; call :meth:`vertices` directly with landmark tensors otherwise."""

    def __init__(self, mesh: Callable[[torch.Tensor], torch.Tensor] | None = None):
        super().__init__()
        self.mesh = mesh

    @staticmethod
    def vertices(pred: torch.Tensor, target: torch.Tensor, size: float) -> torch.Tensor:
        assert pred.shape == target.shape and pred.shape[-1] == 3, (pred.shape, target.shape)
        p = pred - pred.mean(dim=-2, keepdim=True)
        t = target - target.mean(dim=-2, keepdim=True)
        return ((p - t) / size).pow(2).sum(-1).mean()

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.mesh is None:
            raise UserError("the mesh loss needs models/face_mesh.py (the differentiable face mesh)")
        pred = self.mesh(x)
        if target.ndim == 4:
            with torch.no_grad():
                target = self.mesh(target)
        return self.vertices(pred, target.to(pred.dtype), x.shape[-1])


class LatentLoss(nn.Module):
    """Mean squared error between W+ codes [B, num_ws, w_dim]; optional per-entry weights [num_ws]."""

    def __init__(self, layer_weights: Sequence[float] | None = None):
        super().__init__()
        self.layer_weights = None if layer_weights is None else torch.tensor(list(layer_weights), dtype=torch.float32)

    def forward(self, w: torch.Tensor, w_true: torch.Tensor) -> torch.Tensor:
        assert w.shape == w_true.shape and w.ndim == 3, (w.shape, w_true.shape)
        err = (w - w_true).pow(2).mean(-1)  # [B, num_ws]
        if self.layer_weights is not None:
            lw = self.layer_weights.to(err.device)
            return (err * lw).sum(-1).mean() / lw.sum()
        return err.mean()


class CropFaceMesh(nn.Module):
    """MediaPipe's 468-point landmark network (models/face_mesh.py, differentiable torch port) on FFHQ-aligned
    crops: x [B, 3, S, S] in [-1, 1] → landmarks [B, 468, 3] in crop pixel-index coordinates (z like x).

    Aligned crops put the face in a fixed place, so the landmark network's ROI is a fixed square (no detector):
    centre (0.5006, 0.6148)·S, side 0.9544·S — MediaPipe's tracking ROI (landmark box × 1.5) of the mean
    ground-truth landmarks of synthetic crops. On held-out synthetic 64² crops the outputs are within 0.83 px of
    the ground truth. Frozen (its weights are never trained)."""

    ROI = (0.5006, 0.6148, 0.9544)

    def __init__(self) -> None:
        super().__init__()
        self.net = FaceLandmarks()
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.shape[-1]
        cx, cy, side = self.ROI
        rect = x.new_tensor([[cx * s, cy * s, side * s, side * s, 0.0]]).expand(x.shape[0], -1)
        lm, _ = self.net(crop((x + 1) / 2, rect, LANDMARK_SIZE))
        out = project_landmarks(lm, rect, LANDMARK_SIZE)
        return out - out.new_tensor([0.5, 0.5, 0.0])  # continuous → pixel-index coordinates


def load_face_mesh(device: torch.device | str = "cpu") -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The differentiable face mesh on aligned crops (:class:`CropFaceMesh`), or None when its weights (the .tflite
    files inside the MediaPipe wheel) are not there (callers then skip the landmark/mesh terms with a logged note)."""
    try:
        return CropFaceMesh().to(device)
    except (UserError, OSError, ImportError):
        return None
