"""The installable wheel: built from the checkout, installed into a fresh virtual environment, run from elsewhere.

An editable install would hide missing package data (the built-in bundle, the web page), so this builds a real
wheel, installs it with ``--no-deps`` into a new venv whose only other import path is the test venv's
site-packages (for torch & co.; its editable-install hook is not activated there), checks that ``realtime`` is
imported from the installed copy, and filters a short clip with the built-in bundle from a folder outside the
checkout.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests import REPO

pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "STYLESTREAM_MEDIAPIPE_LOGS")}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_wheel_installs_and_runs_outside_the_checkout(tmp_path: Path) -> None:
    # build from a copy of the tracked files: an in-tree build would leave build/ and *.egg-info in the checkout
    src = tmp_path / "src"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        if (REPO / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    dist = tmp_path / "dist"
    r = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
              str(src)], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    wheel = next(dist.glob("stylestream-*.whl"))
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    target = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                       cwd=tmp_path).stdout.strip())
    # the dependencies come from the test environment's site-packages (a plain path: its .pth hooks stay off)
    (target / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    r = _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "-q", "--target", str(target),
              str(wheel)], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    work = tmp_path / "elsewhere"
    work.mkdir()
    r = _run([str(py), "-c", "import realtime, models.bundle as b; print(realtime.__file__); "
                             "print(b.DEFAULT_BUNDLE); print((b.DEFAULT_BUNDLE / 'bundle.json').exists())"], cwd=work)
    assert r.returncode == 0, r.stderr[-2000:]
    where, bundle, exists = r.stdout.split()
    assert Path(where).is_relative_to(target) and not Path(where).is_relative_to(REPO), where
    assert Path(bundle).is_relative_to(target) and exists == "True"
    r = _run([str(py), "-m", "realtime.cli", "run", "demo:?seconds=1&fps=8&size=320x240", "-o", "out.mp4",
              "--backend", "torch", "--edit", "smile=1"], cwd=work)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (work / "out.mp4").stat().st_size > 1000 and (work / "out.mp4.stylestream.json").exists()
    page = _run([str(py), "-c", "import realtime.server.app as a; print(a.WEB_DIR / 'index.html')"], cwd=work)
    assert Path(page.stdout.strip()).is_file(), page.stderr[-1000:]
