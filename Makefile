# bouquet: `make run` sets everything up and runs the default experiment; `make test` sets
# everything up and runs ruff + the test suite. Both work on a fresh clone with only the
# package registries reachable.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.bouquet-installed

export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1
export RAY_USAGE_STATS_ENABLED := 0
export HYDRA_FULL_ERROR ?= 0
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup data run test lint bench deploy-demo clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch + torchvision at these versions first (on the project's machines pip takes them from local wheels)
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

setup: $(STAMP)

data: setup
	scripts/fetch_data.sh mnist fashion_mnist movielens

run: setup data
	$(BIN)/bouquet-sim $(ARGS)

lint: setup
	$(BIN)/ruff check .
	scripts/typecheck.sh

test: setup data lint
	$(BIN)/pytest $(PYTEST_ARGS)

bench: setup data
	@echo "Benchmarks are scripts in benchmarks/ (one per RESULTS.md section); see benchmarks/README.md"

# A real SuperLink + N SuperNodes on 127.0.0.1 (TLS, node auth), one experiment via `flwr run`.
# Each SuperNode runs warm: a deploy/warm_clientapp.py worker beside it (docs/running.md).
# make deploy-demo NODES=3 OVERRIDES="dataset=digits client=topk strategy=kl_weighted"
# make deploy-demo NODES=10 OVERRIDES="dataset=digits client=stc downlink=stc"   (~0.6 GB PSS per node)
NODES ?= 2
OVERRIDES ?= dataset=digits simulation.num_rounds=3
deploy-demo: setup
	deploy/demo.sh --nodes $(NODES) --overrides "$(OVERRIDES)"

clean:
	rm -rf outputs multirun .pytest_cache .ruff_cache
