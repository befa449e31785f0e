"""The Engine interface, and the one declaration of how an engine is asked for (:class:`EngineSpec`).

Every engine carries what its callers need as declared attributes — no ``getattr`` with defaults, no attributes
added after construction — and never modifies the bundle it is given (the pipeline, the calibrator and the server
may hold the same bundle).
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from export.artifacts import TRITON_PREFIX
from models.bundle import Bundle
from models.config import check, fields, opt
from models.errors import UserError

BACKENDS: tuple[str, ...] = ("auto", "torch", "onnx", "tensorrt", "triton")
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "fp16", "bf16")


@dataclass(frozen=True)
class EngineOptions:
    """Backend options; each belongs to the backends named first in its help (and in :data:`OPTION_BACKENDS`).
    An option set to something other than its default for a backend that does not take it is a UserError."""

    threads: int = opt(0, "torch/onnx: CPU threads (0: library default; torch's setting is process-wide)", min=0,
                       cli=False)
    cuda_graphs: bool = opt(False, "torch on CUDA: capture and replay CUDA graphs")
    compile: bool = opt(False, "torch on CUDA: torch.compile the networks", flag="--torch-compile")
    channels_last: bool = opt(True, "torch on CUDA: channels-last memory format", cli=False)
    model_dir: Path | None = opt(None, "onnx/tensorrt: folder from `stylestream export --to onnx` (default: cache)",
                                 metavar="DIR")
    providers: tuple[str, ...] | None = opt(None, "onnx: ONNX Runtime execution providers, in order (default: CPU, "
                                                  "or CUDA on a CUDA device)", cli=False)
    ort_tensorrt: bool = opt(False, "onnx on CUDA: put ONNX Runtime's TensorRT provider first", cli=False)
    cache_dir: Path | None = opt(None, "tensorrt: engine cache folder (default ~/.cache/stylestream/tensorrt)",
                                 flag="--trt-cache", metavar="DIR")
    max_batch: int = opt(4, "tensorrt: largest batch the built engines accept", min=1, cli=False)
    triton_url: str | None = opt(None, "triton: server URL, http://host:8000 or grpc://host:8001 "
                                       "(default localhost:8000)", metavar="URL")
    model_prefix: str = opt(TRITON_PREFIX, "triton: prefix of the repository's model names", cli=False)
    timeout_s: float = opt(2.0, "triton: per-request (and connection) timeout in seconds; a live stream sends frames "
                                "without the model while the server does not answer", min=0.001,
                           flag="--triton-timeout", metavar="S")


# option → the backends that take it (one table: make_engine checks it, engines record only their own options)
OPTION_BACKENDS: dict[str, tuple[str, ...]] = {
    "threads": ("torch", "onnx"),
    "cuda_graphs": ("torch",),
    "compile": ("torch",),
    "channels_last": ("torch",),
    "model_dir": ("onnx", "tensorrt"),
    "providers": ("onnx",),
    "ort_tensorrt": ("onnx",),
    "cache_dir": ("tensorrt",),
    "max_batch": ("tensorrt",),
    "triton_url": ("triton",),
    "model_prefix": ("triton",),
    "timeout_s": ("triton",),
}
assert set(OPTION_BACKENDS) == {f.name for f in dataclasses.fields(EngineOptions)}, "one backend entry per option"


@dataclass(frozen=True)
class EngineSpec:
    """Which engine to build: ``make_engine(bundle, spec)``. An engine's own ``spec`` has ``backend``, ``device``
    and ``precision`` resolved (no ``auto``) and only the options its backend takes."""

    backend: str = opt("auto", "engine: auto (onnx on CPU after a one-time export, torch on CUDA), torch (eager), "
                               "onnx (ONNX Runtime), tensorrt, triton", choices=BACKENDS)
    device: str = opt("auto", "cpu, cuda, cuda:N or auto (CUDA when present)", metavar="DEVICE")
    precision: str = opt("auto", "fp32, fp16, bf16 (torch only) or auto (fp16 on CUDA, fp32 on CPU)",
                         choices=PRECISIONS)
    options: EngineOptions = field(default_factory=EngineOptions)  # backend options


def options_for(backend: str, options: EngineOptions) -> EngineOptions:
    """``options`` with every option ``backend`` does not take back at its default."""
    defaults = EngineOptions()
    return dataclasses.replace(options, **{name: getattr(defaults, name) for name, backends in OPTION_BACKENDS.items()
                                           if backend not in backends})


def check_options(backend: str, options: EngineOptions) -> None:
    """One UserError naming the flag when an option is set (≠ default) for a backend that does not take it."""
    for f in fields(EngineOptions):
        backends = OPTION_BACKENDS[f.name]
        if backend not in backends and getattr(options, f.name) != f.default:
            name = f.flag if f.cli else f"option {f.name}"
            raise UserError(f"{name} applies to --backend {' / '.join(backends)}, not {backend}")


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


def resolve_backend(backend: str, device: str | torch.device = "auto") -> str:
    """``auto`` → ``onnx`` on CPU when ONNX Runtime is installed, else ``torch``; other names unchanged."""
    if backend != "auto":
        return backend
    if resolve_device(device).type != "cpu":
        return "torch"  # TensorRT is the fast CUDA path but needs an offline build; eager fp16 torch always works
    return "onnx" if importlib.util.find_spec("onnxruntime") is not None else "torch"


@runtime_checkable
class Engine(Protocol):
    """Model work of the pipeline. All tensors cross this interface on ``device``.

    ``encode_key(crops)``: crops [B, 3, S, S] float in [-1, 1] → W+ [B, num_ws, w_dim] float32 (FrEN).
    ``encode_reuse(crops, prev_ws)``: + prev W+ [B, num_ws, w_dim] → W+ with new coarse layers and the fine layers
    of ``prev_ws`` exactly (ViEN; ``encode_coarse`` when the bundle has no ViEN).
    ``encode_coarse(crops, prev_ws)``: the same contract without ViEN — the coarse layers are the key-frame
    encoder's for these crops (its coarse-only forward: an e4e / pSp encoder skips its fine heads), the fine layers
    are ``prev_ws``'s exactly. The pipeline's ``--reuse coarse``.
    ``synthesize(ws, style_deltas=None)``: W+ [B, num_ws, w_dim] → image [B, 3, R, R] float32, roughly [-1, 1].
    ``close()``: free what the engine holds (sessions, graphs, device memory); the bundle is the caller's."""

    name: str  # backend name: "torch", "onnx", "tensorrt", "triton"
    device: torch.device  # where inputs/outputs live
    precision: str  # "fp32" | "fp16" | "bf16" inside the engine (inputs and outputs are float32 either way)
    spec: EngineSpec  # how it was made (backend, device, precision resolved): engine_like builds the same kind
    crop_size: int  # S: encoder input side
    resolution: int  # R: generator output side
    num_ws: int  # W+ entries
    w_dim: int  # width of one W+ entry
    num_coarse: int  # leading W+ entries ViEN predicts; the rest are reused from the previous frame
    has_vien: bool  # False: encode_reuse is encode_coarse
    bundle: Bundle  # the models it runs, as given (never modified by the engine)
    max_batch: int | None  # the most rows one call takes (a TensorRT profile, a Triton model config); None: any

    def encode_key(self, crops: torch.Tensor) -> torch.Tensor: ...

    def encode_reuse(self, crops: torch.Tensor, prev_ws: torch.Tensor) -> torch.Tensor: ...

    def encode_coarse(self, crops: torch.Tensor, prev_ws: torch.Tensor) -> torch.Tensor: ...

    def synthesize(self, ws: torch.Tensor, style_deltas: dict[str, torch.Tensor] | None = None) -> torch.Tensor: ...

    def close(self) -> None: ...


