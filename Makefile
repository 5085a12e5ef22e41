# The two commands a new user needs: `make demo` and `make test`.
# Both create the virtualenv and install the project on first use.

PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: demo test lint typecheck install clean

$(BIN)/modcus: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/modcus

demo: install
	$(BIN)/modcus demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest

clean:
	rm -rf $(VENV) .modcus .mypy_cache .ruff_cache .pytest_cache

# `make bench`: the worker benchmark, written to docs/benchmarks.md (about 7 minutes).
# arq 0.28 declares redis<6, so pip would replace the project's redis 8 client to satisfy it.
# It is installed without its dependencies instead; the other one, click, comes with celery.
$(VENV)/.bench-installed: pyproject.toml | install
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/pip install --quiet --no-deps 'arq==0.28.0'
	touch $@

.PHONY: bench
bench: $(VENV)/.bench-installed
	BENCH_MAKE_TARGET=bench $(BIN)/python -m bench
