"""Training-only networks: the StyleGAN2 discriminator (NVlabs 'resnet' architecture, small configs).

The generator has exactly one definition (models/stylegan2.py); the discriminator is needed only to train it and
lives here. Structure as in stylegan2-ada-pytorch ``training/networks.py``: FromRGB at the top resolution,
residual blocks (two 3×3 convs, the second with 2× blurred downsampling, plus a 1×1 skip, both scaled by √½),
then an epilogue with minibatch standard deviation, a 3×3 conv, a dense layer and the output dense layer.
Equalised learning rate everywhere. Downsampling uses the generator's FIR filter (models/ops.py upfirdn path).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models import ops


class EqConv2d(nn.Module):
    """Equalised-lr conv with optional 2× FIR downsampling before a stride-1 conv. x: [B, Cin, H, W]."""

    def __init__(self, cin: int, cout: int, kernel: int, bias: bool = True, activation: str = "lrelu",
                 down: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self.gain = 1 / math.sqrt(cin * kernel * kernel)
        self.activation, self.down, self.padding = activation, down, kernel // 2
        self.register_buffer("resample_filter", ops.setup_filter((1, 3, 3, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down:
            x = ops.upfirdn2d(x, self.resample_filter, down=2, padding=(1, 1, 1, 1))  # NVlabs downsample2d
        x = F.conv2d(x, self.weight * self.gain, padding=self.padding)
        if self.activation == "lrelu":
            b = self.bias.view(1, -1, 1, 1) if self.bias is not None else 0.0
            return F.leaky_relu(x + b, 0.2) * math.sqrt(2)
        return x + self.bias.view(1, -1, 1, 1) if self.bias is not None else x


class EqLinear(nn.Module):
    def __init__(self, cin: int, cout: int, activation: str = "linear"):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.gain = 1 / math.sqrt(cin)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.weight * self.gain, self.bias)
        return F.leaky_relu(x, 0.2) * math.sqrt(2) if self.activation == "lrelu" else x


class DiscriminatorBlock(nn.Module):
    """Residual block: conv0 3×3, conv1 3×3 with 2× down; skip 1×1 with 2× down; sum · √½."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv0 = EqConv2d(cin, cin, 3)
        self.conv1 = EqConv2d(cin, cout, 3, down=True)
        self.skip = EqConv2d(cin, cout, 1, bias=False, activation="linear", down=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.skip(x)
        x = self.conv1(self.conv0(x))
        return (x + y) * math.sqrt(0.5)


class MinibatchStd(nn.Module):
    """Append the mean standard deviation over groups of ``group`` samples as ``num_channels`` extra maps."""

    def __init__(self, group: int = 4, num_channels: int = 1):
        super().__init__()
        self.group, self.num_channels = group, num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = min(self.group, n)
        while n % g:
            g -= 1
        f = self.num_channels
        y = x.reshape(g, -1, f, c // f, h, w)
        y = (y - y.mean(0)).square().mean(0).add(1e-8).sqrt()
        y = y.mean(dim=[2, 3, 4]).reshape(-1, f, 1, 1).repeat(g, 1, h, w)
        return torch.cat([x, y], dim=1)


class Discriminator(nn.Module):
    """img [B, 3, R, R] in [-1, 1] → logits [B, 1]."""

    def __init__(self, resolution: int, channel_base: int = 2048, channel_max: int = 128, mbstd_group: int = 4):
        super().__init__()
        log2 = int(math.log2(resolution))
        assert 2**log2 == resolution and resolution >= 8, resolution

        def ch(r: int) -> int:
            return min(channel_base // r, channel_max)

        self.resolution = resolution
        self.fromrgb = EqConv2d(3, ch(resolution), 1)
        blocks = []
        r = resolution
        while r > 4:
            blocks.append(DiscriminatorBlock(ch(r), ch(r // 2)))
            r //= 2
        self.blocks = nn.ModuleList(blocks)
        self.mbstd = MinibatchStd(mbstd_group)
        self.conv = EqConv2d(ch(4) + 1, ch(4), 3)
        self.fc = EqLinear(ch(4) * 16, ch(4), activation="lrelu")
        self.out = EqLinear(ch(4), 1)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        r = self.resolution
        if img.ndim != 4 or img.shape[1:] != (3, r, r):
            raise ValueError(f"discriminator input must be [B, 3, {r}, {r}], got {tuple(img.shape)}")
        x = self.fromrgb(img)
        for b in self.blocks:
            x = b(x)
        x = self.conv(self.mbstd(x))
        return self.out(self.fc(x.flatten(1)))
