"""Drift stage: monitored columns, Evidently drift per column, calibrated thresholds."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from tasksim.config import DriftConfig, InputColumns
from tasksim.drift import (
    ColumnDrift,
    DriftResult,
    _dataset_k,
    calibrate_thresholds,
    detect_drift,
    monitored_frames,
)
from tasksim.errors import ConfigError, DataError

COLS = [f"x{i}" for i in range(10)]


@pytest.fixture(scope="module")
def evidently_loaded():
    """Import Evidently once for the whole module (the import takes seconds)."""
    from tasksim.drift import _evidently

    return _evidently()


def gaussian(rng: np.random.Generator, n: int, shift: dict[str, float] | None = None) -> pd.DataFrame:
    df = pd.DataFrame(rng.normal(size=(n, len(COLS))), columns=COLS)
    for c, s in (shift or {}).items():
        df[c] += s
    return df


def mixed(rng: np.random.Generator, n: int) -> pd.DataFrame:
    """Ten columns of different shapes, two of them correlated, one discrete with 4 values."""
    z = rng.normal(size=(n, 10))
    z[:, 1] = 0.8 * z[:, 0] + 0.6 * z[:, 1]
    df = pd.DataFrame(z, columns=COLS)
    df["x2"] = np.exp(z[:, 2])
    df["x3"] = rng.exponential(size=n)
    df["x4"] = rng.integers(0, 4, size=n).astype(float)
    df["x5"] = rng.poisson(3, size=n).astype(float)
    df["x6"] = rng.standard_t(3, size=n)
    return df


@pytest.fixture(scope="module")
def big_reference():
    return gaussian(np.random.default_rng(1), 5000)


# ------------------------------------------------------------------ monitored columns / PCA


def _text_tables(rng, n_ref=400, n_cur=150, dim=64):
    """A table with a text column (features from a fake encoder: low-rank + noise) and scalars."""
    basis = rng.normal(size=(5, dim)) * np.array([5.0, 4.0, 3.0, 2.0, 1.0])[:, None]

    def feats(n):
        return torch.tensor(rng.normal(size=(n, 5)) @ basis + 0.1 * rng.normal(size=(n, dim)), dtype=torch.float32)

    def table(n):
        return pa.table({
            "text": [f"doc {i}" for i in range(n)],
            "age": rng.integers(18, 90, size=n),
            "score": rng.normal(size=n),
            "country": rng.choice(["fr", "de"], size=n),
            "label": rng.integers(0, 3, size=n),
        })

    return table(n_ref), table(n_cur), feats(n_ref), feats(n_cur)


def test_text_inputs_give_named_scalars_and_reference_fitted_components():
    rng = np.random.default_rng(0)
    ref_t, cur_t, ref_x, cur_x = _text_tables(rng)
    cols = InputColumns(feature_columns=("age", "score", "country", "label"), text_column="text",
                        label_column="label")
    cfg = DriftConfig(embedding_components=4)
    ref, cur = monitored_frames(ref_t, cur_t, ref_x, cur_x, cols, cfg)
    # strings and the label are not monitored; names are bounded
    assert list(ref.columns) == ["age", "score", "pc1", "pc2", "pc3", "pc4"]
    assert list(cur.columns) == list(ref.columns)
    assert len(ref) == 400 and len(cur) == 150
    np.testing.assert_array_equal(ref["age"].to_numpy(), ref_t.column("age").to_numpy())
    # components: centred on the reference, variance decreasing, uncorrelated
    pcs = ref[["pc1", "pc2", "pc3", "pc4"]].to_numpy()
    np.testing.assert_allclose(pcs.mean(axis=0), 0, atol=1e-9)
    var = pcs.var(axis=0)
    assert np.all(np.diff(var) < 0)
    cov = np.cov(pcs.T)
    np.testing.assert_allclose(cov - np.diag(np.diag(cov)), 0, atol=1e-8)
    # same subspace as numpy's SVD of the centred reference, up to sign
    x = ref_x.double().numpy()
    _, _, vt = np.linalg.svd(x - x.mean(axis=0), full_matrices=False)
    expected = (cur_x.double().numpy() - x.mean(axis=0)) @ vt[:4].T
    np.testing.assert_allclose(np.abs(cur[["pc1", "pc2", "pc3", "pc4"]].to_numpy()), np.abs(expected), atol=1e-8)
    # fitted on the reference only: another current window does not move the reference frame
    ref2, _ = monitored_frames(ref_t, cur_t.slice(0, 20), ref_x, cur_x[:20], cols, cfg)
    pd.testing.assert_frame_equal(ref, ref2)
    # deterministic
    ref3, cur3 = monitored_frames(ref_t, cur_t, ref_x, cur_x, cols, cfg)
    pd.testing.assert_frame_equal(ref, ref3)
    pd.testing.assert_frame_equal(cur, cur3)


def test_vector_column_and_component_cap():
    rng = np.random.default_rng(1)
    emb_ref, emb_cur = rng.normal(size=(50, 3)), rng.normal(size=(30, 3))
    ref_t = pa.table({"emb": pa.array(list(emb_ref), type=pa.list_(pa.float64()))})
    cur_t = pa.table({"emb": pa.array(list(emb_cur), type=pa.list_(pa.float64()))})
    cols = InputColumns(feature_columns=("emb",))
    ref, _ = monitored_frames(ref_t, cur_t, torch.tensor(emb_ref), torch.tensor(emb_cur), cols,
                                DriftConfig(embedding_components=8))
    assert list(ref.columns) == ["pc1", "pc2", "pc3"]  # capped at the feature dimension


def test_numeric_only_tables_need_no_features_and_selection_rules():
    rng = np.random.default_rng(2)
    ref_t = pa.table({c: rng.normal(size=100) for c in COLS})
    cur_t = pa.table({c: rng.normal(size=40) for c in COLS})
    cols = InputColumns(feature_columns=tuple(COLS))
    empty = torch.empty(0)
    ref, _ = monitored_frames(ref_t, cur_t, empty, empty, cols, DriftConfig())
    assert list(ref.columns) == COLS
    ref, _ = monitored_frames(ref_t, cur_t, empty, empty, cols, DriftConfig(columns=("x3", "x1")))
    assert list(ref.columns) == ["x3", "x1"]
    ref, _ = monitored_frames(ref_t, cur_t, empty, empty, cols, DriftConfig(max_columns=len(COLS)))
    assert list(ref.columns) == COLS
    # a limit that would drop columns is a configuration error (exit code 2), never a silent cut
    with pytest.raises(ConfigError, match=r"drift.max_columns: 10 columns are monitored but max_columns is 4"):
        monitored_frames(ref_t, cur_t, empty, empty, cols, DriftConfig(max_columns=4))
    with pytest.raises(DataError, match="not monitorable"):
        monitored_frames(ref_t, cur_t, empty, empty, cols, DriftConfig(columns=("x1", "pc1")))
    with pytest.raises(DataError, match="current window is empty"):
        monitored_frames(ref_t, cur_t.slice(0, 0), empty, empty, cols, DriftConfig())
    with pytest.raises(DataError, match="no input column"):
        monitored_frames(ref_t, cur_t.drop_columns(["x2"]), empty, empty, cols, DriftConfig())


def test_feature_problems_are_data_errors():
    rng = np.random.default_rng(3)
    ref_t, cur_t, ref_x, cur_x = _text_tables(rng, n_ref=50, n_cur=20, dim=8)
    cols = InputColumns(feature_columns=("score",), text_column="text")
    bad = ref_x.clone()
    bad[3, 2] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        monitored_frames(ref_t, cur_t, bad, cur_x, cols, DriftConfig())
    with pytest.raises(DataError, match="feature rows"):
        monitored_frames(ref_t, cur_t, ref_x[:10], cur_x, cols, DriftConfig())
    with pytest.raises(DataError, match="dims"):
        monitored_frames(ref_t, cur_t, ref_x, cur_x[:, :4], cols, DriftConfig())


# ------------------------------------------------------------------ detection


def test_no_drift_vs_drift(evidently_loaded, big_reference):
    rng = np.random.default_rng(10)
    cfg = DriftConfig()
    same = detect_drift(big_reference, gaussian(rng, 2000), cfg)
    assert isinstance(same, DriftResult) and not same.detected
    assert same.share == 0.0 and same.method == "wasserstein"
    assert (same.reference_rows, same.current_rows) == (5000, 2000)
    assert [c.column for c in same.columns] == COLS
    moved = detect_drift(big_reference, gaussian(rng, 2000, {c: 1.0 for c in COLS}), cfg)
    assert moved.detected and moved.share == 1.0
    assert all(isinstance(c, ColumnDrift) and c.drifted and c.score > c.threshold for c in moved.columns)


def test_share_and_drift_share(evidently_loaded, big_reference):
    cur = gaussian(np.random.default_rng(11), 2000, {"x0": 2.0, "x4": 2.0, "x7": 2.0})
    res = detect_drift(big_reference, cur, DriftConfig(drift_share=0.3))
    assert res.drifted_columns == ("x0", "x4", "x7")
    assert res.share == pytest.approx(0.3) and res.detected
    assert not detect_drift(big_reference, cur, DriftConfig(drift_share=0.31)).detected
    assert not detect_drift(big_reference, cur, DriftConfig()).detected  # default 0.5


def test_method_choice_follows_evidently(evidently_loaded):
    rng = np.random.default_rng(12)
    small = gaussian(rng, 800)
    cur = gaussian(rng, 200)
    res = detect_drift(small, cur, DriftConfig())
    assert {c.method for c in res.columns} == {"ks"} and res.columns[0].threshold == 0.05  # <= 1000 rows
    large = gaussian(rng, 1500)
    large["x9"] = rng.integers(0, 3, size=1500).astype(float)
    cur["x9"] = rng.integers(0, 3, size=200).astype(float)
    res = detect_drift(large, cur, DriftConfig())
    assert res.columns[0].method == "wasserstein" and res.columns[9].method == "jensenshannon"
    assert res.method == "jensenshannon+wasserstein"
    res = detect_drift(large, cur, DriftConfig(method="psi", threshold=0.2))
    assert {(c.method, c.threshold) for c in res.columns} == {("psi", 0.2)}
    with pytest.raises(ValueError, match="drift.method"):
        detect_drift(large, cur, DriftConfig(method="no_such_test"))


def test_categorical_columns(evidently_loaded):
    rng = np.random.default_rng(13)
    ref = pd.DataFrame({"colour": rng.choice(["red", "blue", "green"], size=3000)})
    cur = pd.DataFrame({"colour": rng.choice(["red", "blue", "green"], size=500, p=[0.8, 0.1, 0.1])})
    res = detect_drift(ref, cur, DriftConfig())
    assert res.columns[0].method == "jensenshannon" and res.detected


def test_thresholds_and_their_direction(evidently_loaded, big_reference):
    cur = gaussian(np.random.default_rng(14), 500)
    cfg = DriftConfig(method="ks", drift_share=0.1)
    everything = detect_drift(big_reference, cur, cfg, {c: 1.0 for c in COLS})  # p <= 1 always
    assert everything.share == 1.0
    custom = {c: 1e-12 for c in COLS} | {"x3": 1.0}
    res = detect_drift(big_reference, cur, cfg, custom)
    assert res.drifted_columns == ("x3",)
    assert [c.threshold for c in res.columns] == [custom[c] for c in COLS]
    res = detect_drift(big_reference, cur, DriftConfig(method="wasserstein"), {c: 100.0 for c in COLS})
    assert res.share == 0.0
    with pytest.raises(DataError, match="recalibrate"):
        detect_drift(big_reference, cur, cfg, {"x0": 0.1})


def test_empty_and_nan_inputs(evidently_loaded, big_reference):
    cfg = DriftConfig()
    with pytest.raises(DataError, match="current window is empty"):
        detect_drift(big_reference, big_reference.iloc[:0], cfg)
    with pytest.raises(DataError, match="reference window is empty"):
        detect_drift(big_reference.iloc[:0], big_reference, cfg)
    with pytest.raises(DataError, match="lacks"):
        detect_drift(big_reference, big_reference.drop(columns=["x5"]), cfg)
    cur = gaussian(np.random.default_rng(15), 300)
    all_nan = cur.copy()
    all_nan["x2"] = np.nan
    with pytest.raises(DataError, match="'x2' has no finite values in the current"):
        detect_drift(big_reference, all_nan, cfg)
    inf_ref = big_reference.copy()
    inf_ref["x1"] = np.inf
    with pytest.raises(DataError, match="'x1' has no finite values in the reference"):
        detect_drift(inf_ref, cur, cfg)
    # partial NaN/inf: dropped per column, as Evidently does
    holes = cur.copy()
    holes.loc[:49, "x0"] = np.nan
    holes.loc[50:59, "x0"] = np.inf
    with_holes = detect_drift(big_reference, holes, cfg)
    trimmed = detect_drift(big_reference, cur.iloc[60:].reset_index(drop=True), cfg)
    assert with_holes.columns[0].score == pytest.approx(trimmed.columns[0].score)


def test_result_serialises(evidently_loaded, big_reference):
    res = detect_drift(big_reference, gaussian(np.random.default_rng(16), 300), DriftConfig())
    d = json.loads(json.dumps(res.to_dict()))
    assert set(d) == {"detected", "share", "columns", "method", "reference_rows", "current_rows"}
    assert d["columns"][0] == {"column": "x0", "score": res.columns[0].score, "threshold": 0.1,
                               "drifted": res.columns[0].drifted, "method": "wasserstein"}


# ------------------------------------------------------------------ the Evidently Report engine


class _ReversedSnapshot:
    def __init__(self, snapshot):
        self._snapshot = snapshot

    def dict(self):
        d = self._snapshot.dict()
        return {**d, "metrics": d["metrics"][::-1], "tests": d["tests"][::-1]}


def test_report_engine_matches_and_reads_by_metric_id(evidently_loaded, monkeypatch):
    import evidently

    rng = np.random.default_rng(17)
    ref = mixed(rng, 3000)
    cur = mixed(rng, 400)
    cur["x3"] *= 1.5
    cur["x5"] += 1
    fast = detect_drift(ref, cur, DriftConfig())
    slow = detect_drift(ref, cur, DriftConfig(), engine="report")
    assert slow == fast
    assert fast.drifted_columns  # something drifted, so the FAIL statuses are exercised

    # columns in another order, and a report whose metric and test lists come back reversed
    order = COLS[::-1][:3] + COLS[:7]
    original = evidently.Report

    class ReversedReport(original):
        def run(self, *args, **kwargs):
            return _ReversedSnapshot(super().run(*args, **kwargs))

    monkeypatch.setattr(evidently, "Report", ReversedReport)
    shuffled = detect_drift(ref[order], cur[order[::-1]], DriftConfig(method="ks"), engine="report")
    direct = detect_drift(ref, cur, DriftConfig(method="ks"))
    by_col = {c.column: c for c in direct.columns}
    assert [c.column for c in shuffled.columns] == order
    assert all(c == by_col[c.column] for c in shuffled.columns)

    thresholds = {c: 0.01 * (i + 1) for i, c in enumerate(COLS)}
    assert (detect_drift(ref, cur, DriftConfig(), thresholds, engine="report")
            == detect_drift(ref, cur, DriftConfig(), thresholds))


def test_evidently_is_imported_lazily():
    code = "import sys, tasksim.drift; print(any(m.startswith('evidently') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------ calibration


def test_dataset_k_matches_share_rule():
    assert _dataset_k(10, 0.5) == 5
    assert _dataset_k(10, 0.3) == 3
    assert _dataset_k(10, 0.01) == 1
    assert _dataset_k(3, 1.0) == 3
    assert _dataset_k(3, 0.34) == 2


@pytest.fixture(scope="module")
def calibrated(evidently_loaded):
    rng = np.random.default_rng(20)
    ref = mixed(rng, 5000)
    cfg = DriftConfig(drift_share=0.1)  # any column
    return ref, cfg, calibrate_thresholds(ref, 200, cfg, rounds=200, seed=0)


def test_calibration_false_alarm_rate_close_to_target(calibrated):
    ref, cfg, thresholds = calibrated
    rng = np.random.default_rng(21)
    windows = [mixed(rng, 200) for _ in range(200)]  # fresh draws, same distribution
    calibrated_rate = np.mean([detect_drift(ref, w, cfg, thresholds).detected for w in windows])
    default_rate = np.mean([detect_drift(ref, w, cfg).detected for w in windows[:30]])
    print(f"false alarms over identical-distribution windows: calibrated {calibrated_rate:.3f} "
          f"(target 0.05, 200 windows), Evidently defaults {default_rate:.2f} (30 windows)")
    assert 0.01 <= calibrated_rate <= 0.10
    assert default_rate >= 0.9


def test_calibration_detects_a_real_shift(calibrated):
    ref, cfg, thresholds = calibrated
    rng = np.random.default_rng(22)
    hits = []
    for _ in range(20):
        w = mixed(rng, 200)
        for c in ("x0", "x6", "x8"):  # 0.5 sigma on 3 of 10 columns
            w[c] += 0.5 * ref[c].std()
        res = detect_drift(ref, w, cfg, thresholds)
        hits.append(set(res.drifted_columns))
    shifted = {"x0", "x6", "x8"}
    assert sum(h >= shifted for h in hits) >= 18  # all three found in at least 18 of 20 windows
    assert sum(len(h - shifted) for h in hits) <= 2  # hardly any unshifted column flagged


def test_calibration_is_deterministic_and_method_aware(calibrated):
    ref, cfg, thresholds = calibrated
    small = ref.iloc[:2000]
    a = calibrate_thresholds(small, 100, cfg, rounds=40, seed=5, false_alarm_rate=0.1)
    b = calibrate_thresholds(small, 100, cfg, rounds=40, seed=5, false_alarm_rate=0.1)
    c = calibrate_thresholds(small, 100, cfg, rounds=40, seed=6, false_alarm_rate=0.1)
    assert a == b and a != c
    assert list(thresholds) == COLS
    # distances: calibrated thresholds above Evidently's 0.1 at 200 rows; p-values: below 0.05/10-ish
    assert all(thresholds[col] > 0.1 for col in COLS if col != "x4")
    ks = calibrate_thresholds(small, 100, DriftConfig(method="ks"), rounds=40, seed=5, false_alarm_rate=0.1)
    assert all(0 < v < 0.05 for v in ks.values())
    with pytest.raises(ValueError, match="rounds"):
        calibrate_thresholds(small, 100, cfg, rounds=25, false_alarm_rate=0.05)  # 19 held-out rounds < 20
    with pytest.raises(DataError):
        calibrate_thresholds(small.iloc[:100], 100, cfg)


def test_dataset_control_targets_the_dataset_verdict(calibrated):
    ref, _, _ = calibrated
    cfg = DriftConfig(drift_share=0.3)
    small = ref.iloc[:2000]
    per_dataset = calibrate_thresholds(small, 200, cfg, rounds=60, seed=1, false_alarm_rate=0.1, control="dataset")
    any_column = calibrate_thresholds(small, 200, cfg, rounds=60, seed=1, false_alarm_rate=0.1)
    # needing 3 columns at once allows each column a lower cut-off
    assert all(per_dataset[c] < any_column[c] for c in COLS if c != "x4")
