"""In-training quality: the probe scores a fixed batch against held-out images; the best is kept."""
import numpy as np
import pytest
import torch
from torch import nn

from dcgan import metrics, pictures
from dcgan.quality import Best, QualityProbe


def real_images(n=40, seed=0):
    rng = np.random.default_rng(seed)
    img = np.zeros((n, 1, 32, 32), np.uint8)
    for i in range(n):  # bright squares on black: structure that noise does not have
        y, x = rng.integers(0, 20, 2)
        img[i, 0, y:y + 12, x:x + 12] = 255
    return img


class Replay(nn.Module):
    """A 'generator' that returns given images in order, whatever z is."""

    def __init__(self, images):
        super().__init__()
        self.register_buffer("images", pictures.to_float(torch.from_numpy(images)))
        self.i = 0

    def forward(self, z):
        out = self.images[self.i:self.i + len(z)]
        self.i = (self.i + len(z)) % len(self.images)
        return out


class Noise(nn.Module):
    def forward(self, z):
        return torch.rand(len(z), 1, 32, 32, generator=torch.Generator().manual_seed(len(z))) * 2 - 1


def test_probe_scores_real_images_far_better_than_noise_and_is_repeatable():
    real = real_images()
    probe = QualityProbe(real, nz=8, device=torch.device("cpu"), n=len(real))
    same = probe.score(Replay(real))["swd"]
    lookalike = probe.score(Replay(real_images(seed=1)))["swd"]
    noise = probe.score(Noise())
    assert set(noise) == {"swd", "rkid", "c2st"}               # no Inception: no FID/KID keys
    assert same == pytest.approx(0, abs=1e-6) and lookalike < noise["swd"] / 3
    assert probe.score(Noise())["swd"] == noise["swd"]   # fixed noise, fixed patches: the same score


def test_probe_adds_fid_and_kid_with_inception_weights(monkeypatch):
    class MeanStd:  # stand-in for the Inception network
        def features(self, images):
            x = images.reshape(len(images), -1).astype(np.float64) / 255
            return np.stack([x.mean(1), x.std(1), (x > 0.5).mean(1), x.max(1)], 1)

    monkeypatch.setattr(metrics, "load_inception", lambda *a, **k: MeanStd())
    real = real_images()
    probe = QualityProbe(real, nz=8, device=torch.device("cpu"), n=len(real), fid_weights="")
    same, noise = probe.score(Replay(real)), probe.score(Noise())
    assert [k for k in same if k in ("swd", "fid", "kid")] == ["swd", "fid", "kid"]   # beside any other scorer
    assert same["fid"] == pytest.approx(0, abs=1e-6) and noise["fid"] > 0.01 and noise["kid"] > same["kid"]


def test_probe_leaves_training_mode_and_uses_fixed_noise():
    G = nn.Sequential(nn.Linear(8, 32 * 32), nn.Tanh(), nn.Unflatten(1, (1, 32, 32))).train()
    probe = QualityProbe(real_images(), nz=8, device=torch.device("cpu"), n=20)
    a = probe.images(G)
    assert G.training and a.shape == (20, 1, 32, 32) and a.dtype == np.uint8
    assert np.array_equal(a, probe.images(G))


def test_best_keeps_the_lowest_score_and_a_copy_of_the_weights():
    G = nn.Linear(2, 2)
    best = Best()
    assert best.weights is None
    assert best.offer(1, 5.0, G)
    with torch.no_grad():
        G.weight.add_(1)
    assert not best.offer(2, 6.0, G) and not best.offer(3, 5.0, G)   # worse, and a tie keeps the earlier
    assert best.epoch == 1 and not torch.equal(best.weights["weight"], G.weight)
    assert best.offer(4, 4.0, G) and best.epoch == 4 and torch.equal(best.weights["weight"], G.weight)
    again = Best(best.state_dict())
    assert (again.epoch, again.score) == (4, 4.0) and torch.equal(again.weights["weight"], G.weight)
