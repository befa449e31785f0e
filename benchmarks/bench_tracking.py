"""Tracking, alignment and paste-back: speed and steadiness on known-motion astronaut clips. Prints JSON.

    .venv/bin/python -m benchmarks.bench_tracking [--frames 90] [--out results.json]

Figures (see docs/tracking.md):
  tracking ms/frame at 640×480 and 1920×1080 (steady state, plus the detection frame), with and without
  stabilisation; align and paste-back ms; jitter reduction on a still face (simulated detector noise, and
  real MediaPipe); lag in frames on a moving face; alignment error in px at crop size.
Ground truth comes from realtime/io/stills.py (known similarity motion, clips written and decoded with PyAV);
the jitter/lag/alignment metrics are benchmarks/metrics.py.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import cv2
import numpy as np
import torch

from benchmarks.metrics import alignment_error, jitter, lag_frames
from realtime.frames import Frame
from realtime.io import stills
from realtime.vision.align import align_crop, align_crops_torch, quad_from_landmarks
from realtime.vision.composite import face_mask, paste_back, paste_back_torch
from realtime.vision.geometry import landmarks_to_crop
from realtime.vision.mediapipe_runtime import import_mediapipe, install_native_stderr_filter
from realtime.vision.tracking import FaceTracker, TrackerConfig, track_sequence


def _provenance() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "device": "cpu",
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "mediapipe": version("mediapipe"),
        "torch": torch.__version__,
        "load_average_1min_at_start": round(os.getloadavg()[0], 2),  # the 2 cores are shared
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _timed(fn, repeat: int) -> list[float]:
    """Wall-clock ms of each of ``repeat`` calls."""
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def _stats(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"mean_ms": round(float(a.mean()), 2), "median_ms": round(float(np.median(a)), 2),
            "p95_ms": round(float(np.percentile(a, 95)), 2), "n": int(a.size)}


def bench_tracking_speed(frames: int) -> dict:
    """Per-frame tracker cost on a moving face; the first frame (full-frame detection) reported apart."""
    out = {}
    warm = stills.render(stills.moving_motion(20), noise_std=2.0)  # process-wide start-up (XNNPACK, caches)
    with FaceTracker() as tr:
        for i, img in enumerate(warm):
            tr.track(Frame(img, i))
    for name, size, scale in (("640x480", (640, 480), 1.1), ("1920x1080", (1920, 1080), 2.4)):
        mats = stills.moving_motion(frames, size=size, speed_px=3.0 * size[0] / 640, scale=scale)
        imgs = stills.render(mats, size=size, noise_std=2.0)
        row = {}
        for label, cfg in (("stabilised", TrackerConfig()), ("raw_mesh_only", TrackerConfig(lk=False,
                                                                                             smoothing="none"))):
            with FaceTracker(cfg) as tr:
                ms, cpu, found = [], [], 0
                for i, img in enumerate(imgs):
                    t0, c0 = time.perf_counter(), time.process_time()
                    tk = tr.track(Frame(img, i))
                    ms.append((time.perf_counter() - t0) * 1000.0)
                    cpu.append((time.process_time() - c0) * 1000.0)
                    found += tk.has_face
            # wall time is what a stream sees; CPU time (all threads of this process) is less sensitive to
            # other processes on the shared cores
            row[label] = {"steady": _stats(ms[1:]), "steady_cpu_time": _stats(cpu[1:]),
                          "first_frame_ms": round(ms[0], 2), "faces_found": f"{found}/{len(imgs)}"}
        # the detector alone (what a lost face costs per frame)
        mp = import_mediapipe()
        with mp.solutions.face_detection.FaceDetection(model_selection=1) as det:
            det.process(imgs[0])
            row["full_frame_detector"] = _stats(_timed(lambda im=imgs[0], d=det: d.process(im), 20))
        row["quad_side_px"] = round(float(np.linalg.norm(stills.true_quads(mats[:1])[0, 3]
                                                         - stills.true_quads(mats[:1])[0, 0])), 1)
        out[name] = row
    return out


def _align_paste_row(frame: np.ndarray, lm: np.ndarray, n: int, repeat: int) -> dict:
    q = quad_from_landmarks(lm)
    crop = align_crop(frame, q, n)
    lm_c = landmarks_to_crop(lm, crop.to_frame)
    mask = face_mask(lm_c, n)
    face = -crop.hwc()  # an "edited" face
    t = torch.from_numpy(frame).permute(2, 0, 1)[None]
    ft = torch.from_numpy(face).permute(2, 0, 1)[None].contiguous()
    mt = torch.from_numpy(mask)[None, None]
    tf = crop.to_frame[None]
    p = functools.partial
    slow = max(3, repeat // 4)
    align_crops_torch(t, q[None], n)  # warm-up
    return {
        "align_cpu": _stats(_timed(p(align_crop, frame, q, n), repeat)),
        "mask": _stats(_timed(p(face_mask, lm_c, n), repeat)),
        "paste_cpu": _stats(_timed(p(paste_back, frame, face, crop.to_frame, mask), repeat)),
        "align_torch_cpu_1thread": _stats(_timed(p(align_crops_torch, t, q[None], n), slow)),
        "paste_torch_cpu_1thread": _stats(_timed(p(paste_back_torch, t, ft, tf, mt), slow)),
    }


def bench_align_paste(repeat: int) -> dict:
    """Align (frame → N×N crop), mask, paste-back (N×N → frame) costs for a face in 640×480 and 1080p."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the torch path is for GPUs; on a shared 2-core CPU OpenMP threads just fight
    out = {}
    try:
        for name, size, scale in (("640x480", (640, 480), 1.1), ("1920x1080", (1920, 1080), 2.4)):
            m = stills.similarity(8.0, scale, size=size)
            frame = stills.render(m[None], size=size, noise_std=2.0)[0]
            lm = stills.true_landmarks(m).astype(np.float32)
            row = {f"N{n}": _align_paste_row(frame, lm, n, repeat) for n in (256, 1024)}
            row["full_frame_copy"] = _stats(_timed(frame.copy, repeat))  # what touching the whole frame costs
            out[name] = row
    finally:
        torch.set_num_threads(threads)
    return out


