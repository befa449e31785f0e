"""`stylestream edits fit|list|measure`: discover edits for a bundle, list them, measure them.

* ``fit BUNDLE``: encodes synthetic clips with the bundle's FrEN, fits the W directions (supervised and
  InterFaceGAN routes, the better one per edit), the random-identity mask, the pose/expression network and its
  targets, the keep_mouth lip subspace and StyleSpace channels per region (training/directions.py), and writes
  them into the bundle folder atomically (same-name edits are replaced; the other edits stay).
* ``list BUNDLE``: name, kind, range, description (the same list ``run --list-edits`` and the web UI use).
* ``measure BUNDLE``: benchmarks/bench_edits.py — table, JSON and PNG strips on held-out synthetic clips.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from pathlib import Path

import torch

from benchmarks import bench_edits
from benchmarks.provenance import command_line
from models.bundle import Bundle, load_bundle, swap_dir_into_place
from models.errors import BundleError, UserError
from realtime.cli.common import print_edits
from realtime.cli.options import add_config, config_from_args
from training.directions import FitConfig, fit_edits, merge_into_bundle
from training.losses import load_face_mesh


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="edits_cmd", metavar="ACTION", required=True)
    f = sub.add_parser("fit", help="fit edits and store them in the bundle (atomic)")
    f.add_argument("bundle", type=Path, help="bundle folder (updated in place)")
    f.add_argument("--out", type=Path, default=None, help="write the result to this folder instead")
    add_config(f, FitConfig)
    f.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    f.add_argument("--report", type=Path, default=None, help="write the fit report (JSON) here")
    ls = sub.add_parser("list", help="list a bundle's edits")
    ls.add_argument("bundle", type=Path, help="bundle folder")
    ls.add_argument("--json", action="store_true", help="print the specs as JSON")
    m = sub.add_parser("measure", help="measure the edits on held-out synthetic clips (table, JSON, PNG strips)")
    bench_edits.add_arguments(m)


def _fit(args: argparse.Namespace) -> int:
    torch.set_num_threads(max(1, args.threads))
    cfg = config_from_args(FitConfig, args)
    if len(cfg.seeds) < 2:
        raise UserError("--seeds needs at least two clips (the last one validates)")
    bundle = load_bundle(args.bundle)
    if bundle.fren is None:
        raise UserError(f"{args.bundle}: fitting edits needs a bundle with a FrEN encoder")
    mesh = load_face_mesh()
    if mesh is None:
        logging.getLogger("stylestream.edits").warning(
            "no torch face mesh: only the supervised directions, random identity and the linear pose/expression "
            "map are fitted (no InterFaceGAN, keep_mouth, or landmark loss)")
    specs, tensors, report = fit_edits(bundle, cfg, mesh, command=command_line())
    merge_into_bundle(bundle, specs, tensors)
    out = args.out or args.bundle
    if out == args.bundle:
        _save_in_place(bundle, args.bundle)
    else:
        bundle.save(out)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report, indent=1, default=float) + "\n")
    print(f"{len(specs)} edits written to {out} ({report.get('fit_seconds', 0):.0f} s): "
          + ", ".join(s.name for s in specs))
    return 0


def _save_in_place(bundle: Bundle, path: Path) -> None:
    """Bundle.save into a sibling folder, carry over the folder's other files (README, …), swap atomically."""
    tmp = path.parent / f".{path.name}.edits-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        bundle.save(tmp)
        for f in path.iterdir():
            if f.is_file() and not (tmp / f.name).exists():
                shutil.copy2(f, tmp / f.name)
        swap_dir_into_place(tmp, path)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BundleError(f"cannot write bundle {path}: {exc.strerror or exc}") from None


def _list(args: argparse.Namespace) -> int:
    bundle = load_bundle(args.bundle)
    if args.json:
        print(json.dumps(bundle.edits, indent=1))
        return 0
    return print_edits(bundle)


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="[edits] %(message)s")
    if args.edits_cmd == "fit":
        return _fit(args)
    if args.edits_cmd == "list":
        return _list(args)
    return bench_edits.run(args)
