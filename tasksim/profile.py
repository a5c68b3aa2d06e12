"""Similarity profiles of the target window against every source in the portfolio.

A profile is a composite, never one scalar. Per source, with ``tasksim.metrics``:

- distribution alignment in the shared feature space (the deployed encoder's): MMD^2, Frechet
  distance, domain-classifier AUC, OTDD when both sides carry labels (in the target's top principal
  components), and
  coverage (share of target samples with a close source neighbour);
- label semantics and class balance: exact (and, with a text encoder, semantic) overlap of the
  class names, the granularity ratio, the Jensen-Shannon divergence of the label marginals;
- source data quality: estimated label-noise rate, duplicate rate, missing values;
- transferability of the target's labels through the *source's* view of the target: the source's
  own encoder when it ships one, else a head fitted on the source's data (``tasksim.heads``),
  whose hidden layer and class probabilities feed LogME, H-score, GBC, TransRate, LEEP, NCE, kNN.
  All sources' views are scored in one batched ``metrics.profile_many`` call;
- representation shift across layers: when a source ships its own model with tapped layers
  (``encoder.layers``), MMD^2 between the source's data and the target window at every tapped layer
  and the output (``layer_mmd2:<layer>``): where along the network the shift lives, which decides
  the blocks to fine-tune (``tasksim.recommend``);
- a no-transfer baseline: the same measures on the target's own features; ``logme_gain`` and
  ``knn_gain`` compare each source against it, and ``negative_transfer`` flags a source predicted
  to do worse than no transfer on both.

Modality match (``modality_match``: 1 when the source's declared or inferred modality equals the
production data's) is recorded when both are known.

Each source is isolated: an unreadable file, a schema mismatch or a failing measure marks that
source failed with a one-line reason and the others go on.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow as pa
import torch

from tasksim import mcda, metrics
from tasksim.cache import EmbeddingCache
from tasksim.config import Config, InputColumns, SourceConfig
from tasksim.embed import Encoder, build_encoder
from tasksim.errors import DataError, SourceError, TasksimError
from tasksim.heads import SourceHead, load_or_fit_head
from tasksim.metrics import catalog, quality
from tasksim.metrics._kernels import pca_basis, subsample_indices
from tasksim.metrics._validate import check_pooled_range, feature_range
from tasksim.model_encoders import check_head_file
from tasksim.sample import dataset_fingerprint, load_source, table_fingerprint

__all__ = [
    "BOOTSTRAP_BATCH_BYTES",
    "CARRIED_MEASURES",
    "DISTANCE_SAMPLE_ROWS",
    "MEASURE_MIN_ROWS",
    "MMD_BLOCK_MAX_ROWS",
    "SOURCE_MEMO",
    "TRANSFER_MEASURES",
    "CarriedValues",
    "SourceArrays",
    "SourceMemo",
    "SourceProfile",
    "SourceView",
    "Target",
    "add_transfer_gains",
    "bootstrap_profiles",
    "mmd_self_block",
    "profile_arrays",
    "profile_sources",
    "profiles_to_dict",
    "score_views",
    "shared_space_measures",
    "source_only_measures",
    "target_basis",
    "transfer_rows",
]

log = logging.getLogger(__name__)

# The confidence bootstrap scores the views in batches of at most this many bytes of float64 copies
# (each source's rows and, with fewer rows than dimensions, its Gram matrix): 1000 sources of a
# 1000-row window in 384 dimensions would otherwise hold ~6 GB at once.
BOOTSTRAP_BATCH_BYTES = 2**30
# MMD, OTDD and coverage are quadratic in rows; a seeded subsample keeps a cycle's cost bounded.
DISTANCE_SAMPLE_ROWS = 2000
# OTDD runs in the target's leading principal components (see target_basis).
OTDD_COMPONENTS = 32
# Rows per side for the per-layer MMD^2 of a source's own model (layers can be wide) and for the
# domain classifier (5-fold logistic regression: ~0.4 s per source at 1000 + 1000 rows, D = 384).
LAYER_SAMPLE_ROWS = 1000
DOMAIN_AUC_ROWS = 1000
# A warm process keeps each source's MMD self block (its sorted pairwise squared distances, 8 bytes a
# pair: 1 MB at 500 rows, 4 MB at this many) so that a window costs MMD^2 only its cross block.
MMD_BLOCK_MAX_ROWS = 1024
# Fewest target-window rows each target-dependent measure needs (from the catalogue). A window with
# fewer rows leaves that measure out ("not computable for this window") instead of failing the source.
MEASURE_MIN_ROWS = {**{m: catalog.measure(m).min_target_rows
                       for m in ("mmd2", "frechet", "coverage", "domain_classifier_auc")},
                    "transferability": max(catalog.measure(m).min_target_rows for m in catalog.TRANSFER_MEASURES)}
# Measures computed on each source's view of the target (and on the no-transfer baseline).
TRANSFER_MEASURES = catalog.TRANSFER_MEASURES
# The no-transfer baseline's measures (the target's own features, no source in between).
BASELINE_MEASURES = ("logme", "knn_accuracy")
# Window-dependent shared-space measures a source may carry over from an earlier cycle when the
# composite does not weigh them (``ranking.unweighted_every``): the costliest per-source work after
# the weighted measures (the domain classifier's 5-fold fits, OTDD's Sinkhorn). The classifier's AUC
# and separability are one computation: both are carried or neither.
CARRIED_MEASURES = ("frechet", "coverage", "domain_classifier_auc", "domain_separability", "otdd")


@dataclass(frozen=True)
class CarriedValues:
    """A source's ``CARRIED_MEASURES`` values from an earlier cycle, offered to this one: used only
    if the source's rows are still the ones they were measured on (``data_fingerprint``)."""

    values: Mapping[str, float]
    origin: Mapping[str, Mapping[str, Any]]  # measure -> {"cycle": id, "window_start": iso}
    data_fingerprint: str


