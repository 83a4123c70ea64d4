"""`bce`: the non-saturating loss of Goodfellow et al. 2014, as in DCGAN (D: BCE on real = 1, fake = 0;
G: BCE on fake = 1), on logits."""
import torch
import torch.nn.functional as F

from . import REGISTRY, Loss


@REGISTRY.register("bce")
class NonSaturating(Loss):
    def d(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        return (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))

    def g(self, fake: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))
