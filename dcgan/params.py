"""Every param of the pipeline, declared once: type, allowed values, default, help, the stages that read it,
and whether it changes the trained weights.

Everything else derives from the declaration below: `STAGE_KEYS` (the stages' keys), `WEIGHT_KEYS` (the
checkpoint fingerprint), the allowed values of the params that name registered parts (`loss`, `diffaugment`,
`arch`), and through dcgan/declared.py params.yaml, dvc.yaml's `params:` lists and the parameter reference
docs/params.md (`python -m dcgan.declared --write` rewrites them; a test fails when they differ).

params.yaml is flat on purpose (nanoGPT-style): `dvc exp run -S epochs=5000` only works for top-level keys
that already exist in the file. Each stage calls `load(stage)`, which checks the whole file for unknown keys
(a typo like `epoch:` is reported with the closest valid key) and then validates the keys that stage reads,
before any work is done.
"""
from __future__ import annotations

import difflib
import importlib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from .errors import UserError, brief

PARAMS_FILE = Path("params.yaml")
FLOAT_TEXT = re.compile(r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$")
STAGES = ("fetch", "prepare", "train", "publish", "encoder", "export", "generate", "evaluate")


class ParamError(UserError, ValueError):
    """A value in params.yaml that a stage cannot use; the message names the key."""


@dataclass(frozen=True)
class Param:
    name: str
    kind: type | tuple[type, ...]
    default: Any
    help: str
    stages: tuple[str, ...]          # the stages that read it (dvc.yaml's `params:` lists)
    changes_weights: bool            # True: a change retrains (train: part of the checkpoint fingerprint)
    check: Callable[[Any], str | None] | None = None  # returns what is allowed, when the value is not
    section: str = ""


# ---- checks: each returns None when the value is allowed, else what is allowed ----

def allowed(description: str):
    """Label a check with what it allows, for the parameter reference."""
    def label(check):
        check.allowed = description
        return check
    return label


def between(lo, hi, lo_open=False, hi_open=False):
    interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"

    @allowed(interval)
    def check(v):
        ok_lo = v > lo if lo_open else v >= lo
        ok_hi = v < hi if hi_open else v <= hi
        if not (ok_lo and ok_hi):
            return f"must be in {interval}"
    return check


def one_of(*choices):
    @allowed(", ".join(f"`{c}`" for c in choices))
    def check(v):
        if v not in choices:
            return "must be one of " + ", ".join(repr(c) for c in choices)
    return check


@allowed("`auto`, `true`, `false`")
def auto_or_bool(v):
    if v not in (True, False, "auto"):
        return "must be auto, true or false"


def registered(family: str, comma_separated: bool = False):
    """A name (or comma-separated names; '' and 'none' = none) from the registry of dcgan.<family>. The
    registry is imported only when the value is checked, by a stage that uses the parts anyway."""
    def check(v):
        registry = importlib.import_module(f"dcgan.{family}").REGISTRY
        wanted = [s.strip() for s in v.split(",")] if comma_separated else [v]
        for name in wanted:
            if comma_separated and name in ("", "none"):
                continue
            if name not in registry:
                return (f"has an unknown {registry.family} '{name}' (choose from {', '.join(registry.names())}"
                        + (", comma-separated)" if comma_separated else ")"))
    check.registry = family
    return check


@allowed("a colour name or `#rrggbb`")
def colour(v):
    from PIL import ImageColor

    try:
        ImageColor.getrgb(v)
    except ValueError:
        return "must be a colour name or hex code such as 'white', 'black' or '#ff8800'"


@allowed("a non-empty path")
def nonempty(v):
    if not v.strip():
        return "must not be empty"


@allowed("a folder or .zip path, or `torchvision:<Name>` (dcgan/torchvision_source.py)")
def source_value(v):
    # imported by name, as registered(): only fetch and prepare check a source, and they import it anyway
    named = importlib.import_module("dcgan.torchvision_source")
    return nonempty(v) or (named.unknown(v) if v.startswith(named.PREFIX) else None)


@allowed("`auto`, `cpu`, `cuda`, `cuda:N`, `mps`")
def device_name(v):
    if not (v in ("auto", "cpu", "cuda", "mps") or (v.startswith("cuda:") and v[5:].isdigit())):
        return "must be auto, cpu, cuda, cuda:N or mps"


# Upper bounds of the integer params: what torch and numpy accept (a seed goes to np.random.RandomState, which takes
# < 2**32, and to torch generators as seed * 1_000_003 + epoch, which must stay below 2**63), and counts no run
# reaches. tests/test_params.py checks that every int param has one.
MAX_SEED = 2**32 - 1
MAX_COUNT = 10**9


@allowed(f"`auto` or an int from 1 to {MAX_COUNT}")
def auto_or_positive_int(v):
    if not (v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_COUNT)):
        return f"must be 'auto' or an int from 1 to {MAX_COUNT}"


