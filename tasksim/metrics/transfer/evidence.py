"""Evidence and separability measures on :class:`FeatureStats`: LogME, H-score, regularised
H-score, TransRate, GBC. The ``_*_batched`` functions score K sources at once ((K,) tensors); the
public functions take raw ``(features, labels)`` or a ``FeatureStats`` and return a float.

LogME needs the eigendecomposition of the *uncentred* ``F^T F`` while the others need the centred
covariance ``S``. Because ``F^T F = N (S + mu mu^T)`` is a rank-one update of ``N S``, LogME is
evaluated exactly from the eigendecomposition of ``S`` with the Sherman-Morrison formula and the
matrix determinant lemma (``O(D)`` per fixed-point step and class).
"""

from __future__ import annotations

import math

import torch

from tasksim.errors import MetricInputError
from tasksim.metrics._kernels import BLOCK_ELEMS
from tasksim.metrics._validate import (
    ACCUM_DTYPE,
    ArrayLike,
)
from tasksim.metrics.transfer.stats import _EPS64, FeatureStats, _stats

__all__ = [
    "gbc",
    "hscore",
    "hscore_regularized",
    "logme",
    "transrate",
]

_LOG_2PI = math.log(2.0 * math.pi)
# LogME's root search also stops where its estimate moved by at most this much (relative) with the
# fixed-point gap at most this much (see _logme_batched)
_SETTLED = 1e-8


