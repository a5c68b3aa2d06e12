"""The warm worker: the monitoring deployment's flow runs executed inside the daemon's process.

Prefect's ``serve()``/``Runner`` start every flow run in a new subprocess, which re-imports torch and
Evidently and reloads the encoder each time (4-7 s per cycle here). ``WarmWorker`` keeps one
process warm instead, using only Prefect's documented client and engine API:

- the server keeps the schedule, the deployment's concurrency limit and every run's state: the
  worker polls ``get_scheduled_flow_runs_for_deployments`` (which also marks the deployment as
  served) every ``poll_seconds``, looking that far ahead: a run known to come due before the next
  poll is taken at its due time, not up to a poll later (the poll delay was about half of a
  scheduled cycle's overhead, docs/benchmarks.md "Warm worker"); a run ending wakes the poller,
  so a waiting trigger starts at once. It proposes ``Pending`` for a due run (the server's deployment concurrency rule takes the
  slot, or cancels the run: ``CANCEL_NEW``), and executes it with ``prefect.flow_engine.run_flow``
  in its executor thread, which reports ``Running`` and the final state and renews the slot's lease;
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
        max_runs: int | None = None,
        run: Callable[..., Any] | None = None,
    ) -> None:
        self.flow = flow
        self.deployment_id = deployment_id
        self.poll_seconds = poll_seconds
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
                wait = self.poll_seconds
                try:
                    due_in = self._poll_once(client)
                    if due_in is not None:  # poll again when the next known run comes due
                        wait = min(wait, due_in + DUE_MARGIN_SECONDS)
                except Exception as exc:  # noqa: BLE001 - the API may be restarting: log and poll again
                    log.warning("warm worker: polling the Prefect API failed: %s: %s", type(exc).__name__, exc)
                self._wake.wait(wait)

    def _poll_once(self, client: Any) -> float | None:
        """Take the runs that are due; returns the seconds until the earliest run that is scheduled
        within the next ``poll_seconds`` but not due yet (None: none)."""
        from prefect.exceptions import Abort
        from prefect.states import Pending
        from prefect.utilities.engine import propose_state_sync

        now = datetime.now(timezone.utc)
        ahead = client.get_scheduled_flow_runs_for_deployments(
            [self.deployment_id], scheduled_before=now + timedelta(seconds=self.poll_seconds)
        )
        upcoming = [r.expected_start_time for r in ahead if r.expected_start_time and r.expected_start_time > now]
        due_in = min((t - now).total_seconds() for t in upcoming) if upcoming else None
        runs = [r for r in ahead if not (r.expected_start_time and r.expected_start_time > now)]
        # runs made by hand first (a trigger runs next), then the schedule's, oldest first
        runs.sort(key=lambda r: (bool(r.auto_scheduled), r.expected_start_time or r.created or datetime.min))
        for run in runs:
            if self._stop.is_set() or self._exhausted():
                return None
            busy = not self._busy.acquire(blocking=False)
            if busy and not run.auto_scheduled:
                continue  # a trigger waits, scheduled, until the run in flight ends
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
            self._queue.put(client.read_flow_run(run.id))
        return due_in

    def _exhausted(self) -> bool:
        return self.max_runs is not None and self.runs_started >= self.max_runs

    def _execute_loop(self) -> None:
        while True:
            run = self._queue.get()
            if run is None:
                return
            self._in_flight = run.id
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
