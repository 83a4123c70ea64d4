"""encoder stage: train an encoder (image -> latent in one forward pass) on the generator's own samples."""
import argparse
import json
from pathlib import Path

from dcgan import cli, encoder, gpu_claim, params
from dcgan import model as models
from dcgan.files import atomic_write_text

BATCH = 64


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", type=Path, default=params.PARAMS_FILE)
    ap.add_argument("--generator", type=Path, default=models.PUBLISHED_GENERATOR,
                    help="generator .pt (default: the one the publish stage published)")
    ap.add_argument("--out", type=Path, default=Path("models/encoder.pt"))
    ap.add_argument("--summary", type=Path, default=Path("metrics/encoder.json"))
    args = ap.parse_args()
    p = params.load("encoder", args.params)
    try:
        device = gpu_claim.stage_device(p["device"])  # one GPU per queued experiment
    except ValueError as e:
        raise params.ParamError(f"{args.params}: 'device' {e}") from None
    try:
        G = models.load(args.generator, device, kind="generator")
    except ValueError as e:
        raise cli.UserError(str(e)) from None
    E, summary = encoder.train_encoder(G, p["encoder_steps"], BATCH, p["encoder_lr"], p["encoder_pixel_weight"],
                                       p["seed"], device, width=G.config["ngf"])
    models.save(E, args.out)
    atomic_write_text(args.summary, json.dumps({f"encoder_{k}": v for k, v in summary.items()}, indent=2) + "\n")
    print(f"wrote {args.out} and {args.summary}")


if __name__ == "__main__":
    cli.run(main)
