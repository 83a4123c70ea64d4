"""generate stage, and a CLI for anyone who just wants pictures from a trained generator.

  python stages/generate.py sample  --model models/generator.pt --out data/generated
        N images + grid.png + interpolation.png (+ inversion.png when --real is given, as the DVC stage does)
  python stages/generate.py latents --model models/generator.pt --input z.jsonl --out out/
        one image per line of {"key": "...", "z": [nz floats]} ("embeddings" accepted too)
  python stages/generate.py invert  --model models/generator.pt --input folder_or.jsonl --out out/
        image -> latent: out/latents.jsonl ({"key", "z", "reconstruction_mse"}) and out/comparison.png

Options left out fall back to params.yaml (num_images, generate_seed, invert_steps, device, generator) when it
exists. Without --model: models/generator_best.pt (the best-scoring generator of training), or with
`generator: last`, models/generator.pt.
"""
import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the dcgan package lives at the repo root

import numpy as np  # noqa: E402
import torch  # noqa: E402

from dcgan import cli, data, generation, params, pictures  # noqa: E402
from dcgan.device import pick_device  # noqa: E402
from dcgan import model as models  # noqa: E402

DEFAULTS = {"num_images": 64, "generate_seed": 1, "invert_steps": 100, "device": "auto", "generator": "best"}
INVERSION_DEMO = 8  # held-out test images projected by the DVC stage, to show the round trip


def settings(args) -> dict:
    """Command-line options win; then params.yaml (validated); then built-in defaults."""
    p = dict(DEFAULTS)
    if args.params.is_file():
        p.update(params.load("generate", args.params))
    for key, opt in (("num_images", "num"), ("generate_seed", "seed"), ("invert_steps", "steps"), ("device", "device")):
        if getattr(args, opt, None) is not None:
            p[key] = getattr(args, opt)
    checked = params.validate({k: p[k] for k in DEFAULTS}, list(DEFAULTS), "command line")
    return checked


def model_path(args, p) -> Path:
    """--model when given; else the `generator` param: best (generator_best.pt) or last (generator.pt)."""
    if args.model is not None:
        return args.model
    path = models.GENERATOR_FILES[p["generator"]]
    if not path.is_file() and models.GENERATOR_FILES["last"].is_file():
        print(f"{path} not found (trained before the best generator was kept): using {models.GENERATOR_FILES['last']}")
        return models.GENERATOR_FILES["last"]
    return path


DEFAULT_ENCODER = Path("models/encoder.pt")


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
    misfit = models.encoder_misfit(E.config, G.config)
    if misfit:
        why = f"{path} {misfit}"
        if given:
            raise cli.UserError(f"--encoder {why}")
        print(f"{why}: inversion starts from random latents")
        return None
    return E


def load_generator(path: Path, device_name: str):
    try:
        device = pick_device(device_name)
    except ValueError as e:
        raise cli.UserError(str(e)) from None
    try:
        return models.load(path, device, kind="generator"), device
    except ValueError as e:
        raise cli.UserError(str(e)) from None


def cmd_sample(args, p):
    G, device = load_generator(model_path(args, p), p["device"])
    out = args.out
    t0 = time.perf_counter()
    generation.write_samples(G, out / "images", p["num_images"], p["generate_seed"], device)
    grid = generation.generate(G, generation.noise(64, G.nz, p["generate_seed"]), device)
    pictures.save_png(pictures.grid(grid, nrow=8), out / "grid.png")
    pictures.save_png(pictures.grid(generation.interpolation(G, p["generate_seed"], device), nrow=10),
                      out / "interpolation.png")
    if args.real is not None:
        real = np.array(data.load_array(args.real)[:INVERSION_DEMO])
        if len(real):
            z, err = generation.invert(G, real, p["invert_steps"], device, seed=p["generate_seed"],
                                       encoder=load_encoder(args.encoder, device, G))
            recon = generation.generate(G, torch.from_numpy(z), device)
            pictures.save_png(pictures.pairs(real, recon), out / "inversion.png")
            generation.write_latents_jsonl(out / "inversion.jsonl", [f"test_{i}" for i in range(len(real))], z, err)
    print(f"wrote {p['num_images']} images, grid.png, interpolation.png to {out} in {time.perf_counter() - t0:.1f}s")


def cmd_latents(args, p):
    G, device = load_generator(model_path(args, p), p["device"])
    if not args.input.is_file():
        raise cli.UserError(f"--input {args.input} not found")
    rows, errors = generation.parse_latents(generation.read_utf8(args.input), G.nz)
    for e in errors:
        print(f"{args.input}: {e}", file=sys.stderr)
    if not rows:
        raise cli.UserError(f"no usable line in {args.input} ({len(errors)} bad)")
    generation.latents_to_images(G, rows, args.out, device)
    print(f"wrote {len(rows)} images to {args.out} ({len(errors)} bad lines skipped)")


def cmd_invert(args, p):
    G, device = load_generator(model_path(args, p), p["device"])
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
    recon = generation.generate(G, torch.from_numpy(z), device)
    pictures.save_png(pictures.pairs(images, recon), args.out / "comparison.png")
    print(json.dumps({"images": len(keys), "bad": len(problems), "median_mse": float(np.median(err))}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    for name, help_ in (("sample", "N seeded images, a grid and an interpolation strip"),
                        ("latents", "latent -> image for each line of a JSON Lines file"),
                        ("invert", "image -> latent for a folder of images or JSON Lines of base64 images")):
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("--model", type=Path, default=None,
                        help="generator .pt file (default: models/generator_best.pt, or models/generator.pt "
                             "with generator: last in params.yaml)")
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
    p = settings(args)
    {"sample": cmd_sample, "latents": cmd_latents, "invert": cmd_invert}[args.command](args, p)


if __name__ == "__main__":
    cli.run(main)
