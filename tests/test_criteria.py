"""tasksim.metrics.quality: label semantics, data quality and coverage against independent references."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from sklearn.model_selection import PredefinedSplit, cross_val_predict
from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors

from tasksim.metrics import _kernels, catalog
from tasksim.metrics import quality as criteria
from tasksim.metrics.quality import coverage, duplicate_rate, label_noise_rate, label_overlap, missing_rate
from tasksim.errors import MetricInputError


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The test machine's 2 cores are shared: one intra-op thread is ~10x faster here under load."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Force many distance / hashing blocks so the chunked code paths are exercised."""
    monkeypatch.setattr(criteria, "_CHUNK_ELEMS", 64)
    monkeypatch.setattr(_kernels, "BLOCK_ELEMS", 49)


# ------------------------------------------------------------------------------------------------
# label_overlap
# ------------------------------------------------------------------------------------------------

def test_label_overlap_constructed_case() -> None:
    out = label_overlap(["Cat", "dog ", "bird"], ["cat", "Dog", "fish", "horse"])
    assert out == pytest.approx({"label_exact_overlap": 0.5, "granularity_ratio": math.log2(3 / 4)})
    assert "label_semantic_overlap" not in out


def test_label_overlap_identical_sets_and_normalisation() -> None:
    labels = ["Golden  Retriever", "tabby cat", "Tabby Cat", "golden retriever\t"]  # 2 classes, per-sample
    out = label_overlap(labels, ["golden retriever", " TABBY   cat"], embed=lambda n: torch.eye(len(n)))
    assert out == {"label_exact_overlap": 1.0, "label_semantic_overlap": 1.0, "granularity_ratio": 0.0}
    assert label_overlap(["a", "b", "c", "d"], ["a", "b"])["granularity_ratio"] == pytest.approx(1.0)
    assert label_overlap(["x"], ["y"])["label_exact_overlap"] == 0.0


def test_integer_codes_never_match_by_name() -> None:
    """Codes 0-4 on both sides say nothing about what the classes mean: no overlap is claimed."""
    from tasksim.metrics.quality import is_code_vocabulary

    out = label_overlap(["0", "1", "2", "3", "4"], [0, 1, 2, 3, 4], embed=lambda n: torch.eye(len(n)))
    assert out == {"granularity_ratio": 0.0}
    assert set(label_overlap(["cat", "dog"], ["1", "2", "3", "4"])) == {"granularity_ratio"}
    assert label_overlap(["cat", "7"], ["cat", "dog"])["label_exact_overlap"] == 0.5  # names with a code among them
    assert is_code_vocabulary(["0", " 12", "-3", "4.0", 5]) and not is_code_vocabulary(["0", "1.5"])
    assert not is_code_vocabulary(["0", "zero"]) and not is_code_vocabulary([]) and not is_code_vocabulary(["nan"])


VECTORS = {
    "car": [1.0, 0.0, 0.0], "automobile": [0.95, 0.312, 0.0], "truck": [0.6, 0.8, 0.0],
    "dog": [0.0, 0.0, 1.0], "puppy": [0.0, 0.5, 0.866], "tree": [0.0, 1.0, 0.0], "void": [0.0, 0.0, 0.0],
}


def fake_embed(names: list[str]) -> torch.Tensor:
    return torch.tensor([VECTORS[n.casefold()] for n in names], dtype=torch.float32) * 3.0  # norm irrelevant


def test_label_semantic_overlap_against_sklearn_cosine() -> None:
    from sklearn.metrics.pairwise import cosine_similarity

    source, target = ["car", "dog", "void"], ["Automobile", "truck", "puppy", "tree", "dog"]
    for threshold in (0.5, 0.7, 0.9):
        got = label_overlap(source, target, embed=fake_embed, threshold=threshold)
        s = np.array([VECTORS[n] for n in source])
        t = np.array([VECTORS[n.casefold()] for n in target])
        cos = cosine_similarity(t, s)  # zero vectors -> 0 in sklearn as well
        exact = np.array([n.casefold() in source for n in target])
        expected = np.mean(exact | (cos.max(axis=1) >= threshold))
        assert got["label_semantic_overlap"] == pytest.approx(expected)
        assert got["label_exact_overlap"] == pytest.approx(0.2)
        assert got["label_semantic_overlap"] >= got["label_exact_overlap"]
    # known answers: automobile (0.95), puppy (0.866) match at 0.7; truck (0.6) and tree (0) do not
    assert label_overlap(source, target, embed=fake_embed, threshold=0.7)["label_semantic_overlap"] == 0.6


