"""Video2StyleGAN encoders on one ViT backbone (Yu et al., §3.2).

* :class:`FrameEncoder` (FrEN): aligned crop → all W+ entries, regressed as offsets from the generator's
  average w through an MLP head on the class token.
* :class:`VideoEncoder` (ViEN): aligned crop + the previous frame's W+ → only the *coarse* entries. The previous
  W+ enters as one extra token made by an MLP projector; the *fine* entries are copied from the previous W+,
  which removes appearance jitter between frames.

Both take crops in [-1, 1] of exactly ``ViTConfig.img_size`` pixels (the bundle's preprocessing contract).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from models.latents import WPlusLayout
from models.validation import FieldError, Float, Int, Rule, check_fields


@dataclass
class ViTConfig:
    """ViT backbone hyper-parameters."""

    img_size: int = 256  # input crop size (must be a multiple of patch_size)
    patch_size: int = 16  # square patch side
    dim: int = 768  # token width
    depth: int = 12  # transformer blocks
    heads: int = 12  # attention heads (dim % heads == 0)
    mlp_ratio: float = 4.0  # hidden width of each block's MLP = dim · mlp_ratio
    head_hidden: int = 0  # hidden width of the W+ regression head (0 = dim)

    # Type and range of every field, checked before a network is built from bundle.json (ViT-B/16: 768 / 12 / 12).
    FIELDS: ClassVar[dict[str, Rule]] = {
        "img_size": Int(1, 4096),
        "patch_size": Int(1, 1024),
        "dim": Int(1, 4096),
        "depth": Int(1, 64),
        "heads": Int(1, 256),
        "mlp_ratio": Float(0, 64, lo_open=True),
        "head_hidden": Int(0, 16384),
    }
    MAX_PATCHES: ClassVar[int] = 4096  # tokens per crop (attention cost grows with the square): 1024² at /16

    def validate(self) -> ViTConfig:
        """Check every field and the relations between them; raise :class:`FieldError` naming the field."""
        check_fields(self.FIELDS, self.to_dict())
        if self.img_size % self.patch_size:
            raise FieldError("img_size", f"must be a multiple of patch_size ({self.patch_size}), got {self.img_size}")
        if self.num_patches > self.MAX_PATCHES:
            raise FieldError("patch_size", f"{self.patch_size} gives {self.num_patches} patches of a {self.img_size}² "
                                           f"crop (the limit is {self.MAX_PATCHES}); use larger patches")
        if self.dim % self.heads:
            raise FieldError("dim", f"must be divisible by heads ({self.heads}), got {self.dim}")
        if int(self.dim * self.mlp_ratio) < 1:
            raise FieldError("mlp_ratio", f"dim × mlp_ratio must be at least 1, got {self.dim} × {self.mlp_ratio:g}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ViTConfig:
        """From JSON; raises :class:`FieldError` (a ValueError) for an unknown field or a bad value."""
        return cls(**check_fields(cls.FIELDS, d)).validate()

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2


ENCODER_PRESETS: dict[str, ViTConfig] = {
    "vit-b16": ViTConfig(img_size=256, dim=768, depth=12, heads=12),  # ViT-B/16 at 256²
    "vit-s16": ViTConfig(img_size=256, dim=384, depth=12, heads=6),  # ViT-S/16 at 256²
    "small": ViTConfig(img_size=128, dim=256, depth=6, heads=4),
    "tiny": ViTConfig(img_size=64, dim=128, depth=4, heads=4, mlp_ratio=2.0),
}


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # [B, heads, N, d/heads]
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTBackbone(nn.Module):
    """Patch embedding + class token + positions + blocks. Optional extra tokens are appended after the patches.

    x: [B, 3, S, S] in [-1, 1]; extra: [B, E, dim] or None → class-token feature [B, dim].
    """

    def __init__(self, cfg: ViTConfig, num_extra_tokens: int = 0):
        super().__init__()
        if cfg.img_size % cfg.patch_size:
            raise ValueError(f"img_size {cfg.img_size} is not a multiple of patch_size {cfg.patch_size}")
        self.cfg = cfg
        self.patch_embed = nn.Conv2d(3, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + cfg.num_patches + num_extra_tokens, cfg.dim) * 0.02)
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.num_extra_tokens = num_extra_tokens

    def forward(self, x: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        s = self.cfg.img_size
        if x.ndim != 4 or x.shape[1:] != (3, s, s):
            raise ValueError(f"encoder input must be [B, 3, {s}, {s}], got {tuple(x.shape)}")
        t = self.patch_embed(x).flatten(2).transpose(1, 2)  # [B, P, dim]
        parts = [self.cls_token.expand(x.shape[0], -1, -1).to(t.dtype), t]
        if self.num_extra_tokens:
            assert extra is not None and extra.shape[1] == self.num_extra_tokens
            parts.append(extra.to(t.dtype))
        t = torch.cat(parts, dim=1) + self.pos_embed.to(t.dtype)
        for blk in self.blocks:
            t = blk(t)
        return self.norm(t[:, 0])


def _head(dim: int, hidden: int, out: int) -> nn.Sequential:
    head = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, out))
    nn.init.zeros_(head[2].weight)  # an untrained encoder outputs w_avg (a valid, average face)
    nn.init.zeros_(head[2].bias)
    return head


class FrameEncoder(nn.Module):
    """FrEN: crop [B, 3, S, S] → W+ [B, num_ws, w_dim] = w_avg + head(cls)."""

    def __init__(self, cfg: ViTConfig, layout: WPlusLayout):
        super().__init__()
        self.cfg, self.layout = cfg, layout
        self.backbone = ViTBackbone(cfg)
        self.head = _head(cfg.dim, cfg.head_hidden or cfg.dim, layout.num_ws * layout.w_dim)
        self.register_buffer("w_avg", torch.zeros(layout.w_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.backbone(x)
        out = self.head(f).reshape(-1, self.layout.num_ws, self.layout.w_dim)
        return out + self.w_avg.to(out.dtype)

    def forward_coarse(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """The first ``n`` W+ entries [B, n, w_dim] (= ``forward(x)[:, :n]`` up to rounding). Only the output
        rows of the last head layer are dropped: the backbone is the whole cost, so this saves ~nothing (an
        e4e / pSp key encoder saves its fine heads, :meth:`models.e4e.StyleEncoder.forward_coarse`)."""
        num_ws, wd = self.layout.num_ws, self.layout.w_dim
        if not 1 <= n <= num_ws:
            raise ValueError(f"n must be in 1…{num_ws}, got {n}")
        h = self.head[1](self.head[0](self.backbone(x)))
        last = self.head[2]
        out = F.linear(h, last.weight[: n * wd], last.bias[: n * wd]).reshape(-1, n, wd)
        return out + self.w_avg.to(out.dtype)


class VideoEncoder(nn.Module):
    """ViEN: (crop [B, 3, S, S], previous W+ [B, num_ws, w_dim]) → W+ [B, num_ws, w_dim].

    Coarse entries (0 … num_coarse−1) are predicted; fine entries are the previous frame's, unchanged.
    """

    def __init__(self, cfg: ViTConfig, layout: WPlusLayout):
        super().__init__()
        self.cfg, self.layout = cfg, layout
        self.backbone = ViTBackbone(cfg, num_extra_tokens=1)
        hidden = cfg.head_hidden or cfg.dim
        self.projector = nn.Sequential(nn.Linear(layout.num_ws * layout.w_dim, hidden), nn.GELU(),
                                       nn.Linear(hidden, cfg.dim))
        self.head = _head(cfg.dim, hidden, layout.num_coarse * layout.w_dim)
        self.register_buffer("w_avg", torch.zeros(layout.w_dim))

    def forward(self, x: torch.Tensor, prev_ws: torch.Tensor) -> torch.Tensor:
        n, c, wd = self.layout.num_ws, self.layout.num_coarse, self.layout.w_dim
        if prev_ws.ndim != 3 or prev_ws.shape[1:] != (n, wd) or prev_ws.shape[0] != x.shape[0]:
            raise ValueError(f"prev_ws must be [{x.shape[0]}, {n}, {wd}], got {tuple(prev_ws.shape)}")
        token = self.projector((prev_ws - self.w_avg.to(prev_ws.dtype)).flatten(1).to(x.dtype)).unsqueeze(1)
        f = self.backbone(x, token)
        coarse = self.head(f).reshape(-1, c, wd) + self.w_avg.to(f.dtype)
        return torch.cat([coarse.to(prev_ws.dtype), prev_ws[:, c:]], dim=1)

    def init_from_frame_encoder(self, fren: FrameEncoder) -> None:
        """Start ViEN from a trained FrEN (backbone and the coarse part of the head), as the paper does."""
        sd = {k: v for k, v in fren.backbone.state_dict().items() if k != "pos_embed"}
        self.backbone.load_state_dict(sd, strict=False)
        with torch.no_grad():
            p = fren.backbone.pos_embed
            self.backbone.pos_embed[:, : p.shape[1]].copy_(p)
            self.head[0].load_state_dict(fren.head[0].state_dict())
            rows = self.layout.num_coarse * self.layout.w_dim
            self.head[2].weight.copy_(fren.head[2].weight[:rows])
            self.head[2].bias.copy_(fren.head[2].bias[:rows])
            self.w_avg.copy_(fren.w_avg)
