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
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="edits_cmd", metavar="ACTION", required=True)
    f = sub.add_parser("fit", help="fit edits and store them in the bundle (atomic)")
    f.add_argument("bundle", type=Path, help="bundle folder (updated in place)")
    f.add_argument("--out", type=Path, default=None, help="write the result to this folder instead")
    f.add_argument("--seeds", default="101,102,103,104,105",
                   help="synthetic clip seeds to fit on (comma-separated; the last is the validation clip)")
    f.add_argument("--frames", type=int, default=100, help="frames per clip")
    f.add_argument("--igan-samples", type=int, default=1000, help="InterFaceGAN samples (0: supervised only)")
    f.add_argument("--igan-source", choices=("encoded", "mapping"), default="encoded",
                   help="InterFaceGAN samples: around the encoded latents, or from the mapping network")
    f.add_argument("--pe-steps", type=int, default=200, help="pose/expression network training steps")
    f.add_argument("--lip-rank", type=int, default=12, help="keep_mouth: size of the removed lip subspace")
    f.add_argument("--max-gain", type=float, default=4.0, help="cap on the calibration gain of a direction")
    f.add_argument("--identity-layers", default="auto", help="random_identity W+ entries ('auto' or '5,6,7')")
    f.add_argument("--seed", type=int, default=0, help="random seed")
    f.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    f.add_argument("--report", type=Path, default=None, help="write the fit report (JSON) here")
    ls = sub.add_parser("list", help="list a bundle's edits")
    ls.add_argument("bundle", type=Path, help="bundle folder")
    ls.add_argument("--json", action="store_true", help="print the specs as JSON")
    m = sub.add_parser("measure", help="measure the edits on held-out synthetic clips (table, JSON, PNG strips)")
    from benchmarks import bench_edits

    bench_edits.add_arguments(m)


def _fit(args: argparse.Namespace) -> int:
    import torch

    from benchmarks.provenance import command_line
    from models.bundle import load_bundle
    from models.errors import UserError
    from training.directions import FitConfig, fit_edits, merge_into_bundle
    from training.losses import load_face_mesh

    torch.set_num_threads(max(1, args.threads))
    bundle = load_bundle(args.bundle)
    if bundle.fren is None:
        raise UserError(f"{args.bundle}: fitting edits needs a bundle with a FrEN encoder")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    if len(seeds) < 2:
        raise UserError("--seeds needs at least two clips (the last one validates)")
    mesh = load_face_mesh()
    if mesh is None:
        logging.getLogger("stylestream.edits").warning(
            "no torch face mesh: only the supervised directions, random identity and the linear pose/expression "
            "map are fitted (no InterFaceGAN, keep_mouth, or landmark loss)")
    cfg = FitConfig(seeds=seeds, frames=args.frames, igan_samples=args.igan_samples, igan_source=args.igan_source,
                    pe_steps=args.pe_steps, lip_rank=args.lip_rank, max_gain=args.max_gain,
                    identity_layers=args.identity_layers, seed=args.seed)
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


def _save_in_place(bundle: object, path: Path) -> None:
    """Bundle.save into a sibling folder, carry over the folder's other files (README, …), swap atomically."""
    import os
    import shutil

    from models.errors import BundleError

    tmp = path.parent / f".{path.name}.edits-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        bundle.save(tmp)  # type: ignore[attr-defined]
        for f in path.iterdir():
            if f.is_file() and not (tmp / f.name).exists():
                shutil.copy2(f, tmp / f.name)
        old = path.parent / f".{path.name}.old-{os.getpid()}"
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BundleError(f"cannot write bundle {path}: {exc.strerror or exc}") from None


def _list(args: argparse.Namespace) -> int:
    from models.bundle import load_bundle
    from models.editing import EditStack

    bundle = load_bundle(args.bundle)
    stack = EditStack.from_bundle(bundle)
    if args.json:
        print(json.dumps([s.to_dict() for s in stack.specs.values()], indent=1))
        return 0
    if not stack.names:
        print(f"bundle {bundle.name!r} has no edits")
        return 0
    for s in stack.specs.values():
        lo, hi = s.range
        route = s.extra.get("route", "")
        print(f"{s.name:20s} {s.kind:16s} [{lo:g}, {hi:g}]  {s.description}" + (f"  ({route})" if route else ""))
    return 0


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="[edits] %(message)s")
    if args.edits_cmd == "fit":
        return _fit(args)
    if args.edits_cmd == "list":
        return _list(args)
    from benchmarks import bench_edits

    return bench_edits.run(args)
