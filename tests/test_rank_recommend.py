"""Ranking (composite of normalised criteria) and the documented recommendation rule."""

from __future__ import annotations

import math

import pytest

from tasksim.config import RankingConfig, SourceConfig
from tasksim.profile import SourceProfile
from tasksim.rank import DEFAULT_WEIGHTS, MEASURE_DIRECTIONS, rank_sources
from tasksim.recommend import LARGE_GAP_MMD2, plan_fine_tuning, recommend


def src(name: str, **kw: object) -> SourceConfig:
    return SourceConfig(name=name, path=f"/data/{name}.parquet", feature_columns=("x",), **kw)


SOURCES = [src("a", cost=1), src("b", cost=1), src("c", cost=5, licence="proprietary")]


# The mechanics below are tested on LogME and MMD^2 with fixed weights, independent of the defaults.
RANK = RankingConfig(weights={"logme": 2.0, "mmd2": 1.0}, normalization="minmax")  # min-max arithmetic below


def prof(name: str, **measures: float) -> SourceProfile:
    return SourceProfile(name, "ok", measures=measures)


def test_better_on_every_criterion_ranks_first() -> None:
    profiles = [prof("a", logme=1.0, mmd2=0.01), prof("b", logme=0.2, mmd2=0.3), prof("c", logme=0.5, mmd2=0.1)]
    ranking = rank_sources(profiles, SOURCES, RANK)
    assert [e.source for e in ranking.entries] == ["a", "c", "b"]
    assert [e.rank for e in ranking.entries] == [1, 2, 3]
    assert ranking.entries[0].score == pytest.approx(1.0)  # best on every criterion, cost included
    # c: logme (0.5-0.2)/0.8, mmd2 (0.3-0.1)/0.29, cost the worst; weights 2, 1, 0.25
    expected_c = (2 * 0.3 / 0.8 + 1 * 0.2 / 0.29 + 0.25 * 0) / (2 + 1 + 0.25)
    assert ranking.entries[1].score == pytest.approx(expected_c)
    assert all(0 <= e.score <= 1 for e in ranking.entries)


def test_scale_invariance_of_criteria() -> None:
    """Multiplying a criterion by a constant (a unit change) does not change the ranking."""
    base = [prof("a", logme=1.0, frechet=3.0), prof("b", logme=0.5, frechet=1.0), prof("c", logme=0.1, frechet=2.0)]
    scaled = [prof(p.source, logme=p.measures["logme"] * 1000, frechet=p.measures["frechet"] * 1e-3) for p in base]
    r1 = rank_sources(base, SOURCES, RANK)
    r2 = rank_sources(scaled, SOURCES, RANK)
    assert [e.source for e in r1.entries] == [e.source for e in r2.entries]
    assert [e.score for e in r1.entries] == pytest.approx([e.score for e in r2.entries])


def test_weights_steer_the_ranking() -> None:
    profiles = [prof("a", logme=1.0, mmd2=0.5), prof("b", logme=0.0, mmd2=0.0)]
    only_logme = RankingConfig(weights={"logme": 1.0, "mmd2": 0, "cost": 0})
    only_mmd = RankingConfig(weights={"logme": 0, "mmd2": 1.0, "cost": 0})
    assert rank_sources(profiles, SOURCES, only_logme).best().source == "a"
    assert rank_sources(profiles, SOURCES, only_mmd).best().source == "b"


def test_failed_and_licence_excluded_sources_are_not_ranked() -> None:
    profiles = [prof("a", logme=0.1), SourceProfile("b", "failed", error="boom"), prof("c", logme=9.0)]
    ranking = rank_sources(profiles, SOURCES, RankingConfig(allowed_licences=("mit", "unknown")))
    assert [e.source for e in ranking.entries] == ["a"]
    assert "licence 'proprietary'" in ranking.excluded["c"]


def test_criterion_missing_for_some_sources_is_not_used() -> None:
    profiles = [prof("a", logme=1.0, mmd2=0.2), prof("b", mmd2=0.1)]
    ranking = rank_sources(profiles, SOURCES, RankingConfig(weights={"logme": 2.0, "mmd2": 1.0, "cost": 0}))
    assert "logme" not in ranking.weights
    assert ranking.best().source == "b"


