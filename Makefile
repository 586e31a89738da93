# KilnDB — the two commands are `make run` and `make test`.
# Needs Python >= 3.11 and a Rust toolchain (cargo); everything else is installed here.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEVSTAMP := $(VENV)/.installed-dev
BENCHSTAMP := $(VENV)/.installed-bench
DATA   ?= ./data
# The extension is rebuilt whenever the Rust crate changes.
RUST_SOURCES := rust/Cargo.toml rust/Cargo.lock $(wildcard rust/src/*.rs)
# cargo test links the core against this interpreter.
CARGO_ENV := PYO3_PYTHON=$(abspath $(PY))

.PHONY: run demo test lint typecheck pytest rust-check tools bench bench-smoke wheel clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml $(RUST_SOURCES) | $(PY)
	$(PY) -m pip install --quiet -e .
	touch $@

$(DEVSTAMP): pyproject.toml $(RUST_SOURCES) | $(PY)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP) $@

$(BENCHSTAMP): pyproject.toml $(RUST_SOURCES) | $(PY)
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $(STAMP) $(DEVSTAMP) $@

# The server `make run` starts, which `make demo` uses when it answers.
PORT   ?= 7400
URL    ?= tcp://127.0.0.1:$(PORT)

run: $(STAMP)
	@echo "make run: serving $(DATA) at $(URL); in another terminal, run the demo against it:"
	@echo "  make demo    (or: $(VENV)/bin/kiln --url $(URL) demo)"
	$(VENV)/bin/kiln --data $(DATA) serve --port $(PORT)

# Against the server at URL when one answers there (`make run`), else on DATA directly.
demo: $(STAMP)
	@if $(VENV)/bin/kiln --url $(URL) status --json >/dev/null 2>&1; then \
		echo "make demo: against the server at $(URL)"; \
		$(VENV)/bin/kiln --url $(URL) demo; \
	else \
		$(VENV)/bin/kiln --data $(DATA) demo; \
	fi

lint: $(DEVSTAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

typecheck: $(DEVSTAMP)
	$(VENV)/bin/mypy

# etcd, the coordinator of automatic failover, for the tests and benchmarks that start
# one, and headless Chromium with its driver for the web console's browser tests:
# installed with apt-get when not on PATH (instant when they are).
tools:
	scripts/install-etcd.sh
	scripts/install-chromium.sh

pytest: $(DEVSTAMP) tools
	$(PY) -m pytest -q

# cargo fmt and clippy are components of the toolchain; where one is missing its check
# is skipped with a line saying so (none can be fetched from here).
rust-check: $(DEVSTAMP)
	@if cargo fmt --version >/dev/null 2>&1; then \
		cd rust && cargo fmt --check; \
	else echo "rust-check: cargo fmt is not installed; skipped cargo fmt --check"; fi
	@if cargo clippy --version >/dev/null 2>&1; then \
		cd rust && $(CARGO_ENV) cargo clippy --quiet --all-targets -- -D warnings; \
	else echo "rust-check: cargo clippy is not installed; skipped cargo clippy -D warnings"; fi
	cd rust && $(CARGO_ENV) cargo test --quiet

test: lint typecheck rust-check pytest

# An abi3 wheel (CPython >= 3.11) in dist/, installable without a Rust toolchain.
WHEEL_DIR ?= dist
wheel: $(DEVSTAMP)
	$(VENV)/bin/maturin build --release --quiet --out $(WHEEL_DIR)

bench: $(BENCHSTAMP) tools
	$(PY) bench/embedded.py
	$(PY) bench/server.py
	$(PY) bench/streams.py
	$(PY) bench/toolbox.py
	$(PY) bench/replication.py
	$(PY) bench/cluster.py
	$(PY) bench/idle.py
	$(PY) bench/failover.py

bench-smoke: $(BENCHSTAMP) tools
	$(PY) bench/embedded.py --smoke
	$(PY) bench/server.py --smoke
	$(PY) bench/streams.py --smoke
	$(PY) bench/replication.py --smoke
	$(PY) bench/cluster.py --smoke
	$(PY) bench/idle.py --smoke
	$(PY) bench/failover.py --smoke
	$(PY) bench/toolbox.py --smoke

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache dist rust/target src/kilndb/_core*.so
