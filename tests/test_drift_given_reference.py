"""Nulls given the reference (tasksim.drift.given_reference): the bounds hold the family's share for
about ``1 - delta`` of simulated references, checked against a plain Monte Carlo of references and
windows (no noncentral chi-square in the reference computation)."""

from __future__ import annotations

import itertools
import math

import numpy as np
from scipy.stats import chi2, norm

from tasksim.drift.given_reference import (
    ewma_steady_share,
    ewma_thresholds_given_reference,
    pvalue_given_reference,
    reference_share,
)


def _threshold(share: float, rho: float, delta: float, *, dof: int = 1, one_sided: bool = False) -> float:
    """The statistic's cut at which the bounded p-value equals ``share`` (bisection on the z or T scale)."""
    lo, hi = 0.0, 60.0
    for _ in range(80):
        mid = (lo + hi) / 2
        p = norm.sf(mid) if one_sided else chi2.sf(mid, dof)
        if pvalue_given_reference(p, rho, dof=dof, delta=delta, one_sided=one_sided) > share:
            lo = mid
        else:
            hi = mid
    return hi


def _conditional_rates(cut: float, rho: float, dof: int, one_sided: bool, references: int, windows: int,
                       seed: int) -> np.ndarray:
    """Per simulated reference offset, the Monte Carlo rate at which windows reach ``cut``."""
    rng = np.random.default_rng(seed)
    g_r = rng.standard_normal((references, dof))
    g_w = rng.standard_normal((windows, dof))
    rates = np.empty(references)
    for i in range(references):
        v = math.sqrt(1 - rho) * g_w + math.sqrt(rho) * g_r[i]
        stat = v[:, 0] if one_sided else (v * v).sum(axis=1)
        rates[i] = np.mean(stat >= cut)
    return rates


def test_the_bounded_pvalue_holds_its_share_for_one_minus_delta_of_the_references():
    share, delta = 0.01, 0.1
    for dof, one_sided, rho in ((9, False, 0.0909), (9, False, 0.4), (1, True, 0.4), (1, True, 0.0909)):
        cut = _threshold(share, rho, delta, dof=dof, one_sided=one_sided)
        rates = _conditional_rates(cut, rho, dof, one_sided, references=600, windows=20000, seed=dof)
        above = float(np.mean(rates > share))
        # about delta of the references above the share (Monte Carlo: 600 references, and each
        # conditional rate from 20,000 windows, which blurs the boundary a little)
        assert 0.04 < above < 0.17, (dof, one_sided, rho, above)
        # the plain p-value (rho ignored) holds its share only on average over references, and
        # leaves far more of them above it: the reason for the bound
        plain = chi2.isf(share, dof) if not one_sided else norm.isf(share)
        plain_rates = _conditional_rates(plain, rho, dof, one_sided, references=300, windows=20000, seed=7)
        assert float(np.mean(plain_rates > share)) > above + 0.05


def test_the_bound_returns_to_the_plain_pvalue_as_the_reference_grows():
    p = 0.002
    assert pvalue_given_reference(p, 0.0, dof=9) == p
    bounds = [pvalue_given_reference(p, reference_share(1 / 100, 1 / n), dof=9) for n in (500, 1000, 10000, 10 ** 6)]
    assert all(a > b for a, b in itertools.pairwise(bounds))
    assert bounds[0] > 1.5 * p
    assert abs(bounds[-1] - p) < 0.01 * p
    assert pvalue_given_reference(1.0, 0.4) == 1.0
    assert pvalue_given_reference(0.0, 0.4) == 0.0
    # a smaller delta (more references covered) is stricter
    assert pvalue_given_reference(p, 0.4, delta=0.05) > pvalue_given_reference(p, 0.4, delta=0.2)


def test_the_steady_share_of_an_ewma():
    # 100-row windows, lam 0.3: the windows' part 0.3 / 1.7 / 100; the reference's 1 / 1000
    rho = ewma_steady_share(100, 1000, 0.0, 0.3)
    assert abs(rho - 0.001 / (0.001 + 0.3 / 1.7 / 100)) < 1e-12
    assert ewma_steady_share(100, 10 ** 7, 0.0, 0.3) < 1e-3
    assert ewma_steady_share(100, 1000, 0.015 ** 2, 0.3) > rho


