"""Transfer experiments: trials, preregistration, the outcome, bad input and faults (tasksim.experiment)."""

from __future__ import annotations

import copy
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import nn

from tasksim.config import load_config
from tasksim.errors import ConfigError
from tasksim.experiment import (
    BudgetError,
    ExperimentError,
    Split,
    TrainableModel,
    TrialSpec,
    _tensor_forward,
    gate_switch,
    parameter_blocks,
    run_experiment,
    run_trial,
    stratified_split,
    weighted_tau,
)
from tasksim.model_encoders import MLP
from tasksim.recommend import Recommendation
from tasksim.store import CycleRecord, Store
from tests.conftest import make_tabular_workspace

torch.set_num_threads(1)


def _workspace(tmp_path: Path, *, experiment: dict[str, Any] | None = None, ranking: list[str] | None = None,
               extra: dict[str, Any] | None = None, plan: str = "linear_probe", labels: bool = True,
               recommended: str = "near", action: str = "keep") -> Path:
    """A small tabular workspace with a model-only MLP source ('mlp') and a recorded decision (so the
    experiment reads its prediction instead of profiling)."""
    root = tmp_path / "ws"
    sources = {"mlp": {"path": None, "encoder": {"kind": "safetensors", "path": "mlp.safetensors",
                                                 "architecture": "mlp"}}, **(extra or {})}
    path = make_tabular_workspace(root, windows=1, rows_per_window=150, shift_at=5, extra_sources=sources)
    torch.manual_seed(0)
    from safetensors.torch import save_file

    save_file(MLP([6, 16, 16, 8]).state_dict(), str(root / "mlp.safetensors"))
    raw = yaml.safe_load(path.read_text())
    raw["experiment"] = {"max_epochs": 4, "patience": 2, "seeds": 1, "budget": "120s", "top_k": 2,
                         "strategies": ["linear_probe", "full", "surgical_first"], **(experiment or {})}
    if not labels:
        raw["production"].pop("label_column")
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    config = load_config(path)
    order = ranking or ["near", "mlp", "moved", "far"]
    with Store(config.state_dir) as store:
        store.record_cycle(CycleRecord(
            started_at=1.0, finished_at=2.0, status="success", config_hash="x",
            decision={"deployed_source": "near", "recommended_source": recommended, "action": action,
                      "rationale": "test", "fine_tune": {"strategy": plan},
                      "ranking": [{"source": s, "rank": i + 1, "score": 1.0 - 0.2 * i} for i, s in enumerate(order)]}))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """One experiment run on the small workspace, shared by the read-only checks below."""
    path = _workspace(tmp_path_factory.mktemp("exp"))
    return path, run_experiment(load_config(path))


def test_experiment_preregisters_then_records_trials_and_outcome(finished: tuple[Path, Any]) -> None:
    path, result = finished
    config = load_config(path)
    assert result.status == "finished" and result.verdict in ("validated", "overturned")
    assert result.predicted_order == ("near", "mlp")  # deployed + top 2 of the recorded ranking
    assert set(result.source_scores) == {"near", "mlp"}
    assert result.advised_strategy == "linear_probe"
    with Store(config.state_dir, readonly=True) as store:
        e = store.experiment(result.experiment_id)
    pre = e["preregistration"]
    assert pre["predicted_order"] == ["near", "mlp", "moved", "far"] and pre["advised_strategy"] == "linear_probe"
    assert len(pre["hypotheses"]) == 3 and pre["split"]["hash"] == e["split_hash"] == result.split_hash
    from tasksim.device import resolve_device

    assert pre["device"] == str(resolve_device(load_config(path).device))  # trials run where the config says
    assert e["status"] == "finished" and e["verdict"] == result.verdict
    # every trial: hyperparameters, seed, split hash, code version
    ok = [t for t in e["trials"] if t["status"] == "ok"]
    assert ok and all(t["split_hash"] == result.split_hash and t["code_version"] == pre["code_version"]
                      and t["hyperparameters"]["learning_rate"] > 0 and t["seed"] == 0 for t in ok)
    # 'near' is a dataset-only source: its fitted head has one block, so surgical is not applicable to it;
    # the MLP checkpoint has three
    status = {(t["source"], t["strategy"]): t["status"] for t in e["trials"]}
    assert status[("near", "surgical_first")] == "not_applicable"
    assert status[("mlp", "surgical_first")] == "ok" and status[("mlp", "full")] == "ok"
    assert all(0.0 <= s <= 1.0 for s in result.source_scores.values())


