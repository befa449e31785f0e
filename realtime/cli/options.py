"""The one way command-line flags are made: from config dataclasses declared with :func:`models.config.opt`.

``add_config(parser, Cls)`` adds one flag per field (bool → ``--x/--no-x``, lists → several values, ``X | None`` →
optional, choices and metavars from the declaration); ``config_from_args(Cls, args)`` builds the instance back and
validates it (:func:`models.config.check`), so a bad value is one clear line. ``command_line(prog, cfg)`` writes the
flags that reproduce a config (training runs record it in their bundle's provenance).
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import typing
from pathlib import Path
from typing import Any

from models.config import FieldInfo, check, fields
from models.errors import UserError


def _dest(prefix: str, name: str) -> str:
    return f"{prefix}{name}"


def _flag(prefix: str, f: FieldInfo) -> str:
    if prefix and not f.flag.startswith("--" + prefix.replace("_", "-")):
        return "--" + prefix.replace("_", "-") + f.flag[2:]
    return f.flag


def _scalar(tp: Any) -> Any:
    """The argparse ``type`` for a scalar annotation."""
    if typing.get_origin(tp) is typing.Literal:
        return type(typing.get_args(tp)[0])
    return tp if tp in (int, float, str, Path) else str


def _show(value: Any) -> str:
    if isinstance(value, list | tuple):
        return " ".join(map(str, value)) or "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def add_config(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type, *, prefix: str = "",
               exclude: tuple[str, ...] = (), defaults: dict[str, Any] | None = None) -> None:
    """One flag per field of ``cls`` (fields declared ``cli=False`` or named in ``exclude`` are left out).
    ``prefix`` (e.g. ``"calibrate_"``) goes in front of every flag and destination; ``defaults`` overrides
    the declared defaults for this command."""
    for f in fields(cls):
        if not f.cli or f.name in exclude or dataclasses.is_dataclass(f.base_type):
            continue
        default = (defaults or {}).get(f.name, f.default)
        flag, dest = _flag(prefix, f), _dest(prefix, f.name)
        tp = f.base_type
        shown = "" if default is None or default == "" else f" (default {_show(default)})"
        kw: dict[str, Any] = {"dest": dest, "default": default}
        kw["metavar"] = f.metavar or flag.lstrip("-").upper().replace("-", "_")
        if tp is bool:
            del kw["metavar"]
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=f.help, **kw)
            continue
        origin = typing.get_origin(tp)
        if origin in (list, tuple):
            if f.repeat:  # argparse appends to a copy of the default list
                kw["default"] = list(default or [])
                parser.add_argument(flag, action="extend", nargs=1, help=f.help + " (repeatable)", **kw)
            else:  # values converted (and comma-separated ones split) by config_from_args
                parser.add_argument(flag, nargs="+", help=f.help + shown, **kw)
            continue
        choices = f.choices
        if choices is None and typing.get_origin(tp) is typing.Literal:
            choices = typing.get_args(tp)
        if choices is not None and not f.metavar:
            del kw["metavar"]
        parser.add_argument(flag, type=_scalar(tp), choices=choices, help=f.help + shown, **kw)


def config_from_args(cls: type, args: argparse.Namespace, *, prefix: str = "", where: str = "",
                     **overrides: Any) -> Any:
    """The ``cls`` instance the parsed flags describe (fields without a flag keep their defaults; ``overrides``
    win), validated: a bad value raises :class:`models.errors.UserError`."""
    values: dict[str, Any] = {}
    for f in fields(cls):
        dest = _dest(prefix, f.name)
        if f.name in overrides:
            values[f.name] = overrides[f.name]
        elif hasattr(args, dest) and f.cli and not dataclasses.is_dataclass(f.base_type):
            value = getattr(args, dest)
            if typing.get_origin(f.base_type) in (list, tuple) and isinstance(value, list | tuple):
                value = _items(f, value)
            values[f.name] = value
    return check(cls(**values), where)


def _items(f: FieldInfo, given: list[Any] | tuple[Any, ...]) -> list[Any] | tuple[Any, ...]:
    """A list flag's values in the field's element type; "1,2" counts as two values."""
    args = typing.get_args(f.base_type)
    scalar = _scalar(args[0] if args else str)
    out = []
    for item in given:
        for part in str(item).split(",") if scalar is not str and isinstance(item, str) else [item]:
            try:
                out.append(scalar(part) if isinstance(part, str) else part)
            except ValueError:
                raise UserError(f"{f.flag} takes {scalar.__name__} values, got {part!r}") from None
    return tuple(out) if typing.get_origin(f.base_type) is tuple else out


def changed_fields(cfg: Any) -> set[str]:
    """The names of ``cfg``'s fields whose value differs from their default (the flags the user set)."""
    return {f.name for f in fields(cfg) if getattr(cfg, f.name) != f.default}


def command_line(prog: str, cfg: Any, *, prefix: str = "") -> str:
    """The command that reproduces ``cfg``: ``prog`` plus every flag whose value differs from its default."""
    parts = shlex.split(prog)
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if not f.cli or value == f.default or dataclasses.is_dataclass(f.base_type):
            continue
        flag = _flag(prefix, f)
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, list | tuple):
            parts += [flag, *map(str, value)]
        else:
            parts += [flag, str(value)]
    return " ".join(shlex.quote(p) for p in parts)
