"""make_engine (an :class:`EngineSpec` → the engine) and engine_like (the same kind of engine for another bundle)."""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from pathlib import Path

from models.bundle import Bundle
from models.config import check
from realtime.engines.base import (
    OPTION_BACKENDS,
    Engine,
    EngineOptions,
    EngineSpec,
    check_options,
    options_for,
    resolve_backend,
    resolve_device,
)
from realtime.engines.exported import ProgressFn
from realtime.engines.onnxrt import OrtEngine
from realtime.engines.tensorrt import TrtEngine
from realtime.engines.torch_engine import TorchEngine
from realtime.engines.triton import TritonEngine

log = logging.getLogger("stylestream.engines")

_ENGINES: dict[str, type] = {"torch": TorchEngine, "onnx": OrtEngine, "tensorrt": TrtEngine, "triton": TritonEngine}
_TAKES_PROGRESS = ("onnx", "tensorrt")  # backends that may export / build first and report it


def _build(bundle: Bundle, backend: str, spec: EngineSpec, progress: ProgressFn | None) -> Engine:
    options = {f.name: getattr(spec.options, f.name) for f in dataclasses.fields(EngineOptions)
               if backend in OPTION_BACKENDS[f.name]}
    if backend in _TAKES_PROGRESS:
        options["progress"] = progress
    return _ENGINES[backend](bundle, device=spec.device, precision=spec.precision, **options)


def make_engine(bundle: Bundle, spec: EngineSpec | None = None, *, progress: ProgressFn | None = None) -> Engine:
    """Build the engine ``spec`` asks for (default: ``EngineSpec()``, i.e. ``auto`` everything).

    The spec is validated first (:func:`models.config.check`); an option set for a backend that does not take it is
    one UserError naming its flag. ``auto`` resolves with :func:`resolve_backend`; when that picks onnx without a
    ``model_dir`` and ONNX Runtime or the export fails, the torch engine is built instead (one warning on stderr).
    ``progress`` receives the export / engine-build messages of the onnx and tensorrt backends (default: stderr).
    The engine's own ``spec`` records what was built (backend, device and precision resolved)."""
    spec = check(spec if spec is not None else EngineSpec())
    backend = resolve_backend(spec.backend, spec.device)
    check_options(backend, spec.options)
    if spec.backend == "auto" and backend == "onnx" and spec.options.model_dir is None:
        try:
            return _build(bundle, "onnx", spec, progress)
        except Exception as exc:  # noqa: BLE001 - any export / runtime failure: the torch engine still works
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            print(f"stylestream: cannot use ONNX Runtime for this bundle ({msg[:200]}); using the torch engine "
                  "(pass --backend to choose)", file=sys.stderr, flush=True)
            backend = "torch"
            spec = dataclasses.replace(spec, options=options_for("torch", spec.options))
    return _build(bundle, backend, spec, progress)


def engine_like(like: Engine, bundle: Bundle, model_dir: str | os.PathLike | None = None) -> Engine:
    """An engine for ``bundle`` — in practice ``like``'s bundle with an adapted generator (live calibration) — of
    the same backend, device, precision and options as ``like`` (from ``like.spec``), for one stream.

    torch: a new :class:`TorchEngine`. onnx: from ``model_dir``, where the bundle has been exported already (the
    calibration worker does that, off the serving process). tensorrt / triton: rebuilding TensorRT engines takes
    minutes and a Triton repository lives on the server, so these streams run the torch engine on the same device
    instead (logged). ``threads`` is left alone (torch's setting is process-wide; the first engine set it)."""
    spec = like.spec
    options = dataclasses.replace(spec.options, threads=0)
    if spec.backend == "onnx":
        if model_dir is None:
            raise ValueError("engine_like for an onnx engine needs the folder the bundle was exported to")
        return make_engine(bundle, dataclasses.replace(spec, options=dataclasses.replace(options,
                                                                                         model_dir=Path(model_dir))))
    if spec.backend != "torch":
        log.warning("%s backend: a calibrated stream runs the torch engine on %s (engines are not rebuilt live)",
                    spec.backend, spec.device)
        precision = spec.precision if resolve_device(spec.device).type == "cuda" else "fp32"
        return make_engine(bundle, EngineSpec("torch", spec.device, precision))
    return make_engine(bundle, dataclasses.replace(spec, options=options))