def test_every_direction_is_known() -> None:
    assert set(MEASURE_DIRECTIONS.values()) <= {-1, 1}
    assert set(DEFAULT_WEIGHTS) <= set(MEASURE_DIRECTIONS)


def test_default_weights_rank_the_source_better_on_every_default_criterion_first() -> None:
    """The defaults use each criterion in its documented direction: a source better on all of them
    scores as high as the default normalisation allows and the other as low (robust z of two
    sources: +-1 / 1.4826 through the logistic), and a measure without a default weight does not
    move the ranking."""
    criteria = [c for c in DEFAULT_WEIGHTS if c != "cost"]
    good = {c: float(MEASURE_DIRECTIONS[c]) for c in criteria}
    bad = {c: -float(MEASURE_DIRECTIONS[c]) for c in criteria}
    unweighted = next(m for m in MEASURE_DIRECTIONS if m not in DEFAULT_WEIGHTS)
    good[unweighted], bad[unweighted] = -MEASURE_DIRECTIONS[unweighted] * 10.0, MEASURE_DIRECTIONS[unweighted] * 10.0
    ranking = rank_sources([prof("a", **good), prof("b", **bad)], [src("a"), src("b")], RankingConfig())
    assert [e.source for e in ranking.entries] == ["a", "b"]
    assert set(ranking.weights) == set(criteria)
    top = 1.0 / (1.0 + math.exp(-1.0 / 1.4826))
    assert ranking.entries[0].score == pytest.approx(top) and ranking.entries[1].score == pytest.approx(1.0 - top)


def test_reliability_weighting_discounts_noise_level_differences() -> None:
    """A criterion whose spread across sources is within its own standard error stops steering the
    ranking; one whose differences are far beyond it keeps its weight."""
    noisy = {"a": {"label_noise_rate": 0.07, "label_noise_rate_se": 0.02, "frechet": 2.0},
             "b": {"label_noise_rate": 0.08, "label_noise_rate_se": 0.02, "frechet": 0.5}}
    profiles = [prof(n, **m) for n, m in noisy.items()]
    config = RankingConfig(weights={"label_noise_rate": 4.0, "frechet": 1.0, "cost": 0}, bootstrap_rounds=0)
    ranking = rank_sources(profiles, SOURCES, config)
    assert ranking.reliability == {"label_noise_rate": 0.0} and set(ranking.weights) == {"frechet"}
    assert ranking.best().source == "b"  # closer distribution; the noise-rate gap is sampling noise
    plain = rank_sources(profiles, SOURCES, RankingConfig(weights={"label_noise_rate": 4.0, "frechet": 1.0, "cost": 0},
                                                          bootstrap_rounds=0, reliability_weighting=False))
    assert plain.best().source == "a" and plain.reliability == {}
    precise = [prof(n, **{**m, "label_noise_rate_se": 1e-4}) for n, m in noisy.items()]
    assert rank_sources(precise, SOURCES, config).reliability.get("label_noise_rate", 1.0) > 0.99


def test_reliability_from_the_bootstrap_of_the_views() -> None:
    """Two sources whose views of the target are draws of the same distribution differ in H-score by
    resampling noise only: the bootstrap gives that criterion (almost) no weight."""
    import torch

    from tasksim.profile import SourceView

    g = torch.Generator().manual_seed(1)
    labels = [f"c{i % 2}" for i in range(120)]
    y = torch.tensor([i % 2 for i in range(120)], dtype=torch.float64)

    def view() -> SourceView:
        x = torch.randn(120, 6, generator=g, dtype=torch.float64)
        x[:, 0] += 0.8 * y
        return SourceView(x, None)

    measures = {"a": {"hscore_regularized": 0.0, "frechet": 1.0}, "b": {"hscore_regularized": 0.0, "frechet": 2.0}}
    from tasksim.profile import score_views
    views = {"a": view(), "b": view()}
    for name, scored in score_views(views, labels, ("hscore_regularized",)).items():
        measures[name]["hscore_regularized"] = scored["hscore_regularized"]
    from tasksim.profile import bootstrap_profiles
    profiles = bootstrap_profiles([SourceProfile(n, "ok", measures=m, view=views[n]) for n, m in measures.items()],
                                  labels, 30, ("hscore_regularized",))
    config = RankingConfig(weights={"hscore_regularized": 2.0, "frechet": 0.5, "cost": 0}, bootstrap_rounds=30)
    ranking = rank_sources(profiles, SOURCES, config)
    assert ranking.reliability["hscore_regularized"] < 0.5
    assert ranking.top1_probabilities() and sum(ranking.top1_probabilities().values()) == pytest.approx(1.0)


