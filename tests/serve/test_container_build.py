"""make image's pieces that need no podman (dcgan/serve/container.py): the wheels' closure pinned by
requirements.lock, the models checked before they are baked in, and the version the image is tagged with."""
import subprocess

import pytest
import torch

from conftest import ROOT
from dcgan import export
from dcgan.errors import UserError
from dcgan.serve import container, registry
from serve.common import tiny_models


def test_the_image_installs_the_servers_closure_at_the_locks_pins_without_torch():
    versions = container.closure(container._names(container.REQUIREMENTS.read_text()))
    assert {"fastapi", "starlette", "pydantic-core", "uvicorn", "onnxruntime", "numpy", "prometheus-client"} <= set(versions)
    assert not {"torch", "dvc", "sympy", "protobuf", "flatbuffers"} & set(versions)   # onnxruntime: nodeps
    pinned = container.pinned(versions, (ROOT / "requirements.lock").read_text())
    assert pinned.count("==") == len(versions) and pinned.count("--hash=sha256:") >= len(versions)
    with pytest.raises(UserError, match="not in requirements.lock"):
        container.pinned({"numpy": "0.0.1"}, (ROOT / "requirements.lock").read_text())


def test_a_swapped_or_foreign_model_is_refused_before_the_build(tmp_path):
    G, E = tiny_models()
    export.export_onnx(E, tmp_path / "e.onnx")
    with pytest.raises(UserError, match="holds a encoder, not a generator"):
        container.model_file(tmp_path / "e.onnx", "generator", tmp_path)
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(UserError, match="is not an ONNX model"):
        container.model_file(tmp_path / "junk.onnx", "generator", tmp_path)
    with pytest.raises(UserError, match=r"a \.pt \(exported here\) or an \.onnx"):
        container.model_file(tmp_path / "g.ts", "generator", tmp_path)
    torch.save({"not": "a model"}, tmp_path / "x.pt")
    with pytest.raises(UserError):
        container.model_file(tmp_path / "x.pt", "generator", tmp_path)


def test_a_stage_is_tagged_with_the_version_of_its_commit_else_with_its_label(tmp_path):
    def git(*args):
        return subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True,
                              text=True).stdout.strip()
    git("init", "-q")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "one")
    git("tag", "generator@v1.2.0")
    git("tag", "generator#prod#1")
    tagged = git("rev-parse", "HEAD")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "two")
    untagged = git("rev-parse", "HEAD")
    for rev, want in ((tagged, "v1.2.0"), (untagged, f"prod:{untagged[:7]}")):
        path = tmp_path / f"{rev}.pt"
        registry.RESOLVED[path] = registry.Entry("generator", rev, "models/g.pt", str(tmp_path), f"prod:{rev[:7]}")
        try:
            assert container.version_at(path, f"prod:{rev[:7]}") == want
        finally:
            del registry.RESOLVED[path]
    assert container.version_at(tmp_path / "other.pt", "sha256:0123456789ab") == "sha256:0123456789ab"
    assert container.tag_for(f"prod:{untagged[:7]}") == f"prod-{untagged[:7]}"
    assert container.tag_for("sha256:0123456789ab") == "sha256-0123456789ab"
