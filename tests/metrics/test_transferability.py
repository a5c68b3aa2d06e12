"""Transferability measures against independent numpy/scipy/scikit-learn references, properties,
errors, the shared-statistics design and the batched multi-source path."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tasksim.errors import MetricInputError
from tasksim.metrics import _kernels, _validate
from tasksim.metrics import transfer as T
from tasksim.metrics.transfer import _linalg, evidence, extra, stats

from . import reference_numpy as R

CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="CUDA not available"))]
FAST = settings(max_examples=5, deadline=None, derandomize=True)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small correctness checks: one BLAS/OpenMP thread. On a busy 2-core machine two spinning
    threads per library (torch OpenMP, numpy OpenBLAS) slowed single calls from 0.1 s to 10 s."""
    from threadpoolctl import threadpool_limits

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(old)


def make_data(n: int, d: int, c: int, *, sep: float = 1.5, shift: float = 0.5, scale: float = 1.0,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian classes (random means, ``sep`` apart) with every class holding >= 2 samples."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    y[: 2 * c] = np.repeat(np.arange(c), 2)
    means = rng.standard_normal((c, d)) * sep
    f = (means[y] + rng.standard_normal((n, d)) + shift) * scale
    return f, y


def probs_for(y: np.ndarray, z: int, strength: float, seed: int = 0) -> np.ndarray:
    """Source-class probabilities informative about y (source class = y mod z) with Dirichlet noise."""
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(z), len(y))
    p[np.arange(len(y)), y % z] += strength
    return p / p.sum(1, keepdims=True)


# =============================================================================================
# LogME
# =============================================================================================

@pytest.mark.parametrize("n,d,c,scale", [(200, 20, 4, 1.0), (60, 100, 3, 1.0), (300, 8, 5, 100.0),
                                         (150, 12, 3, 0.01), (40, 40, 2, 1.0)])
def test_logme_matches_dense_reference(n, d, c, scale):
    f, y = make_data(n, d, c, scale=scale, seed=n + d)
    assert T.logme(f, y) == pytest.approx(R.logme_dense(f, y), rel=1e-7, abs=1e-9)


def test_logme_settled_root_equals_the_root_searched_to_tol(monkeypatch):
    # the root search stops once its estimate settles at the gap's rounding floor: the values equal
    # a search that runs until the gap or the bracket is within tol (settling disabled)
    cases = [make_data(n, d, c, scale=s, seed=n + d + c) for n, d, c, s in
             [(100, 128, 5, 1.0), (60, 32, 3, 3.0), (300, 8, 5, 100.0), (40, 400, 4, 1.0), (63, 64, 5, 0.3)]]
    cases.append((np.maximum(cases[0][0], 0.0), cases[0][1]))  # relu-like features, as a head's
    settled = [T.logme(f, y) for f, y in cases]
    monkeypatch.setattr(evidence, "_SETTLED", 0.0)
    for (f, y), value in zip(cases, settled):
        assert value == pytest.approx(T.logme(f, y), rel=1e-10, abs=1e-12)


def test_logme_large_offset_matches_reference():
    # LogME uses raw (uncentred) features: the mean enters F^T F as a rank-one update.
    f, y = make_data(200, 10, 3, shift=100.0, seed=3)
    assert T.logme(f, y) == pytest.approx(R.logme_dense(f, y), rel=1e-6)


def test_logme_close_to_thuml_port_when_n_greater_than_d():
    f, y = make_data(400, 16, 4, seed=1)
    # The reference stops at a 1e-3 relative change of alpha/beta; the evidence is flat there.
    assert T.logme(f, y) == pytest.approx(R.logme_thuml(f, y), abs=1e-4)


def test_logme_pure_noise_n_less_than_d():
    rng = np.random.default_rng(0)
    f = rng.standard_normal((300, 1024))
    y = rng.integers(0, 10, 300)
    ours = T.logme(f, y)
    converged = R.logme_svd(f, y)                 # corrected, iterated to convergence
    assert ours == pytest.approx(converged, rel=1e-7)
    assert -0.5 < ours < 0.0
    # The uncorrected reference code (thuml/LogME #23) scores noise as highly transferable.
    assert R.logme_thuml(f, y) > 10.0
    # With the missing term added but the reference's 11-step early stop (the NOTES' "about -0.34"),
    # alpha/beta is still far from the fixed point: a lower evidence than the maximum.
    truncated = R.logme_svd(f, y, iters=11, stop=1e-3)
    assert -0.45 < truncated < ours


