"""Triton Inference Server model repository for a bundle.

Layout written by :func:`write_model_repository` (``DIR`` is what ``tritonserver --model-repository DIR`` takes)::

    DIR/
      stylestream_fren/            config.pbtxt, 1/model.onnx, stylestream.json
      stylestream_vien/            (when the bundle has a ViEN)
      stylestream_synthesis/
      stylestream_fren_fp16/ …     fp16 variants (float32 interface, float16 inside) with --precision fp16
      stylestream_keyframe/        ensemble: crops → FrEN → ws → synthesis → (ws, image), one round trip per key frame

Every model uses the ONNX Runtime backend with dynamic batching (requests from many streams are merged up to
``max_batch``), one instance per GPU (``instance_kind="KIND_CPU"`` for CPU-only servers), and for fp16 variants the
TensorRT execution accelerator in FP16 mode. The batch dimension is implicit in Triton's ``dims``.
``stylestream serve --backend triton --triton-url http://host:8000`` (or ``grpc://host:8001``) uses it through
:class:`realtime.engines.TritonEngine` (model names: :func:`export.artifacts.triton_model_name`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from export.artifacts import TRITON_PREFIX, bundle_hash, onnx_filename, read_manifest, triton_model_name
from export.onnx import available_models, export_bundle
from models.bundle import Bundle, swap_dir_into_place
from models.errors import UserError


def _dims(shape: list[Any]) -> str:
    assert shape[0] == "batch", shape
    return "[ " + ", ".join(str(int(d)) for d in shape[1:]) + " ]"


def tensors_config(kind: str, specs: list[dict[str, Any]]) -> str:
    items = [f'  {{\n    name: "{s["name"]}"\n    data_type: TYPE_FP32\n    dims: {_dims(s["shape"])}\n  }}'
             for s in specs]
    return f"{kind} [\n" + ",\n".join(items) + "\n]\n"


def model_config(name: str, entry: dict[str, Any], max_batch: int, instance_kind: str = "KIND_GPU",
                 queue_delay_us: int = 2000) -> str:
    """config.pbtxt text for one exported ONNX model (manifest ``entry``)."""
    preferred = sorted({b for b in (1, 2, 4, 8, 16, 32) if b <= max_batch} | {max_batch})
    text = (f'name: "{name}"\nbackend: "onnxruntime"\nmax_batch_size: {max_batch}\n'
            + tensors_config("input", entry["inputs"]) + tensors_config("output", entry["outputs"])
            + "dynamic_batching {\n"
            + f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]\n"
            + f"  max_queue_delay_microseconds: {queue_delay_us}\n}}\n"
            + f"instance_group [\n  {{\n    count: 1\n    kind: {instance_kind}\n  }}\n]\n"
            + "version_policy: { latest: { num_versions: 1 } }\n")
    if entry["precision"] == "fp16" and instance_kind == "KIND_GPU":
        text += ("optimization {\n  execution_accelerators {\n    gpu_execution_accelerator: [\n    {\n"
                 '      name: "tensorrt"\n'
                 '      parameters { key: "precision_mode" value: "FP16" }\n'
                 '      parameters { key: "max_workspace_size_bytes" value: "4294967296" }\n'
                 '      parameters { key: "trt_engine_cache_enable" value: "1" }\n'
                 "    }\n    ]\n  }\n}\n")
    return text


def ensemble_config(name: str, fren: str, synthesis: str, manifest: dict[str, Any], precision: str,
                    max_batch: int) -> str:
    """config.pbtxt of the key-frame ensemble crops → (ws, image)."""
    models = manifest["models"]
    fin = models[f"fren.{precision}"]
    sout = models[f"synthesis.{precision}"]
    return (f'name: "{name}"\nplatform: "ensemble"\nmax_batch_size: {max_batch}\n'
            + tensors_config("input", fin["inputs"])
            + tensors_config("output", fin["outputs"] + sout["outputs"])
            + "ensemble_scheduling {\n  step [\n"
            + f'    {{\n      model_name: "{fren}"\n      model_version: -1\n'
            + '      input_map { key: "crops" value: "crops" }\n      output_map { key: "ws" value: "ws" }\n    },\n'
            + f'    {{\n      model_name: "{synthesis}"\n      model_version: -1\n'
            + '      input_map { key: "ws" value: "ws" }\n      output_map { key: "image" value: "image" }\n    }\n'
            + "  ]\n}\n")


def write_model_repository(bundle: Bundle, out_dir: str | os.PathLike, precisions: Iterable[str] = ("fp32",),
                           max_batch: int = 8, onnx_dir: str | os.PathLike | None = None, version: int = 1,
                           instance_kind: str = "KIND_GPU", ensemble: bool = True, prefix: str = TRITON_PREFIX,
                           progress: Callable[[str], None] | None = None) -> list[str]:
    """Write (or update) a Triton model repository at ``out_dir``; returns the model names written.

    ``onnx_dir``: an existing ONNX export of this bundle to copy from; otherwise the models are exported into a
    temporary folder first. Each model folder is written to a temporary sibling and renamed into place."""
    precisions = list(precisions)
    if instance_kind not in ("KIND_GPU", "KIND_CPU"):
        raise UserError(f"instance kind must be KIND_GPU or KIND_CPU, got {instance_kind!r}")
    if max_batch < 1:
        raise UserError(f"--max-batch must be ≥ 1, got {max_batch}")
    if onnx_dir is None:
        with tempfile.TemporaryDirectory(prefix="stylestream-onnx-") as tmp:
            for p in precisions:
                export_bundle(bundle, tmp, precision=p, max_batch=max_batch, progress=progress)
            return write_model_repository(bundle, out_dir, precisions, max_batch, tmp, version, instance_kind,
                                          ensemble, prefix, progress)
    out = Path(out_dir)
    say = progress or (lambda _m: None)
    src = Path(onnx_dir)
    models = available_models(bundle)
    manifest = read_manifest(src)
    if manifest.get("bundle_hash") != bundle_hash(bundle):
        raise UserError(f"{src} was exported from another bundle ({manifest.get('bundle_name')!r})")
    for p in precisions:
        missing = [m for m in models if f"{m}.{p}" not in manifest.get("models", {})]
        if missing:
            raise UserError(f"{src} lacks the {p} export of {', '.join(missing)}")
    written: list[str] = []
    for p in precisions:
        for m in models:
            entry = manifest["models"][f"{m}.{p}"]
            name = triton_model_name(m, p, prefix)
            files = {
                "config.pbtxt": model_config(name, entry, max_batch, instance_kind),
                "stylestream.json": json.dumps({"bundle_name": manifest["bundle_name"],
                                                "bundle_hash": manifest["bundle_hash"], "model": m, "precision": p,
                                                "opset": manifest["opset"], "preprocess": manifest["preprocess"],
                                                "sha256": entry["sha256"]}, indent=2) + "\n",
            }
            write_model_dir(out / name, files, src / onnx_filename(m, p), version)
            say(f"triton model {name} (version {version}, max batch {max_batch})")
            written.append(name)
        if ensemble:
            name = triton_model_name("keyframe", p, prefix)
            cfg = ensemble_config(name, triton_model_name("fren", p, prefix), triton_model_name("synthesis", p, prefix),
                                  manifest, p, max_batch)
            write_model_dir(out / name, {"config.pbtxt": cfg}, None, version)
            say(f"triton ensemble {name}: crops → fren → synthesis → (ws, image)")
            written.append(name)
    return written


def write_model_dir(path: Path, files: dict[str, str], onnx_file: Path | None, version: int,
                     version_files: dict[str, str] | None = None) -> None:
    """Write one model folder (``files`` at its top, ``version_files`` and ``model.onnx`` in ``version/``) to a
    temporary sibling and swap it into place."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        (tmp / str(version)).mkdir(parents=True)
        for fname, text in files.items():
            (tmp / fname).write_text(text)
        for fname, text in (version_files or {}).items():
            (tmp / str(version) / fname).write_text(text)
        if onnx_file is not None:
            shutil.copyfile(onnx_file, tmp / str(version) / "model.onnx")
        swap_dir_into_place(tmp, path)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"cannot write Triton model {path}: {exc.strerror or exc}") from None
