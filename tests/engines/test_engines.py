"""The Engine interface: declared attributes, specs, option checks, SerialEngine, and that no engine modifies the
bundle it runs. (Backend-specific parity: tests/test_export.py and tests/test_trt.py.)"""

from __future__ import annotations

import dataclasses
import re
import threading
import time

import pytest
import torch

from export.onnx import available_models, export_bundle
from export.parity import check_model, randomize_heads
from models.bundle import new_bundle
from models.config import fields
from models.errors import UserError
from models.files import atomic_path, atomic_write_bytes, atomic_write_text
from realtime.engines import (
    OPTION_BACKENDS,
    Engine,
    EngineOptions,
    EngineSpec,
    SerialEngine,
    TorchEngine,
    engine_like,
    make_engine,
)
from tests.bundles import make_tiny_bundle, make_tiny_e4e_bundle

DECLARED = ("name", "device", "precision", "spec", "crop_size", "resolution", "num_ws", "w_dim", "num_coarse",
            "has_vien", "bundle")


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return tiny_bundle  # the session's tiny bundle: randomised encoder heads, so parity means something


def _state(b) -> dict[str, tuple]:
    """Every tensor of the bundle: (device, dtype, stride, requires_grad, a copy of the values), plus train flags."""
    out: dict[str, tuple] = {}
    for name, module in b.modules().items():
        for k, t in [*module.named_parameters(), *module.named_buffers()]:
            out[f"{name}.{k}"] = (t.device, t.dtype, t.stride(), t.requires_grad, t.detach().clone())
        out[f"{name}:training"] = tuple(m.training for m in module.modules())
    return out


def _assert_same_state(before: dict[str, tuple], after: dict[str, tuple]) -> None:
    assert before.keys() == after.keys()
    for k, b in before.items():
        a = after[k]
        if k.endswith(":training"):
            assert a == b, k
            continue
        assert a[:4] == b[:4], (k, a[:4], b[:4])
        assert torch.equal(a[4], b[4]), k


def test_engine_declares_what_callers_need(bundle):
    eng = make_engine(bundle, EngineSpec("torch", "cpu"))
    assert isinstance(eng, Engine) and set(DECLARED) <= set(Engine.__annotations__)
    g = bundle.generator
    assert (eng.name, eng.device, eng.precision) == ("torch", torch.device("cpu"), "fp32")
    assert (eng.crop_size, eng.resolution, eng.num_ws, eng.w_dim, eng.num_coarse, eng.has_vien) == (
        bundle.crop_size, g.img_resolution, g.num_ws, g.w_dim, g.layout.num_coarse, True)
    assert eng.bundle is bundle
    # the spec it was made from, resolved: building from it gives the same kind of engine
    assert eng.spec == EngineSpec("torch", "cpu", "fp32", EngineOptions())
    assert make_engine(bundle, eng.spec).spec == eng.spec
    with pytest.raises(dataclasses.FrozenInstanceError):
        eng.spec.backend = "onnx"  # type: ignore[misc]


def test_torch_engine_never_modifies_the_bundle(bundle):
    """CPU fp32 on an eval bundle: the engine runs the bundle's own modules, read-only. A bundle in training mode with
    gradients on: the engine runs its own eval copies. Either way every tensor's device, dtype, memory layout,
    requires_grad and values, and every module's train flag, are as before; outputs equal the plain modules'."""
    before = _state(bundle)
    eng = TorchEngine(bundle, device="cpu")
    assert eng.synthesis is bundle.generator.synthesis and eng.fren is bundle.fren  # shared, not copied
    crops = torch.rand(2, 3, bundle.crop_size, bundle.crop_size) * 2 - 1
    ws = eng.encode_key(crops)
    reuse = eng.encode_reuse(crops, ws + 0.1)
    img = eng.synthesize(ws)
    deltas = {"b8.conv1": torch.full((2, bundle.generator.synthesis.b8.conv1.affine.weight.shape[0]), 0.5)}
    img_d = eng.synthesize(ws, deltas)
    eng.close()
    _assert_same_state(before, _state(bundle))
    with torch.no_grad():
        torch.testing.assert_close(ws, bundle.fren(crops), rtol=0, atol=0)
        ref_reuse = bundle.vien(crops, ws + 0.1)
        torch.testing.assert_close(reuse[:, : eng.num_coarse], ref_reuse[:, : eng.num_coarse], rtol=0, atol=0)
        assert torch.equal(reuse[:, eng.num_coarse:], (ws + 0.1)[:, eng.num_coarse:])
        torch.testing.assert_close(img, bundle.generator.synthesis(ws, noise_mode="const"), rtol=0, atol=0)
        ref_d = bundle.generator.synthesis(ws, noise_mode="const", style_deltas=deltas)
        torch.testing.assert_close(img_d, ref_d, rtol=0, atol=0)
    assert (img_d - img).abs().max() > 1e-3

    training = make_tiny_bundle()  # the same weights as the session bundle
    for m in training.modules().values():
        m.train().requires_grad_(True)
    before = _state(training)
    eng = TorchEngine(training, device="cpu")
    assert eng.synthesis is not training.generator.synthesis and not eng.synthesis.training
    torch.testing.assert_close(eng.synthesize(ws), img, rtol=0, atol=0)  # same weights, eval copies
    torch.testing.assert_close(eng.encode_key(crops), ws, rtol=0, atol=0)
    _assert_same_state(before, _state(training))


