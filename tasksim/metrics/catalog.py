"""The one catalogue of measures: every criterion a profile can carry, with its metadata.

Each :class:`Measure` says what the measure is (family), which way is better (direction), what it
needs to be computed (target labels, source labels, source data, source class probabilities),
whether the confidence bootstrap re-scores it, and its default weight in the composite. Every
other list in the project (the measures a profile computes, the ranking's directions and default
weights, the bootstrap's measures) is derived from this table; add a measure here and nowhere
else.

Directions: ``+1`` higher is better, ``-1`` lower is better. ``granularity_ratio`` has no
monotone direction and is not a criterion (it is reported, never weighted).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

__all__ = [
    "BOOTSTRAP_MEASURES",
    "CATALOG",
    "DEFAULT_WEIGHTS",
    "DIRECTIONS",
    "OPTIONAL_TRANSFER_MEASURES",
    "PROBABILITY_MEASURES",
    "PROFILE_MEASURES",
    "SHARED_STATS_MEASURES",
    "STATS_MEASURES",
    "TRANSFER_MEASURES",
    "Family",
    "Measure",
    "measure",
]

Family = Literal["distance", "transferability", "transfer_gain", "label", "quality", "practical"]


@dataclass(frozen=True)
class Measure:
    """One criterion of a similarity profile."""

    name: str
    family: Family
    direction: int  # +1 higher is better, -1 lower is better
    needs_target_labels: bool = False
    needs_source_labels: bool = False
    needs_source_data: bool = False  # rows of the source's own dataset (else: the source's model suffices)
    needs_source_probs: bool = False  # the source model's class probabilities for the target rows
    bootstrap: bool = False  # re-scored on every confidence-bootstrap round
    default_weight: float = 0.0
    in_profile: bool = True  # computed by a cycle's profile (False: available on request only)
    # Fewest target-window rows it needs: a smaller window leaves it "not computable for this
    # window" instead of failing the source (MMD and Frechet need 2, the domain classifier one row
    # per fold of its 5-fold CV, transferability 6 labelled rows for the 5-nearest-neighbour vote).
    min_target_rows: int = 1


def _transfer(name: str, *, probs: bool = False, bootstrap: bool = False, weight: float = 0.0,
              in_profile: bool = True) -> Measure:
    return Measure(name, "transferability", 1, needs_target_labels=True, needs_source_probs=probs,
                   bootstrap=bootstrap, default_weight=weight, in_profile=in_profile, min_target_rows=6)


def _distance(name: str, *, labels: bool = False, weight: float = 0.0, min_rows: int = 2) -> Measure:
    return Measure(name, "distance", -1, needs_target_labels=labels, needs_source_labels=labels,
                   needs_source_data=True, default_weight=weight, min_target_rows=min_rows)


# The default composite (docs/decisions.md, "The composite"; evidence: docs/transfer_benchmark.md):
# the weighted average of the sources' robust z-scores (RankingConfig.normalization "robust_z":
# median and MAD, through the logistic) on six transferability measures that held up on all three
# benchmarks of bench/transfer_suite.py (images with CNN and ImageNet sources, tabular, text): kNN
# accuracy, the shrinkage LDA probe, LogME, GBC, LEEP and the regularised H-score, weight 1 each
# (the LDA probe replaced the leave-one-out ridge probe, which ranked sources worse on each of the
# three benchmarks: least squares masks classes), with MMD^2 at half weight as the guard that breaks
# ties between sources that transfer alike (same task, other domain: the drift case). Robust
# z-scores, not min-max values, so that no measure's outlier decides; not ranks, which throw away
# how far apart the sources are (a near-tie counts as a full rank step). Modality and cost are
# practical criteria the benchmark cannot fit. Every other measure is still profiled, exported and
# explained: weight it through ``ranking.weights``.
_MEASURES: tuple[Measure, ...] = (
    # distribution alignment in the shared (deployed encoder's) feature space
    _distance("mmd2", weight=0.5),  # the guard: a tie-breaker between sources that transfer alike
    _distance("frechet"),
    _distance("otdd", labels=True),
    # raw AUC (reported, not weighted): below 0.5 it means shared rows, not "closer than identical"
    _distance("domain_classifier_auc", min_rows=5),
    _distance("domain_separability", min_rows=5),  # max(0, 2 AUC - 1): 0 for a duplicate or a twin
    Measure("label_shift", "distance", -1, needs_target_labels=True, needs_source_labels=True),
    Measure("coverage", "distance", 1, needs_source_data=True),  # any one row
    # transferability of the target labels through the source's view of the target
    _transfer("logme", bootstrap=True, weight=1.0),
    _transfer("hscore", in_profile=False),
    _transfer("hscore_regularized", bootstrap=True, weight=1.0),
    _transfer("gbc", bootstrap=True, weight=1.0),
    _transfer("transrate"),
    _transfer("knn_accuracy", weight=1.0),
    _transfer("ridge_probe_accuracy"),  # closed-form leave-one-out least-squares probe (transfer/ridge.py)
    _transfer("lda_probe_accuracy", weight=1.0),  # cross-validated shrinkage LDA probe (transfer/lda.py)
    _transfer("leep", probs=True, bootstrap=True, weight=1.0),
    _transfer("nce", probs=True, bootstrap=True),
    _transfer("nleep", in_profile=False),
    _transfer("sfda", in_profile=False),
    _transfer("parc", in_profile=False),
    _transfer("linear_probe_accuracy", in_profile=False),
    # against the no-transfer baseline (the same measures on the target's own features)
    Measure("logme_gain", "transfer_gain", 1, needs_target_labels=True),
    Measure("knn_gain", "transfer_gain", 1, needs_target_labels=True),
    # label semantics
    Measure("label_exact_overlap", "label", 1, needs_target_labels=True, needs_source_labels=True),
    Measure("label_semantic_overlap", "label", 1, needs_target_labels=True, needs_source_labels=True),
    # source data quality
    Measure("label_noise_rate", "quality", -1, needs_source_labels=True, needs_source_data=True),
    Measure("duplicate_rate", "quality", -1, needs_source_data=True),
    Measure("missing_rate", "quality", -1, needs_source_data=True),
    # practical criteria from the configuration
    Measure("modality_match", "practical", 1, default_weight=1.0),
    Measure("cost", "practical", -1, default_weight=0.25),
)

CATALOG: MappingProxyType[str, Measure] = MappingProxyType({m.name: m for m in _MEASURES})


def measure(name: str) -> Measure:
    """The catalogue entry of ``name`` (KeyError naming the known measures when unknown)."""
    try:
        return CATALOG[name]
    except KeyError:
        raise KeyError(f"unknown measure {name!r}; known: {sorted(CATALOG)}") from None


# --- derived lists (never written out by hand elsewhere) ------------------------------------------

# +1 / -1 per criterion (the ranking's directions).
DIRECTIONS: dict[str, int] = {m.name: m.direction for m in _MEASURES}
# The composite's default weights (criteria with weight 0 are profiled but not weighted).
DEFAULT_WEIGHTS: dict[str, float] = {m.name: m.default_weight for m in _MEASURES if m.default_weight}
# Re-scored on every bootstrap round (cheap and per-sample); kNN is not: resampled duplicates
# would be each other's nearest neighbours.
BOOTSTRAP_MEASURES: tuple[str, ...] = tuple(m.name for m in _MEASURES if m.bootstrap)
# Transferability measures that need the source model's class probabilities.
PROBABILITY_MEASURES: frozenset[str] = frozenset(m.name for m in _MEASURES if m.needs_source_probs)
# What transferability_profile / profile_many compute by default (leep and nce only with
# probabilities), in the order of the catalogue; hscore (unregularised) is part of the default
# engine profile but not of a cycle's.
PROFILE_MEASURES: tuple[str, ...] = (
    "logme", "hscore", "hscore_regularized", "transrate", "gbc", "knn_accuracy", "ridge_probe_accuracy",
    "lda_probe_accuracy", "leep", "nce",
)
# Computed on request only (per source; profile_many does not batch them).
OPTIONAL_TRANSFER_MEASURES: tuple[str, ...] = ("sfda", "parc", "nleep", "linear_probe_accuracy")
# Measures a cycle computes on each source's view of the target (and on the no-transfer baseline).
TRANSFER_MEASURES: tuple[str, ...] = tuple(
    m.name for m in _MEASURES if m.family == "transferability" and m.in_profile
)
# Measures computed from the shared second-order statistics alone (one eigendecomposition).
SHARED_STATS_MEASURES: tuple[str, ...] = ("logme", "hscore", "hscore_regularized", "transrate", "gbc")
# Measures that take a FeatureStats (the shared ones plus those that read its features).
STATS_MEASURES: frozenset[str] = frozenset(SHARED_STATS_MEASURES) | {"sfda", "parc", "nleep"}
