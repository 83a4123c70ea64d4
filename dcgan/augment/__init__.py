"""DiffAugment (Zhao et al. 2020): random, differentiable augmentations of every image D sees, real and
generated, in both the D and the G step, so D cannot memorise a small training set and G still learns
the un-augmented distribution (the augmentations are applied to both sides and pass gradients to G).

An augmentation is one module in this folder that registers a function `(x, strength) -> x` by name; the
`diffaugment` param names the ones to apply, comma-separated, in that order. Each draws its parameters per
image as tensors on the images' device: no Python loop over images, no host sync (so the step can be
captured in a CUDA graph). `strength` scales every range; 0 is the identity. Outputs are clamped to
[-1, 1], the range of the data and of G's tanh.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..registry import Registry, import_modules

Augmentation = Callable[[torch.Tensor, float], torch.Tensor]
REGISTRY: Registry[Augmentation] = Registry("augmentation")


def uniform_per_image(x: torch.Tensor) -> torch.Tensor:
    """One uniform [0, 1) number per image, shaped to broadcast over (C, H, W)."""
    return torch.rand(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype)


def parse_policy(policy: str) -> list[str]:
    """'color,translation' -> ['color', 'translation']; '' or 'none' -> []. ValueError names a bad part."""
    names = [s.strip() for s in policy.split(",") if s.strip() and s.strip() != "none"]
    for name in names:
        REGISTRY.get(name)
    return names


class DiffAugment:
    """Callable on a batch (N, C, H, W) in [-1, 1]; keeps shape, device, dtype and memory format."""

    def __init__(self, policy: str, strength: float = 1.0):
        self.names, self.strength = parse_policy(policy), strength

    def __bool__(self) -> bool:
        return bool(self.names) and self.strength > 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self:
            return x
        fmt = torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
            and not x.is_contiguous() else torch.contiguous_format
        for name in self.names:
            x = REGISTRY.get(name)(x, self.strength)
        return x.clamp(-1, 1).contiguous(memory_format=fmt)


import_modules(__name__)
