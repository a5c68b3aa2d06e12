"""Representation similarity between two sets of features on the same inputs: CKA, SVCCA, PWCCA.

``x`` (n x p) and ``y`` (n x q) hold the representations of the same n inputs (row i of both is
input i); the widths p and q may differ. numpy arrays or torch tensors in, Python ``float`` out;
computation on the inputs' device in float64. Invalid inputs raise
:class:`tasksim.errors.MetricInputError`.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from tasksim.errors import MetricInputError
from tasksim.metrics._kernels import median, sq_dists
from tasksim.metrics._validate import ArrayLike, check_same_length, features_on, target_device

__all__ = [
    "MinibatchCKA",
    "kernel_cka",
    "linear_cka",
    "minibatch_cka",
    "pwcca",
    "svcca",
    "unbiased_hsic",
]


def _pair(x: ArrayLike, y: ArrayLike, min_rows: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    dev = target_device(x, y)
    xt = features_on(x, "x", dev, min_rows=min_rows)
    yt = features_on(y, "y", dev, min_rows=min_rows)
    check_same_length(xt, yt, ("x", "y"))
    return xt, yt


def _center_gram(k: torch.Tensor) -> torch.Tensor:
    """``H K H`` with ``H = I - 11'/n``."""
    k = k - k.mean(0, keepdim=True)
    return k - k.mean(1, keepdim=True)


def _cka_from_centred_grams(kc: torch.Tensor, lc: torch.Tensor) -> float:
    hsic_kl = (kc * lc).sum()
    norm = torch.sqrt((kc * kc).sum() * (lc * lc).sum())
    if not float(norm) > 0.0:
        raise MetricInputError("CKA is undefined: one representation is constant (zero centred Gram matrix)")
    return float(hsic_kl / norm)


def linear_cka(x: ArrayLike, y: ArrayLike) -> float:
    """Linear centered kernel alignment (Kornblith et al., ICML 2019, Eq. 5).

    ``CKA(X, Y) = ||Y_c' X_c||_F^2 / (||X_c' X_c||_F ||Y_c' Y_c||_F)`` with column-centred ``X_c``,
    ``Y_c``; equivalently ``HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))`` for linear kernels. In [0, 1];
    invariant to orthogonal transforms and isotropic scaling of either side. Uses the p x q
    feature-space form or the n x n Gram form, whichever is cheaper.
    """
    xt, yt = _pair(x, y)
    xc = xt - xt.mean(0, keepdim=True)
    yc = yt - yt.mean(0, keepdim=True)
    n, p = xc.shape
    q = yc.shape[1]
    if n * n * (p + q) < n * (p * q + p * p + q * q):
        return _cka_from_centred_grams(xc @ xc.T, yc @ yc.T)
    cross = (yc.T @ xc).square().sum()
    norm = torch.sqrt((xc.T @ xc).square().sum() * (yc.T @ yc).square().sum())
    if not float(norm) > 0.0:
        raise MetricInputError("CKA is undefined: one representation is constant (all rows equal)")
    return float(cross / norm)


def _rbf_gram(x: torch.Tensor, sigma: float | None) -> torch.Tensor:
    xc = x - x.mean(0, keepdim=True)
    d2 = sq_dists(xc, xc)
    d2.fill_diagonal_(0.0)
    if sigma is None:
        n = x.shape[0]
        iu = torch.triu_indices(n, n, offset=1, device=x.device)
        s = median(d2[iu[0], iu[1]].sqrt())
        if not s > 0.0:
            raise MetricInputError("median heuristic bandwidth is 0 (most rows are identical): pass sigma=")
    else:
        s = float(sigma)
        if not (s > 0.0 and s < float("inf")):
            raise MetricInputError(f"sigma must be a positive finite number, got {sigma!r}")
    return d2.mul_(-1.0 / (2.0 * s * s)).exp_()


