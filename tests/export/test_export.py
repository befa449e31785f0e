"""ONNX export, ONNX Runtime parity and engines, Triton repository, TensorRT naming, CLI errors.

One module-scoped export of the tiny-64 bundle (fp32: FrEN, ViEN, synthesis; fp16: FrEN) feeds every test, so the
~10 s-per-model exports happen once. CUDA-only checks (CUDA graphs, ORT CUDA provider) carry the ``gpu`` marker."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import re
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from benchmarks.bench_export import format_speed, speed_compare
from export.artifacts import MODELS, bundle_hash, onnx_filename, read_manifest
from export.onnx import available_models, example_inputs, export_bundle, export_module, model_spec
from export.parity import (
    TOLERANCES,
    check_model,
    compare,
    format_table,
    locate_drift,
    randomize_heads,
    run_parity,
)
from export.tensorrt import engine_name
from export.triton import write_model_repository
from models.bundle import new_bundle
from models.errors import UserError
from models.files import file_sha256
from realtime.cli import main as cli_main
from realtime.cli.options import add_config, config_from_args
from realtime.engines import Engine, EngineOptions, EngineSpec, OrtEngine, TorchEngine, engine_like, make_engine


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return tiny_bundle  # the session's tiny bundle: randomised encoder heads, so parity means something


@pytest.fixture(scope="module")
def onnx_dir(bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx")
    export_bundle(bundle, out, precision="fp32", max_batch=4)
    export_bundle(bundle, out, precision="fp16", models=["fren"], max_batch=4)
    return out


@pytest.mark.slow
def test_files_manifest_names_and_dynamic_batch(bundle, onnx_dir: Path):
    m = read_manifest(onnx_dir)
    assert m["bundle_hash"] == bundle_hash(bundle) and m["opset"] >= 17
    assert set(m["models"]) == {"fren.fp32", "vien.fp32", "synthesis.fp32", "fren.fp16"}  # merged, not replaced
    expect = {"fren": (["crops"], ["ws"]), "vien": (["crops", "prev_ws"], ["ws"]), "synthesis": (["ws"], ["image"])}
    for key, entry in m["models"].items():
        path = onnx_dir / entry["file"]
        assert entry["sha256"] == file_sha256(path)
        model = onnx.load(str(path))
        onnx.checker.check_model(model, full_check=True)
        assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
        ins, outs = expect[entry["model"]]
        assert [i.name for i in model.graph.input] == ins, key
        assert [o.name for o in model.graph.output] == outs, key
        for vi in [*model.graph.input, *model.graph.output]:
            dims = vi.type.tensor_type.shape.dim
            assert dims[0].dim_param and not dims[0].HasField("dim_value"), f"{key}:{vi.name} batch is not dynamic"
            assert vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # fp16 keeps a float32 interface
        assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    g = bundle.generator
    assert m["models"]["synthesis.fp32"]["outputs"][0]["shape"] == ["batch", 3, g.img_resolution, g.img_resolution]
    fp16 = onnx.load(str(onnx_dir / "fren.fp16.onnx"))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in fp16.graph.initializer)  # really half inside
    assert not list(onnx_dir.glob(".*tmp*"))  # nothing half-written left behind


@pytest.mark.slow
def test_ort_parity_table(bundle, onnx_dir):
    results = run_parity(bundle, onnx_dir)
    assert {(r.model, r.precision) for r in results} == {(m, "fp32") for m in available_models(bundle)} | {
        ("fren", "fp16")}
    for r in results:
        assert r.ok, r.message()
        assert r.max_rel <= TOLERANCES[r.precision][0]
    fren16 = next(r for r in results if r.precision == "fp16")
    assert fren16.max_abs > 0  # a real half-precision model, not the fp32 one renamed
    table = format_table(results)
    assert table.count("\n") == len(results) + 1 and "CPUExecutionProvider" in table


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.slow
def test_dynamic_batch_in_ort(bundle, onnx_dir, batch):
    assert available_models(bundle) == [m for m in MODELS if m != "fren_coarse"]  # a ViT FrEN: no coarse model
    for name in available_models(bundle):
        sess = ort.InferenceSession(str(onnx_dir / onnx_filename(name, "fp32")), providers=["CPUExecutionProvider"])
        inputs = example_inputs(bundle, name, batch=batch, seed=7)
        got = sess.run(None, {k: v.numpy() for k, v in inputs.items()})[0]
        with torch.no_grad():
            ref = model_spec(bundle, name).module(*inputs.values()).numpy()
        assert got.shape[0] == batch
        _, _, max_rel, _ = compare(got, ref)
        assert max_rel < 1e-4, (name, batch, max_rel)


@pytest.mark.slow
def test_fp16_overflow_is_located(bundle, tmp_path):
    """A bias beyond fp16's range in transformer block 1 must be reported as the drift point."""
    bad = copy.deepcopy(bundle)
    with torch.no_grad():
        bad.fren.backbone.blocks[1].mlp[2].bias.fill_(1e5)  # > 65504: inf in fp16, fine in fp32
    export_bundle(bad, tmp_path, precision="fp16", models=["fren"])
    r = check_model(bad, tmp_path, "fren", "fp16")
    assert not r.ok and r.first_drift == "backbone.blocks.1", r.message()
    names = [t.name for t in r.taps]
    assert names[:3] == ["backbone.patch_embed", "backbone.blocks.0", "backbone.blocks.1"]
    assert r.taps[0].ok and r.taps[1].ok
    assert "drift starts at backbone.blocks.1" in r.message()


