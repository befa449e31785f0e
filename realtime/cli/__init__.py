"""`stylestream` console script.

Every subcommand lives in its own module exposing ``add_arguments(parser)`` and ``main(args) -> int``; this file
only lists them, so ``stylestream --help`` stays fast (modules import lazily) and one error policy applies:
a :class:`models.errors.UserError` ends in one clear line on stderr and a non-zero exit, never a traceback.

This module imports only the standard library and ``models.errors``, so ``main`` takes over SIGINT and SIGTERM
(one line, exit 130) a few milliseconds after the interpreter starts; everything heavy (numpy, the command's
module, MediaPipe's stderr filter, the package metadata) is loaded after that, with ``importlib``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from models.errors import UserError

# (name, module, one-line help). Order is the order shown in --help.
SUBCOMMANDS: list[tuple[str, str, str]] = [
    ("demo", "realtime.cli.demo", "the whole filter on a synthetic clip with the default bundle → demo_out/"),
    ("run", "realtime.cli.run", "filter a video file or stream into a file/URL (progress bar, summary)"),
    ("camera", "realtime.cli.camera", "filter a live source (webcam, stream) into a virtual camera or URL"),
    ("serve", "realtime.cli.serve", "live WebRTC server: browser page, webcam in, filtered video out (or --source)"),
    ("serve-models", "realtime.cli.serve_models", "a Triton server hosting a bundle's networks, for --backend triton"),
    ("import-weights", "realtime.cli.weights", "convert an official StyleGAN2 .pkl / rosinality .pt into a bundle"),
    ("info", "realtime.cli.info", "describe a bundle (configs, parameter counts, what is trained)"),
    ("bench", "realtime.cli.bench", "measure: `bench models`, `bench pipeline` (speed), `bench fidelity`"),
    ("export", "realtime.cli.export", "export the networks to ONNX / TensorRT / a Triton model repository"),
    ("train", "realtime.cli.train", "train a generator and encoders: `train autoencode|generator|encoder`"),
    ("edits", "realtime.cli.edits", "fit, list and measure a bundle's edits: `edits fit|list|measure`"),
    ("edit", "realtime.cli.edit", "offline high-quality edit of a clip: adapt, edit, keep expressions, paste back"),
]


def build_parser(load_all: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stylestream",
        description="Real-time StyleGAN face-video filter: track, encode into W+, edit, regenerate, stream.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module, help_text in SUBCOMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        if load_all:
            importlib.import_module(module).add_arguments(p)
    return parser


def _version() -> str:
    metadata = importlib.import_module("importlib.metadata")  # 50 ms: only for --version's help text
    try:
        return str(metadata.version("stylestream"))
    except metadata.PackageNotFoundError:  # not installed (running from a checkout)
        return "0+checkout"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Only import the chosen subcommand's module (keeps --help and startup fast).
    chosen = next((a for a in argv if not a.startswith("-")), None)
    names = {n for n, _, _ in SUBCOMMANDS}
    restore = _interrupt_on_signals()  # Ctrl-C / SIGTERM while the command loads: one line, exit 130
    try:
        if chosen in names:
            parser = build_parser(load_all=False)
            sub_parser = parser._subparsers._group_actions[0].choices[chosen]  # type: ignore[union-attr]
            importlib.import_module(sub_parser.get_default("_module")).add_arguments(sub_parser)
        else:
            parser = build_parser(load_all=False)
        args = parser.parse_args(argv)
        if not getattr(args, "command", None):
            parser.print_help()
            return 0
        # MediaPipe's native start-up logs never reach the user (the module imports numpy: loaded after the handlers)
        importlib.import_module("realtime.vision.mediapipe_runtime").install_native_stderr_filter()
        module = importlib.import_module(args._module)
        try:
            return int(module.main(args) or 0)
        except UserError as exc:
            print(f"stylestream {args.command}: error: {exc}", file=sys.stderr)
            return exc.exit_code
    except KeyboardInterrupt:
        print(f"stylestream{' ' + chosen if chosen in names else ''}: interrupted", file=sys.stderr)
        _forget_unhandled_interrupt()
        return 130
    finally:
        restore()


def _forget_unhandled_interrupt() -> None:
    """The interrupt was handled: make sure the interpreter knows. CPython (3.11) sets a process-wide flag when a
    KeyboardInterrupt leaves code run through ``exec(str)`` / ``PyRun_String`` (dataclasses, namedtuples and
    torch build classes that way while the command loads), even when a caller catches it; under ``python -m`` the
    interpreter then ends by killing itself with SIGINT (exit -2 instead of our 130). Clearing the flag keeps the
    exit code the one this function's caller returns. Not a CPython build with the flag: nothing to clear."""
    with contextlib.suppress(AttributeError, ValueError):
        ctypes.c_int.in_dll(ctypes.pythonapi, "_Py_UnhandledKeyboardInterrupt").value = 0


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _interrupt_on_signals() -> Callable[[], None]:
    """SIGINT and SIGTERM raise KeyboardInterrupt (SIGTERM would otherwise kill the process mid-write) until the
    returned function puts the previous handlers back. Commands install their own (a graceful stop) while they run.
    Only the main thread can set handlers; elsewhere (an in-process caller's thread) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    old = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for sig, handler in old.items():
            signal.signal(sig, handler)

    return restore
