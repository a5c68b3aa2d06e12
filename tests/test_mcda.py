"""tasksim.mcda: normalisations, weighted sum, TOPSIS, Pareto front, bootstrap (known answers + properties)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.stats import rankdata

from tasksim.config import RankingConfig, SourceConfig
from tasksim.errors import MetricInputError
from tasksim.mcda import bootstrap_top1, normalize, pareto_front, topsis, weighted_sum
from tasksim.rank import MEASURE_DIRECTIONS, rank_sources

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ------------------------------------------------------------------------------------------------
# strategies
# ------------------------------------------------------------------------------------------------

names = st.integers(2, 7).map(lambda n: [f"s{i}" for i in range(n)])
# integer-valued criteria keep affine transforms exact enough that no tie is created or broken
int_values = st.integers(-10_000, 10_000).map(float)


@st.composite
def criterion(draw: st.DrawFn) -> dict[str, float]:
    alts = draw(names)
    return {a: draw(int_values) for a in alts}


@st.composite
def decision_matrix(draw: st.DrawFn) -> tuple[dict[str, dict[str, float]], dict[str, float], dict[str, int]]:
    alts = draw(names)
    crits = [f"c{j}" for j in range(draw(st.integers(1, 4)))]
    value = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)
    matrix = {a: {c: draw(value) for c in crits} for a in alts}
    weights = {c: draw(st.floats(0.05, 10.0)) for c in crits}
    directions = {c: draw(st.sampled_from([1, -1])) for c in crits}
    return matrix, weights, directions


# ------------------------------------------------------------------------------------------------
# normalize
# ------------------------------------------------------------------------------------------------

def test_normalize_known_values() -> None:
    v = {"a": 1.0, "b": 2.0, "c": 2.0, "d": 10.0}
    assert normalize(v, 1, "rank") == pytest.approx({"a": 0.0, "b": 0.5, "c": 0.5, "d": 1.0})
    assert normalize(v, -1, "rank") == pytest.approx({"a": 1.0, "b": 0.5, "c": 0.5, "d": 0.0})
    assert normalize(v, 1, "minmax") == pytest.approx({"a": 0.0, "b": 1 / 9, "c": 1 / 9, "d": 1.0})
    # robust z: median 2, MAD = median(1, 0, 0, 8) = 0.5
    z = {"a": -1 / (1.4826 * 0.5), "b": 0.0, "c": 0.0, "d": 8 / (1.4826 * 0.5)}
    expected = {k: 1 / (1 + math.exp(-x)) for k, x in z.items()}
    assert normalize(v, 1, "robust_z") == pytest.approx(expected)
    assert normalize(v, -1, "robust_z") == pytest.approx({k: 1 - x for k, x in expected.items()})
    # MAD = 0 but not constant: mean-absolute-deviation fallback (scale 1.253314 * 0.25)
    u = normalize({"a": 0.0, "b": 0.0, "c": 0.0, "d": 1.0}, 1, "robust_z")
    assert u["a"] == 0.5 and u["d"] == pytest.approx(1 / (1 + math.exp(-1 / (1.253314 * 0.25))))


@pytest.mark.parametrize("method", ["rank", "robust_z", "minmax"])
def test_normalize_constant_single_and_empty(method: str) -> None:
    assert normalize({"a": 3.0, "b": 3.0, "c": 3.0}, 1, method) == {"a": 0.5, "b": 0.5, "c": 0.5}  # type: ignore[arg-type]
    assert normalize({"a": -7.0}, -1, method) == {"a": 0.5}  # type: ignore[arg-type]
    assert normalize({}, 1, method) == {}  # type: ignore[arg-type]


def test_normalize_validation() -> None:
    with pytest.raises(MetricInputError):
        normalize({"a": 1.0}, 0, "rank")
    with pytest.raises(MetricInputError):
        normalize({"a": 1.0}, True, "rank")  # type: ignore[arg-type]
    with pytest.raises(MetricInputError):
        normalize({"a": 1.0, "b": float("nan")}, 1, "rank")
    with pytest.raises(MetricInputError):
        normalize({"a": 1.0}, 1, "zscore")  # type: ignore[arg-type]


@SETTINGS
@given(values=criterion(), a=st.floats(0.01, 100.0), b=st.floats(-1000.0, 1000.0),
       direction=st.sampled_from([1, -1]), method=st.sampled_from(["rank", "robust_z", "minmax"]))
def test_normalize_invariant_to_positive_affine_transforms(values: dict[str, float], a: float, b: float,
                                                          direction: int, method: str) -> None:
    base = normalize(values, direction, method)  # type: ignore[arg-type]
    moved = normalize({k: a * v + b for k, v in values.items()}, direction, method)  # type: ignore[arg-type]
    assert moved == pytest.approx(base, abs=1e-9)
    assert all(0.0 <= u <= 1.0 for u in base.values())
    # direction -1 is the normalisation of the negated criterion
    assert normalize(values, -direction, method) == pytest.approx(  # type: ignore[arg-type]
        normalize({k: -v for k, v in values.items()}, direction, method), abs=1e-12)  # type: ignore[arg-type]


@SETTINGS
@given(values=criterion())
def test_rank_normalisation_matches_scipy_rankdata(values: dict[str, float]) -> None:
    r = rankdata(list(values.values()), method="average")
    n = len(values)
    expected = dict(zip(values, (r - 1) / (n - 1))) if len(set(values.values())) > 1 else dict.fromkeys(values, 0.5)
    assert normalize(values, 1, "rank") == pytest.approx(expected)


# ------------------------------------------------------------------------------------------------
# weighted_sum
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Profile:  # the attributes tasksim.rank reads from a SourceProfile
    source: str
    status: str
    measures: dict[str, float] = field(default_factory=dict)
    view: object = None
    bootstrap: tuple = ()


def test_weighted_sum_minmax_reproduces_rank_py_composite() -> None:
    measures = {"a": {"logme": 1.0, "mmd2": 0.01, "knn_accuracy": 0.7},
                "b": {"logme": 0.2, "mmd2": 0.3, "knn_accuracy": 0.9},
                "c": {"logme": 0.5, "mmd2": 0.1, "knn_accuracy": 0.8}}
    costs = {"a": 1.0, "b": 2.0, "c": 5.0}
    sources = [SourceConfig(name=n, path=f"/d/{n}.parquet", feature_columns=("x",), cost=costs[n]) for n in measures]
    config = RankingConfig(weights={"logme": 2.0, "mmd2": 1.0, "knn_accuracy": 1.0}, normalization="minmax")
    ranking = rank_sources([_Profile(n, "ok", m) for n, m in measures.items()], sources, config)
    assert set(ranking.weights) >= {"logme", "mmd2", "knn_accuracy", "cost"}
    matrix = {n: {**m, "cost": costs[n]} for n, m in measures.items()}
    got = weighted_sum(matrix, ranking.weights, MEASURE_DIRECTIONS, method="minmax")
    assert got == pytest.approx({e.source: e.score for e in ranking.entries})


def test_weighted_sum_known_answer_and_validation() -> None:
    matrix = {"a": {"acc": 0.9, "cost": 10.0, "extra": 1.0}, "b": {"acc": 0.8, "cost": 1.0},
              "c": {"acc": 0.5, "cost": 5.0}}
    w, d = {"acc": 3.0, "cost": 1.0, "unused": 0.0}, {"acc": 1, "cost": -1}
    # rank: acc -> a 1, b .5, c 0; cost -> a 0, b 1, c .5
    assert weighted_sum(matrix, w, d, method="rank") == pytest.approx({"a": 0.75, "b": 0.625, "c": 0.125})
    with pytest.raises(MetricInputError, match="no direction"):
        weighted_sum(matrix, {"acc": 1.0, "speed": 1.0}, d)
    with pytest.raises(MetricInputError, match="missing"):
        weighted_sum(matrix, {"extra": 1.0}, {"extra": 1})
    with pytest.raises(MetricInputError):
        weighted_sum(matrix, {"acc": -1.0}, d)
    with pytest.raises(MetricInputError):
        weighted_sum(matrix, {"acc": 0.0}, d)
    with pytest.raises(MetricInputError):
        weighted_sum({}, w, d)


def dominated_matrix(draw: st.DrawFn) -> tuple[dict[str, dict[str, float]], dict[str, float], dict[str, int], str]:
    """A decision matrix plus a new alternative strictly better than all the others on every criterion."""
    matrix, weights, directions = draw(decision_matrix())
    best = {}
    for c, dirn in directions.items():
        col = [m[c] for m in matrix.values()]
        gap = draw(st.floats(1.0, 10.0))
        best[c] = max(col) + gap if dirn > 0 else min(col) - gap
    matrix["winner"] = best
    return matrix, weights, directions, "winner"


@SETTINGS
@given(data=st.data(), method=st.sampled_from(["rank", "robust_z", "minmax"]))
def test_dominating_alternative_wins_weighted_sum(data: st.DataObject, method: str) -> None:
    matrix, weights, directions, winner = dominated_matrix(data.draw)
    scores = weighted_sum(matrix, weights, directions, method=method)  # type: ignore[arg-type]
    assert all(0.0 <= s <= 1.0 for s in scores.values())
    assert scores[winner] == max(scores.values())
    if method != "robust_z":  # the logistic can saturate at 1.0 for two far-out alternatives: ties allowed
        assert all(scores[winner] > s for a, s in scores.items() if a != winner)


# ------------------------------------------------------------------------------------------------
# TOPSIS
# ------------------------------------------------------------------------------------------------

def test_topsis_hand_computed_example() -> None:
    """c1 benefit (3, 4, 0), c2 cost (0, 3, 4), equal weights; both columns have norm 5.

    v = 0.5 * x / 5: A (0.3, 0), B (0.4, 0.3), C (0, 0.4); ideal (0.4, 0), anti-ideal (0, 0.4).
    A: S+ = 0.1, S- = 0.5 -> 5/6.  B: S+ = 0.3, S- = sqrt(0.17).  C: S+ = sqrt(0.32), S- = 0 -> 0.
    """
    matrix = {"A": {"c1": 3.0, "c2": 0.0}, "B": {"c1": 4.0, "c2": 3.0}, "C": {"c1": 0.0, "c2": 4.0}}
    got = topsis(matrix, {"c1": 1.0, "c2": 1.0}, {"c1": 1, "c2": -1})
    assert got == pytest.approx({"A": 5 / 6, "B": math.sqrt(0.17) / (0.3 + math.sqrt(0.17)), "C": 0.0})


def topsis_reference(x: np.ndarray, w: np.ndarray, benefit: np.ndarray) -> np.ndarray:
    """Independent textbook TOPSIS with explicit loops."""
    n, m = x.shape
    w = w / w.sum()
    v = np.zeros_like(x)
    for j in range(m):
        norm = math.sqrt(sum(x[i, j] ** 2 for i in range(n)))
        for i in range(n):
            v[i, j] = w[j] * x[i, j] / norm if norm else 0.0
    ideal = [max(v[:, j]) if benefit[j] else min(v[:, j]) for j in range(m)]
    anti = [min(v[:, j]) if benefit[j] else max(v[:, j]) for j in range(m)]
    out = []
    for i in range(n):
        sp = math.dist(v[i], ideal)
        sm = math.dist(v[i], anti)
        out.append(sm / (sp + sm) if sp + sm else 0.5)
    return np.array(out)


def test_topsis_textbook_aircraft_example_against_reference() -> None:
    """Hwang & Yoon's (1981) fighter-aircraft selection: max speed, ferry range, max payload, purchase
    cost (cost criterion), reliability, manoeuvrability (qualitative scores on a 1-9 scale)."""
    x = np.array([[2.0, 1500, 20000, 5.5, 5, 9],
                  [2.5, 2700, 18000, 6.5, 3, 5],
                  [1.8, 2000, 21000, 4.5, 7, 7],
                  [2.2, 1800, 20000, 5.0, 5, 5]])
    w = np.array([0.2, 0.1, 0.1, 0.1, 0.2, 0.3])
    benefit = np.array([True, True, True, False, True, True])
    crit = [f"x{j}" for j in range(6)]
    matrix = {f"A{i + 1}": dict(zip(crit, row)) for i, row in enumerate(x)}
    got = topsis(matrix, dict(zip(crit, w)), {c: (1 if b else -1) for c, b in zip(crit, benefit)})
    expected = topsis_reference(x, w, benefit)
    assert [got[f"A{i + 1}"] for i in range(4)] == pytest.approx(expected.tolist(), abs=1e-12)
    # computed: A1 0.6433, A2 0.2684, A3 0.6135, A4 0.3123 -> A1 is selected
    assert max(got, key=got.get) == "A1"


@SETTINGS
@given(data=decision_matrix())
def test_topsis_in_unit_interval_and_matches_reference(data: tuple) -> None:
    matrix, weights, directions = data
    got = topsis(matrix, weights, directions)
    assert all(0.0 <= c <= 1.0 for c in got.values())
    crit = list(weights)
    x = np.array([[matrix[a][c] for c in crit] for a in matrix])
    expected = topsis_reference(x, np.array([weights[c] for c in crit]), np.array([directions[c] > 0 for c in crit]))
    assert [got[a] for a in matrix] == pytest.approx(expected.tolist(), abs=1e-9)


@SETTINGS
@given(data=st.data())
def test_dominating_alternative_wins_topsis(data: st.DataObject) -> None:
    # vector normalisation rescales each column by a positive factor: the winner stays the ideal point
    matrix, weights, directions, winner = dominated_matrix(data.draw)
    scores = topsis(matrix, weights, directions)
    assert scores[winner] == max(scores.values())
    assert scores[winner] == pytest.approx(1.0)  # it *is* the ideal point


# ------------------------------------------------------------------------------------------------
# Pareto front
# ------------------------------------------------------------------------------------------------

def test_pareto_front_known_answer() -> None:
    points = {"cheap_weak": (0.2, 1.0), "dear_strong": (0.9, 8.0), "balanced": (0.7, 3.0),
              "dominated": (0.6, 4.0), "twin_a": (0.5, 2.0), "twin_b": (0.5, 2.0)}
    front = pareto_front(points, (1, -1))  # transfer potential up, cost down
    assert front == {"cheap_weak", "dear_strong", "balanced", "twin_a", "twin_b"}
    assert pareto_front({}, (1,)) == set()
    with pytest.raises(MetricInputError):
        pareto_front({"a": (1.0, 2.0)}, (1,))
    with pytest.raises(MetricInputError):
        pareto_front({"a": (1.0,)}, (2,))


def dominates(p: tuple[float, ...], q: tuple[float, ...], dirs: tuple[int, ...]) -> bool:
    sp = [d * x for d, x in zip(dirs, p)]
    sq = [d * x for d, x in zip(dirs, q)]
    return all(a >= b for a, b in zip(sp, sq)) and any(a > b for a, b in zip(sp, sq))


@SETTINGS
@given(data=st.data())
def test_pareto_front_properties(data: st.DataObject) -> None:
    m = data.draw(st.integers(1, 4))
    dirs = tuple(data.draw(st.lists(st.sampled_from([1, -1]), min_size=m, max_size=m)))
    alts = data.draw(names)
    value = st.integers(0, 5).map(float)  # small range: many ties
    points = {a: tuple(data.draw(value) for _ in range(m)) for a in alts}
    front = pareto_front(points, dirs)
    assert front
    # no point in the front is dominated; every point outside is dominated by a front point
    for a in front:
        assert not any(dominates(points[b], points[a], dirs) for b in points)
    for a in set(points) - front:
        assert any(dominates(points[b], points[a], dirs) for b in front)
    # the best in each criterion: a unique best is in the front; among tied bests at least one is
    for j, d in enumerate(dirs):
        best = max(d * p[j] for p in points.values())
        winners = {a for a, p in points.items() if d * p[j] == best}
        assert winners & front
        if len(winners) == 1:
            assert winners <= front


# ------------------------------------------------------------------------------------------------
# bootstrap
# ------------------------------------------------------------------------------------------------

def mean_score_fn(data: dict[str, np.ndarray]):
    """Score = mean of each alternative's per-row values over the resampled rows."""
    tensors = {k: torch.as_tensor(v) for k, v in data.items()}

    def fn(idx: torch.Tensor) -> dict[str, float]:
        assert idx.dtype == torch.long and idx.ndim == 1
        return {k: float(t[idx].mean()) for k, t in tensors.items()}

    return fn


