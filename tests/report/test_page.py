"""The experiments page from experiments as collect.py gives them (no DVC run): the table, its columns and best
marks, what is missing, the experiment pages, and that everything a page needs is on disk beside it."""
import json
import re
from pathlib import Path

import numpy as np
import pytest

from dcgan import pictures
from dcgan.report import collect, site, table
from dcgan.report.collect import Experiment, Selection


def make_exps(root: Path) -> list[Experiment]:
    rng = np.random.default_rng(0)
    (root / "plots").mkdir(parents=True)
    exps = []
    for k, (lr, swd, rkid) in enumerate([(1e-4, 30.0, 2.0), (2e-4, 25.0, 3.0), (5e-4, 40.0, 1.0)]):
        e = Experiment(id=f"exp-{k}", rev=f"exp-{k}", kind="experiment", baseline="abc1234", state="success",
                       params={"lr_g": lr, "nz": 100, "seed": 0})
        e.metrics["train"] = {"epochs_done": 4, "images_seen": 4 * (k + 1) * 100, "best_swd": swd + 1,
                              "d_val": 0.5, "d_train": 0.6, "wall_s": 10.0, "device": "cpu"}
        e.metrics["eval"] = {"swd": swd, "swd_floor": 13.4, "rkid": rkid, "rkid_floor": -1.0, "d_accuracy": 0.9}
        for epoch in (1, 2, 4):
            p = root / "plots" / f"{e.rev}_metrics_train_plots_images_samples_{epoch:05d}.png"
            pictures.save_png(pictures.grid(rng.integers(0, 256, (4, 1, 16, 16), dtype=np.uint8), nrow=2), p)
            e.grids.append((epoch, p.relative_to(root)))
        p = root / "plots" / f"{e.rev}_metrics_eval_samples.png"
        pictures.save_png(pictures.grid(rng.integers(0, 256, (4, 3, 16, 16), dtype=np.uint8), nrow=2), p)
        e.pictures["samples.png"] = p.relative_to(root)
        exps.append(e)
    exps[2].grids = []
    exps[2].missing = ["metrics/train/plots/images/samples/: not in the local DVC cache (run `dvc exp pull "
                       "<remote> exp-2`)"]
    return exps


def a_chart(revs):
    values = [{"step": str(s), "loss_d": str(0.1 * s), "rev": r} for r in revs for s in range(3)]
    return {"title": "Losses", "spec": {"data": {"values": values}, "mark": "line",
                                        "encoding": {"color": {"field": "rev", "scale": {"domain": revs,
                                                                                         "range": ["#111", "#222", "#333"]}}}}}


@pytest.fixture
def built(tmp_path):
    exps = make_exps(tmp_path)
    site.write_site(tmp_path, exps, [a_chart([e.rev for e in exps])], "test page", ["note one."], vega_js="")
    return tmp_path, exps


def data_of(page: Path) -> dict:
    text = page.read_text()
    return json.loads(re.search(r'<script id="report-data" type="application/json">(.*?)</script>', text, re.S)[1])


def test_the_table_has_a_row_per_experiment_the_params_that_differ_and_the_best_marked(built):
    root, exps = built
    html = (root / "index.html").read_text()
    body = html.split("<tbody>")[1].split("</tbody>")[0]
    assert body.count("<tr ") == 3
    head = html.split("<thead>")[1].split("</thead>")[0]
    assert 'data-col="lr_g"' in head and 'data-col="nz"' not in head and 'data-col="seed"' not in head
    assert 'data-col="eval.swd"' in head and 'data-col="train.images_seen"' in head
    assert 'data-col="eval.c2st"' not in head          # no experiment has it: no empty column
    best = dict(re.findall(r'<tr data-id="([^"]+)">(.*?)</tr>', body))
    assert 'data-v="25.0" class="num best"' in best["exp-1"]     # the lowest swd
    assert 'data-v="1.0" class="num best"' in best["exp-2"]      # the lowest rkid
    assert "num best" not in best["exp-0"]
    assert "note one." in html


def test_missing_outputs_are_listed_not_dropped(built):
    root, _ = built
    html = (root / "index.html").read_text()
    assert "missing: 1" in html and "dvc exp pull &lt;remote&gt; exp-2" in html
    assert "exp-2" in data_of(root / "index.html")["experiments"][2]["id"]
    assert "not in the local DVC cache" in (root / "exp" / "exp-2.html").read_text()


def test_every_file_a_page_refers_to_is_there_and_nothing_comes_from_the_network(built):
    root, _ = built
    for page in [root / "index.html", *(root / "exp").glob("*.html")]:
        text = page.read_text()
        assert not re.search(r'(src|href)="https?://', text), page
        for ref in re.findall(r'(?:src|href)="([^"#]+)"', text):
            assert (page.parent / ref).is_file(), (page, ref)
        for e in data_of(page)["experiments"]:
            for epoch, seen, src in e["grids"]:
                assert (page.parent / src).is_file() and seen == epoch * 100 * (int(e["id"][-1]) + 1)


