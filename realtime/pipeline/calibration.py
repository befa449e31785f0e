"""Live calibration: adapt a copy of the generator to the user of a running stream, in the background.

StylePortraitVideo's video adaptation (:mod:`training.adapt`) made live: record a few seconds of (crop, latent)
pairs from the stream, fine-tune a copy of the generator in a worker process while the stream keeps running on the
old weights, then hand the result over between two frames. This is a live-stream state machine, so it lives with
the pipeline; the adaptation itself is training code.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import multiprocessing
import os
import shutil
import signal
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from export.artifacts import read_manifest, write_manifest
from export.onnx import available_models, export_bundle
from models.bundle import derived_name
from models.config import opt
from models.errors import UserError
from training.adapt import AdaptConfig, adapt_generator, reconstruction


@dataclass
class CalibrationConfig:
    """Live "calibrate" in ``serve`` / ``camera``: how much of the user to record and how long to adapt."""

    frames: int = opt(30, "(crop, latent) pairs to record (30 pairs = 2 s at 30 fps with stride 2)", min=1, max=10_000)
    stride: int = opt(2, "keep every N-th face frame while recording (more pose/expression variety per pair)", min=1)
    iters: int = opt(200, "Adam steps of the background adaptation", min=1)
    lr: float = opt(1e-3, "Adam learning rate", min=1e-12, max=1.0)
    batch: int = opt(4, "frames per Adam step", min=1)
    threads: int = opt(1, "CPU threads of the adaptation (the stream's own threads are untouched)", min=1)


def phase_summary(seconds: dict[str, float]) -> str:
    """"recorded 2.0 s, worker start 3.4 s, …: 31.0 s from the request" — every phase a calibration spent."""
    names = (("wait", "waited for a face"), ("record", "recorded"), ("start", "worker start"), ("adapt", "adapted"),
             ("export", "exported"), ("build", "engine built"))
    parts = ", ".join(f"{label} {seconds[k]:.1f} s" for k, label in names if k in seconds)
    total = f": {seconds['total']:.1f} s from the request" if "total" in seconds else ""
    return parts + total


ADAPTED_MODELS = ("synthesis",)  # what a calibration changes; the encoders' exports stay valid


def exported_dir_of(engine: Any) -> Path | None:
    """The ONNX export folder an engine runs from (through a :class:`realtime.engines.SerialEngine`), if any."""
    inner = getattr(engine, "engine", engine)
    d = getattr(inner, "model_dir", None)
    return Path(d) if d is not None else None


def reuse_exports(src: Path | None, dst: str, precision: str) -> dict[str, Any]:
    """Copy the ``precision`` exports of the models a calibration does not change from the export folder ``src``
    into ``dst`` → their manifest entries ({} when there is nothing usable: everything is exported then)."""
    if src is None:
        return {}
    try:
        entries = read_manifest(src).get("models", {})
    except UserError:
        return {}
    out: dict[str, Any] = {}
    for key, entry in entries.items():
        if entry.get("precision") != precision or entry.get("model") in ADAPTED_MODELS:
            continue
        try:
            shutil.copyfile(Path(src) / entry["file"], Path(dst) / entry["file"])
        except (OSError, KeyError, TypeError):
            continue
        out[key] = entry
    return out


class _Cancelled(Exception):
    pass


def become_background_worker(threads: int, niceness: int | None = None) -> None:
    """Settings of the calibration worker process (and of the benchmark that measures its cost): ignore a terminal's
    Ctrl-C (the parent stops the worker), a lower priority so the live stream keeps the CPU and this process takes
    what is left (``niceness``: that nice value, never a higher priority than now; None: nice +10 from here), and
    ``threads`` torch CPU threads (0: leave torch's setting)."""

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(os, "nice"):
        with contextlib.suppress(OSError):
            if niceness is None:
                os.nice(10)
            else:
                os.setpriority(os.PRIO_PROCESS, 0, max(niceness, os.getpriority(os.PRIO_PROCESS, 0)))
    if threads > 0:
        torch.set_num_threads(threads)


def background_niceness() -> int:
    """The nice value of a calibration worker: this process's + 10 (at most 19)."""
    try:
        return min(19, os.getpriority(os.PRIO_PROCESS, 0) + 10)
    except (AttributeError, OSError):
        return 10


def _calibration_child(conn: Any, payload: bytes, cfg: CalibrationConfig, device: str, export_dir: str | None,
                       export_precision: str, niceness: int, reused: dict[str, Any]) -> None:
    """The calibration worker process: adapt the bundle's generator on the pairs (``payload``: the bundle, crops and
    latents, ``torch.save``d by the parent), optionally export the adapted bundle to ONNX. It reports each phase over
    ``conn`` as it begins: ``("started", None)`` (loaded, ready to adapt), ``("progress", p)`` while adapting,
    ``("exporting", p)`` while exporting, then ``("done", result)`` (or ``("error", msg)``). Only the generator
    changes, so only the models not in ``reused`` (manifest entries of the stream's own exports, already copied into
    ``export_dir``: the encoders) are exported; their entries join the new manifest."""

    warnings.filterwarnings("ignore")
    become_background_worker(max(1, cfg.threads) if device == "cpu" else 0, niceness)
    try:

        data = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)  # our own parent's bytes
        bundle, crops, ws, held = data["bundle"], data["crops"], data["ws"], data["held"]
        dev = torch.device(device)
        bundle.generator.to(dev)
        crops, ws = crops.to(dev), ws.to(dev)
        held = [t.to(dev) for t in held] if held is not None else None
        psnr = {"before": reconstruction(bundle, crops, ws)["psnr"]}
        if held is not None:
            psnr["heldout_before"] = reconstruction(bundle, *held)["psnr"]
        conn.send(("started", None))
        last = [0.0]

        def on(it: int, total: int, loss: float) -> None:
            if it / total - last[0] >= 0.01 or it == total:
                last[0] = it / total
                conn.send(("progress", it / total))

        acfg = AdaptConfig(iters=cfg.iters, lr=cfg.lr, batch=cfg.batch)
        adapt_generator(bundle, crops, ws, acfg, progress=on)
        psnr["after"] = reconstruction(bundle, crops, ws)["psnr"]
        if held is not None:
            psnr["heldout_after"] = reconstruction(bundle, *held)["psnr"]
        if export_dir is not None:
            conn.send(("exporting", 0.0))
            bundle.to("cpu")
            models = [m for m in available_models(bundle) if f"{m}.{export_precision}" not in reused]
            done = [0]

            def exported(msg: str) -> None:
                if msg.lstrip().startswith("done"):
                    done[0] += 1
                    conn.send(("exporting", done[0] / max(1, len(models))))

            manifest = export_bundle(bundle, export_dir, precision=export_precision, models=models, progress=exported)
            if reused:
                manifest["models"].update(reused)
                write_manifest(export_dir, manifest)
        buf = io.BytesIO()  # plain bytes: tensors sent as multiprocessing objects die with this process's memory
        torch.save({k: v.detach().cpu() for k, v in bundle.generator.state_dict().items()}, buf)
        conn.send(("done", {"state": buf.getvalue(), "psnr": psnr}))
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}".splitlines()[0][:300]))
    finally:
        conn.close()


