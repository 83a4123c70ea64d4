"""params.yaml validation: every key rejects a bad value with a message naming the key."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import ROOT, sh
from dcgan import params
from dcgan.params import ParamError

REAL = params.read(ROOT / "params.yaml")


def stage_of(key: str) -> str:
    return next(s for s, keys in params.STAGE_KEYS.items() if key in keys)


def check(key, value, *words):
    """Setting `key` to `value` in the real params must fail for the stage that reads it, naming the key."""
    d = {**REAL, key: value}
    stage = stage_of(key)
    with pytest.raises(ParamError) as e:
        params.validate(d, params.STAGE_KEYS[stage])
    msg = str(e.value)
    assert f"'{key}'" in msg, msg
    for w in words:
        assert w in msg, msg
    return msg


def test_real_params_are_valid_for_every_stage():
    for stage in params.STAGE_KEYS:
        out = params.load(stage, ROOT / "params.yaml")
        assert set(out) == set(params.STAGE_KEYS[stage])


def test_every_schema_key_is_in_params_yaml_and_read_by_a_stage():
    assert set(REAL) == set(params.SCHEMA)
    read_by_stages = {k for keys in params.STAGE_KEYS.values() for k in keys}
    assert read_by_stages == set(params.SCHEMA)


# --- prepare --------------------------------------------------------------------------------------

PREPARE_CASES = [
    ("source", "", "must not be empty"),
    ("source", "   ", "must not be empty"),
    ("source", None, "must be a str"),
    ("source", "torchvision:CelebA", "names a torchvision dataset prepare does not read (choose from MNIST, "),
    ("torchvision_root", "", "must not be empty"),
    ("torchvision_root", 3, "must be a str"),
    ("image_size", 15, "must be in [16, 512]"),
    ("image_size", 513, "must be in [16, 512]"),
    ("image_size", 0, "must be in [16, 512]"),
    ("image_size", "abc", "must be an int"),
    ("image_size", "64", "must be an int"),
    ("image_size", True, "must be an int"),
    ("image_size", 64.0, "must be an int"),
    ("channels", 2, "must be one of 1, 3"),
    ("channels", 4, "must be one of 1, 3"),
    ("channels", "3", "must be an int"),
    ("resize", "stretch", "must be one of 'crop', 'pad', 'random'"),
    ("resize", 1, "must be a str"),
    ("crop_fraction", 0, "must be in (0, 1]"),
    ("crop_fraction", 1.5, "must be in (0, 1]"),
    ("crop_fraction", "3/4", "must be a float"),
    ("seed", -1, "must be in [0, "),
    ("background", "notacolour", "colour name or hex code"),
    ("background", "#ggg", "colour name or hex code"),
    ("background", 255, "must be a str"),
    ("val_fraction", 0.7, "must be in [0, 0.5]"),
    ("val_fraction", "a tenth", "must be a float"),
    ("val_fraction", float("nan"), "must be a float"),
    ("val_fraction", True, "must be a float"),
    ("test_fraction", -0.1, "must be in [0, 0.5]"),
    ("test_fraction", float("inf"), "must be a float"),
    ("max_skipped_fraction", 2, "must be in [0, 1]"),
    ("max_skipped_fraction", -0.01, "must be in [0, 1]"),
    ("max_image_pixels", 0, "must be in [1, "),
    ("max_image_pixels", -5, "must be in [1, "),
    ("max_image_pixels", 1.5e8, "must be an int"),
    ("max_file_bytes", 0, "must be in [1, "),
    ("max_file_bytes", "1G", "must be an int"),
]


@pytest.mark.parametrize("key, value, words", PREPARE_CASES, ids=[f"{k}={v!r}" for k, v, _ in PREPARE_CASES])
def test_prepare_param_rejected(key, value, words):
    check(key, value, words)


def test_image_size_message():
    msg = check("image_size", 513)
    assert "image_size" in msg and "[16, 512]" in msg and "513" in msg and "\n" not in msg


def test_every_prepare_key_has_a_case():
    assert {k for k, _, _ in PREPARE_CASES} == set(params.STAGE_KEYS["prepare"])


@pytest.mark.parametrize("key, value", [
    ("image_size", 16), ("image_size", 17), ("image_size", 64), ("image_size", 120), ("image_size", 512),
    ("channels", 1), ("channels", 3), ("resize", "crop"), ("resize", "pad"), ("resize", "random"),
    ("crop_fraction", 0.75), ("crop_fraction", 1.0), ("source", "torchvision:SVHN"), ("source", "zips/a.zip"),
    ("background", "#ff8800"), ("background", "black"), ("val_fraction", 0), ("val_fraction", 0.5),
    ("test_fraction", 0.0), ("max_skipped_fraction", 0), ("max_skipped_fraction", 1), ("max_image_pixels", 1),
])
def test_prepare_value_accepted(key, value):
    out = params.validate({**REAL, key: value}, params.STAGE_KEYS["prepare"])
    assert out[key] == value


def test_int_given_for_a_float_becomes_float():
    out = params.validate({**REAL, "val_fraction": 0, "max_skipped_fraction": 1}, params.STAGE_KEYS["prepare"])
    assert type(out["val_fraction"]) is float and type(out["max_skipped_fraction"]) is float


def test_val_plus_test_must_leave_training_images():
    with pytest.raises(ParamError, match="'val_fraction' \\+ 'test_fraction' must be below 1"):
        params.validate({**REAL, "val_fraction": 0.5, "test_fraction": 0.5}, params.STAGE_KEYS["prepare"])


# --- the other stages -----------------------------------------------------------------------------

OTHER_CASES = [
    ("best_by", "fid", "must be one of 'swd', 'rkid'"),
    ("nz", 0, "must be in [1, 4096]"),
    ("nz", "100", "must be an int"),
    ("ngf", 0, "must be in [1, 1024]"),
    ("ngf", 2048, "must be in [1, 1024]"),
    ("ndf", 0, "must be in [1, 1024]"),
    ("ndf", 64.5, "must be an int"),
    ("epochs", 0, "must be in [1, "),
    ("epochs", True, "must be an int"),
    ("batch_size", 0, "must be in [1, 65536]"),
    ("lr_g", 0, "must be in (0, 1]"),
    ("lr_g", "2e-3x", "must be a float"),
    ("lr_g", "nan", "must be a float"),
    ("lr_d", 1.5, "must be in (0, 1]"),
    ("lr_d", -0.0002, "must be in (0, 1]"),
    ("beta1", 1.0, "must be in [0, 1)"),
    ("beta1", -0.5, "must be in [0, 1)"),
    ("beta2", 1, "must be in [0, 1)"),
    ("seed", -1, "must be in [0, "),
    ("seed", 0.5, "must be an int"),
    ("device", "gpu", "must be auto, cpu, cuda, cuda:N or mps"),
    ("device", "cuda:x", "must be auto, cpu, cuda, cuda:N or mps"),
    ("device", "cuda:", "must be auto, cpu, cuda, cuda:N or mps"),
    ("device", 0, "must be a str"),
    ("precision", "fp16", "must be one of 'auto', 'fp32', 'bf16'"),
    ("channels_last", "yes", "must be auto, true or false"),
    ("channels_last", 1, "must be a bool/str"),
    ("compile", "max", "must be auto, true or false"),
    ("compile", None, "must be a bool/str"),
    ("nproc", 0, "must be in [1, 1024]"),
    ("nnodes", 0, "must be in [1, 4096]"),
    ("rdzv_endpoint", 5, "must be a str"),
    ("sample_every", 0, "must be 'auto' or an int from 1 to"),
    ("sample_every", "often", "must be 'auto' or an int from 1 to"),
    ("sample_every", 2.5, "must be an int/str"),
    ("checkpoint_every", 0, "must be in [1, "),
    ("checkpoint_every", None, "must be an int"),
    ("diffaugment", "color,nope", "unknown augmentation 'nope' (choose from "),
    ("diffaugment", 1, "must be a str"),
    ("loss", "nope", "unknown loss 'nope' (choose from "),
    ("arch", "nope", "unknown architecture 'nope' (choose from "),
    ("arch", 2, "must be a str"),
    ("spectral_norm", "yes", "must be a bool"),
    ("r1_gamma", -1.0, "must be in [0, 1000000"),
    ("r1_every", 0, "must be in [1, 1000000]"),
    ("ema_halflife", -1, "must be in [0,"),
    ("ema_halflife", 0.5, "must be an int"),
    ("ema_rampup", 2.0, "must be in [0, 1]"),
    ("eval_every", -1, "must be in [0, "),
    ("generator", "ema", "must be one of 'best', 'last'"),
    ("num_images", 0, "must be in [1, 10000000]"),
    ("generate_seed", -3, "must be in [0, "),
    ("invert_steps", -1, "must be in [0, 100000]"),
    ("encoder_steps", 0, "must be in [1, 10000000]"),
    ("encoder_lr", 0.0, "must be in (0, 1]"),
    ("encoder_pixel_weight", -1.0, "must be in [0, 1000000"),
    ("fid_weights", 5, "must be a str"),
    ("memorisation_k", 0, "must be in [1, 100000]"),
]


@pytest.mark.parametrize("key, value, words", OTHER_CASES, ids=[f"{k}={v!r}" for k, v, _ in OTHER_CASES])
def test_other_stage_param_rejected(key, value, words):
    check(key, value, words)


def test_every_key_of_every_stage_has_a_case():
    covered = {k for k, _, _ in PREPARE_CASES + OTHER_CASES}
    assert covered == set(params.SCHEMA)


@pytest.mark.parametrize("stage", ["train", "generate", "evaluate"])
def test_device_checked_by_every_stage_that_reads_it(stage):
    if "device" not in params.STAGE_KEYS[stage]:
        pytest.skip(f"{stage} does not read device")
    with pytest.raises(ParamError, match="'device'"):
        params.validate({**REAL, "device": "tpu"}, params.STAGE_KEYS[stage])


@pytest.mark.parametrize("value", ["auto", "cpu", "cuda", "cuda:0", "cuda:12", "mps"])
def test_device_accepted(value):
    assert params.validate({**REAL, "device": value}, params.STAGE_KEYS["train"])["device"] == value


# --- unknown and missing keys, the file itself ----------------------------------------------------

def write_params(tmp_path, **changes):
    d = {**REAL, **changes}
    for k in [k for k, v in changes.items() if v is ...]:
        del d[k]
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(d, sort_keys=False))
    return p


@pytest.mark.parametrize("stage", list(params.STAGE_KEYS))
def test_unknown_key_suggests_the_closest(tmp_path, stage):
    p = write_params(tmp_path, epoch=5)
    with pytest.raises(ParamError) as e:
        params.load(stage, p)  # every stage checks the whole file, not just its own keys
    msg = str(e.value)
    assert "unknown key 'epoch'" in msg and "did you mean 'epochs'?" in msg and str(p) in msg


def test_unknown_key_without_close_match_lists_valid_keys(tmp_path):
    p = write_params(tmp_path, zzzzzz=1)
    with pytest.raises(ParamError, match="unknown key 'zzzzzz'; valid keys: source, torchvision_root, image_size"):
        params.load("prepare", p)


@pytest.mark.parametrize("key", ["source", "image_size", "nz", "epochs", "num_images", "memorisation_k"])
def test_missing_key_is_named(tmp_path, key):
    p = write_params(tmp_path, **{key: ...})
    with pytest.raises(ParamError) as e:
        params.load(stage_of(key), p)
    assert f"missing key '{key}'" in str(e.value)


def test_missing_key_of_another_stage_is_not_an_error_for_this_one(tmp_path):
    p = write_params(tmp_path, nz=...)
    assert params.load("prepare", p)["image_size"] == REAL["image_size"]


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ParamError, match="not found"):
        params.load("prepare", tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("image_size: [32\n")
    with pytest.raises(ParamError, match="not valid YAML"):
        params.load("prepare", bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ParamError, match="must be a mapping"):
        params.load("prepare", lst)


def test_values_from_yaml_text_are_typed_as_written(tmp_path):
    # the user writes YAML, not Python: `image_size: '64'` is a string and `channels: yes` a bool
    text = (ROOT / "params.yaml").read_text()
    p = tmp_path / "params.yaml"
    p.write_text(text.replace("image_size: 32 ", "image_size: '64' ", 1))
    with pytest.raises(ParamError, match="'image_size' must be an int"):
        params.load("prepare", p)
    p.write_text(text.replace("channels: 1 ", "channels: true ", 1))
    with pytest.raises(ParamError, match="'channels' must be an int"):
        params.load("prepare", p)


# --- the stage script -----------------------------------------------------------------------------

def run_stage(tmp_path, params_file, *extra, check=False):
    return sh([sys.executable, str(ROOT / "stages" / "prepare.py"), "--params", str(params_file),
               "--out", str(tmp_path / "out"), *extra], cwd=tmp_path, check=check, timeout=120)


@pytest.mark.parametrize("key, value", [("image_size", 513), ("epoch", 5), ("source", "")])
def test_stage_script_exits_2_with_one_line_naming_the_key(tmp_path, key, value):
    r = run_stage(tmp_path, write_params(tmp_path, **{key: value}))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ") and f"'{key}'" in lines[0], lines[0]
    assert "Traceback" not in r.stderr
    if key == "image_size":
        assert "must be in [16, 512]" in lines[0]
    assert not (tmp_path / "out").exists()


def test_stage_script_missing_source_exits_2(tmp_path):
    missing = tmp_path / "nowhere"
    r = run_stage(tmp_path, write_params(tmp_path, source=str(missing)))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [f"error: source '{missing}' does not exist"]


def test_stage_script_prepares_a_folder(tmp_path):
    src = tmp_path / "imgs"
    src.mkdir()
    for i in range(6):
        Image.new("RGB", (40, 30), (i * 40, 0, 255 - i * 40)).save(src / f"{i}.png")
    (src / "bad.png").write_bytes(b"")
    p = write_params(tmp_path, source=str(src), image_size=32, channels=3, max_skipped_fraction=0.2)
    r = run_stage(tmp_path, p, "--workers", "1", check=True)
    assert "prepared" in r.stdout and "1 skipped" in r.stdout and "bad.png" in r.stdout
    m = yaml.safe_load((tmp_path / "out" / "manifest.json").read_text())
    assert m["params"]["source"] == str(src) and m["params"]["image_size"] == 32
    assert sum(m["counts"][s] for s in ("train", "val", "test")) == 6


def test_docs_sweep_recipe_expands_to_valid_params(tmp_path):
    """docs/training.md's quality sweep, through DVC's own -S parser (Hydra sweeps), gives params every stage
    accepts."""
    import re
    import shlex

    from dvc.utils.hydra import apply_overrides, get_hydra_sweeps

    readme = (ROOT / "docs" / "training.md").read_text()
    block = readme[readme.index("### Sweep the options yourself"):]
    cmd = block[block.index("dvc exp run --queue"):]
    cmd = cmd[:cmd.index("\n", cmd.index("seed=0,1"))].replace("\\\n", " ")
    sets = [a for flag, a in zip(shlex.split(cmd), shlex.split(cmd)[1:]) if flag == "-S"]
    sweeps = get_hydra_sweeps({"params.yaml": sets})
    assert len(sweeps) == 12
    policies = set()
    for overrides in sweeps:
        f = tmp_path / "params.yaml"
        f.write_text((ROOT / "params.yaml").read_text())
        apply_overrides(str(f), overrides["params.yaml"])
        for stage in params.STAGE_KEYS:
            params.load(stage, f)
        policies.add(params.read(f)["diffaugment"])
    assert policies == {"", "color,translation", "color,translation,cutout"}
    assert re.search(r"dvc exp show --sort-by metrics/train.json:best_swd", block)


@pytest.mark.parametrize("key", [k for k, p in params.SCHEMA.items() if p.kind is float])
@pytest.mark.parametrize("written, value", [("5e-05", 5e-05), ("1E-4", 1e-4), ("2.5e-1", 0.25), ("3", 3.0), (".0001", 1e-4),
                                            ("2E-4", 2e-4), ("'0.0001'", 1e-4)])
def test_floats_as_dvc_and_people_write_them(tmp_path, key, written, value):
    """DVC's -S writes small floats as 5e-05, which YAML 1.1 (PyYAML) reads as a string: still a float here."""
    p = params.SCHEMA[key]
    text = (ROOT / "params.yaml").read_text()
    f = tmp_path / "params.yaml"
    f.write_text("\n".join(f"{key}: {written}" if line.startswith(f"{key}:") else line for line in text.splitlines()))
    try:
        got = params.load(p.stages[0], f)[key]
    except ParamError as e:          # a value out of this param's range: refused for the range, not the spelling
        assert "must be a float" not in str(e), e
        return
    assert got == pytest.approx(value) and isinstance(got, float)


