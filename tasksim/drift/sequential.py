"""Evidence accumulated over windows: exponentially weighted moving averages (EWMA) of per-window
differences from the reference, with a null that counts the reference's own sampling error.

Why not a CUSUM of per-window p-values: every window is compared with the *same* finite
reference, so consecutive window statistics share the reference's sampling error and are
positively correlated. A CUSUM calibrated on independent windows accumulates that shared error
as if it were drift (its false alarms per window rose above the budget on 26-class labels). Here
each accumulated quantity is a weighted sum of window-minus-reference differences,

    e_t = (1 - lam) e_{t-1} + lam (mean_t - mean_ref),

whose null covariance is exactly ``(sum_i w_i^2 / m_i + W^2 / n) Sigma`` (window parts independent,
one shared reference part of weight ``W = sum_i w_i``; ``n`` reference rows, ``Sigma`` the per-row
covariance). The statistic ``e_t / sqrt(c_t)`` therefore has the same null law at every step and for
every history (after one window it is the plain two-sample difference), and one threshold set at the
window's false-alarm share holds per window. That null assumes every window is a fresh draw from the
reference's population. Windows drawn again and again from one finite pool of N rows (a benchmark's
stream, or a period whose population differs slightly from the reference period's) share a further
error, the pool's mean minus the population's, and ``e_t`` gains ``W^2 / N`` of variance: about 10%
with 100-row windows, a 1,000-row reference and a 4,000-row pool, enough to double the accumulated
test's false alarms on MNIST (docs/benchmarks.md). ``c_t`` therefore also counts a benign persistent
offset, ``W^2 delta^2`` with ``delta = DriftConfig.benign_offset_sd`` (:func:`ewma_scale`); the
thresholds, which are for ``e_t / sqrt(c_t)``, do not change. Quantities:

- inputs: the mean of every monitored column's normal scores under the reference ECDF (robust,
  near-Gaussian, sensitive to location and spread), the max over columns; and the mean embedding of
  the MMD's random Fourier features, ``|e|^2 / c`` (the MMD on pooled, weighted windows). Their
  thresholds come from a Gaussian simulation with the reference rows' covariance
  (:func:`ewma_thresholds`), at half the accumulated input share each;
- labels: the class frequencies (labels, or the reference model's predictions: BBSE), Pearson's
  form with a simulated null (:func:`prior_statistic`; with ``DriftConfig.label_fast_lambda`` at
  two scales, ``EWMA_LAMBDA`` and the fast one, combined by min-p on the same null draws); and the reference model's
  loss on labelled rows minus its class-stratified null mean (one-sided normal, each class's
  variance bounded by :func:`loss_variance`, not read off its few reference rows).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

#: EWMA weight of the newest window (effective memory (2 - lam) / lam, about 6 windows).
EWMA_LAMBDA = 0.3

#: EWMA weight chosen for the accumulated class-frequency test's optional fast scale (labels and
#: BBSE; ``DriftConfig.label_fast_lambda``, off by default): a ramp's first windows weigh more, the
#: quiet windows before its onset less (docs/benchmarks.md, "A multi-scale accumulated label
#: test"; ``bench/drift_label_multiscale_power.py``).
EWMA_LAMBDA_FAST = 0.6

#: Gaussian draws that set the accumulated input thresholds.
EWMA_DRAWS = 20000


def ewma_step(state: dict[str, Any] | None, diff: np.ndarray, rows: int, lam: float = EWMA_LAMBDA
              ) -> dict[str, Any]:
    """One EWMA update of ``diff`` (window minus reference) over a window of ``rows`` rows, with
    weight ``lam`` on the newest window. A state of another length or another weight (an older
    state, without ``"lam"``, has ``EWMA_LAMBDA``) starts afresh."""
    diff = np.asarray(diff, dtype=np.float64)
    if (state is None or len(state.get("e", ())) != len(diff)
            or float(state.get("lam", EWMA_LAMBDA)) != float(lam)):
        state = {"e": np.zeros(len(diff)), "w": 0.0, "s2": 0.0}
    return {"e": (1 - lam) * np.asarray(state["e"], dtype=np.float64) + lam * diff,
            "w": (1 - lam) * float(state["w"]) + lam,
            "s2": (1 - lam) ** 2 * float(state["s2"]) + lam * lam / max(int(rows), 1),
            "t": int(state.get("t", 0)) + 1, "lam": float(lam)}


def ewma_scale(state: dict[str, Any], reference_rows: int, benign: float = 0.0) -> float:
    """``c_t``: the null variance of ``e_t`` in units of one row's variance: the windows', the
    reference's (``W^2 / n``) and a benign persistent offset's (``W^2 benign``, ``benign`` the
    offset's variance in the same units: ``DriftConfig.benign_offset_sd`` squared)."""
    w2 = float(state["w"]) ** 2
    return float(state["s2"]) + w2 / max(int(reference_rows), 1) + w2 * float(benign)


def normal_scores(sorted_ref: list[np.ndarray], frame: np.ndarray) -> np.ndarray:
    """Each value's normal score under its column's reference ECDF (mid-ranks for ties; NaN kept)."""
    from scipy.special import ndtri

    out = np.full(frame.shape, np.nan)
    for j, ref in enumerate(sorted_ref):
        col = frame[:, j]
        ok = np.isfinite(col)
        if not len(ref) or not ok.any():
            continue
        rank = (np.searchsorted(ref, col[ok], side="left") + np.searchsorted(ref, col[ok], side="right")) / 2
        out[ok, j] = ndtri(np.clip((rank + 0.5) / (len(ref) + 1), 0.5 / (len(ref) + 1), 1 - 0.5 / (len(ref) + 1)))
    return out


class ReferenceScores:
    """The reference columns sorted (for normal scores), their normal scores' mean and sd, and
    the reference RFF mean: what the accumulated input statistics need, computed once."""

    def __init__(self, matrix: np.ndarray, phi: np.ndarray) -> None:
        self.sorted = [np.sort(matrix[:, j][np.isfinite(matrix[:, j])]) for j in range(matrix.shape[1])]
        ns = normal_scores(self.sorted, matrix)
        self.ns = np.nan_to_num(ns - np.nanmean(ns, axis=0))
        self.mean = np.nanmean(ns, axis=0)
        sd = np.nanstd(ns, axis=0)
        self.sd = np.where(sd > 1e-12, sd, np.inf)  # a column without spread never moves the statistic
        self.phi_mean = phi.mean(axis=0, dtype=np.float64)

    def column_diff(self, frame: np.ndarray) -> np.ndarray:
        """Standardised difference of the window's mean normal score from the reference's, per column."""
        ns = normal_scores(self.sorted, frame)
        with np.errstate(invalid="ignore"):
            mean = np.nanmean(ns, axis=0) if len(ns) else self.mean
        return np.nan_to_num((mean - self.mean) / self.sd)


def ewma_root(scores: ReferenceScores, phi: np.ndarray) -> tuple[np.ndarray, int]:
    """(root of the reference rows' covariance of [standardised normal scores, RFF features], the
    number of column coordinates): ``g = root @ standard normal`` has the law of ``e_t / sqrt(c_t)``
    under no drift."""
    z_cols = scores.ns / np.where(np.isfinite(scores.sd), scores.sd, 1.0)
    z_cols[:, ~np.isfinite(scores.sd)] = 0.0
    phi_c = phi.astype(np.float64) - phi.mean(axis=0, dtype=np.float64)
    a = np.concatenate([z_cols, phi_c], axis=1)
    cov = a.T @ a / len(a)
    vals, vecs = np.linalg.eigh(cov)
    return vecs * np.sqrt(np.clip(vals, 0.0, None)), z_cols.shape[1]


def ewma_thresholds(scores: ReferenceScores, phi: np.ndarray, rate: float, seed: int) -> tuple[float, float]:
    """(max |z| over columns, MMD) thresholds of the accumulated input statistics, each at ``rate / 2``
    per window: draws of the Gaussian with the reference rows' covariance of [standardised normal
    scores, RFF features] (the law of ``e_t / sqrt(c_t)`` under no drift, whatever the history,
    averaged over reference draws; given the reference:
    :func:`tasksim.drift.given_reference.ewma_thresholds_given_reference`)."""
    root, j = ewma_root(scores, phi)
    rng = np.random.default_rng(seed + 11)
    top = np.empty(EWMA_DRAWS)
    mmd = np.empty(EWMA_DRAWS)
    for start in range(0, EWMA_DRAWS, 5000):
        g = rng.standard_normal((min(5000, EWMA_DRAWS - start), root.shape[1])) @ root.T
        top[start:start + len(g)] = np.abs(g[:, :j]).max(axis=1) if j else 0.0
        mmd[start:start + len(g)] = (g[:, j:] ** 2).sum(axis=1)
    q = 1 - rate / 2
    return float(np.quantile(top, q)) if j else float("inf"), float(np.quantile(mmd, q))


#: Monte-Carlo draws of the accumulated class-frequency statistic's null, and the windows simulated
#: (older windows weigh less than (1 - lam)^PRIOR_HISTORY, 0.3% of the newest).
PRIOR_DRAWS = 20000  # resolves the 0.0375% threshold of the halved shares (verdict.LABEL_NULL_DRAWS)
PRIOR_HISTORY = 16


def mc_pvalue(observed: float, draw: Any, max_draws: int, *, hits: int = 10, batch: int = 250) -> float:
    """Monte-Carlo p-value ``P(null >= observed)`` with Besag and Clifford's (1991) sequential
    stopping: null draws come in batches from ``draw(size)`` and stop once ``hits`` of them reach
    the observed value (p = hits / draws; a window far from significance costs a few dozen draws),
    else after ``max_draws`` (p = (exceedances + 1) / (max_draws + 1)). Both are valid p-values."""
    done = exceed = 0
    while done < max_draws:
        size = min(batch, max_draws - done)
        null = np.asarray(draw(size))
        over = np.flatnonzero(null >= observed - 1e-12)
        if exceed + len(over) >= hits:
            return float(hits / (done + int(over[hits - exceed - 1]) + 1))
        exceed += len(over)
        done += size
    return float((exceed + 1) / (max_draws + 1))


def _smoothed(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    return (counts + 0.5) / (counts.sum(axis=-1, keepdims=True) + 0.5 * counts.shape[-1])


#: Null draws of the two-scale class-frequency test (:func:`prior_statistic` with ``fast``): a
#: first batch, and ``PRIOR_DRAWS`` fresh ones when the first batch's joint p-value is at most
#: ``PRIOR_FIRST_CUT`` (any valid p-value of the last batch run is valid: a window reported from
#: the first batch has p above the cut, far above any level used here).
PRIOR_FIRST_DRAWS = 999
PRIOR_FIRST_CUT = 0.02


class AccumulatedPrior(NamedTuple):
    """The accumulated class-frequency test: ``statistic`` and ``p_value`` (the decision's; with two
    scales the joint min-p p-value), and each scale's statistic and own p-value (slow first)."""

    statistic: float
    p_value: float
    scales: tuple[tuple[float, float, float], ...]  # (lambda, statistic, p-value) per scale


def upper_ranks(values: np.ndarray) -> np.ndarray:
    """Per column, each entry's share of the column at or above it (``values``: draws x columns):
    the rank p-values of every draw among all of them."""
    ordered = np.sort(values, axis=0)
    out = np.empty_like(values, dtype=np.float64)
    for j in range(values.shape[1]):
        out[:, j] = len(values) - np.searchsorted(ordered[:, j], values[:, j] - 1e-12, side="left")
    return out / len(values)


def min_p_ranks(values: np.ndarray) -> tuple[np.ndarray, float]:
    """(every draw's rank p-value per statistic, the joint min-p p-value of draw 0) for ``values``
    (draws x statistics, the observed window as draw 0): the observed smaller per-statistic p-value
    ranked among the draws' smaller ones, the observed window counted as one draw."""
    ranks = upper_ranks(values)
    min_p = ranks.min(axis=1)
    return ranks, float(np.mean(min_p <= min_p[0] + 1e-12))


def _scale_weights(states: list[dict[str, Any]], steps: int) -> np.ndarray:
    """[scale, window] EWMA weights of the last ``steps`` windows, newest first; a scale younger
    than ``steps`` windows (restarted from an older state) weighs only its own windows."""
    out = np.zeros((len(states), steps))
    for i, st in enumerate(states):
        lam = float(st.get("lam", EWMA_LAMBDA))
        age = min(int(st.get("t", 1)), steps)
        out[i, :age] = lam * (1 - lam) ** np.arange(age)
    return out


def prior_statistic(state: dict[str, Any], reference_counts: np.ndarray, window_rows: int,
                    rng: np.random.Generator, benign: float = 0.0,
                    fast: dict[str, Any] | None = None) -> AccumulatedPrior:
    """The accumulated class-frequency difference ``sum_k e_k^2 / p_k / c_t`` (Pearson's form;
    ``p`` the reference's smoothed frequencies) and its Monte-Carlo p-value. Its null is simulated,
    not read from a chi-square: with tens of classes and 100-row windows the chi-square
    approximation gave 5x too many small p-values. Each draw redraws the reference and the last
    windows (``window_rows`` each) from the reference's frequencies, and (``benign`` > 0) a
    persistent offset of the windows' frequencies with ``benign`` times one row's multinomial
    covariance (:func:`ewma_scale`).

    ``fast``: a second EWMA of the same windows with a larger weight (``EWMA_LAMBDA_FAST``). Each
    simulated history then gives both statistics (the same reference, windows and offset: their
    correlation is kept), and the p-value is the min-p combination of the two: the observed
    smaller per-scale p-value ranked among the draws' smaller ones, the observed window counted
    as one draw (as the concept test's two statistics, ``checks._loss_test``). The slow scale
    finds a weak persistent shift, the fast one a ramp whose first windows the slow one dilutes
    with the quiet windows before its onset."""
    ref_counts = np.asarray(reference_counts, dtype=np.float64)
    n = int(ref_counts.sum())
    states = [state] if fast is None else [state, fast]
    lams = [float(st.get("lam", EWMA_LAMBDA)) for st in states]
    if n == 0 or np.count_nonzero(ref_counts) < 2:
        return AccumulatedPrior(0.0, 1.0, tuple((lam, 0.0, 1.0) for lam in lams))
    smoothed = _smoothed(ref_counts)
    observed = np.array([float((np.asarray(st["e"], dtype=np.float64) ** 2 / smoothed).sum()
                               / ewma_scale(st, n, benign)) for st in states])
    steps = min(max(int(st.get("t", 1)) for st in states), PRIOR_HISTORY)
    weights = _scale_weights(states, steps)  # [scale, window], newest first
    p = ref_counts / n
    m = max(int(window_rows), 1)
    c_star = (weights ** 2).sum(axis=1) / m + weights.sum(axis=1) ** 2 * (1 / n + benign)

    def draw(size: int) -> np.ndarray:  # [draw, scale]
        ref_star = rng.multinomial(n, p, size=size)
        win_star = rng.multinomial(m, p, size=(size, steps)) / m
        e_star = np.einsum("cs,dsk->dck", weights, win_star) - weights.sum(axis=1)[None, :, None] * (ref_star / n)[:, None]
        if benign > 0:  # the offset: Gaussian with covariance benign (diag(p) - p p^T)
            g = np.sqrt(p) * rng.standard_normal((size, len(p)))
            e_star += weights.sum(axis=1)[None, :, None] * (np.sqrt(benign) * (g - np.outer(g.sum(axis=1), p)))[:, None]
        return (e_star * e_star / _smoothed(ref_star)[:, None]).sum(axis=2) / c_star

    if fast is None:
        pval = mc_pvalue(float(observed[0]), lambda size: draw(size)[:, 0], PRIOR_DRAWS)
        return AccumulatedPrior(float(observed[0]), pval, ((lams[0], float(observed[0]), pval),))
    for size in (PRIOR_FIRST_DRAWS, PRIOR_DRAWS):
        values = np.concatenate([observed[None, :], draw(size)])
        ranks, joint = min_p_ranks(values)
        if joint > PRIOR_FIRST_CUT:
            break
    scales = tuple((lam, float(observed[i]), float(ranks[0, i])) for i, lam in enumerate(lams))
    return AccumulatedPrior(float(observed[0]), joint, scales)


#: Pseudo-rows of the reference's overall mean loss added to each class's mean in
#: :func:`loss_variance`: a class with a handful of reference rows cannot vouch for its own spread.
LOSS_VARIANCE_PRIOR_ROWS = 5


def loss_variance(class_losses: np.ndarray, overall_mean: float) -> float:
    """A variance for one class's row statistics in [0, 1] (the accumulated concept test's
    :func:`tasksim.drift.checks.implausibility` of the labels; until 2026-12-06 the loss
    ``1 - p(label)``, which the evidence below is about) that does not shrink
    when the reference's few rows of the class happen to be easy: the Bernoulli bound
    ``mu (1 - mu)`` (the largest variance of any law on [0, 1] with mean ``mu``, never below the
    plug-in variance), at the class mean and at that mean shrunk toward ``overall_mean`` by
    ``LOSS_VARIANCE_PRIOR_ROWS`` pseudo-rows, whichever is larger.

    Why not the plug-in variance: these losses are skewed (most rows near 0, a few near 1), so a
    class whose reference rows missed the hard ones has both a low mean and a low variance, and
    the accumulated loss excess ``(window - reference) / sd`` is inflated exactly when the
    reference is optimistic. On MiniLM text (R8) one reference in 25 had two 50-row classes at
    mean 0.11 / variance 0.03 where the other rows of the corpus gave 0.23 / 0.09: the plug-in
    null put its stationary excess at z 4.0 (the corpus's own variance: 3.4; the bound: 2.5) and it
    alarmed in 26 of 100 quiet windows. Over 75 references the stationary z's spread was 1.17
    with the plug-in, 0.78 with the bound (``docs/decisions.md``)."""
    losses = np.asarray(class_losses, dtype=np.float64)
    if not len(losses):
        return 0.25
    mu = float(np.clip(losses.mean(), 0.0, 1.0))
    a = LOSS_VARIANCE_PRIOR_ROWS
    shrunk = float(np.clip((losses.sum() + a * overall_mean) / (len(losses) + a), 0.0, 1.0))
    return max(mu * (1 - mu), shrunk * (1 - shrunk), float(losses.var()))


def concept_step(state: dict[str, Any] | None, excess: float, window_var: float, reference_var: float,
                 benign_var: float = 0.0) -> dict[str, Any]:
    """EWMA of the window's mean row statistic (the labels' implausibility) minus its
    class-stratified null mean; ``window_var``: that
    difference's variance from the window's rows, ``reference_var``: from the reference's null means,
    ``benign_var``: a benign persistent offset's (one row's loss variance times ``benign``, see
    :func:`ewma_scale`)."""
    lam = EWMA_LAMBDA
    if state is None:
        state = {"e": 0.0, "v": 0.0, "w": 0.0}
    return {"e": (1 - lam) * float(state["e"]) + lam * excess,
            "v": (1 - lam) ** 2 * float(state["v"]) + lam * lam * window_var,
            "w": (1 - lam) * float(state["w"]) + lam, "r": reference_var, "b": benign_var}


def concept_statistic(state: dict[str, Any]) -> tuple[float, float]:
    """(z, one-sided p-value) of the accumulated loss excess."""
    from scipy.special import ndtr

    var = float(state["v"]) + float(state["w"]) ** 2 * (float(state.get("r", 0.0)) + float(state.get("b", 0.0)))
    z = float(state["e"]) / np.sqrt(var) if var > 0 else 0.0
    return z, float(ndtr(-z))


def to_json(state: dict[str, Any]) -> dict[str, Any]:
    """The state as JSON-ready values (arrays as rounded lists)."""
    out: dict[str, Any] = {}
    for key, value in state.items():
        if isinstance(value, dict):
            out[key] = to_json(value)
        elif isinstance(value, np.ndarray):
            out[key] = [round(float(v), 8) for v in value]
        else:
            out[key] = value
    return out
