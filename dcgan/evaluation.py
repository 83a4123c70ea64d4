"""The evaluate stage: how good, and how original, are the generator's images?

Every registered metric (dcgan/metrics/, one module each) scores the generated images against the test
split, each score with a reference computed the same way, so a number can be judged:
- swd_*: sliced Wasserstein distance of generated vs test images; swd_floor_*: the same for a
  random subset of real training images of the same size, what a perfect model would reach.
- fid/kid (null when the Inception weights file is absent), fid_floor/kid_floor for real vs real.
- rkid: KID on the features of a fixed, seeded, randomly initialised network (no weights file: every
  machine computes it), rkid_floor for real vs real; it sees layout and shape, where SWD sees patches.
- c2st: how often a classifier on those random features tells generated from test images (0.5 = it
  cannot, 1 = always), c2st_floor for real vs real.
- d_*: the discriminator as a real-vs-fake classifier on the test images and as many generated ones
  (0.5 accuracy = it cannot tell them apart).
- memorisation_*: distance from generated images to their nearest training image, next to the
  same statistic for test images (real images the model never saw); a ratio well below 1 means
  the generator reproduces training images.
- inversion_*: image -> latent with the encoder and by refinement (when the encoder stage has run).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from . import metrics, pictures
from .files import atomic_write_text

SAMPLE_GRID = 64         # generated images in samples.png

# the keys evaluate() writes itself, before and after the metrics' keys
OWN_HELP = {
    "n_generated": "generated images scored (the generate stage's num_images)",
    "n_test": "images in the test split",
    "n_train": "images in the training split",
    "wall_s": "seconds the evaluation took",
}


def check_compatible(discriminator, train_arr: np.ndarray, test_arr: np.ndarray, fake: np.ndarray):
    """ValueError naming the mismatch when the model, the prepared data and the generated images don't fit."""
    for name, arr in (("train", train_arr), ("test", test_arr), ("generated", fake)):
        if arr.ndim != 4 or arr.dtype != np.uint8:
            raise ValueError(f"the {name} images must be uint8 (N, C, H, W), got {arr.dtype} {arr.shape}")
        if len(arr) < 2:
            hint = " (raise num_images)" if name == "generated" else ""
            raise ValueError(f"the {name} split has {len(arr)} images; evaluation needs at least 2{hint}")
    shape = test_arr.shape[1:]
    if train_arr.shape[1:] != shape:
        raise ValueError(f"train images {train_arr.shape[1:]} and test images {shape} differ: re-run prepare")
    if fake.shape[1:] != shape:
        raise ValueError(f"generated images {fake.shape[1:]} and test images {shape} differ: "
                         "re-run train and generate (`dvc repro`)")
    cfg = getattr(discriminator, "config", None)
    if cfg and (cfg.get("channels"), cfg.get("image_size")) != (shape[0], shape[1]):
        raise ValueError(f"the discriminator was trained on {cfg['channels']}x{cfg['image_size']}px images but the "
                         f"prepared data is {shape[0]}x{shape[1]}px: re-run train (`dvc repro train`)")


def read_generated(folder: Path, channels: int) -> np.ndarray:
    """The generate stage's PNG files (sorted by name) as uint8 (N, C, H, W)."""
    files = sorted(Path(folder).glob("*.png"))
    if not files:
        raise ValueError(f"no PNG files in {folder}: run `dvc repro generate` first")
    out = []
    for f in tqdm(files, desc="read generated", unit="img", leave=False, dynamic_ncols=True,
                  disable=len(files) < 2000):
        with Image.open(f) as im:
            a = np.asarray(im.convert("L" if channels == 1 else "RGB"))
        out.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    try:
        return np.stack(out)
    except ValueError:
        raise ValueError(f"the PNG files in {folder} differ in size: re-run `dvc repro generate`") from None


def key_help(key: str) -> str:
    """The line explaining a key of metrics/eval.json ('' for a key no metric declares)."""
    if key in OWN_HELP:
        return OWN_HELP[key]
    return next((line for m in metrics.in_order() if (line := m.describe(key))), "")


def headline_keys() -> list[str]:
    """The keys the evaluate stage prints: each metric's headline keys, in evaluation order, and the time."""
    return [key for m in metrics.in_order() for key in m.headline] + ["wall_s"]


def _finite(v) -> float | int | None:
    if v is None:
        return None
    if isinstance(v, (int, np.integer)):
        return int(v)
    v = float(v)
    return v if math.isfinite(v) else None


def evaluate(fake: np.ndarray, discriminator, train_arr: np.ndarray, test_arr: np.ndarray, p: dict,
             out_json: Path, out_dir: Path, device: str | torch.device = "cpu", *,
             extractor: metrics.FeatureExtractor | None | str = "auto", progress: bool = True,
             log: Callable[[str], None] = print, generator=None, encoder=None) -> dict:
    """Score generated images `fake` (uint8 N, C, H, W) against the test split with every registered metric;
    write `out_json` (flat numbers or null) and the pictures in `out_dir`: the metrics' (confusion_matrix.png,
    memorisation.png) and samples.png.

    p: the evaluate params (fid_weights, memorisation_k, invert_steps, seed; device is taken from
    `device`). extractor: "auto" loads the FID Inception network from p['fid_weights'] or the
    torch hub cache (None with a message when absent); None skips FID/KID; any object with
    `features(uint8 (N, C, H, W)) -> (N, D)` is used as is.
    """
    t0 = time.perf_counter()
    check_compatible(discriminator, train_arr, test_arr, fake)
    inception = p.get("fid_weights", "") if isinstance(extractor, str) else extractor
    ctx = metrics.EvalContext(fake, train_arr, test_arr, discriminator, p, device, out_dir, generator=generator,
                              encoder=encoder, inception=inception, log=log, progress=progress)
    res: dict[str, float | int | None] = {"n_generated": len(fake), "n_test": len(test_arr), "n_train": len(train_arr)}
    for metric in metrics.in_order():
        scores = metric.evaluate(ctx)
        if clash := scores.keys() & (res.keys() | OWN_HELP.keys()):
            raise ValueError(f"metric '{metric.name}' writes keys that are written already: {', '.join(sorted(clash))}")
        if unexplained := [key for key in scores if not metric.describe(key)]:
            raise ValueError(f"metric '{metric.name}' has no help for {', '.join(unexplained)}: add it to its `help`")
        res.update(scores)
    pictures.save_png(pictures.grid(fake[:SAMPLE_GRID], nrow=8), ctx.out_dir / "samples.png")

    res["wall_s"] = time.perf_counter() - t0
    res = {key: _finite(v) for key, v in res.items()}
    atomic_write_text(out_json, json.dumps(res, indent=2) + "\n")
    return res
