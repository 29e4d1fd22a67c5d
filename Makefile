# Two entry points: `make demo` runs the main job, `make test` runs the tests.
# Both create (or reuse) .venv with Python 3.11 and install what they need.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast test-slow lint bench clean

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or run: make PYTHON=python3 ...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch goes in first so that nothing later pulls a multi-GB CUDA build. On our CPU machines
# torch==2.13.0 is the CPU build on local disk; elsewhere pass
# TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu" for the CPU wheel.
TORCH_PIP_ARGS ?=
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q "pip>=25.1"  # --group (PEP 735 dependency groups)
	$(BIN)/python -m pip install -q "torch==2.13.0" $(TORCH_PIP_ARGS)
	$(BIN)/python -m pip install -q -e . --group dev
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/neutrino-ray demo

test: $(STAMP)
	$(BIN)/python -m pytest

# The inner loop: tests that start neither Ray, nor an S3 server, nor a CLI subprocess (see tests/conftest.py).
test-fast: $(STAMP)
	NEUTRINO_RAY_UNIT_ONLY=1 $(BIN)/python -m pytest -m "not slow and not integration"

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy neutrino_ray
	$(BIN)/pylint --disable=all --enable=duplicate-code --score=no neutrino_ray

bench: $(STAMP)
	$(BIN)/neutrino-ray bench icecube --events 200000

clean:
	rm -rf $(VENV) demo-output bench-data
