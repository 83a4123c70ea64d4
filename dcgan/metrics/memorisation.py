"""Memorisation: the nearest training image (L2 in pixel space) of each generated image, next to the same
statistic for test images (real images the model never saw); and memorisation.png, the closest pairs."""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from .. import pictures
from . import REGISTRY, EvalContext, Metric, Scores

MEMORISATION_PAIRS = 16  # closest generated | training pairs in memorisation.png


@dataclass
class Nearest:
    indices: np.ndarray    # (K,) index into the reference (training) set
    distances: np.ndarray  # (K,) L2 distance in pixel space, uint8 values (0..255) as floats
    median: float


def nearest_neighbours(queries: np.ndarray, reference: np.ndarray, device: str | torch.device = "cpu",
                       candidates: int = 4, max_block: int = 1 << 26, progress: bool = False,
                       desc: str = "nearest") -> Nearest:
    """For each query image the nearest reference image by L2 distance over all C*H*W pixel values.

    torch.cdist (matrix-multiply form) over blocks of the reference set shortlists `candidates`
    per query; the shortlist is then re-ranked by exact differences in float64, so an exact copy
    reports distance 0 and rounding in the fast pass cannot pick a wrong neighbour.
    """
    if queries.shape[1:] != reference.shape[1:]:
        raise ValueError(f"query images {queries.shape[1:]} and reference images {reference.shape[1:]} differ")
    if len(reference) == 0 or len(queries) == 0:
        raise ValueError("nearest_neighbours needs at least one query and one reference image")
    device = torch.device(device)
    dim = int(np.prod(queries.shape[1:]))
    queries = np.ascontiguousarray(queries).reshape(len(queries), dim)
    with warnings.catch_warnings():  # a read-only memmap of the training set: only read here, never copied
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        ref_flat = torch.from_numpy(np.ascontiguousarray(reference).reshape(len(reference), dim))
    k = min(candidates, len(reference))
    qrows = max(1, min(len(queries), max_block // dim, 4096))
    rows = max(1, min(len(reference), max_block // dim, max_block // qrows))
    blocks = -(-len(queries) // qrows) * -(-len(reference) // rows)
    bar = tqdm(total=blocks, desc=desc, unit="block", disable=not progress, leave=False, dynamic_ncols=True)
    idx, dist = [], []
    for qs in range(0, len(queries), qrows):
        q = torch.from_numpy(queries[qs:qs + qrows]).to(device).float() - 127.5
        best_d = torch.full((len(q), 0), float("inf"), device=device)
        best_i = torch.zeros((len(q), 0), dtype=torch.long, device=device)
        for rs in range(0, len(reference), rows):
            r = ref_flat[rs:rs + rows].to(device).float() - 127.5
            dk, ik = torch.cdist(q, r).topk(min(k, len(r)), dim=1, largest=False)
            both_d, both_i = torch.cat([best_d, dk], 1), torch.cat([best_i, ik + rs], 1)
            best_d, order = both_d.topk(min(k, both_d.shape[1]), dim=1, largest=False)
            best_i = both_i.gather(1, order)
            bar.update()
        best_i = best_i.cpu()
        # exact re-rank of the shortlist, in float64, a few queries at a time
        sub = max(1, (1 << 24) // (k * dim))
        for j in range(0, len(q), sub):
            cand = best_i[j:j + sub]
            qd = torch.from_numpy(queries[qs + j:qs + j + len(cand)]).double()
            exact = ((ref_flat[cand].double() - qd[:, None, :]) ** 2).sum(-1).sqrt()
            pick = exact.argmin(dim=1, keepdim=True)
            idx.append(cand.gather(1, pick)[:, 0].numpy())
            dist.append(exact.gather(1, pick)[:, 0].numpy())
    bar.close()
    idx, dist = np.concatenate(idx), np.concatenate(dist)
    return Nearest(indices=idx, distances=dist, median=float(np.median(dist)))


def memorisation(generated: np.ndarray, train: np.ndarray, device: str | torch.device = "cpu",
                 progress: bool = False, **kw) -> Nearest:
    """Nearest training image of each generated image (uint8 (K, C, H, W) vs (N, C, H, W)):
    indices, distances and their median; see `nearest_neighbours`."""
    return nearest_neighbours(generated, train, device=device, progress=progress,
                              **{"desc": "memorisation", **kw})


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


@REGISTRY.register("memorisation")
class MemorisationMetric(Metric):
    help = {
        "memorisation_k": "generated images compared with every training image (memorisation_k)",
        "memorisation_median_distance": "median L2 distance (pixel values 0-255) of a generated image to its "
                                        "nearest training image",
        "memorisation_min_distance": "the smallest of those distances; 0 = an exact copy of a training image",
        "memorisation_median_distance_test": "the same for unseen test images: the reference",
        "memorisation_ratio": "generated / test median distance; well below 1 = copies of training images",
    }
    headline = ("memorisation_median_distance", "memorisation_median_distance_test")
    lower_is_better = False
    order = 40

    def evaluate(self, ctx: EvalContext) -> Scores:
        # generated -> nearest training image, and test -> training as the reference
        k = min(ctx.params["memorisation_k"], len(ctx.fake))
        near = memorisation(ctx.fake[:k], ctx.train, device=ctx.device, progress=ctx.progress)
        ref = nearest_neighbours(ctx.test_subset(k), ctx.train, device=ctx.device, progress=ctx.progress,
                                 desc="memorisation reference")
        closest = np.argsort(near.distances, kind="stable")[:MEMORISATION_PAIRS]
        pictures.save_png(pairs_columns(ctx.fake[:k][closest], ctx.train[near.indices[closest]]),
                          ctx.out_dir / "memorisation.png")
        return dict(memorisation_k=k, memorisation_median_distance=near.median,
                    memorisation_min_distance=float(near.distances.min()),
                    memorisation_median_distance_test=ref.median,
                    memorisation_ratio=near.median / ref.median if ref.median > 0 else None)
