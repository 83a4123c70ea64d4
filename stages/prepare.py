"""prepare stage: decode a folder or .zip of images into data/prepared/{train,val,test}.npy + manifest.json."""
import argparse
import time
from pathlib import Path

from dcgan import cli, data, params


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", type=Path, default=params.PARAMS_FILE)
    ap.add_argument("--out", type=Path, default=Path("data/prepared"))
    ap.add_argument("--workers", type=int, default=None, help="decoding processes (default: all cores)")
    args = ap.parse_args()
    p = params.load("prepare", args.params)
    settings = data.Settings(p["image_size"], p["channels"], p["resize"], p["background"], p["max_image_pixels"],
                             p["max_file_bytes"])
    t0 = time.perf_counter()
    manifest = data.prepare(Path(p["source"]).expanduser(), args.out, settings, p["val_fraction"],
                            p["test_fraction"], p["max_skipped_fraction"], p, workers=args.workers)
    c = manifest["counts"]
    print(f"prepared {c['train']} train / {c['val']} val / {c['test']} test images "
          f"({c['duplicates']} duplicates, {c['skipped']} skipped) in {time.perf_counter() - t0:.1f}s -> {args.out}")
    for s in manifest["skipped"][:10]:
        print(f"  skipped {s['path']}: {s['reason']}")
    if c["skipped"] > 10:
        print(f"  ... {c['skipped'] - 10} more in {args.out / 'manifest.json'}")


if __name__ == "__main__":
    cli.run(main)
