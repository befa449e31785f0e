"""`stylestream edit INPUT -o OUTPUT --edit smile=1.5 [--adapt] [--preserve-expression]`: the offline path.

StylePortraitVideo's method for a recorded clip, where quality matters more than latency, as resumable phases
(``realtime/pipeline/offline.py``): track → invert → adapt → edit / optimise → render. Intermediate results live in a
work folder (``--work``, default ``OUTPUT.work/``); a rerun skips every phase whose inputs did not change.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console

from models.bundle import DEFAULT_BUNDLE
from models.editing import parse_edit_args
from models.errors import UserError
from realtime.cli.common import PhaseProgress
from realtime.cli.options import add_config, config_from_args
from realtime.pipeline.offline import OfflineConfig, OfflineEdit


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", nargs="?", help="video file or demo: spec (e.g. demo:portrait?seconds=3&fps=15)")
    p.add_argument("-o", "--output", help="output video file (.mp4/.mkv/.webm)")
    p.add_argument("--edit", action="append", metavar="NAME=STRENGTH",
                   help="apply an edit (repeatable; with --preserve-expression applied one after the other)")
    p.add_argument("--bundle", type=Path, default=None, help="bundle folder (default: the built-in bundle); an "
                   "adapted bundle of the same person + a few --adapt-iters is continual adaptation")
    p.add_argument("--work", type=Path, default=None, help="work folder for resumable intermediate results "
                   "(default: OUTPUT.work)")
    p.add_argument("--stats-json", type=Path, default=None, help="write phase timings and reuse as JSON here")
    add_config(p.add_argument_group("offline editing"), OfflineConfig)


def main(args: argparse.Namespace) -> int:
    if not args.input:
        raise UserError("no input given (a video file or demo: spec)")
    if not args.output:
        raise UserError("no output given: -o FILE.mp4")
    cfg = config_from_args(OfflineConfig, args)
    console = Console(stderr=True, soft_wrap=True)
    bars = PhaseProgress(console, width=10)  # rich bars on a terminal, a plain line every 5 s elsewhere
    job = OfflineEdit(args.input, Path(args.output), args.bundle or DEFAULT_BUNDLE, parse_edit_args(args.edit), cfg,
                      work=args.work or Path(str(args.output) + ".work"), progress=bars,
                      say=lambda msg: print(msg, flush=True))
    with bars:
        stats = job.run()
    print(f"wrote {stats['frames_written']} frames to {args.output} (work folder {job.work.path})", flush=True)
    if args.stats_json:
        args.stats_json.write_text(json.dumps(stats, indent=2) + "\n")
    return 0
