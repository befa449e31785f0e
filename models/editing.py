"""Edits of a W+ code and their composition.

An edit is stored in a bundle as a JSON spec (``Bundle.edits``) plus its tensors in ``Bundle.extra`` under
``edit.<name>.<tensor>`` (shared networks under ``pose_expression.*``). Kinds:

* ``w_direction`` — ``ws[:, layers] += strength · scale · direction`` (InterFaceGAN / supervised / GANSpace).
  ``direction`` is [w_dim] (same on every listed layer) or [num_ws, w_dim] (per layer).
* ``style_channel`` — StyleSpace: ``s[layer][:, channel] += strength · scale`` on one affine output.
* ``random_identity`` — a fixed random δw on the identity (appearance) layers: Video2StyleGAN's privacy mask.
  Stored like a w_direction; strength scales it.
* ``pose_expression`` — a *target* ("yaw to +15°", "neutral expression") reached through the pose/expression
  network of Video2StyleGAN §4.4: the frame's current pose/expression parameters are estimated (from the
  frame's landmarks when :class:`EditContext` carries them, else read out of W+ linearly), the change to the
  target goes through the MLP to a ΔW on the coarse layers, and ``strength`` ∈ [0, 1] is the fraction of the
  way (values above 1 overshoot). ``spec.extra["target"]`` = {parameter: value}, parameters in
  :data:`PARAMS` (degrees for the pose, [0, 1] for expressions).
* ``keep_mouth`` — a modifier, StylePortraitVideo's expression-dynamics preservation made live: with strength
  k ∈ [0, 1] it removes k × the part of every other active edit's ΔW that moves the inner lips (first order:
  projection onto the orthogonal complement of the inner-lip landmark Jacobian's row space, basis stored as
  ``edit.<name>.basis`` [r, num_ws·w_dim]). The frame's own mouth motion, carried by the encoder's W+, is then
  kept while a smile (cheeks, corners) is added. Edits with ``extra["keep_mouth"] = False`` (mouth_open) are
  not touched.

:class:`EditStack` composes any number of edits with strengths that can change on every frame (the UI's
sliders). Strength 0 is the identity. Model code: no I/O.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from models.errors import UserError
from models.latents import WPlusLayout
from models.validation import (
    FLOAT_DTYPES,
    FieldError,
    Float,
    Int,
    JSONObject,
    ListOf,
    Optional,
    Rule,
    Str,
    TensorInfo,
    check_fields,
    check_value,
    module_shapes,
    show,
)

KINDS = ("w_direction", "style_channel", "random_identity", "pose_expression", "keep_mouth")
# Pose/expression parameters (realtime/io/synthetic.py ground truth): degrees, then expressions in [0, 1].
PARAMS = ("yaw", "pitch", "roll", "jaw_open", "smile", "blink", "brow_raise", "pucker")
# Network input scale: the MLP sees Δparam / PARAM_SCALE (pose in tens of degrees).
PARAM_SCALE = (10.0, 10.0, 10.0, 1.0, 1.0, 1.0, 1.0, 1.0)
PE_PREFIX = "pose_expression."  # shared tensors of the pose/expression network in Bundle.extra
MAX_EDITS = 1024  # edits one bundle may list
LM_FEATURES = 936  # landmark_features() width: 468 landmarks × (x, y)
# The pose/expression network's config (PoseExpressionNet.config(), stored in each pose_expression spec's extra.net).
PE_NET_FIELDS: dict[str, Rule] = {
    "num_layers": Int(1, 64),  # coarse W+ entries it drives
    "w_dim": Int(1, 4096),
    "hidden": Int(1, 16384),
    "num_params": Int(len(PARAMS), len(PARAMS)),
    "delta_max": Optional(ListOf(Float(0, 1e6), len(PARAMS), len(PARAMS))),
}


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
    extra: dict[str, Any] = field(default_factory=dict)  # target, measured effect sizes, provenance, …

    # Type and range of every field (bundle.json is untrusted input). Relations and kind-specific extras: validate().
    FIELDS: ClassVar[dict[str, Rule]] = {
        "name": Str(max_len=100, min_len=1, forbid="=\n\r"),
        "kind": Str(choices=KINDS),
        "description": Str(max_len=1000),
        "layers": Optional(ListOf(Int(0, 1023), 0, 1024)),
        "style_layer": Str(max_len=100),
        "channel": Int(-1, 1 << 16),
        "scale": Float(-1e6, 1e6),
        "default": Float(-1e6, 1e6),
        "range": ListOf(Float(-1e6, 1e6), 2, 2, tuple_=True),
        "extra": JSONObject(),
    }

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["range"] = list(self.range)
        return d

    def validate(self) -> EditSpec:
        """Check every field and what the kind needs in ``extra``; raise :class:`FieldError` naming the field."""
        check_fields(self.FIELDS, self.to_dict())
        lo, hi = self.range
        if lo > hi:
            raise FieldError("range", f"must be [low, high] with low ≤ high, got [{lo:g}, {hi:g}]")
        if not lo <= self.default <= hi:
            raise FieldError("default", f"must be inside the range [{lo:g}, {hi:g}], got {self.default:g}")
        if self.kind == "style_channel":
            if not self.style_layer:
                raise FieldError("style_layer", "a style_channel edit needs a StyleSpace layer name")
            if self.channel < 0:
                raise FieldError("channel", f"a style_channel edit needs a channel ≥ 0, got {self.channel}")
        if self.kind == "pose_expression":
            target = self.extra.get("target")
            if not isinstance(target, dict) or not target or set(target) - set(PARAMS):
                raise FieldError("extra.target", f"must map some of {', '.join(PARAMS)} to numbers, got "
                                                 f"{show(target)}")
            for k, v in target.items():
                check_value(Float(), v, f"extra.target.{k}")
            if self.extra.get("net") is not None:
                check_value(lambda v: check_fields(PE_NET_FIELDS, v, required=("num_layers", "w_dim", "hidden")),
                            self.extra["net"], "extra.net")
        return self

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EditSpec:
        """From JSON; raises :class:`FieldError` (a ValueError) for an unknown field or a bad value."""
        return cls(**check_fields(cls.FIELDS, d, required=("name", "kind"))).validate()


def tensor_key(name: str, what: str = "direction") -> str:
    return f"edit.{name}.{what}"


def check_edit_list(raw: Any, layout: WPlusLayout, style_channels: Mapping[str, int],
                    tensors: Mapping[str, TensorInfo], where: str = "extra.safetensors") -> list[EditSpec]:
    """Check a bundle's edit list (JSON) against the generator it drives and the tensors that exist for it — from
    their shapes alone, before any is loaded. ``style_channels``: {StyleSpace layer: channels} of that generator
    (``latents.style_layers``); ``tensors``: the extra tensors' headers ({name: TensorInfo}); ``where``: how messages
    name the file holding them. Raises :class:`FieldError` with the path ``[i] (name).field``."""
    specs = check_value(ListOf(JSONObject(), 0, MAX_EDITS), raw, "")
    out: list[EditSpec] = []
    seen: dict[str, int] = {}
    pe_cfg: dict[str, Any] | None = None
    for i, d in enumerate(specs):
        name = d.get("name")
        label = f"[{i}] ({name})" if isinstance(name, str) and name and len(name) <= 100 else f"[{i}]"
        try:
            spec = EditSpec.from_dict(d)
            if spec.name in seen:
                raise FieldError("name", f"the name {spec.name!r} is used twice (also by edits[{seen[spec.name]}])")
            seen[spec.name] = i
            pe_cfg = _check_edit_against(spec, layout, style_channels, tensors, where, pe_cfg)
        except FieldError as exc:
            raise exc.within(label) from None
        out.append(spec)
    return out


def _check_edit_against(s: EditSpec, layout: WPlusLayout, style_channels: Mapping[str, int],
                        tensors: Mapping[str, TensorInfo], where: str, pe_cfg: dict[str, Any] | None
                        ) -> dict[str, Any] | None:
    """One edit against the generator and the extra tensors; → the pose/expression config in force after it."""
    n, w = layout.num_ws, layout.w_dim

    def tensor(key: str, field: str = "") -> tuple[int, ...]:
        info = tensors.get(key)
        if info is None:
            raise FieldError(field, f"a {s.kind} edit needs the tensor {key}, but there is no tensor {key} in {where}")
        if info.dtype not in FLOAT_DTYPES:
            raise FieldError(field, f"tensor {key} in {where} has dtype {info.dtype}, not a floating-point type")
        return info.shape

    for j, layer in enumerate(s.layers or []):
        if layer >= n:
            raise FieldError(f"layers[{j}]", f"must be < {n} (the generator has {n} W+ entries), got {layer}")
    if s.kind in ("w_direction", "random_identity"):
        shape = tensor(tensor_key(s.name))
        if shape not in ((w,), (n, w)):
            raise FieldError("", f"tensor {tensor_key(s.name)} in {where} has shape {shape}; a direction must be "
                                 f"[{w}] or [{n}, {w}] for this generator")
    elif s.kind == "style_channel":
        if s.style_layer not in style_channels:
            some = ", ".join(list(style_channels)[:3])
            raise FieldError("style_layer", f"no StyleSpace layer {s.style_layer!r} in this generator (it has "
                                            f"{some}, …)")
        c = style_channels[s.style_layer]
        if s.channel >= c:
            raise FieldError("channel", f"must be < {c} ({s.style_layer} has {c} channels), got {s.channel}")
    elif s.kind == "keep_mouth":
        key = tensor_key(s.name, "basis")
        shape = tensor(key)
        if len(shape) != 2 or shape[1] != n * w or not 1 <= shape[0] <= n * w:
            raise FieldError("", f"tensor {key} in {where} has shape {shape}; the lip basis must be [r, {n * w}] "
                                 f"with 1 ≤ r ≤ {n * w}")
    elif s.kind == "pose_expression":
        net = s.extra.get("net")
        if net is not None:
            _check_pe_net(net, layout, tensors, where)
        elif pe_cfg is None:
            raise FieldError("extra.net", "is missing: the first pose_expression edit must carry the pose/expression "
                                          "network's config")
        return pe_cfg or net
    return pe_cfg


def _check_pe_net(cfg: dict[str, Any], layout: WPlusLayout, tensors: Mapping[str, TensorInfo], where: str) -> None:
    """The pose/expression network's config against the generator and the shapes of its tensors."""
    n, w = layout.num_ws, layout.w_dim
    if cfg["w_dim"] != w:
        raise FieldError("extra.net.w_dim", f"must equal the generator's w_dim ({w}), got {cfg['w_dim']}")
    if cfg["num_layers"] > n:
        raise FieldError("extra.net.num_layers", f"must be ≤ the generator's {n} W+ entries, got {cfg['num_layers']}")
    shapes = module_shapes(lambda: PoseExpressionNet(cfg["num_layers"], cfg["w_dim"], cfg["hidden"],
                                                     cfg.get("num_params", len(PARAMS)))) or {}
    p = len(PARAMS)
    expected = {PE_PREFIX + "net." + k: v for k, v in shapes.items()}
    expected[PE_PREFIX + "w_readout.weight"] = (p, cfg["num_layers"] * w)
    expected[PE_PREFIX + "w_readout.bias"] = (p,)
    optional = {PE_PREFIX + "lm_readout.weight": (p, LM_FEATURES), PE_PREFIX + "lm_readout.bias": (p,)}
    for key, shape in [*expected.items(), *optional.items()]:
        info = tensors.get(key)
        if info is None:
            if key in optional:
                continue
            raise FieldError("extra.net", f"the pose/expression network needs the tensor {key}, missing in {where}")
        if info.dtype not in FLOAT_DTYPES or info.shape != shape:
            raise FieldError("extra.net", f"tensor {key} in {where} has shape {info.shape} ({info.dtype}); this "
                                          f"config implies {shape} (floating point)")


