"""GAN losses by name (the `loss` param), and the R1 gradient penalty (r1.py).

A loss is one module in this folder that registers a `Loss`: D's objective on its logits for real and
generated images, and G's on D's logits for generated ones. Logits come in any dtype (bf16 under autocast)
and are computed on in fp32.
"""
from __future__ import annotations

import torch

from ..registry import Registry, import_modules


class Loss:
    def d(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """D's loss, from its fp32 logits on real and on generated images."""
        raise NotImplementedError

    def g(self, fake: torch.Tensor) -> torch.Tensor:
        """G's loss, from D's fp32 logits on generated images."""
        raise NotImplementedError


REGISTRY: Registry[type[Loss]] = Registry("loss")


def build(name: str) -> Loss:
    return REGISTRY.get(name)()


import_modules(__name__)
