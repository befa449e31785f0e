"""Export a bundle's networks to ONNX: the key-frame encoder (FrEN or e4e / pSp), ViEN, the synthesis network,
and for an e4e / pSp key encoder its coarse-only forward.

Each model is one self-contained ``.onnx`` file (weights inside, no external data), opset ≥ 17, a dynamic batch
dimension and named inputs/outputs (the same names the engines, TensorRT and Triton use):

    fren         crops [B, 3, S, S] float32 in [-1, 1]                    → ws        [B, num_ws, w_dim] float32
    vien         crops [B, 3, S, S], prev_ws [B, num_ws, w_dim] float32   → ws        [B, num_ws, w_dim] float32
    synthesis    ws    [B, num_ws, w_dim] float32                         → image     [B, 3, R, R] float32
    fren_coarse  crops [B, 3, S, S]                                       → ws_coarse [B, num_coarse, w_dim]

``fren_coarse`` is the key encoder without the heads of the fine entries (coarse reuse without a ViEN: the
pipeline's ``--reuse coarse``). It is exported only where that saves work — an e4e / pSp encoder, whose fine heads
are 44 % of its MACs at the released size; a ViT FrEN's cost is its backbone, and the engines slice ``fren``'s
output for it instead.

The synthesis network is exported with ``noise_mode="const"`` (the constant noise buffers baked in as
initialisers) and the export form of the modulated convolution. StyleSpace ``style_deltas`` are *not* inputs of
the exported graph: edits in W space (added to ``ws`` before ``synthesis``) work on every backend.

Precisions: ``fp32`` exports the model as is. ``fp16`` exports a half-precision copy of the model wrapped in casts,
so the *interface stays float32* (no caller changes) while weights and activations inside are float16 — the
natural input for ONNX Runtime's CUDA/TensorRT providers and for TensorRT. (ONNX Runtime's CPU provider runs it
too, inserting casts around ops it has no fp16 kernel for; that is slower than fp32 on CPU and only useful for
parity checks.)

Files: ``{model}.{precision}.onnx`` plus ``manifest.json`` (bundle hash, shapes, names, opset, file hashes; names,
paths and the manifest format are :mod:`export.artifacts`). Writing is atomic per file; the manifest is merged so
fp32 and fp16 exports can share a folder.
"""

from __future__ import annotations

import copy
import inspect
import io
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from export.artifacts import (
    IO_NAMES,
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    MANIFEST_VERSION,
    MODELS,
    PRECISIONS,
    bundle_hash,
    onnx_filename,
    read_manifest,
    write_manifest,
)
from models.bundle import Bundle
from models.e4e import StyleEncoder
from models.errors import UserError
from models.files import atomic_path, file_sha256

DEFAULT_OPSET = 18

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


class ExportError(UserError):
    """An ONNX export failed or produced an invalid model."""


# --------------------------------------------------------------------------------------------------------------
# Wrappers: fixed keyword arguments, float32 interface whatever the internal precision.


