"""generate: samples, latent -> image with good and bad lines, image -> latent round trip, the CLI, the stage."""
import base64
import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import ROOT, env
from dcgan import generate, generation, params, pictures, sampling
from dcgan.archs.dcgan import Encoder, Generator
from dcgan.model import save

NZ = 8
CLI = [sys.executable, "-m", "dcgan.generate"]


@pytest.fixture(scope="module")
def G():
    torch.manual_seed(0)
    g = Generator(32, 1, nz=NZ, ngf=8)  # PyTorch's default init: more varied images than DCGAN's at step 0
    # Give BatchNorm running statistics that match its inputs, as training would.
    g.train()
    with torch.no_grad():
        for _ in range(20):
            g(torch.randn(64, NZ))
        g.net[-2].weight.mul_(30)  # spread the untrained outputs over the pixel range, like a trained model's
    return g.eval()


@pytest.fixture
def model_file(G, tmp_path):
    save(G, tmp_path / "generator.pt")
    return tmp_path / "generator.pt"


def test_eval_mode_image_depends_only_on_its_own_z(G):
    z = torch.randn(4, NZ)
    alone = sampling.sample_images(G, z[:1], "cpu")
    batched = sampling.sample_images(G, z, "cpu")
    assert np.array_equal(alone[0], batched[0])


def test_write_samples_is_seeded_and_batched(G, tmp_path):
    generation.write_samples(G, tmp_path / "a", 300, seed=3, device="cpu", progress=False)  # > one batch
    generation.write_samples(G, tmp_path / "b", 5, seed=3, device="cpu", progress=False)
    files = sorted((tmp_path / "a").glob("*.png"))
    assert len(files) == 300 and files[0].name == "000000.png"
    assert (tmp_path / "a/000004.png").read_bytes() == (tmp_path / "b/000004.png").read_bytes()
    assert np.asarray(Image.open(files[0])).shape == (32, 32)


def test_slerp_ends_and_norm():
    a, b = torch.randn(NZ), torch.randn(NZ)
    assert torch.allclose(generation.slerp(a, b, 0.0), a, atol=1e-5)
    assert torch.allclose(generation.slerp(a, b, 1.0), b, atol=1e-5)
    mid = generation.slerp(a, b, 0.5)
    lin = (a + b) / 2
    assert mid.norm() > lin.norm()  # stays near the shell instead of cutting through it


def test_parse_latents_reports_each_bad_line_and_keeps_good_ones():
    lines = [
        json.dumps({"key": "ok1", "z": [0.1] * NZ}),
        json.dumps({"key": "short", "z": [0.1] * (NZ - 1)}),
        "{not json",
        json.dumps({"key": "words", "z": ["a"] * NZ}),
        json.dumps({"key": "ok1", "z": [0.2] * NZ}),
        json.dumps({"key": "legacy", "embeddings": [0.3] * NZ}),
        json.dumps({"key": "../evil", "z": [0.0] * NZ}),
        "",
        json.dumps({"key": "nan", "z": [float("nan")] * NZ}).replace("NaN", "NaN"),
    ]
    good, errors = generation.parse_latents("\n".join(lines), NZ)
    assert [k for k, _ in good] == ["ok1", "legacy"]
    by_line = {e.line: e.message for e in errors}
    assert "has 7 numbers" in by_line[2] and "nz is 8" in by_line[2]
    assert "bad JSON" in by_line[3]
    assert "numbers" in by_line[4]
    assert "duplicate key" in by_line[5]
    assert "file name" in by_line[7]
    assert "NaN" in by_line[9]
    assert 8 not in by_line  # blank lines are not errors


def test_latents_cli_writes_good_lines_and_fails_only_when_none_usable(model_file, tmp_path):
    good = {"key": "seven", "z": [0.5] * NZ}
    inp = tmp_path / "z.jsonl"
    inp.write_text(json.dumps(good) + "\n" + json.dumps({"key": "bad", "z": [1]}) + "\n")
    cmd = CLI + ["latents", "--model", str(model_file), "--input", str(inp), "--out", str(tmp_path / "out"),
                 "--device", "cpu", "--params", str(tmp_path / "none")]
    r = subprocess.run(cmd, env=env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "line 2" in r.stderr
    assert (tmp_path / "out/seven.png").is_file() and not (tmp_path / "out/bad.png").exists()

    inp.write_text(json.dumps({"key": "bad", "z": [1]}) + "\n")
    r = subprocess.run(cmd, env=env(), capture_output=True, text=True)
    assert r.returncode == 2 and "no usable line" in r.stderr


def test_inversion_round_trip_recovers_a_known_latent(G):
    torch.manual_seed(1)
    z_true = torch.randn(4, NZ)
    target = sampling.sample_images(G, z_true, "cpu")
    z, err = generation.invert(G, target, steps=150, device="cpu", progress=False)
    recon = sampling.sample_images(G, torch.from_numpy(z), "cpu")
    random_err = ((pictures.to_float(sampling.sample_images(G, torch.randn(4, NZ), "cpu")) - pictures.to_float(target)) ** 2
                  ).flatten(1).mean(1).numpy()
    assert np.all(err < 0.2 * random_err), (err, random_err)
    assert np.abs(recon.astype(int) - target.astype(int)).mean() < 8  # out of 255


def test_invert_cli_on_folder_and_base64_jsonl(G, model_file, tmp_path):
    imgs = sampling.sample_images(G, torch.randn(2, NZ), "cpu")
    folder = tmp_path / "imgs"
    folder.mkdir()
    lines = []
    for i, img in enumerate(imgs):
        pictures.to_pil(img).save(folder / f"img {i}.png")
        buf = io.BytesIO()
        pictures.to_pil(img).save(buf, format="PNG")
        lines.append(json.dumps({"key": f"k{i}", "image_bytes": {"b64": base64.b64encode(buf.getvalue()).decode()}}))
    lines.append(json.dumps({"key": "broken", "image_bytes": {"b64": "bm90IGFuIGltYWdl"}}))
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    for inp, keys in ((folder, {"img 0", "img 1"}), (tmp_path / "in.jsonl", {"k0", "k1"})):
        out = tmp_path / ("out_" + inp.name)
        r = subprocess.run(CLI + ["invert", "--model", str(model_file), "--input", str(inp), "--out", str(out),
                                  "--steps", "30", "--device", "cpu", "--params", str(tmp_path / "none")],
                           env=env(), capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        recs = [json.loads(x) for x in (out / "latents.jsonl").read_text().splitlines()]
        assert {rec["key"] for rec in recs} == keys
        assert all(len(rec["z"]) == NZ and rec["reconstruction_mse"] >= 0 for rec in recs)
        assert (out / "comparison.png").is_file()
    assert "line 3" in r.stderr  # the broken base64 image is reported by line number


def test_sample_cli_help_and_outputs(model_file, tmp_path):
    r = subprocess.run(CLI + ["--help"], env=env(), capture_output=True, text=True)
    assert r.returncode == 0 and "latents" in r.stdout and "invert" in r.stdout
    real = tmp_path / "real.npy"
    np.save(real, np.random.default_rng(0).integers(0, 256, (3, 1, 32, 32), dtype=np.uint8))
    r = subprocess.run(CLI + ["sample", "--model", str(model_file), "--out", str(tmp_path / "g"), "--num", "10",
                              "--steps", "5", "--real", str(real), "--device", "cpu", "--params", str(tmp_path / "none")],
                       env=env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "g/images").glob("*.png"))) == 10
    for name in ("grid.png", "interpolation.png", "inversion.png"):
        assert Image.open(tmp_path / "g" / name).size[0] > 64


