"""Exported models for deployment: TorchScript and ONNX, and one loader that runs any of them.

The generator maps z (N, nz) to images (N, C, H, W) in [-1, 1]; the encoder maps such images to z. Both
are exported in eval mode (BatchNorm uses its running statistics), with a dynamic batch dimension, in
float32 and the default memory layout, so any runtime can take them. Each file is written under a temporary
name and renamed into place: a run killed half-way leaves the previous file, never a truncated one.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from . import archs
from .errors import brief
from .onnx_net import OnnxNet
from .files import atomic_path

FORMATS = {"torchscript": ".ts", "onnx": ".onnx"}
ONNX_OPSET = 17


def kind_of(model: nn.Module) -> str:
    """'generator' or 'encoder' (what export handles), for a network of any registered architecture."""
    return archs.identify(model)[1]


def example_input(model: nn.Module, batch: int = 2) -> torch.Tensor:
    c = model.config
    if kind_of(model) == "generator":
        return torch.randn(batch, c["nz"])
    return torch.rand(batch, c["channels"], c["image_size"], c["image_size"]) * 2 - 1


def io_names(model: nn.Module) -> tuple[str, str]:
    return ("z", "image") if kind_of(model) == "generator" else ("image", "z")


def export_torchscript(model: nn.Module, path: Path) -> Path:
    """Traced (the networks have no data-dependent control flow); kind and config ride along as an extra file."""
    model = model.cpu().eval()
    kind = kind_of(model)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream, still the portable format
        traced = torch.jit.trace(model, example_input(model))
        with atomic_path(path, fsync=True) as tmp:
            traced.save(str(tmp), _extra_files={"dcgan.json": json.dumps({"kind": kind, "config": model.config})})
    return path


def export_onnx(model: nn.Module, path: Path) -> Path:
    model = model.cpu().eval()
    src, dst = io_names(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter announces its own deprecation
        with atomic_path(path, fsync=True) as tmp:
            torch.onnx.export(model, (example_input(model),), str(tmp), input_names=[src], output_names=[dst],
                              dynamic_axes={src: {0: "batch"}, dst: {0: "batch"}}, opset_version=ONNX_OPSET,
                              dynamo=False)
    return path


def export_all(model: nn.Module, out_dir: Path, name: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    return [export_torchscript(model, out_dir / f"{name}{FORMATS['torchscript']}"),
            export_onnx(model, out_dir / f"{name}{FORMATS['onnx']}")]


class OnnxModel:
    """An ONNX file behind the interface of a torch module: float tensor in, float tensor out (CPU). The
    file is run by OnnxNet (numpy in and out), as the serving image runs it without torch."""

    def __init__(self, path: Path, threads: int | None = None):
        self.net = OnnxNet(path, threads)
        self.session = self.net.session

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.net(x.detach().float().cpu().numpy()))

    def eval(self):
        return self


def load_runnable(path: Path, device="cpu", threads: int | None = None):
    """A .pt saved by this project, a TorchScript .ts or an .onnx file -> (callable model, kind, config).
    kind is 'generator' or 'encoder'; config holds nz, image_size and channels (read from the file's
    shapes for exported files). threads: onnxruntime's intra-op threads (torch's are set per thread)."""
    from . import model as models

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file '{path}' not found")
    suffix = path.suffix.lower()
    if suffix == ".pt":
        m = models.load(path, device)
        kind = kind_of(m)
        return m, kind, dict(m.config)
    if suffix == ".onnx":
        m = OnnxModel(path, threads)   # ValueError naming the file when it is not ONNX
        return m, m.net.kind, dict(m.net.config)
    if suffix == ".ts":
        extra = {"dcgan.json": ""}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                m = torch.jit.load(str(path), map_location=device, _extra_files=extra).eval()
            meta = json.loads(extra["dcgan.json"])
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"'{path}' is not a TorchScript model exported by this project ({brief(e)})") from None
        return m, meta["kind"], meta["config"]
    raise ValueError(f"'{path}': expected a .pt, .ts (TorchScript) or .onnx file")
