"""`cutout`: set a square of half the side to zero, at a random place per image."""
import torch

from . import REGISTRY

RATIO = 0.5


@REGISTRY.register("cutout")
def cutout(x: torch.Tensor, strength: float = 1.0, ratio: float = RATIO) -> torch.Tensor:
    """Zero a square of side ratio * side (centre uniform over the image, clipped at the border)."""
    n, _, h, w = x.shape
    size_y, size_x = int(h * ratio * strength + 0.5), int(w * ratio * strength + 0.5)
    if size_y == 0 or size_x == 0:
        return x
    cy = torch.randint(0, h, (n, 1, 1), device=x.device) - size_y // 2
    cx = torch.randint(0, w, (n, 1, 1), device=x.device) - size_x // 2
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (ys >= cy) & (ys < cy + size_y) & (xs >= cx) & (xs < cx + size_x)
    return x * (~inside).unsqueeze(1).to(x.dtype)
