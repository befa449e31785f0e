"""Export + parity + speed: ONNX Runtime against torch through the one Engine interface (the docs/export.md tables).

    python -m benchmarks.bench_export --random tiny-128:tiny --randomize-heads -o /tmp/ss-export/tiny128 \\
        --speed --threads 1 --json /tmp/ss-export/report-t1.json

Exports the bundle (reusing a matching export folder), checks parity of every model with
:func:`export.parity.run_parity`, optionally times ``encode_key`` / ``encode_reuse`` / ``synthesize`` of
:class:`~realtime.engines.TorchEngine` (CPU, fp32, eager) and :class:`~realtime.engines.OrtEngine` (CPU provider,
fp32) with the same thread count, prints markdown and writes JSON with provenance.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.provenance import provenance
from benchmarks.timing import summarise, time_calls
from export.artifacts import bundle_hash, read_manifest
from export.onnx import available_models, example_inputs, export_bundle
from export.parity import format_table, randomize_heads, run_parity
from models.bundle import Bundle, load_bundle, new_bundle
from models.errors import UserError
from realtime.engines import OrtEngine, TorchEngine


def speed_compare(bundle: Bundle, onnx_dir: str | os.PathLike, threads: int = 2, batch: int = 1,
                  iters: int = 20, warmup: int = 3, max_seconds: float = 20.0, seed: int = 0) -> dict[str, Any]:
    """Median ms per call of encode_key / encode_reuse / synthesize for TorchEngine (CPU, fp32, eager) and
    OrtEngine (CPU provider, fp32) with the same thread count, and torch/ORT ratios (> 1: ORT is faster)."""
    torch.set_num_threads(threads)
    eng_t = TorchEngine(bundle, device="cpu", precision="fp32")
    eng_o = OrtEngine(bundle, device="cpu", precision="fp32", model_dir=onnx_dir, threads=threads)
    crops = example_inputs(bundle, "fren", batch=batch, seed=seed)["crops"]
    prev = example_inputs(bundle, "vien", batch=batch, seed=seed)["prev_ws"]
    ws = example_inputs(bundle, "synthesis", batch=batch, seed=seed)["ws"]
    calls: dict[str, Callable[[Any], object]] = {
        "encode_key": lambda e: e.encode_key(crops),
        "encode_reuse": lambda e: e.encode_reuse(crops, prev),
        "synthesize": lambda e: e.synthesize(ws),
    }
    out: dict[str, Any] = {"threads": threads, "batch": batch, "calls": {}}
    for name, fn in calls.items():
        row: dict[str, Any] = {}
        # alternate the two engines in short rounds so background load hits both alike
        ms: dict[str, list[float]] = {"torch": [], "onnx": []}
        for _ in range(2):
            for key, eng in (("torch", eng_t), ("onnx", eng_o)):
                ms[key] += time_calls(lambda e=eng, f=fn: f(e), warmup=warmup, iters=max(1, iters // 2),
                                      max_seconds=max_seconds / 4)
        for key in ms:
            row[key] = summarise(ms[key])
        row["ratio_torch_over_onnx"] = row["torch"]["median_ms"] / row["onnx"]["median_ms"]
        out["calls"][name] = row
    frame_t = out["calls"]["encode_reuse"]["torch"]["median_ms"] + out["calls"]["synthesize"]["torch"]["median_ms"]
    frame_o = out["calls"]["encode_reuse"]["onnx"]["median_ms"] + out["calls"]["synthesize"]["onnx"]["median_ms"]
    out["frame"] = {"torch_ms": frame_t, "onnx_ms": frame_o, "ratio_torch_over_onnx": frame_t / frame_o}
    eng_o.close()
    eng_t.close()
    return out


def format_speed(speed: dict[str, Any]) -> str:
    """Markdown table of :func:`speed_compare`'s result."""
    lines = ["| call | torch ms (median) | ONNX Runtime ms (median) | torch / ORT |", "|---|---|---|---|"]
    for name, row in speed["calls"].items():
        lines.append(f"| {name} | {row['torch']['median_ms']:.2f} | {row['onnx']['median_ms']:.2f} "
                     f"| {row['ratio_torch_over_onnx']:.2f}× |")
    f = speed["frame"]
    lines.append(f"| frame (encode_reuse + synthesize) | {f['torch_ms']:.2f} | {f['onnx_ms']:.2f} "
                 f"| {f['ratio_torch_over_onnx']:.2f}× |")
    return "\n".join(lines)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--bundle", type=Path, help="bundle folder")
    src.add_argument("--random", metavar="GEN:ENC", help="an untrained bundle from presets, e.g. tiny-128:tiny")
    ap.add_argument("--randomize-heads", action="store_true",
                    help="random encoder head weights (untrained encoders otherwise ignore their input)")
    ap.add_argument("-o", "--out", type=Path, required=True, help="ONNX export folder (reused when it matches)")
    ap.add_argument("--precisions", default="fp32,fp16")
    ap.add_argument("--speed", action="store_true", help="also time ORT vs torch on the CPU")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1, help="batch for the speed comparison")
    ap.add_argument("--json", type=Path, default=None, help="write results + provenance here")


def run(args: argparse.Namespace, argv: Sequence[str] | None = None) -> int:
    torch.set_num_threads(args.threads)
    try:
        if args.bundle is not None:
            bundle = load_bundle(args.bundle)
        else:
            gen, _, enc = args.random.partition(":")
            bundle = new_bundle(gen, enc or "tiny", name=f"random-{gen}")
        if args.randomize_heads:
            randomize_heads(bundle)
        precs = [p.strip() for p in args.precisions.split(",") if p.strip()]
        have: dict[str, Any] = {}
        if (args.out / "manifest.json").exists():
            m = read_manifest(args.out)
            have = m.get("models", {}) if m.get("bundle_hash") == bundle_hash(bundle) else {}
        for p in precs:
            missing = [k for k in available_models(bundle) if f"{k}.{p}" not in have]
            if missing:
                export_bundle(bundle, args.out, precision=p, models=missing, progress=print)
        results = run_parity(bundle, args.out, precisions=precs, progress=print)
        print(format_table(results))
        report: dict[str, Any] = {"parity": [r.to_dict() for r in results]}
        if args.speed:
            speed = speed_compare(bundle, args.out, threads=args.threads, batch=args.batch)
            print(format_speed(speed))
            report["speed"] = speed
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        report["provenance"] = provenance("cpu")
        report["provenance"]["loadavg_1_5_15"] = list(os.getloadavg())  # other work on the machine while timing
        report["command"] = "python -m benchmarks.bench_export " + " ".join(sys.argv[1:] if argv is None else argv)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if all(r.ok for r in results) else 1


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_export", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    return run(ap.parse_args(argv), argv)


if __name__ == "__main__":
    raise SystemExit(main())
