"""Per-call overhead of a real Triton server (Python backend + ONNX Runtime, loopback HTTP) over ONNX Runtime in
process, for one bundle, in the same sitting:

    python -m benchmarks.bench_triton --bundle bundles/default --batch 1 4 --iters 200 \
        --json docs/bench/triton-cpu.json

Both sides run the same exported fp32 models on one ORT intra-op thread (OrtEngine threads=1; the server's model
instances ``intra_op_threads: 1``). Calls alternate ORT, Triton, ORT, … so load on the shared machine hits both
alike. Each ``--queue-delay-us`` value gets its own repository and server: 0 is the transport + Python-backend
cost alone; with a delay, a lone request waits up to that long for others to batch with (a single stream here).
Needs the tritonserver binary (realtime/engines/triton_server.py) and ``tritonclient[http]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.provenance import command_line, provenance, write_result
from benchmarks.timing import summarise
from export.onnx import available_models, example_inputs
from export.triton_python import write_python_repository
from models.bundle import load_bundle
from realtime.engines import EngineOptions, EngineSpec, make_engine
from realtime.engines.exported import ensure_onnx
from realtime.engines.triton_server import TritonServer


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", default="bundles/default", help="bundle folder")
    p.add_argument("--batch", type=int, nargs="*", default=[1, 4], help="batch sizes")
    p.add_argument("--calls", nargs="*", default=["synthesize", "encode_key"], choices=["synthesize", "encode_key",
                                                                                        "encode_reuse"])
    p.add_argument("--queue-delay-us", type=int, nargs="*", default=[0, 2000], help="dynamic-batching delays")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--json", type=Path, default=None, help="write results here")


def _interleaved(fns: dict[str, Any], warmup: int, iters: int) -> dict[str, list[float]]:
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(iters):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            out[k].append((time.perf_counter() - t0) * 1e3)
    return out


_MODEL = {"synthesize": "stylestream_synthesis", "encode_key": "stylestream_fren", "encode_reuse": "stylestream_vien"}


def _server_side(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    """Mean per-request server times (ms) between two /stats snapshots: request (arrival → response), queue,
    compute_infer (model.py's execute: ORT plus the stub's tensor handling)."""
    def mean(key: str) -> float:
        n = after["inference_stats"][key]["count"] - before["inference_stats"][key]["count"]
        ns = after["inference_stats"][key]["ns"] - before["inference_stats"][key]["ns"]
        return ns / max(n, 1) / 1e6

    return {"request_ms": mean("success"), "queue_ms": mean("queue"), "compute_infer_ms": mean("compute_infer")}


def _call(engine: Any, call: str, crops: torch.Tensor, ws: torch.Tensor) -> Any:
    if call == "synthesize":
        return lambda: engine.synthesize(ws)
    if call == "encode_key":
        return lambda: engine.encode_key(crops)
    return lambda: engine.encode_reuse(crops, ws)


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(1)
    bundle = load_bundle(args.bundle)
    onnx_dir = ensure_onnx(bundle, None, "fp32", available_models(bundle))
    ort = make_engine(bundle, EngineSpec("onnx", "cpu", "fp32", EngineOptions(model_dir=onnx_dir, threads=1)))
    rows: list[dict[str, Any]] = []
    startups: dict[int, float] = {}
    for delay in args.queue_delay_us:
        with tempfile.TemporaryDirectory(prefix="stylestream-bench-triton-") as tmp:
            repo = Path(tmp) / "repo"
            write_python_repository(bundle, repo, onnx_dir=onnx_dir, max_batch=max(8, *args.batch),
                                    queue_delay_us=delay, ensemble=False)
            with TritonServer(repo, grpc=False) as srv:
                assert srv.startup_s is not None
                startups[delay] = srv.startup_s
                tri = make_engine(bundle, EngineSpec("triton", "cpu", options=EngineOptions(triton_url=srv.http_url)))
                for b in args.batch:
                    crops = example_inputs(bundle, "fren", batch=b, seed=1)["crops"]
                    ws = ort.encode_key(crops)
                    for call in args.calls:
                        fns = {"onnx": _call(ort, call, crops, ws), "triton": _call(tri, call, crops, ws)}
                        torch.testing.assert_close(fns["triton"](), fns["onnx"](), atol=1e-4, rtol=1e-4)
                        model = _MODEL[call]
                        before = srv.stats(model)
                        ms = _interleaved(fns, args.warmup, args.iters)
                        server = _server_side(before, srv.stats(model))
                        s_o, s_t = summarise(ms["onnx"]), summarise(ms["triton"])
                        rows.append({"call": call, "batch": b, "queue_delay_us": delay, "onnx": s_o, "triton": s_t,
                                     "overhead_median_ms": s_t["median_ms"] - s_o["median_ms"], "server": server})
                        print(f"{call:12s} batch {b}  delay {delay:5d} µs  onnx {s_o['median_ms']:7.2f} ms  "
                              f"triton {s_t['median_ms']:7.2f} ms  overhead {rows[-1]['overhead_median_ms']:+7.2f} ms"
                              f"  (p90 {s_o['p90_ms']:.2f} / {s_t['p90_ms']:.2f}, n={s_t['n']}; server mean: "
                              f"request {server['request_ms']:.2f}, queue {server['queue_ms']:.2f}, "
                              f"model.py {server['compute_infer_ms']:.2f} ms)", flush=True)
                tri.close()  # before the server stops: open keep-alive connections hold its shutdown
    write_result(args.json, {"command": command_line(), "provenance": provenance("cpu"), "bundle": args.bundle,
                             "startup_s": startups, "rows": rows})
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
