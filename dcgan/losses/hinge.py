"""`hinge`: Lim & Ye 2017, as in SAGAN and BigGAN (D: relu(1 - real) + relu(1 + fake); G: -fake)."""
import torch
import torch.nn.functional as F

from . import REGISTRY, Loss


@REGISTRY.register("hinge")
class Hinge(Loss):
    def d(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()

    def g(self, fake: torch.Tensor) -> torch.Tensor:
        return -fake.mean()