def test_cpu_kernels_match_plain_linear_algebra():
    # Symmetric Gram (numpy syrk on CPU, both orientations) and blocked Cholesky log-determinant (CPU, D >= 512).
    z = torch.randn(2, 150, 1100, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    g = _linalg._gram(z)
    torch.testing.assert_close(g, z.transpose(1, 2) @ z, rtol=1e-12, atol=1e-9)
    assert torch.equal(g, g.transpose(1, 2))
    torch.testing.assert_close(_linalg._gram(z, dual=True), z @ z.transpose(1, 2), rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(_linalg._gram(z[:, 10:60]), z[:, 10:60].transpose(1, 2) @ z[:, 10:60], rtol=1e-12, atol=1e-9)
    # scaled, upper triangle only (the per-class Grams of TransRate), and the batched-product path
    # that CUDA takes (reached on CPU by a float32 input)
    up = _linalg._gram(z, alpha=0.5, upper_only=True)
    torch.testing.assert_close(up.triu(), (0.5 * z.transpose(1, 2) @ z).triu(), rtol=1e-12, atol=1e-9)
    z32 = z.float()
    torch.testing.assert_close(_linalg._gram(z32, alpha=0.5), 0.5 * z32.transpose(1, 2) @ z32)
    torch.testing.assert_close(_linalg._gram(z32, dual=True), z32 @ z32.transpose(1, 2))
    a = _linalg._gram(z[:, :, :600]) / 150.0
    expect = torch.linalg.slogdet(a + torch.eye(600, dtype=torch.float64))[1]
    torch.testing.assert_close(_linalg._logdet_identity_plus(a), expect, rtol=1e-11, atol=1e-9)
    big, y = make_data(1200, 800, 3, seed=3)
    assert T.transrate(big, y) == pytest.approx(R.transrate(big, y), rel=1e-9)
    assert T.hscore(big, y) == pytest.approx(R.hscore(big, y), rel=1e-7)
    assert T.logme(big, y) == pytest.approx(R.logme_svd(big, y), rel=1e-7)


# =============================================================================================
# H-scores, TransRate, GBC
# =============================================================================================

@pytest.mark.parametrize("n,d,c", [(300, 12, 4), (500, 30, 6), (120, 5, 2)])
def test_hscore_matches_reference(n, d, c):
    f, y = make_data(n, d, c, seed=n)
    assert T.hscore(f, y) == pytest.approx(R.hscore(f, y), rel=1e-8)


def test_hscore_saturates_when_n_less_than_d():
    f, y = make_data(50, 80, 4, seed=2)
    assert T.hscore(f, y) == pytest.approx(3.0, abs=1e-6)
    assert T.hscore(f, y) == pytest.approx(R.hscore(f, y), abs=1e-6)


@pytest.mark.parametrize("n,d,c", [(300, 12, 4), (60, 100, 3), (400, 40, 5)])
def test_hscore_regularized_matches_sklearn_ledoit_wolf(n, d, c):
    from sklearn.covariance import ledoit_wolf_shrinkage

    f, y = make_data(n, d, c, seed=d)
    assert T.hscore_regularized(f, y) == pytest.approx(R.hscore_regularized(f, y), rel=1e-8)
    stats = T.precompute(f, y)
    ours = float(evidence._ledoit_wolf_shrinkage(stats)[0])
    assert ours == pytest.approx(ledoit_wolf_shrinkage(f - f.mean(0)), rel=1e-9)


@pytest.mark.parametrize("n,d,c", [(300, 12, 4), (60, 100, 3), (2000, 64, 40), (500, 10, 5)])
def test_transrate_matches_reference(n, d, c):
    # (2000, 64, 40): small classes take the n_c x n_c Gram path; (60, 100, 3): the N < D basis.
    f, y = make_data(n, d, c, seed=c)
    assert T.transrate(f, y) == pytest.approx(R.transrate(f, y), rel=1e-9)
    assert T.transrate(f, y, eps=1e-2) == pytest.approx(R.transrate(f, y, eps=1e-2), rel=1e-9)


def test_transrate_scale_dependent():
    # Scale cancels while every eigenvalue is >> eps; near eps it does not.
    f, y = make_data(300, 10, 3, seed=5)
    assert abs(T.transrate(1e-3 * f, y) - T.transrate(f, y)) > 0.1


@pytest.mark.parametrize("n,d,c,pca", [(300, 12, 4, 5), (300, 12, 4, None), (400, 100, 5, 64), (200, 8, 3, 64)])
def test_gbc_matches_reference(n, d, c, pca):
    f, y = make_data(n, d, c, sep=0.7, seed=d)
    assert T.gbc(f, y, pca_dim=pca) == pytest.approx(R.gbc(f, y, pca_dim=pca), rel=1e-8, abs=1e-12)


# =============================================================================================
# LEEP, NCE
# =============================================================================================

def test_leep_matches_reference():
    _, y = make_data(300, 2, 5, seed=7)
    theta = probs_for(y, 7, 1.0, seed=1)
    assert T.leep(theta, y) == pytest.approx(R.leep(theta, y), rel=1e-12)
    assert T.leep(torch.as_tensor(theta, dtype=torch.float32), y) == pytest.approx(R.leep(theta, y), rel=1e-5)


def test_nce_matches_reference_hard_and_probs():
    _, y = make_data(300, 2, 4, seed=8)
    rng = np.random.default_rng(0)
    z = np.where(rng.random(300) < 0.6, y + 3, rng.integers(0, 9, 300)) * 11   # arbitrary source ids
    assert T.nce(z, y) == pytest.approx(R.nce(z, y), rel=1e-12)
    theta = probs_for(y, 6, 0.5)
    assert T.nce(theta, y) == pytest.approx(R.nce(theta.argmax(1), y), rel=1e-12)
    assert T.nce(y, y) == pytest.approx(0.0, abs=1e-12)


def test_leep_rejects_logits():
    _, y = make_data(50, 2, 2)
    with pytest.raises(MetricInputError, match="probabilities"):
        T.leep(np.random.default_rng(0).standard_normal((50, 4)), y)


# =============================================================================================
# SFDA, PARC, kNN, linear probe, NLEEP
# =============================================================================================

@pytest.mark.parametrize("n,d,c", [(300, 8, 4), (200, 20, 3)])
def test_sfda_matches_reference(n, d, c):
    f, y = make_data(n, d, c, sep=0.6, seed=n)
    assert T.sfda(f, y) == pytest.approx(R.sfda(f, y), rel=1e-7)


@pytest.mark.parametrize("pca", [5, None])
@pytest.mark.parametrize("correlation", ["spearman", "pearson"])
def test_parc_matches_reference(pca, correlation):
    f, y = make_data(300, 12, 4, sep=0.6, seed=11)
    ours = T.parc(f, y, pca_dim=pca, correlation=correlation)
    assert ours == pytest.approx(R.parc(f, y, pca_dim=pca, correlation=correlation), rel=1e-8)


def test_parc_subsample_matches_reference():
    f, y = make_data(500, 12, 4, sep=0.6, seed=12)
    idx = _kernels.subsample_indices(500, 150, 3, torch.device("cpu")).numpy()
    assert T.parc(f, y, max_samples=150, seed=3, pca_dim=6) == pytest.approx(
        R.parc(f, y, pca_dim=6, idx=idx), rel=1e-8)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("k", [1, 4, 7])
def test_knn_matches_reference(metric, k):
    f, y = make_data(300, 6, 4, sep=0.5, seed=k)
    assert T.knn_accuracy(f, y, k=k, metric=metric) == pytest.approx(R.knn_loo_accuracy(f, y, k, metric), abs=1e-12)


def test_knn_query_subsample_matches_reference():
    f, y = make_data(400, 6, 4, sep=0.5, seed=2)
    q = _kernels.subsample_indices(400, 100, 5, torch.device("cpu")).numpy()
    assert T.knn_accuracy(f, y, k=5, max_queries=100, seed=5) == pytest.approx(
        R.knn_loo_accuracy(f, y, 5, "cosine", queries=q), abs=1e-12)


def test_knn_blocks_cover_all_rows(monkeypatch):
    f, y = make_data(300, 6, 4, sep=0.5, seed=9)
    full = T.knn_accuracy(f, y, k=3)
    monkeypatch.setattr(_kernels, "BLOCK_ELEMS", 1000)        # forces ~30 x 30 blocks
    assert T.knn_accuracy(f, y, k=3) == full


def test_linear_probe_matches_sklearn():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    f, y = make_data(400, 10, 4, sep=0.5, seed=13)
    folds = np.arange(400) % 4
    correct = 0
    for k in range(4):
        tr, te = folds != k, folds == k
        sc = StandardScaler().fit(f[tr])
        lr = LogisticRegression(C=1.0, tol=1e-10, max_iter=10000).fit(sc.transform(f[tr]), y[tr])
        correct += int((lr.predict(sc.transform(f[te])) == y[te]).sum())
    ours = T.linear_probe_accuracy(f, y, folds=folds)
    assert ours == pytest.approx(correct / 400, abs=0.01)
    assert 0.3 < T.linear_probe_accuracy(f, y, folds=5) <= 1.0


@pytest.mark.parametrize("cov_type", ["diag", "full"])
def test_gmm_em_matches_sklearn(cov_type):
    from sklearn.mixture import GaussianMixture

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal((80, 3)) + m for m in ([0, 0, 0], [3, 0, 0], [0, 3, 1])])
    m = 4
    w0 = np.full(m, 1.0 / m)
    mu0 = x[rng.choice(len(x), m, replace=False)]
    var0 = np.ones((m, 3)) if cov_type == "diag" else np.stack([np.eye(3)] * m)
    gm = GaussianMixture(m, covariance_type=cov_type, weights_init=w0, means_init=mu0,
                         precisions_init=1.0 / var0 if cov_type == "diag" else np.linalg.inv(var0),
                         max_iter=20, tol=0.0, reg_covar=1e-6)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm.fit(x)
    xt = torch.as_tensor(x)
    *_, post = extra._gmm_em(xt, torch.as_tensor(w0), torch.as_tensor(mu0), torch.as_tensor(var0),
                         cov_type=cov_type, max_iter=20, tol=0.0)
    np.testing.assert_allclose(post.numpy(), gm.predict_proba(x), atol=1e-8)


