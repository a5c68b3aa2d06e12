"""Multi-criteria decision analysis over the sources' profiles: normalisation, aggregation, Pareto, bootstrap.

Alternatives (sources) are scored on criteria (measures) whose direction is +1 (higher is
better) or -1 (lower is better). A decision matrix is ``{alternative: {criterion: value}}``;
criteria an alternative carries but that have no (positive) weight are ignored. All functions
are pure and deterministic; invalid inputs raise :class:`tasksim.errors.MetricInputError`
(a ``ValueError``).

References: Hwang & Yoon, *Multiple Attribute Decision Making: Methods and Applications*,
Springer 1981 (TOPSIS, simple additive weighting); Iglewicz & Hoaglin, *How to Detect and
Handle Outliers*, ASQC 1993 (robust z with the MAD); Efron & Tibshirani, *An Introduction to the
Bootstrap*, 1993.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import numpy as np
import torch

from tasksim.errors import MetricInputError
from tasksim.metrics._kernels import average_ranks

__all__ = [
    "MAD_TO_SIGMA",
    "MEANAD_TO_SIGMA",
    "NormalizationMethod",
    "bootstrap_indices",
    "bootstrap_top1",
    "normalize",
    "pareto_front",
    "reliability",
    "top1_and_intervals",
    "topsis",
    "weighted_sum",
]

NormalizationMethod = Literal["rank", "robust_z", "minmax"]

# Consistency constants for a normal distribution: sigma = 1.4826 * MAD = 1.2533 * mean |x - median|.
MAD_TO_SIGMA = 1.4826
MEANAD_TO_SIGMA = 1.253314


def _direction(direction: int, name: str = "direction") -> int:
    if direction not in (1, -1) or isinstance(direction, bool):
        raise MetricInputError(f"{name} must be +1 (higher is better) or -1 (lower is better), got {direction!r}")
    return int(direction)


def _finite_values(values: Mapping[str, float], what: str) -> tuple[list[str], np.ndarray]:
    names = list(values)
    arr = np.array([float(values[k]) for k in names], dtype=np.float64)
    bad = [k for k, v in zip(names, arr) if not math.isfinite(v)]
    if bad:
        raise MetricInputError(f"{what}: non-finite values for {bad}")
    return names, arr


def _logistic(z: np.ndarray) -> np.ndarray:
    # numerically safe 1 / (1 + exp(-z))
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


def normalize(values: Mapping[str, float], direction: int, method: NormalizationMethod) -> dict[str, float]:
    """One criterion across alternatives mapped to [0, 1] with 1 = best.

    With ``s = direction * v`` (so higher ``s`` is better):

    - ``"rank"``: average ranks ``r`` of ``s`` (ties share the mean rank), ``(r - 1) / (n - 1)``;
      invariant to any strictly increasing transform of the criterion; robust to outliers.
    - ``"robust_z"``: ``z = (s - median(s)) / (1.4826 * MAD)`` with ``MAD = median|s - median(s)|``
      (Iglewicz & Hoaglin 1993), squashed by the logistic ``1 / (1 + exp(-z))``; when MAD = 0 but
      the values differ, the scale is ``1.2533 * mean|s - median(s)|`` (the mean-absolute-deviation
      fallback of the modified z-score). Invariant to positive affine transforms ``a v + b``.
    - ``"minmax"``: ``(s - min) / (max - min)``, as in ``tasksim.rank``; outlier-sensitive.

    Constant inputs (and a single alternative) give 0.5 for every method. Values must be finite.
    """
    d = _direction(direction)
    if method not in ("rank", "robust_z", "minmax"):
        raise MetricInputError(f"method must be one of 'rank', 'robust_z', 'minmax', got {method!r}")
    names, v = _finite_values(values, "normalize")
    if not names:
        return {}
    s = d * v
    lo, hi = float(s.min()), float(s.max())
    if hi - lo <= 1e-12 * max(1.0, abs(hi), abs(lo)) or len(names) == 1:
        return {k: 0.5 for k in names}
    if method == "rank":
        u = (average_ranks(torch.as_tensor(s, dtype=torch.float64)).numpy() - 1.0) / (len(names) - 1)
    elif method == "minmax":
        u = (s - lo) / (hi - lo)
    else:
        med = float(np.median(s))
        dev = np.abs(s - med)
        scale = MAD_TO_SIGMA * float(np.median(dev))
        if not scale > 0.0:
            scale = MEANAD_TO_SIGMA * float(dev.mean())
        u = _logistic((s - med) / scale)
    return dict(zip(names, np.clip(u, 0.0, 1.0).tolist()))


def _matrix(matrix: Mapping[str, Mapping[str, float]], weights: Mapping[str, float],
            directions: Mapping[str, int], *, allow_missing: bool = False
            ) -> tuple[list[str], list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(alternatives, criteria, X (n x m), w (m, summing to 1), d (m,)) for the positively weighted
    criteria; with ``allow_missing`` a criterion an alternative lacks is NaN in X."""
    alternatives = list(matrix)
    if not alternatives:
        raise MetricInputError("the decision matrix has no alternatives")
    bad_w = {c: w for c, w in weights.items() if not (math.isfinite(float(w)) and float(w) >= 0)}
    if bad_w:
        raise MetricInputError(f"weights must be finite and >= 0, got {bad_w}")
    criteria = [c for c, w in weights.items() if float(w) > 0]
    if not criteria:
        raise MetricInputError("no criterion has a positive weight")
    no_dir = [c for c in criteria if c not in directions]
    if no_dir:
        raise MetricInputError(f"criteria {no_dir} have a weight but no direction")
    missing = {a: [c for c in criteria if c not in matrix[a]] for a in alternatives}
    missing = {a: cs for a, cs in missing.items() if cs}
    if missing and not allow_missing:
        raise MetricInputError(f"weighted criteria missing for some alternatives: {missing}")
    x = np.array([[float(matrix[a].get(c, math.nan)) for c in criteria] for a in alternatives], dtype=np.float64)
    present = np.array([[c in matrix[a] for c in criteria] for a in alternatives], dtype=bool)
    if not np.isfinite(x[present]).all():
        bad = sorted({(alternatives[i], criteria[j]) for i, j in zip(*np.nonzero(present & ~np.isfinite(x)))})
        raise MetricInputError(f"non-finite values in the decision matrix: {bad}")
    if allow_missing and not present.any(axis=1).all():
        empty = [a for a, row in zip(alternatives, present) if not row.any()]
        raise MetricInputError(f"alternatives with none of the weighted criteria: {empty}")
    w = np.array([float(weights[c]) for c in criteria], dtype=np.float64)
    d = np.array([_direction(directions[c], f"directions[{c!r}]") for c in criteria], dtype=np.float64)
    return alternatives, criteria, x, w / w.sum(), d


