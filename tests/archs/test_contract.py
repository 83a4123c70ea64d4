"""The contract of dcgan/archs/__init__.py, checked for every registered architecture: what generation,
export, EMA, the server and model files rely on. A new architecture passes these or does not land."""
import numpy as np
import pytest
import torch

from dcgan import archs, export, model, sampling
from dcgan.ema import EMA

SHAPES = [(32, 1), (64, 3)]   # (image_size, channels)
NZ, WIDTH = 8, 4


def networks(name, size, channels):
    arch = archs.REGISTRY.get(name)
    torch.manual_seed(0)
    G = arch.generator(size, channels, NZ, WIDTH).apply(arch.init_weights)
    D = arch.discriminator(size, channels, WIDTH, spectral_norm=False).apply(arch.init_weights)
    E = arch.encoder(size, channels, NZ, WIDTH).apply(arch.init_weights)
    return G, D, E


@pytest.mark.parametrize("size, channels", SHAPES)
@pytest.mark.parametrize("name", archs.REGISTRY.names())
def test_shapes_ranges_and_config(name, size, channels):
    G, D, E = networks(name, size, channels)
    z = torch.randn(3, NZ)
    x = G(z)
    assert x.shape == (3, channels, size, size) and x.min() >= -1 and x.max() <= 1
    assert D(x).shape == (3,)
    assert E(x).shape == (3, NZ)
    for net in (G, E):
        assert net.nz == NZ and {"image_size": size, "channels": channels, "nz": NZ}.items() <= net.config.items()
    assert G.config["ngf"] == WIDTH     # the encoder stage builds the encoder as wide as the generator
    assert {"image_size": size, "channels": channels}.items() <= D.config.items()
    assert [archs.identify(m) for m in (G, D, E)] == [(name, k) for k in archs.KINDS]


@pytest.mark.parametrize("name", archs.REGISTRY.names())
def test_spectral_norm_discriminator_gives_logits(name):
    arch = archs.REGISTRY.get(name)
    D = arch.discriminator(32, 3, WIDTH, spectral_norm=True).apply(arch.init_weights)
    assert D(torch.rand(2, 3, 32, 32) * 2 - 1).shape == (2,)


@pytest.mark.parametrize("name", archs.REGISTRY.names())
def test_an_image_depends_on_its_own_latent_only_in_eval_mode(name):
    G, _, _ = networks(name, 32, 1)
    z = torch.randn(6, NZ)
    together = sampling.sample_images(G, z, "cpu")
    apart = np.concatenate([sampling.sample_images(G, z[i:i + 1], "cpu") for i in range(6)])
    assert np.abs(together.astype(int) - apart.astype(int)).max() <= 1   # the same, up to float rounding


@pytest.mark.parametrize("name", archs.REGISTRY.names())
def test_saved_models_load_as_the_same_network(name, tmp_path):
    for net in networks(name, 32, 3):
        model.save(net, tmp_path / "m.pt")
        blob = torch.load(tmp_path / "m.pt", weights_only=True)
        assert blob.get("arch", archs.DEFAULT) == name and blob["config"] == net.config
        loaded = model.load(tmp_path / "m.pt", kind=archs.identify(net)[1])
        x = torch.randn(2, NZ) if archs.identify(net)[1] == "generator" else torch.rand(2, 3, 32, 32) * 2 - 1
        assert torch.equal(net.eval()(x), loaded(x))


@pytest.mark.parametrize("name", archs.REGISTRY.names())
def test_ema_recalibrates_the_batchnorm_statistics(name):
    G, _, _ = networks(name, 32, 1)
    ema = EMA(G, half_life=100)
    ema.update(8, 8)
    out = ema.recalibrate(batches=2, batch=8)
    assert not out.training
    assert sampling.sample_images(out, torch.randn(4, NZ), "cpu").shape == (4, 1, 32, 32)


@pytest.mark.parametrize("name", archs.REGISTRY.names())
def test_exports_to_onnx_and_torchscript_with_the_same_outputs(name, tmp_path):
    G, _, E = networks(name, 32, 1)
    for net, kind in ((G, "generator"), (E, "encoder")):
        paths = export.export_all(net.eval(), tmp_path, kind)
        x = export.example_input(net, batch=3)
        expected = net(x).detach().numpy()
        for path in paths:
            runnable, loaded_kind, config = export.load_runnable(path)
            assert loaded_kind == kind and config["nz"] == NZ
            np.testing.assert_allclose(runnable(x).detach().numpy(), expected, atol=1e-4)


def test_an_unknown_architecture_is_named_with_the_choices():
    with pytest.raises(ValueError, match="unknown architecture 'nope' \\(choose from dcgan"):
        archs.REGISTRY.get("nope")
