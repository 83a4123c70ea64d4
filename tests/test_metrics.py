"""dcgan.metrics: SWD, FID, KID, the discriminator as a classifier, memorisation, Inception loading."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dcgan import metrics


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


# ---- SWD ----

def test_pyramid_reconstructs_and_levels():
    x = torch.from_numpy(digits_like(3, 32)).float()
    pyr = metrics.laplacian_pyramid(x, 2)
    assert [t.shape[-1] for t in pyr] == [32, 16]
    assert torch.allclose(pyr[0] + metrics.pyr_up(pyr[1]), x, atol=1e-3)  # Laplacian pyramid is invertible
    assert metrics.swd_resolutions(32) == [32, 16]
    assert metrics.swd_resolutions(128) == [128, 64, 32, 16]


@pytest.mark.parametrize("channels", [1, 3])
def test_swd_identical_zero_and_orders_distortions(channels):
    real = digits_like(48, 32, channels, seed=0)
    kw = dict(per_image=32, dir_repeats=2, dirs_per_repeat=64)
    swd = metrics.SWD(real, seed=0, **kw)
    same = swd.distance(real)
    assert set(same) == {32, 16, "mean"}
    assert same["mean"] == pytest.approx(0, abs=1e-6)
    other = swd.distance(digits_like(48, 32, channels, seed=5))  # same distribution, other images
    low = swd.distance(add_noise(real, 0.1))
    high = swd.distance(add_noise(real, 0.3))
    assert other["mean"] < low["mean"] < high["mean"]
    assert low[32] < high[32]
    # deterministic
    assert metrics.SWD(real, seed=0, **kw).distance(add_noise(real, 0.1)) == low


def test_swd_detects_blur_and_shift():
    real = digits_like(48, 32, seed=0)
    ref = metrics.swd(real, digits_like(48, 32, seed=7), per_image=32, dir_repeats=2, dirs_per_repeat=64)
    t = torch.from_numpy(real).float()
    blurred = metrics.pyr_up(metrics.pyr_down(t)).round().clamp(0, 255).to(torch.uint8).numpy()
    shifted = np.clip(real.astype(int) + 60, 0, 255).astype(np.uint8)
    for bad in (blurred, shifted):
        d = metrics.swd(real, bad, per_image=32, dir_repeats=2, dirs_per_repeat=64)
        assert d["mean"] > 2 * ref["mean"]


def test_w1_unequal_sizes_matches_replication():
    rng = np.random.default_rng(0)
    a = np.sort(rng.normal(size=(5, 4)), axis=1).astype(np.float32)
    b = np.sort(rng.normal(1, 2, size=(5, 6)), axis=1).astype(np.float32)
    # replicating each set to 12 samples gives the same empirical distributions with equal sizes
    ref = metrics.w1_sorted(np.sort(np.repeat(a, 3, 1), 1), np.sort(np.repeat(b, 2, 1), 1))
    np.testing.assert_allclose(metrics.w1_sorted(a, b), ref, rtol=1e-5)
    np.testing.assert_allclose(metrics.w1_sorted(a, a), 0)


def test_swd_unequal_set_sizes():
    real = digits_like(40, 32, seed=0)
    d = metrics.swd(real, digits_like(64, 32, seed=3), per_image=16, dir_repeats=1, dirs_per_repeat=32)
    assert np.isfinite(d["mean"]) and d["mean"] > 0


# ---- FID / KID ----

def test_fid_closed_form_from_moments():
    rng = np.random.default_rng(0)
    d = 6
    a, b = rng.uniform(0.3, 3, d), rng.uniform(0.3, 3, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)
    # a full covariance: rotate both by the same orthogonal matrix; the distance is unchanged
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    got = metrics.frechet_distance(q @ mu1, q @ np.diag(a) @ q.T, q @ mu2, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(expected, rel=1e-8)
    # non-commuting covariances: compare with Tr sqrt via the eigenvalues of S1 S2 (all real, >= 0)
    s1 = np.cov(rng.normal(size=(50, d)), rowvar=False)
    s2 = np.cov(rng.normal(size=(50, d)) * np.arange(1, d + 1), rowvar=False)
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvals(s1 @ s2).real, 0, None)).sum()
    assert metrics.frechet_distance(mu1, s1, mu1, s2) == pytest.approx(np.trace(s1 + s2) - 2 * tr_sqrt, rel=1e-8)


def test_fid_on_samples():
    rng = np.random.default_rng(1)
    d = 4
    a, b = np.array([1.0, 2.0, 0.5, 1.5]), np.array([2.0, 0.5, 0.5, 1.0])
    mu1, mu2 = np.zeros(d), np.array([1.0, 0.0, -0.5, 0.0])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    x = mu1 + rng.normal(size=(200_000, d)) * np.sqrt(a)
    y = mu2 + rng.normal(size=(200_000, d)) * np.sqrt(b)
    assert metrics.fid(x, y) == pytest.approx(expected, abs=0.02)
    assert metrics.fid(x, x) == pytest.approx(0, abs=1e-8)


def test_kid():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(600, 16)), rng.normal(size=(600, 16))
    same, same_std = metrics.kid(x, y, subsets=20, subset_size=200)
    shifted, _ = metrics.kid(x, y + 0.5, subsets=20, subset_size=200)
    assert abs(same) < 0.01 and same_std >= 0
    assert shifted > 0.05 and shifted > 10 * abs(same)
    # unbiased: averaged over many independent draws the estimate is ~0, negative values allowed
    draws = [metrics.kid(rng.normal(size=(50, 4)), rng.normal(size=(50, 4)), subsets=1)[0] for _ in range(200)]
    assert min(draws) < 0 < max(draws)
    assert abs(np.mean(draws)) < 3 * np.std(draws) / np.sqrt(len(draws))
    # subset size is clipped to the smaller set; deterministic for a seed
    assert metrics.kid(x[:30], y, subsets=3, seed=4) == metrics.kid(x[:30], y, subsets=3, seed=4)


def test_kid_matches_direct_formula():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(20, 5)), rng.normal(0.3, 1, size=(20, 5))
    k = lambda a, b: (a @ b.T / 5 + 1) ** 3  # noqa: E731
    m = 20
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    direct = ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (m * (m - 1)) - 2 * kxy.mean()
    assert metrics.kid(x, y, subsets=3, subset_size=20)[0] == pytest.approx(direct, rel=1e-10)


# ---- discriminator as classifier ----

def test_classifier_report():
    real = [2.0, 0.5, -1.0, 3.0]          # 3 called real (TP), 1 called fake (FN)
    fake = [-2.0, -0.1, 0.7, -5.0, 0.0]   # 0.7 called real (FP); the rest fake (TN), logit 0 included
    r = metrics.classifier_report(real, fake)
    np.testing.assert_array_equal(r["confusion"], [[4, 1], [1, 3]])  # [[TN, FP], [FN, TP]]
    assert r["accuracy"] == pytest.approx(7 / 9)
    assert r["real_accuracy"] == pytest.approx(3 / 4) and r["fake_accuracy"] == pytest.approx(4 / 5)


# ---- memorisation ----

def test_memorisation_finds_planted_copies():
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, size=(300, 1, 16, 16), dtype=np.uint8)
    gen = rng.integers(0, 256, size=(20, 1, 16, 16), dtype=np.uint8)
    planted = {3: 17, 11: 250, 19: 0}
    for g, t in planted.items():
        gen[g] = train[t]
    near = metrics.memorisation(gen, train, max_block=16 * 256)  # small blocks: exercise the merging
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
    near = metrics.memorisation(gen, train)
    assert near.indices[0] == 7 and near.distances[0] == pytest.approx(4.0)


# ---- Inception feature extractor ----

class TinyNet(nn.Module):
    """Stand-in for the FID network: (N, 3, 299, 299) -> (N, 2048)."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, metrics.FID_FEATURE_DIMS)

    def forward(self, x):
        return self.proj(x.mean(dim=(2, 3)))


