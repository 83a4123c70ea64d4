"""dcgan.metrics.rkid: KID on a seeded random network's features sees composition; `best_by` picks by it."""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from conftest import ROOT, TINY, make_prepared
from dcgan import metrics, params as P, training
from dcgan.metrics.rkid import RKID, RandomFeatures, random_vgg
from dcgan.quality import Best, QualityProbe


def shapes(n: int, size: int = 32, channels: int = 1, seed: int = 0) -> np.ndarray:
    """A dark disk above a dark bar on a light background, jittered: a composition, uint8 (N, C, H, W)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.empty((n, channels, size, size), np.uint8)
    for i in range(n):
        cy, cx, r = 0.35 + rng.uniform(-.06, .06), 0.5 + rng.uniform(-.08, .08), rng.uniform(.12, .2)
        img = np.full((channels, size, size), rng.uniform(200, 240, (channels, 1, 1)))
        img[:, (yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(20, 60, (channels, 1))
        bar = (abs(yy - 0.75 - rng.uniform(-.05, .05)) < .06) & (abs(xx - cx) < .3)
        img[:, bar] = rng.uniform(20, 60, (channels, 1))
        out[i] = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
    return out


def flipped(x: np.ndarray) -> np.ndarray:
    """Upside down: the same patches (the disk and bar are symmetric), the bar now above the disk."""
    return x[:, :, ::-1].copy()


def swapped_quadrants(x: np.ndarray) -> np.ndarray:
    h, w = x.shape[2] // 2, x.shape[3] // 2
    y = x.copy()
    y[:, :, :h, :w], y[:, :, h:2 * h, w:2 * w] = x[:, :, h:2 * h, w:2 * w], x[:, :, :h, :w]
    y[:, :, :h, w:2 * w], y[:, :, h:2 * h, :w] = x[:, :, h:2 * h, :w], x[:, :, :h, w:2 * w]
    return y


def shuffled_tiles(x: np.ndarray, tile: int, seed: int = 0) -> np.ndarray:
    """Each image's tile x tile squares in a random order."""
    rng = np.random.default_rng(seed)
    n, c, size = x.shape[0], x.shape[1], x.shape[2]
    k = size // tile
    tiles = x[:, :, :k * tile, :k * tile].reshape(n, c, k, tile, k, tile).transpose(0, 2, 4, 1, 3, 5)
    tiles = tiles.reshape(n, k * k, c, tile, tile)
    tiles = np.stack([t[rng.permutation(k * k)] for t in tiles]).reshape(n, k, k, c, tile, tile)
    y = x.copy()
    y[:, :, :k * tile, :k * tile] = tiles.transpose(0, 3, 1, 4, 2, 5).reshape(n, c, k * tile, k * tile)
    return y


def noise(n: int, size: int = 32, channels: int = 1, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, channels, size, size), dtype=np.uint8)


def test_the_network_is_the_same_on_every_build_and_leaves_torchs_rng_alone():
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    a, b = random_vgg(), random_vgg()
    assert torch.equal(torch.rand(3), expected)            # building drew nothing from the global RNG
    wa, wb = [m.weight for m in a if hasattr(m, "weight")], [m.weight for m in b if hasattr(m, "weight")]
    assert len(wa) == 8 and all(torch.equal(x, y) for x, y in zip(wa, wb))
    # pinned: the same weights on every machine (a CPU generator seeded with a constant)
    assert float(wa[0].double().sum()) == pytest.approx(-5.621711087122094, rel=1e-6)
    assert float(wa[-1].double().abs().sum()) == pytest.approx(13868.929558484757, rel=1e-6)
    images = shapes(12)
    f1, f2 = RandomFeatures().features(images), RandomFeatures(batch=5).features(images)
    assert f1.shape == (12, 256 * 4 * 4)
    np.testing.assert_allclose(f1, f2, rtol=1e-5, atol=1e-5)
    assert 0.2 < (f1 > 0).mean() < 0.8 and np.isfinite(f1).all()   # neither dead nor exploded at depth


def test_identical_sets_score_near_zero_and_rkid_is_deterministic():
    real = shapes(40)
    r = RKID(real, seed=0)
    same, floor = r.distance(real)[0], r.distance(shapes(40, seed=1))[0]
    bad = r.distance(noise(40))[0]
    # unbiased MMD^2 of a set with itself is slightly negative (its diagonal is left out): small beside bad
    assert abs(same) < 0.1 * bad and abs(floor) < 0.1 * bad
    assert RKID(real, seed=0).distance(shapes(40, seed=1)) == r.distance(shapes(40, seed=1))


