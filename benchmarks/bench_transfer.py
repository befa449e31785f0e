"""Edit transfer vs regenerate on an unseen face (issue 16): effect size, off-target change, TC, cost.

    python -m benchmarks.bench_transfer --out /work/scratch/transfer

The clip: matplotlib's grace_hopper portrait (never used for training: an unseen face), moved like a webcam
would see it — 640×480, face ≈ 200 px tall, a slow translation of ±8 px, ±5° roll, ±3 % zoom, camera noise
(σ = 2) and an H.264 round trip (PyAV). Per frame, like realtime/pipeline.py FrameProcessor.process:
tracking (realtime.tracking.FaceTracker, MediaPipe, live One-Euro) → alignment (realtime.align.align_crop) →
encoding (FrEN on key frames, ViEN otherwise: FrameProcessor.encode) → edits (models.editing.EditStack with
EditContext) → one generator batch of two (reconstruction, edited) → composite: regenerate
(realtime.composite.Compositor) or transfer (realtime.transfer.EditTransfer).

Measures (MediaPipe runtime landmarks, static mode, on the full output frames vs the input frames):

* effect — the edit's measure (training.directions.face_measures; smile also as mouth-corner distance in
  inter-ocular distances, IOD; yaw/pitch also as a head-rotation angle in degrees from a Kabsch fit of the 3-D
  mesh) per frame, output minus input; compared with the measure's std over the unedited input clip.
* off-target — PSNR and mean |Δchroma| (YCrCb levels) vs the input inside the face mask but outside the
  edit's region (and, for every edit, eyes+brows PSNR and mouth PSNR);
* colour shift inside the region (style channels): mean |ΔRGB| in levels;
* TC — Video2StyleGAN's temporal consistency (mean RMSE between a frame and its ±3 neighbours) of the face
  region after undoing the clip's known motion (so only jitter counts), output vs input;
* cost — ms of EditTransfer.apply per frame.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

FRAME_SIZE = (640, 480)  # (width, height)


# ----------------------------------------------------------------------------------------------------- the clip


@functools.cache
def grace_hopper() -> np.ndarray:
    """matplotlib's sample portrait [600, 512, 3] uint8 RGB (read-only); its face is ≈ 200 px tall."""
    import matplotlib

    path = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(path)
    img = np.ascontiguousarray(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
    img.setflags(write=False)
    return img


HOPPER_FACE = (266.0, 232.0)  # centre of the face's landmarks in the portrait (pixels)


def webcam_motion(n: int, seed: int = 0, fps: float = 30.0, shift_px: float = 8.0, roll_deg: float = 5.0,
                  zoom: float = 0.03, scale: float = 1.0, size: tuple[int, int] = FRAME_SIZE) -> np.ndarray:
    """[n, 2, 3] similarities portrait px → frame px: the face at the frame centre, moving on slow smooth
    paths (sums of sinusoids at 0.1–0.6 Hz) within ±``shift_px``, ±``roll_deg`` and ±``zoom``."""
    rng = np.random.default_rng(seed)

    def path(t: np.ndarray) -> np.ndarray:
        f = rng.uniform(0.1, 0.6, 3)
        ph = rng.uniform(0, 2 * math.pi, 3)
        a = rng.uniform(0.5, 1.0, 3)
        v = (a[:, None] * np.sin(2 * math.pi * f[:, None] * t[None] + ph[:, None])).sum(0)
        return v / max(1e-6, float(np.abs(v).max()))

    t = np.arange(n) / fps
    px, py, pr, ps = path(t), path(t), path(t), path(t)
    w, h = size
    out = np.empty((n, 2, 3))
    for i in range(n):
        a = math.radians(roll_deg * pr[i])
        s = scale * (1.0 + zoom * ps[i])
        c, sn = s * math.cos(a), s * math.sin(a)
        r = np.array([[c, sn], [-sn, c]])
        dst = np.array([w / 2 + shift_px * px[i], h / 2 + shift_px * py[i]])
        out[i, :, :2] = r
        out[i, :, 2] = dst - r @ np.asarray(HOPPER_FACE)
    return out


def render_clip(matrices: np.ndarray, size: tuple[int, int] = FRAME_SIZE, noise_std: float = 2.0, seed: int = 0,
                crf: int = 18) -> np.ndarray:
    """Warp the portrait by each matrix (border: blurred edge colours), add camera noise, round-trip through
    H.264 (yuv420p, PyAV, in memory). → decoded frames [T, H, W, 3] uint8."""
    import av

    src = grace_hopper()
    pad = 256
    canvas = cv2.GaussianBlur(cv2.copyMakeBorder(src, pad, pad, pad, pad, cv2.BORDER_REPLICATE), (0, 0), 24)
    canvas[pad:-pad, pad:-pad] = src
    rng = np.random.default_rng(seed)
    w, h = size
    frames = []
    for m in matrices:
        mp = np.asarray(m, np.float64).copy()
        mp[:, 2] -= mp[:, :2] @ np.array([pad, pad], np.float64)  # canvas px → frame px
        f = cv2.warpAffine(canvas, mp, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        if noise_std > 0:
            f = np.clip(f + rng.normal(0.0, noise_std, f.shape), 0, 255).astype(np.uint8)
        frames.append(f)
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        st = out.add_stream("libx264", rate=30)
        st.width, st.height, st.pix_fmt = w, h, "yuv420p"
        st.options = {"crf": str(crf), "preset": "ultrafast"}
        for f in frames:
            for pkt in st.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(pkt)
        for pkt in st.encode():
            out.mux(pkt)
    buf.seek(0)
    with av.open(buf, "r") as inp:
        dec = [fr.to_ndarray(format="rgb24") for fr in inp.decode(video=0)]
    assert len(dec) == len(frames), (len(dec), len(frames))
    return np.stack(dec)


# -------------------------------------------------------------------------------------- tracking and encoding


@dataclass
class Prepared:
    """The clip after tracking, alignment and encoding (everything the composite modes share)."""

    frames: np.ndarray  # [T, H, W, 3] uint8 decoded input frames
    matrices: np.ndarray  # [T, 2, 3] portrait px → frame px (ground-truth motion)
    landmarks: np.ndarray  # [T, 468, 3] tracked landmarks, frame px
    quads: np.ndarray  # [T, 4, 2]
    to_frame: np.ndarray  # [T, 2, 3] crop px → frame px
    crops: torch.Tensor  # [T, 3, S, S] in [-1, 1]
    ws: torch.Tensor  # [T, num_ws, w_dim] unedited codes (key frames + reuse, like the pipeline)


def prepare(bundle: Any, frames: np.ndarray, matrices: np.ndarray) -> Prepared:
    """Track (FaceTracker, live settings), align and encode every frame like FrameProcessor does."""
    from realtime.align import align_crop
    from realtime.engines import TorchEngine
    from realtime.frames import Frame
    from realtime.pipeline import FrameProcessor, StreamState
    from realtime.tracking import FaceTracker

    eng = TorchEngine(bundle, "cpu")
    proc = FrameProcessor(eng)
    state = StreamState()
    lms, quads, tfs, crops, wss = [], [], [], [], []
    with FaceTracker() as tracker:
        for i, img in enumerate(frames):
            tr = tracker.track(Frame(image=img, index=i, pts=i, time_base=Fraction(1, 30)))
            if not tr.has_face:
                raise RuntimeError(f"no face tracked in frame {i}")
            c = align_crop(img, tr.quad, eng.crop_size)
            crop = torch.from_numpy(c.image).permute(2, 0, 1)[None]
            ws, _ = proc.encode(crop, state)
            lms.append(tr.landmarks)
            quads.append(tr.quad)
            tfs.append(c.to_frame)
            crops.append(crop[0])
            wss.append(ws[0])
    return Prepared(frames, matrices, np.stack(lms), np.stack(quads), np.stack(tfs), torch.stack(crops),
                    torch.stack(wss))


# ------------------------------------------------------------------------------------------------ composites


def face_masks(prep: Prepared, crop_size: int) -> np.ndarray:
    """Crop-space face masks [T, N, N] (realtime.composite.face_mask of each frame's tracked landmarks)."""
    from realtime.composite import face_mask, landmarks_to_crop

    return np.stack([face_mask(landmarks_to_crop(lm, tf), crop_size) for lm, tf in zip(prep.landmarks, prep.to_frame,
                                                                                       strict=True)])


@torch.no_grad()
def renders(bundle: Any, stack: Any, prep: Prepared, strengths: dict[str, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """(reconstructions, edited renders), each [T, 3, R, R] in [-1, 1]: one generator batch of two per frame,
    with the edits applied per frame with the frame's EditContext (as FrameProcessor.process)."""
    from models.editing import EditContext

    g = bundle.generator
    stack.set_strengths(strengths, reset=True)
    recs, eds = [], []
    for t in range(len(prep.ws)):
        ws = prep.ws[t:t + 1]
        ctx = EditContext(landmarks=prep.landmarks[t], to_frame=prep.to_frame[t], crop_size=bundle.crop_size)
        we, sd = stack.apply(ws, context=ctx)
        if sd is not None:
            sd = {k: torch.cat([torch.zeros_like(v), v]) for k, v in sd.items()}
        img = g.synthesis(torch.cat([ws, we]), noise_mode="const", style_deltas=sd).clamp(-1, 1)
        recs.append(img[0])
        eds.append(img[1])
    return torch.stack(recs), torch.stack(eds)


def regenerate(prep: Prepared, faces: torch.Tensor, crop_size: int) -> np.ndarray:
    """The current path: realtime.composite.Compositor pastes the generator's face. → [T, H, W, 3] uint8."""
    from realtime.composite import Compositor
    from realtime.frames import Crop, Frame, Track
    from realtime.pipeline import rescale_affine

    comp = Compositor()
    r = faces.shape[-1]

    def one(t: int, index: int) -> np.ndarray:
        tf = prep.to_frame[t] if r == crop_size else rescale_affine(prep.to_frame[t], crop_size / r)
        crop = Crop(image=prep.crops[t], to_frame=tf, size=r)
        track = Track(landmarks=prep.landmarks[t], score=1.0, quad=prep.quads[t])
        frame = Frame(image=prep.frames[t], index=index, pts=index, time_base=Fraction(1, 30))
        return comp.composite(frame, track, crop, faces[t]).image

    for k in range(-20, 0):  # the compositor fades a new face in: start the clip with it fully in
        one(0, k)
    return np.stack([one(t, t) for t in range(len(prep.frames))])


def transfer(prep: Prepared, recs: torch.Tensor, eds: torch.Tensor, masks: np.ndarray, crop_size: int,
             config: Any = None, plan: Any = None, mesh: Any = None) -> tuple[np.ndarray, list[float]]:
    """The transfer path over the clip → (frames [T, H, W, 3] uint8, ms of apply() per frame)."""
    from realtime.transfer import EditTransfer

    tr = EditTransfer(config, mesh=mesh)
    out, ms = [], []
    for t, img in enumerate(prep.frames):
        t0 = time.perf_counter()
        o = tr.apply(img, prep.to_frame[t], crop_size, prep.landmarks[t], recs[t], eds[t], masks[t], plan=plan)
        ms.append((time.perf_counter() - t0) * 1e3)
        out.append(o)
    return np.stack(out), ms


# --------------------------------------------------------------------------------------------------- measures


def detect(frames: np.ndarray) -> np.ndarray:
    """MediaPipe runtime landmarks (static image mode) per frame → [T, 468, 3] (NaN where no face)."""
    from training.synthetic import detect_landmarks

    out = np.full((len(frames), 468, 3), np.nan, np.float32)
    for t, lm in enumerate(detect_landmarks(list(frames))):
        if lm is not None:
            out[t] = lm
    return out


def head_rotation(lm: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(yaw, pitch) in degrees of the 3-D mesh ``lm`` relative to ``ref`` ([468, 3] each; x right, y down,
    z away): Kabsch rotation after removing translation and scale. yaw > 0: nose towards image right;
    pitch > 0: nose up."""
    a = lm - lm.mean(0)
    b = ref - ref.mean(0)
    a /= np.linalg.norm(a)
    b /= np.linalg.norm(b)
    u, _, vt = np.linalg.svd(b.T @ a)
    d = np.sign(np.linalg.det(u @ vt))
    rot = (u @ np.diag([1.0, 1.0, d]) @ vt).T  # a ≈ b @ rot.T
    # signs checked on a synthetic rotation of a real mesh: nose to image right → yaw > 0, nose up → pitch > 0
    yaw = math.degrees(math.atan2(rot[2, 0], rot[0, 0]))
    pitch = math.degrees(math.atan2(-rot[2, 1], rot[1, 1]))
    return yaw, pitch


def measures(lm: np.ndarray) -> dict[str, np.ndarray]:
    """Per-frame measures [T] of landmarks [T, 468, 3]: training.directions.face_measures plus mouth-corner
    distance (``mouth_width``) and corner lift (``corner_lift``) in IOD."""
    from training.directions import EYE_L, EYE_R, face_measures

    t = torch.as_tensor(np.nan_to_num(lm), dtype=torch.float32)
    m = {k: v.numpy().astype(np.float64) for k, v in face_measures(t).items()}
    xy = np.asarray(lm[..., :2], np.float64)
    iod = np.linalg.norm(xy[:, list(EYE_R)].mean(1) - xy[:, list(EYE_L)].mean(1), axis=-1)
    m["mouth_width"] = np.linalg.norm(xy[:, 291] - xy[:, 61], axis=-1) / iod
    m["corner_lift"] = (xy[:, [0, 17]].mean(1)[:, 1] - xy[:, [61, 291]].mean(1)[:, 1]) / iod
    bad = np.isnan(lm).any(axis=(1, 2))
    for v in m.values():
        v[bad] = np.nan
    return m


def _poly(shape: tuple[int, int], pts: np.ndarray, grow: float = 1.0) -> np.ndarray:
    c = pts.mean(0)
    p = c + (pts - c) * grow
    m = np.zeros(shape, np.uint8)
    cv2.fillPoly(m, [np.round(p * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    return m.astype(bool)


def regions(lm: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """Frame-space regions [H, W] bool from one frame's landmarks [468, ≥2] and face mask [H, W] float:
    face (mask > 0.5), mouth, lower (face below the nose tip, across the eye line's normal: mouth, chin,
    lower cheeks), eyes, brows, upper (face above the lower lids: eyes, brows, forehead), skin (face minus
    eyes, brows, mouth), hair (head outline around the face oval, above the eyes, outside the face)."""
    from training.directions import BROW_L, BROW_R, EYE_L, EYE_R, FACE_OVAL, MOUTH_OUTER

    xy = np.asarray(lm[:, :2], np.float64)
    shape = mask.shape
    face = mask > 0.5
    mouth = _poly(shape, xy[list(MOUTH_OUTER)], 1.25)
    eyes = _poly(shape, xy[list(EYE_L)], 2.5) | _poly(shape, xy[list(EYE_R)], 2.5)  # eyes, lids, around
    brows = _poly(shape, xy[list(BROW_L)], 1.6) | _poly(shape, xy[list(BROW_R)], 1.6)
    el, er = xy[list(EYE_L)].mean(0), xy[list(EYE_R)].mean(0)
    right = (er - el) / np.linalg.norm(er - el)
    down = np.array([-right[1], right[0]])
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]]
    depth = (xs - xy[1, 0]) * down[0] + (ys - xy[1, 1]) * down[1]  # signed distance below the nose tip
    lower = face & (depth > 0) | mouth
    lids = float(((xy[[145, 374]] - xy[1]) @ down).mean())  # depth of the lower lids (< 0: above the nose tip)
    upper = face & (depth < lids) | eyes | brows
    oval = _poly(shape, xy[list(FACE_OVAL)])
    head = _poly(shape, xy[list(FACE_OVAL)], 1.35)
    eye_depth = ((el + er) / 2 - xy[1]) @ down
    hair = head & ~oval & ~face & (depth < eye_depth)
    skin = face & ~mouth & ~eyes & ~brows
    return {"face": face, "mouth": mouth, "lower": lower, "eyes": eyes, "brows": brows, "eyes_brows": eyes | brows,
            "upper": upper, "skin": skin, "hair": hair}


# edit → (what its effect is measured by, the region it may change; None: the whole face)
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
    "keep_mouth": ("smile", "lower"),
    "random_identity": ("color", None),
    "mouth_style": ("color", "mouth"),
    "skin_style": ("color", "skin"),
    "hair_style": ("color", "hair"),
}


def frame_masks(prep: Prepared, masks: np.ndarray) -> np.ndarray:
    """Crop masks [T, N, N] → frame masks [T, H, W] float32 through each frame's affine."""
    h, w = prep.frames.shape[1:3]
    out = np.empty((len(masks), h, w), np.float32)
    for t, (m, tf) in enumerate(zip(masks, prep.to_frame, strict=True)):
        out[t] = cv2.warpAffine(m.astype(np.float32), invert_affine_np(tf), (w, h),
                                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    return out


def invert_affine_np(m: np.ndarray) -> np.ndarray:
    a = np.linalg.inv(np.asarray(m, np.float64)[:, :2])
    return np.concatenate([a, (-a @ np.asarray(m, np.float64)[:, 2])[:, None]], 1)


def _psnr(a: np.ndarray, b: np.ndarray, sel: np.ndarray) -> float:
    if not sel.any():
        return math.nan
    d = a[sel].astype(np.float64) - b[sel].astype(np.float64)
    mse = float((d**2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def _chroma(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(img, cv2.COLOR_RGB2YCrCb)[..., 1:].astype(np.float32)


def stabilised(frames: np.ndarray, matrices: np.ndarray, box: tuple[int, int, int, int] = (146, 100, 386, 380)
               ) -> torch.Tensor:
    """Undo the clip's known motion: each frame back in portrait px, cut to the face box (x0, y0, x1, y1).
    → [T, 3, h, w] float in [0, 1] (TC then measures jitter only)."""
    x0, y0, x1, y1 = box
    out = []
    for f, m in zip(frames, matrices, strict=True):
        mm = np.asarray(m, np.float64).copy()
        mm[:, 2] += mm[:, :2] @ np.array([x0, y0], np.float64)  # box px → frame px
        out.append(cv2.warpAffine(f, mm, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255.0


def score(prep: Prepared, out: np.ndarray, lm_in: np.ndarray, lm_out: np.ndarray, fmasks: np.ndarray, edit: str,
          regs: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """Effect, off-target and temporal numbers of one output clip against the input clip."""
    from benchmarks.metrics import temporal_consistency

    what, region = EDIT_EFFECTS.get(edit, ("smile", None))
    mi, mo = measures(lm_in), measures(lm_out)
    res: dict[str, float] = {}
    for k in ("mouth_width", "corner_lift", "smile", "mouth_open", "eyes_open", "brow_raise", "yaw", "pitch"):
        res["d_" + k] = float(np.nanmean(mo[k] - mi[k]))
    rot = np.array([head_rotation(o, i) if not (np.isnan(o).any() or np.isnan(i).any()) else (np.nan, np.nan)
                    for o, i in zip(lm_out, lm_in, strict=True)])
    res["d_yaw_deg"], res["d_pitch_deg"] = float(np.nanmean(rot[:, 0])), float(np.nanmean(rot[:, 1]))
    # pixels
    off_p, off_c, eb_p, mouth_p, face_p, in_col, out_col = [], [], [], [], [], [], []
    for t in range(len(out)):
        rg = regs[t]
        face = rg["face"]
        a, b = out[t], prep.frames[t]
        inside = rg[region] if region is not None else face
        off = face & ~inside
        if region == "hair":
            off = face
        off_p.append(_psnr(a, b, off))
        dc = np.abs(_chroma(a) - _chroma(b)).mean(-1)
        off_c.append(float(dc[off].mean()) if off.any() else math.nan)
        eb_p.append(_psnr(a, b, rg["eyes_brows"]))
        mouth_p.append(_psnr(a, b, rg["mouth"]))
        face_p.append(_psnr(a, b, face))
        drgb = np.abs(a.astype(np.float32) - b.astype(np.float32)).mean(-1)
        in_col.append(float(drgb[inside].mean()) if inside.any() else math.nan)
        out_col.append(float(drgb[off].mean()) if off.any() else math.nan)

    def fin(v: list[float]) -> float:
        a = np.asarray(v, np.float64)
        a = a[np.isfinite(a)]
        return float(np.mean(a)) if a.size else math.inf

    res.update({"psnr_off_target": fin(off_p), "chroma_off_target": fin(off_c), "psnr_eyes_brows": fin(eb_p),
                "psnr_mouth": fin(mouth_p), "psnr_face": fin(face_p), "color_in_region": fin(in_col),
                "color_outside_region": fin(out_col)})
    tc_in = temporal_consistency(stabilised(prep.frames, prep.matrices), data_range=1.0)
    tc_out = temporal_consistency(stabilised(out, prep.matrices), data_range=1.0)
    res.update({"tc_input": tc_in, "tc_output": tc_out, "tc_ratio": tc_out / tc_in})
    res["effect_measure"] = what  # type: ignore[assignment]
    return res


# ------------------------------------------------------------------------------------------------- the run

# effect measure → (key in score(), the direction the edit's name promises: +1 / −1, 0: none promised)
EFFECT_KEY = {"mouth_width": ("d_mouth_width", 1), "mouth_open": ("d_mouth_open", 1), "eyes_open": ("d_eyes_open", 1),
              "brow_raise": ("d_brow_raise", 1), "yaw_deg": ("d_yaw_deg", 1), "pitch_deg": ("d_pitch_deg", 1),
              "smile": ("d_smile", 0), "color": ("color_in_region", 1)}


def strengths_of(spec: Any) -> list[float]:
    """Mid and end of an edit's range on its positive side (the side the name promises)."""
    lo, hi = spec.range
    end = hi if hi > 0 else lo
    return [round(end / 2, 3), float(end)]


def input_noise(lm_in: np.ndarray) -> dict[str, float]:
    """Frame-to-frame spread (std over the unedited input clip) of every effect measure."""
    m = measures(lm_in)
    out = {k: float(np.nanstd(v)) for k, v in m.items()}
    rot = np.array([head_rotation(lm_in[t].astype(np.float64), lm_in[0].astype(np.float64))
                    for t in range(len(lm_in)) if not np.isnan(lm_in[t]).any()])
    out["yaw_deg"], out["pitch_deg"] = float(rot[:, 0].std()), float(rot[:, 1].std())
    return out


def verdict(edit: str, row: dict[str, Any], noise: dict[str, float]) -> dict[str, Any]:
    """The issue's targets for one measured output."""
    what, region = EDIT_EFFECTS.get(edit, ("smile", None))
    key, sign = EFFECT_KEY[what]
    v: dict[str, Any] = {"effect": row[key]}
    if what == "color":
        v["effect_ok"] = row["color_in_region"] >= 4.0 and (region is None or row["color_outside_region"] <= 2.0)
    else:
        v["effect_in_noise_std"] = row[key] / max(noise[what], 1e-9)
        v["effect_ok"] = sign != 0 and sign * row[key] >= 3.0 * noise[what]
    off_ok = row["psnr_off_target"] >= 30.0 and row["chroma_off_target"] <= 2.0
    v["off_target_ok"] = None if region is None else off_ok
    v["tc_ok"] = row["tc_ratio"] <= 1.1
    return v


def _label(img: np.ndarray, text: str) -> np.ndarray:
    out = np.ascontiguousarray(img.copy())
    cv2.rectangle(out, (0, 0), (out.shape[1], 22), (0, 0, 0), -1)
    cv2.putText(out, text, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def contact_sheet(path: Path, columns: dict[str, list[np.ndarray]], row_names: list[str], box: tuple[int, int, int, int]
                  ) -> None:
    """Labelled grid: one column per method, one row per (strength, frame); each cell the face box of a frame."""
    x0, y0, x1, y1 = box
    rows = []
    for i, rname in enumerate(row_names):
        cells = [_label(col[i][y0:y1, x0:x1], f"{name} {rname}") for name, col in columns.items()]
        rows.append(np.concatenate(cells, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(rows, 0), cv2.COLOR_RGB2BGR))


def pipeline_cost(bundle: Any, prep: Prepared, stack: Any, edit: dict[str, float], backend: str, config: Any
                  ) -> dict[str, float]:
    """ms per frame of the device path at the clip's resolution, three ways, interleaved twice (the machine is
    shared): ``regenerate`` — align → encode → edit → synthesize 1 → Compositor; ``transfer`` — align → encode →
    edit → synthesize a batch of 2 → face_mask + EditTransfer.apply, every frame; ``transfer_lazy`` — the same,
    but encoding and the generator run only on frames EditTransfer.needs_renders() asks for (geometry-only
    edits: every ``mesh_every`` frames); the other frames only compute the crop affine, the mask and the warp."""
    from models.editing import EditContext
    from realtime.align import align_crop, crop_affine
    from realtime.composite import Compositor, face_mask, landmarks_to_crop
    from realtime.engines import make_engine
    from realtime.frames import Crop, Frame, Track
    from realtime.pipeline import FrameProcessor, StreamState
    from realtime.transfer import EditTransfer, plan_edits

    eng = make_engine(bundle, backend, "cpu", threads=1)
    stack.set_strengths(edit, reset=True)
    modes = ("regenerate", "transfer", "transfer_lazy")
    times: dict[str, list[float]] = {k: [] for k in (*modes, "regenerate_composite", "transfer_apply")}
    for mode in modes * 2:
        proc, state = FrameProcessor(eng), StreamState()
        comp, tr = Compositor(), EditTransfer(config)
        for t, img in enumerate(prep.frames):
            t0 = time.perf_counter()
            plan = plan_edits(stack.specs, stack.strengths(), config)
            if mode == "transfer_lazy" and not tr.needs_renders(plan):
                to_frame = crop_affine(prep.quads[t], eng.crop_size)
                pair = None
            else:
                c = align_crop(img, prep.quads[t], eng.crop_size)
                to_frame = c.to_frame
                crop = torch.from_numpy(c.image).permute(2, 0, 1)[None]
                ws, _ = proc.encode(crop, state)
                ctx = EditContext(landmarks=prep.landmarks[t], to_frame=to_frame, crop_size=eng.crop_size)
                we, sd = stack.apply(ws, context=ctx)
                if mode == "regenerate":
                    fake = eng.synthesize(we, sd)
                    t1 = time.perf_counter()
                    comp.composite(Frame(image=img, index=t, pts=t, time_base=Fraction(1, 30)),
                                   Track(landmarks=prep.landmarks[t], score=1.0, quad=prep.quads[t]),
                                   Crop(image=c.image, to_frame=to_frame, size=eng.crop_size), fake[0])
                    times["regenerate_composite"].append((time.perf_counter() - t1) * 1e3)
                    times[mode].append((time.perf_counter() - t0) * 1e3)
                    continue
                sd2 = {k: torch.cat([torch.zeros_like(v), v]) for k, v in sd.items()} if sd else None
                pair = eng.synthesize(torch.cat([ws, we]), sd2)
            t1 = time.perf_counter()
            mask = face_mask(landmarks_to_crop(prep.landmarks[t], to_frame), eng.crop_size)
            tr.apply(img, to_frame, eng.crop_size, prep.landmarks[t], None if pair is None else pair[0],
                     None if pair is None else pair[1], mask, plan=plan)
            if mode == "transfer":
                times["transfer_apply"].append((time.perf_counter() - t1) * 1e3)
            times[mode].append((time.perf_counter() - t0) * 1e3)
    out: dict[str, Any] = {k + "_ms": float(np.mean(v)) for k, v in times.items()}  # means: the mesh is periodic
    out.update({k + "_ms_max": float(np.max(times[k])) for k in modes})
    out["transfer_extra_ratio"] = out["transfer_ms"] / out["regenerate_ms"] - 1.0
    out["transfer_lazy_extra_ratio"] = out["transfer_lazy_ms"] / out["regenerate_ms"] - 1.0
    out["backend"] = getattr(eng, "name", backend)
    out["edit"] = edit
    return out


def candidate(spec: str, over: dict[str, Any]) -> Any:
    """TransferConfig from "GEOMETRY[+FIELD=VALUE…]" plus overrides (values parsed as Python literals)."""
    import ast
    import dataclasses

    from realtime.transfer import TransferConfig

    geometry, *pairs = spec.split("+")
    fields = dict(over)
    for pair in pairs:
        k, _, v = pair.partition("=")
        fields[k] = ast.literal_eval(v)
    return dataclasses.replace(TransferConfig(geometry=geometry), **fields)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", default="bundles/default")
    p.add_argument("--frames", type=int, default=48, help="clip length (30 fps)")
    p.add_argument("--seed", type=int, default=0, help="motion and noise seed of the clip")
    p.add_argument("--edits", default="",
                   help="comma-separated edit names (default: every edit of the bundle; none: only the no-edit "
                        "check and the cost)")
    p.add_argument("--candidates", default="landmarks,flow",
                   help="transfer candidates to compare: GEOMETRY[+FIELD=VALUE…] (TransferConfig fields), e.g. "
                        "landmarks+regions=False+gain=1.5 (the first also runs the no-edit check)")
    p.add_argument("--gain", type=float, default=None, help="TransferConfig.gain for every candidate")
    p.add_argument("--mesh-every", type=int, default=None, help="TransferConfig.mesh_every for every candidate")
    p.add_argument("--backend", default="onnx", help="engine of the cost measurement (torch or onnx)")
    p.add_argument("--no-cost", action="store_true", help="skip the ms/frame measurement")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("/work/scratch/transfer"), help="folder for JSON and PNGs")


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from benchmarks.provenance import command_line, provenance, write_result
    from models.bundle import load_bundle
    from models.editing import EditStack
    from realtime.transfer import RenderMesh, plan_edits

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    t_start = time.time()
    bundle = load_bundle(args.bundle)
    stack = EditStack.from_bundle(bundle)
    n = bundle.crop_size
    matrices = webcam_motion(args.frames, seed=args.seed)
    frames = render_clip(matrices, seed=args.seed)
    prep = prepare(bundle, frames, matrices)
    masks = face_masks(prep, n)
    fm = frame_masks(prep, masks)
    lm_in = detect(prep.frames)
    regs = [regions(prep.landmarks[t], fm[t]) for t in range(len(frames))]
    noise = input_noise(lm_in)
    over = {k: v for k, v in (("gain", args.gain), ("mesh_every", args.mesh_every)) if v is not None}
    configs = {c: candidate(c, over) for c in args.candidates.split(",") if c}
    mesh = RenderMesh()
    face_box = (170, 60, 470, 400)
    # no edit: regenerate replaces the face, transfer leaves it alone (the caller skips the generator; apply() on
    # identical renders returns the frame itself)
    recs, eds = renders(bundle, stack, prep, {})
    regen0 = regenerate(prep, recs, n)
    first = next(iter(configs.values()))
    tr0, _ = transfer(prep, recs, recs, masks, n, first, plan_edits(stack.specs, {}, first), mesh)
    no_edit = {"regenerate_face_psnr": float(np.mean([_psnr(regen0[t], frames[t], regs[t]["face"])
                                                       for t in range(len(frames))])),
               "transfer_bit_exact": bool(np.array_equal(tr0, frames))}
    print("no edit:", no_edit, flush=True)
    names = [] if args.edits == "none" else [e for e in args.edits.split(",") if e] or stack.names
    results: dict[str, Any] = {}
    for name in names:
        spec = stack.specs[name]
        results[name] = {}
        sheet: dict[str, list[np.ndarray]] = {"original": [], "regenerate": []}
        for c in configs:
            sheet[f"transfer ({c})"] = []
        row_names = []
        for k in strengths_of(spec):
            setting = {name: k} if spec.kind != "keep_mouth" else {"smile": 1.5, name: k}
            recs, eds = renders(bundle, stack, prep, setting)
            outs = {"regenerate": regenerate(prep, eds, n)}
            ms: dict[str, list[float]] = {}
            for c, cfg in configs.items():
                o, t_ms = transfer(prep, recs, eds, masks, n, cfg, plan_edits(stack.specs, stack.strengths(), cfg),
                                   mesh)
                outs[f"transfer ({c})"] = o
                ms[c] = t_ms
            row = {}
            for mname, o in outs.items():
                sc = score(prep, o, lm_in, detect(o), fm, name, regs)
                sc.update(verdict(name, sc, noise))
                c = mname[len("transfer ("):-1] if mname.startswith("transfer") else None
                if c is not None:
                    sc["apply_ms"] = float(np.mean(ms[c]))  # the mean: the mesh runs only every few frames
                    sc["apply_ms_p50"] = float(np.median(ms[c]))
                    sc["apply_ms_max"] = float(np.max(ms[c]))
                row[mname] = sc
            results[name][str(k)] = {"setting": setting, **row}
            mid = len(frames) // 2
            sheet["original"].append(frames[mid])
            for mname, o in outs.items():
                sheet[mname].append(o[mid])
            row_names.append(f"{k:g}")
            short = {m: {kk: (round(v, 4) if isinstance(v, float) else v) for kk, v in r.items()
                         if kk in ("effect", "effect_ok", "psnr_off_target", "chroma_off_target", "psnr_eyes_brows",
                                   "tc_ratio", "apply_ms")} for m, r in row.items()}
            print(name, setting, json.dumps(short), flush=True)
        contact_sheet(args.out / f"transfer_{name}.png", sheet, row_names, face_box)
    cost = None
    if not args.no_cost:
        cost = pipeline_cost(bundle, prep, stack, {"smile": 1.5}, args.backend, first)
        print("cost:", cost, flush=True)
    out = {"bundle": str(args.bundle), "frames": len(frames), "frame_size": list(FRAME_SIZE), "crop_size": n,
           "candidates": {c: dataclasses.asdict(cfg) for c, cfg in configs.items()}, "input_noise_std": noise,
           "no_edit": no_edit, "edits": results, "cost": cost, "seconds": round(time.time() - t_start, 1),
           "provenance": {**provenance(), "command": command_line()}}
    write_result(args.out / "bench_transfer.json", out)
    write_result(args.out / "bench_transfer.md", markdown(out))
    print("wrote", args.out / "bench_transfer.json", "and", args.out / "bench_transfer.md")
    return 0


def _f(v: Any, nd: int = 1) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isinf(v):
            return "∞"
        if math.isnan(v):
            return "n/a"
        return f"{v:.{nd}f}"
    return str(v)


UNITS = {"mouth_width": "IOD", "mouth_open": "IOD", "eyes_open": "lid/eye width", "brow_raise": "IOD",
         "yaw_deg": "°", "pitch_deg": "°", "smile": "smile measure", "color": "levels in region"}


def markdown(out: dict[str, Any]) -> str:
    """The per-edit table of a result (bench_transfer.json)."""
    lines = ["| edit | strength | method | effect | × input std | off-target PSNR dB | off-target Δchroma | "
             "eyes+brows PSNR dB | colour in / out of region | TC out/in | apply ms (mean / max) | targets |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, by_k in out["edits"].items():
        what = EDIT_EFFECTS.get(name, ("smile", None))[0]
        for row in by_k.values():
            for method, r in row.items():
                if method == "setting":
                    continue
                ok = [("effect", r.get("effect_ok")), ("off-target", r.get("off_target_ok")), ("TC", r.get("tc_ok"))]
                flags = ", ".join(f"{n} {'✓' if v else '✗'}" for n, v in ok if v is not None)
                nd = 1 if what in ("yaw_deg", "pitch_deg", "color") else 3
                ms = f"{_f(r.get('apply_ms'))} / {_f(r.get('apply_ms_max'))}" if "apply_ms" in r else "–"
                setting = ", ".join(f"{a}={b:g}" for a, b in row["setting"].items())
                lines.append(
                    f"| {name} | {setting} | {method} | {_f(r.get('effect'), nd)} {UNITS.get(what, '')} | "
                    f"{_f(r.get('effect_in_noise_std'))} | {_f(r['psnr_off_target'])} | "
                    f"{_f(r['chroma_off_target'], 2)} | "
                    f"{_f(r['psnr_eyes_brows'])} | {_f(r['color_in_region'])} / {_f(r['color_outside_region'])} | "
                    f"{_f(r['tc_ratio'], 2)} | {ms} | {flags} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
