"""Generator, ops, W+ layout and encoders."""

from __future__ import annotations

import pytest
import torch

from models import ops
from models.latents import WPlusLayout, num_ws_for
from models.stylegan2 import GENERATOR_PRESETS, Generator, GeneratorConfig, parameter_report
from models.vit_encoder import ENCODER_PRESETS, FrameEncoder, VideoEncoder, ViTConfig


def test_config_f_parameter_count_matches_official_ffhq():
    # The official FFHQ 1024² G (stylegan2-ada-pytorch / TF config-f): 30,370,060 parameters,
    # of which the 8-layer mapping network has 2,101,248.
    rep = parameter_report(GENERATOR_PRESETS["ffhq-config-f"])
    assert rep.mapping == 2_101_248
    assert rep.total == 30_370_060


@pytest.mark.parametrize("preset,res,num_ws", [("tiny-64", 64, 10), ("tiny-128", 128, 12)])
def test_generator_shapes_and_dtype(preset, res, num_ws):
    g = Generator(GENERATOR_PRESETS[preset]).eval()
    z = torch.randn(3, g.z_dim)
    with torch.no_grad():
        ws = g.mapping(z)
        img = g.synthesis(ws)
    assert ws.shape == (3, num_ws, g.w_dim) and g.num_ws == num_ws
    assert img.shape == (3, 3, res, res) and img.dtype == torch.float32
    assert torch.isfinite(img).all()


def test_synthesis_rejects_wrong_ws_shape():
    g = Generator(GENERATOR_PRESETS["tiny-64"])
    with pytest.raises(ValueError, match="ws must be"):
        g.synthesis(torch.zeros(1, 9, g.w_dim))


@pytest.mark.parametrize("up,demod,k", [(1, True, 3), (2, True, 3), (1, False, 1)])
def test_modulated_conv_export_matches_reference(up, demod, k):
    torch.manual_seed(0)
    x = torch.randn(3, 16, 8, 8)
    w = torch.randn(24, 16, k, k)
    s = torch.randn(3, 16) + 1
    noise = torch.randn(1, 1, 8 * up, 8 * up) * 0.3 if demod else None
    f = ops.setup_filter()
    a = ops.modulated_conv2d(x, w, s, noise=noise, up=up, padding=k // 2, resample_filter=f, demodulate=demod)
    b = ops.modulated_conv2d(x, w, s, noise=noise, up=up, padding=k // 2, resample_filter=f, demodulate=demod,
                             impl="reference")
    assert a.shape == (3, 24, 8 * up, 8 * up)
    assert (a - b).abs().max().item() <= 1e-5 * max(1.0, b.abs().max().item())


def test_generator_export_path_matches_reference_path():
    torch.manual_seed(1)
    g = Generator(GENERATOR_PRESETS["tiny-64"]).eval()
    ws = g.mapping(torch.randn(2, g.z_dim))
    with torch.no_grad():
        a = g.synthesis(ws)
        b = g.synthesis(ws, impl="reference")
    assert (a - b).abs().max().item() <= 1e-4 * b.abs().max().item()


def test_upfirdn2d_separable_equals_full_filter_and_preserves_constants():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 7)
    f = ops.setup_filter()
    sep = ops.upfirdn2d(x, f, up=2, padding=(2, 1, 2, 1), gain=4)
    full = ops.upfirdn2d(x, f, up=2, padding=(2, 1, 2, 1), gain=4, separable=False)
    # An independent construction: zero-insert, pad, 2-D correlation with the flipped filter.
    manual = torch.nn.functional.conv2d(
        torch.nn.functional.pad(
            torch.nn.functional.pad(x.reshape(2, 3, 9, 1, 7, 1), [0, 1, 0, 0, 0, 1]).reshape(2, 3, 18, 14),
            [2, 1, 2, 1]),
        (f * 4).flip([0, 1])[None, None].repeat(3, 1, 1, 1), groups=3)
    assert sep.shape == (2, 3, 18, 14)
    assert torch.allclose(sep, full, atol=1e-6) and torch.allclose(full, manual, atol=1e-6)
    asym = ops.setup_filter(torch.outer(torch.tensor([1.0, 2.0, 5.0]), torch.tensor([1.0, 3.0, 3.0, 1.0])))
    assert torch.allclose(ops.upfirdn2d(x, asym, padding=(1, 2, 1, 1)),
                          ops.upfirdn2d(x, asym, padding=(1, 2, 1, 1), separable=False), atol=1e-6)
    const = ops.upsample2d(torch.ones(1, 1, 8, 8), f)
    assert torch.allclose(const[..., 2:-2, 2:-2], torch.ones(1, 1, 12, 12), atol=1e-6)


