"""Transferability measures outside the default profile: NLEEP, SFDA, PARC and a
cross-validated linear probe (each computed per source).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from tasksim.errors import MetricInputError
from tasksim.metrics._kernels import BLOCK_ELEMS, average_ranks, subsample_indices
from tasksim.metrics._validate import (
    ACCUM_DTYPE,
    ArrayLike,
    as_labels,
    float64_features,
    prep_labels,
    raw_tensor,
)
from tasksim.metrics.transfer.evidence import _LOG_2PI, _n_components
from tasksim.metrics.transfer.probs import _leep_batched
from tasksim.metrics.transfer.stats import _EPS64, FeatureStats, _stats

__all__ = [
    "linear_probe_accuracy",
    "nleep",
    "parc",
    "sfda",
]


def _gmm_log_prob(x: torch.Tensor, means: torch.Tensor, covs: torch.Tensor, cov_type: str) -> torch.Tensor:
    """(N, M) log N(x_i | mean_j, cov_j); covs (M, p) variances ('diag') or (M, p, p) ('full')."""
    n, p = x.shape
    if cov_type == "diag":
        prec = 1.0 / covs
        maha = (x * x) @ prec.T - 2.0 * x @ (means * prec).T + (means * means * prec).sum(1)
        return -0.5 * (p * _LOG_2PI + covs.log().sum(1) + maha)
    chol = torch.linalg.cholesky(covs)                                   # (M, p, p)
    logdet = 2.0 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    out = torch.empty(n, means.shape[0], dtype=x.dtype, device=x.device)
    block = max(1, BLOCK_ELEMS // max(1, n * p))
    for j0 in range(0, means.shape[0], block):
        j1 = min(means.shape[0], j0 + block)
        diff = (x.unsqueeze(0) - means[j0:j1].unsqueeze(1)).transpose(1, 2)        # (b, p, N)
        sol = torch.linalg.solve_triangular(chol[j0:j1], diff, upper=False)
        out[:, j0:j1] = (-0.5 * (p * _LOG_2PI + logdet[j0:j1].unsqueeze(1) + sol.square().sum(1))).T
    return out


def _gmm_m_step(x: torch.Tensor, resp: torch.Tensor, cov_type: str, reg_covar: float):
    nk = resp.sum(0) + 10.0 * _EPS64
    means = resp.T @ x / nk.unsqueeze(1)
    if cov_type == "diag":
        covs = resp.T @ (x * x) / nk.unsqueeze(1) - 2.0 * means * (resp.T @ x) / nk.unsqueeze(1) + means * means
        covs = covs + reg_covar
    else:
        p = x.shape[1]
        covs = torch.empty(means.shape[0], p, p, dtype=x.dtype, device=x.device)
        for j in range(means.shape[0]):
            diff = x - means[j]
            covs[j] = (resp[:, j:j + 1] * diff).T @ diff / nk[j]
            covs[j].diagonal().add_(reg_covar)
    return nk / x.shape[0], means, covs


def _gmm_em(x: torch.Tensor, weights: torch.Tensor, means: torch.Tensor, covs: torch.Tensor, *,
            cov_type: str = "diag", max_iter: int = 100, tol: float = 1e-3,
            reg_covar: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """EM for a Gaussian mixture from the given initial parameters (scikit-learn's update order:
    E-step, M-step, stop when the mean log-likelihood changes by less than ``tol``). Returns
    ``(weights, means, covs, posteriors)`` with the posteriors of the final parameters."""
    lower = -math.inf
    for _ in range(max_iter):
        logp = _gmm_log_prob(x, means, covs, cov_type) + weights.log()
        norm = torch.logsumexp(logp, 1, keepdim=True)
        resp = (logp - norm).exp()
        weights, means, covs = _gmm_m_step(x, resp, cov_type, reg_covar)
        new = float(norm.mean())
        if abs(new - lower) < tol:
            break
        lower = new
    logp = _gmm_log_prob(x, means, covs, cov_type) + weights.log()
    post = (logp - torch.logsumexp(logp, 1, keepdim=True)).exp()
    return weights, means, covs, post


def _kmeans_init(x: torch.Tensor, m: int, seed: int, iters: int = 10) -> torch.Tensor:
    """k-means++ seeding (seeded, CPU generator) then Lloyd iterations; returns hard assignments."""
    n = x.shape[0]
    g = torch.Generator().manual_seed(int(seed))
    centers = [int(torch.randint(n, (1,), generator=g))]
    d2 = ((x - x[centers[0]]) ** 2).sum(1)
    for _ in range(1, m):
        probs = d2.clamp_min(0).cpu()
        idx = int(torch.multinomial(probs / probs.sum(), 1, generator=g)) if float(probs.sum()) > 0 else \
            int(torch.randint(n, (1,), generator=g))
        centers.append(idx)
        d2 = torch.minimum(d2, ((x - x[idx]) ** 2).sum(1))
    c = x[centers].clone()
    assign = None
    for _ in range(iters):
        dist = (x * x).sum(1, keepdim=True) - 2.0 * x @ c.T + (c * c).sum(1)
        new_assign = dist.argmin(1)
        if assign is not None and torch.equal(new_assign, assign):
            break
        assign = new_assign
        cnt = torch.bincount(assign, minlength=m).to(x.dtype)
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        nonempty = cnt > 0
        c[nonempty] = sums[nonempty] / cnt[nonempty].unsqueeze(1)
    return assign


@torch.no_grad()
def nleep(features: ArrayLike | FeatureStats, labels: ArrayLike | None = None, *, components_per_class: int = 5,
          variance_kept: float = 0.8, covariance_type: str = "diag", max_iter: int = 100, tol: float = 1e-3,
          reg_covar: float = 1e-6, seed: int = 0) -> float:
    """N-LEEP (Li et al., "Ranking neural checkpoints", CVPR 2021): LEEP with the posterior of a
    Gaussian mixture fitted to the features standing in for the source classifier.

    The centred features are reduced by PCA to the fewest leading components explaining
    ``variance_kept`` (80%) of the variance (shared eigendecomposition), a mixture of
    ``components_per_class * C`` Gaussians (5 per class as in the paper; capped at N) is fitted by
    EM in torch (k-means++ seeding with ``seed`` and Lloyd iterations, then EM with scikit-learn's
    update rules and ``reg_covar``), and LEEP is computed with ``theta_i = p(component | x_i)``.
    ``covariance_type='diag'`` (default, ``O(N M p)`` per step) or ``'full'`` (scikit-learn's
    default; ``O(N M p^2)``).
    """
    if covariance_type not in ("diag", "full"):
        raise MetricInputError(f"covariance_type must be 'diag' or 'full', got {covariance_type!r}")
    if not 0.0 < variance_kept <= 1.0:
        raise MetricInputError(f"variance_kept must be in (0, 1], got {variance_kept!r}")
    st = _stats(features, labels, need_centred=True)
    lam = st.eigvals[0] * st.valid[0]
    ratio = torch.cumsum(lam, 0) / lam.sum().clamp_min(1e-300)
    p = int(torch.searchsorted(ratio, torch.tensor([variance_kept], dtype=ratio.dtype, device=ratio.device),
                               right=True)) + 1
    p = _n_components(st, p)
    x = st.centred[0] @ st.eigvecs[0, :, :p]
    m = max(1, min(int(components_per_class) * st.n_classes, st.n))
    assign = _kmeans_init(x, m, seed)
    resp = torch.zeros(st.n, m, dtype=x.dtype, device=x.device)
    resp[torch.arange(st.n, device=x.device), assign] = 1.0
    w0, mu0, cov0 = _gmm_m_step(x, resp, covariance_type, reg_covar)
    *_, post = _gmm_em(x, w0, mu0, cov0, cov_type=covariance_type, max_iter=max_iter, tol=tol, reg_covar=reg_covar)
    return float(_leep_batched(post.unsqueeze(0), st.sorted_labels, st.n_classes)[0])


def _largest_eigenvalue(a: torch.Tensor, max_iter: int = 500, tol: float = 1e-12) -> float:
    """Largest eigenvalue of a symmetric PSD matrix by power iteration (Rayleigh quotient)."""
    x = a.sum(1)
    if float(x.norm()) == 0.0:
        x = torch.ones(a.shape[0], dtype=a.dtype, device=a.device)
    x = x / x.norm()
    val = 0.0
    for _ in range(max_iter):
        y = a @ x
        new = float(x @ y)
        ny = y.norm()
        if float(ny) == 0.0:
            return 0.0
        x = y / ny
        if abs(new - val) <= tol * max(abs(new), 1e-300):
            return new
        val = new
    return val


def _lda_scores(x: torch.Tensor, y: torch.Tensor, n_classes: int, counts: torch.Tensor, shrinkage: float | None
                ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Shrinkage-LDA posteriors as in SFDA's first and second stage: returns (probs, class means, shrinkage)."""
    n, d = x.shape
    cnt = counts.to(x.dtype)
    priors = cnt / n
    means = torch.zeros(n_classes, d, dtype=x.dtype, device=x.device).index_add_(0, y, x) / cnt.unsqueeze(1)
    r = x - means[y]
    sw = r.T @ r / n                                              # sum_c pi_c cov_c (biased)
    if shrinkage is None:
        shrinkage = max(math.exp(-5.0 * _largest_eigenvalue(sw)), 1e-10)
    mu = float(torch.trace(sw)) / d
    sw_s = (1.0 - shrinkage) * sw
    sw_s.diagonal().add_(shrinkage * mu)
    coef = torch.cholesky_solve(means.T.contiguous(), torch.linalg.cholesky(sw_s)).T     # means Sw^-1
    scores = x @ coef.T - 0.5 * (means * coef).sum(1) + priors.log()
    return torch.softmax(scores, 1), means, float(shrinkage)