def test_bootstrap_clear_winner_and_determinism() -> None:
    rng = np.random.default_rng(0)
    n = 200
    data = {"best": rng.normal(1.0, 0.1, n), "mid": rng.normal(0.5, 0.1, n), "worst": rng.normal(0.0, 0.1, n)}
    p, intervals = bootstrap_top1(mean_score_fn(data), n, rounds=40, seed=3)
    assert p == {"best": 1.0, "mid": 0.0, "worst": 0.0}
    assert intervals == {"best": (1, 1), "mid": (2, 2), "worst": (3, 3)}
    again = bootstrap_top1(mean_score_fn(data), n, rounds=40, seed=3)
    assert again == (p, intervals)


def test_bootstrap_matches_manual_reference() -> None:
    rng = np.random.default_rng(1)
    n = 60
    data = {a: rng.normal(0.0, 1.0, n) + shift for a, shift in zip("abcd", (0.3, 0.25, 0.0, -0.2))}
    p, intervals = bootstrap_top1(mean_score_fn(data), n, rounds=200, seed=11)
    # reference: same generator, loops
    gen = np.random.default_rng(11)
    wins = dict.fromkeys(data, 0.0)
    ranks: dict[str, list[int]] = {a: [] for a in data}
    for _ in range(200):
        idx = gen.integers(0, n, size=n, dtype=np.int64)
        s = {a: float(torch.as_tensor(v)[torch.from_numpy(idx)].mean()) for a, v in data.items()}
        top = max(s.values())
        tied = [a for a in s if s[a] == top]
        for a in tied:
            wins[a] += 1 / len(tied)
        for a, score in s.items():
            ranks[a].append(1 + sum(other > score for other in s.values()))
    assert p == pytest.approx({a: w / 200 for a, w in wins.items()})
    assert sum(p.values()) == pytest.approx(1.0)
    for a, r in ranks.items():
        srt = sorted(r)
        assert intervals[a] == (srt[math.floor(0.05 * 199)], srt[math.ceil(0.95 * 199)])
    assert 0 < p["a"] < 1 and 0 < p["b"] < 1  # close alternatives: genuinely uncertain
    assert bootstrap_top1(mean_score_fn(data), n, rounds=200, seed=12) != (p, intervals)


