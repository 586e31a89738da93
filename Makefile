# KilnDB — the two commands are `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEVSTAMP := $(VENV)/.installed-dev
BENCHSTAMP := $(VENV)/.installed-bench
DATA   ?= ./data

.PHONY: run demo test lint typecheck pytest bench bench-smoke clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e .
	touch $@

$(DEVSTAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

$(BENCHSTAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $@

run: $(STAMP)
	$(VENV)/bin/kiln --data $(DATA) serve

demo: $(STAMP)
	$(VENV)/bin/kiln --data $(DATA) demo

lint: $(DEVSTAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

typecheck: $(DEVSTAMP)
	$(VENV)/bin/mypy

pytest: $(DEVSTAMP)
	$(PY) -m pytest -q

test: lint typecheck pytest

bench: $(BENCHSTAMP)
	$(PY) bench/embedded.py
	$(PY) bench/server.py
	$(PY) bench/streams.py
	$(PY) bench/replication.py
	$(PY) bench/cluster.py

bench-smoke: $(BENCHSTAMP)
	$(PY) bench/embedded.py --smoke
	$(PY) bench/server.py --smoke
	$(PY) bench/streams.py --smoke
	$(PY) bench/replication.py --smoke
	$(PY) bench/cluster.py --smoke

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
