"""Distances between a source and a target sample: MMD, Frechet, domain AUC, label shift
(OTDD lives in :mod:`tasksim.metrics.optimal_transport`).

Every function takes numpy arrays or torch tensors (rows are samples), computes on the device of its
tensor inputs (numpy inputs join that device; CPU when there is none), accumulates in float64 and
returns a Python ``float``. Invalid inputs (NaN/Inf, mismatched widths, too few samples) raise
:class:`tasksim.errors.MetricInputError`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from tasksim.errors import MetricInputError
from tasksim.metrics._kernels import (
    leading_components,
    median,
    order_statistics,
    sq_dists,
    stratified_folds,
    subsample_indices,
)
from tasksim.metrics._validate import (
    ACCUM_DTYPE,
    ArrayLike,
    check_same_width,
    features_on,
    target_device,
)
from tasksim.metrics.transfer._linalg import _gram  # the shared syrk Gram kernel

__all__ = [
    "MMDSelfBlock",
    "domain_classifier_auc",
    "domain_separability",
    "frechet_distance",
    "label_shift",
    "median_bandwidth",
    "mmd2",
    "mmd2_self_block",
    "mmd_test",
]

# Largest number of kernel entries materialised at once (2**20 float64 = 8 MiB).
_CHUNK_ELEMS = 2**20
_TILE_COLS = 2048
# Pooled sample size above which the median heuristic subsamples (fixed seed).
_MEDIAN_MAX_POINTS = 2000
# Pooled sample size up to which the permutation test holds one pooled kernel matrix.
_PERM_MAX_POOLED = 3000


def _pairwise_median(x: torch.Tensor, max_points: int | None = _MEDIAN_MAX_POINTS, seed: int = 0) -> float:
    """Median Euclidean distance over the pairs i<j of the rows of ``x`` (rows subsampled first)."""
    n = x.shape[0]
    idx = subsample_indices(n, max_points, seed, x.device, sort=False)
    if idx is not None:
        x = x[idx]
        n = idx.shape[0]
    xc = x - x.mean(0, keepdim=True)
    d2 = sq_dists(xc, xc)
    iu = torch.triu_indices(n, n, offset=1, device=x.device)
    return median(d2[iu[0], iu[1]].sqrt())


def median_bandwidth(x: ArrayLike, y: ArrayLike | None = None, *, max_points: int = _MEDIAN_MAX_POINTS,
                     seed: int = 0) -> float:
    """Median heuristic (Gretton et al. 2012): median pairwise Euclidean distance of the pooled sample.

    The pooled rows of ``x`` (and ``y``) are subsampled to ``max_points`` with a fixed ``seed``
    first, so the cost is bounded. Raises :class:`MetricInputError` when the median is 0.
    """
    dev = target_device(x, y)
    xs = features_on(x, "x", dev)
    if y is not None:
        ys = features_on(y, "y", dev)
        check_same_width(xs, ys, ("x", "y"))
        xs = torch.cat([xs, ys])
    return _median_bandwidth_checked(_pairwise_median(xs, max_points, seed))


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
    dev = target_device(x, y)
    xt = features_on(x, names[0], dev)
    yt = features_on(y, names[1], dev)
    check_same_width(xt, yt, names)
    return xt, yt


def _median_bandwidth_checked(bw: float) -> float:
    """A median-heuristic bandwidth, or the one error every median path gives when it is 0."""
    if not bw > 0.0:
        raise MetricInputError("median heuristic bandwidth is 0 (most rows are identical): pass bandwidth=")
    return bw


def _bandwidth(x: torch.Tensor, y: torch.Tensor, bandwidth: float | None) -> float:
    if bandwidth is None:
        return _median_bandwidth_checked(_pairwise_median(torch.cat([x, y]), _MEDIAN_MAX_POINTS, 0))
    bw = float(bandwidth)
    if not (math.isfinite(bw) and bw > 0.0):
        raise MetricInputError(f"bandwidth must be a positive finite number, got {bandwidth!r}")
    return bw


@dataclass(frozen=True)
class MMDSelfBlock:
    """One sample's own pairs for :func:`mmd2` with the median bandwidth, kept across the samples it
    is compared with (:func:`mmd2_self_block`).

    ``mmd2(x, y)`` with the median heuristic needs the median of the pooled pairs and the kernel
    sum over x's own pairs at that bandwidth; x's pairs do not depend on y. Their squared distances,
    sorted, give both for any y: the pooled median is an order statistic of the union of two sorted
    arrays, and the self sum is exact over the kept values. ``sorted_d2``: the ``rows (rows - 1) / 2``
    squared distances of the pairs i < j, ascending (float64: 8 bytes a pair, 1 MB for 500 rows);
    ``mean``: the rows' mean (float64), a check that the block belongs to the x it is given with.
    """

    rows: int
    mean: torch.Tensor
    sorted_d2: torch.Tensor

    @property
    def nbytes(self) -> int:
        return int(self.sorted_d2.element_size() * self.sorted_d2.nelement() + 8 * self.mean.nelement())


def mmd2_self_block(x: ArrayLike) -> MMDSelfBlock:
    """The :class:`MMDSelfBlock` of the rows of ``x`` (at least 2 rows; at most 2000 rows, the
    size up to which :func:`mmd2` takes its median path): one symmetric product, one sort."""
    xt = features_on(x, "x", target_device(x))
    m = xt.shape[0]
    if not 2 <= m < _MEDIAN_MAX_POINTS:
        raise MetricInputError(f"x: an MMD self block needs 2 to {_MEDIAN_MAX_POINTS - 1} rows, got {m}")
    mean = xt.mean(0)
    d2 = _self_sq_dists(xt - mean)
    iu = torch.triu_indices(m, m, offset=1, device=xt.device)
    return MMDSelfBlock(m, mean, torch.sort(d2[iu[0], iu[1]]).values)


def mmd2(x: ArrayLike, y: ArrayLike, bandwidth: float | None = None, *, x_block: MMDSelfBlock | None = None
         ) -> float:
    """Unbiased squared maximum mean discrepancy with a Gaussian kernel (Gretton et al., JMLR 2012).

    ``MMD^2_u = 1/(m(m-1)) sum_{i!=j} k(x_i,x_j) + 1/(n(n-1)) sum_{i!=j} k(y_i,y_j)
    - 2/(mn) sum_{i,j} k(x_i,y_j)`` with ``k(a,b) = exp(-||a-b||^2 / (2 bandwidth^2))``.

    ``bandwidth=None`` uses the median heuristic (:func:`median_bandwidth` of the pooled sample,
    subsampled with a fixed seed above 2000 rows). Kernel sums run in row blocks, so memory stays
    bounded for large samples. The U-statistic can be slightly negative when x and y match.

    ``x_block`` (:func:`mmd2_self_block` of this ``x``): with the median bandwidth, x's own pairs
    come from it instead of being computed again; the only work left in x's rows is the ``m x n``
    cross block (the same value up to rounding: ``tests/metrics/test_distances.py``). Ignored
    with a given ``bandwidth`` or when the median subsamples (pooled rows above 2000).
    """
    xt, yt = _prep_pair(x, y)
    m, n = xt.shape[0], yt.shape[0]
    if bandwidth is None and m + n <= _MEDIAN_MAX_POINTS:
        if x_block is not None:
            return _mmd2_median_block(xt, yt, x_block)
        return _mmd2_median(xt, yt)
    bw = _bandwidth(xt, yt, bandwidth)
    # Distances are translation invariant: centring on the pooled mean limits cancellation.
    centre = torch.cat([xt, yt]).mean(0, keepdim=True)
    xt, yt = xt - centre, yt - centre
    gamma = 1.0 / (2.0 * bw * bw)
    kxx = _kernel_sum(xt, None, gamma)
    kyy = _kernel_sum(yt, None, gamma)
    kxy = _kernel_sum(xt, yt, gamma)
    val = kxx / (m * (m - 1)) + kyy / (n * (n - 1)) - 2.0 * kxy / (m * n)
    return float(val)


def _self_sq_dists(z: torch.Tensor) -> torch.Tensor:
    """``sq_dists(z, z)``, exactly symmetric: the Gram matrix from one symmetric product (BLAS
    ``syrk`` on CPU in float64, half the multiplications of the general product), then
    ``-2 G + ||z_j||^2 + ||z_i||^2`` in ``sq_dists``' order, clamped at 0."""
    sq = (z * z).sum(1)
    d = _gram(z.contiguous().unsqueeze(0), dual=True)[0]
    if not (z.device.type == "cpu" and z.dtype == torch.float64):  # a general product: symmetrise it
        d = 0.5 * (d + d.T)
    d.mul_(-2.0).add_(sq.unsqueeze(0)).add_(sq.unsqueeze(1))
    return d.clamp_min_(0.0)


