"""The HTML: report/index.html (every experiment side by side) and report/exp/<id>.html (one experiment).

Python writes the tables and the data; assets/report.js sorts, filters, moves the grid sliders and draws the
curves with Vega-Embed from DVC's own Vega-Lite specs (assets/vega.js, bundled by vl-convert: no network).
Images are files next to the page, loaded lazily, so a hundred experiments of a hundred grids stay usable.
"""
from __future__ import annotations

import html
import json
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .. import evaluation
from .table import Column, best, columns

if TYPE_CHECKING:
    from .collect import Experiment

STATIC = Path(__file__).parent / "static"


def fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}".replace(",", "\u2009") if abs(v) >= 10_000 else str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return "n/a"
        a = abs(v)
        if a >= 100:
            return f"{v:.1f}"
        if a >= 1:
            return f"{v:.2f}"
        return f"{v:.4g}"
    return html.escape(str(v))


def fmt_key(key: str, v) -> str:
    if "accuracy" in key and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        return f"{100 * v:.1f}%"
    if key.endswith("wall_s") and isinstance(v, (int, float)) and v >= 120:
        return f"{v:.1f} ({v / 60:.1f} min)"
    return fmt(v)


def _sort_value(v) -> str:
    """A cell's data-v: numbers as numbers, the rest as text, nothing for no value (sorted last)."""
    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v)
    if isinstance(v, (int, float)):
        return repr(float(v)) if math.isfinite(v) else ""
    return html.escape(str(v), quote=True)


def _json_script(id_: str, data) -> str:
    text = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    return f'<script id="{id_}" type="application/json">{text}</script>'


def _page(title: str, body: str, depth: int) -> str:
    up = "../" * depth
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title><link rel=\"stylesheet\" href=\"{up}assets/report.css\">"
            f"<script src=\"{up}assets/vega.js\"></script><script src=\"{up}assets/report.js\" defer></script>"
            f"</head><body><main>{body}</main></body></html>\n")


def images_per_epoch(e: Experiment) -> float | None:
    t = e.metrics.get("train", {})
    if isinstance(t.get("images_seen"), (int, float)) and t.get("epochs_done"):
        return t["images_seen"] / t["epochs_done"]
    return None


def grid_list(e: Experiment, site: Path, page_dir: Path) -> list:
    """[[epoch, images seen or null, src relative to the page], ...]"""
    per = images_per_epoch(e)
    return [[epoch, round(epoch * per) if per else None, _rel(img, site, page_dir)] for epoch, img in e.grids]


def _rel(img: Path, site: Path, page_dir: Path) -> str:
    return Path(os.path.relpath(site / img, page_dir)).as_posix()


def _label(e: Experiment) -> str:
    return {"workspace": "workspace", "commit": f"commit {e.baseline}"}.get(e.kind, e.rev)


# ---------------------------------------------------------------------------------------------- index

