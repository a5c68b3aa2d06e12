"""Transferability: how well a source's representation of the target fits the target labels.

Every public measure takes numpy arrays or torch tensors (rows are samples) and returns a Python
``float``. Computation runs on the device of the inputs; covariances, Gram matrices and
decompositions run in float64. Label ids are remapped to ``0..C-1`` first (any ints or strings).
Invalid inputs raise :class:`tasksim.errors.MetricInputError`: NaN/Inf, fewer than two classes,
a class with fewer than two samples, mismatched lengths.

Layout: ``stats`` (the shared second-order statistics, :class:`FeatureStats`), ``evidence`` (LogME,
H-scores, TransRate, GBC), ``probs`` (LEEP, NCE), ``knn`` (kNN accuracy), ``ridge`` (the closed-form
leave-one-out ridge probe), ``lda`` (the cross-validated shrinkage LDA probe), ``extra`` (NLEEP, SFDA, PARC, linear probe), ``batched`` (whole
profiles of one or K sources), ``resample`` (their confidence bootstrap, each resample from its
distinct rows), ``_linalg`` (the Gram and log-determinant kernels they share).
"""

from __future__ import annotations

from tasksim.metrics.transfer.batched import PROFILE_MEASURES, profile_many, transferability_profile
from tasksim.metrics.transfer.evidence import gbc, hscore, hscore_regularized, logme, transrate
from tasksim.metrics.transfer.extra import linear_probe_accuracy, nleep, parc, sfda
from tasksim.metrics.transfer.knn import knn_accuracy
from tasksim.metrics.transfer.probs import leep, nce
from tasksim.metrics.transfer.resample import RESAMPLED_MEASURES, bootstrap_many
from tasksim.metrics.transfer.lda import lda_probe_accuracy
from tasksim.metrics.transfer.ridge import ridge_probe_accuracy
from tasksim.metrics.transfer.stats import FeatureStats, precompute

__all__ = [
    "PROFILE_MEASURES",
    "RESAMPLED_MEASURES",
    "FeatureStats",
    "bootstrap_many",
    "gbc",
    "hscore",
    "hscore_regularized",
    "knn_accuracy",
    "lda_probe_accuracy",
    "leep",
    "linear_probe_accuracy",
    "logme",
    "nce",
    "nleep",
    "parc",
    "precompute",
    "profile_many",
    "ridge_probe_accuracy",
    "sfda",
    "transferability_profile",
    "transrate",
]