@SETTINGS
@given(n_alt=st.integers(1, 6), rounds=st.integers(1, 30), seed=st.integers(0, 2**31), levels=st.integers(1, 3))
def test_bootstrap_probabilities_sum_to_one(n_alt: int, rounds: int, seed: int, levels: int) -> None:
    rng = np.random.default_rng(seed)
    # few distinct per-row values: ties for first happen and are shared
    data = {f"s{i}": rng.integers(0, levels, 10).astype(float) for i in range(n_alt)}
    p, intervals = bootstrap_top1(mean_score_fn(data), 10, rounds, seed)
    assert sum(p.values()) == pytest.approx(1.0)
    assert all(0.0 <= v <= 1.0 for v in p.values())
    assert all(1 <= lo <= hi <= n_alt for lo, hi in intervals.values())


def test_bootstrap_validation() -> None:
    fn = mean_score_fn({"a": np.zeros(5)})
    with pytest.raises(MetricInputError):
        bootstrap_top1(fn, 0, 10, 0)
    with pytest.raises(MetricInputError):
        bootstrap_top1(fn, 5, 0, 0)
    calls = iter([{"a": 1.0, "b": 0.0}, {"a": 1.0}])
    with pytest.raises(MetricInputError, match="expected"):
        bootstrap_top1(lambda idx: next(calls), 5, 2, 0)
    with pytest.raises(MetricInputError, match="non-finite"):
        bootstrap_top1(lambda idx: {"a": float("nan")}, 5, 1, 0)


