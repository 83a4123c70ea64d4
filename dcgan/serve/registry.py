"""Which model file to serve: a path, a registry version or a registry stage.

`generator@v0.1.0` and `--stage prod` are resolved the way `dvc artifacts get` resolves them: the git tags
of DVC's artifact registry (`generator@v0.1.0`, `generator#prod#1`) name a commit, the artifact's path in
that commit's dvc.yaml names the file, and DVC reads it from the cache or the remote. Resolved files are
kept under a cache folder by commit, so a restart serves the same bytes without fetching them again.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from ..errors import UserError, brief

ARTIFACT_SPEC = re.compile(r"^(?P<name>[a-z0-9]([a-z0-9-]*[a-z0-9])?)(@(?P<version>[^@/\s]+))?$")


def default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dcgan-serve"


def is_artifact_spec(spec: str, stage: str | None) -> bool:
    """'generator@v0.1.0', or a bare artifact name with --stage; a path that exists always wins."""
    if Path(spec).exists():
        return False
    m = ARTIFACT_SPEC.match(spec)
    return bool(m) and (m.group("version") is not None or stage is not None)


def file_version(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()[:12]


def resolve(spec: str, stage: str | None = None, repo: Path | str = ".", cache: Path | None = None) -> tuple[Path, str]:
    """-> (a local file, the version to report). UserError with one line when it cannot be found."""
    if not is_artifact_spec(spec, stage):
        path = Path(spec)
        if stage is not None:
            raise UserError(f"--stage {stage} needs an artifact name (e.g. generator), not the path '{spec}'")
        if not path.is_file():
            raise UserError(f"model '{spec}' not found: give a file, an artifact version (generator@v0.1.0) "
                            "or an artifact name with --stage")
        return path, file_version(path)
    import dvc.api

    m = ARTIFACT_SPEC.match(spec)
    name, version = m.group("name"), m.group("version")
    try:
        info = dvc.api.artifacts_show(name, version=version, stage=stage, repo=str(repo))
    except Exception as e:  # noqa: BLE001 - unknown artifact/version/stage, not a DVC repo, no git
        what = f"{name}@{version}" if version else f"{name} at stage '{stage}'"
        raise UserError(f"registry: {what} not found in {repo} ({brief(e, 160)})") from None
    dest = (cache or default_cache()) / info["rev"] / info["path"]
    if not dest.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
        try:
            with dvc.api.open(info["path"], repo=str(repo), rev=info["rev"], mode="rb") as src, open(tmp, "wb") as out:
                for block in iter(lambda: src.read(1 << 20), b""):
                    out.write(block)
            os.replace(tmp, dest)
        except Exception as e:  # noqa: BLE001 - remote down, credentials, object missing
            tmp.unlink(missing_ok=True)
            raise UserError(f"registry: could not fetch {info['path']} at {info['rev'][:7]} ({brief(e, 160)}); "
                            "is the DVC remote reachable (make storage-up) and was it pushed?") from None
    label = version or f"{stage}:{info['rev'][:7]}"
    return dest, label
