"""TensorRT engines (marker ``trt``: skipped where TensorRT or CUDA is missing, i.e. on the 2-core CI machine).

Builds real engines from the tiny-64 ONNX exports, checks them against torch with the fp16 tolerance, checks the
on-disk engine cache (second build reuses the file), the batch profile, and the TrtEngine behind make_engine.
Importing the modules needs neither TensorRT nor CUDA (every entry point checks); the tests do."""

from __future__ import annotations

import os

import pytest
import torch

from export.artifacts import onnx_filename
from export.onnx import example_inputs, export_bundle, model_spec
from export.parity import TOLERANCES, check_model, compare
from export.tensorrt import TIMING_CACHE_NAME, build_engine
from realtime.engines import Engine, EngineOptions, EngineSpec, TorchEngine, make_engine
from realtime.engines.tensorrt import TrtModel, trt_runner

pytestmark = pytest.mark.trt


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return tiny_bundle  # the session's tiny bundle: randomised encoder heads, so parity means something


@pytest.fixture(scope="module")
def onnx_dir(bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx")
    for p in ("fp32", "fp16"):
        export_bundle(bundle, out, precision=p, max_batch=4)
    return out


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("trt-cache")


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("model", ["fren", "vien", "synthesis"])
def test_trt_parity(bundle, onnx_dir, cache_dir, model, precision):
    r = check_model(bundle, onnx_dir, model, precision, runtime="tensorrt", runner=trt_runner(cache_dir))
    assert r.ok, r.message()


def test_engine_cache_is_reused(onnx_dir, cache_dir):
    path = onnx_dir / onnx_filename("synthesis", "fp16")
    plan = build_engine(path, "fp16", cache_dir=cache_dir, max_batch=4)
    mtime = os.stat(plan).st_mtime_ns
    again = build_engine(path, "fp16", cache_dir=cache_dir, max_batch=4)
    assert again == plan and os.stat(again).st_mtime_ns == mtime
    assert (cache_dir / TIMING_CACHE_NAME).stat().st_size > 0
    other = build_engine(path, "fp16", cache_dir=cache_dir, max_batch=2)  # other profile → other engine
    assert other != plan


def test_trt_model_batches_and_stream(bundle, onnx_dir, cache_dir):
    plan = build_engine(onnx_dir / onnx_filename("synthesis", "fp32"), "fp32", cache_dir=cache_dir, max_batch=4)
    model = TrtModel(plan, "cuda")
    assert model.inputs == ["ws"] and model.outputs == ["image"] and model.max_batch == 4
    ref_mod = model_spec(bundle, "synthesis").module
    for batch in (1, 3, 4):
        ws = example_inputs(bundle, "synthesis", batch=batch, seed=batch)["ws"]
        side = torch.cuda.Stream()
        with torch.cuda.stream(side):  # runs on torch's *current* stream
            out = model({"ws": ws.cuda()})["image"]
        side.synchronize()
        with torch.no_grad():
            ref = ref_mod(ws).numpy()
        _, _, max_rel, _ = compare(out.cpu().numpy(), ref)
        assert out.shape[0] == batch and max_rel < TOLERANCES["fp32"][0] * 10
    with pytest.raises(ValueError, match="outside the engine's profile"):
        model({"ws": example_inputs(bundle, "synthesis", batch=5)["ws"].cuda()})


def test_trt_engine_matches_torch(bundle, onnx_dir, cache_dir):
    spec = EngineSpec("tensorrt", "cuda", "fp16", EngineOptions(model_dir=onnx_dir, cache_dir=cache_dir))
    eng = make_engine(bundle, spec)
    assert isinstance(eng, Engine) and eng.name == "tensorrt" and eng.spec.options == spec.options
    ref = TorchEngine(bundle, device="cpu")
    crops = example_inputs(bundle, "fren", batch=2)["crops"]
    ws = eng.encode_key(crops.cuda())
    _, _, max_rel, _ = compare(ws.cpu().numpy(), ref.encode_key(crops).numpy())
    assert max_rel < TOLERANCES["fp16"][0]
    reuse = eng.encode_reuse(crops.cuda(), ws)
    assert torch.equal(reuse[:, eng.num_coarse:], ws[:, eng.num_coarse:])
    img = eng.synthesize(ws)
    _, _, max_rel, _ = compare(img.cpu().numpy(), ref.synthesize(ws.cpu()).numpy())
    assert img.shape == (2, 3, eng.resolution, eng.resolution) and max_rel < TOLERANCES["fp16"][0]
