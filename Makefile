# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv if missing and install
# the CPU torch wheel before the project, so no resolver pulls the multi-GB CUDA build.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.o2o-installed
TORCH  := torch==2.13.0

.PHONY: install demo test lint typecheck clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev,spark]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/o2o demo

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy data_prep models training serving experiments

clean:
	rm -rf data runs artifacts .pytest_cache .mypy_cache .ruff_cache
