"""Representation similarity: references (numpy / scipy), invariances, errors, devices."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import ortho_group

from tasksim.errors import MetricInputError
from tasksim.metrics import MinibatchCKA, kernel_cka, linear_cka, minibatch_cka, pwcca, svcca, unbiased_hsic
from tests.metrics import reference_distances as ref

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]
FEW = settings(max_examples=6, deadline=None, derandomize=True)


def reps(seed: int, n: int, p: int, q: int, noise: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Two related representations of the same n inputs: y = tanh(x A) + noise."""
    g = np.random.default_rng(seed)
    x = g.normal(size=(n, p)) @ g.normal(size=(p, p))
    y = np.tanh(x @ g.normal(size=(p, q)) / np.sqrt(p)) + noise * g.normal(size=(n, q))
    return x, y


# ------------------------------------------------------------------ references

@pytest.mark.parametrize("n,p,q", [(200, 6, 9), (30, 80, 50)])  # feature-space and Gram paths
def test_linear_cka_matches_reference(n, p, q):
    x, y = reps(0, n, p, q)
    assert linear_cka(x, y) == pytest.approx(ref.linear_cka_ref(x, y), rel=1e-10)


@pytest.mark.parametrize("sigma", [None, 2.5])
def test_kernel_cka_matches_reference(sigma):
    x, y = reps(1, 80, 5, 7)
    assert kernel_cka(x, y, sigma) == pytest.approx(ref.kernel_cka_ref(x, y, sigma), rel=1e-10)


def test_unbiased_hsic_matches_reference():
    x, y = reps(2, 25, 4, 6)
    assert unbiased_hsic(x, y) == pytest.approx(ref.hsic_unbiased_ref(x @ x.T, y @ y.T), rel=1e-10)
    assert unbiased_hsic(x[:4], y[:4]) == pytest.approx(ref.hsic_unbiased_ref(x[:4] @ x[:4].T, y[:4] @ y[:4].T),
                                                         rel=1e-9)


def test_minibatch_cka_matches_reference_and_stream():
    x, y = reps(3, 230, 8, 5)
    batches = [(x[i:i + 40], y[i:i + 40]) for i in range(0, 230, 40)]  # last batch has 30 rows
    expected = ref.minibatch_cka_ref(batches)
    assert minibatch_cka(batches) == pytest.approx(expected, rel=1e-10)
    m = MinibatchCKA()
    for xb, yb in batches:
        m.update(torch.as_tensor(xb), yb)
    assert m.value() == pytest.approx(expected, rel=1e-10)
    assert (m.n_batches, m.n_samples) == (6, 230)
    # Large batches approach the full-data linear CKA (the unbiased estimator removes the bias).
    assert minibatch_cka([(x, y)]) == pytest.approx(linear_cka(x, y), abs=0.05)
    m.reset()
    with pytest.raises(MetricInputError, match="before any update"):
        m.value()


@pytest.mark.parametrize("n_rows", [1, 2, 3])
def test_minibatch_cka_small_batches_raise(n_rows):
    x, y = reps(4, 50, 3, 3)
    m = MinibatchCKA().update(x[:10], y[:10])
    with pytest.raises(MetricInputError, match="at least 4 rows"):
        m.update(x[:n_rows], y[:n_rows])
    assert m.n_batches == 1  # the failed batch left the sums alone
    with pytest.raises(MetricInputError, match="at least 4 rows"):
        minibatch_cka([(x[:n_rows], y[:n_rows])])


@pytest.mark.parametrize("keep", [0.99, 0.9, 1.0])
def test_svcca_matches_reference(keep):
    x, y = reps(5, 300, 10, 14)
    assert svcca(x, y, keep) == pytest.approx(ref.svcca_ref(x, y, keep), rel=1e-8)


@pytest.mark.parametrize("p,q", [(6, 11), (11, 6), (8, 8)])
def test_pwcca_matches_reference(p, q):
    x, y = reps(6, 400, max(p, q), max(p, q))
    x, y = x[:, :p], y[:, :q]
    assert pwcca(x, y) == pytest.approx(ref.pwcca_ref(x, y), rel=1e-8)


