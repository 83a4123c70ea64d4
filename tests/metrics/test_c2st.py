"""dcgan.metrics.c2st: a classifier two-sample test on rkid's random features; 0.5 = it cannot tell, 1 = always."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dcgan import metrics, params as P
from dcgan.metrics.c2st import C2ST, c2st_accuracy
from dcgan.metrics.rkid import RandomFeatures

from .test_rkid import flipped, noise, shapes, shuffled_tiles


@pytest.fixture(scope="module")
def features():
    """The features of a few tiny image sets (32 px, 40 images), computed once for the module."""
    net, other = RandomFeatures(), shapes(40, seed=1)
    sets = {"real": shapes(40, seed=0), "other": other, "noise": noise(40), "flipped": flipped(other),
            "tiles": shuffled_tiles(other, 8), "many": shapes(170, seed=2)}
    return {name: net.features(x) for name, x in sets.items()}


def test_the_classifier_alone_tells_shifted_gaussians_and_not_identical_ones():
    rng = np.random.default_rng(0)
    a, b, shifted = rng.normal(size=(50, 20)), rng.normal(size=(50, 20)), rng.normal(0.8, 1, size=(50, 20))
    assert 0.35 < c2st_accuracy(a, b, 0) < 0.65
    assert c2st_accuracy(a, shifted, 0) > 0.9
    assert c2st_accuracy(a[:3], shifted[:3], 0) in (0, 1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1)   # 3 folds of 1 + 1
    with pytest.raises(ValueError, match="at least 2 images of each kind"):
        c2st_accuracy(a[:1], shifted, 0)
    with pytest.raises(ValueError, match="features"):
        c2st_accuracy(a, shifted[:, :10], 0)


def test_real_vs_real_is_near_chance_and_deterministic(features):
    real, other = features["real"], features["other"]
    score = c2st_accuracy(real, other, seed=0)
    assert 0.35 < score < 0.65
    threads = torch.get_num_threads()
    assert c2st_accuracy(real.copy(), other.copy(), seed=0) == score      # bit for bit
    assert torch.get_num_threads() == threads                            # the fits' one thread: restored
    assert 0.35 < c2st_accuracy(real, other, seed=1) < 0.65


@pytest.mark.parametrize("name", ["noise", "flipped", "tiles"])
def test_clearly_different_sets_are_told_apart(features, name):
    assert c2st_accuracy(features["real"], features[name], seed=0) > 0.85


def test_sets_of_unequal_sizes(features):
    real, many, bad = features["real"], features["many"], features["flipped"]
    # 170 vs 40: 4 disjoint draws of 40 from the larger set, averaged; either set may be the larger
    assert 0.35 < c2st_accuracy(real, many, seed=0) < 0.65 and 0.35 < c2st_accuracy(many[:100], real, seed=0) < 0.65
    assert c2st_accuracy(bad[:25], many[:100], seed=0) > 0.85 and c2st_accuracy(real[:25], bad, seed=0) > 0.85


def test_the_metric_in_evaluate_and_in_training(tmp_path):
    m = metrics.REGISTRY.get("c2st")("c2st")
    assert m.headline == ("c2st", "c2st_floor") and all(m.describe(k) for k in ("c2st", "c2st_floor"))
    assert m.lower_is_better and "0.5 is best" in m.describe("c2st")
    names = [x.name for x in metrics.in_order()]
    assert names.index("c2st") == names.index("rkid") + 1
    train, test, fake = shapes(40, seed=0), shapes(30, seed=1), flipped(shapes(30, seed=2))
    ctx = metrics.EvalContext(fake, train, test, None, {"seed": 0}, "cpu", tmp_path, log=lambda s: None,
                              progress=False)
    state = ctx.rng.bit_generator.state
    out = m.evaluate(ctx)
    assert ctx.rng.bit_generator.state == state          # the other metrics' random subsets stay as they were
    assert set(out) == {"c2st", "c2st_floor"} and out["c2st"] > 0.85 and 0.3 < out["c2st_floor"] < 0.7
    score = m.scorer(test, metrics.Context("cpu", 0))
    with torch.no_grad():                                # as the training loop may call it
        assert score(fake) == {"c2st": out["c2st"]}      # the same real set, seed and images: the same number


def test_a_larger_generated_set_is_scored_on_at_most_four_draws(monkeypatch):
    c = C2ST(shapes(10, 16, seed=0))
    seen = []
    features = c.net.features
    monkeypatch.setattr(c.net, "features", lambda x, desc="": seen.append(len(x)) or features(x))
    assert c.accuracy(noise(100, 16)) > 0.85 and seen == [40]     # features of 4 x 10 of the 100 images only


def test_best_by_accepts_c2st():
    assert P.validate({"best_by": "c2st"}, ["best_by"]) == {"best_by": "c2st"}
    with pytest.raises(P.ParamError) as e:
        P.validate({"best_by": "c2st_floor"}, ["best_by"])
    assert "'best_by'" in str(e.value) and "'swd', 'rkid', 'c2st'" in str(e.value) and "\n" not in str(e.value)
    assert "c2st" in P.SCHEMA["best_by"].help
