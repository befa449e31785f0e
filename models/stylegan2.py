"""StyleGAN2 generator — the one generator definition of the project.

Architecture and parameter names follow NVlabs stylegan2-ada-pytorch (``training/networks.py``) with the
'skip' architecture and config-f defaults, so an official ``G_ema`` state maps 1:1 onto this module
(``Generator.load_state_dict``), and a rosinality checkpoint maps through one table (``models/legacy.py``).

Differences from the NVlabs code, all numerically neutral:

* the modulated convolution runs in its export form (activations scaled by the styles, fixed conv weight,
  outputs demodulated; ``models/ops.py``), with the grouped-conv form kept as ``impl="reference"``;
* ``synthesis(..., style_deltas=)`` adds StyleSpace offsets to named affine outputs (``models/latents.py``);
* ``noise_mode="const"`` is the default (the realtime path must be deterministic).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from models import ops
from models.latents import StyleLayer, WPlusLayout, num_ws_for, style_layers
from models.validation import FieldError, Float, Int, ListOf, Optional, Rule, check_fields

NoiseMode = Literal["const", "random", "none"]
MAX_DIM = 4096  # largest latent / channel width a config may ask for (official FFHQ: 512)


@dataclass
class GeneratorConfig:
    """Every hyper-parameter that changes the generator's parameters or outputs."""

    z_dim: int = 512  # input latent size
    c_dim: int = 0  # conditioning label size (0 = unconditional)
    w_dim: int = 512  # intermediate latent (W) size
    img_resolution: int = 1024  # output resolution (power of two)
    img_channels: int = 3  # output channels
    mapping_layers: int = 8  # depth of the mapping MLP
    mapping_lr_multiplier: float = 0.01  # equalised learning-rate multiplier of the mapping MLP
    embed_features: int | None = None  # label embedding size (default w_dim), only when c_dim > 0
    layer_features: int | None = None  # mapping hidden width (default w_dim)
    w_avg_beta: float = 0.995  # EMA decay of the tracked average w
    channel_base: int = 32768  # channels at resolution r = min(channel_base // r, channel_max)
    channel_max: int = 512  # upper bound on channels
    conv_clamp: float | None = None  # clamp conv outputs to ±this (NVlabs: 256 for ada-trained models)
    num_fp16_res: int = 0  # informational: how many top resolutions NVlabs ran in fp16 (engines decide here)
    resample_filter: tuple[int, ...] = (1, 3, 3, 1)  # FIR kernel for upsampling
    coarse_resolution: int = 32  # W+ entries driving resolutions ≤ this are "coarse" (models/latents.py)

    def channels(self) -> dict[int, int]:
        """Block output channels per resolution."""
        res = 4
        out = {}
        while res <= self.img_resolution:
            out[res] = min(self.channel_base // res, self.channel_max)
            res *= 2
        return out

    @property
    def num_ws(self) -> int:
        return num_ws_for(self.img_resolution)

    def layout(self) -> WPlusLayout:
        return WPlusLayout(self.img_resolution, self.w_dim, self.coarse_resolution)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["resample_filter"] = list(self.resample_filter)
        return d

    # Type and range of every field: checked before any network is built from an untrusted config (bundle.json,
    # a foreign checkpoint's kwargs). Maxima are far above every published StyleGAN2 (FFHQ: 512 / 1024² / 8).
    FIELDS: ClassVar[dict[str, Rule]] = {
        "z_dim": Int(0, MAX_DIM),
        "c_dim": Int(0, 1 << 16),
        "w_dim": Int(1, MAX_DIM),
        "img_resolution": Int(8, 4096, pow2=True),
        "img_channels": Int(1, 16),
        "mapping_layers": Int(1, 32),
        "mapping_lr_multiplier": Float(0, 1e3, lo_open=True),
        "embed_features": Optional(Int(1, MAX_DIM)),
        "layer_features": Optional(Int(1, MAX_DIM)),
        "w_avg_beta": Float(0, 1),
        "channel_base": Int(1, 1 << 24),
        "channel_max": Int(1, MAX_DIM),
        "conv_clamp": Optional(Float(0, 1e6, lo_open=True)),
        "num_fp16_res": Int(0, 16),
        "resample_filter": ListOf(Int(-1024, 1024), 1, 16, tuple_=True),
        "coarse_resolution": Int(4, 4096, pow2=True),
    }

    def validate(self) -> GeneratorConfig:
        """Check every field and the relations between them; raise :class:`FieldError` naming the field."""
        check_fields(self.FIELDS, self.to_dict())
        if self.z_dim + self.c_dim == 0:
            raise FieldError("z_dim", "z_dim and c_dim cannot both be 0 (the mapping would have no input)")
        if self.channel_base < self.img_resolution:
            raise FieldError("channel_base", f"must be at least img_resolution ({self.img_resolution}) so that every "
                                             f"block has channels, got {self.channel_base}")
        if sum(self.resample_filter) == 0:
            raise FieldError("resample_filter", f"must have a non-zero sum (the filter is divided by it), got "
                                                f"{list(self.resample_filter)}")
        return self

    @classmethod
    def from_dict(cls, d: dict) -> GeneratorConfig:
        """From JSON; raises :class:`FieldError` (a ValueError) for an unknown field or a bad value."""
        return cls(**check_fields(cls.FIELDS, d)).validate()


# Named presets. "ffhq-config-f" is the official FFHQ 1024² generator.
GENERATOR_PRESETS: dict[str, GeneratorConfig] = {
    "ffhq-config-f": GeneratorConfig(),
    "config-f-512": GeneratorConfig(img_resolution=512),
    "config-f-256": GeneratorConfig(img_resolution=256),
    "small-256": GeneratorConfig(img_resolution=256, channel_base=8192, channel_max=256, mapping_layers=4,
                                 z_dim=256, w_dim=256),
    "small-128": GeneratorConfig(img_resolution=128, channel_base=8192, channel_max=256, mapping_layers=4,
                                 z_dim=256, w_dim=256),
    "tiny-256": GeneratorConfig(img_resolution=256, channel_base=2048, channel_max=128, mapping_layers=2,
                                z_dim=128, w_dim=128),
    "tiny-128": GeneratorConfig(img_resolution=128, channel_base=2048, channel_max=128, mapping_layers=2,
                                z_dim=128, w_dim=128),
    "tiny-64": GeneratorConfig(img_resolution=64, channel_base=1024, channel_max=64, mapping_layers=2,
                               z_dim=64, w_dim=64),
}


class FullyConnectedLayer(nn.Module):
    """Equalised-learning-rate linear layer (NVlabs ``FullyConnectedLayer``). x: [B, in] → [B, out]."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str = "linear",
                 lr_multiplier: float = 1.0, bias_init: float = 0.0):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.weight = nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias
        if b is not None:
            b = b.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return ops.bias_act(x.matmul(w.t()), b, act=self.activation)  # type: ignore[arg-type]


class MappingNetwork(nn.Module):
    """z (and optional label c) → w. Tracks ``w_avg`` for truncation and as the encoders' origin."""

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim = cfg.z_dim, cfg.c_dim, cfg.w_dim
        self.num_ws = cfg.num_ws
        self.num_layers = cfg.mapping_layers
        self.w_avg_beta = cfg.w_avg_beta
        embed_features = (cfg.embed_features or cfg.w_dim) if cfg.c_dim > 0 else 0
        layer_features = cfg.layer_features or cfg.w_dim
        features = [cfg.z_dim + embed_features] + [layer_features] * (cfg.mapping_layers - 1) + [cfg.w_dim]
        if cfg.c_dim > 0:
            self.embed = FullyConnectedLayer(cfg.c_dim, embed_features)
        for idx in range(cfg.mapping_layers):
            layer = FullyConnectedLayer(features[idx], features[idx + 1], activation="lrelu",
                                        lr_multiplier=cfg.mapping_lr_multiplier)
            setattr(self, f"fc{idx}", layer)
        self.register_buffer("w_avg", torch.zeros([cfg.w_dim]))

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None, update_w_avg: bool = False) -> torch.Tensor:
        """z: [B, z_dim], c: [B, c_dim] or None → ws [B, num_ws, w_dim]."""
        x = ops.normalize_2nd_moment(z.to(torch.float32)) if self.z_dim > 0 else None
        if self.c_dim > 0:
            if c is None:
                raise ValueError("this generator is conditional: pass c")
            y = ops.normalize_2nd_moment(self.embed(c.to(torch.float32)))
            x = torch.cat([x, y], dim=1) if x is not None else y
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        if update_w_avg:
            self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        x = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        if truncation_psi != 1:
            if truncation_cutoff is None:
                x = self.w_avg.lerp(x, truncation_psi)
            else:
                x = x.clone()
                x[:, :truncation_cutoff] = self.w_avg.lerp(x[:, :truncation_cutoff], truncation_psi)
        return x


