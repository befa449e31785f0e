"""`stylestream bench models|pipeline`: speed of the models and of the whole filter (benchmarks/)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="bench_kind", metavar="KIND", required=True)
    from benchmarks import bench_models, bench_pipeline

    bench_models.add_arguments(sub.add_parser("models", help="ms per call of generator and encoders"))
    bench_pipeline.add_arguments(sub.add_parser("pipeline", help="end-to-end fps, per-stage ms, latency, drops"))


def main(args: argparse.Namespace) -> int:
    import importlib

    return importlib.import_module(f"benchmarks.bench_{args.bench_kind}").run(args)