@dataclass
class EditContext:
    """Per-frame inputs some edits can use (all optional; without them every edit still works from W+ alone).

    landmarks: the frame's tracked face-mesh landmarks [468, ≥2] in *frame* pixels (``Track.landmarks``).
    to_frame: the crop → frame affine [2, 3] of this frame's aligned crop (``Crop.to_frame``), so the landmarks
        can be expressed in crop pixels.
    crop_size: side of that crop in pixels (the encoder's input size).
    Alternatively pass ``crop_landmarks`` [468, ≥2] already in crop pixels (then the other three are unused).
    """

    landmarks: Any = None  # [468, ≥2] frame px (np.ndarray or torch.Tensor)
    to_frame: Any = None  # [2, 3] crop px → frame px
    crop_size: int = 0  # crop side the affine refers to
    crop_landmarks: Any = None  # [468, ≥2] crop px (takes precedence)

    def landmarks_in_crop(self) -> np.ndarray | None:
        """[468, 2] float64 crop pixels, or None when the context has no landmarks."""
        if self.crop_landmarks is not None:
            return _as_np(self.crop_landmarks)[:, :2].astype(np.float64)
        if self.landmarks is None or self.to_frame is None:
            return None
        lm = _as_np(self.landmarks)[:, :2].astype(np.float64)
        m = _as_np(self.to_frame).astype(np.float64)
        a, t = m[:, :2], m[:, 2]
        return (lm - t) @ np.linalg.inv(a).T


