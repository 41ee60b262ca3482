# The two commands a newcomer needs: `make demo` and `make test`. Both run setup first; setup is idempotent.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export PULUMI_SKIP_UPDATE_CHECK := true
export PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION := true

.PHONY: setup demo test lint bench cluster-tools cluster-up cluster-down cluster-status s3-tools s3

setup:
	@bash scripts/setup.sh

# make demo TARGET=kubernetes: the same story on the local Kubernetes cluster (started first, needs root).
TARGET ?= local
demo: setup
ifeq ($(TARGET),kubernetes)
	@bash scripts/cluster.sh up
endif
	$(PY) -m automation.demo --target $(TARGET) $(ARGS)

test: setup cluster-tools s3-tools lint
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: setup
	$(PY) bench/bench_release.py

# The local Kubernetes cluster (docs/kubernetes.md). Its tools are built only for what needs them: not by setup.
cluster-tools: setup
	@bash scripts/cluster-tools.sh

cluster-up: cluster-tools
	@bash scripts/cluster.sh up

cluster-down:
	@bash scripts/cluster.sh down

cluster-status:
	@bash scripts/cluster.sh status

# The local S3-compatible object store (SeaweedFS, docs/shared-state.md): started in .mlrelease/run/shared, its
# backend URL printed. Built only for what needs it: not by setup.
s3-tools: setup
	@bash scripts/s3-tools.sh

s3: s3-tools
	$(PY) -m automation.s3server
