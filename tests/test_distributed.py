"""Several processes (DDP over gloo on the CPU): the train stage relaunched by torchrun through `nproc`, two
"machines" on loopback through `nnodes` + `rdzv_endpoint`, SIGKILL and resume, and the fast path's first
losses against the plain fp32 eager path."""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import ROOT, TINY, env, make_prepared
from dcgan import params as P
from dcgan.device import FastPath, adam
from dcgan.engine import ResidentData, Stepper
from dcgan import archs

if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    pytest.skip("this torch build has no gloo backend", allow_module_level=True)

SYNC = "ranks hold the same weights"


@pytest.fixture
def prepared(tmp_path) -> Path:
    return make_prepared(tmp_path / "prepared", n_train=128)


def write_params(path: Path, **changes) -> Path:
    p = P.read(ROOT / "params.yaml")
    p.update({**TINY, "batch_size": 16, "epochs": 2, "checkpoint_every": 1, "precision": "fp32", **changes})
    path.write_text(yaml.safe_dump(p, sort_keys=False))
    return path


def train_cmd(tmp: Path, out: str, prepared: Path, params: Path) -> list:
    return [sys.executable, str(ROOT / "stages/train.py"), "--params", str(params), "--prepared", str(prepared),
            "--models", str(tmp / out / "models"), "--live", str(tmp / out / "live"),
            "--summary", str(tmp / out / "train.json")]


