"""`stylestream info BUNDLE`: what a bundle holds."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from models.bundle import key_encoder_kind, load_bundle
from models.e4e import StyleEncoder
from models.stylegan2 import count_parameters


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", type=Path, help="bundle folder")
    p.add_argument("--json", action="store_true", help="print bundle.json as loaded and checked")


def main(args: argparse.Namespace) -> int:


    b = load_bundle(args.bundle)
    m = b.manifest()
    if args.json:
        print(json.dumps(m, indent=2))
        return 0
    t = Table(title=f"bundle {b.name} ({args.bundle})")
    t.add_column("part")
    t.add_column("config")
    t.add_column("parameters", justify="right")
    t.add_column("trained")
    g = b.generator.cfg
    t.add_row("generator", f"{g.img_resolution}², w_dim {g.w_dim}, channels ≤{g.channel_max}, "
              f"mapping {g.mapping_layers}", f"{count_parameters(b.generator):,}", str(b.trained.get("generator")))
    for name, enc in (("FrEN", b.fren), ("ViEN", b.vien)):
        if enc is None:
            t.add_row(name, "absent", "-", "-")
        elif isinstance(enc, StyleEncoder):
            t.add_row(f"key frames ({enc.kind})", enc.describe(), f"{count_parameters(enc):,}",
                      str(b.trained.get("fren")))
        else:
            c = enc.cfg
            t.add_row(name, f"ViT {c.img_size}² /{c.patch_size}, dim {c.dim}, depth {c.depth}",
                      f"{count_parameters(enc):,}", str(b.trained.get(name.lower())))
    Console().print(t)
    pre = m["preprocess"]
    kind = {"vit": "ViT FrEN", "e4e": "e4e", "psp": "pSp", "none": "none"}[key_encoder_kind(b.fren)]
    print(f"key-frame encoder: {kind}, crop {pre['crop_size']}², {pre['num_ws']} W+ entries "
          f"({pre['num_coarse']} coarse), edits: {', '.join(e.get('name', '?') for e in b.edits) or 'none'}")
    return 0
