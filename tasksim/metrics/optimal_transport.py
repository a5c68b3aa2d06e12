"""Optimal transport dataset distance (Alvarez-Melis & Fusi, NeurIPS 2020): a debiased
Sinkhorn divergence over (feature, label) pairs whose label-to-label cost is the Bures distance
between class-conditional Gaussians. Split into its parts: class Gaussians and label cost
(init), the log-domain c-transform iterations (iterate), and the debiasing terms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from tasksim.errors import MetricInputError
from tasksim.metrics._kernels import subsample_indices
from tasksim.metrics._validate import (
    ACCUM_DTYPE,
    ArrayLike,
    as_labels,
    check_same_width,
    features_on,
    target_device,
)

__all__ = ["otdd"]


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
    dt, dev = c_st.dtype, c_st.device
    la = torch.full((ns,), -math.log(ns), dtype=dt, device=dev)
    lb = torch.full((nt,), -math.log(nt), dtype=dt, device=dev)
    c_max = float(torch.stack([c_st.max(), c_ss.max(), c_tt.max()]).max())
    tol = max(tol, 8.0 * torch.finfo(dt).eps * c_max / eps)
    schedule = _eps_schedule(c_max, eps, scaling)
    transforms = (_CTransform(c_st, la, lb, schedule[0], mode), _CTransform(c_ss, la, la, schedule[0], mode),
                  _CTransform(c_tt, lb, lb, schedule[0], mode))
    state = _anneal(transforms, la, lb, schedule)
    state.omega = float(relaxation)
    wa = torch.full((ns,), 1.0 / ns, dtype=ACCUM_DTYPE, device=dev)
    wb = torch.full((nt,), 1.0 / nt, dtype=ACCUM_DTYPE, device=dev)
    _iterate(state, transforms, wa, wb, eps=eps, tol=tol, max_iter=max_iter, check_every=check_every)
    # debias: dual values at (T(g), g) and (p, T(p)): valid lower bounds, tight at convergence.
    d_st = (wa * state.f_new.to(ACCUM_DTYPE)).sum() + (wb * state.g.to(ACCUM_DTYPE)).sum()
    d_ss = (wa * (state.p + state.p_new).to(ACCUM_DTYPE)).sum()
    d_tt = (wb * (state.q + state.q_new).to(ACCUM_DTYPE)).sum()
    value = d_st - 0.5 * (d_ss + d_tt)
    return {"value": float(value), "ot_st": float(d_st), "ot_ss": float(d_ss), "ot_tt": float(d_tt),
            "iterations": state.iters, "stages": len(schedule), "marginal_error": max(state.errors.values()),
            "tol": tol, "converged": all(state.done.values()), "epsilon": eps, "relaxation": state.omega,
            "kernel_rebuilds": sum(tr.rebuilds for tr in transforms)}


def _eps_schedule(c_max: float, eps: float, scaling: float) -> list[float]:
    """Geometric schedule ``c_max -> eps`` with ratio at most ``1/scaling`` per stage (eps-scaling)."""
    n_stages = max(0, math.ceil(math.log(max(c_max, eps) / eps) / math.log(1.0 / scaling) - 1e-9))
    return [eps * (max(c_max, eps) / eps) ** ((n_stages - k) / n_stages) for k in range(n_stages)] + [eps]


@dataclass
class _SinkhornState:
    """Log-domain potentials of the cross (f, g) and symmetric (p, q) problems, and progress."""

    f: torch.Tensor
    g: torch.Tensor
    p: torch.Tensor
    q: torch.Tensor
    f_new: torch.Tensor | None = None
    p_new: torch.Tensor | None = None
    q_new: torch.Tensor | None = None
    omega: float = 1.0
    done: dict[str, bool] = field(default_factory=lambda: {"st": False, "ss": False, "tt": False})
    errors: dict[str, float] = field(default_factory=lambda: dict.fromkeys(("st", "ss", "tt"), float("inf")))
    iters: dict[str, int] = field(default_factory=lambda: {"st": 0, "ss": 0, "tt": 0})


def _anneal(transforms: tuple[_CTransform, _CTransform, _CTransform], la: torch.Tensor, lb: torch.Tensor,
            schedule: list[float]) -> _SinkhornState:
    """Init: warm potentials by eps-scaling down to the last stage of ``schedule``."""
    t_st, t_ss, t_tt = transforms
    c_st, c_ss, c_tt = t_st.cost, t_ss.cost, t_tt.cost
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
        for tr in transforms:
            tr.set_eps(e)
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
    return _SinkhornState(f=f, g=g, p=p, q=q)


def _cross_step(s: _SinkhornState, t_st: _CTransform, wa: torch.Tensor, wb: torch.Tensor, *, eps: float,
                tol: float, check: bool, w_it: float) -> None:
    """One over-relaxed Sinkhorn step of the cross problem (marginal error checked when ``check``)."""
    g_new = t_st.cols(s.f)
    e_col = _marginal_error(s.g.to(ACCUM_DTYPE), g_new.to(ACCUM_DTYPE), wb, eps) if check else None
    s.g = g_new if w_it == 1.0 else torch.lerp(s.g, g_new, w_it)
    s.f_new = t_st.rows(s.g)
    if check:
        e_new = float(torch.maximum(e_col, _marginal_error(s.f.to(ACCUM_DTYPE), s.f_new.to(ACCUM_DTYPE), wa, eps)))
        if e_new > 2.0 * s.errors["st"] and s.omega != 1.0:
            s.omega = 1.0  # safeguard: over-relaxation diverging, plain Sinkhorn from here
        s.errors["st"] = e_new
        s.done["st"] = e_new < tol
    if not s.done["st"]:
        s.f = s.f_new if w_it == 1.0 else torch.lerp(s.f, s.f_new, w_it)


def _symmetric_step(s: _SinkhornState, key: str, tr: _CTransform, w: torch.Tensor, *, eps: float, tol: float,
                    check: bool) -> None:
    """One averaged step ``p <- (p + T(p)) / 2`` of a symmetric problem (``key``: ss or tt)."""
    cur = s.p if key == "ss" else s.q
    new = tr.rows(cur)
    if check:
        s.errors[key] = float(_marginal_error(cur.to(ACCUM_DTYPE), new.to(ACCUM_DTYPE), w, eps))
        s.done[key] = s.errors[key] < tol
    nxt = cur if s.done[key] else 0.5 * (cur + new)
    if key == "ss":
        s.p_new, s.p = new, nxt
    else:
        s.q_new, s.q = new, nxt


def _iterate(s: _SinkhornState, transforms: tuple[_CTransform, _CTransform, _CTransform], wa: torch.Tensor,
             wb: torch.Tensor, *, eps: float, tol: float, max_iter: int, check_every: int) -> None:
    """Iterate at the final eps until every problem's marginal error is below ``tol`` (or ``max_iter``)."""
    t_st, t_ss, t_tt = transforms
    it = 0
    while it < max_iter and not all(s.done.values()):
        it += 1
        check = it % check_every == 0 or it == max_iter
        if not s.done["st"]:
            s.iters["st"] = it
            _cross_step(s, t_st, wa, wb, eps=eps, tol=tol, check=check,
                        w_it=1.0 if it <= check_every else s.omega)
        for key, tr, w in (("ss", t_ss, wa), ("tt", t_tt, wb)):
            if not s.done[key]:
                s.iters[key] = it
                _symmetric_step(s, key, tr, w, eps=eps, tol=tol, check=check)


