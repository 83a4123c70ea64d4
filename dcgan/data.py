"""Turn a folder or .zip of images (or a torchvision dataset: torchvision_source.py) into train/val/test arrays
plus a manifest.

The split of a file depends only on its content hash, so adding files never moves the ones
already there; exact duplicates (same bytes) are kept once.

Memory stays flat however many images there are: each decoded image (a small array from a worker
process) is appended to its split's .npy file as soon as it arrives, so no list of images and no
stacked copy is ever held. Every output is written under a temporary name next to the final one and
swapped in at the end, all or none (_swap_in): a failed or killed run leaves the previous outputs as
they were.
"""
from __future__ import annotations

import bz2
import copy
import hashlib
import io
import json
import os
import stat
import tempfile
import zipfile
import zlib
from collections import deque
from contextlib import closing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from itertools import islice
from pathlib import Path, PurePosixPath

import numpy as np
from numpy.lib import format as npy_format
from tqdm import tqdm

from .cpus import usable_cpus
from .errors import UserError, brief
from .files import atomic_write
from .images import OS_DEBRIS, BadImage, decode

SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"
OUTPUTS = tuple(f"{s}.npy" for s in SPLITS) + (MANIFEST,)  # in the order they are swapped in
JOURNAL = ".prepare-swap.json"  # what a swap of the outputs is replacing, while it runs (_swap_in)
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
    crop_fraction: float | None = None   # resize: random (the param's value)
    seed: int = 0                        # resize: random: with each file's content hash, where its crop falls


def _ignored(name: str) -> bool:
    parts = [p for p in name.split("/") if p not in ("", ".", "..")]
    return (any(p.startswith(".") or p == "__MACOSX" for p in parts)
            or bool(parts) and parts[-1].lower() in OS_DEBRIS)


def shown(name: str) -> str:
    """A file name as the manifest and messages write it: always valid UTF-8. A Linux file name can hold
    bytes that are not UTF-8 (Python keeps them as lone surrogates, which no UTF-8 writer accepts); they
    are written as \\xNN."""
    try:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that surrogateescape did not make
        return name.encode("utf-8", "backslashreplace").decode("utf-8")


def list_source(source: Path) -> list[str]:
    """Relative POSIX names of every candidate file under a folder or inside a .zip, sorted."""
    return _scan(Path(source))[0]


