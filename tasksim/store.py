"""The state store: one SQLite database per deployment, written one transaction per cycle.

Everything the exporter, ``tasksim history`` and the next cycle need lives here, so results survive
restarts and reach the metrics endpoint from the subprocesses Prefect runs flows in. A cycle is
written in a single transaction (all of it or nothing), together with its counters and the
retention pruning; WAL mode lets the exporter read while a flow writes.

Schema versions: ``meta.schema_version`` is checked on every open. A store from a newer tasksim is
refused (``StoreError``, exit 2) and never written; an older one is migrated forward one version at
a time, each step in its own transaction. Readers (the exporter, ``history``, ``explain``) open
the store read-only and never take its write lock.

Retention (``retention: {cycles: N, days: D}``) deletes the oldest cycles and their source rows.
Counters (cycles by status, source errors, skipped files) live in their own table, so they stay
monotone when rows are pruned and a scrape reads them in constant time. The decision log is
summarised, not lost: a pruned cycle's decision is kept when it changed the recommendation or
action (``changed``), so the log of changes is whole; repeated identical decisions go with their
cycles.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tasksim.errors import StoreError

__all__ = [
    "CYCLE_STATUSES",
    "SCHEMA_VERSION",
    "STORE_FILENAME",
    "CycleRecord",
    "Snapshot",
    "SourceRecord",
    "Store",
]

STORE_FILENAME = "tasksim.sqlite"
SCHEMA_VERSION = 3
CYCLE_STATUSES = ("success", "failed", "no_data", "insufficient_data")

# The newest schema, created as it is in a new store (older stores reach it through _MIGRATIONS).
_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE cycles (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at REAL NOT NULL,
    finished_at REAL NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('success', 'failed', 'no_data', 'insufficient_data')),
    config_hash TEXT NOT NULL,
    window_start TEXT,
    window_end TEXT,
    rows_sampled INTEGER NOT NULL DEFAULT 0,
    rows_total INTEGER NOT NULL DEFAULT 0,
    rows_dropped INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    drift_json TEXT,
    device TEXT,
    files_skipped_json TEXT
);
CREATE TABLE source_results (
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
CREATE TABLE decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    cycle_id INTEGER NOT NULL,
    created_at REAL NOT NULL,
    deployed_source TEXT NOT NULL,
    recommended_source TEXT,
    action TEXT NOT NULL,
    rationale TEXT NOT NULL,
    record_json TEXT NOT NULL,
    window_start TEXT,
    window_end TEXT,
    changed INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE counters (name TEXT NOT NULL, label TEXT NOT NULL, value REAL NOT NULL,
                       PRIMARY KEY (name, label));
"""

