"""The picture on a face no training run saw: every edit in both compositing modes (DESIGN §9).

    stylestream bench quality [--bundle DIR] [--frames 24] [--json docs/bench/quality.json] [--docs docs]

The clip: matplotlib's grace_hopper portrait (never used for training: the default bundle's only identity is the
astronaut) moved like a webcam would see it — 640×480, face ≈ 200 px, a smooth sway, ±5° roll and ±3 % zoom, camera
noise, an H.264 round trip (``realtime.io.stills``). Every output is made by the real filter (``realtime.api.Filter``:
tracking, alignment, encoding with reuse, edits, generation, compositing), once per (edit, strength, mode).

Measured with MediaPipe's runtime landmarks (static image mode) on output vs input frames:

* **effect** — the edit's measure (``training.measures.face_measures``; smile also as the mouth-corner distance in
  inter-ocular distances, IOD; yaw / pitch as a head rotation in degrees from a Kabsch fit of the 3-D mesh),
  output − input, mean over the clip, and in units of the measure's frame-to-frame std on the unedited clip;
* **off-target** — PSNR and mean |Δchroma| (YCrCb levels) vs the input inside the face but outside the edit's
  region; eyes/brows PSNR; for style channels the mean |ΔRGB| inside and outside their region;
* **flicker** — TC (Video2StyleGAN: mean RMSE between a frame and its ±3 neighbours) of the face after undoing the
  clip's known motion, output ÷ input;
* **no edit** — face-region PSNR of the output vs the input, before the encoder and after the file encoder against a
  plain re-encode of the input with the same settings;
* **cost** — ms per frame of the device path at 640×480 (``--backend``, default onnx), regenerate vs transfer with
  smile=1.5, interleaved;
* **regenerate, calibrated** — the generator adapted to the first half of the clip (``training.adapt``, as live
  calibration does), face PSNR and landmark error on the second half.

Writes the JSON, ``docs/quality.md`` (tables, command, provenance) and a contact sheet per edit in ``docs/img/``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from benchmarks.metrics import temporal_consistency
from benchmarks.provenance import command_line, provenance, write_result
from models.bundle import DEFAULT_BUNDLE, Bundle, load_bundle
from models.editing import EditStack
from realtime.api import Filter
from realtime.frames import Frame, Output
from realtime.io.sinks import open_sink
from realtime.io.sources import open_source
from realtime.io.stills import Clip, load_still, make_clip, webcam_motion
from realtime.pipeline import PipelineConfig
from realtime.vision.align import align_crop, quad_from_landmarks
from realtime.vision.composite import face_mask
from realtime.vision.geometry import crop_affine, invert_affine, landmarks_to_crop
from realtime.vision.mediapipe_runtime import detect_landmarks
from realtime.vision.topology import (
    BROW_LEFT_LOOP,
    BROW_RIGHT_LOOP,
    EYE_LEFT,
    EYE_LEFT_LOOP,
    EYE_RIGHT,
    EYE_RIGHT_LOOP,
    FACE_OVAL,
    LIPS_OUTER_LOOP,
    MOUTH_LEFT,
    MOUTH_RIGHT,
    NOSE_TIP,
)
from realtime.vision.tracking import FaceTracker, TrackerConfig
from training.adapt import AdaptConfig, adapt_generator, invert_crops
from training.measures import face_measures

SIZE = (640, 480)
FPS = 30
MODES = ("regenerate", "transfer")
JPEG_QUALITY = 88  # the pictures in docs/img (≈ 100 kB each instead of ≈ 1 MB as PNG)

# edit → (what its effect is measured by, the face region it may change; None: the whole face)
EDIT_EFFECTS: dict[str, tuple[str, str | None]] = {
    "smile": ("mouth_width", "lower"),
    "mouth_open": ("mouth_open", "lower"),
    "eyes_open": ("eyes_open", "eyes"),
    "brow_raise": ("brow_raise", "upper"),
    "yaw": ("yaw_deg", None),
    "pitch": ("pitch_deg", None),
    "yaw_to_15": ("yaw_deg", None),
    "pitch_to_0": ("pitch_deg", None),
    "neutral_expression": ("smile", None),
    "keep_mouth": ("mouth_open", "lower"),
    "random_identity": ("color", None),
    "mouth_style": ("color", "mouth"),
    "skin_style": ("color", "skin"),
    "hair_style": ("color", "hair"),
}
# effect measure → (key in the scores, the direction the edit's name promises: +1 / −1; 0: none promised)
EFFECT_KEY = {"mouth_width": ("d_mouth_width", 1), "mouth_open": ("d_mouth_open", 1), "eyes_open": ("d_eyes_open", 1),
              "brow_raise": ("d_brow_raise", 1), "yaw_deg": ("d_yaw_deg", 1), "pitch_deg": ("d_pitch_deg", 1),
              "smile": ("d_smile", 0), "color": ("color_in_region", 1)}
# Modifiers measured on top of another edit at the end of its range: keep_mouth must keep the mouth's opening
# (Δmouth_open within noise) while the smile still widens the mouth.
PARTNER = {"keep_mouth": "smile"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", type=Path, default=None, help="bundle folder (default: the built-in bundle)")
    p.add_argument("--frames", type=int, default=24, help="frames of the unseen-face clip (default 24)")
    p.add_argument("--edits", default="", help="comma-separated edit names (default: every edit of the bundle)")
    p.add_argument("--backend", default="onnx", help="engine for the cost rows (default onnx, the CPU default)")
    p.add_argument("--no-cost", action="store_true", help="skip the speed rows")
    p.add_argument("--no-calibration", action="store_true", help="skip the calibrated regenerate rows")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--docs", type=Path, default=None, help="write quality.md and img/quality_*.jpg here")


# ------------------------------------------------------------------------------------------------------- clip


def unseen_clip(folder: Path, frames: int, seed: int = 3) -> Clip:
    """Grace Hopper in front of a webcam: 640×480, face ≈ 200 px, decoded after an H.264 round trip."""
    still = load_still("grace_hopper")
    motion = webcam_motion(frames, SIZE, seed=seed, fps=FPS, centre=still.centre, scale=1.0, shift=0.015, zoom=0.03)
    return make_clip(folder / "grace_hopper.mp4", motion, SIZE, fps=FPS, noise_std=2.0, seed=seed, still=still)


def filtered(flt: Filter, frames: np.ndarray) -> np.ndarray:
    """The filter over the clip, frame by frame with timestamps → [T, H, W, 3] uint8."""
    return np.stack([flt(f, timestamp=i / FPS).image for i, f in enumerate(frames)])


# --------------------------------------------------------------------------------------------------- measures


def detect(frames: np.ndarray) -> np.ndarray:
    """MediaPipe runtime landmarks (static image mode) → [T, 468, 3] (NaN where no face)."""
    out = np.full((len(frames), 468, 3), np.nan, np.float32)
    for t, lm in enumerate(detect_landmarks(list(frames))):
        if lm is not None:
            out[t] = lm
    return out


def head_rotation(lm: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(yaw, pitch) in degrees of the mesh ``lm`` relative to ``ref`` ([468, 3]; x right, y down, z away): Kabsch
    rotation after removing translation and scale. yaw > 0: nose towards image right; pitch > 0: nose up."""
    a, b = lm - lm.mean(0), ref - ref.mean(0)
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    u, _, vt = np.linalg.svd(b.T @ a)
    d = np.sign(np.linalg.det(u @ vt))
    rot = (u @ np.diag([1.0, 1.0, d]) @ vt).T
    return math.degrees(math.atan2(rot[2, 0], rot[0, 0])), math.degrees(math.atan2(-rot[2, 1], rot[1, 1]))


