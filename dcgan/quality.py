"""Image quality measured during training, to log it and to keep the best generator.

Every `eval_every` epochs the train stage generates a fixed batch (the same noise every time) and scores
it against the held-out val split: SWD always, FID and KID as well when the Inception weights are present
(metrics.load_inception). Lower is better for all three; the best generator is chosen by SWD, the score
every machine can compute, so rankings of experiments never depend on which machine had the weights.
"""
from __future__ import annotations

import numpy as np
import torch

from . import metrics, pictures

EVAL_IMAGES = 500    # generated images per score: the SWD of 500 vs 500 digits varies ~3% between noise draws
SELECT_BY = "swd"


class QualityProbe:
    def __init__(self, real: np.ndarray, nz: int, device: torch.device, seed: int = 0, fid_weights: str | None = None,
                 log=print, n: int = EVAL_IMAGES):
        """real: uint8 (N, C, H, W) held-out images. fid_weights None: no FID/KID; a string: as in params."""
        self.device = device
        self.swd = metrics.SWD(real, seed=seed, device=device)
        self.noise = torch.randn(n, nz, generator=torch.Generator().manual_seed(seed + 12345))
        self.extractor = None
        if fid_weights is not None:
            self.extractor = metrics.load_inception(fid_weights, device, log=log)
        if self.extractor is not None:
            self.real_features = self.extractor.features(real)
            self.kid_subset = min(len(real), n, 1000)

    @torch.no_grad()
    def images(self, G) -> np.ndarray:
        was_training = G.training
        G.eval()
        out = [pictures.to_uint8(G(z.to(self.device))) for z in self.noise.split(250)]
        G.train(was_training)
        return np.concatenate(out)

    def score(self, G) -> dict[str, float]:
        fake = self.images(G)
        res = {"swd": self.swd.distance(fake)["mean"]}
        if self.extractor is not None:
            f = self.extractor.features(fake)
            res["fid"] = metrics.fid(f, self.real_features)
            res["kid"], _ = metrics.kid(f, self.real_features, subset_size=self.kid_subset)
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
