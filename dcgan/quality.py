"""Image quality measured during training, to log it and to keep the best generator.

Every `eval_every` epochs the train stage generates a fixed batch (the same noise every time) and scores
it against the held-out val split with every registered metric that can score during training
(`Metric.scorer`): SWD always, FID and KID as well when the Inception weights are present. Lower is better
for all three; the best generator is chosen by SWD, the score every machine can compute, so rankings of
experiments never depend on which machine had the weights.
"""
from __future__ import annotations

import numpy as np
import torch

from . import metrics, sampling

EVAL_IMAGES = 500    # generated images per score: the SWD of 500 vs 500 digits varies ~3% between noise draws
SELECT_BY = "swd"
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
        fake = self.images(G)
        res = {}
        for score in self.scorers:
            res.update(score(fake))
        return res


class Best:
    """The best score so far and the generator's weights at that moment (on the CPU)."""

    def __init__(self, state: dict | None = None):
        state = state or {}
        self.epoch, self.score, self.weights = state.get("epoch", 0), state.get("score", float("inf")), state.get("G")

    def offer(self, epoch: int, score: float, G) -> bool:
        """Keep G's weights if `score` beats the best so far (ties keep the earlier). True when kept."""
        if not score < self.score:
            return False
        self.epoch, self.score = epoch, score
        self.weights = {k: v.detach().cpu().clone(memory_format=torch.contiguous_format)
                        for k, v in G.state_dict().items()}
        return True

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "score": self.score, "G": self.weights}