def _logme_batched(st: FeatureStats, *, eps: float = 1e-5, tol: float = 1e-10, max_iter: int = 100) -> torch.Tensor:
    n, d = st.n, st.d
    dt = ACCUM_DTYPE
    vm = st.valid.to(dt).unsqueeze(1)                        # (K, 1, k)
    s = (st.eigvals * n).unsqueeze(1)                        # eigenvalues of N S = Z^T Z
    a = st.proj_mean.unsqueeze(1)                            # mean in the eigenbasis
    cnt = st.counts.to(dt)
    # F^T y_c = class sum = n_c (class mean - mu + mu), in the eigenbasis
    b = cnt.view(1, -1, 1) * (st.proj_class_means + a)      # (K, C, k)
    null = (d - st.valid.sum(-1)).to(dt).unsqueeze(-1)       # (K, 1) directions where F^T F = 0
    yy = cnt.view(1, -1)

    null_dir = vm <= 0                                       # (K, 1, k): s + t is replaced by 1 there

    def at(t: torch.Tensor, with_logdet: bool = False) -> tuple[torch.Tensor, ...]:
        # F^T F + t I = Q (diag(s + t) + N a a^T) Q^T (+ t on null directions): Sherman-Morrison.
        dd = (s + t.unsqueeze(-1)).masked_fill_(null_dir, 1.0)
        inv = vm / dd
        u = a * inv
        kappa = 1.0 + n * (a * u).sum(-1)
        w = b * inv - n * u * ((u * b).sum(-1) / kappa).unsqueeze(-1)   # Q^T m
        gamma = (s * inv).sum(-1) + t * n * (u * u).sum(-1) / kappa
        m2 = (w * w).sum(-1)
        aw = (a * w).sum(-1)
        res2 = (yy - 2.0 * (b * w).sum(-1) + (s * w * w).sum(-1) + n * aw * aw).clamp_min(0.0)
        if not with_logdet:  # the fixed-point search needs no determinant
            return gamma, m2, res2
        logdet = (torch.log(dd) * vm).sum(-1) + torch.log(kappa) + null * torch.log(t)
        return gamma, m2, res2, logdet

    def fixed_point_gap(u: torch.Tensor) -> torch.Tensor:
        """h(u) = log(alpha'/beta') - u with (alpha', beta') one fixed-point update from t = e^u."""
        gamma, m2, res2 = at(torch.exp(u))
        return torch.log(gamma / (m2 + eps)) - torch.log((n - gamma) / (res2 + eps)) - u

    # The fixed point t* = alpha/beta solves h(log t) = 0; h -> +inf as t -> 0 and -inf as t -> inf.
    # Plain iteration (the reference code) can need hundreds of steps (e.g. N < D noise), so the
    # root is bracketed from t = 1 (the reference start) by doubling steps and refined by the
    # Illinois variant of regula falsi, for all sources and classes at once.
    shape = (st.n_sources, st.n_classes)
    u0 = torch.zeros(shape, dtype=dt, device=st.device)
    h0 = fixed_point_gap(u0)
    up = h0 > 0
    lo, f_lo = u0.clone(), h0.clone()          # h(lo) >= 0 (root above lo)
    hi, f_hi = u0.clone(), h0.clone()          # h(hi) <= 0
    step = 1.0
    for _ in range(12):
        open_ = torch.where(up, f_hi > 0, f_lo < 0)
        if not bool(open_.any()):
            break
        trial = torch.where(up, hi + step, lo - step).clamp(-700.0, 700.0)
        ft = fixed_point_gap(trial)
        move_hi = open_ & up
        move_lo = open_ & ~up
        lo = torch.where(move_hi, hi, lo)
        f_lo = torch.where(move_hi, f_hi, f_lo)
        hi = torch.where(move_lo, lo, hi)
        f_hi = torch.where(move_lo, f_lo, f_hi)
        hi = torch.where(move_hi, trial, hi)
        f_hi = torch.where(move_hi, ft, f_hi)
        lo = torch.where(move_lo, trial, lo)
        f_lo = torch.where(move_lo, ft, f_lo)
        step *= 2.0
    side = torch.zeros(shape, dtype=torch.int8, device=st.device)
    done = (f_lo == 0) | (f_hi == 0) | ((hi - lo).abs() <= tol)
    u = torch.where(f_lo == 0, lo, hi)
    for _ in range(max_iter):
        if bool(done.all()):
            break
        denom = f_hi - f_lo
        mid = torch.where(denom != 0, (lo * f_hi - hi * f_lo) / torch.where(denom != 0, denom, torch.ones_like(denom)),
                        0.5 * (lo + hi))
        mid = torch.where((mid > torch.minimum(lo, hi)) & (mid < torch.maximum(lo, hi)), mid, 0.5 * (lo + hi))
        f_mid = fixed_point_gap(mid)
        to_lo = (f_mid > 0) & ~done               # root in [mid, hi]
        to_hi = (f_mid <= 0) & ~done
        f_hi = torch.where(to_lo & (side == 1), f_hi / 2, f_hi)
        f_lo = torch.where(to_hi & (side == -1), f_lo / 2, f_lo)
        lo = torch.where(to_lo, mid, lo)
        f_lo = torch.where(to_lo, f_mid, f_lo)
        hi = torch.where(to_hi, mid, hi)
        f_hi = torch.where(to_hi, f_mid, f_hi)
        side = torch.where(to_lo, torch.ones_like(side), torch.where(to_hi, -torch.ones_like(side), side))
        moved = (mid - u).abs()
        u = torch.where(done, u, mid)
        # |h| rarely falls below ~1e-9 (it is a difference of logarithms of sums): a root whose
        # estimate has stopped moving with |h| already that small is found; the Illinois steps
        # would otherwise grind at that floor until one lands within tol (~3x the evaluations)
        settled = (moved <= _SETTLED * u.abs().clamp_min(1.0)) & (f_mid.abs() <= _SETTLED)
        done = done | ((hi - lo).abs() <= tol) | (f_mid.abs() <= tol) | settled
    gamma, m2, res2 = at(torch.exp(u))
    alpha = gamma / (m2 + eps)
    beta = (n - gamma) / (res2 + eps)
    t = alpha / beta
    gamma, m2, res2, logdet_t = at(t, with_logdet=True)
    evidence = (d / 2.0 * torch.log(alpha) + n / 2.0 * torch.log(beta)
                - 0.5 * (d * torch.log(beta) + logdet_t)
                - beta / 2.0 * res2 - alpha / 2.0 * m2 - n / 2.0 * _LOG_2PI)
    return (evidence / n).mean(-1)