def test_option_for_the_wrong_backend_is_one_user_error(bundle, tmp_path):
    cases = {
        EngineSpec("torch", "cpu", options=EngineOptions(model_dir=tmp_path)):
            "--model-dir applies to --backend onnx / tensorrt, not torch",
        EngineSpec("onnx", "cpu", options=EngineOptions(cache_dir=tmp_path)):
            "--trt-cache applies to --backend tensorrt, not onnx",
        EngineSpec("onnx", "cpu", options=EngineOptions(compile=True)):
            "--torch-compile applies to --backend torch, not onnx",
        EngineSpec("torch", "cpu", options=EngineOptions(triton_url="http://h:8000")):
            "--triton-url applies to --backend triton, not torch",
        EngineSpec("torch", "cpu", options=EngineOptions(providers=("CPUExecutionProvider",))):
            "option providers applies to --backend onnx, not torch",
        EngineSpec("triton", "cpu", options=EngineOptions(threads=2)):
            "option threads applies to --backend torch / onnx, not triton",
    }
    for spec, message in cases.items():
        with pytest.raises(UserError) as err:
            make_engine(bundle, spec)
        assert str(err.value) == message
    with pytest.raises(UserError, match="--precision must be one of"):
        make_engine(bundle, EngineSpec("torch", "cpu", "fp8"))
    with pytest.raises(UserError, match="max_batch must be ≥ 1"):
        make_engine(bundle, EngineSpec("tensorrt", options=EngineOptions(max_batch=0)))
    # one table: every option names its backends, and its help says which they are
    for f in fields(EngineOptions):
        assert re.match("/".join(OPTION_BACKENDS[f.name]) + "[ :]", f.help), (f.name, f.help)


def test_engine_like_builds_the_same_kind_for_another_bundle(bundle):
    eng = make_engine(bundle, EngineSpec("torch", "cpu"))
    other = randomize_heads(new_bundle("tiny-64", "tiny", seed=9), seed=9)
    twin = engine_like(SerialEngine(eng), other)
    assert isinstance(twin, TorchEngine) and twin.bundle is other and twin.spec == eng.spec
    crops = torch.rand(1, 3, bundle.crop_size, bundle.crop_size) * 2 - 1
    assert not torch.equal(twin.encode_key(crops), eng.encode_key(crops))  # other weights really run


