"""The confidence bootstrap of K sources' transferability, one resample at a time from its
distinct rows and their multiplicities, on statistics prepared once (:func:`bootstrap_many`).

A resample of N rows drawn with replacement holds about 0.632 N distinct rows. Its measures (of
the rows repeated) are functions of weighted statistics of the distinct rows: the weighted mean,
covariance and class means (LogME, the H-scores, GBC) and the weighted joint distribution of
labels and source classes (LEEP, NCE). They are computed so, equal to :func:`profile_many` on the
repeated rows up to rounding (``tests/metrics/test_transferability.py``):

- dual case (fewer distinct rows m than feature dimensions D): from the Gram matrix of the N
  rows (centred on their mean), computed once per source. A resample's centred, weighted Gram
  matrix is a principal submatrix of it with a rank-two correction; its ``m x m``
  eigendecomposition gives the covariance's eigenvalues, the projections of the mean and of the
  class means and the rows' principal-component coordinates (GBC) without any product in D
  dimensions (``z_i . v_j = sqrt(kappa_j) u_ij / sqrt(w_i)`` for eigenpairs ``(kappa_j, u_j)``
  of ``W^1/2 Z Z^T W^1/2``);
- primal case: from the weighted ``D x D`` covariance of the distinct rows.

The eigendecomposition of each resample stays: it is the floor of the cost (one ``m x m`` or
``D x D`` ``eigh`` per source and resample).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from tasksim.errors import MetricInputError
from tasksim.metrics import catalog
from tasksim.metrics._validate import ACCUM_DTYPE, ArrayLike, as_labels, check_finite
from tasksim.metrics.transfer._linalg import _gram
from tasksim.metrics.transfer.batched import _probs_batch, _shared_stats_measure
from tasksim.metrics.transfer.probs import _leep_batched, _nce_batched
from tasksim.metrics.transfer.stats import _EPS64, FeatureStats, _finish_eigen

__all__ = [
    "RESAMPLED_MEASURES",
    "bootstrap_many",
]

#: The measures :func:`bootstrap_many` re-scores (those of weighted statistics; TransRate's per-class
#: log-determinants, kNN and the ridge probe are not bootstrapped).
RESAMPLED_MEASURES: tuple[str, ...] = ("logme", "hscore", "hscore_regularized", "gbc", "leep", "nce")
_STATS = ("logme", "hscore", "hscore_regularized", "gbc")


class _Prepared:
    """K sources' features of the N target rows, shifted by their means (float64), and, on first
    use, their Gram matrix (stored pair-major, see :attr:`pair_gram`) and the rows' products with
    the mean."""

    def __init__(self, x: torch.Tensor) -> None:
        x64 = x.to(ACCUM_DTYPE)
        self.k, self.n, self.d = x64.shape
        self.mu0 = x64.mean(1)  # (K, D)
        self.xs = x64 - self.mu0.unsqueeze(1)  # (K, N, D)
        self._pair_gram: torch.Tensor | None = None
        self._row_major: torch.Tensor | None = None
        self.h = torch.einsum("knd,kd->kn", self.xs, self.mu0)  # x'_i . mu0
        self.mu0sq = (self.mu0 * self.mu0).sum(-1)

    def mean_of(self, rows: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """(K, D) mean of the rows ``rows`` weighted by ``w``: one matrix-vector product of every
        row's weight (0 for the rows left out) with the rows laid out ``(N, K D)`` (a batched
        product over K took ~4x longer at K = 100, N = 100, D = 128)."""
        if self._row_major is None:
            self._row_major = self.xs.transpose(0, 1).reshape(self.n, self.k * self.d).contiguous()
        full = torch.zeros(self.n, dtype=self.xs.dtype, device=self.xs.device).index_copy_(0, rows, w.to(self.xs))
        return self.mu0 + torch.mv(self._row_major.T, full).view(self.k, self.d) / float(w.sum())

    @property
    def pair_gram(self) -> torch.Tensor:
        """``(N * N, K)``: entry ``(i N + j, k)`` is ``x'_i . x'_j`` of source k. Pair-major, so that
        a resample's ``m x m`` submatrix of every source is one gather of contiguous rows (gathering
        ``m^2`` scattered entries per source from ``(K, N, N)`` took ~40x longer at K = 100)."""
        if self._pair_gram is None:
            gram = _gram(self.xs.contiguous(), dual=True)  # (K, N, N)
            self._pair_gram = gram.reshape(self.k, self.n * self.n).T.contiguous()
        return self._pair_gram


def _as_sources(features: Any) -> torch.Tensor:
    if isinstance(features, (torch.Tensor, np.ndarray)):
        t = features.detach() if isinstance(features, torch.Tensor) else torch.as_tensor(features)
        if t.ndim != 3:
            raise MetricInputError(f"features: expected (K, N, D), got shape {tuple(t.shape)}")
        return t
    if isinstance(features, Sequence) and len(features) > 0:
        arrays = [a.detach() if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a)) for a in features]
        if any(a.ndim != 2 or a.shape != arrays[0].shape for a in arrays):
            raise MetricInputError(
                "features: a list of sources must hold (N, D) arrays of one shape; got "
                f"{[tuple(a.shape) for a in arrays]}"
            )
        dev = next((a.device for a in arrays if a.device.type != "cpu"), arrays[0].device)
        return torch.stack([a.to(dev) for a in arrays])
    raise MetricInputError(f"features: expected (K, N, D) or a list of (N, D) arrays, got {type(features).__name__}")


def _dual_stats(
    prep: _Prepared, rows: torch.Tensor, w: torch.Tensor, y: torch.Tensor, n_classes: int, counts: torch.Tensor
) -> FeatureStats:
    """Statistics of the resample from the Gram matrix (m distinct rows < D): no D-dim eigenvectors
    and no D-dim class means (LogME, the H-scores and GBC in principal components need neither)."""
    k, d = prep.k, prep.d
    n = float(w.sum())
    m = rows.shape[0]
    flat = (rows.unsqueeze(1) * prep.n + rows.unsqueeze(0)).reshape(-1)
    gr = prep.pair_gram.index_select(0, flat).T.contiguous().view(k, m, m)  # x'_i . x'_j
    gw = gr @ w / n  # x'_i . mean'
    c = gw @ w / n  # |mean'|^2
    gc = gr - gw.unsqueeze(2) - gw.unsqueeze(1) + c.view(-1, 1, 1)  # z_i . z_j (centred on the resample's mean)
    s = w.sqrt()
    # eigh of -W^1/2 Gc W^1/2: its ascending eigenvalues are the descending ones of W^1/2 Gc W^1/2
    # (negated), with the eigenvectors already in that order (no flipped copy of them)
    neg_lam, u = torch.linalg.eigh(gc * (s.view(1, -1, 1) * s.view(1, 1, -1)).neg_())
    kap = neg_lam.neg_().clamp_min_(0.0)
    tol = kap[:, :1] * (max(n, d) * _EPS64)
    valid_r = kap > tol
    zero = torch.zeros_like(kap)
    root = torch.where(valid_r, kap.sqrt(), zero)
    inv_root = torch.where(valid_r, kap.clamp_min(1e-300).rsqrt(), zero)
    cnt = counts.to(ACCUM_DTYPE)
    h = prep.h.index_select(1, rows)  # x'_i . mu0
    hbar = h @ w / n  # mean' . mu0
    zmean = h - hbar.unsqueeze(1) + gw - c.unsqueeze(1)  # z_i . mean
    # sum_i s_i u_ij over each class's rows and sum_i s_i (z_i . mean) u_ij, in one batched product:
    # the class means of the centred rows and the (uncentred) mean in the eigenbasis
    weighted_classes = torch.zeros(n_classes, m, dtype=ACCUM_DTYPE, device=gr.device)
    weighted_classes[y, torch.arange(m, device=gr.device)] = s
    proj = torch.bmm(torch.cat([weighted_classes.expand(k, -1, -1), (zmean * s).unsqueeze(1)], 1), u)
    pcm = proj[:, :n_classes] * root.unsqueeze(1) / cnt.view(1, -1, 1)
    pm = proj[:, n_classes] * inv_root
    mean2 = prep.mu0sq + 2.0 * hbar + c  # |mean|^2
    pn = (mean2 - (pm * pm).sum(-1)).clamp_min(0.0).sqrt()  # the mean outside the rows' span
    q_valid = (pn > 1e-9 * mean2.clamp_min(0.0).sqrt()) & (pn > 0)
    lam = torch.cat([kap / n, zero[:, :1]], dim=-1)
    diag = gc.diagonal(dim1=-2, dim2=-1)  # ||z_i||^2
    return FeatureStats(
        n=round(n),
        d=d,
        n_classes=n_classes,
        counts=counts,
        labels=y,
        mean=prep.mean_of(rows, w),
        class_means=None,
        eigvals=lam,
        eigvecs=None,
        valid=torch.cat([valid_r, q_valid.unsqueeze(-1)], -1),
        trace=(diag * w).sum(-1) / n,
        frob2=(lam * lam).sum(-1),
        row_norm4=(diag * diag * w).sum(-1),
        sorted_labels=y,
        proj_mean=torch.cat([pm, (pn * q_valid).unsqueeze(-1)], -1),
        proj_class_means=torch.cat([pcm, torch.zeros_like(pcm[:, :, :1])], -1),
        row_coords=u * root.unsqueeze(1) / s.view(1, -1, 1),  # no column for the mean's extra direction
        row_weights=w,
    )


def _primal_stats(
    prep: _Prepared, rows: torch.Tensor, w: torch.Tensor, y: torch.Tensor, n_classes: int, counts: torch.Tensor
) -> FeatureStats:
    """Statistics of the resample from the weighted D x D covariance of its distinct rows."""
    k, d = prep.k, prep.d
    n = float(w.sum())
    xr = prep.xs.index_select(1, rows)
    mean_s = torch.einsum("m,kmd->kd", w, xr) / n
    z = xr - mean_s.unsqueeze(1)
    cnt = counts.to(ACCUM_DTYPE)
    class_means = torch.zeros(k, n_classes, d, dtype=ACCUM_DTYPE, device=z.device).index_add_(
        1, y, z * w.view(1, -1, 1)
    ) / cnt.view(1, -1, 1)
    cov = _gram((z * w.sqrt().view(1, -1, 1)).contiguous())
    cov.div_(n)
    mean = prep.mu0 + mean_s
    lam, vec, valid = _finish_eigen(round(n), d, cov, None, None, mean)
    sq = (z * z).sum(-1)
    return FeatureStats(
        n=round(n),
        d=d,
        n_classes=n_classes,
        counts=counts,
        labels=y,
        mean=mean,
        class_means=class_means,
        eigvals=lam,
        eigvecs=vec,
        valid=valid,
        trace=cov.diagonal(dim1=-2, dim2=-1).sum(-1),
        frob2=(lam * lam).sum(-1),
        row_norm4=(sq * sq * w).sum(-1),
        cov=cov,
        centred=z,
        sorted_labels=y,
        row_weights=w,
    )


def _resolve(measures: Iterable[str] | None, have_probs: bool) -> list[str]:
    if measures is None:
        return [m for m in catalog.BOOTSTRAP_MEASURES if have_probs or m not in catalog.PROBABILITY_MEASURES]
    out = list(dict.fromkeys(measures))
    bad = [m for m in out if m not in RESAMPLED_MEASURES]
    if bad:
        raise MetricInputError(f"bootstrap_many does not re-score {bad}; it re-scores {list(RESAMPLED_MEASURES)}")
    if not have_probs and any(m in catalog.PROBABILITY_MEASURES for m in out):
        raise MetricInputError(f"{' and '.join(sorted(catalog.PROBABILITY_MEASURES))} need source_probs")
    return out


@torch.no_grad()
def bootstrap_many(
    features: Any,
    labels: ArrayLike,
    draws: Iterable[ArrayLike],
    source_probs: Any = None,
    measures: Iterable[str] | None = None,
    *,
    gbc_pca_dim: int | None = 64,
) -> list[list[dict[str, float]]]:
    """K sources' measures on every bootstrap resample of one labelled target.

    ``features`` ``(K, N, D)`` (or a list of K ``(N, D)``), ``labels`` (N,), ``source_probs``
    ``(K, N, Z)`` or a list of K ``(N, Z_k)``; ``draws``: per resample, N row indices drawn with
    replacement (``tasksim.mcda.bootstrap_indices``). ``measures`` (default: the catalogue's
    bootstrap measures, LEEP and NCE only with probabilities) from :data:`RESAMPLED_MEASURES`.
    Returns, per draw, K dicts equal (up to rounding) to ``profile_many(features[:, idx],
    labels[idx], source_probs[:, idx], measures)``; a draw on which that raises because of its
    labels (fewer than two classes, or a class drawn fewer than two times) gives K empty dicts.
    """
    x = _as_sources(features)
    k, n_rows, d = x.shape
    have_probs = source_probs is not None
    todo = _resolve(measures, have_probs)
    y_all, _ = as_labels(labels, device=x.device)
    if y_all.shape[0] != n_rows:
        raise MetricInputError(f"features have {n_rows} samples but labels has {y_all.shape[0]}: lengths must match")
    check_finite(x, "features")
    probs = None
    if have_probs and set(todo) & catalog.PROBABILITY_MEASURES:
        if isinstance(source_probs, Sequence) and len({tuple(p.shape) for p in source_probs}) == 1:
            source_probs = _as_sources(source_probs)  # equal class counts: LEEP / NCE of all sources at once
        probs = _probs_batch(source_probs, k, n_rows, x.device)
    stats_todo = [m for m in todo if m in _STATS]
    prep = _Prepared(x) if stats_todo else None
    dual_ok = "gbc" not in stats_todo or (gbc_pca_dim is not None and gbc_pca_dim < d)
    out: list[list[dict[str, float]]] = []
    for draw in draws:
        idx = torch.as_tensor(draw, dtype=torch.long).reshape(-1).to(x.device)
        if idx.shape[0] == 0 or int(idx.min()) < 0 or int(idx.max()) >= n_rows:
            raise MetricInputError(f"draws: expected row indices in [0, {n_rows}), got {idx.shape[0]} indices")
        mult = torch.bincount(idx, minlength=n_rows)
        rows = torch.nonzero(mult).squeeze(1)
        w = mult.index_select(0, rows).to(ACCUM_DTYPE)
        present, y = torch.unique(y_all.index_select(0, rows), return_inverse=True)
        n_classes = int(present.shape[0])
        counts = torch.zeros(n_classes, dtype=torch.long, device=x.device).index_add_(0, y, mult.index_select(0, rows))
        if n_classes < 2 or int(counts.min()) < 2:  # profile_many raises on these labels: no values this round
            out.append([{} for _ in range(k)])
            continue
        values: dict[str, torch.Tensor] = {}
        if prep is not None:
            build = _dual_stats if rows.shape[0] < d and dual_ok else _primal_stats
            st = build(prep, rows, w, y, n_classes, counts)
            for m in stats_todo:
                values[m] = _shared_stats_measure(m, st, 1e-4, gbc_pca_dim)
        if probs is not None:
            values.update(_weighted_probability_measures(probs, todo, rows, y, n_classes, w))
        cols = {m: values[m].cpu().tolist() for m in todo}
        out.append([{m: float(cols[m][i]) for m in todo} for i in range(k)])
    return out


def _weighted_probability_measures(
    probs: torch.Tensor | list[torch.Tensor],
    todo: list[str],
    rows: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    w: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """(K,) LEEP and NCE of the resample (its distinct rows weighted by their multiplicities)."""
    out: dict[str, torch.Tensor] = {}
    parts = [probs] if isinstance(probs, torch.Tensor) else [p.unsqueeze(0) for p in probs]
    picked = [p.index_select(1, rows) for p in parts]
    if "leep" in todo:
        out["leep"] = torch.cat([_leep_batched(p, y, n_classes, weights=w) for p in picked])
    if "nce" in todo:
        out["nce"] = torch.cat([_nce_batched(p.argmax(-1), y, n_classes, weights=w) for p in picked])
    return out
