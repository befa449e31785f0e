"""Issue 17 items 7–9: a bundle is checked — every bundle.json field, the safetensors headers against the sizes the
configs imply, finiteness of the weights, that every file is a regular file — before anything big is allocated;
each failure is one BundleError line naming the file, the field and the problem."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from models.bundle import DEFAULT_BUNDLE, MANIFEST, load_bundle
from models.editing import EditSpec, PoseExpressionNet
from models.errors import BundleError
from models.stylegan2 import GENERATOR_PRESETS, Generator, GeneratorConfig
from models.validation import module_shapes
from models.vit_encoder import ENCODER_PRESETS, FrameEncoder, VideoEncoder, ViTConfig
from tests import REPO
from tests.guards import call_in_child

DEFAULT = DEFAULT_BUNDLE
FILES = ("generator.safetensors", "fren.safetensors", "vien.safetensors", "extra.safetensors")


def _bundle(tmp_path: Path, edit=None, name: str = "b") -> Path:
    """A copy of the built-in bundle: bundle.json copied (and edited by ``edit(manifest)``), weights symlinked."""
    p = tmp_path / name
    p.mkdir()
    for f in FILES:
        (p / f).symlink_to(DEFAULT / f)
    m = json.loads((DEFAULT / MANIFEST).read_text())
    if edit is not None:
        edit(m)
    (p / MANIFEST).write_text(json.dumps(m))
    return p


def _set(path: str, value):
    """edit(manifest) that sets the field at a dotted path ("edits.0.range") to ``value``."""
    def edit(m):
        keys = path.split(".")
        node = m
        for k in keys[:-1]:
            node = node[int(k)] if isinstance(node, list) else node[k]
        node[int(keys[-1]) if isinstance(node, list) else keys[-1]] = value
    return edit


def _one_line_error(p: Path, match: str) -> str:
    with pytest.raises(BundleError, match=match) as exc:
        load_bundle(p)
    msg = str(exc.value)
    assert "\n" not in msg and len(msg) < 400, msg
    return msg


# ------------------------------------------------------------------------------------------- item 7: the table


@pytest.mark.parametrize("cls", [GeneratorConfig, ViTConfig, EditSpec])
def test_every_config_field_has_a_rule(cls):
    assert set(cls.FIELDS) == {f.name for f in dataclasses.fields(cls)}


def test_presets_and_the_default_bundle_pass_their_own_checks():
    for cfg in [*GENERATOR_PRESETS.values(), *ENCODER_PRESETS.values()]:
        cfg.validate()
    b = load_bundle(DEFAULT)
    assert len(b.edits) == 13 and b.generator.img_resolution == 64


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("generator.img_resolution", 100, r"generator\.img_resolution: must be a power of two"),
        ("generator.img_resolution", -64, r"generator\.img_resolution: must be"),
        ("generator.img_resolution", "64", r"generator\.img_resolution: must be an integer"),
        ("generator.img_resolution", 64.0, r"generator\.img_resolution: must be an integer"),
        ("generator.img_resolution", True, r"generator\.img_resolution: must be an integer"),
        ("generator.img_resolution", None, r"generator\.img_resolution: must be an integer"),
        ("generator.z_dim", 2_000_000, r"generator\.z_dim: must be between 0 and 4096"),
        ("generator.w_dim", 0, r"generator\.w_dim: must be between 1 and"),
        ("generator.channel_max", 2_000_000, r"generator\.channel_max: must be between"),
        ("generator.channel_base", 16, r"generator\.channel_base: .*at least img_resolution"),
        ("generator.mapping_layers", 0, r"generator\.mapping_layers"),
        ("generator.mapping_lr_multiplier", NAN, r"generator\.mapping_lr_multiplier: must be a finite number"),
        ("generator.mapping_lr_multiplier", 0, r"generator\.mapping_lr_multiplier: must be > 0"),
        ("generator.conv_clamp", INF, r"generator\.conv_clamp: must be a finite number"),
        ("generator.w_avg_beta", 2, r"generator\.w_avg_beta: must be between 0"),
        ("generator.embed_features", "x", r"generator\.embed_features: must be an integer or null"),
        ("generator.resample_filter", [1, "a"], r"generator\.resample_filter\[1\]: must be an integer"),
        ("generator.resample_filter", [], r"generator\.resample_filter: must have 1 to 16 entries"),
        ("generator.resample_filter", [1, -1], r"generator\.resample_filter: .*sum"),
        ("generator.resample_filter", 3, r"generator\.resample_filter: must be a list"),
        ("generator.coarse_resolution", 3, r"generator\.coarse_resolution: must be a power of two"),
        ("generator.num_fp16_res", -1, r"generator\.num_fp16_res"),
        ("generator.no_such_field", 3, r"invalid model config: generator\.no_such_field: unknown field"),
        ("generator", [], r"generator: must be a JSON object"),
        ("encoders.fren.dim", 130, r"encoders\.fren\.dim: must be divisible by heads"),
        ("encoders.fren.img_size", 100, r"encoders\.fren\.img_size: must be a multiple of patch_size"),
        ("encoders.fren.depth", 10**6, r"encoders\.fren\.depth: must be between 1 and"),
        ("encoders.fren.heads", 0, r"encoders\.fren\.heads"),
        ("encoders.fren.mlp_ratio", NAN, r"encoders\.fren\.mlp_ratio: must be a finite number"),
        ("encoders.fren", {"img_size": 256, "patch_size": 2, "dim": 128, "depth": 4, "heads": 4, "mlp_ratio": 2.0,
                           "head_hidden": 0}, r"encoders\.fren\.patch_size: .*16384 patches"),
        ("encoders.vien.img_size", 128, r"encoders\.vien\.img_size: .*same"),
        ("encoders.e4e", {"img_size": 64}, r"encoders\.e4e: unknown"),
        ("encoders", "none", r"encoders: must be a JSON object"),
        ("preprocess.crop_size", "64", r"preprocess\.crop_size: must be an integer"),
        ("preprocess.crop_size", 128, r"preprocess\.crop_size: .*disagrees"),
        ("preprocess.num_ws", 18, r"preprocess\.num_ws: .*disagrees"),
        ("preprocess.alignment", "dlib", r"preprocess\.alignment: must be one of"),
        ("trained.generator", "yes", r"trained\.generator: must be true or false"),
        ("name", 5, r"name: must be a string"),
        ("provenance", [], r"provenance: must be a JSON object"),
        ("format_version", True, r"format version true is not supported"),
        ("hello", 1, r"hello: unknown section"),
        ("edits", {}, r"edits: must be a list"),
        ("edits.0.range", [NAN, 3.0], r"edits\[0\] \(smile\)\.range\[0\]: must be a finite number"),
        ("edits.0.range", [3.0, -3.0], r"edits\[0\] \(smile\)\.range: .*low ≤ high"),
        ("edits.0.range", [1.0], r"edits\[0\] \(smile\)\.range: must have 2 entries"),
        ("edits.0.default", 5.0, r"edits\[0\] \(smile\)\.default: .*inside the range"),
        ("edits.0.scale", "big", r"edits\[0\] \(smile\)\.scale: must be a finite number"),
        ("edits.0.layers", [0, 99], r"edits\[0\] \(smile\)\.layers\[1\]: .*W\+ entries"),
        ("edits.0.kind", "warp", r"edits\[0\] \(smile\)\.kind: must be one of"),
        ("edits.0.name", "", r"edits\[0\]\.name: must be"),
        ("edits.1.name", "smile", r"edits\[1\] \(smile\)\.name: .*twice"),
        ("edits.0.extra", [], r"edits\[0\] \(smile\)\.extra: must be a JSON object"),
        ("edits.11.channel", 999, r"edits\[11\] \(mouth_style\)\.channel: .*has 64 channels"),
        ("edits.11.style_layer", "b999.conv0", r"edits\[11\] \(mouth_style\)\.style_layer: .*no StyleSpace layer"),
        ("edits.7.extra.target", {"yaw": "left"}, r"edits\[7\] \(yaw_to_15\)\.extra\.target\.yaw: must be a finite"),
        ("edits.7.extra.net.hidden", 10**9, r"edits\[7\] \(yaw_to_15\)\.extra\.net\.hidden: must be between"),
        ("edits.7.extra.net.w_dim", 65, r"edits\[7\] \(yaw_to_15\)\.extra\.net\.w_dim: .*generator"),
        ("edits.7.extra.net.hidden", 128, r"edits\[7\] \(yaw_to_15\)\.extra\.net: .*pose_expression\.net\..*shape"),
    ],
)
def test_invalid_manifest_field_is_one_line_naming_file_and_field(tmp_path, field, value, message):
    p = _bundle(tmp_path, _set(field, value))
    msg = _one_line_error(p, message)
    assert str(p / MANIFEST) in msg


def test_edit_tensor_shapes_are_checked_against_the_generator(tmp_path):
    p = _bundle(tmp_path)
    (p / "extra.safetensors").unlink()
    extra = load_file(str(DEFAULT / "extra.safetensors"))
    extra["edit.smile.direction"] = torch.zeros(7, 64)
    save_file(extra, str(p / "extra.safetensors"))
    _one_line_error(p, r"edits\[0\] \(smile\): .*edit\.smile\.direction .*\(7, 64\).*\[64\] or \[10, 64\]")
    del extra["edit.smile.direction"]
    save_file(extra, str(p / "extra.safetensors"))
    _one_line_error(p, r"edits\[0\] \(smile\): .*no tensor edit\.smile\.direction")


def test_bundle_json_size_and_nesting_are_limited(tmp_path):
    deep = _bundle(tmp_path, _set("provenance", {"x": json.loads("[" * 200 + "]" * 200)}), "deep")
    _one_line_error(deep, r"bundle\.json.*nested deeper than")
    deeper = _bundle(tmp_path, name="deeper")
    (deeper / MANIFEST).write_text('{"format": "stylestream-bundle", "p": ' + "[" * 100_000 + "]" * 100_000 + "}")
    _one_line_error(deeper, r"bundle\.json.*nested deeper than")
    big = _bundle(tmp_path, _set("provenance", {"pad": "x" * (5 << 20)}), "big")
    _one_line_error(big, r"bundle\.json is too large \(5\.\d MiB; the limit is 4 MiB\)")


# -------------------------------------------------------------------- item 7: safetensors headers, no allocation


def _header(path: Path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def _write(path: Path, header: dict | bytes, body: bytes, n: int | None = None) -> None:
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.unlink()
    path.write_bytes(struct.pack("<Q", len(h) if n is None else n) + h + body)


@pytest.mark.parametrize(
    "breakage,message",
    [
        ("header_len_huge", r"header length .* exceeds"),
        ("header_len_past_end", r"header length .*past the end"),
        ("header_not_json", r"header is not valid JSON"),
        ("header_not_object", r"header is not a JSON object"),
        ("bad_dtype", r'synthesis\.b4\.const: dtype "F99" is not a safetensors dtype'),
        ("int_dtype", r"synthesis\.b4\.const: dtype I32 is not a floating-point"),
        ("bad_shape", r"synthesis\.b4\.const: shape must be a list of non-negative integers"),
        ("offsets_vs_shape", r"synthesis\.b4\.const: data_offsets .* hold .* bytes, shape .* needs"),
        ("offsets_past_end", r"data_offsets .* past the end|do not cover"),
        ("huge_shape", r"synthesis\.b4\.const: data_offsets .* shape \[1000000, 1000000, 1000000\]"),
        ("truncated", r"corrupt or not a safetensors file"),
        ("empty", r"corrupt or not a safetensors file \(.*shorter than"),
    ],
)
def test_broken_safetensors_headers_are_refused_before_loading(tmp_path, breakage, message):
    p = _bundle(tmp_path)
    f = p / "generator.safetensors"
    h, body = _header(DEFAULT / "generator.safetensors")
    if breakage == "header_len_huge":
        _write(f, h, body, n=1 << 60)
    elif breakage == "header_len_past_end":
        _write(f, h, body[:10], n=len(json.dumps(h)) + 100)
    elif breakage == "header_not_json":
        _write(f, b"{nope" + b" " * 20, body)
    elif breakage == "header_not_object":
        _write(f, b"[1, 2, 3]", body)
    elif breakage == "bad_dtype":
        h["synthesis.b4.const"]["dtype"] = "F99"
        _write(f, h, body)
    elif breakage == "int_dtype":
        h["synthesis.b4.const"]["dtype"] = "I32"
        _write(f, h, body)
    elif breakage == "bad_shape":
        h["synthesis.b4.const"]["shape"] = [64, "4", 4]
        _write(f, h, body)
    elif breakage == "offsets_vs_shape":
        h["synthesis.b4.const"]["shape"] = [64, 4, 5]
        _write(f, h, body)
    elif breakage == "offsets_past_end":
        b, e = h["synthesis.b4.const"]["data_offsets"]
        h["synthesis.b4.const"]["data_offsets"] = [b + len(body), e + len(body)]
        _write(f, h, body)
    elif breakage == "huge_shape":
        h["synthesis.b4.const"]["shape"] = [10**6, 10**6, 10**6]
        _write(f, h, body)
    elif breakage == "truncated":
        _write(f, h, body[: len(body) // 2])
    elif breakage == "empty":
        f.unlink()
        f.write_bytes(b"")
    msg = _one_line_error(p, message)
    assert "generator.safetensors" in msg


def test_config_sizes_are_checked_against_headers_before_allocating(tmp_path):
    # Within every limit, but the config implies other shapes than the file holds: refused from the header alone.
    p = _bundle(tmp_path, _set("encoders.fren.dim", 1024))
    _one_line_error(p, r"FrEN \(\S*/fren\.safetensors\): shape mismatch for backbone\.cls_token: file \(1, 1, 128\), "
                       r"config expects \(1, 1, 1024\)")
    p = _bundle(tmp_path, _set("generator.channel_max", 128), "g")
    _one_line_error(p, r"generator \(\S*/g/generator\.safetensors\): shape mismatch")


def test_shape_only_builds_match_real_builds():
    def real(m):
        return {k: tuple(v.shape) for k, v in m.state_dict().items()}

    odd = GeneratorConfig(img_resolution=32, z_dim=0, c_dim=5, w_dim=48, channel_base=256, channel_max=32,
                          mapping_layers=3, layer_features=40, embed_features=24, img_channels=1,
                          resample_filter=(1, 2, 1))
    for cfg in (GENERATOR_PRESETS["tiny-64"], GENERATOR_PRESETS["tiny-128"], odd):
        assert module_shapes(lambda cfg=cfg: Generator(cfg)) == real(Generator(cfg))
    layout = GENERATOR_PRESETS["tiny-64"].layout()
    for enc in (ENCODER_PRESETS["tiny"], ViTConfig(img_size=48, patch_size=8, dim=36, depth=2, heads=3, mlp_ratio=1.5,
                                                   head_hidden=20)):
        for cls in (FrameEncoder, VideoEncoder):
            assert module_shapes(lambda cls=cls, enc=enc: cls(enc, layout)) == real(cls(enc, layout))
    assert module_shapes(lambda: PoseExpressionNet(8, 64, 16)) == real(PoseExpressionNet(8, 64, 16))
    assert module_shapes(lambda: None) is None


def test_checking_a_bundle_stays_cheap():
    # A meta-device build that computes would import torch._dynamo + sympy: ~80 MB RSS and 1-2 s on every load.
    code = ("import sys; from models.bundle import check_bundle; check_bundle(sys.argv[1]); "
            "print(sorted(m for m in ('torch._dynamo', 'sympy') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code, str(DEFAULT)], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", (r.stdout, r.stderr)


# Runs the CLI under an address-space limit and writes the process's own peak RSS (VmHWM) at exit. The child's
# ru_maxrss from wait4 would not do: a forked child counts the parent's resident pages until it execs, and the
# parent here is the whole test session.
_LIMITED = ("import atexit, resource, runpy, sys; out, limit = sys.argv[1], int(sys.argv[2]); "
            "resource.setrlimit(resource.RLIMIT_AS, (limit, limit)); "
            "atexit.register(lambda: open(out, 'w').write(next(line.split()[1] for line in "
            "open('/proc/self/status') if line.startswith('VmHWM')))); "
            "sys.argv = ['stylestream', *sys.argv[3:]]; runpy.run_module('realtime.cli', run_name='__main__')")


def _run_limited(args: list[str], tmp_path: Path, limit_bytes: int = 3 << 30) -> tuple[int, str, int]:
    """Run the CLI under an address-space limit; → (exit code, stderr, peak RSS in KiB of that process alone)."""
    peak = tmp_path / "peak_kib.txt"
    r = subprocess.run([sys.executable, "-c", _LIMITED, str(peak), str(limit_bytes), *args], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    return r.returncode, r.stderr, int(peak.read_text())


def test_info_refuses_huge_configs_in_one_line_with_little_memory(tmp_path):
    # Before: w_dim 20000 peaked at 3.4 GB and fren.dim 8192 at 8.9 GB RSS (/usr/bin/time -v stylestream info).
    for i, (field, value) in enumerate([("generator.w_dim", 20000), ("encoders.fren.dim", 4096),
                                        ("generator.channel_max", 4096)]):
        p = _bundle(tmp_path, _set(field, value), f"b{i}")
        code, err, rss_kib = _run_limited(["info", str(p)], tmp_path)
        assert code == 2, err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert field.split(".")[-1] in err or "shape mismatch" in err, err
        assert rss_kib < 600 * 1024, rss_kib  # `info` of the built-in bundle itself peaks at ~245 MB


# ------------------------------------------------------------------------------------- item 8: NaN / Inf weights


@pytest.mark.parametrize(
    "file,key,value",
    [
        ("generator.safetensors", "synthesis.b8.conv1.weight", float("nan")),
        ("fren.safetensors", "head.2.bias", float("inf")),
        ("extra.safetensors", "edit.smile.direction", float("-inf")),
    ],
)
def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path, file, key, value):
    p = _bundle(tmp_path)
    state = load_file(str(DEFAULT / file))
    state[key] = state[key].clone()
    state[key].view(-1)[3] = value
    (p / file).unlink()
    save_file(state, str(p / file))
    word = "NaN" if math.isnan(value) else "Inf"
    msg = _one_line_error(p, rf"{file}: tensor {key} has 1 non-finite value \(NaN/Inf\)")
    assert word in msg or "NaN/Inf" in msg


# ---------------------------------------------------------------------------------- item 9: non-regular files


@pytest.mark.parametrize("file", ["generator.safetensors", "extra.safetensors", "bundle.json"])
@pytest.mark.parametrize("kind", ["fifo", "directory", "socket", "device"])
def test_non_regular_files_are_refused_without_blocking(tmp_path, file, kind):
    p = _bundle(tmp_path)
    target = p / file
    target.unlink()
    sock = None
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "directory":
        target.mkdir()
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(target))
    else:
        target.symlink_to("/dev/null")
    try:
        kind_name, msg = call_in_child(lambda: load_bundle(p), timeout=60)
    finally:
        if sock is not None:
            sock.close()
    assert kind_name == "BundleError", (kind_name, msg)
    word = {"fifo": "FIFO", "directory": "directory", "socket": "socket", "device": "character device"}[kind]
    assert f"{file} is not a regular file (a {word})" in msg


def test_info_cli_on_a_fifo_is_one_line_exit_2(tmp_path):
    p = _bundle(tmp_path)
    (p / "vien.safetensors").unlink()
    os.mkfifo(p / "vien.safetensors")
    r = subprocess.run([sys.executable, "-m", "realtime.cli", "info", str(p)], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "vien.safetensors is not a regular file (a FIFO)" in r.stderr
