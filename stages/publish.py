"""publish stage: the generator that the `generator` param picks (best: models/generator_best.pt, last:
models/generator.pt), copied byte for byte to models/published/generator.pt. That file is the registry's
`generator` artifact and the one generator that encoder, export, generate and evaluate read, so changing the
param retrains nothing and every later product (the encoder, the exported files, the scores) comes from the
weights the registry publishes."""
import argparse
from pathlib import Path

from dcgan import cli, params
from dcgan import model as models


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", type=Path, default=params.PARAMS_FILE)
    ap.add_argument("--out", type=Path, default=models.PUBLISHED_GENERATOR)
    args = ap.parse_args()
    p = params.load("publish", args.params)
    source = models.GENERATOR_FILES[p["generator"]]
    try:
        models.publish(source, args.out)
    except ValueError as e:
        raise cli.UserError(str(e)) from None
    print(f"published {source} (generator: {p['generator']}) as {args.out}")


if __name__ == "__main__":
    cli.run(main)
