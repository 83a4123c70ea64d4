"""The step's statistics arrive by name, each from its own source, averaged over the epoch's steps."""
import numpy as np
import pytest
import torch

from dcgan import engine
from dcgan.archs.dcgan import Discriminator, Generator
from dcgan.device import FastPath


def stepper(r1_gamma=0.0):
    G, D = Generator(32, 1, 8, 4), Discriminator(32, 1, 4)
    opt = torch.optim.SGD(list(G.parameters()) + list(D.parameters()), lr=0.0)
    return engine.Stepper(G, D, opt, opt, 8, FastPath("fp32", False, False, False), torch.device("cpu"),
                          log=lambda s: None, r1_gamma=r1_gamma, r1_every=2)


def test_read_stats_names_each_statistic(monkeypatch):
    calls = iter([(1.0, 2.0, 0.0, -1e4), (3.0, 4.0, 0.0, 1e4)])   # loss_d, loss_g, D's logits on real, on fake

    def fake_step(*args):
        ld, lg, real, fake = next(calls)
        return torch.tensor(ld), torch.tensor(lg), torch.full((4,), real), torch.full((4,), fake), None

    monkeypatch.setattr(engine, "train_step", fake_step)
    s = stepper()
    data = engine.ResidentData(np.zeros((8, 1, 32, 32), np.uint8), torch.device("cpu"))
    for _ in range(2):
        s.step(data, torch.arange(4))
    stats = s.read_stats(2)
    assert list(stats) == [k for k in engine.STATS if k not in ("r1", "recon")]   # r1 with R1, recon with a D that reconstructs
    assert stats == pytest.approx({"loss_d": 2.0, "loss_g": 3.0, "d_real": 0.5, "d_fake": 0.5})
    assert s.read_stats(2) == pytest.approx({"loss_d": 0.0, "loss_g": 0.0, "d_real": 0.0, "d_fake": 0.0})  # zeroed


def test_r1_is_averaged_over_the_steps_that_computed_it():
    s = stepper(r1_gamma=1.0)
    data = engine.ResidentData(np.random.default_rng(0).integers(0, 256, (8, 1, 32, 32), dtype=np.uint8),
                               torch.device("cpu"))
    for _ in range(4):
        s.step(data, torch.arange(4))
    stats = s.read_stats(4)
    assert s.r1_steps == 0 and stats["r1"] > 0 and np.isfinite(list(stats.values())).all()
