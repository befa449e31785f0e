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
import time
from pathlib import Path
from typing import Any

from models.errors import UserError
from realtime.api import Filter
from realtime.cli.common import add_calibration_options, add_filter_options
from realtime.cli.run import run_filter
from realtime.io.sources import paced_like_a_camera
from realtime.pipeline.calibration import phase_summary


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
        self.pipeline: Any = None  # set by run_filter when the run starts (its stats say whether it was interrupted)
        self.error: str | None = None  # why the run must fail: the calibration asked for was not saved
        self._last = "idle"
        self._saved_run = -1
        self._saved: Path | None = None
        self._saver: threading.Thread | None = None
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

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        for sig in self._old:  # while a calibration finishes: the source is over, a trigger has nothing to do (and
            signal.signal(sig, signal.SIG_IGN)  # SIGUSR's default action would kill the process, file unfinished)
        try:
            if exc_type is None:
                self._finish()
        finally:
            for sig, old in self._old.items():
                signal.signal(sig, old)

    def _interrupted(self) -> bool:
        return self.pipeline is not None and self.pipeline.stats.interrupted

    def _finish(self, poll_s: float = 0.2, report_s: float = 2.0) -> None:
        """The source ended: a calibration still adapting in the background is finished and saved (the stream is
        over, but --save-calibrated asked for the bundle); one that cannot finish is said, and fails the run."""
        cal = self.processor.calibrator
        if cal is None or self._interrupted():
            return
        if (cal.busy and cal.phase != "recording") or (cal.state == "ready" and self.save_to is not None):
            # (ready: it finished between the last frame and here, not yet taken by the stream)
            if self.save_to is None:
                self.console.print("calibration: the source ended before the calibration finished; it was not used")
                return
            self.console.print(f"calibration: the source ended; finishing the calibration to save it "
                               f"(Ctrl-C abandons it) — {phase_text(cal)}")
            last = time.monotonic()
            while cal.busy and not self._interrupted():
                time.sleep(poll_s)
                if time.monotonic() - last >= report_s:
                    last = time.monotonic()
                    self.console.print(f"calibration: finishing — {phase_text(cal)}", highlight=False)
            if self._interrupted():
                cal.cancel()
                self.console.print("calibration: abandoned, nothing saved")
                return
            engine = cal.take()
            if engine is not None:
                self.on_output()  # the "active" line, and the save
                if self._saver is not None:
                    self._saver.join()
                if engine is not self.processor.engine:  # never used by the stream: nobody else closes it
                    engine.close()
        if self._saver is not None:
            self._saver.join()
        if self.save_to is None and cal.phase == "recording":
            self.console.print(f"calibration: the source ended after {cal.status().get('recorded', 0)} of the "
                               f"{cal.cfg.frames} face frames it records; it was not used")
            cal.cancel()
        if self.save_to is None or self._saved is not None:
            return
        if cal.phase == "recording":
            recorded = cal.status().get("recorded", 0)
            self.error = (f"the source ended after {recorded} of the {cal.cfg.frames} face frames the calibration "
                          f"records: nothing saved to {self.save_to} (use a longer source or fewer "
                          "--calibrate-frames)")
            cal.cancel()
        elif cal.state == "failed":
            self.error = f"the calibration failed ({cal.error}): nothing saved to {self.save_to}"
        elif cal.state in ("active", "ready"):
            self.error = self.error or f"the calibrated bundle could not be saved to {self.save_to}"

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
        """Sink thread, after each frame: report phase changes; save a finished calibration."""
        cal = self.processor.calibrator
        if cal is None or cal.phase == self._last:
            return
        self._last = phase = cal.phase
        info = cal.status()
        if phase == "recording":
            self.console.print(f"calibration: recording {cal.cfg.frames} face frames (every {cal.cfg.stride}) — "
                               "look around and talk")
        elif phase == "starting":
            self.console.print("calibration: starting the background worker (the filter keeps running)")
        elif phase == "adapting":
            self.console.print(f"calibration: adapting the generator in the background ({cal.cfg.iters} steps)")
        elif phase == "exporting":
            self.console.print("calibration: exporting the adapted generator to ONNX")
        elif phase == "building":
            self.console.print("calibration: building the stream's engine")
        elif phase == "active":
            sec, psnr = info.get("seconds", {}), info.get("psnr", {})
            held = (f" ({psnr['heldout_before']:.1f} → {psnr['heldout_after']:.1f} dB on frames it did not train "
                    "on)") if "heldout_before" in psnr else ""
            self.console.print(f"calibration: active — reconstruction {psnr.get('before', 0):.1f} → "
                               f"{psnr.get('after', 0):.1f} dB on the recorded frames{held}; "
                               f"{phase_summary(sec)}")
            if self.save_to is not None and self._saved_run != cal.runs:
                self._saved_run = cal.runs
                self._saver = threading.Thread(target=self._save, args=(cal.result,), name="stylestream-save",
                                               daemon=False)
                self._saver.start()
        elif phase == "failed":
            self.console.print(f"calibration failed: {info.get('error')} (the filter goes on unchanged)")

    def _save(self, engine: Any) -> None:
        try:  # the bundle's provenance says how it was calibrated (frames, steps, PSNR before / after)
            path = engine.bundle.save(self.save_to)
            self._saved = path
            self.console.print(f"calibration: saved the calibrated bundle to {path} (use --bundle {path})")
        except Exception as exc:  # a full disk must not stop the stream
            self.error = f"could not save the calibrated bundle to {self.save_to}: {exc}"
            self.console.print(f"calibration: {self.error}")

    def status(self) -> str:
        cal = self.processor.calibrator
        if cal is None or cal.state == "idle":
            return ""
        return f", calibration {phase_text(cal) if cal.busy else cal.state}"


def phase_text(cal: Any) -> str:
    """"adapting 45%" (phases with a progress figure) or "starting 3 s" (how long the phase has run)."""
    if cal.phase in ("recording", "adapting", "exporting"):
        return f"{cal.phase} {100 * cal.progress:.0f}%"
    return f"{cal.phase} {cal.status().get('phase_s', 0):.0f} s"


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