def test_constant_noise_is_deterministic_and_random_noise_is_not():
    torch.manual_seed(2)
    g = Generator(GENERATOR_PRESETS["tiny-64"]).eval()
    for layer in g.modules():
        if hasattr(layer, "noise_strength"):
            layer.noise_strength.data.fill_(0.5)
    z = torch.randn(1, g.z_dim)
    with torch.no_grad():
        a, b = g(z), g(z)
        r1, r2 = g(z, noise_mode="random"), g(z, noise_mode="random")
        n = g(z, noise_mode="none")
    assert torch.equal(a, b)
    assert not torch.allclose(r1, r2)
    assert not torch.allclose(a, n)


def test_truncation_pulls_towards_w_avg():
    g = Generator(GENERATOR_PRESETS["tiny-64"]).eval()
    g.mapping.w_avg.normal_()
    z = torch.randn(4, g.z_dim)
    ws1 = g.mapping(z)
    ws0 = g.mapping(z, truncation_psi=0.0)
    assert torch.allclose(ws0, g.mapping.w_avg.expand_as(ws0))
    half = g.mapping(z, truncation_psi=0.5, truncation_cutoff=3)
    assert torch.allclose(half[:, 3:], ws1[:, 3:])
    assert torch.allclose(half[:, :3], 0.5 * (ws1[:, :3] + g.mapping.w_avg))


def test_style_space_view_and_deltas():
    torch.manual_seed(3)
    g = Generator(GENERATOR_PRESETS["tiny-64"]).eval()
    ws = g.mapping(torch.randn(2, g.z_dim))
    layers = g.synthesis.style_layers
    assert len(layers) == 3 * 5 - 1  # b4: conv1+torgb, then conv0+conv1+torgb per block
    styles = g.synthesis.styles(ws)
    assert set(styles) == {l.name for l in layers}
    for l in layers:
        assert styles[l.name].shape == (2, l.channels)
    ch = {l.name: l.channels for l in layers}["b16.conv1"]
    with torch.no_grad():
        base = g.synthesis(ws)
        zero = g.synthesis(ws, style_deltas={"b16.conv1": torch.zeros(2, ch)})
        moved = g.synthesis(ws, style_deltas={"b16.conv1": torch.full((2, ch), 3.0)})
    assert torch.equal(base, zero)
    assert (moved - base).abs().mean() > 1e-3


def test_wplus_layout():
    assert num_ws_for(1024) == 18 and num_ws_for(256) == 14 and num_ws_for(64) == 10
    lay = WPlusLayout(1024)
    assert lay.num_coarse == 8 and lay.num_fine == 10
    coarse, fine = lay.split(torch.zeros(2, 18, 512))
    assert coarse.shape == (2, 8, 512) and fine.shape == (2, 10, 512)
    assert WPlusLayout(64, coarse_resolution=16).num_coarse == 6
    with pytest.raises(ValueError):
        num_ws_for(100)


def test_config_round_trip_and_unknown_keys():
    cfg = GENERATOR_PRESETS["tiny-128"]
    assert GeneratorConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        GeneratorConfig.from_dict({"bogus": 1})


def test_frame_encoder_untrained_outputs_w_avg_and_shapes():
    cfg = ENCODER_PRESETS["tiny"]
    lay = WPlusLayout(64, w_dim=64)
    fren = FrameEncoder(cfg, lay).eval()
    fren.w_avg.normal_()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    ws = fren(x)
    assert ws.shape == (2, 10, 64)
    assert torch.allclose(ws, fren.w_avg.expand_as(ws))
    with pytest.raises(ValueError, match="encoder input"):
        fren(torch.zeros(1, 3, 32, 32))


def test_video_encoder_predicts_coarse_and_copies_fine_layers():
    torch.manual_seed(4)
    cfg = ViTConfig(img_size=64, dim=64, depth=2, heads=4)
    lay = WPlusLayout(64, w_dim=32, coarse_resolution=16)
    vien = VideoEncoder(cfg, lay).eval()
    torch.nn.init.normal_(vien.head[2].weight, std=0.05)  # make the head non-trivial
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    prev = torch.randn(2, 10, 32)
    out = vien(x, prev)
    assert out.shape == (2, 10, 32)
    assert torch.equal(out[:, lay.num_coarse:], prev[:, lay.num_coarse:])
    assert not torch.allclose(out[:, : lay.num_coarse], prev[:, : lay.num_coarse])
    # The previous W+ really enters: a different previous code changes the coarse prediction.
    out2 = vien(x, prev + 1)
    assert not torch.allclose(out[:, : lay.num_coarse], out2[:, : lay.num_coarse])
    with pytest.raises(ValueError, match="prev_ws"):
        vien(x, torch.zeros(2, 9, 32))


def test_vien_init_from_fren_copies_backbone():
    cfg = ENCODER_PRESETS["tiny"]
    lay = WPlusLayout(64, w_dim=64)
    fren, vien = FrameEncoder(cfg, lay), VideoEncoder(cfg, lay)
    vien.init_from_frame_encoder(fren)
    assert torch.equal(vien.backbone.patch_embed.weight, fren.backbone.patch_embed.weight)
    assert torch.equal(vien.backbone.pos_embed[:, :-1], fren.backbone.pos_embed)
