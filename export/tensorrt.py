"""TensorRT engines from the exported ONNX files (TensorRT ≥ 8.6 Python API; written against 10.x).

* :func:`build_engine` parses an ``.onnx`` file, builds a serialized engine with fp16 allowed (``precision="fp16"``),
  one optimisation profile covering batch 1 … ``max_batch`` (optimum at ``opt_batch``) for every input, and a
  timing cache kept beside the engines so rebuilds take seconds. Engines are cached on disk under names that
  encode everything that makes one engine differ from another:
  ``{stem}-{onnx sha256[:16]}-b{min}-{opt}-{max}-{precision}-{gpu name}-sm{cc}-trt{version}.plan``
  so a new model, new shapes, another GPU or another TensorRT version never picks up a stale engine.

This module is the *build* side. Running an engine (:class:`realtime.engines.tensorrt.TrtModel`, on torch's current
CUDA stream) is the engines' business.

TensorRT is optional: importing this module never fails, :func:`require_tensorrt` raises one clear
:class:`~models.errors.UserError` where it (or CUDA) is missing. PyPI's ``tensorrt`` wheels need an NVIDIA driver
and CUDA; on a machine without them install nothing and use ``--backend onnx``.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from export.artifacts import default_trt_cache
from models.errors import UserError
from models.files import atomic_write_bytes, file_sha256

TIMING_CACHE_NAME = "timing.cache"


def require_tensorrt() -> Any:
    """Import tensorrt, or raise a UserError saying why it cannot be used here."""
    try:
        import tensorrt as trt  # noqa: PLC0415 - optional, and the PyPI stub raises at import
    except Exception as exc:  # ImportError, or the PyPI stub package raising at import
        raise UserError("TensorRT is not installed (or is only the PyPI stub): install NVIDIA TensorRT ≥ 8.6 for "
                        "your CUDA version (`pip install tensorrt` on a machine with an NVIDIA driver), or use "
                        f"--backend onnx / torch [{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}]"
                        ) from None
    if not hasattr(trt, "Builder"):
        raise UserError("the installed `tensorrt` package is a stub without the TensorRT runtime; install the real "
                        "NVIDIA TensorRT wheels, or use --backend onnx / torch")
    if not torch.cuda.is_available():
        raise UserError("TensorRT needs a CUDA device, and torch sees none (install a CUDA build of torch)")
    return trt


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def engine_name(onnx_path: str | os.PathLike, precision: str, batches: tuple[int, int, int],
                device: torch.device | None = None, trt_version: str | None = None) -> str:
    """Cache file name for an engine: model hash + shapes + precision + GPU + TensorRT version."""
    p = Path(onnx_path)
    stem = p.name.removesuffix(".onnx").split(".")[0]
    dev = device or torch.device("cuda")
    gpu = _slug(torch.cuda.get_device_name(dev)) if torch.cuda.is_available() else "nogpu"
    cc = "".join(map(str, torch.cuda.get_device_capability(dev))) if torch.cuda.is_available() else "0"
    if trt_version is None:
        trt_version = require_tensorrt().__version__
    b0, b1, b2 = batches
    return (f"{stem}-{file_sha256(p)[:16]}-b{b0}-{b1}-{b2}-{precision}-{gpu}-sm{cc}-trt{trt_version}.plan")


class TrtLogger:
    """TensorRT logger that keeps warnings/errors for error messages (and prints nothing by default)."""

    def __init__(self, trt: Any, verbose: bool = False):
        self.trt = trt
        self.lines: list[str] = []
        sev = trt.Logger.VERBOSE if verbose else trt.Logger.WARNING
        outer = self

        class L(trt.ILogger):  # type: ignore[misc, name-defined]
            def __init__(self) -> None:
                trt.ILogger.__init__(self)

            def log(self, severity: Any, msg: str) -> None:
                if int(severity) <= int(sev):
                    outer.lines.append(str(msg))
                    if verbose:
                        print(f"[TensorRT] {msg}")

        self.logger = L()


def build_engine(onnx_path: str | os.PathLike, precision: str = "fp16", cache_dir: str | os.PathLike | None = None,
                 max_batch: int = 8, opt_batch: int = 1, min_batch: int = 1, workspace_gib: float = 4.0,
                 force: bool = False, progress: Callable[[str], None] | None = None) -> Path:
    """Build (or reuse from ``cache_dir``) a TensorRT engine for ``onnx_path``; returns the ``.plan`` path.

    Every input gets one optimisation profile over the batch dimension (``min_batch`` ≤ opt ≤ ``max_batch``); the
    other dimensions come from the ONNX file. ``precision="fp16"`` enables FP16 kernels (TensorRT still picks fp32
    where faster or needed); the float32 interface of our exports is kept."""
    trt = require_tensorrt()
    if precision not in ("fp32", "fp16"):
        raise UserError(f"unknown TensorRT precision {precision!r} (fp32 or fp16)")
    if not (1 <= min_batch <= opt_batch <= max_batch):
        raise UserError(f"need 1 ≤ min batch ≤ opt batch ≤ max batch, got {min_batch}, {opt_batch}, {max_batch}")
    onnx_path = Path(onnx_path)
    if not onnx_path.exists():
        raise UserError(f"ONNX file not found: {onnx_path}")
    cache = Path(cache_dir) if cache_dir is not None else default_trt_cache()
    cache.mkdir(parents=True, exist_ok=True)
    plan = cache / engine_name(onnx_path, precision, (min_batch, opt_batch, max_batch), trt_version=trt.__version__)
    if plan.exists() and not force:
        return plan
    say = progress or (lambda _m: None)
    log = TrtLogger(trt)
    builder = trt.Builder(log.logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH") and int(trt.__version__.split(".")[0]) < 10:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, log.logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"TensorRT cannot parse {onnx_path.name}: {errs or 'unknown error'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if precision == "fp16":
        if not getattr(builder, "platform_has_fast_fp16", True):
            say("warning: this GPU has no fast fp16; building anyway")
        config.set_flag(trt.BuilderFlag.FP16)
    elif hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # fp32 means fp32: TF32 (on by default) misses the 1e-4 parity bound
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        t = network.get_input(i)
        rest = tuple(int(t.shape[j]) for j in range(1, len(t.shape)))
        if any(d < 0 for d in rest):
            raise UserError(f"{onnx_path.name}: input {t.name} has dynamic non-batch dims {tuple(t.shape)}")
        profile.set_shape(t.name, (min_batch, *rest), (opt_batch, *rest), (max_batch, *rest))
    config.add_optimization_profile(profile)
    tc_path = cache / TIMING_CACHE_NAME
    timing = config.create_timing_cache(tc_path.read_bytes() if tc_path.exists() else b"")
    config.set_timing_cache(timing, ignore_mismatch=False)
    say(f"building TensorRT {precision} engine for {onnx_path.name} (batch {min_batch}…{max_batch}); "
        "first builds take minutes")
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UserError(f"TensorRT failed to build {onnx_path.name}: " + " | ".join(log.lines[-3:]))
    atomic_write_bytes(plan, bytes(serialized))
    atomic_write_bytes(tc_path, bytes(config.get_timing_cache().serialize()))
    say(f"built {plan.name} in {time.perf_counter() - t0:.0f} s")
    return plan
