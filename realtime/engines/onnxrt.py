"""OrtEngine: ONNX Runtime on the exported FrEN / ViEN / synthesis (/ fren_coarse) graphs (export/onnx.py)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from export.artifacts import default_trt_cache, onnx_filename
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


class OrtEngine(ExportedEngine):
    """ONNX Runtime on the exported FrEN / ViEN / synthesis models.

    CPU: the CPU execution provider, numpy views of the torch tensors (no copies beyond ORT's own). CUDA (needs
    onnxruntime-gpu): the CUDA provider — or TensorRT first with ``ort_tensorrt=True`` — with I/O bound straight
    to torch CUDA tensors. ``model_dir`` is a folder from ``stylestream export --to onnx``; without it the bundle is
    exported once into the user cache."""

    name = "onnx"

    def __init__(self, bundle: Bundle, device: str | torch.device = "auto", precision: str = "auto",
                 model_dir: str | os.PathLike | None = None, threads: int = 0,
                 providers: Sequence[str] | None = None, ort_tensorrt: bool = False,
                 progress: ProgressFn | None = None):
        self._set_geometry(bundle)
        self.device = resolve_device(device)
        self.precision = exported_precision(precision, self.device, "onnx")
        self._set_spec(EngineOptions(model_dir=Path(model_dir) if model_dir is not None else None, threads=threads,
                                     providers=tuple(providers) if providers is not None else None,
                                     ort_tensorrt=ort_tensorrt))
        available = ort.get_available_providers()
        if providers is None:
            if self.device.type == "cuda":
                if "CUDAExecutionProvider" not in available:
                    raise UserError("ONNX Runtime has no CUDA provider here (installed: "
                                    f"{', '.join(available)}); `pip install onnxruntime-gpu` or use --device cpu")
                providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
                if ort_tensorrt:
                    if "TensorrtExecutionProvider" not in available:
                        raise UserError("ONNX Runtime has no TensorRT provider here; install onnxruntime-gpu with "
                                        "TensorRT libraries, or drop ort_tensorrt")
                    providers.insert(0, "TensorrtExecutionProvider")
            else:
                providers = ["CPUExecutionProvider"]
        else:
            unknown = [p for p in providers if p not in available]
            if unknown:
                raise UserError(f"ONNX Runtime providers {unknown} are not available (have {', '.join(available)})")
        required, optional = engine_models(bundle)
        self.model_dir = ensure_onnx(bundle, model_dir, self.precision, required, progress, optional)
        models = required + present_models(self.model_dir, bundle, self.precision, optional)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.device.type == "cpu":
            # ORT's idle intra-op threads spin by default; on a small CPU they take the cores from the tracking
            # and capture threads: the default bundle's pipeline runs 65–73 fps spinning, 92–104 fps not
            # (docs/pipeline.md), and a live calibration's worker gets CPU time.
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        prov_list: list[Any] = []
        for p in providers:
            if p == "TensorrtExecutionProvider":
                prov_list.append((p, {"trt_fp16_enable": self.precision == "fp16", "trt_engine_cache_enable": True,
                                      "trt_engine_cache_path": str(default_trt_cache() / "ort"),
                                      "trt_timing_cache_enable": True}))
            elif p == "CUDAExecutionProvider":
                prov_list.append((p, {"device_id": self.device.index or 0}))
            else:
                prov_list.append(p)
        self.sessions: dict[str, Any] = {}
        for m in models:
            path = self.model_dir / onnx_filename(m, self.precision)
            try:
                self.sessions[m] = ort.InferenceSession(str(path), sess_options=opts, providers=prov_list)
            except Exception as exc:  # ORT raises its own exception types (Fail, InvalidGraph, …)
                raise UserError(f"ONNX Runtime cannot load {path}: {str(exc).splitlines()[0]}") from None
        self.providers = self.sessions["fren"].get_providers()
        self.has_vien = "vien" in self.sessions
        self.coarse_model = "fren_coarse" in self.sessions
        self._style_fallback = StyleFallback(bundle, self.device, self.name)

    def _run(self, model: str, feed: dict[str, torch.Tensor], out_shape: tuple[int, ...]) -> torch.Tensor:
        sess = self.sessions[model]
        if self.device.type == "cpu":
            arrays = {k: v.detach().to("cpu", torch.float32).contiguous().numpy() for k, v in feed.items()}
            out = sess.run(None, arrays)[0]
            return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))
        binding = sess.io_binding()
        keep = []
        for k, v in feed.items():
            t = v.detach().to(self.device, torch.float32).contiguous()
            keep.append(t)
            binding.bind_input(k, "cuda", self.device.index or 0, np.float32, list(t.shape), t.data_ptr())
        out_t = torch.empty(out_shape, dtype=torch.float32, device=self.device)
        name = sess.get_outputs()[0].name
        binding.bind_output(name, "cuda", self.device.index or 0, np.float32, list(out_shape), out_t.data_ptr())
        torch.cuda.current_stream(self.device).synchronize()  # ORT uses its own stream: inputs must be ready
        sess.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return out_t

    def _call(self, model: str, feed: dict[str, torch.Tensor]) -> torch.Tensor:
        b, r = next(iter(feed.values())).shape[0], self.resolution
        shape = ((b, 3, r, r) if model == "synthesis" else (b, self.num_coarse, self.w_dim) if model == "fren_coarse"
                 else (b, self.num_ws, self.w_dim))
        return self._run(model, feed, shape)

    def close(self) -> None:
        self.sessions.clear()
