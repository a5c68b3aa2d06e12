"""The experiment flow: one transfer experiment, each trial a Prefect task.

Orchestration only: names, retries and timeouts live here; the experiment is
``tasksim.experiment.run_experiment``. Results go to the state store (preregistration, trials,
outcome), never through Prefect's result storage.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NONE

__all__ = ["FLOW_NAME", "experiment_flow"]

FLOW_NAME = "tasksim-experiment"


# no retries: a trial is deterministic for its seed, and a failed one is recorded as failed
@task(name="trial", cache_policy=NONE, persist_result=False, retries=0, timeout_seconds=3600)
def run_trial_task(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


def _as_task(name: str, fn: Callable[..., Any], *args: Any) -> Any:
    return run_trial_task.with_options(name=name, task_run_name=name)(fn, *args)


@flow(name=FLOW_NAME, persist_result=False, retries=0, timeout_seconds=7200, log_prints=True)
def experiment_flow(config_path: str, trigger: str = "prefect") -> dict[str, Any]:
    """Run one transfer experiment for the config at ``config_path``; returns its summary."""
    from tasksim.config import load_config
    from tasksim.experiment import run_experiment

    result = run_experiment(load_config(config_path), trigger=trigger, step=_as_task)
    summary = result.to_dict()
    return {k: summary[k] for k in ("experiment_id", "verdict", "tau", "recommended_source", "advised_strategy",
                                    "best_strategy", "outcome_order")}
