"""`stylestream camera`: the filter on a live source (webcam, network stream) into a virtual camera or a URL.

Live calibration (docs/offline.md): ``--calibrate`` starts one at once; while running, type ``c`` + Enter (or send
SIGUSR1) to calibrate and ``r`` + Enter (or SIGUSR2) to go back to the bundle's generator. ``--save-calibrated DIR``
writes the adapted bundle when a calibration finishes, for a later ``--bundle DIR``.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from models.errors import UserError
from realtime.api import Filter
from realtime.cli.common import add_calibration_options, add_filter_options
from realtime.cli.run import run_filter
from realtime.io.sources import paced_like_a_camera


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", default="/dev/video0", help="/dev/videoN, rtmp/rtsp/srt/http URL or demo: "
                                                            "(default /dev/video0)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--virtual-camera", action="store_true",
                     help="send to a virtual camera (v4l2loopback on Linux, OBS on Windows/macOS); see README")
    out.add_argument("-o", "--output", help="rtmp:// URL, a file, virtualcam:DEVICE or null:")
    p.add_argument("--size", default=None, help="capture size WxH for /dev/videoN (e.g. 1280x720)")
    p.add_argument("--fps", type=float, default=None, help="capture frame rate for /dev/videoN")
    p.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    p.add_argument("--calibrate", action="store_true",
                   help="calibrate at once: record the first seconds of the face, adapt the generator in the "
                        "background, switch to it (later: c + Enter or SIGUSR1; r + Enter or SIGUSR2 to go back)")
    p.add_argument("--save-calibrated", type=Path, default=None, metavar="DIR",
                   help="write the calibrated bundle here when a calibration finishes (use it with --bundle)")
    add_filter_options(p)
    add_calibration_options(p)


class CalibrationControls:
    """The camera's calibration triggers (``--calibrate``, ``c``/``r`` + Enter on a terminal, SIGUSR1/SIGUSR2),
    progress messages on state changes, and ``--save-calibrated``. Triggers only flip state; the recording runs in
    the device worker and the adaptation in the calibrator's worker process."""

    def __init__(self, flt: Filter, console: Any, start: bool, save_to: Path | None):
        self.processor, self.console, self.start_now, self.save_to = flt.processor, console, start, save_to
        self._last = "idle"
        self._saved_run = -1
        self._old: dict[int, Any] = {}

    def __enter__(self) -> CalibrationControls:
        for sig, fn in ((getattr(signal, "SIGUSR1", None), self.calibrate),
                        (getattr(signal, "SIGUSR2", None), self.reset)):
            if sig is not None:
                self._old[sig] = signal.signal(sig, lambda *_a, fn=fn: fn())
        if sys.stdin is not None and sys.stdin.isatty():
            threading.Thread(target=self._keys, name="stylestream-keys", daemon=True).start()
            self.console.print("calibration: type c + Enter to calibrate, r + Enter to go back")
        if self.start_now:
            self.calibrate()
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def _keys(self) -> None:
        for line in sys.stdin:
            key = line.strip().lower()
            if key == "c":
                self.calibrate()
            elif key == "r":
                self.reset()

    def calibrate(self) -> None:
        if not self.processor.calibrate():
            self.console.print("calibration: already under way")

    def reset(self) -> None:
        self.processor.reset_calibration()
        self.console.print("calibration: back to the bundle's generator")

    def on_output(self) -> None:
        """Sink thread, after each frame: report state changes; save a finished calibration."""
        cal = self.processor.calibrator
        if cal is None or cal.state == self._last:
            return
        self._last = st = cal.state
        info = cal.status()
        if st == "recording":
            self.console.print(f"calibration: recording {cal.cfg.frames} face frames (every {cal.cfg.stride}) — "
                               "look around and talk")
        elif st == "adapting":
            self.console.print(f"calibration: adapting the generator in the background ({cal.cfg.iters} steps; "
                               "the filter keeps running)")
        elif st == "active":
            sec, psnr = info.get("seconds", {}), info.get("psnr", {})
            held = (f" ({psnr['heldout_before']:.1f} → {psnr['heldout_after']:.1f} dB on frames it did not train "
                    "on)") if "heldout_before" in psnr else ""
            self.console.print(f"calibration: active — reconstruction {psnr.get('before', 0):.1f} → "
                               f"{psnr.get('after', 0):.1f} dB on the recorded frames{held}; recorded "
                               f"{sec.get('record', 0):.1f} s, adapted {sec.get('adapt', 0):.1f} s, engine built "
                               f"{sec.get('build', 0):.1f} s")
            if self.save_to is not None and self._saved_run != cal.runs:
                self._saved_run = cal.runs
                threading.Thread(target=self._save, args=(cal.result,), name="stylestream-save", daemon=False).start()
        elif st == "failed":
            self.console.print(f"calibration failed: {info.get('error')} (the filter goes on unchanged)")

    def _save(self, engine: Any) -> None:
        try:  # the bundle's provenance says how it was calibrated (frames, steps, PSNR before / after)
            path = engine.bundle.save(self.save_to)
            self.console.print(f"calibration: saved the calibrated bundle to {path} (use --bundle {path})")
        except Exception as exc:  # a full disk must not stop the stream
            self.console.print(f"calibration: could not save to {self.save_to}: {exc}")

    def status(self) -> str:
        cal = self.processor.calibrator
        if cal is None or cal.state == "idle":
            return ""
        return f", calibration {cal.state} {100 * cal.progress:.0f}%" if cal.busy else f", calibration {cal.state}"


def main(args: argparse.Namespace) -> int:
    args.input = args.source
    if args.virtual_camera:
        args.output = "virtualcam:"
    if not args.output:
        raise UserError("choose an output: --virtual-camera or -o rtmp://…|file|null:")
    opts = {}
    if args.size:
        try:
            w, h = (int(v) for v in args.size.lower().split("x"))
        except ValueError:
            raise UserError(f"--size expects WxH, got {args.size!r}") from None
        opts["size"] = (w, h)
    if args.fps:
        opts["fps"] = args.fps
    args.realtime = paced_like_a_camera(args.source)  # a file or demo: clip stands in for a camera
    if args.save_calibrated is not None and args.save_calibrated.exists() and not args.save_calibrated.is_dir():
        raise UserError(f"--save-calibrated {args.save_calibrated} exists and is not a folder")

    def controls(flt: Filter, console: Any) -> CalibrationControls:
        return CalibrationControls(flt, console, start=args.calibrate, save_to=args.save_calibrated)

    return run_filter(args, live_default=True, progress=False, source_options=opts, controls=controls)
