"""Bundles: stylestream's own checkpoint format.

A bundle is a folder::

    bundle.json            format name + version, every model config, the preprocessing contract,
                           which parts are trained, edits, provenance
    generator.safetensors  Generator state (NVlabs parameter names)
    fren.safetensors       key-frame encoder state: the ViT FrameEncoder, or an e4e / pSp StyleEncoder
                           (absent when the bundle has none)
    vien.safetensors       VideoEncoder state (absent when the bundle has no ViEN)
    extra.safetensors      named tensors used by edits etc. (absent when empty)

Format versions (both are read; bundles are written as the newest):
1 — ViT encoders only.
2 — the key-frame encoder (``encoders.fren``, weights in fren.safetensors) may be e4e / pSp: its entry then carries
    ``"kind": "e4e" | "psp"`` and a :class:`models.e4e.StyleEncoderConfig`. An entry without ``kind`` is a ViT
    config exactly as in version 1, so version-1 bundles need no conversion and ViT bundles keep their hash.

No pickles: JSON + safetensors only. A bundle is untrusted input, so :func:`check_bundle` checks it before
anything is allocated from it: bundle.json must be a regular file of at most 4 MiB nested at most 64 deep; every
top-level section has a checker in :data:`SECTIONS` (every config field: type, range, powers of two, sane maxima,
relations; edits against the generator and the shapes of their tensors); every network in :data:`PARTS` is built on
the meta device (no memory) and the shapes it implies are compared with its weights file's safetensors header, read
without loading a tensor. Only then :func:`load_bundle` allocates and loads, and refuses NaN/Inf weights. Every
file must be a regular file (a FIFO would block forever). Each failure is a :class:`BundleError` with one line
naming the file, the field and the problem. A new kind of network registers a :class:`Section` for its config and
a :class:`Part` for its weights.

Saving writes a temporary sibling folder and renames it into place, so a crash never leaves a half-written bundle.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from models.e4e import KINDS as STYLE_ENCODER_KINDS
from models.e4e import StyleEncoder, StyleEncoderConfig
from models.editing import EditSpec, check_edit_list
from models.errors import BundleError
from models.latents import WPlusLayout, style_layers
from models.stylegan2 import GENERATOR_PRESETS, MAX_DIM, Generator, GeneratorConfig
from models.validation import (
    FLOAT_DTYPES,
    Bool,
    FieldError,
    Int,
    JSONObject,
    Rule,
    Str,
    TensorInfo,
    check_fields,
    check_value,
    first_non_finite,
    module_shapes,
    non_finite_message,
    read_json_limited,
    read_safetensors_header,
    regular_file,
    show,
)
from models.vit_encoder import ENCODER_PRESETS, FrameEncoder, VideoEncoder, ViTConfig

FORMAT_NAME = "stylestream-bundle"
FORMAT_VERSION = 2  # written by save(); 1 and 2 are read (see the module docstring)
# The built-in default bundle ships inside the package (package data), so an installed wheel has it too.
DEFAULT_BUNDLE = Path(str(importlib.resources.files("models").joinpath("bundles", "default")))
MANIFEST = "bundle.json"
EXTRA = "extra.safetensors"
MAX_MANIFEST_BYTES = 4 << 20  # the default bundle's bundle.json (14 edits with provenance) is 29 KB
MAX_MANIFEST_DEPTH = 64  # JSON nesting; the default bundle's is 7


@dataclass
class Bundle:
    """Generator + encoders + edits + the preprocessing contract they were trained with."""

    generator: Generator
    fren: FrameEncoder | StyleEncoder | None = None  # key-frame encoder: ViT FrEN or e4e / pSp (same call)
    vien: VideoEncoder | None = None
    trained: dict[str, bool] = field(default_factory=dict)  # {"generator": bool, "fren": bool, "vien": bool}
    edits: list[dict[str, Any]] = field(default_factory=list)  # edit specs (models/editing.py); tensors in extra
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # named tensors (edit directions, …)
    provenance: dict[str, Any] = field(default_factory=dict)  # how it was made: command, source file, date
    name: str = "bundle"  # human-readable name

    @property
    def crop_size(self) -> int:
        """Side of the aligned face crop the encoders expect (the generator's resolution without encoders)."""
        enc = self.fren or self.vien
        return enc.cfg.img_size if enc is not None else self.generator.img_resolution

    def preprocess(self) -> dict[str, Any]:
        """The preprocessing contract every consumer of this bundle must follow."""
        return preprocess_contract(self.generator.cfg, self.crop_size)

    def to(self, device: torch.device | str) -> Bundle:
        for m in self.modules().values():
            m.to(device)
        self.extra = {k: v.to(device) for k, v in self.extra.items()}
        return self

    def modules(self) -> dict[str, nn.Module]:
        out: dict[str, nn.Module] = {"generator": self.generator}
        if self.fren is not None:
            out["fren"] = self.fren
        if self.vien is not None:
            out["vien"] = self.vien
        return out

    def manifest(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "generator": self.generator.cfg.to_dict(),
            "encoders": {
                "fren": key_encoder_manifest(self.fren),
                "vien": self.vien.cfg.to_dict() if self.vien is not None else None,
            },
            "preprocess": self.preprocess(),
            "trained": {k: bool(self.trained.get(k, False)) for k in ("generator", "fren", "vien")},
            "edits": self.edits,
            "provenance": self.provenance,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the bundle folder atomically. An existing *bundle* at ``path`` is replaced (files it holds besides
        bundle.json and *.safetensors, e.g. a README, are kept); anything else there is refused (we never delete a
        folder that is not ours)."""
        path = Path(path)
        if path.exists() and (not path.is_dir() or (any(path.iterdir()) and not (path / MANIFEST).exists())):
            raise BundleError(f"refusing to overwrite {path}: it exists and is not a bundle folder")
        parent = path.parent if str(path.parent) else Path(".")
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BundleError(f"cannot create {parent}: {exc.strerror}") from None
        tmp = parent / f".{path.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir()
            for name, module in self.modules().items():
                state = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
                save_file(state, str(tmp / f"{name}.safetensors"), metadata={"format": FORMAT_NAME})
            if self.extra:
                save_file({k: v.detach().to("cpu").contiguous() for k, v in self.extra.items()},
                          str(tmp / "extra.safetensors"), metadata={"format": FORMAT_NAME})
            (tmp / MANIFEST).write_text(json.dumps(self.manifest(), indent=2) + "\n")
            if path.exists():
                # Keep what we do not manage (a README, notes) when replacing a bundle.
                for item in path.iterdir():
                    if item.name == MANIFEST or item.suffix == ".safetensors" or (tmp / item.name).exists():
                        continue
                    if item.is_dir():
                        shutil.copytree(item, tmp / item.name)
                    else:
                        shutil.copy2(item, tmp / item.name)
            swap_dir_into_place(tmp, path)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise BundleError(f"cannot write bundle {path}: {exc.strerror or exc}") from None
        return path


def preprocess_contract(gcfg: GeneratorConfig, crop_size: int) -> dict[str, Any]:
    """The preprocessing contract of a generator config and an encoder input size (``Bundle.preprocess``)."""
    layout = gcfg.layout()
    return {
        "crop_size": crop_size,  # encoder input side, pixels
        "alignment": "ffhq",  # FFHQ quad from eye centres and mouth corners (realtime/align.py)
        "normalisation": "rgb, [-1, 1]",  # (pixel / 127.5) − 1, channels R, G, B
        "output_resolution": gcfg.img_resolution,
        "num_ws": layout.num_ws,
        "w_dim": layout.w_dim,
        "coarse_resolution": layout.coarse_resolution,
        "num_coarse": layout.num_coarse,
    }


def swap_dir_into_place(tmp: Path, path: Path) -> None:
    """Replace ``path`` (if any) by the finished folder ``tmp`` with two renames; the old folder is removed after.
    Raises OSError; the caller cleans ``tmp`` up."""
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(path)


def _read_manifest(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise BundleError(f"bundle not found: {path}")
    if not path.is_dir():
        raise BundleError(f"{path} is not a bundle folder (a bundle is a directory with {MANIFEST}; "
                          "convert .pkl/.pt files with `stylestream import-weights`)")
    mf = path / MANIFEST
    if not mf.exists():
        raise BundleError(f"{path} is not a bundle: it has no {MANIFEST}")
    manifest = read_json_limited(mf, BundleError, MAX_MANIFEST_BYTES, MAX_MANIFEST_DEPTH)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise BundleError(f"{mf} is not a stylestream bundle manifest")
    version = manifest.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1 or version > FORMAT_VERSION:
        raise BundleError(f"{mf}: bundle format version {show(version)} is not supported by this stylestream "
                          f"(supports 1…{FORMAT_VERSION}); upgrade stylestream")
    return manifest


# ------------------------------------------------------------------------------------------ checks before loading


@dataclass
class Checked:
    """A bundle whose bundle.json and weight-file headers passed every check; no tensor has been loaded yet."""

    path: Path  # the bundle folder
    manifest: dict[str, Any]  # bundle.json as parsed
    configs: dict[str, Any] = field(default_factory=dict)  # what the sections parsed: "generator", "fren", "vien", …
    edits: list[EditSpec] = field(default_factory=list)  # the checked edit specs
    headers: dict[str, dict[str, TensorInfo] | None] = field(default_factory=dict)  # file → checked header

    def header(self, file: str, missing: str | None = None) -> dict[str, TensorInfo] | None:
        """Checked safetensors header of a file in the bundle ({name: TensorInfo}); None when the file does not
        exist and ``missing`` (the message for an absent required file) is None."""
        if file not in self.headers:
            p = self.path / file
            if missing is None and not os.path.lexists(p):
                self.headers[file] = None
            else:
                self.headers[file] = read_safetensors_header(p, BundleError, missing)
        return self.headers[file]

    def layout(self) -> WPlusLayout:
        return self.configs["generator"].layout()

    @property
    def crop_size(self) -> int:
        enc = self.configs.get("fren") or self.configs.get("vien")
        return enc.img_size if enc is not None else self.configs["generator"].img_resolution


@dataclass(frozen=True)
class Section:
    """How one top-level key of bundle.json is checked. ``check(value, checked)`` gets the key's JSON value (None
    when absent), raises :class:`FieldError` with a path relative to the key, and stores what it parsed in
    ``checked.configs``. Sections run in :data:`SECTIONS` order, so a check may use what an earlier one parsed."""

    check: Callable[[Any, Checked], None]
    label: str = "invalid manifest"  # words before the field in the error line
    required: bool = False


@dataclass(frozen=True)
class Part:
    """A network stored in a bundle. ``build(checked)`` makes it from the checked configs (None: this bundle has
    none); it runs first on the meta device, to compare the shapes it implies with the weights file's header
    without allocating, then for real to load."""

    file: str  # weights file in the bundle folder
    label: str  # how messages name it
    build: Callable[[Checked], nn.Module | None]


def _check_nothing(value: Any, ck: Checked) -> None:
    """format / format_version: _read_manifest checked them first (they decide whether this is a bundle at all)."""


_DERIVED = re.compile(r"(\+(calibrated|adapted)-\d{4}-\d\d-\d\dT\d\d:\d\dZ?)+$")


def derived_name(name: str, how: str, when: float | None = None) -> str:
    """The name of a bundle made from ``name`` by ``how`` ("calibrated", "adapted") at ``when`` (epoch seconds,
    default now), e.g. ``default+calibrated-2026-12-01T08:00Z`` (UTC); an earlier such suffix is replaced."""
    base = _DERIVED.sub("", name) or "bundle"
    stamp = time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(when))
    suffix = f"+{how}-{stamp}"
    return base[: 200 - len(suffix)] + suffix


def _check_name(value: Any, ck: Checked) -> None:
    if value is not None:
        Str(max_len=200)(value)


def _check_generator(value: Any, ck: Checked) -> None:
    ck.configs["generator"] = GeneratorConfig.from_dict(value)


# Keys of the "encoders" section → parser of that encoder's config (JSON → checked config, raising FieldError).
# Parsed configs land in Checked.configs under the same key; a PARTS entry builds the network from it.
def key_encoder_config(d: Any) -> ViTConfig | StyleEncoderConfig:
    """``encoders.fren`` of bundle.json: a ViT config (no ``kind``, as in format 1) or an e4e / pSp one."""
    kind = JSONObject()(d).get("kind", "vit")
    if kind == "vit":
        return ViTConfig.from_dict({k: v for k, v in d.items() if k != "kind"})
    if kind not in STYLE_ENCODER_KINDS:
        raise FieldError("kind", f"{show(kind)} is not supported by this stylestream (vit, "
                                 f"{', '.join(STYLE_ENCODER_KINDS)}); upgrade stylestream")
    return StyleEncoderConfig.from_dict(d)


ENCODER_CONFIGS: dict[str, Callable[[Any], Any]] = {"fren": key_encoder_config, "vien": ViTConfig.from_dict}


def _check_encoders(value: Any, ck: Checked) -> None:
    encs = {} if value is None else JSONObject()(value)
    for k in encs:
        if k not in ENCODER_CONFIGS:
            raise FieldError(k[:60], f"unknown encoder (known: {', '.join(ENCODER_CONFIGS)})")
    for k, parse in ENCODER_CONFIGS.items():
        v = encs.get(k)
        ck.configs[k] = None if v is None or v == {} else check_value(parse, v, k)
    f, v = ck.configs["fren"], ck.configs["vien"]
    if f is not None and v is not None and f.img_size != v.img_size:
        raise FieldError("vien.img_size", f"must be the same as fren's ({f.img_size}): both encoders read the same "
                                          f"crop, got {v.img_size}")


PREPROCESS_FIELDS: dict[str, Rule] = {  # the keys of preprocess_contract()
    "crop_size": Int(1, 4096),
    "alignment": Str(choices=("ffhq",)),
    "normalisation": Str(choices=("rgb, [-1, 1]",)),
    "output_resolution": Int(1, 4096),
    "num_ws": Int(1, 64),
    "w_dim": Int(1, MAX_DIM),
    "coarse_resolution": Int(1, 4096),
    "num_coarse": Int(0, 64),
}


def _check_preprocess(value: Any, ck: Checked) -> None:
    if value is None:
        return
    got = check_fields(PREPROCESS_FIELDS, value)
    want = preprocess_contract(ck.configs["generator"], ck.crop_size)
    for k, v in got.items():
        if v != want[k]:
            implied = "the encoders' input size" if k == "crop_size" else "what the model configs imply"
            raise FieldError(k, f"{show(v)} disagrees with {implied} ({show(want[k])})")


def _check_trained(value: Any, ck: Checked) -> None:
    if value is not None:
        for k, v in JSONObject()(value).items():
            check_value(Bool(), v, k[:60])


def _check_edits(value: Any, ck: Checked) -> None:
    if value is None:
        return
    g = ck.configs["generator"]
    channels = {layer.name: layer.channels for layer in style_layers(g.img_resolution, g.channels())}
    ck.edits = check_edit_list(value, g.layout(), channels, ck.header(EXTRA) or {}, EXTRA)


def _check_provenance(value: Any, ck: Checked) -> None:
    if value is not None:
        JSONObject()(value)


SECTIONS: dict[str, Section] = {
    "format": Section(_check_nothing, required=True),
    "format_version": Section(_check_nothing, required=True),
    "name": Section(_check_name),
    "generator": Section(_check_generator, "invalid model config", required=True),
    "encoders": Section(_check_encoders, "invalid model config"),
    "preprocess": Section(_check_preprocess, "invalid preprocessing contract"),
    "trained": Section(_check_trained),
    "edits": Section(_check_edits, "invalid edit"),
    "provenance": Section(_check_provenance),
}


def _build_fren(ck: Checked) -> nn.Module | None:
    cfg = ck.configs.get("fren")
    if cfg is None:
        return None
    if isinstance(cfg, StyleEncoderConfig):
        layout = ck.layout()
        if (cfg.n_styles, cfg.w_dim) != (layout.num_ws, layout.w_dim):
            raise ValueError(f"the {cfg.kind} encoder outputs {cfg.n_styles} W+ entries of {cfg.w_dim}, but the "
                             f"generator takes {layout.num_ws} of {layout.w_dim}")
        return StyleEncoder(cfg)
    return FrameEncoder(cfg, ck.layout())


def _build_vien(ck: Checked) -> nn.Module | None:
    cfg = ck.configs.get("vien")
    return VideoEncoder(cfg, ck.layout()) if cfg is not None else None


PARTS: dict[str, Part] = {
    "generator": Part("generator.safetensors", "generator", lambda ck: Generator(ck.configs["generator"])),
    "fren": Part("fren.safetensors", "FrEN", _build_fren),
    "vien": Part("vien.safetensors", "ViEN", _build_vien),
}


def check_bundle(path: str | os.PathLike) -> Checked:
    """Every check of a bundle that needs no tensor loaded (see the module docstring). Raises :class:`BundleError`."""
    path = Path(path)
    m = _read_manifest(path)
    mf = path / MANIFEST
    ck = Checked(path, m)
    for key in m:
        if key not in SECTIONS:
            raise BundleError(f"{mf}: invalid manifest: {key[:60]}: unknown section (known: {', '.join(SECTIONS)})")
    for key, section in SECTIONS.items():
        if section.required and key not in m:
            raise BundleError(f"{mf}: {section.label}: {key}: is missing")
        try:
            section.check(m.get(key), ck)
        except FieldError as exc:
            raise BundleError(f"{mf}: {section.label}: {exc.within(key)}") from None
    for part in PARTS.values():
        try:
            expected = module_shapes(lambda part=part: part.build(ck))  # on the meta device: no memory
        except (ValueError, RuntimeError, AssertionError) as exc:  # a config the checks let through but cannot build
            raise BundleError(f"{mf}: invalid model config: {part.label}: {str(exc).splitlines()[0][:200]}") from None
        if expected is None:
            continue
        what = f"{part.label} ({path / part.file})"
        header = ck.header(part.file, missing=f"bundle {path} is missing {part.file} ({part.label} weights)") or {}
        check_state_shapes(expected, {k: info.shape for k, info in header.items()}, what)
        for k, info in header.items():
            if info.dtype not in FLOAT_DTYPES and not (k.endswith("num_batches_tracked") and info.dtype == "I64"):
                raise BundleError(f"{what}: {k}: dtype {info.dtype} is not a floating-point type")
    return ck


def _load_tensors(file: Path) -> dict[str, torch.Tensor]:
    """All tensors of a (checked) safetensors file; NaN/Inf values are refused, naming the tensor."""
    regular_file(file, BundleError)  # again, just before opening it
    try:
        state = load_file(str(file))
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise BundleError(f"{file} is corrupt or not a safetensors file ({str(exc).splitlines()[0][:200]})") from None
    bad = first_non_finite(state)
    if bad is not None:
        raise BundleError(f"{file}: {non_finite_message(*bad)}")
    return state


def _load_state(module: nn.Module, file: Path, what: str) -> None:
    load_state_checked(module, _load_tensors(file), f"{what} ({file.name})")


def check_state_shapes(expected: Mapping[str, tuple[int, ...]], got: Mapping[str, tuple[int, ...]], what: str,
                       error: type[Exception] = BundleError) -> None:
    """One clear ``error`` line for missing/unexpected keys and shape mismatches between two {name: shape} maps."""
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {str(unexpected[0])[:80]})")
        raise error(f"{what}: weights do not match the config: " + ", ".join(parts))
    for k, shape in expected.items():
        if tuple(got[k]) != tuple(shape):
            raise error(f"{what}: shape mismatch for {k}: file {tuple(got[k])}, config expects {tuple(shape)}")


def load_state_checked(module: nn.Module, state: dict[str, torch.Tensor], what: str,
                       error: type[Exception] = BundleError) -> None:
    """load_state_dict with one clear message for missing/unexpected keys and shape mismatches."""
    check_state_shapes({k: tuple(v.shape) for k, v in module.state_dict().items()},
                       {k: tuple(v.shape) for k, v in state.items()}, what, error)
    module.load_state_dict(state)


def load_bundle(path: str | os.PathLike, device: torch.device | str = "cpu") -> Bundle:
    """Read a bundle folder (after :func:`check_bundle`). Modules come back in eval mode on ``device``."""
    ck = check_bundle(path)
    modules: dict[str, nn.Module] = {}
    for name, part in PARTS.items():
        module = part.build(ck)
        if module is not None:
            _load_state(module, ck.path / part.file, part.label)
            modules[name] = module
    extra = _load_tensors(ck.path / EXTRA) if ck.header(EXTRA) is not None else {}
    m = ck.manifest
    b = Bundle(generator=modules["generator"], fren=modules.get("fren"), vien=modules.get("vien"),  # type: ignore[arg-type]
               trained=dict(m.get("trained") or {}), edits=list(m.get("edits") or []), extra=extra,
               provenance=dict(m.get("provenance") or {}), name=str(m.get("name", ck.path.name)))
    for mod in b.modules().values():
        mod.eval().requires_grad_(False)
    return b.to(device)


@torch.no_grad()
def estimate_w_avg(g: Generator, n: int = 2048, seed: int = 0) -> torch.Tensor:
    """Mean of mapping(z) over ``n`` fixed-seed samples, [w_dim]. Used where a checkpoint lacks w_avg."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, g.z_dim, generator=gen)
    c = torch.zeros(n, g.c_dim) if g.c_dim else None
    return g.mapping(z, c)[:, 0].mean(0)


def new_bundle(generator: str | GeneratorConfig = "tiny-64", encoder: str | ViTConfig | None = "tiny",
               seed: int = 0, name: str = "random") -> Bundle:
    """A bundle with randomly initialised (untrained) weights, marked as such — for tests, benchmarks and as
    the starting point of training. The encoders output w_avg until trained."""
    gcfg = GENERATOR_PRESETS[generator] if isinstance(generator, str) else generator
    torch.manual_seed(seed)
    g = Generator(gcfg)
    g.mapping.w_avg.copy_(estimate_w_avg(g, seed=seed))
    fren = vien = None
    if encoder is not None:
        ecfg = ENCODER_PRESETS[encoder] if isinstance(encoder, str) else encoder
        fren = FrameEncoder(ecfg, gcfg.layout())
        vien = VideoEncoder(ecfg, gcfg.layout())
        fren.w_avg.copy_(g.mapping.w_avg)
        vien.init_from_frame_encoder(fren)
    b = Bundle(generator=g, fren=fren, vien=vien, trained={"generator": False, "fren": False, "vien": False},
               provenance={"made_by": "models.bundle.new_bundle", "seed": seed,
                           "generator_preset": generator if isinstance(generator, str) else "custom",
                           "encoder_preset": encoder if isinstance(encoder, str) or encoder is None else "custom"},
               name=name)
    for mod in b.modules().values():
        mod.eval().requires_grad_(False)
    return b


def key_encoder_kind(enc: nn.Module | None) -> str:
    """What a bundle's key-frame encoder is: "vit" (FrEN), "e4e", "psp" or "none"."""
    if enc is None:
        return "none"
    return enc.kind if isinstance(enc, StyleEncoder) else "vit"


def key_encoder_manifest(enc: nn.Module | None) -> dict[str, Any] | None:
    """``encoders.fren`` of bundle.json: the ViT config as in format 1 (no ``kind``), or the e4e / pSp config
    with its ``kind``."""
    if enc is None:
        return None
    return enc.cfg.to_dict()  # StyleEncoderConfig.to_dict includes "kind"
