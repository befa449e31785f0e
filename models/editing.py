"""Edits of a W+ code and their composition.

An edit is stored in a bundle as a JSON spec (``Bundle.edits``) plus its tensors in ``Bundle.extra`` under
``edit.<name>.<tensor>``. Kinds:

* ``w_direction`` — ``ws[:, layers] += strength · direction`` (InterFaceGAN / GANSpace style). ``direction`` is
  [w_dim] (same on every listed layer) or [num_ws, w_dim] (per layer).
* ``style_channel`` — StyleSpace: ``s[layer][:, channel] += strength · scale`` on one affine output.
* ``random_identity`` — a fixed random δw on the identity (fine) layers: Video2StyleGAN's privacy mask. Stored
  like a w_direction; strength scales it.

:class:`EditStack` composes any number of edits with strengths that can change on every frame (the UI's
sliders). Strength 0 is the identity. Model code: no I/O.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .errors import UserError

KINDS = ("w_direction", "style_channel", "random_identity")


@dataclass
class EditSpec:
    """How one edit is described in bundle.json."""

    name: str  # unique, used on the command line (--edit NAME=STRENGTH) and in the UI
    kind: str  # one of KINDS
    description: str = ""  # one line for --list-edits and the UI
    layers: list[int] | None = None  # W+ entries a w_direction / random_identity touches (None: all)
    style_layer: str = ""  # style_channel: StyleSpace layer name, e.g. "b64.conv1"
    channel: int = -1  # style_channel: channel index
    scale: float = 1.0  # style_channel: Δs per unit strength; w kinds: extra multiplier
    default: float = 0.0  # strength when the user does not set one
    range: tuple[float, float] = (-3.0, 3.0)  # slider range
    extra: dict[str, Any] = field(default_factory=dict)  # measured effect sizes, provenance, …

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["range"] = list(self.range)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EditSpec:
        d = dict(d)
        if "range" in d:
            d["range"] = tuple(d["range"])
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown edit fields {sorted(unknown)}")
        spec = cls(**d)
        if spec.kind not in KINDS:
            raise ValueError(f"edit {spec.name!r}: unknown kind {spec.kind!r}")
        return spec


def tensor_key(name: str, what: str = "direction") -> str:
    return f"edit.{name}.{what}"


class EditStack:
    """Composable edits with live strengths. ``apply(ws)`` → (edited ws, StyleSpace deltas or None).

    Thread-safe: the UI thread sets strengths while the device worker applies them.
    """

    def __init__(self, specs: list[EditSpec], tensors: dict[str, torch.Tensor],
                 style_channels: dict[str, int] | None = None):
        """style_channels: {StyleSpace layer name: channels} of the generator (needed by style_channel edits)."""
        self.specs = {s.name: s for s in specs}
        self.tensors = tensors
        self.style_channels = style_channels or {}
        for s in specs:
            if s.kind in ("w_direction", "random_identity") and tensor_key(s.name) not in tensors:
                raise UserError(f"edit {s.name!r} has no direction tensor {tensor_key(s.name)!r} in the bundle")
            if s.kind == "style_channel" and not 0 <= s.channel < self.style_channels.get(s.style_layer, 0):
                raise UserError(f"edit {s.name!r}: channel {s.channel} of layer {s.style_layer!r} does not exist "
                                "in this generator")
        self._strength = {s.name: float(s.default) for s in specs}
        self._lock = threading.Lock()

    @classmethod
    def from_bundle(cls, bundle: Any) -> EditStack:
        try:
            specs = [EditSpec.from_dict(d) for d in bundle.edits]
        except (TypeError, ValueError) as exc:
            raise UserError(f"bundle {bundle.name!r} has an invalid edit: {exc}") from None
        channels = {layer.name: layer.channels for layer in bundle.generator.synthesis.style_layers}
        return cls(specs, bundle.extra, channels)

    @property
    def names(self) -> list[str]:
        return list(self.specs)

    def strengths(self) -> dict[str, float]:
        with self._lock:
            return dict(self._strength)

    def set_strength(self, name: str, value: float) -> None:
        if name not in self.specs:
            known = ", ".join(self.specs) or "none (this bundle has no edits)"
            raise UserError(f"unknown edit {name!r}; available: {known}")
        lo, hi = self.specs[name].range
        with self._lock:
            self._strength[name] = float(min(max(value, lo), hi))

    def active(self) -> bool:
        with self._lock:
            return any(v != 0 for v in self._strength.values())

    def apply(self, ws: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        """ws: [B, num_ws, w_dim] → edited copy and StyleSpace deltas {layer: [B, C]} (None when there are none)."""
        strengths = self.strengths()
        deltas: dict[str, torch.Tensor] = {}
        out = ws
        for name, k in strengths.items():
            if k == 0:
                continue
            s = self.specs[name]
            if s.kind in ("w_direction", "random_identity"):
                d = self.tensors[tensor_key(name)].to(ws.device, ws.dtype) * (k * s.scale)
                layers = s.layers if s.layers is not None else list(range(ws.shape[1]))
                if out is ws:
                    out = ws.clone()
                if d.ndim == 1:
                    out[:, layers] += d
                else:
                    out[:, layers] += d[layers]
            elif s.kind == "style_channel":
                t = deltas.get(s.style_layer)
                if t is None:
                    t = torch.zeros(ws.shape[0], self.style_channels[s.style_layer], device=ws.device,
                                    dtype=ws.dtype)
                t[:, s.channel] += k * s.scale
                deltas[s.style_layer] = t
        return out, (deltas or None)


def parse_edit_args(items: list[str] | None) -> dict[str, float]:
    """['smile=1.5', 'yaw=-10'] → {'smile': 1.5, 'yaw': -10.0}; a clear error for anything else."""
    out: dict[str, float] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise UserError(f"--edit expects NAME=STRENGTH, got {item!r}")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise UserError(f"--edit {name}: strength must be a number, got {value!r}") from None
    return out