def test_accumulated_thresholds_given_the_reference_against_a_monte_carlo_of_references():
    rng = np.random.default_rng(3)
    columns, rest = 6, 20
    a = rng.standard_normal((2000, columns + rest))
    a[:, 1] = 0.8 * a[:, 0] + 0.6 * a[:, 1]  # correlated columns
    cov = a.T @ a / len(a)
    vals, vecs = np.linalg.eigh(cov)
    root = vecs * np.sqrt(np.clip(vals, 0.0, None))
    rate, delta, rho = 0.02, 0.1, 0.4
    top, quad = ewma_thresholds_given_reference(root, columns, rate, rho, delta=delta, seed=0, outer=400,
                                                inner=20000)
    # rho 0: the plain quantiles of the Gaussian (a direct draw)
    top0, quad0 = ewma_thresholds_given_reference(root, columns, rate, 0.0, seed=0, outer=8, inner=200000)
    g = rng.standard_normal((200000, columns + rest)) @ root.T
    assert abs(top0 - np.quantile(np.abs(g[:, :columns]).max(axis=1), 1 - rate / 2)) < 0.05
    assert abs(quad0 / np.quantile((g[:, columns:] ** 2).sum(axis=1), 1 - rate / 2) - 1) < 0.03
    assert top > top0 and quad > quad0
    # independent check: fresh reference offsets and windows, the share of references whose
    # conditional rate exceeds rate / 2 is about delta
    g_r = rng.standard_normal((400, columns + rest)) @ root.T * math.sqrt(rho)
    g_w = rng.standard_normal((20000, columns + rest)) @ root.T * math.sqrt(1 - rho)
    over_top = np.array([np.mean(np.abs(g_w[:, :columns] + r[:columns]).max(axis=1) >= top) for r in g_r])
    over_quad = np.array([np.mean(((g_w[:, columns:] + r[columns:]) ** 2).sum(axis=1) >= quad) for r in g_r])
    for over in (over_top, over_quad):
        share_above = float(np.mean(over > rate / 2))
        assert 0.04 < share_above < 0.18, share_above


def test_the_drift_stage_bounds_its_label_pvalues_only_when_reference_delta_is_set():
    import pandas as pd

    from tasksim.config import DriftConfig
    from tasksim.drift import DriftReference, calibrate, check_window

    rng = np.random.default_rng(5)

    def table(n: int) -> tuple[pd.DataFrame, list[str]]:
        y = rng.integers(0, 3, size=n)
        x = rng.normal(size=(n, 3))
        x[:, 0] += 1.5 * y
        return pd.DataFrame(x, columns=["a", "b", "c"]), [f"c{v}" for v in y]

    plain_cfg = DriftConfig()
    bounded_cfg = DriftConfig(reference_delta=0.1)
    x, y = table(400)
    ref = DriftReference.fit(x, None, y, plain_cfg, seed=0)
    plain_cal, bounded_cal = calibrate(ref, 60, plain_cfg, seed=0), calibrate(ref, 60, bounded_cfg, seed=0)
    assert bounded_cal.z_star > plain_cal.z_star and bounded_cal.ewma_z > plain_cal.ewma_z
    state_plain = state_bounded = None
    for _ in range(4):
        wx, wy = table(60)
        plain, state_plain = check_window(ref, plain_cal, wx, None, wy, plain_cfg, seed=1, cusum_state=state_plain)
        bounded, state_bounded = check_window(ref, bounded_cal, wx, None, wy, bounded_cfg, seed=1,
                                              cusum_state=state_bounded)
        for name in ("label_prior", "concept", "label_cusum"):
            p0, p1 = plain.test(name).p_value, bounded.test(name).p_value
            assert p0 is not None and p1 is not None
            assert p1 >= p0 - 1e-12  # the same draws, bounded: never smaller
        # the plain verdict's label prior p-value is the permutation test's own
        assert "given the reference" not in plain.test("label_prior").detail
        assert "given the reference" in bounded.test("label_prior").detail
