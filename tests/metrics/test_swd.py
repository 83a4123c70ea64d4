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
    assert torch.allclose(pyr[0] + pyr_up(pyr[1]), x, atol=1e-3)  # Laplacian pyramid is invertible
    assert swd_resolutions(32) == [32, 16]
    assert swd_resolutions(128) == [128, 64, 32, 16]


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
    blurred = pyr_up(pyr_down(t)).round().clamp(0, 255).to(torch.uint8).numpy()
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