class _Slow(TorchEngine):
    """Counts how many model calls run at the same time."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.inside = self.most = 0
        self.guard = threading.Lock()

    def _enter(self) -> None:
        with self.guard:
            self.inside += 1
            self.most = max(self.most, self.inside)
        time.sleep(0.02)

    def _leave(self) -> None:
        with self.guard:
            self.inside -= 1

    def encode_key(self, crops):
        self._enter()
        try:
            return super().encode_key(crops)
        finally:
            self._leave()

    def synthesize(self, ws, style_deltas=None):
        self._enter()
        try:
            return super().synthesize(ws, style_deltas)
        finally:
            self._leave()


def test_serial_engine_exposes_the_attributes_and_serialises_calls(bundle):
    inner = _Slow(bundle, device="cpu")
    eng = SerialEngine(inner)
    assert isinstance(eng, Engine)
    for attr in DECLARED:
        assert getattr(eng, attr) == getattr(inner, attr), attr
        with pytest.raises(AttributeError):
            setattr(eng, attr, None)  # read-only views of the wrapped engine
    assert not hasattr(eng, "dtype")  # nothing else leaks through (no __getattr__)
    crops = torch.rand(1, 3, bundle.crop_size, bundle.crop_size) * 2 - 1
    ws = inner.encode_key(crops)

    def work() -> None:
        for _ in range(3):
            eng.encode_key(crops)
            eng.synthesize(ws)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert inner.most == 1  # never two model calls at once
    # the same calls without the wrapper do overlap (so the check above can fail)
    inner.most = 0
    threads = [threading.Thread(target=lambda: inner.synthesize(ws)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert inner.most > 1


def test_atomic_writes_leave_nothing_half_written(tmp_path):
    target = tmp_path / "m.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer died")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["m.json"]
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["m.json"]


# ---------------------------------------------------------------------------------------------- coarse reuse


def test_encode_coarse_is_the_key_encoders_coarse_rows_with_the_fine_rows_carried(bundle):
    """Torch, ViT FrEN and e4e key encoders: encode_coarse = (key encoder's coarse rows for these crops, prev_ws's fine
    rows exactly); without a ViEN encode_reuse is encode_coarse; the serial wrapper forwards it."""
    e4e = make_tiny_e4e_bundle()
    for b in (bundle, e4e):
        eng = make_engine(b, EngineSpec("torch", "cpu"))
        c = eng.num_coarse
        crops = torch.rand(2, 3, b.crop_size, b.crop_size) * 2 - 1
        prev = eng.encode_key(torch.rand(2, 3, b.crop_size, b.crop_size) * 2 - 1)
        out = eng.encode_coarse(crops, prev)
        with torch.no_grad():
            key = b.fren(crops)
        torch.testing.assert_close(out[:, :c], key[:, :c], rtol=1e-5, atol=1e-6)
        assert torch.equal(out[:, c:], prev[:, c:])
        assert (out[:, :c] - prev[:, :c]).abs().max() > 1e-3  # the crops' own coarse rows, not prev's
        assert torch.equal(SerialEngine(eng).encode_coarse(crops, prev), out)
        if not eng.has_vien:
            assert torch.equal(eng.encode_reuse(crops, prev), out)
        with pytest.raises(ValueError, match="prev_ws must be"):
            eng.encode_coarse(crops, prev[:1])


@pytest.mark.slow
def test_onnx_engine_runs_the_exported_coarse_model_and_falls_back_without_it(tmp_path, monkeypatch):
    """An e4e bundle exports fren_coarse (and only an e4e / pSp one does); the ONNX engine runs it for
    encode_coarse, matching torch; a model folder without it still works (fren, sliced)."""
    monkeypatch.setenv("STYLESTREAM_CACHE", str(tmp_path / "cache"))
    b = make_tiny_e4e_bundle()
    assert available_models(b) == ["fren", "synthesis", "fren_coarse"]
    assert "fren_coarse" not in available_models(make_tiny_bundle())
    crops = torch.rand(2, 3, b.crop_size, b.crop_size) * 2 - 1
    ref = TorchEngine(b, device="cpu")
    prev = ref.encode_key(torch.rand(2, 3, b.crop_size, b.crop_size) * 2 - 1)
    want = ref.encode_coarse(crops, prev)
    eng = make_engine(b, EngineSpec("onnx", "cpu"))  # exports into the cache, fren_coarse included
    assert eng.coarse_model and "fren_coarse" in eng.sessions
    calls = []
    real = eng._call
    monkeypatch.setattr(eng, "_call", lambda model, feed: calls.append(model) or real(model, feed))
    got = eng.encode_coarse(crops, prev)
    assert calls == ["fren_coarse"]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert torch.equal(got[:, eng.num_coarse:], prev[:, eng.num_coarse:])
    r = check_model(b, eng.model_dir, "fren_coarse", "fp32")
    assert r.ok, r.message()
    only = tmp_path / "only"  # an export folder made before fren_coarse existed
    export_bundle(b, only, models=["fren", "synthesis"])
    old = make_engine(b, EngineSpec("onnx", "cpu", options=EngineOptions(model_dir=only)))
    assert not old.coarse_model
    torch.testing.assert_close(old.encode_coarse(crops, prev), want, rtol=1e-4, atol=1e-5)
