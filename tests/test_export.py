"""Exported models: TorchScript and ONNX give the eager model's outputs; the loader tells what a file is."""
import subprocess
import sys
import warnings

import pytest
import torch

from conftest import ROOT
from dcgan import export
from dcgan.archs.dcgan import Encoder, Generator, init_weights
from dcgan.model import save

TOLERANCE = 1e-4   # max abs difference, images in [-1, 1] and latents (float32 kernels differ in rounding only)


def trained_like(m):
    torch.manual_seed(0)
    m.apply(init_weights).train()
    with torch.no_grad():                   # BatchNorm statistics that are not the identity
        for _ in range(3):
            m(export.example_input(m, 16))
    return m.eval()


@pytest.mark.parametrize("cls,kwargs", [(Generator, {"nz": 16, "ngf": 8}), (Encoder, {"nz": 16, "nef": 8})])
@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
@pytest.mark.parametrize("size", [32, 120, 17])    # 120 and 17 are cropped by G and padded by the encoder
def test_exported_model_matches_eager(tmp_path, cls, kwargs, fmt, size):
    m = trained_like(cls(size, 3, **kwargs))
    path = tmp_path / f"m{export.FORMATS[fmt]}"
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # nothing for the export stage's log to show
        (export.export_torchscript if fmt == "torchscript" else export.export_onnx)(m, path)
    run, kind, cfg = export.load_runnable(path)
    assert kind == ("generator" if cls is Generator else "encoder")
    assert (cfg["nz"], cfg["channels"], cfg["image_size"]) == (16, 3, size)
    x = export.example_input(m, 7)          # another batch size than the export's example: dynamic batch
    with torch.no_grad():
        want, got = m(x), run(x)
    assert got.shape == want.shape
    assert (got - want).abs().max().item() < TOLERANCE
    if fmt == "onnx":   # the server's model threads run onnxruntime on their share of the cores
        one, _, _ = export.load_runnable(path, threads=1)
        assert one.session.get_session_options().intra_op_num_threads == 1
        assert (one(x) - want).abs().max().item() < TOLERANCE


def test_export_stage_writes_four_files_and_refuses_a_swapped_model(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    save(trained_like(Generator(32, 1, 16, 8)), models / "generator_best.pt")
    save(trained_like(Encoder(32, 1, 16, 8)), models / "encoder.pt")
    cmd = [sys.executable, str(ROOT / "stages/export.py"), "--generator", str(models / "generator_best.pt"),
           "--encoder", str(models / "encoder.pt"), "--out", str(models / "export"), "--params", str(ROOT / "params.yaml")]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (models / "export").iterdir()) == [
        "encoder.onnx", "encoder.ts", "generator.onnx", "generator.ts"]
    cmd[3] = str(models / "encoder.pt")     # an encoder where the generator should be
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not a generator" in r.stderr


def test_loader_names_a_file_it_cannot_run(tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(ValueError, match="junk.onnx' is not an ONNX model"):
        export.load_runnable(tmp_path / "junk.onnx")
    (tmp_path / "junk.ts").write_bytes(b"not torchscript")
    with pytest.raises(ValueError, match="junk.ts' is not a TorchScript model"):
        export.load_runnable(tmp_path / "junk.ts")
    (tmp_path / "model.h5").write_bytes(b"")
    with pytest.raises(ValueError, match="expected a .pt, .ts"):
        export.load_runnable(tmp_path / "model.h5")
