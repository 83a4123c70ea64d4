"""dvc integration: the whole DAG in a temporary copy of the repository."""
import json

import numpy as np
import pytest

from conftest import sh, set_params

pytestmark = pytest.mark.integration


def ran_stages(out: str) -> set:
    """Stage names dvc actually executed, from `dvc repro`/`dvc exp run` output."""
    return {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage '")}


def test_repro_full_dag_then_nothing_then_only_downstream_of_a_generate_param(repo):
    r = sh("dvc repro", repo)
    assert ran_stages(r.stdout) == {"demo", "prepare", "train", "generate", "evaluate"}

    manifest = json.loads((repo / "data/prepared/manifest.json").read_text())
    assert manifest["counts"]["skipped"] == 0 and sum(manifest["counts"][s] for s in ("train", "val", "test")) == 5000
    train = np.load(repo / "data/prepared/train.npy", allow_pickle=False)
    assert train.dtype == np.uint8 and train.shape[1:] == (1, 32, 32)
    for f in ("models/generator.pt", "models/discriminator.pt", "models/checkpoint.pt", "metrics/train.json",
              "metrics/eval.json", "data/generated/grid.png", "data/generated/interpolation.png"):
        assert (repo / f).is_file(), f
    assert len(list((repo / "data/generated/images").glob("*.png"))) == 64
    assert (repo / "metrics/train/plots/images/samples/00001.png").is_file()

    r = sh("dvc repro", repo)
    assert ran_stages(r.stdout) == set() and "Data and pipelines are up to date" in r.stdout

    set_params(repo, generate_seed=7)  # a generate param: generate and what reads its images re-run, nothing else
    r = sh("dvc repro", repo)
    assert ran_stages(r.stdout) == {"generate", "evaluate"}

    set_params(repo, num_images=80)
    r = sh("dvc repro", repo)
    assert ran_stages(r.stdout) == {"generate", "evaluate"}
    assert len(list((repo / "data/generated/images").glob("*.png"))) == 80
    assert json.loads((repo / "metrics/eval.json").read_text())["n_generated"] == 80

    shown = json.loads(sh("dvc metrics show --json", repo).stdout)
    assert "swd" in json.dumps(shown) and "loss_g" in json.dumps(shown)


def test_invalid_param_stops_dvc_repro_with_the_key_named(repo):
    set_params(repo, image_size=100)
    r = sh("dvc repro prepare", repo, check=False)
    assert r.returncode != 0
    assert "image_size" in r.stderr + r.stdout and "power of two from 32 to 256" in r.stderr + r.stdout


def test_exp_run_twice_show_and_diff(repo):
    sh("dvc repro", repo)
    sh("git add -A && git commit -qm baseline", repo)
    sh("dvc exp run -n one -S epochs=1", repo)
    sh("dvc exp run -n two -S epochs=2", repo)
    shown = json.loads(sh("dvc exp show --json", repo).stdout)
    exps = {}
    for commit in shown:
        for e in commit.get("experiments") or []:
            rev = e["revs"][0]
            exps[e["name"]] = rev["data"]
    assert {"one", "two"} <= set(exps)
    for name, epochs in (("one", 1), ("two", 2)):
        data = exps[name]
        assert data["params"]["params.yaml"]["data"]["epochs"] == epochs
        train_metrics = data["metrics"]["metrics/train.json"]["data"]
        assert train_metrics["epochs_done"] == epochs
        assert "swd" in data["metrics"]["metrics/eval.json"]["data"]
    diff = json.loads(sh("dvc exp diff one two --json", repo).stdout)
    assert diff["params"]["params.yaml"]["epochs"]["old"] == 1
    assert diff["params"]["params.yaml"]["epochs"]["new"] == 2
    text = sh("dvc exp diff one two", repo).stdout
    assert "epochs" in text
