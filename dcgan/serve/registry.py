"""Which model files to serve: a path, a registry version or a registry stage, and the encoder that goes
with the generator.

`generator@v0.1.0` and `--stage prod` are resolved the way `dvc artifacts get` resolves them: the git tags
of DVC's artifact registry (`generator@v0.1.0`, `generator#prod#1`) name a commit, the artifact's path in
that commit's dvc.yaml names the file, and DVC reads it from the cache or the remote. Resolved files are
kept under a cache folder by commit, so a restart serves the same bytes without fetching them again.

A generator from the registry is served with the encoder registered with it: the `encoder` artifact of the
same commit (the pipeline trained it on that generator), never whatever encoder the workspace holds.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError, brief
from ..files import atomic_write, sha256_of

ARTIFACT_SPEC = re.compile(r"^(?P<name>[a-z0-9]([a-z0-9-]*[a-z0-9])?)(@(?P<version>[^@/\s]+))?$")
WORKSPACE_ENCODER = "models/encoder.pt"   # the encoder stage's output: made for the published generator


@dataclass(frozen=True)
class Entry:
    """A registry file fetched by this process."""
    name: str    # the artifact: generator, generator-onnx, encoder, ...
    rev: str     # the commit that its version or stage tag names
    path: str    # the artifact's file in that commit
    repo: str
    label: str   # the version to report: v0.1.0, or prod:<commit>


RESOLVED: dict[Path, Entry] = {}   # local file -> the registry entry it was fetched for


def default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dcgan-serve"


def is_artifact_spec(spec: str, stage: str | None) -> bool:
    """'generator@v0.1.0', or a bare artifact name with --stage; a path that exists always wins."""
    if Path(spec).exists():
        return False
    m = ARTIFACT_SPEC.match(spec)
    return bool(m) and (m.group("version") is not None or stage is not None)


def file_version(path: Path) -> str:
    return "sha256:" + sha256_of(path)[:12]


def default_generator() -> str:
    """What the server serves without --model: the generator the pipeline published
    (models/published/generator.pt; see dcgan.model.default_generator)."""
    from ..model import default_generator as published

    return str(published())


def resolve(spec: str, stage: str | None = None, repo: Path | str = ".", cache: Path | None = None) -> tuple[Path, str]:
    """-> (a local file, the version to report). UserError with one line when it cannot be found."""
    if not is_artifact_spec(spec, stage):
        path = Path(spec)
        if stage is not None:
            raise UserError(f"--stage {stage} needs an artifact name (e.g. generator), not the path '{spec}'")
        if not path.is_file():
            raise UserError(f"model '{spec}' not found: give a file, an artifact version (generator@v0.1.0) "
                            "or an artifact name with --stage")
        if path in RESOLVED:   # a file fetched from the registry (the encoder of a registry generator)
            return path, RESOLVED[path].label
        return path, file_version(path)
    import dvc.api

    m = ARTIFACT_SPEC.match(spec)
    name, version = m.group("name"), m.group("version")
    try:
        info = dvc.api.artifacts_show(name, version=version, stage=stage, repo=str(repo))
    except Exception as e:  # noqa: BLE001 - unknown artifact/version/stage, not a DVC repo, no git
        what = f"{name}@{version}" if version else f"{name} at stage '{stage}'"
        raise UserError(f"registry: {what} not found in {repo} ({brief(e, 160)})") from None
    entry = Entry(name, info["rev"], info["path"], str(repo), version or f"{stage}:{info['rev'][:7]}")
    return _fetch(entry, cache), entry.label


def _fetch(entry: Entry, cache: Path | None) -> Path:
    """The entry's file, from the cache folder or through DVC (the cache or the remote of that commit)."""
    import dvc.api

    dest = (cache or default_cache()) / entry.rev / entry.path
    if not dest.is_file():
        def copy(out):
            with dvc.api.open(entry.path, repo=entry.repo, rev=entry.rev, mode="rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
        try:
            atomic_write(dest, copy)
        except Exception as e:  # noqa: BLE001 - remote down, credentials, object missing
            raise UserError(f"registry: could not fetch {entry.path} at {entry.rev[:7]} ({brief(e, 160)}); "
                            "is the DVC remote reachable (make storage-up) and was it pushed?") from None
    RESOLVED[dest] = entry
    return dest


def paired_name(generator: str) -> str:
    """The encoder artifact that goes with a generator artifact: encoder for generator, encoder-onnx for
    generator-onnx, encoder-torchscript for generator-torchscript (any other name: encoder)."""
    return "encoder" + generator[len("generator"):] if generator.startswith("generator") else "encoder"


def artifact_path(repo: str, rev: str, name: str) -> str:
    """The path of artifact `name` in the dvc.yaml of commit `rev`; UserError when it declares none."""
    import dvc.api
    import yaml

    try:
        declared = yaml.safe_load(dvc.api.read("dvc.yaml", repo=repo, rev=rev)) or {}
    except Exception as e:  # noqa: BLE001 - no dvc.yaml at that commit, unreadable, not YAML
        raise UserError(f"registry: could not read dvc.yaml at {rev[:7]} ({brief(e, 160)})") from None
    spec = (declared.get("artifacts") or {}).get(name) if isinstance(declared, dict) else None
    path = spec.get("path") if isinstance(spec, dict) else None
    if not isinstance(path, str) or not path:
        raise UserError(f"registry: commit {rev[:7]} registers no '{name}' artifact")
    return path


def check_made_for(generator: Entry, generator_file: Path, encoder: Entry) -> None:
    """UserError when the commit's dvc.lock shows that the stage which wrote the encoder read another
    generator than the one registered beside it (say `dvc repro publish` ran and was committed, but not the
    encoder stage). Both written by one stage (the exported pair), or a lock that cannot tell (none, or no
    stage writes the encoder: files added with `dvc add`): nothing to refute."""
    import dvc.api
    import yaml

    try:
        lock = yaml.safe_load(dvc.api.read("dvc.lock", repo=encoder.repo, rev=encoder.rev)) or {}
    except Exception:  # noqa: BLE001 - no dvc.lock at that commit
        return
    stages = lock.get("stages") if isinstance(lock, dict) else None
    stages = {k: v for k, v in stages.items() if isinstance(v, dict)} if isinstance(stages, dict) else {}

    def writer(path: str):
        """The stage (name, lock entry) whose outputs hold `path` (a file, or a file in an output folder)."""
        for name, stage in stages.items():
            for out in stage.get("outs") or []:
                o = str(out.get("path", "")).rstrip("/") if isinstance(out, dict) else ""
                if o and (path == o or path.startswith(o + "/")):
                    return name, stage
        return None, None

    e_name, e_stage = writer(encoder.path)
    if e_stage is None or writer(generator.path)[0] == e_name:
        return
    md5 = hashlib.md5(generator_file.read_bytes()).hexdigest()
    if not any(isinstance(d, dict) and d.get("md5") == md5 for d in e_stage.get("deps") or []):
        raise UserError(f"registry: at {encoder.rev[:7]}, dvc.lock shows {encoder.path} made by stage "
                        f"'{e_name}' from another generator than {generator.path} (run `dvc repro` before tagging)")


def encoder_for(generator: Path | str, encoder: str | None, cache: Path | None = None) -> str:
    """The encoder to serve beside `generator` (the file `resolve` gave for --model), as a spec for `resolve`:
    - `encoder` when one is given (a file, name@version, or 'none'): the user's choice;
    - for a generator from the registry, the encoder registered with it: the `encoder` artifact
      (`encoder-onnx` beside `generator-onnx`, ...) of the same commit, fetched the same way, when that
      commit's dvc.lock does not show it made from another generator; else 'none' and one line on stderr
      saying why (never an encoder made for another generator);
    - else the workspace's models/encoder.pt, which the pipeline trains on the published generator."""
    if encoder is not None:
        return encoder
    entry = RESOLVED.get(Path(generator))
    if entry is None:
        return WORKSPACE_ENCODER
    name = paired_name(entry.name)
    try:
        paired = Entry(name, entry.rev, artifact_path(entry.repo, entry.rev, name), entry.repo, entry.label)
        check_made_for(entry, Path(generator), paired)
        dest = _fetch(paired, cache)
    except UserError as e:
        print(f"{e}: serving {entry.name} {entry.label} without an encoder (image -> embedding is off)",
              file=sys.stderr)
        return "none"
    return str(dest)
