"""Several processes, GPUs or machines: torchrun relaunch, ranks, DDP wrapping, rank-0-only side effects.

`nproc` > 1 (or `nnodes` > 1) makes the train stage start itself again under torchrun
(`python -m torch.distributed.run`): `--standalone` on one machine, so two runs never collide on a port, or
a rendezvous at `rdzv_endpoint` across machines, where this machine is node 0 unless DCGAN_NODE_RANK says
otherwise. Every process trains on its own shard of each batch;
DistributedDataParallel averages the gradients, so `batch_size` stays the global batch whatever the number of
processes. Rank 0 alone logs, writes the checkpoint, the models and the summary.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

UNDER_TORCHRUN = "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def wants_launch(p: dict) -> bool:
    """True when the params ask for more than one process and this one was not started by torchrun."""
    return (p.get("nproc", 1) > 1 or p.get("nnodes", 1) > 1) and not UNDER_TORCHRUN


def torchrun_command(p: dict, entry: str, args: list[str]) -> list[str]:
    """The torchrun command line that starts `entry args` nproc times here (and nnodes machines in all).
    entry: a module name (`stages.train`, run as `python -m` runs it: the package of the working directory,
    as in a queued experiment's copy) or a script's path."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={p.get('nproc', 1)}"]
    if p.get("nnodes", 1) > 1:
        host, _, port = str(p.get("rdzv_endpoint", "")).rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"nnodes > 1 needs rdzv_endpoint as host:port of the first machine, got "
                             f"{p.get('rdzv_endpoint')!r}")
        # static rendezvous: the machine that runs `dvc exp run` is node 0 and so holds rank 0, which writes
        # the outputs; the others start the same stage with DCGAN_NODE_RANK=1, 2, ...
        cmd += [f"--nnodes={p['nnodes']}", f"--node_rank={os.environ.get('DCGAN_NODE_RANK', '0')}",
                f"--master_addr={host}", f"--master_port={port}"]
    else:
        cmd += ["--standalone"]  # a free port of its own: two runs on one machine never collide
    return cmd + (["-m", entry] if not entry.endswith(".py") else [entry]) + list(args)


def init(device_name: str) -> World:
    """Join the process group when started by torchrun; a World of one otherwise."""
    if not UNDER_TORCHRUN or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return World()
    _die_with_parent()
    local_rank = int(os.environ["LOCAL_RANK"])
    cuda = torch.cuda.is_available() and device_name in ("auto", "cuda") or device_name.startswith("cuda")
    if cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if cuda else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), local_rank)


def _die_with_parent():
    """Linux: end this rank when torchrun's agent dies (say, SIGKILLed with the DVC run): torchrun starts ranks
    in sessions of their own, and orphaned ranks would go on training and writing checkpoints."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
        except OSError:
            pass


def device_for(world: World, device: torch.device) -> torch.device:
    """One GPU per process on a machine (cuda:LOCAL_RANK); CPU processes share the CPU."""
    if world.distributed and device.type == "cuda":
        return torch.device("cuda", world.local_rank)
    return device


def wrap(module: torch.nn.Module, world: World, device: torch.device) -> torch.nn.Module:
    """DDP with broadcast_buffers=False: D runs twice (real, generated) before one backward, and DDP's buffer
    broadcast before the second pass would overwrite BatchNorm statistics that autograd still needs. Each
    rank keeps its own running statistics; `average_buffers` evens them out before anything is saved."""
    if not world.distributed:
        return module
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False)


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    return getattr(module, "module", module)


def average_buffers(module: torch.nn.Module, world: World):
    """BatchNorm running statistics: the mean over ranks (the weights are equal on every rank already)."""
    if not world.distributed:
        return
    for name, buf in unwrap(module).named_buffers():
        if buf.is_floating_point():
            dist.all_reduce(buf, op=dist.ReduceOp.AVG if buf.device.type == "cuda" else dist.ReduceOp.SUM)
            if buf.device.type != "cuda":   # gloo has no AVG
                buf.div_(world.size)


def all_mean(t: torch.Tensor, world: World) -> torch.Tensor:
    if world.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= world.size
    return t


def gather_objects(obj, world: World) -> list:
    if not world.distributed:
        return [obj]
    out = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, world: World):
    """Rank 0's obj on every rank."""
    if not world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def checksums_agree(modules, world: World) -> tuple[bool, list[float]]:
    """Every rank's float64 sum of all parameters: DDP keeps them equal, and this says whether it did."""
    total = sum(float(p.detach().double().sum()) for m in modules for p in unwrap(m).parameters())
    sums = gather_objects(total, world)
    return all(s == sums[0] for s in sums), sums


def finish(world: World):
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()