class SynthesisLayer(nn.Module):
    """Modulated 3×3 conv (+ optional 2× upsampling), noise, bias, leaky ReLU."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, up: int = 1,
                 resample_filter: tuple[int, ...] = (1, 3, 3, 1), conv_clamp: float | None = None,
                 kernel_size: int = 3):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.resolution, self.up, self.conv_clamp = resolution, up, conv_clamp
        self.padding = kernel_size // 2
        self.act_gain = ops.LRELU_GAIN
        self.style_name = ""  # StyleSpace key, set by SynthesisBlock (not a parameter)
        self.register_buffer("resample_filter", ops.setup_filter(resample_filter))
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.register_buffer("noise_const", torch.randn([resolution, resolution]))
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: NoiseMode = "const",
                style_delta: torch.Tensor | None = None, impl: ops.Impl = "export") -> torch.Tensor:
        """x: [B, Cin, H, W], w: [B, w_dim] → [B, Cout, up·H, up·W]."""
        styles = self.affine(w)  # [B, Cin]
        if style_delta is not None:
            styles = styles + style_delta.to(styles.dtype)
        noise = None
        if noise_mode == "random":
            noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device,
                                dtype=x.dtype) * self.noise_strength.to(x.dtype)
        elif noise_mode == "const":
            noise = self.noise_const.to(x.dtype) * self.noise_strength.to(x.dtype)
        x = ops.modulated_conv2d(x, self.weight, styles, noise=noise, up=self.up, padding=self.padding,
                                 resample_filter=self.resample_filter, impl=impl)
        return ops.bias_act(x, self.bias, act="lrelu", gain=self.act_gain, clamp=self.conv_clamp)


class ToRGBLayer(nn.Module):
    """Modulated 1×1 conv to RGB, no demodulation."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, conv_clamp: float | None = None):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.style_name = ""
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, 1, 1]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / math.sqrt(in_channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor, style_delta: torch.Tensor | None = None,
                impl: ops.Impl = "export") -> torch.Tensor:
        styles = self.affine(w)
        if style_delta is not None:
            styles = styles + style_delta.to(styles.dtype)
        x = ops.modulated_conv2d(x, self.weight, styles * self.weight_gain, demodulate=False, impl=impl)
        return ops.bias_act(x, self.bias, clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution: (const | 2× up conv0) → conv1 → ToRGB, skip-summed image."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int,
                 resample_filter: tuple[int, ...], conv_clamp: float | None):
        super().__init__()
        self.in_channels, self.resolution = in_channels, resolution
        self.register_buffer("resample_filter", ops.setup_filter(resample_filter))
        self.num_conv = 0
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=2,
                                        resample_filter=resample_filter, conv_clamp=conv_clamp)
            self.conv0.style_name = f"b{resolution}.conv0"
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution,
                                    resample_filter=resample_filter, conv_clamp=conv_clamp)
        self.conv1.style_name = f"b{resolution}.conv1"
        self.num_conv += 1
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
        self.torgb.style_name = f"b{resolution}.torgb"
        self.num_torgb = 1

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None, ws: torch.Tensor,
                noise_mode: NoiseMode = "const", style_deltas: dict[str, torch.Tensor] | None = None,
                impl: ops.Impl = "export", dtype: torch.dtype = torch.float32):
        """ws: [B, num_conv + num_torgb, w_dim]. Returns (x, img)."""
        sd = style_deltas or {}
        if self.in_channels == 0:
            x = self.const.to(dtype).unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
            x = self.conv1(x, ws[:, 0], noise_mode, sd.get(self.conv1.style_name), impl)
        else:
            x = self.conv0(x.to(dtype), ws[:, 0], noise_mode, sd.get(self.conv0.style_name), impl)
            x = self.conv1(x, ws[:, 1], noise_mode, sd.get(self.conv1.style_name), impl)
        if img is not None:
            img = ops.upsample2d(img, self.resample_filter)
        y = self.torgb(x, ws[:, self.num_conv], sd.get(self.torgb.style_name), impl).to(torch.float32)
        img = img + y if img is not None else y
        return x, img