# ---- the declaration ----
# (name, type, default, help, stages, changes_weights, check), in sections as params.yaml shows them

_SECTIONS: list[tuple[str, list[tuple]]] = [
    ("prepare: images -> data/prepared/{train,val,test}.npy", [
        ("source", str, "data/demo", "folder (searched recursively) or .zip of images to train on, or "
         "torchvision:<Name> (FashionMNIST, MNIST, KMNIST, CIFAR10, CIFAR100, SVHN: every split); data/demo = the "
         "built-in digits", ("fetch", "prepare"), True, source_value),
        ("torchvision_root", str, "data/torchvision", "folder of the torchvision datasets that source names, in "
         "torchvision's own layout: downloaded there once, read offline after", ("fetch", "prepare"), False,
         nonempty),
        ("image_size", int, 32, "side of the square training images in pixels, 16-512; any size, e.g. 120 "
         "for 120x120 sprites", ("prepare",), True, between(16, 512)),
        ("channels", int, 1, "1 (grayscale) or 3 (RGB)", ("prepare",), True, one_of(1, 3)),
        ("resize", str, "crop", "crop: center-crop then resize; pad: fit inside and pad with background; random: "
         "a random square of crop_fraction of the short side (seeded by seed and the file's content)",
         ("prepare",), True, one_of("crop", "pad", "random")),
        ("crop_fraction", float, 0.75, "resize: random: the crop's side as a share of the image's short side",
         ("prepare",), True, between(0, 1, lo_open=True)),
        ("background", str, "white", "colour that transparency is composited over and padding is filled with "
         "(a name or '#rrggbb')", ("prepare",), True, colour),
        ("val_fraction", float, 0.1, "share of images held out for validation (the overfitting signal d_val)",
         ("prepare",), True, between(0, 0.5)),
        ("test_fraction", float, 0.1, "share of images held out for the evaluate stage", ("prepare",), True,
         between(0, 0.5)),
        ("max_skipped_fraction", float, 0.1, "fail when more than this share of files is unusable", ("prepare",),
         False, between(0, 1)),
        ("max_image_pixels", int, 89478485, "larger images are rejected from their header (decompression bombs)",
         ("prepare",), True, between(1, 2**31 - 1)),
        ("max_file_bytes", int, 268435456, "larger files or zip members are skipped before they are read "
         "(256 MiB)", ("prepare",), True, between(1, 2**40)),
    ]),
    ("model", [
        ("arch", str, "dcgan", "architecture of G, D and the encoder, by name (dcgan/archs/)", ("train",), True,
         registered("archs")),
        ("nz", int, 100, "length of the latent vector z", ("train",), True, between(1, 4096)),
        ("ngf", int, 64, "generator width (channels of its last hidden layer)", ("train",), True, between(1, 1024)),
        ("ndf", int, 64, "discriminator width (channels of its first layer)", ("train",), True, between(1, 1024)),
    ]),
    ("train", [
        ("epochs", int, 20, "total epochs; raising it continues a finished run from its checkpoint", ("train",),
         False, between(1, MAX_COUNT)),
        ("batch_size", int, 32, "images per training step", ("train",), True, between(1, 65536)),
        ("lr_g", float, 0.0002, "Adam learning rate of the generator", ("train",), True, between(0, 1, lo_open=True)),
        ("lr_d", float, 0.0002, "Adam learning rate of the discriminator", ("train",), True,
         between(0, 1, lo_open=True)),
        ("beta1", float, 0.5, "Adam beta1 (0.5 in the DCGAN paper)", ("train",), True, between(0, 1, hi_open=True)),
        ("beta2", float, 0.999, "Adam beta2", ("train",), True, between(0, 1, hi_open=True)),
        ("seed", int, 0, "seed of weights, shuffling and noise (and of the encoder and evaluate stages, and of "
         "prepare's random crops)", ("prepare", "train", "encoder", "evaluate"), True, between(0, MAX_SEED)),
        ("device", str, "auto", "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps",
         ("train", "encoder", "generate", "evaluate"), False, device_name),
        ("precision", str, "auto", "auto (the fastest measured for the device), fp32, or bf16 autocast",
         ("train",), True, one_of("auto", "fp32", "bf16")),
        ("channels_last", (bool, str), "auto", "NHWC memory layout: auto (on for CPU and CUDA), true or false",
         ("train",), True, auto_or_bool),
        ("compile", (bool, str), "auto", "torch.compile G and D: auto (the fastest measured for the device), "
         "true or false; a compiler failure falls back to eager", ("train",), True, auto_or_bool),
        ("nproc", int, 1, "training processes on this machine (one per GPU; >1 runs torchrun with DDP)",
         ("train",), False, between(1, 1024)),
        ("nnodes", int, 1, "machines taking part (>1: start the same run on each, see docs/distributed.md)",
         ("train",), False, between(1, 4096)),
        ("rdzv_endpoint", str, "", "host:port of the first machine when nnodes > 1 ('' otherwise)", ("train",),
         False),
        ("sample_every", (int, str), "auto", "log a grid of fixed-noise samples every N epochs, or 'auto' "
         "(a fixed number per run, denser early)", ("train",), False, auto_or_positive_int),
        ("checkpoint_every", int, 1, "write the resumable checkpoint models/checkpoint.pt every N epochs",
         ("train",), False, between(1, MAX_COUNT)),
    ]),
    ("train: quality options (docs/training.md)", [
        ("diffaugment", str, "", "DiffAugment policy on every image D sees: comma-separated names from "
         "dcgan/augment/ (e.g. color,translation,cutout); '' = off", ("train",), True,
         registered("augment", comma_separated=True)),
        ("loss", str, "bce", "GAN loss by name (dcgan/losses/): bce (non-saturating, as DCGAN) or hinge",
         ("train",), True, registered("losses")),
        ("spectral_norm", bool, False, "spectral normalisation of D's convs (D then has no BatchNorm)", ("train",),
         True),
        ("r1_gamma", float, 0.0, "weight of the R1 gradient penalty on real images; 0 = off", ("train",), True,
         between(0, 1e6)),
        ("r1_every", int, 16, "compute R1 every N steps (weight scaled by N, as StyleGAN2)", ("train",), True,
         between(1, 1_000_000)),
        ("ema_halflife", int, 10000, "half-life in images of the EMA of G's weights; 0 = off. generator*.pt hold "
         "the EMA", ("train",), True, between(0, 10**12)),
        ("ema_rampup", float, 0.05, "the EMA half-life is at most this x images seen (0 = no ramp-up)",
         ("train",), True, between(0, 1)),
        ("eval_every", int, 5, "score the generator (SWD, FID/KID) every N epochs against the val split and keep "
         "the best; 0 = off", ("train",), False, between(0, MAX_COUNT)),
        ("best_by", str, "swd", "the in-training score (lower is better) that picks models/generator_best.pt: "
         "swd, rkid or c2st (a classifier's accuracy, real vs generated: 0.5 is best)", ("train",), False,
         one_of("swd", "rkid", "c2st")),
    ]),
    ("encoder: image -> latent in one forward pass, trained on the generator's own samples", [
        ("encoder_steps", int, 1000, "training steps of the encoder", ("encoder",), True,
         between(1, 10_000_000)),
        ("encoder_lr", float, 0.001, "Adam learning rate of the encoder", ("encoder",), True,
         between(0, 1, lo_open=True)),
        ("encoder_pixel_weight", float, 1.0, "weight of the pixel loss ||G(E(G(z))) - G(z)||^2 beside the latent "
         "loss ||E(G(z)) - z||^2", ("encoder",), True, between(0, 1e6)),
    ]),
    ("generate", [
        ("num_images", int, 1000, "images the generate stage writes to data/generated/images (all scored by "
         "evaluate)", ("generate",), False, between(1, 10_000_000)),
        ("generate_seed", int, 1, "seed of the generate stage's noise", ("generate",), False, between(0, MAX_SEED)),
        ("invert_steps", int, 100, "refinement steps when projecting images to latents, from the encoder's "
         "guess (0 = the encoder alone)", ("generate", "evaluate"), False, between(0, 100_000)),
        ("generator", str, "best", "the generator to publish as models/published/generator.pt (the registry's "
         "`generator` artifact, which encoder, export, generate, evaluate and the server use): best "
         "(models/generator_best.pt, the best `best_by` score in training) or last (models/generator.pt)",
         ("publish",), False, one_of("best", "last")),
    ]),
    ("evaluate", [
        ("fid_weights", str, "", "path to pt_inception-2015-12-05-6726825d.pth for FID/KID (train and evaluate); "
         "'' = the torch hub cache (pytorch-fid downloads it once when online)", ("train", "evaluate"), False),
        ("memorisation_k", int, 200, "generated images searched for their nearest training image", ("evaluate",),
         False, between(1, 100_000)),
    ]),
]

