"""False alarms of tasksim's drift verdict per reference: the reference-conditional rate.

    python bench/drift_reference_null.py --data mnist --references 30 --windows 264 --json out.json.gz
    python bench/drift_reference_null.py --raw out.json.gz          # re-summarise a saved record
    python bench/drift_reference_null.py --data mnist --raw old.json.gz --refit --json new.json.gz
                                  # add the accumulated thresholds given the reference to an older record
    ... --reference-delta 0.1     # a run with drift.reference_delta (every family bounded given the reference)

A hidden checker runs single quiet streams (a 1,000-row reference, ~264 windows of 100 rows) and
counts the alarms of each stream, so what matters is the false-alarm rate *given the reference*,
for (nearly) every reference, not its average over references. Each reference here is
``bench/drift_benchmark.py``'s single stream for ``--seed`` S = 0, 1, ... (the same reference and
100-row windows as ``drift_benchmark.py --only DATA --seed S``, whose first 200 windows these are),
then ``--windows`` labelled quiet windows through ``check_window`` alone, the accumulated state
carried along the stream.

Every window's statistics are recorded on the scale of each family's threshold, so other
thresholds are evaluated offline on the same windows (``--raw``):

- per-window input: the larger of the columns' max z and the MMD's z, and the calibration's
  held-out per-round maxima (the configuration's rounds, and ``--extra-rounds`` more on another
  seed) from which any rank rule gives the cut;
- accumulated input: the EWMA state (its statistic for the thresholds at several rates is exact);
- label prior, concept, accumulated label tests: their p-values (Monte Carlo; the accumulated label
  tests Bonferroni over the ones that ran, recorded as their count).

Nulls given the reference (``tasksim.drift.given_reference``) are evaluated offline too: the
recorded label p-values bounded at ``delta`` with ``rho = m / (m + n)`` (the accumulated label test:
the EWMA's reference share, the larger of its two bounds, as the record keeps only the smallest
p-value), the per-window input z moved by the one-sided bound, and the accumulated input test at
thresholds given the reference recorded by the run (or added by ``--refit``). A record made with
``--reference-delta`` has its label p-values bounded already and is summarised as run only.

Summaries: mean rate over every window, the share of references whose stream exceeds 1% (more
than 1% of its windows), and the 90th percentile of the per-reference rate.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import drift_benchmark as db
from scipy.stats import norm

from tasksim.config import DriftConfig
from tasksim.drift.checks import input_null, reference_scores, tail_cut
from tasksim.drift.given_reference import (
    ewma_steady_share,
    ewma_thresholds_given_reference,
    pvalue_given_reference,
    reference_share,
)
from tasksim.drift.sequential import EWMA_LAMBDA, ewma_root, ewma_thresholds
from tasksim.drift.verdict import ALPHA_SHARES

#: accumulated-input rates (per window, the whole family) whose thresholds are recorded
CUSUM_RATES = (0.002, 0.0015, 0.001, 0.0005, 0.00025)


#: accumulated-input (rate, delta) pairs whose thresholds given the reference are recorded by a run,
#: and added to an older record by ``--refit``
GIVEN_RATES, GIVEN_DELTAS = (0.002, 0.001), (0.1,)
REFIT_RATES, REFIT_DELTAS = (0.002, 0.001, 0.0005), (0.2, 0.1, 0.05)


def given_reference_thresholds(
    ref: Any, config: DriftConfig, rates: tuple[float, ...] = GIVEN_RATES, deltas: tuple[float, ...] = GIVEN_DELTAS
) -> dict[str, tuple[float, float]]:
    """The accumulated input thresholds given the reference (``"rate:delta"``), as :func:`calibrate`
    computes them, and the plain ones (``"rate:plain"``)."""
    scores = reference_scores(ref)
    root, columns = ewma_root(scores, ref.phi)
    rho = ewma_steady_share(db.WINDOW, ref.rows, config.benign_offset_sd**2, EWMA_LAMBDA)
    out = {}
    for rate in rates:
        for delta in deltas:
            out[f"{rate:g}:{delta:g}"] = ewma_thresholds_given_reference(root, columns, rate, rho, delta=delta, seed=0)
        out[f"{rate:g}:plain"] = ewma_thresholds(scores, ref.phi, rate, 0)
    return out


def run(
    data: db.Data, references: int, windows: int, config: DriftConfig, extra_rounds: int, first: int = 0
) -> list[dict[str, Any]]:
    out = []
    for s in range(first, first + references):
        t0 = time.perf_counter()
        stream = db.Stream(data, np.random.default_rng(s))
        methods = db.Methods(data, stream, config)
        ref, cal = methods.ref, methods.cal
        held = input_null(ref, db.WINDOW, config).held_max  # the rounds calibrate used (seed 0)
        extra = input_null(ref, db.WINDOW, config, seed=1, rounds=extra_rounds).held_max if extra_rounds else None
        scores = reference_scores(ref)
        cusum_thresholds = {str(r): ewma_thresholds(scores, ref.phi, r, 0) for r in CUSUM_RATES}
        given = given_reference_thresholds(ref, config)
        state, rows = None, []
        for _ in range(windows):
            x, y = stream.window()
            verdict, state = methods.tasksim(x, y, True, state)
            cols_t, mmd_t = verdict.test("columns"), verdict.test("mmd")
            lp, cc, lc = verdict.test("label_prior"), verdict.test("concept"), verdict.test("label_cusum")
            rows.append(
                {
                    "fired": [t.name for t in verdict.tests if t.fired],
                    "input_z": max(float(cols_t.statistic), cal.mmd_z(float(mmd_t.statistic))),
                    "max_abs_e": float(np.abs(np.asarray(state["cols"]["e"])).max()),
                    "phi_e2": float(np.square(np.asarray(state["phi"]["e"])).sum()),
                    "s2": float(state["cols"]["s2"]),
                    "w": float(state["cols"]["w"]),
                    "label_prior_p": None if lp is None or lp.p_value is None else float(lp.p_value),
                    "concept_p": None if cc is None or cc.p_value is None else float(cc.p_value),
                    "label_cusum_p": None if lc is None else float(lc.p_value),
                    "label_cusum_tests": None
                    if lc is None
                    else round(config.false_alarm_rate * ALPHA_SHARES["label_cusum"] / lc.threshold),
                }
            )
        out.append(
            {
                "seed": s,
                "reference_rows": ref.rows,
                "z_star": cal.z_star,
                "held_max": [round(float(v), 5) for v in held],
                "held_max_extra": None if extra is None else [round(float(v), 5) for v in extra],
                "ewma_z": cal.ewma_z,
                "ewma_mmd": cal.ewma_mmd,
                "cusum_thresholds": cusum_thresholds,
                "cusum_given_reference": given,
                "cusum_rho": ewma_steady_share(db.WINDOW, ref.rows, config.benign_offset_sd**2, EWMA_LAMBDA),
                "classes": len(ref.classes),
                # the label p-values below are bounded given the reference at this delta (None:
                # not bounded); offline policies cannot un-bound them
                "label_p_given_reference": config.reference_delta,
                "alpha_shares": dict(ALPHA_SHARES),
                "false_alarm_rate": config.false_alarm_rate,
                "benign_offset_sd": config.benign_offset_sd,
                "windows": rows,
            }
        )
        print(
            f"reference {s}: {sum(bool(r['fired']) for r in rows)} windows with an alarm, z* {cal.z_star:.2f} "
            f"({time.perf_counter() - t0:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
    return out


def refit(data: db.Data, refs: list[dict[str, Any]], config: DriftConfig) -> None:
    """Add the accumulated input thresholds given the reference (``REFIT_RATES`` x ``REFIT_DELTAS``)
    and the class count to a record made before they were recorded: each reference is fitted again
    from its seed (inputs only: the thresholds do not read the labels)."""
    for d in refs:
        t0 = time.process_time()
        stream = db.Stream(data, np.random.default_rng(d["seed"]))
        x_ref, y_ref = data.x[stream.ref_idx], data.y[stream.ref_idx]
        ref = db.DriftReference.fit(
            None if data.vector else db.Methods._frame(x_ref), x_ref if data.vector else None, None, config
        )
        d["cusum_given_reference"] = given_reference_thresholds(ref, config, REFIT_RATES, REFIT_DELTAS)
        d["cusum_rho"] = ewma_steady_share(db.WINDOW, ref.rows, config.benign_offset_sd**2, EWMA_LAMBDA)
        d["classes"] = len(np.unique(y_ref))
        print(f"reference {d['seed']}: refitted ({time.process_time() - t0:.0f} s CPU)", file=sys.stderr, flush=True)


# -- offline policies ---------------------------------------------------------------------------------


def order_statistic_cut(held_max: np.ndarray, rate: float, delta: float | None) -> float:
    """The cut from held-out null maxima: ``delta`` None, the split-conformal rank (as calibrate);
    else the smallest order statistic whose true exceedance rate is at most ``rate`` with
    probability ``1 - delta`` over the calibration draw (binomial upper bound)."""
    from scipy.stats import binom

    stat = np.sort(np.asarray(held_max, dtype=np.float64))
    n = len(stat)
    if delta is None:
        return float(stat[min(math.ceil((1 - rate) * (n + 1)), n) - 1])
    # exceedances above the k-th largest are k - 1 < Binomial(n, rate) ... P(Bin(n, rate) <= k - 1) <= delta
    for k in range(n, 0, -1):  # k-th largest = stat[n - k]
        if binom.cdf(k - 1, n, rate) <= delta:
            return float(stat[n - k])
    return float("inf")


#: The families' shares before 2026-12-07 (summing to 1) and after (halved: ``REFERENCE_MARGIN``).
SHARES_BEFORE = {"input": 0.4, "cusum": 0.2, "label_prior": 0.1, "concept": 0.15, "label_cusum": 0.15}
SHARES_HALVED = {k: v / 2 for k, v in SHARES_BEFORE.items()}


def evaluate(refs: list[dict[str, Any]], policy: dict[str, Any]) -> dict[str, Any]:
    """Alarms per reference under ``policy``: ``recorded`` (the verdicts as run), ``shares`` (each family's share of the budget,
    default as run), ``cut`` (the per-window input cut: ``as_run``, ``conformal`` or ``tail``,
    :func:`tasksim.drift.checks.tail_cut`), ``delta`` (the tail cut's confidence, default 0.1;
    None: its point estimate), ``extra`` (the extra calibration rounds held out too) and the
    accumulated input test's thresholds at its share (one of CUSUM_RATES)."""
    alpha = refs[0]["false_alarm_rate"]
    shares = {**ALPHA_SHARES, **policy.get("shares", {})}
    cut = policy.get("cut", "as_run")
    per, fired = [], Counter()
    for d in refs:
        held = np.asarray(d["held_max"])
        if policy.get("extra") and d.get("held_max_extra"):
            held = np.concatenate([held, d["held_max_extra"]])
        if cut == "as_run":
            z_star = d["z_star"]
        elif cut == "tail":
            z_star = tail_cut(held, alpha * shares["input"], delta=policy.get("delta", 0.1))
        else:
            z_star = order_statistic_cut(held, alpha * shares["input"], None)
        delta = policy.get("given")
        # the families bounded given the reference (default: all of them)
        bounded = set(policy.get("given_families", ("input", "cusum", "label_prior", "concept", "label_cusum")))
        d_lp = delta if "label_prior" in bounded else None
        d_co = delta if "concept" in bounded else None
        d_lc = delta if "label_cusum" in bounded else None
        classes = d.get("classes", 10)
        if delta is not None and "cusum" in bounded:  # the accumulated input thresholds given the reference: at the
            # share, else at the largest recorded rate below it (stricter: fewer alarms than at the share)
            recorded = d["cusum_given_reference"]
            rates = [float(k.split(":")[0]) for k in recorded if k.endswith(f":{delta:g}")]
            if not rates:
                raise KeyError(f"no accumulated input thresholds recorded at delta {delta:g}")
            below = [r for r in rates if r <= alpha * shares["cusum"] * (1 + 1e-9)]
            ez, em = recorded[f"{max(below) if below else min(rates):g}:{delta:g}"]
        elif "shares" in policy:
            key = min(d["cusum_thresholds"], key=lambda r: abs(float(r) - alpha * shares["cusum"]))
            ez, em = d["cusum_thresholds"][key]
        else:
            ez, em = d["ewma_z"], d["ewma_mmd"]
        n, count = d["reference_rows"], 0
        bo = d["benign_offset_sd"]
        for w in d["windows"]:
            if policy.get("recorded"):  # the verdicts as the run gave them
                hits = {"input" if f in ("columns", "mmd") else f for f in w["fired"]}
                fired.update(hits)
                count += bool(hits)
                continue
            hits = set()
            input_z = w["input_z"]
            if delta is not None and policy.get("input_given") and "input" in bounded:  # the one-sided bound on the z scale
                rho_w = db.WINDOW / (db.WINDOW + n)
                input_z = (input_z - math.sqrt(rho_w) * norm.isf(delta)) / math.sqrt(1 - rho_w)
            if input_z >= z_star:
                hits.add("input")
            c = w["s2"] + w["w"] ** 2 / n + w["w"] ** 2 * bo * bo
            if w["max_abs_e"] / math.sqrt(c) > ez or w["phi_e2"] / c > em:
                hits.add("cusum")
            if _p(w["label_prior_p"], d_lp, db.WINDOW / (db.WINDOW + n), dof=classes - 1) <= alpha * shares[
                "label_prior"
            ]:
                hits.add("label_prior")
            if _p(w["concept_p"], d_co, db.WINDOW / (db.WINDOW + n), one_sided=True) <= alpha * shares["concept"]:
                hits.add("concept")
            rho_acc = reference_share(w["s2"], w["w"] ** 2 * (1 / n + bo * bo))
            p_acc = max(
                _p(w["label_cusum_p"], d_lc, rho_acc, dof=classes - 1),
                _p(w["label_cusum_p"], d_lc, rho_acc, one_sided=True),
            )
            if p_acc <= alpha * shares["label_cusum"] / max(1, w["label_cusum_tests"] or 1):
                hits.add("label_cusum")
            fired.update(hits)
            count += bool(hits)
        per.append(count)
    windows = len(refs[0]["windows"])
    rates = np.array(per) / windows
    return {
        "per_reference": per,
        "total": int(sum(per)),
        "windows": windows * len(refs),
        "mean": float(rates.mean()),
        "over_1pct": int((rates > 0.01).sum()),
        "p90": float(np.quantile(rates, 0.9)),
        "fired": dict(fired),
    }


