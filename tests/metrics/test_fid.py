"""dcgan.metrics.fid: FID and KID on feature arrays."""
from __future__ import annotations

import numpy as np
import pytest

from dcgan.metrics.fid import fid, frechet_distance, kid


def test_fid_closed_form_from_moments():
    rng = np.random.default_rng(0)
    d = 6
    a, b = rng.uniform(0.3, 3, d), rng.uniform(0.3, 3, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)
    # a full covariance: rotate both by the same orthogonal matrix; the distance is unchanged
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    got = frechet_distance(q @ mu1, q @ np.diag(a) @ q.T, q @ mu2, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(expected, rel=1e-8)
    # non-commuting covariances: compare with Tr sqrt via the eigenvalues of S1 S2 (all real, >= 0)
    s1 = np.cov(rng.normal(size=(50, d)), rowvar=False)
    s2 = np.cov(rng.normal(size=(50, d)) * np.arange(1, d + 1), rowvar=False)
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvals(s1 @ s2).real, 0, None)).sum()
    assert frechet_distance(mu1, s1, mu1, s2) == pytest.approx(np.trace(s1 + s2) - 2 * tr_sqrt, rel=1e-8)


def test_fid_on_samples():
    rng = np.random.default_rng(1)
    d = 4
    a, b = np.array([1.0, 2.0, 0.5, 1.5]), np.array([2.0, 0.5, 0.5, 1.0])
    mu1, mu2 = np.zeros(d), np.array([1.0, 0.0, -0.5, 0.0])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    x = mu1 + rng.normal(size=(200_000, d)) * np.sqrt(a)
    y = mu2 + rng.normal(size=(200_000, d)) * np.sqrt(b)
    assert fid(x, y) == pytest.approx(expected, abs=0.02)
    assert fid(x, x) == pytest.approx(0, abs=1e-8)


def test_kid():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(600, 16)), rng.normal(size=(600, 16))
    same, same_std = kid(x, y, subsets=20, subset_size=200)
    shifted, _ = kid(x, y + 0.5, subsets=20, subset_size=200)
    assert abs(same) < 0.01 and same_std >= 0
    assert shifted > 0.05 and shifted > 10 * abs(same)
    # unbiased: averaged over many independent draws the estimate is ~0, negative values allowed
    draws = [kid(rng.normal(size=(50, 4)), rng.normal(size=(50, 4)), subsets=1)[0] for _ in range(200)]
    assert min(draws) < 0 < max(draws)
    assert abs(np.mean(draws)) < 3 * np.std(draws) / np.sqrt(len(draws))
    # subset size is clipped to the smaller set; deterministic for a seed
    assert kid(x[:30], y, subsets=3, seed=4) == kid(x[:30], y, subsets=3, seed=4)


def test_kid_matches_direct_formula():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(20, 5)), rng.normal(0.3, 1, size=(20, 5))
    k = lambda a, b: (a @ b.T / 5 + 1) ** 3  # noqa: E731
    m = 20
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    direct = ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (m * (m - 1)) - 2 * kxy.mean()
    assert kid(x, y, subsets=3, subset_size=20)[0] == pytest.approx(direct, rel=1e-10)
