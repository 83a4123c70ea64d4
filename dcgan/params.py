"""The params.yaml schema: every key, its type, its allowed values, and one line of help.

params.yaml is flat on purpose (nanoGPT-style): `dvc exp run -S epochs=5000` only works for
top-level keys that already exist in the file. Each stage calls `load(stage)`, which checks
the whole file for unknown keys (a typo like `epoch:` is reported with the closest valid key)
and then validates the keys that stage reads, before any work is done.
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from .errors import UserError, brief

PARAMS_FILE = Path("params.yaml")


class ParamError(UserError, ValueError):
    """A value in params.yaml that a stage cannot use; the message names the key."""


@dataclass(frozen=True)
class Param:
    name: str
    kind: type | tuple[type, ...]
    help: str
    check: Callable[[Any], str | None] | None = None  # returns a description of what is allowed when invalid


def _power_of_two(lo: int, hi: int):
    def check(v):
        if not (lo <= v <= hi and v & (v - 1) == 0):
            return f"must be a power of two from {lo} to {hi}"
    return check


def _between(lo, hi, lo_open=False, hi_open=False):
    def check(v):
        ok_lo = v > lo if lo_open else v >= lo
        ok_hi = v < hi if hi_open else v <= hi
        if not (ok_lo and ok_hi):
            left = "(" if lo_open else "["
            right = ")" if hi_open else "]"
            return f"must be in {left}{lo}, {hi}{right}"
    return check


def _at_least(lo):
    def check(v):
        if v < lo:
            return f"must be >= {lo}"
    return check


def _one_of(*choices):
    def check(v):
        if v not in choices:
            return "must be one of " + ", ".join(repr(c) for c in choices)
    return check


def _colour(v):
    from PIL import ImageColor

    try:
        ImageColor.getrgb(v)
    except ValueError:
        return "must be a colour name or hex code such as 'white', 'black' or '#ff8800'"


DIFFAUGMENT_POLICIES = ("color", "translation", "cutout")  # augment.POLICIES; a test keeps the two equal


def _policy(v):
    for name in (s.strip() for s in v.split(",")):
        if name and name != "none" and name not in DIFFAUGMENT_POLICIES:
            return f"has an unknown augmentation '{name}' (choose from {', '.join(DIFFAUGMENT_POLICIES)}, comma-separated)"


def _nonempty(v):
    if not v.strip():
        return "must not be empty"


SCHEMA: dict[str, Param] = {
    p.name: p
    for p in [
        # data (prepare)
        Param("source", str, "folder or .zip of images to train on", _nonempty),
        Param("image_size", int, "side of the square training images (power of two, 32-256)", _power_of_two(32, 256)),
        Param("channels", int, "1 (grayscale) or 3 (RGB)", _one_of(1, 3)),
        Param("resize", str, "crop: center-crop then resize; pad: fit inside and pad with background", _one_of("crop", "pad")),
        Param("background", str, "colour that transparency is composited over and padding is filled with", _colour),
        Param("val_fraction", float, "share of images held out for validation (overfitting signal)", _between(0, 0.5)),
        Param("test_fraction", float, "share of images held out for evaluation", _between(0, 0.5)),
        Param("max_skipped_fraction", float, "fail when more than this share of files is unusable", _between(0, 1)),
        Param("max_image_pixels", int, "larger images are rejected from their header (decompression bombs)", _at_least(1)),
        Param("max_file_bytes", int, "larger files or zip members are skipped before they are read", _at_least(1)),
        # model
        Param("nz", int, "length of the latent vector z", _between(1, 4096)),
        Param("ngf", int, "generator width (channels of its last hidden layer)", _between(1, 1024)),
        Param("ndf", int, "discriminator width (channels of its first layer)", _between(1, 1024)),
        # training
        Param("epochs", int, "total epochs; raising it continues a finished run", _at_least(1)),
        Param("batch_size", int, "images per training step", _between(1, 65536)),
        Param("lr_g", float, "Adam learning rate of the generator", _between(0, 1, lo_open=True)),
        Param("lr_d", float, "Adam learning rate of the discriminator", _between(0, 1, lo_open=True)),
        Param("beta1", float, "Adam beta1 (0.5 in the DCGAN paper)", _between(0, 1, hi_open=True)),
        Param("beta2", float, "Adam beta2", _between(0, 1, hi_open=True)),
        Param("seed", int, "seed of weights, shuffling and noise", _at_least(0)),
        Param("device", str, "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps",
              lambda v: None if v in ("auto", "cpu", "cuda", "mps") or (v.startswith("cuda:") and v[5:].isdigit())
              else "must be auto, cpu, cuda, cuda:N or mps"),
        Param("precision", str, "auto (the fastest measured for the device), fp32, or bf16 autocast",
              _one_of("auto", "fp32", "bf16")),
        Param("channels_last", (bool, str), "NHWC memory layout: auto (on for CPU and CUDA), true or false",
              lambda v: None if v in (True, False, "auto") else "must be auto, true or false"),
        Param("compile", (bool, str), "torch.compile G and D: auto (the fastest measured for the device), "
              "true or false; a compiler failure falls back to eager",
              lambda v: None if v in (True, False, "auto") else "must be auto, true or false"),
        Param("nproc", int, "training processes on this machine (one per GPU; >1 runs torchrun with DDP)",
              _between(1, 1024)),
        Param("nnodes", int, "machines taking part (>1: start the same run on each, see README)", _between(1, 4096)),
        Param("rdzv_endpoint", str, "host:port of the first machine when nnodes > 1 ('' otherwise)"),
        Param("sample_every", (int, str), "log a grid of samples every N epochs, or 'auto' (about 100 per run, "
              "denser early)", lambda v: None if v == "auto" or (isinstance(v, int) and v >= 1)
              else "must be 'auto' or an int >= 1"),
        Param("checkpoint_every", int, "write the resumable checkpoint every N epochs", _at_least(1)),
        # quality options (train)
        Param("diffaugment", str, "DiffAugment policy: comma-separated color, translation, cutout; '' = off",
              _policy),
        Param("loss", str, "bce (non-saturating, DCGAN) or hinge", _one_of("bce", "hinge")),
        Param("spectral_norm", bool, "spectral normalisation of D's convs (and no BatchNorm in D)"),
        Param("r1_gamma", float, "weight of the R1 gradient penalty on real images; 0 = off", _between(0, 1e6)),
        Param("r1_every", int, "compute R1 every N steps (weight scaled by N, as StyleGAN2)", _between(1, 1_000_000)),
        Param("ema_halflife", int, "half-life in images of the EMA of G's weights; 0 = off", _between(0, 10**12)),
        Param("ema_rampup", float, "EMA half-life at most this x images seen (0 = no ramp-up)", _between(0, 1)),
        Param("eval_every", int, "score the generator (SWD, FID/KID) every N epochs and keep the best; 0 = off",
              _at_least(0)),
        Param("generator", str, "generator that generate/evaluate use: best (lowest SWD in training) or last",
              _one_of("best", "last")),
        # generate
        Param("num_images", int, "images the generate stage writes (and evaluate scores)", _between(1, 10_000_000)),
        Param("generate_seed", int, "seed of the generate stage's noise", _at_least(0)),
        Param("invert_steps", int, "optimisation steps when projecting images to latents, from the encoder's guess "
              "(0 = the encoder alone)", _between(0, 100_000)),
        # encoder
        Param("encoder_steps", int, "training steps of the encoder (image -> latent) on the generator's samples",
              _between(1, 10_000_000)),
        Param("encoder_lr", float, "Adam learning rate of the encoder", _between(0, 1, lo_open=True)),
        Param("encoder_pixel_weight", float, "weight of the pixel loss ||G(E(G(z))) - G(z)||^2 beside the latent loss",
              _between(0, 1e6)),
        # evaluate
        Param("fid_weights", str, "path to pt_inception-2015-12-05-6726825d.pth ('' = torch hub cache)"),
        Param("memorisation_k", int, "generated images searched for their nearest training image", _between(1, 100_000)),
    ]
}

STAGE_KEYS: dict[str, list[str]] = {
    "prepare": ["source", "image_size", "channels", "resize", "background", "val_fraction", "test_fraction",
                "max_skipped_fraction", "max_image_pixels", "max_file_bytes"],
    "train": ["nz", "ngf", "ndf", "epochs", "batch_size", "lr_g", "lr_d", "beta1", "beta2", "seed", "device",
              "precision", "channels_last", "compile", "nproc", "nnodes", "rdzv_endpoint", "sample_every",
              "checkpoint_every", "diffaugment", "loss", "spectral_norm", "r1_gamma", "r1_every", "ema_halflife",
              "ema_rampup", "eval_every", "fid_weights"],
    "encoder": ["encoder_steps", "encoder_lr", "encoder_pixel_weight", "seed", "device", "generator"],
    "generate": ["num_images", "generate_seed", "invert_steps", "device", "generator"],
    "export": ["generator"],
    "evaluate": ["fid_weights", "memorisation_k", "device", "seed", "invert_steps", "generator"],
}


def read(path: Path | str = PARAMS_FILE) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ParamError(f"{path} not found: run from the repository root")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ParamError(f"{path} is not valid YAML{where}: {getattr(e, 'problem', None) or brief(e)}") from None
    except UnicodeDecodeError as e:
        raise ParamError(f"{path} is not UTF-8 text (byte {e.start}): save it as UTF-8") from None
    if not isinstance(data, dict):
        raise ParamError(f"{path} must be a mapping of key: value")
    return data


def validate(data: dict[str, Any], keys: list[str], path: Path | str = PARAMS_FILE) -> dict[str, Any]:
    """Check the whole file for unknown keys, then `keys` for presence, type and range."""
    for key in data:
        if key not in SCHEMA:
            close = difflib.get_close_matches(str(key), SCHEMA, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(SCHEMA)}"
            raise ParamError(f"{path}: unknown key '{key}'{hint}")
    out = {}
    for key in keys:
        p = SCHEMA[key]
        if key not in data:
            raise ParamError(f"{path}: missing key '{key}' ({p.help})")
        v = data[key]
        if p.kind is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        bool_ok = p.kind is bool or (isinstance(p.kind, tuple) and bool in p.kind)
        if (isinstance(v, bool) and not bool_ok) or not isinstance(v, p.kind) or \
                (isinstance(v, float) and not math.isfinite(v)):
            kind = p.kind.__name__ if isinstance(p.kind, type) else "/".join(k.__name__ for k in p.kind)
            raise ParamError(f"{path}: '{key}' must be a{'n' if kind[0] in 'aeiou' else ''} {kind} ({p.help}); got {v!r}")
        if p.check is not None and (why := p.check(v)):
            raise ParamError(f"{path}: '{key}' {why}; got {v!r}")
        out[key] = v
    if "val_fraction" in out and "test_fraction" in out and out["val_fraction"] + out["test_fraction"] >= 1:
        raise ParamError(f"{path}: 'val_fraction' + 'test_fraction' must be below 1")
    return out


def load(stage: str, path: Path | str = PARAMS_FILE) -> dict[str, Any]:
    return validate(read(path), STAGE_KEYS[stage], path)
