"""Which recipe gives good samples from a few hundred images, at the budgets the few-shot field trains for?

    python benchmarks/quality.py [--configs dcgan_diffaugment_ema,fastgan] [--image-size 64]
                                 [--budgets 50000,100000,200000,300000] [--seeds 0] [--device auto]
                                 [--data ../shared/datasets/pokemon/images] [--recommend fastgan]

The Pokemon sprites are prepared once (as the prepare stage does: RGB, crop, white background, 10% val and
10% test). Each configuration trains with each seed through the train stage's own code (dcgan.training.train)
with params.yaml's values for everything the configuration does not set, in a run folder of its own under
~/.cache/dcgan-bench/runs/ (--runs): to the first budget (images seen), then on to the next from its
checkpoint, and so on. Resume is bit-identical, so a run stopped between budgets, killed, or continued in
another session gives the numbers one uninterrupted run gives; a budget already measured is not trained again.

At each budget the generator the pipeline would publish as `last` (the EMA where it is on) is scored on the
test split it never saw by every metric that scores during training (SWD x1e3; rkid, KID x1e3 on random
features; c2st, how often a classifier on those features tells generated from real, 0.5 = never; 1,000
samples; lower is better), beside the real-vs-real floors (training images vs test); its grid of 64
fixed-noise samples is written to benchmarks/results/quality/ and the generator kept in the run's
snapshots/ folder, so that --rescore can score every budget again when the metrics change. Everything merges into
benchmarks/results/quality.json: runs["64px/fastgan/seed0"]["budgets"], floors["64px"], and with --recommend
the params of that configuration under "recommended" (what a user passes with -S). The last line printed
is a JSON summary.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import numpy as np
import torch

from dcgan import data, pictures, sampling, training
from dcgan import model as models
from dcgan import params as P
from dcgan.device import pick_device
from dcgan.files import atomic_write_text
from dcgan.quality import QualityProbe

DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "pokemon" / "images"
CACHE = Path.home() / ".cache" / "dcgan-bench"
OUT = ROOT / "benchmarks" / "results" / "quality.json"
PLAIN = {"arch": "dcgan", "diffaugment": "", "ema_halflife": 0, "loss": "bce", "spectral_norm": False,
         "r1_gamma": 0.0}
DIFFAUGMENT = "color,translation,cutout"
CONFIGS = {
    "plain": PLAIN,                                                              # the DCGAN paper's recipe
    "dcgan_diffaugment_ema": {**PLAIN, "diffaugment": DIFFAUGMENT, "ema_halflife": 10_000},
    "dcgan_diffaugment_ema_hinge_sn": {**PLAIN, "diffaugment": DIFFAUGMENT, "ema_halflife": 10_000,
                                       "loss": "hinge", "spectral_norm": True},
    # FastGAN's own recipe: hinge loss, DiffAugment color + translation, lr 2e-4, betas (0.5, 0.999); an EMA.
    # Half as wide as the DCGAN: its 3x3 convs at every resolution cost about what DCGAN at 64 costs per image
    "fastgan": {**PLAIN, "arch": "fastgan", "loss": "hinge", "diffaugment": "color,translation",
                "ema_halflife": 10_000, "ngf": 32, "ndf": 32},
}
SCORED = 1000
GRID_SEED = 2024     # the grids' noise: the same 64 latents at every budget of every run


def prepared_arrays(src: Path, size: int, channels: int) -> dict[str, np.ndarray]:
    out = CACHE / f"{src.parent.name}-{size}px-{channels}ch"
    if not (out / "test.npy").is_file():
        settings = data.Settings(size, channels, "crop", "white", 89478485)
        data.prepare(src, out, settings, 0.1, 0.1, 0.1, {}, progress=False)
    return {s: np.load(out / f"{s}.npy", mmap_mode="r") for s in ("train", "val", "test")}


def read_results(path: Path) -> dict:
    results = json.loads(path.read_text()) if path.is_file() else {}
    if "runs" not in results:     # the fixed-budget layout of before (in git history): start anew
        results = {}
    for key in ("recommended", "floors", "runs"):
        results.setdefault(key, {})
    return results


def write_results(path: Path, results: dict):
    atomic_write_text(path, json.dumps(results, indent=2) + "\n")   # after every budget: nothing measured is lost


def merge(parts: list[Path], out: Path):
    """Runs and floors from results files written elsewhere, into `out`; a run there with the same key is
    replaced. Their generators stayed where they were trained: their snapshot paths are dropped."""
    results = read_results(out)
    for part in parts:
        got = read_results(part)
        results["floors"].update(got["floors"])
        for key, run in got["runs"].items():
            for row in run["budgets"]:
                row.pop("snapshot", None)
            results["runs"][key] = run
        print(f"{part}: {', '.join(got['runs']) or 'no runs'}")
    write_results(out, results)


def every(n: int):
    """A training log that prints one epoch line in n (and every other line)."""
    def log(line: str):
        if not line.startswith("epoch ") or int(line.split()[1].split("/")[0]) % n == 0:
            print("   ", line, flush=True)
    return log


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--budgets", default="50000,100000,200000,300000", help="images seen at each measurement")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--configs", default="dcgan_diffaugment_ema,fastgan", help=", ".join(CONFIGS))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a param for every configuration (e.g. batch_size=64); YAML values")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--runs", type=Path, default=CACHE / "runs", help="where the runs' folders live")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--recommend", choices=list(CONFIGS), help="write this configuration under 'recommended'")
    ap.add_argument("--merge", nargs="+", type=Path, metavar="PART",
                    help="only merge these results files (runs made elsewhere, e.g. quality_gpu.sh) into --out")
    ap.add_argument("--rescore", action="store_true",
                    help="score every budget's saved generator again with today's metrics (before training on)")
    args = ap.parse_args()
    if args.merge:
        return merge(args.merge, args.out)
    if not args.data.is_dir():
        sys.exit(f"--data {args.data} not found (the Pokemon sprites live in ../shared/datasets/pokemon/images)")
    unknown = [c for c in args.configs.split(",") if c not in CONFIGS]
    if unknown:
        sys.exit(f"--configs: unknown {', '.join(unknown)} (choose from {', '.join(CONFIGS)})")
    import yaml
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    device = pick_device(args.device)
    arrays = prepared_arrays(args.data, args.image_size, args.channels)
    train, val, test = arrays["train"], arrays["val"], arrays["test"]
    base = P.validate(P.read(ROOT / "params.yaml"), P.STAGE_KEYS["train"])
    base.update(device=str(device), sample_every=10**9, checkpoint_every=10, nproc=1, nnodes=1, eval_every=10**9,
                image_size=args.image_size, **overrides)
    size = f"{args.image_size}px"
    probe = QualityProbe(np.asarray(test), base["nz"], device, seed=0, n=SCORED, fid_weights=None, log=print)
    results = read_results(args.out)
    floors = results["floors"][size] = {k: v for k, v in probe.score_images(np.asarray(train)).items()}
    floors.update(n_train=len(train), n_val=len(val), n_test=len(test))
    print(f"{len(train)} train / {len(val)} val / {len(test)} test images at {size} on {device}; "
          f"real-vs-real floors (train vs test): " + ", ".join(f"{k} {v:.2f}" for k, v in floors.items()
                                                                  if isinstance(v, float)))
    grids = args.out.parent / "quality"
    grids.mkdir(parents=True, exist_ok=True)
    budgets = sorted(int(b) for b in args.budgets.split(","))
    for name in args.configs.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            p = {**base, **CONFIGS[name], "seed": seed}
            P.validate(p, P.STAGE_KEYS["train"])
            bs = min(p["batch_size"], len(train))
            per_epoch = (len(train) // bs) * bs
            key = f"{size}/{name}/seed{seed}"
            run = results["runs"].setdefault(key, {"params": {**CONFIGS[name], **overrides, "seed": seed},
                                                   "device": str(device), "budgets": []})
            folder = args.runs / key.replace("/", "-")
            if args.rescore:      # the metrics changed, not the training: score the snapshots again
                for row in run["budgets"]:
                    if Path(row.get("snapshot", "")).is_file():
                        row.update(probe.score(models.load(row["snapshot"], device)))
                        print(f"{key} at {row['images_seen']} images, scored again: " + ", ".join(
                            f"{k} {row[k]:.3f}" for k in floors if k in row), flush=True)
                write_results(args.out, results)
            for budget in budgets:
                epochs = math.ceil(budget / per_epoch)
                if any(b["epochs"] == epochs for b in run["budgets"]):
                    continue
                print(f"{key}: training to {epochs * per_epoch} images (epoch {epochs}, batch {bs})", flush=True)
                summary = training.train({**p, "epochs": epochs}, train, val, folder / "models", folder / "live",
                                         folder / "train.json", progress=False, log=every(25))
                snapshot = folder / "snapshots" / f"generator-{epochs * per_epoch}.pt"
                snapshot.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(folder / "models" / "generator.pt", snapshot)   # to score again (--rescore)
                G = models.load(snapshot, device)
                scores = probe.score(G)
                grid = grids / f"{key.replace('/', '-')}-{round(epochs * per_epoch / 1000)}k.png"
                noise = torch.randn(64, p["nz"], generator=torch.Generator().manual_seed(GRID_SEED))
                pictures.save_png(pictures.grid(sampling.sample_images(G, noise, device), nrow=8), grid)
                row = {"images_seen": epochs * per_epoch, "epochs": epochs, **scores,
                       "wall_s": summary["wall_s"], "images_per_s": summary["images_per_s"],
                       "grid": str(grid.relative_to(ROOT)), "snapshot": str(snapshot)}
                run["budgets"] = sorted(run["budgets"] + [row], key=lambda b: b["epochs"])
                write_results(args.out, results)
                print(f"{key} at {row['images_seen']} images: " + ", ".join(
                    f"{k} {scores[k]:.2f} (floor {floors[k]:.2f})" for k in scores) +
                    f"; {summary['wall_s']:.0f}s of training so far; {row['grid']}", flush=True)
    if args.recommend:
        results["recommended"] = {k: v for k, v in CONFIGS[args.recommend].items() if v != base.get(k)} | overrides
        write_results(args.out, results)
    print(json.dumps({key: run["budgets"][-1] if run["budgets"] else None for key, run in results["runs"].items()}
                     | {"floors": results["floors"], "recommended": results["recommended"]}))


if __name__ == "__main__":
    main()
