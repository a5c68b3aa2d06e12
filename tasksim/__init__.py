"""tasksim: continuous drift monitoring and source re-selection for fine-tuned models.

``tasksim.open(config_path)`` returns a ``Monitor`` (``.run()``, ``.rank()``, ``.history()``,
``.report()``); see ``tasksim.api`` and the README's "Python API" section. Importing tasksim is
cheap: torch, Evidently and pandas load on first use.
"""

from __future__ import annotations

import os as _os
import sys as _sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tasksim.api import CycleReport, Decision, History, Monitor, RankedSource, RankingResult

# Idle OpenMP workers sleep instead of spinning. Read by libgomp once, when torch loads, so it is
# set here, before any tasksim module imports torch: the library then runs as fast from a notebook
# (where numpy's BLAS threads and torch's OpenMP threads share the cores) as from the CLI. On a
# busy 2-core host spinning workers made LogME (N=10k, D=1024) 4-10x slower (docs/benchmarks.md).
# An explicit OMP_WAIT_POLICY is respected.
if "torch" not in _sys.modules:
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__all__ = ["CycleReport", "Decision", "History", "Monitor", "RankedSource", "RankingResult", "__version__", "open"]

__version__ = "0.1.0"

_API_NAMES = frozenset({"CycleReport", "Decision", "History", "Monitor", "RankedSource", "RankingResult"})


def open(config_path: str | Path) -> Monitor:  # shadows the builtin on purpose: the documented entry point
    """Load and validate the config at ``config_path`` and return a ``tasksim.api.Monitor`` for it."""
    from tasksim.api import open as _open

    return _open(config_path)


def __getattr__(name: str) -> Any:
    if name in _API_NAMES:
        from tasksim import api

        return getattr(api, name)
    raise AttributeError(f"module 'tasksim' has no attribute {name!r}")
