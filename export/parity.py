"""Parity of exported models against the torch reference, with drift localisation.

Every exported model is run on fixed, seeded inputs (:func:`export.onnx.example_inputs`) by a runtime —
ONNX Runtime, TensorRT, or torch itself on another device/precision — and compared with the float32 torch model
on the CPU (the reference). Errors are measured *relative to the reference's scale* (its largest magnitude), so one
table serves W+ codes and images alike:

    max_rel  = max |out − ref| / max |ref|         mean_rel = mean |out − ref| / max |ref|

and checked against :data:`TOLERANCES` per precision. When a model fails, :func:`locate_drift` re-exports it
with every block's output as an extra graph output ("taps": synthesis blocks b4 … bR, or the ViT's patch
embedding, transformer blocks, final norm and head), runs that in the same runtime and reports the first tap whose
error exceeds the tolerance — the layer where the drift starts (fp16 overflow, a bad TensorRT tactic, …).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.bundle import Bundle
from models.errors import UserError

from .onnx import Tapped, example_inputs, export_tapped, model_spec, onnx_filename, read_manifest, tap_points

# precision → (max_rel, mean_rel) allowed against the float32 torch reference
TOLERANCES: dict[str, tuple[float, float]] = {
    "fp32": (1e-4, 1e-5),
    "fp16": (2e-2, 2e-3),
}

RUNTIMES: tuple[str, ...] = ("onnxruntime", "tensorrt", "torch")

# A runner takes named float32 CPU arrays and returns the graph outputs in order, as float32 numpy arrays.
Runner = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


@dataclass
class TapError:
    """Error of one intermediate output ("tap")."""

    name: str  # sub-module path, e.g. "b16[1]" (block b16, second output = img) or "backbone.blocks.2"
    max_rel: float
    mean_rel: float
    ok: bool


@dataclass
class ParityResult:
    """One model × precision × runtime against the float32 torch reference."""

    model: str  # fren | vien | synthesis
    precision: str  # fp32 | fp16
    runtime: str  # onnxruntime | tensorrt | torch
    provider: str  # e.g. CPUExecutionProvider, TensorRT 10.x, cuda:0
    max_abs: float
    mean_abs: float
    max_rel: float
    mean_rel: float
    tol_max_rel: float
    tol_mean_rel: float
    ok: bool
    first_drift: str | None = None  # first tap over the tolerance (only when not ok and diagnosed)
    taps: list[TapError] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def message(self) -> str:
        """One line saying what failed and where."""
        head = (f"{self.model} {self.precision} on {self.runtime}: max_rel {self.max_rel:.2e} "
                f"(tol {self.tol_max_rel:.0e}), mean_rel {self.mean_rel:.2e} (tol {self.tol_mean_rel:.0e})")
        if self.ok:
            return head + " — ok"
        where = f"; drift starts at {self.first_drift}" if self.first_drift else ""
        if self.first_drift and self.taps:
            tap = next(t for t in self.taps if t.name == self.first_drift)
            where += f" (max_rel {tap.max_rel:.2e} there)"
        return head + " — FAILED" + where


def compare(out: np.ndarray, ref: np.ndarray) -> tuple[float, float, float, float]:
    """(max_abs, mean_abs, max_rel, mean_rel); NaN/inf in ``out`` count as infinite error."""
    if out.shape != ref.shape:
        raise ValueError(f"shape mismatch: runtime {out.shape} vs reference {ref.shape}")
    out64, ref64 = out.astype(np.float64), ref.astype(np.float64)
    diff = np.abs(out64 - ref64)
    if not np.all(np.isfinite(out64)):
        diff = np.where(np.isfinite(diff), diff, np.inf)
    scale = max(float(np.abs(ref64).max()) if ref64.size else 0.0, 1e-12)
    max_abs = float(diff.max()) if diff.size else 0.0
    mean_abs = float(diff.mean()) if diff.size else 0.0
    return max_abs, mean_abs, max_abs / scale, mean_abs / scale


def within(max_rel: float, mean_rel: float, tol: tuple[float, float]) -> bool:
    return math.isfinite(max_rel) and max_rel <= tol[0] and mean_rel <= tol[1]


# --------------------------------------------------------------------------------------------------------------
# Runners


def ort_runner(path: str | os.PathLike, providers: Sequence[str] | None = None,
               threads: int = 0) -> tuple[Runner, str]:
    """ONNX Runtime session over ``path``; returns (runner, provider actually used)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=list(providers or ["CPUExecutionProvider"]))

    def run(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [np.asarray(o, dtype=np.float32) for o in sess.run(None, feed)]

    return run, sess.get_providers()[0]


def trt_runner(path: str | os.PathLike, precision: str, cache_dir: str | os.PathLike | None = None,
               max_batch: int = 8) -> tuple[Runner, str]:
    """TensorRT engine built from ``path`` (cached); raises UserError where TensorRT or CUDA is missing."""
    import onnx

    from .tensorrt import TrtModel, build_engine, require_tensorrt

    trt = require_tensorrt()
    plan = build_engine(path, precision=precision, cache_dir=cache_dir, max_batch=max_batch)
    model = TrtModel(plan, device=torch.device("cuda"))
    order = [o.name for o in onnx.load(str(path), load_external_data=False).graph.output]  # ONNX output order

    def run(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        outs = model({k: torch.from_numpy(v).cuda() for k, v in feed.items()})
        return [outs[name].float().cpu().numpy() for name in order]

    return run, f"TensorRT {trt.__version__}"


def torch_runner(module: torch.nn.Module, device: str) -> tuple[Runner, str]:
    """The export wrapper itself on ``device`` (e.g. fp16 torch on CUDA)."""
    dev = torch.device(device)
    m = module.to(dev)

    @torch.no_grad()
    def run(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        out = m(*[torch.from_numpy(v).to(dev) for v in feed.values()])
        outs = out if isinstance(out, tuple) else (out,)
        return [o.float().cpu().numpy() for o in outs]

    return run, str(dev)


def _runner(runtime: str, path: Path, precision: str, module: torch.nn.Module | None,
            providers: Sequence[str] | None, trt_cache: str | os.PathLike | None,
            torch_device: str) -> tuple[Runner, str]:
    if runtime == "onnxruntime":
        return ort_runner(path, providers)
    if runtime == "tensorrt":
        return trt_runner(path, precision, cache_dir=trt_cache)
    if runtime == "torch":
        assert module is not None
        return torch_runner(module, torch_device)
    raise UserError(f"unknown runtime {runtime!r} (choose from {', '.join(RUNTIMES)})")


# --------------------------------------------------------------------------------------------------------------
# Checks


@torch.no_grad()
def reference(bundle: Bundle, model: str, inputs: dict[str, torch.Tensor], taps: bool = False) -> list[np.ndarray]:
    """float32 torch outputs on the CPU (plus every tap's output when ``taps``)."""
    spec = model_spec(bundle, model, "fp32")
    module: torch.nn.Module = Tapped(spec.module, tap_points(spec)) if taps else spec.module
    out = module(*inputs.values())
    outs = out if isinstance(out, tuple) else (out,)
    return [o.float().numpy() for o in outs]


def locate_drift(bundle: Bundle, model: str, precision: str, runtime: str = "onnxruntime",
                 tol: tuple[float, float] | None = None, providers: Sequence[str] | None = None,
                 trt_cache: str | os.PathLike | None = None, torch_device: str = "cpu",
                 batch: int = 2, seed: int = 0) -> list[TapError]:
    """Per-tap errors of ``model`` at ``precision`` in ``runtime`` against float32 torch, in network order."""
    tol = tol or TOLERANCES[precision]
    inputs = example_inputs(bundle, model, batch=batch, seed=seed)
    ref = reference(bundle, model, inputs, taps=True)
    with tempfile.TemporaryDirectory(prefix="stylestream-taps-") as tmp:
        path = Path(tmp) / f"{model}.{precision}.taps.onnx"
        if runtime == "torch":
            spec = model_spec(bundle, model, precision)
            tapped = Tapped(spec.module, tap_points(spec))
            run, _ = torch_runner(tapped, torch_device)
            outs = run({k: v.numpy() for k, v in inputs.items()})
            names = tapped.tap_names
        else:
            names = export_tapped(bundle, model, precision, path)
            run, _ = _runner(runtime, path, precision, None, providers, trt_cache, torch_device)
            outs = run({k: v.numpy() for k, v in inputs.items()})
    errs = []
    for name, o, r in zip(names, outs[1:], ref[1:]):
        _, _, max_rel, mean_rel = compare(o, r)
        errs.append(TapError(name, max_rel, mean_rel, within(max_rel, mean_rel, tol)))
    return errs


def check_model(bundle: Bundle, onnx_dir: str | os.PathLike, model: str, precision: str,
                runtime: str = "onnxruntime", tolerances: dict[str, tuple[float, float]] | None = None,
                diagnose: bool = True, providers: Sequence[str] | None = None,
                trt_cache: str | os.PathLike | None = None, torch_device: str = "cpu",
                batch: int = 2, seed: int = 0) -> ParityResult:
    """Compare one exported model with the float32 torch reference; on failure (and ``diagnose``) find the
    first drifting layer."""
    tol = (tolerances or TOLERANCES)[precision]
    path = Path(onnx_dir) / onnx_filename(model, precision)
    module = model_spec(bundle, model, precision).module if runtime == "torch" else None
    if runtime != "torch" and not path.exists():
        raise UserError(f"{path} does not exist; export it first (`stylestream export … --precision {precision}`)")
    inputs = example_inputs(bundle, model, batch=batch, seed=seed)
    ref = reference(bundle, model, inputs)[0]
    run, provider = _runner(runtime, path, precision, module, providers, trt_cache, torch_device)
    out = run({k: v.numpy() for k, v in inputs.items()})[0]
    max_abs, mean_abs, max_rel, mean_rel = compare(out, ref)
    res = ParityResult(model, precision, runtime, provider, max_abs, mean_abs, max_rel, mean_rel, tol[0], tol[1],
                       within(max_rel, mean_rel, tol))
    if not res.ok and diagnose:
        res.taps = locate_drift(bundle, model, precision, runtime, tol, providers, trt_cache, torch_device,
                                batch, seed)
        res.first_drift = next((t.name for t in res.taps if not t.ok), None)
    return res


def run_parity(bundle: Bundle, onnx_dir: str | os.PathLike, runtimes: Iterable[str] = ("onnxruntime",),
               precisions: Iterable[str] | None = None, models: Iterable[str] | None = None,
               tolerances: dict[str, tuple[float, float]] | None = None, diagnose: bool = True,
               providers: Sequence[str] | None = None, trt_cache: str | os.PathLike | None = None,
               torch_device: str = "cpu", progress: Callable[[str], None] | None = None) -> list[ParityResult]:
    """Check every exported model in ``onnx_dir`` (filtered by ``precisions``/``models``) in each runtime."""
    manifest = read_manifest(onnx_dir)
    from .onnx import bundle_hash

    if manifest.get("bundle_hash") != bundle_hash(bundle):
        raise UserError(f"{onnx_dir} was exported from a different bundle (hash {manifest.get('bundle_hash', '?')[:12]}"
                        f" ≠ {bundle_hash(bundle)[:12]}); re-export it")
    precs = set(precisions) if precisions is not None else None
    mods = set(models) if models is not None else None
    results = []
    for entry in manifest["models"].values():
        if (precs is not None and entry["precision"] not in precs) or (mods is not None and entry["model"] not in mods):
            continue
        for rt in runtimes:
            r = check_model(bundle, onnx_dir, entry["model"], entry["precision"], rt, tolerances, diagnose,
                            providers, trt_cache, torch_device)
            if progress:
                progress(r.message())
            results.append(r)
    return results


def format_table(results: Sequence[ParityResult]) -> str:
    """Markdown table of parity results."""
    lines = ["| model | precision | runtime (provider) | max abs | mean abs | max rel | mean rel | "
             "tolerance (max/mean rel) | result |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        verdict = "ok" if r.ok else f"FAIL{' at ' + r.first_drift if r.first_drift else ''}"
        lines.append(f"| {r.model} | {r.precision} | {r.runtime} ({r.provider}) | {r.max_abs:.2e} | {r.mean_abs:.2e} "
                     f"| {r.max_rel:.2e} | {r.mean_rel:.2e} | {r.tol_max_rel:.0e} / {r.tol_mean_rel:.0e} | {verdict} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# Speed: ONNX Runtime vs torch through the one Engine interface


def randomize_heads(bundle: Bundle, std: float = 0.02, seed: int = 0) -> Bundle:
    """Give an untrained bundle's encoder heads random last layers (in place). ``new_bundle`` zeroes them so that
    untrained encoders output w_avg; with zero heads every encoder input gives the same W+, and a parity check of
    the encoders would prove nothing about the ViT backbone."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for enc in (bundle.fren, bundle.vien):
            if enc is not None and hasattr(enc, "head"):  # ViT encoders (e4e / pSp heads are never zero)
                w = enc.head[2].weight
                w.copy_(torch.randn(w.shape, generator=gen) * std)
    return bundle


def speed_compare(bundle: Bundle, onnx_dir: str | os.PathLike, threads: int = 2, batch: int = 1,
                  iters: int = 20, warmup: int = 3, max_seconds: float = 20.0, seed: int = 0) -> dict[str, Any]:
    """Median ms per call of encode_key / encode_reuse / synthesize for TorchEngine (CPU, fp32, eager) and
    OrtEngine (CPU provider, fp32) with the same thread count, and torch/ORT ratios (> 1: ORT is faster)."""
    from benchmarks.timing import summarise, time_calls
    from realtime.engines import OrtEngine, TorchEngine

    torch.set_num_threads(threads)
    eng_t = TorchEngine(bundle, device="cpu", precision="fp32")
    eng_o = OrtEngine(bundle, device="cpu", precision="fp32", model_dir=onnx_dir, threads=threads)
    crops = example_inputs(bundle, "fren", batch=batch, seed=seed)["crops"]
    prev = example_inputs(bundle, "vien", batch=batch, seed=seed)["prev_ws"]
    ws = example_inputs(bundle, "synthesis", batch=batch, seed=seed)["ws"]
    calls: dict[str, Callable[[Any], object]] = {
        "encode_key": lambda e: e.encode_key(crops),
        "encode_reuse": lambda e: e.encode_reuse(crops, prev),
        "synthesize": lambda e: e.synthesize(ws),
    }
    out: dict[str, Any] = {"threads": threads, "batch": batch, "calls": {}}
    for name, fn in calls.items():
        row: dict[str, Any] = {}
        # alternate the two engines in short rounds so background load hits both alike
        ms: dict[str, list[float]] = {"torch": [], "onnx": []}
        for _ in range(2):
            for key, eng in (("torch", eng_t), ("onnx", eng_o)):
                ms[key] += time_calls(lambda e=eng, f=fn: f(e), warmup=warmup, iters=max(1, iters // 2),
                                      max_seconds=max_seconds / 4)
        for key in ms:
            row[key] = summarise(ms[key])
        row["ratio_torch_over_onnx"] = row["torch"]["median_ms"] / row["onnx"]["median_ms"]
        out["calls"][name] = row
    frame_t = out["calls"]["encode_reuse"]["torch"]["median_ms"] + out["calls"]["synthesize"]["torch"]["median_ms"]
    frame_o = out["calls"]["encode_reuse"]["onnx"]["median_ms"] + out["calls"]["synthesize"]["onnx"]["median_ms"]
    out["frame"] = {"torch_ms": frame_t, "onnx_ms": frame_o, "ratio_torch_over_onnx": frame_t / frame_o}
    eng_o.close()
    eng_t.close()
    return out


def format_speed(speed: dict[str, Any]) -> str:
    lines = ["| call | torch ms (median) | ONNX Runtime ms (median) | torch / ORT |", "|---|---|---|---|"]
    for name, row in speed["calls"].items():
        lines.append(f"| {name} | {row['torch']['median_ms']:.2f} | {row['onnx']['median_ms']:.2f} "
                     f"| {row['ratio_torch_over_onnx']:.2f}× |")
    f = speed["frame"]
    lines.append(f"| frame (encode_reuse + synthesize) | {f['torch_ms']:.2f} | {f['onnx_ms']:.2f} "
                 f"| {f['ratio_torch_over_onnx']:.2f}× |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m export.parity``: export (if needed), check parity, optionally time ORT vs torch; print markdown
    and write JSON with provenance. This is the command behind the tables in docs/export.md."""
    import argparse
    import json
    import sys

    from models.bundle import load_bundle, new_bundle

    from .onnx import bundle_hash, export_bundle

    ap = argparse.ArgumentParser(prog="python -m export.parity", description=main.__doc__)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--bundle", type=Path, help="bundle folder")
    src.add_argument("--random", metavar="GEN:ENC", help="an untrained bundle from presets, e.g. tiny-128:tiny")
    ap.add_argument("--randomize-heads", action="store_true",
                    help="random encoder head weights (untrained encoders otherwise ignore their input)")
    ap.add_argument("-o", "--out", type=Path, required=True, help="ONNX export folder (reused when it matches)")
    ap.add_argument("--precisions", default="fp32,fp16")
    ap.add_argument("--speed", action="store_true", help="also time ORT vs torch on the CPU")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1, help="batch for the speed comparison")
    ap.add_argument("--json", type=Path, default=None, help="write results + provenance here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        if args.bundle is not None:
            bundle = load_bundle(args.bundle)
        else:
            gen, _, enc = args.random.partition(":")
            bundle = new_bundle(gen, enc or "tiny", name=f"random-{gen}")
        if args.randomize_heads:
            randomize_heads(bundle)
        precs = [p.strip() for p in args.precisions.split(",") if p.strip()]
        have: dict[str, Any] = {}
        if (args.out / "manifest.json").exists():
            m = read_manifest(args.out)
            have = m.get("models", {}) if m.get("bundle_hash") == bundle_hash(bundle) else {}
        for p in precs:
            missing = [k for k in ("fren", "vien", "synthesis") if f"{k}.{p}" not in have]
            if missing:
                export_bundle(bundle, args.out, precision=p, models=missing, progress=print)
        results = run_parity(bundle, args.out, precisions=precs, progress=print)
        print(format_table(results))
        report: dict[str, Any] = {"parity": [r.to_dict() for r in results]}
        if args.speed:
            speed = speed_compare(bundle, args.out, threads=args.threads, batch=args.batch)
            print(format_speed(speed))
            report["speed"] = speed
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        from benchmarks.provenance import provenance

        report["provenance"] = provenance("cpu")
        report["provenance"]["loadavg_1_5_15"] = list(os.getloadavg())  # other work on the machine while timing
        report["command"] = "python -m export.parity " + " ".join(sys.argv[1:] if argv is None else argv)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
