"""The networks behind the server as numpy functions, whatever runs them.

A generator maps latents (N, nz) float32 to images (N, C, H, W) float32 in [-1, 1]; an encoder maps such
images to latents. Two runtimes:
- OnnxNet (dcgan/onnx_net.py): an exported .onnx file run by onnxruntime, with numpy alone. The serving
  image carries only this one: no torch (docs/deploy.md).
- TorchNet: a torch module (.pt, TorchScript, or a module a test builds); torch is imported only here.
  An eager module can also refine inversions by gradient steps (Settings.invert_steps).
The server's seeded noise is numpy's, so that /sample?seed=3 draws the same picture from both runtimes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..onnx_net import OnnxNet


class TorchNet:
    """A torch module (eager or TorchScript) or any callable on float tensors, behind numpy in and out."""

    def __init__(self, module):
        import torch

        self.module = module
        self.differentiable = isinstance(module, torch.nn.Module)   # eager or TorchScript: refinement possible
        if self.differentiable:
            # Eval mode for good: no model thread ever sees another's mode switch. No parameter gradients in
            # refinement, and no race between model threads.
            module.eval()
            for p in module.parameters():
                p.requires_grad_(False)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            return self.module(torch.from_numpy(np.ascontiguousarray(x, np.float32))).float().numpy()

    def invert(self, images: np.ndarray, steps: int, encoder) -> tuple[np.ndarray, np.ndarray]:
        """The encoder's latents refined by `steps` gradient steps through this generator: (z, error)."""
        from .. import generation

        E = encoder.module if isinstance(encoder, TorchNet) else None
        return generation.invert(self.module, images, steps, "cpu", encoder=E, progress=False)


def as_net(model):
    """A runtime net for what the server was given: an OnnxNet or TorchNet as is, else a torch module."""
    return model if isinstance(model, (OnnxNet, TorchNet)) else TorchNet(model)


def load(path: Path | str, threads: int | None = None):
    """A model file -> (net, kind, config). .onnx through onnxruntime alone; .pt and .ts through torch.
    FileNotFoundError or ValueError (one line) when it cannot be used."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        if not path.is_file():
            raise FileNotFoundError(f"model file '{path}' not found")
        net = OnnxNet(path, threads)
        return net, net.kind, net.config
    from ..export import load_runnable   # torch

    model, kind, config = load_runnable(path, threads=threads)
    return model, kind, config


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8 (N, C, H, W) -> float32 in [-1, 1] (the same numbers as dcgan.pictures.to_float, without torch)."""
    return images.astype(np.float32) / np.float32(127.5) - np.float32(1)


def noise(n: int, nz: int, seed: int) -> np.ndarray:
    """The server's seeded latents (numpy's generator: the same with or without torch)."""
    return np.random.default_rng(seed).standard_normal((n, nz), dtype=np.float32)


def slerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """Spherical interpolation between two latents (as dcgan.generation.slerp, in numpy)."""
    an, bn = a / np.linalg.norm(a), b / np.linalg.norm(b)
    omega = np.arccos(np.clip(np.dot(an, bn), -1, 1))
    so = np.sin(omega)
    if abs(so) < 1e-6:
        return ((1 - t) * a + t * b).astype(np.float32)
    return ((np.sin((1 - t) * omega) / so) * a + (np.sin(t * omega) / so) * b).astype(np.float32)
