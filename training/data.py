"""Training data: aligned face crops from clips, and generator samples with known W+.

Two kinds of data feed the training loops:

* :class:`CropSet` — FFHQ-aligned crops (``realtime/vision/align.py``) cut from video clips, with the clip id and frame
  index of every crop (so consecutive-frame pairs can be drawn for ViEN) and, where the clip carries ground truth,
  the 468 face-mesh landmarks in crop pixels. Clips come from *specs*:

  ``synthetic:seed=3,frames=120``  realtime/io/synthetic.py clips (ground-truth landmarks)
  ``demo:astronaut?seconds=8&seed=1``  any ``realtime/io/sources.py`` spec (demo clips, files, URLs); landmarks and
                                   the crop quad come from the MediaPipe tracker (``track_sequence``)
  ``/path/to/folder``              every video file in the folder (tracked like a file source); a folder of
                                   images only is taken as one clip of *already aligned* crops (sorted by name,
                                   resized to the crop size; no landmarks)

  Built sets are cached as ``.npz`` (uint8 crops) keyed by the spec and crop size, so restarts are instant.

* :func:`sample_ws` / :func:`smooth_ws_trajectories` — W+ codes from the generator's mapping network, including
  smooth trajectories whose coarse layers move while the fine (appearance) layers stay fixed: pairs of such codes
  train ViEN with a latent loss, because the true W+ is known.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from models.errors import UserError
from realtime.io import synthetic
from realtime.io.sources import open_source
from realtime.vision.align import align_crop, quad_from_landmarks
from realtime.vision.geometry import landmarks_to_crop
from realtime.vision.tracking import track_sequence

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class CropSet:
    """Aligned crops of one or more clips. N crops of S×S pixels."""

    images: torch.Tensor  # [N, 3, S, S] uint8 RGB
    clip: torch.Tensor  # [N] int64 clip id
    index: torch.Tensor  # [N] int64 frame index inside its clip
    landmarks: torch.Tensor | None = None  # [N, 468, 3] float32 crop pixels (x, y, z·S) or None

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        assert self.images.ndim == 4 and self.images.shape[1] == 3 and self.images.dtype == torch.uint8, \
            (self.images.shape, self.images.dtype)
        assert self.clip.shape == (n,) and self.index.shape == (n,)
        assert self.landmarks is None or self.landmarks.shape == (n, 468, 3)
        nxt = torch.zeros(n, dtype=torch.bool)
        if n > 1:
            nxt[:-1] = (self.clip[1:] == self.clip[:-1]) & (self.index[1:] == self.index[:-1] + 1)
        self._has_next = nxt

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])

    @property
    def num_clips(self) -> int:
        return int(self.clip.unique().numel()) if len(self) else 0

    def float_images(self, idx: torch.Tensor) -> torch.Tensor:
        """Crops ``idx`` as float32 [B, 3, S, S] in [-1, 1]."""
        return self.images[idx].to(torch.float32) / 127.5 - 1.0

    def sample(self, batch: int, gen: torch.Generator) -> torch.Tensor:
        """Random crop indices [batch] (with replacement)."""
        return torch.randint(0, len(self), (batch,), generator=gen)

    def sample_pairs(self, batch: int, gen: torch.Generator) -> torch.Tensor:
        """Indices [batch] of crops whose next frame (idx + 1) is in the same clip."""
        starts = self._has_next.nonzero().flatten()
        if starts.numel() == 0:
            raise UserError("the training data has no consecutive frames (ViEN needs clips, not single images)")
        return starts[torch.randint(0, starts.numel(), (batch,), generator=gen)]

    def split(self, holdout_clips: int) -> tuple[CropSet, CropSet]:
        """(train, held-out): the last ``holdout_clips`` clips go to the held-out set."""
        ids = self.clip.unique()
        hold = ids[len(ids) - holdout_clips:] if holdout_clips > 0 else ids[:0]
        m = torch.isin(self.clip, hold)
        return self.subset(~m), self.subset(m)

    def subset(self, mask: torch.Tensor) -> CropSet:
        lm = self.landmarks[mask] if self.landmarks is not None else None
        return CropSet(self.images[mask], self.clip[mask], self.index[mask], lm)


def concat(sets: Sequence[CropSet]) -> CropSet:
    """One CropSet from several, clip ids renumbered so they stay distinct."""
    sets = [s for s in sets if len(s)]
    if not sets:
        raise UserError("no training crops: every data spec produced zero aligned faces")
    if len({s.size for s in sets}) != 1:
        raise ValueError("crop sizes differ")
    clips, offset = [], 0
    for s in sets:
        clips.append(s.clip + offset)
        offset += int(s.clip.max()) + 1
    lms = None
    if all(s.landmarks is not None for s in sets):
        lms = torch.cat([s.landmarks for s in sets])  # type: ignore[misc]
    return CropSet(torch.cat([s.images for s in sets]), torch.cat(clips), torch.cat([s.index for s in sets]), lms)


# ------------------------------------------------------------------------------------------- building crops


def crops_from_frames(frames: Iterable[np.ndarray], landmarks: Iterable[np.ndarray | None], size: int,
                      clip_id: int = 0) -> CropSet:
    """Align every frame that has landmarks. frames: [H, W, 3] uint8; landmarks: [468, 3] frame pixels or None."""
    imgs, idx, lms = [], [], []
    for i, (img, lm) in enumerate(zip(frames, landmarks, strict=True)):
        if lm is None:
            continue
        crop = align_crop(img, quad_from_landmarks(lm), size)
        u8 = np.clip(np.rint((crop.hwc() + 1.0) * 127.5), 0, 255).astype(np.uint8)
        imgs.append(torch.from_numpy(u8).permute(2, 0, 1))
        idx.append(i)
        lms.append(torch.from_numpy(landmarks_to_crop(np.asarray(lm, np.float32), crop.to_frame, keep_z=True)))
    if not imgs:
        return CropSet(torch.zeros(0, 3, size, size, dtype=torch.uint8), torch.zeros(0, dtype=torch.long),
                       torch.zeros(0, dtype=torch.long), torch.zeros(0, 468, 3))
    n = len(imgs)
    return CropSet(torch.stack(imgs), torch.full((n,), clip_id, dtype=torch.long), torch.tensor(idx),
                   torch.stack(lms))


def crops_from_source(spec: str, size: int, max_frames: int | None = None, clip_id: int = 0) -> CropSet:
    """Open a ``realtime/io/sources.py`` spec, track it with MediaPipe and align every tracked frame."""
    frames = []
    with open_source(spec, live=False, realtime=False) as src:
        for f in src:
            frames.append(f)
            if max_frames is not None and len(frames) >= max_frames:
                break
    tracks = track_sequence(frames)
    return crops_from_frames([f.image for f in frames], [t.landmarks if t.has_face else None for t in tracks],
                             size, clip_id)


def _parse_kv(text: str) -> dict[str, str]:
    out = {}
    for part in filter(None, text.replace("&", ",").split(",")):
        if "=" not in part:
            raise UserError(f"bad data option {part!r} (expected key=value)")
        k, v = part.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def crops_from_synthetic(options: dict[str, str], size: int, clip_id: int = 0) -> CropSet:
    """A realtime/io/synthetic.py clip (ground-truth landmarks). Options: ``frames`` (default 120), ``portraits``
    (folder), and any SynthConfig field (seed, max_yaw, jpeg, ...)."""
    opts = dict(options)
    frames = int(opts.pop("frames", "120"))
    folder = opts.pop("portraits", None)
    types = {f.name: str(f.type) for f in dataclasses.fields(synthetic.SynthConfig)}
    kwargs: dict[str, object] = {}
    for k, v in opts.items():
        if k not in types:
            raise UserError(f"synthetic: unknown option {k!r} (SynthConfig fields: {', '.join(types)})")
        t = types[k]
        try:
            kwargs[k] = (v.lower() in ("1", "true", "yes", "on")) if "bool" in t else \
                int(v) if "int" in t else float(v)
        except ValueError:
            raise UserError(f"synthetic: bad value {k}={v!r}") from None
    cfg = synthetic.SynthConfig(**kwargs)  # type: ignore[arg-type]
    cfg.seconds = frames / cfg.fps
    portraits = synthetic.load_portraits(folder) if folder else None
    images, lms = [], []
    for k, fr in enumerate(synthetic.synthetic_clip(cfg, portraits)):
        if k >= frames:
            break
        images.append(np.asarray(fr.image))
        lms.append(np.asarray(fr.landmarks, np.float32))
    return crops_from_frames(images, lms, size, clip_id)


def crops_from_images(files: Sequence[Path], size: int, clip_id: int = 0) -> CropSet:
    """Already-aligned crops from image files (one clip, in the given order), resized to size×size."""
    imgs = []
    for f in files:
        bgr = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if bgr is None:
            raise UserError(f"{f}: not a readable image")
        rgb = cv2.cvtColor(cv2.resize(bgr, (size, size), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
        imgs.append(torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1))
    n = len(imgs)
    return CropSet(torch.stack(imgs), torch.full((n,), clip_id, dtype=torch.long), torch.arange(n))


def build_crops(spec: str, size: int, max_frames: int | None = None) -> CropSet:
    """One data spec (see the module docstring) → CropSet (uncached)."""
    if spec.startswith("synthetic:") or spec == "synthetic":
        return crops_from_synthetic(_parse_kv(spec.partition(":")[2]), size)
    p = Path(spec)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in VIDEO_SUFFIXES)
        if not files:
            images = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if images:
                return crops_from_images(images, size)
            raise UserError(f"{p}: no video files ({', '.join(VIDEO_SUFFIXES)}) or images")
        return concat([crops_from_source(str(f), size, max_frames, i) for i, f in enumerate(files)])
    return crops_from_source(spec, size, max_frames)


def load_crops(specs: Sequence[str], size: int, cache_dir: str | Path | None = None,
               max_frames: int | None = None) -> CropSet:
    """Every spec → one CropSet (each spec's clips keep distinct ids), cached per spec in ``cache_dir``."""
    sets = []
    for spec in specs:
        cache = None
        if cache_dir is not None:
            key = hashlib.sha1(json.dumps([spec, size, max_frames, 1]).encode()).hexdigest()[:16]
            cache = Path(cache_dir) / f"crops-{size}-{key}.npz"
        if cache is not None and cache.exists():
            z = np.load(cache)
            lm = torch.from_numpy(z["landmarks"]) if "landmarks" in z.files else None
            s = CropSet(torch.from_numpy(z["images"]), torch.from_numpy(z["clip"]), torch.from_numpy(z["index"]),
                        lm)
        else:
            s = build_crops(spec, size, max_frames)
            log.info("data %s: %d crops in %d clip(s)", spec, len(s), s.num_clips)
            if cache is not None and len(s):
                cache.parent.mkdir(parents=True, exist_ok=True)
                arrays = {"images": s.images.numpy(), "clip": s.clip.numpy(), "index": s.index.numpy()}
                if s.landmarks is not None:
                    arrays["landmarks"] = s.landmarks.numpy()
                tmp = cache.with_suffix(".tmp.npz")
                np.savez(tmp, **arrays)  # type: ignore[arg-type]
                tmp.replace(cache)
        sets.append(s)
    return concat(sets)


# -------------------------------------------------------------------------------------- augmentation


def augment_pair_consistent(x: torch.Tensor, gen: torch.Generator, flip: bool = True) -> torch.Tensor:
    """Horizontal flip of whole samples (x: [B, ..., 3, S, S]; every frame of a sample flips together)."""
    if not flip:
        return x
    m = torch.rand(x.shape[0], generator=gen) < 0.5
    out = x.clone()
    out[m] = out[m].flip(-1)
    return out


# ---------------------------------------------------------------------------------- generator samples


@torch.no_grad()
def sample_ws(g: torch.nn.Module, batch: int, gen: torch.Generator, truncation_psi: float = 1.0,
              mix_prob: float = 0.0) -> torch.Tensor:
    """W+ codes from the mapping network [B, num_ws, w_dim], with optional style mixing at a random layer."""
    z = torch.randn(batch, g.z_dim, generator=gen).to(g.mapping.w_avg.device)
    ws = g.mapping(z, None, truncation_psi=truncation_psi)
    if mix_prob > 0:
        z2 = torch.randn(batch, g.z_dim, generator=gen).to(ws.device)
        ws2 = g.mapping(z2, None, truncation_psi=truncation_psi)
        cut = torch.randint(1, g.num_ws, (batch,), generator=gen).to(ws.device)
        use = (torch.rand(batch, generator=gen) < mix_prob).to(ws.device)
        layer = torch.arange(g.num_ws, device=ws.device)[None, :]
        m = (layer >= cut[:, None]) & use[:, None]
        ws = torch.where(m[..., None], ws2, ws)
    return ws


@torch.no_grad()
def smooth_ws_trajectories(g: torch.nn.Module, batch: int, length: int, gen: torch.Generator,
                           step: float = 0.08, truncation_psi: float = 0.8) -> torch.Tensor:
    """Smooth W+ trajectories [B, T, num_ws, w_dim] like a talking head: the coarse entries move along a great
    circle between two mapping samples (``step`` of the way per frame, eased), the fine entries stay fixed."""
    n_c = g.layout.num_coarse
    a = sample_ws(g, batch, gen, truncation_psi)
    b = sample_ws(g, batch, gen, truncation_psi)
    phase = torch.rand(batch, generator=gen)
    ts = []
    for t in range(length):
        u = 0.5 - 0.5 * torch.cos(math.pi * ((phase + t * step) % 2.0))  # eased back-and-forth in [0, 1]
        ts.append(u)
    u = torch.stack(ts, 1).to(a.device)[..., None, None]  # [B, T, 1, 1]
    coarse = a[:, None, :n_c] + (b[:, None, :n_c] - a[:, None, :n_c]) * u
    fine = a[:, None, n_c:].expand(-1, length, -1, -1)
    return torch.cat([coarse, fine], dim=2)
