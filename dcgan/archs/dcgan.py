"""The DCGAN of Radford et al. (2016), scaled to 32-256 pixels and 1 or 3 channels.

Generator: z -> 4x4 by a transposed conv, then one stride-2 transposed conv per doubling, each with
BatchNorm + ReLU, and tanh at the end. Discriminator: the mirror image, stride-2 convs with
LeakyReLU(0.2) and BatchNorm after every conv but the first, ending in a 4x4 conv to one logit
(no sigmoid: the losses in dcgan/losses/ take logits, which is safe under mixed precision).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from . import REGISTRY, Architecture

MAX_WIDTH_MULT = 8  # as in the paper's 64px model; caps the width of 128/256px models


def _widths(image_size: int, base: int) -> list[int]:
    """Channel count at 4x4, 8x8, ... up to image_size/2 for the generator (reverse for D)."""
    n = int(math.log2(image_size)) - 2  # number of stride-2 layers
    return [base * min(2 ** (n - 1 - i), MAX_WIDTH_MULT) for i in range(n)]


def _check_size(image_size: int, channels: int):
    if image_size < 8 or image_size & (image_size - 1):
        raise ValueError(f"image_size must be a power of two >= 8, got {image_size}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")


class Generator(nn.Module):
    def __init__(self, image_size: int = 64, channels: int = 3, nz: int = 100, ngf: int = 64):
        super().__init__()
        _check_size(image_size, channels)
        self.config = {"image_size": image_size, "channels": channels, "nz": nz, "ngf": ngf}
        w = _widths(image_size, ngf)
        layers = [nn.ConvTranspose2d(nz, w[0], 4, 1, 0, bias=False), nn.BatchNorm2d(w[0]), nn.ReLU(True)]
        for a, b in zip(w, w[1:]):
            layers += [nn.ConvTranspose2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(w[-1], channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    @property
    def nz(self) -> int:
        return self.config["nz"]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() == 2:
            z = z[:, :, None, None]
        return self.net(z)


class Discriminator(nn.Module):
    """spectral_norm: every conv's weight divided by its largest singular value (Miyato et al. 2018, one
    power iteration per forward pass in training), and no BatchNorm, as in SN-GAN: D is then
    1-Lipschitz per layer and each image's logit depends on that image alone."""

    def __init__(self, image_size: int = 64, channels: int = 3, ndf: int = 64, spectral_norm: bool = False):
        super().__init__()
        _check_size(image_size, channels)
        self.config = {"image_size": image_size, "channels": channels, "ndf": ndf}
        if spectral_norm:  # only when on: models saved before the option load unchanged
            self.config["spectral_norm"] = True
        sn = nn.utils.parametrizations.spectral_norm if spectral_norm else (lambda m: m)
        norm = (lambda c: nn.Identity()) if spectral_norm else nn.BatchNorm2d
        w = _widths(image_size, ndf)[::-1]
        layers = [sn(nn.Conv2d(channels, w[0], 4, 2, 1, bias=False)), nn.LeakyReLU(0.2, inplace=True)]
        for a, b in zip(w, w[1:]):
            layers += [sn(nn.Conv2d(a, b, 4, 2, 1, bias=False)), norm(b), nn.LeakyReLU(0.2, inplace=True)]
        layers += [sn(nn.Conv2d(w[-1], 1, 4, 1, 0, bias=False))]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten()  # one logit per image


class Encoder(nn.Module):
    """Image -> latent in one forward pass: the discriminator's conv stack (BatchNorm, LeakyReLU) ending in
    a 4x4 conv to nz numbers. Trained by dcgan/encoder.py on pairs (z, G(z)) drawn from the generator itself."""

    def __init__(self, image_size: int = 64, channels: int = 3, nz: int = 100, nef: int = 64):
        super().__init__()
        _check_size(image_size, channels)
        self.config = {"image_size": image_size, "channels": channels, "nz": nz, "nef": nef}
        w = _widths(image_size, nef)[::-1]
        layers = [nn.Conv2d(channels, w[0], 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
        for a, b in zip(w, w[1:]):
            layers += [nn.Conv2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.LeakyReLU(0.2, inplace=True)]
        layers += [nn.Conv2d(w[-1], nz, 4, 1, 0)]
        self.net = nn.Sequential(*layers)

    @property
    def nz(self) -> int:
        return self.config["nz"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1)  # (N, nz)


def init_weights(m: nn.Module):
    """DCGAN init: conv weights N(0, 0.02); BatchNorm weight N(1, 0.02), bias 0."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        if nn.utils.parametrize.is_parametrized(m, "weight"):  # spectral norm: initialise the raw weight
            nn.init.normal_(m.parametrizations.weight.original, 0.0, 0.02)
        else:
            nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


REGISTRY.register("dcgan")(Architecture(Generator, Discriminator, Encoder, init_weights))