def test_a_failed_bootstrap_round_leaves_the_ranking_without_confidence(monkeypatch: pytest.MonkeyPatch) -> None:
    """A measure that comes back NaN on one resample must not stop the ranking (confidence is advisory)."""
    import torch

    import tasksim.profile as profile_mod
    from tasksim.profile import SourceView

    labels = [f"c{i % 2}" for i in range(40)]
    views = {n: SourceView(torch.randn(40, 3, dtype=torch.float64), None) for n in ("a", "b")}
    monkeypatch.setattr(profile_mod.metrics, "bootstrap_many",
                        lambda feats, lab, draws, probs, m, **kw: [[{k: float("nan") for k in m} for _ in feats]
                                                                   for _ in draws])
    profiles = [SourceProfile(n, "ok", measures={"hscore_regularized": float(i), "frechet": 1.0 + i}, view=views[n])
                for i, n in enumerate(("a", "b"))]
    profiles = profile_mod.bootstrap_profiles(profiles, labels, 5, ("hscore_regularized",))
    ranking = rank_sources(profiles, SOURCES, RankingConfig(weights={"cost": 0}, bootstrap_rounds=5))
    assert [e.source for e in ranking.entries] == ["b", "a"] and ranking.top1_probabilities() == {}


def test_recommend_switch_keep_and_margin() -> None:
    profiles = [prof("a", logme=1.0, mmd2=0.01), prof("b", logme=0.2, mmd2=0.3)]
    ranking = rank_sources(profiles, SOURCES, RANK)
    measures = {p.source: p.measures for p in profiles}
    switch = recommend(ranking, "b", RankingConfig(), measures=measures)
    assert switch.action == "switch" and switch.recommended_source == "a"
    assert "gap" in switch.rationale
    keep = recommend(ranking, "a", RankingConfig(), measures=measures)
    assert keep.action == "keep" and keep.recommended_source == "a"
    cautious = recommend(ranking, "b", RankingConfig(switch_margin=2.0), measures=measures)
    assert cautious.action == "keep" and "below the switch margin" in cautious.rationale
    unsure = recommend(ranking, "b", RankingConfig(min_confidence=0.9), measures=measures,
                       top1_probability={"a": 0.55})
    assert unsure.action == "keep" and "probability only 0.55" in unsure.rationale


def test_recommend_replaces_a_failed_deployed_source() -> None:
    profiles = [prof("a", logme=1.0)]
    ranking = rank_sources(profiles, SOURCES, RANK)
    rec = recommend(ranking, "b", RankingConfig(), measures={}, failed={"b": "file missing"})
    assert rec.action == "switch" and "file missing" in rec.rationale


def test_recommend_without_ranking() -> None:
    rec = recommend(None, "a", RankingConfig(), measures={})
    assert rec.action == "insufficient_data" and rec.recommended_source is None


@pytest.mark.parametrize(
    ("measures", "input_drift", "rows", "strategy", "adapters"),
    [
        ({"label_shift": 0.8, "mmd2": 0.01}, False, 5000, "surgical_last", False),
        ({"mmd2": 0.01, "knn_accuracy": 0.95}, False, 5000, "lp_ft", False),  # the linear probe before round 3
        ({"mmd2": 0.01, "knn_accuracy": 0.4}, True, 5000, "surgical_first", False),
        ({"mmd2": LARGE_GAP_MMD2 + 0.1}, False, 5000, "full", False),
        ({"mmd2": 0.1}, False, 200, "surgical_last", True),
    ],
)
def test_fine_tuning_rule(measures: dict, input_drift: bool, rows: int, strategy: str, adapters: bool) -> None:
    plan = plan_fine_tuning(measures, input_drift=input_drift, labelled_rows=rows)
    assert plan.strategy == strategy
    assert plan.adapters is adapters
    assert plan.reasons and plan.learning_rate > 0


