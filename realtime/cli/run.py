"""`stylestream run INPUT -o OUTPUT`: filter a file (or any source) into a file, URL, virtual camera or null.

File jobs are lossless and ordered with a progress bar and a summary table; Ctrl-C (or SIGTERM) stops reading,
finishes the frames in flight and finalises the output, so it stays playable; a second Ctrl-C abandons the frames in
flight. ``stylestream camera`` shares :func:`run_filter` with a live source and a status line instead of the bar.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from models.errors import UserError
from realtime.api import Filter, open_sink, open_source
from realtime.cli.common import add_filter_options, bundle_from_args, bundle_label, filter_from_args, print_edits
from realtime.io.sources import Source
from realtime.pipeline import Pipeline, RunStats


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", nargs="?", help="video file, URL (rtmp/rtsp/srt/http), /dev/videoN or demo:")
    p.add_argument("-o", "--output", help="output file (.mp4/.mkv/.webm), rtmp:// URL, virtualcam: or null:")
    p.add_argument("--start", type=float, default=None, help="start at this many seconds (files)")
    p.add_argument("--duration", type=float, default=None, help="process at most this many seconds")
    p.add_argument("--max-frames", type=int, default=None, help="process at most this many frames")
    p.add_argument("--realtime", action="store_true",
                   help="release file frames at their real pace and drop when behind (like a live source)")
    add_filter_options(p)


class Interrupts:
    """First SIGINT/SIGTERM: graceful stop; second: abort the frames in flight."""

    def __init__(self) -> None:
        self.pipeline: Pipeline | None = None
        self.count = 0
        self._old: dict[int, Any] = {}

    def __enter__(self) -> Interrupts:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.count += 1
        if self.pipeline is None:
            raise KeyboardInterrupt
        self.pipeline.stop()
        if self.count == 1:
            print("\nstopping: finishing the frames in flight and finalising the output "
                  "(Ctrl-C again to abandon them)", file=sys.stderr)

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def summary_table(stats: RunStats, title: str) -> Table:
    t = Table(title=title)
    t.add_column("stage")
    t.add_column("mean ms", justify="right")
    t.add_column("p90 ms", justify="right")
    t.add_column("frames", justify="right")
    for stage, v in stats.stages.items():
        t.add_row(stage, f"{v['mean_ms']:.2f}", f"{v['p90_ms']:.2f}", str(v["n"]))
    lat = stats.latency_summary()
    t.caption = (f"{stats.frames_out}/{stats.frames_in} frames written, {stats.faces} with a face, "
                 f"{stats.key_frames} key frames, {stats.fps:.1f} fps, "
                 f"latency p50 {lat.get('p50_ms', 0):.0f} ms / p99 {lat.get('p99_ms', 0):.0f} ms, "
                 f"drops {sum(stats.dropped.values())}")
    return t


def write_report(path: Path, args: argparse.Namespace, stats: RunStats, flt: Filter, source: Source) -> None:
    eng = flt.engine
    report = {"input": args.input, "output": args.output, "bundle": bundle_label(args),
              "engine": {"backend": eng.name, "device": str(eng.device), "precision": eng.precision},
              "edits": {k: v for k, v in flt.edits.items() if v}, "pipeline_config": asdict(flt.processor.cfg),
              "source": {"fps": source.fps, "width": source.width, "height": source.height, "live": source.is_live,
                         "rotation": source.rotation, "mirrored": source.mirrored},
              "stats": stats.to_dict()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")


def run_filter(args: argparse.Namespace, live_default: bool | None, progress: bool,
               source_options: dict[str, Any] | None = None, controls: Any = None) -> int:
    """Shared body of `run` and `camera`: progress bar for file jobs, a status line for live sources.
    ``controls(filter, console)`` (camera) returns a context manager with ``status() -> str`` (appended to the
    status line), ``on_output()`` (called in the sink thread after each frame), a ``pipeline`` attribute (set when
    the run starts) and an ``error`` attribute: a message there after the run makes the command fail (exit 2) once
    the summary and report are written."""
    console = Console(stderr=True, soft_wrap=True)
    with Interrupts() as interrupts:  # Ctrl-C during start-up: one line, nothing half-written
        bundle = bundle_from_args(args)
        if args.list_edits:
            return print_edits(bundle)
        if not args.input:
            raise UserError("no input given (a video file, URL, /dev/videoN or demo:)")
        if not args.output:
            raise UserError("no output given: -o FILE.mp4 | rtmp://… | virtualcam: | null:")
        flt = filter_from_args(args, bundle, live=bool(live_default))
        ctl = controls(flt, console) if controls is not None else None
        try:
            source = open_source(args.input, live=live_default, realtime=getattr(args, "realtime", False) or None,
                                 start=getattr(args, "start", None), duration=getattr(args, "duration", None),
                                 **(source_options or {}))
            with source:
                stats = _run(args, flt, source, progress, console, ctl, interrupts)
        finally:
            flt.close()
    console.print(summary_table(stats, f"stylestream {'camera' if source.is_live else 'run'}: "
                                       f"{args.input} → {args.output}"))
    report = args.stats_json
    if report is None and not str(args.output).startswith(("rtmp", "virtualcam:", "null:")):
        report = Path(str(args.output) + ".stylestream.json")
    if report is not None:
        write_report(report, args, stats, flt, source)
    if stats.interrupted:
        console.print(f"interrupted: {stats.frames_out} frames written to {args.output}")
        return 130
    if ctl is not None and getattr(ctl, "error", None):
        raise UserError(ctl.error)
    return 0


def _run(args: argparse.Namespace, flt: Filter, source: Source, progress: bool, console: Console, ctl: Any,
         interrupts: Interrupts) -> RunStats:
    live = source.is_live
    width = source.width * (2 if flt.processor.cfg.side_by_side else 1)
    total = source.frame_count
    max_frames = getattr(args, "max_frames", None)
    if max_frames is not None:
        total = min(total, max_frames) if total else max_frames
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                   TextColumn("{task.fields[fps]:.1f} fps"), TimeElapsedColumn(), TimeRemainingColumn(),
                   console=console, disable=not progress, transient=False)
    task = bar.add_task("stylestream", total=total, fps=0.0)
    started = time.perf_counter()
    last_status = [started]

    def on_output(out: Any, stats: RunStats) -> None:
        if ctl is not None:
            ctl.on_output()
        now = time.perf_counter()
        if progress and (stats.frames_out % 5 == 0 or stats.frames_out == total):
            bar.update(task, completed=stats.frames_out, fps=stats.frames_out / max(1e-6, now - started))
        elif not progress and now - last_status[0] >= 2.0:
            last_status[0] = now
            stages = flt.processor.times.recent()
            lat = stats.latency_ms[-30:]
            console.print(f"{stats.frames_out} frames, {stats.frames_out / max(1e-6, now - started):.1f} fps, "
                          f"latency {sum(lat) / max(1, len(lat)):.0f} ms, drops {interrupts.pipeline.drops()}, "
                          + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()) + " ms"
                          + (ctl.status() if ctl is not None else ""), highlight=False)

    def attach(p: Pipeline) -> None:
        interrupts.pipeline = p
        if ctl is not None:
            ctl.pipeline = p

    with open_sink(args.output, width=width, height=source.height, fps=source.fps or 30.0,
                   audio_from=None if live else source) as sink, bar, \
            ctl if ctl is not None else contextlib.nullcontext():
        stats = flt.run(source, sink, live=live, on_output=on_output, max_frames=max_frames, pipeline=attach)
        bar.update(task, completed=stats.frames_out)
    return stats


def main(args: argparse.Namespace) -> int:
    return run_filter(args, live_default=None, progress=True)
