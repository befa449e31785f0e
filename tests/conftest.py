"""Shared test setup: tests import helpers from this folder; torch stays on few threads (2-core CI)."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import torch  # noqa: E402

# In-process CLI calls must not re-route stderr (pytest's capture owns it); see realtime/mediapipe_runtime.py.
os.environ.setdefault("STYLESTREAM_MEDIAPIPE_LOGS", "1")
# One intra-op thread: the pipeline's stages already run on parallel threads, and on the shared 2-core machines
# torch's 2-thread pool ran 10-50x slower under contention (measured by three of our benchmarks).
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """Skip gpu/trt/browser/triton tests with a reason where the hardware or library is missing."""
    import shutil

    has_cuda = torch.cuda.is_available()
    try:
        import tensorrt  # noqa: F401

        has_trt = has_cuda
    except Exception:
        has_trt = False
    has_chromium = any(shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome"))
    # by marker, not item.keywords: those also hold folder names (a checkout in a folder named "triton")
    triton_skip = _triton_missing() if any(item.get_closest_marker("triton") for item in items) else None
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device (none here)"))
        if "trt" in item.keywords and not has_trt:
            item.add_marker(pytest.mark.skip(reason="needs TensorRT and a CUDA device (not installable here)"))
        if "browser" in item.keywords and not has_chromium:
            item.add_marker(pytest.mark.skip(reason="needs Chromium (apt install chromium)"))
        if triton_skip and item.get_closest_marker("triton"):
            item.add_marker(pytest.mark.skip(reason=triton_skip))


def _triton_missing() -> str | None:
    """Why the real-Triton tests cannot run here (None: they can): the tritonserver binary or the HTTP client."""
    from models.errors import UserError
    from realtime.triton_server import find_tritonserver

    try:
        find_tritonserver()
    except UserError as exc:
        return str(exc)
    try:
        import tritonclient.http  # noqa: F401
    except ImportError:
        return "needs the Triton client: pip install 'tritonclient[http]==2.69.0'"
    return None