def test_topsis_and_rank_normalisation_agree_on_a_dominating_source() -> None:
    profiles = [prof("a", logme=1.0, mmd2=0.01), prof("b", logme=0.2, mmd2=0.3), prof("c", logme=0.5, mmd2=0.1)]
    for config in (RankingConfig(method="topsis"), RankingConfig(normalization="rank"),
                   RankingConfig(normalization="robust_z")):
        ranking = rank_sources(profiles, SOURCES, config)
        assert ranking.best().source == "a", config
        assert all(0 <= e.score <= 1 for e in ranking.entries)


def test_pareto_front_of_potential_against_cost() -> None:
    profiles = [prof("a", logme=0.5), prof("b", logme=0.2), prof("c", logme=1.0)]
    ranking = rank_sources(profiles, SOURCES, RANK)
    # c is the most promising but costs 5; a is cheaper than c and better than b at the same cost
    assert set(ranking.pareto_front) == {"a", "c"}


def test_negative_transfer_guard_blocks_a_switch() -> None:
    profiles = [prof("a", logme=1.0, negative_transfer=1.0), prof("b", logme=0.2, negative_transfer=0.0)]
    ranking = rank_sources(profiles, SOURCES, RANK)
    assert ranking.best().source == "a" and ranking.best().flags == ("negative_transfer",)
    rec = recommend(ranking, "b", RankingConfig(), measures={})
    assert rec.action == "keep" and "worse than no transfer" in rec.rationale


def test_bootstrap_gives_top1_probabilities_and_intervals() -> None:
    import torch

    from tasksim.profile import SourceView

    g = torch.Generator().manual_seed(0)
    labels = [f"c{i % 3}" for i in range(240)]
    y = torch.tensor([i % 3 for i in range(240)])
    onehot = torch.nn.functional.one_hot(y, 3).double()
    strong = SourceView(torch.randn(240, 8, generator=g, dtype=torch.float64) + 4 * onehot @ torch.eye(3, 8,
                        dtype=torch.float64), None)
    weak = SourceView(torch.randn(240, 8, generator=g, dtype=torch.float64) + 0.3 * onehot @ torch.eye(3, 8,
                      dtype=torch.float64), None)
    from tasksim.profile import bootstrap_profiles
    profiles = bootstrap_profiles([SourceProfile("a", "ok", measures={"logme": 1.0}, view=strong),
                                   SourceProfile("b", "ok", measures={"logme": 0.0}, view=weak)], labels, 20, ("logme",))
    config = RankingConfig(bootstrap_rounds=20, weights={"logme": 1.0, "cost": 0})
    ranking = rank_sources(profiles, SOURCES, config)
    top1 = ranking.top1_probabilities()
    assert top1["a"] == pytest.approx(1.0) and top1["b"] == pytest.approx(0.0)
    assert ranking.entry("a").rank_interval == (1, 1)
    assert ranking.entry("b").rank_interval == (2, 2)
    no_boot = rank_sources(profiles, SOURCES, RankingConfig(bootstrap_rounds=0, weights={"logme": 1.0}))
    assert no_boot.top1_probabilities() == {}


@pytest.mark.parametrize("profile_of_layers,strategy,layer", [
    ({"layer_mmd2:block1": 0.60, "layer_mmd2:block2": 0.32, "layer_mmd2:block3": 0.31, "layer_mmd2:output": 0.2},
     "surgical_first", "block1"),     # input-level shift: largest at the first layer, fading with depth
    ({"layer_mmd2:block1": 0.01, "layer_mmd2:block2": 0.02, "layer_mmd2:block3": 0.25, "layer_mmd2:block4": 0.3,
      "layer_mmd2:output": 0.4}, "surgical_middle", "block3"),   # depth 2/4
    ({"layer_mmd2:block1": 0.01, "layer_mmd2:block2": 0.01, "layer_mmd2:block3": 0.02, "layer_mmd2:output": 0.3},
     "surgical_last", "output"),      # only the output moves: a feature/label-level shift
])
def test_fine_tuning_follows_where_the_shift_enters(profile_of_layers: dict, strategy: str, layer: str) -> None:
    measures = {"mmd2": 0.1, "label_shift": 0.0, "knn_accuracy": 0.7, **profile_of_layers}
    plan = plan_fine_tuning(measures, input_drift=False, labelled_rows=5000)
    assert plan.strategy == strategy
    assert f"from {layer}" in plan.trainable and layer in plan.reasons[0]


