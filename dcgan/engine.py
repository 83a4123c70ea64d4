"""One DCGAN training step, and running it as fast as the device allows.

- `train_step`: the step itself (D on real and generated images, then G through D), used by the train stage
  and by benchmarks/train_throughput.py alike.
- `ResidentData`: the prepared uint8 images where the step reads them: one tensor in GPU memory, or the
  memory-mapped array on the CPU. A batch is drawn by index and converted to float on the device.
- `Stepper`: runs steps with statistics summed on the device (read once per epoch: no host sync inside an
  epoch), through torch.compile'd G and D when asked, and on CUDA replayed from one captured CUDA graph of
  the whole step (data draw, noise, both forward/backward passes, both Adam updates). A compile or capture
  that fails falls back to eager with one log line.
"""
from __future__ import annotations

import numpy as np
import torch

from . import losses, params, pictures
from .device import FastPath, autocast
from .distributed import all_mean, unwrap
from .errors import brief
from .losses.r1 import r1_penalty
from .sampling import frozen_batchnorm

GRAPH_WARMUP_STEPS = 3  # eager steps (on a side stream) before the CUDA graph is captured, as CUDA requires
# What the step measures, summed on the device over an epoch (read once per epoch: no host sync inside it).
# r1 is averaged over the steps that computed it; recon (D's reconstruction error) is there when D reconstructs.
STATS = ("loss_d", "loss_g", "d_real", "d_fake", "r1", "recon")


def train_step(G, D, opt_g, opt_d, x: torch.Tensor, z: torch.Tensor, autocast_ctx, loss: losses.Loss | None = None,
               augment=None):
    """One GAN step: D on real x and detached G(z), then G through D. `loss`: a losses.Loss (default: the
    `loss` param's default); `augment`: a DiffAugment (or None) applied to every image D sees, in both steps.
    A discriminator that `reconstructs` (a self-supervised one, archs/fastgan.py) also rebuilds the real images
    from its features, and that error is part of D's loss. Returns (loss_d, loss_g, D's logits on x, D's
    logits on G(z) before D's update, the reconstruction error or None)."""
    loss = loss or losses.build(params.SCHEMA["loss"].default)
    aug = augment if augment else (lambda t: t)
    # G's step goes around D's DDP wrapper (below); the attribute lookup too
    D_g = unwrap(D)
    with autocast_ctx:
        fake = G(z)
        if getattr(D_g, "reconstructs", False):
            out_real, loss_recon = D(aug(x), reconstruct=True)
        else:
            out_real, loss_recon = D(aug(x)), None
        out_fake = D(aug(fake.detach()))
        loss_d = loss.d(out_real.float(), out_fake.float())
        if loss_recon is not None:
            loss_d = loss_d + loss_recon
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_d.step()
    # G's step needs gradients through D, not of D's weights (a third less backward), and under DDP it goes
    # around D's wrapper: D's gradients are not wanted, so there is nothing to all-reduce for it
    D.requires_grad_(False)
    try:
        with autocast_ctx:
            loss_g = loss.g(D_g(aug(fake)).float())
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
    finally:
        D.requires_grad_(True)
    opt_g.step()
    return loss_d, loss_g, out_real, out_fake, loss_recon


class ResidentData:
    """uint8 images (N, C, H, W) kept where the step reads them; `batch(idx)` gives floats in [-1, 1] there."""

    def __init__(self, images: np.ndarray, device: torch.device, fmt=torch.contiguous_format):
        self.device, self.fmt, self.n = device, fmt, len(images)
        if device.type == "cpu":
            self.host, self.tensor = images, None        # the memory map: pages are read as batches need them
        else:
            self.host, self.tensor = None, torch.from_numpy(np.ascontiguousarray(images)).to(device)
        self.index_device = device if self.tensor is not None else torch.device("cpu")

    def batch(self, idx: torch.Tensor) -> torch.Tensor:
        if self.tensor is not None:
            x = self.tensor.index_select(0, idx)
        else:
            x = torch.from_numpy(self.host[idx.numpy()])  # fancy indexing copies just these rows
        return pictures.to_float(x).contiguous(memory_format=self.fmt)


