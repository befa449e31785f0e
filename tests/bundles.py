"""The tiny random bundle most tests run on (conftest.py builds it once per session; import this for variants).

``make_tiny_bundle`` gives a tiny-64 generator with tiny FrEN/ViEN whose heads are randomised (``new_bundle`` zeroes
them, and zero heads map every crop to w_avg: nothing that depends on the input could be tested), plus one strong
W-direction edit, ``brighter`` (every W+ entry, range ±8).
"""

from __future__ import annotations

import torch

from export.parity import randomize_heads
from models.bundle import Bundle, new_bundle
from models.editing import EditSpec, tensor_key


def make_tiny_bundle(seed: int = 0) -> Bundle:
    b = randomize_heads(new_bundle("tiny-64", "tiny", seed=seed), seed=seed)
    b.extra[tensor_key("brighter")] = torch.randn(b.generator.w_dim, generator=torch.Generator().manual_seed(1))
    b.edits.append(EditSpec("brighter", "w_direction", "test direction", range=(-8.0, 8.0)).to_dict())
    return b
