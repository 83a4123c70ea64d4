"""Every output file is written atomically: a writer killed half-way (here: one that writes some bytes and
then raises) leaves the previous file exactly as it was and no temporary file behind. Exported models,
the generate stage's pictures and latents, and the dvclive series a resume rewrites."""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from dcgan import export, generation, live, pictures, sampling
from dcgan.archs.dcgan import Encoder, Generator, init_weights

PREVIOUS = b"the previous, complete file"


class Killed(Exception):
    pass


def previous(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(PREVIOUS)
    return path


def assert_untouched(path, also=()):
    """The previous bytes, and nothing else in the folder (no temporary file, no half of a new one)."""
    assert path.read_bytes() == PREVIOUS
    assert sorted(os.listdir(path.parent)) == sorted([path.name, *also])


def _half_to(f, data: bytes = b"half of a new file"):
    """Write `data` to a file name or a file object, as a writer does before it is killed."""
    if isinstance(f, (str, os.PathLike)):
        with open(f, "wb") as out:
            out.write(data)
    else:
        f.write(data)
        f.flush()


@pytest.fixture()
def G():
    torch.manual_seed(0)
    return Generator(32, 1, 16, 8).apply(init_weights).eval()


# ---------------------------------------------------------------- export: .ts and .onnx

@pytest.mark.parametrize("cls,kwargs", [(Generator, {"nz": 16, "ngf": 8}), (Encoder, {"nz": 16, "nef": 8})])
def test_a_killed_onnx_export_keeps_the_previous_file(tmp_path, monkeypatch, cls, kwargs):
    out = previous(tmp_path / "export" / "m.onnx")

    def half(model, args, f, *a, **kw):
        _half_to(f)
        raise Killed

    monkeypatch.setattr(torch.onnx, "export", half)
    with pytest.raises(Killed):
        export.export_onnx(cls(32, 1, **kwargs).eval(), out)
    assert_untouched(out)


def test_a_killed_torchscript_export_keeps_the_previous_file(tmp_path, monkeypatch, G):
    out = previous(tmp_path / "export" / "generator.ts")

    def half(self, f, **kw):
        _half_to(f)
        raise Killed

    monkeypatch.setattr(torch.jit.ScriptModule, "save", half)
    with pytest.raises(Killed):
        export.export_torchscript(G, out)
    assert_untouched(out)


def test_export_all_replaces_both_files_whole(tmp_path, G):
    for name in ("generator.ts", "generator.onnx"):
        previous(tmp_path / name)
    export.export_all(G, tmp_path, "generator")
    assert sorted(os.listdir(tmp_path)) == ["generator.onnx", "generator.ts"]
    for name in ("generator.ts", "generator.onnx"):
        run, kind, _ = export.load_runnable(tmp_path / name)
        assert kind == "generator"


# ---------------------------------------------------------------- generate: images, latents

def _half_png(monkeypatch, after: int = 0):
    """PIL's save writes some bytes and raises, on its call number `after` (earlier calls save normally)."""
    real, calls = Image.Image.save, []

    def save(self, fp, format=None, **kw):
        calls.append(fp)
        if len(calls) <= after:
            return real(self, fp, format, **kw)
        _half_to(fp, b"\x89PNG\r\n\x1a\n half")
        raise Killed

    monkeypatch.setattr(Image.Image, "save", save)


def test_a_killed_sample_write_keeps_the_previous_image(tmp_path, monkeypatch, G):
    out = previous(tmp_path / "images" / "000001.png")
    _half_png(monkeypatch, after=1)            # 000000.png is written, 000001.png is killed half-way
    with pytest.raises(Killed):
        generation.write_samples(G, tmp_path / "images", 3, seed=0, device="cpu", progress=False)
    assert_untouched(out, also=["000000.png"])
    with Image.open(tmp_path / "images" / "000000.png") as im:    # the one before is whole
        im.load()


def test_a_killed_latents_to_images_keeps_the_previous_image(tmp_path, monkeypatch, G):
    out = previous(tmp_path / "out" / "a.png")
    _half_png(monkeypatch)
    with pytest.raises(Killed):
        generation.latents_to_images(G, [("a", [0.0] * 16)], tmp_path / "out", "cpu")
    assert_untouched(out)


def test_a_killed_latents_jsonl_keeps_the_previous_file(tmp_path, monkeypatch):
    out = previous(tmp_path / "g" / "inversion.jsonl")
    real, calls = json.dumps, []

    def dumps(obj, *a, **kw):                 # the second line fails: the first is written already
        calls.append(obj)
        if len(calls) == 2:
            raise Killed
        return real(obj, *a, **kw)

    monkeypatch.setattr(json, "dumps", dumps)
    with pytest.raises(Killed):
        generation.write_latents_jsonl(out, ["a", "b"], np.zeros((2, 4), np.float32), np.zeros(2))
    assert_untouched(out)


def test_generated_files_are_the_same_bytes_as_before(tmp_path, G):
    """Atomic writing changes nothing in the files: PNG as PIL writes it to a path, JSON Lines as before."""
    generation.write_samples(G, tmp_path / "images", 2, seed=0, device="cpu", progress=False)
    img = sampling.sample_images(G, torch.randn(256, 16, generator=torch.Generator().manual_seed(0))[:2], "cpu")
    pictures.to_pil(img[0]).save(tmp_path / "direct.png")
    assert (tmp_path / "images" / "000000.png").read_bytes() == (tmp_path / "direct.png").read_bytes()
    generation.write_latents_jsonl(tmp_path / "z.jsonl", ["k"], np.array([[0.5, -1.25]]), np.array([0.125]))
    assert (tmp_path / "z.jsonl").read_text() == '{"key": "k", "z": [0.5, -1.25], "reconstruction_mse": 0.125}\n'


# ---------------------------------------------------------------- the dvclive folder on resume

def _live_dir(tmp_path):
    m = tmp_path / "plots" / "metrics"
    m.mkdir(parents=True)
    (m / "loss.tsv").write_text("step\tloss\n1\t0.5\n2\t0.4\n3\t0.3\n")
    (m / "swd.tsv").write_text("step\tswd\n2\t9.5\n3\t8.25\n")
    return m


def test_a_killed_series_rewrite_keeps_the_previous_series(tmp_path, monkeypatch):
    m = _live_dir(tmp_path)
    before = {p.name: p.read_bytes() for p in m.iterdir()}
    real = csv.writer

    def writer(f, *a, **kw):
        w = real(f, *a, **kw)

        class Half:
            def writerows(self, rows):
                w.writerow(rows[0])            # the header is written, then the process dies
                raise Killed
        return Half()

    monkeypatch.setattr(csv, "writer", writer)
    with pytest.raises(Killed):
        live.truncate(tmp_path, 2)
    assert {p.name: p.read_bytes() for p in m.iterdir()} == before   # whole, and no temporary file


def test_resume_after_a_kill_that_cut_the_summary_short(tmp_path, monkeypatch):
    """dvclive rewrites metrics.json in place each epoch; a kill then leaves half a JSON file, which dvclive's
    resume cannot read. The resume rebuilds it from the series as of the checkpoint's step."""
    monkeypatch.chdir(tmp_path)                # no DVC repository around the live folder
    _live_dir(tmp_path)
    (tmp_path / "metrics.json").write_text('{\n    "loss": 0.3,\n    "step": 3,\n    "sw')
    run = live.open_live(tmp_path, 2)
    assert run.summary == {"loss": 0.4, "swd": 9.5, "step": 2}
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"loss": 0.4, "swd": 9.5, "step": 2}
    assert (tmp_path / "plots/metrics/loss.tsv").read_text() == "step\tloss\n1\t0.5\n2\t0.4\n"
    run.step = 3
    run.log_metric("loss", 0.35)
    run.make_summary()
    assert json.loads((tmp_path / "metrics.json").read_text())["loss"] == 0.35


def test_resume_keeps_the_summary_order_and_drops_values_logged_after_the_checkpoint(tmp_path):
    _live_dir(tmp_path)
    (tmp_path / "metrics.json").write_text(json.dumps({"swd": 8.25, "loss": 0.3, "step": 3, "note": "kept"}))
    live.truncate(tmp_path, 1)
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert list(summary) == ["loss", "step", "note"] and summary["loss"] == 0.5 and summary["step"] == 1
