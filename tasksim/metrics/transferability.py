"""Transferability measures: how well a source's representation of the target fits the target labels.

Every public measure takes numpy arrays or torch tensors (rows are samples) and returns a Python
``float``. Computation runs on the device of the inputs; covariances, Gram matrices and
decompositions run in float64. Label ids are remapped to ``0..C-1`` first (any ints or strings).
Invalid inputs raise :class:`tasksim.errors.MetricInputError`: NaN/Inf, fewer than two classes,
a class with fewer than two samples, mismatched lengths.

Shared work
-----------
LogME, H-score, regularised H-score, TransRate and GBC all depend on the same second-order
statistics. :func:`precompute` returns a :class:`FeatureStats` holding the globally centred
features, ONE eigendecomposition of their covariance (of the ``D x D`` covariance when
``N >= D``; of the ``N x N`` Gram matrix when ``N < D``), class means and counts; every one of
those measures accepts either raw ``(features, labels)`` or a ``FeatureStats``.

LogME needs the eigendecomposition of the *uncentred* ``F^T F`` while the others need the centred
covariance ``S``. Because ``F^T F = N (S + mu mu^T)`` is a rank-one update of ``N S``, LogME is
evaluated exactly from the eigendecomposition of ``S`` with the Sherman-Morrison formula and the
matrix determinant lemma (``O(D)`` per fixed-point step and class), so a whole profile costs one
Gram matrix and one symmetric eigendecomposition. :func:`transferability_profile` computes the
profile of one source; :func:`profile_many` scores K sources against one target with batched
linear algebra and row-chunked (streaming) accumulation.

CPU specifics (measured on a 2-core Xeon, see docs/benchmarks.md): Gram matrices multiply only
their lower block triangle (3/4 of the flops), per-class log-determinants use a blocked Cholesky
built on batched matrix products, and a batch of K covariances is eigendecomposed one matrix at a
time (LAPACK's batched path was slower). On CUDA every one of these is a single batched call.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from scipy.linalg.blas import dsyrk as _dsyrk

from tasksim.errors import MetricInputError
from tasksim.metrics._common import (
    ACCUM_DTYPE,
    ArrayLike,
    as_labels,
    check_classes,
)

__all__ = [
    "PROFILE_MEASURES",
    "FeatureStats",
    "gbc",
    "hscore",
    "hscore_regularized",
    "knn_accuracy",
    "leep",
    "linear_probe_accuracy",
    "logme",
    "nce",
    "nleep",
    "parc",
    "precompute",
    "profile_many",
    "sfda",
    "transferability_profile",
    "transrate",
]

# Measures that transferability_profile / profile_many compute by default (leep and nce only when
# source probabilities are given). Keys of the returned dicts are the function names.
PROFILE_MEASURES: tuple[str, ...] = (
    "logme", "hscore", "hscore_regularized", "transrate", "gbc", "knn_accuracy", "leep", "nce",
)
_OPTIONAL_MEASURES = ("sfda", "parc", "nleep", "linear_probe_accuracy")

_EPS64 = float(torch.finfo(torch.float64).eps)
_LOG_2PI = math.log(2.0 * math.pi)
# Elements of a similarity block materialised at once by the kNN search (2**24 floats).
_KNN_BLOCK_ELEMS = 2**24
# float64 bytes of one row chunk in the streaming accumulation.
_CHUNK_BYTES = 2**28
# Elements of a block converted to float64 at a time (LEEP's probabilities, TransRate's class-sorted
# rows): 4 MiB on CPU (cache-sized, reused by the allocator), 1 GiB on CUDA (few launches).
_CONVERT_CHUNK_ELEMS = {"cpu": 2**19, "cuda": 2**27}


# =============================================================================================
# input handling
# =============================================================================================

def _raw_tensor(x: ArrayLike, name: str = "features") -> torch.Tensor:
    """``x`` as a torch tensor without copying (numpy shares memory); 2-D (1-D becomes a column)."""
    t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.ndim == 1:
        t = t.unsqueeze(1)
    if t.ndim != 2:
        raise MetricInputError(f"{name}: expected a 2-D array (samples x dims), got shape {tuple(t.shape)}")
    return t


def _check_finite(t: torch.Tensor, name: str) -> None:
    """Raise unless every entry is finite: one reduction (any NaN/Inf makes the sum non-finite);
    the exact per-row count runs only to word the error (or when finite values overflow the sum)."""
    low = t.dtype in (torch.float16, torch.bfloat16)
    if t.is_floating_point() and not bool(torch.isfinite(t.sum(dtype=torch.float32) if low else t.sum())):
        bad = int((~torch.isfinite(t)).reshape(t.shape[0], -1).any(dim=1).sum()) if t.ndim else 1
        if bad:
            raise MetricInputError(f"{name}: {bad} rows contain NaN or Inf")


def _float64_features(raw: torch.Tensor, name: str = "features", min_rows: int = 2) -> torch.Tensor:
    """``raw`` (2-D) as a finite float64 tensor (copied only when the dtype differs)."""
    if raw.shape[0] < min_rows:
        raise MetricInputError(f"{name}: expected at least {min_rows} samples, got {raw.shape[0]}")
    _check_finite(raw, name)
    return raw.to(ACCUM_DTYPE)


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    """float64 inputs stay float64; every other dtype computes similarities in float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _prep_labels(labels: ArrayLike, n: int, device: torch.device, *, name: str = "labels",
                 min_per_class: int = 2) -> tuple[torch.Tensor, int, torch.Tensor]:
    y, c = as_labels(labels, name, device=device)
    if y.shape[0] != n:
        raise MetricInputError(f"features have {n} samples but {name} has {y.shape[0]}: lengths must match")
    counts = check_classes(y, c, min_per_class=min_per_class, name=name)
    return y, c, counts


def _subsample_indices(n: int, m: int | None, seed: int, device: torch.device) -> torch.Tensor | None:
    """Sorted indices of a seeded uniform subsample of ``m`` of ``n`` rows (None: keep all rows)."""
    if m is None or n <= m:
        return None
    if m < 1:
        raise MetricInputError(f"subsample size must be >= 1, got {m}")
    g = torch.Generator().manual_seed(int(seed))
    return torch.randperm(n, generator=g)[:m].sort().values.to(device)


def _blocked_cholesky_logdet(m: torch.Tensor, nb: int = 128) -> torch.Tensor | None:
    """``log det`` of SPD ``m`` (B, D, D) by a right-looking blocked Cholesky ``M = U^T U`` whose
    trailing updates are batched matrix products; reads and overwrites the upper triangle only.
    None if a pivot block is not positive definite. On CPU this beat LAPACK's potrf by ~45% at
    D = 1024 (0.11 s vs 0.24 s for ten matrices, one thread)."""
    d = m.shape[-1]
    logdet = torch.zeros(m.shape[:-2], dtype=m.dtype, device=m.device)
    for j in range(0, d, nb):
        e = min(d, j + nb)
        ujj, info = torch.linalg.cholesky_ex(m[..., j:e, j:e], upper=True)
        if bool((info != 0).any()):
            return None
        logdet += 2.0 * ujj.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        if e < d:
            u12 = torch.linalg.solve_triangular(ujj.transpose(-1, -2), m[..., j:e, e:], upper=False)
            for k0 in range(e, d, nb):
                k1 = min(d, k0 + nb)
                m[..., k0:k1, k0:] -= u12[..., :, k0 - e:k1 - e].transpose(-1, -2) @ u12[..., :, k0 - e:]
    return logdet


def _logdet_identity_plus(a: torch.Tensor, *, overwrite: bool = False) -> torch.Tensor:
    """``log det(I + A)`` for symmetric PSD ``A`` (batched) by Cholesky (slogdet fallback).
    ``overwrite=True`` lets the CPU path work inside ``a``; for D >= 512 on CPU only the upper
    triangle of ``a`` is read."""
    if _cholesky_reads_upper(a.device, a.shape[-1]):
        m = a if overwrite else a.clone()
        m.diagonal(dim1=-2, dim2=-1).add_(1.0)
        out = _blocked_cholesky_logdet(m)
        if out is not None:
            return out
        if overwrite:
            raise MetricInputError("per-class Gram matrix is not positive semi-definite (NaN in the features?)")
    m = a.clone()
    m.diagonal(dim1=-2, dim2=-1).add_(1.0)
    chol, info = torch.linalg.cholesky_ex(m)
    if bool((info == 0).all()):
        return 2.0 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return torch.linalg.slogdet(m)[1]


