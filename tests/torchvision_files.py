"""Small datasets in torchvision's on-disk formats, written by the tests (no download): MNIST's idx files,
CIFAR's pickled batches and SVHN's .mat files, with patterned pixels (no two images alike) and labels 0..9 in
turn."""
from __future__ import annotations

import gzip
import hashlib
import pickle
import struct
from pathlib import Path

import numpy as np


def pixels(n: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """n distinct uint8 images: a bright square whose place and size follow the index, over noise."""
    rng = np.random.default_rng(seed)
    out = rng.integers(0, 60, (n, *shape), dtype=np.uint8)
    h, w = shape[:2]
    for i in range(n):
        side = 6 + i % 10
        top, left = (3 * i) % (h - side), (7 * i) % (w - side)
        out[i, top:top + side, left:left + side] = 200 + i % 50
    return out


def idx_bytes(a: np.ndarray) -> bytes:
    """MNIST's idx format: magic (0, 0, 0x08 = ubyte, ndim), the sizes as big-endian int32, the bytes."""
    return struct.pack(">I", 0x800 + a.ndim) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()


def write_mnist(root: Path, name: str = "FashionMNIST", n_train: int = 60, n_test: int = 20,
                gz: bool = False) -> dict[str, str]:
    """root/<name>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte (or the .gz archives, as downloaded).
    -> {file name: md5}, what a test patches into the class's `resources` when it uses the archives."""
    raw = Path(root) / name / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    md5s = {}
    for prefix, n, seed in (("train", n_train, 1), ("t10k", n_test, 2)):
        images = pixels(n, (28, 28), seed)
        labels = (np.arange(n) % 10).astype(np.uint8)
        for kind, a in (("images-idx3", images), ("labels-idx1", labels)):
            data, fname = idx_bytes(a), f"{prefix}-{kind}-ubyte"
            if gz:
                data, fname = gzip.compress(data, mtime=0), fname + ".gz"
            (raw / fname).write_bytes(data)
            md5s[fname] = hashlib.md5(data).hexdigest()
    return md5s


def write_cifar10(root: Path, per_batch: int = 12) -> dict[str, str]:
    """root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta} -> {file name: md5}: CIFAR10 checks
    every file's md5 against its class lists, which a test patches with these."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    md5s = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for k, fname in enumerate(names):
        images = pixels(per_batch, (32, 32, 3), 10 + k)   # HWC, stored as the CHW rows CIFAR's files hold
        batch = {"data": images.transpose(0, 3, 1, 2).reshape(per_batch, -1),
                 "labels": [int(i % 10) for i in range(per_batch)]}
        md5s[fname] = _pickle(folder / fname, batch)
    md5s["batches.meta"] = _pickle(folder / "batches.meta", {"label_names": [f"class{i}" for i in range(10)]})
    return md5s


def _pickle(path: Path, obj) -> str:
    data = pickle.dumps(obj, protocol=2)
    path.write_bytes(data)
    return hashlib.md5(data).hexdigest()


def patch_cifar10_md5s(monkeypatch, md5s: dict[str, str]):
    from torchvision.datasets import CIFAR10

    monkeypatch.setattr(CIFAR10, "train_list", [[f, md5s[f]] for f, _ in CIFAR10.train_list])
    monkeypatch.setattr(CIFAR10, "test_list", [[f, md5s[f]] for f, _ in CIFAR10.test_list])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5s["batches.meta"]})


def write_svhn(root: Path, sizes=(("train", 15), ("test", 6), ("extra", 9))) -> dict[str, str]:
    """root/{train,test,extra}_32x32.mat as SVHN's files hold them (X: 32x32x3xN, y: 1..10, 10 for the digit 0)
    -> {split: md5}, what a test patches into SVHN.split_list."""
    from scipy.io import savemat

    md5s = {}
    for k, (split, n) in enumerate(sizes):
        path = Path(root) / f"{split}_32x32.mat"
        path.parent.mkdir(parents=True, exist_ok=True)
        savemat(path, {"X": pixels(n, (32, 32, 3), 20 + k).transpose(1, 2, 3, 0),
                       "y": (np.arange(n) % 10 + 1).astype(np.uint8)[:, None]})
        md5s[split] = hashlib.md5(path.read_bytes()).hexdigest()
    return md5s


def patch_svhn_md5s(monkeypatch, md5s: dict[str, str]):
    from torchvision.datasets import SVHN

    monkeypatch.setattr(SVHN, "split_list", {s: [url, name, md5s[s]] for s, (url, name, _) in SVHN.split_list.items()})