def _pinv_weights(st: FeatureStats, rtol: float | None) -> torch.Tensor:
    lam = st.eigvals
    r = max(st.n, st.d) * _EPS64 if rtol is None else float(rtol)
    cutoff = lam.max(-1, keepdim=True).values * r
    keep = st.valid & (lam > cutoff)
    return torch.where(keep, 1.0 / lam.clamp_min(1e-300), torch.zeros_like(lam))


def _n_components(st: FeatureStats, p: int) -> int:
    """``p`` clamped to the number of leading directions with a positive variance (at least 1)."""
    pos = int((st.valid & (st.eigvals > 0)).sum(-1).min())
    return max(1, min(int(p), pos))


def _between(st: FeatureStats, weights: torch.Tensor) -> torch.Tensor:
    """``tr(W Sb)`` with ``Sb = sum_c pi_c m_c m_c^T`` and W diagonal in the eigenbasis."""
    p2 = st.proj_class_means.square()                         # (K, C, k)
    return (st.priors.view(1, -1, 1) * p2 * weights.unsqueeze(1)).sum((-1, -2))


def _hscore_batched(st: FeatureStats, rtol: float | None = None) -> torch.Tensor:
    return _between(st, _pinv_weights(st, rtol))


def _ledoit_wolf_shrinkage(st: FeatureStats) -> torch.Tensor:
    """Ledoit & Wolf (2004) shrinkage of the centred covariance, as scikit-learn computes it."""
    n, p = st.n, st.d
    if p == 1:
        return torch.zeros_like(st.trace)
    mu = st.trace / p
    beta_ = st.row_norm4                                      # sum_ij x_ij^2 x_ik^2 = sum_i ||x_i||^4
    delta_ = st.frob2                                         # ||S||_F^2
    beta = (beta_ / n - delta_) / (p * n)
    delta = (delta_ - 2.0 * mu * st.trace + p * mu * mu) / p
    beta = torch.minimum(beta, delta)
    return torch.where(beta == 0, torch.zeros_like(beta), beta / torch.where(delta == 0, torch.ones_like(delta), delta))


def _hscore_reg_batched(st: FeatureStats) -> torch.Tensor:
    shrink = _ledoit_wolf_shrinkage(st)
    mu = (st.trace / st.d).unsqueeze(-1)
    sh = shrink.unsqueeze(-1)
    denom = (1.0 - sh) * st.eigvals + sh * mu
    w = torch.where(st.valid & (denom > 0), (1.0 - sh) / denom.clamp_min(1e-300), torch.zeros_like(denom))
    reg = _between(st, w)
    # No shrinkage: the plain H-score (pseudo-inverse).
    return torch.where(shrink > 0, reg, _hscore_batched(st))


def _transrate_batched(st: FeatureStats, eps: float) -> torch.Tensor:
    rz = 0.5 * torch.log1p(st.eigvals / eps).mul(st.valid).sum(-1)
    rzy = 0.5 * (st.class_logdets(eps) * st.priors.view(1, -1)).sum(-1)
    return rz - rzy


