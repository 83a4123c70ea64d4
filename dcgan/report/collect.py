"""What the repository knows, asked of DVC: every experiment's params and metrics (`dvc exp show --json`),
and the curves and pictures of `dvc.yaml`'s plots for all of them at once (`dvc plots diff --json`).

Both are DVC's public commands, so the page shows exactly what `dvc exp show` and `dvc plots diff` would: the
plot definitions are DVC's (its Vega-Lite templates, filled with every experiment's data), the images come
out of DVC's cache (or its remote), and what DVC cannot find for an experiment is listed, not dropped.
"""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

from ..errors import UserError

METRIC_FILES = {"metrics/train.json": "train", "metrics/eval.json": "eval", "metrics/encoder.json": "encoder"}
GRIDS = "metrics/train/plots/images/samples/"    # dvclive's fixed-noise grids, one per logged epoch
GRID_OUT = "metrics/train/plots/images"           # the DVC output that holds them (in DVC's cache, not git)
EVAL_PICTURES = "metrics/eval/"                   # the evaluate stage's pictures


@dataclass
class Experiment:
    """One row of the page: the workspace, a commit of the branch, or a `dvc exp` experiment."""
    id: str            # unique and safe in a file name: 'workspace', a short commit, or the experiment's name
    rev: str           # what DVC calls it: 'workspace', a full commit, or the experiment's name
    kind: str          # workspace | commit | experiment
    baseline: str      # the commit it is based on (short)
    state: str = ""    # an experiment's queue state: success, queued, running, failed
    created: str = ""
    params: dict = field(default_factory=dict)
    metrics: dict[str, dict] = field(default_factory=dict)   # train / eval / encoder -> that file's data
    grids: list[tuple[int, Path]] = field(default_factory=list)   # (epoch, image), by epoch
    pictures: dict[str, Path] = field(default_factory=dict)       # evaluate's pictures by file name
    missing: list[str] = field(default_factory=list)             # one line each: what, and how to get it
    outs: set[str] = field(default_factory=set)                  # DVC outputs this revision records (a hash)

    @property
    def how_to_fetch(self) -> str:
        if self.kind == "experiment":
            return f"dvc exp pull <remote> {self.rev}"
        if self.kind == "commit":
            return "dvc fetch --all-commits"
        return "dvc repro"


@dataclass
class Selection:
    """Which experiments go on the page (all when empty): names (globs), commits (prefixes), params."""
    names: list[str] = field(default_factory=list)
    commits: list[str] = field(default_factory=list)
    where: dict[str, str] = field(default_factory=dict)   # param -> value as typed (`-S` style)

    def admits(self, e: Experiment) -> bool:
        if self.names and not any(fnmatchcase(e.id, n) or fnmatchcase(e.rev, n) for n in self.names):
            return False
        if self.commits and not any(e.rev.startswith(c) or e.baseline.startswith(c[:7]) for c in self.commits):
            return False
        return all(_same_value(e.params.get(k), v) for k, v in self.where.items())


def _same_value(value, typed: str) -> bool:
    """`typed` as -S takes it: YAML, and 1e-4 a float (YAML 1.1 reads it as text; params.py does the same)."""
    import yaml

    from ..params import FLOAT_TEXT
    try:
        parsed = yaml.safe_load(typed)
    except yaml.YAMLError:
        parsed = typed
    if isinstance(parsed, str) and FLOAT_TEXT.match(parsed):
        parsed = float(parsed)
    return value == parsed or str(value) == typed


def dvc(args: list[str], repo: Path) -> str:
    """stdout of `dvc <args>` in repo; UserError with DVC's own last line when it fails."""
    r = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True, text=True)
    if r.returncode != 0 and not r.stdout.strip():
        last = next((line for line in reversed(r.stderr.splitlines()) if line.strip()), "no output")
        raise UserError(f"`dvc {' '.join(args[:3])} ...` failed in {repo}: {last.strip()}")
    return r.stdout


def experiments(repo: Path, commits: int | None = None) -> tuple[list[Experiment], int]:
    """Every experiment `dvc exp show` knows on the last `commits` commits of the branch (all by default):
    the workspace and commits that have results, and every experiment of them (queued and failed ones too).
    Also returns how many commits were left out for having no results."""
    if commits is None:
        r = subprocess.run(["git", "rev-list", "--count", "HEAD"], cwd=repo, capture_output=True, text=True)
        commits = int(r.stdout.strip() or 1) if r.returncode == 0 else 1
    return parse_show(json.loads(dvc(["exp", "show", "--json", "-n", str(max(commits, 1))], repo) or "[]"))


