"""One monitoring cycle, stage by stage.

    window  = cycle.sample()            # sample.py   production window (bounded, seeded)
    feats   = cycle.embed(window)       # embed.py    target + reference features (cached)
    drift   = cycle.drift(window, feats)        # drift.py    per-column drift, Evidently
    profile = cycle.profile(window, feats)      # profile.py  every source vs the target
    ranking = cycle.rank(profile)               # rank.py     multi-criteria composite
    advice  = cycle.recommend(...)              # recommend.py keep/switch + fine-tuning plan
    cycle.store(...)                            # store.py    one atomic transaction

``Cycle.run()`` chains the stages in process (``tasksim run``); ``flows/monitor.py`` chains the same
methods as Prefect tasks with retries and timeouts. Either way the store is the single output:
the exporter, ``tasksim history`` and the next cycle read it.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from collections.abc import Callable

import torch

from tasksim.cache import EmbeddingCache
from tasksim.config import Config, config_hash, load_config
from tasksim.device import resolve_device
from tasksim.embed import Encoder, build_encoder
from tasksim.errors import DataError
from tasksim.profile import SourceProfile, Target, profile_sources, profiles_to_dict, transfer_rows
from tasksim.rank import Ranking, rank_sources
from tasksim.recommend import Recommendation, recommend
from tasksim.sample import Window, load_reference, production_time_range, sample_window, table_fingerprint
from tasksim.store import CycleRecord, SourceRecord, Store

__all__ = ["Cycle", "CycleResult", "Features", "SampledWindow", "StageRunner", "run_cycle"]

log = logging.getLogger(__name__)

CURSOR_KEY = "window_cursor"

StageRunner = Callable[..., Any]


def _call(name: str, fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


@dataclass(frozen=True)
class SampledWindow:
    window: Window
    start: datetime | None
    end: datetime | None
    next_cursor: datetime | None  # sequential mode: where the next window starts

    @property
    def empty(self) -> bool:
        return self.window.table.num_rows == 0


@dataclass(frozen=True)
class Features:
    reference: Window
    reference_features: torch.Tensor
    current_features: torch.Tensor


@dataclass
class CycleResult:
    """What one cycle produced; ``to_dict()`` is the JSON of ``tasksim run --format json``."""

    status: str
    started_at: float
    finished_at: float
    window_start: datetime | None = None
    window_end: datetime | None = None
    rows_total: int = 0
    rows_sampled: int = 0
    rows_dropped: int = 0
    drift: dict[str, Any] | None = None
    profiles: list[SourceProfile] = field(default_factory=list)
    ranking: Ranking | None = None
    recommendation: Recommendation | None = None
    error: str | None = None
    cycle_id: int | None = None
    device: str | None = None
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "cycle_id": self.cycle_id,
            "status": self.status,
            "error": self.error,
            "duration_seconds": round(self.finished_at - self.started_at, 3),
            "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()},
            "device": self.device,
            "window": {"start": _iso(self.window_start), "end": _iso(self.window_end), "rows_total": self.rows_total,
                       "rows_sampled": self.rows_sampled, "rows_dropped_invalid": self.rows_dropped},
            "drift": self.drift,
            "sources": profiles_to_dict(self.profiles),
            "ranking": None if self.ranking is None else [
                {"rank": e.rank, "source": e.source, "score": round(e.score, 6),
                 "top1_probability": e.top1_probability, "rank_interval": e.rank_interval, "flags": list(e.flags),
                 "pareto": e.source in self.ranking.pareto_front, "contributions": e.contributions}
                for e in self.ranking.entries],
            "ranking_method": None if self.ranking is None else self.ranking.method,
            "weights": None if self.ranking is None else self.ranking.weights,
            "reliability": None if self.ranking is None else self.ranking.reliability,
            "excluded": None if self.ranking is None else self.ranking.excluded,
            "recommendation": None if self.recommendation is None else self.recommendation.to_dict(),
        }


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _labels_of(window: Window, column: str | None) -> list[str | None] | None:
    """The window's labels, None for a row not labelled yet (labels arrive late in production);
    None when there is no label column or no row is labelled."""
    if not column or column not in window.table.column_names:
        return None
    values = window.table.column(column).to_pylist()
    if all(v is None for v in values):
        return None
    return [None if v is None else str(v) for v in values]


class Cycle:
    """The stages of one cycle over one configuration and its state store."""

    def __init__(self, config: Config, *, store: Store | None = None, device: torch.device | None = None,
                 now: datetime | None = None, encoder: Encoder | None = None) -> None:
        # encoder: an already built encoder for this config (a warm process reuses it across cycles)
        self.config = config
        self.store = store or Store(config.state_dir)
        self.device = device or resolve_device(config.device)
        self.now = now
        self.cache = EmbeddingCache(config.state_dir / "embeddings")
        self._encoder: Encoder | None = encoder
        self.started_at = time.time()
        self.stage_seconds: dict[str, float] = {}

    @classmethod
    def open(cls, config_path: str | Path) -> Cycle:
        return cls(load_config(config_path))

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            self._encoder = build_encoder(self.config.encoder, device=self.device)
        return self._encoder

    def _timed(self, stage: str, started: float) -> None:
        self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + time.perf_counter() - started

    # -- stages ------------------------------------------------------------------------------
    def window_bounds(self) -> tuple[datetime | None, datetime, datetime | None]:
        """(start, end, next cursor) of this cycle's production window."""
        now = self.now or datetime.now(timezone.utc)
        length = self.config.window.length
        if self.config.window.mode == "latest":
            return now - length, now, None
        cursor_text = self.store.get_state(CURSOR_KEY)
        if cursor_text:
            start = datetime.fromisoformat(cursor_text)
        elif self.config.window.start is not None:
            start = self.config.window.start
        else:
            bounds = production_time_range(self.config.production)
            if bounds is None:
                return None, now, None
            # align to whole windows since the epoch: 1h windows start on the hour
            epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
            start = epoch + ((bounds[0] - epoch) // length) * length
        end = start + length
        if end > now:  # the window is not complete yet: look at it, but do not move the cursor
            return start, end, None
        return start, end, end

    def sample(self) -> SampledWindow:
        t0 = time.perf_counter()
        start, end, next_cursor = self.window_bounds()
        s = self.config.sampling
        window = sample_window(self.config.production, start, end, max_rows=s.max_rows, seed=s.seed,
                               stratify_by_label=s.stratify_by_label)
        self._timed("sample", t0)
        return SampledWindow(window, start, end, next_cursor)

    def embed(self, sampled: SampledWindow) -> Features:
        t0 = time.perf_counter()
        columns = self.config.production
        reference = load_reference(self.config)
        if reference.table.num_rows == 0:
            raise DataError(f"{self.config.reference.path or self.config.production.path}: the reference window "
                            "has no rows; check reference.start/end or reference.path")
        self.encoder.fit(reference.table, columns)
        ref_features = self.cache.get_or_compute(
            data_fingerprint=table_fingerprint(reference.table), encoder_fingerprint=self.encoder.fingerprint,
            layer="output", compute=lambda: self.encoder.encode(reference.table, columns))
        cur_features = self.encoder.encode(sampled.window.table, columns)
        self._timed("embed", t0)
        return Features(reference, ref_features, cur_features)

    def drift(self, sampled: SampledWindow, features: Features) -> dict[str, Any]:
        from tasksim.drift import detect_drift, monitored_frames

        t0 = time.perf_counter()
        ref_frame, cur_frame = monitored_frames(
            features.reference.table, sampled.window.table, features.reference_features,
            features.current_features, self.config.production, self.config.drift)
        thresholds = self._drift_thresholds(ref_frame, len(cur_frame), features) if self.config.drift.calibrate else None
        result = detect_drift(ref_frame, cur_frame, self.config.drift, thresholds=thresholds).to_dict()
        result["calibrated"] = thresholds is not None
        self._timed("drift", t0)
        return result

    def _drift_thresholds(self, reference: Any, window_rows: int, features: Features) -> dict[str, float] | None:
        """Calibrated thresholds for this window size, cached per reference sample and size bucket."""
        from tasksim.drift import calibrate_thresholds

        cfg = self.config.drift
        bucket = 1 << max(4, (max(window_rows, 1) - 1).bit_length())  # next power of two
        if bucket * 2 > len(reference):  # too small a reference to split: fall back to fixed thresholds
            log.warning("drift calibration skipped: reference (%d rows) too small for windows of %d rows",
                        len(reference), window_rows)
            return None
        key = "drift_thresholds:" + json.dumps([table_fingerprint(features.reference.table), bucket, cfg.method,
                                                 cfg.false_alarm_rate, cfg.calibration_control, cfg.drift_share,
                                                 cfg.calibration_rounds, sorted(reference.columns)])
        cached = self.store.get_state(key)
        if cached:
            return json.loads(cached)
        thresholds = calibrate_thresholds(
            reference, bucket, cfg, rounds=cfg.calibration_rounds, seed=self.config.sampling.seed,
            false_alarm_rate=cfg.false_alarm_rate, control=cfg.calibration_control,
            max_reference_rows=cfg.calibration_max_reference_rows)
        self.store.set_state(key, json.dumps(thresholds))
        return thresholds

    def profile(self, sampled: SampledWindow, features: Features) -> list[SourceProfile]:
        t0 = time.perf_counter()
        target = Target(sampled.window.table, features.current_features,
                        _labels_of(sampled.window, self.config.production.label_column))
        profiles = profile_sources(self.config, target, self.encoder, self.cache, self.device)
        self._timed("profile", t0)
        return profiles

    def rank(self, profiles: list[SourceProfile], sampled: SampledWindow) -> Ranking | None:
        t0 = time.perf_counter()
        if not any(p.status == "ok" for p in profiles):
            return None
        _, labels = transfer_rows(_labels_of(sampled.window, self.config.production.label_column))
        ranking = rank_sources(profiles, self.config.sources, self.config.ranking, target_labels=labels)
        self._timed("rank", t0)
        return ranking

    def recommend(self, ranking: Ranking | None, profiles: list[SourceProfile], sampled: SampledWindow,
                  drift: dict[str, Any] | None) -> Recommendation:
        _, labels = transfer_rows(_labels_of(sampled.window, self.config.production.label_column))
        input_drift = bool(drift and drift.get("detected") and not any(
            str(c.get("column", "")).startswith("pc") for c in drift.get("columns", [])))
        return recommend(ranking, self.config.deployed_source, self.config.ranking,
                         measures={p.source: p.measures for p in profiles},
                         input_drift=input_drift, labelled_rows=len(labels or []),
                         failed={p.source: p.error or "" for p in profiles if p.status != "ok"})

    # -- results -----------------------------------------------------------------------------
    def finish(self, result: CycleResult, next_cursor: datetime | None) -> CycleResult:
        """Write the cycle to the store in one transaction and return it with its id."""
        result.finished_at = time.time()
        result.stage_seconds = dict(self.stage_seconds)
        result.device = str(self.device)
        ranking = result.ranking
        records = []
        for p in result.profiles:
            entry = ranking.entry(p.source) if ranking else None
            status = "excluded" if ranking and p.source in ranking.excluded else p.status
            error = ranking.excluded[p.source] if ranking and p.source in ranking.excluded else p.error
            records.append(SourceRecord(source=p.source, status=status, error=error,
                                        score=entry.score if entry else None, rank=entry.rank if entry else None,
                                        top1_probability=entry.top1_probability if entry else None,
                                        similarity=p.measures))
        decision = None
        if result.recommendation is not None and result.status == "success":
            decision = self._decision_record(result)
        record = CycleRecord(
            started_at=result.started_at, finished_at=result.finished_at, status=result.status,
            config_hash=config_hash(self.config), window_start=_iso(result.window_start),
            window_end=_iso(result.window_end), rows_sampled=result.rows_sampled, rows_total=result.rows_total,
            rows_dropped=result.rows_dropped, error=result.error, drift=result.drift, device=result.device,
            sources=tuple(records), decision=decision,
            state_updates={CURSOR_KEY: next_cursor.isoformat()} if next_cursor else {},
        )
        result.cycle_id = self.store.record_cycle(record)
        return result

    def _decision_record(self, result: CycleResult) -> dict[str, Any]:
        rec = result.recommendation
        assert rec is not None
        previous = self.store.decisions(limit=1)
        prev = previous[0] if previous else None
        changed = prev is None or (prev.get("recommended_source"), prev.get("action")) != (
            rec.recommended_source, rec.action)
        return {
            **rec.to_dict(),
            "config_hash": config_hash(self.config),
            "window": {"start": _iso(result.window_start), "end": _iso(result.window_end)},
            "ranking": [{"source": e.source, "rank": e.rank, "score": e.score, "top1_probability": e.top1_probability,
                         "rank_interval": e.rank_interval, "flags": list(e.flags), "contributions": e.contributions}
                        for e in result.ranking.entries] if result.ranking else [],
            "pareto_front": list(result.ranking.pareto_front) if result.ranking else [],
            "profile": {p.source: {"status": p.status, "error": p.error, "measures": p.measures}
                        for p in result.profiles},
            "weights": result.ranking.weights if result.ranking else {},
            "reliability": result.ranking.reliability if result.ranking else {},
            "drift_detected": bool(result.drift and result.drift.get("detected")),
            "previous": None if prev is None else {
                "recommended_source": prev.get("recommended_source"), "action": prev.get("action")},
            "changed": changed,
        }

    def run(self, step: StageRunner | None = None) -> CycleResult:
        """All stages in order; failures are recorded as a failed cycle, then re-raised.

        ``step(name, fn, *args)`` runs one stage: directly by default; ``flows/monitor.py`` passes
        one that runs it as a Prefect task with retries and a timeout.
        """
        step = step or _call
        result = CycleResult(status="success", started_at=self.started_at, finished_at=self.started_at)
        next_cursor = None
        try:
            sampled = step("sample", self.sample)
            result.window_start, result.window_end = sampled.start, sampled.end
            result.rows_total = sampled.window.total_rows
            result.rows_sampled = sampled.window.table.num_rows
            result.rows_dropped = sampled.window.dropped_invalid
            next_cursor = sampled.next_cursor
            if sampled.empty:
                result.status = "no_data"
                result.error = "the production window has no valid rows; the last ranking stands"
                return self.finish(result, next_cursor)
            features = step("embed", self.embed, sampled)
            result.drift = step("drift", self.drift, sampled, features)
            result.profiles = step("profile", self.profile, sampled, features)
            result.ranking = step("rank", self.rank, result.profiles, sampled)
            result.recommendation = step("recommend", self.recommend, result.ranking, result.profiles, sampled,
                                         result.drift)
            return self.finish(result, next_cursor)
        except Exception as exc:
            result.status = "failed"
            result.error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, DataError) else str(exc)
            log.error("cycle failed: %s", result.error)
            # a failed cycle does not move the cursor: the window is retried next time
            self.finish(result, None)
            raise


def run_cycle(config: Config, *, now: datetime | None = None) -> CycleResult:
    """Run one cycle in process and return its result (also written to the store)."""
    cycle = Cycle(config, now=now)
    try:
        return cycle.run()
    finally:
        cycle.store.close()
