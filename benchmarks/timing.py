"""Timing helpers: warm-up, then per-call wall time (CPU) or CUDA events (GPU); median / p90 / p99."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def time_calls(fn: Callable[[], object], device: str = "cpu", warmup: int = 3, iters: int = 20,
               max_seconds: float = 30.0) -> list[float]:
    """Run ``fn`` ``warmup`` times, then up to ``iters`` timed times (stops early after ``max_seconds``).
    Returns per-call milliseconds."""
    cuda = device.startswith("cuda")
    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize()
    out: list[float] = []
    t_end = time.perf_counter() + max_seconds
    for _ in range(iters):
        if cuda:
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            out.append(start.elapsed_time(stop))
        else:
            t0 = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t0) * 1e3)
        if time.perf_counter() > t_end and len(out) >= 3:
            break
    return out


def summarise(ms: list[float]) -> dict[str, float]:
    s = sorted(ms)

    def pct(p: float) -> float:
        return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]

    return {"median_ms": statistics.median(s), "p90_ms": pct(90), "p99_ms": pct(99), "mean_ms": statistics.fmean(s),
            "n": len(s)}