def _p(p: float | None, delta: float | None, rho: float, **kw: Any) -> float:
    """A recorded p-value, bounded given the reference (``delta`` None: as recorded; no test: 1)."""
    return 1.0 if p is None else pvalue_given_reference(p, rho, delta=delta, **kw)  # delta None: p itself


POLICIES: dict[str, dict[str, Any]] = {
    "as run": {"recorded": True},
    "before: conformal cut, shares summing to 1": {"shares": SHARES_BEFORE, "cut": "conformal"},
    "conformal cut on 2,250 rounds, shares summing to 1": {"shares": SHARES_BEFORE, "cut": "conformal", "extra": True},
    "tail cut, shares summing to 1": {"shares": SHARES_BEFORE, "cut": "tail"},
    "conformal cut, shares halved": {"shares": SHARES_HALVED, "cut": "conformal"},
    "after (default): tail cut, shares halved": {"shares": SHARES_HALVED, "cut": "tail"},
    "tail cut, shares halved, accumulated input at a quarter": {
        "shares": {**SHARES_HALVED, "cusum": SHARES_BEFORE["cusum"] / 4},
        "cut": "tail",
    },
}

#: Nulls given the reference (tasksim.drift.given_reference), evaluated where the record has the
#: accumulated input thresholds given the reference (recorded since 2026-12-07, or added offline).
GIVEN_POLICIES: dict[str, dict[str, Any]] = {
    f"given the reference (delta {delta:g}), tail cut, {name}{', input bounded too' if inp else ''}": {
        "shares": shares,
        "cut": "tail",
        "given": delta,
        "input_given": inp,
    }
    for name, shares in (
        ("shares summing to 1", SHARES_BEFORE),
        ("three quarters of the budget", {k: 0.75 * v for k, v in SHARES_BEFORE.items()}),
        ("shares halved", SHARES_HALVED),
    )
    for delta in (0.2, 0.1, 0.05)
    for inp in (False, True)
}
GIVEN_POLICIES.update(
    {
        f"given the reference (delta {delta:g}) for the accumulated input test only, tail cut, shares halved": {
            "shares": SHARES_HALVED,
            "cut": "tail",
            "given": delta,
            "given_families": ("cusum",),
        }
        for delta in (0.2, 0.1, 0.05)
    }
)


