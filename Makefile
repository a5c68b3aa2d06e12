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
# The demo workspace and the stamp its prebuilt caches leave (`tasksim demo --rebuild` removes both);
# name another workspace here, not in DEMO_ARGS. A `--small` in DEMO_ARGS prebuilds the small one.
DEMO_WORKSPACE ?= demo-workspace
DEMO_CACHES := $(DEMO_WORKSPACE)/state/.prebuilt
export PYTHON VENV TORCH_SPEC TORCH_INDEX_URL

BIN := $(abspath $(VENV))/bin
# the venv's commands first on PATH, as if it were activated
RUN := env PATH="$(BIN):$$PATH" VIRTUAL_ENV="$(abspath $(VENV))"

.PHONY: install demo demo-caches test bench

install:
	bash deploy/install.sh

# What the demo's first cycle needs, built once (the workspace, every source's MiniLM embeddings and
# fitted head, in the workspace's content-addressed caches): minutes on a small machine, skipped
# while the stamp exists. With it in place the first ranking comes within a minute of `make demo`
# (docs/benchmarks.md, "The demo's first ranking").
demo-caches: $(DEMO_CACHES)

$(DEMO_CACHES): | install
	$(RUN) $(BIN)/tasksim demo --workspace $(DEMO_WORKSPACE) --prebuild $(filter --small,$(DEMO_ARGS))
	touch $@

demo: install $(DEMO_CACHES)
	$(RUN) $(BIN)/tasksim demo --workspace $(DEMO_WORKSPACE) $(DEMO_ARGS)

test: install
	$(RUN) $(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: install
	$(RUN) $(BIN)/python bench/metrics.py
