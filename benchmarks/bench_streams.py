"""Many streams on one machine: how the shared engine scales with the stream count, per way of sharing it.

    stylestream bench streams --streams 1,2,4,8 --modes serial,batched,triton --bundles default,small-128 \\
        --seconds 10 --json docs/bench/streams-cpu.json --plot docs/img/streams_cpu.png

For each bundle, mode and stream count, N live streams run in this process as the server runs its peers — one
:class:`~realtime.pipeline.runner.StageRunner` each (tracking thread, device thread, 1-slot drop-oldest queues,
tolerant) over one shared engine — fed 640×480 face frames at ``--fps`` each, with an edit on in every stream so
the models run on every frame (``smile=1.5``; a random bundle gets a random W-direction ``smile``):

* ``serial``  one engine call per stream call (:class:`~realtime.engines.SerialEngine`, `serve --no-batching`);
* ``batched`` the streams' concurrent calls merged (:class:`~realtime.engines.BatchingEngine`, `serve`'s default:
  on a CPU as many merged calls in flight as there are cores); ``batched:window=0:concurrency=1`` sets its
  BatchConfig fields (``window`` → ``batch_window_ms``, ``concurrency`` → ``batch_concurrency``, ``max`` →
  ``batch_max``) for that mode;
* ``triton``  every stream calls a real Triton server (realtime/engines/triton_server.py, the Python-backend
  repository: ONNX Runtime behind Triton's dynamic batcher, 2 ms queue delay) through one TritonEngine over
  loopback HTTP — Triton batches across the streams.

Measured over ``--seconds`` after ``--warmup``: aggregate and per-stream output fps, frame latency (submit →
processed, p50 / p99), drops, rows per engine execution (BatchingEngine counters; Triton's /stats), and CPU seconds
per frame (this process, plus the Triton server's processes). Tracking is replayed (``--tracking replay``: the clip's
tracks computed once by the real tracker) so the comparison is about the engine; ``--tracking live`` runs MediaPipe
per stream (the server's mesh-every-2 tracker). Modes alternate inside each stream count (load on a shared machine
hits them alike); ``--rounds`` repeats the whole sweep. In-process ONNX Runtime and the Triton models both run one
intra-op thread.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from benchmarks.provenance import command_line, provenance, write_result
from export.onnx import available_models
from export.parity import randomize_heads
from export.triton_python import write_python_repository
from models.bundle import DEFAULT_BUNDLE, Bundle, load_bundle, new_bundle
from models.editing import EditSpec, tensor_key
from realtime.api import edit_stack
from realtime.engines import BatchConfig, BatchingEngine, Engine, EngineOptions, EngineSpec, SerialEngine, make_engine
from realtime.engines.exported import ensure_onnx
from realtime.engines.triton_server import TritonServer
from realtime.frames import Frame, Output, Track, now_ns
from realtime.pipeline import FrameProcessor, PipelineConfig, StageRunner
from realtime.pipeline.config import COMPOSITES
from realtime.server.client import clip_frames
from realtime.server.worker import limit_op_threads
from realtime.vision.tracking import FaceTracker, TrackerConfig

MODES = ("serial", "batched", "triton")
ENCODERS = {"tiny": "tiny", "small": "small"}  # generator preset family → ViT preset of its encoders


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--streams", default="1,2,4,8", help="stream counts, comma-separated")
    p.add_argument("--modes", default="serial,batched,triton", help=f"comma-separated subset of {','.join(MODES)}")
    p.add_argument("--bundles", default="default,small-128",
                   help="'default' (the built-in bundle), a generator preset (tiny-128, small-128, …: random "
                        "weights) or a bundle folder; comma-separated")
    p.add_argument("--fps", type=float, default=30.0, help="frames per second each stream is fed")
    p.add_argument("--size", default="640x480")
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--tracking", choices=("replay", "live"), default="replay")
    p.add_argument("--composite", choices=COMPOSITES, default="regenerate",
                   help="compositing mode of every stream (regenerate: every frame is one encode and one synthesis, "
                        "the model load this bench is about; transfer adds the CPU warp of each frame)")
    p.add_argument("--batch-window-ms", type=float, default=BatchConfig().batch_window_ms,
                   help="the batched modes' window (-1: the engine's default, 0 on a CPU)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--plot", type=Path, default=None, help="PNG: aggregate fps and p99 latency per stream count")


# ---------------------------------------------------------------------------------------------------- inputs


def bundle_for(name: str) -> tuple[Bundle, str]:
    """(bundle with a ``smile`` edit, description)."""
    if name == "default":
        return load_bundle(DEFAULT_BUNDLE), "built-in default bundle (trained tiny-64)"
    if Path(name).exists():
        return load_bundle(name), name
    encoder = ENCODERS.get(name.split("-")[0], "tiny")
    b = randomize_heads(new_bundle(name, encoder, seed=0, name=f"random-{name}"), seed=0)
    b.extra[tensor_key("smile")] = torch.randn(b.generator.w_dim, generator=torch.Generator().manual_seed(1))
    b.edits.append(EditSpec("smile", "w_direction", "random W direction (benchmark)", range=(-3.0, 3.0)).to_dict())
    return b, f"random {name} generator, {encoder} encoders, a random W-direction 'smile'"


class Replay:
    """A tracker that returns the clip's precomputed track of each frame (frame.index modulo the clip)."""

    def __init__(self, tracks: list[Track]):
        self.tracks = tracks

    def track(self, frame: Frame) -> Track:
        return self.tracks[frame.index % len(self.tracks)]

    def close(self) -> None:
        pass


