"""Model files: networks of any registered architecture (dcgan/archs/) saved and loaded by kind and config."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from . import archs
from .errors import brief
from .files import atomic_torch_save

# The train stage's two generators; the `generator` param picks one for encoder, export, generate, evaluate
GENERATOR_FILES = {"best": Path("models/generator_best.pt"), "last": Path("models/generator.pt")}


def encoder_misfit(encoder_config: dict, generator_config: dict) -> str | None:
    """None when an encoder fits a generator (same nz, image size and channels); else both shapes, worded
    to follow the encoder's name: "(for nz 9, 32 px, 1 channels) does not fit the generator (nz 8, ...)"."""
    if all(encoder_config[k] == generator_config[k] for k in ("nz", "image_size", "channels")):
        return None
    shape = "nz {nz}, {image_size} px, {channels} channels"
    return f"(for {shape.format(**encoder_config)}) does not fit the generator ({shape.format(**generator_config)})"


def save(model: nn.Module, path: Path):
    """kind, config, state_dict (and the architecture unless it is the default), loadable with
    torch.load(weights_only=True)."""
    arch, kind = archs.identify(model)
    # NCHW strides on disk whatever the layout in training (.contiguous() keeps channels_last strides of a
    # tensor with one channel), so the same weights always give the same bytes
    state = {k: v.detach().cpu().clone(memory_format=torch.contiguous_format)
             for k, v in model.state_dict().items()}
    blob = {"kind": kind, "config": dict(model.config), "state_dict": state}
    if arch != archs.DEFAULT:
        blob["arch"] = arch
    atomic_torch_save(blob, path)


def load(path: Path | str, device: str | torch.device = "cpu", kind: str | None = None) -> nn.Module:
    """Rebuild a network saved by `save`, in eval mode. kind ('generator', 'discriminator', 'encoder'):
    ValueError naming the file when it holds another kind."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file '{path}' not found (run `dvc repro train` or `dvc pull train`)")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob["kind"] not in archs.KINDS:
            raise ValueError(f"unknown kind {blob['kind']!r}")
        cls = getattr(archs.REGISTRY.get(blob.get("arch", archs.DEFAULT)), blob["kind"])
        model = cls(**blob["config"])
        model.load_state_dict(blob["state_dict"])
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"'{path}' is not a model saved by this project ({brief(e)})") from e
    if kind is not None and blob["kind"] != kind:
        raise ValueError(f"'{path}' holds a {blob['kind']}, not a{'n' if kind[0] in 'aeiou' else ''} {kind}")
    return model.to(device).eval()
