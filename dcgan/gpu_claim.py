"""One GPU per experiment when a queue runs several at once (`dvc queue start -j N` with `device: auto`).

Queued experiments are separate processes in temporary copies of the workspace (.dvc/tmp/exps/...), so the
claim is machine-wide: an exclusive, non-blocking flock on one file per GPU in a shared directory, named by
the GPU's UUID so that processes with different CUDA_VISIBLE_DEVICES agree. The kernel drops a flock when its
process ends, however it ends, so a killed run leaves no stale claim. With more experiments than GPUs the next
ones take slot files of a second round (`<id>.1.lock`, then `.2` ...): they never wait, and the GPUs are
shared evenly.
"""
from __future__ import annotations

import fcntl
import glob
import itertools
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

LOCK_DIR = "DCGAN_GPU_LOCK_DIR"
FAKE_GPUS = "DCGAN_FAKE_GPUS"   # for tests: this many fake GPUs, without touching torch.cuda

_held: list[int] = []   # the claim's open files: never closed, so the claim lasts as long as the process
_claimed: dict[str, int | None] = {}   # lock dir -> the GPU this process claimed there (None: no claim)


def default_lock_dir() -> Path:
    return Path(os.environ.get(LOCK_DIR) or Path(tempfile.gettempdir()) / "dcgan-gpu-claims")


def visible_gpus() -> list[str]:
    """An id per GPU this process sees, in its cuda:i order: the UUID (the index where torch has none)."""
    if FAKE_GPUS in os.environ:
        return [f"fake-gpu-{i}" for i in range(int(os.environ[FAKE_GPUS]))]
    import torch
    if not torch.cuda.is_available():
        return []
    return [str(getattr(torch.cuda.get_device_properties(i), "uuid", "") or i)
            for i in range(torch.cuda.device_count())]


def device_for_run(device_name: str, distributed: bool, log=print) -> torch.device | None:
    """The GPU this run claims when it may choose (`auto` or `cuda`), is one process (torchrun ranks already
    get cuda:LOCAL_RANK) and sees more than one GPU; None otherwise: the caller keeps its device."""
    if device_name not in ("auto", "cuda") or distributed:
        return None
    ids = visible_gpus()
    if len(ids) < 2:
        return None
    lock_dir = str(default_lock_dir())
    if lock_dir not in _claimed:   # one claim per process: a second run in it (a benchmark's loop) keeps its GPU
        _claimed[lock_dir] = claim(len(ids), ids, log=log)
    if _claimed[lock_dir] is None:
        return None
    import torch
    return torch.device("cuda", _claimed[lock_dir])


def stage_device(device_name: str, distributed: bool = False, log=print) -> torch.device:
    """The device a stage runs on: pick_device's choice, and where that is CUDA and the run may choose among
    several GPUs, the one this process claims, made current (CUDA graph capture and the compiler use the
    current device). The train, encoder and evaluate stages of a queued experiment each claim one this way.
    ValueError naming the device, as pick_device, when it is not available."""
    import torch

    from .device import pick_device
    device = pick_device(device_name)
    claimed = device_for_run(device_name, distributed, log) if device.type == "cuda" else None
    if claimed is None:
        return device
    torch.cuda.set_device(claimed)
    return claimed


def claim(count: int, ids: list[str] | None = None, lock_dir: Path | None = None, log=print) -> int | None:
    """Take the first GPU no other process holds, else the least shared one (round robin); return its index.
    None, with one line, when the lock directory cannot be used: training goes on without a claim."""
    ids = ids or [str(i) for i in range(count)]
    folder = lock_dir or default_lock_dir()
    try:
        _make_shared(folder)
        with _one_claimer_at_a_time(folder):
            index, round_ = _take(folder, ids)
            holders = [_holders(folder, gpu) for gpu in ids]   # ours included
    except OSError as e:
        log(f"GPU claim: cannot use {folder} ({e}): no claim, this run takes the default GPU")
        return None
    sharing = holders[index] - 1
    others = ", ".join(f"cuda:{i}" for i, n in enumerate(holders) if n and i != index) or "none"
    with_others = f"{sharing} other" + "s" * (sharing > 1)
    if round_ > 0:
        state = f"all {count} GPUs are held by other experiments: sharing cuda:{index} with {with_others}"
    else:   # a GPU can be shared in round 0 too: its holder left, and one of a later round stayed
        state = f"shared with {with_others}" if sharing else "held by no other experiment"
        state += f" (others hold {others})"
    log(f"device cuda:{index}: GPU {index} of {count}, {state}")
    return index


def _make_shared(folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    try:   # open to every user of the machine; sticky, as /tmp: none can delete another's lock files
        folder.chmod(0o1777)
    except PermissionError:
        pass   # another user's directory: they opened it when they made it


def _open(path: Path) -> int:
    try:   # read-only: flock needs no more, and a lock file made by another user is readable
        return os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


@contextmanager
def _one_claimer_at_a_time(folder: Path):
    """Claimers take turns (a millisecond each), so one counting the holders of a GPU, which briefly locks
    its free slots, never makes another claimer find them held."""
    fd = _open(folder / "claimer.lock")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _slot(folder: Path, gpu: str, round_: int) -> Path:
    return folder / (f"{gpu}.lock" if round_ == 0 else f"{gpu}.{round_}.lock")


def _take(folder: Path, ids: list[str]) -> tuple[int, int]:
    """(index, round) of the first free slot, round by round: the GPUs fill evenly."""
    for round_ in itertools.count():
        for index, gpu in enumerate(ids):
            fd = _open(_slot(folder, gpu, round_))
            if _try_lock(fd):
                _held.append(fd)
                return index, round_
            os.close(fd)


def _holders(folder: Path, gpu: str) -> int:
    """How many processes hold a slot of this GPU (this one too, if it does)."""
    held = 0
    for path in [_slot(folder, gpu, 0), *map(Path, glob.glob(glob.escape(f"{folder / gpu}") + ".*.lock"))]:
        if not path.exists():
            continue
        fd = _open(path)
        held += not _try_lock(fd)   # a free slot is locked for an instant, then released by the close
        os.close(fd)
    return held