def test_floats_through_dvc_exp_run(tmp_path):
    """`dvc exp run -S lr_g=0.00005` and the other spellings: DVC writes params.yaml, and every stage that reads a
    float reads the value that was typed (a one-stage pipeline per stage, each loading its params as the real
    stages do)."""
    import json
    import shutil

    typed = {"lr_g": "0.00005", "lr_d": "1e-4", "encoder_lr": ".0001", "r1_gamma": "2E-4", "ema_rampup": "5e-05",
             "encoder_pixel_weight": "0.5", "val_fraction": "0.1", "beta2": "0.99"}
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    stages = {}
    for stage, keys in params.STAGE_KEYS.items():
        floats = [k for k in keys if params.SCHEMA[k].kind is float]
        code = (f"import json; from dcgan import params; p = params.load({stage!r}); "
                f"json.dump({{k: p[k] for k in {floats!r}}}, open('{stage}.json', 'w'))")
        stages[stage] = {"cmd": f"python -c \"{code}\"", "params": keys, "outs": [f"{stage}.json"]}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, width=1000))
    sh("git init -q && dvc init -q && git add -A && git commit -qm init", tmp_path)
    sets = " ".join(f"-S {k}={v}" for k, v in typed.items())
    sh(f"dvc exp run {sets}", tmp_path, timeout=300)
    written = (tmp_path / "params.yaml").read_text()
    assert "lr_g: 5e-05" in written                                  # the spelling that YAML 1.1 reads as a string
    seen = {}
    for stage in params.STAGE_KEYS:
        seen.update(json.loads((tmp_path / f"{stage}.json").read_text()))
    assert {k: seen[k] for k in typed} == {k: float(v) for k, v in typed.items()}
    assert all(isinstance(v, float) for v in seen.values())