def _as_np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x)


# ------------------------------------------------------------------------------------ pose/expression network


class PoseExpressionNet(nn.Module):
    """Video2StyleGAN §4.4: a 3-layer MLP from the change of face-mesh pose/expression parameters between two
    frames to the change of the coarse W+ layers. dp [B, len(PARAMS)] (scaled by PARAM_SCALE) →
    ΔW [B, len(layers), w_dim]. A linear skip (``lin``, initialised from the supervised regression) carries the
    first-order answer; the MLP learns the rest."""

    def __init__(self, num_layers: int, w_dim: int, hidden: int = 256, num_params: int = len(PARAMS)):
        super().__init__()
        self.num_layers, self.w_dim, self.hidden, self.num_params = num_layers, w_dim, hidden, num_params
        out = num_layers * w_dim
        self.delta_max: list[float] | None = None  # per-parameter |Δ| seen in training; run time clamps to it
        self.mlp = nn.Sequential(nn.Linear(num_params, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden),
                                 nn.LeakyReLU(0.2), nn.Linear(hidden, out))
        self.lin = nn.Linear(num_params, out, bias=False)
        nn.init.zeros_(self.mlp[4].weight)
        nn.init.zeros_(self.mlp[4].bias)

    def forward(self, dp: torch.Tensor) -> torch.Tensor:
        assert dp.ndim == 2 and dp.shape[1] == self.num_params, dp.shape
        y = self.lin(dp) + self.mlp(dp) - self.mlp(torch.zeros_like(dp[:1]))  # Δparams = 0 → ΔW = 0 exactly
        return y.view(dp.shape[0], self.num_layers, self.w_dim)

    def config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {"num_layers": self.num_layers, "w_dim": self.w_dim, "hidden": self.hidden,
                               "num_params": self.num_params}
        if self.delta_max is not None:
            cfg["delta_max"] = list(self.delta_max)
        return cfg

    def to_extra(self) -> dict[str, torch.Tensor]:
        return {PE_PREFIX + "net." + k: v.detach().cpu().clone() for k, v in self.state_dict().items()}

    @classmethod
    def from_extra(cls, tensors: dict[str, torch.Tensor], cfg: dict[str, Any]) -> PoseExpressionNet:
        net = cls(int(cfg["num_layers"]), int(cfg["w_dim"]), int(cfg["hidden"]), int(cfg["num_params"]))
        if cfg.get("delta_max") is not None:
            net.delta_max = [float(x) for x in cfg["delta_max"]]
        prefix = PE_PREFIX + "net."
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            raise UserError(f"the bundle's pose/expression network does not match its config ({exc})") from None
        return net.eval().requires_grad_(False)


