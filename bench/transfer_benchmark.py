"""Do tasksim's similarity / transferability measures predict real transfer outcomes?

    python bench/transfer_benchmark.py                       # full run (9 targets x 15 sources)
    python bench/transfer_benchmark.py --quick               # reduced sizes, 1 fine-tune seed
    python bench/transfer_benchmark.py --json out.json       # also save every raw number
    python bench/transfer_benchmark.py --from-json out.json  # re-run only the evaluation on them

Data: real corpora that ship in packages (see ``bench/transfer_data.py``), embedded once with the
packaged all-MiniLM-L6-v2 and cached in ``bench/.cache/``.

For each (target, source) pair, exactly what the product computes (``tasksim.profile``):
- the source's model is ``tasksim.heads.fit_source_head`` on the source's MiniLM embeddings;
- transferability measures (``tasksim.profile.profile_arrays``) on the target's small labelled train
  split seen through the head (``head.hidden``; ``head.probs`` for LEEP / NCE), and the gains over
  the no-transfer baseline (``logme_gain``, ``knn_gain``);
- distribution, label and data-quality criteria (MMD^2, Frechet, OTDD, coverage, label shift,
  exact / semantic label overlap, label noise, duplicates, missing values) between the source's
  and the target train split's MiniLM embeddings, as ``tasksim.profile._Profiler.measures`` does;
- the composite: ``tasksim.rank.rank_sources`` over ``SourceProfile`` objects (default weights).
Extra single measures the profile does not compute (H-score, linear probe, SFDA, PARC, NLEEP)
are reported alone.

Ground truth, measured on a held-out target test split (the measures never see it, nor the
ground-truth training pool):
- (a) ``lp``: logistic regression on the target train split plus the ground-truth pool in the
  source's view (``head.hidden``), test accuracy (the headline);
- (b) ``lp_ll``: the same probe's mean test log-likelihood of the true class (lower variance than
  accuracy: every example counts by how confident the probe is, not by a 0/1 outcome);
- (c) ``ft``: an MLP whose first layer is the source head's (new output layer), fine-tuned
  entirely on the target train split (Adam, fixed seeds), test accuracy averaged over seeds;
- (d) ``lp_window``: the probe of (a) trained on the train split alone (the earlier definition).
A noise ceiling (each ground truth on one random half of the test split as the predictor of the
other half's) bounds what any measure can score.

Reports Kendall tau and weighted tau of every measure, the kNN and linear-probe baselines and the
composite against each ground truth, per target and averaged, and a leave-one-target-out fit of
composite weights (fitted on the other targets, reported on the held-out one).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pyarrow as pa

from tasksim import mcda, metrics
from tasksim.config import RankingConfig
from tasksim.heads import SourceHead, fit_source_head
from tasksim.metrics import quality
from tasksim.profile import TRANSFER_MEASURES as PROFILE_TRANSFER
from tasksim.profile import SourceArrays, SourceProfile, SourceView, profile_arrays
from tasksim.rank import BOOTSTRAP_MEASURES, DEFAULT_WEIGHTS, MEASURE_DIRECTIONS, SourceTerms, rank_sources

# What tasksim.profile (shared_space_measures + profile_sources) computes for a
# labelled data-only source with a text encoder; the composite sees exactly these.
PROFILE_DESCRIBE = ("mmd2", "frechet", "coverage", "duplicate_rate", "missing_rate", "label_noise_rate",
                    "label_shift", "label_exact_overlap", "label_semantic_overlap", "granularity_ratio", "otdd",
                    "domain_classifier_auc", "domain_separability")
TRANSFER_MEASURES = tuple(PROFILE_TRANSFER)  # logme, hscore_regularized, gbc, transrate, knn, leep, nce
PRODUCT_MEASURES = PROFILE_DESCRIBE + TRANSFER_MEASURES + ("logme_gain", "knn_gain", "negative_transfer")
# the profile's measures that are ranking criteria (have a direction): the single-measure rows
PRODUCT_CRITERIA = tuple(m for m in PRODUCT_MEASURES if m in MEASURE_DIRECTIONS)
# measures tasksim.metrics has but the profile stage does not compute today (reported alone)
EXTRA_MEASURES = tuple(m for m in ("hscore", "linear_probe_accuracy", "sfda", "parc", "nleep")
                       if m not in TRANSFER_MEASURES)
BASELINES = ("knn_accuracy", "linear_probe_accuracy")
GROUND_TRUTHS = ("lp", "lp_ll", "ft", "lp_window")
# the weight search's objective: the two probe ground truths (fine-tuning barely separates sources)
FIT_GROUND_TRUTHS = ("lp", "lp_ll")
FIT_TIE_DRAWS = 5  # seeded random tie-breaks per tied candidate and target in the weight search
GROUND_TRUTH_TITLES = {
    "lp": "linear-probe accuracy (source's view, window + ground-truth pool)",
    "lp_ll": "linear-probe test log-likelihood (same probe)",
    "ft": "fine-tune accuracy (window only)",
    "lp_window": "linear-probe accuracy trained on the window alone (earlier definition)",
}
CEILING_ROW = "[noise ceiling: test half A predicts half B]"
BOOT_CEILING_ROW = "[noise ceiling, full test split: bootstrap estimate]"
LP_ROW = "[ground truth lp as the predictor]"
DEFAULT_ROW = "composite (default weights)"
LOTO_ROW = "composite, LOTO-fitted weights (product measures)"
# measures the profile carries only to tell the ranking how noisy a criterion is
STANDARD_ERRORS = ("label_noise_rate_se",)
NORMALIZATIONS = ("minmax", "rank", "robust_z")

HEAD_SEED = 0  # tasksim.config.SamplingConfig.seed default: the seed the product fits heads with


@dataclass(frozen=True)
class Protocol:
    ft_seeds: tuple[int, ...] = (0, 1, 2)
    ft_epochs: int = 30
    ft_lr: float = 1e-3
    ft_batch: int = 32
    ft_weight_decay: float = 1e-4
    lp_c: float = 1.0
    search_candidates: int = 3000
    search_seed: int = 0


# =============================================================================================
# ground truth
# =============================================================================================

def linear_probe_test_accuracy(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, yte: np.ndarray,
                               c: float = 1.0) -> float:
    """Standardise on train, fit scikit-learn's multinomial logistic regression, test accuracy."""
    return float(linear_probe_test_scores(xtr, ytr, xte, yte, c)[0].mean())


