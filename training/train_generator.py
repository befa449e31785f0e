"""StyleGAN2 adversarial training for small configs (stylegan2-ada-pytorch recipe, condensed).

* non-saturating logistic loss; lazy R1 on reals (every ``r1_every`` steps, γ·interval/2);
* optional lazy path-length regularisation (every ``pl_every`` steps, weight ``pl_weight``, batch shrink 2);
* style mixing (``mixing`` probability); G_ema with a half-life of ``ema_kimg`` thousand images (+ ramp-up);
* optional ADA-style augmentation of everything D sees (x-flip, integer translation, brightness, contrast,
  saturation), its probability ``p`` steered so that E[sign(D(real))] tracks ``ada_target``;
* lazy-regularisation Adam correction (lr·c, β^c with c = interval/(interval+1)) as NVlabs does;
* CPU or CUDA; data parallel through ``torchrun`` (gradients all-reduced by hand as NVlabs does; written to
  the torch.distributed contract, exercised here only with world size 1);
* resumable: ``out/state.pt`` holds G, D, G_ema, optimisers, ADA p, the path-length mean, step and every RNG state,
  so a resumed run continues bit-exactly; sample grids (PNG) of fixed z; G_ema is exported as a bundle.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from models.bundle import Bundle, estimate_w_avg, load_bundle
from models.config import opt
from models.stylegan2 import Generator
from training import common
from training.autoencode import parse_generator
from training.data import load_crops
from training.networks import Discriminator

log = logging.getLogger("stylestream.train")


@dataclass
class GeneratorTrainConfig:
    """StyleGAN2 training."""

    out: str = opt("runs/generator", "run directory: state.pt, samples/, metrics.jsonl, bundle/")
    data: list[str] = opt(default_factory=lambda: ["demo:astronaut?seconds=10&seed=1"], help="data specs (real crops)")
    generator: str = opt("tiny-64", "generator preset or JSON GeneratorConfig (ignored with --init)")
    init: str = opt("", "start G from this bundle (e.g. the autoencoder's); its encoders are carried over")
    steps: int = opt(2000, "total steps (one G and one D update each)", min=0)
    batch: int = opt(8, "images per step (per process)", min=1)
    lr: float = opt(2.5e-3, "Adam lr of G and D (β = 0, 0.99)", min=0.0)
    d_channel_base: int = opt(2048, "discriminator channels = min(base / res, max)", min=1)
    d_channel_max: int = opt(128, "discriminator channel cap", min=1)
    r1_gamma: float = opt(0.1, "R1 weight γ", min=0.0)
    r1_every: int = opt(16, "lazy R1 interval (0: off)", min=0)
    pl_weight: float = opt(0.0, "path-length weight (0: off; NVlabs uses 2)", min=0.0)
    pl_every: int = opt(4, "lazy path-length interval", min=0)
    mixing: float = opt(0.9, "style-mixing probability", min=0.0, max=1.0)
    ema_kimg: float = opt(2.5, "G_ema half-life in thousands of images", min=0.0)
    ema_rampup: float = opt(0.05, "half-life ≤ images seen · this (0: no ramp-up)", min=0.0)
    augment: str = opt("ada", "'none', 'ada' (adaptive p) or 'fixed' (p = ada_p)",
                       choices=("none", "ada", "fixed"))
    ada_p: float = opt(0.0, "initial augmentation probability", min=0.0, max=1.0)
    ada_target: float = opt(0.6, "target E[sign(D(real))]", min=0.0, max=1.0)
    ada_kimg: float = opt(20.0, "images (thousands) for p to move by 1", min=0.001)
    ada_every: int = opt(4, "steps between p updates", min=1)
    freeze_mapping: bool = opt(False, "keep the mapping network fixed (fine-tuning an autoencoder's G)")
    seed: int = opt(0, "all randomness derives from it")
    device: str = opt("cpu", "cpu, cuda, cuda:N")
    threads: int = opt(2, "torch CPU threads (0: torch default)", min=0)
    ckpt_every: int = opt(200, "steps between checkpoints and bundle exports", min=1)
    sample_every: int = opt(200, "steps between sample grids", min=1)
    log_every: int = opt(25, "steps between log lines when not on a terminal", min=1)
    tensorboard: bool = opt(False, "also write TensorBoard scalars (needs the train extra)")
    cache: str = opt("runs/cache", "crop cache folder (empty: none)")
    bundle_name: str = opt("generator", "name written into the exported bundle")


# ------------------------------------------------------------------------------------------ augmentation


def augment(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """ADA-style differentiable augmentation; each op applies per sample with probability ``p``.

    x: [B, 3, H, W] in [-1, 1]. Ops: x-flip, integer translation (±1/8 of the side, reflect padding),
    brightness (±0.2), contrast (×2^N(0, 0.5)), saturation (×2^N(0, 1))."""
    if p <= 0:
        return x
    b, _, h, w = x.shape
    dev = x.device

    def mask() -> torch.Tensor:
        return (torch.rand(b, generator=gen) < p).to(dev)[:, None, None, None]

    x = torch.where(mask(), x.flip(-1), x)
    m = mask()
    tx = (torch.randint(-(w // 8), w // 8 + 1, (b,), generator=gen)).tolist()
    ty = (torch.randint(-(h // 8), h // 8 + 1, (b,), generator=gen)).tolist()
    pad = max(h, w) // 8
    xp = F.pad(x, [pad, pad, pad, pad], mode="reflect")
    shifted = torch.stack([xp[i, :, pad - ty[i]: pad - ty[i] + h, pad - tx[i]: pad - tx[i] + w] for i in range(b)])
    x = torch.where(m, shifted, x)
    bright = (torch.randn(b, generator=gen) * 0.2).to(dev)[:, None, None, None]
    x = torch.where(mask(), x + bright, x)
    mu = x.mean(dim=[1, 2, 3], keepdim=True)
    c = torch.exp2(torch.randn(b, generator=gen) * 0.5).to(dev)[:, None, None, None]
    x = torch.where(mask(), (x - mu) * c + mu, x)
    grey = x.mean(dim=1, keepdim=True)
    s = torch.exp2(torch.randn(b, generator=gen)).to(dev)[:, None, None, None]
    return torch.where(mask(), (x - grey) * s + grey, x)


# ----------------------------------------------------------------------------------------------- training


def _mixed_ws(g: Generator, z: torch.Tensor, mixing: float, gen: torch.Generator) -> torch.Tensor:
    ws = g.mapping(z, update_w_avg=True)
    if mixing > 0:
        cut = int(torch.randint(1, g.num_ws, (), generator=gen))
        if float(torch.rand((), generator=gen)) < mixing:
            z2 = torch.randn(z.shape, generator=gen).to(z.device)
            ws = ws.clone()
            ws[:, cut:] = g.mapping(z2, update_w_avg=False)[:, cut:]
    return ws


class GANTrainer:
    """All the state of one adversarial run; ``step()`` does one G update and one D update (+ lazy terms)."""

    def __init__(self, cfg: GeneratorTrainConfig, device: torch.device, d: common.Dist):
        self.cfg, self.device, self.dist = cfg, device, d
        self.init_bundle: Bundle | None = None
        torch.manual_seed(cfg.seed)
        if cfg.init:
            self.init_bundle = load_bundle(cfg.init)
            g = self.init_bundle.generator
            g.requires_grad_(True)
        else:
            g = Generator(parse_generator(cfg.generator))
            g.mapping.w_avg.copy_(estimate_w_avg(g, seed=cfg.seed))
        self.g = g.to(device).train()
        self.d = Discriminator(g.img_resolution, cfg.d_channel_base, cfg.d_channel_max).to(device).train()
        self.g_ema = copy.deepcopy(self.g).eval().requires_grad_(False)
        common.broadcast_params([self.g, self.d, self.g_ema], d)
        if cfg.freeze_mapping:
            self.g.mapping.requires_grad_(False)
        self.g_params = [p for p in self.g.parameters() if p.requires_grad]

        def adam(params: list[torch.nn.Parameter], every: int) -> torch.optim.Adam:
            c = every / (every + 1) if every > 0 else 1.0
            return torch.optim.Adam(params, lr=cfg.lr * c, betas=(0.0, 0.99**c), eps=1e-8)

        self.opt_g = adam(self.g_params, cfg.pl_every if cfg.pl_weight > 0 else 0)
        self.opt_d = adam(list(self.d.parameters()), cfg.r1_every)
        self.gen = torch.Generator().manual_seed(cfg.seed * 1000 + d.rank)
        self.ada_p = cfg.ada_p if cfg.augment != "none" else 0.0
        self.ada_acc: list[float] = []
        self.pl_mean = torch.zeros((), device=device)
        self.step_idx = 0
        self.elapsed = 0.0

    # -- state
    def state(self) -> dict[str, Any]:
        return {"g": self.g.state_dict(), "d": self.d.state_dict(), "g_ema": self.g_ema.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(), "step": self.step_idx,
                "ada_p": self.ada_p, "ada_acc": list(self.ada_acc), "pl_mean": self.pl_mean.cpu(),
                "rng": common.rng_state({"data": self.gen}), "elapsed_s": self.elapsed, "config": asdict(self.cfg)}

    def load(self, st: dict[str, Any]) -> None:
        self.g.load_state_dict(st["g"])
        self.d.load_state_dict(st["d"])
        self.g_ema.load_state_dict(st["g_ema"])
        self.opt_g.load_state_dict(st["opt_g"])
        self.opt_d.load_state_dict(st["opt_d"])
        self.step_idx, self.ada_p = int(st["step"]), float(st["ada_p"])
        self.ada_acc = [float(v) for v in st["ada_acc"]]
        self.pl_mean = st["pl_mean"].to(self.device)
        self.elapsed = float(st.get("elapsed_s", 0.0))
        common.set_rng_state(st["rng"], {"data": self.gen})

    # -- one step
    def step(self, reals: torch.Tensor) -> dict[str, float]:
        cfg, gen, dev = self.cfg, self.gen, self.device
        b = reals.shape[0]
        out: dict[str, float] = {}
        # G main: non-saturating logistic
        z = torch.randn(b, self.g.z_dim, generator=gen).to(dev)
        ws = _mixed_ws(self.g, z, cfg.mixing, gen)
        fake = self.g.synthesis(ws, noise_mode="random")
        g_loss = F.softplus(-self.d(augment(fake, self.ada_p, gen))).mean()
        self.opt_g.zero_grad(set_to_none=True)
        self.d.requires_grad_(False)
        g_loss.backward()
        out["g_loss"] = g_loss.item()
        # G path length (lazy)
        if cfg.pl_weight > 0 and cfg.pl_every > 0 and self.step_idx % cfg.pl_every == 0:
            pb = max(1, b // 2)
            zp = torch.randn(pb, self.g.z_dim, generator=gen).to(dev)
            wp = _mixed_ws(self.g, zp, cfg.mixing, gen)
            img = self.g.synthesis(wp, noise_mode="random")
            noise = torch.randn(img.shape, generator=gen).to(dev) / math.sqrt(img.shape[2] * img.shape[3])
            (grad,) = torch.autograd.grad((img * noise).sum(), wp, create_graph=True)
            lengths = grad.square().sum(2).mean(1).sqrt()
            self.pl_mean = self.pl_mean.lerp(lengths.mean().detach(), 0.01)
            pl = (lengths - self.pl_mean).square().mean() * cfg.pl_weight * cfg.pl_every
            (pl + img[:, 0, 0, 0].sum() * 0).backward()
            out["pl"] = pl.item()
        self.d.requires_grad_(True)
        common.sync_grads(self.g_params, self.dist)
        self.opt_g.step()
        # D main
        with torch.no_grad():
            z = torch.randn(b, self.g.z_dim, generator=gen).to(dev)
            fake = self.g.synthesis(_mixed_ws(self.g, z, cfg.mixing, gen), noise_mode="random")
        do_r1 = cfg.r1_every > 0 and cfg.r1_gamma > 0 and self.step_idx % cfg.r1_every == 0
        real = reals.detach().requires_grad_(do_r1)
        real_logits = self.d(augment(real, self.ada_p, gen))
        fake_logits = self.d(augment(fake, self.ada_p, gen))
        d_loss = F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()
        if do_r1:
            (grad,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
            r1 = grad.square().sum([1, 2, 3]).mean() * (cfg.r1_gamma / 2) * cfg.r1_every
            d_loss = d_loss + r1
            out["r1"] = r1.item()
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        common.sync_grads(list(self.d.parameters()), self.dist)
        self.opt_d.step()
        out["d_loss"] = d_loss.item()
        out["d_real"] = real_logits.mean().item()
        out["d_fake"] = fake_logits.mean().item()
        # EMA
        seen = (self.step_idx + 1) * b * self.dist.world
        half = cfg.ema_kimg * 1000
        if cfg.ema_rampup > 0:
            half = min(half, seen * cfg.ema_rampup)
        beta = 0.5 ** (b * self.dist.world / max(half, 1e-8))
        with torch.no_grad():
            for pe, p in zip(self.g_ema.parameters(), self.g.parameters(), strict=True):
                pe.copy_(p.lerp(pe, beta))
            for be, bb in zip(self.g_ema.buffers(), self.g.buffers(), strict=True):
                be.copy_(bb)
        # ADA
        if cfg.augment == "ada":
            self.ada_acc.append(float(torch.sign(real_logits.detach()).mean()))
            if (self.step_idx + 1) % cfg.ada_every == 0:
                rt = float(np.mean(self.ada_acc))
                adjust = np.sign(rt - cfg.ada_target) * (b * self.dist.world * cfg.ada_every) / (cfg.ada_kimg * 1000)
                self.ada_p = float(min(max(self.ada_p + adjust, 0.0), 1.0))
                self.ada_acc = []
        out["ada_p"] = self.ada_p
        self.step_idx += 1
        return out


def train_generator(cfg: GeneratorTrainConfig, command: str = "") -> Path:
    """Run (or resume) adversarial training; returns the exported bundle path."""
    common.set_threads(cfg.threads)
    d, device = common.setup_distributed(cfg.device)
    run = Path(cfg.out)
    if d.main:
        common.write_config(run, cfg)
    tr = GANTrainer(cfg, device, d)
    data = load_crops(cfg.data, tr.g.img_resolution, cfg.cache or None)
    st = common.load_state(run)
    if st is not None:
        tr.load(st)
        if d.main:
            log.info("resumed %s at step %d", run, tr.step_idx)
    zs = torch.randn(16, tr.g.z_dim, generator=torch.Generator().manual_seed(cfg.seed + 123)).to(device)
    prog = common.Progress(run, cfg.steps, tr.step_idx, enabled=d.main, tensorboard=cfg.tensorboard,
                           log_every=cfg.log_every, desc="generator")
    stop = common.StopOnSigterm()
    t0 = time.monotonic() - tr.elapsed

    def checkpoint() -> None:
        tr.elapsed = time.monotonic() - t0
        if d.main:
            common.save_state(run, tr.state())

    def export() -> Path:
        prov = {"made_by": "training.train_generator", "command": command, "steps": tr.step_idx,
                "train_wall_s": round(time.monotonic() - t0, 1), "data": cfg.data, "config": asdict(cfg)}
        ib = tr.init_bundle
        g_out = copy.deepcopy(tr.g_ema).cpu()
        # The init bundle's encoders are carried over as a starting point, but they were trained for the old G:
        # marked untrained until `stylestream train encoder` has run on this bundle.
        b = Bundle(generator=g_out, fren=ib.fren if ib else None, vien=ib.vien if ib else None,
                   trained={"generator": True, "fren": False, "vien": False},
                   provenance={**(ib.provenance if ib else {}), "generator_training": prov}, name=cfg.bundle_name)
        return b.save(run / "bundle")

    try:
        while tr.step_idx < cfg.steps and not stop:
            idx = data.sample(cfg.batch, tr.gen)
            scalars = tr.step(data.float_images(idx).to(device))
            prog.update(tr.step_idx, scalars)
            if d.main and (tr.step_idx % cfg.sample_every == 0 or tr.step_idx == cfg.steps):
                with torch.no_grad():
                    imgs = tr.g_ema(zs)
                common.save_grid(run / "samples" / f"fakes-{tr.step_idx:06d}.png", [imgs[:8], imgs[8:]], scale=2)
            if tr.step_idx % cfg.ckpt_every == 0:
                checkpoint()
                if d.main:
                    export()
    finally:
        stop.restore()
        checkpoint()
        prog.close()
    out = export() if d.main else run / "bundle"
    common.cleanup_distributed()
    return out


def run(cfg: GeneratorTrainConfig, command: str = "") -> Path:
    """Entry point of ``stylestream train generator``."""
    return train_generator(cfg, command)
