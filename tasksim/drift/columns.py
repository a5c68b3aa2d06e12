"""Per-column drift: the monitored frames (scalar columns and principal components of vector /
embedding inputs), Evidently's per-column tests, and the thresholds calibrated on the reference at
the window's size (``calibrate_thresholds``).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from tasksim.config import DriftConfig, InputColumns
from tasksim.errors import ConfigError, DataError, MetricInputError, TasksimError
from tasksim.metrics._kernels import pca_basis
from tasksim.metrics._validate import as_features

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


def _is_numeric_scalar(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


def _is_vector(t: pa.DataType) -> bool:
    return (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)
            or pa.types.is_binary(t) or pa.types.is_large_binary(t)
            or isinstance(t, pa.ExtensionType))


def _as_matrix(x: Any, name: str) -> torch.Tensor:
    """``x`` as a finite float64 CPU matrix (the measures' one validation, worded for the drift stage)."""
    try:
        return as_features(x.detach() if isinstance(x, torch.Tensor) else x, name, device=torch.device("cpu"),
                           min_rows=0)
    except MetricInputError as exc:
        raise DataError(f"drift: {exc}") from exc


def pca_components(reference_features: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and the first ``k`` principal axes (``k x D``) of the reference features
    (``metrics._kernels.pca_basis``: float64, sign-fixed so the ``pcN`` series are deterministic)."""
    x = _as_matrix(reference_features, "reference features")
    if x.shape[0] < 2:
        raise DataError(f"drift: need at least 2 reference rows to fit principal components, got {x.shape[0]}")
    return pca_basis(x, k)


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


def _column_scores(values: dict[str, np.ndarray], cols: list[str], plan: dict[str, tuple[Any, Any, bool]],
                   rest: np.ndarray, win: np.ndarray, window_rows: int) -> np.ndarray:
    """Every column's stattest score of one pseudo-window ``win`` against the reference rows ``rest``
    (a draw of the calibration's null)."""
    out = np.empty(len(cols), dtype=np.float64)
    for j, c in enumerate(cols):
        st, ctype, _ = plan[c]
        ref_s, cur_s = _clean(pd.Series(values[c][rest])), _clean(pd.Series(values[c][win]))
        if ref_s.empty or cur_s.empty:
            raise DataError(f"drift: column {c!r} is too sparse to calibrate at {window_rows} rows")
        out[j] = float(st(ref_s, cur_s, ctype, None).drift_score)
    return out


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
            raw[b] = _column_scores(values, cols, plan, rest, win, window_rows)

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
