"""The only reader of foreign checkpoints.

Supported:

* **stylegan2-ada-pytorch ``.pkl``** (NVlabs; also the TF-converted official FFHQ/config-f files): a plain pickle
  of a dict with ``G``, ``D``, ``G_ema``, ``augment_pipe``, ``training_set_kwargs``. Each network is pickled by
  ``torch_utils.persistence`` as ``_reconstruct_persistent_obj(meta)`` with ``meta = {type, version, module_src,
  class_name, state}``. The original loader *executes* ``module_src``; we never do. :class:`SafeUnpickler` maps the
  reconstruct function to :class:`PersistedModule` (which keeps ``meta["state"]`` only), rebuilds tensors
  through torch's own rebuild helpers with nested storage blobs loaded by ``torch.load(weights_only=True)``,
  and refuses every global outside a short allow-list — before anything is called.
* **rosinality ``.pt``** (stylegan2-pytorch): ``torch.load(weights_only=True)`` (``argparse.Namespace`` allowed
  for its ``args`` entry), then ``g_ema`` is renamed through :func:`rosinality_to_nvlabs`.
* **e4e / pSp ``.pt``** (encoder4editing, pixel2style2pixel): the same reader (:func:`read_torch_checkpoint`);
  the file is ``{"state_dict": {encoder.*, decoder.*}, "opts": vars(opts), "latent_avg": [n_styles, 512], …}``.
  ``encoder.*`` loads unchanged into :class:`models.e4e.StyleEncoder` (config derived from the shapes, e4e vs pSp
  from ``opts["encoder_type"]``); ``decoder.*`` is a rosinality generator, renamed like ``g_ema``.
* **W directions**: InterFaceGAN ``.npy`` boundaries (``allow_pickle=False``) and e4e's ``.pt`` direction tensors.

Both readers treat the file as untrusted even when every global in it is allowed: the structure (dicts where dicts
belong, numbers where numbers belong, tensor ranks per parameter name — :data:`NVLABS_TENSOR_RULES`,
:data:`ROSINALITY_TENSOR_RULES`), the derived :class:`GeneratorConfig` (its ``FIELDS`` table), every tensor's shape
against the config (compared on the meta device) and finiteness are all checked before the generator is
allocated; each failure is one :class:`CheckpointError` line that names the file and the offending entry.
Non-regular files (FIFOs, devices, sockets) are refused before they are opened.

``stylestream import-weights`` wraps :func:`import_bundle` and writes the bundle.
"""

from __future__ import annotations

import argparse
import codecs
import io
import math
import pickle
import re
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.bundle import Bundle, check_state_shapes, estimate_w_avg, load_state_checked
from models.e4e import KINDS, StyleEncoder, StyleEncoderConfig
from models.editing import EditSpec, tensor_key
from models.errors import CheckpointError, UnsafePickleError
from models.files import file_sha256
from models.stylegan2 import Generator, GeneratorConfig
from models.tflite import read_tflite_file
from models.validation import FieldError, first_non_finite, module_shapes, non_finite_message, regular_file
from models.vit_encoder import ENCODER_PRESETS, FrameEncoder, VideoEncoder

# ----------------------------------------------------------------------------------------------------------------
# Restricted unpickling


class PersistedModule:
    """What ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` becomes here: the class name and the
    module's pickled ``__dict__`` (``_parameters``, ``_buffers``, ``_modules``, ``_init_kwargs``, attributes).
    ``module_src`` is dropped unread."""

    def __init__(self, meta: Any):
        if not isinstance(meta, dict) or meta.get("type") not in ("class", "object"):
            raise UnsafePickleError("persistent object metadata is not a dict of the expected form")
        self.class_name = str(meta.get("class_name", "?"))
        self.version = meta.get("version")
        state = meta.get("state")
        self.state: dict = state if isinstance(state, dict) else {}

    def __repr__(self) -> str:
        return f"PersistedModule({self.class_name})"

    def _dict(self, name: str, where: str) -> dict:
        """``state[name]`` (absent: empty) checked to be a dict with string keys."""
        v = self.state.get(name)
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise CheckpointError(f"{where}.{name} is {_a(v)}, not a dict")
        if not all(isinstance(k, str) for k in v):
            raise CheckpointError(f"{where}.{name} has a key that is not a string")
        return v

    @property
    def parameters(self) -> dict:
        return self._dict("_parameters", self.class_name)

    @property
    def buffers(self) -> dict:
        return self._dict("_buffers", self.class_name)

    @property
    def children(self) -> dict:
        return self._dict("_modules", self.class_name)

    def child(self, path: str) -> PersistedModule:
        node = self
        for part in path.split("."):
            nxt = node.children.get(part)
            if not isinstance(nxt, PersistedModule):
                raise CheckpointError(f"network has no sub-module {path!r}")
            node = nxt
        return node

    def flat_state(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """The module tree's state_dict (parameters and persistent buffers) with dotted names."""
        where = prefix[:-1] or "G_ema"
        out: dict[str, torch.Tensor] = {}
        non_persistent = self.state.get("_non_persistent_buffers_set") or set()
        if not isinstance(non_persistent, set | frozenset | list | tuple):
            raise CheckpointError(f"{where}._non_persistent_buffers_set is {_a(non_persistent)}, not a set")
        for k, v in self._dict("_parameters", where).items():
            if v is not None:
                out[prefix + k] = _as_tensor(v, prefix + k)
        for k, v in self._dict("_buffers", where).items():
            if v is not None and k not in non_persistent:
                out[prefix + k] = _as_tensor(v, prefix + k)
        for k, child in self._dict("_modules", where).items():
            if isinstance(child, PersistedModule):
                out.update(child.flat_state(prefix + k + "."))
        return out


def _a(v: Any) -> str:
    """'a list', 'an int', … for messages."""
    name = type(v).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def _short(v: Any, limit: int = 60) -> str:
    s = repr(v)
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _as_tensor(v: Any, name: str) -> torch.Tensor:
    if not isinstance(v, torch.Tensor):
        raise CheckpointError(f"{name} is not a tensor ({type(v).__name__})")
    return v.detach()


class EasyDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict`` (a dict with attribute access)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _load_storage_blob(b: bytes) -> Any:
    """``torch.storage._load_from_bytes``, but with ``weights_only=True``."""
    if not isinstance(b, bytes | bytearray):
        raise UnsafePickleError("storage blob is not bytes")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # TypedStorage deprecation noise
        try:
            return torch.load(io.BytesIO(bytes(b)), weights_only=True, map_location="cpu")
        except pickle.UnpicklingError as exc:
            raise UnsafePickleError(f"nested tensor blob refused: {str(exc).splitlines()[0]}") from None


def _rebuild_parameter(data: torch.Tensor, requires_grad: bool, backward_hooks: Any, *_: Any) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise UnsafePickleError("parameter data is not a tensor")
    return data  # plain tensor: we only need the values


_NUMERIC_KINDS = set("biufc")


def _np_dtype(obj: Any, align: Any = False, copy: Any = False) -> np.dtype:
    dt = np.dtype(obj) if isinstance(obj, str) and len(obj) <= 8 else None
    if dt is None or dt.kind not in _NUMERIC_KINDS:
        raise UnsafePickleError(f"numpy dtype {obj!r} is not a plain numeric type")
    return dt


def _np_scalar(dtype: Any, data: Any = None) -> Any:
    if not isinstance(dtype, np.dtype) or dtype.kind not in _NUMERIC_KINDS:
        raise UnsafePickleError("numpy scalar of a non-numeric dtype")
    if isinstance(data, str):
        data = data.encode("latin1")
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise UnsafePickleError("malformed numpy scalar")
    return np.frombuffer(data, dtype=dtype)[0]


def _np_reconstruct(cls: Any, shape: Any, dtype: Any) -> np.ndarray:
    if cls is not np.ndarray:
        raise UnsafePickleError("numpy _reconstruct of something other than ndarray")
    return np.ndarray.__new__(np.ndarray, shape, _np_dtype(dtype) if not isinstance(dtype, np.dtype) else dtype)


def _codecs_encode(s: Any, encoding: str = "utf-8") -> bytes:
    if not isinstance(s, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError("_codecs.encode is allowed only for latin1 byte strings")
    return codecs.encode(s, "latin1")


def _torch_dtypes() -> dict[tuple[str, str], Any]:
    return {("torch", n): getattr(torch, n) for n in dir(torch) if isinstance(getattr(torch, n, None), torch.dtype)}


ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): PersistedModule,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("dnnlib", "EasyDict"): EasyDict,
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage_blob,
    ("numpy", "dtype"): _np_dtype,
    ("numpy.core.multiarray", "scalar"): _np_scalar,
    ("numpy._core.multiarray", "scalar"): _np_scalar,
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("_codecs", "encode"): _codecs_encode,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "set"): set,
    ("__builtin__", "frozenset"): frozenset,
    ("torch", "device"): torch.device,
    **_torch_dtypes(),
}


class SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves only :data:`ALLOWED_GLOBALS`; anything else raises before it is called."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load: the pickle references {module}.{name}, which a weights file never needs "
                "(nothing from the file was executed)") from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refusing to load: the pickle uses persistent ids (not a stylegan2-ada .pkl)")


def safe_unpickle(data: bytes | io.BufferedIOBase) -> Any:
    f = io.BytesIO(data) if isinstance(data, bytes | bytearray) else data
    return SafeUnpickler(f).load()


# ----------------------------------------------------------------------------------------------------------------
# stylegan2-ada-pytorch .pkl


def _plain(v: Any) -> Any:
    """A numpy scalar / one-element array or tensor as the Python number it holds; anything else unchanged."""
    if isinstance(v, np.generic | np.ndarray | torch.Tensor) and np.size(v) == 1 and not isinstance(v, np.str_):
        return v.item()
    return v


def _num(v: Any, what: str, kind: type = int) -> Any:
    """A pickled number (Python, numpy or one-element tensor) as ``kind``; one clear error for anything else."""
    x = _plain(v)
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x) or (kind is int and x != int(x)):
        raise CheckpointError(f"{what} is {_short(v)}, not a number")
    return kind(x)


def _dict_of(v: Any, what: str) -> dict:
    """A pickled kwargs dict (None: empty)."""
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise CheckpointError(f"{what} is {_a(v)}, not a dict")
    return dict(v)


Check = Callable[[torch.Tensor], str | None]  # tensor → problem ("expected 4 dimensions") or None


def _ndim(n: int, lead1: bool = False) -> Check:
    def check(t: torch.Tensor) -> str | None:
        if t.ndim != n:
            return f"expected {n} dimensions"
        return "expected a leading dimension of 1" if lead1 and t.shape[0] != 1 else None
    return check


def _one_element(t: torch.Tensor) -> str | None:
    return None if t.numel() == 1 else "expected 1 element"


# Rank of every NVlabs G_ema tensor, by name (checked before shapes are read to derive the config).
NVLABS_TENSOR_RULES: list[tuple[str, Check]] = [
    (r"mapping\.(fc\d+|embed)\.weight", _ndim(2)),
    (r"mapping\.(fc\d+|embed)\.bias", _ndim(1)),
    (r"mapping\.w_avg", _ndim(1)),
    (r"synthesis\.b\d+\.const", _ndim(3)),
    (r"synthesis\.b\d+\.(conv0|conv1|torgb)\.weight", _ndim(4)),
    (r"synthesis\.b\d+\.(conv0|conv1|torgb)\.affine\.weight", _ndim(2)),
    (r"synthesis\.b\d+\.(conv0|conv1|torgb)\.(affine\.bias|bias)", _ndim(1)),
    (r"synthesis\.b\d+\.(conv0|conv1)\.noise_strength", _one_element),
    (r"synthesis\.b\d+\.(conv0|conv1)\.noise_const", _ndim(2)),
    (r"synthesis\.b\d+(\.conv0|\.conv1)?\.resample_filter", _ndim(2)),
]


def check_tensors(state: dict, rules: list[tuple[str, Check]], name: Callable[[str], str]) -> None:
    """Every entry is a floating-point tensor whose rank fits the first rule matching its key (keys no rule
    matches are left to the shape check against the config). ``name(key)`` is how messages spell a key."""
    for k, t in state.items():
        if not isinstance(k, str):
            raise CheckpointError(f"state key {_short(k)} is not a string")
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"{name(k)} is {_a(t)}, not a tensor")
        if not t.is_floating_point():
            raise CheckpointError(f"{name(k)} has dtype {t.dtype}, not floating point")
        for pattern, check in rules:
            if re.fullmatch(pattern, k):
                problem = check(t)
                if problem:
                    raise CheckpointError(f"{name(k)} has shape {tuple(t.shape)}, {problem}")
                break