def test_layer_profile_without_a_real_shift_falls_back_to_the_other_rules() -> None:
    flat = {"layer_mmd2:block1": 0.001, "layer_mmd2:output": 0.002}
    plan = plan_fine_tuning({"mmd2": 0.1, "label_shift": 0.0, **flat}, input_drift=True, labelled_rows=5000)
    assert plan.strategy == "surgical_first" and "input-level drift" in plan.reasons[0]


def test_criteria_every_source_ties_on_are_not_used() -> None:
    """A tie carries no information; keeping it would only shrink the score differences."""
    profiles = [SourceProfile("a", "ok", measures={"logme": 1.0, "modality_match": 1.0, "duplicate_rate": 0.0}),
                SourceProfile("b", "ok", measures={"logme": 0.0, "modality_match": 1.0, "duplicate_rate": 0.0})]
    config = RankingConfig(bootstrap_rounds=0, weights={"logme": 1.0}, normalization="rank")
    ranking = rank_sources(profiles, [src("a"), src("b")], config)
    assert set(ranking.weights) == {"logme"}
    assert [e.score for e in ranking.entries] == [1.0, 0.0]


def test_modality_mismatch_ranks_a_source_down() -> None:
    measures = {"logme": 0.5, "knn_accuracy": 0.8}
    profiles = [SourceProfile("same", "ok", measures={**measures, "modality_match": 1.0}),
                SourceProfile("other", "ok", measures={**measures, "modality_match": 0.0})]
    ranking = rank_sources(profiles, [src("same"), src("other")], RankingConfig(bootstrap_rounds=0))
    assert ranking.best().source == "same" and "modality_match" in ranking.weights


def test_a_criterion_one_source_lacks_is_kept_for_the_others() -> None:
    """An unlabelled source has no label criteria: it is scored on the criteria it has, the others
    keep theirs, and the missing share lowers its confidence (never drops the criterion)."""
    profiles = [prof("a", label_exact_overlap=1.0, logme=0.2, mmd2=0.3),
                prof("b", label_exact_overlap=0.0, logme=0.9, mmd2=0.1),
                prof("unlabelled", logme=0.55, mmd2=0.2)]
    config = RankingConfig(weights={"label_exact_overlap": 2.0, "logme": 1.0, "mmd2": 1.0, "cost": 0},
                           bootstrap_rounds=0)
    ranking = rank_sources(profiles, SOURCES + [src("unlabelled")], config)
    assert "label_exact_overlap" in ranking.weights
    by = {e.source: e for e in ranking.entries}
    # a: overlap 1 (w 2), logme 0 (w 1), mmd2 0 (w 1) -> 2/4; b: 0 + 1 + 1 -> 2/4; unlabelled: (0.5 + 0.5) / 2
    assert by["a"].score == pytest.approx(0.5) and by["b"].score == pytest.approx(0.5)
    assert by["unlabelled"].score == pytest.approx(0.5)
    assert by["unlabelled"].missing == ("label_exact_overlap",) and by["a"].missing == ()
    assert by["unlabelled"].completeness == pytest.approx(0.5) and by["a"].completeness == 1.0
    assert "label_exact_overlap" not in by["unlabelled"].contributions
    assert ranking.entry_dict("unlabelled")["missing"] == ["label_exact_overlap"]
    topsis = rank_sources(profiles, SOURCES + [src("unlabelled")], RankingConfig(
        method="topsis", weights={"label_exact_overlap": 2.0, "logme": 1.0, "mmd2": 1.0, "cost": 0},
        bootstrap_rounds=0))
    assert {e.source for e in topsis.entries} == {"a", "b", "unlabelled"}
    assert all(0.0 <= e.score <= 1.0 for e in topsis.entries)


def test_missing_evidence_lowers_the_confidence_of_a_switch() -> None:
    from tasksim.rank import RankEntry, Ranking

    full = RankEntry("b", 0.9, 1, top1_probability=0.8)
    partial = RankEntry("b", 0.9, 1, top1_probability=0.8, missing=("logme",), completeness=0.5)
    deployed = RankEntry("a", 0.1, 2, top1_probability=0.2)
    config = RankingConfig(min_confidence=0.6)
    assert recommend(Ranking((full, deployed), {}, {}), "a", config, measures={}).action == "switch"
    held = recommend(Ranking((partial, deployed), {}, {}), "a", config, measures={})
    assert held.action == "keep" and "probability only 0.40" in held.rationale


