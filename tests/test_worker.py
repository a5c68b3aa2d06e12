"""The warm worker (tasksim.worker): a deployment's runs executed in this process, one at a time,
a run made by hand ahead of scheduled ones, a scheduled run that collides cancelled by the server,
and the model encoders kept loaded between cycles (tasksim.embed.keep_encoders_loaded)."""

from __future__ import annotations

import os
import threading
from types import SimpleNamespace
from typing import Any
from uuid import uuid4

import pytest
import torch
from prefect import flow

from tasksim import embed
from tasksim.config import EncoderConfig
from tasksim.worker import WarmWorker

RAN: list[tuple[str, int, str]] = []
GATE = threading.Event()


@flow(name="tasksim-test-warm", persist_result=False)
def warm_probe(tag: str) -> str:
    GATE.wait(30)
    RAN.append((tag, os.getpid(), threading.current_thread().name))
    return tag


# -- the polling rule, with a stand-in client ----------------------------------------------------
class _Client:
    """Answers get_scheduled_flow_runs_for_deployments with fixed runs; propose_state_sync is patched."""

    def __init__(self, runs: list[Any]) -> None:
        self.runs = runs

    def get_scheduled_flow_runs_for_deployments(self, ids: list[Any], scheduled_before: Any = None) -> list[Any]:
        return list(self.runs)

    def read_flow_run(self, run_id: Any) -> Any:
        return next(r for r in self.runs if r.id == run_id)


def _run(name: str, auto: bool, minute: int) -> Any:
    from datetime import datetime, timezone

    return SimpleNamespace(
        id=uuid4(),
        name=name,
        auto_scheduled=auto,
        expected_start_time=datetime(2026, 1, 1, 0, minute, tzinfo=timezone.utc),
        created=None,
    )


def test_poll_takes_a_hand_made_run_first_and_cancels_colliding_scheduled_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.states import Cancelled, Pending

    proposed: list[str] = []
    slot = {"free": True}

    def propose(client: Any, state: Any, flow_run_id: Any, force: bool = False) -> Any:
        run = client.read_flow_run(flow_run_id)
        proposed.append(run.name)
        if slot["free"]:  # the server's deployment concurrency rule (limit 1, CANCEL_NEW)
            slot["free"] = False
            return Pending()
        return Cancelled(message="Deployment concurrency limit reached.")

    monkeypatch.setattr("prefect.utilities.engine.propose_state_sync", propose)
    scheduled_old, scheduled_new, trigger = _run("s1", True, 1), _run("s2", True, 2), _run("t", False, 3)
    worker = WarmWorker(warm_probe, uuid4())
    worker._poll_once(_Client([scheduled_new, trigger, scheduled_old]))
    # the trigger (made by hand) is taken first although it is the latest; both scheduled runs come
    # due while it is taken: proposed and cancelled by the server, never queued behind it
    assert proposed == ["t", "s1", "s2"]
    assert worker._queue.get_nowait().name == "t" and worker._queue.empty()

    # busy: a second trigger is left scheduled (not proposed, so not cancelled); it starts next
    later = _run("t2", False, 4)
    proposed.clear()
    worker._poll_once(_Client([later, _run("s3", True, 5)]))
    assert proposed == ["s3"] and worker._queue.empty()
    worker._release()  # the run in flight ended
    slot["free"] = True
    worker._poll_once(_Client([_run("s4", True, 0), later]))
    assert proposed == ["s3", "t2", "s4"] and worker._queue.get_nowait().name == "t2"


def test_poll_stops_taking_runs_after_max_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.states import Pending

    monkeypatch.setattr("prefect.utilities.engine.propose_state_sync", lambda *a, **k: Pending())
    worker = WarmWorker(warm_probe, uuid4(), max_runs=1)
    worker._poll_once(_Client([_run("a", False, 0)]))
    worker._release()
    worker._poll_once(_Client([_run("b", False, 1)]))
    assert worker.runs_started == 1 and worker._queue.qsize() == 1


def test_poll_takes_a_run_at_its_due_time_not_a_poll_later(monkeypatch: pytest.MonkeyPatch) -> None:
    """A run scheduled within the next poll is not proposed early; the poll returns how long until
    it is due, so the poller wakes then (the poll delay was part of a scheduled cycle's overhead)."""
    from datetime import datetime, timedelta, timezone

    from prefect.states import Pending

    proposed: list[str] = []

    def propose(client: Any, state: Any, flow_run_id: Any, force: bool = False) -> Any:
        proposed.append(client.read_flow_run(flow_run_id).name)
        return Pending()

    monkeypatch.setattr("prefect.utilities.engine.propose_state_sync", propose)
    soon = _run("soon", True, 0)
    soon.expected_start_time = datetime.now(timezone.utc) + timedelta(seconds=30)
    worker = WarmWorker(warm_probe, uuid4(), poll_seconds=60)
    due_in = worker._poll_once(_Client([soon]))
    assert proposed == [] and worker._queue.empty()
    assert due_in is not None and 25 < due_in <= 30
    soon.expected_start_time = datetime.now(timezone.utc) - timedelta(seconds=0.01)  # now due
    assert worker._poll_once(_Client([soon])) is None
    assert proposed == ["soon"] and worker._queue.get_nowait().name == "soon"


