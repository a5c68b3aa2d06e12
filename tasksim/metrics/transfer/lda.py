"""Cross-validated accuracy of a shrinkage linear discriminant (LDA) probe, batched over sources.

Why this probe: the ground truth a source ranking is judged by is a linear classifier trained on
the source's representation. The leave-one-out ridge probe (``transfer/ridge.py``) regresses one-hot
labels by least squares, which masks classes when there are many of them; the cross-validated
logistic probe (``linear_probe_accuracy``) fits them properly but costs an iterative fit per fold
and source (0.1-6 s here). LDA with Ledoit-Wolf shrinkage is a linear classifier in closed form
that is strong in the few-shot regime (few rows a class, many dimensions), where the pooled
covariance must be shrunk. On the transfer suite's held-out benchmarks it ranked sources better
than the ridge probe on images, tabular data and text (``docs/transfer_benchmark.md``).

The features are standardised on each training fold (as the logistic probe does); the classifier
is then scikit-learn's ``LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")``, so that
library is the reference: per class, the features are scaled to unit variance, the
class's covariance is shrunk toward a multiple of the identity with the Ledoit-Wolf intensity and
scaled back; the within-class covariance is the class priors' mixture of them,

    Sigma = sum_c pi_c [(1 - a_c) R_c^T R_c / m_c + a_c mu_c diag(s_c^2)],

(``R_c`` the class's centred rows, ``s_c`` their standard deviations, ``mu_c`` the mean variance of
the scaled features). The discriminant is ``W = Sigma^-1 M^T`` with the class means ``M``, the
intercept ``-diag(M W) / 2 + log pi``. The standardisation makes the probe invariant to the
features' units, also for features constant within a class (dead ReLU units), whose per-class scale
falls back to 1. ``Sigma`` is a diagonal plus a low-rank part of at most ``m`` rows, so with
fewer training rows than dimensions it is inverted by the Woodbury identity in the rows' space
(``m x m``), otherwise directly (``D x D``). Folds are stratified (``_fold_ids``: each class
shuffled with ``seed`` and dealt round-robin), as for the logistic probe.
"""

from __future__ import annotations

import torch

from tasksim.metrics._validate import ACCUM_DTYPE, ArrayLike, float64_features, prep_labels, raw_tensor
from tasksim.metrics.transfer.extra import _fold_ids

__all__ = ["LDA_MAX_ROWS", "lda_probe_accuracy", "lda_probe_batched"]

#: Rows the probe is cross-validated on at most (a seeded, class-stratified subsample of larger
#: windows, the same rows for every source): its cost grows with rows x dimensions^2 or rows^2 x
#: dimensions, and an accuracy on 512 rows has a standard error of at most 2.2 points.
LDA_MAX_ROWS = 512

# Sources are fitted in blocks of at most this many bytes of float64 rows (1,000 sources of 512 rows
# x 384 dimensions would otherwise be 1.5 GiB before the fits' temporaries).
_BLOCK_BYTES = 64 * 2**20

# A feature whose standard deviation is below this multiple of its magnitude is constant (its scale
# is then 1, as scikit-learn's StandardScaler does for constant features).
_ZERO_SCALE = 10.0 * torch.finfo(torch.float64).eps