def test_nleep_deterministic_and_informative():
    f, y = make_data(300, 10, 3, sep=2.0, seed=14)
    a = T.nleep(f, y, seed=1)
    assert a == T.nleep(f, y, seed=1)
    assert a <= 0.0
    shuffled = np.random.default_rng(0).permutation(y)
    assert T.nleep(f, shuffled, seed=1) < a - 0.2
    assert math.isfinite(T.nleep(f, y, covariance_type="full", seed=0))


# =============================================================================================
# shared statistics and profiles
# =============================================================================================

def test_profile_equals_individual_calls():
    f, y = make_data(400, 20, 5, seed=15)
    theta = probs_for(y, 8, 0.7)
    prof = T.transferability_profile(f, y, theta, knn_max_queries=None)
    assert set(prof) == {"logme", "hscore", "hscore_regularized", "transrate", "gbc", "knn_accuracy",
                         "ridge_probe_accuracy", "lda_probe_accuracy", "leep", "nce"}
    single = {
        "logme": T.logme(f, y), "hscore": T.hscore(f, y), "hscore_regularized": T.hscore_regularized(f, y),
        "transrate": T.transrate(f, y), "gbc": T.gbc(f, y), "knn_accuracy": T.knn_accuracy(f, y),
        "ridge_probe_accuracy": T.ridge_probe_accuracy(f, y), "lda_probe_accuracy": T.lda_probe_accuracy(f, y),
        "leep": T.leep(theta, y), "nce": T.nce(theta, y),
    }
    for key, val in single.items():
        assert prof[key] == pytest.approx(val, rel=1e-10, abs=1e-12), key
    extra = T.transferability_profile(f, y, None, ["sfda", "parc", "nleep", "logme"])
    assert extra["sfda"] == pytest.approx(T.sfda(f, y), rel=1e-10)
    assert extra["parc"] == pytest.approx(T.parc(f, y), rel=1e-10)
    assert "leep" not in T.transferability_profile(f, y)