def clip_tracks(frames: list[np.ndarray]) -> list[Track]:
    with FaceTracker(TrackerConfig(smoothing="one_euro")) as tr:
        for i, f in enumerate(frames):  # one pass to settle the stabiliser, then the tracks
            tr.track(Frame(f, i))
        tracks = [tr.track(Frame(f, len(frames) + i)) for i, f in enumerate(frames)]
    if not all(t.has_face for t in tracks):
        raise RuntimeError("the tracker lost the clip's face")
    return tracks


# ---------------------------------------------------------------------------------------------------- one run


class Stream:
    """One live stream: a tolerant StageRunner fed at ``fps`` (a feeder thread), outputs timed."""

    def __init__(self, i: int, engine: Engine, bundle: Bundle, make_tracker: Any, frames: list[np.ndarray],
                 fps: float, composite: str = "regenerate"):
        proc = FrameProcessor(engine, PipelineConfig(composite=composite), edits=edit_stack(bundle, {"smile": 1.5}))
        self.runner = StageRunner(proc, make_tracker, live=True, queue_size=1, tolerant=True, emit=self._emit,
                                  name=f"bench-{i}")
        self.frames, self.fps, self.offset = frames, fps, i * 7
        self.out: list[tuple[float, float]] = []  # (monotonic, latency ms)
        self._stop = threading.Event()
        self._feeder = threading.Thread(target=self._feed, daemon=True, name=f"bench-feed-{i}")

    def _emit(self, out: Output) -> None:
        self.out.append((time.monotonic(), (now_ns() - out.capture_ns) / 1e6))

    def _feed(self) -> None:
        i, t0 = 0, time.monotonic() + self.offset / 1000.0
        while not self._stop.is_set():
            k = i + self.offset
            self.runner.submit(Frame(image=self.frames[k % len(self.frames)], index=k, capture_ns=now_ns()))
            i += 1
            self._stop.wait(max(0.0, t0 + i / self.fps - time.monotonic()))

    def start(self) -> None:
        self.runner.start()
        self._feeder.start()

    def stop(self) -> None:
        self._stop.set()
        self._feeder.join(5)
        self.runner.stop(10)


def _triton_batches(srv: TritonServer) -> dict[str, dict[int, int]]:
    out = {}
    for m in ("stylestream_fren", "stylestream_vien", "stylestream_synthesis"):
        with contextlib.suppress(Exception):  # a model the repository does not have (no ViEN)
            out[m] = {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in srv.stats(m)["batch_stats"]}
    return out


def _diff(after: dict[str, dict[int, int]], before: dict[str, dict[int, int]]) -> dict[str, dict[int, int]]:
    return {m: {b: n - before.get(m, {}).get(b, 0) for b, n in sorted(h.items()) if n - before.get(m, {}).get(b, 0)}
            for m, h in after.items()}


