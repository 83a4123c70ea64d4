"""dvc commands that talk to the default remote (push, pull, status -c, gc -c, fetch), run so that they end in bounded
time whatever the library versions below dvc: a probe first (one line when the remote is unreachable), then the
command under a no-progress watchdog (see store.PUSH_STALL_S). When the default remote is the project's own
server, it is started first. `push` is the last step of `make run`: there an unreachable remote is exit 0."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .repo import find_root, is_embedded, remote_conf
from .server import status, up
from .store import PROBE_TIMEOUT, PUSH_STALL_BYTES, REMOTE, StorageError, UsageError, home, push_stall_s


def probe(root: Path, name: str) -> str | None:
    """None when remote `name` answers a one-key listing (reachable, keys accepted, bucket exists), else why not."""
    code = ("import sys; from locals3.push import _probe_inproc; "
            "e = _probe_inproc(sys.argv[1], sys.argv[2]); print(e or ''); sys.exit(1 if e else 0)")
    env = dict(os.environ, AWS_MAX_ATTEMPTS="1", AWS_RETRY_MODE="standard")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                      env.get("PYTHONPATH")]))
    try:
        r = subprocess.run([sys.executable, "-c", code, str(root), name], capture_output=True, text=True,
                           timeout=PROBE_TIMEOUT, env=env, cwd=root)
    except subprocess.TimeoutExpired:
        return f"no answer within {PROBE_TIMEOUT} s"
    if r.returncode == 0:
        return None
    lines = [ln for ln in (r.stdout + "\n" + r.stderr).splitlines() if ln.strip()]
    return lines[0] if lines else f"probe exited {r.returncode}"


def _probe_inproc(root: str, name: str) -> str | None:
    try:
        from dvc.repo import Repo
        with Repo(root) as repo:
            remote = repo.cloud.get_remote(name)
            fs, path = remote.fs, remote.path
            if fs.protocol == "s3":
                bucket, _, prefix = path.partition("/")
                fs.fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=prefix, MaxKeys=1)
            elif fs.protocol == "local":
                Path(path).mkdir(parents=True, exist_ok=True)
            else:
                fs.exists(path)
        return None
    except BaseException as e:  # noqa: BLE001 - any failure means "not reachable"; report it in one line
        msg = " ".join(str(e).split()) or type(e).__name__
        return f"{type(e).__name__}: {msg}"[:300]


def _io_bytes(pid: int) -> int | None:
    """Bytes process `pid` has read plus written so far (files, pipes and sockets), or None where unknown."""
    try:
        fields = dict(ln.split(":", 1) for ln in Path(f"/proc/{pid}/io").read_text().splitlines() if ":" in ln)
        return int(fields["rchar"]) + int(fields["wchar"])
    except (OSError, KeyError, ValueError):
        pass
    try:                                        # no /proc: psutil (a dvc dependency) where the OS reports it
        import psutil
        c = psutil.Process(pid).io_counters()
        return getattr(c, "read_chars", c.read_bytes) + getattr(c, "write_chars", c.write_bytes)
    except Exception:  # noqa: BLE001 - not available here (macOS): no stall watchdog
        return None


def _stop(proc: subprocess.Popen, grace: float = 5):
    """SIGINT (dvc releases its locks), then SIGKILL."""
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGKILL, 10)):
        try:
            proc.send_signal(sig)
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return


def run_watched(cmd: list[str], cwd: Path, stall_s: float) -> tuple[int, bool]:
    """Run `cmd`; stop it when it reads and writes less than PUSH_STALL_BYTES in `stall_s` seconds
    (0: never). -> (exit code, stopped by the watchdog)."""
    proc = subprocess.Popen(cmd, cwd=cwd)
    try:
        if not stall_s:
            return proc.wait(), False
        last_io, last_t = None, time.monotonic()
        while True:
            try:
                return proc.wait(timeout=min(1.0, stall_s / 4)), False
            except subprocess.TimeoutExpired:
                pass
            now = _io_bytes(proc.pid)
            if now is None:
                continue
            if last_io is None or now - last_io >= PUSH_STALL_BYTES:
                last_io, last_t = now, time.monotonic()
            elif time.monotonic() - last_t >= stall_s:
                _stop(proc)
                return proc.returncode, True
    except BaseException:                       # Ctrl-C (dvc got it too) or anything else: do not leave it behind
        _stop(proc)
        raise


def _start_local_server(root: Path, name: str, rconf: dict, verb: str) -> tuple[str, dict] | None:
    """The project's own server, started when the default remote is it and it is not running. -> the remote's
    (name, config) afterwards, or None (one line printed) when it could not start."""
    try:
        st = status()
        if st is None:
            st = up(root, quiet=True)
            print(f"started the project's S3 server on {st['url']} (store {home() / 'data'})")
        elif not rconf.get("access_key_id") or rconf.get("endpointurl") != st["url"]:
            up(root, quiet=True)       # no config.local yet, or the server moved to another port
        return remote_conf(root, name)
    except UsageError:
        raise
    except StorageError as e:
        print(f"dvc {verb} skipped: the project's S3 server could not start ({e}); "
              "the outputs stay in the local cache")
        return None


def _remote_arg(args: list[str]) -> str | None:
    """The remote a dvc command line names with -r/--remote (None: the default remote)."""
    for i, a in enumerate(args):
        if a in ("-r", "--remote") and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--remote="):
            return a.split("=", 1)[1]
    return None


def remote_command(verb: str, root: Path | None = None, args: list[str] | None = None,
                   unreachable_ok: bool = False) -> int:
    """`dvc <verb> <args>` against the default remote, bounded whatever the library versions below dvc: a remote
    that does not answer a listing is one line before it starts, and the command is stopped when it makes no
    progress for DCGAN_S3_PUSH_STALL seconds (aiobotocore bounds reads by read_timeout, writes by nothing).
    unreachable_ok: exit 0 when the remote cannot be reached (`make run` must not fail for a remote it cannot use)."""
    stall_s = push_stall_s()
    root = root if root is not None else find_root()
    name, rconf = remote_conf(root, _remote_arg(args or []))
    if not name:
        print(f"dvc {verb} skipped: no default remote configured; the outputs stay in the local cache")
        return 0 if unreachable_ok else 1
    if name == REMOTE and is_embedded(rconf):
        started = _start_local_server(root, name, rconf, verb)
        if started is None:
            return 0 if unreachable_ok else 1
        name, rconf = started
    where = f"remote '{name}' ({rconf.get('url')}" + (f" at {rconf['endpointurl']})" if rconf.get("endpointurl") else ")")
    later = "the outputs stay in the local cache; " if verb == "push" else ""
    why = probe(root, name)
    if why:
        print(f"dvc {verb} skipped: {where} is not reachable: {why} — {later}`dvc {verb}` later")
        return 0 if unreachable_ok else 1
    t0 = time.monotonic()
    code, stalled = run_watched([sys.executable, "-m", "dvc", verb, *(args or [])], root, stall_s)
    if code == 0 and not stalled:
        prep = {"push": "to", "pull": "from", "fetch": "from"}.get(verb, "against")
        print(f"dvc {verb} {prep} {where} done in {time.monotonic() - t0:.1f} s")
        return 0
    done = (f"dvc {verb} stopped after {time.monotonic() - t0:.0f} s: no progress for {stall_s:g} s "
            "(DCGAN_S3_PUSH_STALL)") if stalled else f"dvc {verb} failed"
    why = probe(root, name)
    if why:
        print(f"{done}: {where} became unreachable: {why} — {later}`dvc {verb}` later")
        return 0 if unreachable_ok else 1
    if stalled:
        print(f"{done}, although {where} answers; `dvc {verb} -v` shows where it waits")
        return 1
    return code


def push(root: Path | None = None, args: list[str] | None = None) -> int:
    """The last step of `make run`: exit 0 when the remote cannot be reached (the outputs stay in the cache)."""
    return remote_command("push", root, args, unreachable_ok=True)