def test_criteria_directions_name_the_returned_measures() -> None:
    keys = set(label_overlap(["a"], ["a"], embed=lambda n: torch.ones(len(n), 2))) - {"granularity_ratio"}
    keys |= {"coverage", "label_noise_rate", "duplicate_rate", "missing_rate"}
    assert keys <= set(catalog.DIRECTIONS)
    assert {catalog.measure(k).family for k in keys} <= {"label", "quality", "distance"}


def test_label_overlap_calls_encoder_once_and_validates() -> None:
    calls: list[list[str]] = []

    def embed(names: list[str]) -> torch.Tensor:
        calls.append(names)
        return torch.ones(len(names), 4)

    label_overlap(["b", "a", "a"], ["c"], embed=embed)
    assert calls == [["a", "b", "c"]]  # sorted unique source names, then target names
    with pytest.raises(MetricInputError, match="shape"):
        label_overlap(["a"], ["b"], embed=lambda n: torch.ones(len(n) + 1, 2))
    with pytest.raises(MetricInputError):
        label_overlap(["a"], [])
    with pytest.raises(MetricInputError):
        label_overlap(["a"], ["  "])
    with pytest.raises(MetricInputError):
        label_overlap("abc", ["a"])


# ------------------------------------------------------------------------------------------------
# label_noise_rate
# ------------------------------------------------------------------------------------------------

def blobs(n: int, seed: int, n_classes: int = 4, dims: int = 8, sep: float = 6.0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian classes with means ``sep * e_c``: separable (Bayes error ~1e-5 at sep=6)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    x = rng.normal(size=(n, dims))
    x[np.arange(n), y] += sep
    return x, y


def flip(y: np.ndarray, rate: float, n_classes: int, seed: int) -> np.ndarray:
    """Exactly round(rate * n) labels moved to a uniformly chosen *other* class."""
    rng = np.random.default_rng(seed)
    y = y.copy()
    idx = rng.choice(y.shape[0], round(rate * y.shape[0]), replace=False)
    y[idx] = (y[idx] + rng.integers(1, n_classes, idx.shape[0])) % n_classes
    return y


def reference_folds(y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """The documented fold rule, re-implemented: classes ascending, one rng, permute, deal round-robin."""
    rng = np.random.default_rng(seed)
    out = np.empty(y.shape[0], dtype=np.int64)
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        members = members[rng.permutation(members.shape[0])]
        out[members] = np.arange(members.shape[0]) % folds
    return out


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.3])
def test_label_noise_rate_tracks_injected_noise(rate: float) -> None:
    """Stated tolerance: within 0.03 of the injected rate on separable classes, for both methods."""
    x, y = blobs(1000, seed=1)
    noisy = flip(y, rate, 4, seed=2)
    true_rate = float(np.mean(noisy != y))
    assert true_rate == pytest.approx(rate)
    for method in ("disagreement", "confident_joint"):
        est = label_noise_rate(x, noisy, method=method)
        assert abs(est - true_rate) <= 0.03, (method, est, true_rate)


def test_label_noise_rate_disagreement_matches_sklearn_knn() -> None:
    x, y = blobs(400, seed=3, sep=3.0)  # overlapping classes: many disagreements, vote ties
    noisy = flip(y, 0.2, 4, seed=4)
    for k, folds, seed in [(10, 5, 0), (5, 3, 7), (1, 4, 1)]:
        split = PredefinedSplit(reference_folds(noisy, folds, seed))
        pred = cross_val_predict(KNeighborsClassifier(n_neighbors=k, algorithm="brute"), x, noisy, cv=split)
        expected = float(np.mean(pred != noisy))
        assert label_noise_rate(x, noisy, folds=folds, seed=seed, k=k) == pytest.approx(expected, abs=1e-12)


def confident_joint_reference(probs: np.ndarray, y: np.ndarray) -> float:
    """Northcutt et al. (2021) confident joint, written with explicit loops."""
    c = probs.shape[1]
    t = np.array([probs[y == j, j].mean() for j in range(c)])
    joint = np.zeros((c, c))
    for p, i in zip(probs, y):
        ok = [j for j in range(c) if p[j] >= t[j]]
        if ok:
            joint[i, max(ok, key=lambda j: (p[j], -j))] += 1
    counts = np.bincount(y, minlength=c)
    cal = joint / joint.sum(axis=1, keepdims=True) * counts[:, None]
    return float(1 - np.trace(cal) / cal.sum())


