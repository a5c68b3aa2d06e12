"""Bad model files are caught by ``tasksim validate`` (exit 2, one line naming the field and what is
expected), a failing encoder names the input shape it got and the key that fixes it, and every kind
of source (dataset + model, model only, dataset only) goes through ``rank``, ``run`` and ``explain``.
Every file here is a real one: TorchScript archives, pickles and safetensors heads built in tmp_path."""

from __future__ import annotations

import json
import pickle
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import save_file
from torch import nn

from tasksim.cli import main
from tasksim.embed import MLP

from .conftest import make_tabular_workspace


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, list[str]]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, [line for line in err.splitlines() if line.strip()]


def _add_sources(path: Path, *sources: dict) -> Path:
    cfg = yaml.safe_load(path.read_text())
    cfg["sources"].extend(sources)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _mlp(path: Path, sizes: list[int]) -> Path:
    torch.manual_seed(0)
    save_file(MLP(sizes).state_dict(), str(path))
    return path


def _bad_heads(root: Path) -> dict[str, tuple[Path, str]]:
    """Head files that must be refused, and the words that say what is expected."""
    heads: dict[str, tuple[Path, str]] = {}
    torch.jit.save(torch.jit.script(nn.Linear(6, 3)), root / "head-ts.pt")
    heads["torchscript"] = (root / "head-ts.pt",
                            "the head is a TorchScript archive; expected safetensors holding 'weight' (classes x")
    torch.save(nn.Linear(6, 3).state_dict(), root / "head-state.pt")  # the usual torch.save: a zip of pickles
    heads["torch.save"] = (root / "head-state.pt", "the head is a pickle; expected safetensors")
    (root / "head.pkl").write_bytes(pickle.dumps({"weight": np.zeros((3, 6))}, protocol=2))
    heads["pickle"] = (root / "head.pkl", "the head is a pickle; expected safetensors")
    save_file({"weight": torch.zeros(3, 6), "bias": torch.zeros(4)}, str(root / "head-bias.safetensors"))
    heads["bias"] = (root / "head-bias.safetensors", "'bias' has shape (4,) but 'weight' has 3 classes")
    save_file({"weight": torch.zeros(3, 6, dtype=torch.int64)}, str(root / "head-int.safetensors"))
    heads["dtype"] = (root / "head-int.safetensors", "'weight' has dtype I64")
    save_file({"w1": torch.zeros(16, 6), "w2": torch.zeros(3, 16)}, str(root / "head-mlp.safetensors"))
    heads["no weight"] = (root / "head-mlp.safetensors", "the head's 'weight' has shape None")
    return heads


@pytest.mark.parametrize("case", ["torchscript", "torch.save", "pickle", "bias", "dtype", "no weight"])
def test_validate_refuses_a_head_that_is_not_a_linear_safetensors_head(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    path = make_tabular_workspace(tmp_path / "ws", windows=1)
    head, expected = _bad_heads(tmp_path / "ws")[case]
    _add_sources(path, {"name": "withhead", "path": "sources/near.parquet", "label_column": "label",
                        "feature_columns": [f"f{i}" for i in range(6)], "head": head.name})
    code, _, lines = _cli(capsys, "validate", "--config", str(path))
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"tasksim: error: {path}: sources[3].head (withhead): {head}: ")
    assert expected in lines[0]


