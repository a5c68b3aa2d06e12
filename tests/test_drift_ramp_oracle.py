"""bench/drift_ramp_oracle.py: the oracle's per-row log-likelihood ratios are density ratios, its
Neyman-Pearson power matches closed forms, and its proxy windows are the benchmark's own windows."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binom, norm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

oracle = pytest.importorskip("drift_ramp_oracle")
db = oracle.db


def test_prior_ratio_is_a_density_ratio_and_its_llr_vanishes_without_a_shift() -> None:
    freq = np.array([0.1, 0.2, 0.3, 0.4])
    heavy = {0: 5.0, 2: 5.0}
    for s in (0.0, 0.1, 0.3, 1.0):
        ratio = oracle.prior_ratio(freq, heavy, s)
        assert float(freq @ ratio) == pytest.approx(1.0)  # E_p[q / p] = 1
    at_zero = oracle.mixture_prior_llr(np.eye(4), oracle.prior_ratio(freq, heavy, 0.0))
    np.testing.assert_allclose(at_zero, 0.0, atol=1e-12)
    # at full strength class 0 is 5 / (0.5 + 0.4 * ... ) times as frequent: q(0) = 0.5 / (0.5 + 0.2 + 1.5 + 0.4)
    q0 = 0.5 / (0.5 + 0.2 + 1.5 + 0.4)
    assert float(np.exp(oracle.mixture_prior_llr(np.eye(4), oracle.prior_ratio(freq, heavy, 1.0))[0])) \
        == pytest.approx(q0 / 0.1)


def test_bbse_llr_through_a_confusion_averages_to_one_over_the_predictions() -> None:
    rng = np.random.default_rng(0)
    freq = np.array([0.5, 0.3, 0.2])
    confusion = rng.dirichlet(np.ones(3) * 2, size=3)  # row y: P(yhat | y)
    joint = freq[:, None] * confusion
    p_yhat = joint.sum(axis=0)
    y_given_yhat = (joint / p_yhat).T
    ratio = oracle.prior_ratio(freq, {1: 5.0}, 0.3)
    llr = oracle.mixture_prior_llr(y_given_yhat, ratio)
    assert float(p_yhat @ np.exp(llr)) == pytest.approx(1.0)
    q_yhat = (freq * ratio) @ confusion  # the shifted prediction frequencies, directly
    np.testing.assert_allclose(np.exp(llr), q_yhat / p_yhat)


def test_concept_and_subpopulation_ratios_average_to_one_under_no_shift() -> None:
    rng = np.random.default_rng(1)
    p_b = rng.uniform(0.01, 0.99, size=50)  # p(b | x, y in {a, b}) of 50 inputs
    for s in (0.0, 0.1, 0.3):
        # E over y ~ p(y | x) of q_s(y | x) / p(y | x) = 1, input by input
        mean = (1 - p_b) * np.exp(oracle.concept_llr(p_b / (1 - p_b), s)) \
            + p_b * np.exp(oracle.concept_llr((1 - p_b) / p_b, s))
        np.testing.assert_allclose(mean, 1.0)
    # a class of 10 rows with 4 in its upper half: E over the class of the ratio is 1
    in_upper = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], dtype=bool)
    for replaced in (0.0, 0.05, 0.5, 1.0):
        with np.errstate(divide="ignore"):  # at 1.0 a lower-half row is impossible: log 0 = -inf, exp -> 0
            values = np.exp(oracle.subpopulation_llr(np.full(10, 10 / 4), in_upper, replaced))
        assert float(values.mean()) == pytest.approx(1.0)
    np.testing.assert_allclose(oracle.concept_llr(np.array([0.0, 3.0, 100.0]), 0.0), 0.0)


def test_randomised_power_matches_the_binomial_closed_form() -> None:
    # one window of 100 rows, a class of frequency 0.3 that becomes 0.45: the LLR is increasing in its count
    n, p0, p1, level = 100, 0.3, 0.45, 0.01
    rng = np.random.default_rng(2)
    llr = lambda count: count * np.log(p1 / p0) + (n - count) * np.log((1 - p1) / (1 - p0))
    null = llr(rng.binomial(n, p0, size=400_000))
    alt = llr(rng.binomial(n, p1, size=400_000))
    power, _ = oracle.np_power(null, alt, level)
    # exact randomised Neyman-Pearson test on the count
    c = int(binom.ppf(1 - level, n, p0))
    above, at = binom.sf(c, n, p0), binom.pmf(c, n, p0)
    gamma = (level - above) / at
    expected = binom.sf(c, n, p1) + gamma * binom.pmf(c, n, p1)
    assert power == pytest.approx(expected, abs=0.01)
    # and the level is exact on the null itself (randomisation at the tie)
    assert oracle.np_power(null, null, level)[0] == pytest.approx(level, abs=1e-9)


def test_gaussian_direction_power_matches_the_normal_closed_form() -> None:
    rng = np.random.default_rng(3)
    dims, rows, window, level, s = 5, 40_000, 100, 0.02, 0.1
    a = rng.normal(size=(dims, dims))
    cov = a @ a.T + np.eye(dims)
    x = rng.multivariate_normal(np.zeros(dims), cov, size=rows)
    delta = np.array([0.3, 0.0, -0.2, 0.1, 0.0])
    v, centre = oracle.gaussian_direction(x, None, delta)
    proj = (x - centre) @ v
    m = float(v @ delta)  # squared Mahalanobis length of delta
    assert m == pytest.approx(float(delta @ np.linalg.solve(cov, delta)), rel=0.05)
    null = proj[rng.integers(0, rows, size=(20_000, window))].sum(axis=1)
    alt = null[::-1] + window * s * m  # shifted windows: each row's projection moves by s v.delta
    power, _ = oracle.np_power(null, alt, level)
    expected = norm.sf(norm.isf(level) - np.sqrt(window) * s * np.sqrt(m))
    assert power == pytest.approx(expected, abs=0.03)


def _synthetic_landsat() -> db.Data:
    rng = np.random.default_rng(4)
    y = rng.integers(0, 6, size=1600)
    x = rng.integers(20, 150, size=(1600, 36)).astype(np.float64) + 5.0 * y[:, None]
    return db.Data("landsat", x, y, image=False)


def test_the_proxy_windows_are_the_benchmarks_windows() -> None:
    data = _synthetic_landsat()
    real = db.Stream(data, np.random.default_rng([0, 7]))
    real_made = {n: m for n, (_, m) in db.scenarios(data, real).items()}
    ramps = {r.name: r for r in oracle.build_ramps(data, 0, {})}
    for name in ("label prior (labels)", "concept: labels swapped",
                 "subpopulation: half the rows from the brighter half of each class",
                 "subpopulation: all rows from the brighter half of each class",
                 "input: 3 of 36 columns +1.5 sd", "input: all columns +0.3 sd"):
        ramp = ramps[name]
        for i, s in enumerate(oracle.STRENGTHS):
            # one generator per window: the benchmark's rounding of whole-number columns draws from
            # the real stream's generator after its window, which the oracle's proxy does not
            real.rng = np.random.default_rng([9, i])
            ramp.stream.rng = np.random.default_rng([9, i])
            x, y, _ = real_made[name](real, s)
            if ramp.draw is None:  # input ramps: the oracle's quiet window, moved by s delta on every row
                values, y_proxy = ramp.stream.window()
                cols = np.array([4, 17, 30]) if "3 of 36" in name else np.arange(36)
                sd = 1.5 if "3 of 36" in name else 0.3
                delta = np.zeros(36)
                delta[cols] = sd * (data.x[real.ref_idx].std(axis=0)[cols] + 1e-12)
                # whole-number columns are rounded stochastically back to whole numbers (the
                # benchmark's on_grid): each value is one of the two integers around its moved value
                moved = data.x[values[:, 0].astype(int)] + s * delta
                assert np.all(np.abs(x - moved) < 1) and np.all(x == np.round(x))
                np.testing.assert_allclose(x[:, delta == 0], moved[:, delta == 0])
            else:
                values, y_proxy, _ = ramp.draw(ramp.stream, s)
                if name.startswith("subpopulation"):
                    np.testing.assert_array_equal(values[:, 0], x.mean(axis=1))
                else:
                    np.testing.assert_array_equal(data.x[values[:, 0].astype(int)], x)
            np.testing.assert_array_equal(y_proxy, y)
    # the subpopulation ramp's LLR is zero on no row at strength 0, and rows of the upper half gain at s > 0
    sub = ramps["subpopulation: all rows from the brighter half of each class"]
    ids = sub.stream.pool[:100][None, :]
    assert np.all(sub.score(sub.values[ids], data.y[ids], 0.0) == 0.0)


def test_the_other_domains_rows_keep_their_ids_in_the_proxy() -> None:
    # a small "mnist": 64 pixels, 10 digits, an "OpenCV" domain of 200 rows with the same labels
    rng = np.random.default_rng(5)
    y = np.repeat(np.arange(10), 150)
    x = np.clip(rng.normal(0.3, 0.2, size=(1500, 64)) + 0.05 * y[:, None], 0, 1)
    domain_y = np.repeat(np.arange(10), 20)
    domain = np.clip(rng.normal(0.5, 0.2, size=(200, 64)), 0, 1)
    data = db.Data("mnist", x, y, image=True, vector=True, domain=domain, domain_y=domain_y)
    real = db.Stream(data, np.random.default_rng([0, 7]))
    make = {n: m for n, (_, m) in db.scenarios(data, real).items()}["input: half the rows from OpenCV digits"]
    ramp = {r.name: r for r in oracle.build_ramps(data, 0, {})}["input: half the rows from OpenCV digits"]
    both = np.concatenate([x, domain])
    real.rng, ramp.stream.rng = np.random.default_rng(3), np.random.default_rng(3)
    for s in oracle.STRENGTHS:
        xr, yr, _ = make(real, s)
        ids, yp, _ = ramp.draw(ramp.stream, s)
        np.testing.assert_array_equal(both[ids[:, 0].astype(int)], xr)
        np.testing.assert_array_equal(yp, yr)
        assert int((ids[:, 0] >= len(x)).sum()) == round(0.5 * s * 100)  # the replaced rows: the other domain's ids


def test_direction_blind_label_bound_against_a_multinomial_simulation() -> None:
    blind = pytest.importorskip("drift_label_blind_bound")
    freq = np.full(6, 1 / 6)
    rate = 0.01
    # no shift (heavy weight 1): the power is the level
    assert blind.blind_power(freq, {0: 1.0}, rate, np.ones(3)) == pytest.approx(3 * rate, rel=1e-9)
    # a ramp: the chi-square's power against the same statistic on simulated multinomial windows
    heavy, weights = {0: 3.0, 1: 3.0}, np.array(oracle.STRENGTHS)  # power near 0.55: where an error would show
    a = weights / np.linalg.norm(weights)
    rng = np.random.default_rng(3)

    def statistic(strengths: tuple[float, ...], size: int) -> np.ndarray:
        d = sum(ai * (rng.multinomial(db.WINDOW, freq * oracle.prior_ratio(freq, heavy, s), size=size) / db.WINDOW
                      - freq) for ai, s in zip(a, strengths))
        return db.WINDOW * (d ** 2 / freq).sum(axis=1)
    cut = np.quantile(statistic((0.0, 0.0, 0.0), 40000), 1 - 3 * rate)
    simulated = float(np.mean(statistic(oracle.STRENGTHS, 20000) > cut))
    assert blind.blind_power(freq, heavy, rate, weights) == pytest.approx(simulated, abs=0.02)
