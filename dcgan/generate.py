"""Pictures from a trained generator, for anyone who wants them (the generate stage runs `sample` too).

  python -m dcgan.generate sample  --model models/generator.pt --out data/generated
        N images + grid.png + interpolation.png (+ inversion.png when --real is given, as the DVC stage does)
  python -m dcgan.generate latents --model models/generator.pt --input z.jsonl --out out/
        one image per line of {"key": "...", "z": [nz floats]} ("embeddings" accepted too)
  python -m dcgan.generate invert  --model models/generator.pt --input folder_or.jsonl --out out/
        image -> latent: out/latents.jsonl ({"key", "z", "reconstruction_mse"}) and out/comparison.png

Options left out fall back to params.yaml (num_images, generate_seed, invert_steps, device) when it exists,
then to the defaults declared in dcgan/params.py. Without --model: models/published/generator.pt, the
generator the pipeline publishes (the one the `generator` param picks); before the publish stage has run,
the file the param picks (models/generator_best.pt, or with `generator: last`, models/generator.pt).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import cli, data, generation, params, pictures, sampling, shapes
from . import model as models
from .device import pick_device

KEYS = params.STAGE_KEYS["generate"]
DEFAULT_ENCODER = Path("models/encoder.pt")
INVERSION_DEMO = 8  # real images `sample` projects to show the round trip
GRID_IMAGES = 64    # grid.png: 8 x 8


def settings(params_file: Path, **given) -> dict:
    """The generate keys: a value given here (not None) wins; then params_file (validated) when it exists;
    then the defaults declared in dcgan/params.py. The stage and every command resolve through here."""
    p = {key: params.SCHEMA[key].default for key in KEYS}
    if params_file.is_file():
        p.update(params.load("generate", params_file))
    p.update({key: v for key, v in given.items() if v is not None})
    return params.validate(p, KEYS, "command line")


def model_path(model: Path | None, params_file: Path = params.PARAMS_FILE) -> Path:
    """`model` when given; else the published generator (model.default_generator: before the publish stage
    has run, the file that params_file's `generator` picks)."""
    if model is not None:
        return model
    path = models.default_generator(params_file)
    if path != models.PUBLISHED_GENERATOR:
        print(f"{models.PUBLISHED_GENERATOR} not found (dvc repro publish writes it): using {path}")
    return path


def load_generator(path: Path, device_name: str):
    """-> (generator, device); a UserError naming the device or the file when either is unusable."""
    try:
        device = pick_device(device_name)
    except ValueError as e:
        raise cli.UserError(str(e)) from None
    try:
        return models.load(path, device, kind="generator"), device
    except ValueError as e:
        raise cli.UserError(str(e)) from None


def load_encoder(path: Path | None, device, G):
    """The encoder that starts inversion from E(x); None (random starts) when there is none yet, or when
    the pipeline's encoder does not fit a generator given by --model. A given --encoder must fit."""
    given = path is not None
    path = path if given else DEFAULT_ENCODER
    if not path.is_file():
        if given:
            raise cli.UserError(f"--encoder {path} not found")
        print(f"{path} not found: inversion starts from random latents (dvc repro encoder trains one)")
        return None
    try:
        E = models.load(path, device, kind="encoder")
    except ValueError as e:
        raise cli.UserError(str(e)) from None
    misfit = shapes.encoder_misfit(E.config, G.config)
    if misfit:
        why = f"{path} {misfit}"
        if given:
            raise cli.UserError(f"--encoder {why}")
        print(f"{why}: inversion starts from random latents")
        return None
    return E


def sample(G, device, p: dict, out: Path, real: Path | None = None, encoder: Path | None = None):
    """out/images/*.png (num_images), grid.png, interpolation.png; with `real` (a uint8 .npy), also
    inversion.png and inversion.jsonl: a few of its images projected to latents and regenerated."""
    t0 = time.perf_counter()
    seed = p["generate_seed"]
    generation.write_samples(G, out / "images", p["num_images"], seed, device)
    grid = sampling.sample_images(G, generation.noise(GRID_IMAGES, G.nz, seed), device)
    pictures.save_png(pictures.grid(grid, nrow=8), out / "grid.png")
    pictures.save_png(pictures.grid(generation.interpolation(G, seed, device), nrow=10), out / "interpolation.png")
    if real is not None:
        images = np.array(data.load_array(real)[:INVERSION_DEMO])
        if len(images):
            z, err = generation.invert(G, images, p["invert_steps"], device, seed=seed,
                                       encoder=load_encoder(encoder, device, G))
            recon = sampling.sample_images(G, torch.from_numpy(z), device)
            pictures.save_png(pictures.pairs(images, recon), out / "inversion.png")
            generation.write_latents_jsonl(out / "inversion.jsonl", [f"test_{i}" for i in range(len(images))], z, err)
    print(f"wrote {p['num_images']} images, grid.png, interpolation.png to {out} in {time.perf_counter() - t0:.1f}s")


def cmd_sample(args, G, device, p):
    sample(G, device, p, args.out, args.real, args.encoder)


def cmd_latents(args, G, device, p):
    if not args.input.is_file():
        raise cli.UserError(f"--input {args.input} not found")
    rows, errors = generation.parse_latents(generation.read_utf8(args.input), G.nz)
    for e in errors:
        print(f"{args.input}: {e}", file=sys.stderr)
    if not rows:
        raise cli.UserError(f"no usable line in {args.input} ({len(errors)} bad)")
    generation.latents_to_images(G, rows, args.out, device)
    print(f"wrote {len(rows)} images to {args.out} ({len(errors)} bad lines skipped)")


def cmd_invert(args, G, device, p):
    if not args.input.exists():
        raise cli.UserError(f"--input {args.input} not found")
    keys, images, problems = generation.read_images_for(G, args.input)
    for e in problems:
        print(f"{args.input}: {e}", file=sys.stderr)
    if not keys:
        raise cli.UserError(f"no usable image in {args.input} ({len(problems)} bad)")
    z, err = generation.invert(G, images, p["invert_steps"], device, seed=p["generate_seed"],
                               encoder=load_encoder(args.encoder, device, G))
    generation.write_latents_jsonl(args.out / "latents.jsonl", keys, z, err)
    recon = sampling.sample_images(G, torch.from_numpy(z), device)
    pictures.save_png(pictures.pairs(images, recon), args.out / "comparison.png")
    print(json.dumps({"images": len(keys), "bad": len(problems), "median_mse": float(np.median(err))}))


COMMANDS = {"sample": cmd_sample, "latents": cmd_latents, "invert": cmd_invert}


def main():
    ap = argparse.ArgumentParser(prog="python -m dcgan.generate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    for name, help_ in (("sample", "N seeded images, a grid and an interpolation strip"),
                        ("latents", "latent -> image for each line of a JSON Lines file"),
                        ("invert", "image -> latent for a folder of images or JSON Lines of base64 images")):
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("--model", type=Path, default=None,
                        help="generator .pt file (default: models/published/generator.pt, the one the "
                             "pipeline publishes)")
        sp.add_argument("--out", type=Path, required=True, help="output folder")
        sp.add_argument("--params", type=Path, default=params.PARAMS_FILE, help="params.yaml to read defaults from")
        sp.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N, mps")
        sp.add_argument("--seed", type=int, default=None, help="noise seed (generate_seed)")
        if name == "sample":
            sp.add_argument("--num", type=int, default=None, help="number of images (num_images)")
            sp.add_argument("--real", type=Path, default=None,
                            help="uint8 .npy of real images: project a few to show the round trip")
        else:
            sp.add_argument("--input", type=Path, required=True)
        if name in ("sample", "invert"):
            sp.add_argument("--steps", type=int, default=None, help="optimisation steps (invert_steps)")
            sp.add_argument("--encoder", type=Path, default=None,
                            help="encoder whose E(x) starts the inversion (default: models/encoder.pt when it "
                                 "exists and fits the generator, else random starts)")
    args = ap.parse_args()
    p = settings(args.params, num_images=getattr(args, "num", None), generate_seed=args.seed,
                 invert_steps=getattr(args, "steps", None), device=args.device)
    G, device = load_generator(model_path(args.model, args.params), p["device"])
    COMMANDS[args.command](args, G, device, p)


if __name__ == "__main__":
    cli.run(main)
