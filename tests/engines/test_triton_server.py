"""A real Triton Inference Server on this CPU: the Python-backend repository (export/triton_python.py) served by the
tritonserver of the nvidia-pytriton wheel, started by realtime/engines/triton_server.py, queried by the real
TritonEngine (tritonclient.http).

Tests marked ``triton`` skip with the reason when the binary or tritonclient is missing (conftest.py); install
with ``pip install --no-deps nvidia-pytriton==0.7.0 'tritonclient[http]==2.69.0'`` (docs/triton.md). The others
(repository files, missing-binary errors) run everywhere. One module-scoped export of the tiny-64 bundle and one
server (about 4–14 s to start on the 2-core machine) feed every test."""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import threading
import time

import pytest
import torch

from export.onnx import example_inputs, export_bundle, read_manifest
from export.parity import randomize_heads
from export.triton import model_config, write_model_repository
from export.triton_python import MODEL_PY, python_model_config, write_python_repository
from models.bundle import new_bundle
from models.errors import UserError
from realtime.engines import EngineOptions, EngineSpec, TorchEngine, TritonEngine, make_engine
from realtime.engines import triton_server as ts
from realtime.engines.triton_server import TritonServer
from tests.bundles import make_tiny_e4e_bundle

QUEUE_DELAY_US = 20_000  # long enough that concurrent requests reliably meet in the queue on a loaded CPU


@pytest.fixture(scope="module")
def bundle():
    b = new_bundle("tiny-64", "tiny", seed=3)
    return randomize_heads(b, seed=3)  # encoders must depend on their input, or parity proves nothing


