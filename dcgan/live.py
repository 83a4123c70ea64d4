"""The train stage's dvclive folder: one step per epoch, resumed exactly, and a bounded number of sample grids.

Layout (each part its own output in dvc.yaml): plots/metrics/*.tsv and metrics.json are small and go to
git; plots/images/samples/<epoch>.png are DVC-cached, so a run of any length adds only hashes to git.
"""
from __future__ import annotations

import csv
from pathlib import Path

GRIDS_PER_RUN = 100  # `sample_every: auto` logs about this many grids, whatever `epochs` is


def grid_epochs(sample_every: int | str, epochs: int) -> set[int]:
    """Epochs that get a sample grid. An int N: every N-th epoch. 'auto': about GRIDS_PER_RUN epochs spaced
    geometrically (every epoch early on, when samples change fastest, then further and further apart).
    The last epoch always gets one."""
    if sample_every != "auto":
        return set(range(sample_every, epochs + 1, sample_every)) | {epochs}
    if epochs <= GRIDS_PER_RUN:
        return set(range(1, epochs + 1))
    n = GRIDS_PER_RUN
    while True:  # rounding merges early points: ask for more until about GRIDS_PER_RUN distinct epochs remain
        chosen = {round(epochs ** (k / (n - 1))) for k in range(n)}
        if len(chosen) >= GRIDS_PER_RUN:
            return chosen | {epochs}
        n += 1


def truncate(live_dir: Path, last_step: int):
    """Drop series rows and sample grids logged after the checkpoint that a killed run resumes from."""
    for tsv in (live_dir / "plots" / "metrics").glob("**/*.tsv"):
        with open(tsv, newline="") as f:
            rows = list(csv.reader(f, delimiter="\t"))
        if not rows:
            continue
        step_col = rows[0].index("step") if "step" in rows[0] else None
        # a row cut short by the kill (fewer fields than the header) is dropped with the later ones
        keep = [rows[0]] + [r for r in rows[1:] if len(r) == len(rows[0]) and
                            (step_col is None or int(r[step_col]) <= last_step)]
        with open(tsv, "w", newline="") as f:
            csv.writer(f, delimiter="\t", lineterminator="\n").writerows(keep)
    for img in (live_dir / "plots" / "images").glob("**/*.png"):
        if img.stem.isdigit() and int(img.stem) > last_step:
            img.unlink()


def open_live(live_dir: Path, resume_from: int):
    """A dvclive Live at `live_dir`: fresh (its old series and grids removed) when resume_from is 0, else
    continuing after step `resume_from` with anything logged later dropped."""
    from dvclive import Live

    if resume_from > 0:
        truncate(live_dir, resume_from)
    # dvcyaml=False: dvc.yaml declares the plots; save_dvc_exp=False: `dvc exp run` makes the experiment
    return Live(str(live_dir), resume=resume_from > 0, dvcyaml=False, save_dvc_exp=False)