def _quads(clip: stills.Clip, cfg: TrackerConfig, source=None) -> np.ndarray:
    with FaceTracker(cfg, source) as tr:
        return np.stack([tr.track(f).quad for f in clip.as_frames()]).astype(np.float64)


def bench_steadiness(tmp: Path, frames: int) -> dict:
    raw = TrackerConfig(lk=False, smoothing="none")
    st = stills.make_clip(tmp / "static.mp4", stills.static_motion(frames))
    mv = stills.make_clip(tmp / "moving.mp4", stills.moving_motion(frames))
    out: dict = {"crop_size_px": 256}
    g = stills.true_quads(st.matrices)
    for label, src in (("simulated_noise", lambda: stills.OracleLandmarks(st.matrices)), ("mediapipe", lambda: None)):
        j_raw = jitter(_quads(st, raw, src()), g)
        j_live = jitter(_quads(st, TrackerConfig(), src()), g)
        j_off = jitter(np.stack([t.quad for t in track_sequence(st.as_frames(), source=src())]), g)
        out[f"static_jitter_{label}"] = {
            "raw_px": round(j_raw, 3), "live_px": round(j_live, 3), "offline_px": round(j_off, 3),
            "live_reduction_pct": round(100 * (1 - j_live / j_raw), 1),
            "offline_reduction_pct": round(100 * (1 - j_off / j_raw), 1)}
    g = stills.true_quads(mv.matrices)
    for label, src in (("simulated_noise", lambda: stills.OracleLandmarks(mv.matrices)), ("mediapipe", lambda: None)):
        q_raw = _quads(mv, raw, src())
        q_live = _quads(mv, TrackerConfig(), src())
        q_off = np.stack([t.quad for t in track_sequence(mv.as_frames(), source=src())])
        lr = lag_frames(q_raw, g)
        out[f"moving_{label}"] = {
            "lag_frames_raw": round(lr, 2),
            "lag_frames_added_live": round(lag_frames(q_live, g) - lr, 2),
            "lag_frames_added_offline": round(lag_frames(q_off, g) - lr, 2),
            "jitter_px_raw": round(jitter(q_raw, g), 3),
            "jitter_px_live": round(jitter(q_live, g), 3),
            "jitter_px_offline": round(jitter(q_off, g), 3),
        }
        if label == "mediapipe":
            for name, q in (("raw", q_raw), ("live", q_live), ("offline", q_off)):
                rel = alignment_error(q, g, 256)
                ab = alignment_error(q, g, 256, relative=False)
                out[f"alignment_error_px256_{name}"] = {
                    "motion_mean": round(float(rel.mean()), 2), "motion_max": round(float(rel.max()), 2),
                    "absolute_mean": round(float(ab.mean()), 2), "absolute_max": round(float(ab.max()), 2)}
    out["motion"] = "moving: 4 px/frame pan, 0.4 deg/frame turn, 0.4 %/frame zoom, 640x480, quad side ~190 px"
    return out


