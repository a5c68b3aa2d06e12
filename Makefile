# `make demo` and `make test` are the two commands. Both create the virtual environment $(VENV) from
# $(PYTHON) (the system python3 is fine: nothing is installed into it) and install into it, once
# (deploy/install.sh skips pip when pyproject.toml and the torch choice are unchanged).
#
# Torch: TORCH_SPEC is installed first, from TORCH_INDEX_URL when set (see README "Quick start"):
#   make test TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu     # CPU-only build
#   make test TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128   # CUDA 12.8 build
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX_URL ?=
PYTEST_ARGS ?=
DEMO_ARGS ?=
export PYTHON VENV TORCH_SPEC TORCH_INDEX_URL

BIN := $(abspath $(VENV))/bin
# the venv's commands first on PATH, as if it were activated
RUN := env PATH="$(BIN):$$PATH" VIRTUAL_ENV="$(abspath $(VENV))"

.PHONY: install demo test bench

install:
	bash deploy/install.sh

demo: install
	$(RUN) $(BIN)/tasksim demo $(DEMO_ARGS)

test: install
	$(RUN) $(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: install
	$(RUN) $(BIN)/python bench/metrics.py