def _mmd2_median(xt: torch.Tensor, yt: torch.Tensor) -> float:
    """:func:`mmd2` with the median-heuristic bandwidth when the pooled sample needs no subsample:
    one pooled squared-distance matrix gives both the median (two order statistics of its upper
    triangle; ``sqrt`` is monotone, so the median distance is taken on squared distances) and the
    three kernel sums, instead of two passes over the pairs and a sort."""
    m, n = xt.shape[0], yt.shape[0]
    z = torch.cat([xt, yt])
    z = z - z.mean(0, keepdim=True)  # the centring of _pairwise_median and of the kernel sums alike
    d2 = _self_sq_dists(z)
    iu = torch.triu_indices(m + n, m + n, offset=1, device=z.device)
    upper = d2[iu[0], iu[1]]
    k = upper.numel()
    lo, hi = order_statistics(upper, ((k - 1) // 2 + 1, k // 2 + 1))
    bw = _median_bandwidth_checked(float((lo.sqrt() + hi.sqrt()) / 2.0))
    kern = d2.mul_(-1.0 / (2.0 * bw * bw)).exp_()
    kern.fill_diagonal_(0.0)  # the U-statistic leaves out i == j
    kxx = kern[:m, :m].sum()
    kyy = kern[m:, m:].sum()
    kxy = kern[:m, m:].sum()
    return float(kxx / (m * (m - 1)) + kyy / (n * (n - 1)) - 2.0 * kxy / (m * n))


def _kth_of_union(a: np.ndarray, b: np.ndarray, ranks: tuple[int, int]) -> tuple[float, float]:
    """The ``ranks``-th smallest (1-based, ``ranks[0] <= ranks[1]``) of the union of the ascending
    array ``a`` and the unsorted array ``b``, by one selection instead of sorting ``b``.

    In the union sorted with ``a`` first among ties, ``a[j]`` stands between ``j + 1`` and
    ``j + len(b) + 1``: ``a``'s first ``lo = max(0, r0 - 1 - len(b))`` elements stand before
    ``r0`` and its elements from ``hi = min(r1, len(a))`` on after ``r1``. So the ``r``-th of the
    union is the ``(r - lo)``-th of ``a[lo:hi]`` with ``b`` (at most ``2 len(b) + 1`` values), taken by
    ``numpy.partition`` (exact elements: no sort of ``b``, 1.9 ms a call on the 55,000 pairs
    of a 100-row window beside 500 source rows)."""
    r0, r1 = ranks
    lo, hi = max(0, r0 - 1 - b.shape[0]), min(r1, a.shape[0])
    cand = np.concatenate([a[lo:hi], b])
    picked = np.partition(cand, sorted({r0 - lo - 1, r1 - lo - 1}))
    return float(picked[r0 - lo - 1]), float(picked[r1 - lo - 1])


def _mmd2_median_block(xt: torch.Tensor, yt: torch.Tensor, block: MMDSelfBlock) -> float:
    """:func:`_mmd2_median` with x's own pairs from ``block``: the pooled median is an order
    statistic of the union of the block's sorted values and the window's pairs (y's own and the
    cross pairs, by one selection: :func:`_kth_of_union`); x's kernel sum is taken over the block's values."""
    m, n = xt.shape[0], yt.shape[0]
    if block.rows != m or block.mean.shape[0] != xt.shape[1]:
        raise MetricInputError(f"x_block: made for {block.rows} rows of width {block.mean.shape[0]}, "
                               f"x has {m} of width {xt.shape[1]}")
    x_mean = xt.to(ACCUM_DTYPE).mean(0)
    if not torch.allclose(x_mean, block.mean.to(x_mean), rtol=1e-9, atol=1e-9):
        raise MetricInputError("x_block: made from other rows than x (their means differ)")
    centre = (m * x_mean + n * yt.to(ACCUM_DTYPE).mean(0)) / (m + n)  # the pooled mean, as _mmd2_median
    xc, yc = xt - centre.to(xt.dtype), yt - centre.to(yt.dtype)
    dyy = _self_sq_dists(yc)
    dxy = sq_dists(xc, yc)
    iu = torch.triu_indices(n, n, offset=1, device=yt.device)
    window = torch.cat([dyy[iu[0], iu[1]], dxy.reshape(-1)]).to(ACCUM_DTYPE)
    own = block.sorted_d2.to(device="cpu", dtype=ACCUM_DTYPE).numpy()
    other = window.cpu().numpy()
    k = own.shape[0] + other.shape[0]
    lo, hi = _kth_of_union(own, other, ((k - 1) // 2 + 1, k // 2 + 1))
    bw = _median_bandwidth_checked((math.sqrt(lo) + math.sqrt(hi)) / 2.0)
    gamma = 1.0 / (2.0 * bw * bw)
    kxx = 2.0 * float(np.exp(own * -gamma).sum())
    kyy = 2.0 * float(dyy[iu[0], iu[1]].to(ACCUM_DTYPE).mul(-gamma).exp().sum())
    kxy = float(dxy.to(ACCUM_DTYPE).mul(-gamma).exp().sum())
    return float(kxx / (m * (m - 1)) + kyy / (n * (n - 1)) - 2.0 * kxy / (m * n))


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
    k = sq_dists(z, z).mul_(-1.0 / (2.0 * bw * bw)).exp_()
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
    n, m, d = xt.shape[0], yt.shape[0], xt.shape[1]
    if min(n, m) < d:
        # Low-rank path, exact: the non-zero eigenvalues of S_x S_y are the squared singular values
        # of Xc Yc' / sqrt((n-1)(m-1)), so tr((S_x S_y)^{1/2}) is that matrix's nuclear norm; no
        # D x D matrix is formed (a 50-row window in 1280 dimensions: one 50 x 400 SVD, not two
        # 1280 x 1280 eigendecompositions).
        tr_sqrt = torch.linalg.svdvals(xc @ yc.T).sum() / math.sqrt((n - 1) * (m - 1))
        tr_x, tr_y = xc.square().sum() / (n - 1), yc.square().sum() / (m - 1)
    else:
        sx = xc.T @ xc / (n - 1)
        sy = yc.T @ yc / (m - 1)
        tr_sqrt = _trace_sqrt_product(_sqrtm_psd_factor(sx), sy)
        tr_x, tr_y = torch.trace(sx), torch.trace(sy)
    val = (mu_x - mu_y).square().sum() + tr_x + tr_y - 2.0 * tr_sqrt
    return max(float(val), 0.0)


# Above this many features the domain classifier is fitted in the row space of its training rows
# (exact, see _row_space) and, if that is still wider, by L-BFGS instead of Newton's D^3 steps.
_NEWTON_MAX_DIM = 256


def _row_space(ztr: torch.Tensor, zte: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both sets in an orthonormal basis of the span of the training rows.

    Exact for L2-regularised logistic regression: at the optimum ``w = -c Z' (p - t)`` lies in the
    rows' span, and any part of ``w`` outside it leaves the training scores unchanged and only
    adds to the penalty; so the fitted test scores ``zte w`` are the same in the reduced basis.
    """
    gram = ztr @ ztr.T
    evals, vecs = torch.linalg.eigh(gram)
    keep = evals > evals.max().clamp_min(1e-300) * 1e-12
    basis = (vecs[:, keep].T @ ztr) / evals[keep].sqrt().unsqueeze(1)  # r x D, orthonormal rows
    return ztr @ basis.T, zte @ basis.T


def _fit_logistic_lbfgs(z: torch.Tensor, t: torch.Tensor, c: float) -> torch.Tensor:
    """The objective of :func:`_fit_logistic` by L-BFGS (float64): for more features than Newton's
    ``D x D`` solves afford; converged to a gradient of 1e-9 per row, far below what moves an AUC."""
    n, d = z.shape
    za = torch.cat([z, torch.ones(n, 1, dtype=z.dtype, device=z.device)], dim=1)
    lam = torch.full((d + 1,), 1.0 / c, dtype=z.dtype, device=z.device)
    lam[-1] = 0.0
    w = torch.zeros(d + 1, dtype=z.dtype, device=z.device, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=2000, history_size=30, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9 * max(1.0, n), tolerance_change=1e-16)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        s = za @ w
        loss = (torch.nn.functional.softplus(s) - t * s).sum() + 0.5 * (lam * w * w).sum()
        loss.backward()
        return loss
    with torch.enable_grad():
        opt.step(closure)
    return w.detach()


def _fit_logistic(z: torch.Tensor, t: torch.Tensor, c: float, max_iter: int = 100, tol: float = 1e-10) -> torch.Tensor:
    """L2-regularised logistic regression by damped Newton; returns weights with the intercept last.

    Minimises ``sum_i [log(1 + exp(s_i)) - t_i s_i] + ||w||^2 / (2c)`` with ``s = Z w + b``
    (the intercept is not penalised), the objective of scikit-learn's ``LogisticRegression(C=c)``.
    """
    n, d = z.shape
    if d > _NEWTON_MAX_DIM:
        return _fit_logistic_lbfgs(z, t, c)
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


def _fit_logistic_batched(z: torch.Tensor, t: torch.Tensor, weight: torch.Tensor, c: float, max_iter: int = 100,
                          tol: float = 1e-10) -> torch.Tensor:
    """:func:`_fit_logistic` of F problems at once (e.g. the folds of a cross-validation), ``(F, d + 1)``.

    ``z`` ``(F, n, d)`` rows, ``t`` ``(F, n)`` targets, ``weight`` ``(F, n)``: 1 for a row of that
    problem, 0 for padding (problems of fewer rows; a padding row must be zeros in ``z`` and ``t``).
    Each problem takes the steps it would take alone: the same Newton steps, backtracking and
    stopping rules, with a problem that has stopped left as it is; the products are batched. With
    ``c <= 1`` (every weight but the intercept penalised by at least 1, the domain classifier's
    default on standardised features) the Hessian's product is taken in float32 (half the time of
    the largest product): the gradient, the objective and the stopping rule stay float64, so the
    optimum is the same and only the path to it moves by rounding (the weights equal
    :func:`_fit_logistic`'s within ~1e-9 relative). With a weaker penalty the optimum can be nearly
    flat and the float32 path stopped up to 5e-6 (relative) away, so the product stays float64
    there (then within ~2e-8 on such an optimum: where the stopping rule fires moves with the
    batched products' rounding). See ``tests/metrics/test_distances.py``. For ``d <= _NEWTON_MAX_DIM``.
    """
    f, _, d = z.shape
    za = torch.cat([z, weight.unsqueeze(2)], dim=2)  # the intercept's column is 0 on padding rows
    lam = torch.full((d + 1,), 1.0 / c, dtype=z.dtype, device=z.device)
    lam[-1] = 0.0
    w = torch.zeros(f, d + 1, dtype=z.dtype, device=z.device)
    limit = tol * weight.sum(1).clamp_min(1.0)
    eye = torch.eye(d + 1, dtype=z.dtype, device=z.device)
    za_h = za.to(torch.float32) if c <= 1.0 else za  # the Hessian's product (see above)

    def objective(wv: torch.Tensor) -> torch.Tensor:
        s = torch.bmm(za, wv.unsqueeze(2)).squeeze(2)
        return ((torch.nn.functional.softplus(s) - t * s) * weight).sum(1) + 0.5 * (lam * wv * wv).sum(1)

    obj = objective(w)
    active = torch.ones(f, dtype=torch.bool, device=z.device)
    for _ in range(max_iter):
        p = torch.sigmoid(torch.bmm(za, w.unsqueeze(2)).squeeze(2))
        grad = torch.bmm(za.transpose(1, 2), (p - t).unsqueeze(2)).squeeze(2) + lam * w
        active &= grad.abs().amax(1) >= limit
        if not bool(active.any()):
            break
        h = torch.bmm((za_h * (p * (1 - p)).to(za_h.dtype).unsqueeze(2)).transpose(1, 2), za_h).to(z.dtype)
        h.diagonal(dim1=1, dim2=2).add_(lam + 1e-12)
        h = torch.where(active.view(-1, 1, 1), h, eye)  # a stopped problem's system is not solved
        step = torch.linalg.solve(h, grad)
        slope = (grad * step).sum(1).abs()
        lr = torch.ones(f, dtype=z.dtype, device=z.device)
        pending = active.clone()
        w_new, obj_new = w.clone(), obj.clone()
        for _ls in range(30):
            cand = w - lr.unsqueeze(1) * step
            obj_cand = objective(cand)
            w_new = torch.where(pending.unsqueeze(1), cand, w_new)
            obj_new = torch.where(pending, obj_cand, obj_new)
            pending &= ~(obj_cand <= obj - 1e-4 * lr * slope)
            if not bool(pending.any()):
                break
            lr = torch.where(pending, lr * 0.5, lr)
        stalled = active & (obj - obj_new <= 1e-14 * obj.abs().clamp_min(1.0))
        take = active & (~stalled | (obj_new < obj))
        w = torch.where(take.unsqueeze(1), w_new, w)
        obj = torch.where(take, obj_new, obj)
        active &= ~stalled
        if not bool(active.any()):
            break
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


def _fold_directions(z: torch.Tensor, lab: torch.Tensor, fold: torch.Tensor, folds: int, axes: torch.Tensor
                     ) -> torch.Tensor:
    """``(folds, D)``: per fold, its training rows' mean difference (label 1 minus label 0),
    orthogonalised against the leading components ``axes`` and normalised; a zero row where no
    mean difference is left. Added to the components, a mean shift outside them stays visible, and
    as it comes from training rows only, a null pair is not made separable by it."""
    key = lab * folds + fold
    sums = torch.zeros(2 * folds, z.shape[1], dtype=z.dtype, device=z.device).index_add_(0, key, z).view(2, folds, -1)
    counts = torch.bincount(key, minlength=2 * folds).view(2, folds).to(z.dtype)
    train_means = (sums.sum(1, keepdim=True) - sums) / (counts.sum(1, keepdim=True) - counts).unsqueeze(2)
    diff = train_means[1] - train_means[0]
    diff = diff - (diff @ axes.T) @ axes
    norm = torch.linalg.vector_norm(diff, dim=1)
    row_max = z.abs().amax(1)
    scale = torch.stack([row_max[fold != k].max() for k in range(folds)]).clamp_min(1.0)
    keep = norm > 1e-12 * scale  # else no mean difference left to add
    return torch.where(keep.unsqueeze(1), diff / torch.where(keep, norm, 1.0).unsqueeze(1), 0.0)


def _standardised(feats: torch.Tensor, train: torch.Tensor, test: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Training and test rows of ``feats`` standardised on the training rows (a constant feature
    keeps its scale: divided by 1)."""
    ztr, zte = feats.index_select(0, train), feats.index_select(0, test)
    mu = ztr.mean(0)
    sd = ztr.std(0, unbiased=False)
    sd = torch.where(sd > 0, sd, torch.ones_like(sd))
    return (ztr - mu) / sd, (zte - mu) / sd


def _cv_aucs(z: torch.Tensor, lab: torch.Tensor, fold: torch.Tensor, folds: int, c: float,
             axes: torch.Tensor | None) -> list[float]:
    """Each fold's test AUC, every fold's Newton fit in one batch (:func:`_fit_logistic_batched`);
    wider than ``_NEWTON_MAX_DIM``, fold by fold in the training rows' span (:func:`_row_space`).

    ``axes`` (leading components of the centred rows ``z``): each fold sees the rows' components,
    computed once, plus its own mean-difference direction (:func:`_fold_directions`; a fold
    without one gets a zero column, whose weight stays 0: the fit of the components alone)."""
    tests = [torch.nonzero(fold == k).squeeze(1) for k in range(folds)]
    trains = [torch.nonzero(fold != k).squeeze(1) for k in range(folds)]
    if axes is not None:
        comps = z @ axes.T
        extra = z @ _fold_directions(z, lab, fold, folds, axes).T  # (n, folds)
        parts = [_standardised(torch.cat([comps, extra[:, k:k + 1]], 1), trains[k], tests[k]) for k in range(folds)]
    else:
        parts = [_standardised(z, trains[k], tests[k]) for k in range(folds)]
    width = parts[0][0].shape[1]
    if width > _NEWTON_MAX_DIM:  # each fold in its training rows' span (of its own width), one by one
        aucs = []
        for k, (ztr_s, zte_s) in enumerate(parts):
            ztr_s, zte_s = _row_space(ztr_s, zte_s)
            w = _fit_logistic(ztr_s, lab.index_select(0, trains[k]).to(z.dtype), c)
            aucs.append(_auc(zte_s @ w[:-1] + w[-1], lab.index_select(0, tests[k]).bool()))
        return aucs
    n_max = max(tr.shape[0] for tr in trains)
    zb = torch.zeros(folds, n_max, width, dtype=z.dtype, device=z.device)
    tb = torch.zeros(folds, n_max, dtype=z.dtype, device=z.device)
    wb = torch.zeros(folds, n_max, dtype=z.dtype, device=z.device)
    target = lab.to(z.dtype)
    for k, tr in enumerate(trains):
        zb[k, :tr.shape[0]] = parts[k][0]
        tb[k, :tr.shape[0]] = target.index_select(0, tr)
        wb[k, :tr.shape[0]] = 1.0
    w = _fit_logistic_batched(zb, tb, wb, c)
    return [_auc(parts[k][1] @ w[k, :-1] + w[k, -1], lab.index_select(0, tests[k]).bool()) for k in range(folds)]


DOMAIN_MAX_DIM = 64  # leading principal components the domain classifier sees (None in the call: all features)


def domain_classifier_auc(x: ArrayLike, y: ArrayLike, folds: int = 5, seed: int = 0, *, c: float = 1.0,
                          max_samples: int | None = 5000, max_dim: int | None = DOMAIN_MAX_DIM) -> float:
    """Cross-validated ROC AUC of a logistic-regression domain classifier (x = 0, y = 1).

    The proxy-A-distance idea (Ben-David et al. 2007; "classifier two-sample test", Lopez-Paz &
    Oquab, ICLR 2017): 0.5 means a linear classifier cannot tell the samples apart, 1 means they
    are separable. Stratified ``folds``-fold CV (each class shuffled with ``default_rng(seed)`` and
    dealt round-robin); features standardised on the training fold; L2-regularised logistic
    regression (``C=c``, unpenalised intercept, the objective of scikit-learn's default) fitted by
    Newton's method in float64, the folds' fits in one batch (:func:`_fit_logistic_batched`); the
    score is the mean of the per-fold AUCs. Each side is subsampled to ``max_samples`` rows
    (``seed``) first.

    With more than ``max_dim`` features the classifier sees ``max_dim - 1`` leading principal
    components of the pooled rows (unsupervised, fitted once before the folds by the seeded
    randomized range finder of ``_kernels.leading_components``) plus each training fold's
    mean-difference direction, so a mean shift outside the leading components is still seen: in
    a 1280-d embedding the full fit cost ~20 s a source on 2 cores. ``max_dim=None`` fits on
    every feature (exact, in the training rows' span, by L-BFGS when that is wide).
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
    ix = subsample_indices(xt.shape[0], max_samples, seed, sort=False)
    iy = subsample_indices(yt.shape[0], max_samples, seed + 1, sort=False)
    if ix is not None:
        xt = xt[ix.to(xt.device)]
    if iy is not None:
        yt = yt[iy.to(yt.device)]
    z = torch.cat([xt, yt])
    reduced = max_dim is not None and z.shape[1] > max_dim
    if reduced:
        centre, axes = leading_components(z, max(1, int(max_dim) - 1), seed=seed)
        z = z.to(axes.dtype) - centre
    lab_np = np.concatenate([np.zeros(xt.shape[0], dtype=np.int64), np.ones(yt.shape[0], dtype=np.int64)])
    fold_np = stratified_folds(lab_np, folds, seed)
    lab = torch.as_tensor(lab_np, device=z.device)
    fold = torch.as_tensor(fold_np, device=z.device)
    return float(np.mean(_cv_aucs(z, lab, fold, folds, float(c), axes if reduced else None)))


def domain_separability(auc: float) -> float:
    """``max(0, 2 AUC - 1)`` of a domain classifier's cross-validated AUC: 0 when the two samples
    cannot be told apart, 1 when they separate perfectly.

    Below chance the AUC does not mean "closer than identical": it means the samples share rows
    (each fold's duplicates are predicted as the other side; a copy of the target scores about
    0.05). Folding it to 0 makes a duplicate of the target the closest source, tied with a twin.
    """
    auc = float(auc)
    if not 0.0 <= auc <= 1.0:
        raise MetricInputError(f"auc must be in [0, 1], got {auc!r}")
    return max(0.0, 2.0 * auc - 1.0)


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
