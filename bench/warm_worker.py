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
    python bench/warm_worker.py --workspace demo-workspace   # copy a built demo (its caches) instead
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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tasksim.daemon import PrefectServer

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


def build(ws: Path, interval: str, source: Path | None = None) -> Path:
    """The small demo in ``ws`` (or a copy of the built workspace ``source``), caches filled."""
    import yaml

    from tasksim.demo import build_demo_workspace

    if source is not None:
        shutil.copytree(source, ws)
        config = ws / "tasksim.yaml"
    else:
        config = build_demo_workspace(ws, small=True)
    raw = yaml.safe_load(config.read_text())
    raw["metrics"] = {"host": "127.0.0.1", "port": _free_port()}
    raw["prefect"] = {**raw.get("prefect", {}), "host": "127.0.0.1", "port": _free_port()}
    raw["schedule"] = {"interval": interval}
    config.write_text(yaml.safe_dump(raw))
    _drop_store(ws)
    subprocess.run([*TASKSIM, "run", "--config", str(config)], check=True, env=_env(), capture_output=True)
    _drop_store(ws)
    return config


def prefect_server(home: Path) -> PrefectServer:
    """A Prefect server (SQLite; output in ``home/server.log``) that stays up for every phase, so each
    is measured next to it. Sets ``PREFECT_API_URL`` for this process."""
    from tasksim.daemon import PrefectServer

    env = {
        **_env(),
        "PREFECT_HOME": str(home),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        # as the daemon's own server (daemon.prefect_environment): no "Late" transitions, which on
        # SQLite fail in a loop ("database is locked") once runs go unserved after the daemon stops
        "PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED": "false",
    }
    server = PrefectServer.launch("127.0.0.1", _free_port(), env, startup_timeout=300)
    os.environ["PREFECT_API_URL"] = server.api_url
    return server


def scheduled(config: Path, cycles: int, log: Path, server_pid: int) -> dict[str, Any]:
    """Serve until ``cycles`` scheduled runs completed; their costs from Prefect's API. While it
    waits, this process reads the workspace's store (a local SQLite read) and asks Prefect only
    for completed runs once that many cycles are stored, so the measuring itself adds little load
    to the Prefect server the daemon uses."""
    from flows.monitor import FLOW_NAME
    from tasksim.config import load_config
    from tasksim.daemon import daemon_info

    cfg = load_config(config)
    started = time.monotonic()
    proc = subprocess.Popen(
        [*TASKSIM, "serve", "--config", str(config), "--no-run-now"],
        env={**_env(), "PREFECT_API_URL": os.environ["PREFECT_API_URL"]},
        stdout=open(log, "wb"),  # noqa: SIM115 - the child's for its lifetime
        stderr=subprocess.STDOUT,
    )
    cpu: dict[str, float] = {}
    try:
        while daemon_info(cfg) is None:
            if proc.poll() is not None:
                raise SystemExit(f"tasksim serve exited: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        completed = 0
        while completed < cycles:
            if proc.poll() is not None:
                raise SystemExit(f"tasksim serve exited: {log.read_text()[-2000:]}")
            if time.monotonic() - started > 3600:
                raise SystemExit("no progress in an hour")
            time.sleep(0.5)
            stored = len(_stored_cycles(config.parent))
            if stored >= 1 and not cpu:  # the first (cold) cycle is stored: the warm part starts
                cpu = {"t0": time.monotonic(), "server0": _cpu(server_pid), "daemon0": _cpu(proc.pid)}
            if stored >= cycles:
                completed = len(_flow_runs("COMPLETED"))
        if cpu:
            cpu.update(t1=time.monotonic(), server1=_cpu(server_pid), daemon1=_cpu(proc.pid))
        ready = time.monotonic() - started
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    _pause(f"{FLOW_NAME}/{cfg.name}")  # the in-process phases run next to an idle server
    runs = _flow_runs()
    done = sorted((r for r in runs if _state(r) == "COMPLETED"), key=lambda r: r.expected_start_time)
    costs = [(r.end_time - r.expected_start_time).total_seconds() for r in done]
    in_flow = [r.total_run_time.total_seconds() for r in done]
    cancelled = sum(_state(r) == "CANCELLED" for r in runs)
    return {
        "costs": costs,
        "run_times": in_flow,
        "parts": _parts(done, _stored_cycles(config.parent)),
        "cpu": cpu,
        "cancelled": cancelled,
        "seconds_to_last": ready,
        "windows": len(done),
    }


def _own_cpu() -> float:
    """CPU seconds (user + system) of this process alone, all its threads (not the server child)."""
    import psutil

    t = psutil.Process().cpu_times()
    return t.user + t.system


def _cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid`` and its descendants."""
    import psutil

    total = 0.0
    try:
        root = psutil.Process(pid)
        for p in [root, *root.children(recursive=True)]:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
    except psutil.NoSuchProcess:
        pass
    return total


def _stored_cycles(ws: Path) -> list[tuple[float, float]]:
    """(started_at, finished_at) of every cycle in the workspace's store, oldest first (wall clock:
    ``Cycle`` is built -> just before the store write)."""
    import sqlite3

    from tasksim.store import STORE_FILENAME

    with sqlite3.connect(ws / "state" / STORE_FILENAME) as conn:
        return [(a, b) for a, b in conn.execute("SELECT started_at, finished_at FROM cycles ORDER BY id")]


def _parts(runs: list[Any], cycles: list[tuple[float, float]]) -> list[dict[str, float]]:
    """Each completed run's cost split by its Prefect timestamps and its stored cycle's: pickup (due ->
    ``Running``), setup (``Running`` -> the cycle's ``Cycle`` built), cycle (-> just before the store
    write), tail (-> ``Completed``: the store write, artifacts, the final state)."""
    out = []
    for r in runs:
        due, running, end = (t.timestamp() for t in (r.expected_start_time, r.start_time, r.end_time))
        inside = [c for c in cycles if running <= c[0] <= end]
        if not inside:
            continue
        started, finished = inside[0]
        out.append(
            {"pickup": running - due, "setup": started - running, "cycle": finished - started, "tail": end - finished}
        )
    return out


def _pause(deployment: str) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.pause_deployment(client.read_deployment_by_name(deployment).id)


def _state(run: Any) -> str:
    return run.state_type.value if run.state_type is not None else ""


def _flow_runs(state: str | None = None) -> list[Any]:
    """The flow runs on the server that have started or ended (``state``: of that type only); the
    runs the schedule created ahead are left out."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    types = [StateType(state)] if state else [t for t in StateType if t is not StateType.SCHEDULED]
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=types))),
            limit=200,
        )


