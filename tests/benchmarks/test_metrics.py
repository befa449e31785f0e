"""Metric functions on cases with known answers."""

from __future__ import annotations

import math

import numpy as np
import torch
from skimage.data import astronaut

from benchmarks.bench_fidelity import gaussian_smooth
from benchmarks.metrics import landmark_error, psnr, ssim, temporal_consistency, warping_error


def test_psnr_identical_is_inf_and_known_value():
    a = torch.rand(2, 3, 16, 16) * 2 - 1
    assert psnr(a, a) == math.inf
    b = a + 0.2  # MSE 0.04 with data range 2 → 10·log10(4 / 0.04) = 20 dB
    assert abs(psnr(a, b) - 20.0) < 1e-4


def test_ssim_identical_is_one_and_noise_lowers_it():
    a = torch.rand(2, 3, 32, 32) * 2 - 1
    assert abs(ssim(a, a) - 1.0) < 1e-6
    assert ssim(a, a + 0.3 * torch.randn_like(a)) < 0.9


def test_temporal_consistency_static_is_zero_and_grows_with_flicker():
    frame = torch.rand(1, 3, 16, 16) * 2 - 1
    static = frame.repeat(10, 1, 1, 1)
    assert temporal_consistency(static) == 0.0
    flicker = static + 0.1 * torch.tensor([(-1) ** i for i in range(10)]).view(10, 1, 1, 1)
    # alternate ±0.1 → neighbours at odd distance differ by 0.2 (RMSE 0.1 in units of 2), even ones by 0
    tc = temporal_consistency(flicker, radius=3)
    assert abs(tc - 0.1 * (9 + 7) / (9 + 8 + 7)) < 1e-4


def test_warping_error_of_a_translation_with_its_true_flow_is_zero():
    img = astronaut()[100:228, 100:300]
    frames = [np.ascontiguousarray(img[:, 40 - 2 * t : 40 - 2 * t + 128]) for t in range(4)]  # content moves right
    true_flow = np.zeros((128, 128, 2), np.float32)
    true_flow[..., 0] = -2.0  # frame t at x came from frame t−1 at x − 2
    err = warping_error(frames, flows=[true_flow] * 3)
    assert err < 1e-10  # pixels whose source lies outside the frame are excluded
    # a flickering output (brightness jumps) on the same motion has a clearly larger error
    flick = [np.clip(f.astype(int) + (30 if t % 2 else 0), 0, 255).astype(np.uint8) for t, f in enumerate(frames)]
    assert warping_error(flick, flows=[true_flow] * 3) > 100 * max(err, 1e-6)


def test_warping_error_with_estimated_flow_is_small_for_a_smooth_translation():
    img = astronaut()[60:316, 120:376]
    frames = [np.ascontiguousarray(img[:, 40 - 2 * t : 40 - 2 * t + 200]) for t in range(5)]
    assert warping_error(frames, inputs=frames) < 2e-3


def test_landmark_error_ignores_missing():
    a = np.zeros((468, 3), np.float32)
    b = a.copy()
    b[:, 0] += 3.0
    b[:, 1] += 4.0
    err, n = landmark_error([a, None, a], [b, b, None])
    assert n == 1 and abs(err - 5.0) < 1e-6


def test_latent_gaussian_smoothing_keeps_constants_and_damps_jitter():
    const = torch.ones(20, 4, 8)
    assert torch.allclose(gaussian_smooth(const, sigma=2.0), const)
    jitter = torch.randn(40, 4, 8)
    assert gaussian_smooth(jitter, sigma=2.0).std() < 0.6 * jitter.std()
