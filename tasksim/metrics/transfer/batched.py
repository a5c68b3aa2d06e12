"""Whole transferability profiles: one source (:func:`transferability_profile`) or K sources
against one target with batched linear algebra and row-chunked (streaming) accumulation
(:func:`profile_many`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tasksim.errors import MetricInputError
from tasksim.metrics import catalog
from tasksim.metrics._kernels import (
    TopK,
    check_knn_args,
    exclude_self,
    knn_prepare,
    knn_sims,
    knn_vote,
    subsample_indices,
)
from tasksim.metrics._validate import (
    ACCUM_DTYPE,
    ArrayLike,
    check_finite,
    prep_labels,
    raw_tensor,
)
from tasksim.metrics.transfer.evidence import (
    _gbc_batched,
    _hscore_batched,
    _hscore_reg_batched,
    _logme_batched,
    _transrate_batched,
)
from tasksim.metrics.transfer.extra import linear_probe_accuracy, nleep, parc, sfda
from tasksim.metrics.transfer.knn import _knn_inmemory, knn_accuracy
from tasksim.metrics.transfer.lda import LDA_MAX_ROWS, _stratified_rows, lda_probe_batched
from tasksim.metrics.transfer.probs import _leep_batched, _nce_batched, _probs
from tasksim.metrics.transfer.ridge import ridge_loo_batched
from tasksim.metrics.transfer.stats import _CHUNK_BYTES, FeatureStats, _Accumulator, _build_inmemory, _stats, precompute

__all__ = [
    "PROFILE_MEASURES",
    "profile_many",
    "transferability_profile",
]


# Measures that transferability_profile / profile_many compute by default (leep and nce only when
# source probabilities are given). Keys of the returned dicts are the function names.
PROFILE_MEASURES = catalog.PROFILE_MEASURES
_OPTIONAL_MEASURES = catalog.OPTIONAL_TRANSFER_MEASURES
_STATS_MEASURES = catalog.STATS_MEASURES
_SHARED_STATS_MEASURES = catalog.SHARED_STATS_MEASURES
_PROBS = catalog.PROBABILITY_MEASURES
_RIDGE = "ridge_probe_accuracy"
_LDA = "lda_probe_accuracy"
# measures that read the rows a second time after the statistics pass (not from a one-shot stream)
_TWO_PASS = ("knn_accuracy", _RIDGE, _LDA)


def _resolve_measures(measures: Iterable[str] | None, have_probs: bool, knn_possible: bool = True) -> list[str]:
    if measures is None:
        return [m for m in PROFILE_MEASURES if (have_probs or m not in _PROBS)
                and (knn_possible or m not in _TWO_PASS)]
    out = list(dict.fromkeys(measures))
    known = set(PROFILE_MEASURES) | set(_OPTIONAL_MEASURES)
    bad = [m for m in out if m not in known]
    if bad:
        raise MetricInputError(f"unknown measures {bad}; known: {sorted(known)}")
    if not have_probs and any(m in _PROBS for m in out):
        raise MetricInputError(f"{' and '.join(sorted(_PROBS))} need source_probs")
    return out


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


@torch.no_grad()
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
    if any(m in _STATS_MEASURES or m in ("knn_accuracy", "linear_probe_accuracy", _RIDGE, _LDA) for m in todo):
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
        elif m == _RIDGE:
            out[m] = float(ridge_loo_batched(st)[0][0])
        elif m == _LDA:
            if st.features is None:
                raise MetricInputError("the LDA probe needs the input features: precompute(..., keep_features=True)")
            out[m] = float(lda_probe_batched(st.features, st.labels, st.n_classes, seed=seed)[0])
        elif m in _PROBS:
            if theta is None:
                y_p, c_p, _ = prep_labels(y_ref, len(source_probs), raw_tensor(source_probs, "source_probs").device)
                theta = _probs(source_probs, y_p.shape[0])
            if m == "leep":
                out[m] = float(_leep_batched(theta.unsqueeze(0), y_p, c_p)[0])
            else:
                out[m] = float(_nce_batched(theta.argmax(1).unsqueeze(0), y_p, c_p)[0])
    return out


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
        return [_probs(raw_tensor(p, "source_probs").to(device), n) for p in source_probs]
    raise MetricInputError(f"source_probs: expected (K, N, Z) or a list of K (N, Z_k) arrays for K={k} sources")


@torch.no_grad()
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
    for m in _TWO_PASS:
        if m in todo and not src.reiterable:
            raise MetricInputError(f"{m} needs two passes over the rows: pass a list of chunks or a "
                                   "callable returning a fresh iterator instead of a one-shot iterator")
    ydev = src.device
    y, n_classes, counts = prep_labels(labels, len(labels) if src.n is None else src.n, ydev)
    n = y.shape[0]
    if src.n is not None and src.n != n:
        raise MetricInputError(f"features have {src.n} samples but labels has {n}: lengths must match")
    k, d = src.k, src.d
    plan = _Plan(todo=todo, need_stats=any(m in _SHARED_STATS_MEASURES or m == _RIDGE for m in todo),
                 need_knn="knn_accuracy" in todo, knn_k=int(knn_k), knn_metric=knn_metric,
                 transrate_eps=transrate_eps)
    if plan.need_knn:
        check_knn_args(knn_k, knn_metric, n)
    if chunk_rows is None:
        # Larger chunks on GPUs keep the per-class Gram products (inner dimension ~ rows / C) efficient.
        budget = _CHUNK_BYTES * (4 if ydev.type == "cuda" else 1)
        chunk_rows = max(1, budget // max(1, k * d * 8))
    q_idx = subsample_indices(n, knn_max_queries, seed, ydev) if plan.need_knn else None

    results: dict[str, torch.Tensor] = {}
    if src.in_memory and k * n * d * 8 * 2 <= max_memory_bytes:
        st = _inmemory_pass(src, y, n_classes, counts, q_idx, plan, results)
    else:
        st = _streamed_pass(src, y, n_classes, counts, q_idx, plan, chunk_rows, results)
    if st is not None:
        for m in todo:
            if m in _SHARED_STATS_MEASURES:
                results[m] = _shared_stats_measure(m, st, transrate_eps, gbc_pca_dim)
        if _RIDGE in todo:
            results[_RIDGE] = ridge_loo_batched(st, None if st.centred is not None else (
                (ch.to(ACCUM_DTYPE) - st.mean.unsqueeze(1), y[s:s + ch.shape[1]]) for s, ch in src.chunks(chunk_rows)))[0]
    if _LDA in todo:
        rows = _stratified_rows(y, LDA_MAX_ROWS, seed)
        if src.in_memory:
            x = src.full() if rows is None else src.rows(rows)
        else:  # one more pass over the chunks gathers the (sub)sample's rows
            x = _prepass(src, torch.arange(n, device=ydev) if rows is None else rows, chunk_rows, pre_mean=False,
                         pre_rows=True, n=n)[1]
        results[_LDA] = lda_probe_batched(x, y if rows is None else y[rows], n_classes, seed=seed, max_rows=None)
    if have_probs and any(m in _PROBS for m in todo):
        results.update(_probability_measures(source_probs, todo, y, n_classes, k))
    cols = {m: [float(v) for v in results[m].cpu().tolist()] for m in todo if m in results}
    if as_columns:
        return cols
    return [{m: cols[m][i] for m in cols} for i in range(k)]


@dataclass(frozen=True)
class _Plan:
    """What one profile_many call computes."""

    todo: list[str]
    need_stats: bool
    need_knn: bool
    knn_k: int
    knn_metric: str
    transrate_eps: float


def _inmemory_pass(src: _Sources, y: torch.Tensor, n_classes: int, counts: torch.Tensor, q_idx: torch.Tensor | None,
                   plan: _Plan, results: dict[str, torch.Tensor]) -> FeatureStats | None:
    """Statistics (and kNN) from the whole (K, N, D) tensor: the code path of :func:`precompute`."""
    full = src.full()
    st = None
    if plan.need_stats:
        st = _build_inmemory(full, y, n_classes, counts,
                             transrate_eps=plan.transrate_eps if "transrate" in plan.todo else None,
                             raw=None, keep_centred=bool({"gbc", "hscore_regularized", _RIDGE} & set(plan.todo)))
    else:
        check_finite(full, "features")
    if plan.need_knn:
        results["knn_accuracy"] = _knn_inmemory(full, y, n_classes, plan.knn_k, plan.knn_metric, q_idx)
    return st


def _prepass(src: _Sources, queries: torch.Tensor, chunk_rows: int, *, pre_mean: bool, pre_rows: bool,
             n: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """One pass over the row chunks: the exact mean (so the moments are accumulated about it) and,
    for chunk streams, the query rows of the kNN search."""
    k, d, dev = src.k, src.d, src.device
    total = torch.zeros(k, d, dtype=ACCUM_DTYPE, device=dev) if pre_mean else None
    qrows = torch.empty(k, queries.shape[0], d, dtype=src.dtype, device=dev) if pre_rows else None
    for s, ch in src.chunks(chunk_rows):
        if total is not None:
            total += ch.to(ACCUM_DTYPE).sum(1)
        if qrows is not None:
            sel = (queries >= s) & (queries < s + ch.shape[1])
            if bool(sel.any()):
                qrows[:, sel] = ch.index_select(1, queries[sel] - s).to(qrows.dtype)
    return (None if total is None else total / n), qrows


def _streamed_pass(src: _Sources, y: torch.Tensor, n_classes: int, counts: torch.Tensor,
                   q_idx: torch.Tensor | None, plan: _Plan, chunk_rows: int,
                   results: dict[str, torch.Tensor]) -> FeatureStats | None:
    """Moments (and kNN) accumulated over row chunks: ``O(K D^2)`` memory for any N."""
    n, k, d, ydev = y.shape[0], src.k, src.d, src.device
    per_class = "transrate" in plan.todo or "gbc" in plan.todo
    cdtype = torch.float64 if src.dtype == torch.float64 else torch.float32
    queries = torch.arange(n, device=ydev) if q_idx is None else q_idx
    qrows = src.rows(queries) if plan.need_knn and src.in_memory else None
    shift = None
    pre_mean = src.reiterable and plan.need_stats
    pre_rows = plan.need_knn and qrows is None
    if pre_mean or pre_rows:
        shift, pre_q = _prepass(src, queries, chunk_rows, pre_mean=pre_mean, pre_rows=pre_rows, n=n)
        qrows = pre_q if pre_rows else qrows
    acc = _Accumulator(k, d, n_classes, ydev, class_grams=per_class, shift=shift) if plan.need_stats else None
    qp = top = None
    if plan.need_knn:
        qp = knn_prepare(qrows, plan.knn_metric, cdtype)
        top = TopK(k, queries.shape[0], plan.knn_k, cdtype, ydev)
    seen = 0
    for s, ch in src.chunks(chunk_rows):
        b = ch.shape[1]
        if s + b > n:
            raise MetricInputError(f"features stream has more rows than labels ({n})")
        if acc is not None:
            acc.add(ch, y[s:s + b])
        if top is not None:
            sims = knn_sims(qp, knn_prepare(ch, plan.knn_metric, cdtype))
            exclude_self(sims, queries, s)
            top.update(sims, s)
        seen = s + b
    if seen != n:
        raise MetricInputError(f"features stream has {seen} rows but labels has {n}")
    st = None
    if acc is not None:
        st = acc.finish(y, counts)
        if "transrate" in plan.todo:
            st.class_logdets(plan.transrate_eps)
    if top is not None:
        pred = knn_vote(y[top.idx], n_classes)
        results["knn_accuracy"] = (pred == y[queries].unsqueeze(0)).to(ACCUM_DTYPE).mean(-1)
    return st


def _probability_measures(source_probs: Any, todo: list[str], y: torch.Tensor, n_classes: int,
                          k: int) -> dict[str, torch.Tensor]:
    """(K,) LEEP and NCE of K sources' class probabilities."""
    probs = _probs_batch(source_probs, k, y.shape[0], y.device)
    out: dict[str, torch.Tensor] = {}
    if isinstance(probs, torch.Tensor):
        if "leep" in todo:
            out["leep"] = _leep_batched(probs, y, n_classes)
        if "nce" in todo:
            out["nce"] = _nce_batched(probs.argmax(-1), y, n_classes)
        return out
    if "leep" in todo:
        out["leep"] = torch.cat([_leep_batched(p.unsqueeze(0), y, n_classes) for p in probs])
    if "nce" in todo:
        out["nce"] = torch.cat([_nce_batched(p.argmax(-1).unsqueeze(0), y, n_classes) for p in probs])
    return out
