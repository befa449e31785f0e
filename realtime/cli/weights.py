"""`stylestream import-weights FILE -o BUNDLE`: official StyleGAN2 / e4e / pSp checkpoints → one bundle, no training.

    stylestream import-weights ffhq.pkl -o ffhq                                   generator only
    stylestream import-weights ffhq.pkl --encoder-weights e4e_ffhq_encode.pt -o ffhq-e4e
    stylestream import-weights e4e_ffhq_encode.pt -o ffhq-e4e                      generator = the e4e file's decoder
    stylestream import-weights e4e_ffhq_encode.pt --directions interfacegan/ -o ffhq-e4e

The logic lives in :func:`models.legacy.import_bundle`; this module parses flags and prints the result.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from models.e4e import StyleEncoder
from models.legacy import import_bundle
from models.stylegan2 import count_parameters


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", type=Path,
                   help="stylegan2-ada-pytorch .pkl, rosinality .pt, or an e4e / pSp .pt (its decoder is the "
                        "generator and its encoder the key-frame encoder)")
    p.add_argument("-o", "--output", type=Path, required=True, help="bundle folder to write")
    p.add_argument("--encoder-weights", type=Path, default=None, metavar="PT",
                   help="e4e / pSp checkpoint whose encoder becomes the bundle's key-frame encoder")
    p.add_argument("--encoder-kind", choices=["e4e", "psp"], default=None,
                   help="e4e or psp, for encoder files whose opts do not say (default: read from the file)")
    p.add_argument("--directions", type=Path, default=None, metavar="DIR",
                   help="folder of W directions (InterFaceGAN .npy boundaries, e4e .pt tensors) to add as edits; "
                        "the file name is the edit name")
    p.add_argument("--encoder", default="none",
                   help="also add UNTRAINED ViT FrEN/ViEN of this preset (vit-b16, vit-s16, small, tiny) so the bundle "
                        "can be fine-tuned with `stylestream train`; default none (not with an e4e / pSp encoder)")
    p.add_argument("--name", default=None, help="bundle name (default: the checkpoint's file name)")


def main(args: argparse.Namespace) -> int:


    console = Console(stderr=True)
    with console.status(f"reading {args.checkpoint.name} (no code from it is executed)"):
        b = import_bundle(args.checkpoint, encoder_weights=args.encoder_weights, directions=args.directions,
                          encoder_kind=args.encoder_kind, vit_encoder=None if args.encoder == "none" else args.encoder,
                          name=args.name)
    with console.status(f"writing {args.output}"):
        b.save(args.output)
    g = b.generator
    if isinstance(b.fren, StyleEncoder):
        enc = b.fren.describe()
    else:
        enc = "none" if b.fren is None else f"untrained ViT {args.encoder}"
    console.print(f"[green]wrote[/] {args.output}: generator {g.img_resolution}² ({count_parameters(g):,} "
                  f"parameters, {g.num_ws} W+ entries), key-frame encoder: {enc}, edits: "
                  f"{', '.join(e['name'] for e in b.edits) or 'none'}")
    match = b.provenance.get("encoder_decoder_vs_generator")
    if match is not None and match != "identical weights":
        console.print(f"[yellow]warning:[/] the encoder was trained with a different generator ({match}); "
                      "its inversions of this generator may be poor")
    return 0
