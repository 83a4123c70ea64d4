"""Turn a folder or .zip of images into train/val/test arrays plus a manifest.

The split of a file depends only on its content hash, so adding files never moves the ones
already there; exact duplicates (same bytes) are kept once.
"""
from __future__ import annotations

import hashlib
import json
import os
import zipfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from tqdm import tqdm

from .errors import UserError
from .files import atomic_write, atomic_write_bytes
from .images import OS_DEBRIS, BadImage, decode

SPLITS = ("train", "val", "test")


class PrepareError(UserError, RuntimeError):
    """The prepare stage cannot produce a usable dataset; the message says why."""


@dataclass(frozen=True)
class Settings:
    image_size: int
    channels: int
    resize: str
    background: str
    max_image_pixels: int


def _ignored(name: str) -> bool:
    parts = PurePosixPath(name).parts
    return any(p.startswith(".") or p == "__MACOSX" for p in parts) or parts[-1].lower() in OS_DEBRIS


def list_source(source: Path) -> list[str]:
    """Relative POSIX names of every candidate file under a folder or inside a .zip, sorted."""
    if not source.exists():
        raise PrepareError(f"source '{source}' does not exist")
    if source.is_dir():
        names = []
        for root, dirs, files in os.walk(source, followlinks=True):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for f in files:
                rel = Path(root, f).relative_to(source).as_posix()
                if not _ignored(rel):
                    names.append(rel)
    elif zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as z:
            names = [i.filename for i in z.infolist() if not i.is_dir() and not _ignored(i.filename)]
    else:
        raise PrepareError(f"source '{source}' is neither a folder nor a .zip archive")
    if not names:
        raise PrepareError(f"source '{source}' contains no files")
    return sorted(names)


# Each worker process opens the zip once instead of once per file.
_zip: zipfile.ZipFile | None = None


def _init_worker(source: str):
    global _zip
    _zip = zipfile.ZipFile(source) if not os.path.isdir(source) else None


def _read(source: str, name: str) -> bytes:
    if _zip is not None:
        return _zip.read(name)
    with open(os.path.join(source, name), "rb") as f:
        return f.read()


def _load_one(args):
    source, name, s = args
    try:
        data = _read(source, name)
    except Exception as e:  # noqa: BLE001 - OSError, or a corrupt/encrypted zip member (BadZipFile, zlib.error, ...)
        return name, None, None, f"unreadable: {e}"
    digest = hashlib.sha256(data).hexdigest()
    try:
        arr = decode(data, PurePosixPath(name).suffix, s.channels, s.image_size, s.resize, s.background,
                     s.max_image_pixels)
    except BadImage as e:
        return name, digest, None, str(e)
    return name, digest, arr, None


def split_of(digest: str, val_fraction: float, test_fraction: float) -> str:
    """Deterministic split from the first 64 bits of the content hash."""
    u = int(digest[:16], 16) / 2.0**64
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


def load_images(source: Path, settings: Settings, workers: int | None = None, progress: bool = True):
    """Decode every file with all cores. Yields (name, sha256 or None, array or None, reason or None) in name order."""
    names = list_source(source)
    workers = workers or os.cpu_count() or 1
    jobs = [(str(source), n, settings) for n in names]
    bar = tqdm(total=len(jobs), desc="decode", unit="img", disable=not progress, dynamic_ncols=True)
    try:
        if workers == 1:
            _init_worker(str(source))
            results = map(_load_one, jobs)
            for r in results:
                bar.update()
                yield r
        else:
            with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(str(source),)) as pool:
                for r in pool.map(_load_one, jobs, chunksize=max(1, min(64, len(jobs) // (workers * 8) or 1))):
                    bar.update()
                    yield r
    finally:
        bar.close()


def prepare(source: Path, out_dir: Path, settings: Settings, val_fraction: float, test_fraction: float,
            max_skipped_fraction: float, params: dict, workers: int | None = None, progress: bool = True) -> dict:
    """Decode, deduplicate and split `source`; write {train,val,test}.npy and manifest.json to `out_dir`."""
    rows: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    files: dict[str, dict] = {}
    skipped: list[dict] = []
    duplicates: list[dict] = []
    first_of: dict[str, str] = {}
    for name, digest, arr, reason in load_images(source, settings, workers, progress):
        if arr is None:
            skipped.append({"path": name, "reason": reason})
            continue
        if digest in first_of:
            duplicates.append({"path": name, "duplicate_of": first_of[digest]})
            continue
        first_of[digest] = name
        split = split_of(digest, val_fraction, test_fraction)
        files[name] = {"split": split, "row": len(rows[split]), "sha256": digest}
        rows[split].append(arr)

    total = len(files) + len(skipped) + len(duplicates)
    if not files:
        reasons = "; ".join(f"{s['path']}: {s['reason']}" for s in skipped[:5])
        raise PrepareError(f"no usable image in source '{source}' ({len(skipped)} skipped: {reasons})")
    if len(skipped) / total > max_skipped_fraction:
        reasons = "; ".join(f"{s['path']}: {s['reason']}" for s in skipped[:5])
        raise PrepareError(
            f"{len(skipped)} of {total} files in '{source}' are unusable, more than max_skipped_fraction="
            f"{max_skipped_fraction}; first ones: {reasons}")

    shape = (settings.channels, settings.image_size, settings.image_size)
    out_dir.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        arr = np.stack(rows[split]) if rows[split] else np.zeros((0,) + shape, np.uint8)
        atomic_write(out_dir / f"{split}.npy", lambda f, a=arr: np.save(f, a, allow_pickle=False))
    manifest = {
        "counts": {**{s: len(rows[s]) for s in SPLITS}, "duplicates": len(duplicates), "skipped": len(skipped)},
        "shape": list(shape),
        "params": params,
        "files": files,
        "duplicates": duplicates,
        "skipped": skipped,
    }
    atomic_write_bytes(out_dir / "manifest.json", json.dumps(manifest, indent=1, ensure_ascii=False).encode())
    return manifest


def load_split(prepared: Path, split: str) -> np.ndarray:
    return np.load(prepared / f"{split}.npy", allow_pickle=False)
