"""Live streams through a model server that is killed and restarted, then stalled: what the streams see.

    python -m benchmarks.bench_faults --streams 4 --fps 15 --timeout 1.0 --json docs/bench/faults-cpu.json

N live streams (tolerant StageRunners with the server's tracker — mesh every 2nd frame — and edit ``smile=1.5``)
share one TritonEngine through a BatchingEngine, as `serve --backend triton` does, against a real Triton server
(the Python-backend repository, realtime/engines/triton_server.py). Phases: healthy; ``kill -9`` of the server;
restart on the same ports; healthy; ``SIGSTOP`` (the server accepts connections and never answers); ``SIGCONT``.
Per phase and stream: output fps, the longest gap between two output frames, frame latency (submit → out, p50 /
p99), frames sent without the model; the time from the server being ready again (or resumed) to every stream
processing with the model again; and at the end whether any stream's threads outlived ``stop()`` (a hung peer).
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_streams import Stream, bundle_for
from benchmarks.provenance import command_line, provenance, write_result
from export.onnx import available_models
from export.triton_python import write_python_repository
from realtime.engines import BatchConfig, BatchingEngine, EngineOptions, EngineSpec, make_engine
from realtime.engines.exported import ensure_onnx
from realtime.engines.triton_server import TritonServer
from realtime.server.client import clip_frames
from realtime.server.worker import limit_op_threads
from realtime.vision.tracking import FaceTracker, TrackerConfig


def _stop_streams(streams: list[Stream], phases: dict[str, Any]) -> None:
    """Stop every stream (how long that took, and how many runners are still alive, go into ``phases``)."""
    t = time.monotonic()
    for s in streams:
        s.stop()
    phases["stop_s"] = round(time.monotonic() - t, 2)
    phases["hung_streams"] = sum(s.runner.alive() for s in streams)


def _phase(streams: list[Stream], t0: float, t1: float, fps: float) -> dict[str, Any]:
    rows = []
    for s in streams:
        out = [o for o in s.out if t0 <= o[0] < t1]
        times = [t0] + [o[0] for o in out] + [t1]
        lat = [o[1] for o in out]
        rows.append({"fps": round(len(out) / (t1 - t0), 2), "max_gap_s": round(max(np.diff(times)), 3),
                     "latency_ms": {"p50": round(float(np.percentile(lat, 50)), 1) if lat else None,
                                    "p99": round(float(np.percentile(lat, 99)), 1) if lat else None}})
    return {"seconds": round(t1 - t0, 2), "fed_fps_per_stream": fps, "streams": rows,
            "fps_min": min(r["fps"] for r in rows), "max_gap_s": max(r["max_gap_s"] for r in rows),
            "latency_p99_ms_max": max((r["latency_ms"]["p99"] or 0) for r in rows)}


def _wait_recovered(streams: list[Stream], count: int, timeout: float) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if all(s.runner.faults()["recoveries"] >= count for s in streams):
            return round(time.monotonic() - t0, 2)
        time.sleep(0.02)
    return None


def run(args: argparse.Namespace) -> dict[str, Any]:
    limit_op_threads(1)
    bundle, desc = bundle_for(args.bundle)
    frames = clip_frames(640, 480, count=60)
    onnx_dir = ensure_onnx(bundle, None, "fp32", available_models(bundle))
    phases: dict[str, Any] = {}
    with contextlib.ExitStack() as resources:  # each released once it exists, whatever fails after it
        tmp = resources.enter_context(tempfile.TemporaryDirectory(prefix="stylestream-bench-faults-"))
        write_python_repository(bundle, Path(tmp) / "repo", onnx_dir=onnx_dir, ensemble=False)
        srv = resources.enter_context(TritonServer(Path(tmp) / "repo", grpc=False))
        eng = make_engine(bundle, EngineSpec("triton", "cpu", options=EngineOptions(triton_url=srv.http_url,
                                                                                      timeout_s=args.timeout)))
        shared = BatchingEngine(eng, BatchConfig())
        resources.callback(shared.close)
        tracker = TrackerConfig(smoothing="one_euro", mesh_every=2)
        streams = [Stream(i, shared, bundle, lambda: FaceTracker(tracker), frames, args.fps)
                   for i in range(args.streams)]
        resources.callback(_stop_streams, streams, phases)
        for s in streams:
            s.start()
        time.sleep(args.warmup)
        t = time.monotonic()
        time.sleep(args.phase)
        phases["healthy"] = _phase(streams, t, time.monotonic(), args.fps)
        t = time.monotonic()
        srv.kill()
        time.sleep(args.phase)
        phases["killed"] = _phase(streams, t, time.monotonic(), args.fps)
        t = time.monotonic()
        srv.start(keep_ports=True)
        phases["restart_ready_s"] = round(time.monotonic() - t, 2)
        phases["recovered_after_ready_s"] = _wait_recovered(streams, 1, 30)
        phases["restarting"] = _phase(streams, t, time.monotonic(), args.fps)
        time.sleep(2.0)
        t = time.monotonic()
        srv.pause()
        time.sleep(args.phase)
        phases["stalled"] = _phase(streams, t, time.monotonic(), args.fps)
        srv.resume()
        phases["recovered_after_resume_s"] = _wait_recovered(streams, 2, 30)
        phases["faults"] = [s.runner.faults() for s in streams]
        phases["last_error"] = streams[0].runner.error
    return {"command": command_line(), "provenance": provenance("cpu"), "bundle": desc, "streams": args.streams,
            "timeout_s": args.timeout, "phases": phases}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default="default")
    p.add_argument("--streams", type=int, default=4)
    p.add_argument("--fps", type=float, default=15.0, help="frames per second fed to each stream")
    p.add_argument("--timeout", type=float, default=1.0, help="the engine's per-request timeout (--triton-timeout)")
    p.add_argument("--phase", type=float, default=5.0, help="seconds per phase")
    p.add_argument("--warmup", type=float, default=4.0)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    result = run(args)
    write_result(args.json, result)
    ph = result["phases"]
    for name in ("healthy", "killed", "restarting", "stalled"):
        r = ph[name]
        print(f"{name:10s} fps min {r['fps_min']:5.1f} / fed {r['fed_fps_per_stream']:g}, longest gap "
              f"{r['max_gap_s']:.2f} s, latency p99 max {r['latency_p99_ms_max']:.0f} ms")
    print(f"restart ready {ph['restart_ready_s']} s, recovered {ph['recovered_after_ready_s']} s after ready, "
          f"{ph['recovered_after_resume_s']} s after SIGCONT; stop {ph['stop_s']} s, hung streams "
          f"{ph['hung_streams']}; faults {ph['faults'][0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
