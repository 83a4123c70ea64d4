"""The server's registry models: a generator from the registry (a version, or a stage like prod) is served
with the encoder registered with it, the `encoder` artifact of the same commit, or without one, said in one
line; never with whatever encoder the workspace holds. DVC's API is replaced by a fake registry here (no git,
no remote); tests/test_serve.py resolves versions through a real git + DVC repository."""
from __future__ import annotations

import hashlib
import io
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from dcgan.archs.dcgan import Encoder, Generator, init_weights
from dcgan.model import save
from dcgan.serve import registry

NZ = 16
REV = {"v0.1.0": "a" * 40, "v0.2.0": "b" * 40, "v0.0.1": "c" * 40, "v0.3.0": "d" * 40, "v0.4.0": "e" * 40}


def model_bytes(tmp_path, m, name) -> bytes:
    torch.manual_seed(0)
    save(m, tmp_path / name)
    return (tmp_path / name).read_bytes()


class FakeRegistry:
    """dvc.api's artifacts_show, read and open over commits held in memory: rev -> {path: bytes}."""

    def __init__(self):
        self.commits: dict[str, dict[str, bytes]] = {}
        self.tags: dict[tuple[str, str], str] = {}     # (artifact, version or stage) -> rev
        self.opened: list[tuple[str, str]] = []

    def commit(self, rev: str, artifacts: dict[str, str], files: dict[str, bytes]):
        dvc_yaml = {"artifacts": {name: {"path": path, "type": "model"} for name, path in artifacts.items()}}
        self.commits[rev] = {"dvc.yaml": yaml.safe_dump(dvc_yaml).encode(), **files}

    def artifacts_show(self, name, version=None, stage=None, repo=None):
        rev = self.tags.get((name, version or stage))
        if rev is None:
            raise LookupError(f"Unable to find artifact '{name}'")
        return {"rev": rev, "path": yaml.safe_load(self.commits[rev]["dvc.yaml"])["artifacts"][name]["path"]}

    def read(self, path, repo=None, rev=None, mode="r", **kw):
        if path not in self.commits[rev]:
            raise FileNotFoundError(path)
        data = self.commits[rev][path]
        return data if "b" in mode else data.decode()

    def open(self, path, repo=None, rev=None, mode="r", **kw):
        if path not in self.commits[rev]:
            raise FileNotFoundError(f"{path} is not in the cache or the remote")   # declared, never pushed
        self.opened.append((rev, path))
        return io.BytesIO(self.commits[rev][path])


def dvc_lock(generator: bytes, encoder_from: bytes) -> bytes:
    """The pipeline's dvc.lock, reduced to what tells which generator the encoder was trained on."""
    def md5(b):
        return hashlib.md5(b).hexdigest()
    return yaml.safe_dump({"schema": "2.0", "stages": {
        "publish": {"outs": [{"path": "models/published/generator.pt", "hash": "md5", "md5": md5(generator)}]},
        "encoder": {"deps": [{"path": "models/published/generator.pt", "hash": "md5", "md5": md5(encoder_from)}],
                    "outs": [{"path": "models/encoder.pt", "hash": "md5", "md5": "0" * 32}]},
        "export": {"deps": [{"path": "models/published/generator.pt", "hash": "md5", "md5": md5(generator)}],
                   "outs": [{"path": "models/export", "hash": "md5", "md5": "1" * 32 + ".dir"}]}}}).encode()