def _scan(source: Path) -> tuple[list[str], list[dict]]:
    """The candidate files of a folder or .zip (sorted relative POSIX names), and the folders or zip members
    skipped while listing them, as manifest `skipped` entries."""
    try:
        st = os.stat(source)
    except FileNotFoundError:
        raise PrepareError(f"source '{source}' does not exist") from None
    except OSError as e:
        raise PrepareError(f"source '{source}' cannot be read: {e.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        names, skipped = _walk(source)
    elif stat.S_ISREG(st.st_mode):  # never open a FIFO or a device: reading one can wait forever
        with _open_zip(source) as z:
            members, skipped = _zip_members(z)
        names = list(members)
    else:
        raise PrepareError(f"source '{source}' is neither a folder nor a .zip archive")
    if not names and not skipped:
        raise PrepareError(f"source '{source}' contains no files")
    return sorted(names), skipped


def _walk(source: Path) -> tuple[list[str], list[dict]]:
    """Every file under `source`, and the folders that could not be listed.

    Links are followed, to files and to folders, inside the source or out of it. Each real folder is walked
    once (the first name met, in name order, is the one used), and a folder link to a folder on its own path
    (`ln -s . loop`, `ln -s .. up`) is not followed: either would walk the same files again, without end."""
    names, skipped = [], []
    root = os.fspath(source)
    st = os.stat(root)
    seen = {(st.st_dev, st.st_ino)}
    stack = [("", (os.path.realpath(root),))]  # (folder relative to root, real paths of the folders down to it)
    while stack:
        rel, chain = stack.pop()
        try:
            with os.scandir(os.path.join(root, rel)) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            if not rel:
                raise PrepareError(f"source '{source}' cannot be read: {e.strerror}") from None
            skipped.append({"path": shown(rel), "reason": f"unreadable folder: {e.strerror}"})
            continue
        subdirs = []
        for e in entries:
            name = rel + e.name
            if _ignored(name):
                continue
            try:
                is_dir = e.is_dir()  # follows a link
                st = e.stat() if is_dir else None
            except OSError:  # a link loop (ELOOP), a vanished entry: the worker reports it as a file
                is_dir = False
            if not is_dir:
                names.append(name)  # a FIFO or a device too: the worker skips it without opening it
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            if e.is_symlink():
                real = os.path.realpath(e.path)
                if any(r == real or r.startswith(real.rstrip(os.sep) + os.sep) for r in chain):
                    continue  # a link to a folder this one is inside of
            else:
                real = os.path.join(chain[-1], e.name)
            seen.add((st.st_dev, st.st_ino))
            subdirs.append((name + "/", chain + (real,)))
        stack.extend(reversed(subdirs))
    return names, skipped


def _open_zip(source: Path) -> zipfile.ZipFile:
    """The archive, or a PrepareError saying in one line why it cannot be read."""
    try:
        z = zipfile.ZipFile(source)
        infos, size = z.infolist(), os.fstat(z.fp.fileno()).st_size
        if infos and not any(0 <= i.header_offset < size for i in infos):
            z.close()  # a directory whose offsets are all wrong: not one member can be found
            raise zipfile.BadZipFile("its directory places every member outside the file")
        return z
    except OSError as e:
        raise PrepareError(f"source '{source}' cannot be read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise PrepareError(f"source '{source}' is a damaged .zip archive: the member name {e.object[:80]!r} "
                           "is flagged as UTF-8 but is not UTF-8") from None
    except Exception as e:  # noqa: BLE001 - BadZipFile, and ValueError, struct.error, ... for crafted headers
        if not zipfile.is_zipfile(source):  # no end-of-archive record: not a zip, or one cut short
            raise PrepareError(f"source '{source}' is neither a folder nor a .zip archive (no zip directory at "
                               "its end: not a zip file, or one cut short)") from None
        raise PrepareError(f"source '{source}' is a damaged .zip archive: {brief(e)}") from None


def _zip_members(z: zipfile.ZipFile) -> tuple[dict[str, zipfile.ZipInfo], list[dict]]:
    """The members to read (name -> entry) and those skipped for their name. Nothing is extracted, so a
    name is only a label: absolute paths, '..' and backslashes are read like any other name."""
    members, skipped = {}, []
    for info in z.infolist():
        name = info.filename
        if name.endswith("/") or _ignored(name):
            continue
        if not name or "\0" in info.orig_filename:  # zipfile cuts a name at NUL: the rest would be lost
            skipped.append({"path": shown(info.orig_filename).replace("\0", "\\x00"),
                            "reason": "unusable name in the archive (empty, or holds a NUL byte)"})
        elif name in members:
            skipped.append({"path": shown(name), "reason": "a second member of the same name in the archive "
                                                           "(only the first is read)"})
        else:
            members[name] = info
    return members, skipped


# ---- one file -> (name, sha256, array, reason), in a worker process --------------------------------

# Set once per worker process by _init_worker: the source, the settings, and the zip opened once.
_source: str = ""
_settings: Settings | None = None
_zip: zipfile.ZipFile | None = None
_members: dict[str, zipfile.ZipInfo] = {}


def _init_worker(source: str, settings: Settings):
    global _source, _settings, _zip, _members
    _source, _settings = source, settings
    _zip = zipfile.ZipFile(source) if not os.path.isdir(source) else None
    _members = _zip_members(_zip)[0] if _zip is not None else {}


class _Skip(Exception):
    """A file skipped before (or while) reading it; str(e) is the reason."""


def _too_large(size: int, limit: int) -> _Skip:
    return _Skip(f"file too large: {size} bytes is over max_file_bytes={limit}")


def _kind(mode: int) -> str:
    return {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a device",
            stat.S_IFBLK: "a device", stat.S_IFDIR: "a folder"}.get(stat.S_IFMT(mode), "not a file")


def _open_nonblocking(path, flags):
    # a FIFO put in the file's place after the stat below would block a plain open forever
    return os.open(path, flags | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))


