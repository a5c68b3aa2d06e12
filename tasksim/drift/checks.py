"""The window's drift tests against their calibrated nulls: a max-statistic over columns, the
MMD on embeddings, CUSUMs over windows, the label prior (labels or BBSE) and the concept test
(``check_window``), with calibration per reference and window-size bucket (``calibrate``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from tasksim.config import DriftConfig
from tasksim.drift.columns import (
    _TINY,
    DISTANCE_METHODS,
    P_VALUE_METHODS,
    ColumnDrift,
    DriftConfigError,
    _clean,
    _column_scores,
    _evidently,
    _method_arg,
    _numpy_seed,
    _p_to_z,
    _resolve,
    _z_to_p,
    detect_drift,
)
from tasksim.drift.given_reference import (
    cut_given_reference,
    ewma_steady_share,
    ewma_thresholds_given_reference,
    pvalue_given_reference,
    reference_share,
)
from tasksim.drift.reference import DriftReference
from tasksim.drift.sequential import (
    EWMA_LAMBDA,
    AccumulatedPrior,
    ReferenceScores,
    concept_statistic,
    concept_step,
    ewma_root,
    ewma_scale,
    ewma_step,
    ewma_thresholds,
    loss_variance,
    mc_pvalue,
    min_p_ranks,
    prior_statistic,
    to_json,
    upper_ranks,
)
from tasksim.drift.verdict import (
    _Z_CLIP,
    ALPHA_SHARES,
    LABEL_NULL_DRAWS,
    MIN_CALIBRATION_ROWS,
    DriftTest,
    DriftVerdict,
    _labels_array,
)
from tasksim.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Calibration:
    """Null thresholds for one reference and window-size bucket (JSON-serialisable; cached).

    ``z_star``: the common cut of the input max-statistic (per-column Evidently scores and the MMD
    statistic on one z scale; with ``drift.reference_delta``, moved to hold given the reference by
    :func:`tasksim.drift.given_reference.cut_given_reference`; ``z_plain``: the cut before that);
    ``column_thresholds``: that cut on each column's own scale;
    ``mmd_gamma``: (shape, scale) of the gamma law fitted by moments to the null MMD statistic
    (Gretton et al.'s approximation), which puts the MMD on the p-value / z scale of the columns;
    ``distance_scale``: (mu, sd) of ``log score`` for distance-like columns (Evidently distance
    distance methods); ``ewma_z`` / ``ewma_mmd``: thresholds of the evidence accumulated over
    windows (:mod:`tasksim.drift.sequential`: max |z| of the columns' mean normal scores, and the
    MMD of the pooled windows), each at half the accumulated share of the budget (with
    ``drift.reference_delta``: given the reference,
    :func:`tasksim.drift.given_reference.ewma_thresholds_given_reference`; the reference's share of
    the accumulated statistics' variance is ``ewma_reference_share``).
    """

    window_rows: int
    rounds: int
    z_star: float
    column_thresholds: dict[str, float]
    distance_scale: dict[str, tuple[float, float]]
    mmd_gamma: tuple[float, float]
    mmd_threshold: float
    ewma_z: float
    ewma_mmd: float
    held_out_rate: float
    ewma_reference_share: float = 0.0
    z_plain: float | None = None

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


def _mmd_stat(phi_win_mean: np.ndarray, phi_ref_mean: np.ndarray, m: int, n: float) -> float:
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


@dataclass(frozen=True)
class InputNull:
    """The input max-statistic's null measured on the reference (:func:`input_null`): per held-out
    calibration round, the maximum over the monitored columns and the MMD on the common z scale
    (``held_max``), and what puts each component on that scale."""

    window_rows: int
    pseudo_rows: int
    rounds: int
    held_max: np.ndarray
    distance_scale: dict[str, tuple[float, float]]
    mmd_gamma: tuple[float, float]
    p_value_columns: tuple[str, ...]


def input_null(ref: DriftReference, window_rows: int, config: DriftConfig, *, seed: int = 0,
               rounds: int | None = None) -> InputNull:
    """Bootstrap the reference against itself at the window's size bucket (``rounds`` rounds,
    default ``config.calibration_rounds``): each round draws a pseudo-window of
    :func:`calibration_rows` rows and compares it with the disjoint rest of the reference (at most
    ``calibration_max_reference_rows`` rows): the per-column score of every monitored column and
    the MMD statistic. Scores go on one z scale (p-values by the normal quantile, distances as
    ``log`` standardised on the first quarter of the rounds, the MMD through a gamma law fitted by
    moments on those rounds); the rest of the rounds are held out and give ``held_max``."""
    n = ref.rows
    if n < 2 * MIN_CALIBRATION_ROWS:
        raise DataError(f"drift: the reference has {n} rows; at least {2 * MIN_CALIBRATION_ROWS} are needed to "
                        "calibrate")
    m = calibration_rows(window_rows, n)
    pseudo_rows = n - m
    if config.calibration_max_reference_rows is not None:
        pseudo_rows = max(2, min(pseudo_rows, int(config.calibration_max_reference_rows)))
    rounds = config.calibration_rounds if rounds is None else int(rounds)
    a_in = config.false_alarm_rate * ALPHA_SHARES["input"]
    plan = _column_plan(ref, config)
    cols = ref.columns
    components = cols + ["mmd"]
    fit = max(10, rounds // 4)  # rounds that fit the MMD's (and distance columns') null scale
    needed = min(math.ceil(1 / a_in), 2 * TAIL_ROUNDS)  # the conformal rank, or the tail fit (tail_cut)
    if rounds - fit < needed:
        raise DriftConfigError(f"drift.calibration_rounds: {rounds} rounds ({fit} to standardise distances) cannot "
                               f"resolve an input false-alarm share of {a_in:g}; use at least "
                               f"{math.ceil((needed + 1) * 4 / 3)}")
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
            raw[b, :-1] = _column_scores(values, cols, plan, rest, win, m)
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
    return InputNull(window_rows=m, pseudo_rows=pseudo_rows, rounds=rounds, held_max=held.max(axis=1),
                     distance_scale=scale, mmd_gamma=mmd_gamma,
                     p_value_columns=tuple(c for c in cols if plan[c][2]))


#: Peaks over threshold of the input cut (:func:`tail_cut`): the largest ``TAIL_ROUNDS`` held-out
#: maxima, and the confidence ``1 - TAIL_DELTA`` of the bound on their tail's scale.
TAIL_ROUNDS = 50
TAIL_DELTA = 0.1


def tail_cut(held_max: np.ndarray, rate: float, *, k: int = TAIL_ROUNDS, delta: float | None = TAIL_DELTA) -> float:
    """The input cut at a false-alarm ``rate`` from the held-out null maxima, by peaks over
    threshold with an upper confidence bound (the default since 2026-12-07).

    The split-conformal quantile at a 0.4% share with 450 held-out rounds is their *largest*
    value, whose own exceedance rate varies several-fold between calibrations (cuts 3.07-5.34 on
    the z scale over 30 MNIST references; 40% of them above half their share, 13% above the
    share). Here the excesses of the ``k`` largest maxima over the ``k+1``-th, ``u``, are taken
    as exponential (a generalised Pareto law of shape 0, the tail of maxima of near-Gaussian
    scores), and the cut is ``u + beta_up log((k / N) / rate)`` with ``beta_up`` the upper
    ``1 - delta`` confidence bound of their mean (``2 k beta_hat / beta`` is chi-square with
    ``2k`` degrees of freedom): the cut's exceedance rate is then at most ``rate`` for about
    ``1 - delta`` of the calibrations, whatever their Monte Carlo draw (3% of 30 MNIST references
    above it, checked on 1,800 further rounds; docs/benchmarks.md, 2026-12-07). ``delta`` None:
    the point estimate. Falls back to the split-conformal rank when fewer than ``2k`` rounds
    are held out, or the tail is degenerate."""
    from scipy.stats import chi2

    stat = np.sort(np.asarray(held_max, dtype=np.float64))[::-1]
    n = len(stat)
    if n < 2 * k or rate >= k / n:
        return conformal_cut(stat, rate)
    u = float(stat[k])
    beta = float(np.mean(stat[:k] - u))
    if not beta > 0:
        return conformal_cut(stat, rate)
    if delta is not None:
        beta = 2 * k * beta / float(chi2.ppf(delta, 2 * k))
    return float(min(u + beta * math.log((k / n) / rate), _Z_CLIP[1]))


def conformal_cut(held_max: np.ndarray, rate: float) -> float:
    """The split-conformal ``1 - rate`` quantile of the held-out maxima (rank ``ceil((1 - rate)(N + 1))``)."""
    stat = np.sort(np.asarray(held_max, dtype=np.float64))
    rank = math.ceil((1 - rate) * (len(stat) + 1))
    return float(stat[min(rank, len(stat)) - 1])


def calibrate(ref: DriftReference, window_rows: int, config: DriftConfig, *, seed: int = 0) -> Calibration:
    """Bootstrap the reference against itself at the window's size bucket and measure every null.

    The input max-statistic's null comes from :func:`input_null` (``config.calibration_rounds``
    rounds); an upper confidence bound on the ``1 - alpha_input`` quantile of its held-out
    per-round maximum over components (:func:`tail_cut`: peaks over threshold; the
    split-conformal rank with few rounds) is the common cut ``z_star`` (Westfall-Young max-T). The
    thresholds of the evidence accumulated over windows come from the reference rows' covariance
    (:func:`tasksim.drift.sequential.ewma_thresholds`). With ``drift.reference_delta`` both hold
    given the reference (:mod:`tasksim.drift.given_reference`; off by default).
    """
    alpha = config.false_alarm_rate
    a_in, a_cusum = alpha * ALPHA_SHARES["input"], alpha * ALPHA_SHARES["cusum"]
    null = input_null(ref, window_rows, config, seed=seed)
    from scipy.stats import gamma

    stat = null.held_max
    # the cut of the usual null (reference error averaged over); with drift.reference_delta moved
    # to hold given the reference: a window against the whole reference carries its fixed offset,
    # m / (m + n) of the statistic's variance (tasksim.drift.given_reference)
    z_plain = tail_cut(stat, a_in)
    delta = config.reference_delta
    z_star = min(cut_given_reference(z_plain, reference_share(1 / max(int(window_rows), 1), 1 / ref.rows),
                                     delta=delta), _Z_CLIP[1])
    thresholds = {}
    for c in ref.columns:
        if c in null.p_value_columns:
            thresholds[c] = _z_to_p(z_star)
        else:
            mu, sd = null.distance_scale[c]
            thresholds[c] = float(math.exp(mu + z_star * sd)) if math.isfinite(sd) else float("inf")
    mmd_gamma = null.mmd_gamma
    mmd_threshold = float(gamma.isf(_z_to_p(z_star), mmd_gamma[0], scale=mmd_gamma[1]))
    # the accumulated statistics after many windows: the reference's error is a fixed offset of
    # about 40% of their variance (100-row windows, 1,000 reference rows); with
    # drift.reference_delta their thresholds hold given the reference, at the calibrating window size
    rho = ewma_steady_share(window_rows, ref.rows, config.benign_offset_sd ** 2, EWMA_LAMBDA)
    if delta is None:  # the plain null (reference error averaged over reference draws)
        ewma_z, ewma_mmd = ewma_thresholds(reference_scores(ref), ref.phi, a_cusum, seed)
    else:
        root, columns = ewma_root(reference_scores(ref), ref.phi)
        ewma_z, ewma_mmd = ewma_thresholds_given_reference(root, columns, a_cusum, rho, delta=delta, seed=seed)
    m, rounds = null.window_rows, null.rounds
    cal = Calibration(window_rows=m, rounds=rounds, z_star=z_star, column_thresholds=thresholds,
                      distance_scale=null.distance_scale, mmd_gamma=mmd_gamma, mmd_threshold=mmd_threshold,
                      ewma_z=ewma_z, ewma_mmd=ewma_mmd, held_out_rate=float(np.mean(stat >= z_star)),
                      ewma_reference_share=rho, z_plain=z_plain)
    log.info("drift calibration: %d rounds, pseudo-window %d rows (window %d), pseudo-reference %d rows, z*=%.3f, "
             "accumulated: |z| %.2f, MMD %.3g", rounds, m, window_rows, null.pseudo_rows, z_star, ewma_z, ewma_mmd)
    return cal


def reference_scores(ref: DriftReference) -> ReferenceScores:
    """The reference's normal-score summaries (computed once per loaded reference)."""
    cached = getattr(ref, "_scores", None)
    if cached is None:
        cached = ReferenceScores(ref.frame.to_numpy(dtype=np.float64), ref.phi)
        ref._scores = cached  # type: ignore[attr-defined]
    return cached


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
    """(G, Monte-Carlo p-value) of window vs reference class counts (permutation null)."""
    g = float(_g_stat(window_counts, ref_counts))
    return g, mc_pvalue(g, lambda size: _permutation_g(window_counts, ref_counts, rng, size), LABEL_NULL_DRAWS)


