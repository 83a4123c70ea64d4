"""The training loop: GAN steps over the prepared arrays, one dvclive step per epoch, a resumable checkpoint.

Resume is ours (DVC 3 has no checkpoints; see checkpoint.py): a run that finds a checkpoint with the same
fingerprint continues from it, so a killed run and a run whose `epochs` was raised both carry on. Nothing
depends on the total number of epochs (no LR schedule), which makes "train 10, then raise to 20" equal to
"train 20". A checkpoint already at `epochs` trains nothing and rewrites the outputs from the checkpoint,
so re-running the stage (DVC deletes its outputs first) always reproduces all of them.

`train` reads top to bottom: set-up, resume, the loop (steps, then the epoch's measurements, logging and
checkpoint), outputs. Under torchrun every rank runs it; rank 0 (`world.main`) alone logs and writes files.
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import archs, checkpoint, distributed, gpu_claim, layer_plan, live, losses, pictures, sampling
from .augment import DiffAugment
from .device import FastPath, adam, autocast, memory_format, resolve
from .distributed import World
from .ema import EMA
from .engine import ResidentData, Stepper
from .errors import UserError
from .files import atomic_write_text
from .model import save as save_model
from .quality import Best, QualityProbe

GRID_SIZE = 64  # fixed-noise samples per logged grid


def device_name(device: torch.device) -> str:
    """What the run trained on, for metrics/train.json: 'cpu', or the GPU's model name."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def train(p: dict, train_arr: np.ndarray, val_arr: np.ndarray, models_dir: Path, live_dir: Path,
          summary_path: Path, progress: bool = True, log=print, world: World = World()) -> dict:
    """Train (or continue training) to p['epochs']; write models, checkpoint, dvclive series and summary.
    train_arr/val_arr: uint8 (N, C, H, W), typically read-only memory maps of the prepared .npy files."""
    if not world.main:
        log, progress = (lambda *_: None), False
    models_dir, live_dir, summary_path = Path(models_dir), Path(live_dir), Path(summary_path)
    ckpt_path = models_dir / "checkpoint.pt"
    n, channels, size = train_arr.shape[0], train_arr.shape[1], train_arr.shape[2]
    device, fast, bs = setup_device(p, n, world)

    # ---- resume when the checkpoint was made with the same fingerprint; else the seeded models ----
    G, D, fixed_noise = build(p, size, channels)
    fp = checkpoint.fingerprint(p, train_arr, val_arr, {**fast.as_dict(), "world_size": world.size})
    ckpt, why = checkpoint.load(ckpt_path, fp, p["epochs"])
    if ckpt is not None and not load_weights(ckpt, G, D):   # same fingerprint, yet it does not fit
        ckpt, why = None, f"checkpoint {ckpt_path} does not fit the models ({p['arch']}): starting fresh"
        G, D, fixed_noise = build(p, size, channels)
    log(why)
    best = Best(ckpt.get("best") if ckpt is not None else None, p["best_by"], log)
    if ckpt is not None and ckpt["epoch"] == p["epochs"]:
        log(f"already trained for {ckpt['epoch']} epochs: writing the models and {summary_path} from the checkpoint")
        ema = None
        if ckpt.get("G_ema") is not None:   # on the training device and layout: recalibration gives the same bytes
            G.to(device, memory_format=memory_format(device, fast.channels_last))
            layer_plan.apply({"G": G}, ckpt.get("layer_plan") or {})
            ema = EMA(G, p["ema_halflife"], p["ema_rampup"])
            ema.load_state_dict(ckpt["G_ema"])
        if world.main:
            write_outputs(published(G, ema), D, best, ckpt["summary"], models_dir, summary_path)
        return ckpt["summary"]

    # Device and layout first, then the optimisers (their state follows the parameters' device on load).
    fmt = memory_format(device, fast.channels_last)
    G.to(device, memory_format=fmt).train()
    D.to(device, memory_format=fmt).train()
    steps, local = n // bs, bs // world.size
    plan = plan_layers(p, fast, device, {"G": G, "D": D}, local, ckpt, world, log)
    opt_g, opt_d = optimisers(p, G, D, device, fast)
    G_ddp, D_ddp = distributed.wrap(G, world, device), distributed.wrap(D, world, device)
    ema = EMA(G, p["ema_halflife"], p["ema_rampup"]) if p["ema_halflife"] > 0 else None
    start, wall_before = 0, 0.0
    if ckpt is not None:
        opt_g.load_state_dict(ckpt["opt_g"])
        opt_d.load_state_dict(ckpt["opt_d"])
        for opt in (opt_g, opt_d):   # a checkpoint from another device or plan: Adam's state in its weights' layout
            state_like_weights(opt)
        if ema is not None:
            ema.load_state_dict(ckpt["G_ema"])
        fixed_noise, start, wall_before = ckpt["fixed_noise"], ckpt["epoch"], ckpt["wall_s"]

    # ---- the step, and what is measured after each epoch ----
    data = ResidentData(train_arr, device, fmt)      # on the GPU: one uint8 tensor; on the CPU: the memory map
    augment = DiffAugment(p["diffaugment"])
    stepper = Stepper(G_ddp, D_ddp, opt_g, opt_d, p["nz"], fast, device, log=log, loss=losses.build(p["loss"]),
                      augment=augment, r1_gamma=p["r1_gamma"], r1_every=p["r1_every"])
    stepper.compile(data, local)
    held_out = HeldOut(train_arr, val_arr, device, bs, autocast(device, fast.precision)) if world.main else None
    quality = quality_probe(p, val_arr, device, log) if world.main else None
    if ckpt is not None:  # after the compile trial: the RNG continues exactly where the checkpoint left it
        checkpoint.set_rng_state(ckpt["rng"][world.rank])
    else:                 # noise differs between ranks; batch order (perm_generator) is the same on all
        checkpoint.seed_everything(p["seed"] + 1_000_003 * world.rank)
    log(f"device {device}: precision {fast.precision}, channels_last {fast.channels_last}, "
        f"compile {stepper.compiled}, CUDA graph {stepper.use_graph}"
        + (f", {world.size} processes with DDP, {local} images each per step" if world.distributed else ""))
    log(f"arch {p['arch']}, loss {p['loss']}, DiffAugment {','.join(augment.names) or 'off'}, "
        f"spectral norm {p['spectral_norm']}, R1 {p['r1_gamma'] if p['r1_gamma'] > 0 else 'off'}, "
        + (f"EMA of G half-life {p['ema_halflife']} images" if ema else "EMA of G off"))
    grids = live.grid_epochs(p["sample_every"], p["epochs"])

    # ---- the loop ----
    run = live.open_live(live_dir, start) if world.main else None
    run_t0, images_done, summary, trained_on = time.perf_counter(), 0, {}, device_name(device)
    for epoch in range(start + 1, p["epochs"] + 1):
        t0 = time.perf_counter()
        # the epoch's order from (seed, epoch) alone: the same on every rank and device, and after a resume
        perm = torch.randperm(n, generator=perm_generator(p["seed"], epoch)).to(data.index_device)
        with tqdm(total=steps * bs, desc=f"epoch {epoch}/{p['epochs']}", unit="img", disable=not progress,
                  dynamic_ncols=True, leave=False, mininterval=0.5) as bar:
            for i in range(steps):
                first = i * bs + world.rank * local     # this rank's share of global batch i
                stepper.step(data, perm[first:first + local])
                if ema is not None:
                    ema.update(bs, ((epoch - 1) * steps + i + 1) * bs)
                bar.update(bs)                          # counts only: no host sync inside the epoch
        stats = stepper.read_stats(steps, world)
        epoch_s = time.perf_counter() - t0              # the steps alone (read_stats waits for them)
        stop_if_diverged(stats, epoch, ckpt_path)       # the same on every rank: all stop together
        if world.main:
            stats.update(held_out.d_means(D))
        stats.update(images_per_s=steps * bs / epoch_s, epoch_s=epoch_s)
        scored = quality is not None and (epoch % p["eval_every"] == 0 or epoch == p["epochs"])
        if world.main and (scored or epoch in grids or epoch == p["epochs"]):
            G_pub = published(G, ema)   # what the grids, the quality score and models/generator*.pt show
        if scored:
            stats.update(quality.score(G_pub))
            if best.offer(epoch, stats[best.key], G_pub):
                log(f"best {best.key} so far: {best.score:.3f} at epoch {epoch}")
        images_done += steps * bs
        if world.main:
            log_epoch(run, epoch, stats, G_pub if epoch in grids else None, fixed_noise, device)
        log(f"epoch {epoch}/{p['epochs']}  " + "  ".join(
            f"{k} {v:.1f}" if k in ("images_per_s", "epoch_s") else f"{k} {v:.4f}" for k, v in stats.items()))
        run_s = time.perf_counter() - run_t0
        summary = {**{k: v for k, v in summary.items() if not k.startswith("best_")}, "epochs_done": epoch,
                   "images_seen": epoch * steps * bs, "device": trained_on,
                   **{k: v for k, v in stats.items() if k != "epoch_s"},
                   "images_per_s": images_done / run_s, "wall_s": wall_before + run_s, **best.summary()}
        if epoch % p["checkpoint_every"] == 0 or epoch == p["epochs"]:
            for m in (G, D):                            # collectives: every rank takes part
                distributed.average_buffers(m, world)
            rng = distributed.gather_objects(checkpoint.rng_state(), world)
            if world.main:
                checkpoint.save(ckpt_path, fp, epoch, summary, G, D, opt_g, opt_d, fixed_noise, rng, ema, best,
                                plan)

    # ---- outputs ----
    if world.distributed:
        same, sums = distributed.checksums_agree((G, D), world)
        if not same:
            raise RuntimeError(f"the ranks' weights differ after training (parameter sums {sums}): a DDP bug")
        log(f"all {world.size} ranks hold the same weights (parameter sum {sums[0]:.6f})")
    if world.main:
        run.end()
        write_outputs(G_pub, D, best, summary, models_dir, summary_path)
    return summary


