"""`stylestream train`: the training loops (training/).

    stylestream train autoencode --out runs/ae --data synthetic:seed=1,frames=240 ...   G + FrEN autoencoder
    stylestream train generator  --out runs/gan --data ...                               StyleGAN2 (adversarial)
    stylestream train encoder    --out runs/enc --bundle B --stage fren|vien ...         FrEN / ViEN on a frozen G

Every option is a field of the loop's dataclass config (the one-line comment beside the field is the help text).
Runs resume when started again with the same ``--out``; the resolved config is written to ``OUT/config.json``.
Multi-process training: ``torchrun --nproc-per-node N -m realtime.cli train ...``.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import logging
import re
import shlex
import typing
from typing import Any

KINDS: dict[str, tuple[str, str, str]] = {
    "autoencode": ("training.autoencode", "AutoencodeConfig", "generator + FrEN as an autoencoder on aligned crops"),
    "generator": ("training.train_generator", "GeneratorTrainConfig", "StyleGAN2 adversarial training"),
    "encoder": ("training.train_encoder", "EncoderTrainConfig", "FrEN then ViEN on a frozen generator"),
}


def _field_help(cls: type) -> dict[str, str]:
    """The trailing ``# comment`` of every dataclass field, as help text."""
    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    out = {}
    for m in re.finditer(r"^\s+(\w+):[^=\n]+=.*?#\s*(.+)$", src, re.M):
        out[m.group(1)] = m.group(2).strip()
    return out


def add_dataclass_arguments(p: argparse.ArgumentParser, cls: type) -> None:
    """One ``--option`` per dataclass field (bool → --x/--no-x, list[str] → nargs='+')."""
    helps = _field_help(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        flag = "--" + f.name.replace("_", "-")
        h = helps.get(f.name, "")
        hint = hints[f.name]
        if hint is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=h)
        elif typing.get_origin(hint) is list:
            p.add_argument(flag, nargs="+", default=default, help=f"{h} (default: {' '.join(default)})")
        else:
            p.add_argument(flag, type=hint, default=default, help=f"{h} (default: {default})")


def add_arguments(p: argparse.ArgumentParser) -> None:
    import importlib

    sub = p.add_subparsers(dest="train_kind", metavar="KIND", required=True)
    for kind, (module, cls_name, help_text) in KINDS.items():
        sp = sub.add_parser(kind, help=help_text, description=help_text)
        try:
            cls = getattr(importlib.import_module(module), cls_name)
        except (ImportError, AttributeError):
            continue
        add_dataclass_arguments(sp, cls)


def config_from_args(cls: type, args: argparse.Namespace) -> Any:
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def command_line(kind: str, cfg: Any) -> str:
    """The `stylestream train` command that reproduces ``cfg`` (every non-default option, in field order)."""
    parts = ["stylestream", "train", kind]
    for f in dataclasses.fields(cfg):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        value = getattr(cfg, f.name)
        if value == default:
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + f.name.replace("_", "-"))
        elif isinstance(value, list):
            parts += [flag, *map(str, value)]
        else:
            parts += [flag, str(value)]
    return " ".join(shlex.quote(p) for p in parts)


def main(args: argparse.Namespace) -> int:
    import importlib

    from models.errors import UserError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    module_name, cls_name, _ = KINDS[args.train_kind]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"train {args.train_kind}: unavailable ({exc})") from None
    cfg = config_from_args(getattr(module, cls_name), args)
    command = command_line(args.train_kind, cfg)
    out = module.run(cfg, command=command)
    print(f"bundle: {out}")
    return 0