def linear_probe_test_scores(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, yte: np.ndarray,
                             c: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Per test example, for the probe of :func:`linear_probe_test_accuracy`: (is it right, log
    probability of the true class). ``ytr`` must hold every class of ``yte``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(xtr)
    clf = LogisticRegression(C=c, max_iter=3000)
    clf.fit(scaler.transform(xtr), ytr)
    proba = clf.predict_proba(scaler.transform(xte))
    col = np.searchsorted(clf.classes_, yte)
    correct = clf.classes_[proba.argmax(1)] == yte
    return correct, np.log(np.clip(proba[np.arange(len(yte)), col], 1e-12, None))


def random_head(x: torch.Tensor, hidden: int, seed: int) -> dict[str, torch.Tensor]:
    """First layer as ``fit_source_head`` initialises it (no training), standardised on ``x``."""
    d = x.shape[1]
    gen = torch.Generator().manual_seed(seed)
    w1 = torch.randn(hidden, d, generator=gen) * (2.0 / d) ** 0.5
    return {"mean": x.mean(0), "scale": x.std(0).clamp_min(1e-6), "w1": w1, "b1": torch.zeros(hidden)}


def finetune_test_accuracy(init: Mapping[str, torch.Tensor], xtr: torch.Tensor, ytr: torch.Tensor,
                           xte: torch.Tensor, yte: torch.Tensor, n_classes: int, seed: int,
                           p: Protocol) -> float:
    """MLP ``relu((x - mean) / scale @ W1' + b1) @ W2' + b2``: W1, b1 from ``init``, a new output
    layer; every weight fine-tuned with Adam on minibatches; test accuracy after ``ft_epochs``."""
    return float(finetune_test_correct(init, xtr, ytr, xte, yte, n_classes, seed, p).mean())


def finetune_test_correct(init: Mapping[str, torch.Tensor], xtr: torch.Tensor, ytr: torch.Tensor,
                          xte: torch.Tensor, yte: torch.Tensor, n_classes: int, seed: int,
                          p: Protocol) -> np.ndarray:
    """Per test example: does the fine-tuned MLP of :func:`finetune_test_accuracy` get it right."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    mean, scale = init["mean"].float(), init["scale"].float()
    w1 = init["w1"].detach().clone().float().requires_grad_()
    b1 = init["b1"].detach().clone().float().requires_grad_()
    hidden = w1.shape[0]
    w2 = (torch.randn(n_classes, hidden, generator=gen) * (1.0 / hidden) ** 0.5).requires_grad_()
    b2 = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.Adam([w1, b1, w2, b2], lr=p.ft_lr, weight_decay=p.ft_weight_decay)
    xs = (xtr.float() - mean) / scale
    n = xs.shape[0]
    with torch.enable_grad():
        for _ in range(p.ft_epochs):
            order = torch.randperm(n, generator=gen)
            for start in range(0, n, p.ft_batch):
                idx = order[start:start + p.ft_batch]
                logits = torch.relu(xs[idx] @ w1.T + b1) @ w2.T + b2
                loss = torch.nn.functional.cross_entropy(logits, ytr[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    with torch.no_grad():
        pred = (torch.relu((xte.float() - mean) / scale @ w1.T + b1) @ w2.T + b2).argmax(1)
    return (pred == yte).numpy()


# =============================================================================================
# scores: what the product computes for one (target, source) pair
# =============================================================================================

def profile_target(views: Mapping[str, SourceView], source_x: Mapping[str, torch.Tensor],
                   source_y: Mapping[str, Sequence[str]], source_texts: Mapping[str, Sequence[str]],
                   tgt_x: torch.Tensor, tgt_y: Sequence[str], embed_labels=None, extras: bool = True,
                   seed: int = HEAD_SEED, bootstrap_rounds: int = 0
                   ) -> tuple[dict[str, dict[str, float]], dict[str, tuple[dict[str, float], ...]]]:
    """Every source's profile of one labelled target through the product's own pure entry point
    (``tasksim.profile.profile_arrays``: shared-space measures, batched transferability, no-transfer
    baseline and gains, and with ``bootstrap_rounds`` the confidence bootstrap of the bootstrap
    measures the default weights use), plus ``EXTRA_MEASURES``. ``views``: each source's view of
    ``tgt_x`` (its head's hidden layer and class probabilities). Returns (measures, bootstrap
    rounds) per source."""
    labels = list(tgt_y)
    arrays = {name: SourceArrays(source_x[name], list(source_y[name]), views[name],
                                 missing_rate=quality.missing_rate(pa.table({"text": list(source_texts[name])}),
                                                                   ["text"]))
              for name in views}
    boot = tuple(m for m in BOOTSTRAP_MEASURES if DEFAULT_WEIGHTS.get(m, 0.0) > 0)
    profiles = profile_arrays(tgt_x, labels, arrays, seed=seed, bootstrap_rounds=bootstrap_rounds,
                              bootstrap_measures=boot, embed_label_names=embed_labels)
    failed = {p.source: p.error for p in profiles if p.status != "ok"}
    if failed:
        raise RuntimeError(f"profile failed: {failed}")
    out = {p.source: dict(p.measures) for p in profiles}
    if extras and EXTRA_MEASURES:
        for name in views:
            out[name].update(metrics.transferability_profile(views[name].features, labels,
                                                             source_probs=views[name].probs,
                                                             measures=list(EXTRA_MEASURES), seed=seed))
    return out, {p.source: p.bootstrap for p in profiles}


def _default_row(method: str) -> str:
    return DEFAULT_ROW if method == RankingConfig().normalization else f"composite (default weights, {method} normalisation)"


def composite_scores(measures: Mapping[str, Mapping[str, float]], weights: Mapping[str, float] | None,
                     include: Sequence[str] = PRODUCT_MEASURES, normalization: str | None = None,
                     bootstrap: Mapping[str, tuple[dict[str, float], ...]] | None = None) -> dict[str, float]:
    """``rank_sources`` on one target's profiles holding the ``include`` measures (by default what
    the profile stage computes), equal costs.

    ``weights=None``: the product's defaults. Otherwise the given weights replace the defaults
    entirely (every other criterion weighs 0). ``normalization=None``: ``RankingConfig``'s default.
    With ``bootstrap`` (each source's bootstrap rounds from ``profile_target``, and the standard
    errors the profile carries, e.g. ``label_noise_rate_se``) the ranking runs as in a cycle: its
    bootstrap sets the reliability of each criterion (``RankingConfig.reliability_weighting``).
    Without it every criterion is taken at its full weight, which the leave-one-target-out search
    also assumes."""
    profiles = [SourceProfile(name, "ok", measures={k: v for k, v in m.items() if k in include},
                              bootstrap=() if bootstrap is None else bootstrap[name])
                for name, m in measures.items()]
    sources = [SourceTerms(name=name, cost=1.0) for name in measures]
    extra = {} if normalization is None else {"normalization": normalization}
    if bootstrap is None:
        extra["bootstrap_rounds"] = 0
    if weights is None:
        config = RankingConfig(**extra)
    else:
        full = {k: 0.0 for k in set(DEFAULT_WEIGHTS) | set(MEASURE_DIRECTIONS)}
        full.update(weights)
        config = RankingConfig(weights=full, **extra)
    ranking = rank_sources(profiles, sources, config)
    return {e.source: e.score for e in ranking.entries}


# =============================================================================================
# evaluation
# =============================================================================================

def taus(score: Mapping[str, float], truth: Mapping[str, float]) -> tuple[float, float]:
    """(Kendall tau-b, weighted tau) of higher-is-better ``score`` against ``truth``."""
    names = sorted(truth)
    a = np.array([score[n] for n in names], dtype=float)
    b = np.array([truth[n] for n in names], dtype=float)
    if len(names) < 2 or not np.all(np.isfinite(a)) or np.ptp(a) == 0:
        return float("nan"), float("nan")
    return float(kendall_tau_b(a, b)), float(weighted_tau(a, b))


def kendall_tau_b(a: np.ndarray, b: np.ndarray) -> np.ndarray | float:
    """Kendall's tau-b (``scipy.stats.kendalltau``'s statistic, without the p-value that cost most
    of the evaluation's time) of every row of ``a`` (``(..., n)``) against ``b`` (``(n,)``):
    concordant minus discordant pairs over the geometric mean of the pairs untied in ``a`` and in
    ``b``; nan when either is constant."""
    a = np.asarray(a, dtype=float)
    b = np.broadcast_to(np.asarray(b, dtype=float), a.shape)
    sa = np.sign(a[..., :, None] - a[..., None, :])
    sb = np.sign(b[..., :, None] - b[..., None, :])
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sa * sb).sum((-1, -2)) / np.sqrt(np.count_nonzero(sa, axis=(-1, -2)).astype(float)
                                                 * np.count_nonzero(sb, axis=(-1, -2)))


def _weighted_tau_one_side(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Vigna's weighted tau with the additive hyperbolic weigher, the importance rank of each
    element being its position by decreasing (x, then y): a pair (i, j) weighs
    1 / (rank_i + 1) + 1 / (rank_j + 1)."""
    n = x.shape[-1]
    order = np.lexsort((y, x), axis=-1)[..., ::-1]
    rank = np.empty(x.shape, dtype=np.intp)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(n), x.shape), axis=-1)
    h = 1.0 / (rank + 1.0)
    w = h[..., :, None] + h[..., None, :]
    sx = np.sign(x[..., :, None] - x[..., None, :])
    sy = np.sign(y[..., :, None] - y[..., None, :])
    with np.errstate(invalid="ignore", divide="ignore"):
        return (w * sx * sy).sum((-1, -2)) / np.sqrt((w * (sx != 0)).sum((-1, -2)) * (w * (sy != 0)).sum((-1, -2)))


