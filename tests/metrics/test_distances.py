"""Distances between samples: references (numpy / scipy / POT / scikit-learn), properties, errors, devices."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tasksim.metrics.distances as dist
import tasksim.metrics.optimal_transport as otdd_mod
from tasksim.errors import MetricInputError
from tasksim.metrics import (
    domain_classifier_auc,
    frechet_distance,
    label_shift,
    median_bandwidth,
    mmd2,
    mmd_test,
    otdd,
)
from tests.metrics import reference_distances as ref

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]
FEW = settings(max_examples=6, deadline=None, derandomize=True)


def gauss(seed: int, n: int, d: int, shift: float = 0.0, scale: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)) * scale + shift


def labelled(seed: int, n: int, d: int, classes: int, shift: float = 0.0, spread: float = 2.0):
    g = np.random.default_rng(seed)
    means = np.random.default_rng(1234).normal(size=(classes, d)) * spread
    y = g.integers(0, classes, size=n)
    y[:classes] = np.arange(classes)  # every class present
    return means[y] + g.normal(size=(n, d)) + shift, y


# ------------------------------------------------------------------ MMD

def test_median_bandwidth_matches_scipy():
    x, y = gauss(0, 70, 4), gauss(1, 50, 4, 0.5)
    assert median_bandwidth(x, y) == pytest.approx(ref.median_bandwidth_ref(x, y), rel=1e-12)


@pytest.mark.parametrize("bandwidth", [None, 0.7, 3.0])
def test_mmd2_matches_reference(bandwidth):
    x, y = gauss(0, 80, 5), gauss(1, 60, 5, 0.3)
    bw = ref.median_bandwidth_ref(x, y) if bandwidth is None else bandwidth
    assert mmd2(x, y, bandwidth) == pytest.approx(ref.mmd2_unbiased_ref(x, y, bw), rel=1e-9, abs=1e-12)


def test_mmd2_median_path_is_the_general_path_at_the_median_bandwidth():
    # bandwidth=None below 2000 pooled rows takes one pooled distance matrix for the median and
    # the kernel sums; it must equal the general path given the same bandwidth
    x, y = gauss(11, 300, 24), gauss(12, 90, 24, shift=0.3)
    assert mmd2(x, y) == pytest.approx(mmd2(x, y, median_bandwidth(x, y)), rel=1e-10, abs=1e-13)
    assert mmd2(x[:7], y[:5]) == pytest.approx(mmd2(x[:7], y[:5], median_bandwidth(x[:7], y[:5])), rel=1e-10)


@pytest.mark.parametrize("m,n,d,shift", [(500, 100, 24, 0.3), (40, 90, 5, 0.0), (7, 5, 3, 2.0), (2, 3, 4, 0.5)])
def test_mmd2_with_a_self_block_is_the_median_path(m, n, d, shift):
    # x's own pairs from its kept block (sorted squared distances): the pooled median is an order
    # statistic of a union of two sorted arrays, x's kernel sum runs over the kept values; only
    # rounding may differ (x's pairs centred on x's mean instead of the pooled one)
    x, y = gauss(21, m, d), gauss(22, n, d, shift=shift, scale=1.2)
    block = dist.mmd2_self_block(x)
    assert block.rows == m and block.sorted_d2.shape == (m * (m - 1) // 2,) and block.nbytes >= 4 * m * (m - 1)
    assert bool((block.sorted_d2[1:] >= block.sorted_d2[:-1]).all())
    assert mmd2(x, y, x_block=block) == pytest.approx(mmd2(x, y), rel=1e-10, abs=1e-13)
    assert mmd2(x, y, x_block=block) == pytest.approx(ref.mmd2_unbiased_ref(x, y, ref.median_bandwidth_ref(x, y)),
                                                      rel=1e-9, abs=1e-12)
    assert mmd2(x, y, 0.9, x_block=block) == mmd2(x, y, 0.9)  # a given bandwidth ignores the block


def test_mmd2_self_block_with_tied_and_duplicated_rows():
    # duplicated rows (zero distances) and ties across the two sides: the order statistics still match
    base = np.round(gauss(23, 30, 3), 1)
    x, y = np.vstack([base, base[:10]]), np.vstack([base[5:25], base[:3]])
    assert mmd2(x, y, x_block=dist.mmd2_self_block(x)) == pytest.approx(mmd2(x, y), rel=1e-10, abs=1e-13)


def test_kth_of_union_is_the_order_statistic_of_the_concatenation():
    g = np.random.default_rng(5)
    for na, nb in [(1, 1), (1, 9), (9, 1), (50, 70), (200, 3), (3, 200)]:
        # ties within and across the two arrays; b unsorted
        a, b = np.sort(g.integers(0, 20, na).astype(float)), g.integers(0, 20, nb).astype(float)
        both = np.sort(np.concatenate([a, b]))
        for r in range(1, na + nb + 1):
            for r2 in (r, min(r + 1, na + nb)):
                assert dist._kth_of_union(a, b, (r, r2)) == (both[r - 1], both[r2 - 1])


def test_mmd2_self_block_refuses_other_rows():
    x, y = gauss(24, 30, 4), gauss(25, 20, 4)
    with pytest.raises(MetricInputError, match="other rows"):
        mmd2(x + 1.0, y, x_block=dist.mmd2_self_block(x))
    with pytest.raises(MetricInputError, match="made for 30 rows"):
        mmd2(x[:20], y, x_block=dist.mmd2_self_block(x))
    with pytest.raises(MetricInputError, match="self block needs"):
        dist.mmd2_self_block(gauss(26, 2000, 2))


def test_mmd2_chunking_gives_the_same_sum(monkeypatch):
    x, y = gauss(0, 97, 3), gauss(1, 53, 3, 0.4)
    full = mmd2(x, y, 1.3)
    monkeypatch.setattr(dist, "_CHUNK_ELEMS", 300)  # tiles of 7 rows x 40 columns
    monkeypatch.setattr(dist, "_TILE_COLS", 40)
    assert mmd2(x, y, 1.3) == pytest.approx(full, rel=1e-10, abs=1e-13)
    assert mmd2(x, y, 1.3) == pytest.approx(ref.mmd2_unbiased_ref(x, y, 1.3), rel=1e-9)


def test_median_heuristic_subsamples_large_samples_deterministically():
    x, y = gauss(0, 1500, 3), gauss(1, 1500, 3)
    a, b = median_bandwidth(x, y), median_bandwidth(x, y)
    assert a == b
    assert a == pytest.approx(ref.median_bandwidth_ref(x, y), rel=0.03)


def test_mmd_test_statistic_and_pvalue():
    x, y = gauss(0, 40, 3), gauss(1, 40, 3, 0.25)
    bw = ref.median_bandwidth_ref(x, y)
    stat, p = mmd_test(x, y, permutations=400, seed=3)
    assert stat == pytest.approx(ref.mmd2_unbiased_ref(x, y, bw), rel=1e-9)
    p_ref = ref.mmd_permutation_pvalue_ref(x, y, bw, 400, seed=5)
    assert abs(p - p_ref) < 0.12  # two Monte Carlo estimates of the same p-value
    assert 1 / 401 <= p <= 1.0


def test_mmd_test_separated_and_same():
    x = gauss(0, 60, 4)
    _, p_far = mmd_test(x, gauss(1, 60, 4, 3.0), permutations=99)
    assert p_far == pytest.approx(1 / 100)
    _, p_same = mmd_test(x, gauss(2, 60, 4), permutations=99)
    assert p_same > 0.05


def test_mmd_test_subsamples_when_pooled_sample_is_large(monkeypatch):
    monkeypatch.setattr(dist, "_PERM_MAX_POOLED", 100)
    x, y = gauss(0, 150, 3), gauss(1, 130, 3, 2.0)
    stat, p = mmd_test(x, y, permutations=50, seed=1)
    assert stat == pytest.approx(mmd2(x, y), rel=1e-12)  # the statistic uses all rows
    assert p == pytest.approx(1 / 51)
    assert mmd_test(x, y, permutations=50, seed=1) == (stat, p)


@FEW
@given(seed=st.integers(0, 10_000), n=st.integers(5, 40), d=st.integers(1, 6))
def test_mmd2_properties(seed, n, d):
    x, y = gauss(seed, n, d), gauss(seed + 1, n + 3, d, 0.5)
    # The U-statistic of a sample with itself is slightly negative: -2/m <= MMD^2_u(x, x) <= 0.
    self_val = mmd2(x, x, 1.0)
    assert -2.0 / n - 1e-12 <= self_val <= 1e-12
    assert mmd2(x, y) == pytest.approx(mmd2(y, x), rel=1e-10, abs=1e-13)
    assert mmd2(x, y, 2.0) == pytest.approx(mmd2(y, x, 2.0), rel=1e-10, abs=1e-13)


# ------------------------------------------------------------------ Frechet

@pytest.mark.parametrize("n,d", [(200, 6), (40, 3), (12, 20), (30, 120)])
def test_frechet_matches_sqrtm_reference(n, d):
    x, y = gauss(0, n, d, scale=1.5), gauss(1, n + 5, d, 0.4) @ np.random.default_rng(2).normal(size=(d, d))
    expected = ref.frechet_ref(x, y)
    assert frechet_distance(x, y) == pytest.approx(expected, rel=1e-6, abs=1e-8 * (1 + abs(expected)))


def test_frechet_one_dimension_closed_form():
    x, y = gauss(0, 300, 1), gauss(1, 200, 1, 2.0, 3.0)
    sx, sy = x.std(ddof=1), y.std(ddof=1)
    expected = (x.mean() - y.mean()) ** 2 + (sx - sy) ** 2
    assert frechet_distance(x[:, 0], y[:, 0]) == pytest.approx(expected, rel=1e-10)


@FEW
@given(seed=st.integers(0, 10_000), n=st.integers(3, 60), d=st.integers(1, 8))
def test_frechet_properties(seed, n, d):
    x, y = gauss(seed, n, d), gauss(seed + 1, n, d, 0.3)
    assert frechet_distance(x, y) >= 0.0
    tr = float(np.trace(np.atleast_2d(np.cov(x, rowvar=False))))
    assert frechet_distance(x, x) <= 1e-6 * (1.0 + tr)
    assert frechet_distance(x, y) == pytest.approx(frechet_distance(y, x), rel=1e-6, abs=1e-8)


# ------------------------------------------------------------------ OTDD

@pytest.mark.parametrize("n1,n2,d", [(90, 70, 4), (14, 11, 9)])  # QR factors; low-rank data factors
def test_bures_label_cost_matches_sqrtm(n1, n2, d):
    x, y = labelled(0, n1, d, 3)
    x2, y2 = labelled(1, n2, d, 2, shift=0.5)
    rank = otdd_mod._factor_rank(np.bincount(y).tolist() + np.bincount(y2).tolist(), d)
    assert rank == d if d == 4 else rank < d
    means, f1, t1 = otdd_mod._class_gaussians(torch.as_tensor(x), torch.as_tensor(y), 3, rank)
    means2, f2, t2 = otdd_mod._class_gaussians(torch.as_tensor(x2), torch.as_tensor(y2), 2, rank)
    w = otdd_mod._bures_label_cost(torch.cat([means, means2]), torch.cat([f1, f2]), torch.cat([t1, t2])).numpy()
    g1, g2 = ref.class_gaussians_ref(x, y), ref.class_gaussians_ref(x2, y2)
    gs = [g1[c] for c in range(3)] + [g2[c] for c in range(2)]
    for i in range(5):
        for j in range(5):
            expected = 0.0 if i == j else ref.bures_w2_ref(*gs[i], *gs[j])
            assert w[i, j] == pytest.approx(expected, rel=1e-7, abs=1e-8 * (1 + expected))


@pytest.mark.parametrize("dtype,rel", [(torch.float64, 1e-6), (torch.float32, 1e-4)])
def test_otdd_matches_pot_sinkhorn_divergence(dtype, rel):
    xs, ys = labelled(0, 40, 4, 3)
    xt, yt = labelled(1, 35, 4, 3, shift=0.6)
    expected = ref.otdd_ref(xs, ys, xt, yt, reg=0.1)
    got = otdd(xs, ys, xt, yt, reg=0.1, tol=1e-7, sinkhorn_dtype=dtype)
    assert got == pytest.approx(expected, rel=rel)


def test_otdd_explicit_epsilon_matches_pot():
    xs, ys = labelled(2, 40, 3, 2)
    xt, yt = labelled(3, 45, 3, 3, shift=-0.4)
    expected = ref.otdd_ref(xs, ys, xt, yt, eps=2.0)
    assert otdd(xs, ys, xt, yt, epsilon=2.0, tol=1e-7, sinkhorn_dtype=torch.float64) == pytest.approx(expected, rel=1e-6)


def test_otdd_small_epsilon_approaches_exact_ot():
    xs, ys = labelled(4, 50, 3, 3)
    xt, yt = labelled(5, 50, 3, 3, shift=0.8)
    exact = ref.otdd_ref(xs, ys, xt, yt, exact=True)
    # Debiased entropic OT -> exact OT as eps -> 0 (Feydy et al. 2019); 1.6% below at this eps.
    got = otdd(xs, ys, xt, yt, reg=0.005, tol=1e-5, sinkhorn_dtype=torch.float64, max_iter=5000)
    assert got == pytest.approx(exact, rel=0.025)


def test_otdd_labels_matched_within_side_only():
    xs, ys = labelled(0, 60, 3, 3)
    xt, yt = labelled(1, 60, 3, 3, shift=0.3)
    names = np.array(["cat", "dog", "eel"])[yt]
    assert otdd(xs, ys, xt, names) == pytest.approx(otdd(xs, ys, xt, yt), rel=1e-6)
    assert otdd(xs, ys * 10 + 7, xt, yt) == pytest.approx(otdd(xs, ys, xt, yt), rel=1e-6)


def test_otdd_subsampling_is_seeded():
    xs, ys = labelled(0, 150, 3, 3)
    xt, yt = labelled(1, 130, 3, 3, shift=0.5)
    a = otdd(xs, ys, xt, yt, max_samples=60, seed=1)
    assert a == otdd(xs, ys, xt, yt, max_samples=60, seed=1)
    assert a != otdd(xs, ys, xt, yt, max_samples=60, seed=2)
    assert otdd(xs, ys, xt, yt, max_samples=150) == otdd(xs, ys, xt, yt, max_samples=None)


def test_otdd_singleton_class_and_single_class():
    xs, ys = labelled(0, 40, 3, 2)
    xt, yt = labelled(1, 40, 3, 2, shift=0.5)
    ys = ys.copy()
    ys[0] = 9  # a class with one sample: zero covariance
    assert np.isfinite(otdd(xs, ys, xt, yt))
    assert otdd(xs, np.zeros(40, int), xt, np.zeros(40, int)) > 0.0


@settings(max_examples=4, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), d=st.integers(1, 5), classes=st.integers(1, 4))
def test_otdd_properties(seed, d, classes):
    xs, ys = labelled(seed, 50, d, classes)
    xt, yt = labelled(seed + 1, 45, d, classes, shift=0.3)
    scale = float(np.mean(np.sum((xs[:, None] - xs[None]) ** 2, -1)))
    raw_self = otdd_mod._otdd_details(xs, ys, xs, ys, tol=1e-4)["value"]
    assert abs(raw_self) <= 1e-4 * scale
    ab, ba = otdd(xs, ys, xt, yt, tol=1e-4), otdd(xt, yt, xs, ys, tol=1e-4)
    assert ab == pytest.approx(ba, rel=1e-3, abs=1e-4 * scale)
    # Translating a dataset by s moves every sample and every class mean by s, so with the
    # debiased divergence OTDD(D, D + s) = 2 ||s||^2 exactly (the potentials absorb the linear terms).
    direction = np.random.default_rng(seed).normal(size=d)
    direction /= np.linalg.norm(direction)
    values = [otdd(xs, ys, xs + t * direction, ys, tol=1e-4) for t in (0.0, 0.5, 1.5, 3.0)]
    assert values[0] <= 1e-4 * scale
    assert all(a < b for a, b in itertools.pairwise(values))
    for t, v in zip((0.5, 1.5, 3.0), values[1:]):
        assert v == pytest.approx(2 * t * t, rel=2e-3)


def test_otdd_grows_with_shift_between_different_samples():
    xs, ys = labelled(10, 80, 3, 3)
    xt, yt = labelled(11, 80, 3, 3)
    values = [otdd(xs, ys, xt + s, yt) for s in (0.0, 0.5, 1.0, 2.0, 4.0)]
    assert all(a < b for a, b in itertools.pairwise(values))


def test_otdd_log_and_absorb_modes_agree():
    xs, ys = labelled(12, 50, 4, 3)
    xt, yt = labelled(13, 40, 4, 2, shift=0.4)
    for reg in (0.1, 0.02):
        a = otdd_mod._otdd_details(xs, ys, xt, yt, reg=reg, sinkhorn_mode="log", tol=1e-5, max_iter=3000)
        b = otdd_mod._otdd_details(xs, ys, xt, yt, reg=reg, sinkhorn_mode="absorb", tol=1e-5, max_iter=3000)
        assert a["converged"] and b["converged"]
        assert b["value"] == pytest.approx(a["value"], rel=1e-5)
        assert b["kernel_rebuilds"] >= 3


# ------------------------------------------------------------------ domain classifier

@pytest.mark.parametrize("shift", [0.0, 0.3, 1.0])
def test_domain_auc_matches_sklearn(shift):
    x, y = gauss(0, 120, 5), gauss(1, 100, 5, shift)
    assert domain_classifier_auc(x, y, folds=4, seed=3) == pytest.approx(
        ref.domain_auc_ref(x, y, folds=4, seed=3), abs=1e-3)


def test_domain_auc_regularisation_matches_sklearn():
    x, y = gauss(0, 60, 12), gauss(1, 70, 12, 0.5)
    assert domain_classifier_auc(x, y, folds=3, c=0.05) == pytest.approx(
        ref.domain_auc_ref(x, y, folds=3, c=0.05), abs=1e-3)


@pytest.mark.parametrize("n,d", [(40, 300), (400, 300)])
def test_domain_auc_wide_features_match_sklearn(n, d):
    # more features than Newton's limit: fitted in the training rows' span (exact), by Newton when
    # that span is narrow (n=40) and by L-BFGS when it is not (n=400)
    x, y = gauss(0, n, d), gauss(1, n + 10, d, 0.08)
    assert domain_classifier_auc(x, y, folds=3, seed=1, max_dim=None) == pytest.approx(
        ref.domain_auc_ref(x, y, folds=3, seed=1), abs=2e-3)


def test_domain_auc_in_leading_components_matches_sklearn_on_them():
    # 16 strong directions over weak noise: the leading components are well determined
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    mix = np.random.default_rng(9).normal(size=(16, 200))
    x = gauss(0, 150, 16, scale=3.0) @ mix + gauss(10, 150, 200, scale=0.05)
    y = gauss(1, 160, 16, 0.1, 3.0) @ mix + gauss(11, 160, 200, scale=0.05)
    z = np.vstack([x, y])
    zc = z - z.mean(0)
    axes = np.linalg.svd(zc, full_matrices=False)[2][:15]
    lab = np.r_[np.zeros(len(x), dtype=int), np.ones(len(y), dtype=int)]
    fold = ref.stratified_folds_ref(lab, 3, 2)
    aucs = []
    for k in range(3):  # reference: 15 exact components + the training fold's mean difference
        tr, te = fold != k, fold == k
        diff = zc[tr][lab[tr] == 1].mean(0) - zc[tr][lab[tr] == 0].mean(0)
        diff -= axes.T @ (axes @ diff)
        basis = np.vstack([axes, diff / np.linalg.norm(diff)])
        ptr, pte = zc[tr] @ basis.T, zc[te] @ basis.T
        scaler = StandardScaler().fit(ptr)
        clf = LogisticRegression(C=1.0, tol=1e-12, max_iter=100000).fit(scaler.transform(ptr), lab[tr])
        aucs.append(roc_auc_score(lab[te], clf.decision_function(scaler.transform(pte))))
    assert domain_classifier_auc(x, y, folds=3, seed=2, max_dim=16) == pytest.approx(float(np.mean(aucs)), abs=2e-3)
    # a duplicate is never "more different" than chance
    assert domain_classifier_auc(x, x.copy(), max_dim=16) <= 0.5
    # a shift off the leading components is seen through the mean-difference direction
    assert domain_classifier_auc(x, x + 1.0, max_dim=16) > 0.95  # 0.28 on the leading components alone
    null = [domain_classifier_auc(x, gauss(20 + s, 150, 16, 0.0, 3.0) @ mix + gauss(30 + s, 150, 200, scale=0.05),
                                  seed=s, max_dim=16) for s in range(3)]
    assert 0.35 < float(np.mean(null)) < 0.65


def test_leading_components_span_the_pca_subspace():
    from tasksim.metrics._kernels import leading_components, pca_basis

    mix = np.random.default_rng(3).normal(size=(8, 120))
    x = torch.from_numpy(gauss(0, 300, 8, scale=np.arange(8, 0, -1.0)) @ mix + gauss(1, 300, 120, scale=0.01))
    _, approx = leading_components(x, 8, seed=0)
    _, exact = pca_basis(x, 8)
    # the same subspace: the projection of each exact axis onto the approximate span keeps its norm
    assert torch.linalg.norm(approx @ exact.T, dim=0).min() > 0.999
    again = leading_components(x, 8, seed=0)[1]
    assert torch.equal(again, approx)


def test_frechet_low_rank_path_equals_full_path():
    # fewer rows than dimensions: the nuclear-norm path against the D x D eigendecomposition path
    x, y = gauss(3, 25, 80, 1.2), gauss(4, 30, 80, 0.5)
    xc, yc = x - x.mean(0), y - y.mean(0)
    sx, sy = xc.T @ xc / 24, yc.T @ yc / 29
    w, v = np.linalg.eigh(sx)
    half = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(half @ sy @ half), 0, None)).sum()
    full = ((x.mean(0) - y.mean(0)) ** 2).sum() + np.trace(sx) + np.trace(sy) - 2 * tr_sqrt
    assert frechet_distance(x, y) == pytest.approx(full, rel=1e-7)  # the D x D path rounds its zero eigenvalues


def test_domain_auc_separable_data_converges():
    x, y = gauss(0, 80, 3), gauss(1, 80, 3, 6.0)
    assert domain_classifier_auc(x, y) == 1.0


def _domain_auc_fold_by_fold(x, y, folds: int, seed: int, c: float, max_dim: int | None) -> float:
    """The domain classifier written fold by fold, as before its folds were batched: each fold's rows
    projected on the components and that fold's mean difference, fitted alone by Newton's method
    (float64 Hessian, from zero)."""
    from tasksim.metrics._kernels import leading_components, stratified_folds

    z = torch.cat([torch.as_tensor(x), torch.as_tensor(y)]).to(torch.float64)
    lab = torch.cat([torch.zeros(len(x)), torch.ones(len(y))]).long()
    fold = torch.as_tensor(stratified_folds(lab.numpy(), folds, seed))
    axes = None
    if max_dim is not None and z.shape[1] > max_dim:
        centre, axes = leading_components(z, max_dim - 1, seed=seed)
        z = z - centre
    aucs = []
    for k in range(folds):
        tr, te = fold != k, fold == k
        ztr, zte = z[tr], z[te]
        if axes is not None:
            diff = ztr[lab[tr] == 1].mean(0) - ztr[lab[tr] == 0].mean(0)
            diff = diff - axes.T @ (axes @ diff)
            basis = torch.cat([axes, (diff / torch.linalg.vector_norm(diff))[None]])
            ztr, zte = ztr @ basis.T, zte @ basis.T
        mu, sd = ztr.mean(0), ztr.std(0, unbiased=False)
        ztr, zte = (ztr - mu) / sd, (zte - mu) / sd
        w = dist._fit_logistic(ztr, lab[tr].to(torch.float64), c)
        aucs.append(dist._auc(zte @ w[:-1] + w[-1], lab[te].bool()))
    return float(np.mean(aucs))


@pytest.mark.parametrize("n,m,d,shift,folds,c", [
    (500, 100, 384, 0.05, 5, 1.0),  # the cycle's shape: 63 components + each fold's mean difference
    (80, 60, 384, 0.3, 3, 0.1),
    (120, 100, 5, 0.2, 5, 1.0),  # narrow: every feature, no components
    (60, 70, 12, 3.0, 4, 0.05),  # nearly separable
])
def test_domain_auc_batched_folds_equal_the_fold_by_fold_fits(n, m, d, shift, folds, c):
    # the components projected once, the folds' directions from per-(class, fold) sums and the
    # folds' Newton fits in one batch (float32 Hessian products, float64 gradients) give each
    # fold's fit of the fold-by-fold computation
    x, y = gauss(n, n, d), gauss(m, m, d, shift, 1.1)
    for seed in (0, 1):
        assert domain_classifier_auc(x, y, folds=folds, seed=seed, c=c) == pytest.approx(
            _domain_auc_fold_by_fold(x, y, folds, seed, c, dist.DOMAIN_MAX_DIM), abs=1e-12)


@pytest.mark.parametrize("c,scale,seps,rtol", [
    (0.5, False, (0.4, 0.4, 3.0), 1e-9),  # float32 Hessian products: the same optimum, the path rounded
    (1e6, True, (0.4, 0.4, 3.0), 1e-7),  # weak penalty, scales 1 to 1000: float64 products
    (1e9, True, (3.0, 3.0, 3.0), 1e-12),  # a nearly flat optimum: float32 products stopped 5e-6 away here
])
def test_batched_newton_equals_one_problem_newton(c, scale, seps, rtol):
    # problems of different row counts (padded), one nearly separable: each takes its own steps
    g = torch.Generator().manual_seed(5)
    sizes, d = (90, 75, 60), 8
    z = torch.zeros(3, 90, d, dtype=torch.float64)
    t = torch.zeros(3, 90, dtype=torch.float64)
    wt = torch.zeros(3, 90, dtype=torch.float64)
    scales = torch.logspace(0, 3, d, dtype=torch.float64) if scale else torch.ones(d, dtype=torch.float64)
    alone = []
    for k, n in enumerate(sizes):
        tk = (torch.rand(n, generator=g) < 0.4).to(torch.float64)
        zk = torch.randn(n, d, generator=g, dtype=torch.float64) * scales + seps[k] * tk.unsqueeze(1)
        z[k, :n], t[k, :n], wt[k, :n] = zk, tk, 1.0
        alone.append(dist._fit_logistic(zk, tk, c))
    batched = dist._fit_logistic_batched(z, t, wt, c)
    for k in range(3):
        assert torch.allclose(batched[k], alone[k], rtol=rtol, atol=rtol * float(alone[k].abs().max()))


@FEW
@given(seed=st.integers(0, 10_000))
def test_domain_auc_properties(seed):
    x = gauss(seed, 150, 3)
    assert abs(domain_classifier_auc(x, gauss(seed + 1, 150, 3), seed=seed) - 0.5) < 0.15
    assert domain_classifier_auc(x, gauss(seed + 2, 150, 3, 3.0), seed=seed) > 0.99


# ------------------------------------------------------------------ label shift

@pytest.mark.parametrize("ys,yt", [
    ([0, 1, 1, 2, 2, 2], [0, 0, 1, 2]),
    (["a", "b", "b"], ["b", "c", "c", "c"]),
    ([3, 3, 3], [7, 7]),
    (np.array([5, 1, 1, 9]), np.array([1, 9, 9, 9, 5, 2])),
])
def test_label_shift_matches_scipy(ys, yt):
    assert label_shift(ys, yt) == pytest.approx(ref.label_shift_ref(ys, yt), abs=1e-12)


def test_label_shift_bounds_and_tensor_input():
    assert label_shift([1, 1], [2, 2]) == pytest.approx(1.0)
    assert label_shift(torch.tensor([0, 1, 1]), np.array([1, 0, 1])) == pytest.approx(0.0, abs=1e-15)


@FEW
@given(counts=st.lists(st.integers(0, 6), min_size=1, max_size=6).filter(lambda c: sum(c) > 0),
       other=st.lists(st.integers(0, 6), min_size=1, max_size=6).filter(lambda c: sum(c) > 0),
       rep=st.integers(1, 3))
def test_label_shift_properties(counts, other, rep):
    ys = np.repeat(np.arange(len(counts)), counts)
    yt = np.repeat(np.arange(len(other)), other)
    same = np.random.default_rng(0).permutation(np.tile(ys, rep))
    assert label_shift(ys, same) == pytest.approx(0.0, abs=1e-12)
    assert label_shift(ys, yt) == pytest.approx(label_shift(yt, ys), abs=1e-15)
    assert 0.0 <= label_shift(ys, yt) <= 1.0


# ------------------------------------------------------------------ errors

def test_errors_are_metric_input_errors():
    x = gauss(0, 20, 3)
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(MetricInputError, match="NaN"):
        mmd2(bad, x)
    with pytest.raises(MetricInputError, match="NaN"):
        frechet_distance(x, np.where(bad > 0, np.inf, bad))
    with pytest.raises(MetricInputError, match="widths must match"):
        mmd2(x, gauss(1, 20, 4))
    with pytest.raises(MetricInputError, match="widths must match"):
        otdd(x, np.zeros(20, int), gauss(1, 20, 4), np.zeros(20, int))
    with pytest.raises(MetricInputError, match="at least 2"):
        frechet_distance(x[:1], x)
    with pytest.raises(MetricInputError, match="lengths must match"):
        otdd(x, np.zeros(19, int), x, np.zeros(20, int))
    with pytest.raises(MetricInputError, match="bandwidth"):
        mmd2(np.ones((5, 2)), np.ones((4, 2)))
    with pytest.raises(MetricInputError, match="bandwidth"):
        mmd2(x, x, bandwidth=-1.0)
    with pytest.raises(MetricInputError, match="folds"):
        domain_classifier_auc(x[:3], x, folds=5)
    with pytest.raises(MetricInputError, match="permutations"):
        mmd_test(x, x, permutations=0)
    with pytest.raises(MetricInputError, match="NaN"):
        label_shift([1.0, float("nan")], [1.0])
    with pytest.raises(MetricInputError, match="incompatible"):
        label_shift([1, 2], ["1", "2"])
    with pytest.raises(MetricInputError, match="epsilon"):
        otdd(x, np.zeros(20, int), x, np.zeros(20, int), epsilon=0.0)


# ------------------------------------------------------------------ devices and dtypes

@pytest.mark.parametrize("device", DEVICES)
def test_tensor_inputs_follow_device(device):
    x, y = gauss(0, 64, 4), gauss(1, 48, 4, 0.4)
    ys_, yt_ = np.arange(64) % 3, np.arange(48) % 2
    tx = torch.as_tensor(x, dtype=torch.float32, device=device)
    ty = torch.as_tensor(y, dtype=torch.float32, device=device)
    x32, y32 = x.astype(np.float32), y.astype(np.float32)
    assert mmd2(tx, ty) == pytest.approx(mmd2(x32, y32), rel=1e-9)
    assert mmd_test(tx, ty, permutations=50)[1] == mmd_test(x32, y32, permutations=50)[1]
    assert frechet_distance(tx, y32) == pytest.approx(frechet_distance(x32, y32), rel=1e-9)
    labels_s = torch.as_tensor(ys_, device=device)
    got = otdd(tx, labels_s, ty, torch.as_tensor(yt_, device=device), sinkhorn_dtype=torch.float64)
    assert got == pytest.approx(otdd(x32, ys_, y32, yt_, sinkhorn_dtype=torch.float64), rel=1e-6)
    assert domain_classifier_auc(tx, ty) == pytest.approx(domain_classifier_auc(x32, y32), abs=1e-9)
    assert label_shift(labels_s, yt_) == pytest.approx(label_shift(ys_, yt_))
    assert isinstance(mmd2(tx, ty), float)
