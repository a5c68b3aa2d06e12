"""The daemon: a Prefect server, the monitoring deployment, and the metrics endpoint.

``serve()`` starts (or reuses) a Prefect API, serves ``flows.monitor.monitor_cycle`` as a
deployment on the configured schedule, and exposes ``/metrics`` read from the state store. It
stops cleanly on SIGTERM/SIGINT: the runner stops (its schedule is NOT paused, so a restart
resumes it), then the metrics server, then the Prefect server it started.

Prefect's ephemeral API runs no scheduler (shared notes), so unless ``$PREFECT_API_URL`` points at
a server, the daemon starts ``prefect server start`` on loopback with SQLite in the state dir.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from tasksim.config import Config
from tasksim.errors import TasksimError
from tasksim.export import StoreCollector, registry_for, start_metrics_server
from tasksim.store import Store
from tasksim.worker import EXECUTOR_THREAD as WARM_EXECUTOR_THREAD

__all__ = ["DAEMON_FILE", "LOCK_FILE", "DaemonLock", "PrefectServer", "ServerWatchdog", "check_port_free", "daemon_info",
           "prefect_environment", "schedule_kwargs", "serve", "trigger"]

log = logging.getLogger(__name__)

DAEMON_FILE = "daemon.json"
LOCK_FILE = "daemon.lock"
# How often the watchdog checks the Prefect server the daemon started, and how many times it
# restarts it before giving up (then the daemon stops with one line saying so).
WATCHDOG_SECONDS = 5.0
MAX_SERVER_RESTARTS = 3
# On SIGTERM, how long a cycle in flight may take to finish before its run is marked Cancelled.
STOP_GRACE_SECONDS = 30.0
# ``--cycles N``: how long the metrics endpoint stays up after the last cycle for a scraper that is
# watching to read it (one of Prometheus's default 15 s intervals fits; with no scraper, no wait).
FINAL_SCRAPE_WAIT_SECONDS = 20.0


class DaemonLock:
    """One daemon per state dir: an exclusive ``flock`` on ``state_dir/daemon.lock``, which holds the
    owner's PID. The kernel drops the lock when the process dies, so a crash leaves no stale lock."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> DaemonLock:
        import fcntl

        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise TasksimError(f"{self.path}: cannot create the daemon lock file ({exc.strerror or exc})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise TasksimError(f"{self.path}: another tasksim daemon (PID {owner}) is already serving this "
                               "state_dir; stop it first or use another state_dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock; the file stays (unlinking would race a new owner)
            self._fd = None

    def __enter__(self) -> DaemonLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def prefect_environment(config: Config) -> dict[str, str]:
    """Environment for Prefect processes of this deployment: its own home, DB and no telemetry."""
    home = config.state_dir / "prefect"
    return {
        "PREFECT_HOME": str(home),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        # The server's late_runs service marks a scheduled run nobody started within 15 s "Late"; on
        # SQLite those transitions fail with "database is locked" while other writes go on
        # (bench/sqlite_late_runs.py: 1534 error lines, 767 failed "Late" transitions in 120 s; none
        # with the service off). The warm worker starts or cancels every run when it comes due, so
        # "Late" only ever marked runs that piled up; the flow runs' states are unchanged without it.
        "PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED": "false",
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(home / "results"),
        # INFO reaches the Prefect UI (API log handler); the console shows warnings only, the daemon
        # prints one line per cycle itself
        "PREFECT_LOGGING_LEVEL": os.environ.get("PREFECT_LOGGING_LEVEL", "INFO"),
        "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": os.environ.get("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING"),
    }


def _healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def check_port_free(host: str, port: int, field: str) -> None:
    """Raise ``TasksimError`` (one line naming ``field``) when ``host:port`` cannot be bound: found
    before anything starts, not as a bind traceback after the Prefect server's 20 s start (the
    metrics port) or as a start timeout (the Prefect port held by some other program)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind: TIME_WAIT is free
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise TasksimError(f"{field}: cannot listen on {host}:{port} ({exc.strerror or exc}); stop what holds it "
                               f"or pick another port") from None


@dataclass
class PrefectServer:
    """A ``prefect server start`` child process on loopback, stopped with the daemon."""

    api_url: str
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @classmethod
    def start(cls, config: Config, env: dict[str, str]) -> PrefectServer:
        host, port = config.prefect.host, config.prefect.port
        if _healthy(f"http://{host}:{port}/api"):
            raise TasksimError(f"prefect.port: a server already answers on {host}:{port}; stop it, pick another "
                               "port, or point PREFECT_API_URL at it")
        check_port_free(host, port, "prefect.port")
        return cls.launch(host, port, env, config.prefect.startup_timeout.total_seconds())

    @classmethod
    def launch(cls, host: str, port: int, env: dict[str, str], startup_timeout: float) -> PrefectServer:
        """Start ``prefect server start`` on ``host:port`` with ``env`` over this process's environment
        (``PREFECT_HOME`` required; its ``server.log`` gets the output) and wait until it answers.
        Raises ``TasksimError`` when it exits or does not answer within ``startup_timeout`` seconds."""
        api_url = f"http://{host}:{port}/api"
        home = Path(env["PREFECT_HOME"])
        home.mkdir(parents=True, exist_ok=True)
        log_path = home / "server.log"
        log_file = open(log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port)],
            env={**os.environ, **env}, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        server = cls(api_url=api_url, process=process, log_path=log_path)
        deadline = time.monotonic() + startup_timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] if log_path.exists() else []
                raise TasksimError(f"the Prefect server exited with code {process.returncode} "
                                   f"({tail[0] if tail else 'no output'}); see {log_path}")
            if _healthy(api_url):
                log.info("Prefect server ready at %s", api_url)
                return server
            time.sleep(0.5)
        server.stop()
        raise TasksimError(f"the Prefect server did not answer on {api_url} within {startup_timeout:.0f}s; "
                           f"see {log_path}")

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:  # the server runs uvicorn and services in its own process group
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)
        except ProcessLookupError:
            pass


def _drain_prefect_workers(timeout: float = 10.0) -> None:
    """Send the flow-run logs and events that Prefect's background workers still hold while the
    server is up. Drained only at interpreter exit, after the server stopped, they retried against
    the dead API for about 70 s before "Error logging to API" (``tasksim demo --cycles 1`` took
    that long to exit after "daemon stopped")."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        try:
            worker.drain_all(timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - best effort at shutdown: a failed drain must not keep the server up
            log.debug("draining %s failed: %s", worker.__name__, exc)


class ServerWatchdog:
    """Restarts the Prefect server the daemon started when it dies; after ``max_restarts`` failed
    or used-up restarts, calls ``on_fatal`` with one line (the daemon then stops) so it never hangs
    on a dead API."""

    def __init__(self, server: PrefectServer, restart: Any, on_fatal: Any, *,
                 interval: float = WATCHDOG_SECONDS, max_restarts: int = MAX_SERVER_RESTARTS) -> None:
        self.server = server
        self.restart = restart  # () -> PrefectServer (raises TasksimError when it cannot start)
        self.on_fatal = on_fatal  # (message) -> None
        self.interval = interval
        self.max_restarts = max_restarts
        self.restarts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tasksim-prefect-watchdog", daemon=True)

    def start(self) -> ServerWatchdog:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 1)

    def _alive(self) -> bool:
        return self.server.process is None or self.server.process.poll() is None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if self._alive():
                continue
            code = self.server.process.returncode if self.server.process else None
            if self.restarts >= self.max_restarts:
                self.on_fatal(f"the Prefect server at {self.server.api_url} died (exit code {code}) and was "
                              f"already restarted {self.restarts} times; stopping (see {self.server.log_path})")
                return
            self.restarts += 1
            log.warning("the Prefect server died (exit code %s); restarting it (%d/%d)", code, self.restarts,
                        self.max_restarts)
            try:
                self.server = self.restart()
            except TasksimError as exc:
                self.on_fatal(f"the Prefect server at {self.server.api_url} died (exit code {code}) and could "
                              f"not be restarted: {exc}")
                return


def _write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)