def _permutation_g(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """Null draws of the G statistic of count vectors ``a`` and ``b`` by permutation: the pooled rows
    are split again at random into samples of the same sizes (multivariate hypergeometric), which
    is exact when the rows are exchangeable. (Redrawing both from the pooled frequencies, the
    parametric bootstrap used before, never draws a category the pooled sample lacks and gave 8x
    too many small p-values over 26 classes x 26 predicted labels.)"""
    pooled = (np.asarray(a) + np.asarray(b)).astype(np.int64)
    keep = pooled > 0
    draw = rng.multivariate_hypergeometric(pooled[keep], int(np.sum(a)), size=size)
    return _g_stat(draw, pooled[keep] - draw)


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


def _confusion_test(ref: DriftReference, codes: np.ndarray, pred: np.ndarray, rng: np.random.Generator
                    ) -> tuple[float, float]:
    """(G, Monte-Carlo p-value) of "p(predicted label | label) is the reference's": per class, the
    window's predicted labels against the reference's cross-fitted ones (two-sample G, permutation
    null), summed over classes. A label-prior shift leaves it unchanged (that is
    BBSE's assumption); a concept shift (labels of some inputs changed) moves it."""
    k = len(ref.classes)
    ref_codes, ref_pred = ref.ref_label_codes, ref.cv_pred
    pairs = []
    for c in np.unique(codes):
        a = np.bincount(pred[codes == c], minlength=k)
        b = np.bincount(ref_pred[ref_codes == c], minlength=k)
        if b.sum():
            pairs.append((a, b))
    if not pairs:
        return 0.0, 1.0
    g_obs = float(sum(_g_stat(a, b) for a, b in pairs))
    return g_obs, mc_pvalue(g_obs, lambda size: sum(_permutation_g(a, b, rng, size) for a, b in pairs),
                            LABEL_NULL_DRAWS)


#: Within-class permutations of the concept loss test: a first batch, and all of them when the
#: first batch's p-value is small.
LOSS_PERMUTATIONS = (499, 7999)

#: The concept test's design alternative: this share of the rows carries a label drawn from the
#: other classes (see :func:`corruption_llr`).
CONCEPT_DESIGN_SHARE = 0.1


def corruption_llr(p_label: np.ndarray, classes: int, share: float = CONCEPT_DESIGN_SHARE) -> np.ndarray:
    """Per row, the log-likelihood ratio of "a ``share`` of the labels is replaced by one of the
    other ``classes - 1`` classes" against "labels follow the reference model's p(y | x)":
    ``log((1 - share) + share (1 - p) / ((classes - 1) p))``, ``p`` the model's probability of the
    row's label. For an implausible label it grows like the log-loss ``-log p``; for a plausible one
    it stays near ``log(1 - share)`` instead of moving with how confident the model happens to be,
    so the many correctly labelled rows add little noise. Through the reference model, on the drift
    benchmark's label-swap ramps (10-30% of two classes' labels swapped) and at the concept test's
    rate, a 100-row window's sum of it found the shift 1.2-3.7x as often as the sum of log-losses
    (``bench/drift_concept_statistic.py``, docs/benchmarks.md)."""
    p = np.clip(np.asarray(p_label, dtype=np.float64), 1e-6, 1.0)
    return np.log((1.0 - share) + share * (1.0 - p) / (max(int(classes) - 1, 1) * p))


#: Below this reference-model probability of its label a row counts as fully implausible in the
#: accumulated concept test (:func:`implausibility`).
IMPLAUSIBLE_P = 1e-3


def implausibility(p_label: np.ndarray, classes: int, share: float = CONCEPT_DESIGN_SHARE,
                   floor: float = IMPLAUSIBLE_P) -> np.ndarray:
    """:func:`corruption_llr` with ``p`` floored at ``floor`` and rescaled to [0, 1]: 0 for a label
    the model is sure of, 1 for one it gives at most ``floor``. The accumulated concept test's row
    statistic: the label-noise likelihood ratio's ordering of rows (a plausible label adds almost
    nothing, unlike ``1 - p(label)``, which moves with the model's confidence on every row), kept in
    [0, 1] so that :func:`tasksim.drift.sequential.loss_variance`'s bound applies, and capped so
    that one confident mistake of the reference cannot dominate a window's sum."""
    low = np.log1p(-share)
    high = float(corruption_llr(np.array([floor]), classes, share)[0])
    p = np.clip(np.asarray(p_label, dtype=np.float64), floor, 1.0)
    return np.clip((corruption_llr(p, classes, share) - low) / (high - low), 0.0, 1.0)


def _loss_test(ref: DriftReference, codes: np.ndarray, loss: np.ndarray, rng: np.random.Generator
               ) -> tuple[float, float, np.ndarray]:
    """(joint p-value, overall p-value, per-class p-values) of "the reference model's log-loss on
    the window's labelled rows is no higher than on the reference's rows of the same classes".

    A class-stratified permutation test: within each class, the window's rows and the
    reference's (cross-fitted losses) are exchangeable under no concept shift, so each draw
    re-splits every class's pooled losses at random. That is exact and counts the reference's
    own sampling error. (Bootstrapping each class from its reference rows alone does not: it
    never draws a loss beyond the few dozen the reference has, and a max over classes of it fired
    on 65 of 500 quiet Letter windows.) Two statistics on the same draws: the overall excess
    (a concept shift spread over many classes) and the largest per-class standardised excess (a
    shift confined to a few classes, e.g. two labels swapped, which the overall mean dilutes by
    the other classes' rows); the joint p-value is the min-p of the two, ranked among the draws
    with the observed window counted as one of them. Log-loss: a row whose label the model finds
    implausible (a swapped label) weighs far more than under ``1 - p(label)``; the row statistic is
    :func:`corruption_llr`, which is the log-loss for implausible labels without its noise from the
    plausible ones."""
    k = len(ref.classes)
    row_stat = lambda v: corruption_llr(1.0 - v, k)
    strata = []
    for c in np.unique(codes):
        pool = ref.cv_loss[(ref.ref_label_codes == c) & np.isfinite(ref.cv_loss)]
        if not len(pool):
            continue
        win = row_stat(loss[codes == c])
        values = np.concatenate([win, row_stat(pool)])
        n, total = len(win), len(values)
        mean, var = float(values.mean()), float(values.var())
        sd = float(np.sqrt(n * (total - n) / max(total - 1, 1) * var))  # of the class sum, without replacement
        strata.append((int(c), values, n, float(win.sum()), n * mean, sd))
    class_p = np.ones(k)
    if not strata:
        return 1.0, 1.0, class_p
    for draws in LOSS_PERMUTATIONS:
        sums = np.empty((draws + 1, len(strata)))
        for j, (_, values, n, observed, _, _) in enumerate(strata):
            keys = rng.random((draws, len(values)))
            pick = np.argpartition(keys, n - 1, axis=1)[:, :n] if n < len(values) else np.arange(n)[None, :]
            sums[0, j], sums[1:, j] = observed, values[pick].sum(axis=1)
        centre = np.array([s[4] for s in strata])
        spread = np.array([s[5] for s in strata])
        excess = sums - centre
        z = np.where(spread > 0, excess / np.where(spread > 0, spread, 1.0), 0.0)
        overall = excess.sum(axis=1) / max(float(np.sqrt((spread ** 2).sum())), 1e-12)
        ranks, joint = min_p_ranks(np.stack([overall, z.max(axis=1)], axis=1))
        if joint > 0.02:
            break
    per_class = upper_ranks(z)[0]
    for j, stratum in enumerate(strata):
        class_p[stratum[0]] = per_class[j]
    return joint, float(ranks[0, 0]), class_p

def _mixture_prior(ref: DriftReference, phi: np.ndarray) -> np.ndarray:
    """The class marginal under which the reference's class-conditional mean embeddings best match
    the window's (least squares in the MMD's feature space over the simplex; Zhang et al. 2013,
    kernel mean matching under target shift). Used without labels to ask whether *some* class
    marginal explains the window's inputs: BBSE's estimate goes through the classifier's confusion
    and is too noisy on 100 rows to stand for the best one."""
    from scipy.optimize import nnls

    codes = ref.ref_label_codes
    k = len(ref.classes)
    means = np.stack([ref.phi[codes == i].mean(0, dtype=np.float64) if np.any(codes == i)
                      else np.zeros(ref.phi.shape[1]) for i in range(k)])
    scale = 1e3 * max(1.0, float(np.abs(means).max()))  # the sum-to-one row, weighted to hold
    a = np.vstack([means.T, scale * np.ones((1, k))])
    b = np.concatenate([phi.mean(0, dtype=np.float64), [scale]])
    pi, _ = nnls(a, b)
    return pi / pi.sum() if pi.sum() > 0 else np.full(k, 1.0 / k)


def _explained_by_prior(ref: DriftReference, cal: Calibration, prior_pi: np.ndarray, phi: np.ndarray,
                        frame: pd.DataFrame, config: DriftConfig, fired: set[str]) -> tuple[bool, str]:
    """Does the reference, reweighted to the window's class marginal, show no input shift? Then the
    class marginal explains the input shift (a label-prior shift moves p(x) too, p(x|y) stays).
    The reweighted reference has Kish's effective size, which scales the MMD like the window's."""
    codes = ref.ref_label_codes
    k = len(ref.classes)
    ref_prior = np.bincount(codes[codes >= 0], minlength=k) / max(1, int(np.sum(codes >= 0)))
    weights = np.where(codes >= 0, prior_pi[np.maximum(codes, 0)] / np.maximum(ref_prior[np.maximum(codes, 0)],
                                                                               1e-12), 0.0)
    n_eff = float(weights.sum() ** 2 / max(float((weights ** 2).sum()), 1e-12))
    m = len(phi)
    target = (weights[:, None] * ref.phi).sum(0, dtype=np.float64) / max(float(weights.sum()), 1e-12)
    reweighted = _mmd_stat(phi.mean(0), target, m, n_eff)
    mmd_ok = cal.mmd_z(reweighted) < cal.z_star
    if _fast_ks(config):
        p_w = _weighted_ks_pvalues(ref.frame.to_numpy(dtype=np.float64), weights, frame.to_numpy(dtype=np.float64))
        cols_ok = bool(np.all(p_w > np.array([cal.column_thresholds[c] for c in ref.columns])))
    else:
        cols_ok = "columns" not in fired
    explained = mmd_ok and cols_ok
    return explained, (f"reference reweighted to the window's class marginal (effective {n_eff:.0f} rows): MMD "
                       f"{reweighted:.4g} {'within' if mmd_ok else 'beyond'} its threshold, columns "
                       f"{'within' if cols_ok else 'beyond'} theirs "
                       f"({'explains' if explained else 'does not explain'} the input shift)")


def _prior_given_reference(state: dict[str, Any], reference_counts: np.ndarray, window_rows: int,
                           rng: np.random.Generator, benign: float, delta: float | None,
                           fast: dict[str, Any] | None = None) -> AccumulatedPrior:
    """The accumulated class-frequency test (:func:`tasksim.drift.sequential.prior_statistic`; with
    ``fast``, its two scales by min-p), its p-value bounded given the reference: the reference's
    (and a benign offset's) share of the EWMA's variance, ``W^2 (1 / n + benign) / c_t``, is a fixed
    offset for one stream. With two scales the larger share (the slow scale's) bounds the joint
    p-value: an approximation on the safe side, the min-p has no chi-square law of its own."""
    result = prior_statistic(state, reference_counts, window_rows, rng, benign, fast=fast)
    n = max(1.0, float(np.sum(reference_counts)))
    rho = max(reference_share(float(st["s2"]), float(st["w"]) ** 2 * (1 / n + benign))
              for st in ([state] if fast is None else [state, fast]))
    p = pvalue_given_reference(result.p_value, rho, dof=max(1, int(np.count_nonzero(reference_counts)) - 1),
                               delta=delta)
    return result._replace(p_value=p)


def _accumulate_prior(state: dict[str, Any], prev: dict[str, Any], key: str, diff: np.ndarray,
                      reference_counts: np.ndarray, window_rows: int, rng: np.random.Generator,
                      config: DriftConfig) -> AccumulatedPrior:
    """One window of the accumulated class-frequency test under ``state[key]`` (``"prior"``: labels,
    ``"bbse"``: predicted labels): its EWMA, with ``drift.label_fast_lambda`` the fast one as well
    (``state[key + "_fast"]``; a missing (older state) or other-weight fast EWMA restarts here), and
    the test's result bounded as :func:`_prior_given_reference` bounds it."""
    state[key] = to_json(ewma_step(prev.get(key), diff, window_rows))
    fast = None
    if config.label_fast_lambda is not None:
        fast = state[key + "_fast"] = to_json(ewma_step(prev.get(key + "_fast"), diff, window_rows,
                                                        config.label_fast_lambda))
    return _prior_given_reference(state[key], reference_counts, window_rows, rng, config.benign_offset_sd ** 2,
                                  config.reference_delta, fast)


def _scales_note(result: AccumulatedPrior) -> str:
    """The per-scale p-values of a two-scale accumulated class-frequency test, for the detail."""
    if len(result.scales) < 2:
        return ""
    return " (" + ", ".join(f"weight {lam:g} p {p:.3g}" for lam, _, p in result.scales) + ", min-p)"


def _concept_given_reference(state: dict[str, Any], delta: float | None) -> tuple[float, float]:
    """The accumulated loss excess (:func:`tasksim.drift.sequential.concept_statistic`), its
    one-sided p-value bounded given the reference (the null means' error, and a benign offset's,
    are fixed for one stream)."""
    z, p = concept_statistic(state)
    fixed = float(state["w"]) ** 2 * (float(state.get("r", 0.0)) + float(state.get("b", 0.0)))
    return z, pvalue_given_reference(p, reference_share(float(state["v"]), fixed), one_sided=True, delta=delta)


def check_window(
    ref: DriftReference,
    cal: Calibration | None,
    scalars: pd.DataFrame | None,
    features: Any,
    labels: Any,
    config: DriftConfig,
    *,
    cusum_state: Any = None,
    seed: int = 0,
    uncalibrated: str | None = None,
) -> tuple[DriftVerdict, dict[str, Any]]:
    """Test one window against the reference; returns the verdict and the new accumulated state.

    ``cal`` None leaves the input tests "not testable" (``uncalibrated`` says why; default: the
    reference is too small to calibrate).
    ``labels``: the window's labels (None entries: not labelled yet), or None without a label
    column. The accumulated state (a JSON-ready dict, :mod:`tasksim.drift.sequential`) is carried
    from window to window by the caller; None (or a state of an older format) starts it afresh.
    """
    frame, phi, clf_x = ref.project(scalars, features)
    m = len(frame)
    labels_list = _labels_array(labels, m, "the current window")
    notes = list(ref.notes)
    tests: list[DriftTest] = []
    rng = np.random.default_rng(seed)
    alpha = config.false_alarm_rate
    benign = config.benign_offset_sd ** 2  # the accumulated tests' tolerance (DriftConfig.benign_offset_sd)
    delta = config.reference_delta  # None: the plain nulls; else bounded given the reference
    prev: dict[str, Any] = cusum_state if isinstance(cusum_state, dict) else {}
    state: dict[str, Any] = dict(prev)

    # -- input: calibrated max-statistic over columns + MMD, and the evidence over windows -------
    columns: tuple[ColumnDrift, ...] = ()
    mmd_z = None
    if cal is None:
        why = "not testable: " + (uncalibrated or f"the reference ({ref.rows} rows) is too small to calibrate "
                                                  f"(at least {2 * MIN_CALIBRATION_ROWS} rows)")
        tests += [DriftTest("columns", "input", False, not_testable=why), DriftTest("mmd", "input", False,
                                                                                   not_testable=why)]
    else:
        if ref.rows < 2 * m:
            notes.append(f"the reference ({ref.rows} rows) is smaller than two windows ({m} rows): calibrated at "
                         f"{cal.window_rows}-row pseudo-windows")
        window_matrix = frame.to_numpy(dtype=np.float64)
        if _fast_ks(config):
            _, p = ks_pvalues(ref.frame.to_numpy(dtype=np.float64), window_matrix)
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
        scores = reference_scores(ref)
        phi_diff = phi.mean(0, dtype=np.float64) - scores.phi_mean
        mmd_stat = float(m * ref.rows / (m + ref.rows) * float(phi_diff @ phi_diff))
        mmd_z = cal.mmd_z(mmd_stat)
        tests.append(DriftTest("mmd", "input", bool(mmd_stat >= cal.mmd_threshold), statistic=mmd_stat,
                               threshold=cal.mmd_threshold, evidence=("embeddings" if ref.pc_count else "all columns",)
                               if mmd_stat >= cal.mmd_threshold else (),
                               detail=f"m n/(m+n) x MMD^2, Gaussian kernel (bandwidth {ref.bandwidth:.3g})"))
        if config.cusum:
            col_diff = scores.column_diff(window_matrix)
            state["cols"] = to_json(ewma_step(prev.get("cols"), col_diff, m))
            state["phi"] = to_json(ewma_step(prev.get("phi"), phi_diff, m))
            c_cols = ewma_scale(state["cols"], ref.rows, benign)
            z_cols = np.abs(np.asarray(state["cols"]["e"])) / math.sqrt(c_cols)
            e_phi = np.asarray(state["phi"]["e"])
            mmd_acc = float(e_phi @ e_phi) / ewma_scale(state["phi"], ref.rows, benign)
            over = tuple(ref.columns[i] for i in np.flatnonzero(z_cols > cal.ewma_z))
            over += ("embeddings" if ref.pc_count else "all columns",) if mmd_acc > cal.ewma_mmd else ()
            top = float(z_cols.max()) if len(z_cols) else 0.0
            tests.append(DriftTest("cusum", "input", bool(over), statistic=top, threshold=cal.ewma_z, evidence=over,
                                   detail=f"evidence over windows (EWMA, weight {EWMA_LAMBDA}): max |z| of the "
                                          f"columns' mean normal scores (threshold {cal.ewma_z:.2f}); pooled MMD "
                                          f"{mmd_acc:.4g} (threshold {cal.ewma_mmd:.4g})"))

    # -- labels: prior (true labels, else BBSE) and concept ---------------------------------------
    known = [i for i, v in enumerate(labels_list or []) if v is not None]
    labelled_rows = len(known)
    prior_pi: np.ndarray | None = None
    a_label, a_concept = alpha * ALPHA_SHARES["label_prior"], alpha * ALPHA_SHARES["concept"]
    accumulated: list[tuple[str, float, float]] = []  # (what, statistic, p-value) of the label evidence over windows
    scales_note = ""  # the class frequencies' per-scale p-values (two scales: config.label_fast_lambda)
    if ref.clf_w is None:
        why = f"not testable: {ref.label_note or 'no reference model'}"
        tests += [DriftTest("label_prior", "label_prior", False, not_testable=why),
                  DriftTest("concept", "concept", False, not_testable=why)]
    else:
        k = len(ref.classes)
        labelled_ref = ref.ref_label_codes >= 0
        ref_codes = ref.ref_label_codes[labelled_ref]
        ref_counts = np.bincount(ref_codes, minlength=k).astype(float)
        proba = ref.predict_proba(clf_x, rng)
        pred = proba.argmax(axis=1)
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
                g, p_raw = _label_prior_test(counts, ref_counts, rng)
                # bounded given the reference (drift.reference_delta): its class frequencies' error is
                # m / (m + n) of the G's variance
                p = pvalue_given_reference(p_raw, reference_share(1 / counts.sum(), 1 / ref_counts.sum()),
                                           dof=k - 1, delta=delta)
                moved = np.argsort(-np.abs(counts / counts.sum() - ref_counts / ref_counts.sum()))[:3]
                tests.append(DriftTest("label_prior", "label_prior", p <= a_label, statistic=g, threshold=a_label,
                                       p_value=p, evidence=tuple(f"class {ref.classes[i]!r}: "
                                                                 f"{counts[i] / counts.sum():.2f} vs "
                                                                 f"{ref_counts[i] / ref_counts.sum():.2f}"
                                                                 for i in moved) if p <= a_label else (),
                                       detail=f"G test of the {labelled_rows} window labels vs the reference"
                                              + (f" (permutation p {p_raw:.3g}; given the reference {p:.3g})"
                                                 if delta is not None else "")))
            if counts.sum():
                prior_pi = counts / counts.sum()
                if config.cusum:
                    result = _accumulate_prior(state, prev, "prior", prior_pi - ref_counts / ref_counts.sum(),
                                               ref_counts, int(counts.sum()), rng, config)
                    accumulated.append(("label_prior", result.statistic, result.p_value))
                    scales_note = _scales_note(result)
            # concept: the reference model's loss on labelled rows (null stratified by class), and
            # whether p(predicted label | label) moved; Bonferroni over the two
            rows = [known[i] for i in range(len(known)) if codes[i] >= 0]
            if len(rows) >= config.min_labelled_rows:
                row_codes = codes[codes >= 0]
                loss = 1.0 - proba[rows][np.arange(len(rows)), row_codes]
                # the accumulated excess sums each row's implausibility of its label (bounded
                # label-noise likelihood ratio), against the reference's cross-fitted rows
                implausible = implausibility(1.0 - loss, k)
                observed = float(implausible.mean())
                null_mean = window_var = reference_var = 0.0
                finite = np.isfinite(ref.cv_loss) & (ref.ref_label_codes >= 0)
                ref_implausible = np.where(finite, implausibility(1.0 - np.nan_to_num(ref.cv_loss, nan=0.0), k), np.nan)
                overall = float(ref_implausible[finite].mean())
                for cls_i in range(k):
                    n_c = int(counts[cls_i])
                    if n_c == 0:
                        continue
                    pool = ref_implausible[(ref.ref_label_codes == cls_i) & finite]
                    var_c = loss_variance(pool, overall)  # not the plug-in: see loss_variance
                    null_mean += n_c * float(pool.mean())
                    window_var += n_c * var_c
                    reference_var += n_c * n_c * var_c / len(pool)

                p_loss, p_overall, class_p = _loss_test(ref, row_codes, loss, rng)
                g_conf, p_conf = _confusion_test(ref, row_codes, pred[rows], rng)
                # bounded given the reference (drift.reference_delta): its class pools' error is about
                # m / (m + n) of each class's excess (one-sided bound, tasksim.drift.given_reference)
                p = pvalue_given_reference(min(1.0, 2 * min(p_loss, p_conf)),
                                           reference_share(1 / len(rows), 1 / max(1, int(finite.sum()))),
                                           one_sided=True, delta=delta)
                worst = [i for i in np.argsort(class_p) if counts[i] and class_p[i] < 1.0][:3]
                tests.append(DriftTest("concept", "concept", p <= a_concept, statistic=observed,
                                       threshold=a_concept, p_value=p,
                                       evidence=tuple(f"class {ref.classes[i]!r} (p {class_p[i]:.2g})" for i in worst)
                                       if p <= a_concept else (),
                                       detail=f"label-noise likelihood ratio of the reference model on {len(rows)} rows against "
                                              f"the reference's rows of the same classes (within-class "
                                              f"permutations: overall p {p_overall:.3g}, with the largest "
                                              f"per-class excess p {p_loss:.3g}; mean implausibility of the labels {observed:.3f}, "
                                              f"null {null_mean / len(rows):.3f}) and p(predicted | label) "
                                              f"(G {g_conf:.1f}, p {p_conf:.3g}); Bonferroni over the two"
                                              + (", bounded given the reference" if delta is not None else "")))
                if config.cusum:
                    nr = len(rows)
                    state["concept"] = concept_step(prev.get("concept"), observed - null_mean / nr,
                                                    window_var / nr ** 2, reference_var / nr ** 2,
                                                    benign * window_var / nr)
                    accumulated.append(("concept", *_concept_given_reference(state["concept"], delta)))
            else:
                tests.append(DriftTest("concept", "concept", False, not_testable=f"not testable: {len(rows)} "
                                       f"labelled rows (< {config.min_labelled_rows}) of classes the reference has"))
        else:
            ref_pred = ref.cv_pred[labelled_ref]
            pred_counts = np.bincount(pred, minlength=k).astype(float)
            ref_pred_counts = np.bincount(ref_pred, minlength=k).astype(float)
            g, p_raw = _label_prior_test(pred_counts, ref_pred_counts, rng)
            p = pvalue_given_reference(p_raw, reference_share(1 / m, 1 / max(1.0, ref_pred_counts.sum())), dof=k - 1,
                                       delta=delta)
            prior_pi = _bbse_weights(ref, pred)
            tests.append(DriftTest("bbse", "label_prior", p <= a_label, statistic=g, threshold=a_label, p_value=p,
                                   detail=f"G test of predicted labels ({labelled_rows} labelled rows < "
                                          f"{config.min_labelled_rows}: black-box shift estimation"
                                          + (f"; permutation p {p_raw:.3g}, given the reference {p:.3g})"
                                             if delta is not None else ")")))
            if config.cusum:
                result = _accumulate_prior(state, prev, "bbse",
                                           pred_counts / pred_counts.sum() - ref_pred_counts / ref_pred_counts.sum(),
                                           ref_pred_counts, m, rng, config)
                accumulated.append(("label_prior", result.statistic, result.p_value))
                scales_note = _scales_note(result)
            tests.append(DriftTest("concept", "concept", False, not_testable=(
                "not testable: no labelled rows in the window" if labelled_rows == 0 else
                f"not testable: {labelled_rows} labelled rows (< {config.min_labelled_rows})")))

    # -- labels over windows: EWMA of the class frequencies and of the loss excess ------------------
    if config.cusum and accumulated:
        # Bonferroni over the accumulated label tests that ran (the class frequencies, and the loss
        # excess when the window has labels; predicted labels alone: the frequencies get the share)
        a_lc = alpha * ALPHA_SHARES["label_cusum"] / len(accumulated)
        over = tuple(what for what, _, p in accumulated if p <= a_lc)
        best = min(accumulated, key=lambda a: a[2])
        tests.append(DriftTest("label_cusum", over[0] if over else best[0], bool(over), statistic=best[1],
                               threshold=a_lc, p_value=best[2], evidence=over,
                               detail="evidence over windows (EWMA, weight "
                                      f"{EWMA_LAMBDA}): " + "; ".join(f"{w} p {p:.3g}" + (scales_note if w ==
                                                                                       "label_prior" else "")
                                                                   for w, _, p in accumulated)))

    # -- the kind -----------------------------------------------------------------------------------
    fired = {t.name for t in tests if t.fired}
    input_fired = bool(fired & {"columns", "mmd", "cusum"})
    label_fired = bool(fired & {"label_prior", "bbse"}) or any(
        t.name == "label_cusum" and t.fired and "label_prior" in t.evidence for t in tests)
    concept_fired = "concept" in fired or any(
        t.name == "label_cusum" and t.fired and "concept" in t.evidence for t in tests)
    explained = False
    # the class marginal can only explain an input shift when it moved itself (a label test fired)
    if input_fired and label_fired and prior_pi is not None and mmd_z is not None and cal is not None:
        labelled = any(t.name == "label_prior" and not t.not_testable for t in tests)
        explained, note = _explained_by_prior(ref, cal, prior_pi if labelled else _mixture_prior(ref, phi), phi,
                                              frame, config, fired)
        notes.append(note)
    # p(x) moved: input, unless the class marginal explains it and p(y|x) did not move (label prior).
    # p(x) did not visibly move: a moved p(y|x) is a concept shift (whether or not the marginal
    # moved with it: under a pure label-prior shift the class-stratified concept tests hold).
    if input_fired:
        kind = "label_prior" if explained and not concept_fired else "input"
    elif concept_fired:
        kind = "concept"
    elif label_fired:
        kind = "label_prior"
    else:
        kind = "none"
    verdict = DriftVerdict(drifted=kind != "none", kind=kind, tests=tuple(tests), columns=columns,
                           reference_rows=ref.rows, current_rows=m, labelled_rows=labelled_rows,
                           calibrated=cal is not None, false_alarm_rate=alpha,
                           calibration_rows=cal.window_rows if cal is not None else None, notes=tuple(notes))
    return verdict, state