def in_process(
    config: Path,
    windows: int,
    *,
    flow: bool = False,
    cycles: list[Any] | None = None,
    server_cpu: tuple[int, list[tuple[float, float, float]]] | None = None,
) -> list[float]:
    """The same windows replayed here: a warm-up cycle, then ``windows - 1`` timed cycles; with
    ``flow``, each through the monitoring flow (Prefect engine, a task per stage, artifacts, logs to
    the API) called in this process, without the daemon."""
    from tasksim.cycle import Cycle
    from tasksim.embed import keep_encoders_loaded

    ws = config.parent
    _drop_store(ws)
    keep_encoders_loaded()  # what the daemon's process does
    times = []
    for i in range(windows):
        if server_cpu is not None and i == 1:  # the Prefect server's CPU over the warm cycles
            server_cpu[1].append((time.monotonic(), _cpu(server_cpu[0]), _own_cpu()))
        t0 = time.perf_counter()
        if flow:
            from flows.monitor import monitor_cycle

            state = monitor_cycle(str(config), return_state=True)
            status = state.result()["status"] if state.is_completed() else state.name
        else:
            cycle = Cycle.open(config)
            try:
                status = cycle.run().status
            finally:
                cycle.store.close()
        if status != "success":
            raise SystemExit(f"in-process cycle {i}: {status}")
        times.append(time.perf_counter() - t0)
    if server_cpu is not None:
        server_cpu[1].append((time.monotonic(), _cpu(server_cpu[0]), _own_cpu()))
    if cycles is not None:  # the stored cycles' own durations (Cycle built -> before the store write)
        cycles.extend(b - a for a, b in _stored_cycles(ws))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=4, help="completed scheduled runs to measure (incl. the first)")
    parser.add_argument("--interval", default="5s")
    parser.add_argument("--keep", type=Path, help="build the workspace here and keep it")
    parser.add_argument("--workspace", type=Path, help="copy this built demo workspace instead of building one")
    args = parser.parse_args()
    os.environ.setdefault("DO_NOT_TRACK", "1")
    root = args.keep or Path(tempfile.mkdtemp(prefix="tasksim-warm-bench-"))
    ws = root / "ws"
    t0 = time.monotonic()
    config = build(ws, args.interval, args.workspace)
    print(f"workspace built and warmed in {time.monotonic() - t0:.0f}s: {ws}", flush=True)
    server = prefect_server(root / "prefect-home")
    try:
        assert server.process is not None
        sched = scheduled(config, args.cycles, root / "serve.log", server.process.pid)
        print(f"scheduled: {json.dumps(sched)}", flush=True)
        local_cycles: list[float] = []
        idle_server: list[tuple[float, float, float]] = []
        local = in_process(config, sched["windows"], cycles=local_cycles, server_cpu=(server.process.pid, idle_server))
        print(f"in process: {json.dumps(local)}", flush=True)
        via_flow = in_process(config, sched["windows"], flow=True)
        print(f"in process through the flow: {json.dumps(via_flow)}", flush=True)
    finally:
        server.stop(timeout=60)
    warm_sched, warm_local, warm_flow = sched["costs"][1:], local[1:], via_flow[1:]
    median = statistics.median
    load = os.getloadavg()
    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; one Prefect server (SQLite) up in every phase"
    )
    print(
        f"first scheduled cycle (process start, imports, model load): {sched['costs'][0]:.1f}s; "
        f"first in-process cycle: {local[0]:.1f}s"
    )
    print(
        f"warm scheduled cycle, due -> final state: median {median(warm_sched):.2f}s "
        f"({', '.join(f'{c:.1f}' for c in warm_sched)}); Running -> Completed "
        f"{', '.join(f'{c:.1f}' for c in sched['run_times'][1:])}"
    )
    print(
        f"warm in-process cycle (Cycle.run): median {median(warm_local):.2f}s "
        f"({', '.join(f'{c:.1f}' for c in warm_local)})"
    )
    print(
        f"warm in-process cycle through the flow (no daemon): median {median(warm_flow):.2f}s "
        f"({', '.join(f'{c:.1f}' for c in warm_flow)})"
    )
    print(f"runs cancelled by the concurrency limit (due while one ran): {sched['cancelled']}")
    parts = sched["parts"][1:]
    if parts:
        print("warm scheduled runs split (medians; per run in brackets):")
        for key, what in (
            ("pickup", "due -> Running"),
            ("setup", "Running -> Cycle built"),
            ("cycle", "the cycle, in the daemon"),
            ("tail", "store write, artifacts -> Completed"),
        ):
            values = [p[key] for p in parts]
            print(f"  {key:7s} {what:38s} {median(values):6.2f}s  ({', '.join(f'{v:.2f}' for v in values)})")
        warm_cycles = local_cycles[1:]
        cpu, warm = sched["cpu"], len(parts)
        if cpu and len(idle_server) == 2:
            wall = cpu["t1"] - cpu["t0"]
            print(
                f"  CPU seconds per warm scheduled cycle: daemon {(cpu['daemon1'] - cpu['daemon0']) / warm:.2f}, "
                f"Prefect server {(cpu['server1'] - cpu['server0']) / warm:.2f} "
                f"(server {(cpu['server1'] - cpu['server0']) / wall:.3f} CPU-s/s over {wall:.0f}s)"
                f"; Prefect server during the in-process cycles "
                f"{(idle_server[1][1] - idle_server[0][1]) / (idle_server[1][0] - idle_server[0][0]):.3f} CPU-s/s"
            )
            sched_cpu = (cpu["daemon1"] - cpu["daemon0"] + cpu["server1"] - cpu["server0"]) / warm
            local_cpu = (idle_server[1][2] - idle_server[0][2] + idle_server[1][1] - idle_server[0][1]) / warm
            print(
                f"  CPU seconds per warm in-process cycle (Cycle.run): this process "
                f"{(idle_server[1][2] - idle_server[0][2]) / warm:.2f}, Prefect server "
                f"{(idle_server[1][1] - idle_server[0][1]) / warm:.2f}; CPU ratio scheduled / in-process "
                f"(process + server) {sched_cpu / local_cpu:.2f}x"
            )
        print(
            f"  the same windows' cycles in process (Cycle built -> before the store write): "
            f"{median(warm_cycles):.2f}s ({', '.join(f'{v:.2f}' for v in warm_cycles)})"
        )
    print(
        f"ratio scheduled / in-process: {median(warm_sched) / median(warm_local):.2f}x (goal <= 1.2x); "
        f"flow / in-process {median(warm_flow) / median(warm_local):.2f}x; "
        f"scheduled / flow {median(warm_sched) / median(warm_flow):.2f}x"
    )
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