@torch.no_grad()
def sfda(features: ArrayLike | FeatureStats, labels: ArrayLike | None = None, *,
         shrinkage: float | None = None) -> float:
    """SFDA (Shao et al., "Not all models are equal", ECCV 2022): self-challenging Fisher
    discriminant analysis.

    1. Regularised Fisher/LDA classifier: within-class scatter ``Sw = sum_c pi_c cov_c``,
       ``Sw_l = (1 - l) Sw + l (tr Sw / D) I`` with ``l = exp(-5 sigma_max(Sw))`` (floored at 1e-10;
       ``sigma_max`` by power iteration), posteriors
       ``p(c | x) = softmax_c(x^T Sw_l^-1 m_c - 1/2 m_c^T Sw_l^-1 m_c + log pi_c)`` (all Fisher
       directions kept: the classifier of the generalised eigenproblem ``Sb v = s Sw_l v``).
    2. ConfMix: soften the posteriors with another softmax and move each sample towards the mean
       of the other classes' means, ``x' = p_y x + (1 - p_y) o_y``.
    3. Refit the same classifier (same ``l``) on the mixed features; the score is the mean
       posterior of the true class.

    Follows the authors' released code (TencentARC/SFDA). Costs two extra ``D x D`` scatter
    matrices and solves.
    """
    if isinstance(features, FeatureStats):
        st = _stats(features, labels, need_centred=True)
        x, y, c, counts = st.centred[0], st.sorted_labels, st.n_classes, st.counts
    else:                                   # no eigendecomposition needed: centre only
        x = float64_features(raw_tensor(features))
        y, c, counts = prep_labels(labels, x.shape[0], x.device)
        x = x - x.mean(0)
    prob, means, lam = _lda_scores(x, y, c, counts, shrinkage)
    prob = torch.softmax(prob, 1)
    outer = (means.sum(0, keepdim=True) - means) / (c - 1)
    py = prob.gather(1, y.unsqueeze(1))
    mixed = py * x + (1.0 - py) * outer[y]
    prob2, _, _ = _lda_scores(mixed, y, c, counts, lam)
    return float(prob2.gather(1, y.unsqueeze(1)).mean())


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = a - a.mean()
    b = b - b.mean()
    return (a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-300)


