"""The CLI as a user sees it: what reaches stderr when it is piped, and the --list-edits table."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from realtime import cli
from realtime.vision.mediapipe_runtime import NOISE
from tests import REPO


def run_cli(argv: list[str], cwd: Path, timeout: float = 120) -> tuple[int, str, str]:
    """``python -m realtime.cli ARGV`` with stdout and stderr to files (not a terminal), MediaPipe's noise filter
    on as for a user → (exit code, stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if k not in ("STYLESTREAM_MEDIAPIPE_LOGS", "COLUMNS", "LINES")}
    out, err = cwd / "stdout.txt", cwd / "stderr.txt"
    with out.open("w") as fo, err.open("w") as fe:
        rc = subprocess.run([sys.executable, "-m", "realtime.cli", *argv], cwd=REPO, env=env, stdout=fo, stderr=fe,
                            timeout=timeout).returncode
    return rc, out.read_text(), err.read_text()


@pytest.mark.slow
def test_piped_run_prints_no_mediapipe_noise_and_an_unwrapped_summary(tmp_path, tiny_bundle_dir):
    """Issue 17.14: the summary must not wrap at the table's width (~40 columns) when stderr is a file; and the
    fd-level filter (issue 17.1: the only filter left) still drops MediaPipe's start-up lines."""
    out = tmp_path / "a_fairly_long_output_name_so_the_title_is_wider_than_the_table.mp4"
    rc, _, err = run_cli(["run", "demo:?seconds=1&fps=8&size=320x240", "-o", str(out), "--bundle",
                          str(tiny_bundle_dir), "--backend", "torch"], tmp_path)
    assert rc == 0, err
    assert not [ln for ln in err.splitlines() if any(n in ln for n in NOISE)], err
    assert "Traceback" not in err
    title = [ln for ln in err.splitlines() if ln.startswith("stylestream run: ")]
    assert len(title) == 1 and title[0].endswith(f"→ {out}"), err
    caption = [ln for ln in err.splitlines() if "frames written" in ln]
    assert len(caption) == 1 and caption[0].strip().startswith("8/8 frames written") and "drops 0" in caption[0], err


def test_list_edits_is_one_aligned_row_per_edit(tmp_path, capsys):
    """Issue 17.14: `--list-edits` prints name, kind, range and description in aligned columns (default bundle)."""
    assert cli.main(["run", "--list-edits"]) == 0
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    assert len(rows) >= 5, rows
    cells = [re.match(r"^(\S+) {2,}(\S+) {2,}(\[-?[\d.]+, -?[\d.]+\]) {2,}(\S.*)$", row) for row in rows]
    assert all(cells), [r for r, m in zip(rows, cells, strict=True) if not m]
    starts = {tuple(m.start(k) for k in (2, 3, 4)) for m in cells}
    assert len(starts) == 1, rows  # every column starts at the same place on every row
    assert {m.group(1) for m in cells} >= {"smile", "yaw", "random_identity"}
