"""report: one self-contained HTML page (report/index.html) about the last run: curves, samples, evaluation."""
import argparse
from pathlib import Path

from dcgan import cli, report


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--metrics", type=Path, default=Path("metrics"), help="what train and evaluate wrote")
    ap.add_argument("--out", type=Path, default=Path("report/index.html"))
    ap.add_argument("--title", default="DCGAN run report")
    args = ap.parse_args()
    if not args.metrics.is_dir():
        raise cli.UserError(f"{args.metrics} not found: run `dvc repro` (train and evaluate) first")
    out = report.build(args.metrics, args.out, title=args.title)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB); open it in a browser")


if __name__ == "__main__":
    cli.run(main)
