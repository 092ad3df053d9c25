# The two commands a new user needs: `make demo` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck unit venv crd clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/slotune demo

lint: $(STAMP)
	$(BIN)/ruff check operator tests bench
	$(BIN)/ruff format --check operator tests bench
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy operator/slotune

unit: $(STAMP)
	$(BIN)/pytest tests/unit tests/render

test: lint typecheck
	$(BIN)/pytest

crd: $(STAMP)
	$(BIN)/slotune crd > crds/slotune.dev_llmservices.yaml

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
