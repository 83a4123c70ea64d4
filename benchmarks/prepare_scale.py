"""Does prepare scale? Wall time per image and peak memory for 1,000, 10,000 and 50,000 images.

    python benchmarks/prepare_scale.py [--sizes 1000,10000,50000] [--cache DIR] [--repo TREE] [--workers N] [--repeats 3]

The images are synthetic 64 px RGB PNGs (a random two-colour gradient plus noise, the same on every
machine), written once under --cache (default ~/.cache/dcgan-bench/prepare_scale, about 0.7 GB for
50,000) and reused: the smaller folders are hard links to the first files of the largest. Each size
is prepared (image_size 64, channels 3, crop) by dcgan.data.prepare in a child process, with the files
already in the page cache; the parent samples the resident memory (RSS) of that process and all its
children (the decoding workers) every 20 ms and keeps the peak of their sum. RSS counts pages shared
between the processes once per process, so the sum errs on the high side; the peak of the summed
proportional set size (PSS, shared pages split between the sharers) is given beside it in the JSON.

--repo runs the dcgan package of another checkout (e.g. `git worktree add /tmp/before <commit>`), so a
change can be measured before and after on the same files. Each size runs --repeats times (default 3):
the best time and the highest memory count.

Targets at the largest size: peak RSS <= 1.2 x the arrays' size + 150 MB, and time per image within
20% of the smallest size's. The last line printed is a JSON object: {"rows": [{"images", "s_per_image",
"prepare_s", "process_s", "peak_rss_mb", "peak_pss_mb", "arrays_mb", "ratio"}, ...], "targets": {...},
"repo", "workers", "repeats"}.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

from dcgan.cpus import usable_cpus

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = Path("~/.cache/dcgan-bench/prepare_scale").expanduser()
SIZE = 64
VERSION = "v1 64px rgb gradient+noise"  # change it when the synthetic content changes: the cache is rebuilt
MB = 1e6

CHILD = r"""
import json, sys, time
from pathlib import Path
from dcgan import data
src, out, size, workers = Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]) or None
settings = data.Settings(size, 3, "crop", "white", 89478485)
t0 = time.perf_counter()
m = data.prepare(src, out, settings, 0.1, 0.1, 0.0, {}, workers=workers, progress=False)
print(json.dumps({"prepare_s": time.perf_counter() - t0, "counts": m["counts"]}))
"""


def synth(i: int) -> Image.Image:
    """Image i: a gradient between two random colours at a random angle, plus noise; distinct for every i."""
    rng = np.random.default_rng(i)
    a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / (SIZE - 1)
    t = np.clip(0.5 + (xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle), 0, 1)[..., None]
    img = a * (1 - t) + b * t + rng.normal(0, 12, (SIZE, SIZE, 3))
    return Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8), "RGB")


def _write(args):
    folder, start, stop = args
    for i in range(start, stop):
        synth(i).save(folder / f"img{i:06d}.png")
    return stop - start


def image_folders(cache: Path, sizes: list[int]) -> dict[int, Path]:
    """cache/all holds max(sizes) PNGs (written once); cache/<n> holds hard links to the first n."""
    cache.mkdir(parents=True, exist_ok=True)
    everything, largest = cache / "all", max(sizes)
    stamp = everything / ".complete"
    have = json.loads(stamp.read_text()) if stamp.is_file() else {}
    if have.get("version") != VERSION or have.get("count", 0) < largest:
        shutil.rmtree(everything, ignore_errors=True)
        everything.mkdir()
        print(f"writing {largest} PNG files to {everything} (once)...", flush=True)
        step = 500
        with ProcessPoolExecutor() as pool:
            list(pool.map(_write, [(everything, s, min(s + step, largest)) for s in range(0, largest, step)]))
        stamp.write_text(json.dumps({"version": VERSION, "count": largest}))
    folders = {}
    for n in sizes:
        folder = cache / str(n)
        mark = folder / ".complete"
        if not (mark.is_file() and mark.read_text() == stamp.read_text()):
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            for i in range(n):
                name = f"img{i:06d}.png"
                try:
                    os.link(everything / name, folder / name)
                except OSError:
                    shutil.copy(everything / name, folder / name)
            mark.write_text(stamp.read_text())
        folders[n] = folder
    return folders


def warm(folder: Path) -> None:
    """Read every file once, so that no run pays for the first disk read."""
    for entry in os.scandir(folder):
        with open(entry.path, "rb") as f:
            while f.read(1 << 20):
                pass


def run_once(repo: Path, folder: Path, out: Path, workers: int) -> dict:
    """prepare in a child process; its wall time, and the peak RSS / PSS of it plus its children."""
    t0 = time.perf_counter()
    # cwd: `python -c` imports from the working directory first, so the chosen checkout's package runs
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(repo), str(folder), str(out), str(SIZE), str(workers)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=repo)
    root = psutil.Process(proc.pid)
    peak_rss = peak_pss = 0
    while proc.poll() is None:
        rss = pss = 0
        try:
            procs = [root] + root.children(recursive=True)
        except psutil.Error:
            procs = []
        for p in procs:
            try:
                full = p.memory_full_info()
            except psutil.Error:  # it ended between the listing and the reading
                continue
            rss += full.rss
            pss += getattr(full, "pss", full.rss)
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        time.sleep(0.02)
    stdout, stderr = proc.communicate()
    process_s = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"error: prepare failed on {folder} (exit {proc.returncode}):\n{stderr[-3000:]}")
    res = json.loads(stdout.strip().splitlines()[-1])
    arrays = sum((out / f"{s}.npy").stat().st_size for s in ("train", "val", "test"))
    return {"prepare_s": res["prepare_s"], "process_s": process_s, "peak_rss": peak_rss, "peak_pss": peak_pss,
            "arrays": arrays, "images": sum(res["counts"][s] for s in ("train", "val", "test"))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,10000,50000", help="comma-separated image counts (default 1000,10000,50000)")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"where the PNG folders live (default {DEFAULT_CACHE})")
    ap.add_argument("--repo", type=Path, default=ROOT, help="checkout whose dcgan package runs (default: this one)")
    ap.add_argument("--workers", type=int, default=0, help="prepare's processes (default: all cores)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each size; best time, highest memory (default 3)")
    ap.add_argument("--tmp", type=Path, default=None, help="where the arrays are written (default: the system temp dir)")
    args = ap.parse_args()
    sizes = sorted({int(s) for s in args.sizes.split(",")})
    repo = args.repo.expanduser().resolve()
    if not (repo / "dcgan" / "data.py").is_file():
        sys.exit(f"error: {repo} has no dcgan/data.py")

    folders = image_folders(args.cache.expanduser(), sizes)
    rows = []
    for n in sizes:
        warm(folders[n])
        runs = []
        for _ in range(max(1, args.repeats)):
            with tempfile.TemporaryDirectory(prefix="prepare_scale_", dir=args.tmp) as tmp:
                runs.append(run_once(repo, folders[n], Path(tmp) / "prepared", args.workers))
        best = min(runs, key=lambda r: r["prepare_s"])
        rows.append({"images": best["images"], "s_per_image": best["prepare_s"] / best["images"],
                     "prepare_s": best["prepare_s"], "process_s": best["process_s"],
                     "peak_rss_mb": max(r["peak_rss"] for r in runs) / MB,
                     "peak_pss_mb": max(r["peak_pss"] for r in runs) / MB,
                     "arrays_mb": best["arrays"] / MB})
        rows[-1]["ratio"] = rows[-1]["peak_rss_mb"] / rows[-1]["arrays_mb"]

    ref, big = rows[0], rows[-1]
    mem_limit = 1.2 * big["arrays_mb"] + 150
    time_ratio = big["s_per_image"] / ref["s_per_image"]
    targets = {"memory_ok": big["peak_rss_mb"] <= mem_limit, "memory_limit_mb": mem_limit,
               "time_ok": time_ratio <= 1.2, "time_vs_smallest": time_ratio}

    print(f"prepare ({repo}), {SIZE} px RGB PNG, workers={args.workers or usable_cpus()}, best of {args.repeats}")
    print(f"{'images':>8} {'ms/image':>9} {'prepare s':>10} {'peak MB':>9} {'(PSS MB)':>9} {'arrays MB':>10} {'peak/arrays':>12}")
    for r in rows:
        print(f"{r['images']:>8} {r['s_per_image'] * 1e3:>9.3f} {r['prepare_s']:>10.2f} {r['peak_rss_mb']:>9.0f} "
              f"{r['peak_pss_mb']:>9.0f} {r['arrays_mb']:>10.0f} {r['ratio']:>12.2f}")
    print(f"at {big['images']} images: peak {big['peak_rss_mb']:.0f} MB vs limit 1.2 x {big['arrays_mb']:.0f} + 150 = "
          f"{mem_limit:.0f} MB -> {'OK' if targets['memory_ok'] else 'MISSED'}; time per image "
          f"{time_ratio:.2f} x the {ref['images']}-image figure (limit 1.20) -> {'OK' if targets['time_ok'] else 'MISSED'}")
    print(json.dumps({"rows": [{k: round(v, 7 if k == "s_per_image" else 3) if isinstance(v, float) else v
                                for k, v in r.items()} for r in rows],
                      "targets": {k: round(v, 3) if isinstance(v, float) else v for k, v in targets.items()},
                      "repo": str(repo), "workers": args.workers or usable_cpus(), "repeats": args.repeats}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