def daemon_info(config: Config) -> dict[str, Any] | None:
    """What a running daemon wrote about itself (its API URL, deployment, metrics address)."""
    path = config.state_dir / DAEMON_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@contextmanager
def _watching(name: str, watch: Callable[[threading.Event], None], grace: float = 5.0) -> Iterator[None]:
    """Run ``watch(done)`` in a daemon thread named ``name`` while the block runs; ``done`` is set
    when it exits, and the thread gets ``grace`` seconds to finish its last pass (the one shape of
    the daemon's store watchers: cycle counter, echo, experiments)."""
    done = threading.Event()
    thread = threading.Thread(target=watch, args=(done,), name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=grace)


@contextmanager
def _stop_after_cycles(config: Config, cycles: int | None,
                       tracked: Callable[[], set[Any]] = set,
                       scraped: Callable[[], int | None] = lambda: None) -> Iterator[None]:
    """For ``demo --cycles N``: SIGTERM ourselves once N more cycles are in the store (after the
    run in flight reports its state, and a scraper that is watching reads the last cycle)."""
    if not cycles:
        yield
        return
    with Store(config.state_dir, readonly=True) as store:
        baseline = store.snapshot().cycles_recorded

    def watch(done: threading.Event) -> None:
        with Store(config.state_dir, readonly=True) as watcher:
            while not done.wait(1.0):
                recorded = watcher.snapshot().cycles_recorded
                if recorded - baseline >= cycles:
                    log.info("%d cycles done, stopping", cycles)
                    _wait_for_flow_runs_to_finish(timeout=60.0, tracked=tracked)
                    _wait_for_final_scrape(recorded, scraped, timeout=FINAL_SCRAPE_WAIT_SECONDS)
                    os.kill(os.getpid(), signal.SIGTERM)
                    return

    with _watching("tasksim-cycle-counter", watch):
        yield