# ---- set-up ----

def setup_device(p: dict, n: int, world: World) -> tuple[torch.device, FastPath, int]:
    """The device of this rank, its fast path (the `auto` params resolved) and the global batch size."""
    if n == 0:
        raise UserError("the train split of the prepared data is empty: add images to `source`, "
                        "or lower val_fraction/test_fraction")
    # a queue on several GPUs: one no other experiment holds (gpu_claim.py); under torchrun cuda:LOCAL_RANK
    device = distributed.device_for(world, gpu_claim.stage_device(p["device"], world.distributed))
    fast = resolve(p, device, distributed=world.distributed)
    bs = min(p["batch_size"], n)
    if bs % world.size:
        raise UserError(f"batch_size {bs} is not divisible by the {world.size} processes (nproc x nnodes): "
                        "each takes an equal share of every batch")
    return device, fast, bs


def build(p: dict, size: int, channels: int):
    """Seeded models of the `arch` architecture and the fixed noise of the sample grids, on the CPU: the
    state of epoch 0."""
    checkpoint.seed_everything(p["seed"])
    arch = archs.REGISTRY.get(p["arch"])
    G = arch.generator(size, channels, p["nz"], p["ngf"]).apply(arch.init_weights)
    D = arch.discriminator(size, channels, p["ndf"], spectral_norm=p["spectral_norm"]).apply(arch.init_weights)
    fixed_noise = torch.randn(GRID_SIZE, p["nz"])
    return G, D, fixed_noise


