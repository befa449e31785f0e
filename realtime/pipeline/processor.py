"""One frame of one stream: align → encode (key | reuse) → edit → generate → composite (DESIGN §2).

:class:`FrameProcessor` is the device worker's code, shared by every runner (file jobs, the live camera, each server
peer, the public :class:`realtime.api.Filter`) and by the offline editor's render phase. Each stage is a method with a
typed hand-off — ``Frame`` + ``Track`` → :class:`Crop` → :class:`Encoded` → :class:`Edited` → face tensor →
:class:`Output` — and :meth:`FrameProcessor.process` chains them. Per-stream state lives in :class:`StreamState`, never
in the processor's engine, so one engine can serve many streams.

Two compositing modes (DESIGN §9, ``PipelineConfig.composite``): **regenerate** pastes the generator's face over the
user's through the face mask; **transfer** keeps the user's own face and moves it by the edit the generator makes
(:mod:`realtime.vision.transfer`): the generator renders G(w) and G(w+Δ) in one batch of two, and frames without an
active edit are not touched at all (no model work). ``auto`` picks transfer, except for edits that must replace the
face (random_identity) and for a generator calibrated to this person.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from models.editing import EditContext, EditStack
from models.errors import UserError
from realtime.engines import Engine, engine_like
from realtime.frames import Crop, Encoded, Frame, Output, Track
from realtime.pipeline.calibration import CalibrationConfig, Calibrator, exported_dir_of
from realtime.pipeline.config import COMPOSITES, VIEWS, PipelineConfig
from realtime.pipeline.latents import LatentPolicy, LatentState
from realtime.pipeline.stages import StageTimes
from realtime.vision.align import align_crop, align_crops_torch
from realtime.vision.composite import CompositeConfig, Compositor, face_mask
from realtime.vision.geometry import crop_affine, landmarks_to_crop, rescale_affine
from realtime.vision.transfer import EditPlan, EditTransfer, TransferConfig, plan_edits, transfer_available


def composite_face(compositor: Compositor, frame: Frame, track: Track, crop: Crop | None,
                   face: torch.Tensor | None) -> Output:
    """The compositing stage: paste ``face`` ([1, 3, R, R] in [-1, 1], generated from ``crop``) back into ``frame``
    through the face mask, or hold-then-fade when there is no face (``crop``/``face`` None). A generator resolution
    R other than the crop's is handled by re-expressing the crop at R. The live processor and the offline editor's
    render phase both paste through here."""
    if crop is not None and face is not None:
        r = face.shape[-1]
        if r != crop.size:
            image = F.interpolate(crop.image[None].float(), size=(r, r), mode="bilinear", align_corners=False,
                                  antialias=True)[0]
            crop = Crop(image=image, to_frame=rescale_affine(crop.to_frame, crop.size / r), size=r)
        face = face[0]
    return compositor.composite(frame, track, crop, face)


def layout(view: str, frame: Frame, image: np.ndarray, face: bool = False) -> Output:
    """The output frame for a view: ``side_by_side`` puts the original on the left (double width)."""
    if view == "side_by_side":
        image = np.concatenate([frame.image, image], axis=1)
    return Output(image=np.ascontiguousarray(image), index=frame.index, pts=frame.pts, time_base=frame.time_base,
                  capture_ns=frame.capture_ns, face=bool(face))


@dataclass
class StreamState:
    """Everything one video stream carries from frame to frame (never shared between streams)."""

    latent: LatentState = field(default_factory=LatentState)
    compositor: Compositor | None = None  # regenerate mode: made on the first frame from the processor's config
    transfer: EditTransfer | None = None  # transfer mode: made on the first edited frame
    composite: str = ""  # the compositing mode the last frame used ("transfer" / "regenerate")
    frames: int = 0
    faces: int = 0
    last_source: str = ""  # "key", "reuse" or "none" for the last frame
    live: bool = False  # frames arrive on a clock (camera, server): slow side work runs off the frame path

    @property
    def key_frames(self) -> int:
        return self.latent.key_frames


@dataclass
class Edited:
    """An edited W+ code and the StyleSpace offsets that go with it."""

    ws: torch.Tensor  # [1, num_ws, w_dim]
    style_deltas: dict[str, torch.Tensor] | None  # {StyleSpace layer: [1, C]} or None


class FrameProcessor:
    """align → encode → edit → generate → composite for the frames of one stream.

    ``engine`` may be shared between streams (it is never closed here); ``edits`` (live strengths), ``times``, the view
    and a live calibration (``calibration``: default settings when None) belong to this stream. ``enabled`` and ``view``
    may be changed from any thread (a UI message); they apply from the next frame."""

    def __init__(self, engine: Engine, config: PipelineConfig | None = None, edits: EditStack | None = None,
                 times: StageTimes | None = None, calibration: CalibrationConfig | None = None,
                 transfer: TransferConfig | None = None):
        self.base_engine = engine
        self.engine = engine  # the base engine, or this stream's own after a live calibration
        self.cfg = config or PipelineConfig()
        self.edits = edits
        self.times = times or StageTimes()
        self.policy = LatentPolicy(self.cfg)
        self.policy.mode(engine)  # --reuse vien without a ViEN fails here, not at the first face
        self.enabled = True  # False passes frames through untouched
        self._view = self.cfg.view
        self._composite = self.cfg.composite
        self.transfer_cfg = transfer or TransferConfig()
        self._plan: tuple[object, EditPlan] | None = None  # (edit strengths, their transfer plan)
        self.calibration_cfg = calibration
        self.calibrator: Calibrator | None = None  # made on the first calibrate()
        self._revert = False
        self._lock = threading.Lock()

    # -- what the stream shows -----------------------------------------------------------------------------

    @property
    def view(self) -> str:
        return self._view

    @view.setter
    def view(self, mode: str) -> None:
        if mode not in VIEWS:
            raise UserError(f"view must be one of {', '.join(VIEWS)}, got {mode!r}")
        self._view = mode

    @property
    def composite_mode(self) -> str:
        """The compositing mode asked for: auto, transfer or regenerate (any thread may set it)."""
        return self._composite

    @composite_mode.setter
    def composite_mode(self, mode: str) -> None:
        if mode not in COMPOSITES:
            raise UserError(f"composite must be one of {', '.join(COMPOSITES)}, got {mode!r}")
        self._composite = mode

    def resolve_composite(self) -> str:
        """The mode the next frame uses: ``auto`` → regenerate for a random_identity edit and for a generator calibrated
        to this person (its own engine), and where the landmark geometry cannot run; else transfer."""
        if self._composite != "auto":
            return self._composite
        if self.engine is not self.base_engine:
            return "regenerate"
        if self.edits is not None and any(self.edits.specs[n].kind == "random_identity" and v
                                          for n, v in self.edits.strengths().items()):
            return "regenerate"
        return "transfer" if transfer_available() else "regenerate"

    def prepare_stream(self, state: StreamState) -> None:
        """Before a stream's first frame (the runner calls it): a live stream in transfer mode gets its EditTransfer
        now, whose render face mesh warms up on the background thread instead of on the first face frame."""
        if state.live and self.resolve_composite() == "transfer":
            self._transfer(state)

    def _transfer(self, state: StreamState) -> EditTransfer:
        """The stream's EditTransfer, made on first use (live streams refresh its face mesh in the background)."""
        if state.transfer is None:
            state.transfer = EditTransfer(self.transfer_cfg, background=state.live)
        return state.transfer

    def wants_landmarks(self) -> bool:
        """Whether the next frame needs tracking (not when the filter is off or the original is shown)."""
        return self.enabled and self._view != "original"

    # -- live calibration (StylePortraitVideo adaptation on a few seconds of this stream) -----------------------

    def calibrate(self) -> bool:
        """Start a live calibration (any thread; no model work here): the next face frames are recorded, a copy of
        the base generator is adapted to them in a worker process, and this stream switches to its own engine
        between two frames. False when one is already under way."""
        with self._lock:
            if self.calibrator is None:
                base = self.base_engine
                device = base.device if base.device.type == "cuda" else torch.device("cpu")
                onnx = base.spec.backend == "onnx"  # the worker exports the adapted bundle for an onnx stream
                self.calibrator = Calibrator(self.calibration_cfg, device=device,
                                             export_precision=base.precision if onnx else None,
                                             export_from=exported_dir_of(base) if onnx else None,
                                             build=lambda bundle, model_dir: engine_like(base, bundle, model_dir))
            calibrator = self.calibrator
        return bool(calibrator.start(self.base_engine.bundle))

    def reset_calibration(self) -> None:
        """Cancel a calibration under way and go back to the base engine (at the next frame)."""
        if self.calibrator is not None:
            self.calibrator.cancel()
        self._revert = True

    def calibration_status(self) -> dict[str, Any]:
        return self.calibrator.status() if self.calibrator is not None else {"state": "idle", "progress": 0.0}

    def _use_engine(self, engine: Engine) -> None:
        old, self.engine = self.engine, engine
        if old is not self.base_engine and old is not engine:
            old.close()

    def _poll_calibration(self) -> None:
        """Device thread, between frames: revert, or swap in a finished calibration's engine."""
        if self._revert:
            self._revert = False
            self._use_engine(self.base_engine)
        if self.calibrator is not None:
            engine = self.calibrator.take()
            if engine is not None:
                self._use_engine(engine)

    def release(self) -> None:
        """End of the stream: cancel a calibration and close this stream's own engine (not the shared one)."""
        if self.calibrator is not None:
            self.calibrator.cancel()
            self.calibrator.join(30)  # the adaptation stops at its next step
        self._use_engine(self.base_engine)

    # -- the stages ----------------------------------------------------------------------------------------

    def align(self, frame: Frame, track: Track) -> Crop:
        """The aligned face of a tracked frame, as a [3, S, S] tensor on the engine device."""
        eng = self.engine
        on_device = self.cfg.align == "device" or (self.cfg.align == "auto" and eng.device.type == "cuda")
        if on_device:
            img = torch.from_numpy(frame.image).to(eng.device).permute(2, 0, 1).unsqueeze(0)
            crops, to_frame = align_crops_torch(img, np.asarray(track.quad)[None], eng.crop_size)
            return Crop(image=crops[0], to_frame=to_frame[0], size=eng.crop_size)
        crop = align_crop(frame.image, np.asarray(track.quad), eng.crop_size)
        return Crop(image=crop.image.to(eng.device), to_frame=crop.to_frame, size=crop.size)

    def encode(self, crop: Crop, state: StreamState) -> Encoded:
        """W+ of the crop under the stream's latent policy (FrEN key frame or ViEN reuse)."""
        return self.policy.encode(self.engine, crop, state.latent)

    def edit(self, encoded: Encoded, track: Track, crop: Crop) -> Edited:
        """The stream's active edits applied to ``encoded`` (the tracked landmarks are the edits' context)."""
        if self.edits is None or not self.edits.active():
            return Edited(encoded.ws, None)
        ctx = EditContext(landmarks=track.landmarks, to_frame=crop.to_frame, crop_size=crop.size)
        ws, style_deltas = self.edits.apply(encoded.ws, context=ctx)
        return Edited(ws, style_deltas)

    def generate(self, edited: Edited) -> torch.Tensor:
        """The generator's face [1, 3, R, R] for an edited code."""
        return self.engine.synthesize(edited.ws, edited.style_deltas)

    def generate_pair(self, encoded: Encoded, edited: Edited) -> torch.Tensor:
        """G(w) and G(w+Δ) in one call: [2, 3, R, R] (the reconstruction first)."""
        ws = torch.cat([encoded.ws, edited.ws])
        deltas = None
        if edited.style_deltas:
            deltas = {k: torch.cat([torch.zeros_like(v), v]) for k, v in edited.style_deltas.items()}
        return self.engine.synthesize(ws, deltas)

    def transfer_plan(self) -> EditPlan:
        """What the transfer takes from the active edits (cached until a strength changes)."""
        assert self.edits is not None
        strengths = self.edits.strengths()
        key = tuple(sorted(strengths.items()))
        if self._plan is None or self._plan[0] != key:
            self._plan = (key, plan_edits(self.edits.specs, strengths, self.transfer_cfg))
        return self._plan[1]

    def composite(self, frame: Frame, track: Track, crop: Crop | None, face: torch.Tensor | None,
                  state: StreamState) -> Output:
        """Paste ``face`` back into ``frame`` (:func:`composite_face`), laid out for the stream's view."""
        if state.compositor is None:
            state.compositor = Compositor(CompositeConfig(color_match=self.cfg.color_match))
        out = composite_face(state.compositor, frame, track, crop, face)
        return layout(self._view, frame, out.image, face=out.face)

    def layout(self, frame: Frame, image: np.ndarray, face: bool = False) -> Output:
        """The output frame for this stream's view."""
        return layout(self._view, frame, image, face=face)

    # -- one frame -----------------------------------------------------------------------------------------

    def process(self, frame: Frame, track: Track, state: StreamState) -> Output:
        """The filtered frame (the untouched one when the filter is off or the view is the original)."""
        timings: dict[str, float] = {}
        state.frames += 1
        self._poll_calibration()
        if self._view == "original":
            return Output(image=frame.image, index=frame.index, pts=frame.pts, time_base=frame.time_base,
                          capture_ns=frame.capture_ns)
        if not self.enabled:
            return self.layout(frame, frame.image)
        state.composite = self.resolve_composite()
        if state.composite == "transfer":
            return self._process_transfer(frame, track, state, timings)
        if not track.has_face:
            state.latent.reset()
            state.last_source = "none"
            with self.times.measure("composite", timings):
                out = self.composite(frame, track, None, None, state)  # hold the last face, then fade out
            out.timings_ms = timings
            return out
        state.faces += 1
        with self.times.measure("align", timings):
            crop = self.align(frame, track)
        with self.times.measure("encode", timings):
            encoded = self.encode(crop, state)
        if self.calibrator is not None and self.calibrator.recording:
            self.calibrator.record(crop.image[None], encoded.ws)  # the unedited latent: calibration reconstructs
        edited = Edited(encoded.ws, None)
        if self.edits is not None and self.edits.active():
            with self.times.measure("edit", timings):
                edited = self.edit(encoded, track, crop)
        with self.times.measure("generate", timings):
            face = self.generate(edited)
        with self.times.measure("composite", timings):
            out = self.composite(frame, track, crop, face, state)
        state.last_source = encoded.source
        out.timings_ms = timings
        return out

    def _process_transfer(self, frame: Frame, track: Track, state: StreamState, timings: dict[str, float]) -> Output:
        """Transfer mode: the user's frame, moved by the edit; untouched without a face or an active edit. Between
        the face mesh's refreshes a geometry-only edit needs no encoder or generator work at all."""
        recording = self.calibrator is not None and self.calibrator.recording
        editing = self.edits is not None and self.edits.active()
        if not track.has_face:
            state.latent.reset()
            state.last_source = "none"
            if state.transfer is not None:
                state.transfer.reset()
            return self.layout(frame, frame.image)
        state.faces += 1
        if not editing and not recording:
            state.last_source = "pass"
            return self.layout(frame, frame.image)  # exactly the input: no edit, nothing to do
        transfer = self._transfer(state)
        plan = self.transfer_plan() if editing else EditPlan(regions=())
        size = self.engine.crop_size
        to_frame = crop_affine(np.asarray(track.quad), size)
        recon = edited_face = None
        state.last_source = "held"  # the edit's motion from the last face-mesh run follows the tracked face
        if recording or (editing and transfer.needs_renders(plan)):
            with self.times.measure("align", timings):
                crop = self.align(frame, track)
            with self.times.measure("encode", timings):
                encoded = self.encode(crop, state)
            state.last_source = encoded.source
            if recording:
                self.calibrator.record(crop.image[None], encoded.ws)
            if editing:
                with self.times.measure("edit", timings):
                    edited = self.edit(encoded, track, crop)
                with self.times.measure("generate", timings):
                    pair = self.generate_pair(encoded, edited)
                recon, edited_face = pair[0], pair[1]
        if not editing:
            return self.layout(frame, frame.image)
        with self.times.measure("transfer", timings):
            mask = face_mask(landmarks_to_crop(track.landmarks, to_frame), size)
            image = transfer.apply(frame.image, to_frame, size, track.landmarks, recon, edited_face, mask,
                                         plan=plan)
        out = self.layout(frame, image, face=True)
        out.timings_ms = timings
        return out
