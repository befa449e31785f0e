"""Writers of small checkpoints in the official formats, and reference forwards written from the official code.

Nothing here uses ``models.stylegan2``: the parameter trees are spelled out from the NVlabs
(stylegan2-ada-pytorch ``training/networks.py``) and rosinality (``model.py``) sources, so a naming or
semantics mistake in our generator or in ``models/legacy.py`` shows up as a mismatch.
"""

from __future__ import annotations

import math
import pickle
import sys
import types
from collections import OrderedDict
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

from models import ops

SQRT2 = math.sqrt(2.0)
FIR = (1, 3, 3, 1)


def channels(res: int, cbase: int, cmax: int) -> dict[int, int]:
    return {2**i: min(cbase // 2**i, cmax) for i in range(2, int(math.log2(res)) + 1)}


# ---------------------------------------------------------------------------------------------------------------
# NVlabs stylegan2-ada-pytorch: parameter tree + the torch_utils.persistence pickle structure


class Persisted:
    """A node that pickles exactly as torch_utils.persistence does: _reconstruct_persistent_obj(meta)."""

    def __init__(self, class_name: str, params=None, buffers=None, modules=None, init_kwargs=None, **attrs):
        self.class_name = class_name
        self.state = {
            "training": False,
            "_parameters": OrderedDict(
                (k, torch.nn.Parameter(v, requires_grad=False)) for k, v in (params or {}).items()),
            "_buffers": OrderedDict(buffers or {}),
            "_non_persistent_buffers_set": set(),
            "_backward_hooks": OrderedDict(),
            "_forward_hooks": OrderedDict(),
            "_forward_pre_hooks": OrderedDict(),
            "_state_dict_hooks": OrderedDict(),
            "_load_state_dict_pre_hooks": OrderedDict(),
            "_modules": OrderedDict(modules or {}),
            "_init_args": (),
            "_init_kwargs": init_kwargs if init_kwargs is not None else {},
            **attrs,
        }


MODULE_SRC = "import os\nos.system('echo this source must never be executed')\n"


@contextmanager
def official_modules():
    """Temporarily provide torch_utils.persistence and dnnlib.util so pickle can name their globals."""
    tu = types.ModuleType("torch_utils")
    tp = types.ModuleType("torch_utils.persistence")
    dn = types.ModuleType("dnnlib")
    du = types.ModuleType("dnnlib.util")

    def _reconstruct_persistent_obj(meta):  # never called by our loader
        raise AssertionError("original reconstruct must not run")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    tp._reconstruct_persistent_obj = _reconstruct_persistent_obj

    class EasyDict(dict):
        pass

    EasyDict.__module__ = "dnnlib.util"
    EasyDict.__qualname__ = "EasyDict"
    du.EasyDict = EasyDict
    tu.persistence = tp
    dn.util = du
    saved = {k: sys.modules.get(k) for k in ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util")}
    sys.modules.update({"torch_utils": tu, "torch_utils.persistence": tp, "dnnlib": dn, "dnnlib.util": du})
    try:
        yield tp, du
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def _fc(w_in, w_out, activation="linear", lr=1.0, bias_init=0.0, g=None):
    weight = torch.randn([w_out, w_in], generator=g) / lr
    bias = torch.full([w_out], float(bias_init)) + 0.1 * torch.randn([w_out], generator=g)
    return Persisted("FullyConnectedLayer", params={"weight": weight, "bias": bias},
                     activation=activation, weight_gain=np.float64(lr / np.sqrt(w_in)), bias_gain=lr,
                     init_kwargs={"in_features": w_in, "out_features": w_out, "activation": activation,
                                  "lr_multiplier": lr, "bias_init": bias_init})


def _filt():
    f = torch.tensor(FIR, dtype=torch.float32)
    f = torch.outer(f, f)
    return f / f.sum()


def _layer(cin, cout, w_dim, res, up, clamp, g):
    return Persisted(
        "SynthesisLayer",
        params={"weight": torch.randn([cout, cin, 3, 3], generator=g),
                "noise_strength": 0.3 * torch.randn([], generator=g),
                "bias": 0.1 * torch.randn([cout], generator=g)},
        buffers={"resample_filter": _filt(), "noise_const": torch.randn([res, res], generator=g)},
        modules={"affine": _fc(w_dim, cin, bias_init=1, g=g)},
        resolution=res, up=up, use_noise=True, activation="lrelu", conv_clamp=clamp, padding=1,
        act_gain=np.float64(np.sqrt(2)),
    )


def official_generator_tree(z_dim=32, w_dim=32, res=32, cbase=256, cmax=32, n_map=2, clamp=None, seed=0):
    """The persisted G of stylegan2-ada-pytorch (c_dim=0, skip architecture) with random values."""
    g = torch.Generator().manual_seed(seed)
    ch = channels(res, cbase, cmax)
    sk = {"channel_base": cbase, "channel_max": cmax, "num_fp16_res": 0, "conv_clamp": clamp}
    blocks = OrderedDict()
    for r in ch:
        cin = ch[r // 2] if r > 4 else 0
        mods = OrderedDict()
        params = {}
        if cin == 0:
            params["const"] = torch.randn([ch[r], r, r], generator=g)
        else:
            mods["conv0"] = _layer(cin, ch[r], w_dim, r, 2, clamp, g)
        mods["conv1"] = _layer(ch[r], ch[r], w_dim, r, 1, clamp, g)
        mods["torgb"] = Persisted(
            "ToRGBLayer", params={"weight": torch.randn([3, ch[r], 1, 1], generator=g),
                                  "bias": 0.1 * torch.randn([3], generator=g)},
            modules={"affine": _fc(w_dim, ch[r], bias_init=1, g=g)}, conv_clamp=clamp,
            weight_gain=np.float64(1 / np.sqrt(ch[r])))
        blocks[f"b{r}"] = Persisted("SynthesisBlock", params=params, buffers={"resample_filter": _filt()},
                                    modules=mods, architecture="skip", resolution=r, num_conv=2 if cin else 1,
                                    num_torgb=1)
    num_ws = 2 * int(math.log2(res)) - 2
    synthesis = Persisted("SynthesisNetwork", modules=blocks, w_dim=w_dim, img_resolution=res, img_channels=3,
                          block_resolutions=list(ch), num_ws=num_ws)
    fcs = OrderedDict((f"fc{i}", _fc(z_dim if i == 0 else w_dim, w_dim, "lrelu", 0.01, g=g)) for i in range(n_map))
    mapping = Persisted("MappingNetwork", modules=fcs, buffers={"w_avg": 0.1 * torch.randn([w_dim], generator=g)},
                        z_dim=z_dim, c_dim=0, w_dim=w_dim, num_ws=num_ws, num_layers=n_map, w_avg_beta=0.995)
    return Persisted("Generator", modules={"synthesis": synthesis, "mapping": mapping},
                     init_kwargs={"z_dim": z_dim, "c_dim": 0, "w_dim": w_dim, "img_resolution": res, "img_channels": 3,
                                  "mapping_kwargs": {"num_layers": n_map}, "synthesis_kwargs": sk},
                     z_dim=z_dim, c_dim=0, w_dim=w_dim, img_resolution=res, img_channels=3, num_ws=num_ws)


def flat_state(node: Persisted, prefix="") -> dict[str, torch.Tensor]:
    out = {prefix + k: v.detach() for k, v in node.state["_parameters"].items()}
    out.update({prefix + k: v for k, v in node.state["_buffers"].items()})
    for k, child in node.state["_modules"].items():
        out.update(flat_state(child, prefix + k + "."))
    return out


def write_nvlabs_pkl(path, G: Persisted, protocol: int = 4, extra_objects: dict | None = None) -> None:
    """Pickle {G, D, G_ema, augment_pipe, training_set_kwargs} the way stylegan2-ada-pytorch's training loop does."""
    with official_modules() as (tp, du):
        def convert(node):
            if isinstance(node, Persisted):
                st = dict(node.state)
                if isinstance(st["_modules"], dict):  # (tests replace it by a list to build malformed pickles)
                    st["_modules"] = OrderedDict((k, v) for k, v in st["_modules"].items())
                if "_init_kwargs" in st:  # (tests delete it to build malformed pickles)
                    st["_init_kwargs"] = _easy(st["_init_kwargs"], du.EasyDict)
                return node.class_name, st
            return None

        class PersistencePickler(pickle.Pickler):
            def reducer_override(self, obj):
                if isinstance(obj, Persisted):
                    name, st = convert(obj)
                    meta = {"type": "class", "version": 6, "module_src": MODULE_SRC, "class_name": name, "state": st}
                    return tp._reconstruct_persistent_obj, (meta,)
                return NotImplemented

        D = Persisted("Discriminator", params={"dummy": torch.randn(4)})
        data = {"G": G, "D": D, "G_ema": G, "augment_pipe": None,
                "training_set_kwargs": du.EasyDict(class_name="training.dataset.ImageFolderDataset", path="ffhq.zip",
                                                   resolution=G.state.get("img_resolution"))}
        data.update(extra_objects or {})
        with open(path, "wb") as f:
            PersistencePickler(f, protocol=protocol).dump(data)


def _easy(d, cls):
    if isinstance(d, dict):
        return cls({k: _easy(v, cls) for k, v in d.items()})
    return d


def nvlabs_reference_forward(sd: dict[str, torch.Tensor], z: torch.Tensor, res: int, n_map: int,
                             clamp=None) -> torch.Tensor:
    """NVlabs Generator.forward(z, c=None, noise_mode='const') on a flat official state dict (fused_modconv path)."""
    x = ops.normalize_2nd_moment(z)
    for i in range(n_map):
        w, b = sd[f"mapping.fc{i}.weight"], sd[f"mapping.fc{i}.bias"]
        x = F.leaky_relu(x @ (w * (0.01 / math.sqrt(w.shape[1]))).t() + b * 0.01, 0.2) * SQRT2
    num_ws = 2 * int(math.log2(res)) - 2
    ws = x.unsqueeze(1).repeat(1, num_ws, 1)
    f = _filt()

    def affine(p, w):
        a, ab = sd[p + ".affine.weight"], sd[p + ".affine.bias"]
        return w @ (a / math.sqrt(a.shape[1])).t() + ab

    def layer(p, x, w, up):
        noise = sd[p + ".noise_const"] * sd[p + ".noise_strength"]
        y = ops.modulated_conv2d(x, sd[p + ".weight"], affine(p, w), noise=noise, up=up, padding=1,
                                 resample_filter=f, impl="reference")
        y = F.leaky_relu(y + sd[p + ".bias"].reshape(1, -1, 1, 1), 0.2) * SQRT2
        return y.clamp(-clamp, clamp) if clamp is not None else y

    def torgb(p, x, w):
        s = affine(p, w) / math.sqrt(sd[p + ".weight"].shape[1])
        y = ops.modulated_conv2d(x, sd[p + ".weight"], s, demodulate=False, impl="reference")
        y = y + sd[p + ".bias"].reshape(1, -1, 1, 1)
        return y.clamp(-clamp, clamp) if clamp is not None else y

    img = None
    idx = 0
    r = 4
    while r <= res:
        p = f"synthesis.b{r}"
        if r == 4:
            x = sd[p + ".const"].unsqueeze(0).repeat(z.shape[0], 1, 1, 1)
            x = layer(p + ".conv1", x, ws[:, 0], 1)
            y = torgb(p + ".torgb", x, ws[:, 1])
            idx = 1
        else:
            x = layer(p + ".conv0", x, ws[:, idx], 2)
            x = layer(p + ".conv1", x, ws[:, idx + 1], 1)
            y = torgb(p + ".torgb", x, ws[:, idx + 2])
            idx += 2
        img = y if img is None else ops.upsample2d(img, f) + y
        r *= 2
    return img


# ---------------------------------------------------------------------------------------------------------------
# rosinality stylegan2-pytorch


def rosinality_state(size=32, style_dim=32, n_mlp=2, channel_multiplier=2, cmax=32, seed=0):
    """A random g_ema state dict with rosinality's key names and shapes (channels capped at cmax)."""
    g = torch.Generator().manual_seed(seed)
    full = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * channel_multiplier, 128: 128 * channel_multiplier,
            256: 64 * channel_multiplier, 512: 32 * channel_multiplier, 1024: 16 * channel_multiplier}
    ch = {r: min(c, cmax) for r, c in full.items()}
    sd: dict[str, torch.Tensor] = {}
    for i in range(1, n_mlp + 1):
        sd[f"style.{i}.weight"] = torch.randn(style_dim, style_dim, generator=g) / 0.01
        sd[f"style.{i}.bias"] = 0.1 * torch.randn(style_dim, generator=g)
    sd["input.input"] = torch.randn(1, ch[4], 4, 4, generator=g)

    def conv(p, cin, cout, up):
        sd[p + ".conv.weight"] = torch.randn(1, cout, cin, 3, 3, generator=g)
        sd[p + ".conv.modulation.weight"] = torch.randn(cin, style_dim, generator=g)
        sd[p + ".conv.modulation.bias"] = 1 + 0.1 * torch.randn(cin, generator=g)
        if up:
            k = torch.tensor(FIR, dtype=torch.float32)
            k = torch.outer(k, k)
            sd[p + ".conv.blur.kernel"] = k / k.sum() * 4
        sd[p + ".noise.weight"] = 0.3 * torch.randn(1, generator=g)
        sd[p + ".activate.bias"] = 0.1 * torch.randn(cout, generator=g)

    def rgb(p, cin, up):
        sd[p + ".conv.weight"] = torch.randn(1, 3, cin, 1, 1, generator=g)
        sd[p + ".conv.modulation.weight"] = torch.randn(cin, style_dim, generator=g)
        sd[p + ".conv.modulation.bias"] = 1 + 0.1 * torch.randn(cin, generator=g)
        sd[p + ".bias"] = 0.1 * torch.randn(1, 3, 1, 1, generator=g)
        if up:
            k = torch.tensor(FIR, dtype=torch.float32)
            k = torch.outer(k, k)
            sd[p + ".upsample.kernel"] = k / k.sum() * 4

    conv("conv1", ch[4], ch[4], False)
    rgb("to_rgb1", ch[4], False)
    log_size = int(math.log2(size))
    in_ch = ch[4]
    for j, i in enumerate(range(3, log_size + 1)):
        out_ch = ch[2**i]
        conv(f"convs.{2 * j}", in_ch, out_ch, True)
        conv(f"convs.{2 * j + 1}", out_ch, out_ch, False)
        rgb(f"to_rgbs.{j}", out_ch, True)
        in_ch = out_ch
    num_layers = (log_size - 2) * 2 + 1
    for n in range(num_layers):
        r = 2 ** ((n + 5) // 2)
        sd[f"noises.noise_{n}"] = torch.randn(1, 1, r, r, generator=g)
    return sd


def _rosi_upfirdn(x, kernel, up, pad0, pad1):
    b, c, h, w = x.shape
    if up > 1:
        x = x.view(b, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1]).view(b, c, h * up, w * up)
    x = F.pad(x, [pad0, pad1, pad0, pad1])
    k = torch.flip(kernel, [0, 1]).view(1, 1, *kernel.shape).repeat(c, 1, 1, 1)
    return F.conv2d(x, k, groups=c)


def rosinality_reference_forward(sd, z, size, n_mlp, style_dim) -> torch.Tensor:
    """rosinality Generator([z], input_is_latent=False, randomize_noise=False) on a state dict."""
    x = z * torch.rsqrt(z.pow(2).mean(dim=1, keepdim=True) + 1e-8)
    for i in range(1, n_mlp + 1):
        w = sd[f"style.{i}.weight"]
        x = F.linear(x, w * (1 / math.sqrt(w.shape[1]) * 0.01))
        x = F.leaky_relu(x + sd[f"style.{i}.bias"] * 0.01, 0.2) * SQRT2
    log_size = int(math.log2(size))
    n_latent = log_size * 2 - 2
    latent = x.unsqueeze(1).repeat(1, n_latent, 1)
    B = z.shape[0]
    k = torch.tensor(FIR, dtype=torch.float32)
    k = torch.outer(k, k)
    k = k / k.sum()

    def modconv(x, p, style, demod, up):
        weight = sd[p + ".conv.weight"]
        _, O, I, ks, _ = weight.shape
        m = sd[p + ".conv.modulation.weight"]
        s = F.linear(style, m * (1 / math.sqrt(m.shape[1])), sd[p + ".conv.modulation.bias"])
        wt = (1 / math.sqrt(I * ks * ks)) * weight * s.view(B, 1, I, 1, 1)
        if demod:
            wt = wt * torch.rsqrt(wt.pow(2).sum([2, 3, 4]) + 1e-8).view(B, O, 1, 1, 1)
        h, w_ = x.shape[2:]
        if up:
            wt = wt.transpose(1, 2).reshape(B * I, O, ks, ks)
            out = F.conv_transpose2d(x.reshape(1, B * I, h, w_), wt, padding=0, stride=2, groups=B)
            out = out.view(B, O, *out.shape[2:])
            return _rosi_upfirdn(out, k * 4, 1, 1, 1)
        out = F.conv2d(x.reshape(1, B * I, h, w_), wt.view(B * O, I, ks, ks), padding=ks // 2, groups=B)
        return out.view(B, O, h, w_)

    def styled(x, p, style, noise, up):
        out = modconv(x, p, style, True, up)
        out = out + sd[p + ".noise.weight"] * noise
        return F.leaky_relu(out + sd[p + ".activate.bias"].view(1, -1, 1, 1), 0.2) * SQRT2

    def to_rgb(x, p, style, skip):
        out = modconv(x, p, style, False, False) + sd[p + ".bias"]
        if skip is not None:
            out = out + _rosi_upfirdn(skip, k * 4, 2, 2, 1)
        return out

    out = sd["input.input"].repeat(B, 1, 1, 1)
    out = styled(out, "conv1", latent[:, 0], sd["noises.noise_0"], False)
    skip = to_rgb(out, "to_rgb1", latent[:, 1], None)
    i = 1
    for j in range(log_size - 2):
        out = styled(out, f"convs.{2 * j}", latent[:, i], sd[f"noises.noise_{2 * j + 1}"], True)
        out = styled(out, f"convs.{2 * j + 1}", latent[:, i + 1], sd[f"noises.noise_{2 * j + 2}"], False)
        skip = to_rgb(out, f"to_rgbs.{j}", latent[:, i + 2], skip)
        i += 2
    return skip
