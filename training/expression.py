"""Expression-dynamics optimisation (StylePortraitVideo Eq. 7, DESIGN §7).

An attribute edit (e.g. smile) applied as a fixed W direction also drags the mouth's *dynamics* (speech) and the
eyes along. Per frame f we optimise a residual Δw_f added to the edited latent w'_f:

    L = λ_lip  · ‖lips(G(w'_f + Δw_f)) − lips(target_f)‖²          (lip term: face-mesh inner-lip landmarks)
      + λ_eye  · P(M_eye ⊙ G(w'_f + Δw_f), M_eye ⊙ G(w'_f))         (eye term: keep the edited eyes)
      + λ_reg  · ‖Δw_f‖²                                             (stay close to the edit)
      + λ_temp · ‖Δw_f − Δw_{f+1}‖²                                  (temporal smoothness)

``target_f`` is the original frame's inner-lip landmarks (or, for sequential edits, the previously edited
frame's). The paper compares landmark *heatmaps*; we compare the differentiable MediaPipe mesh's (x, y) outputs
(:class:`training.losses.CropFaceMesh`) in units of the crop side, so the weights do not depend on resolution.
P is LPIPS when weights are supplied, else :class:`training.losses.RandomConvPerceptual`. Defaults are the
paper's: 5000 / 0.5 / 8000 / 5000, Adam lr 3e-4, 200 iterations per 48 frames, all frames of a chunk in one
batch (neighbouring chunks are linked through the previous chunk's last Δw, held fixed).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np
import torch

from models.bundle import DEFAULT_BUNDLE, load_bundle
from models.config import opt
from models.editing import EditStack
from realtime.io.sources import DemoOptions, open_source, parse_demo_spec
from realtime.io.synthetic import SyntheticClip, config_from_demo
from realtime.vision.align import align_crop
from realtime.vision.geometry import landmarks_to_crop
from realtime.vision.topology import BROW_LEFT_UPPER, BROW_RIGHT_UPPER, EYE_LEFT, EYE_RIGHT, LIPS_INNER_LOOP
from realtime.vision.tracking import track_sequence
from training.adapt import AdaptConfig, adapt_generator, edit_response, invert_crops, reconstruction
from training.losses import RandomConvPerceptual, load_face_mesh
from training.measures import face_measures

Progress = Callable[[int, int, float], None]  # (step, total steps, loss)


@dataclass
class ExpressionConfig:
    """Eq. 7 weights and optimiser (paper defaults)."""

    lip_weight: float = opt(5000.0, "λ_lip", min=0.0)
    eye_weight: float = opt(0.5, "λ_eye", min=0.0)
    reg_weight: float = opt(8000.0, "λ_reg on ‖Δw‖²", min=0.0)
    temporal_weight: float = opt(5000.0, "λ_temp on ‖Δw_f − Δw_{f+1}‖²", min=0.0)
    lr: float = opt(3e-4, "Adam learning rate", min=0.0)
    iters: int = opt(200, "iterations per chunk", min=0)
    chunk: int = opt(48, "frames optimised together (one batch)", min=1)


# ------------------------------------------------------------------------------------------------ loss terms
def lip_term(lm: torch.Tensor, target: torch.Tensor, size: int) -> torch.Tensor:
    """Mean over frames of the squared inner-lip landmark distance, in crop-side units.
    lm, target: [B, 468, ≥2] crop px. 0 when the inner lips coincide."""
    idx = list(LIPS_INNER_LOOP)
    d = (lm[:, idx, :2] - target[:, idx, :2]) / float(size)
    return d.pow(2).sum(-1).mean()


def eye_term(perceptual: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], render: torch.Tensor,
             initial: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Perceptual distance inside the eye mask [B, 1, R, R] between the optimised and the initially edited
    renders. 0 when they agree inside the mask."""
    return perceptual(render * mask, initial * mask)


def reg_term(dw: torch.Tensor) -> torch.Tensor:
    """Mean over frames of ‖Δw_f‖² (summed over W+ entries, divided by their count)."""
    return dw.pow(2).flatten(1).mean(1).mean()


