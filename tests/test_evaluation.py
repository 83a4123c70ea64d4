"""dcgan.evaluation end to end on a tiny untrained model, and the evaluate stage script."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from dcgan import evaluation, metrics, pictures, sampling
from dcgan.report import page as report_page
from dcgan.report.collect import Experiment
from dcgan.report import table as report_table
from dcgan.archs.dcgan import Discriminator, Encoder, Generator, init_weights
from dcgan.metrics._inception import FID_WEIGHTS_FILE
from dcgan.model import save

ROOT = Path(__file__).resolve().parents[1]

# metrics/eval.json's keys in their order, as the evaluate stage has always written them for 32 px images
INVERSION_KEYS = [
    "inversion_mse_encoder", "inversion_s_encoder", "inversion_mse_encoder_refined", "inversion_s_encoder_refined",
    "inversion_mse_refined", "inversion_s_refined", "inversion_images", "inversion_steps",
]
EVAL_KEYS = [
    "n_generated", "n_test", "n_train",
    "swd", "swd_32px", "swd_16px", "swd_floor", "swd_floor_32px", "swd_floor_16px",
    "fid", "kid", "kid_std", "fid_floor", "kid_floor",
    "rkid", "rkid_std", "rkid_floor", "c2st", "c2st_floor",
    "d_accuracy", "d_accuracy_real", "d_accuracy_fake", "d_tn", "d_fp", "d_fn", "d_tp",
    "memorisation_k", "memorisation_median_distance", "memorisation_min_distance",
    "memorisation_median_distance_test", "memorisation_ratio",
    *INVERSION_KEYS,  # only with a generator and an encoder
    "wall_s",
]
EXPECTED_KEYS = set(EVAL_KEYS) - set(INVERSION_KEYS)
FID_KEYS = {"fid", "kid", "kid_std", "fid_floor", "kid_floor"}
PARAMS = {"fid_weights": "", "memorisation_k": 12, "device": "cpu", "seed": 0, "invert_steps": 5, "generator": "best"}


def generated(G, n: int, seed: int, device) -> np.ndarray:
    """n images of G from seeded noise, drawn batch by batch as the generate stage's files are."""
    g = torch.Generator().manual_seed(seed)
    z = torch.cat([torch.randn(min(256, n - i), G.nz, generator=g) for i in range(0, n, 256)])
    return sampling.sample_images(G, z, device)


def tiny_models(seed: int = 0):
    torch.manual_seed(seed)
    g, d = Generator(32, 1, nz=16, ngf=8), Discriminator(32, 1, ndf=8)
    g.apply(init_weights)
    d.apply(init_weights)
    return g.eval(), d.eval()


def random_split(n: int, seed: int, channels: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, channels, 32, 32), dtype=np.uint8)


class MeanStd:
    """Stand-in feature extractor: a few image statistics."""

    def __init__(self):
        self.calls = 0

    def features(self, images):
        self.calls += 1
        x = images.reshape(len(images), -1).astype(np.float64) / 255
        return np.stack([x.mean(1), x.std(1), (x > 0.5).mean(1), x.max(1)], 1)


@pytest.fixture
def no_hub(tmp_path, monkeypatch):
    """An empty torch hub cache and no network (whether or not this machine has one)."""
    def no_network(*a, **k):
        import urllib.error
        raise urllib.error.URLError("no network in this test")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr("urllib.request.urlopen", no_network)


def test_evaluate_end_to_end_without_fid_weights(tmp_path, no_hub):
    g, d = tiny_models()
    train, test = random_split(80, 1), random_split(30, 2)
    out_json, out_dir = tmp_path / "metrics" / "eval.json", tmp_path / "metrics" / "eval"
    msgs = []
    fake = generated(g, 40, 0, "cpu")
    res = evaluation.evaluate(fake, d, train, test, PARAMS, out_json, out_dir, "cpu", progress=False, log=msgs.append)
    data = json.loads(out_json.read_text())
    assert data == res
    assert EXPECTED_KEYS <= set(data) and all(evaluation.key_help(k) for k in data)   # and any metric added
    for k in FID_KEYS:
        assert data[k] is None
    assert any(FID_WEIGHTS_FILE in m and "skipped" in m for m in msgs)
    for k, v in data.items():
        if k not in FID_KEYS:
            assert isinstance(v, (int, float)) and math.isfinite(v), (k, v)
    assert (data["n_generated"], data["n_test"], data["n_train"], data["memorisation_k"]) == (40, 30, 80, 12)
    assert data["d_tn"] + data["d_fp"] + data["d_fn"] + data["d_tp"] == 60  # 30 real + 30 generated
    assert data["d_tn"] + data["d_fp"] == data["d_fn"] + data["d_tp"] == 30
    assert 0 <= data["d_accuracy"] <= 1
    assert data["swd"] > 0 and data["swd_floor"] > 0
    assert data["swd"] == pytest.approx((data["swd_32px"] + data["swd_16px"]) / 2)
    # an untrained generator is far from the data; real images are not
    assert data["swd"] > data["swd_floor"]
    for name in ("confusion_matrix.png", "memorisation.png", "samples.png"):
        with Image.open(out_dir / name) as im:
            im.verify()
    with Image.open(out_dir / "samples.png") as im:  # 40 images: 8 per row, 64px tiles
        assert im.size == (8 * 66 + 2, 5 * 66 + 2)
    with Image.open(out_dir / "memorisation.png") as im:  # 12 pairs: 3 columns of 4 (generated | training)
        assert im.size == (3 * (2 * 66 + 2) + 2 * 12, 4 * 66 + 2)