def onnx_spec(model_dir: Path | None = None, **options) -> EngineSpec:
    return EngineSpec("onnx", "cpu", options=EngineOptions(model_dir=model_dir, **options))


@pytest.mark.slow
def test_ort_engine_matches_torch_engine(bundle, onnx_dir):
    eng_t = TorchEngine(bundle, device="cpu")  # engines never modify their bundle: both can share it
    eng_o = make_engine(bundle, onnx_spec(onnx_dir, threads=1))
    assert isinstance(eng_o, OrtEngine) and isinstance(eng_o, Engine)
    assert eng_o.spec == EngineSpec("onnx", "cpu", "fp32", EngineOptions(model_dir=onnx_dir, threads=1))
    for attr in ("crop_size", "resolution", "num_ws", "w_dim", "num_coarse"):
        assert getattr(eng_o, attr) == getattr(eng_t, attr)
    crops = example_inputs(bundle, "fren", batch=2, seed=11)["crops"]
    ws_t, ws_o = eng_t.encode_key(crops), eng_o.encode_key(crops)
    assert ws_o.dtype == torch.float32 and ws_o.device.type == "cpu"
    torch.testing.assert_close(ws_o, ws_t, atol=1e-4, rtol=1e-4)
    prev = ws_t + 0.1
    re_o = eng_o.encode_reuse(crops, prev)
    torch.testing.assert_close(re_o, eng_t.encode_reuse(crops, prev), atol=1e-4, rtol=1e-4)
    c = eng_o.num_coarse
    assert torch.equal(re_o[:, c:], prev[:, c:])  # fine layers reused exactly
    img_o = eng_o.synthesize(ws_t)
    torch.testing.assert_close(img_o, eng_t.synthesize(ws_t), atol=1e-4, rtol=1e-4)
    # StyleSpace deltas: not in the graph; the engine falls back to torch synthesis for such frames
    deltas = {"b8.conv1": torch.full((2, bundle.generator.synthesis.b8.conv1.affine.weight.shape[0]), 0.5)}
    img_d = eng_o.synthesize(ws_t, deltas)
    torch.testing.assert_close(img_d, eng_t.synthesize(ws_t, deltas), atol=1e-4, rtol=1e-4)
    assert (img_d - img_o).abs().max() > 1e-3
    with pytest.raises(ValueError, match="crops must be"):
        eng_o.encode_key(torch.zeros(1, 3, 8, 8))
    # engine_like: an onnx engine for a bundle already exported to a folder (the calibration worker's job)
    twin = engine_like(eng_o, bundle, onnx_dir)
    assert isinstance(twin, OrtEngine) and twin.spec == dataclasses.replace(
        eng_o.spec, options=EngineOptions(model_dir=onnx_dir))  # threads are process-wide: not set again
    torch.testing.assert_close(twin.synthesize(ws_t), img_o, rtol=0, atol=0)
    with pytest.raises(ValueError, match="needs the folder the bundle was exported to"):
        engine_like(eng_o, bundle)
    eng_o.close()


