"""The warm worker: the monitoring deployment's flow runs executed inside the daemon's process.

Prefect's ``serve()``/``Runner`` start every flow run in a new subprocess, which re-imports torch and
Evidently and reloads the encoder each time (4-7 s per cycle here). ``WarmWorker`` keeps one
process warm instead, using only Prefect's documented client and engine API:

- the server keeps the schedule, the deployment's concurrency limit and every run's state: the
  worker polls ``get_scheduled_flow_runs_for_deployments`` (which also marks the deployment as
  served) every ``poll_seconds`` while idle and every ``busy_poll_seconds`` while a run is in
  flight, looking that far ahead: a run known to come due before the next poll is taken at its
  due time, not up to a poll later (the poll delay was about half of a scheduled cycle's overhead,
  docs/benchmarks.md "Warm worker"); an idle worker takes a scheduled run ``prefetch_seconds``
  early and starts it at its due time; a run ending wakes the poller, so a waiting trigger starts
  at once. It proposes ``Pending`` for a run it takes (the server's deployment concurrency rule
  takes the slot, or cancels the run: ``CANCEL_NEW``), and executes it with
  ``prefect.flow_engine.run_flow`` in its executor thread, which reports ``Running`` and the final
  state and renews the slot's lease; work the run defers (its artifacts: ``after_final_state``)
  is done after its final state;
- one run at a time, and no backlog: an automatically scheduled run that comes due while a run is
  in flight is proposed anyway and the server cancels it (``CANCEL_NEW``); a run created by hand
  (``tasksim trigger``, the UI's "Run", ``run_deployment``) stays scheduled while the worker is busy
  and starts next, ahead of any scheduled one;
- stopping: no new run starts; the run in flight may finish within ``grace`` seconds, else it is
  marked ``Cancelled`` (its cycle has not been stored: the store is written at the end of a cycle);
  a run taken but not started is ``Cancelled`` too, so no slot stays held.

Not supported in process: cancelling a run that is already executing (from the UI) takes effect
only when its cycle ends.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import UUID

__all__ = ["EXECUTOR_THREAD", "WarmWorker", "after_final_state"]

log = logging.getLogger(__name__)

EXECUTOR_THREAD = "tasksim-warm-executor"  # the thread the cycles run in (the daemon's log filter reads it)
DUE_MARGIN_SECONDS = 0.01  # poll this long after a run's due time, so the server's clock has passed it
# An idle worker takes a scheduled run (``Pending``, then reads it) this long before it comes due and
# starts it at its due time, so those two API calls are not part of the run's start delay (Prefect's
# workers do the same with their ``prefetch_seconds``).
PREFETCH_SECONDS = 0.5
# While a run is in flight the worker polls only this often, and at the due times of the runs it
# sees coming in that span (to propose them, so the server cancels them: ``CANCEL_NEW``); a trigger
# waits for the run in flight anyway, and the run's end wakes the poller. Fewer polls while a cycle
# computes: each one is an API call and a write on the Prefect server, on the same CPUs.
BUSY_POLL_SECONDS = 10.0

# Work a flow run handed over to do after its final state, per run a warm worker of this process executes
_AFTER_FINAL: dict[str, list[Callable[[], None]]] = {}
_AFTER_FINAL_LOCK = threading.Lock()


def after_final_state(flow_run_id: UUID | str, fn: Callable[[], None]) -> bool:
    """Defer ``fn`` until flow run ``flow_run_id`` has its final state, when a warm worker of this
    process executes that run: the worker calls it then, before it takes the next run (True).
    False when no warm worker executes the run (a direct flow call, another process): the caller
    does the work itself. The monitoring flow publishes its Prefect artifacts this way, so a
    scheduled run reaches ``Completed`` without waiting for them (docs/benchmarks.md)."""
    with _AFTER_FINAL_LOCK:
        pending = _AFTER_FINAL.get(str(flow_run_id))
        if pending is None:
            return False
        pending.append(fn)
        return True


class WarmWorker:
    """Executes the flow runs of one deployment in this process (see the module docstring).

    ``flow`` is the Prefect flow the deployment was made from; ``deployment_id`` its id on the
    server. ``max_runs`` (the demo's ``--cycles``) stops taking runs after that many. ``run`` is
    how one run executes (default: ``prefect.flow_engine.run_flow``; tests pass a stub)."""

    def __init__(
        self,
        flow: Any,
        deployment_id: UUID,
        *,
        poll_seconds: float = 1.0,
        busy_poll_seconds: float = BUSY_POLL_SECONDS,
        prefetch_seconds: float = PREFETCH_SECONDS,
        max_runs: int | None = None,
        run: Callable[..., Any] | None = None,
    ) -> None:
        self.flow = flow
        self.deployment_id = deployment_id
        self.poll_seconds = poll_seconds
        self.busy_poll_seconds = max(busy_poll_seconds, poll_seconds)
        self.prefetch_seconds = min(prefetch_seconds, poll_seconds)
        self._start_at: dict[UUID, float] = {}  # a run taken before its due time: start it then (monotonic)
        self.max_runs = max_runs
        self.runs_started = 0
        self.runs_finished = 0
        self._run = run
        self._stop = threading.Event()
        self._wake = threading.Event()  # set to poll now: stopping, or the run in flight ended
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=1)
        self._busy = threading.Lock()  # held from Pending until the run's final state
        self._in_flight: UUID | None = None
        self._threads = [
            threading.Thread(target=self._poll_loop, name="tasksim-warm-poller", daemon=True),
            threading.Thread(target=self._execute_loop, name=EXECUTOR_THREAD, daemon=True),
        ]

    # -- public -----------------------------------------------------------------------------
    def start(self) -> WarmWorker:
        for thread in self._threads:
            thread.start()
        return self

    def in_flight(self) -> set[UUID]:
        """The run executing now (empty when idle)."""
        current = self._in_flight
        return set() if current is None else {current}

    def stop(self, grace: float = 60.0) -> None:
        """Take no new run; let the one in flight finish within ``grace`` seconds, else mark it
        Cancelled; cancel a run taken but not started."""
        self._stop.set()
        self._wake.set()
        self._threads[0].join(timeout=self.poll_seconds + 30)
        try:
            taken = self._queue.get_nowait()
        except queue.Empty:
            taken = None
        self._queue.put(None)  # wakes the executor, which then exits
        if taken is not None:
            self._cancel(taken.id, "the tasksim daemon stopped before this run started")
            self._release()
        self._threads[1].join(timeout=grace)
        if self._threads[1].is_alive() and self._in_flight is not None:
            self._cancel(
                self._in_flight,
                f"the tasksim daemon stopped; this run did not finish within {grace:g}s and recorded nothing",
            )

    # -- threads ----------------------------------------------------------------------------
    def _poll_loop(self) -> None:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            while not self._stop.is_set():
                self._wake.clear()
                wait = self.busy_poll_seconds if self._busy.locked() else self.poll_seconds
                try:
                    next_in = self._poll_once(client, ahead=wait)
                    if next_in is not None:  # poll again when the next known run is to be taken
                        wait = min(wait, next_in + DUE_MARGIN_SECONDS)
                except Exception as exc:  # noqa: BLE001 - the API may be restarting: log and poll again
                    log.warning("warm worker: polling the Prefect API failed: %s: %s", type(exc).__name__, exc)
                self._wake.wait(wait)

    def _poll_once(self, client: Any, ahead: float | None = None) -> float | None:
        """Take the runs that are due (idle: also a scheduled run due within ``prefetch_seconds``,
        started at its due time); returns the seconds until the earliest run scheduled within the
        next ``ahead`` seconds (default ``poll_seconds``) and not taken is to be taken: idle, its
        prefetch time; busy, its due time (None: no such run)."""
        from prefect.exceptions import Abort
        from prefect.states import Pending
        from prefect.utilities.engine import propose_state_sync

        now = datetime.now(timezone.utc)
        window = self.poll_seconds if ahead is None else ahead
        found = client.get_scheduled_flow_runs_for_deployments(
            [self.deployment_id], scheduled_before=now + timedelta(seconds=window)
        )

        def due_in(run: Any) -> float:
            return (run.expected_start_time - now).total_seconds() if run.expected_start_time else 0.0

        lead = 0.0 if self._busy.locked() else self.prefetch_seconds
        runs = [r for r in found if due_in(r) <= lead]
        # runs made by hand first (a trigger runs next), then the schedule's, oldest first
        runs.sort(key=lambda r: (bool(r.auto_scheduled), r.expected_start_time or r.created or datetime.min))
        left = [r for r in found if due_in(r) > lead]
        for run in runs:
            if self._stop.is_set() or self._exhausted():
                return None
            early = due_in(run) > 0
            busy = not self._busy.acquire(blocking=False)
            if busy and (early or not run.auto_scheduled):
                # a trigger waits, scheduled, until the run in flight ends; a run not due yet is
                # proposed when it comes due
                if early:
                    left.append(run)
                continue
            try:
                # the server's deployment concurrency rule decides: Pending with the slot, or (busy) Cancelled
                state = propose_state_sync(client, Pending(), flow_run_id=run.id)
            except Abort as exc:  # another worker took it, or it is no longer scheduled
                log.debug("warm worker: run %s not taken: %s", run.id, exc)
                state = None
            if state is None or not state.is_pending():
                if state is not None:
                    log.debug("warm worker: run %s not started (%s: %s)", run.name, state.name, state.message)
                if not busy:
                    self._busy.release()
                continue
            if busy:  # cannot happen with a concurrency limit of 1; never run two at once here
                self._cancel(run.id, "the warm worker runs one cycle at a time")
                continue
            self.runs_started += 1
            if early:
                self._start_at[run.id] = time.monotonic() + due_in(run)
            self._queue.put(client.read_flow_run(run.id))
        if not left:
            return None
        lead = 0.0 if self._busy.locked() else self.prefetch_seconds
        return max(0.05, min(due_in(r) for r in left) - lead)

    def _exhausted(self) -> bool:
        return self.max_runs is not None and self.runs_started >= self.max_runs

    def _execute_loop(self) -> None:
        if self._run is not None:  # a stand-in for the engine (tests): no Prefect client
            self._execute_runs()
            return
        from contextlib import ExitStack

        from prefect.context import SyncClientContext

        # One Prefect client for every run this thread executes: the flow engine, its task runs and
        # the artifacts take it from this context (Prefect's SyncClientContext). A client per run
        # built a new TLS context each time (certifi's CA file: ~0.1 s of CPU at the run's start).
        with ExitStack() as stack:
            try:
                stack.enter_context(SyncClientContext.get_or_create())
            except Exception as exc:  # noqa: BLE001 - API not answering yet: each run makes its own client
                log.warning("warm worker: no shared Prefect client (%s: %s)", type(exc).__name__, exc)
            self._execute_runs()

    def _execute_runs(self) -> None:
        while True:
            run = self._queue.get()
            if run is None:
                return
            self._in_flight = run.id
            delay = self._start_at.pop(run.id, 0.0) - time.monotonic()
            if delay > 0 and self._stop.wait(delay):  # taken ahead of its due time; stopped before it
                self._cancel(run.id, "the tasksim daemon stopped before this run started")
                self._in_flight = None
                self._release()
                continue
            started = time.perf_counter()
            with _AFTER_FINAL_LOCK:
                _AFTER_FINAL[str(run.id)] = []
            try:
                state = self._execute(run)
                log.debug(
                    "warm worker: run %s %s in %.1fs",
                    run.name,
                    getattr(state, "name", state),
                    time.perf_counter() - started,
                )
            except BaseException as exc:  # noqa: BLE001 - the engine recorded the run's state; the worker goes on
                log.warning("warm worker: run %s raised %s: %s", run.name, type(exc).__name__, exc)
            finally:
                with _AFTER_FINAL_LOCK:
                    deferred = _AFTER_FINAL.pop(str(run.id), [])
                for fn in deferred:
                    try:
                        fn()
                    except Exception as exc:  # noqa: BLE001 - after the final state: log it, take the next run
                        log.warning("warm worker: after run %s: %s: %s", run.name, type(exc).__name__, exc)
                self._in_flight = None
                self.runs_finished += 1
                self._release()
                self._wake.set()  # a trigger waiting for this run starts now, not a poll later

    def _execute(self, run: Any) -> Any:
        if self._run is not None:
            return self._run(self.flow, flow_run=run)
        from prefect.flow_engine import run_flow

        return run_flow(self.flow, flow_run=run, return_type="state")

    # -- helpers ----------------------------------------------------------------------------
    def _release(self) -> None:
        try:
            self._busy.release()
        except RuntimeError:  # already released
            pass

    def _cancel(self, flow_run_id: UUID, message: str) -> None:
        from prefect.client.orchestration import get_client
        from prefect.states import Cancelled

        try:
            with get_client(sync_client=True) as client:
                # through the server's rules (not force=True): the transition releases the
                # deployment's concurrency slot
                client.set_flow_run_state(flow_run_id, Cancelled(message=message))
        except Exception as exc:  # noqa: BLE001 - best effort at shutdown; the server may be gone
            log.warning("warm worker: could not mark run %s cancelled: %s", flow_run_id, exc)