@pytest.fixture()
def reg(tmp_path, monkeypatch):
    """v0.1.0 (in prod) and v0.2.0: each a generator and the encoder trained on it; v0.0.1: an old commit
    that registers no encoder; v0.3.0: an encoder declared but never pushed; v0.4.0: committed after the
    publish stage re-ran but not the encoder stage (its dvc.lock shows the encoder made from v0.3.0's
    generator). The workspace (the current folder) holds yet another encoder of the same shape: the one a
    prod deployment must not pick up."""
    import dvc.api

    fake = FakeRegistry()
    made = {}
    for i, version in enumerate(REV):
        torch.manual_seed(i)
        g = model_bytes(tmp_path, Generator(32, 1, NZ, 8).apply(init_weights), f"g{i}.pt")
        e = model_bytes(tmp_path, Encoder(32, 1, NZ, 8).apply(init_weights), f"e{i}.pt")
        made[version] = SimpleNamespace(g=g, e=e)
        artifacts = {"generator": "models/published/generator.pt", "encoder": "models/encoder.pt",
                     "generator-onnx": "models/export/generator.onnx", "encoder-onnx": "models/export/encoder.onnx"}
        files = {"models/published/generator.pt": g, "models/encoder.pt": e,
                 "models/export/generator.onnx": b"onnx g " + version.encode(),
                 "models/export/encoder.onnx": b"onnx e " + version.encode()}
        files["dvc.lock"] = dvc_lock(g, made["v0.3.0"].g if version == "v0.4.0" else g)
        if version == "v0.0.1":
            artifacts = {"generator": "models/generator.pt"}
            files = {"models/generator.pt": g}
        if version == "v0.3.0":
            del files["models/encoder.pt"]
        fake.commit(REV[version], artifacts, files)
        for name in artifacts:
            fake.tags[(name, version)] = REV[version]
    fake.tags[("generator", "prod")] = REV["v0.1.0"]
    for name in ("artifacts_show", "read", "open"):
        monkeypatch.setattr(dvc.api, name, getattr(fake, name))
    work = tmp_path / "work"
    (work / "models").mkdir(parents=True)
    torch.manual_seed(99)
    save(Encoder(32, 1, NZ, 8).apply(init_weights), work / "models/encoder.pt")
    monkeypatch.chdir(work)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return SimpleNamespace(fake=fake, made=made, cache=tmp_path / "cache", work=work)


@pytest.mark.parametrize("spec,stage,version", [("generator", "prod", "v0.1.0"), ("generator@v0.1.0", None, "v0.1.0"),
                                                ("generator@v0.2.0", None, "v0.2.0")])
def test_a_registry_generator_gets_the_encoder_of_its_own_commit(reg, spec, stage, version):
    g_path, label = registry.resolve(spec, stage, "repo", reg.cache)
    assert g_path.read_bytes() == reg.made[version].g
    enc = registry.encoder_for(g_path, None, reg.cache)
    assert Path(enc).read_bytes() == reg.made[version].e                       # not the workspace's encoder
    assert (REV[version], "models/encoder.pt") in reg.fake.opened
    assert registry.resolve(enc, None, "repo", reg.cache) == (Path(enc), label)   # reported as the same version


def test_an_exported_generator_gets_the_exported_encoder_of_its_commit(reg):
    g_path, _ = registry.resolve("generator-onnx@v0.2.0", None, "repo", reg.cache)
    assert Path(registry.encoder_for(g_path, None, reg.cache)).read_bytes() == b"onnx e v0.2.0"


@pytest.mark.parametrize("version,why", [("v0.0.1", "registers no 'encoder' artifact"),
                                         ("v0.3.0", "could not fetch models/encoder.pt"),
                                         ("v0.4.0", "made by stage 'encoder' from another generator")])
def test_no_registered_encoder_serves_without_one_and_says_so_in_one_line(reg, capsys, version, why):
    g_path, _ = registry.resolve(f"generator@{version}", None, "repo", reg.cache)
    assert registry.encoder_for(g_path, None, reg.cache) == "none"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and why in err and "without an encoder" in err and version in err, err


def test_a_given_encoder_is_kept_and_a_workspace_generator_gets_the_workspace_encoder(reg):
    g_path, _ = registry.resolve("generator", "prod", "repo", reg.cache)
    assert registry.encoder_for(g_path, "models/encoder.pt", reg.cache) == "models/encoder.pt"   # asked for
    assert registry.encoder_for(g_path, "none", reg.cache) == "none"
    save(Generator(32, 1, NZ, 8), reg.work / "g.pt")
    assert registry.encoder_for(reg.work / "g.pt", None, reg.cache) == registry.WORKSPACE_ENCODER


# ---------------------------------------------------------------- the server, as `python -m dcgan.serve` builds it