def test_sample_cli_names_a_missing_model(tmp_path):
    r = subprocess.run(CLI + ["sample", "--model", str(tmp_path / "x.pt"), "--out", str(tmp_path / "g"),
                              "--params", str(tmp_path / "none")], env=env(), capture_output=True, text=True)
    assert r.returncode == 2 and "x.pt" in r.stderr and "Traceback" not in r.stderr


def test_invert_names_an_encoder_that_does_not_fit_the_generator(model_file, tmp_path):
    save(Encoder(32, 1, NZ + 1, 8), tmp_path / "e.pt")             # one latent too many
    folder = tmp_path / "in"
    folder.mkdir()
    Image.new("L", (32, 32), 128).save(folder / "a.png")
    cmd = CLI + ["invert", "--model", str(model_file), "--input", str(folder), "--out", str(tmp_path / "out"),
                 "--steps", "2", "--device", "cpu", "--params", str(tmp_path / "none")]
    r = subprocess.run(cmd + ["--encoder", str(tmp_path / "e.pt")], env=env(), capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "e.pt" in r.stderr and f"nz {NZ + 1}" in r.stderr and "does not fit" in r.stderr
    r = subprocess.run(cmd + ["--encoder", str(tmp_path / "missing.pt")], env=env(), capture_output=True, text=True)
    assert r.returncode == 2 and "missing.pt not found" in r.stderr


def params_file(tmp_path, **changes):
    p = params.read(ROOT / "params.yaml")
    p.update(changes)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    return tmp_path / "params.yaml"


class Resolved(Exception):
    pass


def test_stage_and_cli_take_their_settings_from_one_place(tmp_path, monkeypatch):
    import stages.generate as stage

    # no params.yaml: the declared defaults (num_images is 1000: checked here, not generated)
    declared = {key: params.SCHEMA[key].default for key in params.STAGE_KEYS["generate"]}
    assert generate.settings(tmp_path / "none") == declared
    # params.yaml over the defaults, an option over params.yaml
    yaml_file = params_file(tmp_path, num_images=7)
    assert generate.settings(yaml_file)["num_images"] == 7
    assert generate.settings(yaml_file, num_images=5) == {**params.load("generate", yaml_file), "num_images": 5}

    # the stage and the CLI resolve through that same function
    def resolved(path, **given):
        raise Resolved(path, given)

    monkeypatch.setattr(generate, "settings", resolved)
    monkeypatch.setattr(sys, "argv", ["stage", "--params", str(yaml_file)])
    with pytest.raises(Resolved) as stage_call:
        stage.main()
    assert stage_call.value.args == (yaml_file, {})
    monkeypatch.setattr(sys, "argv", ["cli", "sample", "--out", str(tmp_path), "--params", str(yaml_file)])
    with pytest.raises(Resolved) as cli_call:
        generate.main()
    assert cli_call.value.args[0] == yaml_file and set(cli_call.value.args[1]) <= set(params.STAGE_KEYS["generate"])


def test_stage_writes_what_params_yaml_asks_for(model_file, tmp_path):
    yaml_file = params_file(tmp_path, num_images=3, invert_steps=2, device="cpu")
    real = tmp_path / "test.npy"
    np.save(real, np.random.default_rng(0).integers(0, 256, (3, 1, 32, 32), dtype=np.uint8))
    r = subprocess.run([sys.executable, "-m", "stages.generate", "--params", str(yaml_file),
                        "--model", str(model_file), "--real", str(real), "--out", str(tmp_path / "g")],
                       cwd=ROOT, env=env(), capture_output=True, text=True)   # as dvc.yaml runs it
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "g/images").glob("*.png"))) == 3
    assert all((tmp_path / "g" / name).is_file() for name in ("grid.png", "interpolation.png", "inversion.png"))
    assert len((tmp_path / "g/inversion.jsonl").read_text().splitlines()) == 3