def nvlabs_config(g: PersistedModule, state: dict[str, torch.Tensor]) -> GeneratorConfig:
    """Derive our GeneratorConfig from a persisted NVlabs Generator (its attributes, kwargs and shapes). Raises
    CheckpointError (messages without the file name) for anything malformed; the config is not validated here."""
    st = g.state
    kw = _dict_of(st.get("_init_kwargs"), "G_ema._init_kwargs")
    args = st.get("_init_args") or ()
    if not isinstance(args, list | tuple):
        raise CheckpointError(f"G_ema._init_args is {_a(args)}, not a list")
    for i, name in enumerate(["z_dim", "c_dim", "w_dim", "img_resolution", "img_channels",
                              "mapping_kwargs", "synthesis_kwargs"]):
        if i < len(args):
            kw.setdefault(name, args[i])
    mk = _dict_of(kw.get("mapping_kwargs"), "G_ema._init_kwargs.mapping_kwargs")
    sk = _dict_of(kw.get("synthesis_kwargs"), "G_ema._init_kwargs.synthesis_kwargs")
    dims = {k: st.get(k, kw.get(k, default)) for k, default in
            (("z_dim", None), ("c_dim", 0), ("w_dim", None), ("img_resolution", None), ("img_channels", 3))}
    if any(v is None for v in dims.values()):
        raise CheckpointError("G_ema lacks z_dim/w_dim/img_resolution: not a stylegan2-ada-pytorch Generator")
    cfg_kw: dict[str, Any] = {k: _num(v, f"G_ema {k}") for k, v in dims.items()}
    res = cfg_kw["img_resolution"]
    try:
        GeneratorConfig.FIELDS["img_resolution"](res)  # before it bounds the loop below
    except FieldError as exc:
        raise CheckpointError(f"implausible generator config: {exc.within('img_resolution')}") from None
    mapping = g.child("mapping")
    cfg_kw["mapping_layers"] = len([k for k in mapping.children if re.fullmatch(r"fc\d+", k)])
    fc0 = mapping.child("fc0").state
    if "bias_gain" in fc0:
        cfg_kw["mapping_lr_multiplier"] = _num(fc0["bias_gain"], "mapping.fc0.bias_gain", float)
    elif "lr_multiplier" in mk:
        cfg_kw["mapping_lr_multiplier"] = _num(mk["lr_multiplier"], "G_ema mapping_kwargs.lr_multiplier", float)
    for key in ("embed_features", "layer_features", "w_avg_beta"):
        if mk.get(key) is not None:
            cfg_kw[key] = _plain(mk[key])  # type and range: GeneratorConfig.validate()
    arch = sk.get("architecture", g.child(f"synthesis.b{res}").state.get("architecture", "skip"))
    if not (isinstance(arch, str) and arch == "skip"):
        raise CheckpointError(f"synthesis architecture {_short(arch)} is not supported (only config-e/f 'skip')")
    clamp = sk.get("conv_clamp", g.child("synthesis.b4.conv1").state.get("conv_clamp"))
    cfg_kw["conv_clamp"] = None if clamp is None else _num(clamp, "G_ema conv_clamp", float)
    cfg_kw["num_fp16_res"] = _num(sk.get("num_fp16_res", 0), "synthesis_kwargs.num_fp16_res")
    if sk.get("resample_filter") is not None:
        f = sk["resample_filter"]
        if not isinstance(f, list | tuple):
            raise CheckpointError(f"synthesis_kwargs.resample_filter is {_short(f)}, not a list of integers")
        cfg_kw["resample_filter"] = tuple(_num(v, "synthesis_kwargs.resample_filter entry") for v in f)
    channels = {}
    r = 4
    while r <= res:
        key = f"synthesis.b{r}.conv1.weight"
        if key not in state:
            raise CheckpointError(f"G_ema has no {key}: not a skip StyleGAN2 generator of resolution {res}")
        channels[r] = int(state[key].shape[0])
        r *= 2
    base = _num(sk["channel_base"], "synthesis_kwargs.channel_base") if sk.get("channel_base") is not None else None
    cfg_kw["channel_max"], cfg_kw["channel_base"] = _channel_params(channels, base)
    return GeneratorConfig(**cfg_kw)


