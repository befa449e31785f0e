"""Live calibration: how long it takes, what it gains, and what it costs the running stream.

    python -m benchmarks.bench_calibrate [--backend torch|onnx] [--seconds 60] [--json docs/bench/calibrate-cpu.json]

1. **Timeline.** The live pipeline (a file released at its frame rate like a camera → tracking → device worker →
   null sink) runs the bundle; after ``--warmup`` seconds a calibration starts (``FrameProcessor.calibrate()``, as
   the camera's ``c`` key or the page's button do). Per second: output fps, drops, mean latency and the calibration
   phase. Summary: fps / latency / drops before, during each phase of the calibration (recording, starting the
   worker, adapting, exporting, building the engine) and after; the phases' wall times as the calibrator reports
   them (they add up to the request → swap time) and the reconstruction PSNR on the recorded frames before / after.
   ``--compete N`` runs N CPU-bound processes (a busy loop at normal priority) next to it for the whole run.
2. **Isolation** (``--isolation``): why the adaptation runs in a worker process. A tight encode + synthesize loop
   (the device worker's model work, one thread) is timed alone, next to the same adaptation in a *thread* of the same
   process, and next to it in a *spawned process* at nice +10.

A ``demo:`` input is rendered to a temporary H.264 file first (decoding a file costs what a camera costs; the
synthetic clip generator costs a core).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import multiprocessing
import os
import tempfile
import threading
import time
from pathlib import Path

import torch
from rich.console import Console

from benchmarks.bench_pipeline import bundle_or_default, render_to_file
from benchmarks.provenance import command_line, provenance, write_result
from realtime.engines import EngineSpec, make_engine
from realtime.frames import now_ns
from realtime.io.sinks import open_sink
from realtime.io.sources import open_source
from realtime.pipeline import FrameProcessor, Pipeline, PipelineConfig
from realtime.pipeline.calibration import CalibrationConfig, become_background_worker
from realtime.vision.mediapipe_runtime import install_native_stderr_filter
from realtime.vision.tracking import FaceTracker, TrackerConfig
from training.adapt import AdaptConfig, adapt_generator


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", default="demo:portrait?fps=30&size=640x480&seed=11", help="any source spec "
                   "(demo: specs get ?seconds= from --seconds)")
    p.add_argument("--seconds", type=float, default=60.0, help="length of the live run")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds before the calibration starts")
    p.add_argument("--bundle", type=Path, default=None, help="bundle folder (default: the default bundle)")
    p.add_argument("--backend", default="torch", choices=["torch", "onnx"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--frames", type=int, default=30, help="calibration: recorded pairs")
    p.add_argument("--iters", type=int, default=200, help="calibration: adaptation steps")
    p.add_argument("--isolation", action="store_true", help="also time the model loop next to a thread/process")
    p.add_argument("--compete", type=int, default=0, help="CPU-bound processes to run next to the live run")
    p.add_argument("--json", type=Path, default=None)


def timeline(args: argparse.Namespace, path: str) -> dict:
    bundle, which = bundle_or_default(args.bundle)
    engine = make_engine(bundle, EngineSpec(args.backend, args.device))
    processor = FrameProcessor(engine, PipelineConfig(), calibration=CalibrationConfig(frames=args.frames,
                                                                                         iters=args.iters))
    rows: list[dict] = []
    events: dict[str, float] = {}
    t0 = [0.0]

    def on_output(out, stats) -> None:
        now = time.perf_counter()
        if not t0[0]:
            t0[0] = now
        t = now - t0[0]
        if "start" not in events and t >= args.warmup:
            events["start"] = t
            processor.calibrate()
        cal = processor.calibrator
        state = cal.phase if cal is not None else "idle"
        if cal is not None and state not in events:
            events[state] = t
        rows.append({"t": t, "latency_ms": (now_ns() - out.capture_ns) / 1e6, "state": state,
                     "drops": pipeline.drops()})

    source = open_source(path, live=True, realtime=True)
    with source, open_sink("null:", width=source.width, height=source.height, fps=source.fps) as sink, \
            FaceTracker(TrackerConfig(smoothing="one_euro", fps=source.fps)) as tracker:
        pipeline = Pipeline(source, tracker, processor, sink, live=True, on_output=on_output)
        stats = pipeline.run()
    status = processor.calibration_status()
    processor.release()
    engine.close()

    per_second = []
    for s in range(int(rows[-1]["t"]) + 1 if rows else 0):
        sec = [r for r in rows if s <= r["t"] < s + 1]
        if sec:
            per_second.append({"second": s, "fps": len(sec), "latency_ms": round(sum(r["latency_ms"] for r in sec)
                                                                                  / len(sec), 1),
                               "drops": sec[-1]["drops"], "state": sec[-1]["state"]})

    def phase(lo: float, hi: float) -> dict:
        sec = [r for r in rows if lo <= r["t"] < hi]
        span = (sec[-1]["t"] - sec[0]["t"]) if len(sec) > 1 else 0.0
        lat = sorted(r["latency_ms"] for r in sec)
        before = [r["drops"] for r in rows if r["t"] < lo]  # drops counted up to the last frame before the phase
        drops = (sec[-1]["drops"] - (before[-1] if before else 0)) if sec else 0
        return {"seconds": round(hi - lo, 1) if hi < 1e9 else None, "frames": len(sec),
                "fps": round((len(sec) - 1) / span, 1) if span > 0 else None,
                "latency_p50_ms": round(lat[len(lat) // 2], 1) if lat else None,
                "latency_p99_ms": round(lat[min(len(lat) - 1, int(0.99 * len(lat)))], 1) if lat else None,
                "drops": drops, "drops_pct": round(100 * drops / (drops + len(sec)), 2) if sec else None}

    start, active = events.get("start", 0.0), events.get("active", float("inf"))
    order = [k for k in ("recording", "starting", "adapting", "exporting", "building") if k in events]
    ends = [events[k] for k in order[1:]] + [active]
    by_phase = {k: phase(events[k], end) for k, end in zip(order, ends, strict=True)}
    return {"input": args.input, "bundle": which, "engine": {"backend": engine.name, "device": str(engine.device),
                                                             "precision": engine.precision},
            "calibration": {"frames": args.frames, "iters": args.iters, **status},
            "events_s": {k: round(v, 2) for k, v in events.items()},
            "time_to_active_s": round(active - start, 2) if active < float("inf") else None,
            "phases": {"before": phase(0.5, start), **by_phase, "calibrating": phase(start, active),
                       "after": phase(active, float("inf")) if active < float("inf") else None},
            "per_second": per_second, "run": {k: v for k, v in stats.to_dict().items() if k != "stages"}}


def _busy() -> None:
    """A CPU-bound process at normal priority (``--compete``): what another program on the machine costs."""
    x = 0
    while True:
        x = (x * 1103515245 + 12345) % 2**31


class _Stop(Exception):
    pass


def _adapt_forever(bundle, crops, ws, stop=None) -> None:
    """The calibration's adaptation, endlessly (until ``stop`` is set or the process is terminated)."""
    work = dataclasses.replace(bundle, generator=copy.deepcopy(bundle.generator))

    def check(it, total, loss) -> None:
        if stop is not None and stop.is_set():
            raise _Stop

    with contextlib.suppress(_Stop):
        adapt_generator(work, crops, ws, AdaptConfig(iters=10**9), progress=check)


