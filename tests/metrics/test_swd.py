"""dcgan.metrics.swd: the Laplacian pyramid, 1-D Wasserstein distances and SWD."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dcgan.metrics.swd import SWD, laplacian_pyramid, pyr_down, pyr_up, swd, swd_resolutions, w1_sorted


def digits_like(n: int, size: int = 32, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Smooth random blobs: images with structure at several scales, uint8 (N, C, H, W)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, channels, size // 4, size // 4, generator=g)
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = x + 0.1 * torch.rand(n, channels, size, size, generator=g)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def add_noise(x: np.ndarray, sigma: float, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(x + rng.normal(0, sigma * 255, x.shape), 0, 255).astype(np.uint8)


def test_pyramid_reconstructs_and_levels():
    x = torch.from_numpy(digits_like(3, 32)).float()
    pyr = laplacian_pyramid(x, 2)
    assert [t.shape[-1] for t in pyr] == [32, 16]
    assert torch.allclose(pyr[0] + pyr_up(pyr[1], (32, 32)), x, atol=1e-3)  # Laplacian pyramid is invertible
    assert swd_resolutions(32) == [32, 16]
    assert swd_resolutions(128) == [128, 64, 32, 16]


@pytest.mark.parametrize("size, levels", [(16, [16]), (17, [17]), (31, [31, 16]), (33, [33, 17]),
                                          (100, [100, 50, 25]), (120, [120, 60, 30]),
                                          (512, [512, 256, 128, 64, 32, 16])])
def test_pyramid_of_any_size_halves_rounding_up_and_reconstructs(size, levels):
    assert swd_resolutions(size) == levels
    x = torch.from_numpy(digits_like(2, size, 3)).float()
    pyr = laplacian_pyramid(x, len(levels))
    assert [t.shape[-2:] for t in pyr] == [(r, r) for r in levels]
    rebuilt = pyr[-1]
    for band in reversed(pyr[:-1]):
        rebuilt = band + pyr_up(rebuilt, band.shape[-2:])
    assert torch.allclose(rebuilt, x, atol=1e-3)


def test_pyr_up_of_an_odd_side_keeps_a_constant_image_constant():
    # the mirror border treats both ends alike, so no edge row or column darkens or brightens
    coarse = pyr_down(torch.full((1, 1, 25, 25), 100.0))
    assert coarse.shape[-1] == 13
    assert torch.allclose(pyr_up(coarse, (25, 25)), torch.full((1, 1, 25, 25), 100.0))


@pytest.mark.parametrize("size", [17, 100, 120])
def test_swd_at_sizes_that_are_not_powers_of_two(size):
    real = digits_like(12, size, 3, seed=0)
    kw = dict(per_image=8, dir_repeats=1, dirs_per_repeat=16, batch=6)
    real_swd = SWD(real, seed=0, **kw)
    same = real_swd.distance(real)
    assert set(same) == {*swd_resolutions(size), "mean"}
    assert same["mean"] == pytest.approx(0, abs=1e-6)
    assert real_swd.distance(add_noise(real, 0.3))["mean"] > 1


@pytest.mark.parametrize("channels", [1, 3])
def test_swd_identical_zero_and_orders_distortions(channels):
    real = digits_like(48, 32, channels, seed=0)
    kw = dict(per_image=32, dir_repeats=2, dirs_per_repeat=64)
    real_swd = SWD(real, seed=0, **kw)
    same = real_swd.distance(real)
    assert set(same) == {32, 16, "mean"}
    assert same["mean"] == pytest.approx(0, abs=1e-6)
    other = real_swd.distance(digits_like(48, 32, channels, seed=5))  # same distribution, other images
    low = real_swd.distance(add_noise(real, 0.1))
    high = real_swd.distance(add_noise(real, 0.3))
    assert other["mean"] < low["mean"] < high["mean"]
    assert low[32] < high[32]
    # deterministic
    assert SWD(real, seed=0, **kw).distance(add_noise(real, 0.1)) == low


def test_swd_detects_blur_and_shift():
    real = digits_like(48, 32, seed=0)
    ref = swd(real, digits_like(48, 32, seed=7), per_image=32, dir_repeats=2, dirs_per_repeat=64)
    t = torch.from_numpy(real).float()
    blurred = pyr_up(pyr_down(t), t.shape[-2:]).round().clamp(0, 255).to(torch.uint8).numpy()
    shifted = np.clip(real.astype(int) + 60, 0, 255).astype(np.uint8)
    for bad in (blurred, shifted):
        d = swd(real, bad, per_image=32, dir_repeats=2, dirs_per_repeat=64)
        assert d["mean"] > 2 * ref["mean"]


def test_w1_unequal_sizes_matches_replication():
    rng = np.random.default_rng(0)
    a = np.sort(rng.normal(size=(5, 4)), axis=1).astype(np.float32)
    b = np.sort(rng.normal(1, 2, size=(5, 6)), axis=1).astype(np.float32)
    # replicating each set to 12 samples gives the same empirical distributions with equal sizes
    ref = w1_sorted(np.sort(np.repeat(a, 3, 1), 1), np.sort(np.repeat(b, 2, 1), 1))
    np.testing.assert_allclose(w1_sorted(a, b), ref, rtol=1e-5)
    np.testing.assert_allclose(w1_sorted(a, a), 0)


def test_swd_unequal_set_sizes():
    real = digits_like(40, 32, seed=0)
    d = swd(real, digits_like(64, 32, seed=3), per_image=16, dir_repeats=1, dirs_per_repeat=32)
    assert np.isfinite(d["mean"]) and d["mean"] > 0
