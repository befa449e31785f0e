"""Provenance stamped into every benchmark JSON (machine, device, versions, git commit, date), and the one writer
of benchmark result files."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy
import torch


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def command_line() -> str:
    """The command that is running, written so that it can be pasted to reproduce the figures."""
    prog = os.path.basename(sys.argv[0])
    if prog == "stylestream" or sys.argv[0].endswith(os.path.join("realtime", "cli", "__main__.py")):
        return "stylestream " + shlex.join(sys.argv[1:])  # python -m realtime.cli is the same command
    if prog.endswith(".py") and "benchmarks" in os.path.abspath(sys.argv[0]):
        return f"python -m benchmarks.{prog[:-3]} " + shlex.join(sys.argv[1:])
    return shlex.join(sys.argv)


def provenance(device: str = "cpu") -> dict:
    info = {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "machine": platform.node(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "device": device,
        "load_avg": [round(v, 2) for v in os.getloadavg()],  # other work on the machine skews CPU timings
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
    for mod in ("onnxruntime", "av", "cv2"):
        with contextlib.suppress(Exception):
            info[mod] = __import__(mod).__version__
    return info


def write_result(path: Path | None, data: str | dict[str, Any], indent: int = 2) -> Path | None:
    """Write a result file, creating its folder: text as it is, anything else as JSON (``default=str``). Nothing
    when ``path`` is None (the flag was not given)."""
    if path is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data, indent=indent, default=str) + "\n")
    return path