def weighted_sum(matrix: Mapping[str, Mapping[str, float]], weights: Mapping[str, float],
                 directions: Mapping[str, int], method: NormalizationMethod = "minmax", *,
                 allow_missing: bool = False) -> dict[str, float]:
    """Simple additive weighting (Hwang & Yoon 1981): ``score_i = sum_c w_c u_ic / sum_c w_c`` in [0, 1].

    ``u_ic`` is :func:`normalize` of criterion c across the alternatives (``method``; the default
    ``"minmax"`` reproduces ``tasksim.rank``'s composite). Only criteria with weight > 0 are used;
    each must have a direction and a finite value for every alternative, unless
    ``allow_missing``: then a criterion is normalised across the alternatives that have it, and
    each alternative is scored on the criteria it has (``sum_{c in C_i} w_c u_ic / sum_{c in C_i}
    w_c``): a criterion is never dropped for everyone because one alternative lacks it.
    """
    alternatives, criteria, x, w, d = _matrix(matrix, weights, directions, allow_missing=allow_missing)
    score = np.zeros(len(alternatives), dtype=np.float64)
    total = np.zeros(len(alternatives), dtype=np.float64)
    for j, c in enumerate(criteria):
        has = np.isfinite(x[:, j])
        u = normalize({a: v for a, v, h in zip(alternatives, x[:, j], has) if h}, int(d[j]), method)
        score += w[j] * np.array([u.get(a, 0.0) for a in alternatives])
        total += w[j] * has
    score = score / total
    return {a: float(min(max(s, 0.0), 1.0)) for a, s in zip(alternatives, score)}


