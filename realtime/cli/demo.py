"""`stylestream demo`: the whole filter on a synthetic talking-head clip with the built-in default bundle.

It says what it does before it starts, shows progress for every phase, and writes ``demo_out/`` (or ``-o DIR``):

* ``input.mp4`` — the synthetic clip it filters (``demo:portrait``, seed ``--seed``: a clip no training run saw),
* ``side_by_side.mp4`` — original | filtered, with the preset edit (the first of :data:`PRESET_EDITS` the bundle has;
  ``--edit`` chooses others, ``--edit none`` shows the plain reconstruction),
* ``metrics.json`` — run stats (fps, per-stage ms, latency, faces, key frames) and crop-level fidelity of the
  encoders (PSNR/SSIM of FrEN and ViEN reconstructions of the aligned crops, and their temporal consistency),
* ``contact_sheet.png`` — labelled frames (original | filtered) after the fade-in, plus aligned crops over their
  reconstructions.

No download, no GPU needed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import torch
from rich.console import Console

from models.bundle import Bundle
from models.editing import EditStack, parse_edit_args
from models.errors import UserError
from realtime.api import Filter, load, open_sink, open_source
from realtime.cli.common import PhaseProgress, status
from realtime.frames import Frame, Output
from realtime.pipeline import PipelineConfig
from realtime.vision.align import align_crop
from realtime.vision.tracking import FaceTracker, TrackerConfig
from training.losses import ssim

PRESET_EDITS = ("smile=1.5", "mouth_open=1.0", "eyes_open=1.0")  # first one the bundle has is applied


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", type=Path, default=Path("demo_out"), help="output folder (default demo_out)")
    p.add_argument("--bundle", type=Path, default=None, help="bundle folder (default: the built-in default bundle)")
    p.add_argument("--seconds", type=float, default=6.0, help="length of the synthetic clip")
    p.add_argument("--size", default="640x480", help="frame size WxH")
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--seed", type=int, default=2024, help="synthetic clip seed (held out from training)")
    p.add_argument("--edit", action="append", metavar="NAME=STRENGTH",
                   help="edit to show (repeatable; default: the first preset the bundle has, "
                        f"{', '.join(PRESET_EDITS)}; 'none' for the plain reconstruction)")
    p.add_argument("--device", default="auto")


def _crop_fidelity(bundle: Any, frames: list[np.ndarray], max_frames: int = 48) -> dict[str, Any]:
    """Encode the aligned crops of the first frames with FrEN (every frame) and ViEN (with reuse) and compare the
    reconstructions with the crops: PSNR, SSIM and temporal consistency (Video2StyleGAN TC, ±3 neighbours)."""
    crops = []
    with FaceTracker(TrackerConfig(smoothing="none")) as tracker:
        for i, img in enumerate(frames[:max_frames]):
            tr = tracker.track(Frame(img, index=i))
            if tr.has_face:
                crops.append(align_crop(img, tr.quad, bundle.crop_size).image)
    if len(crops) < 8:
        return {"crops": len(crops), "note": "too few faces found for crop metrics"}
    x = torch.stack(crops).float()
    g = bundle.generator
    res = g.img_resolution
    with torch.inference_mode():
        ws_f = bundle.fren(x)
        rec_f = g.synthesis(ws_f)
        rec_v = [g.synthesis(ws_f[:1])]
        prev = ws_f[:1]
        for i in range(1, len(x)):
            prev = bundle.vien(x[i : i + 1], prev) if bundle.vien is not None else ws_f[i : i + 1]
            rec_v.append(g.synthesis(prev))
        rec_v = torch.cat(rec_v)
        tgt = torch.nn.functional.interpolate(x, size=(res, res), mode="area") if x.shape[-1] != res else x

    def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
        mse = ((a.clamp(-1, 1) - b) / 2).square().mean().item()
        return float(10 * np.log10(1 / max(mse, 1e-12)))

    def tc(v: torch.Tensor) -> float:
        n = len(v)
        errs = [((v[i] - v[j]) / 2).square().mean().sqrt().item() for i in range(n)
                for j in range(max(0, i - 3), min(n, i + 4)) if j != i]
        return float(np.mean(errs))

    return {
        "crops": len(crops),
        "fren": {"psnr_db": psnr(rec_f, tgt), "ssim": float(ssim(rec_f.clamp(-1, 1), tgt).mean()),
                 "tc": tc(rec_f)},
        "vien_reuse": {"psnr_db": psnr(rec_v, tgt), "ssim": float(ssim(rec_v.clamp(-1, 1), tgt).mean()),
                       "tc": tc(rec_v)},
        "input_tc": tc(tgt),
        "_strip": (tgt, rec_f, rec_v),
    }


def _contact_sheet(out_frames: list[np.ndarray], strip: tuple | None, path: Path, fps: float, caption: str) -> None:
    # skip the first half second: the filter fades in there (DESIGN §2: no face → hold, then fade)
    start = min(len(out_frames) - 1, int(round(0.5 * fps)))
    picks = np.linspace(start, len(out_frames) - 1, num=min(4, len(out_frames) - start)).round().astype(int)
    rows = [_label_row(("original", f"filtered: {caption}"), 960)]
    for i in picks:
        f = out_frames[i]
        scale = 960 / f.shape[1]
        rows.append(cv2.resize(f, (960, int(round(f.shape[0] * scale))), interpolation=cv2.INTER_AREA))
    sheet = np.concatenate(rows, axis=0)
    if strip is not None:
        tgt, rec_f, rec_v = strip
        idx = np.linspace(0, len(tgt) - 1, num=min(6, len(tgt))).round().astype(int)
        tile = 160

        def to_u8(t):
            a = ((t.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
            return cv2.resize(a, (tile, tile), interpolation=cv2.INTER_CUBIC)

        grid = np.concatenate([np.concatenate([to_u8(s[i]) for i in idx], axis=1) for s in (tgt, rec_f, rec_v)],
                              axis=0)
        pad = np.full((grid.shape[0], 960 - grid.shape[1], 3), 255, np.uint8) if grid.shape[1] < 960 else None
        grid = np.concatenate([grid, pad], axis=1) if pad is not None else grid[:, :960]
        label = np.full((28, 960, 3), 255, np.uint8)
        cv2.putText(label, "aligned crops / FrEN reconstruction / ViEN with fine-layer reuse", (8, 20),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
        sheet = np.concatenate([sheet, label, grid], axis=0)
    cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))


def _label_row(labels: tuple[str, ...], width: int, height: int = 30) -> np.ndarray:
    row = np.full((height, width, 3), 255, np.uint8)
    cell = width // len(labels)
    for i, text in enumerate(labels):
        cv2.putText(row, text, (i * cell + 8, height - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    return row


def _render_input(spec: str, path: Path, console: Console) -> None:
    with open_source(spec, live=False) as src, PhaseProgress(console) as bar, \
            open_sink(str(path), width=src.width, height=src.height, fps=src.fps, crf=14) as sink:
        for f in src:
            sink.write(Output(f.image, f.index, f.pts, f.time_base, f.capture_ns))
            bar.advance("writing input.mp4", src.frame_count or None)


def _edits(bundle: Bundle, given: list[str] | None) -> dict[str, float]:
    if given == ["none"]:
        return {}
    if given:
        return parse_edit_args(given)
    names = set(EditStack.from_bundle(bundle).names)
    return parse_edit_args([e for e in PRESET_EDITS if e.split("=")[0] in names][:1])


def main(args: argparse.Namespace) -> int:
    console = Console(stderr=True, soft_wrap=True)
    out: Path = args.output
    spec = f"demo:portrait?seconds={args.seconds:g}&fps={args.fps:g}&size={args.size}&seed={args.seed}"
    console.print(f"stylestream demo: filtering a {args.seconds:g} s synthetic talking-head clip ({args.size}, "
                  f"{args.fps:g} fps, seed {args.seed}).\n"
                  f"It writes {out}/: input.mp4 (the clip), side_by_side.mp4 (original | filtered), "
                  "contact_sheet.png and metrics.json.", highlight=False)
    bundle = load(args.bundle)
    edits = _edits(bundle, args.edit)
    caption = ", ".join(f"{k}={v:g}" for k, v in edits.items()) or "no edit (reconstruction)"
    console.print(f"bundle {bundle.name!r}, {caption}", highlight=False)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {out}: {exc.strerror}") from None
    _render_input(spec, out / "input.mp4", console)
    with status(console, "preparing the engine (the first run exports the bundle to ONNX, ≈ 15 s)"):
        flt = Filter(bundle, edits, device=args.device, pipeline=PipelineConfig(side_by_side=True), live=False)
    with flt, open_source(str(out / "input.mp4"), live=False) as src, PhaseProgress(console) as bar, \
            open_sink(str(out / "side_by_side.mp4"), width=2 * src.width, height=src.height, fps=src.fps,
                      audio_from=src) as sink:
        stats = flt.run(src, sink, live=False, on_output=lambda o, s: bar.advance("filtering", src.frame_count))
        engine = {"backend": flt.engine.name, "device": str(flt.engine.device), "precision": flt.engine.precision}
    with status(console, "measuring encoder fidelity on the aligned crops, drawing the contact sheet"):
        with av.open(str(out / "side_by_side.mp4")) as c:
            out_frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        with av.open(str(out / "input.mp4")) as c:
            in_frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        fid = _crop_fidelity(bundle, in_frames)
        strip = fid.pop("_strip", None)
        _contact_sheet(out_frames, strip, out / "contact_sheet.png", args.fps, caption)
    metrics = {"clip": spec, "bundle": bundle.name, "bundle_trained": bundle.trained, "edits": edits,
               "run": stats.to_dict(), "engine": engine, "crop_fidelity": fid}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    f, v = fid.get("fren", {}), fid.get("vien_reuse", {})
    console.print(f"[green]demo written to {out}/[/]: input.mp4, side_by_side.mp4, contact_sheet.png, metrics.json — "
                  f"{stats.fps:.1f} fps; crop PSNR FrEN {f.get('psnr_db', float('nan')):.1f} dB, "
                  f"ViEN {v.get('psnr_db', float('nan')):.1f} dB; TC FrEN {f.get('tc', float('nan')):.4f}, "
                  f"ViEN {v.get('tc', float('nan')):.4f}")
    return 0
