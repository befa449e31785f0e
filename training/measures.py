"""Attribute measures of a face from its 468 mesh landmarks (torch, differentiable): how open the mouth is, how
much it smiles, eye openness, brow raise, and 2-D proxies of yaw, pitch and roll. Edit discovery
(training/directions.py) fits and scores directions with them; adaptation and the offline expression optimiser
report them.
"""

from __future__ import annotations

import torch

from realtime.vision.topology import (
    BROW_LEFT_LOOP,
    BROW_RIGHT_LOOP,
    CHEEK_LEFT,
    CHEEK_RIGHT,
    CHIN,
    EYE_LEFT,
    EYE_LEFT_CORNERS,
    EYE_LEFT_LOWER,
    EYE_LEFT_UPPER,
    EYE_RIGHT,
    EYE_RIGHT_CORNERS,
    EYE_RIGHT_LOWER,
    EYE_RIGHT_UPPER,
    FOREHEAD_TOP,
    JAW,
    LIP_BOTTOM,
    LIP_TOP,
    LIPS_INNER_LOOP,
    LIPS_LOWER_INNER,
    LIPS_OUTER_LOOP,
    LIPS_UPPER_INNER,
    MOUTH_LEFT,
    MOUTH_RIGHT,
    NOSE_TIP,
)

MEASURES = ("mouth_open", "smile", "eyes_open", "brow_raise", "yaw", "pitch", "roll")
# landmarks each measure is about (realtime.vision.topology; the rest count as "non-targeted" when an edit is scored)
MEASURE_REGION: dict[str, tuple[int, ...]] = {
    "mouth_open": LIPS_OUTER_LOOP + LIPS_INNER_LOOP + JAW,  # lips and chin
    "smile": LIPS_OUTER_LOOP + LIPS_INNER_LOOP,
    "eyes_open": EYE_LEFT + EYE_RIGHT,
    "brow_raise": BROW_LEFT_LOOP + BROW_RIGHT_LOOP,
}
POSE_MEASURES = ("yaw", "pitch", "roll")


def face_measures(lm: torch.Tensor) -> dict[str, torch.Tensor]:
    """Attribute measures of face-mesh landmarks [B, 468, ≥2] (crop or frame px) → {name: [B]}.

    Lengths are in inter-ocular distances (iod), so they do not depend on the crop size:
    mouth_open = inner-lip gap; smile = lift of the outer mouth corners above the lip centre plus half the
    mouth width; eyes_open = lid gap / eye width; brow_raise = brow height above the eye centres; yaw = nose-tip
    offset from the cheek midpoint / cheek distance (> 0: nose to image right); pitch = nose-tip height above the
    cheek line / face height (> 0: nose up); roll = eye-line angle in degrees (clockwise > 0).
    """
    xy = lm[..., :2].to(torch.float32)

    def p(*idx: int) -> torch.Tensor:
        return xy[:, list(idx)].mean(1)

    eye_l, eye_r = p(*EYE_LEFT), p(*EYE_RIGHT)
    iod = (eye_r - eye_l).norm(dim=-1).clamp_min(1e-3)
    gap = (p(*LIPS_LOWER_INNER[3:6]) - p(*LIPS_UPPER_INNER[3:6])).norm(dim=-1)
    corners = p(MOUTH_LEFT, MOUTH_RIGHT)
    mid = p(LIP_TOP, LIP_BOTTOM)
    width = (xy[:, MOUTH_RIGHT] - xy[:, MOUTH_LEFT]).norm(dim=-1)

    def lids(upper: tuple[int, ...], lower: tuple[int, ...], corners: tuple[int, int]) -> torch.Tensor:
        """Lid gap at the three middle lid points / eye width."""
        gap = (xy[:, list(lower[2:5])] - xy[:, list(upper[2:5])]).norm(dim=-1).mean(1)
        return gap / (xy[:, corners[1]] - xy[:, corners[0]]).norm(dim=-1).clamp_min(1e-3)

    lid_l = lids(EYE_LEFT_UPPER, EYE_LEFT_LOWER, EYE_LEFT_CORNERS)
    lid_r = lids(EYE_RIGHT_UPPER, EYE_RIGHT_LOWER, EYE_RIGHT_CORNERS)
    brows = (p(*BROW_LEFT_LOOP) + p(*BROW_RIGHT_LOOP)) / 2
    eyes = (eye_l + eye_r) / 2
    cheek_l, cheek_r = xy[:, CHEEK_LEFT], xy[:, CHEEK_RIGHT]
    cheeks = (cheek_l + cheek_r) / 2
    nose = xy[:, NOSE_TIP]
    face_h = (xy[:, CHIN] - xy[:, FOREHEAD_TOP]).norm(dim=-1).clamp_min(1e-3)
    d = eye_r - eye_l
    return {
        "mouth_open": gap / iod,
        "smile": (mid[:, 1] - corners[:, 1]) / iod + 0.5 * width / iod,
        "eyes_open": (lid_l + lid_r) / 2,
        "brow_raise": (eyes[:, 1] - brows[:, 1]) / iod,
        "yaw": (nose[:, 0] - cheeks[:, 0]) / (cheek_r[:, 0] - cheek_l[:, 0]).abs().clamp_min(1e-3),
        "pitch": (cheeks[:, 1] - nose[:, 1]) / face_h,
        "roll": torch.rad2deg(torch.atan2(d[:, 1], d[:, 0])),
    }


def stack_measures(m: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.stack([m[k] for k in MEASURES], 1)
