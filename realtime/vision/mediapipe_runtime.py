"""Importing and running MediaPipe 0.10.21 without its start-up noise.

With protobuf 6 (which onnx needs), MediaPipe's C++ bindings report
``AttributeError: 'MessageFactory' object has no attribute 'GetPrototype'`` through ``sys.excepthook`` once, at
import (harmless: the graphs run), and its TFLite/absl code writes ``INFO: Created TensorFlow Lite XNNPACK
delegate``, ``W0000 … inference_feedback_manager …`` and similar lines straight to file descriptor 2 when graphs
start, partly from its own threads after the call returned. A user of ``stylestream run`` should see none of that:

* :func:`import_mediapipe` drops that one AttributeError report while the import runs (once per process);
* :func:`install_native_stderr_filter`, called once at start-up (the CLI does), routes fd 2 through a thread that
  drops the known lines and passes everything else through.

Nothing here swaps ``sys.stderr`` or fd 2 around a call: those are process-wide, and worker threads (one tracker
per server session) that redirected them around their calls and finished out of order left the process writing
into a discarded buffer (issue 17). Without the filter (a library user, the tests) MediaPipe's lines just reach
fd 2.

MediaPipe is optional at import time: this module (and everything that imports it) loads without it;
:func:`import_mediapipe` and :func:`detect_landmarks` load it on first use.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import os
import sys
import threading
import warnings
from collections.abc import Sequence
from types import ModuleType

import numpy as np

from models.errors import UserError
from realtime.vision.topology import NUM_LANDMARKS

# Substrings of lines MediaPipe prints on every start; anything else is passed through.
NOISE = (
    "GetPrototype",
    "XNNPACK delegate",
    "absl::InitializeLog()",
    "inference_feedback_manager",
    "landmark_projection_calculator",
    "Feedback manager requires",
    "gl_context",
)

_import_lock = threading.Lock()

os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _is_noise(line: str) -> bool:
    return any(n in line for n in NOISE)


_filter: dict[str, object] = {}


def install_native_stderr_filter() -> None:
    """Route fd 2 through a noise filter for the rest of the process (idempotent; see the module doc). Call it
    once, at start-up, before other threads write to stderr: ``sys.stderr`` is replaced by a writer on the
    original fd 2 (so rich still sees the terminal), and that replacement is never undone."""
    with _import_lock:
        if not _filter and os.environ.get("STYLESTREAM_MEDIAPIPE_LOGS") != "1":
            _install_filter()


def _install_filter() -> None:
    try:
        sys.stderr.flush()
        original = os.dup(2)
        r, w = os.pipe()
        os.dup2(w, 2)
        os.close(w)
    except OSError:
        return
    enc = getattr(sys.stderr, "encoding", None) or "utf-8"
    sys.stderr = io.TextIOWrapper(io.FileIO(original, "w", closefd=False), encoding=enc,
                                  errors="backslashreplace", line_buffering=True)

    def pump() -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(r, 65536)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for ln in lines:
                if not _is_noise(ln.decode("utf-8", "replace")):
                    os.write(original, ln + b"\n")
        if buf and not _is_noise(buf.decode("utf-8", "replace")):
            os.write(original, buf)

    t = threading.Thread(target=pump, name="stylestream-stderr-filter", daemon=True)
    t.start()
    _filter.update(original=original, thread=t)

    def restore() -> None:  # at exit: put fd 2 back and let the pump drain what is left
        with contextlib.suppress(OSError):
            sys.stderr.flush()
            os.dup2(original, 2)
        t.join(timeout=1.0)

    atexit.register(restore)


def import_mediapipe(purpose: str = "face tracking") -> ModuleType:
    """``import mediapipe`` without its GetPrototype report; a missing or broken install is a one-line UserError
    naming ``purpose``."""
    with _import_lock:
        mediapipe = sys.modules.get("mediapipe")
        if mediapipe is None:
            mediapipe = _first_import(purpose)
    return mediapipe


def unusable(purpose: str, exc: BaseException) -> BaseException:
    """What to raise when importing MediaPipe failed with ``exc``: KeyboardInterrupt when a Ctrl-C / SIGTERM struck
    inside a compiled module's initialisation (pybind11 reports it as ``ImportError: initialization failed`` caused
    by the KeyboardInterrupt), else a one-line UserError naming ``purpose``."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            return KeyboardInterrupt()
        seen = seen.__cause__ or seen.__context__
    return UserError(f"{purpose} needs MediaPipe 0.10.21 ({type(exc).__name__}: {exc}); "
                     "install it with: pip install --no-deps mediapipe==0.10.21")


def _first_import(purpose: str) -> ModuleType:
    # MediaPipe's bindings call PyErr_Print → sys.excepthook(AttributeError, …, None) for the GetPrototype error.
    # The hook is wrapped for the one import only (under _import_lock) and passes anything else on.
    previous = sys.excepthook

    def hook(kind: type[BaseException], value: BaseException, tb: object) -> None:
        if tb is None and issubclass(kind, AttributeError) and "GetPrototype" in str(value):
            return
        previous(kind, value, tb)  # type: ignore[arg-type]

    sys.excepthook = hook
    try:
        import mediapipe  # noqa: PLC0415 - optional, heavy, and noisy at import
    except Exception as exc:  # ImportError, or a broken protobuf/numpy combination
        raise unusable(purpose, exc) from None
    finally:
        if sys.excepthook is hook:
            sys.excepthook = previous
    # protobuf's "Call to deprecated label property" from MediaPipe's graph set-up (shown only with -W / -X dev)
    warnings.filterwarnings("ignore", message="Call to deprecated label property", category=DeprecationWarning)
    return mediapipe


def _face_mesh_solution() -> ModuleType:
    """MediaPipe's ``solutions.face_mesh`` module, imported quietly (UserError when MediaPipe is unusable)."""
    import_mediapipe("finding face landmarks")
    try:
        from mediapipe.python.solutions import face_mesh  # noqa: PLC0415 - optional, heavy
    except Exception as exc:  # a broken protobuf/numpy combination
        raise unusable("finding face landmarks", exc) from None
    return face_mesh


def detect_landmarks(images: Sequence[np.ndarray]) -> list[np.ndarray | None]:
    """468 face-mesh landmarks per still image with MediaPipe's runtime (static image mode, one face).

    images: each [H, W, 3] uint8 RGB. Returns per image [468, 3] float32 (pixel-index x, y; z·width) or None
    when no face is found.
    """
    face_mesh = _face_mesh_solution()
    out: list[np.ndarray | None] = []
    with face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=False,
                            min_detection_confidence=0.5) as fm:
        for img in images:
            assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8, (img.shape, img.dtype)
            res = fm.process(np.ascontiguousarray(img))
            if not res.multi_face_landmarks:
                out.append(None)
                continue
            h, w = img.shape[:2]
            pts = res.multi_face_landmarks[0].landmark
            arr = np.array([(p.x, p.y, p.z) for p in pts[:NUM_LANDMARKS]], np.float64)
            lm = np.empty((NUM_LANDMARKS, 3), np.float32)
            lm[:, 0] = arr[:, 0] * w - 0.5
            lm[:, 1] = arr[:, 1] * h - 0.5
            lm[:, 2] = arr[:, 2] * w
            out.append(lm)
    return out