def test_trials_are_reproducible_for_a_seed(finished: tuple[Path, Any]) -> None:
    _, result = finished

    first = {(t.spec.source, t.spec.strategy): t.score for t in result.trials if t.status == "ok"}
    torch.manual_seed(123)
    model = MLP([6, 16, 16, 8])
    x = torch.randn(60, 6)
    labels = [f"c{int(v > 0)}" for v in x[:, 0]]
    split = stratified_split(labels, (0.6, 0.2, 0.2), 0)
    spec = TrialSpec("toy", "full", 0, 1e-3, 1e-3, 1e-4, 3, 2, 16)
    tm = TrainableModel("toy", model, _tensor_forward(x, torch.device("cpu")), torch.device("cpu"), description="t")
    a, b = run_trial(tm, spec, split), run_trial(tm, spec, split)
    assert a.status == b.status == "ok" and a.score == b.score and a.val_score == b.val_score
    assert first  # the shared run produced scores


def test_cli_experiment_history_and_explain_show_trials(finished: tuple[Path, Any],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from tasksim.cli import main

    path, result = finished
    assert main(["history", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"experiment {result.experiment_id}" in out and "linear_probe" in out and "accuracy" in out
    assert main(["explain", "mlp", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "trials of mlp" in out and "surgical_first" in out
    assert not [line for line in out.splitlines() if line.startswith("  near ")]  # that source's trials only
    assert main(["explain", "mlp", "-c", str(path), "--format", "json"]) == 0
    trials = json.loads(capsys.readouterr().out)["trials"]
    assert trials and {t["source"] for t in trials} == {"mlp"}


def test_metrics_show_the_last_experiment(finished: tuple[Path, Any]) -> None:
    from prometheus_client import generate_latest

    from tasksim.export import build_registry

    path, result = finished
    text = generate_latest(build_registry(load_config(path).state_dir)).decode()
    assert 'tasksim_trial_score{source="mlp",strategy="full"}' in text
    assert "tasksim_experiment_last_timestamp_seconds" in text
    assert f"tasksim_recommendation_validated {1.0 if result.verdict == 'validated' else 0.0}" in text


def test_store_refuses_to_rewrite_experiments(finished: tuple[Path, Any]) -> None:
    path, _ = finished
    conn = sqlite3.connect(load_config(path).state_dir / "tasksim.sqlite")
    try:
        for statement in ("UPDATE experiments SET trigger = 'x'", "DELETE FROM experiment_trials",
                          "UPDATE experiment_outcomes SET verdict = 'validated'"):
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                conn.execute(statement)
    finally:
        conn.close()


# -- the parts ---------------------------------------------------------------------------------
class _Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.query, self.value, self.out = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.query(x)) * self.value(x))


class _Layer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention, self.ff = _Attention(), nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ff(torch.relu(self.attention(x)))


class _ToyTransformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 8)
        self.encoder = nn.ModuleDict({"layer": nn.ModuleList([_Layer() for _ in range(3)])})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for layer in self.encoder["layer"]:
            h = layer(h)
        return h


def _toy_split(n: int = 90) -> tuple[torch.Tensor, Split]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=gen)
    labels = [f"c{int(v)}" for v in (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()]
    return x, stratified_split(labels, (0.6, 0.2, 0.2), 0)


def test_blocks_come_from_named_children() -> None:
    assert [b for b, _ in parameter_blocks(MLP([6, 16, 16, 8]))] == ["layers.0", "layers.1", "layers.2"]
    blocks = [b for b, _ in parameter_blocks(_ToyTransformer())]
    assert blocks == ["embed", "encoder.layer.0", "encoder.layer.1", "encoder.layer.2"]
    # every parameter belongs to exactly one block
    names = [p for _, params in parameter_blocks(_ToyTransformer()) for p in params]
    assert sorted(names) == sorted(n for n, _ in _ToyTransformer().named_parameters())


def test_surgical_trains_one_third_and_lora_only_adapters() -> None:
    x, split = _toy_split()
    cpu = torch.device("cpu")
    model = _ToyTransformer()
    tm = TrainableModel("toy", model, _tensor_forward(x, cpu), cpu, description="toy")
    assert tm.transformer and tm.applicable("lora") is None
    head = 8 * len(split.classes) + len(split.classes)
    first = run_trial(tm, TrialSpec("toy", "surgical_first", 0, 1e-3, 1e-3, 1e-4, 2, 2, 16), split)
    embed_and_layer0 = (6 * 8 + 8) + sum(p.numel() for p in model.encoder["layer"][0].parameters())
    assert first.status == "ok" and first.trainable_parameters == embed_and_layer0 + head
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lora = run_trial(tm, TrialSpec("toy", "lora", 0, 1e-3, 1e-3, 1e-4, 2, 2, 16), split)
    assert lora.status == "ok", lora.error
    # rank-8 A (8x8) and B (8x8) on query, value, out of 3 layers
    assert lora.trainable_parameters == 3 * 3 * (8 * 8 + 8 * 8) + head
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the template is untouched
    mlp = TrainableModel("mlp", MLP([6, 16, 16, 8]), _tensor_forward(x, cpu), cpu, description="mlp")
    assert "transformer" in (mlp.applicable("lora") or "")
    assert run_trial(mlp, TrialSpec("mlp", "lora", 0, 1e-3, 1e-3, 1e-4, 2, 2, 16), split).status == "not_applicable"


OTHER_DEVICE = os.environ.get("TASKSIM_TEST_OTHER_DEVICE") or ("cuda" if torch.cuda.is_available() else None)


@pytest.mark.skipif(OTHER_DEVICE is None, reason="no CUDA device (or TASKSIM_TEST_OTHER_DEVICE) on this machine")
def test_trials_run_on_the_accelerator_and_agree_with_the_cpu() -> None:
    """On a CUDA machine every strategy trains on the GPU (the module, the head and the batches) and
    reaches the CPU's accuracy up to floating-point noise (run: pytest -k accelerator)."""
    x, split = _toy_split()
    other = torch.device(OTHER_DEVICE)  # type: ignore[arg-type]
    for strategy in ("linear_probe", "lp_ft", "surgical_last", "full", "lora"):
        spec = TrialSpec("toy", strategy, 0, 1e-3, 1e-3, 1e-4, 3, 2, 16)
        torch.manual_seed(0)
        cpu_model = _ToyTransformer()
        gpu_model = copy.deepcopy(cpu_model)
        cpu = run_trial(TrainableModel("toy", cpu_model, _tensor_forward(x, torch.device("cpu")), torch.device("cpu"),
                                       description="toy"), spec, split)
        tm = TrainableModel("toy", gpu_model, _tensor_forward(x, other), other, description="toy")
        assert next(tm.module.parameters()).device.type == other.type
        gpu = run_trial(tm, spec, split)
        assert cpu.status == gpu.status == "ok", (strategy, cpu.error, gpu.error)
        assert abs(cpu.score - gpu.score) <= 0.1, strategy  # one or two test rows may flip


def test_split_is_stratified_fixed_and_hashed() -> None:
    labels = ["a"] * 20 + ["b"] * 10 + ["c"] * 2
    s1, s2 = stratified_split(labels, (0.6, 0.2, 0.2), 7, "data"), stratified_split(labels, (0.6, 0.2, 0.2), 7, "data")
    assert s1 == s2 and s1.hash != stratified_split(labels, (0.6, 0.2, 0.2), 8, "data").hash
    assert s1.classes == ("a", "b") and s1.left_out == {"c": 2}
    for part in (s1.train, s1.val, s1.test):
        assert {labels[i] for i in part} == {"a", "b"}
    assert not set(s1.train) & set(s1.val) and not set(s1.val) & set(s1.test)


def test_weighted_tau() -> None:
    assert weighted_tau({"a": 3, "b": 2, "c": 1}, {"a": 0.9, "b": 0.8, "c": 0.1}) == pytest.approx(1.0)
    assert weighted_tau({"a": 3, "b": 2, "c": 1}, {"a": 0.1, "b": 0.8, "c": 0.9}) == pytest.approx(-1.0)
    assert weighted_tau({"a": 1}, {"a": 0.5}) is None


# -- bad input and faults ----------------------------------------------------------------------
def test_no_labelled_rows_or_one_class_is_refused_with_the_reason(tmp_path: Path) -> None:
    path = _workspace(tmp_path, labels=False)
    with pytest.raises(ExperimentError, match="no labelled rows.*label_column is not set"):
        run_experiment(load_config(path))
    with pytest.raises(ExperimentError, match="single class"):
        stratified_split(["cat"] * 30, (0.6, 0.2, 0.2), 0)
    with pytest.raises(ExperimentError, match="no labelled rows"):
        stratified_split([], (0.6, 0.2, 0.2), 0)
    with Store(load_config(path).state_dir, readonly=True) as store:
        assert store.experiments() == []  # nothing preregistered


def test_a_budget_too_small_for_one_trial_is_a_clear_message(tmp_path: Path) -> None:
    path = _workspace(tmp_path, experiment={"budget": "0.001s"})
    with pytest.raises(BudgetError, match=r"experiment.budget 0.001s is too small for one trial.*at least \d+s"):
        run_experiment(load_config(path))
    raw = yaml.safe_load(path.read_text())
    raw["experiment"]["max_trials"] = 0
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(BudgetError, match="max_trials is 0"):
        run_experiment(load_config(path))
    from tasksim.cli import main

    raw["experiment"]["max_trials"] = 1
    raw["experiment"]["budget"] = "0.001s"
    path.write_text(yaml.safe_dump(raw))
    assert main(["experiment", "-c", str(path)]) == 2


def test_a_diverging_trial_is_failed_and_the_others_go_on(tmp_path: Path) -> None:
    path = _workspace(tmp_path, experiment={"learning_rates": {"full": 1e12}})
    result = run_experiment(load_config(path))
    by = {(t.spec.source, t.spec.strategy): t for t in result.trials}
    assert by[("mlp", "full")].status == "failed"
    assert "diverged" in by[("mlp", "full")].error or "NaN" in by[("mlp", "full")].error or \
        "inf" in by[("mlp", "full")].error
    assert by[("mlp", "linear_probe")].status == "ok" and by[("mlp", "surgical_first")].status == "ok"
    assert result.status == "finished"


def test_missing_or_pickled_model_files_fail_their_source_only(tmp_path: Path) -> None:
    extra = {"gone": {"path": None, "encoder": {"kind": "safetensors", "path": "missing.safetensors",
                                                "architecture": "mlp"}},
             "pickled": {"path": None, "encoder": {"kind": "torchscript", "path": "model.pt"}}}
    path = _workspace(tmp_path, extra=extra, ranking=["gone", "pickled", "near", "mlp"])
    torch.save(MLP([6, 4]).state_dict(), str(path.parent / "model.pt"))  # a pickle
    result = run_experiment(load_config(path))
    assert "does not exist" in result.failed_sources["gone"]
    assert "pickle" in result.failed_sources["pickled"]
    assert set(result.source_scores) == {"near"}
    failed = [t for t in result.trials if t.status == "failed"]
    assert {t.spec.source for t in failed} == {"gone", "pickled"}


def test_kill_9_during_an_experiment_is_marked_interrupted_next_time(tmp_path: Path) -> None:
    path = _workspace(tmp_path)
    script = ("import os, signal, sys; sys.path.insert(0, '.');"
              "from tasksim.config import load_config; from tasksim.experiment import run_experiment;"
              f"run_experiment(load_config({str(path)!r}), on_trial=lambda r: os.kill(os.getpid(), signal.SIGKILL))")
    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", script], cwd=repo, capture_output=True, timeout=120, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    config = load_config(path)
    with Store(config.state_dir, readonly=True) as store:
        (killed,) = store.experiments()
        assert killed["status"] == "running" and len(killed["trials"]) == 1  # whole rows only
        assert killed["preregistration"]["hypotheses"]
    result = run_experiment(config)
    with Store(config.state_dir, readonly=True) as store:
        previous = store.experiment(killed["id"])
        assert previous["status"] == "interrupted" and previous["outcome"]["trials_recorded"] == 1
        assert store.experiment(result.experiment_id)["status"] == "finished"
        assert store._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_running_experiment_blocks_a_second_one(tmp_path: Path) -> None:
    path = _workspace(tmp_path)
    config = load_config(path)
    with Store(config.state_dir) as store:
        import socket

        store.preregister_experiment(created_at=1e12, trigger="cli", deployed_source="near", recommended_source="near",
                                     advised_strategy="full", split_hash="x", preregistration={},
                                     pid=os.getppid(), host=socket.gethostname())
    with pytest.raises(ExperimentError, match="still running"):
        run_experiment(config)


def test_the_switch_rule_can_require_validation(tmp_path: Path) -> None:
    rec = Recommendation("near", "moved", "switch", "moved leads")
    with Store(tmp_path) as store:
        assert gate_switch(rec, store, False) is rec
        kept = gate_switch(rec, store, True)
        assert kept.action == "keep" and kept.recommended_source == "near" and "awaits validation" in kept.rationale
        for verdict in ("overturned", "validated"):
            i = store.preregister_experiment(created_at=1.0, trigger="cli", deployed_source="near",
                                             recommended_source="moved", advised_strategy="full", split_hash="x",
                                             preregistration={})
            store.finish_experiment(i, status="finished", verdict=verdict, tau=None, outcome={}, finished_at=2.0)
            gated = gate_switch(rec, store, True)
            if verdict == "overturned":
                assert gated.action == "keep" and f"overturned by experiment {i}" in gated.rationale
            else:
                assert gated.action == "switch" and f"validated by experiment {i}" in gated.rationale


def test_experiment_config_is_validated_at_the_boundary(tmp_path: Path) -> None:
    path = _workspace(tmp_path)
    raw = yaml.safe_load(path.read_text())
    for bad, message in (({"strategies": ["warp"]}, "experiment.strategies"),
                         ({"split": [0.5, 0.5, 0.5]}, "summing to 1"),
                         ({"learning_rates": {"full": -1}}, "must be > 0")):
        raw["experiment"] = bad
        path.write_text(yaml.safe_dump(raw))
        with pytest.raises(ConfigError, match=message):
            load_config(path)


def test_surgical_trials_reuse_the_frozen_layers_outputs_with_the_same_results() -> None:
    """surgical_middle / _last feed the trained layers the frozen layers' outputs computed once per
    split: the features match the whole model's forward and the trials' results are the same."""
    x, split = _toy_split()
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    model = _ToyTransformer()
    tm = TrainableModel("toy", model, _tensor_forward(x, cpu), cpu, description="toy")
    ref = TrainableModel("toy", copy.deepcopy(model), _tensor_forward(x, cpu), cpu, description="toy")
    ref.reuse_frozen_prefix = False
    last = tm.surgical_parameters("last")
    prefix = tm.frozen_prefix(last, len(x), 64)
    assert prefix is not None and ref.frozen_prefix(last, len(x), 64) is None
    calls: list[int] = []
    handle = model.encoder["layer"][0].register_forward_hook(lambda *_: calls.append(1))
    idx = torch.tensor([5, 3, 80])
    with torch.no_grad():
        assert torch.allclose(prefix(tm.reset(), idx), tm.forward(tm.reset(), idx), atol=1e-6)
    assert len(calls) == 1  # the frozen layer ran for the plain forward only
    handle.remove()
    assert [type(m).__name__ for m in model.encoder["layer"]] == ["_Layer"] * 3  # layers restored
    # surgical_first trains the first block: nothing before it to reuse
    assert tm.frozen_prefix(tm.surgical_parameters("first"), len(x), 64) is None
    _assert_same_surgical_trials(tm, ref, split, "toy")
    assert all(torch.equal(v, ref.initial[k]) for k, v in model.state_dict().items())  # the template is untouched


def _assert_same_surgical_trials(tm: TrainableModel, ref: TrainableModel, split: object, name: str) -> None:
    """surgical_middle / _last at two seeds: the same results through the frozen-prefix cache
    (``tm``) as through the whole model (``ref``)."""
    for strategy in ("surgical_middle", "surgical_last"):
        for seed in (0, 1):
            spec = TrialSpec(name, strategy, seed, 1e-2, 1e-2, 1e-4, 4, 2, 16)
            fast, slow = run_trial(tm, spec, split), run_trial(ref, spec, split)
            assert fast.status == slow.status == "ok", (fast.error, slow.error)
            assert (fast.score, fast.val_score, fast.epochs, fast.best_epoch, fast.trainable_parameters) == (
                slow.score, slow.val_score, slow.epochs, slow.best_epoch, slow.trainable_parameters), strategy


def _toy_cnn() -> nn.Sequential:
    """The advice benchmark's CNN shape in miniature: three conv + batch-norm blocks in an ``nn.Sequential``."""

    def block(i: int, o: int, pool: nn.Module) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), pool)

    return nn.Sequential(block(1, 4, nn.MaxPool2d(2)), block(4, 6, nn.MaxPool2d(2)),
                         block(6, 8, nn.AdaptiveAvgPool2d(1)), nn.Flatten())


