"""Checks of untrusted inputs — bundle.json sections, foreign checkpoints' kwargs, safetensors headers — made
*before* anything is allocated from them.

Configs are checked declaratively: every config dataclass carries a ``FIELDS`` table {field: rule}; a rule
(:class:`Int`, :class:`Float`, :class:`Str`, :class:`Bool`, :class:`ListOf`, :class:`Optional`, :class:`JSONObject`)
checks one JSON value's type and range and returns it normalised. :func:`check_fields` runs a table over a JSON
object. Cross-field checks live next to the dataclass (``validate()``). A failure is a :class:`FieldError`
(a ValueError) carrying the dotted path of the field and the problem; callers add the file name and turn it
into their one-line UserError.

Files: :func:`regular_file` refuses FIFOs, sockets, devices and folders before anything opens them (a FIFO
blocks ``open()`` forever); :func:`read_json_limited` caps size and nesting depth; :func:`read_safetensors_header`
reads and checks a safetensors header (8-byte little-endian length + JSON) without touching the tensor data;
:func:`first_non_finite` finds NaN/Inf weights.
"""

from __future__ import annotations

import json
import math
import os
import stat
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode


class FieldError(ValueError):
    """One field failed a check. ``field``: dotted path ("generator.img_resolution", "edits[3].range[0]");
    ``problem``: what is wrong, e.g. "must be a power of two, got 100"."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}" if field else problem)
        self.field, self.problem = field, problem

    def within(self, prefix: str) -> FieldError:
        """The same error with ``prefix`` in front of its path."""
        if not prefix:
            return self
        sep = "" if not self.field or self.field.startswith("[") else "."
        return FieldError(f"{prefix}{sep}{self.field}", self.problem)


def show(v: Any, limit: int = 60) -> str:
    """A JSON value as it appears in a message, cut to ``limit`` characters."""
    try:
        s = json.dumps(v, allow_nan=True) if not isinstance(v, float) else repr(v)
    except (TypeError, ValueError):
        s = repr(v)
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _type_name(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(v), type(v).__name__)


# ------------------------------------------------------------------------------------------------------ rules

Rule = Callable[[Any], Any]  # value → normalised value, or raise FieldError("", problem)


@dataclass(frozen=True)
class Int:
    """An integer (not a bool, not 64.0) in [lo, hi]; ``pow2``: also a power of two."""

    lo: int
    hi: int
    pow2: bool = False

    def __call__(self, v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise FieldError("", f"must be an integer, got {show(v)}")
        if self.pow2 and (v < 1 or v & (v - 1)):
            raise FieldError("", f"must be a power of two between {self.lo} and {self.hi}, got {v}")
        if not self.lo <= v <= self.hi:
            raise FieldError("", f"must be between {self.lo} and {self.hi}, got {v}")
        return v


@dataclass(frozen=True)
class Float:
    """A finite number in [lo, hi] (``lo_open``: lo itself excluded). Integers are accepted and converted."""

    lo: float = -1e30
    hi: float = 1e30
    lo_open: bool = False

    def __call__(self, v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise FieldError("", f"must be a finite number, got {show(v)}")
        v = float(v)
        if self.lo_open and v <= self.lo:
            raise FieldError("", f"must be > {self.lo:g}, got {v:g}")
        if not self.lo <= v <= self.hi:
            raise FieldError("", f"must be between {self.lo:g} and {self.hi:g}, got {v:g}")
        return v


@dataclass(frozen=True)
class Str:
    """A string of at most ``max_len`` characters (``min_len`` at least), optionally one of ``choices`` and
    without any of the characters in ``forbid``."""

    max_len: int = 1000
    min_len: int = 0
    choices: tuple[str, ...] | None = None
    forbid: str = ""

    def __call__(self, v: Any) -> str:
        if not isinstance(v, str):
            raise FieldError("", f"must be a string, got {show(v)}")
        if self.choices is not None and v not in self.choices:
            raise FieldError("", f"must be one of {', '.join(map(repr, self.choices))}, got {show(v)}")
        if not self.min_len <= len(v) <= self.max_len or any(c in self.forbid for c in v):
            bad = f" without {' '.join(repr(c) for c in self.forbid)}" if self.forbid else ""
            raise FieldError("", f"must be a string of {self.min_len} to {self.max_len} characters{bad}, "
                                 f"got {show(v)}")
        return v


@dataclass(frozen=True)
class Bool:
    def __call__(self, v: Any) -> bool:
        if not isinstance(v, bool):
            raise FieldError("", f"must be true or false, got {show(v)}")
        return v


@dataclass(frozen=True)
class Optional:
    """null, or what ``rule`` accepts."""

    rule: Rule

    def __call__(self, v: Any) -> Any:
        if v is None:
            return None
        try:
            return self.rule(v)
        except FieldError as exc:
            if exc.problem.startswith("must be an integer") or exc.problem.startswith("must be a finite number"):
                kind = "an integer" if "integer" in exc.problem else "a finite number"
                raise FieldError(exc.field, f"must be {kind} or null, got {show(v)}") from None
            raise


@dataclass(frozen=True)
class ListOf:
    """A JSON list of ``min_len`` … ``max_len`` items, each checked by ``item``; returned as a tuple if ``tuple_``."""

    item: Rule
    min_len: int = 0
    max_len: int = 1 << 16
    tuple_: bool = False

    def __call__(self, v: Any) -> list | tuple:
        if not isinstance(v, list | tuple):
            raise FieldError("", f"must be a list, got {show(v)}")
        if not self.min_len <= len(v) <= self.max_len:
            n = str(self.min_len) if self.min_len == self.max_len else f"{self.min_len} to {self.max_len}"
            raise FieldError("", f"must have {n} entries, got {len(v)}")
        out = []
        for i, x in enumerate(v):
            try:
                out.append(self.item(x))
            except FieldError as exc:
                raise exc.within(f"[{i}]") from None
        return tuple(out) if self.tuple_ else out


@dataclass(frozen=True)
class JSONObject:
    """Any JSON object (its content is checked elsewhere, or is free-form like provenance)."""

    def __call__(self, v: Any) -> dict:
        if not isinstance(v, dict):
            raise FieldError("", f"must be a JSON object, got {_type_name(v)}")
        return v


def check_value(rule: Rule, v: Any, field: str) -> Any:
    """``rule(v)`` with ``field`` in front of any error's path."""
    try:
        return rule(v)
    except FieldError as exc:
        raise exc.within(field) from None