def served(monkeypatch, *argv):
    """(generator, encoder, settings) that `python -m dcgan.serve argv` would serve."""
    from dcgan.serve import __main__ as serve_main

    monkeypatch.setattr(serve_main, "Models", lambda G, config, E, s: SimpleNamespace(G=G, E=E, s=s))
    models, settings = serve_main.build(serve_main.parser().parse_args(["--invert-steps", "0", *argv]))
    return models.G, models.E, settings


def state(m) -> dict:
    return {k: v.clone() for k, v in m.state_dict().items()}


def same_weights(m, blob: bytes) -> bool:
    want = torch.load(io.BytesIO(blob), weights_only=True)["state_dict"]
    return all(torch.equal(v, want[k]) for k, v in state(m).items())


def test_prod_is_served_with_the_encoder_registered_with_it(reg, monkeypatch, capsys):
    G, E, s = served(monkeypatch, "--model", "generator", "--stage", "prod", "--repo", "repo")
    assert same_weights(G, reg.made["v0.1.0"].g) and same_weights(E, reg.made["v0.1.0"].e)
    assert s.version == f"prod:{REV['v0.1.0'][:7]}" and s.extra["encoder_version"] == s.version

    G, E, s = served(monkeypatch, "--model", "generator@v0.2.0", "--repo", "repo")
    assert same_weights(E, reg.made["v0.2.0"].e) and s.extra["encoder_version"] == "v0.2.0"

    capsys.readouterr()
    G, E, s = served(monkeypatch, "--model", "generator@v0.0.1", "--repo", "repo")
    assert E is None and "encoder_version" not in s.extra
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "without an encoder" in err, err


def test_the_workspace_pairs_the_published_generator_with_the_workspace_encoder(reg, monkeypatch):
    save(Generator(32, 1, NZ, 8), reg.work / "models/generator.pt")
    G, E, s = served(monkeypatch)
    assert s.extra["model_file"] == "models/generator.pt"              # nothing published here yet: by the param
    assert same_weights(E, (reg.work / "models/encoder.pt").read_bytes())
    (reg.work / "models/published").mkdir()
    torch.manual_seed(5)
    save(Generator(32, 1, NZ, 8).apply(init_weights), reg.work / "models/published/generator.pt")
    G, E, s = served(monkeypatch)
    assert s.extra["model_file"] == "models/published/generator.pt"
    assert same_weights(G, (reg.work / "models/published/generator.pt").read_bytes())


def test_through_a_real_git_and_dvc_registry(tmp_path):
    """The same with DVC itself: tags name commits, the encoder's path is read from that commit's dvc.yaml,
    both files come from the remote (the cache is emptied)."""
    from conftest import sh

    repo, remote, cache = tmp_path / "repo", tmp_path / "remote", tmp_path / "cache"
    repo.mkdir()
    sh("git init -q && dvc init -q && dvc remote add -d store " + str(remote), repo)
    (repo / "dvc.yaml").write_text("artifacts:\n  generator:\n    path: models/published/generator.pt\n"
                                   "    type: model\n  encoder:\n    path: models/encoder.pt\n    type: model\n")
    (repo / "models/published").mkdir(parents=True)
    encoders = {}
    for i, tag in enumerate(["v0.1.0", "v0.2.0"]):
        torch.manual_seed(i)
        save(Generator(32, 1, NZ, 8).apply(init_weights), repo / "models/published/generator.pt")
        save(Encoder(32, 1, NZ, 8).apply(init_weights), repo / "models/encoder.pt")
        encoders[tag] = (repo / "models/encoder.pt").read_bytes()
        sh(f"dvc add -q models/published/generator.pt models/encoder.pt && dvc push -q && git add -A "
           f"&& git commit -qm {tag} && git tag -a generator@{tag} -m {tag}", repo)
    sh("git tag -a 'generator#prod#1' -m prod generator@v0.1.0^{} && rm -rf .dvc/cache models", repo)
    for spec, stage, want in (("generator", "prod", "v0.1.0"), ("generator@v0.2.0", None, "v0.2.0")):
        g_path, _ = registry.resolve(spec, stage, repo, cache)
        assert Path(registry.encoder_for(g_path, None, cache)).read_bytes() == encoders[want]
