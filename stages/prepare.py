"""prepare stage: decode a folder or .zip of images (or a torchvision dataset, after the fetch stage) into
data/prepared/{train,val,test}.npy + manifest.json."""
import argparse
import sys
import time
from pathlib import Path

from dcgan import cli, data, params, torchvision_source


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", type=Path, default=params.PARAMS_FILE)
    ap.add_argument("--out", type=Path, default=Path("data/prepared"))
    ap.add_argument("--workers", type=int, default=None,
                    help="decoding processes (default: the CPUs this process may use, affinity and cgroup quota)")
    args = ap.parse_args()
    if args.workers is not None and args.workers < 1:
        ap.error(f"--workers must be at least 1, not {args.workers}")
    p = params.load("prepare", args.params)
    settings = data.Settings(p["image_size"], p["channels"], p["resize"], p["background"], p["max_image_pixels"],
                             p["max_file_bytes"], p["crop_fraction"], p["seed"])
    t0 = time.perf_counter()
    dataset = torchvision_source.parse(p["source"])
    source = (Path(p["source"]).expanduser() if dataset is None
              else torchvision_source.Source(dataset, torchvision_source.resolve_root(p["torchvision_root"])))
    manifest = data.prepare(source, args.out, settings, p["val_fraction"],
                            p["test_fraction"], p["max_skipped_fraction"], p, workers=args.workers)
    c = manifest["counts"]
    if hasattr(sys.stdout, "reconfigure"):  # a file name the terminal's encoding lacks is no crash after the work
        sys.stdout.reconfigure(errors="backslashreplace")
    print(f"prepared {c['train']} train / {c['val']} val / {c['test']} test images "
          f"({c['duplicates']} duplicates, {c['skipped']} skipped) in {time.perf_counter() - t0:.1f}s -> {args.out}")
    for s in manifest["skipped"][:10]:
        print(f"  skipped {s['path']}: {s['reason']}")
    if c["skipped"] > 10:
        print(f"  ... {c['skipped'] - 10} more in {args.out / 'manifest.json'}")


if __name__ == "__main__":
    cli.run(main)