def _child(bundle, crops, ws) -> None:
    become_background_worker(1)  # exactly as the calibration worker (default --calibrate-threads 1)
    _adapt_forever(bundle, crops, ws)


def isolation(args: argparse.Namespace, seconds: float = 8.0) -> dict:
    torch.set_num_threads(1)
    bundle, which = bundle_or_default(args.bundle)
    g = bundle.generator.eval()
    s = bundle.crop_size
    crops = torch.rand(args.frames, 3, s, s) * 2 - 1
    ws = torch.randn(args.frames, g.num_ws, g.w_dim)

    def loop_rate() -> float:
        n, t0 = 0, time.perf_counter()
        with torch.inference_mode():
            while time.perf_counter() - t0 < seconds:
                bundle.fren(crops[:1])
                g.synthesis(ws[:1], noise_mode="const")
                n += 1
        return n / (time.perf_counter() - t0)

    alone = loop_rate()
    stop = threading.Event()
    th = threading.Thread(target=_adapt_forever, args=(bundle, crops, ws, stop), daemon=True)
    th.start()
    time.sleep(1.0)
    with_thread = loop_rate()
    stop.set()
    th.join()
    proc = multiprocessing.get_context("spawn").Process(target=_child, args=(bundle, crops, ws), daemon=True)
    proc.start()
    time.sleep(4.0)  # spawn + import
    with_process = loop_rate()
    proc.terminate()
    proc.join()
    return {"bundle": which, "loop": "FrEN + synthesis, batch 1, 1 thread", "seconds_each": seconds,
            "iterations_per_s": {"alone": round(alone, 1), "adaptation_in_thread": round(with_thread, 1),
                                 "adaptation_in_process": round(with_process, 1)}}


