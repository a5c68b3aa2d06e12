"""The experiment flow: one transfer experiment, each trial a Prefect task.

Orchestration only: names, retries, timeouts and the task runner live here; the experiment is
``tasksim.experiment.run_experiment``. Results go to the state store (preregistration, trials,
outcome), never through Prefect's result storage.

The task runner comes from the config's ``execution`` (``task_runner``): by default Prefect's
thread pool in the flow's process, each trial run in turn; with ``execution: {dask: ...}`` the
trials of one seed round are submitted together to prefect-dask's ``DaskTaskRunner`` (a scheduler
address, or a temporary ``LocalCluster`` from a spec) and gathered in order. The deployment's flow
(``experiment_flow``) reads the config, then runs the trials in the subflow
``tasksim-experiment-trials`` with that runner (a served flow is loaded afresh in each run's
process, so the runner cannot be fixed when the daemon starts).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NONE

__all__ = ["FLOW_NAME", "experiment_flow", "task_runner"]

FLOW_NAME = "tasksim-experiment"


# no retries: a trial is deterministic for its seed, and a failed one is recorded as failed
@task(name="trial", cache_policy=NONE, persist_result=False, retries=0, timeout_seconds=3600)
def run_trial_task(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


def _as_task(name: str, fn: Callable[..., Any], *args: Any) -> Any:
    return run_trial_task.with_options(name=name, task_run_name=name)(fn, *args)


def _submit_all(calls: list[tuple[str, Callable[..., Any], tuple[Any, ...]]]) -> list[Any]:
    futures = [run_trial_task.with_options(name=name, task_run_name=name).submit(fn, *args) for name, fn, args in calls]
    return [f.result() for f in futures]


def task_runner(execution: Any) -> tuple[Any, int]:
    """(the Prefect task runner for ``execution``, how many trials it runs at once); None: the default."""
    dask = getattr(execution, "dask", None)
    if dask is None:
        return None, 1
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as exc:  # pragma: no cover - the install names it
        from tasksim.errors import ConfigError

        raise ConfigError("execution.dask needs prefect-dask: pip install prefect-dask") from exc
    if isinstance(dask, str):
        return DaskTaskRunner(address=dask), 2
    spec = dict(dask)
    workers = int(spec.get("n_workers", 2)) * int(spec.get("threads_per_worker", 1))
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=spec), max(1, workers)


def _run(config_path: str, trigger: str, parallel: bool, workers: int) -> dict[str, Any]:
    from tasksim.config import load_config
    from tasksim.experiment import run_experiment

    config = load_config(config_path)
    result = run_experiment(config, trigger=trigger, step=_as_task, map_step=_submit_all if parallel else None,
                            workers=workers)
    summary = result.to_dict()
    return {k: summary[k] for k in ("experiment_id", "verdict", "tau", "recommended_source", "advised_strategy",
                                    "best_strategy", "outcome_order")}


@flow(name=f"{FLOW_NAME}-trials", persist_result=False, retries=0, log_prints=True)
def _parallel_trials(config_path: str, trigger: str, workers: int) -> dict[str, Any]:
    return _run(config_path, trigger, True, workers)


@flow(name=FLOW_NAME, persist_result=False, retries=0, timeout_seconds=7200, log_prints=True)
def experiment_flow(config_path: str, trigger: str = "prefect") -> dict[str, Any]:
    """Run one transfer experiment for the config at ``config_path``; returns its summary."""
    from tasksim.config import load_config

    runner, workers = task_runner(load_config(config_path).execution)
    if runner is None:
        return _run(config_path, trigger, False, 1)
    return _parallel_trials.with_options(task_runner=runner)(config_path, trigger, workers)