def _read(name: str, limit: int) -> bytes:
    """The bytes of one file or zip member; its size is judged (stat / zip header) before reading."""
    if _zip is not None:
        return _read_member(_members[name], limit)
    path = os.path.join(_source, name)
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise _Skip(f"unreadable: not a regular file ({_kind(st.st_mode)})")
        if st.st_size > limit:
            raise _too_large(st.st_size, limit)
        with open(path, "rb", opener=_open_nonblocking) as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise _Skip(f"unreadable: not a regular file ({_kind(st.st_mode)})")
            data = f.read(st.st_size + 1)  # (not read(limit + 1): that allocates `limit` bytes every time)
            if len(data) > st.st_size:  # it grew after the stat: read on, but never past the limit
                data += f.read(limit + 1 - len(data))
    except OSError as e:  # a dangling link, a link loop, permission denied, an I/O error
        raise _Skip(f"unreadable: {e.strerror or brief(e)}") from None
    if len(data) > limit:
        raise _too_large(len(data), limit)
    return data


def _read_member(info: zipfile.ZipInfo, limit: int) -> bytes:
    """A zip member's bytes, never more than its header's size (<= limit) held, whatever the archive says.

    zipfile stops at the header's size and then checks the CRC, but decompresses one read's input at once:
    deflate is bounded by the size asked for, LZMA only by the input (so it is read 4 KiB at a time: at most
    a few tens of MB out), bzip2 by nothing (a few hundred bytes can become gigabytes: _read_bzip2)."""
    if info.file_size > limit:
        raise _too_large(info.file_size, limit)
    if info.flag_bits & 0x1:
        raise _Skip("unreadable: encrypted (needs a password)")
    if info.compress_type == zipfile.ZIP_BZIP2:
        return _read_bzip2(info)
    step = 1 << 12 if info.compress_type == zipfile.ZIP_LZMA else 1 << 16
    data = bytearray()
    with _zip.open(info) as f:
        while block := f.read(step):
            data += block
    return bytes(data)


def _read_bzip2(info: zipfile.ZipInfo) -> bytes:
    """A bzip2 member, decompressed here at most to its declared size plus one byte."""
    raw = copy.copy(info)  # the same member as stored bytes, with no CRC check: the compressed data
    raw.compress_type, raw.file_size, raw.CRC = zipfile.ZIP_STORED, info.compress_size, None
    d, out = bz2.BZ2Decompressor(), bytearray()
    with _zip.open(raw) as f:
        while not d.eof and len(out) <= info.file_size:
            block = f.read(1 << 16) if d.needs_input else b""
            if d.needs_input and not block:
                break
            out += d.decompress(block, info.file_size + 1 - len(out))
    if len(out) != info.file_size or zlib.crc32(out) != info.CRC:
        raise zipfile.BadZipFile(f"Bad CRC-32 or size for file {info.filename!r}")
    return bytes(out)


def _load_one(name: str):
    s = _settings
    try:
        data = _read(name, s.max_file_bytes)
    except _Skip as e:
        return name, None, None, str(e)
    except OSError as e:  # a zip member the directory places outside the file, an I/O error
        return name, None, None, f"unreadable: {e.strerror or brief(e)}"
    except Exception as e:  # noqa: BLE001 - a corrupt zip member (BadZipFile, zlib.error, EOFError, ...)
        return name, None, None, f"unreadable: {brief(e)}"
    digest = hashlib.sha256(data).hexdigest()
    try:
        arr = decode(data, PurePosixPath(name).suffix, s.channels, s.image_size, s.resize, s.background,
                     s.max_image_pixels, s.crop_fraction, f"{s.seed}:{digest}")
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
    workers = max(1, min(workers or usable_cpus(), len(names)))  # affinity and cgroup quota, not cpu_count
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
            pending = deque((pool.submit(_load_chunk, c), c) for _, c in zip(range(2 * workers + 2), todo))
            try:
                while pending:
                    future, chunk = pending.popleft()
                    try:
                        results = future.result()
                    except BrokenProcessPool:  # killed (out of memory?) or crashed inside a decoder
                        suspects = chunk + [n for _, c in pending for n in c]  # the files not yet decoded
                        raise PrepareError(
                            f"a decoding process of prepare died (out of memory? lower max_image_pixels or use "
                            f"--workers 1) while reading one of {len(suspects)} files: "
                            + ", ".join(shown(n) for n in suspects[:10]) + (" ..." if len(suspects) > 10 else "")
                        ) from None
                    nxt = next(todo, None)
                    if nxt is not None:
                        pending.append((pool.submit(_load_chunk, nxt), nxt))
                    for r in results:
                        bar.update()
                        yield r
            finally:
                for f, _ in pending:
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


