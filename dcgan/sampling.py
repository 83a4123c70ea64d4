"""Running trained networks outside the training step: the generator in eval mode, in batches, to uint8
images; the discriminator with batch statistics, as in training, without moving its running statistics.

Every user of a generator (the generate stage, evaluate, the in-training score, the sample grids, the
server) goes through `sample_images`, and every user of D's verdict through `d_logits`.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Iterable, Iterator

import numpy as np
import torch
from torch import nn

from . import pictures

BATCH = 256  # generator inputs per forward pass


@contextmanager
def eval_mode(model: nn.Module):
    """model.eval() inside, its previous mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def sample_images(G: nn.Module, z: torch.Tensor, device=None, batch: int = BATCH) -> np.ndarray:
    """Latents z (N, nz) -> uint8 images (N, C, H, W), G in eval mode (BatchNorm's running statistics, so an
    image depends only on its own z), `batch` latents at a time. device: where G is (default: G's)."""
    if device is None:
        device = next(G.parameters()).device
    with eval_mode(G):
        out = [pictures.to_uint8(G(z[i:i + batch].to(device))) for i in range(0, len(z), batch)]
    if out:
        return np.concatenate(out)
    cfg = G.config
    return np.zeros((0, cfg["channels"], cfg["image_size"], cfg["image_size"]), np.uint8)


@contextmanager
def frozen_batchnorm(model: nn.Module):
    """Forward passes inside leave the running statistics (and spectral norm's power-iteration vectors) as
    they were: with train mode, D sees batch statistics as in training and nothing of it changes."""
    saved = {k: v.clone() for k, v in model.state_dict().items()
             if "running_" in k or "num_batches" in k or k.endswith(("._u", "._v"))}
    try:
        yield
    finally:
        model.load_state_dict(saved, strict=False)


@torch.no_grad()
def d_logits(D: nn.Module, batches: Iterable[torch.Tensor], autocast_ctx=None) -> Iterator[torch.Tensor]:
    """D's float logits for each batch of images in [-1, 1], as in training: train mode (batch statistics
    over batches of one kind, all real or all generated), running statistics untouched. (The running
    statistics average real-only and fake-only batches, so eval mode describes neither.)"""
    with frozen_batchnorm(D):
        was_training = D.training
        D.train()
        try:
            for x in batches:
                with autocast_ctx if autocast_ctx is not None else nullcontext():
                    yield D(x).float()
        finally:
            D.train(was_training)