def tiny_build(state, path):
    net = TinyNet()
    if state is not None:
        net.load_state_dict(state)
    return net


def test_inception_loads_weights_from_fid_weights_path(tmp_path, monkeypatch):
    def no_network(*a, **k):
        raise AssertionError("tried to download")

    monkeypatch.setattr("urllib.request.urlopen", no_network)
    ref = TinyNet()
    weights = tmp_path / "my_inception.pth"
    torch.save(ref.state_dict(), weights)
    ext = metrics.load_inception(str(weights), "cpu", log=lambda m: pytest.fail(m), build=tiny_build)
    assert ext is not None
    imgs = np.random.default_rng(0).integers(0, 256, size=(5, 1, 32, 32), dtype=np.uint8)
    feats = ext.features(imgs)
    assert feats.shape == (5, 2048) and feats.dtype == np.float32
    # the file's weights were used, with grey repeated to RGB in [0, 1] (pytorch-fid's input convention)
    x = torch.from_numpy(imgs).float() / 255
    with torch.no_grad():
        expected = ref(x.repeat(1, 3, 1, 1)).numpy()
    np.testing.assert_allclose(feats, expected, rtol=1e-4, atol=1e-5)


def offline(*a, **k):
    import urllib.error
    raise urllib.error.URLError("[Errno -2] Name or service not known")


