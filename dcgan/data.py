"""Turn a folder or .zip of images into train/val/test arrays plus a manifest.

The split of a file depends only on its content hash, so adding files never moves the ones
already there; exact duplicates (same bytes) are kept once.

Memory stays flat however many images there are: each decoded image (a small array from a worker
process) is appended to its split's .npy file as soon as it arrives, so no list of images and no
stacked copy is ever held. The .npy files are written under temporary names next to the final
ones and renamed at the end, so a failed or killed run never leaves half an array.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tempfile
import zipfile
from collections import deque
from contextlib import closing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path, PurePosixPath

import numpy as np
from numpy.lib import format as npy_format
from tqdm import tqdm

from .errors import UserError
from .files import atomic_write
from .images import OS_DEBRIS, BadImage, decode

SPLITS = ("train", "val", "test")
DEFAULT_MAX_FILE_BYTES = 256 * 1024 * 1024


class PrepareError(UserError, RuntimeError):
    """The prepare stage cannot produce a usable dataset; the message says why."""


@dataclass(frozen=True)
class Settings:
    image_size: int
    channels: int
    resize: str
    background: str
    max_image_pixels: int
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES


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


# ---- one file -> (name, sha256, array, reason), in a worker process --------------------------------

# Set once per worker process by _init_worker: the source, the settings, and the zip opened once.
_source: str = ""
_settings: Settings | None = None
_zip: zipfile.ZipFile | None = None


def _init_worker(source: str, settings: Settings):
    global _source, _settings, _zip
    _source, _settings = source, settings
    _zip = zipfile.ZipFile(source) if not os.path.isdir(source) else None


class _Skip(Exception):
    """A file skipped before (or while) reading it; str(e) is the reason."""


def _too_large(size: int, limit: int) -> _Skip:
    return _Skip(f"file too large: {size} bytes is over max_file_bytes={limit}")


def _read(name: str, limit: int) -> bytes:
    """The bytes of one file or zip member; its size is judged (stat / zip header) before reading."""
    if _zip is not None:
        info = _zip.getinfo(name)
        if info.file_size > limit:
            raise _too_large(info.file_size, limit)
        return _zip.read(info)  # zipfile never returns more than the header's file_size (and checks the CRC)
    path = os.path.join(_source, name)
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise _Skip("unreadable: not a regular file")
    if st.st_size > limit:
        raise _too_large(st.st_size, limit)
    with open(path, "rb") as f:
        data = f.read(st.st_size + 1)  # (not read(limit + 1): that allocates `limit` bytes every time)
        if len(data) > st.st_size:  # it grew after the stat: read on, but never past the limit
            data += f.read(limit + 1 - len(data))
    if len(data) > limit:
        raise _too_large(len(data), limit)
    return data


def _load_one(name: str):
    s = _settings
    try:
        data = _read(name, s.max_file_bytes)
    except _Skip as e:
        return name, None, None, str(e)
    except Exception as e:  # noqa: BLE001 - OSError, or a corrupt/encrypted zip member (BadZipFile, zlib.error, ...)
        return name, None, None, f"unreadable: {e}"
    digest = hashlib.sha256(data).hexdigest()
    try:
        arr = decode(data, PurePosixPath(name).suffix, s.channels, s.image_size, s.resize, s.background,
                     s.max_image_pixels)
    except BadImage as e:
        return name, digest, None, str(e)
    return name, digest, arr, None


def _load_chunk(names: list[str]) -> list[tuple]:
    return [_load_one(n) for n in names]


def split_of(digest: str, val_fraction: float, test_fraction: float) -> str:
    """Deterministic split from the first 64 bits of the content hash."""
    u = int(digest[:16], 16) / 2.0**64
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


def _decode_all(source: Path, names: list[str], settings: Settings, workers: int | None, progress: bool):
    """(name, sha256 or None, array or None, reason or None) for every name, in order, decoded with all cores.

    Chunks of names go to the pool a few at a time (2 per worker, plus 2), not all at once, so finished
    results cannot pile up in memory when the reader is slower than the workers."""
    workers = max(1, min(workers or os.cpu_count() or 1, len(names)))
    row_bytes = settings.channels * settings.image_size ** 2
    size = max(1, min(64, len(names) // (workers * 8) or 1, (4 << 20) // row_bytes))  # a chunk's arrays: <= 4 MB
    chunks = [names[i:i + size] for i in range(0, len(names), size)]
    bar = tqdm(total=len(names), desc="decode", unit="img", disable=not progress, dynamic_ncols=True)
    try:
        if workers == 1:
            _init_worker(str(source), settings)
            try:
                for chunk in chunks:
                    for r in _load_chunk(chunk):
                        bar.update()
                        yield r
            finally:
                if _zip is not None:
                    _zip.close()
            return
        with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(str(source), settings)) as pool:
            todo = iter(chunks)
            pending = deque(pool.submit(_load_chunk, c) for _, c in zip(range(2 * workers + 2), todo))
            try:
                while pending:
                    results = pending.popleft().result()
                    nxt = next(todo, None)
                    if nxt is not None:
                        pending.append(pool.submit(_load_chunk, nxt))
                    for r in results:
                        bar.update()
                        yield r
            finally:
                for f in pending:
                    f.cancel()
    finally:
        bar.close()


def load_images(source: Path, settings: Settings, workers: int | None = None, progress: bool = True):
    """Decode every file with all cores. Yields (name, sha256 or None, array or None, reason or None) in name order."""
    yield from _decode_all(source, list_source(source), settings, workers, progress)


# ---- writing the arrays --------------------------------------------------------------------------

def _npy_header(shape: tuple[int, ...]) -> bytes:
    """The header np.save writes for a C-ordered uint8 array of `shape` (format version 1.0)."""
    f = io.BytesIO()
    npy_format.write_array_header_1_0(f, {"descr": npy_format.dtype_to_descr(np.dtype(np.uint8)),
                                         "fortran_order": False, "shape": shape})
    return f.getvalue()


class NpyAppender:
    """A uint8 (N, *row_shape) .npy file built one row at a time, with N unknown until the end.

    Rows go to a temporary file next to `path` (plain writes: nothing stays in this process's
    memory); finish() puts the final row count in the header, and the result is byte for byte what
    np.save writes for the same array. numpy pads the header so that the count can grow in place;
    if it ever does not, finish() copies the rows behind a header of the new length."""

    def __init__(self, path: Path, row_shape: tuple[int, ...]):
        self.path, self.row_shape, self.rows = Path(path), tuple(row_shape), 0
        self.row_bytes = int(np.prod(self.row_shape))
        fd, self.tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        self.f = os.fdopen(fd, "wb", buffering=1 << 20)
        self.header_len = self.f.write(_npy_header((0,) + self.row_shape))

    def append(self, row: np.ndarray):
        if row.shape != self.row_shape or row.dtype != np.uint8:
            raise ValueError(f"row {row.dtype} {row.shape} does not fit {self.path.name} (uint8 {self.row_shape})")
        self.f.write(np.ascontiguousarray(row).data)
        self.rows += 1

    def finish(self):
        """Write the final header and close; the file is complete but still under its temporary name."""
        header = _npy_header((self.rows,) + self.row_shape)
        if len(header) == self.header_len:
            self.f.seek(0)
            self.f.write(header)
            self.f.close()
        else:
            self.f.close()
            self._rewrite(header)
        os.chmod(self.tmp, 0o644)  # mkstemp makes 0600; these are files to share

    def _rewrite(self, header: bytes):
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with open(self.tmp, "rb") as src, os.fdopen(fd, "wb") as dst:
                src.seek(self.header_len)
                dst.write(header)
                while block := src.read(1 << 22):
                    dst.write(block)
        except BaseException:
            os.unlink(tmp)
            raise
        os.unlink(self.tmp)
        self.tmp = tmp

    def commit(self):
        os.replace(self.tmp, self.path)

    def discard(self):
        if not self.f.closed:
            self.f.close()
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)


def _remove_stale_temporaries(out_dir: Path):
    """Temporary arrays a killed run (SIGKILL, power loss) left behind in `out_dir`."""
    for split in SPLITS:
        for p in out_dir.glob(f".{split}.npy.*.tmp"):
            p.unlink(missing_ok=True)


def prepare(source: Path, out_dir: Path, settings: Settings, val_fraction: float, test_fraction: float,
            max_skipped_fraction: float, params: dict, workers: int | None = None, progress: bool = True) -> dict:
    """Decode, deduplicate and split `source`; write {train,val,test}.npy and manifest.json to `out_dir`."""
    names = list_source(source)
    shape = (settings.channels, settings.image_size, settings.image_size)
    files: dict[str, dict] = {}
    skipped: list[dict] = []
    duplicates: list[dict] = []
    first_of: dict[str, str] = {}
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(out_dir)
    arrays: dict[str, NpyAppender] = {}
    try:
        for split in SPLITS:
            arrays[split] = NpyAppender(out_dir / f"{split}.npy", shape)
        with closing(_decode_all(source, names, settings, workers, progress)) as results:
            for name, digest, arr, reason in results:
                if arr is None:
                    skipped.append({"path": name, "reason": reason})
                    continue
                if digest in first_of:
                    duplicates.append({"path": name, "duplicate_of": first_of[digest]})
                    continue
                first_of[digest] = name
                split = split_of(digest, val_fraction, test_fraction)
                files[name] = {"split": split, "row": arrays[split].rows, "sha256": digest}
                arrays[split].append(arr)

        total = len(files) + len(skipped) + len(duplicates)
        if not files:
            reasons = "; ".join(f"{s['path']}: {s['reason']}" for s in skipped[:5])
            raise PrepareError(f"no usable image in source '{source}' ({len(skipped)} skipped: {reasons})")
        if len(skipped) / total > max_skipped_fraction:
            reasons = "; ".join(f"{s['path']}: {s['reason']}" for s in skipped[:5])
            raise PrepareError(
                f"{len(skipped)} of {total} files in '{source}' are unusable, more than max_skipped_fraction="
                f"{max_skipped_fraction}; first ones: {reasons}")

        manifest = {
            "counts": {**{s: arrays[s].rows for s in SPLITS}, "duplicates": len(duplicates), "skipped": len(skipped)},
            "shape": list(shape),
            "params": params,
            "files": files,
            "duplicates": duplicates,
            "skipped": skipped,
        }
        for a in arrays.values():
            a.finish()
        # the old manifest goes first: arrays and a manifest on disk always belong together
        (out_dir / "manifest.json").unlink(missing_ok=True)
        for a in arrays.values():
            a.commit()
    except BaseException:
        for a in arrays.values():
            a.discard()
        if created:
            try:
                out_dir.rmdir()
            except OSError:
                pass
        raise
    atomic_write(out_dir / "manifest.json", lambda f: _write_json(f, manifest))
    return manifest


def _write_json(f, obj) -> None:
    """json.dumps(obj, indent=1, ensure_ascii=False), streamed: no string of the whole manifest in memory."""
    text = io.TextIOWrapper(f, encoding="utf-8", newline="")
    chunks = json.JSONEncoder(indent=1, ensure_ascii=False).iterencode(obj)
    while batch := list(islice(chunks, 8192)):
        text.write("".join(batch))
    text.flush()
    text.detach()  # leave `f` open for atomic_write


# ---- reading them --------------------------------------------------------------------------------

def load_split(prepared: Path, split: str) -> np.ndarray:
    """One split as a read-only memory map (uint8 (N, C, H, W)): pages are read from disk as they are used."""
    return load_array(Path(prepared) / f"{split}.npy")


def load_array(path: Path, hint: str = "run `dvc repro prepare`") -> np.ndarray:
    """A prepared .npy file as a read-only memory map of uint8 images (N, C, H, W).

    PrepareError, one line naming the file, when it is missing, not a .npy file, or not uint8 images."""
    path = Path(path)
    if not path.is_file():
        raise PrepareError(f"{path} not found: {hint} first")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - ValueError, EOFError, OSError, ... for a damaged or foreign file
        detail = " ".join(str(e).split()) or type(e).__name__
        raise PrepareError(f"{path} is not a valid .npy file ({detail}): {hint} again") from None
    if not isinstance(arr, np.ndarray):  # np.load gives an NpzFile for a zip archive
        if hasattr(arr, "close"):
            arr.close()
        raise PrepareError(f"{path} is not a .npy array file: {hint} again")
    if arr.dtype != np.uint8 or arr.ndim != 4:
        raise PrepareError(f"{path} holds {arr.dtype} {arr.shape}, not uint8 images (N, C, H, W): {hint} again")
    return arr
