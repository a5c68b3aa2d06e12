"""How early could ANY detector find each gradual ramp of ``bench/drift_benchmark.py``? An oracle bound.

    python bench/drift_ramp_oracle.py                        # Landsat, MNIST, Fashion-MNIST, Letter
    python bench/drift_ramp_oracle.py --quick                # fewer windows (< 2 minutes here)
    python bench/drift_ramp_oracle.py --only landsat --streams 4000 --json out.json
    python bench/drift_ramp_oracle.py --only mnist --window 300     # how many rows would a ramp need?

Issue 13 asks for at most 1% false alarms per 100-row window and every shift found within 2
windows of its onset. The benchmark's gradual ramps have strength k/10 in their k-th shifted
window: delays 0, 1, 2 see strengths 0.1, 0.2, 0.3.

Why this is an upper bound. A detector with false-alarm rate ``alpha`` per window alarms
somewhere in 3 quiet windows with probability at most ``3 alpha`` (union bound). Its event
"alarm in one of the windows at delays 0..2" is then a test of level ``3 alpha`` on those three
windows, so by Neyman-Pearson its chance of finding the ramp by delay 2 is at most the power of
the likelihood-ratio test of level ``3 alpha``: the sum of the three windows' log-likelihood
ratios (strengths 0.1, 0.2, 0.3 against no shift), thresholded at its null's upper ``3 alpha``
quantile (randomised at ties: the label statistics are discrete). Likewise "by delay 1" (2
windows, level ``2 alpha``) and "at delay 0" (level ``alpha``). The oracle knows everything the
detector does not: the population (the pool the windows are drawn from) instead of a 1,000-row
reference, the onset, the ramp's strengths and the kind of shift.

Per-row log-likelihood ratios (rows of a window taken as independent: quiet windows draw 100 of
4,000-59,000 pool rows without replacement, a finite-population effect of at most 2.5% of the
variance, on MNIST; the statistic stays valid, its power a hair below the exact test's):

- label prior with labels (exact): ``log q_s(y) / p(y)``; the ramp multiplies the heavy classes'
  pool frequencies by ``1 + 4 s``;
- label prior without labels, BBSE (exact for a detector that sees only the reference model's
  predicted label): ``log sum_y P(y | yhat) q_s(y) / p(y)``, with tasksim's own reference model
  (``DriftReference.fit`` on the benchmark's 1,000 reference rows) and its confusion on the pool
  (the population's); also the same with the model's probabilities instead of its argmax ("soft");
- concept (approximate): a share ``s`` of the rows draws a flip, which swaps the label of a row of
  a swapped pair; ``log((1 - s) + s p(swap(y) | x) / p(y | x))`` with ``p(b | x, y in {a, b})`` from
  a classifier of each pair cross-fitted over the data (5 folds: a row is scored by a model that
  never saw it; logistic regression on pixels, gradient boosting on tabular columns);
- subpopulation (exact): a share ``share * s`` of the rows is redrawn from its class's upper half
  by mean value, so given ``y`` the density ratio is ``(1 - s') + s' (n_y / u_y) 1[x in the upper
  half]``;
- input columns moved by ``s delta`` (approximate: a Gaussian model): the projection of the
  window's rows, centred on their class's pool mean, on ``Sigma_w^-1 delta`` (pooled within-class
  pool covariance; the windows are labelled); also without the labels (``Sigma^-1 delta``);
- MNIST's rows from OpenCV digits (approximate): ``log((1 - r) + r p(x | OpenCV) / p(x | MNIST))``
  with ``r = round(50 s) / 100`` and the density ratio from a cross-fitted MNIST-vs-OpenCV logistic
  regression, rows taken as exchangeable (the benchmark replaces the window's first rows).

Where a ratio is approximate the statistic is still a fixed function of the window, and both its
null and its power are simulated on the benchmark's own windows: the level is right, and the power
is a lower estimate of the oracle's (a better model of ``p(y | x)`` or of the columns could only
raise it). Noise and blur are left out (tasksim finds them at once), and so is the text stream.

Windows are drawn by the benchmark's own ``Stream`` and ``scenarios()`` on a proxy of the data
whose single column holds the row's id (the mean value, for the subpopulation ramps), with the
split of ``ramp_delays`` (generator ``[seed, 7]``): null: ``3 x --null`` independent quiet windows
(a sum takes one from each third), power: ``--streams`` realisations of each ramp's first three
windows. ``--tie-check`` also runs tasksim's verdict on quiet windows of the tabular data moved by
0.001 sd in every column (integer columns with few values: see ``tie_check``).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one BLAS thread on the shared 2-core VM (see drift_benchmark)

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import drift_benchmark as db

STRENGTHS = (0.1, 0.2, 0.3)  # delays 0, 1, 2 of a 10-window ramp
ALPHAS = (0.01, 0.005)  # the goal, and what the default spends (its shares sum to half the budget)
TASKSIM_RECORDS = ("drift_benchmark_margin_landsat_2026-12-07.json", "drift_benchmark_margin_mnist_2026-12-07.json",
                   "drift_benchmark_margin_notext_2026-12-07.json")
DOCS_CPU = Path(__file__).resolve().parents[1] / "docs" / "cpu"


# -- the per-row log-likelihood ratios ---------------------------------------------------------------
def prior_ratio(freq: np.ndarray, heavy: dict[int, float], s: float) -> np.ndarray:
    """q_s(y) / p(y) per class: the ramp multiplies the heavy classes' pool frequencies by 1 + (w - 1) s."""
    w = np.ones(len(freq))
    for c, weight in heavy.items():
        w[c] = 1.0 + (weight - 1.0) * s
    return w / float(w @ freq)