def index(site: Path, exps: list[Experiment], charts: list[dict], title: str, notes: list[str],
          selected: list[str]) -> str:
    cols = columns(exps)
    bests = {c.key: best(c, exps) for c in cols}
    head = ['<th class="pick"><input type="checkbox" id="pick-all" checked title="select all shown"></th>',
            '<th data-col="name">experiment</th>', '<th data-col="kind">of</th>']
    head += [f'<th data-col="{html.escape(c.key)}" class="col-{c.group}" title="{html.escape(c.help, quote=True)}">'
             f'{html.escape(c.label)}{_arrow(c)}</th>' for c in cols]
    rows = []
    for e in exps:
        of = "workspace" if e.kind == "workspace" else e.baseline + (f" · {e.state}" if e.state else "")
        cells = [f'<td class="pick"><input type="checkbox" class="pick"{" checked" if e.id in selected else ""}>'
                 f'</td>', f'<td data-v="{html.escape(e.id, quote=True)}"><a href="exp/{e.id}.html">'
                 f'{html.escape(_label(e))}</a>' + (f' <span class="warn" title="{html.escape("; ".join(e.missing), quote=True)}">'
                                                    f'missing: {len(e.missing)}</span>' if e.missing else "") + "</td>",
                 f'<td data-v="{html.escape(of, quote=True)}" class="muted">{html.escape(of)}</td>']
        for c in cols:
            v = c.value(e)
            mark = ' class="num best"' if e.id in bests[c.key] else ' class="num"'
            cells.append(f'<td data-v="{_sort_value(v)}"{mark}>{fmt_key(c.label, v)}</td>')
        rows.append(f'<tr data-id="{html.escape(e.id, quote=True)}">{"".join(cells)}</tr>')
    missing = [e for e in exps if e.missing]
    gaps = "".join(f'<li><a href="exp/{e.id}.html">{html.escape(_label(e))}</a>: '
                   f'{html.escape("; ".join(e.missing))}</li>' for e in missing)
    data = {"experiments": [{"id": e.id, "rev": e.rev, "label": _label(e), "page": f"exp/{e.id}.html",
                             "grids": grid_list(e, site, site)} for e in exps],
            "charts": charts}
    body = [f"<header><h1>{html.escape(title)}</h1><p>{len(exps)} experiments, built "
            f"{time.strftime('%Y-%m-%d %H:%M')} from <code>dvc exp show</code> and <code>dvc plots diff</code>."
            + "".join(f" {html.escape(n)}" for n in notes) + "</p></header>",
            '<section class="panel"><div class="controls"><input id="filter" type="search" '
            'placeholder="filter rows: words of a name, a commit or a value" size="48">'
            '<span class="muted">click a column to sort; <span class="best-key">green</span> = best of the '
            'column; the ticked rows are drawn below</span></div>'
            f'<div class="scroll"><table id="experiments"><thead><tr>{"".join(head)}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div></section>']
    if gaps:
        body.append(f'<details class="panel gaps"><summary>{len(missing)} experiments miss some outputs '
                    f'(listed, not dropped)</summary><ul>{gaps}</ul></details>')
    body.append('<h2>Samples</h2><p class="muted"><label><input type="checkbox" id="link" checked> move the '
                'sliders together (matched by images seen)</label></p><div id="grids" class="grids"></div>')
    body.append('<h2>Curves</h2><p class="muted">dvc.yaml\'s plots, drawn from DVC\'s own definitions and data '
                'for the ticked rows.</p><div id="charts" class="charts"></div>')
    body.append(_json_script("report-data", data))
    return _page(title, "".join(body), 0)


def _arrow(c: Column) -> str:
    if c.lower_is_better is None:
        return ""
    return ' <span class="muted">↓</span>' if c.lower_is_better else ' <span class="muted">↑</span>'


# ---------------------------------------------------------------------------------------------- one experiment

def experiment(site: Path, e: Experiment, charts: list[dict], title: str) -> str:
    page_dir = site / "exp"
    train, ev = e.metrics.get("train"), e.metrics.get("eval")
    parts = [f'<p><a href="../index.html">← all experiments</a></p><header><h1>{html.escape(_label(e))}</h1>'
             f'<p>{html.escape(e.kind)} of commit <code>{html.escape(e.baseline)}</code>'
             + (f", {html.escape(e.state)}" if e.state else "") + (f", {html.escape(e.created)}" if e.created else "")
             + "</p></header>", _cards(train, ev)]
    if e.missing:
        parts.append('<div class="panel gaps"><h3>Missing</h3><ul>'
                     + "".join(f"<li>{html.escape(m)}</li>" for m in e.missing) + "</ul></div>")
    parts.append('<h2>Training</h2><div id="charts" class="charts"></div>')
    if e.grids:
        parts.append(f'<h3 class="sub">Fixed-noise samples during training ({len(e.grids)} grids)</h3>'
                     '<div id="grids" class="grids"></div>')
    parts.append("<h2>Evaluation</h2>")
    captions = {"samples.png": "generated images (the first 64)",
                "confusion_matrix.png": "the discriminator classifying held-out real and generated images",
                "memorisation.png": "closest pairs: generated | nearest training image, closest first"}
    figs = [f'<figure><img loading="lazy" src="{_rel(p, site, page_dir)}" alt="{html.escape(name)}">'
            f'<figcaption>{html.escape(captions.get(name, name))}</figcaption></figure>'
            for name, p in sorted(e.pictures.items())]
    parts.append(f'<div class="eval">{"".join(figs)}</div>' if figs else
                 '<p class="missing">No evaluation pictures (metrics/eval/): run <code>dvc repro evaluate</code>.</p>')
    tables = []
    if ev:
        tables.append(f'<div class="panel"><h3>metrics/eval.json</h3>'
                      f'{_table(ev, {k: evaluation.key_help(k) for k in ev})}</div>')
    if train:
        tables.append(f'<div class="panel"><h3>metrics/train.json</h3>{_table(train)}</div>')
    if e.params:
        tables.append(f'<div class="panel"><h3>params.yaml</h3>{_table(e.params)}</div>')
    if tables:
        parts.append(f'<h2>Metrics and params</h2><div class="tables">{"".join(tables)}</div>')
    data = {"experiments": [{"id": e.id, "rev": e.rev, "label": _label(e), "page": f"{e.id}.html",
                             "grids": grid_list(e, site, page_dir)}], "charts": for_revs(charts, {e.rev})}
    parts.append(_json_script("report-data", data))
    return _page(f"{_label(e)} · {title}", "".join(parts), 1)


