"""`stylestream bench models|pipeline|fidelity`: speed of the models and the filter, and fidelity (benchmarks/)."""

from __future__ import annotations

import argparse
import importlib

from benchmarks import bench_fidelity, bench_models, bench_pipeline


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="bench_kind", metavar="KIND", required=True)

    bench_models.add_arguments(sub.add_parser("models", help="ms per call of generator and encoders"))
    bench_pipeline.add_arguments(sub.add_parser("pipeline", help="end-to-end fps, per-stage ms, latency, drops"))
    bench_fidelity.add_arguments(sub.add_parser("fidelity", help="PSNR, SSIM, landmarks, TC, warping error"))


def main(args: argparse.Namespace) -> int:
    return importlib.import_module(f"benchmarks.bench_{args.bench_kind}").run(args)
