"""Shared fixtures: tiny params, and a temporary copy of the repository for dvc integration tests."""
from __future__ import annotations

import atexit
import os
import re
import signal
import socket
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
POKEMON = ROOT.parent / "shared" / "datasets" / "pokemon"
# The tests' own cache of layer plans (dcgan/layer_plan.py), shared by the stages they start: a run here
# never reads plans timed outside the tests, and runs that compare weights see the same plan.
os.environ["DCGAN_CACHE_DIR"] = tempfile.mkdtemp(prefix="dcgan-test-cache-")
atexit.register(shutil.rmtree, os.environ["DCGAN_CACHE_DIR"], True)
# and their own GPU claims (dcgan/gpu_claim.py): a test run never holds a GPU that real experiments would see
os.environ["DCGAN_GPU_LOCK_DIR"] = tempfile.mkdtemp(prefix="dcgan-test-gpu-claims-")
atexit.register(shutil.rmtree, os.environ["DCGAN_GPU_LOCK_DIR"], True)

# Small enough that the whole DAG runs in seconds on 2 CPU cores. fid_weights: a file that is never there, so
# FID/KID are skipped in one line on every machine: with '' a machine online would download the Inception
# weights and score with them (other metrics, minutes more), and one offline would build the network first.
TINY = {
    "epochs": 1, "nz": 16, "ngf": 8, "ndf": 8, "batch_size": 64, "device": "cpu",
    "num_images": 64, "invert_steps": 20, "memorisation_k": 16, "encoder_steps": 20,
    "fid_weights": str(Path(os.environ["DCGAN_CACHE_DIR"]) / "no-fid-weights-in-tests.pth"),
}


def env() -> dict:
    """Environment for dvc/git subprocesses: the venv first on PATH, no prompts, no telemetry."""
    e = dict(os.environ)
    e["PATH"] = f"{VENV_BIN}{os.pathsep}{e.get('PATH', '')}"
    e.update(DVC_NO_ANALYTICS="1", GIT_TERMINAL_PROMPT="0", PYTHONUNBUFFERED="1",
             GIT_AUTHOR_NAME="test", GIT_AUTHOR_EMAIL="test@example.com",
             GIT_COMMITTER_NAME="test", GIT_COMMITTER_EMAIL="test@example.com")
    return e


def sh(cmd: str | list, cwd: Path, check: bool = True, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    """Run a command, capture output, and fail with that output when it fails unexpectedly."""
    r = subprocess.run(cmd, cwd=cwd, shell=isinstance(cmd, str), env=kw.pop("env", None) or env(),
                       capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"`{cmd}` exited {r.returncode}\n--- stdout\n{r.stdout[-4000:]}\n--- stderr\n{r.stderr[-4000:]}")
    return r


def ran_stages(out: str) -> set:
    """Stage names dvc actually executed, from `dvc repro`/`dvc exp run` output."""
    return {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage '")}


def set_params(repo: Path, **changes):
    path = repo / "params.yaml"
    p = yaml.safe_load(path.read_text())
    p.update(changes)
    path.write_text(yaml.safe_dump(p, sort_keys=False))


def make_prepared(dest: Path, n_train: int) -> Path:
    """dest/{train,val}.npy like the prepare stage writes them: 32 px grayscale uint8, blobs of varying
    brightness (structured enough that D and G have something to learn) and 16 random val images."""
    import numpy as np
    rng = np.random.default_rng(0)
    dest.mkdir(parents=True)
    base = rng.integers(0, 256, (1, 1, 32, 32), dtype=np.uint8)
    noise = rng.integers(-40, 40, (n_train, 1, 32, 32))
    np.save(dest / "train.npy", np.clip(base.astype(int) + noise, 0, 255).astype(np.uint8))
    np.save(dest / "val.npy", rng.integers(0, 256, (16, 1, 32, 32), dtype=np.uint8))
    return dest


def pipeline_products(root: Path = ROOT) -> list[str]:
    """What a run of this checkout's pipeline wrote that git does not ignore: dvc.lock and the stages'
    declared outputs, metrics and plots (after `make run` they sit untracked in the working tree)."""
    products = ["dvc.lock"]
    for stage in (yaml.safe_load((root / "dvc.yaml").read_text()).get("stages") or {}).values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind) or []:
                products.append(next(iter(entry)) if isinstance(entry, dict) else entry)
    return [p.rstrip("/") for p in products]


def copy_repo(dest: Path, params: dict | None = None, demo_limit: int | None = None) -> Path:
    """Copy the project's files (tracked + untracked, not ignored) to `dest`, git init and commit there.
    Untracked products of a pipeline run here (`make run` before `make test`) are left out: the copy is
    the project's source, as a fresh clone has it.
    demo_limit: the demo stage writes only that many of its 5,000 digits (faster tests)."""
    def listed(*flags):
        out = subprocess.run(["git", "ls-files", *flags, "-z"], cwd=ROOT, capture_output=True, check=True).stdout
        return [f for f in out.decode().split("\0") if f]
    products = pipeline_products()
    untracked = [f for f in listed("-o", "--exclude-standard")
                 if not any(f == p or f.startswith(p + "/") for p in products)]
    for f in listed("-c") + untracked:
        src = ROOT / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)
    (dest / ".dvc" / "config.local").unlink(missing_ok=True)
    set_params(dest, **{**TINY, **(params or {})})
    if demo_limit:
        dvcyaml = dest / "dvc.yaml"
        cmd = "cmd: python -m stages.demo --out data/demo"
        assert cmd in dvcyaml.read_text()
        dvcyaml.write_text(dvcyaml.read_text().replace(cmd, f"{cmd} --limit {demo_limit}"))
    sh("git init -q -b main && git add -A && git commit -qm 'copy of the project'", dest)
    return dest


