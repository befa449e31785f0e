"""e4e (encoder4editing) and pSp encoders: an IR-SE-50 backbone with a feature pyramid, regressing W+.

The two released image → W+ encoders that STIT, StylePortraitVideo and most StyleGAN editing work invert with:

* **pSp** (pixel2style2pixel, ``GradualStyleEncoder``): one "map2style" head per W+ entry; entries
  0 … coarse_ind−1 read the coarsest feature map (input/16), entries up to middle_ind−1 the middle one (/8), the
  rest the finest (/4). Output W+ = head_i(features) for every i.
* **e4e** (``Encoder4Editing``): the same backbone and heads, but head 0 predicts one base code w that every
  entry starts from and heads 1 … n−1 predict *offsets*: W+_i = w + Δ_i (W+_0 = w). That keeps codes near W,
  where edits behave.

Both add the generator's average latent to their output when trained with ``start_from_latent_avg`` (the
released FFHQ models are). :class:`StyleEncoder` wraps either one with that ``latent_avg`` so it has FrEN's call
signature — crops [B, 3, S, S] in [-1, 1] (FFHQ-aligned, S = 256 for the released models) → W+
[B, n_styles, w_dim] — and the engines, ONNX export and pipeline use it without special cases.

Backbone (IR-SE-50 of ArcFace, TreB1eN's InsightFace_Pytorch layout): a 3×3 conv + BN + PReLU input layer at full
resolution, then four stages of bottleneck units (3, 4, 14, 3 units of 64, 128, 256, 512 channels); the first
unit of each stage halves the resolution. A unit is

    res = BN → conv3×3 → PReLU → conv3×3 (stride s) → BN → SE      shortcut = x[::s, ::s]  or  conv1×1 (stride s) → BN
    out = res + shortcut

with SE = x · sigmoid(conv1×1(relu(conv1×1(mean_hw(x))))) at reduction 16. The pyramid taps the outputs of
stages 2, 3, 4 (c1 at /4, c2 at /8, c3 at /16); p2 = up(c3) + latlayer1(c2), p1 = up(p2) + latlayer2(c1), with
bilinear upsampling (align_corners=True). A map2style head is log2(side) stride-2 3×3 convs with LeakyReLU(0.01)
down to 1×1, then an equalised-lr linear layer (weight · 1/sqrt(fan_in)).

Parameter names are those of the released checkpoints: :class:`StyleEncoder`'s ``state_dict`` keys are the
checkpoint's ``encoder.*`` keys unchanged (``encoder.input_layer.0.weight``, ``encoder.body.N.res_layer.K.*``,
``encoder.styles.K.convs.J.*``, ``encoder.styles.K.linear.*``, ``encoder.latlayer1.*``, …) plus ``latent_avg``.
Widths, depths and the input size are configurable (small models in tests); the defaults are the released ones.

Model code only: no I/O (``models/legacy.py`` reads the checkpoints).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from models.validation import Bool, FieldError, Int, ListOf, Rule, Str, check_fields

KINDS: tuple[str, ...] = ("e4e", "psp")
KIND_NAMES = {"e4e": "e4e (encoder4editing, Encoder4Editing)", "psp": "pSp (pixel2style2pixel, GradualStyleEncoder)"}


@dataclass
class StyleEncoderConfig:
    """Hyper-parameters of an e4e / pSp encoder. Defaults: the released FFHQ models (IR-SE-50, 256², 18 × 512)."""

    kind: str = "e4e"  # "e4e" (w + Δ_i) or "psp" (one code per W+ entry)
    img_size: int = 256  # input crop side (power of two ≥ 32); heads read maps at /16, /8, /4 of it
    in_channels: int = 3  # input image channels (RGB)
    widths: tuple[int, ...] = (64, 128, 256, 512)  # channels of the four stages; the input layer has widths[0]
    units: tuple[int, ...] = (3, 4, 14, 3)  # bottleneck units per stage (IR-50: 3, 4, 14, 3)
    se: bool = True  # squeeze-excitation in every unit (IR-SE); False = plain IR units
    se_reduction: int = 16  # SE bottleneck = channels // se_reduction
    n_styles: int = 18  # W+ entries (2·log2(R) − 2 of the generator it was trained with)
    w_dim: int = 512  # width of each W+ entry
    coarse_ind: int = 3  # entries < coarse_ind read the /16 map (c3)
    middle_ind: int = 7  # entries < middle_ind read the /8 map (p2); the rest the /4 map (p1)
    start_from_latent_avg: bool = True  # output += latent_avg (pSp/e4e opts.start_from_latent_avg)

    # Type and range of every field, checked before a network is built from bundle.json (released: 256², IR-SE-50).
    FIELDS: ClassVar[dict[str, Rule]] = {
        "kind": Str(choices=("e4e", "psp")),
        "img_size": Int(32, 1024, pow2=True),
        "in_channels": Int(1, 16),
        "widths": ListOf(Int(1, 2048), 4, 4, tuple_=True),
        "units": ListOf(Int(1, 64), 4, 4, tuple_=True),
        "se": Bool(),
        "se_reduction": Int(1, 1024),
        "n_styles": Int(1, 64),
        "w_dim": Int(1, 4096),
        "coarse_ind": Int(1, 64),
        "middle_ind": Int(1, 64),
        "start_from_latent_avg": Bool(),
    }

    def __post_init__(self) -> None:
        self.widths = tuple(int(w) for w in self.widths)
        self.units = tuple(int(u) for u in self.units)
        if self.kind not in KINDS:
            raise ValueError(f"encoder kind {self.kind!r} is not one of {KINDS}")
        if len(self.widths) != 4 or len(self.units) != 4 or min(self.units) < 1 or min(self.widths) < 1:
            raise ValueError(f"widths {self.widths} and units {self.units} must each list 4 stages (units ≥ 1)")
        if self.img_size < 32 or self.img_size & (self.img_size - 1):
            raise ValueError(f"img_size {self.img_size} must be a power of two ≥ 32")
        if self.se and min(self.widths) // self.se_reduction < 1:
            raise ValueError(f"widths {self.widths} are too narrow for SE reduction {self.se_reduction}")
        if not 1 <= self.coarse_ind <= self.middle_ind <= self.n_styles:
            raise ValueError(f"need 1 ≤ coarse_ind {self.coarse_ind} ≤ middle_ind {self.middle_ind} ≤ n_styles "
                             f"{self.n_styles}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["widths"], d["units"] = list(self.widths), list(self.units)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StyleEncoderConfig:
        """From JSON; raises :class:`FieldError` (a ValueError) for an unknown field or a bad value."""
        values = check_fields(cls.FIELDS, d)
        try:
            return cls(**values)
        except ValueError as exc:  # the relations __post_init__ checks
            raise FieldError("", str(exc)) from None

    @property
    def head_sides(self) -> tuple[int, int, int]:
        """Side of the feature map the coarse, middle and fine heads read (16, 32, 64 at 256²)."""
        return self.img_size // 16, self.img_size // 8, self.img_size // 4

    def head_side(self, i: int) -> int:
        coarse, middle, fine = self.head_sides
        return coarse if i < self.coarse_ind else middle if i < self.middle_ind else fine


# ---------------------------------------------------------------------------------------------------- blocks


class SEModule(nn.Module):
    """Squeeze-excitation: x [B, C, H, W] · sigmoid(fc2(relu(fc1(mean_hw(x))))). Keys fc1.weight, fc2.weight."""

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1, bias=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3), keepdim=True))))
        return x * torch.sigmoid(s)


class BottleneckIR(nn.Module):
    """One IR (or IR-SE) unit: x [B, Cin, H, W] → [B, Cout, H/s, W/s].

    Keys: ``res_layer.{0: BN(Cin), 1: conv3×3, 2: PReLU, 3: conv3×3 stride s, 4: BN(Cout)[, 5: SE]}``, and
    ``shortcut_layer.{0: conv1×1 stride s, 1: BN}`` when Cin ≠ Cout (otherwise the shortcut is a stride-s
    subsampling, the official MaxPool2d(1, s), which has no parameters)."""

    def __init__(self, in_channels: int, depth: int, stride: int, se: bool = True, se_reduction: int = 16):
        super().__init__()
        self.stride = stride
        self.shortcut_layer: nn.Module | None = None
        if in_channels != depth:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(in_channels, depth, 1, stride, bias=False),
                                                nn.BatchNorm2d(depth))
        layers: list[nn.Module] = [
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, depth, 3, 1, 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth),
        ]
        if se:
            layers.append(SEModule(depth, se_reduction))
        self.res_layer = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shortcut_layer is not None:
            shortcut = self.shortcut_layer(x)
        else:
            shortcut = x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x
        return self.res_layer(x) + shortcut


class EqualLinear(nn.Module):
    """Equalised-learning-rate linear layer (rosinality ``EqualLinear``, lr_mul 1, no activation):
    y = x @ (weight / sqrt(in))ᵀ + bias. Keys weight [out, in], bias [out]."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim))
        self.bias = nn.Parameter(torch.zeros(out_dim))
        self.scale = 1.0 / math.sqrt(in_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


class GradualStyleBlock(nn.Module):
    """map2style head: features [B, Cin, s, s] → one code [B, out]. log2(s) stride-2 3×3 convs (+ LeakyReLU 0.01)
    take the map to 1×1, then an EqualLinear. Keys convs.{0, 2, 4, …}.weight/bias, linear.weight/bias."""

    def __init__(self, in_channels: int, out_channels: int, side: int):
        super().__init__()
        n = max(1, int(math.log2(side)))
        layers: list[nn.Module] = []
        for k in range(n):
            layers += [nn.Conv2d(in_channels if k == 0 else out_channels, out_channels, 3, 2, 1), nn.LeakyReLU()]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(out_channels, out_channels)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.convs(x)
        return self.linear(x.reshape(x.shape[0], self.out_channels))


def _upsample_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Bilinear (align_corners=True) upsampling of x to y's size, plus y."""
    return F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=True) + y


