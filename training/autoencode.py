"""Joint generator + FrEN training as an autoencoder (the CPU route to a default bundle).

crop x ──FrEN──▶ W+ ──G.synthesis──▶ x̂,   loss = λ2·L2 + λs·(1−SSIM) + λp·perceptual (+ λf·landmark)
                                                 (+ λc·latent cycle on mapping samples) (+ λa·adversarial)

Adversarial training of a StyleGAN2 from scratch costs hours on a 2-core CPU; reconstruction losses on aligned
crops converge in minutes, and the result is still a StyleGAN2 generator (same module, same W+ layout) whose
W+ space FrEN — and ViEN, initialised from FrEN — use. Options:

* ``cycle`` > 0: also decode codes from the mapping network and ask FrEN to recover them (latent loss, W known);
  this keeps FrEN's inverse defined on the mapping's W as well, and trains the mapping network (through the
  synthesis image) to produce codes in the region the synthesis network decodes well.
* ``adv`` > 0: adds the non-saturating logistic GAN loss with a small residual discriminator
  (training/networks.py) and lazy R1 — a short sharpening phase after reconstruction has converged.

Resumable: ``run_dir/state.pt`` holds every network, optimiser, step and RNG state; re-running the same
command continues where it stopped.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from models.bundle import Bundle, estimate_w_avg, load_bundle
from models.config import opt
from models.stylegan2 import GENERATOR_PRESETS, Generator, GeneratorConfig
from models.vit_encoder import ENCODER_PRESETS, FrameEncoder, VideoEncoder, ViTConfig
from training import common
from training.data import CropSet, load_crops
from training.losses import L2Loss, LandmarkLoss, LatentLoss, RandomConvPerceptual, SSIMLoss, load_face_mesh
from training.networks import Discriminator

log = logging.getLogger("stylestream.train")


@dataclass
class AutoencodeConfig:
    """Generator + FrEN autoencoder training."""

    out: str = opt("runs/autoencode", "run directory: state.pt, samples/, metrics.jsonl, bundle/")
    data: list[str] = opt(default_factory=lambda: ["demo:astronaut?seconds=10&seed=1"], help="data specs")
    holdout: str = opt("", "data spec for held-out samples/eval (empty: the last clip of --data)")
    generator: str = opt("tiny-64", "generator preset (models/stylegan2.py) or a JSON GeneratorConfig")
    encoder: str = opt("tiny", "encoder preset (models/vit_encoder.py) or a JSON ViTConfig")
    init: str = opt("", "start from this bundle's generator/FrEN instead of random weights")
    steps: int = opt(5000, "total optimisation steps", min=0)
    batch: int = opt(16, "crops per step (per process)", min=1)
    lr_g: float = opt(2e-3, "Adam learning rate of the generator", min=0.0)
    lr_e: float = opt(4e-4, "Adam learning rate of FrEN", min=0.0)
    l2: float = opt(1.0, "weight of the L2 term", min=0.0)
    ssim: float = opt(0.5, "weight of 1 − SSIM", min=0.0)
    perceptual: float = opt(0.5, "weight of the weights-free perceptual term (random conv features + gradients)",
                            min=0.0)
    landmark: float = opt(0.0, "weight of the face-mesh landmark term (skipped when models/face_mesh.py is absent)",
                          min=0.0)
    cycle: float = opt(0.0, "weight of the latent cycle term FrEN(G(w)) ≈ w on mapping samples", min=0.0)
    adv: float = opt(0.0, "weight of the adversarial term (0: no discriminator)", min=0.0)
    r1_gamma: float = opt(0.1, "R1 weight (adversarial phase only)", min=0.0)
    r1_every: int = opt(16, "lazy R1 interval", min=1)
    flip: bool = opt(True, "random horizontal flips")
    seed: int = opt(0, "all randomness derives from it")
    device: str = opt("cpu", "cpu, cuda, cuda:N")
    threads: int = opt(2, "torch CPU threads (0: torch default)", min=0)
    ckpt_every: int = opt(200, "steps between checkpoints (and bundle exports)", min=1)
    sample_every: int = opt(200, "steps between sample grids", min=1)
    log_every: int = opt(25, "steps between log lines when not on a terminal", min=1)
    tensorboard: bool = opt(False, "also write TensorBoard scalars (needs the train extra)")
    cache: str = opt("runs/cache", "crop cache folder (empty: none)")
    bundle_name: str = opt("default", "name written into the exported bundle")


def parse_generator(spec: str) -> GeneratorConfig:
    if spec in GENERATOR_PRESETS:
        return GENERATOR_PRESETS[spec]
    try:
        return GeneratorConfig.from_dict(json.loads(spec))
    except (ValueError, TypeError) as exc:
        raise common.UserError(f"--generator: not a preset ({', '.join(GENERATOR_PRESETS)}) nor a JSON "
                               f"GeneratorConfig ({exc})") from None


def parse_encoder(spec: str, img_size: int) -> ViTConfig:
    if spec in ENCODER_PRESETS:
        cfg = ENCODER_PRESETS[spec]
    else:
        try:
            cfg = ViTConfig.from_dict(json.loads(spec))
        except (ValueError, TypeError) as exc:
            raise common.UserError(f"--encoder: not a preset ({', '.join(ENCODER_PRESETS)}) nor a JSON "
                                   f"ViTConfig ({exc})") from None
    if cfg.img_size != img_size:
        raise common.UserError(f"encoder input {cfg.img_size}² does not match the generator's {img_size}² "
                               "(the autoencoder encodes crops at the generator resolution)")
    return cfg


def _make_models(cfg: AutoencodeConfig) -> tuple[Generator, FrameEncoder]:
    if cfg.init:
        b = load_bundle(cfg.init)
        g, fren = b.generator, b.fren
        if fren is None:
            raise common.UserError(f"{cfg.init}: the bundle has no FrEN")
        for m in (g, fren):
            m.requires_grad_(True)
        return g, fren
    gcfg = parse_generator(cfg.generator)
    ecfg = parse_encoder(cfg.encoder, gcfg.img_resolution)
    torch.manual_seed(cfg.seed)
    g = Generator(gcfg)
    g.mapping.w_avg.copy_(estimate_w_avg(g, seed=cfg.seed))
    fren = FrameEncoder(ecfg, gcfg.layout())
    fren.w_avg.copy_(g.mapping.w_avg)
    return g, fren


def export_bundle(g: Generator, fren: FrameEncoder, path: Path, name: str, provenance: dict[str, Any],
                  vien: VideoEncoder | None = None, vien_trained: bool = False) -> Path:
    """Write a bundle with the trained G and FrEN; ViEN is initialised from FrEN unless given."""
    if vien is None:
        vien = VideoEncoder(fren.cfg, g.layout)
        vien.init_from_frame_encoder(fren)
    b = Bundle(generator=g, fren=fren, vien=vien, trained={"generator": True, "fren": True, "vien": vien_trained},
               provenance=provenance, name=name)
    return b.save(path)


def _held_out(cfg: AutoencodeConfig, data: CropSet, size: int) -> tuple[CropSet, CropSet]:
    if cfg.holdout:
        return data, load_crops([cfg.holdout], size, cfg.cache or None)
    if data.num_clips > 1:
        return data.split(1)
    return data, data


def train_autoencoder(cfg: AutoencodeConfig, command: str = "") -> Path:
    """Run (or resume) the autoencoder training; returns the exported bundle path."""
    common.set_threads(cfg.threads)
    d, device = common.setup_distributed(cfg.device)
    run = Path(cfg.out)
    if d.main:
        common.write_config(run, cfg)
    g, fren = _make_models(cfg)
    size = g.img_resolution
    data = load_crops(cfg.data, size, cfg.cache or None)
    train, held = _held_out(cfg, data, size)
    g.to(device).train()
    fren.to(device).train()
    common.broadcast_params([g, fren], d)
    opt_g = torch.optim.Adam(g.parameters(), lr=cfg.lr_g, betas=(0.0, 0.99), eps=1e-8)
    opt_e = torch.optim.Adam(fren.parameters(), lr=cfg.lr_e, betas=(0.9, 0.99), eps=1e-8)
    disc = opt_d = None
    if cfg.adv > 0:
        disc = Discriminator(size).to(device).train()
        common.broadcast_params([disc], d)
        opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.lr_g, betas=(0.0, 0.99), eps=1e-8)
    l2, ssim_l, perc, lat = L2Loss(), SSIMLoss(), RandomConvPerceptual().to(device), LatentLoss()
    mesh = load_face_mesh(device) if cfg.landmark > 0 else None
    if cfg.landmark > 0 and mesh is None and d.main:
        log.warning("landmark weight %.3g requested but models/face_mesh.py is not available: term skipped",
                    cfg.landmark)
    lmk = LandmarkLoss(mesh) if mesh is not None else None
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + d.rank)
    step = 0
    elapsed = 0.0
    state = common.load_state(run)
    if state is not None:
        g.load_state_dict(state["g"])
        fren.load_state_dict(state["fren"])
        opt_g.load_state_dict(state["opt_g"])
        opt_e.load_state_dict(state["opt_e"])
        if disc is not None and "d" in state:
            disc.load_state_dict(state["d"])
            assert opt_d is not None
            opt_d.load_state_dict(state["opt_d"])
        step, elapsed = int(state["step"]), float(state.get("elapsed_s", 0.0))
        common.set_rng_state(state["rng"], {"data": gen})
        if d.main:
            log.info("resumed %s at step %d", run, step)
    fixed = held.float_images(torch.linspace(0, len(held) - 1, 8).round().long()).to(device)
    fixed_train = train.float_images(torch.linspace(0, len(train) - 1, 8).round().long()).to(device)
    prog = common.Progress(run, cfg.steps, step, enabled=d.main, tensorboard=cfg.tensorboard,
                           log_every=cfg.log_every, desc="autoencode")
    stop = common.StopOnSigterm()
    t_start = time.monotonic() - elapsed

    def checkpoint() -> None:
        if not d.main:
            return
        st: dict[str, Any] = {"g": g.state_dict(), "fren": fren.state_dict(), "opt_g": opt_g.state_dict(),
                              "opt_e": opt_e.state_dict(), "step": step, "rng": common.rng_state({"data": gen}),
                              "elapsed_s": time.monotonic() - t_start, "config": asdict(cfg)}
        if disc is not None and opt_d is not None:
            st["d"], st["opt_d"] = disc.state_dict(), opt_d.state_dict()
        common.save_state(run, st)

    init_prov = load_bundle(cfg.init).provenance if cfg.init and d.main else None

    def export() -> Path:
        prov = {"made_by": "training.autoencode", "command": command, "steps": step,
                "train_wall_s": round(time.monotonic() - t_start, 1), "data": cfg.data, "config": asdict(cfg)}
        if init_prov is not None:
            prov["init"] = init_prov  # how the starting bundle was made
        return export_bundle(g, fren, run / "bundle", cfg.bundle_name, prov)

    try:
        while step < cfg.steps and not stop:
            idx = train.sample(cfg.batch, gen)
            x = train.float_images(idx)
            if cfg.flip:
                flip = torch.rand(cfg.batch, generator=gen) < 0.5
                x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            x = x.to(device)
            ws = fren(x)  # [B, num_ws, w_dim]
            y = g.synthesis(ws)
            scalars: dict[str, float] = {}
            loss = x.new_zeros(())
            for name, wgt, fn in (("l2", cfg.l2, l2), ("ssim", cfg.ssim, ssim_l), ("perc", cfg.perceptual, perc)):
                if wgt:
                    v = fn(y, x)
                    loss = loss + wgt * v
                    scalars[name] = v.item()
            if lmk is not None:
                v = lmk(y, x)
                loss = loss + cfg.landmark * v
                scalars["lmk"] = v.item()
            if cfg.cycle:
                z = torch.randn(cfg.batch // 2, g.z_dim, generator=gen).to(device)
                w_true = g.mapping(z, update_w_avg=False)
                w_hat = fren(g.synthesis(w_true).clamp(-1, 1))
                v = lat(w_hat, w_true.detach())
                loss = loss + cfg.cycle * v
                scalars["cycle"] = v.item()
            if disc is not None and opt_d is not None:
                v = F.softplus(-disc(y)).mean()
                loss = loss + cfg.adv * v
                scalars["g_adv"] = v.item()
            opt_g.zero_grad(set_to_none=True)
            opt_e.zero_grad(set_to_none=True)
            loss.backward()
            common.sync_grads(list(g.parameters()), d)
            common.sync_grads(list(fren.parameters()), d)
            opt_g.step()
            opt_e.step()
            if disc is not None and opt_d is not None:
                real = x.detach().requires_grad_(step % cfg.r1_every == 0)
                d_loss = F.softplus(disc(y.detach())).mean() + F.softplus(-disc(real)).mean()
                if real.requires_grad:
                    out = disc(real).sum()
                    (grad,) = torch.autograd.grad(out, real, create_graph=True)
                    d_loss = d_loss + grad.pow(2).sum([1, 2, 3]).mean() * (cfg.r1_gamma / 2) * cfg.r1_every
                opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                common.sync_grads(list(disc.parameters()), d)
                opt_d.step()
                scalars["d"] = d_loss.item()
            step += 1
            scalars["loss"] = loss.item()
            scalars["psnr"] = float(10 * torch.log10(4.0 / F.mse_loss(y.detach().clamp(-1, 1), x)).item())
            prog.update(step, scalars)
            if d.main and (step % cfg.sample_every == 0 or step == cfg.steps):
                with torch.no_grad():
                    fren.eval()
                    rec_h, rec_t = g.synthesis(fren(fixed)), g.synthesis(fren(fixed_train))
                    fren.train()
                common.save_grid(run / "samples" / f"recon-{step:06d}.png", [fixed, rec_h, fixed_train, rec_t],
                                 scale=2)
                common.save_grid(run / "samples" / "recon-latest.png", [fixed, rec_h, fixed_train, rec_t], scale=2)
            if step % cfg.ckpt_every == 0:
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


def run(cfg: AutoencodeConfig, command: str = "") -> Path:
    """Entry point of ``stylestream train autoencode``."""
    return train_autoencoder(cfg, command)
