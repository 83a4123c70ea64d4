"""Every input a user can get wrong ends in one line that names it: `error: ...`, exit code 2, no traceback.

Each case runs a stage script as a user would (a subprocess, own params file and folders under tmp_path).
`python -m locals3`'s bad inputs are in locals3/tests/test_server.py (they need their own server home).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import ROOT, TINY, env
from dcgan import params as P
from dcgan.archs.dcgan import Discriminator, Generator, init_weights
from dcgan.model import save

NZ = TINY["nz"]


def run(script: str, *args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "stages" / script), *map(str, args)], cwd=cwd, env=env(),
                          capture_output=True, text=True, timeout=300)


def assert_one_line_error(r: subprocess.CompletedProcess, *words: str):
    out = r.stderr.strip()
    assert r.returncode == 2, f"exit {r.returncode}\n{r.stdout[-2000:]}\n{out[-3000:]}"
    assert "Traceback" not in out, out[-3000:]
    last = out.splitlines()[-1]
    assert last.startswith("error: "), out[-2000:]
    for w in words:
        assert w in last, f"{w!r} not in {last!r}"


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """A workspace: params.yaml with tiny settings, prepared arrays, an untrained generator and discriminator."""
    d = tmp_path_factory.mktemp("ws")
    p = P.read(ROOT / "params.yaml")
    p.update(TINY)
    (d / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    rng = np.random.default_rng(0)
    prep = d / "data/prepared"
    prep.mkdir(parents=True)
    for split, n in (("train", 40), ("val", 8), ("test", 8)):
        np.save(prep / f"{split}.npy", rng.integers(0, 256, (n, 1, 32, 32), dtype=np.uint8))
    torch.manual_seed(0)
    save(Generator(32, 1, NZ, TINY["ngf"]).apply(init_weights), d / "models/generator.pt")
    save(Discriminator(32, 1, TINY["ndf"]).apply(init_weights), d / "models/discriminator.pt")
    return d


def with_params(ws: Path, tmp_path: Path, **changes) -> Path:
    p = yaml.safe_load((ws / "params.yaml").read_text())
    p.update(changes)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(p, sort_keys=False))
    return path


# ---------------------------------------------------------------- params.yaml itself

def test_params_file_not_yaml(ws, tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("epochs: [1,\n")
    assert_one_line_error(run("train.py", "--params", bad, cwd=ws), "params.yaml", "not valid YAML")


def test_params_unknown_key(ws, tmp_path):
    bad = with_params(ws, tmp_path, epoch=5)
    assert_one_line_error(run("prepare.py", "--params", bad, cwd=ws), "unknown key 'epoch'", "did you mean 'epochs'")


# ---------------------------------------------------------------- prepare

def test_prepare_source_missing(ws, tmp_path):
    bad = with_params(ws, tmp_path, source=str(tmp_path / "nowhere"))
    assert_one_line_error(run("prepare.py", "--params", bad, "--out", tmp_path / "out", cwd=ws), "nowhere",
                          "does not exist")


def test_prepare_source_is_not_a_folder_or_zip(ws, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    bad = with_params(ws, tmp_path, source=str(tmp_path / "notes.txt"))
    assert_one_line_error(run("prepare.py", "--params", bad, "--out", tmp_path / "out", cwd=ws), "notes.txt",
                          "neither a folder nor a .zip")


def test_prepare_source_without_images(ws, tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src/readme.txt").write_text("no pictures here")
    bad = with_params(ws, tmp_path, source=str(tmp_path / "src"))
    assert_one_line_error(run("prepare.py", "--params", bad, "--out", tmp_path / "out", cwd=ws), "no usable image")


def test_prepare_out_is_a_file(ws, tmp_path):
    (tmp_path / "src").mkdir()
    from PIL import Image
    Image.new("L", (40, 40), 128).save(tmp_path / "src/a.png")
    (tmp_path / "out").write_text("a file where the output folder should go")
    good = with_params(ws, tmp_path, source=str(tmp_path / "src"))
    assert_one_line_error(run("prepare.py", "--params", good, "--out", tmp_path / "out", cwd=ws), "out")
    assert (tmp_path / "out").read_text().startswith("a file")                       # nothing stored is lost


# ---------------------------------------------------------------- train

def _train(ws, tmp_path, prepared: Path, params: Path | None = None):
    return run("train.py", "--params", params or ws / "params.yaml", "--prepared", prepared,
               "--models", tmp_path / "models", "--live", tmp_path / "live", "--summary", tmp_path / "t.json", cwd=ws)


def _prepared_copy(ws, tmp_path) -> Path:
    import shutil
    return Path(shutil.copytree(ws / "data/prepared", tmp_path / "prepared"))


def test_train_without_prepared_data(ws, tmp_path):
    assert_one_line_error(_train(ws, tmp_path, tmp_path / "nothing"), "train.npy", "not found", "dvc repro prepare")


def test_train_on_a_corrupt_array_file(ws, tmp_path):
    prep = _prepared_copy(ws, tmp_path)
    (prep / "train.npy").write_bytes(b"\x93NUMPY garbage")
    assert_one_line_error(_train(ws, tmp_path, prep), "train.npy", "not a valid .npy")


def test_train_on_an_array_that_is_not_images(ws, tmp_path):
    prep = _prepared_copy(ws, tmp_path)
    np.save(prep / "train.npy", np.zeros((4, 32, 32), np.float32))
    assert_one_line_error(_train(ws, tmp_path, prep), "train.npy", "not uint8 images")


def test_train_on_an_empty_train_split(ws, tmp_path):
    prep = _prepared_copy(ws, tmp_path)
    np.save(prep / "train.npy", np.zeros((0, 1, 32, 32), np.uint8))
    assert_one_line_error(_train(ws, tmp_path, prep), "train split", "val_fraction/test_fraction")
    assert not (tmp_path / "models").exists()


def test_train_on_a_missing_gpu(ws, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    assert_one_line_error(_train(ws, tmp_path, ws / "data/prepared", with_params(ws, tmp_path, device="cuda:1")),
                          "'device'", "cuda:1")


# ---------------------------------------------------------------- encoder, export

def test_encoder_without_a_generator(ws, tmp_path):
    r = run("encoder.py", "--params", ws / "params.yaml", "--generator", tmp_path / "g.pt",
            "--out", tmp_path / "e.pt", "--summary", tmp_path / "e.json", cwd=ws)
    assert_one_line_error(r, "g.pt", "not found")


def test_encoder_given_the_discriminator(ws, tmp_path):
    r = run("encoder.py", "--params", ws / "params.yaml", "--generator", ws / "models/discriminator.pt",
            "--out", tmp_path / "e.pt", "--summary", tmp_path / "e.json", cwd=ws)
    assert_one_line_error(r, "discriminator.pt", "not a generator")


def test_export_without_an_encoder(ws, tmp_path):
    r = run("export.py", "--params", ws / "params.yaml", "--generator", ws / "models/generator.pt",
            "--encoder", tmp_path / "missing.pt", "--out", tmp_path / "export", cwd=ws)
    assert_one_line_error(r, "missing.pt", "not found")


# ---------------------------------------------------------------- generate

def _gen(ws, cmd: str, *args):
    """`python -m dcgan.generate cmd ...` in the workspace, with its params.yaml."""
    return subprocess.run([sys.executable, "-m", "dcgan.generate", cmd, "--params", str(ws / "params.yaml"),
                           *map(str, args)], cwd=ws, env=env(), capture_output=True, text=True, timeout=300)


def test_generate_model_missing(ws, tmp_path):
    assert_one_line_error(_gen(ws, "sample", "--model", tmp_path / "g.pt", "--out", tmp_path / "o"), "g.pt", "not found")


def test_generate_model_not_a_model(ws, tmp_path):
    (tmp_path / "g.pt").write_bytes(b"not a model at all")
    assert_one_line_error(_gen(ws, "sample", "--model", tmp_path / "g.pt", "--out", tmp_path / "o"), "g.pt",
                          "not a model saved by this project")


def test_generate_with_the_discriminator(ws, tmp_path):
    r = _gen(ws, "sample", "--model", ws / "models/discriminator.pt", "--out", tmp_path / "o")
    assert_one_line_error(r, "discriminator.pt", "holds a discriminator")


def test_generate_real_images_file_corrupt(ws, tmp_path):
    (tmp_path / "test.npy").write_bytes(b"garbage")
    r = _gen(ws, "sample", "--model", ws / "models/generator.pt", "--out", tmp_path / "o", "--num", 4,
             "--real", tmp_path / "test.npy")
    assert_one_line_error(r, "test.npy", "not a valid .npy")


def test_latents_file_not_utf8(ws, tmp_path):
    (tmp_path / "z.jsonl").write_bytes(b'{"key": "a", "z": [0.5]}\n\xff\xfe latin-1 \xe9\n')
    r = _gen(ws, "latents", "--model", ws / "models/generator.pt", "--out", tmp_path / "o", "--input", tmp_path / "z.jsonl")
    assert_one_line_error(r, "z.jsonl", "not UTF-8")


def test_latents_key_longer_than_a_file_name_may_be(ws, tmp_path):
    lines = [{"key": "é" * 150, "z": [0.0] * NZ},            # 300 bytes in UTF-8: no file system takes it
             {"key": "k" * 300, "z": [0.0] * NZ}]
    (tmp_path / "z.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    r = _gen(ws, "latents", "--model", ws / "models/generator.pt", "--out", tmp_path / "o", "--input", tmp_path / "z.jsonl")
    assert_one_line_error(r, "z.jsonl", "no usable line")
    assert "line 1: 'key' is 300 bytes" in r.stderr and "line 2: 'key' is 300 bytes" in r.stderr, r.stderr


def test_latents_wrong_length(ws, tmp_path):
    (tmp_path / "z.jsonl").write_text(json.dumps({"key": "a", "z": [0.1, 0.2]}) + "\n")
    r = _gen(ws, "latents", "--model", ws / "models/generator.pt", "--out", tmp_path / "o", "--input", tmp_path / "z.jsonl")
    assert_one_line_error(r, "z.jsonl", "no usable line")
    assert f"the model's nz is {NZ}" in r.stderr


def test_invert_jsonl_not_utf8(ws, tmp_path):
    (tmp_path / "imgs.jsonl").write_bytes(b"\xff\xfe\x00{")
    r = _gen(ws, "invert", "--model", ws / "models/generator.pt", "--out", tmp_path / "o",
             "--input", tmp_path / "imgs.jsonl", "--steps", 1)
    assert_one_line_error(r, "imgs.jsonl", "not UTF-8")


def test_generate_out_is_a_file(ws, tmp_path):
    (tmp_path / "o").write_text("keep me")
    r = _gen(ws, "sample", "--model", ws / "models/generator.pt", "--out", tmp_path / "o", "--num", 2)
    assert_one_line_error(r, "o")
    assert (tmp_path / "o").read_text() == "keep me"


# ---------------------------------------------------------------- evaluate

def _eval(ws, tmp_path, params=None, **paths):
    args = {"prepared": ws / "data/prepared", "generated": ws / "gen", "discriminator": ws / "models/discriminator.pt",
            **paths}
    flags = [x for k, v in args.items() for x in (f"--{k}", v)]
    return run("evaluate.py", "--params", params or ws / "params.yaml", *flags, "--out-json", tmp_path / "e.json",
               "--out-dir", tmp_path / "e", cwd=ws)


@pytest.fixture(scope="module")
def generated(ws):
    r = _gen(ws, "sample", "--model", ws / "models/generator.pt", "--out", ws / "gen_out", "--num", 8)
    assert r.returncode == 0, r.stderr
    (ws / "gen").symlink_to(ws / "gen_out/images")
    return ws / "gen"


def test_evaluate_without_generated_images(ws, tmp_path):
    assert_one_line_error(_eval(ws, tmp_path, generated=tmp_path / "none"), "none", "not found")


def test_evaluate_with_the_generator_as_discriminator(ws, tmp_path, generated):
    r = _eval(ws, tmp_path, discriminator=ws / "models/generator.pt")
    assert_one_line_error(r, "generator.pt", "holds a generator")


def test_evaluate_test_split_too_small(ws, tmp_path, generated):
    prep = _prepared_copy(ws, tmp_path)
    np.save(prep / "test.npy", np.zeros((1, 1, 32, 32), np.uint8))
    assert_one_line_error(_eval(ws, tmp_path, prepared=prep), "test split has 1 images", "at least 2")


def test_evaluate_fid_weights_file_corrupt(ws, tmp_path, generated):
    (tmp_path / "inception.pth").write_bytes(b"not weights")
    params = with_params(ws, tmp_path, fid_weights=str(tmp_path / "inception.pth"))
    assert_one_line_error(_eval(ws, tmp_path, params=params), "fid_weights", "inception.pth")