def topsis(matrix: Mapping[str, Mapping[str, float]], weights: Mapping[str, float],
           directions: Mapping[str, int], *, allow_missing: bool = False) -> dict[str, float]:
    """TOPSIS closeness to the ideal solution (Hwang & Yoon 1981), in [0, 1], 1 = best.

    1. vector normalisation per criterion: ``r_ij = x_ij / sqrt(sum_i x_ij^2)`` (a column of zeros
       stays 0);
    2. weighting: ``v_ij = w_j r_ij`` with the weights rescaled to sum to 1;
    3. ideal ``A+_j = max_i v_ij`` (benefit, direction +1) or ``min_i v_ij`` (cost, -1); anti-ideal
       ``A-`` the opposite;
    4. ``S+_i = ||v_i - A+||``, ``S-_i = ||v_i - A-||`` (Euclidean);
    5. closeness ``C_i = S-_i / (S+_i + S-_i)``; 0.5 when every alternative is identical.

    Vector normalisation is a positive rescaling per criterion, so it is invariant to rescaling a
    criterion but *not* to shifting it (unlike :func:`normalize`'s methods).

    With ``allow_missing`` each criterion is normalised over (and its ideals taken from) the
    alternatives that have it, and each alternative's distances run over the criteria it has,
    with their weights rescaled to sum to 1 for it.
    """
    alternatives, _criteria, x, w, d = _matrix(matrix, weights, directions, allow_missing=allow_missing)
    has = np.isfinite(x)
    x0 = np.where(has, x, 0.0)
    norms = np.sqrt((x0 * x0).sum(axis=0))
    r = np.divide(x0, norms, out=np.zeros_like(x0), where=norms > 0)
    w_row = np.where(has, w, 0.0)
    w_row = w_row / w_row.sum(axis=1, keepdims=True)
    v = r * w_row
    v_lo = np.where(has, r, np.inf).min(axis=0)
    v_hi = np.where(has, r, -np.inf).max(axis=0)
    ideal = np.where(d > 0, v_hi, v_lo) * w_row
    anti = np.where(d > 0, v_lo, v_hi) * w_row
    s_plus = np.sqrt(np.where(has, (v - ideal) ** 2, 0.0).sum(axis=1))
    s_minus = np.sqrt(np.where(has, (v - anti) ** 2, 0.0).sum(axis=1))
    total = s_plus + s_minus
    closeness = np.divide(s_minus, total, out=np.full_like(total, 0.5), where=total > 0)
    return {a: float(min(max(c, 0.0), 1.0)) for a, c in zip(alternatives, closeness)}


def pareto_front(points: Mapping[str, tuple[float, ...]], directions: tuple[int, ...]) -> set[str]:
    """The non-dominated alternatives.

    With ``s = directions * p``, ``a`` dominates ``b`` when ``s_a >= s_b`` in every criterion and
    ``s_a > s_b`` in at least one; the front is every point no other point dominates (identical
    points do not dominate each other, so ties stay together). O(n^2 m); values must be finite.
    Example: ``directions=(+1, -1)`` for (transfer potential, cost).
    """
    dirs = np.array([_direction(x, "directions[]") for x in directions], dtype=np.float64)
    names = list(points)
    if not names:
        return set()
    rows = []
    for n in names:
        p = tuple(points[n])
        if len(p) != dirs.shape[0]:
            raise MetricInputError(f"point {n!r} has {len(p)} values but directions has {dirs.shape[0]}")
        rows.append(p)
    s = np.array(rows, dtype=np.float64).reshape(len(names), dirs.shape[0]) * dirs
    if not np.isfinite(s).all():
        raise MetricInputError("pareto_front: non-finite values")
    ge = (s[:, None, :] >= s[None, :, :]).all(axis=2)  # ge[a, b]: a >= b everywhere
    gt = (s[:, None, :] > s[None, :, :]).any(axis=2)
    dominated = (ge & gt).any(axis=0)
    return {n for n, dom in zip(names, dominated) if not dom}


