"""Scores of a generator's images, registered by name: one module per metric in this folder.

A metric is a `Metric` subclass registered on REGISTRY, e.g. in dcgan/metrics/brightness.py:

    from . import REGISTRY, EvalContext, Metric

    @REGISTRY.register("brightness")
    class BrightnessMetric(Metric):
        help = {"brightness_gap": "mean pixel value (0-255), generated minus test; 0 is best"}
        headline = ("brightness_gap",)
        lower_is_better = None

        def evaluate(self, ctx: EvalContext) -> dict:
            return {"brightness_gap": float(ctx.fake.mean() - ctx.test.mean())}

The evaluate stage (dcgan.evaluation) runs every registered metric and writes their keys to
metrics/eval.json, the stage prints each metric's headline keys and the report explains every key with
the metric's help. A metric that can also score a generator during training, against the val split,
implements `scorer` (dcgan.quality uses every such metric).
"""
from __future__ import annotations

from fnmatch import fnmatchcase
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..registry import Registry, import_modules
from ._inception import FeatureExtractor, load_inception

Scores = dict[str, float | int | None]


class Context:
    """What a metric may use, in training (dcgan.quality) and in the evaluate stage."""

    def __init__(self, device: str | torch.device = "cpu", seed: int = 0, *,
                 inception: str | FeatureExtractor | None = None, log: Callable[[str], None] = print,
                 progress: bool = False):
        """inception: the `fid_weights` param (a path, or '' for the torch hub cache) to load the FID Inception
        network from when a metric first asks for it; None: no FID/KID; any object with
        `features(uint8 (N, C, H, W)) -> (N, D)`: used as is."""
        self.device = torch.device(device)
        self.seed, self.log, self.progress = seed, log, progress
        self._inception = inception

    def inception(self) -> FeatureExtractor | None:
        """The FID Inception feature extractor, loaded once and shared by the metrics; None without the
        weights file (after one line saying where to put it)."""
        if isinstance(self._inception, str):
            self._inception = load_inception(self._inception, self.device, log=self.log, progress=self.progress)
        return self._inception


class EvalContext(Context):
    """Everything the evaluate stage scores with: uint8 (N, C, H, W) image sets `fake` (the generate stage's
    images), `train` and `test`; the `discriminator`; `generator` and `encoder` (None when either is
    missing); the evaluate `params`; `out_dir` for pictures.

    Random subsets come from one generator seeded with params' seed, consumed in a fixed order: the
    training subset here, then each metric's `test_subset` calls in evaluation order (`Metric.order`),
    so a metric added later leaves the numbers of the others as they were."""

    def __init__(self, fake: np.ndarray, train: np.ndarray, test: np.ndarray, discriminator, params: dict,
                 device: str | torch.device, out_dir: Path, *, generator=None, encoder=None,
                 inception: str | FeatureExtractor | None = "", log: Callable[[str], None] = print,
                 progress: bool = True):
        super().__init__(device, params["seed"], inception=inception, log=log, progress=progress)
        self.fake, self.train, self.test = fake, train, test
        self.discriminator, self.generator, self.encoder = discriminator, generator, encoder
        self.params, self.out_dir = params, Path(out_dir)
        self.rng = np.random.default_rng(self.seed)
        # as many training images as generated ones: real-vs-test scores, the floor a perfect generator reaches
        pick = np.sort(self.rng.choice(len(train), min(len(fake), len(train)), replace=False))
        # all of them: the (memory-mapped) array itself, not a copy of the whole split
        self.train_subset = train if len(pick) == len(train) else train[pick]

    def test_subset(self, n: int) -> np.ndarray:
        """n random test images (the split may be ordered, e.g. by class); all of them when n >= the split."""
        if n >= len(self.test):
            return self.test
        return self.test[np.sort(self.rng.choice(len(self.test), n, replace=False))]


class Metric:
    """One metric: a few keys of metrics/eval.json, and optionally a score during training.

    Registered with `@REGISTRY.register(name)`; the evaluate stage makes one with `cls(name)`.
    `help` has one line for people (the report shows it) for every key `evaluate` returns; a key of `help`
    may be a pattern such as 'swd_*px' (exact keys are looked up first, then the patterns in order).
    """

    help: dict[str, str] = {}
    headline: tuple[str, ...] = ()  # keys the evaluate stage prints when it is done
    lower_is_better: bool | None = True  # None: neither (e.g. D's accuracy, best at 50%); see `help`
    order: int = 100  # evaluation order, smallest first (the built-in metrics use 10-50; see EvalContext)

    def __init__(self, name: str):
        self.name = name

    def evaluate(self, ctx: EvalContext) -> Scores:
        """{key: number or None} for metrics/eval.json; may write pictures to ctx.out_dir."""
        raise NotImplementedError

    def scorer(self, real: np.ndarray, ctx: Context) -> Callable[[np.ndarray], dict[str, float]] | None:
        """For a score during training: prepared once against `real` (uint8 (N, C, H, W), the val split), a
        function of generated uint8 images -> {key: float}. None (the default): not scored during training."""
        return None

    def describe(self, key: str) -> str | None:
        """The help line of one of this metric's keys; None when it has none."""
        if key in self.help:
            return self.help[key]
        return next((line for pattern, line in self.help.items() if fnmatchcase(key, pattern)), None)


REGISTRY: Registry[type[Metric]] = Registry("metric")


def in_order() -> list[Metric]:
    """One of each registered metric, in evaluation order (by `order`, then by name)."""
    return sorted((cls(name) for name, cls in REGISTRY.items()), key=lambda m: (m.order, m.name))


import_modules(__name__)
