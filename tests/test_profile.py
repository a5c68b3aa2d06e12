"""tasksim.profile: the pure profile entry point (profile_arrays), its bootstrap, and the catalogue
it derives its lists from."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from tasksim import metrics
from tasksim.errors import MetricInputError
from tasksim.metrics import catalog
from tasksim.profile import (
    TRANSFER_MEASURES,
    SourceArrays,
    SourceView,
    bootstrap_profiles,
    mmd_self_block,
    profile_arrays,
    score_views,
    shared_space_measures,
)


def _data(seed: int, n: int, d: int, shift: float, classes: int = 3) -> tuple[torch.Tensor, list[str]]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    x[:, :classes] += 2.5 * torch.nn.functional.one_hot(y, classes).double()
    return x + shift, [f"c{int(v)}" for v in y]


@pytest.fixture(scope="module")
def world() -> dict:
    tx, ty = _data(0, 90, 6, 0.0)
    near_x, near_y = _data(1, 120, 6, 0.1)
    far_x, far_y = _data(2, 120, 6, 3.0)
    good_view = SourceView(tx.clone(), None)                       # separates the target classes
    g = torch.Generator().manual_seed(3)
    bad_view = SourceView(torch.randn(90, 6, generator=g, dtype=torch.float64), None)  # pure noise
    sources = {"near": SourceArrays(near_x, near_y, good_view, missing_rate=0.0, extra={"modality_match": 1.0}),
               "far": SourceArrays(far_x, far_y, bad_view, missing_rate=0.1, extra={"modality_match": 1.0})}
    return {"tx": tx, "ty": ty, "sources": sources}


def test_profile_arrays_is_the_shared_space_measures_plus_batched_transferability(world: dict) -> None:
    profiles = profile_arrays(world["tx"], world["ty"], world["sources"], seed=0)
    assert [p.source for p in profiles] == ["near", "far"] and all(p.status == "ok" for p in profiles)
    by = {p.source: p for p in profiles}
    for name, src in world["sources"].items():
        expected = shared_space_measures(src.features, src.labels, world["tx"], world["ty"],
                                         missing_rate=src.missing_rate, seed=0)
        for key, value in expected.items():
            assert by[name].measures[key] == pytest.approx(value, rel=1e-9, abs=1e-12), (name, key)
        assert by[name].measures["modality_match"] == 1.0
    views = {n: s.view for n, s in world["sources"].items()}
    scored = score_views(views, world["ty"], seed=0)
    baseline = metrics.transferability_profile(world["tx"], world["ty"], measures=("logme", "knn_accuracy"))
    for name in views:
        for key in TRANSFER_MEASURES:
            if key in scored[name]:
                assert by[name].measures[key] == pytest.approx(scored[name][key], rel=1e-9)
        assert by[name].measures["logme_gain"] == pytest.approx(by[name].measures["logme"] - baseline["logme"])
    # the near source is closer and transfers better
    assert by["near"].measures["mmd2"] < by["far"].measures["mmd2"]
    assert by["near"].measures["logme"] > by["far"].measures["logme"]
    assert by["far"].measures["negative_transfer"] == 1.0


def test_a_kept_mmd_self_block_gives_the_same_profile(world: dict) -> None:
    # a warm process keeps each source's MMD self block (SourceMemo); the window then costs MMD^2
    # only its cross pairs: every measure is the one measured without it (MMD^2 up to rounding)
    with_block = {n: replace(s, mmd_block=mmd_self_block(s.features, seed=0)) for n, s in world["sources"].items()}
    assert all(s.mmd_block is not None and s.mmd_block.rows == 120 for s in with_block.values())
    plain = {p.source: p.measures for p in profile_arrays(world["tx"], world["ty"], world["sources"], seed=0)}
    kept = {p.source: p.measures for p in profile_arrays(world["tx"], world["ty"], with_block, seed=0)}
    for name, measures in plain.items():
        assert kept[name].keys() == measures.keys()
        for key, value in measures.items():
            tol = {"rel": 1e-10, "abs": 1e-13} if key == "mmd2" else {"rel": 0, "abs": 0}
            assert kept[name][key] == pytest.approx(value, **tol), (name, key)
    assert mmd_self_block(torch.zeros(3000, 2), seed=0) is None  # above MMD_BLOCK_MAX_ROWS: not kept


def test_profile_arrays_isolates_a_failing_source(world: dict) -> None:
    wide = SourceArrays(torch.randn(50, 9, dtype=torch.float64), ["a", "b"] * 25)  # wrong width: MMD refuses
    broken_view = SourceArrays(world["sources"]["near"].features, world["sources"]["near"].labels,
                               SourceView(torch.full((90, 6), float("nan"), dtype=torch.float64), None))
    profiles = profile_arrays(world["tx"], world["ty"], {**world["sources"], "wide": wide, "nan-view": broken_view})
    status = {p.source: (p.status, p.error) for p in profiles}
    assert status["near"][0] == status["far"][0] == "ok"
    assert status["wide"][0] == "failed" and "width" in status["wide"][1]
    assert status["nan-view"][0] == "failed" and status["nan-view"][1].startswith("transferability:")


def test_a_dimension_too_wide_for_float32_distances_fails_its_source_with_the_data_named(world: dict) -> None:
    """A raw epoch-nanosecond column (1.7e18) in the target, or 1e30 in a source: the source fails
    with the dimension, both sides' ranges and the fix, not with a measure's arithmetic (before:
    "median heuristic bandwidth is 0", or "cannot convert float NaN to integer" from OTDD)."""
    huge = world["sources"]["far"].features.clone()
    huge[:, 2] *= 1e30
    profiles = profile_arrays(world["tx"], world["ty"], {**world["sources"],
                                                         "huge": SourceArrays(huge, world["sources"]["far"].labels)})
    status = {p.source: (p.status, p.error) for p in profiles}
    assert status["near"][0] == status["far"][0] == "ok"
    assert status["huge"][0] == "failed"
    assert status["huge"][1].startswith("feature dimension 2 spans ") and "the 'tabular' encoder" in status["huge"][1]
    epoch = world["tx"].clone()
    epoch[:, 0] = 1.7e18 + torch.arange(epoch.shape[0], dtype=torch.float64) * 1e9
    with pytest.raises(MetricInputError, match=r"feature dimension 0 spans 1\.7e\+18 over the source .* and the "
                                               r"target window \(1\.7e\+18 \.\. 1\.7e\+18\)"):
        shared_space_measures(world["sources"]["near"].features, None, epoch, None)
    # at the limit it passes: the check is on the range, not on large values as such
    shifted = world["tx"] + 5e14
    measures = shared_space_measures(world["sources"]["near"].features + 5e14, None, shifted, None)
    assert math.isfinite(measures["mmd2"])


def test_profile_arrays_without_labels_or_views_skips_transferability(world: dict) -> None:
    unlabelled = profile_arrays(world["tx"], None, world["sources"])
    assert all(p.status == "ok" for p in unlabelled)
    assert not any(k in p.measures for p in unlabelled for k in ("logme", "knn_accuracy", "label_shift"))
    assert all(math.isfinite(p.measures["mmd2"]) for p in unlabelled)


def test_late_labels_use_the_labelled_rows_only(world: dict) -> None:
    partial = [y if i % 3 else None for i, y in enumerate(world["ty"])]
    profiles = {p.source: p for p in profile_arrays(world["tx"], partial, world["sources"])}
    rows = [i for i, y in enumerate(partial) if y is not None]
    views = {n: SourceView(s.view.features[rows], None) for n, s in world["sources"].items()}
    scored = score_views(views, [partial[i] for i in rows])
    assert profiles["near"].measures["logme"] == pytest.approx(scored["near"]["logme"], rel=1e-9)


def test_bootstrap_rounds_are_attached_and_reproducible(world: dict) -> None:
    a = profile_arrays(world["tx"], world["ty"], world["sources"], bootstrap_rounds=7,
                       bootstrap_measures=("logme", "hscore_regularized"))
    b = profile_arrays(world["tx"], world["ty"], world["sources"], bootstrap_rounds=7,
                       bootstrap_measures=("logme", "hscore_regularized"))
    for pa_, pb_ in zip(a, b):
        assert len(pa_.bootstrap) == 7 and set(pa_.bootstrap[0]) == {"logme", "hscore_regularized"}
        assert pa_.bootstrap == pb_.bootstrap
    # resampling moves the values around the full-sample value
    near = next(p for p in a if p.source == "near")
    values = [r["logme"] for r in near.bootstrap]
    assert min(values) < max(values)
    assert min(values) - 1.0 < near.measures["logme"] < max(values) + 1.0


def test_bootstrap_from_distinct_rows_gives_the_confidence_of_re_scoring_every_resample() -> None:
    """The bootstrap scores each resample from its distinct rows and their multiplicities
    (``metrics.bootstrap_many``); the rounds, and the top-1 probabilities, rank intervals and
    reliabilities the ranking draws from them, equal re-scoring every resample's repeated rows
    (the path before, through ``score_views``) on a fixed seed."""
    from tasksim import mcda
    from tasksim.config import RankingConfig
    from tasksim.profile import SourceProfile
    from tasksim.rank import SourceTerms, rank_sources

    g = torch.Generator().manual_seed(7)
    n, d = 100, 128  # a 100-row window through 128-d head views: the dual case of the cycle
    labels = [f"c{i % 5}" for i in range(n)]
    y = torch.tensor([i % 5 for i in range(n)])
    views = {}
    for k in range(6):
        feats = torch.relu(torch.randn(n, d, generator=g) + 0.15 * k * torch.nn.functional.one_hot(y, d))
        logits = torch.randn(n, 5, generator=g) + 0.4 * k * torch.nn.functional.one_hot(y, 5)
        views[f"s{k}"] = SourceView(feats, torch.softmax(logits, 1))
    measures = ("logme", "hscore_regularized", "gbc", "leep")
    full = score_views(views, labels)
    profiles = [SourceProfile(s, "ok", measures={**full[s], "mmd2": 0.1 * i}, view=v)
                for i, (s, v) in enumerate(views.items())]
    new = bootstrap_profiles(profiles, labels, 30, measures, seed=3)
    old_rounds: dict[str, list[dict[str, float]]] = {s: [] for s in views}
    for idx in mcda.bootstrap_indices(n, 30, seed=3):
        picked = [labels[i] for i in idx.tolist()]
        rescored = score_views({s: SourceView(v.features[idx], v.probs[idx]) for s, v in views.items()}, picked,
                               measures)
        for s in views:
            old_rounds[s].append(rescored[s])
    for p in new:
        assert len(p.bootstrap) == 30
        for got, expect in zip(p.bootstrap, old_rounds[p.source]):
            assert set(got) == set(measures)
            for m in measures:
                assert got[m] == pytest.approx(expect[m], rel=1e-8, abs=1e-10), (p.source, m)
    old = [SourceProfile(p.source, "ok", measures=p.measures, bootstrap=tuple(old_rounds[p.source])) for p in profiles]
    terms = [SourceTerms(s) for s in views]
    config = RankingConfig(bootstrap_rounds=30)
    a, b = rank_sources(new, terms, config), rank_sources(old, terms, config)
    assert [e.source for e in a.entries] == [e.source for e in b.entries]
    assert a.top1_probabilities() == pytest.approx(b.top1_probabilities(), abs=1e-12)
    assert len(set(a.top1_probabilities().values())) > 1  # the confidence is not degenerate
    assert [e.rank_interval for e in a.entries] == [e.rank_interval for e in b.entries]
    assert a.reliability == pytest.approx(b.reliability, rel=1e-6)


def test_bootstrap_in_memory_bounded_batches_gives_the_same_rounds(world: dict,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Sources are bootstrapped in batches bounded by BOOTSTRAP_BATCH_BYTES (1000 sources of a large
    window would not fit at once); the rounds do not depend on the batching."""
    import tasksim.profile as profile_mod

    profiles = profile_arrays(world["tx"], world["ty"], {**world["sources"], "third": world["sources"]["near"]})
    whole = bootstrap_profiles(profiles, world["ty"], 4, ("logme", "gbc"))
    monkeypatch.setattr(profile_mod, "BOOTSTRAP_BATCH_BYTES", 1)  # one source per batch
    calls = []
    real = metrics.bootstrap_many
    monkeypatch.setattr(profile_mod.metrics, "bootstrap_many",
                        lambda f, *a, **k: calls.append(len(f)) or real(f, *a, **k))
    batched = bootstrap_profiles(profiles, world["ty"], 4, ("logme", "gbc"))
    assert calls == [1, 1, 1]
    assert len(whole[0].bootstrap) == 4
    for a, b in zip(batched, whole):
        for ra, rb in zip(a.bootstrap, b.bootstrap, strict=True):
            assert ra == pytest.approx(rb, rel=1e-9)