def test_a_source_without_a_view_keeps_its_values_in_the_bootstrap() -> None:
    """Confidence is still computed when one candidate (e.g. an unlabelled dataset-only source) has no
    bootstrap rounds: it keeps its full-sample values in every round."""
    rounds = tuple({"logme": 1.0 + 0.01 * i} for i in range(10))
    weaker = tuple({"logme": 0.2 + 0.01 * i} for i in range(10))
    profiles = [SourceProfile("a", "ok", measures={"logme": 1.0}, bootstrap=rounds),
                SourceProfile("b", "ok", measures={"logme": 0.2}, bootstrap=weaker),
                SourceProfile("c", "ok", measures={"logme": 0.5})]
    ranking = rank_sources(profiles, SOURCES, RankingConfig(bootstrap_rounds=10, weights={"logme": 1.0, "cost": 0},
                                                            reliability_weighting=False))
    assert ranking.top1_probabilities() == {"a": 1.0, "b": 0.0, "c": 0.0}
    lone = rank_sources(profiles[:1] + profiles[2:], SOURCES, RankingConfig(bootstrap_rounds=10,
                                                                          weights={"logme": 1.0, "cost": 0}))
    assert lone.top1_probabilities() == {}  # one candidate with rounds: no bootstrap


@pytest.mark.parametrize(("layers", "rows", "classes", "strategy"), [
    ((0.21, 0.21, 0.22), 500, 5, "lp_ft"),          # new Fashion-MNIST classes, 100 labelled rows a class
    ((0.21, 0.21, 0.22), 167, 5, "surgical_last"),  # 33 a class: too few to move every layer
    ((0.21, 0.21, 0.22), 500, None, "surgical_last"),  # classes unknown: the rule does not apply
    ((0.31, 0.47, 0.56), 500, 5, "surgical_last"),  # MNIST: the shift grows with depth (1.8x)
    (None, 500, 5, "surgical_last"),                # no tapped layers
])
def test_a_new_label_space_on_unmoved_inputs_with_enough_labels_gets_lp_ft(
        layers: tuple[float, float, float] | None, rows: int, classes: int | None, strategy: str) -> None:
    """The advice benchmark's third round: a changed label space whose MMD^2 does not grow towards
    the output (below 1.25x the first layer's) gets LP-FT at 80+ labelled rows a class."""
    measures = {"mmd2": 0.2, "label_shift": 1.0, "knn_accuracy": 0.8}
    if layers is not None:
        measures.update({f"layer_mmd2:block{i}": v for i, v in enumerate(layers[:2])}, **{"layer_mmd2:output": layers[2]})
    plan = plan_fine_tuning(measures, drift_kind="label_prior", labelled_rows=rows, classes=classes)
    assert plan.strategy == strategy
    assert "label marginals differ" in plan.reasons[0]


def test_a_shift_as_large_at_the_output_as_at_the_first_layer_gets_lp_ft() -> None:
    """Blur in the advice benchmark: the first layer's MMD^2 is not twice the output's, so the
    shift reaches every layer: LP-FT, not the first blocks."""
    flat = {"layer_mmd2:block0": 0.37, "layer_mmd2:block1": 0.28, "layer_mmd2:block2": 0.36, "layer_mmd2:output": 0.36}
    plan = plan_fine_tuning({"mmd2": 0.36, "label_shift": 0.0, "knn_accuracy": 0.7, **flat}, drift_kind="input",
                            labelled_rows=5000, classes=5)
    assert plan.strategy == "lp_ft" and "every layer" in plan.reasons[0]


