"""Importing and running MediaPipe 0.10.21 without its start-up noise.

With protobuf 6 (which onnx needs), MediaPipe's C++ bindings print
``AttributeError: 'MessageFactory' object has no attribute 'GetPrototype'`` at import (harmless: the graphs
run), and its TFLite/absl code writes ``INFO: Created TensorFlow Lite XNNPACK delegate``, ``W0000 …
inference_feedback_manager …`` and similar lines straight to file descriptor 2 when graphs start. A user of
``stylestream run`` should see none of that. :func:`quiet_native_stderr` captures fd 2 around those calls and
replays every line that is *not* known noise, so real errors still reach the terminal.

MediaPipe is optional at import time: this module (and everything that imports it) loads without it;
:func:`import_mediapipe` and :func:`detect_landmarks` load it on first use.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import os
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
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

_lock = threading.Lock()
_depth = 0
_saved_fd: int | None = None
_capture: tempfile._TemporaryFileWrapper | None = None  # type: ignore[type-arg]

os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _is_noise(line: str) -> bool:
    return any(n in line for n in NOISE)


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Capture fd 2 (and ``sys.stderr``) inside the block; afterwards replay the lines that are not noise.
    Re-entrant and thread-safe: the outermost block of all threads owns the redirection."""
    global _depth, _saved_fd, _capture
    with _lock:
        if _depth == 0:
            try:
                sys.stderr.flush()
                _capture = tempfile.TemporaryFile(mode="w+b")  # noqa: SIM115 - closed when the block ends
                _saved_fd = os.dup(2)
                os.dup2(_capture.fileno(), 2)
            except OSError:  # no usable fd 2 (embedded): just run
                _capture, _saved_fd = None, None
        _depth += 1
    py_err = io.StringIO()
    try:
        with contextlib.redirect_stderr(py_err):
            yield
    finally:
        keep = [ln for ln in py_err.getvalue().splitlines() if ln.strip() and not _is_noise(ln)]
        with _lock:
            _depth -= 1
            if _depth == 0 and _saved_fd is not None and _capture is not None:
                os.dup2(_saved_fd, 2)
                os.close(_saved_fd)
                _capture.seek(0)
                native = _capture.read().decode("utf-8", "replace")
                _capture.close()
                _saved_fd, _capture = None, None
                keep += [ln for ln in native.splitlines() if ln.strip() and not _is_noise(ln)]
        for ln in keep:
            print(ln, file=sys.stderr)


_filter: dict[str, object] = {}


def install_native_stderr_filter() -> None:
    """Route fd 2 through a noise filter for the rest of the process (idempotent; see the module doc)."""
    if _filter or os.environ.get("STYLESTREAM_MEDIAPIPE_LOGS") == "1":
        return
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
    """``import mediapipe`` quietly; a missing or broken install is a one-line UserError naming ``purpose``."""
    try:
        with quiet_native_stderr():
            import mediapipe  # noqa: PLC0415 - optional, heavy, and noisy at import
    except Exception as exc:  # ImportError, or a broken protobuf/numpy combination
        raise UserError(f"{purpose} needs MediaPipe 0.10.21 ({type(exc).__name__}: {exc}); "
                        "install it with: pip install --no-deps mediapipe==0.10.21") from None
    return mediapipe


def _face_mesh_solution() -> ModuleType:
    """MediaPipe's ``solutions.face_mesh`` module, imported quietly (UserError when MediaPipe is unusable)."""
    import_mediapipe("finding face landmarks")
    try:
        with quiet_native_stderr():
            from mediapipe.python.solutions import face_mesh  # noqa: PLC0415 - optional, heavy
    except Exception as exc:  # a broken protobuf/numpy combination
        raise UserError(f"finding face landmarks needs MediaPipe 0.10.21 ({type(exc).__name__}: {exc}); "
                        "install it with: pip install --no-deps mediapipe==0.10.21") from None
    return face_mesh


def detect_landmarks(images: Sequence[np.ndarray]) -> list[np.ndarray | None]:
    """468 face-mesh landmarks per still image with MediaPipe's runtime (static image mode, one face).

    images: each [H, W, 3] uint8 RGB. Returns per image [468, 3] float32 (pixel-index x, y; z·width) or None
    when no face is found.
    """
    face_mesh = _face_mesh_solution()
    out: list[np.ndarray | None] = []
    with quiet_native_stderr(), face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=False,
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
