"""`source: torchvision:<Name>`: a dataset torchvision knows, read from torchvision's own files in `torchvision_root`.

The fetch stage makes the files be there (`fetch`: read as they are when present, offline; else downloaded once
by torchvision) and writes the receipt (`receipt`: the dataset's raw files and their sha256) that prepare's
`${source}` dep hashes; why it lies at `./torchvision:<Name>` is told once, in dvc.yaml's fetch stage. The
prepare stage reads every split through torchvision (`records`): one pool, split again by content hash like
the files of a folder, each image's label kept.

A dataset is one line of DATASETS: its torchvision class and the splits that class has. Where its files lie
(and so what to put where when offline) follows from the class's own lists of files, by its FAMILY.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from tqdm import tqdm

from .errors import UserError, brief
from .files import atomic_write_text, sha256_of
from .images import prepared_array

PREFIX = "torchvision:"
DOWNLOAD_TIMEOUT_S = 60   # per socket operation: no network is an error in a minute, not a hang
TRAIN_TEST = {"train": {"train": True}, "test": {"train": False}}   # the MNIST family's and CIFAR's splits


class SourceError(UserError, RuntimeError):
    """A torchvision source that cannot be read or fetched; the message says which files to put where."""


class Missing(SourceError):
    """The dataset's files are not in the root (as opposed to there but damaged)."""


@dataclass(frozen=True)
class Dataset:
    name: str                    # torchvision's class name, as the source spells it
    splits: dict[str, dict]      # every split torchvision has -> the class's keyword arguments for it
    family: str                  # how its files lie: mnist, cifar or svhn (FAMILIES)
    class_names: tuple[str, ...] = ()   # for a class without `classes` (SVHN)

    @property
    def cls(self):
        import torchvision.datasets

        return getattr(torchvision.datasets, self.name)


DATASETS = {d.name: d for d in (
    Dataset("MNIST", TRAIN_TEST, "mnist"),
    Dataset("FashionMNIST", TRAIN_TEST, "mnist"),
    Dataset("KMNIST", TRAIN_TEST, "mnist"),
    Dataset("CIFAR10", TRAIN_TEST, "cifar"),
    Dataset("CIFAR100", TRAIN_TEST, "cifar"),
    Dataset("SVHN", {s: {"split": s} for s in ("train", "test", "extra")}, "svhn", tuple("0123456789")),
)}


# ---- where each family's files lie: (the files read, relative to the root; what to put where) ----

def _mnist_files(d: Dataset) -> tuple[list[str], str]:
    archives = [name for name, _ in d.cls.resources]
    return ([f"{d.name}/raw/{PurePosixPath(a).stem}" for a in archives],
            f"put {', '.join(archives)} (from {d.cls.mirrors[0]}; or the same unpacked) in {{root}}/{d.name}/raw/")


def _cifar_files(d: Dataset) -> tuple[list[str], str]:
    c = d.cls
    names = [f for f, _ in c.train_list + c.test_list] + [c.meta["filename"]]
    return ([f"{c.base_folder}/{f}" for f in names],
            f"put {c.filename} (from {c.url}; or the folder {c.base_folder}/ it unpacks to) in {{root}}/")


def _svhn_files(d: Dataset) -> tuple[list[str], str]:
    listed = [d.cls.split_list[kw["split"]] for kw in d.splits.values()]
    return ([name for _, name, _ in listed],
            f"put {', '.join(name for _, name, _ in listed)} (from {listed[0][0].rsplit('/', 1)[0]}/) in {{root}}/")


FAMILIES = {"mnist": _mnist_files, "cifar": _cifar_files, "svhn": _svhn_files}


def unknown(source: str) -> str | None:
    """What is wrong with a `torchvision:<Name>` source whose name is not in DATASETS; None when it is."""
    name = source.removeprefix(PREFIX)
    if name in DATASETS:
        return None
    import difflib

    by_lower = {n.lower(): n for n in DATASETS}
    close = [by_lower[name.lower()]] if name.lower() in by_lower else difflib.get_close_matches(name, DATASETS, n=1)
    return (f"names a torchvision dataset prepare does not read (choose from {', '.join(DATASETS)})"
            + (f"; did you mean {PREFIX}{close[0]}?" if close else ""))


def parse(source: str) -> Dataset | None:
    """The dataset a `source` value names, None for a path; SourceError for an unknown name."""
    if not source.startswith(PREFIX):
        return None
    if why := unknown(source):
        raise SourceError(f"source '{source}' {why}")
    return DATASETS[source.removeprefix(PREFIX)]


def raw_files(d: Dataset, root: Path) -> list[Path]:
    return [Path(root) / f for f in FAMILIES[d.family](d)[0]]


def where_to_put(d: Dataset, root: Path) -> str:
    return FAMILIES[d.family](d)[1].format(root=Path(root).as_posix().rstrip("/") or "/")


def _open(d: Dataset, root: Path, split: str, download: bool = False):
    """torchvision's dataset object for one split. Missing when its files are not in the root (a download=True
    call unpacks archives in place, or downloads); SourceError, naming what to delete, when they do not read."""
    there = all(p.is_file() for p in raw_files(d, root))
    if not there and not download:
        raise Missing(f"source '{PREFIX}{d.name}' is not in {root}: `dvc repro fetch` downloads it (online), or "
                      f"{where_to_put(d, root)}")
    try:
        with contextlib.redirect_stdout(io.StringIO()):   # torchvision prints "Extracting ..." per archive
            return d.cls(root=str(root), download=download, **d.splits[split])
    except Exception as e:  # noqa: BLE001 - a pickle, .mat or idx error, a short read, an md5 mismatch
        if not there:
            raise   # a download that failed: the caller says why
        raise SourceError(f"source '{PREFIX}{d.name}': its files in {root} cannot be read ({brief(e)}): delete "
                          f"{_its_files(d, root)} to download again, or {where_to_put(d, root)}") from None


