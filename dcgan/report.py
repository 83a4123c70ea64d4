"""One self-contained HTML page about one run: training curves, samples over epochs, evaluation.

Reads what the train and evaluate stages write (dvclive series in metrics/train/plots/metrics/*.tsv,
sample grids in metrics/train/plots/images/samples/*.png, metrics/train.json, metrics/eval.json and
the pictures in metrics/eval/) and writes a single file: images are embedded as base64 data URIs,
curves are inline SVG, the style sheet is inline. No JavaScript, no fonts or scripts from the web:
the page opens offline, attached to an e-mail or from an artifact store.
"""
from __future__ import annotations

import base64
import csv
import html
import json
import math
import time
from pathlib import Path

from . import evaluation
from .files import atomic_write_text

PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#59a14f", "#b07aa1", "#76b7b2", "#edc948"]

# (title, series names, y label), as in dvc.yaml's plots
CHARTS = [
    ("Losses", ["loss_d", "loss_g"], "loss"),
    ("Discriminator output", ["d_real", "d_fake", "d_train", "d_val"], "mean D(x)"),
    ("Throughput", ["images_per_s"], "images / s"),
]
CHART_NOTES = {
    "Discriminator output": "d_val falling away below d_train (the same measurement on training images) means D memorises the training set (overfitting).",
}
# the in-training scores (dcgan.quality), each charted on its own: their scales differ
SERIES_NOTES = {
    "swd": "SWD x10³ of fixed-noise samples vs the val split (7x7 patches: texture); lower is better.",
    "rkid": "KID x10³ on random-network features of fixed-noise samples vs the val split (shape and "
            "composition); lower is better.",
    "c2st": "How often a classifier on random-network features tells fixed-noise samples from val images; "
            "0.5 = it cannot (the best), 1 = always.",
    "fid": "FID of fixed-noise samples vs the val split; lower is better.",
    "kid": "KID of fixed-noise samples vs the val split; lower is better.",
}


# ---------------------------------------------------------------------------------------------- inputs

def read_series(path: Path) -> tuple[list[float], list[float]]:
    """(steps, values) from a dvclive TSV with columns step, timestamp and the metric."""
    xs, ys = [], []
    with open(path, newline="") as f:
        rows = csv.DictReader(f, delimiter="\t")
        name = next((c for c in rows.fieldnames or [] if c not in ("step", "timestamp")), None)
        for row in rows:
            try:
                x, y = float(row["step"]), float(row[name])
            except (KeyError, TypeError, ValueError):
                continue
            if math.isfinite(x) and math.isfinite(y):
                xs.append(x)
                ys.append(y)
    return xs, ys


def read_json(path: Path) -> dict | None:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def pick_evenly(items: list, k: int) -> list:
    """Up to k items spread from the first to the last, both included."""
    if len(items) <= k:
        return list(items)
    idx = sorted({round(i * (len(items) - 1) / (k - 1)) for i in range(k)})
    return [items[i] for i in idx]


# ---------------------------------------------------------------------------------------------- formatting

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
    if "accuracy" in key and isinstance(v, (int, float)) and v is not None and math.isfinite(v):
        return f"{100 * v:.1f}%"
    if key.endswith("wall_s") and isinstance(v, (int, float)) and v >= 120:
        return f"{v:.1f} ({v / 60:.1f} min)"
    return fmt(v)


def _nice_step(span: float, target: int = 5) -> float:
    raw = span / max(target, 1)
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def _tick_label(v: float, step: float) -> str:
    """Ticks are multiples of step: as many decimals as the step needs."""
    if abs(v) < step * 1e-6:
        v = 0.0
    decimals = 0
    while decimals < 6 and abs(round(step, decimals) - step) > step * 1e-6:
        decimals += 1
    return f"{v:.{decimals}f}"


# ---------------------------------------------------------------------------------------------- SVG