@pytest.mark.slow
def test_engine_model_dir_checks(bundle, onnx_dir, tmp_path):
    other = new_bundle("tiny-64", "tiny", seed=4)
    with pytest.raises(UserError, match="another bundle"):
        make_engine(other, onnx_spec(onnx_dir))
    with pytest.raises(UserError, match="no fp16 export of"):
        make_engine(bundle, EngineSpec("onnx", "cpu", "fp16", EngineOptions(model_dir=onnx_dir)))
    with pytest.raises(UserError, match="not an ONNX export folder"):
        make_engine(bundle, onnx_spec(tmp_path))
    with pytest.raises(UserError, match="--backend must be one of auto, torch, onnx, tensorrt, triton, got 'tflite'"):
        make_engine(bundle, EngineSpec("tflite"))
    with pytest.raises(UserError, match="^--model-dir applies to --backend onnx / tensorrt, not torch$"):
        make_engine(bundle, EngineSpec("torch", "cpu", options=EngineOptions(model_dir=onnx_dir)))


@pytest.mark.slow
def test_auto_backend_is_onnx_on_cpu_and_falls_back_to_torch(bundle, onnx_dir, tmp_path, monkeypatch, capsys):
    eng = make_engine(bundle, EngineSpec("auto", "cpu", options=EngineOptions(model_dir=onnx_dir, threads=1)))
    assert isinstance(eng, OrtEngine) and eng.spec.backend == "onnx" and eng.spec.options.model_dir == onnx_dir
    # the export cannot be written (the cache is a file): one warning, and the torch engine
    blocker = tmp_path / "cache-is-a-file"
    blocker.write_text("")
    monkeypatch.setenv("STYLESTREAM_CACHE", str(blocker))
    onnx_only = EngineOptions(threads=1, providers=("CPUExecutionProvider",))
    eng = make_engine(bundle, EngineSpec("auto", "cpu", options=onnx_only))
    assert isinstance(eng, TorchEngine)
    # the torch engine's spec keeps the options torch takes and drops onnx's
    assert eng.spec == EngineSpec("torch", "cpu", "fp32", EngineOptions(threads=1))
    err = capsys.readouterr().err.strip().splitlines()
    assert "Not a directory); using the torch engine" in err[-1], err
    assert sum("using the torch engine" in line for line in err) == 1, err
    # options are checked against what auto resolves to (onnx on this CPU), before anything is built
    with pytest.raises(UserError, match="^--cuda-graphs applies to --backend torch, not onnx$"):
        make_engine(bundle, EngineSpec("auto", "cpu", options=EngineOptions(cuda_graphs=True)))


def _has_tensorrt() -> bool:
    try:
        import tensorrt  # noqa: F401, PLC0415 - optional; the PyPI stub raises at import

        return torch.cuda.is_available()
    except Exception:
        return False


def test_tensorrt_and_triton_fail_clearly(bundle):
    if not _has_tensorrt():
        with pytest.raises(UserError, match="TensorRT|CUDA"):
            make_engine(bundle, EngineSpec("tensorrt"))
    with pytest.raises(UserError, match="cannot reach the Triton server|Triton client"):
        make_engine(bundle, EngineSpec("triton", "cpu", options=EngineOptions(triton_url="http://127.0.0.1:1",
                                                                              timeout_s=2.0)))


@pytest.mark.slow
def test_tensorrt_engine_names_encode_what_matters(onnx_dir, tmp_path):
    p = onnx_dir / "synthesis.fp32.onnx"
    base = engine_name(p, "fp16", (1, 1, 8), trt_version="10.3.0")
    assert base.startswith("synthesis-") and base.endswith("-trt10.3.0.plan") and "-fp16-" in base
    assert file_sha256(p)[:16] in base and "-b1-1-8-" in base
    assert engine_name(p, "fp32", (1, 1, 8), trt_version="10.3.0") != base
    assert engine_name(p, "fp16", (1, 2, 8), trt_version="10.3.0") != base
    assert engine_name(p, "fp16", (1, 1, 8), trt_version="10.4.0") != base
    q = tmp_path / "synthesis.fp32.onnx"
    q.write_bytes(p.read_bytes() + b"\0")  # other content → other hash
    assert engine_name(q, "fp16", (1, 1, 8), trt_version="10.3.0") != base


