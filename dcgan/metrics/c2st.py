"""c2st: a classifier two-sample test (Lopez-Paz & Oquab 2017, "Revisiting Classifier Two-Sample Tests"):
how often a simple classifier tells held-out real images from generated ones. 0.5: it cannot (what a perfect
generator reaches); 1.0: it always can. Unlike rkid's KID, the scale means something to a person: the share of
images a classifier gets right.

- the features: rkid's (`RandomFeatures`: the same fixed, seeded random VGG-like network, 4096 numbers per
  image, no weights file);
- the classifier: logistic regression, each feature standardised with the training fold's mean and standard
  deviation, loss the mean binary cross-entropy + L2 * ||w||^2 (the bias unpenalised), fitted by torch's LBFGS
  (at most MAX_ITER iterations, strong-Wolfe line search) from zero weights, in float64 on one CPU thread: the
  same features give the same number bit for bit;
- the test: as many generated as real images (balanced classes: 0.5 is chance); when one set is larger, up to
  MAX_DRAWS disjoint draws of the smaller set's size from it, averaged (less variance); FOLDS-fold cross
  validation with interleaved folds of a seeded permutation of each class (each fold holds both classes
  equally); the score is the share of held-out images classified right, every image held out once.

In the evaluate stage: generated vs test (`c2st`) and real training images vs test (`c2st_floor`, ~0.5). In
training: generated vs val (`c2st`), which the `best_by` param may choose the best generator by. It draws
from a private generator seeded with the params' seed, never from `EvalContext.rng`, so the other metrics'
numbers stay as they were.
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

from . import REGISTRY, Context, EvalContext, Metric, Scores
from .rkid import RandomFeatures

FOLDS = 5          # cross-validation folds
L2 = 1e-2          # penalty L2 * ||w||^2 beside the mean cross-entropy
MAX_ITER = 100     # LBFGS iterations per fit
MAX_DRAWS = 4      # disjoint draws from the larger set, averaged


@contextmanager
def _one_thread():
    """torch on one CPU thread meanwhile: the fits are thousands of small ops, which a second thread does not
    speed up, and on a busy machine slows ~30x (each op waits for both threads); one thread also makes the
    number independent of the machine's thread count."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _fit_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    """Logistic regression fitted on (x_train, y_train in {0, 1}); the 0/1 predictions for x_test."""
    mean, std = x_train.mean(0), x_train.std(0)
    std[std == 0] = 1                        # a constant feature (e.g. a dead ReLU): stays 0, its weight 0
    x = torch.from_numpy((x_train - mean) / std)
    y = torch.from_numpy(y_train.astype(np.float64))
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=MAX_ITER, line_search_fn="strong_wolfe")

    def loss():
        opt.zero_grad()
        value = F.binary_cross_entropy_with_logits(x @ w + b, y) + L2 * (w @ w)
        value.backward()
        return value

    opt.step(loss)                           # (LBFGS computes the closure with grad on, even under no_grad)
    with torch.no_grad():
        return ((torch.from_numpy((x_test - mean) / std) @ w + b) > 0).numpy()


def _cross_validated(real: np.ndarray, fake: np.ndarray, rng: np.random.Generator, folds: int) -> float:
    """Held-out accuracy of equally many real and fake features, each image held out once."""
    x = np.concatenate([real, fake]).astype(np.float64)
    y = np.r_[np.zeros(len(real), np.int64), np.ones(len(fake), np.int64)]
    fold = np.empty(len(x), np.int64)        # interleaved: each class's seeded permutation dealt round the folds
    fold[rng.permutation(len(real))] = np.arange(len(real)) % folds
    fold[len(real) + rng.permutation(len(fake))] = np.arange(len(fake)) % folds
    correct = 0
    for k in range(folds):
        held = fold == k
        correct += int((_fit_predict(x[~held], y[~held], x[held]) == y[held]).sum())
    return correct / len(x)