def mixture_prior_llr(posterior: np.ndarray, ratio: np.ndarray) -> np.ndarray:
    """log q_s(o) / p(o) of what the detector observes, o: ``posterior`` rows are P(y | o) under no
    shift (one-hot: the label itself; P(y | yhat): BBSE; p(y | x): the inputs), so
    q_s(o) / p(o) = sum_y P(y | o) q_s(y) / p(y)."""
    return np.log(posterior @ ratio)


def concept_llr(odds: np.ndarray, s: float) -> np.ndarray:
    """log q_s(y | x) / p(y | x) when a share s of the rows of a swapped pair has its label swapped:
    ``odds`` = p(swap(y) | x) / p(y | x) (1 for a row outside every pair: LLR 0, its label never moves)."""
    return np.log((1.0 - s) + s * odds)


def subpopulation_llr(upper_ratio: np.ndarray, in_upper: np.ndarray, replaced: float) -> np.ndarray:
    """log of the density ratio given y when a share ``replaced`` of the rows is redrawn from its class's
    upper half: (1 - s') + s' (n_y / u_y) 1[x in the upper half]; ``upper_ratio`` = n_y / u_y per row."""
    return np.log((1.0 - replaced) + replaced * upper_ratio * in_upper)


def np_power(null: np.ndarray, alt: np.ndarray, level: float, decimals: int = 9) -> tuple[float, float]:
    """Power of the randomised Neyman-Pearson test of exactly ``level`` on the empirical ``null``:
    reject above the cut, and with probability gamma at it (discrete statistics tie). Statistics are
    rounded to ``decimals`` so that sums of the same per-row values in another order tie. Returns
    (power, the cut)."""
    null, alt = np.round(null, decimals), np.round(alt, decimals)
    values = np.sort(null)[::-1]
    k = int(np.floor(level * len(values)))
    cut = values[min(k, len(values) - 1)]
    above = float(np.mean(null > cut))
    at = float(np.mean(null == cut))
    gamma = (level - above) / at if at > 0 else 0.0
    gamma = min(max(gamma, 0.0), 1.0)
    return float(np.mean(alt > cut) + gamma * np.mean(alt == cut)), float(cut)