# ---- putting the outputs in place, all or none ---------------------------------------------------

def _backup(out_dir: Path, name: str) -> Path:
    return out_dir / f".{name}.old"


def _swap_in(out_dir: Path, staged: dict[str, str]) -> None:
    """Put the staged files (final name -> temporary path in `out_dir`, the manifest last) in place of the
    outputs: all of them, or none.

    A rename is atomic for one file only, so a journal lists the swap first; then the old manifest is renamed
    to a backup, then each old array, each new array taking its place, and the new manifest last. So while
    the journal exists, a manifest in place means committed: a failure before that puts the old outputs back
    (here, or in the next run's _recover after a kill), after it only backups and the journal are left."""
    assert tuple(staged) == OUTPUTS
    had = [name for name in staged if (out_dir / name).exists()]
    journal = {"staged": {name: os.path.basename(tmp) for name, tmp in staged.items()}, "had": had}
    atomic_write(out_dir / JOURNAL, lambda f: f.write(json.dumps(journal).encode()))
    try:
        if MANIFEST in had:
            os.replace(out_dir / MANIFEST, _backup(out_dir, MANIFEST))
        for name, tmp in staged.items():
            if name in had and name != MANIFEST:
                os.replace(out_dir / name, _backup(out_dir, name))
            os.replace(tmp, out_dir / name)
    except BaseException:
        try:
            _roll_back(out_dir, journal)
        except OSError:
            pass  # the journal stays: the next run puts the old outputs back
        raise
    _clean_up(out_dir, journal)


def _roll_back(out_dir: Path, journal: dict) -> None:
    """Undo an uncommitted swap: each backup back in place, each output that did not exist before removed;
    the manifest last (in `staged` order), so that it is back only once everything else is."""
    for name, tmp in journal["staged"].items():
        final, backup = out_dir / name, _backup(out_dir, name)
        if backup.exists():
            os.replace(backup, final)
        elif name not in journal["had"]:
            final.unlink(missing_ok=True)  # new; (an old file not yet backed up was never touched)
        (out_dir / tmp).unlink(missing_ok=True)
    (out_dir / JOURNAL).unlink(missing_ok=True)


def _clean_up(out_dir: Path, journal: dict) -> None:
    """After the commit (or before the first rename): delete the backups, any staged file left, the journal."""
    try:
        for name in journal["had"]:
            _backup(out_dir, name).unlink(missing_ok=True)
        for tmp in journal["staged"].values():
            (out_dir / tmp).unlink(missing_ok=True)
        (out_dir / JOURNAL).unlink(missing_ok=True)
    except OSError:
        pass  # the new outputs are in place; the next run deletes what is left