class BaseEngine:
    """The declared attributes and input checks every engine shares. Subclasses set ``name`` (class attribute),
    ``device``, ``precision`` and ``has_vien``, call :meth:`_set_geometry` and :meth:`_set_spec`."""

    name: str
    device: torch.device
    precision: str
    spec: EngineSpec
    max_batch: int | None = None
    crop_size: int
    resolution: int
    num_ws: int
    w_dim: int
    num_coarse: int
    has_vien: bool
    bundle: Bundle

    def _set_geometry(self, bundle: Bundle) -> None:
        if bundle.fren is None:
            raise UserError(f"bundle {bundle.name!r} has no frame encoder (FrEN), so it cannot encode video; "
                            "train one with `stylestream train` or use a bundle that has encoders")
        self.bundle = bundle
        g = bundle.generator
        self.crop_size = bundle.crop_size
        self.resolution = g.img_resolution
        self.num_ws, self.w_dim = g.num_ws, g.w_dim
        self.num_coarse = g.layout.num_coarse

    def _set_spec(self, options: EngineOptions) -> None:
        """Record how this engine was made: its backend, resolved device and precision, and its options."""
        self.spec = check(EngineSpec(self.name, str(self.device), self.precision, options))

    def _check_crops(self, crops: torch.Tensor) -> None:
        s = self.crop_size
        if crops.ndim != 4 or crops.shape[1:] != (3, s, s):
            raise ValueError(f"crops must be [B, 3, {s}, {s}], got {tuple(crops.shape)}")

    def _with_fine(self, coarse: torch.Tensor, prev_ws: torch.Tensor) -> torch.Tensor:
        """W+ [B, num_ws, w_dim] float32 on ``device``: ``coarse`` [B, ≥ num_coarse, w_dim] for the coarse entries,
        ``prev_ws``'s fine entries exactly."""
        c = self.num_coarse
        return torch.cat([coarse[:, :c].float(), prev_ws[:, c:].to(self.device, torch.float32)], dim=1)

    def _check_ws(self, ws: torch.Tensor, what: str = "ws", batch: int | None = None) -> None:
        if ws.ndim != 3 or ws.shape[1:] != (self.num_ws, self.w_dim) or (batch is not None and ws.shape[0] != batch):
            b = batch if batch is not None else "B"
            raise ValueError(f"{what} must be [{b}, {self.num_ws}, {self.w_dim}], got {tuple(ws.shape)}")
