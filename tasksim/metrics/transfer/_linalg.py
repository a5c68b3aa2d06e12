"""Linear algebra shared by the transferability measures: one BLAS ``syrk`` Gram, a blocked
Cholesky log-determinant, and the primal/dual choice for per-class Grams (CPU specifics measured on
a 2-core Xeon, see docs/benchmarks.md; on CUDA each is one batched call).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.linalg.blas import dsyrk as _dsyrk

from tasksim.errors import MetricInputError

__all__: list[str] = []


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
