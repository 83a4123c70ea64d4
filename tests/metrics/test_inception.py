"""dcgan.metrics._inception: the FID Inception network from a weights file, the torch hub cache or nowhere."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dcgan.metrics._inception import FID_FEATURE_DIMS, FID_WEIGHTS_FILE, WeightsFileError, load_inception


class TinyNet(nn.Module):
    """Stand-in for the FID network: (N, 3, 299, 299) -> (N, 2048)."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, FID_FEATURE_DIMS)

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
    ext = load_inception(str(weights), "cpu", log=lambda m: pytest.fail(m), build=tiny_build)
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
    assert load_inception("", "cpu", log=msgs.append) is None
    assert len(msgs) == 1 and FID_WEIGHTS_FILE in msgs[0] and "could not be downloaded" in msgs[0]
    assert "Name or service not known" in msgs[0]
    assert str(tmp_path / "hub" / "checkpoints" / FID_WEIGHTS_FILE) in msgs[0]
    assert not list((tmp_path / "hub").glob("**/*.pth"))  # no half-downloaded file left behind
    msgs.clear()
    assert load_inception(str(tmp_path / "nope.pth"), "cpu", log=msgs.append) is None
    assert len(msgs) == 1 and "nope.pth" in msgs[0]
    # found in the torch hub cache when fid_weights is empty: no download
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True, exist_ok=True)
    torch.save(TinyNet().state_dict(), tmp_path / "hub" / "checkpoints" / FID_WEIGHTS_FILE)
    assert load_inception("", "cpu", log=msgs.append, build=tiny_build) is not None and len(msgs) == 1


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
    ext = load_inception(str(tmp_path / "fid.pth"), "cpu", log=pytest.fail)
    assert isinstance(ext.net.net, InceptionV3)
    assert torch.equal(ext.net.net.blocks[3][2].branch_pool.conv.weight, state["Mixed_7c.branch_pool.conv.weight"])
    feats = ext.features(np.random.default_rng(0).integers(0, 256, size=(3, 1, 32, 32), dtype=np.uint8))
    assert feats.shape == (3, 2048) and np.isfinite(feats).all()
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(WeightsFileError, match="not the FID Inception weights file"):
        load_inception(str(tmp_path / "other.pth"), "cpu")
