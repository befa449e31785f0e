"""Running TensorRT engines: :class:`TrtModel` (one ``.plan`` on torch's current CUDA stream), :class:`TrtEngine`
(the Engine over the three models) and :func:`trt_runner` (TensorRT for :mod:`export.parity`).

Building the ``.plan`` files is the export side (:func:`export.tensorrt.build_engine`, cached by model hash,
batch profile, precision, GPU and TensorRT version). TensorRT is optional: every entry point raises one clear
UserError where it (or CUDA) is missing (:func:`export.tensorrt.require_tensorrt`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from export.artifacts import IO_NAMES, onnx_filename
from export.parity import Runner, RunnerFactory
from export.tensorrt import TrtLogger, build_engine, require_tensorrt
from models.bundle import Bundle
from models.errors import UserError
from realtime.engines.base import EngineOptions, resolve_device
from realtime.engines.exported import (
    ExportedEngine,
    ProgressFn,
    StyleFallback,
    engine_models,
    ensure_onnx,
    exported_precision,
    present_models,
)


def _torch_dtype(trt: Any, dt: Any) -> torch.dtype:
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32, trt.int8: torch.int8,
             trt.bool: torch.bool}
    if hasattr(trt, "int64"):
        table[trt.int64] = torch.int64
    if hasattr(trt, "bfloat16"):
        table[trt.bfloat16] = torch.bfloat16
    if dt not in table:
        raise UserError(f"TensorRT tensor type {dt} is not supported by stylestream")
    return table[dt]


class TrtModel:
    """One deserialized engine + execution context, run on torch's current CUDA stream.

    ``model({name: tensor})`` → ``{output name: tensor}``; inputs are made contiguous on the device in the engine's
    dtype; outputs are fresh tensors (copied out of the preallocated bindings, sized for the profile's max batch,
    so the next call cannot clobber them). No host copies, no extra synchronisation."""

    def __init__(self, plan: str | os.PathLike, device: torch.device | str = "cuda"):
        trt = require_tensorrt()
        self.trt = trt
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise UserError("TensorRT engines run on CUDA devices only")
        self._log = TrtLogger(trt)
        with torch.cuda.device(self.device):
            self.runtime = trt.Runtime(self._log.logger)
            self.engine = self.runtime.deserialize_cuda_engine(Path(plan).read_bytes())
            if self.engine is None:
                raise UserError(f"cannot load TensorRT engine {plan} (built for another GPU or TensorRT version?): "
                                + " | ".join(self._log.lines[-2:]))
            self.context = self.engine.create_execution_context()
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.dtypes: dict[str, torch.dtype] = {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            self.dtypes[name] = _torch_dtype(trt, self.engine.get_tensor_dtype(name))
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.inputs.append(name)
            else:
                self.outputs.append(name)
        first = self.inputs[0]
        _, _, mx = self.engine.get_tensor_profile_shape(first, 0)
        self.max_batch = int(mx[0])
        self.min_batch = int(self.engine.get_tensor_profile_shape(first, 0)[0][0])
        # preallocated outputs at max batch: shapes from the context once inputs are at max
        for name in self.inputs:
            shape = tuple(int(d) for d in self.engine.get_tensor_profile_shape(name, 0)[2])
            self.context.set_input_shape(name, shape)
        self._out: dict[str, torch.Tensor] = {}
        for name in self.outputs:
            shape = tuple(int(d) for d in self.context.get_tensor_shape(name))
            self._out[name] = torch.empty(shape, dtype=self.dtypes[name], device=self.device)

    def __call__(self, feed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        missing = [n for n in self.inputs if n not in feed]
        if missing:
            raise ValueError(f"missing TensorRT inputs {missing} (engine takes {self.inputs})")
        b = int(feed[self.inputs[0]].shape[0])
        if not self.min_batch <= b <= self.max_batch:
            raise ValueError(f"batch {b} is outside the engine's profile {self.min_batch}…{self.max_batch}; "
                             "rebuild with a larger --max-batch")
        keep = []
        for name in self.inputs:
            t = feed[name].to(self.device, self.dtypes[name]).contiguous()
            keep.append(t)
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        for name in self.outputs:
            self.context.set_tensor_address(name, self._out[name].data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed: " + " | ".join(self._log.lines[-2:]))
        # a batch-B view of a max-batch buffer is contiguous (batch is the leading dimension)
        return {name: self._out[name][:b].clone() for name in self.outputs}


def trt_runner(cache_dir: str | os.PathLike | None = None, max_batch: int = 8,
               device: str | torch.device = "cuda") -> RunnerFactory:
    """TensorRT as a parity runtime: ``check_model(..., runtime="tensorrt", runner=trt_runner(cache))`` builds (or
    reuses from ``cache_dir``) an engine of each checked ONNX file and runs it on ``device``."""

    def make(path: Path, precision: str) -> tuple[Runner, str]:
        trt = require_tensorrt()
        plan = build_engine(path, precision=precision, cache_dir=cache_dir, max_batch=max_batch)
        model = TrtModel(plan, device=device)
        order = [o.name for o in onnx.load(str(path), load_external_data=False).graph.output]  # ONNX output order

        def run(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
            outs = model({k: torch.from_numpy(v).to(model.device) for k, v in feed.items()})
            return [outs[name].float().cpu().numpy() for name in order]

        return run, f"TensorRT {trt.__version__}"

    return make


class TrtEngine(ExportedEngine):
    """TensorRT engines (export/tensorrt.py) built from the ONNX exports, run on torch's current CUDA stream.

    Engines are cached on disk (``cache_dir``, default ~/.cache/stylestream/tensorrt) under names that encode the
    model hash, batch profile, precision, GPU and TensorRT version; the first start on a new GPU builds them."""

    name = "tensorrt"

    def __init__(self, bundle: Bundle, device: str | torch.device = "auto", precision: str = "auto",
                 model_dir: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                 max_batch: int = 4, progress: ProgressFn | None = None):
        require_tensorrt()  # before any export work: one clear message where TensorRT is missing
        self._set_geometry(bundle)
        self.device = resolve_device("cuda" if str(device) == "auto" else device)
        if self.device.type != "cuda":
            raise UserError("the tensorrt backend runs on CUDA only; use --backend onnx or torch on the CPU")
        self.precision = exported_precision(precision, self.device, "tensorrt")
        self._set_spec(EngineOptions(model_dir=Path(model_dir) if model_dir is not None else None,
                                     cache_dir=Path(cache_dir) if cache_dir is not None else None,
                                     max_batch=max_batch))
        required, optional = engine_models(bundle)
        self.model_dir = ensure_onnx(bundle, model_dir, self.precision, required, progress, optional)
        models = required + present_models(self.model_dir, bundle, self.precision, optional)
        self.models: dict[str, TrtModel] = {}
        with torch.cuda.device(self.device):
            for m in models:
                plan = build_engine(self.model_dir / onnx_filename(m, self.precision), precision=self.precision,
                                    cache_dir=cache_dir, max_batch=max_batch, progress=progress)
                self.models[m] = TrtModel(plan, self.device)
        self.has_vien = "vien" in self.models
        self.max_batch = min(m.max_batch for m in self.models.values())
        self.coarse_model = "fren_coarse" in self.models
        self._style_fallback = StyleFallback(bundle, self.device, self.name)

    def _call(self, model: str, feed: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.models[model]({k: v.to(self.device, torch.float32) for k, v in feed.items()})
        return out[IO_NAMES[model][1][0]].float()

    def close(self) -> None:
        self.models.clear()
