"""Measures on a source model's class probabilities for the target rows: LEEP and NCE."""

from __future__ import annotations

import numpy as np
import torch

from tasksim.errors import MetricInputError
from tasksim.metrics._validate import (
    ACCUM_DTYPE,
    ArrayLike,
    as_labels,
    check_finite,
    prep_labels,
    raw_tensor,
)
from tasksim.metrics.transfer.stats import _CONVERT_CHUNK_ELEMS

__all__ = [
    "leep",
    "nce",
]


def _probs(x: ArrayLike, n: int, name: str = "source_probs") -> torch.Tensor:
    """Validated source probabilities (N, Z), in their own floating dtype (no float64 copy: the
    measures convert row chunks as they accumulate)."""
    raw = raw_tensor(x, name)
    if raw.shape[0] != n:
        raise MetricInputError(f"{name} has {raw.shape[0]} rows but labels has {n}: lengths must match")
    if not raw.is_floating_point():
        raw = raw.to(ACCUM_DTYPE)
    rows = raw.sum(1)  # a check at 1e-3: the input dtype suffices (a float64 sum measured 15x slower)
    if not bool(torch.isfinite(rows.sum())):
        check_finite(raw, name)
    if float(raw.min()) < 0 or float((rows - 1.0).abs().max()) > 1e-3:
        raise MetricInputError(f"{name}: expected probabilities (non-negative rows summing to 1); "
                               "apply a softmax to logits first")
    return raw


def _leep_batched(theta: torch.Tensor, y: torch.Tensor, n_classes: int,
                  weights: torch.Tensor | None = None) -> torch.Tensor:
    """theta (K, N, Z) probabilities (any float dtype), y (N,) -> (K,) LEEP, accumulated in float64
    over row chunks. ``weights`` (N,) float64: row multiplicities (the LEEP of the rows repeated)."""
    k, n_rows, z = theta.shape
    n = n_rows if weights is None else float(weights.sum())
    rows = max(1, _CONVERT_CHUNK_ELEMS.get(theta.device.type, 2**19) // max(1, k * z))
    joint = torch.zeros(k, n_classes, z, dtype=ACCUM_DTYPE, device=theta.device)
    for s in range(0, n_rows, rows):
        block = theta[:, s:s + rows].to(ACCUM_DTYPE)
        joint.index_add_(1, y[s:s + rows], block if weights is None else block * weights[s:s + rows].view(1, -1, 1))
    joint /= n                                                  # P(y, z)
    pz = joint.sum(1, keepdim=True)                             # P(z)
    cond = torch.where(pz > 0, joint / pz.clamp_min(1e-300), torch.zeros_like(joint))   # P(y | z)
    total = torch.zeros(k, dtype=ACCUM_DTYPE, device=theta.device)
    cond_t = cond.transpose(1, 2)
    for s in range(0, n_rows, rows):
        yy = y[s:s + rows]
        eep = torch.bmm(theta[:, s:s + rows].to(ACCUM_DTYPE), cond_t)   # (K, rows, C): sum_z P(y|z) theta_z
        logs = eep.gather(2, yy.view(1, -1, 1).expand(k, -1, 1)).log()
        total += logs.sum((1, 2)) if weights is None else (logs.squeeze(2) * weights[s:s + rows]).sum(1)
    return total / n


@torch.no_grad()
def leep(source_probs: ArrayLike, labels: ArrayLike) -> float:
    """LEEP (Nguyen et al., ICML 2020): ``1/N sum_i log sum_z P(y_i | z) theta(x_i)_z``.

    ``theta(x_i)`` is the source model's predicted distribution over its Z source classes on target
    input i (rows must sum to 1); the empirical joint is ``P(y, z) = 1/N sum_{i: y_i = y} theta_z(x_i)``
    and ``P(y | z) = P(y, z) / P(z)``. Arguments in the paper's order (the LogME repository had
    them swapped, issue #14).
    """
    raw = raw_tensor(source_probs, "source_probs")
    y, c, _ = prep_labels(labels, raw.shape[0], raw.device)
    theta = _probs(raw, y.shape[0])
    return float(_leep_batched(theta.unsqueeze(0), y, c)[0])


def _hard_predictions(source_pred: ArrayLike, n: int, device: torch.device) -> torch.Tensor:
    t = source_pred.detach() if isinstance(source_pred, torch.Tensor) else torch.as_tensor(np.asarray(source_pred))
    if t.ndim == 2:
        if t.shape[0] != n:
            raise MetricInputError(f"source_pred has {t.shape[0]} rows but labels has {n}: lengths must match")
        check_finite(t, "source_pred")
        return t.argmax(1).to(device)
    if t.ndim != 1:
        raise MetricInputError(f"source_pred: expected hard predictions (N,) or probabilities (N, Z), "
                               f"got shape {tuple(t.shape)}")
    z, _ = as_labels(t, "source_pred", device=device)
    if z.shape[0] != n:
        raise MetricInputError(f"source_pred has {z.shape[0]} entries but labels has {n}: lengths must match")
    return z


def _nce_batched(z: torch.Tensor, y: torch.Tensor, n_classes: int,
                 weights: torch.Tensor | None = None) -> torch.Tensor:
    """z (K, N) hard source predictions (any non-negative ints), y (N,) -> (K,) NCE. ``weights``
    (N,) float64: row multiplicities (the NCE of the rows repeated)."""
    k, n = z.shape
    zmax = int(z.max()) + 1
    joint = torch.zeros(k, n_classes * zmax, dtype=ACCUM_DTYPE, device=z.device)
    ones = torch.ones(k, n, dtype=ACCUM_DTYPE, device=z.device) if weights is None else weights.expand(k, n)
    joint.scatter_add_(1, y.unsqueeze(0) * zmax + z, ones)
    joint = joint.view(k, n_classes, zmax) / (n if weights is None else float(weights.sum()))
    pz = joint.sum(1, keepdim=True)
    ratio = torch.where(joint > 0, joint / pz.clamp_min(1e-300), torch.ones_like(joint))
    return (joint * ratio.log()).sum((-1, -2))


@torch.no_grad()
def nce(source_pred: ArrayLike, labels: ArrayLike) -> float:
    """Negative conditional entropy (Tran et al., ICCV 2019): ``-H(Y | Z) = sum_{y,z} P(y,z) log P(y|z)``.

    ``Z`` is the source model's hard prediction on each target input: pass hard predictions (1-D
    ints, any ids) or probabilities/logits (N, Z), of which the argmax is taken. Empirical
    distributions; ``0 log 0 = 0``. At most 0; 0 when Z determines Y.
    """
    if isinstance(source_pred, torch.Tensor):
        dev = source_pred.device
    elif isinstance(labels, torch.Tensor):
        dev = labels.device
    else:
        dev = torch.device("cpu")
    y, c, _ = prep_labels(labels, len(source_pred), dev)
    z = _hard_predictions(source_pred, y.shape[0], y.device)
    return float(_nce_batched(z.unsqueeze(0), y, c)[0])
