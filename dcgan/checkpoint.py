"""The resumable checkpoint: what it holds, when it may be resumed, and the RNG state that makes resume exact.

DVC 3 has no training checkpoints, so resume is ours. A checkpoint is resumed only when its fingerprint
equals the current one: the params that change the weights (declared in params.py), the prepared data, the
torch version, and the source of every project module the training loop executes (derived from its imports,
see sources.py). Anything else starts fresh, with one line that names what changed.
"""
from __future__ import annotations

import hashlib
import random
from pathlib import Path

import numpy as np
import torch

from . import sources
from .files import atomic_torch_save
from .params import WEIGHT_KEYS

TRAINING_LOOP = Path(__file__).with_name("training.py")   # its code and what it imports is fingerprinted
# ... but for the metrics: scores pick generator_best.pt and never change the weights, so a changed metric
# resumes (dvc.yaml's deps still list them: the train stage re-runs, and resumes at once)
NOT_WEIGHTS = ("dcgan/metrics",)


def data_hash(*arrays: np.ndarray, block: int = 4096) -> str:
    """sha256 of shapes and bytes; reads memory-mapped arrays in blocks of rows, never all at once."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(str(a.shape).encode())
        for i in range(0, len(a), block):
            h.update(np.ascontiguousarray(a[i:i + block]).data)
    return h.hexdigest()


def training_code() -> dict[str, str]:
    """sha256 of every project file the training loop imports (dcgan/training.py and what it pulls in)."""
    return sources.digests(sources.project_files(TRAINING_LOOP, exclude=NOT_WEIGHTS))


def fingerprint(p: dict, train: np.ndarray, val: np.ndarray, fast: dict | None = None) -> dict:
    """fast: the resolved fast path (device.FastPath.as_dict()), recorded in place of the `auto` params
    (precision, channels_last, compile), less what never changes the numbers."""
    fast = {k: v for k, v in (fast or {}).items() if k != "cuda_graph"}
    return {**{k: p[k] for k in WEIGHT_KEYS}, **fast, "data_sha256": data_hash(train, val),
            "torch": str(torch.__version__), "code": training_code()}


def _what_changed(old: dict, new: dict) -> list[str]:
    out = []
    for k in new:
        if old.get(k) == new[k]:
            continue
        if k == "data_sha256":
            out.append("prepared data")
        elif k == "code":
            before = old.get("code") or {}
            files = sorted(f for f in set(before) | set(new[k]) if before.get(f) != new[k].get(f))
            out.append("code of " + ", ".join(files) if before else "code (the checkpoint has no code record)")
        else:
            out.append(f"{k} {old.get(k)!r} -> {new[k]!r}")
    return out


def load(path: Path, fp: dict, epochs: int | None = None) -> tuple[dict | None, str]:
    """(checkpoint or None, one line saying why it is resumed or not). epochs: a checkpoint past it is not."""
    if not path.is_file():
        return None, "no checkpoint: starting fresh"
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        epoch = ckpt["epoch"]
    except Exception as e:  # noqa: BLE001 - a half-written or foreign file: start over, say so
        return None, f"checkpoint {path} is unreadable ({type(e).__name__}): starting fresh"
    changed = _what_changed(ckpt.get("fingerprint", {}), fp)
    if changed:
        return None, (f"checkpoint at epoch {epoch} was made with different settings "
                      f"({'; '.join(changed)}): starting fresh")
    if epochs is not None and epoch > epochs:
        return None, f"checkpoint is at epoch {epoch}, past epochs={epochs}: starting fresh"
    return ckpt, f"resuming from checkpoint at epoch {epoch}"


def save(path: Path, fp: dict, epoch: int, summary: dict, G, D, opt_g, opt_d, fixed_noise, rng: list, ema, best,
         layer_plan: dict | None = None):
    """Everything a resume needs, written atomically (a kill mid-write leaves the previous checkpoint).
    layer_plan: the precision and layout each conv ran in (layer_plan.py), which a resume keeps."""
    atomic_torch_save({
        "fingerprint": fp, "epoch": epoch, "wall_s": summary["wall_s"], "summary": summary,
        "G": G.state_dict(), "D": D.state_dict(), "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
        "fixed_noise": fixed_noise, "rng": rng, "G_ema": ema.state_dict() if ema is not None else None,
        "best": best.state_dict(), "layer_plan": layer_plan,
    }, path)


# ---- RNG state, stored in a form torch.load(weights_only=True) accepts ----

def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(s: dict):
    random.setstate(s["python"])
    name, keys, *rest = s["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
