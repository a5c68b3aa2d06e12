"""A scheduled cycle (the daemon's warm worker) against an in-process warm cycle, on the demo.

Issue 15 asks that a scheduled cycle cost at most 1.2x an in-process warm cycle. One run:

1. workspace: the small demo (``tasksim.demo``), its caches filled by one cycle, the store removed
   (as a second ``make demo`` starts: caches kept);
2. scheduled: ``tasksim serve --no-run-now`` with an ``--interval`` schedule, until ``--cycles``
   scheduled flow runs COMPLETED. Per run, the cost is Prefect's ``end_time - expected_start_time``:
   from the moment the schedule made it due to its final state, so it includes the worker's poll
   delay, the state proposals, the task runs, logs and artifacts. The first run is the process's
   first cycle (imports, model load) and is reported apart; runs cancelled by the concurrency limit
   (due while one ran) cost nothing and are counted;
3. in process: this process replays the same windows with a fresh store: the first (warm-up) cycle,
   then one ``Cycle.run()`` per window, timed (no Prefect);
4. ratio: median scheduled cost / median in-process warm cycle over the same windows.

    python bench/warm_worker.py                     # 4 scheduled cycles, 5 s interval
    python bench/warm_worker.py --cycles 6 --interval 10s --keep /tmp/ws
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TASKSIM = [sys.executable, "-m", "tasksim.cli"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    out.update(
        DO_NOT_TRACK="1",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PYTHONUNBUFFERED="1",
        PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    return out


def _drop_store(ws: Path) -> None:
    from tasksim.store import STORE_FILENAME

    for path in (ws / "state").glob(f"{STORE_FILENAME}*"):
        path.unlink()
    shutil.rmtree(ws / "state" / "prefect", ignore_errors=True)


def build(ws: Path, interval: str) -> Path:
    import yaml

    from tasksim.demo import build_demo_workspace

    config = build_demo_workspace(ws, small=True)
    raw = yaml.safe_load(config.read_text())
    raw["metrics"] = {"host": "127.0.0.1", "port": _free_port()}
    raw["prefect"] = {**raw.get("prefect", {}), "host": "127.0.0.1", "port": _free_port()}
    raw["schedule"] = {"interval": interval}
    config.write_text(yaml.safe_dump(raw))
    subprocess.run([*TASKSIM, "run", "--config", str(config)], check=True, env=_env(), capture_output=True)
    _drop_store(ws)
    return config


def scheduled(config: Path, cycles: int, log: Path) -> dict[str, Any]:
    """Serve until ``cycles`` scheduled runs completed; their costs from Prefect's API."""
    from tasksim.config import load_config
    from tasksim.daemon import daemon_info

    cfg = load_config(config)
    started = time.monotonic()
    proc = subprocess.Popen(
        [*TASKSIM, "serve", "--config", str(config), "--no-run-now"],
        env=_env(),
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
    )  # noqa: SIM115 - the child's
    try:
        while (info := daemon_info(cfg)) is None:
            if proc.poll() is not None:
                raise SystemExit(f"tasksim serve exited: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        os.environ["PREFECT_API_URL"] = info["api_url"]
        runs: list[Any] = []
        while len([r for r in runs if _state(r) == "COMPLETED"]) < cycles:
            if proc.poll() is not None:
                raise SystemExit(f"tasksim serve exited: {log.read_text()[-2000:]}")
            if time.monotonic() - started > 3600:
                raise SystemExit("no progress in an hour")
            time.sleep(2.0)
            runs = _flow_runs()
        ready = time.monotonic() - started
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    done = sorted((r for r in runs if _state(r) == "COMPLETED"), key=lambda r: r.expected_start_time)
    costs = [(r.end_time - r.expected_start_time).total_seconds() for r in done]
    in_flow = [r.total_run_time.total_seconds() for r in done]
    cancelled = sum(_state(r) == "CANCELLED" for r in runs)
    return {
        "costs": costs,
        "run_times": in_flow,
        "cancelled": cancelled,
        "seconds_to_last": ready,
        "windows": len(done),
    }


def _state(run: Any) -> str:
    return run.state_type.value if run.state_type is not None else ""


def _flow_runs() -> list[Any]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(limit=200)


def in_process(config: Path, windows: int) -> list[float]:
    """The same windows replayed here: a warm-up cycle, then ``windows - 1`` timed cycles."""
    from tasksim.cycle import Cycle
    from tasksim.embed import keep_encoders_loaded

    ws = config.parent
    _drop_store(ws)
    keep_encoders_loaded()  # what the daemon's process does
    times = []
    for i in range(windows):
        t0 = time.perf_counter()
        cycle = Cycle.open(config)
        try:
            result = cycle.run()
        finally:
            cycle.store.close()
        if result.status != "success":
            raise SystemExit(f"in-process cycle {i}: {result.status} ({result.error})")
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=4, help="completed scheduled runs to measure (incl. the first)")
    parser.add_argument("--interval", default="5s")
    parser.add_argument("--keep", type=Path, help="build the workspace here and keep it")
    args = parser.parse_args()
    os.environ.setdefault("DO_NOT_TRACK", "1")
    root = args.keep or Path(tempfile.mkdtemp(prefix="tasksim-warm-bench-"))
    ws = root / "ws"
    t0 = time.monotonic()
    config = build(ws, args.interval)
    print(f"workspace built and warmed in {time.monotonic() - t0:.0f}s: {ws}", flush=True)
    sched = scheduled(config, args.cycles, root / "serve.log")
    print(f"scheduled: {json.dumps(sched)}", flush=True)
    local = in_process(config, sched["windows"])
    print(f"in process: {json.dumps(local)}", flush=True)
    warm_sched, warm_local = sched["costs"][1:], local[1:]
    ratio = statistics.median(warm_sched) / statistics.median(warm_local)
    load = os.getloadavg()
    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    print(
        f"first scheduled cycle (process start, imports, model load): {sched['costs'][0]:.1f}s; "
        f"first in-process cycle: {local[0]:.1f}s"
    )
    print(
        f"warm scheduled cycle, due -> final state: median {statistics.median(warm_sched):.2f}s "
        f"({', '.join(f'{c:.1f}' for c in warm_sched)}); flow run time "
        f"{', '.join(f'{c:.1f}' for c in sched['run_times'][1:])}"
    )
    print(
        f"warm in-process cycle: median {statistics.median(warm_local):.2f}s "
        f"({', '.join(f'{c:.1f}' for c in warm_local)})"
    )
    print(f"runs cancelled by the concurrency limit (due while one ran): {sched['cancelled']}")
    print(f"ratio scheduled / in-process: {ratio:.2f}x (goal <= 1.2x)")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
