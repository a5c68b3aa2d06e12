"""The transfer suite's evaluation (bench/transfer_suite.py) on synthetic runs: rank averages,
weighted tau with missing measures, the leave-one-benchmark-out search, the two-level bootstrap
and the report. The data-building half needs minutes of CPU and is run by hand (docs)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

ts = pytest.importorskip("transfer_suite")


def _run(bench: str, target: str, seed: int, n_sources: int = 8, test_rows: int = 60) -> ts.TargetRun:
    rng = np.random.default_rng(seed)
    sources = [f"s{i}" for i in range(n_sources)]
    quality = rng.uniform(0.3, 0.95, n_sources)
    per_example = {s: (rng.random(test_rows) < q).astype(float).tolist() for s, q in zip(sources, quality)}
    truth = {s: float(np.mean(v)) for s, v in per_example.items()}
    measures = {}
    for key in ("10/0", "10/1", "100/0"):
        measures[key] = {
            s: {"logme": truth[s] + rng.normal(0, 0.02),        # informative
                "knn_accuracy": truth[s] + rng.normal(0, 0.05),  # informative, noisier
                "gbc": float(rng.normal()),                      # noise
                "mmd2": float(rng.uniform(0, 1))}                # noise (lower is better)
            for s in sources}
        measures[key][sources[0]].pop("mmd2")  # a model-only source lacks the distance
    run = ts.TargetRun(bench, target, ["a", "b"], "named", [10, 100], measures=measures,
                       truth={"lp": truth, "ft": truth}, per_example={"lp": per_example, "ft": per_example},
                       ft_per_seed={s: [truth[s], truth[s]] for s in sources},
                       prior={s: [float(i), 10.0] for i, s in enumerate(sources)},
                       kinds={s: "model" for s in sources})
    return run


@pytest.fixture(scope="module")
def runs() -> list:
    return [_run(b, f"{b}-{i}", 10 * k + i) for k, b in enumerate(("images", "tabular", "text")) for i in range(3)]


def test_rank_average_orients_and_skips_missing() -> None:
    ms = {"a": {"logme": 3.0, "mmd2": 0.1}, "b": {"logme": 1.0, "mmd2": 0.9}, "c": {"logme": 2.0}}
    got = ts.rank_average(ms, ["logme", "mmd2"])
    assert got["a"] == pytest.approx(1.0)  # best on both (mmd2: lower is better)
    assert got["b"] == pytest.approx(0.0)
    assert got["c"] == pytest.approx(0.5)  # scored on the measure it has


def test_weighted_tau_of_the_truth_is_one_and_missing_scores_rank_last() -> None:
    rng = np.random.default_rng(0)
    truth = {"a": 0.9, "b": 0.5, "c": 0.1}
    assert ts.wtau(truth, truth, rng)[0] == pytest.approx(1.0)
    assert ts.wtau({"a": 1.0, "b": 0.5}, truth, rng)[0] == pytest.approx(1.0)  # c missing: last
    assert ts.wtau({"a": 1.0, "b": 1.0, "c": 1.0}, truth, rng) == (0.0, 0.0)  # no information


def test_lobo_picks_the_informative_measures_and_scores_held_out(runs) -> None:
    out = ts.lobo(runs, pool=("logme", "knn_accuracy", "gbc", "mmd2"), max_size=2)
    for held in out["held_out"].values():
        assert "logme" in held["chosen"] and "gbc" not in held["chosen"]
        assert held["held_out_wtau"] > 0.6
    assert out["best_overall"][0] in ("logme", "knn_accuracy")


def test_config_lobo_chooses_whole_product_configurations_on_the_other_benchmarks(runs) -> None:
    candidates = {"logme": {"logme": 1.0}, "gbc": {"gbc": 1.0}, "logme + mmd": {"logme": 1.0, "mmd2": 0.5}}
    out = ts.config_lobo(runs, candidates, normalizations=("rank", "robust_z"))
    assert set(out["means"]) == {f"{n}; {norm}" for n in candidates for norm in ("rank", "robust_z")}
    for bench, held in out["held_out"].items():
        assert not held["chosen"].startswith("gbc;")  # the noise measure never wins on the other benchmarks
        assert held["held_out_wtau"] == pytest.approx(out["means"][held["chosen"]][bench])
    # a candidate's weights replace the evidence weights: only the named criteria are weighted
    cfg = ts.candidate_config({"gbc": 1.0})
    assert cfg.weights["gbc"] == 1.0 and cfg.weights["logme"] == 0.0 and "cost" not in cfg.weights
    assert ts.candidate_config({"gbc": 1.0}, "rank").normalization == "rank"
    assert ts.config_family(candidates, ("robust_z",))["logme; robust_z"].normalization == "robust_z"


def test_tau_table_rows_and_bootstrap(runs) -> None:
    rows = {"logme": lambda run, key: ts.oriented(run.measures[key], "logme"),
            "gbc": lambda run, key: ts.oriented(run.measures[key], "gbc")}
    table = ts.tau_table(runs, rows)
    means = ts.bench_mean(table, runs, "images")
    assert means["logme"] > 0.7 > means["gbc"]
    assert abs(means[ts.RANDOM_ROW]) < 0.2
    boot = ts.two_level_bootstrap(runs, rows, "logme", rounds=40)
    assert boot["images"]["gbc"]["p_reference_better"] > 0.9
    ceilings = ts.noise_ceilings(runs, rounds=10)
    assert 0.0 < ceilings["text"]["lp_bootstrap"] <= 1.0


def test_default_composite_row_runs_the_products_ranking(runs) -> None:
    scores = ts.product_composite(runs[0].measures["10/0"], None)
    assert set(scores) == set(runs[0].truth["lp"]) and all(0.0 <= v <= 1.0 for v in scores.values())


def test_report_renders_every_section(runs, tmp_path: Path) -> None:
    out = tmp_path / "report.md"
    ts.report(runs, {"seconds": {"total": 1.0}, "machine": "test"}, out)
    text = out.read_text()
    for section in ("## Verdict", "## Two-level bootstrap", "leave one benchmark out", "## Per target"):
        assert section in text
    assert ts.DEFAULT_ROW in text and ts.CONFIG_HELD_OUT_ROW in text


# ---------------------------------------------------------------------------------------------
# the batched ground truths against the one-at-a-time ones they replace
# ---------------------------------------------------------------------------------------------

def test_batched_finetune_equals_one_source_and_seed_at_a_time() -> None:
    import torch
    from torch import nn

    p = ts.Protocol(ft_epochs=3, ft_seeds=(0, 1), ft_batch=16)
    torch.manual_seed(0)
    y = torch.randint(0, 3, (40,))
    cases = [  # an MLP top (LeNet / tabular / text heads) and a conv + batch-norm top (EfficientNet's)
        ([nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5), nn.ReLU()) for _ in range(2)], (6,)),
        ([nn.Sequential(nn.Conv2d(4, 6, 1), nn.BatchNorm2d(6), nn.SiLU(), nn.Flatten()) for _ in range(2)], (4, 1, 1)),
    ]
    for tops, shape in cases:
        xtr = [torch.randn(40, *shape) + i for i in range(len(tops))]
        xte = [torch.randn(25, *shape) + i for i in range(len(tops))]
        many = ts.finetune_logits_many(tops, xtr, y, xte, 3, p.ft_seeds, p)
        assert many.shape == (len(tops), len(p.ft_seeds), 25, 3)
        for i, top in enumerate(tops):
            for j, seed in enumerate(p.ft_seeds):
                one = ts.finetune_logits(top, xtr[i], y, xte[i], 3, seed, p)
                assert torch.allclose(many[i, j], one, atol=1e-4), (shape, i, seed)
        assert not torch.allclose(many[0, 0], many[0, 1], atol=1e-3)  # the seeds differ


def test_stacked_pointwise_finetune_equals_one_source_and_seed_at_a_time() -> None:
    """EfficientNet's head (1 x 1 conv, batch norm, ReLU6, spatial mean) of several sources and seeds
    trained as one wide model: each (source, seed) ends where the unbatched reference ends."""
    import types

    import torch
    from torch import nn

    suite_sources = pytest.importorskip("suite_sources")
    p = ts.Protocol(ft_epochs=4, ft_seeds=(0, 1, 2), ft_batch=16)
    torch.manual_seed(0)
    y = torch.randint(0, 3, (42,))  # 42 rows: the last minibatch of 10, then a 2-row one

    def eff_top(c_in: int, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        model = types.SimpleNamespace(_conv_head=nn.Conv2d(c_in, 6, 1, bias=False), _bn1=nn.BatchNorm2d(6),
                                      _swish=nn.ReLU6())
        top = suite_sources._EffTop(model)
        with torch.no_grad():  # pretrained-like running statistics, not the fresh 0 / 1
            top.bn.running_mean.uniform_(-0.5, 0.5)
            top.bn.running_var.uniform_(0.5, 2.0)
            top.bn.weight.uniform_(0.5, 1.5)
        return top.eval()

    for spatial in ((1, 1), (2, 3)):  # EfficientNet at 32 x 32 gives 1 x 1; the stacking holds for any size
        tops = [eff_top(4, 10), eff_top(4, 11)]
        assert all(ts._pointwise_parts(t) is not None for t in tops)
        xtr = [torch.randn(42, 4, *spatial) * 2 + i for i in range(2)]
        xte = [torch.randn(25, 4, *spatial) * 2 + i for i in range(2)]
        many = ts.finetune_logits_stacked(tops, xtr, y, xte, 3, p.ft_seeds, p)
        assert many.shape == (2, 3, 25, 3)
        for i, top in enumerate(tops):
            for j, seed in enumerate(p.ft_seeds):
                one = ts.finetune_logits(top, xtr[i], y, xte[i], 3, seed, p)
                assert torch.allclose(many[i, j], one, atol=1e-4, rtol=1e-4), (spatial, i, seed,
                                                                                (many[i, j] - one).abs().max())
                assert torch.equal(many[i, j].argmax(1), one.argmax(1))
        assert not torch.allclose(many[0, 0], many[0, 1], atol=1e-3)  # the seeds differ
        assert tops[0].bn.running_mean.abs().max() <= 0.5  # the sources' own tops are not trained in place
    # a 3 x 3 convolution is not pointwise: it keeps the one-model-at-a-time path
    conv3 = types.SimpleNamespace(_conv_head=nn.Conv2d(4, 6, 3), _bn1=nn.BatchNorm2d(6), _swish=nn.ReLU6())
    assert ts._pointwise_parts(suite_sources._EffTop(conv3)) is None
    assert ts._pointwise_parts(nn.Sequential(nn.Linear(4, 4))) is None


def test_batched_probe_equals_one_problem_at_a_time() -> None:
    import torch

    gen = torch.Generator().manual_seed(1)
    problems = []
    for k in range(4):
        centres = torch.randn(3, 5, generator=gen) * (0.5 + k)  # from overlapping to separable classes
        ytr, yte = torch.arange(30) % 3, torch.arange(45) % 3
        problems.append((centres[ytr] + torch.randn(30, 5, generator=gen), ytr,
                         centres[yte] + torch.randn(45, 5, generator=gen), yte))
    problems.append((torch.randn(30, 7, generator=gen), torch.arange(30) % 3,  # another width: its own group
                     torch.randn(45, 7, generator=gen), torch.arange(45) % 3))
    many = ts.probe_correct_many(problems)
    for got, prob in zip(many, problems):
        np.testing.assert_array_equal(got, ts.probe_correct(*prob))


def test_batched_lbfgs_finds_each_problems_minimiser() -> None:
    import torch

    scale = torch.tensor([[1.0, 10.0], [1.0, 100.0], [5.0, 5.0]])  # differently conditioned quadratics
    centre = torch.tensor([[1.0, -2.0], [0.5, 3.0], [-1.0, 0.0]])
    x = ts._batched_lbfgs(lambda v: (scale * (v - centre) ** 2).sum(1), torch.zeros(3, 2, dtype=torch.float64),
                          tol_grad=1e-9)
    assert torch.allclose(x.float(), centre, atol=1e-6)


def test_extras_left_out_of_a_run_are_not_rows(runs) -> None:
    present = ts.measured(runs)
    assert "logme" in present and "linear_probe_accuracy" not in present
    rows = ts.base_rows(present)
    assert "linear_probe_accuracy" not in rows and "logme" in rows and ts.DEFAULT_ROW in rows
    assert "linear_probe_accuracy" in ts.base_rows()


def test_timing_table_sums_wall_and_cpu_seconds_per_benchmark(runs) -> None:
    import copy

    timed = [copy.copy(r) for r in runs]
    for r in timed:
        r.seconds = {"ft": 2.0, "cpu ft": 3.0, "lp": 1.0, "cpu lp": 1.5}
    info = {"images": 100.0, "images cpu": 150.0, "images build": 10.0, "images build cpu": 12.0,
            "tabular": 50.0, "tabular cpu": 60.0, "text": 20.0, "text cpu": 30.0}
    table = ts._timing_table(timed, info)
    images = next(line for line in table.splitlines() if line.startswith("| images"))
    assert images.split(" | ")[1:4] == ["10 / 12", "0 / n/a", "3 / 4"]  # build, views (absent), lp: 3 x (1, 1.5)
    assert "| 6 / 9 |" in images  # ft: 3 targets x (2 wall, 3 CPU)
    assert table.splitlines()[-1].endswith("| 170 / 240 |")


def test_suite_text_test_split_is_a_subset_of_the_reserve_and_moves_nothing_else(monkeypatch) -> None:
    """The suite's text test split (150 a class) is cut from a reserve of 300: the pools, windows and
    sources are those of the 300-row split, the test rows a subset of its test rows."""
    td = pytest.importorskip("transfer_data")
    try:
        new = td.build_data("suite", seed=0)
    except (ImportError, FileNotFoundError, OSError) as exc:  # the packaged corpora are not installed here
        pytest.skip(f"text corpora unavailable: {exc}")
    monkeypatch.setitem(td.SIZES, "suite", {**td.SIZES["suite"], "test_per_class": 300})
    old = td.build_data("suite", seed=0)
    assert set(old.sources) == set(new.sources)
    assert all(old.sources[n].texts == new.sources[n].texts for n in old.sources)
    for name, t in old.targets.items():
        assert new.targets[name].train.texts == t.train.texts
        assert new.targets[name].gt_train.texts == t.gt_train.texts
        assert set(new.targets[name].test.texts) < set(t.test.texts)


def test_mlp_sources_see_targets_through_their_own_columns() -> None:
    """A source trained on permuted (or masked) columns gets the target's rows through the same
    column map, and its dataset in the shared space is its own rows, standardised."""
    import torch

    suite_sources = pytest.importorskip("suite_sources")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6)).astype(np.float32) * 3 + 1
    y = np.where(x[:, 0] > 1, "high", "low")
    std = suite_sources._Standardise(torch.from_numpy(x.mean(0)), torch.from_numpy(x.std(0)))
    perm = np.array([5, 4, 3, 2, 1, 0])
    specs = [("plain", x, y, 16, 8, lambda v: v, "plain"),
             ("permuted", x[:, perm], y, 16, 8, lambda v: v[:, perm], "its columns reversed")]
    plain, permuted = suite_sources._mlp_sources(specs, 6, std, seed=0)
    target = torch.from_numpy(x[:50])
    np.testing.assert_allclose(permuted.pre(target).numpy(), std(target[:, perm]).numpy(), rtol=1e-6)
    np.testing.assert_allclose(plain.pre(target).numpy(), std(target).numpy(), rtol=1e-6)
    assert permuted.shared.shape == (300, 6) and permuted.n_rows == 300 and set(permuted.labels) == {"high", "low"}
    # each learned its task on its own columns: the reversed source reads the label from its last column
    for src in (plain, permuted):
        h, probs = src.view(src.pre(target))
        assert h.shape == (50, 8) and probs.shape == (50, 2)
        accuracy = np.mean(np.array(sorted({"high", "low"}))[probs.argmax(1).numpy()] == y[:50])
        assert accuracy > 0.9, (src.name, accuracy)