def test_bootstrap_needs_two_views(world: dict) -> None:
    profiles = profile_arrays(world["tx"], world["ty"], {"near": world["sources"]["near"]})
    assert bootstrap_profiles(profiles, world["ty"], 5, ("logme",)) == profiles
    assert all(p.bootstrap == () for p in bootstrap_profiles(profiles, world["ty"], 5, ("logme",)))


def test_catalogue_is_the_one_list() -> None:
    from tasksim import rank

    assert TRANSFER_MEASURES == ("logme", "hscore_regularized", "gbc", "transrate", "knn_accuracy", "ridge_probe_accuracy",
                                 "lda_probe_accuracy", "leep", "nce")
    assert rank.MEASURE_DIRECTIONS is catalog.DIRECTIONS and rank.DEFAULT_WEIGHTS is catalog.DEFAULT_WEIGHTS
    assert set(catalog.BOOTSTRAP_MEASURES) <= set(TRANSFER_MEASURES)
    assert catalog.PROBABILITY_MEASURES == {"leep", "nce"}
    for m in catalog.CATALOG.values():
        assert m.direction in (-1, 1)
        if m.family == "distance":
            assert m.direction == (1 if m.name == "coverage" else -1), m.name
        if m.family in ("transferability", "transfer_gain"):
            assert m.direction == 1 and m.needs_target_labels, m.name
        if m.needs_source_probs:
            assert m.name in catalog.PROFILE_MEASURES
    # every measure the engine computes by name has an entry
    assert set(metrics.PROFILE_MEASURES) | set(catalog.OPTIONAL_TRANSFER_MEASURES) <= set(catalog.CATALOG)
    with pytest.raises(KeyError, match="unknown measure 'nope'"):
        catalog.measure("nope")


