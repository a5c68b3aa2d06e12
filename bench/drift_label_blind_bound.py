"""What can a test that does NOT know which classes a label-prior ramp favours reach? A
direction-blind bound beside the oracle's (``bench/drift_ramp_oracle.py``).

    python bench/drift_label_blind_bound.py --json out.json [--with-text]

The oracle knows the heavy classes; a real test watches every direction of the class marginal
and pays for it in degrees of freedom. Here the test still knows the onset and the ramp's
strengths (0.1, 0.2, 0.3 at delays 0-2) and the population frequencies ``p`` (no reference
error), but not the direction: Pearson's statistic ``N sum_k d_k^2 / p_k`` of the three windows'
class frequencies minus ``p``, combined with weights ``a`` (unit norm; the strengths, or equal:
the last three windows pooled), is chi-square with K - 1 degrees of freedom under no shift
(normal approximation of the multinomial) and noncentral under the ramp, with noncentrality
``N sum_k (sum_i a_i (q_k(s_i) - p_k))^2 / p_k``, ``q(s)`` the ramp's frequencies (the heavy
classes' pool frequencies times 1 + 4 s, as ``drift_benchmark.scenarios`` draws them), N = 100
rows a window. Its power by delay 2 at level 3 x rate is printed for the per-window rates 1%,
0.5% and the default's label-family rate (label prior + accumulated labels).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import drift_benchmark as db
import drift_ramp_oracle as oracle

from tasksim.config import DriftConfig
from tasksim.drift.verdict import ALPHA_SHARES


def blind_power(freq: np.ndarray, heavy: dict[int, float], rate: float, weights: np.ndarray,
                rows: int = db.WINDOW) -> float:
    """Power by delay 2 of the direction-blind chi-square at level ``3 rate`` (see the module)."""
    a = np.asarray(weights, dtype=np.float64) / np.linalg.norm(weights)
    d = sum(ai * (freq * oracle.prior_ratio(freq, heavy, s) - freq) for ai, s in zip(a, oracle.STRENGTHS))
    ncp = rows * float(np.sum(d ** 2 / freq))
    k = len(freq)
    return float(stats.ncx2.sf(stats.chi2.isf(3 * rate, k - 1), k - 1, ncp))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--with-text", action="store_true", help="also Reuters R8 through MiniLM (embeddings cached)")
    args = ap.parse_args(argv)
    family = (ALPHA_SHARES["label_prior"] + ALPHA_SHARES["label_cusum"]) * DriftConfig().false_alarm_rate
    rates = {"1%": 0.01, "0.5%": 0.005, f"family {family:.3%}": family}
    out = []
    print("| data | classes (heavy) | weights | " + " | ".join(f"by delay 2 at {r}" for r in rates) + " |")
    print("| --- | --- | --- |" + " --- |" * len(rates))
    loaders = dict(db.PIXEL_AND_TABULAR_LOADERS)
    names = ["landsat", "mnist", "fashion-mnist", "letter"] + (["reuters-r8"] if args.with_text else [])
    loaders["reuters-r8"] = db.load_reuters_minilm
    for name in names:
        data = loaders[name]()
        ids = oracle._proxy(data, np.arange(len(data.y)))
        stream = db.Stream(ids, np.random.default_rng([0, 7]))
        k = int(data.y.max()) + 1
        freq = np.bincount(data.y[stream.pool], minlength=k) / len(stream.pool)
        made = {n: m for n, (_, m) in db.scenarios(ids, stream).items()}
        heavy = oracle._definition(made["label prior (labels)"], "heavy")
        for label, w in (("strengths", np.array(oracle.STRENGTHS)), ("equal (pooled)", np.ones(3))):
            powers = {r: blind_power(freq, heavy, v, w) for r, v in rates.items()}
            out.append({"dataset": name, "classes": k, "heavy": len(heavy), "weights": label, "power": powers})
            print(f"| {name} | {k} ({len(heavy)}) | {label} | " + " | ".join(f"{p:.2f}" for p in powers.values()) + " |")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