def temporal_term(dw: torch.Tensor, prev: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of ‖Δw_f − Δw_{f+1}‖² over neighbouring frames (``prev``: the Δw just before this chunk, fixed).
    0 when all Δw are equal."""
    if prev is not None:
        dw = torch.cat([prev[None].to(dw), dw])
    if dw.shape[0] < 2:
        return dw.new_zeros(())
    return (dw[1:] - dw[:-1]).pow(2).flatten(1).mean(1).mean()


def eye_mask(lm: torch.Tensor | np.ndarray, size: int, grow: float = 0.35) -> torch.Tensor:
    """Soft masks [B, 1, size, size] covering both eyes and brows from landmarks [B, 468, ≥2] (crop px at
    ``size``): each eye's convex hull (eye + brow points) grown by ``grow`` × the inter-ocular distance, blurred."""
    lm_np = np.asarray(lm.detach().cpu() if isinstance(lm, torch.Tensor) else lm, np.float64)[..., :2]
    out = np.zeros((lm_np.shape[0], 1, size, size), np.float32)
    for b, pts in enumerate(lm_np):
        iod = float(np.linalg.norm(pts[list(EYE_RIGHT)].mean(0) - pts[list(EYE_LEFT)].mean(0)))
        m = np.zeros((size, size), np.uint8)
        for eye, brow in ((EYE_LEFT, BROW_LEFT_UPPER), (EYE_RIGHT, BROW_RIGHT_UPPER)):  # the mask reaches the brows
            p = pts[list(eye) + list(brow)]
            c = p.mean(0)
            p = c + (p - c) * (1 + grow)
            hull = cv2.convexHull(np.round(p * 4).astype(np.int32))
            cv2.fillConvexPoly(m, hull, 255, lineType=cv2.LINE_AA, shift=2)
        k = max(1.0, 0.08 * iod)
        out[b, 0] = cv2.GaussianBlur(m.astype(np.float32) / 255.0, (0, 0), k)
    return torch.from_numpy(out)


# ------------------------------------------------------------------------------------------------ optimiser
def optimise_expression(g: Any, ws_edit: torch.Tensor, lip_target: torch.Tensor, mesh: Any,
                        style_deltas: dict[str, torch.Tensor] | None = None, cfg: ExpressionConfig | None = None,
                        perceptual: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                        progress: Progress | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """Optimise Δw for every frame of an edited clip.

    g: the generator (frozen here); ws_edit: edited W+ [N, L, D]; lip_target: [N, 468, ≥2] landmarks of the
    original (or previously edited) frames in render px; mesh: crops → landmarks (differentiable);
    style_deltas: the edit's StyleSpace deltas ([N, …] per layer) — kept fixed. Returns (Δw [N, L, D], summary).
    """
    cfg = cfg or ExpressionConfig()
    perc = perceptual or RandomConvPerceptual()
    g.eval()
    g.requires_grad_(False)
    res = g.img_resolution
    n = ws_edit.shape[0]
    chunks = [(k, min(n, k + cfg.chunk)) for k in range(0, n, cfg.chunk)]
    total = len(chunks) * cfg.iters
    out = torch.zeros_like(ws_edit)
    prev: torch.Tensor | None = None
    step = 0
    t0 = time.perf_counter()
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    for a, b in chunks:
        w0 = ws_edit[a:b].detach()
        sd = {k: v[a:b] for k, v in style_deltas.items()} if style_deltas else None
        with torch.no_grad():
            initial = g.synthesis(w0, noise_mode="const", style_deltas=sd).clamp(-1, 1)
            mask = eye_mask(mesh(initial), res).to(initial)
        target = lip_target[a:b].to(initial)
        dw = torch.zeros_like(w0, requires_grad=True)
        optim = torch.optim.Adam([dw], lr=cfg.lr)
        for it in range(cfg.iters):
            img = g.synthesis(w0 + dw, noise_mode="const", style_deltas=sd)
            terms = {"lip": lip_term(mesh(img), target, res),
                     "eye": eye_term(perc, img, initial, mask) if cfg.eye_weight else img.new_zeros(()),
                     "reg": reg_term(dw), "temporal": temporal_term(dw, prev)}
            loss = (cfg.lip_weight * terms["lip"] + cfg.eye_weight * terms["eye"] + cfg.reg_weight * terms["reg"]
                    + cfg.temporal_weight * terms["temporal"])
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            step += 1
            vals = {k: float(v.detach()) for k, v in terms.items()} | {"total": float(loss.detach())}
            if it == 0 and not first:
                first = vals
            last = vals
            if progress is not None:
                progress(step, total, vals["total"])
        out[a:b] = dw.detach()
        prev = out[b - 1]
    return out, {"frames": n, "chunks": len(chunks), "seconds": time.perf_counter() - t0,
                 "first": first, "last": last, "config": asdict(cfg),
                 "mean_abs_dw": float(out.abs().mean()) if n else math.nan}


# ------------------------------------------------------------------------------------------------ measurement
def _clip_crops(spec: str, bundle: Any) -> torch.Tensor:
    with open_source(spec, live=False) as src:
        frames = list(src)
    tracks = track_sequence(frames)
    return torch.stack([align_crop(f.image, t.quad, bundle.crop_size).image
                        for f, t in zip(frames, tracks, strict=True) if t.has_face]).float()


def _ground_truth_crop_landmarks(spec: str, frames: list[Any], keep: list[int], mats: list[Any]
                                 ) -> torch.Tensor | None:
    """Ground-truth landmarks [N, 468, 3] in crop px of a ``demo:portrait`` clip's frames ``keep`` (None for other
    inputs or when the regenerated clip does not match the decoded frames)."""
    if not spec.startswith("demo:"):
        return None
    name, demo_opt, _ = parse_demo_spec(spec)
    if name != "portrait" or not isinstance(demo_opt, DemoOptions):
        return None
    cfg, folder = config_from_demo(demo_opt)
    if folder:
        return None
    clip = SyntheticClip(cfg)
    out = []
    for i, m in zip(keep, mats, strict=True):
        f = clip[i]
        if not np.array_equal(f.image, frames[i].image):
            return None
        out.append(torch.from_numpy(landmarks_to_crop(f.landmarks, m, keep_z=True)))
    return torch.stack(out)


def continual_check(adapted: Any, base: Any, mesh: Any, spec: str, iters: int = 20) -> dict[str, Any]:
    """Continual adaptation: a new clip, adapted for ``iters`` iterations from the adapted bundle vs from the
    base bundle (reconstruction PSNR / landmark error on the new clip)."""
    crops = _clip_crops(spec, base)
    ws = invert_crops(base, crops)
    out: dict[str, Any] = {"spec": spec, "iters": iters}
    for name, b in (("from_base", base), ("from_adapted", adapted)):
        b = copy.deepcopy(b)
        out[f"{name}_0"] = reconstruction(b, crops, ws, mesh)
        t = time.perf_counter()
        adapt_generator(b, crops, ws, AdaptConfig(iters=iters))
        out[f"{name}_{iters}"] = reconstruction(b, crops, ws, mesh) | {"seconds": time.perf_counter() - t}
    return out


def measure_offline(spec: str, bundle_path: str, adapt_iters: int = 1000, expr_iters: int = 200,
                    strength: float = 1.5, strip: str | None = None,
                    continual_spec: str = "demo:portrait?seconds=2&fps=15&seed=9102") -> dict[str, Any]:
    """The docs/offline.md table: reconstruction before/after adaptation, the smile edit with and without the
    expression optimisation (inner-lip error against the original frames' face mesh, smile measure, eye-region
    change), timings per phase. ``strip``: write a side-by-side PNG there."""
    torch.set_num_threads(1)
    times: dict[str, float] = {}
    t = time.perf_counter()
    with open_source(spec, live=False) as src:
        frames = list(src)
    times["decode"] = time.perf_counter() - t
    t = time.perf_counter()
    tracks = track_sequence(frames)
    times["track"] = time.perf_counter() - t
    keep = [i for i, tr in enumerate(tracks) if tr.has_face]
    bundle = load_bundle(bundle_path)
    size = bundle.crop_size
    t = time.perf_counter()
    aligned = [align_crop(frames[i].image, tracks[i].quad, size) for i in keep]
    crops = torch.stack([c.image for c in aligned]).float()
    times["align"] = time.perf_counter() - t
    gt = _ground_truth_crop_landmarks(spec, frames, keep, [c.to_frame for c in aligned])
    t = time.perf_counter()
    ws = invert_crops(bundle, crops)
    times["invert"] = time.perf_counter() - t
    mesh = load_face_mesh()
    if mesh is None:
        raise RuntimeError("face mesh weights missing")
    g = bundle.generator
    with torch.no_grad():
        lm_orig = mesh(crops)
        recon0_img = g.synthesis(ws, noise_mode="const").clamp(-1, 1)
    res: dict[str, Any] = {"spec": spec, "frames": len(frames), "faces": len(keep)}
    res["before"] = reconstruction(bundle, crops, ws, mesh) | {"smile_per_unit": edit_response(bundle, ws, mesh)}
    t = time.perf_counter()
    summary = adapt_generator(bundle, crops, ws, AdaptConfig(iters=adapt_iters))
    times["adapt"] = time.perf_counter() - t
    res["after"] = reconstruction(bundle, crops, ws, mesh) | {"smile_per_unit": edit_response(bundle, ws, mesh)}
    res["adapt_loss"] = [summary["loss_first"], summary["loss_last"]]

    stack = EditStack.from_bundle(bundle)
    stack.set_strengths({"smile": strength}, reset=True)
    we, sd = stack.apply(ws)
    with torch.no_grad():
        recon = g.synthesis(ws, noise_mode="const").clamp(-1, 1)
        edited = g.synthesis(we, noise_mode="const", style_deltas=sd).clamp(-1, 1)
    t = time.perf_counter()
    dw, osum = optimise_expression(g, we, lm_orig, mesh, sd, ExpressionConfig(iters=expr_iters))
    times["optimise"] = time.perf_counter() - t
    with torch.no_grad():
        optimised = g.synthesis(we + dw, noise_mode="const", style_deltas=sd).clamp(-1, 1)
        mask = eye_mask(mesh(edited), g.img_resolution)
    lips = list(LIPS_INNER_LOOP)

    def row(img: torch.Tensor) -> dict[str, float]:
        with torch.no_grad():
            lm = mesh(img)
        eye = float(((img - edited).abs() * mask).sum() / (mask.sum() * 3).clamp_min(1))
        r = {"inner_lip_px": float((lm[:, lips, :2] - lm_orig[:, lips, :2]).norm(dim=-1).mean())}
        if gt is not None:
            r["inner_lip_gt_px"] = float((lm[:, lips, :2] - gt[:, lips, :2]).norm(dim=-1).mean())
        return r | {
            "smile": float(face_measures(lm)["smile"].mean()), "eye_region_abs_diff": eye}

    with torch.no_grad():  # the same edit through the unadapted generator (strip column)
        base_g = load_bundle(bundle_path).generator.eval()
        edited_base = base_g.synthesis(we, noise_mode="const", style_deltas=sd).clamp(-1, 1)
    res["continual"] = continual_check(bundle, load_bundle(bundle_path), mesh, continual_spec)
    res["edit"] = {"reconstruction": row(recon), f"smile {strength:+g}": row(edited),
                   f"smile {strength:+g} + expression opt": row(optimised), "original_smile":
                   float(face_measures(lm_orig)["smile"].mean())}
    if gt is not None:  # the face mesh's own inner-lip error on the original crops (the floor of the lip term)
        res["edit"]["original_mesh_vs_gt_inner_lip_px"] = float((lm_orig[:, lips, :2] - gt[:, lips, :2])
                                                                 .norm(dim=-1).mean())
    res["optimise"] = {k: v for k, v in osum.items() if k != "config"}
    res["times_s"] = times
    if strip:
        pick = np.linspace(0, len(keep) - 1, 5).round().astype(int)
        cols = [crops, recon0_img, recon, edited_base, edited, optimised]
        labels = ["original", "inverted", "adapted", "smile base G", "smile adapted", "+ expr. opt"]

        def u8(x: torch.Tensor) -> np.ndarray:
            a = ((x.permute(1, 2, 0).numpy() + 1) * 127.5).clip(0, 255).astype(np.uint8)
            return cv2.resize(a, (128, 128), interpolation=cv2.INTER_NEAREST)

        grid = np.concatenate([np.concatenate([u8(c[i]) for c in cols], axis=1) for i in pick], axis=0)
        head = np.full((18, grid.shape[1], 3), 255, np.uint8)
        for j, text in enumerate(labels):
            cv2.putText(head, text, (128 * j + 4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
        grid = np.concatenate([head, grid], axis=0)
        cv2.imwrite(strip, cv2.cvtColor(grid, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    return res


if __name__ == "__main__":
    import argparse
    import json

    ap = argparse.ArgumentParser(description="offline editing measurement (docs/offline.md)")
    ap.add_argument("spec", nargs="?", default="demo:portrait?seconds=3&fps=15&seed=9101")
    ap.add_argument("--bundle", default=str(DEFAULT_BUNDLE))
    ap.add_argument("--adapt-iters", type=int, default=1000)
    ap.add_argument("--expr-iters", type=int, default=200)
    ap.add_argument("--strip", default=None)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    out = measure_offline(a.spec, a.bundle, a.adapt_iters, a.expr_iters, strip=a.strip)
    text = json.dumps(out, indent=2)
    print(text)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text + "\n")
