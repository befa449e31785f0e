"""The package layering: import-linter's contracts (.importlinter), and the layers that must import without the
optional media/streaming packages (GPU machines often lack them)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests import REPO

# Packages (with every module inside them) and modules that must import with these packages missing.
BLOCKED = ("av", "aiortc", "pyvirtualcam", "mediapipe")
IMPORT_WITHOUT_OPTIONAL = (
    "models",
    "realtime.frames",
    "realtime.vision",
    "realtime.engines",
    "realtime.pipeline.processor",  # the device worker's code and the one stage runner (not the offline editor,
    "realtime.pipeline.runner",  # which reads and writes video files)
)

_CHECK = r"""
import importlib, json, pkgutil, sys

blocked, targets = set(sys.argv[1].split(",")), sys.argv[2].split(",")


class Blocker:
    '''A meta-path finder that makes the blocked packages look uninstalled.'''

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in blocked:
            raise ImportError(f"No module named {name!r} (blocked by tests/test_layers.py)", name=name)
        return None


sys.meta_path.insert(0, Blocker())
names = []
for t in targets:
    names.append(t)
    spec = importlib.util.find_spec(t)
    if spec is not None and spec.submodule_search_locations:
        names += [m.name for m in pkgutil.walk_packages(spec.submodule_search_locations, t + ".")]
failed = {}
for n in names:
    try:
        importlib.import_module(n)
    except Exception as exc:  # report every failure, not just the first
        failed[n] = f"{type(exc).__name__}: {exc}"
leaked = sorted(m for m in sys.modules if m.partition(".")[0] in blocked)
print(json.dumps({"imported": names, "failed": failed, "leaked": leaked}))
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def test_layers_import_without_av_aiortc_pyvirtualcam_mediapipe() -> None:
    r = subprocess.run([sys.executable, "-c", _CHECK, ",".join(BLOCKED), ",".join(IMPORT_WITHOUT_OPTIONAL)],
                       cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert not out["failed"], "these modules need an optional package at import time:\n" + "\n".join(
        f"  {k}: {v}" for k, v in out["failed"].items())
    assert not out["leaked"], out["leaked"]
    # the check really walked the packages (a typo in a name would otherwise pass silently)
    assert "realtime.vision.tracking" in out["imported"] and "models.bundle" in out["imported"], out["imported"]


def test_import_contracts_hold() -> None:
    """`lint-imports` with the repository's .importlinter: layers (nothing imports upwards) and no imports of tests/."""
    if importlib.util.find_spec("importlinter") is None:
        pytest.skip("import-linter is not installed (it is in the dev extra: pip install -e '.[dev]')")
    code = "from importlinter.cli import lint_imports_command; lint_imports_command()"
    r = subprocess.run([sys.executable, "-c", code, "--no-cache"],  # finds REPO/.importlinter in its cwd
                       cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    report = r.stdout[r.stdout.find("Contracts"):] if "Contracts" in r.stdout else r.stdout + r.stderr
    assert r.returncode == 0, "import contracts broken:\n" + report[-6000:]
    assert "BROKEN" not in report and "KEPT" in report, report
