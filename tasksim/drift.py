"""Drift stage: one typed verdict per window (drifted? which kind?), with its evidence.

The drift policy lives here (``tasksim.cycle`` only calls :class:`DriftMonitor`):

- :class:`DriftReference` is fitted once per reference and cached (``.npz``, no pickle): the
  monitored columns (numeric scalar inputs by name; for text or vector inputs ``pc1..pcK``,
  principal components of the embeddings, and ``pc_residual``, the out-of-fold reconstruction
  error), kernel features for an MMD, and a reference-fitted multinomial logistic model with its
  cross-fitted predictions and losses (for label tests).
- :func:`calibrate` measures every null by bootstrapping the reference against itself at the
  window's size bucket (:func:`calibration_rows`), cached per reference and bucket.
- :func:`check_window` returns a :class:`DriftVerdict`: five test families share the per-window
  false-alarm budget (``drift.false_alarm_rate``, 1%; :data:`ALPHA_SHARES`): a calibrated
  max-statistic over the columns with the MMD (concentrated and diffuse shifts), a CUSUM over
  windows (gradual shifts), the label marginal (labels, else predicted labels: BBSE), the
  reference model's loss on labelled rows (concept) and a CUSUM of those two. The kind is
  ``input`` unless the window's class marginal explains the input shift (``label_prior``);
  ``concept`` when only the loss moved. Tests that cannot run say why ("not testable: ...").
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

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from tasksim.config import DriftConfig, InputColumns
from tasksim.errors import ConfigError, DataError, TasksimError

__all__ = [
    "ALPHA_SHARES",
    "DRIFT_KINDS",
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
]

log = logging.getLogger(__name__)

#: Evidently stattests whose score is a p-value: drift when the score is at or below the threshold.
P_VALUE_METHODS = frozenset({
    "anderson", "chisquare", "cramer_von_mises", "empirical_mmd", "es", "fisher_exact", "g_test",
    "ks", "mannw", "t_test", "TVD", "z",
})
#: Evidently stattests whose score is a distance: drift when the score is at or above the threshold.
DISTANCE_METHODS = frozenset({"ed", "hellinger", "jensenshannon", "kl_div", "psi", "wasserstein"})

_TINY = 1e-300


class DriftConfigError(ConfigError, ValueError):
    """A drift setting cannot be applied to this data (one line, exit code 2)."""


class DriftInternalError(TasksimError, RuntimeError):
    """Evidently returned something the drift stage cannot read (a library change, not bad input)."""


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ColumnDrift:
    """One monitored column: Evidently's score, the threshold applied and the verdict.

    ``method`` is the Evidently stattest name actually used (``wasserstein``, ``ks``...). For
    p-value methods the column drifted when ``score <= threshold`` (``<`` for some methods), for
    distances when ``score >= threshold``: the verdict is Evidently's own.
    """

    column: str
    score: float
    threshold: float
    drifted: bool
    method: str


@dataclass(frozen=True)
class DriftResult:
    """Dataset-level verdict: ``detected`` when ``share`` (drifted / monitored columns) >= drift_share.

    ``method`` is the stattest name when every column used the same one, else the sorted names
    joined by ``+`` (always a short, bounded string).
    """

    detected: bool
    share: float
    columns: tuple[ColumnDrift, ...]
    method: str
    reference_rows: int
    current_rows: int

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["columns"] = [asdict(c) for c in self.columns]
        return out

    @property
    def drifted_columns(self) -> tuple[str, ...]:
        return tuple(c.column for c in self.columns if c.drifted)


# --------------------------------------------------------------------------------------------
# Which columns are monitored
# --------------------------------------------------------------------------------------------

def _is_numeric_scalar(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


def _is_vector(t: pa.DataType) -> bool:
    return (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)
            or pa.types.is_binary(t) or pa.types.is_large_binary(t)
            or isinstance(t, pa.ExtensionType))


def _as_matrix(x: Any, name: str) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    t = t.detach().to(device="cpu", dtype=torch.float64)
    if t.ndim == 1:
        t = t.unsqueeze(1)
    if t.ndim != 2:
        raise DataError(f"drift: {name}: expected a 2-D feature matrix (rows x dims), got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).any(dim=1).sum())
        raise DataError(f"drift: {name}: {bad} rows contain NaN or Inf")
    return t


def pca_components(reference_features: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and the first ``k`` principal axes (``k x D``) of the reference features.

    In float64: the eigenvectors of the ``D x D`` scatter matrix when there are more rows than
    dimensions (a 1000 x 784 reference: 0.5 s instead of 1.2 s for the SVD here), else the SVD of
    the centred reference; ``k`` is capped at ``min(D, rows - 1)``. Signs are fixed so that the
    largest-magnitude loading of every axis is positive, which makes the axes (and the ``pcN``
    series) deterministic.
    """
    x = _as_matrix(reference_features, "reference features")
    n, d = x.shape
    if n < 2:
        raise DataError(f"drift: need at least 2 reference rows to fit principal components, got {n}")
    k = max(1, min(int(k), d, n - 1))
    mean = x.mean(dim=0)
    centred = (x - mean).numpy()
    if n > d:
        _, vecs = np.linalg.eigh(centred.T @ centred)
        axes = torch.from_numpy(np.ascontiguousarray(vecs[:, ::-1][:, :k].T))
    else:
        _, _, vh = np.linalg.svd(centred, full_matrices=False)
        axes = torch.from_numpy(vh[:k].copy())
    pivot = axes.abs().argmax(dim=1)
    signs = torch.sign(axes.gather(1, pivot.unsqueeze(1))).squeeze(1)
    signs[signs == 0] = 1.0
    return mean, axes * signs.unsqueeze(1)


def _column_frame(table: pa.Table, names: list[str], which: str) -> pd.DataFrame:
    missing = [n for n in names if n not in table.column_names]
    if missing:
        raise DataError(f"drift: {which} window has no column(s) {missing}")
    data = {}
    for n in names:
        col = table.column(n)
        if pa.types.is_decimal(col.type):
            col = col.cast(pa.float64())
        data[n] = col.to_numpy(zero_copy_only=False)
    return pd.DataFrame(data, columns=names)