# v3: transfer experiments (tasksim.experiment). Append-only: a row is inserted once and never changed
# (triggers refuse UPDATE and DELETE). The preregistration is written before any trial, each trial as
# it ends (one transaction each), the outcome once at the end, or as 'interrupted' by the next run.
_EXPERIMENT_SCHEMA = """
CREATE TABLE experiments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at REAL NOT NULL,
    trigger TEXT NOT NULL,
    deployed_source TEXT NOT NULL,
    recommended_source TEXT,
    advised_strategy TEXT,
    split_hash TEXT NOT NULL,
    pid INTEGER,
    host TEXT,
    preregistration_json TEXT NOT NULL
);
CREATE TABLE experiment_trials (
    experiment_id INTEGER NOT NULL REFERENCES experiments(id),
    seq INTEGER NOT NULL,
    source TEXT NOT NULL,
    strategy TEXT NOT NULL,
    seed INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'failed', 'not_applicable', 'skipped')),
    score REAL,
    created_at REAL NOT NULL,
    record_json TEXT NOT NULL,
    PRIMARY KEY (experiment_id, seq)
);
CREATE TABLE experiment_outcomes (
    experiment_id INTEGER PRIMARY KEY REFERENCES experiments(id),
    finished_at REAL NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('finished', 'interrupted', 'failed')),
    verdict TEXT CHECK (verdict IN ('validated', 'overturned', 'inconclusive')),
    tau REAL,
    outcome_json TEXT NOT NULL
);
CREATE INDEX experiment_outcomes_status ON experiment_outcomes(status, experiment_id);
CREATE INDEX experiments_switch ON experiments(deployed_source, recommended_source, id);
CREATE TRIGGER experiments_append_only_u BEFORE UPDATE ON experiments
    BEGIN SELECT RAISE(ABORT, 'experiments are append-only'); END;
CREATE TRIGGER experiments_append_only_d BEFORE DELETE ON experiments
    BEGIN SELECT RAISE(ABORT, 'experiments are append-only'); END;
CREATE TRIGGER experiment_trials_append_only_u BEFORE UPDATE ON experiment_trials
    BEGIN SELECT RAISE(ABORT, 'experiment trials are append-only'); END;
CREATE TRIGGER experiment_trials_append_only_d BEFORE DELETE ON experiment_trials
    BEGIN SELECT RAISE(ABORT, 'experiment trials are append-only'); END;
CREATE TRIGGER experiment_outcomes_append_only_u BEFORE UPDATE ON experiment_outcomes
    BEGIN SELECT RAISE(ABORT, 'experiment outcomes are append-only'); END;
CREATE TRIGGER experiment_outcomes_append_only_d BEFORE DELETE ON experiment_outcomes
    BEGIN SELECT RAISE(ABORT, 'experiment outcomes are append-only'); END;
"""


def _statements(script: str) -> list[str]:
    """The statements of a schema script (trigger bodies kept whole)."""
    out, current = [], []
    for line in script.splitlines():
        current.append(line)
        text = "\n".join(current).strip()
        if text.endswith(";") and (not text.upper().startswith("CREATE TRIGGER") or text.upper().endswith("END;")):
            out.append(text)
            current = []
    rest = "\n".join(current).strip()
    if rest:
        out.append(rest)
    return [s for s in out if s.strip(" ;\n")]

# Indexes that keep every snapshot query a short index walk, whatever the number of stored cycles.
_INDEXES = """
CREATE INDEX IF NOT EXISTS source_results_failed ON source_results(source, status);
CREATE INDEX IF NOT EXISTS source_results_ranked ON source_results(cycle_id)
    WHERE status = 'ok' AND rank IS NOT NULL;
CREATE INDEX IF NOT EXISTS cycles_status ON cycles(status, id);
CREATE INDEX IF NOT EXISTS cycles_finished ON cycles(finished_at);
CREATE INDEX IF NOT EXISTS cycles_with_drift ON cycles(id) WHERE drift_json IS NOT NULL;
CREATE INDEX IF NOT EXISTS decisions_cycle ON decisions(cycle_id);
"""


