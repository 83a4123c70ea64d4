"""A few-shot GAN after FastGAN (Liu et al. 2021, "Towards faster and stabilized GAN training for
high-fidelity few-shot image synthesis") and lightweight-gan, needing no pretrained network.

Generator: z -> start x start by a transposed conv, then one up block per doubling: nearest-neighbour
upsampling and a 3x3 conv (no transposed-conv checkerboard), noise injection, BatchNorm and GLU; every other
block has a second conv. Skip-layer excitation (SLE): the features of a level gate, channel by channel, those
of the level four doublings above it (4 -> 64, 8 -> 128 px ...), so coarse layout steers fine detail. A 3x3
conv and tanh make the image; sizes that are not powers of two are cropped from the next size up
(archs.ladder).

Discriminator: a strided 4x4 conv, then residual down blocks (a strided conv path beside an average-pooled
1x1 path) to start x start, and a conv to one logit. It is self-supervised as in FastGAN: on real images a
small decoder must rebuild the image (at up to 8 x start px) from D's features at 2 x start, so D has to
describe its inputs rather than memorise a few hundred of them; the mean squared error is added to D's loss
(`forward(x, reconstruct=True)` returns it beside the logits; dcgan.engine asks for it on real images).

Widths: level k of G (k = 0 at start x start) has ngf x min(2**(doublings-1-k), 8) channels and the full
resolution ngf // 2; D mirrors it with ndf. At 64 px and ngf = ndf = 64: G 512, 256, 128, 64, 32 channels
at 4, 8, 16, 32, 64 px. The encoder is the DCGAN encoder (a strided conv stack), registered here so that its
model files name this architecture. Noise injection is on in training only: in eval mode an image depends on
its z alone (generation, serving and export are deterministic), as the contract requires.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import REGISTRY, Architecture, centre_crop, centre_pad, check_size, ladder
from . import dcgan

MAX_WIDTH_MULT = 8
SLE_SPAN = 4          # doublings between the two levels a skip-layer excitation joins (FastGAN: 8 -> 128)


def _widths(image_size: int, base: int) -> list[int]:
    """Channels of G at each level, start x start first, the full resolution last."""
    _, n = ladder(image_size)
    return [base * min(2 ** (n - 1 - k), MAX_WIDTH_MULT) for k in range(n)] + [max(base // 2, 1)]


class NoiseInjection(nn.Module):
    """x + w * N(0, 1) per pixel, w learned per layer from 0 (StyleGAN, FastGAN); only while training with
    gradients, so eval-mode outputs and BatchNorm recalibration (ema.py, no gradients) are deterministic."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            n, _, h, w = x.shape
            return x + self.weight * torch.randn(n, 1, h, w, device=x.device, dtype=x.dtype)
        return x


def _conv_glu(c_in: int, c_out: int) -> list[nn.Module]:
    """3x3 conv to twice the channels, noise, BatchNorm, GLU (which halves them again)."""
    return [nn.Conv2d(c_in, 2 * c_out, 3, 1, 1, bias=False), NoiseInjection(), nn.BatchNorm2d(2 * c_out),
            nn.GLU(dim=1)]


class SkipExcitation(nn.Module):
    """Channel gates for a high level from a low one: global average, 1x1 conv, swish, 1x1 conv, sigmoid.
    (FastGAN pools to 4x4 and uses a 4x4 conv; a global pool exports to ONNX at every start size.)"""

    def __init__(self, c_low: int, c_high: int):
        super().__init__()
        self.net = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c_low, c_high, 1, bias=False), nn.SiLU(),
                                 nn.Conv2d(c_high, c_high, 1, bias=False), nn.Sigmoid())

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        return high * self.net(low)


class Generator(nn.Module):
    def __init__(self, image_size: int = 64, channels: int = 3, nz: int = 100, ngf: int = 64):
        super().__init__()
        check_size(image_size, channels)
        self.config = {"image_size": image_size, "channels": channels, "nz": nz, "ngf": ngf}
        start, n = ladder(image_size)
        self.ladder_size = start * 2 ** n
        w = _widths(image_size, ngf)
        self.init = nn.Sequential(nn.ConvTranspose2d(nz, 2 * w[0], start, 1, 0, bias=False),
                                  nn.BatchNorm2d(2 * w[0]), nn.GLU(dim=1))
        blocks = []
        for k in range(1, n + 1):     # level k: upsample, conv(s); every other level two convs (FastGAN)
            layers = [nn.Upsample(scale_factor=2, mode="nearest"), *_conv_glu(w[k - 1], w[k])]
            if k % 2:
                layers += _conv_glu(w[k], w[k])
            blocks.append(nn.Sequential(*layers))
        self.blocks = nn.ModuleList(blocks)
        self.excite = nn.ModuleDict({str(k + SLE_SPAN): SkipExcitation(w[k], w[k + SLE_SPAN])
                                     for k in range(0, n + 1 - SLE_SPAN)})
        self.to_image = nn.Sequential(nn.Conv2d(w[-1], channels, 3, 1, 1), nn.Tanh())

    @property
    def nz(self) -> int:
        return self.config["nz"]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        levels = [self.init(z[:, :, None, None] if z.dim() == 2 else z)]
        for k, block in enumerate(self.blocks, start=1):
            x = block(levels[-1])
            if str(k) in self.excite:
                x = self.excite[str(k)](levels[k - SLE_SPAN], x)
            levels.append(x)
        return centre_crop(self.to_image(levels[-1]), self.config["image_size"], self.ladder_size)


