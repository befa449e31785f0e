"""Measure every edit of a bundle on held-out synthetic clips and draw a PNG strip per edit (issue 6).

For each edit and each strength (−2…+2; 0…1 for the bounded kinds), the held-out frames' FrEN codes are edited
through :class:`models.editing.EditStack` exactly as the pipeline does, rendered, and measured with the
differentiable face mesh (training/losses.py ``CropFaceMesh``) on the renders:

* the targeted measure (training/measures.py ``face_measures``, or the landmark read-out's degrees / [0, 1]
  parameters for pose/expression targets), its mean per strength, slope per unit strength (measure units and
  standard deviations of the measure over the held-out frames), whether the mean curve is monotonic and the
  fraction of frames that are;
* how far the non-targeted landmarks move per unit strength (crop px at the render's resolution);
* StyleSpace channels: the share of the image change inside the channel's region mask;
* random_identity: the image change next to the landmark motion (identity changes, the face's geometry should not);
* keep_mouth: smile −2…+2 with keep_mouth = 1 against smile alone: inner-lip landmark error against the
  original frame's ground truth, as a ratio to the unedited reconstruction's error, and the smile measure.

``python -m benchmarks.bench_edits BUNDLE`` or ``stylestream edits measure BUNDLE``: writes JSON, a markdown
table and ``edits_<name>.png`` strips.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from benchmarks.provenance import command_line, write_result
from models.bundle import load_bundle
from models.editing import PARAMS, EditContext, EditSpec, EditStack, landmark_features
from models.errors import UserError
from realtime.vision.topology import LIPS_INNER_LOOP
from training.directions import encode_synthetic, mesh_landmarks, non_target_motion, region_masks, render
from training.losses import load_face_mesh
from training.measures import MEASURES, face_measures

log = logging.getLogger("stylestream.edits")

SIGNED = (-2.0, -1.0, 0.0, 1.0, 2.0)
BOUNDED = (0.0, 0.25, 0.5, 0.75, 1.0)
POSE_TARGET_MEASURE = {"yaw": "yaw", "pitch": "pitch"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", type=Path, help="bundle folder with edits")
    p.add_argument("--seeds", default="9001,9002,9003", help="held-out synthetic clip seeds (comma-separated)")
    p.add_argument("--frames", type=int, default=16, help="frames per held-out clip")
    p.add_argument("--stride", type=int, default=6, help="frame stride inside a clip")
    p.add_argument("--edits", default="", help="only these edits (comma-separated; default all)")
    p.add_argument("--out-json", type=Path, default=Path("docs/bench/edits.json"), help="measurements")
    p.add_argument("--out-md", type=Path, default=Path("docs/bench/edits.md"), help="markdown table")
    p.add_argument("--img-dir", type=Path, default=Path("docs/img"), help="where edits_<name>.png strips go")
    p.add_argument("--strip-frames", type=int, default=3, help="rows (held-out frames) per strip")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")


def _strengths(spec: Any) -> tuple[float, ...]:
    if spec.kind in ("keep_mouth", "style_channel", "w_direction"):
        return SIGNED  # keep_mouth: the smile's strengths (keep_mouth itself at 1)
    if spec.kind == "random_identity":
        return (0.0, 0.5, 1.0, 1.5, 2.0)
    return BOUNDED


def _slope(x: list[float], v: torch.Tensor) -> torch.Tensor:
    """Least-squares slope of v [N, S] over strengths x [S] → [N]."""
    st = torch.tensor(x, dtype=torch.float32)
    sc = st - st.mean()
    return ((v - v.mean(1, keepdim=True)) * sc).sum(1) / sc.pow(2).sum()


def _monotonic(v: torch.Tensor, sign: float) -> torch.Tensor:
    return ((v[..., 1:] - v[..., :-1]) * sign >= -1e-6).all(-1)


def _to_u8(x: torch.Tensor, size: int) -> np.ndarray:
    img = ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_NEAREST)  # pixels as rendered (and small PNGs)


def draw_strip(path: Path, originals: torch.Tensor, renders: list[torch.Tensor], labels: list[str], title: str,
               tile: int = 128) -> Path:
    """Rows = frames; columns = original crop, then one render per strength. originals [R, 3, S, S],
    renders: per strength [R, 3, S, S]."""
    rows = []
    head = np.full((22, tile * (len(renders) + 1), 3), 255, np.uint8)
    for k, text in enumerate(["original", *labels]):
        cv2.putText(head, text, (k * tile + 6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    for r in range(originals.shape[0]):
        rows.append(np.concatenate([_to_u8(originals[r], tile)] + [_to_u8(x[r], tile) for x in renders], 1))
    top = np.full((22, head.shape[1], 3), 255, np.uint8)
    cv2.putText(top, title, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    sheet = np.concatenate([top, head, *rows], 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    return path


@torch.no_grad()
def measure_edits(bundle: Any, mesh: Any, seeds: list[int], frames: int, stride: int, names: list[str] | None = None,
                  img_dir: Path | None = None, strip_frames: int = 3) -> dict[str, Any]:
    """Measure the bundle's edits (see the module docstring). Returns {"edits": {name: row}, "baseline": …}."""
    g = bundle.generator
    stack = EditStack.from_bundle(bundle)
    specs: dict[str, EditSpec] = stack.specs
    names = [n for n in (names or list(specs)) if n in specs]
    data = encode_synthetic(bundle, seeds, frames, stride=stride, randomize=False)
    n = len(data)
    res = g.img_resolution
    scale = res / bundle.crop_size
    gt = data.landmarks * scale  # ground truth in render px
    recon = render(g, data.ws)
    lm0 = mesh_landmarks(mesh, recon)
    m_std = {k: float(v.std().clamp_min(1e-6)) for k, v in face_measures(gt).items()}
    inner = list(LIPS_INNER_LOOP)
    recon_lip_err = (lm0[:, inner, :2] - gt[:, inner, :2]).norm(dim=-1).mean(1)  # [N]
    lm_w = bundle.extra.get("pose_expression.lm_readout.weight")
    lm_b = bundle.extra.get("pose_expression.lm_readout.bias")

    def readout(lm: torch.Tensor) -> torch.Tensor | None:
        if lm_w is None or lm_b is None:
            return None
        return landmark_features(lm / scale) @ lm_w.T + lm_b

    baseline = {"frames": n, "seeds": seeds, "recon_landmark_px": float((lm0[..., :2] - gt[..., :2]).norm(dim=-1)
                                                                         .mean()),
                "recon_inner_lip_px": float(recon_lip_err.mean()), "measure_std": m_std}
    rows: dict[str, Any] = {}
    strip_idx = torch.linspace(0, n - 1, strip_frames).round().long() if strip_frames else torch.zeros(0).long()

    def run(strengths: dict[str, float]) -> tuple[torch.Tensor, torch.Tensor]:
        stack.set_strengths(strengths, reset=True)
        needs_ctx = any(specs[k].kind == "pose_expression" for k, v in strengths.items() if v)
        if needs_ctx:
            outs = [stack.apply(data.ws[i:i + 1], EditContext(crop_landmarks=data.landmarks[i])) for i in range(n)]
            ws = torch.cat([o[0] for o in outs])
            sds = [o[1] for o in outs]
            sd = {k: torch.cat([s[k] for s in sds]) for k in sds[0]} if sds[0] else None
        else:
            ws, sd = stack.apply(data.ws)
        img = render(g, ws, sd)
        return img, mesh_landmarks(mesh, img)

    for name in names:
        t0 = time.time()
        spec = specs[name]
        strengths = _strengths(spec)
        row: dict[str, Any] = {"kind": spec.kind, "strengths": list(strengths), "route": spec.extra.get("route", "")}
        imgs, lms = [], []
        base = "smile" if spec.kind == "keep_mouth" else None
        if base is not None and base not in specs:
            continue
        for s in strengths:
            st = {name: s} if base is None else {base: s, name: 1.0}
            img, lm = run(st)
            imgs.append(img)
            lms.append(lm)
        i0 = strengths.index(0.0)
        if spec.kind == "w_direction" or spec.kind == "keep_mouth":
            measure = spec.extra.get("measure", "smile") if spec.kind == "w_direction" else "smile"
            v = torch.stack([face_measures(lm)[measure] for lm in lms], 1)  # [N, S]
            row["measure"] = measure
        elif spec.kind == "pose_expression":
            target = spec.extra["target"]
            keys = list(target)
            ro = [readout(lm) for lm in lms]
            if ro[0] is None:
                continue
            # distance of the read-out parameters to the target (degrees / parameter units), should fall
            idx = [PARAMS.index(k) for k in keys]
            tgt = torch.tensor([float(target[k]) for k in keys])
            v = torch.stack([-(r[:, idx] - tgt).abs().mean(1) for r in ro], 1)  # type: ignore[index]
            row["measure"] = "−|read-out − target| over " + ",".join(keys)
            row["readout_mean"] = [[float(x) for x in r[:, idx].mean(0)] for r in ro]  # type: ignore[index]
            row["target"] = target
        elif spec.kind == "style_channel":
            masks = region_masks(gt, res)[spec.extra.get("region", "skin")].float()
            diffs = [(img - imgs[i0]).abs().sum(1) for img in imgs]  # [N, H, W]
            inside = [float(((d * masks).sum((1, 2)) / d.sum((1, 2)).clamp_min(1e-8)).mean()) for d in diffs]
            row["inside_share"] = [x for k, x in enumerate(inside) if k != i0]
            row["region_area_share"] = float(masks.mean())
            v = torch.stack([d.mean((1, 2)) for d in diffs], 1) * torch.tensor(strengths).sign()
            row["measure"] = "signed mean |Δimage| (sum over RGB)"
        else:  # random_identity
            v = torch.stack([(img - imgs[i0]).abs().mean((1, 2, 3)) for img in imgs], 1)
            row["measure"] = "mean |Δimage|"
        slope = _slope(list(strengths), v)
        sign = 1.0 if float(slope.mean()) >= 0 else -1.0
        row["means"] = [float(x) for x in v.mean(0)]
        row["slope_per_unit"] = float(slope.mean())
        if row.get("measure") in MEASURES:
            row["slope_sigma"] = float(slope.mean()) / m_std[row["measure"]]
        row["monotonic_mean"] = bool(_monotonic(v.mean(0), sign))
        row["monotonic_frames"] = float(_monotonic(v, sign).float().mean())
        meas_for_motion = row.get("measure", "") if spec.kind == "w_direction" else ""
        if spec.kind in ("w_direction",) and row["measure"] in ("yaw", "pitch"):
            meas_for_motion = ""  # a pose edit moves every landmark by design: report all
        motion = [float(non_target_motion(lms[k], lms[i0], meas_for_motion).mean()) / abs(s - strengths[i0])
                  for k, s in enumerate(strengths) if k != i0]
        row["non_target_px_per_unit"] = float(np.mean(motion))
        row["non_target_region"] = "all landmarks" if not meas_for_motion else f"outside the {meas_for_motion} region"
        if spec.kind == "keep_mouth":
            lip = [float(((lm[:, inner, :2] - gt[:, inner, :2]).norm(dim=-1).mean(1)).mean()) for lm in lms]
            row["inner_lip_px"] = lip
            row["inner_lip_ratio"] = [x / baseline["recon_inner_lip_px"] for x in lip]
            row["inner_lip_shift_px"] = [float((lm[:, inner, :2] - lm0[:, inner, :2]).norm(dim=-1).mean())
                                         for lm in lms]
            free_lip, free_smile, free_shift = [], [], []
            for s in strengths:
                _, lm = run({"smile": s})
                free_lip.append(float(((lm[:, inner, :2] - gt[:, inner, :2]).norm(dim=-1).mean(1)).mean()))
                free_smile.append(float(face_measures(lm)["smile"].mean()))
                free_shift.append(float((lm[:, inner, :2] - lm0[:, inner, :2]).norm(dim=-1).mean()))
            row["smile_alone_inner_lip_ratio"] = [x / baseline["recon_inner_lip_px"] for x in free_lip]
            row["smile_alone_means"] = free_smile
            row["smile_alone_inner_lip_shift_px"] = free_shift
        row["seconds"] = round(time.time() - t0, 1)
        rows[name] = row
        if img_dir is not None and strip_frames:
            labels = [f"{'' if base is None else 'smile '}{s:+g}" for s in strengths]
            draw_strip(img_dir / f"edits_{name}.png", data.crops[strip_idx] if bundle.crop_size == res else
                       recon[strip_idx], [x[strip_idx] for x in imgs], labels,
                       (f"{name} ({spec.kind}) at each strength: {spec.description}" if base is None else
                        "smile at each strength, keep_mouth = 1")[:110])
        log.info("%s: slope %+.4f/unit, monotonic %s, non-target %.2f px/unit (%.0fs)", name,
                 row["slope_per_unit"], row["monotonic_mean"], row["non_target_px_per_unit"], row["seconds"])
    stack.set_strengths({}, reset=True)
    return {"edits": rows, "baseline": baseline}


