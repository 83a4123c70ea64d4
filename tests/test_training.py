"""Training: one step is sane; resume after SIGKILL is bit-identical; params changes start fresh."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import ROOT, TINY, env, make_prepared
from dcgan import params as P
from dcgan import engine, gpu_claim, training
from dcgan.errors import UserError


def tiny_params(**changes) -> dict:
    p = P.read(ROOT / "params.yaml")
    p.update(TINY, batch_size=16, sample_every=1, checkpoint_every=1, epochs=3)
    p.update(changes)
    return p


@pytest.fixture
def prepared(tmp_path) -> Path:
    return make_prepared(tmp_path / "prepared", n_train=96)


def run_train(tmp: Path, prepared: Path, out: str, **changes) -> dict:
    """In-process training run with its own output folders under tmp/out."""
    p = tiny_params(**changes)
    train, val = np.load(prepared / "train.npy"), np.load(prepared / "val.npy")
    lines = []
    summary = training.train(p, train, val, tmp / out / "models", tmp / out / "live", tmp / out / "train.json",
                             progress=False, log=lines.append)
    return {"summary": summary, "log": lines}


def weights(models: Path) -> dict:
    g = torch.load(models / "generator.pt", weights_only=True)["state_dict"]
    d = torch.load(models / "discriminator.pt", weights_only=True)["state_dict"]
    return {**{"G." + k: v for k, v in g.items()}, **{"D." + k: v for k, v in d.items()}}


def assert_identical(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def test_one_epoch_is_finite_changes_weights_and_logs(tmp_path, prepared):
    r = run_train(tmp_path, prepared, "a", epochs=1)
    s = r["summary"]
    for k in ("loss_d", "loss_g", "d_real", "d_fake", "d_train", "d_val", "images_per_s", "wall_s"):
        assert np.isfinite(s[k]), k
    assert s["epochs_done"] == 1 and 0 < s["d_real"] < 1 and 0 < s["d_fake"] < 1
    torch.manual_seed(0)  # the same init the run started from
    from dcgan.archs.dcgan import Generator, init_weights
    G0 = Generator(32, 1, TINY["nz"], TINY["ngf"])
    G0.apply(init_weights)
    trained = torch.load(tmp_path / "a/models/generator.pt", weights_only=True)["state_dict"]
    assert not torch.equal(G0.state_dict()["net.0.weight"], trained["net.0.weight"])
    assert all(torch.isfinite(v.float()).all() for v in trained.values())
    live = tmp_path / "a/live/plots"
    for name in ("loss_d", "loss_g", "d_real", "d_fake", "d_train", "d_val", "images_per_s", "epoch_s"):
        rows = (live / "metrics" / f"{name}.tsv").read_text().splitlines()
        assert rows[0].split("\t")[0] == "step" and len(rows) == 2, name
    assert (live / "images/samples/00001.png").is_file()
    assert json.loads((tmp_path / "a/train.json").read_text())["epochs_done"] == 1


def test_raising_epochs_continues_and_equals_one_long_run(tmp_path, prepared):
    run_train(tmp_path, prepared, "long", epochs=3)
    run_train(tmp_path, prepared, "short", epochs=2)
    r = run_train(tmp_path, prepared, "short", epochs=3)
    assert any("resuming from checkpoint at epoch 2" in line for line in r["log"])
    assert_identical(weights(tmp_path / "long/models"), weights(tmp_path / "short/models"))
    steps = [line.split("\t")[0] for line in (tmp_path / "short/live/plots/metrics/loss_g.tsv").read_text().splitlines()]
    assert steps == ["step", "1", "2", "3"]  # earlier epochs' series kept, no duplicates


def mixed_plan(models, inputs, settings, log):
    """A layer plan with both layouts (timing on this CPU may well choose one for every conv)."""
    from dcgan import layer_plan
    return {k: ("fp32-nchw" if i % 2 else "fp32-nhwc") for i, k in enumerate(layer_plan.conv_inputs(models, inputs))}


def test_a_resume_keeps_the_checkpoints_layer_plan_and_equals_one_long_run(tmp_path, prepared, monkeypatch):
    from dcgan import layer_plan
    monkeypatch.setattr(layer_plan, "plan_for", mixed_plan)
    run_train(tmp_path, prepared, "long", epochs=3)
    run_train(tmp_path, prepared, "short", epochs=2)
    saved = torch.load(tmp_path / "short/models/checkpoint.pt", weights_only=True)["layer_plan"]
    assert set(saved.values()) == {"fp32-nchw", "fp32-nhwc"}
    monkeypatch.setattr(layer_plan, "plan_for", lambda *a: pytest.fail("the resume planned anew"))
    r = run_train(tmp_path, prepared, "short", epochs=3)
    assert any("resuming from checkpoint at epoch 2" in line for line in r["log"])
    assert f"layer plan: {layer_plan.summary(saved)}" in r["log"]
    assert_identical(weights(tmp_path / "long/models"), weights(tmp_path / "short/models"))


def test_a_checkpoint_without_a_plan_resumes_with_adams_state_in_the_new_layouts(tmp_path, prepared, monkeypatch):
    """A checkpoint made on a GPU holds no plan and NHWC everywhere: on the CPU the resume plans, and Adam's
    moments follow their weights into the planned layouts (fused Adam walks them in memory order)."""
    from dcgan import layer_plan
    monkeypatch.setattr(layer_plan, "plan_for", lambda models, inputs, settings, log: {
        k: "fp32-nhwc" for k in layer_plan.conv_inputs(models, inputs)})       # as every conv on a GPU
    run_train(tmp_path, prepared, "a", epochs=1, channels_last=True, precision="fp32")
    ckpt_path = tmp_path / "a/models/checkpoint.pt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    ckpt["layer_plan"] = {}
    torch.save(ckpt, ckpt_path)
    monkeypatch.setattr(layer_plan, "plan_for", mixed_plan)
    seen = []
    real = training.state_like_weights
    monkeypatch.setattr(training, "state_like_weights", lambda opt: (real(opt), seen.append(opt)))
    r = run_train(tmp_path, prepared, "a", epochs=2, channels_last=True, precision="fp32")
    assert any("resuming from checkpoint at epoch 1" in line for line in r["log"]) and r["summary"]["epochs_done"] == 2
    for opt in seen:
        for w in (w for g in opt.param_groups for w in g["params"]):
            for v in opt.state[w].values():
                assert not torch.is_tensor(v) or v.shape != w.shape or v.stride() == w.stride()
    assert len(seen) == 2 and any(w.dim() == 4 and w.is_contiguous() and w.shape[1] > 1
                                  for opt in seen for g in opt.param_groups for w in g["params"])


QUALITY_OPTIONS = {"loss": "hinge", "spectral_norm": True, "r1_gamma": 1.0, "r1_every": 2,
                   "diffaugment": "color,translation,cutout", "ema_halflife": 500, "ema_rampup": 0.05, "eval_every": 1}


def test_quality_options_train_log_and_keep_ema_and_best(tmp_path, prepared):
    r = run_train(tmp_path, prepared, "q", **QUALITY_OPTIONS)
    s = r["summary"]
    for k in ("loss_d", "loss_g", "r1", "swd", "best_swd"):
        assert np.isfinite(s[k]), k
    assert s["r1"] > 0 and 1 <= s["best_epoch"] <= 3
    assert any("loss hinge, DiffAugment color,translation,cutout, spectral norm True, R1 1.0" in x for x in r["log"])
    assert (tmp_path / "q/live/plots/metrics/swd.tsv").read_text().count("\n") == 4   # header + every epoch
    ckpt = torch.load(tmp_path / "q/models/checkpoint.pt", weights_only=True)
    g_last = torch.load(tmp_path / "q/models/generator.pt", weights_only=True)["state_dict"]
    g_best = torch.load(tmp_path / "q/models/generator_best.pt", weights_only=True)["state_dict"]
    for k in g_last:  # generator.pt is the EMA, not the raw G; generator_best.pt is the kept best
        assert torch.equal(g_last[k], ckpt["G_ema"][k].contiguous()), k
        assert torch.equal(g_best[k], ckpt["best"]["G"][k]), k
    assert not all(torch.equal(g_last[k], ckpt["G"][k].contiguous()) for k in g_last if "weight" in k)
    assert ckpt["best"]["epoch"] == s["best_epoch"] and ckpt["best"]["score"] == s["best_swd"]
    d = torch.load(tmp_path / "q/models/discriminator.pt", weights_only=True)
    assert d["config"]["spectral_norm"] is True


def test_quality_options_resume_equals_one_long_run(tmp_path, prepared):
    run_train(tmp_path, prepared, "long", **QUALITY_OPTIONS)
    run_train(tmp_path, prepared, "short", **{**QUALITY_OPTIONS, "epochs": 2})
    r = run_train(tmp_path, prepared, "short", **QUALITY_OPTIONS)
    assert any("resuming from checkpoint at epoch 2" in line for line in r["log"])
    assert_identical(weights(tmp_path / "long/models"), weights(tmp_path / "short/models"))
    for f in ("generator_best.pt", "checkpoint.pt"):
        a = torch.load(tmp_path / "long/models" / f, weights_only=True)
        b = torch.load(tmp_path / "short/models" / f, weights_only=True)
        if f == "checkpoint.pt":
            assert_identical(a["G_ema"], b["G_ema"])
            assert a["best"]["epoch"] == b["best"]["epoch"] and a["best"]["score"] == b["best"]["score"]
            a, b = a["best"]["G"], b["best"]["G"]
        else:
            a, b = a["state_dict"], b["state_dict"]
        assert_identical(a, b)


def test_changed_training_param_starts_fresh_and_says_why(tmp_path, prepared):
    run_train(tmp_path, prepared, "a", epochs=1)
    r = run_train(tmp_path, prepared, "a", epochs=2, lr_g=0.001)
    why = [line for line in r["log"] if "starting fresh" in line]
    assert why and "lr_g" in why[0]
    steps = [line.split("\t")[0] for line in (tmp_path / "a/live/plots/metrics/loss_g.tsv").read_text().splitlines()]
    assert steps == ["step", "1", "2"]  # the old run's series were cleared


def test_changed_data_starts_fresh(tmp_path, prepared):
    run_train(tmp_path, prepared, "a", epochs=1)
    np.save(prepared / "train.npy", np.load(prepared / "train.npy")[:-5])
    r = run_train(tmp_path, prepared, "a", epochs=2)
    assert any("prepared data" in line and "starting fresh" in line for line in r["log"])


def test_checkpoint_loads_with_weights_only_and_holds_all_state(tmp_path, prepared):
    run_train(tmp_path, prepared, "a", epochs=1)
    ckpt = torch.load(tmp_path / "a/models/checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 1
    assert {"G", "D", "opt_g", "opt_d", "rng", "fingerprint", "fixed_noise"} <= set(ckpt)
    assert len(ckpt["rng"]) == 1 and {"python", "numpy", "torch", "cuda"} <= set(ckpt["rng"][0])  # one per rank


def _write_params(path: Path, **changes):
    path.write_text(yaml.safe_dump(tiny_params(**changes), sort_keys=False))


def _train_cmd(tmp: Path, out: str, prepared: Path, params: Path) -> list:
    return [sys.executable, str(ROOT / "stages/train.py"), "--params", str(params), "--prepared", str(prepared),
            "--models", str(tmp / out / "models"), "--live", str(tmp / out / "live"),
            "--summary", str(tmp / out / "train.json")]


def test_sigkill_then_resume_is_bit_identical(tmp_path, prepared):
    params = tmp_path / "params.yaml"
    _write_params(params, epochs=5)
    subprocess.run(_train_cmd(tmp_path, "ref", prepared, params), env=env(), check=True, capture_output=True)

    ckpt = tmp_path / "killed/models/checkpoint.pt"
    proc = subprocess.Popen(_train_cmd(tmp_path, "killed", prepared, params), env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    epoch = 0
    while time.time() < deadline and proc.poll() is None:
        if ckpt.is_file():
            try:
                epoch = torch.load(ckpt, weights_only=True)["epoch"]
            except Exception:  # noqa: BLE001 - a reader racing os.replace sees the old or new file, never half
                epoch = 0
            if epoch >= 2:
                break
        time.sleep(0.02)
    assert proc.poll() is None, "training finished before it could be killed; the test proves nothing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed/models/generator.pt").exists()  # it really died mid-run

    r = subprocess.run(_train_cmd(tmp_path, "killed", prepared, params), env=env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "resuming from checkpoint at epoch" in r.stdout
    assert_identical(weights(tmp_path / "ref/models"), weights(tmp_path / "killed/models"))
    steps = [line.split("\t")[0] for line in (tmp_path / "killed/live/plots/metrics/loss_d.tsv").read_text().splitlines()]
    assert steps == ["step", "1", "2", "3", "4", "5"]


def test_invalid_param_stops_before_training(tmp_path, prepared):
    params = tmp_path / "params.yaml"
    _write_params(params, lr_d=-1.0)
    r = subprocess.run(_train_cmd(tmp_path, "x", prepared, params), env=env(), capture_output=True, text=True)
    assert r.returncode == 2 and "lr_d" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x/models").exists()


def test_unavailable_device_is_named(tmp_path, prepared):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    params = tmp_path / "params.yaml"
    _write_params(params, device="cuda")
    r = subprocess.run(_train_cmd(tmp_path, "x", prepared, params), env=env(), capture_output=True, text=True)
    assert r.returncode == 2 and "device" in r.stderr and "cuda" in r.stderr


def test_auto_device_picks_cpu_without_accelerators():
    if torch.cuda.is_available():
        assert gpu_claim.stage_device("auto").type == "cuda"
    else:
        assert gpu_claim.stage_device("auto").type in ("cpu", "mps")


def test_rerun_at_epochs_rewrites_every_output_from_the_checkpoint(tmp_path, prepared):
    """DVC deletes a stage's non-persistent outputs before re-running it: all of them must come back the same."""
    first = run_train(tmp_path, prepared, "a", epochs=2)
    out = tmp_path / "a"
    before = {f: (out / f).read_bytes() for f in ("train.json", "models/generator.pt", "models/discriminator.pt")}
    series = (out / "live/plots/metrics/loss_d.tsv").read_text()
    for f in before:
        (out / f).unlink()
    again = run_train(tmp_path, prepared, "a", epochs=2, sample_every=2, device="cpu")
    assert any("already trained for 2 epochs" in line for line in again["log"]), again["log"]
    assert again["summary"] == first["summary"]
    for f, data in before.items():
        assert (out / f).read_bytes() == data, f"{f} differs after the re-run"
    assert (out / "live/plots/metrics/loss_d.tsv").read_text() == series


