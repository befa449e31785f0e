"""TorchEngine: the networks in PyTorch (CPU fp32 eager; CUDA fp16 + channels-last, optional CUDA graphs / compile).

The engine never modifies the bundle it is given. A network that already is what the engine needs — on its
device, in its dtype and memory format, in eval mode — is used as it is (read-only, under ``inference_mode``: the
common case of a loaded bundle on the CPU); any other is replaced by the engine's own converted copy.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from models.bundle import Bundle
from models.errors import UserError
from realtime.engines.base import BaseEngine, EngineOptions, resolve_device

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _cuda_index(d: torch.device) -> int:
    return d.index if d.index is not None else torch.cuda.current_device()


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    return a.type != "cuda" or _cuda_index(a) == _cuda_index(b)


def _is_ready(module: nn.Module, device: torch.device, dtype: torch.dtype, channels_last: bool) -> bool:
    """True when ``module`` can run as it is: eval mode, every tensor on ``device``, floating tensors in ``dtype``
    and (``channels_last``) 4-d weights in channels-last format."""
    if any(m.training for m in module.modules()):
        return False
    for t in itertools.chain(module.parameters(), module.buffers()):
        if not _same_device(t.device, device) or (t.is_floating_point() and t.dtype != dtype):
            return False
        if channels_last and t.ndim == 4 and not t.is_contiguous(memory_format=torch.channels_last):
            return False
    return True


def prepared(module: nn.Module, device: torch.device, dtype: torch.dtype, channels_last: bool = False) -> nn.Module:
    """``module`` itself when it is ready to run as asked (:func:`_is_ready`), else an eval, no-grad copy moved to
    ``device`` / ``dtype`` (/ channels-last). ``module`` is never modified."""
    if _is_ready(module, device, dtype, channels_last):
        return module
    m = copy.deepcopy(module).eval().requires_grad_(False).to(device=device, dtype=dtype)
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
    return m


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


class TorchEngine(BaseEngine):
    """PyTorch on CPU (fp32, eager) or CUDA (fp16 by default, channels-last; optional CUDA graphs / compile).

    ``cuda_graphs=True`` captures FrEN (whole and coarse-only), ViEN and the synthesis network once per batch size
    and replays them (a frame's encode + synthesize then costs a few graph launches instead of hundreds of kernel
    launches); calls with ``style_deltas`` run eagerly. ``compile=True`` wraps them in ``torch.compile`` first. Both are
    CUDA-only and off by default; the plain eager path is the reference they are tested against.

    ``fren`` / ``vien`` / ``synthesis`` are the networks it runs: the bundle's own modules when they are ready as
    they are (CPU fp32, eval), otherwise the engine's converted copies — the bundle is never modified."""

    name = "torch"

    def __init__(self, bundle: Bundle, device: str | torch.device = "auto", precision: str = "auto",
                 threads: int = 0, cuda_graphs: bool = False, compile: bool = False, channels_last: bool = True):
        self._set_geometry(bundle)
        self.device = resolve_device(device)
        if precision == "auto":
            precision = "fp16" if self.device.type == "cuda" else "fp32"
        if precision not in _DTYPES:
            raise UserError(f"unknown precision {precision!r} (fp32, fp16, bf16 or auto)")
        if precision != "fp32" and self.device.type != "cuda":
            raise UserError(f"precision {precision} needs CUDA; on CPU use fp32")
        if (cuda_graphs or compile) and self.device.type != "cuda":
            raise UserError("CUDA graphs and torch.compile are for the CUDA fast path; on CPU use the eager engine "
                            "or --backend onnx")
        if threads:
            torch.set_num_threads(threads)
        self.precision = precision
        self.dtype = _DTYPES[precision]
        cl = channels_last and self.device.type == "cuda"
        assert bundle.fren is not None  # checked by _set_geometry
        self.fren = prepared(bundle.fren, self.device, self.dtype, cl)
        self.vien = prepared(bundle.vien, self.device, self.dtype, cl) if bundle.vien is not None else None
        self.synthesis = prepared(bundle.generator.synthesis, self.device, self.dtype, cl)
        self.has_vien = self.vien is not None
        self.cuda_graphs, self.compiled = cuda_graphs, compile
        self._set_spec(EngineOptions(threads=threads, cuda_graphs=cuda_graphs, compile=compile,
                                     channels_last=channels_last))
        synthesis = self.synthesis

        def fren_fn(crops: torch.Tensor) -> torch.Tensor:
            return self.fren(crops).float()

        num_coarse = self.num_coarse

        def coarse_fn(crops: torch.Tensor) -> torch.Tensor:
            return self.fren.forward_coarse(crops, num_coarse).float()

        def vien_fn(crops: torch.Tensor, prev_ws: torch.Tensor) -> torch.Tensor:
            assert self.vien is not None
            return self.vien(crops, prev_ws).float()

        def synth_fn(ws: torch.Tensor) -> torch.Tensor:
            return synthesis(ws, noise_mode="const").float()

        fns: list[Callable[..., torch.Tensor]] = [fren_fn, vien_fn, synth_fn, coarse_fn]
        if compile:
            fns = [torch.compile(f, mode="max-autotune-no-cudagraphs", dynamic=False) for f in fns]
        if cuda_graphs:
            pool = torch.cuda.graph_pool_handle()
            fns = [_GraphCache(f, self.device, pool=pool) for f in fns]
        self._fren_fn, self._vien_fn, self._synth_fn, self._coarse_fn = fns

    def _crops(self, crops: torch.Tensor) -> torch.Tensor:
        self._check_crops(crops)
        return crops.to(self.device, self.dtype, non_blocking=True)

    @torch.inference_mode()
    def encode_key(self, crops: torch.Tensor) -> torch.Tensor:
        return self._fren_fn(self._crops(crops))

    @torch.inference_mode()
    def encode_reuse(self, crops: torch.Tensor, prev_ws: torch.Tensor) -> torch.Tensor:
        if self.vien is None:  # no ViEN: the key encoder's coarse layers, fine layers still reused
            return self.encode_coarse(crops, prev_ws)
        self._check_ws(prev_ws, "prev_ws", crops.shape[0])
        out = self._vien_fn(self._crops(crops), prev_ws.to(self.device, self.dtype))
        return self._with_fine(out, prev_ws)  # fine layers are the previous frame's exactly (no fp16 round trip)

    @torch.inference_mode()
    def encode_coarse(self, crops: torch.Tensor, prev_ws: torch.Tensor) -> torch.Tensor:
        self._check_ws(prev_ws, "prev_ws", crops.shape[0])
        return self._with_fine(self._coarse_fn(self._crops(crops)), prev_ws)

    @torch.inference_mode()
    def synthesize(self, ws: torch.Tensor, style_deltas: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        self._check_ws(ws)
        ws = ws.to(self.device, self.dtype)
        if style_deltas:
            deltas = {k: v.to(self.device, self.dtype) for k, v in style_deltas.items()}
            return self.synthesis(ws, noise_mode="const", style_deltas=deltas).float()
        return self._synth_fn(ws)

    def close(self) -> None:
        for fn in (self._fren_fn, self._vien_fn, self._synth_fn, self._coarse_fn):
            if isinstance(fn, _GraphCache):
                fn.graphs.clear()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