def _recover(out_dir: Path) -> None:
    """Finish or undo the swap of a run killed in the middle of it (SIGKILL, power loss, a failed roll-back)."""
    try:
        journal = json.loads((out_dir / JOURNAL).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return
    except ValueError:
        journal = None
    if not (isinstance(journal, dict) and isinstance(journal.get("staged"), dict)
            and list(journal["staged"]) == list(OUTPUTS)
            and isinstance(journal.get("had"), list) and all(h in OUTPUTS for h in journal["had"])
            and all(isinstance(t, str) and t == os.path.basename(t) for t in journal["staged"].values())):
        # not a journal we wrote (its paths are not followed): nothing to go by
        (out_dir / JOURNAL).unlink(missing_ok=True)
        return
    if (out_dir / MANIFEST).exists():  # committed (or not begun: then there is nothing to undo)
        _clean_up(out_dir, journal)
    else:
        _roll_back(out_dir, journal)


def _remove_stale_temporaries(out_dir: Path):
    """Temporary files a killed run left behind in `out_dir` (after _recover has used what it needs)."""
    for name in OUTPUTS + (JOURNAL,):
        for p in out_dir.glob(f".{name}.*.tmp"):
            p.unlink(missing_ok=True)
        _backup(out_dir, name).unlink(missing_ok=True)


def prepare(source, out_dir: Path, settings: Settings, val_fraction: float, test_fraction: float,
            max_skipped_fraction: float, params: dict, workers: int | None = None, progress: bool = True) -> dict:
    """Decode, deduplicate and split `source`; write {train,val,test}.npy and manifest.json to `out_dir`.

    `source`: a folder or .zip (a path), or a dataset that yields its images itself, each with a label
    (torchvision_source.Source: `records(settings, progress)`, `labels`).
    Nothing in `out_dir` changes unless the run succeeds: the outputs are staged under temporary names and
    swapped in at the end (_swap_in)."""
    named = not isinstance(source, (str, os.PathLike))
    source, out_dir = (source if named else Path(source)), Path(out_dir)
    if out_dir.is_dir():
        _recover(out_dir)  # first: even a run that fails puts back what a killed one half replaced
    # skipped: folders and zip members that could not be listed
    names, skipped = ([], []) if named else _scan(source)
    shape = (settings.channels, settings.image_size, settings.image_size)
    files: dict[str, dict] = {}
    duplicates: list[dict] = []
    first_of: dict[str, str] = {}
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(out_dir)
    arrays: dict[str, NpyAppender] = {}
    manifest_tmp = None
    try:
        for split in SPLITS:
            arrays[split] = NpyAppender(out_dir / f"{split}.npy", shape)
        records = (source.records(settings, progress) if named
                   else _unlabelled(_decode_all(source, names, settings, workers, progress)))
        with closing(records) as results:
            for name, digest, arr, reason, label in results:
                path = shown(name)
                if arr is None:
                    skipped.append({"path": path, "reason": reason})
                    continue
                if digest in first_of:
                    duplicates.append({"path": path, "duplicate_of": first_of[digest]})
                    continue
                if path in files:  # two names that differ only in bytes that are not UTF-8 (shown as \xNN)
                    skipped.append({"path": path, "reason": "another file has the same name as shown here"})
                    continue
                first_of[digest] = path
                split = split_of(digest, val_fraction, test_fraction)
                files[path] = {"split": split, "row": arrays[split].rows, "sha256": digest}
                if label is not None:
                    files[path]["label"] = label
                arrays[split].append(arr)
        skipped.sort(key=lambda s: s["path"])

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
            **({"labels": source.labels} if named and source.labels else {}),
            "files": files,
            "duplicates": duplicates,
            "skipped": skipped,
        }
        for a in arrays.values():
            a.finish()
        fd, manifest_tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{MANIFEST}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            _write_json(f, manifest)
        os.chmod(manifest_tmp, 0o644)  # mkstemp makes 0600; these are files to share
        _swap_in(out_dir, dict(zip(OUTPUTS, [arrays[s].tmp for s in SPLITS] + [manifest_tmp])))
    except BaseException:
        for a in arrays.values():
            a.discard()
        if manifest_tmp is not None and os.path.exists(manifest_tmp):
            os.unlink(manifest_tmp)
        if created:
            try:
                out_dir.rmdir()
            except OSError:
                pass
        raise
    return manifest


def _unlabelled(results):
    """A folder's decoded files as records without a label (the 5-tuples a named dataset yields)."""
    with closing(results):
        for r in results:
            yield (*r, None)


def _write_json(f, obj) -> None:
    """json.dumps(obj, indent=1, ensure_ascii=False), streamed: no string of the whole manifest in memory.

    A lone surrogate (a name or param that is not valid text) is written as a \\udcNN escape, never an error."""
    text = io.TextIOWrapper(f, encoding="utf-8", errors="backslashreplace", newline="")
    chunks = json.JSONEncoder(indent=1, ensure_ascii=False).iterencode(obj)
    while batch := list(islice(chunks, 8192)):
        text.write("".join(batch))
    text.flush()
    text.detach()  # leave `f` open for the caller


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
