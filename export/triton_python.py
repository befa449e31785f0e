"""Triton model repository that runs a bundle's ONNX exports with ONNX Runtime inside Triton's *Python backend*.

The same model names and tensor signatures as :mod:`export.triton` (so :class:`realtime.engines.TritonEngine`
cannot tell them apart), for servers that have no ONNX Runtime / TensorRT backend — in particular the
``tritonserver`` that the ``nvidia-pytriton`` wheel carries (Triton 2.51 with only the Python backend), which
:class:`realtime.engines.triton_server.TritonServer` starts on a CPU machine::

    DIR/
      stylestream_fren/        config.pbtxt (backend "python"), stylestream.json, 1/model.py, 1/model.onnx
      stylestream_vien/        (when the bundle has a ViEN)
      stylestream_synthesis/
      stylestream_keyframe/    ensemble crops → FrEN → synthesis → (ws, image), as in export/triton.py

    stylestream_fren       crops [B, 3, S, S] FP32                                → ws    [B, num_ws, w_dim] FP32
    stylestream_vien       crops [B, 3, S, S], prev_ws [B, num_ws, w_dim] FP32    → ws    [B, num_ws, w_dim] FP32
    stylestream_synthesis  ws [B, num_ws, w_dim] FP32                             → image [B, 3, R, R] FP32

``model.py`` is :mod:`export.triton_python_model`: one ONNX Runtime CPU session per instance; the requests the
dynamic batcher merges (up to ``max_batch`` rows, waiting at most ``queue_delay_us`` for more) are concatenated and
run as one batch. The server's Python environment needs numpy, onnxruntime and torch (the project's own).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from export.artifacts import TRITON_PREFIX, bundle_hash, onnx_filename, read_manifest, triton_model_name
from export.onnx import available_models, export_bundle
from export.triton import ensemble_config, tensors_config, write_model_dir
from models.bundle import Bundle
from models.errors import UserError

MODEL_PY = Path(__file__).with_name("triton_python_model.py")
DEFAULT_QUEUE_DELAY_US = 2000


def python_model_config(name: str, entry: dict[str, Any], max_batch: int, queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
                        instances: int = 1, threads: int = 1, preferred: Sequence[int] = ()) -> str:
    """config.pbtxt text of one Python-backend model for the exported ONNX model ``entry`` (manifest entry):
    same tensors as :func:`export.triton.model_config`, ``instances`` CPU instances of ``threads`` ORT threads.

    No ``preferred_batch_size`` by default: with 1 among them a lone request always forms a preferred batch, so the
    batcher never waits ``queue_delay_us`` and merges only what queued while the instance was busy, into preferred
    sizes (measured on this CPU, 8 concurrent clients: mean batch 2.0 with [1, 2, 4, 8] at 50 ms delay, 8.0
    without; docs/triton.md)."""
    pref = f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]\n" if preferred else ""
    return (f'name: "{name}"\nbackend: "python"\nmax_batch_size: {max_batch}\n'
            + tensors_config("input", entry["inputs"]) + tensors_config("output", entry["outputs"])
            + "dynamic_batching {\n" + pref
            + f"  max_queue_delay_microseconds: {queue_delay_us}\n}}\n"
            + f"instance_group [\n  {{\n    count: {instances}\n    kind: KIND_CPU\n  }}\n]\n"
            + 'parameters {\n  key: "intra_op_threads"\n  value: { string_value: "' + str(threads) + '" }\n}\n'
            + "version_policy: { latest: { num_versions: 1 } }\n")


def write_python_repository(bundle: Bundle, out_dir: str | os.PathLike, precisions: Iterable[str] = ("fp32",),
                            max_batch: int = 8, queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
                            onnx_dir: str | os.PathLike | None = None, version: int = 1, instances: int = 1,
                            threads: int = 1, ensemble: bool = True, prefix: str = TRITON_PREFIX,
                            progress: Callable[[str], None] | None = None) -> list[str]:
    """Write (or update) a Python-backend Triton repository at ``out_dir``; returns the model names written.

    ``onnx_dir``: an existing ONNX export of this bundle (``stylestream export --to onnx``) to copy from; otherwise
    the models are exported into a temporary folder first. Each model folder is swapped into place whole."""
    precisions = list(precisions)
    if max_batch < 1:
        raise UserError(f"--max-batch must be ≥ 1, got {max_batch}")
    if queue_delay_us < 0:
        raise UserError(f"queue delay must be ≥ 0 µs, got {queue_delay_us}")
    if instances < 1 or threads < 1:
        raise UserError(f"instances and threads must be ≥ 1, got {instances} and {threads}")
    if onnx_dir is None:
        with tempfile.TemporaryDirectory(prefix="stylestream-onnx-") as tmp:
            for p in precisions:
                export_bundle(bundle, tmp, precision=p, max_batch=max_batch, progress=progress)
            return write_python_repository(bundle, out_dir, precisions, max_batch, queue_delay_us, tmp, version,
                                           instances, threads, ensemble, prefix, progress)
    out = Path(out_dir)
    say = progress or (lambda _m: None)
    src = Path(onnx_dir)
    manifest = read_manifest(src)
    if manifest.get("bundle_hash") != bundle_hash(bundle):
        raise UserError(f"{src} was exported from another bundle ({manifest.get('bundle_name')!r})")
    models = available_models(bundle)
    for p in precisions:
        missing = [m for m in models if f"{m}.{p}" not in manifest.get("models", {})]
        if missing:
            raise UserError(f"{src} lacks the {p} export of {', '.join(missing)}")
    model_py = MODEL_PY.read_text()
    written: list[str] = []
    for p in precisions:
        for m in models:
            entry = manifest["models"][f"{m}.{p}"]
            name = triton_model_name(m, p, prefix)
            files = {
                "config.pbtxt": python_model_config(name, entry, max_batch, queue_delay_us, instances, threads),
                "stylestream.json": json.dumps({"bundle_name": manifest["bundle_name"],
                                                "bundle_hash": manifest["bundle_hash"], "model": m, "precision": p,
                                                "backend": "python+onnxruntime", "opset": manifest["opset"],
                                                "preprocess": manifest["preprocess"], "sha256": entry["sha256"]},
                                               indent=2) + "\n",
            }
            write_model_dir(out / name, files, src / onnx_filename(m, p), version, {"model.py": model_py})
            say(f"triton python-backend model {name} (version {version}, max batch {max_batch}, "
                f"queue delay {queue_delay_us} µs)")
            written.append(name)
        if ensemble:
            name = triton_model_name("keyframe", p, prefix)
            cfg = ensemble_config(name, triton_model_name("fren", p, prefix), triton_model_name("synthesis", p, prefix),
                                  manifest, p, max_batch)
            write_model_dir(out / name, {"config.pbtxt": cfg}, None, version)
            say(f"triton ensemble {name}: crops → fren → synthesis → (ws, image)")
            written.append(name)
    return written
