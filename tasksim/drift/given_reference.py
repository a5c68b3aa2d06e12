"""Nulls given the reference: a test family's false-alarm rate for the one reference a stream has.

Every drift statistic compares windows with one finite reference of ``n`` rows. Its usual null
(permutations, bootstraps, the EWMAs' ``W^2 / n`` term) counts the reference's sampling error
*on average over reference draws*. A stream, though, is monitored against one reference, whose
error is a fixed offset shared by every window: given that reference the statistic is off-centre,
and its false-alarm rate is above the family's share for the references that happened to land
far from their population (30 MNIST references x 264 quiet windows: 4 streams above 1% while the
mean was 0.35%, docs/benchmarks.md, 2026-12-07).

Model. On its null scale a statistic is ``|sqrt(1 - rho) g_w + sqrt(rho) g_r|^2`` (``d`` degrees of
freedom: a G or Pearson test of class frequencies) or, one-sided, ``sqrt(1 - rho) g_w + sqrt(rho)
g_r`` (a loss excess), with ``g_w`` the window's part, ``g_r`` the reference's (standard normal
each), and ``rho`` the reference's share of the statistic's null variance: ``m / (m + n)`` for a
window of ``m`` rows against ``n`` reference rows, and for the EWMAs of
:mod:`tasksim.drift.sequential` ``W^2 (1 / n + benign) / c_t`` (about 0.4 with 100-row windows and a
1,000-row reference: there most of the variance of a long average is the reference's). Given the
reference, ``g_r`` is fixed; the conditional rate grows with ``|g_r|`` and is at most the family's
share for the references whose ``|g_r|`` is within its upper ``delta`` quantile. The p-values here
are that bound (:func:`pvalue_given_reference`): a test that rejects at ``p <= share`` holds its
share given the reference for at least ``1 - delta`` of the references. Where the statistic is a
maximum over correlated columns (the accumulated input test) the bound is measured by a two-level
Gaussian simulation (:func:`ewma_thresholds_given_reference`). As the reference grows ``rho -> 0``
and every bound returns to the plain null: the reference's error shrinks as ``1 / n``.
"""

from __future__ import annotations

import math

import numpy as np

#: Share of references allowed to exceed a family's share given the reference (the bound's
#: confidence is ``1 - delta``; the input cut's Monte Carlo bound uses the same level,
#: ``tasksim.drift.checks.TAIL_DELTA``): the functions' default. The drift stage reads
#: ``DriftConfig.reference_delta`` (default None: no bound, the plain nulls).
REFERENCE_DELTA = 0.1

#: Two-level simulation of the accumulated input thresholds: reference offsets (outer) and window
#: draws (inner, shared by every offset).
OUTER_DRAWS = 256
INNER_DRAWS = 20000


def reference_share(window_var: float, reference_var: float) -> float:
    """``rho``: the reference's share of a statistic's null variance (0 when both are 0)."""
    total = float(window_var) + float(reference_var)
    return float(reference_var) / total if total > 0 else 0.0


def pvalue_given_reference(p: float, rho: float, *, dof: int = 1, delta: float | None = REFERENCE_DELTA,
                           one_sided: bool = False) -> float:
    """An upper ``1 - delta`` confidence bound, over reference draws, of the p-value given the reference.

    ``p`` is the test's p-value under its usual null (reference error averaged over); ``rho`` the
    reference's share of the statistic's null variance. ``one_sided``: the statistic is a
    standardised excess ``z = sqrt(1 - rho) g_w + sqrt(rho) g_r``; the bound is
    ``P(g_w >= (z - sqrt(rho) z_delta) / sqrt(1 - rho))``. Otherwise it is a sum of ``dof`` squares,
    ``T = |sqrt(1 - rho) g_w + sqrt(rho) g_r|^2``: given ``g_r``, ``T / (1 - rho)`` is noncentral
    chi-square with noncentrality ``rho / (1 - rho) |g_r|^2``, at its upper ``delta`` quantile
    ``|g_r|^2 = chi2.isf(delta, dof)``. ``p`` is put on the statistic's scale through its
    unconditional law (``z = isf(p)``, ``T = chi2.isf(p, dof)``), so any valid p-value (a
    permutation or Monte Carlo one) can be bounded. ``rho = 0`` or ``delta`` None returns ``p``."""
    from scipy.stats import chi2, ncx2, norm

    p = float(min(max(p, 0.0), 1.0))
    rho = float(min(max(rho, 0.0), 1.0 - 1e-9))
    if delta is None or rho == 0.0 or p in (0.0, 1.0):
        return p
    if one_sided:
        z = float(norm.isf(p))
        return float(norm.sf((z - math.sqrt(rho) * float(norm.isf(delta))) / math.sqrt(1.0 - rho)))
    dof = max(int(dof), 1)
    t = float(chi2.isf(p, dof))
    lam = rho / (1.0 - rho) * float(chi2.isf(delta, dof))
    return float(ncx2.sf(t / (1.0 - rho), dof, lam))


