"""dcgan.metrics.memorisation: the nearest training image of each generated image."""
from __future__ import annotations

import numpy as np
import pytest

from dcgan.metrics.memorisation import memorisation


def test_memorisation_finds_planted_copies():
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, size=(300, 1, 16, 16), dtype=np.uint8)
    gen = rng.integers(0, 256, size=(20, 1, 16, 16), dtype=np.uint8)
    planted = {3: 17, 11: 250, 19: 0}
    for g, t in planted.items():
        gen[g] = train[t]
    near = memorisation(gen, train, max_block=16 * 256)  # small blocks: exercise the merging
    for g, t in planted.items():
        assert near.indices[g] == t and near.distances[g] == 0.0
    others = [i for i in range(20) if i not in planted]
    assert (near.distances[others] > 0).all()
    # matches brute force
    d = np.sqrt(((gen[:, None].astype(float) - train[None].astype(float)) ** 2).reshape(20, 300, -1).sum(-1))
    np.testing.assert_array_equal(near.indices, d.argmin(1))
    np.testing.assert_allclose(near.distances, d.min(1))
    assert near.median == pytest.approx(np.median(d.min(1)))


def test_memorisation_rgb_near_copy():
    rng = np.random.default_rng(1)
    train = rng.integers(0, 256, size=(50, 3, 8, 8), dtype=np.uint8)
    gen = train[[7]].copy()
    gen[0, 0, 0, 0] ^= 4  # one value off by 4
    near = memorisation(gen, train)
    assert near.indices[0] == 7 and near.distances[0] == pytest.approx(4.0)
