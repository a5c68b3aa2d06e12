"""Where does the accumulated label test lose its power on a label-prior ramp? One factor at a time.

    python bench/drift_label_power_decomposition.py [--json out.json]

The simulation of ``bench/drift_label_multiscale_power.py`` (multinomial 100-row windows, a
reference redrawn per stream, the statistic and simulated null of
``tasksim.drift.sequential.prior_statistic`` at one scale, lambda 0.3) on its MNIST-like case (10
uniform classes, 3 heavy; the ramp multiplies them by 1 + 4 s, s = 0.1, 0.2, 0.3 at delays 0-2):
the power by delay 2 as tasksim runs it, then with one factor relaxed at a time: no benign offset
in the null, the whole ``label_cusum`` share instead of half of it, the label family's rate, the
budget without the reference margin, a 5,000-row reference (tasksim's default sampling cap), a
100,000-row one (the population, nearly), no quiet windows before the onset; and all relaxed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import drift_label_multiscale_power as sim

P = np.full(10, 0.1)
HEAVY = [0, 1, 2]
BENIGN = 0.015 ** 2  # DriftConfig().benign_offset_sd squared
AS_RUN = {"level": 0.000375, "benign": BENIGN, "reference": 1000, "quiet": 5}


def moved(factor: float) -> np.ndarray:
    w = np.ones(len(P))
    w[HEAVY] = factor
    return w * P / (w * P).sum()


def power(rng: np.random.Generator, *, level: float, benign: float, reference: int, quiet: int,
          null_draws: int, streams: int) -> float:
    """Power by delay 2 of the one-scale test on the ramp (an alarm at delay 0, 1 or 2)."""
    ramp = [moved(1 + 4 * s) for s in (0.1, 0.2, 0.3)]
    null = sim.simulate(P, [P] * 3, [0.3], null_draws, benign, rng, reference=reference, quiet=quiet)
    alt = sim.simulate(P, ramp, [0.3], streams, benign, rng, reference=reference, quiet=quiet)
    hits = np.stack([sim.upper_p(null[:, t, 0], alt[:, t, 0]) <= level for t in range(3)], axis=1)
    return float(hits.any(axis=1).mean())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--null-draws", type=int, default=100000)
    ap.add_argument("--streams", type=int, default=10000)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    variants = {
        "as tasksim runs it (0.0375%, benign offset, 1,000 reference rows, 5 quiet windows)": {},
        "no benign offset": {"benign": 0.0},
        "the whole label_cusum share (0.075%)": {"level": 0.00075},
        "the label family's rate (0.125%)": {"level": 0.00125},
        "no reference margin (0.25%)": {"level": 0.0025},
        "5,000 reference rows": {"reference": 5000},
        "100,000 reference rows": {"reference": 100000},
        "no quiet windows before the onset": {"quiet": 0},
        "all relaxed (0.125%, no offset, 100,000 rows, no quiet windows)":
            {"level": 0.00125, "benign": 0.0, "reference": 100000, "quiet": 0},
    }
    out = {}
    print("| variant | power by delay 2 |\n| --- | --- |")
    for name, change in variants.items():
        out[name] = power(rng, **{**AS_RUN, **change}, null_draws=args.null_draws, streams=args.streams)
        print(f"| {name} | {out[name]:.2f} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"power_by_delay_2": out, "null_draws": args.null_draws,
                                         "streams": args.streams}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
