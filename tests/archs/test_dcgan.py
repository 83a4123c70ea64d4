"""The DCGAN networks: shapes at every size, the paper's layers, its init, spectral norm."""
import pytest
import torch

from dcgan.archs import ladder
from dcgan.archs.dcgan import Discriminator, Encoder, Generator, check_size, init_weights


@pytest.mark.parametrize("size", [16, 17, 32, 48, 64, 100, 120, 128, 256, 512])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_for_every_size_and_channel_count(size, channels):
    G, D = Generator(size, channels, nz=8, ngf=4), Discriminator(size, channels, ndf=4)
    E = Encoder(size, channels, nz=8, nef=4)
    z = torch.randn(3, 8)
    x = G(z)
    assert x.shape == (3, channels, size, size)
    assert x.min() >= -1 and x.max() <= 1  # tanh range
    assert D(x).shape == (3,)  # one logit per image
    assert E(x).shape == (3, 8)


@pytest.mark.parametrize("size", [17, 48, 100, 120])
def test_other_sizes_start_larger_and_crop_or_pad_the_ladders_top(size):
    start, doublings = ladder(size)
    G, D, E = Generator(size, 1, 8, 4).eval(), Discriminator(size, 1, 4).eval(), Encoder(size, 1, 8, 4).eval()
    assert start > 4
    assert G.net[0].kernel_size == D.net[-1].kernel_size == E.net[-1].kernel_size == (start, start)
    z = torch.randn(2, 8)
    with torch.no_grad():
        full = G.net(z[:, :, None, None])           # start * 2**doublings px: 20, 48, 112, 128
        off = (full.shape[-1] - size) // 2
        x = G(z)
        assert full.shape[-1] == start * 2 ** doublings >= size
        assert torch.equal(x, full[:, :, off:off + size, off:off + size])
        padded = torch.zeros_like(full)             # zeros around: mid-grey
        padded[:, :, off:off + size, off:off + size] = x
        assert torch.equal(D(x), D.net(padded).flatten()) and torch.equal(E(x), E.net(padded).flatten(1))


# A 64 px model as the DCGAN paper (and every model file saved before other sizes existed) has it: conv
# weights and BatchNorm buffers under these names and shapes, so such files load and give the same images.
def _bn(index: int, c: int) -> dict:
    return {f"net.{index}.{k}": s for k, s in (("weight", (c,)), ("bias", (c,)), ("running_mean", (c,)),
                                                ("running_var", (c,)), ("num_batches_tracked", ()))}


PAPER_64PX = {
    "generator": {"net.0.weight": (100, 512, 4, 4), **_bn(1, 512), "net.3.weight": (512, 256, 4, 4), **_bn(4, 256),
                  "net.6.weight": (256, 128, 4, 4), **_bn(7, 128), "net.9.weight": (128, 64, 4, 4), **_bn(10, 64),
                  "net.12.weight": (64, 3, 4, 4)},
    "discriminator": {"net.0.weight": (64, 3, 4, 4), "net.2.weight": (128, 64, 4, 4), **_bn(3, 128),
                      "net.5.weight": (256, 128, 4, 4), **_bn(6, 256), "net.8.weight": (512, 256, 4, 4),
                      **_bn(9, 512), "net.11.weight": (1, 512, 4, 4)},
    "encoder": {"net.0.weight": (64, 3, 4, 4), "net.2.weight": (128, 64, 4, 4), **_bn(3, 128),
                "net.5.weight": (256, 128, 4, 4), **_bn(6, 256), "net.8.weight": (512, 256, 4, 4), **_bn(9, 512),
                "net.11.weight": (100, 512, 4, 4), "net.11.bias": (100,)},
}


def test_powers_of_two_keep_the_papers_layers_and_state_dict():
    nets = {"generator": Generator(64, 3, 100, 64), "discriminator": Discriminator(64, 3, 64),
            "encoder": Encoder(64, 3, 100, 64)}
    for kind, net in nets.items():
        got = {k: tuple(v.shape) for k, v in net.state_dict().items()}
        assert got == PAPER_64PX[kind], kind
        assert list(got) == list(PAPER_64PX[kind]), kind        # the same order too
    # and nothing runs around the layers: no crop after G, no pad before D and the encoder
    G, D, E = (net.eval() for net in nets.values())
    z = torch.randn(2, 100)
    with torch.no_grad():
        x = G(z)
        assert torch.equal(x, G.net(z[:, :, None, None]))
        assert torch.equal(D(x), D.net(x).flatten()) and torch.equal(E(x), E.net(x).flatten(1))


@pytest.mark.parametrize("size, channels, words", [
    (15, 3, "image_size must be an integer from 16 to 512, got 15"),
    (513, 3, "got 513"), (64.0, 3, "got 64.0"), ("abc", 3, "got 'abc'"), (True, 3, "got True"),
    (64, 2, "channels must be 1 or 3, got 2"),
])
def test_sizes_and_channels_outside_the_range_are_refused_in_one_line(size, channels, words):
    with pytest.raises(ValueError, match=words.replace("(", "\\(")) as e:
        check_size(size, channels)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="must be"):
        Generator(size, channels, 8, 4)


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