class Calibrator:
    """Live "calibrate": record a few seconds of (crop, latent) pairs from a running stream, adapt a copy of the
    bundle's generator in a worker process while the stream keeps running on the old weights, then hand the result
    over between two frames — the stream never stops.

    Driven from the stream's device-worker thread: ``record(crop, ws)`` after every encoded face frame while
    ``recording``; ``take()`` before every frame returns the finished result once (the adapted :class:`Bundle`,
    or what ``build(bundle, export_dir)`` made of it — the live pipeline builds the stream's own engine there).
    ``start()`` and ``cancel()`` may come from any thread (a data-channel message).

    Why a process: the adaptation is thousands of small autograd steps; in a thread it holds the GIL often enough to
    cost the live loop ~18 % of its frame rate on CPU (measured, docs/offline.md), while a spawned process at
    nice +10 costs it nothing measurable when a core is free, can be stopped at once, and can also do the ONNX export
    (``export_precision``) that an onnx-backed stream needs. The pairs and a CPU copy of the bundle go to it as
    ``torch.save`` bytes; the adapted generator's weights come back the same way.

    ``state``: idle → recording → adapting → building → ready → active (after ``take``), or failed. ``phase`` is
    the finer view a user is shown, every phase of the wall-clock time from the request to the swap: recording
    (waiting for and recording the face) → starting (the worker process starts, loads its copy and measures the
    "before" PSNR) → adapting (the Adam steps; ``progress``) → exporting (ONNX streams: the adapted bundle is
    exported; ``progress`` per model) → building (the result comes back, the stream's engine is built) → ready →
    active. ``seconds`` holds each finished phase as measured here (record, start, adapt, export, build) and
    ``total`` (request → ready), so the parts add up to what the user waited. ``status()`` is the JSON-able view for
    stats lines. The adaptation runs on ``device`` (the engine's CUDA device, else CPU)."""

    BUSY = ("recording", "adapting", "building")
    PHASES = ("recording", "starting", "adapting", "exporting", "building")

    def __init__(self, cfg: CalibrationConfig | None = None, device: torch.device | str = "cpu",
                 build: Callable[[Any, Path | None], Any] | None = None, export_precision: str | None = None,
                 export_from: Path | None = None):
        self.cfg = cfg or CalibrationConfig()
        if self.cfg.frames < 1 or self.cfg.iters < 1 or self.cfg.stride < 1 or self.cfg.batch < 1:
            raise ValueError(f"calibration needs frames, iters, stride and batch ≥ 1, got {self.cfg}")
        self.device = torch.device(device)
        self.build = build
        self.export_precision = export_precision
        self.export_from = export_from  # the stream's own export folder: its encoders are reused, not re-exported
        self.state = "idle"
        self.phase = "idle"  # the finer view of ``state`` (class doc)
        self.error = ""
        self.progress = 0.0  # 0…1 within the current phase (recording, adapting, exporting)
        self.seconds: dict[str, float] = {}  # record / start / adapt / export / build / total wall time (class doc)
        self.psnr: dict[str, float] = {}  # reconstruction PSNR before / after, on the pairs and on held-out frames
        self.result: Any = None  # the last finished result (kept after take(), e.g. to save the bundle)
        self.runs = 0
        self._bundle: Any = None
        self._crops: list[torch.Tensor] = []
        self._ws: list[torch.Tensor] = []
        self._held: list[tuple[torch.Tensor, torch.Tensor]] = []  # frames skipped by the stride: a held-out check
        self._seen = 0
        self._t_request = 0.0  # start() was called
        self._t_record = 0.0  # the first face frame was recorded
        self._t_phase = 0.0  # the current phase began
        self._pending: Any = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def recording(self) -> bool:
        return self.state == "recording"

    @property
    def busy(self) -> bool:
        return self.state in self.BUSY

    def start(self, bundle: Any) -> bool:
        """Begin recording for ``bundle`` (whose generator is copied and adapted). Ignored (False) while a
        calibration is under way."""
        with self._lock:
            if self.busy:
                return False
            self.runs += 1
            self._bundle, self._pending = bundle, None
            self._crops, self._ws, self._held, self._seen = [], [], [], 0
            self.state, self.error, self.progress, self.seconds, self.psnr = "recording", "", 0.0, {}, {}
            self.phase, self._t_request = "recording", time.perf_counter()
            self._t_phase = self._t_request
            return True

    def cancel(self) -> None:
        """Back to idle: a calibration under way is abandoned (its worker is stopped, its result discarded), and a
        result not yet taken or already active is let go (every caller goes back to the base engine)."""
        with self._lock:
            self.runs += 1
            self._pending = self.result = None
            self._crops, self._ws, self._held = [], [], []
            self.state, self.phase, self.progress = "idle", "idle", 0.0

    def record(self, crop: torch.Tensor, ws: torch.Tensor) -> None:
        """One aligned crop [1, 3, S, S] in [-1, 1] and its latent [1, num_ws, w_dim]; every ``stride``-th is
        kept for training, and (up to ``frames`` of) the frames in between for a held-out PSNR. The adaptation
        starts by itself once ``frames`` are kept."""
        if self.state != "recording":
            return
        self._seen += 1
        if self._seen == 1:
            self._t_record = time.perf_counter()
        pair = (crop.detach().float().cpu().reshape(1, *crop.shape[-3:]),
                ws.detach().float().cpu().reshape(1, *ws.shape[-2:]))
        if (self._seen - 1) % self.cfg.stride:
            if len(self._held) < self.cfg.frames:
                self._held.append(pair)
            return
        self._crops.append(pair[0])
        self._ws.append(pair[1])
        self.progress = len(self._crops) / self.cfg.frames
        if len(self._crops) >= self.cfg.frames:
            self._launch()

    def _launch(self) -> None:
        with self._lock:
            if self.state != "recording":  # cancelled meanwhile
                return
            crops, ws = torch.cat(self._crops), torch.cat(self._ws)
            held = (torch.cat([c for c, _ in self._held]), torch.cat([w for _, w in self._held])) \
                if self._held else None
            self._crops, self._ws, self._held = [], [], []
            now = time.perf_counter()
            self.seconds = {"record": now - self._t_record}
            if self._t_record - self._t_request >= 0.05:  # the user was out of view at first: say so, so the
                self.seconds = {"wait": self._t_record - self._t_request, **self.seconds}  # phases add up
            self.state, self.phase, self.progress, self._t_phase = "adapting", "starting", 0.0, now
            run, bundle = self.runs, self._bundle
        self._thread = threading.Thread(target=self._work, args=(run, bundle, crops, ws, held),
                                        name="stylestream-calibrate", daemon=True)
        self._thread.start()

    def _work(self, run: int, bundle: Any, crops: torch.Tensor, ws: torch.Tensor,
              held: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        export_dir = tempfile.mkdtemp(prefix="stylestream-calibrate-") if self.export_precision else None
        proc = None
        try:
            # The bundle goes to the worker as it is: engines never convert the bundle they run (only their own
            # copies), so it is the caller's float32 bundle, only read here while it keeps serving; the worker
            # loads it onto the CPU. Bytes, not tensors: multiprocessing would share every tensor through its own
            # file descriptor (hundreds for a full-size bundle, against a limit of 1024 open files).
            buf = io.BytesIO()
            torch.save({"bundle": bundle, "crops": crops, "ws": ws, "held": held}, buf)
            ctx = multiprocessing.get_context("spawn")  # fork is unsafe with the stream's threads
            parent, child = ctx.Pipe(duplex=False)
            device = "cpu" if self.device.type == "cpu" else str(self.device)
            niceness = background_niceness()
            reused = reuse_exports(self.export_from, export_dir, self.export_precision or "fp32") \
                if export_dir is not None else {}
            proc = ctx.Process(target=_calibration_child, name="stylestream-calibrate", daemon=True,
                               args=(child, buf.getvalue(), self.cfg, device, export_dir,
                                     self.export_precision or "fp32", niceness, reused))
            del buf
            proc.start()
            # Lower its priority now, not when its function runs: importing torch & co. takes seconds of CPU.
            with contextlib.suppress(AttributeError, OSError):
                os.setpriority(os.PRIO_PROCESS, proc.pid, niceness)
            child.close()
            result: dict[str, Any] | None = None
            while result is None:
                if self.runs != run:
                    raise _Cancelled
                if not parent.poll(0.2):
                    if not proc.is_alive() and not parent.poll(0):
                        raise RuntimeError(f"the calibration worker exited with code {proc.exitcode}")
                    continue
                kind, value = parent.recv()
                if kind == "started":
                    self._next_phase(run, "start", "adapting")
                elif kind == "progress":
                    self._publish(run, progress=float(value))
                elif kind == "exporting":
                    if self.phase != "exporting":
                        self._next_phase(run, "adapt", "exporting", state="building")
                    self._publish(run, progress=float(value))
                elif kind == "error":
                    raise RuntimeError(value)
                elif kind == "done":
                    result = value
            self._next_phase(run, "export" if self.phase == "exporting" else "adapt", "building",
                             state="building", psnr={**self.psnr, **result["psnr"]})
            work = copy.deepcopy(bundle.generator)
            work.load_state_dict(torch.load(io.BytesIO(result["state"]), map_location="cpu", weights_only=True))
            adapted = dataclasses.replace(bundle, generator=work, name=derived_name(bundle.name, "calibrated"))
            adapted.provenance = {**bundle.provenance, "calibrated": {
                "from": bundle.name, "frames": int(ws.shape[0]), "iters": self.cfg.iters,
                "psnr_before": result["psnr"]["before"], "psnr_after": result["psnr"]["after"],
                "psnr_heldout_before": result["psnr"].get("heldout_before"),
                "psnr_heldout_after": result["psnr"].get("heldout_after"),
                "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}}
            out: Any = adapted
            if self.build is not None:
                out = self.build(adapted, Path(export_dir) if export_dir else None)
            now = time.perf_counter()
            self._publish(run, _pending=out, state="ready", phase="ready", progress=1.0,
                          seconds={**self.seconds, "build": now - self._t_phase, "total": now - self._t_request})
        except _Cancelled:
            pass
        except Exception as exc:  # reported on the status line; the stream goes on with the old weights
            with self._lock:
                if self.runs == run:
                    self.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
                    self.state = self.phase = "failed"
        finally:
            if proc is not None:
                if proc.is_alive():
                    proc.terminate()
                proc.join(5)
            if export_dir is not None:
                shutil.rmtree(export_dir, ignore_errors=True)

    def _next_phase(self, run: int, finished: str, phase: str, **attrs: Any) -> None:
        """End the current phase (its wall time goes into ``seconds[finished]``) and begin ``phase``."""
        now = time.perf_counter()
        self._publish(run, seconds={**self.seconds, finished: now - self._t_phase}, phase=phase, progress=0.0,
                      _t_phase=now, **attrs)

    def _publish(self, run: int, **attrs: Any) -> None:
        """Set attributes for run ``run`` only; a cancelled or superseded run gets :class:`_Cancelled` instead (so it
        can never overwrite the state of the run that replaced it)."""
        with self._lock:
            if self.runs != run:
                raise _Cancelled
            for k, v in attrs.items():
                setattr(self, k, v)

    def take(self) -> Any:
        """The finished result, once (None otherwise). Call on the thread that will use it, between frames."""
        with self._lock:
            result, self._pending = self._pending, None
            if result is None:
                return None
            self.result = result
            self.state = self.phase = "active"
            return result

    def status(self) -> dict[str, Any]:
        """JSON-able state for stats and status lines."""
        out: dict[str, Any] = {"state": self.state, "phase": self.phase, "progress": round(self.progress, 3)}
        if self.busy:  # how long the current phase has run (phases without a progress figure: starting, building)
            out["phase_s"] = round(time.perf_counter() - self._t_phase, 1)
        if self.state == "recording":
            out["recorded"] = len(self._crops)
            out["frames"] = self.cfg.frames
        if self.seconds:
            out["seconds"] = {k: round(v, 2) for k, v in self.seconds.items()}
        if self.psnr:
            out["psnr"] = {k: round(v, 2) for k, v in self.psnr.items()}
        if self.error:
            out["error"] = self.error
        return out

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
