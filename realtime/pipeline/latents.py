"""The latent policy of a stream: when the key-frame encoder (FrEN, e4e or pSp) runs, how the frames between key
frames get their coarse layers while reusing the fine ones, and how refreshed fine layers are blended in
(Video2StyleGAN, plus key-frame refreshes it does not have).

Reuse modes (``PipelineConfig.reuse``):

* ``vien``   — Video2StyleGAN: ViEN infers the coarse layers from the crop and the previous W+.
* ``coarse`` — no ViEN needed: the key-frame encoder's own coarse layers for this crop (``Engine.encode_coarse``; an
  e4e / pSp encoder runs without its fine heads), the fine layers carried from the last key frame.
* ``off``    — the key-frame encoder on every frame (all layers; no reuse).
* ``auto``   — ``vien`` when the engine has a ViEN, else ``coarse``.

Video2StyleGAN reuses the fine layers forever; we refresh them with the key-frame encoder on the first frame, after
the face was lost, every ``key_interval`` frames and when the aligned crop drifts from the last key frame's
(lighting or appearance change). A refresh blends the new fine layers in over ``fine_blend_frames`` frames so the
appearance does not jump.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models.errors import UserError
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
    """Decides per frame between a key frame (the key-frame encoder) and reuse (ViEN or the key encoder's coarse
    layers), and runs the engine accordingly."""

    def __init__(self, config: PipelineConfig):
        self.cfg = config

    def mode(self, engine: Engine) -> str:
        """The reuse mode for ``engine``: "vien", "coarse" or "off" (``auto`` resolved). ``vien`` on an engine
        without a ViEN is a UserError."""
        mode = self.cfg.reuse
        if mode == "auto":
            return "vien" if engine.has_vien else "coarse"
        if mode == "vien" and not engine.has_vien:
            raise UserError(f"--reuse vien: bundle {engine.bundle.name!r} has no ViEN; use --reuse coarse (the "
                            "key-frame encoder's coarse layers, no training) or train one with `stylestream train "
                            "encoder --from-generator`")
        if mode not in ("vien", "coarse", "off"):
            raise UserError(f"unknown reuse mode {mode!r} (auto, vien, coarse or off)")
        return mode

    def why_key(self, state: LatentState, thumb: torch.Tensor, mode: str = "vien") -> str | None:
        """"start", "interval", "drift" (or "every" when reuse is off) when this frame must be a key frame, else
        None."""
        if state.prev_ws is None:
            return "start"
        if mode == "off":
            return "every"
        if self.cfg.key_interval and state.since_key >= self.cfg.key_interval:
            return "interval"
        drift = float((thumb - state.key_thumb).abs().mean()) if state.key_thumb is not None else 0.0
        if self.cfg.drift_threshold > 0 and drift > self.cfg.drift_threshold:
            return "drift"
        return None

    def encode(self, engine: Engine, crop: Crop, state: LatentState) -> Encoded:
        """The W+ of ``crop`` ([3, S, S] on the engine device) for this stream."""
        mode = self.mode(engine)
        x = crop.image.unsqueeze(0)  # [1, 3, S, S]
        c = engine.num_coarse
        thumb = F.adaptive_avg_pool2d(x.float(), 16)[0]
        why = self.why_key(state, thumb, mode)
        if why in ("start", "every"):
            ws = engine.encode_key(x)
        elif why is not None:
            key_ws = engine.encode_key(x)
            # coarse layers: ViEN's, or (coarse reuse) the key encoding's own — no second encoder run
            ws = engine.encode_reuse(x, state.prev_ws) if mode == "vien" else \
                torch.cat([key_ws[:, :c], state.prev_ws[:, c:]], dim=1)
            # Blend the refreshed fine layers in over a few frames instead of switching at once.
            state.blend_from, state.blend_to, state.blend_step = ws[:, c:].clone(), key_ws[:, c:], 0
        elif mode == "vien":
            ws = engine.encode_reuse(x, state.prev_ws)
        else:
            ws = engine.encode_coarse(x, state.prev_ws)
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
