"""Reconstruction fidelity and temporal consistency of a bundle on a held-out synthetic clip.

    stylestream bench fidelity --bundle models/bundles/default --json docs/bench/fidelity.json \
        --markdown docs/fidelity.md --strip docs/img/fidelity_strip.png --plot docs/img/fidelity_tc.png

The clip (default ``synthetic:seed=9001,frames=90``: a seed and motion never used in training) is aligned with
its ground-truth landmarks (training/data.py). Modes:

* ``fren``  — FrEN on every frame (the single-frame baseline);
* ``vien``  — Video2StyleGAN reuse: FrEN on frame 0, then ViEN(frame t, W+ of t−1) — fine layers carried forever;
* ``vien+key``: as ``vien`` but FrEN refreshes the fine layers every ``--key-every`` frames (the runtime's policy);
* ``coarse`` — reuse without a ViEN (``--reuse coarse``): FrEN on frame 0, then frame t's coarse layers from the
  key-frame encoder's coarse-only forward and the fine layers of frame 0 (no trained ViEN needed);
* ``coarse+key`` — as ``coarse``, FrEN refreshes the fine layers every ``--key-every`` frames;
* ``fren+smooth`` — FrEN on every frame, then a non-causal Gaussian over the W+ codes (offline baseline).

Metrics per mode (crops in [0, 1]): PSNR, SSIM (Gaussian 11×11), landmark error — mean distance in crop pixels
between MediaPipe's runtime landmarks on the reconstruction and on the input crop (both upscaled 4× for the
detector, so the error is measured at crop size), and TC as Video2StyleGAN defines it: the mean RMSE between a
frame and its 6 neighbours (±1, ±2, ±3 frames; crops are already aligned). The input clip's own TC is the
reference: the true motion has non-zero TC, so a result far below it means the output stopped following motion.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure

from benchmarks.metrics import landmark_error, mean_frame_psnr, temporal_consistency, warping_error
from benchmarks.provenance import command_line, provenance, write_result
from models.bundle import DEFAULT_BUNDLE, load_bundle
from realtime.vision.mediapipe_runtime import detect_landmarks, install_native_stderr_filter
from training.common import save_grid
from training.data import load_crops
from training.losses import LPIPSLoss, ssim


def mediapipe_landmarks(frames: torch.Tensor, upscale: int = 4) -> list[np.ndarray | None]:
    """MediaPipe runtime landmarks [468, 2] in crop pixels (or None) per frame [T, 3, S, S] in [0, 1]."""
    imgs = []
    for f in frames:
        u8 = (f.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
        imgs.append(cv2.resize(u8, None, fx=upscale, fy=upscale, interpolation=cv2.INTER_CUBIC))
    out = []
    for lm in detect_landmarks(imgs):
        out.append(None if lm is None else (lm[:, :2] + 0.5) / upscale - 0.5)
    return out


def gaussian_smooth(ws: torch.Tensor, sigma: float) -> torch.Tensor:
    """Non-causal Gaussian over time of W+ codes [T, num_ws, w_dim] (edges: renormalised window)."""
    r = max(1, math.ceil(3 * sigma))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=ws.dtype) / sigma) ** 2)
    out = torch.empty_like(ws)
    for t in range(ws.shape[0]):
        lo, hi = max(0, t - r), min(ws.shape[0], t + r + 1)
        w = k[lo - t + r : hi - t + r]
        out[t] = (ws[lo:hi] * w.view(-1, 1, 1)).sum(0) / w.sum()
    return out


@torch.no_grad()
def reconstruct(bundle, x: torch.Tensor, mode: str, key_every: int = 0, smooth_sigma: float = 2.0) -> torch.Tensor:
    """x [T, 3, S, S] in [-1, 1] → reconstructions [T, 3, S, S] in [-1, 1]."""
    g = bundle.generator
    if mode in ("fren", "fren+smooth"):
        ws = torch.cat([bundle.fren(x[t:t + 16]) for t in range(0, x.shape[0], 16)])
        if mode == "fren+smooth":
            ws = gaussian_smooth(ws, sigma=smooth_sigma)
        return torch.cat([g.synthesis(ws[t:t + 16]) for t in range(0, x.shape[0], 16)]).clamp(-1, 1)
    nc = g.layout.num_coarse
    if mode == "coarse":  # the key encoder's coarse layers per frame, fine layers from the last key frame
        coarse = torch.cat([bundle.fren.forward_coarse(x[t:t + 16], nc) for t in range(0, x.shape[0], 16)])
        ws = bundle.fren(x[:1])
        outs = [g.synthesis(ws)]
        for t in range(1, x.shape[0]):
            ws = bundle.fren(x[t:t + 1]) if key_every and t % key_every == 0 else \
                torch.cat([coarse[t:t + 1], ws[:, nc:]], 1)
            outs.append(g.synthesis(ws))
        return torch.cat(outs).clamp(-1, 1)
    if bundle.vien is None:
        raise SystemExit("the bundle has no ViEN")
    ws = bundle.fren(x[:1])
    outs = [g.synthesis(ws)]
    for t in range(1, x.shape[0]):
        ws = bundle.vien(x[t:t + 1], ws)
        if key_every and t % key_every == 0:
            ws = torch.cat([ws[:, :nc], bundle.fren(x[t:t + 1])[:, nc:]], 1)
        outs.append(g.synthesis(ws))
    return torch.cat(outs).clamp(-1, 1)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", default=str(DEFAULT_BUNDLE))
    p.add_argument("--clip", default="synthetic:seed=9001,frames=90", help="held-out data spec (one clip)")
    p.add_argument("--key-every", type=int, default=30, help="FrEN key-frame interval of the vien+key mode")
    p.add_argument("--smooth-sigma", type=float, default=2.0, help="σ (frames) of the fren+smooth baseline")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--markdown", type=Path, default=None, help="write the table (with provenance) here")
    p.add_argument("--strip", type=Path, default=None, help="write a PNG strip: input / FrEN / ViEN / coarse rows")
    p.add_argument("--plot", type=Path, default=None, help="write a PNG bar chart of TC and warping error per mode")
    p.add_argument("--lpips-net", default="vgg", choices=["vgg", "alex"], help="LPIPS trunk (with --lpips-backbone)")
    p.add_argument("--lpips-backbone", type=Path, default=None,
                   help="local torchvision-style vgg16/alexnet state dict: adds LPIPS (nothing is downloaded)")
    p.add_argument("--lpips-lin", type=Path, default=None, help="optional LPIPS linear heads (lpips' v0.1 .pth)")


MODES = ("fren", "vien", "vien+key", "coarse", "coarse+key", "fren+smooth")


def _u8(frames01: torch.Tensor) -> list[np.ndarray]:
    return [(f.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8) for f in frames01]


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)

    b = load_bundle(args.bundle)
    crops = load_crops([args.clip], b.crop_size)
    x = crops.float_images(torch.arange(len(crops)))
    x01 = (x + 1) / 2
    in_u8 = _u8(x01)
    lpips = None
    if args.lpips_backbone is not None:
        lpips = LPIPSLoss(args.lpips_net, args.lpips_backbone, args.lpips_lin).eval()
    ref_lm = mediapipe_landmarks(x01)
    rows = {"input": {"tc": temporal_consistency(x01, data_range=1.0), "warp_err": warping_error(in_u8, in_u8)}}
    recs = {}
    for mode in MODES:
        t0 = time.perf_counter()
        y = reconstruct(b, x, mode.removesuffix("+key"), args.key_every if mode.endswith("+key") else 0,
                        args.smooth_sigma)
        ms = (time.perf_counter() - t0) / len(x) * 1e3
        y01 = (y + 1) / 2
        recs[mode] = y
        lm_err, used = landmark_error(ref_lm, mediapipe_landmarks(y01))
        rows[mode] = {"psnr": mean_frame_psnr(y01, x01), "ssim": float(ssim(y, x).mean()), "landmark_px": lm_err,
                      "landmark_missing": len(x) - used, "tc": temporal_consistency(y01, data_range=1.0),
                      "warp_err": warping_error(_u8(y01), in_u8), "ms_per_frame": ms}
        if lpips is not None:
            with torch.no_grad():
                rows[mode]["lpips"] = float(lpips(y, x).mean())
    f, v, c = rows["fren"], rows["vien"], rows["coarse"]
    summary = {"tc_reduction": 1 - v["tc"] / f["tc"], "psnr_cost": 1 - v["psnr"] / f["psnr"],
               "coarse_tc_reduction": 1 - c["tc"] / f["tc"], "coarse_psnr_cost": 1 - c["psnr"] / f["psnr"]}
    out = {"bundle": str(args.bundle), "clip": args.clip, "frames": len(x), "crop_size": b.crop_size,
           "smooth_sigma": args.smooth_sigma, "key_every": args.key_every,
           "rows": rows, "summary": summary, "provenance": {**provenance(), "command": command_line()}}
    text = json.dumps(out, indent=2)
    print(text)
    write_result(args.json, text + "\n")
    if args.strip:
        idx = torch.arange(0, min(len(x), 48), 6)
        save_grid(args.strip, [x[idx], recs["fren"][idx], recs["vien"][idx], recs["coarse"][idx]], scale=2)
    if args.plot:
        plot(out, args.plot)
    write_result(args.markdown, markdown(out))
    return 0


def plot(out: dict, path: Path) -> None:
    """Bar chart: TC and warping error per mode (the input clip's own values as reference lines)."""
    r = out["rows"]
    fig = Figure(figsize=(10, 3.4))  # no pyplot: no global figure state, no GUI backend
    axes = fig.subplots(1, 2)
    for ax, key, label in ((axes[0], "tc", "TC (mean RMSE to ±3 neighbours)"),
                           (axes[1], "warp_err", "warping error (Lai et al.)")):
        ax.bar(list(MODES), [r[m][key] for m in MODES], color=colormaps["tab10"](range(len(MODES))))
        ax.axhline(r["input"][key], color="k", ls="--", lw=1, label="input clip")
        ax.set_title(label, fontsize=9)
        ax.tick_params(axis="x", labelsize=8, labelrotation=30)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))


