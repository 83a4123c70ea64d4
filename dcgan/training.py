"""The training loop: one readable loop, a resumable checkpoint, dvclive logging (one step per epoch).

Resume is ours (DVC 3 has no checkpoints): `models/checkpoint.pt` is a `persist: true` output
holding both models, both optimisers, the epoch and every RNG state. A run that finds a checkpoint
made with the same training params and data continues from it, so a killed run and a run whose
`epochs` was raised both carry on. Nothing depends on the total number of epochs (no LR schedule),
which is what makes "train 10, then raise to 20" equal to "train 20".
"""
from __future__ import annotations

import csv
import hashlib
import json
import random
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import pictures
from .files import atomic_write
from .model import Discriminator, Generator, init_weights
from .model import save as save_model

# Params that change the trajectory of training. epochs, sample_every, checkpoint_every and device don't.
FINGERPRINT_KEYS = ("nz", "ngf", "ndf", "batch_size", "lr_g", "lr_d", "beta1", "beta2", "seed", "precision")
GRID_SIZE = 64  # fixed-noise samples per logged grid


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device '{name}' asked for in params.yaml, but no CUDA GPU is available; use 'auto' or 'cpu'")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("device 'mps' asked for in params.yaml, but MPS is not available; use 'auto' or 'cpu'")
    return torch.device(name)


def memory_format(device: torch.device) -> torch.memory_format:
    """NHWC where it is known to help (CPU and CUDA convolutions); the default layout elsewhere (MPS)."""
    return torch.channels_last if device.type in ("cpu", "cuda") else torch.contiguous_format


def atomic_torch_save(obj, path: Path):
    atomic_write(path, lambda f: torch.save(obj, f), fsync=True)  # survive power loss, not just SIGKILL


def data_hash(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).data)
    return h.hexdigest()


def fingerprint(p: dict, train: np.ndarray, val: np.ndarray) -> dict:
    return {**{k: p[k] for k in FINGERPRINT_KEYS}, "data_sha256": data_hash(train, val)}


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


def load_checkpoint(path: Path, fp: dict) -> tuple[dict | None, str]:
    """(checkpoint or None, one-line reason when it is not used)."""
    if not path.is_file():
        return None, "no checkpoint: starting fresh"
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a half-written or foreign file: start over, say so
        return None, f"checkpoint {path} is unreadable ({type(e).__name__}): starting fresh"
    old = ckpt.get("fingerprint", {})
    changed = [k for k in fp if old.get(k) != fp[k]]
    if changed:
        what = ", ".join(f"{k} {old.get(k)!r} -> {fp[k]!r}" if k != "data_sha256" else "prepared data" for k in changed)
        return None, f"checkpoint at epoch {ckpt.get('epoch')} was made with different settings ({what}): starting fresh"
    return ckpt, f"resuming from checkpoint at epoch {ckpt['epoch']}"


@contextmanager
def frozen_batchnorm(model: torch.nn.Module):
    """Forward in train mode (batch statistics, as in training) without moving the running statistics."""
    saved = {k: v.clone() for k, v in model.state_dict().items() if "running_" in k or "num_batches" in k}
    try:
        yield
    finally:
        model.load_state_dict(saved, strict=False)


def _truncate_live(live_dir: Path, last_step: int):
    """Drop series rows and sample grids logged after the checkpoint a killed run resumes from."""
    for tsv in (live_dir / "plots" / "metrics").glob("**/*.tsv"):
        with open(tsv, newline="") as f:
            rows = list(csv.reader(f, delimiter="\t"))
        if not rows:
            continue
        step_col = rows[0].index("step") if "step" in rows[0] else None
        keep = [rows[0]] + [r for r in rows[1:] if step_col is None or int(r[step_col]) <= last_step]
        with open(tsv, "w", newline="") as f:
            csv.writer(f, delimiter="\t", lineterminator="\n").writerows(keep)
    for img in (live_dir / "plots" / "images").glob("**/*.png"):
        if img.stem.isdigit() and int(img.stem) > last_step:
            img.unlink()


