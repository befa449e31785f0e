"""What the engines that run the exported graphs (ONNX Runtime, TensorRT, Triton) share: the Engine methods over one
``_call(model, feed)``, the torch fallback for StyleSpace edits, and finding (or making) the ONNX export."""

from __future__ import annotations

import copy
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from export.artifacts import default_export_dir, exported_models
from export.onnx import available_models, export_bundle
from models.bundle import Bundle
from models.errors import UserError
from realtime.engines.base import BaseEngine

log = logging.getLogger("stylestream.engines")

ProgressFn = Callable[[str], None]


def exported_precision(precision: str, device: torch.device, backend: str) -> str:
    """``auto`` → fp16 on CUDA, fp32 on CPU; the exported graphs come in fp32 and fp16 only."""
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if precision not in ("fp32", "fp16"):
        raise UserError(f"{backend} backend: unknown precision {precision!r} (fp32, fp16 or auto)")
    return precision


def engine_models(bundle: Bundle) -> tuple[list[str], list[str]]:
    """(required, optional) exported models of an engine for ``bundle``: fren, synthesis and ViEN when the bundle
    has one; optionally ``fren_coarse`` (e4e / pSp key encoders: without it ``encode_coarse`` runs ``fren``)."""
    required = ["fren", "synthesis"] + (["vien"] if bundle.vien is not None else [])
    return required, [m for m in available_models(bundle) if m not in required]


def ensure_onnx(bundle: Bundle, model_dir: str | os.PathLike | None, precision: str, models: Sequence[str],
                progress: ProgressFn | None = None, optional: Sequence[str] = ()) -> Path:
    """The ONNX export folder for ``bundle`` at ``precision``: ``model_dir`` when given (checked to belong to this
    bundle and to hold ``models``; ``optional`` ones may be missing there), else the cache folder
    (:func:`export.artifacts.default_export_dir`), exporting what is missing there, ``optional`` included."""
    if model_dir is not None:
        d = Path(model_dir)
        have = exported_models(d, bundle, precision)
        missing = [n for n in models if n not in have]
        if missing:
            raise UserError(f"{d} has no {precision} export of {', '.join(missing)}; run "
                            f"`stylestream export BUNDLE --to onnx --precision {precision} -o {d}`")
        return d
    d = default_export_dir(bundle)
    try:
        have = exported_models(d, bundle, precision)
    except UserError:  # no cache yet, or an unreadable one: export over it
        have = {}
    missing = [n for n in [*models, *optional] if n not in have]
    if missing:
        say = progress or (lambda msg: print(f"stylestream: {msg}", file=sys.stderr, flush=True))
        say(f"exporting {', '.join(missing)} ({precision}) to {d} (once per bundle)")
        export_bundle(bundle, d, precision=precision, models=missing, progress=say)
    return d


def present_models(model_dir: Path, bundle: Bundle, precision: str, models: Sequence[str]) -> list[str]:
    """The subset of ``models`` exported at ``precision`` in ``model_dir``."""
    have = exported_models(model_dir, bundle, precision)
    return [m for m in models if m in have]


class StyleFallback:
    """Torch synthesis for frames that carry StyleSpace deltas (exported graphs have no such inputs): a float32 copy
    of the bundle's synthesis network on ``device``, made at the first such frame (logged once)."""

    def __init__(self, bundle: Bundle, device: torch.device, backend: str):
        self.bundle, self.device, self.backend = bundle, device, backend
        self._synthesis: torch.nn.Module | None = None

    @torch.inference_mode()
    def __call__(self, ws: torch.Tensor, style_deltas: dict[str, torch.Tensor]) -> torch.Tensor:
        if self._synthesis is None:
            log.warning("%s backend: StyleSpace edits are not part of the exported graph; frames with them run "
                        "the torch synthesis network on %s", self.backend, self.device)
            synthesis = copy.deepcopy(self.bundle.generator.synthesis)
            self._synthesis = synthesis.to(self.device).float().eval().requires_grad_(False)
        deltas = {k: v.to(self.device, torch.float32) for k, v in style_deltas.items()}
        return self._synthesis(ws.to(self.device, torch.float32), noise_mode="const", style_deltas=deltas).float()


class ExportedEngine(BaseEngine):
    """The Engine methods of every backend that runs the exported graphs: subclasses set ``has_vien``,
    ``coarse_model`` and ``_style_fallback`` and provide ``_call(model, feed)`` → the model's single output, float32
    on ``device``."""

    coarse_model: bool  # fren_coarse is loaded (e4e / pSp); otherwise encode_coarse runs fren and keeps its coarse rows
    _style_fallback: StyleFallback

    def _call(self, model: str, feed: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    @torch.inference_mode()
    def encode_key(self, crops: torch.Tensor) -> torch.Tensor:
        self._check_crops(crops)
        return self._call("fren", {"crops": crops})

    @torch.inference_mode()
    def encode_reuse(self, crops: torch.Tensor, prev_ws: torch.Tensor) -> torch.Tensor:
        self._check_crops(crops)
        if not self.has_vien:
            return self.encode_coarse(crops, prev_ws)
        self._check_ws(prev_ws, "prev_ws", crops.shape[0])
        return self._call("vien", {"crops": crops, "prev_ws": prev_ws})

    @torch.inference_mode()
    def encode_coarse(self, crops: torch.Tensor, prev_ws: torch.Tensor) -> torch.Tensor:
        self._check_crops(crops)
        self._check_ws(prev_ws, "prev_ws", crops.shape[0])
        coarse = self._call("fren_coarse", {"crops": crops}) if self.coarse_model else self.encode_key(crops)
        return self._with_fine(coarse, prev_ws)

    @torch.inference_mode()
    def synthesize(self, ws: torch.Tensor, style_deltas: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        self._check_ws(ws)
        if style_deltas:
            return self._style_fallback(ws, style_deltas)
        return self._call("synthesis", {"ws": ws})