class DownBlock(nn.Module):
    """Half the resolution two ways, averaged: strided 4x4 conv + 3x3 conv, and average pool + 1x1 conv."""

    def __init__(self, c_in: int, c_out: int, sn, norm):
        super().__init__()
        act = lambda: nn.LeakyReLU(0.2, inplace=True)  # noqa: E731
        self.main = nn.Sequential(sn(nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False)), norm(c_out), act(),
                                  sn(nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)), norm(c_out), act())
        self.skip = nn.Sequential(nn.AvgPool2d(2), sn(nn.Conv2d(c_in, c_out, 1, bias=False)), norm(c_out), act())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.main(x) + self.skip(x)) / 2


class Decoder(nn.Module):
    """D's features -> an image (the self-supervised task): up blocks halving the channels, 3x3 conv, tanh."""

    def __init__(self, c_in: int, channels: int, ups: int):
        super().__init__()
        layers, c = [], c_in
        for _ in range(ups):
            half = max(c // 2, 1)
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, 2 * half, 3, 1, 1, bias=False),
                       nn.BatchNorm2d(2 * half), nn.GLU(dim=1)]
            c = half
        self.net = nn.Sequential(*layers, nn.Conv2d(c, channels, 3, 1, 1), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Discriminator(nn.Module):
    """spectral_norm: every conv of the logit path divided by its largest singular value and no BatchNorm
    there, as in the DCGAN discriminator (the decoder keeps its BatchNorm: it only ever sees real images)."""

    reconstructs = True     # dcgan.engine.train_step adds the reconstruction error of real images to D's loss

    def __init__(self, image_size: int = 64, channels: int = 3, ndf: int = 64, spectral_norm: bool = False):
        super().__init__()
        check_size(image_size, channels)
        self.config = {"image_size": image_size, "channels": channels, "ndf": ndf}
        if spectral_norm:
            self.config["spectral_norm"] = True
        sn = nn.utils.parametrizations.spectral_norm if spectral_norm else (lambda m: m)
        norm = (lambda c: nn.Identity()) if spectral_norm else nn.BatchNorm2d
        start, n = ladder(image_size)
        self.ladder_size = start * 2 ** n
        w = _widths(image_size, ndf)[-2::-1]      # at ladder_size/2, /4, ..., start
        self.from_image = nn.Sequential(sn(nn.Conv2d(channels, w[0], 4, 2, 1, bias=False)),
                                        nn.LeakyReLU(0.2, inplace=True))
        self.down = nn.Sequential(*(DownBlock(a, b, sn, norm) for a, b in zip(w, w[1:])))
        self.logit = nn.Sequential(sn(nn.Conv2d(w[-1], w[-1], 1, bias=False)), norm(w[-1]),
                                   nn.LeakyReLU(0.2, inplace=True), sn(nn.Conv2d(w[-1], 1, start, 1, 0)))
        # the decoder reads the level at 2 x start (the last down block's input) and rebuilds the image at up
        # to 8 x start px: the real image is average-pooled to that size to compare
        self.recon_size = min(self.ladder_size, 8 * start)
        self.decoder = Decoder(w[-2], channels, (self.recon_size // (2 * start)).bit_length() - 1)

    def forward(self, x: torch.Tensor, reconstruct: bool = False):
        x = centre_pad(x, self.config["image_size"], self.ladder_size)
        feats = self.down[:-1](self.from_image(x))   # at 2 x start
        logits = self.logit(self.down[-1](feats)).flatten()
        if not reconstruct:
            return logits
        target = F.avg_pool2d(x, self.ladder_size // self.recon_size) if self.recon_size < self.ladder_size else x
        return logits, F.mse_loss(self.decoder(feats).float(), target.float())


class Encoder(dcgan.Encoder):
    """The DCGAN encoder, saved under this architecture's name."""


REGISTRY.register("fastgan")(Architecture(Generator, Discriminator, Encoder, dcgan.init_weights))
