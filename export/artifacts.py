"""What an export leaves on disk, and where: file and model names, the manifest, cache folders, identities.

Both sides use this module: the exporters (:mod:`export.onnx`, :mod:`export.tensorrt`, :mod:`export.triton`) write
these files, the engines (:mod:`realtime.engines`) find and check them. Nothing here runs a model.

    DIR/manifest.json            format, bundle name + hash, shapes, opset, one entry per exported model × precision
    DIR/{model}.{precision}.onnx model ∈ fren | vien | synthesis | fren_coarse, precision ∈ fp32 | fp16
                                 (fren_coarse: e4e / pSp key encoders only, see export.onnx.available_models)
    $STYLESTREAM_CACHE/onnx/{bundle hash[:16]}/   default export folder of the onnx / tensorrt engines
    $STYLESTREAM_CACHE/tensorrt/                  default TensorRT engine cache (ONNX Runtime's TensorRT provider: ort/)

``$STYLESTREAM_CACHE`` defaults to ``~/.cache/stylestream`` and is read at every call (tests move it).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from models.bundle import Bundle
from models.errors import UserError
from models.files import atomic_write_text

MODELS: tuple[str, ...] = ("fren", "vien", "synthesis", "fren_coarse")
PRECISIONS: tuple[str, ...] = ("fp32", "fp16")  # precisions of exported files (the interface is float32 in both)

# model → (input names, output names): the graph I/O every runtime (ONNX Runtime, TensorRT, Triton) sees
IO_NAMES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "fren": (("crops",), ("ws",)),
    "vien": (("crops", "prev_ws"), ("ws",)),
    "synthesis": (("ws",), ("image",)),
    "fren_coarse": (("crops",), ("ws_coarse",)),  # the key encoder's first num_coarse W+ entries only
}

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "stylestream-onnx"
MANIFEST_VERSION = 1

TRITON_PREFIX = "stylestream_"


def onnx_filename(model: str, precision: str) -> str:
    """``fren.fp32.onnx`` …"""
    return f"{model}.{precision}.onnx"


def triton_model_name(model: str, precision: str = "fp32", prefix: str = TRITON_PREFIX) -> str:
    """Repository name of one model: ``stylestream_synthesis``, ``stylestream_synthesis_fp16``, …"""
    return f"{prefix}{model}" + ("_fp16" if precision == "fp16" else "")


# --------------------------------------------------------------------------------------------------------------
# Cache folders


def cache_root() -> Path:
    """``$STYLESTREAM_CACHE``, else ``~/.cache/stylestream``."""
    return Path(os.environ.get("STYLESTREAM_CACHE", Path.home() / ".cache" / "stylestream"))


def default_export_dir(bundle: Bundle) -> Path:
    """Where engines export a bundle when no model folder is given: the user cache, keyed by the bundle hash."""
    return cache_root() / "onnx" / bundle_hash(bundle)[:16]


def default_trt_cache() -> Path:
    """Default folder of built TensorRT engines (and their timing cache)."""
    return cache_root() / "tensorrt"


# --------------------------------------------------------------------------------------------------------------
# Identities


def bundle_hash(bundle: Bundle) -> str:
    """sha256 over every network's state (names, shapes, dtypes, bytes) and the configs: a bundle's identity for
    caches (exports, TensorRT engines). Same weights + configs → same hash, wherever they live (device, memory
    format)."""
    h = hashlib.sha256()
    mf = bundle.manifest()
    h.update(json.dumps({"generator": mf["generator"], "encoders": mf["encoders"]}, sort_keys=True).encode())
    for name, module in sorted(bundle.modules().items()):
        for k, v in sorted(module.state_dict().items()):
            t = v.detach().to("cpu").contiguous().reshape(-1)
            h.update(f"{name}.{k}:{tuple(t.shape)}:{t.dtype}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------------------
# The manifest


def read_manifest(out_dir: str | os.PathLike) -> dict[str, Any]:
    """The manifest of an export folder; a clear error when it is missing or not ours."""
    path = Path(out_dir) / MANIFEST_NAME
    if not path.exists():
        raise UserError(f"{out_dir} is not an ONNX export folder (no {MANIFEST_NAME}); "
                        "make one with `stylestream export BUNDLE --to onnx -o DIR`")
    try:
        m = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is unreadable ({exc})") from None
    if not isinstance(m, dict) or m.get("format") != MANIFEST_FORMAT:
        raise UserError(f"{path} is not a stylestream ONNX manifest")
    return m


def write_manifest(out_dir: str | os.PathLike, manifest: dict[str, Any]) -> Path:
    """Write ``manifest`` (atomically) as the manifest of ``out_dir``."""
    return atomic_write_text(Path(out_dir) / MANIFEST_NAME, json.dumps(manifest, indent=2) + "\n")


def exported_models(out_dir: str | os.PathLike, bundle: Bundle, precision: str) -> dict[str, Path]:
    """model → file of every ``precision`` export of ``bundle`` in ``out_dir`` whose file exists. Raises
    UserError when ``out_dir`` holds another bundle's exports (or none)."""
    d = Path(out_dir)
    m = read_manifest(d)
    if m.get("bundle_hash") != bundle_hash(bundle):
        raise UserError(f"{d} holds models exported from another bundle ({m.get('bundle_name')!r}); "
                        "export this bundle with `stylestream export BUNDLE --to onnx -o DIR`")
    out = {}
    for entry in m.get("models", {}).values():
        path = d / entry["file"]
        if entry.get("precision") == precision and path.exists():
            out[entry["model"]] = path
    return out
