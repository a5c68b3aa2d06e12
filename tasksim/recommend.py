"""Recommendation: keep or switch the source, and how to fine-tune from it.

The rule, in order (docs/recommendation.md explains the thresholds and the literature):

1. No ranking (no source could be profiled, or no data): ``insufficient_data``.
2. Never switch to a source flagged by the negative-transfer guard. Switch when the best source's
   composite score beats the deployed source's by at least
   ``ranking.switch_margin`` (and, when bootstrap probabilities exist, the best source is best
   with probability >= ``ranking.min_confidence``); a deployed source that failed or was excluded
   is replaced by the best one. Otherwise keep.
3. Fine-tuning plan for the recommended source, from its profile and the drift verdict:
   - label marginals far apart (``label_shift`` >= 0.5) or few shared classes: an output-level shift.
     With at least ``FEW_PER_CLASS`` labelled rows a class and tapped layers whose MMD^2 does not
     grow towards the output (output below ``LABEL_SPACE_FLAT_RATIO`` x the first layer's: new
     classes on the same inputs): LP-FT (the advice benchmark's third round: at 60 training rows a
     class on new Fashion-MNIST classes LP-FT was within 1 point with all four source CNNs, the last
     blocks with one; docs/decisions.md). Otherwise a new head and the last blocks (surgical
     fine-tuning; Lee et al., ICLR 2023; LP-FT before the advice benchmark);
   - the source is close to the target (MMD^2 < 0.05) and its view separates the target's classes
     (``knn_accuracy`` >= 0.8 when measured): LP-FT (the linear probe until the third round: it was
     never within 1 point of the best strategy in the benchmark's 40 runs, and LP-FT starts from it);
   - the shift is there at the first tapped layer and grows with depth (the output's MMD^2 above the
     first layer's; the same label space): full fine-tuning. Added from the advice benchmark's low-contrast runs,
     where full fine-tuning beat LP-FT by 3-7 points with two source CNNs (docs/decisions.md);
   - few labelled rows per class (fewer than ``FEW_PER_CLASS`` = 80 labelled rows a class, about 50
     training rows at the experiment's default 60% split; needs ``classes``): LP-FT. A new head
     trained together with the blocks distorts the pretrained features (Kumar et al.), and a few
     dozen rows a class carry too little signal to move a block; the advice benchmark
     (docs/benchmarks.md) found LP-FT best or within 1 point at 20 training rows a class where the
     surgical advice lost by 2-3 points;
   - the source ships its own model with tapped layers (``layer_mmd2:<layer>`` in the profile): surgical
     fine-tuning where the shift enters, the first tapped layer whose MMD^2 reaches half the largest
     (first, middle or last third of the network; Lee et al., ICLR 2023). The first blocks only for
     an input-level signature: the first layer's MMD^2 at least ``INPUT_LEVEL_RATIO`` (2) times the
     output's (the network absorbs the shift, as with pixel noise). A shift as large at the output as
     at the first layer (blur, in the benchmark) reaches every layer: LP-FT;
   - the kind of the production window's drift verdict (``tasksim.drift.DriftVerdict.kind``):
     ``input`` (covariate shift): surgical fine-tuning of the first blocks (Lee et al., ICLR 2023);
     ``label_prior``: re-fit the head (body frozen) on labels with the new class marginal;
     ``concept`` (p(y|x) moved): adapt the last blocks and the head;
   - large distribution gap (MMD^2 >= 0.2): full fine-tuning with L2-SP regularisation towards the
     source weights;
   - otherwise: fine-tune the last blocks (feature-level shift, Lee et al.) with the rest frozen.
   Few labelled target samples (< 1000) add adapters (LoRA) instead of updating full weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from tasksim.config import RankingConfig
from tasksim.errors import ConfigError
from tasksim.rank import Ranking

__all__ = ["LARGE_GAP_MMD2", "SMALL_GAP_MMD2", "FineTunePlan", "Recommendation", "recommend", "shift_onset"]

SMALL_GAP_MMD2 = 0.05
LARGE_GAP_MMD2 = 0.2
LABEL_SHIFT_NEW_HEAD = 0.5
FEW_LABELS = 1000
FEW_PER_CLASS = 80
INPUT_LEVEL_RATIO = 2.0
LABEL_SPACE_FLAT_RATIO = 1.25
"""A changed label space with ``FEW_PER_CLASS`` labelled rows a class or more, whose output MMD^2 is
below this multiple of the first tapped layer's (the inputs are not what moved: the shift does not
grow with depth), gets LP-FT instead of the last blocks (0 turns the rule off; the advice
benchmark's third round, docs/decisions.md)."""
CLOSE_SOURCE_STRATEGY = "lp_ft"
"""What a source close to the target gets: ``lp_ft`` since the advice benchmark's third round (the
linear probe alone was never within 1 point of the best strategy in its 40 runs); ``linear_probe``
before (bench/advice_benchmark.py sets it back to score the earlier rules)."""
DEPTH_GROWTH_RATIO = 1.0
"""A shift present at the first tapped layer whose output MMD^2 is above this multiple of the first
layer's grows with depth (0 turns the rule off; bench/advice_benchmark.py does, to show the rules
before it)."""


@dataclass(frozen=True)
class FineTunePlan:
    strategy: str  # linear_probe | lp_ft | head_refit | surgical_first | surgical_middle | surgical_last | full
    trainable: str
    learning_rate: float
    weight_decay: float
    regularisation: str
    adapters: bool
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class Recommendation:
    deployed_source: str
    recommended_source: str | None
    action: str  # keep | switch | insufficient_data
    rationale: str
    fine_tune: FineTunePlan | None = None
    score_gap: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def shift_onset(measures: dict[str, float]) -> tuple[str, float] | None:
    """(layer, relative depth in [0, 1]) where the shift enters the source's network: the first
    ``layer_mmd2:<layer>`` (profile order: input to output) reaching half the largest; None without
    layer measures or when no layer shifts by at least ``SMALL_GAP_MMD2``."""
    layers = [(k.split(":", 1)[1], v) for k, v in measures.items() if k.startswith("layer_mmd2:")]
    if not layers:
        return None
    top = max(v for _, v in layers)
    if top < SMALL_GAP_MMD2:
        return None
    i = next(i for i, (_, v) in enumerate(layers) if v >= 0.5 * top)
    return layers[i][0], i / max(1, len(layers) - 1)


def _layer_ends(measures: dict[str, float]) -> tuple[float, float]:
    layers = [v for k, v in measures.items() if k.startswith("layer_mmd2:")]
    return layers[0], layers[-1]


def _grows_with_depth(measures: dict[str, float]) -> bool:
    """The shift is already there at the first tapped layer (``shift_onset`` in the first third) and
    grows with depth: the output's MMD^2 exceeds ``DEPTH_GROWTH_RATIO`` times the first layer's.
    False without layer measures, and for a shift that enters later (surgical middle / last)."""
    onset = shift_onset(measures)
    if onset is None or onset[1] >= 1 / 3 or DEPTH_GROWTH_RATIO <= 0:
        return False
    first, output = _layer_ends(measures)
    return output > DEPTH_GROWTH_RATIO * first


def _flat_with_labels(measures: dict[str, float], labelled_rows: int, classes: int | None) -> bool:
    """A changed label space the inputs did not come with: tapped layers whose output MMD^2 is below
    ``LABEL_SPACE_FLAT_RATIO`` times the first layer's, and at least ``FEW_PER_CLASS`` labelled rows
    a class. False without layer measures, without ``classes``, or with the rule off (ratio 0)."""
    if LABEL_SPACE_FLAT_RATIO <= 0 or not classes or labelled_rows / classes < FEW_PER_CLASS:
        return False
    if not any(k.startswith("layer_mmd2:") for k in measures):
        return False
    first, output = _layer_ends(measures)
    return output < LABEL_SPACE_FLAT_RATIO * first


def _input_level(measures: dict[str, float]) -> bool:
    """An input-level signature: the first tapped layer's MMD^2 is at least ``INPUT_LEVEL_RATIO``
    times the output's (the shift fades with depth)."""
    first, output = _layer_ends(measures)
    return first >= INPUT_LEVEL_RATIO * max(output, 1e-12)


def plan_fine_tuning(measures: dict[str, float], *, drift_kind: str = "none", labelled_rows: int, classes: int | None = None,
                     input_drift: bool | None = None) -> FineTunePlan:
    """The documented rule (module docstring) from one source's profile and the drift verdict's kind
    (``none``, ``input``, ``label_prior``, ``concept``; ``input_drift=True`` is read as ``input``);
    ``labelled_rows`` and ``classes``: the labelled target rows and their distinct classes."""
    if input_drift and drift_kind == "none":
        drift_kind = "input"
    if drift_kind not in ("none", "input", "label_prior", "concept"):
        raise ConfigError(f"drift_kind: expected none, input, label_prior or concept, got {drift_kind!r}")
    mmd2 = measures.get("mmd2")
    label_shift = measures.get("label_shift")
    knn = measures.get("knn_accuracy")
    adapters = 0 < labelled_rows < FEW_LABELS
    reasons: list[str] = []
    if label_shift is not None and label_shift >= LABEL_SHIFT_NEW_HEAD and _flat_with_labels(measures, labelled_rows,
                                                                                            classes):
        first, output = _layer_ends(measures)
        reasons.append(f"label marginals differ (JS divergence {label_shift:.2f} >= {LABEL_SHIFT_NEW_HEAD}) but the "
                       f"inputs did not move with them (MMD^2 {first:.3f} at the first tapped layer, {output:.3f} at "
                       f"the output: less than {LABEL_SPACE_FLAT_RATIO:g}x) and there are {labelled_rows / classes:.0f} "
                       f"labelled rows a class (>= {FEW_PER_CLASS}): a new label space on the same features; train "
                       "the new head first, then all layers at a low learning rate (LP-FT)")
        plan = ("lp_ft", "head first, then all layers", 1e-5, 0.01, "early stopping on target validation")
    elif label_shift is not None and label_shift >= LABEL_SHIFT_NEW_HEAD:
        reasons.append(f"label marginals differ (JS divergence {label_shift:.2f} >= {LABEL_SHIFT_NEW_HEAD}): an "
                       "output-level shift; a new head and the last blocks adapt (surgical fine-tuning, Lee et al.)")
        plan = ("surgical_last", "last blocks + head", 5e-5, 0.01, "freeze the earlier blocks")
    elif mmd2 is not None and mmd2 < SMALL_GAP_MMD2 and (knn is None or knn >= 0.8):
        reasons.append(f"source is close to the target (MMD^2 {mmd2:.3f} < {SMALL_GAP_MMD2})"
                       + (f" and its features separate the target classes (kNN accuracy {knn:.2f})" if knn else ""))
        if CLOSE_SOURCE_STRATEGY == "lp_ft":
            reasons.append("train the new head first with the body frozen, then all layers at a low learning rate "
                           "(LP-FT: early stopping keeps the probe's solution when fine-tuning does not help)")
            plan = ("lp_ft", "head first, then all layers", 1e-5, 0.01, "early stopping on target validation")
        else:
            plan = ("linear_probe", "head only (body frozen)", 1e-3, 1e-4, "none needed")
    elif _grows_with_depth(measures):
        first, output = _layer_ends(measures)
        reasons.append(f"the shift grows with depth (MMD^2 {first:.3f} at the first tapped layer, {output:.3f} at the "
                       "output): the source's features, not only its inputs, are off for the target; fine-tune "
                       "every layer (full fine-tuning)")
        plan = ("full", "all layers", 1e-4, 0.01, "early stopping on target validation")
    elif classes and labelled_rows > 0 and labelled_rows / classes < FEW_PER_CLASS:
        reasons.append(f"few labelled rows per class ({labelled_rows / classes:.0f} < {FEW_PER_CLASS}): train the "
                       "new head first with the body frozen, then everything at a low learning rate (LP-FT); too "
                       "few rows to move blocks from a random head")
        plan = ("lp_ft", "head first, then all layers", 1e-5, 0.01, "early stopping on target validation")
    elif (onset := shift_onset(measures)) is not None and onset[1] < 1 / 3 and not _input_level(measures):
        layer, _ = onset
        first, output = _layer_ends(measures)
        reasons.append(f"the shift is as large at the output (MMD^2 {output:.3f}) as at {layer} ({first:.3f}, less "
                       f"than {INPUT_LEVEL_RATIO:g}x): every layer sees it; train the new head first, then all "
                       "layers at a low learning rate (LP-FT)")
        plan = ("lp_ft", "head first, then all layers", 1e-5, 0.01, "early stopping on target validation")
    elif onset is not None:
        layer, depth = onset
        where = "first" if depth < 1 / 3 else "middle" if depth < 2 / 3 else "last"
        reasons.append(f"the shift enters the source's network at {layer} (MMD^2 per tapped layer, depth "
                       f"{depth:.2f}): adapt the {where} blocks (surgical fine-tuning)")
        plan = (f"surgical_{where}", f"{where} blocks (from {layer}) + head", 1e-4 if where == "first" else 5e-5,
                0.01, "freeze the other blocks")
    elif drift_kind == "input":
        reasons.append("input-level drift in production: adapt the first blocks (surgical fine-tuning)")
        plan = ("surgical_first", "first blocks + head", 1e-4, 0.01, "freeze the remaining blocks")
    elif drift_kind == "label_prior":
        reasons.append("label-prior shift in production (the class marginal moved, inputs given the class did "
                       "not): re-fit the head on labels with the new marginal, body frozen")
        plan = ("head_refit", "head only (body frozen)", 1e-3, 1e-4, "class-balanced loss or prior correction")
    elif drift_kind == "concept":
        reasons.append("concept shift in production (the reference model's loss rose on labelled rows with "
                       "inputs unchanged): adapt the last blocks and the head (output-level shift)")
        plan = ("surgical_last", "last blocks + head", 5e-5, 0.01, "freeze the earlier blocks")
    elif mmd2 is not None and mmd2 >= LARGE_GAP_MMD2:
        reasons.append(f"large distribution gap (MMD^2 {mmd2:.3f} >= {LARGE_GAP_MMD2}): every layer must move")
        plan = ("full", "all layers", 3e-5, 0.01, "L2-SP towards the source weights")
    else:
        reasons.append("moderate feature-level gap: adapt the last blocks (surgical fine-tuning)")
        plan = ("surgical_last", "last blocks + head", 5e-5, 0.01, "freeze the earlier blocks")
    if adapters:
        reasons.append(f"few labelled target rows ({labelled_rows} < {FEW_LABELS}): use adapters (LoRA r=8) "
                       "on the trainable blocks instead of updating full weights")
    strategy, trainable, lr, wd, reg = plan
    return FineTunePlan(strategy=strategy, trainable=trainable, learning_rate=lr, weight_decay=wd,
                        regularisation=reg, adapters=adapters, reasons=tuple(reasons))


def recommend(ranking: Ranking | None, deployed_source: str, config: RankingConfig, *,
              measures: dict[str, dict[str, float]], top1_probability: dict[str, float] | None = None,
              drift_kind: str = "none", labelled_rows: int = 0, failed: dict[str, str] | None = None,
              input_drift: bool = False, classes: int | None = None) -> Recommendation:
    """Decide keep / switch / insufficient_data and plan fine-tuning for the recommended source."""
    failed = failed or {}
    best = ranking.best() if ranking else None
    if top1_probability is None and ranking is not None:
        # each source's probability of ranking first, discounted by the share of the evidence it lacks
        top1_probability = {e.source: e.confidence for e in ranking.entries if e.confidence is not None} or None
    if ranking is None or best is None:
        return Recommendation(deployed_source, None, "insufficient_data",
                              "no source could be ranked this cycle; the last good ranking stands")
    deployed = ranking.entry(deployed_source)
    plan_for = lambda name: plan_fine_tuning(measures.get(name, {}), drift_kind=drift_kind,
                                             input_drift=input_drift, labelled_rows=labelled_rows,
                                             classes=classes)
    if deployed is None:
        why = failed.get(deployed_source) or ranking.excluded.get(deployed_source) or "it was not ranked"
        return Recommendation(deployed_source, best.source, "switch",
                              f"the deployed source {deployed_source!r} cannot be used ({why}); "
                              f"{best.source!r} ranks first with score {best.score:.3f}",
                              fine_tune=plan_for(best.source))
    gap = best.score - deployed.score
    confidence = (top1_probability or {}).get(best.source)
    if best.source != deployed_source and "negative_transfer" in best.flags:
        return Recommendation(deployed_source, deployed_source, "keep",
                              f"{best.source!r} ranks first but is predicted to transfer worse than no transfer "
                              "(its view of the target scores below the target's own features on LogME and kNN); "
                              "no switch", fine_tune=plan_for(deployed_source), score_gap=gap)
    if best.source != deployed_source and gap >= config.switch_margin and (
            confidence is None or confidence >= config.min_confidence):
        conf = f", best with probability {confidence:.2f}" if confidence is not None else ""
        return Recommendation(deployed_source, best.source, "switch",
                              f"{best.source!r} scores {best.score:.3f} against {deployed.score:.3f} for the deployed "
                              f"{deployed_source!r} (gap {gap:.3f} >= margin {config.switch_margin}{conf})",
                              fine_tune=plan_for(best.source), score_gap=gap)
    if best.source == deployed_source:
        why = f"the deployed source ranks first (score {deployed.score:.3f})"
    elif gap < config.switch_margin:
        why = (f"{best.source!r} leads by {gap:.3f}, below the switch margin {config.switch_margin}; "
               f"the deployed {deployed_source!r} ranks {deployed.rank}")
    else:
        why = (f"{best.source!r} leads by {gap:.3f} but is best with probability only {confidence:.2f} "
               f"< {config.min_confidence}")
    return Recommendation(deployed_source, deployed_source, "keep", why, fine_tune=plan_for(deployed_source),
                          score_gap=gap)
