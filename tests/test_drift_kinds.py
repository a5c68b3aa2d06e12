"""The window verdict: every kind of shift, its name and evidence, calibration, and bad inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from scipy.stats import ks_2samp

from tasksim.config import DriftConfig, InputColumns
from tasksim.drift import (
    Calibration,
    DriftConfigError,
    DriftMonitor,
    DriftReference,
    DriftVerdict,
    as_verdict,
    calibrate,
    calibration_rows,
    check_window,
    ks_pvalues,
)
from tasksim.drift.monitor import _REFERENCES
from tasksim.errors import ConfigError, DataError, TasksimError
from tasksim.recommend import plan_fine_tuning

DIM = 10
COLS = [f"x{i}" for i in range(DIM)]
CFG = DriftConfig()  # the defaults: 1% false alarms per window, 500 calibration rounds


def draw(rng: np.random.Generator, n: int, weights=(1, 1, 1), shift: np.ndarray | float = 0.0,
         swap: bool = False) -> tuple[pd.DataFrame, list[str]]:
    """Three Gaussian classes in 10 dimensions (class k: +2 on axis k); optional input shift,
    class marginal and a swap of the labels of classes 0 and 1 (a concept shift)."""
    w = np.asarray(weights, dtype=float)
    y = rng.choice(3, size=n, p=w / w.sum())
    x = rng.normal(size=(n, DIM))
    x[np.arange(n), y] += 2.0
    x = x + shift
    if swap:
        y = np.where(y == 0, 1, np.where(y == 1, 0, y))
    return pd.DataFrame(x, columns=COLS), [f"c{v}" for v in y]


class MemState(dict):
    def get_state(self, key: str) -> str | None:
        return self.get(key)

    def set_state(self, key: str, value: str) -> None:
        self[key] = value


@pytest.fixture(scope="module")
def fitted() -> tuple[DriftReference, Calibration]:
    x, y = draw(np.random.default_rng(0), 600)
    ref = DriftReference.fit(x, None, y, CFG, seed=0)
    return ref, calibrate(ref, 100, CFG, seed=0)


def run(fitted, x, y, state=None):
    ref, cal = fitted
    return check_window(ref, cal, x, None, y, CFG, cusum_state=state, seed=1)


def test_no_drift_stream_rarely_alarms_and_names_no_kind(fitted):
    rng = np.random.default_rng(1)
    state, alarms = None, []
    for _ in range(40):
        verdict, state = run(fitted, *draw(rng, 100), state)
        alarms.append(verdict.drifted)
        assert verdict.kind == ("none" if not verdict.drifted else verdict.kind)
        assert verdict.calibrated and verdict.false_alarm_rate == 0.01
    assert sum(alarms) <= 2  # 40 windows at 1%: expected 0.4
    # per-column flags are family-wise calibrated: a quiet window flags (almost) no column
    assert verdict.share <= 0.1


def test_concentrated_shift_is_input_and_names_the_column(fitted):
    shift = np.zeros(DIM)
    shift[3] = 1.5
    verdict, _ = run(fitted, *draw(np.random.default_rng(2), 100, shift=shift))
    assert verdict.drifted and verdict.kind == "input"
    assert verdict.test("columns").fired and verdict.test("columns").evidence == ("x3",)
    assert verdict.drifted_columns == ("x3",)
    assert "DRIFT (input)" in verdict.summary() and "x3" in verdict.summary()


def test_diffuse_shift_is_found_by_the_multivariate_test(fitted):
    verdict, _ = run(fitted, *draw(np.random.default_rng(3), 100, shift=0.25))
    assert verdict.test("mmd").fired and verdict.kind == "input"
    assert verdict.test("mmd").statistic > verdict.test("mmd").threshold


def test_gradual_shift_accumulates_in_the_cusum(fitted):
    rng = np.random.default_rng(4)
    shift = np.zeros(DIM)
    shift[5] = 0.5  # too small for one window
    state, first = None, None
    for t in range(10):
        verdict, state = run(fitted, *draw(rng, 100, shift=shift), state)
        if verdict.drifted:
            first = (t, verdict)
            break
    assert first is not None, "a sustained 0.5-sd shift of one column was never found in 10 windows"
    t, verdict = first
    assert verdict.kind == "input"
    cusum = verdict.test("cusum")
    assert cusum.fired and "x5" in cusum.evidence and cusum.statistic > cusum.threshold


@pytest.mark.parametrize("labelled", [True, False])
def test_label_prior_shift_with_labels_or_predicted_labels(fitted, labelled):
    x, y = draw(np.random.default_rng(5), 100, weights=(8, 1, 1))
    verdict, _ = run(fitted, x, y if labelled else None)
    assert verdict.drifted and verdict.kind == "label_prior"
    name = "label_prior" if labelled else "bbse"
    assert verdict.test(name).fired and verdict.test(name).p_value <= verdict.test(name).threshold
    assert any("explains the input shift" in n for n in verdict.notes) or not verdict.test("mmd").fired


def test_concept_shift_is_found_once_labels_arrive(fitted):
    x, y = draw(np.random.default_rng(6), 100, swap=True)
    unlabelled, _ = run(fitted, x, [None] * len(y))  # labels not there yet
    assert not unlabelled.drifted and unlabelled.kind == "none"
    assert unlabelled.test("concept").not_testable == "not testable: no labelled rows in the window"
    assert unlabelled.test("bbse") is not None  # the prior is still checked from predicted labels
    late, _ = run(fitted, x, y)  # the same window once its labels are filled in
    assert late.drifted and late.kind == "concept" and late.test("concept").fired
    assert late.labelled_rows == 100
    few, _ = run(fitted, x, y[:5] + [None] * 95)
    assert few.test("concept").not_testable.startswith("not testable: 5 labelled rows")


def test_single_class_window_gets_a_verdict(fitted):
    rng = np.random.default_rng(7)
    x, y = draw(rng, 100, weights=(1, 0, 0))
    verdict, _ = run(fitted, x, y)
    assert verdict.kind == "label_prior" and verdict.test("label_prior").fired


def test_unseen_class_is_a_label_prior_shift(fitted):
    x, y = draw(np.random.default_rng(8), 100)
    verdict, _ = run(fitted, x, ["new"] * 20 + y[20:])
    assert verdict.test("label_prior").fired and "class 'new' unseen" in verdict.test("label_prior").evidence[0]


def test_reference_without_usable_labels_says_why():
    rng = np.random.default_rng(9)
    x, _ = draw(rng, 200)
    for labels, why in ((None, "the reference has no labels"),
                        (["c0"] * 200, "the reference has a single class ('c0')")):
        ref = DriftReference.fit(x, None, labels, CFG)
        cur, cy = draw(rng, 100)
        verdict, _ = check_window(ref, calibrate(ref, 100, CFG), cur, None, cy, CFG)
        assert verdict.test("label_prior").not_testable == f"not testable: {why}"
        assert verdict.test("concept").not_testable == f"not testable: {why}"


def test_reference_smaller_than_two_windows():
    rng = np.random.default_rng(10)
    x, y = draw(rng, 150)
    ref = DriftReference.fit(x, None, y, CFG)
    cal = calibrate(ref, 100, CFG)
    assert cal.window_rows == 64
    cur, cy = draw(rng, 100)
    verdict, _ = check_window(ref, cal, cur, None, cy, CFG)
    assert verdict.calibrated and verdict.calibration_rows == 64
    assert "the reference (150 rows) is smaller than two windows (100 rows): calibrated at 64-row " \
           "pseudo-windows" in verdict.notes
    tiny = DriftReference.fit(x.iloc[:30], None, y[:30], CFG)
    monitor_cal = DriftMonitor(CFG, InputColumns(feature_columns=tuple(COLS)), cache_dir=Path("."), state=MemState()).calibration(tiny, 100, "k")
    assert monitor_cal is None
    verdict, _ = check_window(tiny, None, cur, None, cy, CFG)
    assert not verdict.calibrated and verdict.test("columns").not_testable.startswith(
        "not testable: the reference (30 rows) is too small to calibrate")
    with pytest.raises(DataError, match="at least 40 are needed"):
        calibrate(tiny, 100, CFG)


def test_constant_reference_column_is_not_testable():
    rng = np.random.default_rng(11)
    x, y = draw(rng, 300)
    x["k"] = 1.0
    ref = DriftReference.fit(x, None, y, CFG)
    assert "k" not in ref.columns and ref.constant_columns == ("k",)
    cur, cy = draw(rng, 100)
    cur["k"] = 2.0
    verdict, _ = check_window(ref, calibrate(ref, 100, CFG), cur, None, cy, CFG)
    assert "column 'k' not testable: constant (1) in the reference" in verdict.notes
    with pytest.raises(DataError, match="no testable columns"):
        DriftReference.fit(pd.DataFrame({"k": np.ones(50)}), None, None, CFG)


def test_calibration_is_kept_for_windows_above_2048_rows(tmp_path: Path):
    # was: skipped when twice the window's power-of-two bucket exceeded the reference (any window
    # above 2,048 rows with the default 5,000-row caps)
    assert calibration_rows(3000, 5000) == 2048
    assert calibration_rows(4999, 5000) == 2500  # bucket 4096, shrunk to half the reference
    assert calibration_rows(100, 1000) == 64
    assert calibration_rows(300, 300) == 150
    rng = np.random.default_rng(12)
    ref_t = pa.table({c: rng.normal(size=5000) for c in ("a", "b")})
    cur_t = pa.table({c: rng.normal(size=3000) for c in ("a", "b")})
    cfg = DriftConfig(calibration_rounds=120, false_alarm_rate=0.1)
    monitor = DriftMonitor(cfg, InputColumns(feature_columns=("a", "b")), cache_dir=tmp_path, state=MemState())
    verdict = monitor.check(ref_t, None, cur_t, None, reference_key="ref")
    assert verdict.calibrated and verdict.calibration_rows == 2048


def test_monitor_caches_reference_and_calibration(tmp_path: Path):
    from tasksim import drift

    rng = np.random.default_rng(13)
    x, y = draw(rng, 400)
    ref_t = pa.Table.from_pandas(x.assign(label=y), preserve_index=False)
    cur, cy = draw(rng, 100, shift=np.r_[1.5, np.zeros(DIM - 1)])
    cur_t = pa.Table.from_pandas(cur.assign(label=cy), preserve_index=False)
    columns = InputColumns(feature_columns=tuple(COLS), label_column="label")
    state = MemState()
    monitor = DriftMonitor(CFG, columns, cache_dir=tmp_path, state=state)
    first = monitor.check(ref_t, None, cur_t, None, reference_key="ref-1")
    assert first.kind == "input" and "x0" in first.drifted_columns
    files = list(tmp_path.glob("reference-*.npz"))
    assert len(files) == 1 and not list(tmp_path.glob("*.tmp"))
    assert sum(k.startswith("drift_calibration:") for k in state) == 1
    assert len(monitor.state_updates) == 1  # the accumulated (EWMA) state, for the caller to commit
    drift._REFERENCES.clear()  # a new process: the reference model comes from the npz (no pickle)
    again = DriftMonitor(CFG, columns, cache_dir=tmp_path, state=state).check(ref_t, None, cur_t, None,
                                                                              reference_key="ref-1")
    assert again.to_dict() == first.to_dict()


def test_max_columns_that_would_drop_columns_is_a_config_error(tmp_path: Path):
    rng = np.random.default_rng(14)
    ref_t = pa.table({c: rng.normal(size=200) for c in COLS})
    monitor = DriftMonitor(DriftConfig(max_columns=4), InputColumns(feature_columns=tuple(COLS)),
                           cache_dir=tmp_path, state=MemState())
    with pytest.raises(ConfigError, match="drift.max_columns: 10 columns are monitored but max_columns is 4"):
        monitor.check(ref_t, None, ref_t.slice(0, 50), None, reference_key="r")
    assert issubclass(DriftConfigError, TasksimError)


def test_verdict_round_trip_and_old_records(fitted):
    verdict, _ = run(fitted, *draw(np.random.default_rng(15), 100, weights=(8, 1, 1)))
    data = verdict.to_dict()
    assert data["detected"] is True and data["kind"] == "label_prior"
    assert DriftVerdict.from_dict(data) == verdict
    old = {"detected": True, "share": 0.5, "method": "ks", "columns": [
        {"column": "pc1", "score": 0.01, "threshold": 0.05, "drifted": True, "method": "ks"}]}
    read = as_verdict(old)
    assert read.kind == "input" and read.drifted_columns == ("pc1",) and read.tests == ()
    assert as_verdict(None) is None and as_verdict(verdict) is verdict


def test_ks_pvalues_agree_with_scipy():
    rng = np.random.default_rng(16)
    ref = rng.normal(size=(800, 6))
    cur = rng.normal(size=(100, 6)) + np.linspace(0, 0.6, 6)
    cur[:7, 2] = np.nan
    d, p = ks_pvalues(ref, cur)
    for j in range(6):
        c = cur[:, j][np.isfinite(cur[:, j])]
        exact = ks_2samp(ref[:, j], c)
        assert d[j] == pytest.approx(exact.statistic)
        assert p[j] == pytest.approx(exact.pvalue, rel=0.15, abs=1e-6)


@pytest.mark.parametrize(("kind", "strategy", "trainable"), [
    ("input", "surgical_first", "first blocks"),
    ("label_prior", "head_refit", "head only"),
    ("concept", "surgical_last", "last blocks"),
    ("none", "surgical_last", "last blocks"),
])
def test_fine_tuning_advice_reads_the_kind(kind, strategy, trainable):
    plan = plan_fine_tuning({"mmd2": 0.1, "label_shift": 0.0, "knn_accuracy": 0.6}, drift_kind=kind,
                            labelled_rows=5000)
    assert plan.strategy == strategy and plan.trainable.startswith(trainable)
    if kind != "none":
        assert kind.replace("_", "-") in plan.reasons[0] or kind in plan.reasons[0]
    with pytest.raises(ConfigError, match="drift_kind"):
        plan_fine_tuning({}, drift_kind="covariate", labelled_rows=0)


def test_calibration_off_leaves_input_tests_not_testable(tmp_path: Path):
    rng = np.random.default_rng(17)
    x, y = draw(rng, 300)
    ref_t = pa.Table.from_pandas(x.assign(label=y), preserve_index=False)
    monitor = DriftMonitor(DriftConfig(calibrate=False), InputColumns(feature_columns=tuple(COLS), label_column="label"),
                           cache_dir=tmp_path, state=MemState())
    cur, cy = draw(rng, 100, swap=True)
    verdict = monitor.check(ref_t, None, pa.Table.from_pandas(cur.assign(label=cy), preserve_index=False), None,
                            reference_key="r")
    assert not verdict.calibrated
    assert verdict.test("columns").not_testable == ("not testable: drift.calibrate is off (the input tests need "
                                                    "calibrated thresholds)")
    assert verdict.kind == "concept"  # the label tests need no calibration


def test_concept_shift_that_also_moves_the_label_marginal_is_concept():
    # labels of an imbalanced pair swapped: the class marginal moves, the inputs do not; under a pure
    # label-prior shift the class-stratified concept tests hold, so this is a concept shift
    rng = np.random.default_rng(18)
    x, y = draw(rng, 600, weights=(6, 1, 3))
    ref = DriftReference.fit(x, None, y, CFG, seed=0)
    cal = calibrate(ref, 100, CFG, seed=0)
    cur, cy = draw(rng, 100, weights=(6, 1, 3), swap=True)
    verdict, _ = check_window(ref, cal, cur, None, cy, CFG, seed=1)
    assert verdict.test("label_prior").fired and verdict.test("concept").fired
    assert verdict.kind == "concept"
    assert "p(predicted | label)" in verdict.test("concept").detail


def test_label_tests_hold_their_share_without_drift(fitted):
    # window rows are predicted by the reference's cross-fitting models, so their predictions and
    # losses are exchangeable with the reference's; the G tests have permutation nulls
    ref, cal = fitted
    rng = np.random.default_rng(19)
    p = {"label_prior": [], "concept": []}
    for _ in range(150):
        x, y = draw(rng, 60)
        verdict, _ = check_window(ref, cal, x, None, y, CFG, seed=int(rng.integers(1 << 30)))
        for name, values in p.items():
            values.append(verdict.test(name).p_value)
    for name, values in p.items():
        values = np.array(values)
        assert np.mean(values <= 0.05) <= 0.1, name  # 5% nominal; 150 windows
        assert np.mean(values <= 0.2) <= 0.3, name


def test_accumulated_evidence_counts_the_reference_error():
    from tasksim.drift.sequential import ewma_scale, ewma_step, prior_statistic

    state = None
    for _ in range(50):
        state = ewma_step(state, np.zeros(3), 100)
    # steady state: the windows' share lam / (2 - lam) / m plus the one shared reference, W^2 / n
    assert ewma_scale(state, 1000) == pytest.approx(0.3 / 1.7 / 100 + 1 / 1000, rel=1e-3)
    # the accumulated class-frequency test is valid over references and windows (simulated null)
    rng = np.random.default_rng(20)
    k, n, m = 8, 400, 50
    pvals = []
    for _ in range(40):
        ref_counts = rng.multinomial(n, np.ones(k) / k)
        state = None
        for _ in range(10):
            state = ewma_step(state, rng.multinomial(m, np.ones(k) / k) / m - ref_counts / n, m)
            pvals.append(prior_statistic(state, ref_counts, m, rng)[1])
    assert np.mean(np.array(pvals) <= 0.05) <= 0.08


def test_gradual_shift_state_survives_a_json_round_trip(fitted):
    import json

    rng = np.random.default_rng(21)
    shift = np.zeros(DIM)
    shift[5] = 0.5
    state = None
    for _ in range(3):
        _, state = run(fitted, *draw(rng, 100, shift=shift), state)
    restored = json.loads(json.dumps(state))
    x, y = draw(rng, 100, shift=shift)
    a, _ = run(fitted, x, y, state)
    b, _ = run(fitted, x, y, restored)
    assert a.to_dict() == b.to_dict()
    assert a.test("cusum").statistic > 0


def test_windows_from_a_small_reused_pool_need_the_benign_offset_term():
    """Windows drawn again and again from one finite pool of N rows share the pool's sampling error
    (its mean minus the population's), as they share the reference's: the accumulated difference's
    variance gains W^2 / N, which ``benign`` = 1 / N (``DriftConfig.benign_offset_sd`` squared)
    covers and the plain null (windows and reference only) misses by about 30% here."""
    from tasksim.drift.sequential import ewma_scale, ewma_step, prior_statistic

    rng = np.random.default_rng(30)
    streams, n, pool_rows, m, steps = 3000, 400, 400, 40, 20
    ref_mean = rng.standard_normal(streams) / np.sqrt(n)
    pool = rng.standard_normal((streams, pool_rows))
    state = None
    for _ in range(steps):
        pick = np.argpartition(rng.random((streams, pool_rows)), m, axis=1)[:, :m]
        state = ewma_step(state, np.take_along_axis(pool, pick, axis=1).mean(axis=1) - ref_mean, m)
    observed = float(np.var(state["e"]))
    plain, with_pool = ewma_scale(state, n), ewma_scale(state, n, 1 / pool_rows)
    assert observed > 1.15 * plain  # the i.i.d. null undercounts a reused pool's variance
    assert observed <= 1.03 * with_pool  # the benign term covers it (conservative by the pool's fpc)
    assert with_pool - plain == pytest.approx(state["w"] ** 2 / pool_rows)

    # the accumulated class-frequency test with the same term: valid on windows from a small pool
    k, n, pool_rows, m = 6, 400, 400, 50
    pvals = {0.0: [], 1 / pool_rows: []}
    for _ in range(30):
        ref_counts = rng.multinomial(n, np.ones(k) / k)
        labels = rng.choice(k, size=pool_rows)
        states = {b: None for b in pvals}
        for _ in range(10):
            counts = np.bincount(rng.choice(labels, size=m, replace=False), minlength=k)
            for b, values in pvals.items():
                states[b] = ewma_step(states[b], counts / m - ref_counts / n, m)
                values.append(prior_statistic(states[b], ref_counts, m, rng, b)[1])
    assert np.mean(np.array(pvals[1 / pool_rows]) <= 0.05) <= 0.07
    assert np.mean(np.array(pvals[1 / pool_rows]) <= 0.05) < np.mean(np.array(pvals[0.0]) <= 0.05)


def test_benign_offset_sd_widens_every_accumulated_null_and_nothing_else(fitted):
    """``benign_offset_sd`` enters only the accumulated tests: the input EWMA's statistic shrinks by
    exactly sqrt(c_0 / c_delta); per-window tests are unchanged; a sustained 0.5-sd shift of one
    column is still found within 3 windows with the default tolerance; bad values are config errors."""
    from pydantic import ValidationError

    from tasksim.drift.sequential import concept_statistic

    ref, cal = fitted
    strict = DriftConfig(benign_offset_sd=0.0)
    assert CFG.benign_offset_sd > 0
    rng = np.random.default_rng(31)
    state0 = state1 = None
    for _ in range(6):
        x, y = draw(rng, 100)
        v0, state0 = check_window(ref, cal, x, None, y, strict, cusum_state=state0, seed=1)
        v1, state1 = check_window(ref, cal, x, None, y, CFG, cusum_state=state1, seed=1)
    w2, s2 = state1["cols"]["w"] ** 2, state1["cols"]["s2"]
    c0, c1 = s2 + w2 / ref.rows, s2 + w2 / ref.rows + w2 * CFG.benign_offset_sd ** 2
    assert v1.test("cusum").statistic == pytest.approx(v0.test("cusum").statistic * np.sqrt(c0 / c1), rel=1e-9)
    assert v1.test("columns").statistic == v0.test("columns").statistic
    assert v1.test("mmd").statistic == v0.test("mmd").statistic
    assert v1.test("label_prior").p_value == v0.test("label_prior").p_value
    assert v1.test("concept").statistic == v0.test("concept").statistic  # its p-value: Monte Carlo
    # the accumulated loss excess: the same evidence over a wider null
    assert state1["concept"]["e"] == state0["concept"]["e"] and state0["concept"]["b"] == 0
    assert state1["concept"]["b"] > 0
    z0, z1 = concept_statistic(state0["concept"])[0], concept_statistic(state1["concept"])[0]
    assert abs(z1) < abs(z0)

    shift = np.zeros(DIM)
    shift[7] = 0.5
    state, found = None, None
    for t in range(3):
        verdict, state = run(fitted, *draw(rng, 100, shift=shift), state)
        if verdict.drifted:
            found = t
            break
    assert found is not None and verdict.kind == "input"
    for bad in (-0.01, 2.0):
        with pytest.raises(ValidationError, match="benign_offset_sd"):
            DriftConfig(benign_offset_sd=bad)


def _loss_reference(rng: np.random.Generator, classes: int = 6, per_class: int = 80):
    """A stand-in reference for the concept loss test: each class's cross-fitted 1 - p(label),
    heavy-tailed (mostly confident, now and then a confident mistake)."""
    from types import SimpleNamespace

    codes = np.repeat(np.arange(classes), per_class)
    p_label = np.where(rng.random(len(codes)) < 0.05, rng.uniform(1e-4, 0.05, len(codes)),
                       rng.beta(8, 2, len(codes)))
    return SimpleNamespace(classes=tuple(f"c{i}" for i in range(classes)), ref_label_codes=codes,
                           cv_loss=1.0 - p_label)


def test_concept_loss_test_is_valid_and_finds_a_shift_in_one_class():
    from tasksim.drift.checks import _loss_test

    rng = np.random.default_rng(30)
    ref = _loss_reference(rng)
    # no concept shift: window rows from the same laws as the reference's (within-class permutations
    # are exact, the reference's own tail included)
    pvals = []
    for _ in range(120):
        ref_new = _loss_reference(rng)  # a fresh reference each time: validity over references
        codes = rng.integers(0, 6, 60)
        loss = np.concatenate([_loss_reference(rng, 1, 1).cv_loss for _ in codes])
        pvals.append(_loss_test(ref_new, codes, loss, rng)[0])
    assert np.mean(np.array(pvals) <= 0.05) <= 0.1
    assert np.mean(np.array(pvals) <= 0.2) <= 0.3
    # a concept shift confined to class 2: 4 of its 10 rows carry a label the model finds implausible
    codes = np.repeat(np.arange(6), 10)
    loss = 1.0 - rng.beta(8, 2, 60)
    loss[20:24] = 1.0 - 1e-4
    joint, overall, class_p = _loss_test(ref, codes, loss, rng)
    assert int(np.argmin(class_p)) == 2 and joint <= 0.002 and joint < overall


def test_corruption_llr_is_the_label_noise_likelihood_ratio():
    from tasksim.drift.checks import corruption_llr

    p = np.array([1.0, 0.9, 0.5, 0.1, 1e-3, 1e-9])
    got = corruption_llr(p, classes=5, share=0.1)
    # by hand: q(y | x) = 0.9 p + 0.1 (1 - p) / 4 against p(y | x) = p (p clipped at 1e-6)
    q = 0.9 * np.clip(p, 1e-6, 1) + 0.1 * (1 - np.clip(p, 1e-6, 1)) / 4
    np.testing.assert_allclose(got, np.log(q / np.clip(p, 1e-6, 1)), rtol=1e-12)
    assert np.all(np.diff(got) > 0)  # the less plausible the label, the more evidence
    assert got[0] == pytest.approx(np.log(0.9))  # a certain label: only the share's cost
    # an implausible label: the log-loss (p clipped at 1e-6), less a constant, log((classes - 1) / share)
    assert got[5] == pytest.approx(-np.log(1e-6) + np.log(0.1 / 4), abs=1e-3)
    # a plausible label moves the statistic far less than it moves the log-loss
    assert abs(got[1] - got[2]) < 0.2 * abs(np.log(0.9) - np.log(0.5))


def test_sparse_embeddings_monitor_their_share_of_zeros():
    from tasksim.drift.reference import ZERO_SHARE

    rng = np.random.default_rng(31)
    basis = rng.normal(size=(5, 40))
    sparse = lambda n: np.maximum(rng.normal(size=(n, 5)) @ basis - 1.0, 0.0)  # ReLU features
    labels = [f"c{v}" for v in rng.integers(0, 2, 400)]
    ref = DriftReference.fit(None, sparse(400), labels, CFG, seed=0)
    assert ZERO_SHARE in ref.columns
    dense = DriftReference.fit(None, rng.normal(size=(400, 40)), labels, CFG, seed=0)
    assert ZERO_SHARE not in dense.columns
    cal = calibrate(ref, 100, CFG, seed=0)
    quiet, _ = check_window(ref, cal, None, sparse(100), None, CFG)
    assert ZERO_SHARE not in quiet.test("columns").evidence
    noisy = np.abs(sparse(100) + rng.normal(scale=0.01, size=(100, 40)))  # faint noise lifts the zeros
    verdict, _ = check_window(ref, cal, None, noisy, None, CFG)
    assert verdict.kind == "input" and ZERO_SHARE in verdict.test("columns").evidence


def test_loss_variance_covers_a_reference_class_that_missed_its_hard_rows():
    """Skewed losses (most rows near 0, 12% near 1), 50 reference rows of a class: the plug-in
    variance shrinks with an optimistic sample mean, so "reference mean too low" reaches z 3.09
    26x too often (2.6%); the bound of the accumulated loss test keeps it near the normal rate (0.15%)."""
    from tasksim.drift.sequential import loss_variance

    rng = np.random.default_rng(5)
    draws, n = 4000, 50
    law = lambda size: np.where(rng.random(size) < 0.12, rng.beta(5, 2, size), rng.beta(1, 30, size))
    mu = float(law(400_000).mean())
    losses = law((draws, n))
    mean = losses.mean(axis=1)
    z_plugin = (mu - mean) / np.sqrt(losses.var(axis=1) / n)
    z_bound = np.array([(mu - mean[i]) / np.sqrt(loss_variance(losses[i], float(mean[i])) / n)
                        for i in range(draws)])
    assert np.mean(z_plugin > 3.09) > 0.01  # the failure the bound fixes (nominal 0.001)
    assert np.mean(z_bound > 3.09) <= 0.002
    assert all(loss_variance(row, 0.5) >= row.var() for row in losses[:50])
    assert loss_variance(np.zeros(3), 0.2) > 0  # a tiny class of easy rows still has a spread


def test_a_small_reference_of_wide_embeddings_gives_no_false_alarms_on_its_components(tmp_path: Path):
    """300 reference rows of 384-d features whose trailing principal directions are noise: scored
    in sample, the reference's components have more variance there than any new window's, and 16
    of 30 quiet windows were flagged (pc5-pc8). Scored out of fold, reference and windows are
    exchangeable: at a 1% target, 20 quiet windows should see about 0.2 alarms (seeded)."""
    rng = np.random.default_rng(21)
    dim, classes = 384, 5
    means = rng.normal(scale=1.5, size=(classes, dim))

    def window(n: int) -> tuple[pa.Table, np.ndarray]:
        y = rng.integers(0, classes, size=n)
        return pa.table({"text": [f"row {i}" for i in range(n)]}), (means[y] + rng.normal(size=(n, dim))).astype(np.float32)

    ref_t, ref_x = window(300)
    monitor = DriftMonitor(DriftConfig(), InputColumns(text_column="text"), cache_dir=tmp_path, state=MemState())
    verdicts = [monitor.check(ref_t, ref_x, *window(100), reference_key="wide") for _ in range(20)]
    alarms = [v.summary() for v in verdicts if v.drifted]
    assert len(alarms) <= 1, alarms  # P(>= 2 of 20 | 1%) = 1.7%; in-sample scores gave about 10
    (ref,) = [r for path, r in _REFERENCES.items() if path.startswith(str(tmp_path))]
    assert ref.fold_pc_rotation is not None and ref.fold_pc_rotation.shape[1:] == (ref.pc_count, ref.pc_count)


def test_implausibility_is_the_label_noise_ratio_floored_and_rescaled():
    from tasksim.drift.checks import IMPLAUSIBLE_P, corruption_llr, implausibility

    p = np.array([1.0, 0.9, 0.5, 0.1, 0.01, IMPLAUSIBLE_P, 1e-6, 0.0])
    got = implausibility(p, classes=10, share=0.1)
    # by hand: the ratio at p floored at IMPLAUSIBLE_P, mapped affinely so that p = 1 -> 0 and p = floor -> 1
    llr = np.log(0.9 + 0.1 * (1 - np.maximum(p, IMPLAUSIBLE_P)) / (9 * np.maximum(p, IMPLAUSIBLE_P)))
    top = np.log(0.9 + 0.1 * (1 - IMPLAUSIBLE_P) / (9 * IMPLAUSIBLE_P))
    np.testing.assert_allclose(got, (llr - np.log(0.9)) / (top - np.log(0.9)), rtol=1e-12, atol=1e-15)
    assert got[0] == pytest.approx(0.0, abs=1e-12) and got[5] == pytest.approx(1.0) and np.all(got[5:] == got[5])
    assert np.all((got >= 0) & (got <= 1)) and np.all(np.diff(got) >= 0)
    # the same order of rows as the unbounded ratio above the floor
    above = p >= IMPLAUSIBLE_P
    assert np.all(np.argsort(got[above], kind="stable") == np.argsort(corruption_llr(p[above], 10), kind="stable"))
    # a plausible label (p 0.5 of 10 classes) adds almost nothing; a confident miss adds one unit
    assert got[2] < 0.01 and got[4] > 0.25