def test_feature_stats_reused_by_every_measure():
    f, y = make_data(300, 16, 4, seed=16)
    stats = T.precompute(f, y, transrate_eps=1e-4)
    assert stats.n_sources == 1 and stats.eigvecs.shape == (1, 16, 16)
    assert T.logme(stats) == pytest.approx(T.logme(f, y), rel=1e-12)
    assert T.transrate(stats) == pytest.approx(T.transrate(f, y), rel=1e-12)
    assert T.transrate(stats, eps=1e-3) == pytest.approx(T.transrate(f, y, eps=1e-3), rel=1e-12)
    assert T.gbc(stats, pca_dim=4) == pytest.approx(T.gbc(f, y, pca_dim=4), rel=1e-12)
    assert T.knn_accuracy(stats, k=3) == T.knn_accuracy(f, y, k=3)
    slim = T.precompute(f, y, transrate_eps=1e-4, keep_features=False)
    assert T.transrate(slim) == pytest.approx(T.transrate(f, y), rel=1e-12)
    with pytest.raises(MetricInputError):
        T.gbc(slim)
    with pytest.raises(MetricInputError, match="differ"):
        T.logme(stats, np.roll(y, 1))


def test_column_major_features_give_the_same_measures():
    # A Fortran-ordered input keeps its layout through the float64 copy; the BLAS call then copies.
    f, y = make_data(900, 560, 4, seed=22)
    fc = np.ascontiguousarray(f, dtype=np.float32)
    ff = np.asfortranarray(fc)
    for fn in (T.logme, T.transrate, T.hscore_regularized, T.gbc):
        assert fn(ff, y) == pytest.approx(fn(fc, y), rel=1e-12)


