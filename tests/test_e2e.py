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
from typing import Any

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
    """The small demo workspace, its caches (embeddings, reference, heads) filled by one in-process
    cycle and its store removed: every test here copies it and pays the cold first cycle once, not
    once per test (as a second ``make demo`` does: the demo keeps its caches)."""
    from tasksim.demo import build_demo_workspace
    from tasksim.store import STORE_FILENAME

    ws = tmp_path_factory.mktemp("demo")
    build_demo_workspace(ws, small=True)
    out = subprocess.run([*TASKSIM, "run", "--config", str(ws / "tasksim.yaml")], check=False, capture_output=True,
                         text=True, env=env(), timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    for path in (ws / "state").glob(f"{STORE_FILENAME}*"):
        path.unlink()
    return ws


def server_log_errors(log: Path) -> list[str]:
    """Lines of a Prefect server log that report a locked SQLite database (or any traceback's error)."""
    text = log.read_text(errors="replace") if log.exists() else ""
    return [line for line in text.splitlines() if "database is locked" in line]


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
    # the runs' logs and events were sent before the server stopped, not retried against a dead API
    # at exit (which kept the process alive for about 70 s after "daemon stopped")
    assert "Error logging to API" not in text, text[-4000:]
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
    # the SQLite API database was never locked (prefect_environment's settings; see docs/architecture.md)
    assert not server_log_errors(ws / "state" / "prefect" / "server.log")
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
    import yaml

    raw = yaml.safe_load(config_path.read_text())  # the smallest experiment: one linear probe per source
    raw["experiment"] = {"strategies": ["linear_probe"], "seeds": 1, "top_k": 1, "max_epochs": 2, "budget": "300s"}
    config_path.write_text(yaml.safe_dump(raw))

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
        # the on-demand experiment through the same live server: `tasksim trigger --experiment`
        out = subprocess.run([*TASKSIM, "trigger", "--config", str(config_path), "--experiment", "--wait", "600",
                              "--format", "json"], check=False, capture_output=True, text=True, env=env(), timeout=700)
        assert out.returncode == 0, out.stdout + out.stderr + (tmp_path / "serve.log").read_text()[-3000:]
        triggered = json.loads(out.stdout)
        assert triggered["state"] == "COMPLETED" and triggered["deployment"].startswith("tasksim-experiment/")
    finally:
        if proc.poll() is None:
            stop(proc)
    with Store(ws / "state") as store:
        first = store.cycles()
        (experiment,) = store.experiments()
    assert len(first) == 1 and first[0]["status"] == "success"  # the experiment is no cycle
    assert experiment["status"] == "finished" and experiment["trigger"] == "prefect"
    assert {t["strategy"] for t in experiment["trials"]} == {"linear_probe"}
    assert any(t["status"] == "ok" for t in experiment["trials"])

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
    assert not server_log_errors(ws / "state" / "prefect" / "server.log")


# -- the production topology without containers: Postgres + Prefect server + daemon + Prometheus ----
RULES = Path(__file__).resolve().parents[1] / "deploy" / "prometheus" / "rules" / "tasksim-alerts.yml"


def pg_binary(name: str) -> str | None:
    """Debian's PostgreSQL binaries live in /usr/lib/postgresql/<version>/bin (not on PATH)."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
                      key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    return str(versions[-1]) if versions else None


@pytest.fixture()
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (initdb into a temp dir, trust auth); yields the
    SQLAlchemy URL Prefect's server takes. initdb refuses root: as root it runs as Debian's
    ``postgres`` user."""
    import pwd
    import tempfile

    initdb, pg_ctl = pg_binary("initdb"), pg_binary("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL's initdb/pg_ctl not found (Debian package postgresql; deploy/install.sh installs it)")
    as_user: list[str] = []
    root = tempfile.mkdtemp(prefix="tasksim-pg-")  # not under pytest's 0700 tmp dirs: the server user reads it
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user for initdb (Debian package postgresql)")
        runuser = shutil.which("runuser")
        if runuser is None:
            pytest.skip("running as root and runuser is missing: cannot run initdb as the postgres user")
        os.chown(root, user.pw_uid, user.pw_gid)
        as_user = [runuser, "-u", "postgres", "--"]
    data, port = Path(root) / "data", free_port()
    try:
        subprocess.run([*as_user, initdb, "-D", str(data), "-U", "tasksim", "--auth=trust", "-E", "UTF8",
                        "--no-sync"], check=True, capture_output=True, timeout=120)
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off"
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-l", f"{root}/postgres.log", "-w", "-t", "60",
                        "-o", options, "start"], check=True, capture_output=True, timeout=120)
        try:
            yield f"postgresql+asyncpg://tasksim@127.0.0.1:{port}/postgres"
        finally:
            subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"], check=False,
                           capture_output=True, timeout=60)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def short_rules(path: Path) -> Path:
    """The project's alert rules with every ``for:`` window cut to 1s (15m and 10m in the file,
    which a test cannot wait for); expressions, labels and annotations are the file's own."""
    import yaml

    raw = yaml.safe_load(RULES.read_text())
    for group in raw["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "1s"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def alerts(port: int) -> dict[str, str]:
    body = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/alerts", timeout=10).read())
    return {a["labels"]["alertname"]: a["state"] for a in body["data"]["alerts"]}


def flow_runs(api_url: str) -> list[dict[str, Any]]:
    request = urllib.request.Request(f"{api_url}/flow_runs/filter", data=b'{"limit": 200}', method="POST",
                                     headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(request, timeout=10).read())


def parse_time(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_postgres_prefect_daemon_prometheus(workspace: Path, postgres: str, tmp_path: Path) -> None:
    """CI's copy of deploy/compose.yaml without containers: Prefect's server on PostgreSQL, ``tasksim
    serve`` pointed at it (warm worker), Prometheus scraping it with the project's alert rules. Two
    scheduled cycles past the demo's shift make the drift and the switch alerts fire; a trigger sent
    while the schedule keeps firing completes within the cycle in flight plus its own."""
    import yaml

    prometheus_bin = shutil.which("prometheus")
    if prometheus_bin is None:
        pytest.skip("Debian's prometheus package is not installed (deploy/install.sh installs it)")
    ws = tmp_path / "ws"
    shutil.copytree(workspace, ws)
    prefect_port, metrics_port, prom_port = free_port(), free_port(), free_port()
    config_path = set_ports(ws, metrics_port, prefect_port, "10s")
    manifest = json.loads((ws / "manifest.json").read_text())
    raw = yaml.safe_load(config_path.read_text())
    raw["window"]["start"] = manifest["shift"]["shift_start"]  # the cycles see Reuters, not BBC News
    config_path.write_text(yaml.safe_dump(raw))
    api_url = f"http://127.0.0.1:{prefect_port}/api"
    server_env = {**env(), "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_DATABASE_CONNECTION_URL": postgres}
    daemon_env = {**env(), "PREFECT_API_URL": api_url}
    procs: list[subprocess.Popen[bytes]] = []

    def start(cmd: list[str], name: str, environ: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115 - the child's for its lifetime
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=environ or env(), stdin=subprocess.DEVNULL)
        procs.append(proc)
        return proc

    def wait_for(what: str, predicate: Any, timeout: float, proc: subprocess.Popen[bytes], name: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert proc.poll() is None, f"{name} exited: " + (tmp_path / f"{name}.log").read_text()[-3000:]
            assert time.monotonic() < deadline, f"{what} within {timeout:.0f}s"
            time.sleep(0.5)

    prom_cfg = tmp_path / "prometheus.yml"
    prom_cfg.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(short_rules(tmp_path / "tasksim-alerts.yml"))],
        "scrape_configs": [{"job_name": "tasksim", "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}],
    }))
    try:
        server = start([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
                        str(prefect_port)], "prefect-server", server_env)
        prom = start([prometheus_bin, f"--config.file={prom_cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                      f"--web.listen-address=127.0.0.1:{prom_port}"], "prometheus")
        from tasksim.daemon import _healthy

        wait_for("the Prefect server on Postgres answers", lambda: _healthy(api_url), 240, server, "prefect-server")
        wait_for("prometheus answers", lambda: port_open(prom_port), 60, prom, "prometheus")
        daemon = start([*TASKSIM, "serve", "--config", str(config_path), "--no-run-now"], "serve", daemon_env)

        def stored() -> list[dict]:
            from tasksim.report import recorded_cycles

            return recorded_cycles(ws / "state")

        wait_for("two scheduled cycles", lambda: len(stored()) >= 2, 600, daemon, "serve")
        first_two = stored()[:2]
        assert [c["status"] for c in first_two] == ["success", "success"], first_two
        assert all(c["drift"]["detected"] for c in first_two), first_two
        assert first_two[-1]["recommendation"]["action"] == "switch", first_two[-1]
        wait_for("the drift and switch alerts fire in Prometheus",
                 lambda: {alerts(prom_port).get(a) for a in ("TasksimDriftDetected", "TasksimSourceSwitchRecommended")}
                 == {"firing"}, 60, prom, "prometheus")

        # a trigger while the 10 s schedule keeps the worker busy: it waits for at most the cycle in
        # flight, then runs next
        out = subprocess.run([*TASKSIM, "trigger", "--config", str(config_path), "--wait", "600", "--format",
                              "json"], check=False, capture_output=True, text=True, env=daemon_env, timeout=700)
        assert out.returncode == 0, out.stdout + out.stderr
        triggered = json.loads(out.stdout)
        assert triggered["state"] == "COMPLETED", triggered
        runs = flow_runs(api_url)
        mine = next(r for r in runs if r["id"] == triggered["flow_run_id"])
        created, began, ended = (parse_time(mine[k]) for k in ("created", "start_time", "end_time"))
        # no backlog ahead of it: at most one other cycle started while it waited
        ahead = [r["name"] for r in runs if r["start_time"] and created < parse_time(r["start_time"]) < began]
        assert len(ahead) <= 1, ahead
        with Store(ws / "state", readonly=True) as store:
            durations = [c["finished_at"] - c["started_at"] for c in store.cycles(limit=100)]
        # within the cycle in flight when it was created plus its own
        assert (ended - created) <= 2 * max(durations) + 15, (ended - created, durations)
        print(f"trigger: created -> completed in {ended - created:.1f}s, waited {began - created:.1f}s; "
              f"cycles took {', '.join(f'{d:.1f}' for d in durations[::-1])}s")
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=90) == 0, (tmp_path / "serve.log").read_text()[-3000:]
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    # Prefect's run states match the store (the flow runs live in Postgres now)
    assert "database is locked" not in (tmp_path / "prefect-server.log").read_text(errors="replace")
