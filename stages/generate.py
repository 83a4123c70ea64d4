"""generate stage: num_images seeded images, grid.png, interpolation.png, and inversion.png/inversion.jsonl
from a few held-out test images, all from params.yaml's generate keys.

  python -m stages.generate    (from the repository root, as dvc.yaml runs it)

The same pictures for any generator, and latent <-> image: `python -m dcgan.generate`.
"""
import argparse
from pathlib import Path

from dcgan import cli, generate, params
from dcgan import model as models


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=Path, default=params.PARAMS_FILE)
    ap.add_argument("--out", type=Path, default=Path("data/generated"))
    ap.add_argument("--real", type=Path, default=Path("data/prepared/test.npy"),
                    help="uint8 .npy of real images, a few of which are projected to latents")
    ap.add_argument("--model", type=Path, default=models.PUBLISHED_GENERATOR,
                    help="generator .pt file (default: the one the publish stage published)")
    ap.add_argument("--encoder", type=Path, default=None,
                    help="encoder that starts the inversion (default: models/encoder.pt when it fits)")
    args = ap.parse_args()
    p = generate.settings(args.params)
    G, device = generate.load_generator(args.model, p["device"])
    generate.sample(G, device, p, args.out, args.real, args.encoder)


if __name__ == "__main__":
    cli.run(main)
