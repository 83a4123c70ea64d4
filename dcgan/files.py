"""Atomic file writes: a reader (or a run killed half-way) never sees half a file. And a file's sha256."""
from __future__ import annotations

import hashlib
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterator


@contextmanager
def atomic_path(path: Path | str, *, fsync: bool = False) -> Iterator[Path]:
    """For writers that want a file name, not a file (torch.jit's save, torch.onnx.export): a temporary path
    next to `path`, renamed over `path` when the block ends, deleted when it raises (or the process is
    killed before the rename: then `path` is still the previous file, and only a dot-named *.tmp is left).

        with atomic_path(out) as tmp:
            torch.onnx.export(model, args, str(tmp))
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; these are files to share
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write(path: Path | str, write: Callable[[BinaryIO], object], *, fsync: bool = False) -> Path:
    """Call write(f) on a temporary file next to `path`, then rename it over `path` (os.replace is atomic).

    fsync=True also survives power loss, not just a killed process (checkpoints)."""
    with atomic_path(path, fsync=fsync) as tmp, open(tmp, "wb") as f:
        write(f)
    return Path(path)


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: Path | str, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj, path: Path | str) -> Path:
    """torch.save, atomically and fsync'd: a checkpoint or model survives a kill and a power loss."""
    import torch  # here, so that modules writing only text or images don't need torch

    return atomic_write(path, lambda f: torch.save(obj, f), fsync=True)


def sha256_of(path: Path | str) -> str:
    """The hex sha256 of a file's bytes, read in blocks (never the whole file in memory)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
