"""EMA of the generator: the maths of the decay, the ramp-up, buffers copied, checkpoint round trip."""
import pytest
import torch
from torch import nn

from dcgan import ema as E


def test_beta_halves_the_distance_after_one_half_life():
    assert E.beta(1000, 1000, 10**9) == pytest.approx(0.5)
    # the same half-life in images gives the same decay at any batch size
    assert E.beta(10_000, 32, 10**9) ** (10_000 / 32) == pytest.approx(0.5)
    assert E.beta(10_000, 256, 10**9) ** (10_000 / 256) == pytest.approx(0.5)


def test_rampup_caps_the_half_life_early():
    assert E.beta(10_000, 64, 0, rampup=0.05) == 0.0                 # first step: the EMA is G
    assert E.beta(10_000, 64, 64_000, rampup=0.05) == pytest.approx(0.5 ** (64 / 3200))
    assert E.beta(10_000, 64, 10**7, rampup=0.05) == pytest.approx(0.5 ** (64 / 10_000))


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))


def test_update_is_a_lerp_and_buffers_are_copied():
    G = net()
    ema = E.EMA(G, half_life=100, rampup=0.0)
    before = [p.detach().clone() for p in ema.model.parameters()]
    with torch.no_grad():
        for p in G.parameters():
            p.add_(1.0)
    G.train()(torch.randn(8, 3))                    # moves BatchNorm's running statistics
    ema.update(batch=100, images_seen=10**6)        # beta = 0.5: halfway to G
    for b, e, g in zip(before, ema.model.parameters(), G.parameters()):
        torch.testing.assert_close(e, (b + g.detach()) / 2)
    for e, g in zip(ema.model.buffers(), G.buffers()):
        assert torch.equal(e, g)
    assert not any(p.requires_grad for p in ema.model.parameters()) and not ema.model.training


def test_constant_g_is_approached_geometrically_and_state_round_trips():
    G = net()
    ema = E.EMA(G, half_life=640, rampup=0.0)
    with torch.no_grad():
        for p in G.parameters():
            p.add_(1.0)
    for _ in range(10):                             # 10 steps of 64 images = one half-life
        ema.update(64, 10**6)
    e0, g0 = next(ema.model.parameters()), next(G.parameters())
    torch.testing.assert_close(g0.detach() - e0, torch.full_like(e0, 0.5), rtol=0, atol=1e-5)
    other = E.EMA(net(), half_life=640)
    other.load_state_dict(ema.state_dict())
    for a, b in zip(other.model.parameters(), ema.model.parameters()):
        assert torch.equal(a, b)


def test_recalibrate_gives_the_ema_weights_their_own_batchnorm_statistics():
    from dcgan.archs.dcgan import Generator, init_weights

    torch.manual_seed(0)
    G = Generator(32, 1, 8, 8).apply(init_weights).train()
    ema = E.EMA(G, half_life=10**9)                 # stays at G's initial weights
    with torch.no_grad():
        for p in G.parameters():
            p.mul_(3.0)                                # G moves far away
        for _ in range(5):
            G(torch.randn(64, 8))                      # and its running statistics follow it
    ema.update(64, 10**6)                              # copies G's statistics: wrong for the EMA weights
    z = torch.randn(512, 8)
    rng_before = torch.random.get_rng_state()
    model = ema.recalibrate(batches=16, batch=64)
    assert torch.equal(torch.random.get_rng_state(), rng_before)   # training's random stream untouched
    assert not model.training
    bn = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():                              # the statistics now match the EMA weights' activations
        h = model.net[0](z[:, :, None, None])
    torch.testing.assert_close(bn[0].running_mean, h.mean((0, 2, 3)), atol=0.05, rtol=0.1)
    assert bn[0].momentum == 0.1
    again = E.EMA(G, 10**9)
    again.load_state_dict(ema.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(again.recalibrate(16, 64).buffers(), model.buffers()))  # deterministic