def _channel_params(channels: dict[int, int], base: int | None = None) -> tuple[int, int]:
    """(channel_max, channel_base) reproducing ``channels`` as min(base // r, max); ``base``: the checkpoint's own
    channel_base if it has one."""
    cmax = max(channels.values())
    if not base or any(min(base // r, cmax) != c for r, c in channels.items()):
        below = [c * r for r, c in channels.items() if c < cmax]
        base = min(below) if below else cmax * max(channels)
    if any(min(base // r, cmax) != c for r, c in channels.items()):
        raise CheckpointError(f"channel counts {channels} do not follow min(base // res, max)")
    return cmax, base


# What a malformed-but-allow-listed pickle can still raise from code that walks it; turned into one line.
_MALFORMED = (TypeError, ValueError, AttributeError, KeyError, IndexError, OverflowError, RuntimeError, RecursionError)


def read_nvlabs_pkl(data: bytes, source: str = "checkpoint") -> tuple[GeneratorConfig, dict[str, torch.Tensor]]:
    """Parse a stylegan2-ada-pytorch pickle without executing it → (config, G_ema state dict)."""
    try:
        obj = safe_unpickle(data)
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, RuntimeError, UnicodeDecodeError, MemoryError, RecursionError) as exc:
        raise CheckpointError(f"{source} is truncated or not a StyleGAN2 pickle ({type(exc).__name__})") from None
    try:
        if not isinstance(obj, dict):
            raise CheckpointError(f"expected a dict with 'G_ema', found {type(obj).__name__}")
        g = obj.get("G_ema", obj.get("G"))
        if not isinstance(g, PersistedModule):
            raise CheckpointError(f"no 'G_ema' network inside (keys: {sorted(map(_short, obj))[:8]})")
        state = g.flat_state()
        check_tensors(state, NVLABS_TENSOR_RULES, str)
        return nvlabs_config(g, state), state
    except UnsafePickleError:
        raise
    except CheckpointError as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    except _MALFORMED as exc:
        raise CheckpointError(f"{source}: G_ema is not a well-formed stylegan2-ada-pytorch Generator "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})") from None


# ----------------------------------------------------------------------------------------------------------------
# rosinality stylegan2-pytorch .pt


def rosinality_to_nvlabs(sd: dict[str, torch.Tensor]) -> tuple[GeneratorConfig, dict[str, torch.Tensor]]:
    """Rename a rosinality ``g_ema`` state dict to NVlabs names and derive the config.

    Mapping (r = 8·2^j):
      style.{i+1}.weight/bias            → mapping.fc{i}.weight/bias        (same equalised-lr convention)
      input.input [1, C, 4, 4]           → synthesis.b4.const [C, 4, 4]
      conv1.*                            → synthesis.b4.conv1.*
      to_rgb1.*                          → synthesis.b4.torgb.*
      convs.{2j}.*, convs.{2j+1}.*       → synthesis.b{r}.conv0.*, synthesis.b{r}.conv1.*
      to_rgbs.{j}.*                      → synthesis.b{r}.torgb.*
      *.conv.weight [1, O, I, k, k]      → *.weight [O, I, k, k]
      *.conv.modulation.weight/bias      → *.affine.weight/bias
      *.noise.weight [1]                 → *.noise_strength []
      *.activate.bias [O]                → *.bias
      to_rgb*.bias [1, 3, 1, 1]          → *.torgb.bias [3]
      noises.noise_{n} [1, 1, r, r]      → the n-th conv's noise_const [r, r] (b4.conv1, b8.conv0, b8.conv1, …)
    The rosinality conv weight scale 1/sqrt(fan_in) is cancelled by demodulation (to ~1e-8 relative).
    """
    if "input.input" not in sd or "conv1.conv.weight" not in sd:
        raise CheckpointError("g_ema is not a rosinality stylegan2 Generator state (no input.input / conv1)")
    n_rgbs = len([k for k in sd if re.fullmatch(r"to_rgbs\.\d+\.conv\.weight", k)])
    res = 4 * 2**n_rgbs
    style_keys = sorted(int(m.group(1)) for k in sd if (m := re.fullmatch(r"style\.(\d+)\.weight", k)))
    if not style_keys:
        raise CheckpointError("g_ema has no mapping layers (style.N.weight)")
    out: dict[str, torch.Tensor] = {}
    for i, n in enumerate(style_keys):
        out[f"mapping.fc{i}.weight"] = sd[f"style.{n}.weight"]
        out[f"mapping.fc{i}.bias"] = sd[f"style.{n}.bias"]
    w_dim = int(sd[f"style.{style_keys[-1]}.weight"].shape[0])
    z_dim = int(sd[f"style.{style_keys[0]}.weight"].shape[1])

    def conv(src: str, dst: str) -> None:
        out[f"{dst}.weight"] = sd[f"{src}.conv.weight"][0]
        out[f"{dst}.affine.weight"] = sd[f"{src}.conv.modulation.weight"]
        out[f"{dst}.affine.bias"] = sd[f"{src}.conv.modulation.bias"]
        out[f"{dst}.noise_strength"] = sd[f"{src}.noise.weight"].reshape([])
        out[f"{dst}.bias"] = sd[f"{src}.activate.bias"]

    def rgb(src: str, dst: str) -> None:
        out[f"{dst}.weight"] = sd[f"{src}.conv.weight"][0]
        out[f"{dst}.affine.weight"] = sd[f"{src}.conv.modulation.weight"]
        out[f"{dst}.affine.bias"] = sd[f"{src}.conv.modulation.bias"]
        out[f"{dst}.bias"] = sd[f"{src}.bias"].reshape(-1)

    try:
        out["synthesis.b4.const"] = sd["input.input"][0]
        conv("conv1", "synthesis.b4.conv1")
        rgb("to_rgb1", "synthesis.b4.torgb")
        conv_names = ["synthesis.b4.conv1"]
        for j in range(n_rgbs):
            r = 8 * 2**j
            conv(f"convs.{2 * j}", f"synthesis.b{r}.conv0")
            conv(f"convs.{2 * j + 1}", f"synthesis.b{r}.conv1")
            rgb(f"to_rgbs.{j}", f"synthesis.b{r}.torgb")
            conv_names += [f"synthesis.b{r}.conv0", f"synthesis.b{r}.conv1"]
        for n, name in enumerate(conv_names):
            key = f"noises.noise_{n}"
            if key in sd:
                out[f"{name}.noise_const"] = sd[key].reshape(sd[key].shape[-2:])
    except KeyError as exc:
        raise CheckpointError(f"rosinality g_ema is missing {exc.args[0]}") from None
    channels = {4: int(out["synthesis.b4.conv1.weight"].shape[0])}
    for j in range(n_rgbs):
        r = 8 * 2**j
        channels[r] = int(out[f"synthesis.b{r}.conv1.weight"].shape[0])
    cmax, base = _channel_params(channels)
    cfg = GeneratorConfig(z_dim=z_dim, w_dim=w_dim, img_resolution=res, mapping_layers=len(style_keys),
                          channel_base=base, channel_max=cmax)
    return cfg, out


# Rank of every rosinality g_ema tensor, by name (checked before it is renamed and reshaped).
ROSINALITY_TENSOR_RULES: list[tuple[str, Check]] = [
    (r"style\.\d+\.weight", _ndim(2)),
    (r"style\.\d+\.bias", _ndim(1)),
    (r"input\.input", _ndim(4, lead1=True)),
    (r"(conv1|convs\.\d+|to_rgb1|to_rgbs\.\d+)\.conv\.weight", _ndim(5, lead1=True)),
    (r"(conv1|convs\.\d+|to_rgb1|to_rgbs\.\d+)\.conv\.modulation\.weight", _ndim(2)),
    (r"(conv1|convs\.\d+|to_rgb1|to_rgbs\.\d+)\.conv\.modulation\.bias", _ndim(1)),
    (r"(conv1|convs\.\d+)\.noise\.weight", _one_element),
    (r"(conv1|convs\.\d+)\.activate\.bias", _ndim(1)),
    (r"(to_rgb1|to_rgbs\.\d+)\.bias", _ndim(4)),
    (r"noises\.noise_\d+", _ndim(4, lead1=True)),
]


# ----------------------------------------------------------------------------------------------------------------
# torch.save checkpoints: rosinality .pt and e4e / pSp .pt share one reader


# Globals a training checkpoint may hold besides tensors and containers: rosinality's ``args`` Namespace, and
# numeric numpy scalars (a loss or step a training script computed with numpy and saved beside the weights, which
# torch's weights_only loader refuses by default), rebuilt by our numeric-only constructors.
TORCH_SAFE_GLOBALS: list[Any] = [
    argparse.Namespace,
    (_np_scalar, "numpy.core.multiarray.scalar"),
    (_np_scalar, "numpy._core.multiarray.scalar"),
    (_np_dtype, "numpy.dtype"),
    *sorted({type(np.dtype(c)) for c in "?bBhHiIlLqQefdgFDG"}, key=str),  # dtype classes, for their __setstate__
]


def read_torch_checkpoint(path: Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` of a rosinality / e4e / pSp ``.pt`` → its top-level dict.

    Only tensors, containers, plain values, ``argparse.Namespace`` (rosinality's ``args``) and numeric numpy
    scalars are rebuilt; a file that names any other global is refused before anything from it runs."""
    try:
        with torch.serialization.safe_globals(TORCH_SAFE_GLOBALS):
            ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "refused"
        raise UnsafePickleError(f"refusing to load {path.name}: {first}") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError, TypeError,
            AttributeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path.name} is truncated or not a torch checkpoint ({type(exc).__name__})") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path.name}: expected a dict of weights, found {type(ckpt).__name__}")
    return ckpt


def _state_dict(ckpt: dict[str, Any]) -> dict[str, Any]:
    sd = ckpt.get("state_dict")
    return sd if isinstance(sd, dict) else {}


def _prefixed(sd: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix):]: v for k, v in sd.items() if isinstance(k, str) and k.startswith(prefix)}


def _opts(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The training options an e4e / pSp checkpoint carries (``vars(opts)``: a plain dict)."""
    opts = ckpt.get("opts")
    if isinstance(opts, argparse.Namespace):
        opts = vars(opts)
    return dict(opts) if isinstance(opts, dict) else {}


def is_encoder_checkpoint(ckpt: dict[str, Any]) -> bool:
    """True for an e4e / pSp training checkpoint (``state_dict`` with ``encoder.*`` weights)."""
    return any(isinstance(k, str) and k.startswith("encoder.") for k in _state_dict(ckpt))


def _mean_latent(latent_avg: Any, w_dim: int) -> torch.Tensor | None:
    """A checkpoint's ``latent_avg`` ([w_dim], or e4e/pSp's [n_styles, w_dim] of repeated rows) → [w_dim]."""
    if not isinstance(latent_avg, torch.Tensor) or not latent_avg.is_floating_point() \
            or latent_avg.numel() < w_dim or latent_avg.numel() % w_dim:
        return None
    return latent_avg.detach().reshape(-1, w_dim).to(torch.float32).mean(0)


def generator_from_torch(ckpt: dict[str, Any], source: str
                         ) -> tuple[GeneratorConfig, dict[str, torch.Tensor], torch.Tensor | None, str]:
    """The StyleGAN2 generator inside a rosinality ``.pt`` (``g_ema``) or an e4e / pSp ``.pt`` (``decoder.*`` in
    ``state_dict``, rosinality names) → (config, NVlabs-named state, average w [w_dim] or None, format name)."""
    if "g_ema" in ckpt:
        sd, fmt = ckpt["g_ema"], "rosinality pt"
    else:
        sd = _prefixed(_state_dict(ckpt), "decoder.")
        if not sd:
            keys = sorted(map(str, ckpt))[:8]
            raise CheckpointError(f"{source}: no 'g_ema' entry and no 'decoder.*' weights (found {keys}); not a "
                                  "rosinality, e4e or pSp checkpoint")
        fmt = f"{encoder_format_name(ckpt)} pt (its StyleGAN2 decoder)"
    if not isinstance(sd, dict):
        raise CheckpointError(f"{source}: the generator entry is {_a(sd)}, not a state dict")
    try:
        check_tensors(sd, ROSINALITY_TENSOR_RULES, lambda k: f"g_ema[{k}]")
        cfg, state = rosinality_to_nvlabs(sd)
    except CheckpointError as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    except _MALFORMED as exc:
        raise CheckpointError(f"{source}: the generator is not a well-formed rosinality Generator state "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})") from None
    return cfg, state, _mean_latent(ckpt.get("latent_avg"), cfg.w_dim), fmt


def read_rosinality_pt(path: Path) -> tuple[GeneratorConfig, dict[str, torch.Tensor], torch.Tensor | None]:
    """(config, NVlabs-named state, average w or None) of the generator in a rosinality, e4e or pSp ``.pt``."""
    cfg, state, latent_avg, _ = generator_from_torch(read_torch_checkpoint(path), path.name)
    return cfg, state, latent_avg


# ----------------------------------------------------------------------------------------------------------------
# e4e / pSp encoders

# opts["encoder_type"] → our kind. pSp's BackboneEncoderUsingLastLayerIntoW(Plus) are not supported.
ENCODER_TYPES = {"Encoder4Editing": "e4e", "GradualStyleEncoder": "psp"}


def encoder_format_name(ckpt: dict[str, Any]) -> str:
    kind = ENCODER_TYPES.get(str(_opts(ckpt).get("encoder_type")))
    return {"e4e": "e4e", "psp": "pSp"}.get(kind or "", "e4e/pSp")


def _count(sd: dict[str, Any], pattern: str) -> list[int]:
    return sorted(int(m.group(1)) for k in sd if (m := re.fullmatch(pattern, k)))


def encoder_config_from_state(sd: dict[str, torch.Tensor], kind: str, start_from_latent_avg: bool,
                              source: str) -> StyleEncoderConfig:
    """Derive a :class:`StyleEncoderConfig` from the shapes of an encoder state dict (keys without ``encoder.``).

    Stages are found from the units' shortcut convolutions (a stage starts where the width changes; the first unit
    of stage 1 keeps its width), the input size from the number of stride-2 convs of the first map2style head
    (log2(S/16)), and the coarse / middle / fine split from the heads' conv counts (c, c+1, c+2)."""
    try:
        stem = sd["input_layer.0.weight"]
        units = _count(sd, r"body\.(\d+)\.res_layer\.1\.weight")
        heads = _count(sd, r"styles\.(\d+)\.linear\.weight")
        if not units or units != list(range(len(units))) or not heads or heads != list(range(len(heads))):
            raise KeyError("body.N / styles.N")
        widths: list[int] = []
        counts: list[int] = []
        for i in units:
            depth, cin = (int(s) for s in sd[f"body.{i}.res_layer.1.weight"].shape[:2])
            if i == 0 or f"body.{i}.shortcut_layer.0.weight" in sd:
                widths.append(depth)
                counts.append(0)
            elif depth != cin:
                raise CheckpointError(f"{source}: unit body.{i} changes width without a shortcut conv")
            counts[-1] += 1
        se = "body.0.res_layer.5.fc1.weight" in sd
        se_reduction = widths[0] // int(sd["body.0.res_layer.5.fc1.weight"].shape[0]) if se else 16
        w_dim = int(sd["styles.0.linear.weight"].shape[0])
        convs = [len(_count(sd, rf"styles\.{k}\.convs\.(\d+)\.weight")) for k in heads]
    except KeyError as exc:
        raise CheckpointError(f"{source}: the encoder weights lack {exc.args[0]}; not an e4e / pSp IR-SE encoder"
                              ) from None
    if len(widths) != 4:
        raise CheckpointError(f"{source}: the encoder backbone has {len(widths)} stages; e4e / pSp (IR-SE-50) has 4")
    if int(stem.shape[1]) != 3:
        raise CheckpointError(f"{source}: the encoder takes {int(stem.shape[1])}-channel input (a pSp sketch / "
                              "segmentation model, or ReStyle); only RGB face encoders (3 channels) can encode video")
    c = convs[0]
    coarse = next((i for i, n in enumerate(convs) if n != c), len(convs))
    middle = next((i for i, n in enumerate(convs) if i >= coarse and n != c + 1), len(convs))
    if c < 1 or any(n != c + 2 for n in convs[middle:]):
        raise CheckpointError(f"{source}: map2style heads with {convs} convs do not follow the coarse/middle/fine "
                              "pattern of e4e / pSp")
    try:
        return StyleEncoderConfig(kind=kind, img_size=16 * 2**c, in_channels=3, widths=tuple(widths),
                                  units=tuple(counts), se=se, se_reduction=se_reduction, n_styles=len(heads),
                                  w_dim=w_dim, coarse_ind=coarse, middle_ind=middle,
                                  start_from_latent_avg=start_from_latent_avg)
    except ValueError as exc:
        raise CheckpointError(f"{source}: unsupported encoder shape ({exc})") from None


def encoder_from_torch(ckpt: dict[str, Any], source: str, kind: str | None = None) -> tuple[StyleEncoder, dict]:
    """The e4e / pSp encoder of a checkpoint dict → (StyleEncoder in eval mode, provenance).

    ``kind`` ("e4e" / "psp") is needed only when the file's ``opts`` lack ``encoder_type`` (the two have the same
    parameter names; their forward passes differ). ``latent_avg`` is added to the output when ``opts`` say
    ``start_from_latent_avg`` (or, without opts, when the file carries a ``latent_avg``)."""
    sd = _prefixed(_state_dict(ckpt), "encoder.")
    if not sd:
        keys = sorted(map(str, ckpt))[:8]
        raise CheckpointError(f"{source}: no 'state_dict' with 'encoder.*' weights (found {keys}); not an e4e or pSp "
                              "checkpoint")
    opts = _opts(ckpt)
    etype = opts.get("encoder_type")
    if etype is not None and etype not in ENCODER_TYPES:
        raise CheckpointError(f"{source}: encoder_type {etype!r} is not supported (only Encoder4Editing and "
                              "GradualStyleEncoder, the W+ encoders of e4e and pSp)")
    found = ENCODER_TYPES.get(str(etype)) if etype is not None else None
    if kind is not None and kind not in KINDS:
        raise CheckpointError(f"unknown encoder kind {kind!r} (choose from {', '.join(KINDS)})")
    if found is not None and kind is not None and kind != found:
        raise CheckpointError(f"{source} is a {found} checkpoint (opts.encoder_type {etype}), not {kind}")
    kind = found or kind
    if kind is None:
        raise CheckpointError(f"{source} does not say whether it is e4e or pSp (no opts.encoder_type); pass "
                              "--encoder-kind e4e or --encoder-kind psp")
    latent_avg = ckpt.get("latent_avg")
    use_avg = opts.get("start_from_latent_avg")
    use_avg = latent_avg is not None if use_avg is None else bool(use_avg)
    if not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{source}: the encoder state holds non-tensor values")
    cfg = encoder_config_from_state(sd, kind, use_avg, source)
    enc = StyleEncoder(cfg)
    state = {"encoder." + k: (v.to(torch.float32) if v.is_floating_point() else v) for k, v in sd.items()}
    if use_avg:
        if not isinstance(latent_avg, torch.Tensor) or latent_avg.numel() % cfg.w_dim or \
                latent_avg.numel() // cfg.w_dim not in (1, cfg.n_styles):
            shape = tuple(latent_avg.shape) if isinstance(latent_avg, torch.Tensor) else None
            raise CheckpointError(f"{source}: trained with start_from_latent_avg, but latent_avg is {shape} "
                                  f"(need [{cfg.w_dim}] or [{cfg.n_styles}, {cfg.w_dim}])")
        la = latent_avg.detach().to(torch.float32).reshape(-1, cfg.w_dim)
        state["latent_avg"] = la.expand(cfg.n_styles, cfg.w_dim).clone()
    else:
        state["latent_avg"] = torch.zeros(cfg.n_styles, cfg.w_dim)
    load_state_checked(enc, state, f"{source} encoder")
    enc.eval().requires_grad_(False)
    kept = {k: opts[k] for k in ("encoder_type", "dataset_type", "stylegan_size", "output_size",
                                 "start_from_latent_avg", "input_nc") if k in opts and _jsonable(opts[k])}
    prov = {"encoder_kind": kind, "encoder_format": f"{'e4e' if kind == 'e4e' else 'pSp'} pt",
            "encoder_opts": kept}
    return enc, prov


def _jsonable(v: Any) -> bool:
    return v is None or isinstance(v, bool | int | float | str)


def import_encoder(path: str | Path, kind: str | None = None) -> tuple[StyleEncoder, dict[str, Any]]:
    """Read an e4e / pSp ``.pt`` → (StyleEncoder in eval mode, provenance). Nothing from the file is executed."""
    path = _existing_file(path)
    if sniff_format(path) != "torch":
        raise CheckpointError(f"{path.name} is not an e4e / pSp checkpoint (expected a torch .pt file)")
    enc, prov = encoder_from_torch(read_torch_checkpoint(path), path.name, kind)
    prov.update(encoder_source_file=path.name, encoder_source_sha256=file_sha256(path))
    return enc, prov


def generator_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float | None:
    """Largest relative difference (max |a − b| / max |b| per tensor) between two generators' weights in NVlabs
    names, over the tensors both have (noise buffers, filters and w_avg excepted); None when shapes differ."""
    worst = 0.0
    for k, vb in b.items():
        if k not in a or k.endswith(("noise_const", "resample_filter", "w_avg")):
            continue
        va = a[k]
        if tuple(va.shape) != tuple(vb.shape):
            return None
        scale = float(vb.abs().max()) or 1.0
        worst = max(worst, float((va.float() - vb.float()).abs().max()) / scale)
    return worst


# ----------------------------------------------------------------------------------------------------------------
# W-space directions (InterFaceGAN boundaries)

_DIRECTION_AFFIXES = (re.compile(r"^(stylegan2?|pggan)_[a-z0-9]+_"), re.compile(r"(_w)?_boundary$"))


def direction_name(stem: str) -> str:
    """Edit name of a direction file: InterFaceGAN's ``stylegan_ffhq_age_w_boundary`` → ``age``; other names
    are kept (characters outside [A-Za-z0-9_.-] become ``_``)."""
    name = stem
    for pat in _DIRECTION_AFFIXES:
        name = pat.sub("", name)
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name or stem)


def read_directions(folder: str | Path, num_ws: int, w_dim: int, strength_range: tuple[float, float] = (-5.0, 5.0)
                    ) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]]:
    """W directions from a folder of InterFaceGAN-style ``.npy`` boundaries (or e4e's ``.pt`` direction tensors)
    → (edit specs for ``Bundle.edits``, tensors for ``Bundle.extra``).

    Shapes accepted: [w_dim], [1, w_dim] (one direction for every W+ entry), [num_ws, w_dim], [1, num_ws, w_dim] or
    [1, num_ws·w_dim] (per entry). The file name (affixes stripped) is the edit name. ``.npy`` is read with
    ``allow_pickle=False`` and ``.pt`` with ``weights_only=True``: nothing is executed. Z-space boundaries
    (``*_z_boundary``) are refused: these edits move W."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"--directions {folder}: not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix in (".npy", ".pt") and p.is_file())
    if not files:
        raise CheckpointError(f"{folder} holds no .npy or .pt direction files")
    specs: list[dict[str, Any]] = []
    tensors: dict[str, torch.Tensor] = {}
    for p in files:
        if p.stem.endswith("_z_boundary"):
            raise CheckpointError(f"{p.name} is a Z-space boundary; stylestream edits W (use the *_w_boundary file)")
        t = _read_direction(p)
        n = t.numel()
        if n == w_dim:
            d = t.reshape(w_dim)
        elif n == num_ws * w_dim and t.ndim >= 2:
            d = t.reshape(num_ws, w_dim)
        else:
            raise CheckpointError(f"{p.name}: direction of shape {tuple(t.shape)} does not fit this generator "
                                  f"([{w_dim}], [1, {w_dim}] or [{num_ws}, {w_dim}])")
        if not bool(torch.isfinite(d).all()) or float(d.abs().max()) == 0.0:
            raise CheckpointError(f"{p.name}: direction is zero or not finite")
        name = direction_name(p.stem)
        if any(s["name"] == name for s in specs):
            raise CheckpointError(f"two direction files map to the edit name {name!r} ({p.name})")
        specs.append(EditSpec(name=name, kind="w_direction", description=f"W direction imported from {p.name}",
                              range=strength_range,
                              extra={"route": "imported", "source_file": p.name,
                                     "norm": round(float(d.norm()), 6)}).to_dict())
        tensors[tensor_key(name)] = d.to(torch.float32).contiguous()
    return specs, tensors


def _read_direction(p: Path) -> torch.Tensor:
    if p.suffix == ".npy":
        try:
            a = np.load(p, allow_pickle=False)
        except ValueError as exc:
            raise CheckpointError(f"{p.name}: refused ({str(exc).splitlines()[0]}); a direction is a plain array"
                                  ) from None
        except (OSError, EOFError) as exc:
            raise CheckpointError(f"{p.name} is not a readable .npy file ({type(exc).__name__})") from None
        if not isinstance(a, np.ndarray) or a.dtype.kind not in "fiu":
            raise CheckpointError(f"{p.name}: expected a numeric array")
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    try:
        t = torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafePickleError(f"refusing to load {p.name}: {str(exc).strip().splitlines()[0]}") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as exc:
        raise CheckpointError(f"{p.name} is not a readable torch file ({type(exc).__name__})") from None
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        raise CheckpointError(f"{p.name} holds {type(t).__name__}, not a direction tensor")
    return t.detach().to(torch.float32)


# ----------------------------------------------------------------------------------------------------------------
# Front door

TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def sniff_format(path: Path) -> str:
    """'nvlabs-pkl', 'torch' (zip or legacy torch.save) or 'tflite', from the file's bytes."""
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        raise CheckpointError(f"{path} is empty (0 bytes)")
    if head[:4] == b"PK\x03\x04":
        return "torch"
    if head[4:8] == b"TFL3":
        return "tflite"
    if head[:1] == b"\x80":
        # A legacy torch.save file starts with a pickled magic number; a stylegan2-ada .pkl with a dict.
        try:
            with open(path, "rb") as f:
                first = SafeUnpickler(f).load() if head[2:3] == b"\x8a" else None
        except Exception:
            first = None
        return "torch" if first == TORCH_LEGACY_MAGIC else "nvlabs-pkl"
    raise CheckpointError(f"{path} is not a StyleGAN2 checkpoint (.pkl or .pt): unrecognised file header")


def _existing_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; expected a .pkl or .pt file")
    regular_file(path, CheckpointError, missing=f"checkpoint not found: {path}")
    return path


def _build_generator(cfg: GeneratorConfig, state: dict[str, torch.Tensor], latent_avg: torch.Tensor | None,
                     from_torch: bool, source: str) -> tuple[Generator, str]:
    """Our Generator (eval mode) from a converted state; returns it and where its w_avg came from. The config, every
    tensor's shape (against the config, on the meta device) and finiteness are checked before it is allocated."""
    try:
        cfg.validate()
    except FieldError as exc:
        raise CheckpointError(f"{source}: implausible generator config: {exc}") from None
    try:
        expected = module_shapes(lambda: Generator(cfg)) or {}  # the shapes the config implies, without allocating
    except (ValueError, RuntimeError, AssertionError) as exc:
        raise CheckpointError(f"{source}: implausible generator config ({str(exc).splitlines()[0][:200]})") from None
    # Buffers that are pure functions of the config may be absent (e.g. rosinality has no resample filters).
    derived = [k for k in expected if k not in state and (
        k.endswith("resample_filter") or (from_torch and (k.endswith("noise_const") or k == "mapping.w_avg")))]
    what = f"{source} generator"
    check_state_shapes(expected, {**{k: tuple(v.shape) for k, v in state.items()}, **{k: expected[k] for k in derived}},
                       what, CheckpointError)
    bad = first_non_finite({**state, **({"latent_avg": latent_avg} if latent_avg is not None else {})})
    if bad is not None:
        raise CheckpointError(f"{source}: {non_finite_message(*bad)}")
    g = Generator(cfg)  # every check passed: now allocate
    own = g.state_dict()
    for k in derived:
        state[k] = own[k]  # (mapping.w_avg: zeros until set below)
    load_state_checked(g, {k: v.to(torch.float32) for k, v in state.items()}, what, CheckpointError)
    w_avg_source = "checkpoint"
    if from_torch:
        if latent_avg is not None:
            g.mapping.w_avg.copy_(latent_avg)
        else:
            g.mapping.w_avg.copy_(estimate_w_avg(g, n=4096))
            w_avg_source = "estimated from 4096 samples (checkpoint has no latent_avg)"
    g.eval().requires_grad_(False)
    if not math.isfinite(float(g.mapping.w_avg.sum())):
        raise CheckpointError(f"{source}: w_avg is not finite")
    return g, w_avg_source


def _read_generator(path: Path, fmt: str, ckpt: dict[str, Any] | None
                    ) -> tuple[Generator, dict[str, Any], dict[str, torch.Tensor]]:
    """(generator, provenance, its converted state) of a .pkl or an already-read torch checkpoint dict."""
    if fmt == "tflite":
        raise CheckpointError(f"{path.name} is a TFLite model, not a StyleGAN2 generator")
    if fmt == "nvlabs-pkl":
        cfg, state = read_nvlabs_pkl(path.read_bytes(), path.name)
        latent_avg, source_format = None, "stylegan2-ada-pytorch pkl"
    else:
        cfg, state, latent_avg, source_format = generator_from_torch(ckpt or read_torch_checkpoint(path), path.name)
    g, w_avg_source = _build_generator(cfg, state, latent_avg, fmt == "torch", path.name)
    prov = {"source_file": path.name, "source_sha256": file_sha256(path), "source_format": source_format,
            "w_avg": w_avg_source}
    return g, prov, state


def import_generator(path: str | Path) -> tuple[Generator, dict[str, Any]]:
    """Read a foreign generator checkpoint (NVlabs .pkl, rosinality .pt, or the decoder inside an e4e / pSp .pt)
    → (our Generator in eval mode, provenance dict)."""
    path = _existing_file(path)
    g, prov, _ = _read_generator(path, sniff_format(path), None)
    return g, prov


def import_bundle(checkpoint: str | Path, encoder_weights: str | Path | None = None,
                  directions: str | Path | None = None, encoder_kind: str | None = None,
                  vit_encoder: str | None = None, name: str | None = None) -> Bundle:
    """One bundle from official files, without training (``stylestream import-weights``).

    checkpoint: the generator — an NVlabs ``.pkl``, a rosinality ``.pt``, or an e4e / pSp ``.pt`` (its decoder;
        its encoder then becomes the bundle's key-frame encoder too, unless ``encoder_weights`` names another file).
    encoder_weights: an e4e / pSp ``.pt`` whose encoder becomes the key-frame encoder (``Bundle.fren``).
    directions: a folder of W directions (:func:`read_directions`) stored as ``w_direction`` edits.
    encoder_kind: "e4e" / "psp" for encoder files whose opts do not say.
    vit_encoder: a ViT preset for *untrained* FrEN/ViEN (only without an e4e / pSp encoder).
    The bundle is returned, not written; its provenance says where every part came from."""
    path = _existing_file(checkpoint)
    fmt = sniff_format(path)
    ckpt = read_torch_checkpoint(path) if fmt == "torch" else None
    g, prov, g_state = _read_generator(path, fmt, ckpt)
    enc: StyleEncoder | None = None
    enc_ckpt: dict[str, Any] | None = None
    if encoder_weights is not None:
        epath = _existing_file(encoder_weights)
        if sniff_format(epath) != "torch":
            raise CheckpointError(f"--encoder-weights {epath.name} is not an e4e / pSp checkpoint (expected a .pt)")
        enc_ckpt = read_torch_checkpoint(epath)
        enc, eprov = encoder_from_torch(enc_ckpt, epath.name, encoder_kind)
        eprov.update(encoder_source_file=epath.name, encoder_source_sha256=file_sha256(epath))
    elif ckpt is not None and is_encoder_checkpoint(ckpt):
        enc, eprov = encoder_from_torch(ckpt, path.name, encoder_kind)
        eprov.update(encoder_source_file=path.name, encoder_source_sha256=prov["source_sha256"])
    elif encoder_kind is not None:
        raise CheckpointError("--encoder-kind applies to an e4e / pSp checkpoint, and none was given")
    if enc is not None:
        layout = g.layout
        if (enc.cfg.n_styles, enc.cfg.w_dim) != (layout.num_ws, layout.w_dim):
            raise CheckpointError(f"the encoder outputs {enc.cfg.n_styles} W+ entries of {enc.cfg.w_dim}, but the "
                                  f"generator ({g.img_resolution}²) takes {layout.num_ws} of {layout.w_dim}")
        if enc_ckpt is not None and _prefixed(_state_dict(enc_ckpt), "decoder."):
            try:
                _, dstate, _, _ = generator_from_torch(enc_ckpt, eprov["encoder_source_file"])
                diff = generator_difference(dstate, g_state)
            except CheckpointError:
                diff = None
            eprov["encoder_decoder_vs_generator"] = (
                "different architecture" if diff is None else "identical weights" if diff == 0 else
                f"max relative weight difference {diff:.3g}")
        prov.update(eprov)
    fren = vien = None
    if vit_encoder:
        if enc is not None:
            raise CheckpointError("--encoder adds untrained ViT encoders; this bundle's key-frame encoder is the "
                                  f"{enc.kind} one (leave --encoder out)")
        if vit_encoder not in ENCODER_PRESETS:
            raise CheckpointError(f"unknown encoder preset {vit_encoder!r} (choose from {', '.join(ENCODER_PRESETS)})")
        fren = FrameEncoder(ENCODER_PRESETS[vit_encoder], g.layout)
        vien = VideoEncoder(ENCODER_PRESETS[vit_encoder], g.layout)
        fren.w_avg.copy_(g.mapping.w_avg)
        vien.init_from_frame_encoder(fren)
        for m in (fren, vien):
            m.eval().requires_grad_(False)
    edits: list[dict[str, Any]] = []
    extra: dict[str, torch.Tensor] = {}
    if directions is not None:
        edits, extra = read_directions(directions, g.num_ws, g.w_dim)
        prov["directions"] = {"folder": Path(directions).name, "files": [e["extra"]["source_file"] for e in edits]}
    prov["made_by"] = "stylestream import-weights"
    return Bundle(generator=g, fren=enc if enc is not None else fren, vien=vien,
                  trained={"generator": True, "fren": enc is not None, "vien": False}, edits=edits, extra=extra,
                  provenance=prov, name=name or path.stem)


def read_tflite(path: str | Path) -> Any:
    """Read a ``.tflite`` flatbuffer safely (parsed by hand, nothing executed) → ``models.tflite.TfliteGraph``."""
    return read_tflite_file(path)