@pytest.mark.slow
def test_triton_repository(bundle, onnx_dir, tmp_path):
    repo = tmp_path / "repo"
    names = write_model_repository(bundle, repo, ["fp32"], max_batch=4, onnx_dir=onnx_dir)
    assert names == ["stylestream_fren", "stylestream_vien", "stylestream_synthesis", "stylestream_keyframe"]
    g = bundle.generator
    for m in ("fren", "vien", "synthesis"):
        d = repo / f"stylestream_{m}"
        cfg = (d / "config.pbtxt").read_text()
        assert cfg.count("{") == cfg.count("}") and cfg.count("[") == cfg.count("]")
        assert f'name: "stylestream_{m}"' in cfg and 'backend: "onnxruntime"' in cfg and "max_batch_size: 4" in cfg
        assert "dynamic_batching" in cfg and "preferred_batch_size: [ 1, 2, 4 ]" in cfg and "KIND_GPU" in cfg
        assert file_sha256(d / "1" / "model.onnx") == file_sha256(onnx_dir / f"{m}.fp32.onnx")
        assert json.loads((d / "stylestream.json").read_text())["bundle_hash"] == bundle_hash(bundle)
    syn = (repo / "stylestream_synthesis" / "config.pbtxt").read_text()
    assert f"dims: [ {g.num_ws}, {g.w_dim} ]" in syn and f"dims: [ 3, {g.img_resolution}, {g.img_resolution} ]" in syn
    ens = (repo / "stylestream_keyframe" / "config.pbtxt").read_text()
    assert 'platform: "ensemble"' in ens and 'model_name: "stylestream_fren"' in ens and (repo / "stylestream_keyframe"
                                                                                          / "1").is_dir()
    with pytest.raises(UserError, match="lacks the fp16 export"):
        write_model_repository(bundle, repo, ["fp16"], onnx_dir=onnx_dir)


@pytest.mark.slow
def test_speed_compare_runs(bundle, onnx_dir):
    s = speed_compare(bundle, onnx_dir, threads=1, iters=2, warmup=1, max_seconds=2)
    for row in s["calls"].values():
        assert row["torch"]["median_ms"] > 0 and row["onnx"]["median_ms"] > 0
        assert np.isfinite(row["ratio_torch_over_onnx"])
    assert "frame (encode_reuse + synthesize)" in format_speed(s)


@pytest.mark.slow
def test_cli_export(bundle, tmp_path, capsys):
    bdir = bundle.save(tmp_path / "b")
    out = tmp_path / "out"
    assert cli_main(["export", str(bdir), "--to", "onnx", "-o", str(out), "--models", "fren"]) == 0
    text = capsys.readouterr().out
    assert "[1/1] exporting fren (fp32)" in text and "| fren | fp32 |" in text
    parity = json.loads((out / "parity.json").read_text())
    assert parity[0]["ok"] and parity[0]["model"] == "fren"
    assert cli_main(["export", str(tmp_path / "nope"), "-o", str(out)]) == 2
    assert "bundle not found" in capsys.readouterr().err
    assert cli_main(["export", str(bdir), "-o", str(out), "--max-batch", "0"]) == 2
    if not _has_tensorrt():
        assert cli_main(["export", str(bdir), "--to", "tensorrt", "-o", str(tmp_path / "trt")]) == 2
        assert "TensorRT" in capsys.readouterr().err
        assert not (tmp_path / "trt").exists()


# ---------------------------------------------------------------------------------------------------------------
# CUDA (skipped here: no GPU)


