"""`stylestream train`: the training loops (training/).

    stylestream train autoencode --out runs/ae --data synthetic:seed=1,frames=240 ...   G + FrEN autoencoder
    stylestream train generator  --out runs/gan --data ...                               StyleGAN2 (adversarial)
    stylestream train encoder    --out runs/enc --bundle B --stage fren|vien ...         FrEN / ViEN on a frozen G

Every option is a field of the loop's config dataclass (realtime.cli.options builds the flags from it). Runs resume
when started again with the same ``--out``; the resolved config is written to ``OUT/config.json`` and the command
that reproduces it into the bundle's provenance. Multi-process training: ``torchrun --nproc-per-node N -m
realtime.cli train ...``.
"""

from __future__ import annotations

import argparse
import logging

from realtime.cli.options import add_config, command_line, config_from_args
from training import autoencode, train_encoder, train_generator

# kind → (module with run(cfg, command), its config class, one-line help)
KINDS = {
    "autoencode": (autoencode, autoencode.AutoencodeConfig, "generator + FrEN as an autoencoder on aligned crops"),
    "generator": (train_generator, train_generator.GeneratorTrainConfig, "StyleGAN2 adversarial training"),
    "encoder": (train_encoder, train_encoder.EncoderTrainConfig, "FrEN then ViEN on a frozen generator"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="train_kind", metavar="KIND", required=True)
    for kind, (_module, cls, help_text) in KINDS.items():
        add_config(sub.add_parser(kind, help=help_text, description=help_text), cls)


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    module, cls, _ = KINDS[args.train_kind]
    cfg = config_from_args(cls, args)
    out = module.run(cfg, command=command_line(f"stylestream train {args.train_kind}", cfg))
    print(f"bundle: {out}")
    return 0
