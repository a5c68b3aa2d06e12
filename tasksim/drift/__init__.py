"""Drift stage: one typed verdict per window (drifted? which kind?), with its evidence.

The drift policy lives here (``tasksim.cycle`` only calls :class:`DriftMonitor`):

- :class:`DriftReference` is fitted once per reference and cached (``.npz``, no pickle): the
  monitored columns (numeric scalar inputs by name; for text or vector inputs ``pc1..pcK``,
  principal components of the embeddings, ``pc_residual``, the out-of-fold reconstruction
  error, and for sparse embeddings ``pc_zero_share``, each row's share of exact zeros), kernel features for an MMD, and a reference-fitted multinomial logistic model with its
  cross-fitted predictions and losses (for label tests).
- :func:`calibrate` measures every null by bootstrapping the reference against itself at the
  window's size bucket (:func:`calibration_rows`), cached per reference and bucket.
- :func:`check_window` returns a :class:`DriftVerdict`: five test families share the per-window
  false-alarm budget (``drift.false_alarm_rate``, 1%; :data:`ALPHA_SHARES`, a union bound over
  half of it, the other half, :data:`REFERENCE_MARGIN`, held back for the reference's own
  sampling error, so that the rate holds for nearly every reference, not only on average; with
  ``drift.reference_delta`` set, each family's null is also bounded given the reference,
  :mod:`tasksim.drift.given_reference`; off by default): a
  calibrated max-statistic over the columns with the MMD (concentrated and diffuse shifts); the
  evidence accumulated over windows (``cusum``: EWMAs of the columns' mean normal scores and of the
  MMD's mean embedding, whose null includes the shared reference's own sampling error,
  :mod:`tasksim.drift.sequential`; gradual shifts); the label marginal (labels, else predicted
  labels: BBSE); the concept test (the reference model's label-noise likelihood ratio on labelled
  rows, :func:`tasksim.drift.checks.corruption_llr`, against the reference's rows of the same
  classes, overall and per class, by within-class permutations; and
  whether p(predicted label | label) moved); and the label evidence accumulated over windows
  (``label_cusum``). Label tests predict each window row with one of the reference's 5
  cross-fitting models, so window and reference predictions are exchangeable, and their G tests
  have permutation nulls.
- The kind: p(x) moved (an input test fired) -> ``input``, unless the label marginal moved too
  (a label test fired), the reference reweighted to the window's class marginal shows no input
  shift, and p(y|x) held (no concept test fired) -> ``label_prior``. p(x) did not visibly move:
  a concept test fired -> ``concept`` (under a pure label-prior shift the class-stratified concept
  tests hold, so a marginal that moved with it does not make it a prior shift); else a label test
  -> ``label_prior``. Tests that cannot run say why ("not testable: ...").
- Late labels: a cycle re-tests past windows whose labels arrive later (``tasksim.cycle``).

Evidence and numbers: docs/benchmarks.md, "Drift verdict on real streams". The per-column
functions below (:func:`monitored_frames`, :func:`detect_drift`, :func:`calibrate_thresholds`)
are the Evidently engine: :func:`detect_drift` runs any configured Evidently method per column
(the default KS is computed directly by :func:`ks_pvalues`, vectorised, because Evidently's
exact-mode KS made calibration slow). Their notes follow.

Why calibrate
-------------
Evidently's default choice depends only on the reference size: above 1000 rows it uses the
normed Wasserstein distance (Jensen-Shannon for <= 5 distinct values) with a fixed threshold of
0.1, whatever the window size. The null distribution of a distance shrinks like ``1/sqrt(n)``,
so on small windows identical distributions look drifted (70-93% false alarms per column at 50-100
rows against a 100k reference), and on large windows small shifts pass. P-value methods have no
multiple-testing correction either: 20 columns at alpha 0.05 give a false column in 64% of the runs.

:func:`calibrate_thresholds` draws ``rounds`` pseudo-windows of ``window_rows`` rows from the
reference, compares each with the rest of the reference (a disjoint split: no row is on both
sides), with exactly the Evidently method :func:`detect_drift` will use, and records the scores.
Scores are put on one scale (p-values through the normal quantile, distances as standardised
``log d``), and a split-conformal quantile of the per-round maximum over columns (a Westfall-Young
single-step max-T) gives one common cut-off, mapped back to a per-column threshold. Identical
distributions then flag at least one column in at most about ``false_alarm_rate`` of the windows
(``control="any_column"``), or reach ``drift_share`` in at most about that share
(``control="dataset"``: the k-th largest instead of the maximum). Unlike Bonferroni it needs no
per-column extreme quantiles (200 rounds suffice for 20 columns at 5%) and it accounts for
correlated columns.

The thresholds depend only on (reference, window_rows, config, rounds, seed, options): compute
them once per reference and cache them. They hold for the window size they were measured at:
smaller windows than ``window_rows`` raise the false-alarm rate again (recalibrate per window-size
bucket). With ``control="any_column"`` the dataset verdict is best read with a small
``drift_share`` (any column); with the default 0.5 it only fires when half the columns move.
Evidence and timings: ``docs/benchmarks.md`` (section "Drift").

Evidently is imported lazily inside the functions (the import takes several seconds).
"""

from __future__ import annotations

from tasksim.drift.checks import Calibration, calibrate, calibration_rows, check_window, ks_pvalues, tail_cut
from tasksim.drift.columns import (
    DISTANCE_METHODS,
    P_VALUE_METHODS,
    ColumnDrift,
    DriftConfigError,
    DriftInternalError,
    DriftResult,
    _dataset_k,  # noqa: F401  (package-private: the tests reach it through the package)
    _evidently,  # noqa: F401  (package-private: Evidently's lazy import, for the tests)
    calibrate_thresholds,
    detect_drift,
    monitored_frames,
    pca_components,
)
from tasksim.drift.monitor import _REFERENCES, DriftMonitor, StateStore  # noqa: F401  (_REFERENCES: the cache)
from tasksim.drift.reference import DriftReference
from tasksim.drift.sequential import EWMA_LAMBDA, EWMA_LAMBDA_FAST
from tasksim.drift.verdict import (
    ALPHA_SHARES,
    DRIFT_KINDS,
    REFERENCE_MARGIN,
    DriftKind,
    DriftTest,
    DriftVerdict,
    as_verdict,
)

__all__ = [
    "ALPHA_SHARES",
    "DISTANCE_METHODS",
    "DRIFT_KINDS",
    "EWMA_LAMBDA",
    "EWMA_LAMBDA_FAST",
    "P_VALUE_METHODS",
    "REFERENCE_MARGIN",
    "Calibration",
    "ColumnDrift",
    "DriftConfigError",
    "DriftInternalError",
    "DriftKind",
    "DriftMonitor",
    "DriftReference",
    "DriftResult",
    "DriftTest",
    "DriftVerdict",
    "StateStore",
    "as_verdict",
    "calibrate",
    "calibrate_thresholds",
    "calibration_rows",
    "check_window",
    "detect_drift",
    "ks_pvalues",
    "monitored_frames",
    "pca_components",
    "tail_cut",
]