def _ledoit_wolf(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(K,) Ledoit-Wolf shrinkage intensity and mean variance ``mu`` of centred rows ``z`` (K, m, D),
    scikit-learn's ``ledoit_wolf_shrinkage`` (0 for one feature; 0 when every row is 0)."""
    k, m, d = z.shape
    z2 = z * z
    trace = z2.sum((1, 2)) / m                                   # tr(S), S = z^T z / m
    mu = trace / d
    if d == 1:
        return torch.zeros(k, dtype=z.dtype, device=z.device), mu
    # ||S||_F^2 from the smaller Gram matrix
    gram = z @ z.transpose(1, 2) if m <= d else z.transpose(1, 2) @ z
    delta_ = gram.square().sum((1, 2)) / (m * m)
    beta_ = z2.sum(2).square().sum(1)                            # sum_i ||z_i||^4
    beta = (beta_ / m - delta_) / (d * m)
    delta = (delta_ - 2.0 * mu * trace + d * mu * mu) / d
    beta = torch.minimum(beta, delta)
    shrink = torch.where(beta > 0, beta / torch.where(delta > 0, delta, torch.ones_like(delta)), torch.zeros_like(beta))
    return shrink, mu


def _discriminant(xtr: torch.Tensor, ytr: torch.Tensor, n_classes: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """(W (K, D, C'), intercept (K, C'), the C' classes present) of the shrinkage LDA fitted on
    (K, m, D) training rows that are already standardised."""
    k, m, d = xtr.shape
    present = [c for c in range(n_classes) if bool((ytr == c).any())]
    priors = torch.tensor([float((ytr == c).sum()) / m for c in present], dtype=xtr.dtype, device=xtr.device)
    means = torch.stack([xtr[:, ytr == c].mean(1) for c in present], 1)            # (K, C', D)
    diag = torch.zeros(k, d, dtype=xtr.dtype, device=xtr.device)                  # the diagonal part of Sigma
    blocks = []                                                                    # scaled centred rows: low-rank part
    for j, c in enumerate(present):
        r = xtr[:, ytr == c] - means[:, j:j + 1]                                   # (K, m_c, D)
        mc = r.shape[1]
        sd = r.square().mean(1).sqrt()                                             # (K, D), ddof 0
        sd = torch.where(sd > _ZERO_SCALE * (means[:, j].abs() + 1.0), sd, torch.ones_like(sd))
        shrink, mu = _ledoit_wolf(r / sd.unsqueeze(1))
        diag += (priors[j] * shrink * mu).unsqueeze(1) * sd * sd
        blocks.append(r * ((priors[j] * (1.0 - shrink) / mc).sqrt()).view(k, 1, 1))
    u = torch.cat(blocks, 1)                                                       # Sigma = diag + u^T u
    rhs = means.transpose(1, 2)                                                    # (K, D, C')
    if m < d and bool((diag > 0).all()):
        # Woodbury: Sigma^-1 = L - L u^T (I + u L u^T)^-1 u L, L = diag^-1
        inv = 1.0 / diag
        ul = u * inv.unsqueeze(1)                                                  # u L (K, m, D)
        inner = torch.eye(m, dtype=xtr.dtype, device=xtr.device) + ul @ u.transpose(1, 2)
        # inner is symmetric with eigenvalues >= 1: Cholesky, not LU. A batched LU (torch.linalg.solve)
        # of two or more such systems on 2 CPU threads made MKL report "Parameter 6 was incorrect on
        # entry to DLASWP" and a false singular pivot, so the batch failed and every source was re-scored alone
        chol, info = torch.linalg.cholesky_ex(inner)
        z = torch.cholesky_solve(ul @ rhs, chol) if bool((info == 0).all()) else torch.linalg.solve(inner, ul @ rhs)
        w = inv.unsqueeze(2) * rhs - ul.transpose(1, 2) @ z
    else:
        sigma = u.transpose(1, 2) @ u + torch.diag_embed(diag)
        chol, info = torch.linalg.cholesky_ex(sigma)
        if bool((info == 0).all()):
            w = torch.cholesky_solve(rhs, chol)
        else:  # a singular covariance (no shrinkage and fewer rows than dimensions): least squares
            w = torch.linalg.pinv(sigma, hermitian=True) @ rhs
    bias = -0.5 * (means * w.transpose(1, 2)).sum(2) + priors.log()               # (K, C')
    return w, bias, present


def _standardise(xtr: torch.Tensor, xte: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both (K, rows, D) sets scaled with the training rows' mean and standard deviation (ddof 0)."""
    centre = xtr.mean(1, keepdim=True)
    scale = (xtr - centre).square().mean(1, keepdim=True).sqrt()
    scale = torch.where(scale > _ZERO_SCALE * (centre.abs() + 1.0), scale, torch.ones_like(scale))
    return (xtr - centre) / scale, (xte - centre) / scale


def _fit_predict(xtr: torch.Tensor, ytr: torch.Tensor, xte: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Predicted classes (K, n_test) of the shrinkage LDA fitted on (K, m, D) training rows, the
    features standardised on the training rows first."""
    xtr, xte = _standardise(xtr, xte)
    w, bias, present = _discriminant(xtr, ytr, n_classes)
    scores = xte @ w + bias.unsqueeze(1)                                           # (K, n_test, C')
    return torch.tensor(present, device=xtr.device)[scores.argmax(2)]


def _stratified_rows(labels: torch.Tensor, max_rows: int, seed: int) -> torch.Tensor | None:
    """Sorted row indices of a seeded subsample of about ``max_rows`` rows keeping each class's
    share (at least 2 rows of a class that has them); None when there are no more rows than that."""
    n = labels.shape[0]
    if n <= max_rows:
        return None
    y = labels.cpu()
    g = torch.Generator().manual_seed(int(seed) + 7)
    keep = []
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).squeeze(1)
        take = min(idx.shape[0], max(2, round(max_rows * idx.shape[0] / n)))
        keep.append(idx[torch.randperm(idx.shape[0], generator=g)[:take]])
    return torch.sort(torch.cat(keep)).values.to(labels.device)


def lda_probe_batched(features: torch.Tensor, labels: torch.Tensor, n_classes: int, folds: int = 5,
                      seed: int = 0, max_rows: int | None = LDA_MAX_ROWS) -> torch.Tensor:
    """(K,) cross-validated accuracies of the shrinkage LDA probe on K sources' (K, N, D) features of
    the same N rows (``labels``: (N,) class codes); float64 inside, one fit per fold for all sources.
    Above ``max_rows`` rows (None: no limit) a class-stratified seeded subsample is used."""
    rows = _stratified_rows(labels, int(max_rows), seed) if max_rows is not None else None
    if rows is not None:
        features, labels = features.index_select(1, rows.to(features.device)), labels[rows]
    k, n, d = features.shape
    fold, nf = _fold_ids(labels, folds, seed)  # raises for folds < 2
    # sources in blocks of about _BLOCK_BYTES of float64 rows: the fits' temporaries are a few times that
    step = max(1, _BLOCK_BYTES // max(1, n * d * 8))
    correct = torch.zeros(k, dtype=torch.long, device=features.device)
    for s in range(0, k, step):
        x = features[s:s + step].to(ACCUM_DTYPE)
        for f in range(nf):
            test = fold == f
            if not bool(test.any()):  # fewer rows of every class than folds: some folds are empty
                continue
            pred = _fit_predict(x[:, ~test], labels[~test], x[:, test], n_classes)
            correct[s:s + step] += (pred == labels[test]).sum(1)
    return correct.to(ACCUM_DTYPE) / n


def lda_probe_accuracy(features: ArrayLike, labels: ArrayLike, folds: int = 5, *, seed: int = 0,
                       max_rows: int | None = LDA_MAX_ROWS) -> float:
    """Stratified ``folds``-fold cross-validated accuracy of a shrinkage LDA probe (see the module
    docstring; scikit-learn's ``LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")``)."""
    x = float64_features(raw_tensor(features))
    y, n_classes, _ = prep_labels(labels, x.shape[0], x.device)
    return float(lda_probe_batched(x.unsqueeze(0), y, n_classes, folds, seed, max_rows)[0])
