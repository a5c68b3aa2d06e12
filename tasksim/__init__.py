"""tasksim: continuous drift monitoring and source re-selection for fine-tuned models."""

from __future__ import annotations

import os as _os
import sys as _sys

# Idle OpenMP workers sleep instead of spinning. Read by libgomp once, when torch loads, so it is
# set here, before any tasksim module imports torch: the library then runs as fast from a notebook
# (where numpy's BLAS threads and torch's OpenMP threads share the cores) as from the CLI. On a
# busy 2-core host spinning workers made LogME (N=10k, D=1024) 4-10x slower (docs/benchmarks.md).
# An explicit OMP_WAIT_POLICY is respected.
if "torch" not in _sys.modules:
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__all__ = ["__version__"]

__version__ = "0.1.0"
