"""Prometheus exposition, read from the state store at scrape time.

Flows run in subprocesses (Prefect ``serve``), so nothing a flow holds in memory reaches the
daemon. The collector below reads the store's latest snapshot on every scrape instead: values
survive restarts and are consistent (one read transaction). Labels are bounded: configured
source names, measure names, monitored column names and a few fixed enums.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tasksim import __version__
from tasksim.drift import DRIFT_KINDS, DriftVerdict
from tasksim.store import CYCLE_STATUSES, Snapshot, Store

__all__ = ["METRIC_NAMES", "StoreCollector", "build_registry", "registry_for", "start_metrics_server"]

log = logging.getLogger(__name__)

# name (as exposed) -> (type, help). The single list dashboards and alert rules are tested against.
METRIC_NAMES: dict[str, tuple[str, str]] = {
    "tasksim_build_info": ("gauge", "tasksim version (value 1)."),
    "tasksim_store_up": ("gauge", "1 if the state store could be read at this scrape."),
    "tasksim_schedule_interval_seconds": ("gauge", "Longest expected time between two scheduled cycles."),
    "tasksim_cycle_last_success_timestamp_seconds": ("gauge", "Unix time of the last successful cycle."),
    "tasksim_cycle_duration_seconds": ("gauge", "Duration of the last cycle."),
    "tasksim_cycles_total": ("counter", "Cycles run, by status (success, failed, no_data, insufficient_data)."),
    "tasksim_window_files_skipped_total": ("counter", "Production files left out of windows as unreadable."),
    "tasksim_window_rows": ("gauge", "Rows of the last production window (kind: total, sampled, dropped_invalid)."),
    "tasksim_drift_detected": ("gauge", ("1 if the last window with data drifted from the reference; with label "
                                         "kind (input, label_prior, concept): 1 if that is the kind named.")),
    "tasksim_drift_share_ratio": ("gauge", "Share of monitored columns that drifted in the last window."),
    "tasksim_drift_column_score": ("gauge", "Per-column drift statistic of the last window."),
    "tasksim_drift_column_threshold": ("gauge", "Calibrated threshold of the per-column drift statistic."),
    "tasksim_drift_column_drifted": ("gauge", "1 if the column drifted in the last window (family-wise calibrated)."),
    "tasksim_drift_test_fired": ("gauge", ("1 if the drift test (columns, mmd, cusum, label_prior, bbse, concept) "
                                           "fired in the last window.")),
    "tasksim_drift_test_testable": ("gauge", "1 if the drift test could run on the last window, 0 if not testable."),
    "tasksim_drift_test_statistic": ("gauge", "Statistic of the drift test in the last window."),
    "tasksim_drift_test_threshold": ("gauge", ("Calibrated threshold of the drift test: of its statistic, or of its "
                                               "p-value for tests with one (label_prior, bbse, concept).")),
    "tasksim_drift_test_p_value": ("gauge", "Monte-Carlo p-value of the drift test, for tests with one."),
    "tasksim_source_similarity": ("gauge", "Raw similarity/transferability measure of a source to the target."),
    "tasksim_source_score": ("gauge", "Composite score of a source in [0, 1], higher is better."),
    "tasksim_source_rank": ("gauge", "Rank of a source in the last ranking (1 = best)."),
    "tasksim_source_top1_probability": ("gauge", "Bootstrap probability that the source is the best."),
    "tasksim_source_failed": ("gauge", "1 if the source failed in the last cycle."),
    "tasksim_source_errors_total": ("counter", "Cycles in which the source failed."),
    "tasksim_recommendation_info": ("gauge", "The current recommendation (value 1)."),
    "tasksim_trial_score": ("gauge", ("Test accuracy of a source fine-tuned with a strategy in the last finished "
                                      "experiment (mean over seeds).")),
    "tasksim_experiment_prediction_tau": ("gauge", ("Weighted Kendall tau between the predicted order of the "
                                                    "sources and the last experiment's outcome.")),
    "tasksim_recommendation_validated": ("gauge", ("1 if the last finished experiment validated the recommendation, "
                                                   "0 if it overturned it.")),
    "tasksim_experiment_last_timestamp_seconds": ("gauge", "Unix time the last experiment finished."),
}


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _family(name: str, labels: list[str] | None = None) -> GaugeMetricFamily | CounterMetricFamily:
    kind, documentation = METRIC_NAMES[name]
    if kind == "counter":
        return CounterMetricFamily(name.removesuffix("_total"), documentation, labels=labels)
    return GaugeMetricFamily(name, documentation, labels=labels)


class StoreCollector(Collector):
    """Collects tasksim metrics from the state store at ``state_dir`` on each scrape."""

    def __init__(self, state_dir: str | Path, *, sources: list[str] | None = None,
                 schedule_interval_seconds: float | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.sources = list(sources or [])
        self.schedule_interval_seconds = schedule_interval_seconds
        # cycles in the store (every status) as last served to a scrape; None until one is served
        self.scraped_cycles: int | None = None

    def describe(self) -> list[Metric]:  # avoid a store read at registration time
        return []

    def collect(self) -> Iterator[Metric]:
        build = _family("tasksim_build_info", ["version"])
        build.add_metric([__version__], 1.0)
        yield build
        if self.schedule_interval_seconds is not None:
            # Staleness alerts compare the last success with a multiple of this (any schedule).
            interval = _family("tasksim_schedule_interval_seconds")
            interval.add_metric([], float(self.schedule_interval_seconds))
            yield interval
        up = _family("tasksim_store_up")
        try:
            # read-only: a scrape never takes the store's write lock, never creates or migrates it
            with Store(self.state_dir, readonly=True) as store:
                snap = store.snapshot()
        except Exception as exc:  # noqa: BLE001 - a scrape must never fail because the store is busy or missing
            log.warning("metrics: cannot read the state store in %s: %s", self.state_dir, exc)
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        yield from self._from_snapshot(snap)
        self.scraped_cycles = snap.cycles_recorded

    def _from_snapshot(self, snap: Snapshot) -> Iterator[Metric]:
        cycles = _family("tasksim_cycles_total", ["status"])
        for status in CYCLE_STATUSES:
            cycles.add_metric([status], float(snap.cycles_by_status.get(status, 0)))
        yield cycles
        skipped = _family("tasksim_window_files_skipped_total")
        skipped.add_metric([], float(snap.files_skipped_total))
        yield skipped

        if snap.last_success_at is not None:
            last = _family("tasksim_cycle_last_success_timestamp_seconds")
            last.add_metric([], float(snap.last_success_at))
            yield last
        if snap.last_cycle is not None:
            duration = _family("tasksim_cycle_duration_seconds")
            duration.add_metric([], float(snap.last_cycle["finished_at"] - snap.last_cycle["started_at"]))
            yield duration
            rows = _family("tasksim_window_rows", ["kind"])
            rows.add_metric(["total"], float(snap.last_cycle["rows_total"]))
            rows.add_metric(["sampled"], float(snap.last_cycle["rows_sampled"]))
            rows.add_metric(["dropped_invalid"], float(snap.last_cycle["rows_dropped"]))
            yield rows

        if snap.last_drift is not None:
            yield from _drift_families(DriftVerdict.from_dict(snap.last_drift))

        similarity = _family("tasksim_source_similarity", ["source", "metric"])
        composite = _family("tasksim_source_score", ["source"])
        rank = _family("tasksim_source_rank", ["source"])
        top1 = _family("tasksim_source_top1_probability", ["source"])
        for rec in snap.last_sources:
            for metric, value in sorted(rec.similarity.items()):
                if _finite(value):
                    similarity.add_metric([rec.source, metric], float(value))
            if rec.status != "ok":
                continue
            if _finite(rec.score):
                composite.add_metric([rec.source], float(rec.score))
            if rec.rank is not None:
                rank.add_metric([rec.source], float(rec.rank))
            if _finite(rec.top1_probability):
                top1.add_metric([rec.source], float(rec.top1_probability))
        yield from (similarity, composite, rank, top1)

        failed = _family("tasksim_source_failed", ["source"])
        errors = _family("tasksim_source_errors_total", ["source"])
        names = sorted(set(self.sources) | set(snap.errors_by_source) | {r.source for r in snap.last_sources})
        for name in names:
            failed.add_metric([name], 1.0 if name in snap.failed_sources else 0.0)
            errors.add_metric([name], float(snap.errors_by_source.get(name, 0)))
        yield from (failed, errors)

        if snap.last_decision is not None:
            d = snap.last_decision
            info = _family("tasksim_recommendation_info", ["deployed_source", "recommended_source", "action"])
            info.add_metric([d["deployed_source"], d.get("recommended_source") or "", d["action"]], 1.0)
            yield info
        if snap.last_experiment is not None:
            yield from _experiment_families(snap.last_experiment)


def _experiment_families(e: dict[str, Any]) -> Iterator[Metric]:
    """The last finished experiment: trial scores (mean over seeds), tau, verdict, when."""
    outcome = e.get("outcome") or {}
    score = _family("tasksim_trial_score", ["source", "strategy"])
    for source, by_strategy in sorted((outcome.get("strategy_scores") or {}).items()):
        for strategy, value in sorted(by_strategy.items()):
            if _finite(value):
                score.add_metric([source, strategy], float(value))
    yield score
    if _finite(e.get("tau")):
        tau = _family("tasksim_experiment_prediction_tau")
        tau.add_metric([], float(e["tau"]))
        yield tau
    if e.get("verdict") in ("validated", "overturned"):
        validated = _family("tasksim_recommendation_validated")
        validated.add_metric([], 1.0 if e["verdict"] == "validated" else 0.0)
        yield validated
    if _finite(e.get("finished_at")):
        last = _family("tasksim_experiment_last_timestamp_seconds")
        last.add_metric([], float(e["finished_at"]))
        yield last


def _drift_families(verdict: DriftVerdict) -> Iterator[Metric]:
    """The drift verdict: detected (unlabelled, and one series per kind), per column, per test."""
    detected = _family("tasksim_drift_detected")
    detected.add_metric([], 1.0 if verdict.drifted else 0.0)
    for kind in DRIFT_KINDS:  # same family, bounded label: the existing unlabelled series stays
        detected.add_sample("tasksim_drift_detected", {"kind": kind}, 1.0 if verdict.kind == kind else 0.0)
    share = _family("tasksim_drift_share_ratio")
    share.add_metric([], float(verdict.share))
    score = _family("tasksim_drift_column_score", ["column"])
    threshold = _family("tasksim_drift_column_threshold", ["column"])
    drifted = _family("tasksim_drift_column_drifted", ["column"])
    for col in verdict.columns:
        if _finite(col.score):
            score.add_metric([col.column], float(col.score))
        if _finite(col.threshold):
            threshold.add_metric([col.column], float(col.threshold))
        drifted.add_metric([col.column], 1.0 if col.drifted else 0.0)
    fired = _family("tasksim_drift_test_fired", ["test"])
    testable = _family("tasksim_drift_test_testable", ["test"])
    statistic = _family("tasksim_drift_test_statistic", ["test"])
    test_threshold = _family("tasksim_drift_test_threshold", ["test"])
    p_value = _family("tasksim_drift_test_p_value", ["test"])
    for test in verdict.tests:
        fired.add_metric([test.name], 1.0 if test.fired else 0.0)
        testable.add_metric([test.name], 0.0 if test.not_testable else 1.0)
        if _finite(test.statistic):
            statistic.add_metric([test.name], float(test.statistic))
        if _finite(test.threshold):
            test_threshold.add_metric([test.name], float(test.threshold))
        if _finite(test.p_value):
            p_value.add_metric([test.name], float(test.p_value))
    yield from (detected, share, score, threshold, drifted, fired, testable, statistic, test_threshold, p_value)


def build_registry(state_dir: str | Path, *, sources: list[str] | None = None,
                   schedule_interval_seconds: float | None = None) -> CollectorRegistry:
    """A fresh registry (no process/GC collectors) holding only the store collector."""
    return registry_for(StoreCollector(state_dir, sources=sources, schedule_interval_seconds=schedule_interval_seconds))


def registry_for(collector: StoreCollector) -> CollectorRegistry:
    """A fresh registry (no process/GC collectors) holding only ``collector`` (the daemon keeps the
    collector to see what the last scrape read)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def start_metrics_server(registry: CollectorRegistry, *, host: str = "127.0.0.1", port: int = 9108) -> Any:
    """Serve ``/metrics`` on ``host:port`` in a daemon thread; returns the server (``.shutdown()``)."""
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server