@pytest.mark.gpu
def test_cuda_graphs_match_eager_and_are_not_stale():
    b = randomize_heads(new_bundle("tiny-64", "tiny", seed=5), seed=5)
    eager = TorchEngine(b, device="cuda", precision="fp32", channels_last=False)
    graphed = TorchEngine(b, device="cuda", precision="fp32", cuda_graphs=True)
    for seed in (1, 2):  # second round replays the captured graphs with new inputs
        crops = example_inputs(b, "fren", batch=2, seed=seed)["crops"].cuda()
        ws_e, ws_g = eager.encode_key(crops), graphed.encode_key(crops)
        torch.testing.assert_close(ws_g, ws_e, atol=1e-4, rtol=1e-4)
        prev = ws_e.flip(0)
        torch.testing.assert_close(graphed.encode_reuse(crops, prev), eager.encode_reuse(crops, prev),
                                   atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(graphed.synthesize(ws_e), eager.synthesize(ws_e), atol=1e-3, rtol=1e-3)
    a = graphed.synthesize(ws_e)
    b2 = graphed.synthesize(ws_e.flip(0))
    assert not torch.equal(a, b2)  # outputs are copies, not the graph's static buffer
    assert len(graphed._synth_fn.graphs) == 1  # type: ignore[attr-defined]


@pytest.mark.gpu
def test_cuda_fp16_engine_close_to_fp32():
    b = randomize_heads(new_bundle("tiny-64", "tiny", seed=5), seed=5)
    ref = TorchEngine(b, device="cuda", precision="fp32")
    fast = TorchEngine(b, device="cuda", precision="fp16", cuda_graphs=True)
    ws = example_inputs(b, "synthesis", batch=1)["ws"].cuda()
    _, _, max_rel, mean_rel = compare(fast.synthesize(ws).cpu().numpy(), ref.synthesize(ws).cpu().numpy())
    assert max_rel < TOLERANCES["fp16"][0] and mean_rel < TOLERANCES["fp16"][1]
    # both engines run their own converted copies: the shared bundle is still CPU float32, contiguous
    for t in [*b.generator.parameters(), *b.fren.parameters()]:
        assert t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous()
    assert fast.synthesis is not b.generator.synthesis and fast.synthesis.b8.conv1.affine.weight.dtype == torch.float16


@pytest.mark.gpu
@pytest.mark.slow
def test_ort_cuda_provider(bundle, onnx_dir):
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is not installed")
    eng = make_engine(bundle, EngineSpec("onnx", "cuda", "fp32", EngineOptions(model_dir=onnx_dir)))
    ref = TorchEngine(bundle, device="cpu")
    ws = example_inputs(bundle, "synthesis", batch=2)["ws"]
    out = eng.synthesize(ws.cuda())
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), ref.synthesize(ws), atol=1e-3, rtol=1e-3)


def test_backend_flags_map_to_engine_options(bundle, tmp_path):
    """The CLI's engine flags come from EngineSpec / EngineOptions (one declaration); names are the old ones."""
    p = argparse.ArgumentParser()
    add_config(p, EngineSpec)
    add_config(p, EngineOptions)
    flags = {s for a in p._actions for s in a.option_strings}
    assert {"--backend", "--device", "--precision", "--model-dir", "--triton-url", "--cuda-graphs", "--torch-compile",
            "--trt-cache"} <= flags
    assert not {"--threads", "--providers", "--max-batch", "--timeout-s", "--compile", "--cache-dir"} & flags

    def spec(*argv: str) -> EngineSpec:
        args = p.parse_args(list(argv))
        return config_from_args(EngineSpec, args, options=config_from_args(EngineOptions, args))

    assert spec() == EngineSpec()
    assert spec("--backend", "onnx", "--model-dir", str(tmp_path)).options == EngineOptions(model_dir=tmp_path)
    assert spec("--backend", "triton", "--triton-url", "grpc://h:8001").options.triton_url == "grpc://h:8001"
    s = spec("--backend", "torch", "--cuda-graphs", "--torch-compile", "--trt-cache", str(tmp_path))
    assert (s.options.cuda_graphs, s.options.compile, s.options.cache_dir) == (True, True, tmp_path)
    with pytest.raises(UserError, match="^--triton-url applies to --backend triton, not onnx$"):
        make_engine(bundle, spec("--backend", "onnx", "--triton-url", "x"))
    with pytest.raises(UserError, match="^--trt-cache applies to --backend tensorrt, not torch$"):
        make_engine(bundle, s)