def train(p: dict, train_arr: np.ndarray, val_arr: np.ndarray, models_dir: Path, live_dir: Path,
          summary_path: Path, progress: bool = True, log=print) -> dict:
    """Train (or continue training) to p['epochs']; write models, checkpoint, dvclive series and summary."""
    from dvclive import Live

    models_dir, live_dir = Path(models_dir), Path(live_dir)
    ckpt_path = models_dir / "checkpoint.pt"
    device = pick_device(p["device"])
    n, channels, size = train_arr.shape[0], train_arr.shape[1], train_arr.shape[2]
    if n == 0:
        raise ValueError("the train split is empty: add images or lower val_fraction/test_fraction")

    seed_everything(p["seed"])
    G = Generator(size, channels, p["nz"], p["ngf"])
    D = Discriminator(size, channels, p["ndf"])
    G.apply(init_weights)
    D.apply(init_weights)
    fixed_noise = torch.randn(GRID_SIZE, p["nz"])
    opt_g = torch.optim.Adam(G.parameters(), lr=p["lr_g"], betas=(p["beta1"], p["beta2"]))
    opt_d = torch.optim.Adam(D.parameters(), lr=p["lr_d"], betas=(p["beta1"], p["beta2"]))

    fp = fingerprint(p, train_arr, val_arr)
    ckpt, why = load_checkpoint(ckpt_path, fp)
    if ckpt is not None and ckpt["epoch"] > p["epochs"]:
        ckpt, why = None, f"checkpoint is at epoch {ckpt['epoch']}, past epochs={p['epochs']}: starting fresh"
    log(why)
    start, wall_before = 0, 0.0
    if ckpt is not None:
        G.load_state_dict(ckpt["G"])
        D.load_state_dict(ckpt["D"])
        opt_g.load_state_dict(ckpt["opt_g"])
        opt_d.load_state_dict(ckpt["opt_d"])
        fixed_noise = ckpt["fixed_noise"]
        start, wall_before = ckpt["epoch"], ckpt["wall_s"]
        set_rng_state(ckpt["rng"])
        _truncate_live(live_dir, start)

    # Device and memory layout after loading so a CPU checkpoint resumes on a GPU and back.
    # channels_last: oneDNN/cuDNN convolutions run faster on NHWC (benchmarks/train_speed.py).
    fmt = memory_format(device)
    G.to(device, memory_format=fmt).train()
    D.to(device, memory_format=fmt).train()
    for opt in (opt_g, opt_d):
        for state in opt.state.values():
            for k, v in state.items():
                if isinstance(v, torch.Tensor) and k != "step":
                    state[k] = v.to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=p["precision"] == "bf16")
    data = torch.from_numpy(train_arr)  # uint8 on the host; batches are moved and scaled on the fly
    val = torch.from_numpy(val_arr)
    # d_train: D on as many training images as the val split holds, measured like d_val at the same moment.
    # d_real (the mean over the epoch's steps) swings with D's oscillation; this pair is the fair comparison.
    probe = data[np.sort(np.random.default_rng(0).choice(n, min(n, len(val_arr)), replace=False))]
    bs = min(p["batch_size"], n)
    steps = n // bs

    live = Live(str(live_dir), resume=start > 0, dvcyaml=False, save_dvc_exp=False)
    summary = {}
    if start >= p["epochs"]:
        log(f"already trained for {start} epochs; writing outputs only")
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    run_t0, images_done, epoch_stats = time.perf_counter(), 0, {}
    for epoch in range(start + 1, p["epochs"] + 1):
        t0 = time.perf_counter()
        perm = torch.randperm(n)
        sums = torch.zeros(4, dtype=torch.float64)  # loss_d, loss_g, d_real, d_fake
        bar = tqdm(range(steps), desc=f"epoch {epoch}/{p['epochs']}", unit="step", disable=not progress,
                   dynamic_ncols=True, leave=False)
        for i in bar:
            x = pictures.to_float(data[perm[i * bs:(i + 1) * bs]]).to(device, memory_format=fmt, non_blocking=True)
            z = torch.randn(x.shape[0], p["nz"], device=device)
            loss_d, loss_g, out_real, out_fake = train_step(G, D, opt_g, opt_d, x, z, autocast)
            with torch.no_grad():
                step = torch.stack([loss_d.float(), loss_g.float(), torch.sigmoid(out_real.float()).mean(),
                                    torch.sigmoid(out_fake.float()).mean()]).double().cpu()
            sums += step
            if progress and (i % 10 == 0 or i == steps - 1):
                el = time.perf_counter() - t0
                bar.set_postfix(loss_d=f"{step[0]:.3f}", loss_g=f"{step[1]:.3f}", img_s=f"{(i + 1) * bs / el:.0f}")
        bar.close()
        epoch_s = time.perf_counter() - t0
        means = (sums / steps).tolist()
        epoch_stats = {"loss_d": means[0], "loss_g": means[1], "d_real": means[2], "d_fake": means[3]}
        d_val = discriminator_mean(D, val, bs, device, autocast)
        if np.isfinite(d_val):  # absent when the val split has fewer than 2 images
            epoch_stats["d_val"] = d_val
            epoch_stats["d_train"] = discriminator_mean(D, probe, bs, device, autocast)
        epoch_stats["images_per_s"] = steps * bs / epoch_s
        epoch_stats["epoch_s"] = epoch_s
        images_done += steps * bs
        if not all(np.isfinite(v) for v in epoch_stats.values()):
            raise FloatingPointError(f"training diverged at epoch {epoch}: {epoch_stats}; try lower lr_g/lr_d")
        live.step = epoch
        for k, v in epoch_stats.items():
            live.log_metric(k, v)
        if epoch % p["sample_every"] == 0 or epoch == p["epochs"]:
            live.log_image(f"samples/{epoch:05d}.png", sample_grid(G, fixed_noise, device))
        live.make_summary()
        log(f"epoch {epoch}/{p['epochs']}  " + "  ".join(
            f"{k} {v:.1f}" if k in ("images_per_s", "epoch_s") else f"{k} {v:.4f}" for k, v in epoch_stats.items()))
        if epoch % p["checkpoint_every"] == 0 or epoch == p["epochs"]:
            wall = wall_before + time.perf_counter() - run_t0
            atomic_torch_save({
                "fingerprint": fp, "epoch": epoch, "wall_s": wall,
                "G": G.state_dict(), "D": D.state_dict(), "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
                "fixed_noise": fixed_noise, "rng": rng_state(),
            }, ckpt_path)
    live.end()

    save_model(G, models_dir / "generator.pt")
    save_model(D, models_dir / "discriminator.pt")
    if epoch_stats:
        run_s = time.perf_counter() - run_t0
        summary = {"epochs_done": p["epochs"], **{k: v for k, v in epoch_stats.items() if k != "epoch_s"},
                   "images_per_s": images_done / run_s, "wall_s": wall_before + run_s}
    summary_path.parent.mkdir(parents=True, exist_ok=True)
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def train_step(G, D, opt_g, opt_d, x: torch.Tensor, z: torch.Tensor, autocast):
    """One DCGAN step: D on real x and detached G(z), then G through D (non-saturating loss).
    Returns (loss_d, loss_g, D's logits on x, D's logits on G(z) before D's update)."""
    with autocast:
        fake = G(z)
        out_real, out_fake = D(x), D(fake.detach())
        loss_d = (F.binary_cross_entropy_with_logits(out_real, torch.ones_like(out_real))
                  + F.binary_cross_entropy_with_logits(out_fake, torch.zeros_like(out_fake)))
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_d.step()
    with autocast:
        out_g = D(fake)
        loss_g = F.binary_cross_entropy_with_logits(out_g, torch.ones_like(out_g))
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    opt_g.step()
    return loss_d, loss_g, out_real, out_fake


@torch.no_grad()
def discriminator_mean(D, images: torch.Tensor, bs: int, device, autocast) -> float:
    """Mean D(x) over held-out images, with batch statistics as in training (the running stats untouched)."""
    total, count = 0.0, 0
    with frozen_batchnorm(D):
        for i in range(0, len(images), bs):
            x = pictures.to_float(images[i:i + bs]).to(device)
            if len(x) < 2:  # BatchNorm in train mode needs two values
                continue
            with autocast:
                total += torch.sigmoid(D(x).float()).sum().item()
            count += len(x)
    return total / count if count else float("nan")


@torch.no_grad()
def sample_grid(G, noise: torch.Tensor, device):
    was_training = G.training
    G.eval()
    img = pictures.grid(pictures.to_uint8(G(noise.to(device))), nrow=8)
    G.train(was_training)
    return img