def landmark_features(lm: torch.Tensor) -> torch.Tensor:
    """Pose/expression-readout features of crop landmarks [B, 468, ≥2] → [B, 936]: coordinates relative to the
    eye midpoint in inter-ocular units (translation/scale invariant)."""
    xy = lm[..., :2].to(torch.float32)
    left = xy[:, [33, 133]].mean(1)
    right = xy[:, [263, 362]].mean(1)
    mid = (left + right) / 2
    iod = (right - left).norm(dim=-1).clamp_min(1e-3)
    return ((xy - mid[:, None]) / iod[:, None, None]).flatten(1)


# ---------------------------------------------------------------------------------------------- the stack


class EditStack:
    """Composable edits with live strengths. ``apply(ws)`` → (edited ws, StyleSpace deltas or None).

    Thread-safe: the UI thread sets strengths while the device worker applies them.
    """

    def __init__(self, specs: list[EditSpec], tensors: dict[str, torch.Tensor],
                 style_channels: dict[str, int] | None = None, pe_config: dict[str, Any] | None = None):
        """style_channels: {StyleSpace layer name: channels} of the generator (needed by style_channel edits).
        pe_config: the pose/expression network's config (``bundle.provenance["pose_expression"]`` or the first
        pose_expression spec's ``extra["net"]``)."""
        self.specs = {s.name: s for s in specs}
        if len(self.specs) != len(specs):
            raise UserError("the bundle lists two edits with the same name")
        self.tensors = tensors
        self.style_channels = style_channels or {}
        self._net: PoseExpressionNet | None = None
        self._pe_cfg: dict[str, Any] | None = pe_config
        for s in specs:
            if s.kind in ("w_direction", "random_identity") and tensor_key(s.name) not in tensors:
                raise UserError(f"edit {s.name!r} has no direction tensor {tensor_key(s.name)!r} in the bundle")
            if s.kind == "style_channel" and not 0 <= s.channel < self.style_channels.get(s.style_layer, 0):
                raise UserError(f"edit {s.name!r}: channel {s.channel} of layer {s.style_layer!r} does not exist "
                                "in this generator")
            if s.kind == "keep_mouth" and tensor_key(s.name, "basis") not in tensors:
                raise UserError(f"edit {s.name!r} has no lip basis {tensor_key(s.name, 'basis')!r} in the bundle")
            if s.kind == "pose_expression":
                cfg = self._pe_cfg or s.extra.get("net")
                if not isinstance(cfg, dict) or PE_PREFIX + "w_readout.weight" not in tensors:
                    raise UserError(f"edit {s.name!r} needs the pose/expression network, which this bundle lacks")
                self._pe_cfg = cfg
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
        if not math.isfinite(value) or not lo <= value <= hi:
            raise UserError(f"edit {name}: strength {value:g} is outside its range [{lo:g}, {hi:g}] "
                            "(stylestream run --list-edits shows every edit's range)")
        with self._lock:
            self._strength[name] = float(value)

    def set_strengths(self, values: dict[str, float], reset: bool = False) -> None:
        """Several strengths at once (unknown names raise before anything changes); ``reset`` zeroes the rest."""
        for name in values:
            if name not in self.specs:
                self.set_strength(name, 0.0)  # raises the clear error
        with self._lock:
            if reset:
                self._strength = dict.fromkeys(self._strength, 0.0)
        for name, v in values.items():
            self.set_strength(name, v)

    def active(self) -> bool:
        with self._lock:
            return any(v != 0 for v in self._strength.values())

    # -- pose/expression ------------------------------------------------------------------------------------
    def pose_expression_net(self, device: torch.device | None = None) -> PoseExpressionNet:
        if self._net is None:
            if self._pe_cfg is None:
                raise UserError("this bundle has no pose/expression network")
            self._net = PoseExpressionNet.from_extra(self.tensors, self._pe_cfg)
        if device is not None and next(self._net.parameters()).device != device:
            self._net.to(device)
        return self._net

    def estimate_params(self, ws: torch.Tensor, context: EditContext | None = None) -> torch.Tensor:
        """Current pose/expression parameters [B, len(PARAMS)] (degrees / [0, 1]): from the frame's landmarks
        when the context has them and the bundle has a landmark readout, else read out of W+ linearly."""
        t = self.tensors
        lm = context.landmarks_in_crop() if context is not None else None
        key = PE_PREFIX + "lm_readout.weight"
        if lm is not None and key in t:
            feats = landmark_features(torch.as_tensor(lm, dtype=torch.float32)[None]).to(ws.device)
            p = feats @ t[key].to(ws.device, torch.float32).T + t[PE_PREFIX + "lm_readout.bias"].to(ws.device)
            return p.expand(ws.shape[0], -1).to(ws.dtype)
        layers = list(range(int(self._pe_cfg["num_layers"]))) if self._pe_cfg else []
        x = ws[:, layers].flatten(1).to(torch.float32)
        w, b = t[PE_PREFIX + "w_readout.weight"].to(ws.device), t[PE_PREFIX + "w_readout.bias"].to(ws.device)
        return (x @ w.T.to(torch.float32) + b.to(torch.float32)).to(ws.dtype)

    def pose_expression_delta(self, ws: torch.Tensor, target: dict[str, float], context: EditContext | None = None
                              ) -> torch.Tensor:
        """ΔW [B, num_ws, w_dim] that moves the frame's parameters to ``target`` (parameters not named keep
        their value)."""
        cur = self.estimate_params(ws, context).to(torch.float32)  # [B, P]
        goal = cur.clone()
        for k, v in target.items():
            goal[:, PARAMS.index(k)] = float(v)
        scale = torch.tensor(PARAM_SCALE, device=ws.device)
        net = self.pose_expression_net(ws.device)
        delta = goal - cur
        if net.delta_max is not None:  # beyond the changes seen in training the network only extrapolates
            lim = torch.tensor(net.delta_max, device=ws.device)
            delta = torch.maximum(torch.minimum(delta, lim), -lim)
        with torch.no_grad():
            d = net(delta / scale)  # [B, L, w_dim]
        out = torch.zeros_like(ws)
        out[:, : d.shape[1]] = d.to(ws.dtype)
        return out

    # -- composition ----------------------------------------------------------------------------------------
    def edit_delta(self, name: str, k: float, ws: torch.Tensor, context: EditContext | None = None
                   ) -> torch.Tensor | None:
        """ΔW [B, num_ws, w_dim] of one W-space edit at strength k (None for StyleSpace / modifier kinds)."""
        s = self.specs[name]
        if s.kind in ("w_direction", "random_identity"):
            d = self.tensors[tensor_key(name)].to(ws.device, ws.dtype) * (k * s.scale)
            layers = s.layers if s.layers is not None else list(range(ws.shape[1]))
            out = torch.zeros_like(ws)
            out[:, layers] = d if d.ndim == 1 else d[layers]
            return out
        if s.kind == "pose_expression":
            return self.pose_expression_delta(ws, s.extra["target"], context) * (k * s.scale)
        return None

    def apply(self, ws: torch.Tensor, context: EditContext | None = None
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        """ws: [B, num_ws, w_dim] → edited copy and StyleSpace deltas {layer: [B, C]} (None when there are none).
        ``context`` (optional): the frame's landmarks for pose_expression targets (see :class:`EditContext`).
        With no active edit the input tensor itself is returned."""
        strengths = self.strengths()
        deltas: dict[str, torch.Tensor] = {}
        keep = [(n, k) for n, k in strengths.items() if k != 0 and self.specs[n].kind == "keep_mouth"]
        free = torch.zeros_like(ws) if any(k for k in strengths.values()) else None
        guarded = torch.zeros_like(ws) if keep else None
        for name, k in strengths.items():
            if k == 0:
                continue
            s = self.specs[name]
            if s.kind == "style_channel":
                t = deltas.get(s.style_layer)
                if t is None:
                    t = torch.zeros(ws.shape[0], self.style_channels[s.style_layer], device=ws.device,
                                    dtype=ws.dtype)
                t[:, s.channel] += k * s.scale
                deltas[s.style_layer] = t
                continue
            d = self.edit_delta(name, k, ws, context)
            if d is None:
                continue
            if guarded is not None and s.extra.get("keep_mouth", True) and s.kind != "random_identity":
                guarded += d
            else:
                free += d  # type: ignore[operator]
        if free is None:
            return ws, None
        if guarded is not None:
            for name, k in keep:
                guarded = self._keep_mouth(name, min(max(k, 0.0), 1.0), guarded)
            free = free + guarded
        return ws + free, (deltas or None)

    def _keep_mouth(self, name: str, k: float, d: torch.Tensor) -> torch.Tensor:
        """Remove k × the inner-lip-moving component of ΔW d [B, num_ws, w_dim]."""
        u = self.tensors[tensor_key(name, "basis")].to(d.device, torch.float32)  # [r, num_ws·w_dim], orthonormal
        flat = d.flatten(1).to(torch.float32)
        proj = (flat @ u.T) @ u
        return (flat - k * proj).view_as(d).to(d.dtype)


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
