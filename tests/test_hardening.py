"""Issue 16 hardening: store schema versions and migrations, retention, read-only readers, bad
production files and mid-stream schema changes, config validation (device, cron, time zone),
state_dir that is a file, one daemon per state dir, the Prefect server watchdog."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasksim import store as store_module
from tasksim.config import ProductionConfig, load_config
from tasksim.errors import ConfigError, DataError, StoreError, TasksimError
from tasksim.sample import sample_window
from tasksim.store import SCHEMA_VERSION, STORE_FILENAME, CycleRecord, SourceRecord, Store

UTC = timezone.utc
DAY0 = datetime(2024, 3, 1, tzinfo=UTC)

# The schema tasksim wrote before schema version 2 (a v1 store, as found on disk).
V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE cycles (id INTEGER PRIMARY KEY AUTOINCREMENT, started_at REAL NOT NULL, finished_at REAL NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('success', 'failed', 'no_data')), config_hash TEXT NOT NULL,
    window_start TEXT, window_end TEXT, rows_sampled INTEGER NOT NULL DEFAULT 0,
    rows_total INTEGER NOT NULL DEFAULT 0, rows_dropped INTEGER NOT NULL DEFAULT 0, error TEXT, drift_json TEXT,
    device TEXT);
CREATE TABLE source_results (cycle_id INTEGER NOT NULL REFERENCES cycles(id), source TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'failed', 'excluded')), error TEXT, score REAL, rank INTEGER,
    top1_probability REAL, similarity_json TEXT NOT NULL DEFAULT '{}', PRIMARY KEY (cycle_id, source));
CREATE TABLE decisions (id INTEGER PRIMARY KEY AUTOINCREMENT, cycle_id INTEGER NOT NULL REFERENCES cycles(id),
    created_at REAL NOT NULL, deployed_source TEXT NOT NULL, recommended_source TEXT, action TEXT NOT NULL,
    rationale TEXT NOT NULL, record_json TEXT NOT NULL);
CREATE INDEX source_results_failed ON source_results(source, status);
CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('schema_version', '1');
INSERT INTO cycles(started_at, finished_at, status, config_hash, window_start, window_end)
    VALUES (1, 2, 'success', 'h', 'w0', 'w1'), (3, 4, 'no_data', 'h', 'w1', 'w2');
INSERT INTO source_results VALUES (1, 'a', 'ok', NULL, 0.9, 1, 0.7, '{"mmd2": 0.1}'),
    (1, 'b', 'failed', 'broken', NULL, NULL, NULL, '{}'), (2, 'b', 'failed', 'broken', NULL, NULL, NULL, '{}');
INSERT INTO decisions(cycle_id, created_at, deployed_source, recommended_source, action, rationale, record_json)
    VALUES (1, 2, 'a', 'a', 'keep', 'a leads', '{"deployed_source": "a", "action": "keep", "changed": true}');
INSERT INTO kv VALUES ('window_cursor', '2026-01-01T02:00:00+00:00');
"""


def _v1_store(state_dir: Path) -> Path:
    state_dir.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(state_dir / STORE_FILENAME)
    conn.executescript(V1_SCHEMA)
    conn.close()
    return state_dir / STORE_FILENAME


def _cycle(i: int, status: str = "success", *, ranked: bool = True, changed: bool = False,
           finished: float | None = None) -> CycleRecord:
    sources = (SourceRecord("a", "ok", score=0.8, rank=1), SourceRecord("b", "failed", error="x")) if ranked \
        else (SourceRecord("b", "failed", error="x"),)
    return CycleRecord(started_at=float(i), finished_at=finished if finished is not None else float(i) + 1,
                       status=status, config_hash="h", window_start=f"w{i}", sources=sources,
                       drift={"detected": False, "share": 0.0, "columns": []},
                       decision={"deployed_source": "a", "recommended_source": "a", "action": "keep",
                                 "changed": changed} if status == "success" else None)


# ------------------------------------------------------------------ 1. schema versions


