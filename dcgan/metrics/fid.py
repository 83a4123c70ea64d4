"""FID (Heusel et al. 2017) and KID (Binkowski et al. 2018, unbiased MMD^2 with the cubic polynomial
kernel, averaged over subsets as torch-fidelity does), on Inception features (`_inception`).

In the evaluate stage: generated vs test, and the real-vs-real floor (training subset vs test); null when
the Inception weights file is absent. In training: generated vs val.
"""
from __future__ import annotations

import numpy as np

from . import REGISTRY, Context, EvalContext, Metric, Scores


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


@REGISTRY.register("fid")
class FIDMetric(Metric):
    """FID and KID: they share the Inception features of the same images."""

    help = {
        "fid": "Frechet Inception distance, generated vs test; lower is better (null: no Inception weights)",
        "kid": "kernel Inception distance (unbiased MMD^2), generated vs test; lower is better",
        "kid_std": "standard deviation of kid over its random subsets",
        "fid_floor": "FID of real training images vs test",
        "kid_floor": "KID of real training images vs test",
    }
    headline = ("fid", "fid_floor", "kid")
    order = 20

    def evaluate(self, ctx: EvalContext) -> Scores:
        out: Scores = dict(fid=None, kid=None, kid_std=None, fid_floor=None, kid_floor=None)
        extractor = ctx.inception()
        if extractor is None:
            return out
        ctx.log(f"Inception features of {len(ctx.fake) + len(ctx.test) + len(ctx.train_subset)} images")
        f_test = extractor.features(ctx.test)
        f_fake = extractor.features(ctx.fake)
        f_train = extractor.features(ctx.train_subset)
        out["fid"] = fid(f_fake, f_test)
        out["kid"], out["kid_std"] = kid(f_fake, f_test, seed=ctx.seed)
        out["fid_floor"] = fid(f_train, f_test)
        out["kid_floor"], _ = kid(f_train, f_test, seed=ctx.seed)
        return out

    def scorer(self, real: np.ndarray, ctx: Context):
        extractor = ctx.inception()
        if extractor is None:
            return None
        f_real = extractor.features(real)

        def score(fake: np.ndarray) -> dict[str, float]:
            f = extractor.features(fake)
            return {"fid": fid(f, f_real), "kid": kid(f, f_real)[0]}
        return score