def test_chunked_statistics_match_the_in_memory_ones(monkeypatch):
    # Large inputs keep no float64 copy (precompute(keep_features=False) above _CHUNK_BYTES):
    # the row-block path must give the same statistics and measures as the in-memory one.
    f, y = make_data(1300, 40, 5, seed=21, shift=3.0)
    full = T.precompute(f, y)
    yt, c, counts = _validate.prep_labels(y, 1300, torch.device("cpu"))
    monkeypatch.setattr(stats, "_CONVERT_CHUNK_ELEMS", {"cpu": 97 * 40})   # 97-row blocks, a ragged last one
    chunked = stats._build_streamed(torch.as_tensor(f).unsqueeze(0), yt, c, counts)
    assert chunked.centred is None
    for name in ("mean", "class_means", "eigvals", "cov", "row_norm4", "trace", "frob2"):
        torch.testing.assert_close(getattr(chunked, name), getattr(full, name), rtol=1e-11, atol=1e-11)
    monkeypatch.setattr(stats, "_CHUNK_BYTES", 1)   # route the public measures through it
    assert T.logme(f, y) == pytest.approx(R.logme_svd(f, y), rel=1e-9)
    assert T.hscore(f, y) == pytest.approx(R.hscore(f, y), rel=1e-7)
    assert T.hscore_regularized(f, y) == pytest.approx(T.hscore_regularized(full), rel=1e-10)
    bad = f.copy()
    bad[7, 3] = np.nan
    with pytest.raises(MetricInputError, match="1 rows contain NaN"):
        T.logme(bad, y)


def _profile_many_cases(x, y, p):
    k, n, _ = x.shape
    chunks = [x[:, s:s + 70] for s in range(0, n, 70)]
    return {
        "tensor": T.profile_many(x, y, p),
        "tensor_streamed": T.profile_many(x, y, p, max_memory_bytes=1, chunk_rows=53),
        "list_of_sources": T.profile_many([x[i] for i in range(k)], y, list(p), max_memory_bytes=1),
        "list_of_chunks": T.profile_many(chunks, y, p),
        "callable": T.profile_many(lambda: iter(chunks), y, p),
        "one_shot": T.profile_many(iter(chunks), y, p),
    }


def test_profile_many_agrees_with_per_source_profiles():
    k, n, d, c = 4, 500, 24, 6
    _, y = make_data(n, 2, c, seed=17)
    x = np.stack([make_data(n, d, c, sep=s, seed=100 + i)[0] for i, s in enumerate([0.2, 0.6, 1.0, 2.0])])
    x[:, :, :] += (np.eye(c, d) * 2.0)[y][None] * np.array([0.0, 0.5, 1.0, 2.0])[:, None, None]
    p = np.stack([probs_for(y, 7, s, seed=i) for i, s in enumerate([0.0, 0.3, 1.0, 3.0])])
    per = [T.transferability_profile(x[i], y, p[i]) for i in range(k)]
    for name, res in _profile_many_cases(x, y, p).items():
        assert len(res) == k
        for i in range(k):
            two_pass = ("knn_accuracy", "ridge_probe_accuracy", "lda_probe_accuracy")
            expect = {m: v for m, v in per[i].items() if not (name == "one_shot" and m in two_pass)}
            assert set(res[i]) == set(expect), name
            for m, v in expect.items():
                assert res[i][m] == pytest.approx(v, rel=1e-9, abs=1e-11), (name, i, m)
    cols = T.profile_many(x, y, p, as_columns=True)
    assert cols["logme"] == pytest.approx([r["logme"] for r in per], rel=1e-10)


@pytest.mark.parametrize(("n", "d", "c", "pca"), [(100, 128, 5, 64),   # dual: each resample from the Gram matrix
                                            (200, 24, 4, 8),     # primal: the weighted D x D covariance
                                            (60, 40, 3, None),   # GBC without PCA: primal although m < D
                                            (40, 90, 9, 64)])    # rare classes: some resamples cannot be scored
def test_bootstrap_many_equals_profile_many_on_the_repeated_rows(n, d, c, pca):
    from tasksim import mcda

    rng = np.random.default_rng(n + d)
    y = np.arange(n) % c
    x = np.maximum(rng.standard_normal((3, n, d)) + np.eye(c, d)[y] * np.array([0.2, 1.0, 3.0])[:, None, None], 0)
    p = [probs_for(y, 4, 1.0, seed=1), probs_for(y, 4, 0.1, seed=2), probs_for(y, 6, 2.0, seed=3)]  # a list: Z differs
    draws = mcda.bootstrap_indices(n, 6, seed=n)
    measures = T.RESAMPLED_MEASURES
    got = T.bootstrap_many(torch.as_tensor(x), y, draws, p, measures, gbc_pca_dim=pca)
    assert len(got) == len(draws)
    scored = 0
    for r, idx in enumerate(draws):
        i = idx.numpy()
        try:
            expect = T.profile_many(x[:, i], y[i], [q[i] for q in p], measures=measures, gbc_pca_dim=pca)
        except MetricInputError:  # a class drawn once: no values this round
            assert got[r] == [{}, {}, {}]
            continue
        scored += 1
        for k in range(3):
            for m in measures:
                assert got[r][k][m] == pytest.approx(expect[k][m], rel=1e-8, abs=1e-10), (r, k, m)
    assert scored >= 2


