"""Engines shared by several streams (the live server's peers): :class:`ForwardingEngine` (the declared attributes
of a wrapped engine) and :class:`SerialEngine` (its model calls one at a time). realtime/engines/batching.py merges
them instead."""

from __future__ import annotations

import threading

import torch

from models.bundle import Bundle
from realtime.engines.base import Engine, EngineSpec


class ForwardingEngine:
    """The declared :class:`Engine` attributes of ``engine``, read-only; subclasses provide the calls."""

    def __init__(self, engine: Engine):
        self._engine = engine

    @property
    def engine(self) -> Engine:
        """The wrapped engine (its calls bypass the wrapper)."""
        return self._engine

    @property
    def name(self) -> str:
        return self._engine.name

    @property
    def device(self) -> torch.device:
        return self._engine.device

    @property
    def precision(self) -> str:
        return self._engine.precision

    @property
    def spec(self) -> EngineSpec:
        return self._engine.spec

    @property
    def crop_size(self) -> int:
        return self._engine.crop_size

    @property
    def resolution(self) -> int:
        return self._engine.resolution

    @property
    def num_ws(self) -> int:
        return self._engine.num_ws

    @property
    def w_dim(self) -> int:
        return self._engine.w_dim

    @property
    def num_coarse(self) -> int:
        return self._engine.num_coarse

    @property
    def has_vien(self) -> bool:
        return self._engine.has_vien

    @property
    def max_batch(self) -> int | None:
        return self._engine.max_batch

    @property
    def bundle(self) -> Bundle:
        return self._engine.bundle


class SerialEngine(ForwardingEngine):
    """An :class:`Engine` that runs ``engine``'s model calls under one lock (CUDA graphs and ONNX Runtime / TensorRT
    sessions are not re-entrant): one engine call per stream call.

    ``close()`` closes the wrapped engine (also under the lock, so it never frees what a call is using)."""

    def __init__(self, engine: Engine):
        super().__init__(engine)
        self._lock = threading.Lock()
        self.calls = 0

    def encode_key(self, crops: torch.Tensor) -> torch.Tensor:
        with self._lock:
            self.calls += 1
            return self._engine.encode_key(crops)

    def encode_reuse(self, crops: torch.Tensor, prev_ws: torch.Tensor) -> torch.Tensor:
        with self._lock:
            self.calls += 1
            return self._engine.encode_reuse(crops, prev_ws)

    def encode_coarse(self, crops: torch.Tensor, prev_ws: torch.Tensor) -> torch.Tensor:
        with self._lock:
            self.calls += 1
            return self._engine.encode_coarse(crops, prev_ws)

    def synthesize(self, ws: torch.Tensor, style_deltas: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        with self._lock:
            self.calls += 1
            return self._engine.synthesize(ws, style_deltas)

    def close(self) -> None:
        with self._lock:
            self._engine.close()
