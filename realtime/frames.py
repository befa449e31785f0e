"""The values that move through the frame pipeline (DESIGN §2).

source ─Frame─▶ tracking ─Track─▶ align ─Crop─▶ encode ─Encoded─▶ edit ─Encoded─▶ generate ─▶ composite ─Output─▶ sink

Pixel data is converted once at the source into :data:`PixelFormat.RGB24` (H×W×3 uint8, C-contiguous);
every later stage may rely on that.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal

import numpy as np
import torch


class PixelFormat(enum.StrEnum):
    """Pixel layouts used inside the pipeline. Only RGB24 travels between stages."""

    RGB24 = "rgb24"  # H×W×3 uint8, R,G,B order


def now_ns() -> int:
    """Monotonic clock used for capture times and latency (nanoseconds)."""
    return time.monotonic_ns()


@dataclass(slots=True)
class Frame:
    """One decoded video frame."""

    image: np.ndarray  # [H, W, 3] uint8 RGB24, C-contiguous
    index: int  # 0-based position in the source, counting every decoded frame
    pts: int | None = None  # presentation timestamp in time_base units (None for synthetic sources)
    time_base: Fraction | None = None  # unit of pts
    capture_ns: int = field(default_factory=now_ns)  # monotonic time the frame entered the pipeline
    format: PixelFormat = PixelFormat.RGB24

    def __post_init__(self) -> None:
        img = self.image
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"Frame.image must be HxWx3 uint8 RGB, got {img.dtype} {img.shape}")

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def time_s(self) -> float | None:
        """Presentation time in seconds, when the source has timestamps."""
        if self.pts is None or self.time_base is None:
            return None
        return float(self.pts * self.time_base)


@dataclass(slots=True)
class Track:
    """What tracking found in one frame."""

    landmarks: np.ndarray | None  # [468, 3] float32 in image pixels (x, y, z·width) or None: no face
    score: float = 0.0  # detector/tracker confidence in [0, 1]
    quad: np.ndarray | None = None  # [4, 2] float32 stabilised FFHQ quad (TL, BL, BR, TR) in pixels
    detected: bool = False  # True when the full detector ran on this frame (not only tracking)

    @property
    def has_face(self) -> bool:
        return self.landmarks is not None and self.quad is not None


@dataclass(slots=True)
class Crop:
    """An aligned face and the transform back to its frame."""

    image: torch.Tensor  # [3, N, N] float32 in [-1, 1] (CHW), on the device that made it
    to_frame: np.ndarray  # [2, 3] float64 affine mapping crop pixel coords to frame pixel coords
    size: int  # N

    def __post_init__(self) -> None:
        img = self.image
        if not isinstance(img, torch.Tensor) or img.ndim != 3 or img.shape[0] != 3 or img.shape[1] != img.shape[2]:
            raise ValueError(f"Crop.image must be a [3, N, N] tensor, got {type(img).__name__} "
                             f"{tuple(getattr(img, 'shape', ()))}")

    def hwc(self) -> np.ndarray:
        """The crop as [N, N, 3] float32 numpy in [-1, 1] (a view on CPU)."""
        return self.image.detach().permute(1, 2, 0).float().cpu().numpy()


EncodedSource = Literal["key", "reuse"]


@dataclass(slots=True)
class Encoded:
    """A W+ code and which encoder produced it."""

    ws: torch.Tensor  # [1, num_ws, w_dim] float32 on the engine device
    source: EncodedSource  # "key": FrEN (all layers, or fine layers refreshed); "reuse": ViEN, fine layers reused
    why: str = ""  # for key frames: "start", "interval" or "drift"


@dataclass(slots=True)
class Output:
    """A finished frame ready for a sink."""

    image: np.ndarray  # [H, W, 3] uint8 RGB24
    index: int  # index of the source frame it came from
    pts: int | None
    time_base: Fraction | None
    capture_ns: int  # copied from the source frame, for end-to-end latency
    face: bool = False  # a face was found and the filter applied
    timings_ms: dict[str, float] = field(default_factory=dict)  # per-stage times for this frame