def bench_mesh_every(tmp: Path, frames: int, ks: list[int]) -> dict:
    """The face mesh on every k-th frame, LK flow in between (TrackerConfig.mesh_every; `serve` uses 2): tracking
    ms/frame on a moving 640×480 face, and what it costs in steadiness with real MediaPipe — still-face jitter,
    moving-face jitter, added lag and alignment error against the known motion, and the alignment error on a fast
    head swing (stills.swing_motion: up to 27 px/frame), where the flow alone is least trustworthy."""
    st = stills.make_clip(tmp / "static.mp4", stills.static_motion(frames))
    mv = stills.make_clip(tmp / "moving.mp4", stills.moving_motion(frames))
    sw = stills.make_clip(tmp / "swing.mp4", stills.swing_motion(frames))
    g_sw = stills.true_quads(sw.matrices)
    g_st, g_mv = stills.true_quads(st.matrices), stills.true_quads(mv.matrices)
    raw = _quads(mv, TrackerConfig(lk=False, smoothing="none"))
    lag_raw = lag_frames(raw, g_mv)
    out: dict = {}
    for k in ks:
        cfg = TrackerConfig(mesh_every=k)
        with FaceTracker(cfg) as tr:
            ms, cpu = [], []
            for f in mv.as_frames():
                t0, c0 = time.perf_counter(), time.process_time()
                tr.track(f)
                ms.append((time.perf_counter() - t0) * 1000.0)
                cpu.append((time.process_time() - c0) * 1000.0)
        q_mv = _quads(mv, cfg)
        err = alignment_error(q_mv, g_mv, 256)
        err_sw = alignment_error(_quads(sw, cfg), g_sw, 256)
        out[f"mesh_every_{k}"] = {
            "ms_per_frame": _stats(ms[1:]), "cpu_ms_per_frame": _stats(cpu[1:]),
            "static_jitter_px": round(jitter(_quads(st, cfg), g_st), 3),
            "moving_jitter_px": round(jitter(q_mv, g_mv), 3),
            "moving_added_lag_frames": round(lag_frames(q_mv, g_mv) - lag_raw, 2),
            "alignment_error_px256": {"mean": round(float(err.mean()), 2), "max": round(float(err.max()), 2)},
            "swing_alignment_error_px256": {"mean": round(float(err_sw.mean()), 2),
                                            "max": round(float(err_sw.max()), 2)}}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=90, help="frames per clip")
    ap.add_argument("--repeat", type=int, default=40, help="repetitions of each align/paste timing")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    ap.add_argument("--mesh-every", type=int, nargs="+", default=None, metavar="K",
                    help="only compare the face mesh on every K-th frame (LK in between), e.g. 1 2 3")
    args = ap.parse_args(argv)
    cv2.setRNGSeed(0)
    if args.mesh_every:
        with tempfile.TemporaryDirectory() as tmp:
            result = {"provenance": _provenance(),
                      "command": "python -m benchmarks.bench_tracking " + " ".join(argv if argv is not None
                                                                                  else sys.argv[1:]),
                      "mesh_every": bench_mesh_every(Path(tmp), args.frames, args.mesh_every)}
        text = json.dumps(result, indent=2)
        print(text)
        if args.out is not None:
            args.out.write_text(text + "\n")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        result = {
            "provenance": _provenance(),
            "command": "python -m benchmarks.bench_tracking " + " ".join(argv if argv is not None else sys.argv[1:]),
            "tracking": bench_tracking_speed(args.frames),
            "align_paste": bench_align_paste(args.repeat),
            "steadiness": bench_steadiness(Path(tmp), args.frames),
        }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    install_native_stderr_filter()  # MediaPipe's start-up lines, as the CLI does
    raise SystemExit(main())
