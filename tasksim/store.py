"""The state store: one SQLite database per deployment, written one transaction per cycle.

Everything the exporter, ``tasksim history`` and the next cycle need lives here, so results survive
restarts and reach the metrics endpoint from the subprocesses Prefect runs flows in. A cycle is
written in a single transaction (all of it or nothing); WAL mode lets the exporter read while a
flow writes. The decision log is append-only: rows are inserted, never updated.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasksim.errors import StoreError

__all__ = ["CycleRecord", "SourceRecord", "Snapshot", "Store", "STORE_FILENAME"]

STORE_FILENAME = "tasksim.sqlite"
_SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cycles (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at REAL NOT NULL,
    finished_at REAL NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('success', 'failed', 'no_data')),
    config_hash TEXT NOT NULL,
    window_start TEXT,
    window_end TEXT,
    rows_sampled INTEGER NOT NULL DEFAULT 0,
    rows_total INTEGER NOT NULL DEFAULT 0,
    rows_dropped INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    drift_json TEXT,
    device TEXT
);
CREATE TABLE IF NOT EXISTS source_results (
    cycle_id INTEGER NOT NULL REFERENCES cycles(id),
    source TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'failed', 'excluded')),
    error TEXT,
    score REAL,
    rank INTEGER,
    top1_probability REAL,
    similarity_json TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (cycle_id, source)
);
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    cycle_id INTEGER NOT NULL REFERENCES cycles(id),
    created_at REAL NOT NULL,
    deployed_source TEXT NOT NULL,
    recommended_source TEXT,
    action TEXT NOT NULL,
    rationale TEXT NOT NULL,
    record_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS source_results_failed ON source_results(source, status);
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class SourceRecord:
    """One source's outcome in one cycle."""

    source: str
    status: str  # ok | failed | excluded
    error: str | None = None
    score: float | None = None
    rank: int | None = None
    top1_probability: float | None = None
    similarity: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class CycleRecord:
    """Everything one cycle produced, written in one transaction."""

    started_at: float
    finished_at: float
    status: str  # success | failed | no_data
    config_hash: str
    window_start: str | None = None
    window_end: str | None = None
    rows_sampled: int = 0
    rows_total: int = 0
    rows_dropped: int = 0
    error: str | None = None
    drift: dict[str, Any] | None = None
    device: str | None = None
    sources: tuple[SourceRecord, ...] = ()
    decision: dict[str, Any] | None = None  # deployed_source, recommended_source, action, rationale, ...
    state_updates: dict[str, str] = field(default_factory=dict)

    @property
    def duration_seconds(self) -> float:
        return self.finished_at - self.started_at


@dataclass(frozen=True)
class Snapshot:
    """What the exporter shows: the latest state, read in one consistent transaction."""

    cycles_by_status: dict[str, int]
    errors_by_source: dict[str, int]
    last_cycle: dict[str, Any] | None
    last_success_at: float | None
    last_drift: dict[str, Any] | None
    last_sources: tuple[SourceRecord, ...]
    last_decision: dict[str, Any] | None
    failed_sources: tuple[str, ...]


