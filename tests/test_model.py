"""Model files: save and load round trips, one-line errors for foreign files."""
import pytest
import torch

from dcgan.archs.dcgan import Discriminator, Generator, init_weights
from dcgan.model import load, save


def test_save_load_roundtrip_with_weights_only(tmp_path):
    G = Generator(32, 3, nz=16, ngf=8)
    G.apply(init_weights)
    save(G, tmp_path / "g.pt")
    blob = torch.load(tmp_path / "g.pt", weights_only=True)  # nothing pickled that runs code
    assert blob["config"] == {"image_size": 32, "channels": 3, "nz": 16, "ngf": 8}
    G2 = load(tmp_path / "g.pt")
    z = torch.randn(2, 16)
    assert torch.equal(G.eval()(z), G2(z))
    assert not G2.training


def test_load_reports_missing_and_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="junk.pt"):
        load(tmp_path / "junk.pt")


def test_spectral_norm_discriminator_saves_and_loads(tmp_path):
    D = Discriminator(32, 1, 8, spectral_norm=True)
    D.train()(torch.randn(2, 1, 32, 32))
    save(D, tmp_path / "d.pt")
    D2 = load(tmp_path / "d.pt")
    x = torch.randn(3, 1, 32, 32)
    torch.testing.assert_close(D.eval()(x), D2(x))