def measures(lm: np.ndarray) -> dict[str, np.ndarray]:
    """Per-frame measures [T] of landmarks [T, 468, 3]: face_measures plus the mouth-corner distance and the corner
    lift in inter-ocular distances."""
    m = {k: v.numpy().astype(np.float64) for k, v in face_measures(torch.as_tensor(np.nan_to_num(lm))).items()}
    xy = np.asarray(lm[..., :2], np.float64)
    iod = np.linalg.norm(xy[:, list(EYE_RIGHT)].mean(1) - xy[:, list(EYE_LEFT)].mean(1), axis=-1)
    m["mouth_width"] = np.linalg.norm(xy[:, MOUTH_RIGHT] - xy[:, MOUTH_LEFT], axis=-1) / iod
    m["corner_lift"] = (xy[:, [0, 17]].mean(1)[:, 1] - xy[:, [MOUTH_LEFT, MOUTH_RIGHT]].mean(1)[:, 1]) / iod
    bad = np.isnan(lm).any(axis=(1, 2))
    for v in m.values():
        v[bad] = np.nan
    return m


def _poly(shape: tuple[int, int], pts: np.ndarray, grow: float = 1.0) -> np.ndarray:
    c = pts.mean(0)
    m = np.zeros(shape, np.uint8)
    cv2.fillPoly(m, [np.round((c + (pts - c) * grow) * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    return m.astype(bool)


def regions(lm: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """Frame regions [H, W] bool of one frame: face (mask > 0.5), mouth, lower (below the nose tip), eyes, brows,
    upper (above the lower lids), skin (face minus eyes, brows, mouth), hair (the head outline above the eyes,
    outside the face)."""
    xy = np.asarray(lm[:, :2], np.float64)
    shape = mask.shape
    face = mask > 0.5
    mouth = _poly(shape, xy[list(LIPS_OUTER_LOOP)], 1.25)
    eyes = _poly(shape, xy[list(EYE_LEFT_LOOP)], 2.5) | _poly(shape, xy[list(EYE_RIGHT_LOOP)], 2.5)
    brows = _poly(shape, xy[list(BROW_LEFT_LOOP)], 1.6) | _poly(shape, xy[list(BROW_RIGHT_LOOP)], 1.6)
    el, er = xy[list(EYE_LEFT)].mean(0), xy[list(EYE_RIGHT)].mean(0)
    right = (er - el) / np.linalg.norm(er - el)
    down = np.array([-right[1], right[0]])
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]]
    depth = (xs - xy[NOSE_TIP, 0]) * down[0] + (ys - xy[NOSE_TIP, 1]) * down[1]
    lower = face & (depth > 0) | mouth
    lids = float(((xy[[145, 374]] - xy[NOSE_TIP]) @ down).mean())
    upper = face & (depth < lids) | eyes | brows
    oval = _poly(shape, xy[list(FACE_OVAL)])
    head = _poly(shape, xy[list(FACE_OVAL)], 1.35)
    hair = head & ~oval & ~face & (depth < ((el + er) / 2 - xy[NOSE_TIP]) @ down)
    return {"face": face, "mouth": mouth, "lower": lower, "eyes": eyes, "brows": brows, "eyes_brows": eyes | brows,
            "upper": upper, "skin": face & ~mouth & ~eyes & ~brows, "hair": hair}


def _psnr(a: np.ndarray, b: np.ndarray, sel: np.ndarray | None = None) -> float:
    d = (a.astype(np.float64) - b.astype(np.float64)) if sel is None else (a[sel].astype(np.float64)
                                                                           - b[sel].astype(np.float64))
    if d.size == 0:
        return math.nan
    mse = float((d ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def _chroma(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(img, cv2.COLOR_RGB2YCrCb)[..., 1:].astype(np.float32)


def _finite_mean(v: list[float]) -> float:
    a = np.asarray(v, np.float64)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else math.inf


def stabilised(frames: np.ndarray, matrices: np.ndarray, box: tuple[int, int, int, int]) -> torch.Tensor:
    """Undo the clip's known motion (frames back in still px, cut to the face box) → [T, 3, h, w] in [0, 1]: TC of
    this counts jitter, not the clip's own motion."""
    x0, y0, x1, y1 = box
    out = []
    for f, m in zip(frames, matrices, strict=True):
        mm = np.asarray(m, np.float64).copy()
        mm[:, 2] += mm[:, :2] @ np.array([x0, y0], np.float64)
        out.append(cv2.warpAffine(f, mm, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255.0


@dataclasses.dataclass
class Reference:
    """What every output is compared with: the input clip, its landmarks, face masks and regions."""

    clip: Clip
    landmarks: np.ndarray  # [T, 468, 3] MediaPipe (static) on the input frames
    regions: list[dict[str, np.ndarray]]
    face_box: tuple[int, int, int, int]  # in still px, for TC
    noise: dict[str, float]  # frame-to-frame std of every measure on the input

    @classmethod
    def of(cls, clip: Clip, crop_size: int) -> Reference:
        lm = detect(clip.frames)
        h, w = clip.frames.shape[1:3]
        regs = []
        for t in range(len(lm)):
            to_frame = crop_affine(quad_from_landmarks(lm[t]), crop_size)
            m = face_mask(landmarks_to_crop(lm[t], to_frame), crop_size)
            fm = cv2.warpAffine(m, invert_affine(to_frame), (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
            regs.append(regions(lm[t], fm))
        still = load_still("grace_hopper")
        p = still.landmarks[:, :2]
        lo, hi = p.min(0), p.max(0)
        box = (int(lo[0]) - 20, int(lo[1]) - 30, int(hi[0]) + 20, int(hi[1]) + 10)
        m = measures(lm)
        noise = {k: float(np.nanstd(np.diff(v))) / math.sqrt(2) for k, v in m.items()}
        rot = np.array([head_rotation(lm[t].astype(np.float64), lm[0].astype(np.float64)) for t in range(len(lm))])
        noise["yaw_deg"] = float(np.std(np.diff(rot[:, 0]))) / math.sqrt(2)
        noise["pitch_deg"] = float(np.std(np.diff(rot[:, 1]))) / math.sqrt(2)
        return cls(clip, lm, regs, box, noise)


def score(ref: Reference, out: np.ndarray, edit: str, base: tuple[np.ndarray, np.ndarray], spec: Any = None
          ) -> dict[str, Any]:
    """Effect, off-target, colour and flicker numbers of one output clip.

    Effects are measured against ``base`` — (frames, landmarks [T, 468, 3]) of the same mode's output without an edit
    (for transfer that is the input itself; for regenerate it is the generator's own face), so that they count
    what the edit does, not what the mode does. Off-target, colour and flicker are against the input: they count
    what the user sees of their own face."""
    what, region = EDIT_EFFECTS.get(edit, ("smile", None))
    base_frames, base_lm = base
    lm_out = detect(out)
    mi, mo = measures(base_lm), measures(lm_out)
    res: dict[str, Any] = {f"d_{k}": float(np.nanmean(mo[k] - mi[k])) for k in
                           ("mouth_width", "corner_lift", "smile", "mouth_open", "eyes_open", "brow_raise")}
    rot = np.array([head_rotation(o.astype(np.float64), i.astype(np.float64))
                    if not (np.isnan(o).any() or np.isnan(i).any()) else (np.nan, np.nan)
                    for o, i in zip(lm_out, base_lm, strict=True)])
    res["d_yaw_deg"], res["d_pitch_deg"] = float(np.nanmean(rot[:, 0])), float(np.nanmean(rot[:, 1]))
    off_p, off_c, eb_p, face_p, in_col, out_col = [], [], [], [], [], []
    for t in range(len(out)):
        rg = ref.regions[t]
        a, b = out[t], ref.clip.frames[t]
        inside = rg[region] if region is not None else rg["face"]
        off = rg["face"] if region == "hair" else rg["face"] & ~inside
        off_p.append(_psnr(a, b, off))
        dc = np.abs(_chroma(a) - _chroma(b)).mean(-1)
        off_c.append(float(dc[off].mean()) if off.any() else math.nan)
        eb_p.append(_psnr(a, b, rg["eyes_brows"]))
        face_p.append(_psnr(a, b, rg["face"]))
        drgb = np.abs(a.astype(np.float32) - b.astype(np.float32)).mean(-1)
        in_col.append(float(drgb[inside].mean()) if inside.any() else math.nan)
        out_col.append(float(drgb[off].mean()) if off.any() else math.nan)
    res.update({"psnr_off_target": _finite_mean(off_p), "chroma_off_target": _finite_mean(off_c),
                "psnr_eyes_brows": _finite_mean(eb_p), "psnr_face": _finite_mean(face_p),
                "color_in_region": _finite_mean(in_col), "color_outside_region": _finite_mean(out_col)})
    tc_in = temporal_consistency(stabilised(ref.clip.frames, ref.clip.matrices, ref.face_box), data_range=1.0)
    tc_out = temporal_consistency(stabilised(out, ref.clip.matrices, ref.face_box), data_range=1.0)
    res.update({"tc_input": tc_in, "tc_output": tc_out, "tc_ratio": tc_out / tc_in if tc_in > 0 else math.inf})
    key, sign = EFFECT_KEY[what]
    res["effect_measure"], res["effect"] = what, res[key]
    if what == "color":
        res["effect_ok"] = res["color_in_region"] >= 4.0 and (region is None or res["color_outside_region"] <= 2.0)
    else:
        res["effect_in_noise_std"] = res[key] / max(ref.noise[what], 1e-9)
        target = (getattr(spec, "extra", None) or {}).get("target")
        if edit in PARTNER:  # a modifier: the mouth stays as in the mode's unedited output (≥ 30 dB there)
            res["mouth_psnr_vs_unedited"] = _finite_mean([_psnr(o, b, rg["mouth"]) for o, b, rg in
                                                          zip(out, base_frames, ref.regions, strict=True)])
            res["effect_ok"] = bool(res["mouth_psnr_vs_unedited"] >= 30.0)
        elif target is not None and not any(abs(float(v)) >= 5.0 for v in target.values()):
            res["effect_ok"] = None  # "to 0" targets: this clip's face is frontal and neutral, already there
        else:
            res["effect_ok"] = bool(sign != 0 and sign * res[key] >= 3.0 * ref.noise[what])
    res["off_target_ok"] = None if region is None else bool(res["psnr_off_target"] >= 30.0
                                                            and res["chroma_off_target"] <= 2.0)
    res["tc_ok"] = bool(res["tc_ratio"] <= 1.1)
    return res


def strengths_of(spec: Any) -> list[float]:
    """Mid and end of an edit's range on the side its name promises (the positive side when it has one)."""
    lo, hi = spec.range
    end = hi if hi > 0 else lo
    return [round(end / 2, 3), float(end)]


# -------------------------------------------------------------------------------------------------- the runs


def no_edit_rows(bundle: Bundle, ref: Reference, folder: Path
                 ) -> tuple[dict[str, Any], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Face PSNR with no edit: regenerate vs transfer, before the encoder and after the file encoder (CRF 20)
    against a plain re-encode of the input with the same settings → (rows, {mode: (frames, landmarks) of the
    unedited output}, the baseline every edit's effect is measured from)."""
    face = [rg["face"] for rg in ref.regions]
    frames = ref.clip.frames
    out: dict[str, Any] = {}
    base: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def encode(images: np.ndarray, path: Path) -> np.ndarray:
        with open_sink(str(path), width=SIZE[0], height=SIZE[1], fps=FPS) as sink:
            for i, img in enumerate(images):
                sink.write(Output(image=np.ascontiguousarray(img), index=i, pts=i, time_base=Fraction(1, FPS),
                                  capture_ns=0))
        with open_source(str(path), live=False) as src:
            return np.stack([f.image for f in src])

    plain = encode(frames, folder / "plain.mp4")
    out["reencode_face_psnr"] = _finite_mean([_psnr(p, f, m) for p, f, m in zip(plain, frames, face, strict=True)])
    for mode in MODES:
        with Filter(bundle, composite=mode, backend="torch") as flt:
            res = filtered(flt, frames)
        base[mode] = (res, detect(res))
        enc = encode(res, folder / f"{mode}.mp4")
        out[mode] = {
            "face_psnr_before_encoder": _finite_mean([_psnr(r, f, m) for r, f, m in zip(res, frames, face,
                                                                                       strict=True)]),
            "identical_before_encoder": bool(np.array_equal(res, frames)),
            "face_psnr_after_encoder": _finite_mean([_psnr(e, f, m) for e, f, m in zip(enc, frames, face,
                                                                                       strict=True)]),
        }
    return out, base


def edit_rows(bundle: Bundle, ref: Reference, names: list[str], base: dict[str, tuple[np.ndarray, np.ndarray]]
              ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every edit at mid and end of its range in both modes (a modifier on top of its partner edit) → (rows,
    {edit: {label: frames}} for the sheets)."""
    stack = EditStack.from_bundle(bundle)
    rows, shown = [], {}
    for name in names:
        spec = stack.specs[name]
        partner = PARTNER.get(name) if PARTNER.get(name) in stack.specs else None
        with_partner = {partner: strengths_of(stack.specs[partner])[-1]} if partner else {}
        for k in strengths_of(spec):
            for mode in MODES:
                with Filter(bundle, {**with_partner, name: k}, composite=mode, backend="torch") as flt:
                    out = filtered(flt, ref.clip.frames)
                row = {"edit": name, "kind": spec.kind, "strength": k, "mode": mode, "with": with_partner,
                       **score(ref, out, name, base[mode], spec)}
                rows.append(row)
                print(f"{name}={k:g} {mode}: effect {row['effect']:+.4f} ({row.get('effect_in_noise_std', 0):+.1f}σ) "
                      f"off-target {row['psnr_off_target']:.1f} dB chroma {row['chroma_off_target']:.2f} "
                      f"TC×{row['tc_ratio']:.2f}", flush=True)
                if k == strengths_of(spec)[-1]:
                    shown.setdefault(name, {})[f"{mode} {k:g}"] = out[[len(out) // 3, 2 * len(out) // 3]]
    return rows, shown


def cost_rows(bundle: Bundle, frames: np.ndarray, backend: str, rounds: int = 3) -> dict[str, Any]:
    """ms per frame of the whole device path (tracking included) at 640×480, regenerate vs transfer with
    smile=1.5, interleaved (the machine is shared)."""
    times: dict[str, list[float]] = {m: [] for m in MODES}
    stages: dict[str, dict[str, float]] = {}
    for _ in range(rounds):
        for mode in MODES:
            with Filter(bundle, {"smile": 1.5}, composite=mode, backend=backend, threads=1) as flt:
                for i, f in enumerate(frames[:6]):  # warm-up: key frame, first face-mesh run
                    flt(f, timestamp=i / FPS)
                t0 = time.perf_counter()
                for i, f in enumerate(frames):
                    flt(f, timestamp=(i + 6) / FPS)
                times[mode].append((time.perf_counter() - t0) / len(frames) * 1e3)
                stages[mode] = {k: round(v, 2) for k, v in flt.processor.times.recent().items()}
    med = {m: float(np.median(v)) for m, v in times.items()}
    return {"backend": backend, "ms_per_frame": med, "runs_ms": times, "stages_ms": stages,
            "transfer_over_regenerate": med["transfer"] / med["regenerate"]}


def calibration_rows(bundle: Bundle, ref: Reference, iters: int = 200) -> dict[str, Any]:
    """Regenerate mode before and after adapting the generator to the first half of the clip (what live
    calibration does, 200 steps), face PSNR and landmark error (px) on the second half (frames it never saw)."""
    frames = ref.clip.frames
    half = len(frames) // 2
    crops = []
    with FaceTracker(TrackerConfig(smoothing="none")) as tracker:
        for i, f in enumerate(frames[:half]):
            tr = tracker.track(Frame(image=f, index=i))
            if tr.has_face:
                crops.append(align_crop(f, tr.quad, bundle.crop_size).image)
    x = torch.stack(crops)
    calibrated = dataclasses.replace(bundle, generator=copy.deepcopy(bundle.generator))
    ws = invert_crops(calibrated, x)
    t0 = time.perf_counter()
    adapt_generator(calibrated, x, ws, AdaptConfig(iters=iters, lr=1e-3, batch=4))
    seconds = time.perf_counter() - t0
    out: dict[str, Any] = {"iters": iters, "frames": len(crops), "adapt_seconds": round(seconds, 1)}
    for label, b, cm in (("before", bundle, False), ("before_color_match", bundle, True),
                         ("after", calibrated, False), ("after_color_match", calibrated, True)):
        with Filter(b, composite="regenerate", backend="torch", pipeline=PipelineConfig(color_match=cm)) as flt:
            res = filtered(flt, frames)[half:]
        lm = detect(res)
        err = np.nanmean(np.linalg.norm(lm[..., :2] - ref.landmarks[half:, :, :2], axis=-1))
        out[label] = {"face_psnr": _finite_mean([_psnr(r, f, rg["face"]) for r, f, rg in
                                                 zip(res, frames[half:], ref.regions[half:], strict=True)]),
                      "landmark_error_px": float(err)}
    return out


# ------------------------------------------------------------------------------------------------- reporting


def _label(img: np.ndarray, text: str) -> np.ndarray:
    out = np.ascontiguousarray(img.copy())
    cv2.rectangle(out, (0, 0), (out.shape[1], 22), (0, 0, 0), -1)
    cv2.putText(out, text, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def _face_crop(img: np.ndarray, lm: np.ndarray, side: int = 300) -> np.ndarray:
    """A square around the face (the input's landmarks), ``side`` px."""
    c = np.nanmean(lm[:, :2], axis=0)
    x0 = int(np.clip(c[0] - side / 2, 0, img.shape[1] - side))
    y0 = int(np.clip(c[1] - side / 2, 0, img.shape[0] - side))
    return img[y0:y0 + side, x0:x0 + side]


def contact_sheet(path: Path, ref: Reference, columns: dict[str, np.ndarray], title: str) -> None:
    """One row per shown frame (a third and two thirds into the clip): original | each method, labelled."""
    picks = [len(ref.clip.frames) // 3, 2 * len(ref.clip.frames) // 3]
    rows = []
    for r, t in enumerate(picks):
        cells = [_label(_face_crop(ref.clip.frames[t], ref.landmarks[t]), "original (unseen face)")]
        cells += [_label(_face_crop(col[r], ref.landmarks[t]), name) for name, col in columns.items()]
        rows.append(np.concatenate(cells, 1))
    sheet = np.concatenate(rows, 0)
    head = np.full((28, sheet.shape[1], 3), 255, np.uint8)
    cv2.putText(head, title, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(np.concatenate([head, sheet], 0), cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])


def before_after(path: Path, bundle: Bundle, ref: Reference) -> None:
    """The README's picture: one frame of the unseen face — original | regenerate | transfer, without an edit and
    with smile=1.5 (the filter run over the clip up to that frame, so tracking and fades have settled)."""
    t = len(ref.clip.frames) * 2 // 3
    cells = [_label(_face_crop(ref.clip.frames[t], ref.landmarks[t]), "original (unseen face)")]
    for edits, mode, label in (({}, "regenerate", "regenerate, no edit"), ({}, "transfer", "transfer, no edit"),
                               ({"smile": 1.5}, "regenerate", "regenerate, smile 1.5"),
                               ({"smile": 1.5}, "transfer", "transfer, smile 1.5")):
        with Filter(bundle, edits, composite=mode, backend="torch") as flt:
            out = filtered(flt, ref.clip.frames[:t + 1])[-1]
        cells.append(_label(_face_crop(out, ref.landmarks[t]), label))
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(cells, 1), cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])


def _f(v: Any, fmt: str = ".2f") -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "**no**"
    if isinstance(v, float) and not math.isfinite(v):
        return "∞" if v > 0 else "–"
    return format(v, fmt)


def markdown(result: dict[str, Any]) -> str:
    prov = result["provenance"]
    lines = [
        "# Quality on a face the model never saw",
        "",
        "Generated by `" + result["command"] + "` (benchmarks/bench_quality.py) on "
        f"{prov.get('date', '?')}: {prov.get('cpu', '?')} ({prov.get('cpu_count')} cores), "
        f"{prov.get('device', 'cpu')}, torch {prov.get('torch', '?')}, load average {prov.get('load_avg', '?')}. "
        f"Bundle: {result['bundle']}. "
        "Clip: Grace Hopper (matplotlib's sample portrait; no training run used it) moving like a webcam, "
        f"640×480, face ≈ 200 px, {result['frames']} frames, H.264 round trip. Every output is the real filter "
        "(`realtime.api.Filter`); landmarks are MediaPipe's (static image mode) on output vs input.",
        "",
        "## No edit",
        "",
        "| mode | face PSNR before the encoder | identical | face PSNR after the file encoder (CRF 20) |",
        "|---|---|---|---|",
    ]
    ne = result["no_edit"]
    for mode in MODES:
        r = ne[mode]
        lines.append(f"| {mode} | {_f(r['face_psnr_before_encoder'], '.1f')} dB | "
                     f"{_f(r['identical_before_encoder'])} | {_f(r['face_psnr_after_encoder'], '.1f')} dB |")
    lines += [f"| plain re-encode of the input | – | – | {_f(ne['reencode_face_psnr'], '.1f')} dB |", ""]
    lines += [
        "## Every edit, both modes",
        "",
        "Effect: the edit's measure on the output minus the same mode's output without an edit (for transfer that "
        "is the input itself), so it counts the edit, not the mode (IOD = inter-ocular distances; degrees of head "
        "rotation; colour levels), and in units of the measure's frame-to-frame std on the input (σ). Off-target, "
        "colour and TC compare with the input: what the user sees of their own face. Targets: effect ≥ 3σ in the "
        "named direction, off-target PSNR ≥ 30 dB and |Δchroma| ≤ 2 levels outside the edit's region, style "
        "channels ≥ 4 levels inside and ≤ 2 outside, TC(output) ≤ 1.1 × TC(input). keep_mouth is measured on top "
        "of smile at the end of its range: its effect is the mouth's opening (should stay near 0) and it passes "
        "when the mouth region is ≥ 30 dB against the same mode's unedited output (at 1, the end of its range; "
        "at 0.5 it keeps the mouth half-way by design, so half the smile's mouth change stays). Edits toward 0 "
        "(pitch_to_0, "
        "neutral_expression) are not judged (–): this face is already frontal and neutral, so staying put is "
        "right.",
        "",
        "| edit | strength | mode | measure | effect | σ | effect ok | off-target PSNR | Δchroma outside | "
        "eyes/brows PSNR | colour in / out | TC ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["edits"]:
        lines.append(
            f"| {r['edit']} | {r['strength']:g} | {r['mode']} | {r['effect_measure']}"
            + "".join(f" (with {n} {v:g})" for n, v in r.get("with", {}).items())
            + (f"; mouth {_f(r['mouth_psnr_vs_unedited'], '.1f')} dB vs unedited" if "mouth_psnr_vs_unedited" in r
               else "") + f" | {_f(r['effect'], '+.3f')} | "
            f"{_f(r.get('effect_in_noise_std'), '+.1f')} | {_f(r['effect_ok'])} | {_f(r['psnr_off_target'], '.1f')} | "
            f"{_f(r['chroma_off_target'])} | {_f(r['psnr_eyes_brows'], '.1f')} | "
            f"{_f(r['color_in_region'], '.1f')} / {_f(r['color_outside_region'], '.1f')} | {_f(r['tc_ratio'])} |")
    if "cost" in result:
        c = result["cost"]
        lines += ["", "## Cost", "",
                  f"Whole filter per frame at 640×480 (tracking included), smile=1.5, `--backend {c['backend']}`, "
                  f"median of {len(c['runs_ms']['transfer'])} interleaved runs: regenerate "
                  f"{c['ms_per_frame']['regenerate']:.1f} ms, transfer {c['ms_per_frame']['transfer']:.1f} ms "
                  f"(× {c['transfer_over_regenerate']:.2f}). Stages (ms, last run): regenerate "
                  f"{c['stages_ms']['regenerate']}; transfer {c['stages_ms']['transfer']}."]
    if "calibration" in result:
        c = result["calibration"]
        lines += ["", "## Regenerate mode, with and without calibration", "",
                  f"The generator adapted to the first {c['frames']} frames ({c['iters']} steps, "
                  f"{c['adapt_seconds']} s on this CPU, as live calibration does), measured on the frames after them:",
                  "", "| regenerate | face PSNR | landmark error |", "|---|---|---|",
                  f"| as trained (one identity) | {c['before']['face_psnr']:.1f} dB | "
                  f"{c['before']['landmark_error_px']:.2f} px |",
                  f"| as trained, `--color-match` | {c['before_color_match']['face_psnr']:.1f} dB | "
                  f"{c['before_color_match']['landmark_error_px']:.2f} px |",
                  f"| calibrated to this person | {c['after']['face_psnr']:.1f} dB | "
                  f"{c['after']['landmark_error_px']:.2f} px |",
                  f"| calibrated, `--color-match` | {c['after_color_match']['face_psnr']:.1f} dB | "
                  f"{c['after_color_match']['landmark_error_px']:.2f} px |"]
    lines += ["", "![before / after](img/quality_before_after.jpg)", "",
              "Contact sheets (original | regenerate | transfer, at the end of each edit's range, two frames):", ""]
    lines += [f"- [{name}](img/quality_{name}.jpg)" for name in dict.fromkeys(r["edit"] for r in result["edits"])]
    lines.append("")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(1)
    bundle = load_bundle(args.bundle or DEFAULT_BUNDLE)
    stack = EditStack.from_bundle(bundle)
    names = [n for n in args.edits.split(",") if n] or list(stack.names)
    with tempfile.TemporaryDirectory(prefix="stylestream-quality-") as tmp:
        folder = Path(tmp)
        clip = unseen_clip(folder, args.frames)
        ref = Reference.of(clip, bundle.crop_size)
        no_edit, base = no_edit_rows(bundle, ref, folder)
        result: dict[str, Any] = {"provenance": provenance("cpu"), "command": command_line(),
                                  "bundle": str(args.bundle or "built-in"), "frames": args.frames,
                                  "noise": ref.noise, "no_edit": no_edit}
        result["edits"], shown = edit_rows(bundle, ref, names, base)
    if not args.no_cost:
        result["cost"] = cost_rows(bundle, ref.clip.frames, args.backend)
    if not args.no_calibration:
        result["calibration"] = calibration_rows(bundle, ref)
    write_result(args.json, result)
    if args.docs is not None:
        before_after(args.docs / "img" / "quality_before_after.jpg", bundle, ref)
        for name, cols in shown.items():
            contact_sheet(args.docs / "img" / f"quality_{name}.jpg", ref, cols, f"{name} on an unseen face")
        write_result(args.docs / "quality.md", markdown(result))
    print(markdown(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_quality", description=__doc__.splitlines()[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
