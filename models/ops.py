"""StyleGAN2 operators in plain torch: FIR resampling, bias+activation, modulated convolution.

Two implementations of the modulated convolution share one API (``modulated_conv2d(..., impl=)``):

* ``"export"`` (default, the fast path): scale the *activations* by the styles, run an ordinary convolution
  with the fixed weight, then demodulate the *outputs*. Identical maths to the NVlabs ``fused_modconv=False``
  path; it exports to ONNX/TensorRT because the conv weight is a constant.
* ``"reference"``: fold the styles into per-sample weights and run one grouped convolution — the NVlabs
  ``fused_modconv=True`` path. Kept as the reference that tests compare against.

``upfirdn2d`` is the NVlabs reference algorithm (zero-insertion upsampling, pad, FIR, decimate), written so
that the separable 1-D form is used for separable filters (cheaper on CPU, exportable).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

Impl = Literal["export", "reference"]

LRELU_ALPHA = 0.2
LRELU_GAIN = math.sqrt(2.0)


def setup_filter(f: list[float] | torch.Tensor = (1, 3, 3, 1), normalize: bool = True) -> torch.Tensor:
    """Build the 2-D FIR filter used by NVlabs (outer product of a 1-D kernel, normalised). Returns [fh, fw]."""
    f = torch.as_tensor(f, dtype=torch.float32)
    if f.ndim == 1:
        f = torch.outer(f, f)
    assert f.ndim == 2
    if normalize:
        f = f / f.sum()
    return f


def upfirdn2d(
    x: torch.Tensor, f: torch.Tensor, up: int = 1, down: int = 1, padding: tuple[int, int, int, int] = (0, 0, 0, 0),
    gain: float = 1.0, separable: bool = True,
) -> torch.Tensor:
    """Upsample (zero insertion), pad, FIR filter, downsample. x: [B, C, H, W]; f: [fh, fw];
    padding (x0, x1, y0, y1), negative values crop. Matches NVlabs ``_upfirdn2d_ref`` (flip_filter=False).

    ``separable=True`` assumes f is rank-1 (every ``setup_filter`` output is) and runs two 1-D passes:
    f = outer(f.sum(1), f.sum(0)) / f.sum() holds exactly for rank-1 f, with no data-dependent branching
    (so it traces and exports)."""
    b, c, h, w = x.shape
    px0, px1, py0, py1 = padding
    if up > 1:
        x = x.reshape(b, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(b, c, h * up, w * up)
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0) : x.shape[2] - max(-py1, 0), max(-px0, 0) : x.shape[3] - max(-px1, 0)]
    f = f.to(x.dtype) * (gain ** (f.ndim / 2))
    f = f.flip([0, 1])  # conv2d is correlation; the NVlabs op is a true convolution
    if separable:
        rows = f.sum(dim=1) / f.sum()  # vertical taps
        cols = f.sum(dim=0)  # horizontal taps
        x = F.conv2d(x, cols.reshape(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
        x = F.conv2d(x, rows.reshape(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
    else:
        x = F.conv2d(x, f[None, None].repeat(c, 1, 1, 1), groups=c)
    if down > 1:
        x = x[:, :, ::down, ::down]
    return x


def upsample2d(x: torch.Tensor, f: torch.Tensor, up: int = 2, gain: float = 1.0) -> torch.Tensor:
    """2× FIR upsampling of an image ([B, C, H, W] → [B, C, 2H, 2W]) as NVlabs ``upfirdn2d.upsample2d``."""
    fh, fw = f.shape
    p = ((fw + up - 1) // 2, (fw - up) // 2, (fh + up - 1) // 2, (fh - up) // 2)
    return upfirdn2d(x, f, up=up, padding=p, gain=gain * up * up)


def bias_act(
    x: torch.Tensor, b: torch.Tensor | None, act: Literal["linear", "lrelu"] = "linear", gain: float | None = None,
    clamp: float | None = None, dim: int = 1,
) -> torch.Tensor:
    """x + b, activation, × gain (default: the activation's gain), clamp. Matches NVlabs ``bias_act``."""
    if b is not None:
        shape = [1] * x.ndim
        shape[dim] = -1
        x = x + b.to(x.dtype).reshape(shape)
    if act == "lrelu":
        x = F.leaky_relu(x, LRELU_ALPHA)
        default_gain = LRELU_GAIN
    else:
        default_gain = 1.0
    gain = default_gain if gain is None else gain
    if gain != 1:
        x = x * gain
    if clamp is not None and clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


def conv2d_resample(
    x: torch.Tensor, w: torch.Tensor, f: torch.Tensor | None = None, up: int = 1, padding: int = 0, groups: int = 1
) -> torch.Tensor:
    """Convolution with optional 2× FIR upsampling (NVlabs ``conv2d_resample`` for up ∈ {1, 2}, down = 1).

    x: [B, groups·Cin, H, W]; w: [groups·Cout, Cin, kh, kw] → [B, groups·Cout, up·H, up·W] (for k=3, pad=1).
    """
    out_channels, in_per_group, kh, kw = w.shape
    if up == 1:
        return F.conv2d(x, w, padding=padding, groups=groups)
    assert up == 2 and f is not None
    fh, fw = f.shape
    px0 = padding + (fw + up - 1) // 2 - (kw - 1)
    px1 = padding + (fw - up) // 2 - (kw - up)
    py0 = padding + (fh + up - 1) // 2 - (kh - 1)
    py1 = padding + (fh - up) // 2 - (kh - up)
    if groups == 1:
        wt = w.transpose(0, 1)  # [Cin, Cout, kh, kw] for conv_transpose2d
    else:
        wt = w.reshape(groups, out_channels // groups, in_per_group, kh, kw).transpose(1, 2)
        wt = wt.reshape(groups * in_per_group, out_channels // groups, kh, kw)
    pxt = max(min(-px0, -px1), 0)
    pyt = max(min(-py0, -py1), 0)
    x = F.conv_transpose2d(x, wt, stride=up, padding=[pyt, pxt], groups=groups)
    return upfirdn2d(x, f, padding=(px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt), gain=up * up)


def demod_coefficients(weight: torch.Tensor, styles: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Demodulation coefficients without building per-sample weights.

    Σ_{i,k,l} (W[o,i,k,l]·s[b,i])² = Σ_i s[b,i]² · Σ_{k,l} W[o,i,k,l]²  → a [B, Cin] × [Cin, Cout] matmul.
    weight: [Cout, Cin, kh, kw], styles: [B, Cin] → [B, Cout].
    """
    wsq = weight.square().sum(dim=(2, 3))  # [Cout, Cin]
    return (styles.square() @ wsq.t() + eps).rsqrt()


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    noise: torch.Tensor | None = None,
    up: int = 1,
    padding: int = 0,
    resample_filter: torch.Tensor | None = None,
    demodulate: bool = True,
    impl: Impl = "export",
) -> torch.Tensor:
    """StyleGAN2 modulated convolution.

    x: [B, Cin, H, W]; weight: [Cout, Cin, kh, kw]; styles: [B, Cin]; noise: broadcastable to the output
    [B, Cout, up·H, up·W] (added after demodulation, as NVlabs does). Returns [B, Cout, up·H, up·W].
    """
    batch = x.shape[0]
    out_channels, in_channels, kh, kw = weight.shape
    assert styles.shape == (batch, in_channels), (styles.shape, batch, in_channels)
    if x.dtype == torch.float16 and demodulate:
        # NVlabs: pre-normalise to avoid fp16 overflow; demodulation cancels the scale exactly.
        wmax = weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True)
        weight = weight * (1 / math.sqrt(in_channels * kh * kw) / wmax)
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)

    if impl == "export":
        dcoefs = demod_coefficients(weight, styles) if demodulate else None
        x = x * styles.to(x.dtype).reshape(batch, -1, 1, 1)
        x = conv2d_resample(x, weight.to(x.dtype), f=resample_filter, up=up, padding=padding)
        if dcoefs is not None:
            x = x * dcoefs.to(x.dtype).reshape(batch, -1, 1, 1)
        if noise is not None:
            x = x + noise.to(x.dtype)
        return x

    if impl != "reference":
        raise ValueError(f"unknown modulated_conv2d impl {impl!r}")
    w = weight.unsqueeze(0) * styles.reshape(batch, 1, -1, 1, 1)  # [B, Cout, Cin, kh, kw]
    if demodulate:
        d = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()
        w = w * d.reshape(batch, -1, 1, 1, 1)
    x = x.reshape(1, -1, *x.shape[2:])
    w = w.reshape(-1, in_channels, kh, kw).to(x.dtype)
    x = conv2d_resample(x, w, f=resample_filter, up=up, padding=padding, groups=batch)
    x = x.reshape(batch, -1, *x.shape[2:])
    if noise is not None:
        x = x + noise.to(x.dtype)
    return x


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """x / sqrt(mean(x²)) along ``dim`` (the mapping network's input normalisation)."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()
