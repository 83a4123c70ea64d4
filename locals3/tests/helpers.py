"""What the tests share: a server of their own (`Server`), a small git + DVC repository, digests.

Every server here is started by the test itself, on a free port, with its own keys and store folder under
tmp_path (DCGAN_S3_HOME / DCGAN_S3_PORT); no test reads ~/.aws or talks to a server started by hand.
tests/test_remote.py (the pipeline through the remote) uses `Server` too.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]          # the project: its .dvc/config names the `s3` remote
VENV_BIN = Path(sys.executable).parent
RCLONE = VENV_BIN / "rclone"
# What `repo_of_the_project` copies: the DVC config, and the Makefile with the files its `setup` rule depends on
# (the storage-up/storage-down targets)
PROJECT_FILES = [".dvc/config", ".dvc/.gitignore", ".dvc/aws-s3-checksums.ini",
                 "Makefile", "requirements.txt", "requirements.lock", "requirements-nodeps.txt", "pyproject.toml"]


def rclone_error() -> str | None:
    try:
        r = subprocess.run([str(RCLONE), "version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{RCLONE} cannot run: {e}"
    return None if r.returncode == 0 else f"{RCLONE} version exited {r.returncode}: {r.stderr[-300:]}"


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


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One `rclone serve s3` managed through `python -m locals3`, with its own store, port and keys."""

    def __init__(self, tmp: Path, rclone_args: str = ""):
        self.home = tmp / "s3home"
        self.port = free_port()
        e = {k: v for k, v in env().items() if not k.startswith("AWS_") or k == "AWS_CA_BUNDLE"}
        e.update(DCGAN_S3_HOME=str(self.home), DCGAN_S3_PORT=str(self.port),
                 AWS_SHARED_CREDENTIALS_FILE=str(tmp / "no-aws-credentials"),
                 AWS_EC2_METADATA_DISABLED="true")
        if rclone_args:
            e["DCGAN_S3_RCLONE_ARGS"] = rclone_args
        self.env = e

    def cli(self, *args, cwd: Path, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        return sh([sys.executable, "-m", "locals3", *args], cwd, check=check, timeout=timeout, env=self.env)

    def dvc(self, args: str, cwd: Path, check: bool = True, timeout: float = 300, **extra_env):
        return sh(f"dvc {args}", cwd, check=check, timeout=timeout, env={**self.env, **extra_env})

    @property
    def pid(self) -> int:
        return json.loads((self.home / "server.json").read_text())["pid"]

    @property
    def store(self) -> Path:
        return self.home / "data"

    def objects(self) -> dict[str, int]:
        """Every file under the store: path -> size."""
        return {str(p.relative_to(self.store)): p.stat().st_size for p in self.store.rglob("*") if p.is_file()}

    def keys(self) -> tuple[str, str]:
        c = json.loads((self.home / "credentials.json").read_text())
        return c["access_key_id"], c["secret_access_key"]

    def stop(self):
        try:
            os.kill(self.pid, signal.SIGCONT)
        except (OSError, ValueError):
            pass
        self.cli("down", cwd=ROOT, check=False)


def repo_of_the_project(dest: Path) -> Path:
    """A git + DVC repository at `dest` with the project's DVC config (remote `s3`, the default) and Makefile,
    committed on branch main."""
    for f in PROJECT_FILES:
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, dest / f)
    sh("git init -q -b main && git add -A && git commit -qm 'DVC config and Makefile of the project'", dest)
    return dest


def server_and_repo(tmp: Path, rclone_args: str = "") -> tuple[Server, Path]:
    """A server of its own (not started) and a fresh repository at tmp/repo."""
    repo = tmp / "repo"
    repo.mkdir()
    repo_of_the_project(repo)
    return Server(tmp, rclone_args), repo


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def digests(root: Path, paths: list[str]) -> dict[str, str]:
    out = {}
    for p in paths:
        base = root / p
        assert base.exists(), f"{p} missing in {root}"
        for f in [base] if base.is_file() else sorted(q for q in base.rglob("*") if q.is_file()):
            out[str(f.relative_to(root))] = sha256(f)
    return out


def assert_objects_intact(srv: Server):
    """Every DVC object in the store holds exactly the bytes its md5 name promises (upload temp files aside)."""
    n = 0
    for p in srv.store.rglob("*"):
        if not p.is_file() or p.name.startswith(".rclone_temp") or "/files/md5/" not in p.as_posix():
            continue
        digest = p.parent.name + p.name
        if digest.endswith(".dir"):
            digest = digest[:-4]
        h = hashlib.md5()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        assert h.hexdigest() == digest, f"corrupt object in the remote: {p}"
        n += 1
    assert n, "no objects in the remote"