def monitored_frames(
    reference_table: pa.Table,
    current_table: pa.Table,
    reference_features: torch.Tensor,
    current_features: torch.Tensor,
    columns: InputColumns,
    config: DriftConfig,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return the (reference, current) frames whose columns are monitored for drift.

    - Numeric scalar input columns (``feature_columns`` of integer, float or decimal type) keep
      their own names. Other scalar columns (strings, booleans, timestamps) are not monitored.
    - If there is a text column or a vector input (list, fixed-size list, binary or extension
      type), the first ``config.embedding_components`` principal components of the features are
      added as ``pc1..pcK``, fitted on ``reference_features`` only and applied to both windows.
      Feature rows must line up with table rows.
    - ``config.columns``, when given, keeps only those names (scalar names and/or ``pcN``), in that
      order; a name that is not available raises ``DataError``.
    - More than ``config.max_columns`` columns (when set) is a configuration error
      (:class:`DriftConfigError`, exit code 2): no column is dropped silently.
    """
    if reference_table.num_rows == 0:
        raise DataError("drift: the reference window is empty")
    if current_table.num_rows == 0:
        raise DataError("drift: the current window is empty")
    for name in columns.feature_columns:
        for table, which in ((reference_table, "reference"), (current_table, "current")):
            if name not in table.column_names:
                raise DataError(f"drift: {which} window has no input column {name!r}")
    scalars: list[str] = []
    vector_inputs = bool(columns.text_column)
    for name in columns.feature_columns:
        if name == columns.label_column:
            continue
        ref_type = reference_table.schema.field(name).type
        cur_type = current_table.schema.field(name).type
        if _is_numeric_scalar(ref_type):
            if not _is_numeric_scalar(cur_type):
                raise DataError(f"drift: input column {name!r} is {ref_type} in the reference but {cur_type} now")
            scalars.append(name)
        elif _is_vector(ref_type):
            vector_inputs = True

    candidates = list(scalars)
    ref_pcs = cur_pcs = None
    if vector_inputs:
        ref_x = _as_matrix(reference_features, "reference features")
        cur_x = _as_matrix(current_features, "current features")
        if ref_x.shape[0] != reference_table.num_rows:
            raise DataError(f"drift: {ref_x.shape[0]} reference feature rows for {reference_table.num_rows} table rows")
        if cur_x.shape[0] != current_table.num_rows:
            raise DataError(f"drift: {cur_x.shape[0]} current feature rows for {current_table.num_rows} table rows")
        if ref_x.shape[1] != cur_x.shape[1]:
            raise DataError(f"drift: reference features have {ref_x.shape[1]} dims, current {cur_x.shape[1]}")
        mean, axes = pca_components(ref_x, config.embedding_components)
        ref_pcs = ((ref_x - mean) @ axes.T).numpy()
        cur_pcs = ((cur_x - mean) @ axes.T).numpy()
        pc_names = [f"pc{i + 1}" for i in range(axes.shape[0])]
        clash = sorted(set(pc_names) & set(scalars))
        if clash:
            raise DataError(f"drift: input column(s) {clash} clash with the principal-component names pc1..pcK")
        candidates += pc_names

    if config.columns is not None:
        unknown = [c for c in config.columns if c not in candidates]
        if unknown:
            raise DataError(f"drift.columns: {unknown} are not monitorable here; available: {candidates}")
        selected = list(dict.fromkeys(config.columns))
    else:
        selected = candidates
    if not selected:
        raise DataError("drift: no monitorable columns (no numeric input columns and no text/vector input)")
    if config.max_columns is not None and len(selected) > config.max_columns:
        raise DriftConfigError(f"drift.max_columns: {len(selected)} columns are monitored but max_columns is "
                               f"{config.max_columns}; raise it, list drift.columns, or remove the limit")

    chosen_scalars = [c for c in selected if c in scalars]
    ref = _column_frame(reference_table, chosen_scalars, "reference")
    cur = _column_frame(current_table, chosen_scalars, "current")
    if ref_pcs is not None:
        for i, name in enumerate(pc_names):
            if name in selected:
                ref[name] = ref_pcs[:, i]
                cur[name] = cur_pcs[:, i]
    return ref[selected], cur[selected]


# --------------------------------------------------------------------------------------------
# Evidently plumbing
# --------------------------------------------------------------------------------------------

def _evidently() -> Any:
    """Import the Evidently pieces lazily (the import takes seconds); cached by Python's import system."""
    from evidently.legacy.calculations.stattests import registry
    from evidently.legacy.core import ColumnType

    return registry, ColumnType


@contextlib.contextmanager
def _numpy_seed(seed: int) -> Iterator[None]:
    """Some Evidently methods (empirical_mmd, text drift) draw from numpy's global generator:
    seed it for the call and restore the caller's state afterwards."""
    state = np.random.get_state()
    np.random.seed(seed % (2**32))
    try:
        yield
    finally:
        np.random.set_state(state)


def _method_arg(config: DriftConfig) -> str | None:
    return None if config.method == "auto" else config.method


def _is_numerical(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def _clean(series: pd.Series) -> pd.Series:
    """What Evidently does before a drift test: +-inf -> NaN, then drop NaN."""
    if _is_numerical(series):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        finite = np.isfinite(values)
        return series if finite.all() else series[finite]
    return series.dropna()


def _check_frames(reference: pd.DataFrame, current: pd.DataFrame) -> list[str]:
    if not isinstance(reference, pd.DataFrame) or not isinstance(current, pd.DataFrame):
        raise DataError("drift: reference and current must be pandas DataFrames")
    if len(reference) == 0:
        raise DataError("drift: the reference window is empty")
    if len(current) == 0:
        raise DataError("drift: the current window is empty")
    cols = list(reference.columns)
    if not all(isinstance(c, str) for c in cols):
        raise DataError(f"drift: column names must be strings, got {cols}")
    if not cols:
        raise DataError("drift: no columns to monitor")
    if len(set(cols)) != len(cols):
        raise DataError("drift: duplicate column names in the reference frame")
    missing = [c for c in cols if c not in current.columns]
    if missing:
        raise DataError(f"drift: current window lacks monitored column(s) {missing}")
    return cols


def _resolve(registry: Any, column_type: Any, ref: pd.Series, cur: pd.Series | None, method: str | None) -> Any:
    """The Evidently StatTest object for one column (Evidently's own default choice when ``method`` is None)."""
    try:
        return registry.get_stattest(ref, cur if cur is not None else ref.iloc[:0], column_type, method)
    except ValueError as exc:  # unknown name, or a method that does not fit the column type
        raise DriftConfigError(f"drift.method: {exc}") from None


def _summary_method(names: list[str]) -> str:
    unique = sorted(set(names))
    return unique[0] if len(unique) == 1 else "+".join(unique)


def _result(cols: list[ColumnDrift], config: DriftConfig, ref_rows: int, cur_rows: int) -> DriftResult:
    share = sum(c.drifted for c in cols) / len(cols)
    return DriftResult(
        detected=bool(share >= config.drift_share),
        share=float(share),
        columns=tuple(cols),
        method=_summary_method([c.method for c in cols]),
        reference_rows=int(ref_rows),
        current_rows=int(cur_rows),
    )


# --------------------------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------------------------

def detect_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    config: DriftConfig,
    thresholds: dict[str, float] | None = None,
    *,
    engine: Literal["stattest", "report"] = "stattest",
) -> DriftResult:
    """Per-column drift of ``current`` against ``reference`` with Evidently 0.7.

    Every column of ``reference`` is monitored (``current`` must have them all). Numeric columns
    are Evidently "numerical", others "categorical". Non-finite values are dropped per column
    (as Evidently does); a column left without values raises ``DataError``, and so does an empty
    frame.

    Method: ``config.method`` (``auto``: Evidently's default choice per column). Threshold:
    ``thresholds[column]`` when ``thresholds`` is given (from :func:`calibrate_thresholds`; it
    must cover every column, and ``auto`` is then resolved from the reference alone, as in the
    calibration, so the threshold always meets the statistic it was measured for), else
    ``config.threshold``, else the method's Evidently default.

    ``engine="stattest"`` (default) calls Evidently's stattest objects directly: the same
    resolution, cleaning and method code as Evidently's ``ValueDrift`` without its histograms,
    correlations and widgets. ``engine="report"`` runs one Evidently ``Report`` of per-column
    ``ValueDrift`` metrics and reads scores and test statuses by metric id; the two give the same
    numbers (tested), the report engine is slower.
    """
    if engine not in ("stattest", "report"):
        raise DriftConfigError(f"engine: expected 'stattest' or 'report', got {engine!r}")
    cols = _check_frames(reference, current)
    if thresholds is not None:
        missing = [c for c in cols if c not in thresholds]
        if missing:
            raise DataError(f"drift: calibrated thresholds do not cover column(s) {missing}; recalibrate")
    registry, column_type_enum = _evidently()
    method = _method_arg(config)

    cleaned: dict[str, tuple[pd.Series, pd.Series, Any]] = {}
    stattests: dict[str, Any] = {}
    col_thresholds: dict[str, float | None] = {}
    for c in cols:
        ctype = column_type_enum.Numerical if _is_numerical(reference[c]) else column_type_enum.Categorical
        if ctype == column_type_enum.Numerical and not _is_numerical(current[c]):
            raise DataError(f"drift: column {c!r} is numeric in the reference but {current[c].dtype} now")
        ref_c, cur_c = _clean(reference[c]), _clean(current[c])
        if ref_c.empty:
            raise DataError(f"drift: column {c!r} has no finite values in the reference window")
        if cur_c.empty:
            raise DataError(f"drift: column {c!r} has no finite values in the current window")
        cleaned[c] = (ref_c, cur_c, ctype)
        stattests[c] = _resolve(registry, ctype, ref_c, None if thresholds is not None else cur_c, method)
        col_thresholds[c] = float(thresholds[c]) if thresholds is not None else config.threshold

    if engine == "stattest":
        out = []
        with _numpy_seed(0):
            for c in cols:
                ref_c, cur_c, ctype = cleaned[c]
                st = stattests[c]
                res = st(ref_c, cur_c, ctype, col_thresholds[c])
                out.append(ColumnDrift(column=c, score=float(res.drift_score), threshold=float(res.actual_threshold),
                                       drifted=bool(res.drifted), method=st.name))
    else:
        out = _detect_with_report(reference[cols], current[cols], cleaned, stattests, col_thresholds,
                                  explicit_method=method is not None or thresholds is not None)
    return _result(out, config, len(reference), len(current))


def _detect_with_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    cleaned: dict[str, tuple[pd.Series, pd.Series, Any]],
    stattests: dict[str, Any],
    col_thresholds: dict[str, float | None],
    *,
    explicit_method: bool,
) -> list[ColumnDrift]:
    """One Evidently Report of per-column ValueDrift metrics; results read by metric id."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift

    _, column_type_enum = _evidently()
    cols = list(reference.columns)
    numerical = [c for c in cols if cleaned[c][2] == column_type_enum.Numerical]
    categorical = [c for c in cols if c not in numerical]
    definition = DataDefinition(numerical_columns=numerical, categorical_columns=categorical)
    metrics = {}
    for c in cols:
        metric = ValueDrift(column=c, method=stattests[c].name if explicit_method else None,
                            threshold=col_thresholds[c])
        metrics[metric.metric_id] = (c, metric)
    report = Report([m for _, m in metrics.values()], include_tests=True)
    with _numpy_seed(0):
        snapshot = report.run(Dataset.from_pandas(current, data_definition=definition),
                              Dataset.from_pandas(reference, data_definition=definition))
    payload = snapshot.dict()
    # Evidently reports the method's display name; map it back through the stattest objects resolved
    # above (the same ones Evidently picks), not through Evidently's private registry.
    by_name = {st.display_name: st.name for st in stattests.values()}
    scores: dict[str, tuple[float, float, str]] = {}
    for item in payload["metrics"]:
        if item["id"] in metrics:
            conf = item["config"]
            name = by_name.get(conf.get("method"), conf.get("method"))
            scores[item["id"]] = (float(item["value"]), float(conf["threshold"]), str(name))
    statuses: dict[str, str] = {}
    for test in payload["tests"]:
        mid = (test.get("metric_config") or {}).get("metric_id")
        if mid in metrics:
            statuses[mid] = test["status"]
    out = []
    for mid, (c, _) in metrics.items():
        if mid not in scores or mid not in statuses:
            raise DriftInternalError(f"drift: Evidently report has no result for column {c!r} (metric {mid})")
        score, threshold, name = scores[mid]
        out.append(ColumnDrift(column=c, score=score, threshold=threshold, drifted=statuses[mid] == "FAIL",
                               method=name))
    return out


# --------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------

def _p_to_z(p: np.ndarray) -> np.ndarray:
    """p-value -> standard normal score (larger = more drift); uniform p under no drift -> N(0, 1)."""
    from scipy.special import ndtri

    p = np.clip(np.asarray(p, dtype=np.float64), _TINY, 1.0)
    z = -ndtri(p)
    return np.where(np.isnan(p), -np.inf, z)


def _z_to_p(z: float) -> float:
    from scipy.special import ndtr

    return float(ndtr(-z))


def _dataset_k(n_columns: int, drift_share: float) -> int:
    """Smallest number of drifted columns that makes ``detect_drift`` say detected."""
    for k in range(1, n_columns + 1):
        if k / n_columns >= drift_share:
            return k
    return n_columns


def calibrate_thresholds(
    reference: pd.DataFrame,
    window_rows: int,
    config: DriftConfig,
    rounds: int = 200,
    seed: int = 0,
    *,
    false_alarm_rate: float = 0.05,
    control: Literal["any_column", "dataset"] = "any_column",
    max_reference_rows: int | None = None,
) -> dict[str, float]:
    """Per-column thresholds for :func:`detect_drift` with a family-wise false-alarm target.

    Each of ``rounds`` rounds splits the reference at random into a pseudo-window of
    ``window_rows`` rows and a disjoint pseudo-reference (the other rows, at most
    ``max_reference_rows`` of them), and scores every column with the Evidently method that
    ``detect_drift`` will use (``config.method``; ``auto`` resolved on the full reference).

    Scores are put on one scale, larger = more drift: p-values through the normal quantile
    ``-ndtri(p)`` (uniform p under no drift -> N(0, 1), so one common p threshold results);
    distances as ``log d`` standardised by the mean and std of the first quarter of the rounds.
    On the remaining rounds the per-round maximum over columns (``control="any_column"``) or the
    per-round k-th largest (``control="dataset"``, k = drifted columns needed to reach
    ``config.drift_share``) is taken, and its split-conformal ``1 - false_alarm_rate`` quantile
    (order statistic ``ceil((1 - rate) * (held_out + 1))``) is mapped back to each column's own
    score scale. If a future window is exchangeable with the pseudo-windows (same distribution,
    same size), P(any column flags) resp. P(dataset detected) is at most ``false_alarm_rate`` on
    average over calibrations; one calibration's realised rate scatters around it by about
    ``sqrt(rate / held_out_rounds)``.

    A pseudo-reference smaller than the real one makes distance thresholds slightly larger
    (conservative); p-values do not depend on it. ``config.threshold`` is ignored. Deterministic
    given ``seed``. Cost: ``rounds x columns`` Evidently method calls on the pseudo-reference
    size (see docs/benchmarks.md); cap it with ``max_reference_rows`` for big references.
    """
    cols = _check_frames(reference, reference)
    n_ref = len(reference)
    window_rows = int(window_rows)
    if window_rows < 2:
        raise DriftConfigError(f"window_rows: expected >= 2, got {window_rows}")
    if n_ref - window_rows < 2:
        raise DataError(f"drift: calibration needs more reference rows ({n_ref}) than window_rows ({window_rows}) + 1")
    if not 0 < false_alarm_rate < 1:
        raise DriftConfigError(f"false_alarm_rate: expected 0 < rate < 1, got {false_alarm_rate}")
    if control not in ("any_column", "dataset"):
        raise DriftConfigError(f"control: expected 'any_column' or 'dataset', got {control!r}")
    if n_ref < 2 * window_rows:
        log.warning("drift calibration: reference (%d rows) is less than twice the window (%d rows); "
                    "distance thresholds will be conservative", n_ref, window_rows)
    pseudo_rows = n_ref - window_rows
    if max_reference_rows is not None:
        pseudo_rows = max(2, min(pseudo_rows, int(max_reference_rows)))

    registry, column_type_enum = _evidently()
    method = _method_arg(config)
    values: dict[str, np.ndarray] = {}
    plan: dict[str, tuple[Any, Any, bool]] = {}
    for c in cols:
        ctype = column_type_enum.Numerical if _is_numerical(reference[c]) else column_type_enum.Categorical
        full = _clean(reference[c])
        if full.empty:
            raise DataError(f"drift: column {c!r} has no finite values in the reference window")
        st = _resolve(registry, ctype, full, None, method)
        if st.name in P_VALUE_METHODS:
            p_value = True
        elif st.name in DISTANCE_METHODS:
            p_value = False
        else:
            raise DriftConfigError(f"drift.method: cannot calibrate method {st.name!r} (column {c!r}): its direction is unknown")
        plan[c] = (st, ctype, p_value)
        values[c] = reference[c].to_numpy()

    # Scores on one scale, larger = more drift. P-values are already comparable across columns
    # (uniform under no drift for continuous data): probit, no fitting. Distances are not: log, then
    # standardised per column with the mean/std of the first `fit` rounds only, so that the other
    # rounds are exchangeable with a future window and their quantile is an honest (split-conformal)
    # threshold.
    is_p = np.array([plan[c][2] for c in cols])
    fit = 0 if is_p.all() else max(10, rounds // 4)
    if rounds - fit < math.ceil(1 / false_alarm_rate):
        raise DriftConfigError(f"drift.calibration_rounds: {rounds} rounds ({fit} to standardise distances) cannot resolve a "
                         f"false-alarm rate of {false_alarm_rate}")
    rng = np.random.default_rng(seed)
    raw = np.empty((rounds, len(cols)), dtype=np.float64)
    with _numpy_seed(seed):
        for b in range(rounds):
            perm = rng.permutation(n_ref)
            win, rest = perm[:window_rows], perm[window_rows:window_rows + pseudo_rows]
            for j, c in enumerate(cols):
                st, ctype, _ = plan[c]
                ref_s, cur_s = _clean(pd.Series(values[c][rest])), _clean(pd.Series(values[c][win]))
                if ref_s.empty or cur_s.empty:
                    raise DataError(f"drift: column {c!r} is too sparse to calibrate at {window_rows} rows")
                raw[b, j] = float(st(ref_s, cur_s, ctype, None).drift_score)

    z = np.empty_like(raw)
    mu = np.zeros(len(cols))
    sd = np.ones(len(cols))
    degenerate = np.zeros(len(cols), dtype=bool)
    for j in range(len(cols)):
        if is_p[j]:
            z[:, j] = _p_to_z(raw[:, j])
            continue
        logd = np.log(np.clip(raw[:, j], _TINY, None))
        mu[j], sd[j] = logd[:fit].mean(), logd[:fit].std(ddof=1)
        degenerate[j] = not sd[j] > 1e-9 * max(1.0, abs(mu[j]))
        z[:, j] = -np.inf if degenerate[j] else (logd - mu[j]) / sd[j]
        z[np.isnan(raw[:, j]), j] = -np.inf  # Evidently never flags a NaN score
    k = 1 if control == "any_column" else _dataset_k(len(cols), config.drift_share)
    stat = -np.sort(-z[fit:], axis=1)[:, k - 1]  # k-th largest score per held-out round
    held_out = len(stat)
    rank = math.ceil((1 - false_alarm_rate) * (held_out + 1))  # P(new >= stat_(rank)) <= rate
    z_star = float(np.sort(stat)[rank - 1])
    if not np.isfinite(z_star):  # only when no column can score at all (e.g. every column constant)
        z_star = 0.0

    out: dict[str, float] = {}
    for j, c in enumerate(cols):
        if is_p[j]:
            out[c] = _z_to_p(z_star)
        elif degenerate[j]:
            # the same score in every round (e.g. a constant column): flag anything beyond it
            edge = float(np.nanmax(raw[:, j]))
            out[c] = edge * (1 + 1e-9) + 1e-12
        else:
            out[c] = float(math.exp(mu[j] + z_star * sd[j]))
    log.info("drift calibration: %d rounds (%d to standardise), window %d, pseudo-reference %d rows, %s control, "
             "z*=%.3f, held-out false-alarm rate %.3f", rounds, fit, window_rows, pseudo_rows, control, z_star,
             float(np.mean(stat >= z_star)))
    return out


# --------------------------------------------------------------------------------------------
# The window decision: typed verdict, reference model, calibration, tests
# --------------------------------------------------------------------------------------------

#: The kinds of shift a verdict can name (``none`` when the window did not drift).
DRIFT_KINDS: tuple[str, ...] = ("input", "label_prior", "concept")
DriftKind = Literal["none", "input", "label_prior", "concept"]

#: Share of the per-window false-alarm budget (``drift.false_alarm_rate``) given to each test
#: family. The families are combined by a union bound (Bonferroni over five families), so the
#: window-level false-alarm rate is at most the budget when every family meets its share.
ALPHA_SHARES: dict[str, float] = {"input": 0.5, "cusum": 0.2, "label_prior": 0.1, "concept": 0.1,
                                  "label_cusum": 0.1}
#: CUSUM reference value on the per-component z scale (half a standard deviation of drift per window).
CUSUM_K = 0.5
#: Monte-Carlo draws for the label-prior and concept nulls (per window; resolution 1/draws).
LABEL_NULL_DRAWS = 4000
#: Random Fourier features of the Gaussian kernel for the multivariate (MMD) test.
RFF_DIM = 256
#: Smallest pseudo-window the calibration uses; references below twice this are not testable.
MIN_CALIBRATION_ROWS = 20
_Z_CLIP = (-4.0, 8.0)


@dataclass(frozen=True)
class DriftTest:
    """One test family of a window verdict.

    ``name``: ``columns`` (calibrated max-statistic over the monitored columns, Evidently per
    column), ``mmd`` (kernel MMD on the embeddings / all columns), ``cusum`` (accumulated
    per-component evidence over windows), ``label_prior`` (labels, or ``bbse``: the reference
    model's predicted labels), ``concept`` (the reference model's loss on labelled rows).
    ``statistic`` and ``threshold`` are on the scale given by ``detail``; ``p_value`` where the
    test has one. ``not_testable`` says why the test could not run (then ``fired`` is False).
    """

    name: str
    kind: str
    fired: bool
    statistic: float | None = None
    threshold: float | None = None
    p_value: float | None = None
    evidence: tuple[str, ...] = ()
    detail: str = ""
    not_testable: str | None = None


@dataclass(frozen=True)
class DriftVerdict:
    """What the drift stage concluded about one window.

    ``drifted``: any test family fired at the calibrated per-window false-alarm budget
    (``false_alarm_rate``). ``kind``: ``input`` (covariate shift that the label marginal does not
    explain), ``label_prior`` (the label marginal moved, and it explains any input shift),
    ``concept`` (the reference model's loss on labelled rows rose with inputs and label marginal
    unchanged), ``none``. ``columns``: the per-column Evidently results (``pcN`` are principal
    components of the embeddings). ``notes``: "not testable" reasons and calibration remarks.
    """

    drifted: bool
    kind: str
    tests: tuple[DriftTest, ...]
    columns: tuple[ColumnDrift, ...]
    reference_rows: int
    current_rows: int
    labelled_rows: int
    calibrated: bool
    false_alarm_rate: float
    calibration_rows: int | None = None
    notes: tuple[str, ...] = ()

    @property
    def detected(self) -> bool:
        return self.drifted

    @property
    def share(self) -> float:
        return sum(c.drifted for c in self.columns) / len(self.columns) if self.columns else 0.0

    @property
    def drifted_columns(self) -> tuple[str, ...]:
        return tuple(c.column for c in self.columns if c.drifted)

    @property
    def method(self) -> str:
        return _summary_method([c.method for c in self.columns]) if self.columns else ""

    def test(self, name: str) -> DriftTest | None:
        return next((t for t in self.tests if t.name == name), None)

    def kinds_fired(self) -> tuple[str, ...]:
        return tuple(k for k in DRIFT_KINDS if any(t.fired and t.kind == k for t in self.tests))

    def summary(self) -> str:
        """One line: the verdict, its kind and the evidence of the tests that fired."""
        if not self.drifted:
            return "no drift"
        parts = [f"{t.name}: {', '.join(t.evidence[:8]) or t.detail}" for t in self.tests if t.fired]
        return f"DRIFT ({self.kind}) " + "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["columns"] = [asdict(c) for c in self.columns]
        out["tests"] = [asdict(t) for t in self.tests]
        out["detected"] = self.drifted  # the key older readers (and dashboards) use
        out["share"] = self.share
        out["method"] = self.method
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DriftVerdict:
        """Read a stored verdict; a per-column result stored before verdicts existed reads as kind
        ``input`` (it only tested inputs) when detected."""
        columns = tuple(ColumnDrift(column=str(c["column"]), score=float(c["score"]), threshold=float(c["threshold"]),
                                    drifted=bool(c["drifted"]), method=str(c.get("method", "")))
                        for c in data.get("columns", []))
        tests = tuple(DriftTest(name=str(t["name"]), kind=str(t["kind"]), fired=bool(t["fired"]),
                                statistic=t.get("statistic"), threshold=t.get("threshold"), p_value=t.get("p_value"),
                                evidence=tuple(t.get("evidence", ())), detail=str(t.get("detail", "")),
                                not_testable=t.get("not_testable"))
                      for t in data.get("tests", []))
        drifted = bool(data.get("drifted", data.get("detected", False)))
        kind = str(data.get("kind", "input" if drifted else "none"))
        return cls(drifted=drifted, kind=kind, tests=tests, columns=columns,
                   reference_rows=int(data.get("reference_rows", 0)), current_rows=int(data.get("current_rows", 0)),
                   labelled_rows=int(data.get("labelled_rows", 0)), calibrated=bool(data.get("calibrated", False)),
                   false_alarm_rate=float(data.get("false_alarm_rate", 0.0)),
                   calibration_rows=data.get("calibration_rows"), notes=tuple(data.get("notes", ())))


def as_verdict(drift: DriftVerdict | dict[str, Any] | None) -> DriftVerdict | None:
    """A verdict from a verdict, a stored dict or None."""
    if drift is None or isinstance(drift, DriftVerdict):
        return drift
    return DriftVerdict.from_dict(drift)


# -- reference model ----------------------------------------------------------------------------

def _labels_array(labels: Any, n: int, which: str) -> list[str | None] | None:
    if labels is None:
        return None
    out = [None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in list(labels)]
    if len(out) != n:
        raise DataError(f"drift: {which} has {len(out)} labels for {n} rows")
    return out


#: The monitored column of embedding rows' energy outside the reference's principal subspace
#: (mean squared PCA reconstruction error): pixel noise, blur and other diffuse input shifts move it
#: while leaving the leading components nearly unchanged.
RESIDUAL = "pc_residual"


def _residual(x: np.ndarray, mean: np.ndarray, pcs: np.ndarray) -> np.ndarray:
    centred = x - mean
    return np.maximum((centred * centred).sum(axis=1) - (pcs * pcs).sum(axis=1), 0.0) / x.shape[1]


def _out_of_fold_residual(x: np.ndarray, k: int, seed: int, folds: int = 5) -> np.ndarray:
    """The reference rows' residual, each from a basis fitted without it (5 folds). In-sample
    residuals are biased low (the basis was fitted to those rows), which made every new window
    look drifted (30 false alarms in 80 quiet Fashion-MNIST windows); fitted on 80% of the
    reference, the folds' bases are slightly worse than the full one, so the bias left is
    conservative."""
    n = len(x)
    if n < 2 * folds:
        mean, axes = pca_components(torch.as_tensor(x), k)
        return _residual(x, mean.numpy(), (x - mean.numpy()) @ axes.numpy().T)
    fold = np.random.default_rng(seed + 3).permutation(n) % folds
    out = np.empty(n)
    for f in range(folds):
        train, test = fold != f, fold == f
        mean, axes = pca_components(torch.as_tensor(x[train]), k)
        m, a = mean.numpy(), axes.numpy()
        out[test] = _residual(x[test], m, (x[test] - m) @ a.T)
    return out


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    center = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[~(scale > 1e-12)] = 1.0
    return center, scale


def _softmax_fit(x: np.ndarray, y: np.ndarray, classes: int, l2: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression (L2 on the weights) by L-BFGS (scipy); returns (W, b)."""
    from scipy.optimize import minimize

    n, d = x.shape
    onehot = np.zeros((n, classes))
    onehot[np.arange(n), y] = 1.0

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:d * classes].reshape(d, classes), theta[d * classes:]
        logits = x @ w + b
        logits -= logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        g = (np.exp(logp) - onehot) / n
        value = -(onehot * logp).sum() / n + l2 * (w * w).sum()
        return value, np.concatenate([(x.T @ g + 2 * l2 * w).ravel(), g.sum(axis=0)])

    res = minimize(loss, np.zeros(d * classes + classes), jac=True, method="L-BFGS-B", options={"maxiter": 300})
    return res.x[:d * classes].reshape(d, classes), res.x[d * classes:]