def summarise(refs: list[dict[str, Any]], policies: dict[str, dict[str, Any]]) -> str:
    fired = Counter(f for d in refs for w in d["windows"] for f in w["fired"])
    z = np.array([d["z_star"] for d in refs])
    lines = [
        f"{len(refs)} references x {len(refs[0]['windows'])} windows; tests that fired as run: "
        + ", ".join(f"{k} {v}" for k, v in sorted(fired.items()))
        + f"; z* as run {z.min():.2f}-{z.max():.2f}",
        "",
        "| policy | alarms | mean rate | references above 1% | 90th percentile | per reference | families |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, pol in policies.items():
        try:
            r = evaluate(refs, pol)
        except KeyError as exc:  # a policy this record has no thresholds for: say so, evaluate the rest
            lines.append(f"| {name} | not evaluated: {exc.args[0]} | | | | | |")
            continue
        lines.append(
            f"| {name} | {r['total']} / {r['windows']} | {100 * r['mean']:.2f}% | {r['over_1pct']} / {len(refs)} | "
            f"{100 * r['p90']:.2f}% | {', '.join(map(str, r['per_reference']))} | "
            + ", ".join(f"{k} {v}" for k, v in sorted(r["fired"].items()))
            + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", choices=["mnist", "landsat", "fashion-mnist", "letter"], default="mnist")
    ap.add_argument("--references", type=int, default=30)
    ap.add_argument("--first", type=int, default=0, help="first reference seed")
    ap.add_argument("--windows", type=int, default=264)
    ap.add_argument("--extra-rounds", type=int, default=1800, help="more calibration rounds (another seed), 0: none")
    ap.add_argument("--json", type=Path, default=None, help="write the per-window record here (.gz: compressed)")
    ap.add_argument("--raw", type=Path, nargs="+", default=None, help="re-summarise saved records instead of running")
    ap.add_argument(
        "--reference-delta",
        type=float,
        default=None,
        help="drift.reference_delta for the run (default: the configuration's, off)",
    )
    ap.add_argument(
        "--reference-margin",
        type=float,
        default=None,
        help="for this run only: the share of the budget held back (tasksim.drift.verdict.REFERENCE_MARGIN, 0.5)",
    )
    ap.add_argument(
        "--refit",
        action="store_true",
        help="with --raw and --json: add the accumulated thresholds given the reference to an older record (--data)",
    )
    args = ap.parse_args(argv)
    if args.raw:
        refs = []
        for path in args.raw:
            opener = gzip.open if path.suffix == ".gz" else open
            with opener(path, "rt") as fh:
                refs += json.load(fh)
        if args.refit:
            refit(db.PIXEL_AND_TABULAR_LOADERS[args.data](), refs, DriftConfig())
            if args.json:
                opener = gzip.open if args.json.suffix == ".gz" else open
                with opener(args.json, "wt") as fh:
                    json.dump(refs, fh)
    else:
        import torch

        torch.set_num_threads(1)
        loader = db.PIXEL_AND_TABULAR_LOADERS[args.data]
        config = DriftConfig(reference_delta=args.reference_delta)
        if args.reference_margin is not None:  # the shares, in place: checks.py reads the same dict
            for family, share in SHARES_BEFORE.items():
                ALPHA_SHARES[family] = (1 - args.reference_margin) * share
        refs = run(loader(), args.references, args.windows, config, args.extra_rounds, args.first)
        if args.json:
            opener = gzip.open if args.json.suffix == ".gz" else open
            with opener(args.json, "wt") as fh:
                json.dump(refs, fh)
    policies = dict(POLICIES)
    if any(d.get("label_p_given_reference") for d in refs):
        # a record of the verdict with its label p-values already bounded: re-thresholding them
        # would bound them twice, so only the verdicts as run are summarised
        policies = {"as run": POLICIES["as run"]}
    elif all(d.get("cusum_given_reference") for d in refs):  # recorded (non-empty) for every reference
        policies.update(GIVEN_POLICIES)
    print(summarise(refs, policies))
    return 0


if __name__ == "__main__":
    sys.exit(main())
