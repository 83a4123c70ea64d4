"""Which training options give the best samples from a few hundred images, at the same image budget?

    python benchmarks/quality.py [--data ../shared/datasets/pokemon/images] [--image-size 32] [--images 60000]
                                 [--seeds 0,1] [--configs plain,diffaugment_ema,...] [--device auto]

The Pokemon sprites are prepared once (as the prepare stage does: RGB, crop, white background, 10% val and
10% test). Each configuration trains from scratch with every seed through the train stage's own code
(dcgan.training.train) for the same number of training images, with params.yaml's values for everything
a configuration does not set. Each run's generator is then scored as the pipeline would use it
(`generator: best`, chosen by SWD on the val split during training; and the last one) on the test split
it never saw: SWD of 1,000 samples, x1e3, lower is better; the real-vs-real floor (training images vs
test images) is printed beside it. Writes benchmarks/results/quality.json and one grid per configuration
(seed 0, best generator) under benchmarks/results/quality/. The last line is a JSON summary.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import numpy as np
import torch

from dcgan import data, generation, pictures, sampling, training
from dcgan import model as models
from dcgan import params as P
from dcgan.device import pick_device
from dcgan.metrics.swd import SWD

DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "pokemon" / "images"
PLAIN = {"diffaugment": "", "ema_halflife": 0, "loss": "bce", "spectral_norm": False, "r1_gamma": 0.0}
CONFIGS = {
    "plain": PLAIN,                                                            # today's DCGAN
    "ema": {**PLAIN, "ema_halflife": 10_000},
    "diffaugment": {**PLAIN, "diffaugment": "color,translation,cutout"},
    "diffaugment_ema": {**PLAIN, "diffaugment": "color,translation,cutout", "ema_halflife": 10_000},
    "diffaugment_ema_hinge_sn": {**PLAIN, "diffaugment": "color,translation,cutout", "ema_halflife": 10_000,
                                 "loss": "hinge", "spectral_norm": True},
    "translation_ema": {**PLAIN, "diffaugment": "translation", "ema_halflife": 10_000},
    "diffaugment_ema_r1": {**PLAIN, "diffaugment": "color,translation,cutout", "ema_halflife": 10_000,
                           "r1_gamma": 0.1},
}
SCORED = 1000


def prepared_arrays(src: Path, size: int, channels: int, cache: Path) -> dict[str, np.ndarray]:
    out = cache / f"{src.parent.name}-{size}px-{channels}ch"
    if not (out / "test.npy").is_file():
        settings = data.Settings(size, channels, "crop", "white", 89478485)
        data.prepare(src, out, settings, 0.1, 0.1, 0.1, {}, progress=False)
    return {s: np.load(out / f"{s}.npy") for s in ("train", "val", "test")}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--images", type=int, default=60_000, help="training images seen by every run")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--configs", default="plain,diffaugment_ema,diffaugment_ema_hinge_sn")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "quality.json")
    ap.add_argument("--merge", action="store_true",
                    help="add these configurations to --out (same data and budget) instead of replacing it")
    args = ap.parse_args()
    if not args.data.is_dir():
        sys.exit(f"--data {args.data} not found (the Pokemon sprites live in ../shared/datasets/pokemon/images)")
    device = pick_device(args.device)
    arrays = prepared_arrays(args.data, args.image_size, args.channels, Path.home() / ".cache" / "dcgan-bench")
    train, val, test = arrays["train"], arrays["val"], arrays["test"]
    base = P.validate(P.read(ROOT / "params.yaml"), P.STAGE_KEYS["train"])
    base.update(device=str(device), sample_every=10**9, checkpoint_every=10**9, nproc=1, nnodes=1)
    bs = min(base["batch_size"], len(train))
    epochs = math.ceil(args.images / ((len(train) // bs) * bs))
    seen = epochs * (len(train) // bs) * bs
    swd = SWD(test, seed=0, device=device)
    floor = swd.distance(train)["mean"]
    print(f"{len(train)} train / {len(val)} val / {len(test)} test images at {args.image_size}px on {device}; "
          f"{epochs} epochs of batch {bs} = {seen} images per run; SWD floor (train vs test) {floor:.1f}")
    grids = args.out.parent / "quality"
    grids.mkdir(parents=True, exist_ok=True)
    results = {"device": str(device), "torch": torch.__version__, "image_size": args.image_size,
               "channels": args.channels, "images_seen": seen, "epochs": epochs, "batch_size": bs,
               "n_train": len(train), "n_val": len(val), "n_test": len(test), "swd_floor": floor,
               "scored_images": SCORED, "configs": {}}
    if args.merge and args.out.is_file():
        before = json.loads(args.out.read_text())
        if before.get("images_seen") != seen or before.get("image_size") != args.image_size:
            sys.exit(f"--merge: {args.out} has another budget or image size")
        results["configs"] = before["configs"]
    for name in args.configs.split(","):
        cfg = CONFIGS[name]
        row = {"params": cfg, "images_seen": seen, "device": str(device), "image_size": args.image_size,
               "seeds": [], "swd_best": [], "swd_last": [], "best_epoch": [], "wall_s": []}
        for seed in (int(s) for s in args.seeds.split(",")):
            p = {**base, **cfg, "seed": seed, "epochs": epochs}
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                summary = training.train(p, train, val, Path(tmp) / "models", Path(tmp) / "live",
                                         Path(tmp) / "train.json", progress=False, log=lambda *_: None)
                wall = time.perf_counter() - t0
                z = generation.noise(SCORED, p["nz"], 1)
                scores = {}
                for which in ("best", "last"):
                    G = models.load(Path(tmp) / "models" / ("generator_best.pt" if which == "best" else "generator.pt"),
                                    device)
                    fake = sampling.sample_images(G, z, device)
                    scores[which] = swd.distance(fake)["mean"]
                    if which == "best" and seed == 0:
                        pictures.save_png(pictures.grid(fake[:64], nrow=8), grids / f"{name}.png")
            row["seeds"].append(seed)
            row["swd_best"].append(scores["best"])
            row["swd_last"].append(scores["last"])
            row["best_epoch"].append(summary.get("best_epoch"))
            row["wall_s"].append(wall)
            print(f"{name:28s} seed {seed}: SWD best {scores['best']:.1f} (epoch {summary.get('best_epoch')}), "
                  f"last {scores['last']:.1f}; {wall:.0f}s", flush=True)
        row["swd_best_mean"] = float(np.mean(row["swd_best"]))
        row["swd_last_mean"] = float(np.mean(row["swd_last"]))
        results["configs"][name] = row
        args.out.write_text(json.dumps(results, indent=2) + "\n")   # after each configuration: partial results survive
    print(json.dumps({k: {"swd_best_mean": v["swd_best_mean"], "swd_last_mean": v["swd_last_mean"]}
                      for k, v in results["configs"].items()} | {"swd_floor": floor, "device": str(device)}))


if __name__ == "__main__":
    main()
