"""Which row statistic should the concept test sum? Power of a 100-row window's test through
tasksim's reference model, on the label-swap ramps of ``bench/drift_benchmark.py``.

    python bench/drift_concept_statistic.py                    # Landsat, Letter, MNIST, Fashion-MNIST
    python bench/drift_concept_statistic.py --only mnist --json out.json

For each data set: tasksim's reference model fitted on the benchmark's 1,000 reference rows
(``drift_ramp_oracle._reference_model_posteriors``: each pool row scored by one of its 5
cross-fitting models), 20,000 quiet windows and 2,000 realisations of the swap ramp's windows at
strengths 0.1, 0.2 and 0.3 (the benchmark's own windows, through the oracle's row-id proxy). Each
candidate sums a function of the model's probability of the row's label, ``p``, over the window; its
cut is the quiet windows' upper quantile at the concept test's rate (``ALPHA_SHARES["concept"]`` x
the 1% budget, 0.075%). Nothing here knows which labels are swapped. The null is the population's
(the windows' own pool), not a 1,000-row reference's: the powers are those of the statistics, above
what the permutation test against the reference reaches; compare them with each other.

Candidates: the log-loss ``-log p`` (the test's statistic before session 13), ``1 - p`` (the
accumulated concept test's), :func:`tasksim.drift.checks.corruption_llr` at design shares 0.1 and
0.03, and a count of rows with ``p < 0.02``. Also the sum over the 3 windows at 3 times the rate.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import drift_benchmark as db
import drift_ramp_oracle as oracle

from tasksim.config import DriftConfig
from tasksim.drift.checks import corruption_llr
from tasksim.drift.verdict import ALPHA_SHARES


def powers(name: str, null_windows: int, realisations: int, seed: int = 0) -> dict[str, object]:
    data = db.PIXEL_AND_TABULAR_LOADERS[name]()
    ids = oracle._proxy(data, np.arange(len(data.y)))
    stream = db.Stream(ids, np.random.default_rng([seed, 7]))
    k = int(data.y.max()) + 1
    post = oracle._reference_model_posteriors(data, stream.ref_idx, stream.pool, seed)
    made = {n: m for n, (_, m) in db.scenarios(ids, stream).items()}
    null_ids, null_y = oracle.quiet_windows(stream, null_windows, np.random.default_rng([seed, 5]))
    ramp = oracle.Ramp("concept", "", lambda v, y, s: v, made["concept: labels swapped"], stream,
                       np.arange(len(data.y)))
    alt = oracle.ramp_windows(ramp, realisations, np.random.default_rng([seed, 6]))
    rate = ALPHA_SHARES["concept"] * DriftConfig().false_alarm_rate

    def p_label(v: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.clip(post[v.astype(np.int64), y], 1e-6, 1.0)
    candidates = {
        "log-loss": lambda p: -np.log(p),
        "1 - p": lambda p: 1.0 - p,
        "corruption LLR, share 0.1": lambda p: corruption_llr(p, k, 0.1),
        "corruption LLR, share 0.03": lambda p: corruption_llr(p, k, 0.03),
        "count of p < 0.02": lambda p: (p < 0.02) + 1e-3 * -np.log(p),  # ties broken by the log-loss
    }
    out: dict[str, object] = {"dataset": name, "rate": rate,
                              "reference_model_pool_accuracy": float(np.mean(post[stream.pool].argmax(1)
                                                                             == data.y[stream.pool]))}
    thirds = [slice(d, None, 3) for d in range(3)]
    for cname, f in candidates.items():
        null = f(p_label(null_ids, null_y)).sum(axis=1)
        per = [f(p_label(v, y)).sum(axis=1) for v, y in alt]
        per_window = [oracle.np_power(null, a, rate)[0] for a in per]
        n3 = min(len(null[t]) for t in thirds)
        summed = oracle.np_power(sum(null[t][:n3] for t in thirds), sum(per), 3 * rate)[0]
        out[cname] = {"per_window": per_window, "three_windows": summed}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["landsat", "letter", "mnist", "fashion-mnist"], default=None)
    ap.add_argument("--null", type=int, default=20000)
    ap.add_argument("--streams", type=int, default=2000)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    names = [args.only] if args.only else ["landsat", "letter", "mnist", "fashion-mnist"]
    t0 = time.perf_counter()
    results = [powers(n, args.null, args.streams) for n in names]
    print("| data | statistic | power at strength 0.1 / 0.2 / 0.3 (one window) | 3 windows summed |")
    print("| --- | --- | --- | --- |")
    for r in results:
        for cname, v in r.items():
            if isinstance(v, dict):
                print(f"| {r['dataset']} | {cname} | {' / '.join(f'{p:.2f}' for p in v['per_window'])} | "
                      f"{v['three_windows']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "seconds": time.perf_counter() - t0,
                                         "command": " ".join(sys.argv)}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