def _mean_self_cost(x: torch.Tensor, y: torch.Tensor, label_cost: torch.Tensor) -> float:
    """Mean of ``C_ij = ||x_i - x_j||^2 + W[y_i, y_j]`` over all (i, j), in O(n d):
    ``2 (mean ||x||^2 - ||mean x||^2) + p' W p`` with ``p`` the label frequencies."""
    feat = 2.0 * (x.square().sum(1).mean() - x.mean(0).square().sum())
    freq = torch.bincount(y, minlength=label_cost.shape[0]).to(label_cost.dtype) / y.shape[0]
    return float(feat + freq @ label_cost @ freq)


def _otdd_details(xs: ArrayLike, ys: ArrayLike, xt: ArrayLike, yt: ArrayLike, *,
                  epsilon: float | None = None, reg: float = 0.1, max_samples: int | None = 5000,
                  seed: int = 0, max_iter: int = 1000, tol: float = 1e-3, check_every: int = 5,
                  scaling: float = 0.05, relaxation: float = 1.5,
                  sinkhorn_dtype: torch.dtype = torch.float32, sinkhorn_mode: str = "absorb") -> dict:
    dev = target_device(xs, xt, ys, yt)
    x1 = features_on(xs, "xs", dev)
    x2 = features_on(xt, "xt", dev)
    check_same_width(x1, x2, ("xs", "xt"))
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
    i1 = subsample_indices(x1.shape[0], max_samples, seed, sort=False)
    i2 = subsample_indices(x2.shape[0], max_samples, seed, sort=False)
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
