"""The tiny random bundle most tests run on (conftest.py builds it once per session; import this for variants).

``make_tiny_bundle`` gives a tiny-64 generator with tiny FrEN/ViEN whose heads are randomised (``new_bundle`` zeroes
them, and zero heads map every crop to w_avg: nothing that depends on the input could be tested), plus one strong
W-direction edit, ``brighter`` (every W+ entry, range ±8).
"""

from __future__ import annotations

import torch

from export.parity import randomize_heads
from models.bundle import Bundle, new_bundle
from models.e4e import StyleEncoder, StyleEncoderConfig
from models.editing import EditSpec, tensor_key


def make_tiny_bundle(seed: int = 0) -> Bundle:
    b = randomize_heads(new_bundle("tiny-64", "tiny", seed=seed), seed=seed)
    b.extra[tensor_key("brighter")] = torch.randn(b.generator.w_dim, generator=torch.Generator().manual_seed(1))
    b.edits.append(EditSpec("brighter", "w_direction", "test direction", range=(-8.0, 8.0)).to_dict())
    return b


def make_tiny_e4e_bundle(seed: int = 0, kind: str = "e4e") -> Bundle:
    """The tiny-64 generator with a small random e4e (or pSp) key-frame encoder and no ViEN: 10 W+ entries, heads
    0–2 on the /16 map, 3–6 on /8, 7–9 on /4 (so the 8 coarse entries need one fine head, and 2 heads are skipped
    by the coarse-only forward)."""
    b = new_bundle("tiny-64", None, seed=seed, name=f"tiny-{kind}")
    g = b.generator
    torch.manual_seed(seed)
    enc = StyleEncoder(StyleEncoderConfig(kind=kind, img_size=64, widths=(16, 16, 32, 32), units=(1, 1, 1, 1),
                                          n_styles=g.num_ws, w_dim=g.w_dim))
    enc.latent_avg.copy_(g.mapping.w_avg.expand(g.num_ws, -1))
    b.fren = enc.eval().requires_grad_(False)
    return b
