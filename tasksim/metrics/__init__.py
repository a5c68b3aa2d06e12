"""Similarity and transferability measures: pure functions over tensors.

numpy arrays or torch tensors in, Python floats out; device and dtype follow the inputs,
accumulation is float64. See each function's docstring for its formula and citation.

One measure family a file: ``distances`` (MMD, Frechet, domain classifier, label shift), ``optimal_transport`` (OTDD),
``quality`` (label semantics, label noise, duplicates, coverage), ``representation`` (CKA, CCA),
``transfer/`` (LogME, H-scores, TransRate, GBC, LEEP, NCE, kNN, ...). Every measure's metadata
(direction, inputs, bootstrap, default weight) is in ``catalog``; shared numerics in
``_kernels``; input validation in ``_validate``.
"""

from __future__ import annotations

from tasksim.metrics import catalog
from tasksim.metrics import distances as _distances
from tasksim.metrics import optimal_transport as _otdd
from tasksim.metrics import quality as _quality
from tasksim.metrics import representation as _representation
from tasksim.metrics import transfer as _transfer
from tasksim.metrics.distances import *  # noqa: F401,F403
from tasksim.metrics.optimal_transport import *  # noqa: F401,F403
from tasksim.metrics.quality import *  # noqa: F401,F403
from tasksim.metrics.representation import *  # noqa: F401,F403
from tasksim.metrics.transfer import *  # noqa: F401,F403

__all__ = ["catalog", *_transfer.__all__, *_distances.__all__, *_otdd.__all__, *_quality.__all__,
           *_representation.__all__]
