"""Official checkpoint formats: stylegan2-ada-pytorch .pkl and rosinality .pt, and the safety of reading them."""

from __future__ import annotations

import argparse
import io
import os
import pickle
import socket
import subprocess
import sys

import pytest
import torch

from models.bundle import load_bundle
from models.errors import CheckpointError, UnsafePickleError
from models.legacy import import_generator
from tests import REPO
from tests.guards import call_in_child
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


# ---------------------------------------------------------------------- issue 17 items 8–10: malformed inputs


def _nvlabs_breakage(G, kind):
    """Mutate the persisted tree of official_generator_tree() into one malformed-but-allow-listed variant."""
    st = G.state
    kw = st["_init_kwargs"]
    mapping, synthesis = st["_modules"]["mapping"], st["_modules"]["synthesis"]
    extra = None
    if kind == "init_kwargs_list":
        st["_init_kwargs"] = [1, 2]
    elif kind == "init_kwargs_missing_no_attrs":
        del st["_init_kwargs"]
        for k in ("z_dim", "w_dim", "img_resolution"):
            del st[k]
    elif kind == "init_args_int":
        st["_init_args"] = 7
    elif kind == "synthesis_kwargs_str":
        kw["synthesis_kwargs"] = "skip"
    elif kind == "mapping_kwargs_list":
        kw["mapping_kwargs"] = ["num_layers", 2]
    elif kind == "resample_filter_int":
        kw["synthesis_kwargs"]["resample_filter"] = 3
    elif kind == "channel_base_str":
        kw["synthesis_kwargs"]["channel_base"] = "big"
    elif kind == "num_fp16_res_dict":
        kw["synthesis_kwargs"]["num_fp16_res"] = {"a": 1}
    elif kind == "embed_features_str":
        kw["mapping_kwargs"]["embed_features"] = "x"
    elif kind == "z_dim_str":
        st["z_dim"] = "abc"
    elif kind == "z_dim_inf":
        st["z_dim"] = float("inf")
    elif kind == "z_dim_huge":
        st["z_dim"] = kw["z_dim"] = 2_000_000
    elif kind == "z_dim_mismatch":
        st["z_dim"] = kw["z_dim"] = 64
    elif kind == "img_resolution_100":
        st["img_resolution"] = kw["img_resolution"] = 100
    elif kind == "g_ema_not_persistent":
        extra = {"G_ema": {"mapping": 1}}
    elif kind == "modules_list":
        st["_modules"] = [mapping, synthesis]
    elif kind == "parameters_list":
        mapping.state["_modules"]["fc0"].state["_parameters"] = [torch.zeros(3)]
    elif kind == "buffers_str":
        mapping.state["_buffers"] = "w_avg"
    elif kind == "param_is_dict":
        mapping.state["_modules"]["fc1"].state["_parameters"]["weight"] = {"data": [1.0]}
    elif kind == "conv1_scalar":
        synthesis.state["_modules"]["b4"].state["_modules"]["conv1"].state["_parameters"]["weight"] = torch.zeros([])
    elif kind == "wrong_shape":
        b8 = synthesis.state["_modules"]["b8"].state["_modules"]["conv0"].state["_parameters"]
        b8["weight"] = torch.zeros(32, 32, 3, 5)
    elif kind == "bias_gain_str":
        mapping.state["_modules"]["fc0"].state["bias_gain"] = "x"
    elif kind == "architecture_int":
        kw["synthesis_kwargs"]["architecture"] = 5
    elif kind == "int_tensor":
        mapping.state["_buffers"]["w_avg"] = torch.zeros(32, dtype=torch.int64)
    elif kind == "nan_weight":
        w = synthesis.state["_modules"]["b8"].state["_modules"]["conv1"].state["_parameters"]["weight"]
        w.data.view(-1)[5] = float("nan")
    elif kind == "inf_w_avg":
        mapping.state["_buffers"]["w_avg"][0] = float("inf")
    return extra


@pytest.mark.parametrize(
    "kind,message",
    [
        ("init_kwargs_list", r"G_ema\._init_kwargs is a list, not a dict"),
        ("init_kwargs_missing_no_attrs", r"G_ema lacks z_dim/w_dim/img_resolution"),
        ("init_args_int", r"G_ema\._init_args is an int, not a list"),
        ("synthesis_kwargs_str", r"G_ema\._init_kwargs\.synthesis_kwargs is a str, not a dict"),
        ("mapping_kwargs_list", r"G_ema\._init_kwargs\.mapping_kwargs is a list, not a dict"),
        ("resample_filter_int", r"synthesis_kwargs\.resample_filter is 3, not a list of integers"),
        ("channel_base_str", r"synthesis_kwargs\.channel_base is 'big', not a number"),
        ("num_fp16_res_dict", r"synthesis_kwargs\.num_fp16_res is \{'a': 1\}, not a number"),
        ("embed_features_str", r"implausible generator config: embed_features: must be an integer or null"),
        ("z_dim_str", r"G_ema z_dim is 'abc', not a number"),
        ("z_dim_inf", r"G_ema z_dim is inf, not a number"),
        ("z_dim_huge", r"implausible generator config: z_dim: must be between 0 and 4096, got 2000000"),
        ("z_dim_mismatch", r"shape mismatch for mapping\.fc0\.weight: file \(32, 32\), config expects \(32, 64\)"),
        ("img_resolution_100", r"img_resolution: must be a power of two|has no synthesis\.b"),
        ("g_ema_not_persistent", r"no 'G_ema' network inside"),
        ("modules_list", r"G_ema\._modules is a list, not a dict"),
        ("parameters_list", r"mapping\.fc0\._parameters is a list, not a dict"),
        ("buffers_str", r"mapping\._buffers is a str, not a dict"),
        ("param_is_dict", r"mapping\.fc1\.weight is not a tensor \(dict\)"),
        ("conv1_scalar", r"synthesis\.b4\.conv1\.weight has shape \(\), expected 4 dimensions"),
        ("wrong_shape", r"shape mismatch for synthesis\.b8\.conv0\.weight"),
        ("bias_gain_str", r"mapping\.fc0\.bias_gain is 'x', not a number"),
        ("architecture_int", r"synthesis architecture 5 is not supported"),
        ("int_tensor", r"mapping\.w_avg has dtype torch\.int64, not floating point"),
        ("nan_weight", r"tensor synthesis\.b8\.conv1\.weight has 1 non-finite value \(NaN/Inf\)"),
        ("inf_w_avg", r"tensor mapping\.w_avg has 1 non-finite value"),
    ],
)
def test_malformed_nvlabs_pickles_give_one_clear_line(tmp_path, kind, message):
    G = official_generator_tree(seed=7)
    extra = _nvlabs_breakage(G, kind)
    write_nvlabs_pkl(tmp_path / "bad.pkl", G, extra_objects=extra)
    with pytest.raises(CheckpointError, match=message) as exc:
        import_generator(tmp_path / "bad.pkl")
    assert "\n" not in str(exc.value) and "bad.pkl" in str(exc.value)


