"""Image-quality and sanity metrics for a GAN: SWD, FID, KID, D as a classifier, memorisation.

Pure maths on arrays (numpy / torch). The only file this module reads is the FID Inception
weights file: from a local path, or from the torch hub cache, where pytorch-fid downloads it once.

- Sliced Wasserstein distance (SWD) on Laplacian-pyramid patches, after Karras et al. 2018
  ("Progressive growing of GANs", their `metrics/sliced_wasserstein.py`): a Laplacian pyramid down
  to 16 px, 128 random 7x7 neighbourhoods per image and level, descriptors normalised per channel,
  4 x 128 random unit directions, and the mean 1-D Wasserstein-1 distance between the projected
  sets. Reported per level (x 1e3, as in the paper) and averaged. One deliberate change: both sets
  are normalised with the mean/std of the *real* set (the original normalises each set by its own
  statistics, which hides a global brightness or contrast shift of the generated images).
- FID (Heusel et al. 2017) and KID (Binkowski et al. 2018, unbiased MMD^2 with the cubic
  polynomial kernel, averaged over subsets as torch-fidelity does), on feature arrays.
- Inception-v3 features by pytorch-fid itself (the TF-ported FID weights file
  `pt_inception-2015-12-05-6726825d.pth`, the FID-specific pooling changes, bilinear resize to 299).
- The discriminator's logits as a real-vs-fake classifier: accuracy and confusion matrix.
- Memorisation: the nearest training image (L2 in pixel space) of each generated image.
"""
from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .errors import UserError, brief

# ----------------------------------------------------------------------------------------------
# Sliced Wasserstein distance on Laplacian-pyramid patches
# ----------------------------------------------------------------------------------------------

_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0
_GAUSS_5x5 = torch.outer(_BINOMIAL, _BINOMIAL)  # the 5x5 kernel of cv2.pyrDown / the paper's code


def _blur(x: torch.Tensor) -> torch.Tensor:
    """5x5 binomial blur per channel with mirror borders (scipy 'mirror' == torch 'reflect')."""
    c = x.shape[1]
    w = _GAUSS_5x5.to(x.device, x.dtype).expand(c, 1, 5, 5)
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), w, groups=c)


def pyr_down(x: torch.Tensor) -> torch.Tensor:
    return _blur(x)[:, :, ::2, ::2]