INT_KEYS = [k for k, p in params.SCHEMA.items() if p.kind is int or (isinstance(p.kind, tuple) and int in p.kind)]


@pytest.mark.parametrize("key", INT_KEYS)
def test_every_int_param_is_bounded(key):
    """An integer beyond what torch and numpy take is one line naming the key, not a traceback mid-run."""
    with pytest.raises(params.ParamError, match=f"'{key}'"):
        params.validate({key: 10**14 * 10**6}, [key])


def test_the_largest_seeds_are_what_torch_and_numpy_accept():
    """seed: 100000000000000 passed validation and crashed the first epoch (torch seeds take < 2**64)."""
    from dcgan import checkpoint, generation
    from dcgan.training import perm_generator

    with pytest.raises(params.ParamError, match="'seed'"):
        params.validate({"seed": 100_000_000_000_000}, ["seed"])
    top = params.validate({"seed": params.MAX_SEED, "generate_seed": params.MAX_SEED, "epochs": params.MAX_COUNT},
                          ["seed", "generate_seed", "epochs"])
    torch.randperm(4, generator=perm_generator(top["seed"], top["epochs"]))
    checkpoint.seed_everything(top["seed"] + 1_000_003 * 4095)         # the last rank of the largest nnodes x nproc
    np.random.RandomState(top["seed"])                                 # KID's subsets
    generation.noise(2, 3, top["generate_seed"])
