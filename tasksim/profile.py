"""Similarity profiles of the target window against every source in the portfolio.

For each source this stage measures, with ``tasksim.metrics``:

- distribution alignment in the shared feature space (the deployed encoder's): MMD^2, Frechet
  distance, and OTDD when both sides carry labels;
- class balance: the Jensen-Shannon divergence of the label marginals;
- transferability of the target's labels through the *source's* view of the target: the source's
  own encoder when it ships one, else a head fitted on the source's data (``tasksim.heads``),
  whose hidden layer and class probabilities feed LogME, H-score, LEEP, NCE, kNN...

Each source is isolated: an unreadable file, a schema mismatch or a failing measure marks that
source failed with a one-line reason and the others go on.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import torch

from tasksim import metrics
from tasksim.cache import EmbeddingCache
from tasksim.config import Config, SourceConfig
from tasksim.embed import Encoder, build_encoder
from tasksim.errors import SourceError, TasksimError
from tasksim.heads import load_or_fit_head
from tasksim.sample import load_source, table_fingerprint

__all__ = ["SourceProfile", "Target", "profile_sources", "DISTANCE_SAMPLE_ROWS"]

log = logging.getLogger(__name__)

# MMD and OTDD are quadratic in rows; a seeded subsample keeps a cycle's cost bounded.
DISTANCE_SAMPLE_ROWS = 2000


@dataclass(frozen=True)
class Target:
    """The current production window as the profile stage sees it."""

    table: pa.Table
    features: torch.Tensor  # (N, D) in the shared encoder's space
    labels: list[str] | None  # None when the window has no usable labels


@dataclass(frozen=True)
class SourceProfile:
    source: str
    status: str  # ok | failed | excluded
    measures: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0


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
    if n <= k:
        return None
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k]


def _take(x: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
    return x if idx is None else x[idx.to(x.device)]


def _take_list(values: list[str], idx: torch.Tensor | None) -> list[str]:
    return values if idx is None else [values[i] for i in idx.tolist()]


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

    def encode_source(self, source: SourceConfig, table: pa.Table) -> torch.Tensor:
        def compute() -> torch.Tensor:
            return self.encoder.encode(table, source)

        try:
            return self.cache.get_or_compute(
                data_fingerprint=table_fingerprint(table), encoder_fingerprint=self.encoder.fingerprint,
                layer="output", compute=compute)
        except TasksimError as exc:
            raise SourceError(source.name, f"cannot embed its data with the shared encoder: {exc}") from exc

    def source_view(self, source: SourceConfig, table: pa.Table, shared: torch.Tensor,
                    labels: list[str] | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The target as the source's model represents it: (features, class probabilities or None)."""
        t = self.target
        if source.encoder is not None:
            own = build_encoder(source.encoder, device=self.device, source=source.name)
            own.fit(table, source)  # a tabular encoder standardises with the source's own statistics
            target_view = own.encode(t.table, self.config.production).to(self.device)
            source_view = self.cache.get_or_compute(
                data_fingerprint=table_fingerprint(table), encoder_fingerprint=own.fingerprint, layer="output",
                compute=lambda: own.encode(table, source)).to(self.device)
        else:
            target_view = t.features.to(self.device)
            source_view = shared.to(self.device)
        if not labels:
            return target_view, None
        key = f"{source.name}|{table_fingerprint(table)}|{self.encoder.fingerprint}|{source.encoder}"
        head = load_or_fit_head(self.heads_dir, key, source_view, labels, seed=self.seed)
        if source.encoder is not None:
            # the source's own encoder is its representation; the head only supplies probabilities
            return target_view, head.probs(target_view)
        return head.hidden(target_view), head.probs(target_view)

    def profile(self, source: SourceConfig) -> SourceProfile:
        started = time.perf_counter()
        if source.access in self.config.ranking.excluded_access:
            return SourceProfile(source.name, "excluded", error=f"access is {source.access!r}")
        try:
            table = load_source(source, self.config.sampling)
            shared = self.encode_source(source, table).to(self.device)
            tgt = self.target.features.to(self.device)
            if shared.shape[1] != tgt.shape[1]:
                raise SourceError(source.name, f"features have {shared.shape[1]} dimensions, the target's have "
                                  f"{tgt.shape[1]}: source and production must use the same input columns")
            measures = self.measures(source, table, shared, tgt)
        except SourceError as exc:
            return self._failed(source, exc.reason, started)
        except TasksimError as exc:
            return self._failed(source, str(exc), started)
        except Exception as exc:  # isolation: one broken source must not stop the cycle
            log.exception("source %s: unexpected error", source.name)
            return self._failed(source, f"{type(exc).__name__}: {exc}", started)
        return SourceProfile(source.name, "ok", measures=measures, seconds=time.perf_counter() - started)

    def _failed(self, source: SourceConfig, reason: str, started: float) -> SourceProfile:
        log.warning("source %s failed: %s", source.name, reason)
        return SourceProfile(source.name, "failed", error=reason, seconds=time.perf_counter() - started)

    def measures(self, source: SourceConfig, table: pa.Table, shared: torch.Tensor,
                 tgt: torch.Tensor) -> dict[str, float]:
        out: dict[str, float] = {}
        src_labels = _labels(table, source.label_column)
        tgt_labels = self.target.labels
        s_idx = _subsample(shared.shape[0], DISTANCE_SAMPLE_ROWS, self.seed)
        t_idx = _subsample(tgt.shape[0], DISTANCE_SAMPLE_ROWS, self.seed + 1)
        xs, xt = _take(shared, s_idx), _take(tgt, t_idx)
        out["mmd2"] = metrics.mmd2(xs, xt)
        out["frechet"] = metrics.frechet_distance(shared, tgt)
        if src_labels is not None and tgt_labels is not None:
            out["label_shift"] = metrics.label_shift(src_labels, tgt_labels)
            ys, yt = _take_list(src_labels, s_idx), _take_list(tgt_labels, t_idx)
            if _labelled(ys) and _labelled(yt):
                out["otdd"] = metrics.otdd(xs, ys, xt, yt)
        if _labelled(tgt_labels) and (src_labels is not None or source.encoder is not None):
            features, probs = self.source_view(source, table, shared, src_labels)
            out.update(metrics.transferability_profile(features, tgt_labels, source_probs=probs))
        return {k: float(v) for k, v in out.items()}


def profile_sources(config: Config, target: Target, encoder: Encoder, cache: EmbeddingCache,
                    device: torch.device) -> list[SourceProfile]:
    """Profile every configured source against ``target``; failures are isolated per source."""
    profiler = _Profiler(config, target, encoder, cache, device)
    profiles = []
    for source in config.sources:
        profile = profiler.profile(source)
        log.info("source %s: %s in %.2fs", source.name, profile.status, profile.seconds)
        profiles.append(profile)
    return profiles


def profiles_to_dict(profiles: list[SourceProfile]) -> list[dict[str, Any]]:
    return [{"source": p.source, "status": p.status, "error": p.error, "measures": p.measures,
             "seconds": round(p.seconds, 3)} for p in profiles]