def kernel_cka(x: ArrayLike, y: ArrayLike, sigma: float | None = None) -> float:
    """RBF-kernel CKA (Kornblith et al., ICML 2019, Sec. 3 and their ``rbf`` kernel).

    ``CKA = <H K H, H L H>_F / (||H K H||_F ||H L H||_F)`` with ``K_ij = exp(-||x_i - x_j||^2 / (2 s^2))``
    (and ``L`` likewise for y). ``sigma=None``: ``s`` is the median pairwise Euclidean distance of
    each representation separately (median heuristic); a number sets ``s`` for both. Builds two
    n x n matrices.
    """
    xt, yt = _pair(x, y)
    return _cka_from_centred_grams(_center_gram(_rbf_gram(xt, sigma)), _center_gram(_rbf_gram(yt, sigma)))


def _unbiased_hsic_gram(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    n = k.shape[0]
    kt = k.clone()
    lt = l.clone()
    kt.fill_diagonal_(0.0)
    lt.fill_diagonal_(0.0)
    k1 = kt.sum(1)
    l1 = lt.sum(1)
    term1 = (kt * lt).sum()
    term2 = k1.sum() * l1.sum() / ((n - 1) * (n - 2))
    term3 = 2.0 * (k1 @ l1) / (n - 2)
    return (term1 + term2 - term3) / (n * (n - 3))


def unbiased_hsic(x: ArrayLike, y: ArrayLike) -> float:
    """Unbiased HSIC estimator with linear kernels (Song et al., JMLR 2012, Eq. 5).

    ``HSIC_1 = [tr(K~ L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3))`` with
    ``K = X X'``, ``L = Y Y'`` and ``~`` meaning the diagonal set to 0. Needs n >= 4 rows.
    """
    xt, yt = _pair(x, y, min_rows=1)
    _check_batch_rows(xt.shape[0])
    return float(_unbiased_hsic_gram(xt @ xt.T, yt @ yt.T))


def _check_batch_rows(n: int) -> None:
    if n < 4:
        raise MetricInputError(
            f"unbiased HSIC divides by n(n-3): a batch needs at least 4 rows, got {n}"
        )


class MinibatchCKA:
    """Streaming linear CKA from unbiased HSIC accumulated over minibatches (Nguyen et al., ICLR 2021).

    ``CKA = sum_b HSIC_1(K_b, L_b) / sqrt(sum_b HSIC_1(K_b, K_b) * sum_b HSIC_1(L_b, L_b))`` where
    ``HSIC_1`` is the unbiased estimator of Song et al. (JMLR 2012) on the batch's linear Gram
    matrices. Each batch needs at least 4 rows (the estimator divides by n(n-3)); a smaller batch
    raises :class:`MetricInputError` instead of producing NaN. Sums are float64 on the device of the
    first batch.

    >>> m = MinibatchCKA()
    >>> for xb, yb in batches:  # doctest: +SKIP
    ...     m.update(xb, yb)
    >>> m.value()  # doctest: +SKIP
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._sums: torch.Tensor | None = None  # [hsic_xy, hsic_xx, hsic_yy]
        self.n_batches = 0
        self.n_samples = 0

    def update(self, x: ArrayLike, y: ArrayLike) -> MinibatchCKA:
        dev = self._sums.device if self._sums is not None else None
        if dev is None:
            dev = target_device(x, y)
        xt = features_on(x, "x", dev, min_rows=1)
        yt = features_on(y, "y", dev, min_rows=1)
        check_same_length(xt, yt, ("x", "y"))
        _check_batch_rows(xt.shape[0])
        k = xt @ xt.T
        l = yt @ yt.T
        vals = torch.stack([_unbiased_hsic_gram(k, l), _unbiased_hsic_gram(k, k), _unbiased_hsic_gram(l, l)])
        self._sums = vals if self._sums is None else self._sums + vals
        self.n_batches += 1
        self.n_samples += xt.shape[0]
        return self

    def value(self) -> float:
        if self._sums is None:
            raise MetricInputError("MinibatchCKA.value() called before any update()")
        xy, xx, yy = (float(v) for v in self._sums)
        if not (xx > 0.0 and yy > 0.0):
            raise MetricInputError(
                "minibatch CKA is undefined: accumulated HSIC(X, X) or HSIC(Y, Y) is not positive "
                "(constant features, or too few samples)"
            )
        return xy / (xx * yy) ** 0.5


def minibatch_cka(batches: Iterable[tuple[ArrayLike, ArrayLike]]) -> float:
    """Minibatch linear CKA over an iterable of ``(x_batch, y_batch)`` pairs; see :class:`MinibatchCKA`."""
    m = MinibatchCKA()
    for pair in batches:
        try:
            xb, yb = pair
        except (TypeError, ValueError) as exc:
            raise MetricInputError("minibatch_cka expects an iterable of (x_batch, y_batch) pairs") from exc
        m.update(xb, yb)
    return m.value()


def _orth_basis(xc: torch.Tensor, keep: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Left singular vectors of centred ``xc`` spanning its numerical range (or ``keep`` of its variance).

    Returns ``(U_k, s_k)``. With ``keep``, ``k`` is the smallest count whose squared singular
    values reach ``keep`` of the total (the SVD step of SVCCA).
    """
    u, s, _ = torch.linalg.svd(xc, full_matrices=False)
    if s.numel() == 0 or not float(s[0]) > 0.0:
        raise MetricInputError("CCA is undefined: a representation is constant (all rows equal)")
    tol = s[0] * max(xc.shape) * torch.finfo(xc.dtype).eps
    rank = int((s > tol).sum())
    if keep is not None:
        energy = torch.cumsum(s[:rank].square(), 0)
        frac = energy / energy[-1]
        k = int((frac < keep - 1e-12).sum()) + 1
        rank = min(rank, k)
    return u[:, :rank], s[:rank]


def _cca(xc: torch.Tensor, yc: torch.Tensor, keep_x: float | None = None,
         keep_y: float | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Canonical correlations via orthonormal bases (Bjorck & Golub 1973).

    With ``Q_x``, ``Q_y`` orthonormal bases of the centred column spaces, the SVD
    ``Q_x' Q_y = U diag(rho) V'`` gives the canonical correlations ``rho`` and the (unit-norm)
    canonical variates ``Q_x U`` and ``Q_y V``.
    """
    qx, _ = _orth_basis(xc, keep_x)
    qy, _ = _orth_basis(yc, keep_y)
    u, rho, vh = torch.linalg.svd(qx.T @ qy, full_matrices=False)
    return rho.clamp(0.0, 1.0), qx @ u, qy @ vh.T, u


def svcca(x: ArrayLike, y: ArrayLike, keep: float = 0.99) -> float:
    """Singular vector CCA (Raghu et al., NeurIPS 2017).

    Each representation is centred and reduced by SVD to its top directions explaining ``keep`` of
    the variance (squared singular values); SVCCA is the mean canonical correlation between the two
    reduced subspaces, ``mean_i rho_i`` over ``min(k_x, k_y)`` pairs. In [0, 1]. CCA needs n well
    above the kept widths: with ``k_x + k_y >= n`` correlations of 1 appear by construction.
    """
    keep = float(keep)
    if not 0.0 < keep <= 1.0:
        raise MetricInputError(f"keep must be in (0, 1], got {keep!r}")
    xt, yt = _pair(x, y)
    rho, _, _, _ = _cca(xt - xt.mean(0, keepdim=True), yt - yt.mean(0, keepdim=True), keep, keep)
    return float(rho.mean())


def pwcca(x: ArrayLike, y: ArrayLike) -> float:
    """Projection-weighted CCA (Morcos et al., NeurIPS 2018, Eq. 2).

    ``PWCCA = sum_i alpha_i rho_i`` with ``alpha_i ∝ sum_j |<h_i, z_j>|``: ``h_i`` the i-th
    (unit-norm) canonical variate and ``z_j`` the j-th centred neuron (column) of the weighting side.
    As in the authors' reference code, the weighting side is the representation with fewer columns
    (``x`` on a tie). In [0, 1]; not symmetric when widths are equal.
    """
    xt, yt = _pair(x, y)
    xc = xt - xt.mean(0, keepdim=True)
    yc = yt - yt.mean(0, keepdim=True)
    rho, hx, hy, _ = _cca(xc, yc)
    if xc.shape[1] <= yc.shape[1]:
        h, z = hx, xc
    else:
        h, z = hy, yc
    alpha = (h.T @ z).abs().sum(1)
    total = alpha.sum()
    if not float(total) > 0.0:
        raise MetricInputError("PWCCA is undefined: zero projection weights")
    return float((alpha / total * rho).sum())