def _table(data: dict, help_: dict | None = None) -> str:
    rows = []
    for k, v in data.items():
        h = (help_ or {}).get(k, "")
        rows.append(f'<tr><th>{html.escape(str(k))}</th><td class="num">{fmt_key(k, v)}</td>'
                    + (f'<td class="help">{html.escape(h)}</td>' if help_ is not None else "") + "</tr>")
    return "<table>" + "".join(rows) + "</table>"


def _cards(train: dict | None, ev: dict | None) -> str:
    train, ev = train or {}, ev or {}
    cards = []

    def card(value: str, key: str, sub: str = ""):
        cards.append(f'<div class="card"><div class="v">{value}</div><div class="k">{key}</div>'
                     + (f'<div class="s">{sub}</div>' if sub else "") + "</div>")

    if "epochs_done" in train:
        card(fmt(train["epochs_done"]), "epochs trained",
             f"{train['wall_s'] / 60:.1f} min" if isinstance(train.get("wall_s"), (int, float)) else "")
    for key, label in (("swd", "SWD x10³ (lower is better)"), ("rkid", "rkid x10³ (lower is better)"),
                       ("c2st", "c2st: a classifier tells generated from test (0.5 = never)")):
        if key in ev:
            card(fmt(ev[key]), label, f"real-vs-real floor {fmt(ev.get(key + '_floor'))}")
    if ev:
        card(fmt(ev.get("fid")), "FID (lower is better)",
             f"floor {fmt(ev.get('fid_floor'))}" if ev.get("fid") is not None else "Inception weights absent")
    if "d_accuracy" in ev:
        card(fmt_key("d_accuracy", ev["d_accuracy"]), "D accuracy, real vs generated", "50% = fooled")
    if "memorisation_ratio" in ev:
        card(fmt(ev["memorisation_ratio"]), "memorisation ratio",
             f"median NN distance {fmt(ev.get('memorisation_median_distance'))} vs "
             f"{fmt(ev.get('memorisation_median_distance_test'))} for test images")
    return f'<div class="cards">{"".join(cards)}</div>' if cards else ""


def for_revs(charts: list[dict], revs: set[str]) -> list[dict]:
    """The charts with only these experiments' data, and only those that have some."""
    out = []
    for c in charts:
        spec = dict(c["spec"])
        values = [d for d in (spec.get("data") or {}).get("values") or [] if d.get("rev") in revs]
        if values:
            spec["data"] = {**spec["data"], "values": values}
            out.append({"title": c["title"], "spec": spec})
    return out


def assets(site: Path, vega_js: str):
    (site / "assets").mkdir(parents=True, exist_ok=True)
    (site / "assets" / "vega.js").write_text(vega_js)
    for name in ("report.js", "report.css"):
        (site / "assets" / name).write_bytes((STATIC / name).read_bytes())