def test_inception_offline_gives_none_and_one_line(tmp_path, monkeypatch):
    """fid_weights '' and nothing in the hub cache: pytorch-fid's own download runs and fails offline."""
    monkeypatch.setattr("urllib.request.urlopen", offline)  # the network, whether or not this machine has one
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    msgs = []
    assert metrics.load_inception("", "cpu", log=msgs.append) is None
    assert len(msgs) == 1 and metrics.FID_WEIGHTS_FILE in msgs[0] and "could not be downloaded" in msgs[0]
    assert "Name or service not known" in msgs[0]
    assert str(tmp_path / "hub" / "checkpoints" / metrics.FID_WEIGHTS_FILE) in msgs[0]
    assert not list((tmp_path / "hub").glob("**/*.pth"))  # no half-downloaded file left behind
    msgs.clear()
    assert metrics.load_inception(str(tmp_path / "nope.pth"), "cpu", log=msgs.append) is None
    assert len(msgs) == 1 and "nope.pth" in msgs[0]
    # found in the torch hub cache when fid_weights is empty: no download
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True, exist_ok=True)
    torch.save(TinyNet().state_dict(), tmp_path / "hub" / "checkpoints" / metrics.FID_WEIGHTS_FILE)
    assert metrics.load_inception("", "cpu", log=msgs.append, build=tiny_build) is not None and len(msgs) == 1


def test_fid_network_is_pytorch_fids_and_checks_the_file(tmp_path, monkeypatch):
    """The real network (pytorch-fid's InceptionV3) from a file with the release file's keys (random values:
    the keys are torchvision's Inception-v3 with 1008 classes, which the FID blocks keep)."""
    import torchvision
    from pytorch_fid.inception import InceptionV3

    monkeypatch.setattr("urllib.request.urlopen", offline)
    net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=1008)
    state = net.state_dict()
    for k, v in state.items():
        if k.endswith("running_var"):
            v.fill_(1.0)
        elif v.is_floating_point() and not k.endswith("running_mean"):
            v.normal_(0, 0.05)
    torch.save(state, tmp_path / "fid.pth")
    ext = metrics.load_inception(str(tmp_path / "fid.pth"), "cpu", log=pytest.fail)
    assert isinstance(ext.net.net, InceptionV3)
    assert torch.equal(ext.net.net.blocks[3][2].branch_pool.conv.weight, state["Mixed_7c.branch_pool.conv.weight"])
    feats = ext.features(np.random.default_rng(0).integers(0, 256, size=(3, 1, 32, 32), dtype=np.uint8))
    assert feats.shape == (3, 2048) and np.isfinite(feats).all()
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(metrics.WeightsFileError, match="not the FID Inception weights file"):
        metrics.load_inception(str(tmp_path / "other.pth"), "cpu")
