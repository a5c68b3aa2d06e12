"""Composite weights refined by trial outcomes: a deployment learns which measures predicted its
fine-tuning results.

The rule (docs/decisions.md, "Trial outcomes refine the composite weights"):

1. After each finished experiment, per measure m of the composite, Kendall's tau-b between the
   measure's contribution to each candidate's score (``Ranking`` entry ``contributions``:
   normalised, direction-adjusted, so higher = predicted better) and the candidate's outcome (best
   strategy's mean test accuracy). Needs >= 3 candidates with both, and not all tied; else m gets no
   tau from that experiment. Stored with the outcome (``measure_taus``).
2. Over the deployment's finished experiments (the store is per deployment), per measure: the
   mean tau ``t`` over the n experiments that gave one, shrunk toward 0 by ``n / (n + PRIOR)``
   (``PRIOR = 3`` experiments), and the factor ``2 ** (shrunk t)``: in [0.5, 2] by construction
   (tau is in [-1, 1]); 1 with no evidence; with one experiment at most 2 ** 0.25 = 1.19.
3. The ranking's weight for m is its configured (or catalogue default) weight times the factor
   (``refine_weights``); a measure without a factor keeps its weight. The factors are stored in
   the store's key-value table (``FACTORS_KEY``) and applied by ``Cycle.rank`` when
   ``experiment.refine_weights`` is on.

Pure functions except ``update_factors`` / ``load_factors`` (the store).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["FACTORS_KEY", "LOWER", "PRIOR", "UPPER", "factors_from_taus", "load_factors", "measure_taus",
           "refine_weights", "update_factors"]

FACTORS_KEY = "ranking.weight_factors"
PRIOR = 3.0
LOWER, UPPER = 0.5, 2.0
MIN_CANDIDATES = 3


def measure_taus(contributions: Mapping[str, Mapping[str, float]], outcome: Mapping[str, float]) -> dict[str, float]:
    """Per measure, Kendall's tau-b between its contribution per source and the outcome per source
    (sources with both; at least ``MIN_CANDIDATES``; measures tied everywhere give none)."""
    from scipy.stats import kendalltau

    measures = sorted({m for c in contributions.values() for m in c})
    out: dict[str, float] = {}
    for m in measures:
        pairs = [(float(contributions[s][m]), float(outcome[s])) for s in sorted(contributions)
                 if s in outcome and m in contributions[s] and math.isfinite(float(contributions[s][m]))
                 and math.isfinite(float(outcome[s]))]
        if len(pairs) < MIN_CANDIDATES:
            continue
        x, y = zip(*pairs)
        if len(set(x)) < 2 or len(set(y)) < 2:
            continue
        tau = float(kendalltau(x, y).statistic)
        if math.isfinite(tau):
            out[m] = max(-1.0, min(1.0, tau))
    return out


def factors_from_taus(per_experiment: Iterable[Mapping[str, float]], prior: float = PRIOR) -> dict[str, dict[str, float]]:
    """``{measure: {"factor", "mean_tau", "experiments"}}`` from each experiment's measure taus."""
    sums: dict[str, list[float]] = {}
    for taus in per_experiment:
        for m, t in taus.items():
            if t is not None and math.isfinite(t):
                sums.setdefault(m, []).append(max(-1.0, min(1.0, float(t))))
    out = {}
    for m, ts in sorted(sums.items()):
        n = len(ts)
        mean = sum(ts) / n
        shrunk = mean * n / (n + prior)
        out[m] = {"factor": min(UPPER, max(LOWER, 2.0 ** shrunk)), "mean_tau": mean, "experiments": n}
    return out


def refine_weights(weights: Mapping[str, float], factors: Mapping[str, float]) -> dict[str, float]:
    """The hook for the ranking: each weight times its factor (clamped to [0.5, 2]); others unchanged."""
    return {m: w * min(UPPER, max(LOWER, float(factors.get(m, 1.0)))) for m, w in weights.items()}


def update_factors(store: Any, *, limit: int = 200) -> dict[str, dict[str, float]]:
    """Recompute the factors from the store's finished experiments and store them."""
    taus = []
    for e in store.experiments(limit=limit):
        if e.get("status") == "finished" and isinstance(e.get("outcome"), dict):
            t = e["outcome"].get("measure_taus")
            if isinstance(t, dict) and t:
                taus.append(t)
    factors = factors_from_taus(taus)
    store.set_state(FACTORS_KEY, json.dumps({"updated_at": time.time(), "experiments": len(taus),
                                             "measures": factors}))
    return factors


def load_factors(store: Any) -> dict[str, float]:
    """``{measure: factor}`` as stored (empty without experiments or on a malformed entry)."""
    raw = store.get_state(FACTORS_KEY)
    try:
        measures = (json.loads(raw) if raw else {}).get("measures", {})
        return {m: float(v["factor"]) for m, v in measures.items()}
    except (ValueError, TypeError, KeyError, AttributeError):
        return {}
