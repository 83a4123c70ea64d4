"""How big and how slow is the experiments page with many experiments of many grids?

    python benchmarks/report_scale.py [--experiments 100] [--grids 100] [--epochs 100] [--out /tmp/report-scale]
                                      [--browser]

Fabricates what `dvc exp show` and `dvc plots diff` give the report for N experiments of G sample grids and
E epochs each: params (lr_g x seed differ), metrics/train.json and metrics/eval.json, the curves of
dvc.yaml's plots filled by DVC's own renderer (dvc_render's VegaRenderer, as `dvc plots diff` does) and the
grids as PNG files in the site's plots/ folder (where DVC copies them; 100 distinct images hard-linked, so the
disk holds them once). Then it writes the site with dcgan.report.site.write_site, as `make report` does after
asking DVC, and prints the build time, the size of index.html, of the experiment pages and of the images.

Baseline, in the same run: the same experiments with all their grids inlined in one page as base64 (how the
single-run report of before carried its images): the ratio says how much less the browser must read before
it can show anything. --browser: open the page in headless chromium (if there) and time until the table and
the curves are drawn, and count the images the browser actually fetched (lazy loading).
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dcgan import pictures  # noqa: E402
from dcgan.report import site  # noqa: E402
from dcgan.report.collect import Experiment  # noqa: E402

# dvc.yaml's line plots: (title, series)
PLOTS = [("Losses", ["loss_d", "loss_g"]), ("Discriminator output", ["d_real", "d_fake", "d_train", "d_val"]),
         ("Quality during training", ["swd"]), ("Throughput (images/s)", ["images_per_s"])]


def fabricate(site: Path, n_exps: int, n_grids: int, n_epochs: int, seed: int = 0) -> tuple[list, list]:
    """(experiments, charts) as collect.py returns them, with the grids written under site/plots."""
    from dvc_render import VegaRenderer

    rng = np.random.default_rng(seed)
    plots = site / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    distinct = []
    for i in range(min(n_grids, 100)):
        p = plots / f"distinct-{i:03d}.png"
        pictures.save_png(pictures.grid(rng.integers(0, 256, (64, 1, 16, 16), dtype=np.uint8), nrow=8), p)
        distinct.append(p)
    exps, series = [], {}
    per_epoch = 4992
    for k in range(n_exps):
        name = f"exp-{k:03d}"
        e = Experiment(id=name, rev=name, kind="experiment", baseline="abc1234", state="success",
                       params={"lr_g": [1e-4, 2e-4, 5e-4][k % 3], "seed": k // 3, "nz": 100, "epochs": n_epochs})
        e.metrics["train"] = {"epochs_done": n_epochs, "images_seen": n_epochs * per_epoch, "wall_s": 60 + k,
                              "best_swd": float(20 + rng.random() * 10), "d_val": 0.6, "d_train": 0.7,
                              "device": "cpu"}
        e.metrics["eval"] = {"swd": float(20 + rng.random() * 10), "swd_floor": 13.4, "rkid": float(rng.random()),
                             "rkid_floor": -1.0, "c2st": float(0.5 + rng.random() / 2), "c2st_floor": 0.48,
                             "d_accuracy": 0.9, "memorisation_ratio": 1.1}
        epochs = np.unique(np.geomspace(1, n_epochs, n_grids).round().astype(int))
        epochs = np.unique(np.concatenate([epochs, np.arange(1, n_epochs + 1)]))[-n_grids:] \
            if len(epochs) < n_grids else epochs
        for j, epoch in enumerate(epochs):
            p = plots / f"{name}_metrics_train_plots_images_samples_{epoch:05d}.png"
            if not p.exists():
                os.link(distinct[j % len(distinct)], p)
            e.grids.append((int(epoch), p.relative_to(site)))
        for _, names in PLOTS:
            for s in names:
                walk = np.cumsum(rng.normal(0, 0.05, n_epochs)) + 1
                series.setdefault(s, []).extend({"step": str(t), s: repr(float(v)), "rev": name} for t, v in
                                                enumerate(walk))
        exps.append(e)
    charts = []
    for title, names in PLOTS:   # shaped as dvc/render/converter/vega.py shapes them for VegaRenderer
        y = names[0] if len(names) == 1 else "dvc_inferred_y_value"
        short = {s: f"{s}.tsv" if len(names) > 1 else f"metrics/train/plots/metrics/{s}.tsv" for s in names}
        points = [{"step": d["step"], y: d[s], "rev": d["rev"], "filename": short[s], "field": s}
                  for s in names for d in series[s]]
        props = {"template": "linear", "x": "step", "y": y, "title": title,
                 "anchors_y_definitions": [{"filename": short[s], "field": s} for s in names],
                 "revs_with_datapoints": [e.rev for e in exps]}
        charts.append({"title": title, "spec": VegaRenderer(points, title, **props).get_filled_template()})
    return exps, charts


def inline_size(site: Path, exps: list) -> int:
    """Bytes of one page that carries every grid as base64 (the single-file way)."""
    return sum(len(base64.b64encode((site / p).read_bytes())) + 40 for e in exps for _, p in e.grids)


def in_browser(index: Path) -> dict:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_bin = shutil.which("chromedriver")
    if not (chromium and driver_bin):
        return {"browser": "skipped: no chromium + chromedriver"}
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1300,1000",
              "--allow-file-access-from-files"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(driver_bin), options=opts)
    try:
        t0 = time.perf_counter()
        driver.get(index.resolve().as_uri())
        drawn = "return document.querySelectorAll('#charts svg.marks').length"
        while driver.execute_script(drawn) == 0 and time.perf_counter() - t0 < 120:
            time.sleep(0.05)
        ready = time.perf_counter() - t0
        count = "return Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).length"
        time.sleep(1)
        before = driver.execute_script(count)     # the table fills the first screen: no grid fetched yet
        driver.execute_script("document.getElementById('grids').scrollIntoView()")
        time.sleep(2)
        return {"browser_ready_s": round(ready, 2), "img_elements": driver.execute_script(
                "return document.images.length"), "images_loaded_at_top": before,
                "images_loaded_at_grids": driver.execute_script(count)}
    finally:
        driver.quit()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiments", type=int, default=100)
    ap.add_argument("--grids", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--out", type=Path, default=Path("/tmp/report-scale"))
    ap.add_argument("--browser", action="store_true")
    args = ap.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    t0 = time.perf_counter()
    exps, charts = fabricate(args.out, args.experiments, args.grids, max(args.epochs, args.grids))
    made = time.perf_counter() - t0
    t0 = time.perf_counter()
    site.write_site(args.out, exps, charts, "scale test")
    built = time.perf_counter() - t0
    index = args.out / "index.html"
    pages = sum(f.stat().st_size for f in (args.out / "exp").glob("*.html"))
    grids = sum(len(e.grids) for e in exps)
    inline = inline_size(args.out, exps)
    result = {"experiments": len(exps), "grids": grids, "build_s": round(built, 2), "fabricate_s": round(made, 2),
              "index_html_mb": round(index.stat().st_size / 1e6, 2), "assets_mb": round(
                  sum(f.stat().st_size for f in (args.out / "assets").iterdir()) / 1e6, 2),
              "experiment_pages_mb": round(pages / 1e6, 2), "image_files": grids,
              "inline_page_mb": round(inline / 1e6, 1),
              "ratio_inline_vs_index": round(inline / index.stat().st_size, 1)}
    if args.browser:
        result.update(in_browser(index))
    print(f"{len(exps)} experiments x {args.grids} grids: built in {built:.1f} s; index.html "
          f"{result['index_html_mb']} MB (+ {result['assets_mb']} MB of scripts, loaded once), a page per "
          f"experiment ({result['experiment_pages_mb']} MB in all), {grids} grid files loaded lazily; the same "
          f"grids inlined would make a {result['inline_page_mb']} MB page ({result['ratio_inline_vs_index']}x)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