def test_reliability_known_answers() -> None:
    from tasksim.mcda import reliability

    values = {"a": 1.0, "b": 2.0, "c": 3.0}  # variance across alternatives (ddof=1): 1
    assert reliability(values, {}) == 1.0  # no noise estimate: trusted as it is
    assert reliability(values, {"a": 0.25, "b": 0.25, "c": 0.25}) == pytest.approx(0.75)
    assert reliability(values, {"a": 0.0, "b": 0.5, "c": 1.0}) == pytest.approx(0.5)  # mean noise
    assert reliability(values, {"a": 2.0, "b": 2.0, "c": 2.0}) == 0.0  # noise beyond the spread
    assert reliability({"a": 1.0, "b": 1.0}, {"a": 0.1, "b": 0.1}) == 0.0


def test_top1_from_rounds_matches_bootstrap_top1() -> None:
    from tasksim.mcda import bootstrap_indices, bootstrap_top1, top1_and_intervals

    def score_fn(idx):
        return {"a": float(idx.float().mean()), "b": 50.0, "c": float(idx.max())}

    via_fn = bootstrap_top1(score_fn, 100, 25, seed=3)
    via_rounds = top1_and_intervals([score_fn(i) for i in bootstrap_indices(100, 25, seed=3)])
    assert via_fn == via_rounds
    assert sum(via_fn[0].values()) == pytest.approx(1.0)
