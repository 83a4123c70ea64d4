"""source: torchvision:<Name>, offline: files the tests write in torchvision's formats go through fetch, prepare and
one epoch of training; the download goes through torchvision with the network call replaced."""
import gzip
import hashlib
import io
import json
import re
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, TINY
from torchvision_files import patch_cifar10_md5s, patch_svhn_md5s, write_cifar10, write_mnist, write_svhn
from dcgan import data, training
from dcgan import params as P
from dcgan import torchvision_source as T

# train.npy of the FashionMNIST files write_mnist() writes, prepared at 32 px grayscale (crop): the same bytes on
# any machine (torchvision's reader, Pillow's resize and the content-hash split are all exact).
FASHION_TRAIN_SHA256 = "1ee9ccfc9c692aba163b03d35419cc67dbd0cb6c0db568d64651a19b63193ffd"


def settings(channels=1, resize="crop"):
    return data.Settings(32, channels, resize, "white", 10**8, 1 << 28, 0.75, 0)


def prepare(source, out: Path, **kw) -> dict:
    return data.prepare(source, out, settings(**kw), 0.1, 0.1, 0.1, {}, progress=False)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def train_one_epoch(prepared: Path, tmp: Path, channels: int) -> dict:
    p = P.read(ROOT / "params.yaml")
    p.update(TINY, batch_size=16, epochs=1, channels=channels)
    return training.train(p, data.load_split(prepared, "train"), data.load_split(prepared, "val"), tmp / "models",
                          tmp / "live", tmp / "train.json", progress=False, log=lambda *_: None)


@pytest.fixture
def no_network(monkeypatch):
    """Every URL torchvision opens fails as it does without a network; the URLs tried are listed."""
    tried = []

    def refuse(request, *a, **k):
        tried.append(getattr(request, "full_url", request))
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    return tried


