"""Bad drift inputs through a whole cycle and ``tasksim run``: each gets a verdict that says what
could not be tested (or one clear line), never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

from tasksim.config import load_config
from tasksim.cycle import run_cycle

from .conftest import make_tabular_workspace


def test_bad_drift_inputs_through_tasksim_run(tmp_path: Path) -> None:
    """The reference (hour 0) has 120 rows (less than two windows) and a constant column f5;
    hour 1 (through ``tasksim run``) has the rows of a single class; hour 2 has no labels at all."""
    path = make_tabular_workspace(tmp_path / "ws", windows=3, rows_per_window=300, shift_at=99)
    cfg = yaml.safe_load(path.read_text())
    cfg["ranking"]["bootstrap_rounds"] = 0
    cfg["sources"] = cfg["sources"][:1]  # the drift stage is under test: one source keeps the cycles short
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    production = path.parent / "production.parquet"
    frame = pd.read_parquet(production)
    hour = (frame["ts"] - frame["ts"].min().floor("h")) // pd.Timedelta(hours=1)
    keep = ((hour > 0) | (frame.groupby(hour).cumcount() < 120)) & ((hour != 1) | (frame["label"] == "class0"))
    frame, hour = frame[keep].copy(), hour[keep]
    single = int((hour == 1).sum())
    frame.loc[hour == 0, "f5"] = 1.0
    frame["label"] = frame["label"].where(hour != 2, None)
    frame.to_parquet(production, index=False)

    first = run_cycle(load_config(path))  # hour 0: the reference window itself
    assert first.status == "success" and first.drift is not None and first.drift.kind == "none"
    proc = subprocess.run(
        [sys.executable, "-m", "tasksim.cli", "run", "--config", str(path), "--format", "json"],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    drift = json.loads(proc.stdout)["drift"]
    assert drift["reference_rows"] == 120 and drift["current_rows"] == single > 60
    assert "column 'f5' not testable: constant (1) in the reference" in drift["notes"]
    assert any(
        n.startswith(f"the reference (120 rows) is smaller than two windows ({single} rows)") for n in drift["notes"]
    )
    assert drift["calibrated"] and drift["calibration_rows"] == 60
    assert "f5" not in [c["column"] for c in drift["columns"]]
    tests = {t["name"]: t for t in drift["tests"]}
    # one class only: the label marginal moved (and the inputs with it: class0's rows)
    assert tests["label_prior"]["fired"] and drift["kind"] in ("label_prior", "input")
    assert tests["concept"]["p_value"] is not None  # a single class still gets the class-stratified tests

    unlabelled = run_cycle(load_config(path))  # hour 2: every label null
    assert unlabelled.status == "success" and unlabelled.drift is not None
    assert unlabelled.drift.labelled_rows == 0
    assert unlabelled.drift.test("concept").not_testable == "not testable: no labelled rows in the window"
    assert unlabelled.drift.test("bbse") is not None and unlabelled.drift.test("bbse").p_value is not None