class Store:
    """SQLite state store in ``state_dir``. Cheap to open; one connection per instance."""

    def __init__(self, state_dir: str | Path) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / STORE_FILENAME
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            self._conn.row_factory = sqlite3.Row
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._conn.executescript(_SCHEMA)
            self._conn.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)", (str(_SCHEMA_VERSION),)
            )
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot open the state store ({exc})") from None

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Cursor]:
        cur = self._conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            yield cur
        except BaseException:  # roll back on anything, KeyboardInterrupt included, then re-raise
            cur.execute("ROLLBACK")
            raise
        else:
            cur.execute("COMMIT")

    # -- writing -----------------------------------------------------------------------------
    def record_cycle(self, record: CycleRecord) -> int:
        """Write one cycle (its sources, decision and state updates) atomically; return its id."""
        try:
            with self._transaction() as cur:
                cur.execute(
                    "INSERT INTO cycles(started_at, finished_at, status, config_hash, window_start, window_end,"
                    " rows_sampled, rows_total, rows_dropped, error, drift_json, device)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        record.started_at, record.finished_at, record.status, record.config_hash,
                        record.window_start, record.window_end, record.rows_sampled, record.rows_total,
                        record.rows_dropped, record.error,
                        json.dumps(record.drift) if record.drift is not None else None, record.device,
                    ),
                )
                cycle_id = int(cur.lastrowid)
                cur.executemany(
                    "INSERT INTO source_results(cycle_id, source, status, error, score, rank, top1_probability,"
                    " similarity_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (cycle_id, s.source, s.status, s.error, s.score, s.rank, s.top1_probability,
                         json.dumps(s.similarity, allow_nan=True))
                        for s in record.sources
                    ],
                )
                if record.decision is not None:
                    d = record.decision
                    cur.execute(
                        "INSERT INTO decisions(cycle_id, created_at, deployed_source, recommended_source, action,"
                        " rationale, record_json) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (cycle_id, record.finished_at, d["deployed_source"], d.get("recommended_source"),
                         d["action"], d.get("rationale", ""), json.dumps(d, default=str)),
                    )
                cur.executemany(
                    "INSERT INTO kv(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    list(record.state_updates.items()),
                )
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot write cycle ({exc})") from None
        return cycle_id

    # -- reading -----------------------------------------------------------------------------
    def get_state(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row["value"])

    def set_state(self, key: str, value: str) -> None:
        """Store a derived value (a cache entry such as calibrated thresholds) outside any cycle."""
        try:
            with self._transaction() as cur:
                cur.execute("INSERT INTO kv(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET"
                            " value = excluded.value", (key, value))
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot write state ({exc})") from None

    def snapshot(self) -> Snapshot:
        """The latest state for the exporter, read in one transaction so it is consistent."""
        conn = self._conn
        conn.execute("BEGIN")
        try:
            by_status = {r["status"]: int(r["n"]) for r in
                         conn.execute("SELECT status, COUNT(*) AS n FROM cycles GROUP BY status")}
            errors = {r["source"]: int(r["n"]) for r in conn.execute(
                "SELECT source, COUNT(*) AS n FROM source_results WHERE status = 'failed' GROUP BY source")}
            last = conn.execute("SELECT * FROM cycles ORDER BY id DESC LIMIT 1").fetchone()
            last_success = conn.execute("SELECT MAX(finished_at) AS t FROM cycles WHERE status = 'success'").fetchone()
            drift_row = conn.execute(
                "SELECT drift_json FROM cycles WHERE drift_json IS NOT NULL ORDER BY id DESC LIMIT 1").fetchone()
            _, sources = self.last_ranking()
            failed: tuple[str, ...] = ()
            if last is not None:
                failed = tuple(r["source"] for r in conn.execute(
                    "SELECT source FROM source_results WHERE cycle_id = ? AND status = 'failed'", (last["id"],)))
            decision = conn.execute("SELECT record_json FROM decisions ORDER BY id DESC LIMIT 1").fetchone()
        finally:
            conn.execute("COMMIT")
        return Snapshot(
            cycles_by_status=by_status,
            errors_by_source=errors,
            last_cycle=dict(last) if last is not None else None,
            last_success_at=last_success["t"],
            last_drift=json.loads(drift_row["drift_json"]) if drift_row else None,
            last_sources=sources,
            last_decision=json.loads(decision["record_json"]) if decision else None,
            failed_sources=failed,
        )

    def _source_rows(self, cycle_id: int) -> Iterator[SourceRecord]:
        for r in self._conn.execute(
            "SELECT * FROM source_results WHERE cycle_id = ? ORDER BY COALESCE(rank, 1e9), source", (cycle_id,)
        ):
            yield SourceRecord(
                source=r["source"], status=r["status"], error=r["error"], score=r["score"], rank=r["rank"],
                top1_probability=r["top1_probability"], similarity=json.loads(r["similarity_json"]),
            )

    def last_ranking(self) -> tuple[int | None, tuple[SourceRecord, ...]]:
        """The most recent cycle that produced a ranking, and its source rows."""
        row = self._conn.execute(
            "SELECT MAX(cycle_id) AS c FROM source_results WHERE status = 'ok' AND rank IS NOT NULL").fetchone()
        if row["c"] is None:
            return None, ()
        return int(row["c"]), tuple(self._source_rows(int(row["c"])))

    def decisions(self, limit: int = 20) -> list[dict[str, Any]]:
        """The decision log, newest first."""
        rows = self._conn.execute(
            "SELECT d.id, d.cycle_id, d.record_json, c.window_start, c.window_end FROM decisions d"
            " JOIN cycles c ON c.id = d.cycle_id ORDER BY d.id DESC LIMIT ?", (limit,)).fetchall()
        out = []
        for r in rows:
            rec = json.loads(r["record_json"])
            rec.update(decision_id=r["id"], cycle_id=r["cycle_id"], window_start=r["window_start"],
                       window_end=r["window_end"])
            out.append(rec)
        return out

    def cycles(self, limit: int = 20) -> list[dict[str, Any]]:
        return [dict(r) for r in self._conn.execute("SELECT * FROM cycles ORDER BY id DESC LIMIT ?", (limit,))]

    def source_history(self, source: str, limit: int = 20) -> list[dict[str, Any]]:
        rows = self._conn.execute(
            "SELECT s.*, c.window_start, c.window_end, c.finished_at FROM source_results s"
            " JOIN cycles c ON c.id = s.cycle_id WHERE s.source = ? ORDER BY s.cycle_id DESC LIMIT ?",
            (source, limit)).fetchall()
        out = []
        for r in rows:
            d = dict(r)
            d["similarity"] = json.loads(d.pop("similarity_json"))
            out.append(d)
        return out