def test_fashionmnist_files_in_place_fetch_offline_prepare_the_same_arrays_twice_and_train(tmp_path, no_network):
    root = tmp_path / "torchvision"
    write_mnist(root)
    dataset = T.parse("torchvision:FashionMNIST")
    receipt = T.fetch(dataset, root)   # downloading allowed: the files in place make it unnecessary
    assert no_network == []
    assert receipt["source"] == "torchvision:FashionMNIST"
    assert sorted(receipt["files"]) == sorted(f"FashionMNIST/raw/{f}" for f in (
        "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))
    assert receipt["files"]["FashionMNIST/raw/train-labels-idx1-ubyte"] == {
        "bytes": 68, "sha256": sha256(root / "FashionMNIST/raw/train-labels-idx1-ubyte")}

    a = prepare(T.Source(dataset, root), tmp_path / "a")
    prepare(T.Source(dataset, root), tmp_path / "b")
    for name in ("train.npy", "val.npy", "test.npy", "manifest.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert sha256(tmp_path / "a/train.npy") == FASHION_TRAIN_SHA256

    c = a["counts"]   # both splits in one pool, split again by content hash; labels kept
    assert c["train"] + c["val"] + c["test"] == 80 and c["duplicates"] == c["skipped"] == 0
    assert c["val"] > 0 and c["test"] > 0
    assert a["labels"][0] == "T-shirt/top" and len(a["labels"]) == 10
    files = a["files"]
    assert sorted(files)[:2] == ["test/00", "test/01"] and len([f for f in files if f.startswith("train/")]) == 60
    assert [files[f"train/{i:02d}"]["label"] for i in range(12)] == [i % 10 for i in range(12)]
    train = np.load(tmp_path / "a/train.npy")
    assert train.shape == (c["train"], 1, 32, 32) and train.dtype == np.uint8

    summary = train_one_epoch(tmp_path / "a", tmp_path / "run", channels=1)
    assert summary["epochs_done"] == 1 and np.isfinite(summary["loss_g"])
    assert (tmp_path / "run/models/generator.pt").is_file()


def test_cifar10_files_prepare_in_colour_with_labels_and_train(tmp_path, monkeypatch, no_network):
    root = tmp_path / "torchvision"
    patch_cifar10_md5s(monkeypatch, write_cifar10(root))   # CIFAR10 checks its files' md5 against its own lists
    dataset = T.parse("torchvision:CIFAR10")
    receipt = T.fetch(dataset, root)
    assert no_network == [] and len(receipt["files"]) == 7
    m = prepare(T.Source(dataset, root), tmp_path / "prepared", channels=3, resize="random")
    assert sum(m["counts"][s] for s in ("train", "val", "test")) == 72 and m["labels"][3] == "class3"
    assert {f.split("/")[0] for f in m["files"]} == {"train", "test"}
    train = np.load(tmp_path / "prepared/train.npy")
    assert train.shape[1:] == (3, 32, 32) and train.std() > 10
    summary = train_one_epoch(tmp_path / "prepared", tmp_path / "run", channels=3)
    assert summary["epochs_done"] == 1 and np.isfinite(summary["loss_d"])


def test_svhn_reads_its_three_splits_from_mat_files_with_digit_labels(tmp_path, monkeypatch, no_network):
    patch_svhn_md5s(monkeypatch, write_svhn(tmp_path))
    dataset = T.parse("torchvision:SVHN")
    assert sorted(T.fetch(dataset, tmp_path)["files"]) == ["extra_32x32.mat", "test_32x32.mat", "train_32x32.mat"]
    m = prepare(T.Source(dataset, tmp_path), tmp_path / "prepared", channels=3)
    assert sum(m["counts"][s] for s in ("train", "val", "test")) == 30 and no_network == []
    assert m["labels"] == list("0123456789")   # torchvision's SVHN has no class names: the digits
    assert [m["files"][f"extra/{i}"]["label"] for i in range(3)] == [1, 2, 3] and m["files"]["test/5"]["label"] == 6


def test_download_goes_through_torchvision_with_the_network_call_replaced(tmp_path, monkeypatch):
    served = tmp_path / "server"
    md5s = write_mnist(served, gz=True)   # the archives a mirror serves
    from torchvision.datasets import FashionMNIST
    monkeypatch.setattr(FashionMNIST, "resources", [(f, md5s[f]) for f, _ in FashionMNIST.resources])
    asked = []

    def urlopen(request, *a, **k):
        url = getattr(request, "full_url", request)
        asked.append(url)
        return _Response(url, (served / "FashionMNIST/raw" / url.rsplit("/", 1)[1]).read_bytes())
    monkeypatch.setattr(urllib.request, "urlopen", urlopen)

    root = tmp_path / "torchvision"
    receipt = T.fetch(T.parse("torchvision:FashionMNIST"), root)
    assert {u.rsplit("/", 1)[1] for u in asked} == set(md5s)
    assert all(u.startswith(FashionMNIST.mirrors[0]) for u in asked)
    raw = root / "FashionMNIST/raw"
    assert (raw / "train-images-idx3-ubyte").read_bytes() == gzip.decompress(
        (served / "FashionMNIST/raw/train-images-idx3-ubyte.gz").read_bytes())
    assert len(receipt["files"]) == 4
    asked.clear()
    assert T.fetch(T.parse("torchvision:FashionMNIST"), root) == receipt and asked == []   # once


class _Response(io.BytesIO):
    """What torchvision's download reads of an HTTP response: url (no redirect), length, read(), a context."""

    def __init__(self, url: str, body: bytes):
        super().__init__(body)
        self.url, self.length = url, len(body)


@pytest.mark.parametrize("name", sorted(T.DATASETS))
def test_without_files_or_network_one_line_says_which_files_to_put_where(tmp_path, no_network, name):
    dataset = T.parse(f"torchvision:{name}")
    root = tmp_path / "cache"
    with pytest.raises(T.SourceError) as e:
        T.fetch(dataset, root)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"source 'torchvision:{name}' is not in {root} and could not be")
    assert "name resolution" in msg and no_network   # it did try, through torchvision
    expected = T.raw_files(dataset, root)
    assert expected and all(p.is_relative_to(root) for p in expected)
    hint = T.where_to_put(dataset, root)
    assert hint in msg and str(root) in hint
    with pytest.raises(T.SourceError, match="is not in .*: `dvc repro fetch` downloads it"):   # prepare, no fetch
        list(T.Source(dataset, tmp_path / "other").records(settings(), progress=False))


def test_offline_fetch_never_downloads_but_unpacks_the_archives_in_place(tmp_path, monkeypatch, no_network):
    with pytest.raises(T.SourceError, match=r"\(offline: nothing downloaded\): put train-images-idx3-ubyte\.gz, "
                                            r".* in .*/MNIST/raw/"):
        T.fetch(T.parse("torchvision:MNIST"), tmp_path, download=False)
    md5s = write_mnist(tmp_path, "MNIST", gz=True)   # the archives, as a download leaves them
    from torchvision.datasets import MNIST
    monkeypatch.setattr(MNIST, "resources", [(f, md5s[f]) for f, _ in MNIST.resources])
    receipt = T.fetch(T.parse("torchvision:MNIST"), tmp_path, download=False)
    assert len(receipt["files"]) == 4 and (tmp_path / "MNIST/raw/t10k-labels-idx1-ubyte").is_file()
    assert no_network == []


def test_a_damaged_file_is_one_line_naming_the_dataset(tmp_path, no_network):
    write_mnist(tmp_path)
    images = tmp_path / "FashionMNIST/raw/train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:1000])   # a download cut short
    with pytest.raises(T.SourceError) as e:
        T.fetch(T.parse("torchvision:FashionMNIST"), tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("source 'torchvision:FashionMNIST': its files in ")
    assert "cannot be read (RuntimeError: shape '[60, 28, 28]' is invalid" in msg
    assert f"delete {tmp_path.as_posix()}/FashionMNIST/raw/ to download again" in msg and no_network == []


def test_names_are_checked_with_the_closest_one_suggested():
    assert T.parse("data/demo") is None and T.parse("torchvision:SVHN").splits.keys() == {"train", "test", "extra"}
    with pytest.raises(T.SourceError, match="did you mean torchvision:FashionMNIST"):
        T.parse("torchvision:fashionmnist")
    p = P.read(ROOT / "params.yaml")
    with pytest.raises(P.ParamError, match="'source' names a torchvision dataset .* did you mean torchvision:CIFAR10"):
        P.validate({**p, "source": "torchvision:CIFAR-10"}, ["source"])
    assert P.validate({**p, "source": "torchvision:KMNIST"}, ["source"])["source"] == "torchvision:KMNIST"


def test_the_params_help_names_every_dataset():
    listed = re.search(r"torchvision:<Name> \(([^:]+):", P.SCHEMA["source"].help).group(1)
    assert set(listed.split(", ")) == set(T.DATASETS)


def test_a_relative_root_in_dvcs_temporary_copy_is_the_workspaces(tmp_path, monkeypatch):
    copy = tmp_path / "project/.dvc/tmp/exps/tmpab12cd"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    assert T.resolve_root("data/torchvision") == tmp_path / "project/data/torchvision"
    assert T.resolve_root("/srv/torchvision") == Path("/srv/torchvision")
    monkeypatch.chdir(tmp_path)
    assert T.resolve_root("data/torchvision") == Path("data/torchvision")


def test_the_fetch_stage_writes_the_receipt_prepare_depends_on(tmp_path, monkeypatch, no_network):
    from stages import fetch

    write_mnist(tmp_path / "data/torchvision")
    p = P.read(ROOT / "params.yaml")
    (tmp_path / "params.yaml").write_text(json.dumps({**p, "source": "torchvision:FashionMNIST"}))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["fetch"])
    fetch.main()
    receipt = json.loads((tmp_path / "torchvision:FashionMNIST").read_text())
    assert receipt == json.loads((tmp_path / "data/source.json").read_text())
    assert len(receipt["files"]) == 4


def test_the_stages_offline_without_files_exit_with_one_line(tmp_path):
    """As dvc runs them: `fetch --offline` never downloads, and prepare before fetch says what to run."""
    import subprocess
    import sys

    from conftest import env

    p = P.read(ROOT / "params.yaml")
    (tmp_path / "params.yaml").write_text(json.dumps({**p, "source": "torchvision:CIFAR10"}))
    e = {**env(), "PYTHONPATH": str(ROOT)}
    for cmd, words in ((["stages.fetch", "--offline"], "put cifar-10-python.tar.gz (from https://"),
                       (["stages.prepare"], "dvc repro fetch")):
        r = subprocess.run([sys.executable, "-m", *cmd], cwd=tmp_path, env=e, capture_output=True, text=True,
                           timeout=120)
        last = r.stderr.strip().splitlines()[-1]
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert last.startswith("error: source 'torchvision:CIFAR10' is not in data/torchvision") and words in last
    assert not (tmp_path / "torchvision:CIFAR10").exists() and not (tmp_path / "data/prepared").exists()
