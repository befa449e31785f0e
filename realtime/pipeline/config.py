"""How frames are processed: the pipeline's options (CLI flags are generated from these declarations)."""

from __future__ import annotations

from dataclasses import dataclass

from models.config import opt

VIEWS = ("filtered", "side_by_side", "original")  # what a stream shows: the filter, original | filter, or the input
COMPOSITES = ("auto", "transfer", "regenerate")  # how the filtered face is put back (DESIGN §9)
REUSE_MODES = ("auto", "vien", "coarse", "off")  # how frames between key frames are encoded (pipeline/latents.py)


@dataclass
class PipelineConfig:
    """Latent policy, queues, smoothing and output layout of one stream."""

    key_interval: int = opt(30, "run FrEN (refresh the fine layers) every N frames; 0 = only on the first frame "
                                "and after the face was lost", min=0)
    fine_blend_frames: int = opt(4, "frames over which refreshed fine layers are blended in", min=0)
    drift_threshold: float = opt(0.12, "mean |Δ| of a 16×16 crop thumbnail vs the last key frame that forces a "
                                       "refresh; 0 = off", min=0.0)
    queue_size: int = opt(2, "live sources: capacity of each inter-stage queue (the oldest frame is dropped when "
                             "full)", min=1, max=64)
    smoothing_sigma: float = opt(2.0, "file jobs: Gaussian σ (frames) over the alignment quads; 0 = off", min=0.0,
                                 max=50.0)
    side_by_side: bool = opt(False, "output original | filtered side by side (double width)")
    color_match: bool = opt(False, "match the generated face's colour statistics to the original skin")
    align: str = opt("auto", "where faces are cut out: device (grid_sample on the engine's device), cpu (OpenCV) "
                             "or auto (device on CUDA)", choices=("auto", "cpu", "device"))
    composite: str = opt("auto", "how the face is put back: transfer (the user's own face, moved by the edit; no "
                                 "edit leaves it untouched), regenerate (the generator's face pasted over it) or auto "
                                 "(transfer, except for random_identity and a generator calibrated to this person)",
                         choices=COMPOSITES)
    reuse: str = opt("auto", "frames between key frames: vien (ViEN: new coarse layers from the crop and the previous "
                             "W+), coarse (the key-frame encoder's coarse layers, fine layers carried: no ViEN needed; "
                             "e4e / pSp skip their fine heads), off (the key-frame encoder on every frame) or auto "
                             "(vien when the bundle has one, else coarse)", choices=REUSE_MODES)

    @property
    def view(self) -> str:
        """The view this config starts a stream with."""
        return "side_by_side" if self.side_by_side else "filtered"
