"""`color`: brightness, saturation and contrast, each by a random amount per image."""
import torch

from . import REGISTRY, uniform_per_image


def brightness(x: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    return x + (uniform_per_image(x) - 0.5) * strength


def saturation(x: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    mean = x.mean(dim=1, keepdim=True)                       # grey: every channel equals the mean
    return (x - mean) * (1 + (uniform_per_image(x) * 2 - 1) * strength) + mean


def contrast(x: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (1 + (uniform_per_image(x) - 0.5) * strength) + mean


@REGISTRY.register("color")
def color(x: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    return contrast(saturation(brightness(x, strength), strength), strength)
