"""A queue on several GPUs: each experiment claims a GPU no other holds, machine-wide, and a killed one frees
its GPU. Tested on the CPU: the GPUs are ids (claim) or DCGAN_FAKE_GPUS (device_for_run)."""
import select
import signal
import stat
import subprocess
import sys

import torch

from conftest import ROOT
from dcgan import gpu_claim

# one queued experiment: claims one of 3 GPUs, prints "index|line", holds the claim until stdin closes
HOLDER = """
import sys
from pathlib import Path
from dcgan.gpu_claim import claim
lines = []
print(claim(3, lock_dir=Path(sys.argv[1]), log=lines.append), *lines, sep="|", flush=True)
sys.stdin.read()
"""


def start(lock_dir):
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(lock_dir)], cwd=ROOT, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)


def claimed(proc) -> tuple[str, int]:
    """The holder's line and index."""
    assert select.select([proc.stdout], [], [], 20)[0], "the holder said nothing in 20 s"
    index, _, line = proc.stdout.readline().strip().partition("|")
    assert index.isdigit(), f"no index from the holder: {index!r} {line!r}"
    return line, int(index)


def test_processes_take_distinct_gpus_then_share_and_a_killed_one_frees_its_gpu(tmp_path):
    procs = []
    try:
        procs = [start(tmp_path) for _ in range(3)]                # concurrently
        first = [claimed(p) for p in procs]
        assert sorted(i for _, i in first) == [0, 1, 2]
        assert all("held by no other experiment" in line for line, _ in first)

        procs.append(start(tmp_path))
        line, shared = claimed(procs[-1])
        assert shared in (0, 1, 2)
        assert f"all 3 GPUs are held by other experiments: sharing cuda:{shared} with 1 other" in line

        victim = next(p for p, (_, i) in zip(procs, first) if i != shared)
        freed = first[procs.index(victim)][1]
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
        procs.append(start(tmp_path))
        line, index = claimed(procs[-1])
        assert index == freed, "the killed holder's GPU stayed claimed"
        assert line.startswith(f"device cuda:{freed}: GPU {freed} of 3, held by no other experiment")
    finally:
        for p in procs:
            p.kill()
            p.wait(timeout=10)


def test_more_claims_than_gpus_share_them_evenly(tmp_path):
    lines = []
    assert [gpu_claim.claim(2, lock_dir=tmp_path, log=lines.append) for _ in range(5)] == [0, 1, 0, 1, 0]
    assert lines[1] == "device cuda:1: GPU 1 of 2, held by no other experiment (others hold cuda:0)"
    assert lines[4] == ("device cuda:0: GPU 0 of 2, all 2 GPUs are held by other experiments: "
                        "sharing cuda:0 with 2 others")


def test_lock_files_left_by_ended_processes_hold_nothing(tmp_path):
    for name in ("0.lock", "1.lock", "0.1.lock"):
        (tmp_path / name).touch()
    lines = []
    assert gpu_claim.claim(2, lock_dir=tmp_path, log=lines.append) == 0
    assert lines == ["device cuda:0: GPU 0 of 2, held by no other experiment (others hold none)"]


def test_the_lock_dir_is_open_to_every_user(tmp_path):
    gpu_claim.claim(2, lock_dir=tmp_path / "claims", log=lambda _: None)
    assert stat.S_IMODE((tmp_path / "claims").stat().st_mode) == 0o1777


def test_an_unusable_lock_dir_means_no_claim_and_one_line(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    lines = []
    assert gpu_claim.claim(2, lock_dir=tmp_path / "file" / "claims", log=lines.append) is None
    assert len(lines) == 1 and "no claim" in lines[0]

    monkeypatch.setenv(gpu_claim.FAKE_GPUS, "2")
    monkeypatch.setenv(gpu_claim.LOCK_DIR, str(tmp_path / "file" / "claims"))
    assert gpu_claim.device_for_run("auto", distributed=False, log=lines.append) is None
    assert len(lines) == 2


def test_device_for_run_claims_only_when_it_may_choose_among_several_gpus(tmp_path, monkeypatch):
    monkeypatch.setenv(gpu_claim.LOCK_DIR, str(tmp_path))
    monkeypatch.setenv(gpu_claim.FAKE_GPUS, "2")
    assert len(set(gpu_claim.visible_gpus())) == 2
    lines = []
    for name in ("cpu", "mps", "cuda:1"):
        assert gpu_claim.device_for_run(name, distributed=False, log=lines.append) is None
    assert gpu_claim.device_for_run("auto", distributed=True, log=lines.append) is None   # torchrun's ranks
    monkeypatch.setenv(gpu_claim.FAKE_GPUS, "1")
    assert gpu_claim.device_for_run("auto", distributed=False, log=lines.append) is None
    assert lines == []

    monkeypatch.setenv(gpu_claim.FAKE_GPUS, "2")
    assert gpu_claim.device_for_run("auto", distributed=False, log=lines.append) == torch.device("cuda", 0)
    # a second run in the same process (a benchmark's loop) keeps its GPU: no second claim
    assert gpu_claim.device_for_run("cuda", distributed=False, log=lines.append) == torch.device("cuda", 0)
    assert [line.split(":")[:2] for line in lines] == [["device cuda", "0"]]
    assert gpu_claim.claim(2, gpu_claim.visible_gpus(), tmp_path, log=lines.append) == 1   # another claimer: the other


def test_each_stage_of_a_queued_experiment_claims_and_makes_current_its_gpu(tmp_path, monkeypatch):
    """stage_device (train, encoder, evaluate): a claim only where pick_device chose CUDA; the claimed GPU is
    made the current device."""
    from dcgan import device as devices

    monkeypatch.setenv(gpu_claim.LOCK_DIR, str(tmp_path))
    monkeypatch.setenv(gpu_claim.FAKE_GPUS, "2")
    current = []
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    assert gpu_claim.stage_device("cpu", log=current.append) == torch.device("cpu") and current == []
    monkeypatch.setattr(devices, "pick_device", lambda name: torch.device("cuda"))   # as on a CUDA machine
    lines = []
    assert gpu_claim.claim(2, gpu_claim.visible_gpus(), tmp_path, log=lines.append) == 0   # another experiment: cuda:0
    first, again = gpu_claim.stage_device("auto", log=lines.append), gpu_claim.stage_device("auto", log=lines.append)
    assert first == again == torch.device("cuda", 1) and current == [first, first]
    assert gpu_claim.stage_device("auto", distributed=True, log=lines.append) == torch.device("cuda")  # torchrun's
    assert len(lines) == 2 and lines[1].startswith("device cuda:1")