def _gram(z: torch.Tensor, out: torch.Tensor | None = None, *, dual: bool = False, alpha: float = 1.0,
          beta: float = 0.0, upper_only: bool = False) -> torch.Tensor:
    """``alpha z^T z + beta out`` (``z z^T`` when ``dual``) for z (K, n, D), exactly symmetric.

    On CPU in float64 each source is one BLAS ``syrk`` (half the flops of a general product)
    that writes the upper triangle of ``out`` in place; the lower one is mirrored unless
    ``upper_only`` (for callers that read the upper triangle alone, see
    :func:`_cholesky_reads_upper`). N = 10k, D = 1024, one thread: 0.158 s against 0.198 s for
    torch's upper block triangle and 0.29 s for its full product. Elsewhere one batched product.
    """
    k, n, d = z.shape
    m = n if dual else d
    if out is None:
        out = torch.empty(k, m, m, dtype=z.dtype, device=z.device)
    if z.device.type == "cpu" and z.dtype == torch.float64 and out.stride(-1) == 1 and out.stride(-2) == m:
        out_np = out.numpy()
        for i in range(k):
            a = z[i].numpy()
            # Fortran views of C-ordered arrays, so nothing is copied: ``a.T`` is (D, n) and the
            # upper triangle of ``out[i]`` is the lower triangle of its transpose.
            c = out_np[i].T
            res = _dsyrk(alpha, a.T, beta=beta, c=c, trans=1 if dual else 0, lower=1, overwrite_c=1)
            if not np.may_share_memory(res, c):  # f2py copied instead of writing in place
                c[...] = res
        if not upper_only:
            _mirror_upper(out)
        return out
    zt = z.transpose(1, 2)
    a, b = (z, zt) if dual else (zt, z)
    if beta == 0.0:
        out = torch.bmm(a, b, out=out)
        return out.mul_(alpha) if alpha != 1.0 else out
    return out.baddbmm_(a, b, beta=beta, alpha=alpha)


def _mirror_upper(m: torch.Tensor, nb: int = 256) -> None:
    """Copy the upper triangle of (K, D, D) ``m`` onto its lower one, in place (by blocks)."""
    d = m.shape[-1]
    for i0 in range(0, d, nb):
        i1 = min(d, i0 + nb)
        blk = m[:, i0:i1, i0:i1]
        blk.copy_(blk.triu() + blk.triu(1).transpose(1, 2))
        m[:, i1:, i0:i1] = m[:, i0:i1, i1:].transpose(1, 2)


def _cholesky_reads_upper(device: torch.device, d: int) -> bool:
    """Whether :func:`_logdet_identity_plus` reads only the upper triangle (CPU, D >= 512)."""
    return device.type == "cpu" and d >= 512


def _use_dual_gram(n_c: int, d: int) -> bool:
    """True when the ``n_c x n_c`` Gram of a class is cheaper than its ``D x D`` one.

    The ``D x D`` class Gram is free when it is accumulated into the total covariance anyway, so
    the dual costs ``2 n^2 D + n^3 / 3`` flops against ``D^3 / 3`` for the primal Cholesky.
    """
    return 2.0 * n_c * n_c * d + n_c**3 / 3.0 < d**3 / 3.0


def _fix_signs(vecs: torch.Tensor) -> torch.Tensor:
    """Flip eigenvector columns so the entry of largest magnitude is positive (as scikit-learn)."""
    idx = vecs.abs().argmax(dim=-2, keepdim=True)
    signs = torch.sign(torch.gather(vecs, -2, idx))
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    return vecs * signs


# =============================================================================================
# shared statistics
# =============================================================================================

