"""Paste a generated face back into its frame (DESIGN §2, StylePortraitVideo §3.1 step 6).

* :func:`face_mask` — soft mask in crop space from the mesh's face oval, extended up over the forehead,
  eroded and feathered in proportion to the crop (so to the face); optional person segmentation
  (:class:`PersonSegmenter`, MediaPipe selfie segmentation) keeps the background out.
* :func:`match_color` — optional mean/std colour transfer measured on a cheek/nose skin region.
* :func:`paste_back` (CPU) / :func:`paste_back_torch` — warp face + mask through the crop's inverse affine
  into the bounding box of the mask only, and blend there; the rest of the frame is not touched.
* :class:`FaceHold` — no face: hold the last result briefly, then cross-fade to the untouched frame; fade
  back in when the face returns. :class:`Compositor` ties it together for one stream and never raises.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from models.config import opt
from realtime.frames import Crop, Frame, Output, Track
from realtime.vision.align import affine_grid_pixels
from realtime.vision.geometry import apply_affine, invert_affine, landmarks_to_crop
from realtime.vision.mediapipe_runtime import import_mediapipe
from realtime.vision.topology import (
    BROW_LEFT_LOOP,
    BROW_RIGHT_LOOP,
    CHIN,
    EYE_LEFT_LOOP,
    EYE_RIGHT_LOOP,
    FACE_OVAL,
    FOREHEAD_TOP,
    LIPS_OUTER_LOOP,
    rotate,
)

log = logging.getLogger(__name__)

# The mask's polygon: the face oval as a loop that starts at the chin's left and goes up the image-left side
# (the anti-aliased fill depends on the starting vertex, so it is kept fixed).
OVAL_LOOP = rotate(FACE_OVAL, 176)


@dataclass
class CompositeConfig:
    """Mask, colour and fade parameters for paste-back."""

    forehead: float = opt(0.25, "push the top of the face oval up by this fraction of the eye-to-chin distance",
                          min=0.0)
    erode: float = opt(0.015, "shrink the mask by this fraction of the crop side before feathering", min=0.0)
    feather: float = opt(0.025, "Gaussian feather sigma as a fraction of the crop side", min=0.0)
    mask_px: int = opt(128, "the mask is drawn and blurred at this resolution, then resized to the crop", min=8)
    segmentation: bool = opt(False, "multiply the mask by MediaPipe selfie segmentation (keeps background out)")
    color_match: bool = opt(False, "match the face's mean/std to the original in a skin region")
    color_strength: float = opt(1.0, "0…1 blend of the colour-matched face with the raw one", min=0.0, max=1.0)
    interpolation: Literal["linear", "cubic"] = opt("linear", "resampling of the paste warp")
    hold_s: float = opt(0.5, "face lost: keep pasting the last face for this many seconds", min=0.0)
    fade_out_s: float = opt(0.4, "then cross-fade to the untouched frame over this many seconds", min=0.0)
    fade_in_s: float = opt(0.25, "face back: fade the filter in over this many seconds", min=0.0)
    fps: float = opt(30.0, "frame rate assumed when frames carry no timestamps", min=1.0)
    in_place: bool = opt(False, "paste into frame.image itself (saves a full-frame copy; the source frame changes)")


# ------------------------------------------------------------------------------------------------ masks


def oval_polygon(lm_crop: np.ndarray, forehead: float) -> np.ndarray:
    """Face-oval polygon [36, 2] with its upper part pushed up over the forehead. lm_crop: [468, 2]."""
    lm = np.asarray(lm_crop, np.float64)[:, :2]
    eyes = 0.5 * (lm[list(EYE_LEFT_LOOP)].mean(0) + lm[list(EYE_RIGHT_LOOP)].mean(0))
    up = eyes - lm[CHIN]
    height = float(np.hypot(*up))
    if height < 1e-6:
        return lm[list(OVAL_LOOP)]
    up /= height
    oval = lm[list(OVAL_LOOP)]
    top = float((lm[FOREHEAD_TOP] - eyes) @ up)
    w = np.clip(((oval - eyes) @ up) / max(top, 1e-6), 0.0, 1.0)
    w = np.sin(w * (math.pi / 2.0))  # smooth at eye level, full at the top
    return oval + (forehead * height) * w[:, None] * up[None, :]


def _fill(poly_list: list[np.ndarray], res: int, scale: float, value: int = 255,
          into: np.ndarray | None = None) -> np.ndarray:
    img = np.zeros((res, res), np.uint8) if into is None else into
    shift = 4
    pts = [np.round(p * scale * (1 << shift)).astype(np.int32) for p in poly_list]
    cv2.fillPoly(img, pts, value, lineType=cv2.LINE_AA, shift=shift)
    return img


def face_mask(lm_crop: np.ndarray, size: int, config: CompositeConfig | None = None,
              person: np.ndarray | None = None) -> np.ndarray:
    """Soft face mask in crop space.

    Args:
        lm_crop: [468, 2|3] landmarks in crop pixels (:func:`landmarks_to_crop`).
        size: crop side N.
        person: optional [N, N] float person probability (segmentation) to multiply in.
    Returns: [N, N] float32 in [0, 1].
    """
    cfg = config or CompositeConfig()
    res = min(size, cfg.mask_px)
    s = res / size
    m = _fill([oval_polygon(lm_crop, cfg.forehead)], res, s)
    e = int(round(cfg.erode * res))
    if e > 0:
        m = cv2.erode(m, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * e + 1, 2 * e + 1)))
    sigma = cfg.feather * res
    mf = m.astype(np.float32) * (1.0 / 255.0)
    if sigma > 0.3:
        mf = cv2.GaussianBlur(mf, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_CONSTANT)
    if res != size:
        mf = cv2.resize(mf, (size, size), interpolation=cv2.INTER_LINEAR)
    if person is not None:
        assert person.shape == (size, size), person.shape
        mf *= np.clip(person.astype(np.float32), 0.0, 1.0)
    return mf


def skin_region(lm_crop: np.ndarray, size: int) -> np.ndarray:
    """Cheeks/nose/forehead skin: the face oval shrunk to 80 %, minus eyes, brows and lips. [N, N] bool."""
    lm = np.asarray(lm_crop, np.float64)[:, :2]
    res = min(size, 128)
    s = res / size
    oval = lm[list(OVAL_LOOP)]
    c = oval.mean(0)
    m = _fill([c + (oval - c) * 0.8], res, s)
    holes = [cv2.convexHull(lm[list(idx)].astype(np.float32)).reshape(-1, 2).astype(np.float64)
             for idx in (EYE_LEFT_LOOP, EYE_RIGHT_LOOP, BROW_LEFT_LOOP, BROW_RIGHT_LOOP, LIPS_OUTER_LOOP)]
    holes = [h.mean(0) + (h - h.mean(0)) * 1.4 for h in holes]
    _fill(holes, res, s, value=0, into=m)
    if res != size:
        m = cv2.resize(m, (size, size), interpolation=cv2.INTER_NEAREST)
    return m > 127


def match_color(face: np.ndarray, original: np.ndarray, region: np.ndarray, strength: float = 1.0) -> np.ndarray:
    """Per-channel mean/std transfer so the face's skin matches the original's.

    Args: face, original [N, N, 3] float32 in [-1, 1]; region [N, N] bool (skin). Returns a new face array.
    """
    sel = region[::2, ::2]
    if sel.sum() < 16:
        return face
    f = face[::2, ::2][sel].astype(np.float64)
    o = original[::2, ::2][sel].astype(np.float64)
    mf, sf = f.mean(0), f.std(0) + 1e-4
    mo, so = o.mean(0), o.std(0) + 1e-4
    gain = np.clip(so / sf, 0.5, 2.0)
    out = (face - mf.astype(np.float32)) * gain.astype(np.float32) + mo.astype(np.float32)
    if strength < 1.0:
        out = face + (out - face) * np.float32(strength)
    return np.clip(out, -1.0, 1.0).astype(np.float32)


class PersonSegmenter:
    """MediaPipe selfie segmentation (model inside the wheel) on a crop → person probability."""

    def __init__(self) -> None:
        import_mediapipe()
        from mediapipe.python.solutions import selfie_segmentation  # noqa: PLC0415 - optional, heavy

        self._seg = selfie_segmentation.SelfieSegmentation(model_selection=0)

    def __call__(self, crop_rgb: np.ndarray) -> np.ndarray:
        """crop_rgb [N, N, 3] uint8 → [N, N] float32 in [0, 1]."""
        res = self._seg.process(np.ascontiguousarray(crop_rgb))
        if res.segmentation_mask is None:
            return np.ones(crop_rgb.shape[:2], np.float32)
        return np.asarray(res.segmentation_mask, np.float32)

    def close(self) -> None:
        self._seg.close()


# ------------------------------------------------------------------------------------------ paste: CPU


def to_hwc_float(face: object) -> np.ndarray:
    """A generated face as [N, N, 3] float32 in [-1, 1]: accepts that, uint8 [N, N, 3], or a torch
    tensor [3, N, N] / [1, 3, N, N] in [-1, 1]."""
    if hasattr(face, "detach"):  # torch tensor, CHW
        t = face.detach()
        if t.ndim == 4:
            t = t[0]
        face = t.float().permute(1, 2, 0).cpu().numpy()
    arr = np.asarray(face)
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) * (2.0 / 255.0) - 1.0
    return arr.astype(np.float32, copy=False)


def mask_bbox(mask: np.ndarray, thr: float = 1.0 / 512.0) -> tuple[int, int, int, int] | None:
    """(u0, v0, u1, v1) crop-pixel box holding the mask's support (exclusive ends), or None."""
    step = 4
    sub = mask[::step, ::step] > thr
    rows, cols = np.flatnonzero(sub.any(axis=1)), np.flatnonzero(sub.any(axis=0))
    if rows.size == 0:
        return None
    n = mask.shape[0]
    return (max(0, cols[0] * step - step), max(0, rows[0] * step - step),
            min(n, cols[-1] * step + 2 * step), min(n, rows[-1] * step + 2 * step))