def markdown(out: dict) -> str:
    r, s, pv = out["rows"], out["summary"], out["provenance"]
    lines = [
        "# Fidelity of the default bundle",
        "",
        f"Held-out clip `{out['clip']}` ({out['frames']} frames, {out['crop_size']}² aligned crops), bundle "
        f"`{out['bundle']}`. Produced by:",
        "",
        "```",
        pv["command"],
        "```",
        "",
        "| mode | PSNR dB ↑ | SSIM ↑ | landmark err px ↓ (no face) | TC ↓ | warping error ↓ |",
        "|---|---|---|---|---|---|",
    ]
    for mode in [m for m in MODES if m in r]:
        m = r[mode]
        lines.append(f"| {mode} | {m['psnr']:.2f} | {m['ssim']:.3f} | {m['landmark_px']:.2f} ({m['landmark_missing']}) "
                     f"| {m['tc']:.4f} | {m.get('warp_err', float('nan')):.5f} |")
    if any("lpips" in r[m] for m in MODES if m in r):
        lines += ["", "LPIPS ↓ (user-supplied weights): " + ", ".join(
            f"{m} {r[m]['lpips']:.4f}" for m in MODES if m in r and "lpips" in r[m])]
    lines += [
        f"| input clip | – | – | – | {r['input']['tc']:.4f} | {r['input'].get('warp_err', float('nan')):.5f} |",
        "",
        f"ViEN vs FrEN: TC {100 * s['tc_reduction']:+.1f} % reduction (goal ≥ 40 %), PSNR cost "
        f"{100 * s['psnr_cost']:.1f} % (goal ≤ 5 %). Coarse reuse (no ViEN) vs FrEN: TC "
        f"{100 * s.get('coarse_tc_reduction', float('nan')):+.1f} % reduction, PSNR cost "
        f"{100 * s.get('coarse_psnr_cost', float('nan')):.1f} %.",
        "",
        "Modes: `fren` = FrEN on every frame; `vien` = FrEN on frame 0, then ViEN with the previous W+ (fine layers "
        "carried from frame 0); `vien+key` = as `vien`, FrEN refreshes the fine layers every key-frame interval; "
        "`coarse` = reuse without a ViEN (`--reuse coarse`): FrEN on frame 0, then each frame's coarse layers from "
        "the key-frame encoder's coarse-only forward with frame 0's fine layers; `coarse+key` = as `coarse`, with "
        "the key-frame refreshes; "
        f"`fren+smooth` = FrEN on every frame, then a non-causal Gaussian (σ = {out.get('smooth_sigma', 2.0):g} "
        "frames) over the W+ codes (an offline baseline). Warping error (Lai et al. 2018): masked MSE between a "
        "reconstruction and the previous one warped by the input's optical flow (Farnebäck, forward-backward "
        "occlusion check), images in [0, 1]. "
        "Landmark error: MediaPipe runtime on the reconstruction vs on the input crop (4× upscaled for detection, "
        "measured in crop pixels). TC: mean RMSE (images in [0, 1]) between a frame and its ±1…3 neighbours.",
        "",
        "![input / FrEN / ViEN / coarse reuse](img/fidelity_strip.png)",
        "",
        "![TC and warping error per mode](img/fidelity_tc.png)",
        "",
        "Rows: input crops (every 6th frame), FrEN on every frame, ViEN with reuse, coarse reuse without ViEN. "
        "What the numbers mean and why "
        "the TC goal is not met: [training.md](training.md#fidelity-of-the-default-bundle). This file is written "
        "by the command above.",
        "",
        f"Machine: {pv.get('cpu')} ({pv.get('cpu_count')} cores, torch {pv.get('torch')}, "
        f"{pv.get('torch_threads')} thread(s)), commit {pv.get('git_commit')}, {pv.get('date')}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    install_native_stderr_filter()  # MediaPipe's start-up lines, as the CLI does
    raise SystemExit(main())
