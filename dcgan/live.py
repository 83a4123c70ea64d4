"""The train stage's dvclive folder: one step per epoch, resumed exactly, and a bounded number of sample grids.

Layout (each part its own output in dvc.yaml): plots/metrics/*.tsv and metrics.json are small and go to
git; plots/images/samples/<epoch>.png are DVC-cached, so a run of any length adds only hashes to git.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from .files import atomic_write, atomic_write_text

SUMMARY = "metrics.json"  # dvclive's summary file in the live folder
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
    """Drop series rows and sample grids logged after the checkpoint that a killed run resumes from, and set
    the summary (metrics.json, which dvclive reads on resume) to the last kept values. Every file is rewritten
    atomically: a kill during the resume leaves it whole, and a summary that the kill cut short is rebuilt."""
    metrics_dir = live_dir / "plots" / "metrics"
    latest: dict[tuple[str, ...], str | None] = {}   # each series' last kept value (None: no row kept)
    for tsv in sorted(metrics_dir.glob("**/*.tsv")):
        with open(tsv, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f, delimiter="\t"))
        if not rows:
            continue
        step_col = rows[0].index("step") if "step" in rows[0] else None
        # a row cut short by the kill (fewer fields than the header) is dropped with the later ones
        keep = [rows[0]] + [r for r in rows[1:] if len(r) == len(rows[0]) and
                            (step_col is None or int(r[step_col]) <= last_step)]
        if keep != rows:
            atomic_write(tsv, _tsv_writer(keep))
        latest[tsv.relative_to(metrics_dir).with_suffix("").parts] = keep[-1][-1] if len(keep) > 1 else None
    for img in (live_dir / "plots" / "images").glob("**/*.png"):
        if img.stem.isdigit() and int(img.stem) > last_step:
            img.unlink()
    _rewrite_summary(live_dir / SUMMARY, latest, last_step)


def _tsv_writer(rows: list[list[str]]):
    def write(f):
        text = io.TextIOWrapper(f, encoding="utf-8", newline="")
        try:
            csv.writer(text, delimiter="\t", lineterminator="\n").writerows(rows)
        finally:
            text.detach()   # flushes; `f` stays open for atomic_write
    return write


def _rewrite_summary(path: Path, latest: dict[tuple[str, ...], str | None], step: int):
    """dvclive's summary as of `step`: its keys nest as the series' folders do (a/b.tsv -> {"a": {"b": ...}})."""
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):   # missing, or cut short by a kill while dvclive wrote it
        summary = None
    if not isinstance(summary, dict):
        if summary is None and not latest:
            return
        summary = {}
    for parts, value in latest.items():
        node = summary
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        if value is None:
            node.pop(parts[-1], None)
        else:
            node[parts[-1]] = _number(value)
    summary["step"] = step
    atomic_write_text(path, json.dumps(summary, indent=4) + "\n")   # as dvclive writes it


def _number(text: str) -> int | float | str:
    """A series value as dvclive logged it: an int, a float, or (dvclive takes those too) a string."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def open_live(live_dir: Path, resume_from: int):
    """A dvclive Live at `live_dir`: fresh (its old series and grids removed) when resume_from is 0, else
    continuing after step `resume_from` with anything logged later dropped."""
    from dvclive import Live

    if resume_from > 0:
        truncate(live_dir, resume_from)
    # dvcyaml=False: dvc.yaml declares the plots; save_dvc_exp=False: `dvc exp run` makes the experiment
    return Live(str(live_dir), resume=resume_from > 0, dvcyaml=False, save_dvc_exp=False)