def _migrate_1_to_2(cur: sqlite3.Cursor) -> None:
    """v2: the ``insufficient_data`` status and skipped files on cycles, decisions that outlive
    their cycle (window copied, ``changed`` flag, no foreign key), monotone counters, indexes.

    Tables are rebuilt as SQLite documents it (create ``<name>_new``, copy, drop, rename): renaming
    the old table away instead would rewrite the foreign keys that point at it."""
    for statement in _SCHEMA.split(";"):
        for table in ("cycles", "decisions"):
            if f"CREATE TABLE {table} " in statement:
                cur.execute(statement.replace(f"CREATE TABLE {table} ", f"CREATE TABLE {table}_new ", 1))
        if "CREATE TABLE counters " in statement:
            cur.execute(statement)
    cur.execute("INSERT INTO cycles_new(id, started_at, finished_at, status, config_hash, window_start, window_end,"
                " rows_sampled, rows_total, rows_dropped, error, drift_json, device)"
                " SELECT id, started_at, finished_at, status, config_hash, window_start, window_end, rows_sampled,"
                " rows_total, rows_dropped, error, drift_json, device FROM cycles")
    cur.execute("INSERT INTO decisions_new(id, cycle_id, created_at, deployed_source, recommended_source, action,"
                " rationale, record_json, window_start, window_end, changed)"
                " SELECT d.id, d.cycle_id, d.created_at, d.deployed_source, d.recommended_source, d.action,"
                " d.rationale, d.record_json, c.window_start, c.window_end,"
                " COALESCE(json_extract(d.record_json, '$.changed'), 1)"
                " FROM decisions d LEFT JOIN cycles c ON c.id = d.cycle_id")
    cur.execute("DROP TABLE decisions")
    cur.execute("DROP TABLE cycles")
    cur.execute("ALTER TABLE cycles_new RENAME TO cycles")
    cur.execute("ALTER TABLE decisions_new RENAME TO decisions")
    cur.execute("INSERT INTO counters(name, label, value)"
                " SELECT 'cycles_total', status, COUNT(*) FROM cycles GROUP BY status")
    cur.execute("INSERT INTO counters(name, label, value)"
                " SELECT 'source_errors_total', source, COUNT(*) FROM source_results WHERE status = 'failed'"
                " GROUP BY source")


def _migrate_2_to_3(cur: sqlite3.Cursor) -> None:
    """v3: the append-only experiment tables (preregistrations, trials, outcomes)."""
    for statement in _statements(_EXPERIMENT_SCHEMA):
        cur.execute(statement)


# from version -> the step that brings a store to version + 1
_MIGRATIONS: dict[int, Callable[[sqlite3.Cursor], None]] = {1: _migrate_1_to_2, 2: _migrate_2_to_3}


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
    status: str  # success | failed | no_data | insufficient_data
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
    files_skipped: tuple[dict[str, str], ...] = ()  # {"path": ..., "reason": ...} per skipped file

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
    files_skipped_total: int = 0
    last_experiment: dict[str, Any] | None = None  # the newest finished experiment (``Store.experiment``)

    @property
    def cycles_recorded(self) -> int:
        """Every cycle ever recorded, whatever its status (the monotone counters: retention does
        not lower it)."""
        return sum(self.cycles_by_status.values())


