"""The one Engine interface for model work, and its torch implementation.

The pipeline's device worker only talks to an :class:`Engine`; which runtime executes the networks (torch eager,
later ONNX Runtime / TensorRT / Triton) is invisible to it. All tensors cross this interface on ``engine.device``:

    encode_key(crops)            crops [B, 3, S, S] float in [-1, 1]  → W+ [B, num_ws, w_dim] float32   (FrEN)
    encode_reuse(crops, prev)    + prev W+ [B, num_ws, w_dim]         → W+ (coarse new, fine = prev)     (ViEN)
    synthesize(ws, style_deltas) W+ → image [B, 3, R, R] float32, roughly [-1, 1]                     (generator)
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from models.bundle import Bundle
from models.errors import UserError


@runtime_checkable
class Engine(Protocol):
    name: str  # backend name, e.g. "torch"
    device: torch.device  # where inputs/outputs live
    crop_size: int  # S: encoder input side
    resolution: int  # R: generator output side
    num_ws: int
    w_dim: int
    num_coarse: int

    def encode_key(self, crops: torch.Tensor) -> torch.Tensor: ...

    def encode_reuse(self, crops: torch.Tensor, prev_ws: torch.Tensor) -> torch.Tensor: ...

    def synthesize(self, ws: torch.Tensor, style_deltas: dict[str, torch.Tensor] | None = None) -> torch.Tensor: ...

    def close(self) -> None: ...


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' → CUDA when present, else CPU. Asking for CUDA without it is a user error, not a traceback."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device {device!r} (use cpu, cuda, cuda:N or auto)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {device} requested but CUDA is not available "
                            f"(torch {torch.__version__}; install a CUDA build, see README 'GPU')")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"device {device} does not exist ({torch.cuda.device_count()} CUDA device(s))")
    elif dev.type != "cpu":
        raise UserError(f"device type {dev.type!r} is not supported (cpu or cuda)")
    return dev


class TorchEngine:
    """Eager PyTorch on CPU (fp32) or CUDA (fp16 by default, channels-last)."""

    name = "torch"

    def __init__(self, bundle: Bundle, device: str | torch.device = "auto", precision: str = "auto",
                 threads: int = 0):
        if bundle.fren is None:
            raise UserError(f"bundle {bundle.name!r} has no frame encoder (FrEN), so it cannot encode video; "
                            "train one with `stylestream train` or use a bundle that has encoders")
        self.device = resolve_device(device)
        if precision == "auto":
            precision = "fp16" if self.device.type == "cuda" else "fp32"
        if precision not in ("fp32", "fp16", "bf16"):
            raise UserError(f"unknown precision {precision!r} (fp32, fp16, bf16 or auto)")
        if precision != "fp32" and self.device.type != "cuda":
            raise UserError(f"precision {precision} needs CUDA; on CPU use fp32")
        if threads:
            torch.set_num_threads(threads)
        self.precision = precision
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        self.bundle = bundle.to(self.device)
        g = bundle.generator
        self.generator = g
        self.fren = bundle.fren.to(self.device, self.dtype)
        self.vien = bundle.vien.to(self.device, self.dtype) if bundle.vien is not None else None
        if self.dtype != torch.float32:
            g.synthesis.to(self.dtype)
            if self.device.type == "cuda":
                g.synthesis.to(memory_format=torch.channels_last)
        self.crop_size = bundle.crop_size
        self.resolution = g.img_resolution
        self.num_ws, self.w_dim = g.num_ws, g.w_dim
        self.num_coarse = g.layout.num_coarse
        self.has_vien = self.vien is not None

    def _check_crops(self, crops: torch.Tensor) -> torch.Tensor:
        s = self.crop_size
        if crops.ndim != 4 or crops.shape[1:] != (3, s, s):
            raise ValueError(f"crops must be [B, 3, {s}, {s}], got {tuple(crops.shape)}")
        return crops.to(self.device, self.dtype, non_blocking=True)

    @torch.inference_mode()
    def encode_key(self, crops: torch.Tensor) -> torch.Tensor:
        return self.fren(self._check_crops(crops)).float()

    @torch.inference_mode()
    def encode_reuse(self, crops: torch.Tensor, prev_ws: torch.Tensor) -> torch.Tensor:
        if self.vien is None:  # no ViEN: FrEN for the coarse layers, fine layers still reused
            ws = self.encode_key(crops)
            return torch.cat([ws[:, : self.num_coarse], prev_ws[:, self.num_coarse:].float()], dim=1)
        return self.vien(self._check_crops(crops), prev_ws.to(self.device, self.dtype)).float()

    @torch.inference_mode()
    def synthesize(self, ws: torch.Tensor, style_deltas: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        if ws.ndim != 3 or ws.shape[1:] != (self.num_ws, self.w_dim):
            raise ValueError(f"ws must be [B, {self.num_ws}, {self.w_dim}], got {tuple(ws.shape)}")
        img = self.generator.synthesis(ws.to(self.device, self.dtype), noise_mode="const", style_deltas=style_deltas)
        return img.float()

    def close(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


BACKENDS = ("torch",)


def make_engine(bundle: Bundle, backend: str = "torch", device: str = "auto", precision: str = "auto") -> Engine:
    """Build the engine for ``backend``. Backends other than torch are added by the export work."""
    if backend == "torch":
        return TorchEngine(bundle, device=device, precision=precision)
    raise UserError(f"unknown backend {backend!r} (available: {', '.join(BACKENDS)})")
