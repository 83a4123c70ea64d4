"""evaluate stage: score the generate stage's images against the test split with every registered metric
(dcgan/metrics/: SWD, FID/KID, D as a classifier, memorisation, inversion)."""
import argparse
from pathlib import Path

from dcgan import cli, data, evaluation, gpu_claim, model, params


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", type=Path, default=params.PARAMS_FILE)
    ap.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    ap.add_argument("--generated", type=Path, default=Path("data/generated/images"),
                    help="folder of generated PNG files (the generate stage's output)")
    ap.add_argument("--discriminator", type=Path, default=Path("models/discriminator.pt"))
    ap.add_argument("--generator", type=Path, default=model.PUBLISHED_GENERATOR,
                    help="generator for the inversion scores (default: the one the publish stage published)")
    ap.add_argument("--encoder", type=Path, default=Path("models/encoder.pt"))
    ap.add_argument("--out-json", type=Path, default=Path("metrics/eval.json"))
    ap.add_argument("--out-dir", type=Path, default=Path("metrics/eval"), help="folder of the pictures")
    args = ap.parse_args()
    p = params.load("evaluate", args.params)
    try:
        device = gpu_claim.stage_device(p["device"])  # one GPU per queued experiment
    except ValueError as e:
        raise params.ParamError(f"{args.params}: 'device' {e}") from None
    for split in ("train", "test"):
        if not (args.prepared / f"{split}.npy").is_file():
            raise cli.UserError(f"{args.prepared / f'{split}.npy'} not found: run `dvc repro prepare` first")
    if not args.discriminator.is_file():
        raise cli.UserError(f"{args.discriminator} not found: run `dvc repro train` (or `dvc pull train`) first")
    if not args.generated.is_dir():
        raise cli.UserError(f"{args.generated} not found: run `dvc repro generate` first")
    try:
        D = model.load(args.discriminator, device, kind="discriminator")
    except ValueError as e:
        raise cli.UserError(str(e)) from None
    train_arr = data.load_split(args.prepared, "train")
    test_arr = data.load_split(args.prepared, "test")
    try:
        fake = evaluation.read_generated(args.generated, test_arr.shape[1])
        evaluation.check_compatible(D, train_arr, test_arr, fake)
    except ValueError as e:
        raise cli.UserError(str(e)) from None
    G = E = None
    g_path = args.generator
    if args.encoder.is_file() and g_path.is_file():
        try:
            G, E = model.load(g_path, device, kind="generator"), model.load(args.encoder, device, kind="encoder")
        except ValueError as e:
            raise cli.UserError(str(e)) from None
    else:
        print(f"inversion scores skipped: {args.encoder} or {g_path} not found (dvc repro encoder)")
    res = evaluation.evaluate(fake, D, train_arr, test_arr, p, args.out_json, args.out_dir, device,
                              generator=G, encoder=E)
    print("done: " + ", ".join(f"{k}={res[k]:.4g}" for k in evaluation.headline_keys() if res.get(k) is not None))
    print(f"wrote {args.out_json} and {args.out_dir}/")


if __name__ == "__main__":
    cli.run(main)
