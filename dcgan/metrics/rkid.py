"""rkid: KID on the features of a fixed, randomly initialised convolutional network; a score that sees shape
and composition, computable offline on every machine (no weights file).

SWD compares 7x7 patches of a Laplacian pyramid: texture and local statistics, but not how the parts of an
image fit together. Naeem et al. 2020 ("Reliable Fidelity and Diversity Metrics for Generative Models")
found that the embeddings of a randomly initialised VGG serve for data unlike ImageNet; this is that idea,
kept small:

- the network: VGG-11-like, 5 blocks of conv3x3-ReLU (1, 1, 2, 2 and 2 of them; widths 32, 64, 128, 256,
  256), a 2x2 max pool after each of the first four, so each of the last block's 4 x 4 positions sees the
  whole image; no biases, Kaiming-normal weights (fan_in, ReLU gain) so activations keep their scale at
  depth. The weights are drawn on the CPU from a torch.Generator seeded with the constant NET_SEED, every
  time (the same on every machine, whatever the params' seed), then moved to the device. About 0.3 GFLOP
  per image: ~2 s per 500 images on 2 CPU cores;
- its input: every image resized (bilinear, antialiased) to 64x64 in [-1, 1], grayscale repeated to RGB, so
  images of every size and channel count go through the same network;
- the features: the last block's output, 4 x 4 positions x 256 channels flattened (4096 numbers), so *where*
  things are counts, not only what the textures are. Both sets are divided by one number, the RMS feature of
  the reference (real) set, so that x.y/d is about 1 for real images and the cubic kernel of KID is well
  conditioned; a single scale keeps differences of magnitude (e.g. washed-out contrast) visible;
- the score: KID (`fid.kid`, the unbiased MMD^2 with the kernel (x.y/d + 1)^3) x 1e3.

In the evaluate stage: generated vs test (`rkid`, `rkid_std`) and real training images vs test
(`rkid_floor`, what a perfect generator reaches). In training: generated vs val (`rkid`), which the `best_by`
param may choose the best generator by.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from . import REGISTRY, Context, EvalContext, Metric, Scores
from .fid import kid

NET_SEED = 20200521          # the network's weights: a constant, never the params' seed
WIDTHS = (32, 64, 128, 256, 256)   # channels of the 5 blocks
DEPTHS = (1, 1, 2, 2, 2)            # conv3x3-ReLU layers per block, as VGG-11
INPUT_SIZE = 64              # every image is resized to this before the network
SCALE = 1e3                  # rkid is reported x 1e3


def random_vgg(widths: tuple[int, ...] = WIDTHS, depths: tuple[int, ...] = DEPTHS,
               seed: int = NET_SEED) -> nn.Sequential:
    """The feature network, its weights drawn on the CPU from `seed` (identical on every machine); torch's
    global RNG is left as it was, so the metrics after this one see the same random numbers as without it."""
    g = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    c_in = 3
    for i, (c, depth) in enumerate(zip(widths, depths)):
        for _ in range(depth):
            conv = nn.Conv2d(c_in, c, 3, padding=1, bias=False, device="meta")   # no draws from torch's RNG
            std = (2.0 / (c_in * 9)) ** 0.5        # Kaiming normal, fan_in, ReLU gain
            conv.weight = nn.Parameter(torch.randn(conv.weight.shape, generator=g) * std, requires_grad=False)
            layers += [conv, nn.ReLU(inplace=True)]
            c_in = c
        if i < len(widths) - 1:
            layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers).eval()


class RandomFeatures:
    """uint8 images (N, C, H, W), any size and 1 or 3 channels -> (N, 4096) float32 features."""

    def __init__(self, device: str | torch.device = "cpu", batch: int = 100, progress: bool = False):
        self.device, self.batch, self.progress = torch.device(device), batch, progress
        # NHWC: 2-3x faster on the CPU than NCHW for these convs and pools, no slower on GPUs
        self.net = random_vgg().to(self.device, memory_format=torch.channels_last)

    def prepare(self, x: np.ndarray) -> torch.Tensor:
        """A batch of uint8 images as the network's input: float in [-1, 1], RGB, INPUT_SIZE square."""
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"expected uint8 images (N, 1 or 3, H, W), got shape {x.shape}")
        t = torch.from_numpy(np.array(x)).to(self.device).float() / 127.5 - 1  # a copy: x may be a read-only memmap
        if t.shape[1] == 1:
            t = t.expand(-1, 3, -1, -1)
        if t.shape[2:] != (INPUT_SIZE, INPUT_SIZE):
            t = F.interpolate(t, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False,
                              antialias=True)
        return t.contiguous(memory_format=torch.channels_last)

    def features(self, images: np.ndarray, desc: str = "rkid features") -> np.ndarray:
        out = []
        with torch.no_grad(), tqdm(total=len(images), desc=desc, unit="img", disable=not self.progress,
                                   leave=False, dynamic_ncols=True) as bar:
            for i in range(0, len(images), self.batch):
                out.append(self.net(self.prepare(images[i:i + self.batch])).flatten(1).float().cpu())
                bar.update(min(self.batch, len(images) - i))
        if not out:
            return np.zeros((0, WIDTHS[-1] * (INPUT_SIZE >> (len(WIDTHS) - 1)) ** 2), np.float32)
        return torch.cat(out).numpy()


