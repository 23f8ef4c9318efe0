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
	$(BIN)/ruff check src tests bench faults
	$(BIN)/ruff format --check src tests bench faults

types: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest

## bench: the benchmark suite, side by side with arq and RQ (docs/benchmarks.md); prints the
##        table, writes the figures to bench/results/. make bench BENCH_ARGS=--quick: smoke sizes
.PHONY: bench
BENCH_ARGS ?=
bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

# -- deployment (template.yaml, Dockerfile; see docs/deploy.md) -------------------------
.PHONY: build image

# sam reads nothing else from the environment, so nothing prompts and no AWS call is made
SAM := AWS_DEFAULT_REGION=us-east-1 SAM_CLI_TELEMETRY=0 $(BIN)/sam
# sam build needs an interpreter of exactly the Lambda runtime's version (template.yaml)
LAMBDA_PYTHON := python3.12

## validate: sam validate --lint and cfn-lint on template.yaml (offline)
validate: $(STAMP)
	$(SAM) validate --lint --template-file template.yaml
	AWS_DEFAULT_REGION=us-east-1 $(BIN)/cfn-lint template.yaml

## build: sam build (the Lambda package in .aws-sam/build; wheels come from PyPI)
build: $(STAMP)
	@dir=""; \
	if ! $(LAMBDA_PYTHON) -c 'import sys' >/dev/null 2>&1; then \
	  for d in $$(pyenv root 2>/dev/null)/versions/3.12.*/bin; do \
	    if [ -x "$$d/$(LAMBDA_PYTHON)" ]; then dir="$$d"; fi; \
	  done; \
	  if [ -z "$$dir" ]; then \
	    echo "make build: sam build needs $(LAMBDA_PYTHON) (the Lambda runtime's Python) on PATH;" >&2; \
	    echo "  install Python 3.12 (e.g. 'pyenv install 3.12') or put its bin folder on PATH, then retry" >&2; \
	    exit 1; \
	  fi; \
	  echo "using $$dir/$(LAMBDA_PYTHON)"; \
	fi; \
	PATH="$${dir:+$$dir:}$$PATH" $(SAM) build --template-file template.yaml

## image: build the worker image for arm64, push it to ECR, print the WorkerImageUri
##        make image AWS_ACCOUNT_ID=123456789012 REGION=us-east-1 REPO=offload-worker [TAG=...]
AWS ?= aws
DOCKER ?= docker
REGION ?=
REPO ?= offload-worker
TAG ?= $(shell git rev-parse --short=12 HEAD 2>/dev/null)$(shell git diff --quiet HEAD 2>/dev/null || echo -dirty-$$(date +%Y%m%d%H%M%S))
REGISTRY = $(AWS_ACCOUNT_ID).dkr.ecr.$(REGION).amazonaws.com
IMAGE = $(REGISTRY)/$(REPO):$(TAG)

image:
	@test -n "$(AWS_ACCOUNT_ID)" -a -n "$(REGION)" -a -n "$(REPO)" -a -n "$(TAG)" || { \
	  echo "usage: make image AWS_ACCOUNT_ID=123456789012 REGION=us-east-1 REPO=offload-worker [TAG=...]" >&2; exit 1; }
	$(AWS) ecr describe-repositories --region $(REGION) --repository-names $(REPO) >/dev/null 2>&1 || \
	  $(AWS) ecr create-repository --region $(REGION) --repository-name $(REPO) \
	    --image-tag-mutability IMMUTABLE --image-scanning-configuration scanOnPush=true >/dev/null
	$(AWS) ecr get-login-password --region $(REGION) | $(DOCKER) login --username AWS --password-stdin $(REGISTRY)
	$(DOCKER) build --platform linux/arm64 --pull -t $(IMAGE) .
	$(DOCKER) push $(IMAGE)
	@echo "pushed $(IMAGE)"
	@echo "deploy with: sam deploy --config-env <env> --parameter-overrides WorkerImageUri=$(IMAGE) (or put it in samconfig.toml)"

clean:
	rm -rf $(VENV) .aws-sam .offload .pytest_cache .mypy_cache .ruff_cache

## fairness: tenant A's 1,000-slice job against tenant B's one-slice job, with figures
fairness: $(STAMP)
	FAIRNESS_SLICES=1000 $(BIN)/pytest tests/test_fairness.py -q -s -p no:cacheprovider

## faults: every fault scenario against real redis-server and worker processes, a figure each
##         (writes faults/results/*.json; make faults SCENARIOS="kill9 failover" for some)
.PHONY: faults
faults: $(STAMP)
	$(BIN)/python -m faults.run $(SCENARIOS)
