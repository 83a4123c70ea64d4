"""GAN losses on D's logits, and the R1 gradient penalty.

- `bce`: the non-saturating loss of Goodfellow et al. / DCGAN (D: BCE on real=1, fake=0; G: BCE on fake=1).
- `hinge`: Lim & Ye 2017 / SAGAN / BigGAN (D: relu(1 - real) + relu(1 + fake); G: -fake).
- R1 (Mescheder et al. 2018): gamma/2 * E||grad_x D(x)||^2 on real images. It needs a double backward,
  which torch.compile can't do: it runs in eager mode, every `r1_every` steps with its weight scaled by
  the interval (StyleGAN2's lazy regularisation), as its own D update.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("bce", "hinge")


def d_loss(kind: str, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    real, fake = real.float(), fake.float()
    if kind == "bce":
        return (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))
    if kind == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    raise ValueError(f"unknown loss '{kind}' (choose from {', '.join(LOSSES)})")


def g_loss(kind: str, fake: torch.Tensor) -> torch.Tensor:
    fake = fake.float()
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))
    if kind == "hinge":
        return -fake.mean()
    raise ValueError(f"unknown loss '{kind}' (choose from {', '.join(LOSSES)})")


def r1_penalty(D, x: torch.Tensor) -> torch.Tensor:
    """E over the batch of ||d D(x) / d x||^2 (sum over pixels), differentiable w.r.t. D's weights."""
    x = x.detach().requires_grad_(True)
    out = D(x)
    (grad,) = torch.autograd.grad(out.float().sum(), x, create_graph=True)
    return grad.float().square().flatten(1).sum(1).mean()
