"""Where the Prefect server's "database is locked" (SQLite) comes from: late runs being marked Late.

A run of a scheduled deployment that nobody starts within 15 s is marked ``Late`` by the server's
``late_runs`` service (a state transition per run). On SQLite those transitions fail with
``sqlite3.OperationalError: database is locked`` while other writes go on. This reproduces it: a
Prefect server on SQLite, a deployment on a 1 s schedule that no worker polls (as when a served
deployment's runner falls behind, or the daemon is stopped while an external server keeps
scheduling), and flow runs with a task per stage executed in this process meanwhile. It counts the
errors in the server log, then does the same with ``PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED=false``
(what ``tasksim.daemon.prefect_environment`` sets for the server the daemon starts).

    python bench/sqlite_late_runs.py --seconds 120
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHILD = r"""
import sys, time
from datetime import timedelta
from prefect import flow, task

@task
def stage(i: int) -> int:
    time.sleep(0.05)
    return i

@flow(name="late-probe")
def probe() -> int:
    return sum(stage(i) for i in range(6))

@flow(name="late-scheduled")
def scheduled() -> None:
    pass

deployment = scheduled.to_deployment(name="unpolled", interval=timedelta(seconds=1))
deployment.work_pool_name = deployment.work_queue_name = None
deployment.apply()
deadline = time.monotonic() + float(sys.argv[1])
runs = 0
while time.monotonic() < deadline:
    probe()
    runs += 1
print(f"flow runs: {runs}")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(seconds: float, late_runs: bool) -> tuple[int, int, str]:
    from tasksim.daemon import PrefectServer

    root = Path(tempfile.mkdtemp(prefix="tasksim-late-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        DO_NOT_TRACK="1",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_HOME=str(root),
        PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{root / 'prefect.db'}",
        # both ways explicit: the server's environment is this process's, with these on top
        PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED="true" if late_runs else "false",
    )
    server = PrefectServer.launch("127.0.0.1", _free_port(), env, startup_timeout=300)
    log = server.log_path
    try:
        script = root / "child.py"  # a file: the deployment needs an entrypoint
        script.write_text(CHILD)
        child = subprocess.run(
            [sys.executable, str(script), str(seconds)],
            env={**env, "PREFECT_API_URL": server.api_url},
            capture_output=True,
            text=True,
            check=False,
        )
        if child.returncode:
            raise SystemExit(child.stderr[-3000:])
        time.sleep(5)
    finally:
        server.stop(timeout=60)
    text = log.read_text(errors="replace")
    late = len(re.findall(r"'name': 'Late'", text))
    return text.count("database is locked"), late, child.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0)
    args = parser.parse_args()
    load = os.getloadavg()
    print(f"{os.cpu_count()} cores, load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    for late_runs in (True, False):
        locked, late, out = run(args.seconds, late_runs)
        print(
            f"late_runs service {'on ' if late_runs else 'off'}: 'database is locked' {locked} times "
            f"(of which failed 'Late' transitions: {late}); {out}"
        )


if __name__ == "__main__":
    main()
