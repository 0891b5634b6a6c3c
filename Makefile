# Set-up and the main commands. Both `make run` and `make test` create .venv when missing.
# CPU-only machines get the CPU build of torch (TORCH_SPEC); GPU users: see README "Install".
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: venv run test test-fast test-extended clean help

help:
	@echo "make run    - the main job: clm-pipeline on the built-in synthetic customer base"
	@echo "make test   - the test suite"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[datasets,dev,bench]"
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/clm-pipeline

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not extended"

test-extended: $(STAMP)
	$(BIN)/python -m pytest -q -m extended

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) logs .pytest_cache