@dataclass(frozen=True)
class Target:
    """The current production window as the profile stage sees it."""

    table: pa.Table
    features: torch.Tensor  # (N, D) in the shared encoder's space
    # None when the window has no label column; an entry is None for a row not labelled yet
    # (production labels arrive late): label-aware measures use the labelled rows only.
    labels: list[str | None] | None

    def known_labels(self) -> tuple[torch.Tensor | None, list[str] | None]:
        """(row indices, labels) of the labelled rows; indices None when every row is labelled,
        labels None when none is."""
        return transfer_rows(self.labels, min_count=1)


@dataclass(frozen=True)
class SourceView:
    """The target as one source's model represents it (kept in memory for the bootstrap)."""

    features: torch.Tensor  # (N, D_view)
    probs: torch.Tensor | None  # (N, C_source) or None without a head


@dataclass(frozen=True)
class SourceProfile:
    source: str
    status: str  # ok | failed | excluded
    measures: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0
    view: SourceView | None = field(default=None, repr=False, compare=False)
    # Confidence bootstrap over the target rows: per round, the re-scored transferability measures
    # (``bootstrap_profiles``); the ranking turns them into top-1 probabilities and reliabilities.
    bootstrap: tuple[dict[str, float], ...] = field(default=(), repr=False, compare=False)
    # measure -> {"cycle": id, "window_start": iso} of a CARRIED_MEASURES value from an earlier cycle
    carried: dict[str, dict[str, Any]] = field(default_factory=dict)
    data_fingerprint: str | None = None


@dataclass(frozen=True)
class SourceArrays:
    """One source as the profile math sees it: arrays only, nothing left to load or embed."""

    features: torch.Tensor | None  # (N_s, D) its own rows in the shared space; None: a model-only source
    labels: list[str] | None = None  # the source's labels, one per row of ``features``
    view: SourceView | None = None  # the target through the source's model or fitted head
    missing_rate: float | None = None  # share of missing input values in the source's table
    extra: dict[str, float] = field(default_factory=dict)  # measured by the caller (modality, layer shifts)
    seconds: float = 0.0  # time the caller spent loading it
    # the window-independent measures of ``features`` (:func:`source_only_measures`), when the caller
    # already has them (a warm process keeps them across cycles: ``SourceMemo``); None: computed here
    known: Mapping[str, float] | None = None
    # CARRIED_MEASURES values from an earlier window (not measured again now) and where each came from
    carried: Mapping[str, float] = field(default_factory=dict)
    carried_from: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    data_fingerprint: str | None = None  # content hash of the source's sampled rows (None: model only)
    # its MMD^2 self block (``metrics.mmd2_self_block`` of its seeded distance subsample), when kept
    mmd_block: metrics.MMDSelfBlock | None = None


def _labels(table: pa.Table, column: str | None) -> list[str] | None:
    if not column or column not in table.column_names:
        return None
    return [str(v) for v in table.column(column).to_pylist()]


def _labelled(labels: list[str] | None, min_classes: int = 2) -> bool:
    if not labels:
        return False
    counts: dict[str, int] = {}
    for v in labels:
        counts[v] = counts.get(v, 0) + 1
    return sum(1 for c in counts.values() if c >= 2) >= min_classes


def _subsample(n: int, k: int, seed: int) -> torch.Tensor | None:
    return subsample_indices(n, k, seed, sort=False)