def test_validate_refuses_a_head_of_the_wrong_width(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The head's input width must be the width of the features it is applied to: the source's own
    model's output (found by a one-row dry run), else the shared encoder's (from the data)."""
    path = make_tabular_workspace(tmp_path / "ws", windows=1)
    ws = path.parent
    _mlp(ws / "ckpt.safetensors", [6, 16, 8])  # a model-only source's checkpoint: 6 inputs, 8 features out
    save_file({"weight": torch.zeros(3, 8), "bias": torch.zeros(3)}, str(ws / "head8.safetensors"))
    save_file({"weight": torch.zeros(3, 16), "bias": torch.zeros(3)}, str(ws / "head16.safetensors"))
    good = yaml.safe_load(path.read_text())
    base = {"label_column": "label", "feature_columns": [f"f{i}" for i in range(6)]}
    checkpoint = {"name": "checkpoint", "encoder": {"kind": "safetensors", "path": "ckpt.safetensors",
                                                    "architecture": "mlp"}}

    _add_sources(path, {**checkpoint, "head": "head8.safetensors"})
    assert _cli(capsys, "validate", "--config", str(path))[0] == 0

    path.write_text(yaml.safe_dump(good, sort_keys=False))
    _add_sources(path, {**checkpoint, "head": "head16.safetensors"})
    code, _, lines = _cli(capsys, "validate", "--config", str(path))
    assert code == 2 and len(lines) == 1, lines
    assert f"sources[3].head (checkpoint): {ws / 'head16.safetensors'}: the head's 'weight' takes 16 features" in lines[0]
    assert "the source's model (sources[3].encoder, safetensors) gives 8" in lines[0]
    assert "expected a 'weight' of shape (classes, 8)" in lines[0]
    code, out, _ = _cli(capsys, "rank", "--config", str(path), "--format", "json")  # a cycle isolates the source
    failed = next(s for s in json.loads(out)["sources"] if s["source"] == "checkpoint")
    assert code == 0 and failed["status"] == "failed" and failed["rank"] is None
    assert "takes 16 features per row but the source's model (its encoder) gives 8" in failed["error"]

    path.write_text(yaml.safe_dump(good, sort_keys=False))  # a dataset-only source: seen through the identity encoder
    _add_sources(path, {"name": "data", "path": "sources/near.parquet", **base, "head": "head8.safetensors"})
    code, _, lines = _cli(capsys, "validate", "--config", str(path))
    assert code == 2 and len(lines) == 1, lines
    assert "sources[3].head (data):" in lines[0] and "takes 8 features per row" in lines[0]
    assert "the shared encoder (encoder, identity" in lines[0] and "(classes, 6)" in lines[0]


class _Digits(nn.Module):
    """A small CNN for 28x28 grey images: (N, 1, 28, 28) in, 8 features out; flat rows fail inside."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 5, stride=3)
        self.fc = nn.Linear(4 * 8 * 8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def _pixel_workspace(root: Path, rows: int = 60) -> Path:
    """Production rows of 784 pixels (one list column), labelled, in one hour; a dataset-only source."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)

    def frame(n: int, ts: bool) -> pd.DataFrame:
        y = rng.integers(0, 3, n)
        pix = (rng.random((n, 784)) + y[:, None] * 0.2).astype(np.float32)
        out = pd.DataFrame({"pix": list(pix), "label": [f"d{v}" for v in y]})
        if ts:
            out["ts"] = pd.to_datetime([t0 + timedelta(seconds=int(s)) for s in rng.integers(0, 3600, n)], utc=True)
        return out

    frame(rows, True).to_parquet(root / "production.parquet", index=False)
    frame(rows, False).to_parquet(root / "digits.parquet", index=False)
    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(_Digits().eval()), root / "digits-cnn.pt")
    config = {
        "state_dir": "state",
        "production": {"path": "production.parquet", "timestamp_column": "ts", "label_column": "label",
                       "feature_columns": ["pix"], "partitioning": None},
        "window": {"mode": "sequential", "length": "1h"},
        "reference": {"path": "production.parquet"},
        "encoder": {"kind": "identity"},
        "sources": [{"name": "digits", "path": "digits.parquet", "feature_columns": ["pix"], "label_column": "label"},
                    {"name": "cnn", "encoder": {"kind": "torchscript", "path": "digits-cnn.pt"}}],
        "deployed_source": "digits",
        "schedule": {"interval": "1h"},
        "ranking": {"bootstrap_rounds": 0},
    }
    path = root / "tasksim.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_a_failing_encoder_names_the_shape_it_got_and_the_key_that_fixes_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A TorchScript CNN that needs (1, 28, 28) given flat rows of 784: validate catches it with one
    line, a cycle fails that source alone with the same words, and the named key fixes it."""
    path = _pixel_workspace(tmp_path / "ws")
    code, _, lines = _cli(capsys, "validate", "--config", str(path))
    assert code == 2 and len(lines) == 1, lines
    line = lines[0]
    assert "sources[1].encoder (cnn): torchscript:digits-cnn.pt encoder: forward failed on input of shape (1, 784)" in line
    assert "set sources[1].encoder.input_shape to one row's shape, e.g. [1, 28, 28]" in line
    assert "RuntimeError: RuntimeError" not in line and line.count("RuntimeError") <= 1

    code, out, _ = _cli(capsys, "run", "--config", str(path), "--format", "json")
    assert code == 0
    cnn = next(s for s in json.loads(out)["sources"] if s["source"] == "cnn")
    assert cnn["status"] == "failed" and "\n" not in cnn["error"]
    assert "forward failed on input of shape (60, 784)" in cnn["error"]
    assert "sources[1].encoder.input_shape" in cnn["error"] and "RuntimeError: RuntimeError" not in cnn["error"]

    cfg = yaml.safe_load(path.read_text())
    cfg["sources"][1]["encoder"]["input_shape"] = [1, 28, 28]
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert _cli(capsys, "validate", "--config", str(path))[0] == 0
    cfg["sources"][1]["encoder"]["input_shape"] = [4, 14, 14]  # the right width, the wrong shape for the model
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    code, _, lines = _cli(capsys, "validate", "--config", str(path))
    assert code == 2 and len(lines) == 1, lines
    assert "input of shape (1, 4, 14, 14)" in lines[0] and "sources[1].encoder.input_shape [4, 14, 14]" in lines[0]


def test_every_kind_of_source_is_ranked_run_and_explained(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Dataset + model, model only (with its own head) and dataset only, through the CLI."""
    path = make_tabular_workspace(tmp_path / "ws", windows=2)
    ws = path.parent
    _mlp(ws / "ckpt.safetensors", [6, 16, 8])
    _mlp(ws / "own.safetensors", [6, 12])
    torch.manual_seed(1)
    save_file({"weight": torch.randn(3, 8), "bias": torch.zeros(3)}, str(ws / "ckpt-head.safetensors"))
    cfg = yaml.safe_load(path.read_text())
    cfg["ranking"]["bootstrap_rounds"] = 5
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    _add_sources(path,
                 {"name": "checkpoint", "head": "ckpt-head.safetensors",
                  "encoder": {"kind": "safetensors", "path": "ckpt.safetensors", "architecture": "mlp"}},
                 {"name": "withmodel", "path": "sources/moved.parquet", "label_column": "label",
                  "feature_columns": [f"f{i}" for i in range(6)],
                  "encoder": {"kind": "safetensors", "path": "own.safetensors", "architecture": "mlp"}})
    kinds = {"near": "dataset only", "checkpoint": "model only", "withmodel": "dataset + model"}
    assert _cli(capsys, "validate", "--config", str(path))[0] == 0

    code, out, lines = _cli(capsys, "rank", "--config", str(path), "--format", "json")
    assert code == 0, lines
    ranked = {s["source"]: s for s in json.loads(out)["sources"]}
    for name in kinds:
        assert ranked[name]["status"] == "ok" and ranked[name]["rank"] is not None, (name, ranked[name]["error"])
        assert ranked[name]["top1_probability"] is not None
    assert "logme" in ranked["checkpoint"]["measures"] and "leep" in ranked["checkpoint"]["measures"]
    assert "mmd2" not in ranked["checkpoint"]["measures"] and "mmd2" in ranked["withmodel"]["measures"]

    code, out, lines = _cli(capsys, "run", "--config", str(path), "--format", "json")
    assert code == 0, lines
    run = json.loads(out)
    assert run["status"] == "success"
    assert {r["source"] for r in run["ranking"]} >= set(kinds)
    # the Prometheus exposition carries every kind: score, rank, top-1 probability, and the
    # measures each has (no distance series for the model-only source)
    from prometheus_client import CollectorRegistry, generate_latest

    from tasksim.config import load_config
    from tasksim.export import StoreCollector

    registry = CollectorRegistry()
    registry.register(StoreCollector(load_config(path).state_dir))
    exposition = generate_latest(registry).decode()
    for name in kinds:
        for family in ("tasksim_source_score", "tasksim_source_rank", "tasksim_source_top1_probability"):
            assert f'{family}{{source="{name}"}}' in exposition, (family, name)
        assert f'tasksim_source_similarity{{metric="logme",source="{name}"}}' in exposition
    assert 'tasksim_source_similarity{metric="mmd2",source="checkpoint"}' not in exposition
    assert 'tasksim_source_similarity{metric="mmd2",source="withmodel"}' in exposition
    for name in kinds:
        code, out, lines = _cli(capsys, "explain", name, "--config", str(path))
        assert code == 0 and name in out, lines
    assert "missing criteria:" in _cli(capsys, "explain", "checkpoint", "--config", str(path))[1]


def test_validate_reads_every_data_files_schema_and_names_each_bad_one(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Bad source files are named all at once, one line each (field, file, column, expected);
    the good sources are not mentioned; exit 2. Only footers are read."""
    path = make_tabular_workspace(tmp_path / "ws", windows=2, rows_per_window=30)
    ws = path.parent
    far = pd.read_parquet(ws / "sources" / "far.parquet")
    far.drop(columns=["label"]).to_parquet(ws / "sources" / "far.parquet", index=False)
    (ws / "sources" / "moved.parquet").write_bytes(b"not a parquet file")
    code, _, err = _cli(capsys, "validate", "-c", str(path))
    assert code == 2
    assert len(err) == 2, err
    assert err[0].startswith(f"tasksim: error: {path}: sources[1] (moved): {ws / 'sources' / 'moved.parquet'}: "
                             "cannot read as Parquet")
    assert err[1] == (f"tasksim: error: {path}: sources[2] (far): {ws / 'sources' / 'far.parquet'}: label column "
                      "'label' not found (columns are: f0, f1, f2, f3, f4, f5)")


def test_validate_checks_feature_types_against_the_encoder_and_the_production_columns(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = make_tabular_workspace(tmp_path / "ws", windows=2, rows_per_window=30)
    ws = path.parent
    far = pd.read_parquet(ws / "sources" / "far.parquet")
    far.assign(f0=["a"] * len(far)).to_parquet(ws / "sources" / "far.parquet", index=False)
    prod = pd.read_parquet(ws / "production.parquet")
    prod.drop(columns=["f5"]).to_parquet(ws / "production.parquet", index=False)
    code, _, err = _cli(capsys, "validate", "-c", str(path))
    assert code == 2
    assert err == [
        # the identity encoder embeds this source: strings are not numbers (the tabular encoder one-hots them)
        (f"tasksim: error: {path}: sources[2] (far): {ws / 'sources' / 'far.parquet'}: feature column 'f0' has "
         "type string; expected numbers or a list of numbers"),
        (f"tasksim: error: {path}: production.path: {ws / 'production.parquet'}: feature column 'f5' not found "
         "(columns are: f0, f1, f2, f3, f4, label, ts)"),
    ]


def test_validate_notes_production_data_that_does_not_exist_yet(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    path = make_tabular_workspace(tmp_path / "ws", windows=2, rows_per_window=30)
    (path.parent / "production.parquet").unlink()
    code, out, err = _cli(capsys, "validate", "-c", str(path))
    assert code == 0 and "ok (3 sources" in out
    assert err == [(f"tasksim: note: {path}: production.path: {path.parent / 'production.parquet'} does not "
                    "exist yet (cycles record no_data until it does)")]


def test_validate_reads_production_data_named_by_a_glob(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = make_tabular_workspace(tmp_path / "ws", windows=2, rows_per_window=30)
    prod = pd.read_parquet(path.parent / "production.parquet")
    prod.drop(columns=["f5"]).to_parquet(path.parent / "production.parquet", index=False)
    cfg = yaml.safe_load(path.read_text())
    cfg["production"]["path"] = "production*.parquet"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    code, _, err = _cli(capsys, "validate", "-c", str(path))
    assert code == 2 and len(err) == 1 and err[0].startswith(f"tasksim: error: {path}: production.path: ")
    assert err[0].endswith("feature column 'f5' not found (columns are: f0, f1, f2, f3, f4, label, ts)"), err
