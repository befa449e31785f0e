"""Per-model latency: generator synthesis (W+ → image), FrEN and ViEN, random weights at given configs.

    python -m benchmarks.bench_models --device cpu --generator tiny-128 small-128 --encoder tiny small
    stylestream bench models --json docs/bench/models-cpu.json
    stylestream bench models --generator --encoder e4e psp [--backend onnx]      the released e4e / pSp encoders

``--encoder e4e`` / ``psp`` time the released IR-SE-50 encoder (256² crops → 18 × 512) as it runs in a bundle's
key-frame slot: eagerly in torch, or (``--backend onnx``) as the exported ``fren`` graph in ONNX Runtime — and
its coarse-only forward (the first 8 entries, config-f's coarse layers: ``--reuse coarse`` between key frames;
``fren_coarse`` in ONNX), each call of one alternating with one of the other.

Random weights cost the same time as trained ones, so production-scale configs (ffhq-config-f, vit-b16) can be
measured without the real weights. Writes JSON with provenance (machine, device, versions, commit).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from benchmarks.provenance import command_line, provenance, write_result
from benchmarks.timing import summarise, time_calls
from export.onnx import CoarseExport, FrenExport, export_module
from export.parity import ort_runner
from models.bundle import new_bundle
from models.e4e import PRESETS, StyleEncoder
from models.e4e import PRESETS as STYLE_ENCODER_PRESETS
from models.errors import UserError
from models.face_mesh import FaceLandmarks
from models.stylegan2 import GENERATOR_PRESETS, Generator, count_parameters
from models.vit_encoder import ENCODER_PRESETS, FrameEncoder, VideoEncoder
from realtime.engines import EngineOptions, EngineSpec, make_engine

DEFAULT_GENERATORS = ["tiny-128", "small-128", "tiny-256", "small-256"]
DEFAULT_ENCODERS = ["tiny", "small"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--generator", nargs="*", default=DEFAULT_GENERATORS, choices=list(GENERATOR_PRESETS),
                   help="generator presets to time")
    p.add_argument("--encoder", nargs="*", default=DEFAULT_ENCODERS,
                   choices=list(ENCODER_PRESETS) + list(STYLE_ENCODER_PRESETS),
                   help="encoder presets to time (ViT: FrEN and ViEN each; e4e / psp: the released key-frame encoder)")
    p.add_argument("--batch", type=int, nargs="*", default=[1], help="batch sizes")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32")
    p.add_argument("--impl", choices=["export", "reference"], default="export", help="modulated-conv form")
    p.add_argument("--backend", default="torch", choices=["torch", "onnx", "tensorrt"],
                   help="torch: the modules eagerly; onnx/tensorrt: through the Engine interface (each generator "
                        "is paired with each encoder in one random bundle, exported once)")
    p.add_argument("--face-mesh", action="store_true", help="also time the torch face-mesh landmark network")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    p.add_argument("--json", type=Path, default=None, help="write results here")
    p.add_argument("--markdown", type=Path, default=None, help="write a markdown table (with provenance) here")


def _dtype(precision: str) -> torch.dtype:
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def run(args: argparse.Namespace) -> int:


    dev = args.device
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {dev}: no CUDA device is available (torch {torch.__version__})")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = _dtype(args.precision)
    if dtype != torch.float32 and not dev.startswith("cuda"):
        raise UserError(f"--precision {args.precision} is only supported on CUDA here")
    rows = []
    console = Console(stderr=True)
    torch.manual_seed(0)
    vit_encoders = [e for e in args.encoder if e not in STYLE_ENCODER_PRESETS]
    style_encoders = [e for e in args.encoder if e in STYLE_ENCODER_PRESETS]
    if args.backend != "torch":
        rows = _engine_rows(args, console, vit_encoders)
    rows += _style_encoder_rows(args, console, style_encoders, dtype)
    for name in (args.generator if args.backend == "torch" else []):
        cfg = GENERATOR_PRESETS[name]
        g = Generator(cfg).eval().requires_grad_(False).to(dev)
        if dtype != torch.float32:
            g.synthesis.to(dtype)
        for b in args.batch:
            ws = g.mapping(torch.randn(b, cfg.z_dim, device=dev)).to(dtype)
            with console.status(f"generator {name} batch {b}"), torch.inference_mode():
                ms = time_calls(lambda g=g, ws=ws: g.synthesis(ws, impl=args.impl), dev, args.warmup, args.iters)
            rows.append({"model": "generator", "config": name, "resolution": cfg.img_resolution,
                         "params": count_parameters(g), "batch": b, **summarise(ms)})
        del g
    if args.face_mesh:
        fl = FaceLandmarks().eval().to(dev)
        for b in args.batch:
            x = torch.rand(b, 3, 192, 192, device=dev)
            with console.status(f"face mesh batch {b}"), torch.inference_mode():
                ms = time_calls(lambda fl=fl, x=x: fl(x), dev, args.warmup, args.iters)
            rows.append({"model": "face mesh", "config": "mediapipe-468", "resolution": 192,
                         "params": count_parameters(fl), "batch": b, **summarise(ms)})
    for name in (vit_encoders if args.backend == "torch" else []):
        cfg = ENCODER_PRESETS[name]
        layout = GENERATOR_PRESETS["ffhq-config-f"].layout() if cfg.img_size >= 256 else \
            GENERATOR_PRESETS["tiny-128"].layout()
        for cls in (FrameEncoder, VideoEncoder):
            enc = cls(cfg, layout).eval().requires_grad_(False).to(dev, dtype)
            for b in args.batch:
                x = torch.rand(b, 3, cfg.img_size, cfg.img_size, device=dev, dtype=dtype) * 2 - 1
                prev = torch.randn(b, layout.num_ws, layout.w_dim, device=dev, dtype=dtype)
                fn = (lambda enc=enc, x=x: enc(x)) if cls is FrameEncoder else (lambda enc=enc, x=x, p=prev: enc(x, p))
                label = "FrEN" if cls is FrameEncoder else "ViEN"
                with console.status(f"{label} {name} batch {b}"), torch.inference_mode():
                    ms = time_calls(fn, dev, args.warmup, args.iters)
                rows.append({"model": label, "config": name, "resolution": cfg.img_size,
                             "params": count_parameters(enc), "batch": b, **summarise(ms)})
    result = {"benchmark": "models", "command": command_line(),
              "precision": args.precision, "impl": args.impl,
              "backend": "torch-eager" if args.backend == "torch" else args.backend,
              "provenance": provenance(dev), "results": rows}
    t = Table(title=f"model latency on {result['provenance'].get('gpu', result['provenance']['cpu'])} "
                    f"({dev}, {args.precision}, {result['backend']})")
    for col in ("model", "config", "res", "params", "batch", "median ms", "p90 ms"):
        t.add_column(col, justify="right" if col not in ("model", "config") else "left")
    for r in rows:
        t.add_row(r["model"], r["config"], str(r["resolution"]), f"{r['params']:,}", str(r["batch"]),
                  f"{r['median_ms']:.2f}", f"{r['p90_ms']:.2f}")
    Console().print(t)
    for path in (write_result(args.json, result), write_result(args.markdown, markdown_table(result))):
        if path is not None:
            console.print(f"wrote {path}")
    return 0


def _style_encoder_rows(args: argparse.Namespace, console, names: list[str], dtype: torch.dtype) -> list[dict]:
    """Time the released e4e / pSp encoder (random weights) per call: torch eagerly, or its exported ``fren``
    graph (the wrapper and exporter the ONNX engine uses; dynamic batch) in ONNX Runtime on the CPU."""


    if names and not (args.backend == "torch" or (args.backend == "onnx" and not args.device.startswith("cuda"))):
        raise UserError("--encoder e4e / psp are timed with --backend torch (any device) or onnx (CPU)")
    rows = []
    nc = GENERATOR_PRESETS["ffhq-config-f"].layout().num_coarse  # 8
    for name in names:
        cfg = PRESETS[name]
        enc = StyleEncoder(cfg).eval().requires_grad_(False)
        label = {"e4e": "e4e", "psp": "pSp"}[cfg.kind]
        config = f"{name} IR-SE-50 → {cfg.n_styles}×{cfg.w_dim}"
        with tempfile.TemporaryDirectory(prefix="stylestream-bench-") as tmp:
            runs = {}  # "full" / "coarse" → function of the crops
            if args.backend == "onnx":
                threads = args.threads or torch.get_num_threads()
                for what, module, out in (("full", FrenExport(enc), "ws"),
                                          ("coarse", CoarseExport(enc, nc), "ws_coarse")):
                    path = f"{tmp}/{what}.fp32.onnx"
                    with console.status(f"exporting {label} ({what}) to ONNX"):
                        export_module(module, {"crops": torch.zeros(1, 3, cfg.img_size, cfg.img_size)}, path, [out])
                    run, _ = ort_runner(path, threads=threads)
                    runs[what] = lambda x, run=run: run({"crops": x.numpy()})
            else:
                enc.to(args.device, dtype)
                runs = {"full": lambda x, enc=enc: enc(x.to(args.device, dtype)),
                        "coarse": lambda x, enc=enc: enc.forward_coarse(x.to(args.device, dtype), nc)}
            for b in args.batch:
                x = torch.rand(b, 3, cfg.img_size, cfg.img_size) * 2 - 1
                calls = {what: (lambda r=r, x=x: r(x)) for what, r in runs.items()}
                with console.status(f"{label} batch {b} ({args.backend}), whole and coarse-only"), \
                        torch.inference_mode():
                    times = time_alternating(calls, "cpu" if args.backend == "onnx" else args.device, args.warmup,
                                             args.iters)
                for what, ms in times.items():
                    rows.append({"model": label if what == "full" else f"{label} coarse",
                                 "config": config if what == "full" else f"{config}, entries 0–{nc - 1} only",
                                 "resolution": cfg.img_size, "params": count_parameters(enc), "batch": b,
                                 **summarise(ms)})
        del enc
    return rows


def time_alternating(calls: dict, device: str, warmup: int, iters: int) -> dict[str, list[float]]:
    """Per-call ms of each of ``calls`` (name → no-argument function), one call of each in turn, so a change of
    machine load hits them alike."""
    out: dict[str, list[float]] = {k: [] for k in calls}
    for fn in calls.values():
        time_calls(fn, device, warmup, 0)
    for _ in range(iters):
        for k, fn in calls.items():
            out[k] += time_calls(fn, device, 0, 1)
    return out


def _engine_rows(args: argparse.Namespace, console, encoders: list[str]) -> list[dict]:
    """Time encode_key / encode_reuse / synthesize of an exported backend on random bundles."""
    rows = []
    for gname in args.generator:
        for ename in encoders:
            bundle = new_bundle(gname, ename)
            with console.status(f"exporting {gname} + {ename} for {args.backend}"):
                threads = args.threads if args.backend == "onnx" else 0  # ORT's threads; torch's are set above
                eng = make_engine(bundle, EngineSpec(args.backend, args.device, args.precision,
                                                     EngineOptions(threads=threads)))
            s = bundle.crop_size
            for b in args.batch:
                x = torch.rand(b, 3, s, s, device=eng.device) * 2 - 1
                ws = eng.encode_key(x)
                calls = {("generator", gname, bundle.generator): lambda e=eng, ws=ws: e.synthesize(ws),
                         ("FrEN", ename, bundle.fren): lambda e=eng, x=x: e.encode_key(x),
                         ("ViEN", ename, bundle.vien): lambda e=eng, x=x, ws=ws: e.encode_reuse(x, ws)}
                for (model, cfg_name, module), fn in calls.items():
                    with console.status(f"{model} {cfg_name} batch {b} ({args.backend})"):
                        ms = time_calls(fn, args.device, args.warmup, args.iters)
                    res = bundle.generator.img_resolution if model == "generator" else s
                    rows.append({"model": model, "config": cfg_name if model == "generator" else
                                 f"{cfg_name} (for {gname})", "resolution": res,
                                 "params": count_parameters(module), "batch": b, **summarise(ms)})
            eng.close()
    return rows


def markdown_table(result: dict) -> str:
    """A markdown table of a bench-models result, headed by its provenance and command."""
    p = result["provenance"]
    where = p.get("gpu") or p["cpu"]
    lines = [
        f"Measured {p['date']} on {where} ({p['cpu_count']} cores, {p['torch_threads']} torch threads), "
        f"device {p['device']}, torch {p['torch']}, {result['backend']}, {result['precision']}, "
        f"commit {p['git_commit']}, load average {p.get('load_avg', ['?'])[0]}.",
        "",
        f"Command: `{result['command']}`",
        "",
        "| model | config | input/output res | parameters | batch | median ms | p90 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["results"]:
        lines.append(f"| {r['model']} | {r['config']} | {r['resolution']} | {r['params']:,} | {r['batch']} | "
                     f"{r['median_ms']:.2f} | {r['p90_ms']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
