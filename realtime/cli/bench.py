"""`stylestream bench models|pipeline|streams|fidelity|quality`: speed of the models, the filter and many streams,
fidelity, and the picture on an unseen face (benchmarks/)."""

from __future__ import annotations

import argparse
import importlib

from benchmarks import bench_fidelity, bench_models, bench_pipeline, bench_quality, bench_streams


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="bench_kind", metavar="KIND", required=True)

    bench_models.add_arguments(sub.add_parser("models", help="ms per call of generator and encoders"))
    bench_pipeline.add_arguments(sub.add_parser("pipeline", help="end-to-end fps, per-stage ms, latency, drops"))
    bench_streams.add_arguments(sub.add_parser("streams", help="N streams on one shared engine: one call per frame, "
                                                                  "batched, Triton"))
    bench_fidelity.add_arguments(sub.add_parser("fidelity", help="PSNR, SSIM, landmarks, TC, warping error"))
    bench_quality.add_arguments(sub.add_parser("quality", help="every edit in both compositing modes on an unseen "
                                                               "face: effect, off-target change, flicker, cost"))


def main(args: argparse.Namespace) -> int:
    return importlib.import_module(f"benchmarks.bench_{args.bench_kind}").run(args)
