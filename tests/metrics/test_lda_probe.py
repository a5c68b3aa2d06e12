"""The shrinkage LDA probe against scikit-learn (the independent reference), plus properties."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from tasksim.errors import MetricInputError
from tasksim.metrics import transfer as T
from tasksim.metrics.transfer.extra import _fold_ids
from tasksim.metrics.transfer.lda import LDA_MAX_ROWS, _discriminant, _stratified_rows, lda_probe_batched

sklearn_da = pytest.importorskip("sklearn.discriminant_analysis")
sklearn_pre = pytest.importorskip("sklearn.preprocessing")


def _reference_accuracy(x: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0) -> float:
    """StandardScaler + LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto") on the same folds."""
    fold, nf = _fold_ids(torch.as_tensor(y), folds, seed)
    fold = fold.numpy()
    hits = 0
    for f in range(nf):
        tr, te = fold != f, fold == f
        scaler = sklearn_pre.StandardScaler().fit(x[tr])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scikit-learn warns about collinear features; the fit is defined
            model = sklearn_da.LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(scaler.transform(x[tr]), y[tr])
        hits += int((model.predict(scaler.transform(x[te])) == y[te]).sum())
    return hits / len(y)


def _data(n: int, d: int, c: int, seed: int, dead: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % c
    x = rng.standard_normal((n, d)) * rng.uniform(0.1, 10.0, d) + 0.6 * rng.standard_normal((c, d))[y]
    if dead:  # dead ReLU units: zero except a few rows, so constant within most classes
        x[:, :dead] = 0.0
        x[rng.integers(0, n, 3), :dead] = 1.0
    return x, y


@pytest.mark.parametrize(("n", "d", "c", "dead"), [(60, 200, 4, 0), (300, 20, 3, 0), (100, 120, 10, 5), (40, 8, 2, 0),
                                                  (90, 90, 3, 10)])
def test_lda_probe_matches_scikit_learn(n: int, d: int, c: int, dead: int) -> None:
    """Fewer rows than dimensions (Woodbury), more (direct), dead units, binary and 10 classes."""
    x, y = _data(n, d, c, seed=n + d, dead=dead)
    assert T.lda_probe_accuracy(x, y) == pytest.approx(_reference_accuracy(x, y), abs=1e-12)


def test_lda_discriminant_matches_scikit_learn() -> None:
    """Not just the accuracy: the discriminant of one fit equals scikit-learn's coef_ and intercept_."""
    for n_train, d in ((60, 150), (200, 12)):  # Woodbury, direct
        x, y = _data(n_train + 20, d, 5, seed=d)
        tr = np.arange(len(y)) < n_train
        xs = sklearn_pre.StandardScaler().fit(x[tr]).transform(x[tr])
        model = sklearn_da.LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(xs, y[tr])
        w, bias, present = _discriminant(torch.as_tensor(xs).unsqueeze(0), torch.as_tensor(y[tr]), 5)
        assert present == [0, 1, 2, 3, 4]
        np.testing.assert_allclose(w[0].T.numpy(), model.coef_, rtol=1e-7, atol=1e-9 * np.abs(model.coef_).max())
        np.testing.assert_allclose(bias[0].numpy(), model.intercept_, rtol=1e-7, atol=1e-9)


def test_lda_woodbury_batch_equals_one_source_at_a_time() -> None:
    """The Woodbury system (fewer rows than features) of several sources solved as one batch, by
    Cholesky: the size that made a batched LU fail inside MKL (400 rows, two sources)."""
    x = torch.stack([torch.as_tensor(_data(400, 600, 10, seed=s)[0]) for s in range(2)])
    y = torch.as_tensor(_data(400, 600, 10, seed=0)[1])
    xs = (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True)
    w, bias, _ = _discriminant(xs, y, 10)
    assert torch.isfinite(w).all()
    for k in range(2):
        w1, b1, _ = _discriminant(xs[k:k + 1], y, 10)
        torch.testing.assert_close(w[k:k + 1], w1, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(bias[k:k + 1], b1, rtol=1e-9, atol=1e-12)


def test_lda_probe_properties() -> None:
    x, y = _data(150, 30, 3, seed=11)
    a = T.lda_probe_accuracy(x, y)
    assert 0.5 < a <= 1.0
    scales = np.random.default_rng(2).uniform(1e-3, 1e3, 30)
    assert T.lda_probe_accuracy(x * scales + 7.0, y) == pytest.approx(a, abs=1e-12)  # units of each feature
    assert T.lda_probe_accuracy(x, np.array([f"class {v}" for v in y])) == pytest.approx(a)  # ids are names
    shuffled = np.random.default_rng(0).permutation(y)
    assert T.lda_probe_accuracy(x, shuffled) < a - 0.2                               # labels matter
    assert T.lda_probe_accuracy(np.concatenate([x, x[:, :1]], 1), y) >= 0.0             # a duplicated column is fine
    with pytest.raises(MetricInputError):
        T.lda_probe_accuracy(x[:4], y[:4])  # a class with one row
    tiny = T.lda_probe_accuracy(x[:6], y[:6])  # 2 rows a class: the smallest window transferability scores
    assert 0.0 <= tiny <= 1.0


def test_lda_probe_in_source_blocks_equals_one_block(monkeypatch: pytest.MonkeyPatch) -> None:
    from tasksim.metrics.transfer import lda as lda_module

    xs = torch.as_tensor(np.stack([_data(50, 20, 3, seed=s)[0] for s in range(5)]))
    y = torch.as_tensor(_data(50, 20, 3, seed=0)[1])
    whole = lda_probe_batched(xs, y, 3)
    monkeypatch.setattr(lda_module, "_BLOCK_BYTES", 50 * 20 * 8 * 2)  # two sources a block
    assert lda_probe_batched(xs, y, 3).tolist() == whole.tolist()


def test_lda_probe_batched_equals_one_by_one_and_profile_many() -> None:
    xs = [_data(70, 40, 4, seed=s)[0] for s in range(3)]
    y = _data(70, 40, 4, seed=0)[1]
    batch = lda_probe_batched(torch.as_tensor(np.stack(xs)), torch.as_tensor(y), 4)
    one = [T.lda_probe_accuracy(x, y) for x in xs]
    assert batch.tolist() == pytest.approx(one, abs=1e-12)
    many = T.profile_many(np.stack(xs), y, measures=["lda_probe_accuracy"])
    assert [m["lda_probe_accuracy"] for m in many] == pytest.approx(one, abs=1e-12)
    chunks = [np.stack(xs)[:, :30], np.stack(xs)[:, 30:]]  # the streamed path gathers the rows in one more pass
    streamed = T.profile_many(chunks, y, measures=["lda_probe_accuracy"])
    assert [m["lda_probe_accuracy"] for m in streamed] == pytest.approx(one, abs=1e-12)


def test_large_windows_use_a_class_stratified_subsample() -> None:
    y = torch.as_tensor(np.r_[np.zeros(900), np.ones(90), np.full(10, 2)].astype(np.int64))
    rows = _stratified_rows(y, LDA_MAX_ROWS, seed=0)
    assert rows is not None and abs(len(rows) - LDA_MAX_ROWS) <= 3
    kept = np.bincount(y[rows].numpy(), minlength=3)
    assert kept[0] == pytest.approx(461, abs=2) and kept[1] == pytest.approx(46, abs=2) and kept[2] == 5
    assert _stratified_rows(y[:LDA_MAX_ROWS], LDA_MAX_ROWS, seed=0) is None
    x, yy = _data(1200, 12, 3, seed=5)
    # the same as the probe run on those rows without the cap
    sub = _stratified_rows(torch.as_tensor(yy), LDA_MAX_ROWS, seed=0)
    assert T.lda_probe_accuracy(x, yy) == pytest.approx(
        float(lda_probe_batched(torch.as_tensor(x[sub.numpy()]).unsqueeze(0), torch.as_tensor(yy[sub.numpy()]), 3,
                                max_rows=None)[0]), abs=1e-12)