def test_integer_class_codes_are_said_once_and_not_matched(world: dict, caplog: pytest.LogCaptureFixture) -> None:
    coded = {n: SourceArrays(s.features, [y[1:] for y in s.labels], s.view) for n, s in world["sources"].items()}
    with caplog.at_level("WARNING", logger="tasksim.profile"):
        profiles = profile_arrays(world["tx"], [y[1:] for y in world["ty"]], coded)
    assert all("label_exact_overlap" not in p.measures and "granularity_ratio" in p.measures for p in profiles)
    said = [r.message for r in caplog.records if "integer codes" in r.message]
    assert len(said) == 1 and "the production window, near, far" in said[0]


def test_a_duplicate_of_the_target_is_the_closest_source(world: dict) -> None:
    """Distances call a copy of the target closest; the domain classifier's below-chance AUC on
    shared rows must not rank it as closer than identical, nor as far."""
    twin_x, twin_y = _data(9, 90, 6, 0.0)
    sources = {"copy": SourceArrays(world["tx"].clone(), list(world["ty"])),
               "twin": SourceArrays(twin_x, twin_y), "far": world["sources"]["far"]}
    by = {p.source: p.measures for p in profile_arrays(world["tx"], world["ty"], sources)}
    assert by["copy"]["domain_classifier_auc"] < 0.5 and by["copy"]["domain_separability"] == 0.0
    assert by["far"]["domain_separability"] > 0.9
    for key in ("mmd2", "frechet", "domain_separability", "otdd"):
        assert by["copy"][key] <= by["twin"][key] + 1e-9 < by["far"][key], key
    assert metrics.domain_separability(0.75) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="auc must be in"):
        metrics.domain_separability(1.5)


