"""`stylestream import-weights FILE -o BUNDLE`: convert an official StyleGAN2 checkpoint into a bundle."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from models.bundle import Bundle
from models.errors import UserError
from models.legacy import import_generator
from models.stylegan2 import count_parameters
from models.vit_encoder import ENCODER_PRESETS, FrameEncoder, VideoEncoder


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", type=Path, help="stylegan2-ada-pytorch .pkl or rosinality .pt")
    p.add_argument("-o", "--output", type=Path, required=True, help="bundle folder to write")
    p.add_argument("--encoder", default="none",
                   help="also add UNTRAINED FrEN/ViEN of this preset (vit-b16, vit-s16, small, tiny) so the bundle "
                        "can be fine-tuned with `stylestream train`; default none")
    p.add_argument("--name", default=None, help="bundle name (default: the checkpoint's file name)")


def main(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    if args.encoder != "none" and args.encoder not in ENCODER_PRESETS:
        raise UserError(f"unknown encoder preset {args.encoder!r} (choose from {', '.join(ENCODER_PRESETS)}, none)")
    with console.status(f"reading {args.checkpoint.name} (no code from it is executed)"):
        g, prov = import_generator(args.checkpoint)
    fren = vien = None
    if args.encoder != "none":
        layout = g.cfg.layout()
        fren = FrameEncoder(ENCODER_PRESETS[args.encoder], layout)
        vien = VideoEncoder(ENCODER_PRESETS[args.encoder], layout)
        fren.w_avg.copy_(g.mapping.w_avg)
        vien.init_from_frame_encoder(fren)
    prov["made_by"] = "stylestream import-weights"
    b = Bundle(generator=g, fren=fren, vien=vien, trained={"generator": True, "fren": False, "vien": False},
               provenance=prov, name=args.name or args.checkpoint.stem)
    b.save(args.output)
    cfg = g.cfg
    console.print(f"[green]wrote[/] {args.output}: generator {cfg.img_resolution}² ({count_parameters(g):,} "
                  f"parameters, {g.num_ws} W+ entries), encoders: "
                  f"{'untrained ' + args.encoder if fren is not None else 'none'}")
    return 0