@pytest.fixture(scope="module")
def onnx_dir(bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx")
    export_bundle(bundle, out, precision="fp32", max_batch=8)
    return out


@pytest.fixture(scope="module")
def repo(bundle, onnx_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("triton-python") / "repo"
    write_python_repository(bundle, out, onnx_dir=onnx_dir, max_batch=8, queue_delay_us=QUEUE_DELAY_US)
    return out


@pytest.fixture(scope="module")
def server(repo):
    srv = TritonServer(repo).start()
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def ref(bundle):
    return TorchEngine(copy.deepcopy(bundle), device="cpu")


# ---------------------------------------------------------------------------------------------------------------
# No server needed


def test_python_repository_matches_the_onnx_repository(bundle, onnx_dir, repo):
    names = sorted(p.name for p in repo.iterdir())
    assert names == ["stylestream_fren", "stylestream_keyframe", "stylestream_synthesis", "stylestream_vien"]
    manifest = read_manifest(onnx_dir)
    for m in ("fren", "vien", "synthesis"):
        d = repo / f"stylestream_{m}"
        cfg = (d / "config.pbtxt").read_text()
        entry = manifest["models"][f"{m}.fp32"]
        onnx_cfg = model_config(f"stylestream_{m}", entry, 8, "KIND_CPU")
        # the tensors (names, types, dims) are export/triton.py's, character for character
        tensors = cfg[cfg.index("input ["):cfg.index("dynamic_batching")]
        assert tensors == onnx_cfg[onnx_cfg.index("input ["):onnx_cfg.index("dynamic_batching")]
        assert 'backend: "python"' in cfg and "max_batch_size: 8" in cfg and "kind: KIND_CPU" in cfg
        assert f"max_queue_delay_microseconds: {QUEUE_DELAY_US}" in cfg and "preferred_batch_size" not in cfg
        assert cfg.count("{") == cfg.count("}") and cfg.count("[") == cfg.count("]")
        assert (d / "1" / "model.py").read_text() == MODEL_PY.read_text()
        onnx_bytes = (d / "1" / "model.onnx").read_bytes()
        assert hashlib.sha256(onnx_bytes).hexdigest() == entry["sha256"]
        meta = json.loads((d / "stylestream.json").read_text())
        assert meta["backend"] == "python+onnxruntime" and meta["model"] == m
    ens = (repo / "stylestream_keyframe" / "config.pbtxt").read_text()
    assert 'platform: "ensemble"' in ens and 'model_name: "stylestream_synthesis"' in ens
    assert "preferred_batch_size: [ 2, 4 ]" in python_model_config("x", manifest["models"]["fren.fp32"], 4,
                                                                   preferred=(2, 4))
    with pytest.raises(UserError, match="max-batch must be"):
        write_python_repository(bundle, repo.parent / "bad", onnx_dir=onnx_dir, max_batch=0)
    with pytest.raises(UserError, match="another bundle"):
        write_python_repository(new_bundle("tiny-64", "tiny", seed=4), repo.parent / "bad", onnx_dir=onnx_dir)


def test_missing_binary_is_one_clear_user_error(tmp_path, monkeypatch):


    with pytest.raises(UserError, match=r"tritonserver binary .*no-such does not exist or is not executable; "
                                        r"pip install --no-deps nvidia-pytriton==0\.7\.0"):
        ts.TritonServer(tmp_path, binary=tmp_path / "no-such")
    monkeypatch.setenv(ts.ENV_BINARY, str(tmp_path / "also-missing"))
    with pytest.raises(UserError, match="also-missing does not exist"):
        ts.find_tritonserver()
    monkeypatch.delenv(ts.ENV_BINARY)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)  # no nvidia-pytriton installed
    with pytest.raises(UserError, match="no Triton Inference Server here: pip install --no-deps nvidia-pytriton"):
        ts.find_tritonserver()
    with pytest.raises(UserError, match="is not a folder"):
        ts.TritonServer(tmp_path / "no-repo")


# ---------------------------------------------------------------------------------------------------------------
# The real server


@pytest.mark.triton
@pytest.mark.slow
def test_engine_matches_torch_through_the_real_server(bundle, server, ref):


    assert server.startup_s is not None and server.startup_s > 0
    eng = make_engine(bundle, EngineSpec("triton", "cpu", options=EngineOptions(triton_url=server.http_url)))
    assert isinstance(eng, TritonEngine) and eng.has_vien
    assert eng.max_batch == 8  # the repository's max_batch_size: BatchingEngine never sends a bigger call
    for batch in (1, 3):
        crops = example_inputs(bundle, "fren", batch=batch, seed=10 + batch)["crops"]
        ws = eng.encode_key(crops)
        assert ws.shape == (batch, eng.num_ws, eng.w_dim) and ws.dtype == torch.float32
        torch.testing.assert_close(ws, ref.encode_key(crops), atol=1e-4, rtol=1e-4)
        prev = ws.flip(0) + 0.05
        reuse = eng.encode_reuse(crops, prev)
        torch.testing.assert_close(reuse, ref.encode_reuse(crops, prev), atol=1e-4, rtol=1e-4)
        assert torch.equal(reuse[:, eng.num_coarse:], prev[:, eng.num_coarse:])  # fine layers passed through
        img = eng.synthesize(ws)
        assert img.shape == (batch, 3, eng.resolution, eng.resolution)
        torch.testing.assert_close(img, ref.synthesize(ws), atol=1e-4, rtol=1e-4)
    # the key-frame ensemble (crops → FrEN → synthesis) in one round trip
    crops = example_inputs(bundle, "fren", batch=2, seed=21)["crops"]
    th = eng._tc  # tritonclient.http: optional, imported by the engine (the test is skipped without it)
    inp = th.InferInput("crops", list(crops.shape), "FP32")
    inp.set_data_from_numpy(crops.numpy())
    res = eng.client.infer("stylestream_keyframe", [inp],
                           outputs=[th.InferRequestedOutput("ws"), th.InferRequestedOutput("image")])
    ws_ref = ref.encode_key(crops)
    torch.testing.assert_close(torch.from_numpy(res.as_numpy("ws").copy()), ws_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.from_numpy(res.as_numpy("image").copy()), ref.synthesize(ws_ref),
                               atol=1e-4, rtol=1e-4)
    # made on this thread, used on another (as the pipeline's device worker does): one client per thread
    errors: list[BaseException] = []
    got: list[torch.Tensor] = []

    def worker() -> None:
        try:
            got.append(eng.synthesize(ws_ref))
        except BaseException as exc:  # noqa: BLE001 - reported by the assert below
            errors.append(exc)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert not errors, errors
    torch.testing.assert_close(got[0], ref.synthesize(ws_ref), atol=1e-4, rtol=1e-4)
    eng.close()


@pytest.mark.triton
@pytest.mark.slow
def test_dynamic_batching_merges_concurrent_streams(bundle, server, ref):
    eng = make_engine(bundle, EngineSpec("triton", "cpu", options=EngineOptions(triton_url=server.http_url)))
    streams, calls = 8, 5
    ws_all = example_inputs(bundle, "synthesis", batch=streams, seed=33)["ws"]
    want = ref.synthesize(ws_all)
    before = server.stats("stylestream_synthesis")
    errors: list[BaseException] = []
    outs: dict[int, list[torch.Tensor]] = {i: [] for i in range(streams)}
    start = threading.Barrier(streams)

    def stream(i: int) -> None:
        try:
            start.wait()
            for _ in range(calls):
                outs[i].append(eng.synthesize(ws_all[i:i + 1]))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i in range(streams):  # every stream got its own rows back out of the merged batches
        for out in outs[i]:
            torch.testing.assert_close(out, want[i:i + 1], atol=1e-4, rtol=1e-4)
    after = server.stats("stylestream_synthesis")
    requests = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    assert requests == streams * calls
    assert executions < requests * 0.75, (requests, executions)  # merged: fewer model executions than requests
    sizes = {b["batch_size"]: b["compute_infer"]["count"] for b in after["batch_stats"]}
    assert max(sizes) >= 2 and max(sizes) <= 8, sizes
    eng.close()


@pytest.mark.triton
@pytest.mark.slow
def test_onnx_repository_names_the_missing_backend(bundle, onnx_dir, tmp_path):
    repo = tmp_path / "onnx-repo"
    write_model_repository(bundle, repo, ["fp32"], max_batch=8, onnx_dir=onnx_dir, instance_kind="KIND_CPU")
    srv = TritonServer(repo, grpc=False, startup_timeout_s=60)
    t0 = time.perf_counter()
    with pytest.raises(UserError, match=r"tritonserver exited \(1\) while starting: failed to load "
                                        r"'stylestream_\w+' version 1: Invalid argument: unable to find backend "
                                        r"library for backend 'onnxruntime', try specifying runtime on the model "
                                        r"configuration\."):
        srv.start()
    assert time.perf_counter() - t0 < 30  # fails fast, no waiting for a readiness that never comes
    srv.close()


@pytest.mark.triton
@pytest.mark.slow
def test_grpc_engine_matches_and_times_out_on_a_stalled_server(bundle, server, ref):
    """grpc:// URLs: same answers; a SIGSTOPped server ends in a UserError after timeout_s (gRPC calls have no
    deadline unless given one per call: without it the call hung for good)."""
    pytest.importorskip("grpc", reason="needs pip install 'tritonclient[grpc]' (grpcio)")

    eng = make_engine(bundle, EngineSpec("triton", "cpu",
                                        options=EngineOptions(triton_url=server.grpc_url, timeout_s=2.0)))
    crops = example_inputs(bundle, "fren", batch=2, seed=55)["crops"]
    ws = eng.encode_key(crops)
    torch.testing.assert_close(ws, ref.encode_key(crops), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(eng.synthesize(ws), ref.synthesize(ws), atol=1e-4, rtol=1e-4)
    server.pause()
    try:
        t0 = time.perf_counter()
        with pytest.raises(UserError, match=r"grpc://127\.0\.0\.1:\d+ failed: InferenceServerException: "
                                            r"\[StatusCode\.DEADLINE_EXCEEDED\] Deadline Exceeded"):
            eng.synthesize(ws)
        assert 1.5 < time.perf_counter() - t0 < 10
    finally:
        server.resume()
    torch.testing.assert_close(eng.synthesize(ws), ref.synthesize(ws), atol=1e-4, rtol=1e-4)
    eng.close()


@pytest.mark.triton
@pytest.mark.slow
def test_killed_and_stalled_server_are_user_errors_and_recover(bundle, server, ref):
    """kill -9 mid-stream → UserError naming the connection failure; a restart on the same ports serves the same
    engine again; SIGSTOP → UserError after the client's network timeout; SIGCONT → served again."""

    eng = make_engine(bundle, EngineSpec("triton", "cpu",
                                        options=EngineOptions(triton_url=server.http_url, timeout_s=2.0)))
    ws = example_inputs(bundle, "synthesis", batch=1, seed=44)["ws"]
    want = ref.synthesize(ws)
    torch.testing.assert_close(eng.synthesize(ws), want, atol=1e-4, rtol=1e-4)
    try:
        server.kill()
        with pytest.raises(UserError, match=r"Triton inference on stylestream_synthesis at http://127\.0\.0\.1:\d+ "
                                            r"failed: (HTTPConnectionClosed|ConnectionRefusedError|"
                                            r"ConnectionResetError)"):
            eng.synthesize(ws)
        with pytest.raises(UserError, match=r"failed: ConnectionRefusedError: \[Errno 111\] Connection refused"):
            eng.synthesize(ws)
        server.restart()
        torch.testing.assert_close(eng.synthesize(ws), want, atol=1e-4, rtol=1e-4)
        server.pause()
        t0 = time.perf_counter()
        with pytest.raises(UserError, match=r"failed: TimeoutError: timed out"):
            eng.synthesize(ws)
        waited = time.perf_counter() - t0
        assert 1.5 < waited < 10, waited
        server.resume()
        torch.testing.assert_close(eng.synthesize(ws), want, atol=1e-4, rtol=1e-4)
    finally:  # leave the module's server running for whatever test comes next
        if server.proc is not None and server.proc.poll() is None:
            server.resume()
        else:
            server.start(keep_ports=True)
        eng.close()


def test_model_py_is_self_contained():
    """model.py imports nothing from stylestream: the repository runs on any Triton whose Python has ORT + torch."""
    imports = [ln.split()[1] for ln in MODEL_PY.read_text().splitlines() if ln.startswith(("import ", "from "))]
    assert set(imports) <= {"__future__", "json", "os", "typing", "numpy", "onnxruntime", "torch",
                            "triton_python_backend_utils"}, imports


@pytest.mark.triton
@pytest.mark.slow
def test_e4e_bundle_serves_its_coarse_model(tmp_path):
    """An e4e bundle's repository holds fren_coarse; the engine uses it for encode_coarse (coarse reuse without a
    ViEN), matching torch, with the fine rows passed through."""
    b = make_tiny_e4e_bundle()
    repo = tmp_path / "repo"
    names = write_python_repository(b, repo, max_batch=4, ensemble=False)
    assert sorted(names) == ["stylestream_fren", "stylestream_fren_coarse", "stylestream_synthesis"]
    ref = TorchEngine(b, device="cpu")
    with TritonServer(repo).start() as srv:
        eng = make_engine(b, EngineSpec("triton", "cpu", options=EngineOptions(triton_url=srv.http_url)))
        assert eng.coarse_model and not eng.has_vien and eng.max_batch == 4
        crops = example_inputs(b, "fren_coarse", batch=2, seed=5)["crops"]
        prev = ref.encode_key(crops.flip(0))
        got = eng.encode_coarse(crops, prev)
        torch.testing.assert_close(got, ref.encode_coarse(crops, prev), atol=1e-4, rtol=1e-4)
        assert torch.equal(got[:, eng.num_coarse:], prev[:, eng.num_coarse:])
        eng.close()
