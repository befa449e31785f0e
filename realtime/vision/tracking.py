"""Face landmarks per frame, stabilised (DESIGN §2, StylePortraitVideo §3.1).

Pipeline for one frame::

    MediaPipe (full-range detector only when tracking is lost → 468-point face mesh in video mode on a
    square ROI around the face) → pick the largest/most central face → blend each landmark with its
    pyramidal Lucas-Kanade prediction from the previous frame → FFHQ quad → causal One-Euro filter (live)
    whose state is first carried along by the flow-measured motion, so it smooths jitter without lag

File jobs track with ``smoothing="none"`` and then run :func:`smooth_tracks` — the paper's non-causal 1-D
Gaussian over the whole sequence (:func:`track_sequence` does both).

All per-stream state lives in a :class:`FaceTracker` instance. The landmark source is pluggable
(:class:`LandmarkSource`); :class:`MediaPipeLandmarks` is the real one, tests inject noisy oracles.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import cv2
import numpy as np

from models.config import opt
from realtime.frames import Frame, Track
from realtime.vision.align import quad_from_landmarks, quad_size, warp_to_crop
from realtime.vision.mediapipe_runtime import import_mediapipe, unusable
from realtime.vision.topology import EYE_LEFT, EYE_RIGHT, NUM_LANDMARKS

log = logging.getLogger(__name__)


@dataclass
class TrackerConfig:
    """Face tracking and stabilisation parameters (defaults tuned for 30 fps webcams)."""

    max_faces: int = opt(1, "faces tracked at once; track() returns the largest/most central, track_all() all", min=1)
    detector: Literal["full", "short"] = opt("full", "MediaPipe detector: full range (small faces) or short range")
    detection_confidence: float = opt(0.5, "detector score needed to start tracking a face", min=0.0, max=1.0)
    tracking_confidence: float = opt(0.5, "face-mesh presence score below which the face counts as lost", min=0.0,
                                     max=1.0)
    redetect_every: int = opt(0, "also run the detector every n frames while tracking (0: only when lost)", min=0)
    roi_scale: float = opt(2.0, "side of the square fed to the face mesh, in landmark-box sizes", min=1.0)
    roi_px: int = opt(256, "resolution (px) of the square fed to the face mesh", min=16)
    min_face_px: float = opt(64.0, "faces whose FFHQ quad side is smaller than this are skipped (no Track)", min=0.0)
    center_weight: float = opt(0.5, "choice: size × (1 − w · distance from centre / half-diagonal)", min=0.0, max=1.0)
    switch_margin: float = opt(1.3, "another face must score this many times better to take over", min=1.0)
    lk: bool = opt(True, "blend each landmark with its Lucas-Kanade flow prediction (StylePortraitVideo §3.1)")
    lk_window: int = opt(11, "LK window side in pixels (at the LK working resolution)", min=3)
    lk_levels: int = opt(2, "LK pyramid levels above the base", min=0)
    lk_face_px: float = opt(160.0, "LK runs on the face region downscaled so the eye-to-eye distance ≤ this/4", min=1.0)
    lk_weight: float = opt(0.85, "weight of the flow prediction when it agrees with the detection", min=0.0, max=1.0)
    lk_tolerance: float = opt(0.04, "disagreement (fraction of quad side) where the flow weight falls by 1/e",
                              min=0.001)
    lk_back_px: float = opt(1.0, "mesh_every > 1: a flow-carried point counts only if LK tracks it back to within "
                                 "this many frame px of where it started", min=0.01)
    mesh_every: int = opt(1, "run the face mesh on every n-th frame only and carry the landmarks by LK flow in "
                             "between (needs lk; the mesh runs anyway when the flow loses the face)", min=1, max=8)
    smoothing: Literal["one_euro", "none"] = opt("one_euro", "causal quad filter (live); file jobs: 'none'")
    one_euro_min_cutoff: float = opt(0.5, "Hz; cutoff when the face is still (lower = steadier, laggier)", min=0.01)
    one_euro_beta: float = opt(5.0, "cutoff increase in Hz per quad-side/second of unexplained speed", min=0.0)
    one_euro_d_cutoff: float = opt(2.0, "Hz; cutoff of the speed estimate", min=0.01)
    one_euro_flow: bool = opt(True, "move the filter state with the LK-measured motion first (removes lag)")
    fps: float = opt(30.0, "frame rate assumed when frames carry no timestamps", min=1.0)
    reset_jump: float = opt(0.35, "a raw quad jump larger than this (quad sides) restarts the filters", min=0.0)
    gaussian_sigma: float = opt(2.0, "smooth_tracks(): temporal Gaussian sigma in frames", min=0.0)


@dataclass
class FaceObservation:
    """One face as a landmark source sees it in one frame."""

    landmarks: np.ndarray  # [468, 3] float32, image pixels (x, y, z·scale)
    score: float  # detector confidence of the detection that started (or last refreshed) this track
    face_id: int  # stable for as long as the source keeps tracking this face
    detected: bool = False  # the full detector ran on this frame to find it


class LandmarkSource(Protocol):
    """Anything that finds face-mesh landmarks in RGB frames, in order (stateful, video mode)."""

    def process(self, image: np.ndarray) -> list[FaceObservation]:
        """image [H, W, 3] uint8 RGB → the faces in it."""
        ...

    def follow(self, moved: dict[int, np.ndarray]) -> None:
        """The tracker carried these faces (face_id → landmarks [468, 3] frame px) by optical flow through a frame
        this source did not see (``mesh_every`` > 1): move whatever it searches in to where they are now."""
        ...

    def reset(self) -> None: ...

    def close(self) -> None: ...


# ------------------------------------------------------------------------------------------- MediaPipe


def _import_mediapipe():  # noqa: ANN202 - returns modules
    import_mediapipe()
    try:
        from mediapipe.python.solution_base import SolutionBase  # noqa: PLC0415 - optional, heavy
        from mediapipe.python.solutions import face_detection, face_mesh  # noqa: PLC0415
    except Exception as exc:  # a broken protobuf/numpy combination
        raise unusable("face tracking", exc) from None
    return SolutionBase, face_detection, face_mesh


@dataclass
class _RoiFace:
    face_id: int
    graph: object  # mediapipe SolutionBase running the face-mesh graph in video mode
    cx: float
    cy: float
    side: float
    score: float
    fresh: bool = True  # the ROI came from the detector this frame


class MediaPipeLandmarks:
    """MediaPipe 0.10.21 face detection + face mesh, with the models inside its wheel (works offline).

    The full-range detector runs on the whole frame only when no face is tracked (or every
    ``redetect_every`` frames); each tracked face then runs the face-mesh graph in video mode on a square
    ROI that follows it, so cost does not grow with the frame size and small faces in 1080p are found.
    """

    def __init__(self, config: TrackerConfig | None = None) -> None:
        self.cfg = config or TrackerConfig()
        solution_base, face_detection, face_mesh = _import_mediapipe()
        self._SolutionBase = solution_base
        self._mesh_graph_path = face_mesh._BINARYPB_FILE_PATH
        self._detector = face_detection.FaceDetection(
            model_selection=1 if self.cfg.detector == "full" else 0,
            min_detection_confidence=self.cfg.detection_confidence,
        )
        self._pool: list[object] = []  # idle face-mesh graphs (reset before reuse)
        self._faces: list[_RoiFace] = []
        self._next_id = 0
        self._frame = 0

    # mesh graphs --------------------------------------------------------------------------------------
    def _new_graph(self) -> object:
        if self._pool:
            g = self._pool.pop()
            g.reset()
            return g
        return self._SolutionBase(
            binary_graph_path=self._mesh_graph_path,
            side_inputs={"num_faces": 1, "with_attention": False, "use_prev_landmarks": True},
            calculator_params={
                "facedetectionshortrangecpu__facedetectionshortrange__facedetection__"
                "TensorsToDetectionsCalculator.min_score_thresh": 0.5,
                "facelandmarkcpu__ThresholdingCalculator.threshold": self.cfg.tracking_confidence,
            },
            outputs=["multi_face_landmarks", "face_detections"],
        )

    def _drop(self, face: _RoiFace) -> None:
        self._faces.remove(face)
        self._pool.append(face.graph)

    # detection ----------------------------------------------------------------------------------------
    def _detect(self, image: np.ndarray) -> None:
        h, w = image.shape[:2]
        res = self._detector.process(image)
        cands = []
        for det in res.detections or []:
            bb = det.location_data.relative_bounding_box
            side = max(bb.width * w, bb.height * h)
            cx = (bb.xmin + bb.width * 0.5) * w
            cy = (bb.ymin + bb.height * 0.5) * h
            d = math.hypot(cx - w * 0.5, cy - h * 0.5) / max(1.0, math.hypot(w, h) * 0.5)
            cands.append((side**2 * max(0.05, 1.0 - self.cfg.center_weight * d), side, cx, cy, det))
        # largest / most central first, so max_faces=1 starts on the face track() would choose
        for _, side, cx, cy, det in sorted(cands, key=lambda c: -c[0]):
            if side * 1.8 < self.cfg.min_face_px * 0.5:  # far too small even to track
                continue
            if any(abs(cx - f.cx) < f.side * 0.3 and abs(cy - f.cy) < f.side * 0.3 for f in self._faces):
                continue  # already tracked
            if len(self._faces) >= self.cfg.max_faces:
                break
            self._faces.append(
                _RoiFace(self._next_id, self._new_graph(), cx, cy, side * self.cfg.roi_scale,
                         float(det.score[0]))
            )
            self._next_id += 1

    # per frame ----------------------------------------------------------------------------------------
    def process(self, image: np.ndarray) -> list[FaceObservation]:
        assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8, image.shape
        cfg = self.cfg
        ran_detector = False
        periodic = cfg.redetect_every > 0 and self._frame % cfg.redetect_every == 0
        if not self._faces or (periodic and len(self._faces) < cfg.max_faces):
            self._detect(image)
            ran_detector = True
        self._frame += 1
        out = self._mesh_all(image, ran_detector)
        if not out and not ran_detector:  # lost on this frame (cut, jump, resolution change): look again now
            self._detect(image)
            out = self._mesh_all(image, True)
        return out

    def _mesh_all(self, image: np.ndarray, ran_detector: bool) -> list[FaceObservation]:
        cfg = self.cfg
        out: list[FaceObservation] = []
        for face in list(self._faces):
            lm, mesh_detected = self._mesh(face, image)
            if lm is None:
                self._drop(face)
                continue
            # follow the face: next ROI centred on these landmarks
            cx, cy, side = self._roi_around(lm)
            size = side / cfg.roi_scale  # the landmarks' box
            if any(abs(cx - f.cx) < 0.3 * size and abs(cy - f.cy) < 0.3 * size
                   for f in self._faces if f is not face and f.face_id in {o.face_id for o in out}):
                self._drop(face)  # two tracks converged on one face: keep the older
                continue
            face.cx, face.cy, face.side = cx, cy, side
            out.append(FaceObservation(lm, face.score, face.face_id, ran_detector and face.fresh or mesh_detected))
            face.fresh = False
        return out

    def _roi_around(self, lm: np.ndarray) -> tuple[float, float, float]:
        """(centre x, centre y, side) of the square ROI around landmarks [468, 3] frame px."""
        lo, hi = lm[:, :2].min(axis=0), lm[:, :2].max(axis=0)
        return float((lo[0] + hi[0]) * 0.5), float((lo[1] + hi[1]) * 0.5), float(max(hi - lo)) * self.cfg.roi_scale

    def follow(self, moved: dict[int, np.ndarray]) -> None:
        """Re-centre each moved face's ROI on its flow-carried landmarks. The mesh graph tracks in ROI coordinates
        (its previous landmarks seed its own crop), so an ROI left where the mesh last ran puts a fast-moving face
        off its search region on the next mesh frame; one that follows keeps the face where the graph expects it.
        With the flow's back-check this took a 27 px/frame head swing at ``mesh_every`` 2 from 36 to 2 px mean
        alignment error (docs/tracking.md); either alone did not."""
        for face in self._faces:
            lm = moved.get(face.face_id)
            if lm is not None:
                face.cx, face.cy, face.side = self._roi_around(lm)

    def _mesh(self, face: _RoiFace, image: np.ndarray) -> tuple[np.ndarray | None, bool]:
        """Run the mesh graph on the face's ROI. Returns (landmarks [468, 3] in frame px or None, detected)."""
        s = self.cfg.roi_px
        scale = face.side / s  # frame px per ROI px
        # ROI px → frame px: frame = scale·roi + origin (pixel-centre convention)
        m = np.array(
            [[scale, 0.0, face.cx - face.side * 0.5 + 0.5 * scale - 0.5],
             [0.0, scale, face.cy - face.side * 0.5 + 0.5 * scale - 0.5]]
        )
        roi = warp_to_crop(image, m, s, antialias=True, border=cv2.BORDER_CONSTANT)
        res = face.graph.process({"image": roi})
        if not res.multi_face_landmarks:
            return None, False
        pts = res.multi_face_landmarks[0].landmark
        arr = np.fromiter((v for p in pts for v in (p.x, p.y, p.z)), np.float64, count=3 * len(pts))
        arr = arr.reshape(-1, 3)[:NUM_LANDMARKS] * s
        lm = np.empty((NUM_LANDMARKS, 3), np.float32)
        lm[:, 0] = arr[:, 0] * scale + (m[0, 2] - 0.5 * scale)  # normalised edge coords → pixel centres
        lm[:, 1] = arr[:, 1] * scale + (m[1, 2] - 0.5 * scale)
        lm[:, 2] = arr[:, 2] * scale
        return lm, bool(res.face_detections)

    def reset(self) -> None:
        for f in list(self._faces):
            self._drop(f)
        self._frame = 0

    def close(self) -> None:
        self.reset()
        for g in self._pool:
            g.close()
        self._pool.clear()
        self._detector.close()