def test_nvlabs_pickle_without_init_kwargs_still_imports_from_attributes(tmp_path):
    G = official_generator_tree(seed=8)
    del G.state["_init_kwargs"]  # the dims are also attributes of the persisted Generator
    write_nvlabs_pkl(tmp_path / "net.pkl", G)
    g, _ = import_generator(tmp_path / "net.pkl")
    z = torch.randn(2, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert _close(g(z), nvlabs_reference_forward(flat_state(G), z, res=32, n_map=2, clamp=None))


@pytest.mark.parametrize(
    "kind,message",
    [
        ("g_ema_tensor", r"the generator entry is a Tensor, not a state dict"),
        ("value_is_dict", r"g_ema\[style\.1\.weight\] is a dict, not a tensor"),
        ("style_1d", r"g_ema\[style\.1\.weight\] has shape \(32,\), expected 2 dimensions"),
        ("conv_scalar", r"g_ema\[conv1\.conv\.weight\] has shape \(\), expected 5 dimensions"),
        ("noise_two", r"g_ema\[conv1\.noise\.weight\] has shape \(2,\), expected 1 element"),
        ("int_tensor", r"g_ema\[input\.input\] has dtype torch\.int64, not floating point"),
        ("nan", r"tensor synthesis\.b8\.conv1\.weight has 2 non-finite values \(NaN/Inf\)"),
        ("wide", r"shape mismatch for mapping\.fc1\.weight: file \(32, 48\), config expects \(32, 32\)"),
    ],
)
def test_malformed_rosinality_checkpoints_give_one_clear_line(tmp_path, kind, message):
    sd = rosinality_state(seed=3)
    ckpt = {"g_ema": sd, "latent_avg": torch.zeros(32)}
    if kind == "g_ema_tensor":
        ckpt["g_ema"] = torch.zeros(3)
    elif kind == "value_is_dict":
        sd["style.1.weight"] = {"w": torch.zeros(2)}
    elif kind == "style_1d":
        sd["style.1.weight"] = torch.zeros(32)
    elif kind == "conv_scalar":
        sd["conv1.conv.weight"] = torch.zeros([])
    elif kind == "noise_two":
        sd["conv1.noise.weight"] = torch.zeros(2)
    elif kind == "int_tensor":
        sd["input.input"] = sd["input.input"].to(torch.int64)
    elif kind == "nan":
        sd["convs.1.conv.weight"].view(-1)[:2] = float("nan")
    elif kind == "wide":
        sd["style.2.weight"] = torch.zeros(32, 48)
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=message) as exc:
        import_generator(tmp_path / "bad.pt")
    assert "\n" not in str(exc.value) and "bad.pt" in str(exc.value)


@pytest.mark.parametrize("kind", ["fifo", "socket", "device", "directory"])
def test_import_refuses_non_regular_files_without_blocking(tmp_path, kind):
    p = tmp_path / "net.pkl"
    sock = None
    if kind == "fifo":
        os.mkfifo(p)
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(p))
    elif kind == "device":
        p.symlink_to("/dev/null")
    else:
        p.mkdir()
    try:
        kind_name, msg = call_in_child(lambda: import_generator(p), timeout=60)
    finally:
        if sock is not None:
            sock.close()
    assert kind_name == "CheckpointError", (kind_name, msg)
    assert ("is a folder" if kind == "directory" else "is not a regular file") in msg


def test_import_weights_cli_malformed_pickles_are_one_line_exit_2(tmp_path):
    for kind in ("init_kwargs_list", "conv1_scalar", "z_dim_huge", "nan_weight"):
        G = official_generator_tree(seed=9)
        _nvlabs_breakage(G, kind)
        write_nvlabs_pkl(tmp_path / f"{kind}.pkl", G)
    r_all = [(_cli("import-weights", str(tmp_path / f"{k}.pkl"), "-o", str(tmp_path / f"out-{k}")), k)
             for k in ("init_kwargs_list", "conv1_scalar", "z_dim_huge", "nan_weight")]
    for r, kind in r_all:
        assert r.returncode == 2, (kind, r.stderr)
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, (kind, r.stderr)
        assert f"{kind}.pkl" in r.stderr
        assert not (tmp_path / f"out-{kind}").exists()
