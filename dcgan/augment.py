"""DiffAugment (Zhao et al. 2020): random, differentiable augmentations of every image D sees, real and
generated, in both the D and the G step, so D cannot memorise a small training set and G still learns
the un-augmented distribution (the augmentations are applied to both sides and pass gradients to G).

Policies (comma-separated, applied in this order): `color` (brightness, saturation, contrast),
`translation` (shift by up to 1/8 of the side, zero-filled), `cutout` (a square of half the side set to
zero). Every parameter is drawn per image as a tensor on the images' device: no Python loop over images,
no host sync (so the step can be captured in a CUDA graph). `strength` scales every range; 0 is the
identity. Outputs are clamped to [-1, 1], the range of the data and of G's tanh.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

TRANSLATION_RATIO = 0.125
CUTOUT_RATIO = 0.5


def _rand(x: torch.Tensor) -> torch.Tensor:
    """One uniform [0, 1) number per image, shaped to broadcast over (C, H, W)."""
    return torch.rand(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype)


def brightness(x: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    return x + (_rand(x) - 0.5) * strength


def saturation(x: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    mean = x.mean(dim=1, keepdim=True)                       # grey: every channel equals the mean
    return (x - mean) * (1 + (_rand(x) * 2 - 1) * strength) + mean


def contrast(x: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (1 + (_rand(x) - 0.5) * strength) + mean


def color(x: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    return contrast(saturation(brightness(x, strength), strength), strength)


def translation(x: torch.Tensor, strength: float = 1.0, ratio: float = TRANSLATION_RATIO) -> torch.Tensor:
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


def cutout(x: torch.Tensor, strength: float = 1.0, ratio: float = CUTOUT_RATIO) -> torch.Tensor:
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


POLICIES = {"color": color, "translation": translation, "cutout": cutout}


def parse_policy(policy: str) -> list[str]:
    """'color,translation' -> ['color', 'translation']; '' or 'none' -> []. ValueError names a bad part."""
    names = [s.strip() for s in policy.split(",") if s.strip() and s.strip() != "none"]
    for name in names:
        if name not in POLICIES:
            raise ValueError(f"unknown augmentation '{name}' (choose from {', '.join(POLICIES)}, comma-separated)")
    return names


class DiffAugment:
    """Callable on a batch (N, C, H, W) in [-1, 1]; keeps shape, device, dtype and memory format."""

    def __init__(self, policy: str, strength: float = 1.0):
        self.names, self.strength = parse_policy(policy), strength

    def __bool__(self) -> bool:
        return bool(self.names) and self.strength > 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self:
            return x
        fmt = torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
            and not x.is_contiguous() else torch.contiguous_format
        for name in self.names:
            x = POLICIES[name](x, self.strength)
        return x.clamp(-1, 1).contiguous(memory_format=fmt)