def test_an_experiment_page_shows_its_own_curves_pictures_and_explained_metrics(built):
    root, _ = built
    page = root / "exp" / "exp-1.html"
    html = page.read_text()
    assert "metrics/eval.json" in html and "sliced Wasserstein" in html and "lr_g" in html
    assert 'alt="samples.png"' in html
    revs = {d["rev"] for c in data_of(page)["charts"] for d in c["spec"]["data"]["values"]}
    assert revs == {"exp-1"}


def test_a_rebuilt_site_replaces_the_old_one_whole(tmp_path):
    old, new = tmp_path / "report", tmp_path / "new"
    old.mkdir()
    (old / "stale.html").write_text("old")
    new.mkdir()
    (new / "index.html").write_text("new")
    site.swap(new, old)
    assert (old / "index.html").read_text() == "new" and not (old / "stale.html").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


SHOW = [  # the shape of `dvc exp show --json` (DVC 3.x), cut down
    {"rev": "workspace", "name": None, "error": None, "experiments": None,
     "data": {"rev": "workspace", "params": {"params.yaml": {"data": {"lr_g": 0.0002}}},
              "metrics": {"metrics/train.json": {"data": {"epochs_done": 2}}}}},
    {"rev": "f6b32e4822b05de5d9a17eedf20b4b4740266a0e", "name": "main", "error": None,
     "data": {"rev": "f6b32e4", "timestamp": "2026-11-30T19:28:49",
              "params": {"params.yaml": {"data": {"lr_g": 0.0002}}},
              "metrics": {"metrics/train.json": {"error": {"type": "FileNotFoundError", "msg": "..."}}}},
     "experiments": [
         {"name": "bold-fox", "executor": {"state": "success"},
          "revs": [{"rev": "76207d0", "name": "bold-fox", "data": {
              "params": {"params.yaml": {"data": {"lr_g": 0.0001, "seed": 1}}},
              "metrics": {"metrics/train.json": {"data": {"epochs_done": 2}},
                          "metrics/eval.json": {"data": {"swd": 30.0}}}}}]},
         {"name": "shy-owl", "executor": {"state": "queued"},
          "revs": [{"rev": "1234567", "name": "shy-owl", "data": {}}]}]},
    {"rev": "0000000000000000000000000000000000000000", "name": None, "error": None, "experiments": None,
     "data": {"metrics": {}}},
]


def test_dvc_exp_show_output_becomes_rows_and_commits_without_results_are_counted():
    exps, empty = collect.parse_show(SHOW)
    assert [(e.id, e.kind, e.baseline, e.state) for e in exps] == [
        ("workspace", "workspace", "workspace", ""), ("bold-fox", "experiment", "f6b32e4", "success"),
        ("shy-owl", "experiment", "f6b32e4", "queued")]
    assert empty == 2     # main's commit has no metrics/train.json, nor has the commit before it
    assert exps[1].metrics["eval"] == {"swd": 30.0} and exps[1].params["seed"] == 1
    assert exps[2].missing == ["metrics/train.json: none yet (the experiment is queued)"]


def test_a_selection_by_name_commit_and_param_value():
    exps, _ = collect.parse_show(SHOW)
    assert [e.id for e in exps if Selection(names=["bold-*"]).admits(e)] == ["bold-fox"]
    assert [e.id for e in exps if Selection(commits=["f6b32"]).admits(e)] == ["bold-fox", "shy-owl"]
    assert [e.id for e in exps if Selection(where={"lr_g": "1e-4"}).admits(e)] == ["bold-fox"]
    assert [e.id for e in exps if Selection(where={"seed": "1"}).admits(e)] == ["bold-fox"]


def test_dvc_plot_errors_become_one_line_per_missing_output():
    e = Experiment(id="x", rev="x", kind="experiment", baseline="abc")
    for epoch in (1, 2):
        collect._note_missing(e, {"rev": "x", "source": f"metrics/train/plots/images/samples/{epoch:05d}.png",
                                  "type": "FileNotFoundError", "msg": "[Errno 2] No storage files available: ..."})
    collect._note_missing(e, {"rev": "x", "source": "metrics/train/plots/metrics/loss_d.tsv",
                              "type": "FileNotFoundError", "msg": "No such file"})
    assert e.missing == ["metrics/train/plots/images/samples/: not in the local DVC cache (run `dvc exp pull "
                         "<remote> x`)", "metrics/train/plots/metrics/loss_d.tsv: FileNotFoundError"]


def test_score_columns_follow_the_metrics_registry():
    keys = dict(table.eval_keys())
    assert keys["swd"] is True and keys["swd_floor"] is None and keys["d_accuracy"] is None
    assert "c2st" in keys and "rkid" in keys
