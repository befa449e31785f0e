"""Bundle save/load: bit-exact round trip and one clear error per broken bundle."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from models.bundle import FORMAT_VERSION, load_bundle, new_bundle
from models.errors import BundleError


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    b = new_bundle("tiny-64", "tiny", seed=5)
    torch.nn.init.normal_(b.fren.head[2].weight, std=0.01)  # non-trivial encoders
    torch.nn.init.normal_(b.vien.head[2].weight, std=0.01)
    b.extra["smile"] = torch.randn(64)
    path = tmp_path_factory.mktemp("b") / "tiny"
    b.save(path)
    return b, path


def test_round_trip_is_bit_exact(saved):
    b, path = saved
    b2 = load_bundle(path)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        ws, ws2 = b.fren(x), b2.fren(x)
        assert torch.equal(ws, ws2)
        assert torch.equal(b.vien(x, ws), b2.vien(x, ws2))
        assert torch.equal(b.generator.synthesis(ws), b2.generator.synthesis(ws2))
        z = torch.randn(2, b.generator.z_dim)
        assert torch.equal(b.generator(z), b2.generator(z))
    assert torch.equal(b2.extra["smile"], b.extra["smile"])
    assert b2.trained == {"generator": False, "fren": False, "vien": False}
    m = json.loads((path / "bundle.json").read_text())
    assert m["preprocess"]["crop_size"] == 64 and m["preprocess"]["num_ws"] == 10
    assert m["format_version"] == FORMAT_VERSION


def test_generator_only_bundle(tmp_path):
    b = new_bundle("tiny-64", None)
    b.save(tmp_path / "g")
    b2 = load_bundle(tmp_path / "g")
    assert b2.fren is None and b2.vien is None and b2.crop_size == 64


def test_save_replaces_a_bundle_but_refuses_other_folders(tmp_path, saved):
    b, _ = saved
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "precious.txt").write_text("keep me")
    with pytest.raises(BundleError, match="refusing to overwrite"):
        b.save(tmp_path / "other")
    assert (tmp_path / "other" / "precious.txt").exists()
    b.save(tmp_path / "again")
    (tmp_path / "again" / "README.md").write_text("how this bundle was made")
    (tmp_path / "again" / "extra.safetensors").write_bytes(b"stale")  # ours: replaced, not kept
    b.save(tmp_path / "again")  # replacing our own bundle is fine
    new_bundle("tiny-64", None).save(tmp_path / "again")  # … also with one that has no extra tensors
    assert (tmp_path / "again" / "README.md").read_text() == "how this bundle was made"
    assert not (tmp_path / "again" / "extra.safetensors").exists()
    assert load_bundle(tmp_path / "again").name == b.name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize(
    "breakage,message",
    [
        ("missing", "bundle not found"),
        ("file", "is not a bundle folder"),
        ("no_manifest", "has no bundle.json"),
        ("bad_json", "not valid JSON"),
        ("not_ours", "not a stylestream bundle"),
        ("future_version", "format version 99 is not supported"),
        ("missing_weights", "missing fren.safetensors"),
        ("corrupt_weights", "corrupt or not a safetensors"),
        ("shape_mismatch", "shape mismatch|do not match"),
        ("bad_config", "invalid model config"),
    ],
)
def test_broken_bundles_give_clear_errors(tmp_path, saved, breakage, message):
    _, good = saved
    p = tmp_path / "b"
    if breakage == "missing":
        pass
    elif breakage == "file":
        p.write_text("hello")
    elif breakage == "no_manifest":
        p.mkdir()
    else:
        _copy(good, p)
        mf = p / "bundle.json"
        m = json.loads(mf.read_text())
        if breakage == "bad_json":
            mf.write_text("{not json")
        elif breakage == "not_ours":
            mf.write_text(json.dumps({"hello": 1}))
        elif breakage == "future_version":
            m["format_version"] = 99
            mf.write_text(json.dumps(m))
        elif breakage == "missing_weights":
            (p / "fren.safetensors").unlink()
        elif breakage == "corrupt_weights":
            data = (p / "generator.safetensors").read_bytes()
            (p / "generator.safetensors").write_bytes(data[: len(data) // 3])
        elif breakage == "shape_mismatch":
            m["generator"]["channel_max"] = 32
            mf.write_text(json.dumps(m))
        elif breakage == "bad_config":
            m["generator"]["no_such_field"] = 3
            mf.write_text(json.dumps(m))
    with pytest.raises(BundleError, match=message):
        load_bundle(p)