def test_cca_self_similarity_and_unrelated():
    x, _ = reps(7, 500, 6, 3)
    noise = np.random.default_rng(8).normal(size=(500, 6))
    assert svcca(x, x) == pytest.approx(1.0, abs=1e-10)
    assert pwcca(x, x) == pytest.approx(1.0, abs=1e-10)
    assert svcca(x, noise) < 0.2
    assert pwcca(x, noise) < 0.2


# ------------------------------------------------------------------ properties

@FEW
@given(seed=st.integers(0, 10_000), n=st.integers(8, 60), p=st.integers(1, 12), q=st.integers(1, 12),
       scale=st.floats(0.01, 100.0))
def test_cka_invariances(seed, n, p, q, scale):
    x, y = reps(seed, n, p, q)
    qx = ortho_group.rvs(p, random_state=seed) if p > 1 else np.array([[-1.0]])
    xt = scale * x @ qx + 3.0  # orthogonal map, isotropic scaling and a translation
    for f in (linear_cka, kernel_cka):
        base = f(x, y)
        assert -1e-12 <= base <= 1.0 + 1e-12
        assert f(xt, y) == pytest.approx(base, rel=1e-7, abs=1e-10)
        assert f(x, x) == pytest.approx(1.0, abs=1e-10)
        assert f(y, x) == pytest.approx(base, rel=1e-10, abs=1e-12)
    batches = [(x[i:i + 8], y[i:i + 8]) for i in range(0, n - 7, 8)]
    mb = minibatch_cka(batches)
    assert minibatch_cka([(scale * xb @ qx, yb) for xb, yb in batches]) == pytest.approx(mb, rel=1e-7, abs=1e-10)
    assert minibatch_cka([(xb, xb) for xb, _ in batches]) == pytest.approx(1.0, abs=1e-10)


@FEW
@given(seed=st.integers(0, 10_000), p=st.integers(1, 6))
def test_cca_invariant_to_invertible_maps(seed, p):
    x, y = reps(seed, 120, p, p + 2)
    a = np.random.default_rng(seed).normal(size=(p, p)) + 3 * np.eye(p)
    assert svcca(x @ a + 1.0, y, keep=1.0) == pytest.approx(svcca(x, y, keep=1.0), rel=1e-7)
    assert 0.0 <= pwcca(x, y) <= 1.0 + 1e-12


# ------------------------------------------------------------------ errors

def test_representation_errors():
    x, y = reps(9, 30, 3, 4)
    with pytest.raises(MetricInputError, match="lengths must match"):
        linear_cka(x, y[:29])
    bad = x.copy()
    bad[0, 0] = np.inf
    for f in (linear_cka, kernel_cka, svcca, pwcca):
        with pytest.raises(MetricInputError, match="NaN or Inf"):
            f(bad, y)
    const = np.ones((30, 3))
    with pytest.raises(MetricInputError, match="constant"):
        linear_cka(const, y)
    with pytest.raises(MetricInputError):
        kernel_cka(const, y)
    with pytest.raises(MetricInputError, match="constant"):
        svcca(const, y)
    with pytest.raises(MetricInputError, match="keep"):
        svcca(x, y, keep=0.0)
    with pytest.raises(MetricInputError, match="at least 2"):
        linear_cka(x[:1], y[:1])
    with pytest.raises(MetricInputError, match="pairs"):
        minibatch_cka([x])


# ------------------------------------------------------------------ devices

@pytest.mark.parametrize("device", DEVICES)
def test_tensor_inputs_follow_device(device):
    x, y = reps(10, 90, 5, 7)
    x32, y32 = x.astype(np.float32), y.astype(np.float32)
    tx = torch.as_tensor(x32, device=device)
    ty = torch.as_tensor(y32, device=device)
    for f in (linear_cka, kernel_cka, svcca, pwcca, unbiased_hsic):
        got = f(tx, ty)
        assert isinstance(got, float)
        assert got == pytest.approx(f(x32, y32), rel=1e-9)
    assert minibatch_cka([(tx[:45], ty[:45]), (tx[45:], y32[45:])]) == pytest.approx(
        minibatch_cka([(x32[:45], y32[:45]), (x32[45:], y32[45:])]), rel=1e-9)
