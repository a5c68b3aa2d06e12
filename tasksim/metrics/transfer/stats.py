"""Shared second-order statistics of a labelled target in K sources' feature spaces.

LogME, H-score, regularised H-score, TransRate and GBC all depend on the same statistics.
:func:`precompute` returns a :class:`FeatureStats` holding the globally centred features, ONE
eigendecomposition of their covariance (of the ``D x D`` covariance when ``N >= D``; of the
``N x N`` Gram matrix when ``N < D``), class means and counts; every one of those measures accepts
either raw ``(features, labels)`` or a ``FeatureStats``. Built in memory (:func:`_build_inmemory`)
or streamed over row chunks (:class:`_Accumulator`).
"""

from __future__ import annotations

import torch

from tasksim.errors import MetricInputError
from tasksim.metrics._kernels import fix_signs
from tasksim.metrics._validate import (
    ACCUM_DTYPE,
    ArrayLike,
    as_labels,
    check_finite,
    prep_labels,
    raw_tensor,
)
from tasksim.metrics.transfer._linalg import (
    _cholesky_reads_upper,
    _gram,
    _logdet_identity_plus,
    _mirror_upper,
    _use_dual_gram,
)

__all__ = [
    "FeatureStats",
    "precompute",
]

_EPS64 = float(torch.finfo(torch.float64).eps)
# float64 bytes of one row chunk in the streaming accumulation.
_CHUNK_BYTES = 2**28
# Elements of a block converted to float64 at a time (LEEP's probabilities, TransRate's class-sorted
# rows): 4 MiB on CPU (cache-sized, reused by the allocator), 1 GiB on CUDA (few launches).
_CONVERT_CHUNK_ELEMS = {"cpu": 2**19, "cuda": 2**27}


class FeatureStats:
    """Sufficient statistics of K sources' features of one labelled target, shared by the measures.

    Build it with :func:`precompute` (one source) or internally by :func:`profile_many` (K
    sources, leading dimension K on every tensor). Attributes (float64, on the input device):

    - ``n``, ``d``, ``n_classes``; ``counts`` (C,) samples per class; ``labels`` (N,) in input order
    - ``mean`` (K, D); ``class_means`` (K, C, D) class means minus the global mean (None in the
      resampled statistics built without D-dimensional eigenvectors)
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
    - ``row_weights`` (N,) float64 multiplicities of the rows (a bootstrap resample kept as its
      distinct rows, :mod:`tasksim.metrics.transfer.resample`): every statistic is that of the rows
      repeated; ``n`` and ``counts`` count the repeats. None: each row once
    - ``row_coords`` (K, N, k) the centred rows in the eigenbasis (``centred @ eigvecs``), when they
      were computed without ``D``-dimensional eigenvectors (then ``eigvecs`` is None and
      ``proj_mean`` / ``proj_class_means`` are given); it may hold fewer than k columns (at
      least the directions of positive eigenvalue: the leading ones GBC reads)
    """

    def __init__(self, *, n: int, d: int, n_classes: int, counts: torch.Tensor, labels: torch.Tensor,
                 mean: torch.Tensor, class_means: torch.Tensor | None, eigvals: torch.Tensor,
                 eigvecs: torch.Tensor | None,
                 valid: torch.Tensor, trace: torch.Tensor, frob2: torch.Tensor, row_norm4: torch.Tensor | None,
                 cov: torch.Tensor | None = None, centred: torch.Tensor | None = None,
                 sorted_labels: torch.Tensor | None = None, order: torch.Tensor | None = None,
                 features: torch.Tensor | None = None, class_grams: torch.Tensor | None = None,
                 class_logdets: dict[float, torch.Tensor] | None = None, proj_mean: torch.Tensor | None = None,
                 proj_class_means: torch.Tensor | None = None, row_coords: torch.Tensor | None = None,
                 row_weights: torch.Tensor | None = None) -> None:
        self.n, self.d, self.n_classes = int(n), int(d), int(n_classes)
        self.counts, self.labels = counts, labels
        self.mean, self.class_means = mean, class_means
        self.eigvals = torch.where(valid, eigvals.clamp_min(0.0), torch.zeros_like(eigvals))
        self.eigvecs, self.valid = eigvecs, valid
        vm = valid.to(eigvals.dtype)
        if eigvecs is None:
            if proj_mean is None or proj_class_means is None:
                raise MetricInputError("FeatureStats without eigenvectors need proj_mean and proj_class_means")
            self.proj_mean = proj_mean * vm
            self.proj_class_means = proj_class_means * vm.unsqueeze(1)
        else:
            self.proj_mean = torch.einsum("kdr,kd->kr", eigvecs, mean) * vm
            self.proj_class_means = torch.bmm(class_means, eigvecs) * vm.unsqueeze(1)
        self.row_coords, self.row_weights = row_coords, row_weights
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
            q = torch.linalg.vector_norm(self.centred, dim=-1).square().square()
            self._row_norm4 = (q if self.row_weights is None else q * self.row_weights).sum(-1)
        return self._row_norm4

    @property
    def cov(self) -> torch.Tensor:
        """(K, D, D) covariance ``Z^T Z / N`` (rebuilt from the eigendecomposition when not kept)."""
        if self._cov is None:
            if self.eigvecs is None:
                raise MetricInputError("these FeatureStats keep no eigenvectors: the covariance cannot be rebuilt")
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
            class_logdets={e: v[i:i + 1] for e, v in self._logdets.items()},
            proj_mean=self.proj_mean[i:i + 1], proj_class_means=self.proj_class_means[i:i + 1],
            row_coords=pick(self.row_coords), row_weights=self.row_weights)

    # ------------------------------------------------------------------ per-class log-determinants
    def class_logdets(self, eps: float) -> torch.Tensor:
        """(K, C) ``log det(I + Z_c^T Z_c / (n_c eps))`` for every class (cached per ``eps``)."""
        eps = float(eps)
        if eps in self._logdets:
            return self._logdets[eps]
        if self.row_weights is not None:
            raise MetricInputError("per-class log-determinants (TransRate) are not computed on weighted rows")
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
        return lam.clamp_min(0.0), fix_signs(vec), valid
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
    return lam, fix_signs(vec), valid


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
        check_finite(z.reshape(k * n, d), "features")
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
        cov, logdets[float(transrate_eps)] = _primal_cov_and_logdets(z, counts_l, starts, dual_cls, primal_cls,
                                                                     transrate_eps)
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


