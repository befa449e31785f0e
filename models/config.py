"""Self-documenting config dataclasses: one declaration per field gives its help text, allowed values and bounds.

Every config in the project (pipeline, compositing, engines, server, training, calibration) declares its fields
with :func:`opt`::

    @dataclass
    class PipelineConfig:
        key_interval: int = opt(30, "run FrEN every N frames; 0 = only first frame and after loss", min=0)

The CLI builds its flags from these declarations (``realtime.cli.options``: one builder for every command) and
:func:`check` validates a config built from any source (flags, JSON, code) with one clear error naming the field.
The declaration is plain ``dataclasses.field`` metadata, so nothing depends on reading source code.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Sequence
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any

from models.errors import UserError

_KEY = "stylestream"


def opt(default: Any = MISSING, help: str = "", *, default_factory: Any = MISSING,  # noqa: A002 - argparse's word
        choices: Sequence[Any] | None = None, min: float | None = None, max: float | None = None,  # noqa: A002
        flag: str | None = None, cli: bool = True, metavar: str | None = None, repeat: bool = False) -> Any:
    """A documented dataclass field.

    Args:
        default / default_factory: as for ``dataclasses.field``.
        help: one line for ``--help`` and the docs.
        choices: the allowed values (strings or numbers).
        min / max: inclusive numeric bounds (ints and floats; NaN is never allowed).
        flag: the command-line flag when it is not ``--field-name``.
        cli: False keeps the field off the command line (set from code or files only).
        metavar: the flag's value placeholder in ``--help``.
        repeat: a list field whose flag is given once per value (``--x A --x B``) instead of ``--x A B``.
    """
    meta = {_KEY: {"help": help, "choices": tuple(choices) if choices is not None else None, "min": min, "max": max,
                   "flag": flag, "cli": cli, "metavar": metavar, "repeat": repeat}}
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class FieldInfo:
    """What :func:`opt` declared about one field, with its resolved type."""

    name: str
    type: Any  # the resolved annotation (typing.get_type_hints)
    default: Any  # the default value (default_factory called), or MISSING
    help: str
    choices: tuple[Any, ...] | None
    min: float | None
    max: float | None
    flag: str  # e.g. "--key-interval"
    cli: bool
    metavar: str | None
    repeat: bool

    @property
    def base_type(self) -> Any:
        """The annotation without ``| None``."""
        return _strip_none(self.type)

    @property
    def optional(self) -> bool:
        return _strip_none(self.type) is not self.type


def _strip_none(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def fields(cls: type) -> list[FieldInfo]:
    """The fields of a config dataclass (class or instance), in declaration order."""
    cls = cls if isinstance(cls, type) else type(cls)
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        meta = f.metadata.get(_KEY, {})
        if f.default is not MISSING:
            default = f.default
        elif f.default_factory is not MISSING:
            default = f.default_factory()
        else:
            default = MISSING
        out.append(FieldInfo(name=f.name, type=hints[f.name], default=default, help=meta.get("help", ""),
                             choices=meta.get("choices"), min=meta.get("min"), max=meta.get("max"),
                             flag=meta.get("flag") or "--" + f.name.replace("_", "-"), cli=meta.get("cli", True),
                             metavar=meta.get("metavar"), repeat=meta.get("repeat", False)))
    return out


def check(cfg: Any, where: str = "") -> Any:
    """Validate a config instance against its declarations (types, choices, bounds, finiteness); nested config
    dataclasses are checked too. Returns ``cfg``. Raises :class:`UserError` naming ``where`` and the field."""
    prefix = f"{where}: " if where else ""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        name = f"{prefix}{f.flag if f.cli else f.name}"
        if value is None:
            if not f.optional:
                raise UserError(f"{name} must be set")
            continue
        tp = f.base_type
        if dataclasses.is_dataclass(tp):
            check(value, f"{where}.{f.name}" if where else f.name)
            continue
        _check_type(name, value, tp)
        if f.choices is not None and value not in f.choices:
            raise UserError(f"{name} must be one of {', '.join(map(str, f.choices))}, got {value!r}")
        if isinstance(value, int | float) and not isinstance(value, bool):
            if isinstance(value, float) and not math.isfinite(value):
                raise UserError(f"{name} must be a finite number, got {value}")
            if f.min is not None and value < f.min:
                raise UserError(f"{name} must be ≥ {f.min:g}, got {value:g}")
            if f.max is not None and value > f.max:
                raise UserError(f"{name} must be ≤ {f.max:g}, got {value:g}")
    return cfg


def _check_type(name: str, value: Any, tp: Any) -> None:
    origin = typing.get_origin(tp)
    if tp is Any:
        return
    if tp is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is bool:
        ok = isinstance(value, bool)
    elif tp is str:
        ok = isinstance(value, str)
    elif tp is Path:
        ok = isinstance(value, str | Path)
    elif origin in (list, tuple):
        ok = isinstance(value, list | tuple)
    elif origin is typing.Literal:
        ok = value in typing.get_args(tp)
    else:
        return  # other annotations are not checked here
    if not ok:
        raise UserError(f"{name} must be {getattr(tp, '__name__', str(tp))}, got {type(value).__name__} {value!r}")
