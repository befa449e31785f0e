"""Official checkpoint formats: stylegan2-ada-pytorch .pkl and rosinality .pt, and the safety of reading them."""

from __future__ import annotations

import argparse
import io
import os
import pickle
import subprocess
import sys

import pytest
import torch

from models.bundle import load_bundle
from models.errors import CheckpointError, UnsafePickleError
from models.legacy import import_generator
from tests import REPO
from tests.official_formats import (
    flat_state,
    nvlabs_reference_forward,
    official_generator_tree,
    rosinality_reference_forward,
    rosinality_state,
    write_nvlabs_pkl,
)


def _close(a, b):
    return (a - b).abs().max().item() <= 1e-5 * max(1.0, b.abs().max().item())


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("clamp", [None, 0.8])
def test_nvlabs_pkl_reproduces_reference_images(tmp_path, protocol, clamp):
    G = official_generator_tree(res=32, cbase=256, cmax=32, n_map=2, clamp=clamp, seed=protocol)
    write_nvlabs_pkl(tmp_path / "net.pkl", G, protocol=protocol)
    assert "torch_utils" not in sys.modules  # our loader must work without the original code
    g, prov = import_generator(tmp_path / "net.pkl")
    assert g.cfg.img_resolution == 32 and g.cfg.channel_max == 32 and g.cfg.conv_clamp == clamp
    assert prov["source_format"] == "stylegan2-ada-pytorch pkl" and prov["w_avg"] == "checkpoint"
    sd = flat_state(G)
    assert torch.equal(g.mapping.w_avg, sd["mapping.w_avg"])
    z = torch.randn(3, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = g(z)
        ref = nvlabs_reference_forward(sd, z, res=32, n_map=2, clamp=clamp)
    assert ours.shape == (3, 3, 32, 32)
    assert _close(ours, ref)


def test_nvlabs_pkl_module_src_is_never_executed(tmp_path):
    # The persisted module_src contains os.system(...); the original loader would exec it. Ours must not:
    # run the import in a child process with os.system replaced by a tripwire.
    G = official_generator_tree(seed=3)
    write_nvlabs_pkl(tmp_path / "net.pkl", G)
    code = (
        "import os, sys\n"
        "def trip(*a): open(sys.argv[2], 'w').write('ran'); return 0\n"
        "os.system = trip\n"
        "from models.legacy import import_generator\n"
        "import_generator(sys.argv[1])\n"
    )
    flag = tmp_path / "tripped"
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "net.pkl"), str(flag)], check=True,
                   cwd=str(REPO))
    assert not flag.exists()


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_pickle_with_os_system_is_refused_and_nothing_runs(tmp_path):
    target = tmp_path / "pwned"
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"G_ema": _Evil(target)}))
    with pytest.raises(UnsafePickleError, match="posix.system|os.system|nt.system"):
        import_generator(tmp_path / "evil.pkl")
    assert not target.exists()


def test_unlisted_global_inside_network_state_is_refused(tmp_path):
    G = official_generator_tree(seed=4)
    G.state["_modules"]["mapping"].state["sneaky"] = _Evil(tmp_path / "pwned")
    write_nvlabs_pkl(tmp_path / "net.pkl", G)
    with pytest.raises(UnsafePickleError, match="refusing to load"):
        import_generator(tmp_path / "net.pkl")
    assert not (tmp_path / "pwned").exists()


def test_malicious_nested_storage_blob_is_refused(tmp_path):
    # A pickle that routes an evil legacy torch.save blob through torch.storage._load_from_bytes.
    blob = io.BytesIO()
    torch.save(_Evil(tmp_path / "pwned"), blob, _use_new_zipfile_serialization=False)

    class Nested:
        def __reduce__(self):
            return (torch.storage._load_from_bytes, (blob.getvalue(),))

    (tmp_path / "n.pkl").write_bytes(pickle.dumps({"G_ema": Nested()}))
    with pytest.raises(UnsafePickleError):
        import_generator(tmp_path / "n.pkl")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("with_args", [False, True])