def weighted_tau(a: np.ndarray, b: np.ndarray) -> np.ndarray | float:
    """``scipy.stats.weightedtau(a, b)``'s statistic with its defaults (hyperbolic additive weigher,
    the mean of the values ranked by ``a`` and by ``b``) for every row of ``a`` (``(..., n)``)
    against ``b`` (``(n,)``) at once: the weight search scores thousands of candidates per target."""
    a = np.asarray(a, dtype=float)
    b = np.broadcast_to(np.asarray(b, dtype=float), a.shape)
    return (_weighted_tau_one_side(a, b) + _weighted_tau_one_side(b, a)) / 2


def _tie_broken_ranks(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each row's positions by increasing score, ties in a random order (untied rows keep their order)."""
    order = np.lexsort((rng.random(scores.shape), scores), axis=-1)
    ranks = np.empty(scores.shape)
    np.put_along_axis(ranks, order, np.broadcast_to(np.arange(scores.shape[-1], dtype=float), scores.shape), axis=-1)
    return ranks


def tie_broken_taus(score: Mapping[str, float], truth: Mapping[str, float], draws: int = 100,
                    seed: int = 0) -> tuple[float, float]:
    """Mean (Kendall tau-b, weighted tau) of ``score`` with its ties broken uniformly at random
    (``draws`` seeded orders). A ranking that ties sources leaves their order to chance when a
    source must be picked; tau-b instead drops tied pairs from its normaliser, so a predictor that
    orders its top and ties the rest can outscore one that also orders the rest better than chance.
    Scores without ties (and constant ones: n/a) are returned as :func:`taus` gives them."""
    names = sorted(truth)
    a = np.array([score[n] for n in names], dtype=float)
    if len(names) < 2 or not np.all(np.isfinite(a)) or np.ptp(a) == 0 or len(np.unique(a)) == len(a):
        return taus(score, truth)
    b = np.array([truth[n] for n in names], dtype=float)
    ranks = _tie_broken_ranks(np.broadcast_to(a, (draws, len(a))), np.random.default_rng(seed))
    return float(np.mean(kendall_tau_b(ranks, b))), float(np.mean(weighted_tau(ranks, b)))


def oriented(measures: Mapping[str, Mapping[str, float]], name: str) -> dict[str, float]:
    """One measure over the sources, signed so that higher means "predicted better"."""
    d = MEASURE_DIRECTIONS.get(name, 1)
    return {s: d * m.get(name, float("nan")) for s, m in measures.items()}


def _normalised_matrix(measures: Mapping[str, Mapping[str, float]], names: Sequence[str],
                       sources: Sequence[str]) -> np.ndarray:
    """Sources x criteria, normalised per criterion with 1 = best, exactly as ``rank_sources`` does
    with ``RankingConfig``'s default normalisation."""
    method = RankingConfig().normalization
    out = np.empty((len(sources), len(names)))
    for j, name in enumerate(names):
        u = mcda.normalize({s: measures[s][name] for s in sources}, MEASURE_DIRECTIONS[name], method)
        out[:, j] = [u[s] for s in sources]
    return out


def _candidate_weights(names: Sequence[str], n: int, seed: int) -> list[dict[str, float]]:
    """Every single criterion, then ``n`` seeded sparse candidates (1-5 criteria, weights 0.5/1/2)."""
    rng = np.random.default_rng(seed)
    cands = [{m: 1.0} for m in names]
    for _ in range(n):
        k = int(rng.integers(1, min(5, len(names)) + 1))
        chosen = rng.choice(len(names), size=k, replace=False)
        cands.append({names[i]: float(rng.choice([0.5, 1.0, 2.0])) for i in sorted(chosen)})
    return cands


def fit_weights(results: Mapping[str, TargetResult], train_targets: Sequence[str], names: Sequence[str],
                p: Protocol, candidates: Sequence[Mapping[str, float]] | None = None,
                ) -> tuple[dict[str, float], float]:
    """Weights maximising the mean weighted tau (over ``train_targets`` and ``FIT_GROUND_TRUTHS``), among
    ``candidates`` (default: the seeded random search of :func:`_candidate_weights`)."""
    # criteria that are constant (or missing) on every training target carry no information
    names = [m for m in names if any(
        len({r.measures[s].get(m) for s in r.measures}) > 1
        and all(math.isfinite(r.measures[s].get(m, float("nan"))) for s in r.measures)
        for r in (results[t] for t in train_targets))]
    mats = {}
    for t in train_targets:
        r = results[t]
        srcs = sorted(r.measures)
        mats[t] = (srcs, _normalised_matrix(r.measures, names, srcs))
    if candidates is None:
        candidates = _candidate_weights(names, p.search_candidates, p.search_seed)
    w = np.array([[cand.get(m, 0.0) for m in names] for cand in candidates])
    rng = np.random.default_rng(p.search_seed)
    objs = np.zeros(len(candidates))
    for t in train_targets:
        srcs, u = mats[t]
        comp = (u @ w.T / w.sum(1)).T  # candidates x sources
        # a candidate that ties sources (e.g. the class-name criteria alone) is scored with its
        # ties broken at random: tau-b would reward it for leaving the tail unordered
        tied = (np.diff(np.sort(comp, axis=1), axis=1) == 0).any(1)
        for g in FIT_GROUND_TRUTHS:
            truth = np.array([results[t].truth[g][s] for s in srcs])
            objs[~tied] += weighted_tau(comp[~tied], truth)
            if tied.any():
                objs[tied] += np.mean([weighted_tau(_tie_broken_ranks(comp[tied], rng), truth)
                                       for _ in range(FIT_TIE_DRAWS)], axis=0)
    objs /= len(train_targets) * len(FIT_GROUND_TRUTHS)
    objs[np.isnan(objs)] = -math.inf  # a candidate of criteria this training set drops
    best = int(np.flatnonzero(objs >= objs.max() - 1e-12)[0])  # the first of (nearly) equal objectives
    return dict(candidates[best]), float(objs[best])


LABEL_NAME_CRITERIA = ("label_shift", "label_exact_overlap", "label_semantic_overlap")


# =============================================================================================
# the run
# =============================================================================================

@dataclass
class TargetResult:
    name: str
    classes: tuple[str, ...]
    n_train: int
    n_gt_train: int
    n_test: int
    measures: dict[str, dict[str, float]] = field(default_factory=dict)  # source -> measure -> value
    truth: dict[str, dict[str, float]] = field(default_factory=dict)  # ground truth -> source -> value
    ft_per_seed: dict[str, list[float]] = field(default_factory=dict)
    baselines: dict[str, float] = field(default_factory=dict)  # no-transfer ground truths
    # ground truth -> source -> per test example (correct, or log-likelihood); truth is its mean
    per_example: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    # the product's default composite under each normalisation, ranked as in a cycle (views, bootstrap)
    composites: dict[str, dict[str, float]] = field(default_factory=dict)


def run_target(name: str, xtr: np.ndarray, ytr: Sequence[str], xgt: np.ndarray, ygt: Sequence[str],
               xte: np.ndarray, yte: Sequence[str], heads: Mapping[str, SourceHead],
               source_x: Mapping[str, np.ndarray], source_y: Mapping[str, Sequence[str]], p: Protocol,
               extras: bool = True, log=print, source_texts: Mapping[str, Sequence[str]] | None = None,
               embed_labels=None) -> TargetResult:
    """Profiles (the product's measures, on the train split ``xtr`` only) and every ground truth of
    every source for one target; the probes also train on the ground-truth pool ``xgt``."""
    classes = tuple(sorted(set(ytr)))
    idx = {c: i for i, c in enumerate(classes)}
    ytr_i = np.array([idx[c] for c in ytr])
    ylp_i = np.concatenate([ytr_i, np.array([idx[c] for c in ygt], dtype=ytr_i.dtype)])
    yte_i = np.array([idx[c] for c in yte])
    xtr_t, xte_t = torch.from_numpy(np.asarray(xtr, np.float32)), torch.from_numpy(np.asarray(xte, np.float32))
    xlp_t = torch.cat([xtr_t, torch.from_numpy(np.asarray(xgt, np.float32).reshape(-1, xtr_t.shape[1]))])
    ytr_t, yte_t = torch.from_numpy(ytr_i), torch.from_numpy(yte_i)
    res = TargetResult(name, classes, len(ytr), len(ygt), len(yte))
    res.truth = {g: {} for g in GROUND_TRUTHS}
    res.per_example = {g: {} for g in GROUND_TRUTHS}
    # no-transfer baselines (the probes on window + ground-truth pool, as "lp")
    res.baselines["lp_minilm"] = linear_probe_test_accuracy(xlp_t.numpy(), ylp_i, xte, yte_i, p.lp_c)
    lp_rand, ft_rand = [], []
    for seed in p.ft_seeds:
        init = random_head(xtr_t, 128, seed)
        view = lambda x, w=init: torch.relu((x - w["mean"]) / w["scale"] @ w["w1"].T + w["b1"]).numpy()
        lp_rand.append(linear_probe_test_accuracy(view(xlp_t), ylp_i, view(xte_t), yte_i, p.lp_c))
        ft_rand.append(finetune_test_accuracy(init, xtr_t, ytr_t, xte_t, yte_t, len(classes), seed, p))
    res.baselines["lp_random_head"] = float(np.mean(lp_rand))
    res.baselines["ft_scratch"] = float(np.mean(ft_rand))
    started = time.perf_counter()
    sx = {n: torch.from_numpy(np.asarray(source_x[n], np.float32)) for n in heads}
    texts = source_texts or {n: [f"row {i}" for i in range(len(source_y[n]))] for n in heads}
    views = {n: SourceView(h.hidden(xtr_t), h.probs(xtr_t)) for n, h in heads.items()}
    res.measures, rounds = profile_target(views, sx, source_y, texts, xtr_t, list(ytr), embed_labels, extras,
                                          bootstrap_rounds=RankingConfig().bootstrap_rounds)
    for method in NORMALIZATIONS:
        res.composites[_default_row(method)] = composite_scores(
            res.measures, None, include=PRODUCT_MEASURES + STANDARD_ERRORS, normalization=method, bootstrap=rounds)
    log(f"  {name:9s} profiles of {len(heads)} sources ({time.perf_counter() - started:.1f}s)")
    for src, head in heads.items():
        started = time.perf_counter()
        w = head.weights
        hte = head.hidden(xte_t).numpy()
        correct, loglik = linear_probe_test_scores(head.hidden(xlp_t).numpy(), ylp_i, hte, yte_i, p.lp_c)
        window_correct, _ = linear_probe_test_scores(head.hidden(xtr_t).numpy(), ytr_i, hte, yte_i, p.lp_c)
        init = {k: w[k] for k in ("mean", "scale", "w1", "b1")}
        ft = np.array([finetune_test_correct(init, xtr_t, ytr_t, xte_t, yte_t, len(classes), s, p)
                       for s in p.ft_seeds], dtype=float)
        res.ft_per_seed[src] = [float(v) for v in ft.mean(1)]
        for g, per in (("lp", correct), ("lp_ll", loglik), ("ft", ft.mean(0)), ("lp_window", window_correct)):
            res.per_example[g][src] = np.asarray(per, dtype=float)
            res.truth[g][src] = float(np.mean(per))
        log(f"  {name:9s} {src:22s} " + " ".join(f"{g}={res.truth[g][src]:.3f}" for g in GROUND_TRUTHS)
            + f" ({time.perf_counter() - started:.1f}s)")
    return res


def evaluate(results: Mapping[str, TargetResult], p: Protocol, extras: bool = True) -> dict:
    """Taus of every single measure, the composites (default and leave-one-target-out fitted)."""
    singles = list(PRODUCT_CRITERIA) + (list(EXTRA_MEASURES) if extras else [])
    targets = list(results)
    rows: dict[str, dict[str, dict[str, tuple[float, float]]]] = {}  # row -> target -> gt -> (tau, wtau)
    scores: dict[str, dict[str, Mapping[str, float]]] = {}  # row -> target -> source -> score

    def add(row: str, target: str, score: Mapping[str, float]) -> None:
        rows.setdefault(row, {})[target] = {g: taus(score, results[target].truth[g]) for g in GROUND_TRUTHS}
        scores.setdefault(row, {})[target] = score

    for t in targets:
        r = results[t]
        for m in singles:
            add(m, t, oriented(r.measures, m))
        # the default weights under each normalisation, as the run ranked them (views, bootstrap);
        # raw numbers saved before those were kept: without the views' bootstrap
        for method in NORMALIZATIONS:
            row = _default_row(method)
            add(row, t, r.composites.get(row) or composite_scores(r.measures, None, normalization=method))
        add("transferability-only composite (equal weights)", t,
            composite_scores(r.measures, {m: 1.0 for m in TRANSFER_MEASURES}))
        # ground-truth agreement: how well the headline ground truth ranks by the others
        rows.setdefault(LP_ROW, {})[t] = {g: (float("nan"),) * 2 if g == "lp" else taus(r.truth["lp"], r.truth[g])
                                          for g in GROUND_TRUTHS}
        rows.setdefault(CEILING_ROW, {})[t] = {g: _split_half_taus(r.per_example[g], p.search_seed)
                                               for g in GROUND_TRUTHS}
        rows.setdefault(BOOT_CEILING_ROW, {})[t] = {g: _bootstrap_ceiling(r.per_example[g], p.search_seed)
                                                    for g in GROUND_TRUTHS}
    fits: dict[str, dict] = {}
    for label, names, cands in (
            ("product measures", list(PRODUCT_CRITERIA), None),
            ("product + linear probe", list(PRODUCT_CRITERIA) + ["linear_probe_accuracy"], None),
            # the label-name criteria only tell "shares class names with the target": a portfolio
            # whose sources all use other names gets no information from them
            ("product measures without label-name criteria",
             [m for m in PRODUCT_CRITERIA if m not in LABEL_NAME_CRITERIA], None)):
        if label == "product + linear probe" and not extras:
            continue
        row = f"composite, LOTO-fitted weights ({label})"
        fits[label] = {"loto": {}, "all_targets": None}
        if len(targets) >= 2:
            for held in targets:
                train = [t for t in targets if t != held]
                w, obj = fit_weights(results, train, names, p, cands)
                fits[label]["loto"][held] = {"weights": w, "train_objective": obj}
                add(row, held, composite_scores(results[held].measures, w, include=names))
        w, obj = fit_weights(results, targets, names, p, cands)
        fits[label]["all_targets"] = {"weights": w, "in_sample_objective": obj}
    # the hard part of the ranking: sources that share no class name with the target
    no_overlap: dict[str, dict[str, dict[str, tuple[float, float]]]] = {}
    subset_sizes = {}
    for t in targets:
        r = results[t]
        keep = [s for s, m in r.measures.items() if m.get("label_exact_overlap", 0.0) == 0.0]
        subset_sizes[t] = len(keep)
        for row, per in scores.items():
            if t in per:
                no_overlap.setdefault(row, {})[t] = {
                    g: taus({s: per[t][s] for s in keep}, {s: r.truth[g][s] for s in keep}) for g in GROUND_TRUTHS}
    tie_broken = {row: {t: {g: tie_broken_taus(sc, results[t].truth[g], seed=p.search_seed) for g in GROUND_TRUTHS}
                        for t, sc in per.items()} for row, per in scores.items()}
    # against the held-out composite: the defaults are the weights fitted on all targets (in-sample here)
    reference = LOTO_ROW if len(scores.get(LOTO_ROW, {})) == len(targets) else DEFAULT_ROW
    boot = _bootstrap_compare(results, scores, reference, p)
    # ground-truth noise: how well fine-tuning with one seed ranks the sources like another seed
    reliability = {}
    for t in targets:
        per_seed = results[t].ft_per_seed
        n_seeds = len(next(iter(per_seed.values())))
        pairs = [(a, b) for a in range(n_seeds) for b in range(a + 1, n_seeds)]
        reliability[t] = {
            "ft_seed_vs_seed_tau": _mean([taus({s: v[a] for s, v in per_seed.items()},
                                               {s: v[b] for s, v in per_seed.items()})[0] for a, b in pairs]),
            "ft_seed_sd": float(np.mean([np.std(v) for v in per_seed.values()])) if n_seeds > 1 else float("nan"),
            "ft_source_sd": float(np.std(list(results[t].truth["ft"].values()))),
            "lp_source_sd": float(np.std(list(results[t].truth["lp"].values()))),
            "lp_ll_source_sd": float(np.std(list(results[t].truth["lp_ll"].values()))),
        }
    return {"rows": rows, "fits": fits, "targets": targets, "reliability": reliability, "bootstrap": boot,
            "reference_row": reference,
            "rows_no_label_overlap": no_overlap, "rows_tie_broken": tie_broken, "no_label_overlap_sizes": subset_sizes,
            "decisions": decision_quality(results, scores),
            "negative_transfer_guard": negative_transfer_check(results),
            "decisions_no_label_overlap": decision_quality(results, scores, keep={
                t: [s for s, m in results[t].measures.items() if m.get("label_exact_overlap", 0.0) == 0.0]
                for t in targets})}


def negative_transfer_check(results: Mapping[str, TargetResult]) -> dict[str, dict[str, int]]:
    """The product's negative-transfer flag (the source's view scores below the target's own
    features on both LogME and kNN) against the ground truth: is the probe in the source's view
    worse than the same probe on the target's own MiniLM features?"""
    out = {}
    for t, r in results.items():
        base = r.baselines["lp_minilm"]
        flagged = {s for s, m in r.measures.items() if m.get("negative_transfer", 0.0) >= 1.0}
        worse = {s for s, v in r.truth["lp"].items() if v < base}
        out[t] = {"sources": len(r.measures), "flagged": len(flagged), "worse_than_no_transfer": len(worse),
                  "flagged_and_worse": len(flagged & worse)}
    return out


def decision_quality(results: Mapping[str, TargetResult], scores: Mapping[str, Mapping[str, Mapping[str, float]]],
                     keep: Mapping[str, Sequence[str]] | None = None) -> dict[str, dict[str, float]]:
    """What the product acts on: the source each row ranks first. Per row, over targets: how often it
    is the ground truth's best source, and the mean regret (best ground truth minus the chosen
    source's, in accuracy points x 100 / log-likelihood). Ties for first go to the worst tied source."""
    out: dict[str, dict[str, float]] = {}
    for row, per in scores.items():
        hits, regret = {g: [] for g in GROUND_TRUTHS}, {g: [] for g in GROUND_TRUTHS}
        for t, score in per.items():
            allowed = set(score) if keep is None else set(keep[t])
            finite = {s: v for s, v in score.items() if s in allowed and math.isfinite(v)}
            if not finite:
                continue
            top = max(finite.values())
            chosen = [s for s, v in finite.items() if v >= top - 1e-12]
            for g in GROUND_TRUTHS:
                truth = {s: v for s, v in results[t].truth[g].items() if s in allowed}
                worst = min(truth[s] for s in chosen)
                hits[g].append(float(len(chosen) == 1 and truth[chosen[0]] >= max(truth.values())))
                regret[g].append((max(truth.values()) - worst) * (100.0 if g != "lp_ll" else 1.0))
        out[row] = {**{f"{g}_top1": _mean(hits[g]) for g in GROUND_TRUTHS},
                    **{f"{g}_regret": _mean(regret[g]) for g in GROUND_TRUTHS}}
    return out


BOOTSTRAP_GROUND_TRUTHS = ("lp", "lp_ll", "ft")


def _bootstrap_compare(results: Mapping[str, TargetResult], scores: Mapping[str, Mapping[str, Mapping[str, float]]],
                       reference: str, p: Protocol, rounds: int = 200) -> dict[str, dict[str, dict[str, float]]]:
    """Two-level bootstrap of each row against ``reference`` (the scores stay fixed): every round
    draws the targets with replacement and, within each drawn target, a resample of its test
    examples; a row's statistic is its mean weighted tau (ties broken at random) over the drawn
    targets. Per ground truth and row: the mean, the 5-95% interval of (row - reference), and the
    share of rounds in which the row is at least as good as the reference. Resampling targets is
    what makes this a statement about other targets like these, not only about these 9."""
    rng = np.random.default_rng(p.search_seed)
    targets = list(results)
    rows = [r for r in scores if all(t in scores[r] for t in targets)]
    out: dict[str, dict[str, dict[str, float]]] = {}
    for g in BOOTSTRAP_GROUND_TRUTHS:
        # table[i, k, j]: weighted tau of rows[i] on target k against test resample j
        table = np.empty((len(rows), len(targets), rounds))
        for k, t in enumerate(targets):
            per = results[t].per_example[g]
            names = sorted(per)
            outcomes = np.stack([per[s] for s in names])  # sources x test examples
            score = np.array([[scores[row][t][s] for s in names] for row in rows])
            constant = np.ptp(score, axis=1) == 0
            for j in range(rounds):
                truth = outcomes[:, rng.integers(0, outcomes.shape[1], outcomes.shape[1])].mean(1)
                # one random tie-break per round (rows without ties keep their order): unbiased
                table[:, k, j] = np.where(constant, np.nan, weighted_tau(_tie_broken_ranks(score, rng), truth))
        picks = rng.integers(0, len(targets), (rounds, len(targets)))
        draws = rng.integers(0, rounds, picks.shape)  # an independent test resample per drawn target
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # rows that are constant on every drawn target
            means = np.nanmean(table[:, picks, draws], axis=2)  # rows x rounds
            ref = means[rows.index(reference)]
            out[g] = {row: {"mean": float(np.nanmean(m)), "diff_p05": float(np.nanquantile(m - ref, 0.05)),
                            "diff_p95": float(np.nanquantile(m - ref, 0.95)),
                            "p_ge_reference": float(np.mean(m >= ref))}
                      for row, m in zip(rows, means)}
    return out


def _split_half_taus(per_example: Mapping[str, np.ndarray], seed: int, rounds: int = 50) -> tuple[float, float]:
    """Noise ceiling: mean (Kendall tau, weighted tau) of a ground truth measured on one random half
    of the test split as the predictor of the same ground truth on the other half. Each half has
    half the test rows, so this is a conservative (low) ceiling for the full-split ground truth."""
    n = len(next(iter(per_example.values())))
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(rounds):
        perm = rng.permutation(n)
        a, b = perm[: n // 2], perm[n // 2:]
        out.append(taus({s: float(v[a].mean()) for s, v in per_example.items()},
                        {s: float(v[b].mean()) for s, v in per_example.items()}))
    return _mean([o[0] for o in out]), _mean([o[1] for o in out])


def _bootstrap_ceiling(per_example: Mapping[str, np.ndarray], seed: int, rounds: int = 50) -> tuple[float, float]:
    """Noise ceiling at the full test size: mean (Kendall tau, weighted tau) of the observed ground
    truth against the same ground truth on a bootstrap resample of the test rows. By the bootstrap
    principle this estimates how a predictor that knew the sources' true order would score against
    a ground truth measured on this many test rows (test-sampling noise only)."""
    n = len(next(iter(per_example.values())))
    rng = np.random.default_rng(seed)
    observed = {s: float(v.mean()) for s, v in per_example.items()}
    out = []
    for _ in range(rounds):
        idx = rng.integers(0, n, n)
        out.append(taus(observed, {s: float(v[idx].mean()) for s, v in per_example.items()}))
    return _mean([o[0] for o in out]), _mean([o[1] for o in out])


def _desc(v: float) -> float:
    """Sort key: descending, nan last."""
    return math.inf if math.isnan(v) else -v


def _fmt(v: float, spec: str = "+.2f") -> str:
    return "n/a" if math.isnan(v) else format(v, spec)


def _mean(vals: Sequence[float]) -> float:
    v = [x for x in vals if not math.isnan(x)]
    return float(np.mean(v)) if v else float("nan")


def _row_label(row: str) -> str:
    return row + (" (baseline)" if row in BASELINES else "")


def _row_order(ev: dict, g: str) -> list[str]:
    """Composites first, then single measures, by mean weighted tau against ``g``; bracketed rows last."""
    targets = ev["targets"]
    return sorted(ev["rows"], key=lambda r: (r.startswith("["), r.startswith("composite") is False,
                                             _desc(_mean([ev["rows"][r].get(t, {}).get(g, (np.nan,) * 2)[1]
                                                          for t in targets]))))


def _mean_taus(ev: dict, row: str, g: str) -> tuple[float, float]:
    per = [ev["rows"][row].get(t, {}).get(g, (float("nan"),) * 2) for t in ev["targets"]]
    return _mean([v[0] for v in per]), _mean([v[1] for v in per])


def _mean_tau_table(rows: Mapping[str, Mapping[str, Mapping[str, tuple[float, float]]]], title: str) -> list[str]:
    """Markdown lines: ``title`` and each row's mean (over targets) Kendall tau / weighted tau per
    ground truth; composites first, then by lp weighted tau."""
    def mean(row: str, g: str, k: int) -> float:
        return _mean([v[g][k] for v in rows[row].values()])

    lines = [title, "| measure | " + " | ".join(f"{g} tau | {g} wtau" for g in GROUND_TRUTHS) + " |",
             "|" + "---|" * (1 + 2 * len(GROUND_TRUTHS))]
    for row in sorted(rows, key=lambda r: (r.startswith("composite") is False, _desc(mean(r, "lp", 1)))):
        lines.append(f"| {_row_label(row)} | " + " | ".join(_fmt(mean(row, g, k)) for g in GROUND_TRUTHS
                                                           for k in (0, 1)) + " |")
    return lines


def markdown_tables(ev: dict, results: Mapping[str, TargetResult]) -> str:
    targets = ev["targets"]
    lines = [("\nSummary: mean over targets of Kendall tau / weighted tau against each ground truth "
              "(higher = ranks sources better)\n"),
             "| measure | " + " | ".join(f"{g} tau | {g} wtau" for g in GROUND_TRUTHS) + " |",
             "|" + "---|" * (1 + 2 * len(GROUND_TRUTHS))]
    for row in _row_order(ev, "lp"):
        lines.append(f"| {_row_label(row)} | " + " | ".join(_fmt(v) for g in GROUND_TRUTHS
                                                           for v in _mean_taus(ev, row, g)) + " |")
    for g in GROUND_TRUTHS:
        lines.append(f"\nGround truth: **{GROUND_TRUTH_TITLES[g]}** (Kendall tau / weighted tau per target)\n")
        head = "| measure | " + " | ".join(f"{t} tau | {t} wtau" for t in targets) + " | mean tau | mean wtau |"
        lines += [head, "|" + "---|" * (1 + 2 * len(targets) + 2)]
        for row in _row_order(ev, g):
            cells = [_fmt(v) for t in targets for v in ev["rows"][row].get(t, {}).get(g, (float("nan"),) * 2)]
            lines.append(f"| {_row_label(row)} | " + " | ".join(cells) + " | " +
                         " | ".join(_fmt(v) for v in _mean_taus(ev, row, g)) + " |")
    for key, title in (("decisions", "all sources"),
                       ("decisions_no_label_overlap", ("only the sources that share no class name with the "
                                                       "target (the hard case)"))):
        lines.append(f"\nDecisions among {title}: the source each row ranks first, over the targets: share that "
                     "is the ground truth's best source (ties for first count as misses) and mean regret (best "
                     "minus chosen: accuracy points for lp / ft, nats per example for lp_ll)\n")
        lines.append("| measure | lp top-1 | lp regret | lp_ll top-1 | lp_ll regret | ft top-1 | ft regret |")
        lines.append("|---|---|---|---|---|---|---|")
        dec = ev[key]
        for row in sorted(dec, key=lambda r: (dec[r]["lp_regret"], -dec[r]["lp_top1"])):
            d = dec[row]
            lines.append(f"| {_row_label(row)} | " + " | ".join(
                f"{d[f'{g}_top1']:.2f} | {d[f'{g}_regret']:.2f}" if g == "lp_ll" else
                f"{d[f'{g}_top1']:.2f} | {d[f'{g}_regret']:.1f}" for g in ("lp", "lp_ll", "ft")) + " |")
    guard = ev["negative_transfer_guard"]
    lines.append("\nNegative-transfer guard (`negative_transfer`: LogME and kNN both below the no-transfer "
                 "baseline) against the probe ground truth: sources whose view scores below the same probe on "
                 "the target's own MiniLM features\n")
    lines.append("| target | sources | flagged | worse than no transfer | flagged and worse | precision | recall |")
    lines.append("|---|---|---|---|---|---|---|")
    for t, g in list(guard.items()) + [("all", {k: sum(v[k] for v in guard.values())
                                               for k in next(iter(guard.values()))})]:
        prec = g["flagged_and_worse"] / g["flagged"] if g["flagged"] else float("nan")
        rec = g["flagged_and_worse"] / g["worse_than_no_transfer"] if g["worse_than_no_transfer"] else float("nan")
        lines.append(f"| {t} | {g['sources']} | {g['flagged']} | {g['worse_than_no_transfer']} | "
                     f"{g['flagged_and_worse']} | {prec:.2f} | {rec:.2f} |")
    shown = ("lp", "lp_ll", "ft")
    lines.append("\nGround truths (test split) per source: probe accuracy, probe mean log-likelihood, fine-tune "
                 "accuracy; no-transfer baselines last\n")
    lines.append("| source | " + " | ".join(f"{t} {g}" for t in targets for g in shown) + " |")
    lines.append("|" + "---|" * (1 + len(shown) * len(targets)))
    sources = sorted(next(iter(results.values())).measures,
                     key=lambda s: -np.mean([results[t].truth["lp"][s] for t in targets]))
    for s in sources:
        lines.append(f"| {s} | " + " | ".join(
            f"{results[t].truth[g][s]:.3f}" for t in targets for g in shown) + " |")
    for b, label, col in (("lp_minilm", "no transfer: LP on MiniLM (384-d)", "lp"),
                          ("lp_random_head", "no transfer: LP on untrained head", "lp"),
                          ("ft_scratch", "no transfer: MLP from scratch", "ft")):
        lines.append(f"| *{label}* | " + " | ".join(
            f"{results[t].baselines[b]:.3f}" if g == col else "" for t in targets for g in shown) + " |")
    sub = ev.get("rows_no_label_overlap", {})
    if sub:
        sizes = ", ".join(f"{t} {n}" for t, n in ev["no_label_overlap_sizes"].items())
        lines += _mean_tau_table(sub, f"\nOnly the sources that share no class name with the target ({sizes} "
                                      "sources): mean over targets of Kendall tau / weighted tau, within that subset\n")
    tb = ev.get("rows_tie_broken", {})
    if tb:
        lines += _mean_tau_table(tb, "\nTies broken at random (mean of 100 seeded orders per target): the order a "
                                     "user would get from a row that ties sources. Rows without ties are unchanged; "
                                     "mean over targets of Kendall tau / weighted tau\n")
    boot = ev.get("bootstrap", {})
    if boot:
        ref = ev["reference_row"]
        lines.append(f"\nTwo-level bootstrap against **{ref}** (200 rounds: targets drawn with replacement, "
                     "then each drawn target's test examples resampled; scores fixed; ties broken at random): "
                     "mean weighted tau, the 5-95% interval of (row - reference) and the share of rounds in "
                     "which the row is at least as good as the reference\n")
        gts = list(boot)
        lines.append("| measure | " + " | ".join(f"{g} wtau | {g} row - ref, 5-95% | {g} P(>= ref)" for g in gts)
                     + " |")
        lines.append("|" + "---|" * (1 + 3 * len(gts)))
        for row in sorted(boot[gts[0]], key=lambda r: _desc(boot[gts[0]][r]["mean"])):
            cells = []
            for g in gts:
                b = boot[g][row]
                cells += [_fmt(b["mean"]), f"{_fmt(b['diff_p05'])} to {_fmt(b['diff_p95'])}",
                          _fmt(b["p_ge_reference"], ".2f")]
            lines.append(f"| {_row_label(row)} | " + " | ".join(cells) + " |")
    rel = ev.get("reliability", {})
    if rel:
        lines.append("\nGround-truth noise: spread across sources; noise ceilings (Kendall tau / weighted tau): "
                     "test half A predicts half B, and the bootstrap estimate at the full test size; fine-tune "
                     "seed-to-seed agreement\n")
        lines.append("| target | sd of lp over sources | lp ceiling: halves | lp ceiling: bootstrap | "
                     "sd of lp_ll over sources | lp_ll ceiling: halves | lp_ll ceiling: bootstrap | "
                     "sd of ft over sources | mean sd of ft over seeds | ft ceiling: halves | ft: Kendall tau, seed vs seed |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for t, r in rel.items():
            ceil = {g: " / ".join(_fmt(v) for v in ev["rows"][CEILING_ROW][t][g]) for g in ("lp", "lp_ll", "ft")}
            boot = {g: " / ".join(_fmt(v) for v in ev["rows"][BOOT_CEILING_ROW][t][g]) for g in ("lp", "lp_ll")}
            lines.append(f"| {t} | {r['lp_source_sd']:.3f} | {ceil['lp']} | {boot['lp']} | {r['lp_ll_source_sd']:.3f} | "
                         f"{ceil['lp_ll']} | {boot['lp_ll']} | {r['ft_source_sd']:.3f} | {_fmt(r['ft_seed_sd'], '.3f')} | {ceil['ft']} | "
                         f"{_fmt(r['ft_seed_vs_seed_tau'])} |")
    return "\n".join(lines)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def results_payload(results: Mapping[str, TargetResult]) -> dict:
    """The per-target raw numbers of the ``--json`` file (what :func:`load_results` reads back)."""
    return {n: {"measures": r.measures, "truth": r.truth, "ft_per_seed": r.ft_per_seed, "baselines": r.baselines,
                "composites": r.composites,
                # per test example, so the ceilings and the bootstrap can be recomputed
                "per_example": {g: {s: np.round(v, 4).tolist() for s, v in per.items()}
                                for g, per in r.per_example.items()}}
            for n, r in results.items()}


def load_results(path: Path) -> tuple[dict[str, TargetResult], dict]:
    """The per-target results saved by ``--json`` (every measure, ground truth and per-example
    outcome), to re-run the evaluation without recomputing them; and the saved payload."""
    payload = json.loads(path.read_text())
    results = {}
    for name, r in payload["results"].items():
        info = payload["targets"][name]
        res = TargetResult(name, tuple(info["classes"]), info["train"], info["gt_train"], info["test"])
        res.measures = {s: {k: float("nan") if v is None else float(v) for k, v in m.items()}
                        for s, m in r["measures"].items()}
        res.truth, res.ft_per_seed, res.baselines = r["truth"], r["ft_per_seed"], r["baselines"]
        res.composites = r.get("composites", {})
        res.per_example = {g: {s: np.asarray(v, dtype=float) for s, v in per.items()}
                           for g, per in r["per_example"].items()}
        results[name] = res
    return results, payload


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="reduced sizes and one fine-tune seed")
    ap.add_argument("--json", type=Path, help="save every raw number here")
    ap.add_argument("--from-json", type=Path,
                    help="re-run only the evaluation on the raw numbers a --json run saved (no data, no models)")
    ap.add_argument("--targets", nargs="*", help="subset of targets (default: all)")
    ap.add_argument("--no-cache", action="store_true", help="do not read or write bench/.cache")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch / BLAS threads (default 1: on the shared 2-core machine 2 threads ran "
                         "the head fits ~6x slower through oversubscription)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from threadpoolctl import threadpool_limits

    threadpool_limits(args.threads)
    t0, c0, load0 = time.perf_counter(), time.process_time(), os.getloadavg()
    if args.from_json:
        try:
            results, saved = load_results(args.from_json)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            what = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0]
            print(f"transfer_benchmark: {args.from_json}: not raw numbers a --json run saved ({what})",
                  file=sys.stderr)
            return 2
        mode, p = saved["mode"], Protocol(**{k: tuple(v) if isinstance(v, list) else v
                                             for k, v in saved["protocol"].items()})
        if args.targets:
            results = {k: v for k, v in results.items() if k in args.targets}
        inputs = {k: saved[k] for k in ("sources", "targets", "embedding_s", "texts_embedded")}
        n_sources = len(saved["sources"])
    else:
        mode = "quick" if args.quick else "full"
        p = Protocol(ft_seeds=(0,), search_candidates=500) if args.quick else Protocol()
        results, inputs = compute_results(mode, p, args)
        n_sources = len(inputs["sources"])
    ev = evaluate(results, p)
    total = time.perf_counter() - t0

    print(f"\n## Transfer benchmark ({mode}): {len(results)} targets x {n_sources} sources\n")
    print(markdown_tables(ev, results))
    print(f"\nComposite weights fitted by random search (mean weighted tau over {', '.join(FIT_GROUND_TRUTHS)}; "
          f"normalisation {RankingConfig().normalization}):")
    for label, fit in ev["fits"].items():
        for held, f in fit["loto"].items():
            print(f"- {label}, fitted without {held}: {f['weights']} (train objective {f['train_objective']:.3f})")
        a = fit["all_targets"]
        print(f"- {label}, fitted on all targets (in-sample, not a result): {a['weights']} "
              f"(objective {a['in_sample_objective']:.3f})")
    cpu = time.process_time() - c0
    load1 = os.getloadavg()
    print(f"\nruntime {total:.1f}s wall, {cpu:.1f}s CPU of this process; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads); load average "
          f"{load0[0]:.1f} at start, {load1[0]:.1f} at end (other processes share the cores)")

    if args.json:
        payload = {
            "mode": mode, "protocol": p.__dict__, "runtime_s": total, "cpu_s": cpu,
            "loadavg_start": load0, "loadavg_end": load1, "reliability": ev["reliability"],
            "bootstrap_vs_reference": {"reference": ev["reference_row"], **ev["bootstrap"]},
            "taus_no_label_overlap": {row: {t: {g: {"tau": v[0], "wtau": v[1]} for g, v in d.items()}
                                            for t, d in per.items()}
                                      for row, per in ev["rows_no_label_overlap"].items()},
            "taus_tie_broken": {row: {t: {g: {"tau": v[0], "wtau": v[1]} for g, v in d.items()}
                                      for t, d in per.items()}
                                for row, per in ev["rows_tie_broken"].items()},
            "no_label_overlap_sizes": ev["no_label_overlap_sizes"], **inputs,
            "results": results_payload(results),
            "taus": {row: {t: {g: {"tau": v[0], "wtau": v[1]} for g, v in d.items()} for t, d in per.items()}
                     for row, per in ev["rows"].items()},
            "fits": ev["fits"],
            "default_weights": DEFAULT_WEIGHTS, "default_normalization": RankingConfig().normalization,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(_jsonable(payload), indent=1))
        print(f"raw numbers saved to {args.json}")
    return 0


def compute_results(mode: str, p: Protocol, args: argparse.Namespace) -> tuple[dict[str, TargetResult], dict]:
    """Data, embeddings, source heads, then every target's measures and ground truths."""
    from transfer_data import CACHE_DIR, EmbeddingStore, build_data, minilm_encoder

    t0 = time.perf_counter()
    data = build_data(mode, targets=args.targets)
    t_data = time.perf_counter() - t0
    print(f"[{t_data:6.1f}s] data: {len(data.targets)} targets, {len(data.sources)} sources, "
          f"{len(data.all_texts())} unique texts", flush=True)
    encode, model_id = minilm_encoder()
    store = EmbeddingStore(encode, model_id, None if args.no_cache else CACHE_DIR)
    store.ensure(data.all_texts())
    print(f"[{time.perf_counter() - t0:6.1f}s] embeddings: {store.embedded} computed in {store.seconds:.1f}s "
          f"({store.embedded / max(store.seconds, 1e-9):.0f} texts/s), the rest from the cache", flush=True)

    source_x = {n: store.get(s.texts) for n, s in data.sources.items()}
    source_y = {n: list(s.labels) for n, s in data.sources.items()}
    heads = {n: fit_source_head(torch.from_numpy(source_x[n]), source_y[n], seed=HEAD_SEED) for n in data.sources}
    print(f"[{time.perf_counter() - t0:6.1f}s] {len(heads)} source heads fitted", flush=True)

    results: dict[str, TargetResult] = {}
    for name, tgt in data.targets.items():
        results[name] = run_target(name, store.get(tgt.train.texts), list(tgt.train.labels),
                                   store.get(tgt.gt_train.texts), list(tgt.gt_train.labels),
                                   store.get(tgt.test.texts), list(tgt.test.labels), heads, source_x,
                                   source_y, p, extras=True, log=lambda s: print(s, flush=True),
                                   source_texts={n: src.texts for n, src in data.sources.items()},
                                   embed_labels=lambda names: torch.from_numpy(store.get(names)))
        print(f"[{time.perf_counter() - t0:6.1f}s] target {name} done", flush=True)
    inputs = {
        "sources": {n: {"rows": len(s), "classes": list(s.classes), "description": s.description}
                    for n, s in data.sources.items()},
        "targets": {n: {"train": len(t.train), "gt_train": len(t.gt_train), "test": len(t.test),
                        "classes": list(t.train.classes), "description": t.description}
                    for n, t in data.targets.items()},
        "embedding_s": store.seconds, "texts_embedded": store.embedded, "data_s": t_data,
    }
    return results, inputs


if __name__ == "__main__":
    raise SystemExit(main())
