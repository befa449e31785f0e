"""Video adaptation (StylePortraitVideo §3.3, DESIGN §7): fine-tune the generator on one clip's frames.

Every aligned frame is inverted with the bundle's encoders (FrEN on the first frame, then ViEN with the previous
frame's fine layers — the live pipeline's policy without key-frame refreshes), and the generator's *synthesis*
network is fine-tuned so that ``G(w_f)`` reproduces frame ``f``: perceptual distance (LPIPS when backbone weights
are given, else the weights-free :class:`training.losses.RandomConvPerceptual`) + L2, Adam lr 1e-3, ~1000
iterations. The mapping network and the latents are not touched, so the bundle's W / W+ edit directions keep
their meaning (how well they still work is measured by :func:`edit_response`, see docs/offline.md).

Continual adaptation: adapt a new clip of the same person starting from an adapted bundle with a few iterations
(``AdaptConfig(iters=10..50)``). The result is saved as an ordinary bundle (:meth:`models.bundle.Bundle.save`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from models.bundle import derived_name
from models.config import opt
from models.editing import EditStack
from realtime.vision.topology import LIPS_INNER_LOOP
from training.losses import LPIPSLoss, RandomConvPerceptual
from training.measures import face_measures

Progress = Callable[[int, int, float], None]  # (iteration, total, loss)


@dataclass
class AdaptConfig:
    """Video adaptation hyper-parameters (paper defaults; tests use a handful of iterations)."""

    iters: int = opt(1000, "Adam steps", min=0)
    lr: float = opt(1e-3, "Adam learning rate (paper: 1e-3)", min=0.0)
    batch: int = opt(4, "frames per step", min=1)
    l2_weight: float = opt(1.0, "weight of the pixel L2 term", min=0.0)
    perceptual_weight: float = opt(1.0, "weight of the perceptual term (LPIPS or the random-conv stand-in)", min=0.0)
    lpips_backbone: str | None = opt(None, "LPIPS backbone weights (.pth); None: RandomConvPerceptual")
    lpips_lin: str | None = opt(None, "LPIPS linear-layer weights (.pth)")
    seed: int = opt(0, "all randomness derives from it")


def perceptual_loss(cfg: AdaptConfig) -> torch.nn.Module:
    """LPIPS when weights are supplied, otherwise the weights-free perceptual stand-in."""
    if cfg.lpips_backbone:
        return LPIPSLoss("vgg", backbone=cfg.lpips_backbone, lin=cfg.lpips_lin)
    return RandomConvPerceptual()


@torch.no_grad()
def invert_crops(bundle: Any, crops: torch.Tensor, batch: int = 32) -> torch.Tensor:
    """Aligned crops [N, 3, S, S] in [-1, 1] → W+ [N, num_ws, w_dim]: FrEN on frame 0, ViEN (previous frame's
    fine layers reused) after it; FrEN on every frame when the bundle has no ViEN."""
    if bundle.fren is None:
        raise ValueError("the bundle has no frame encoder (FrEN)")
    fren, vien = bundle.fren.eval(), bundle.vien
    if vien is None or crops.shape[0] == 1:
        return torch.cat([fren(crops[k:k + batch]) for k in range(0, crops.shape[0], batch)]).float()
    c = bundle.generator.layout.num_coarse
    vien.eval()
    out = [fren(crops[:1]).float()]
    for i in range(1, crops.shape[0]):
        prev = out[-1]
        w = vien(crops[i:i + 1], prev).float()
        out.append(torch.cat([w[:, :c], prev[:, c:]], dim=1))
    return torch.cat(out)


def resize_to(x: torch.Tensor, res: int) -> torch.Tensor:
    if x.shape[-1] == res:
        return x
    return F.interpolate(x, size=(res, res), mode="bilinear", align_corners=False, antialias=True)


def adapt_generator(bundle: Any, crops: torch.Tensor, ws: torch.Tensor, cfg: AdaptConfig | None = None,
                    progress: Progress | None = None) -> dict[str, Any]:
    """Fine-tune ``bundle.generator.synthesis`` in place on (crop, latent) pairs. Returns a summary
    (first / last mean loss, seconds, iterations)."""
    cfg = cfg or AdaptConfig()
    g = bundle.generator
    res = g.img_resolution
    dev = next(g.synthesis.parameters()).device
    target = resize_to(crops.float().to(dev), res)
    ws = ws.detach().float().to(dev)
    perc = perceptual_loss(cfg).to(dev)
    params = [p for p in g.synthesis.parameters() if p.is_floating_point()]
    for p in params:
        p.requires_grad_(True)
    optim = torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.999))
    gen = torch.Generator().manual_seed(cfg.seed)
    n = ws.shape[0]
    losses: list[float] = []
    t0 = time.perf_counter()
    g.train()
    for it in range(cfg.iters):
        idx = torch.randperm(n, generator=gen)[: min(cfg.batch, n)]
        img = g.synthesis(ws[idx], noise_mode="const")
        x = target[idx]
        loss = cfg.l2_weight * F.mse_loss(img, x) + cfg.perceptual_weight * perc(img, x)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(it + 1, cfg.iters, losses[-1])
    g.eval()
    g.requires_grad_(False)
    k = max(1, min(20, len(losses) // 5))
    return {"iters": cfg.iters, "seconds": time.perf_counter() - t0,
            "loss_first": float(sum(losses[:k]) / k) if losses else math.nan,
            "loss_last": float(sum(losses[-k:]) / k) if losses else math.nan, "config": asdict(cfg)}


@torch.no_grad()
def reconstruction(bundle: Any, crops: torch.Tensor, ws: torch.Tensor, mesh: Any | None = None,
                   batch: int = 32) -> dict[str, float]:
    """Mean PSNR (dB, [-1, 1] images) of G(ws) against the crops, and — with a face mesh — the mean landmark
    distance (crop px) between the render's and the crop's face-mesh landmarks (all 468 and inner lips)."""
    g = bundle.generator.eval()
    res = g.img_resolution
    dev = next(g.synthesis.parameters()).device
    target = resize_to(crops.float().to(dev), res)
    ws = ws.to(dev)
    psnrs, lm_all, lm_lip = [], [], []
    for k in range(0, ws.shape[0], batch):
        img = g.synthesis(ws[k:k + batch], noise_mode="const").clamp(-1, 1)
        x = target[k:k + batch]
        mse = ((img - x) ** 2).flatten(1).mean(1).clamp_min(1e-10)
        psnrs.append(10 * torch.log10(4.0 / mse))
        if mesh is not None:
            a, b = mesh(img)[..., :2], mesh(x)[..., :2]
            d = (a - b).norm(dim=-1)
            lm_all.append(d.mean(1))
            lm_lip.append(d[:, list(LIPS_INNER_LOOP)].mean(1))
    out = {"psnr": float(torch.cat(psnrs).mean())}
    if lm_all:
        out["landmark_px"] = float(torch.cat(lm_all).mean())
        out["inner_lip_px"] = float(torch.cat(lm_lip).mean())
    return out


@torch.no_grad()
def edit_response(bundle: Any, ws: torch.Tensor, mesh: Any, name: str = "smile", strength: float = 1.0,
                  measure: str = "smile") -> float:
    """How much edit ``name`` at ``strength`` moves face-mesh measure ``measure`` per unit strength on these
    latents (mean over frames): the check that the latent space stays editable after adaptation."""
    stack = EditStack.from_bundle(bundle)
    if name not in stack.specs:
        return math.nan
    g = bundle.generator.eval()
    base = face_measures(mesh(g.synthesis(ws, noise_mode="const").clamp(-1, 1)))[measure]
    stack.set_strengths({name: strength}, reset=True)
    we, sd = stack.apply(ws)
    moved = face_measures(mesh(g.synthesis(we, noise_mode="const", style_deltas=sd).clamp(-1, 1)))[measure]
    return float((moved - base).mean() / strength)


def save_adapted(bundle: Any, path: str | Path, summary: dict[str, Any], source: str = "") -> Path:
    """Save the adapted bundle (generator fine-tuned, encoders and edits unchanged) under a name of its own
    (``default+adapted-2026-12-01T08:00Z``: it is no longer the bundle it came from)."""
    bundle.provenance = {**bundle.provenance,
                         "adapted": {"from": bundle.name, "source": source, "iters": summary.get("iters"),
                                     "loss_first": summary.get("loss_first"), "loss_last": summary.get("loss_last"),
                                     "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}}
    bundle.name = derived_name(bundle.name, "adapted")
    return bundle.save(path)
