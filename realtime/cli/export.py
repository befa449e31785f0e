"""`stylestream export BUNDLE --to onnx|tensorrt|triton -o DIR`: export the networks for accelerated runtimes.

* ``--to onnx``      DIR gets fren/vien/synthesis(/fren_coarse) ``.{precision}.onnx`` + manifest.json, then a parity
                     check against torch in ONNX Runtime (CPU) whose table is printed and saved as DIR/parity.json.
* ``--to tensorrt``  as onnx, then TensorRT engines (``*.plan``, cached by model hash/shapes/precision/GPU/version)
                     built into DIR; needs TensorRT and a CUDA device (checked first, one clear message).
* ``--to triton``    DIR becomes a Triton model repository (config.pbtxt, version folders, dynamic batching, a
                     key-frame ensemble); serve it with ``tritonserver --model-repository DIR`` (docs/export.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from export.artifacts import onnx_filename
from export.onnx import available_models, export_bundle
from export.parity import format_table, run_parity
from export.tensorrt import build_engine, require_tensorrt
from export.triton import write_model_repository
from models.bundle import load_bundle
from models.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", type=Path, help="bundle folder")
    p.add_argument("--to", choices=("onnx", "tensorrt", "triton"), default="onnx", help="target (default onnx)")
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    p.add_argument("--precision", choices=("fp32", "fp16", "both"), default=None,
                   help="fp32 or fp16 (float32 interface, float16 inside) or both; default fp32, fp16 for tensorrt")
    p.add_argument("--max-batch", type=int, default=8, help="largest batch the engines / Triton accept (default 8)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (≥ 17, default 18)")
    p.add_argument("--models", default=None,
                   help="comma-separated subset of fren,vien,synthesis,fren_coarse (default: all the bundle has; "
                        "fren_coarse for e4e / pSp key encoders)")
    p.add_argument("--no-check", action="store_true", help="skip the parity check after exporting")
    p.add_argument("--instance-kind", choices=("gpu", "cpu"), default="gpu",
                   help="triton: run model instances on the GPU (default) or CPU")
    p.add_argument("--no-ensemble", action="store_true", help="triton: do not write the key-frame ensemble")


def main(args: argparse.Namespace) -> int:
    def say(msg: str) -> None:
        print(msg, flush=True)

    precision = args.precision or ("fp16" if args.to == "tensorrt" else "fp32")
    precisions = ["fp32", "fp16"] if precision == "both" else [precision]
    if args.max_batch < 1:
        raise UserError(f"--max-batch must be ≥ 1, got {args.max_batch}")
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    out: Path = args.output
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder")
    if args.to == "tensorrt":
        require_tensorrt()  # fail before minutes of exporting
    t0 = time.perf_counter()
    say(f"loading bundle {args.bundle}")
    bundle = load_bundle(args.bundle)
    if args.to == "triton":
        if models is not None:
            raise UserError("--models is not supported with --to triton (the repository holds every model)")
        names = write_model_repository(bundle, out, precisions, max_batch=args.max_batch,
                                       instance_kind="KIND_GPU" if args.instance_kind == "gpu" else "KIND_CPU",
                                       ensemble=not args.no_ensemble, progress=say)
        say(f"wrote Triton model repository {out} ({len(names)} models) in {time.perf_counter() - t0:.0f} s; "
            f"serve it with: tritonserver --model-repository {out.resolve()}")
        return 0

    for p in precisions:
        export_bundle(bundle, out, precision=p, models=models, opset=args.opset, max_batch=args.max_batch,
                      progress=say)
    failed = False
    if not args.no_check:
        say("parity check against torch fp32 (ONNX Runtime, CPU provider)")
        results = run_parity(bundle, out, precisions=precisions, models=models, progress=lambda m: say("  " + m))
        (out / "parity.json").write_text(json.dumps([r.to_dict() for r in results], indent=2) + "\n")
        say(format_table(results))
        failed = not all(r.ok for r in results)
    if args.to == "tensorrt":
        for p in precisions:
            for m in models or available_models(bundle):
                plan = build_engine(out / onnx_filename(m, p), precision=p, cache_dir=out, max_batch=args.max_batch,
                                    progress=say)
                say(f"engine {plan.name}")
    say(f"done in {time.perf_counter() - t0:.0f} s → {out}")
    if failed:
        print("stylestream export: error: parity check failed (see the table above)", file=sys.stderr)
        return 1
    return 0
