"""TritonEngine: a client of a Triton Inference Server that serves ``stylestream export --to triton``'s repository.

``tritonclient`` is optional (the ``gpu`` extra): it is imported when an engine is made, with one clear UserError
where it is missing.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import numpy as np
import torch

from export.artifacts import IO_NAMES, MODELS, TRITON_PREFIX, triton_model_name
from export.onnx import has_coarse_model
from models.bundle import Bundle
from models.errors import UserError
from realtime.engines.base import EngineOptions, resolve_device
from realtime.engines.exported import ExportedEngine, StyleFallback

DEFAULT_URL = "localhost:8000"


def _first_line(exc: BaseException, default: str = "") -> str:
    return str(exc).splitlines()[0] if str(exc) else default


class TritonEngine(ExportedEngine):
    """Client of a Triton Inference Server serving the repository from ``stylestream export --to triton``.

    ``triton_url``: ``http://host:8000`` (default scheme; default ``localhost:8000``) or ``grpc://host:8001``. Model
    names follow :func:`export.artifacts.triton_model_name` (``{prefix}fren``, ``{prefix}vien``,
    ``{prefix}synthesis``, ``{prefix}fren_coarse`` for e4e / pSp, with ``_fp16`` for fp16 variants). Tensors
    travel as float32 numpy arrays; results come back on ``device``."""

    name = "triton"

    def __init__(self, bundle: Bundle, device: str | torch.device = "auto", precision: str = "fp32",
                 triton_url: str | None = None, model_prefix: str = TRITON_PREFIX, timeout_s: float = 2.0):
        self._set_geometry(bundle)
        self.device = resolve_device(device)
        self.precision = "fp32" if precision == "auto" else precision
        if self.precision not in ("fp32", "fp16"):
            raise UserError(f"triton backend: unknown precision {precision!r} (fp32, fp16 or auto)")
        self._set_spec(EngineOptions(triton_url=triton_url, model_prefix=model_prefix, timeout_s=timeout_s))
        url = triton_url or DEFAULT_URL
        self.url = url
        grpc = url.startswith("grpc://")
        address = url.split("://", 1)[1] if "://" in url else url
        try:
            if grpc:
                import tritonclient.grpc as tc  # noqa: PLC0415 - optional (gpu extra)
            else:
                import tritonclient.http as tc  # noqa: PLC0415 - optional (gpu extra)
        except ImportError:
            extra = "tritonclient[grpc]" if grpc else "tritonclient[http]"
            raise UserError(f"the triton backend needs the Triton client: pip install '{extra}' "
                            "(or `pip install stylestream[gpu]`)") from None
        self._tc: Any = tc
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
                            f"{_first_line(exc, 'no answer')}); start it with "
                            "`tritonserver --model-repository DIR` (docs/export.md)") from None
        if not live:
            raise UserError(f"the Triton server at {url} is not live")
        self.model_names = {m: triton_model_name(m, self.precision, model_prefix) for m in MODELS}
        self.has_vien = self.coarse_model = False
        try:
            for m in ("fren", "synthesis"):
                if not self.client.is_model_ready(self.model_names[m], **self._kw):
                    raise UserError(f"Triton at {url} has no ready model {self.model_names[m]!r}; serve the folder "
                                    f"from `stylestream export BUNDLE --to triton` (precision {self.precision})")
            self.has_vien = (bool(self.client.is_model_ready(self.model_names["vien"], **self._kw))
                             and bundle.vien is not None)
            self.coarse_model = (has_coarse_model(bundle)
                                 and bool(self.client.is_model_ready(self.model_names["fren_coarse"], **self._kw)))
            self.max_batch = self._max_batch()
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f"Triton at {url}: {type(exc).__name__}: {_first_line(exc)}") from None
        self._style_fallback = StyleFallback(bundle, self.device, self.name)

    def _max_batch(self) -> int | None:
        """The smallest max_batch_size of the served models (a bigger request is refused); None: not declared."""
        sizes = []
        for m in ("fren", "synthesis", "vien", "fren_coarse"):
            if m == "vien" and not self.has_vien or m == "fren_coarse" and not self.coarse_model:
                continue
            if self._grpc:
                cfg = self.client.get_model_config(self.model_names[m], as_json=True, **self._kw).get("config", {})
            else:
                cfg = self.client.get_model_config(self.model_names[m])
            size = int(cfg.get("max_batch_size", 0) or 0)
            if size > 0:
                sizes.append(size)
        return min(sizes) if sizes else None

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
                            f"{type(exc).__name__}: {_first_line(exc)}") from None
        # as_numpy() is a read-only view of the response buffer: copy (torch tensors must be writable)
        return torch.from_numpy(np.array(res.as_numpy(output), dtype=np.float32)).to(self.device)

    def _call(self, model: str, feed: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._infer(model, feed, IO_NAMES[model][1][0])

    def close(self) -> None:
        with self._clients_lock:
            clients, self._clients = self._clients, []
        for c in clients:
            with contextlib.suppress(Exception):  # a client made on another (maybe finished) thread
                c.close()
        self._local = threading.local()
