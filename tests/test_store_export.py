"""The state store and the Prometheus exposition read from it (golden file)."""

from __future__ import annotations

import os
import sqlite3
import threading
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tasksim.drift import ColumnDrift, DriftTest, DriftVerdict
from tasksim.export import METRIC_NAMES, build_registry, start_metrics_server
from tasksim.store import CycleRecord, SourceRecord, Store

GOLDEN = Path(__file__).parent / "golden" / "metrics.txt"


def _drift(share: float, detected: bool) -> dict:
    columns = (ColumnDrift("pc1", 0.01, 0.05, True, "ks"), ColumnDrift("pc2", 0.4, 0.05, False, "ks"))
    assert share == 0.5 and detected
    return DriftVerdict(
        drifted=detected, kind="input", columns=columns, reference_rows=1000, current_rows=500, labelled_rows=0,
        calibrated=True, false_alarm_rate=0.01, calibration_rows=256,
        tests=(DriftTest("columns", "input", True, statistic=2.33, threshold=2.0, evidence=("pc1",)),
               DriftTest("mmd", "input", False, statistic=1.5, threshold=4.0),
               DriftTest("cusum", "input", False, statistic=0.0, threshold=9.5),
               DriftTest("bbse", "label_prior", False, statistic=3.1, threshold=0.001, p_value=0.6),
               DriftTest("concept", "concept", False, not_testable="not testable: no labelled rows in the window")),
    ).to_dict()


def _populate(store: Store) -> None:
    store.record_cycle(CycleRecord(
        started_at=100.0, finished_at=112.5, status="success", config_hash="abc", window_start="w0",
        window_end="w1", rows_sampled=500, rows_total=800, rows_dropped=3, drift=_drift(0.5, True),
        sources=(
            SourceRecord("news", "ok", score=0.9, rank=1, top1_probability=0.8,
                         similarity={"logme": 1.25, "mmd2": 0.01}),
            SourceRecord("reviews", "ok", score=0.2, rank=2, top1_probability=0.2,
                         similarity={"logme": -0.5, "mmd2": 0.3}),
            SourceRecord("broken", "failed", error="missing column 'text'"),
        ),
        decision={"deployed_source": "reviews", "recommended_source": "news", "action": "switch",
                  "rationale": "news leads"},
    ))
    store.record_cycle(CycleRecord(started_at=200.0, finished_at=201.0, status="no_data", config_hash="abc",
                                   sources=(SourceRecord("broken", "failed", error="still missing"),)))
    experiment = store.preregister_experiment(
        created_at=300.0, trigger="cli", deployed_source="reviews", recommended_source="news",
        advised_strategy="linear_probe", split_hash="0123abcd", preregistration={"predicted_order": ["news", "reviews"]})
    store.record_trial(experiment, 0, source="news", strategy="linear_probe", seed=0, status="ok", score=0.9,
                       record={}, created_at=301.0)
    store.finish_experiment(experiment, status="finished", verdict="validated", tau=1.0, finished_at=310.0,
                            outcome={"strategy_scores": {"news": {"linear_probe": 0.9, "full": 0.85},
                                                         "reviews": {"linear_probe": 0.7}}})