def _code_copy(tmp_path: Path) -> Path:
    """A copy of the stage script and the package, to change code without touching the repository."""
    import shutil
    code = tmp_path / "code"
    for d in ("dcgan", "stages"):
        shutil.copytree(ROOT / d, code / d, ignore=shutil.ignore_patterns("__pycache__"))
    return code


def test_changed_training_code_starts_fresh_and_names_the_file(tmp_path, prepared):
    code = _code_copy(tmp_path)
    params = tmp_path / "params.yaml"
    _write_params(params, epochs=1)
    cmd = _train_cmd(tmp_path, "a", prepared, params)
    cmd[1:2] = ["-m", "stages.train"]      # as dvc.yaml runs it: the package of the working directory
    subprocess.run(cmd, env=env(), check=True, capture_output=True, cwd=code)
    _write_params(params, epochs=2)
    with open(code / "dcgan/model.py", "a") as f:
        f.write("\n# a fix in the model\n")
    r = subprocess.run(cmd, env=env(), capture_output=True, text=True, cwd=code)
    assert r.returncode == 0, r.stderr
    assert "starting fresh" in r.stdout and "code of dcgan/model.py" in r.stdout, r.stdout
    assert "dcgan/training.py" not in r.stdout.split("starting fresh")[0]       # only what changed is named
    steps = [line.split("\t")[0] for line in (tmp_path / "a/live/plots/metrics/loss_d.tsv").read_text().splitlines()]
    assert steps == ["step", "1", "2"]                                            # retrained from epoch 1


