"""Cost of one ``stylestream train encoder --from-generator`` step: FLOPs counted while the trainer's own step runs
(``torch.utils.flop_counter``), seconds per step on this machine, and a GPU estimate from the FLOPs.

    python -m benchmarks.bench_train_cost --bundle models/bundles/default --batch 8 --steps 20      # the small config
    python -m benchmarks.bench_train_cost --generator ffhq-config-f --key-encoder e4e --vien-preset vit-b16 \\
        --batch 2 --steps 2                                                                   # config-f, in memory

The step is :meth:`training.train_encoder.EncoderTrainer.step_rendered` itself — render a frame pair with the
generator, key-encode the earlier frame, ViEN forward + backward through the generator, L2 / SSIM / perceptual and
the face-mesh landmark term on ``--landmark-batch`` samples, Adam — on a bundle loaded from ``--bundle`` or built
in memory from presets (random weights cost what trained ones cost; base codes come from the mapping network,
which does not change the cost). The GPU estimate divides the counted FLOPs by assumed *achieved* throughputs
(``--gpu-tflops``): no GPU was measured here, and the figures say so.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.provenance import command_line, provenance, write_result
from models.bundle import Bundle, load_bundle, new_bundle
from models.e4e import PRESETS as STYLE_ENCODER_PRESETS
from models.e4e import StyleEncoder, StyleEncoderConfig
from models.errors import UserError
from models.stylegan2 import GENERATOR_PRESETS, count_parameters
from models.vit_encoder import ENCODER_PRESETS
from training import common
from training.train_encoder import EncoderTrainConfig, EncoderTrainer


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", type=Path, default=None, help="a bundle folder (else one is built from the presets)")
    p.add_argument("--generator", default="ffhq-config-f", choices=list(GENERATOR_PRESETS))
    p.add_argument("--key-encoder", default="e4e", choices=[*STYLE_ENCODER_PRESETS, *ENCODER_PRESETS],
                   help="e4e / psp (released IR-SE-50) or a ViT FrEN preset")
    p.add_argument("--vien-preset", default="vit-b16", choices=list(ENCODER_PRESETS),
                   help="ViEN preset when the key encoder is e4e / pSp (a ViT FrEN's ViEN has the FrEN's config)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--landmark-batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up step)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--gpu-tflops", default="40,100",
                   help="assumed achieved GPU throughputs (TFLOP/s, comma-separated) for the estimate")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--markdown", type=Path, default=None)


def preset_bundle(generator: str, key_encoder: str) -> Bundle:
    """Random weights at the given presets: generator + key-frame encoder (e4e / pSp at the crop size 256, or a ViT
    FrEN), no ViEN."""
    if key_encoder in STYLE_ENCODER_PRESETS:
        b = new_bundle(generator, None, name=f"{generator}+{key_encoder}")
        g = b.generator
        cfg = STYLE_ENCODER_PRESETS[key_encoder]
        enc = StyleEncoder(StyleEncoderConfig(**{**cfg.to_dict(), "n_styles": g.num_ws, "w_dim": g.w_dim}))
        enc.latent_avg.copy_(g.mapping.w_avg.expand(g.num_ws, -1))
        b.fren = enc.eval().requires_grad_(False)
        return b
    b = new_bundle(generator, key_encoder, name=f"{generator}+{key_encoder}")
    b.vien = None
    return b


def run(args: argparse.Namespace) -> int:
    logging.getLogger("stylestream.train").setLevel(logging.WARNING)
    if args.batch < 1 or args.steps < 1:
        raise UserError("--batch and --steps must be ≥ 1")
    tflops = [float(x) for x in args.gpu_tflops.split(",") if x.strip()]
    torch.set_num_threads(args.threads)
    b = load_bundle(args.bundle) if args.bundle else preset_bundle(args.generator, args.key_encoder)
    with tempfile.TemporaryDirectory(prefix="stylestream-cost-") as tmp:
        cfg = EncoderTrainConfig(out=tmp, bundle=str(args.bundle or ""), from_generator=True, w_source="mapping",
                                 motion="interpolate", batch=args.batch, landmark_batch=args.landmark_batch,
                                 vien_preset=args.vien_preset, threads=args.threads, cache="")
        tr = EncoderTrainer(cfg, torch.device("cpu"), common.Dist(), bundle=b)
        tr.make_rendered(None)
        tr.step_rendered()  # warm-up (allocations, first-call set-up)
        with FlopCounterMode(display=False) as fc:
            tr.step_rendered()
        secs = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            tr.step_rendered()
            secs.append(time.perf_counter() - t0)
    total = fc.get_total_flops()
    counts = fc.get_flop_counts()
    parts = {name: sum(ops.values()) for name, ops in counts.items() if name != "Global" and "." not in name}
    s_step = statistics.median(secs)
    g = b.generator
    row = {
        "bundle": str(args.bundle) if args.bundle else None,
        "generator": f"{g.img_resolution}², {g.num_ws} W+ entries ({count_parameters(g):,} parameters)",
        "key_encoder": b.fren.describe() if isinstance(b.fren, StyleEncoder) else f"ViT FrEN {b.fren.cfg.to_dict()}",
        "vien": {**tr.vien.cfg.to_dict(), "params": count_parameters(tr.vien)},
        "crop_size": b.crop_size, "batch": args.batch, "landmark_batch": min(args.landmark_batch, args.batch),
        "gflop_per_step": total / 1e9, "gflop_per_sample": total / 1e9 / args.batch,
        "gflop_by_module": {k: v / 1e9 for k, v in sorted(parts.items(), key=lambda kv: -kv[1])},
        "cpu_s_per_step": s_step, "cpu_s_per_step_all": secs, "cpu_gflops_achieved": total / 1e9 / s_step,
        "gpu_estimate": [{"assumed_tflops": t, "s_per_step": total / (t * 1e12),
                          "hours_per_10k_steps": total / (t * 1e12) * 1e4 / 3600} for t in tflops],
    }
    out = {"benchmark": "train_cost", "command": command_line(), "provenance": provenance("cpu"), "results": [row]}
    text = markdown(out)
    print(text)
    write_result(args.json, out)
    write_result(args.markdown, text)
    return 0


def markdown(out: dict) -> str:
    r, pv = out["results"][0], out["provenance"]
    load = " / ".join(map(str, pv.get("load_avg", [])))
    lines = [
        f"Measured {pv.get('date')} on {pv.get('cpu')} ({pv.get('cpu_count')} cores, {pv.get('torch_threads')} torch "
        f"thread(s)), torch {pv.get('torch')}, commit {pv.get('git_commit')}, load average {load} (1 / 5 / 15 min).",
        "",
        f"Command: `{out['command']}`",
        "",
        f"One `train encoder --from-generator` step: generator {r['generator']}; key-frame encoder "
        f"{r['key_encoder']}; ViEN ViT dim {r['vien']['dim']} × depth {r['vien']['depth']} "
        f"({r['vien']['params']:,} parameters) at {r['crop_size']}² crops; batch {r['batch']}, face-mesh terms on "
        f"{r['landmark_batch']}.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| FLOPs per step (counted) | {r['gflop_per_step']:.1f} GFLOP ({r['gflop_per_sample']:.1f} per sample) |",
        f"| CPU seconds per step (median of {len(r['cpu_s_per_step_all'])}) | {r['cpu_s_per_step']:.2f} s |",
        f"| CPU throughput achieved | {r['cpu_gflops_achieved']:.1f} GFLOP/s |",
    ]
    for e in r["gpu_estimate"]:
        lines.append(f"| GPU estimate at an assumed {e['assumed_tflops']:g} TFLOP/s achieved | "
                     f"{e['s_per_step']:.3g} s per step, {e['hours_per_10k_steps']:.3g} h per 10k steps |")
    lines += ["", "FLOPs by network (GFLOP per step): " + ", ".join(
        f"{k} {v:.1f}" for k, v in r["gflop_by_module"].items()), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
