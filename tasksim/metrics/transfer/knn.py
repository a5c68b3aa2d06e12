"""Leave-one-out k-nearest-neighbour accuracy of the target labels in a source's feature space."""

from __future__ import annotations

import torch

from tasksim.errors import MetricInputError
from tasksim.metrics._kernels import (
    check_knn_args,
    knn_neighbors,
    knn_vote,
    subsample_indices,
)
from tasksim.metrics._validate import (
    ACCUM_DTYPE,
    ArrayLike,
    check_finite,
    compute_dtype,
    prep_labels,
    raw_tensor,
)
from tasksim.metrics.transfer.stats import FeatureStats, _stats

__all__ = [
    "knn_accuracy",
]


def _knn_inmemory(x: torch.Tensor, y: torch.Tensor, n_classes: int, k: int, metric: str,
                  q_idx: torch.Tensor | None) -> torch.Tensor:
    """x (K, N, D) any float dtype -> (K,) leave-one-out accuracy over the queries ``q_idx``."""
    n = x.shape[1]
    dtype = compute_dtype(x)
    queries = torch.arange(n, device=x.device) if q_idx is None else q_idx
    nb = knn_neighbors(x, queries, k, metric, dtype)
    pred = knn_vote(y[nb], n_classes)
    return (pred == y[queries].unsqueeze(0)).to(ACCUM_DTYPE).mean(-1)


@torch.no_grad()
def knn_accuracy(features: ArrayLike | FeatureStats, labels: ArrayLike | None = None, k: int = 5, *,
                 metric: str = "cosine", max_queries: int | None = None, seed: int = 0) -> float:
    """Leave-one-out k-nearest-neighbour accuracy of the target labels in the source's feature space.

    Each sample is classified by the majority label of its ``k`` nearest other samples (cosine
    similarity or Euclidean distance); ties go to the tied class with the nearest neighbour. The
    similarity search runs in row blocks (memory bounded), in float32 unless the features are
    float64. ``max_queries`` classifies a seeded random subset of that many samples (against all
    N references): an unbiased estimate of the full leave-one-out accuracy at a fraction of the
    ``O(N^2 D)`` cost. A simple, strong baseline (Sorkhei et al. 2025).
    """
    if isinstance(features, FeatureStats):
        st = _stats(features, labels, need_centred=False)
        if st.features is None:
            raise MetricInputError("kNN needs the input features: precompute(..., keep_features=True)")
        x, y, c = st.features, st.labels, st.n_classes
    else:
        raw = raw_tensor(features)
        if raw.shape[0] < 2:
            raise MetricInputError(f"features: expected at least 2 samples, got {raw.shape[0]}")
        check_finite(raw, "features")
        y, c, _ = prep_labels(labels, raw.shape[0], raw.device)
        x = raw.unsqueeze(0)
    n = x.shape[1]
    check_knn_args(k, metric, n)
    q_idx = subsample_indices(n, max_queries, seed, x.device)
    return float(_knn_inmemory(x, y, c, int(k), metric, q_idx)[0])