def _take(x: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
    return x if idx is None else x[idx.to(x.device)]


def _take_list(values: list[str], idx: torch.Tensor | None) -> list[str]:
    return values if idx is None else [values[i] for i in idx.tolist()]


def score_views(views: dict[str, SourceView], labels: list[str], measures: tuple[str, ...] = TRANSFER_MEASURES,
                *, seed: int = 0) -> dict[str, dict[str, float] | Exception]:
    """Transferability of ``labels`` through every source's view, batched where shapes allow.

    Views of equal width are scored together with ``metrics.profile_many`` (one batched
    eigendecomposition); if a batch fails, its sources are scored one by one so that one bad
    view only fails its own source.
    """
    out: dict[str, dict[str, float] | Exception] = {}
    groups: dict[tuple[int, bool], list[str]] = {}
    for name, view in views.items():
        groups.setdefault((view.features.shape[1], view.probs is not None), []).append(name)
    for (_, has_probs), names in groups.items():
        wanted = tuple(m for m in measures if has_probs or m not in catalog.PROBABILITY_MEASURES)
        feats = [views[n].features for n in names]
        probs: list[torch.Tensor] | torch.Tensor | None = [views[n].probs for n in names] if has_probs else None
        if isinstance(probs, list) and len({(p.shape, p.dtype, p.device) for p in probs}) == 1:
            probs = torch.stack(probs)  # equal class counts: LEEP / NCE of all sources in one batch
        try:
            results = metrics.profile_many(feats, labels, source_probs=probs, measures=wanted, seed=seed)
            out.update(zip(names, results))
            continue
        except Exception as exc:  # isolate: retry each source alone below
            log.debug("batched profile failed (%s); scoring sources one by one", exc)
        for n in names:
            try:
                out[n] = metrics.transferability_profile(
                    views[n].features, labels, source_probs=views[n].probs, measures=wanted, seed=seed)
            except Exception as exc:  # isolation: a failing view fails its own source only
                out[n] = exc
    return out


@dataclass
class _SourceState:
    """What a source is before any window is seen: read, embedded, labelled and measured once."""

    table: pa.Table | None  # kept only for a source with its own model (it encodes the rows again)
    fingerprint: str  # content hash of the sampled table (the embedding and head caches' key)
    shared: torch.Tensor  # (N, D) in the shared space, on the profile's device
    labels: list[str] | None
    missing_rate: float | None
    known: dict[str, float]  # source_only_measures of ``shared``
    head: SourceHead | None = None  # the head fitted on its data, once asked for
    mmd_block: metrics.MMDSelfBlock | None = None  # mmd_self_block(shared, seed) when small enough

    @property
    def nbytes(self) -> int:
        size = self.shared.element_size() * self.shared.nelement() + 64 * len(self.labels or ())
        if self.table is not None:
            size += self.table.nbytes
        if self.head is not None:
            size += sum(t.element_size() * t.nelement() for t in self.head.weights.values())
        if self.mmd_block is not None:
            size += self.mmd_block.nbytes
        return size


def _memo_bytes() -> int:
    try:
        return int(float(os.environ.get("TASKSIM_SOURCE_MEMO_MB", "2048")) * 2**20)
    except ValueError:
        log.warning("TASKSIM_SOURCE_MEMO_MB=%r is not a number; using 2048", os.environ["TASKSIM_SOURCE_MEMO_MB"])
        return 2048 * 2**20


class SourceMemo:
    """Every source's window-independent work, kept by a warm process across cycles.

    A source's sampled rows, their shared-space features, labels, missing rate, the measures that
    depend on the source alone (:func:`source_only_measures`) and its fitted head do not change
    from one window to the next; a long-lived process (``tasksim.open(...).run()``, the daemon's
    warm worker) computes them in the first cycle that sees the source and reuses them after.
    An entry is keyed by the source's configuration, its files' paths, sizes and modification
    times (``dataset_fingerprint``: nothing is read to check it), the sampling settings, the
    shared encoder's fingerprint and the device, so an edited file or a changed setting is a miss.
    Least recently used entries go beyond ``max_bytes`` (``$TASKSIM_SOURCE_MEMO_MB``, default
    2048 MiB; an entry counts its features, labels, kept table and MMD^2 self block, 1 MB for 500
    rows; the head fitted later, ~D x 128 floats, is not counted); over budget, the least recently
    used entries' MMD self blocks go first (a speed-up only), whole entries after. Thread-safe.
    """

    def __init__(self, max_bytes: int | None = None) -> None:
        self.max_bytes = _memo_bytes() if max_bytes is None else int(max_bytes)
        self._entries: OrderedDict[str, tuple[_SourceState, int]] = OrderedDict()  # state, its size at insertion
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> _SourceState | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[0]

    def put(self, key: str, state: _SourceState) -> None:
        with self._lock:
            old = self._entries.pop(key, None)
            self._bytes -= old[1] if old is not None else 0
            size = state.nbytes
            self._entries[key] = (state, size)
            self._bytes += size
            if self._bytes > self.max_bytes:
                self._drop_blocks()
            while self._bytes > self.max_bytes and self._entries:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._bytes -= dropped

    def _drop_blocks(self) -> None:
        """Over budget: drop MMD self blocks, least recently used first, before any whole entry. A
        block only saves time (MMD^2 without it takes its full path, to the same value), so a
        portfolio whose rows fit but not with their blocks never has an entry evicted (which, in
        a cycle's sweep over the sources in order, would make every lookup a miss)."""
        for key, (state, size) in self._entries.items():
            if self._bytes <= self.max_bytes:
                return
            if state.mmd_block is not None:
                freed = state.mmd_block.nbytes  # counted at insertion (a head fitted since is not)
                state.mmd_block = None
                self._entries[key] = (state, size - freed)  # an existing key: its place in the order stays
                self._bytes -= freed

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0
            self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)


#: The process's memo (one per process: every cycle of a warm process shares it).
SOURCE_MEMO = SourceMemo()


def source_only_measures(source_x: torch.Tensor, source_labels: list[str] | None, *, seed: int = 0
                         ) -> dict[str, float]:
    """The profile measures that depend on the source alone (not on the window): the duplicate
    rate of its features and, with labels, its estimated label-noise rate (on the seeded
    ``DISTANCE_SAMPLE_ROWS`` subsample that :func:`shared_space_measures` uses) with its binomial
    standard error."""
    out = {"duplicate_rate": quality.duplicate_rate(source_x)}
    if source_labels is not None and _labelled(source_labels):
        s_idx = _subsample(source_x.shape[0], DISTANCE_SAMPLE_ROWS, seed)
        xs = _take(source_x, s_idx)
        out["label_noise_rate"] = rate = quality.label_noise_rate(xs, _take_list(source_labels, s_idx), seed=seed)
        # binomial standard error over the rows it was estimated on
        rows = max(1, min(xs.shape[0], quality.LABEL_NOISE_MAX_SAMPLES))
        out["label_noise_rate_se"] = math.sqrt(rate * (1.0 - rate) / rows)
    return {k: float(v) for k, v in out.items()}


def mmd_self_block(source_x: torch.Tensor, *, seed: int = 0) -> metrics.MMDSelfBlock | None:
    """The MMD^2 self block of the source's seeded ``DISTANCE_SAMPLE_ROWS`` subsample (the rows
    :func:`shared_space_measures` compares), or None above ``MMD_BLOCK_MAX_ROWS`` rows (or below 2)."""
    xs = _take(source_x, _subsample(source_x.shape[0], DISTANCE_SAMPLE_ROWS, seed))
    if not 2 <= xs.shape[0] <= MMD_BLOCK_MAX_ROWS:
        return None
    return metrics.mmd2_self_block(xs)