def svg_chart(series: dict[str, tuple[list[float], list[float]]], ylabel: str = "", xlabel: str = "epoch",
              width: int = 400, height: int = 260) -> str:
    """A line chart as inline SVG (no xmlns needed inside HTML): axes, nice ticks, grid, legend."""
    series = {k: v for k, v in series.items() if v[0]}
    ml, mr, mt, mb = 58, 14, 34, 44
    pw, ph = width - ml - mr, height - mt - mb
    out = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
           f'aria-label="{html.escape(ylabel)} by {xlabel}">']
    if not series:
        out.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" class="muted">no data</text></svg>')
        return "".join(out)
    xs = [x for s in series.values() for x in s[0]]
    ys = [y for s in series.values() for y in s[1]]
    x0, x1 = min(xs), max(xs)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    y0, y1 = min(ys), max(ys)
    if y1 == y0:
        y0, y1 = y0 - (abs(y0) * 0.1 or 1), y1 + (abs(y1) * 0.1 or 1)
    ystep = _nice_step(y1 - y0)
    y0, y1 = math.floor(y0 / ystep) * ystep, math.ceil(y1 / ystep) * ystep
    xstep = max(1.0, _nice_step(x1 - x0, 8)) if x1 - x0 >= 1 else _nice_step(x1 - x0, 8)

    def sx(x):
        return ml + (x - x0) / (x1 - x0) * pw

    def sy(y):
        return mt + (1 - (y - y0) / (y1 - y0)) * ph

    # grid and ticks
    y = y0
    while y <= y1 + ystep / 2:
        out.append(f'<line class="grid" x1="{ml}" x2="{ml + pw}" y1="{sy(y):.1f}" y2="{sy(y):.1f}"/>')
        out.append(f'<text class="tick" x="{ml - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">{_tick_label(y, ystep)}</text>')
        y += ystep
    x = math.ceil(x0 / xstep) * xstep
    while x <= x1 + 1e-9:
        out.append(f'<line class="axis" x1="{sx(x):.1f}" x2="{sx(x):.1f}" y1="{mt + ph}" y2="{mt + ph + 4}"/>')
        out.append(f'<text class="tick" x="{sx(x):.1f}" y="{mt + ph + 17}" text-anchor="middle">'
                   f'{_tick_label(x, xstep)}</text>')
        x += xstep
    out.append(f'<line class="axis" x1="{ml}" x2="{ml + pw}" y1="{mt + ph}" y2="{mt + ph}"/>')
    out.append(f'<line class="axis" x1="{ml}" x2="{ml}" y1="{mt}" y2="{mt + ph}"/>')
    out.append(f'<text class="label" x="{ml + pw / 2}" y="{height - 6}" text-anchor="middle">{xlabel}</text>')
    out.append(f'<text class="label" transform="translate(14 {mt + ph / 2}) rotate(-90)" text-anchor="middle">'
               f'{html.escape(ylabel)}</text>')
    # lines
    for i, (name, (sxs, sys_)) in enumerate(series.items()):
        colour = PALETTE[i % len(PALETTE)]
        pts = " ".join(f"{sx(a):.1f},{sy(b):.1f}" for a, b in zip(sxs, sys_))
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" stroke-linejoin="round" points="{pts}">'
                   f'<title>{html.escape(name)}</title></polyline>')
        if len(sxs) <= 60:
            out.extend(f'<circle cx="{sx(a):.1f}" cy="{sy(b):.1f}" r="2.6" fill="{colour}">'
                       f'<title>{html.escape(name)} = {fmt(b)} at {xlabel} {fmt(a)}</title></circle>'
                       for a, b in zip(sxs, sys_))
    # legend, top left above the plot
    lx = ml
    for i, name in enumerate(series):
        colour = PALETTE[i % len(PALETTE)]
        out.append(f'<rect x="{lx}" y="12" width="14" height="4" rx="2" fill="{colour}"/>')
        out.append(f'<text class="legend" x="{lx + 19}" y="18">{html.escape(name)}</text>')
        lx += 30 + 8 * len(name)
    out.append("</svg>")
    return "".join(out)


# ---------------------------------------------------------------------------------------------- HTML

