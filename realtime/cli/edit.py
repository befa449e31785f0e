"""`stylestream edit INPUT -o OUTPUT --edit smile=1.5 [--adapt] [--preserve-expression]`: the offline path.

StylePortraitVideo's method (DESIGN §7) for a recorded clip, where quality matters more than latency:

1. **track** every frame (LK-blended landmarks) and smooth the alignment quads with the non-causal Gaussian
   (:func:`realtime.tracking.track_sequence`) → ``tracks.npz``;
2. **invert** every aligned crop (FrEN, then ViEN with fine-layer reuse) → ``latents.pt``;
3. **adapt** (``--adapt``) the generator to the clip (:mod:`training.adapt`) → ``adapted/`` (a bundle);
4. **edit** the latents with the bundle's edits (per frame, with the tracked landmarks as context);
5. **optimise** (``--preserve-expression``) a per-frame Δw that keeps the original mouth dynamics and the
   edited eyes (:mod:`training.expression`, Eq. 7) → ``deltas.pt``; several edits are applied one after the
   other, each keeping the lips of the previous stage;
6. **render** and paste back with the live :class:`realtime.composite.Compositor`; audio is copied in sync.

Intermediate results live in a work folder (``--work``, default ``OUTPUT.work/``). Each phase records a key —
a hash of its inputs (input file contents, bundle files, options, the keys of the phases it depends on) — in
``state.json``; a rerun skips every phase whose output exists with a matching key, so an interrupted or
re-parametrised job only redoes what changed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from models.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", nargs="?", help="video file or demo: spec (e.g. demo:portrait?seconds=3&fps=15)")
    p.add_argument("-o", "--output", help="output video file (.mp4/.mkv/.webm)")
    p.add_argument("--edit", action="append", metavar="NAME=STRENGTH",
                   help="apply an edit (repeatable; with --preserve-expression applied one after the other)")
    p.add_argument("--bundle", type=Path, default=None, help="bundle folder (default: bundles/default); an "
                   "adapted bundle of the same person + a few --adapt-iters is continual adaptation")
    p.add_argument("--work", type=Path, default=None, help="work folder for resumable intermediate results "
                   "(default: OUTPUT.work)")
    p.add_argument("--max-frames", type=int, default=None, help="process at most this many frames")
    p.add_argument("--sigma", type=float, default=2.0, help="Gaussian σ (frames) of the alignment smoothing")
    a = p.add_argument_group("video adaptation")
    a.add_argument("--adapt", action="store_true", help="fine-tune the generator on this clip first")
    a.add_argument("--adapt-iters", type=int, default=1000, help="adaptation iterations (default 1000)")
    a.add_argument("--adapt-lr", type=float, default=1e-3, help="adaptation learning rate (default 1e-3)")
    a.add_argument("--lpips-backbone", default=None, help="LPIPS backbone weights (.pth); default: the "
                   "weights-free perceptual stand-in")
    a.add_argument("--lpips-lin", default=None, help="LPIPS linear-layer weights (.pth)")
    a.add_argument("--save-adapted", type=Path, default=None, help="also save the adapted bundle here")
    e = p.add_argument_group("expression dynamics")
    e.add_argument("--preserve-expression", action="store_true",
                   help="optimise a per-frame Δw keeping the original mouth dynamics and the edited eyes")
    e.add_argument("--expr-iters", type=int, default=200, help="iterations per chunk of frames (default 200)")
    e.add_argument("--expr-chunk", type=int, default=48, help="frames optimised together (default 48)")
    o = p.add_argument_group("output")
    o.add_argument("--side-by-side", action="store_true", help="write original | edited side by side")
    o.add_argument("--stats-json", type=Path, default=None, help="write phase timings and reuse as JSON here")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for the torch loops (default 1)")


# ------------------------------------------------------------------------------------------------ keys
def _hash(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def input_key(spec: str, max_frames: int | None) -> str:
    path = Path(spec)
    content = _file_digest(path) if path.is_file() else spec  # demo specs are deterministic
    return _hash("input", content, max_frames)


def bundle_key(path: Path) -> str:
    files = sorted(p for p in path.iterdir() if p.suffix == ".safetensors" or p.name == "bundle.json")
    return _hash("bundle", [(p.name, _file_digest(p)) for p in files])


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


# ------------------------------------------------------------------------------------------------ main
def main(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from models.editing import EditStack, parse_edit_args
    from realtime.cli.run import DEFAULT_BUNDLE, load_bundle_arg
    from realtime.io.sources import open_source

    console = Console(stderr=True)
    if not args.input:
        raise UserError("no input given (a video file or demo: spec)")
    if not args.output:
        raise UserError("no output given: -o FILE.mp4")
    for name in ("adapt_iters", "expr_iters", "expr_chunk"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if args.max_frames is not None and args.max_frames < 1:
        raise UserError("--max-frames must be at least 1")
    edits = parse_edit_args(args.edit)
    if args.preserve_expression and not edits:
        raise UserError("--preserve-expression needs at least one --edit NAME=STRENGTH")
    bundle_path = args.bundle or DEFAULT_BUNDLE
    bundle = load_bundle_arg(args.bundle)
    stack = EditStack.from_bundle(bundle)
    stack.set_strengths(edits, reset=True)  # unknown names fail here, before any work
    if bundle.fren is None:
        raise UserError(f"bundle {bundle.name!r} has no frame encoder (FrEN); it cannot invert video")
    with open_source(args.input, live=False) as probe:  # missing / unreadable input: one-line UserError
        if probe.is_live:
            raise UserError(f"{args.input!r} is a live source; `edit` needs a file or a demo: clip")
    work = WorkDir(args.work or Path(str(args.output) + ".work"))
    torch.set_num_threads(max(1, args.threads))
    stats: dict[str, Any] = {"phases": {}, "reused": []}
    progress = Progress(TextColumn("[bold]{task.description:<10}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[note]}"), TimeElapsedColumn(), console=console,
                        transient=False, disable=not console.is_terminal)

    def frames() -> Iterator[Any]:
        with open_source(args.input, live=False) as src:
            for i, f in enumerate(src):
                if args.max_frames is not None and i >= args.max_frames:
                    break
                yield f

    def phase_start(name: str) -> float:
        console.print(f"[bold]{name}[/bold] …" if console.is_terminal else f"{name} …", highlight=False)
        return time.perf_counter()

    def phase_end(name: str, t0: float, reused: bool = False) -> None:
        dt = time.perf_counter() - t0
        stats["phases"][name] = {"seconds": round(dt, 3), "reused": reused}
        if reused:
            stats["reused"].append(name)
            print(f"{name}: reused from {work.path} (inputs unchanged)", flush=True)
        else:
            print(f"{name}: {dt:.1f} s", flush=True)

    k_in = input_key(args.input, args.max_frames)
    k_bundle = bundle_key(bundle_path)
    size = bundle.crop_size
    with progress:
        # 1. track + non-causal smoothing ------------------------------------------------------------------
        k_track = _hash("track", k_in, args.sigma)
        t0 = time.perf_counter()
        if work.done("track", k_track, "tracks.npz"):
            tr = np.load(work.path / "tracks.npz")
            phase_end("track", t0, reused=True)
        else:
            from realtime.vision.tracking import TrackerConfig, track_sequence

            task = progress.add_task("track", total=None, note="")

            def counted() -> Iterator[Any]:
                for f in frames():
                    progress.advance(task)
                    yield f

            tracks = track_sequence(counted(), TrackerConfig(gaussian_sigma=args.sigma))
            n = len(tracks)
            lm = np.full((n, 468, 3), np.nan, np.float32)
            quads = np.full((n, 4, 2), np.nan, np.float32)
            face = np.zeros(n, bool)
            score = np.zeros(n, np.float32)
            for i, t in enumerate(tracks):
                score[i] = t.score
                if t.has_face:
                    face[i], lm[i], quads[i] = True, t.landmarks[:, :3], t.quad
            np.savez(work.path / "tracks.npz", landmarks=lm, quads=quads, face=face, score=score)
            tr = np.load(work.path / "tracks.npz")
            work.mark("track", k_track)
            phase_end("track", t0)
        face = tr["face"]
        n = int(face.shape[0])
        if n == 0:
            raise UserError(f"{args.input!r} has no video frames")
        if not face.any():
            raise UserError(f"no face found in any of the {n} frames of {args.input!r}")
        face_idx = np.flatnonzero(face)
        stats["frames"], stats["faces"] = n, int(face.sum())

        # 2. align + invert --------------------------------------------------------------------------------
        from realtime.vision.align import align_crop

        def load_crops() -> tuple[torch.Tensor, np.ndarray]:
            crops, mats = [], []
            for i, f in enumerate(frames()):
                if i < n and face[i]:
                    c = align_crop(f.image, tr["quads"][i], size)
                    crops.append(c.image.contiguous())
                    mats.append(c.to_frame)
            return torch.stack(crops), np.stack(mats)

        k_inv = _hash("invert", k_track, k_bundle)
        t0 = time.perf_counter()
        if work.done("invert", k_inv, "latents.pt"):
            lat = torch.load(work.path / "latents.pt")
            phase_end("invert", t0, reused=True)
        else:
            from training.adapt import invert_crops

            crops, mats = load_crops()
            ws = invert_crops(bundle, crops)
            lat = {"ws": ws, "crops": crops, "to_frame": torch.from_numpy(mats), "index": torch.from_numpy(face_idx)}
            torch.save(lat, work.path / "latents.pt")
            work.mark("invert", k_inv)
            phase_end("invert", t0)
        ws, crops, to_frame = lat["ws"], lat["crops"], lat["to_frame"].numpy()

        # 3. adapt -----------------------------------------------------------------------------------------
        k_gen = k_inv
        if args.adapt:
            from models.bundle import load_bundle
            from training.adapt import AdaptConfig, adapt_generator, save_adapted

            acfg = AdaptConfig(iters=args.adapt_iters, lr=args.adapt_lr, lpips_backbone=args.lpips_backbone,
                               lpips_lin=args.lpips_lin)
            k_gen = _hash("adapt", k_inv, acfg.__dict__)
            t0 = time.perf_counter()
            if work.done("adapt", k_gen, "adapted/bundle.json"):
                bundle = load_bundle(work.path / "adapted")
                phase_end("adapt", t0, reused=True)
            else:
                task = progress.add_task("adapt", total=acfg.iters, note="")

                def on_adapt(it: int, total: int, loss: float) -> None:
                    progress.update(task, completed=it, note=f"loss {loss:.4f}")

                summary = adapt_generator(bundle, crops, ws, acfg, progress=on_adapt)
                save_adapted(bundle, work.path / "adapted", summary, source=str(args.input))
                work.mark("adapt", k_gen)
                stats["adapt"] = {k: v for k, v in summary.items() if k != "config"}
                phase_end("adapt", t0)
            if args.save_adapted:
                bundle.save(args.save_adapted)
        g = bundle.generator.eval()
        g.requires_grad_(False)

        # 4. edit (+ 5. optimise) --------------------------------------------------------------------------
        from models.editing import EditContext

        lms = tr["landmarks"]

        def apply_edits(w: torch.Tensor, strengths: dict[str, float]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            st = EditStack.from_bundle(bundle)
            st.set_strengths(strengths, reset=True)
            if not st.active():
                return w, {}
            outs = [st.apply(w[j:j + 1], context=EditContext(landmarks=lms[i], to_frame=to_frame[j],
                                                               crop_size=size))
                    for j, i in enumerate(face_idx)]
            we = torch.cat([o[0] for o in outs])
            sds = [o[1] or {} for o in outs]
            sd = {k: torch.cat([s[k] for s in sds]) for k in sds[0]} if sds[0] else {}
            return we, sd

        def add_sd(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {k: a.get(k, 0) + b.get(k, 0) for k in set(a) | set(b)}  # type: ignore[misc]

        t0 = time.perf_counter()
        style: dict[str, torch.Tensor] = {}
        if not args.preserve_expression:
            ws_out, style = apply_edits(ws, edits)
            phase_end("edit", t0)
        else:
            from training.expression import ExpressionConfig, optimise_expression
            from training.losses import RandomConvPerceptual, load_face_mesh

            ecfg = ExpressionConfig(iters=args.expr_iters, chunk=args.expr_chunk)
            k_opt = _hash("optimise", k_gen, list(edits.items()), ecfg.__dict__)
            if work.done("optimise", k_opt, "deltas.pt"):
                saved = torch.load(work.path / "deltas.pt")
                ws_out, style = saved["ws"], saved["style"]
                phase_end("optimise", t0, reused=True)
            else:
                mesh = load_face_mesh()
                if mesh is None:
                    raise UserError("--preserve-expression needs the face-mesh weights (models/face_mesh.py); "
                                    "they are missing")
                perc = None
                if args.lpips_backbone:
                    from training.losses import LPIPSLoss

                    perc = LPIPSLoss("vgg", backbone=args.lpips_backbone, lin=args.lpips_lin)
                else:
                    perc = RandomConvPerceptual()
                from training.adapt import resize_to

                with torch.no_grad():
                    target = mesh(resize_to(crops.float(), g.img_resolution))  # original frames' lips
                cur = ws
                steps = len(edits) * args.expr_iters * ((len(face_idx) + ecfg.chunk - 1) // ecfg.chunk)
                task = progress.add_task("optimise", total=steps, note="")
                done = 0
                deltas = {}
                for name, k in edits.items():  # sequential edits: each keeps the previous stage's lips
                    we, sd = apply_edits(cur, {name: k})
                    style = add_sd(style, sd)

                    def on_opt(step: int, total: int, loss: float, base: int = done) -> None:
                        progress.update(task, completed=base + step, note=f"loss {loss:.4f}")

                    dw, summary = optimise_expression(g, we, target, mesh, style or None, ecfg, perc,
                                                      progress=on_opt)
                    done += summary["chunks"] * ecfg.iters
                    deltas[name] = dw
                    cur = we + dw
                    stats.setdefault("optimise", {})[name] = {k2: v for k2, v in summary.items() if k2 != "config"}
                    with torch.no_grad():
                        img = torch.cat([g.synthesis(cur[j:j + 32], noise_mode="const",
                                                     style_deltas={s: v[j:j + 32] for s, v in style.items()}
                                                     or None).clamp(-1, 1) for j in range(0, cur.shape[0], 32)])
                        target = mesh(img)
                ws_out = cur
                torch.save({"ws": ws_out, "style": style, "deltas": deltas}, work.path / "deltas.pt")
                work.mark("optimise", k_opt)
                phase_end("optimise", t0)

        # 6. render + paste back ---------------------------------------------------------------------------
        from realtime.frames import Crop, Output, Track
        from realtime.io.sinks import open_sink
        from realtime.vision.composite import CompositeConfig, Compositor

        t0 = time.perf_counter()
        with torch.no_grad():
            fakes = torch.cat([g.synthesis(ws_out[j:j + 32], noise_mode="const",
                                           style_deltas={s: v[j:j + 32] for s, v in style.items()} or None)
                               .clamp(-1, 1) for j in range(0, ws_out.shape[0], 32)])
        r = fakes.shape[-1]
        row = {int(i): j for j, i in enumerate(face_idx)}
        compositor = Compositor(CompositeConfig())
        task = progress.add_task("render", total=n, note="")
        written = 0
        with open_source(args.input, live=False) as src:
            width = src.width * (2 if args.side_by_side else 1)
            with open_sink(str(args.output), width=width, height=src.height, fps=src.fps or 30.0,
                           audio_from=src) as sink:
                for i, f in enumerate(src):
                    if i >= n:
                        break
                    j = row.get(i)
                    if j is not None:
                        track = Track(landmarks=tr["landmarks"][i], score=float(tr["score"][i]),
                                      quad=tr["quads"][i])
                        crop_img = crops[j] if r == size else torch.nn.functional.interpolate(
                            crops[j:j + 1], size=(r, r), mode="bilinear", antialias=True)[0]
                        m = to_frame[j] if r == size else _rescale(to_frame[j], size / r)
                        out = compositor.composite(f, track, Crop(image=crop_img, to_frame=m, size=r), fakes[j])
                    else:
                        out = compositor.composite(f, Track(landmarks=None), None, None)
                    image = out.image
                    if args.side_by_side:
                        image = np.concatenate([f.image, image], axis=1)
                    sink.write(Output(image=np.ascontiguousarray(image), index=f.index, pts=f.pts,
                                      time_base=f.time_base, capture_ns=f.capture_ns, face=out.face))
                    written += 1
                    progress.advance(task)
        phase_end("render", t0)
    stats["frames_written"] = written
    print(f"wrote {written} frames to {args.output} (work folder {work.path})", flush=True)
    if args.stats_json:
        args.stats_json.write_text(json.dumps(stats, indent=2) + "\n")
    return 0


def _rescale(m: Any, s: float) -> Any:
    from realtime.pipeline import rescale_affine

    return rescale_affine(m, s)