@pytest.mark.slow
def test_triton_engine_against_the_repository(bundle, onnx_dir, tmp_path, monkeypatch):
    """TritonEngine through a stand-in for tritonclient.http that serves the written repository with ONNX Runtime
    (no Triton server here): names, shapes and dtypes of the requests must match config.pbtxt and model.onnx."""
    repo = tmp_path / "repo"
    write_model_repository(bundle, repo, ["fp32"], max_batch=4, onnx_dir=onnx_dir)
    seen: list[str] = []

    class InferInput:
        def __init__(self, name, shape, datatype):
            self.name, self.shape, self.datatype = name, shape, datatype

        def set_data_from_numpy(self, arr):
            assert list(arr.shape) == self.shape and arr.dtype == np.float32
            self.data = arr

    class InferRequestedOutput:
        def __init__(self, name):
            self.name = name

    class Result:
        def __init__(self, outs):
            self.outs = outs

        def as_numpy(self, name):
            return self.outs[name]

    class Client:
        def __init__(self, url, **kw):
            if url.endswith(":1"):
                raise ConnectionRefusedError("[Errno 111] Connection refused")

        def is_server_live(self):
            return True

        def is_model_ready(self, name):
            return (repo / name / "1" / "model.onnx").exists()

        def get_model_config(self, name):
            cfg = (repo / name / "config.pbtxt").read_text()
            return {"max_batch_size": int(re.search(r"max_batch_size: (\d+)", cfg).group(1))}

        def infer(self, model_name, inputs, outputs):
            cfg = (repo / model_name / "config.pbtxt").read_text()
            for i in inputs:
                assert i.datatype == "FP32" and f'name: "{i.name}"' in cfg
                dims = re.search(rf'name: "{i.name}"\s+data_type: TYPE_FP32\s+dims: \[ ([0-9, ]+) \]', cfg)
                assert dims and [int(d) for d in dims.group(1).split(",")] == i.shape[1:]
                assert i.shape[0] <= int(re.search(r"max_batch_size: (\d+)", cfg).group(1))
            seen.append(model_name)
            sess = ort.InferenceSession(str(repo / model_name / "1" / "model.onnx"),
                                        providers=["CPUExecutionProvider"])
            names = [o.name for o in outputs]
            return Result(dict(zip(names, sess.run(names, {i.name: i.data for i in inputs}))))

    http = types.ModuleType("tritonclient.http")
    http.InferenceServerClient, http.InferInput, http.InferRequestedOutput = Client, InferInput, InferRequestedOutput
    pkg = types.ModuleType("tritonclient")
    pkg.http = http
    monkeypatch.setitem(sys.modules, "tritonclient", pkg)
    monkeypatch.setitem(sys.modules, "tritonclient.http", http)

    def triton(url: str, precision: str = "auto") -> EngineSpec:
        return EngineSpec("triton", "cpu", precision, EngineOptions(triton_url=url))

    eng = make_engine(bundle, triton("http://localhost:8000"))
    assert eng.has_vien and eng.spec == EngineSpec("triton", "cpu", "fp32",
                                                   EngineOptions(triton_url="http://localhost:8000"))
    assert eng.max_batch == 4  # the repository's max_batch_size
    ref = TorchEngine(bundle, device="cpu")
    crops = example_inputs(bundle, "fren", batch=2, seed=5)["crops"]
    ws = eng.encode_key(crops)
    torch.testing.assert_close(ws, ref.encode_key(crops), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(eng.encode_reuse(crops, ws), ref.encode_reuse(crops, ws), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(eng.synthesize(ws), ref.synthesize(ws), atol=1e-4, rtol=1e-4)
    assert seen == ["stylestream_fren", "stylestream_vien", "stylestream_synthesis"]
    with pytest.raises(UserError, match="cannot reach the Triton server at http://127.0.0.1:1"):
        make_engine(bundle, triton("http://127.0.0.1:1"))
    with pytest.raises(UserError, match="no ready model 'stylestream_fren_fp16'"):
        make_engine(bundle, triton("http://localhost:8000", "fp16"))


def test_synthesis_taps_cover_every_block(bundle):
    taps = locate_drift(bundle, "synthesis", "fp32", runtime="torch")  # torch vs torch: exact, every tap ok
    res = bundle.generator.img_resolution
    blocks = [4 * 2**i for i in range(res.bit_length() - 2)]  # 4, 8, …, res
    assert [t.name for t in taps] == [f"b{r}[{k}]" for r in blocks for k in (0, 1)]
    assert all(t.ok and t.max_rel == 0 for t in taps)


@pytest.mark.slow
def test_export_leaves_the_process_streams_alone(tiny_bundle, tmp_path):
    """Like issue 17.1: export_module swapped the process-wide sys.stdout / sys.stderr for seconds per model, so
    whatever another thread printed meanwhile (a server's logs, the demo's "still preparing the engine" line)
    went into the exporter's buffer and was lost."""
    spec = model_spec(tiny_bundle, "synthesis", "fp32")
    streams = {(id(sys.stdout), id(sys.stderr))}
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            streams.add((id(sys.stdout), id(sys.stderr)))
            time.sleep(0.0005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        export_module(spec.module, example_inputs(tiny_bundle, "synthesis"), tmp_path / "s.onnx", spec.outputs)
    finally:
        done.set()
        watcher.join()
    assert len(streams) == 1, "sys.stdout / sys.stderr were replaced while exporting"
    assert onnx.load(str(tmp_path / "s.onnx")).graph.output[0].name == spec.outputs[0]