def paste_roi(to_frame: np.ndarray, box: tuple[int, int, int, int], width: int, height: int,
              ) -> tuple[int, int, int, int] | None:
    """Frame bounding box (x0, y0, x1, y1) of a crop-space box, clipped to the frame, or None if outside."""
    u0, v0, u1, v1 = box
    c = apply_affine(to_frame, np.array([[u0 - 1, v0 - 1], [u0 - 1, v1], [u1, v1], [u1, v0 - 1]], np.float64))
    x0, y0 = max(0, int(np.floor(c[:, 0].min())) - 1), max(0, int(np.floor(c[:, 1].min())) - 1)
    x1, y1 = min(width, int(np.ceil(c[:, 0].max())) + 2), min(height, int(np.ceil(c[:, 1].max())) + 2)
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1


def paste_back(frame: np.ndarray, face: np.ndarray, to_frame: np.ndarray, mask: np.ndarray, *,
               alpha: float = 1.0, interpolation: Literal["linear", "cubic"] = "linear",
               out: np.ndarray | None = None) -> np.ndarray:
    """Blend a face crop into its frame through the crop's affine (CPU).

    Only the frame box covered by the mask is warped and blended.
    Args:
        frame: [H, W, 3] uint8 RGB (not modified unless ``out is frame``).
        face: [N, N, 3] float32 in [-1, 1] or uint8.
        to_frame: [2, 3] crop px → frame px.
        mask: [N, N] float32 in [0, 1].
        alpha: global opacity (fades).
        out: optional [H, W, 3] uint8 destination (may be ``frame`` for in-place).
    Returns: [H, W, 3] uint8.
    """
    h, w = frame.shape[:2]
    n = face.shape[0]
    assert face.shape[:2] == (n, n) and mask.shape == (n, n), (face.shape, mask.shape)
    if out is None:
        out = frame.copy()
    elif out is not frame:
        np.copyto(out, frame)
    if alpha <= 0.0:
        return out
    box = mask_bbox(mask)
    roi = paste_roi(to_frame, box, w, h) if box is not None else None
    if roi is None:
        return out
    x0, y0, x1, y1 = roi
    u0, v0, u1, v1 = box
    if face.dtype == np.uint8:
        f8 = np.ascontiguousarray(face[v0:v1, u0:u1])
    else:  # [-1, 1] → 0…255 in one pass (values are ≥ 0 after the offset up to tiny overshoots)
        f8 = cv2.convertScaleAbs(to_hwc_float(face)[v0:v1, u0:u1], alpha=127.5, beta=127.5)
    a8 = cv2.convertScaleAbs(mask[v0:v1, u0:u1], alpha=255.0 * min(1.0, float(alpha)))
    m = np.asarray(to_frame, np.float64).copy()
    # crop sub-box px → roi px
    m[:, 2] += m[:, 0] * u0 + m[:, 1] * v0 - np.array([x0, y0], np.float64)
    k = int(1.0 / max(float(np.hypot(m[0, 0], m[1, 0])), 1e-6))  # crop px per frame px
    if k >= 2:  # the crop is much finer than the frame here: box-filter it first (no aliasing, less work)
        hk, wk = (v1 - v0) // k, (u1 - u0) // k
        if hk >= 2 and wk >= 2:
            f8 = cv2.resize(f8[: hk * k, : wk * k], (wk, hk), interpolation=cv2.INTER_AREA)
            a8 = cv2.resize(a8[: hk * k, : wk * k], (wk, hk), interpolation=cv2.INTER_AREA)
            m[:, 2] += (m[:, 0] + m[:, 1]) * (k - 1) * 0.5
            m[:, :2] *= k
    # face and mask travel together as one RGBA uint8 image: one (vectorised 4-channel) warp instead of two
    rgba = cv2.cvtColor(f8, cv2.COLOR_RGB2RGBA)
    rgba[..., 3] = a8
    flag = cv2.INTER_CUBIC if interpolation == "cubic" else cv2.INTER_LINEAR
    size = (x1 - x0, y1 - y0)
    warped = cv2.warpAffine(rgba, m, size, flags=flag, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    wa = warped[..., 3].astype(np.float32)
    wa *= np.float32(1.0 / 255.0)
    base = np.ascontiguousarray(frame[y0:y1, x0:x1])
    out[y0:y1, x0:x1] = cv2.blendLinear(cv2.cvtColor(warped, cv2.COLOR_RGBA2RGB), base, wa, 1.0 - wa)
    return out


# ---------------------------------------------------------------------------------------- paste: torch


def paste_back_torch(frames: torch.Tensor, faces: torch.Tensor, to_frame: np.ndarray, masks: torch.Tensor,
                     alpha: float | np.ndarray = 1.0) -> torch.Tensor:
    """Batched paste-back on the frames' device (grid_sample into the union box of the crops).

    Args:
        frames: [B, 3, H, W] uint8 or float (0…255) RGB.
        faces: [B, 3, N, N] float in [-1, 1].
        to_frame: [B, 2, 3] crop px → frame px (numpy).
        masks: [B, 1, N, N] float in [0, 1].
        alpha: scalar or [B] opacity.
    Returns: [B, 3, H, W] with the dtype of ``frames`` (a new tensor).
    """
    b, _, h, w = frames.shape
    n = faces.shape[-1]
    assert faces.shape == (b, 3, n, n) and masks.shape == (b, 1, n, n), (faces.shape, masks.shape)
    tf = np.asarray(to_frame, np.float64).reshape(b, 2, 3)
    boxes = [paste_roi(tf[i], (0, 0, n, n), w, h) for i in range(b)]
    boxes = [bx for bx in boxes if bx is not None]
    out = frames.clone()
    if not boxes:
        return out
    x0, y0 = min(bx[0] for bx in boxes), min(bx[1] for bx in boxes)
    x1, y1 = max(bx[2] for bx in boxes), max(bx[3] for bx in boxes)
    inv = invert_affine(tf)  # frame px → crop px
    inv[:, :, 2] += inv[:, :, 0] * x0 + inv[:, :, 1] * y0  # roi px → crop px
    m = torch.as_tensor(inv, device=frames.device, dtype=torch.float32)
    grid = affine_grid_pixels(m, y1 - y0, x1 - x0, n, n)
    src = torch.cat([(faces.float() + 1.0) * 127.5, masks.float()], dim=1)
    warped = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    a = torch.as_tensor(np.broadcast_to(np.asarray(alpha, np.float32), (b,)).copy(), device=frames.device)
    a = warped[:, 3:4].clamp(0.0, 1.0) * a.view(b, 1, 1, 1)
    base = frames[:, :, y0:y1, x0:x1].float()
    res = base + (warped[:, :3] - base) * a
    if frames.dtype == torch.uint8:
        res = (res.clamp(0.0, 255.0) + 0.5).to(torch.uint8)
    out[:, :, y0:y1, x0:x1] = res.to(frames.dtype)
    return out


# ------------------------------------------------------------------------------------------- face loss


@dataclass
class HoldState:
    """What to show for one frame."""

    mode: Literal["live", "hold", "off"]  # paste the current face / the last face / nothing
    alpha: float  # opacity of the pasted face in [0, 1]


class FaceHold:
    """Face-loss state machine: live → (lost) hold ``hold_s`` → fade out → off → (found) fade in → live.

    Times come from frame timestamps (seconds) when given, else frame counting at ``fps``.
    """

    def __init__(self, config: CompositeConfig | None = None) -> None:
        self.cfg = config or CompositeConfig()
        self.reset()

    def reset(self) -> None:
        self.mode: Literal["live", "hold", "off"] = "off"
        self.alpha = 0.0
        self._t: float | None = None
        self._lost_at = 0.0

    def update(self, has_face: bool, t: float | None = None) -> HoldState:
        step = 1.0 / self.cfg.fps
        if t is None:
            t = (self._t + step) if self._t is not None else 0.0
        dt = step if self._t is None else min(max(t - self._t, 0.0), 10.0 * step)
        self._t = t
        if has_face:
            rate = dt / self.cfg.fade_in_s if self.cfg.fade_in_s > 0 else 1.0
            self.alpha = min(1.0, self.alpha + max(rate, 1e-3))  # a (re)appearance starts at one step
            self.mode = "live"
            return HoldState("live", self.alpha)
        if self.mode == "live":
            self.mode, self._lost_at = "hold", t
        if self.mode == "hold":
            if t - self._lost_at > self.cfg.hold_s:
                rate = dt / self.cfg.fade_out_s if self.cfg.fade_out_s > 0 else 1.0
                self.alpha = max(0.0, self.alpha - rate)
            if self.alpha <= 0.0:
                self.mode = "off"
        return HoldState(self.mode, self.alpha if self.mode == "hold" else 0.0)


@dataclass
class _Pasted:
    face: np.ndarray  # [N, N, 3] float32 in [-1, 1]
    mask: np.ndarray  # [N, N] float32
    to_frame: np.ndarray  # [2, 3]


class Compositor:
    """Per-stream paste-back: mask → colour match → paste, with hold/fade when the face goes. Never raises."""

    def __init__(self, config: CompositeConfig | None = None) -> None:
        self.cfg = config or CompositeConfig()
        self.hold = FaceHold(self.cfg)
        self._last: _Pasted | None = None
        self._segmenter: PersonSegmenter | None = None
        self._errors = 0

    def composite(self, frame: Frame, track: Track | None, crop: Crop | None, face: object | None) -> Output:
        """Blend ``face`` (generated from ``crop``) into ``frame``.

        face: [N, N, 3] float32 in [-1, 1] / uint8, or a torch tensor [3, N, N]; None when no face was
        generated. Returns an Output whose image is ``frame.image`` itself when nothing is pasted.
        """
        try:
            image, pasted = self._composite(frame, track, crop, face)
        except Exception:  # a broken frame must not end the stream
            self._errors += 1
            if self._errors <= 3 or self._errors % 100 == 0:
                log.exception("paste-back failed on frame %d (showing it untouched)", frame.index)
            image, pasted = frame.image, False
        return Output(image=image, index=frame.index, pts=frame.pts, time_base=frame.time_base,
                      capture_ns=frame.capture_ns, face=pasted)

    def _composite(self, frame: Frame, track: Track | None, crop: Crop | None,
                   face: object | None) -> tuple[np.ndarray, bool]:
        has = track is not None and track.has_face and crop is not None and face is not None
        if has:
            assert track is not None and crop is not None and track.landmarks is not None
            f = to_hwc_float(face)
            n = crop.size
            lm_crop = landmarks_to_crop(track.landmarks, crop.to_frame)
            person = None
            if self.cfg.segmentation:
                if self._segmenter is None:
                    self._segmenter = PersonSegmenter()
                src = _crop_uint8(crop.image)
                person = self._segmenter(src)
            mask = face_mask(lm_crop, n, self.cfg, person)
            if self.cfg.color_match:
                f = match_color(f, crop.hwc(), skin_region(lm_crop, n), self.cfg.color_strength)
            self._last = _Pasted(f, mask, np.asarray(crop.to_frame, np.float64))
        state = self.hold.update(has, frame.time_s)
        if state.mode == "off" or state.alpha <= 0.0 or self._last is None:
            if state.mode == "off":
                self._last = None
            return frame.image, False
        p = self._last
        img = paste_back(frame.image, p.face, p.to_frame, p.mask, alpha=state.alpha,
                         interpolation=self.cfg.interpolation, out=frame.image if self.cfg.in_place else None)
        return img, True

    def reset(self) -> None:
        self.hold.reset()
        self._last = None

    def close(self) -> None:
        if self._segmenter is not None:
            self._segmenter.close()
            self._segmenter = None


def _crop_uint8(img: object) -> np.ndarray:
    arr = to_hwc_float(img)
    return np.clip((arr + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
