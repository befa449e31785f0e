"""FrEN, then ViEN, on a frozen generator (Video2StyleGAN §3.2 training, condensed).

Stage ``fren``: crop x → FrEN → W+ → G → x̂. Stage ``vien``: ViEN starts from FrEN (``init_from_frame_encoder``);
a consecutive pair (x_{t−1}, x_t) gives prev = FrEN(x_{t−1}) (frozen), ŵ = ViEN(x_t, prev) (coarse layers
predicted, fine layers copied from prev) and x̂_t = G(ŵ).

Losses per batch: λ2·L2 + λs·(1−SSIM) + λp·perceptual on every reconstruction; λw·latent where the true W+ is
known; and the paper's two-stage schedule: for the first ``stage_split`` of each encoder's steps the landmark
term λf (face-mesh outputs on the first ``landmark_batch`` samples) is on and the mesh term off, afterwards
λf = 0 and the 3-D mesh term λv on. Weights are re-scaled to our units (distances divided by the crop side; the
paper's λf = 100 multiplies FAN-heatmap MSE and λv = 1e-4 3DDFA vertex errors). Both need
``models/face_mesh.py``; without it they are skipped with a logged note. The target landmarks are the mesh's own
outputs on the target crop (so known-W samples, which have no ground truth, are treated alike).

Known-W data (``w_fraction`` of each batch): either mapping samples with smooth W+ trajectories
(``w_source=mapping``, right for an adversarially trained G) or codes of real crops with their coarse layers
interpolated towards another crop's (``w_source=encoded``, right for an autoencoder-trained G whose mapping
network was not trained) — in both cases the image is G(w) and the target W+ is w.

Optimiser: Adam (the paper uses Ranger, lr 1e-4). Resumable through ``out/state.pt``.

``--from-generator``: ViEN only, for any bundle with a key-frame encoder (FrEN, or an imported e4e / pSp, which
stays frozen) and no data set: pairs of consecutive frames come from sequences the generator renders
(:mod:`training.rendered`: smooth W+ trajectories whose coarse entries move along the bundle's pose / expression
directions, the true W+ known). ViEN gets frame t and, as in Video2StyleGAN, the key-frame encoder's code of an
earlier frame as the previous W+ (1…``prev_gap`` frames back, coarse entries with a little noise: an estimate, as
at run time, never the truth — fed the true previous code, ViEN learned to copy it and drifted when run on its own
outputs) and learns the coarse entries of frame t: latent loss against the truth, the reconstruction G(ŵ) (fine
entries: the key encoder's, as the pipeline carries them) against the rendered frame (L2, SSIM, perceptual, then
the landmark → mesh schedule). Before the first step and every ``eval_every`` steps, held-out rendered sequences
measure ViEN run recursively from a key frame against per-frame key encoding and coarse reuse (PSNR, TC,
coarse-code error; ``eval/*`` in metrics.jsonl; the best ViEN so far is kept as ``OUT/best``). Base codes:
``--w-source mapping`` (a generator with a trained mapping network: the official ones) or ``encoded`` (key
encodings of ``--data`` crops: a generator whose mapping network is untrained, like the default bundle's).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from models.bundle import Bundle, load_bundle
from models.config import opt
from models.vit_encoder import ENCODER_PRESETS, FrameEncoder, VideoEncoder
from training import common
from training.autoencode import parse_encoder
from training.data import CropSet, load_crops, smooth_ws_trajectories
from training.losses import (
    L2Loss,
    LandmarkLoss,
    LatentLoss,
    MeshLoss,
    RandomConvPerceptual,
    SSIMLoss,
    load_face_mesh,
    mean_frame_psnr,
    temporal_consistency,
)
from training.rendered import (
    MOTION_EDITS,
    MOTIONS,
    RenderedSequences,
    edit_directions,
    mapping_base,
    pool_base,
)

log = logging.getLogger("stylestream.train")


@dataclass
class EncoderTrainConfig:
    """FrEN / ViEN training on a frozen generator."""

    out: str = opt("runs/encoder", "run directory: state.pt, samples/, metrics.jsonl, bundle/ (and best/)")
    bundle: str = opt("runs/autoencode/bundle", "input bundle (its generator is frozen; its FrEN is the start point)")
    data: list[str] = opt(default_factory=lambda: ["demo:astronaut?seconds=10&seed=1"], help="data specs (clips)")
    holdout: str = opt("", "data spec for sample strips (empty: the last clip of --data)")
    stage: str = opt("both", "'fren', 'vien' or 'both' (FrEN steps then ViEN steps)",
                     choices=("fren", "vien", "both"))
    fren_steps: int = opt(1000, "FrEN steps (stage fren)", min=0)
    vien_steps: int = opt(1000, "ViEN steps (stage vien)", min=0)
    reinit_fren: bool = opt(False, "start FrEN from scratch instead of the bundle's")
    batch: int = opt(16, "samples per step (per process)", min=1)
    lr: float = opt(3e-4, "Adam learning rate", min=0.0)
    l2: float = opt(1.0, "weight of L2", min=0.0)
    ssim: float = opt(0.5, "weight of 1 − SSIM", min=0.0)
    perceptual: float = opt(0.5, "weight of the weights-free perceptual term", min=0.0)
    latent: float = opt(1.0, "weight of the latent loss on known-W samples", min=0.0)
    landmark: float = opt(1.0, "λf, first stage: mean landmark distance / crop side (needs models/face_mesh.py)",
                          min=0.0)
    mesh: float = opt(10.0, "λv, second stage: mean squared 3-D landmark error / side² (needs models/face_mesh.py)",
                      min=0.0)
    landmark_batch: int = opt(4, "samples per batch that get the face-mesh terms (the mesh costs ~3× G per image)",
                              min=1)
    stage_split: float = opt(0.7, "fraction of each encoder's steps in the landmark stage", min=0.0, max=1.0)
    w_fraction: float = opt(0.25, "fraction of each batch drawn with known W+", min=0.0, max=1.0)
    w_source: str = opt("encoded", "'encoded' (perturbed FrEN codes of real crops) or 'mapping' (G samples)",
                        choices=("encoded", "mapping"))
    flip: bool = opt(True, "random horizontal flips (whole pairs flip together)")
    seed: int = opt(0, "all randomness derives from it")
    device: str = opt("cpu", "cpu, cuda, cuda:N")
    threads: int = opt(2, "torch CPU threads (0: torch default)", min=0)
    ckpt_every: int = opt(200, "steps between checkpoints and bundle exports", min=1)
    sample_every: int = opt(200, "steps between sample strips", min=1)
    log_every: int = opt(25, "steps between log lines when not on a terminal", min=1)
    tensorboard: bool = opt(False, "also write TensorBoard scalars (needs the train extra)")
    cache: str = opt("runs/cache", "crop cache folder (empty: none)")
    bundle_name: str = opt("default", "name written into the exported bundle")
    from_generator: bool = opt(False, "train ViEN (only) on sequences the bundle's generator renders, no data set: "
                                      "true W+ known, coarse layers moving along its pose / expression directions; "
                                      "the key-frame encoder (FrEN, e4e or pSp) stays frozen; --data only supplies "
                                      "base codes with --w-source encoded")
    motion: str = opt("auto", "--from-generator: coarse-layer motion: edits (the bundle's yaw, pitch, smile, "
                              "mouth_open, eyes_open, brow_raise W directions), interpolate (towards another base "
                              "code) or auto (edits when the bundle has them)", choices=MOTIONS)
    motion_edits: list[str] = opt(default_factory=lambda: list(MOTION_EDITS),
                                  help="--from-generator, --motion edits: the W-direction edits that move")
    motion_scale: float = opt(1.0, "--from-generator: largest amplitude of each direction, in edit units (the "
                                   "default bundle's: one standard deviation of the face-mesh measure)", min=0.0)
    truncation: float = opt(0.7, "--from-generator, --w-source mapping: truncation ψ of the base codes", min=0.0,
                            max=1.0)
    base_codes: int = opt(512, "--from-generator, --w-source encoded: crops of --data encoded as base codes", min=1)
    prev_gap: int = opt(3, "--from-generator: ViEN's previous W+ is the key-frame encoder's code of a frame 1…N "
                           "frames back (N drawn per step)", min=1)
    prev_noise: float = opt(0.1, "--from-generator: noise on the coarse entries of that previous W+, relative to "
                                 "each entry's spread over base codes", min=0.0)
    vien_preset: str = opt("", "ViT preset of a new ViEN when the key-frame encoder is e4e / pSp (its img_size "
                               "becomes the crop size); empty: vit-b16", choices=("", *ENCODER_PRESETS))
    eval_every: int = opt(100, "--from-generator: steps between evaluations on held-out rendered sequences (the "
                               "best ViEN so far by held-out PSNR is kept as OUT/best)", min=1)
    eval_sequences: int = opt(4, "--from-generator: held-out rendered sequences", min=1)
    eval_frames: int = opt(24, "--from-generator: frames per held-out sequence", min=2)


class EncoderTrainer:
    """One encoder-training run's networks, losses and optimiser (``bundle``: the input bundle itself instead of
    loading ``cfg.bundle`` — benchmarks/bench_train_cost.py builds config-f ones in memory)."""

    def __init__(self, cfg: EncoderTrainConfig, device: torch.device, d: common.Dist, bundle: Bundle | None = None):
        if cfg.stage not in ("fren", "vien", "both"):
            raise common.UserError(f"--stage must be fren, vien or both, got {cfg.stage!r}")
        if cfg.w_source not in ("encoded", "mapping"):
            raise common.UserError(f"--w-source must be encoded or mapping, got {cfg.w_source!r}")
        self.cfg, self.device, self.dist = cfg, device, d
        b = bundle if bundle is not None else load_bundle(cfg.bundle)
        if cfg.from_generator:
            if cfg.stage == "fren":
                raise common.UserError("--from-generator trains ViEN only (the bundle's key-frame encoder stays "
                                       "frozen); leave --stage out or use --stage vien")
            if b.fren is None:
                raise common.UserError(f"{cfg.bundle} has no key-frame encoder; --from-generator trains the ViEN "
                                       "that runs between its key frames (import an e4e / pSp encoder or train a "
                                       "FrEN first)")
        elif b.fren is not None and not isinstance(b.fren, FrameEncoder):
            raise common.UserError(f"{cfg.bundle}: its key-frame encoder is {b.fren.kind} (imported e4e / pSp); "
                                   "`stylestream train encoder` trains ViT FrEN/ViEN and cannot start from it — "
                                   "add --from-generator to train a ViEN for it")
        self.src = b
        self.g = b.generator.to(device).eval().requires_grad_(False)
        torch.manual_seed(cfg.seed)
        if b.fren is None or (cfg.reinit_fren and not cfg.from_generator):
            ecfg = b.fren.cfg if b.fren is not None else parse_encoder("tiny", self.g.img_resolution)
            self.fren = FrameEncoder(ecfg, self.g.layout)
            self.fren.w_avg.copy_(self.g.mapping.w_avg)
        else:
            self.fren = b.fren
        self.fren.to(device)
        if isinstance(self.fren, FrameEncoder):
            self.vien = VideoEncoder(self.fren.cfg, self.g.layout).to(device)
            self.vien.init_from_frame_encoder(self.fren)
        else:  # e4e / pSp key encoder: a new ViT ViEN at the crop size
            vcfg = dataclasses.replace(ENCODER_PRESETS[cfg.vien_preset or "vit-b16"], img_size=b.crop_size)
            try:
                vcfg.validate()
            except ValueError as exc:
                raise common.UserError(f"--vien-preset {cfg.vien_preset or 'vit-b16'} at {b.crop_size}² crops: "
                                       f"{exc}") from None
            self.vien = VideoEncoder(vcfg, self.g.layout).to(device)
            self.vien.w_avg.copy_(self.g.mapping.w_avg)
        self.phase = "vien" if cfg.from_generator or cfg.stage == "vien" else "fren"
        self.rendered: RenderedSequences | None = None  # --from-generator: made by make_rendered()
        self.rendered_eval: RenderedSequences | None = None  # its held-out twin (other base codes where possible)
        self.w_spread = torch.ones(self.g.num_ws, device=device)  # per-entry spread of the base codes (make_rendered)
        self._held: tuple[torch.Tensor, torch.Tensor] | None = None  # held-out rendered (W+, frames)
        self._baselines: dict[str, float] = {}
        self.step_idx = 0  # step within the current phase
        self.elapsed = 0.0
        self.best = {"step": 0, "psnr": float("-inf")}  # --from-generator: the best held-out ViEN so far (OUT/best)
        self.gen = torch.Generator().manual_seed(cfg.seed * 1000 + d.rank)
        self._make_opt()
        self.l2, self.ssim, self.lat = L2Loss(), SSIMLoss(), LatentLoss()
        self.perc = RandomConvPerceptual().to(device)
        mesh = load_face_mesh(device) if (cfg.landmark > 0 or cfg.mesh > 0) else None
        if mesh is None and d.main and (cfg.landmark > 0 or cfg.mesh > 0):
            log.warning("models/face_mesh.py is not available: the landmark (λf) and mesh (λv) terms are skipped")
        self.lmk = LandmarkLoss(mesh) if mesh is not None else None
        self.mesh = MeshLoss(mesh) if mesh is not None else None

    @property
    def net(self) -> FrameEncoder | VideoEncoder:
        return self.fren if self.phase == "fren" else self.vien

    @property
    def phase_steps(self) -> int:
        return self.cfg.fren_steps if self.phase == "fren" else self.cfg.vien_steps

    def _make_opt(self) -> None:
        self.fren.requires_grad_(self.phase == "fren")
        self.vien.requires_grad_(self.phase == "vien")
        self.opt = torch.optim.Adam(self.net.parameters(), lr=self.cfg.lr, betas=(0.9, 0.99))

    def next_phase(self) -> bool:
        """Move from FrEN to ViEN (re-initialising ViEN from the trained FrEN). False when done."""
        if self.phase == "fren" and self.cfg.stage == "both":
            self.phase, self.step_idx = "vien", 0
            self.vien.init_from_frame_encoder(self.fren)
            self._make_opt()
            return True
        return False

    def state(self) -> dict[str, Any]:
        st = {"vien": self.vien.state_dict(), "opt": self.opt.state_dict(),
              "phase": self.phase, "step": self.step_idx, "elapsed_s": self.elapsed, "best": dict(self.best),
              "rng": common.rng_state({"data": self.gen}), "config": asdict(self.cfg)}
        if not self.cfg.from_generator:  # frozen with --from-generator: the bundle's (an e4e's is 1 GB)
            st["fren"] = self.fren.state_dict()
        return st

    def load(self, st: dict[str, Any]) -> None:
        if "fren" in st:
            self.fren.load_state_dict(st["fren"])
        self.vien.load_state_dict(st["vien"])
        self.phase = str(st["phase"])
        self._make_opt()
        self.opt.load_state_dict(st["opt"])
        self.step_idx, self.elapsed = int(st["step"]), float(st.get("elapsed_s", 0.0))
        self.best = dict(st.get("best", self.best))
        common.set_rng_state(st["rng"], {"data": self.gen})

    # -- known-W samples
    @torch.no_grad()
    def _known_w_pair(self, data: CropSet, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Two consecutive known W+ codes [n, 2, num_ws, w_dim] and their images [n, 2, 3, S, S]."""
        nc = self.g.layout.num_coarse
        if self.cfg.w_source == "mapping":
            ws = smooth_ws_trajectories(self.g, n, 2, self.gen)
        else:
            a = self.fren(data.float_images(data.sample(n, self.gen)).to(self.device))
            b = self.fren(data.float_images(data.sample(n, self.gen)).to(self.device))
            u = torch.rand(n, 1, 1, generator=self.gen).to(self.device) * 0.6
            du = (torch.rand(n, 1, 1, generator=self.gen).to(self.device) - 0.5) * 0.1
            c0 = a[:, :nc] + (b[:, :nc] - a[:, :nc]) * u
            c1 = a[:, :nc] + (b[:, :nc] - a[:, :nc]) * (u + du)
            w0 = torch.cat([c0, a[:, nc:]], 1)
            w1 = torch.cat([c1, a[:, nc:]], 1)
            ws = torch.stack([w0, w1], 1)
        imgs = self.g.synthesis(ws.flatten(0, 1)).clamp(-1, 1).unflatten(0, (n, 2))
        return ws, imgs

    def _recon_terms(self, y: torch.Tensor, x: torch.Tensor, out: dict[str, float]) -> torch.Tensor:
        cfg = self.cfg
        loss = cfg.l2 * self.l2(y, x) + cfg.ssim * self.ssim(y, x) + cfg.perceptual * self.perc(y, x)
        first_stage = self.step_idx < cfg.stage_split * self.phase_steps
        k = max(1, min(cfg.landmark_batch, y.shape[0]))
        if first_stage and self.lmk is not None and cfg.landmark > 0:
            v = self.lmk(y[:k], x[:k])
            loss = loss + cfg.landmark * v
            out["lmk"] = v.item()
        if not first_stage and self.mesh is not None and cfg.mesh > 0:
            v = self.mesh(y[:k], x[:k])
            loss = loss + cfg.mesh * v
            out["mesh"] = v.item()
        out["psnr"] = float(10 * torch.log10(4.0 / F.mse_loss(y.detach().clamp(-1, 1), x)).item())
        return loss

    # -- --from-generator: rendered sequences
    @torch.no_grad()
    def make_rendered(self, data: CropSet | None) -> RenderedSequences:
        """The rendered-sequence source: base codes from the mapping network or key encodings of ``data``."""
        cfg = self.cfg
        held_base = None
        if cfg.w_source == "mapping":
            base = mapping_base(self.g, cfg.truncation)
        else:
            assert data is not None
            held = None
            if data.num_clips > 1:  # the last clip's codes only for the held-out sequences
                data, held = data.split(1)
            elif self.dist.main:
                log.warning("one --data clip: held-out sequences start from the training clip's codes")
            base = pool_base(self._encode_pool(data, cfg.base_codes))
            if held is not None:
                held_base = pool_base(self._encode_pool(held, max(1, cfg.base_codes // 4)))
        unknown = [n for n in cfg.motion_edits if n not in MOTION_EDITS]
        if unknown:
            raise common.UserError(f"--motion-edits {' '.join(unknown)}: not a pose / expression edit "
                                   f"({', '.join(MOTION_EDITS)})")
        dirs = edit_directions(self.src, cfg.motion_edits)
        self.rendered = RenderedSequences(self.g, self.src.crop_size, base, dirs, cfg.motion, cfg.motion_scale)
        self.rendered_eval = self.rendered if held_base is None else \
            RenderedSequences(self.g, self.src.crop_size, held_base, dirs, cfg.motion, cfg.motion_scale)
        spread_gen = torch.Generator().manual_seed(cfg.seed + 4242)  # not the data stream: resumes stay exact
        self.w_spread = base(256, spread_gen).to(self.device).std(0).mean(-1)  # [num_ws]
        if self.dist.main:
            how = f"along {', '.join(self.rendered.names)}" if self.rendered.motion == "edits" else "interpolated"
            log.info("rendered sequences: base codes from %s, coarse layers %s", cfg.w_source, how)
        return self.rendered

    @torch.no_grad()
    def _encode_pool(self, data: CropSet, n: int) -> torch.Tensor:
        """Key encodings [≤ n, num_ws, w_dim] of ``n`` crops spread evenly over ``data``."""
        idx = torch.linspace(0, len(data) - 1, min(n, len(data))).round().long()
        self.fren.eval()
        return torch.cat([self.fren(data.float_images(idx[k:k + 32]).to(self.device)) for k in range(0, len(idx), 32)])

    def held_out(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Held-out rendered sequences (a seed never trained on; with --w-source encoded and several --data clips,
        base codes of the last clip only): W+ [N, T, num_ws, w_dim], frames [N, T, 3, S, S]."""
        if self._held is None:
            assert self.rendered_eval is not None
            gen = torch.Generator().manual_seed(self.cfg.seed + 99_991)
            self._held = self.rendered_eval.sequences(self.cfg.eval_sequences, self.cfg.eval_frames, gen)
        return self._held

    @torch.no_grad()
    def _scores(self, ws: torch.Tensor, truth: torch.Tensor, x: torch.Tensor) -> dict[str, float]:
        """ws / truth [N, T, num_ws, w_dim], frames x [N, T, 3, S, S] → PSNR (dB), TC and coarse-code MSE."""
        nc = self.g.layout.num_coarse
        y = self.g.synthesis(ws.flatten(0, 1), noise_mode="const").clamp(-1, 1)
        if y.shape[-1] != x.shape[-1]:
            y = F.interpolate(y, size=x.shape[-2:], mode="area")
        y01, x01 = (y.unflatten(0, ws.shape[:2]) + 1) / 2, (x + 1) / 2
        return {"psnr": sum(mean_frame_psnr(a, b) for a, b in zip(y01, x01)) / len(x),
                "tc": sum(temporal_consistency(a, data_range=1.0) for a in y01) / len(x),
                "coarse_err": float((ws[:, :, :nc] - truth[:, :, :nc]).square().mean())}

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """ViEN run recursively from a key frame (no refreshes) on the held-out rendered sequences, and once the
        baselines: the key-frame encoder on every frame (off) and its coarse rows with frame 0's fine rows."""
        truth, x = self.held_out()
        n, t = x.shape[:2]
        nc = self.g.layout.num_coarse
        self.fren.eval()
        self.vien.eval()
        key = self.fren(x[:, 0])
        if not self._baselines:
            every = torch.stack([self.fren(x[:, k]) for k in range(t)], 1)
            coarse = torch.cat([every[:, :, :nc], key[:, None, nc:].expand(-1, t, -1, -1)], 2)
            self._baselines = {f"eval/{mode}_{k}": v for mode, ws in (("off", every), ("coarse", coarse))
                               for k, v in self._scores(ws, truth, x).items()}
            self._baselines["eval/truth_tc"] = sum(temporal_consistency((a + 1) / 2, data_range=1.0)
                                                   for a in x) / n
        ws = [key]
        for k in range(1, t):
            ws.append(self.vien(x[:, k], ws[-1]))
        out = {f"eval/vien_{k}": v for k, v in self._scores(torch.stack(ws, 1), truth, x).items()}
        self.vien.train()
        return {**out, **self._baselines}

    def step_rendered(self) -> dict[str, float]:
        """One ViEN step on rendered pairs (module docstring)."""
        cfg, gen = self.cfg, self.gen
        assert self.rendered is not None
        nc = self.g.layout.num_coarse
        gap = int(torch.randint(1, cfg.prev_gap + 1, (), generator=gen))
        ws, img = self.rendered.pairs(cfg.batch, gen, gap=float(gap))
        x = img[:, 1]
        with torch.no_grad():
            self.fren.eval()
            prev = self.fren(img[:, 0])  # an estimate, as at run time (fine rows: what the pipeline carries)
            noise = torch.randn(ws.shape[0], nc, ws.shape[-1], generator=gen).to(self.device)
            prev[:, :nc] += noise * cfg.prev_noise * self.w_spread[:nc, None]
        out: dict[str, float] = {}
        pred = self.vien(x, prev)
        y = self.g.synthesis(pred)
        if y.shape[-1] != x.shape[-1]:
            y = F.interpolate(y, size=x.shape[-2:], mode="area")
        loss = self._recon_terms(y, x, out)
        if cfg.latent > 0:
            v = self.lat(pred[:, :nc], ws[:, 1, :nc])
            loss = loss + cfg.latent * v
            out["latent"] = v.item()
        return self._update(loss, out)

    def step(self, data: CropSet | None) -> dict[str, float]:
        if self.cfg.from_generator:
            return self.step_rendered()
        assert data is not None
        cfg, dev, gen = self.cfg, self.device, self.gen
        nw = int(round(cfg.batch * cfg.w_fraction))
        nr = cfg.batch - nw
        out: dict[str, float] = {}
        loss = torch.zeros((), device=dev)
        if self.phase == "fren":
            x = data.float_images(data.sample(nr, gen)).to(dev)
            if cfg.flip:
                x = torch.where((torch.rand(nr, generator=gen) < 0.5).to(dev)[:, None, None, None], x.flip(-1), x)
            w_true = None
            if nw:
                w2, img2 = self._known_w_pair(data, nw)
                x = torch.cat([x, img2[:, 1]])
                w_true = w2[:, 1]
            ws = self.fren(x)
            y = self.g.synthesis(ws)
            loss = self._recon_terms(y, x, out)
            if w_true is not None and cfg.latent > 0:
                v = self.lat(ws[nr:], w_true)
                loss = loss + cfg.latent * v
                out["latent"] = v.item()
        else:
            i = data.sample_pairs(nr, gen)
            pair = torch.stack([data.float_images(i), data.float_images(i + 1)], 1).to(dev)  # [nr, 2, 3, S, S]
            if cfg.flip:
                pair = torch.where((torch.rand(nr, generator=gen) < 0.5).to(dev)[:, None, None, None, None],
                                   pair.flip(-1), pair)
            with torch.no_grad():
                prev = self.fren(pair[:, 0])
            x = pair[:, 1]
            w_true = None
            if nw:
                w2, img2 = self._known_w_pair(data, nw)
                prev = torch.cat([prev, w2[:, 0]])
                x = torch.cat([x, img2[:, 1]])
                w_true = w2[:, 1]
            ws = self.vien(x, prev)
            y = self.g.synthesis(ws)
            loss = self._recon_terms(y, x, out)
            if w_true is not None and cfg.latent > 0:
                nc = self.g.layout.num_coarse
                v = self.lat(ws[nr:, :nc], w_true[:, :nc])
                loss = loss + cfg.latent * v
                out["latent"] = v.item()
        return self._update(loss, out)

    def _update(self, loss: torch.Tensor, out: dict[str, float]) -> dict[str, float]:
        """One optimiser step on ``loss`` (gradients averaged across ranks); ``out`` gets the loss."""
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        common.sync_grads([p for p in self.net.parameters() if p.requires_grad], self.dist)
        self.opt.step()
        out["loss"] = loss.item()
        self.step_idx += 1
        return out

    @torch.no_grad()
    def strip(self, clip: torch.Tensor) -> list[torch.Tensor]:
        """Rows for a sample strip of consecutive frames [T, 3, S, S]: input, FrEN, ViEN (reusing its own W+)."""
        self.fren.eval()
        self.vien.eval()

        def synth(ws: torch.Tensor) -> torch.Tensor:  # at the crop size (an imported 1024² G with 256² crops)
            y = self.g.synthesis(ws)
            return F.interpolate(y, size=clip.shape[-2:], mode="area") if y.shape[-1] != clip.shape[-1] else y

        wf = self.fren(clip)
        rows = [clip, synth(wf)]
        prev = wf[:1]
        outs = [synth(prev)]
        for t in range(1, clip.shape[0]):
            prev = self.vien(clip[t: t + 1], prev)
            outs.append(synth(prev))
        rows.append(torch.cat(outs))
        self.net.train()
        return rows

    def bundle(self, provenance: dict[str, Any]) -> Bundle:
        trained = dict(self.src.trained)
        if not self.cfg.from_generator:  # --from-generator never changes the key-frame encoder
            trained["fren"] = trained.get("fren", False) or self.phase == "vien" or self.step_idx > 0
        trained["vien"] = self.phase == "vien" and self.step_idx > 0
        return Bundle(generator=copy.deepcopy(self.g).cpu(), fren=copy.deepcopy(self.fren).cpu().eval(),
                      vien=copy.deepcopy(self.vien).cpu().eval(), trained=trained, edits=self.src.edits,
                      extra=self.src.extra, provenance=provenance, name=self.cfg.bundle_name)


def train_encoder(cfg: EncoderTrainConfig, command: str = "") -> Path:
    common.set_threads(cfg.threads)
    d, device = common.setup_distributed(cfg.device)
    run = Path(cfg.out)
    if d.main:
        common.write_config(run, cfg)
    tr = EncoderTrainer(cfg, device, d)
    data: CropSet | None = None
    if cfg.from_generator:
        if cfg.w_source == "encoded":
            data = load_crops(cfg.data, tr.src.crop_size, cfg.cache or None)
        tr.make_rendered(data)
        clip = tr.held_out()[1][0, :8].to(device)
    else:
        data = load_crops(cfg.data, tr.fren.cfg.img_size, cfg.cache or None)
        if cfg.holdout:
            held = load_crops([cfg.holdout], tr.fren.cfg.img_size, cfg.cache or None)
        elif data.num_clips > 1:
            data, held = data.split(1)
        else:
            held = data
        clip = held.float_images(torch.arange(min(8, len(held)))).to(device)
    st = common.load_state(run)
    if st is not None:
        tr.load(st)
        if d.main:
            log.info("resumed %s: %s step %d", run, tr.phase, tr.step_idx)
    t0 = time.monotonic() - tr.elapsed
    stop = common.StopOnSigterm()

    def provenance() -> dict[str, Any]:
        return {**tr.src.provenance, "encoder_training": {
            "made_by": "training.train_encoder", "command": command, "phase": tr.phase, "steps": tr.step_idx,
            "train_wall_s": round(time.monotonic() - t0, 1), "data": cfg.data, "config": asdict(cfg)}}

    def checkpoint() -> None:
        tr.elapsed = time.monotonic() - t0
        if d.main:
            common.save_state(run, tr.state())

    try:
        while not stop:
            prog = common.Progress(run, tr.phase_steps, tr.step_idx, enabled=d.main, tensorboard=cfg.tensorboard,
                                   log_every=cfg.log_every, desc=tr.phase)
            if cfg.from_generator and d.main and tr.step_idx == 0:  # where training starts from
                prog.update(0, {f"{tr.phase}/{k}": v for k, v in tr.evaluate().items()})
            try:
                while tr.step_idx < tr.phase_steps and not stop:
                    scalars = tr.step(data)
                    if cfg.from_generator and d.main and (tr.step_idx % cfg.eval_every == 0
                                                          or tr.step_idx == tr.phase_steps):
                        scalars.update(tr.evaluate())
                        if scalars["eval/vien_psnr"] > tr.best["psnr"]:  # ViEN can overfit its base codes
                            tr.best = {"step": tr.step_idx, "psnr": scalars["eval/vien_psnr"]}
                            prov = provenance()
                            prov["encoder_training"]["best_held_out"] = dict(tr.best)
                            tr.bundle(prov).save(run / "best")
                    prog.update(tr.step_idx, {f"{tr.phase}/{k}": v for k, v in scalars.items()})
                    if d.main and (tr.step_idx % cfg.sample_every == 0 or tr.step_idx == tr.phase_steps):
                        common.save_grid(run / "samples" / f"{tr.phase}-{tr.step_idx:06d}.png", tr.strip(clip), 2)
                    if tr.step_idx % cfg.ckpt_every == 0:
                        checkpoint()
                        if d.main:
                            tr.bundle(provenance()).save(run / "bundle")
            finally:
                prog.close()
            if stop or not tr.next_phase():
                break
            checkpoint()
    finally:
        stop.restore()
        checkpoint()
    out = tr.bundle(provenance()).save(run / "bundle") if d.main else run / "bundle"
    common.cleanup_distributed()
    return out


def run(cfg: EncoderTrainConfig, command: str = "") -> Path:
    """Entry point of ``stylestream train encoder``."""
    return train_encoder(cfg, command)
