"""The project's own S3 server for DVC: `rclone serve s3` on 127.0.0.1, objects stored as plain files.

    python -m locals3 up       start it (if needed), create the bucket, write keys to .dvc/config.local
    python -m locals3 down     stop it (a stopped server is fine)
    python -m locals3 status   say whether it runs; exit 0 when it does, 1 when not
    python -m locals3 push     `dvc push` to the default remote; one line and exit 0 when it is unreachable
                               (also when a frozen server leaves the push without progress: see PUSH_STALL_S)
    python -m locals3 dvc pull|push|fetch|status -c|gc -c ...
                               any dvc command that talks to the remote, ended in bounded time: one line and
                               exit 1 when the remote is unreachable or stops answering

`make storage-up`, `make storage-down` and the last step of `make run` call these.
Bad input (DCGAN_S3_PORT, DCGAN_S3_HOME, credentials.json, --repo, ...) ends in one line on stderr and exit 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .push import push, remote_command
from .repo import find_root
from .server import down, status, up
from .store import StorageError, UsageError, check_env, check_home


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
    ap = _Parser(prog="python -m locals3", description=__doc__.split("\n")[0], allow_abbrev=False,
                 epilog="push passes any other arguments on to `dvc push`; dvc passes everything after it to dvc")
    ap.add_argument("command", choices=["up", "down", "status", "push", "dvc"])
    ap.add_argument("--repo", type=Path, default=None, help="repository root (default: the one around cwd)")
    a, extra = ap.parse_known_args(argv)
    if a.command == "dvc" and not extra:
        ap.error("dvc needs a dvc command, e.g. `python -m locals3 dvc pull`")
    if extra and a.command not in ("push", "dvc"):
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
        elif a.command == "push":
            return push(root, extra)
        else:
            return remote_command(extra[0], root, extra[1:])
    except StorageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