def _kid(f1: np.ndarray, f2: np.ndarray, seed: int) -> tuple[float, float]:
    """kid() x SCALE, over 100 subsets of 1000 as torch-fidelity; but one when every subset would hold both
    whole sets (all alike), and 20 when the sets are too large for kid's one kernel matrix (each subset then
    costs ~1 s of 4096-d kernels on 2 CPU cores)."""
    n1, n2 = len(f1), len(f2)
    subsets = 1 if n1 == n2 <= 1000 else 100 if n1 + n2 <= 6000 else 20
    mean, std = kid(f1, f2, subsets=subsets, seed=seed)
    return SCALE * mean, SCALE * std


class RKID:
    """rkid against a fixed real set, whose features (and the features' scale) are computed once.

    >>> r = RKID(test_images)        # uint8 (N, C, H, W)
    >>> r.distance(generated)        # (rkid, its std over KID's subsets), both x 1e3
    """

    def __init__(self, real: np.ndarray, seed: int = 0, device: str | torch.device = "cpu", batch: int = 100,
                 progress: bool = False):
        self.seed = seed
        self.net = RandomFeatures(device, batch, progress)
        f = self.net.features(real, "rkid real features")
        # one scale for every set: the RMS feature of the real images (x.y/d ~ 1 for them)
        self.scale = float(np.sqrt(np.mean(np.square(f, dtype=np.float64)))) or 1.0
        self.real = f / self.scale

    def distance(self, images: np.ndarray, desc: str = "rkid features") -> tuple[float, float]:
        return _kid(self.net.features(images, desc) / self.scale, self.real, self.seed)


@REGISTRY.register("rkid")
class RKIDMetric(Metric):
    help = {
        "rkid": "KID x1e3 on the features of a fixed randomly initialised VGG-like network (shape and "
                "composition, not only texture), generated vs test; lower is better, 0 = indistinguishable",
        "rkid_std": "standard deviation of rkid over KID's random subsets (0 when every subset is both whole sets)",
        "rkid_floor": "rkid of real training images vs test: what a perfect generator would reach",
    }
    headline = ("rkid", "rkid_floor")
    order = 25   # after swd and fid; it draws no random subsets (ctx.test_subset), so the others' stay as they were

    def evaluate(self, ctx: EvalContext) -> Scores:
        out: Scores = dict(rkid=None, rkid_std=None, rkid_floor=None)
        if min(len(ctx.test), len(ctx.fake)) < 2:
            return out
        ctx.log(f"rkid: {len(ctx.fake)} generated and {len(ctx.train_subset)} training images vs "
                f"{len(ctx.test)} test images")
        r = RKID(ctx.test, seed=ctx.seed, device=ctx.device, progress=ctx.progress)
        out["rkid"], out["rkid_std"] = r.distance(ctx.fake, "rkid generated")
        if len(ctx.train_subset) >= 2:
            out["rkid_floor"], _ = r.distance(ctx.train_subset, "rkid floor")
        return out

    def scorer(self, real: np.ndarray, ctx: Context):
        r = RKID(real, seed=ctx.seed, device=ctx.device, progress=ctx.progress)
        return lambda fake: {"rkid": r.distance(fake)[0]}
