"""Image -> latent in one forward pass: train an encoder E on the generator's own samples.

Each step draws z ~ N(0, I), makes x = G(z) with G frozen, and fits E(x) to z with a latent loss plus a
pixel loss ||G(E(x)) - x||^2 (the latent alone under-weights directions G hardly uses; the pixels alone
let E drift off the prior). The pairs are unlimited and exact, so no real image is needed; real images
then start inversion from E(x) (generation.invert), which refines from there.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .device import adam, autocast, memory_format, resolve
from . import archs


def train_encoder(G, steps: int, batch: int, lr: float, pixel_weight: float, seed: int, device,
                  width: int = 64, progress: bool = True, log=print) -> tuple[torch.nn.Module, dict]:
    """Returns (E in eval mode, summary with the final latent and pixel losses and wall time)."""
    torch.manual_seed(seed)  # E's initial weights
    cfg = G.config
    fast = resolve({"precision": "auto", "channels_last": "auto"}, torch.device(device))   # as the train stage
    fmt = memory_format(torch.device(device), fast.channels_last)
    arch = archs.REGISTRY.get(archs.identify(G)[0])    # the encoder of the generator's architecture
    E = arch.encoder(cfg["image_size"], cfg["channels"], cfg["nz"], width).apply(arch.init_weights)
    E = E.to(device, memory_format=fmt).train()
    G = G.to(device, memory_format=fmt).eval().requires_grad_(False)
    opt = adam(E.parameters(), lr, (0.5, 0.999), torch.device(device))
    amp = autocast(torch.device(device), fast.precision)
    gen = torch.Generator(device).manual_seed(seed)
    sums = torch.zeros(2, device=device)
    t0, window = time.perf_counter(), max(1, min(100, steps // 10))
    history = []
    with tqdm(total=steps, desc="encoder", unit="step", disable=not progress, dynamic_ncols=True) as bar:
        for step in range(1, steps + 1):
            z = torch.randn(batch, cfg["nz"], device=device, generator=gen)
            with torch.no_grad(), amp:
                x = G(z)
            with amp:
                z_hat = E(x).float()
                latent = F.mse_loss(z_hat, z)
                pixel = F.mse_loss(G(z_hat).float(), x.float())
                loss = latent + pixel_weight * pixel
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sums += torch.stack([latent.detach(), pixel.detach()])
            if step % window == 0 or step == steps:   # the only host syncs: once per window
                n = window if step % window == 0 else step % window
                lat, pix = (sums / n).tolist()
                sums.zero_()
                history.append((step, lat, pix))
                bar.set_postfix(latent=f"{lat:.4f}", pixel=f"{pix:.4f}")
            bar.update()
    G.requires_grad_(True)
    E = E.to(memory_format=torch.contiguous_format)
    step, lat, pix = history[-1]
    summary = {"steps": steps, "latent_mse": lat, "pixel_mse": pix, "wall_s": time.perf_counter() - t0}
    log(f"encoder: {steps} steps, latent MSE {lat:.4f}, pixel MSE {pix:.4f}, {summary['wall_s']:.1f}s")
    return E.eval(), summary

