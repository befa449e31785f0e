"""`stylestream serve-models`: a real Triton server hosting a bundle's networks, used end to end by
`stylestream run --backend triton --triton-url …`; its errors (flags, a repository without its backend)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import av
import pytest

from export.triton import write_model_repository
from realtime import cli
from realtime.engines.triton_server import _members
from tests import REPO


def _start(args: list[str], timeout: float = 180.0) -> tuple[subprocess.Popen[str], str, list[str]]:
    proc = subprocess.Popen([sys.executable, "-m", "realtime.cli", "serve-models", *args], cwd=REPO,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    assert proc.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"ready at (http://\S+)", line)
        if m:
            return proc, m.group(1), lines
    proc.kill()
    raise AssertionError("serve-models did not become ready:\n" + "".join(lines))


def _stats(url: str, model: str) -> dict:
    with urllib.request.urlopen(f"{url}/v2/models/{model}/stats", timeout=5) as r:
        return json.loads(r.read())["model_stats"][0]


@pytest.mark.triton
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_serve_models_then_run_with_the_triton_backend(tiny_bundle_dir, tmp_path):
    repo = tmp_path / "repository"
    proc, url, lines = _start([str(tiny_bundle_dir), "--http-port", "0", "--grpc-port", "0", "--repository",
                               str(repo)])
    try:
        assert (repo / "stylestream_synthesis" / "config.pbtxt").exists()  # --repository keeps it
        assert "dynamic_batching" in (repo / "stylestream_synthesis" / "config.pbtxt").read_text()
        out = tmp_path / "out.mp4"
        code = cli.main(["run", "demo:?seconds=1&size=256x192", "-o", str(out), "--bundle", str(tiny_bundle_dir),
                         "--backend", "triton", "--triton-url", url, "--edit", "brighter=4",
                         "--composite", "regenerate"])  # regenerate: one synthesis per face frame
        assert code == 0
        with av.open(str(out)) as c:
            frames = sum(1 for _ in c.decode(video=0))
        assert frames == 30
        report = json.loads(Path(str(out) + ".stylestream.json").read_text())
        assert report["engine"]["backend"] == "triton" and report["stats"]["faces"] > 0
        faces = report["stats"]["faces"]
        # every face frame ran the synthesis network on the server (and FrEN at the key frames)
        assert _stats(url, "stylestream_synthesis")["inference_count"] == faces
        assert _stats(url, "stylestream_fren")["inference_count"] >= report["stats"]["key_frames"] >= 1
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rest = proc.communicate(timeout=60)[1]
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, rest
    assert "stylestream serve-models: stopped" in rest
    assert not _members([proc.pid]) and not list(Path("/dev/shm").glob(f"stylestream_triton_{proc.pid}_*"))


@pytest.mark.triton
@pytest.mark.slow
def test_serve_models_says_which_backend_an_onnx_repository_needs(tiny_bundle, tmp_path, capsys):
    """`export --to triton` writes an ONNX Runtime repository; this machine's server has only the Python backend,
    and the command says so in one line (exit 2)."""
    repo = tmp_path / "onnx-repo"
    write_model_repository(tiny_bundle, repo, instance_kind="KIND_CPU", ensemble=False)
    code = cli.main(["serve-models", "--serve-repository", str(repo), "--http-port", "0", "--grpc-port", "0"])
    err = capsys.readouterr().err
    assert code == 2
    assert "unable to find backend library for backend 'onnxruntime'" in err


def test_serve_models_flag_errors(tmp_path, capsys):
    assert cli.main(["serve-models", str(tmp_path), "--serve-repository", str(tmp_path)]) == 2
    assert "give no BUNDLE" in capsys.readouterr().err
    assert cli.main(["serve-models", "--http-port", "70000"]) == 2
    assert "http-port" in capsys.readouterr().err.replace("_", "-")



def test_serve_repository_refuses_the_flags_that_shape_a_written_one(tmp_path, capsys):
    """--serve-repository serves its config.pbtxt files as they are: --max-batch and friends would be silently
    ignored, so they are one clear line and exit 2 (before any server is looked for)."""
    assert cli.main(["serve-models", "--serve-repository", str(tmp_path), "--max-batch", "4", "--threads", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--max-batch, --threads shape the repository" in " ".join(err.split()) and "Traceback" not in err
    assert len(err.splitlines()) <= 2, err
