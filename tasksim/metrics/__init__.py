"""Similarity and transferability measures: pure functions over tensors.

numpy arrays or torch tensors in, Python floats out; device and dtype follow the inputs,
accumulation is float64. See each function's docstring for its formula and citation.
"""

from __future__ import annotations

from tasksim.metrics import distances as _distances
from tasksim.metrics import representation as _representation
from tasksim.metrics import transferability as _transferability
from tasksim.metrics.distances import *  # noqa: F401,F403
from tasksim.metrics.representation import *  # noqa: F401,F403
from tasksim.metrics.transferability import *  # noqa: F401,F403

__all__ = [*_transferability.__all__, *_distances.__all__, *_representation.__all__]
