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

No pickles: JSON + safetensors only. Loading checks the format, the version, that every listed file exists,
and that every tensor matches the shapes the configs imply; each failure is a :class:`BundleError` with one
clear line. Saving writes a temporary sibling folder and renames it into place, so a crash never leaves a
half-written bundle.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from models.e4e import KINDS as STYLE_ENCODER_KINDS
from models.e4e import StyleEncoder, StyleEncoderConfig
from models.errors import BundleError
from models.latents import WPlusLayout
from models.stylegan2 import GENERATOR_PRESETS, Generator, GeneratorConfig
from models.vit_encoder import ENCODER_PRESETS, FrameEncoder, VideoEncoder, ViTConfig

FORMAT_NAME = "stylestream-bundle"
# The built-in default bundle ships inside the package (package data), so an installed wheel has it too.
DEFAULT_BUNDLE = Path(str(importlib.resources.files("models").joinpath("bundles", "default")))
FORMAT_VERSION = 2  # written by save(); 1 and 2 are read (see the module docstring)
MANIFEST = "bundle.json"


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
        layout = self.generator.layout
        return {
            "crop_size": self.crop_size,  # encoder input side, pixels
            "alignment": "ffhq",  # FFHQ quad from eye centres and mouth corners (realtime/vision/align.py)
            "normalisation": "rgb, [-1, 1]",  # (pixel / 127.5) − 1, channels R, G, B
            "output_resolution": self.generator.img_resolution,
            "num_ws": layout.num_ws,
            "w_dim": layout.w_dim,
            "coarse_resolution": layout.coarse_resolution,
            "num_coarse": layout.num_coarse,
        }

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
    try:
        manifest = json.loads(mf.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{mf} is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise BundleError(f"{mf} is not a stylestream bundle manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version < 1 or version > FORMAT_VERSION:
        raise BundleError(f"{path}: bundle format version {version!r} is not supported by this stylestream "
                          f"(supports 1…{FORMAT_VERSION}); upgrade stylestream")
    return manifest


def _load_state(module: nn.Module, file: Path, what: str) -> None:
    if not file.exists():
        raise BundleError(f"bundle is missing {file.name} ({what} weights)")
    try:
        state = load_file(str(file))
    except (SafetensorError, OSError, ValueError) as exc:
        raise BundleError(f"{file} is corrupt or not a safetensors file ({exc})") from None
    load_state_checked(module, state, f"{what} ({file.name})")


def load_state_checked(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """load_state_dict with one clear message for missing/unexpected keys and shape mismatches."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise BundleError(f"{what}: weights do not match the config: " + ", ".join(parts))
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise BundleError(f"{what}: shape mismatch for {k}: file {tuple(state[k].shape)}, "
                              f"config expects {tuple(v.shape)}")
    module.load_state_dict(state)


def load_bundle(path: str | os.PathLike, device: torch.device | str = "cpu") -> Bundle:
    """Read a bundle folder. Modules come back in eval mode on ``device``."""
    path = Path(path)
    m = _read_manifest(path)
    try:
        gcfg = GeneratorConfig.from_dict(m["generator"])
        encs = m.get("encoders") or {}
        fren = make_key_encoder(encs["fren"], gcfg.layout()) if encs.get("fren") else None
        vcfg = ViTConfig.from_dict(encs["vien"]) if encs.get("vien") else None
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{path / MANIFEST}: invalid model config ({exc})") from None
    g = Generator(gcfg)
    _load_state(g, path / "generator.safetensors", "generator")
    vien = None
    if fren is not None:
        _load_state(fren, path / "fren.safetensors", "FrEN" if isinstance(fren, FrameEncoder) else
                    f"{key_encoder_kind(fren)} encoder")
    if vcfg is not None:
        vien = VideoEncoder(vcfg, gcfg.layout())
        _load_state(vien, path / "vien.safetensors", "ViEN")
    extra: dict[str, torch.Tensor] = {}
    if (path / "extra.safetensors").exists():
        try:
            extra = load_file(str(path / "extra.safetensors"))
        except Exception as exc:  # safetensors raises several types for corrupt files
            raise BundleError(f"{path / 'extra.safetensors'} is corrupt ({exc})") from None
    pre = m.get("preprocess", {})
    b = Bundle(generator=g, fren=fren, vien=vien, trained=dict(m.get("trained", {})), edits=list(m.get("edits", [])),
               extra=extra, provenance=dict(m.get("provenance", {})), name=str(m.get("name", path.name)))
    if pre and pre.get("crop_size") not in (None, b.crop_size):
        raise BundleError(f"{path}: preprocess.crop_size {pre.get('crop_size')} disagrees with the encoder "
                          f"input size {b.crop_size}")
    for mod in b.modules().values():
        mod.eval().requires_grad_(False)
    return b.to(device)


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


def make_key_encoder(d: dict[str, Any], layout: WPlusLayout) -> FrameEncoder | StyleEncoder:
    """The (untrained) key-frame encoder module that ``encoders.fren`` of bundle.json describes."""
    kind = d.get("kind", "vit")
    if kind == "vit":
        return FrameEncoder(ViTConfig.from_dict({k: v for k, v in d.items() if k != "kind"}), layout)
    if kind not in STYLE_ENCODER_KINDS:
        raise BundleError(f"key-frame encoder kind {kind!r} is not supported by this stylestream (vit, "
                          f"{', '.join(STYLE_ENCODER_KINDS)}); upgrade stylestream")
    cfg = StyleEncoderConfig.from_dict(d)
    if (cfg.n_styles, cfg.w_dim) != (layout.num_ws, layout.w_dim):
        raise BundleError(f"the {kind} encoder outputs {cfg.n_styles} W+ entries of {cfg.w_dim}, but the generator "
                          f"takes {layout.num_ws} of {layout.w_dim}")
    return StyleEncoder(cfg)


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
