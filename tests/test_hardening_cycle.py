"""Issue 16 through whole cycles: tiny windows (measures not computable, insufficient_data with the
last ranking standing) and a bad production file skipped, counted, named in the run JSON."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
from prometheus_client import generate_latest

from tasksim.config import load_config
from tasksim.cycle import run_cycle
from tasksim.export import build_registry
from tasksim.store import Store
from tests.conftest import T0, make_tabular_workspace


def test_tiny_windows_skip_measures_and_record_insufficient_data(tmp_path: Path) -> None:
    path = make_tabular_workspace(tmp_path / "ws", windows=2, rows_per_window=200)
    prod_path = path.parent / "production.parquet"
    prod = pd.read_parquet(prod_path)
    hour1 = prod[prod["ts"] >= pd.Timestamp(T0 + timedelta(hours=1))]
    three = hour1.iloc[:3].assign(ts=[pd.Timestamp(T0 + timedelta(hours=2, minutes=m)) for m in range(3)])
    one = hour1.iloc[3:4].assign(ts=[pd.Timestamp(T0 + timedelta(hours=3, minutes=1))])
    pd.concat([prod, three, one], ignore_index=True).to_parquet(prod_path, index=False)
    config = load_config(path)
    results = [run_cycle(config) for _ in range(4)]
    assert [r.status for r in results] == ["success", "success", "success", "insufficient_data"]
    tiny = results[2].to_dict()
    assert tiny["window"]["rows_sampled"] == 3
    # too small for the domain classifier (5 rows) and transferability: not computable, not a failure
    assert all(s["status"] == "ok" for s in tiny["sources"]), tiny["sources"]
    assert "domain_classifier_auc" in tiny["measures_not_computable"]
    assert all("domain_classifier_auc" not in s["measures"] and "mmd2" in s["measures"] for s in tiny["sources"])
    assert tiny["ranking"] and len(tiny["ranking"]) == 3
    one_row = results[3].to_dict()
    assert "1 valid row" in one_row["error"] and "last ranking stands" in one_row["error"]
    with Store(config.state_dir, readonly=True) as store:
        snap = store.snapshot()
    assert snap.cycles_by_status == {"success": 3, "insufficient_data": 1}
    assert snap.errors_by_source == {}  # no source was marked failed by a tiny window
    assert [s.rank for s in snap.last_sources] == [1, 2, 3]  # the last ranking stands
    text = generate_latest(build_registry(config.state_dir)).decode()
    assert 'tasksim_cycles_total{status="insufficient_data"} 1.0' in text


def test_a_bad_file_in_production_is_skipped_counted_and_named(tmp_path: Path) -> None:
    path = make_tabular_workspace(tmp_path / "ws", windows=2, rows_per_window=200)
    prod_dir = path.parent / "prod"
    prod_dir.mkdir()
    table = pq.read_table(path.parent / "production.parquet")
    pq.write_table(table, prod_dir / "part-0.parquet")
    (prod_dir / "part-1.parquet").write_bytes(b"")  # still being written
    (path.parent / "production.parquet").unlink()
    path.write_text(path.read_text().replace("path: production.parquet", "path: prod"))
    config = load_config(path)
    result = run_cycle(config)
    assert result.status == "success"
    summary = result.to_dict()
    assert summary["window"]["files_skipped"] == [
        {"path": str(prod_dir / "part-1.parquet"), "reason": "zero bytes (a file still being written?)"}]
    text = generate_latest(build_registry(config.state_dir)).decode()
    assert "tasksim_window_files_skipped_total 1.0" in text
    strict = path.parent / "strict.yaml"
    strict.write_text(path.read_text().replace("partitioning: null", "partitioning: null\n  on_bad_file: fail"))
    shutil.rmtree(config.state_dir)
    failed = None
    try:
        run_cycle(load_config(strict))
    except Exception as exc:  # noqa: BLE001 - the failure itself is what is checked
        failed = str(exc)
    assert failed is not None and str(prod_dir / "part-1.parquet") in failed and "\n" not in failed


def test_retention_from_config_prunes_in_the_cycle(tmp_path: Path) -> None:
    path = make_tabular_workspace(tmp_path / "ws", windows=4, rows_per_window=100)
    path.write_text(path.read_text() + "retention: {cycles: 2}\n")
    config = load_config(path)
    for _ in range(4):
        run_cycle(config)
    with Store(config.state_dir, readonly=True) as store:
        assert store.count_cycles() == 2
        assert store.snapshot().cycles_by_status == {"success": 4}


def test_sigterm_during_a_cycle_leaves_no_partial_cycle(tmp_path: Path) -> None:
    """A cycle is one transaction: SIGTERM mid-cycle leaves no row at all (nothing "running"), the
    window cursor where it was, a sound store, and the next run succeeds on the same window."""
    import signal
    import sqlite3
    import subprocess
    import sys
    import time

    path = make_tabular_workspace(tmp_path / "ws", windows=2, rows_per_window=200)
    state = load_config(path).state_dir
    proc = subprocess.Popen([sys.executable, "-m", "tasksim.cli", "run", "--config", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    # the embedding cache is written after sampling and before drift/profile: the cycle is mid-way
    while time.monotonic() < deadline and proc.poll() is None and not any((state / "embeddings").glob("**/*")):
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    conn = sqlite3.connect(state / "tasksim.sqlite")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("SELECT COUNT(*) FROM cycles").fetchone()[0] == 0
    assert conn.execute("SELECT COUNT(*) FROM kv WHERE key = 'window_cursor'").fetchone()[0] == 0
    conn.close()
    result = run_cycle(load_config(path))
    assert result.status == "success" and result.window_start == T0
