"""Distances between a source and a target sample: MMD, Frechet, OTDD, domain AUC, label shift.

Every function takes numpy arrays or torch tensors (rows are samples), computes on the device of its
tensor inputs (numpy inputs join that device; CPU when there is none), accumulates in float64 and
returns a Python ``float``. Invalid inputs (NaN/Inf, mismatched widths, too few samples) raise
:class:`tasksim.errors.MetricInputError`.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from tasksim.errors import MetricInputError
from tasksim.metrics._common import ACCUM_DTYPE, ArrayLike, as_features, as_labels, stratified_folds

__all__ = [
    "domain_classifier_auc",
    "frechet_distance",
    "label_shift",
    "median_bandwidth",
    "mmd2",
    "mmd_test",
    "otdd",
]

# Largest number of kernel entries materialised at once (2**20 float64 = 8 MiB).
_CHUNK_ELEMS = 2**20
_TILE_COLS = 2048
# Pooled sample size above which the median heuristic subsamples (fixed seed).
_MEDIAN_MAX_POINTS = 2000
# Pooled sample size up to which the permutation test holds one pooled kernel matrix.
_PERM_MAX_POOLED = 3000


# --------------------------------------------------------------------------------------------
# shared private helpers (also used by tasksim.metrics.representation)
# --------------------------------------------------------------------------------------------

def _target_device(*arrays: ArrayLike) -> torch.device | None:
    """Device of the first torch tensor among ``arrays`` (numpy inputs follow it); None if none."""
    for a in arrays:
        if isinstance(a, torch.Tensor):
            return a.device
    return None


def _features(x: ArrayLike, name: str, device: torch.device | None, min_rows: int = 2,
              dtype: torch.dtype = ACCUM_DTYPE) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        x = x.detach()
    return as_features(x, name, dtype=dtype, device=device, min_rows=min_rows)


def _same_width(a: torch.Tensor, b: torch.Tensor, names: tuple[str, str]) -> None:
    if a.shape[1] != b.shape[1]:
        raise MetricInputError(
            f"{names[0]} has {a.shape[1]} features but {names[1]} has {b.shape[1]}: widths must match"
        )


def _sq_dists(a: torch.Tensor, b: torch.Tensor, a_sq: torch.Tensor | None = None,
              b_sq: torch.Tensor | None = None) -> torch.Tensor:
    """Squared Euclidean distances ``||a_i - b_j||^2`` (clamped at 0) via one matrix product."""
    if a_sq is None:
        a_sq = (a * a).sum(1)
    if b_sq is None:
        b_sq = (b * b).sum(1)
    d = torch.addmm(b_sq.unsqueeze(0), a, b.T, alpha=-2.0)
    d.add_(a_sq.unsqueeze(1))
    return d.clamp_min_(0.0)


def _median(values: torch.Tensor) -> float:
    """Median of a 1-D tensor with numpy's convention (mean of the two middle values)."""
    v = values.reshape(-1)
    n = v.numel()
    if n == 0:
        raise MetricInputError("median of an empty set")
    s = torch.sort(v).values
    lo, hi = s[(n - 1) // 2], s[n // 2]
    return float((lo.double() + hi.double()) / 2.0)


def _pairwise_median(x: torch.Tensor, max_points: int | None = _MEDIAN_MAX_POINTS, seed: int = 0) -> float:
    """Median Euclidean distance over the pairs i<j of the rows of ``x`` (rows subsampled first)."""
    n = x.shape[0]
    if max_points is not None and n > max_points:
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(n, generator=g)[:max_points].to(x.device)
        x = x[idx]
        n = max_points
    xc = x - x.mean(0, keepdim=True)
    d2 = _sq_dists(xc, xc)
    iu = torch.triu_indices(n, n, offset=1, device=x.device)
    return _median(d2[iu[0], iu[1]].sqrt())


# --------------------------------------------------------------------------------------------
# MMD
# --------------------------------------------------------------------------------------------

def median_bandwidth(x: ArrayLike, y: ArrayLike | None = None, *, max_points: int = _MEDIAN_MAX_POINTS,
                     seed: int = 0) -> float:
    """Median heuristic (Gretton et al. 2012): median pairwise Euclidean distance of the pooled sample.

    The pooled rows of ``x`` (and ``y``) are subsampled to ``max_points`` with a fixed ``seed``
    first, so the cost is bounded. Raises :class:`MetricInputError` when the median is 0.
    """
    dev = _target_device(x, y)
    xs = _features(x, "x", dev)
    if y is not None:
        ys = _features(y, "y", dev)
        _same_width(xs, ys, ("x", "y"))
        xs = torch.cat([xs, ys])
    bw = _pairwise_median(xs, max_points, seed)
    if not bw > 0.0:
        raise MetricInputError("median heuristic bandwidth is 0 (most rows are identical): pass bandwidth=")
    return bw


def _kernel_sum(a: torch.Tensor, b: torch.Tensor | None, gamma: float) -> torch.Tensor:
    """Sum of ``exp(-gamma ||a_i - b_j||^2)``; with ``b=None`` the sum over i != j of ``a`` with itself.

    The exponent ``2 gamma a.b - gamma |a|^2 - gamma |b|^2`` comes out of one matrix product of
    augmented rows ``[2 gamma a, -gamma |a|^2, 1]`` and ``[b, 1, -gamma |b|^2]``. Tiles keep at most
    ``_CHUNK_ELEMS`` kernel entries alive (a few MiB, cache-friendly); the self sum visits only the
    upper triangle of tiles.
    """
    n = a.shape[0]
    ones_a = torch.ones(n, 1, dtype=a.dtype, device=a.device)
    a_sq = (a * a).sum(1, keepdim=True)
    left = torch.cat([(2.0 * gamma) * a, -gamma * a_sq, ones_a], dim=1)
    if b is None:
        right = torch.cat([a, ones_a, -gamma * a_sq], dim=1)
    else:
        b_sq = (b * b).sum(1, keepdim=True)
        right = torch.cat([b, torch.ones_like(b_sq), -gamma * b_sq], dim=1)
    m = right.shape[0]
    cols = max(1, min(m, _TILE_COLS))
    rows = max(1, min(n, _CHUNK_ELEMS // cols))
    total = torch.zeros((), dtype=ACCUM_DTYPE, device=a.device)
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        c_start = r0 if b is None else 0
        for c0 in range(c_start, m, cols):
            c1 = min(m, c0 + cols)
            k = (left[r0:r1] @ right[c0:c1].T).clamp_max_(0.0).exp_()
            if b is None:
                # Entries with column > row count twice (symmetry), the diagonal not at all.
                if c0 < r1:
                    k = torch.triu(k, diagonal=r0 - c0 + 1)
                total += 2.0 * k.sum()
            else:
                total += k.sum()
    return total


def _prep_pair(x: ArrayLike, y: ArrayLike, names: tuple[str, str] = ("x", "y")) -> tuple[torch.Tensor, torch.Tensor]:
    dev = _target_device(x, y)
    xt = _features(x, names[0], dev)
    yt = _features(y, names[1], dev)
    _same_width(xt, yt, names)
    return xt, yt


def _bandwidth(x: torch.Tensor, y: torch.Tensor, bandwidth: float | None) -> float:
    if bandwidth is None:
        bw = _pairwise_median(torch.cat([x, y]), _MEDIAN_MAX_POINTS, 0)
        if not bw > 0.0:
            raise MetricInputError("median heuristic bandwidth is 0 (most rows are identical): pass bandwidth=")
        return bw
    bw = float(bandwidth)
    if not (math.isfinite(bw) and bw > 0.0):
        raise MetricInputError(f"bandwidth must be a positive finite number, got {bandwidth!r}")
    return bw


def mmd2(x: ArrayLike, y: ArrayLike, bandwidth: float | None = None) -> float:
    """Unbiased squared maximum mean discrepancy with a Gaussian kernel (Gretton et al., JMLR 2012).

    ``MMD^2_u = 1/(m(m-1)) sum_{i!=j} k(x_i,x_j) + 1/(n(n-1)) sum_{i!=j} k(y_i,y_j)
    - 2/(mn) sum_{i,j} k(x_i,y_j)`` with ``k(a,b) = exp(-||a-b||^2 / (2 bandwidth^2))``.

    ``bandwidth=None`` uses the median heuristic (:func:`median_bandwidth` of the pooled sample,
    subsampled with a fixed seed above 2000 rows). Kernel sums run in row blocks, so memory stays
    bounded for large samples. The U-statistic can be slightly negative when x and y match.
    """
    xt, yt = _prep_pair(x, y)
    bw = _bandwidth(xt, yt, bandwidth)
    # Distances are translation invariant: centring on the pooled mean limits cancellation.
    centre = torch.cat([xt, yt]).mean(0, keepdim=True)
    xt, yt = xt - centre, yt - centre
    gamma = 1.0 / (2.0 * bw * bw)
    m, n = xt.shape[0], yt.shape[0]
    kxx = _kernel_sum(xt, None, gamma)
    kyy = _kernel_sum(yt, None, gamma)
    kxy = _kernel_sum(xt, yt, gamma)
    val = kxx / (m * (m - 1)) + kyy / (n * (n - 1)) - 2.0 * kxy / (m * n)
    return float(val)


def mmd_test(x: ArrayLike, y: ArrayLike, bandwidth: float | None = None, permutations: int = 200,
             seed: int = 0) -> tuple[float, float]:
    """Permutation two-sample test on the unbiased MMD^2 (Gretton et al., JMLR 2012, Sec. 5).

    Returns ``(mmd2, p_value)`` where ``mmd2`` is :func:`mmd2` on the full samples and
    ``p_value = (1 + #{perm >= observed}) / (1 + permutations)``. All permutations are evaluated
    at once from one pooled kernel matrix ``K`` (zero diagonal): for a split indicator ``a`` (and
    ``b = 1 - a``) the statistic is ``a'Ka/(m(m-1)) + b'Kb/(n(n-1)) - 2 a'Kb/(mn)``. When the
    pooled sample exceeds 3000 rows, the test statistic and its permutations are computed on a
    proportional random subsample (``seed``) so the matrix fits.
    """
    if int(permutations) < 1:
        raise MetricInputError(f"permutations must be >= 1, got {permutations!r}")
    permutations = int(permutations)
    xt, yt = _prep_pair(x, y)
    bw = _bandwidth(xt, yt, bandwidth)
    full = mmd2(xt, yt, bw)
    m, n = xt.shape[0], yt.shape[0]
    gen = torch.Generator().manual_seed(int(seed))
    if m + n > _PERM_MAX_POOLED:
        frac = _PERM_MAX_POOLED / (m + n)
        m2, n2 = max(2, int(m * frac)), max(2, int(n * frac))
        xt = xt[torch.randperm(m, generator=gen)[:m2].to(xt.device)]
        yt = yt[torch.randperm(n, generator=gen)[:n2].to(yt.device)]
        m, n = m2, n2
    z = torch.cat([xt, yt])
    z = z - z.mean(0, keepdim=True)
    big_n = m + n
    k = _sq_dists(z, z).mul_(-1.0 / (2.0 * bw * bw)).exp_()
    k.fill_diagonal_(0.0)
    # Column 0 is the observed split, the rest are random permutations.
    labels = torch.zeros(permutations + 1, big_n, dtype=torch.bool)
    labels[0, :m] = True
    for p in range(permutations):
        labels[p + 1, torch.randperm(big_n, generator=gen)[:m]] = True
    a = labels.T.to(device=z.device, dtype=ACCUM_DTYPE)  # (N, P+1)
    ka = k @ a
    row = k.sum(1, keepdim=True)
    kb = row - ka
    saa = (a * ka).sum(0)
    sab = (a * kb).sum(0)
    sbb = ((1.0 - a) * kb).sum(0)
    stats = saa / (m * (m - 1)) + sbb / (n * (n - 1)) - 2.0 * sab / (m * n)
    observed = stats[0]
    # A small relative tolerance keeps exact ties (e.g. the identity permutation) counted.
    tol = 1e-12 * max(1.0, float(observed.abs()))
    exceed = int((stats[1:] >= observed - tol).sum())
    return full, (1.0 + exceed) / (1.0 + permutations)


# --------------------------------------------------------------------------------------------
# Frechet distance
# --------------------------------------------------------------------------------------------

def _sqrtm_psd_factor(cov: torch.Tensor) -> torch.Tensor:
    """``F`` with ``F' F = cov`` (rows ``sqrt(lambda_k) v_k'``), negatives clamped to 0."""
    evals, evecs = torch.linalg.eigh(cov)
    evals = evals.clamp_min(0.0)
    return (evecs * evals.sqrt().unsqueeze(-2)).transpose(-1, -2)


def _trace_sqrt_product(f_a: torch.Tensor, cov_b: torch.Tensor) -> torch.Tensor:
    """``tr((A B)^{1/2})`` for PSD ``A = F_a' F_a``, ``B``: sum of sqrt eigenvalues of ``F_a B F_a'``."""
    m = f_a @ cov_b @ f_a.transpose(-1, -2)
    m = 0.5 * (m + m.transpose(-1, -2))
    return torch.linalg.eigvalsh(m).clamp_min(0.0).sqrt().sum(-1)


def frechet_distance(x: ArrayLike, y: ArrayLike) -> float:
    """Frechet (2-Wasserstein) distance between Gaussians fitted to x and y (Dowson & Landau 1982;
    the FID of Heusel et al., NeurIPS 2017).

    ``||mu_x - mu_y||^2 + tr(S_x + S_y - 2 (S_x S_y)^{1/2})`` with ddof=1 covariances. The trace of
    the matrix square root is ``sum_k sqrt(lambda_k)`` over the eigenvalues of the symmetric PSD
    matrix ``S_x^{1/2} S_y S_x^{1/2}`` (tiny negative eigenvalues from round-off clamped to 0),
    which avoids the non-symmetric ``sqrtm`` and its complex round-off. Returns a value >= 0.
    """
    xt, yt = _prep_pair(x, y)
    mu_x, mu_y = xt.mean(0), yt.mean(0)
    xc, yc = xt - mu_x, yt - mu_y
    sx = xc.T @ xc / (xt.shape[0] - 1)
    sy = yc.T @ yc / (yt.shape[0] - 1)
    tr_sqrt = _trace_sqrt_product(_sqrtm_psd_factor(sx), sy)
    val = (mu_x - mu_y).square().sum() + torch.trace(sx) + torch.trace(sy) - 2.0 * tr_sqrt
    return max(float(val), 0.0)


# --------------------------------------------------------------------------------------------
# OTDD
# --------------------------------------------------------------------------------------------

def _class_gaussians(x: torch.Tensor, y: torch.Tensor, n_classes: int,
                     rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class means (C, D), covariance factors (C, rank, D) and covariance traces (C,).

    The factor ``F_c`` satisfies ``F_c' F_c = S_c`` (the ddof=1 covariance; 0 for a singleton
    class): the centred rows / sqrt(n_c - 1) themselves, zero-padded to ``rank`` rows, when the
    class has at most ``rank`` samples, else the R factor of their QR decomposition (rank = D).
    """
    d = x.shape[1]
    counts = torch.bincount(y, minlength=n_classes)
    means = torch.zeros(n_classes, d, dtype=x.dtype, device=x.device).index_add_(0, y, x)
    means /= counts.clamp_min(1).unsqueeze(1).to(x.dtype)
    xc = x - means[y]
    factors = torch.zeros(n_classes, rank, d, dtype=x.dtype, device=x.device)
    order = torch.argsort(y)
    bounds = [0] + torch.cumsum(counts, 0).tolist()
    for c in range(n_classes):
        rows = xc[order[bounds[c]:bounds[c + 1]]]
        k = rows.shape[0]
        if k < 2:
            continue
        rows = rows / math.sqrt(k - 1)
        if k <= rank:
            factors[c, :k] = rows
        else:
            factors[c] = torch.linalg.qr(rows, mode="r").R[:rank]
    traces = factors.square().sum((1, 2))
    return means, factors, traces


def _factor_rank(counts: list[int], d: int) -> int:
    return max(1, min(d, max(counts)))


def _bures_label_cost(means: torch.Tensor, factors: torch.Tensor, traces: torch.Tensor,
                      max_batch_bytes: int = 2**28) -> torch.Tensor:
    """Squared 2-Wasserstein distances between all pairs of Gaussians ``N(m_i, S_i)``, ``S_i = F_i' F_i``.

    ``W2^2 = ||m_i - m_j||^2 + tr S_i + tr S_j - 2 tr (S_i^{1/2} S_j S_i^{1/2})^{1/2}`` and
    ``tr (S_i^{1/2} S_j S_i^{1/2})^{1/2} = ||F_j F_i'||_*`` (nuclear norm: the eigenvalues of
    ``G'G = F_i S_j F_i'``, ``G = F_j F_i'``, are those of ``S_i^{1/2} S_j S_i^{1/2}`` up to zeros), so
    each unordered pair i<j costs one batched r x r symmetric eigenvalue problem, with r = D or the
    largest class size when classes are smaller than D. Batches stay under ``max_batch_bytes``.
    """
    k, r, d = factors.shape
    out = torch.zeros(k, k, dtype=means.dtype, device=means.device)
    if k < 2:
        return out
    iu, ju = torch.triu_indices(k, k, offset=1, device=means.device)
    per_pair = 3 * r * max(r, d) * means.element_size()
    batch = max(1, max_batch_bytes // per_pair)
    for s in range(0, iu.numel(), batch):
        i, j = iu[s:s + batch], ju[s:s + batch]
        g = factors[j] @ factors[i].transpose(-1, -2)
        m = g.transpose(-1, -2) @ g
        m = 0.5 * (m + m.transpose(-1, -2))
        tr_sqrt = torch.linalg.eigvalsh(m).clamp_min(0.0).sqrt().sum(-1)
        w2 = (means[i] - means[j]).square().sum(-1) + traces[i] + traces[j] - 2.0 * tr_sqrt
        w2 = w2.clamp_min(0.0)
        out[i, j] = w2
        out[j, i] = w2
    return out


def _augmented(x: torch.Tensor, label_rows: torch.Tensor) -> torch.Tensor:
    """Rows ``[-2x, label_rows, ||x||^2, 1]``: one matmul with :func:`_augmented_right` gives the cost."""
    sq = (x * x).sum(1, keepdim=True)
    return torch.cat([-2.0 * x, label_rows, sq, torch.ones_like(sq)], dim=1)


def _augmented_right(x: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    sq = (x * x).sum(1, keepdim=True)
    return torch.cat([x, onehot, torch.ones_like(sq), sq], dim=1)


def _otdd_cost(x1: torch.Tensor, y1: torch.Tensor, x2: torch.Tensor, y2: torch.Tensor,
               label_cost: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``C_ij = ||x1_i - x2_j||^2 + label_cost[y1_i, y2_j]`` as one (augmented) matrix product."""
    onehot = torch.zeros(x2.shape[0], label_cost.shape[1], dtype=x2.dtype, device=x2.device)
    onehot[torch.arange(x2.shape[0], device=x2.device), y2] = 1.0
    left = _augmented(x1, label_cost[y1]).to(dtype)
    right = _augmented_right(x2, onehot).to(dtype)
    return (left @ right.T).clamp_min_(0.0)


def _softmin_rows(cost: torch.Tensor, h: torch.Tensor, eps: float) -> torch.Tensor:
    """``-eps log sum_j exp(h_j - C_ij / eps)`` for every row i."""
    t = torch.add(h.unsqueeze(0), cost, alpha=-1.0 / eps)
    return torch.logsumexp(t, dim=1).mul_(-eps)


def _softmin_cols(cost: torch.Tensor, h: torch.Tensor, eps: float) -> torch.Tensor:
    """``-eps log sum_i exp(h_i - C_ij / eps)`` for every column j."""
    t = torch.add(h.unsqueeze(1), cost, alpha=-1.0 / eps)
    return torch.logsumexp(t, dim=0).mul_(-eps)


def _marginal_error(old: torch.Tensor, new: torch.Tensor, weights: torch.Tensor, eps: float) -> torch.Tensor:
    """L1 marginal violation ``sum_i a_i |exp((f_i - T(f)_i)/eps) - 1|`` of the current plan."""
    return (weights * torch.expm1((old - new) / eps).abs()).sum()


class _CTransform:
    """Soft c-transforms of one cost matrix at a fixed ``eps``.

    ``rows(g)_i = -eps log sum_j b_j exp((g_j - C_ij) / eps)`` and ``cols(f)_j`` likewise. In
    ``"log"`` mode every call is a log-sum-exp over the cost. In ``"absorb"`` mode (log-stabilised
    scaling with absorption, Schmitzer, SIAM J. Sci. Comput. 2019) the potentials ``(f0, g0)`` are
    absorbed into a Gibbs kernel ``K = exp((f0_i + g0_j - C_ij) / eps)`` once, and each transform
    is one matrix-vector product: ``rows(g) = f0 - eps log(K (b * exp((g - g0) / eps)))``. Both are
    equal in exact arithmetic. The kernel path is refused (and the log-sum-exp used, then the
    kernel rebuilt at the new potentials) when ``|g - g0| / eps`` exceeds ``tau`` or a sum
    under/overflows, so the potentials always live in the log domain.
    """

    def __init__(self, cost: torch.Tensor, la: torch.Tensor, lb: torch.Tensor, eps: float, mode: str,
                 tau: float = 20.0) -> None:
        self.cost, self.la, self.lb, self.eps, self.tau = cost, la, lb, eps, tau
        self.use_kernel = mode == "absorb"
        self.kernel: torch.Tensor | None = None  # valid for (f0, g0, eps) while ``valid``
        self.valid = False
        self.f0: torch.Tensor | None = None
        self.g0: torch.Tensor | None = None
        self.rebuilds = 0

    def set_eps(self, eps: float) -> None:
        """Move to a new ``eps``: the kernel buffer is kept for reuse but no longer valid."""
        self.eps = eps
        self.valid = False

    def absorb(self, f: torch.Tensor, g: torch.Tensor) -> None:
        if not self.use_kernel:
            return
        inv = 1.0 / self.eps
        k = self.kernel
        if k is None:
            k = torch.add(g.unsqueeze(0), self.cost, alpha=-1.0)
        else:
            torch.sub(g.unsqueeze(0), self.cost, out=k)
        k.add_(f.unsqueeze(1)).mul_(inv).exp_()
        self.kernel, self.f0, self.g0, self.valid = k, f.clone(), g.clone(), True
        self.rebuilds += 1

    def _via_kernel(self, pot: torch.Tensor, ref: torch.Tensor, out_ref: torch.Tensor, logw: torch.Tensor,
                    transpose: bool) -> torch.Tensor | None:
        d = (pot - ref) / self.eps
        if float(d.abs().max()) > self.tau:
            return None
        w = torch.exp(logw + d)
        s = (w @ self.kernel) if transpose else (self.kernel @ w)
        if not bool(torch.isfinite(s).all() & (s > 0).all()):
            return None
        return out_ref - self.eps * torch.log(s)

    def rows(self, g: torch.Tensor) -> torch.Tensor:
        if self.valid:
            out = self._via_kernel(g, self.g0, self.f0, self.lb, transpose=False)
            if out is not None:
                return out
        out = _softmin_rows(self.cost, self.lb + g / self.eps, self.eps)
        if self.valid:
            self.absorb(out, g)
        return out

    def cols(self, f: torch.Tensor) -> torch.Tensor:
        if self.valid:
            out = self._via_kernel(f, self.f0, self.g0, self.la, transpose=True)
            if out is not None:
                return out
        out = _softmin_cols(self.cost, self.la + f / self.eps, self.eps)
        if self.valid:
            self.absorb(f, out)
        return out


def _sinkhorn_divergence(c_st: torch.Tensor, c_ss: torch.Tensor, c_tt: torch.Tensor, eps: float, *,
                         scaling: float, max_iter: int, tol: float, check_every: int,
                         relaxation: float = 1.5, mode: str = "absorb") -> dict:
    """Debiased Sinkhorn divergence (Feydy et al., AISTATS 2019) with uniform weights.

    ``S = OT_eps(a,b) - (OT_eps(a,a) + OT_eps(b,b)) / 2`` with ``OT_eps`` the entropic cost
    ``min_P <P,C> + eps KL(P | a x b)``, evaluated as the dual value ``<a,f> + <b,g>`` at potentials
    where one is the exact soft c-transform of the other (a valid lower bound, tight at convergence).

    The potentials are log-domain vectors throughout. eps-scaling (geometric annealing from the
    largest cost down to ``eps``, each stage at most ``1/scaling`` smaller, log-sum-exp updates)
    warms them. At ``eps``
    the cross problem runs over-relaxed Sinkhorn (``f <- (1-w) f + w T(g)``, Thibault et al.,
    Algorithms 2021; ``w`` falls back to 1 if the error grows) and the two symmetric problems the
    averaged update ``p <- (p + T(p)) / 2``, with c-transforms from :class:`_CTransform` (``mode``).
    Each problem stops once its L1 marginal violation is below ``tol`` -- raised to the noise floor
    of the working dtype, ``8 * finfo.eps * max(C) / eps`` -- checked every ``check_every`` steps.
    """
    ns, nt = c_st.shape
    dt = c_st.dtype
    dev = c_st.device
    la = torch.full((ns,), -math.log(ns), dtype=dt, device=dev)
    lb = torch.full((nt,), -math.log(nt), dtype=dt, device=dev)
    wa = torch.full((ns,), 1.0 / ns, dtype=ACCUM_DTYPE, device=dev)
    wb = torch.full((nt,), 1.0 / nt, dtype=ACCUM_DTYPE, device=dev)
    c_max = float(torch.stack([c_st.max(), c_ss.max(), c_tt.max()]).max())
    tol = max(tol, 8.0 * torch.finfo(dt).eps * c_max / eps)
    # Geometric schedule c_max -> eps with ratio at most 1/scaling per stage (eps-scaling).
    n_stages = max(0, math.ceil(math.log(max(c_max, eps) / eps) / math.log(1.0 / scaling) - 1e-9))
    schedule = [eps * (max(c_max, eps) / eps) ** ((n_stages - k) / n_stages) for k in range(n_stages)] + [eps]
    e = schedule[0]
    t_st = _CTransform(c_st, la, lb, e, mode)
    t_ss = _CTransform(c_ss, la, la, e, mode)
    t_tt = _CTransform(c_tt, lb, lb, e, mode)
    # First stage from zero potentials. At e = max(C) the kernel exp(-C/e) is in [1/e, 1], so in
    # "absorb" mode the first transforms are matrix-vector products.
    zs, zt = torch.zeros_like(la), torch.zeros_like(lb)
    t_st.absorb(zs, zt)
    t_ss.absorb(zs, zs)
    t_tt.absorb(zt, zt)
    g = t_st.cols(zs)
    f = t_st.rows(g)
    p = t_ss.rows(zs)
    q = t_tt.rows(zt)
    # Later stages (and the entry to the final eps): one log-sum-exp update at the new eps (the
    # potentials move by many eps here), then the kernels are absorbed at the new potentials.
    for k, e in enumerate(schedule[1:], start=1):
        for t in (t_st, t_ss, t_tt):
            t.set_eps(e)
        g = _softmin_cols(c_st, la + f / e, e)
        f = _softmin_rows(c_st, lb + g / e, e)
        p = 0.5 * (p + _softmin_rows(c_ss, la + p / e, e))
        q = 0.5 * (q + _softmin_rows(c_tt, lb + q / e, e))
        if k == len(schedule) - 1:
            t_st.absorb(f, g)
            t_ss.absorb(p, p)
            t_tt.absorb(q, q)
    if len(schedule) == 1:  # eps >= max(C): the first stage was already at eps
        g = t_st.cols(f)
        f = t_st.rows(g)

    def err(old: torch.Tensor, new: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return _marginal_error(old.to(ACCUM_DTYPE), new.to(ACCUM_DTYPE), w, eps)

    omega = float(relaxation)
    done = {"st": False, "ss": False, "tt": False}
    errors = {"st": float("inf"), "ss": float("inf"), "tt": float("inf")}
    iters = {"st": 0, "ss": 0, "tt": 0}
    f_new = p_new = q_new = None
    it = 0
    while it < max_iter and not all(done.values()):
        it += 1
        check = it % check_every == 0 or it == max_iter
        w_it = 1.0 if it <= check_every else omega
        if not done["st"]:
            iters["st"] = it
            g_new = t_st.cols(f)
            if check:
                e_col = err(g, g_new, wb)
            g = g_new if w_it == 1.0 else torch.lerp(g, g_new, w_it)
            f_new = t_st.rows(g)
            if check:
                e_new = float(torch.maximum(e_col, err(f, f_new, wa)))
                if e_new > 2.0 * errors["st"] and omega != 1.0:
                    omega = 1.0  # safeguard: over-relaxation diverging, plain Sinkhorn from here
                errors["st"] = e_new
                done["st"] = e_new < tol
            if not done["st"]:
                f = f_new if w_it == 1.0 else torch.lerp(f, f_new, w_it)
        for key, tr, wt in (("ss", t_ss, wa), ("tt", t_tt, wb)):
            if done[key]:
                continue
            iters[key] = it
            cur = p if key == "ss" else q
            new = tr.rows(cur)
            if check:
                errors[key] = float(err(cur, new, wt))
                done[key] = errors[key] < tol
            if key == "ss":
                p_new = new
                if not done[key]:
                    p = 0.5 * (p + p_new)
            else:
                q_new = new
                if not done[key]:
                    q = 0.5 * (q + q_new)
    # Dual values at (T(g), g) and (p, T(p)): valid lower bounds, tight at convergence.
    d_st = (wa * f_new.to(ACCUM_DTYPE)).sum() + (wb * g.to(ACCUM_DTYPE)).sum()
    d_ss = (wa * (p + p_new).to(ACCUM_DTYPE)).sum()
    d_tt = (wb * (q + q_new).to(ACCUM_DTYPE)).sum()
    value = d_st - 0.5 * (d_ss + d_tt)
    return {"value": float(value), "ot_st": float(d_st), "ot_ss": float(d_ss), "ot_tt": float(d_tt),
            "iterations": iters, "stages": len(schedule), "marginal_error": max(errors.values()),
            "tol": tol, "converged": all(done.values()), "epsilon": eps, "relaxation": omega,
            "kernel_rebuilds": t_st.rebuilds + t_ss.rebuilds + t_tt.rebuilds}


def _mean_self_cost(x: torch.Tensor, y: torch.Tensor, label_cost: torch.Tensor) -> float:
    """Mean of ``C_ij = ||x_i - x_j||^2 + W[y_i, y_j]`` over all (i, j), in O(n d):
    ``2 (mean ||x||^2 - ||mean x||^2) + p' W p`` with ``p`` the label frequencies."""
    feat = 2.0 * (x.square().sum(1).mean() - x.mean(0).square().sum())
    freq = torch.bincount(y, minlength=label_cost.shape[0]).to(label_cost.dtype) / y.shape[0]
    return float(feat + freq @ label_cost @ freq)


def _subsample(n: int, max_samples: int | None, seed: int) -> torch.Tensor | None:
    if max_samples is None or n <= max_samples:
        return None
    g = torch.Generator().manual_seed(int(seed))
    return torch.randperm(n, generator=g)[:max_samples]


def _otdd_details(xs: ArrayLike, ys: ArrayLike, xt: ArrayLike, yt: ArrayLike, *,
                  epsilon: float | None = None, reg: float = 0.1, max_samples: int | None = 5000,
                  seed: int = 0, max_iter: int = 1000, tol: float = 1e-3, check_every: int = 5,
                  scaling: float = 0.05, relaxation: float = 1.5,
                  sinkhorn_dtype: torch.dtype = torch.float32, sinkhorn_mode: str = "absorb") -> dict:
    dev = _target_device(xs, xt, ys, yt)
    x1 = _features(xs, "xs", dev)
    x2 = _features(xt, "xt", dev)
    _same_width(x1, x2, ("xs", "xt"))
    y1, c1 = as_labels(ys, "ys", device=x1.device)
    y2, c2 = as_labels(yt, "yt", device=x2.device)
    if y1.shape[0] != x1.shape[0]:
        raise MetricInputError(f"xs has {x1.shape[0]} samples but ys has {y1.shape[0]}: lengths must match")
    if y2.shape[0] != x2.shape[0]:
        raise MetricInputError(f"xt has {x2.shape[0]} samples but yt has {y2.shape[0]}: lengths must match")
    if not 0.0 < scaling < 1.0:
        raise MetricInputError(f"scaling must be in (0, 1), got {scaling!r}")
    if max_iter < 1 or check_every < 1:
        raise MetricInputError("max_iter and check_every must be >= 1")
    if not 1.0 <= relaxation < 2.0:
        raise MetricInputError(f"relaxation must be in [1, 2), got {relaxation!r}")
    if sinkhorn_mode not in ("absorb", "log"):
        raise MetricInputError(f"sinkhorn_mode must be 'absorb' or 'log', got {sinkhorn_mode!r}")
    if epsilon is not None and not (math.isfinite(float(epsilon)) and float(epsilon) > 0.0):
        raise MetricInputError(f"epsilon must be a positive finite number, got {epsilon!r}")
    if epsilon is None and not reg > 0.0:
        raise MetricInputError(f"reg must be > 0, got {reg!r}")
    if max_samples is not None and int(max_samples) < 2:
        raise MetricInputError(f"max_samples must be >= 2 or None, got {max_samples!r}")
    # Translation invariance: centre on the pooled mean (keeps the float32 cost accurate).
    centre = torch.cat([x1, x2]).mean(0, keepdim=True)
    x1, x2 = x1 - centre, x2 - centre
    # Class-conditional Gaussians from all samples; the label cost between every pair of classes.
    rank = _factor_rank(torch.bincount(y1).tolist() + torch.bincount(y2).tolist(), x1.shape[1])
    m1, f1, t1 = _class_gaussians(x1, y1, c1, rank)
    m2, f2, t2 = _class_gaussians(x2, y2, c2, rank)
    w = _bures_label_cost(torch.cat([m1, m2]), torch.cat([f1, f2]), torch.cat([t1, t2]))
    w_ss, w_tt, w_st = w[:c1, :c1], w[c1:, c1:], w[:c1, c1:]
    i1 = _subsample(x1.shape[0], max_samples, seed)
    i2 = _subsample(x2.shape[0], max_samples, seed)
    if i1 is not None:
        i1 = i1.to(x1.device)
        x1, y1 = x1[i1], y1[i1]
    if i2 is not None:
        i2 = i2.to(x2.device)
        x2, y2 = x2[i2], y2[i2]
    c_st = _otdd_cost(x1, y1, x2, y2, w_st, sinkhorn_dtype)
    c_ss = _otdd_cost(x1, y1, x1, y1, w_ss, sinkhorn_dtype)
    c_tt = _otdd_cost(x2, y2, x2, y2, w_tt, sinkhorn_dtype)
    c_ss.fill_diagonal_(0.0)
    c_tt.fill_diagonal_(0.0)
    if epsilon is None:
        scale = 0.5 * (_mean_self_cost(x1, y1, w_ss) + _mean_self_cost(x2, y2, w_tt))
        eps = reg * scale if scale > 0.0 else reg
    else:
        eps = float(epsilon)
    out = _sinkhorn_divergence(c_st, c_ss, c_tt, eps, scaling=scaling, max_iter=int(max_iter), tol=float(tol),
                               check_every=int(check_every), relaxation=float(relaxation), mode=sinkhorn_mode)
    out["label_cost"] = w
    return out


def otdd(xs: ArrayLike, ys: ArrayLike, xt: ArrayLike, yt: ArrayLike, *, epsilon: float | None = None,
         reg: float = 0.1, max_samples: int | None = 5000, seed: int = 0, max_iter: int = 1000,
         tol: float = 1e-3, check_every: int = 5, scaling: float = 0.05, relaxation: float = 1.5,
         sinkhorn_dtype: torch.dtype = torch.float32, sinkhorn_mode: str = "absorb") -> float:
    """Optimal transport dataset distance (Alvarez-Melis & Fusi, NeurIPS 2020), debiased.

    Ground cost between labelled samples ``z=(x,y)`` and ``z'=(x',y')``:
    ``c(z,z') = ||x - x'||^2 + W2^2(N(mu_y, S_y), N(mu_y', S_y'))`` where each label is represented
    by the Gaussian fitted to its class-conditional features (the paper's Gaussian-approximated inner
    cost; Bures-Wasserstein closed form ``||mu-mu'||^2 + tr(S + S' - 2 (S^{1/2} S' S^{1/2})^{1/2})``,
    ddof=1 covariances from all samples; a class with one sample gets a zero covariance). The
    class-to-class matrix is computed once, over all source and target classes together.

    The outer problem is the debiased Sinkhorn divergence (Feydy et al., AISTATS 2019)
    ``S(a,b) = OT_eps(a,b) - (OT_eps(a,a) + OT_eps(b,b)) / 2`` between the uniform empirical
    measures, ``OT_eps = min_P <P,C> + eps KL(P | a x b)``, so ``otdd(D, D)`` is 0 up to the
    convergence tolerance and ``otdd(D, D + s) = 2 ||s||^2`` for a translation. ``epsilon`` is
    absolute; by default ``eps = reg * (mean C_ss + mean C_tt) / 2`` (the within-dataset costs), so
    the distance scales as features**2 and smaller ``reg`` moves it toward unregularised OT (more
    iterations).

    Solver: log-domain potentials, eps-scaling with log-sum-exp updates, then at ``eps``
    over-relaxed Sinkhorn (``relaxation``) for the cross problem and averaged symmetric updates for
    the two self problems until the L1 marginal violation is below ``tol`` (checked every
    ``check_every`` iterations, at most ``max_iter``). ``sinkhorn_mode="absorb"`` (default) does the
    fixed-eps iterations as matrix-vector products with a Gibbs kernel into which the potentials
    are absorbed (rebuilt whenever the potentials move by more than 20 eps, Schmitzer 2019);
    ``"log"`` does every update as a log-sum-exp. Both give the same result; the loop runs in
    ``sinkhorn_dtype`` (float32 by default; dual values summed in float64). Memory: about six
    ``n_s x n_t``-sized matrices of ``sinkhorn_dtype`` at once.

    Source and target label sets are independent (they may differ). Above ``max_samples`` rows a
    side is subsampled (``seed``) for the transport problem; class Gaussians use all rows. The
    class-to-class Bures matrix costs (C_s + C_t)^2 / 2 symmetric eigenvalue problems of size
    min(D, largest class). Returns ``max(S, 0)``.
    """
    return max(_otdd_details(xs, ys, xt, yt, epsilon=epsilon, reg=reg, max_samples=max_samples, seed=seed,
                             max_iter=max_iter, tol=tol, check_every=check_every, scaling=scaling,
                             relaxation=relaxation, sinkhorn_dtype=sinkhorn_dtype,
                             sinkhorn_mode=sinkhorn_mode)["value"], 0.0)


# --------------------------------------------------------------------------------------------
# Domain classifier
# --------------------------------------------------------------------------------------------

def _fit_logistic(z: torch.Tensor, t: torch.Tensor, c: float, max_iter: int = 100, tol: float = 1e-10) -> torch.Tensor:
    """L2-regularised logistic regression by damped Newton; returns weights with the intercept last.

    Minimises ``sum_i [log(1 + exp(s_i)) - t_i s_i] + ||w||^2 / (2c)`` with ``s = Z w + b``
    (the intercept is not penalised), the objective of scikit-learn's ``LogisticRegression(C=c)``.
    """
    n, d = z.shape
    za = torch.cat([z, torch.ones(n, 1, dtype=z.dtype, device=z.device)], dim=1)
    lam = torch.full((d + 1,), 1.0 / c, dtype=z.dtype, device=z.device)
    lam[-1] = 0.0
    w = torch.zeros(d + 1, dtype=z.dtype, device=z.device)

    def objective(wv: torch.Tensor) -> torch.Tensor:
        s = za @ wv
        return (torch.nn.functional.softplus(s) - t * s).sum() + 0.5 * (lam * wv * wv).sum()

    obj = objective(w)
    for _ in range(max_iter):
        s = za @ w
        p = torch.sigmoid(s)
        grad = za.T @ (p - t) + lam * w
        if float(grad.abs().max()) < tol * max(1.0, n):
            break
        h = (za * (p * (1 - p)).unsqueeze(1)).T @ za
        h.diagonal().add_(lam + 1e-12)
        step = torch.linalg.solve(h, grad)
        lr = 1.0
        for _ls in range(30):
            w_new = w - lr * step
            obj_new = objective(w_new)
            if obj_new <= obj + 1e-4 * lr * -(grad @ step).abs():
                break
            lr *= 0.5
        if float(obj - obj_new) <= 1e-14 * max(1.0, abs(float(obj))):
            w = w_new if obj_new < obj else w
            break
        w, obj = w_new, obj_new
    return w


def _auc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """ROC AUC as the Mann-Whitney statistic with average ranks for ties."""
    n = scores.numel()
    order = torch.argsort(scores)
    s = scores[order]
    pos = positive[order]
    _, inverse, counts = torch.unique_consecutive(s, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).to(ACCUM_DTYPE)
    avg_rank = ends - (counts.to(ACCUM_DTYPE) - 1.0) / 2.0  # 1-based average rank of each tie group
    ranks = avg_rank[inverse]
    n_pos = int(pos.sum())
    n_neg = n - n_pos
    r_pos = float(ranks[pos].sum())
    return (r_pos - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def domain_classifier_auc(x: ArrayLike, y: ArrayLike, folds: int = 5, seed: int = 0, *, c: float = 1.0,
                          max_samples: int | None = 5000) -> float:
    """Cross-validated ROC AUC of a logistic-regression domain classifier (x = 0, y = 1).

    The proxy-A-distance idea (Ben-David et al. 2007; "classifier two-sample test", Lopez-Paz &
    Oquab, ICLR 2017): 0.5 means a linear classifier cannot tell the samples apart, 1 means they
    are separable. Stratified ``folds``-fold CV (each class shuffled with ``default_rng(seed)`` and
    dealt round-robin); features standardised on the training fold; L2-regularised logistic
    regression (``C=c``, unpenalised intercept, the objective of scikit-learn's default) fitted by
    Newton's method in float64; the score is the mean of the per-fold AUCs. Each side is
    subsampled to ``max_samples`` rows (``seed``) first.
    """
    folds = int(folds)
    if folds < 2:
        raise MetricInputError(f"folds must be >= 2, got {folds}")
    if not c > 0:
        raise MetricInputError(f"c must be > 0, got {c!r}")
    xt, yt = _prep_pair(x, y)
    if xt.shape[0] < folds or yt.shape[0] < folds:
        raise MetricInputError(
            f"domain_classifier_auc needs at least folds={folds} samples on each side, "
            f"got {xt.shape[0]} and {yt.shape[0]}"
        )
    ix = _subsample(xt.shape[0], max_samples, seed)
    iy = _subsample(yt.shape[0], max_samples, seed + 1)
    if ix is not None:
        xt = xt[ix.to(xt.device)]
    if iy is not None:
        yt = yt[iy.to(yt.device)]
    z = torch.cat([xt, yt])
    lab_np = np.concatenate([np.zeros(xt.shape[0], dtype=np.int64), np.ones(yt.shape[0], dtype=np.int64)])
    fold_np = stratified_folds(lab_np, folds, seed)
    lab = torch.as_tensor(lab_np, device=z.device)
    fold = torch.as_tensor(fold_np, device=z.device)
    target = lab.to(ACCUM_DTYPE)
    aucs = []
    for k in range(folds):
        test = fold == k
        train = ~test
        ztr, zte = z[train], z[test]
        mu = ztr.mean(0)
        sd = ztr.std(0, unbiased=False)
        sd = torch.where(sd > 0, sd, torch.ones_like(sd))
        w = _fit_logistic((ztr - mu) / sd, target[train], float(c))
        scores = ((zte - mu) / sd) @ w[:-1] + w[-1]
        aucs.append(_auc(scores, lab[test].bool()))
    return float(np.mean(aucs))


# --------------------------------------------------------------------------------------------
# Label shift
# --------------------------------------------------------------------------------------------

def _label_values(y: ArrayLike, name: str) -> np.ndarray:
    arr = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if arr.ndim != 1:
        raise MetricInputError(f"{name}: expected a 1-D array of labels, got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise MetricInputError(f"{name}: no labels")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise MetricInputError(f"{name}: labels contain NaN or Inf")
    if arr.dtype.kind == "O":
        arr = arr.astype(str) if any(isinstance(v, str) for v in arr.tolist()) else arr
    return arr


def label_shift(ys: ArrayLike, yt: ArrayLike) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) between the label marginals of two samples.

    ``JSD(P, Q) = (KL(P || M) + KL(Q || M)) / 2`` with ``M = (P + Q) / 2`` over the union of label
    values (Lin 1991). Labels may be ints or strings; the two sides are matched by value (a label
    seen on one side only has probability 0 on the other). Equals
    ``scipy.spatial.distance.jensenshannon(p, q, base=2) ** 2``.
    """
    a = _label_values(ys, "ys")
    b = _label_values(yt, "yt")
    if (a.dtype.kind in "US") != (b.dtype.kind in "US"):
        raise MetricInputError(
            f"ys and yt have incompatible label types ({a.dtype} vs {b.dtype}): labels are matched by value"
        )
    values, inverse = np.unique(np.concatenate([a, b]), return_inverse=True)
    inverse = inverse.reshape(-1)
    k = values.shape[0]
    p = np.bincount(inverse[: a.shape[0]], minlength=k).astype(np.float64) / a.shape[0]
    q = np.bincount(inverse[a.shape[0]:], minlength=k).astype(np.float64) / b.shape[0]
    m = 0.5 * (p + q)

    def kl(u: np.ndarray) -> float:
        nz = u > 0
        return float(np.sum(u[nz] * np.log2(u[nz] / m[nz])))

    return float(min(max(0.5 * (kl(p) + kl(q)), 0.0), 1.0))