@contextmanager
def _echo_cycles(config: Config, *, stop_when_exhausted: bool) -> Iterator[None]:
    """Print one line per recorded cycle (window, drift verdict, top source, action, duration) to
    stdout. With ``stop_when_exhausted`` (the demo), a ``no_data`` cycle past the end of a
    sequential stream prints why and stops the daemon (SIGTERM to ourselves)."""
    from tasksim.report import cycle_line, recorded_cycles

    seen = max((c["cycle_id"] for c in recorded_cycles(config.state_dir)), default=0)
    stream_end = None
    if stop_when_exhausted and config.window.mode == "sequential":
        from tasksim.sample import production_time_range

        bounds = production_time_range(config.production)
        stream_end = None if bounds is None else bounds[1]

    def watch(done: threading.Event) -> None:
        while True:
            stopping = done.wait(1.0)
            # after ``done`` one last pass: a cycle recorded just before the daemon stops is printed too
            if echo_new() or stopping:
                return

    def echo_new() -> bool:
        """Print the cycles recorded since the last pass; True once the stream is used up (the
        daemon is then stopped)."""
        nonlocal seen
        try:
            new = recorded_cycles(config.state_dir, after=seen)
        except TasksimError as exc:  # the store may be mid-creation on the very first cycle
            log.debug("cycle echo: %s", exc)
            return False
        for c in new:
            seen = c["cycle_id"]
            print(cycle_line(c), flush=True)
            start = c["window"]["start"]
            if (stream_end is not None and c["status"] == "no_data" and start
                    and datetime.fromisoformat(start) > stream_end):
                print(f"the stream is used up: its last row is at {stream_end.isoformat()} and window {start} is "
                      "empty; stopping. Run `make demo` (or `tasksim demo`) again to replay it from the start.",
                      flush=True)
                os.kill(os.getpid(), signal.SIGTERM)
                return True
        return False

    with _watching("tasksim-cycle-echo", watch):
        yield


