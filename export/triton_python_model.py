"""Triton Python-backend model: ONNX Runtime on ``model.onnx`` beside this file (copied there as ``model.py``).

:mod:`export.triton_python` copies this file into every model's version folder of a Python-backend repository;
it runs inside Triton's ``triton_python_backend_stub`` (not importable elsewhere: ``triton_python_backend_utils``
exists only there) and imports nothing from stylestream, so the repository is self-contained.

Per ``execute`` call Triton's dynamic batcher hands over a list of requests (the Python backend does *not*
concatenate them); they are concatenated along the batch dimension, run as one ONNX Runtime call, and the outputs
are split back per request:

    requests [r1: crops [b1, 3, S, S], r2: crops [b2, 3, S, S], …] → one run on [b1 + b2 + …, 3, S, S]
    → responses [r1: ws [b1, num_ws, w_dim], r2: ws [b2, num_ws, w_dim], …]

Tensors cross the stub by DLPack only (``np.from_dlpack`` in, ``Tensor.from_dlpack(torch.from_numpy(…))`` out):
the stub shipped with nvidia-pytriton 0.7.0 (Triton 2.51) was built against NumPy 1's C API, and under NumPy 2
``Tensor.as_numpy()`` returned wrong values and ``Tensor(name, array)`` was refused ("output tensor shape does not
match size of output") — measured, see docs/triton.md. DLPack works under NumPy 1 and 2.

Config parameters (``parameters { key: … value: { string_value: … } }`` in config.pbtxt): ``intra_op_threads``
(ONNX Runtime threads per instance, default 1), ``onnx_file`` (default ``model.onnx``).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """One model instance: an ONNX Runtime CPU session, inputs and outputs named as in config.pbtxt."""

    def initialize(self, args: dict[str, str]) -> None:
        cfg = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in cfg.get("parameters", {}).items()}
        folder = os.path.join(args["model_repository"], args["model_version"])
        path = os.path.join(folder, params.get("onnx_file") or "model.onnx")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = int(params.get("intra_op_threads") or 1)
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle threads must not spin
        self.session = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
        self.inputs = [t["name"] for t in cfg["input"]]
        self.outputs = [t["name"] for t in cfg["output"]]
        have = [i.name for i in self.session.get_inputs()]
        if have != self.inputs:
            raise pb_utils.TritonModelException(f"{path} takes inputs {have}, config.pbtxt names {self.inputs}")
        self.name = cfg["name"]

    def execute(self, requests: list[Any]) -> list[Any]:
        sizes: list[int] = []
        feeds: dict[str, list[np.ndarray]] = {n: [] for n in self.inputs}
        for r in requests:
            for n in self.inputs:
                feeds[n].append(np.from_dlpack(pb_utils.get_input_tensor_by_name(r, n)))
            sizes.append(int(feeds[self.inputs[0]][-1].shape[0]))
        try:
            batch = {n: arrs[0] if len(arrs) == 1 else np.concatenate(arrs) for n, arrs in feeds.items()}
            results = self.session.run(self.outputs, {n: np.ascontiguousarray(a, np.float32) for n, a in batch.items()})
        except Exception as exc:  # noqa: BLE001 - ORT's own exception types: every request gets the error
            err = pb_utils.TritonError(f"{self.name}: ONNX Runtime failed: {type(exc).__name__}: {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=err) for _ in requests]
        responses = []
        start = 0
        for b in sizes:
            tensors = [pb_utils.Tensor.from_dlpack(n, torch.from_numpy(np.ascontiguousarray(out[start:start + b])))
                       for n, out in zip(self.outputs, results)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += b
        return responses

    def finalize(self) -> None:
        self.session = None