@pytest.mark.parametrize(("rows", "classes", "strategy"), [
    (167, 5, "lp_ft"),            # 33 labelled rows a class: few
    (500, 5, "surgical_first"),   # 100 a class: enough to move the first blocks
    (500, None, "surgical_first"),  # classes unknown: the rule does not apply
    (0, 5, "surgical_first"),     # no labels yet: the plan is for when they come
])
def test_few_labelled_rows_per_class_get_lp_ft(rows: int, classes: int | None, strategy: str) -> None:
    noise = {"layer_mmd2:block0": 1.1, "layer_mmd2:block1": 0.64, "layer_mmd2:block2": 0.41, "layer_mmd2:output": 0.41}
    plan = plan_fine_tuning({"mmd2": 0.41, "label_shift": 0.0, "knn_accuracy": 0.6, **noise}, drift_kind="input",
                            labelled_rows=rows, classes=classes)
    assert plan.strategy == strategy
    if strategy == "lp_ft":
        assert "few labelled rows per class" in plan.reasons[0]


@pytest.mark.parametrize(("rows", "label_shift", "strategy"), [
    (500, 0.0, "full"),            # low contrast in the advice benchmark: first 0.58, output 0.75
    (167, 0.0, "full"),            # before the few-labels rule: LP-FT lost by 3-7 points there
    (500, 1.0, "surgical_last"),   # a new label space stays an output-level shift
])
def test_a_shift_growing_with_depth_from_the_first_layer_gets_full_fine_tuning(rows: int, label_shift: float,
                                                                               strategy: str) -> None:
    growing = {"layer_mmd2:block0": 0.58, "layer_mmd2:block1": 0.74, "layer_mmd2:block2": 0.75,
               "layer_mmd2:output": 0.75}
    plan = plan_fine_tuning({"mmd2": 0.75, "label_shift": label_shift, "knn_accuracy": 0.8, **growing},
                            drift_kind="input", labelled_rows=rows, classes=5)
    assert plan.strategy == strategy
    if strategy == "full":
        assert "grows with depth" in plan.reasons[0]


def test_the_depth_rule_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """bench/advice_benchmark.py sets the ratio to 0 to show the rules before it."""
    import tasksim.recommend

    growing = {"layer_mmd2:block0": 0.58, "layer_mmd2:block1": 0.74, "layer_mmd2:output": 0.75}
    monkeypatch.setattr(tasksim.recommend, "DEPTH_GROWTH_RATIO", 0.0)
    plan = plan_fine_tuning({"mmd2": 0.75, "label_shift": 0.0, **growing}, labelled_rows=500, classes=5)
    assert plan.strategy == "lp_ft"


def test_carried_unweighted_measures_move_neither_the_ranking_nor_the_recommendation() -> None:
    """What ``ranking.unweighted_every`` trades: between refreshes a source carries its last
    ``CARRIED_MEASURES`` (stale by up to ``unweighted_every - 1`` cycles); with default weights the
    composite, the top-1 probabilities, the reliabilities and the recommendation never read them."""
    import random

    from tasksim.profile import CARRIED_MEASURES

    assert not {m for m in CARRIED_MEASURES if DEFAULT_WEIGHTS.get(m, 0.0) > 0}
    rng = random.Random(3)
    criteria = [c for c in DEFAULT_WEIGHTS if c != "cost"]
    names = ["a", "b", "c", "d"]
    base = {n: {c: rng.uniform(-1, 1) for c in criteria} for n in names}
    boot = {n: tuple({m: v + rng.gauss(0, 0.3) for m, v in base[n].items()} for _ in range(30)) for n in names}

    def decide(carried: dict[str, dict[str, float]]) -> tuple:
        profiles = [SourceProfile(n, "ok", measures={**base[n], **carried[n]}, bootstrap=boot[n]) for n in names]
        ranking = rank_sources(profiles, [src(n, cost=1 + i) for i, n in enumerate(names)], RankingConfig())
        top1 = ranking.top1_probabilities()
        rec = recommend(ranking, "d", RankingConfig(), measures={p.source: p.measures for p in profiles},
                        top1_probability=top1)
        return ([(e.source, e.score, e.rank, e.rank_interval) for e in ranking.entries], top1, ranking.reliability,
                ranking.weights, rec.action, rec.recommended_source, rec.fine_tune)

    fresh = decide({n: {m: rng.uniform(0, 1) for m in CARRIED_MEASURES} for n in names})
    stale = decide({n: {m: rng.uniform(0, 1) for m in CARRIED_MEASURES} for n in names})
    assert fresh == stale
    assert len({e[0] for e in fresh[0]}) == 4 and 0 < max(fresh[1].values()) < 1  # a ranking with real doubt
