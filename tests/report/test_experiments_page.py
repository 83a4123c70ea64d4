"""The experiments page of real DVC experiments: a queued grid of four (conftest.queued_grid), `python -m
stages.report` (what `make report` runs), then the page in a real headless browser; and a sweep split over two
clones that share one git remote and one DVC remote."""
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import headless_chromium, needs_browser, sh

pytestmark = pytest.mark.integration


def build_report(repo: Path, *args: str) -> tuple[str, dict]:
    r = sh([sys.executable, "-m", "stages.report", *args], repo)
    html = (repo / "report" / "index.html").read_text()
    data = json.loads(re.search(r'<script id="report-data" type="application/json">(.*?)</script>', html, re.S)[1])
    return r.stdout, data


def experiment_names(repo: Path) -> list[str]:
    shown = json.loads(sh("dvc exp show --json", repo).stdout)
    return [e["name"] for c in shown for e in c.get("experiments") or []]


@pytest.fixture(scope="module")
def reported(queued_grid, tmp_path_factory):
    repo = tmp_path_factory.mktemp("reported") / "repo"
    shutil.copytree(queued_grid[0], repo, symlinks=True)
    out, data = build_report(repo)
    return repo, out, data


def test_the_page_lists_the_workspace_the_commit_and_the_four_experiments(reported):
    repo, out, data = reported
    rows = {e["id"]: e for e in data["experiments"]}
    names = experiment_names(repo)
    assert len(names) == 4 and set(names) < set(rows), (names, list(rows))
    assert "workspace" in rows and len(rows) == 6, list(rows)
    for name in names:
        grids = rows[name]["grids"]
        assert grids and all((repo / "report" / src).is_file() for _, _, src in grids)
        assert [g[0] for g in grids] == [1, 2, 3] and grids[-1][1] == 3 * grids[0][1] > 0   # epochs, images seen
        page = (repo / "report" / "exp" / f"{name}.html").read_text()
        assert "metrics/eval.json" in page and "memorisation" in page
    titles = [c["title"] for c in data["charts"]]
    assert "Losses" in titles and any("c2st" in t for t in titles), titles
    assert {d["rev"] for d in data["charts"][0]["spec"]["data"]["values"]} >= set(names)
    html = (repo / "report" / "index.html").read_text()
    assert 'data-col="lr_g"' in html and 'data-col="seed"' in html and 'data-col="nz"' not in html
    assert "wrote report/index.html: 6 experiments" in out


