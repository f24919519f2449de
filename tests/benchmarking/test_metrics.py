"""PSNR/SSIM against hand-computed values and an independent loop implementation (BasicSR convention)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from jdnet_cli.benchmarking.metrics import psnr, rgb_to_y, score_pair, ssim


def _ssim_by_loops(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM written out window by window: 11x11 Gaussian (sigma 1.5), valid positions, mean."""
    ax = np.arange(11) - 5
    g = np.exp(-(ax**2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    vals = []
    for i in range(a.shape[0] - 10):
        for j in range(a.shape[1] - 10):
            pa, pb = a[i : i + 11, j : j + 11], b[i : i + 11, j : j + 11]
            ma, mb = (w * pa).sum(), (w * pb).sum()
            va = (w * (pa - ma) ** 2).sum()
            vb = (w * (pb - mb) ** 2).sum()
            cov = (w * (pa - ma) * (pb - mb)).sum()
            vals.append(((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_psnr_of_known_mse():
    a = np.zeros((4, 4))
    b = np.full((4, 4), 5.0)  # MSE 25
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 25), abs=1e-12)
    assert psnr(a, b) == pytest.approx(34.151403521958, abs=1e-9)
    assert psnr(a, a) == math.inf


def test_y_channel_is_bt601_on_16_235_unrounded():
    px = np.array([[[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.5, 0.0]]])
    assert rgb_to_y(px)[0].tolist() == pytest.approx([235.0, 16.0, 16 + 65.481, 16 + 128.553 / 2], abs=1e-12)


def test_ssim_identical_is_one_and_constants_match_closed_form():
    img = np.random.default_rng(0).random((20, 17)) * 255
    assert ssim(img, img) == pytest.approx(1.0, abs=1e-12)
    # Two flat images: variances and covariance vanish, SSIM = (2xy + C1) / (x^2 + y^2 + C1).
    a, b = np.full((11, 11), 100.0), np.full((11, 11), 110.0)
    c1 = (0.01 * 255) ** 2
    assert ssim(a, b) == pytest.approx((2 * 100 * 110 + c1) / (100**2 + 110**2 + c1), abs=1e-12)
    assert ssim(a, b) == pytest.approx(0.99547644, abs=1e-8)


def test_ssim_matches_window_by_window_loops():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, size=(16, 14)).astype(np.float64)
    b = np.clip(a + rng.normal(0, 20, size=a.shape), 0, 255)
    expected = _ssim_by_loops(a, b)
    assert 0.3 < expected < 0.99
    assert ssim(a, b) == pytest.approx(expected, abs=1e-10)


def test_score_pair_rgb_and_y_on_a_small_image():
    rng = np.random.default_rng(2)
    ref = rng.integers(0, 256, size=(13, 15, 3)).astype(np.float32) / 255
    out = np.clip(ref + rng.normal(0, 0.03, size=ref.shape), 0, 1).astype(np.float32)
    s = score_pair(out, ref)
    o, r = out.astype(np.float64) * 255, ref.astype(np.float64) * 255
    assert s["psnr_rgb"] == pytest.approx(10 * math.log10(255**2 / np.mean((o - r) ** 2)), abs=1e-9)
    assert s["ssim_rgb"] == pytest.approx(np.mean([_ssim_by_loops(o[..., c], r[..., c]) for c in range(3)]), abs=1e-10)
    yo = 16 + o @ np.array([65.481, 128.553, 24.966]) / 255
    yr = 16 + r @ np.array([65.481, 128.553, 24.966]) / 255
    assert s["psnr_y"] == pytest.approx(10 * math.log10(255**2 / np.mean((yo - yr) ** 2)), abs=1e-9)
    assert s["ssim_y"] == pytest.approx(_ssim_by_loops(yo, yr), abs=1e-10)


def test_crop_border_ignores_the_border():
    ref = np.random.default_rng(3).random((20, 20, 3)).astype(np.float32)
    out = ref.copy()
    out[:2] = 0.0  # damage only the top two rows
    assert score_pair(out, ref)["psnr_y"] < 40
    cropped = score_pair(out, ref, crop_border=2)
    assert cropped["psnr_y"] == math.inf and cropped["ssim_y"] == pytest.approx(1.0, abs=1e-12)


def test_mismatched_or_too_small_images_are_refused():
    with pytest.raises(ValueError, match="differ in size"):
        score_pair(np.zeros((12, 12, 3)), np.zeros((12, 13, 3)))
    with pytest.raises(ValueError, match="smaller than the 11x11"):
        score_pair(np.zeros((10, 30, 3)), np.zeros((10, 30, 3)))