@pytest.mark.parametrize("dual", [True, False])
def test_resampled_statistics_are_those_of_the_repeated_rows(dual):
    """The resample's statistics that no bootstrapped measure reads (the weighted mean, the trace)
    are right too: the dual path gathers its Gram submatrix from the pair-major Gram matrix and
    takes the mean by one matrix-vector product over all sources."""
    from tasksim import mcda
    from tasksim.metrics.transfer import resample as R

    n, d = (40, 100) if dual else (80, 6)
    rng = np.random.default_rng(7)
    x = torch.as_tensor(rng.standard_normal((3, n, d)) * np.array([0.5, 1.0, 4.0])[:, None, None] + 2.0)
    y = torch.as_tensor(np.arange(n) % 3)
    prep = R._Prepared(x)
    for idx in mcda.bootstrap_indices(n, 3, seed=1):
        mult = torch.bincount(idx, minlength=n)
        rows = torch.nonzero(mult).squeeze(1)
        w = mult[rows].to(torch.float64)
        yy = y[rows]
        counts = torch.bincount(yy, weights=w.to(torch.float64), minlength=3).round().long()
        build = R._dual_stats if dual else R._primal_stats
        assert (rows.shape[0] < d) == dual
        st = build(prep, rows, w, yy, 3, counts)
        rep = x[:, idx].to(torch.float64)
        ref = T.precompute(rep[0], y[idx])
        assert torch.allclose(st.mean, rep.mean(1), rtol=1e-12, atol=1e-12)
        assert torch.allclose(st.trace, (rep - rep.mean(1, keepdim=True)).square().sum((1, 2)) / n, rtol=1e-12)
        k = int(ref.valid.sum())
        assert torch.allclose(st.eigvals[0, :k], ref.eigvals[0, :k], rtol=1e-9, atol=1e-9)


def test_bootstrap_many_refuses_measures_it_cannot_weigh():
    x, y = make_data(50, 4, 2)
    with pytest.raises(MetricInputError, match="does not re-score"):
        T.bootstrap_many(x[None], y, [np.arange(50)], measures=["knn_accuracy"])
    with pytest.raises(MetricInputError, match="need source_probs"):
        T.bootstrap_many(x[None], y, [np.arange(50)], measures=["leep"])
    with pytest.raises(MetricInputError, match="row indices"):
        T.bootstrap_many(x[None], y, [np.array([0, 50])], measures=["logme"])
    from tasksim.metrics import catalog

    assert set(catalog.BOOTSTRAP_MEASURES) <= set(T.RESAMPLED_MEASURES)  # the cycle's bootstrap needs no other


def test_profile_many_rejects_knn_on_one_shot_iterator():
    x = np.random.default_rng(0).standard_normal((2, 100, 5))
    y = np.arange(100) % 3
    with pytest.raises(MetricInputError, match="two passes"):
        T.profile_many(iter([x[:, :50], x[:, 50:]]), y, measures=["logme", "knn_accuracy"])
    with pytest.raises(MetricInputError, match="two passes"):
        T.profile_many(iter([x[:, :50], x[:, 50:]]), y, measures=["ridge_probe_accuracy"])


# ---------------------------------------------------------------------------------------------
# the closed-form leave-one-out ridge probe, against scikit-learn refitted n times
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("n", "d", "c"), [(60, 20, 3), (40, 100, 4), (31, 200, 2), (90, 8, 6)])
def test_ridge_probe_matches_sklearn_leave_one_out(n, d, c):
    from sklearn.linear_model import RidgeClassifier, RidgeClassifierCV

    from tasksim.metrics.transfer.ridge import ridge_loo_batched, ridge_penalties

    rng = np.random.default_rng(n + d)
    y = np.arange(n) % c
    x = rng.standard_normal((n, d)) * rng.uniform(0.1, 10.0, d) + np.eye(c, d)[y] * 2.0
    st = T.precompute(x, y)
    acc, alpha = ridge_loo_batched(st)
    grid = ridge_penalties(st)[0].numpy()
    # the penalty: scikit-learn's efficient leave-one-out choice over the same grid
    assert float(alpha[0]) == pytest.approx(RidgeClassifierCV(alphas=grid).fit(x, y).alpha_, rel=1e-9)
    # the accuracy: n refits, each without one row
    hits = [RidgeClassifier(alpha=float(alpha[0])).fit(np.delete(x, i, 0), np.delete(y, i)).predict(x[i:i + 1])[0] == y[i]
            for i in range(n)]
    assert float(acc[0]) == pytest.approx(np.mean(hits), abs=1e-12)
    assert T.ridge_probe_accuracy(x, y) == pytest.approx(float(acc[0]), abs=1e-12)


