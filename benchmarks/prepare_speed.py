"""How fast is the prepare stage? dcgan.data.prepare (all cores) against a plain single-process PIL loop.

    python benchmarks/prepare_speed.py [folder] [--size 64] [--channels 3] [--repeats 3]

Both are timed in this run on the same files, best of N after one untimed pass that warms the file
cache. The baseline only opens, converts to RGB, center-crops, resizes with LANCZOS and stacks; ours
also hashes, checks formats, applies EXIF orientation, composites transparency, deduplicates, splits
and writes the .npy files and manifest. The last line printed is a JSON object:
{"ours_s", "reference_s", "ratio" (= reference_s / ours_s; > 1 means prepare is faster), "files", "workers", ...}
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import numpy as np
from PIL import Image

from dcgan import data
from dcgan.cpus import usable_cpus

DEFAULT = ROOT.parent / "shared" / "datasets" / "pokemon" / "images"


def reference(folder: Path, names: list[str], size: int, channels: int) -> np.ndarray:
    """The obvious single-process loop: open, convert, center crop, LANCZOS resize, stack."""
    mode = "RGB" if channels == 3 else "L"
    warnings.simplefilter("ignore")  # PIL's note about palette transparency, once per sprite
    out = []
    for name in names:
        with Image.open(folder / name) as im:
            im = im.convert(mode)
            w, h = im.size
            side = min(w, h)
            left, top = (w - side) // 2, (h - side) // 2
            im = im.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.LANCZOS)
            a = np.asarray(im, dtype=np.uint8)
        out.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    return np.stack(out)


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", nargs="?", type=Path, default=DEFAULT, help=f"images (default: {DEFAULT})")
    ap.add_argument("--size", type=int, default=64, help="image_size (default 64)")
    ap.add_argument("--channels", type=int, default=3, choices=(1, 3))
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each; the best counts (default 3)")
    ap.add_argument("--workers", type=int, default=None, help="prepare's processes (default: all cores)")
    args = ap.parse_args()

    folder = args.folder.expanduser().resolve()
    if not folder.is_dir():
        sys.exit(f"error: image folder '{folder}' not found; pass a folder of images as the first argument")
    names = data.list_source(folder)
    workers = args.workers or usable_cpus()
    settings = data.Settings(args.size, args.channels, "crop", "white", 89478485)

    for name in names:  # warm the file cache so neither side pays for the first disk read
        (folder / name).read_bytes()

    with tempfile.TemporaryDirectory(prefix="prepare_speed_") as tmp:
        def ours():
            m = data.prepare(folder, Path(tmp) / "prepared", settings, 0.1, 0.1, 1.0, {}, workers=workers,
                             progress=False)
            return m

        m = ours()  # untimed warm-up (imports, pool start-up code paths) and a sanity check
        ref = reference(folder, names, args.size, args.channels)
        ours_s = best_of(ours, args.repeats)
        reference_s = best_of(lambda: reference(folder, names, args.size, args.channels), args.repeats)

    c = m["counts"]
    print(f"{len(names)} files in {folder}: prepare {ours_s:.3f}s with {workers} workers "
          f"({c['train']}+{c['val']}+{c['test']} images, {c['duplicates']} duplicates, {c['skipped']} skipped); "
          f"single-process PIL loop {reference_s:.3f}s ({ref.shape[0]} images)")
    print(json.dumps({"ours_s": round(ours_s, 4), "reference_s": round(reference_s, 4),
                      "ratio": round(reference_s / ours_s, 3), "files": len(names), "workers": workers,
                      "image_size": args.size, "channels": args.channels, "repeats": args.repeats}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
