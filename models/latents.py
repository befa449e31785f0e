"""The W+ layout of a StyleGAN2 skip generator, its coarse/fine split and the StyleSpace view.

W+ index ``i`` drives these synthesis layers (NVlabs ordering, ToRGB shares its index with the next conv0):

    i = 0: b4.conv1          i = 1: b4.torgb, b8.conv0     i = 2: b8.conv1
    i = 3: b8.torgb, b16.conv0   ...                       i = num_ws-1: b{R}.torgb

so ``num_ws = 2·log2(R) − 2`` (18 at 1024², 14 at 256², 10 at 64²). Video2StyleGAN calls the layers that drive
resolutions ≤ 32×32 *coarse* (pose, expression: inferred per frame by ViEN) and the rest *fine* (appearance:
copied from the previous frame). With the split at 32 that is ``num_ws(32) = 8`` coarse layers.

StyleSpace (Wu et al.): the per-layer affine outputs ``s = A_l(w_i)`` of every conv and ToRGB layer. The
generator accepts additive S-space deltas keyed by layer name (see ``Generator.synthesis(..., style_deltas=)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def num_ws_for(resolution: int) -> int:
    """Number of W+ entries of a skip generator at ``resolution`` (a power of two ≥ 4)."""
    log2 = int(math.log2(resolution))
    if 2**log2 != resolution or resolution < 4:
        raise ValueError(f"resolution must be a power of two ≥ 4, got {resolution}")
    return 2 * log2 - 2


@dataclass(frozen=True)
class StyleLayer:
    """One StyleSpace layer: which W+ entry feeds its affine and how many channels it modulates."""

    name: str  # synthesis sub-module path, e.g. "b16.conv0" or "b16.torgb"
    ws_index: int  # W+ entry that feeds the affine
    resolution: int  # block resolution
    channels: int  # affine output size (= the layer's input channels)
    kind: str  # "conv" or "torgb"


@dataclass(frozen=True)
class WPlusLayout:
    """W+ geometry of one generator."""

    resolution: int  # generator output resolution
    w_dim: int = 512  # width of each W entry
    coarse_resolution: int = 32  # layers driving resolutions ≤ this are coarse (ViEN); the rest fine (reused)

    @property
    def num_ws(self) -> int:
        return num_ws_for(self.resolution)

    @property
    def num_coarse(self) -> int:
        """Entries 0 … num_coarse−1 are coarse. Capped so that at least one fine entry remains."""
        return min(num_ws_for(max(self.coarse_resolution, 4)), self.num_ws - 1)

    @property
    def num_fine(self) -> int:
        return self.num_ws - self.num_coarse

    def split(self, ws):
        """[..., num_ws, w_dim] → (coarse [..., num_coarse, w_dim], fine [..., num_fine, w_dim])."""
        return ws[..., : self.num_coarse, :], ws[..., self.num_coarse :, :]

    def to_dict(self) -> dict:
        return {"resolution": self.resolution, "w_dim": self.w_dim, "coarse_resolution": self.coarse_resolution}


def style_layers(resolution: int, channels: dict[int, int]) -> list[StyleLayer]:
    """All StyleSpace layers of a skip generator, in forward order. ``channels[res]`` = block output channels."""
    out: list[StyleLayer] = []
    idx = 0
    res = 4
    while res <= resolution:
        if res == 4:
            out.append(StyleLayer("b4.conv1", 0, 4, channels[4], "conv"))
            out.append(StyleLayer("b4.torgb", 1, 4, channels[4], "torgb"))
            idx = 1
        else:
            out.append(StyleLayer(f"b{res}.conv0", idx, res, channels[res // 2], "conv"))
            out.append(StyleLayer(f"b{res}.conv1", idx + 1, res, channels[res], "conv"))
            out.append(StyleLayer(f"b{res}.torgb", idx + 2, res, channels[res], "torgb"))
            idx += 2
        res *= 2
    return out
