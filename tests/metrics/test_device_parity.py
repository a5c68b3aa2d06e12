"""Every public measure gives the same value on CUDA as on CPU (the CPU values are the ones the
other modules test against independent references).

Skipped without CUDA. ``TASKSIM_TEST_OTHER_DEVICE=cpu`` runs the same comparisons CPU against
CPU, to check this module itself on a machine without a GPU.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from tasksim import metrics as M

OTHER = os.environ.get("TASKSIM_TEST_OTHER_DEVICE") or ("cuda" if torch.cuda.is_available() else None)
pytestmark = pytest.mark.skipif(OTHER is None, reason="CUDA not available")

# Exact algorithms in float64: agree to rounding. Iterative ones (Sinkhorn to a tolerance, EM,
# L-BFGS) stop at slightly different points on another device's arithmetic.
EXACT = 1e-7
ITERATIVE = 2e-3


def _data(seed: int = 0, n: int = 240, d: int = 12, c: int = 4, shift: float = 0.0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % c
    means = rng.normal(size=(c, d)) * 1.5
    x = means[y] + rng.normal(size=(n, d)) + shift
    return x, y


def _on(a: np.ndarray | None, device: str) -> torch.Tensor | None:
    return None if a is None else torch.as_tensor(a).to(device)


X, Y = _data(0)
X2, Y2 = _data(1, shift=0.4)
PROBS = np.random.default_rng(2).dirichlet(np.ones(7), size=X.shape[0])
CASES = {
    "logme": (lambda x, y, p, x2, y2: M.logme(x, y), EXACT),
    "hscore": (lambda x, y, p, x2, y2: M.hscore(x, y), EXACT),
    "hscore_regularized": (lambda x, y, p, x2, y2: M.hscore_regularized(x, y), EXACT),
    "transrate": (lambda x, y, p, x2, y2: M.transrate(x, y), EXACT),
    "gbc": (lambda x, y, p, x2, y2: M.gbc(x, y), EXACT),
    "sfda": (lambda x, y, p, x2, y2: M.sfda(x, y), EXACT),
    "parc": (lambda x, y, p, x2, y2: M.parc(x, y), EXACT),
    "nleep": (lambda x, y, p, x2, y2: M.nleep(x, y), ITERATIVE),
    "knn_accuracy": (lambda x, y, p, x2, y2: M.knn_accuracy(x, y), EXACT),
    "linear_probe_accuracy": (lambda x, y, p, x2, y2: M.linear_probe_accuracy(x, y), ITERATIVE),
    "leep": (lambda x, y, p, x2, y2: M.leep(p, y), EXACT),
    "nce": (lambda x, y, p, x2, y2: M.nce(p, y), EXACT),
    "mmd2": (lambda x, y, p, x2, y2: M.mmd2(x, x2), EXACT),
    "mmd_test": (lambda x, y, p, x2, y2: M.mmd_test(x, x2, permutations=50)[0], EXACT),
    "median_bandwidth": (lambda x, y, p, x2, y2: M.median_bandwidth(x, x2), EXACT),
    "frechet_distance": (lambda x, y, p, x2, y2: M.frechet_distance(x, x2), EXACT),
    "otdd": (lambda x, y, p, x2, y2: M.otdd(x, y, x2, y2), ITERATIVE),
    "domain_classifier_auc": (lambda x, y, p, x2, y2: M.domain_classifier_auc(x, x2), ITERATIVE),
    "label_shift": (lambda x, y, p, x2, y2: M.label_shift(y, y2[:150]), EXACT),
    "linear_cka": (lambda x, y, p, x2, y2: M.linear_cka(x, x2 @ np.ones((12, 5)) if isinstance(x2, np.ndarray)
                                                       else x2 @ torch.ones(12, 5, dtype=x2.dtype, device=x2.device)),
                   EXACT),
    "kernel_cka": (lambda x, y, p, x2, y2: M.kernel_cka(x, x2), EXACT),
    "unbiased_hsic": (lambda x, y, p, x2, y2: M.unbiased_hsic(x, x2), EXACT),
    "minibatch_cka": (lambda x, y, p, x2, y2: M.minibatch_cka([(x[i:i + 60], x2[i:i + 60]) for i in range(0, 240, 60)]),
                      EXACT),
    "svcca": (lambda x, y, p, x2, y2: M.svcca(x, x2), EXACT),
    "pwcca": (lambda x, y, p, x2, y2: M.pwcca(x, x2), EXACT),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_measure_matches_cpu(name: str) -> None:
    fn, rtol = CASES[name]
    ref = fn(_on(X, "cpu"), _on(Y, "cpu"), _on(PROBS, "cpu"), _on(X2, "cpu"), _on(Y2, "cpu"))
    got = fn(_on(X, OTHER), _on(Y, OTHER), _on(PROBS, OTHER), _on(X2, OTHER), _on(Y2, OTHER))
    assert isinstance(got, float) and np.isfinite(got)
    assert got == pytest.approx(ref, rel=rtol, abs=1e-9), f"{name}: {OTHER} {got!r} vs cpu {ref!r}"


def test_every_public_measure_is_covered() -> None:
    classes_and_helpers = {"FeatureStats", "MinibatchCKA", "PROFILE_MEASURES", "precompute",
                           "transferability_profile", "profile_many", "RESAMPLED_MEASURES", "bootstrap_many"}
    assert set(M.__all__) - classes_and_helpers <= set(CASES)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_profile_many_matches_cpu(dtype: torch.dtype) -> None:
    """The batched engine, in memory and streamed, on the other device vs CPU."""
    rng = np.random.default_rng(5)
    k, n, d = 3, 600, 40
    y = np.arange(n) % 5
    feats = np.stack([rng.normal(size=(5, d))[y] * (0.5 + i) + rng.normal(size=(n, d)) for i in range(k)])
    probs = rng.dirichlet(np.ones(9), size=(k, n))
    ref = M.profile_many(torch.as_tensor(feats, dtype=dtype), y, probs, as_columns=True)
    for budget in (2**40, 1):
        got = M.profile_many(torch.as_tensor(feats, dtype=dtype, device=OTHER), torch.as_tensor(y, device=OTHER),
                             torch.as_tensor(probs, device=OTHER), as_columns=True, max_memory_bytes=budget)
        for m, vals in ref.items():
            tol = 1e-6 if dtype == torch.float64 else 1e-4
            np.testing.assert_allclose(got[m], vals, rtol=tol, atol=1e-9, err_msg=f"{m}, budget {budget}")


@pytest.mark.parametrize(("n", "d"), [(100, 128), (300, 20)])  # each resample from the Gram matrix / the covariance
def test_bootstrap_many_matches_cpu(n: int, d: int) -> None:
    """The confidence bootstrap (distinct rows with multiplicities) on the other device vs CPU."""
    from tasksim import mcda

    rng = np.random.default_rng(6)
    y = np.arange(n) % 5
    feats = np.stack([np.maximum(rng.normal(size=(5, d))[y] * (0.5 + i) + rng.normal(size=(n, d)), 0) for i in range(3)])
    probs = rng.dirichlet(np.ones(7), size=(3, n))
    draws = mcda.bootstrap_indices(n, 4, seed=1)
    ref = M.bootstrap_many(torch.as_tensor(feats), y, draws, probs, M.RESAMPLED_MEASURES)
    got = M.bootstrap_many(torch.as_tensor(feats, device=OTHER), torch.as_tensor(y, device=OTHER), draws,
                           torch.as_tensor(probs, device=OTHER), M.RESAMPLED_MEASURES)
    for r_ref, r_got in zip(ref, got):
        for a, b in zip(r_ref, r_got):
            for m in M.RESAMPLED_MEASURES:
                assert b[m] == pytest.approx(a[m], rel=1e-6, abs=1e-9), m