def _primal_cov_and_logdets(z: torch.Tensor, counts_l: list[int], starts: dict[int, tuple[int, int]],
                            dual_cls: list[int], primal_cls: list[int], transrate_eps: float
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(K, D, D) uncentred Gram sum of the centred rows ``z`` (class-contiguous, dual classes first)
    and the (K, C) TransRate log-determinants ``log det(I + Z_c^T Z_c / (n_c eps))`` of every class."""
    k, _, d = z.shape
    n_classes = len(counts_l)
    ld = torch.empty(k, n_classes, dtype=z.dtype, device=z.device)
    cov = torch.zeros(k, d, d, dtype=z.dtype, device=z.device)
    n_dual_rows = sum(counts_l[c] for c in dual_cls)
    if n_dual_rows:
        cov += _gram(z[:, :n_dual_rows])
        for c in dual_cls:
            s, e = starts[c]
            ld[:, c] = _logdet_identity_plus(_gram(z[:, s:e], dual=True) / (counts_l[c] * transrate_eps))
    # Per-class Grams are summed into the covariance, then their log-determinants taken. On
    # CUDA classes go in batches (bounded memory) so the Cholesky work is batched too; on CPU
    # one class at a time through one reused buffer (batching gains nothing there, and a fresh
    # multi-class buffer paid its page faults on every call). Where the Cholesky reads the
    # upper triangle only, so do the sums (mirrored once).
    upper = _cholesky_reads_upper(z.device, d)
    group = 1 if z.device.type == "cpu" else max(1, _CHUNK_BYTES // max(1, k * d * d * 8))
    buf = torch.empty(min(group, max(1, len(primal_cls))), k, d, d, dtype=z.dtype, device=z.device)
    for g0 in range(0, len(primal_cls), group):
        cls = primal_cls[g0:g0 + group]
        mats = buf[:len(cls)]
        for j, c in enumerate(cls):
            s, e = starts[c]
            scale = counts_l[c] * transrate_eps
            _gram(z[:, s:e], out=mats[j], alpha=1.0 / scale, upper_only=upper)
            cov.add_(mats[j], alpha=scale)
        ld[:, cls] = _logdet_identity_plus(mats, overwrite=True).T
    if upper:
        _mirror_upper(cov)
    return cov, ld


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


@torch.no_grad()
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
    raw = raw_tensor(features)
    if raw.shape[0] < 2:
        raise MetricInputError(f"features: expected at least 2 samples, got {raw.shape[0]}")
    y, c, counts = prep_labels(labels, raw.shape[0], raw.device)
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
        check_finite(f.reshape(k * n, d), "features")
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
    raw = raw_tensor(features)
    keep = need_features or _float64_copy_fits(raw.numel())
    return precompute(raw, labels, transrate_eps=transrate_eps, keep_features=keep)