def _softmax_proba(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    logits = x @ w + b
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


@dataclass
class DriftReference:
    """Everything the window tests need from the reference, fitted once and cached (``save``/``load``).

    - ``frame``: the monitored reference columns (numeric scalar inputs under their names, and
      ``pc1..pcK``: principal components of the embeddings, basis fitted here once);
    - the multivariate test's space (standardised scalars and/or embeddings scaled to unit mean
      variance), its Gaussian-kernel bandwidth (median heuristic) and random Fourier features;
    - when the reference has labels of at least two classes: a multinomial logistic model on the
      scalars and ``classifier_components`` principal components, its cross-fitted (5-fold)
      predictions and losses on the reference (the null of the concept test, the confusion matrix
      of BBSE) and the class marginal.
    """

    scalar_columns: tuple[str, ...]
    pc_count: int
    constant_columns: tuple[str, ...]
    frame: pd.DataFrame
    pca_mean: np.ndarray | None
    pca_axes: np.ndarray | None
    scalar_center: np.ndarray
    scalar_scale: np.ndarray
    feature_center: np.ndarray | None
    feature_scale: float
    bandwidth: float
    rff_w: np.ndarray
    rff_b: np.ndarray
    phi: np.ndarray  # reference rows in RFF space (n x RFF_DIM), for calibration
    classes: tuple[str, ...] = ()
    ref_label_codes: np.ndarray | None = None  # -1 for unlabelled rows
    clf_w: np.ndarray | None = None
    clf_b: np.ndarray | None = None
    clf_center: np.ndarray | None = None
    clf_scale: np.ndarray | None = None
    cv_pred: np.ndarray | None = None
    cv_loss: np.ndarray | None = None
    label_note: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def rows(self) -> int:
        return len(self.frame)

    @property
    def columns(self) -> list[str]:
        return list(self.frame.columns)

    @property
    def pc_names(self) -> list[str]:
        return [f"pc{i + 1}" for i in range(self.pc_count)]

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def fit(cls, scalars: pd.DataFrame | None, features: Any, labels: Any, config: DriftConfig, *,
            seed: int = 0) -> DriftReference:
        """Fit from the reference's numeric scalar inputs (a frame, or None), its embeddings
        (rows x dims, or None for tabular-only inputs) and labels (None entries = unlabelled)."""
        scalars = scalars if scalars is not None else pd.DataFrame()
        n = len(scalars) if len(scalars.columns) else None
        x = None
        if features is not None:
            x = _as_matrix(features, "reference features").numpy()
            if n is not None and x.shape[0] != n:
                raise DataError(f"drift: {x.shape[0]} reference feature rows for {n} table rows")
            n = x.shape[0]
        if n is None or n == 0:
            raise DataError("drift: the reference window is empty or has no monitorable columns")
        notes: list[str] = []
        constant: list[str] = []
        kept: list[str] = []
        for c in scalars.columns:
            values = scalars[c].to_numpy(dtype=np.float64, na_value=np.nan)
            finite = values[np.isfinite(values)]
            if finite.size == 0:
                raise DataError(f"drift: column {c!r} has no finite values in the reference window")
            if np.ptp(finite) == 0:
                constant.append(c)
                notes.append(f"column {c!r} not testable: constant ({finite[0]:g}) in the reference")
            else:
                kept.append(c)
        frame = scalars[kept].astype(np.float64).reset_index(drop=True)
        sc = frame.to_numpy()
        sc = np.where(np.isfinite(sc), sc, np.nan)
        scalar_center = np.nanmean(sc, axis=0) if kept else np.zeros(0)
        scalar_scale = np.nanstd(sc, axis=0) if kept else np.ones(0)
        scalar_scale[~(scalar_scale > 1e-12)] = 1.0
        std_scalars = np.nan_to_num((sc - scalar_center) / scalar_scale) if kept else np.zeros((n, 0))

        pca_mean = pca_axes = None
        pcs = np.zeros((n, 0))
        feature_center, feature_scale = None, 1.0
        pc_count = 0
        blocks = [std_scalars]
        if x is not None:
            k_total = max(config.embedding_components, config.classifier_components)
            mean, axes = pca_components(torch.as_tensor(x), k_total)
            pca_mean, pca_axes = mean.numpy(), axes.numpy()
            pcs = (x - pca_mean) @ pca_axes.T
            pc_count = min(config.embedding_components, pcs.shape[1])
            clash = sorted(({f"pc{i + 1}" for i in range(pc_count)} | {RESIDUAL}) & set(scalars.columns))
            if clash:
                raise DataError(f"drift: input column(s) {clash} clash with the principal-component names pc1..pcK, pc_residual")
            for i in range(pc_count):
                frame[f"pc{i + 1}"] = pcs[:, i]
            frame[RESIDUAL] = _out_of_fold_residual(x, k_total, seed)
            feature_center = x.mean(axis=0)
            feature_scale = float(np.sqrt(np.mean(x.var(axis=0)))) or 1.0
            blocks.append((x - feature_center) / feature_scale)
        if not len(frame.columns):
            raise DataError("drift: no testable columns (every numeric input column is constant in the reference "
                            "and there is no text/vector input)")
        mv = np.concatenate(blocks, axis=1)
        rng = np.random.default_rng(seed)
        sub = mv[rng.choice(n, size=min(n, 500), replace=False)]
        sq = (sub * sub).sum(axis=1)
        d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * sub @ sub.T, 0.0)
        med = float(np.median(d2[np.triu_indices(len(sub), 1)])) if len(sub) > 1 else 1.0
        bandwidth = math.sqrt(med / 2) if med > 0 else 1.0
        rff_w = rng.normal(scale=1.0 / bandwidth, size=(mv.shape[1], RFF_DIM))
        rff_b = rng.uniform(0, 2 * math.pi, size=RFF_DIM)
        phi = math.sqrt(2.0 / RFF_DIM) * np.cos(mv @ rff_w + rff_b)

        ref = cls(scalar_columns=tuple(kept), pc_count=pc_count, constant_columns=tuple(constant), frame=frame,
                  pca_mean=pca_mean, pca_axes=pca_axes, scalar_center=scalar_center, scalar_scale=scalar_scale,
                  feature_center=feature_center, feature_scale=feature_scale, bandwidth=bandwidth,
                  rff_w=rff_w, rff_b=rff_b, phi=phi.astype(np.float32), notes=tuple(notes))
        ref._fit_classifier(std_scalars, pcs[:, :config.classifier_components],
                            _labels_array(labels, n, "the reference"), config, seed)
        return ref

    def _fit_classifier(self, std_scalars: np.ndarray, pcs: np.ndarray, labels: list[str | None] | None,
                        config: DriftConfig, seed: int) -> None:
        if labels is None or all(v is None for v in labels):
            self.label_note = "the reference has no labels"
            return
        classes = sorted({v for v in labels if v is not None})
        if len(classes) < 2:
            self.label_note = f"the reference has a single class ({classes[0]!r})"
            return
        codes = np.array([-1 if v is None else classes.index(v) for v in labels])
        labelled = np.flatnonzero(codes >= 0)
        if len(labelled) < 5 * len(classes):
            self.label_note = f"the reference has {len(labelled)} labelled rows for {len(classes)} classes (< 5 a class)"
            return
        z = np.concatenate([std_scalars, pcs], axis=1)
        center, scale = _standardise(z[labelled])
        z = (z - center) / scale
        y = codes[labelled]
        folds = np.random.default_rng(seed + 1).permutation(len(labelled)) % 5
        cv_pred = np.full(len(codes), -1)
        cv_loss = np.full(len(codes), np.nan)
        for f in range(5):
            train, test = labelled[folds != f], labelled[folds == f]
            w, b = _softmax_fit(z[train], codes[train], len(classes))
            p = _softmax_proba(z[test], w, b)
            cv_pred[test] = p.argmax(axis=1)
            cv_loss[test] = 1.0 - p[np.arange(len(test)), codes[test]]
        self.clf_w, self.clf_b = _softmax_fit(z[labelled], y, len(classes))
        self.clf_center, self.clf_scale = center, scale
        self.classes, self.ref_label_codes = tuple(classes), codes
        self.cv_pred, self.cv_loss = cv_pred, cv_loss

    # -- projections ----------------------------------------------------------------------
    def project(self, scalars: pd.DataFrame | None, features: Any) -> tuple[pd.DataFrame, np.ndarray, np.ndarray | None]:
        """(monitored frame, RFF features, classifier inputs) of a window, in the reference's bases."""
        scalars = scalars if scalars is not None else pd.DataFrame()
        missing = [c for c in self.scalar_columns if c not in scalars.columns]
        if missing:
            raise DataError(f"drift: the current window has no input column(s) {missing}")
        frame = scalars[list(self.scalar_columns)].astype(np.float64).reset_index(drop=True)
        n = len(frame) if self.scalar_columns else None
        x = None
        if self.pca_axes is not None:
            if features is None:
                raise DataError("drift: the current window has no features for the embedding components")
            x = _as_matrix(features, "current features").numpy()
            if n is not None and x.shape[0] != n:
                raise DataError(f"drift: {x.shape[0]} current feature rows for {n} table rows")
            if x.shape[1] != self.pca_axes.shape[1]:
                raise DataError(f"drift: reference features have {self.pca_axes.shape[1]} dims, current {x.shape[1]}")
            n = x.shape[0]
        if not n:
            raise DataError("drift: the current window is empty")
        if not self.scalar_columns:
            frame = pd.DataFrame(index=range(n))
        sc = frame.to_numpy(dtype=np.float64)
        std_scalars = np.nan_to_num((sc - self.scalar_center) / self.scalar_scale) if self.scalar_columns \
            else np.zeros((n, 0))
        blocks = [std_scalars]
        pcs = None
        if x is not None:
            pcs = (x - self.pca_mean) @ self.pca_axes.T
            for i in range(self.pc_count):
                frame[f"pc{i + 1}"] = pcs[:, i]
            frame[RESIDUAL] = _residual(x, self.pca_mean, pcs)
            blocks.append((x - self.feature_center) / self.feature_scale)
        mv = np.concatenate(blocks, axis=1)
        phi = math.sqrt(2.0 / RFF_DIM) * np.cos(mv @ self.rff_w + self.rff_b)
        clf_x = None
        if self.clf_w is not None:
            k = self.clf_center.shape[0] - std_scalars.shape[1]
            z = np.concatenate([std_scalars, pcs[:, :k] if pcs is not None else np.zeros((n, 0))], axis=1)
            clf_x = (z - self.clf_center) / self.clf_scale
        return frame[self.columns], phi, clf_x

    # -- persistence (npz, no pickle) -------------------------------------------------------
    _ARRAYS = ("pca_mean", "pca_axes", "scalar_center", "scalar_scale", "feature_center", "rff_w", "rff_b", "phi",
               "ref_label_codes", "clf_w", "clf_b", "clf_center", "clf_scale", "cv_pred", "cv_loss")

    def save(self, path: Path) -> None:
        """Write atomically (temporary file, then rename) as ``.npz``; read back without pickle."""
        meta = {"scalar_columns": list(self.scalar_columns), "pc_count": self.pc_count,
                "constant_columns": list(self.constant_columns), "columns": self.columns,
                "feature_scale": self.feature_scale, "bandwidth": self.bandwidth, "classes": list(self.classes),
                "label_note": self.label_note, "notes": list(self.notes), "version": 1}
        arrays = {k: getattr(self, k) for k in self._ARRAYS if getattr(self, k) is not None}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, meta=np.array(json.dumps(meta)), frame=self.frame.to_numpy(dtype=np.float64), **arrays)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> DriftReference:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            arrays = {k: (data[k] if k in data.files else None) for k in cls._ARRAYS}
            frame = pd.DataFrame(data["frame"], columns=meta["columns"])
        return cls(scalar_columns=tuple(meta["scalar_columns"]), pc_count=int(meta["pc_count"]),
                   constant_columns=tuple(meta["constant_columns"]), frame=frame,
                   feature_scale=float(meta["feature_scale"]), bandwidth=float(meta["bandwidth"]),
                   classes=tuple(meta["classes"]), label_note=meta["label_note"], notes=tuple(meta["notes"]),
                   **arrays)


