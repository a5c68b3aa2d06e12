"""An exact per-class concept test over the last windows, checked offline on the drift benchmark (issue 13; not built).

    python bench/drift_concept_per_class_exact.py --data mnist --below 1e-2 --windows 2

Each labelled row is "implausible" when the benchmark's reference model gives its label a
probability below ``--below``. Per class, the count of implausible rows over the last
``--windows`` windows is compared with the class's reference rows (their cross-fitted
probabilities) by Fisher's exact test (one-sided, hypergeometric); the smallest p-value over the
classes seen gets Sidak's correction (disjoint rows: independent under no shift). The cut is the
accumulated label family's share as the product splits it (1% x 0.5 x 0.15, halved for the class
frequencies, halved again for the overall excess). Printed: alarms on 600 quiet windows, and the
delays of the label-swap ramp on 16 streams (the benchmark's ramp windows after 5 quiet ones).
Results: docs/benchmarks.md, "A per-class accumulated concept test with normal tails".
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.stats import hypergeom

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import drift_benchmark as db

CUT = 0.01 * 0.5 * 0.15 / 2 / 2
RAMP = "concept: labels swapped"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", choices=sorted(db.PIXEL_AND_TABULAR_LOADERS), default="mnist")
    ap.add_argument("--below", type=float, default=1e-2, help="a label is implausible below this probability")
    ap.add_argument("--windows", type=int, default=2, help="windows pooled (the last ones)")
    ap.add_argument("--quiet", type=int, default=600)
    ap.add_argument("--streams", type=int, default=16)
    args = ap.parse_args(argv)
    data = db.PIXEL_AND_TABULAR_LOADERS[args.data]()
    stream = db.Stream(data, np.random.default_rng([0, 7]))
    methods = db.Methods(data, stream, db.TASKSIM_CONFIG)
    ref = methods.ref
    k = len(ref.classes)
    finite = np.isfinite(ref.cv_loss) & (ref.ref_label_codes >= 0)
    implausible_ref = finite & (1.0 - np.nan_to_num(ref.cv_loss, nan=0.0) < args.below)
    pool_rows = np.array([np.sum(finite & (ref.ref_label_codes == c)) for c in range(k)])
    pool_hits = np.array([np.sum(implausible_ref & (ref.ref_label_codes == c)) for c in range(k)])

    def counts(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        _, _, clf_x = ref.project(None if data.vector else methods._frame(x), x if data.vector else None)
        proba = ref.predict_proba(clf_x, np.random.default_rng(0))
        codes = np.array([ref.classes.index(str(v)) for v in y])
        hits = proba[np.arange(len(codes)), codes] < args.below
        return np.bincount(codes, minlength=k), np.bincount(codes, weights=hits.astype(float), minlength=k)

    def pvalue(history: list[tuple[np.ndarray, np.ndarray]]) -> float:
        rows = sum(h[0] for h in history)
        hits = sum(h[1] for h in history)
        ps = [hypergeom.sf(hits[c] - 1, pool_rows[c] + rows[c], pool_hits[c] + hits[c], rows[c])
              for c in range(k) if rows[c]]
        return float(-np.expm1(len(ps) * np.log1p(-min(min(ps), 1 - 1e-16))))

    stream.rng = np.random.default_rng(21)
    history: list[tuple[np.ndarray, np.ndarray]] = []
    alarms = 0
    for _ in range(args.quiet):
        history = (history + [counts(*stream.window())])[-args.windows:]
        alarms += pvalue(history) <= CUT
    make = dict(db.scenarios(data, stream))[RAMP][1]
    ramp_index = list(db.scenarios(data, stream)).index(RAMP)
    delays: list[int | None] = []
    for s in range(args.streams):
        stream.rng = np.random.default_rng([0, 7, ramp_index, s])
        history = []
        for _ in range(5):
            history = (history + [counts(*stream.window())])[-args.windows:]
        found = None
        for t in range(10):
            x, y, _ = make(stream, (t + 1) / 10)
            history = (history + [counts(x, y)])[-args.windows:]
            if pvalue(history) <= CUT:
                found = t
                break
        delays.append(found)
    print(f"reference rows of each class with an implausible label: {np.round(pool_hits / pool_rows, 3).tolist()}")
    print(f"below {args.below:g}, last {args.windows} windows: {alarms} alarms in {args.quiet} quiet windows "
          f"(cut {CUT:.2e}); label-swap ramp delays {delays}; within 2 windows "
          f"{sum(d is not None and d <= 2 for d in delays)} of {args.streams}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