@torch.no_grad()
def parc(features: ArrayLike | FeatureStats, labels: ArrayLike | None = None, *, pca_dim: int | None = 32,
         max_samples: int | None = 2000, seed: int = 0, correlation: str = "spearman") -> float:
    """PARC (Bolya et al., "Scalable diverse model selection", NeurIPS 2021), x100 as the authors report.

    Features are reduced to ``pca_dim`` principal components (shared eigendecomposition; None:
    raw features) and standardised per dimension; the representation dissimilarity matrix is
    ``1 - Pearson correlation`` between samples, the label one the same on one-hot labels (0 for
    the same class, ``1 + 1/(C-1)`` otherwise). PARC is the ``correlation`` ('spearman' as in the
    paper and code, or 'pearson') between the upper triangles. Above ``max_samples`` samples a
    seeded random subset is used (the dissimilarity matrices are ``N x N``).
    """
    if correlation not in ("spearman", "pearson"):
        raise MetricInputError(f"correlation must be 'spearman' or 'pearson', got {correlation!r}")
    st = _stats(features, labels, need_centred=True)
    z, y = st.centred[0], st.sorted_labels
    if pca_dim is not None and pca_dim < st.d:
        z = z @ st.eigvecs[0, :, :_n_components(st, pca_dim)]
    # Sample selection in the input row order (sorted_labels are a permutation of it).
    idx = subsample_indices(st.n, max_samples, seed, z.device)
    if idx is not None:
        if st.order is None:
            sel = idx
        else:
            pos = torch.empty(st.n, dtype=torch.long, device=z.device)
            pos[st.order] = torch.arange(st.n, device=z.device)
            sel = pos[idx]
        z, y = z[sel], y[sel]
    sd = z.std(0, unbiased=False)
    z = (z - z.mean(0)) / torch.where(sd > 0, sd, torch.ones_like(sd))
    zr = z - z.mean(1, keepdim=True)
    zr = zr / zr.norm(dim=1, keepdim=True).clamp_min(1e-300)
    m = z.shape[0]
    iu = torch.triu_indices(m, m, offset=1, device=z.device)
    rdm_f = 1.0 - (zr @ zr.T)[iu[0], iu[1]]
    same = (y[iu[0]] == y[iu[1]])
    rdm_y = torch.where(same, torch.zeros_like(rdm_f), torch.full_like(rdm_f, 1.0 + 1.0 / (st.n_classes - 1)))
    if correlation == "spearman":
        rho = _pearson(average_ranks(rdm_f), average_ranks(rdm_y))
    else:
        rho = _pearson(rdm_f, rdm_y)
    return float(rho) * 100.0


