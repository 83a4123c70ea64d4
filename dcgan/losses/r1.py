"""R1 (Mescheder et al. 2018): gamma/2 * E||grad_x D(x)||^2 on real images, a regulariser beside any loss.

It needs a double backward, which torch.compile can't do: the training step runs it in eager mode, every
`r1_every` steps with its weight scaled by the interval (StyleGAN2's lazy regularisation), as its own D update.
"""
import torch


def r1_penalty(D, x: torch.Tensor) -> torch.Tensor:
    """E over the batch of ||d D(x) / d x||^2 (sum over pixels), differentiable w.r.t. D's weights."""
    x = x.detach().requires_grad_(True)
    out = D(x)
    (grad,) = torch.autograd.grad(out.float().sum(), x, create_graph=True)
    return grad.float().square().flatten(1).sum(1).mean()