CSS = """
:root { --ink: #1f2328; --muted: #656d76; --line: #d0d7de; --bg: #f6f8fa; --card: #ffffff; --accent: #4e79a7; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
       font: 15px/1.5 -apple-system, "Segoe UI", "DejaVu Sans", Helvetica, Arial, sans-serif; }
main { max-width: 1120px; margin: 0 auto; padding: 28px 24px 48px; }
header h1 { margin: 0 0 4px; font-size: 26px; }
header p { margin: 0; color: var(--muted); }
h2 { font-size: 19px; margin: 34px 0 12px; padding-bottom: 6px; border-bottom: 1px solid var(--line); }
h3 { font-size: 15px; margin: 0 0 8px; }
h3.sub { margin: 22px 0 10px; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(160px, 1fr)); gap: 12px; margin-top: 20px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; }
.card .v { font-size: 24px; font-weight: 600; }
.card .k { color: var(--muted); font-size: 13px; }
.card .s { color: var(--muted); font-size: 12px; }
.panel { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 14px; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(320px, 1fr)); gap: 14px; }
.chart { width: 100%; height: auto; display: block; }
.chart .grid { stroke: #eaeef2; } .chart .axis { stroke: #8c959f; }
.chart .tick { font-size: 12.5px; fill: var(--muted); } .chart .label { font-size: 13px; fill: var(--muted); }
.chart .legend { font-size: 13px; fill: var(--ink); } .muted { fill: var(--muted); color: var(--muted); }
.note { color: var(--muted); font-size: 13px; margin: 6px 0 0; }
.epochs { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: 12px; }
figure { margin: 0; }
figure img { width: 100%; height: auto; display: block; image-rendering: pixelated; border-radius: 4px; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 4px; }
.eval { display: grid; grid-template-columns: repeat(auto-fit, minmax(320px, 1fr)); gap: 14px; align-items: start; }
.eval img.smooth { image-rendering: auto; }
.tables { display: grid; grid-template-columns: minmax(0, 2fr) minmax(0, 1fr); gap: 14px; align-items: start; }
@media (max-width: 800px) { .tables { grid-template-columns: 1fr; } }
table { border-collapse: collapse; width: 100%; font-size: 13.5px; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid #eaeef2; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.help { color: var(--muted); font-size: 12.5px; }
code { background: #eef1f4; padding: 1px 5px; border-radius: 4px; font-size: 13px; }
.missing { color: var(--muted); font-style: italic; }
footer { margin-top: 36px; color: var(--muted); font-size: 12px; }
"""


def _missing(what: str, how: str) -> str:
    return f'<p class="missing">{html.escape(what)} not found: run <code>{html.escape(how)}</code>.</p>'


def _figure(path: Path, caption: str, alt: str, cls: str = "") -> str:
    c = f' class="{cls}"' if cls else ""
    return (f'<figure><img{c} src="{data_uri(path)}" alt="{html.escape(alt)}">'
            f"<figcaption>{caption}</figcaption></figure>")


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
    if ev:
        if "swd" in ev:
            card(fmt(ev["swd"]), "SWD x10³ (lower is better)", f"real-vs-real floor {fmt(ev.get('swd_floor'))}")
        if "rkid" in ev:
            card(fmt(ev["rkid"]), "rkid x10³ (lower is better)", f"real-vs-real floor {fmt(ev.get('rkid_floor'))}")
        if "c2st" in ev:
            card(fmt(ev["c2st"]), "c2st: a classifier tells generated from test (0.5 = never)",
                 f"real-vs-real floor {fmt(ev.get('c2st_floor'))}")
        card(fmt(ev.get("fid")), "FID (lower is better)",
             f"floor {fmt(ev.get('fid_floor'))}" if ev.get("fid") is not None else "Inception weights absent")
        if "d_accuracy" in ev:
            card(fmt_key("d_accuracy", ev["d_accuracy"]), "D accuracy, real vs generated", "50% = fooled")
        if "memorisation_ratio" in ev:
            card(fmt(ev["memorisation_ratio"]), "memorisation ratio",
                 f"median NN distance {fmt(ev.get('memorisation_median_distance'))} vs "
                 f"{fmt(ev.get('memorisation_median_distance_test'))} for test images")
    return f'<div class="cards">{"".join(cards)}</div>' if cards else ""