def parse_show(shown: list[dict]) -> tuple[list[Experiment], int]:
    """Experiments from `dvc exp show --json`'s output, and the number of commits without results."""
    found, empty = [], 0
    for top in shown:
        sha = top["rev"]
        base = "workspace" if sha == "workspace" else sha[:7]
        row = _experiment(top.get("data") or {}, "workspace" if sha == "workspace" else base,
                          sha, "workspace" if sha == "workspace" else "commit", base)
        if row.metrics:
            found.append(row)
        elif sha != "workspace":
            empty += 1
        for group in top.get("experiments") or []:
            state = ((group.get("executor") or {}).get("state") or "").lower()
            for r in group.get("revs") or []:
                name = r.get("name") or group.get("name") or r["rev"][:7]
                found.append(_experiment(r.get("data") or {}, name, name, "experiment", base, state))
    return found, empty


def _experiment(data: dict, id_: str, rev: str, kind: str, baseline: str, state: str = "") -> Experiment:
    e = Experiment(id=_safe(id_), rev=rev, kind=kind, baseline=baseline, state=state,
                   created=(data.get("timestamp") or "")[:16].replace("T", " "))
    e.params = ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}
    for path, short in METRIC_FILES.items():
        got = (data.get("metrics") or {}).get(path) or {}
        if isinstance(got.get("data"), dict):
            e.metrics[short] = got["data"]
    e.outs = {path for path, out in (data.get("outs") or {}).items() if (out or {}).get("hash")}
    if "train" not in e.metrics and kind == "experiment":
        e.missing.append("metrics/train.json: none yet" + (f" (the experiment is {state})" if state else ""))
    return e


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def plots(repo: Path, exps: list[Experiment], out: Path) -> list[dict]:
    """`dvc plots diff` of every experiment with data: each one's sample grids and evaluation pictures (DVC
    copies them into `out`) are attached to it, what DVC could not load is added to its `missing`, and the
    Vega-Lite plots (DVC's templates filled with every experiment's series) are returned as [{title, spec}]."""
    with_data = [e for e in exps if e.metrics]
    if not with_data:
        return []
    out.mkdir(parents=True, exist_ok=True)
    text = dvc(["plots", "diff", "--json", "-o", str(out.resolve()), *[e.rev for e in with_data]], repo)
    result = json.loads(text or "{}")
    by_rev = {e.rev: e for e in with_data}
    charts = []
    for name, renderers in (result.get("data") or {}).items():
        for r in renderers:
            if r.get("type") == "vega":
                charts.append({"title": name, "spec": r["content"]})
            elif r.get("type") == "image":
                for rev in r.get("revisions") or []:
                    if rev in by_rev:
                        _attach(by_rev[rev], name, Path(r["url"]))
    for err in result.get("errors") or []:
        e = by_rev.get(err.get("rev"))
        if e is not None:
            _note_missing(e, err)
    for e in with_data:
        e.grids.sort()
        if not e.grids and GRID_OUT in e.outs:   # DVC could not even list the folder: no error per file
            _note_missing(e, {"source": GRIDS + "?", "msg": "storage"})
    return charts


def _attach(e: Experiment, name: str, image: Path):
    if name.startswith(GRIDS) and Path(name).stem.isdigit():
        e.grids.append((int(Path(name).stem), image))
    elif name.startswith(EVAL_PICTURES):
        e.pictures[Path(name).name] = image


def _note_missing(e: Experiment, err: dict):
    """One line per missing output (a missing grid is one of many: its folder is named once)."""
    source = (err.get("source") or err.get("name") or "?").rstrip("/")
    if source.startswith(GRID_OUT):
        if GRID_OUT in e.outs or "storage" in (err.get("msg") or ""):
            line = f"{GRIDS}: not in the local DVC cache (run `{e.how_to_fetch}`)"
        else:   # DVC read the absent folder as a table
            line = f"{GRID_OUT}: not at this revision"
    else:
        line = f"{source}: {err.get('type') or 'missing'}"
    if line not in e.missing:
        e.missing.append(line)