def c2st_accuracy(real_features: np.ndarray, fake_features: np.ndarray, seed: int, folds: int = FOLDS) -> float:
    """The classifier two-sample test's accuracy, real vs fake features (N, D): 0.5 = indistinguishable.

    Balanced classes: the larger set gives up to MAX_DRAWS disjoint draws of the smaller one's size, each
    scored by `folds`-fold cross validation (at most as many folds as images per class), averaged. All draws
    come from numpy's default_rng(seed): the same inputs give the same number."""
    if real_features.ndim != 2 or fake_features.shape[1:] != real_features.shape[1:]:
        raise ValueError(f"c2st compares features (N, D) of one D, got {real_features.shape} and "
                         f"{fake_features.shape}")
    n = min(len(real_features), len(fake_features))
    if n < 2:
        raise ValueError(f"c2st needs at least 2 images of each kind, got {len(real_features)} real and "
                         f"{len(fake_features)} generated")
    rng = np.random.default_rng(seed)
    real_big = len(real_features) > len(fake_features)
    small, big = (fake_features, real_features) if real_big else (real_features, fake_features)
    draws = min(MAX_DRAWS, len(big) // n)
    pick = rng.permutation(len(big))[:draws * n] if len(big) > n else np.arange(n)
    scores = []
    with _one_thread():
        for d in range(draws):
            other = big[np.sort(pick[d * n:(d + 1) * n])]
            real, fake = (other, small) if real_big else (small, other)
            scores.append(_cross_validated(real, fake, rng, min(folds, n)))
    return float(np.mean(scores))


def _at_most(images: np.ndarray, n: int, seed: int) -> np.ndarray:
    """At most n of the images (a seeded draw, in their order): c2st uses no more of a larger set than
    MAX_DRAWS x the smaller one's size, so the features of the rest need not be computed."""
    if len(images) <= n:
        return images
    return images[np.sort(np.random.default_rng(seed).choice(len(images), n, replace=False))]


class C2ST:
    """c2st against a fixed real set, whose features are computed once.

    >>> c = C2ST(test_images)     # uint8 (N, C, H, W)
    >>> c.accuracy(generated)     # 0.5: a classifier cannot tell them apart; 1.0: always can
    """

    def __init__(self, real: np.ndarray, seed: int = 0, device: str | torch.device = "cpu", batch: int = 100,
                 progress: bool = False):
        self.seed = seed
        self.net = RandomFeatures(device, batch, progress)
        self.real = self.net.features(real, "c2st real features")

    def accuracy(self, images: np.ndarray, desc: str = "c2st features") -> float:
        images = _at_most(images, MAX_DRAWS * len(self.real), self.seed)
        return c2st_accuracy(self.real, self.net.features(images, desc), self.seed)


@REGISTRY.register("c2st")
class C2STMetric(Metric):
    help = {
        "c2st": "classifier two-sample test: held-out accuracy of a logistic regression telling generated from "
                "test images (on rkid's random-network features); 0.5 is best (it cannot tell), 1.0 = always can",
        "c2st_floor": "c2st of real training images vs test: what a perfect generator would reach (~0.5; "
                      "about +-0.05 of noise with ~80 test images)",
    }
    headline = ("c2st", "c2st_floor")
    order = 27   # after rkid; it draws from its own generator, never ctx.rng, so the others' stay as they were

    def evaluate(self, ctx: EvalContext) -> Scores:
        out: Scores = dict(c2st=None, c2st_floor=None)
        if min(len(ctx.test), len(ctx.fake)) < 2:
            return out
        ctx.log(f"c2st: {len(ctx.fake)} generated and {len(ctx.train_subset)} training images vs "
                f"{len(ctx.test)} test images")
        c = C2ST(ctx.test, seed=ctx.seed, device=ctx.device, progress=ctx.progress)
        out["c2st"] = c.accuracy(ctx.fake, "c2st generated")
        if len(ctx.train_subset) >= 2:
            out["c2st_floor"] = c.accuracy(ctx.train_subset, "c2st floor")
        return out

    def scorer(self, real: np.ndarray, ctx: Context):
        if len(real) < 2:
            return None
        c = C2ST(real, seed=ctx.seed, device=ctx.device, progress=ctx.progress)
        return lambda fake: {"c2st": c.accuracy(fake)}