# -- calibration ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Calibration:
    """Null thresholds for one reference and window-size bucket (JSON-serialisable; cached).

    ``z_star``: the common cut of the input max-statistic (per-column Evidently scores and the MMD
    statistic on one z scale); ``column_thresholds``: that cut on each column's own scale;
    ``mmd_gamma``: (shape, scale) of the gamma law fitted by moments to the null MMD statistic
    (Gretton et al.'s approximation), which puts the MMD on the p-value / z scale of the columns;
    ``distance_scale``: (mu, sd) of ``log score`` for distance-like columns (Evidently distance
    distance methods); ``cusum_h``: CUSUM alarm level for its share of the budget.
    """

    window_rows: int
    rounds: int
    z_star: float
    column_thresholds: dict[str, float]
    distance_scale: dict[str, tuple[float, float]]
    mmd_gamma: tuple[float, float]
    mmd_threshold: float
    cusum_h: float
    held_out_rate: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        return cls(**{**data, "distance_scale": {k: (float(v[0]), float(v[1]))
                                                   for k, v in data["distance_scale"].items()},
                      "mmd_gamma": (float(data["mmd_gamma"][0]), float(data["mmd_gamma"][1]))})

    def mmd_z(self, stat: float) -> float:
        """The MMD statistic on the common z scale (standard normal quantile of its null p-value)."""
        from scipy.stats import gamma

        shape, scale = self.mmd_gamma
        return float(_p_to_z(np.array([gamma.sf(stat, shape, scale=scale)]))[0])


