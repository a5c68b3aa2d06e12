"""Multi-criteria ranking of the sources from their similarity profiles.

Each measure is a criterion with a direction (``MEASURE_DIRECTIONS``). Per criterion, values are
normalised across this cycle's sources to [0, 1] (1 = best; min-max, ranks or robust z-scores), so
criteria on different scales (LogME in nats, Frechet in squared feature units) can be weighed
together; the composite is their weighted sum or TOPSIS closeness (``tasksim.mcda``).

- Hard constraints (licence policy, access) exclude a source before ranking.
- The Pareto front of transfer potential (the composite without cost) against cost is reported.
- The negative-transfer guard flags a source whose view of the target scores below the
  no-transfer baseline on both LogME and kNN (``profile.py``).
- Confidence: a bootstrap over target rows re-scores the transferability measures of every
  source's view (distances stay at their full-sample values) and gives each source its
  probability of ranking first and a 90% rank interval.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from tasksim import mcda
from tasksim.config import RankingConfig, SourceConfig
from tasksim.metrics import catalog

if TYPE_CHECKING:  # profile.py pulls in the data plane; ranking needs only the dataclass shape
    from tasksim.profile import SourceProfile

__all__ = ["BOOTSTRAP_MEASURES", "DEFAULT_WEIGHTS", "MEASURE_DIRECTIONS", "RankEntry", "Ranking", "SourceTerms",
           "rank_sources"]

log = logging.getLogger(__name__)

# Directions, default weights and bootstrap measures come from the one catalogue
# (tasksim.metrics.catalog, where the fitted defaults are documented). With
# RankingConfig.reliability_weighting (default) each weight is scaled by the criterion's
# reliability, so noise-level differences (e.g. sources that share the task) do not decide. A
# criterion some source lacks (e.g. Frechet for a checkpoint without data) is left out for every
# source.
MEASURE_DIRECTIONS: dict[str, int] = catalog.DIRECTIONS
DEFAULT_WEIGHTS: dict[str, float] = catalog.DEFAULT_WEIGHTS
BOOTSTRAP_MEASURES: tuple[str, ...] = catalog.BOOTSTRAP_MEASURES


@dataclass(frozen=True)
class SourceTerms:
    """What the ranking needs to know of a source beyond its profile (a ``SourceConfig`` has these too)."""

    name: str
    cost: float = 1.0
    licence: str | None = None
    access: str = "public"


@dataclass(frozen=True)
class RankEntry:
    source: str
    score: float
    rank: int
    contributions: dict[str, float] = field(default_factory=dict)  # criterion -> normalised value
    top1_probability: float | None = None
    rank_interval: tuple[int, int] | None = None
    flags: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()  # criteria in use that this source lacks (scored on the others)
    completeness: float = 1.0  # share of the weight in use its criteria carry; scales its confidence

    @property
    def confidence(self) -> float | None:
        """Probability of ranking first, discounted by the share of the evidence the source lacks."""
        return None if self.top1_probability is None else self.top1_probability * self.completeness


@dataclass(frozen=True)
class Ranking:
    entries: tuple[RankEntry, ...]
    weights: dict[str, float]
    excluded: dict[str, str]  # source -> reason
    method: str = "weighted_sum"
    pareto_front: tuple[str, ...] = ()
    reliability: dict[str, float] = field(default_factory=dict)  # criterion -> factor its weight was scaled by

    def best(self) -> RankEntry | None:
        return self.entries[0] if self.entries else None

    def entry(self, source: str) -> RankEntry | None:
        return next((e for e in self.entries if e.source == source), None)

    def top1_probabilities(self) -> dict[str, float]:
        return {e.source: e.top1_probability for e in self.entries if e.top1_probability is not None}

    def entry_dict(self, source: str) -> dict[str, Any]:
        """One source's place in the ranking as a JSON-ready dict (the one serialisation of an entry);
        rank, score and probability are None for a source that was not ranked."""
        e = self.entry(source)
        if e is None:
            return {"source": source, "rank": None, "score": None, "top1_probability": None, "rank_interval": None,
                    "flags": [], "pareto": False, "contributions": {}, "missing": [], "completeness": None}
        return {"source": e.source, "rank": e.rank, "score": e.score, "top1_probability": e.top1_probability,
                "rank_interval": list(e.rank_interval) if e.rank_interval else None, "flags": list(e.flags),
                "pareto": e.source in self.pareto_front, "contributions": e.contributions,
                "missing": list(e.missing), "completeness": e.completeness}

    def entries_to_dicts(self) -> list[dict[str, Any]]:
        """The ranked entries, best first, as :meth:`entry_dict` writes them."""
        return [self.entry_dict(e.source) for e in self.entries]

    def to_dict(self) -> dict[str, Any]:
        """The whole ranking as a JSON-ready dict: entries, weights, reliability, exclusions, front."""
        return {"method": self.method, "weights": dict(self.weights), "reliability": dict(self.reliability),
                "excluded": dict(self.excluded), "pareto_front": list(self.pareto_front),
                "ranking": self.entries_to_dicts()}


def _constraint_violation(source: SourceConfig | SourceTerms, config: RankingConfig) -> str | None:
    if config.allowed_licences is not None and source.licence not in config.allowed_licences:
        return f"licence {source.licence!r} is not in the allowed list {list(config.allowed_licences)}"
    if source.access in config.excluded_access:
        return f"access {source.access!r} is excluded"
    return None


def _usable_criteria(candidates: Mapping[str, Mapping[str, float]], weights: Mapping[str, float]) -> dict[str, float]:
    """Criteria with a weight and a direction that at least two candidates have (or the only
    candidate) and on which those differ (a criterion every source ties on carries no
    information; it would only shrink the score differences). A criterion some sources lack is
    kept: each source is scored on the criteria it has (``mcda.weighted_sum(allow_missing=True)``)."""
    used = {}
    for c, w in weights.items():
        if not (w > 0 and c in MEASURE_DIRECTIONS and candidates):
            continue
        values = [v for vals in candidates.values() if (v := vals.get(c)) is not None and math.isfinite(v)]
        if len(candidates) > 1 and len(values) < 2:
            continue
        if not values or (len(values) > 1 and max(values) - min(values) <= 1e-12 * max(1.0, abs(max(values)))):
            continue
        used[c] = w
    return used


def _composite(candidates: Mapping[str, Mapping[str, float]], used: Mapping[str, float],
               config: RankingConfig) -> dict[str, float]:
    if not used:
        return {name: 0.5 for name in candidates}
    scored = {n: vals for n, vals in candidates.items() if any(c in vals for c in used)}
    directions = {c: MEASURE_DIRECTIONS[c] for c in used}
    if config.method == "topsis":
        out = mcda.topsis(scored, used, directions, allow_missing=True)
    else:
        out = mcda.weighted_sum(scored, used, directions, method=config.normalization, allow_missing=True)
    # a source with none of the criteria in use has no evidence either way: the neutral middle
    return {n: out.get(n, 0.5) for n in candidates}


def _completeness(vals: Mapping[str, float], used: Mapping[str, float]) -> tuple[float, tuple[str, ...]]:
    """(share of the weight in use that this source's criteria carry, the criteria it lacks)."""
    missing = tuple(sorted(c for c in used if c not in vals))
    total = sum(used.values())
    return (1.0 - sum(used[c] for c in missing) / total if total > 0 else 1.0), missing


def _order(scores: Mapping[str, float], by_name: Mapping[str, SourceConfig | SourceTerms]) -> list[str]:
    return sorted(scores, key=lambda n: (-scores[n], by_name[n].cost, n))


def rank_sources(profiles: Sequence[SourceProfile], sources: Sequence[SourceConfig | SourceTerms],
                 config: RankingConfig) -> Ranking:
    """Rank the sources whose profile is ``ok`` and that satisfy the hard constraints.

    Confidence (top-1 probabilities, rank intervals, the bootstrap side of reliability weighting)
    comes from the bootstrap rounds the profiles carry (``profile.bootstrap_profiles``).
    """
    by_name = {s.name: s for s in sources}
    weights = {**DEFAULT_WEIGHTS, **config.weights}
    excluded: dict[str, str] = {}
    candidates: dict[str, dict[str, float]] = {}
    for p in profiles:
        if p.status != "ok":
            continue
        reason = _constraint_violation(by_name[p.source], config)
        if reason:
            excluded[p.source] = reason
            continue
        candidates[p.source] = {**{k: v for k, v in p.measures.items() if math.isfinite(v)},
                                "cost": by_name[p.source].cost}
    if not candidates:
        return Ranking(entries=(), weights={}, excluded=excluded, method=config.method)

    used = _usable_criteria(candidates, weights)
    rounds = _bootstrap_rounds(candidates, {p.source: p for p in profiles}, used) if config.bootstrap_rounds > 0 else []
    reliability = _reliabilities(candidates, used, rounds) if config.reliability_weighting else {}
    effective = {c: w * reliability.get(c, 1.0) for c, w in used.items()}
    # every criterion pure noise: rank on them as configured rather than on nothing
    effective = {c: w for c, w in effective.items() if w > 0} or dict(used)
    scores = _composite(candidates, effective, config)
    directions = {c: MEASURE_DIRECTIONS[c] for c in effective}
    normalised = {name: {} for name in candidates}
    for criterion in effective:
        values = {name: vals[criterion] for name, vals in candidates.items() if criterion in vals}
        for name, u in mcda.normalize(values, directions[criterion], config.normalization).items():
            normalised[name][criterion] = u

    potential_used = {c: w for c, w in effective.items() if c != "cost"}
    potential = _composite(candidates, potential_used, config)
    front = mcda.pareto_front({n: (potential[n], by_name[n].cost) for n in candidates}, (1, -1))

    top1: dict[str, float] = {}
    intervals: dict[str, tuple[int, int]] = {}
    if rounds:
        try:
            top1, intervals = mcda.top1_and_intervals([_composite(r, effective, config) for r in rounds])
        except Exception as exc:  # e.g. a measure that failed on one resample: confidence is advisory
            log.warning("bootstrap of the ranking failed: %s", exc)

    order = _order(scores, by_name)
    entries = []
    for i, name in enumerate(order):
        flags = ("negative_transfer",) if (config.negative_transfer_guard
                                           and candidates[name].get("negative_transfer", 0.0) >= 1.0) else ()
        completeness, missing = _completeness(candidates[name], effective)
        entries.append(RankEntry(source=name, score=float(scores[name]), rank=i + 1, contributions=normalised[name],
                                 top1_probability=top1.get(name), rank_interval=intervals.get(name), flags=flags,
                                 missing=missing, completeness=completeness))
    return Ranking(entries=tuple(entries), weights=dict(effective), excluded=excluded, method=config.method,
                   pareto_front=tuple(sorted(front)),
                   reliability={c: round(r, 6) for c, r in reliability.items() if r < 1.0})


def _bootstrap_rounds(candidates: dict[str, dict[str, float]], profiles: Mapping[str, SourceProfile],
                      used: Mapping[str, float]) -> list[dict[str, dict[str, float]]]:
    """Per bootstrap round: every candidate's criteria with the re-scored ``BOOTSTRAP_MEASURES`` in
    use from its profile's round (the others keep their values; a candidate without a view of the
    target, e.g. a dataset-only source without labels, keeps its values in every round). Empty unless
    some bootstrap measure is in use and at least two candidates carry the same number of rounds."""
    measures = [m for m in BOOTSTRAP_MEASURES if m in used]
    lengths = {len(profiles[name].bootstrap) for name in candidates} - {0}
    carrying = sum(1 for name in candidates if profiles[name].bootstrap)
    if not measures or len(lengths) != 1 or carrying < 2:
        return []
    rounds = lengths.pop()

    def picked(name: str, i: int) -> dict[str, float]:
        boot = profiles[name].bootstrap
        return {m: v for m, v in boot[i].items() if m in measures} if boot else {}

    return [{name: {**vals, **picked(name, i)} for name, vals in candidates.items()} for i in range(rounds)]


def _reliabilities(candidates: Mapping[str, Mapping[str, float]], used: Mapping[str, float],
                   rounds: list[dict[str, dict[str, float]]]) -> dict[str, float]:
    """``mcda.reliability`` of every criterion in use: its noise is the variance over the bootstrap
    rounds for the re-scored measures, else the square of the ``<criterion>_se`` measure the profile
    carries (e.g. the label-noise rate's binomial standard error); no estimate for every source: 1."""
    out = {}
    for c in used:
        values = {s: v[c] for s, v in candidates.items() if c in v}
        noise: dict[str, float] = {}
        if c in BOOTSTRAP_MEASURES and len(rounds) > 1:
            # one (rounds x sources) array per criterion: no per-source numpy call (1000 sources)
            names = list(values)
            spread = np.var(np.array([[r[s][c] for s in names] for r in rounds], dtype=np.float64), axis=0, ddof=1)
            noise = dict(zip(names, spread.tolist()))
        else:
            se = {s: candidates[s].get(f"{c}_se") for s in values}
            if all(x is not None and math.isfinite(x) for x in se.values()):
                noise = {s: float(x) ** 2 for s, x in se.items()}
        out[c] = mcda.reliability(values, noise)
    return out