def test_rosinality_pt_reproduces_reference_images(tmp_path, with_args):
    sd = rosinality_state(size=32, style_dim=32, n_mlp=3, cmax=32, seed=1)
    ckpt = {"g_ema": sd, "latent_avg": torch.randn(32)}
    if with_args:  # checkpoints from rosinality's train.py carry argparse args and more
        ckpt.update(g=sd, args=argparse.Namespace(size=32, lr=0.002), ada_aug_p=0.0)
    torch.save(ckpt, tmp_path / "r.pt")
    g, prov = import_generator(tmp_path / "r.pt")
    assert g.cfg.img_resolution == 32 and g.cfg.mapping_layers == 3
    assert torch.equal(g.mapping.w_avg, ckpt["latent_avg"])
    z = torch.randn(2, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = g(z)
        ref = rosinality_reference_forward(sd, z, size=32, n_mlp=3, style_dim=32)
    assert _close(ours, ref)


def test_rosinality_without_latent_avg_estimates_it(tmp_path):
    torch.save({"g_ema": rosinality_state(seed=2)}, tmp_path / "r.pt")
    g, prov = import_generator(tmp_path / "r.pt")
    assert "estimated" in prov["w_avg"]
    assert g.mapping.w_avg.abs().sum() > 0


def test_rosinality_with_unsafe_object_is_refused(tmp_path):
    torch.save({"g_ema": rosinality_state(seed=2), "evil": _Evil(tmp_path / "pwned")}, tmp_path / "r.pt")
    with pytest.raises(UnsafePickleError, match="refusing to load"):
        import_generator(tmp_path / "r.pt")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    "kind,message",
    [
        ("missing", "not found"),
        ("empty", "empty"),
        ("garbage", "unrecognised file header"),
        ("truncated_pkl", "truncated or not a StyleGAN2 pickle"),
        ("truncated_pt", "truncated or not a torch checkpoint"),
        ("wrong_dict", "no 'G_ema'"),
        ("wrong_pt", "no 'g_ema'"),
    ],
)
def test_bad_checkpoint_files_give_clear_errors(tmp_path, kind, message):
    p = tmp_path / "x.pkl"
    if kind == "empty":
        p.write_bytes(b"")
    elif kind == "garbage":
        p.write_bytes(os.urandom(64).replace(b"\x80", b"\x00").replace(b"PK", b"pk"))
    elif kind == "truncated_pkl":
        write_nvlabs_pkl(p, official_generator_tree(seed=5))
        p.write_bytes(p.read_bytes()[:5000])
    elif kind == "truncated_pt":
        torch.save({"g_ema": rosinality_state()}, p)
        p.write_bytes(p.read_bytes()[:3000])
    elif kind == "wrong_dict":
        p.write_bytes(pickle.dumps({"hello": 1}))
    elif kind == "wrong_pt":
        torch.save({"state_dict": {}}, p)
    with pytest.raises(CheckpointError, match=message):
        import_generator(p)


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "realtime.cli", *args], capture_output=True, text=True,
                          cwd=cwd or str(REPO))


def test_import_weights_cli_writes_a_bundle(tmp_path):
    write_nvlabs_pkl(tmp_path / "net.pkl", official_generator_tree(seed=6))
    r = _cli("import-weights", str(tmp_path / "net.pkl"), "-o", str(tmp_path / "bundle"))
    assert r.returncode == 0, r.stderr

    b = load_bundle(tmp_path / "bundle")
    assert b.trained["generator"] is True and b.trained["fren"] is False
    assert b.provenance["source_format"] == "stylegan2-ada-pytorch pkl"


def test_import_weights_cli_bad_file_is_one_line_no_traceback(tmp_path):
    (tmp_path / "bad.pkl").write_bytes(b"\x80\x04garbage")
    r = _cli("import-weights", str(tmp_path / "bad.pkl"), "-o", str(tmp_path / "out"))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "truncated or not a StyleGAN2 pickle" in r.stderr
    assert not (tmp_path / "out").exists()
