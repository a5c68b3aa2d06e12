"""The Prefect flow: stages run as tasks, results land in the store, failures are recorded."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tasksim.config import load_config
from tasksim.store import Store


@pytest.fixture(scope="module")
def prefect_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    from prefect.settings import PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    results = tmp_path_factory.mktemp("prefect-results")
    with temporary_settings({PREFECT_RESULTS_LOCAL_STORAGE_PATH: str(results)}):
        with prefect_test_harness(server_startup_timeout=120):
            yield


def _task_names(flow_run_id: object) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def fetch() -> list[str]:
        async with get_client() as client:
            runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            return sorted(r.name for r in runs)

    return asyncio.run(fetch())


def test_flow_runs_each_stage_as_a_task(prefect_harness: None, tabular_workspace: Path) -> None:
    from flows.monitor import monitor_cycle

    state = monitor_cycle(str(tabular_workspace), return_state=True)
    assert state.is_completed(), state
    summary = state.result()
    assert summary["status"] == "success"
    names = _task_names(state.state_details.flow_run_id)
    assert names == sorted(["sample", "embed", "drift", "profile", "rank", "recommend"])
    with Store(load_config(tabular_workspace).state_dir) as store:
        assert store.snapshot().cycles_by_status == {"success": 1}
    # the cycle is published as Prefect artifacts: a markdown summary and the ranking table
    from prefect.artifacts import Artifact

    from tasksim.report import artifact_key

    name = load_config(tabular_workspace).name
    markdown = Artifact.get(artifact_key(name, "summary"))
    table = Artifact.get(artifact_key(name, "ranking"))
    assert markdown is not None and table is not None
    assert str(markdown.flow_run_id) == str(state.state_details.flow_run_id)
    assert f"cycle {summary['cycle_id']} (success)" in markdown.data and "## Ranking" in markdown.data
    rows = table.data if isinstance(table.data, list) else json.loads(table.data)
    assert [r["source"] for r in rows] == [r["source"] for r in summary_ranking(tabular_workspace)]


def summary_ranking(workspace: Path) -> list[dict]:
    with Store(load_config(workspace).state_dir) as store:
        _, sources = store.last_ranking()
    return [{"source": s.source} for s in sources]


def test_flow_failure_is_recorded_in_the_store(prefect_harness: None, tabular_workspace: Path) -> None:
    from flows.monitor import monitor_cycle, run_stage

    (tabular_workspace.parent / "production.parquet").write_bytes(b"garbage")
    fast = monitor_cycle.with_options(retries=0)
    original = run_stage.retry_delay_seconds
    run_stage.retry_delay_seconds = 0
    try:
        state = fast(str(tabular_workspace), return_state=True)
    finally:
        run_stage.retry_delay_seconds = original
    assert state.is_failed()
    with Store(load_config(tabular_workspace).state_dir) as store:
        cycles = store.cycles()
    assert [c["status"] for c in cycles] == ["failed"]
    assert "production.parquet" in cycles[0]["error"]


def test_experiment_flow_runs_each_trial_as_a_task(prefect_harness: None, tmp_path: Path) -> None:
    from flows.experiment import experiment_flow
    from tests.test_experiment import _workspace

    path = _workspace(tmp_path, experiment={"strategies": ["linear_probe", "full"]})
    state = experiment_flow(str(path), return_state=True)
    assert state.is_completed(), state
    summary = state.result()
    assert summary["verdict"] in ("validated", "overturned") and summary["advised_strategy"] == "linear_probe"
    names = _task_names(state.state_details.flow_run_id)
    assert names == sorted(f"trial-{s}-{k}-0" for s in ("near", "mlp") for k in ("linear_probe", "full"))
    with Store(load_config(path).state_dir, readonly=True) as store:
        (experiment,) = store.experiments()
        assert experiment["trigger"] == "prefect" and experiment["status"] == "finished"


@pytest.mark.slow
def test_experiment_on_a_dask_local_cluster_matches_the_default_runner(prefect_harness: None, tmp_path: Path) -> None:
    """execution: {dask: {n_workers: 2}} runs the trials on prefect-dask's DaskTaskRunner (a 2-worker
    LocalCluster); every trial's result is the one the default runner gives."""
    import yaml

    from flows.experiment import experiment_flow
    from tests.test_experiment import _workspace

    pytest.importorskip("prefect_dask")
    trials = {}
    for name, execution in (("default", None), ("dask", {"dask": {"n_workers": 2, "threads_per_worker": 1,
                                                                  "processes": True}})):
        path = _workspace(tmp_path / name, experiment={"strategies": ["linear_probe", "full", "surgical_first"],
                                                       "seeds": 2})
        if execution:
            raw = yaml.safe_load(path.read_text())
            raw["execution"] = execution
            path.write_text(yaml.safe_dump(raw))
        state = experiment_flow(str(path), return_state=True)
        assert state.is_completed(), state
        with Store(load_config(path).state_dir, readonly=True) as store:
            (experiment,) = store.experiments()
            assert experiment["status"] == "finished"
            trials[name] = sorted((t["source"], t["strategy"], t["seed"], t["status"], t["score"], t["val_score"],
                                   t["epochs"]) for t in experiment["trials"])
    # 2 sources x 3 strategies x 2 seeds, less the dataset-only source's surgical trials (one record)
    assert sum(t[3] == "ok" for t in trials["default"]) == 10
    assert trials["dask"] == trials["default"]


