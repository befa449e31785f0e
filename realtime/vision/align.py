"""FFHQ alignment: the oriented crop quad from face-mesh landmarks, and warps into/out of it (DESIGN §2).

The quad is the one of the ffhq-dataset script (``recreate_aligned_images``), computed from the eye centres
(mean of each MediaPipe eye contour) and the mouth corners (mesh points 61 and 291). A crop of size N maps
its pixel grid onto the quad; ``to_frame`` ([2, 3]) takes crop pixel coordinates to frame pixel coordinates.

Coordinates are OpenCV pixel-index coordinates throughout (pixel ``i`` has its centre at ``i``).

Faces whose quad leaves the frame are padded as FFHQ does — reflect, blur the reflected border, fade it to
the median colour — but computed in crop space and only when the quad actually crosses a frame edge, so the
common case costs one ``warpAffine`` (CPU) or one ``grid_sample`` (torch).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from models.config import opt
from realtime.frames import Crop, Frame, Track
from realtime.vision.geometry import apply_affine, crop_affine
from realtime.vision.topology import EYE_LEFT, EYE_RIGHT, MOUTH_LEFT, MOUTH_RIGHT


@dataclass
class AlignConfig:
    """How crops are cut from frames."""

    size: int = opt(256, "crop side N in pixels (128…1024); must match the bundle's preprocessing contract", min=8,
                    max=4096)
    pad: bool = opt(True, "FFHQ padding (reflect + blur + fade to median) where the quad leaves the frame")
    antialias: bool = opt(True, "box-filter the frame first when the crop shrinks it by 2× or more")


# ----------------------------------------------------------------------------------------------- quads


def ffhq_quad(
    eye_left: np.ndarray, eye_right: np.ndarray, mouth_left: np.ndarray, mouth_right: np.ndarray
) -> np.ndarray:
    """The FFHQ crop quad from eye centres and mouth corners.

    Args: each [..., 2] pixel coordinates (image-left eye/mouth corner first).
    Returns: [..., 4, 2] float32 corners (TL, BL, BR, TR), exactly as ``recreate_aligned_images``.
    """
    eye_left = np.asarray(eye_left, np.float64)
    eye_right = np.asarray(eye_right, np.float64)
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (np.asarray(mouth_left, np.float64) + np.asarray(mouth_right, np.float64)) * 0.5
    eye_to_mouth = mouth_avg - eye_avg
    flip = np.array([-1.0, 1.0])
    x = eye_to_eye - eye_to_mouth[..., ::-1] * flip
    x = x / np.hypot(x[..., 0], x[..., 1])[..., None]
    scale = np.maximum(
        np.hypot(eye_to_eye[..., 0], eye_to_eye[..., 1]) * 2.0,
        np.hypot(eye_to_mouth[..., 0], eye_to_mouth[..., 1]) * 1.8,
    )
    x = x * scale[..., None]
    y = x[..., ::-1] * flip
    c = eye_avg + eye_to_mouth * 0.1
    quad = np.stack([c - x - y, c - x + y, c + x + y, c + x - y], axis=-2)
    return quad.astype(np.float32)


def quad_from_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """FFHQ quad from MediaPipe mesh landmarks.

    Args: landmarks [..., 468, 2 or 3] in pixels (z ignored).
    Returns: [..., 4, 2] float32 (TL, BL, BR, TR).
    """
    lm = np.asarray(landmarks)
    assert lm.shape[-2] >= 468 and lm.shape[-1] in (2, 3), lm.shape
    xy = lm[..., :2].astype(np.float64)
    eye_l = xy[..., EYE_LEFT, :].mean(axis=-2)
    eye_r = xy[..., EYE_RIGHT, :].mean(axis=-2)
    return ffhq_quad(eye_l, eye_r, xy[..., MOUTH_LEFT, :], xy[..., MOUTH_RIGHT, :])


def quad_size(quad: np.ndarray) -> float:
    """Side length of a quad in pixels (FFHQ's ``qsize``). quad: [4, 2]."""
    q = np.asarray(quad, np.float64)
    return float(0.5 * (np.hypot(*(q[3] - q[0])) + np.hypot(*(q[1] - q[0]))))


# ----------------------------------------------------------------------------------------------- CPU


def _shrink_factor(m: np.ndarray) -> int:
    """Integer box-filter factor for an affine crop→frame whose pixel step is |column|."""
    step = float(np.hypot(m[0, 0], m[1, 0]))
    return max(1, int(np.floor(step)))


def warp_to_crop(
    image: np.ndarray,
    to_frame: np.ndarray,
    size: int,
    *,
    antialias: bool = True,
    border: int = cv2.BORDER_REFLECT,
    interpolation: int = cv2.INTER_LINEAR,
) -> np.ndarray:
    """Sample ``image`` on the crop grid of ``to_frame``.

    Only the bounding box of the crop (clipped to the frame) is touched; when the crop shrinks the frame by
    k ≥ 2 that box is first box-filtered by k (cv2.INTER_AREA), as FFHQ's shrink step.
    Args: image [H, W, C] uint8/float32, to_frame [2, 3]. Returns [size, size, C] of image's dtype.
    """
    h, w = image.shape[:2]
    m = np.asarray(to_frame, np.float64)
    corners = apply_affine(m, np.array([[-1, -1], [-1, size], [size, size], [size, -1]], np.float64))
    k = _shrink_factor(m) if antialias else 1
    # ROI in frame pixels, aligned to k so the box filter grid is the same as the torch path's.
    x0 = max(0, int(np.floor(corners[:, 0].min())) - 2)
    y0 = max(0, int(np.floor(corners[:, 1].min())) - 2)
    x1 = min(w, int(np.ceil(corners[:, 0].max())) + 3)
    y1 = min(h, int(np.ceil(corners[:, 1].max())) + 3)
    x0, y0 = (x0 // k) * k, (y0 // k) * k
    if k > 1:
        x1 = x0 + max(k, ((x1 - x0) // k) * k)
        y1 = y0 + max(k, ((y1 - y0) // k) * k)
        while x1 > w:
            x1 -= k
        while y1 > h:
            y1 -= k
    if x1 - x0 < 1 or y1 - y0 < 1:  # crop entirely outside the frame: reflect the whole frame
        x0, y0, x1, y1 = 0, 0, w, h
        k = 1
    roi = image[y0:y1, x0:x1]
    if k > 1:
        roi = cv2.resize(roi, ((x1 - x0) // k, (y1 - y0) // k), interpolation=cv2.INTER_AREA)
    # crop → roi coords: frame = k·roi + (k-1)/2 + offset
    mr = m.copy()
    mr[:, 2] -= (x0 + (k - 1) * 0.5, y0 + (k - 1) * 0.5)
    mr /= k
    flags = interpolation | cv2.WARP_INVERSE_MAP
    if roi.ndim == 3 and roi.shape[2] == 3 and roi.dtype == np.uint8:
        # OpenCV's 4-channel bilinear warp is vectorised, its 3-channel one is not (≈2–3× slower at 1024²);
        # the two colour conversions touch only the small source box and one output pass.
        out = cv2.warpAffine(cv2.cvtColor(roi, cv2.COLOR_RGB2RGBA), mr, (size, size), flags=flags,
                             borderMode=border)
        return cv2.cvtColor(out, cv2.COLOR_RGBA2RGB)
    return cv2.warpAffine(roi, mr, (size, size), flags=flags, borderMode=border)


def _pad_params(quad: np.ndarray, width: int, height: int) -> tuple[np.ndarray, float] | None:
    """FFHQ padding amounts (left, top, right, bottom) in frame px, or None when no padding is needed."""
    q = np.asarray(quad, np.float64)
    qsize = quad_size(q)
    border = max(int(np.rint(qsize * 0.1)), 3)
    lo = np.floor(q.min(axis=0))
    hi = np.ceil(q.max(axis=0))
    pad = np.array([-lo[0] + border, -lo[1] + border, hi[0] - width + border, hi[1] - height + border])
    pad = np.maximum(pad, 0)
    if pad.max() <= border - 4:
        return None
    # Only sides the crop box actually crosses need a ramp; FFHQ's extra 0.3·qsize on the other sides lies
    # outside the quad and never reaches the crop.
    active = pad > 0
    pad = np.where(active, np.maximum(pad, np.rint(qsize * 0.3)), 0.0)
    return pad, qsize


def _pad_mask(to_frame: np.ndarray, size: int, pad: np.ndarray, width: int, height: int) -> np.ndarray:
    """FFHQ's padding ramp evaluated on the crop grid: >0 outside the frame, 1 at the padded edge. [N, N]."""
    m = np.asarray(to_frame, np.float64)
    u = np.arange(size, dtype=np.float32)
    xs = (m[0, 0] * u)[None, :] + (m[0, 1] * u)[:, None] + np.float32(m[0, 2])
    ys = (m[1, 0] * u)[None, :] + (m[1, 1] * u)[:, None] + np.float32(m[1, 2])
    mask = np.full((size, size), -np.inf, np.float32)
    # signed distance inside each edge, divided by that side's pad: FFHQ's 1 - x/pad in padded coordinates
    for p, dist in ((pad[0], xs), (pad[1], ys), (pad[2], (width - 1) - xs), (pad[3], (height - 1) - ys)):
        if p > 0:
            np.maximum(mask, -dist / np.float32(p), out=mask)
    return mask


def _apply_ffhq_pad(crop: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Blur and median-fade the reflected border of a float32 crop [N, N, 3] in place (FFHQ's formulas)."""
    size = crop.shape[0]
    sigma = 0.02 * size  # FFHQ blurs with qsize·0.02 frame px; the crop spans qsize → N
    blur = cv2.GaussianBlur(crop, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)
    wb = np.clip(mask * 3.0 + 1.0, 0.0, 1.0)[..., None]
    crop += (blur - crop) * wb
    med = np.median(crop[::4, ::4].reshape(-1, crop.shape[2]), axis=0).astype(np.float32)
    wm = np.clip(mask, 0.0, 1.0)[..., None]
    crop += (med - crop) * wm
    return crop


def align_crop(image: np.ndarray, quad: np.ndarray, size: int = 256, *, pad: bool = True,
               antialias: bool = True) -> Crop:
    """Cut the aligned face out of a frame (CPU, OpenCV).

    Args: image [H, W, 3] uint8 RGB; quad [4, 2] (TL, BL, BR, TR) frame pixels; size N.
    Returns: Crop with image [3, N, N] float32 in [-1, 1] (a CPU tensor; ``Crop.hwc()`` is the numpy view) and
    to_frame [2, 3].
    """
    assert image.ndim == 3 and image.shape[2] == 3, image.shape
    if not 8 <= size <= 4096:
        raise ValueError(f"crop size must be in 8…4096, got {size}")
    h, w = image.shape[:2]
    to_frame = crop_affine(quad, size)
    crop8 = warp_to_crop(image, to_frame, size, antialias=antialias)
    params = _pad_params(quad, w, h) if pad else None
    if params is not None:
        crop = _apply_ffhq_pad(crop8.astype(np.float32), _pad_mask(to_frame, size, params[0], w, h))
        crop *= 2.0 / 255.0
        crop -= 1.0
    else:  # one pass: uint8 → [-1, 1]
        crop = np.empty(crop8.shape, np.float32)
        np.multiply(crop8, np.float32(2.0 / 255.0), out=crop, casting="unsafe")
        crop -= 1.0
    return Crop(image=torch.from_numpy(crop).permute(2, 0, 1), to_frame=to_frame, size=size)


def align(frame: Frame, track: Track, config: AlignConfig | None = None) -> Crop | None:
    """The pipeline's align stage (CPU): the crop for a tracked face, or None when there is no face."""
    if not track.has_face:
        return None
    cfg = config or AlignConfig()
    return align_crop(frame.image, np.asarray(track.quad), cfg.size, pad=cfg.pad, antialias=cfg.antialias)


# ----------------------------------------------------------------------------------------------- torch


def _gaussian_kernel1d(sigma: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    radius = max(1, int(np.ceil(sigma * 4.0)))  # OpenCV's (0, 0) kernel for float images: ~4σ
    x = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur_torch(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with reflect borders. x: [B, C, H, W] float → same shape."""
    b, c, h, w = x.shape
    k = _gaussian_kernel1d(sigma, x.device, x.dtype)
    r = (k.numel() - 1) // 2
    y = x.reshape(b * c, 1, h, w)
    y = F.pad(y, (r, r, 0, 0), mode="reflect") if r < w else F.pad(y, (r, r, 0, 0), mode="replicate")
    y = F.conv2d(y, k.view(1, 1, 1, -1))
    y = F.pad(y, (0, 0, r, r), mode="reflect") if r < h else F.pad(y, (0, 0, r, r), mode="replicate")
    y = F.conv2d(y, k.view(1, 1, -1, 1))
    return y.reshape(b, c, h, w)


def affine_grid_pixels(m: torch.Tensor, out_h: int, out_w: int, in_h: int, in_w: int) -> torch.Tensor:
    """grid_sample grid (align_corners=False) for affines m [B, 2, 3] mapping output px → input px.

    Returns [B, out_h, out_w, 2] normalised coordinates.
    """
    dev, dt = m.device, m.dtype
    v, u = torch.meshgrid(
        torch.arange(out_h, device=dev, dtype=dt), torch.arange(out_w, device=dev, dtype=dt), indexing="ij"
    )
    x = m[:, 0, 0, None, None] * u + m[:, 0, 1, None, None] * v + m[:, 0, 2, None, None]
    y = m[:, 1, 0, None, None] * u + m[:, 1, 1, None, None] * v + m[:, 1, 2, None, None]
    gx = (2.0 * x + 1.0) / in_w - 1.0
    gy = (2.0 * y + 1.0) / in_h - 1.0
    return torch.stack([gx, gy], dim=-1)


def align_crops_torch(
    images: torch.Tensor, quads: np.ndarray | torch.Tensor, size: int = 256, *, pad: bool = True,
    antialias: bool = True,
) -> tuple[torch.Tensor, np.ndarray]:
    """Batched alignment on the images' device (grid_sample).

    Args:
        images: [B, 3, H, W] uint8 (0…255) or float (0…255) RGB, any device.
        quads: [B, 4, 2] frame pixels (TL, BL, BR, TR).
        size: N.
    Returns:
        crops [B, 3, N, N] float32 in [-1, 1] on images.device, and to_frame [B, 2, 3] float64 (numpy).
    """
    assert images.ndim == 4 and images.shape[1] == 3, tuple(images.shape)
    b, _, h, w = images.shape
    q = np.asarray(quads.detach().cpu().numpy() if isinstance(quads, torch.Tensor) else quads, np.float64)
    assert q.shape == (b, 4, 2), q.shape
    to_frame = np.stack([crop_affine(qi, size) for qi in q])  # [B, 2, 3]
    x = images.float()
    out = torch.empty((b, 3, size, size), device=images.device, dtype=torch.float32)
    ks = [(_shrink_factor(t) if antialias else 1) for t in to_frame]
    for k in sorted(set(ks)):  # one grid_sample per distinct box-filter factor (usually one)
        idx = [i for i, ki in enumerate(ks) if ki == k]
        src = x[idx]
        mk = to_frame[idx].copy()
        if k > 1:
            src = F.avg_pool2d(src, kernel_size=k, stride=k)
            mk[:, :, 2] -= (k - 1) * 0.5
            mk /= k
        m_t = torch.as_tensor(mk, device=images.device, dtype=torch.float32)
        grid = affine_grid_pixels(m_t, size, size, src.shape[2], src.shape[3])
        out[idx] = F.grid_sample(src, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if pad:
        for i in range(b):
            params = _pad_params(q[i], w, h)
            if params is None:
                continue
            mask = torch.as_tensor(_pad_mask(to_frame[i], size, params[0], w, h), device=images.device)
            ci = out[i : i + 1]
            blur = gaussian_blur_torch(ci, 0.02 * size)
            ci = ci + (blur - ci) * (mask * 3.0 + 1.0).clamp(0.0, 1.0)
            med = ci[0, :, ::4, ::4].reshape(3, -1).median(dim=1).values.view(1, 3, 1, 1)
            ci = ci + (med - ci) * mask.clamp(0.0, 1.0)
            out[i : i + 1] = ci
    out.mul_(2.0 / 255.0).sub_(1.0)
    return out, to_frame
