"""Sliced Wasserstein distance (SWD) on Laplacian-pyramid patches, after Karras et al. 2018
("Progressive growing of GANs", their `metrics/sliced_wasserstein.py`): a Laplacian pyramid down to
16 px (of any image size: an odd side halves rounding up), 128 random 7x7 neighbourhoods per image and
level, descriptors normalised per channel, 4 x 128 random unit directions, and the mean 1-D Wasserstein-1
distance between the projected sets. Reported per level (x 1e3, as in the paper) and averaged. One
deliberate change: both sets are normalised with the mean/std of the *real* set (the original normalises
each set by its own statistics, which hides a global brightness or contrast shift of the generated images).

In the evaluate stage: generated vs test, and the real-vs-real floor (training subset vs test). In
training: generated vs val, the default score the best generator is chosen by (the `best_by` param).
"""
from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import REGISTRY, Context, EvalContext, Metric, Scores

_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0
_GAUSS_5x5 = torch.outer(_BINOMIAL, _BINOMIAL)  # the 5x5 kernel of cv2.pyrDown / the paper's code


def _blur(x: torch.Tensor) -> torch.Tensor:
    """5x5 binomial blur per channel with mirror borders (scipy 'mirror' == torch 'reflect')."""
    c = x.shape[1]
    w = _GAUSS_5x5.to(x.device, x.dtype).expand(c, 1, 5, 5)
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), w, groups=c)


def pyr_down(x: torch.Tensor) -> torch.Tensor:
    """Blur and keep the even rows and columns: an odd side of n pixels becomes (n + 1) / 2."""
    return _blur(x)[:, :, ::2, ::2]