class Store:
    """SQLite state store in ``state_dir``. Cheap to open; one connection per instance.

    ``readonly=True`` (readers): never creates, migrates or writes, and takes no write lock; a
    missing store or one at another schema version raises ``StoreError``. ``retention_cycles`` /
    ``retention_days``: what ``record_cycle`` keeps (None: everything).
    """

    def __init__(self, state_dir: str | Path, *, readonly: bool = False, retention_cycles: int | None = None,
                 retention_days: float | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / STORE_FILENAME
        self.readonly = readonly
        self.retention_cycles = retention_cycles
        self.retention_days = retention_days
        self._conn = self._connect()
        try:
            self._conn.row_factory = sqlite3.Row
            if readonly:
                self._conn.execute("PRAGMA query_only=ON")
                self._check_version_readonly()
            else:
                version = self._version()  # a plain read: a refused store is not touched, not even its journal
                if version is not None:
                    self._refuse_newer(version)
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=NORMAL")
                self._prepare()
                self._conn.execute("PRAGMA foreign_keys=ON")
        except sqlite3.Error as exc:
            self._conn.close()
            raise StoreError(f"{self.path}: cannot open the state store ({exc})") from None
        except StoreError:
            self._conn.close()
            raise

    def _connect(self) -> sqlite3.Connection:
        if self.state_dir.exists() and not self.state_dir.is_dir():
            raise StoreError(f"{self.state_dir}: state_dir is not a directory (it is a file); "
                             "point state_dir at a directory")
        if self.readonly:
            if not self.path.is_file():
                raise StoreError(f"{self.path}: no state store yet (no cycle has run for this state_dir)")
            uri = f"file:{quote(str(self.path.resolve()))}?mode=ro"
            if not os.access(self.state_dir, os.W_OK) and not Path(f"{self.path}-shm").exists():
                # A read-only copy in a read-only directory: SQLite cannot create the WAL index there,
                # and no writer can change the file either, so it is read as immutable.
                uri += "&immutable=1"
            try:
                return sqlite3.connect(uri, uri=True, timeout=30.0, isolation_level=None, check_same_thread=False)
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: cannot open the state store read-only ({exc})") from None
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"{self.state_dir}: cannot create state_dir ({exc.strerror or exc})") from None
        try:
            return sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot open the state store ({exc})") from None

    # -- schema ------------------------------------------------------------------------------
    def _version(self) -> int | None:
        """The stored schema version; None for an empty database. Raises for a foreign database."""
        tables = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:
            return None
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() \
            if "meta" in tables else None
        if row is None:
            raise StoreError(f"{self.path}: not a tasksim state store (it has tables {sorted(tables)[:5]} but no "
                             "schema_version); point state_dir elsewhere")
        try:
            return int(row[0])
        except (TypeError, ValueError):
            raise StoreError(f"{self.path}: invalid schema_version {row[0]!r} in the state store") from None

    def _refuse_newer(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path}: the state store has schema version {version}, newer than this "
                             f"tasksim's {SCHEMA_VERSION}; upgrade tasksim (the store was left untouched)")

    def _check_version_readonly(self) -> None:
        version = self._version()
        if version is None:
            raise StoreError(f"{self.path}: no state store yet (the database is empty)")
        self._refuse_newer(version)
        if version < SCHEMA_VERSION:
            raise StoreError(f"{self.path}: the state store has schema version {version}, older than this "
                             f"tasksim's {SCHEMA_VERSION}; run one cycle (or `tasksim serve`) to migrate it")

    def _prepare(self) -> None:
        """Create a new store, refuse a newer one, or migrate an older one a step at a time."""
        with self._transaction() as cur:
            version = self._version()
            if version is None:
                # statement by statement: executescript() would commit the open transaction
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        cur.execute(statement)
                for statement in _statements(_EXPERIMENT_SCHEMA):
                    cur.execute(statement)
                for statement in _INDEXES.split(";"):
                    if statement.strip():
                        cur.execute(statement)
                cur.execute("INSERT INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                return
            self._refuse_newer(version)
        while version < SCHEMA_VERSION:
            self._migrate_step(version)
            version += 1

    def _migrate_step(self, version: int) -> None:
        step = _MIGRATIONS.get(version)
        if step is None:
            raise StoreError(f"{self.path}: no migration from schema version {version}")
        # Rebuilding tables needs foreign keys off, and that pragma is ignored inside a transaction.
        self._conn.execute("PRAGMA foreign_keys=OFF")
        with self._transaction() as cur:
            current = self._version()
            if current != version:  # another process migrated it meanwhile
                return
            step(cur)
            for statement in _INDEXES.split(";"):
                if statement.strip():
                    cur.execute(statement)
            cur.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version + 1),))
            if cur.execute("PRAGMA foreign_key_check").fetchone() is not None:
                raise StoreError(f"{self.path}: migration to schema version {version + 1} broke a foreign key; "
                                 "the store was left at its old version")

    @property
    def schema_version(self) -> int:
        return int(self._conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0])

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
        """Write one cycle (its sources, decision, counters and state updates) and prune by the
        retention policy, atomically; return its id."""
        if record.status not in CYCLE_STATUSES:
            raise StoreError(f"{self.path}: unknown cycle status {record.status!r}")
        try:
            with self._transaction() as cur:
                cur.execute(
                    "INSERT INTO cycles(started_at, finished_at, status, config_hash, window_start, window_end,"
                    " rows_sampled, rows_total, rows_dropped, error, drift_json, device, files_skipped_json)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        record.started_at, record.finished_at, record.status, record.config_hash,
                        record.window_start, record.window_end, record.rows_sampled, record.rows_total,
                        record.rows_dropped, record.error,
                        json.dumps(record.drift) if record.drift is not None else None, record.device,
                        json.dumps(list(record.files_skipped)) if record.files_skipped else None,
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
                        " rationale, record_json, window_start, window_end, changed)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (cycle_id, record.finished_at, d["deployed_source"], d.get("recommended_source"),
                         d["action"], d.get("rationale", ""), json.dumps(d, default=str), record.window_start,
                         record.window_end, int(bool(d.get("changed", True)))),
                    )
                counts = [("cycles_total", record.status, 1.0)]
                counts += [("source_errors_total", s.source, 1.0) for s in record.sources if s.status == "failed"]
                if record.files_skipped:
                    counts.append(("window_files_skipped_total", "", float(len(record.files_skipped))))
                cur.executemany(
                    "INSERT INTO counters(name, label, value) VALUES (?, ?, ?)"
                    " ON CONFLICT(name, label) DO UPDATE SET value = value + excluded.value", counts)
                cur.executemany(
                    "INSERT INTO kv(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    list(record.state_updates.items()),
                )
                self._prune(cur, cycle_id, record.finished_at)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot write cycle ({exc})") from None
        return cycle_id

    def _prune(self, cur: sqlite3.Cursor, newest: int, now: float) -> int:
        """Delete the cycles the retention policy no longer keeps (inside the caller's transaction).

        Never pruned: the newest cycle, and the cycles the exporter shows (the last ranking, the
        last success, the last drift result), so "the last ranking stands" holds under retention."""
        if self.retention_cycles is None and self.retention_days is None:
            return 0
        bounds = []
        if self.retention_cycles is not None:
            row = cur.execute("SELECT id FROM cycles ORDER BY id DESC LIMIT 1 OFFSET ?",
                              (self.retention_cycles,)).fetchone()
            if row is not None:
                bounds.append(("id <= ?", int(row[0])))
        if self.retention_days is not None:
            bounds.append(("finished_at < ?", now - self.retention_days * 86400.0))
        if not bounds:
            return 0
        keep = {newest}
        for query in ("SELECT MAX(cycle_id) FROM source_results WHERE status = 'ok' AND rank IS NOT NULL",
                      "SELECT id FROM cycles WHERE status = 'success' ORDER BY id DESC LIMIT 1",
                      "SELECT id FROM cycles WHERE drift_json IS NOT NULL ORDER BY id DESC LIMIT 1"):
            row = cur.execute(query).fetchone()
            if row is not None and row[0] is not None:
                keep.add(int(row[0]))
        where = " OR ".join(b for b, _ in bounds)
        marks = ",".join("?" * len(keep))
        victims = f"SELECT id FROM cycles WHERE ({where}) AND id NOT IN ({marks})"
        params = [v for _, v in bounds] + sorted(keep)
        cur.execute(f"DELETE FROM source_results WHERE cycle_id IN ({victims})", params)
        cur.execute(f"DELETE FROM decisions WHERE changed = 0 AND cycle_id IN ({victims})", params)
        cur.execute(f"DELETE FROM cycles WHERE id IN ({victims})", params)
        return cur.rowcount

    def set_state(self, key: str, value: str) -> None:
        """Store a derived value (a cache entry such as calibrated thresholds) outside any cycle."""
        try:
            with self._transaction() as cur:
                cur.execute("INSERT INTO kv(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET"
                            " value = excluded.value", (key, value))
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot write state ({exc})") from None

    # -- reading -----------------------------------------------------------------------------
    def get_state(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row["value"])

    def snapshot(self) -> Snapshot:
        """The latest state for the exporter, read in one transaction so it is consistent.

        Every query is a counter lookup or an index walk from the newest row: the time does not
        grow with the number of stored cycles."""
        conn = self._conn
        conn.execute("BEGIN")
        try:
            counters: dict[str, dict[str, int]] = {}
            for r in conn.execute("SELECT name, label, value FROM counters"):
                counters.setdefault(r["name"], {})[r["label"]] = int(r["value"])
            last = conn.execute("SELECT * FROM cycles ORDER BY id DESC LIMIT 1").fetchone()
            last_success = conn.execute(
                "SELECT finished_at FROM cycles WHERE status = 'success' ORDER BY id DESC LIMIT 1").fetchone()
            drift_row = conn.execute(
                "SELECT drift_json FROM cycles WHERE drift_json IS NOT NULL ORDER BY id DESC LIMIT 1").fetchone()
            _, sources = self.last_ranking()
            failed: tuple[str, ...] = ()
            if last is not None:
                failed = tuple(r["source"] for r in conn.execute(
                    "SELECT source FROM source_results WHERE cycle_id = ? AND status = 'failed'", (last["id"],)))
            decision = conn.execute("SELECT record_json FROM decisions ORDER BY id DESC LIMIT 1").fetchone()
            finished = conn.execute("SELECT experiment_id FROM experiment_outcomes WHERE status = 'finished'"
                                    " ORDER BY experiment_id DESC LIMIT 1").fetchone()
            last_experiment = self.experiment(int(finished[0])) if finished else None
        finally:
            conn.execute("COMMIT")
        return Snapshot(
            cycles_by_status={k: v for k, v in counters.get("cycles_total", {}).items() if v},
            errors_by_source={k: v for k, v in counters.get("source_errors_total", {}).items() if v},
            last_cycle=dict(last) if last is not None else None,
            last_success_at=last_success["finished_at"] if last_success else None,
            last_drift=json.loads(drift_row["drift_json"]) if drift_row else None,
            last_sources=sources,
            last_decision=json.loads(decision["record_json"]) if decision else None,
            failed_sources=failed,
            files_skipped_total=sum(counters.get("window_files_skipped_total", {}).values()),
            last_experiment=last_experiment,
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
            "SELECT id, cycle_id, record_json, window_start, window_end FROM decisions"
            " ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        out = []
        for r in rows:
            rec = json.loads(r["record_json"])
            rec.update(decision_id=r["id"], cycle_id=r["cycle_id"], window_start=r["window_start"],
                       window_end=r["window_end"])
            out.append(rec)
        return out

    def cycles(self, limit: int = 20) -> list[dict[str, Any]]:
        return [dict(r) for r in self._conn.execute("SELECT * FROM cycles ORDER BY id DESC LIMIT ?", (limit,))]

    def count_cycles(self) -> int:
        """Cycles currently stored (after retention), not the total ever run."""
        return int(self._conn.execute("SELECT COUNT(*) FROM cycles").fetchone()[0])

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


    # -- experiments (append-only; tasksim.experiment) ----------------------------------------------
    def preregister_experiment(self, *, created_at: float, trigger: str, deployed_source: str,
                               recommended_source: str | None, advised_strategy: str | None, split_hash: str,
                               preregistration: dict[str, Any], pid: int | None = None,
                               host: str | None = None) -> int:
        """Record an experiment's preregistration (before any trial runs); return its id."""
        try:
            with self._transaction() as cur:
                cur.execute(
                    "INSERT INTO experiments(created_at, trigger, deployed_source, recommended_source,"
                    " advised_strategy, split_hash, pid, host, preregistration_json)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (created_at, trigger, deployed_source, recommended_source, advised_strategy, split_hash, pid,
                     host, json.dumps(preregistration, default=str)))
                return int(cur.lastrowid)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot record the experiment ({exc})") from None

    def record_trial(self, experiment_id: int, seq: int, *, source: str, strategy: str, seed: int, status: str,
                     score: float | None, record: dict[str, Any], created_at: float) -> None:
        """Record one trial as it ends (its own transaction: a killed run leaves whole trials only)."""
        try:
            with self._transaction() as cur:
                cur.execute(
                    "INSERT INTO experiment_trials(experiment_id, seq, source, strategy, seed, status, score,"
                    " created_at, record_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (experiment_id, seq, source, strategy, seed, status, score, created_at,
                     json.dumps(record, default=str)))
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot record trial {seq} of experiment {experiment_id} ({exc})") from None

    def finish_experiment(self, experiment_id: int, *, status: str, verdict: str | None, tau: float | None,
                          outcome: dict[str, Any], finished_at: float) -> None:
        """Record an experiment's outcome, once (finished, failed or interrupted)."""
        try:
            with self._transaction() as cur:
                cur.execute(
                    "INSERT INTO experiment_outcomes(experiment_id, finished_at, status, verdict, tau, outcome_json)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (experiment_id, finished_at, status, verdict, tau, json.dumps(outcome, default=str)))
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot record the outcome of experiment {experiment_id} ({exc})") from None

    def open_experiments(self) -> list[dict[str, Any]]:
        """Experiments preregistered without an outcome (running, or killed while running)."""
        rows = self._conn.execute(
            "SELECT e.id, e.created_at, e.pid, e.host FROM experiments e"
            " LEFT JOIN experiment_outcomes o ON o.experiment_id = e.id WHERE o.experiment_id IS NULL"
            " ORDER BY e.id").fetchall()
        return [dict(r) for r in rows]

    def experiment(self, experiment_id: int) -> dict[str, Any] | None:
        """One experiment: its preregistration, trials (in order) and outcome (None while running)."""
        row = self._conn.execute("SELECT * FROM experiments WHERE id = ?", (experiment_id,)).fetchone()
        if row is None:
            return None
        out = dict(row)
        out["preregistration"] = json.loads(out.pop("preregistration_json"))
        out["trials"] = [{**json.loads(r["record_json"]), "seq": r["seq"], "source": r["source"],
                          "strategy": r["strategy"], "seed": r["seed"], "status": r["status"], "score": r["score"]}
                         for r in self._conn.execute("SELECT * FROM experiment_trials WHERE experiment_id = ?"
                                                     " ORDER BY seq", (experiment_id,))]
        outcome = self._conn.execute("SELECT * FROM experiment_outcomes WHERE experiment_id = ?",
                                     (experiment_id,)).fetchone()
        out["status"] = "running" if outcome is None else outcome["status"]
        out["verdict"] = None if outcome is None else outcome["verdict"]
        out["tau"] = None if outcome is None else outcome["tau"]
        out["finished_at"] = None if outcome is None else outcome["finished_at"]
        out["outcome"] = None if outcome is None else json.loads(outcome["outcome_json"])
        return out

    def experiments(self, limit: int = 20) -> list[dict[str, Any]]:
        """Experiments, newest first (see ``experiment``)."""
        ids = [int(r[0]) for r in self._conn.execute("SELECT id FROM experiments ORDER BY id DESC LIMIT ?", (limit,))]
        return [e for e in (self.experiment(i) for i in ids) if e is not None]

    def latest_verdict(self, deployed_source: str, recommended_source: str) -> dict[str, Any] | None:
        """The newest finished experiment that tested a switch from ``deployed_source`` to
        ``recommended_source``: ``{experiment_id, verdict, finished_at}``, or None."""
        row = self._conn.execute(
            "SELECT o.experiment_id, o.verdict, o.finished_at FROM experiment_outcomes o"
            " JOIN experiments e ON e.id = o.experiment_id WHERE o.status = 'finished'"
            " AND e.deployed_source = ? AND e.recommended_source = ? ORDER BY o.experiment_id DESC LIMIT 1",
            (deployed_source, recommended_source)).fetchone()
        return None if row is None else dict(row)
