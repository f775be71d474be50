# Every target does its own set-up: a fresh Debian 12 machine needs only `make demo` / `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CSRC := $(wildcard csrc/*.c csrc/*.h)
PYTEST_ARGS ?=

.PHONY: setup system-deps build test test-fast test-vm lint format demo bench clean

setup: system-deps $(STAMP) build

system-deps:
	@bash tests/install-system-deps.sh

$(STAMP): pyproject.toml setup.py
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[test]'
	touch $@

# Rebuild the C core in place whenever csrc/ changes (pip install -e built it once).
build: $(STAMP) virtiofsd_nydus/.vnc-built
virtiofsd_nydus/.vnc-built: $(CSRC) build_ffi.py
	$(VPY) setup.py -q build_ext --inplace
	touch $@

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: lint
	$(VPY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(VPY) -m pytest -m 'not vm' $(PYTEST_ARGS)

test-vm: setup
	$(VPY) -m pytest -m vm $(PYTEST_ARGS)

demo: setup
	$(VPY) -m tests.demo

bench: setup
	$(VPY) -m bench

clean:
	rm -rf build $(VENV) *.egg-info virtiofsd_nydus/_vnc*.so virtiofsd_nydus/.vnc-built .pytest_cache .mypy_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
