"""End-to-end speed of the real pipeline (source → tracking → device worker → null sink).

    python -m benchmarks.bench_pipeline --input "demo:?seconds=10&fps=30&size=640x480" --mode file live
    stylestream bench pipeline --json docs/bench/pipeline-cpu.json --markdown docs/bench/pipeline-cpu.md

* ``file`` mode: lossless and ordered, as fast as possible → throughput (fps) and per-stage ms.
A ``demo:`` input is first rendered to a temporary H.264 file, so "decode" is real decoding.

* ``live`` mode: the same input released at its real frame rate (like a camera) with drop-oldest queues →
  achieved fps, drops, and frame latency (capture → sink write, in-process) under overload when the filter is
  slower than the source.

Without ``--bundle`` the trained default bundle is used when present, else a random ``tiny-64``/``tiny`` bundle
(speed does not depend on the weights; the JSON says which one ran).

``--composite`` defaults to ``regenerate``: the model path runs on every frame, as in every figure recorded before
the transfer mode existed. Transfer without an edit does no model work at all (the frame passes through), so
measure it with an edit: ``--composite transfer --edit smile=1.5``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from rich.console import Console

from benchmarks.provenance import command_line, provenance, write_result
from models.bundle import DEFAULT_BUNDLE, Bundle, load_bundle, new_bundle
from models.editing import parse_edit_args
from realtime.api import edit_stack
from realtime.engines import EngineSpec, make_engine
from realtime.frames import Output
from realtime.io.sinks import open_sink
from realtime.io.sources import open_source
from realtime.pipeline import FrameProcessor, Pipeline, PipelineConfig
from realtime.vision.mediapipe_runtime import install_native_stderr_filter
from realtime.vision.tracking import FaceTracker, TrackerConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", default="demo:?seconds=10&fps=30&size=640x480", help="any source spec")
    p.add_argument("--mode", nargs="+", choices=["file", "live"], default=["file", "live"])
    p.add_argument("--bundle", type=Path, default=None, help="bundle folder (default: default bundle or tiny random)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", default="torch")
    p.add_argument("--precision", default="auto")
    p.add_argument("--key-interval", type=int, default=30)
    p.add_argument("--composite", default="regenerate", choices=["regenerate", "transfer", "auto"],
                   help="compositing mode (default regenerate: the model path on every frame)")
    p.add_argument("--edit", action="append", metavar="NAME=STRENGTH", help="apply an edit (repeatable)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--markdown", type=Path, default=None)


def bundle_or_default(path: Path | None) -> tuple[Bundle, str]:
    """(bundle, description): ``path``, else the trained default bundle, else a random tiny one."""
    if path is not None:
        return load_bundle(path), str(path)
    if DEFAULT_BUNDLE.exists():
        return load_bundle(DEFAULT_BUNDLE), str(DEFAULT_BUNDLE)
    return new_bundle("tiny-64", "tiny"), "random tiny-64/tiny (no default bundle yet)"


def run_once(args: argparse.Namespace, mode: str) -> dict:
    bundle, which = bundle_or_default(args.bundle)
    engine = make_engine(bundle, EngineSpec(args.backend, args.device, args.precision))
    live = mode == "live"
    processor = FrameProcessor(engine, PipelineConfig(key_interval=args.key_interval, composite=args.composite),
                               edits=edit_stack(bundle, parse_edit_args(args.edit)))
    source = open_source(args.input, live=live, realtime=live)
    with source, open_sink("null:", width=source.width, height=source.height, fps=source.fps) as sink, \
            FaceTracker(TrackerConfig(smoothing="one_euro" if live else "none", fps=source.fps)) as tracker:
        stats = Pipeline(source, tracker, processor, sink, live=live).run()
    engine.close()
    return {"mode": mode, "input": args.input, "bundle": which, "source_fps": source.fps,
            "composite": args.composite, "edits": parse_edit_args(args.edit),
            "size": [source.width, source.height], "engine": {"backend": engine.name, "device": str(engine.device),
                                                             "precision": engine.precision},
            **stats.to_dict(), "latency_samples_ms": [round(v, 2) for v in stats.latency_ms[:5000]]}


def markdown(result: dict) -> str:
    p = result["provenance"]
    lines = [f"Measured {p['date']} on {p.get('gpu') or p['cpu']} ({p['cpu_count']} cores), torch {p['torch']}, "
             f"commit {p['git_commit']}, load average {p.get('load_avg', ['?'])[0]}.",
             "", f"Command: `{result['command']}`", ""]
    lines += ["| mode | input | bundle | engine | fps | frames in/out | drops | latency p50 / p99 ms |",
              "|---|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        lat = r["latency"]
        e = r["engine"]
        how = r.get("composite", "regenerate") + "".join(f", {n}={v:g}" for n, v in r.get("edits", {}).items())
        lines.append(f"| {r['mode']} ({how}) | {r['size'][0]}×{r['size'][1]} @ {r['source_fps']:g} fps | "
                     f"{r['bundle']} | "
                     f"{e['backend']} {e['device']} {e['precision']} | {r['fps']:.1f} | "
                     f"{r['frames_in']}/{r['frames_out']} | {sum(r['dropped'].values())} | "
                     f"{lat.get('p50_ms', 0):.0f} / {lat.get('p99_ms', 0):.0f} |")
    lines += ["", "Per-stage mean ms (each stage runs on its own thread; the slowest bounds the fps):", ""]
    stages = sorted({s for r in result["runs"] for s in r["stages"]})
    lines += ["| mode | " + " | ".join(stages) + " |", "|---|" + "---|" * len(stages)]
    for r in result["runs"]:
        lines.append(f"| {r['mode']} | " + " | ".join(
            f"{r['stages'][s]['mean_ms']:.1f}" if s in r["stages"] else "-" for s in stages) + " |")
    return "\n".join(lines) + "\n"


def render_to_file(spec: str, path: Path) -> None:
    """Write a (synthetic) source to an H.264 file, so the benchmark decodes real video instead of timing the
    synthetic clip generator."""
    with open_source(spec, live=False) as src, \
            open_sink(str(path), width=src.width, height=src.height, fps=src.fps, crf=16) as sink:
        for f in src:
            sink.write(Output(f.image, f.index, f.pts, f.time_base, f.capture_ns))


def run(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        shown = args.input
        if args.input.startswith("demo"):
            with console.status(f"rendering {args.input} to a temporary H.264 file"):
                render_to_file(args.input, Path(tmp) / "input.mp4")
            args.input = str(Path(tmp) / "input.mp4")
        for mode in args.mode:
            with console.status(f"pipeline, {mode} mode"):
                r = run_once(args, mode)
                r["input"] = shown
                runs.append(r)
    result = {"benchmark": "pipeline", "command": command_line(), "provenance": provenance(args.device),
              "runs": runs}
    md = markdown(result)
    print(md)
    write_result(args.json, result)
    write_result(args.markdown, md)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    install_native_stderr_filter()  # MediaPipe's start-up lines, as the CLI does
    raise SystemExit(main())
