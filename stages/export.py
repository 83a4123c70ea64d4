"""export stage: the generator and the encoder as TorchScript (.ts) and ONNX (.onnx) in models/export/."""
import argparse
from pathlib import Path

from dcgan import cli, export, params
from dcgan import model as models


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", type=Path, default=params.PARAMS_FILE)
    ap.add_argument("--generator", type=Path, default=models.PUBLISHED_GENERATOR,
                    help="default: the one the publish stage published")
    ap.add_argument("--encoder", type=Path, default=Path("models/encoder.pt"))
    ap.add_argument("--out", type=Path, default=Path("models/export"))
    args = ap.parse_args()
    params.load("export", args.params)   # the whole file is checked, as every stage does
    written = []
    for path, kind in ((args.generator, "generator"), (args.encoder, "encoder")):
        try:
            m = models.load(path, kind=kind)
        except ValueError as e:
            raise cli.UserError(str(e)) from None
        written += export.export_all(m, args.out, kind)
    print("wrote " + ", ".join(str(w) for w in written))


if __name__ == "__main__":
    cli.run(main)