class SynthesisNetwork(nn.Module):
    """W+ → image. ws: [B, num_ws, w_dim] → [B, img_channels, R, R] (roughly in [-1, 1])."""

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        self.w_dim, self.img_resolution, self.img_channels = cfg.w_dim, cfg.img_resolution, cfg.img_channels
        log2 = int(math.log2(cfg.img_resolution))
        if 2**log2 != cfg.img_resolution or cfg.img_resolution < 8:
            raise ValueError(f"img_resolution must be a power of two ≥ 8, got {cfg.img_resolution}")
        self.block_resolutions = [2**i for i in range(2, log2 + 1)]
        self.channels = cfg.channels()
        self.num_ws = 0
        for res in self.block_resolutions:
            in_channels = self.channels[res // 2] if res > 4 else 0
            block = SynthesisBlock(in_channels, self.channels[res], cfg.w_dim, res, cfg.img_channels,
                                   cfg.resample_filter, cfg.conv_clamp)
            self.num_ws += block.num_conv
            setattr(self, f"b{res}", block)
        self.num_ws += 1  # the last ToRGB
        assert self.num_ws == cfg.num_ws
        self.style_layers: list[StyleLayer] = style_layers(cfg.img_resolution, self.channels)

    def blocks(self):
        for res in self.block_resolutions:
            yield getattr(self, f"b{res}")

    def forward(self, ws: torch.Tensor, noise_mode: NoiseMode = "const",
                style_deltas: dict[str, torch.Tensor] | None = None, impl: ops.Impl = "export") -> torch.Tensor:
        if ws.ndim != 3 or ws.shape[1:] != (self.num_ws, self.w_dim):
            raise ValueError(f"ws must be [B, {self.num_ws}, {self.w_dim}], got {tuple(ws.shape)}")
        dtype = ws.dtype if ws.dtype in (torch.float16, torch.bfloat16) else torch.float32
        x = img = None
        w_idx = 0
        for block in self.blocks():
            block_ws = ws.narrow(1, w_idx, block.num_conv + block.num_torgb)
            x, img = block(x, img, block_ws, noise_mode, style_deltas, impl, dtype)
            w_idx += block.num_conv
        return img  # type: ignore[return-value]

    def styles(self, ws: torch.Tensor) -> dict[str, torch.Tensor]:
        """StyleSpace coordinates: the affine output of every layer, {name: [B, channels]}."""
        out = {}
        for layer in self.style_layers:
            block = getattr(self, layer.name.split(".")[0])
            mod = getattr(block, layer.name.split(".")[1])
            out[layer.name] = mod.affine(ws[:, layer.ws_index])
        return out


class Generator(nn.Module):
    """Mapping + synthesis. ``Generator(cfg)(z)`` → image [B, 3, R, R]."""

    def __init__(self, cfg: GeneratorConfig | None = None):
        super().__init__()
        self.cfg = cfg or GeneratorConfig()
        self.z_dim, self.c_dim, self.w_dim = self.cfg.z_dim, self.cfg.c_dim, self.cfg.w_dim
        self.img_resolution, self.img_channels = self.cfg.img_resolution, self.cfg.img_channels
        self.synthesis = SynthesisNetwork(self.cfg)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(self.cfg)
        self.layout = self.cfg.layout()

    @property
    def w_avg(self) -> torch.Tensor:
        return self.mapping.w_avg

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None, noise_mode: NoiseMode = "const",
                impl: ops.Impl = "export") -> torch.Tensor:
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, noise_mode=noise_mode, impl=impl)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@dataclass
class ParamReport:
    """Parameter counts of a generator config (computed on the meta device: no memory, no time)."""

    mapping: int
    synthesis: int
    total: int


def parameter_report(cfg: GeneratorConfig) -> ParamReport:
    with torch.device("meta"):
        g = Generator(cfg)
    m, s = count_parameters(g.mapping), count_parameters(g.synthesis)
    return ParamReport(mapping=m, synthesis=s, total=m + s)
