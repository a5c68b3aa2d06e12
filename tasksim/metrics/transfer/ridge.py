"""Leave-one-out accuracy of a ridge (least-squares) linear probe, in closed form.

A linear probe is the most direct proxy of what fine-tuning a new head on a source's
representation achieves, and the literature finds simple probes strong baselines (Sorkhei et
al. 2025). The cross-validated logistic probe (``linear_probe_accuracy``) costs an iterative
fit per fold and source; the ridge probe reuses the profile's one eigendecomposition of the
centred covariance: with ``Z = P V^T`` (``P = Z V``, ``s^2 = N * eigvals``) the ridge hat matrix
with an unpenalised intercept is ``H = 11^T / N + P diag(1 / (s^2 + lambda)) P^T``, so every
leave-one-out prediction is exact without refitting (``yhat_-i = (yhat_i - h_ii y_i) / (1 -
h_ii)``) and a whole grid of penalties costs one more matrix product each. The penalty is
chosen per source by the leave-one-out squared error (PRESS, as scikit-learn's
``RidgeClassifierCV`` does) on a grid relative to the mean non-zero eigenvalue, so the measure
is invariant to the features' scale; the value is the leave-one-out accuracy (argmax of the
one-hot regression) at that penalty.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from tasksim.errors import MetricInputError
from tasksim.metrics._validate import ACCUM_DTYPE, ArrayLike
from tasksim.metrics.transfer.stats import FeatureStats, _stats, precompute

__all__ = ["RIDGE_RELATIVE_ALPHAS", "ridge_penalties", "ridge_probe_accuracy"]

# Penalties relative to N times the mean non-zero covariance eigenvalue: 1e-3 .. 1e3.
RIDGE_RELATIVE_ALPHAS: tuple[float, ...] = tuple(10.0 ** (e / 2.0) for e in range(-6, 7))


def ridge_penalties(st: FeatureStats, relative: tuple[float, ...] = RIDGE_RELATIVE_ALPHAS) -> torch.Tensor:
    """(K, G) absolute penalties: ``relative`` times N times each source's mean non-zero eigenvalue."""
    lam = st.eigvals.to(ACCUM_DTYPE).clamp_min(0) * st.valid
    nonzero = (lam > lam.amax(-1, keepdim=True) * 1e-12).sum(-1).clamp_min(1)
    scale = st.n * lam.sum(-1) / nonzero
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return scale.unsqueeze(-1) * torch.tensor(relative, dtype=ACCUM_DTYPE, device=scale.device)


def _centred_chunks(st: FeatureStats, block_rows: int = 1024) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The centred rows st kept, (K, b, D) blocks with their (b,) labels (blocks bound the
    (K, penalties, b, classes) temporaries)."""
    if st.centred is not None:
        rows, labels = st.centred, (st.sorted_labels if st.sorted_labels is not None else st.labels)
    elif st.features is not None:
        rows, labels = st.features, st.labels
    else:
        raise MetricInputError("the ridge probe needs the input features: precompute(..., keep_features=True)")
    for s in range(0, st.n, block_rows):
        block = rows[:, s:s + block_rows].to(ACCUM_DTYPE)
        yield (block if st.centred is not None else block - st.mean.unsqueeze(1)), labels[s:s + block_rows]


@torch.no_grad()
def ridge_loo_batched(st: FeatureStats, chunks: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
                      relative: tuple[float, ...] = RIDGE_RELATIVE_ALPHAS) -> tuple[torch.Tensor, torch.Tensor]:
    """(K,) leave-one-out accuracies at each source's PRESS-chosen penalty, and the (K,) penalties.

    ``chunks``: (K, b, D) row blocks centred about ``st.mean`` with their (b,) labels, covering
    every row once (a streamed second pass); default: the rows ``st`` kept."""
    valid = st.valid.to(ACCUM_DTYPE)
    vec = st.eigvecs.to(ACCUM_DTYPE) * valid.unsqueeze(1)
    s2 = st.n * st.eigvals.to(ACCUM_DTYPE).clamp_min(0) * valid               # (K, k)
    counts = st.counts.to(ACCUM_DTYPE)
    # V^T Z^T Y: the centred class sums in the eigenbasis, (K, k, C)
    b = (st.proj_class_means.to(ACCUM_DTYPE) * counts.view(1, -1, 1)).transpose(1, 2)
    prior = counts / st.n
    penalties = ridge_penalties(st, relative)                                  # (K, G)
    weights = 1.0 / (s2.unsqueeze(1) + penalties.unsqueeze(-1))                # (K, G, k)
    coef = weights.unsqueeze(-1) * b.unsqueeze(1)                              # (K, G, k, C)
    press = torch.zeros_like(penalties)
    correct = torch.zeros_like(penalties)
    for rows, y in (_centred_chunks(st) if chunks is None else chunks):
        p = torch.bmm(rows.to(ACCUM_DTYPE), vec)                               # (K, b, k)
        onehot = torch.nn.functional.one_hot(y, st.n_classes).to(ACCUM_DTYPE)
        h = 1.0 / st.n + torch.einsum("kbj,kgj->kgb", p * p, weights)           # (K, G, b) leverages
        fitted = prior + torch.einsum("kbj,kgjc->kgbc", p, coef)                 # (K, G, b, C)
        loo = (fitted - h.unsqueeze(-1) * onehot) / (1.0 - h).clamp_min(1e-12).unsqueeze(-1)
        press += (onehot - loo).square().sum((2, 3))
        correct += (loo.argmax(-1) == y).to(ACCUM_DTYPE).sum(-1)
    best = press.argmin(-1, keepdim=True)                                      # (K, 1)
    return (correct / st.n).gather(-1, best).squeeze(-1), penalties.gather(-1, best).squeeze(-1)


def ridge_probe_accuracy(features: ArrayLike | FeatureStats, labels: ArrayLike | None = None) -> float:
    """Leave-one-out accuracy of a one-hot ridge regression probe with an unpenalised intercept,
    its penalty chosen by leave-one-out squared error (see the module docstring)."""
    if isinstance(features, FeatureStats):
        st = _stats(features, labels)
    else:
        if labels is None:
            raise MetricInputError("labels are required with raw features")
        st = precompute(features, labels)
    return float(ridge_loo_batched(st)[0][0])
