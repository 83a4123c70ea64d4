"""Where and how tensors run: device choice, memory layout, mixed precision."""
from __future__ import annotations

import torch


def mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def pick_device(name: str) -> torch.device:
    """'auto' = cuda, then mps, then cpu. ValueError naming the device when it is not available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_available() else torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device '{name}' asked for in params.yaml, but no CUDA GPU is available; use 'auto' or 'cpu'")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise ValueError(f"device '{name}' asked for in params.yaml, but this machine has "
                         f"{torch.cuda.device_count()} CUDA GPU(s) (cuda:0 ...); use 'auto' or 'cuda'")
    if name == "mps" and not mps_available():
        raise ValueError("device 'mps' asked for in params.yaml, but MPS is not available; use 'auto' or 'cpu'")
    return torch.device(name)


def memory_format(device: torch.device) -> torch.memory_format:
    """NHWC where it is known to help (CPU and CUDA convolutions); the default layout elsewhere (MPS)."""
    return torch.channels_last if device.type in ("cpu", "cuda") else torch.contiguous_format


def autocast(device: torch.device, precision: str):
    """bf16 autocast when precision is 'bf16'; a no-op context otherwise."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