def test_checkpoint_fingerprint_holds_the_code_of_the_loop(tmp_path, prepared):
    run_train(tmp_path, prepared, "a", epochs=1)
    code = torch.load(tmp_path / "a/models/checkpoint.pt", weights_only=True)["fingerprint"]["code"]
    assert {"dcgan/training.py", "dcgan/model.py", "dcgan/pictures.py", "dcgan/checkpoint.py",
            "dcgan/archs/dcgan.py", "dcgan/losses/bce.py", "dcgan/augment/cutout.py"} <= set(code)
    # scores pick generator_best.pt but never change the weights: a changed metric resumes
    assert not any(f.startswith("dcgan/metrics/") for f in code)
    assert "dcgan/generation.py" not in code and "dcgan/evaluation.py" not in code


def test_empty_train_split_is_one_line(tmp_path, prepared):
    np.save(prepared / "train.npy", np.zeros((0, 1, 32, 32), np.uint8))
    params = tmp_path / "params.yaml"
    _write_params(params)
    r = subprocess.run(_train_cmd(tmp_path, "x", prepared, params), env=env(), capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("error: ") and "train split" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_diverged_run_is_a_user_error_and_keeps_the_last_good_checkpoint(tmp_path, prepared, monkeypatch):
    run_train(tmp_path, prepared, "x", epochs=1)
    ckpt = (tmp_path / "x/models/checkpoint.pt").read_bytes()
    step = engine.train_step

    def diverging_step(*args):  # what an exploding run looks like to the loop: non-finite losses
        loss_d, *rest = step(*args)
        return loss_d * float("nan"), *rest

    monkeypatch.setattr(engine, "train_step", diverging_step)
    with pytest.raises(UserError, match=r"diverged at epoch 2 \(loss_d=nan\).*lr_g/lr_d"):
        run_train(tmp_path, prepared, "x", epochs=3)
    assert (tmp_path / "x/models/checkpoint.pt").read_bytes() == ckpt        # epoch 1 is still there
    steps = [line.split("\t")[0] for line in (tmp_path / "x/live/plots/metrics/loss_d.tsv").read_text().splitlines()]
    assert steps == ["step", "1"]                                              # nothing of the bad epoch logged