def _gbc_moments(st: FeatureStats, pca_dim: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class means (K, C, p) and biased diagonal variances (K, C, p) in the PCA (or raw) space."""
    cnt = st.counts.to(ACCUM_DTYPE).view(1, -1, 1)
    use_pca = pca_dim is not None and pca_dim < st.d
    y = None
    if use_pca:
        p = _n_components(st, pca_dim)
        means = st.proj_class_means[:, :, :p]
        if st.row_coords is not None:  # the rows' PCA coordinates, computed without D-dim eigenvectors
            y = st.row_coords[:, :, :p]
        w = None if st.eigvecs is None else st.eigvecs[:, :, :p]
    else:
        w = None
        means = st.class_means
    if y is None and st.centred is not None:
        y = st.centred if w is None else st.centred @ w
    if y is not None:
        diff = y - means.index_select(1, st.sorted_labels)
        sq = diff * diff if st.row_weights is None else diff * diff * st.row_weights.view(1, -1, 1)
        var = torch.zeros_like(means).index_add_(1, st.sorted_labels, sq) / cnt
    elif st.class_grams is not None:
        if w is None:
            sq = st.class_grams.diagonal(dim1=-2, dim2=-1)
        else:
            sq = (st.class_grams @ w.unsqueeze(1) * w.unsqueeze(1)).sum(-2)
        var = sq / cnt - means * means
    else:
        raise MetricInputError("GBC needs the centred features or per-class Gram matrices")
    return means, var


def _gbc_batched(st: FeatureStats, pca_dim: int | None = 64, gaussian: str = "diagonal",
                 min_var: float = 1e-4) -> torch.Tensor:
    if gaussian not in ("diagonal", "spherical"):
        raise MetricInputError(f"gaussian must be 'diagonal' or 'spherical', got {gaussian!r}")
    means, var = _gbc_moments(st, pca_dim)
    var = var.clamp_min(min_var)
    k, c, p = means.shape
    if gaussian == "spherical":
        var = var.mean(-1, keepdim=True).expand(k, c, p)
    logv = var.log().sum(-1)                                  # (K, C)
    total = torch.zeros(k, dtype=ACCUM_DTYPE, device=means.device)
    block = max(1, BLOCK_ELEMS // max(1, k * c * p))
    for i0 in range(0, c, block):
        i1 = min(c, i0 + block)
        avg = 0.5 * (var[:, i0:i1].unsqueeze(2) + var.unsqueeze(1))          # (K, b, C, p)
        diff2 = (means[:, i0:i1].unsqueeze(2) - means.unsqueeze(1)).square()
        db = (diff2 / avg).sum(-1) / 8.0 + 0.5 * (avg.log().sum(-1) - 0.5 * logv[:, i0:i1].unsqueeze(2)
                                                   - 0.5 * logv.unsqueeze(1))
        bc = torch.exp(-db)
        eye = torch.arange(i0, i1, device=means.device).unsqueeze(1) == torch.arange(c, device=means.device)
        total += bc.masked_fill(eye.unsqueeze(0), 0.0).sum((-1, -2))
    return -total


@torch.no_grad()
def logme(features: ArrayLike | FeatureStats, labels: ArrayLike | None = None, *, eps: float = 1e-5,
          tol: float = 1e-10, max_iter: int = 100) -> float:
    """LogME (You et al., ICML 2021), classification mode: mean over classes of the maximum
    log-evidence per sample of a Bayesian linear regression from the features to the class's
    one-hot column.

    For target ``y_c`` (one-hot column of class c), prior ``w ~ N(0, alpha^-1 I_D)`` and noise
    ``y ~ N(F w, beta^-1 I_N)``, with ``A = alpha I + beta F^T F`` and
    ``m = beta A^-1 F^T y``::

        L_c = D/2 log alpha + N/2 log beta - 1/2 log|A| - beta/2 ||F m - y||^2 - alpha/2 ||m||^2
              - N/2 log 2 pi
        LogME = (1/C) sum_c L_c / N

    at the fixed point ``gamma = sum_i sigma_i/(sigma_i + alpha/beta)`` (sigma_i eigenvalues of
    ``F^T F``), ``alpha = gamma/(||m||^2 + eps)``, ``beta = (N - gamma)/(||Fm - y||^2 + eps)``
    (``eps = 1e-5`` as in the reference implementation), solved to convergence for all classes at
    once: the fixed point ``t = alpha/beta`` is the root of ``log(alpha'/beta') - log t`` (one
    update from t), bracketed from t = 1 and refined by regula falsi (Illinois) to ``|d log t| <=
    tol`` or a gap ``<= tol``, or until the estimate moves by at most 1e-8 (relative) with the gap
    at most 1e-8 (the gap's rounding floor is ~1e-9: the values equal a search run to ``tol``
    within ~1e-10 relative). The reference code stops after at most 11 plain iterations (or a 1e-3 relative
    change), which can be far from the fixed point (pure noise with N < D needs hundreds of
    plain iterations). ``log|A|`` runs over all D eigenvalues, so
    ``N < D`` (and rank-deficient F) is handled: the reference code drops ``(D - k)/2 log alpha``
    with ``k = rank(F)`` (thuml/LogME issue #23).

    The features are not centred (LogME has no bias term): ``F^T F = N (S + mu mu^T)`` is
    evaluated exactly from the shared eigendecomposition of the centred covariance ``S`` by the
    Sherman-Morrison formula and the matrix determinant lemma.
    """
    st = _stats(features, labels, need_features=False)
    return float(_logme_batched(st, eps=eps, tol=tol, max_iter=max_iter)[0])


@torch.no_grad()
def hscore(features: ArrayLike | FeatureStats, labels: ArrayLike | None = None, *, rtol: float | None = None) -> float:
    """H-score (Bao et al., ICIP 2019): ``tr(pinv(cov f) cov(E[f | y]))``.

    Population (1/N) covariances; ``cov(E[f|y]) = sum_c pi_c (m_c - mu)(m_c - mu)^T``. The
    pseudo-inverse drops eigenvalues below ``rtol * lambda_max`` (default ``max(N, D) * eps64``).
    Unstable unless N >> D: for ``N <= D`` it saturates at ``C - 1``.
    """
    return float(_hscore_batched(_stats(features, labels, need_features=False), rtol)[0])


@torch.no_grad()
def hscore_regularized(features: ArrayLike | FeatureStats, labels: ArrayLike | None = None) -> float:
    """Shrinkage-based H-score (Ibrahim et al., "Newer is not always better", 2022).

    ``H_a = tr(S_a^-1 (1 - a) cov(E[f | y]))`` where ``S_a = (1 - a) S + a (tr S / D) I`` is the
    Ledoit-Wolf estimate of the (population) covariance of the centred features and ``a`` its
    Ledoit-Wolf shrinkage (identical to ``sklearn.covariance.LedoitWolf``). With ``a = 0`` this is
    :func:`hscore`.
    """
    return float(_hscore_reg_batched(_stats(features, labels, need_features=False))[0])


@torch.no_grad()
def transrate(features: ArrayLike | FeatureStats, labels: ArrayLike | None = None, eps: float = 1e-4) -> float:
    """TransRate (Huang et al., ICML 2022): ``R(Z, eps) - R(Z | Y, eps)`` on centred features.

    ``R(Z, eps) = 1/2 log det(I + Z^T Z / (N eps))`` (the coding rate, with ``eps`` standing for
    epsilon^2 as in the authors' code) and ``R(Z | Y, eps) = sum_c (n_c / N) R(Z_c, eps)`` where
    ``Z_c`` are the rows of class c of the globally centred features (class-size weights, as the
    authors' eigenvalue pipeline; their short snippet averages classes uniformly, which is the
    same for balanced classes). Scale dependent (features x10 change the value).
    """
    eps = float(eps)
    if not eps > 0:
        raise MetricInputError(f"eps must be > 0, got {eps!r}")
    st = _stats(features, labels, transrate_eps=eps)
    return float(_transrate_batched(st, eps)[0])


@torch.no_grad()
def gbc(features: ArrayLike | FeatureStats, labels: ArrayLike | None = None, *, pca_dim: int | None = 64,
        gaussian: str = "diagonal") -> float:
    """Gaussian Bhattacharyya Coefficient (Pandy et al., CVPR 2022): ``-sum_{i != j} BC(c_i, c_j)``.

    Each class is a Gaussian with its mean and (biased) per-dimension variance, floored at 1e-4 as
    in the authors' code, on the first ``pca_dim`` principal components (taken from the shared
    eigendecomposition; ``None`` or ``pca_dim >= D``: the raw centred features).
    ``BC = exp(-D_B)``, ``D_B = 1/8 (mu_i - mu_j)^T S^-1 (mu_i - mu_j) + 1/2 ln(det S /
    sqrt(det S_i det S_j))`` with ``S = (S_i + S_j)/2``. ``gaussian='spherical'`` uses the mean
    variance per class (in every dimension). Higher (closer to 0) is better.
    """
    return float(_gbc_batched(_stats(features, labels, need_centred=True), pca_dim, gaussian)[0])