def markdown(result: dict) -> str:
    p = result["provenance"]
    tl = result["timeline"]
    cal = tl["calibration"]
    lines = [f"Measured {p['date']} on {p.get('gpu') or p['cpu']} ({p['cpu_count']} cores), torch {p['torch']}, "
             f"commit {p['git_commit']}, load average {p.get('load_avg', ['?'])[0]}.", "",
             f"Command: `{result['command']}`", "",
             f"Competing CPU-bound processes: {result.get('compete', 0)}; load average after the run "
             f"{result.get('load_avg_after', '?')}.", "",
             f"Engine {tl['engine']['backend']} {tl['engine']['device']} {tl['engine']['precision']}, bundle "
             f"{tl['bundle']}, {cal['frames']} recorded pairs, {cal['iters']} steps. Time from the request to the "
             f"swap: **{tl['time_to_active_s']} s**; phases (s): {cal.get('seconds', {})}; reconstruction PSNR on the "
             f"recorded frames: {cal.get('psnr', {})}.", "",
             "| phase | seconds | fps | latency p50 / p99 ms | drops (% of frames) |", "|---|---|---|---|---|"]
    for name, ph in tl["phases"].items():
        if ph:
            lines.append(f"| {name} | {ph['seconds'] if ph['seconds'] is not None else '-'} | {ph['fps']} | "
                         f"{ph['latency_p50_ms']} / {ph['latency_p99_ms']} | {ph['drops']}"
                         + (f" ({ph['drops_pct']} %)" if ph.get("drops_pct") is not None else "") + " |")
    if "isolation" in result:
        iso = result["isolation"]["iterations_per_s"]
        lines += ["", "Model loop (FrEN + synthesis, 1 thread) iterations/s: alone "
                  f"{iso['alone']}, next to the adaptation in a thread {iso['adaptation_in_thread']}, next to it in "
                  f"a worker process {iso['adaptation_in_process']}."]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    result: dict = {"benchmark": "calibrate", "command": command_line(), "provenance": provenance(args.device)}
    with tempfile.TemporaryDirectory() as tmp:
        path = args.input
        if args.input.startswith("demo"):
            spec = args.input + ("&" if "?" in args.input else "?") + f"seconds={args.seconds:g}"
            with console.status(f"rendering {spec} to a temporary H.264 file"):
                render_to_file(spec, Path(tmp) / "input.mp4")
            path = str(Path(tmp) / "input.mp4")
        result["compete"] = args.compete
        hogs = [multiprocessing.get_context("spawn").Process(target=_busy, daemon=True) for _ in range(args.compete)]
        for h in hogs:
            h.start()
        try:
            with console.status(f"live run with a calibration after {args.warmup:g} s"):
                result["timeline"] = timeline(args, path)
        finally:
            for h in hogs:
                h.terminate()
                h.join()
        result["load_avg_after"] = [round(v, 2) for v in os.getloadavg()]
    if args.isolation:
        with console.status("model loop alone / next to an adaptation thread / next to a worker process"):
            result["isolation"] = isolation(args)
    md = markdown(result)
    print(md)
    write_result(args.json, result)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    install_native_stderr_filter()  # MediaPipe's start-up lines, as the CLI does
    raise SystemExit(main())