def pyr_up(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Back to the size (h, w) of the finer level that pyr_down made x from: x's pixels on its even rows and
    columns, zeros between, blurred. For an odd side the last sample lands on the last row, so the mirror
    border is the same at both ends, as in pyr_down."""
    n, c, _, _ = x.shape
    up = x.new_zeros(n, c, *size)
    up[:, :, ::2, ::2] = x
    return _blur(up) * 4.0


def swd_resolutions(size: int, min_res: int = 16) -> list[int]:
    """Resolutions of the pyramid levels: size, then halved (rounding up, as pyr_down does) while at least
    min_res >= 2 (at least one level). Powers of two: size, size/2, ... min_res."""
    res, out = size, []
    while res >= min_res or not out:
        out.append(res)
        res = -(-res // 2)
    return out


def laplacian_pyramid(x: torch.Tensor, num_levels: int) -> list[torch.Tensor]:
    """Finest Laplacian band first; the last level is the low-pass (Gaussian) residual."""
    pyramid = [x.float()]
    for _ in range(1, num_levels):
        pyramid.append(pyr_down(pyramid[-1]))
        pyramid[-2] = pyramid[-2] - pyr_up(pyramid[-1], pyramid[-2].shape[-2:])
    return pyramid


def _sample_patches(level: torch.Tensor, rng: np.random.Generator, per_image: int, nhood: int) -> torch.Tensor:
    """`per_image` random nhood x nhood neighbourhoods of each image: (N * per_image, C, nhood, nhood)."""
    n, c, h, w = level.shape
    r = nhood // 2
    if h < nhood or w < nhood:
        raise ValueError(f"pyramid level of {h}x{w} px is smaller than a {nhood}x{nhood} patch")
    count = n * per_image
    img = torch.arange(n).repeat_interleave(per_image)
    ys = torch.from_numpy(rng.integers(r, h - r, size=count))
    xs = torch.from_numpy(rng.integers(r, w - r, size=count))
    off = torch.arange(-r, r + 1)
    yy = (ys[:, None, None] + off[None, :, None]).to(level.device)
    xx = (xs[:, None, None] + off[None, None, :]).to(level.device)
    patches = level[img[:, None, None].to(level.device), :, yy, xx]  # (count, nhood, nhood, C)
    return patches.permute(0, 3, 1, 2).contiguous()


@functools.lru_cache(maxsize=8)
def _quantile_grid(n: int, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge the steps of two empirical quantile functions (n and m samples): for each piece of
    [0, 1] on which both are constant, its width and the (0-based) order statistic of each set."""
    u = np.union1d(np.arange(1, n + 1, dtype=np.int64) * m, np.arange(1, m + 1, dtype=np.int64) * n)  # in 1/(n m)
    widths = np.diff(u, prepend=0) / (n * m)
    return widths.astype(np.float32), -(-u // m) - 1, -(-u // n) - 1


def w1_sorted(sa: np.ndarray, sb: np.ndarray) -> np.ndarray:
    """Row-wise 1-D Wasserstein-1 distance of sorted samples sa (D, n) and sb (D, m).

    Equal sizes: mean |sa - sb| (the paper's formula). Unequal sizes: the exact integral of the
    difference of the two quantile functions.
    """
    n, m = sa.shape[1], sb.shape[1]
    if n == m:
        return np.abs(sa - sb).mean(axis=1, dtype=np.float64)
    widths, ia, ib = _quantile_grid(n, m)
    diff = np.take(sa, ia, axis=1)
    diff -= np.take(sb, ib, axis=1)
    return np.abs(diff, out=diff) @ widths


def sliced_wasserstein(a: np.ndarray, b: np.ndarray, dir_repeats: int = 4, dirs_per_repeat: int = 128,
                       seed: int = 0, chunk: int = 64, bar: tqdm | None = None) -> float:
    """Mean over random unit directions of the 1-D W1 distance of the projections of a (n, d) and b (m, d)."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"descriptor arrays of shapes {a.shape} and {b.shape} cannot be compared")
    rng = np.random.default_rng(seed)
    total, count = 0.0, 0
    for _ in range(dir_repeats):
        dirs = rng.standard_normal((dirs_per_repeat, a.shape[1]))
        dirs = (dirs / np.linalg.norm(dirs, axis=1, keepdims=True)).astype(np.float32)
        for j in range(0, dirs_per_repeat, chunk):
            d = dirs[j:j + chunk]
            # (directions, samples) layout: numpy's SIMD sort along the last axis is ~10x torch's on CPU
            pa, pb = np.sort(d @ a.T, axis=1), np.sort(d @ b.T, axis=1)
            total += float(w1_sorted(pa, pb).sum())
            count += len(d)
        if bar is not None:
            bar.update()
    return total / count


class SWD:
    """SWD against a fixed real set: descriptors and their normalisation are computed once.

    >>> swd = SWD(test_images)                  # uint8 (N, C, H, W)
    >>> swd.distance(generated)                 # {32: ..., 16: ..., 'mean': ...} (x 1e3)
    Deterministic for a given seed; the same seed draws the same patch positions for sets of the
    same shape, so an identical set scores exactly 0.
    """

    def __init__(self, real: np.ndarray, seed: int = 0, nhood: int = 7, per_image: int = 128,
                 dir_repeats: int = 4, dirs_per_repeat: int = 128, min_res: int = 16, batch: int = 256,
                 device: str | torch.device = "cpu", progress: bool = False):
        if real.ndim != 4 or real.shape[2] != real.shape[3]:
            raise ValueError(f"expected square images (N, C, H, W), got shape {real.shape}")
        self.seed, self.nhood, self.per_image, self.batch = seed, nhood, per_image, batch
        self.dir_repeats, self.dirs_per_repeat = dir_repeats, dirs_per_repeat
        self.device, self.progress = torch.device(device), progress
        self.shape = real.shape[1:]
        self.resolutions = swd_resolutions(real.shape[2], min_res)
        with self._bar(real, "SWD real patches") as bar:
            desc = self._descriptors(real, bar)
        self.mean = [d.mean(dim=(0, 2, 3), keepdim=True) for d in desc]
        self.std = [d.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-8) for d in desc]
        self.real = self._finalise(desc)

    def _bar(self, images: np.ndarray, desc: str, extra: int = 0) -> tqdm:
        steps = -(-len(images) // self.batch) + extra
        return tqdm(total=steps, desc=desc, unit="step", disable=not self.progress, leave=False, dynamic_ncols=True)

    def _descriptors(self, images: np.ndarray, bar: tqdm) -> list[torch.Tensor]:
        rng = np.random.default_rng(self.seed)
        out: list[list[torch.Tensor]] = [[] for _ in self.resolutions]
        for i in range(0, len(images), self.batch):
            x = torch.from_numpy(np.array(images[i:i + self.batch])).to(self.device)  # a copy: images may be a read-only memmap
            for lvl, level in enumerate(laplacian_pyramid(x, len(self.resolutions))):
                out[lvl].append(_sample_patches(level, rng, self.per_image, self.nhood))
            bar.update()
        return [torch.cat(d) for d in out]

    def _finalise(self, desc: list[torch.Tensor]) -> list[np.ndarray]:
        return [((d - m) / s).flatten(1).cpu().numpy() for d, m, s in zip(desc, self.mean, self.std)]

    def distance(self, images: np.ndarray, desc: str = "SWD") -> dict:
        """{resolution: SWD x 1e3 for each level, 'mean': their mean}."""
        if images.shape[1:] != self.shape:
            raise ValueError(f"images of shape {images.shape[1:]} compared with real images of shape {self.shape}")
        with self._bar(images, desc, extra=len(self.resolutions) * self.dir_repeats) as bar:
            fake = self._finalise(self._descriptors(images, bar))
            out = {}
            for lvl, (res, a, b) in enumerate(zip(self.resolutions, self.real, fake)):
                out[res] = 1e3 * sliced_wasserstein(a, b, self.dir_repeats, self.dirs_per_repeat,
                                                    seed=self.seed * 1000 + lvl, bar=bar)
        out["mean"] = float(np.mean([out[r] for r in self.resolutions]))
        return out


def swd(real: np.ndarray, fake: np.ndarray, seed: int = 0, **kw) -> dict:
    """One-shot SWD of uint8 image sets (N, C, H, W); see `SWD`."""
    return SWD(real, seed=seed, **kw).distance(fake)


@REGISTRY.register("swd")
class SWDMetric(Metric):
    help = {
        "swd": "sliced Wasserstein distance x1e3, generated vs test (mean over pyramid levels); lower is better",
        "swd_floor": "the same for real training images vs test: what a perfect generator would reach",
        "swd_floor_*px": "swd_floor at one level of the Laplacian pyramid (its resolution)",
        "swd_*px": "swd at one level of the Laplacian pyramid (its resolution)",
    }
    headline = ("swd", "swd_floor")
    order = 10

    def evaluate(self, ctx: EvalContext) -> Scores:
        ctx.log(f"SWD: {len(ctx.fake)} generated and {len(ctx.train_subset)} training images vs "
                f"{len(ctx.test)} test images")
        # model and real-vs-real floor against the same test descriptors
        swd = SWD(ctx.test, seed=ctx.seed, device=ctx.device, progress=ctx.progress)
        out = {}
        for prefix, images in (("swd", ctx.fake), ("swd_floor", ctx.train_subset)):
            dist = swd.distance(images, desc=prefix)
            out[prefix] = dist["mean"]
            for r in swd.resolutions:
                out[f"{prefix}_{r}px"] = dist[r]
        return out

    def scorer(self, real: np.ndarray, ctx: Context):
        swd = SWD(real, seed=ctx.seed, device=ctx.device, progress=ctx.progress)
        return lambda fake: {"swd": swd.distance(fake)["mean"]}