def load_weights(ckpt: dict, G, D) -> bool:
    """The checkpoint's weights into G and D; False when they do not fit."""
    try:
        G.load_state_dict(ckpt["G"])
        D.load_state_dict(ckpt["D"])
    except (KeyError, RuntimeError):
        return False
    return True


def plan_layers(p: dict, fast: FastPath, device: torch.device, models: dict, batch: int, ckpt: dict | None,
                world: World, log) -> dict[str, str]:
    """On the CPU, each conv in the precision and layout that runs it fastest here (layer_plan.py): the plan
    the checkpoint trained with when resuming, else rank 0's (cached or timed now). {} elsewhere."""
    if device.type != "cpu":
        return {}
    plan = ckpt.get("layer_plan") if ckpt is not None else None
    if not plan:    # none recorded (a fresh run, or a checkpoint made on a GPU, where no plan applies)
        G, D = models["G"], models["D"]
        size, channels = D.config["image_size"], D.config["channels"]
        inputs = {"G": torch.zeros(batch, G.nz),
                  "D": torch.zeros(batch, channels, size, size).contiguous(memory_format=memory_format(
                      device, fast.channels_last))}
        settings = layer_plan.candidates(p, fast.precision, fast.channels_last)
        plan = layer_plan.plan_for(models, inputs, settings, log) if world.main else None
        plan = distributed.broadcast_object(plan, world)
    layer_plan.apply(models, plan)
    log(f"layer plan: {layer_plan.summary(plan)}")
    return plan


def state_like_weights(opt: torch.optim.Optimizer):
    """Each per-weight state tensor (Adam's moments) in the memory layout of its weight: fused Adam walks them
    in memory order, and a loaded state keeps the layout it was saved in."""
    for group in opt.param_groups:
        for w in group["params"]:
            state = opt.state.get(w, {})
            for name, v in state.items():
                if torch.is_tensor(v) and v.shape == w.shape and v.stride() != w.stride():
                    state[name] = torch.empty_like(w, dtype=v.dtype).copy_(v)