def bootstrap_indices(n_rows: int, rounds: int, seed: int) -> list[torch.Tensor]:
    """``rounds`` draws of ``n_rows`` row indices with replacement, as CPU ``torch.long`` tensors
    (``np.random.default_rng(seed).integers(0, n_rows, n_rows)``, one generator for all rounds)."""
    n_rows, rounds = int(n_rows), int(rounds)
    if n_rows < 1:
        raise MetricInputError(f"n_rows must be >= 1, got {n_rows}")
    if rounds < 1:
        raise MetricInputError(f"rounds must be >= 1, got {rounds}")
    rng = np.random.default_rng(seed)
    return [torch.from_numpy(rng.integers(0, n_rows, size=n_rows, dtype=np.int64)) for _ in range(rounds)]


def top1_and_intervals(round_scores: Sequence[Mapping[str, float]]) -> tuple[dict[str, float],
                                                                              dict[str, tuple[int, int]]]:
    """From one ``{alternative: score}`` per bootstrap round (higher is better, the same
    alternatives every round, finite scores): ``(p_top1, rank_interval)``. ``p_top1[a]`` is the
    share of rounds where ``a`` ranked first (k alternatives tied for first each get 1/k of that
    round, so the shares sum to 1); ``rank_interval[a] = (lo, hi)`` the 5th and 95th percentiles
    of ``a``'s rank (1 = best; tied alternatives share the best of their ranks), with ``lo``
    rounded down and ``hi`` up to observed ranks (``numpy.quantile`` methods ``"lower"`` /
    ``"higher"``)."""
    if not round_scores:
        raise MetricInputError("no bootstrap rounds")
    names = list(round_scores[0])
    if not names:
        raise MetricInputError("score_fn returned no alternatives")
    top1 = np.zeros(len(names), dtype=np.float64)
    ranks = np.empty((len(round_scores), len(names)), dtype=np.int64)
    for b, scores in enumerate(round_scores):
        if set(scores) != set(names):
            raise MetricInputError(
                f"score_fn returned alternatives {sorted(scores)} in round {b}, expected {sorted(names)}")
        s = np.array([float(scores[n]) for n in names], dtype=np.float64)
        if not np.isfinite(s).all():
            bad = [n for n, v in zip(names, s) if not math.isfinite(v)]
            raise MetricInputError(f"score_fn returned non-finite scores for {bad} in round {b}")
        ranks[b] = 1 + (s[None, :] > s[:, None]).sum(axis=1)  # 1 + number of strictly better
        best = ranks[b] == 1
        top1[best] += 1.0 / best.sum()
    p = top1 / len(round_scores)
    intervals = {
        n: (int(np.quantile(ranks[:, j], 0.05, method="lower")), int(np.quantile(ranks[:, j], 0.95, method="higher")))
        for j, n in enumerate(names)
    }
    return {n: float(v) for n, v in zip(names, p)}, intervals


def bootstrap_top1(score_fn: Callable[[torch.Tensor], Mapping[str, float]], n_rows: int, rounds: int,
                   seed: int) -> tuple[dict[str, float], dict[str, tuple[int, int]]]:
    """Stability of the ranking under resampling of the rows (nonparametric bootstrap):
    :func:`top1_and_intervals` of ``score_fn(indices)`` over :func:`bootstrap_indices`."""
    return top1_and_intervals([score_fn(idx) for idx in bootstrap_indices(n_rows, rounds, seed)])


def reliability(values: Mapping[str, float], noise_variances: Mapping[str, float]) -> float:
    """Share of a criterion's spread across alternatives that is not its own sampling noise:
    ``max(0, 1 - mean(noise variance) / variance across alternatives)`` (classical test theory's
    reliability, signal / (signal + noise)). 1 when no alternative has a noise estimate; 0 when
    the noise is at least the observed spread. Normalisation stretches any spread to the full
    scale, so a criterion whose differences are noise would otherwise weigh as much as one whose
    differences are real."""
    noise = [float(v) for v in noise_variances.values() if math.isfinite(float(v))]
    vals = np.array([float(v) for v in values.values()], dtype=np.float64)
    if not noise or len(vals) < 2:
        return 1.0
    spread = float(np.var(vals, ddof=1))
    if spread <= 0:
        return 0.0
    return float(max(0.0, 1.0 - float(np.mean(noise)) / spread))
