"""Composite variants the product does not use, scored on the suite's saved runs (issue 12).

    python bench/composite_variants.py docs/cpu/transfer_suite_{images,tabular,text}_2026-12-07.json.gz

Two ideas for a composite that holds across modalities, each tried against the default
``RankingConfig()`` on both ground truths (``lp``: linear-probe accuracy, the headline; ``ft``:
fine-tune accuracy) and, for bagging, across the suite's whole family of product configurations
(``transfer_suite.config_family``):

- **Guard agreement**: a distance criterion's weight is scaled by ``max(0, rho)``, ``rho`` the
  Spearman correlation across the sources between the distance (oriented, robust z) and the
  weighted mean of the transferability criteria in use (robust z). A distance is trusted for a
  target only as far as it agrees with the transfer evidence, so a heavy distance guard cannot
  drown the transferability measures where distances mislead (tabular), whatever its weight.
- **Bagged composite**: each source's score is the mean over the confidence bootstrap's rounds of
  the composite on that round's re-scored measures (the rounds a cycle already computes for its
  top-1 probabilities), instead of the composite of the full-sample measures.

Neither was adopted: ``docs/decisions.md`` section 2 has the numbers and the reasons.

Session 15 added two more (``--factor``, ``--feasibility``), also not adopted:

- **One-factor weights**: each transferability criterion's weight is scaled, per target window, by
  ``l / (1 - l^2)``, ``l`` its loading on the single factor that best explains the Spearman
  correlations between the criteria across the sources (the spectral meta-learner's idea: under
  errors independent given the true order, corr(a, b) = l_a l_b, and the best linear combination
  weighs each by ``l / (1 - l^2)``). It needs no benchmark to fit.
- **In-sample feasibility**: does *any* weight set, fitted on all four benchmarks at once (the
  thing leave-one-benchmark-out forbids), beat every single measure on every benchmark? A seeded
  random family of weight sets over the transferability measures and the MMD² guard, then
  coordinate ascent from the two best on the smallest margin over the best single measure.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import transfer_suite as suite

from tasksim import mcda
from tasksim import rank as rank_module
from tasksim.config import RankingConfig
from tasksim.metrics import catalog
from tasksim.profile import SourceProfile

# the default's transferability weights (kNN, LDA probe, LogME, GBC, LEEP, regularised H-score)
_EVIDENCE = {m: w for m, w in catalog.DEFAULT_WEIGHTS.items()
             if m in catalog.CATALOG and catalog.CATALOG[m].family == "transferability" and w > 0}
# weight sets for the guard-agreement comparison: the default, and guards two to four times heavier
GUARD_SETS: dict[str, dict[str, float]] = {
    "default weights (MMD² 0.5)": {**_EVIDENCE, "mmd2": 0.5},
    "MMD² 1": {**_EVIDENCE, "mmd2": 1.0},
    "MMD² 2": {**_EVIDENCE, "mmd2": 2.0},
    "MMD², OTDD, separability, Fréchet 0.5 each": {**_EVIDENCE, "mmd2": 0.5, "otdd": 0.5,
                                                     "domain_separability": 0.5, "frechet": 0.5},
}

# session 14: one factor of the default's weights at a time (robust_z), added to the suite's family
# for a leave-one-benchmark-out over four benchmarks (--lobo)
_DEFAULT_EVIDENCE = {**_EVIDENCE, "mmd2": 0.5}
SINGLE_FACTOR_SETS: dict[str, dict[str, float]] = {
    "LEEP 2": {**_DEFAULT_EVIDENCE, "leep": 2.0},
    "LEEP 2, no guard": {**_EVIDENCE, "leep": 2.0},
    "+ NCE 1": {**_DEFAULT_EVIDENCE, "nce": 1.0},
    "LogME 2": {**_DEFAULT_EVIDENCE, "logme": 2.0},
    "kNN 0.5": {**_DEFAULT_EVIDENCE, "knn_accuracy": 0.5},
    "GBC 0.5": {**_DEFAULT_EVIDENCE, "gbc": 0.5},
    "regularised H-score 2": {**_DEFAULT_EVIDENCE, "hscore_regularized": 2.0},
}


def guard_agreement_weights(measures: Mapping[str, Mapping[str, float]], weights: Mapping[str, float]
                            ) -> dict[str, float]:
    """``weights`` with every distance criterion's weight scaled by ``max(0, rho)``: ``rho`` its
    Spearman correlation, over the sources that have it, with the weighted mean of the robust z
    of the transferability criteria in use (0 with fewer than three such sources)."""
    family = {c: m.family for c, m in catalog.CATALOG.items()}
    in_use = [c for c, w in weights.items() if w > 0 and c in family
              and any(c in v and np.isfinite(v[c]) for v in measures.values())]
    normalised = {}
    for c in in_use:
        values = {s: v[c] for s, v in measures.items() if c in v and np.isfinite(v[c])}
        normalised[c] = mcda.normalize(values, rank_module.MEASURE_DIRECTIONS[c], "robust_z") if len(values) > 1 else {}
    evidence = [c for c in in_use if family[c] == "transferability"]
    out = dict(weights)
    for c in in_use:
        if family[c] != "distance":
            continue
        shared = [s for s in normalised[c] if any(s in normalised[e] for e in evidence)]
        rho = 0.0
        if len(shared) >= 3:
            consensus = [np.average([normalised[e][s] for e in evidence if s in normalised[e]],
                                    weights=[weights[e] for e in evidence if s in normalised[e]]) for s in shared]
            r = spearmanr([normalised[c][s] for s in shared], consensus).statistic
            rho = float(r) if np.isfinite(r) else 0.0  # a constant column: no agreement either way
        out[c] = weights[c] * max(rho, 0.0)
    return out


Reweight = Callable[[Mapping[str, Mapping[str, float]], Mapping[str, float]], dict[str, float]]


def reweighted_composite(reweight: Reweight, measures: Mapping[str, Mapping[str, float]],
                         rounds: Mapping[str, Sequence[Mapping[str, float]]] | None,
                         config: RankingConfig) -> dict[str, float]:
    """The product composite with ``config``'s weights (over the defaults) re-weighted for this
    window by ``reweight(measures, weights)``."""
    weights = reweight(measures, {**rank_module.DEFAULT_WEIGHTS, **config.weights})
    return suite.product_composite(measures, rounds, config.model_copy(update={"weights": weights}))


def guard_agreement_composite(measures: Mapping[str, Mapping[str, float]],
                              rounds: Mapping[str, Sequence[Mapping[str, float]]] | None,
                              config: RankingConfig) -> dict[str, float]:
    return reweighted_composite(guard_agreement_weights, measures, rounds, config)


def bagged_composite(measures: Mapping[str, Mapping[str, float]],
                     rounds: Mapping[str, Sequence[Mapping[str, float]]] | None,
                     config: RankingConfig) -> dict[str, float]:
    """The mean over the bootstrap rounds of the composite with the ranking's effective weights
    (reliability included); the plain composite when there are no rounds."""
    profiles = [SourceProfile(s, "ok", measures=dict(m), bootstrap=tuple((rounds or {}).get(s, ())))
                for s, m in measures.items()]
    terms = [rank_module.SourceTerms(name=s, cost=1.0) for s in measures]
    ranking = rank_module.rank_sources(profiles, terms, config)
    plain = {e.source: e.score for e in ranking.entries}
    candidates = {s: {**{k: v for k, v in m.items() if np.isfinite(v)}, "cost": 1.0} for s, m in measures.items()}
    per_round = rank_module._bootstrap_rounds(candidates, {p.source: p for p in profiles}, ranking.weights)
    if not per_round:
        return plain
    scores = [rank_module._composite(r, ranking.weights, config) for r in per_round]
    return {s: float(np.mean([sc[s] for sc in scores])) for s in plain}


def one_factor_loadings(correlation: np.ndarray, iterations: int = 50) -> np.ndarray:
    """Loadings of the one-factor model ``R_ab = l_a l_b`` (a != b), by principal-axis iteration:
    the diagonal replaced by the communalities ``l^2`` until they settle (clipped below 0.98)."""
    communality = np.full(correlation.shape[0], 0.5)
    loadings = np.zeros(correlation.shape[0])
    for _ in range(iterations):
        reduced = correlation.copy()
        np.fill_diagonal(reduced, communality)
        values, vectors = np.linalg.eigh(reduced)
        loadings = vectors[:, -1] * np.sqrt(max(values[-1], 0.0))
        loadings = -loadings if loadings.sum() < 0 else loadings
        communality = np.clip(loadings ** 2, 0.0, 0.98)
    return loadings


def one_factor_weights(measures: Mapping[str, Mapping[str, float]], weights: Mapping[str, float]
                       ) -> dict[str, float]:
    """``weights`` with every transferability criterion's weight times ``l / (1 - l^2)``, ``l`` its
    one-factor loading (clipped to [0, 0.95]) over the sources that have them all (unchanged with
    fewer than five such sources)."""
    family = {c: m.family for c, m in catalog.CATALOG.items()}
    evidence = [c for c, w in weights.items() if w > 0 and family.get(c) == "transferability"]
    sources = [s for s, v in measures.items() if all(c in v and np.isfinite(v[c]) for c in evidence)]
    out = dict(weights)
    if len(sources) < 5 or len(evidence) < 3:
        return out
    table = np.array([[measures[s][c] for c in evidence] for s in sources])
    correlation = np.nan_to_num(np.atleast_2d(spearmanr(table).statistic))  # a constant column: no agreement
    loadings = np.clip(one_factor_loadings(correlation), 0.0, 0.95)
    for c, loading in zip(evidence, loadings):
        out[c] = weights[c] * loading / (1.0 - loading ** 2)
    return out


Row = Callable[[suite.TargetRun, str], dict[str, float]]


def _benches(runs: Sequence[suite.TargetRun]) -> list[str]:
    """The suite's benchmarks these runs hold, in the suite's order."""
    return [b for b in suite.BENCHMARKS if any(r.benchmark == b for r in runs)]


def _means(runs: Sequence[suite.TargetRun], rows: Mapping[str, Row], gt: str) -> dict[str, list[float]]:
    table = suite.tau_table(runs, rows, gt=gt, seed=0)
    per_bench = {b: suite.bench_mean(table, runs, b) for b in _benches(runs)}
    return {name: [per_bench[b][name] for b in _benches(runs)] for name in rows}


# the weight sets --feasibility searches: the transferability measures and the guard
_SEARCHED = ("knn_accuracy", "lda_probe_accuracy", "logme", "gbc", "leep", "hscore_regularized", "nce", "mmd2")


def feasibility(runs: Sequence[suite.TargetRun], random_sets: int = 80, seed: int = 0) -> None:
    """Print the weight sets with the largest smallest margin over the best single measure of each
    benchmark, fitted in-sample on all of them (see the module's docstring)."""
    benches = _benches(runs)
    singles = _means(runs, {m: r for m, r in suite.base_rows(suite.measured(runs)).items()
                            if m in suite.SINGLE_MEASURES}, "lp")
    best_single = np.array([max(v[i] for v in singles.values()) for i in range(len(benches))])
    print("best single measure per benchmark (" + ", ".join(benches) + "): " + ", ".join(
        f"{max(singles, key=lambda m, i=i: singles[m][i])} {best_single[i]:.3f}" for i in range(len(benches))))
    scored: dict[tuple[float, ...], np.ndarray] = {}

    def score(weights: tuple[float, ...]) -> np.ndarray:
        if weights not in scored:
            config = suite.candidate_config({m: w for m, w in zip(_SEARCHED, weights) if w > 0})
            row = {"x": lambda run, key: suite.product_composite(run.measures[key], run.rounds.get(key), config)}
            scored[weights] = np.array(_means(runs, row, "lp")["x"])
        return scored[weights]

    def margin(weights: tuple[float, ...]) -> float:
        return float((score(weights) - best_single).min())

    rng = np.random.default_rng(seed)
    levels = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0)
    while len(scored) < random_sets:
        weights = tuple(float(rng.choice(levels[:-1])) if m != "mmd2" else float(rng.choice((0.0, 0.5)))
                        for m in _SEARCHED)
        if sum(w > 0 for w in weights[:-1]) >= 2:
            score(weights)
    for start in sorted(scored, key=margin, reverse=True)[:2]:
        current, best, improved = start, margin(start), True
        while improved:  # coordinate ascent on the smallest margin
            improved = False
            for i in range(len(_SEARCHED)):
                for level in levels:
                    trial = current[:i] + (level,) + current[i + 1:]
                    if trial != current and margin(trial) > best + 1e-4:
                        current, best, improved = trial, margin(trial), True
        print(f"from {dict(zip(_SEARCHED, start))}: best {dict(zip(_SEARCHED, current))} -> "
              + " / ".join(f"{v:.3f}" for v in score(current)) + f"; smallest margin {best:+.3f}")
    feasible = [w for w in scored if margin(w) > 0]
    print(f"{len(feasible)} of {len(scored)} weight sets scored beat every single measure on every benchmark, in-sample")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="the suite's saved runs (--json of transfer_suite.py)")
    ap.add_argument("--no-family", action="store_true", help="skip bagging over the 16-configuration family (slow)")
    ap.add_argument("--versus", metavar="CONFIGURATION", default=None,
                    help="only the two-level bootstrap of the default against one configuration of the family "
                         "(its name as in docs/transfer_benchmark.md, e.g. 'five + LDA probe, no guard; robust_z')")
    ap.add_argument("--lobo", action="store_true",
                    help="only the leave-one-benchmark-out over the suite's family plus SINGLE_FACTOR_SETS (robust_z)")
    ap.add_argument("--factor", action="store_true", help="only the one-factor weights against the default")
    ap.add_argument("--feasibility", action="store_true",
                    help="only the in-sample search for weights above every single measure everywhere (~5 min)")
    args = ap.parse_args(argv)
    runs = [r for path in args.runs for r in suite._load(path)[0]]
    if args.feasibility:
        feasibility(runs)
        return 0
    if args.factor:
        plus_nce = suite.candidate_config({**_DEFAULT_EVIDENCE, "nce": 1.0})
        rows: dict[str, Row] = {
            "default": lambda run, key: suite.product_composite(run.measures[key], run.rounds.get(key)),
            "one-factor weights": lambda run, key: reweighted_composite(one_factor_weights, run.measures[key],
                                                                         run.rounds.get(key), RankingConfig()),
            "one-factor weights, NCE added": lambda run, key: reweighted_composite(
                one_factor_weights, run.measures[key], run.rounds.get(key), plus_nce)}
        print("| row | " + " | ".join(_benches(runs)) + " |\n" + "|---" * (len(_benches(runs)) + 1) + "|")
        for name, values in _means(runs, rows, "lp").items():
            print(f"| {name} | " + " | ".join(f"{v:+.3f}" for v in values) + " |")
        return 0
    if args.lobo:
        got = suite.config_lobo(runs, {**suite.CONFIG_CANDIDATES, **SINGLE_FACTOR_SETS}, normalizations=("robust_z",))
        for b in _benches(runs):
            held = got["held_out"][b]
            print(f"{b}: chosen on the others {held['chosen']!r} (their mean {held['train_wtau']:.3f}); "
                  f"held out {held['held_out_wtau']:.3f}")
        print("\n| configuration | " + " | ".join(_benches(runs)) + " | mean |\n" + "|---" * (len(_benches(runs)) + 2) + "|")
        means = got["means"]
        for name in sorted(means, key=lambda n: -float(np.mean(list(means[n].values())))):
            print(f"| {name} | " + " | ".join(f"{means[name][b]:.3f}" for b in _benches(runs))
                  + f" | {float(np.mean(list(means[name].values()))):.3f} |")
        return 0
    if args.versus:
        other = suite.config_family()[args.versus]
        pair: dict[str, Row] = {
            suite.DEFAULT_ROW: lambda run, key: suite.product_composite(run.measures[key], run.rounds.get(key)),
            args.versus: lambda run, key: suite.product_composite(run.measures[key], run.rounds.get(key), other)}
        for b in _benches(runs):
            got = suite.two_level_bootstrap([r for r in runs if r.benchmark == b], pair, suite.DEFAULT_ROW)[b][args.versus]
            print(f"{b}: {args.versus} {got['mean']:+.3f}; P(default better) {got['p_reference_better']:.3f}; "
                  f"5-95% of (default - it) {got['diff_p05']:+.3f} .. {got['diff_p95']:+.3f}")
        return 0

    rows: dict[str, Row] = {}
    for name, weights in GUARD_SETS.items():
        config = suite.candidate_config(weights)
        rows[name] = lambda run, key, c=config: suite.product_composite(run.measures[key], run.rounds.get(key), c)
        rows[name + ", guard agreement"] = (
            lambda run, key, c=config: guard_agreement_composite(run.measures[key], run.rounds.get(key), c))
    default = RankingConfig()
    rows["default, bagged"] = lambda run, key: bagged_composite(run.measures[key], run.rounds.get(key), default)
    for gt in ("lp", "ft"):
        print(f"\n| {gt}: row | " + " | ".join(_benches(runs)) + " |\n" + "|---" * (len(_benches(runs)) + 1) + "|")
        for name, values in _means(runs, rows, gt).items():
            print(f"| {name} | " + " | ".join(f"{v:+.3f}" for v in values) + " |")

    if not args.no_family:
        family = suite.config_family()
        for gt in ("lp", "ft"):
            pair: dict[str, Row] = {}
            for name, config in family.items():
                pair[name] = lambda run, key, c=config: suite.product_composite(run.measures[key], run.rounds.get(key), c)
                pair[name + " BAGGED"] = lambda run, key, c=config: bagged_composite(run.measures[key], run.rounds.get(key), c)
            means = _means(runs, pair, gt)
            diff = np.array([[b - p for b, p in zip(means[n + " BAGGED"], means[n])] for n in family])
            print(f"\n{gt}: bagged minus plain over the {len(family)} configurations, per benchmark ({', '.join(_benches(runs))}): "
                  f"mean {np.round(diff.mean(0), 4).tolist()}, min {np.round(diff.min(0), 4).tolist()}, "
                  f"max {np.round(diff.max(0), 4).tolist()}, bagged better in {(diff > 0).sum(0).tolist()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
