"""Multi-criteria ranking of the sources from their similarity profiles.

Each measure is a criterion with a direction (``MEASURE_DIRECTIONS``). Per criterion, values are
normalised across the sources of this cycle to [0, 1] (1 = best), so criteria on different scales
(LogME in nats, Frechet in squared feature units) can be weighed together; the composite score
is the weighted mean of the normalised criteria. Hard constraints (licence policy, access)
exclude a source before ranking.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tasksim.config import RankingConfig, SourceConfig

if TYPE_CHECKING:  # profile.py pulls in the data plane; ranking needs only the dataclass shape
    from tasksim.profile import SourceProfile

__all__ = ["DEFAULT_WEIGHTS", "MEASURE_DIRECTIONS", "RankEntry", "Ranking", "rank_sources"]

# +1: higher is better; -1: lower is better.
MEASURE_DIRECTIONS: dict[str, int] = {
    "mmd2": -1, "frechet": -1, "otdd": -1, "label_shift": -1, "domain_classifier_auc": -1,
    "logme": 1, "leep": 1, "nleep": 1, "nce": 1, "hscore": 1, "hscore_regularized": 1, "gbc": 1,
    "transrate": 1, "sfda": 1, "parc": 1, "knn_accuracy": 1, "linear_probe_accuracy": 1,
    "cost": -1,
}

# Transferability carries most weight: it scores the target's labels through the source's view.
# Distribution alignment and class balance refine it; cost breaks near-ties.
DEFAULT_WEIGHTS: dict[str, float] = {
    "logme": 2.0, "hscore_regularized": 1.0, "knn_accuracy": 1.0, "leep": 1.0, "nce": 0.5, "gbc": 0.5,
    "mmd2": 1.0, "frechet": 0.5, "otdd": 1.0, "label_shift": 0.5,
    "cost": 0.25,
}


@dataclass(frozen=True)
class RankEntry:
    source: str
    score: float
    rank: int
    contributions: dict[str, float] = field(default_factory=dict)  # criterion -> normalised value


@dataclass(frozen=True)
class Ranking:
    entries: tuple[RankEntry, ...]
    weights: dict[str, float]
    excluded: dict[str, str]  # source -> reason

    def best(self) -> RankEntry | None:
        return self.entries[0] if self.entries else None

    def entry(self, source: str) -> RankEntry | None:
        return next((e for e in self.entries if e.source == source), None)


def _constraint_violation(source: SourceConfig, config: RankingConfig) -> str | None:
    if config.allowed_licences is not None and source.licence not in config.allowed_licences:
        return f"licence {source.licence!r} is not in the allowed list {list(config.allowed_licences)}"
    if source.access in config.excluded_access:
        return f"access {source.access!r} is excluded"
    return None


def _normalise(values: Mapping[str, float], direction: int) -> dict[str, float]:
    """Min-max to [0, 1] with 1 = best; all-equal values carry no information (0.5 each)."""
    lo, hi = min(values.values()), max(values.values())
    if hi - lo <= 1e-12 * max(1.0, abs(hi), abs(lo)):
        return {k: 0.5 for k in values}
    return {k: ((v - lo) / (hi - lo) if direction > 0 else (hi - v) / (hi - lo)) for k, v in values.items()}


def rank_sources(profiles: Sequence[SourceProfile], sources: Sequence[SourceConfig],
                 config: RankingConfig) -> Ranking:
    """Rank the sources whose profile is ``ok`` and that satisfy the hard constraints."""
    by_name = {s.name: s for s in sources}
    weights = dict(DEFAULT_WEIGHTS)
    weights.update(config.weights)
    excluded: dict[str, str] = {}
    candidates: dict[str, dict[str, float]] = {}
    for p in profiles:
        if p.status != "ok":
            continue
        reason = _constraint_violation(by_name[p.source], config)
        if reason:
            excluded[p.source] = reason
            continue
        values = {k: v for k, v in p.measures.items() if math.isfinite(v)}
        values["cost"] = by_name[p.source].cost
        candidates[p.source] = values

    used: dict[str, float] = {}
    normalised: dict[str, dict[str, float]] = {name: {} for name in candidates}
    for criterion, weight in weights.items():
        if weight <= 0 or criterion not in MEASURE_DIRECTIONS:
            continue
        present = {name: vals[criterion] for name, vals in candidates.items() if criterion in vals}
        # a criterion only some sources have would reward the ones it is missing for; skip it
        if not present or len(present) != len(candidates):
            continue
        used[criterion] = weight
        for name, u in _normalise(present, MEASURE_DIRECTIONS[criterion]).items():
            normalised[name][criterion] = u

    total = sum(used.values())
    scores = {name: (sum(used[c] * u for c, u in contrib.items()) / total if total else 0.5)
              for name, contrib in normalised.items()}
    order = sorted(scores, key=lambda n: (-scores[n], by_name[n].cost, n))
    entries = tuple(RankEntry(source=n, score=scores[n], rank=i + 1, contributions=normalised[n])
                    for i, n in enumerate(order))
    return Ranking(entries=entries, weights=used, excluded=excluded)
