"""One monitoring cycle, stage by stage.

    window  = cycle.sample()            # sample.py   production window (bounded, seeded)
    feats   = cycle.embed(window)       # embed.py    target + reference features (cached)
    drift   = cycle.drift(window, feats)        # drift.py    typed verdict: drifted? which kind?
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
import os
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from tasksim.cache import EmbeddingCache
from tasksim.config import Config, RankingConfig, config_hash, load_config
from tasksim.device import resolve_device
from tasksim.drift import DriftVerdict
from tasksim.embed import Encoder, build_encoder
from tasksim.errors import DataError
from tasksim.profile import (
    CARRIED_MEASURES,
    MEASURE_MIN_ROWS,
    CarriedValues,
    SourceProfile,
    Target,
    profile_sources,
    profiles_to_dict,
    transfer_rows,
)
from tasksim.rank import DEFAULT_WEIGHTS, Ranking, rank_sources
from tasksim.recommend import Recommendation, recommend
from tasksim.sample import (
    Window,
    in_reference_period,
    load_reference,
    production_time_range,
    reference_cache_key,
    sample_window,
    table_fingerprint,
)
from tasksim.store import CycleRecord, SourceRecord, Store

__all__ = ["Cycle", "CycleResult", "Features", "RankNow", "SampledWindow", "StageRunner", "rank_now", "run_cycle"]

log = logging.getLogger(__name__)

CURSOR_KEY = "window_cursor"
# kv key of the production files' timestamp ranges (tasksim.sample.sample_window's file_ranges)
FILE_RANGES_KEY = "production_file_ranges"
# Below this many valid rows no measure that compares a source with the window can be computed
# (coverage alone, from one row, ranks nothing): the cycle is recorded as ``insufficient_data``.
MIN_RANKING_ROWS = min(n for m, n in MEASURE_MIN_ROWS.items() if m != "coverage")
#: Past windows whose labels were incomplete are re-tested when their labels arrive (this many back).
LATE_LABEL_LOOKBACK = 3
LATE_DRIFT_KEY = "drift_late_labels:"
REFERENCE_CACHE_KEY = "reference_table:"

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
    reference_key: str = ""  # reference content + encoder fingerprint: keys the drift caches


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
    drift: DriftVerdict | None = None
    profiles: list[SourceProfile] = field(default_factory=list)
    ranking: Ranking | None = None
    recommendation: Recommendation | None = None
    late_drift: list[dict[str, Any]] = field(default_factory=list)  # past windows re-tested with late labels
    error: str | None = None
    cycle_id: int | None = None
    device: str | None = None
    stage_seconds: dict[str, float] = field(default_factory=dict)
    files_skipped: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "cycle_id": self.cycle_id,
            "status": self.status,
            "error": self.error,
            "duration_seconds": round(self.finished_at - self.started_at, 3),
            "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()},
            "device": self.device,
            "window": {"start": _iso(self.window_start), "end": _iso(self.window_end), "rows_total": self.rows_total,
                       "rows_sampled": self.rows_sampled, "rows_dropped_invalid": self.rows_dropped,
                       "files_skipped": list(self.files_skipped)},
            # measures the window is too small for (left out of every source's profile)
            "measures_not_computable": sorted(m for m, n in MEASURE_MIN_ROWS.items() if self.rows_sampled < n)
            if self.status in ("success", "insufficient_data") else [],
            "drift": None if self.drift is None else self.drift.to_dict(),
            "drift_late_labels": self.late_drift,
            "sources": profiles_to_dict(self.profiles),
            "ranking": None if self.ranking is None else self.ranking.entries_to_dicts(),
            "ranking_method": None if self.ranking is None else self.ranking.method,
            "weights": None if self.ranking is None else self.ranking.weights,
            "reliability": None if self.ranking is None else self.ranking.reliability,
            "excluded": None if self.ranking is None else self.ranking.excluded,
            "recommendation": None if self.recommendation is None else self.recommendation.to_dict(),
        }


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _labelled_rows(table: pa.Table, column: str | None) -> int:
    """Rows of ``table`` whose label is not null (0 without a label column)."""
    if not column or column not in table.column_names:
        return 0
    return table.num_rows - table.column(column).null_count


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
        self.device = device or resolve_device(config.device)  # before the store: a bad device opens nothing
        self.store = store or Store(config.state_dir, retention_cycles=config.retention.cycles,
                                    retention_days=config.retention.days)
        self.now = now
        self.cache = EmbeddingCache(config.state_dir / "embeddings")
        self._encoder: Encoder | None = encoder
        self.started_at = time.time()
        self.stage_seconds: dict[str, float] = {}
        self._file_ranges: dict[str, list[int]] | None = None
        self._drift_state: dict[str, str] = {}  # CUSUM state, committed with the cycle record
        self._drifted = False  # this window's drift verdict (a drifted window measures everything afresh)
        self.late_drift: list[dict[str, Any]] = []

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
        try:
            ranges = json.loads(self.store.get_state(FILE_RANGES_KEY) or "{}")
        except ValueError:  # a damaged cache entry only costs re-reading footers
            ranges = {}
        ranges = ranges if isinstance(ranges, dict) else {}
        window = sample_window(self.config.production, start, end, max_rows=s.max_rows, seed=s.seed,
                               stratify_by_label=s.stratify_by_label, file_ranges=ranges)
        self._file_ranges = ranges
        for path, reason in window.skipped_files:
            log.warning("skipped production file %s: %s", path, reason)
        self._timed("sample", t0)
        return SampledWindow(window, start, end, next_cursor)

    def embed(self, sampled: SampledWindow) -> Features:
        t0 = time.perf_counter()
        columns = self.config.production
        reference, ref_fingerprint = self._reference()
        if reference.table.num_rows == 0:
            raise DataError(f"{self.config.reference.path or self.config.production.path}: the reference window "
                            "has no rows; check reference.start/end or reference.path")
        self.encoder.fit(reference.table, columns)
        ref_features = self.cache.get_or_compute(
            data_fingerprint=ref_fingerprint, encoder_fingerprint=self.encoder.fingerprint,
            layer="output", compute=lambda: self.encoder.encode(reference.table, columns))
        cur_features = self.encoder.encode(sampled.window.table, columns)
        self._timed("embed", t0)
        return Features(reference, ref_features, cur_features, f"{ref_fingerprint}:{self.encoder.fingerprint}")

    def _reference(self) -> tuple[Window, str]:
        """The reference window and its content fingerprint, read and hashed once per reference: both
        are stored (``<state_dir>/reference/<key>.arrow``, Arrow IPC read by memory map, and the
        fingerprint in the store's state) under :func:`tasksim.sample.reference_cache_key` (the
        reference's files, range, columns and sampling; no file is opened to compute it)."""
        key = reference_cache_key(self.config, file_ranges=self._file_ranges)
        path = self.config.state_dir / "reference" / f"{key}.arrow"
        state_key = REFERENCE_CACHE_KEY + key
        stored = self.store.get_state(state_key)
        if stored and path.exists():
            try:
                meta = json.loads(stored)
                with pa.memory_map(str(path)) as source:
                    table = pa.ipc.open_file(source).read_all()
                if table.num_rows == int(meta["rows"]):
                    window = Window(start=self.config.reference.start, end=self.config.reference.end, table=table,
                                    total_rows=int(meta["total_rows"]), dropped_invalid=int(meta["dropped_invalid"]),
                                    skipped_files=tuple(tuple(x) for x in meta.get("skipped_files", ())))
                    return window, str(meta["fingerprint"])
            except (OSError, ValueError, KeyError, TypeError, pa.ArrowException) as exc:
                log.warning("cannot read the stored reference %s (%s); reading the reference again", path, exc)
        reference = load_reference(self.config, file_ranges=self._file_ranges)
        fingerprint = table_fingerprint(reference.table)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, reference.table.schema) as writer:
                writer.write_table(reference.table)
            os.replace(tmp, path)
            for old in path.parent.glob("*.arrow"):  # one reference at a time: an older one is not read again
                if old != path:
                    old.unlink(missing_ok=True)
            self.store.set_state(state_key, json.dumps({
                "fingerprint": fingerprint, "rows": reference.table.num_rows, "total_rows": reference.total_rows,
                "dropped_invalid": reference.dropped_invalid, "skipped_files": list(reference.skipped_files)}))
        except OSError as exc:  # a read-only or full state dir costs re-reading, not the cycle
            log.warning("cannot store the reference in %s (%s)", path.parent, exc)
        return reference, fingerprint

    def drift(self, sampled: SampledWindow, features: Features) -> DriftVerdict:
        """The window's drift verdict (policy, tests and caches: ``tasksim.drift.DriftMonitor``)."""
        from tasksim.drift import DriftMonitor

        t0 = time.perf_counter()
        monitor = DriftMonitor(self.config.drift, self.config.production, cache_dir=self.config.state_dir / "drift",
                               state=self.store, seed=self.config.sampling.seed)
        table, feats, inside = self._outside_reference(sampled.window.table, features.current_features)
        if table.num_rows == 0:
            labelled = _labelled_rows(sampled.window.table, self.config.production.label_column)
            ref = self.config.reference
            verdict = DriftVerdict.untested(
                f"the window lies in the reference period ({_iso(ref.start) or 'its start'} .. {_iso(ref.end)}): it is the "
                "reference's own data, so it is not tested against it", reference_rows=features.reference.table.num_rows,
                current_rows=sampled.window.table.num_rows, labelled_rows=labelled,
                false_alarm_rate=self.config.drift.false_alarm_rate)
        else:
            if inside:
                log.info("drift: %d of the window's %d rows lie in the reference period and are left out of the "
                         "drift tests", inside, sampled.window.table.num_rows)
            verdict = monitor.check(features.reference.table, features.reference_features, table, feats,
                                    reference_key=features.reference_key or table_fingerprint(features.reference.table))
        self._drift_state.update(monitor.state_updates)
        self._drifted = bool(verdict.drifted)
        log.info("drift: %s", verdict.summary())
        self.late_drift = self._retest_late_labels(monitor, features)
        self._timed("drift", t0)
        return verdict

    def _outside_reference(self, table: pa.Table, feats: torch.Tensor) -> tuple[pa.Table, torch.Tensor, int]:
        """The window's rows (and their features) that do not lie in the reference period, and how
        many did (:func:`tasksim.sample.in_reference_period`)."""
        inside = in_reference_period(self.config, table)
        if inside is None or not inside.any():
            return table, feats, 0
        keep = np.flatnonzero(~inside)
        return table.take(pa.array(keep)), feats[torch.as_tensor(keep, device=feats.device)], int(inside.sum())

    def _retest_late_labels(self, monitor: Any, features: Features) -> list[dict[str, Any]]:
        """Re-test the last ``LATE_LABEL_LOOKBACK`` windows whose labels were incomplete, if more of
        their labels have arrived; the updated verdict is logged and kept in the state store
        (``drift_late_labels:<window start>``), committed with this cycle."""
        label = self.config.production.label_column
        if not label or self.config.window.mode != "sequential":
            return []
        out = []
        for rec in self.store.cycles(limit=LATE_LABEL_LOOKBACK):
            if rec.get("status") != "success" or not rec.get("drift_json") or not rec.get("window_start"):
                continue
            key = LATE_DRIFT_KEY + rec["window_start"]
            latest = self._drift_state.get(key) or self.store.get_state(key) or rec["drift_json"]
            before = DriftVerdict.from_dict(json.loads(latest))
            if before.labelled_rows >= before.current_rows:
                continue
            s = self.config.sampling
            window = sample_window(self.config.production, datetime.fromisoformat(rec["window_start"]),
                                   datetime.fromisoformat(rec["window_end"]), max_rows=s.max_rows, seed=s.seed,
                                   stratify_by_label=s.stratify_by_label)
            if label not in window.table.column_names or window.table.num_rows == 0:
                continue
            labelled = _labelled_rows(window.table, label)
            if labelled <= before.labelled_rows:
                continue
            table, feats, _ = self._outside_reference(window.table,
                                                      self.encoder.encode(window.table, self.config.production))
            if table.num_rows == 0:
                continue
            after = monitor.check(features.reference.table, features.reference_features, table, feats,
                                  reference_key=features.reference_key, update_cusum=False)
            log.info("drift: window %s .. %s re-tested with late labels (%d labelled rows, was %d): %s (was: %s)",
                     rec["window_start"], rec["window_end"], after.labelled_rows, before.labelled_rows,
                     after.summary(), before.summary())
            self._drift_state[key] = json.dumps(after.to_dict())
            out.append({"window_start": rec["window_start"], "window_end": rec["window_end"],
                        "labelled_rows": after.labelled_rows, "was_labelled_rows": before.labelled_rows,
                        "kind": after.kind, "was_kind": before.kind, "drifted": after.drifted})
        return out

    def profile(self, sampled: SampledWindow, features: Features) -> list[SourceProfile]:
        t0 = time.perf_counter()
        target = Target(sampled.window.table, features.current_features,
                        _labels_of(sampled.window, self.config.production.label_column))
        profiles = profile_sources(self.config, target, self.encoder, self.cache, self.device,
                                   carry=self.carry_plan())
        self._timed("profile", t0)
        return profiles

    def carry_plan(self) -> dict[str, CarriedValues]:
        """Which sources keep which unweighted ``CARRIED_MEASURES`` from the last decision instead of
        measuring them again (``ranking.unweighted_every``): none when that is 1, when this window
        drifted, or when the configuration changed since; else each source measures them afresh
        once every ``unweighted_every`` cycles (staggered by its name, so the cost is spread over
        the cycles) or when its carried value is that old, and carries them in the others."""
        every = self.config.ranking.unweighted_every
        if every <= 1 or self._drifted:
            return {}
        weights = {**DEFAULT_WEIGHTS, **self.ranking_config().weights}
        eligible = {m for m in CARRIED_MEASURES if weights.get(m, 0.0) <= 0}
        if not {"domain_classifier_auc", "domain_separability"} <= eligible:  # one computation
            eligible -= {"domain_classifier_auc", "domain_separability"}
        decisions = self.store.decisions(limit=1) if eligible else []
        if not decisions or decisions[0].get("config_hash") != config_hash(self.config):
            return {}
        last = decisions[0]
        newest = self.store.cycles(limit=1)
        now_id = (int(newest[0]["id"]) if newest else int(last["cycle_id"])) + 1
        fresh = {"cycle": last["cycle_id"], "window_start": last.get("window_start")}
        plan = {}
        for name, prof in (last.get("profile") or {}).items():
            if prof.get("status") != "ok" or not prof.get("data"):
                continue
            if (now_id + zlib.crc32(name.encode())) % every == 0:
                continue  # this source's turn to measure afresh
            carried = prof.get("carried") or {}
            values, origin = {}, {}
            for m in eligible:
                value = prof.get("measures", {}).get(m)
                source = carried.get(m) or fresh
                if value is None or now_id - int(source.get("cycle") or 0) >= every:
                    continue
                values[m], origin[m] = float(value), dict(source)
            if ("domain_classifier_auc" in values) != ("domain_separability" in values):
                values.pop("domain_classifier_auc", None)
                values.pop("domain_separability", None)
            if values:
                plan[name] = CarriedValues(values, {m: origin[m] for m in values}, prof["data"])
        return plan

    def rank(self, profiles: list[SourceProfile], sampled: SampledWindow) -> Ranking | None:
        t0 = time.perf_counter()
        if not any(p.status == "ok" for p in profiles):
            return None
        ranking = rank_sources(profiles, self.config.sources, self.ranking_config())
        self._timed("rank", t0)
        return ranking

    def ranking_config(self) -> RankingConfig:
        """``config.ranking`` with its weights refined by this deployment's trial outcomes
        (``tasksim.weightfit``; ``experiment.refine_weights``): each weight times a factor in [0.5, 2]."""
        ranking = self.config.ranking
        if not self.config.experiment.refine_weights:
            return ranking
        from tasksim import weightfit

        factors = weightfit.load_factors(self.store)
        if not factors:
            return ranking
        weights = weightfit.refine_weights({**DEFAULT_WEIGHTS, **ranking.weights}, factors)
        return ranking.model_copy(update={"weights": weights})

    def recommend(self, ranking: Ranking | None, profiles: list[SourceProfile], sampled: SampledWindow,
                  drift: DriftVerdict | None) -> Recommendation:
        from tasksim.experiment import gate_switch

        _, labels = transfer_rows(_labels_of(sampled.window, self.config.production.label_column))
        rec = recommend(ranking, self.config.deployed_source, self.config.ranking,
                        measures={p.source: p.measures for p in profiles},
                        drift_kind=drift.kind if drift is not None else "none", labelled_rows=len(labels or []),
                        classes=len(set(labels or [])) or None,
                        failed={p.source: p.error or "" for p in profiles if p.status != "ok"})
        # the switch rule with evidence: experiment.require_validation keeps the deployed source until an
        # experiment validated the switch (tasksim.experiment)
        return gate_switch(rec, self.store, self.config.experiment.require_validation)

    def rank_now(self) -> RankNow:
        """Sample, embed, profile and rank the current window without recording a cycle
        (``tasksim rank``, ``Monitor.rank``). Raises ``DataError`` when the window has no valid rows."""
        sampled = self.sample()
        if sampled.empty:
            raise DataError(f"{self.config.production.path}: the current production window "
                            f"{sampled.start} .. {sampled.end} has no valid rows to rank against")
        features = self.embed(sampled)
        if not _distinct_rows(features.current_features):
            raise DataError(f"{self.config.production.path}: the current production window {sampled.start} .. "
                            f"{sampled.end} holds one input repeated ({sampled.window.table.num_rows} rows): "
                            "nothing to rank against")
        profiles = self.profile(sampled, features)
        return RankNow(sampled, profiles, self.rank(profiles, sampled))

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
            rows_dropped=result.rows_dropped, error=result.error,
            drift=result.drift.to_dict() if result.drift is not None else None, device=result.device,
            sources=tuple(records), decision=decision, files_skipped=tuple(result.files_skipped),
            state_updates={**self._state_updates(next_cursor),
                           **(self._drift_state if result.status == "success" else {})},
        )
        result.cycle_id = self.store.record_cycle(record)
        return result

    def _state_updates(self, next_cursor: datetime | None) -> dict[str, str]:
        updates = {CURSOR_KEY: next_cursor.isoformat()} if next_cursor else {}
        if self._file_ranges is not None:
            updates[FILE_RANGES_KEY] = json.dumps(self._file_ranges, separators=(",", ":"))
        return updates

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
            "ranking": result.ranking.entries_to_dicts() if result.ranking else [],
            "pareto_front": list(result.ranking.pareto_front) if result.ranking else [],
            "profile": {p.source: {"status": p.status, "error": p.error, "measures": p.measures,
                                   **({"data": p.data_fingerprint} if p.data_fingerprint else {}),
                                   **({"carried": p.carried} if p.carried else {})}
                        for p in result.profiles},
            "weights": result.ranking.weights if result.ranking else {},
            "reliability": result.ranking.reliability if result.ranking else {},
            "drift_detected": bool(result.drift and result.drift.drifted),
            "drift_kind": result.drift.kind if result.drift else None,
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
            result.files_skipped = [{"path": p, "reason": r} for p, r in sampled.window.skipped_files]
            next_cursor = sampled.next_cursor
            if sampled.empty:
                result.status = "no_data"
                result.error = "the production window has no valid rows; the last ranking stands"
                return self.finish(result, next_cursor)
            if result.rows_sampled < MIN_RANKING_ROWS:
                result.status = "insufficient_data"
                result.error = (f"the production window has {result.rows_sampled} valid row(s), fewer than the "
                                f"{MIN_RANKING_ROWS} any ranking needs; the last ranking stands")
                return self.finish(result, next_cursor)
            features = step("embed", self.embed, sampled)
            result.drift = step("drift", self.drift, sampled, features)
            result.late_drift = self.late_drift
            if not _distinct_rows(features.current_features):
                # a stuck feed (one input repeated): drift is tested, but no measure can tell the
                # sources apart on one point, and a ranking of it would still look confident
                result.status = "insufficient_data"
                result.error = (f"the production window's {result.rows_sampled} valid rows are all the same input: "
                                "no measure can tell the sources apart on one point; the last ranking stands")
                return self.finish(result, next_cursor)
            result.profiles = step("profile", self.profile, sampled, features)
            result.ranking = step("rank", self.rank, result.profiles, sampled)
            result.recommendation = step("recommend", self.recommend, result.ranking, result.profiles, sampled,
                                         result.drift)
            return self.finish(result, next_cursor)
        except Exception as exc:  # record every failure as a failed cycle, then re-raise it
            result.status = "failed"
            result.error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, DataError) else str(exc)
            log.error("cycle failed: %s", result.error)
            # a failed cycle does not move the cursor: the window is retried next time
            self.finish(result, None)
            raise


def _distinct_rows(features: torch.Tensor) -> bool:
    """Whether the rows hold at least two different inputs (one pass: every row against the first)."""
    return features.shape[0] >= 2 and bool((features != features[:1]).any())


@dataclass(frozen=True)
class RankNow:
    """A ranking of the current window without a recorded cycle (``tasksim rank``)."""

    sampled: SampledWindow
    profiles: list[SourceProfile]
    ranking: Ranking | None


def rank_now(config: Config) -> RankNow:
    """Sample, embed, profile and rank the current window; nothing is written to the decision log."""
    cycle = Cycle(config)
    try:
        return cycle.rank_now()
    finally:
        cycle.store.close()


def run_cycle(config: Config, *, now: datetime | None = None) -> CycleResult:
    """Run one cycle in process and return its result (also written to the store)."""
    cycle = Cycle(config, now=now)
    try:
        return cycle.run()
    finally:
        cycle.store.close()