def _cpu(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def batch_config(mode: str, window_ms: float) -> BatchConfig:
    """``batched[:window=MS][:concurrency=N][:max=ROWS]`` → the BatchConfig of that mode."""
    names = {"window": "batch_window_ms", "concurrency": "batch_concurrency", "max": "batch_max"}
    values: dict[str, float] = {"batch_window_ms": window_ms}
    for part in mode.split(":")[1:]:
        key, _, value = part.partition("=")
        if key not in names:
            raise SystemExit(f"unknown batched option {key!r} in {mode!r} (window, concurrency, max)")
        values[names[key]] = float(value) if key == "window" else int(value)
    return BatchConfig(**values)  # type: ignore[arg-type]


def run_one(mode: str, n: int, engine: Engine, bundle: Bundle, make_tracker: Any, frames: list[np.ndarray],
            args: argparse.Namespace, srv: TritonServer | None) -> dict[str, Any]:
    if mode == "serial":
        shared: Engine = SerialEngine(engine)
    elif mode.startswith("batched"):
        shared = BatchingEngine(engine, batch_config(mode, args.batch_window_ms))
    else:
        shared = engine  # the TritonEngine: thread-safe, one HTTP client per thread; Triton batches
    streams = [Stream(i, shared, bundle, make_tracker, frames, args.fps, args.composite) for i in range(n)]
    for s in streams:
        s.start()
    try:
        time.sleep(args.warmup)
        t0 = time.monotonic()
        drops0 = [sum(s.runner.drops().values()) for s in streams]
        calls0 = (shared.calls, getattr(shared, "engine_calls", shared.calls)) if mode != "triton" else (0, 0)
        hist0 = {m: dict(h) for m, h in shared.histogram.items()} if isinstance(shared, BatchingEngine) else {}
        tri0 = _triton_batches(srv) if srv is not None and mode == "triton" else {}
        server_pids = srv.processes() if srv is not None and mode == "triton" else []
        cpu0, scpu0 = time.process_time(), _cpu(server_pids)
        time.sleep(args.seconds)
        wall = time.monotonic() - t0
        cpu, scpu = time.process_time() - cpu0, _cpu(server_pids) - scpu0
        outs = [[o for o in s.out if o[0] >= t0] for s in streams]
        drops = sum(sum(s.runner.drops().values()) for s in streams) - sum(drops0)
        faults = [s.runner.faults() for s in streams]
        if isinstance(shared, BatchingEngine):
            hist = _diff({m: dict(h) for m, h in shared.histogram.items()}, hist0)
            calls = (shared.calls - calls0[0], shared.engine_calls - calls0[1])
        elif isinstance(shared, SerialEngine):
            calls = (shared.calls - calls0[0], shared.calls - calls0[0])
            hist = {"all": {1: calls[1]}}
        else:
            hist = _diff(_triton_batches(srv), tri0) if srv is not None else {}
            execs = sum(sum(h.values()) for h in hist.values())
            calls = (sum(b * c for h in hist.values() for b, c in h.items()), execs)
    finally:
        for s in streams:
            s.stop()
    lat = [o[1] for out in outs for o in out]
    per = [len(out) / wall for out in outs]
    frames_out = sum(len(out) for out in outs)
    return {"mode": mode, "streams": n, "aggregate_fps": round(sum(per), 2),
            "per_stream_fps": {"mean": round(float(np.mean(per)), 2), "min": round(float(min(per)), 2)},
            "latency_ms": {"p50": round(float(np.percentile(lat, 50)), 1) if lat else None,
                           "p99": round(float(np.percentile(lat, 99)), 1) if lat else None},
            "drops": drops, "stream_calls": calls[0], "engine_executions": calls[1], "rows_per_execution": hist,
            "cpu_ms_per_frame": round(1e3 * cpu / max(1, frames_out), 2),
            "triton_server_cpu_ms_per_frame": round(1e3 * scpu / max(1, frames_out), 2) if server_pids else None,
            "errors": sum(f["errors"] for f in faults), "seconds": round(wall, 2),
            "load_avg": [round(v, 2) for v in os.getloadavg()]}


# ---------------------------------------------------------------------------------------------------- sweep


def run(args: argparse.Namespace) -> int:
    counts = [int(v) for v in str(args.streams).split(",") if v]
    modes = [m for m in str(args.modes).split(",") if m]
    for m in modes:
        if m.split(":")[0] not in MODES:
            raise SystemExit(f"unknown mode {m!r} (choose from {', '.join(MODES)})")
        if m.startswith("batched"):
            batch_config(m, args.batch_window_ms)
    limit_op_threads(1)
    w, h = (int(v) for v in args.size.lower().split("x"))
    frames = clip_frames(w, h, count=60)
    tracks = clip_tracks(frames) if args.tracking == "replay" else None

    def make_tracker() -> Any:
        if tracks is not None:
            return Replay(tracks)
        return FaceTracker(TrackerConfig(smoothing="one_euro", mesh_every=2))

    rows: list[dict[str, Any]] = []
    bundles: dict[str, str] = {}
    for name in [b for b in str(args.bundles).split(",") if b]:
        bundle, desc = bundle_for(name)
        bundles[name] = desc
        onnx_dir = ensure_onnx(bundle, None, "fp32", available_models(bundle))
        with contextlib.ExitStack() as resources:  # each closed once it exists, whatever fails after it
            ort = make_engine(bundle, EngineSpec("onnx", "cpu", "fp32", EngineOptions(model_dir=onnx_dir, threads=1)))
            resources.callback(ort.close)
            srv = tri = None
            if "triton" in modes:
                tmp = resources.enter_context(tempfile.TemporaryDirectory(prefix="stylestream-bench-streams-"))
                write_python_repository(bundle, Path(tmp) / "repo", onnx_dir=onnx_dir, max_batch=max(8, *counts),
                                        queue_delay_us=2000, ensemble=False)
                srv = resources.enter_context(TritonServer(Path(tmp) / "repo", grpc=False))
                tri = make_engine(bundle, EngineSpec("triton", "cpu", options=EngineOptions(triton_url=srv.http_url)))
                resources.callback(tri.close)
            for rnd in range(args.rounds):
                for n in counts:
                    for mode in modes:
                        eng = tri if mode == "triton" else ort
                        assert eng is not None
                        r = run_one(mode, n, eng, bundle, make_tracker, frames, args, srv)
                        r.update(bundle=name, round=rnd + 1)
                        rows.append(r)
                        print(f"{name:10s} {mode:8s} {n} streams: {r['aggregate_fps']:6.1f} fps "
                              f"(per stream {r['per_stream_fps']['mean']:.1f}), latency p50 "
                              f"{r['latency_ms']['p50']} / p99 {r['latency_ms']['p99']} ms, "
                              f"{r['stream_calls']} calls → {r['engine_executions']} executions, "
                              f"load {r['load_avg'][0]}", flush=True)
    report = {"command": command_line(), "provenance": provenance("cpu"), "bundles": bundles, "size": args.size,
              "fps_per_stream": args.fps, "tracking": args.tracking, "composite": args.composite,
              "seconds": args.seconds, "rows": rows}
    write_result(args.json, report)
    if args.plot is not None:
        plot(rows, args.plot)
    print(markdown(rows))
    return 0


def markdown(rows: list[dict[str, Any]]) -> str:
    out = ["| bundle | streams | mode | aggregate fps | per-stream fps (min) | latency p50 / p99 ms | drops | "
           "calls → executions | CPU ms / frame | errors | load |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cpu = f"{r['cpu_ms_per_frame']:.1f}"
        if r.get("triton_server_cpu_ms_per_frame") is not None:
            cpu += f" + {r['triton_server_cpu_ms_per_frame']:.1f} server"
        out.append(f"| {r['bundle']} | {r['streams']} | {r['mode']} | {r['aggregate_fps']:.1f} | "
                   f"{r['per_stream_fps']['mean']:.1f} ({r['per_stream_fps']['min']:.1f}) | "
                   f"{r['latency_ms']['p50']} / {r['latency_ms']['p99']} | {r['drops']} | "
                   f"{r['stream_calls']} → {r['engine_executions']} | {cpu} | {r['errors']} | {r['load_avg'][0]:.1f} |")
    return "\n".join(out)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    bundles = list(dict.fromkeys(r["bundle"] for r in rows))
    fig = Figure(figsize=(4.2 * len(bundles), 6))
    axes = fig.subplots(2, len(bundles), squeeze=False)
    for j, b in enumerate(bundles):
        for mode in dict.fromkeys(r["mode"] for r in rows):
            sel: dict[int, list[float]] = collections.defaultdict(list)
            p99 = collections.defaultdict(list)
            for r in rows:
                if r["bundle"] == b and r["mode"] == mode:
                    sel[r["streams"]].append(r["aggregate_fps"])
                    p99[r["streams"]].append(r["latency_ms"]["p99"] or np.nan)
            if not sel:
                continue
            xs = sorted(sel)
            axes[0][j].plot(xs, [np.mean(sel[x]) for x in xs], marker="o", label=mode)
            axes[1][j].plot(xs, [np.mean(p99[x]) for x in xs], marker="o", label=mode)
        axes[0][j].set_title(b)
        axes[0][j].set_ylabel("aggregate fps")
        axes[1][j].set_ylabel("frame latency p99 (ms)")
        axes[1][j].set_xlabel("streams")
        for ax in (axes[0][j], axes[1][j]):
            ax.set_xscale("log", base=2)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
