# The README's commands. Each one creates or updates the virtual environment it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# No usage reports to MLflow's servers (kedro-telemetry is opted out by .telemetry).
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: setup demo rs8 test lint bench clean-demo

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

## The main job: the whole flow (data_prep, both training stages, submit) on the synthetic demo tiles.
demo: $(STAMP)
	$(BIN)/kedro run --env demo

## The whole flow on the real rs8 tiles with the CPU recipe of conf/rs8 (under 45 minutes on 2 cores).
RS8 ?= ../shared/data/rs8
rs8: $(STAMP)
	$(BIN)/kedro run --env rs8 --params data_root=$(RS8)

## The tests, then the linters. NAIC_SEG_RS8=<rs8 folder> adds the real-data tests.
test: $(STAMP)
	$(BIN)/python -m pytest
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## Every benchmark, one JSON document on stdout (docs/results.md); hours on 2 CPUs.
## `make bench BENCH_ARGS=--quick` runs each of them at small sizes: a smoke check, not a measurement.
BENCH_ARGS ?=
bench: $(STAMP)
	$(BIN)/python -m benchmarks.run_all $(BENCH_ARGS)

clean-demo:
	rm -rf data/01_raw/demo