def gaussian_direction(x: np.ndarray, y: np.ndarray | None, delta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(v, per-row centre) of the Gaussian LLR of a mean shift ``delta``: v = Sigma^-1 delta with the
    pooled within-class covariance when ``y`` is given (centre: the row's class mean), else the
    total covariance (centre: the mean). The LLR of a row shifted by s delta is s v.(x - centre) - s^2 v.delta / 2."""
    if y is None:
        centre = np.broadcast_to(x.mean(axis=0), x.shape)
    else:
        means = {c: x[y == c].mean(axis=0) for c in np.unique(y)}
        centre = np.stack([means[c] for c in y])
    resid = x - centre
    cov = resid.T @ resid / max(len(x) - (1 if y is None else len(np.unique(y))), 1)
    cov += 1e-9 * np.trace(cov) / len(cov) * np.eye(len(cov))  # constant columns would make it singular
    return np.linalg.solve(cov, delta), centre


# -- the data's ramps ---------------------------------------------------------------------------------
@dataclass
class Ramp:
    """One ramp: ``score(values, y, s)`` -> one LLR sum per window at strength s, from the windows'
    proxy values (row ids, or mean values for the subpopulation ramps) and observed labels;
    ``draw(stream, s)`` -> one window of the ramp from ``stream`` (the benchmark's transform)."""
    name: str
    method: str  # what the oracle's ratio is, and whether it is exact
    score: Callable[[np.ndarray, np.ndarray, float], np.ndarray]
    draw: Callable[[Any, float], tuple[np.ndarray, np.ndarray, bool]] | None  # None: a quiet window, shifted
    stream: db.Stream
    values: np.ndarray  # row id -> the proxy's value (how a quiet window's ids are scored)
    shift: Callable[[float], float] | None = None  # input ramps: the statistic's move at strength s
    extra: dict[str, Any] = field(default_factory=dict)


def _proxy(data: db.Data, column: np.ndarray) -> db.Data:
    """The data with one column (row ids, or mean values): the benchmark's windows, cheaply. The other
    domain's rows (MNIST: OpenCV digits) get the ids after the data's own (``len(y) + j``)."""
    domain = None if data.domain is None else (len(data.y) + np.arange(len(data.domain)))[:, None].astype(np.float64)
    return replace(data, x=column.astype(np.float64)[:, None], domain=domain)


def _definition(make: Callable[..., Any], name: str) -> Any:
    """A variable of a benchmark transform's closure (its heavy classes, swapped pairs, share,
    columns, sd): the oracle reads the ramp's definition instead of repeating it."""
    return inspect.getclosurevars(make).nonlocals[name]


def _cross_fitted_pair_probability(data: db.Data, a: int, b: int, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """P(y = b | x, y in {a, b}) for every row of classes a and b, each from a model fitted on the
    other 4 folds (logistic regression on pixels, gradient boosting on tabular columns). Returns
    (rows, probability, out-of-fold log loss)."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    rows = np.flatnonzero((data.y == a) | (data.y == b))
    target = (data.y[rows] == b).astype(int)
    folds = np.random.default_rng([seed, 31, a, b]).permutation(len(rows)) % 5
    prob = np.empty(len(rows))
    for f in range(5):
        model = (LogisticRegression(C=1.0, max_iter=2000) if data.image
                 else HistGradientBoostingClassifier(random_state=0))
        model.fit(data.x[rows[folds != f]], target[folds != f])
        prob[folds == f] = model.predict_proba(data.x[rows[folds == f]])[:, 1]
    prob = np.clip(prob, 1e-9, 1 - 1e-9)  # a finite odds for an over-confident model (the statistic stays valid)
    loss = float(-np.mean(target * np.log(prob) + (1 - target) * np.log(1 - prob)))
    return rows, prob, loss


def _cross_fitted_domain_odds(data: db.Data, seed: int) -> tuple[np.ndarray, float]:
    """p(x | other domain) / p(x | this data) for every row of both (ids: the data's rows, then the
    other domain's), from a logistic regression on pixels cross-fitted over both (5 folds), its odds
    rescaled by the two sizes. Returns (ratio, out-of-fold log loss)."""
    from sklearn.linear_model import LogisticRegression

    assert data.domain is not None
    x = np.concatenate([data.x, data.domain])
    target = np.r_[np.zeros(len(data.x)), np.ones(len(data.domain))].astype(int)
    folds = np.random.default_rng([seed, 37]).permutation(len(x)) % 5
    prob = np.empty(len(x))
    for f in range(5):
        model = LogisticRegression(C=1.0, max_iter=2000).fit(x[folds != f], target[folds != f])
        prob[folds == f] = model.predict_proba(x[folds == f])[:, 1]
    prob = np.clip(prob, 1e-9, 1 - 1e-9)
    loss = float(-np.mean(target * np.log(prob) + (1 - target) * np.log(1 - prob)))
    return prob / (1 - prob) * (len(data.x) / len(data.domain)), loss


def _cross_fitted_posteriors(data: db.Data, seed: int) -> tuple[np.ndarray, float]:
    """p(y | x) of every row from a gradient-boosting classifier fitted on the other 4 of 5 folds
    (tabular columns only: on pixels it would take minutes here). Returns (p, out-of-fold log loss)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    k = int(data.y.max()) + 1
    folds = np.random.default_rng([seed, 43]).permutation(len(data.y)) % 5
    out = np.zeros((len(data.y), k))
    for f in range(5):
        model = HistGradientBoostingClassifier(random_state=0).fit(data.x[folds != f], data.y[folds != f])
        out[np.flatnonzero(folds == f)[:, None], model.classes_[None, :]] = model.predict_proba(data.x[folds == f])
    loss = float(-np.mean(np.log(np.clip(out[np.arange(len(data.y)), data.y], 1e-12, 1))))
    return out, loss


def _reference_model_posteriors(data: db.Data, ref_idx: np.ndarray, pool: np.ndarray, seed: int) -> np.ndarray:
    """p(y | x) of every pool row under tasksim's reference model (fitted as the benchmark's verdict
    fits it, on the 1,000 reference rows), each row from one of its 5 cross-fitting models drawn once."""
    import pandas as pd

    from tasksim.drift import DriftReference

    def frame(x: np.ndarray) -> pd.DataFrame:
        return pd.DataFrame(x, columns=[f"c{j:02d}" for j in range(x.shape[1])])

    x_ref = data.x[ref_idx]
    ref = DriftReference.fit(None if data.vector else frame(x_ref), x_ref if data.vector else None,
                             [str(v) for v in data.y[ref_idx]], db.TASKSIM_CONFIG)
    order = np.array([int(c) for c in ref.classes])  # the model's class order (strings sorted) -> codes
    out = np.zeros((len(data.y), int(data.y.max()) + 1))
    rng = np.random.default_rng([seed, 41])
    for start in range(0, len(pool), 4000):
        rows = pool[start:start + 4000]
        x = data.x[rows]
        _, _, clf_x = ref.project(None if data.vector else frame(x), x if data.vector else None)
        out[rows[:, None], order[None, :]] = ref.predict_proba(clf_x, rng)
    return out


def build_ramps(data: db.Data, seed: int, notes: dict[str, Any], input_classifier: bool = False) -> list[Ramp]:
    """The oracle of every ramp of ``data`` this script covers (label prior with and without labels,
    concept, subpopulation, column shifts, MNIST's OpenCV rows), on ``ramp_delays``' split of
    reference and pool. ``input_classifier``: also the label prior without labels through a
    cross-fitted classifier of the inputs (tabular data), a stronger p(y | x) than the reference model's."""
    row_ids = np.arange(len(data.y))
    ids = _proxy(data, row_ids)
    stream = db.Stream(ids, np.random.default_rng([seed, 7]))
    pool, k = stream.pool, int(data.y.max()) + 1
    freq = np.bincount(data.y[pool], minlength=k) / len(pool)
    made = {name: make for name, (_, make) in db.scenarios(ids, stream).items()}
    heavy = _definition(made["label prior (labels)"], "heavy")
    log_ratio = {s: np.log(prior_ratio(freq, heavy, s)) for s in STRENGTHS}
    ramps = [Ramp("label prior (labels)", "exact: log q_s(y) / p(y)",
                  lambda v, y, s: log_ratio[s][y].sum(axis=1), made["label prior (labels)"], stream, row_ids)]

    post = _reference_model_posteriors(data, stream.ref_idx, pool, seed)
    yhat = post.argmax(axis=1)
    joint = np.zeros((k, k))  # (y, yhat) counts on the pool: the population's confusion
    np.add.at(joint, (data.y[pool], yhat[pool]), 1.0)
    y_given_yhat = (joint / np.maximum(joint.sum(axis=0, keepdims=True), 1.0)).T  # row yhat: P(y | yhat)
    notes["reference_model_pool_accuracy"] = float(np.mean(yhat[pool] == data.y[pool]))
    bbse = {s: mixture_prior_llr(y_given_yhat, prior_ratio(freq, heavy, s)) for s in STRENGTHS}  # per yhat
    ramps.append(Ramp("label prior (no labels: BBSE)", "exact given the reference model's predicted labels "
                      "(tasksim's model; its confusion on the pool)",
                      lambda v, y, s: bbse[s][yhat[v.astype(np.int64)]].sum(axis=1),
                      made["label prior (no labels: BBSE)"], stream, row_ids))
    ramps.append(Ramp("label prior (no labels: BBSE), soft", "approximate: log sum_y p(y|x) q_s(y) / p(y), the "
                      "reference model's p(y|x)",
                      lambda v, y, s: mixture_prior_llr(post[v.astype(np.int64)], prior_ratio(freq, heavy, s)).sum(axis=1),
                      made["label prior (no labels: BBSE)"], stream, row_ids))
    if input_classifier and not data.image:
        strong, loss = _cross_fitted_posteriors(data, seed)
        notes["input_classifier_log_loss"] = loss
        notes["input_classifier_pool_accuracy"] = float(np.mean(strong[pool].argmax(axis=1) == data.y[pool]))
        ramps.append(Ramp("label prior (no labels: BBSE), inputs", "approximate: log sum_y p(y|x) q_s(y) / p(y), "
                          "p(y|x) from gradient boosting cross-fitted over the data",
                          lambda v, y, s: mixture_prior_llr(strong[v.astype(np.int64)],
                                                            prior_ratio(freq, heavy, s)).sum(axis=1),
                          made["label prior (no labels: BBSE)"], stream, row_ids))

    pairs = _definition(made["concept: labels swapped"], "pairs")
    odds_if = np.ones((len(data.y), k))  # odds_if[row, observed y] = p(swap(y) | x) / p(y | x); 1 outside the pairs
    losses = {}
    for a, b in pairs:
        rows, p_b, loss = _cross_fitted_pair_probability(data, int(a), int(b), seed)
        odds_if[rows, a] = p_b / (1 - p_b)
        odds_if[rows, b] = (1 - p_b) / p_b
        losses[f"{a}<->{b}"] = loss
    notes["concept_pair_log_loss"] = losses

    def concept_score(v: np.ndarray, y: np.ndarray, s: float) -> np.ndarray:
        # a row outside every pair has odds 1: log((1 - s) + s) = 0, its label never moves
        return concept_llr(odds_if[v.astype(np.int64), y], s).sum(axis=1)
    ramps.append(Ramp("concept: labels swapped", "approximate: p(y|x) from a cross-fitted classifier of each pair",
                      concept_score, made["concept: labels swapped"], stream, row_ids))
    # the same ratio through tasksim's reference model (its 1,000 reference rows): what a detector
    # that knows the swapped pairs but reads p(y | x) only from that model could reach
    ref_odds = np.ones((len(data.y), k))
    clipped = np.clip(post, 1e-9, None)
    for a, b in pairs:
        rows = pool[np.isin(data.y[pool], (a, b))]
        ref_odds[rows, a] = clipped[rows, b] / clipped[rows, a]
        ref_odds[rows, b] = clipped[rows, a] / clipped[rows, b]
    ramps.append(Ramp("concept: labels swapped, reference model", "approximate: p(y|x) from tasksim's reference "
                      "model (1,000 rows)",
                      lambda v, y, s: concept_llr(ref_odds[v.astype(np.int64), y], s).sum(axis=1),
                      made["concept: labels swapped"], stream, row_ids))

    brightness = data.x.mean(axis=1)  # the expression subpopulation() ranks rows by
    bright = _proxy(data, brightness)
    bright_stream = db.Stream(bright, np.random.default_rng([seed, 7]))
    for name, (_, make) in db.scenarios(bright, bright_stream).items():
        if not name.startswith("subpopulation"):
            continue
        share = float(_definition(make, "share"))
        upper = _definition(make, "upper")  # class -> pool rows of its upper half, as the ramp draws them
        cut = np.full(k, np.inf)
        ratio = np.ones(k)
        for c, rows in bright_stream.by_class.items():
            cut[c] = brightness[upper[c]].min() if len(upper[c]) else np.inf
            ratio[c] = len(rows) / max(len(upper[c]), 1)
            if not np.array_equal(np.sort(rows[brightness[rows] >= cut[c]]), np.sort(upper[c])):
                raise RuntimeError(f"{name}: class {c}'s upper half is not the rows at or above {cut[c]}")

        def sub_score(v: np.ndarray, y: np.ndarray, s: float, share: float = share, cut=cut, ratio=ratio) -> np.ndarray:
            return subpopulation_llr(ratio[y], v >= cut[y], share * s).sum(axis=1)
        ramps.append(Ramp(name, f"exact: density ratio given y ({share:g} x strength of the rows replaced)",
                          sub_score, make, bright_stream, brightness))

    if data.name == "mnist" and data.domain is not None:
        name = "input: half the rows from OpenCV digits"
        ratio_other, loss = _cross_fitted_domain_odds(data, seed)
        notes["domain_log_loss"] = loss
        all_ids = np.arange(len(data.y) + len(data.domain))

        def domain_score(v: np.ndarray, y: np.ndarray, s: float) -> np.ndarray:
            # the ramp replaces round(0.5 s 100) rows by the same digit from OpenCV; taken here as each
            # row replaced independently with that probability (the benchmark replaces the window's
            # first rows: a detector told the positions could do better)
            share = round(0.5 * s * db.WINDOW) / db.WINDOW
            return np.log((1 - share) + share * ratio_other[v.astype(np.int64)]).sum(axis=1)
        ramps.append(Ramp(name, "approximate: a cross-fitted MNIST-vs-OpenCV classifier's density ratio, rows "
                          "taken as exchangeable", domain_score, made[name], stream, all_ids))

    scale = data.x[stream.ref_idx].std(axis=0) + 1e-12  # Stream.scale, on the real columns
    x_pool, y_pool = data.x[pool], data.y[pool]
    for name, make in made.items():
        if not name.startswith("input: ") or data.image:
            continue  # images: noise and blur not covered (the OpenCV rows: above)
        nonlocal_vars = inspect.getclosurevars(make).nonlocals
        cols = nonlocal_vars.get("columns", np.arange(data.x.shape[1]))
        delta = np.zeros(data.x.shape[1])
        delta[cols] = float(nonlocal_vars["sd"]) * scale[cols]
        for labelled in (True, False):
            v, centre = gaussian_direction(x_pool, y_pool if labelled else None, delta)
            proj = np.zeros(len(data.y))
            proj[pool] = (x_pool - centre) @ v
            moved = float(v @ delta)  # each row's projection moves by s v.delta at strength s

            def input_score(vals: np.ndarray, y: np.ndarray, s: float, proj=proj) -> np.ndarray:
                return s * proj[vals.astype(np.int64)].sum(axis=1)
            ramps.append(Ramp(name + ("" if labelled else ", no labels"), "approximate: Gaussian LLR, " + (
                "pooled within-class covariance (labels)" if labelled else "total covariance (no labels)"),
                input_score, None, stream, row_ids, shift=lambda s, m=moved: s * s * m * db.WINDOW,
                extra={"mahalanobis_delta": float(np.sqrt(moved))}))
    return ramps


# -- null and power -----------------------------------------------------------------------------------
def quiet_windows(stream: db.Stream, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``count`` quiet windows as the benchmark draws them (row ids, labels)."""
    stream.rng = rng
    ids, ys = np.empty((count, db.WINDOW), dtype=np.int64), np.empty((count, db.WINDOW), dtype=np.int64)
    for i in range(count):
        x, y = stream.window()
        ids[i], ys[i] = x[:, 0].astype(np.int64), y
    return ids, ys


def ramp_windows(ramp: Ramp, realisations: int, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """The first three windows of ``realisations`` ramps (strengths 0.1, 0.2, 0.3), one entry per delay:
    (proxy values, observed labels), each windows x rows."""
    ramp.stream.rng = rng
    out = []
    for s in STRENGTHS:
        values = np.empty((realisations, db.WINDOW))
        ys = np.empty((realisations, db.WINDOW), dtype=np.int64)
        for i in range(realisations):
            if ramp.draw is None:  # an input ramp: its quiet window (the shift is added to the statistic)
                x, y = ramp.stream.window()
            else:
                x, y, _ = ramp.draw(ramp.stream, s)
            values[i], ys[i] = x[:, 0], y
        out.append((values, ys))
    return out


def oracle_powers(ramp: Ramp, null_ids: np.ndarray, null_y: np.ndarray, realisations: int,
                  rng: np.random.Generator) -> dict[str, Any]:
    """Oracle power at delay 0, by delay 1 and by delay 2, for each alpha (levels alpha, 2 alpha, 3 alpha):
    the null sums pair the quiet windows in thirds (position d of a sum: the d-th third)."""
    n = len(null_ids) // 3
    null = [ramp.score(ramp.values[null_ids[d * n:(d + 1) * n]], null_y[d * n:(d + 1) * n], s)
            for d, s in enumerate(STRENGTHS)]
    alt = []
    for s, (values, y) in zip(STRENGTHS, ramp_windows(ramp, realisations, rng), strict=True):
        alt.append(ramp.score(values, y, s) + (ramp.shift(s) if ramp.shift is not None else 0.0))
    out: dict[str, Any] = {"method": ramp.method, **ramp.extra, "power": {}, "power_se": {}, "cut": {}}
    out["family"], family = family_rate(ramp.name)
    out["family_rate"] = family
    for alpha, key in [(a, f"{a:g}") for a in ALPHAS] + [(family, "family")]:
        out["power"][key], out["cut"][key] = [], []
        for d in range(3):
            power, cut = np_power(sum(null[: d + 1]), sum(alt[: d + 1]), (d + 1) * alpha)
            out["power"][key].append(power)
            out["power_se"].setdefault(key, []).append(float(np.sqrt(power * (1 - power) / realisations)))
            out["cut"][key].append(cut)
    return out


def family_rate(ramp_name: str) -> tuple[str, float]:
    """(families, per-window rate) the default configuration spends on the tests meant for this kind of
    ramp: the label tests (per window and accumulated) for a prior shift, the concept test for swapped
    labels, the input tests (per window and accumulated) for everything else; shares of
    ``DriftConfig().false_alarm_rate`` from ``tasksim.drift.verdict.ALPHA_SHARES``."""
    from tasksim.config import DriftConfig
    from tasksim.drift.verdict import ALPHA_SHARES

    families = (("label_prior", "label_cusum") if ramp_name.startswith("label prior") else
                ("concept",) if ramp_name.startswith("concept") else ("input", "cusum"))
    return " + ".join(families), sum(ALPHA_SHARES[f] for f in families) * DriftConfig().false_alarm_rate


def tie_check(data: db.Data, *, sds: tuple[float, ...] = (0.0, 0.001), windows: int = 20,
              seed: int = 0) -> dict[str, Any]:
    """tasksim's verdict (defaults) on ``windows`` quiet windows with every column moved by ``sd``
    reference sds: on integer-valued columns with few values (Letter: 0-15) any non-integer move
    makes the window's values tie with no reference value, which a KS test sees at once whatever
    the move's size. Returns, per sd, the windows flagged and the tests that fired."""
    import torch

    torch.set_num_threads(1)
    stream = db.Stream(data, np.random.default_rng([seed, 7]))
    methods = db.Methods(data, stream, db.TASKSIM_CONFIG)
    out: dict[str, Any] = {"dataset": data.name, "windows": windows, "distinct_values_per_column":
                           int(np.median([len(np.unique(c)) for c in data.x.T]))}
    for sd in sds:
        stream.rng = np.random.default_rng([seed, 99])
        flagged, fired = 0, {}
        for _ in range(windows):
            x, y = stream.window()
            verdict, _ = methods.tasksim(x + sd * stream.scale, y, True, None)  # a fresh state: one window alone
            flagged += verdict.drifted
            for t in verdict.tests:
                fired[t.name] = fired.get(t.name, 0) + int(t.fired)
        out[f"{sd:g}"] = {"flagged": flagged, "fired": {k: v for k, v in fired.items() if v}}
    return out


def tasksim_within_two(paths: list[Path]) -> dict[str, dict[str, list[int | None]]]:
    out: dict[str, dict[str, list[int | None]]] = {}
    for p in paths:
        if p.exists():
            for name, ramps in json.loads(p.read_text())["ramp_delays"].items():
                out.setdefault(name, {}).update(ramps)
    return out


def run(data: db.Data, *, null_count: int, realisations: int, seed: int,
        input_classifier: bool = False) -> dict[str, Any]:
    t0 = time.process_time()
    notes: dict[str, Any] = {}
    ramps = build_ramps(data, seed, notes, input_classifier)
    setup = time.process_time() - t0
    null_ids, null_y = quiet_windows(ramps[0].stream, 3 * null_count, np.random.default_rng([seed, 11]))
    out = {"dataset": data.name, "null_sums": null_count, "realisations": realisations, "notes": notes,
           "setup_cpu_seconds": setup, "ramps": {}}
    for i, ramp in enumerate(ramps):
        out["ramps"][ramp.name] = oracle_powers(ramp, null_ids, null_y, realisations,
                                                np.random.default_rng([seed, 13, i]))
    out["cpu_seconds"] = time.process_time() - t0
    return out


def table(results: list[dict[str, Any]], tasksim: dict[str, dict[str, list[int | None]]]) -> str:
    """The Markdown table, and per alpha the oracle's expected count within 2 windows over tasksim's
    streams of the same ramps (the main variant of each: labels for the column ramps, argmax BBSE)."""
    expected = {**{f"{a:g}": 0.0 for a in ALPHAS}, "family": 0.0}
    found = streams = 0
    header = ("| data | ramp | oracle | 1%: delay 0 / by 1 / by 2 | 0.5%: delay 0 / by 1 / by 2 | "
              "by 2 at the family's rate | tasksim within 2 (100-row windows) |")
    lines = [header, "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        for name, res in r["ramps"].items():
            base = name.split(", ")[0]  # a variant's tasksim ramp ("..., soft", "..., no labels")
            delays = tasksim.get(r["dataset"], {}).get(base)
            within = f"{sum(d is not None and d <= 2 for d in delays)}/{len(delays)}" if delays else "n/a"
            exact = "exact" if res["method"].startswith("exact") else "approx."
            cells = [" / ".join(f"{p:.2f}" for p in res["power"][f"{a:g}"]) for a in ALPHAS]
            fam = f"{res['power']['family'][2]:.2f} ({res['family_rate']:.3%})"
            lines.append(f"| {r['dataset']} | {name} | {exact} | {cells[0]} | {cells[1]} | {fam} | {within} |")
            if delays and base == name:
                streams += len(delays)
                found += sum(d is not None and d <= 2 for d in delays)
                for key in expected:
                    expected[key] += len(delays) * res["power"][key][2]
    lines.append("")
    lines.append(f"Over tasksim's {streams} streams of these ramps: tasksim within 2 windows {found}; the oracle's "
                 "expected count " + ", ".join(f"{v:.1f} at {'alpha ' + k if k != 'family' else 'the family rates'}"
                                               for k, v in expected.items()) + ".")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["landsat", "mnist", "fashion-mnist", "letter"], default=None)
    ap.add_argument("--streams", type=int, default=None, help="ramp realisations per ramp (default 2000; quick 400)")
    ap.add_argument("--null", type=int, default=None, help="null sums of 3 quiet windows (default 20000; quick 4000)")
    ap.add_argument("--quick", action="store_true", help="fewer windows (< 2 minutes on the 2-core VM)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--tasksim", type=Path, nargs="*", default=[DOCS_CPU / n for n in TASKSIM_RECORDS],
                    help="drift_benchmark --ramp-repeats records to read tasksim's delays from")
    ap.add_argument("--window", type=int, default=db.WINDOW,
                    help="rows per window (the benchmark's 100; more: how many rows would a ramp need?)")
    ap.add_argument("--tie-check", action="store_true",
                    help="also tasksim's verdict on quiet Landsat / Letter windows moved by 0.001 sd in every column")
    ap.add_argument("--input-classifier", action=argparse.BooleanOptionalAction, default=None,
                    help="also the label prior without labels through a cross-fitted classifier of the tabular "
                         "inputs (~40 s CPU; default: on, off with --quick)")
    args = ap.parse_args(argv)
    input_classifier = args.input_classifier if args.input_classifier is not None else not args.quick
    db.WINDOW = args.window  # Stream.window and the ramps read the module's window size when they draw
    realisations = args.streams or (400 if args.quick else 2000)
    null_count = args.null or (4000 if args.quick else 20000)
    names = [args.only] if args.only else ["landsat", "mnist", "fashion-mnist", "letter"]
    t0, load0 = time.perf_counter(), os.getloadavg()
    results, ties = [], []
    for name in names:
        try:
            data = db.PIXEL_AND_TABULAR_LOADERS[name]()
        except db.Unavailable as exc:
            print(f"skipped: {exc}", file=sys.stderr)
            continue
        results.append(run(data, null_count=null_count, realisations=realisations, seed=args.seed,
                           input_classifier=input_classifier))
        print(f"{name}: {results[-1]['cpu_seconds']:.0f} s CPU", file=sys.stderr)
        if args.tie_check and not data.image:
            ties.append(tie_check(data, seed=args.seed))
    load1 = os.getloadavg()
    tasksim = tasksim_within_two(args.tasksim)
    print(f"## Oracle power on the gradual ramps ({platform.machine()}, {os.cpu_count()} CPUs, "
          f"{time.perf_counter() - t0:.0f} s, load {load0[0]:.1f} -> {load1[0]:.1f}; {null_count} null sums, "
          f"{realisations} ramps each, {db.WINDOW}-row windows)\n")
    print(table(results, tasksim))
    for t in ties:
        print(f"\n{t['dataset']} ({t['distinct_values_per_column']} distinct values per column, median): tasksim "
              f"flags " + "; ".join(f"{t[k]['flagged']} of {t['windows']} quiet windows moved by {k} sd "
                                     f"({', '.join(f'{n} {c}' for n, c in t[k]['fired'].items()) or 'no test'})"
                                     for k in t if k not in ("dataset", "windows", "distinct_values_per_column")))
    if args.json:
        args.json.write_text(json.dumps({"results": results, "tie_check": ties, "alphas": ALPHAS, "strengths": STRENGTHS,
                                         "seed": args.seed, "window": db.WINDOW, "load_start": load0, "load_end": load1,
                                         "wall_seconds": time.perf_counter() - t0,
                                         "command": " ".join(sys.argv)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