def check_fields(table: Mapping[str, Rule], d: Any, required: Iterable[str] = ()) -> dict[str, Any]:
    """Check a JSON object against {field: rule}: unknown fields and missing ``required`` ones are errors;
    absent optional fields are left out (the dataclass default applies). → {field: normalised value}."""
    JSONObject()(d)
    unknown = [k for k in d if k not in table]
    if unknown:
        raise FieldError(str(unknown[0]), f"unknown field (known: {', '.join(table)})")
    for k in required:
        if k not in d:
            raise FieldError(k, "is missing")
    return {k: check_value(rule, d[k], k) for k, rule in table.items() if k in d}


def json_depth(obj: Any) -> int:
    """Nesting depth of a parsed JSON value (a scalar is 0, [] is 1), without recursion."""
    best, stack = 0, [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        best = max(best, depth)
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return best


# ----------------------------------------------------------------------------------------- shapes, no memory

_RANDOM_FACTORIES = {torch.randn, torch.rand}
# Arithmetic a constructor may do on a fresh tensor (scaling an initialiser, normalising a filter): answered with an
# empty tensor of the broadcast shape.
_ELEMENTWISE = {"mul", "div", "add", "sub", "true_divide", "__mul__", "__rmul__", "__truediv__", "__rtruediv__",
                "__add__", "__radd__", "__sub__", "__rsub__", "__neg__"}


class _ShapesOnly(TorchFunctionMode):
    """Use inside ``torch.device("meta")`` while building a module only for its parameter shapes. Random
    initialisers do nothing, and elementwise arithmetic, ``outer`` and ``sum`` return empty tensors of the right
    shape: on the meta device these would run Python decompositions whose first use imports torch._dynamo and sympy
    (~80 MB RSS and 1–2 s added to every bundle load)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if func in _RANDOM_FACTORIES:
            size = args[0] if len(args) == 1 and isinstance(args[0], list | tuple | torch.Size) else args
            kwargs.pop("generator", None)
            return torch.empty(size, **kwargs)
        if name.endswith("_") and (getattr(func, "__module__", "") == "torch.nn.init" or name in (
                "normal_", "uniform_", "random_", "bernoulli_", "exponential_", "log_normal_", "cauchy_")):
            return args[0] if args else kwargs["tensor"]  # in-place initialiser: the values do not matter
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if tensors and all(t.is_meta for t in tensors) and not kwargs:
            if name in _ELEMENTWISE:
                return torch.empty(_broadcast(*(tuple(t.shape) for t in tensors)), dtype=tensors[0].dtype,
                                   device="meta")
            if name == "outer" and len(tensors) == 2:
                return torch.empty(tensors[0].numel(), tensors[1].numel(), dtype=tensors[0].dtype, device="meta")
            if name == "sum" and len(args) == 1:
                return torch.empty((), dtype=tensors[0].dtype, device="meta")
        return func(*args, **kwargs)


def _broadcast(*shapes: tuple[int, ...]) -> tuple[int, ...]:
    """numpy broadcasting of shapes (torch.broadcast_shapes imports sympy)."""
    n = max(map(len, shapes))
    out = []
    for dims in zip(*((1,) * (n - len(s)) + s for s in shapes)):
        big = {d for d in dims if d != 1}
        if len(big) > 1:
            raise ValueError(f"shapes {shapes} do not broadcast")
        out.append(big.pop() if big else 1)
    return tuple(out)


def module_shapes(build: Callable[[], nn.Module | None]) -> dict[str, tuple[int, ...]] | None:
    """{name: shape} of the state_dict of the module ``build()`` makes (None if it makes none), computed on the
    meta device: no memory is allocated, however large the config."""
    with torch.device("meta"), _ShapesOnly():
        module = build()
    return None if module is None else {k: tuple(v.shape) for k, v in module.state_dict().items()}


# ------------------------------------------------------------------------------------------------------ files


_FILE_KINDS = ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"),
               (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"), (stat.S_ISLNK, "symlink"))


def regular_file(path: Path, error: type[Exception], missing: str | None = None) -> int:
    """Size in bytes of ``path`` (symlinks followed) if it is a regular file; otherwise raise ``error`` with one line.
    Nothing is opened: a FIFO would block ``open()`` until a writer comes, a device could stream forever."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise error(missing or f"{path} not found") from None
    except OSError as exc:
        raise error(f"cannot read {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _FILE_KINDS if test(st.st_mode)), "special file")
        raise error(f"{path} is not a regular file (a {kind})")
    return st.st_size


def read_json_limited(path: Path, error: type[Exception], max_bytes: int, max_depth: int) -> Any:
    """Parse a JSON file that must be a regular file of at most ``max_bytes`` and nest at most ``max_depth`` deep."""
    size = regular_file(path, error)
    if size > max_bytes:
        raise error(f"{path} is too large ({size / 2**20:.1f} MiB; the limit is {max_bytes / 2**20:g} MiB)")
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise error(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise error(f"{path} is too large (it grew while being read; the limit is {max_bytes / 2**20:g} MiB)")
    try:
        obj = json.loads(data.decode("utf-8"))
    except RecursionError:
        raise error(f"{path} is nested deeper than {max_depth} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, too-long integers
        raise error(f"{path} is not valid JSON ({str(exc).splitlines()[0][:120]})") from None
    if json_depth(obj) > max_depth:
        raise error(f"{path} is nested deeper than {max_depth} levels")
    return obj


# Bytes per element of every safetensors dtype.
SAFETENSORS_DTYPES: dict[str, int] = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2,
                                      "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
MAX_SAFETENSORS_HEADER = 16 << 20  # bytes; an FFHQ 1024² generator's header is ~40 KB


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a safetensors header."""

    dtype: str  # safetensors dtype name, e.g. "F32"
    shape: tuple[int, ...]


def read_safetensors_header(path: Path, error: type[Exception], missing: str | None = None) -> dict[str, TensorInfo]:
    """{name: TensorInfo} of a safetensors file, read and checked without loading any tensor: regular file, header
    length ≤ :data:`MAX_SAFETENSORS_HEADER` and inside the file, a JSON object of {dtype, shape, data_offsets}
    entries whose byte ranges match their shapes and tile the data area exactly (what the loader requires).
    ``missing``: the message when the file does not exist."""
    size = regular_file(path, error, missing=missing or f"{path} is missing")

    def bad(problem: str) -> Exception:
        return error(f"{path} is corrupt or not a safetensors file ({problem})")

    if size < 8:
        raise bad(f"{size} bytes: shorter than the 8-byte header length")
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > MAX_SAFETENSORS_HEADER:
                raise bad(f"header length {n} exceeds the limit of {MAX_SAFETENSORS_HEADER} bytes")
            if n > size - 8:
                raise bad(f"header length {n} runs past the end of the {size}-byte file")
            raw = f.read(n)
    except OSError as exc:
        raise error(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise bad("header is not valid JSON") from None
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    data_len = size - 8 - n
    out: dict[str, TensorInfo] = {}
    spans: list[tuple[int, int, str]] = []
    for name, e in header.items():
        if name == "__metadata__":
            if not isinstance(e, dict) or not all(isinstance(v, str) for v in e.values()):
                raise bad("__metadata__ must map strings to strings")
            continue
        if not isinstance(e, dict) or set(e) != {"dtype", "shape", "data_offsets"}:
            raise bad(f"{name}: entry must have exactly dtype, shape and data_offsets")
        dtype, shape, offsets = e["dtype"], e["shape"], e["data_offsets"]
        if dtype not in SAFETENSORS_DTYPES:
            raise bad(f"{name}: dtype {show(dtype)} is not a safetensors dtype")
        if not isinstance(shape, list) or len(shape) > 16 or not all(
                isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
            raise bad(f"{name}: shape must be a list of non-negative integers, got {show(shape)}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(
                isinstance(o, int) and not isinstance(o, bool) for o in offsets) and 0 <= offsets[0] <= offsets[1]):
            raise bad(f"{name}: data_offsets must be [begin, end] with 0 ≤ begin ≤ end, got {show(offsets)}")
        need = math.prod(shape) * SAFETENSORS_DTYPES[dtype]
        if offsets[1] - offsets[0] != need:
            raise bad(f"{name}: data_offsets {offsets} hold {offsets[1] - offsets[0]} bytes, shape {shape} "
                      f"({dtype}) needs {need}")
        if offsets[1] > data_len:
            raise bad(f"{name}: data_offsets {offsets} run past the end of the data ({data_len} bytes)")
        spans.append((offsets[0], offsets[1], name))
        out[name] = TensorInfo(dtype, tuple(shape))
    pos = 0
    for begin, end, name in sorted(spans):
        if begin != pos:
            raise bad(f"the tensors' data_offsets do not cover the data contiguously (at {name})")
        pos = end
    if pos != data_len:
        raise bad(f"the tensors' data_offsets do not cover the data: {pos} of {data_len} bytes")
    return out


def first_non_finite(tensors: Mapping[str, torch.Tensor]) -> tuple[str, int] | None:
    """(name, count) of the first floating-point tensor holding NaN or ±Inf, or None when all are finite."""
    for name, t in tensors.items():
        if t.is_floating_point() or t.is_complex():
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                return name, bad
    return None


def non_finite_message(name: str, count: int) -> str:
    s = "" if count == 1 else "s"
    return f"tensor {name} has {count} non-finite value{s} (NaN/Inf); the weights are broken"
