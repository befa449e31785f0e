"""The one Engine interface for model work, and its torch implementation.

The pipeline's device worker only talks to an :class:`Engine`; which runtime executes the networks (torch eager,
later ONNX Runtime / TensorRT / Triton) is invisible to it. All tensors cross this interface on ``engine.device``:

    encode_key(crops)            crops [B, 3, S, S] float in [-1, 1]  → W+ [B, num_ws, w_dim] float32   (FrEN)
    encode_reuse(crops, prev)    + prev W+ [B, num_ws, w_dim]         → W+ (coarse new, fine = prev)     (ViEN)
    synthesize(ws, style_deltas) W+ → image [B, 3, R, R] float32, roughly [-1, 1]                     (generator)

Backends (``make_engine(bundle, backend=…)``):

* ``torch``     TorchEngine: eager PyTorch; on CUDA fp16 + channels-last, optional CUDA-graph replay of every
                call for fixed shapes (``cuda_graphs=True``) and optional ``torch.compile`` (``compile=True``).
* ``onnx``      OrtEngine: ONNX Runtime on the exported models (export/onnx.py); CPU execution provider, or the
                CUDA / TensorRT providers when onnxruntime-gpu is installed.
* ``tensorrt``  TrtEngine: TensorRT engines built from the exported models (export/tensorrt.py), run on torch's
                current CUDA stream.
* ``triton``    TritonEngine: a Triton Inference Server holding the model repository from export/triton.py.
* ``auto``      (the CLI default) onnx on CPU — 3× the eager torch pipeline on the default bundle, after a one-time
                export into the cache — and torch on CUDA; falls back to torch with a warning when ONNX Runtime is
                missing or the export fails.

StyleSpace ``style_deltas`` are not inputs of the exported graphs. The exported backends run a frame that carries
them through a torch copy of the synthesis network on the same device (logged once); W-space edits (added to ``ws``
before ``synthesize``) stay on the accelerated path.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
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
    bundle: Bundle  # the models it runs

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


log = logging.getLogger("stylestream.engines")

_PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class _Geometry:
    """Shape attributes and input checks shared by every engine."""

    name: str
    device: torch.device
    crop_size: int
    resolution: int
    num_ws: int
    w_dim: int
    num_coarse: int
    bundle: Bundle

    def _set_geometry(self, bundle: Bundle) -> None:
        self.bundle = bundle  # the models this engine runs (live calibration adapts a copy of its generator)
        g = bundle.generator
        self.crop_size = bundle.crop_size
        self.resolution = g.img_resolution
        self.num_ws, self.w_dim = g.num_ws, g.w_dim
        self.num_coarse = g.layout.num_coarse

    def _check_crops(self, crops: torch.Tensor) -> None:
        s = self.crop_size
        if crops.ndim != 4 or crops.shape[1:] != (3, s, s):
            raise ValueError(f"crops must be [B, 3, {s}, {s}], got {tuple(crops.shape)}")

    def _check_ws(self, ws: torch.Tensor, what: str = "ws", batch: int | None = None) -> None:
        if ws.ndim != 3 or ws.shape[1:] != (self.num_ws, self.w_dim) or (batch is not None and ws.shape[0] != batch):
            b = batch if batch is not None else "B"
            raise ValueError(f"{what} must be [{b}, {self.num_ws}, {self.w_dim}], got {tuple(ws.shape)}")


class _GraphCache:
    """CUDA-graph replay of ``fn(*tensors) -> tensor`` per input signature (shapes + dtypes).

    The first call with a new signature warms ``fn`` up on a side stream, captures it into a graph with static
    input buffers; later calls copy into those buffers and replay. Outputs are cloned (the static output is
    overwritten by the next replay). At most ``max_graphs`` signatures are kept; beyond that calls run eagerly."""

    def __init__(self, fn: Callable[..., torch.Tensor], device: torch.device, max_graphs: int = 8,
                 pool: Any = None):
        self.fn, self.device, self.max_graphs = fn, device, max_graphs
        self.pool = pool if pool is not None else torch.cuda.graph_pool_handle()
        self.graphs: dict[tuple, tuple[Any, list[torch.Tensor], torch.Tensor]] = {}

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        key = tuple((tuple(t.shape), t.dtype) for t in inputs)
        entry = self.graphs.get(key)
        if entry is None:
            if len(self.graphs) >= self.max_graphs:
                return self.fn(*inputs)
            static_in = [t.detach().clone() for t in inputs]
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(3):
                    self.fn(*static_in)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                static_out = self.fn(*static_in)
            entry = (graph, static_in, static_out)
            self.graphs[key] = entry
        graph, static_in, static_out = entry
        for dst, src in zip(static_in, inputs):
            dst.copy_(src, non_blocking=True)
        graph.replay()
        return static_out.clone()


class TorchEngine(_Geometry):
    """PyTorch on CPU (fp32, eager) or CUDA (fp16 by default, channels-last; optional CUDA graphs / compile).

    ``cuda_graphs=True`` captures FrEN, ViEN and the synthesis network once per batch size and replays them (a
    frame's encode + synthesize then costs a few graph launches instead of hundreds of kernel launches); calls with
    ``style_deltas`` run eagerly. ``compile=True`` wraps the three networks in ``torch.compile`` first. Both are
    CUDA-only and off by default; the plain eager path is the reference they are tested against."""

    name = "torch"

    def __init__(self, bundle: Bundle, device: str | torch.device = "auto", precision: str = "auto",
                 threads: int = 0, cuda_graphs: bool = False, compile: bool = False, channels_last: bool = True):
        if bundle.fren is None:
            raise UserError(f"bundle {bundle.name!r} has no frame encoder (FrEN), so it cannot encode video; "
                            "train one with `stylestream train` or use a bundle that has encoders")
        self.device = resolve_device(device)
        if precision == "auto":
            precision = "fp16" if self.device.type == "cuda" else "fp32"
        if precision not in _PRECISIONS:
            raise UserError(f"unknown precision {precision!r} (fp32, fp16, bf16 or auto)")
        if precision != "fp32" and self.device.type != "cuda":
            raise UserError(f"precision {precision} needs CUDA; on CPU use fp32")
        if (cuda_graphs or compile) and self.device.type != "cuda":
            raise UserError("CUDA graphs and torch.compile are for the CUDA fast path; on CPU use the eager engine "
                            "or --backend onnx")
        if threads:
            torch.set_num_threads(threads)
        self.precision = precision
        self.dtype = _PRECISIONS[precision]
        self.bundle = bundle.to(self.device)
        g = bundle.generator
        self.generator = g
        self.fren = bundle.fren.to(self.device, self.dtype)
        self.vien = bundle.vien.to(self.device, self.dtype) if bundle.vien is not None else None
        if self.dtype != torch.float32:
            g.synthesis.to(self.dtype)
        if self.device.type == "cuda" and channels_last:
            g.synthesis.to(memory_format=torch.channels_last)
            self.fren.to(memory_format=torch.channels_last)
            if self.vien is not None:
                self.vien.to(memory_format=torch.channels_last)
        self._set_geometry(bundle)
        self.has_vien = self.vien is not None
        self.cuda_graphs, self.compiled = cuda_graphs, compile

        def fren_fn(crops: torch.Tensor) -> torch.Tensor:
            return self.fren(crops).float()

        def vien_fn(crops: torch.Tensor, prev_ws: torch.Tensor) -> torch.Tensor:
            assert self.vien is not None
            return self.vien(crops, prev_ws).float()

        def synth_fn(ws: torch.Tensor) -> torch.Tensor:
            return g.synthesis(ws, noise_mode="const").float()

        fns: list[Callable[..., torch.Tensor]] = [fren_fn, vien_fn, synth_fn]
        if compile:
            fns = [torch.compile(f, mode="max-autotune-no-cudagraphs", dynamic=False) for f in fns]
        if cuda_graphs:
            pool = torch.cuda.graph_pool_handle()
            fns = [_GraphCache(f, self.device, pool=pool) for f in fns]
        self._fren_fn, self._vien_fn, self._synth_fn = fns

    def _crops(self, crops: torch.Tensor) -> torch.Tensor:
        self._check_crops(crops)
        return crops.to(self.device, self.dtype, non_blocking=True)

    @torch.inference_mode()
    def encode_key(self, crops: torch.Tensor) -> torch.Tensor:
        return self._fren_fn(self._crops(crops))

    @torch.inference_mode()
    def encode_reuse(self, crops: torch.Tensor, prev_ws: torch.Tensor) -> torch.Tensor:
        if self.vien is None:  # no ViEN: FrEN for the coarse layers, fine layers still reused
            ws = self.encode_key(crops)
            return torch.cat([ws[:, : self.num_coarse], prev_ws[:, self.num_coarse:].float()], dim=1)
        self._check_ws(prev_ws, "prev_ws", crops.shape[0])
        out = self._vien_fn(self._crops(crops), prev_ws.to(self.device, self.dtype))
        # fine layers are the previous frame's exactly (no fp16 round trip)
        return torch.cat([out[:, : self.num_coarse], prev_ws[:, self.num_coarse:].to(self.device).float()], dim=1)

    @torch.inference_mode()
    def synthesize(self, ws: torch.Tensor, style_deltas: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        self._check_ws(ws)
        ws = ws.to(self.device, self.dtype)
        if style_deltas:
            img = self.generator.synthesis(ws, noise_mode="const", style_deltas=style_deltas)
            return img.float()
        return self._synth_fn(ws)

    def close(self) -> None:
        for fn in (self._fren_fn, self._vien_fn, self._synth_fn):
            if isinstance(fn, _GraphCache):
                fn.graphs.clear()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


class _StyleFallback:
    """Torch synthesis for frames that carry StyleSpace deltas (exported graphs have no such inputs)."""

    def __init__(self, bundle: Bundle, device: torch.device, backend: str):
        self.bundle, self.device, self.backend = bundle, device, backend
        self._synthesis: torch.nn.Module | None = None

    @torch.inference_mode()
    def __call__(self, ws: torch.Tensor, style_deltas: dict[str, torch.Tensor]) -> torch.Tensor:
        if self._synthesis is None:
            import copy

            log.warning("%s backend: StyleSpace edits are not part of the exported graph; frames with them run "
                        "the torch synthesis network on %s", self.backend, self.device)
            self._synthesis = copy.deepcopy(self.bundle.generator.synthesis).to(self.device).float().eval()
        deltas = {k: v.to(self.device, torch.float32) for k, v in style_deltas.items()}
        return self._synthesis(ws.to(self.device, torch.float32), noise_mode="const", style_deltas=deltas).float()


def _engine_precision(precision: str, device: torch.device, backend: str) -> str:
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if precision not in ("fp32", "fp16"):
        raise UserError(f"{backend} backend: unknown precision {precision!r} (fp32, fp16 or auto)")
    return precision


def default_export_dir(bundle: Bundle) -> Path:
    """Where engines export a bundle when no model folder is given: the user cache, keyed by the bundle hash."""
    from export.onnx import bundle_hash

    root = Path(os.environ.get("STYLESTREAM_CACHE", Path.home() / ".cache" / "stylestream"))
    return root / "onnx" / bundle_hash(bundle)[:16]


def ensure_onnx(bundle: Bundle, model_dir: str | os.PathLike | None, precision: str,
                models: Sequence[str] | None = None, progress: Callable[[str], None] | None = None) -> Path:
    """The ONNX export folder for ``bundle`` at ``precision``: ``model_dir`` when given (checked to belong to this
    bundle and to hold the models), else the cache folder, exporting what is missing."""
    from export.onnx import available_models, bundle_hash, export_bundle, read_manifest

    wanted = list(models) if models is not None else available_models(bundle)
    if model_dir is not None:
        d = Path(model_dir)
        m = read_manifest(d)
        if m.get("bundle_hash") != bundle_hash(bundle):
            raise UserError(f"{d} holds models exported from another bundle ({m.get('bundle_name')!r}); "
                            "export this bundle with `stylestream export BUNDLE --to onnx -o DIR`")
        missing = [n for n in wanted if f"{n}.{precision}" not in m.get("models", {})]
        if missing:
            raise UserError(f"{d} has no {precision} export of {', '.join(missing)}; run "
                            f"`stylestream export BUNDLE --to onnx --precision {precision} -o {d}`")
        return d
    d = default_export_dir(bundle)
    have: dict[str, Any] = {}
    if (d / "manifest.json").exists():
        try:
            have = read_manifest(d).get("models", {})
        except UserError:
            have = {}
    missing = [n for n in wanted
               if f"{n}.{precision}" not in have or not (d / have[f"{n}.{precision}"]["file"]).exists()]
    if missing:
        say = progress or (lambda msg: print(f"stylestream: {msg}", file=sys.stderr, flush=True))
        say(f"exporting {', '.join(missing)} ({precision}) to {d} (once per bundle)")
        export_bundle(bundle, d, precision=precision, models=missing, progress=say)
    return d


class _ExportedEngine(_Geometry):
    """The Engine methods of every backend that runs the exported graphs (ONNX Runtime, TensorRT, Triton):
    subclasses provide ``_call(model, feed)`` → the model's single output, float32 on ``self.device``."""

    has_vien: bool
    _style_fallback: _StyleFallback

    def _call(self, model: str, feed: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    @torch.inference_mode()
    def encode_key(self, crops: torch.Tensor) -> torch.Tensor:
        self._check_crops(crops)
        return self._call("fren", {"crops": crops})

    @torch.inference_mode()
    def encode_reuse(self, crops: torch.Tensor, prev_ws: torch.Tensor) -> torch.Tensor:
        self._check_crops(crops)
        if not self.has_vien:
            ws = self.encode_key(crops)
            return torch.cat([ws[:, : self.num_coarse], prev_ws[:, self.num_coarse:].to(ws)], dim=1)
        self._check_ws(prev_ws, "prev_ws", crops.shape[0])
        return self._call("vien", {"crops": crops, "prev_ws": prev_ws})

    @torch.inference_mode()
    def synthesize(self, ws: torch.Tensor, style_deltas: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        self._check_ws(ws)
        if style_deltas:
            return self._style_fallback(ws, style_deltas)
        return self._call("synthesis", {"ws": ws})


class OrtEngine(_ExportedEngine):
    """ONNX Runtime on the exported FrEN / ViEN / synthesis models.

    CPU: the CPU execution provider, numpy views of the torch tensors (no copies beyond ORT's own). CUDA (needs
    onnxruntime-gpu): the CUDA provider — or TensorRT first with ``ort_tensorrt=True`` — with I/O bound straight
    to torch CUDA tensors. ``model_dir`` is a folder from ``stylestream export --to onnx``; without it the bundle is
    exported once into the user cache."""

    name = "onnx"

    def __init__(self, bundle: Bundle, device: str | torch.device = "auto", precision: str = "auto",
                 model_dir: str | os.PathLike | None = None, threads: int = 0,
                 providers: Sequence[str] | None = None, ort_tensorrt: bool = False,
                 progress: Callable[[str], None] | None = None):
        import onnxruntime as ort

        if bundle.fren is None:
            raise UserError(f"bundle {bundle.name!r} has no frame encoder (FrEN), so it cannot encode video")
        self.device = resolve_device(device)
        self.precision = _engine_precision(precision, self.device, "onnx")
        self._set_geometry(bundle)
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
        models = ["fren", "synthesis"] + (["vien"] if bundle.vien is not None else [])
        self.model_dir = ensure_onnx(bundle, model_dir, self.precision, models, progress)
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
                from export.tensorrt import DEFAULT_CACHE

                prov_list.append((p, {"trt_fp16_enable": self.precision == "fp16", "trt_engine_cache_enable": True,
                                      "trt_engine_cache_path": str(DEFAULT_CACHE / "ort"),
                                      "trt_timing_cache_enable": True}))
            elif p == "CUDAExecutionProvider":
                prov_list.append((p, {"device_id": self.device.index or 0}))
            else:
                prov_list.append(p)
        from export.onnx import onnx_filename

        self.sessions: dict[str, Any] = {}
        for m in models:
            path = self.model_dir / onnx_filename(m, self.precision)
            try:
                self.sessions[m] = ort.InferenceSession(str(path), sess_options=opts, providers=prov_list)
            except Exception as exc:  # ORT raises its own exception types (Fail, InvalidGraph, …)
                raise UserError(f"ONNX Runtime cannot load {path}: {str(exc).splitlines()[0]}") from None
        self.providers = self.sessions["fren"].get_providers()
        self.has_vien = "vien" in self.sessions
        self._style_fallback = _StyleFallback(bundle, self.device, self.name)

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
        shape = (b, 3, r, r) if model == "synthesis" else (b, self.num_ws, self.w_dim)
        return self._run(model, feed, shape)

    def close(self) -> None:
        self.sessions.clear()


class TrtEngine(_ExportedEngine):
    """TensorRT engines (export/tensorrt.py) built from the ONNX exports, run on torch's current CUDA stream.

    Engines are cached on disk (``cache_dir``, default ~/.cache/stylestream/tensorrt) under names that encode the
    model hash, batch profile, precision, GPU and TensorRT version; the first start on a new GPU builds them."""

    name = "tensorrt"

    def __init__(self, bundle: Bundle, device: str | torch.device = "auto", precision: str = "auto",
                 model_dir: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                 max_batch: int = 4, progress: Callable[[str], None] | None = None):
        from export.onnx import onnx_filename
        from export.tensorrt import TrtModel, build_engine, require_tensorrt

        require_tensorrt()  # before any export work: one clear message where TensorRT is missing
        if bundle.fren is None:
            raise UserError(f"bundle {bundle.name!r} has no frame encoder (FrEN), so it cannot encode video")
        self.device = resolve_device("cuda" if str(device) == "auto" else device)
        if self.device.type != "cuda":
            raise UserError("the tensorrt backend runs on CUDA only; use --backend onnx or torch on the CPU")
        self.precision = _engine_precision(precision, self.device, "tensorrt")
        self._set_geometry(bundle)
        models = ["fren", "synthesis"] + (["vien"] if bundle.vien is not None else [])
        self.model_dir = ensure_onnx(bundle, model_dir, self.precision, models, progress)
        self.models: dict[str, TrtModel] = {}
        with torch.cuda.device(self.device):
            for m in models:
                plan = build_engine(self.model_dir / onnx_filename(m, self.precision), precision=self.precision,
                                    cache_dir=cache_dir, max_batch=max_batch, progress=progress)
                self.models[m] = TrtModel(plan, self.device)
        self.has_vien = "vien" in self.models
        self._style_fallback = _StyleFallback(bundle, self.device, self.name)

    def _dev(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device, torch.float32)

    def _call(self, model: str, feed: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.models[model]({k: self._dev(v) for k, v in feed.items()})
        return out["image" if model == "synthesis" else "ws"].float()

    def close(self) -> None:
        self.models.clear()


class TritonEngine(_ExportedEngine):
    """Client of a Triton Inference Server serving the repository from ``stylestream export --to triton``.

    ``url``: ``http://host:8000`` (default scheme) or ``grpc://host:8001``. Model names follow export/triton.py
    (``{prefix}fren``, ``{prefix}vien``, ``{prefix}synthesis`` with ``_fp16`` for fp16 variants). Tensors travel
    as float32 numpy arrays; results come back on ``device``."""

    name = "triton"

    def __init__(self, bundle: Bundle, url: str = "localhost:8000", device: str | torch.device = "auto",
                 precision: str = "fp32", model_prefix: str = "stylestream_", timeout_s: float = 10.0):
        from export.triton import triton_model_name

        if bundle.fren is None:
            raise UserError(f"bundle {bundle.name!r} has no frame encoder (FrEN), so it cannot encode video")
        self.device = resolve_device(device)
        self.precision = "fp32" if precision == "auto" else precision
        if self.precision not in ("fp32", "fp16"):
            raise UserError(f"triton backend: unknown precision {precision!r} (fp32, fp16 or auto)")
        self._set_geometry(bundle)
        self.url = url
        grpc = url.startswith("grpc://")
        address = url.split("://", 1)[1] if "://" in url else url
        try:
            if grpc:
                import tritonclient.grpc as tc
            else:
                import tritonclient.http as tc
        except ImportError:
            extra = "tritonclient[grpc]" if grpc else "tritonclient[http]"
            raise UserError(f"the triton backend needs the Triton client: pip install '{extra}' "
                            "(or `pip install stylestream[gpu]`)") from None
        self._tc = tc
        self._address, self._grpc, self._timeout_s = address, grpc, timeout_s
        # gRPC calls have no timeout unless given one per call: a stalled (SIGSTOPped) server hung a frame for good
        self._kw: dict[str, Any] = {"client_timeout": timeout_s} if grpc else {}
        # One client per thread: tritonclient.http runs on gevent, whose connections belong to the thread that made
        # them; the first call from another thread (the pipeline's device worker, after this constructor ran on the
        # main thread) failed with "Cannot switch to a different thread" against a real server.
        self._local = threading.local()
        self._clients: list[Any] = []
        self._clients_lock = threading.Lock()
        try:
            live = self.client.is_server_live(**self._kw)
        except Exception as exc:  # connection refused, DNS, timeouts: tritonclient raises several types
            raise UserError(f"cannot reach the Triton server at {url} ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else 'no answer'}); start it with "
                            "`tritonserver --model-repository DIR` (docs/export.md)") from None
        if not live:
            raise UserError(f"the Triton server at {url} is not live")
        self.model_names = {m: triton_model_name(m, self.precision, model_prefix) for m in MODEL_NAMES}
        needed = ["fren", "synthesis"]
        self.has_vien = False
        try:
            for m in needed:
                if not self.client.is_model_ready(self.model_names[m], **self._kw):
                    raise UserError(f"Triton at {url} has no ready model {self.model_names[m]!r}; serve the folder "
                                    f"from `stylestream export BUNDLE --to triton` (precision {self.precision})")
            self.has_vien = (bool(self.client.is_model_ready(self.model_names["vien"], **self._kw))
                             and bundle.vien is not None)
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f"Triton at {url}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
        self._style_fallback = _StyleFallback(bundle, self.device, self.name)

    @property
    def client(self) -> Any:
        """This thread's tritonclient InferenceServerClient (made on first use in the thread)."""
        c = getattr(self._local, "client", None)
        if c is None:
            if self._grpc:
                # reconnect backoff ≤ 1 s (gRPC's default grows to 120 s: after a 12 s outage the channel kept
                # refusing calls for 8–9 s after the restarted server was ready); message sizes as tritonclient's
                big = 2**31 - 1
                c = self._tc.InferenceServerClient(url=self._address, channel_args=[
                    ("grpc.max_send_message_length", big), ("grpc.max_receive_message_length", big),
                    ("grpc.initial_reconnect_backoff_ms", 250), ("grpc.min_reconnect_backoff_ms", 1000),
                    ("grpc.max_reconnect_backoff_ms", 1000)])
            else:
                c = self._tc.InferenceServerClient(url=self._address, connection_timeout=self._timeout_s,
                                                   network_timeout=self._timeout_s)
            self._local.client = c
            with self._clients_lock:
                self._clients.append(c)
        return c

    def _infer(self, model: str, feed: dict[str, torch.Tensor], output: str) -> torch.Tensor:
        tc = self._tc
        inputs = []
        for k, v in feed.items():
            arr = v.detach().to("cpu", torch.float32).contiguous().numpy()
            inp = tc.InferInput(k, list(arr.shape), "FP32")
            inp.set_data_from_numpy(arr)
            inputs.append(inp)
        try:
            res = self.client.infer(self.model_names[model], inputs, outputs=[tc.InferRequestedOutput(output)],
                                    **self._kw)
        except Exception as exc:
            raise UserError(f"Triton inference on {self.model_names[model]} at {self.url} failed: "
                            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
        # as_numpy() is a read-only view of the response buffer: copy (torch tensors must be writable)
        return torch.from_numpy(np.array(res.as_numpy(output), dtype=np.float32)).to(self.device)

    def _call(self, model: str, feed: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._infer(model, feed, "image" if model == "synthesis" else "ws")

    def close(self) -> None:
        with self._clients_lock:
            clients, self._clients = self._clients, []
        for c in clients:
            with contextlib.suppress(Exception):  # a client made on another (maybe finished) thread
                c.close()
        self._local = threading.local()


MODEL_NAMES: tuple[str, ...] = ("fren", "vien", "synthesis")
BACKENDS: tuple[str, ...] = ("auto", "torch", "onnx", "tensorrt", "triton")


def resolve_backend(backend: str, device: str | torch.device = "auto") -> str:
    """``auto`` → ``onnx`` on CPU when ONNX Runtime is installed, else ``torch``; other names unchanged."""
    if backend != "auto":
        return backend
    if resolve_device(device).type != "cpu":
        return "torch"  # TensorRT is the fast CUDA path but needs an offline build; eager fp16 torch always works
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "torch"
    return "onnx"


def make_engine(bundle: Bundle, backend: str = "torch", device: str = "auto", precision: str = "auto",
                **options: Any) -> Engine:
    """Build the engine for ``backend`` (one of :data:`BACKENDS`).

    Backend options (keyword): torch — ``threads``, ``cuda_graphs``, ``compile``; onnx — ``model_dir``,
    ``threads``, ``providers``, ``ort_tensorrt``; tensorrt — ``model_dir``, ``cache_dir``, ``max_batch``;
    triton — ``url`` (also ``triton_url``), ``model_prefix``. Unknown options are a UserError. ``auto`` resolves
    with :func:`resolve_backend`; when that picks onnx without a ``model_dir`` and the export or ONNX Runtime
    fails, the torch engine is built instead (one warning on stderr)."""
    if backend == "auto":
        chosen = resolve_backend(backend, device)
        if chosen == "onnx" and options.get("model_dir") is None:
            try:
                return make_engine(bundle, "onnx", device, precision, **options)
            except Exception as exc:  # noqa: BLE001 - any export / runtime failure: the torch engine still works
                msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                print(f"stylestream: cannot use ONNX Runtime for this bundle ({msg[:200]}); using the torch engine "
                      "(pass --backend to choose)", file=sys.stderr, flush=True)
                options = {k: v for k, v in options.items() if k in ("threads",)}
                chosen = "torch"
        backend = chosen
    allowed = {
        "torch": {"threads", "cuda_graphs", "compile", "channels_last"},
        "onnx": {"model_dir", "threads", "providers", "ort_tensorrt", "progress"},
        "tensorrt": {"model_dir", "cache_dir", "max_batch", "progress"},
        "triton": {"url", "triton_url", "model_prefix", "timeout_s"},
    }
    if backend not in allowed:
        raise UserError(f"unknown backend {backend!r} (available: {', '.join(BACKENDS)})")
    opts = {k: v for k, v in options.items() if v is not None}
    bad = sorted(set(opts) - allowed[backend])
    if bad:
        raise UserError(f"backend {backend!r} does not take option(s) {', '.join(bad)}")
    engine: Any
    if backend == "torch":
        engine = TorchEngine(bundle, device=device, precision=precision, **opts)
    elif backend == "onnx":
        engine = OrtEngine(bundle, device=device, precision=precision, **opts)
    elif backend == "tensorrt":
        engine = TrtEngine(bundle, device=device, precision=precision, **opts)
    else:
        url = opts.pop("triton_url", None) or opts.pop("url", None) or "localhost:8000"
        engine = TritonEngine(bundle, url=url, device=device, precision=precision, **opts)
    engine.recipe = (backend, opts)  # how it was made: engine_like() builds the same kind for another bundle
    return engine


def engine_like(like: Engine, bundle: Bundle, model_dir: str | os.PathLike | None = None) -> Engine:
    """An engine for ``bundle`` — in practice ``like``'s bundle with an adapted generator (live calibration) — of
    the same backend, device and precision as ``like``, for one stream.

    torch: a new :class:`TorchEngine` (the encoders are the same modules, the generator is the new one). onnx: from
    ``model_dir``, where the bundle has been exported already (the calibration worker does that, off the serving
    process). tensorrt / triton: rebuilding TensorRT engines takes minutes and a Triton repository lives on the
    server, so these streams run the torch engine on the same device instead (logged)."""
    backend, opts = getattr(like, "recipe", ("torch", {}))
    device = str(like.device)
    precision = getattr(like, "precision", "auto")
    opts = {k: v for k, v in opts.items() if k not in ("threads", "model_dir", "progress")}  # threads: process-wide
    if backend == "onnx":
        if model_dir is None:
            raise ValueError("engine_like for an onnx engine needs the folder the bundle was exported to")
        return make_engine(bundle, "onnx", device=device, precision=precision, model_dir=model_dir, **opts)
    if backend != "torch":
        log.warning("%s backend: a calibrated stream runs the torch engine on %s (engines are not rebuilt live)",
                    backend, device)
        opts = {}
        if resolve_device(device).type != "cuda":
            precision = "fp32"
    return make_engine(bundle, "torch", device=device, precision=precision, **opts)


_OPTION_FLAGS: dict[str, tuple[str, ...]] = {  # option → backends that take it
    "model_dir": ("onnx", "tensorrt"),
    "triton_url": ("triton",),
    "cuda_graphs": ("torch",),
    "compile": ("torch",),
    "cache_dir": ("tensorrt",),
}


def add_backend_options(parser: Any) -> None:
    """Add the backend-specific flags to a command that already has --backend/--device/--precision:
    --model-dir, --triton-url, --cuda-graphs, --torch-compile, --trt-cache. Pair with :func:`backend_options`."""
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="onnx/tensorrt: folder from `stylestream export --to onnx` (default: cache)")
    parser.add_argument("--triton-url", default=None,
                        help="triton: server URL, http://host:8000 or grpc://host:8001 (default localhost:8000)")
    parser.add_argument("--cuda-graphs", action="store_true", help="torch on CUDA: capture and replay CUDA graphs")
    parser.add_argument("--torch-compile", dest="compile", action="store_true",
                        help="torch on CUDA: torch.compile the networks")
    parser.add_argument("--trt-cache", dest="cache_dir", type=Path, default=None,
                        help="tensorrt: engine cache folder (default ~/.cache/stylestream/tensorrt)")


def backend_options(args: Any) -> dict[str, Any]:
    """The keyword options for ``make_engine(..., **options)`` that ``args.backend`` takes, from parsed flags
    (``auto`` is checked as the backend it resolves to on ``args.device``)."""
    backend = resolve_backend(getattr(args, "backend", "torch"), getattr(args, "device", "auto"))
    out: dict[str, Any] = {}
    for opt, backends in _OPTION_FLAGS.items():
        value = getattr(args, opt, None)
        if value in (None, False):
            continue
        if backend not in backends:
            flag = {"compile": "--torch-compile", "cache_dir": "--trt-cache"}.get(opt, "--" + opt.replace("_", "-"))
            raise UserError(f"{flag} applies to --backend {' / '.join(backends)}, not {backend}")
        out[opt] = value
    return out
