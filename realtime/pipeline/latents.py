"""The latent policy of a stream: when FrEN runs, when ViEN reuses the previous frame's fine layers, and how
refreshed fine layers are blended in (Video2StyleGAN, plus key-frame refreshes it does not have).

Video2StyleGAN reuses the fine layers forever; we refresh them with FrEN on the first frame, after the face was lost,
every ``key_interval`` frames and when the aligned crop drifts from the last key frame's (lighting or appearance
change). A refresh blends the new fine layers in over ``fine_blend_frames`` frames so the appearance does not jump.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from realtime.engines import Engine
from realtime.frames import Crop, Encoded
from realtime.pipeline.config import PipelineConfig


@dataclass
class LatentState:
    """What one stream's latent policy carries from frame to frame (never shared between streams)."""

    prev_ws: torch.Tensor | None = None  # [1, num_ws, w_dim] on the engine device
    since_key: int = 0  # frames since the last FrEN refresh
    key_thumb: torch.Tensor | None = None  # [3, 16, 16] crop thumbnail at the last key frame
    blend_from: torch.Tensor | None = None  # [1, num_fine, w_dim] fine layers being blended away from
    blend_to: torch.Tensor | None = None  # [1, num_fine, w_dim] fine layers being blended towards
    blend_step: int = 0
    key_frames: int = 0  # FrEN runs so far

    def reset(self) -> None:
        """The face was lost: the next face frame starts from a key frame."""
        self.prev_ws = self.key_thumb = self.blend_from = self.blend_to = None
        self.blend_step = 0


class LatentPolicy:
    """Decides per frame between a key frame (FrEN) and reuse (ViEN), and runs the engine accordingly."""

    def __init__(self, config: PipelineConfig):
        self.cfg = config

    def why_key(self, state: LatentState, thumb: torch.Tensor) -> str | None:
        """"start", "interval" or "drift" when this frame must be a key frame, else None."""
        if state.prev_ws is None:
            return "start"
        if self.cfg.key_interval and state.since_key >= self.cfg.key_interval:
            return "interval"
        drift = float((thumb - state.key_thumb).abs().mean()) if state.key_thumb is not None else 0.0
        if self.cfg.drift_threshold > 0 and drift > self.cfg.drift_threshold:
            return "drift"
        return None

    def encode(self, engine: Engine, crop: Crop, state: LatentState) -> Encoded:
        """The W+ of ``crop`` ([3, S, S] on the engine device) for this stream."""
        x = crop.image.unsqueeze(0)  # [1, 3, S, S]
        c = engine.num_coarse
        thumb = F.adaptive_avg_pool2d(x.float(), 16)[0]
        why = self.why_key(state, thumb)
        if why == "start":
            ws = engine.encode_key(x)
        elif why is not None:
            key_ws = engine.encode_key(x)
            ws = engine.encode_reuse(x, state.prev_ws)
            # Blend the refreshed fine layers in over a few frames instead of switching at once.
            state.blend_from, state.blend_to, state.blend_step = ws[:, c:].clone(), key_ws[:, c:], 0
        else:
            ws = engine.encode_reuse(x, state.prev_ws)
        if why is not None:
            state.since_key, state.key_thumb = 0, thumb
            state.key_frames += 1
        else:
            state.since_key += 1
        if state.blend_to is not None:
            state.blend_step += 1
            t = min(1.0, state.blend_step / max(1, self.cfg.fine_blend_frames))
            ws = torch.cat([ws[:, :c], torch.lerp(state.blend_from, state.blend_to, t)], dim=1)
            if t >= 1.0:
                state.blend_from = state.blend_to = None
        state.prev_ws = ws
        return Encoded(ws=ws, source="key" if why is not None else "reuse", why=why or "")
