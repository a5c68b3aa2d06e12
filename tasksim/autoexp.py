"""Automatic experiments: when the daemon starts a transfer experiment without being asked.

``experiment.auto`` (``config.AutoExperimentConfig``). After every recorded cycle the daemon's
watcher (``daemon._auto_experiments``) calls ``decide`` with the newest cycles and the previous
automatic requests:

1. a reason: the newest cycle recommends a switch (or proposes one that ``require_validation``
   held back), with ``on_switch``; or the last ``drift_windows`` cycles with data all drifted;
2. the debounce: no request while an experiment runs (one preregistered without an outcome), none
   within ``min_interval`` of the previous automatic request, at most ``max_per_day`` requests in
   any 24 hours (the budget in runs; each run is bounded by ``experiment.budget`` and
   ``max_trials``).

A request is recorded in the store's key-value table (``REQUESTS_KEY``, the last 100) before the
deployment run is created, so a daemon restart keeps the debounce. ``decide`` is pure: it is
tested without a Prefect server (tests/test_autoexp.py).

``claim`` is the shared step: the store's newest cycles -> ``decide`` -> the request recorded. The
daemon then creates a run of the experiment deployment and does not wait; ``tasksim run`` (one
cycle, in process, no server) runs the experiment itself, after the cycle's summary is printed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tasksim.config import AutoExperimentConfig, Config

__all__ = ["REQUESTS_KEY", "AutoDecision", "CycleSignal", "claim", "decide", "load_requests", "record_request", "signals",
           "trigger_reason"]

REQUESTS_KEY = "experiment.auto.requests"
DAY = 86400.0


@dataclass(frozen=True)
class CycleSignal:
    """What the trigger reads from one recorded cycle."""

    cycle_id: int
    status: str
    drifted: bool
    action: str | None
    deployed: str | None = None
    recommended: str | None = None
    proposed: str | None = None  # a switch held back by require_validation


@dataclass(frozen=True)
class AutoDecision:
    start: bool
    reason: str
    cycle_id: int | None = None


def signals(cycles: Sequence[dict[str, Any]]) -> list[CycleSignal]:
    """``report.recorded_cycles`` rows (any order) -> signals, newest first."""
    out = []
    for c in cycles:
        rec = c.get("recommendation") or {}
        details = rec.get("details") or {}
        out.append(CycleSignal(cycle_id=int(c["cycle_id"]), status=str(c.get("status")),
                               drifted=bool((c.get("drift") or {}).get("drifted")), action=rec.get("action"),
                               deployed=rec.get("deployed_source"), recommended=rec.get("recommended_source"),
                               proposed=details.get("switch_proposed")))
    return sorted(out, key=lambda s: -s.cycle_id)


def trigger_reason(newest_first: Sequence[CycleSignal], auto: AutoExperimentConfig) -> str | None:
    """Why the newest cycles call for an experiment (a switch, persistent drift), or None; the
    debounce is ``decide``'s."""
    if not newest_first:
        return None
    last = newest_first[0]
    if auto.on_switch and last.action == "switch" and last.recommended and last.recommended != last.deployed:
        return f"cycle {last.cycle_id} recommends switching {last.deployed} -> {last.recommended}"
    if auto.on_switch and last.proposed and last.proposed != last.deployed:
        return (f"cycle {last.cycle_id} proposes switching {last.deployed} -> {last.proposed} "
                "(awaiting validation)")
    k = auto.drift_windows
    if k > 0:
        with_data = [s for s in newest_first if s.status in ("success", "insufficient_data")][:k]
        if len(with_data) == k and all(s.drifted for s in with_data) and with_data[0].cycle_id == last.cycle_id:
            return f"drift persisted for {k} windows (cycles {with_data[-1].cycle_id}..{last.cycle_id})"
    return None


def decide(newest_first: Sequence[CycleSignal], requests: Sequence[dict[str, Any]], *, running: bool, now: float,
           auto: AutoExperimentConfig) -> AutoDecision:
    """Whether to start an experiment now (module docstring); ``requests`` are earlier automatic
    requests (``{"at": unix time, "cycle_id", "reason"}``)."""
    if not auto.enabled:
        return AutoDecision(False, "experiment.auto.enabled is false")
    reason = trigger_reason(newest_first, auto)
    if reason is None:
        return AutoDecision(False, "no switch recommended and no persistent drift")
    cycle_id = newest_first[0].cycle_id
    if any(r.get("cycle_id") == cycle_id for r in requests):
        return AutoDecision(False, f"an experiment was already requested for cycle {cycle_id}", cycle_id)
    if running:
        return AutoDecision(False, f"{reason}, but an experiment is running", cycle_id)
    last = max((float(r["at"]) for r in requests), default=None)
    interval = auto.min_interval.total_seconds()
    if last is not None and now - last < interval:
        return AutoDecision(False, f"{reason}, but the previous automatic experiment was requested "
                                   f"{now - last:.0f}s ago (experiment.auto.min_interval {interval:g}s)", cycle_id)
    today = sum(1 for r in requests if now - float(r["at"]) < DAY)
    if today >= auto.max_per_day:
        return AutoDecision(False, f"{reason}, but {today} automatic experiments were requested in the last 24 h "
                                   f"(experiment.auto.max_per_day {auto.max_per_day})", cycle_id)
    return AutoDecision(True, reason, cycle_id)


def load_requests(store: Any) -> list[dict[str, Any]]:
    raw = store.get_state(REQUESTS_KEY)
    try:
        value = json.loads(raw) if raw else []
    except ValueError:
        return []
    return [r for r in value if isinstance(r, dict) and "at" in r] if isinstance(value, list) else []


def record_request(store: Any, decision: AutoDecision, now: float, flow_run_id: str | None = None) -> None:
    requests = load_requests(store)
    requests.append({"at": now, "cycle_id": decision.cycle_id, "reason": decision.reason, "flow_run_id": flow_run_id})
    store.set_state(REQUESTS_KEY, json.dumps(requests[-100:]))


def claim(config: Config, *, now: float | None = None) -> AutoDecision:
    """``decide`` on the store's newest recorded cycles; on yes, the request is recorded (the
    debounce then holds for every caller: daemon or ``tasksim run``) and the caller starts the
    experiment."""
    from tasksim.report import recorded_cycles
    from tasksim.store import Store

    now = time.time() if now is None else now
    k = max(config.experiment.auto.drift_windows, 1)
    latest = recorded_cycles(config.state_dir)[-(k + 5):]
    with Store(config.state_dir) as store:
        decision = decide(signals(latest), load_requests(store), running=bool(store.open_experiments()), now=now,
                          auto=config.experiment.auto)
        if decision.start:
            record_request(store, decision, now)
    return decision