def test_an_idle_worker_takes_a_scheduled_run_just_before_it_is_due_and_starts_it_at_its_due_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Idle: a scheduled run due within ``prefetch_seconds`` is proposed Pending now (the API calls
    off its start delay) and started no earlier than its due time. Busy: a run not due yet is left
    alone (proposing it now would have it cancelled before its time); the poll says when it is due."""
    import time
    from datetime import datetime, timedelta, timezone

    from prefect.states import Pending

    proposed: list[str] = []

    def propose(client: Any, state: Any, flow_run_id: Any, force: bool = False) -> Any:
        proposed.append(client.read_flow_run(flow_run_id).name)
        return Pending()

    monkeypatch.setattr("prefect.utilities.engine.propose_state_sync", propose)
    started: dict[str, float] = {}

    def run(flow: Any, flow_run: Any) -> str:
        started[flow_run.name] = time.monotonic()
        return "Completed"

    worker = WarmWorker(warm_probe, uuid4(), poll_seconds=5, prefetch_seconds=1.0, run=run)
    soon = _run("soon", True, 0)
    soon.expected_start_time = datetime.now(timezone.utc) + timedelta(seconds=0.5)
    due_at = time.monotonic() + 0.5
    assert worker._poll_once(_Client([soon])) is None
    assert proposed == ["soon"] and worker._queue.qsize() == 1  # taken 0.5 s ahead

    later = _run("later", True, 0)  # busy now (soon is taken): a run due in 0.5 s waits for its time
    later.expected_start_time = datetime.now(timezone.utc) + timedelta(seconds=0.5)
    next_in = worker._poll_once(_Client([later]))
    assert proposed == ["soon"] and next_in is not None and 0.3 < next_in <= 0.5

    executor = threading.Thread(target=worker._execute_loop)
    executor.start()
    worker._queue.put(None)
    executor.join(timeout=10)
    assert started["soon"] >= due_at - 0.01


def test_a_run_taken_early_is_cancelled_if_the_worker_stops_before_its_due_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from datetime import datetime, timedelta, timezone

    from prefect.states import Pending

    monkeypatch.setattr("prefect.utilities.engine.propose_state_sync", lambda *a, **k: Pending())
    ran: list[str] = []
    worker = WarmWorker(warm_probe, uuid4(), prefetch_seconds=1.0, run=lambda flow, flow_run: ran.append("ran"))
    cancelled: list[Any] = []
    monkeypatch.setattr(worker, "_cancel", lambda run_id, message: cancelled.append((run_id, message)))
    soon = _run("soon", True, 0)
    soon.expected_start_time = datetime.now(timezone.utc) + timedelta(seconds=0.8)
    worker._poll_once(_Client([soon]))
    executor = threading.Thread(target=worker._execute_loop)
    executor.start()
    worker._stop.set()
    worker._queue.put(None)
    executor.join(timeout=10)
    assert ran == [] and cancelled == [(soon.id, "the tasksim daemon stopped before this run started")]
    assert not worker._busy.locked() and worker.in_flight() == set()


def test_work_deferred_by_a_run_happens_after_its_final_state_before_the_next_run() -> None:
    """What the monitoring flow defers (its artifacts) runs once the run returned with its final
    state, while the run still counts as in flight, and a failure there does not stop the worker."""
    from tasksim.worker import after_final_state

    events: list[str] = []

    def run(flow: Any, flow_run: Any) -> str:
        assert after_final_state(
            flow_run.id,
            lambda: events.append(f"{flow_run.name}: deferred, in flight {worker.in_flight() == {flow_run.id}}"),
        )
        if flow_run.name == "a":
            assert after_final_state(flow_run.id, lambda: 1 / 0)  # logged; the worker goes on
        events.append(f"{flow_run.name}: final state")
        return "Completed"

    worker = WarmWorker(warm_probe, uuid4(), run=run)
    first, second = _run("a", True, 0), _run("b", True, 1)
    assert not after_final_state(first.id, lambda: None)  # not executing here: the caller does it now
    executor = threading.Thread(target=worker._execute_loop)
    executor.start()
    worker._queue.put(first)
    worker._queue.put(second)
    worker._queue.put(None)
    executor.join(timeout=10)
    assert events == ["a: final state", "a: deferred, in flight True", "b: final state", "b: deferred, in flight True"]
    assert worker.runs_finished == 2 and worker.in_flight() == set()
    assert not after_final_state(first.id, lambda: None)  # finished: nothing is kept for it


# -- encoders kept loaded --------------------------------------------------------------------------
def test_keep_encoders_loaded_reuses_model_encoders_only(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[str] = []

    class Fake:
        def __init__(self, cfg: Any, device: Any, source: Any) -> None:
            built.append(cfg.kind)

    monkeypatch.setitem(embed._KINDS, "text", Fake)
    cpu = torch.device("cpu")
    text = EncoderConfig(kind="text")
    try:
        assert embed.build_encoder(text, device=cpu) is not embed.build_encoder(text, device=cpu)  # off by default
        embed.keep_encoders_loaded()
        a = embed.build_encoder(text, device=cpu)
        assert embed.build_encoder(text, device=cpu) is a
        assert embed.build_encoder(EncoderConfig(kind="text", batch_size=64), device=cpu) is not a
        tab = EncoderConfig(kind="tabular")
        assert embed.build_encoder(tab, device=cpu) is not embed.build_encoder(tab, device=cpu)  # fitted state
        assert built == ["text"] * 4
    finally:
        embed.keep_encoders_loaded(False)
