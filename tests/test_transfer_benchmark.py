"""Smoke tests of the transfer benchmark's pieces (bench/transfer_benchmark.py) on tiny synthetic data."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import transfer_benchmark as tb
import transfer_data as td

from tasksim.heads import fit_source_head


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread (on the shared 2-core machine two threads ran the head fits
    ~80x slower through oversubscription)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _blobs(n: int, d: int, classes: int, seed: int, sep: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.normal(size=(n, d))
    x[np.arange(n), y] += sep
    return x.astype(np.float32), y


def test_taus_and_orientation():
    truth = {"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.6}
    assert tb.taus({"a": 4, "b": 3, "c": 2, "d": 1}, truth) == pytest.approx((1.0, 1.0))
    assert tb.taus({"a": 1, "b": 2, "c": 3, "d": 4}, truth) == pytest.approx((-1.0, -1.0))
    # a constant score carries no ranking: reported as nan, not as 0
    assert all(np.isnan(v) for v in tb.taus({k: 1.0 for k in truth}, truth))
    # distances are negated, transferability kept
    m = {"a": {"mmd2": 0.1, "logme": 2.0}, "b": {"mmd2": 0.5, "logme": 1.0}}
    assert tb.oriented(m, "mmd2") == {"a": -0.1, "b": -0.5}
    assert tb.oriented(m, "logme") == {"a": 2.0, "b": 1.0}


def test_tau_statistics_match_scipy():
    from scipy import stats

    rng = np.random.default_rng(3)
    for n in (2, 3, 15, 40):
        for ties in (False, True):
            a, b = rng.normal(size=n), rng.normal(size=n)
            if ties:
                a, b = np.round(a), np.round(b * 2)
            for mine, ref in ((tb.kendall_tau_b, stats.kendalltau), (tb.weighted_tau, stats.weightedtau)):
                want, got = ref(a, b).statistic, mine(a, b)
                assert (np.isnan(want) and np.isnan(got)) or got == pytest.approx(want, abs=1e-12)
    # batched: every row of a matrix against one vector, as the weight search calls them
    a, b = np.round(rng.normal(size=(50, 12))), rng.normal(size=12)
    for mine, ref in ((tb.kendall_tau_b, stats.kendalltau), (tb.weighted_tau, stats.weightedtau)):
        assert np.allclose(mine(a, b), [ref(row, b).statistic for row in a], atol=1e-12)


def test_tie_broken_taus_expected_kendall():
    truth = {"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.6, "e": 0.5}
    tied_tail = {"a": 3.0, "b": 2.0, "c": 1.0, "d": 1.0, "e": 1.0}
    # tau-b drops the 3 tied pairs from its normaliser: 7 / sqrt(7 * 10)
    assert tb.taus(tied_tail, truth)[0] == pytest.approx(7 / np.sqrt(70))
    # broken at random, tied pairs are concordant or discordant with probability 1/2: E = 7 / 10
    tau, wtau = tb.tie_broken_taus(tied_tail, truth, draws=2000, seed=1)
    assert tau == pytest.approx(0.7, abs=0.02)
    assert wtau < tb.taus(tied_tail, truth)[1]
    # no ties: unchanged; constant: n/a
    order = {"a": 5, "b": 4, "c": 3, "d": 1, "e": 2}
    assert tb.tie_broken_taus(order, truth) == tb.taus(order, truth)
    assert all(np.isnan(v) for v in tb.tie_broken_taus({k: 0.0 for k in truth}, truth))


def test_ground_truth_protocols_learn_separable_data():
    x, y = _blobs(120, 16, 3, seed=0)
    xte, yte = _blobs(90, 16, 3, seed=1)
    assert tb.linear_probe_test_accuracy(x, y, xte, yte) > 0.8
    head = fit_source_head(torch.from_numpy(x), [str(v) for v in y], steps=50)
    init = {k: head.weights[k] for k in ("mean", "scale", "w1", "b1")}
    p = tb.Protocol(ft_epochs=20)
    args = (torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(xte), torch.from_numpy(yte), 3)
    a = tb.finetune_test_accuracy(init, *args, seed=0, p=p)
    assert a > 0.8
    assert tb.finetune_test_accuracy(init, *args, seed=0, p=p) == a  # deterministic for a seed
    scratch = tb.random_head(torch.from_numpy(x), 32, seed=0)
    assert tb.finetune_test_accuracy(scratch, *args, seed=0, p=p) > 0.5
    # fine-tuning must not modify the head it starts from
    assert torch.equal(init["w1"], head.weights["w1"])


def _embed_names(names):
    """A stand-in text encoder for class names: (length, last character code)."""
    return torch.tensor([[float(len(n)), float(ord(n[-1]))] for n in names])


def _synthetic_results(n_targets: int = 2, n_sources: int = 5) -> dict[str, tb.TargetResult]:
    xs_all, ys_all = _blobs(60 * n_sources, 12, 3, seed=3)
    heads, sx, sy = {}, {}, {}
    for i in range(n_sources):
        x = xs_all[i * 60:(i + 1) * 60] + np.float32(i) * 0.5  # sources drift away from the target
        y = [f"c{v}" for v in ys_all[i * 60:(i + 1) * 60]]
        sx[f"s{i}"], sy[f"s{i}"] = x, y
        heads[f"s{i}"] = fit_source_head(torch.from_numpy(x), y, hidden=16, steps=40)
    results = {}
    for t in range(n_targets):
        xtr, ytr = _blobs(45, 12, 3, seed=10 + t)
        xgt, ygt = _blobs(30, 12, 3, seed=30 + t)
        xte, yte = _blobs(45, 12, 3, seed=20 + t)
        results[f"t{t}"] = tb.run_target(f"t{t}", xtr, [f"c{v}" for v in ytr], xgt, [f"c{v}" for v in ygt],
                                         xte, [f"c{v}" for v in yte], heads, sx, sy, tb.Protocol(ft_seeds=(0,), ft_epochs=2), extras=False,
                                         log=lambda s: None, embed_labels=_embed_names)
    return results


def test_run_target_and_evaluate_on_synthetic_data():
    results = _synthetic_results()
    r = results["t0"]
    assert set(r.measures) == {f"s{i}" for i in range(5)}
    for m in r.measures.values():
        assert set(tb.PRODUCT_MEASURES) <= set(m)
        assert all(np.isfinite(v) for v in m.values())
    assert set(r.truth) == set(tb.GROUND_TRUTHS) and r.n_gt_train == 30
    for g in ("lp", "ft", "lp_window"):
        assert all(0 <= v <= 1 for v in r.truth[g].values())
    assert all(v <= 0 for v in r.truth["lp_ll"].values())  # a mean log-probability
    for g in tb.GROUND_TRUTHS:  # every ground truth is the mean of its per-example values
        assert all(len(v) == 45 and np.mean(v) == pytest.approx(r.truth[g][s]) for s, v in r.per_example[g].items())
    assert {"lp_minilm", "lp_random_head", "ft_scratch"} <= set(r.baselines)
    ev = tb.evaluate(results, tb.Protocol(search_candidates=20), extras=False)
    assert "composite (default weights)" in ev["rows"] and "logme" in ev["rows"]
    assert set(ev["fits"]["product measures"]["loto"]) == {"t0", "t1"}
    loto = ev["rows"]["composite, LOTO-fitted weights (product measures)"]
    assert set(loto) == {"t0", "t1"}
    ceiling = ev["rows"][tb.CEILING_ROW]["t0"]
    assert set(ceiling) == set(tb.GROUND_TRUTHS) and all(-1 <= v <= 1 for g in ("lp", "lp_ll") for v in ceiling[g])
    table = tb.markdown_tables(ev, results)
    assert "| composite (default weights) |" in table and "no transfer: MLP from scratch" in table
    assert tb.CEILING_ROW in table and tb.BOOT_CEILING_ROW in ev["rows"]
    assert "Ties broken at random" in table and "Only the sources that share no class name" in table
    assert set(ev["rows_tie_broken"]) == set(ev["rows_no_label_overlap"])


def test_saved_results_load_back(tmp_path):
    """``--from-json`` re-evaluates exactly what a run saved."""
    import json

    results = _synthetic_results()
    payload = {"results": tb.results_payload(results),
               "targets": {n: {"classes": list(r.classes), "train": r.n_train, "gt_train": r.n_gt_train,
                               "test": r.n_test} for n, r in results.items()}}
    path = tmp_path / "raw.json"
    path.write_text(json.dumps(tb._jsonable(payload)))
    loaded, _ = tb.load_results(path)
    assert set(loaded) == set(results)
    for n, r in results.items():
        assert loaded[n].measures == r.measures and loaded[n].truth == r.truth
        assert loaded[n].classes == r.classes and loaded[n].n_test == r.n_test
        assert tb.DEFAULT_ROW in r.composites and loaded[n].composites == r.composites
        for g, per in r.per_example.items():
            assert all(np.allclose(loaded[n].per_example[g][s], v, atol=5e-5) for s, v in per.items())


def test_from_json_rejects_a_bad_file_in_one_line(tmp_path, capsys):
    missing = tmp_path / "missing.json"
    assert tb.main(["--from-json", str(missing)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(missing) in err[0]
    wrong = tmp_path / "wrong.json"
    wrong.write_text('{"results": {"t": {}}, "targets": {}}')
    assert tb.main(["--from-json", str(wrong)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing field" in err[0]
    garbled = tmp_path / "garbled.json"
    garbled.write_text("{not json")
    assert tb.main(["--from-json", str(garbled)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_bootstrap_compare_against_reference():
    """A row equal to the reference ties it in every round; the true order beats its reverse."""
    rng = np.random.default_rng(0)
    results = {}
    for t in range(4):
        r = tb.TargetResult(f"t{t}", ("a", "b"), 10, 10, 300)
        # sources 0..5 with clearly increasing per-example accuracy
        r.per_example = {g: {f"s{i}": (rng.random(300) < 0.4 + 0.08 * i).astype(float) for i in range(6)}
                         for g in tb.BOOTSTRAP_GROUND_TRUTHS}
        results[r.name] = r
    truth_order = {t: {f"s{i}": float(i) for i in range(6)} for t in results}
    scores = {"ref": truth_order, "same": truth_order,
              "reverse": {t: {s: -v for s, v in per.items()} for t, per in truth_order.items()},
              "tied": {t: {f"s{i}": float(i == 5) for i in range(6)} for t in results}}
    out = tb._bootstrap_compare(results, scores, "ref", tb.Protocol(), rounds=60)
    for g in tb.BOOTSTRAP_GROUND_TRUTHS:
        assert out[g]["same"]["p_ge_reference"] == 1.0 and out[g]["same"]["diff_p05"] == 0.0
        assert out[g]["ref"]["mean"] > 0.6 and out[g]["reverse"]["mean"] < -0.6
        assert out[g]["reverse"]["p_ge_reference"] == 0.0 and out[g]["reverse"]["diff_p95"] < 0
        # the tied tail is ordered at random: below the full true order
        assert out[g]["tied"]["mean"] < out[g]["ref"]["mean"] and out[g]["tied"]["p_ge_reference"] < 0.2


def test_weight_search_breaks_ties():
    """A criterion that orders only its top source and ties the rest is scored with the ties broken:
    the search prefers a criterion that orders every source nearly right."""
    results = {}
    for t in range(3):
        r = tb.TargetResult(f"t{t}", ("a", "b"), 10, 10, 10)
        truth = {f"s{i}": float(i) for i in range(10)}
        r.truth = {g: dict(truth) for g in tb.GROUND_TRUTHS}
        r.measures = {s: {"label_exact_overlap": float(v == 9), "mmd2": -v + (5.5 if v == 9 else 0.0)}
                      for s, v in truth.items()}
        results[r.name] = r
    top_only, nearly = {"label_exact_overlap": 1.0}, {"mmd2": 1.0}
    # tau-b alone would prefer the tied criterion (tied pairs leave its normaliser)
    score = {s: m["label_exact_overlap"] for s, m in results["t0"].measures.items()}
    assert tb.taus(score, results["t0"].truth["lp"])[1] > tb.taus(
        {s: -m["mmd2"] for s, m in results["t0"].measures.items()}, results["t0"].truth["lp"])[1]
    w, _ = tb.fit_weights(results, list(results), ["label_exact_overlap", "mmd2"], tb.Protocol(),
                          candidates=[top_only, nearly])
    assert w == nearly


def test_noise_ceilings():
    """Sources that differ far more than the test noise reach a ceiling of 1; pure noise about 0."""
    rng = np.random.default_rng(0)
    clear = {f"s{i}": i + 0.01 * rng.normal(size=200) for i in range(6)}
    assert tb._split_half_taus(clear, seed=0) == pytest.approx((1.0, 1.0))
    assert tb._bootstrap_ceiling(clear, seed=0) == pytest.approx((1.0, 1.0))
    noise = {f"s{i}": rng.normal(size=200) for i in range(6)}
    assert abs(tb._split_half_taus(noise, seed=0)[0]) < 0.3


def test_search_replica_matches_rank_sources():
    """The vectorised composite used by the weight search orders sources exactly like rank_sources."""
    rng = np.random.default_rng(0)
    names = list(tb.PRODUCT_CRITERIA)
    measures = {f"s{i}": {m: float(rng.normal()) for m in names} for i in range(8)}
    srcs = sorted(measures)
    u = tb._normalised_matrix(measures, names, srcs)
    for _ in range(5):
        w = {m: float(rng.choice([0.0, 0.5, 1.0, 2.0])) for m in names}
        w[names[0]] = 1.0
        vec = np.array([w[m] for m in names])
        replica = dict(zip(srcs, u @ vec / vec.sum()))
        product = tb.composite_scores(measures, w)
        for s in srcs:
            assert product[s] == pytest.approx(replica[s], abs=1e-9)


def test_embedding_store_caches(tmp_path):
    calls = []

    def encode(texts):
        calls.append(list(texts))
        return np.array([[len(t), t.count("a")] for t in texts], dtype=np.float32)

    store = td.EmbeddingStore(encode, "fake", tmp_path)
    out = store.get(["aa", "b", "aa"])
    assert out.tolist() == [[2, 2], [1, 0], [2, 2]] and calls == [["aa", "b"]]
    again = td.EmbeddingStore(encode, "fake", tmp_path)
    assert again.get(["b", "aa"]).tolist() == [[1, 0], [2, 2]] and again.embedded == 0
    again.get(["ccc"])
    assert calls[-1] == ["ccc"] and td.EmbeddingStore(encode, "fake", tmp_path).get(["ccc"]).tolist() == [[3, 0]]


def test_embedding_store_keys_with_trailing_nul_bytes(tmp_path):
    """SHA-1 keys ending in 0x00 must survive a save / load (an "S20" array would strip them)."""
    import hashlib

    texts = [f"t{i}" for i in range(5000) if hashlib.sha1(f"t{i}".encode()).digest()[-1] == 0][:3]
    texts += ["plain", "other"]
    assert len(texts) == 5

    def encode(batch):
        return np.array([[float(t.encode()[-1]), len(t)] for t in batch], dtype=np.float32)

    store = td.EmbeddingStore(encode, "fake", tmp_path)
    store.get(texts[:2])
    store.get(texts)
    reread = td.EmbeddingStore(encode, "fake", tmp_path)
    assert reread.get(texts).tolist() == encode(texts).tolist() and reread.embedded == 0
    reread.get(["new one"])
    assert td.EmbeddingStore(encode, "fake", tmp_path).get(texts + ["new one"]).tolist() == \
        encode(texts + ["new one"]).tolist()


def test_splits_are_disjoint_and_stratified():
    df = pd.DataFrame({"text": [f"t{i}" for i in range(100)], "label": [f"l{i % 4}" for i in range(100)]})
    train, gt, test = td.split_three(df, 5, 6, 10, seed=0)
    assert len(train) == 20 and len(gt) == 24 and len(test) == 40
    assert not (set(train["text"]) & set(test["text"]) or set(gt["text"]) & set(test["text"])
                or set(train["text"]) & set(gt["text"]))
    assert train["label"].value_counts().to_dict() == {f"l{i}": 5 for i in range(4)}
    # the window does not depend on the other sizes; a small class splits its rest between gt and test
    train2, gt2, test2 = td.split_three(df, 5, 100, 100, seed=0)
    assert train2.equals(train)
    assert gt2["label"].value_counts().to_dict() == {f"l{i}": 10 for i in range(4)} and len(test2) == 40
    take = td.stratified_take(df, 3, seed=1, cap=10)
    assert len(take) == 10 and take["label"].value_counts().max() <= 3