# ------------------------------------------------------------------------------------------- filters


class OneEuroFilter:
    """Causal One-Euro filter (Casiez et al. 2012) on a fixed-shape array, shared cutoff for all values.

    The speed that raises the cutoff is the largest per-point speed divided by ``scale`` (here: the quad
    side), so parameters do not depend on the face's size in pixels.
    """

    def __init__(self, min_cutoff: float, beta: float, d_cutoff: float) -> None:
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff, beta, d_cutoff
        self.x: np.ndarray | None = None
        self.dx: np.ndarray | None = None

    @staticmethod
    def _alpha(cutoff: float, dt: float) -> float:
        tau = 1.0 / (2.0 * math.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    def reset(self) -> None:
        self.x = None
        self.dx = None

    def __call__(self, x: np.ndarray, dt: float, scale: float, shift: np.ndarray | None = None) -> np.ndarray:
        """Filter one sample. ``shift``: motion measured by other means (optical flow) since the last
        sample; the state is carried along by it first, so only unexplained motion is smoothed (no lag)."""
        x = np.asarray(x, np.float64)
        if self.x is None or self.dx is None:
            self.x, self.dx = x.copy(), np.zeros_like(x)
            return x
        if shift is not None:
            self.x = self.x + shift
        dx = (x - self.x) / dt
        self.dx = self.dx + self._alpha(self.d_cutoff, dt) * (dx - self.dx)
        speed = float(np.max(np.linalg.norm(self.dx.reshape(-1, 2), axis=1))) / max(scale, 1e-6)
        cutoff = self.min_cutoff + self.beta * speed
        self.x = self.x + self._alpha(cutoff, dt) * (x - self.x)
        return self.x.copy()


def _odd_reflect_gaussian(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian along axis 0 with odd-reflect ends (keeps linear motion unbiased at the clip's ends)."""
    n = x.shape[0]
    if sigma <= 0 or n < 2:
        return x.copy()
    r = max(1, int(math.ceil(3.0 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    flat = x.reshape(n, -1).astype(np.float64)
    padded = np.pad(flat, ((r, r), (0, 0)), mode="reflect", reflect_type="odd")
    out = np.empty_like(flat)
    for j in range(flat.shape[1]):
        out[:, j] = np.convolve(padded[:, j], k, mode="valid")
    return out.reshape(x.shape)


def smooth_quads(quads: Sequence[np.ndarray | None], sigma: float = 2.0, jump: float = 0.35) -> list[np.ndarray | None]:
    """Non-causal temporal Gaussian over a whole sequence of quads (file jobs).

    Each run of consecutive frames with a face is smoothed on its own; a run is also split where the quad
    jumps by more than ``jump`` quad sides (a cut or a different face). quads: T × ([4, 2] or None).
    """
    out: list[np.ndarray | None] = [None if q is None else np.asarray(q, np.float32).copy() for q in quads]
    runs: list[list[int]] = []
    prev: np.ndarray | None = None
    for i, q in enumerate(quads):
        if q is None:
            prev = None
            continue
        q = np.asarray(q, np.float64)
        if prev is None or np.abs(q - prev).max() > jump * quad_size(q):
            runs.append([])
        runs[-1].append(i)
        prev = q
    for run in runs:
        arr = np.stack([np.asarray(quads[i], np.float64) for i in run])
        sm = _odd_reflect_gaussian(arr, sigma)
        for j, i in enumerate(run):
            out[i] = sm[j].astype(np.float32)
    return out


def smooth_tracks(tracks: Sequence[Track], sigma: float = 2.0, jump: float = 0.35,
                  landmarks: bool = True) -> list[Track]:
    """:func:`smooth_quads` applied to tracks; also smooths landmarks over the same runs if asked.

    Returns new Track objects; the input list is not modified.
    """
    quads = [t.quad if t.has_face else None for t in tracks]
    sq = smooth_quads(quads, sigma, jump)
    out = [dataclasses.replace(t, quad=q if t.has_face else t.quad) for t, q in zip(tracks, sq)]
    if landmarks:
        # same runs as the quads: recompute boundaries from the smoothed result's None pattern and jumps
        i = 0
        n = len(tracks)
        while i < n:
            if not tracks[i].has_face:
                i += 1
                continue
            j = i + 1
            while j < n and tracks[j].has_face and np.abs(
                np.asarray(tracks[j].quad) - np.asarray(tracks[j - 1].quad)
            ).max() <= jump * quad_size(tracks[j].quad):
                j += 1
            arr = np.stack([np.asarray(tracks[k].landmarks, np.float64) for k in range(i, j)])
            sm = _odd_reflect_gaussian(arr, sigma).astype(np.float32)
            for k in range(i, j):
                out[k].landmarks = sm[k - i]
            i = j
    return out


# ------------------------------------------------------------------------------------------- tracker


@dataclass
class _Stabiliser:
    """Per-face stabilisation state."""

    prev_lm: np.ndarray | None = None  # [468, 3] stabilised landmarks of the previous frame
    prev_gray: np.ndarray | None = None  # LK region of the previous frame (grey, working resolution)
    region: tuple[int, int, int, int, float] | None = None  # x0, y0, x1, y1, downscale of prev_gray
    prev_raw_quad: np.ndarray | None = None  # [4, 2] quad of the previous blended landmarks
    euro: OneEuroFilter | None = None
    last_t: float | None = None
    cur_gray: np.ndarray | None = None  # this frame's cut of ``region`` (reused when the region stays)
    score: float = 0.0  # detector score of the last observation (carried by flow-only frames)


class FaceTracker:
    """Landmarks + stabilised FFHQ quad for each frame of one stream.

    ``track(frame)`` returns the primary face (largest/most central, kept while it stays); frames without a
    usable face give ``Track(landmarks=None)``. Never keeps references to frame images.
    """

    def __init__(self, config: TrackerConfig | None = None, source: LandmarkSource | None = None) -> None:
        self.cfg = config or TrackerConfig()
        self.source: LandmarkSource = source if source is not None else MediaPipeLandmarks(self.cfg)
        self._stab: dict[int, _Stabiliser] = {}
        self._primary: int | None = None
        self._index = 0
        self.last_tracks: list[Track] = []  # every face of the last frame (track_all)
        self._errors = 0

    # public -------------------------------------------------------------------------------------------
    def track(self, frame: Frame) -> Track:
        """Track one frame; returns the primary face's Track (landmarks None when there is none)."""
        tracks = self.track_all(frame)
        return tracks[0] if tracks else Track(landmarks=None)

    def track_all(self, frame: Frame) -> list[Track]:
        """Track one frame; returns every usable face, primary first (empty list: no face). Never raises."""
        try:
            return self._track_all(frame)
        except Exception:  # a bad frame must not end the stream: no face here, start afresh next frame
            self._errors += 1
            if self._errors <= 3 or self._errors % 100 == 0:
                log.exception("face tracking failed on frame %d; treating it as no face", frame.index)
            self.reset()
            return []

    def _track_all(self, frame: Frame) -> list[Track]:
        image = frame.image
        t = frame.time_s if frame.time_s is not None else frame.index / self.cfg.fps
        rgb = image if self.cfg.lk else None  # LK converts only its face regions to grey
        h, w = image.shape[:2]
        carried = self._carry(image) if self.cfg.mesh_every > 1 and self._index % self.cfg.mesh_every else None
        if carried is not None:  # a flow-only frame: the mesh does not run; its search regions follow the flow
            obs, flows = carried
            self.source.follow({o.face_id: o.landmarks for o in obs})
        else:
            obs, flows = self.source.process(image), {}
        seen: set[int] = set()
        results: list[tuple[float, int, Track]] = []
        for o in obs:
            seen.add(o.face_id)
            st = self._stab.setdefault(o.face_id, _Stabiliser())
            track = self._stabilise(st, o, rgb, t, flows.get(o.face_id))
            if track is None:
                continue
            results.append((self._choice_score(track, w, h), o.face_id, track))
        for fid in list(self._stab):
            if fid not in seen:
                del self._stab[fid]
        self._index += 1
        if not results:
            self._primary = None
            self.last_tracks = []
            return []
        best = max(results, key=lambda r: r[0])
        cur = next((r for r in results if r[1] == self._primary), None)
        if cur is not None and best[0] < cur[0] * self.cfg.switch_margin:
            best = cur
        self._primary = best[1]
        ordered = [best[2]] + [r[2] for r in sorted(results, key=lambda r: -r[0]) if r[1] != best[1]]
        self.last_tracks = ordered
        return ordered

    def reset(self) -> None:
        """Forget everything (new stream or a seek)."""
        try:
            self.source.reset()
        except Exception:
            log.exception("landmark source reset failed")
        self._stab.clear()
        self._primary = None
        self._index = 0
        self.last_tracks = []

    def close(self) -> None:
        self.source.close()

    def __enter__(self) -> FaceTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # internals ----------------------------------------------------------------------------------------
    def _carry(self, image: np.ndarray) -> tuple[list[FaceObservation], dict[int, tuple[np.ndarray, np.ndarray]]]\
            | None:
        """``mesh_every`` > 1, between mesh frames: every tracked face's landmarks moved by the LK flow from the
        previous frame, as observations (and the flows, so they are not computed twice). None — run the mesh on
        this frame — when there is no face or the flow lost more than half of a face's points."""
        if not self.cfg.lk or not self._stab:
            return None
        obs, flows = [], {}
        for fid, st in self._stab.items():
            if st.prev_lm is None:
                return None
            flow = self._flow(st, image, back_check=True)
            if flow is None or flow[1].sum() < NUM_LANDMARKS // 2:
                st.cur_gray = None
                return None
            pred, ok = flow
            lm = st.prev_lm.copy()
            move = np.median(pred[ok] - st.prev_lm[ok, :2], axis=0)
            lm[:, :2] = np.where(ok[:, None], pred, st.prev_lm[:, :2] + move)
            obs.append(FaceObservation(lm.astype(np.float32), st.score, fid, detected=False))
            flows[fid] = (lm[:, :2].astype(np.float64), np.ones(NUM_LANDMARKS, bool))
        return obs, flows

    def _choice_score(self, track: Track, w: int, h: int) -> float:
        q = np.asarray(track.quad, np.float64)
        c = q.mean(axis=0)
        d = math.hypot(c[0] - w * 0.5, c[1] - h * 0.5) / max(1.0, math.hypot(w, h) * 0.5)
        return quad_size(q) ** 2 * max(0.05, 1.0 - self.cfg.center_weight * d)

    def _lk_region(self, lm: np.ndarray, w: int, h: int) -> tuple[int, int, int, int, float]:
        lo, hi = lm[:, :2].min(axis=0), lm[:, :2].max(axis=0)
        size = float(max(hi - lo))
        margin = 0.35 * size + self.cfg.lk_window * 2 ** self.cfg.lk_levels
        # snapped to a 32 px grid (and the scale to quarters) so a steady face keeps the same region and
        # the grey cut of this frame is reused as the next frame's "previous"
        g = 32
        x0, y0 = max(0, int(lo[0] - margin) // g * g), max(0, int(lo[1] - margin) // g * g)
        x1, y1 = min(w, (int(hi[0] + margin) // g + 1) * g), min(h, (int(hi[1] + margin) // g + 1) * g)
        eye = float(np.linalg.norm(lm[list(EYE_LEFT), :2].mean(0) - lm[list(EYE_RIGHT), :2].mean(0)))
        down = max(1.0, math.ceil(eye * 4.0 / self.cfg.lk_face_px * 4.0) / 4.0)
        return x0, y0, x1, y1, down

    @staticmethod
    def _cut(image: np.ndarray, region: tuple[int, int, int, int, float]) -> np.ndarray:
        """Grey LK working image of a frame region. image [H, W, 3] uint8 RGB → [h, w] uint8."""
        x0, y0, x1, y1, down = region
        g = cv2.cvtColor(image[y0:y1, x0:x1], cv2.COLOR_RGB2GRAY)
        if down > 1.0:
            g = cv2.resize(g, (max(1, round((x1 - x0) / down)), max(1, round((y1 - y0) / down))),
                           interpolation=cv2.INTER_AREA)
        return g

    def _flow(self, st: _Stabiliser, rgb: np.ndarray, back_check: bool = False
              ) -> tuple[np.ndarray, np.ndarray] | None:
        """LK prediction of the previous landmarks in this frame: (points [468, 2], ok [468] bool). ``back_check``:
        a point is ok only if tracking it back from this frame lands within ``lk_back_px`` of where it started (the
        flow's own check, for frames with no detection to agree with)."""
        if st.prev_gray is None or st.region is None or st.prev_lm is None:
            return None
        x0, y0, x1, y1, down = st.region
        cur = self._cut(rgb, st.region)
        st.cur_gray = cur
        if cur.shape != st.prev_gray.shape:
            return None
        sx = (x1 - x0) / cur.shape[1]
        sy = (y1 - y0) / cur.shape[0]
        p0 = np.empty((NUM_LANDMARKS, 1, 2), np.float32)
        p0[:, 0, 0] = (st.prev_lm[:, 0] - x0 + 0.5) / sx - 0.5
        p0[:, 0, 1] = (st.prev_lm[:, 1] - y0 + 0.5) / sy - 0.5
        win = self.cfg.lk_window
        lk = {"winSize": (win, win), "maxLevel": self.cfg.lk_levels,
              "criteria": (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 20, 0.03)}
        p1, status, _err = cv2.calcOpticalFlowPyrLK(st.prev_gray, cur, p0, None, **lk)
        ok = status.reshape(-1).astype(bool)
        if back_check:
            back, back_status, _err = cv2.calcOpticalFlowPyrLK(cur, st.prev_gray, p1, None, **lk)
            ok &= back_status.reshape(-1).astype(bool)
            ok &= np.linalg.norm((back - p0).reshape(-1, 2), axis=1) * max(sx, sy) <= self.cfg.lk_back_px
        pts = np.empty((NUM_LANDMARKS, 2), np.float64)
        pts[:, 0] = (p1[:, 0, 0] + 0.5) * sx - 0.5 + x0
        pts[:, 1] = (p1[:, 0, 1] + 0.5) * sy - 0.5 + y0
        return pts, ok

    def _stabilise(self, st: _Stabiliser, o: FaceObservation, rgb: np.ndarray | None, t: float,
                   flow: tuple[np.ndarray, np.ndarray] | None = None) -> Track | None:
        """Blend with the LK prediction (``flow``: already computed for this frame, else computed here), One-Euro,
        quad. None when the face is too small."""
        cfg = self.cfg
        st.score = float(o.score)
        det = np.asarray(o.landmarks, np.float32)
        assert det.shape == (NUM_LANDMARKS, 3), det.shape
        det_quad = quad_from_landmarks(det)
        qs = quad_size(det_quad)
        # a cut or a different face: start over
        if st.prev_raw_quad is not None and np.abs(det_quad - st.prev_raw_quad).max() > cfg.reset_jump * qs:
            st.prev_lm, st.prev_gray, st.region, st.euro, st.last_t = None, None, None, None, None
        lm = det.copy()
        shift = None
        if rgb is not None:
            if flow is None:
                flow = self._flow(st, rgb)
            if flow is not None and st.prev_lm is not None:
                pred, ok = flow
                d = np.linalg.norm(pred - det[:, :2], axis=1)
                # motion of the face since the last frame, from the flow where it agrees with the detection
                agree = ok & (d < 3.0 * cfg.lk_tolerance * qs)
                if cfg.one_euro_flow and agree.sum() >= NUM_LANDMARKS // 2:
                    moved = det[:, :2].astype(np.float64)
                    moved[agree] = pred[agree]
                    shift = quad_from_landmarks(moved).astype(np.float64) - quad_from_landmarks(st.prev_lm)
                wgt = cfg.lk_weight * np.exp(-((d / (cfg.lk_tolerance * qs)) ** 2)) * ok
                lm[:, :2] = (wgt[:, None] * pred + (1.0 - wgt[:, None]) * det[:, :2]).astype(np.float32)
            h, w = rgb.shape[:2]
            region = self._lk_region(lm, w, h)
            cur, st.cur_gray = st.cur_gray, None
            st.prev_gray = cur if cur is not None and region == st.region else self._cut(rgb, region)
            st.region = region
        st.prev_lm = lm
        quad = quad_from_landmarks(lm).astype(np.float64)
        st.prev_raw_quad = quad.astype(np.float32)
        if cfg.smoothing == "one_euro":
            if st.euro is None:
                st.euro = OneEuroFilter(cfg.one_euro_min_cutoff, cfg.one_euro_beta, cfg.one_euro_d_cutoff)
            dt = t - st.last_t if st.last_t is not None and t > st.last_t else 1.0 / cfg.fps
            quad = st.euro(quad, dt, qs, shift)
        st.last_t = t
        if quad_size(quad) < cfg.min_face_px:
            return None
        return Track(landmarks=lm, score=float(o.score), quad=quad.astype(np.float32), detected=o.detected)


def track_sequence(frames: Iterable[Frame], config: TrackerConfig | None = None,
                   source: LandmarkSource | None = None) -> list[Track]:
    """File jobs: track every frame causally (LK blend, no One-Euro), then the non-causal Gaussian.

    Returns one Track per frame, in order.
    """
    cfg = dataclasses.replace(config or TrackerConfig(), smoothing="none")
    with FaceTracker(cfg, source) as tracker:
        tracks = [tracker.track(f) for f in frames]
    return smooth_tracks(tracks, cfg.gaussian_sigma, cfg.reset_jump)