def test_cnn_surgical_trials_reuse_the_frozen_blocks_outputs_with_the_same_results() -> None:
    """A CNN's blocks are children of an ``nn.Sequential``: surgical_middle / _last reuse the frozen
    leading blocks' outputs too, with batch norm in eval mode (running statistics) as in every trial,
    and the trials' results are the same as through the whole model."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(90, 1, 8, 8, generator=gen)
    labels = [f"c{int(v)}" for v in (x[:, 0, :4].mean((1, 2)) > x[:, 0, 4:].mean((1, 2))).long()
              + (x[:, 0, :, :4].mean((1, 2)) > 0.5).long()]
    split = stratified_split(labels, (0.6, 0.2, 0.2), 0)
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    model = _toy_cnn()
    with torch.no_grad():  # running statistics away from their defaults, so eval mode matters
        model.train()(x * 3 + 1)
    tm = TrainableModel("cnn", model, _tensor_forward(x, cpu), cpu, description="toy cnn")
    ref = TrainableModel("cnn", copy.deepcopy(model), _tensor_forward(x, cpu), cpu, description="toy cnn")
    ref.reuse_frozen_prefix = False
    assert [b for b, _ in tm.blocks] == ["0.0", "0.1", "1.0", "1.1", "2.0", "2.1"]
    for where, n in (("middle", 1), ("last", 2)):
        prefix = tm.frozen_prefix(tm.surgical_parameters(where), len(x), 64)
        assert prefix is not None and ref.frozen_prefix(ref.surgical_parameters(where), len(x), 64) is None
        calls: list[int] = []
        handle = model[n - 1].register_forward_hook(lambda *_, calls=calls: calls.append(1))
        idx = torch.tensor([5, 3, 80, 17])
        with torch.no_grad():
            assert torch.allclose(prefix(tm.reset(), idx), tm.forward(tm.reset(), idx), atol=1e-6)
        assert len(calls) == 1, where  # the frozen block ran for the plain forward only
        handle.remove()
    assert [type(m).__name__ for m in model] == ["Sequential"] * 3 + ["Flatten"]  # blocks restored
    assert tm.frozen_prefix(tm.surgical_parameters("first"), len(x), 64) is None
    _assert_same_surgical_trials(tm, ref, split, "cnn")
    assert not any(m.training for m in model.modules())  # batch norm stayed in eval mode
    assert all(torch.equal(v, ref.initial[k]) for k, v in model.state_dict().items())  # running stats untouched
