"""`stylestream run INPUT -o OUTPUT` (file jobs) and `stylestream camera` (live sources).

Both build the same pipeline (realtime/pipeline/): source → tracking → device worker → sink. ``run`` is
lossless and ordered with a progress bar and a summary table; ``camera`` is live (drop-oldest queues, causal
stabilisation) and shows a status line until Ctrl-C. Ctrl-C (or SIGTERM) stops reading, finishes the frames
in flight and finalises the output, so it stays playable; a second Ctrl-C abandons the frames in flight.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from models.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BUNDLE = REPO_ROOT / "bundles" / "default"


def add_pipeline_options(p: argparse.ArgumentParser) -> None:
    """Options shared by run / camera / serve: model, engine, edits, PipelineConfig fields."""
    from realtime.cli.options import add_config
    from realtime.engines import EngineOptions, EngineSpec
    from realtime.pipeline import PipelineConfig

    g = p.add_argument_group("model")
    g.add_argument("--bundle", type=Path, default=None, help=f"bundle folder (default: {DEFAULT_BUNDLE})")
    g.add_argument("--edit", action="append", metavar="NAME=STRENGTH", help="apply an edit (repeatable)")
    g.add_argument("--list-edits", action="store_true", help="list the bundle's edits and exit")
    add_config(g, EngineSpec)  # --backend, --device, --precision
    add_config(g, EngineOptions)  # --cuda-graphs, --torch-compile, --model-dir, --trt-cache, --triton-url
    c = p.add_argument_group("pipeline")
    for f in fields(PipelineConfig):
        flag = "--" + f.name.replace("_", "-")
        comment = _field_comment(PipelineConfig, f.name)
        if f.type in ("bool", bool):
            c.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=f.default,
                           help=comment)
        else:
            c.add_argument(flag, dest=f.name, type=type(f.default), default=f.default, help=comment)
    c.add_argument("--stats-json", type=Path, default=None, help="write the run summary as JSON here")


def add_calibration_options(p: argparse.ArgumentParser) -> None:
    """--calibrate-frames/-stride/-iters/-lr/-batch (live calibration in camera / serve), from CalibrationConfig."""
    from realtime.pipeline.calibration import CalibrationConfig

    g = p.add_argument_group("live calibration (adapt the generator to the user in the background)")
    for f in fields(CalibrationConfig):
        g.add_argument("--calibrate-" + f.name.replace("_", "-"), dest="calibrate_" + f.name, type=type(f.default),
                       default=f.default, help=f"{_field_comment(CalibrationConfig, f.name)} (default {f.default:g})")


def calibration_config(args: argparse.Namespace):
    from realtime.pipeline.calibration import CalibrationConfig

    if not hasattr(args, "calibrate_frames"):
        return None
    cfg = CalibrationConfig(**{f.name: getattr(args, "calibrate_" + f.name) for f in fields(CalibrationConfig)})
    for f in fields(CalibrationConfig):
        if getattr(cfg, f.name) <= 0:
            raise UserError(f"--calibrate-{f.name.replace('_', '-')} must be > 0, got {getattr(cfg, f.name):g}")
    return cfg


def _field_comment(cls: type, name: str) -> str:
    """The one-line comment after a dataclass field, used as CLI help (configs document themselves once)."""
    import inspect

    for line in inspect.getsource(cls).splitlines():
        stripped = line.strip()
        if stripped.startswith(f"{name}:") and "#" in stripped:
            return stripped.split("#", 1)[1].strip()
    return ""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", nargs="?", help="video file, URL (rtmp/rtsp/srt/http), /dev/videoN or demo:")
    p.add_argument("-o", "--output", help="output file (.mp4/.mkv/.webm), rtmp:// URL, virtualcam: or null:")
    p.add_argument("--start", type=float, default=None, help="start at this many seconds (files)")
    p.add_argument("--duration", type=float, default=None, help="process at most this many seconds")
    p.add_argument("--max-frames", type=int, default=None, help="process at most this many frames")
    p.add_argument("--realtime", action="store_true",
                   help="release file frames at their real pace and drop when behind (like a live source)")
    add_pipeline_options(p)


def load_bundle_arg(path: Path | None):
    from models.bundle import load_bundle

    path = path or DEFAULT_BUNDLE
    if path == DEFAULT_BUNDLE and not path.exists():
        raise UserError(f"no bundle given and the default bundle is missing ({DEFAULT_BUNDLE}); pass --bundle DIR")
    return load_bundle(path)


def pipeline_config(args: argparse.Namespace):
    from realtime.pipeline import PipelineConfig

    return PipelineConfig(**{f.name: getattr(args, f.name) for f in fields(PipelineConfig)})


def build_processor(args: argparse.Namespace, bundle: Any):
    """Engine + edits + FrameProcessor from CLI options (edit names are checked before the engine starts)."""
    from models.editing import EditStack, parse_edit_args
    from realtime.cli.options import config_from_args
    from realtime.engines import EngineOptions, EngineSpec, make_engine
    from realtime.pipeline import FrameProcessor

    edits = EditStack.from_bundle(bundle)
    for name, value in parse_edit_args(args.edit).items():
        edits.set_strength(name, value)
    calibration = calibration_config(args)
    spec = config_from_args(EngineSpec, args, options=config_from_args(EngineOptions, args))
    engine = make_engine(bundle, spec)
    return FrameProcessor(engine, pipeline_config(args), edits=edits, calibration=calibration)


def print_edits(bundle: Any) -> int:
    from models.editing import EditStack

    stack = EditStack.from_bundle(bundle)
    if not stack.names:
        print(f"bundle {bundle.name!r} has no edits")
        return 0
    for s in stack.specs.values():
        lo, hi = s.range
        print(f"{s.name:20s} {s.kind:16s} [{lo:g}, {hi:g}]  {s.description}")
    return 0


class _Interrupts:
    """First SIGINT/SIGTERM: graceful stop; second: abort the frames in flight."""

    def __init__(self, pipeline: Any):
        self.pipeline = pipeline
        self.count = 0
        self._old: dict[int, Any] = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.count += 1
        self.pipeline.stop()
        if self.count == 1:
            print("\nstopping: finishing the frames in flight and finalising the output "
                  "(Ctrl-C again to abandon them)", file=sys.stderr)

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def summary_table(stats: Any, title: str):
    from rich.table import Table

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


def write_report(path: Path, args: argparse.Namespace, stats: Any, processor: Any, source: Any) -> None:
    cfg = asdict(processor.cfg)
    eng = processor.engine
    report = {"input": args.input, "output": args.output, "bundle": str(args.bundle or DEFAULT_BUNDLE),
              "engine": {"backend": eng.name, "device": str(eng.device), "precision": eng.precision},
              "edits": {k: v for k, v in processor.edits.strengths().items() if v} if processor.edits else {},
              "pipeline_config": cfg, "source": {"fps": source.fps, "width": source.width, "height": source.height,
                                                  "live": source.is_live},
              "stats": stats.to_dict()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")


def run_pipeline(args: argparse.Namespace, live_default: bool | None, progress: bool,
                 source_options: dict[str, Any] | None = None, controls: Any = None) -> int:
    """Shared body of `run` and `camera`: progress bar for file jobs, a status line for live sources.
    ``controls(processor, console)`` (camera) returns a context manager with ``status() -> str`` (appended to the
    status line) and ``on_output()`` (called in the sink thread after each frame)."""
    import contextlib

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from realtime.io.sinks import open_sink
    from realtime.io.sources import open_source
    from realtime.pipeline import Pipeline
    from realtime.vision.tracking import FaceTracker, TrackerConfig

    console = Console(stderr=True)
    bundle = load_bundle_arg(args.bundle)
    if args.list_edits:
        return print_edits(bundle)
    if not args.input:
        raise UserError("no input given (a video file, URL, /dev/videoN or demo:)")
    if not args.output:
        raise UserError("no output given: -o FILE.mp4 | rtmp://… | virtualcam: | null:")
    processor = build_processor(args, bundle)
    source = open_source(args.input, live=live_default, realtime=getattr(args, "realtime", False) or None,
                         start=getattr(args, "start", None), duration=getattr(args, "duration", None),
                         **(source_options or {}))
    with source:
        live = source.is_live
        width = source.width * (2 if processor.cfg.side_by_side else 1)
        sink = open_sink(args.output, width=width, height=source.height, fps=source.fps or 30.0,
                         audio_from=None if live else source)
        tracker = FaceTracker(TrackerConfig(smoothing="one_euro" if live else "none", fps=source.fps or 30.0))
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
        ctl = controls(processor, console) if controls is not None else None

        def on_output(out, stats):
            if ctl is not None:
                ctl.on_output()
            now = time.perf_counter()
            if progress and (stats.frames_out % 5 == 0 or stats.frames_out == total):
                bar.update(task, completed=stats.frames_out, fps=stats.frames_out / max(1e-6, now - started))
            elif not progress and now - last_status[0] >= 2.0:
                last_status[0] = now
                stages = processor.times.recent()
                lat = stats.latency_ms[-30:]
                console.print(f"{stats.frames_out} frames, {stats.frames_out / max(1e-6, now - started):.1f} fps, "
                              f"latency {sum(lat) / max(1, len(lat)):.0f} ms, drops {pipeline.drops()}, "
                              + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()) + " ms"
                              + (ctl.status() if ctl is not None else ""))

        pipeline = Pipeline(source, tracker, processor, sink, live=live, on_output=on_output,
                            max_frames=getattr(args, "max_frames", None))
        try:
            with sink, tracker, _Interrupts(pipeline), bar, ctl if ctl is not None else contextlib.nullcontext():
                stats = pipeline.run()
        finally:
            processor.release()
            processor.base_engine.close()
        bar.update(task, completed=stats.frames_out)
    console.print(summary_table(stats, f"stylestream {'camera' if live else 'run'}: {args.input} → {args.output}"))
    report = args.stats_json
    if report is None and not str(args.output).startswith(("rtmp", "virtualcam:", "null:")):
        report = Path(str(args.output) + ".stylestream.json")
    if report is not None:
        write_report(report, args, stats, processor, source)
    if stats.interrupted:
        console.print(f"interrupted: {stats.frames_out} frames written to {args.output}")
        return 130
    return 0


def main(args: argparse.Namespace) -> int:
    return run_pipeline(args, live_default=None, progress=True)
