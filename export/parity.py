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

ONNX Runtime and torch runners are built in. Other runtimes come as a :data:`RunnerFactory` (``runner=`` /
``runners=``): TensorRT's is :func:`realtime.engines.tensorrt.trt_runner`, which lives with the engine that runs
TensorRT plans (this module imports nothing above the export layer). The speed comparison of the engines
(ONNX Runtime vs torch) is ``python -m benchmarks.bench_export``.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from export.artifacts import bundle_hash, onnx_filename, read_manifest
from export.onnx import Tapped, example_inputs, export_tapped, model_spec, tap_points
from models.bundle import Bundle
from models.errors import UserError

# precision → (max_rel, mean_rel) allowed against the float32 torch reference
TOLERANCES: dict[str, tuple[float, float]] = {
    "fp32": (1e-4, 1e-5),
    "fp16": (2e-2, 2e-3),
}

RUNTIMES: tuple[str, ...] = ("onnxruntime", "tensorrt", "torch")

# A runner takes named float32 CPU arrays and returns the graph outputs in order, as float32 numpy arrays.
Runner = Callable[[dict[str, np.ndarray]], list[np.ndarray]]
# How a runtime runs an exported file: (ONNX file, precision) → (runner, provider name for the tables).
RunnerFactory = Callable[[Path, str], tuple[Runner, str]]


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
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=list(providers or ["CPUExecutionProvider"]))

    def run(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [np.asarray(o, dtype=np.float32) for o in sess.run(None, feed)]

    return run, sess.get_providers()[0]


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
            providers: Sequence[str] | None, torch_device: str,
            runner: RunnerFactory | None) -> tuple[Runner, str]:
    if runner is not None:
        return runner(path, precision)
    if runtime == "onnxruntime":
        return ort_runner(path, providers)
    if runtime == "torch":
        assert module is not None
        return torch_runner(module, torch_device)
    if runtime == "tensorrt":
        raise UserError("parity in TensorRT needs its runner: pass runner=realtime.engines.tensorrt.trt_runner(…)")
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
                 torch_device: str = "cpu", batch: int = 2, seed: int = 0,
                 runner: RunnerFactory | None = None) -> list[TapError]:
    """Per-tap errors of ``model`` at ``precision`` in ``runtime`` against float32 torch, in network order
    (``runner``: how ``runtime`` runs an ONNX file, for runtimes other than onnxruntime / torch)."""
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
            run, _ = _runner(runtime, path, precision, None, providers, torch_device, runner)
            outs = run({k: v.numpy() for k, v in inputs.items()})
    errs = []
    for name, o, r in zip(names, outs[1:], ref[1:]):
        _, _, max_rel, mean_rel = compare(o, r)
        errs.append(TapError(name, max_rel, mean_rel, within(max_rel, mean_rel, tol)))
    return errs


def check_model(bundle: Bundle, onnx_dir: str | os.PathLike, model: str, precision: str,
                runtime: str = "onnxruntime", tolerances: dict[str, tuple[float, float]] | None = None,
                diagnose: bool = True, providers: Sequence[str] | None = None, torch_device: str = "cpu",
                batch: int = 2, seed: int = 0, runner: RunnerFactory | None = None) -> ParityResult:
    """Compare one exported model with the float32 torch reference; on failure (and ``diagnose``) find the
    first drifting layer. ``runner`` runs the file for ``runtime`` when that is not onnxruntime / torch (TensorRT:
    :func:`realtime.engines.tensorrt.trt_runner`)."""
    tol = (tolerances or TOLERANCES)[precision]
    path = Path(onnx_dir) / onnx_filename(model, precision)
    module = model_spec(bundle, model, precision).module if runtime == "torch" else None
    if runtime != "torch" and not path.exists():
        raise UserError(f"{path} does not exist; export it first (`stylestream export … --precision {precision}`)")
    inputs = example_inputs(bundle, model, batch=batch, seed=seed)
    ref = reference(bundle, model, inputs)[0]
    run, provider = _runner(runtime, path, precision, module, providers, torch_device, runner)
    out = run({k: v.numpy() for k, v in inputs.items()})[0]
    max_abs, mean_abs, max_rel, mean_rel = compare(out, ref)
    res = ParityResult(model, precision, runtime, provider, max_abs, mean_abs, max_rel, mean_rel, tol[0], tol[1],
                       within(max_rel, mean_rel, tol))
    if not res.ok and diagnose:
        res.taps = locate_drift(bundle, model, precision, runtime, tol, providers, torch_device, batch, seed, runner)
        res.first_drift = next((t.name for t in res.taps if not t.ok), None)
    return res


def run_parity(bundle: Bundle, onnx_dir: str | os.PathLike, runtimes: Iterable[str] = ("onnxruntime",),
               precisions: Iterable[str] | None = None, models: Iterable[str] | None = None,
               tolerances: dict[str, tuple[float, float]] | None = None, diagnose: bool = True,
               providers: Sequence[str] | None = None, torch_device: str = "cpu",
               progress: Callable[[str], None] | None = None,
               runners: Mapping[str, RunnerFactory] | None = None) -> list[ParityResult]:
    """Check every exported model in ``onnx_dir`` (filtered by ``precisions``/``models``) in each runtime
    (``runners``: runtime name → :data:`RunnerFactory` for runtimes other than onnxruntime / torch)."""
    manifest = read_manifest(onnx_dir)
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
                            providers, torch_device, runner=(runners or {}).get(rt))
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
# Test bundles


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
