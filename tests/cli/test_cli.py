"""The CLI as a user sees it: what reaches stderr when it is piped, and the --list-edits table."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from realtime import cli
from realtime.cli.common import PhaseProgress, status
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


def test_phase_progress_off_a_terminal_is_a_line_per_interval_and_one_at_the_end():
    """Issue 17.13: `edit --adapt` ran 50–60 s without a word when stderr was not a terminal (rich bars only draw on
    one). PhaseProgress prints a plain line every ``every_s`` seconds of a phase and one when it ends."""
    buf = io.StringIO()
    progress = PhaseProgress(Console(file=buf, force_terminal=False, width=200), every_s=0.05)
    with progress:
        for i in range(1, 13):
            progress("adapt", i, 12, f"loss {1 / i:.3f}")
            time.sleep(0.01)
        progress("adapt", 12, 12, "loss 0.083")  # repeated: no second end line
        progress.advance("track")
    lines = buf.getvalue().splitlines()
    adapt = [ln for ln in lines if ln.startswith("adapt: ")]
    assert 2 <= len(adapt) <= 5, lines  # ~120 ms of a phase at one line per 50 ms, plus the end
    assert adapt[-1].startswith("adapt: 12/12, loss 0.083 (") and adapt[-1].endswith(", done)"), adapt
    assert sum(ln.endswith("done)") for ln in adapt) == 1
    track = [ln for ln in lines if ln.startswith("track")]  # total unknown: no interval passed, ended at exit
    assert track == ["track: 1 (0 s, done)"], lines


@pytest.mark.slow
def test_piped_edit_adapt_reports_its_phases(tmp_path, tiny_bundle_dir):
    """Issue 17.13: `edit --adapt` with stderr to a file: the adaptation and the render say how far they are."""
    rc, out, err = run_cli(["edit", "demo:portrait?seconds=1&fps=8&size=320x240", "-o", str(tmp_path / "e.mp4"),
                            "--bundle", str(tiny_bundle_dir), "--adapt", "--adapt-iters", "30", "--edit",
                            "brighter=1"], tmp_path)
    assert rc == 0, err
    assert re.search(r"^adapt: 30/30, loss [\d.]+ \(\d+ s, done\)$", err, re.MULTILINE), err
    assert re.search(r"^render: 8/8 \(\d+ s, done\)$", err, re.MULTILINE), err


def test_status_off_a_terminal_says_the_step_and_its_time_until_it_ends():
    """Issue 17.13: a spinner shows nothing in a pipe; a long step (the first run's ONNX export) gets a plain line at
    its start and one with the time so far every ``every_s`` seconds."""
    buf = io.StringIO()
    with status(Console(file=buf, force_terminal=False, width=200), "preparing the engine", every_s=0.05):
        time.sleep(0.18)
    lines = buf.getvalue().splitlines()
    assert lines[0] == "preparing the engine …" and 2 <= len(lines) <= 5, lines
    assert all(re.fullmatch(r"preparing the engine … \d+ s", ln) for ln in lines[1:]), lines
    time.sleep(0.1)
    assert buf.getvalue().splitlines() == lines  # nothing after the step ended


def test_an_interrupt_while_python_m_loads_the_command_exits_130_not_by_sigint(tmp_path):
    """CI saw ``python -m realtime.cli run`` interrupted during start-up print its one line and then die by SIGINT
    (exit -2): CPython remembers a KeyboardInterrupt that left ``exec(str)`` code (classes built while the command
    loads) even though ``main`` caught it, and ``python -m`` then re-kills itself. The interrupt is raised there
    deterministically here: a command whose module is interrupted inside ``exec``."""
    pkg = tmp_path / "interrupting"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "command.py").write_text('exec("raise KeyboardInterrupt")\n')
    (pkg / "__main__.py").write_text(
        "import sys\nfrom realtime import cli\n"
        "cli.SUBCOMMANDS.append(('stop', 'interrupting.command', 'a command interrupted while it loads'))\n"
        "sys.exit(cli.main(['stop']))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    r = subprocess.run([sys.executable, "-m", "interrupting"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=60)
    assert (r.returncode, r.stderr) == (130, "stylestream stop: interrupted\n")