# --------------------------------------------------------------------------------------------------- encoders


class _PyramidEncoder(nn.Module):
    """IR-SE backbone + FPN laterals + one map2style head per W+ entry (shared by pSp and e4e)."""

    def __init__(self, cfg: StyleEncoderConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.widths
        self.input_layer = nn.Sequential(nn.Conv2d(cfg.in_channels, w[0], 3, 1, 1, bias=False), nn.BatchNorm2d(w[0]),
                                         nn.PReLU(w[0]))
        units: list[nn.Module] = []
        self.stage_ends: list[int] = []  # body index of each stage's last unit (IR-50: 2, 6, 20, 23)
        cin = w[0]
        for depth, n in zip(w, cfg.units):
            for k in range(n):
                units.append(BottleneckIR(cin if k == 0 else depth, depth, 2 if k == 0 else 1, cfg.se,
                                          cfg.se_reduction))
            cin = depth
            self.stage_ends.append(len(units) - 1)
        self.body = nn.Sequential(*units)
        self.styles = nn.ModuleList(GradualStyleBlock(w[3], cfg.w_dim, cfg.head_side(i)) for i in range(cfg.n_styles))
        self.latlayer1 = nn.Conv2d(w[2], w[3], 1)
        self.latlayer2 = nn.Conv2d(w[1], w[3], 1)

    def pyramid(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, C, S, S] → (c1 [B, w1, S/4, S/4], c2 [B, w2, S/8, S/8], c3 [B, w3, S/16, S/16])."""
        x = self.input_layer(x)
        taps: dict[int, torch.Tensor] = {}
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i in self.stage_ends[1:]:
                taps[i] = x
        c1, c2, c3 = (taps[i] for i in self.stage_ends[1:])
        return c1, c2, c3

    def first(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """x [B, C, S, S] → the first ``n`` W+ entries [B, n, w_dim] (pSp / e4e define it)."""
        raise NotImplementedError


class GradualStyleEncoder(_PyramidEncoder):
    """pSp: x [B, C, S, S] → codes [B, n_styles, w_dim], each entry from its own head."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.first(x, self.cfg.n_styles)

    def first(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """The first ``n`` entries only [B, n, w_dim]: the backbone runs whole (the coarse heads read its deepest
        map), but the heads of entries ≥ n are skipped, and so are the lateral convs no remaining head reads."""
        c1, c2, c3 = self.pyramid(x)
        cfg = self.cfg
        codes = [self.styles[i](c3) for i in range(min(n, cfg.coarse_ind))]
        if n > cfg.coarse_ind:
            p2 = _upsample_add(c3, self.latlayer1(c2))
            codes += [self.styles[i](p2) for i in range(cfg.coarse_ind, min(n, cfg.middle_ind))]
            if n > cfg.middle_ind:
                p1 = _upsample_add(p2, self.latlayer2(c1))
                codes += [self.styles[i](p1) for i in range(cfg.middle_ind, min(n, cfg.n_styles))]
        return torch.stack(codes, dim=1)


class Encoder4Editing(_PyramidEncoder):
    """e4e at its inference stage (every delta on): x [B, C, S, S] → [B, n_styles, w_dim] with entry 0 = w (head 0
    on c3) and entry i = w + Δ_i (head i on c3 / p2 / p1 by the same split as pSp). The released checkpoints are
    saved at that stage (training unlocks the deltas progressively; inference uses all of them)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.first(x, self.cfg.n_styles)

    def first(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """The first ``n`` entries only [B, n, w_dim] (head 0 always runs: every entry is w + Δ_i); as pSp's, the
        backbone runs whole and the heads and laterals of entries ≥ n are skipped."""
        c1, c2, c3 = self.pyramid(x)
        cfg = self.cfg
        w = self.styles[0](c3)  # [B, w_dim]
        codes = [w]
        feats = c3
        p2 = None
        for i in range(1, min(n, cfg.n_styles)):
            if i == cfg.coarse_ind:
                p2 = _upsample_add(c3, self.latlayer1(c2))
                feats = p2
            elif i == cfg.middle_ind:
                assert p2 is not None
                feats = _upsample_add(p2, self.latlayer2(c1))
            codes.append(w + self.styles[i](feats))
        return torch.stack(codes, dim=1)


class StyleEncoder(nn.Module):
    """A bundle's e4e / pSp key-frame encoder with FrEN's interface: crops [B, 3, S, S] in [-1, 1] → W+
    [B, n_styles, w_dim] = encoder(crops) (+ latent_avg when ``cfg.start_from_latent_avg``).

    State-dict keys: ``encoder.*`` exactly as in the released checkpoints, plus ``latent_avg`` [n_styles, w_dim]
    (the checkpoint's ``latent_avg``, which the official code keeps outside the state dict)."""

    def __init__(self, cfg: StyleEncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder: _PyramidEncoder = Encoder4Editing(cfg) if cfg.kind == "e4e" else GradualStyleEncoder(cfg)
        self.register_buffer("latent_avg", torch.zeros(cfg.n_styles, cfg.w_dim))

    @property
    def kind(self) -> str:
        return self.cfg.kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, c = self.cfg.img_size, self.cfg.in_channels
        if x.ndim != 4 or x.shape[1:] != (c, s, s):
            raise ValueError(f"encoder input must be [B, {c}, {s}, {s}], got {tuple(x.shape)}")
        codes = self.encoder(x)  # [B, n_styles, w_dim]
        if self.cfg.start_from_latent_avg:
            codes = codes + self.latent_avg.to(codes.dtype)
        return codes

    def forward_coarse(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """The first ``n`` W+ entries [B, n, w_dim] (= ``forward(x)[:, :n]``) at less cost: the heads of entries
        ≥ n and the lateral convs only they read are skipped (the backbone runs whole: head 0 reads its deepest
        map). At the released size, 8 entries (a 1024² generator's coarse layers) cost 40.3 of 72.5 GMAC
        (docs/bench/models-cpu-e4e.md)."""
        s, c = self.cfg.img_size, self.cfg.in_channels
        if x.ndim != 4 or x.shape[1:] != (c, s, s):
            raise ValueError(f"encoder input must be [B, {c}, {s}, {s}], got {tuple(x.shape)}")
        if not 1 <= n <= self.cfg.n_styles:
            raise ValueError(f"n must be in 1…{self.cfg.n_styles}, got {n}")
        codes = self.encoder.first(x, n)
        if self.cfg.start_from_latent_avg:
            codes = codes + self.latent_avg[:n].to(codes.dtype)
        return codes

    def tap_points(self) -> list[tuple[str, nn.Module]]:
        """Sub-modules whose outputs ONNX parity diagnostics compare, in forward order: the input layer, every
        backbone unit, the two lateral convs and every head."""
        e = self.encoder
        taps: list[tuple[str, nn.Module]] = [("encoder.input_layer", e.input_layer)]
        taps += [(f"encoder.body.{i}", u) for i, u in enumerate(e.body)]
        taps += [("encoder.latlayer1", e.latlayer1), ("encoder.latlayer2", e.latlayer2)]
        taps += [(f"encoder.styles.{i}", h) for i, h in enumerate(e.styles)]
        return taps

    def describe(self) -> str:
        """One line for `stylestream info`, e.g. "e4e (encoder4editing, …), IR-SE-50, 256² input, 18 × 512"."""
        c = self.cfg
        depth = 2 * sum(c.units) + 2  # ResNet-style layer count: 2 convs per unit, input conv, output (IR-50)
        backbone = f"IR{'-SE' if c.se else ''}-{depth}"
        if c.widths != (64, 128, 256, 512):
            backbone += f" widths {list(c.widths)}"
        avg = " + latent_avg" if c.start_from_latent_avg else ""
        return f"{KIND_NAMES[c.kind]}, {backbone}, {c.img_size}² input, {c.n_styles} × {c.w_dim}{avg}"


PRESETS: dict[str, StyleEncoderConfig] = {
    "e4e": StyleEncoderConfig(kind="e4e"),  # e4e_ffhq_encode.pt
    "psp": StyleEncoderConfig(kind="psp"),  # psp_ffhq_encode.pt
}
