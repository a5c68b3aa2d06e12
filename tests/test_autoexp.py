"""Automatic experiments: the trigger rule and its debounce (tasksim.autoexp), and the daemon's
request path with a fake deployment start (no Prefect server)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from tasksim import autoexp
from tasksim.autoexp import CycleSignal, decide
from tasksim.config import AutoExperimentConfig, load_config
from tasksim.errors import ConfigError
from tasksim.store import CycleRecord, Store
from tests.conftest import make_tabular_workspace

AUTO = AutoExperimentConfig(enabled=True, drift_windows=3, min_interval=timedelta(hours=1), max_per_day=2)
NOW = 1_000_000.0


def sig(i: int, drifted: bool = False, action: str = "keep", status: str = "success", proposed: str | None = None,
        recommended: str = "a") -> CycleSignal:
    return CycleSignal(i, status, drifted, action, deployed="a", recommended=recommended, proposed=proposed)


def history(*drifts: bool) -> list[CycleSignal]:
    """Oldest first in the arguments; returned newest first."""
    return [sig(i + 1, d) for i, d in enumerate(drifts)][::-1]


def test_disabled_never_starts() -> None:
    d = decide([sig(1, action="switch", recommended="b")], [], running=False, now=NOW,
               auto=AutoExperimentConfig())
    assert not d.start and "enabled" in d.reason


def test_a_switch_starts_one() -> None:
    d = decide([sig(5, action="switch", recommended="b")], [], running=False, now=NOW, auto=AUTO)
    assert d.start and d.cycle_id == 5 and "a -> b" in d.reason
    held = decide([sig(5, proposed="b")], [], running=False, now=NOW, auto=AUTO)
    assert held.start and "awaiting validation" in held.reason
    off = AutoExperimentConfig(enabled=True, on_switch=False, drift_windows=0)
    assert not decide([sig(5, action="switch", recommended="b")], [], running=False, now=NOW, auto=off).start


def test_drift_must_persist_for_k_windows() -> None:
    assert not decide(history(True, True), [], running=False, now=NOW, auto=AUTO).start
    assert not decide(history(True, False, True, True), [], running=False, now=NOW, auto=AUTO).start
    d = decide(history(False, True, True, True), [], running=False, now=NOW, auto=AUTO)
    assert d.start and "3 windows" in d.reason
    # empty windows neither break nor make the streak; the newest cycle must be the drifted one
    mixed = [sig(5, True), sig(4, status="no_data"), sig(3, True), sig(2, True)]
    assert decide(mixed, [], running=False, now=NOW, auto=AUTO).start
    assert not decide([sig(6, status="no_data"), *mixed], [], running=False, now=NOW, auto=AUTO).start
    never = AutoExperimentConfig(enabled=True, drift_windows=0)
    assert not decide(history(True, True, True, True), [], running=False, now=NOW, auto=never).start


def test_debounce_running_interval_and_daily_budget() -> None:
    switch = [sig(9, action="switch", recommended="b")]
    assert "running" in decide(switch, [], running=True, now=NOW, auto=AUTO).reason
    recent = [{"at": NOW - 600, "cycle_id": 8}]
    d = decide(switch, recent, running=False, now=NOW, auto=AUTO)
    assert not d.start and "min_interval" in d.reason
    assert decide(switch, [{"at": NOW - 3601, "cycle_id": 8}], running=False, now=NOW, auto=AUTO).start
    two = [{"at": NOW - 20000, "cycle_id": 3}, {"at": NOW - 10000, "cycle_id": 6}]
    d = decide(switch, two, running=False, now=NOW, auto=AUTO)
    assert not d.start and "max_per_day" in d.reason
    old = [{"at": NOW - 90000, "cycle_id": 3}, {"at": NOW - 10000, "cycle_id": 6}]
    assert decide(switch, old, running=False, now=NOW, auto=AUTO).start
    # the same cycle is never requested twice, whatever the interval
    same = [{"at": NOW - 90000, "cycle_id": 9}]
    assert not decide(switch, same, running=False, now=NOW, auto=AUTO).start


def test_auto_config_is_validated(tmp_path: Path) -> None:
    path = make_tabular_workspace(tmp_path / "ws", windows=1)
    raw = yaml.safe_load(path.read_text())
    raw["experiment"] = {"auto": {"enabled": True, "min_interval": "30m", "drift_windows": 2}}
    path.write_text(yaml.safe_dump(raw))
    auto = load_config(path).experiment.auto
    assert auto.enabled and auto.min_interval == timedelta(minutes=30) and auto.drift_windows == 2
    raw["experiment"]["auto"]["max_per_day"] = -1
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="max_per_day"):
        load_config(path)


def _record(store: Store, i: int, *, drifted: bool = False, action: str = "keep", recommended: str = "near") -> None:
    store.record_cycle(CycleRecord(
        started_at=float(i), finished_at=float(i) + 1, status="success", config_hash="x",
        drift={"drifted": drifted, "kind": "input" if drifted else "none"},
        decision={"deployed_source": "near", "recommended_source": recommended, "action": action, "rationale": "t",
                  "ranking": [{"source": "near", "rank": 1, "score": 1.0}]}))


def test_daemon_requests_without_waiting_and_debounces(tmp_path: Path) -> None:
    """The daemon's path: the store's cycles -> decide -> a recorded request -> the deployment is
    started (a fake here: Prefect's run_deployment with timeout=0 in the daemon)."""
    from tasksim.daemon import _maybe_start_experiment

    path = make_tabular_workspace(tmp_path / "ws", windows=1)
    raw = yaml.safe_load(path.read_text())
    raw["experiment"] = {"auto": {"enabled": True, "drift_windows": 2, "min_interval": "1h", "max_per_day": 3}}
    path.write_text(yaml.safe_dump(raw))
    config = load_config(path)
    started: list[tuple[str, dict]] = []

    def start(deployment: str, parameters: dict) -> str:
        started.append((deployment, parameters))
        return "run-1"

    with Store(config.state_dir) as store:
        _record(store, 1, drifted=True)
    assert not _maybe_start_experiment(config, "tasksim-experiment/x", now=NOW, start=start).start
    with Store(config.state_dir) as store:
        _record(store, 2, drifted=True)
    d = _maybe_start_experiment(config, "tasksim-experiment/x", now=NOW, start=start)
    assert d.start and len(started) == 1
    assert started[0][1]["trigger"].startswith("auto: drift persisted for 2 windows")
    with Store(config.state_dir, readonly=True) as store:
        assert [r["cycle_id"] for r in autoexp.load_requests(store)] == [2]
    # a switch 10 minutes later: debounced by min_interval; an hour later it starts
    with Store(config.state_dir) as store:
        _record(store, 3, action="switch", recommended="moved")
    assert not _maybe_start_experiment(config, "d", now=NOW + 600, start=start).start
    assert _maybe_start_experiment(config, "d", now=NOW + 3700, start=start).start and len(started) == 2
    # while an experiment runs (preregistered, no outcome): none
    with Store(config.state_dir) as store:
        _record(store, 4, action="switch", recommended="moved")
        store.preregister_experiment(created_at=NOW, trigger="t", deployed_source="near", recommended_source="moved",
                                     advised_strategy="linear_probe", split_hash="h", preregistration={})
    d = _maybe_start_experiment(config, "d", now=NOW + 9000, start=start)
    assert not d.start and "running" in d.reason and len(started) == 2


def test_tasksim_run_runs_the_automatic_experiment_after_its_cycle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """``tasksim run`` (no daemon): the cycle's summary first, then the automatic experiment in
    process when ``experiment.auto`` says so, under the daemon's debounce; disabled (or with
    ``--no-experiment``) it only says how to run one. The cycle is a fake that records a switch."""
    import tasksim.cycle
    from tasksim import cli
    from tests.test_experiment import _workspace

    path = _workspace(tmp_path, experiment={"strategies": ["linear_probe"], "max_epochs": 2,
                                            "auto": {"enabled": True, "drift_windows": 0, "min_interval": "1h"}})
    config = load_config(path)

    class FakeResult:
        def to_dict(self) -> dict:
            return {"cycle_id": None}

    def fake_cycle(config: object, now: object = None) -> FakeResult:
        with Store(load_config(path).state_dir) as store:
            store.record_cycle(CycleRecord(
                started_at=3.0, finished_at=4.0, status="success", config_hash="x", drift={"drifted": False},
                decision={"deployed_source": "near", "recommended_source": "mlp", "action": "switch",
                          "rationale": "t", "fine_tune": {"strategy": "linear_probe"},
                          "ranking": [{"source": s, "rank": i + 1, "score": 1.0 - 0.2 * i}
                                      for i, s in enumerate(["mlp", "near", "moved"])]}))
        return FakeResult()

    monkeypatch.setattr(tasksim.cycle, "run_cycle", fake_cycle)
    monkeypatch.setattr(cli, "format_cycle", lambda summary: "CYCLE SUMMARY")
    assert cli.main(["run", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.index("CYCLE SUMMARY") < out.index("automatic experiment: cycle 2 recommends switching near -> mlp")
    with Store(config.state_dir, readonly=True) as store:
        experiments = store.experiments()
        assert [e["trigger"] for e in experiments] == ["auto: cycle 2 recommends switching near -> mlp"]
        assert experiments[0]["status"] == "finished"
        assert [r["cycle_id"] for r in autoexp.load_requests(store)] == [2]
    # the next run's cycle is debounced (min_interval 1h): no second experiment, and it says why
    assert cli.main(["run", "--config", str(path), "--format", "json"]) == 0
    auto = json.loads(capsys.readouterr().out)["automatic_experiment"]
    assert not auto["started"] and "min_interval" in auto["reason"]
    # --no-experiment: nothing runs, the command to run is printed
    assert cli.main(["run", "--config", str(path), "--no-experiment"]) == 0
    out = capsys.readouterr().out
    assert "no automatic experiment (--no-experiment)" in out and f"tasksim experiment --config {path}" in out
    with Store(config.state_dir, readonly=True) as store:
        assert len(store.experiments()) == 1


def test_tasksim_run_keeps_its_exit_status_when_the_automatic_experiment_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """No labelled rows: the experiment is refused with its reason; the cycle's run still exits 0."""
    import tasksim.cycle
    from tasksim import cli
    from tests.test_experiment import _workspace

    path = _workspace(tmp_path, labels=False, action="switch", recommended="mlp",
                      experiment={"auto": {"enabled": True, "drift_windows": 0}})

    class FakeResult:
        def to_dict(self) -> dict:
            return {"cycle_id": 1}

    monkeypatch.setattr(tasksim.cycle, "run_cycle", lambda config, now=None: FakeResult())
    assert cli.main(["run", "--config", str(path), "--format", "json"]) == 0
    captured = capsys.readouterr()
    auto = json.loads(captured.out)["automatic_experiment"]
    assert not auto["started"] and "labelled rows" in auto["error"]
    assert "automatic experiment not run" in captured.err
