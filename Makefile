# Two entry points: `make demo` runs the main job, `make test` runs the tests.
# Both create (or reuse) .venv with Python 3.11 and install what they need.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast test-slow lint bench nova-proxy clean

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or run: make PYTHON=python3 ...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)

# The install goes through uv (itself installed from PyPI by the venv's pip): about twice as fast as pip on
# 2 cores, which the CI budget needs (docs/development.md). torch goes in first, pinned, so that nothing
# later pulls a multi-GB CUDA build. On our CPU machines torch==2.13.0 is the CPU build in /opt/wheels,
# where uv looks only when told (TORCH_ARGS); elsewhere pass
# TORCH_ARGS="--index-url https://download.pytorch.org/whl/cpu" for the CPU wheel.
UV_VERSION ?= 0.13.10
TORCH_ARGS ?= $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
UV := $(BIN)/uv pip install -q --python $(BIN)/python
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q "uv==$(UV_VERSION)"
	$(UV) "torch==2.13.0" $(TORCH_ARGS)
	$(UV) -e . --group dev  # PEP 735 dependency group
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
	$(BIN)/neutrino-ray bench nova

# The course CNN's difficulty on the simulation (issue 27, docs/nova.md "Issue 27"), through the one pipeline:
# simulate a training set at the real files' mix and a held-out test file, train the course CNN with the
# course recipe (classes undersampled to balance, nova train's default), score the test file, print the
# notebooks' figures. The default is the cheap proxy (6 x 7,000 simulated events ≈ 9,000 balanced, 5 fixed
# epochs, 20,000 test events); the target budget is
#   make nova-proxy NOVA_TRAIN_FILES=20 NOVA_TEST_EVENTS=40000 NOVA_TRAIN_ARGS="--epochs 100 --patience 5"
NOVA_PROXY ?= nova-proxy
NOVA_TRAIN_FILES ?= 6
NOVA_TEST_EVENTS ?= 20000
NOVA_TRAIN_ARGS ?= --epochs 5
nova-proxy: $(STAMP)
	$(BIN)/neutrino-ray simulate nova $(NOVA_PROXY)/train --files $(NOVA_TRAIN_FILES) --events-per-file 7000 --seed 1
	$(BIN)/neutrino-ray simulate nova $(NOVA_PROXY)/test --files 1 --events-per-file $(NOVA_TEST_EVENTS) --seed 2
	$(BIN)/neutrino-ray nova train $(NOVA_PROXY)/train --target numu-cc --model course-cnn --optimizer adam \
		--schedule constant --lr 1e-3 --batch-size 256 --val-events 1000 $(NOVA_TRAIN_ARGS) --out $(NOVA_PROXY)/course
	$(BIN)/neutrino-ray nova predict $(NOVA_PROXY)/test --model $(NOVA_PROXY)/course/model --out $(NOVA_PROXY)/predict
	$(BIN)/neutrino-ray nova evaluate $(NOVA_PROXY)/test --predictions $(NOVA_PROXY)/predict/predictions.parquet \
		--out $(NOVA_PROXY)/evaluate

clean:
	rm -rf $(VENV) demo-output bench-data nova-proxy