def _fold_ids(y: torch.Tensor, folds: int | ArrayLike, seed: int) -> tuple[torch.Tensor, int]:
    if isinstance(folds, (int, np.integer)):
        f = int(folds)
        if f < 2:
            raise MetricInputError(f"folds must be >= 2, got {f}")
        ycpu = y.cpu()
        g = torch.Generator().manual_seed(int(seed))
        ids = torch.empty_like(ycpu)
        for c in torch.unique(ycpu).tolist():
            idx = torch.nonzero(ycpu == c).squeeze(1)
            idx = idx[torch.randperm(idx.shape[0], generator=g)]
            ids[idx] = torch.arange(idx.shape[0]) % f
        return ids.to(y.device), f
    ids, f = as_labels(folds, "folds", device=y.device)
    if ids.shape[0] != y.shape[0]:
        raise MetricInputError(f"folds has {ids.shape[0]} entries but labels has {y.shape[0]}")
    if f < 2:
        raise MetricInputError("folds must assign at least 2 distinct fold ids")
    return ids, f


def linear_probe_accuracy(features: ArrayLike | FeatureStats, labels: ArrayLike | None = None, folds: int | ArrayLike = 5,
                          *, c: float = 1.0, standardize: bool = True, max_iter: int = 200, tol: float = 1e-6,
                          seed: int = 0) -> float:
    """Cross-validated accuracy of a multinomial logistic-regression probe on the features.

    Stratified ``folds``-fold CV (each class shuffled with ``seed`` and dealt round-robin) or
    explicit fold ids per sample. Per fold: features standardised with training-fold statistics
    (``standardize``), then ``min_W,b 1/n sum_i CE(W x_i + b, y_i) + ||W||^2 / (2 c n)`` (the
    objective of scikit-learn's ``LogisticRegression(C=c)`` divided by ``c n``; intercept
    unpenalised), solved by L-BFGS (strong Wolfe line search) in float64. All folds are fitted
    in one batched problem (their objectives are separable). Returns the fraction of samples
    classified correctly when held out.
    """
    if not c > 0:
        raise MetricInputError(f"c must be > 0, got {c!r}")
    if isinstance(features, FeatureStats):
        st = _stats(features, labels)
        if st.features is None:
            raise MetricInputError("the linear probe needs the input features: precompute(..., keep_features=True)")
        x = st.features[0].to(ACCUM_DTYPE)
        y, n_classes = st.labels, st.n_classes
    else:
        x = float64_features(raw_tensor(features))
        y, n_classes, _ = prep_labels(labels, x.shape[0], x.device)
    n, d = x.shape
    fold, nf = _fold_ids(y, folds, seed)
    test = fold.unsqueeze(0) == torch.arange(nf, device=x.device).unsqueeze(1)      # (F, N)
    train = (~test).to(x.dtype)
    n_tr = train.sum(1)
    if bool((n_tr == 0).any()):
        raise MetricInputError("a fold leaves no training samples")
    if standardize:
        mean = train @ x / n_tr.unsqueeze(1)
        var = train @ (x * x) / n_tr.unsqueeze(1) - mean * mean
        sd = var.clamp_min(0).sqrt()
        sd = torch.where(sd > 1e-12 * (mean.abs() + 1), sd, torch.ones_like(sd))
    else:
        mean = torch.zeros(nf, d, dtype=x.dtype, device=x.device)
        sd = torch.ones(nf, d, dtype=x.dtype, device=x.device)
    w = torch.zeros(nf, d, n_classes, dtype=x.dtype, device=x.device, requires_grad=True)
    b = torch.zeros(nf, n_classes, dtype=x.dtype, device=x.device, requires_grad=True)
    onehot = torch.nn.functional.one_hot(y, n_classes).to(x.dtype)

    def logits() -> torch.Tensor:
        ws = w / sd.unsqueeze(-1)                                  # standardisation folded into W
        bias = b - (mean.unsqueeze(1) @ ws).squeeze(1)
        out = (x @ ws.permute(1, 0, 2).reshape(d, nf * n_classes)).view(n, nf, n_classes)
        return out.permute(1, 0, 2) + bias.unsqueeze(1)           # (F, N, C)

    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=tol, tolerance_change=1e-14,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        lg = logits()
        ce = torch.logsumexp(lg, -1) - (lg * onehot).sum(-1)      # (F, N)
        loss = ((ce * train).sum(1) / n_tr).sum() + (w.square().sum((1, 2)) / (2.0 * c * n_tr)).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        pred = logits().argmax(-1)                                 # (F, N)
        correct = ((pred == y.unsqueeze(0)) & test).sum()
    return float(correct) / n
