"""The evaluate stage: how good, and how original, are the generator's images?

Every score comes with a reference computed the same way, so a number can be judged:
- swd_*: sliced Wasserstein distance of generated vs test images; swd_floor_*: the same for a
  random subset of real training images of the same size, what a perfect model would reach.
- fid/kid (null when the Inception weights file is absent), fid_floor/kid_floor for real vs real.
- d_*: the discriminator as a real-vs-fake classifier on the test images and as many generated ones
  (0.5 accuracy = it cannot tell them apart).
- memorisation_*: distance from generated images to their nearest training image, next to the
  same statistic for test images (real images the model never saw); a ratio well below 1 means
  the generator reproduces training images.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from . import metrics, pictures
from .files import atomic_write_text
from .model import frozen_batchnorm

GEN_BATCH = 256
D_BATCH = 64           # the default training batch size
SAMPLE_GRID = 64         # generated images in samples.png
MEMORISATION_PAIRS = 16  # closest generated | training pairs in memorisation.png


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


@torch.no_grad()
def generate(generator, n: int, seed: int, device, progress: bool = True) -> np.ndarray:
    """n images (uint8) from noise drawn on the CPU with `seed`, so the set is the same on any device."""
    generator.eval()
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in tqdm(range(0, n, GEN_BATCH), desc="generate", unit="batch", disable=not progress, leave=False,
                  dynamic_ncols=True):
        z = torch.randn(min(GEN_BATCH, n - i), generator.nz, generator=g)
        out.append(pictures.to_uint8(generator(z.to(device))))
    return np.concatenate(out)


@torch.no_grad()
def logits(discriminator, images: np.ndarray, device, batch: int = D_BATCH) -> np.ndarray:
    """D's logits as in training: batch statistics over batches of one kind (all real or all generated),
    running statistics left untouched. (The running statistics average real-only and fake-only
    batches, so eval mode describes neither and can call almost every real image fake.)"""
    was_training = discriminator.training
    discriminator.train()
    parts = np.array_split(np.arange(len(images)), max(1, -(-len(images) // batch)))  # no batch of one
    try:
        with frozen_batchnorm(discriminator):
            out = [discriminator(pictures.to_float(images[idx]).to(device)).float().cpu().numpy() for idx in parts]
    finally:
        discriminator.train(was_training)
    return np.concatenate(out)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: bitmap font only
        return ImageFont.load_default()


def confusion_png(confusion: np.ndarray, accuracy: float) -> Image.Image:
    """A 2x2 table: rows = true class, columns = D's verdict; green = right, red = wrong, shade = row share."""
    cell, left, top, pad = 170, 150, 110, 40
    w, h = left + 2 * cell + pad, top + 2 * cell + 60
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    big, mid, small = _font(30), _font(18), _font(15)
    title = f"Discriminator: real vs generated, accuracy {accuracy:.1%}" if math.isfinite(accuracy) \
        else "Discriminator: real vs generated"
    d.text((w / 2, 22), title, fill="#222", font=mid, anchor="mm")
    d.text((left + cell, top - 50), "D says", fill="#555", font=small, anchor="mm")
    names = ("fake", "real")
    for j, name in enumerate(names):
        d.text((left + j * cell + cell / 2, top - 22), name, fill="#222", font=mid, anchor="mm")
    for i, name in enumerate(names):
        y = top + i * cell + cell / 2
        d.text((left - 20, y), f"{name} image", fill="#222", font=mid, anchor="rm")
        row = confusion[i].sum()
        for j in range(2):
            count = int(confusion[i, j])
            share = count / row if row else 0.0
            base = (46, 160, 67) if i == j else (214, 69, 65)
            colour = tuple(round(255 - share * (255 - c)) for c in base)
            x0, y0 = left + j * cell, top + i * cell
            d.rectangle([x0, y0, x0 + cell - 4, y0 + cell - 4], fill=colour)
            ink = "white" if share > 0.55 else "#222"
            d.text((x0 + cell / 2 - 2, y0 + cell / 2 - 16), f"{count}", fill=ink, font=big, anchor="mm")
            d.text((x0 + cell / 2 - 2, y0 + cell / 2 + 20), f"{share:.0%} of {name}", fill=ink, font=small, anchor="mm")
    d.text((w / 2, h - 22), "rows: true class, columns: D's verdict (logit > 0 = real)", fill="#777",
           font=small, anchor="mm")
    return img


def pairs_columns(left: np.ndarray, right: np.ndarray, per_column: int = 4, gap: int = 12) -> Image.Image:
    """(left | right) pairs from pictures.pairs, `per_column` to a column, columns side by side."""
    cols = [pictures.pairs(left[i:i + per_column], right[i:i + per_column]) for i in range(0, len(left), per_column)]
    w = sum(c.width for c in cols) + gap * (len(cols) - 1)
    canvas = Image.new("RGB", (w, cols[0].height), (255, 255, 255))
    x = 0
    for c in cols:
        canvas.paste(c, (x, 0))
        x += c.width + gap
    return canvas


INVERSION_IMAGES = 64  # test images projected three ways


