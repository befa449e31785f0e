"""What the filtering commands (run, camera, serve, demo) share: the model / engine / pipeline / calibration flags,
built from their config dataclasses, and composing a :class:`realtime.api.Filter` from them."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from models.bundle import DEFAULT_BUNDLE, Bundle
from models.editing import EditStack, parse_edit_args
from realtime.api import Filter, load
from realtime.cli.options import add_config, changed_fields, config_from_args
from realtime.engines import OPTION_BACKENDS, EngineOptions, EngineSpec, resolve_backend
from realtime.pipeline import PipelineConfig
from realtime.pipeline.calibration import CalibrationConfig
from realtime.vision.tracking import TrackerConfig
from realtime.vision.transfer import TransferConfig


def add_filter_options(p: argparse.ArgumentParser) -> None:
    """--bundle, --edit, --list-edits, the engine flags and the pipeline flags."""
    g = p.add_argument_group("model")
    g.add_argument("--bundle", type=Path, default=None, help="bundle folder (default: the built-in bundle)")
    g.add_argument("--edit", action="append", metavar="NAME=STRENGTH", help="apply an edit (repeatable)")
    g.add_argument("--list-edits", action="store_true", help="list the bundle's edits and exit")
    add_config(g, EngineSpec)  # --backend, --device, --precision
    add_config(g, EngineOptions)  # --cuda-graphs, --torch-compile, --model-dir, --trt-cache, --triton-url
    add_config(p.add_argument_group("pipeline"), PipelineConfig)
    add_config(p.add_argument_group("edit transfer (--composite transfer)"), TransferConfig, prefix="transfer_")
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
    if threads and "threads" not in changed_fields(options) and \
            resolve_backend(spec.backend, spec.device) in OPTION_BACKENDS["threads"]:
        spec = dataclasses.replace(spec, options=dataclasses.replace(options, threads=threads))
    return Filter(bundle, parse_edit_args(args.edit), spec=spec, pipeline=config_from_args(PipelineConfig, args),
                  calibration=calibration, live=live, tracker=tracker,
                  transfer=config_from_args(TransferConfig, args, prefix="transfer_"))


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


class PhaseProgress:
    """Progress of named phases: rich bars on a terminal; anywhere else (a pipe, a log file, CI) one plain line per
    phase every ``every_s`` seconds and one when it ends, so a long phase is never silent.

    ``progress(phase, done, total, note)`` is also the callback :class:`realtime.pipeline.offline.OfflineEdit`
    takes; ``advance(phase, total)`` counts one more. Use it as a context manager (the bars' live display)."""

    def __init__(self, console: Console, every_s: float = 5.0, width: int = 22):
        self.console, self.every_s = console, every_s
        self.live = console.is_terminal
        self.bar = Progress(TextColumn(f"[bold]{{task.description:<{width}}}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[note]}"), TimeElapsedColumn(), console=console,
                            transient=False, disable=not self.live)
        self._tasks: dict[str, TaskID] = {}
        self._done: dict[str, int] = {}
        self._t0: dict[str, float] = {}
        self._said: dict[str, float] = {}
        self._ended: set[str] = set()

    def __enter__(self) -> PhaseProgress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None:
            self._end_open()
        self.bar.__exit__(*exc)

    def _end_open(self, but: str | None = None) -> None:
        """The end line of every phase still open (one whose total was not known), except ``but``."""
        if self.live:
            return
        now = time.monotonic()
        for phase in self._tasks:
            if phase != but and phase not in self._ended:
                self._ended.add(phase)
                self.console.print(f"{phase}: {self._done.get(phase, 0)} ({now - self._t0[phase]:.0f} s, done)",
                                   highlight=False, soft_wrap=True)

    def __call__(self, phase: str, done: int, total: int | None = None, note: str = "") -> None:
        now = time.monotonic()
        if phase not in self._tasks:  # a new phase: the ones before it have ended
            self._end_open(but=phase)
            self._tasks[phase] = self.bar.add_task(phase, total=total, note="")
            self._t0[phase] = self._said[phase] = now
        self._done[phase] = done
        self.bar.update(self._tasks[phase], completed=done, total=total, note=note)
        if self.live or phase in self._ended:
            return
        ended = total is not None and done >= total
        if ended or now - self._said[phase] >= self.every_s:
            self._said[phase] = now
            if ended:
                self._ended.add(phase)
            count = f"{done}/{total}" if total else str(done)
            self.console.print(f"{phase}: {count}{', ' + note if note else ''} ({now - self._t0[phase]:.0f} s"
                               f"{', done' if ended else ''})", highlight=False, soft_wrap=True)

    def advance(self, phase: str, total: int | None = None) -> None:
        self(phase, self._done.get(phase, 0) + 1, total)


@contextlib.contextmanager
def status(console: Console, text: str, every_s: float = 5.0) -> Iterator[None]:
    """A spinner with ``text`` on a terminal; elsewhere (where a spinner shows nothing) the text as a plain line,
    and again with the time so far every ``every_s`` seconds while the step runs."""
    if console.is_terminal:
        with console.status(text):
            yield
        return
    console.print(text + " …", highlight=False, soft_wrap=True)
    done = threading.Event()
    t0 = time.monotonic()

    def beat() -> None:
        while not done.wait(every_s):
            console.print(f"{text} … {time.monotonic() - t0:.0f} s", highlight=False, soft_wrap=True)

    ticker = threading.Thread(target=beat, name="stylestream-status", daemon=True)
    ticker.start()
    try:
        yield
    finally:
        done.set()
        ticker.join()
