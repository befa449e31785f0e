"""Shared test setup: markers that skip where hardware is missing, few torch threads (2-core CI), and the tiny
random bundle most tests run on (built once per session)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from models.bundle import Bundle, load_bundle
from models.errors import UserError
from realtime.engines.triton_server import find_tritonserver
from tests.bundles import make_tiny_bundle

# In-process CLI calls must not re-route stderr (pytest's capture owns it); see realtime/vision/mediapipe_runtime.py.
os.environ.setdefault("STYLESTREAM_MEDIAPIPE_LOGS", "1")
# One intra-op thread: the pipeline's stages already run on parallel threads, and on the shared 2-core machines
# torch's 2-thread pool ran 10-50x slower under contention (measured by three of our benchmarks).
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """Skip gpu/trt/browser/triton tests with a reason where the hardware or library is missing."""
    has_cuda = torch.cuda.is_available()
    try:
        import tensorrt  # noqa: F401, PLC0415 - optional, only probed

        has_trt = has_cuda
    except Exception:
        has_trt = False
    has_chromium = any(shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome"))
    triton_skip = _triton_missing() if any(item.get_closest_marker("triton") for item in items) else None
    for item in items:
        # by marker, not item.keywords: those also hold folder names (a checkout in a folder named "triton")
        if item.get_closest_marker("gpu") and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device (none here)"))
        if item.get_closest_marker("trt") and not has_trt:
            item.add_marker(pytest.mark.skip(reason="needs TensorRT and a CUDA device (not installable here)"))
        if item.get_closest_marker("browser") and not has_chromium:
            item.add_marker(pytest.mark.skip(reason="needs Chromium (apt install chromium)"))
        if triton_skip and item.get_closest_marker("triton"):
            item.add_marker(pytest.mark.skip(reason=triton_skip))


def _triton_missing() -> str | None:
    """Why the real-Triton tests cannot run here (None: they can): the tritonserver binary or the HTTP client."""
    try:
        find_tritonserver()
    except UserError as exc:
        return str(exc)
    try:
        import tritonclient.http  # noqa: F401, PLC0415 - optional, only probed
    except ImportError:
        return "needs the Triton client: pip install 'tritonclient[http]==2.69.0'"
    return None


@pytest.fixture(scope="session")
def tiny_bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random bundle (tests/bundles.py), saved once per session. Engines never modify a bundle, so tests
    share it; a test that changes one makes its own with ``make_tiny_bundle``."""
    path = tmp_path_factory.mktemp("bundle") / "tiny"
    make_tiny_bundle().save(path)
    return path


@pytest.fixture(scope="session")
def tiny_bundle(tiny_bundle_dir: Path) -> Bundle:
    """The session's tiny bundle, loaded."""
    return load_bundle(tiny_bundle_dir)
