"""The offline editor (StylePortraitVideo, DESIGN §7) as named, resumable phases on the pipeline's stage functions.

1. **track** every frame (LK-blended landmarks) and smooth the alignment quads with the non-causal Gaussian
   (:func:`realtime.vision.tracking.track_sequence`) → ``tracks.npz``;
2. **invert** every aligned crop (FrEN, then ViEN with fine-layer reuse) → ``latents.pt``;
3. **adapt** (optional) the generator to the clip (:mod:`training.adapt`) → ``adapted/`` (a bundle);
4. **edit** the latents with the bundle's edits (per frame, with the tracked landmarks as context), or
   **optimise** a per-frame Δw that keeps the original mouth dynamics and the edited eyes (:mod:`training.expression`,
   Eq. 7) → ``deltas.pt``; several edits are applied one after the other, each keeping the lips of the previous stage;
5. **render**: put the faces back with the live pipeline's compositing steps — regenerate pastes the generator's face
   (:func:`realtime.pipeline.processor.composite_face`), transfer moves the user's own face by the edit
   (:class:`realtime.vision.transfer.EditTransfer`); audio is copied in sync.

Intermediate results live in a work folder. Each phase records a key — a hash of its inputs (input file contents,
bundle files, options, the keys of the phases it depends on) — in ``state.json``; a rerun skips every phase whose
output exists with a matching key, so an interrupted or re-parametrised job only redoes what changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.bundle import Bundle, load_bundle
from models.config import opt
from models.editing import EditContext, EditStack
from models.errors import UserError
from models.files import file_sha256
from realtime.frames import Crop, Frame, Track
from realtime.io.sinks import open_sink
from realtime.io.sources import open_source
from realtime.pipeline.processor import composite_face, layout
from realtime.vision.align import align_crop
from realtime.vision.composite import CompositeConfig, Compositor, face_mask
from realtime.vision.geometry import landmarks_to_crop
from realtime.vision.tracking import TrackerConfig, track_sequence
from realtime.vision.transfer import EditTransfer, plan_edits, transfer_available
from training.adapt import AdaptConfig, adapt_generator, invert_crops, resize_to, save_adapted
from training.expression import ExpressionConfig, optimise_expression
from training.losses import LPIPSLoss, RandomConvPerceptual, load_face_mesh

RENDER_BATCH = 32  # frames synthesised per generator call in the render and optimise phases


@dataclass
class OfflineConfig:
    """What ``stylestream edit`` does to a clip (CLI flags of the same names)."""

    sigma: float = opt(2.0, "Gaussian σ (frames) of the alignment smoothing", min=0.0, max=50.0)
    max_frames: int | None = opt(None, "process at most this many frames", min=1)
    adapt: bool = opt(False, "fine-tune the generator on this clip first")
    adapt_iters: int = opt(1000, "adaptation iterations", min=1)
    adapt_lr: float = opt(1e-3, "adaptation learning rate", min=0.0)
    lpips_backbone: str | None = opt(None, "LPIPS backbone weights (.pth); default: the weights-free perceptual "
                                           "stand-in", metavar="FILE")
    lpips_lin: str | None = opt(None, "LPIPS linear-layer weights (.pth)", metavar="FILE")
    save_adapted: Path | None = opt(None, "also save the adapted bundle here", metavar="DIR")
    preserve_expression: bool = opt(False, "optimise a per-frame Δw keeping the original mouth dynamics and the "
                                           "edited eyes")
    expr_iters: int = opt(200, "optimisation iterations per chunk of frames", min=1)
    expr_chunk: int = opt(48, "frames optimised together", min=1)
    composite: str = opt("auto", "how the edited face is put back: transfer (the user's own face, moved by the "
                                 "edit), regenerate (the generator's face) or auto (regenerate after --adapt or for "
                                 "random_identity, else transfer)", choices=("auto", "transfer", "regenerate"))
    side_by_side: bool = opt(False, "write original | edited side by side")
    threads: int = opt(1, "CPU threads for the torch loops", min=1)


# ------------------------------------------------------------------------------------------------ keys
def _hash(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def input_key(spec: str, max_frames: int | None) -> str:
    path = Path(spec)
    content = file_sha256(path) if path.is_file() else spec  # demo specs are deterministic
    return _hash("input", content, max_frames)


def bundle_key(path: Path) -> str:
    files = sorted(p for p in path.iterdir() if p.suffix == ".safetensors" or p.name == "bundle.json")
    return _hash("bundle", [(p.name, file_sha256(p)) for p in files])


class WorkDir:
    """The work folder and its ``state.json`` ({phase: key})."""

    def __init__(self, path: Path):
        self.path = path
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create work folder {path}: {exc.strerror}") from None
        self.state_file = path / "state.json"
        try:
            self.state: dict[str, str] = json.loads(self.state_file.read_text()) if self.state_file.exists() else {}
        except (OSError, ValueError):
            self.state = {}

    def done(self, phase: str, key: str, output: str) -> bool:
        return self.state.get(phase) == key and (self.path / output).exists()

    def mark(self, phase: str, key: str) -> None:
        self.state[phase] = key
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=2) + "\n")
        tmp.replace(self.state_file)


Progress = Callable[[str, int, int | None, str], None]  # (phase, done, total, note) → shown by the caller


def _no_progress(phase: str, done: int, total: int | None, note: str) -> None:
    pass


@dataclass
class Tracks:
    landmarks: np.ndarray  # [n, 468, 3] frame px (NaN without a face)
    quads: np.ndarray  # [n, 4, 2]
    face: np.ndarray  # [n] bool
    score: np.ndarray  # [n]

    @property
    def face_idx(self) -> np.ndarray:
        return np.flatnonzero(self.face)

    def track(self, i: int) -> Track:
        if not self.face[i]:
            return Track(landmarks=None)
        return Track(landmarks=self.landmarks[i], score=float(self.score[i]), quad=self.quads[i])


@dataclass
class Latents:
    ws: torch.Tensor  # [m, num_ws, w_dim] for the m face frames
    crops: torch.Tensor  # [m, 3, S, S]
    to_frame: np.ndarray  # [m, 2, 3]


class OfflineEdit:
    """One ``stylestream edit`` job: the phases below, in order, sharing the work folder and the timing stats."""

    def __init__(self, spec: str, output: Path, bundle_path: Path, edits: dict[str, float], config: OfflineConfig,
                 work: Path, progress: Progress | None = None, say: Callable[[str], None] = print):
        self.spec, self.output, self.bundle_path, self.edits, self.cfg = spec, output, bundle_path, edits, config
        self.progress, self.say = progress or _no_progress, say
        self.bundle: Bundle = load_bundle(bundle_path)
        EditStack.from_bundle(self.bundle).set_strengths(edits, reset=True)  # unknown names fail before any work
        if self.cfg.preserve_expression and not edits:
            raise UserError("--preserve-expression needs at least one --edit NAME=STRENGTH")
        if self.bundle.fren is None:
            raise UserError(f"bundle {self.bundle.name!r} has no frame encoder (FrEN); it cannot invert video")
        with open_source(spec, live=False) as probe:  # missing / unreadable input: one-line UserError
            if probe.is_live:
                raise UserError(f"{spec!r} is a live source; `edit` needs a file or a demo: clip")
        self.work = WorkDir(work)
        self.stats: dict[str, Any] = {"phases": {}, "reused": []}

    def frames(self) -> Iterator[Frame]:
        with open_source(self.spec, live=False) as src:
            for i, f in enumerate(src):
                if self.cfg.max_frames is not None and i >= self.cfg.max_frames:
                    break
                yield f

    def _phase(self, name: str, key: str, output: str, compute: Callable[[], None]) -> None:
        """Run ``compute`` unless the work folder holds ``output`` made from the same inputs (``key``)."""
        t0 = time.perf_counter()
        reused = self.work.done(name, key, output)
        if not reused:
            self.say(f"{name} …")
            compute()
            self.work.mark(name, key)
        dt = time.perf_counter() - t0
        self.stats["phases"][name] = {"seconds": round(dt, 3), "reused": reused}
        if reused:
            self.stats["reused"].append(name)
        self.say(f"{name}: reused from {self.work.path} (inputs unchanged)" if reused else f"{name}: {dt:.1f} s")

    # -- 1. track ------------------------------------------------------------------------------------------
    def track(self) -> tuple[str, Tracks]:
        key = _hash("track", input_key(self.spec, self.cfg.max_frames), self.cfg.sigma)
        path = self.work.path / "tracks.npz"

        def compute() -> None:
            def counted() -> Iterator[Frame]:
                for i, f in enumerate(self.frames()):
                    self.progress("track", i + 1, None, "")
                    yield f

            tracks = track_sequence(counted(), TrackerConfig(gaussian_sigma=self.cfg.sigma))
            n = len(tracks)
            lm, quads = np.full((n, 468, 3), np.nan, np.float32), np.full((n, 4, 2), np.nan, np.float32)
            face, score = np.zeros(n, bool), np.zeros(n, np.float32)
            for i, t in enumerate(tracks):
                score[i] = t.score
                if t.has_face:
                    face[i], lm[i], quads[i] = True, t.landmarks[:, :3], t.quad
            np.savez(path, landmarks=lm, quads=quads, face=face, score=score)

        self._phase("track", key, path.name, compute)
        with np.load(path) as z:
            tracks = Tracks(z["landmarks"], z["quads"], z["face"], z["score"])
        n = int(tracks.face.shape[0])
        if n == 0:
            raise UserError(f"{self.spec!r} has no video frames")
        if not tracks.face.any():
            raise UserError(f"no face found in any of the {n} frames of {self.spec!r}")
        self.stats["frames"], self.stats["faces"] = n, int(tracks.face.sum())
        return key, tracks

    # -- 2. invert -----------------------------------------------------------------------------------------
    def invert(self, k_track: str, tracks: Tracks) -> tuple[str, Latents]:
        key = _hash("invert", k_track, bundle_key(self.bundle_path))
        path = self.work.path / "latents.pt"
        size = self.bundle.crop_size

        def compute() -> None:
            crops, mats = [], []
            for i, f in enumerate(self.frames()):
                if i < len(tracks.face) and tracks.face[i]:
                    c = align_crop(f.image, tracks.quads[i], size)
                    crops.append(c.image.contiguous())
                    mats.append(c.to_frame)
            x = torch.stack(crops)
            ws = invert_crops(self.bundle, x)
            torch.save({"ws": ws, "crops": x, "to_frame": torch.from_numpy(np.stack(mats)),
                        "index": torch.from_numpy(tracks.face_idx)}, path)

        self._phase("invert", key, path.name, compute)
        lat = torch.load(path)
        return key, Latents(lat["ws"], lat["crops"], lat["to_frame"].numpy())

    # -- 3. adapt ------------------------------------------------------------------------------------------
    def adapt(self, k_inv: str, lat: Latents) -> str:
        """Fine-tune the generator on the clip (``self.bundle`` becomes the adapted bundle); the generator's key."""
        if not self.cfg.adapt:
            return k_inv
        acfg = AdaptConfig(iters=self.cfg.adapt_iters, lr=self.cfg.adapt_lr, lpips_backbone=self.cfg.lpips_backbone,
                           lpips_lin=self.cfg.lpips_lin)
        key = _hash("adapt", k_inv, dataclasses.asdict(acfg))

        def compute() -> None:
            def on_adapt(it: int, total: int, loss: float) -> None:
                self.progress("adapt", it, total, f"loss {loss:.4f}")

            summary = adapt_generator(self.bundle, lat.crops, lat.ws, acfg, progress=on_adapt)
            save_adapted(self.bundle, self.work.path / "adapted", summary, source=str(self.spec))
            self.stats["adapt"] = {k: v for k, v in summary.items() if k != "config"}

        self._phase("adapt", key, "adapted/bundle.json", compute)
        self.bundle = load_bundle(self.work.path / "adapted")
        return key

    # -- 4. edit / optimise --------------------------------------------------------------------------------
    def apply_edits(self, ws: torch.Tensor, strengths: dict[str, float], tracks: Tracks, lat: Latents,
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The edits at ``strengths`` on every face frame's latent (landmarks as the edits' context)."""
        stack = EditStack.from_bundle(self.bundle)
        stack.set_strengths(strengths, reset=True)
        if not stack.active():
            return ws, {}
        outs = [stack.apply(ws[j:j + 1], context=EditContext(landmarks=tracks.landmarks[i], to_frame=lat.to_frame[j],
                                                             crop_size=self.bundle.crop_size))
                for j, i in enumerate(tracks.face_idx)]
        sds = [o[1] or {} for o in outs]
        return torch.cat([o[0] for o in outs]), ({k: torch.cat([s[k] for s in sds]) for k in sds[0]} if sds[0] else {})

    def optimise(self, k_gen: str, tracks: Tracks, lat: Latents) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Edited latents: plain edits, or Eq. 7 optimised edit after edit (``--preserve-expression``)."""
        if not self.cfg.preserve_expression:
            t0 = time.perf_counter()
            out = self.apply_edits(lat.ws, self.edits, tracks, lat)
            self.stats["phases"]["edit"] = {"seconds": round(time.perf_counter() - t0, 3), "reused": False}
            return out
        ecfg = ExpressionConfig(iters=self.cfg.expr_iters, chunk=self.cfg.expr_chunk)
        key = _hash("optimise", k_gen, list(self.edits.items()), ecfg.__dict__)
        path = self.work.path / "deltas.pt"
        self._phase("optimise", key, path.name, lambda: self._optimise(ecfg, tracks, lat, path))
        saved = torch.load(path)
        return saved["ws"], saved["style"]

    def _optimise(self, ecfg: ExpressionConfig, tracks: Tracks, lat: Latents, path: Path) -> None:
        mesh = load_face_mesh()
        if mesh is None:
            raise UserError("--preserve-expression needs the face-mesh weights (models/face_mesh.py); they are missing")
        perc = (LPIPSLoss("vgg", backbone=self.cfg.lpips_backbone, lin=self.cfg.lpips_lin)
                if self.cfg.lpips_backbone else RandomConvPerceptual())
        g = self.bundle.generator.eval().requires_grad_(False)
        with torch.no_grad():
            target = mesh(resize_to(lat.crops.float(), g.img_resolution))  # the original frames' lips
        cur, style, deltas, done = lat.ws, {}, {}, 0
        steps = len(self.edits) * ecfg.iters * -(-len(tracks.face_idx) // ecfg.chunk)
        for name, k in self.edits.items():  # sequential edits: each keeps the previous stage's lips
            we, sd = self.apply_edits(cur, {name: k}, tracks, lat)
            style = {s: style.get(s, 0) + sd.get(s, 0) for s in set(style) | set(sd)}

            def on_opt(step: int, total: int, loss: float, base: int = done) -> None:
                self.progress("optimise", base + step, steps, f"loss {loss:.4f}")

            dw, summary = optimise_expression(g, we, target, mesh, style or None, ecfg, perc, progress=on_opt)
            done += summary["chunks"] * ecfg.iters
            deltas[name], cur = dw, we + dw
            self.stats.setdefault("optimise", {})[name] = {k2: v for k2, v in summary.items() if k2 != "config"}
            target = mesh(self.render_faces(cur, style))
        torch.save({"ws": cur, "style": style, "deltas": deltas}, path)

    # -- 5. render -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def render_faces(self, ws: torch.Tensor, style: dict[str, torch.Tensor]) -> torch.Tensor:
        """G(ws) for every face frame, [m, 3, R, R] in [-1, 1], in batches."""
        g = self.bundle.generator.eval()
        return torch.cat([g.synthesis(ws[j:j + RENDER_BATCH], noise_mode="const",
                                      style_deltas={s: v[j:j + RENDER_BATCH] for s, v in style.items()} or None)
                          .clamp(-1, 1) for j in range(0, ws.shape[0], RENDER_BATCH)])

    def composite_mode(self) -> str:
        """The resolved mode: auto → regenerate for an adapted generator (calibrated to this person) or a
        random_identity edit, else transfer (where the landmark geometry can run)."""
        if self.cfg.composite != "auto":
            return self.cfg.composite
        stack = EditStack.from_bundle(self.bundle)
        if self.cfg.adapt or any(stack.specs[n].kind == "random_identity" for n, v in self.edits.items() if v):
            return "regenerate"
        return "transfer" if transfer_available() else "regenerate"

    def render(self, tracks: Tracks, lat: Latents, ws: torch.Tensor, style: dict[str, torch.Tensor]) -> int:
        """Put every edited face back into its frame with the live compositing step (regenerate: paste the
        generator's face; transfer: move the user's own face by the edit); the number of frames written."""
        t0 = time.perf_counter()
        mode = self.composite_mode()
        fakes = self.render_faces(ws, style)
        recons = self.render_faces(lat.ws, {}) if mode == "transfer" else None
        stack = EditStack.from_bundle(self.bundle)
        stack.set_strengths(self.edits, reset=True)
        transfer, plan = EditTransfer(), plan_edits(stack.specs, stack.strengths())
        size = lat.crops.shape[-1]
        row = {int(i): j for j, i in enumerate(tracks.face_idx)}
        compositor, view = Compositor(CompositeConfig()), "side_by_side" if self.cfg.side_by_side else "filtered"
        n, written = len(tracks.face), 0
        with open_source(self.spec, live=False) as src:
            width = src.width * (2 if self.cfg.side_by_side else 1)
            with open_sink(str(self.output), width=width, height=src.height, fps=src.fps or 30.0,
                           audio_from=src) as sink:
                for i, f in enumerate(src):
                    if i >= n:
                        break
                    j = row.get(i)
                    if mode == "transfer":
                        image = f.image
                        if j is not None and stack.active():
                            lm, m = tracks.landmarks[i], lat.to_frame[j]
                            mask = face_mask(landmarks_to_crop(lm, m), size)
                            image = transfer.apply(f.image, m, size, lm, recons[j], fakes[j], mask, plan=plan)
                        sink.write(layout(view, f, image, face=j is not None))
                    else:
                        crop = None if j is None else Crop(image=lat.crops[j], to_frame=lat.to_frame[j], size=size)
                        out = composite_face(compositor, f, tracks.track(i), crop,
                                             None if j is None else fakes[j:j + 1])
                        sink.write(layout(view, f, out.image, face=out.face))
                    written += 1
                    self.progress("render", written, n, "")
        self.stats["phases"]["render"] = {"seconds": round(time.perf_counter() - t0, 3), "reused": False}
        self.stats["composite"] = mode
        self.say(f"render: {time.perf_counter() - t0:.1f} s")
        return written

    def run(self) -> dict[str, Any]:
        """All phases; the job's stats (phase timings, which phases were reused, adaptation and optimisation)."""
        torch.set_num_threads(self.cfg.threads)
        k_track, tracks = self.track()
        k_inv, lat = self.invert(k_track, tracks)
        k_gen = self.adapt(k_inv, lat)
        if self.cfg.adapt and self.cfg.save_adapted is not None:
            self.bundle.save(self.cfg.save_adapted)
        ws, style = self.optimise(k_gen, tracks, lat)
        self.stats["frames_written"] = self.render(tracks, lat, ws, style)
        return self.stats