SCHEMA: dict[str, Param] = {
    row[0]: Param(*row[:6], check=row[6] if len(row) > 6 else None, section=section)
    for section, rows in _SECTIONS for row in rows
}
STAGE_KEYS: dict[str, list[str]] = {stage: [k for k, p in SCHEMA.items() if stage in p.stages] for stage in STAGES}
# The train params that change the trained weights: a checkpoint made with other values is not resumed.
WEIGHT_KEYS: tuple[str, ...] = tuple(k for k in STAGE_KEYS["train"] if SCHEMA[k].changes_weights)


def defaults() -> dict[str, Any]:
    return {k: p.default for k, p in SCHEMA.items()}


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


def _kind_name(kind) -> str:
    return kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)


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
        if p.kind is float and isinstance(v, str) and FLOAT_TEXT.match(v):
            v = float(v)   # YAML 1.1 reads 5e-05 (no dot: how DVC's -S writes small floats) as a string
        bool_ok = p.kind is bool or (isinstance(p.kind, tuple) and bool in p.kind)
        if (isinstance(v, bool) and not bool_ok) or not isinstance(v, p.kind) or \
                (isinstance(v, float) and not math.isfinite(v)):
            kind = _kind_name(p.kind)
            raise ParamError(f"{path}: '{key}' must be a{'n' if kind[0] in 'aeiou' else ''} {kind} ({p.help}); got {v!r}")
        if p.check is not None and (why := p.check(v)):
            raise ParamError(f"{path}: '{key}' {why}; got {v!r}")
        out[key] = v
    if "val_fraction" in out and "test_fraction" in out and out["val_fraction"] + out["test_fraction"] >= 1:
        raise ParamError(f"{path}: 'val_fraction' + 'test_fraction' must be below 1")
    return out


def load(stage: str, path: Path | str = PARAMS_FILE) -> dict[str, Any]:
    return validate(read(path), STAGE_KEYS[stage], path)