def test_evaluate_is_deterministic_and_uses_extractor(tmp_path, no_hub):
    extractor = MeanStd()
    g, d = tiny_models()
    train, test = random_split(60, 3), random_split(24, 4)
    p = {**PARAMS, "memorisation_k": 8}
    fake = generated(g, 32, 0, "cpu")
    a = evaluation.evaluate(fake, d, train, test, p, tmp_path / "a.json", tmp_path / "a", "cpu",
                            extractor=extractor, progress=False, log=lambda m: None)
    b = evaluation.evaluate(fake, d, train, test, p, tmp_path / "b.json", tmp_path / "b", "cpu",
                            extractor=extractor, progress=False, log=lambda m: None)
    assert extractor.calls == 6  # generated, test, train subset; twice
    for k in FID_KEYS:
        assert a[k] is not None and math.isfinite(a[k])
    assert a["fid"] > a["fid_floor"]
    a.pop("wall_s"), b.pop("wall_s")
    assert a == b
    assert (tmp_path / "a" / "samples.png").read_bytes() == (tmp_path / "b" / "samples.png").read_bytes()


def test_memorisation_picture_shows_planted_copy(tmp_path, no_hub):
    """A generator that outputs a training image exactly: distance 0, ratio 0, the pair in the picture."""
    g, d = tiny_models()
    train = random_split(50, 5)
    copy = torch.from_numpy(train[7:8]).float() / 127.5 - 1

    class Copier(torch.nn.Module):
        nz, config = 16, {"image_size": 32, "channels": 1, "nz": 16}

        def forward(self, z):
            return copy.expand(len(z), -1, -1, -1)

    fake = generated(Copier(), 16, 0, "cpu")
    res = evaluation.evaluate(fake, d, train, random_split(20, 6), PARAMS,
                              tmp_path / "e.json", tmp_path / "e", "cpu", extractor=None, progress=False,
                              log=lambda m: None)
    assert res["memorisation_median_distance"] == 0 and res["memorisation_ratio"] == 0
    assert res["memorisation_median_distance_test"] > 0
    top = np.asarray(Image.open(tmp_path / "e" / "memorisation.png"))[2:66]
    assert (top[:, 2:66] == top[:, 68:132]).all()  # generated | nearest training image are the same picture


def test_evaluate_writes_todays_keys_each_explained(tmp_path, no_hub):
    """With Inception features and an encoder every metric runs: the keys of metrics/eval.json are the ones it
    has always had, in order, and each has a line of help (evaluate() checks that the metric that returns a
    key explains it)."""
    g, d = tiny_models()
    encoder = Encoder(32, 1, nz=16, nef=8)
    fake = generated(g, 20, 0, "cpu")
    res = evaluation.evaluate(fake, d, random_split(40, 1), random_split(20, 2), PARAMS, tmp_path / "e.json",
                              tmp_path / "e", "cpu", extractor=MeanStd(), progress=False, log=lambda m: None,
                              generator=g, encoder=encoder)
    assert [k for k in res if k in EVAL_KEYS] == EVAL_KEYS      # in this order, beside any metric added later
    assert all(evaluation.key_help(k) for k in res)


@pytest.fixture
def registry(monkeypatch):
    """metrics.REGISTRY, with what a test registers on it gone after the test."""
    monkeypatch.setattr(metrics.REGISTRY, "_parts", dict(metrics.REGISTRY._parts))
    return metrics.REGISTRY


