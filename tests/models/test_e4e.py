"""e4e / pSp checkpoints: they load unchanged, encode like the official code, make a bundle that runs, and a hostile
file is refused.

Nothing here uses ``models.e4e`` to build the reference: the checkpoint writer spells the parameter tree out from the
official sources (encoder4editing / pixel2style2pixel ``models/encoders/helpers.py`` ``get_blocks`` +
``bottleneck_IR_SE`` + ``SEModule``, ``psp_encoders.py`` ``GradualStyleBlock`` / ``GradualStyleEncoder`` /
``Encoder4Editing``, rosinality ``EqualLinear``; ``coach.py`` ``__get_save_dict``), and :func:`reference_encode` is
a functional re-statement of their forward passes — hard-coded body taps 6 / 20 / 23, ``MaxPool2d(1, stride)``
shortcuts, e4e's ``w.repeat`` + ``w[:, i] += delta_i``, ``latent_avg.repeat`` — so a naming or semantics mistake in
our encoder or in ``models/legacy.py`` shows up as a mismatch. Widths are shrunk; depths are the released IR-50's.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import bench_models
from export.onnx import export_bundle
from export.parity import check_model, ort_runner
from models.bundle import DEFAULT_BUNDLE, load_bundle
from models.e4e import PRESETS, StyleEncoder
from models.editing import EditStack
from models.errors import BundleError, CheckpointError, UnsafePickleError
from models.legacy import import_bundle, import_encoder, import_generator
from realtime import cli
from tests import REPO
from tests.bundles import make_tiny_e4e_bundle
from tests.official_formats import (
    flat_state,
    official_generator_tree,
    rosinality_reference_forward,
    rosinality_state,
    write_nvlabs_pkl,
)

WIDTHS = (16, 32, 48, 64)  # shrunk from (64, 128, 256, 512); SE reduction 16 still leaves ≥ 1 channel
IR50 = (3, 4, 14, 3)  # the released depth
W_DIM = 32


# --------------------------------------------------------------------------------------------------------------
# The official formats, spelled out


def official_blocks(widths=WIDTHS, units=IR50):
    """get_blocks(50) with shrunk widths: [(in_channel, depth, stride)] per unit, stage by stage."""
    out = []
    cin = widths[0]
    for depth, n in zip(widths, units):
        out += [(cin, depth, 2)] + [(depth, depth, 1)] * (n - 1)
        cin = depth
    return out


def official_encoder_state(n_styles, widths=WIDTHS, units=IR50, w_dim=W_DIM, img=256, in_nc=3, seed=0):
    """A random GradualStyleEncoder / Encoder4Editing state dict (they share every parameter name)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}

    def conv(key, cout, cin, k, bias=False):
        sd[key + ".weight"] = torch.randn(cout, cin, k, k, generator=g) * (1.0 / math.sqrt(cin * k * k))
        if bias:
            sd[key + ".bias"] = 0.1 * torch.randn(cout, generator=g)

    def bn(key, c):
        sd[key + ".weight"] = 1 + 0.1 * torch.randn(c, generator=g)
        sd[key + ".bias"] = 0.1 * torch.randn(c, generator=g)
        sd[key + ".running_mean"] = 0.1 * torch.randn(c, generator=g)
        sd[key + ".running_var"] = 0.5 + torch.rand(c, generator=g)
        sd[key + ".num_batches_tracked"] = torch.tensor(123456, dtype=torch.int64)

    def prelu(key, c):
        sd[key + ".weight"] = 0.25 + 0.05 * torch.randn(c, generator=g)

    conv("input_layer.0", widths[0], in_nc, 3)
    bn("input_layer.1", widths[0])
    prelu("input_layer.2", widths[0])
    for i, (cin, depth, _stride) in enumerate(official_blocks(widths, units)):
        p = f"body.{i}"
        if cin != depth:  # else MaxPool2d(1, stride): no parameters
            conv(p + ".shortcut_layer.0", depth, cin, 1)
            bn(p + ".shortcut_layer.1", depth)
        bn(p + ".res_layer.0", cin)
        conv(p + ".res_layer.1", depth, cin, 3)
        prelu(p + ".res_layer.2", depth)
        conv(p + ".res_layer.3", depth, depth, 3)
        bn(p + ".res_layer.4", depth)
        conv(p + ".res_layer.5.fc1", depth // 16, depth, 1)
        conv(p + ".res_layer.5.fc2", depth, depth // 16, 1)
    for i in range(n_styles):
        spatial = img // 16 if i < 3 else img // 8 if i < 7 else img // 4  # 16 / 32 / 64 at 256²
        for k in range(int(np.log2(spatial))):
            conv(f"styles.{i}.convs.{2 * k}", w_dim, widths[3] if k == 0 else w_dim, 3, bias=True)
        sd[f"styles.{i}.linear.weight"] = torch.randn(w_dim, w_dim, generator=g)  # EqualLinear: randn / lr_mul
        sd[f"styles.{i}.linear.bias"] = 0.1 * torch.randn(w_dim, generator=g)
    conv("latlayer1", widths[3], widths[2], 1, bias=True)
    conv("latlayer2", widths[3], widths[1], 1, bias=True)
    return sd


def official_opts(kind, **over):
    """vars(opts) as the two training scripts save it (a plain dict)."""
    common = {"exp_dir": "experiment/ffhq", "dataset_type": "ffhq_encode", "batch_size": 8, "test_batch_size": 4,
              "workers": 8, "learning_rate": 0.0001, "optim_name": "ranger", "train_decoder": False,
              "start_from_latent_avg": True, "lpips_lambda": 0.8, "id_lambda": 0.1, "l2_lambda": 1.0,
              "stylegan_weights": "pretrained_models/stylegan2-ffhq-config-f.pt", "checkpoint_path": None,
              "max_steps": 300000, "save_interval": 50000, "device": "cuda:0", "resize_factors": None}
    if kind == "e4e":
        common.update(encoder_type="Encoder4Editing", stylegan_size=1024, progressive_steps=[0, 20000, 22000, 24000],
                      progressive_start=20000, progressive_step_every=2000, delta_norm=2, delta_norm_lambda=0.0002,
                      w_discriminator_lambda=0.1, use_w_pool=True, w_pool_size=50, lpips_type="alex",
                      save_training_data=False, sub_exp_dir=None, keep_optimizer=False, resume_training_from_ckpt=None)
    else:
        common.update(encoder_type="GradualStyleEncoder", input_nc=3, label_nc=0, output_size=1024, learn_in_w=False,
                      w_norm_lambda=0, lpips_lambda_crop=0, l2_lambda_crop=0)
    common.update(over)
    return common


def write_official_pt(path, kind, enc_sd, dec_sd, latent_avg, opts=None, legacy=False, **extra):
    """torch.save({'state_dict': net.state_dict(), 'opts': vars(opts), 'latent_avg': …}) as coach.py does."""
    sd = {"encoder." + k: v for k, v in enc_sd.items()}
    sd.update({"decoder." + k: v for k, v in dec_sd.items()})
    ckpt = {"state_dict": sd, "opts": official_opts(kind) if opts is None else opts}
    if latent_avg is not None:
        ckpt["latent_avg"] = latent_avg
    ckpt.update(extra)
    torch.save(ckpt, path, _use_new_zipfile_serialization=not legacy)
    return path


# --------------------------------------------------------------------------------------------------------------
# The official forward passes, re-stated


def _bn(sd, p, x):
    return F.batch_norm(x, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"],
                        training=False, eps=1e-5)


def reference_encode(sd, x, kind, n_styles, latent_avg=None, units=IR50, taps=(6, 20, 23)):
    """pSp(opts).forward's code path on an official encoder state: encoder(x) (+ latent_avg.repeat(B, 1, 1))."""
    x = F.conv2d(x, sd["input_layer.0.weight"], padding=1)
    x = F.prelu(_bn(sd, "input_layer.1", x), sd["input_layer.2.weight"])
    strides = [s for _, _, s in official_blocks(units=units)]
    feats = {}
    for i, stride in enumerate(strides):
        p = f"body.{i}"
        if p + ".shortcut_layer.0.weight" in sd:
            short = _bn(sd, p + ".shortcut_layer.1", F.conv2d(x, sd[p + ".shortcut_layer.0.weight"], stride=stride))
        else:
            short = F.max_pool2d(x, 1, stride)
        r = _bn(sd, p + ".res_layer.0", x)
        r = F.prelu(F.conv2d(r, sd[p + ".res_layer.1.weight"], padding=1), sd[p + ".res_layer.2.weight"])
        r = _bn(sd, p + ".res_layer.4", F.conv2d(r, sd[p + ".res_layer.3.weight"], stride=stride, padding=1))
        s = F.adaptive_avg_pool2d(r, 1)
        s = torch.sigmoid(F.conv2d(F.relu(F.conv2d(s, sd[p + ".res_layer.5.fc1.weight"])),
                                   sd[p + ".res_layer.5.fc2.weight"]))
        x = r * s + short
        if i in taps:
            feats[i] = x
    c1, c2, c3 = (feats[t] for t in taps)

    def style(i, f):
        k = 0
        while f"styles.{i}.convs.{k}.weight" in sd:
            f = F.leaky_relu(F.conv2d(f, sd[f"styles.{i}.convs.{k}.weight"], sd[f"styles.{i}.convs.{k}.bias"],
                                      stride=2, padding=1), 0.01)
            k += 2
        w = sd[f"styles.{i}.linear.weight"]
        f = f.view(-1, w.shape[1])
        return F.linear(f, w * (1 / math.sqrt(w.shape[1])), sd[f"styles.{i}.linear.bias"])

    def up_add(a, b):
        return F.interpolate(a, size=b.shape[-2:], mode="bilinear", align_corners=True) + b

    lat1 = F.conv2d(c2, sd["latlayer1.weight"], sd["latlayer1.bias"])
    lat2 = F.conv2d(c1, sd["latlayer2.weight"], sd["latlayer2.bias"])
    if kind == "psp":
        latents = [style(j, c3) for j in range(3)]
        p2 = up_add(c3, lat1)
        latents += [style(j, p2) for j in range(3, 7)]
        p1 = up_add(p2, lat2)
        latents += [style(j, p1) for j in range(7, n_styles)]
        codes = torch.stack(latents, dim=1)
    else:
        w0 = style(0, c3)
        codes = w0.repeat(n_styles, 1, 1).permute(1, 0, 2)
        features = c3
        for i in range(1, n_styles):
            if i == 3:
                p2 = up_add(c3, lat1)
                features = p2
            elif i == 7:
                p1 = up_add(p2, lat2)
                features = p1
            codes[:, i] += style(i, features)
    if latent_avg is not None:
        codes = codes + latent_avg.repeat(codes.shape[0], 1, 1)
    return codes


def _crops(n=2, size=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, size // 8, size // 8, generator=g) * 2 - 1
    return (F.interpolate(low, size=(size, size), mode="bilinear") + 0.2 * torch.rand(n, 3, size, size, generator=g)
            ).clamp(-1, 1)


def _close(a, b, rel=1e-5):
    return (a - b).abs().max().item() <= rel * max(1.0, b.abs().max().item())


# --------------------------------------------------------------------------------------------------------------
# Fixtures: one decoder + one encoder state of each kind (64² generator → 10 W+ entries: coarse, middle, fine heads)

RES = 64
N_STYLES = 2 * int(math.log2(RES)) - 2


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("official")
    dec = rosinality_state(size=RES, style_dim=W_DIM, n_mlp=2, cmax=32, seed=7)
    enc = official_encoder_state(N_STYLES, seed=1)
    latent_avg = (0.3 * torch.randn(W_DIM, generator=torch.Generator().manual_seed(2))).repeat(N_STYLES, 1)
    out = {"dec": dec, "enc": enc, "latent_avg": latent_avg, "dir": d}
    for kind in ("e4e", "psp"):
        out[kind] = write_official_pt(d / f"{kind}_ffhq_encode.pt", kind, enc, dec, latent_avg)
    return out


# --------------------------------------------------------------------------------------------------------------
# Loading and encoding


@pytest.mark.parametrize("kind", ["e4e", "psp"])
def test_released_format_loads_unchanged_and_encodes_like_the_official_code(files, kind):
    enc, prov = import_encoder(files[kind])
    cfg = enc.cfg
    assert (cfg.kind, cfg.img_size, cfg.widths, cfg.units, cfg.n_styles, cfg.w_dim) == \
        (kind, 256, WIDTHS, IR50, N_STYLES, W_DIM)
    assert (cfg.coarse_ind, cfg.middle_ind, cfg.se, cfg.start_from_latent_avg) == (3, 7, True, True)
    assert prov["encoder_kind"] == kind and prov["encoder_opts"]["encoder_type"] in ("Encoder4Editing",
                                                                                     "GradualStyleEncoder")
    # every official key, and only those, under the same name with the same value
    ours = enc.state_dict()
    assert set(ours) - {"latent_avg"} == {"encoder." + k for k in files["enc"]}
    assert all(torch.equal(ours["encoder." + k], v) for k, v in files["enc"].items())
    x = _crops(2)
    with torch.no_grad():
        got = enc(x)
        ref = reference_encode(files["enc"], x, kind, N_STYLES, files["latent_avg"])
        other = reference_encode(files["enc"], x, "psp" if kind == "e4e" else "e4e", N_STYLES, files["latent_avg"])
    assert got.shape == (2, N_STYLES, W_DIM)
    assert _close(got, ref)
    assert not _close(got, other, rel=1e-2)  # e4e and pSp differ on the same weights: the kind matters
    assert (got[0] - got[1]).abs().max() > 1e-3  # depends on the input


def test_shrunk_depth_and_input_size_are_configurable(tmp_path):
    units, img, n = (1, 2, 2, 1), 64, 8  # heads read 4², 8², 16² maps
    enc_sd = official_encoder_state(n, units=units, img=img, seed=3)
    la = torch.randn(n, W_DIM)
    p = write_official_pt(tmp_path / "small.pt", "e4e", enc_sd, rosinality_state(size=32, style_dim=W_DIM, seed=3), la)
    enc, _ = import_encoder(p)
    assert (enc.cfg.units, enc.cfg.img_size, enc.cfg.n_styles) == (units, img, n)
    taps = tuple(int(t) - 1 for t in np.cumsum(units)[1:])
    x = _crops(1, size=img, seed=4)
    with torch.no_grad():
        assert _close(enc(x), reference_encode(enc_sd, x, "e4e", n, la, units, taps))
    with pytest.raises(ValueError, match=r"\[B, 3, 64, 64\]"):
        enc(_crops(1, size=128))


def test_training_state_in_the_file_is_read_safely(tmp_path, files):
    # save_training_data=True adds global_step, the optimizer state and best_val_loss; a numpy scalar there (a loss
    # computed with numpy, as a fork's training script may save it) must not make the file unreadable
    opt_state = {"state": {0: {"step": 10, "exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 1e-4, "betas": (0.95,
                 0.999), "params": [0]}]}
    p = write_official_pt(tmp_path / "t.pt", "e4e", files["enc"], files["dec"], files["latent_avg"],
                          official_opts("e4e", save_training_data=True), global_step=200000,
                          best_val_loss=np.mean([0.25, 0.5]), optimizer=opt_state,
                          discriminator_state_dict={"w": torch.zeros(2)})
    enc, _ = import_encoder(p)
    x = _crops(1, seed=7)
    with torch.no_grad():
        assert _close(enc(x), reference_encode(files["enc"], x, "e4e", N_STYLES, files["latent_avg"]))
    # … but numpy beyond numeric scalars is still refused: an object dtype, an object array
    for bad in (np.dtype("O"), np.array([None, 1], dtype=object)):
        torch.save({"state_dict": {}, "opts": {"x": bad}}, tmp_path / "o.pt")
        with pytest.raises(UnsafePickleError):
            import_encoder(tmp_path / "o.pt")


@pytest.mark.parametrize("case", ["no_avg", "flat_avg", "no_opts_with_kind"])
def test_latent_avg_follows_the_options(tmp_path, files, case):
    x = _crops(1, seed=5)
    la = files["latent_avg"]
    if case == "no_avg":  # trained without start_from_latent_avg: coach.py saves no latent_avg
        p = write_official_pt(tmp_path / "a.pt", "psp", files["enc"], files["dec"], None,
                              official_opts("psp", start_from_latent_avg=False))
        enc, _ = import_encoder(p)
        want = reference_encode(files["enc"], x, "psp", N_STYLES, None)
    elif case == "flat_avg":  # a [w_dim] latent_avg (learn_in_w-style repeat=1 saves) broadcasts over entries
        p = write_official_pt(tmp_path / "b.pt", "e4e", files["enc"], files["dec"], la[0])
        enc, _ = import_encoder(p)
        want = reference_encode(files["enc"], x, "e4e", N_STYLES, la[0])
    else:  # no opts at all: the kind must come from the user
        p = write_official_pt(tmp_path / "c.pt", "e4e", files["enc"], files["dec"], la, opts={})
        with pytest.raises(CheckpointError, match="--encoder-kind"):
            import_encoder(p)
        enc, _ = import_encoder(p, kind="e4e")
        want = reference_encode(files["enc"], x, "e4e", N_STYLES, la)
    with torch.no_grad():
        assert _close(enc(x), want)


@pytest.mark.parametrize("case,message", [
    ("w_encoder", "BackboneEncoderUsingLastLayerIntoW"),
    ("sketch", "1-channel input"),
    ("kind_conflict", "is a psp checkpoint"),
    ("avg_missing", "latent_avg is None"),
    ("no_encoder", "no 'state_dict' with 'encoder"),
    ("truncated", "truncated or not a torch checkpoint"),
])
def test_unsupported_or_broken_encoder_files_give_one_clear_error(tmp_path, files, case, message):
    p = tmp_path / "x.pt"
    kind = None
    if case == "w_encoder":
        write_official_pt(p, "psp", files["enc"], files["dec"], files["latent_avg"],
                          official_opts("psp", encoder_type="BackboneEncoderUsingLastLayerIntoW", learn_in_w=True))
    elif case == "sketch":
        write_official_pt(p, "psp", official_encoder_state(N_STYLES, in_nc=1), files["dec"], files["latent_avg"],
                          official_opts("psp", input_nc=1, label_nc=1))
    elif case == "kind_conflict":
        p, kind = files["psp"], "e4e"
    elif case == "avg_missing":
        write_official_pt(p, "e4e", files["enc"], files["dec"], None)
    elif case == "no_encoder":
        torch.save({"g_ema": files["dec"]}, p)
    else:
        p.write_bytes(files["e4e"].read_bytes()[:4000])
    with pytest.raises(CheckpointError, match=message):
        import_encoder(p, kind=kind)


def test_decoder_inside_the_file_is_the_generator(files):
    g, prov = import_generator(files["e4e"])
    assert prov["source_format"] == "e4e pt (its StyleGAN2 decoder)" and prov["w_avg"] == "checkpoint"
    assert g.img_resolution == RES and g.num_ws == N_STYLES
    assert torch.allclose(g.mapping.w_avg, files["latent_avg"][0])
    z = torch.randn(2, W_DIM, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert _close(g(z), rosinality_reference_forward(files["dec"], z, size=RES, n_mlp=2, style_dim=W_DIM))


# --------------------------------------------------------------------------------------------------------------
# Hostile files


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


@pytest.mark.parametrize("legacy", [False, True])
def test_e4e_file_with_a_payload_is_refused_and_nothing_runs(tmp_path, files, legacy):
    target = tmp_path / "pwned"
    opts = official_opts("e4e", checkpoint_path=_Evil(target))
    p = write_official_pt(tmp_path / "evil.pt", "e4e", files["enc"], files["dec"], files["latent_avg"], opts,
                          legacy=legacy)
    for load in (import_encoder, import_generator, import_bundle):
        with pytest.raises(UnsafePickleError, match="refusing to load"):
            load(p)
    assert not target.exists()


@pytest.mark.slow
def test_import_in_a_child_process_never_executes_the_payload(tmp_path, files):
    # The same check as above, but with os.system replaced by a tripwire in a fresh interpreter running the CLI.
    target = tmp_path / "tripped"
    p = write_official_pt(tmp_path / "evil.pt", "psp", files["enc"], files["dec"], files["latent_avg"],
                          extra_payload=_Evil(tmp_path / "x"))
    code = ("import os, sys\n"
            "def trip(*a): open(sys.argv[1], 'w').write('ran'); return 0\n"
            "os.system = trip\n"
            "from realtime import cli\n"
            "sys.exit(cli.main(['import-weights', sys.argv[2], '-o', sys.argv[3]]))\n")
    r = subprocess.run([sys.executable, "-c", code, str(target), str(p), str(tmp_path / "out")], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "refusing to load" in r.stderr and "Traceback" not in r.stderr
    assert not target.exists() and not (tmp_path / "out").exists()


def test_hostile_direction_files_are_refused(tmp_path, files):
    d = tmp_path / "dirs"
    d.mkdir()
    target = tmp_path / "pwned"
    np.save(d / "evil.npy", np.array([_Evil(target)], dtype=object), allow_pickle=True)
    with pytest.raises(CheckpointError, match="evil.npy: refused"):
        import_bundle(files["e4e"], directions=d)
    (d / "evil.npy").unlink()
    torch.save(_Evil(target), d / "evil.pt")
    with pytest.raises(UnsafePickleError, match="refusing to load evil.pt"):
        import_bundle(files["e4e"], directions=d)
    assert not target.exists()


# --------------------------------------------------------------------------------------------------------------
# Bundles


def _directions(folder, num_ws=N_STYLES, w_dim=W_DIM):
    folder.mkdir(exist_ok=True)
    g = torch.Generator().manual_seed(9)
    age = torch.randn(1, w_dim, generator=g).numpy()
    np.save(folder / "stylegan_ffhq_age_w_boundary.npy", age / np.linalg.norm(age))  # InterFaceGAN: [1, 512]
    np.save(folder / "smile.npy", torch.randn(w_dim, generator=g).numpy())  # [512]
    np.save(folder / "pose.npy", torch.randn(num_ws, w_dim, generator=g).numpy())  # per entry [num_ws, 512]
    torch.save(torch.randn(1, w_dim, generator=g), folder / "glasses.pt")  # e4e's editings/*.pt style
    return folder


def test_e4e_file_alone_makes_a_whole_bundle_that_round_trips(tmp_path, files):
    b = import_bundle(files["e4e"], directions=_directions(tmp_path / "dirs"))
    assert isinstance(b.fren, StyleEncoder) and b.fren.kind == "e4e" and b.vien is None
    assert b.trained == {"generator": True, "fren": True, "vien": False} and b.crop_size == 256
    assert sorted(e["name"] for e in b.edits) == ["age", "glasses", "pose", "smile"]
    assert b.provenance["encoder_source_file"] == "e4e_ffhq_encode.pt"
    b.save(tmp_path / "bundle")
    m = json.loads((tmp_path / "bundle" / "bundle.json").read_text())
    assert m["format_version"] == 2 and m["encoders"]["fren"]["kind"] == "e4e" and m["encoders"]["vien"] is None
    b2 = load_bundle(tmp_path / "bundle")
    assert isinstance(b2.fren, StyleEncoder) and b2.fren.cfg == b.fren.cfg
    x = _crops(2, seed=6)
    with torch.no_grad():
        ws = b2.fren(x)
        assert _close(ws, reference_encode(files["enc"], x, "e4e", N_STYLES, files["latent_avg"]))
    # the imported directions are ordinary w_direction edits
    stack = EditStack.from_bundle(b2)
    stack.set_strengths({"age": 2.0})
    edited, _ = stack.apply(ws)
    age = torch.from_numpy(np.load(tmp_path / "dirs" / "stylegan_ffhq_age_w_boundary.npy")).reshape(-1)
    assert torch.allclose(edited - ws, 2.0 * age.expand_as(ws), atol=1e-6)
    stack.set_strengths({"pose": 1.0}, reset=True)
    pose = torch.from_numpy(np.load(tmp_path / "dirs" / "pose.npy"))
    assert torch.allclose(stack.apply(ws)[0] - ws, pose.expand_as(ws), atol=1e-6)


def test_format_1_bundles_load_and_vit_entries_are_unchanged(tmp_path):
    on_disk = json.loads((DEFAULT_BUNDLE / "bundle.json").read_text())
    assert on_disk["format_version"] == 1
    b = load_bundle(DEFAULT_BUNDLE)
    assert b.fren is not None and not isinstance(b.fren, StyleEncoder)
    m = b.manifest()
    # a ViT entry is written exactly as in format 1 (no "kind"), so ViT bundles keep their hash and exports
    assert m["format_version"] == 2 and m["encoders"] == on_disk["encoders"] and "kind" not in m["encoders"]["fren"]


def test_a_newer_encoder_kind_is_refused_clearly(tmp_path, files):
    import_bundle(files["psp"]).save(tmp_path / "b")
    mf = tmp_path / "b" / "bundle.json"
    m = json.loads(mf.read_text())
    assert m["encoders"]["fren"]["kind"] == "psp"
    m["encoders"]["fren"]["kind"] = "restyle"
    mf.write_text(json.dumps(m))
    with pytest.raises(BundleError, match=r'encoders.fren.kind: "restyle" is not supported .*upgrade stylestream'):
        load_bundle(tmp_path / "b")


def test_official_pkl_plus_encoder_weights(tmp_path, files):
    G = official_generator_tree(z_dim=W_DIM, w_dim=W_DIM, res=RES, cbase=2048, cmax=32, n_map=2, seed=11)
    write_nvlabs_pkl(tmp_path / "G.pkl", G)
    b = import_bundle(tmp_path / "G.pkl", encoder_weights=files["psp"])
    assert b.fren.kind == "psp" and b.provenance["source_format"] == "stylegan2-ada-pytorch pkl"
    assert torch.equal(b.generator.mapping.w_avg, flat_state(G)["mapping.w_avg"])  # the .pkl's, not the encoder's
    # the encoder was trained with another generator (its decoder's weights differ from G's): said, not hidden
    assert b.provenance["encoder_decoder_vs_generator"].startswith("max relative weight difference")
    # both files with the same decoder: the match is recorded too
    same = import_bundle(files["e4e"], encoder_weights=files["psp"])
    assert same.provenance["encoder_decoder_vs_generator"] == "identical weights" and same.fren.kind == "psp"
    # an encoder for another resolution does not fit
    small = write_official_pt(tmp_path / "e32.pt", "e4e", official_encoder_state(8), rosinality_state(size=32,
                              style_dim=W_DIM), torch.randn(8, W_DIM))
    with pytest.raises(CheckpointError, match="outputs 8 W\\+ entries of 32, but the generator \\(64²\\) takes 10"):
        import_bundle(tmp_path / "G.pkl", encoder_weights=small)


@pytest.mark.parametrize("name,array,message", [
    ("stylegan_ffhq_age_z_boundary.npy", np.ones((1, W_DIM)), "Z-space boundary"),
    ("wide.npy", np.ones((1, 2 * W_DIM)), "does not fit this generator"),
    ("zero.npy", np.zeros(W_DIM), "zero or not finite"),
])
def test_bad_directions_are_refused(tmp_path, files, name, array, message):
    d = tmp_path / "dirs"
    d.mkdir()
    np.save(d / name, array.astype(np.float32))
    with pytest.raises(CheckpointError, match=message):
        import_bundle(files["e4e"], directions=d)


# --------------------------------------------------------------------------------------------------------------
# ONNX


@pytest.mark.slow
def test_onnx_export_of_the_encoder_matches_torch(tmp_path):


    units, img, n = (1, 1, 2, 1), 64, 8  # small, so the export stays quick; the graph has every op kind
    p = write_official_pt(tmp_path / "e.pt", "e4e", official_encoder_state(n, units=units, img=img, seed=8),
                          rosinality_state(size=32, style_dim=W_DIM, seed=8), 0.5 * torch.randn(n, W_DIM))
    b = import_bundle(p)
    export_bundle(b, tmp_path / "onnx", models=["fren"])
    r = check_model(b, tmp_path / "onnx", "fren", "fp32")
    assert r.ok and r.max_abs < 1e-4, r.message()
    model = onnx.load(str(tmp_path / "onnx" / "fren.fp32.onnx"))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 18
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    run, _ = ort_runner(tmp_path / "onnx" / "fren.fp32.onnx")
    for batch in (1, 3):  # dynamic batch
        x = _crops(batch, size=img, seed=batch)
        with torch.no_grad():
            ref = b.fren(x).numpy()
        out = run({"crops": x.numpy()})[0]
        assert out.shape == (batch, n, W_DIM) and np.abs(out - ref).max() < 1e-4


# --------------------------------------------------------------------------------------------------------------
# End to end: import-weights → info → run with an edit


def _frames(path):
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24").astype(np.float32) for f in c.decode(video=0)]


@pytest.mark.slow
def test_cli_bundle_from_official_files_runs_end_to_end_with_an_edit(tmp_path, files, capsys):
    dirs = _directions(tmp_path / "dirs")
    bundle = tmp_path / "ffhq-e4e"
    assert cli.main(["import-weights", str(files["e4e"]), "--directions", str(dirs), "-o", str(bundle)]) == 0
    err = " ".join(capsys.readouterr().err.split())  # rich wraps lines
    assert "key-frame encoder: e4e (encoder4editing" in err and "edits: glasses, pose, smile, age" in err
    assert cli.main(["info", str(bundle)]) == 0
    out = capsys.readouterr().out
    assert "key-frame encoder: e4e" in out and "key frames (e4e)" in out
    outs = {}
    for strength in (0.0, 3.0):
        o = tmp_path / f"out{strength}.mp4"
        rc = cli.main(["run", "demo:?seconds=1&fps=10&size=320x240", "-o", str(o), "--bundle", str(bundle),
                       "--backend", "torch", "--composite", "regenerate", "--edit", f"smile={strength}"])
        assert rc == 0, capsys.readouterr().err
        report = json.loads(Path(str(o) + ".stylestream.json").read_text())
        assert report["stats"]["frames_out"] == 10 and report["stats"]["faces"] >= 8
        assert report["stats"]["key_frames"] >= 1 and report["edits"].get("smile", 0.0) == strength
        outs[strength] = _frames(o)
    assert len(outs[0.0]) == len(outs[3.0]) == 10
    diff = np.mean([np.abs(a - b).mean() for a, b in zip(outs[0.0], outs[3.0])])
    assert diff > 0.5  # the edit changed the rendered faces


@pytest.mark.slow
def test_cli_errors_are_one_line(tmp_path, files):
    r = subprocess.run([sys.executable, "-m", "realtime.cli", "import-weights", str(files["e4e"]), "--encoder",
                        "tiny", "-o", str(tmp_path / "o")], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "leave --encoder out" in r.stderr
    assert not (tmp_path / "o").exists()



@pytest.mark.slow
def test_bench_models_times_the_released_size_encoder(tmp_path):
    out = tmp_path / "e4e.json"
    assert bench_models.main(["--generator", "--encoder", "e4e", "--iters", "1", "--warmup", "0", "--threads", "1",
                              "--json", str(out)]) == 0
    row, coarse = json.loads(out.read_text())["results"]
    # IR-SE-50 + 18 map2style heads + laterals at the released widths: 267 M parameters (with a 30 M decoder, the
    # ≈1.2 GB of e4e_ffhq_encode.pt)
    assert row["model"] == "e4e" and row["resolution"] == 256 and row["params"] == 267_136_704
    assert row["median_ms"] > 0
    assert coarse["model"] == "e4e coarse" and "entries 0–7 only" in coarse["config"] and coarse["median_ms"] > 0


def test_training_a_vit_encoder_from_an_e4e_bundle_is_refused_clearly(tmp_path, files, capsys):
    import_bundle(files["e4e"]).save(tmp_path / "b")
    rc = cli.main(["train", "encoder", "--out", str(tmp_path / "run"), "--bundle", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert rc == 2 and "key-frame encoder is e4e" in err and "Traceback" not in err


# --------------------------------------------------------------------------------------------------------------
# Coarse-only forward (--reuse coarse without a ViEN)


@pytest.mark.parametrize("kind", ["e4e", "psp"])
def test_coarse_forward_is_the_first_entries_without_the_other_heads(kind):
    """forward_coarse(x, n) == forward(x)[:, :n] exactly; only heads 0…n−1 run, and a lateral conv only when a
    remaining head reads its map (latlayer1 → /8 heads 3…6, latlayer2 → /4 heads 7…)."""
    enc = make_tiny_e4e_bundle(kind=kind).fren
    e = enc.encoder
    ran: set[str] = set()
    watched = [(f"styles.{i}", h) for i, h in enumerate(e.styles)] + [("latlayer1", e.latlayer1),
                                                                       ("latlayer2", e.latlayer2)]
    for name, m in watched:
        m.register_forward_hook(lambda _m, _i, _o, name=name: ran.add(name))
    x = _crops(2, size=64)
    with torch.no_grad():
        full = enc(x)
        for n, lats in ((1, set()), (3, set()), (5, {"latlayer1"}), (8, {"latlayer1", "latlayer2"}),
                        (10, {"latlayer1", "latlayer2"})):
            ran.clear()
            out = enc.forward_coarse(x, n)
            assert torch.equal(out, full[:, :n]), n
            assert ran == {f"styles.{i}" for i in range(n)} | lats, n
    with pytest.raises(ValueError, match="n must be in 1…10"):
        enc.forward_coarse(x, 11)


def test_coarse_forward_of_the_released_size_skips_44_percent_of_the_macs():
    """At the released size (IR-SE-50, 256², 18 heads) the 8 coarse entries of a 1024² generator cost 40.3 GMAC of
    the whole encoder's 72.5 (counted on the meta device: no weights allocated)."""
    with torch.device("meta"):
        enc = StyleEncoder(PRESETS["e4e"]).eval()
        x = torch.zeros(1, 3, 256, 256)
    with FlopCounterMode(display=False) as whole:
        enc(x)
    with FlopCounterMode(display=False) as coarse:
        enc.forward_coarse(x, 8)
    assert round(whole.get_total_flops() / 2e9, 1) == 72.5
    assert round(coarse.get_total_flops() / 2e9, 1) == 40.3
