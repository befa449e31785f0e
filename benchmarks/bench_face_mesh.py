"""Face mesh: parity of models.face_mesh against MediaPipe's own runtime, and ms per call on this machine.

    python -m benchmarks.bench_face_mesh                         # parity + timing, prints tables
    python -m benchmarks.bench_face_mesh --threads 1 --json docs/bench/face_mesh-cpu.json

Parity, on ``skimage.data.astronaut()``, similarity-warped versions of it and synthetic variations:

* **same tensor**: the identical uint8 192² crop goes through our torch :class:`FaceLandmarks` and through
  MediaPipe's C++ graph (``ImageToTensorCalculator`` at the same size → ``InferenceCalculator`` with XNNPACK →
  raw floats), so the figure is the network port alone. Same for the detector's raw regressors/scores at 128².
* **whole pipeline**: our :class:`FaceMesh` (detector → ROI → crop → landmarks) on the full image against
  ``mediapipe.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=False)``; differences are
  reported in image pixels and rescaled to the 192² crop (× 192 / ROI width); boxes against
  ``mediapipe.solutions.face_detection`` (short range).

:class:`MediaPipeRuntime` is the reference used by tests/test_face_mesh.py too.
"""

from __future__ import annotations

import argparse
import json
import math
from importlib.metadata import version
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from skimage import data

from benchmarks.provenance import command_line, provenance, write_result
from benchmarks.timing import summarise, time_calls
from models.face_mesh import DETECTOR_MODEL, LANDMARK_MODEL, FaceMesh, crop, mediapipe_model_path, roi_from_detection
from realtime.vision.mediapipe_runtime import import_mediapipe, install_native_stderr_filter


