"""dvc integration: the whole DAG in a temporary copy of the repository."""
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import copy_repo, ran_stages, set_params, sh

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory) -> tuple[Path, str]:
    """One `dvc repro` of a fresh copy of the project (the whole DAG, about a minute), and its output."""
    repo = copy_repo(tmp_path_factory.mktemp("reproduced") / "repo")
    return repo, sh("dvc repro", repo).stdout


def copy_of(reproduced, tmp_path) -> tuple[Path, str]:
    """A test's own copy of the reproduced repository (git, DVC cache and outputs): seconds instead of a run."""
    src, out = reproduced
    shutil.copytree(src, tmp_path / "repo", symlinks=True)
    return tmp_path / "repo", out


def test_repro_full_dag_then_nothing_then_only_downstream_of_a_generate_param(reproduced, tmp_path):
    repo, first = copy_of(reproduced, tmp_path)
    assert ran_stages(first) == {"demo", "fetch", "prepare", "train", "publish", "encoder", "export", "generate", "evaluate"}

    manifest = json.loads((repo / "data/prepared/manifest.json").read_text())
    assert manifest["counts"]["skipped"] == 0 and sum(manifest["counts"][s] for s in ("train", "val", "test")) == 5000
    train = np.load(repo / "data/prepared/train.npy", allow_pickle=False)
    assert train.dtype == np.uint8 and train.shape[1:] == (1, 32, 32)
    for f in ("models/generator.pt", "models/generator_best.pt", "models/published/generator.pt",
              "models/discriminator.pt", "models/checkpoint.pt",
              "models/encoder.pt", "models/export/generator.onnx", "models/export/generator.ts",
              "models/export/encoder.onnx", "models/export/encoder.ts", "metrics/train.json", "metrics/encoder.json",
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

    shown = json.dumps(json.loads(sh("dvc metrics show --json", repo).stdout))
    for key in ("swd", "loss_g", "best_swd", "encoder_latent_mse", "inversion_mse_encoder",
                "inversion_mse_encoder_refined", "inversion_mse_refined", "inversion_s_encoder"):
        assert key in shown, key
    ev = json.loads((repo / "metrics/eval.json").read_text())
    assert ev["inversion_mse_encoder_refined"] <= ev["inversion_mse_encoder"]   # refinement starts from E(x)

    published = repo / "models/published/generator.pt"
    assert published.read_bytes() == (repo / "models/generator_best.pt").read_bytes()
    assert_exports_hold_the_published_weights(repo)
    set_params(repo, generator="last")   # which generator: publish reruns, never train; what reads it follows
    r = sh("dvc repro", repo)
    assert published.read_bytes() == (repo / "models/generator.pt").read_bytes()
    same = (repo / "models/generator.pt").read_bytes() == (repo / "models/generator_best.pt").read_bytes()
    assert ran_stages(r.stdout) == {"publish"} | (set() if same else {"encoder", "export", "generate", "evaluate"})
    assert_exports_hold_the_published_weights(repo)
    artifacts = yaml.safe_load((repo / "dvc.yaml").read_text())["artifacts"]
    assert artifacts["generator"]["path"] == "models/published/generator.pt"


def assert_exports_hold_the_published_weights(repo):
    """The artifacts generator, generator-onnx and generator-torchscript: one generator's weights."""
    import torch
    from dcgan import export, model

    G = model.load(repo / "models/published/generator.pt")
    z = torch.randn(4, G.nz, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = G(z)
        for name in ("generator.onnx", "generator.ts"):
            run, _, _ = export.load_runnable(repo / "models/export" / name)
            assert (run(z) - want).abs().max().item() < 1e-4, name


def test_invalid_param_stops_dvc_repro_with_the_key_named(repo):
    set_params(repo, image_size=513)
    r = sh("dvc repro prepare", repo, check=False)
    assert r.returncode != 0
    assert "image_size" in r.stderr + r.stdout and "must be in [16, 512]" in r.stderr + r.stdout


def test_a_torchvision_source_from_files_placed_offline_as_the_docs_run_it(reproduced, tmp_path):
    """docs/data.md's FashionMNIST command, with the files in place (no network): fetch writes the receipt that
    prepare's ${source} dep hashes; where the receipt is missing (a fresh clone) fetch alone runs again."""
    from torchvision_files import write_mnist

    repo, _ = copy_of(reproduced, tmp_path)
    write_mnist(repo / "data/torchvision")
    r = sh("dvc exp run train -S source=torchvision:FashionMNIST -S image_size=32 -S channels=1", repo)
    assert ran_stages(r.stdout) == {"fetch", "prepare", "train"}
    assert "torchvision:FashionMNIST: 4 files" in r.stdout
    receipt = repo / "torchvision:FashionMNIST"
    deps = {d["path"]: d for d in yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["prepare"]["deps"]}
    assert deps["torchvision:FashionMNIST"]["md5"] == hashlib.md5(receipt.read_bytes()).hexdigest()
    assert json.loads(receipt.read_text())["files"]["FashionMNIST/raw/t10k-images-idx3-ubyte"]["bytes"] == 15696
    manifest = json.loads((repo / "data/prepared/manifest.json").read_text())
    assert sum(manifest["counts"][s] for s in ("train", "val", "test")) == 80 and manifest["labels"][9] == "Ankle boot"
    assert json.loads((repo / "metrics/train.json").read_text())["epochs_done"] == 1

    receipt.unlink()
    (repo / "data/source.json").unlink()
    r = sh("dvc repro train", repo)
    assert ran_stages(r.stdout) == {"fetch"}


def train_metrics_of_experiments(repo) -> dict:
    """{experiment name: (params.yaml data, metrics/train.json data or None, metrics/eval.json data or None)}"""
    out = {}
    for commit in json.loads(sh("dvc exp show --json", repo).stdout):
        for e in commit.get("experiments") or []:
            data = e["revs"][0]["data"]
            metrics = data.get("metrics") or {}
            out[e["name"]] = (data["params"]["params.yaml"]["data"],
                              (metrics.get("metrics/train.json") or {}).get("data"),
                              (metrics.get("metrics/eval.json") or {}).get("data"))
    return out


def test_exp_run_twice_show_and_diff(reproduced, tmp_path):
    repo, _ = copy_of(reproduced, tmp_path)
    sh("git add -A && git commit -qm baseline", repo)
    summary = (repo / "metrics/train.json").read_text()
    series = (repo / "metrics/train/plots/metrics/loss_d.tsv").read_text()

    # a param that does not change training: train re-runs (DVC deletes its outputs first), trains nothing,
    # and writes every output again exactly as the run that made them
    r = sh("dvc exp run -n resample -S sample_every=3", repo)
    assert "train" in ran_stages(r.stdout) and "already trained for 1 epochs" in r.stdout, r.stdout[-3000:]
    assert (repo / "metrics/train.json").read_text() == summary
    assert (repo / "metrics/train/plots/metrics/loss_d.tsv").read_text() == series
    assert (repo / "metrics/train/plots/images/samples/00001.png").is_file()
    sh("dvc exp run -n one -S epochs=1", repo)
    sh("dvc exp run -n two -S epochs=2", repo)
    shown = json.loads(sh("dvc exp show --json", repo).stdout)
    exps = {}
    for commit in shown:
        for e in commit.get("experiments") or []:
            rev = e["revs"][0]
            exps[e["name"]] = rev["data"]
    assert {"one", "two"} <= set(exps)
    every = train_metrics_of_experiments(repo)
    assert every["resample"][1] == json.loads(summary)
    assert all(m and m["epochs_done"] == p["epochs"] for p, m, _ in every.values()), every
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


def test_queued_experiments_run_each_to_the_end(queued_grid):
    """`dvc exp run --queue` with comma lists queues the grid (lr_g x seed: 4); `dvc queue start -j 2` runs them
    in temporary workspaces; each experiment resumes the baseline's checkpoint only when its training params
    equal it. (How -S lists expand is DVC's, also checked without running in test_params.py.)"""
    repo, status, wall = queued_grid
    assert status.count("Success") == 4 and "Failed" not in status, status
    base = json.loads((repo / "metrics/train.json").read_text())

    every = train_metrics_of_experiments(repo)
    grid = {(p["lr_g"], p["seed"]): (m, e) for p, m, e in every.values()}
    assert set(grid) == {(0.0001, 0), (0.0001, 1), (0.0002, 0), (0.0002, 1)}, every
    for key, (m, e) in grid.items():
        assert m and m["epochs_done"] == 3 and e and "swd" in e, (key, m, e)
    assert grid[0.0002, 0][0] == base                       # the baseline's params: its checkpoint, not retrained
    assert grid[0.0001, 0][0]["loss_g"] != base["loss_g"]   # other params: trained from scratch
    assert grid[0.0002, 1][0]["loss_g"] != base["loss_g"]
    print(f"4 queued experiments with -j 2: {wall:.0f} s")


def test_a_long_run_keeps_git_small_and_the_grids_in_the_dvc_cache(tmp_path):
    repo = copy_repo(tmp_path / "repo", params={"epochs": 300, "batch_size": 32, "sample_every": "auto",
                                                "eval_every": 100},
                     demo_limit=100)
    sh("dvc repro train", repo)     # the grids and series are train's; the stages after it add a few small files
    sh("git add -A", repo)
    tracked = [f for f in sh("git ls-files metrics", repo).stdout.split() if (repo / f).is_file()]
    size = sum((repo / f).stat().st_size for f in tracked)
    assert size < 1_000_000, f"{size} bytes of metrics in git"
    assert not [f for f in tracked if f.startswith("metrics/train/") and f.endswith(".png")], tracked
    grids = sorted((repo / "metrics/train/plots/images/samples").glob("*.png"))
    assert len(grids) == 100 and grids[-1].name == "00300.png"
    lock = (repo / "dvc.lock").read_text()
    assert "path: metrics/train/plots/images" in lock                  # a cached output: one hash in git
    shown = json.loads(sh("dvc plots show --json", repo).stdout)["data"]
    listed = [k for k in shown if k.startswith("metrics/train/plots/images/")]
    assert len(listed) == 100
    tsv = sum((repo / f).stat().st_size for f in tracked if f.startswith("metrics/train/plots/metrics/"))
    print(f"300 epochs: {size} bytes of metrics in git ({tsv} of series, {tsv / 300:.0f} bytes/epoch)")