def run_queue(repo: Path, log: Path, workers: int = 2, limit: float = 600) -> tuple[str, float]:
    """`dvc queue start -j workers`, then wait until nothing is queued or running. -> (final status, seconds)."""
    t0 = time.monotonic()
    try:
        # The workers are daemons that inherit the starter's stdout/stderr: with captured pipes the call
        # would last until the last worker exits, and dvc-task's idle workers sometimes never do (seen once:
        # all experiments done, one worker idle for 8 minutes after "shutting down due to empty queue").
        # So: output to a file, and the queue's status decides when the grid is done.
        # one torch thread per worker: two workers' OpenMP pools on two cores spin-wait for each other
        queue_env = {**env(), "OMP_NUM_THREADS": "1"} if workers > 1 else env()
        with open(log, "w") as out:
            started = subprocess.run(f"dvc queue start -j {workers}", cwd=repo, shell=True, env=queue_env, stdout=out,
                                     stderr=subprocess.STDOUT, timeout=120)
        assert started.returncode == 0, log.read_text()
        while time.monotonic() - t0 < limit:
            status = sh("dvc queue status", repo).stdout
            if not re.search(r"\b(Queued|Running)\b", status):
                break
            time.sleep(2)
        return status, time.monotonic() - t0
    finally:
        for pid_file in (repo / ".dvc/tmp/exps/celery").glob("*.pid"):   # no worker outlives the test
            try:
                pid = int(pid_file.read_text().strip())
                if b"queue-worker" in Path(f"/proc/{pid}/cmdline").read_bytes():   # still that worker
                    os.kill(pid, signal.SIGKILL)
            except (ValueError, OSError):
                pass


@pytest.fixture(scope="session")
def queued_grid(tmp_path_factory) -> tuple[Path, str, float]:
    """A copy of the project with a committed baseline run (3 epochs, a sample grid each) and a grid of four
    experiments (lr_g x seed) that DVC's queue ran with 2 workers. -> (repo, the queue's final status, seconds the queue took). Tests that
    change it work on a copy (shutil.copytree(repo, ..., symlinks=True))."""
    root = tmp_path_factory.mktemp("queued-grid")
    repo = copy_repo(root / "repo", params={"epochs": 3, "sample_every": 1}, demo_limit=300)   # 3 grids each
    sh("dvc repro", repo)
    sh("git add -A && git commit -qm baseline", repo)
    queued = sh("dvc exp run --queue -S 'lr_g=0.0001,0.0002' -S 'seed=0,1'", repo)
    assert sh("dvc queue status", repo).stdout.count("Queued") == 4, queued.stdout
    status, wall = run_queue(repo, root / "queue-start.log")
    return repo, status, wall


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMEDRIVER = shutil.which("chromedriver")
needs_browser = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="no headless browser here: apt-get "
                                   "install -y chromium chromium-driver")


def headless_chromium(profile: Path, size: str = "1300,1600"):
    """A Selenium driver of Debian's chromium, headless, with its own profile folder (quit() it)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={size}",
              "--disable-gpu", f"--user-data-dir={profile}"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


@pytest.fixture
def repo(tmp_path) -> Path:
    """A fresh git+dvc copy of this repository with tiny params, outside the working tree."""
    return copy_repo(tmp_path / "repo")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serving(generator: Path, encoder: Path, *args: str, env: dict | None = None, tries: int = 600):
    """`python -m dcgan.serve` of these model files (plus `args`) on a free port, polled until /healthz answers
    (at most `tries` polls 0.1 s apart; the test fails with the server's output when it exits first).
    -> (url, port); the server is terminated when the block ends."""
    import httpx

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "dcgan.serve", "--model", str(generator), "--encoder",
                             str(encoder), "--port", str(port), *args],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(tries):
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
            if proc.poll() is not None:
                pytest.fail(proc.stdout.read())
        yield url, port
    finally:
        proc.terminate()
        proc.wait(10)