class MediaPipeRuntime:
    """MediaPipe's own TFLite runtime (its C++ calculator graph) on raw model inputs, plus its solutions."""

    def __init__(self) -> None:
        self.mp = import_mediapipe("the parity reference")
        from mediapipe.python import packet_creator, packet_getter  # noqa: PLC0415 - optional, heavy
        from mediapipe.python._framework_bindings import calculator_graph, image_frame  # noqa: PLC0415

        self._creator, self._getter = packet_creator, packet_getter
        self._graph_cls, self._fmt = calculator_graph.CalculatorGraph, image_frame.ImageFormat.SRGB

    def raw(self, model_path: Path, image: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
        """uint8 ``[S, S, 3]`` RGB at the model's input size → the model's two raw outputs (flat float32)."""
        s = image.shape[0]
        assert image.dtype == np.uint8 and image.shape == (s, s, 3)
        cfg = f"""
input_stream: "image"
output_stream: "f0"
output_stream: "f1"
node {{ calculator: "ImageToTensorCalculator" input_stream: "IMAGE:image" output_stream: "TENSORS:t"
  options {{ [mediapipe.ImageToTensorCalculatorOptions.ext] {{ output_tensor_width: {s} output_tensor_height: {s}
    output_tensor_float_range {{ min: {lo} max: {hi} }} }} }} }}
node {{ calculator: "InferenceCalculator" input_stream: "TENSORS:t" output_stream: "TENSORS:o"
  options {{ [mediapipe.InferenceCalculatorOptions.ext] {{ model_path: "{model_path}"
    delegate {{ xnnpack {{}} }} }} }} }}
node {{ calculator: "SplitTensorVectorCalculator" input_stream: "o" output_stream: "o0" output_stream: "o1"
  options {{ [mediapipe.SplitVectorCalculatorOptions.ext] {{
    ranges {{ begin: 0 end: 1 }} ranges {{ begin: 1 end: 2 }} }} }} }}
node {{ calculator: "TensorsToFloatsCalculator" input_stream: "TENSORS:o0" output_stream: "FLOATS:f0" }}
node {{ calculator: "TensorsToFloatsCalculator" input_stream: "TENSORS:o1" output_stream: "FLOATS:f1" }}
"""
        g = self._graph_cls(graph_config=cfg)
        out: dict[str, np.ndarray] = {}
        for name in ("f0", "f1"):
            g.observe_output_stream(name, lambda n, p: out.__setitem__(n, np.array(self._getter.get_float_list(p),
                                                                                    np.float32)))
        g.start_run()
        pkt = self._creator.create_image_frame(image_format=self._fmt, data=np.ascontiguousarray(image))
        g.add_packet_to_input_stream("image", pkt.at(0))
        g.close()
        return out["f0"], out["f1"]

    def landmarks_raw(self, crop192: np.ndarray) -> tuple[np.ndarray, float]:
        """uint8 ``[192, 192, 3]`` → (landmarks ``[468, 3]`` crop px, face-presence logit)."""
        lm, flag = self.raw(mediapipe_model_path(LANDMARK_MODEL), crop192, 0.0, 1.0)
        return lm.reshape(468, 3), float(flag[0])

    def detector_raw(self, image128: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 ``[128, 128, 3]`` → (regressors ``[896, 16]``, logits ``[896]``)."""
        reg, cls = self.raw(mediapipe_model_path(DETECTOR_MODEL), image128, -1.0, 1.0)
        return reg.reshape(896, 16), cls

    def face_mesh(self, image: np.ndarray) -> np.ndarray | None:
        """Full image uint8 RGB → landmarks ``[468, 3]`` in image pixels (z × width), or None."""
        h, w = image.shape[:2]
        with self.mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=False,
                                                  max_num_faces=1) as fm:
            r = fm.process(image)
        if not r.multi_face_landmarks:
            return None
        return np.array([[p.x * w, p.y * h, p.z * w] for p in r.multi_face_landmarks[0].landmark], np.float32)

    def detect(self, image: np.ndarray) -> list[tuple[float, np.ndarray, np.ndarray]]:
        """Full image → [(score, box xyxy px, keypoints [6, 2] px)] from the short-range detector."""
        h, w = image.shape[:2]
        with self.mp.solutions.face_detection.FaceDetection(model_selection=0, min_detection_confidence=0.5) as fd:
            r = fd.process(image)
        out = []
        for d in r.detections or []:
            bb = d.location_data.relative_bounding_box
            box = np.array([bb.xmin * w, bb.ymin * h, (bb.xmin + bb.width) * w, (bb.ymin + bb.height) * h])
            kp = np.array([[k.x * w, k.y * h] for k in d.location_data.relative_keypoints])
            out.append((float(d.score[0]), box, kp))
        return out


# ---------------------------------------------------------------------------------------------------------------
# Test images
# ---------------------------------------------------------------------------------------------------------------
def similarity_warp(image: np.ndarray, angle_deg: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    """Rotate/scale about the image centre and shift (pixels), replicate border. uint8 in and out."""
    h, w = image.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle_deg, scale)
    m[:, 2] += shift
    return cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def test_images() -> dict[str, np.ndarray]:
    """astronaut, three similarity warps and synthetic variations (photometric, noise, mirror, non-square)."""
    a = data.astronaut()
    rng = np.random.default_rng(0)
    out = {
        "astronaut": a,
        "warp rot+12 s0.9": similarity_warp(a, 12, 0.9, (20, 10)),
        "warp rot-18 s1.15": similarity_warp(a, -18, 1.15, (-15, 25)),
        "warp rot+5 s0.7": similarity_warp(a, 5, 0.7, (40, -10)),
        "synthetic: low contrast, warm": np.clip(a * np.array([0.8, 0.7, 0.55]) + 30, 0, 255).astype(np.uint8),
        "synthetic: noise σ=12": np.clip(a + rng.normal(0, 12, a.shape), 0, 255).astype(np.uint8),
        "synthetic: mirrored": np.ascontiguousarray(a[:, ::-1]),
        "synthetic: 512x400 (letterboxed)": np.ascontiguousarray(a[10:410]),
        "synthetic: 360x512 (letterboxed)": np.ascontiguousarray(a[:, 60:420]),
    }
    return out


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` → float ``[1, 3, H, W]`` in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float ``[1, 3, H, W]`` in [0, 1] → uint8 ``[H, W, 3]`` (rounded)."""
    return (x[0].permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()


# ---------------------------------------------------------------------------------------------------------------
# Parity
# ---------------------------------------------------------------------------------------------------------------
def parity(ref: MediaPipeRuntime, mesh: Any, images: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Per image: same-tensor landmark/detector differences and whole-pipeline differences (see module doc)."""
    rows = []
    for name, img in images.items():
        row: dict[str, Any] = {"image": name}
        x = to_tensor(img)
        with torch.no_grad():
            lm_ours, score_ours, rect = mesh(x)
            # Same tensor: our own ROI crop, quantised to uint8, into both runtimes.
            c192 = to_uint8(crop(x, rect, 192))
            lm_t, sc_t = mesh.landmarks(to_tensor(c192))
            lm_r, logit_r = ref.landmarks_raw(c192)
            d = np.linalg.norm(lm_t[0, :, :2].numpy() - lm_r[:, :2], axis=1)
            row["same_tensor_mean_px"] = float(d.mean())
            row["same_tensor_max_px"] = float(d.max())
            row["same_tensor_max_abs_z"] = float(np.abs(lm_t[0, :, 2].numpy() - lm_r[:, 2]).max())
            row["score_diff"] = abs(float(sc_t[0]) - 1 / (1 + math.exp(-logit_r)))
            i128 = cv2.resize(img, (128, 128), interpolation=cv2.INTER_AREA)
            reg, logit = mesh.detector.raw(to_tensor(i128))
            reg_r, cls_r = ref.detector_raw(i128)
            row["detector_max_abs_regressor"] = float(np.abs(reg[0].numpy() - reg_r).max())
            row["detector_max_abs_logit"] = float(np.abs(logit[0].numpy() - cls_r).max())
            # Whole pipeline vs mediapipe.solutions.
            mp_lm = ref.face_mesh(img)
            if mp_lm is None or not torch.isfinite(lm_ours).all():
                row["pipeline"] = "no face" + (" (MediaPipe)" if mp_lm is None else " (ours)")
            else:
                dp = np.linalg.norm(lm_ours[0, :, :2].numpy() - mp_lm[:, :2], axis=1)
                row["pipeline_mean_px_image"] = float(dp.mean())
                row["pipeline_mean_px_at_192"] = float(dp.mean() * 192 / float(rect[0, 2]))
                row["pipeline_max_px_at_192"] = float(dp.max() * 192 / float(rect[0, 2]))
            dets = mesh.detector.detect(x)[0]
            mp_dets = ref.detect(img)
            if dets and mp_dets:
                b, mb = dets[0].box.numpy(), mp_dets[0][1]
                ix = max(0.0, min(b[2], mb[2]) - max(b[0], mb[0])) * max(0.0, min(b[3], mb[3]) - max(b[1], mb[1]))
                ua = (b[2] - b[0]) * (b[3] - b[1]) + (mb[2] - mb[0]) * (mb[3] - mb[1]) - ix
                row["detection_iou"] = float(ix / ua)
                row["detection_kp_max_px"] = float(np.abs(dets[0].keypoints.numpy() - mp_dets[0][2]).max())
                row["detection_score_diff"] = abs(float(dets[0].score) - mp_dets[0][0])
                row["roi_from_detection"] = [round(float(v), 3) for v in roi_from_detection(dets[0])[0]]
        rows.append(row)
    return rows


def timings(mesh: Any, ref: MediaPipeRuntime | None, iters: int) -> dict[str, dict[str, float]]:
    """ms per call on CPU: landmark net, detector, full pipeline (512²), landmark forward+backward."""
    x192 = torch.rand(1, 3, 192, 192)
    x128 = torch.rand(1, 3, 128, 128)
    full = to_tensor(data.astronaut())
    out = {}
    with torch.no_grad():
        out["FaceLandmarks 1x192²"] = summarise(time_calls(lambda: mesh.landmarks(x192), iters=iters))
        out["FaceLandmarks 8x192²"] = summarise(time_calls(lambda: mesh.landmarks(x192.expand(8, -1, -1, -1)),
                                                           iters=max(3, iters // 4)))
        out["FaceDetector 1x128² (net + decode)"] = summarise(time_calls(lambda: mesh.detector(x128), iters=iters))
        out["FaceMesh 512² (detect+NMS+crop+landmarks)"] = summarise(time_calls(lambda: mesh(full), iters=iters))
    xg = x192.clone().requires_grad_(True)

    def fwd_bwd() -> None:
        lm, _ = mesh.landmarks(xg)
        lm.square().mean().backward()

    out["FaceLandmarks 1x192² forward+backward"] = summarise(time_calls(fwd_bwd, iters=iters))
    if ref is not None:
        c = (np.random.default_rng(0).random((192, 192, 3)) * 255).astype(np.uint8)
        p = mediapipe_model_path(LANDMARK_MODEL)
        out["MediaPipe runtime 1x192² (graph build + run, for scale)"] = summarise(
            time_calls(lambda: ref.raw(p, c, 0.0, 1.0), iters=max(3, iters // 2)))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--iters", type=int, default=20, help="timed calls per measurement")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (0 = torch default; 1 is steadier on a shared 2-core machine)")
    p.add_argument("--no-timing", action="store_true", help="parity only")
    p.add_argument("--json", type=Path, default=None, help="write results here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    mesh = FaceMesh().eval()
    ref = MediaPipeRuntime()
    rows = parity(ref, mesh, test_images())
    for r in rows:
        print(json.dumps(r))
    tm = {} if args.no_timing else timings(mesh, ref, args.iters)
    for k, v in tm.items():
        print(f"{k:60s} median {v['median_ms']:7.2f} ms  p90 {v['p90_ms']:7.2f} ms  (n={v['n']})")
    keys = ["same_tensor_mean_px", "pipeline_mean_px_at_192"]
    summary = {k: max(r[k] for r in rows if k in r) for k in keys}
    print("worst over images:", json.dumps(summary))
    if args.json:
        prov = {**provenance("cpu"), "mediapipe": version("mediapipe")}
        result = {"benchmark": "face_mesh", "command": command_line(), "provenance": prov,
                  "threads": torch.get_num_threads(), "parity": rows, "worst": summary, "timing": tm}
        print(f"wrote {write_result(args.json, result)}")
    return 0


if __name__ == "__main__":
    install_native_stderr_filter()  # MediaPipe's start-up lines, as the CLI does
    raise SystemExit(main())
