"""The monitoring flow: one tasksim cycle, each stage a Prefect task.

Orchestration only: retries, timeouts and names live here; every stage is a method of
``tasksim.cycle.Cycle``. Results go to the state store, never through Prefect's result storage.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NONE
from prefect.utilities.annotations import quote

__all__ = ["FLOW_NAME", "monitor_cycle"]

FLOW_NAME = "tasksim-cycle"


@task(name="stage", cache_policy=NONE, persist_result=False, retries=2, retry_delay_seconds=5, timeout_seconds=1800)
def run_stage(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


def _as_task(name: str, fn: Callable[..., Any], *args: Any) -> Any:
    # quote(): Prefect passes the stage's inputs through without walking them for futures (the
    # sampled window, features and profiles are large: that walk cost about 0.8 s a cycle on the
    # demo, docs/benchmarks.md "Warm worker"); the stages exchange plain values, never futures
    return run_stage.with_options(name=name, task_run_name=name)(fn, *(quote(a) for a in args))


@flow(name=FLOW_NAME, persist_result=False, timeout_seconds=3600, log_prints=True)
def monitor_cycle(config_path: str) -> dict[str, Any]:
    """Run one monitoring cycle for the config at ``config_path``; returns its summary."""
    from tasksim.cycle import Cycle

    cycle = Cycle.open(config_path)
    try:
        result = cycle.run(step=_as_task)
    finally:
        cycle.store.close()
    summary = result.to_dict()
    _report(cycle.config.name, summary)
    return {k: summary[k] for k in ("cycle_id", "status", "duration_seconds", "recommendation")}


def _report(name: str, summary: dict[str, Any]) -> None:
    """The cycle's line in the run's logs, and its artifacts: published now, or, when the daemon's
    warm worker executes this run, right after the run's final state (``tasksim.worker``), so a
    scheduled cycle is ``Completed`` as soon as its result is stored."""
    from prefect.context import get_run_context
    from prefect.logging import get_run_logger

    from tasksim.report import cycle_line
    from tasksim.worker import after_final_state

    logger = get_run_logger()
    logger.info("%s", cycle_line(summary))
    flow_run_id = get_run_context().flow_run.id

    def publish() -> None:
        _publish_artifacts(name, summary, flow_run_id, logger)

    if not after_final_state(flow_run_id, publish):
        publish()


def _publish_artifacts(name: str, summary: dict[str, Any], flow_run_id: Any, logger: Any) -> None:
    """The cycle in the Prefect UI: a markdown summary and the ranking table (keyed per deployment,
    so the UI keeps their history), attached to flow run ``flow_run_id``, through one client. The
    cycle is already in the store: an artifact that cannot be written is logged, not fatal."""
    from prefect.artifacts import MarkdownArtifact, TableArtifact
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactCreate

    from tasksim.report import artifact_key, cycle_markdown, cycle_table

    cycle_id = summary.get("cycle_id")
    artifacts = [
        ArtifactCreate(
            type="markdown",
            key=artifact_key(name, "summary"),
            description=f"tasksim cycle {cycle_id}: {summary.get('status')}",
            flow_run_id=flow_run_id,
            data=MarkdownArtifact(markdown=cycle_markdown(summary, name)).format(_sync=True),
        )
    ]
    table = cycle_table(summary)
    if table:
        artifacts.append(
            ArtifactCreate(
                type="table",
                key=artifact_key(name, "ranking"),
                description=f"ranking at cycle {cycle_id}",
                flow_run_id=flow_run_id,
                data=TableArtifact(table=table).format(_sync=True),
            )
        )
    try:
        with get_client(sync_client=True) as client:
            for artifact in artifacts:
                client.create_artifact(artifact=artifact)
    except Exception as exc:  # noqa: BLE001 - the API may be briefly unavailable; the store holds the result
        logger.warning("could not publish the cycle's Prefect artifacts: %s: %s", type(exc).__name__, exc)
