"""Plumbing shared by the training loops: run directories, atomic resumable checkpoints, RNG state, progress and
scalar logging (rich, JSON lines, optional TensorBoard), sample grids, DDP set-up through ``torchrun`` and a graceful
stop on SIGTERM."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.distributed as dist
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

from models.errors import UserError

log = logging.getLogger("stylestream.train")

STATE_FILE = "state.pt"


# ---------------------------------------------------------------------------------------------- DDP


@dataclass
class Dist:
    """Where this process sits in a ``torchrun`` job (world 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> tuple[Dist, torch.device]:
    """Read RANK / WORLD_SIZE / LOCAL_RANK (set by torchrun), init the process group (NCCL on CUDA, Gloo on CPU)
    and pick the device. Written to the torch.distributed contract; only world 1 is exercised in tests."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    d = Dist(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available (use --device cpu)")
    dev = torch.device(device)
    if dev.type == "cuda" and world > 1:
        dev = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return d, dev


def sync_grads(params: list[torch.nn.Parameter], d: Dist) -> None:
    """All-reduce (average) gradients across processes, as stylegan2-ada-pytorch's training loop does (one flat
    buffer; a parameter without a gradient counts as zeros so every rank reduces the same layout)."""
    if d.world == 1:
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    flat /= d.world
    torch.nan_to_num(flat, nan=0, posinf=1e5, neginf=-1e5, out=flat)
    off = 0
    for g in grads:
        g.copy_(flat[off: off + g.numel()].view_as(g))
        off += g.numel()


def broadcast_params(modules: list[torch.nn.Module], d: Dist) -> None:
    if d.world == 1:
        return
    for m in modules:
        for t in list(m.parameters()) + list(m.buffers()):
            dist.broadcast(t.data, src=0)


def cleanup_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------ checkpoints


def rng_state(gens: dict[str, torch.Generator]) -> dict[str, Any]:
    out: dict[str, Any] = {"torch": torch.get_rng_state(), "gens": {k: g.get_state() for k, g in gens.items()}}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict[str, Any], gens: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(state["torch"])
    for k, g in gens.items():
        if k in state["gens"]:
            g.set_state(state["gens"][k])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(run_dir: Path, state: dict[str, Any]) -> Path:
    """Atomically write ``run_dir/state.pt`` (tensors, numbers, strings, dicts only: loads with weights_only)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".{STATE_FILE}.tmp-{os.getpid()}"
    torch.save(state, tmp)
    tmp.replace(run_dir / STATE_FILE)
    return run_dir / STATE_FILE


def load_state(run_dir: Path) -> dict[str, Any] | None:
    f = run_dir / STATE_FILE
    if not f.exists():
        return None
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file
        raise UserError(f"cannot resume from {f}: {exc} (delete it to start over)") from None


def config_dict(cfg: Any) -> dict[str, Any]:
    assert is_dataclass(cfg)
    return {f.name: getattr(cfg, f.name) for f in fields(cfg)} if not hasattr(cfg, "to_dict") else cfg.to_dict()


def write_config(run_dir: Path, cfg: Any, name: str = "config.json") -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / name).write_text(json.dumps(asdict(cfg), indent=2, default=str) + "\n")


# ---------------------------------------------------------------------------------------------- logging


class Progress:
    """Progress + scalars: a rich bar on a terminal, a log line every ``log_every`` steps otherwise, every
    scalar in ``run_dir/metrics.jsonl`` and, when ``tensorboard`` is True and installed, in TensorBoard."""

    def __init__(self, run_dir: Path, total: int, start: int, enabled: bool = True, tensorboard: bool = False,
                 log_every: int = 50, desc: str = "train"):
        self.run_dir, self.total, self.enabled, self.log_every, self.desc = run_dir, total, enabled, log_every, desc
        self.t0 = time.monotonic()
        self.start = start
        self._bar = None
        self._tb = None
        self._metrics = open(run_dir / "metrics.jsonl", "a") if enabled else None  # noqa: SIM115
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415 - optional (the train extra)

                self._tb = SummaryWriter(str(run_dir / "tb"))
            except ImportError:
                log.warning("TensorBoard is not installed (pip install 'stylestream[train]'); scalars go to "
                            "metrics.jsonl only")
        if enabled and sys.stderr.isatty():
            self._bar = RichProgress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"))
            self._bar.start()
            self._task = self._bar.add_task(desc, total=total, completed=start, info="")

    def update(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        rec = {"step": step, "time_s": round(time.monotonic() - self.t0, 2),
               **{k: float(v) for k, v in scalars.items()}}
        assert self._metrics is not None
        self._metrics.write(json.dumps(rec) + "\n")
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, float(v), step)
        info = " ".join(f"{k}={v:.4g}" for k, v in list(scalars.items())[:5])
        if self._bar is not None:
            self._bar.update(self._task, completed=step, info=info)
        elif step % self.log_every == 0 or step == self.total:
            el = time.monotonic() - self.t0
            rate = (step - self.start) / el if el > 0 else 0.0
            print(f"[{self.desc}] step {step}/{self.total} {el:7.0f}s {rate:5.2f} it/s {info}", flush=True)
            self._metrics.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
        if self._metrics is not None:
            self._metrics.close()
        if self._tb is not None:
            self._tb.close()


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[B, 3, H, W] in [-1, 1] → [B, H, W, 3] uint8."""
    return (x.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
            .cpu().numpy())


def save_grid(path: Path, rows: list[torch.Tensor], scale: int = 1) -> Path:
    """Write a PNG whose rows are image batches [B, 3, H, W] in [-1, 1] (same B, H, W)."""
    strips = [np.concatenate(list(to_uint8(r)), axis=1) for r in rows]
    grid = np.concatenate(strips, axis=0)
    if scale > 1:
        grid = cv2.resize(grid, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    cv2.imwrite(str(tmp), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    tmp.replace(path)
    return path


def set_threads(threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)


class StopOnSigterm:
    """SIGTERM (a scheduler pre-empting the job, ``kill``) asks a training loop to stop instead of killing it: the
    object turns true, the loop ends after its current step, and its ``finally`` writes the checkpoint that
    ``--resume`` continues from. Made before the loop; ``restore()`` (in the loop's ``finally``) puts the previous
    handler back. Off the main thread (no signal handlers there) only ``set()`` stops it."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._old: Any = None
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGTERM, lambda *_: self._event.set())

    def set(self) -> None:
        self._event.set()

    def __bool__(self) -> bool:
        return self._event.is_set()

    def restore(self) -> None:
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)
            self._old = None
