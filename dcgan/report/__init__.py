"""report/: every experiment the repository knows, side by side, on pages that open from disk with no network.

    site.build(Path("."), Path("report"))     # what `make report` runs (stages/report.py)

site.py builds it: collect.py asks DVC (`dvc exp show`, `dvc plots diff`) for the experiments, their params,
metrics, curves and images; table.py picks the columns; page.py writes report/index.html, one page per
experiment under report/exp/, and the assets (Vega, Vega-Lite and Vega-Embed bundled by vl-convert-python,
and report.js). The site is built next to report/ and swapped in whole, so an interrupted build leaves the
old one.
"""
