"""train stage: train the GAN (the `arch` param) on data/prepared, logging every epoch with dvclive; resumes
from models/checkpoint.pt."""
import argparse
import subprocess
import sys
from pathlib import Path

from dcgan import cli, data, device, distributed, params, training


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", type=Path, default=params.PARAMS_FILE)
    ap.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    ap.add_argument("--models", type=Path, default=Path("models"))
    ap.add_argument("--live", type=Path, default=Path("metrics/train"), help="dvclive folder")
    ap.add_argument("--summary", type=Path, default=Path("metrics/train.json"))
    args = ap.parse_args()
    p = params.load("train", args.params)
    try:
        device.pick_device(p["device"])
    except ValueError as e:
        raise params.ParamError(f"{args.params}: 'device' {e}") from None
    for split in ("train", "val"):
        if not (args.prepared / f"{split}.npy").is_file():
            raise cli.UserError(f"{args.prepared / f'{split}.npy'} not found: run `dvc repro prepare` first")
    train_arr = data.load_split(args.prepared, "train")
    val_arr = data.load_split(args.prepared, "val")
    if distributed.wants_launch(p):   # nproc/nnodes > 1: start this script again under torchrun, once per process
        try:
            # this module again, by name when run as `python -m stages.train` (dvc.yaml), else by path
            entry = __spec__.name if __spec__ is not None else __file__
            cmd = distributed.torchrun_command(p, entry, sys.argv[1:])
        except ValueError as e:
            raise params.ParamError(f"{args.params}: {e}") from None
        print("launching: " + " ".join(cmd[1:]), flush=True)
        return subprocess.run(cmd).returncode
    world = distributed.init(p["device"])
    try:
        summary = training.train(p, train_arr, val_arr, args.models, args.live, args.summary, world=world)
    finally:
        distributed.finish(world)
    if world.main:
        print("done: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items()))

if __name__ == "__main__":
    cli.run(main)
