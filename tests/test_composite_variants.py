"""bench/composite_variants.py: the guard-agreement weights, the bagged composite and the one-factor weights (issue 12's
tried-and-not-adopted variants) do what their docstrings say."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

cv = pytest.importorskip("composite_variants")

from tasksim.config import RankingConfig


def _measures(mmd_sign: float) -> dict[str, dict[str, float]]:
    # LogME and LEEP agree on the order s0 > s1 > ... > s5; MMD² (lower is better) either agrees
    # (mmd_sign +1: s0 closest) or says the opposite (-1)
    return {f"s{i}": {"logme": 1.0 - 0.1 * i, "leep": -0.5 - 0.2 * i + 0.01 * (i % 2),
                      "mmd2": 0.5 + mmd_sign * 0.1 * i} for i in range(6)}


def test_a_distance_that_agrees_keeps_its_weight_and_one_that_contradicts_loses_it() -> None:
    weights = {"logme": 1.0, "leep": 1.0, "mmd2": 0.5}
    agree = cv.guard_agreement_weights(_measures(+1.0), weights)
    contradict = cv.guard_agreement_weights(_measures(-1.0), weights)
    assert agree["mmd2"] == pytest.approx(0.5)  # Spearman 1
    assert contradict["mmd2"] == 0.0  # Spearman -1, clipped at 0
    # the transferability criteria are never touched
    assert agree["logme"] == contradict["logme"] == 1.0 and agree["leep"] == contradict["leep"] == 1.0


def test_guard_agreement_is_the_spearman_correlation_with_the_evidence() -> None:
    rng = np.random.default_rng(3)
    measures = {f"s{i}": {"logme": float(rng.normal()), "mmd2": float(rng.normal())} for i in range(9)}
    out = cv.guard_agreement_weights(measures, {"logme": 1.0, "mmd2": 1.0})
    from scipy.stats import spearmanr
    names = sorted(measures)
    # MMD² is lower-is-better: its oriented values are the negatives
    rho = spearmanr([-measures[s]["mmd2"] for s in names], [measures[s]["logme"] for s in names]).statistic
    assert out["mmd2"] == pytest.approx(max(rho, 0.0), abs=1e-12)


def test_fewer_than_three_sources_with_the_distance_give_it_no_weight() -> None:
    measures = {"a": {"logme": 1.0, "mmd2": 0.1}, "b": {"logme": 0.0, "mmd2": 0.9}, "c": {"logme": 0.5}}
    assert cv.guard_agreement_weights(measures, {"logme": 1.0, "mmd2": 0.5})["mmd2"] == 0.0


def test_the_bagged_composite_without_rounds_is_the_plain_composite() -> None:
    measures = _measures(+1.0)
    config = RankingConfig()
    plain = cv.suite.product_composite(measures, None, config)
    assert cv.bagged_composite(measures, None, config) == pytest.approx(plain)


def test_the_bagged_composite_scores_every_source_and_identical_rounds_give_the_plain_composite() -> None:
    measures = _measures(-1.0)
    rng = np.random.default_rng(0)
    rounds = {s: [{"logme": v["logme"] + float(rng.normal(0, 0.02)), "leep": v["leep"] + float(rng.normal(0, 0.02))}
                  for _ in range(5)] for s, v in measures.items()}
    config = RankingConfig(weights={"logme": 1.0, "leep": 1.0, "mmd2": 0.5})
    bagged = cv.bagged_composite(measures, rounds, config)
    plain = cv.suite.product_composite(measures, rounds, config)
    assert set(bagged) == set(plain)
    assert all(0.0 <= v <= 1.0 for v in bagged.values())
    # a round that equals the full sample for every source gives back the plain composite
    same = {s: [{"logme": v["logme"], "leep": v["leep"]}] * 3 for s, v in measures.items()}
    assert cv.bagged_composite(measures, same, config) == pytest.approx(cv.suite.product_composite(measures, same, config))


def test_one_factor_loadings_recover_an_exact_one_factor_correlation() -> None:
    loadings = np.array([0.9, 0.7, 0.5, 0.3, 0.8])
    correlation = np.outer(loadings, loadings)
    np.fill_diagonal(correlation, 1.0)
    assert cv.one_factor_loadings(correlation, iterations=500) == pytest.approx(loadings, abs=1e-4)


def test_one_factor_weights_favour_the_criteria_that_share_the_common_order() -> None:
    rng = np.random.default_rng(0)
    truth = rng.normal(size=14)
    measures = {f"s{i}": {"logme": truth[i] + 0.2 * rng.normal(), "leep": truth[i] + 0.3 * rng.normal(),
                          "gbc": truth[i] + 0.3 * rng.normal(), "nce": float(rng.normal()), "mmd2": float(rng.normal())}
                for i in range(14)}
    weights = {"logme": 1.0, "leep": 1.0, "gbc": 1.0, "nce": 1.0, "mmd2": 0.5}
    out = cv.one_factor_weights(measures, weights)
    assert min(out["logme"], out["leep"], out["gbc"]) > 3 * out["nce"]  # noise loads near 0
    assert out["mmd2"] == 0.5  # distances are not re-weighted
    few = {s: v for s, v in list(measures.items())[:4]}
    assert cv.one_factor_weights(few, weights) == weights  # too few sources: unchanged