def pyr_up(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    up = x.new_zeros(n, c, 2 * h, 2 * w)
    up[:, :, ::2, ::2] = x
    return _blur(up) * 4.0


def swd_resolutions(size: int, min_res: int = 16) -> list[int]:
    """Resolutions of the pyramid levels: size, size/2, ... down to min_res (at least one level)."""
    res, out = size, []
    while res >= min_res or not out:
        out.append(res)
        res //= 2
    return out


def laplacian_pyramid(x: torch.Tensor, num_levels: int) -> list[torch.Tensor]:
    """Finest Laplacian band first; the last level is the low-pass (Gaussian) residual."""
    pyramid = [x.float()]
    for _ in range(1, num_levels):
        pyramid.append(pyr_down(pyramid[-1]))
        pyramid[-2] = pyramid[-2] - pyr_up(pyramid[-1])
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


# ----------------------------------------------------------------------------------------------
# FID and KID on feature arrays
# ----------------------------------------------------------------------------------------------

def feature_stats(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (rows are samples) in float64."""
    f = np.asarray(f, np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"need a (N >= 2, D) feature array, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (negative rounding clipped)."""
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1-mu2||^2 + Tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2), without scipy.

    Tr sqrt(S1 S2) = Tr sqrt(S1^1/2 S2 S1^1/2): the latter matrix is symmetric PSD, so its
    eigenvalues are real and non-negative and eigh is exact and stable (no complex sqrtm).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise ValueError(f"shapes differ: {mu1.shape}/{s1.shape} vs {mu2.shape}/{s2.shape}")
    r1 = _sqrt_psd(s1)
    m = r1 @ s2 @ r1
    ev = np.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = np.sqrt(np.clip(ev, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def fid(f1: np.ndarray, f2: np.ndarray) -> float:
    """Frechet distance between the Gaussians fitted to two feature sets (N, D)."""
    return frechet_distance(*feature_stats(f1), *feature_stats(f2))


def _poly_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def _mmd2_unbiased(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray) -> float:
    m, n = kxx.shape[0], kyy.shape[0]
    a = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    b = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(a + b - 2 * kxy.mean())


def kid(f1: np.ndarray, f2: np.ndarray, subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance: (mean, std) over `subsets` random subsets of the unbiased MMD^2
    with k(x, y) = (x.y / d + 1)^3. subset_size is clipped to the smaller set (torch-fidelity
    defaults: 100 subsets of 1000). Can be slightly negative for sets from one distribution.
    """
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    if f1.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature arrays of shapes {f1.shape} and {f2.shape} cannot be compared")
    size = min(subset_size, len(f1), len(f2))
    if size < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    rng = np.random.RandomState(seed)
    n1 = len(f1)
    full = None
    if n1 + len(f2) <= 6000:  # one Gram matrix, then every subset is a cheap lookup
        both = np.concatenate([f1, f2])
        full = _poly_kernel(both, both)
    mmds = np.empty(subsets)
    for i in range(subsets):
        a = rng.choice(len(f1), size, replace=False)
        b = rng.choice(len(f2), size, replace=False)
        if full is not None:
            kxx, kyy, kxy = full[np.ix_(a, a)], full[np.ix_(b + n1, b + n1)], full[np.ix_(a, b + n1)]
        else:
            x, y = f1[a], f2[b]
            kxx, kyy, kxy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
        mmds[i] = _mmd2_unbiased(kxx, kyy, kxy)
    return float(mmds.mean()), float(mmds.std())


# ----------------------------------------------------------------------------------------------
# Inception-v3 features, FID variant (pytorch-fid / torch-fidelity compatible)
# ----------------------------------------------------------------------------------------------

FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_FEATURE_DIMS = 2048


class FeatureExtractor(Protocol):
    def features(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, C, H, W) -> float (N, D)."""


class WeightsFileError(UserError, ValueError):
    """The FID weights file exists but is not the one FID needs."""


def default_fid_weights_path() -> Path:
    """Where pytorch-fid and torch-fidelity cache the file: <torch hub dir>/checkpoints/."""
    return Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS_FILE


def fid_weights_path(fid_weights: str = "") -> Path:
    """The path looked at: the `fid_weights` param when set, else the torch hub cache."""
    return Path(fid_weights).expanduser() if fid_weights else default_fid_weights_path()


def missing_weights_message(fid_weights: str = "", why: str = "") -> str:
    path = fid_weights_path(fid_weights)
    where = (f"fid_weights in params.yaml points to {path}, which does not exist" if fid_weights
             else f"{FID_WEIGHTS_FILE} is not in the torch hub cache and could not be downloaded ({why})")
    return (f"FID/KID skipped: {where}; copy {FID_WEIGHTS_FILE} (the pytorch-fid release file) to "
            f"{default_fid_weights_path()} or set fid_weights to its path")


def fid_inception(state: dict | None = None, path: Path | str = "?") -> nn.Module:
    """pytorch-fid's InceptionV3 (FID blocks, 2048-d pool features, resize to 299 and scaling to [-1, 1]
    inside). state None: pytorch-fid fetches the weights file itself, once, into the torch hub cache
    (raises offline). A state dict: loaded instead (pytorch-fid has no argument for a local file, so its
    download function is swapped for one that returns the dict)."""
    from unittest import mock

    from pytorch_fid import inception

    if state is None:
        return inception.InceptionV3([inception.InceptionV3.BLOCK_INDEX_BY_DIM[FID_FEATURE_DIMS]])
    state = {k: v for k, v in state.items() if not k.startswith("AuxLogits.")}
    try:
        with mock.patch.object(inception, "load_state_dict_from_url", lambda *a, **k: state):
            return inception.InceptionV3([inception.InceptionV3.BLOCK_INDEX_BY_DIM[FID_FEATURE_DIMS]])
    except RuntimeError as e:  # strict key/shape check of load_state_dict
        raise WeightsFileError(f"fid_weights: {path} is not the FID Inception weights file {FID_WEIGHTS_FILE} "
                               f"({brief(e, 160)})") from None


class _PoolFeatures(nn.Module):
    """pytorch-fid's network returns a list of (N, D, 1, 1) maps: give (N, D)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)[-1].flatten(1)


class InceptionFeatures:
    """`features(uint8 (N, C, H, W)) -> (N, 2048)` with pytorch-fid's preprocessing: [0, 1] floats, grey
    repeated to RGB; the network itself resizes to 299x299 (bilinear) and scales to [-1, 1].

    Any module mapping (N, 3, H, W) in [0, 1] to (N, D) can be passed as `net`.
    """

    def __init__(self, net: nn.Module, device: str | torch.device = "cpu", batch_size: int = 50,
                 progress: bool = False):
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.batch_size, self.progress = batch_size, progress

    def preprocess(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(images).to(self.device).float() / 255.0
        return x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x

    @torch.no_grad()
    def features(self, images: np.ndarray, desc: str = "Inception") -> np.ndarray:
        out = []
        for i in tqdm(range(0, len(images), self.batch_size), desc=desc, unit="batch",
                      disable=not self.progress, leave=False, dynamic_ncols=True):
            out.append(self.net(self.preprocess(images[i:i + self.batch_size])).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, FID_FEATURE_DIMS), np.float32)


def _default_build(state: dict | None, path) -> nn.Module:
    return _PoolFeatures(fid_inception(state, path))


def load_inception(fid_weights: str = "", device: str | torch.device = "cpu", log: Callable[[str], None] = print,
                   build: Callable[[dict | None, Path | str], nn.Module] = _default_build,
                   progress: bool = False) -> InceptionFeatures | None:
    """The FID feature extractor, or None (after one line saying why and where to put the file).

    fid_weights set: that local file, never a download. Empty: the torch hub cache, where pytorch-fid
    downloads the file the first time (online); offline that fails and FID/KID are skipped.
    `build(state_dict or None, path)` makes the network (tests pass a small one)."""
    path = fid_weights_path(fid_weights)
    if fid_weights and not path.is_file():
        log(missing_weights_message(fid_weights))
        return None
    if not path.is_file():
        try:
            return InceptionFeatures(build(None, path), device, progress=progress)
        except WeightsFileError:
            raise
        except Exception as e:  # noqa: BLE001 - offline, proxy, disk full: no FID, one line
            log(missing_weights_message("", brief(e, 120)))
            return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file
        raise WeightsFileError(f"fid_weights: {path} could not be read as a PyTorch state dict ({brief(e)}); "
                               f"use the pytorch-fid file {FID_WEIGHTS_FILE}, or '' to skip FID/KID") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsFileError(f"fid_weights: {path} does not hold a state dict")
    return InceptionFeatures(build(state, path), device, progress=progress)


# ----------------------------------------------------------------------------------------------
# The discriminator as a real-vs-fake classifier
# ----------------------------------------------------------------------------------------------

def classifier_report(real_logits, fake_logits) -> dict:
    """Threshold the logits at 0 (p = 0.5); positive class = real.

    confusion = [[TN, FP], [FN, TP]]: rows are the true class (fake, real), columns the prediction
    (fake, real).
    """
    real = np.asarray(real_logits, np.float64).ravel()
    fake = np.asarray(fake_logits, np.float64).ravel()
    tp, fn = int((real > 0).sum()), int((real <= 0).sum())
    fp, tn = int((fake > 0).sum()), int((fake <= 0).sum())
    total = tp + fn + fp + tn
    return {
        "accuracy": (tp + tn) / total if total else float("nan"),
        "confusion": np.array([[tn, fp], [fn, tp]], dtype=np.int64),
        "real_accuracy": tp / (tp + fn) if tp + fn else float("nan"),
        "fake_accuracy": tn / (tn + fp) if tn + fp else float("nan"),
    }


# ----------------------------------------------------------------------------------------------
# Memorisation: nearest training image of each generated image
# ----------------------------------------------------------------------------------------------

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
