"""End to end: the demo daemon scraped by a real Prometheus, and the on-demand trigger.

These tests start real servers on loopback: ``tasksim demo``/``tasksim serve`` (which start a Prefect
server) and Debian's ``prometheus``. They are skipped, with the reason, when a binary is missing;
CI installs both (deploy/install.sh).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasksim.store import Store

pytestmark = pytest.mark.e2e

TASKSIM = [sys.executable, "-m", "tasksim.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    out.update(DO_NOT_TRACK="1", PREFECT_SERVER_ANALYTICS_ENABLED="false", PYTHONUNBUFFERED="1")
    return out


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tasksim.demo import build_demo_workspace

    ws = tmp_path_factory.mktemp("demo")
    build_demo_workspace(ws, small=True)
    return ws


def set_ports(ws: Path, metrics_port: int, prefect_port: int, interval: str) -> Path:
    import yaml

    path = ws / "tasksim.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["metrics"] = {"host": "127.0.0.1", "port": metrics_port}
    raw["prefect"] = {**raw.get("prefect", {}), "host": "127.0.0.1", "port": prefect_port}
    raw["schedule"] = {"interval": interval}
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture()
def prometheus(tmp_path: Path) -> Iterator[tuple[int, int]]:
    """A real Prometheus on loopback scraping a tasksim metrics port every second."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("Debian's prometheus package is not installed (deploy/install.sh installs it)")
    prom_port, metrics_port = free_port(), free_port()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: tasksim\n    static_configs: [{{targets: ['127.0.0.1:{metrics_port}']}}]\n"
    )
    proc = subprocess.Popen(
        [binary, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prom_port}"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "wb"))
    try:
        deadline = time.monotonic() + 60
        while not port_open(prom_port):
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "prometheus did not start"
            time.sleep(0.2)
        yield prom_port, metrics_port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def prom_query(port: int, query: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    body = json.loads(urllib.request.urlopen(url, timeout=10).read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_demo_scraped_by_prometheus(workspace: Path, prometheus: tuple[int, int], tmp_path: Path) -> None:
    prom_port, metrics_port = prometheus
    ws = tmp_path / "ws"
    shutil.copytree(workspace, ws)
    prefect_port = free_port()
    log = tmp_path / "demo.log"
    with open(log, "wb") as out:
        proc = subprocess.run(
            [*TASKSIM, "demo", "--workspace", str(ws), "--cycles", "2", "--interval", "5s",
             "--metrics-port", str(metrics_port), "--prefect-port", str(prefect_port)],
            stdout=out, stderr=subprocess.STDOUT, env=env(), timeout=900)
    text = log.read_text()
    assert proc.returncode == 0, text[-4000:]
    # the terminal: the Prefect UI address and one line per cycle (window, verdict, top source, action, duration)
    assert f"Prefect UI: http://127.0.0.1:{prefect_port}" in text
    lines = re.findall(r"^cycle \d+: window \S+ \S+ \| .*\| \d+\.\ds$", text, re.M)
    assert len(lines) >= 2, text[-4000:]
    assert all(re.search(r"\| (no drift|DRIFT) \(share [\d.]+\) \| top \S+ \| (keep|SWITCH|insufficient)", line)
               for line in lines[:2]), lines
    # Prefect's run states match the store: each stored cycle's run COMPLETED (none cut off as CANCELLED
    # by the stop), and overlapping scheduled runs were cancelled by the deployment concurrency limit
    # without ever starting (CANCEL_NEW) instead of piling up; at most one run that started after the
    # last cycle was stored is cancelled by the stop (it recorded nothing)
    import sqlite3

    with Store(ws / "state") as store:
        stored = store.snapshot().cycles_by_status
    db = sqlite3.connect(f"file:{ws / 'state' / 'prefect' / 'prefect.db'}?mode=ro", uri=True)
    try:
        states = dict(db.execute("SELECT state_type, COUNT(*) FROM flow_run GROUP BY state_type").fetchall())
        started_cancelled = db.execute("SELECT COUNT(*) FROM flow_run WHERE state_type = 'CANCELLED' AND "
                                       "run_count > 0").fetchone()[0]
    finally:
        db.close()
    assert states.get("COMPLETED") == sum(stored.values()), (states, stored)
    assert not {"RUNNING", "PENDING", "CRASHED", "FAILED"} & set(states), states
    assert started_cancelled <= 1, states
    assert not port_open(prefect_port), "the Prefect server outlived the daemon"
    assert not port_open(metrics_port), "the metrics endpoint outlived the daemon"

    from tasksim.config import load_config

    config = load_config(ws / "tasksim.yaml")
    sources = {s.name for s in config.sources}
    # the daemon has stopped, so its series are marked stale: read the last scraped values
    def last(expr: str) -> str:
        return f"last_over_time({expr}[15m])"

    deadline = time.monotonic() + 30
    while True:
        ranks = {r["metric"]["source"]: float(r["value"][1])
                 for r in prom_query(prom_port, last("tasksim_source_rank"))}
        cycles = prom_query(prom_port, f"sum({last('tasksim_cycles_total')})")
        if (set(ranks) == sources and cycles and float(cycles[0]["value"][1]) >= 2) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert set(ranks) == sources, (ranks, text[-3000:])
    assert sorted(ranks.values()) == [float(i) for i in range(1, len(sources) + 1)]
    assert float(cycles[0]["value"][1]) >= 2
    share = prom_query(prom_port, last("tasksim_drift_share_ratio"))
    assert share and 0.0 <= float(share[0]["value"][1]) <= 1.0
    detected = prom_query(prom_port, last("tasksim_drift_detected"))
    assert detected and float(detected[0]["value"][1]) in (0.0, 1.0)
    columns = prom_query(prom_port, last("tasksim_drift_column_score"))
    assert columns and all(r["metric"]["column"] for r in columns)
    scores = prom_query(prom_port, last("tasksim_source_score"))
    assert {r["metric"]["source"] for r in scores} == sources
    assert all(0.0 <= float(r["value"][1]) <= 1.0 for r in scores)
    info = prom_query(prom_port, last("tasksim_recommendation_info"))
    assert info and info[0]["metric"]["action"] in ("keep", "switch")
    similarity = prom_query(prom_port, "count by (metric) ("
                            + last('tasksim_source_similarity{metric=~"logme|mmd2|frechet"}') + ")")
    assert {r["metric"]["metric"] for r in similarity} == {"logme", "mmd2", "frechet"}
    up = prom_query(prom_port, 'max_over_time(up{job="tasksim"}[15m])')
    assert up and float(up[0]["value"][1]) == 1.0


def test_trigger_and_restart_resume(workspace: Path, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    shutil.copytree(workspace, ws)
    prefect_port, metrics_port = free_port(), free_port()
    config_path = set_ports(ws, metrics_port, prefect_port, "1h")

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen([*TASKSIM, "serve", "--config", str(config_path), "--no-run-now"],
                                stdout=open(tmp_path / "serve.log", "ab"), stderr=subprocess.STDOUT, env=env())

    def wait_ready(proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + 180
        while not (ws / "state" / "daemon.json").exists() or not port_open(metrics_port):
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "daemon did not start"
            time.sleep(0.5)

    def stop(proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0, (tmp_path / "serve.log").read_text()[-3000:]
        assert not port_open(prefect_port) and not port_open(metrics_port)
        assert not (ws / "state" / "daemon.json").exists()

    from tasksim.store import Store

    proc = start()
    try:
        wait_ready(proc)
        out = subprocess.run([*TASKSIM, "trigger", "--config", str(config_path), "--wait", "600", "--format",
                              "json"], capture_output=True, text=True, env=env(), timeout=700)
        assert out.returncode == 0, out.stdout + out.stderr + (tmp_path / "serve.log").read_text()[-3000:]
        assert json.loads(out.stdout)["state"] == "COMPLETED"
        body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        assert 'tasksim_cycles_total{status="success"} 1.0' in body
    finally:
        if proc.poll() is None:
            stop(proc)
    with Store(ws / "state") as store:
        first = store.cycles()
    assert len(first) == 1 and first[0]["status"] == "success"

    # a restart resumes from the stored state: the next window starts where the first ended
    proc = start()
    try:
        wait_ready(proc)
        out = subprocess.run([*TASKSIM, "trigger", "--config", str(config_path), "--wait", "600"],
                             capture_output=True, text=True, env=env(), timeout=700)
        assert out.returncode == 0, out.stdout + out.stderr
    finally:
        if proc.poll() is None:
            stop(proc)
    with Store(ws / "state") as store:
        cycles = store.cycles()
    assert len(cycles) == 2
    assert cycles[0]["window_start"] == first[0]["window_end"]
