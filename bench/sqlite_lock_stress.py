"""Does the daemon's Prefect server (SQLite) log "database is locked"? A stress run.

Issue 15 saw 218 ``sqlite3.OperationalError: database is locked`` in the Prefect server's log during
a long demo. This serves a small synthetic workspace (identity encoder: a cycle takes a second or
two) on a short schedule, so that runs collide and are cancelled all the time, for ``--seconds``,
then counts the errors in the server log and names the SQL statements and server services that
raised them.

    python bench/sqlite_lock_stress.py --seconds 180 --interval 2s
    PYTHONPATH=/path/to/other/checkout python bench/sqlite_lock_stress.py   # another version's daemon
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--interval", default="2s")
    parser.add_argument("--windows", type=int, default=400)
    args = parser.parse_args()
    code = os.environ.get("PYTHONPATH", "").split(os.pathsep)[0] or str(REPO)
    sys.path.insert(0, str(REPO))
    import yaml

    from tests.conftest import make_tabular_workspace

    root = Path(tempfile.mkdtemp(prefix="tasksim-lock-"))
    config = make_tabular_workspace(root / "ws", windows=args.windows, rows_per_window=60)
    raw = yaml.safe_load(config.read_text())
    raw["schedule"] = {"interval": args.interval}
    raw["metrics"] = {"host": "127.0.0.1", "port": _free_port()}
    raw["prefect"] = {"host": "127.0.0.1", "port": _free_port()}
    config.write_text(yaml.safe_dump(raw))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(DO_NOT_TRACK="1", PREFECT_SERVER_ANALYTICS_ENABLED="false", PYTHONPATH=code)
    log = root / "serve.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tasksim.cli", "serve", "--config", str(config)],
        env=env,
        stdout=open(log, "wb"),  # noqa: SIM115 - the child's for its lifetime
        stderr=subprocess.STDOUT,
    )
    time.sleep(args.seconds)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    server_log = (root / "ws" / "state" / "prefect" / "server.log").read_text(errors="replace")
    cycles = len(re.findall(r"^cycle \d+:", log.read_text(errors="replace"), re.MULTILINE))
    locked = server_log.count("database is locked")
    statements = collections.Counter(
        m.split()[0] + " " + " ".join(m.split()[1:4]) for m in re.findall(r"\[SQL: ([^\]]{0,120})", server_log)
    )
    services = collections.Counter(re.findall(r"(prefect\.server\.[\w.]+) - ", server_log))
    print(f"code: {code}\nserved {args.seconds:.0f}s on a {args.interval} schedule: {cycles} cycles recorded")
    print(f"'database is locked' in the server log: {locked}")
    for what, counter in (("statements", statements), ("server loggers", services)):
        for name, n in counter.most_common(8):
            print(f"  {what}: {n:4d} {name}")
    print(f"logs: {root}")


if __name__ == "__main__":
    main()