def test_newer_schema_store_is_refused_and_left_untouched(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        store.record_cycle(_cycle(1))
    conn = sqlite3.connect(tmp_path / STORE_FILENAME)
    conn.execute("PRAGMA journal_mode=DELETE")  # as a newer tasksim might leave it: must stay so
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    before = (tmp_path / STORE_FILENAME).read_bytes()
    for readonly in (False, True):
        with pytest.raises(StoreError) as info:
            Store(tmp_path, readonly=readonly)
        message = str(info.value)
        assert "\n" not in message and str(tmp_path / STORE_FILENAME) in message
        assert "99" in message and str(SCHEMA_VERSION) in message
    conn = sqlite3.connect(tmp_path / STORE_FILENAME)
    assert conn.execute("SELECT COUNT(*) FROM cycles").fetchone()[0] == 1
    conn.close()
    assert (tmp_path / STORE_FILENAME).read_bytes() == before


def test_cli_run_on_newer_store_exits_2_naming_both_versions(tmp_path: Path) -> None:
    from tasksim.cli import main
    from tests.conftest import make_tabular_workspace

    config_path = make_tabular_workspace(tmp_path / "ws", windows=1, rows_per_window=50)
    state = load_config(config_path).state_dir
    Store(state).close()
    conn = sqlite3.connect(state / STORE_FILENAME)
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    assert main(["run", "--config", str(config_path)]) == 2
    conn = sqlite3.connect(state / STORE_FILENAME)
    assert conn.execute("SELECT COUNT(*) FROM cycles").fetchone()[0] == 0  # nothing written
    conn.close()


def test_v1_store_is_migrated_forward_with_its_data(tmp_path: Path) -> None:
    _v1_store(tmp_path)
    with Store(tmp_path) as store:
        assert store.schema_version == SCHEMA_VERSION
        snap = store.snapshot()
        assert snap.cycles_by_status == {"success": 1, "no_data": 1}  # counters backfilled
        assert snap.errors_by_source == {"b": 2}
        assert [s.source for s in snap.last_sources if s.rank] == ["a"]
        assert store.get_state("window_cursor") == "2026-01-01T02:00:00+00:00"
        [decision] = store.decisions()
        assert decision["cycle_id"] == 1 and decision["window_start"] == "w0"
        # the new status is accepted after the migration
        store.record_cycle(CycleRecord(started_at=5, finished_at=6, status="insufficient_data", config_hash="h"))
        assert store.snapshot().cycles_by_status["insufficient_data"] == 1
    conn = sqlite3.connect(tmp_path / STORE_FILENAME)
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_failing_migration_step_rolls_back_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _v1_store(tmp_path)

    def half_then_fail(cur: sqlite3.Cursor) -> None:
        store_module._migrate_1_to_2(cur)
        raise sqlite3.OperationalError("disk I/O error (simulated)")

    monkeypatch.setitem(store_module._MIGRATIONS, 1, half_then_fail)
    with pytest.raises(StoreError, match="cannot open the state store"):
        Store(tmp_path)
    conn = sqlite3.connect(tmp_path / STORE_FILENAME)
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "1"
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "counters" not in tables and "cycles_new" not in tables
    assert conn.execute("SELECT COUNT(*) FROM cycles").fetchone()[0] == 2
    conn.close()
    monkeypatch.undo()
    with Store(tmp_path) as store:  # and the real migration still works afterwards
        assert store.schema_version == SCHEMA_VERSION


def test_foreign_database_is_not_written(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / STORE_FILENAME)
    conn.execute("CREATE TABLE customers (id INTEGER)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="not a tasksim state store"):
        Store(tmp_path)


# ------------------------------------------------------------------ 4. state_dir is a file


def test_state_dir_that_is_a_file_gives_one_line(tmp_path: Path) -> None:
    target = tmp_path / "state"
    target.write_text("not a directory")
    for readonly in (False, True):
        with pytest.raises(StoreError) as info:
            Store(target, readonly=readonly)
        assert "state_dir is not a directory" in str(info.value) and str(target) in str(info.value)


def test_cli_state_dir_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tasksim.cli import main
    from tests.conftest import make_tabular_workspace

    config_path = make_tabular_workspace(tmp_path / "ws", windows=1, rows_per_window=50)
    (config_path.parent / "state").write_text("oops")
    for command in ("run", "history"):
        assert main([command, "--config", str(config_path)]) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("tasksim:")]
        assert len(err) == 1 and "state_dir is not a directory" in err[0], err


# ------------------------------------------------------------------ 8. read-only readers


def test_readers_do_not_take_the_write_lock(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        store.record_cycle(_cycle(1))
    writer = sqlite3.connect(tmp_path / STORE_FILENAME, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # a cycle is being written
    done: list[object] = []

    def read() -> None:
        with Store(tmp_path, readonly=True) as reader:
            done.append(reader.snapshot().cycles_by_status)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(10)  # the old Store() waited up to 30 s for the write lock here
    writer.execute("ROLLBACK")
    writer.close()
    assert done == [{"success": 1}]


def test_history_and_explain_before_the_first_cycle_create_nothing(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from tasksim.cli import main

    config_path = _config_text(tmp_path, "")
    assert main(["history", "--config", str(config_path)]) == 0
    assert main(["explain", "near", "--config", str(config_path)]) == 0
    out = capsys.readouterr().out
    assert "no decisions recorded yet" in out and "no cycle has profiled this source yet" in out
    assert not load_config(config_path).state_dir.exists()


def test_readonly_store_never_writes(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no state store yet"):
        Store(tmp_path / "fresh", readonly=True)
    assert not (tmp_path / "fresh").exists()
    with Store(tmp_path) as store:
        store.record_cycle(_cycle(1))
    with Store(tmp_path, readonly=True) as reader:
        with pytest.raises(StoreError, match="readonly"):
            reader.set_state("k", "v")
        with pytest.raises(StoreError):
            reader.record_cycle(_cycle(2))
    _v1_store(tmp_path / "old")
    with pytest.raises(StoreError, match="older than"):  # readers never migrate
        Store(tmp_path / "old", readonly=True)


# ------------------------------------------------------------------ 9. retention


def test_retention_by_cycles_keeps_counters_and_changed_decisions(tmp_path: Path) -> None:
    with Store(tmp_path, retention_cycles=5) as store:
        for i in range(30):
            store.record_cycle(_cycle(i, changed=i in (0, 12)))
        assert store.count_cycles() == 5
        snap = store.snapshot()
        assert snap.cycles_by_status == {"success": 30}  # counters stay monotone
        assert snap.errors_by_source == {"b": 30}
        kept = [d["cycle_id"] for d in store.decisions(limit=100)]
        assert kept == [30, 29, 28, 27, 26, 13, 1]  # the last 5, and every change
        conn = store._conn
        assert conn.execute("SELECT COUNT(*) FROM source_results WHERE cycle_id <= 25").fetchone()[0] == 0


def test_retention_keeps_the_last_ranking_standing(tmp_path: Path) -> None:
    with Store(tmp_path, retention_cycles=3) as store:
        store.record_cycle(_cycle(0))
        for i in range(1, 10):
            store.record_cycle(_cycle(i, status="no_data", ranked=False))
        snap = store.snapshot()
        assert [s.source for s in snap.last_sources if s.rank] == ["a"]
        assert snap.last_success_at == 1.0 and snap.last_drift is not None
        assert store.count_cycles() == 4  # 3 newest + the one holding the last ranking


def test_retention_by_days(tmp_path: Path) -> None:
    now = time.time()
    with Store(tmp_path) as store:
        for i in range(5):
            store.record_cycle(_cycle(i, finished=now - (10 - i) * 86400 - 3600))  # 10..6 days (+1 h) old
    with Store(tmp_path, retention_days=7) as store:
        store.record_cycle(_cycle(9, finished=now))
        ages = sorted(round((now - c["finished_at"]) / 86400) for c in store.cycles(limit=100))
        assert ages == [0, 6]


def test_snapshot_queries_use_indexes_not_scans(tmp_path: Path) -> None:
    """Scrape time stays flat in the number of stored cycles: no snapshot query scans a table."""
    with Store(tmp_path) as store:
        for i in range(50):
            store.record_cycle(_cycle(i, status="success" if i % 3 else "no_data", ranked=bool(i % 3)))
        conn = store._conn
        queries = []
        original = conn.execute
        traced = sqlite3.connect(tmp_path / STORE_FILENAME)
        traced.set_trace_callback(queries.append)
        traced.row_factory = sqlite3.Row
        store._conn = traced
        store.snapshot()
        store._conn = conn
        plans = []
        for q in queries:
            if q.lstrip().upper().startswith("SELECT"):
                for row in traced.execute("EXPLAIN QUERY PLAN " + q):
                    plans.append((q, row[3]))
        traced.close()
        assert original is not None
    # allowed: the counters table (one row per status / source) and a primary-key walk from the
    # newest row that stops after one row
    scans = [(q, p) for q, p in plans if p.startswith("SCAN") and "counters" not in p
             and not q.rstrip().endswith("ORDER BY id DESC LIMIT 1")]
    assert plans and not scans, scans


# ------------------------------------------------------------------ 5, 6. config


def _config_text(tmp_path: Path, extra: str) -> Path:
    from tests.conftest import make_tabular_workspace

    path = make_tabular_workspace(tmp_path / "ws", windows=1, rows_per_window=20)
    path.write_text(path.read_text() + extra)
    return path


@pytest.mark.parametrize(("extra", "field", "detail"), [
    ("device: gpu\n", "device:", "'gpu'"),
    ("device: cuda:x\n", "device:", "'cuda:x'"),
])
def test_bad_device_is_a_config_error(tmp_path: Path, extra: str, field: str, detail: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_config_text(tmp_path, extra))
    assert field in str(info.value) and detail in str(info.value) and "\n" not in str(info.value)


def test_cuda_requested_without_cuda_is_a_config_error() -> None:
    import torch

    from tasksim.device import resolve_device

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="device: 'cuda' was requested but CUDA is not available"):
        resolve_device("cuda")
    assert str(resolve_device("cpu")) == "cpu"


@pytest.mark.parametrize(("schedule", "expected"), [
    ("{cron: '61 25 * * *'}", "schedule.cron: invalid cron expression '61 25 * * *'"),
    ("{cron: '0 9 * * 1-5', timezone: Mars/Olympus_Mons}", "schedule.timezone: unknown time zone 'Mars/Olympus_Mons'"),
    ("{interval: 1h, timezone: Nowhere/Land}", "schedule.timezone: unknown time zone"),
])
def test_cron_and_timezone_are_validated_like_prefect(tmp_path: Path, schedule: str, expected: str) -> None:
    path = _config_text(tmp_path, "")
    path.write_text(path.read_text().replace("schedule:\n  interval: 1h\n", f"schedule: {schedule}\n"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_valid_cron_and_timezone_pass_and_prefect_accepts_them(tmp_path: Path) -> None:
    from prefect.client.schemas.schedules import CronSchedule

    path = _config_text(tmp_path, "")
    path.write_text(path.read_text().replace("schedule:\n  interval: 1h\n",
                                             "schedule: {cron: '*/15 9-17 * * 1-5', timezone: Europe/Berlin}\n"))
    schedule = load_config(path).schedule
    CronSchedule(cron=schedule.cron, timezone=schedule.timezone)  # what serve() hands to Prefect


def test_cron_schedule_reaches_prefect_with_its_timezone(tmp_path: Path) -> None:
    from tasksim.daemon import schedule_kwargs

    path = _config_text(tmp_path, "")
    path.write_text(path.read_text().replace("schedule:\n  interval: 1h\n",
                                             "schedule: {cron: '0 9 * * *', timezone: Europe/Berlin}\n"))
    schedule = schedule_kwargs(load_config(path))["schedule"]
    assert (schedule.cron, schedule.timezone) == ("0 9 * * *", "Europe/Berlin")


def test_retention_config(tmp_path: Path) -> None:
    config = load_config(_config_text(tmp_path, "retention: {cycles: 100, days: 30}\n"))
    assert (config.retention.cycles, config.retention.days) == (100, 30)
    with pytest.raises(ConfigError, match="retention.cycles"):
        load_config(_config_text(tmp_path / "b", "retention: {cycles: 0}\n"))


# ------------------------------------------------------------------ 3, 7. bad files, schema changes


def _day(day: int, n: int = 200, *, vec: int | None = None, a_type: pa.DataType | None = None) -> pa.Table:
    rng = np.random.default_rng(day)
    base = (DAY0 + timedelta(days=day)).replace(tzinfo=None)
    cols = {"ts": pa.array([base + timedelta(seconds=int(s)) for s in np.sort(rng.integers(0, 86400, n))],
                           pa.timestamp("us")),
            "a": pa.array(rng.normal(size=n)).cast(a_type or pa.float64()), "label": rng.integers(0, 3, n)}
    if vec is not None:
        cols["v"] = pa.FixedSizeListArray.from_arrays(pa.array(rng.normal(size=n * vec), pa.float32()), vec)
    return pa.table(cols)


def _prod(root: Path, **kw: object) -> ProductionConfig:
    args: dict[str, object] = {"path": str(root), "timestamp_column": "ts", "feature_columns": ("a",),
                               "label_column": "label", "partitioning": None}
    args.update(kw)
    return ProductionConfig(**args)


def _days(root: Path, days: int = 3, **kw: object) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for d in range(days):
        path = root / f"day{d}.parquet"
        pq.write_table(_day(d, **kw), path, row_group_size=50)
        paths.append(path)
    return paths


def test_bad_files_in_the_window_are_skipped_and_named(tmp_path: Path) -> None:
    root = tmp_path / "prod"
    _days(root)
    (root / "day3-part.parquet").write_bytes(b"")  # still being written
    (root / "day4.parquet").write_bytes(b"PAR1 garbage, not parquet" * 20)
    window = sample_window(_prod(root), DAY0 + timedelta(days=1), DAY0 + timedelta(days=2), max_rows=1000, seed=0)
    assert window.table.num_rows == 200  # day 1 only
    skipped = dict(window.skipped_files)
    assert set(skipped) == {str(root / "day3-part.parquet"), str(root / "day4.parquet")}
    assert "zero bytes" in skipped[str(root / "day3-part.parquet")]
    assert "Parquet" in skipped[str(root / "day4.parquet")]
    with pytest.raises(DataError) as info:  # strict mode: the first bad file stops the window
        sample_window(_prod(root, on_bad_file="fail"), DAY0 + timedelta(days=1), DAY0 + timedelta(days=2),
                      max_rows=1000, seed=0)
    assert str(root / "day3-part.parquet") in str(info.value) and "\n" not in str(info.value)


def test_a_corrupt_first_file_does_not_hide_the_others(tmp_path: Path) -> None:
    root = tmp_path / "prod"
    _days(root)
    (root / "day0.parquet").write_bytes(b"x" * 500)
    window = sample_window(_prod(root), None, None, max_rows=1000, seed=0)
    assert window.table.num_rows == 400 and [p for p, _ in window.skipped_files] == [str(root / "day0.parquet")]


def test_files_known_to_lie_outside_the_window_are_not_opened(tmp_path: Path) -> None:
    root = tmp_path / "prod"
    paths = _days(root)
    ranges: dict[str, list[int]] = {}
    start, end = DAY0 + timedelta(days=2), DAY0 + timedelta(days=3)
    first = sample_window(_prod(root), start, end, max_rows=1000, seed=0, file_ranges=ranges)
    assert first.table.num_rows == 200 and len(ranges) == 3
    # day 0 turns unreadable without changing its size or mtime: only opening it would notice
    st = os.stat(paths[0])
    paths[0].write_bytes(b"\0" * st.st_size)
    os.utime(paths[0], ns=(st.st_atime_ns, st.st_mtime_ns))
    again = sample_window(_prod(root), start, end, max_rows=1000, seed=0, file_ranges=ranges)
    assert again.table.num_rows == 200 and again.skipped_files == ()
    unknown = sample_window(_prod(root), start, end, max_rows=1000, seed=0)  # no ranges: it is opened
    assert [p for p, _ in unknown.skipped_files] == [str(paths[0])]
    # the reference window (a time range of production data) uses the same ranges
    from tasksim.config import Config
    from tasksim.sample import load_reference

    config = Config.model_validate({
        "state_dir": str(tmp_path / "state"), "production": _prod(root).model_dump(),
        "reference": {"start": start.isoformat(), "end": end.isoformat()}, "deployed_source": "s",
        "sources": [{"name": "s", "path": str(paths[2]), "feature_columns": ["a"]}]})
    assert load_reference(config, file_ranges=ranges).skipped_files == ()
    assert [p for p, _ in load_reference(config).skipped_files] == [str(paths[0])]
    paths[1].unlink()
    sample_window(_prod(root), start, end, max_rows=1000, seed=0, file_ranges=ranges)
    assert not any(str(paths[1]) in key for key in ranges)  # forgotten files leave the cache


@pytest.mark.parametrize(("change", "column", "found"), [
    ("width", "v", "float>[8]"),
    ("string", "v", "string"),
    ("rename", "v", "not found"),
])
def test_mid_stream_schema_change_names_file_column_expected_found(tmp_path: Path, change: str, column: str,
                                                                   found: str) -> None:
    root = tmp_path / "prod"
    root.mkdir()
    pq.write_table(_day(0, vec=4), root / "day0.parquet")
    later = _day(1, vec=8)
    if change == "string":
        later = later.set_column(later.schema.get_field_index("v"), "v", pa.array(["1,2,3,4"] * later.num_rows))
    elif change == "rename":
        later = later.rename_columns(["ts", "a", "label", "vector"])
    pq.write_table(later, root / "day1.parquet")
    prod = _prod(root, feature_columns=("v",))
    window = (DAY0 + timedelta(days=1), DAY0 + timedelta(days=2))
    with pytest.raises(DataError) as info:  # the whole window changed: an error, not a silent no_data
        sample_window(prod, *window, max_rows=100, seed=0)
    message = str(info.value)
    assert "\n" not in message
    assert str(root / "day1.parquet") in message and repr(column) in message and found in message
    if change != "rename":
        assert "expected fixed_size_list<" in message and "float>[4]" in message  # what was expected
    # alongside a good file of the window, the changed one is skipped and named
    pq.write_table(_day(1, vec=4).slice(0, 10), root / "day1-good.parquet")
    ok = sample_window(prod, *window, max_rows=100, seed=0)
    assert ok.table.num_rows == 10 and [p for p, _ in ok.skipped_files] == [str(root / "day1.parquet")]


def test_widened_numeric_type_is_not_a_schema_change(tmp_path: Path) -> None:
    root = tmp_path / "prod"
    root.mkdir()
    pq.write_table(_day(0), root / "day0.parquet")
    pq.write_table(_day(1, a_type=pa.float32()), root / "day1.parquet")
    window = sample_window(_prod(root), None, None, max_rows=1000, seed=0)
    assert window.table.num_rows == 400 and window.skipped_files == ()


# ------------------------------------------------------------------ also in scope: daemon


def test_second_daemon_on_the_same_state_dir_is_refused(tmp_path: Path) -> None:
    from tasksim.daemon import DaemonLock

    with DaemonLock(tmp_path):
        with pytest.raises(TasksimError) as info:
            DaemonLock(tmp_path).acquire()
        assert f"PID {os.getpid()}" in str(info.value) and "\n" not in str(info.value)
    with DaemonLock(tmp_path):  # released on exit: a new daemon may start
        pass


def test_second_daemon_process_is_refused_with_one_line(tmp_path: Path) -> None:
    import sys

    from tasksim.daemon import DaemonLock

    config_path = _config_text(tmp_path, "")
    state = load_config(config_path).state_dir
    state.mkdir(parents=True, exist_ok=True)
    with DaemonLock(state):
        proc = subprocess.run([sys.executable, "-m", "tasksim.cli", "serve", "--config", str(config_path)],
                              check=False, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api"})
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "another tasksim daemon" in lines[0], lines


@pytest.mark.parametrize("field", ["metrics", "prefect"])
def test_a_port_held_by_another_program_stops_serve_at_once_with_one_line(tmp_path: Path, field: str) -> None:
    """Before: a held metrics port was a bind traceback after the Prefect server's start, and a
    Prefect port held by a non-Prefect program a start timeout."""
    import socket
    import sys

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        config_path = _config_text(tmp_path, f"{field}: {{port: {port}}}\n")
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # the daemon starts its own server
        proc = subprocess.run([sys.executable, "-m", "tasksim.cli", "serve", "--config", str(config_path)],
                              check=False, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [(f"tasksim: error: {field}.port: cannot listen on 127.0.0.1:{port} (Address already in use); "
                      "stop what holds it or pick another port")], lines


def test_watchdog_restarts_a_dead_server_then_gives_up(tmp_path: Path) -> None:
    from tasksim.daemon import PrefectServer, ServerWatchdog

    def fake() -> PrefectServer:
        return PrefectServer(api_url="http://127.0.0.1:1/api", process=subprocess.Popen(["sleep", "60"]),
                             log_path=tmp_path / "server.log")

    first = fake()
    fatal: list[str] = []
    started: list[PrefectServer] = []

    def restart() -> PrefectServer:
        if started:
            raise TasksimError("port 4200 is busy")
        started.append(fake())
        return started[-1]

    dog = ServerWatchdog(first, restart, fatal.append, interval=0.05, max_restarts=3).start()
    try:
        first.process.kill()
        deadline = time.monotonic() + 10
        while not started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(started) == 1 and dog.server is started[0] and started[0].process.poll() is None
        started[0].process.kill()
        while not fatal and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(fatal) == 1 and "could not be restarted: port 4200 is busy" in fatal[0]
    finally:
        dog.stop()
        for server in (first, *started):
            server.process.kill()
            server.process.wait()
