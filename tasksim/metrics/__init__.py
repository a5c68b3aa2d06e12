"""Similarity and transferability measures: pure functions over tensors.

numpy arrays or torch tensors in, Python floats out; device and dtype follow the inputs,
accumulation is float64. See each function's docstring for its formula and citation.

One measure family a file: ``distances`` (MMD, Frechet, domain classifier, label shift),
``optimal_transport`` (OTDD), ``quality`` (label semantics, label noise, duplicates, coverage),
``representation`` (CKA, CCA), ``transfer/`` (LogME, H-scores, TransRate, GBC, LEEP, NCE, kNN,
...). Every measure's metadata (direction, inputs, bootstrap, default weight) is in ``catalog``;
shared numerics in ``_kernels``; input validation in ``_validate``.

The families load on first use (PEP 562), so ``tasksim.metrics.catalog`` is importable without
torch: the configuration validates ranking weights against it.
"""

from __future__ import annotations

import importlib
from typing import Any

# Where each public name lives; tests/metrics check this equals the families' own __all__.
_FAMILIES: dict[str, tuple[str, ...]] = {
    "transfer": ("PROFILE_MEASURES", "RESAMPLED_MEASURES", "FeatureStats", "bootstrap_many", "gbc", "hscore",
                 "hscore_regularized", "knn_accuracy", "lda_probe_accuracy", "leep",
                 "linear_probe_accuracy", "logme", "nce", "nleep", "parc", "precompute", "profile_many",
                 "ridge_probe_accuracy", "sfda",
                 "transferability_profile", "transrate"),
    "distances": ("MMDSelfBlock", "domain_classifier_auc", "domain_separability", "frechet_distance",
                  "label_shift", "median_bandwidth", "mmd2", "mmd2_self_block", "mmd_test"),
    "optimal_transport": ("otdd",),
    "quality": ("LABEL_NOISE_MAX_SAMPLES", "coverage", "duplicate_rate", "is_code_vocabulary", "label_noise_rate",
                "label_overlap", "missing_rate", "normalize_label_name"),
    "representation": ("MinibatchCKA", "kernel_cka", "linear_cka", "minibatch_cka", "pwcca", "svcca",
                       "unbiased_hsic"),
}
_HOME = {name: family for family, names in _FAMILIES.items() for name in names}

__all__ = ["catalog", *_HOME]


def __getattr__(name: str) -> Any:
    if name == "catalog" or name in _FAMILIES:
        return importlib.import_module(f"{__name__}.{name}")
    family = _HOME.get(name)
    if family is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{family}"), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
