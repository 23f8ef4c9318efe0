# One venv, made on first use from pyproject.toml; every target runs inside it.
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	  command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
	  && { command -v $$p; break; }; done)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint types pytest validate clean fairness

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "need Python 3.11 or newer on PATH"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,local,worker,bench]'
	@touch $(STAMP)

## run: a thumbnail job on the sample images, through the whole local stack
run: $(STAMP)
	$(BIN)/offload local run

## test: the gate — lint, types, the whole suite, and the template checks
test: lint types pytest validate

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

types: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest

validate: $(STAMP)
	@true

clean:
	rm -rf $(VENV) .aws-sam .offload .pytest_cache .mypy_cache .ruff_cache

## fairness: tenant A's 1,000-slice job against tenant B's one-slice job, with figures
fairness: $(STAMP)
	FAIRNESS_SLICES=1000 $(BIN)/pytest tests/test_fairness.py -q -s -p no:cacheprovider
