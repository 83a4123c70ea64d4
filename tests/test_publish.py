"""The registry publishes the generator the pipeline uses: the publish stage copies the one that the `generator`
param picks to models/published/generator.pt, which is the `generator` artifact and the one generator every
later stage reads; the exported artifacts hold its weights; changing the param retrains nothing."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import yaml

from conftest import ROOT, env
from dcgan import export, generate, params
from dcgan import model as models
from dcgan.archs.dcgan import Discriminator, Encoder, Generator
from dcgan.serve import registry

DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())
PUBLISHED = str(models.PUBLISHED_GENERATOR)
TRAINED = {str(p) for p in models.GENERATOR_FILES.values()}
USERS = ("encoder", "export", "generate", "evaluate")     # the stages that read a generator


def outs(stage: str) -> list[str]:
    return [next(iter(o)) if isinstance(o, dict) else o for o in DVC["stages"][stage]["outs"]]


def test_the_generator_artifact_is_the_published_generator_that_every_stage_reads():
    stages, artifacts = DVC["stages"], DVC["artifacts"]
    assert artifacts["generator"]["path"] == PUBLISHED == outs("publish")[0]
    assert stages["publish"]["params"] == ["generator"] and set(stages["publish"]["deps"]) >= TRAINED
    assert "generator" not in stages["train"]["params"] and TRAINED <= set(outs("train"))   # the files users know
    for name in USERS:
        deps = stages[name]["deps"]
        assert PUBLISHED in deps and not TRAINED & set(deps), name        # one fact, in one place
        assert "generator" not in stages[name].get("params", []), name
        script = (ROOT / "stages" / f"{name}.py").read_text()
        assert "PUBLISHED_GENERATOR" in script and "GENERATOR_FILES" not in script, name
    # the exported artifacts are export's outputs, made from the published generator and the encoder artifact
    for name in ("generator-onnx", "generator-torchscript", "encoder-onnx", "encoder-torchscript"):
        assert artifacts[name]["path"].startswith(outs("export")[0] + "/"), name
    assert artifacts["encoder"]["path"] in outs("encoder") and artifacts["encoder"]["path"] in stages["export"]["deps"]
    assert params.STAGE_KEYS["publish"] == ["generator"] and "generator" not in params.WEIGHT_KEYS


def run_stage(name: str, ws, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "stages" / f"{name}.py"), *map(str, args)], cwd=ws, env=env(),
                          capture_output=True, text=True, timeout=300)


def trained(seed: int, cls=Generator, *args):
    torch.manual_seed(seed)
    m = cls(32, 1, *(args or (16, 8))).train()    # PyTorch's default init: outputs far apart for two seeds
    if cls is not Discriminator:
        with torch.no_grad():                   # BatchNorm statistics that are not the identity
            m(export.example_input(m, 16))
    return m.eval()


@pytest.fixture()
def ws(tmp_path):
    """train's two generators (different weights) and an encoder, as the pipeline leaves them."""
    (tmp_path / "models").mkdir()
    models.save(trained(1), tmp_path / "models/generator.pt")
    models.save(trained(2), tmp_path / "models/generator_best.pt")
    models.save(trained(3, Encoder, 16, 8), tmp_path / "models/encoder.pt")
    return tmp_path


def with_generator(ws, choice: str):
    p = params.read(ROOT / "params.yaml")
    p["generator"] = choice
    (ws / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))


def test_publish_then_export_hold_the_weights_that_the_param_picks(ws):
    before = {f: (ws / f).read_bytes() for f in TRAINED}
    x = torch.randn(5, 16)
    for choice, picked in (("last", "models/generator.pt"), ("best", "models/generator_best.pt")):
        with_generator(ws, choice)
        r = run_stage("publish", ws)
        assert r.returncode == 0, r.stderr
        assert (ws / PUBLISHED).read_bytes() == (ws / picked).read_bytes()           # byte for byte
        assert {f: (ws / f).read_bytes() for f in TRAINED} == before                 # train's files as they were
    r = run_stage("export", ws)                 # its defaults, as dvc.yaml runs it: the published generator
    assert r.returncode == 0, r.stderr
    want = models.load(ws / "models/generator_best.pt")
    other = models.load(ws / "models/generator.pt")
    with torch.no_grad():
        for fmt in ("ts", "onnx"):
            run, kind, _ = export.load_runnable(ws / f"models/export/generator.{fmt}")
            got = run(x)
            assert (got - want(x)).abs().max().item() < 1e-4, fmt
            assert (got - other(x)).abs().max().item() > 1e-2, fmt


def test_publish_refuses_a_file_that_is_not_a_generator(ws):
    models.save(trained(4, Discriminator, 8), ws / "models/generator_best.pt")
    with_generator(ws, "best")
    r = run_stage("publish", ws)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "holds a discriminator" in r.stderr, r.stderr
    assert not (ws / PUBLISHED).exists()
    (ws / "models/generator_best.pt").unlink()
    r = run_stage("publish", ws)
    assert r.returncode == 2 and "generator_best.pt" in r.stderr and "dvc repro train" in r.stderr, r.stderr


def test_without_a_model_named_the_cli_and_the_server_use_the_published_generator(ws, monkeypatch):
    monkeypatch.chdir(ws)
    with_generator(ws, "last")                   # before the publish stage has run: the param's file
    assert models.default_generator() == models.GENERATOR_FILES["last"]
    with_generator(ws, "best")
    assert models.default_generator() == models.GENERATOR_FILES["best"]
    (ws / "models/generator_best.pt").unlink()   # trained before the best one was kept
    assert models.default_generator() == models.GENERATOR_FILES["last"]
    models.publish(ws / "models/generator.pt")
    assert models.default_generator() == models.PUBLISHED_GENERATOR
    assert registry.default_generator() == PUBLISHED
    assert generate.model_path(None, ws / "params.yaml") == models.PUBLISHED_GENERATOR