def ddp_env() -> dict:
    e = env()
    e.update(OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")   # two processes on two cores; loopback only
    return e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_nproc_2_relaunches_under_torchrun_and_ranks_agree(tmp_path, prepared):
    params = write_params(tmp_path / "params.yaml", nproc=2)
    r = subprocess.run(train_cmd(tmp_path, "a", prepared, params), env=ddp_env(), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "launching: " in r.stdout and "--standalone" in r.stdout and "--nproc_per_node=2" in r.stdout
    assert "2 processes with DDP, 8 images each per step" in r.stdout
    assert f"all 2 {SYNC}" in r.stdout
    ckpt = torch.load(tmp_path / "a/models/checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["fingerprint"]["world_size"] == 2 and len(ckpt["rng"]) == 2
    assert all(torch.isfinite(v.float()).all() for v in ckpt["G"].values())
    assert (tmp_path / "a/models/generator.pt").is_file() and (tmp_path / "a/train.json").is_file()
    rows = (tmp_path / "a/live/plots/metrics/loss_g.tsv").read_text().splitlines()
    assert len(rows) == 3                                           # rank 0 alone logged: one row per epoch

    # the same data with one process is another fingerprint: it starts fresh and says why
    one = write_params(tmp_path / "one.yaml", nproc=1, epochs=3)
    r = subprocess.run(train_cmd(tmp_path, "a", prepared, one), env=ddp_env(), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0 and "world_size 2 -> 1" in r.stdout, r.stdout[-2000:]


def test_two_machines_on_loopback_rendezvous_and_agree(tmp_path, prepared):
    params = write_params(tmp_path / "params.yaml", nnodes=2, nproc=1, rdzv_endpoint=f"127.0.0.1:{free_port()}")
    procs = [subprocess.Popen(train_cmd(tmp_path, f"node{i}", prepared, params), env={**ddp_env(), "DCGAN_NODE_RANK": str(i)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for i, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, out[-3000:]
        assert "--nnodes=2" in out and f"--node_rank={i}" in out and "--master_addr=127.0.0.1" in out
    assert (tmp_path / "node0/models/checkpoint.pt").is_file() and (tmp_path / "node0/train.json").is_file()
    assert not (tmp_path / "node1/models").exists()       # node 1 holds rank 1: it writes nothing
    assert f"all 2 {SYNC}" in outs[0]

def test_ddp_run_killed_with_sigkill_resumes(tmp_path, prepared):
    # epochs far beyond what runs before the kill, however loaded the machine: the kill always lands mid-run
    params = write_params(tmp_path / "params.yaml", nproc=2, epochs=10_000)
    ckpt = tmp_path / "a/models/checkpoint.pt"
    proc = subprocess.Popen(train_cmd(tmp_path, "a", prepared, params), env=ddp_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline, epoch = time.time() + 300, 0
    while time.time() < deadline and proc.poll() is None and epoch < 2:
        if ckpt.is_file():
            try:
                epoch = torch.load(ckpt, weights_only=True)["epoch"]
            except Exception:  # noqa: BLE001 - os.replace makes old or new visible, never half
                pass
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed; the test proves nothing"
    # torchrun starts its workers in sessions of their own: kill the whole tree at once, as a power cut would
    import psutil
    tree = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    assert len(tree) >= 4, "expected the stage, torchrun and two ranks"
    for pid in tree:
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    psutil.wait_procs([p for p in map(_process, tree) if p], timeout=30)
    assert not (tmp_path / "a/models/generator.pt").exists()
    killed_at = torch.load(ckpt, weights_only=True)["epoch"]
    # continue to two epochs past the checkpoint (epochs is not part of the fingerprint: raising it continues)
    write_params(params, nproc=2, epochs=killed_at + 2)
    r = subprocess.run(train_cmd(tmp_path, "a", prepared, params), env=ddp_env(), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"resuming from checkpoint at epoch {killed_at}" in r.stdout, r.stdout[-2000:]
    assert f"all 2 {SYNC}" in r.stdout, r.stdout[-2000:]
    steps = [line.split("\t")[0] for line in (tmp_path / "a/live/plots/metrics/loss_d.tsv").read_text().splitlines()]
    assert steps == ["step"] + [str(e) for e in range(1, killed_at + 3)]

def _process(pid):
    import psutil
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None


def first_losses(fast: FastPath, steps: int = 1, device: str = "cpu", arch: str = "dcgan") -> tuple[float, float]:
    torch.manual_seed(0)
    parts = archs.REGISTRY.get(arch)
    G = parts.generator(32, 1, 16, 16).apply(parts.init_weights)
    D = parts.discriminator(32, 1, 16).apply(parts.init_weights)
    fmt = torch.channels_last if fast.channels_last else torch.contiguous_format
    dev = torch.device(device)
    G.to(dev, memory_format=fmt)
    D.to(dev, memory_format=fmt)
    opt_g = adam(G.parameters(), 2e-4, (0.5, 0.999), dev, capturable=fast.cuda_graph)
    opt_d = adam(D.parameters(), 2e-4, (0.5, 0.999), dev, capturable=fast.cuda_graph)
    images = np.random.default_rng(1).integers(0, 256, (64, 1, 32, 32), dtype=np.uint8)
    data = ResidentData(images, dev, fmt)
    stepper = Stepper(G, D, opt_g, opt_d, 16, fast, dev, log=lambda s: None)
    stepper.compile(data, 32)
    torch.manual_seed(1)
    for i in range(steps):
        stepper.step(data, torch.arange(32 * (i % 2), 32 * (i % 2 + 1), device=data.index_device))
    assert stepper.graph is not None or not fast.cuda_graph, "the CUDA graph was not captured"
    stats = stepper.read_stats(steps)
    loss_d, loss_g = stats["loss_d"], stats["loss_g"]
    return loss_d, loss_g


@pytest.mark.parametrize("fast, rtol", [
    # channels_last: other convolution kernels, same maths; summed in another order (fastgan's 2e-5 on 16 threads)
    (FastPath("fp32", True, False, False), 1e-4),
    (FastPath("bf16", True, False, False), 3e-2),     # bf16 autocast: 8 bits of mantissa in the convolutions
])
@pytest.mark.parametrize("arch", ["dcgan", "fastgan"])
def test_fast_path_first_losses_match_plain_fp32_eager(fast, rtol, arch):
    plain = first_losses(FastPath("fp32", False, False, False), steps=3, arch=arch)
    got = first_losses(fast, steps=3, arch=arch)
    np.testing.assert_allclose(got, plain, rtol=rtol)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CI has none; run on a GPU machine)")
@pytest.mark.parametrize("arch", ["dcgan", "fastgan"])    # fastgan: noise injection and D's decoder in the graph
@pytest.mark.parametrize("fast, rtol", [
    (FastPath("fp32", True, False, True), 2e-2),      # whole step replayed from a CUDA graph (3 eager, then replays)
    (FastPath("bf16", True, False, True), 5e-2),      # the default on CUDA
])
def test_cuda_fast_path_matches_plain_fp32_eager(fast, rtol, arch):
    plain = first_losses(FastPath("fp32", False, False, False), steps=8, device="cuda", arch=arch)
    got = first_losses(fast, steps=8, device="cuda", arch=arch)
    np.testing.assert_allclose(got, plain, rtol=rtol)
