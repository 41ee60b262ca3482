# The two commands a newcomer needs: `make demo` and `make test`. Both run setup first; setup is idempotent.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export PULUMI_SKIP_UPDATE_CHECK := true
export PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION := true

.PHONY: setup demo test lint bench

setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) -m automation.demo

test: setup lint
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: setup
	$(PY) bench/bench_release.py