class _PrefectInfoFilter(logging.Filter):
    """Keeps INFO chatter off the daemon's terminal, which prints one line per cycle: Prefect's own
    (runner polls, aborted submissions; the Prefect UI has the runs' INFO logs) and the stages' INFO
    lines of a cycle the warm worker runs in this process (``tasksim run`` shows them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "prefect.task_runs" and str(record.msg).startswith("Timeout of %s seconds configured"):
            # the warm worker runs cycles in a thread, where Prefect applies a stage's timeout only
            # between blocking calls and warns once per stage; the warning stays in the Prefect UI
            return False
        if record.levelno >= logging.WARNING:
            return True
        return not record.name.startswith("prefect") and record.threadName != WARM_EXECUTOR_THREAD


def _quiet_prefect_console() -> None:
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _PrefectInfoFilter) for f in handler.filters):
            handler.addFilter(_PrefectInfoFilter())


def _wait_for_final_scrape(recorded: int, scraped: Callable[[], int | None], timeout: float,
                           poll: float = 0.2) -> bool:
    """Before stopping on purpose: when something scrapes ``/metrics`` (a scrape has been served),
    keep the endpoint up until a scrape has read the ``recorded`` cycles, at most ``timeout``
    seconds; otherwise Prometheus may never see the last cycle of a ``--cycles N`` run. True when
    the last cycle was scraped or nothing scrapes."""
    deadline = time.monotonic() + timeout
    while True:
        seen = scraped()
        if seen is None or seen >= recorded:
            return True
        if time.monotonic() >= deadline:
            log.info("stopping before a scrape read the last cycle (%d of %d cycles scraped)", seen, recorded)
            return False
        time.sleep(poll)


def _wait_for_flow_runs_to_finish(timeout: float, tracked: Callable[[], set[Any]]) -> None:
    """Before stopping on purpose: let the flow run in flight now (the one that wrote the last cycle)
    report its final state to Prefect; the store is written a moment before the flow returns. A run
    still in flight at the stop would be marked CANCELLED after its cycle was stored."""
    finishing = tracked()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and finishing & tracked():
        time.sleep(0.5)


def serve(config: Config, *, cycles: int | None = None, run_now: bool = True,
          stop_when_exhausted: bool = False) -> None:
    """Run the daemon until SIGTERM/SIGINT (or until ``cycles`` cycles have completed, or with
    ``stop_when_exhausted`` until a sequential stream is used up). Prints one line per cycle.

    Before anything starts: the state store is opened for writing once (created, or migrated from
    an older schema; a newer one is refused) and ``state_dir/daemon.lock`` is taken, so a second
    daemon on the same state dir stops with one line."""
    Store(config.state_dir, retention_cycles=config.retention.cycles,
          retention_days=config.retention.days).close()
    lock = DaemonLock(config.state_dir).acquire()
    try:
        _serve_locked(config, cycles=cycles, run_now=run_now, stop_when_exhausted=stop_when_exhausted)
    finally:
        lock.release()


def _serve_locked(config: Config, *, cycles: int | None, run_now: bool, stop_when_exhausted: bool) -> None:
    check_port_free(config.metrics.host, config.metrics.port, "metrics.port")
    env = prefect_environment(config)
    server: PrefectServer | None = None
    watchdog: ServerWatchdog | None = None
    fatal: list[str] = []
    external = os.environ.get("PREFECT_API_URL")
    if external:
        api_url = external.rstrip("/")
        env.pop("PREFECT_API_DATABASE_CONNECTION_URL")
        log.info("using the Prefect API at %s", api_url)
    else:
        server = PrefectServer.start(config, env)
        api_url = server.api_url

        def give_up(message: str) -> None:
            fatal.append(message)
            log.error("%s", message)
            os.kill(os.getpid(), signal.SIGTERM)

        watchdog = ServerWatchdog(server, lambda: PrefectServer.start(config, env), give_up).start()
    print(f"Prefect UI: {api_url.removesuffix('/api')}  (flow runs, task runs, logs and artifacts)", flush=True)
    _quiet_prefect_console()
    os.environ.update(env)
    os.environ["PREFECT_API_URL"] = api_url

    metrics_server = None
    info_path = config.state_dir / DAEMON_FILE
    # SIGTERM must unwind through the finally below even before the runner installs its handler
    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        collector = StoreCollector(config.state_dir, sources=[s.name for s in config.sources],
                                   schedule_interval_seconds=config.schedule.longest_gap().total_seconds())
        metrics_server = start_metrics_server(registry_for(collector), host=config.metrics.host,
                                              port=config.metrics.port)
        log.info("metrics on http://%s:%d/metrics", config.metrics.host, config.metrics.port)
        with _echo_cycles(config, stop_when_exhausted=stop_when_exhausted):
            _run_deployment_loop(config, api_url, info_path, cycles=cycles, run_now=run_now,
                                 scraped=lambda: collector.scraped_cycles)
    except KeyboardInterrupt:
        log.info("interrupted, shutting down")
    finally:
        signal.signal(signal.SIGTERM, previous)
        if metrics_server is not None:
            metrics_server.shutdown()
        if watchdog is not None:
            watchdog.stop()
            server = watchdog.server  # the one running now, if it was restarted
        if server is not None:
            _drain_prefect_workers()
            server.stop()
        info_path.unlink(missing_ok=True)
        log.info("daemon stopped")
    if fatal:
        raise TasksimError(fatal[0])


def schedule_kwargs(config: Config) -> dict[str, Any]:
    """The schedule argument for Prefect's ``Runner.add_flow``: an interval, or a cron schedule in the
    configured time zone (a bare ``cron=`` would ignore ``schedule.timezone``)."""
    if config.schedule.interval:
        return {"interval": config.schedule.interval}
    from prefect.schedules import Cron

    return {"schedule": Cron(config.schedule.cron, timezone=config.schedule.timezone)}


def _run_deployment_loop(config: Config, api_url: str, info_path: Path, *, cycles: int | None,
                         run_now: bool, scraped: Callable[[], int | None] = lambda: None) -> None:
    import asyncio

    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.deployments.runner import EntrypointType
    from prefect.runner import Runner

    from flows.monitor import FLOW_NAME, monitor_cycle
    from tasksim.embed import keep_encoders_loaded
    from tasksim.worker import WarmWorker

    # No overlap and no pile-up: the deployment allows one running cycle, and a run that would start
    # while one runs is cancelled by the server (CANCEL_NEW) instead of queueing as a late run.
    one_at_a_time = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)
    flow = monitor_cycle.with_options(retries=config.prefect.retries,
                                      timeout_seconds=config.prefect.flow_timeout.total_seconds())
    # The cycles run warm, in this process (tasksim.worker): the deployment is registered here with
    # its schedule and concurrency limit, and the WarmWorker executes its runs with Prefect's flow
    # engine; torch, Evidently and the encoder stay loaded between cycles.
    deployment = flow.to_deployment(name=config.name, parameters={"config_path": str(config.config_path)},
                                    entrypoint_type=EntrypointType.MODULE_PATH, concurrency_limit=one_at_a_time,
                                    **schedule_kwargs(config))
    deployment.work_pool_name = None  # a served deployment: no work pool, this process polls for its runs
    deployment.work_queue_name = None
    deployment_id = deployment.apply()
    keep_encoders_loaded()
    worker = WarmWorker(flow, deployment_id, max_runs=cycles).start()

    # Transfer experiments (long, GPU/CPU heavy) keep Prefect's Runner: each in its own subprocess, on
    # demand (tasksim trigger --experiment, the Prefect UI/API) and automatically (experiment.auto:
    # _auto_experiments), one at a time, bounded by the experiment budget (plus 10 minutes to load the
    # models and write the outcome). pause_on_shutdown=False: a restart must find schedules active.
    # limit=2 lets a colliding run reach the server and be cancelled (with limit=1 the runner would
    # leave it scheduled, ever later).
    from flows.experiment import FLOW_NAME as EXPERIMENT_FLOW
    from flows.experiment import experiment_flow

    runner = Runner(name=f"tasksim-{config.name}", pause_on_shutdown=False, limit=2)
    runner.add_flow(experiment_flow.with_options(
                        timeout_seconds=config.experiment.budget.total_seconds() + 600),
                    name=config.name, parameters={"config_path": str(config.config_path), "trigger": "prefect"},
                    entrypoint_type=EntrypointType.MODULE_PATH, concurrency_limit=one_at_a_time)
    name = f"{FLOW_NAME}/{config.name}"
    _write_json_atomic(info_path, {
        "pid": os.getpid(), "api_url": api_url, "deployment": name,
        "experiment_deployment": f"{EXPERIMENT_FLOW}/{config.name}",
        "metrics_url": f"http://{config.metrics.host}:{config.metrics.port}/metrics",
        "config_path": str(config.config_path), "started_at": time.time(), "worker": "warm, in process",
    })
    every = (f"every {_human(config.schedule.interval.total_seconds())}" if config.schedule.interval
             else f"on cron {config.schedule.cron!r}")
    log.info("serving deployment %s, %s, warm in this process", name, every)
    if run_now:
        threading.Thread(target=_trigger_when_ready, args=(name,), daemon=True).start()
    try:
        with _stop_after_cycles(config, cycles, tracked=worker.in_flight, scraped=scraped), \
                _auto_experiments(config, f"{EXPERIMENT_FLOW}/{config.name}"):
            asyncio.run(runner.start())
    finally:
        worker.stop(grace=STOP_GRACE_SECONDS)


@contextmanager
def _auto_experiments(config: Config, deployment: str, *, poll: float = 2.0) -> Iterator[None]:
    """Start transfer experiments automatically (``experiment.auto``; the rule and its debounce are
    ``tasksim.autoexp.decide``): a watcher thread reads each newly recorded cycle from the store and,
    when the rule says so, records the request and creates a run of the experiment deployment
    without waiting for it (``timeout=0``). The monitoring flow never waits: the experiment runs in
    its own flow-run process, one at a time (the deployment's concurrency limit)."""
    auto = config.experiment.auto
    if not auto.enabled:
        yield
        return
    from tasksim.report import recorded_cycles

    seen = max((c["cycle_id"] for c in recorded_cycles(config.state_dir)), default=0)

    def watch(done: threading.Event) -> None:
        nonlocal seen
        while not done.wait(poll):
            try:
                new = recorded_cycles(config.state_dir, after=seen)
                if not new:
                    continue
                seen = max(c["cycle_id"] for c in new)
                _maybe_start_experiment(config, deployment)
            except Exception as exc:  # noqa: BLE001 - the watcher must outlive a failed request
                log.warning("automatic experiment: %s: %s", type(exc).__name__, exc)

    with _watching("tasksim-auto-experiment", watch):
        yield


def _maybe_start_experiment(config: Config, deployment: str, *, now: float | None = None,
                            start: Callable[[str, dict[str, Any]], str] | None = None) -> Any:
    """``autoexp.claim`` (decide on the store's newest cycles, record the request); on yes, start
    the deployment (``start(deployment, parameters) -> flow run id``; default: Prefect's
    ``run_deployment(..., timeout=0)``, which returns as soon as the run is created)."""
    from tasksim import autoexp

    decision = autoexp.claim(config, now=now)
    if not decision.start:
        log.debug("automatic experiment: not started (%s)", decision.reason)
        return decision
    log.info("automatic experiment: %s; starting %s", decision.reason, deployment)
    parameters = {"config_path": str(config.config_path), "trigger": f"auto: {decision.reason}"[:200]}
    (start or _start_deployment)(deployment, parameters)
    return decision


def _start_deployment(deployment: str, parameters: dict[str, Any]) -> str:
    from prefect.deployments import run_deployment

    return str(run_deployment(deployment, parameters=parameters, timeout=0, as_subflow=False).id)


def _human(seconds: float) -> str:
    for unit, size in (("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"


def _trigger_when_ready(deployment: str) -> None:
    """Ask for one run at start-up so a new daemon reports without waiting a whole interval."""
    from prefect.deployments import run_deployment

    for _ in range(60):
        try:
            run_deployment(deployment, timeout=0, as_subflow=False)
            return
        except Exception as exc:  # the deployment may not be registered for a second or two
            log.debug("start-up run not created yet: %s", exc)
            time.sleep(1.0)


def trigger(config: Config, *, wait: float | None = 600.0, experiment: bool = False) -> dict[str, Any]:
    """Ask the running daemon for an immediate cycle (``experiment``: a transfer experiment) through
    its Prefect deployment."""
    info = daemon_info(config)
    api_url = os.environ.get("PREFECT_API_URL") or (info or {}).get("api_url")
    if not api_url:
        raise TasksimError(f"{config.state_dir / DAEMON_FILE}: no running daemon found for this config "
                           "(start it with `tasksim serve`) and PREFECT_API_URL is not set")
    if not _healthy(api_url.rstrip("/")):
        raise TasksimError(f"the Prefect API at {api_url} does not answer; is `tasksim serve` running?")
    os.environ.update({k: v for k, v in prefect_environment(config).items()
                       if k not in ("PREFECT_API_DATABASE_CONNECTION_URL",)})
    os.environ["PREFECT_API_URL"] = api_url
    from prefect.deployments import run_deployment

    from flows.experiment import FLOW_NAME as EXPERIMENT_FLOW
    from flows.monitor import FLOW_NAME

    deployment = (info or {}).get("deployment") or f"{FLOW_NAME}/{config.name}"
    if experiment:
        deployment = (info or {}).get("experiment_deployment") or f"{EXPERIMENT_FLOW}/{config.name}"
    deadline = None if wait is None else time.monotonic() + wait
    while True:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        flow_run = run_deployment(deployment, timeout=remaining, poll_interval=1, as_subflow=False)
        state = flow_run.state
        # the warm worker keeps a run made by hand scheduled while a cycle runs and starts it next; a
        # run that still collided (cancelled by the deployment's CANCEL_NEW limit, e.g. taken by
        # another poller) is asked for again, so it runs next rather than behind a backlog
        collided = (state is not None and state.is_cancelled()
                    and "concurrency" in (state.message or "").lower())
        if not collided or wait == 0 or (deadline is not None and time.monotonic() >= deadline):
            break
        log.info("a cycle is running; the triggered run will start when it ends")
        time.sleep(2.0)
    return {"flow_run_id": str(flow_run.id), "flow_run_name": flow_run.name, "deployment": deployment,
            "state": state.type.value if state else None, "state_name": state.name if state else None}
