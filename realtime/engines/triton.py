"""TritonEngine: a client of a Triton Inference Server that serves ``stylestream export --to triton``'s repository.

``tritonclient`` is optional (the ``gpu`` extra): it is imported when an engine is made, with one clear UserError
where it is missing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from export.artifacts import MODELS, TRITON_PREFIX, triton_model_name
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
    ``{prefix}synthesis`` with ``_fp16`` for fp16 variants). Tensors travel as float32 numpy arrays; results come
    back on ``device``."""

    name = "triton"

    def __init__(self, bundle: Bundle, device: str | torch.device = "auto", precision: str = "fp32",
                 triton_url: str | None = None, model_prefix: str = TRITON_PREFIX, timeout_s: float = 10.0):
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
        try:
            if grpc:
                self.client = tc.InferenceServerClient(url=address)
            else:
                self.client = tc.InferenceServerClient(url=address, connection_timeout=timeout_s,
                                                       network_timeout=timeout_s)
            live = self.client.is_server_live()
        except Exception as exc:  # connection refused, DNS, timeouts: tritonclient raises several types
            raise UserError(f"cannot reach the Triton server at {url} ({type(exc).__name__}: "
                            f"{_first_line(exc, 'no answer')}); start it with "
                            "`tritonserver --model-repository DIR` (docs/export.md)") from None
        if not live:
            raise UserError(f"the Triton server at {url} is not live")
        self.model_names = {m: triton_model_name(m, self.precision, model_prefix) for m in MODELS}
        self.has_vien = False
        try:
            for m in ("fren", "synthesis"):
                if not self.client.is_model_ready(self.model_names[m]):
                    raise UserError(f"Triton at {url} has no ready model {self.model_names[m]!r}; serve the folder "
                                    f"from `stylestream export BUNDLE --to triton` (precision {self.precision})")
            self.has_vien = bool(self.client.is_model_ready(self.model_names["vien"])) and bundle.vien is not None
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f"Triton at {url}: {type(exc).__name__}: {_first_line(exc)}") from None
        self._style_fallback = StyleFallback(bundle, self.device, self.name)

    def _infer(self, model: str, feed: dict[str, torch.Tensor], output: str) -> torch.Tensor:
        tc = self._tc
        inputs = []
        for k, v in feed.items():
            arr = v.detach().to("cpu", torch.float32).contiguous().numpy()
            inp = tc.InferInput(k, list(arr.shape), "FP32")
            inp.set_data_from_numpy(arr)
            inputs.append(inp)
        try:
            res = self.client.infer(self.model_names[model], inputs, outputs=[tc.InferRequestedOutput(output)])
        except Exception as exc:
            raise UserError(f"Triton inference on {self.model_names[model]} at {self.url} failed: "
                            f"{type(exc).__name__}: {_first_line(exc)}") from None
        return torch.from_numpy(np.ascontiguousarray(res.as_numpy(output), dtype=np.float32)).to(self.device)

    def _call(self, model: str, feed: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._infer(model, feed, "image" if model == "synthesis" else "ws")

    def close(self) -> None:
        close = getattr(self.client, "close", None)  # older tritonclient versions have no close()
        if close is not None:
            close()