def test_ridge_probe_properties():
    f, y = make_data(240, 16, 4, sep=2.0, seed=21)
    a = T.ridge_probe_accuracy(f, y)
    assert 0.6 < a <= 1.0
    assert T.ridge_probe_accuracy(f * 1e3 + 5.0, y) == pytest.approx(a, abs=1e-12)  # scale and shift invariant
    rot = np.linalg.qr(np.random.default_rng(1).standard_normal((16, 16)))[0]
    assert T.ridge_probe_accuracy(f @ rot, y) == pytest.approx(a, abs=1e-12)        # rotation invariant
    shuffled = np.random.default_rng(0).permutation(y)
    assert T.ridge_probe_accuracy(f, shuffled) < a - 0.3                            # labels matter
    assert T.ridge_probe_accuracy(f, np.array(["c" + str(v * 10) for v in y])) == pytest.approx(a)  # ids are names


def test_profile_many_n_less_than_d():
    k, n, d = 3, 40, 64
    _, y = make_data(n, 2, 3, seed=1)
    x = np.stack([make_data(n, d, 3, seed=i)[0] for i in range(k)])
    res = T.profile_many(x, y)
    for i in range(k):
        single = T.transferability_profile(x[i], y)
        for m, v in single.items():
            assert res[i][m] == pytest.approx(v, rel=1e-8, abs=1e-10), m


# =============================================================================================
# properties
# =============================================================================================

ALL_SCORES = ("logme", "hscore", "hscore_regularized", "transrate", "gbc", "knn_accuracy", "leep", "nce")


@FAST
@given(seed=st.integers(0, 2**16), c=st.integers(2, 5))
def test_label_permutation_invariance(seed, c):
    f, y = make_data(120, 6, c, seed=seed)
    theta = probs_for(y, 4, 0.5, seed=seed)
    perm = np.random.default_rng(seed).permutation(c)
    a = T.transferability_profile(f, y, theta, knn_max_queries=None)
    b = T.transferability_profile(f, perm[y], theta, knn_max_queries=None)
    for m in ALL_SCORES:
        assert b[m] == pytest.approx(a[m], rel=1e-9, abs=1e-12), m
    assert T.sfda(f, perm[y]) == pytest.approx(T.sfda(f, y), rel=1e-9)
    assert T.parc(f, perm[y]) == pytest.approx(T.parc(f, y), rel=1e-9)


@FAST
@given(seed=st.integers(0, 2**16), stride=st.integers(2, 1000), offset=st.integers(-50, 50))
def test_non_contiguous_label_ids(seed, stride, offset):
    f, y = make_data(90, 5, 3, seed=seed)
    theta = probs_for(y, 4, 0.5, seed=seed)
    a = T.transferability_profile(f, y, theta)
    b = T.transferability_profile(f, y * stride + offset, theta)
    s = T.transferability_profile(f, np.array([f"cls_{v}" for v in y]), theta)
    for m in ALL_SCORES:
        assert b[m] == pytest.approx(a[m], rel=1e-12, abs=1e-12), m
        assert s[m] == pytest.approx(a[m], rel=1e-12, abs=1e-12), m


@FAST
@given(seed=st.integers(0, 2**16))
def test_scores_fall_when_labels_are_shuffled(seed):
    f, y = make_data(200, 8, 4, sep=2.5, seed=seed)
    theta = probs_for(y, 6, 2.0, seed=seed)
    shuffled = np.random.default_rng(seed + 1).permutation(y)
    good = T.transferability_profile(f, y, theta, knn_max_queries=None)
    bad = T.transferability_profile(f, shuffled, theta, knn_max_queries=None)
    for m in ALL_SCORES:
        assert good[m] > bad[m], m
    assert T.sfda(f, y) > T.sfda(f, shuffled)
    assert T.parc(f, y) > T.parc(f, shuffled)


def test_linear_probe_falls_when_labels_are_shuffled():
    f, y = make_data(200, 8, 4, sep=2.5, seed=3)
    shuffled = np.random.default_rng(4).permutation(y)
    assert T.linear_probe_accuracy(f, y, folds=3) > T.linear_probe_accuracy(f, shuffled, folds=3) + 0.3


@FAST
@given(n=st.integers(8, 40), extra=st.integers(1, 200), seed=st.integers(0, 1000))
def test_logme_and_hscore_finite_when_n_less_than_d(n, extra, seed):
    d = n + extra
    f, y = make_data(n, d, 2, seed=seed)
    for fn in (T.logme, T.hscore, T.hscore_regularized, T.transrate):
        assert math.isfinite(fn(f, y))
    assert T.logme(f, y) == pytest.approx(R.logme_svd(f, y), rel=1e-6)


# =============================================================================================
# errors
# =============================================================================================

FEATURE_MEASURES = [T.logme, T.hscore, T.hscore_regularized, T.transrate, T.gbc, T.sfda, T.parc, T.nleep,
                    T.knn_accuracy, T.linear_probe_accuracy, T.transferability_profile]