def inversion_modes(G, E, images: np.ndarray, steps: int, device, seed: int = 0, progress: bool = False) -> dict:
    """Reconstruction MSE (in [-1, 1] units, mean over images) and wall time of image -> latent three ways:
    the encoder alone, the encoder then `steps` of refinement, and refinement alone from a random start."""
    from .generation import invert
    out = {}
    for name, enc, n_steps in (("encoder", E, 0), ("encoder_refined", E, steps), ("refined", None, steps)):
        t0 = time.perf_counter()
        _, err = invert(G, images, n_steps, device, seed=seed, encoder=enc, progress=progress)
        out[f"inversion_mse_{name}"] = float(err.mean())
        out[f"inversion_s_{name}"] = time.perf_counter() - t0
    out["inversion_images"], out["inversion_steps"] = len(images), steps
    return out


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
    """Score generated images `fake` (uint8 N, C, H, W) against the test split; write `out_json` (flat numbers or null) and the
    pictures confusion_matrix.png, memorisation.png and samples.png in `out_dir`.

    p: the evaluate params (fid_weights, memorisation_k, seed; device is taken from
    `device`). extractor: "auto" loads the FID Inception network from p['fid_weights'] or the
    torch hub cache (None with a message when absent); None skips FID/KID; any object with
    `features(uint8 (N, C, H, W)) -> (N, D)` is used as is.
    """
    t0 = time.perf_counter()
    device = torch.device(device)
    out_dir = Path(out_dir)
    check_compatible(discriminator, train_arr, test_arr, fake)
    n_gen, seed = len(fake), p["seed"]
    rng = np.random.default_rng(seed)

    pick = np.sort(rng.choice(len(train_arr), min(n_gen, len(train_arr)), replace=False))
    # all of them: the (memory-mapped) array itself, not a copy of the whole split
    train_sub = train_arr if len(pick) == len(train_arr) else train_arr[pick]
    res: dict[str, float | int | None] = {"n_generated": n_gen, "n_test": len(test_arr), "n_train": len(train_arr)}

    # sliced Wasserstein distance, model and real-vs-real floor against the same test descriptors
    log(f"SWD: {n_gen} generated and {len(train_sub)} training images vs {len(test_arr)} test images")
    swd = metrics.SWD(test_arr, seed=seed, device=device, progress=progress)
    for prefix, images in (("swd", fake), ("swd_floor", train_sub)):
        dist = swd.distance(images, desc=prefix)
        res[prefix] = dist["mean"]
        for r in swd.resolutions:
            res[f"{prefix}_{r}px"] = dist[r]

    # FID / KID
    if isinstance(extractor, str):
        extractor = metrics.load_inception(p.get("fid_weights", ""), device, log=log, progress=progress)
    res.update(fid=None, kid=None, kid_std=None, fid_floor=None, kid_floor=None)
    if extractor is not None:
        log(f"Inception features of {n_gen + len(test_arr) + len(train_sub)} images")
        f_test = extractor.features(test_arr)
        f_fake = extractor.features(fake)
        f_train = extractor.features(train_sub)
        res["fid"] = metrics.fid(f_fake, f_test)
        res["kid"], res["kid_std"] = metrics.kid(f_fake, f_test, seed=seed)
        res["fid_floor"] = metrics.fid(f_train, f_test)
        res["kid_floor"], _ = metrics.kid(f_train, f_test, seed=seed)

    def test_subset(n: int) -> np.ndarray:  # a random one: the split may be ordered (e.g. by class)
        return test_arr if n >= len(test_arr) else test_arr[np.sort(rng.choice(len(test_arr), n, replace=False))]

    # the discriminator as a classifier: the test images (all, unless fewer are generated) and as many generated
    m = min(len(test_arr), n_gen)
    clf = metrics.classifier_report(logits(discriminator, test_subset(m), device),
                                    logits(discriminator, fake[:m], device))
    (tn, fp), (fn, tp) = clf["confusion"].tolist()
    res.update(d_accuracy=clf["accuracy"], d_accuracy_real=clf["real_accuracy"],
               d_accuracy_fake=clf["fake_accuracy"], d_tn=tn, d_fp=fp, d_fn=fn, d_tp=tp)

    # memorisation: generated -> nearest training image, and test -> training as the reference
    k = min(p["memorisation_k"], n_gen)
    near = metrics.memorisation(fake[:k], train_arr, device=device, progress=progress)
    ref = metrics.nearest_neighbours(test_subset(k), train_arr, device=device,
                                     progress=progress, desc="memorisation reference")
    res.update(memorisation_k=k, memorisation_median_distance=near.median,
               memorisation_min_distance=float(near.distances.min()),
               memorisation_median_distance_test=ref.median,
               memorisation_ratio=near.median / ref.median if ref.median > 0 else None)

    # image -> latent: encoder alone, encoder + refinement, refinement alone
    if generator is not None and encoder is not None:
        log(f"inversion of {min(len(test_arr), INVERSION_IMAGES)} test images, three ways")
        res.update(inversion_modes(generator, encoder, np.array(test_subset(INVERSION_IMAGES)),
                                   p.get("invert_steps", 100), device, seed=seed))

    # pictures
    pictures.save_png(confusion_png(clf["confusion"], clf["accuracy"]), out_dir / "confusion_matrix.png")
    closest = np.argsort(near.distances, kind="stable")[:MEMORISATION_PAIRS]
    pictures.save_png(pairs_columns(fake[:k][closest], train_arr[near.indices[closest]]),
                      out_dir / "memorisation.png")
    pictures.save_png(pictures.grid(fake[:SAMPLE_GRID], nrow=8), out_dir / "samples.png")

    res["wall_s"] = time.perf_counter() - t0
    res = {key: _finite(v) for key, v in res.items()}
    atomic_write_text(out_json, json.dumps(res, indent=2) + "\n")
    return res