class FrenExport(nn.Module):
    """crops [B, 3, S, S] → ws [B, num_ws, w_dim] (float32 in and out)."""

    def __init__(self, fren: nn.Module, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.net, self.dtype = fren, dtype

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return self.net(crops.to(self.dtype)).to(torch.float32)


class VienExport(nn.Module):
    """(crops [B, 3, S, S], prev_ws [B, num_ws, w_dim]) → ws [B, num_ws, w_dim] (float32 in and out).

    The fine entries of the output are ``prev_ws``'s, passed through exactly (no precision round trip)."""

    def __init__(self, vien: nn.Module, num_coarse: int, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.net, self.dtype, self.num_coarse = vien, dtype, num_coarse

    def forward(self, crops: torch.Tensor, prev_ws: torch.Tensor) -> torch.Tensor:
        ws = self.net(crops.to(self.dtype), prev_ws.to(self.dtype)).to(torch.float32)
        if self.dtype == torch.float32:
            return ws
        return torch.cat([ws[:, : self.num_coarse], prev_ws[:, self.num_coarse:]], dim=1)


class CoarseExport(nn.Module):
    """crops [B, 3, S, S] → ws_coarse [B, num_coarse, w_dim]: the key encoder's coarse-only forward
    (``forward_coarse``), float32 in and out."""

    def __init__(self, fren: nn.Module, num_coarse: int, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.net, self.num_coarse, self.dtype = fren, num_coarse, dtype

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return self.net.forward_coarse(crops.to(self.dtype), self.num_coarse).to(torch.float32)


class SynthesisExport(nn.Module):
    """ws [B, num_ws, w_dim] → image [B, 3, R, R] (float32 in and out), constant noise."""

    def __init__(self, synthesis: nn.Module, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.net, self.dtype = synthesis, dtype

    def forward(self, ws: torch.Tensor) -> torch.Tensor:
        return self.net(ws.to(self.dtype), noise_mode="const").to(torch.float32)


class Tapped(nn.Module):
    """Wrap a model so it also returns the outputs of named sub-modules ("taps"), in order.

    Used by :mod:`export.parity` to find the first layer whose output drifts. Hooks run in Python during
    ``torch.export``'s non-strict tracing, so the taps become graph outputs."""

    def __init__(self, model: nn.Module, taps: Sequence[tuple[str, nn.Module]]):
        super().__init__()
        self.model = model
        self._taps = list(taps)
        self.tap_names: list[str] = []

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        got: list[torch.Tensor] = []
        names: list[str] = []

        def hook(name: str) -> Callable[[nn.Module, Any, Any], None]:
            def fn(_m: nn.Module, _i: Any, out: Any) -> None:
                outs = out if isinstance(out, tuple | list) else (out,)
                tensors = [o for o in outs if isinstance(o, torch.Tensor)]
                for k, t in enumerate(tensors):
                    got.append(t.to(torch.float32))
                    names.append(name if len(tensors) == 1 else f"{name}[{k}]")

            return fn

        handles = [m.register_forward_hook(hook(n)) for n, m in self._taps]
        try:
            out = self.model(*inputs)
        finally:
            for h in handles:
                h.remove()
        self.tap_names = names
        return (out, *got)


# --------------------------------------------------------------------------------------------------------------
# What to export


@dataclass
class ModelSpec:
    """One exportable model of a bundle."""

    name: str  # "fren" | "vien" | "synthesis" | "fren_coarse"
    module: nn.Module  # float32 interface wrapper
    inputs: tuple[str, ...]  # input names, in call order
    outputs: tuple[str, ...]  # output names
    shapes: dict[str, list[int | str]]  # name → shape with "batch" for the dynamic dimension


def model_spec(bundle: Bundle, name: str, precision: str = "fp32") -> ModelSpec:
    """The export wrapper of ``name`` at ``precision``. For fp16 the wrapped network is a half *copy* (the bundle
    is not modified)."""
    if precision not in _DTYPES:
        raise UserError(f"unknown precision {precision!r} (fp32 or fp16)")
    dtype = _DTYPES[precision]
    g = bundle.generator
    s, r, n, wd = bundle.crop_size, g.img_resolution, g.num_ws, g.w_dim
    crops: list[int | str] = ["batch", 3, s, s]
    wsh: list[int | str] = ["batch", n, wd]

    def prep(m: nn.Module) -> nn.Module:
        m = copy.deepcopy(m).to("cpu").eval().requires_grad_(False)
        return m.to(dtype) if dtype != torch.float32 else m.float()

    module: nn.Module
    if name == "fren":
        if bundle.fren is None:
            raise UserError(f"bundle {bundle.name!r} has no FrEN to export")
        module = FrenExport(prep(bundle.fren), dtype)
        shapes = {"crops": crops, "ws": wsh}
    elif name == "vien":
        if bundle.vien is None:
            raise UserError(f"bundle {bundle.name!r} has no ViEN to export")
        module = VienExport(prep(bundle.vien), g.layout.num_coarse, dtype)
        shapes = {"crops": crops, "prev_ws": wsh, "ws": wsh}
    elif name == "synthesis":
        module = SynthesisExport(prep(g.synthesis), dtype)
        shapes = {"ws": wsh, "image": ["batch", g.img_channels, r, r]}
    elif name == "fren_coarse":
        if not has_coarse_model(bundle):
            raise UserError(f"bundle {bundle.name!r} has no e4e / pSp key encoder: a coarse-only model would cost "
                            "what fren costs (the engines slice fren's output instead)")
        assert bundle.fren is not None
        module = CoarseExport(prep(bundle.fren), g.layout.num_coarse, dtype)
        shapes = {"crops": crops, "ws_coarse": ["batch", g.layout.num_coarse, wd]}
    else:
        raise UserError(f"unknown model {name!r} (choose from {', '.join(MODELS)})")
    ins, outs = IO_NAMES[name]
    return ModelSpec(name, module.eval(), ins, outs, shapes)


def has_coarse_model(bundle: Bundle) -> bool:
    """Whether ``fren_coarse`` is worth its own model: an e4e / pSp key encoder (whose fine heads it skips) with
    fewer coarse entries than entries."""
    return isinstance(bundle.fren, StyleEncoder) and bundle.generator.layout.num_coarse < bundle.fren.cfg.n_styles


def available_models(bundle: Bundle) -> list[str]:
    """The models ``bundle`` exports to: fren, vien (when it has one), synthesis, fren_coarse (e4e / pSp)."""
    out = [m for m in ("fren", "vien", "synthesis") if m == "synthesis" or getattr(bundle, m) is not None]
    return out + (["fren_coarse"] if has_coarse_model(bundle) else [])


def tap_points(spec: ModelSpec) -> list[tuple[str, nn.Module]]:
    """Sub-modules whose outputs parity diagnostics compare: every synthesis block (x and img), the ViT's patch
    embedding, every transformer block, the final norm, the projector and the head, or an e4e / pSp encoder's own
    list (input layer, backbone units, laterals, heads)."""
    net = spec.module.net  # type: ignore[union-attr]
    if spec.name == "synthesis":
        return [(f"b{b.resolution}", b) for b in net.blocks()]
    if hasattr(net, "tap_points"):  # e4e / pSp key-frame encoder (models/e4e.py)
        return net.tap_points()
    taps: list[tuple[str, nn.Module]] = []
    if hasattr(net, "projector"):
        taps.append(("projector", net.projector))
    bb = net.backbone
    taps.append(("backbone.patch_embed", bb.patch_embed))
    taps += [(f"backbone.blocks.{i}", blk) for i, blk in enumerate(bb.blocks)]
    taps += [("backbone.norm", bb.norm), ("head", net.head)]
    return taps


def example_inputs(bundle: Bundle, name: str, batch: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """Fixed, seeded float32 CPU inputs for ``name``: smooth-ish crops in [-1, 1] and W+ codes from the mapping
    network (a different z per entry, so every layer sees a distinct w)."""
    gen = torch.Generator().manual_seed(seed)
    g = bundle.generator
    s = bundle.crop_size
    out: dict[str, torch.Tensor] = {}
    if name in ("fren", "vien", "fren_coarse"):
        low = torch.rand(batch, 3, max(1, s // 8), max(1, s // 8), generator=gen) * 2 - 1
        fine = (torch.rand(batch, 3, s, s, generator=gen) * 2 - 1) * 0.2
        crop = torch.nn.functional.interpolate(low, size=(s, s), mode="bilinear", align_corners=False) + fine
        out["crops"] = crop.clamp(-1, 1).contiguous()
    if name in ("vien", "synthesis"):
        z = torch.randn(batch * g.num_ws, g.z_dim, generator=gen)
        with torch.no_grad():
            mapping = copy.deepcopy(g.mapping).to("cpu").float()
            c = torch.zeros(z.shape[0], g.c_dim) if g.c_dim else None
            w = mapping(z, c)[:, 0]  # [B·num_ws, w_dim]
        out["prev_ws" if name == "vien" else "ws"] = w.reshape(batch, g.num_ws, g.w_dim).contiguous()
    return out


# --------------------------------------------------------------------------------------------------------------
# Export


def export_module(module: nn.Module, inputs: dict[str, torch.Tensor], path: str | os.PathLike,
                  output_names: Sequence[str], opset: int = DEFAULT_OPSET, check: bool = True) -> Path:
    """torch.onnx (dynamo) export of ``module(*inputs.values())`` to one self-contained file, batch dynamic.

    Writes to a temporary sibling and renames, so a failure leaves nothing behind. Raises ExportError with the
    exporter's own message on failure."""
    if opset < 17:
        raise UserError(f"opset {opset} is too old (need ≥ 17 for LayerNormalization)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=4096)
    dyn: tuple[Any, ...] = tuple({0: batch} for _ in inputs)
    params = inspect.signature(module.forward).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        dyn = (dyn,)  # forward(*inputs): one top-level argument holding the tuple (Tapped)
    # The exporter prints nothing with verbose=False; what it logs goes to a buffer for the error message. Never
    # redirect sys.stdout / sys.stderr here: they are the whole process's, and other threads write to them.
    log = io.StringIO()
    handler = logging.StreamHandler(log)
    torch_onnx_log = logging.getLogger("torch.onnx")
    level, propagate = torch_onnx_log.level, torch_onnx_log.propagate
    try:
        with atomic_path(path) as tmp:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch_onnx_log.setLevel(logging.ERROR)  # e.g. "torchvision is not installed. Skipping …"
                torch_onnx_log.addHandler(handler)
                torch_onnx_log.propagate = False
                torch.onnx.export(module.eval(), tuple(inputs.values()), str(tmp), dynamo=True, external_data=False,
                                  input_names=list(inputs), output_names=list(output_names), opset_version=opset,
                                  dynamic_shapes=dyn, verbose=False)
            if check:
                model = onnx.load(str(tmp))
                onnx.checker.check_model(model, full_check=True)
                got_in = [i.name for i in model.graph.input]
                got_out = [o.name for o in model.graph.output]
                if got_in != list(inputs) or got_out[: len(output_names)] != list(output_names):
                    raise ExportError(f"{path.name}: exported names {got_in} → {got_out} differ from the requested "
                                      f"{list(inputs)} → {list(output_names)}")
    except ExportError:
        raise
    except Exception as exc:
        tail = " | ".join(log.getvalue().strip().splitlines()[-3:])
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ExportError(f"ONNX export of {path.name} failed: {type(exc).__name__}: {first}"
                          + (f" (exporter: {tail})" if tail else "")) from exc
    finally:
        torch_onnx_log.removeHandler(handler)
        torch_onnx_log.setLevel(level)
        torch_onnx_log.propagate = propagate
    return path


ProgressFn = Callable[[str], None]


def export_bundle(bundle: Bundle, out_dir: str | os.PathLike, precision: str = "fp32",
                  models: Iterable[str] | None = None, opset: int = DEFAULT_OPSET, max_batch: int = 8,
                  progress: ProgressFn | None = None) -> dict[str, Any]:
    """Export ``models`` (default: all the bundle has) at ``precision`` into ``out_dir`` and update its
    manifest. Returns the manifest."""
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r} (fp32 or fp16)")
    if max_batch < 1:
        raise UserError(f"--max-batch must be ≥ 1, got {max_batch}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder")
    wanted = list(models) if models is not None else available_models(bundle)
    for m in wanted:
        if m not in MODELS:
            raise UserError(f"unknown model {m!r} (choose from {', '.join(MODELS)})")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {out}: {exc.strerror}") from None
    say = progress or (lambda _msg: None)
    bhash = bundle_hash(bundle)
    manifest: dict[str, Any] = {}
    if (out / MANIFEST_NAME).exists():
        old = read_manifest(out)
        if old.get("bundle_hash") == bhash:
            manifest = old
    g = bundle.generator
    manifest.update({
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_VERSION,
        "bundle_name": bundle.name,
        "bundle_hash": bhash,
        "opset": opset,
        "max_batch": max_batch,
        "preprocess": bundle.preprocess(),
        "crop_size": bundle.crop_size,
        "resolution": g.img_resolution,
        "num_ws": g.num_ws,
        "w_dim": g.w_dim,
        "num_coarse": g.layout.num_coarse,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
    })
    manifest.setdefault("models", {})
    for i, name in enumerate(wanted, 1):
        spec = model_spec(bundle, name, precision)
        fname = onnx_filename(name, precision)
        say(f"[{i}/{len(wanted)}] exporting {name} ({precision}) → {out / fname}")
        t0 = time.perf_counter()
        inputs = {k: v for k, v in example_inputs(bundle, name).items()}
        export_module(spec.module, inputs, out / fname, spec.outputs, opset=opset)
        dt = time.perf_counter() - t0
        size = (out / fname).stat().st_size
        say(f"      done in {dt:.1f} s, {size / 1e6:.1f} MB, onnx.checker ok")
        manifest["models"][f"{name}.{precision}"] = {
            "model": name,
            "precision": precision,
            "file": fname,
            "sha256": file_sha256(out / fname),
            "inputs": [{"name": k, "shape": spec.shapes[k], "dtype": "float32"} for k in spec.inputs],
            "outputs": [{"name": k, "shape": spec.shapes[k], "dtype": "float32"} for k in spec.outputs],
            "internal_dtype": "float16" if precision == "fp16" else "float32",
        }
    write_manifest(out, manifest)
    return manifest


def export_tapped(bundle: Bundle, name: str, precision: str, path: str | os.PathLike,
                  opset: int = DEFAULT_OPSET) -> list[str]:
    """Export ``name`` with every tap point as an extra output ("tap0", "tap1", …). Returns the tap names."""
    spec = model_spec(bundle, name, precision)
    tapped = Tapped(spec.module, tap_points(spec))
    inputs = example_inputs(bundle, name)
    with torch.no_grad():
        n = len(tapped(*inputs.values())) - 1
    names = list(tapped.tap_names)
    export_module(tapped, inputs, path, [*spec.outputs, *[f"tap{i}" for i in range(n)]], opset=opset)
    return names