def calibration_rows(window_rows: int, reference_rows: int) -> int:
    """The pseudo-window size calibration uses for a window of ``window_rows`` rows: its size bucket
    (the largest power of two not above it, at least 16), shrunk to half the reference when the
    reference cannot hold two such windows. Statistics are scaled so that their null does not
    depend on the window size to first order (p-values; ``m n / (m + n)`` times the MMD), so the
    smaller pseudo-window keeps the calibration instead of skipping it (it was skipped for any
    window above 2,048 rows with the default 5,000-row sampling caps)."""
    bucket = 1 << max(4, int(window_rows).bit_length() - 1)
    return int(max(MIN_CALIBRATION_ROWS, min(bucket, reference_rows // 2)))


def _mmd_stat(phi_win_mean: np.ndarray, phi_ref_mean: np.ndarray, m: int, n: int) -> float:
    diff = phi_win_mean - phi_ref_mean
    return float(m * n / (m + n) * float(diff @ diff))


def ks_pvalues(reference: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two-sample Kolmogorov-Smirnov statistic and p-value per column (rows x columns inputs;
    NaNs dropped per column). The p-value is the asymptotic Kolmogorov distribution with
    Stephens' small-sample correction, ``Q((sqrt(en) + 0.12 + 0.11 / sqrt(en)) D)`` with
    ``en = n m / (n + m)``; it agrees with ``scipy.stats.ks_2samp`` (tested). This is the drift
    stage's default per-column test (``drift.method: auto`` or ``ks``): Evidently's KS calls scipy's
    exact mode, 3 ms a call here, which made calibration (rounds x columns calls) the slowest
    part of the stage; any other configured method still runs through Evidently.
    """
    from scipy.special import kolmogorov

    reference = np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
    current = np.asarray(current, dtype=np.float64).reshape(len(current), -1)
    d = np.zeros(reference.shape[1])
    en = np.zeros(reference.shape[1])
    for j in range(reference.shape[1]):
        r = np.sort(reference[:, j][np.isfinite(reference[:, j])])
        c = np.sort(current[:, j][np.isfinite(current[:, j])])
        if not len(r) or not len(c):
            d[j], en[j] = np.nan, 1
            continue
        pooled = np.concatenate([r, c])
        diff = (np.searchsorted(r, pooled, side="right") / len(r)
                - np.searchsorted(c, pooled, side="right") / len(c))
        d[j] = np.abs(diff).max()
        en[j] = len(r) * len(c) / (len(r) + len(c))
    root = np.sqrt(en)
    p = np.clip(kolmogorov((root + 0.12 + 0.11 / root) * np.nan_to_num(d)), 0.0, 1.0)
    return d, np.where(np.isnan(d), 1.0, p)


def _weighted_ks_pvalues(reference: np.ndarray, weights: np.ndarray, current: np.ndarray) -> np.ndarray:
    """KS p-values per column with a weighted reference ECDF (weights >= 0); the reference size is
    Kish's effective sample size of the weights. Used to ask whether a reweighting of the reference
    explains a window."""
    from scipy.special import kolmogorov

    out = np.ones(reference.shape[1])
    for j in range(reference.shape[1]):
        ok = np.isfinite(reference[:, j]) & (weights > 0)
        r, w = reference[ok, j], weights[ok]
        c = np.sort(current[:, j][np.isfinite(current[:, j])])
        if not len(r) or not len(c):
            continue
        order = np.argsort(r)
        r, w = r[order], np.cumsum(w[order]) / w.sum()
        pooled = np.concatenate([r, c])
        pos = np.searchsorted(r, pooled, side="right")
        cdf_r = np.where(pos > 0, w[np.maximum(pos - 1, 0)], 0.0)
        d = np.abs(cdf_r - np.searchsorted(c, pooled, side="right") / len(c)).max()
        n_eff = weights[ok].sum() ** 2 / (weights[ok] ** 2).sum()
        en = n_eff * len(c) / (n_eff + len(c))
        out[j] = float(kolmogorov((math.sqrt(en) + 0.12 + 0.11 / math.sqrt(en)) * d))
    return out


def _fast_ks(config: DriftConfig) -> bool:
    return config.method in ("auto", "ks")


def _column_plan(ref: DriftReference, config: DriftConfig) -> dict[str, tuple[Any, Any, bool]]:
    if _fast_ks(config):
        return {c: (None, None, True) for c in ref.columns}
    registry, column_type_enum = _evidently()
    method = _method_arg(config)
    plan = {}
    for c in ref.columns:
        full = _clean(ref.frame[c])
        st = _resolve(registry, column_type_enum.Numerical, full, None, method)
        if st.name in P_VALUE_METHODS:
            plan[c] = (st, column_type_enum.Numerical, True)
        elif st.name in DISTANCE_METHODS:
            plan[c] = (st, column_type_enum.Numerical, False)
        else:
            raise DriftConfigError(f"drift.method: cannot calibrate method {st.name!r} (column {c!r}): "
                                   "its direction is unknown")
    return plan


def calibrate(ref: DriftReference, window_rows: int, config: DriftConfig, *, seed: int = 0) -> Calibration:
    """Bootstrap the reference against itself at the window's size bucket and measure every null.

    Each of ``config.calibration_rounds`` rounds draws a pseudo-window of
    :func:`calibration_rows` rows and compares it with the disjoint rest of the reference (at most
    ``calibration_max_reference_rows`` rows): Evidently's per-column score for every monitored
    column and the MMD statistic. Scores go on one z scale (p-values by the normal quantile,
    distances as ``log`` standardised on the first quarter of the rounds), and the
    ``1 - alpha_input`` split-conformal quantile of the per-round maximum over components is the
    common cut ``z_star`` (Westfall-Young max-T). The same held-out rounds, resampled into long
    null sequences, set the CUSUM level for its share of the budget.
    """
    n = ref.rows
    if n < 2 * MIN_CALIBRATION_ROWS:
        raise DataError(f"drift: the reference has {n} rows; at least {2 * MIN_CALIBRATION_ROWS} are needed to "
                        "calibrate")
    m = calibration_rows(window_rows, n)
    pseudo_rows = n - m
    if config.calibration_max_reference_rows is not None:
        pseudo_rows = max(2, min(pseudo_rows, int(config.calibration_max_reference_rows)))
    rounds = config.calibration_rounds
    alpha = config.false_alarm_rate
    a_in, a_cusum = alpha * ALPHA_SHARES["input"], alpha * ALPHA_SHARES["cusum"]
    plan = _column_plan(ref, config)
    cols = ref.columns
    components = cols + ["mmd"]
    fit = max(10, rounds // 4)  # rounds that fit the MMD's (and distance columns') null scale
    if rounds - fit < math.ceil(1 / a_in):
        raise DriftConfigError(f"drift.calibration_rounds: {rounds} rounds ({fit} to standardise distances) cannot "
                               f"resolve an input false-alarm share of {a_in:g}; use at least "
                               f"{fit + math.ceil(1 / a_in)}")
    values = {c: ref.frame[c].to_numpy() for c in cols}
    matrix = ref.frame.to_numpy(dtype=np.float64)
    phi = ref.phi.astype(np.float64)
    rng = np.random.default_rng(seed)
    raw = np.empty((rounds, len(components)))
    fast = _fast_ks(config)
    with _numpy_seed(seed):
        for b in range(rounds):
            perm = rng.permutation(n)
            win, rest = perm[:m], perm[m:m + pseudo_rows]
            raw[b, -1] = _mmd_stat(phi[win].mean(0), phi[rest].mean(0), m, len(rest))
            if fast:
                raw[b, :-1] = ks_pvalues(matrix[rest], matrix[win])[1]
                continue
            for j, c in enumerate(cols):
                st, ctype, _ = plan[c]
                ref_s, cur_s = _clean(pd.Series(values[c][rest])), _clean(pd.Series(values[c][win]))
                if ref_s.empty or cur_s.empty:
                    raise DataError(f"drift: column {c!r} is too sparse to calibrate at {m} rows")
                raw[b, j] = float(st(ref_s, cur_s, ctype, None).drift_score)
    z = np.empty_like(raw)
    scale: dict[str, tuple[float, float]] = {}
    from scipy.stats import gamma

    mmd_fit = raw[:fit, -1]
    mean, var = float(mmd_fit.mean()), float(mmd_fit.var(ddof=1))
    mmd_gamma = (mean * mean / var, var / mean) if mean > 0 and var > 0 else (1.0, _TINY)
    for j, c in enumerate(components):
        if c == "mmd":
            z[:, j] = _p_to_z(gamma.sf(raw[:, j], mmd_gamma[0], scale=mmd_gamma[1]))
            continue
        if plan[c][2]:
            z[:, j] = _p_to_z(raw[:, j])
            continue
        logd = np.log(np.clip(raw[:, j], _TINY, None))
        mu, sd = float(logd[:fit].mean()), float(logd[:fit].std(ddof=1))
        if not sd > 1e-9 * max(1.0, abs(mu)):
            sd = float("inf")  # a degenerate null (a constant statistic): the component never fires
        scale[c] = (mu, sd)
        z[:, j] = (logd - mu) / sd
    held = np.clip(np.nan_to_num(z[fit:], nan=_Z_CLIP[0]), *_Z_CLIP)
    stat = held.max(axis=1)
    rank = math.ceil((1 - a_in) * (len(stat) + 1))
    z_star = float(np.sort(stat)[min(rank, len(stat)) - 1])
    thresholds = {}
    for c in cols:
        if plan[c][2]:
            thresholds[c] = _z_to_p(z_star)
        else:
            mu, sd = scale[c]
            thresholds[c] = float(math.exp(mu + z_star * sd)) if math.isfinite(sd) else float("inf")
    mmd_threshold = float(gamma.isf(_z_to_p(z_star), mmd_gamma[0], scale=mmd_gamma[1]))
    cusum_h = _cusum_level(held, a_cusum, np.random.default_rng(seed + 7))
    cal = Calibration(window_rows=m, rounds=rounds, z_star=z_star, column_thresholds=thresholds,
                      distance_scale=scale, mmd_gamma=mmd_gamma, mmd_threshold=mmd_threshold, cusum_h=cusum_h,
                      held_out_rate=float(np.mean(stat >= z_star)))
    log.info("drift calibration: %d rounds, pseudo-window %d rows (window %d), pseudo-reference %d rows, z*=%.3f, "
             "CUSUM h=%.2f", rounds, m, window_rows, pseudo_rows, z_star, cusum_h)
    return cal


@functools.lru_cache(maxsize=8)
def _label_cusum_level(rate: float) -> float:
    """CUSUM level for the label tests' normal scores: their p-values are (super-)uniform under no
    drift, so the null sequence is simulated from independent standard normals."""
    rng = np.random.default_rng(12345)
    return _cusum_level(rng.standard_normal((20000, 2)), rate, rng)


def _cusum_level(null_z: np.ndarray, rate: float, rng: np.random.Generator, steps: int = 40000) -> float:
    """Alarm level h of the per-component CUSUM ``S = max(0, S + z - k)`` (alarm: max over components
    above h) so that a stationary null sequence alarms in at most ``rate`` of the windows; windows
    are drawn with replacement from the calibration rounds (which keeps the correlation between
    components)."""
    idx = rng.integers(0, len(null_z), size=steps)
    s = np.zeros(null_z.shape[1])
    top = np.empty(steps)
    for t, i in enumerate(idx):
        s = np.maximum(0.0, s + null_z[i] - CUSUM_K)
        top[t] = s.max()
    burn = min(1000, steps // 10)
    return float(np.quantile(top[burn:], 1 - rate, method="higher")) + 1e-9


# -- the window tests ------------------------------------------------------------------------------

def _g_stat(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """G statistic of homogeneity between count vectors ``a`` and ``b`` (last axis = classes)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    na, nb = a.sum(-1, keepdims=True), b.sum(-1, keepdims=True)
    pooled = (a + b) / (na + nb)
    with np.errstate(divide="ignore", invalid="ignore"):
        ta = np.where(a > 0, a * np.log(a / (na * pooled)), 0.0)
        tb = np.where(b > 0, b * np.log(b / (nb * pooled)), 0.0)
    return 2 * (ta.sum(-1) + tb.sum(-1))


def _label_prior_test(window_counts: np.ndarray, ref_counts: np.ndarray, rng: np.random.Generator
                      ) -> tuple[float, float]:
    """(G, Monte-Carlo p-value) of window vs reference class counts: both samples redrawn from the
    pooled marginal (parametric bootstrap of the two-sample test)."""
    g = float(_g_stat(window_counts, ref_counts))
    pooled = (window_counts + ref_counts) / (window_counts.sum() + ref_counts.sum())
    a = rng.multinomial(int(window_counts.sum()), pooled, size=LABEL_NULL_DRAWS)
    b = rng.multinomial(int(ref_counts.sum()), pooled, size=LABEL_NULL_DRAWS)
    null = _g_stat(a, b)
    return g, float((1 + np.sum(null >= g - 1e-12)) / (LABEL_NULL_DRAWS + 1))


def _bbse_weights(ref: DriftReference, predicted: np.ndarray) -> np.ndarray:
    """Black-box shift estimation (Lipton et al., 2018): the window's class marginal from the
    reference model's predicted labels, ``q(yhat) = C pi`` with C the reference's cross-fitted
    P(yhat, y); least squares, clipped to the simplex."""
    k = len(ref.classes)
    codes, pred = ref.ref_label_codes, ref.cv_pred
    ok = codes >= 0
    joint = np.zeros((k, k))
    np.add.at(joint, (pred[ok], codes[ok]), 1.0)
    prior = joint.sum(axis=0) / joint.sum()
    conf = joint / np.maximum(joint.sum(axis=0, keepdims=True), 1)  # P(yhat | y)
    q = np.bincount(predicted, minlength=k) / len(predicted)
    w, *_ = np.linalg.lstsq(conf * prior, q, rcond=None)  # q = sum_y P(yhat|y) p(y) w(y)
    pi = np.clip(w * prior, 0, None)
    return pi / pi.sum() if pi.sum() > 0 else prior


def check_window(
    ref: DriftReference,
    cal: Calibration | None,
    scalars: pd.DataFrame | None,
    features: Any,
    labels: Any,
    config: DriftConfig,
    *,
    cusum_state: np.ndarray | None = None,
    seed: int = 0,
    uncalibrated: str | None = None,
) -> tuple[DriftVerdict, np.ndarray | None]:
    """Test one window against the reference; returns the verdict and the new CUSUM state.

    ``cal`` None leaves the input tests "not testable" (``uncalibrated`` says why; default: the
    reference is too small to calibrate).
    ``labels``: the window's labels (None entries: not labelled yet), or None without a label
    column. The CUSUM state (one value per component) is carried from window to window by the
    caller; None starts it at zero.
    """
    frame, phi, clf_x = ref.project(scalars, features)
    m = len(frame)
    labels_list = _labels_array(labels, m, "the current window")
    notes = list(ref.notes)
    tests: list[DriftTest] = []
    rng = np.random.default_rng(seed)
    alpha = config.false_alarm_rate

    # -- input: calibrated max-statistic over columns + MMD, and the CUSUM over windows --------
    columns: tuple[ColumnDrift, ...] = ()
    prev_state = np.asarray(cusum_state if cusum_state is not None else [], dtype=np.float64)
    new_state = np.zeros(0)
    mmd_z = mmd_stat = None
    if cal is None:
        why = "not testable: " + (uncalibrated or f"the reference ({ref.rows} rows) is too small to calibrate "
                                                  f"(at least {2 * MIN_CALIBRATION_ROWS} rows)")
        tests += [DriftTest("columns", "input", False, not_testable=why), DriftTest("mmd", "input", False,
                                                                                   not_testable=why)]
    else:
        if ref.rows < 2 * m:
            notes.append(f"the reference ({ref.rows} rows) is smaller than two windows ({m} rows): calibrated at "
                         f"{cal.window_rows}-row pseudo-windows")
        if _fast_ks(config):
            _, p = ks_pvalues(ref.frame.to_numpy(dtype=np.float64), frame.to_numpy(dtype=np.float64))
            columns = tuple(ColumnDrift(column=c, score=float(p[j]), threshold=cal.column_thresholds[c],
                                        drifted=bool(p[j] <= cal.column_thresholds[c]), method="ks")
                            for j, c in enumerate(ref.columns))
        else:  # a configured Evidently method, called per column
            columns = detect_drift(ref.frame, frame, config, thresholds=cal.column_thresholds).columns
        drifted_columns = tuple(c.column for c in columns if c.drifted)
        zs = []
        for col in columns:
            if col.column in cal.distance_scale:
                mu, sd = cal.distance_scale[col.column]
                zs.append((math.log(max(col.score, _TINY)) - mu) / sd)
            else:
                zs.append(float(_p_to_z(np.array([col.score]))[0]))
        tests.append(DriftTest("columns", "input", bool(drifted_columns), statistic=max(zs),
                               threshold=cal.z_star, evidence=drifted_columns,
                               detail="max over columns of the per-column score on the z scale"))
        mmd_stat = _mmd_stat(phi.mean(0), ref.phi.mean(0, dtype=np.float64), m, ref.rows)
        mmd_z = cal.mmd_z(mmd_stat)
        tests.append(DriftTest("mmd", "input", bool(mmd_stat >= cal.mmd_threshold), statistic=mmd_stat,
                               threshold=cal.mmd_threshold, evidence=("embeddings" if ref.pc_count else "all columns",)
                               if mmd_stat >= cal.mmd_threshold else (),
                               detail=f"m n/(m+n) x MMD^2, Gaussian kernel (bandwidth {ref.bandwidth:.3g})"))
        if config.cusum:
            z = np.clip(np.nan_to_num(np.array(zs + [mmd_z]), nan=_Z_CLIP[0]), *_Z_CLIP)
            prev = prev_state[:-2] if len(prev_state) == len(z) + 2 else np.zeros(len(z))
            new_state = np.maximum(0.0, prev + z - CUSUM_K)
            names = [c.column for c in columns] + ["mmd"]
            over = tuple(names[i] for i in np.flatnonzero(new_state > cal.cusum_h))
            tests.append(DriftTest("cusum", "input", bool(over), statistic=float(new_state.max()),
                                   threshold=cal.cusum_h, evidence=over,
                                   detail=f"per-component CUSUM of z - {CUSUM_K} over windows"))

    # -- labels: prior (true labels, else BBSE) and concept ---------------------------------------
    known = [i for i, v in enumerate(labels_list or []) if v is not None]
    labelled_rows = len(known)
    prior_pi: np.ndarray | None = None
    a_label, a_concept = alpha * ALPHA_SHARES["label_prior"], alpha * ALPHA_SHARES["concept"]
    if ref.clf_w is None:
        why = f"not testable: {ref.label_note or 'no reference model'}"
        tests += [DriftTest("label_prior", "label_prior", False, not_testable=why),
                  DriftTest("concept", "concept", False, not_testable=why)]
    else:
        k = len(ref.classes)
        ref_codes = ref.ref_label_codes[ref.ref_label_codes >= 0]
        ref_counts = np.bincount(ref_codes, minlength=k).astype(float)
        if labelled_rows >= config.min_labelled_rows:
            win_labels = [labels_list[i] for i in known]
            unseen = sorted({v for v in win_labels if v not in ref.classes})
            codes = np.array([ref.classes.index(v) if v in ref.classes else -1 for v in win_labels])
            counts = np.bincount(codes[codes >= 0], minlength=k).astype(float)
            if unseen:
                tests.append(DriftTest("label_prior", "label_prior", True, p_value=0.0, threshold=a_label,
                                       evidence=tuple(f"class {u!r} unseen in the reference" for u in unseen[:8]),
                                       detail="labels"))
            else:
                g, p = _label_prior_test(counts, ref_counts, rng)
                moved = np.argsort(-np.abs(counts / counts.sum() - ref_counts / ref_counts.sum()))[:3]
                tests.append(DriftTest("label_prior", "label_prior", p <= a_label, statistic=g, threshold=a_label,
                                       p_value=p, evidence=tuple(f"class {ref.classes[i]!r}: "
                                                                 f"{counts[i] / counts.sum():.2f} vs "
                                                                 f"{ref_counts[i] / ref_counts.sum():.2f}"
                                                                 for i in moved) if p <= a_label else (),
                                       detail=f"G test of the {labelled_rows} window labels vs the reference"))
            prior_pi = counts / counts.sum() if counts.sum() else None
            # concept: the reference model's loss on labelled rows, null stratified by class
            rows = [known[i] for i in range(len(known)) if codes[i] >= 0]
            if len(rows) >= config.min_labelled_rows:
                p_rows = _softmax_proba(clf_x[rows], ref.clf_w, ref.clf_b)
                loss = 1.0 - p_rows[np.arange(len(rows)), codes[codes >= 0]]
                observed = float(loss.mean())
                null = np.zeros(LABEL_NULL_DRAWS)
                for cls_i in range(k):
                    n_c = int(counts[cls_i])
                    if n_c == 0:
                        continue
                    pool = ref.cv_loss[(ref.ref_label_codes == cls_i) & np.isfinite(ref.cv_loss)]
                    null += rng.choice(pool, size=(LABEL_NULL_DRAWS, n_c)).sum(axis=1)
                null /= len(rows)
                p = float((1 + np.sum(null >= observed - 1e-12)) / (LABEL_NULL_DRAWS + 1))
                worst = np.argsort(-np.bincount(codes[codes >= 0], weights=loss, minlength=k)
                                   / np.maximum(counts, 1))[:3]
                tests.append(DriftTest("concept", "concept", p <= a_concept, statistic=observed,
                                       threshold=a_concept, p_value=p,
                                       evidence=tuple(f"class {ref.classes[i]!r}" for i in worst if counts[i])
                                       if p <= a_concept else (),
                                       detail=f"mean (1 - p(label)) of the reference model on {len(rows)} rows, "
                                              f"null {float(null.mean()):.3f}"))
            else:
                tests.append(DriftTest("concept", "concept", False, not_testable=f"not testable: {len(rows)} "
                                       f"labelled rows of known classes (< {config.min_labelled_rows})"))
        else:
            pred = _softmax_proba(clf_x, ref.clf_w, ref.clf_b).argmax(axis=1)
            ref_pred = ref.cv_pred[ref.ref_label_codes >= 0]
            g, p = _label_prior_test(np.bincount(pred, minlength=k).astype(float),
                                     np.bincount(ref_pred, minlength=k).astype(float), rng)
            prior_pi = _bbse_weights(ref, pred)
            tests.append(DriftTest("bbse", "label_prior", p <= a_label, statistic=g, threshold=a_label, p_value=p,
                                   detail=f"G test of predicted labels ({labelled_rows} labelled rows < "
                                          f"{config.min_labelled_rows}: black-box shift estimation)"))
            tests.append(DriftTest("concept", "concept", False, not_testable=(
                "not testable: no labelled rows in the window" if labelled_rows == 0 else
                f"not testable: {labelled_rows} labelled rows (< {config.min_labelled_rows})")))

    # -- labels over windows: CUSUM of the label-prior and concept p-values (normal scores) ----------
    label_state = prev_state[-2:] if len(prev_state) == len(new_state) + 2 else np.zeros(2)
    if config.cusum:
        h = _label_cusum_level(alpha * ALPHA_SHARES["label_cusum"])
        for i, names in enumerate((("label_prior", "bbse"), ("concept",))):
            ran = [t for t in tests if t.name in names and t.p_value is not None and not t.not_testable]
            if ran:
                z_l = float(np.clip(_p_to_z(np.array([ran[0].p_value]))[0], *_Z_CLIP))
                label_state[i] = max(0.0, label_state[i] + z_l - CUSUM_K)
        over = tuple(name for name, v in zip(("label_prior", "concept"), label_state, strict=True) if v > h)
        tests.append(DriftTest("label_cusum", over[0] if over else "label_prior", bool(over),
                               statistic=float(label_state.max()), threshold=h, evidence=over,
                               detail=f"CUSUM over windows of the label-prior and concept p-values "
                                      f"(normal scores - {CUSUM_K})"))
    new_state = np.concatenate([new_state, label_state])

    # -- the kind -----------------------------------------------------------------------------------
    fired = {t.name for t in tests if t.fired}
    input_fired = bool(fired & {"columns", "mmd", "cusum"})
    label_fired = bool(fired & {"label_prior", "bbse"}) or any(
        t.name == "label_cusum" and t.fired and t.kind == "label_prior" for t in tests)
    concept_fired = "concept" in fired or any(
        t.name == "label_cusum" and t.fired and "concept" in t.evidence for t in tests)
    explained = False
    if input_fired and prior_pi is not None and mmd_z is not None and cal is not None:
        # Would the reference, reweighted to the window's class marginal, show no input shift? Then
        # the class marginal explains it (a label-prior shift moves p(x) too).
        codes = ref.ref_label_codes
        class_means = np.stack([ref.phi[codes == i].mean(0, dtype=np.float64) if np.any(codes == i)
                                else np.zeros(ref.phi.shape[1]) for i in range(len(ref.classes))])
        reweighted = _mmd_stat(phi.mean(0), prior_pi @ class_means, m, ref.rows)
        mmd_ok = cal.mmd_z(reweighted) < cal.z_star
        ref_prior = np.bincount(codes[codes >= 0], minlength=len(ref.classes)) / max(1, int(np.sum(codes >= 0)))
        weights = np.where(codes >= 0, prior_pi[np.maximum(codes, 0)] / np.maximum(ref_prior[np.maximum(codes, 0)],
                                                                                     1e-12), 0.0)
        if _fast_ks(config):
            p_w = _weighted_ks_pvalues(ref.frame.to_numpy(dtype=np.float64), weights, frame.to_numpy(dtype=np.float64))
            cols_ok = bool(np.all(p_w > np.array([cal.column_thresholds[c] for c in ref.columns])))
        else:
            cols_ok = "columns" not in fired
        explained = (("mmd" not in fired or mmd_ok) and ("columns" not in fired or cols_ok)
                     and (bool(fired & {"columns", "mmd"}) or label_fired))
        notes.append(f"reference reweighted to the window's class marginal: MMD {reweighted:.4g}, columns "
                     f"{'within' if cols_ok else 'beyond'} their thresholds "
                     f"({'explains' if explained else 'does not explain'} the input shift)")
    if input_fired:  # named label_prior when the class marginal (labels or BBSE) explains the input shift
        kind = "label_prior" if explained else "input"
    elif label_fired:
        kind = "label_prior"
    elif concept_fired:
        kind = "concept"
    else:
        kind = "none"
    verdict = DriftVerdict(drifted=kind != "none", kind=kind, tests=tuple(tests), columns=columns,
                           reference_rows=ref.rows, current_rows=m, labelled_rows=labelled_rows,
                           calibrated=cal is not None, false_alarm_rate=alpha,
                           calibration_rows=cal.window_rows if cal is not None else None, notes=tuple(notes))
    return verdict, new_state


# -- the drift stage of a cycle -----------------------------------------------------------------

class StateStore(Protocol):
    def get_state(self, key: str) -> str | None: ...

    def set_state(self, key: str, value: str) -> None: ...


def _scalar_inputs(table: pa.Table, columns: InputColumns, which: str) -> tuple[list[str], bool]:
    """Numeric scalar input columns of ``table`` and whether it has text/vector inputs."""
    scalars: list[str] = []
    vector_inputs = bool(columns.text_column)
    for name in columns.feature_columns:
        if name == columns.label_column:
            continue
        if name not in table.column_names:
            raise DataError(f"drift: {which} window has no input column {name!r}")
        t = table.schema.field(name).type
        if _is_numeric_scalar(t):
            scalars.append(name)
        elif _is_vector(t):
            vector_inputs = True
    return scalars, vector_inputs


def _table_labels(table: pa.Table, columns: InputColumns) -> list[str | None] | None:
    if not columns.label_column or columns.label_column not in table.column_names:
        return None
    return [None if v is None else str(v) for v in table.column(columns.label_column).to_pylist()]


class DriftMonitor:
    """The drift stage: reference model and calibrations cached, CUSUM carried across windows.

    - the :class:`DriftReference` (principal-component basis, kernel features, reference model)
      is fitted once per reference and cached as ``<cache_dir>/reference-<key>.npz`` (written
      atomically, read without pickle);
    - calibrations are cached in the store's state per reference and window-size bucket;
    - the CUSUM state comes back in ``state_updates`` for the caller to commit with the cycle
      (a failed cycle does not advance it).
    """

    def __init__(self, config: DriftConfig, columns: InputColumns, *, cache_dir: Path, state: StateStore,
                 seed: int = 0) -> None:
        self.config = config
        self.columns = columns
        self.cache_dir = Path(cache_dir)
        self.state = state
        self.seed = seed
        self.state_updates: dict[str, str] = {}

    def key(self, reference_key: str) -> str:
        payload = json.dumps([reference_key, self.config.model_dump(mode="json"), self.columns.model_dump(mode="json"),
                              self.seed, "drift-reference-v1"], sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:24]

    def reference(self, reference_table: pa.Table, reference_features: Any, reference_key: str) -> DriftReference:
        path = self.cache_dir / f"reference-{self.key(reference_key)}.npz"
        cached = _REFERENCES.get(str(path))
        if cached is not None:
            return cached
        if path.exists():
            try:
                ref = DriftReference.load(path)
            except (OSError, ValueError, KeyError) as exc:  # a damaged cache file is refitted, not fatal
                log.warning("drift: cannot read the cached reference model %s (%s); refitting", path, exc)
            else:
                _REFERENCES[str(path)] = ref
                return ref
        ref = self._fit(reference_table, reference_features)
        ref.save(path)
        _REFERENCES[str(path)] = ref
        return ref

    def _selected(self, scalars: list[str], vector_inputs: bool) -> tuple[list[str], int]:
        pcs = [f"pc{i + 1}" for i in range(self.config.embedding_components)] + [RESIDUAL] if vector_inputs else []
        candidates = scalars + pcs
        if self.config.columns is not None:
            unknown = [c for c in self.config.columns if c not in candidates]
            if unknown:
                raise DriftConfigError(f"drift.columns: {unknown} are not monitorable here; available: "
                                       f"{candidates[:40]}")
            selected = list(dict.fromkeys(self.config.columns))
        else:
            selected = candidates
        if self.config.max_columns is not None and len(selected) > self.config.max_columns:
            raise DriftConfigError(f"drift.max_columns: {len(selected)} columns are monitored but max_columns is "
                                   f"{self.config.max_columns}; raise it, list drift.columns, or remove the limit")
        return [c for c in selected if c in scalars], sum(c in pcs for c in selected)

    def _fit(self, table: pa.Table, features: Any) -> DriftReference:
        if table.num_rows == 0:
            raise DataError("drift: the reference window is empty")
        scalars, vector_inputs = _scalar_inputs(table, self.columns, "reference")
        chosen, n_pcs = self._selected(scalars, vector_inputs)
        frame = _column_frame(table, chosen, "reference")
        cfg = self.config
        ref = DriftReference.fit(frame, features if vector_inputs else None, _table_labels(table, self.columns),
                                 cfg, seed=self.seed)
        if vector_inputs and n_pcs < ref.pc_count:
            keep = [c for c in ref.columns if not c.startswith("pc")
                    or c in (self.config.columns or ())]
            ref.frame = ref.frame[keep]
        return ref

    def calibration(self, ref: DriftReference, window_rows: int, reference_key: str) -> Calibration | None:
        if ref.rows < 2 * MIN_CALIBRATION_ROWS or not self.config.calibrate:
            return None
        m = calibration_rows(window_rows, ref.rows)
        key = f"drift_calibration:{self.key(reference_key)}:{m}"
        cached = self.state.get_state(key)
        if cached:
            return Calibration.from_dict(json.loads(cached))
        cal = calibrate(ref, window_rows, self.config, seed=self.seed)
        self.state.set_state(key, json.dumps(cal.to_dict()))
        return cal

    def check(self, reference_table: pa.Table, reference_features: Any, current_table: pa.Table,
              current_features: Any, *, reference_key: str, update_cusum: bool = True) -> DriftVerdict:
        """The verdict for one window (the CUSUM update, if any, is left in ``state_updates``)."""
        if current_table.num_rows == 0:
            raise DataError("drift: the current window is empty")
        ref = self.reference(reference_table, reference_features, reference_key)
        cal = self.calibration(ref, current_table.num_rows, reference_key)
        scalars = _column_frame(current_table, list(ref.scalar_columns), "current")
        cusum_key = f"drift_cusum:{self.key(reference_key)}:{cal.window_rows if cal else 0}"
        # a re-test of a past window (late labels) does not read or move the running CUSUM
        stored = self.state.get_state(cusum_key) if self.config.cusum and update_cusum else None
        state = np.array(json.loads(stored), dtype=np.float64) if stored else None
        verdict, new_state = check_window(ref, cal, scalars, current_features if ref.pca_axes is not None else None,
                                          _table_labels(current_table, self.columns), self.config,
                                          cusum_state=state, seed=self.seed,
                                          uncalibrated=None if self.config.calibrate else
                                          "drift.calibrate is off (the input tests need calibrated thresholds)")
        if update_cusum and new_state is not None and self.config.cusum:
            self.state_updates[cusum_key] = json.dumps([round(float(v), 6) for v in new_state])
        return verdict


#: Reference models already loaded in this process (keyed by cache path; the content is keyed by hash).
_REFERENCES: dict[str, DriftReference] = {}
