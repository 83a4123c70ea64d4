"""The DCGAN of Radford et al. (2016), scaled to 16-512 pixels (any size, see archs.ladder) and 1 or 3 channels.

Generator: z -> start x start (4 for powers of two, up to 8) by a transposed conv, then one stride-2
transposed conv per doubling, each with BatchNorm + ReLU, tanh at the end, and a centre crop to image_size
when the ladder overshoots it. Discriminator: the mirror image, its input padded to the ladder's size, then
stride-2 convs with LeakyReLU(0.2) and BatchNorm after every conv but the first, ending in a start x start
conv to one logit (no sigmoid: the losses in dcgan/losses/ take logits, which is safe under mixed precision).
For powers of two the networks are the paper's, module for module.
"""
from __future__ import annotations

import torch
from torch import nn

from . import REGISTRY, Architecture, centre_crop, centre_pad, check_size, ladder

MAX_WIDTH_MULT = 8  # as in the paper's 64px model; caps the width of larger models


def _widths(doublings: int, base: int) -> list[int]:
    """Channel count at start x start, twice that, ... up to half the ladder's top size for the generator
    (reverse for D): one entry per stride-2 layer."""
    return [base * min(2 ** (doublings - 1 - i), MAX_WIDTH_MULT) for i in range(doublings)]


class Generator(nn.Module):
    def __init__(self, image_size: int = 64, channels: int = 3, nz: int = 100, ngf: int = 64):
        super().__init__()
        check_size(image_size, channels)
        self.config = {"image_size": image_size, "channels": channels, "nz": nz, "ngf": ngf}
        start, doublings = ladder(image_size)
        self.ladder_size = start * 2 ** doublings
        w = _widths(doublings, ngf)
        layers = [nn.ConvTranspose2d(nz, w[0], start, 1, 0, bias=False), nn.BatchNorm2d(w[0]), nn.ReLU(True)]
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
        return centre_crop(self.net(z), self.config["image_size"], self.ladder_size)


class Discriminator(nn.Module):
    """spectral_norm: every conv's weight divided by its largest singular value (Miyato et al. 2018, one
    power iteration per forward pass in training), and no BatchNorm, as in SN-GAN: D is then
    1-Lipschitz per layer and each image's logit depends on that image alone."""

    def __init__(self, image_size: int = 64, channels: int = 3, ndf: int = 64, spectral_norm: bool = False):
        super().__init__()
        check_size(image_size, channels)
        self.config = {"image_size": image_size, "channels": channels, "ndf": ndf}
        if spectral_norm:  # only when on: models saved before the option load unchanged
            self.config["spectral_norm"] = True
        sn = nn.utils.parametrizations.spectral_norm if spectral_norm else (lambda m: m)
        norm = (lambda c: nn.Identity()) if spectral_norm else nn.BatchNorm2d
        start, doublings = ladder(image_size)
        self.ladder_size = start * 2 ** doublings
        w = _widths(doublings, ndf)[::-1]
        layers = [sn(nn.Conv2d(channels, w[0], 4, 2, 1, bias=False)), nn.LeakyReLU(0.2, inplace=True)]
        for a, b in zip(w, w[1:]):
            layers += [sn(nn.Conv2d(a, b, 4, 2, 1, bias=False)), norm(b), nn.LeakyReLU(0.2, inplace=True)]
        layers += [sn(nn.Conv2d(w[-1], 1, start, 1, 0, bias=False))]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(centre_pad(x, self.config["image_size"], self.ladder_size)).flatten()  # one logit per image


class Encoder(nn.Module):
    """Image -> latent in one forward pass: the discriminator's conv stack (BatchNorm, LeakyReLU) ending in
    a start x start conv to nz numbers. Trained by dcgan/encoder.py on pairs (z, G(z)) drawn from the generator
    itself."""

    def __init__(self, image_size: int = 64, channels: int = 3, nz: int = 100, nef: int = 64):
        super().__init__()
        check_size(image_size, channels)
        self.config = {"image_size": image_size, "channels": channels, "nz": nz, "nef": nef}
        start, doublings = ladder(image_size)
        self.ladder_size = start * 2 ** doublings
        w = _widths(doublings, nef)[::-1]
        layers = [nn.Conv2d(channels, w[0], 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
        for a, b in zip(w, w[1:]):
            layers += [nn.Conv2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.LeakyReLU(0.2, inplace=True)]
        layers += [nn.Conv2d(w[-1], nz, start, 1, 0)]
        self.net = nn.Sequential(*layers)

    @property
    def nz(self) -> int:
        return self.config["nz"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(centre_pad(x, self.config["image_size"], self.ladder_size)).flatten(1)  # (N, nz)


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