def markdown_table(result: dict[str, Any]) -> str:
    lines = ["| edit | kind | route | measure | mean at each strength | per unit | monotonic (mean / frames) "
             "| non-targeted landmarks px/unit |", "|---|---|---|---|---|---|---|---|"]
    for name, r in result["edits"].items():
        per = f"{r['slope_per_unit']:+.4f}"
        if "slope_sigma" in r:
            per += f" ({r['slope_sigma']:+.2f}σ)"
        means = " / ".join(f"{x:.3f}" for x in r["means"])
        measure = str(r.get("measure", "")).replace("|", "\\|")
        lines.append(f"| {name} | {r['kind']} | {r.get('route', '')} | {measure} | {means} | {per} | "
                     f"{'yes' if r['monotonic_mean'] else 'no'} / {100 * r['monotonic_frames']:.0f}% | "
                     f"{r['non_target_px_per_unit']:.2f} ({r['non_target_region']}) |")
    b = result["baseline"]
    lines.append("")
    lines.append(f"Held-out frames: {b['frames']} (seeds {b['seeds']}); unedited reconstruction: landmark error "
                 f"{b['recon_landmark_px']:.2f} px, inner-lip error {b['recon_inner_lip_px']:.2f} px.")
    km = result["edits"].get("keep_mouth")
    if km:
        lines.append("")
        lines.append("keep_mouth (smile at " + ", ".join(f"{s:+g}" for s in km["strengths"]) + "):")
        lines.append("")
        lines.append("| | inner-lip error vs original ÷ unedited reconstruction's | inner-lip shift vs unedited "
                     "reconstruction (px) | smile measure |")
        lines.append("|---|---|---|---|")
        lines.append("| smile + keep_mouth=1 | " + " / ".join(f"{x:.2f}" for x in km["inner_lip_ratio"]) + " | "
                     + " / ".join(f"{x:.2f}" for x in km["inner_lip_shift_px"]) + " | "
                     + " / ".join(f"{x:.3f}" for x in km["means"]) + " |")
        lines.append("| smile alone | " + " / ".join(f"{x:.2f}" for x in km["smile_alone_inner_lip_ratio"])
                     + " | " + " / ".join(f"{x:.2f}" for x in km["smile_alone_inner_lip_shift_px"]) + " | "
                     + " / ".join(f"{x:.3f}" for x in km["smile_alone_means"]) + " |")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(max(1, args.threads))
    bundle = load_bundle(args.bundle)
    if not bundle.edits:
        raise UserError(f"bundle {args.bundle} has no edits (fit them with `stylestream edits fit`)")
    if bundle.fren is None:
        raise UserError("measuring edits needs a bundle with FrEN (to encode the held-out clips)")
    mesh = load_face_mesh()
    if mesh is None:
        raise UserError("measuring edits needs the torch face mesh (models/face_mesh.py and MediaPipe's .tflite)")
    seeds = [int(s) for s in str(args.seeds).split(",") if s.strip()]
    names = [s.strip() for s in args.edits.split(",") if s.strip()] or None
    t0 = time.time()
    result = measure_edits(bundle, mesh, seeds, args.frames, args.stride, names, args.img_dir, args.strip_frames)
    result["provenance"] = {"command": command_line(), "bundle": str(args.bundle), "bundle_name": bundle.name,
                            "seconds": round(time.time() - t0, 1), "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                         time.gmtime())}
    write_result(args.out_json, result, indent=1)
    md = markdown_table(result)
    write_result(args.out_md, md)
    print(md)
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
