"""Where and how tensors run: device choice, memory layout, mixed precision, the optimiser, torch.compile.

The fast path is params (`precision`, `channels_last`, `compile`), each with an `auto` that resolves to what
measured fastest on that kind of device (benchmarks/train_throughput.py); `resolve` turns them into a
`FastPath`, which the checkpoint fingerprint records because each of them changes the numbers a bit.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

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


def cpu_has_fast_bf16() -> bool:
    """oneDNN runs bf16 convolutions natively (AVX-512 BF16 or AMX); elsewhere bf16 is emulated and slow."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@dataclass(frozen=True)
class FastPath:
    precision: str       # fp32 | bf16
    channels_last: bool
    compile: bool        # torch.compile of G and D
    cuda_graph: bool     # replay the whole training step from one captured CUDA graph

    def as_dict(self) -> dict:
        return asdict(self)


def resolve(p: dict, device: torch.device, distributed: bool = False) -> FastPath:
    """The `auto` params made concrete for `device`, from what measured fastest there (see docs/speed.md)."""
    precision = p.get("precision", "fp32")
    if precision == "auto":
        if device.type == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        elif device.type == "cpu":
            precision = "bf16" if cpu_has_fast_bf16() else "fp32"
        else:
            precision = "fp32"           # MPS: bf16 autocast support varies with the macOS version
    channels_last = p.get("channels_last", "auto")
    if channels_last == "auto":
        channels_last = device.type in ("cpu", "cuda")   # NHWC convolutions in oneDNN and cuDNN
    compile_ = p.get("compile", "auto")
    if compile_ == "auto":
        compile_ = False                 # measured: see docs/speed.md
    # CUDA graphs: on wherever CUDA is (the step falls back to eager when capture fails); "cuda_graph": False
    # in p turns them off (benchmarks compare both)
    # under DDP the gradient all-reduce runs in backward hooks, which a captured graph would freeze: no graph
    return FastPath(precision, bool(channels_last), bool(compile_),
                    cuda_graph=device.type == "cuda" and not distributed and p.get("cuda_graph", True) is not False)


def memory_format(device: torch.device, channels_last: bool | None = None) -> torch.memory_format:
    """NHWC where it helps (CPU and CUDA convolutions, unless turned off); the default layout elsewhere (MPS)."""
    if channels_last is None:
        channels_last = device.type in ("cpu", "cuda")
    return torch.channels_last if channels_last and device.type in ("cpu", "cuda") else torch.contiguous_format


def autocast(device: torch.device, precision: str, cache: bool = True):
    """bf16 autocast when precision is 'bf16'; a no-op context otherwise. cache=False: cast the weights on every
    use (autocast's weight-cast cache does not survive CUDA graph replays)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16", cache_enabled=cache)


def adam(params, lr: float, betas: tuple[float, float], device: torch.device, capturable: bool = False):
    """Adam with the fastest implementation the device has: fused kernels on CUDA and the CPU (one pass over
    each parameter instead of foreach's several: +10% images/s at the demo shape on 2 cores), foreach elsewhere."""
    if device.type == "cuda":
        return torch.optim.Adam(params, lr=lr, betas=betas, fused=True, capturable=capturable)
    if device.type == "cpu":
        return torch.optim.Adam(params, lr=lr, betas=betas, fused=True)
    return torch.optim.Adam(params, lr=lr, betas=betas, foreach=True)


def synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
