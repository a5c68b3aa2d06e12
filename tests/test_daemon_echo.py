"""The daemon's terminal: one line per recorded cycle, and the demo stopping with a message when its
sequential stream is used up (tasksim.daemon._echo_cycles); the demo's fresh start on a rerun."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tasksim import daemon
from tasksim.config import load_config
from tasksim.store import STORE_FILENAME, CycleRecord, SourceRecord, Store
from tests.conftest import make_tabular_workspace


def _record(store: Store, i: int, status: str, start: str, end: str) -> None:
    sources = ()
    decision = None
    if status == "success":
        sources = (SourceRecord(source="moved", status="ok", score=0.9, rank=1),
                   SourceRecord(source="near", status="ok", score=0.2, rank=2))
        decision = {"deployed_source": "near", "recommended_source": "moved", "action": "switch",
                    "rationale": "r", "ranking": [{"source": "moved", "rank": 1, "score": 0.9},
                                                  {"source": "near", "rank": 2, "score": 0.2}]}
    store.record_cycle(CycleRecord(started_at=1000.0 * i, finished_at=1000.0 * i + 3.5, status=status, config_hash="h",
                                   window_start=start, window_end=end, sources=sources, decision=decision,
                                   drift={"detected": True, "share": 0.5, "columns": []} if decision else None,
                                   error=None if decision else "the production window has no valid rows"))


def _collect(capsys: pytest.CaptureFixture[str], out: list[str], until: Callable[[], bool],
             timeout: float = 20.0) -> None:
    """Gather stdout into ``out`` until ``until()`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        out.append(capsys.readouterr().out)
        if until():
            return
        assert time.monotonic() < deadline, "".join(out)
        time.sleep(0.1)


def test_echo_prints_a_line_per_cycle_and_stops_when_the_stream_is_used_up(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(make_tabular_workspace(tmp_path / "ws", windows=2))  # rows from 00:00 to before 02:00
    kills: list[int] = []
    monkeypatch.setattr(daemon.os, "kill", lambda pid, sig: kills.append(sig))
    out: list[str] = []
    with Store(config.state_dir) as store:
        _record(store, 1, "success", "2026-01-01T00:00:00+00:00", "2026-01-01T01:00:00+00:00")  # before start
        with daemon._echo_cycles(config, stop_when_exhausted=True):
            _record(store, 2, "success", "2026-01-01T01:00:00+00:00", "2026-01-01T02:00:00+00:00")
            _collect(capsys, out, lambda: "cycle 2:" in "".join(out))
            assert not kills  # a window with data does not stop the demo
            _record(store, 3, "no_data", "2026-01-01T02:00:00+00:00", "2026-01-01T03:00:00+00:00")
            _collect(capsys, out, lambda: bool(kills))
    text = "".join(out)
    lines = text.strip().splitlines()
    assert "cycle 1:" not in text  # only cycles recorded after the daemon started
    assert lines[0] == "cycle 2: window 2026-01-01 01:00 | DRIFT (share 0.50) | top moved | SWITCH near -> moved | 3.5s"
    assert lines[1].startswith("cycle 3: window 2026-01-01 02:00 | no_data")
    assert lines[2].startswith("the stream is used up") and "make demo" in lines[2]
    assert kills == [signal.SIGTERM]


def test_echo_does_not_stop_a_service(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(make_tabular_workspace(tmp_path / "ws", windows=2))
    kills: list[int] = []
    monkeypatch.setattr(daemon.os, "kill", lambda pid, sig: kills.append(sig))
    out: list[str] = []
    with Store(config.state_dir) as store, daemon._echo_cycles(config, stop_when_exhausted=False):
        _record(store, 1, "no_data", "2026-01-01T05:00:00+00:00", "2026-01-01T06:00:00+00:00")
        _collect(capsys, out, lambda: "cycle 1:" in "".join(out))
        time.sleep(1.5)
    assert not kills and "used up" not in "".join(out) + capsys.readouterr().out


def test_demo_rerun_starts_fresh_but_keeps_the_embedding_cache(tmp_path: Path) -> None:
    from tasksim.cli import _demo_fresh_start

    state = tmp_path / "state"
    (state / "prefect").mkdir(parents=True)
    (state / "embeddings").mkdir()
    for name in (STORE_FILENAME, f"{STORE_FILENAME}-wal", "prefect/prefect.db", "embeddings/x.npy"):
        (state / name).write_text("x")
    _demo_fresh_start(state, resume=True)
    assert (state / STORE_FILENAME).exists()
    _demo_fresh_start(state, resume=False)
    assert not (state / STORE_FILENAME).exists() and not (state / f"{STORE_FILENAME}-wal").exists()
    assert not (state / "prefect" / "prefect.db").exists() and (state / "embeddings" / "x.npy").exists()



def test_console_filter_keeps_one_line_per_cycle() -> None:
    """The daemon's terminal: no INFO from Prefect nor from the stages of a cycle the warm worker runs
    in its thread; warnings from anywhere, and the daemon's own INFO, pass."""
    import logging

    from tasksim.worker import EXECUTOR_THREAD

    def record(name: str, level: int, thread: str = "MainThread", msg: str = "m") -> logging.LogRecord:
        r = logging.LogRecord(name, level, __file__, 1, msg, None, None)
        r.threadName = thread
        return r

    keep = daemon._PrefectInfoFilter().filter
    assert keep(record("tasksim.daemon", logging.INFO))
    assert not keep(record("prefect.flow_runs", logging.INFO))
    assert keep(record("prefect.flow_runs", logging.WARNING))
    assert not keep(record("tasksim.profile", logging.INFO, EXECUTOR_THREAD))
    assert keep(record("tasksim.profile", logging.WARNING, EXECUTOR_THREAD))
    assert not keep(record("prefect.task_runs", logging.WARNING, EXECUTOR_THREAD,
                           "Timeout of %s seconds configured for this task, but the task is running in a worker thread"))


def test_a_stop_waits_for_a_watching_scraper_to_read_the_last_cycle() -> None:
    # nothing has scraped: no wait at all
    started = time.monotonic()
    assert daemon._wait_for_final_scrape(2, lambda: None, timeout=5.0)
    assert time.monotonic() - started < 1.0
    # a scraper that read cycle 1 reads cycle 2 on its next scrape: the stop waits for it
    seen = iter([1, 1, 1, 2])
    assert daemon._wait_for_final_scrape(2, lambda: next(seen), timeout=5.0, poll=0.01)
    # a scraper that has gone away: the stop gives up after the timeout, and says so
    started = time.monotonic()
    assert not daemon._wait_for_final_scrape(2, lambda: 1, timeout=0.2, poll=0.01)
    assert time.monotonic() - started >= 0.2
