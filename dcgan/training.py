"""The training loop: DCGAN steps over the prepared arrays, one dvclive step per epoch, a resumable checkpoint.

Resume is ours (DVC 3 has no checkpoints; see checkpoint.py): a run that finds a checkpoint with the same
fingerprint continues from it, so a killed run and a run whose `epochs` was raised both carry on. Nothing
depends on the total number of epochs (no LR schedule), which makes "train 10, then raise to 20" equal to
"train 20". A checkpoint already at `epochs` trains nothing and rewrites the outputs from the checkpoint,
so re-running the stage (DVC deletes its outputs first) always reproduces all of them.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import checkpoint, live, pictures
from .device import autocast as autocast_for
from .device import memory_format, pick_device
from .errors import UserError
from .files import atomic_torch_save, atomic_write_text
from .model import Discriminator, Generator, frozen_batchnorm, init_weights
from .model import save as save_model

GRID_SIZE = 64  # fixed-noise samples per logged grid


def build(p: dict, size: int, channels: int):
    """Seeded models, optimisers and the fixed noise of the sample grids: the state of epoch 0."""
    checkpoint.seed_everything(p["seed"])
    G = Generator(size, channels, p["nz"], p["ngf"]).apply(init_weights)
    D = Discriminator(size, channels, p["ndf"]).apply(init_weights)
    fixed_noise = torch.randn(GRID_SIZE, p["nz"])
    opt_g = torch.optim.Adam(G.parameters(), lr=p["lr_g"], betas=(p["beta1"], p["beta2"]))
    opt_d = torch.optim.Adam(D.parameters(), lr=p["lr_d"], betas=(p["beta1"], p["beta2"]))
    return G, D, opt_g, opt_d, fixed_noise


def restore(ckpt: dict, G, D, opt_g, opt_d):
    G.load_state_dict(ckpt["G"])
    D.load_state_dict(ckpt["D"])
    opt_g.load_state_dict(ckpt["opt_g"])
    opt_d.load_state_dict(ckpt["opt_d"])
    checkpoint.set_rng_state(ckpt["rng"])


def write_outputs(G, D, summary: dict, models_dir: Path, summary_path: Path):
    save_model(G, models_dir / "generator.pt")
    save_model(D, models_dir / "discriminator.pt")
    atomic_write_text(summary_path, json.dumps(summary, indent=2) + "\n")


def train(p: dict, train_arr: np.ndarray, val_arr: np.ndarray, models_dir: Path, live_dir: Path,
          summary_path: Path, progress: bool = True, log=print) -> dict:
    """Train (or continue training) to p['epochs']; write models, checkpoint, dvclive series and summary.
    train_arr/val_arr: uint8 (N, C, H, W), typically read-only memory maps of the prepared .npy files."""
    models_dir, live_dir, summary_path = Path(models_dir), Path(live_dir), Path(summary_path)
    ckpt_path = models_dir / "checkpoint.pt"
    n, channels, size = train_arr.shape[0], train_arr.shape[1], train_arr.shape[2]
    if n == 0:
        raise UserError("the train split of the prepared data is empty: add images to `source`, "
                        "or lower val_fraction/test_fraction")
    device = pick_device(p["device"])

    G, D, opt_g, opt_d, fixed_noise = build(p, size, channels)
    fp = checkpoint.fingerprint(p, train_arr, val_arr)
    ckpt, why = checkpoint.load(ckpt_path, fp)
    if ckpt is not None and ckpt["epoch"] > p["epochs"]:
        ckpt, why = None, f"checkpoint is at epoch {ckpt['epoch']}, past epochs={p['epochs']}: starting fresh"
    if ckpt is not None:
        try:
            restore(ckpt, G, D, opt_g, opt_d)
        except (KeyError, RuntimeError, ValueError) as e:  # same fingerprint, yet it does not fit: start over
            ckpt, why = None, f"checkpoint {ckpt_path} does not fit the models ({type(e).__name__}): starting fresh"
            G, D, opt_g, opt_d, fixed_noise = build(p, size, channels)
    log(why)
    if ckpt is not None and ckpt["epoch"] == p["epochs"]:
        log(f"already trained for {ckpt['epoch']} epochs: writing the models and {summary_path} from the checkpoint")
        write_outputs(G, D, ckpt["summary"], models_dir, summary_path)
        return ckpt["summary"]
    start, wall_before = (ckpt["epoch"], ckpt["wall_s"]) if ckpt is not None else (0, 0.0)
    if ckpt is not None:
        fixed_noise = ckpt["fixed_noise"]

    # Device and memory layout after loading, so a CPU checkpoint resumes on a GPU and back.
    # channels_last: oneDNN/cuDNN convolutions run faster on NHWC (benchmarks/train_speed.py).
    fmt = memory_format(device)
    G.to(device, memory_format=fmt).train()
    D.to(device, memory_format=fmt).train()
    for opt in (opt_g, opt_d):
        for state in opt.state.values():
            for k, v in state.items():
                if isinstance(v, torch.Tensor) and k != "step":
                    state[k] = v.to(device)
    autocast = autocast_for(device, p["precision"])
    # d_train: D on as many training images as the val split holds, measured like d_val at the same moment.
    # d_real (the mean over the epoch's steps) swings with D's oscillation; this pair is the fair comparison.
    probe = train_arr[np.sort(np.random.default_rng(0).choice(n, min(n, len(val_arr)), replace=False))]
    bs = min(p["batch_size"], n)
    steps = n // bs
    grids = live.grid_epochs(p["sample_every"], p["epochs"])

    run = live.open_live(live_dir, start)
    run_t0, images_done, summary = time.perf_counter(), 0, {}
    for epoch in range(start + 1, p["epochs"] + 1):
        t0 = time.perf_counter()
        perm = torch.randperm(n).numpy()
        sums = torch.zeros(4, device=device)  # loss_d, loss_g, d_real, d_fake, summed on the device
        bar = tqdm(range(steps), desc=f"epoch {epoch}/{p['epochs']}", unit="step", disable=not progress,
                   dynamic_ncols=True, leave=False)
        for i in bar:
            x = batch_to(train_arr[perm[i * bs:(i + 1) * bs]], device, fmt)
            z = torch.randn(x.shape[0], p["nz"], device=device)
            loss_d, loss_g, out_real, out_fake = train_step(G, D, opt_g, opt_d, x, z, autocast)
            with torch.no_grad():
                sums += torch.stack([loss_d.float(), loss_g.float(), torch.sigmoid(out_real.float()).mean(),
                                     torch.sigmoid(out_fake.float()).mean()])
            if progress and (i % 10 == 0 or i == steps - 1):  # the only host sync inside an epoch
                mean = (sums / (i + 1)).tolist()
                bar.set_postfix(loss_d=f"{mean[0]:.3f}", loss_g=f"{mean[1]:.3f}",
                                img_s=f"{(i + 1) * bs / (time.perf_counter() - t0):.0f}")
        bar.close()
        means = (sums / steps).tolist()
        epoch_s = time.perf_counter() - t0
        stats = {"loss_d": means[0], "loss_g": means[1], "d_real": means[2], "d_fake": means[3]}
        d_val = discriminator_mean(D, val_arr, bs, device, autocast)
        if np.isfinite(d_val):  # absent when the val split has fewer than 2 images
            stats["d_val"] = d_val
            stats["d_train"] = discriminator_mean(D, probe, bs, device, autocast)
        stats["images_per_s"] = steps * bs / epoch_s
        stats["epoch_s"] = epoch_s
        images_done += steps * bs
        if not all(np.isfinite(v) for v in stats.values()):
            bad = ", ".join(f"{k}={v}" for k, v in stats.items() if not np.isfinite(v))
            raise UserError(f"training diverged at epoch {epoch} ({bad}); the checkpoint of the last good epoch "
                            f"is kept in {ckpt_path}. Lower lr_g/lr_d or change seed")
        run.step = epoch
        for k, v in stats.items():
            run.log_metric(k, v)
        if epoch in grids:
            run.log_image(f"samples/{epoch:05d}.png", sample_grid(G, fixed_noise, device))
        run.make_summary()
        log(f"epoch {epoch}/{p['epochs']}  " + "  ".join(
            f"{k} {v:.1f}" if k in ("images_per_s", "epoch_s") else f"{k} {v:.4f}" for k, v in stats.items()))
        run_s = time.perf_counter() - run_t0
        summary = {"epochs_done": epoch, **{k: v for k, v in stats.items() if k != "epoch_s"},
                   "images_per_s": images_done / run_s, "wall_s": wall_before + run_s}
        if epoch % p["checkpoint_every"] == 0 or epoch == p["epochs"]:
            atomic_torch_save({
                "fingerprint": fp, "epoch": epoch, "wall_s": summary["wall_s"], "summary": summary,
                "G": G.state_dict(), "D": D.state_dict(), "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
                "fixed_noise": fixed_noise, "rng": checkpoint.rng_state(),
            }, ckpt_path)
    run.end()
    write_outputs(G, D, summary, models_dir, summary_path)
    return summary


def batch_to(images: np.ndarray, device: torch.device, fmt=torch.contiguous_format) -> torch.Tensor:
    """uint8 rows (copied out of the read-only memory map) -> float in [-1, 1], scaled on the device."""
    x = torch.from_numpy(np.array(images, copy=True)).to(device, non_blocking=True)
    return pictures.to_float(x).contiguous(memory_format=fmt)


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
def discriminator_mean(D, images: np.ndarray, bs: int, device, autocast) -> float:
    """Mean D(x) over held-out images, with batch statistics as in training (the running stats untouched)."""
    total, count = torch.zeros((), device=device), 0
    with frozen_batchnorm(D):
        for i in range(0, len(images), bs):
            if len(images[i:i + bs]) < 2:  # BatchNorm in train mode needs two values
                continue
            x = batch_to(images[i:i + bs], device)
            with autocast:
                total += torch.sigmoid(D(x).float()).sum()
            count += len(x)
    return total.item() / count if count else float("nan")


@torch.no_grad()
def sample_grid(G, noise: torch.Tensor, device):
    was_training = G.training
    G.eval()
    img = pictures.grid(pictures.to_uint8(G(noise.to(device))), nrow=8)
    G.train(was_training)
    return img
