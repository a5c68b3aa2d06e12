"""One cycle in process on a synthetic stream whose domain moves from one source to another."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasksim.cli import main
from tasksim.config import load_config
from tasksim.cycle import Cycle, rank_now, run_cycle
from tasksim.errors import DataError
from tasksim.profile import CARRIED_MEASURES, SOURCE_MEMO
from tasksim.rank import DEFAULT_WEIGHTS
from tasksim.store import Store

from .conftest import make_tabular_workspace


def test_shift_changes_drift_ranking_and_recommendation(tabular_workspace: Path, capsys) -> None:
    config = load_config(tabular_workspace)
    results = [run_cycle(config) for _ in range(2)]
    # the unweighted distances (ranking.unweighted_every, default 8) are carried between their
    # refreshes, staggered by source name: in cycle 2 'far' measures afresh, the others carry cycle 1's
    capsys.readouterr()
    assert main(["explain", "near", "--config", str(tabular_workspace)]) == 0
    explained = capsys.readouterr().out
    results += [run_cycle(config) for _ in range(2)]
    assert [r.status for r in results] == ["success"] * 4
    eligible = {m for m in CARRIED_MEASURES if DEFAULT_WEIGHTS.get(m, 0.0) == 0}
    if not {"domain_classifier_auc", "domain_separability"} <= eligible:
        eligible -= {"domain_classifier_auc", "domain_separability"}
    first, second = ({p.source: p for p in r.profiles} for r in results[:2])
    assert not results[1].drift.drifted and eligible
    for name in ("near", "moved"):
        assert set(second[name].carried) == eligible
        assert {m: second[name].measures[m] for m in eligible} == {m: first[name].measures[m] for m in eligible}
        assert {o["cycle"] for o in second[name].carried.values()} == {results[0].cycle_id}
    assert second["far"].carried == {}
    assert second["far"].measures["frechet"] != first["far"].measures["frechet"]  # a new window, measured
    assert "carried from an earlier cycle" in explained and f"measured in cycle {results[0].cycle_id}" in explained
    assert all(not p.carried for r in results[2:] for p in r.profiles)  # drifted windows: all afresh
    # sequential windows: consecutive, one hour each
    assert results[1].window_start == results[0].window_end

    before, after = results[0], results[2]
    assert before.drift is not None and not before.drift.drifted and before.drift.kind == "none"
    assert after.drift is not None and after.drift.drifted and after.drift.kind == "input"
    assert after.drift.calibrated and after.drift.test("columns").fired
    assert {"f0", "f1"} & set(after.drift.drifted_columns)
    assert before.ranking.best().source == "near"
    # same task, same classes: the transferability gaps between sources are sampling noise, so
    # reliability weighting leaves the guard (MMD^2, the domain criterion) to decide
    assert before.ranking.reliability.get("hscore_regularized", 1.0) < 0.5
    assert before.ranking.reliability.get("logme", 1.0) < 0.5
    assert after.ranking.best().source == "moved"
    assert before.recommendation.action == "keep"
    assert after.recommendation.action == "switch" and after.recommendation.recommended_source == "moved"
    assert after.recommendation.fine_tune is not None

    # the transferability score depends on the source (each source's own view of the target)
    logme = {p.source: p.measures["logme"] for p in after.profiles}
    assert len({round(v, 6) for v in logme.values()}) == len(logme)
    for p in after.profiles:
        assert {"mmd2", "frechet", "domain_classifier_auc", "logme", "label_shift"} <= set(p.measures)

    with Store(config.state_dir) as store:
        decisions = store.decisions()
        assert len(decisions) == 4
        assert decisions[1]["action"] == "switch" and decisions[1]["changed"] is True
        assert "reliability" in decisions[1] and decisions[1]["weights"]
        assert decisions[0]["previous"]["action"] == "switch"
        snap = store.snapshot()
    assert snap.cycles_by_status == {"success": 4}
    assert snap.last_decision["recommended_source"] == "moved"


def test_bad_sources_are_isolated(tmp_path: Path) -> None:
    path = make_tabular_workspace(tmp_path / "ws", extra_sources={
        "missing": {"path": "sources/does-not-exist.parquet"},
        "renamed": {"path": "sources/renamed.parquet"},
        "corrupt": {"path": "sources/corrupt.parquet"},
    })
    ws = path.parent
    frame = pd.read_parquet(ws / "sources" / "near.parquet").rename(columns={"f3": "feature3"})
    frame.to_parquet(ws / "sources" / "renamed.parquet")
    (ws / "sources" / "corrupt.parquet").write_bytes(b"PAR1 not really parquet")
    result = run_cycle(load_config(path))
    assert result.status == "success"
    status = {p.source: p for p in result.profiles}
    for name in ("missing", "renamed", "corrupt"):
        assert status[name].status == "failed"
        assert status[name].error and "\n" not in status[name].error
    assert "f3" in status["renamed"].error
    assert {e.source for e in result.ranking.entries} == {"near", "moved", "far"}
    with Store(load_config(path).state_dir) as store:
        assert store.snapshot().errors_by_source == {"missing": 1, "renamed": 1, "corrupt": 1}


def test_empty_window_records_no_data_and_keeps_ranking(tabular_workspace: Path) -> None:
    config = load_config(tabular_workspace)
    results = [run_cycle(config) for _ in range(5)]  # the 5th window is past the end of the data
    assert results[-1].status == "no_data"
    with Store(config.state_dir) as store:
        snap = store.snapshot()
    assert snap.cycles_by_status == {"success": 4, "no_data": 1}
    assert [s.source for s in snap.last_sources if s.rank == 1] == ["moved"]


def test_nan_rows_are_dropped_and_counted(tmp_path: Path) -> None:
    path = make_tabular_workspace(tmp_path / "ws")
    prod = pd.read_parquet(path.parent / "production.parquet")
    prod.loc[:9, "f0"] = np.nan
    prod.loc[10:14, "f1"] = np.inf
    prod.to_parquet(path.parent / "production.parquet", index=False)
    result = run_cycle(load_config(path))
    assert result.status == "success"
    assert result.rows_dropped == 15
    assert result.rows_sampled == result.rows_total - 15


def test_a_stuck_feed_is_tested_for_drift_but_not_ranked(tmp_path: Path) -> None:
    """One input repeated for a whole window (a stuck upstream): drift fires, but a ranking of one
    point would still look confident, so the window is insufficient and the last ranking stands."""
    path = make_tabular_workspace(tmp_path / "ws", windows=3, shift_at=3)
    prod = pd.read_parquet(path.parent / "production.parquet")
    third = prod["ts"] >= prod["ts"].min().floor("h") + pd.Timedelta(hours=2)
    prod.loc[third, [f"f{i}" for i in range(6)]] = [3.0, -2.0, 0.5, 0.0, 1.0, 7.0]
    prod.to_parquet(path.parent / "production.parquet", index=False)
    config = load_config(path)
    results = [run_cycle(config) for _ in range(3)]
    assert [r.status for r in results] == ["success", "success", "insufficient_data"]
    stuck = results[-1]
    assert stuck.drift is not None and stuck.drift.drifted
    assert stuck.ranking is None and stuck.profiles == []
    assert stuck.error == (f"the production window's {stuck.rows_sampled} valid rows are all the same input: no "
                           "measure can tell the sources apart on one point; the last ranking stands")
    with Store(config.state_dir) as store:
        snap = store.snapshot()
    assert snap.cycles_by_status == {"success": 2, "insufficient_data": 1}
    assert [s.source for s in snap.last_sources if s.rank == 1] == [results[1].ranking.entries[0].source]
    latest = config.model_copy(update={"window": config.window.model_copy(update={"mode": "latest"})})
    cycle = Cycle(latest, now=prod["ts"].max().to_pydatetime())  # `tasksim rank`: the latest window
    try:
        with pytest.raises(DataError, match=r"holds one input repeated \(\d+ rows\): nothing to rank against"):
            cycle.rank_now()
    finally:
        cycle.store.close()


def test_cli_run_json(tabular_workspace: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "tasksim.cli", "run", "--config", str(tabular_workspace),
                           "--format", "json"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["status"] == "success"
    assert [r["rank"] for r in summary["ranking"]] == [1, 2, 3]
    assert summary["recommendation"]["action"] in ("keep", "switch")
    text = subprocess.run([sys.executable, "-m", "tasksim.cli", "run", "--config", str(tabular_workspace)],
                          capture_output=True, text=True, timeout=600)
    assert text.returncode == 0, text.stderr[-3000:]
    assert "ranking:" in text.stdout and "recommendation:" in text.stdout and "drift:" in text.stdout


def test_unreadable_production_data_fails_the_cycle_cleanly(tabular_workspace: Path) -> None:
    (tabular_workspace.parent / "production.parquet").write_bytes(b"garbage")
    proc = subprocess.run([sys.executable, "-m", "tasksim.cli", "run", "--config", str(tabular_workspace)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("tasksim: error:")]
    assert len(errors) == 1 and "production.parquet" in errors[0]
    assert "Traceback" not in proc.stderr
    with Store(load_config(tabular_workspace).state_dir) as store:
        assert store.snapshot().cycles_by_status == {"failed": 1}


@pytest.mark.parametrize("mode", ["latest"])
def test_latest_window_mode_with_fixed_now(tmp_path: Path, mode: str) -> None:
    import yaml

    path = make_tabular_workspace(tmp_path / "ws")
    raw = yaml.safe_load(path.read_text())
    raw["window"] = {"mode": mode, "length": "1h"}
    path.write_text(yaml.safe_dump(raw))
    from datetime import datetime, timezone

    result = run_cycle(load_config(path), now=datetime(2026, 1, 1, 3, 30, tzinfo=timezone.utc))
    assert result.status == "success"
    assert result.window_start.isoformat() == "2026-01-01T02:30:00+00:00"


def test_late_labels_score_the_labelled_rows(tmp_path: Path) -> None:
    """Production labels arrive late: a window where most rows have no label yet is still scored
    for transferability and label shift, on its labelled rows only."""
    path = make_tabular_workspace(tmp_path / "ws")
    prod = pd.read_parquet(path.parent / "production.parquet")
    prod["label"] = prod["label"].astype(object)
    unlabelled = np.random.default_rng(12345).random(len(prod)) < 0.7
    prod.loc[unlabelled, "label"] = None
    prod.to_parquet(path.parent / "production.parquet", index=False)
    result = run_cycle(load_config(path))
    assert result.status == "success"
    assert result.rows_dropped == 0  # an unlabelled row is a valid row
    for p in result.profiles:
        assert p.status == "ok", p.error
        assert {"logme", "knn_accuracy", "label_shift", "otdd"} <= set(p.measures), p.source
    assert result.ranking.best().source == "near"
    # the view kept for the bootstrap holds the labelled rows only
    labelled = sum(1 for v in prod.loc[prod["ts"] < prod["ts"].min().floor("h") + pd.Timedelta(hours=1), "label"]
                   if v is not None)
    assert {p.view.features.shape[0] for p in result.profiles} == {labelled}


def test_source_model_layers_give_a_per_layer_shift_profile(tmp_path: Path) -> None:
    """A source that ships its own model with tapped layers gets MMD^2 per layer (and output)."""
    import torch
    from safetensors.torch import save_file

    from tasksim.embed import MLP

    torch.manual_seed(0)
    (tmp_path / "ws").mkdir(parents=True)
    save_file(MLP([6, 16, 8, 3]).state_dict(), str(tmp_path / "ws" / "model.safetensors"))
    path = make_tabular_workspace(tmp_path / "ws", extra_sources={"with-model": {
        "path": "sources/moved.parquet",
        "encoder": {"kind": "safetensors", "path": "model.safetensors", "architecture": "mlp",
                    "layers": ["layers.0", "layers.1"]}}})
    result = run_cycle(load_config(path))
    profile = next(p for p in result.profiles if p.source == "with-model")
    assert profile.status == "ok", profile.error
    layer_keys = [k for k in profile.measures if k.startswith("layer_mmd2:")]
    assert layer_keys == ["layer_mmd2:layers.0", "layer_mmd2:layers.1", "layer_mmd2:output"]
    assert all(np.isfinite(profile.measures[k]) for k in layer_keys)
    # sources without a model of their own have no layer profile
    assert not any(k.startswith("layer_mmd2:") for k in result.profiles[0].measures)


def test_modality_match_is_profiled_when_both_sides_are_known(tmp_path: Path) -> None:
    import yaml

    path = make_tabular_workspace(tmp_path / "ws", extra_sources={
        "images": {"path": "sources/moved.parquet", "modality": "image"}})
    cfg = yaml.safe_load(path.read_text())
    cfg["production"]["modality"] = "tabular"
    for s in cfg["sources"]:
        s.setdefault("modality", "tabular")
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    result = run_cycle(load_config(path))
    match = {p.source: p.measures.get("modality_match") for p in result.profiles}
    assert match == {"near": 1.0, "moved": 1.0, "far": 1.0, "images": 0.0}
    assert result.ranking.entry("images").score < result.ranking.entry("moved").score


def test_modality_is_unknown_for_plain_numeric_columns(tabular_workspace: Path) -> None:
    result = run_cycle(load_config(tabular_workspace))
    assert all("modality_match" not in p.measures for p in result.profiles)


def test_a_model_only_source_is_profiled_ranked_and_explained(tmp_path: Path) -> None:
    """A pretrained checkpoint without a dataset (no ``path``): its model's view of the target gives
    the transferability criteria; the data-side criteria are missing for it, not for the others."""
    import torch
    from safetensors.torch import save_file

    from tasksim.embed import MLP

    torch.manual_seed(0)
    (tmp_path / "ws").mkdir(parents=True)
    save_file(MLP([6, 16, 8]).state_dict(), str(tmp_path / "ws" / "ckpt.safetensors"))
    path = make_tabular_workspace(tmp_path / "ws", extra_sources={"checkpoint": {
        "encoder": {"kind": "safetensors", "path": "ckpt.safetensors", "architecture": "mlp"}}})
    config = load_config(path)
    assert config.source("checkpoint").model_only and config.source("checkpoint").path is None
    result = run_cycle(config)
    profile = next(p for p in result.profiles if p.source == "checkpoint")
    assert profile.status == "ok", profile.error
    assert "logme" in profile.measures and "mmd2" not in profile.measures and "label_noise_rate" not in profile.measures
    entry = result.ranking.entry("checkpoint")
    assert entry is not None and 0.0 <= entry.score <= 1.0
    data_side = {c for c in result.ranking.weights if c in ("mmd2", "frechet", "domain_separability", "label_noise_rate")}
    assert data_side and set(entry.missing) >= data_side and entry.completeness < 1.0
    assert result.ranking.entry("near").missing == ()
    explain = subprocess.run([sys.executable, "-m", "tasksim.cli", "explain", "checkpoint", "--config", str(path)],
                             capture_output=True, text=True, timeout=300)
    assert explain.returncode == 0, explain.stderr
    assert "missing criteria:" in explain.stdout


def test_a_source_needs_data_or_a_model(tmp_path: Path) -> None:
    import yaml

    from tasksim.errors import ConfigError

    path = make_tabular_workspace(tmp_path / "ws")
    cfg = yaml.safe_load(path.read_text())
    cfg["sources"].append({"name": "nothing", "label_column": "label"})
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    with pytest.raises(ConfigError, match=r"sources\[3\]: path: give the source's dataset \(path\), its model"):
        load_config(path)


def test_late_labels_retest_a_past_window(tmp_path: Path) -> None:
    """Window 1 arrives without labels; its labels arrive later, swapped between two classes (a
    concept shift with unchanged inputs): the next cycle re-tests window 1, names the concept
    shift, logs it and keeps the updated verdict."""
    import yaml

    path = make_tabular_workspace(tmp_path / "ws", windows=3, shift_at=99)
    cfg = yaml.safe_load(path.read_text())
    cfg["ranking"]["bootstrap_rounds"] = 0
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    production = path.parent / "production.parquet"
    frame = pd.read_parquet(production)
    hour1 = (frame["ts"] >= frame["ts"].min().floor("h") + pd.Timedelta(hours=1)) & (
        frame["ts"] < frame["ts"].min().floor("h") + pd.Timedelta(hours=2))
    truth = frame.loc[hour1, "label"].copy()
    frame.loc[hour1, "label"] = None
    frame.to_parquet(production, index=False)
    config = load_config(path)
    first = [run_cycle(config) for _ in range(2)]
    assert first[1].drift.labelled_rows == 0 and first[1].drift.kind == "none"
    assert first[1].drift.test("concept").not_testable == "not testable: no labelled rows in the window"

    swapped = truth.map({"class0": "class1", "class1": "class0"}).fillna(truth)
    frame.loc[hour1, "label"] = swapped
    frame.to_parquet(production, index=False)
    later = run_cycle(config)
    assert later.status == "success"
    (late,) = [d for d in later.late_drift if d["window_start"] == first[1].window_start.isoformat()]
    assert late["was_labelled_rows"] == 0 and late["labelled_rows"] == first[1].rows_sampled
    assert late["drifted"] and late["kind"] == "concept" and late["was_kind"] == "none"
    with Store(config.state_dir) as store:
        stored = json.loads(store.get_state("drift_late_labels:" + late["window_start"]))
    assert stored["kind"] == "concept" and stored["labelled_rows"] == late["labelled_rows"]
    assert later.to_dict()["drift_late_labels"] == later.late_drift


def test_label_names_give_integer_codes_their_meaning(tmp_path: Path) -> None:
    """Codes 0-2 are never compared by name; with label_names they are (and a wrong mapping shows)."""
    import yaml

    path = make_tabular_workspace(tmp_path / "ws", windows=2)
    root = path.parent
    cfg = yaml.safe_load(path.read_text())
    for parquet in [root / cfg["production"]["path"], *(root / s["path"] for s in cfg["sources"])]:
        frame = pd.read_parquet(parquet)
        frame["label"] = frame["label"].str.removeprefix("class").astype(int)
        frame.to_parquet(parquet)
    cfg["ranking"]["bootstrap_rounds"] = 0
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    coded = run_cycle(load_config(path))
    assert all("label_exact_overlap" not in p.measures for p in coded.profiles if p.status == "ok")
    names = {0: "cat", 1: "dog", 2: "bird"}
    cfg["production"]["label_names"] = names
    for s in cfg["sources"]:
        s["label_names"] = names if s["name"] != "far" else {0: "car", 1: "dog", 2: "truck"}
    cfg["state_dir"] = "state-named"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    named = {p.source: p.measures for p in run_cycle(load_config(path)).profiles}
    assert named["near"]["label_exact_overlap"] == 1.0
    assert named["far"]["label_exact_overlap"] == pytest.approx(1 / 3)
    cfg["production"]["label_names"] = {0: ""}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    from tasksim.errors import ConfigError

    with pytest.raises(ConfigError, match="production.label_names: expected a mapping of label code"):
        load_config(path)


def test_the_reference_is_read_and_hashed_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tasksim.cycle as cycle_module

    path = make_tabular_workspace(tmp_path / "ws")
    config = load_config(path)
    calls = {"load": 0, "hash": 0}
    load, fingerprint = cycle_module.load_reference, cycle_module.table_fingerprint

    def counted_load(*args, **kwargs):
        calls["load"] += 1
        return load(*args, **kwargs)

    def counted_hash(table):
        calls["hash"] += 1
        return fingerprint(table)

    monkeypatch.setattr(cycle_module, "load_reference", counted_load)
    monkeypatch.setattr(cycle_module, "table_fingerprint", counted_hash)
    first = run_cycle(config)
    assert first.status == "success" and calls == {"load": 1, "hash": 1}
    second = run_cycle(config)
    assert second.status == "success" and calls == {"load": 1, "hash": 1}  # stored table and fingerprint reused
    assert second.drift.reference_rows == first.drift.reference_rows
    assert len(list((config.state_dir / "reference").glob("*.arrow"))) == 1
    # a rewritten production file (its size or modification time) is read again
    production = path.parent / "production.parquet"
    frame = pd.read_parquet(production)
    frame.iloc[::-1].to_parquet(production, index=False)
    third = run_cycle(config)
    assert third.status == "success" and calls["load"] == 2
    assert len(list((config.state_dir / "reference").glob("*.arrow"))) == 1


def test_a_warm_process_reuses_each_sources_window_independent_work(tmp_path: Path) -> None:
    """SOURCE_MEMO: the second ranking of the same window in one process reads, embeds and measures no
    source again and gives the same profile; an edited source file is read afresh."""
    path = make_tabular_workspace(tmp_path / "ws", windows=2, rows_per_window=60)
    config = load_config(path)
    config = config.model_copy(update={"ranking": config.ranking.model_copy(update={"bootstrap_rounds": 0})})
    SOURCE_MEMO.clear()
    cold = rank_now(config)
    assert SOURCE_MEMO.misses == 3 and SOURCE_MEMO.hits == 0 and len(SOURCE_MEMO) == 3
    warm = rank_now(config)
    assert SOURCE_MEMO.hits == 3
    assert [p.measures for p in warm.profiles] == [p.measures for p in cold.profiles]
    assert [e.source for e in warm.ranking.entries] == [e.source for e in cold.ranking.entries]

    far = tmp_path / "ws" / "sources" / "far.parquet"
    frame = pd.read_parquet(far)
    frame.loc[:, "f0"] += 1.0
    frame.to_parquet(far, index=False)
    edited = {p.source: p for p in rank_now(config).profiles}
    assert SOURCE_MEMO.misses == 4 and SOURCE_MEMO.hits == 5
    assert edited["far"].measures["duplicate_rate"] == pytest.approx(0.0)
    assert edited["far"].measures["mmd2"] != {p.source: p for p in cold.profiles}["far"].measures["mmd2"]


def test_windows_in_the_reference_period_are_not_tested_against_it(tmp_path: Path, capsys) -> None:
    """A window's rows that lie in the reference period are the reference's own data: a window that
    lies wholly in it gets an untested verdict (and does not feed the accumulated tests), a window
    that straddles its end is tested on its rows after the end."""
    import yaml

    path = make_tabular_workspace(tmp_path / "ws", windows=3, shift_at=3)
    raw = yaml.safe_load(path.read_text())
    start = pd.Timestamp(raw["reference"]["start"])
    raw["reference"]["end"] = (start + pd.Timedelta(minutes=90)).isoformat()  # window 2 straddles the end
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    config = load_config(path)

    assert main(["run", "--config", str(path), "--no-experiment"]) == 0
    out = capsys.readouterr().out
    assert "drift: not tested: the window lies in the reference period" in out
    with Store(config.state_dir) as store:
        first = store.cycles(limit=1)[0]
    verdict = json.loads(first["drift_json"])
    assert verdict["tested"] is False and verdict["detected"] is False and verdict["tests"] == []
    assert verdict["current_rows"] == 300 and first["status"] == "success"

    second = run_cycle(config)
    production = pd.read_parquet(tmp_path / "ws" / "production.parquet")
    ts = pd.to_datetime(production["ts"], utc=True)
    window = (ts >= start + pd.Timedelta(hours=1)) & (ts < start + pd.Timedelta(hours=2))
    after_end = window & (ts >= start + pd.Timedelta(minutes=90))
    assert 0 < after_end.sum() < window.sum()
    assert second.drift.tested and second.drift.current_rows == int(after_end.sum())
    assert not second.drift.drifted
    assert second.ranking.best() is not None  # profiling and ranking still see the whole window
