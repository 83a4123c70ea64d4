"""`translation`: shift each image by up to 1/8 of its side, zero-filled."""
import torch
import torch.nn.functional as F

from . import REGISTRY

RATIO = 0.125


@REGISTRY.register("translation")
def translation(x: torch.Tensor, strength: float = 1.0, ratio: float = RATIO) -> torch.Tensor:
    """Shift each image by its own (dy, dx), up to ratio * side pixels; pixels shifted in are 0."""
    n, c, h, w = x.shape
    sy, sx = int(h * ratio * strength + 0.5), int(w * ratio * strength + 0.5)
    if sy == 0 and sx == 0:
        return x
    dy = torch.randint(-sy, sy + 1, (n, 1, 1), device=x.device)
    dx = torch.randint(-sx, sx + 1, (n, 1, 1), device=x.device)
    # source pixel of each output pixel in a 1-pixel zero-padded image; out-of-range sources land on the pad
    ys = (torch.arange(h, device=x.device).view(1, h, 1) - dy + 1).clamp(0, h + 1)
    xs = (torch.arange(w, device=x.device).view(1, 1, w) - dx + 1).clamp(0, w + 1)
    flat = (ys * (w + 2) + xs).view(n, 1, h * w).expand(n, c, h * w)
    padded = F.pad(x, (1, 1, 1, 1)).flatten(2)
    return padded.gather(2, flat).view(n, c, h, w)
