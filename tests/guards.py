"""Run a call that might block forever (a reader stuck on a FIFO holds the GIL inside safetensors' Rust code) in a
forked child with a deadline, so a regression fails the test instead of hanging the test run."""

from __future__ import annotations

import os
import pickle
import select
import signal
from collections.abc import Callable
from typing import Any


def call_in_child(fn: Callable[[], Any], timeout: float) -> tuple[str, str]:
    """fork; the child runs fn() and reports → ("ok", "") or (exception class name, message); ("timeout", "")
    when it has not answered after ``timeout`` seconds (the child is then killed)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        os.close(r)
        try:
            fn()
            out = ("ok", "")
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            out = (type(exc).__name__, str(exc))
        os.write(w, pickle.dumps(out))
        os._exit(0)
    os.close(w)
    try:
        ready, _, _ = select.select([r], [], [], timeout)
        if not ready:
            os.kill(pid, signal.SIGKILL)
            return "timeout", ""
        chunks = []
        while chunk := os.read(r, 1 << 16):
            chunks.append(chunk)
        return pickle.loads(b"".join(chunks))
    finally:
        os.close(r)
        os.waitpid(pid, 0)