def test_label_noise_rate_confident_joint_matches_reference() -> None:
    x, y = blobs(400, seed=5, sep=3.0)
    noisy = flip(y, 0.2, 4, seed=6)
    split = PredefinedSplit(reference_folds(noisy, 5, 0))
    probs = cross_val_predict(KNeighborsClassifier(n_neighbors=10, algorithm="brute"), x, noisy, cv=split,
                              method="predict_proba")
    expected = confident_joint_reference(probs, noisy)
    assert label_noise_rate(x, noisy, method="confident_joint") == pytest.approx(expected, abs=1e-12)


def test_label_noise_rate_invariances_and_chunking(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = blobs(120, seed=8, sep=3.0)
    noisy = flip(y, 0.2, 4, seed=9)
    with monkeypatch.context() as m:
        m.setattr(criteria, "_CHUNK_ELEMS", 64)
        m.setattr(_kernels, "BLOCK_ELEMS", 49)
        small = label_noise_rate(x, noisy)  # many tiny blocks
    assert label_noise_rate(x, noisy) == small
    names = np.array(["cat", "dog", "emu", "fox"])[noisy]  # string labels, same order
    assert label_noise_rate(torch.as_tensor(x, dtype=torch.float32), names) == pytest.approx(small, abs=0.02)
    assert label_noise_rate(x, names) == small
    assert label_noise_rate(x, noisy, seed=3) == label_noise_rate(x, noisy, seed=3)


def test_label_noise_rate_validation() -> None:
    x, y = blobs(50, seed=0)
    with pytest.raises(MetricInputError):
        label_noise_rate(x, np.zeros(50, dtype=int))  # one class
    with pytest.raises(MetricInputError):
        label_noise_rate(x, y[:40])
    with pytest.raises(MetricInputError):
        label_noise_rate(x, y, folds=1)
    with pytest.raises(MetricInputError):
        label_noise_rate(x, y, method="oracle")  # type: ignore[arg-type]
    x_nan = x.copy()
    x_nan[0, 0] = np.nan
    with pytest.raises(MetricInputError):
        label_noise_rate(x_nan, y)


# ------------------------------------------------------------------------------------------------
# duplicate_rate
# ------------------------------------------------------------------------------------------------

def duplicate_reference(x: np.ndarray, atol: float) -> float:
    q = np.round(x / atol) + 0.0 if atol > 0 else x + 0.0
    return 1.0 - np.unique(q, axis=0).shape[0] / x.shape[0]


def test_duplicate_rate_self_concatenation_is_half() -> None:
    x = np.random.default_rng(0).normal(size=(200, 5))
    assert duplicate_rate(x) == 0.0
    assert duplicate_rate(np.concatenate([x, x])) == 0.5
    assert duplicate_rate(torch.as_tensor(np.concatenate([x, x, x]))) == pytest.approx(2 / 3)


def test_duplicate_rate_constructed_near_duplicates() -> None:
    base = np.random.default_rng(1).integers(-1000, 1000, size=(50, 4)) * 1e-3  # on the 1e-6 grid
    near = base[:10] + 1e-8  # 0.01 grid steps away: same cell
    far = base[10:15] + 2e-5  # 20 grid steps away at atol=1e-6, 0.2 steps at atol=1e-4
    x = np.concatenate([base, near, far])
    assert duplicate_rate(x, atol=1e-6) == pytest.approx(10 / 65)
    assert duplicate_rate(x, atol=1e-4) == pytest.approx(15 / 65)
    assert duplicate_rate(x, atol=0.0) == 0.0
    assert duplicate_rate(np.array([[0.0, 1.0], [-0.0, 1.0]]), atol=0.0) == 0.5


def test_duplicate_rate_matches_numpy_reference(small_chunks: None) -> None:
    rng = np.random.default_rng(2)
    x = np.round(rng.normal(size=(300, 3)), 1)  # coarse values: many exact and near collisions
    x[::7] += rng.normal(scale=1e-7, size=x[::7].shape)
    for atol in (0.0, 1e-6, 0.05, 0.5):
        assert duplicate_rate(x, atol=atol) == pytest.approx(duplicate_reference(x, atol), abs=1e-12)


def test_duplicate_rate_validation() -> None:
    with pytest.raises(MetricInputError):
        duplicate_rate(np.ones((3, 2)), atol=-1.0)
    with pytest.raises(MetricInputError):
        duplicate_rate(np.array([[np.inf, 1.0]]))
    assert duplicate_rate(np.ones((1, 3))) == 0.0


# ------------------------------------------------------------------------------------------------
# missing_rate
# ------------------------------------------------------------------------------------------------

def test_missing_rate_known_answer_and_pandas_reference() -> None:
    table = pa.table({
        "a": pa.array([1.0, None, float("nan"), 4.0]),  # 1 null + 1 NaN
        "b": pa.array(["x", None, "z", None]),  # 2 nulls
        "c": pa.array([1, 2, 3, 4]),
        "emb": pa.array([[1.0, float("nan")], None, [0.0, 0.0], [1.0, 1.0]]),  # 1 null (NaN inside: not missing)
    })
    assert missing_rate(table, ["a"]) == 0.5
    assert missing_rate(table, ["a", "b", "c"]) == pytest.approx(4 / 12)
    assert missing_rate(table) == pytest.approx(5 / 16)
    frame = table.select(["a", "b", "c"]).to_pandas()
    assert missing_rate(table, ["a", "b", "c"]) == pytest.approx(float(frame.isna().to_numpy().mean()))
    chunked = pa.concat_tables([table.slice(0, 2), table.slice(2)])
    assert missing_rate(chunked, ["a", "b"]) == missing_rate(table, ["a", "b"])


def test_missing_rate_validation() -> None:
    table = pa.table({"a": [1.0, 2.0]})
    with pytest.raises(MetricInputError, match="not in the table"):
        missing_rate(table, ["nope"])
    with pytest.raises(MetricInputError):
        missing_rate(table.slice(0, 0), ["a"])
    with pytest.raises(MetricInputError):
        missing_rate(pd.DataFrame({"a": [1.0]}), ["a"])  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------
# coverage
# ------------------------------------------------------------------------------------------------

def coverage_reference(source: np.ndarray, target: np.ndarray, radius: float | None, k: int) -> float:
    if radius is None:
        d_tt, _ = NearestNeighbors(n_neighbors=k + 1).fit(target).kneighbors(target)
        radius = float(np.median(d_tt[:, k]))  # column 0 is the sample itself (distance 0)
    d_ts, _ = NearestNeighbors(n_neighbors=k).fit(source).kneighbors(target)
    return float(np.mean(d_ts[:, k - 1] <= radius))


def test_coverage_matches_sklearn_reference() -> None:
    rng = np.random.default_rng(0)
    target = rng.normal(size=(300, 5))
    for shift in (0.0, 1.0, 2.5):
        source = rng.normal(size=(250, 5)) + shift
        for k in (1, 3):
            for radius in (None, 2.0):
                got = coverage(source, target, radius=radius, k=k)
                assert got == pytest.approx(coverage_reference(source, target, radius, k), abs=1e-12)


def test_coverage_properties(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(80, 3))
    assert coverage(x, x) == 1.0
    dup = np.concatenate([x, x[:10]])  # duplicated rows: radius shrinks, self-coverage stays 1 (d = 0)
    assert coverage(dup, dup) == 1.0
    far = x + 100.0
    assert coverage(far, x) == 0.0
    half = np.concatenate([x[:40], far[40:]])
    assert coverage(half, x) >= 0.5
    # scale-free: the default radius moves with the data
    y = rng.normal(size=(60, 3)) + 0.7
    assert coverage(y * 1000.0, x * 1000.0) == coverage(y, x)
    # many tiny blocks vs one block: same answer
    with monkeypatch.context() as m:
        m.setattr(criteria, "_CHUNK_ELEMS", 64)
        m.setattr(_kernels, "BLOCK_ELEMS", 49)
        small = coverage(y, x, k=2)
        assert coverage(x, x) == 1.0
    assert coverage(y, x, k=2) == small
    assert coverage(torch.as_tensor(y), torch.as_tensor(x), k=2) == small


def test_coverage_validation() -> None:
    x = np.zeros((5, 2))
    with pytest.raises(MetricInputError):
        coverage(x, np.zeros((5, 3)))
    with pytest.raises(MetricInputError):
        coverage(x[:1], x, k=2)
    with pytest.raises(MetricInputError):
        coverage(x, x, radius=-1.0)
    with pytest.raises(MetricInputError):
        coverage(x, x[:1])  # default radius needs 2 target samples
    assert coverage(x, x[:1], radius=0.0) == 1.0
