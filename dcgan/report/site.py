"""The site: ask DVC (collect.py), write the pages (page.py) into a folder beside report/, swap it in whole."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from ..files import atomic_write_text
from . import collect, page
from .collect import Experiment, Selection

VEGA_LITE = "5.21"     # DVC's templates declare Vega-Lite v5
DEFAULT_TICKED = 12    # rows drawn below the table at first (the reader ticks others)


def vega_bundle() -> str:
    """Vega, Vega-Lite and Vega-Embed as one script (vl-convert-python ships them: no CDN)."""
    import vl_convert
    return vl_convert.javascript_bundle(vl_version=VEGA_LITE)


def build(repo: Path = Path("."), out: Path = Path("report"), selection: Selection | None = None,
          commits: int | None = None, title: str = "DCGAN experiments", log=print) -> Path:
    """Collect every experiment from DVC (those `selection` admits) and write the site to `out`."""
    t0 = time.perf_counter()
    exps, empty = collect.experiments(repo, commits)
    exps = [e for e in exps if (selection or Selection()).admits(e)]
    tmp = Path(out).parent / f".{Path(out).name}.building-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    charts = collect.plots(repo, exps, tmp / "plots")
    root = tmp.resolve()
    for e in exps:   # DVC gave absolute paths into tmp: make them the site's own
        e.grids = [(epoch, Path(p).resolve().relative_to(root)) for epoch, p in e.grids]
        e.pictures = {k: Path(p).resolve().relative_to(root) for k, p in e.pictures.items()}
    # `dvc plots diff` of one revision adds the workspace: keep the chosen ones only
    charts = page.for_revs(charts, {e.rev for e in exps})
    notes = [f"{empty} commit{'s' * (empty != 1)} without results (no metrics/train.json) "
             f"{'are' if empty != 1 else 'is'} not listed."] if empty else []
    write_site(tmp, exps, charts, title, notes)
    swap(tmp, Path(out))
    log(f"wrote {Path(out) / 'index.html'}: {len(exps)} experiments, {sum(len(e.grids) for e in exps)} grids, "
        f"{size_mb(Path(out)):.1f} MB in {time.perf_counter() - t0:.1f} s")
    return Path(out) / "index.html"


def write_site(site: Path, exps: list[Experiment], charts: list[dict], title: str, notes: list[str] = (),
               vega_js: str | None = None):
    """The pages of `exps` into `site` (their grids and pictures are paths relative to it)."""
    ticked = [e.id for e in exps[:DEFAULT_TICKED]]
    page.assets(site, vega_js if vega_js is not None else vega_bundle())
    (site / "exp").mkdir(parents=True, exist_ok=True)
    for e in exps:
        atomic_write_text(site / "exp" / f"{e.id}.html", page.experiment(site, e, charts, title))
    atomic_write_text(site / "index.html", page.index(site, exps, charts, title, list(notes), ticked))


def swap(new: Path, out: Path):
    """Replace `out` by `new` (a folder beside it) with a rename, so readers see the old or the new site."""
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        out.rename(old)
    new.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def size_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6
