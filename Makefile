# One command runs the system, one runs the tests; both set up .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: run test lint typecheck unit install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## make run: NATS + coordinator + 2 workers + the example plugins, until Ctrl-C
run: $(STAMP)
	$(BIN)/forgeone dev

## make test: lint, type-check, then the whole suite on real nats-server and wasmtime
test: $(STAMP) lint typecheck
	$(BIN)/pytest -n 3 --durations=15 $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf .forge plugins/build .pytest_cache .mypy_cache .ruff_cache
