"""What the filtering commands (run, camera, serve, demo) share: the model / engine / pipeline / calibration flags,
built from their config dataclasses, and composing a :class:`realtime.api.Filter` from them."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from models.bundle import DEFAULT_BUNDLE, Bundle
from models.editing import EditStack, parse_edit_args
from realtime.api import Filter, load
from realtime.cli.options import add_config, config_from_args
from realtime.engines import OPTION_BACKENDS, EngineOptions, EngineSpec, resolve_backend
from realtime.pipeline import PipelineConfig
from realtime.pipeline.calibration import CalibrationConfig
from realtime.vision.tracking import TrackerConfig


def add_filter_options(p: argparse.ArgumentParser) -> None:
    """--bundle, --edit, --list-edits, the engine flags and the pipeline flags."""
    g = p.add_argument_group("model")
    g.add_argument("--bundle", type=Path, default=None, help="bundle folder (default: the built-in bundle)")
    g.add_argument("--edit", action="append", metavar="NAME=STRENGTH", help="apply an edit (repeatable)")
    g.add_argument("--list-edits", action="store_true", help="list the bundle's edits and exit")
    add_config(g, EngineSpec)  # --backend, --device, --precision
    add_config(g, EngineOptions)  # --cuda-graphs, --torch-compile, --model-dir, --trt-cache, --triton-url
    add_config(p.add_argument_group("pipeline"), PipelineConfig)
    p.add_argument("--stats-json", type=Path, default=None, help="write the run summary as JSON here")


def add_calibration_options(p: argparse.ArgumentParser) -> None:
    """--calibrate-frames/-stride/-iters/-lr/-batch/-threads (live calibration in camera / serve)."""
    add_config(p.add_argument_group("live calibration (adapt the generator to the user in the background)"),
               CalibrationConfig, prefix="calibrate_")


def bundle_from_args(args: argparse.Namespace) -> Bundle:
    return load(args.bundle)


def filter_from_args(args: argparse.Namespace, bundle: Bundle, live: bool, tracker: TrackerConfig | None = None,
                     threads: int = 0) -> Filter:
    """The Filter the flags describe (edit names and every config value are checked before the engine starts).
    ``threads`` > 0: the engine's intra-op threads, where its backend (torch / onnx) takes them."""
    calibration = (config_from_args(CalibrationConfig, args, prefix="calibrate_")
                   if hasattr(args, "calibrate_frames") else None)
    options = config_from_args(EngineOptions, args)
    spec = config_from_args(EngineSpec, args, options=options)
    if threads and "threads" not in _set_flags(options) and \
            resolve_backend(spec.backend, spec.device) in OPTION_BACKENDS["threads"]:
        spec = dataclasses.replace(spec, options=dataclasses.replace(options, threads=threads))
    return Filter(bundle, parse_edit_args(args.edit), spec=spec, pipeline=config_from_args(PipelineConfig, args),
                  calibration=calibration, live=live, tracker=tracker)


def _set_flags(options: EngineOptions) -> set[str]:
    """The backend options given a non-default value."""
    default = EngineOptions()
    return {f.name for f in dataclasses.fields(options) if getattr(options, f.name) != getattr(default, f.name)}


def bundle_label(args: argparse.Namespace) -> str:
    return str(args.bundle or DEFAULT_BUNDLE)


def print_edits(bundle: Any) -> int:
    """`--list-edits`: one aligned row per edit (name, kind, range, description)."""
    stack = EditStack.from_bundle(bundle)
    if not stack.names:
        print(f"bundle {bundle.name!r} has no edits")
        return 0
    rows = [(s.name, s.kind, f"[{s.range[0]:g}, {s.range[1]:g}]", s.description) for s in stack.specs.values()]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3])
    return 0