def optimisers(p: dict, G, D, device: torch.device, fast: FastPath):
    """Adam for each, built after the models moved to the device (fused Adam wants its parameters there)."""
    betas = (p["beta1"], p["beta2"])
    return (adam(G.parameters(), p["lr_g"], betas, device, capturable=fast.cuda_graph),
            adam(D.parameters(), p["lr_d"], betas, device, capturable=fast.cuda_graph))


def quality_probe(p: dict, val_arr: np.ndarray, device, log) -> QualityProbe | None:
    """The in-training score every `eval_every` epochs (None when off, or when the val split is too small)."""
    if p["eval_every"] <= 0:
        return None
    if len(val_arr) < 2:
        log("quality not measured during training: the val split has fewer than 2 images (raise val_fraction)")
        return None
    with torch.random.fork_rng(devices=[]):  # building Inception draws init weights: leave training's RNG be
        return QualityProbe(val_arr, p["nz"], device, seed=p["seed"], fid_weights=p["fid_weights"], log=log)


class HeldOut:
    """d_val: mean D(x) on the val split; d_train: the same on as many training images, at the same moment.
    d_real (the mean over the epoch's steps) swings with D's oscillation; this pair is the fair comparison,
    and d_val falling away below d_train means D memorises the training set."""

    def __init__(self, train_arr: np.ndarray, val_arr: np.ndarray, device, batch: int, autocast_ctx):
        pick = np.sort(np.random.default_rng(0).choice(len(train_arr), min(len(train_arr), len(val_arr)),
                                                       replace=False))
        self.val, self.train = ResidentData(val_arr, device), ResidentData(train_arr[pick], device)
        self.batch, self.autocast = batch, autocast_ctx

    def d_means(self, D) -> dict[str, float]:
        """{} when the val split has fewer than 2 images (BatchNorm in train mode needs two values)."""
        d_val = self.mean(D, self.val)
        return {"d_val": d_val, "d_train": self.mean(D, self.train)} if np.isfinite(d_val) else {}

    def mean(self, D, images: ResidentData) -> float:
        starts = [i for i in range(0, images.n, self.batch) if min(self.batch, images.n - i) >= 2]
        batches = (images.batch(torch.arange(i, min(i + self.batch, images.n), device=images.index_device))
                   for i in starts)
        total, count = torch.zeros((), device=images.device), 0
        for logits in sampling.d_logits(D, batches, self.autocast):
            total += torch.sigmoid(logits).sum()
            count += len(logits)
        return total.item() / count if count else float("nan")


def perm_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


# ---- each epoch ----

def stop_if_diverged(stats: dict, epoch: int, ckpt_path: Path):
    if not all(np.isfinite(v) for v in stats.values()):
        bad = ", ".join(f"{k}={v}" for k, v in stats.items() if not np.isfinite(v))
        raise UserError(f"training diverged at epoch {epoch} ({bad}); the checkpoint of the last good epoch "
                        f"is kept in {ckpt_path}. Lower lr_g/lr_d or change seed")


def published(G, ema: EMA | None):
    """The generator to show and save: the EMA (its BatchNorm statistics recomputed for its weights) or G."""
    return ema.recalibrate() if ema is not None else G


def log_epoch(run, epoch: int, stats: dict, G_grid, fixed_noise: torch.Tensor, device):
    """The epoch's numbers as one dvclive step, and a grid of the fixed noise's samples when G_grid is given."""
    run.step = epoch
    for k, v in stats.items():
        run.log_metric(k, v)
    if G_grid is not None:
        run.log_image(f"samples/{epoch:05d}.png", pictures.grid(sampling.sample_images(G_grid, fixed_noise, device),
                                                                nrow=8))
    run.make_summary()


# ---- outputs ----

def write_outputs(G, D, best: Best, summary: dict, models_dir: Path, summary_path: Path):
    """G: the generator to publish (the EMA when it is on); best: its best-scoring weights so far."""
    save_model(G, models_dir / "generator.pt")
    if best.weights is not None:
        G = copy.deepcopy(G).cpu()
        G.load_state_dict(best.weights)
    save_model(G, models_dir / "generator_best.pt")   # = generator.pt when nothing was scored
    save_model(D, models_dir / "discriminator.pt")
    atomic_write_text(summary_path, json.dumps(summary, indent=2) + "\n")