def test_a_subset_by_param_value_and_by_name(reported, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(reported[0], repo, symlinks=True)
    _, data = build_report(repo, "--where", "lr_g=1e-4")
    assert len(data["experiments"]) == 2
    name = experiment_names(repo)[0]
    _, data = build_report(repo, "--exp", name)
    assert [e["id"] for e in data["experiments"]] == [name]


@needs_browser
def test_the_page_in_a_headless_browser(reported, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    repo = reported[0]
    driver = headless_chromium(tmp_path / "profile")
    try:
        wait = WebDriverWait(driver, 60)
        driver.get((repo / "report" / "index.html").as_uri())   # from disk: no server, no network
        wait.until(lambda d: d.execute_script("return document.querySelectorAll('#charts svg.marks').length")
                   >= 5)
        ids = lambda: [r.get_attribute("data-id") for r in driver.find_elements(By.CSS_SELECTOR,   # noqa: E731
                                                                                 "#experiments tbody tr")]
        assert len(ids()) == 6
        # sort by the evaluate stage's SWD: the rows follow the values, ascending, then descending
        th = driver.find_element(By.CSS_SELECTOR, 'th[data-col="eval.swd"]')
        swd = lambda: [float(v) for v in driver.execute_script(   # noqa: E731
            "const i = arguments[0].cellIndex; return Array.from(document.querySelectorAll("
            "'#experiments tbody tr')).map(r => r.cells[i].dataset.v).filter(v => v !== '');", th)]
        th.click()
        assert swd() == sorted(swd()) and len(swd()) == 6
        th.click()
        assert swd() == sorted(swd(), reverse=True)
        # the grid sliders: moving one shows another epoch's grid, and the others follow by images seen
        cards = driver.find_elements(By.CSS_SELECTOR, ".gridcard")
        assert len(cards) == 6
        img = lambda card: card.find_element(By.TAG_NAME, "img").get_attribute("src")   # noqa: E731
        before = [img(c) for c in cards]
        driver.execute_script("const s = arguments[0]; s.value = 0; s.dispatchEvent(new Event('input'));",
                              cards[0].find_element(By.TAG_NAME, "input"))
        after = [img(c) for c in cards]
        assert all(a != b for a, b in zip(after, before)) and all("00001.png" in a for a in after), after
        assert all("00003.png" in b for b in before)
        wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0",
                                              cards[0].find_element(By.TAG_NAME, "img")))
        # untick all but one row: the curves keep only its lines
        driver.find_element(By.ID, "pick-all").click()
        boxes = driver.find_elements(By.CSS_SELECTOR, "#experiments tbody input.pick")
        boxes[0].click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".gridcard")) == 1)
        driver.find_element(By.ID, "pick-all").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".gridcard")) == 6)
        wait.until(lambda d: d.execute_script("return document.querySelectorAll('#charts svg.marks').length")
                   >= 5)
        shot = tmp_path / "experiments-page.png"
        driver.save_screenshot(str(shot))
        # one click into an experiment: its own page, with its curves
        driver.find_element(By.CSS_SELECTOR, "#experiments tbody tr a").click()
        wait.until(lambda d: d.execute_script("return document.querySelectorAll('#charts svg.marks').length")
                   >= 5)
        assert "metrics/eval.json" in driver.page_source
        assert not [m for m in driver.get_log("browser") if m["level"] == "SEVERE"]
    finally:
        driver.quit()
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.std() > 20                                            # not a blank page
    colourful = (pixels.max(axis=2) - pixels.min(axis=2) > 60).mean()   # coloured lines and the green best cells
    assert colourful > 0.002, colourful


def test_a_sweep_split_over_two_clones_shows_on_one_page(queued_grid, tmp_path):
    """Machine A ran the grid of four; machine B clones the same git remote, runs one more experiment and
    pushes it; A pulls it. Each sees all five. One of A's experiments was pushed without its DVC outputs:
    B's page lists it with what is missing."""
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(queued_grid[0], a, symlinks=True)
    git_remote, dvc_remote = tmp_path / "origin.git", tmp_path / "dvc-remote"
    sh(f"git init -q --bare -b main {git_remote}", tmp_path)
    sh(f"git remote add origin {git_remote} && git push -q origin main", a)
    sh(f"dvc remote add --local -d shared {dvc_remote} && dvc push -q", a)
    names = experiment_names(a)
    sh(f"dvc exp push origin {' '.join(names[:3])}", a)
    sh(f"dvc exp push --no-cache origin {names[3]}", a)      # its refs, not its outputs

    sh(f"git clone -q {git_remote} {b}", tmp_path)
    sh(f"dvc remote add --local -d shared {dvc_remote} && dvc pull -q", b)
    sh("dvc exp run -S seed=2 -n from-b", b)
    sh("dvc exp push origin --rev HEAD", b)                   # the commands of docs/training.md from here on
    # A's four, with what the remote holds (one's outputs are not there: DVC says so, and the rest comes)
    sh("dvc exp pull origin --rev HEAD", b, check=False)

    sh("dvc exp pull origin --rev HEAD", a)
    _, on_a = build_report(a)
    assert set(names) | {"from-b"} <= {e["id"] for e in on_a["experiments"]}
    assert all(e["grids"] for e in on_a["experiments"] if e["id"] in names + ["from-b"])

    out, on_b = build_report(b)
    rows = {e["id"]: e for e in on_b["experiments"]}
    assert set(names) | {"from-b"} <= set(rows), list(rows)
    assert all(rows[n]["grids"] for n in names[:3] + ["from-b"])
    assert not rows[names[3]]["grids"]
    page = (b / "report" / "index.html").read_text()
    assert f"dvc exp pull &lt;remote&gt; {names[3]}" in page and "not in the local DVC cache" in page