def test_a_new_metric_module_reaches_eval_json_the_stage_and_the_report(tmp_path, registry):
    g, d = tiny_models()
    train, test = random_split(40, 1), random_split(20, 2)
    fake = generated(g, 20, 0, "cpu")

    def run(name: str) -> dict:
        return evaluation.evaluate(fake, d, train, test, PARAMS, tmp_path / name / "eval.json",
                                   tmp_path / name / "eval", "cpu", extractor=None, progress=False, log=lambda m: None)

    before = run("before")

    @registry.register("test_only_brightness")
    class BrightnessMetric(metrics.Metric):
        help = {"brightness_gap": "mean pixel value, generated minus test images"}
        headline = ("brightness_gap",)
        lower_is_better = None

        def evaluate(self, ctx):
            return {"brightness_gap": float(ctx.fake.mean()) - float(ctx.test_subset(10).mean())}

    after = run("after")
    assert list(after) == list(before)[:-1] + ["brightness_gap", "wall_s"]
    before.pop("wall_s"), after.pop("wall_s"), after.pop("brightness_gap")
    assert after == before  # drawing test images after the built-in metrics changes none of their numbers
    assert evaluation.headline_keys()[-2:] == ["brightness_gap", "wall_s"]
    # the report: its column (a headline key) and its help on the experiment's page
    ev = json.loads((tmp_path / "after" / "eval.json").read_text())
    e = Experiment(id="x", rev="x", kind="experiment", baseline="abc1234", metrics={"eval": ev})
    assert "mean pixel value, generated minus test images" in report_page.experiment(tmp_path, e, [], "t")
    assert ("brightness_gap", None) in report_table.eval_keys()


def test_a_metric_must_explain_its_keys(tmp_path, registry):
    @registry.register("unexplained")
    class Unexplained(metrics.Metric):
        order = 0  # first: the error comes before any other metric runs

        def evaluate(self, ctx):
            return {"mystery": 1.0}

    g, d = tiny_models()
    with pytest.raises(ValueError, match="metric 'unexplained' has no help for mystery"):
        evaluation.evaluate(generated(g, 4, 0, "cpu"), d, random_split(4, 1), random_split(4, 2), PARAMS,
                            tmp_path / "e.json", tmp_path / "e", "cpu", extractor=None, progress=False)


def test_check_compatible_names_the_mismatch():
    g, d = tiny_models()
    with pytest.raises(ValueError, match="trained on 1x32px.*prepared data is 3x32px"):
        evaluation.check_compatible(d, random_split(10, 0, 3), random_split(10, 1, 3), random_split(10, 2, 3))
    with pytest.raises(ValueError, match="test split has 1 images"):
        evaluation.check_compatible(d, random_split(10, 0), random_split(1, 1), random_split(10, 2))
    with pytest.raises(ValueError, match="generated images .*differ"):
        evaluation.check_compatible(d, random_split(10, 0), random_split(10, 1), random_split(10, 2, 3))
    with pytest.raises(ValueError, match="raise num_images"):
        evaluation.check_compatible(d, random_split(10, 0), random_split(10, 1), random_split(1, 2))


def test_read_generated_round_trip(tmp_path):
    imgs = random_split(5, 3)
    for i, img in enumerate(imgs):
        pictures.to_pil(img).save(tmp_path / f"{i:06d}.png")
    assert np.array_equal(evaluation.read_generated(tmp_path, 1), imgs)
    rgb = random_split(3, 4, channels=3)
    (tmp_path / "rgb").mkdir()
    for i, img in enumerate(rgb):
        pictures.to_pil(img).save(tmp_path / "rgb" / f"{i:06d}.png")
    assert np.array_equal(evaluation.read_generated(tmp_path / "rgb", 3), rgb)
    with pytest.raises(ValueError, match="no PNG files"):
        evaluation.read_generated(tmp_path / "rgb" / "nothing", 3)


# ---- the evaluate stage script ----

def stage_dir(tmp_path: Path, with_models: bool = True) -> Path:
    (tmp_path / "data" / "prepared").mkdir(parents=True)
    np.save(tmp_path / "data" / "prepared" / "train.npy", random_split(50, 1))
    np.save(tmp_path / "data" / "prepared" / "test.npy", random_split(20, 2))
    params = {**PARAMS, "memorisation_k": 8, "fid_weights": str(tmp_path / "absent.pth")}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    if with_models:
        g, d = tiny_models()
        save(d, tmp_path / "models" / "discriminator.pt")
        out = tmp_path / "data" / "generated" / "images"
        out.mkdir(parents=True)
        for i, img in enumerate(generated(g, 20, 0, "cpu")):
            pictures.to_pil(img).save(out / f"{i:06d}.png")
    return tmp_path


def run_stage(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "stages" / "evaluate.py")], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_stage_writes_metrics(tmp_path):
    r = run_stage(stage_dir(tmp_path))
    assert r.returncode == 0, r.stderr
    assert set(json.loads((tmp_path / "metrics" / "eval.json").read_text())) == EXPECTED_KEYS
    assert sorted(p.name for p in (tmp_path / "metrics" / "eval").iterdir()) == [
        "confusion_matrix.png", "memorisation.png", "samples.png"]
    lines = [ln for ln in r.stdout.splitlines() if "FID/KID skipped" in ln]
    assert len(lines) == 1 and "absent.pth" in lines[0]


def test_stage_missing_model_is_one_line_error(tmp_path):
    r = run_stage(stage_dir(tmp_path, with_models=False))
    assert r.returncode == 2
    assert "models/discriminator.pt not found" in r.stderr and "Traceback" not in r.stderr
