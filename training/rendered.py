"""Video the generator renders itself: smooth W+ sequences with known codes, for training a ViEN without a data set.

A sequence starts from a base code w (a mapping sample of a generator with a trained mapping network, e.g. the
official FFHQ one — or, for a generator whose mapping network is untrained like the default bundle's, a key-frame
encoding of a real or synthetic crop) and moves only its *coarse* entries, the ones ViEN predicts, while the fine
entries stay w's:

* ``edits`` motion: along the bundle's pose / expression W directions (yaw, pitch, smile, mouth_open, eyes_open,
  brow_raise — fitted by ``stylestream edits fit``, or InterFaceGAN boundaries), each with its own smooth sinusoid
  ``a_k(t) = A_k · sin(2π f_k t + φ_k)``, amplitude A_k ≤ ``scale`` in the edit's units (one standard deviation of
  its face-mesh measure), 0.3–1.5 cycles per second at 30 fps;
* ``interpolate`` motion: the coarse entries travel back and forth towards another base code's (eased), as
  :func:`training.data.smooth_ws_trajectories` does.

Frames are ``G.synthesis(W+_t)``, resized to the key-frame encoder's crop size; a frame generated from an
FFHQ-aligned generator is an FFHQ-aligned crop, so nothing needs tracking. The true W+ of every frame is known:
the ViEN's coarse output has a latent target, and held-out sequences measure PSNR, TC and the coarse-code error
against the truth.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from models.editing import EditStack
from models.errors import UserError
from training.data import sample_ws

MOTION_EDITS: tuple[str, ...] = ("yaw", "pitch", "smile", "mouth_open", "eyes_open", "brow_raise")
MOTIONS: tuple[str, ...] = ("auto", "edits", "interpolate")


def edit_directions(bundle, names: Sequence[str] = MOTION_EDITS) -> dict[str, torch.Tensor]:
    """name → ΔW+ [num_ws, w_dim] of strength 1 for the bundle's W-direction edits among ``names``, restricted to
    the coarse entries (the motion a ViEN has to follow; fine entries stay fixed)."""
    nc = bundle.generator.layout.num_coarse
    g = bundle.generator
    try:
        stack = EditStack.from_bundle(bundle)
    except UserError:
        return {}
    zero = torch.zeros(1, g.num_ws, g.w_dim)
    out = {}
    for name in names:
        spec = stack.specs.get(name)
        if spec is None or spec.kind != "w_direction":
            continue
        d = stack.edit_delta(name, 1.0, zero)
        if d is None:
            continue
        d = d[0].clone()
        d[nc:] = 0
        if float(d.abs().max()) > 0:
            out[name] = d
    return out


class RenderedSequences:
    """Sequences of (W+, frame) the generator renders (module docstring).

    ``base(n, gen)`` → n base codes [n, num_ws, w_dim] (the caller's source: mapping samples or key encodings);
    ``directions``: coarse-only ΔW+ of the motion edits (empty → interpolate motion)."""

    def __init__(self, g: torch.nn.Module, crop_size: int, base: Callable[[int, torch.Generator], torch.Tensor],
                 directions: dict[str, torch.Tensor] | None = None, motion: str = "auto", scale: float = 1.5,
                 fps: float = 30.0):
        if motion not in MOTIONS:
            raise UserError(f"unknown motion {motion!r} ({', '.join(MOTIONS)})")
        directions = directions or {}
        if motion == "edits" and not directions:
            raise UserError("--motion edits: the bundle has none of the pose/expression W directions "
                            f"({', '.join(MOTION_EDITS)}); fit them with `stylestream edits fit BUNDLE` or use "
                            "--motion interpolate")
        self.g, self.crop_size, self.base, self.scale, self.fps = g, crop_size, base, scale, fps
        self.motion = "edits" if motion == "auto" and directions else "interpolate" if motion == "auto" else motion
        self.names = sorted(directions)
        self.dirs = torch.stack([directions[k] for k in self.names]) if self.names else None  # [K, num_ws, w_dim]
        self.num_coarse = g.layout.num_coarse

    @property
    def device(self) -> torch.device:
        return self.g.mapping.w_avg.device

    def codes(self, n: int, times: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """W+ of n sequences at frame times ``times`` [T] (float, frames) → [n, T, num_ws, w_dim]."""
        w0 = self.base(n, gen).to(self.device)  # [n, num_ws, w_dim]
        t = times.to(torch.float32)[None, :]  # [1, T]
        if self.motion == "edits":
            assert self.dirs is not None
            k = self.dirs.shape[0]
            amp = torch.rand(n, k, generator=gen) * self.scale
            freq = (0.3 + 1.2 * torch.rand(n, k, generator=gen)) / self.fps  # cycles per frame
            phase = torch.rand(n, k, generator=gen) * 2 * math.pi
            a = amp[..., None] * torch.sin(2 * math.pi * freq[..., None] * t + phase[..., None])  # [n, K, T]
            delta = torch.einsum("nkt,kcd->ntcd", a.to(self.device), self.dirs.to(self.device))
            return w0[:, None] + delta
        w1 = self.base(n, gen).to(self.device)
        c = self.num_coarse
        start = torch.rand(n, 1, generator=gen)
        step = (0.3 + 1.2 * torch.rand(n, 1, generator=gen)) / self.fps  # half-cycles per frame
        u = (0.5 - 0.5 * torch.cos(math.pi * ((start + step * t) % 2.0))).to(self.device)[..., None, None]
        coarse = w0[:, None, :c] + (w1[:, None, :c] - w0[:, None, :c]) * u  # [n, T, c, w_dim]
        return torch.cat([coarse, w0[:, None, c:].expand(-1, t.shape[1], -1, -1)], dim=2)

    @torch.no_grad()
    def render(self, ws: torch.Tensor) -> torch.Tensor:
        """ws [..., num_ws, w_dim] → frames [..., 3, S, S] in [-1, 1] (constant noise; area-resized to the crop)."""
        lead = ws.shape[:-2]
        img = self.g.synthesis(ws.reshape(-1, *ws.shape[-2:]), noise_mode="const").clamp(-1, 1)
        if img.shape[-1] != self.crop_size:
            img = F.interpolate(img, size=(self.crop_size, self.crop_size), mode="area")
        return img.reshape(*lead, *img.shape[1:])

    def pairs(self, n: int, gen: torch.Generator, gap: float = 1.0, horizon: float = 300.0
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """n frame pairs ``gap`` frames apart at random times: W+ [n, 2, num_ws, w_dim], frames [n, 2, 3, S, S]."""
        t0 = float(torch.rand((), generator=gen)) * horizon
        ws = self.codes(n, torch.tensor([t0, t0 + gap]), gen)
        return ws, self.render(ws)

    def sequences(self, n: int, frames: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """n sequences of ``frames`` frames: W+ [n, T, num_ws, w_dim] and frames [n, T, 3, S, S]."""
        ws = self.codes(n, torch.arange(frames, dtype=torch.float32), gen)
        return ws, self.render(ws)


def mapping_base(g: torch.nn.Module, truncation_psi: float = 0.7) -> Callable[[int, torch.Generator], torch.Tensor]:
    """Base codes from the mapping network (a generator trained with it: the official FFHQ generators)."""
    return lambda n, gen: sample_ws(g, n, gen, truncation_psi=truncation_psi)


def pool_base(pool: torch.Tensor, mix: bool = True) -> Callable[[int, torch.Generator], torch.Tensor]:
    """Base codes from a fixed pool [N, num_ws, w_dim] (key encodings of crops): a random point between two pool
    codes (``mix``; a few clips' codes are too few — a ViEN trained on one clip's failed on another's), else a pool
    code itself."""
    if pool.ndim != 3 or pool.shape[0] == 0:
        raise UserError("no base codes: the data produced no encodable crops")

    def base(n: int, gen: torch.Generator) -> torch.Tensor:
        a = pool[torch.randint(0, pool.shape[0], (n,), generator=gen)]
        if not mix:
            return a
        b = pool[torch.randint(0, pool.shape[0], (n,), generator=gen)]
        return torch.lerp(a, b, torch.rand(n, 1, 1, generator=gen).to(a.device))

    return base