class FeatureStats:
    """Sufficient statistics of K sources' features of one labelled target, shared by the measures.

    Build it with :func:`precompute` (one source) or internally by :func:`profile_many` (K
    sources, leading dimension K on every tensor). Attributes (float64, on the input device):

    - ``n``, ``d``, ``n_classes``; ``counts`` (C,) samples per class; ``labels`` (N,) in input order
    - ``mean`` (K, D); ``class_means`` (K, C, D) class means minus the global mean
    - ``eigvals`` (K, k) descending eigenvalues of the covariance ``S = Z^T Z / N`` (Z centred),
      ``eigvecs`` (K, D, k) orthonormal columns, ``valid`` (K, k) which columns are real
      directions. When ``N >= D`` this is the full eigendecomposition (k = D). When ``N < D`` it
      comes from the ``N x N`` Gram matrix: the non-null eigenvectors plus one extra column (with
      eigenvalue 0) spanning the part of the mean outside the row space, so the mean and every
      class mean lie in the span; the remaining ``D - sum(valid)`` directions are null for all of
      them.
    - ``proj_mean`` (K, k) = eigvecs^T mean; ``proj_class_means`` (K, C, k) = class_means eigvecs
    - ``trace`` (K,) tr S; ``frob2`` (K,) ||S||_F^2; ``row_norm4`` (K,) sum_i ||z_i||^4 (Ledoit-Wolf)
    - ``centred`` (K, N, D) centred features, kept unless ``keep_features=False``: row r is input
      row ``order[r]`` (sorted by class when TransRate blocks were computed; ``order`` None: input
      order) with label ``sorted_labels[r]``
    - ``features`` (K, N, D) the input features (input dtype, input row order), when kept
    - ``class_grams`` (K, C, D, D) per-class ``Z_c^T Z_c`` (streaming accumulation only)
    """

    def __init__(self, *, n: int, d: int, n_classes: int, counts: torch.Tensor, labels: torch.Tensor,
                 mean: torch.Tensor, class_means: torch.Tensor, eigvals: torch.Tensor, eigvecs: torch.Tensor,
                 valid: torch.Tensor, trace: torch.Tensor, frob2: torch.Tensor, row_norm4: torch.Tensor | None,
                 cov: torch.Tensor | None = None, centred: torch.Tensor | None = None,
                 sorted_labels: torch.Tensor | None = None, order: torch.Tensor | None = None,
                 features: torch.Tensor | None = None, class_grams: torch.Tensor | None = None,
                 class_logdets: dict[float, torch.Tensor] | None = None) -> None:
        self.n, self.d, self.n_classes = int(n), int(d), int(n_classes)
        self.counts, self.labels = counts, labels
        self.mean, self.class_means = mean, class_means
        self.eigvals = torch.where(valid, eigvals.clamp_min(0.0), torch.zeros_like(eigvals))
        self.eigvecs, self.valid = eigvecs, valid
        vm = valid.to(eigvecs.dtype)
        self.proj_mean = torch.einsum("kdr,kd->kr", eigvecs, mean) * vm
        self.proj_class_means = torch.bmm(class_means, eigvecs) * vm.unsqueeze(1)
        self.trace, self.frob2, self._row_norm4 = trace, frob2, row_norm4
        self._cov = cov
        self.centred, self.sorted_labels, self.order = centred, sorted_labels, order
        self.features = features
        self.class_grams = class_grams
        self._logdets: dict[float, torch.Tensor] = dict(class_logdets or {})

    # ------------------------------------------------------------------ views
    @property
    def n_sources(self) -> int:
        return int(self.mean.shape[0])

    @property
    def device(self) -> torch.device:
        return self.mean.device

    @property
    def priors(self) -> torch.Tensor:
        return self.counts.to(ACCUM_DTYPE) / self.n

    @property
    def row_norm4(self) -> torch.Tensor:
        """(K,) ``sum_i ||z_i||^4`` of the centred rows (Ledoit-Wolf), computed on first use."""
        if self._row_norm4 is None:
            if self.centred is None:
                raise MetricInputError("these FeatureStats keep no centred features: Ledoit-Wolf needs them")
            self._row_norm4 = torch.linalg.vector_norm(self.centred, dim=-1).square().square().sum(-1)
        return self._row_norm4

    @property
    def cov(self) -> torch.Tensor:
        """(K, D, D) covariance ``Z^T Z / N`` (rebuilt from the eigendecomposition when not kept)."""
        if self._cov is None:
            q = self.eigvecs
            self._cov = (q * self.eigvals.unsqueeze(1)) @ q.transpose(1, 2)
        return self._cov

    def source(self, i: int) -> FeatureStats:
        """The statistics of source ``i`` alone (a K = 1 view sharing memory)."""
        def pick(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[i:i + 1]
        return FeatureStats(
            n=self.n, d=self.d, n_classes=self.n_classes, counts=self.counts, labels=self.labels,
            mean=pick(self.mean), class_means=pick(self.class_means), eigvals=pick(self.eigvals),
            eigvecs=pick(self.eigvecs), valid=pick(self.valid), trace=pick(self.trace), frob2=pick(self.frob2),
            row_norm4=pick(self._row_norm4), cov=pick(self._cov), centred=pick(self.centred),
            sorted_labels=self.sorted_labels, order=self.order, features=pick(self.features), class_grams=pick(self.class_grams),
            class_logdets={e: v[i:i + 1] for e, v in self._logdets.items()})

    # ------------------------------------------------------------------ per-class log-determinants
    def class_logdets(self, eps: float) -> torch.Tensor:
        """(K, C) ``log det(I + Z_c^T Z_c / (n_c eps))`` for every class (cached per ``eps``)."""
        eps = float(eps)
        if eps in self._logdets:
            return self._logdets[eps]
        k, c_n = self.n_sources, self.n_classes
        out = torch.empty(k, c_n, dtype=ACCUM_DTYPE, device=self.device)
        counts = self.counts.tolist()
        if self.class_grams is not None:
            for c in range(c_n):
                out[:, c] = _logdet_identity_plus(self.class_grams[:, c] / (counts[c] * eps))
        elif self.centred is not None:
            for c in range(c_n):
                zc = self.centred.index_select(1, torch.nonzero(self.sorted_labels == c).squeeze(1))
                g = _gram(zc, dual=_use_dual_gram(counts[c], self.d))
                out[:, c] = _logdet_identity_plus(g / (counts[c] * eps))
        else:
            raise MetricInputError("these FeatureStats keep neither the centred features nor per-class Gram "
                                   "matrices: rebuild them with precompute(..., keep_features=True)")
        self._logdets[eps] = out
        return out


def _finish_eigen(n: int, d: int, cov: torch.Tensor | None, gram_dual: torch.Tensor | None,
                  centred: torch.Tensor | None, mean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Descending eigenpairs (K, k), (K, D, k) and the validity mask from the covariance or dual Gram."""
    if cov is not None:
        if cov.device.type == "cpu" and cov.shape[0] > 1:
            # LAPACK per matrix: the batched CPU kernel measured ~30% slower (K=4, D=1024).
            pairs = [torch.linalg.eigh(c) for c in cov]
            lam, vec = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
        else:
            lam, vec = torch.linalg.eigh(cov)
        lam, vec = lam.flip(-1), vec.flip(-1)
        valid = torch.ones_like(lam, dtype=torch.bool)
        return lam.clamp_min(0.0), _fix_signs(vec), valid
    assert gram_dual is not None and centred is not None
    kap, u = torch.linalg.eigh(gram_dual)
    kap, u = kap.flip(-1).clamp_min(0.0), u.flip(-1)
    tol = kap[:, :1] * (max(n, d) * _EPS64)
    valid_r = kap > tol
    scale = torch.where(valid_r, kap.clamp_min(1e-300).rsqrt(), torch.zeros_like(kap))
    vr = (centred.transpose(1, 2) @ u) * scale.unsqueeze(1)  # (K, D, N) orthonormal valid columns
    # The mean is in the row space of the raw features but in general not in that of the centred
    # ones: one more basis vector makes every mean representable.
    perp = mean - torch.einsum("kdr,kr->kd", vr, torch.einsum("kdr,kd->kr", vr, mean))
    perp = perp - torch.einsum("kdr,kr->kd", vr, torch.einsum("kdr,kd->kr", vr, perp))
    pn = perp.norm(dim=-1, keepdim=True)
    q_valid = (pn > 1e-9 * mean.norm(dim=-1, keepdim=True)) & (pn > 0)
    q = torch.where(q_valid, perp / pn.clamp_min(1e-300), torch.zeros_like(perp))
    vec = torch.cat([vr, q.unsqueeze(-1)], dim=-1)
    lam = torch.cat([kap / n, torch.zeros_like(kap[:, :1])], dim=-1)
    valid = torch.cat([valid_r, q_valid], dim=-1)
    return lam, _fix_signs(vec), valid


def _build_inmemory(f: torch.Tensor, y: torch.Tensor, n_classes: int, counts: torch.Tensor, *,
                    transrate_eps: float | None, raw: torch.Tensor | None, keep_centred: bool) -> FeatureStats:
    """Statistics from features held in memory: ``f`` (K, N, D) any real dtype, labels (N,).
    Raises MetricInputError on NaN/Inf (checked through the class sums: one pass fewer)."""
    k, n, d = f.shape
    counts_l = counts.tolist()
    dual = n < d
    # Row layout: sorted by class; in the primal case, classes whose per-class log-determinant is
    # cheaper through their n_c x n_c Gram come first (their rows then form one contiguous block).
    if transrate_eps is not None and not dual:
        dual_cls = [c for c in range(n_classes) if _use_dual_gram(counts_l[c], d)]
    else:
        dual_cls = []
    primal_cls = [c for c in range(n_classes) if c not in set(dual_cls)]
    class_order = dual_cls + primal_cls
    if transrate_eps is not None:
        # Class-contiguous rows for the per-class Gram blocks, gathered in cache-sized row blocks
        # straight into the float64 copy (no full-size copy in the input dtype).
        rank = torch.empty(n_classes, dtype=torch.long)
        rank[torch.as_tensor(class_order, dtype=torch.long)] = torch.arange(n_classes)
        order = torch.argsort(rank.to(y.device)[y], stable=True)
        ys = y[order]
        z = torch.empty(k, n, d, dtype=ACCUM_DTYPE, device=f.device)
        step = max(1, _CONVERT_CHUNK_ELEMS.get(f.device.type, 2**19) // max(1, k * d))
        for s in range(0, n, step):
            z[:, s:s + step] = f.index_select(1, order[s:s + step])
    else:
        order, ys = None, y
        z = f.to(ACCUM_DTYPE, copy=True)
    f_dtype, f_device = z.dtype, z.device
    cnt64 = counts.to(f_dtype).view(1, -1, 1)
    # Class sums of the raw rows give the mean for free; centred class means follow.
    class_sums = torch.zeros(k, n_classes, d, dtype=f_dtype, device=f_device).index_add_(1, ys, z)
    if not bool(torch.isfinite(class_sums.sum())):   # NaN/Inf anywhere propagate into the sums
        _check_finite(z.reshape(k * n, d), "features")
    mean = class_sums.sum(1) / n
    class_means = class_sums / cnt64 - mean.unsqueeze(1)
    z.sub_(mean.unsqueeze(1))
    starts = {}
    pos = 0
    for c in class_order:
        starts[c] = (pos, pos + counts_l[c])
        pos += counts_l[c]
    # sum_i ||z_i||^4 (Ledoit-Wolf) is computed lazily from the centred rows when they are kept.
    row_norm4 = None if keep_centred else torch.linalg.vector_norm(z, dim=-1).square().square().sum(-1)
    logdets: dict[float, torch.Tensor] = {}
    cov = gram_dual = None
    if dual:
        gram_dual = _gram(z, dual=True)
        if transrate_eps is not None:
            ld = torch.empty(k, n_classes, dtype=f_dtype, device=f_device)
            for c in range(n_classes):
                s, e = starts[c]
                ld[:, c] = _logdet_identity_plus(gram_dual[:, s:e, s:e] / (counts_l[c] * transrate_eps))
            logdets[float(transrate_eps)] = ld
    elif transrate_eps is None:
        cov = _gram(z)
    else:
        ld = torch.empty(k, n_classes, dtype=f_dtype, device=f_device)
        cov = torch.zeros(k, d, d, dtype=f_dtype, device=f_device)
        n_dual_rows = sum(counts_l[c] for c in dual_cls)
        if n_dual_rows:
            zd = z[:, :n_dual_rows]
            cov += _gram(zd)
            for c in dual_cls:
                s, e = starts[c]
                zc = z[:, s:e]
                ld[:, c] = _logdet_identity_plus(_gram(zc, dual=True) / (counts_l[c] * transrate_eps))
        # Per-class Grams are summed into the covariance, then their log-determinants taken. On
        # CUDA classes go in batches (bounded memory) so the Cholesky work is batched too; on CPU
        # one class at a time through one reused buffer (batching gains nothing there, and a fresh
        # multi-class buffer paid its page faults on every call). Where the Cholesky reads the
        # upper triangle only, so do the sums (mirrored once).
        upper = _cholesky_reads_upper(f_device, d)
        group = 1 if f_device.type == "cpu" else max(1, _CHUNK_BYTES // max(1, k * d * d * 8))
        buf = torch.empty(min(group, max(1, len(primal_cls))), k, d, d, dtype=f_dtype, device=f_device)
        for g0 in range(0, len(primal_cls), group):
            cls = primal_cls[g0:g0 + group]
            mats = buf[:len(cls)]
            for j, c in enumerate(cls):
                s, e = starts[c]
                scale = counts_l[c] * transrate_eps
                _gram(z[:, s:e], out=mats[j], alpha=1.0 / scale, upper_only=upper)
                cov.add_(mats[j], alpha=scale)
            ld[:, cls] = _logdet_identity_plus(mats, overwrite=True).T
        logdets[float(transrate_eps)] = ld
        if upper:
            _mirror_upper(cov)
    if cov is not None:
        cov.div_(n)
        trace = cov.diagonal(dim1=-2, dim2=-1).sum(-1)
    else:
        trace = gram_dual.diagonal(dim1=-2, dim2=-1).sum(-1) / n
    lam, vec, valid = _finish_eigen(n, d, cov, gram_dual, z, mean)
    frob2 = (lam * lam).sum(-1)
    return FeatureStats(n=n, d=d, n_classes=n_classes, counts=counts, labels=y, mean=mean,
                        class_means=class_means, eigvals=lam, eigvecs=vec, valid=valid, trace=trace,
                        frob2=frob2, row_norm4=row_norm4, cov=cov, centred=z if keep_centred else None,
                        sorted_labels=ys, order=order, features=raw, class_logdets=logdets)


class _Accumulator:
    """Streaming float64 moments of K sources over row chunks (labels known up front).

    Rows are shifted by ``shift`` (the exact mean when a pre-pass gave it, else the first chunk's
    mean) before accumulating, so the final centring subtracts only a small correction.
    """

    def __init__(self, k: int, d: int, n_classes: int, device: torch.device, *, class_grams: bool,
                 shift: torch.Tensor | None) -> None:
        z = {"dtype": ACCUM_DTYPE, "device": device}
        self.k, self.d, self.c = k, d, n_classes
        self.shift = shift
        self.sums = torch.zeros(k, n_classes, d, **z)
        self.q4 = torch.zeros(k, **z)
        self.sq = torch.zeros(k, **z)
        self.t3 = torch.zeros(k, d, **z)
        self.per_class = class_grams
        self.gram = torch.zeros(k, n_classes, d, d, **z) if class_grams else torch.zeros(k, d, d, **z)
        self.rows = 0

    def add(self, chunk: torch.Tensor, y: torch.Tensor) -> None:
        x = chunk.to(dtype=ACCUM_DTYPE, copy=True)
        if not bool(torch.isfinite(x.sum())):
            raise MetricInputError(f"features: rows {self.rows}..{self.rows + x.shape[1] - 1} contain NaN or Inf")
        if self.shift is None:
            self.shift = x.mean(1)
        x.sub_(self.shift.unsqueeze(1))
        self.sums.index_add_(1, y, x)
        rn = (x * x).sum(-1)
        self.q4 += (rn * rn).sum(-1)
        self.sq += rn.sum(-1)
        self.t3 += torch.bmm(rn.unsqueeze(1), x).squeeze(1)
        if self.per_class:
            order = torch.argsort(y, stable=True)
            xs = x.index_select(1, order)
            cnt = torch.bincount(y, minlength=self.c).tolist()
            pos = 0
            for c, m in enumerate(cnt):
                if m:
                    _gram(xs[:, pos:pos + m], out=self.gram[:, c], beta=1.0, upper_only=True)
                    pos += m
        else:
            _gram(x, out=self.gram, beta=1.0, upper_only=True)
        self.rows += x.shape[1]

    def finish(self, labels: torch.Tensor, counts: torch.Tensor) -> FeatureStats:
        n = self.rows
        _mirror_upper(self.gram.view(-1, self.d, self.d))  # accumulated as upper triangles
        cnt = counts.to(ACCUM_DTYPE)
        total = self.sums.sum(1)
        delta = total / n
        mean = self.shift + delta
        class_means = self.sums / cnt.view(1, -1, 1) - delta.unsqueeze(1)
        dd = delta.unsqueeze(-1) * delta.unsqueeze(-2)
        if self.per_class:
            gram_shift = self.gram.sum(1)
            # In place, class by class: G_c -= S_c d^T + d S_c^T - n_c d d^T (no (K, C, D, D) temporaries).
            class_grams = self.gram
            dcol = delta.unsqueeze(-1)
            for c in range(self.c):
                sc = self.sums[:, c].unsqueeze(-1)
                g = class_grams[:, c]
                g.baddbmm_(sc, dcol.transpose(1, 2), alpha=-1.0)
                g.baddbmm_(dcol, sc.transpose(1, 2), alpha=-1.0)
                g.add_(dd, alpha=float(counts[c]))
            cov = class_grams.sum(1)
        else:
            gram_shift = self.gram
            class_grams = None
            cov = self.gram - n * dd
        cov = cov / n
        d2 = (delta * delta).sum(-1)
        row_norm4 = (self.q4 - 4.0 * (delta * self.t3).sum(-1)
                     + 4.0 * torch.einsum("kd,kde,ke->k", delta, gram_shift, delta)
                     + 2.0 * d2 * self.sq - 4.0 * d2 * (delta * total).sum(-1) + n * d2 * d2)
        trace = (self.sq - n * d2) / n
        lam, vec, valid = _finish_eigen(n, self.d, cov, None, None, mean)
        return FeatureStats(n=n, d=self.d, n_classes=self.c, counts=counts, labels=labels, mean=mean,
                            class_means=class_means, eigvals=lam, eigvecs=vec, valid=valid, trace=trace,
                            frob2=(lam * lam).sum(-1), row_norm4=row_norm4, cov=cov, class_grams=class_grams)


def precompute(features: ArrayLike, labels: ArrayLike, *, transrate_eps: float | None = None,
               keep_features: bool = True) -> FeatureStats:
    """Shared statistics of one source's features ``(N, D)`` of a labelled target.

    Centres the features once (float64, rows sorted by class), computes ONE Gram matrix and ONE
    symmetric eigendecomposition (``D x D`` covariance when ``N >= D``, else the ``N x N`` Gram
    matrix), class means and counts. With ``transrate_eps`` the per-class log-determinants that
    TransRate needs are computed in the same pass (the total Gram is the sum of the per-class
    ones). ``keep_features=False`` drops the centred and input features (LogME, H-scores and
    TransRate at the precomputed ``eps`` still work; GBC, kNN, SFDA, PARC and NLEEP need them).
    """
    raw = _raw_tensor(features)
    if raw.shape[0] < 2:
        raise MetricInputError(f"features: expected at least 2 samples, got {raw.shape[0]}")
    y, c, counts = _prep_labels(labels, raw.shape[0], raw.device)
    n, d = raw.shape
    if not keep_features and transrate_eps is None and n >= d and not _float64_copy_fits(n * d):
        return _build_streamed(raw.unsqueeze(0), y, c, counts)   # bounded memory for large inputs
    return _build_inmemory(raw.unsqueeze(0), y, c, counts, transrate_eps=transrate_eps,
                           raw=raw.unsqueeze(0) if keep_features else None, keep_centred=keep_features)


def _build_streamed(f: torch.Tensor, y: torch.Tensor, n_classes: int, counts: torch.Tensor) -> FeatureStats:
    """Statistics of in-memory features (K, N, D), N >= D, that keep no centred copy: the exact
    mean from a first pass, then the streaming moments (:class:`_Accumulator`) about it, both over
    row blocks of ``_CONVERT_CHUNK_ELEMS``, so memory stays O(D^2) beyond the input."""
    k, n, d = f.shape
    rows = max(1, _CONVERT_CHUNK_ELEMS.get(f.device.type, 2**19) // max(1, k * d))
    total = torch.zeros(k, d, dtype=ACCUM_DTYPE, device=f.device)
    for s in range(0, n, rows):
        total += f[:, s:s + rows].to(ACCUM_DTYPE).sum(1)
    if not bool(torch.isfinite(total).all()):   # NaN/Inf anywhere propagate into the sums
        _check_finite(f.reshape(k * n, d), "features")
    acc = _Accumulator(k, d, n_classes, f.device, class_grams=False, shift=total / n)
    for s in range(0, n, rows):
        acc.add(f[:, s:s + rows], y[s:s + rows])
    return acc.finish(y, counts)


def _float64_copy_fits(numel: int) -> bool:
    """Whether a float64 copy of ``numel`` feature entries stays within ``_CHUNK_BYTES``."""
    return numel * 8 <= _CHUNK_BYTES


def _stats(features: ArrayLike | FeatureStats, labels: ArrayLike | None, *, need_centred: bool = False,
           transrate_eps: float | None = None, need_features: bool = True) -> FeatureStats:
    """The statistics given, or computed for one measure call. ``need_features=False`` (LogME,
    H-scores): the centred copy is dropped when it would exceed ``_CHUNK_BYTES`` (kept below
    that, where Ledoit-Wolf's row norms then cost no extra pass)."""
    if isinstance(features, FeatureStats):
        if features.n_sources != 1:
            raise MetricInputError(f"FeatureStats hold {features.n_sources} sources: pick one with .source(i)")
        if labels is not None:
            y, _ = as_labels(labels, device=features.device)
            if y.shape[0] != features.n or not torch.equal(y, features.labels):
                raise MetricInputError("labels differ from the labels the FeatureStats were computed with")
        if need_centred and features.centred is None:
            raise MetricInputError("this measure needs the centred features: precompute(..., keep_features=True)")
        return features
    if labels is None:
        raise MetricInputError("labels are required unless FeatureStats are given")
    raw = _raw_tensor(features)
    keep = need_features or _float64_copy_fits(raw.numel())
    return precompute(raw, labels, transrate_eps=transrate_eps, keep_features=keep)


# =============================================================================================
# batched measures on FeatureStats (every function returns a (K,) tensor)
# =============================================================================================

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

    def at(t: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # F^T F + t I = Q (diag(s + t) + N a a^T) Q^T (+ t on null directions): Sherman-Morrison.
        dd = torch.where(vm > 0, s + t.unsqueeze(-1), torch.ones_like(s + t.unsqueeze(-1)))
        inv = vm / dd
        u = a * inv
        kappa = 1.0 + n * (a * u).sum(-1)
        w = b * inv - n * u * ((u * b).sum(-1) / kappa).unsqueeze(-1)   # Q^T m
        gamma = (s * inv).sum(-1) + t * n * (u * u).sum(-1) / kappa
        m2 = (w * w).sum(-1)
        aw = (a * w).sum(-1)
        res2 = (yy - 2.0 * (b * w).sum(-1) + (s * w * w).sum(-1) + n * aw * aw).clamp_min(0.0)
        logdet = (torch.log(dd) * vm).sum(-1) + torch.log(kappa) + null * torch.log(t)
        return gamma, m2, res2, logdet

    def fixed_point_gap(u: torch.Tensor) -> torch.Tensor:
        """h(u) = log(alpha'/beta') - u with (alpha', beta') one fixed-point update from t = e^u."""
        gamma, m2, res2, _ = at(torch.exp(u))
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
        u = torch.where(done, u, mid)
        done = done | ((hi - lo).abs() <= tol) | (f_mid.abs() <= tol)
    gamma, m2, res2, _ = at(torch.exp(u))
    alpha = gamma / (m2 + eps)
    beta = (n - gamma) / (res2 + eps)
    t = alpha / beta
    gamma, m2, res2, logdet_t = at(t)
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
    if use_pca:
        p = _n_components(st, pca_dim)
        w = st.eigvecs[:, :, :p]
        means = st.proj_class_means[:, :, :p]
    else:
        w = None
        means = st.class_means
    if st.centred is not None:
        y = st.centred if w is None else st.centred @ w
        diff = y - means.index_select(1, st.sorted_labels)
        var = torch.zeros_like(means).index_add_(1, st.sorted_labels, diff * diff) / cnt
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
    block = max(1, _KNN_BLOCK_ELEMS // max(1, k * c * p))
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


# =============================================================================================
# public measures
# =============================================================================================

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
    tol``. The reference code stops after at most 11 plain iterations (or a 1e-3 relative
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


def hscore(features: ArrayLike | FeatureStats, labels: ArrayLike | None = None, *, rtol: float | None = None) -> float:
    """H-score (Bao et al., ICIP 2019): ``tr(pinv(cov f) cov(E[f | y]))``.

    Population (1/N) covariances; ``cov(E[f|y]) = sum_c pi_c (m_c - mu)(m_c - mu)^T``. The
    pseudo-inverse drops eigenvalues below ``rtol * lambda_max`` (default ``max(N, D) * eps64``).
    Unstable unless N >> D: for ``N <= D`` it saturates at ``C - 1``.
    """
    return float(_hscore_batched(_stats(features, labels, need_features=False), rtol)[0])


def hscore_regularized(features: ArrayLike | FeatureStats, labels: ArrayLike | None = None) -> float:
    """Shrinkage-based H-score (Ibrahim et al., "Newer is not always better", 2022).

    ``H_a = tr(S_a^-1 (1 - a) cov(E[f | y]))`` where ``S_a = (1 - a) S + a (tr S / D) I`` is the
    Ledoit-Wolf estimate of the (population) covariance of the centred features and ``a`` its
    Ledoit-Wolf shrinkage (identical to ``sklearn.covariance.LedoitWolf``). With ``a = 0`` this is
    :func:`hscore`.
    """
    return float(_hscore_reg_batched(_stats(features, labels, need_features=False))[0])


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


# ---------------------------------------------------------------------------------------------
# LEEP / NCE
# ---------------------------------------------------------------------------------------------

def _probs(x: ArrayLike, n: int, name: str = "source_probs") -> torch.Tensor:
    """Validated source probabilities (N, Z), in their own floating dtype (no float64 copy: the
    measures convert row chunks as they accumulate)."""
    raw = _raw_tensor(x, name)
    if raw.shape[0] != n:
        raise MetricInputError(f"{name} has {raw.shape[0]} rows but labels has {n}: lengths must match")
    if not raw.is_floating_point():
        raw = raw.to(ACCUM_DTYPE)
    rows = raw.sum(1)  # a check at 1e-3: the input dtype suffices (a float64 sum measured 15x slower)
    if not bool(torch.isfinite(rows.sum())):
        _check_finite(raw, name)
    if float(raw.min()) < 0 or float((rows - 1.0).abs().max()) > 1e-3:
        raise MetricInputError(f"{name}: expected probabilities (non-negative rows summing to 1); "
                               "apply a softmax to logits first")
    return raw




def _leep_batched(theta: torch.Tensor, y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """theta (K, N, Z) probabilities (any float dtype), y (N,) -> (K,) LEEP, accumulated in float64
    over row chunks."""
    k, n, z = theta.shape
    rows = max(1, _CONVERT_CHUNK_ELEMS.get(theta.device.type, 2**19) // max(1, k * z))
    joint = torch.zeros(k, n_classes, z, dtype=ACCUM_DTYPE, device=theta.device)
    for s in range(0, n, rows):
        joint.index_add_(1, y[s:s + rows], theta[:, s:s + rows].to(ACCUM_DTYPE))
    joint /= n                                                  # P(y, z)
    pz = joint.sum(1, keepdim=True)                             # P(z)
    cond = torch.where(pz > 0, joint / pz.clamp_min(1e-300), torch.zeros_like(joint))   # P(y | z)
    total = torch.zeros(k, dtype=ACCUM_DTYPE, device=theta.device)
    cond_t = cond.transpose(1, 2)
    for s in range(0, n, rows):
        yy = y[s:s + rows]
        eep = torch.bmm(theta[:, s:s + rows].to(ACCUM_DTYPE), cond_t)   # (K, rows, C): sum_z P(y|z) theta_z
        total += eep.gather(2, yy.view(1, -1, 1).expand(k, -1, 1)).log().sum((1, 2))
    return total / n


def leep(source_probs: ArrayLike, labels: ArrayLike) -> float:
    """LEEP (Nguyen et al., ICML 2020): ``1/N sum_i log sum_z P(y_i | z) theta(x_i)_z``.

    ``theta(x_i)`` is the source model's predicted distribution over its Z source classes on target
    input i (rows must sum to 1); the empirical joint is ``P(y, z) = 1/N sum_{i: y_i = y} theta_z(x_i)``
    and ``P(y | z) = P(y, z) / P(z)``. Arguments in the paper's order (the LogME repository had
    them swapped, issue #14).
    """
    raw = _raw_tensor(source_probs, "source_probs")
    y, c, _ = _prep_labels(labels, raw.shape[0], raw.device)
    theta = _probs(raw, y.shape[0])
    return float(_leep_batched(theta.unsqueeze(0), y, c)[0])


def _hard_predictions(source_pred: ArrayLike, n: int, device: torch.device) -> torch.Tensor:
    t = source_pred.detach() if isinstance(source_pred, torch.Tensor) else torch.as_tensor(np.asarray(source_pred))
    if t.ndim == 2:
        if t.shape[0] != n:
            raise MetricInputError(f"source_pred has {t.shape[0]} rows but labels has {n}: lengths must match")
        _check_finite(t, "source_pred")
        return t.argmax(1).to(device)
    if t.ndim != 1:
        raise MetricInputError(f"source_pred: expected hard predictions (N,) or probabilities (N, Z), "
                               f"got shape {tuple(t.shape)}")
    z, _ = as_labels(t, "source_pred", device=device)
    if z.shape[0] != n:
        raise MetricInputError(f"source_pred has {z.shape[0]} entries but labels has {n}: lengths must match")
    return z


def _nce_batched(z: torch.Tensor, y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """z (K, N) hard source predictions (any non-negative ints), y (N,) -> (K,) NCE."""
    k, n = z.shape
    zmax = int(z.max()) + 1
    joint = torch.zeros(k, n_classes * zmax, dtype=ACCUM_DTYPE, device=z.device)
    joint.scatter_add_(1, y.unsqueeze(0) * zmax + z, torch.ones(k, n, dtype=ACCUM_DTYPE, device=z.device))
    joint = joint.view(k, n_classes, zmax) / n
    pz = joint.sum(1, keepdim=True)
    ratio = torch.where(joint > 0, joint / pz.clamp_min(1e-300), torch.ones_like(joint))
    return (joint * ratio.log()).sum((-1, -2))


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
    y, c, _ = _prep_labels(labels, len(source_pred), dev)
    z = _hard_predictions(source_pred, y.shape[0], y.device)
    return float(_nce_batched(z.unsqueeze(0), y, c)[0])


# ---------------------------------------------------------------------------------------------
# kNN
# ---------------------------------------------------------------------------------------------

class _TopK:
    """Running top-k neighbours (largest similarity) of K x q queries over reference chunks."""

    def __init__(self, k_src: int, q: int, k: int, dtype: torch.dtype, device: torch.device) -> None:
        self.vals = torch.full((k_src, q, k), -math.inf, dtype=dtype, device=device)
        self.idx = torch.full((k_src, q, k), -1, dtype=torch.long, device=device)
        self.k = k

    def update(self, sims: torch.Tensor, start: int) -> None:
        """Merge a (K, q, b) block of similarities to references ``start .. start+b-1``."""
        kk = min(self.k, sims.shape[-1])
        top = sims.topk(kk, dim=-1)
        vals = torch.cat([self.vals, top.values], -1)
        idx = torch.cat([self.idx, top.indices + start], -1)
        best = vals.topk(self.k, dim=-1)
        self.vals = best.values
        self.idx = idx.gather(-1, best.indices)


def _exclude_self(sims: torch.Tensor, queries: torch.Tensor, start: int) -> None:
    """Set the similarity of each query to itself to -inf within a reference block (in place)."""
    b = sims.shape[-1]
    inside = (queries >= start) & (queries < start + b)
    if bool(inside.any()):
        rows = torch.nonzero(inside).squeeze(1)
        sims[:, rows, queries[rows] - start] = -math.inf


def _knn_prepare(x: torch.Tensor, metric: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Rows in the compute dtype with their norms (cosine: inverse norms; euclidean: squared norms)."""
    x = x.to(dtype)
    sq = torch.linalg.vector_norm(x, dim=-1).square()
    if metric == "cosine":
        return x, sq.sqrt().clamp_min(1e-12).reciprocal(), metric
    return x, sq, metric


def _knn_sims(q: tuple[torch.Tensor, torch.Tensor, str], r: tuple[torch.Tensor, torch.Tensor, str]) -> torch.Tensor:
    """Similarities (K, q, b): cosine, or minus the squared Euclidean distance. The reference rows
    are not normalised: the (q x b) block is scaled instead (less memory traffic)."""
    s = q[0] @ r[0].transpose(-1, -2)
    if q[2] == "cosine":
        return s.mul_(q[1].unsqueeze(-1)).mul_(r[1].unsqueeze(-2))
    return s.mul_(2.0).sub_(q[1].unsqueeze(-1)).sub_(r[1].unsqueeze(-2))


def _knn_vote(nb_labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Majority vote over the k neighbours (ordered nearest first); ties go to the tied class that
    has the nearest neighbour."""
    counts = torch.zeros(*nb_labels.shape[:-1], n_classes, dtype=torch.int32, device=nb_labels.device)
    counts.scatter_add_(-1, nb_labels, torch.ones_like(nb_labels, dtype=torch.int32))
    cand = counts == counts.max(-1, keepdim=True).values
    first = cand.gather(-1, nb_labels).to(torch.int8).argmax(-1, keepdim=True)
    return nb_labels.gather(-1, first).squeeze(-1)


def _check_knn_args(k: int, metric: str, n: int) -> None:
    if metric not in ("cosine", "euclidean"):
        raise MetricInputError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")
    if not 1 <= int(k) <= n - 1:
        raise MetricInputError(f"k must be in [1, N-1] = [1, {n - 1}], got {k}")


def _knn_blocks(ks: int, nq: int, n: int) -> tuple[int, int]:
    bq = max(1, min(nq, math.isqrt(_KNN_BLOCK_ELEMS // ks)))
    br = max(1, min(n, _KNN_BLOCK_ELEMS // (ks * bq)))
    return bq, br


def _knn_neighbors_exact(x: torch.Tensor, queries: torch.Tensor, k: int, metric: str,
                         dtype: torch.dtype) -> torch.Tensor:
    """(K, q, k) indices of the k most similar other rows of every query (nearest first)."""
    ks, n, _ = x.shape
    nq = queries.shape[0]
    bq, br = _knn_blocks(ks, nq, n)
    out = torch.empty(ks, nq, k, dtype=torch.long, device=x.device)
    for q0 in range(0, nq, bq):
        qi = queries[q0:q0 + bq]
        qp = _knn_prepare(x.index_select(1, qi), metric, dtype)
        top = _TopK(ks, qi.shape[0], k, dtype, x.device)
        for r0 in range(0, n, br):
            sims = _knn_sims(qp, _knn_prepare(x[:, r0:r0 + br], metric, dtype))
            _exclude_self(sims, qi, r0)
            top.update(sims, r0)
        out[:, q0:q0 + bq] = top.idx
    return out


def _knn_inmemory(x: torch.Tensor, y: torch.Tensor, n_classes: int, k: int, metric: str,
                  q_idx: torch.Tensor | None) -> torch.Tensor:
    """x (K, N, D) any float dtype -> (K,) leave-one-out accuracy over the queries ``q_idx``."""
    n = x.shape[1]
    dtype = _compute_dtype(x)
    queries = torch.arange(n, device=x.device) if q_idx is None else q_idx
    nb = _knn_neighbors_exact(x, queries, k, metric, dtype)
    pred = _knn_vote(y[nb], n_classes)
    return (pred == y[queries].unsqueeze(0)).to(ACCUM_DTYPE).mean(-1)


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
        raw = _raw_tensor(features)
        if raw.shape[0] < 2:
            raise MetricInputError(f"features: expected at least 2 samples, got {raw.shape[0]}")
        _check_finite(raw, "features")
        y, c, _ = _prep_labels(labels, raw.shape[0], raw.device)
        x = raw.unsqueeze(0)
    n = x.shape[1]
    _check_knn_args(k, metric, n)
    q_idx = _subsample_indices(n, max_queries, seed, x.device)
    return float(_knn_inmemory(x, y, c, int(k), metric, q_idx)[0])


# ---------------------------------------------------------------------------------------------
# NLEEP (Gaussian mixture on PCA features)
# ---------------------------------------------------------------------------------------------

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
    block = max(1, _KNN_BLOCK_ELEMS // max(1, n * p))
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


# ---------------------------------------------------------------------------------------------
# SFDA
# ---------------------------------------------------------------------------------------------

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
        x = _float64_features(_raw_tensor(features))
        y, c, counts = _prep_labels(labels, x.shape[0], x.device)
        x = x - x.mean(0)
    prob, means, lam = _lda_scores(x, y, c, counts, shrinkage)
    prob = torch.softmax(prob, 1)
    outer = (means.sum(0, keepdim=True) - means) / (c - 1)
    py = prob.gather(1, y.unsqueeze(1))
    mixed = py * x + (1.0 - py) * outer[y]
    prob2, _, _ = _lda_scores(mixed, y, c, counts, lam)
    return float(prob2.gather(1, y.unsqueeze(1)).mean())


# ---------------------------------------------------------------------------------------------
# PARC
# ---------------------------------------------------------------------------------------------

def _average_ranks(v: torch.Tensor) -> torch.Tensor:
    """1-based ranks with ties averaged (scipy.stats.rankdata 'average')."""
    order = torch.argsort(v)
    s = v[order]
    _, inverse, counts = torch.unique_consecutive(s, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).to(ACCUM_DTYPE)
    avg = ends - (counts.to(ACCUM_DTYPE) - 1.0) / 2.0
    ranks = torch.empty_like(avg[inverse])
    ranks[order] = avg[inverse]
    return ranks


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = a - a.mean()
    b = b - b.mean()
    return (a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-300)


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
    idx = _subsample_indices(st.n, max_samples, seed, z.device)
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
        rho = _pearson(_average_ranks(rdm_f), _average_ranks(rdm_y))
    else:
        rho = _pearson(rdm_f, rdm_y)
    return float(rho) * 100.0


# ---------------------------------------------------------------------------------------------
# linear probe
# ---------------------------------------------------------------------------------------------

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
        x = _float64_features(_raw_tensor(features))
        y, n_classes, _ = _prep_labels(labels, x.shape[0], x.device)
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


# =============================================================================================
# profiles
# =============================================================================================

def _resolve_measures(measures: Iterable[str] | None, have_probs: bool, knn_possible: bool = True) -> list[str]:
    if measures is None:
        out = [m for m in PROFILE_MEASURES if (have_probs or m not in ("leep", "nce"))
               and (knn_possible or m != "knn_accuracy")]
        return out
    out = list(dict.fromkeys(measures))
    known = set(PROFILE_MEASURES) | set(_OPTIONAL_MEASURES)
    bad = [m for m in out if m not in known]
    if bad:
        raise MetricInputError(f"unknown measures {bad}; known: {sorted(known)}")
    if not have_probs and any(m in ("leep", "nce") for m in out):
        raise MetricInputError("leep and nce need source_probs")
    return out


_STATS_MEASURES = {"logme", "hscore", "hscore_regularized", "transrate", "gbc", "sfda", "parc", "nleep"}


# The measures computed from the shared statistics alone (one eigendecomposition), batched over sources.
_SHARED_STATS_MEASURES = ("logme", "hscore", "hscore_regularized", "transrate", "gbc")


def _shared_stats_measure(name: str, st: FeatureStats, transrate_eps: float, gbc_pca_dim: int | None) -> torch.Tensor:
    """(K,) values of one of :data:`_SHARED_STATS_MEASURES` with the profile's settings."""
    if name == "logme":
        return _logme_batched(st)
    if name == "hscore":
        return _hscore_batched(st)
    if name == "hscore_regularized":
        return _hscore_reg_batched(st)
    if name == "transrate":
        if not float(transrate_eps) > 0:
            raise MetricInputError(f"transrate_eps must be > 0, got {transrate_eps!r}")
        return _transrate_batched(st, float(transrate_eps))
    return _gbc_batched(st, gbc_pca_dim)


def transferability_profile(features: ArrayLike | FeatureStats, labels: ArrayLike | None,
                            source_probs: ArrayLike | None = None, measures: Iterable[str] | None = None, *,
                            knn_k: int = 5, knn_metric: str = "cosine", knn_max_queries: int | None = 512,
                            transrate_eps: float = 1e-4, gbc_pca_dim: int | None = 64,
                            seed: int = 0) -> dict[str, float]:
    """All transferability measures of one source for one labelled target, sharing the work.

    Default ``measures``: logme, hscore, hscore_regularized, transrate, gbc, knn_accuracy, plus
    leep and nce when ``source_probs`` (N, Z) are given (nce on their argmax). Optional: sfda,
    parc, nleep, linear_probe_accuracy. One :func:`precompute` (one centred Gram matrix, one
    eigendecomposition, TransRate's per-class log-determinants in the same pass) feeds LogME,
    the H-scores, TransRate and GBC. kNN classifies ``knn_max_queries`` (512) seeded random
    samples against all N references (None: exact leave-one-out over all samples): an unbiased
    estimate with a standard error of at most 2.2 points, and the same subset for every source of
    a target, so comparisons between sources are paired. Keys are the function names.
    """
    have_probs = source_probs is not None
    todo = _resolve_measures(measures, have_probs)
    out: dict[str, float] = {}
    theta = None
    if any(m in _STATS_MEASURES or m in ("knn_accuracy", "linear_probe_accuracy") for m in todo):
        if isinstance(features, FeatureStats):
            st = _stats(features, labels)
        else:
            st = precompute(features, labels, transrate_eps=transrate_eps if "transrate" in todo else None)
        y_ref = st.labels
    else:
        st = None
        y_ref = labels
    for m in todo:
        if m in _SHARED_STATS_MEASURES:
            out[m] = float(_shared_stats_measure(m, st, transrate_eps, gbc_pca_dim)[0])
        elif m == "knn_accuracy":
            out[m] = knn_accuracy(st, k=knn_k, metric=knn_metric, max_queries=knn_max_queries, seed=seed)
        elif m == "sfda":
            out[m] = sfda(st)
        elif m == "parc":
            out[m] = parc(st, seed=seed)
        elif m == "nleep":
            out[m] = nleep(st, seed=seed)
        elif m == "linear_probe_accuracy":
            out[m] = linear_probe_accuracy(st, seed=seed)
        elif m in ("leep", "nce"):
            if theta is None:
                y_p, c_p, _ = _prep_labels(y_ref, len(source_probs), _raw_tensor(source_probs, "source_probs").device)
                theta = _probs(source_probs, y_p.shape[0])
            if m == "leep":
                out[m] = float(_leep_batched(theta.unsqueeze(0), y_p, c_p)[0])
            else:
                out[m] = float(_nce_batched(theta.argmax(1).unsqueeze(0), y_p, c_p)[0])
    return out


# ---------------------------------------------------------------------------------------------
# many sources
# ---------------------------------------------------------------------------------------------

class _Sources:
    """K sources' features of the same N target rows, served in row chunks (K, b, D)."""

    def __init__(self, features: Any) -> None:
        self.tensor: torch.Tensor | None = None
        self.arrays: list[torch.Tensor] | None = None
        self.factory: Callable[[], Iterable[Any]] | None = None
        self.oneshot: Iterator[Any] | None = None
        self._first: torch.Tensor | None = None
        if isinstance(features, (torch.Tensor, np.ndarray)):
            t = features.detach() if isinstance(features, torch.Tensor) else torch.as_tensor(features)
            if t.ndim != 3:
                raise MetricInputError(f"features: expected (K, N, D), got shape {tuple(t.shape)}")
            self.tensor = t
            self.k, self.n, self.d = t.shape
            self.device, self.dtype = t.device, t.dtype
            return
        if callable(features):
            self.factory = features
            first = next(iter(features()), None)
            self._init_from_chunk(first)
            self.n = None
            return
        if isinstance(features, Sequence) and len(features) > 0:
            first = features[0]
            ft = first.detach() if isinstance(first, torch.Tensor) else torch.as_tensor(np.asarray(first))
            if ft.ndim == 2:
                arrays = [ft] + [a.detach() if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a))
                                 for a in features[1:]]
                if any(a.ndim != 2 or a.shape != arrays[0].shape for a in arrays):
                    raise MetricInputError("features: a list of sources must hold (N, D) arrays of one shape; got "
                                           f"{[tuple(a.shape) for a in arrays]}")
                dev = next((a.device for a in arrays if a.device.type != "cpu"), arrays[0].device)
                self.arrays = [a.to(dev) for a in arrays]
                self.k = len(arrays)
                self.n, self.d = arrays[0].shape
                self.device = dev
                self.dtype = arrays[0].dtype
                return
            self.factory = lambda: iter(features)
            self._init_from_chunk(ft)
            self.n = None
            return
        if isinstance(features, Iterable):
            it = iter(features)
            first = next(it, None)
            self._init_from_chunk(first)
            self._first = self._as3(first)
            self.oneshot = it
            self.n = None
            return
        raise MetricInputError(f"features: unsupported type {type(features).__name__}")

    @staticmethod
    def _as3(chunk: Any) -> torch.Tensor:
        t = chunk.detach() if isinstance(chunk, torch.Tensor) else torch.as_tensor(np.asarray(chunk))
        if t.ndim != 3:
            raise MetricInputError(f"features: expected chunks of shape (K, rows, D), got {tuple(t.shape)}")
        return t

    def _init_from_chunk(self, first: Any) -> None:
        if first is None:
            raise MetricInputError("features: the chunk stream is empty")
        t = self._as3(first)
        self.k, _, self.d = t.shape
        self.device, self.dtype = t.device, t.dtype

    @property
    def reiterable(self) -> bool:
        return self.oneshot is None

    @property
    def in_memory(self) -> bool:
        return self.tensor is not None or self.arrays is not None

    def chunks(self, rows: int) -> Iterator[tuple[int, torch.Tensor]]:
        if self.tensor is not None:
            for s in range(0, self.n, rows):
                yield s, self.tensor[:, s:s + rows]
            return
        if self.arrays is not None:
            for s in range(0, self.n, rows):
                yield s, torch.stack([a[s:s + rows] for a in self.arrays])
            return
        if self.factory is not None:
            src: Iterable[Any] = self.factory()
        else:
            if self._first is None:
                raise MetricInputError("features: a one-shot chunk iterator can be read only once")
            first, self._first = self._first, None
            src = _chain_first(first, self.oneshot)
        start = 0
        for ch in src:
            t = self._as3(ch).to(self.device)
            if t.shape[0] != self.k or t.shape[2] != self.d:
                raise MetricInputError(f"features: chunk shape {tuple(t.shape)} does not match (K={self.k}, rows, "
                                       f"D={self.d})")
            yield start, t
            start += t.shape[1]

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        if self.tensor is not None:
            return self.tensor.index_select(1, idx.to(self.tensor.device))
        assert self.arrays is not None
        return torch.stack([a.index_select(0, idx.to(a.device)) for a in self.arrays])

    def full(self) -> torch.Tensor:
        if self.tensor is not None:
            return self.tensor
        assert self.arrays is not None
        return torch.stack(self.arrays)


def _chain_first(first: torch.Tensor, rest: Iterator[Any] | None) -> Iterator[Any]:
    yield first
    if rest is not None:
        yield from rest


def _probs_batch(source_probs: Any, k: int, n: int, device: torch.device) -> torch.Tensor | list[torch.Tensor]:
    """Validated probabilities: one (K, N, Z) tensor or a list of K (N, Z_k) tensors."""
    if isinstance(source_probs, (torch.Tensor, np.ndarray)) and np.ndim(source_probs) == 3:
        t = source_probs.detach() if isinstance(source_probs, torch.Tensor) else torch.as_tensor(source_probs)
        if t.shape[0] != k:
            raise MetricInputError(f"source_probs has {t.shape[0]} sources, features have {k}")
        t = t.to(device)
        if t.shape[1] != n:
            raise MetricInputError(f"source_probs has {t.shape[1]} rows but labels has {n}: lengths must match")
        return _probs(t.reshape(k * n, -1), k * n).view(k, n, -1)
    if isinstance(source_probs, Sequence) and len(source_probs) == k:
        return [_probs(_raw_tensor(p, "source_probs").to(device), n) for p in source_probs]
    raise MetricInputError(f"source_probs: expected (K, N, Z) or a list of K (N, Z_k) arrays for K={k} sources")


def profile_many(features: Any, labels: ArrayLike, source_probs: Any = None,
                 measures: Iterable[str] | None = None, *, knn_k: int = 5, knn_metric: str = "cosine",
                 knn_max_queries: int | None = 512, transrate_eps: float = 1e-4, gbc_pca_dim: int | None = 64,
                 seed: int = 0, chunk_rows: int | None = None, max_memory_bytes: int = 2**30,
                 as_columns: bool = False) -> list[dict[str, float]] | dict[str, list[float]]:
    """Score K sources against one labelled target at once: one profile per source.

    ``features``: a ``(K, N, D)`` tensor/array; a list of K ``(N, D)`` arrays; a list (or a
    zero-argument callable returning an iterable) of ``(K, rows, D)`` row chunks in target order;
    or a one-shot iterator of such chunks (kNN is then left out: it needs a second pass).
    ``labels`` (N,) are the target labels; ``source_probs`` ``(K, N, Z)`` or a list of K ``(N, Z_k)``.

    Everything is batched over the sources: batched Gram matrices (``bmm``), one batched
    ``torch.linalg.eigh`` on the ``(K, D, D)`` covariances (on CPU one LAPACK call per source,
    which measured faster), the LogME fixed point of all sources and classes at once, batched kNN
    on one shared query subset. When two float64 copies of the features fit in
    ``max_memory_bytes`` they are centred in memory (the code path of :func:`precompute`);
    otherwise moments are streamed
    over row chunks of ``chunk_rows`` rows (default: 256 MiB of float64 per chunk, 1 GiB on CUDA) with a mean
    pre-pass when the input can be read twice, keeping ``O(K D^2)`` memory (``O(K C D^2)`` when
    TransRate or GBC need per-class Gram matrices) for any N. Returns a list of K dicts (or, with
    ``as_columns``, a dict of measure -> list of K values) equal to
    :func:`transferability_profile` per source with the same settings.
    """
    src = _Sources(features)
    have_probs = source_probs is not None
    todo = _resolve_measures(measures, have_probs, knn_possible=src.reiterable)
    extra = [m for m in todo if m in _OPTIONAL_MEASURES]
    if extra:
        raise MetricInputError(f"profile_many does not batch {extra}; call them per source")
    if "knn_accuracy" in todo and not src.reiterable:
        raise MetricInputError("knn_accuracy needs two passes over the rows: pass a list of chunks or a callable "
                               "returning a fresh iterator instead of a one-shot iterator")
    y_in = labels
    ydev = src.device
    y, n_classes, counts = _prep_labels(y_in, len(labels) if src.n is None else src.n, ydev)
    n = y.shape[0]
    if src.n is not None and src.n != n:
        raise MetricInputError(f"features have {src.n} samples but labels has {n}: lengths must match")
    k, d = src.k, src.d
    need_stats = any(m in _SHARED_STATS_MEASURES for m in todo)
    need_knn = "knn_accuracy" in todo
    if need_knn:
        _check_knn_args(knn_k, knn_metric, n)
    results: dict[str, torch.Tensor] = {}
    if chunk_rows is None:
        # Larger chunks on GPUs keep the per-class Gram products (inner dimension ~ rows / C) efficient.
        budget = _CHUNK_BYTES * (4 if ydev.type == "cuda" else 1)
        chunk_rows = max(1, budget // max(1, k * d * 8))
    q_idx = _subsample_indices(n, knn_max_queries, seed, ydev) if need_knn else None

    st: FeatureStats | None = None
    inmem = src.in_memory and k * n * d * 8 * 2 <= max_memory_bytes
    if inmem:
        full = src.full()
        if not need_stats:
            _check_finite(full, "features")
        if need_stats:
            st = _build_inmemory(full, y, n_classes, counts,
                                 transrate_eps=transrate_eps if "transrate" in todo else None,
                                 raw=None, keep_centred="gbc" in todo or "hscore_regularized" in todo)
        if need_knn:
            results["knn_accuracy"] = _knn_inmemory(full, y, n_classes, int(knn_k), knn_metric, q_idx)
    else:
        per_class = "transrate" in todo or "gbc" in todo
        cdtype = torch.float64 if src.dtype == torch.float64 else torch.float32
        queries = torch.arange(n, device=ydev) if q_idx is None else q_idx
        shift = None
        qrows = None
        if need_knn and src.in_memory:
            qrows = src.rows(queries)
        # Pre-pass when the rows can be read twice: the exact mean (so the moments are accumulated
        # about it) and, for chunk streams, the query rows of the kNN search.
        pre_mean = src.reiterable and need_stats
        pre_rows = need_knn and qrows is None
        if pre_mean or pre_rows:
            total = torch.zeros(k, d, dtype=ACCUM_DTYPE, device=ydev)
            if pre_rows:
                qrows = torch.empty(k, queries.shape[0], d, dtype=src.dtype, device=ydev)
            for s, ch in src.chunks(chunk_rows):
                if pre_mean:
                    total += ch.to(ACCUM_DTYPE).sum(1)
                if pre_rows:
                    sel = (queries >= s) & (queries < s + ch.shape[1])
                    if bool(sel.any()):
                        qrows[:, sel] = ch.index_select(1, queries[sel] - s).to(qrows.dtype)
            if pre_mean:
                shift = total / n
        acc = _Accumulator(k, d, n_classes, ydev, class_grams=per_class, shift=shift) if need_stats else None
        qp = top = None
        if need_knn:
            qp = _knn_prepare(qrows, knn_metric, cdtype)
            top = _TopK(k, queries.shape[0], int(knn_k), cdtype, ydev)
        seen = 0
        for s, ch in src.chunks(chunk_rows):
            b = ch.shape[1]
            if s + b > n:
                raise MetricInputError(f"features stream has more rows than labels ({n})")
            if acc is not None:
                acc.add(ch, y[s:s + b])
            if top is not None:
                sims = _knn_sims(qp, _knn_prepare(ch, knn_metric, cdtype))
                _exclude_self(sims, queries, s)
                top.update(sims, s)
            seen = s + b
        if seen != n:
            raise MetricInputError(f"features stream has {seen} rows but labels has {n}")
        if acc is not None:
            st = acc.finish(y, counts)
            if "transrate" in todo:
                st.class_logdets(transrate_eps)
        if top is not None:
            pred = _knn_vote(y[top.idx], n_classes)
            results["knn_accuracy"] = (pred == y[queries].unsqueeze(0)).to(ACCUM_DTYPE).mean(-1)

    if st is not None:
        for m in todo:
            if m in _SHARED_STATS_MEASURES:
                results[m] = _shared_stats_measure(m, st, transrate_eps, gbc_pca_dim)
    if have_probs and any(m in ("leep", "nce") for m in todo):
        probs = _probs_batch(source_probs, k, n, ydev)
        if isinstance(probs, torch.Tensor):
            if "leep" in todo:
                results["leep"] = _leep_batched(probs, y, n_classes)
            if "nce" in todo:
                results["nce"] = _nce_batched(probs.argmax(-1), y, n_classes)
        else:
            if "leep" in todo:
                results["leep"] = torch.cat([_leep_batched(p.unsqueeze(0), y, n_classes) for p in probs])
            if "nce" in todo:
                results["nce"] = torch.cat([_nce_batched(p.argmax(-1).unsqueeze(0), y, n_classes) for p in probs])
    cols = {m: [float(v) for v in results[m].cpu().tolist()] for m in todo if m in results}
    if as_columns:
        return cols
    return [{m: cols[m][i] for m in cols} for i in range(k)]


# Torch autograd is not needed anywhere except the linear probe (which enables it locally).
for _name in ("logme", "hscore", "hscore_regularized", "transrate", "gbc", "leep", "nce", "knn_accuracy", "nleep",
              "sfda", "parc", "precompute", "transferability_profile", "profile_many"):
    globals()[_name] = torch.no_grad()(globals()[_name])
del _name