@pytest.mark.parametrize("fn", FEATURE_MEASURES, ids=lambda f: f.__name__)
def test_feature_measures_reject_bad_inputs(fn):
    f, y = make_data(40, 4, 2, seed=0)
    bad = f.copy()
    bad[3, 1] = np.nan
    with pytest.raises(MetricInputError, match="NaN"):
        fn(bad, y)
    inf = f.copy()
    inf[0, 0] = np.inf
    with pytest.raises(MetricInputError):
        fn(inf, y)
    with pytest.raises(MetricInputError, match="2 classes"):
        fn(f, np.zeros(40, dtype=int))
    with pytest.raises(MetricInputError, match="lengths must match"):
        fn(f, y[:-1])
    single = y.copy()
    single[:] = 0
    single[5:] = 1
    single[0] = 7                                                    # a class with one sample
    with pytest.raises(MetricInputError, match="fewer than 2"):
        fn(f, single)


@pytest.mark.parametrize("fn", [T.leep, T.nce], ids=lambda f: f.__name__)
def test_prob_measures_reject_bad_inputs(fn):
    _, y = make_data(40, 2, 2, seed=0)
    theta = probs_for(y, 3, 0.5)
    bad = theta.copy()
    bad[0, 0] = np.nan
    with pytest.raises(MetricInputError):
        fn(bad, y)
    with pytest.raises(MetricInputError, match="2 classes"):
        fn(theta, np.zeros(40, dtype=int))
    with pytest.raises(MetricInputError, match="lengths must match"):
        fn(theta, y[:-1])
    single = y.copy()
    single[0] = 9
    with pytest.raises(MetricInputError, match="fewer than 2"):
        fn(theta, single)


def test_profile_many_rejects_bad_inputs():
    x = np.random.default_rng(0).standard_normal((2, 60, 4))
    y = np.arange(60) % 3
    with pytest.raises(MetricInputError, match="lengths must match"):
        T.profile_many(x, y[:-1])
    bad = x.copy()
    bad[1, 5, 2] = np.nan
    with pytest.raises(MetricInputError, match="NaN"):
        T.profile_many(bad, y)
    with pytest.raises(MetricInputError, match="NaN"):
        T.profile_many(bad, y, max_memory_bytes=1)
    with pytest.raises(MetricInputError, match="unknown"):
        T.profile_many(x, y, measures=["nope"])
    with pytest.raises(MetricInputError, match="source_probs"):
        T.profile_many(x, y, measures=["leep"])


def test_feature_stats_with_many_sources_need_a_source():
    x = np.random.default_rng(0).standard_normal((2, 60, 4))
    y = np.arange(60) % 3
    st_many = stats._build_inmemory(torch.as_tensor(x), torch.as_tensor(y), 3, torch.bincount(torch.as_tensor(y)),
                                transrate_eps=None, raw=None, keep_centred=True)
    with pytest.raises(MetricInputError, match="source"):
        T.logme(st_many)
    assert T.logme(st_many.source(1)) == pytest.approx(T.logme(x[1], y), rel=1e-12)


# =============================================================================================
# devices
# =============================================================================================

@pytest.mark.parametrize("device", DEVICES)
def test_profile_follows_device(device):
    f, y = make_data(200, 12, 4, seed=21)
    theta = probs_for(y, 5, 0.5)
    ref = T.transferability_profile(f, y, theta)
    ft = torch.as_tensor(f, device=device)
    yt = torch.as_tensor(y, device=device)
    pt = torch.as_tensor(theta, device=device)
    got = T.transferability_profile(ft, yt, pt)
    for m, v in ref.items():
        assert got[m] == pytest.approx(v, rel=1e-8, abs=1e-10), m
    stats = T.precompute(ft, yt)
    assert stats.eigvecs.device.type == device
    many = T.profile_many(torch.stack([ft, 2 * ft]), yt, torch.stack([pt, pt]), max_memory_bytes=1, chunk_rows=64)
    assert many[0]["logme"] == pytest.approx(ref["logme"], rel=1e-8)
    f32 = T.knn_accuracy(ft.float(), yt, k=5)
    assert f32 == pytest.approx(ref["knn_accuracy"], abs=0.02)
    for fn in (T.sfda, T.parc, T.nleep, T.linear_probe_accuracy):
        assert math.isfinite(fn(ft, yt))


def test_missing_or_mixed_labels_raise_one_clear_error():
    f, _ = make_data(40, 4, 2, seed=0)
    with pytest.raises(MetricInputError, match="1 labels are missing"):
        T.logme(f, [None] + ["a", "b"] * 19 + ["a"])
    with pytest.raises(MetricInputError, match="one comparable type"):
        T.logme(f, np.array([1, "a"] * 20, dtype=object))