class _Profiler:
    def __init__(self, config: Config, target: Target, encoder: Encoder, cache: EmbeddingCache,
                 device: torch.device) -> None:
        self.config = config
        self.target = target
        self.encoder = encoder
        self.cache = cache
        self.device = device
        self.seed = config.sampling.seed
        self.heads_dir = config.state_dir / "heads"
        self._label_embeddings: dict[str, torch.Tensor] = {}
        self._own_encoders: dict[str, Encoder] = {}
        self.carry: Mapping[str, CarriedValues] = {}

    def own_encoder(self, source: SourceConfig, table: pa.Table | None) -> Encoder:
        """The source's own model (``source.encoder``), fitted on the source's data (a model-only
        source: on the production window), once per cycle."""
        if source.name not in self._own_encoders:
            assert source.encoder is not None
            index = next((i for i, s in enumerate(self.config.sources) if s.name == source.name), None)
            own = build_encoder(source.encoder, device=self.device, source=source.name,
                                field="encoder" if index is None else f"sources[{index}].encoder")
            if table is None:
                own.fit(self.target.table, self.config.production)
            else:
                own.fit(table, source)  # a tabular encoder standardises with the source's own statistics
            self._own_encoders[source.name] = own
        return self._own_encoders[source.name]

    def layer_shifts(self, source: SourceConfig, table: pa.Table) -> dict[str, float]:
        """``layer_mmd2:<layer>``: MMD^2 between the source's data and the target window at every
        tapped layer of the source's own model (``encoder.layers``, input to output) and at its
        output: where along the network the shift lives (surgical fine-tuning, Lee et al. 2023)."""
        own = self.own_encoder(source, table)
        src = own.encode_layers(table, source)
        tgt = own.encode_layers(self.target.table, self.config.production)
        names = [*source.encoder.layers, "output"]  # type: ignore[union-attr]
        s_idx = _subsample(next(iter(src.values())).shape[0], LAYER_SAMPLE_ROWS, self.seed)
        t_idx = _subsample(next(iter(tgt.values())).shape[0], LAYER_SAMPLE_ROWS, self.seed + 1)
        return {f"layer_mmd2:{n}": metrics.mmd2(_take(src[n].to(self.device), s_idx),
                                                _take(tgt[n].to(self.device), t_idx)) for n in names}

    def encode_source(self, source: SourceConfig, table: pa.Table, fingerprint: str | None = None) -> torch.Tensor:
        try:
            return self.cache.get_or_compute(
                data_fingerprint=fingerprint or table_fingerprint(table), encoder_fingerprint=self.encoder.fingerprint,
                layer="output", compute=lambda: self.encoder.encode(table, source))
        except TasksimError as exc:
            raise SourceError(source.name, f"cannot embed its data with the shared encoder: {exc}") from exc

    def embed_label_names(self, names: list[str]) -> torch.Tensor:
        """Label names through the shared text encoder (label semantics); memoised per name."""
        missing = [n for n in names if n not in self._label_embeddings]
        if missing:
            column = InputColumns(text_column="label_name")
            vectors = self.encoder.encode(pa.table({"label_name": missing}), column)
            self._label_embeddings.update(zip(missing, vectors))
        return torch.stack([self._label_embeddings[n] for n in names])

    def source_view(self, source: SourceConfig, table: pa.Table | None, shared: torch.Tensor,
                    labels: list[str] | None, *, state: _SourceState | None = None) -> SourceView:
        """The source's encoder (or a head fitted on its data) applied to the target; its probabilities
        come from its shipped head, else from the fitted head (kept in ``state`` when given)."""
        t = self.target
        fingerprint = state.fingerprint if state is not None else table_fingerprint(table)
        if source.encoder is not None:
            own = self.own_encoder(source, table)
            target_view = own.encode(t.table, self.config.production).to(self.device)
            source_view = self.cache.get_or_compute(
                data_fingerprint=fingerprint, encoder_fingerprint=own.fingerprint, layer="output",
                compute=lambda: own.encode(table, source)).to(self.device)
        else:
            target_view = t.features.to(self.device)
            source_view = shared
        if source.head is not None:
            return SourceView(target_view, self.shipped_head_probs(source, target_view))
        if not labels:
            return SourceView(target_view, None)
        head = state.head if state is not None else None
        if head is None:
            head = load_or_fit_head(self.heads_dir, self._head_key(source, fingerprint), source_view, labels,
                                    seed=self.seed)
            if state is not None:
                state.head = head
        if source.encoder is not None:
            # the source's own encoder is its representation; the head only supplies probabilities
            return SourceView(target_view, head.probs(target_view))
        return SourceView(head.hidden(target_view), head.probs(target_view))

    def head_key(self, source: SourceConfig, table: pa.Table) -> str:
        """The cache key of the head fitted on ``source``'s data (shared by ``tasksim.experiment``)."""
        return self._head_key(source, table_fingerprint(table))

    def _head_key(self, source: SourceConfig, fingerprint: str) -> str:
        return f"{source.name}|{fingerprint}|{self.encoder.fingerprint}|{source.encoder}"

    def memo_key(self, source: SourceConfig) -> str | None:
        """The key of ``source`` in ``SOURCE_MEMO``; None when its files cannot be listed (the load
        itself then says why)."""
        try:
            files = dataset_fingerprint(str(source.path))
        except Exception:  # an unlistable source is not memoised: load_source says why, in one line
            return None
        return "|".join((source.model_dump_json(), files, self.config.sampling.model_dump_json(),
                         self.encoder.fingerprint, str(self.device)))

    def source_state(self, source: SourceConfig) -> _SourceState:
        """The source's window-independent state: from ``SOURCE_MEMO`` in a warm process, else read,
        embedded and measured now (and memoised)."""
        key = self.memo_key(source)
        state = SOURCE_MEMO.get(key) if key is not None else None
        if state is not None:
            return state
        table = load_source(source, self.config.sampling)
        fingerprint = table_fingerprint(table)
        shared = self.encode_source(source, table, fingerprint).to(self.device)
        labels = source.named_labels(_labels(table, source.label_column))
        state = _SourceState(table=table if source.encoder is not None else None, fingerprint=fingerprint,
                             shared=shared, labels=labels,
                             missing_rate=quality.missing_rate(table, source.input_columns()),
                             known=source_only_measures(shared, labels, seed=self.seed),
                             mmd_block=mmd_self_block(shared, seed=self.seed))
        if key is not None:
            SOURCE_MEMO.put(key, state)
        return state

    def shipped_head_probs(self, source: SourceConfig, features: torch.Tensor) -> torch.Tensor:
        """Class probabilities from the source's own linear head (safetensors ``weight`` C x D, ``bias`` C)."""
        from safetensors.torch import load_file

        try:
            _, width = check_head_file(source.head)
        except DataError as exc:
            raise SourceError(source.name, str(exc)) from exc
        if width != features.shape[1]:
            model = "the source's model (its encoder)" if source.encoder is not None else "the shared encoder"
            raise SourceError(source.name, f"{source.head}: the head's 'weight' takes {width} features per row but "
                              f"{model} gives {features.shape[1]}; expected a 'weight' of shape "
                              f"(classes, {features.shape[1]})")
        tensors = load_file(str(source.head))
        weight, bias = tensors["weight"], tensors.get("bias")
        weight = weight.to(features.device, torch.float32)
        bias = torch.zeros(weight.shape[0]) if bias is None else bias
        return torch.softmax(features.float() @ weight.T + bias.to(features.device, torch.float32), dim=1)

    def modality_match(self, source: SourceConfig) -> dict[str, float]:
        """``modality_match`` (1 when the source's modality is the production data's) when both are known."""
        tgt = self.config.production.inferred_modality(self.config.encoder)
        src = source.inferred_modality(source.encoder or self.config.encoder)
        return {} if tgt is None or src is None else {"modality_match": float(src == tgt)}

    def load(self, source: SourceConfig) -> SourceArrays | SourceProfile:
        """The source's arrays (data in the shared space, labels, its view of the target), or its
        failed / excluded profile: loading and embedding are isolated per source."""
        started = time.perf_counter()
        if source.access in self.config.ranking.excluded_access:
            return SourceProfile(source.name, "excluded", error=f"access is {source.access!r}")
        if source.model_only:
            return self.load_model_only(source, started)
        try:
            state = self.source_state(source)
            shared, table, src_labels = state.shared, state.table, state.labels
            tgt = self.target.features
            if shared.shape[1] != tgt.shape[1]:
                raise SourceError(source.name, f"features have {shared.shape[1]} dimensions, the target's have "
                                  f"{tgt.shape[1]}: source and production must use the same input columns")
            extra = self.modality_match(source)
            if source.encoder is not None and source.encoder.layers:
                extra.update(self.layer_shifts(source, table))
            view = None
            if _labelled(self.target.known_labels()[1]) and (src_labels is not None or source.encoder is not None):
                view = self.source_view(source, table, shared, src_labels, state=state)
        except Exception as exc:  # isolation: one broken source must not stop the cycle (worded by _failed)
            return _failed(source.name, exc, time.perf_counter() - started)
        offered = self.carry.get(source.name)
        carried = offered if offered is not None and offered.data_fingerprint == state.fingerprint else None
        return SourceArrays(shared, src_labels, view, state.missing_rate, extra,
                            seconds=time.perf_counter() - started, known=state.known,
                            carried=dict(carried.values) if carried else {},
                            carried_from=dict(carried.origin) if carried else {},
                            data_fingerprint=state.fingerprint, mmd_block=state.mmd_block)

    def load_model_only(self, source: SourceConfig, started: float) -> SourceArrays | SourceProfile:
        """A checkpoint without a dataset: only its model's view of the target (and the practical
        criteria) can be measured; data-side criteria are missing and scored as such."""
        try:
            extra = self.modality_match(source)
            view = None
            if _labelled(self.target.known_labels()[1]):
                own = self.own_encoder(source, None)
                target_view = own.encode(self.target.table, self.config.production).to(self.device)
                probs = self.shipped_head_probs(source, target_view) if source.head is not None else None
                view = SourceView(target_view, probs)
        except Exception as exc:  # isolation: one broken source must not stop the cycle (worded by _failed)
            return _failed(source.name, exc, time.perf_counter() - started)
        return SourceArrays(None, None, view, None, extra, seconds=time.perf_counter() - started)


