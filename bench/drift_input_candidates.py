"""Three input tests checked on the drift benchmark's windows before building them (issue 13); none was built.

    python bench/drift_input_candidates.py --data mnist --test novelty
    python bench/drift_input_candidates.py --data landsat --test hotelling
    python bench/drift_input_candidates.py --data landsat --test class-hotelling

- ``novelty``: how many of a window's rows lie beyond the reference's own 99th percentile of the
  distance to the 5th nearest other reference row (the conformal null expects about 1.1 of 100),
  in three spaces (the monitored columns standardised, the same unstandardised, the raw inputs),
  on 20 quiet windows and 5 windows of one ramp at full strength;
- ``hotelling``: T² of the window's mean in the monitored columns against the reference's
  (Ledoit-Wolf covariance), cut at the larger of its 400 quiet windows' 99.9% quantile and
  chi-square's 0.05% point; power over 20 windows at strengths 0.1, 0.2, 0.3 and 1 of every ramp;
- ``class-hotelling``: the same on class-centred rows (each row minus its class's reference mean,
  the within-class covariance), cut at the quiet windows' 99.9% quantile.

The reference and windows are ``drift_benchmark.ramp_delays``' (seed 0). Results: docs/benchmarks.md,
"A novelty-count test and two mean tests: checked, not built".
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import drift_benchmark as db
from scipy.stats import chi2
from sklearn.covariance import LedoitWolf


def kth_distance(queries: np.ndarray, points: np.ndarray, k: int, *, leave_one_out: bool = False) -> np.ndarray:
    """Euclidean distance of each query row to its ``k``-th nearest row of ``points`` (``leave_one_out``:
    the queries are ``points`` and a row is not its own neighbour)."""
    d2 = (queries * queries).sum(1)[:, None] + (points * points).sum(1)[None, :] - 2.0 * queries @ points.T
    if leave_one_out:
        np.fill_diagonal(d2, np.inf)
    return np.sqrt(np.maximum(np.partition(d2, k - 1, axis=1)[:, k - 1], 0.0))


def novelty(methods: db.Methods, data: db.Data, stream: db.Stream, make, quiet: int = 20, shifted: int = 5) -> None:
    ref_x = data.x[stream.ref_idx].astype(float)
    ref_frame = methods.monitored(ref_x).to_numpy(float)
    centre, scale = ref_frame.mean(0), np.where(ref_frame.std(0) > 0, ref_frame.std(0), 1.0)
    spaces = {"monitored columns, standardised": lambda x: (methods.monitored(x).to_numpy(float) - centre) / scale,
              "monitored columns": lambda x: methods.monitored(x).to_numpy(float),
              "raw inputs": lambda x: x.astype(float)}
    stream.rng = np.random.default_rng(5)
    quiet_x = [stream.window()[0] for _ in range(quiet)]
    shifted_x = [make(stream, 1.0)[0] for _ in range(shifted)]
    for name, space in spaces.items():
        points = space(ref_x)
        own = kth_distance(points, points, 5, leave_one_out=True)
        cut = np.sort(own)[len(own) - 1 - int(0.01 * len(own))]
        count = lambda x, space=space, points=points, cut=cut: int((kth_distance(space(x), points, 5) > cut).sum())
        q = [count(x) for x in quiet_x]
        print(f"{name}: quiet windows {np.mean(q):.2f} rows beyond the cut (max {max(q)}); "
              f"full strength {[count(x) for x in shifted_x]}")


def mean_tests(methods: db.Methods, data: db.Data, stream: db.Stream, class_centred: bool) -> None:
    ref = methods.monitored(data.x[stream.ref_idx]).to_numpy(float)
    ref_y = data.y[stream.ref_idx]
    means = {c: ref[ref_y == c].mean(0) for c in np.unique(ref_y)}
    centred = np.concatenate([ref[ref_y == c] - means[c] for c in means]) if class_centred else ref
    precision = np.linalg.inv(LedoitWolf().fit(centred).covariance_)
    overall, n = ref.mean(0), len(ref)

    def t2(x: np.ndarray, y: np.ndarray) -> float:
        f = methods.monitored(x).to_numpy(float)
        if class_centred:
            d = np.stack([f[i] - means[y[i]] for i in range(len(y)) if y[i] in means]).mean(0)
            return float(len(f) * d @ precision @ d)
        d = f.mean(0) - overall
        return float(len(f) * n / (len(f) + n) * d @ precision @ d)

    stream.rng = np.random.default_rng(11)
    null = np.array([t2(*stream.window()) for _ in range(400)])
    cut = float(np.quantile(null, 0.999))
    if not class_centred:
        cut = max(cut, float(chi2.isf(0.0005, ref.shape[1])))
    print(f"{ref.shape[1]} columns; quiet windows: mean {null.mean():.1f}, 99.9% {np.quantile(null, 0.999):.1f}, "
          f"99.95% {np.quantile(null, 0.9995):.1f}; chi-square 0.1% {chi2.isf(0.001, ref.shape[1]):.1f}; cut {cut:.1f}")
    for name, (_, make) in db.scenarios(data, stream).items():
        powers = []
        for strength in (0.1, 0.2, 0.3, 1.0):
            stream.rng = np.random.default_rng(12)
            powers.append(np.mean([t2(x, y) > cut for x, y, _ in (make(stream, strength) for _ in range(20))]))
        print(f"{name}: power at 0.1 / 0.2 / 0.3 / 1: " + " / ".join(f"{p:.2f}" for p in powers))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", choices=sorted(db.PIXEL_AND_TABULAR_LOADERS), required=True)
    ap.add_argument("--test", choices=("novelty", "hotelling", "class-hotelling"), required=True)
    ap.add_argument("--ramp", default="input: half the rows from OpenCV", help="novelty: the ramp (name prefix)")
    args = ap.parse_args(argv)
    data = db.PIXEL_AND_TABULAR_LOADERS[args.data]()
    stream = db.Stream(data, np.random.default_rng([0, 7]))
    methods = db.Methods(data, stream, db.TASKSIM_CONFIG)
    if args.test == "novelty":
        ramps = {k: make for k, (_, make) in db.scenarios(data, stream).items() if k.startswith(args.ramp)}
        if not ramps:
            ap.error(f"--ramp: no ramp of {args.data} starts with {args.ramp!r}")
        novelty(methods, data, stream, next(iter(ramps.values())))
    else:
        mean_tests(methods, data, stream, class_centred=args.test == "class-hotelling")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