@pytest.mark.parametrize("size", [16, 17, 32, 120])
def test_noise_and_scrambled_layouts_score_far_above_the_real_floor(size):
    real, other = shapes(40, size, seed=0), shapes(40, size, seed=1)
    r = RKID(real, seed=0)
    floor = r.distance(other)[0]
    scores = {"noise": r.distance(noise(40, size))[0], "flipped": r.distance(flipped(other))[0],
              "quadrants": r.distance(swapped_quadrants(other))[0],
              "tiles": r.distance(shuffled_tiles(other, max(4, size // 4)))[0]}
    for name, score in scores.items():      # the floor is within +-25 (40 images); these are 300+
        assert score > max(150, 10 * abs(floor)), (name, score, floor)


def test_one_and_three_channels_share_the_network():
    gray = shapes(20, 24, channels=1)
    rgb = np.repeat(gray, 3, axis=1)
    net = RandomFeatures()
    np.testing.assert_array_equal(net.features(gray), net.features(rgb))
    colour = shapes(40, 32, channels=3, seed=0)
    r = RKID(colour)
    assert r.distance(noise(40, 32, 3))[0] > max(150, 10 * abs(r.distance(shapes(40, 32, 3, seed=1))[0]))


def test_the_metric_in_evaluate_and_in_training(tmp_path):
    m = metrics.REGISTRY.get("rkid")("rkid")
    assert m.headline == ("rkid", "rkid_floor") and all(m.describe(k) for k in ("rkid", "rkid_std", "rkid_floor"))
    assert [x.name for x in metrics.in_order()][:3] == ["swd", "fid", "rkid"]
    train, test, fake = shapes(40, seed=0), shapes(30, seed=1), flipped(shapes(30, seed=2))
    ctx = metrics.EvalContext(fake, train, test, None, {"seed": 0}, "cpu", tmp_path, log=lambda s: None,
                              progress=False)
    out = m.evaluate(ctx)
    assert set(out) == {"rkid", "rkid_std", "rkid_floor"} and out["rkid"] > 10 * abs(out["rkid_floor"])
    assert out["rkid_std"] >= 0
    score = m.scorer(test, metrics.Context("cpu", 0))
    assert set(score(fake)) == {"rkid"} and score(fake)["rkid"] == pytest.approx(out["rkid"], rel=0.5)


def test_best_by_is_validated():
    assert P.validate({"best_by": "rkid"}, ["best_by"]) == {"best_by": "rkid"}
    with pytest.raises(P.ParamError) as e:
        P.validate({"best_by": "fid"}, ["best_by"])
    assert "'best_by'" in str(e.value) and "'swd', 'rkid'" in str(e.value) and "\n" not in str(e.value)


def test_a_best_chosen_by_another_key_is_replaced_by_the_first_score():
    G = torch.nn.Linear(2, 2)
    old = Best(key="swd")
    old.offer(3, 1.0, G)
    lines = []
    best = Best(old.state_dict(), key="rkid", log=lines.append)
    assert len(lines) == 1 and "chosen by swd" in lines[0] and best.summary() == {"best_swd": 1.0, "best_epoch": 3}
    assert best.offer(4, 50.0, G)           # worse by number, but another key's number: replaced
    assert best.summary() == {"best_rkid": 50.0, "best_epoch": 4} and best.state_dict()["key"] == "rkid"
    assert not best.offer(5, 60.0, G)
    quiet = []
    assert Best(best.state_dict(), key="rkid", log=quiet.append).score == 50.0 and not quiet
    legacy = {k: v for k, v in old.state_dict().items() if k != "key"}   # a checkpoint from before best_by
    assert Best(legacy, key="swd", log=quiet.append).score == 1.0 and not quiet


def test_training_with_best_by_rkid_keeps_the_best_by_rkid(tmp_path, monkeypatch):
    monkeypatch.setattr(training, "QualityProbe", functools.partial(QualityProbe, n=64))   # not 500: quicker
    prepared = make_prepared(tmp_path / "prepared", n_train=64)
    train, val = np.load(prepared / "train.npy"), np.load(prepared / "val.npy")
    p = {**P.read(ROOT / "params.yaml"), **TINY, "batch_size": 16, "sample_every": 1, "checkpoint_every": 1,
         "eval_every": 1, "epochs": 1, "best_by": "rkid", "fid_weights": str(tmp_path / "absent.pth"),
         "precision": "fp32", "channels_last": False}    # no FID; one layout: no layer plan to time

    def run(**changes):
        lines = []
        out = tmp_path / "run"
        s = training.train({**p, **changes}, train, val, out / "models", out / "live", out / "train.json",
                           progress=False, log=lines.append)
        return s, lines, torch.load(out / "models" / "checkpoint.pt", weights_only=True)["best"]

    s, lines, best = run()
    assert np.isfinite(s["rkid"]) and s["best_rkid"] == s["rkid"] and s["best_epoch"] == 1 and "best_swd" not in s
    assert best["key"] == "rkid" and best["score"] == s["best_rkid"]
    assert any(line.startswith("best rkid so far") for line in lines)
    # best_by changes no weights: the run resumes, and the best chosen by rkid gives way to the first swd score
    s, lines, best = run(epochs=2, best_by="swd")
    assert any("resuming from checkpoint at epoch 1" in line for line in lines)
    assert sum("chosen by rkid" in line for line in lines) == 1
    assert s["best_swd"] == s["swd"] and s["best_epoch"] == 2 and "best_rkid" not in s and best["key"] == "swd"


def test_the_report_shows_rkid_its_help_its_floor_and_its_column(tmp_path):
    from dcgan.report import page, table
    from dcgan.report.collect import Experiment
    ev = {"swd": 31.4, "swd_floor": 7.2, "rkid": 123.45, "rkid_std": 0.0, "rkid_floor": 6.5}
    e = Experiment(id="x", rev="x", kind="experiment", baseline="abc1234", metrics={"eval": ev})
    html = page.experiment(tmp_path, e, [], "t")
    assert "rkid x10³" in html and "123.5" in html and "floor 6.50" in html
    assert metrics.REGISTRY.get("rkid")("rkid").describe("rkid_floor") in html
    assert dict(table.eval_keys())["rkid"] is True
    assert [c.label for c in table.columns([e]) if c.group == "eval"] == ["swd", "swd_floor", "rkid", "rkid_floor"]