def _failed(source: str, exc: BaseException, seconds: float) -> SourceProfile:
    """A failed profile with a one-line reason; unexpected errors are logged with their traceback."""
    if isinstance(exc, SourceError):
        reason = exc.reason
    elif isinstance(exc, TasksimError):
        reason = str(exc)
    else:
        log.error("source %s: unexpected error", source, exc_info=exc)
        reason = f"{type(exc).__name__}: {exc}"
    log.warning("source %s failed: %s", source, reason)
    return SourceProfile(source, "failed", error=reason, seconds=seconds)


def target_basis(features: torch.Tensor, components: int = OTDD_COMPONENTS) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, D x k axes) of the leading principal components of the target's features (float64).

    OTDD's inner cost is a Bures distance between class-conditional Gaussians; in the full
    embedding space those are estimated from tens of samples per class (rank-deficient) and cost
    one D x D eigendecomposition per class. Both are fixed by working in the target's leading
    ``OTDD_COMPONENTS`` principal components.
    """
    mean, axes = pca_basis(features, components)
    return mean, axes.T.contiguous()


def shared_space_measures(source_x: torch.Tensor, source_labels: list[str] | None, target_x: torch.Tensor,
                          target_labels: list[str] | None, *, target_label_rows: torch.Tensor | None = None,
                          missing_rate: float | None = None, seed: int = 0,
                          embed_label_names: Callable[[list[str]], torch.Tensor] | None = None,
                          otdd_basis: Callable[[], tuple[torch.Tensor, torch.Tensor]] | None = None,
                          known: Mapping[str, float] | None = None, carried: Mapping[str, float] | None = None,
                          mmd_block: metrics.MMDSelfBlock | None = None,
                          target_range: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, float]:
    """The profile's measures of one source in the shared feature space (the deployed encoder's).

    ``source_x`` (N_s, D) and ``target_x`` (N_t, D) are both sides' features; ``target_labels``
    are the labels of the rows ``target_label_rows`` of ``target_x`` (None: all rows). Distribution
    alignment (MMD^2, Frechet, domain-classifier AUC, coverage) on seeded subsamples, data quality
    (duplicates, ``missing_rate`` as given, label noise: :func:`source_only_measures`, or ``known``
    when the caller kept them from an earlier window), label semantics and class balance (label
    shift, exact and, with ``embed_label_names``, semantic overlap, granularity) and OTDD in the
    target's principal components (``otdd_basis``; default :func:`target_basis` of ``target_x``).
    A measure of ``CARRIED_MEASURES`` in ``carried`` takes that earlier value instead of being
    measured, where it would be measured now (a measure not computable for this window stays out).
    ``mmd_block``: :func:`mmd_self_block` of ``source_x`` with this ``seed``, kept by the caller:
    MMD^2 then computes only the cross pairs (the same value up to rounding). ``target_range``:
    ``feature_range(target_x)``, when the caller measures many sources against one window.
    """
    check_pooled_range(source_x, target_x, ("the source", "the target window"), b_range=target_range)
    out: dict[str, float] = {}
    s_idx = _subsample(source_x.shape[0], DISTANCE_SAMPLE_ROWS, seed)
    t_idx = _subsample(target_x.shape[0], DISTANCE_SAMPLE_ROWS, seed + 1)
    xs, xt = _take(source_x, s_idx), _take(target_x, t_idx)
    n_t = target_x.shape[0]
    if n_t >= MEASURE_MIN_ROWS["mmd2"]:
        out["mmd2"] = metrics.mmd2(xs, xt, x_block=mmd_block)
    carried = carried or {}
    if n_t >= MEASURE_MIN_ROWS["frechet"]:
        out["frechet"] = carried["frechet"] if "frechet" in carried else metrics.frechet_distance(source_x, target_x)
    if n_t >= MEASURE_MIN_ROWS["coverage"]:
        out["coverage"] = carried["coverage"] if "coverage" in carried else quality.coverage(xs, xt)
    if n_t >= MEASURE_MIN_ROWS["domain_classifier_auc"]:
        if {"domain_classifier_auc", "domain_separability"} <= set(carried):
            out["domain_classifier_auc"] = carried["domain_classifier_auc"]
            out["domain_separability"] = carried["domain_separability"]
        else:
            out["domain_classifier_auc"] = metrics.domain_classifier_auc(
                _take(xs, _subsample(xs.shape[0], DOMAIN_AUC_ROWS, seed)),
                _take(xt, _subsample(xt.shape[0], DOMAIN_AUC_ROWS, seed + 1)), seed=seed)
            out["domain_separability"] = metrics.domain_separability(out["domain_classifier_auc"])
    out.update(source_only_measures(source_x, source_labels, seed=seed) if known is None else known)
    if missing_rate is not None:
        out["missing_rate"] = missing_rate
    if source_labels is not None and target_labels is not None:
        out["label_shift"] = metrics.label_shift(source_labels, target_labels)
        out.update(quality.label_overlap(sorted(set(source_labels)), sorted(set(target_labels)),
                                          embed=embed_label_names))
        tl_idx = _subsample(len(target_labels), DISTANCE_SAMPLE_ROWS, seed + 1)
        ys, yt = _take_list(source_labels, s_idx), _take_list(target_labels, tl_idx)
        if _labelled(ys) and _labelled(yt) and "otdd" in carried:
            out["otdd"] = carried["otdd"]
        elif _labelled(ys) and _labelled(yt):
            mean, axes = otdd_basis() if otdd_basis is not None else target_basis(target_x)
            xtl = _take(_take(target_x, target_label_rows), tl_idx)
            out["otdd"] = metrics.otdd((xs - mean) @ axes, ys, (xtl - mean) @ axes, yt)
    return {k: float(v) for k, v in out.items()}


def transfer_rows(labels: list[str | None] | None, min_count: int = 2
                  ) -> tuple[torch.Tensor | None, list[str] | None]:
    """The target rows that transferability is scored on, and their labels: labelled rows (None is
    a row not labelled yet) of classes seen at least ``min_count`` times. Rows None: all rows;
    labels None: no labels at all.

    Class-conditional measures need two samples per class; a class seen once in a window says
    nothing about transfer and must not fail every source.
    """
    if labels is None:
        return None, None
    counts: dict[str, int] = {}
    for v in labels:
        if v is not None:
            counts[v] = counts.get(v, 0) + 1
    keep = [i for i, v in enumerate(labels) if v is not None and counts[v] >= min_count]
    if not keep:
        return None, None
    if len(keep) == len(labels):
        return None, list(labels)  # type: ignore[arg-type]
    return torch.tensor(keep, dtype=torch.long), [labels[i] for i in keep]  # type: ignore[misc]


def add_transfer_gains(measures: dict[str, float], baseline: dict[str, float]) -> None:
    """In place: ``logme_gain`` and ``knn_gain`` (the source's view minus the no-transfer baseline,
    the target's own features) and ``negative_transfer`` (1 when both gains are negative)."""
    for name in ("logme", "knn_accuracy"):
        if name in baseline and name in measures:
            measures[f"{name.split('_')[0]}_gain"] = measures[name] - float(baseline[name])
    if "logme_gain" in measures and "knn_gain" in measures:
        measures["negative_transfer"] = float(measures["logme_gain"] < 0 and measures["knn_gain"] < 0)


def bootstrap_profiles(profiles: list[SourceProfile], labels: list[str], rounds: int,
                       measures: tuple[str, ...] = catalog.BOOTSTRAP_MEASURES, *, seed: int = 0
                       ) -> list[SourceProfile]:
    """Attach a confidence bootstrap to every ``ok`` profile that carries a view of the target.

    Each of ``rounds`` rounds resamples the target rows (``labels`` are the labels of the views'
    rows) with replacement (``mcda.bootstrap_indices``) and re-scores ``measures`` on every view:
    ``metrics.bootstrap_many`` per group of views of one width, each resample from its distinct
    rows weighted by their multiplicities (the same values as scoring the repeated rows). A source
    whose re-scoring fails in a round keeps its full-sample values there; a group whose batched
    call fails is re-scored source by source, so one bad view fails only its own rounds. When fewer
    than two sources have views, or the bootstrap itself fails, no profile gets one (confidence is
    advisory: it never fails the profile).
    """
    views = {p.source: p.view for p in profiles if p.status == "ok" and p.view is not None}
    if rounds <= 0 or not measures or len(views) < 2 or len(labels) < 2:
        return profiles
    per_source: dict[str, list[dict[str, float]]] = {}
    try:
        draws = mcda.bootstrap_indices(len(labels), rounds, seed=seed)
        groups: dict[tuple[int, bool], list[str]] = {}
        for name, view in views.items():
            groups.setdefault((view.features.shape[1], view.probs is not None), []).append(name)
        for (width, has_probs), names in groups.items():
            wanted = tuple(m for m in measures if has_probs or m not in catalog.PROBABILITY_MEASURES)
            # sources in batches whose float64 rows and Gram matrices stay within BOOTSTRAP_BATCH_BYTES
            per_batch = max(1, BOOTSTRAP_BATCH_BYTES // (16 * len(labels) * max(len(labels), width)))
            for start in range(0, len(names), per_batch):
                per_source.update(_rescore(names[start:start + per_batch], views, labels, draws, wanted))
    except Exception as exc:  # confidence is advisory: a failed bootstrap must not stop the profile
        log.warning("bootstrap of the profiles failed: %s", exc)
        return profiles
    return [replace(p, bootstrap=tuple(per_source[p.source])) if p.source in per_source else p for p in profiles]


def _rescore(names: list[str], views: Mapping[str, SourceView], labels: list[str], draws: list[torch.Tensor],
             measures: tuple[str, ...]) -> dict[str, list[dict[str, float]]]:
    """Every round's ``measures`` of the views ``names`` (of one width): one batched call, or one
    call per source when the batch fails (then a failing source gets no values: ``{}`` each round)."""
    feats = [views[n].features for n in names]
    probs = [views[n].probs for n in names] if views[names[0]].probs is not None else None
    try:
        rounds = metrics.bootstrap_many(feats, labels, draws, probs, measures)
        return {n: [r[i] for r in rounds] for i, n in enumerate(names)}
    except Exception as exc:  # isolate: retry each source alone below
        log.debug("batched bootstrap failed (%s); re-scoring sources one by one", exc)
    out: dict[str, list[dict[str, float]]] = {}
    for i, n in enumerate(names):
        try:
            rounds = metrics.bootstrap_many(feats[i:i + 1], labels, draws, None if probs is None else probs[i:i + 1],
                                            measures)
            out[n] = [r[0] for r in rounds]
        except Exception as exc:  # isolation: a failing view loses its own confidence rounds only
            log.debug("bootstrap of %s failed: %s", n, exc)
            out[n] = [{} for _ in draws]
    return out


def _say_codes(target_labels: list[str] | None, sources: dict[str, SourceArrays]) -> None:
    """One line per profile run naming whose class labels are integer codes (never matched by name)."""
    coded = [n for n, s in sources.items() if s.labels and quality.is_code_vocabulary(set(s.labels))]
    if target_labels and quality.is_code_vocabulary(set(target_labels)):
        coded.insert(0, "the production window")
    if coded:
        log.warning("class labels of %s are integer codes: the class-name criteria (label_exact_overlap, "
                    "label_semantic_overlap) are left out for them, since codes say nothing about what the "
                    "classes are", ", ".join(coded))


def profile_arrays(target_x: torch.Tensor, target_labels: list[str | None] | None,
                   sources: dict[str, SourceArrays], *, seed: int = 0, bootstrap_rounds: int = 0,
                   bootstrap_measures: tuple[str, ...] = catalog.BOOTSTRAP_MEASURES,
                   embed_label_names: Callable[[list[str]], torch.Tensor] | None = None) -> list[SourceProfile]:
    """Every source's similarity profile of the target, from arrays alone (pure: no files, no models).

    ``target_x`` (N, D) is the window in the shared feature space; ``target_labels`` one label per
    row (None: not labelled yet) or None. Per source (isolated: a failing measure fails only that
    source): the shared-space measures (:func:`shared_space_measures`), the caller's ``extra``
    measures, then, for the sources with a view and a labelled target, the batched transferability
    of the labelled rows through every view (:func:`score_views`), the no-transfer baseline and
    the gains (:func:`add_transfer_gains`), and with ``bootstrap_rounds`` the confidence bootstrap
    of ``bootstrap_measures`` (:func:`bootstrap_profiles`). Profiles come back in ``sources`` order.
    """
    known_rows, known_labels = transfer_rows(target_labels, min_count=1)
    basis: list[tuple[torch.Tensor, torch.Tensor]] = []

    def otdd_basis() -> tuple[torch.Tensor, torch.Tensor]:  # fitted once, on the first source that needs it
        if not basis:
            basis.append(target_basis(target_x))
        return basis[0]

    _say_codes(known_labels, sources)
    # the window's per-dimension range, once for every source's pooled-range check
    target_range = feature_range(target_x) if target_x.ndim == 2 and target_x.shape[0] else None
    described: dict[str, SourceProfile] = {}
    for name, src in sources.items():
        started = time.perf_counter()
        try:
            out = {} if src.features is None else shared_space_measures(
                src.features, src.labels, target_x, known_labels, target_label_rows=known_rows,
                missing_rate=src.missing_rate, seed=seed, embed_label_names=embed_label_names, otdd_basis=otdd_basis,
                known=src.known, carried=src.carried, mmd_block=src.mmd_block, target_range=target_range)
        except Exception as exc:  # isolation: one source's failing measure must not stop the others
            described[name] = _failed(name, exc, src.seconds + time.perf_counter() - started)
            continue
        out.update({k: float(v) for k, v in src.extra.items()})
        used = [k for k in src.carried if k in out]  # offered values the window could have measured
        described[name] = SourceProfile(name, "ok", measures=out, seconds=src.seconds + time.perf_counter() - started,
                                        carried={k: dict(src.carried_from.get(k, {})) for k in used},
                                        data_fingerprint=src.data_fingerprint)

    rows, labels = transfer_rows(target_labels)
    views = {n: sources[n].view for n, p in described.items() if p.status == "ok" and sources[n].view is not None}
    if views and labels is not None and len(labels) >= MEASURE_MIN_ROWS["transferability"]:
        if rows is not None:
            log.info("transferability: %d of %d target rows are unlabelled or of a class seen once: left out",
                     len(target_labels or []) - len(labels), len(target_labels or []))
            views = {n: SourceView(_take(v.features, rows), None if v.probs is None else _take(v.probs, rows))
                     for n, v in views.items()}
        scores = score_views(views, labels, seed=seed)
        baseline: dict[str, float] = {}
        try:  # the no-transfer baseline: the target's own features, no source in between
            baseline = metrics.transferability_profile(_take(target_x, rows), labels, measures=BASELINE_MEASURES,
                                                       seed=seed)
        except Exception as exc:  # the baseline only adds the gains: a failure must not fail the sources
            log.warning("no-transfer baseline not computed: %s", exc)
        for name, result in scores.items():
            prof = described[name]
            if isinstance(result, Exception):
                described[name] = SourceProfile(name, "failed", error=f"transferability: {result}",
                                                seconds=prof.seconds)
                continue
            measures = {**prof.measures, **{k: float(v) for k, v in result.items()}}
            add_transfer_gains(measures, baseline)
            described[name] = replace(prof, measures=measures, view=views[name])
        profiles = bootstrap_profiles(list(described.values()), labels, bootstrap_rounds, bootstrap_measures)
    else:
        profiles = list(described.values())
    for prof in profiles:
        log.info("source %s: %s in %.2fs", prof.source, prof.status, prof.seconds)
    return profiles


def profile_sources(config: Config, target: Target, encoder: Encoder, cache: EmbeddingCache,
                    device: torch.device, carry: Mapping[str, CarriedValues] | None = None) -> list[SourceProfile]:
    """Load and embed every configured source, then profile them against ``target`` with
    :func:`profile_arrays`; failures are isolated per source. The confidence bootstrap re-scores
    the bootstrap measures the ranking weighs (``ranking.weights`` over the defaults). ``carry``:
    per source, earlier values of unweighted ``CARRIED_MEASURES`` to keep instead of measuring them
    (``tasksim.cycle`` decides which; see ``ranking.unweighted_every``)."""
    profiler = _Profiler(config, target, encoder, cache, device)
    profiler.carry = carry or {}
    loaded = {source.name: profiler.load(source) for source in config.sources}
    arrays = {name: item for name, item in loaded.items() if isinstance(item, SourceArrays)}
    weights = {**catalog.DEFAULT_WEIGHTS, **config.ranking.weights}
    profiled = {p.source: p for p in profile_arrays(
        target.features.to(device), config.production.named_labels(target.labels), arrays, seed=profiler.seed,
        bootstrap_rounds=config.ranking.bootstrap_rounds,
        bootstrap_measures=tuple(m for m in catalog.BOOTSTRAP_MEASURES if weights.get(m, 0.0) > 0),
        embed_label_names=profiler.embed_label_names if config.encoder.kind == "text" else None)}
    return [profiled.get(name, item) if isinstance(item, SourceArrays) else item for name, item in loaded.items()]


def profiles_to_dict(profiles: list[SourceProfile]) -> list[dict[str, Any]]:
    return [{"source": p.source, "status": p.status, "error": p.error, "measures": p.measures,
             "seconds": round(p.seconds, 3), **({"carried": p.carried} if p.carried else {})} for p in profiles]
