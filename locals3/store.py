"""Settings and the store folder: where the server keeps its objects, keys and state, and how they are written.

State lives outside the repository, in $DCGAN_S3_HOME (default ~/.local/share/dcgan-s3/):
    data/<bucket>/...   the objects, one file each (the bucket is the top-level folder)
    credentials.json    access key and secret, made once (mode 0600) and reused by every restart
    server.json         pid and port of the running server
    server.log          rclone's output

Files are written under unique temporary names and renamed into place; `_locked` is the flock that `up` and
`down` hold around check-start-write. Bad input (DCGAN_S3_PORT, DCGAN_S3_HOME, credentials.json, ...) raises
UsageError: one line on stderr and exit 2.
"""
from __future__ import annotations

import fcntl
import json
import os
import secrets
import shlex
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

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


# ---------------------------------------------------------------- settings

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
    """Every environment setting this package reads, checked before anything is started or written."""
    env_port()
    rclone_args()
    push_stall_s()


# ---------------------------------------------------------------- files

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
                                       "`python -m locals3`; try again when it has finished") from None
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
                         "and run `python -m locals3 down` and `up` for a new key pair "
                         "(then `up` in every clone)") from None
    return key, secret
