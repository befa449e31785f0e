"""The one Engine interface for model work, and its backends.

The pipeline's device worker only talks to an :class:`Engine`; which runtime executes the networks is invisible to
it. All tensors cross this interface on ``engine.device``:

    encode_key(crops)            crops [B, 3, S, S] float in [-1, 1]  → W+ [B, num_ws, w_dim] float32   (FrEN)
    encode_reuse(crops, prev)    + prev W+ [B, num_ws, w_dim]         → W+ (coarse new, fine = prev)     (ViEN)
    synthesize(ws, style_deltas) W+ → image [B, 3, R, R] float32, roughly [-1, 1]                     (generator)

and every engine declares ``name``, ``device``, ``precision``, ``spec`` (the :class:`EngineSpec` it was made
from, backend / device / precision resolved), ``crop_size``, ``resolution``, ``num_ws``, ``w_dim``, ``num_coarse``,
``has_vien`` and ``bundle`` — which it never modifies.

``make_engine(bundle, EngineSpec(backend=…, device=…, precision=…, options=EngineOptions(…)))``; backends:

* ``torch``     :class:`TorchEngine` (torch_engine.py): eager PyTorch; on CUDA fp16 + channels-last, optional
                CUDA-graph replay (``cuda_graphs``) and ``torch.compile`` (``compile``).
* ``onnx``      :class:`OrtEngine` (onnxrt.py): ONNX Runtime on the exported models (export/onnx.py); CPU execution
                provider, or the CUDA / TensorRT providers when onnxruntime-gpu is installed.
* ``tensorrt``  :class:`TrtEngine` (tensorrt.py): TensorRT engines built from the exported models
                (export/tensorrt.py), run on torch's current CUDA stream.
* ``triton``    :class:`TritonEngine` (triton.py): a Triton Inference Server holding the repository from
                export/triton.py.
* ``auto``      (the CLI default) onnx on CPU — 3× the eager torch pipeline on the default bundle, after a one-time
                export into the cache — and torch on CUDA; falls back to torch with a warning when ONNX Runtime is
                missing or the export fails.

:class:`EngineOptions` declares every backend option once (help, bounds, which backends take it:
:data:`OPTION_BACKENDS`); the CLI builds ``--model-dir``, ``--triton-url``, ``--cuda-graphs``, ``--torch-compile``
and ``--trt-cache`` from it (``realtime.cli.options.add_config``). :class:`BatchingEngine` shares one engine between
streams, merging their concurrent calls into batched ones (:class:`SerialEngine`: one call at a time).
:func:`engine_like` builds the same kind of engine for another bundle (a live calibration's).

StyleSpace ``style_deltas`` are not inputs of the exported graphs. The exported backends run a frame that carries
them through a torch copy of the synthesis network on the same device (logged once); W-space edits (added to ``ws``
before ``synthesize``) stay on the accelerated path.
"""

from __future__ import annotations

from realtime.engines.base import (
    BACKENDS,
    OPTION_BACKENDS,
    Engine,
    EngineOptions,
    EngineSpec,
    resolve_backend,
    resolve_device,
)
from realtime.engines.batching import BatchConfig, BatchingEngine
from realtime.engines.factory import engine_like, make_engine
from realtime.engines.onnxrt import OrtEngine
from realtime.engines.serial import SerialEngine
from realtime.engines.tensorrt import TrtEngine
from realtime.engines.torch_engine import TorchEngine
from realtime.engines.triton import TritonEngine

__all__ = [
    "BACKENDS",
    "OPTION_BACKENDS",
    "BatchConfig",
    "BatchingEngine",
    "Engine",
    "EngineOptions",
    "EngineSpec",
    "OrtEngine",
    "SerialEngine",
    "TorchEngine",
    "TritonEngine",
    "TrtEngine",
    "engine_like",
    "make_engine",
    "resolve_backend",
    "resolve_device",
]
