"""The DCGAN networks: shapes at every size, the paper's layers, its init, spectral norm."""
import pytest
import torch

from dcgan.archs.dcgan import Discriminator, Generator, init_weights


@pytest.mark.parametrize("size", [32, 64, 128, 256])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_for_every_size_and_channel_count(size, channels):
    G, D = Generator(size, channels, nz=8, ngf=4), Discriminator(size, channels, ndf=4)
    z = torch.randn(3, 8)
    x = G(z)
    assert x.shape == (3, channels, size, size)
    assert x.min() >= -1 and x.max() <= 1  # tanh range
    assert D(x).shape == (3,)  # one logit per image


def test_generator_accepts_4d_latents():
    G = Generator(32, 1, nz=8, ngf=4).eval()
    z = torch.randn(2, 8)
    assert torch.equal(G(z), G(z[:, :, None, None]))


def test_discriminator_returns_logits_not_probabilities():
    D = Discriminator(32, 1, ndf=4).eval()
    with torch.no_grad():
        D.net[0].weight.fill_(1.0)
        D.net[-1].weight.fill_(1.0)
    out = D(torch.ones(4, 1, 32, 32))
    assert (out.abs() > 1).any()  # a sigmoid output could never leave [0, 1]


def test_architecture_follows_the_paper():
    G, D = Generator(64, 3, nz=100, ngf=64), Discriminator(64, 3, ndf=64)
    g_layers = [type(m).__name__ for m in G.net]
    assert g_layers[-1] == "Tanh" and "ReLU" in g_layers and "LeakyReLU" not in g_layers
    assert G.net[0].out_channels == 512 and G.net[0].kernel_size == (4, 4)  # ngf*8 at 4x4, as in the paper
    d_layers = [type(m).__name__ for m in D.net]
    assert d_layers[:2] == ["Conv2d", "LeakyReLU"]  # no BatchNorm on the first layer
    assert d_layers.count("BatchNorm2d") == 3
    assert all(m.negative_slope == 0.2 for m in D.net if isinstance(m, torch.nn.LeakyReLU))


def test_dcgan_init_statistics():
    torch.manual_seed(0)
    G = Generator(64, 3, nz=100, ngf=64)
    G.apply(init_weights)
    w = G.net[0].weight
    assert abs(w.mean().item()) < 1e-3 and abs(w.std().item() - 0.02) < 1e-3
    bn = G.net[1]
    assert abs(bn.weight.mean().item() - 1.0) < 0.01 and abs(bn.weight.std().item() - 0.02) < 0.01
    assert torch.all(bn.bias == 0)


def test_spectral_norm_bounds_the_largest_singular_value_of_every_conv():
    from dcgan.archs.dcgan import Discriminator, init_weights

    torch.manual_seed(0)
    D = Discriminator(32, 3, 16, spectral_norm=True).apply(init_weights)
    convs = [m for m in D.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        for m in convs:                               # make the raw weights far from 1-Lipschitz
            m.parametrizations.weight.original.mul_(50)
        for _ in range(30):                           # power iterations run in train-mode forwards
            D.train()(torch.randn(4, 3, 32, 32))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in D.modules())
    D.eval()
    for m in convs:
        raw = m.parametrizations.weight.original.detach().flatten(1)
        assert torch.linalg.matrix_norm(raw, ord=2) > 5
        sigma = torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2).item()
        assert sigma == pytest.approx(1.0, abs=0.02)
    # without it the same scaling goes straight through
    plain = Discriminator(32, 3, 16).apply(init_weights)
    w = [m for m in plain.modules() if isinstance(m, torch.nn.Conv2d)][1].weight
    assert torch.linalg.matrix_norm(50 * w.detach().flatten(1), ord=2) > 5
