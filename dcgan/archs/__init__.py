"""Architectures by name: the `arch` param picks the generator, discriminator and encoder built here.

An architecture is one module in this folder that registers an `Architecture`. The contract each one meets
(tests/archs/test_contract.py checks it for every registered architecture) is what the rest of the project
relies on, and nothing more:

- `generator(image_size, channels, nz, width)`: forward maps z of shape (N, nz) to images (N, channels,
  image_size, image_size) in [-1, 1]; in eval mode an image depends on its own z only (so batches can be
  split and merged freely: generation, serving, EMA recalibration). `.config` is a dict of the constructor's
  keyword arguments holding at least `image_size`, `channels`, `nz` and `ngf` (its width: the encoder stage
  builds the encoder as wide), and `.nz` returns config["nz"].
- `discriminator(image_size, channels, width, spectral_norm)`: forward maps images to one logit per image
  (N,). `.config` holds at least `image_size` and `channels`.
- `encoder(image_size, channels, nz, width)`: forward maps images to latents (N, nz); `.config` and `.nz`
  as the generator's.
- `init_weights(module)`: applied with `.apply()` right after construction (the training recipe's init).
- Each network is rebuilt exactly by its class called with `**config`, then `load_state_dict` (model.load),
  and can be traced by torch.jit.trace and exported to ONNX with a batch dimension (export.py).
- BatchNorm is allowed anywhere: the EMA recomputes its statistics (ema.recalibrate) and D is evaluated with
  batch statistics (sampling.d_logits).

A saved model (model.save) records its kind, its config, its state_dict and, for any architecture but
`dcgan`, its `arch` (files saved before architectures had names are dcgan ones, byte for byte).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from ..registry import Registry, import_modules

KINDS = ("generator", "discriminator", "encoder")
DEFAULT = "dcgan"   # the architecture of model files that record none


@dataclass(frozen=True)
class Architecture:
    generator: type[nn.Module]
    discriminator: type[nn.Module]
    encoder: type[nn.Module]
    init_weights: Callable[[nn.Module], None]


REGISTRY: Registry[Architecture] = Registry("architecture")


def identify(model: nn.Module) -> tuple[str, str]:
    """(architecture name, kind) of a network built from a registered architecture."""
    for name, arch in REGISTRY.items():
        for kind in KINDS:
            if type(model) is getattr(arch, kind):
                return name, kind
    raise ValueError(f"{type(model).__name__} is not a network of a registered architecture")


import_modules(__name__)
