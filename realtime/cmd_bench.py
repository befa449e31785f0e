"""`stylestream bench models`: speed of the models (benchmarks/bench_models.py)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="bench_kind", metavar="KIND", required=True)
    from benchmarks import bench_models

    bench_models.add_arguments(sub.add_parser("models", help="ms per call of generator and encoders"))


def main(args: argparse.Namespace) -> int:
    if args.bench_kind == "models":
        from benchmarks import bench_models

        return bench_models.run(args)
    return 2
