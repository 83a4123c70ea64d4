"""Image quality measured during training, to log it and to keep the best generator.

Every `eval_every` epochs the train stage generates a fixed batch (the same noise every time) and scores
it against the held-out val split with every registered metric that can score during training
(`Metric.scorer`): SWD, rkid and c2st always, FID and KID as well when the Inception weights are present.
Lower is better for all of them; the best generator is chosen by the `best_by` param, SWD (the default),
rkid or c2st:
scores every machine can compute, so rankings of experiments never depend on which machine had the weights.
"""
from __future__ import annotations

import numpy as np
import torch

from . import metrics, sampling

EVAL_IMAGES = 500    # generated images per score: the SWD of 500 vs 500 digits varies ~3% between noise draws
BATCH = 250          # latents per forward pass


class QualityProbe:
    def __init__(self, real: np.ndarray, nz: int, device: torch.device, seed: int = 0, fid_weights: str | None = None,
                 log=print, n: int = EVAL_IMAGES):
        """real: uint8 (N, C, H, W) held-out images. fid_weights None: no FID/KID; a string: as in params."""
        self.device = device
        ctx = metrics.Context(device, seed, inception=fid_weights, log=log)
        self.scorers = [score for m in metrics.in_order() if (score := m.scorer(real, ctx)) is not None]
        self.noise = torch.randn(n, nz, generator=torch.Generator().manual_seed(seed + 12345))

    def images(self, G) -> np.ndarray:
        return sampling.sample_images(G, self.noise, self.device, BATCH)

    def score(self, G) -> dict[str, float]:
        return self.score_images(self.images(G))

    def score_images(self, images: np.ndarray) -> dict[str, float]:
        """Every scorer's keys for uint8 (N, C, H, W) images (generated ones, or real ones for a floor)."""
        res = {}
        for score in self.scorers:
            res.update(score(images))
        return res


class Best:
    """The best score so far by the `best_by` param's key and the generator's weights at that moment (on the
    CPU); `chosen_by` names the key the kept weights were chosen by."""

    def __init__(self, state: dict | None = None, key: str = "swd", log=print):
        """state: a checkpoint's `state_dict()`. Scores of two keys are never compared: a best chosen by
        another key (checkpoints from before `best_by`: by swd) is kept, said in one line, until the first
        score by `key` replaces it whatever its value."""
        state = state or {}
        self.key = key
        self.epoch, self.score, self.weights = state.get("epoch", 0), state.get("score", float("inf")), state.get("G")
        self.chosen_by = state.get("key", "swd") if self.weights is not None else key
        if self.chosen_by != key:
            log(f"the checkpoint's best generator (epoch {self.epoch}) was chosen by {self.chosen_by}, but best_by "
                f"is {key}: the next {key} score replaces it (when epochs are left to train)")

    def offer(self, epoch: int, score: float, G) -> bool:
        """Keep G's weights if `score` beats the best so far (ties keep the earlier). True when kept."""
        if self.chosen_by != self.key:           # the first score by this key: nothing to compare it with
            self.chosen_by, self.score = self.key, float("inf")
        if not score < self.score:
            return False
        self.epoch, self.score = epoch, score
        self.weights = {k: v.detach().cpu().clone(memory_format=torch.contiguous_format)
                        for k, v in G.state_dict().items()}
        return True

    def summary(self) -> dict:
        """The summary's keys: best_<key> (e.g. best_swd) and best_epoch; {} before any score."""
        return {f"best_{self.chosen_by}": self.score, "best_epoch": self.epoch} if self.weights is not None else {}

    def state_dict(self) -> dict:
        return {"key": self.chosen_by, "epoch": self.epoch, "score": self.score, "G": self.weights}