def _its_files(d: Dataset, root: Path) -> str:
    """The dataset's folder in the root (MNIST's and CIFAR's), else its files (SVHN's lie in the root itself)."""
    paths = raw_files(d, root)
    folders = {p.parent for p in paths}
    if len(folders) == 1 and Path(root) not in folders:
        return f"{folders.pop().as_posix()}/"
    return ", ".join(p.as_posix() for p in paths)


@contextlib.contextmanager
def _socket_timeout(seconds: float):
    before = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(before)


@contextlib.contextmanager
def _no_network():
    """torchvision's download steps with every URL refused: archives in place are unpacked, nothing is fetched."""
    import urllib.error
    import urllib.request

    def refuse(*_, **__):
        raise urllib.error.URLError("offline: nothing is downloaded")
    saved, urllib.request.urlopen = urllib.request.urlopen, refuse
    try:
        yield
    finally:
        urllib.request.urlopen = saved


def resolve_root(value: str) -> Path:
    """torchvision_root as a path. A relative one is the project's: in an experiment that DVC runs in a
    temporary copy of the workspace (`dvc exp run --queue` or `--temp`: .dvc/tmp/exps/<tmp>/), the workspace's,
    so that queued experiments read the files already there instead of each downloading its own."""
    root = Path(value).expanduser()
    if root.is_absolute():
        return root
    parts = Path.cwd().parts
    for i in range(len(parts) - 3):
        if parts[i:i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i]) / root
    return root


@contextlib.contextmanager
def _only_fetch(root: Path, d: Dataset):
    """One download of a dataset at a time (queued experiments start together): a blocking flock in the root,
    taken only when something is missing (a complete root may be read-only)."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / f".fetch-{d.name}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def fetch(d: Dataset, root: Path, download: bool = True) -> dict:
    """Make every split's files be in `root` and read (as they are when present; archives in place unpacked;
    else, when `download`, downloaded by torchvision) and return the receipt: the files and their sha256."""
    root = Path(root)
    try:
        for split in d.splits:
            _open(d, root, split)
    except Missing:
        with _only_fetch(root, d):
            _download(d, root, online=download)
    return receipt(d, root)


def _download(d: Dataset, root: Path, online: bool) -> None:
    """Every split through torchvision's download step (which skips what is there and checks what it fetches);
    each network operation times out after DOWNLOAD_TIMEOUT_S, so no network is an error, not a hang."""
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S) if online else _no_network():
            for split in d.splits:
                _open(d, root, split, download=True)
    except SourceError:
        raise
    except Exception as e:  # noqa: BLE001 - URLError, timeouts, HTTP errors, a corrupted download
        how = f"and could not be downloaded ({_why(e)})" if online else "(offline: nothing downloaded)"
        raise Missing(f"source '{PREFIX}{d.name}' is not in {root} {how}: {where_to_put(d, root)}") from None


def _why(e: BaseException) -> str:
    """A failed download's reason in a few words: MNIST's error lists each mirror's; the last is the one to show."""
    text = " ".join(str(e).split())
    return text.rsplit("got: ", 1)[1][:200] if "got: " in text else brief(e, 200)


def receipt(d: Dataset, root: Path) -> dict:
    """What the source is, as DVC should track it: the dataset's raw files (under `root`) and their sha256."""
    return {"source": f"{PREFIX}{d.name}",
            "files": {p.relative_to(root).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256_of(p)}
                      for p in raw_files(d, root)}}


def write_receipt(path: Path, content: dict) -> None:
    atomic_write_text(path, json.dumps(content, indent=1) + "\n")


def pixels_digest(pixels: np.ndarray) -> str:
    """The content hash of one image as torchvision gives it: its shape and its uint8 pixels."""
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    return hashlib.sha256(repr(pixels.shape).encode() + pixels.tobytes()).hexdigest()


class Source:
    """A torchvision dataset as prepare's source: `records` yields what decoding a folder's files yields."""

    def __init__(self, dataset: Dataset, root: Path):
        self.dataset, self.root = dataset, Path(root)
        self.labels: list[str] | None = None   # the class names, once read

    def __str__(self) -> str:
        return f"{PREFIX}{self.dataset.name}"

    def records(self, settings, progress: bool = True):
        """(name, sha256, uint8 (C, H, W) array, None, label) of every image of every split, in order; the name
        is '<split>/<index>'. The same crop key as a file's: the seed and the content hash."""
        s = settings
        opened = {split: _open(self.dataset, self.root, split) for split in self.dataset.splits}
        self.labels = list(getattr(next(iter(opened.values())), "classes", None) or self.dataset.class_names) or None
        with tqdm(total=sum(map(len, opened.values())), desc=f"read {self}", unit="img", disable=not progress,
                  dynamic_ncols=True) as bar:
            for split, ds in opened.items():
                width = len(str(len(ds) - 1))
                for i in range(len(ds)):
                    im, label = ds[i]
                    digest = pixels_digest(np.asarray(im))
                    arr = prepared_array(im, s.channels, s.image_size, s.resize, s.background, s.crop_fraction,
                                         f"{s.seed}:{digest}")
                    bar.update()
                    yield f"{split}/{i:0{width}d}", digest, arr, None, int(label)
