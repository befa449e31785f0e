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
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

Progress = Callable[[int, int, float], None]  # (iteration, total, loss)


@dataclass
class AdaptConfig:
    """Video adaptation hyper-parameters (paper defaults; tests use a handful of iterations)."""

    iters: int = 1000  # Adam steps
    lr: float = 1e-3  # Adam learning rate (paper: 1e-3)
    batch: int = 4  # frames per step
    l2_weight: float = 1.0  # weight of the pixel L2 term
    perceptual_weight: float = 1.0  # weight of the perceptual term (LPIPS or the random-conv stand-in)
    lpips_backbone: str | None = None  # LPIPS backbone weights (.pth); None: RandomConvPerceptual
    lpips_lin: str | None = None  # LPIPS linear-layer weights (.pth)
    seed: int = 0


def perceptual_loss(cfg: AdaptConfig) -> torch.nn.Module:
    """LPIPS when weights are supplied, otherwise the weights-free perceptual stand-in."""
    from training.losses import LPIPSLoss, RandomConvPerceptual

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
    target = resize_to(crops.float(), res)
    ws = ws.detach().float()
    perc = perceptual_loss(cfg)
    params = [p for p in g.synthesis.parameters() if p.is_floating_point()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.999))
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
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
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
    from training.directions import INNER_LIPS

    g = bundle.generator.eval()
    res = g.img_resolution
    target = resize_to(crops.float(), res)
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
            lm_lip.append(d[:, list(INNER_LIPS)].mean(1))
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
    from models.editing import EditStack
    from training.directions import face_measures

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
    """Save the adapted bundle (generator fine-tuned, encoders and edits unchanged)."""
    bundle.provenance = {**bundle.provenance,
                         "adapted": {"source": source, "iters": summary.get("iters"),
                                     "loss_first": summary.get("loss_first"), "loss_last": summary.get("loss_last"),
                                     "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}}
    return bundle.save(path)


# ------------------------------------------------------------------------------------------------ live calibration
class Calibrator:
    """Live "calibrate": record a few seconds of (crop, latent) pairs from a running stream, adapt a *copy* of the
    generator's synthesis network in a background thread, and hand the new weights to the device worker, which
    swaps them in between two frames (:meth:`apply_pending`) — the stream never stops.

    Use from the device-worker thread: ``start()`` on the user's action, ``record(crop, ws)`` after every
    encoded frame while ``recording``, ``apply_pending(generator)`` before every synthesize. The swap copies the
    tensors in place (``Tensor.copy_``), so parameter addresses — and CUDA graphs captured on them — stay valid.
    ``state`` is one of idle / recording / adapting / ready / done / failed (for a status line)."""

    def __init__(self, generator: Any, frames: int = 60, cfg: AdaptConfig | None = None, stride: int = 2,
                 threads: int = 1):
        self.generator = generator
        self.frames, self.stride, self.threads = frames, max(1, stride), threads
        self.cfg = cfg or AdaptConfig(iters=200)
        self.state = "idle"
        self.error = ""
        self.progress = 0.0  # 0…1 while adapting
        self.seconds = 0.0  # adaptation time of the last run
        self._crops: list[torch.Tensor] = []
        self._ws: list[torch.Tensor] = []
        self._seen = 0
        self._pending: dict[str, torch.Tensor] | None = None
        self._lock = threading.Lock()
        self._thread: Any = None

    @property
    def recording(self) -> bool:
        return self.state == "recording"

    def start(self) -> bool:
        """Begin recording (ignored while a calibration is under way). Returns True when it started."""
        if self.state in ("recording", "adapting"):
            return False
        self._crops, self._ws, self._seen, self.state, self.error = [], [], 0, "recording", ""
        return True

    def record(self, crop: torch.Tensor, ws: torch.Tensor) -> None:
        """One aligned crop [1, 3, S, S] and its latent [1, num_ws, w_dim]; every ``stride``-th is kept. The
        adaptation starts by itself once ``frames`` are kept."""
        if self.state != "recording":
            return
        self._seen += 1
        if (self._seen - 1) % self.stride:
            return
        self._crops.append(crop.detach().float().cpu().reshape(1, *crop.shape[-3:]))
        self._ws.append(ws.detach().float().cpu().reshape(1, *ws.shape[-2:]))
        if len(self._crops) >= self.frames:
            self._launch()

    def _launch(self) -> None:
        import copy

        crops, ws = torch.cat(self._crops), torch.cat(self._ws)
        self._crops, self._ws = [], []
        self.state, self.progress = "adapting", 0.0
        work = copy.deepcopy(self.generator).cpu().float()  # adapt a copy; the live generator keeps serving

        class _Shim:
            generator = work

        def run() -> None:
            try:
                torch.set_num_threads(self.threads)

                def on(it: int, total: int, loss: float) -> None:
                    self.progress = it / total

                summary = adapt_generator(_Shim(), crops, ws, self.cfg, progress=on)
                self.seconds = float(summary["seconds"])
                with self._lock:
                    self._pending = {k: v.detach().clone() for k, v in work.synthesis.state_dict().items()}
                self.state = "ready"
            except Exception as exc:  # reported on the status line; the stream goes on with the old weights
                self.error, self.state = f"{type(exc).__name__}: {exc}", "failed"

        self._thread = threading.Thread(target=run, name="calibrate", daemon=True)
        self._thread.start()

    def apply_pending(self, generator: Any | None = None) -> bool:
        """Swap the adapted weights into ``generator`` (default: the one given at construction) if they are
        ready. Call between frames on the thread that runs the generator. Returns True when it swapped."""
        with self._lock:
            state, self._pending = self._pending, None
        if state is None:
            return False
        g = generator if generator is not None else self.generator
        with torch.no_grad():
            for k, v in g.synthesis.state_dict().items():
                v.copy_(state[k].to(v.device, v.dtype))
        self.state = "done"
        return True

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