def test_golden_exposition(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        _populate(store)
    text = generate_latest(build_registry(tmp_path, sources=["news", "reviews", "broken", "idle"])).decode()
    if os.environ.get("TASKSIM_UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


def test_exposition_names_follow_the_contract(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        _populate(store)
    text = generate_latest(build_registry(tmp_path, schedule_interval_seconds=300.0)).decode()
    seen = set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            seen.add(sample.name)
            assert sample.name.startswith("tasksim_")
            assert set(sample.labels) <= {"status", "source", "metric", "column", "kind", "test", "version",
                                          "deployed_source", "recommended_source", "action",
                                          "strategy"}
    assert seen == set(METRIC_NAMES), set(METRIC_NAMES) ^ seen


def test_exposition_after_empty_window_keeps_last_ranking(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        _populate(store)
        snap = store.snapshot()
    assert snap.cycles_by_status == {"success": 1, "no_data": 1}
    assert [s.source for s in snap.last_sources if s.rank] == ["news", "reviews"]
    assert snap.failed_sources == ("broken",)
    assert snap.errors_by_source == {"broken": 2}
    assert snap.last_decision["action"] == "switch"


def test_store_unreadable_gives_store_up_zero(tmp_path: Path) -> None:
    bad = tmp_path / "state"
    bad.mkdir()
    (bad / "tasksim.sqlite").write_bytes(b"this is not a database" * 100)
    text = generate_latest(build_registry(bad)).decode()
    assert "tasksim_store_up 0.0" in text
    assert "tasksim_cycles_total" not in text


def test_cycle_write_is_atomic(tmp_path: Path) -> None:
    """A failing insert leaves nothing half-written: the cycle row is rolled back with it."""
    with Store(tmp_path) as store:
        bad = CycleRecord(started_at=1, finished_at=2, status="success", config_hash="x",
                          sources=(SourceRecord("a", "ok"), SourceRecord("a", "ok")))  # duplicate key
        with pytest.raises(Exception):
            store.record_cycle(bad)
        assert store.cycles() == []
    conn = sqlite3.connect(tmp_path / "tasksim.sqlite")
    assert conn.execute("SELECT COUNT(*) FROM source_results").fetchone()[0] == 0


def test_concurrent_reader_and_writer(tmp_path: Path) -> None:
    """The exporter reads while a flow subprocess writes (WAL): no errors, monotone counters."""
    errors: list[Exception] = []

    def write() -> None:
        try:
            with Store(tmp_path) as store:
                for i in range(40):
                    store.record_cycle(CycleRecord(started_at=i, finished_at=i + 1, status="success",
                                                   config_hash="x", sources=(SourceRecord("a", "ok", rank=1),)))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    Store(tmp_path).close()
    thread = threading.Thread(target=write)
    thread.start()
    last = 0
    with Store(tmp_path) as reader:
        while thread.is_alive():
            n = reader.snapshot().cycles_by_status.get("success", 0)
            assert n >= last
            last = n
    thread.join()
    assert not errors
    with Store(tmp_path) as reader:
        assert reader.snapshot().cycles_by_status["success"] == 40


def test_http_endpoint_binds_loopback(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        _populate(store)
    server = start_metrics_server(build_registry(tmp_path), host="127.0.0.1", port=0)
    try:
        host, port = server.server_address[:2]
        assert host == "127.0.0.1"
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert 'tasksim_source_rank{source="news"} 1.0' in body
    finally:
        server.shutdown()


def test_schedule_interval_is_exported_when_known(tmp_path: Path) -> None:
    """Staleness alerts scale with the schedule: the daemon exports its longest expected gap."""
    with Store(tmp_path) as store:
        _populate(store)
    text = generate_latest(build_registry(tmp_path, schedule_interval_seconds=3600.0)).decode()
    assert "tasksim_schedule_interval_seconds 3600.0" in text
    assert "tasksim_schedule_interval_seconds" not in generate_latest(build_registry(tmp_path)).decode()


def test_cron_schedule_longest_gap() -> None:
    from datetime import timedelta

    from tasksim.config import ScheduleConfig

    assert ScheduleConfig(interval="5m").longest_gap() == timedelta(minutes=5)
    assert ScheduleConfig(cron="*/10 * * * *").longest_gap() == timedelta(minutes=10)
    assert ScheduleConfig(cron="0 9 * * 1-5").longest_gap() == timedelta(days=3)  # Friday to Monday


def test_the_collector_remembers_how_many_cycles_the_last_scrape_read(tmp_path: Path) -> None:
    from tasksim.export import StoreCollector, registry_for

    collector = StoreCollector(tmp_path)
    registry = registry_for(collector)
    assert collector.scraped_cycles is None  # nothing served yet
    with Store(tmp_path) as store:
        _populate(store)
    generate_latest(registry)
    assert collector.scraped_cycles == 2  # a success and a no_data cycle
    with Store(tmp_path) as store:
        store.record_cycle(CycleRecord(started_at=300.0, finished_at=301.0, status="no_data", config_hash="abc"))
    assert collector.scraped_cycles == 2  # the store alone does not move it: a scrape does
    generate_latest(registry)
    assert collector.scraped_cycles == 3
