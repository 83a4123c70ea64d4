"""Model files: networks of any registered architecture (dcgan/archs/) saved and loaded by kind and config."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from . import archs
from .errors import brief
from .files import atomic_torch_save, atomic_write

# The train stage's two generators; the `generator` param picks one, which the publish stage copies to
# PUBLISHED_GENERATOR: the registry's `generator` artifact, and the one generator that encoder, export,
# generate, evaluate and the server read (so a change of the param retrains nothing, and every product of
# the pipeline comes from the weights the registry holds).
GENERATOR_FILES = {"best": Path("models/generator_best.pt"), "last": Path("models/generator.pt")}
PUBLISHED_GENERATOR = Path("models/published/generator.pt")
_MADE_BY = {PUBLISHED_GENERATOR: "publish", Path("models/encoder.pt"): "encoder"}   # else train


def publish(source: Path, dest: Path = PUBLISHED_GENERATOR) -> Path:
    """Copy a generator file byte for byte (the registry then holds exactly the file training wrote),
    atomically; ValueError naming the file when it is not a generator saved by this project."""
    load(source, kind="generator")
    data = Path(source).read_bytes()
    return atomic_write(dest, lambda f: f.write(data), fsync=True)


def default_generator(params_file: Path | str | None = None) -> Path:
    """The generator to use when none is named (the CLI, the server): the published one; where the publish
    stage has not run, the file that params_file's `generator` picks (the default when there is no file),
    or generator.pt when that one is missing (trained before the best generator was kept)."""
    if PUBLISHED_GENERATOR.is_file():
        return PUBLISHED_GENERATOR
    from . import params

    params_file = Path(params_file or params.PARAMS_FILE)
    choice = params.SCHEMA["generator"].default
    if params_file.is_file():
        choice = params.validate(params.read(params_file), ["generator"], params_file)["generator"]
    path = GENERATOR_FILES[choice]
    return GENERATOR_FILES["last"] if not path.is_file() and GENERATOR_FILES["last"].is_file() else path


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
        stage = _MADE_BY.get(path, "train")
        raise FileNotFoundError(f"model file '{path}' not found (run `dvc repro {stage}` or `dvc pull {stage}`)")
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
