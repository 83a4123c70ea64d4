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
- Every image_size from MIN_SIZE to MAX_SIZE, not only powers of two: `ladder` gives the start size and the
  doublings, `centre_crop`/`centre_pad` the way from the ladder's top size to image_size and back.
- Optional: a discriminator with `reconstructs = True` takes `forward(x, reconstruct=True)` and returns
  (logits, a scalar loss), which the training step adds to D's loss on real images (a self-supervised D,
  fastgan.py).

A saved model (model.save) records its kind, its config, its state_dict and, for any architecture but
`dcgan`, its `arch` (files saved before architectures had names are dcgan ones, byte for byte).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch.nn.functional as F
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

MIN_SIZE, MAX_SIZE = 16, 512   # image sizes every architecture builds


def check_size(image_size: int, channels: int):
    """A one-line ValueError naming the value unless every architecture builds networks for these images."""
    if isinstance(image_size, bool) or not isinstance(image_size, int) or not MIN_SIZE <= image_size <= MAX_SIZE:
        raise ValueError(f"image_size must be an integer from {MIN_SIZE} to {MAX_SIZE}, got {image_size!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")


def ladder(image_size: int) -> tuple[int, int]:
    """(start, doublings): the generators start from start x start (4 to 8) and double `doublings` times to
    start * 2**doublings >= image_size, then crop the centre; the discriminators pad their input to that size
    and halve as often. A power of two starts at 4 and crops nothing (the DCGAN paper's layout), 48 and 96
    start at 6, 120 starts at 8 and crops 128 to 120."""
    if not MIN_SIZE <= image_size <= MAX_SIZE:
        raise ValueError(f"image_size must be from {MIN_SIZE} to {MAX_SIZE}, got {image_size}")
    doublings = (image_size // 4).bit_length() - 1          # the most that keep start >= 4
    return -(-image_size // 2 ** doublings), doublings


def centre_crop(x, size: int, ladder_size: int):
    """The central size x size pixels of images ladder_size px wide (sides passed as ints, not read from x,
    so torch.jit.trace and ONNX see plain slicing)."""
    off = (ladder_size - size) // 2
    return x if ladder_size == size else x[..., off:off + size, off:off + size]


def centre_pad(x, size: int, ladder_size: int):
    """size x size images padded with zeros (mid-grey in [-1, 1]) to ladder_size around the centre, as
    centre_crop cut them."""
    extra = ladder_size - size
    return x if extra == 0 else F.pad(x, (extra // 2, extra - extra // 2, extra // 2, extra - extra // 2))


def identify(model: nn.Module) -> tuple[str, str]:
    """(architecture name, kind) of a network built from a registered architecture."""
    for name, arch in REGISTRY.items():
        for kind in KINDS:
            if type(model) is getattr(arch, kind):
                return name, kind
    raise ValueError(f"{type(model).__name__} is not a network of a registered architecture")


import_modules(__name__)