def cut_given_reference(z_cut: float, rho: float, *, delta: float | None = REFERENCE_DELTA) -> float:
    """A cut on a z scale (``z_cut``, set by the statistic's usual null) moved so that it holds given
    the reference for ``1 - delta`` of the references: ``sqrt(1 - rho) z_cut + sqrt(rho) z_delta``,
    the one-sided bound of :func:`pvalue_given_reference` solved for the statistic. For a maximum
    over several components (the per-window input test) it is conservative: it treats the
    reference's offset as if it fell on one component, where over several it partly averages out.
    ``delta`` None returns ``z_cut``."""
    from scipy.stats import norm

    if delta is None:
        return float(z_cut)
    rho = float(min(max(rho, 0.0), 1.0 - 1e-9))
    return float(math.sqrt(1.0 - rho) * z_cut + math.sqrt(rho) * float(norm.isf(delta)))


def ewma_steady_share(window_rows: int, reference_rows: int, benign: float, lam: float) -> float:
    """``rho`` of an EWMA of window-minus-reference means after many windows of ``window_rows``
    rows: the windows' part ``lam / (2 - lam) / m``, the reference's (and a benign offset's)
    ``1 / n + benign`` (:func:`tasksim.drift.sequential.ewma_scale` with ``W = 1``). It is the
    largest share of any step (``W`` grows to 1 faster than the windows' part), so a threshold at
    it holds from the first window on."""
    window = lam / (2.0 - lam) / max(int(window_rows), 1)
    return reference_share(window, 1.0 / max(int(reference_rows), 1) + float(benign))


def ewma_thresholds_given_reference(root: np.ndarray, columns: int, rate: float, rho: float, *,
                                    delta: float = REFERENCE_DELTA, seed: int = 0,
                                    outer: int = OUTER_DRAWS, inner: int = INNER_DRAWS) -> tuple[float, float]:
    """(max |z| over the first ``columns`` coordinates, squared norm of the rest) thresholds of a
    standardised Gaussian vector ``sqrt(1 - rho) g_w + sqrt(rho) g_r`` (``g ~ N(0, root root^T)``)
    that hold ``rate / 2`` each given ``g_r`` for at least ``1 - delta`` of the ``g_r``.

    ``outer`` draws of the reference's offset ``g_r``; for each, the ``1 - rate / 2`` quantile of
    the statistic over ``inner`` window draws (the same draws for every offset) is the threshold
    that offset needs; the ``1 - delta`` quantile of those is returned. ``rho = 0`` gives the plain
    quantiles of :func:`tasksim.drift.sequential.ewma_thresholds` (up to Monte Carlo error)."""
    root = np.asarray(root, dtype=np.float64)
    rng = np.random.default_rng(seed + 13)
    g_r = rng.standard_normal((outer, root.shape[1])) @ root.T * math.sqrt(rho)
    g_w = rng.standard_normal((inner, root.shape[1])) @ root.T * math.sqrt(1.0 - rho)
    q = 1.0 - rate / 2.0
    k = min(inner - 1, max(0, math.floor(q * (inner - 1))))  # the inner quantile's rank (lower)
    top_cut = np.full(outer, float("inf"))
    if columns:
        w_cols = g_w[:, :columns]
        for i in range(outer):
            stat = np.abs(w_cols + g_r[i, :columns]).max(axis=1)
            top_cut[i] = np.partition(stat, k)[k]
    w_rest, r_rest = g_w[:, columns:], g_r[:, columns:]
    base = (w_rest * w_rest).sum(axis=1)
    cross = 2.0 * (w_rest @ r_rest.T)  # inner x outer
    quad = base[:, None] + cross + (r_rest * r_rest).sum(axis=1)[None, :]
    mmd_cut = np.partition(quad, k, axis=0)[k]
    return (float(np.quantile(top_cut, 1.0 - delta)) if columns else float("inf"),
            float(np.quantile(mmd_cut, 1.0 - delta)))