# -- the warm worker (tasksim.worker) against the harness's API: its rules without an API are in
# tests/test_worker.py
def _state(run_id: Any) -> Any:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id).state


def _wait(predicate: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_warm_worker_runs_execute_in_this_process_one_at_a_time_and_a_trigger_waits_its_turn(
        prefect_harness: None) -> None:
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.deployments import run_deployment
    from prefect.deployments.runner import EntrypointType

    from tasksim.worker import WarmWorker
    from tests.test_worker import GATE, RAN, warm_probe

    deployment = warm_probe.to_deployment(
        name="warm", parameters={"tag": "default"}, entrypoint_type=EntrypointType.MODULE_PATH,
        concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW))
    deployment.work_pool_name = deployment.work_queue_name = None
    deployment_id = deployment.apply()
    RAN.clear()
    GATE.clear()
    worker = WarmWorker(warm_probe, deployment_id, poll_seconds=0.2).start()
    try:
        first = run_deployment("tasksim-test-warm/warm", parameters={"tag": "first"}, timeout=0)
        _wait(lambda: worker.in_flight() == {first.id})
        second = run_deployment("tasksim-test-warm/warm", parameters={"tag": "second"}, timeout=0)
        time.sleep(1.0)  # several polls while the first one runs
        assert _state(second.id).is_scheduled()  # made by hand: waits, neither cancelled nor started
        GATE.set()
        _wait(lambda: _state(second.id).is_completed())
        assert _state(first.id).is_completed()
    finally:
        GATE.set()
        worker.stop(grace=10)
    assert [tag for tag, _, _ in RAN] == ["first", "second"]
    assert {pid for _, pid, _ in RAN} == {os.getpid()}  # warm: no subprocess
    assert {thread for _, _, thread in RAN} == {"tasksim-warm-executor"}


def test_warm_worker_stop_cancels_a_run_that_did_not_finish(prefect_harness: None) -> None:
    from prefect.deployments import run_deployment
    from prefect.deployments.runner import EntrypointType

    from tasksim.worker import WarmWorker
    from tests.test_worker import GATE, warm_probe

    deployment = warm_probe.to_deployment(name="warm-stop", parameters={"tag": "x"},
                                          entrypoint_type=EntrypointType.MODULE_PATH, concurrency_limit=1)
    deployment.work_pool_name = deployment.work_queue_name = None
    worker = WarmWorker(warm_probe, deployment.apply(), poll_seconds=0.2).start()
    GATE.clear()
    try:
        run = run_deployment("tasksim-test-warm/warm-stop", timeout=0)
        _wait(lambda: worker.in_flight() == {run.id})
        worker.stop(grace=0.5)
        state = _state(run.id)
        assert state.is_cancelled() and "did not finish" in (state.message or "")
    finally:
        GATE.set()