def test_metrics_namespace_lists_every_family_export_once() -> None:
    import importlib
    import subprocess
    import sys

    from tasksim.metrics import _FAMILIES

    for family, names in _FAMILIES.items():
        assert set(names) == set(importlib.import_module(f"tasksim.metrics.{family}").__all__), family
    assert len(metrics.__all__) == len(set(metrics.__all__))
    light = subprocess.run([sys.executable, "-c", "import sys, tasksim.config, tasksim.metrics.catalog; "
                            "print('torch' in sys.modules)"], capture_output=True, text=True, check=True)
    assert light.stdout.strip() == "False"  # the config validates weights without loading torch


def test_source_memo_evicts_the_least_recently_used_beyond_its_budget() -> None:
    from tasksim.profile import SourceMemo, _SourceState

    memo = SourceMemo(max_bytes=100_000)  # room for two 100 x 100 float32 feature matrices
    for i in range(4):
        memo.put(f"k{i}", _SourceState(None, "f", torch.zeros(100, 100), None, None, {}))
        if i == 1:
            assert memo.get("k0") is not None  # k0 is now the most recently used
    assert len(memo) == 2 and memo.get("k1") is None and memo.get("k3") is not None
    memo.put("k3", _SourceState(None, "g", torch.zeros(10, 10), None, None, {}))  # replaced, not added
    assert len(memo) == 2 and memo.get("k3").fingerprint == "g"
    memo.clear()
    assert len(memo) == 0 and memo.hits == 0


def test_source_memo_drops_mmd_blocks_before_whole_entries() -> None:
    # three sources whose rows fit the budget but not with their MMD blocks: blocks go (least
    # recently used first), every entry stays, so a cycle's sweep over them still hits
    from tasksim.profile import SourceMemo, _SourceState

    rows = torch.randn(100, 40)
    block = mmd_self_block(rows, seed=0)  # 4950 pairs: ~40 KB, more than the rows' 16 KB
    memo = SourceMemo(max_bytes=3 * 16_000 + block.nbytes + 1000)  # room for one block only
    for i in range(3):
        memo.put(f"k{i}", _SourceState(None, "f", rows.clone(), None, None, {}, mmd_block=mmd_self_block(rows)))
    kept = [memo.get(f"k{i}") for i in range(3)]
    assert all(s is not None for s in kept) and len(memo) == 3
    assert [s.mmd_block is not None for s in kept] == [False, False, True]  # the newest keeps its block
    assert memo._bytes == sum(s.nbytes for s in kept) <= memo.max_bytes
