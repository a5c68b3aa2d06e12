"""Power of the accumulated class-frequency test with one EWMA (lambda 0.3) and with two (0.3 and a
fast one, combined by min-p on the same null draws), on the benchmark's label-prior shapes.

    python bench/drift_label_multiscale_power.py [--fast 0.5 0.6 0.7 0.8 1.0] [--json out.json]

Simulated, not read from a chi-square (a min-p of two correlated Pearson statistics has no closed
form): multinomial windows of 100 rows, a 1,000-row reference redrawn per stream, 5 quiet windows
before the onset, the statistic of ``tasksim.drift.sequential.prior_statistic`` (Pearson's form over
the reference's smoothed frequencies, divided by ``c_t`` with the default benign offset), its null
simulated per step as that function's draws are (reference, windows and the benign offset), at the
``label_cusum`` level with labels (0.075% of the 1% budget, halved between the class frequencies and
the loss excess: 0.0375%). Shapes: the ramp (heavy classes' frequencies x (1 + 4 s), s = 0.1, 0.2,
0.3 at delays 0, 1, 2) and a weak step (heavy classes x 1.5 from the onset). Power "by delay d": an
alarm at one of delays 0..d. Classes: MNIST / Fashion-MNIST uniform over 10 (3 heavy); Letter's 26
from its data file (5 heavy).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasksim.config import DriftConfig
from tasksim.drift.verdict import ALPHA_SHARES

LETTER = Path("/usr/share/doc/opencv-doc/examples/data/letter-recognition.data")
WINDOW, REFERENCE, QUIET = 100, 1000, 5
SLOW = 0.3


def _smoothed(counts: np.ndarray) -> np.ndarray:
    return (counts + 0.5) / (counts.sum(axis=-1, keepdims=True) + 0.5 * counts.shape[-1])


def simulate(p: np.ndarray, shifted: list[np.ndarray], lams: list[float], streams: int, benign: float,
             rng: np.random.Generator, *, reference: int = REFERENCE, quiet: int = QUIET) -> np.ndarray:
    """Statistics [stream, step after the ``quiet`` windows, lambda] of ``streams`` histories (each
    against its own ``reference``-row reference) whose windows after the quiet ones come from
    ``shifted`` (one frequency vector per step)."""
    n, m, k = reference, WINDOW, len(p)
    ref = rng.multinomial(n, p, size=streams).astype(float)
    ref_freq, smooth = ref / n, _smoothed(ref)
    offset = np.zeros((streams, k))
    if benign > 0:  # the null draws' persistent offset (prior_statistic's draw); the shifted streams get it too
        g = np.sqrt(p) * rng.standard_normal((streams, k))
        offset = np.sqrt(benign) * (g - np.outer(g.sum(axis=1), p))
    e = np.zeros((len(lams), streams, k))
    w = np.zeros(len(lams))
    s2 = np.zeros(len(lams))
    out = np.empty((streams, len(shifted), len(lams)))
    for step, q in enumerate([p] * quiet + shifted):
        win = rng.multinomial(m, q, size=streams) / m + offset
        for i, lam in enumerate(lams):
            e[i] = (1 - lam) * e[i] + lam * (win - ref_freq)
            w[i] = (1 - lam) * w[i] + lam
            s2[i] = (1 - lam) ** 2 * s2[i] + lam * lam / m
            if step >= quiet:
                c = s2[i] + w[i] ** 2 * (1 / n + benign)
                out[:, step - quiet, i] = (e[i] ** 2 / smooth).sum(axis=1) / c
    return out


def upper_p(null: np.ndarray, values: np.ndarray) -> np.ndarray:
    """P(null >= value) per value (the null draws sorted once)."""
    ordered = np.sort(null)
    return (len(ordered) - np.searchsorted(ordered, values - 1e-12, side="left")) / len(ordered)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", type=float, nargs="+", default=[0.5, 0.6, 0.7, 0.8, 1.0])
    parser.add_argument("--null-draws", type=int, default=200000)
    parser.add_argument("--streams", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    cfg = DriftConfig()
    benign = cfg.benign_offset_sd ** 2
    level = cfg.false_alarm_rate * ALPHA_SHARES["label_cusum"] / 2
    letters = pd.read_csv(LETTER, header=None)[0]
    cases = {"mnist / fashion-mnist": (np.full(10, 0.1), [0, 1, 2]),
             "letter": (letters.value_counts(normalize=True).sort_index().to_numpy(), [0, 1, 2, 3, 4])}
    lams = [SLOW, *args.fast]
    record: dict = {"level": level, "benign": benign, "lambdas": lams, "null_draws": args.null_draws,
                    "streams": args.streams, "cases": {}}
    rng = np.random.default_rng(args.seed)
    print(f"level {level:.3g} per window; power by delay 2 (ramp) and by delays 2 / 5 (step x1.5)")
    print("| data | test | ramp by 2 | step by 2 | step by 5 |")
    print("| --- | --- | --- | --- | --- |")
    for name, (p, heavy) in cases.items():
        def moved(factor: float, p: np.ndarray = p, heavy: list[int] = heavy) -> np.ndarray:
            w = np.ones(len(p))
            w[heavy] = factor
            return w * p / (w * p).sum()

        shapes = {"ramp": [moved(1 + 4 * s) for s in (0.1, 0.2, 0.3)], "step": [moved(1.5)] * 6}
        null = simulate(p, [p] * 6, lams, args.null_draws, benign, rng)
        # per-step p-values of each lambda, and of the joint min-p (0.3 with each fast one)
        null_p = np.stack([[upper_p(null[:, t, i], null[:, t, i]) for i in range(len(lams))]
                           for t in range(6)])  # [step, lambda, draw]
        result: dict = {}
        for shape, qs in shapes.items():
            alt = simulate(p, qs, lams, args.streams, benign, rng)
            steps = len(qs)
            fired: dict[str, np.ndarray] = {}
            for i, lam in enumerate(lams):
                alt_p = np.stack([upper_p(null[:, t, i], alt[:, t, i]) for t in range(steps)], axis=1)
                fired[f"{lam:g} alone"] = alt_p <= level
            for i, lam in enumerate(lams[1:], start=1):
                hits = np.empty((args.streams, steps), dtype=bool)
                for t in range(steps):
                    null_min = np.minimum(null_p[t, 0], null_p[t, i])
                    alt_min = np.minimum(upper_p(null[:, t, 0], alt[:, t, 0]), upper_p(null[:, t, i], alt[:, t, i]))
                    hits[:, t] = upper_p(-null_min, -alt_min) <= level  # P(null min-p <= observed min-p)
                fired[f"{SLOW:g} + {lam:g} (min-p)"] = hits
            result[shape] = {test: {f"by_{d}": float(h[:, : d + 1].any(axis=1).mean()) for d in range(steps)}
                             for test, h in fired.items()}
        record["cases"][name] = result
        for test in result["ramp"]:
            r, s = result["ramp"][test], result["step"][test]
            print(f"| {name} | {test} | {r['by_2']:.3f} | {s['by_2']:.3f} | {s['by_5']:.3f} |")
        # the joint test's size at each step (its null draws against themselves: level by construction)
    if args.json:
        args.json.write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