def render(metrics_dir: Path = Path("metrics"), title: str = "DCGAN run report", max_grids: int = 6) -> str:
    m = Path(metrics_dir)
    live = m / "train" / "plots"
    train, ev = read_json(m / "train.json"), read_json(m / "eval.json")
    parts = [f"<header><h1>{html.escape(title)}</h1><p>Generated {time.strftime('%Y-%m-%d %H:%M')} "
             f"from <code>{html.escape(str(m))}</code>.</p></header>", _cards(train, ev)]

    # training curves
    parts.append("<h2>Training</h2>")
    tsvs = {p.stem: p for p in sorted((live / "metrics").glob("*.tsv"))}
    if tsvs:
        charts = []
        for name, keys, ylabel in CHARTS:
            series = {k: read_series(tsvs[k]) for k in keys if k in tsvs}
            if not series:
                continue
            note = f'<p class="note">{html.escape(CHART_NOTES[name])}</p>' if name in CHART_NOTES else ""
            charts.append(f'<div class="panel"><h3>{html.escape(name)}</h3>{svg_chart(series, ylabel)}{note}</div>')
        shown = {k for _, keys, _ in CHARTS for k in keys}
        for k in sorted(set(tsvs) - shown - {"epoch_s"}):
            note = f'<p class="note">{html.escape(SERIES_NOTES[k])}</p>' if k in SERIES_NOTES else ""
            charts.append(f'<div class="panel"><h3>{html.escape(k)}</h3>{svg_chart({k: read_series(tsvs[k])}, k)}'
                          f'{note}</div>')
        parts.append(f'<div class="charts">{"".join(charts)}</div>')
    else:
        parts.append(_missing(f"training curves ({live / 'metrics'}/*.tsv)", "dvc repro train"))

    # samples over epochs
    grids = sorted((live / "images" / "samples").glob("*.png"))
    if grids:
        picked = pick_evenly(grids, max_grids)
        figs = "".join(_figure(p, f"epoch {int(p.stem)}" if p.stem.isdigit() else html.escape(p.stem),
                               f"samples at {p.stem}") for p in picked)
        parts.append(f'<h3 class="sub">Fixed-noise samples during training ({len(picked)} of {len(grids)}, '
                     f'first to last)</h3><div class="epochs">{figs}</div>')

    # evaluation
    parts.append("<h2>Evaluation</h2>")
    ed = m / "eval"
    figs = []
    if (ed / "samples.png").is_file():
        n = ev.get("n_generated") if ev else None
        figs.append(_figure(ed / "samples.png", f"generated images (first 64 of {fmt(n)})" if n else "generated images",
                            "generated samples"))
    if (ed / "confusion_matrix.png").is_file():
        figs.append(_figure(ed / "confusion_matrix.png", "the discriminator classifying held-out real and generated "
                            "images", "confusion matrix", "smooth"))
    if (ed / "memorisation.png").is_file():
        figs.append(_figure(ed / "memorisation.png", "closest pairs: generated | nearest training image, closest "
                            "first (top to bottom, then left to right)", "memorisation pairs"))
    if figs:
        parts.append(f'<div class="eval">{"".join(figs)}</div>')
    if not figs and ev is None:
        parts.append(_missing("evaluation results (metrics/eval.json, metrics/eval/)", "dvc repro evaluate"))

    # tables
    tables = []
    if ev is not None:
        help_ = {k: evaluation.key_help(k) for k in ev}
        tables.append(f'<div class="panel"><h3>metrics/eval.json</h3>{_table(ev, help_)}</div>')
    if train is not None:
        tables.append(f'<div class="panel"><h3>metrics/train.json</h3>{_table(train)}</div>')
    if tables:
        parts.append("<h2>Metrics</h2>" + f'<div class="tables">{"".join(tables)}</div>')
    parts.append("<footer>A self-contained page: images are embedded, charts are inline SVG.</footer>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head>"
            f"<body><main>{''.join(parts)}</main></body></html>\n")


def build(metrics_dir: Path = Path("metrics"), out: Path = Path("report/index.html"), **kw) -> Path:
    """Render the report of the run in `metrics_dir` to `out` (written atomically)."""
    out = Path(out)
    text = render(metrics_dir, **kw)
    atomic_write_text(out, text)
    return out
