"""The pose/expression network of Video2StyleGAN §4.4, with MediaPipe's mesh parameters in place of 3DDFA's.

A 3-layer MLP (:class:`models.editing.PoseExpressionNet`) maps the change of pose/expression parameters
between two frames of a clip ~10 frames apart, Δp = p₂ − p₁ (yaw, pitch, roll in degrees / 10; jaw_open,
smile, blink, brow_raise, pucker in [0, 1]), to a ΔW on the coarse W+ layers, trained so that W₁ + ΔW renders
frame 2:

    loss = λr·‖G(W₁ + ΔW) − x₂‖² + λf·landmark(G(W₁ + ΔW), lm₂) + λw·‖W₁ + ΔW − W₂‖²

where x₂ is frame 2's aligned crop, lm₂ its ground-truth landmarks (training/losses.py ``LandmarkLoss`` on the
differentiable face mesh) and W₂ its FrEN code (a latent term that speeds up training on a CPU; set λw = 0
for the paper's losses only). The parameters come from synthetic clips (exact ground truth); at run time the
current parameters of a frame come from its landmarks or a linear read-out of W+ (models/editing.py).

A linear skip initialised from the supervised regression (training/directions.py) gives the network the
first-order answer at step 0; the MLP learns the rest.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import torch

from models.config import opt
from models.editing import PARAM_SCALE, PARAMS, PoseExpressionNet
from training.losses import LandmarkLoss

log = logging.getLogger("stylestream.edits")


@dataclass
class PETrainConfig:
    """Pose/expression network training."""

    steps: int = opt(200, "Adam steps (0: keep the linear initialisation)", min=0)
    batch: int = opt(16, "frame pairs per step", min=1)
    gap: int = opt(10, "frames between the two frames of a pair (the paper's ~10)", min=1)
    long_gap: int = opt(30, "pairs this far apart are added too (larger pose changes to learn; 0: none)", min=0)
    hidden: int = opt(256, "MLP width", min=1)
    lr: float = opt(1e-3, "Adam learning rate", min=0.0)
    recon: float = opt(1.0, "weight of the L2 reconstruction term", min=0.0)
    landmark: float = opt(1.0, "weight of the landmark term (mean distance / crop side; needs the face mesh)", min=0.0)
    latent: float = opt(1.0, "weight of the latent term ‖W₁ + ΔW − W₂‖² (mean over coarse entries)", min=0.0)
    seed: int = opt(0, "batch sampling")


def _pairs(data: Any, gap: int, long_gap: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = data.pairs(gap)
    if a.numel() == 0:
        raise ValueError(f"no frame pairs {gap} apart in the data (clips too short)")
    if long_gap > 0:
        a2, b2 = data.pairs(long_gap)
        a, b = torch.cat([a, a2]), torch.cat([b, b2])
    return a, b


def pair_losses(g: Any, net: PoseExpressionNet, data: Any, a: torch.Tensor, b: torch.Tensor,
                mesh: Any | None) -> dict[str, torch.Tensor]:
    """Losses of pairs (a → b): recon (L2 vs frame b's crop), landmark (px, crop side units ×size), latent."""
    scale = torch.tensor(PARAM_SCALE)
    dp = (data.params[b] - data.params[a]) / scale
    d = net(dp)  # [B, L, w]
    w = data.ws[a].clone()
    n = d.shape[1]
    w = torch.cat([w[:, :n] + d, w[:, n:]], 1)
    img = g.synthesis(w)
    out = {"recon": (img - data.crops[b]).pow(2).mean(),
           "latent": (w[:, :n] - data.ws[b][:, :n]).pow(2).mean()}
    if mesh is not None:
        size = img.shape[-1]
        lm = data.landmarks[b] * (size / data.crops.shape[-1])
        out["landmark"] = LandmarkLoss(mesh)(img, lm)
    return out


def train_pose_expression(bundle: Any, data: Any, fit: Any, cfg: PETrainConfig, mesh: Any | None = None
                          ) -> tuple[PoseExpressionNet, dict[str, Any]]:
    """Train the network on ``data`` (training/directions.py EncodedSet; its last clip is held out) starting from
    the supervised linear map ``fit`` (LinearFit). Returns the network (eval, no grad) and a report with
    held-out losses for: no edit (ΔW = 0), the linear map (step 0), the trained network."""
    g = bundle.generator
    n = g.layout.num_coarse
    w_dim = g.w_dim
    net = PoseExpressionNet(n, w_dim, cfg.hidden)
    a_all, b_all = _pairs(data, cfg.gap, cfg.long_gap)
    dp_all = (data.params[b_all] - data.params[a_all]).abs()
    net.delta_max = [float(x) for x in torch.quantile(dp_all, 0.98, dim=0)]  # run time clamps Δp to this
    with torch.no_grad():
        lin = torch.stack([fit.B[k, :n].flatten() * PARAM_SCALE[k] for k in range(len(PARAMS))], 1)
        net.lin.weight.copy_(lin)
    last = int(data.clip.max())
    held = data.clip[a_all] == last
    tr_a, tr_b = a_all[~held], b_all[~held]
    te_a, te_b = a_all[held][:32], b_all[held][:32]
    if tr_a.numel() == 0:
        tr_a, tr_b = a_all, b_all
    if te_a.numel() == 0:
        te_a, te_b = a_all[:32], b_all[:32]
    use_mesh = mesh if cfg.landmark > 0 else None

    def evaluate(model: PoseExpressionNet | None) -> dict[str, float]:
        with torch.no_grad():
            if model is None:
                zero = PoseExpressionNet(n, w_dim, 8)
                nn_zero = zero.eval()
                nn_zero.lin.weight.zero_()
                model = nn_zero
            losses = pair_losses(g, model, data, te_a, te_b, mesh)
        out = {k: float(v) for k, v in losses.items()}
        if "landmark" in out:
            out["landmark_px"] = out.pop("landmark") * g.img_resolution
        return out

    report: dict[str, Any] = {"pairs_train": int(tr_a.numel()), "pairs_heldout": int(te_a.numel()),
                              "config": cfg.__dict__.copy()}
    report["heldout_no_edit"] = evaluate(None)
    report["heldout_linear"] = evaluate(net)
    g_req = [p.requires_grad for p in g.parameters()]
    g.requires_grad_(False)
    net.train()
    optim = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    t0 = time.time()
    history = []
    for step in range(cfg.steps):
        idx = torch.randint(0, tr_a.numel(), (cfg.batch,), generator=gen)
        losses = pair_losses(g, net, data, tr_a[idx], tr_b[idx], use_mesh)
        loss = cfg.recon * losses["recon"] + cfg.latent * losses["latent"]
        if "landmark" in losses:
            loss = loss + cfg.landmark * losses["landmark"]
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        history.append(float(loss.detach()))
        if step % 50 == 0 or step == cfg.steps - 1:
            log.info("pose/expression step %d/%d loss %.4f (%.0fs)", step + 1, cfg.steps, float(loss.detach()),
                     time.time() - t0)
    for p, r in zip(g.parameters(), g_req):
        p.requires_grad_(r)
    net.eval().requires_grad_(False)
    report["heldout_trained"] = evaluate(net)
    report["train_loss_first_last"] = [history[0], history[-1]] if history else []
    report["train_seconds"] = round(time.time() - t0, 1)
    return net, report