class Stepper:
    """Runs `train_step` over index batches; sums the STATS on the device."""

    def __init__(self, G, D, opt_g, opt_d, nz: int, fast: FastPath, device: torch.device, log=print,
                 loss: losses.Loss | None = None, augment=None, r1_gamma: float = 0.0, r1_every: int = 16):
        self.G, self.D, self.opt_g, self.opt_d, self.nz = G, D, opt_g, opt_d, nz
        self.loss, self.augment, self.r1_gamma, self.r1_every = loss, augment, r1_gamma, r1_every
        self.steps_done, self.r1_steps = 0, 0
        self.device, self.fast, self.log = device, fast, log
        self.autocast = autocast(device, fast.precision, cache=not fast.cuda_graph)
        self.sums = torch.zeros(len(STATS), device=device)
        self.G_step, self.D_step = G, D
        self.reconstructs = getattr(unwrap(D), "reconstructs", False)
        # R1 updates D outside the captured step; that mix is not verified on a GPU yet: no graph with R1
        self.use_graph = fast.cuda_graph and device.type == "cuda" and r1_gamma == 0
        self.graph = self.static_idx = None
        self.eager_steps = 0
        self.side_stream = torch.cuda.Stream(device) if self.use_graph else None
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # shapes never change: let cuDNN time its algorithms once

    # ---- compile, with a trial run so that a failure shows before any real step ----
    def compile(self, data: ResidentData, batch_size: int) -> bool:
        if not self.fast.compile:
            return False
        try:
            G_c, D_c = torch.compile(self.G), torch.compile(self.D)
            self._trial(G_c, D_c, data, batch_size)
        except Exception as e:  # noqa: BLE001 - any compiler failure: train in eager mode instead
            self.log(f"torch.compile failed ({brief(e, 200)}); training in eager mode")
            return False
        self.G_step, self.D_step = G_c, D_c
        return True

    def _trial(self, G_c, D_c, data: ResidentData, bs: int):
        """Compile every graph the step uses (forward and backward, D with and without weight gradients) on a
        throwaway batch, leaving weights, BatchNorm statistics, gradients and the RNG as they were."""
        gen = torch.Generator(self.device).manual_seed(0)
        x = data.batch(torch.arange(min(bs, data.n), device=data.index_device))
        z = torch.randn(len(x), self.nz, device=self.device, generator=gen)
        with frozen_batchnorm(self.G), frozen_batchnorm(self.D), self.autocast:
            fake = G_c(z)
            (D_c(x).float().mean() + D_c(fake.detach()).float().mean()).backward()
            self.D.requires_grad_(False)
            try:
                D_c(fake).float().mean().backward()
            finally:
                self.D.requires_grad_(True)
        for m in (self.G, self.D):
            m.zero_grad(set_to_none=True)

    # ---- steps ----
    def step(self, data: ResidentData, idx: torch.Tensor):
        self._main_step(data, idx)
        self.steps_done += 1
        if self.r1_gamma > 0 and self.steps_done % self.r1_every == 0:
            self._r1_step(data, idx)

    def _r1_step(self, data: ResidentData, idx: torch.Tensor):
        """StyleGAN2's lazy R1: its own D update every r1_every steps, weight x r1_every, eager and in fp32
        (a double backward: neither torch.compile nor the captured graph can hold it). On augmented reals,
        as D sees them in the main step."""
        x = data.batch(idx)
        if self.augment:
            x = self.augment(x)
        penalty = r1_penalty(self.D, x)
        self.opt_d.zero_grad(set_to_none=True)
        (penalty * (self.r1_gamma / 2 * self.r1_every)).backward()
        self.opt_d.step()
        with torch.no_grad():
            self.sums[STATS.index("r1")] += penalty.detach()
        self.r1_steps += 1

    def _main_step(self, data: ResidentData, idx: torch.Tensor):
        if self.graph is not None:
            self.static_idx.copy_(idx)
            self.graph.replay()
            return
        if self.use_graph and self.eager_steps >= GRAPH_WARMUP_STEPS:
            if self._capture(data, idx):
                self.graph.replay()
                return
        if self.use_graph:  # warm-up steps run on a side stream, as graph capture requires
            self.side_stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self.side_stream):
                self._eager(data, idx)
            torch.cuda.current_stream(self.device).wait_stream(self.side_stream)
        else:
            self._eager(data, idx)
        self.eager_steps += 1

    def _eager(self, data: ResidentData, idx: torch.Tensor):
        x = data.batch(idx)
        z = torch.randn(len(idx), self.nz, device=self.device)
        loss_d, loss_g, out_real, out_fake, loss_recon = train_step(self.G_step, self.D_step, self.opt_g, self.opt_d,
                                                                    x, z, self.autocast, self.loss, self.augment)
        with torch.no_grad():
            # STATS[:4]: loss_d, loss_g, d_real, d_fake
            self.sums[:4] += torch.stack([loss_d.float(), loss_g.float(), torch.sigmoid(out_real.float()).mean(),
                                          torch.sigmoid(out_fake.float()).mean()])
            if loss_recon is not None:
                self.sums[STATS.index("recon")] += loss_recon.detach().float()

    def _capture(self, data: ResidentData, idx: torch.Tensor) -> bool:
        """Record one whole step into a CUDA graph (nothing runs while recording). False, with one log line,
        when capture fails: training goes on in eager mode."""
        self.static_idx = idx.clone()
        graph = torch.cuda.CUDAGraph()
        try:
            torch.cuda.synchronize(self.device)
            with torch.cuda.graph(graph):
                self._eager(data, self.static_idx)
        except Exception as e:  # noqa: BLE001
            self.log(f"CUDA graph capture failed ({brief(e, 200)}); training without it")
            self.use_graph, self.static_idx = False, None
            for m in (self.G, self.D):
                m.zero_grad(set_to_none=True)
            return False
        self.graph = graph
        return True

    @property
    def compiled(self) -> bool:
        return self.G_step is not self.G

    def read_stats(self, steps: int, world=None) -> dict[str, float]:
        """The STATS' means over the epoch's steps and the ranks (the one host sync per epoch); then zero the
        sums. r1 only when R1 is on."""
        counts = [max(self.r1_steps if name == "r1" else steps, 1) for name in STATS]
        means = self.sums / torch.tensor(counts, device=self.sums.device)
        self.r1_steps = 0
        if world is not None:
            means = all_mean(means, world)
        stats = dict(zip(STATS, means.tolist()))
        self.sums.zero_()
        if self.r1_gamma <= 0:
            del stats["r1"]
        if not self.reconstructs:
            del stats["recon"]
        return stats
