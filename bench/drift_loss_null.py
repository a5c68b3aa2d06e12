"""Is the accumulated concept test's null right over reference draws? (issue 13, text false alarms)

    python bench/drift_loss_null.py                       # Reuters R8 / MiniLM, seeds 0-2 x 25 references
    python bench/drift_loss_null.py --seeds 0 --references 25

For each reference draw of ``bench/drift_benchmark.py`` (same ``default_rng([seed, 1000 + r])``,
1,000-row reference, the other rows the pool) this fits the reference model and measures the
offset the accumulated loss-excess test converges to on a long quiet stream: ``D``, the pool
rows' mean ``1 - p(label)`` (averaged over the 5 cross-fitting models, as window rows are
scored) minus the reference's cross-fitted class means, weighted by the pool's class
frequencies. It prints ``D / sd`` with the reference part of the test's null variance
(``sum_c w_c^2 var_c / N_c``) for three choices of ``var_c``: the plug-in variance of the class's
reference losses (the test before), ``tasksim.drift.sequential.loss_variance`` (the bound, now)
and the pool's own variance of the class (an oracle no monitor has). Under a right null these
z's spread like N(0, 1) (a little more: the pool's own sampling error, about 1.11x for 4,423
pool rows); a reference beyond about 3.2 alarms in most of its windows. The embeddings come from
``TASKSIM_BENCH_CACHE`` (run ``bench/drift_benchmark.py --only text`` once first).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from drift_benchmark import Stream, load_reuters_minilm

from tasksim.config import DriftConfig
from tasksim.drift import DriftReference
from tasksim.drift.reference import _softmax_proba
from tasksim.drift.sequential import loss_variance


def reference_offsets(data, seed: int, r: int) -> dict[str, float]:
    stream = Stream(data, np.random.default_rng([seed, 1000 + r]))
    x_ref, y_ref = data.x[stream.ref_idx], data.y[stream.ref_idx]
    ref = DriftReference.fit(None, x_ref, [str(v) for v in y_ref], DriftConfig())
    x_pool, y_pool = data.x[stream.pool], data.y[stream.pool]
    _, _, clf_x = ref.project(None, x_pool)
    codes = np.array([ref.classes.index(str(v)) for v in y_pool])
    losses = np.stack(
        [
            1 - _softmax_proba(clf_x[f], ref.fold_w[f], ref.fold_b[f])[np.arange(len(codes)), codes]
            for f in range(len(ref.fold_w))
        ]
    )
    k, rc = len(ref.classes), ref.ref_label_codes
    w = np.bincount(codes, minlength=k) / len(codes)
    overall = float(ref.cv_loss[rc >= 0].mean())
    offset = 0.0
    var = {"plug-in": 0.0, "bound": 0.0, "pool (oracle)": 0.0}
    for c in range(k):
        own = ref.cv_loss[rc == c]
        offset += w[c] * (losses.mean(axis=0)[codes == c].mean() - own.mean())
        for name, v in (
            ("plug-in", own.var()),
            ("bound", loss_variance(own, overall)),
            ("pool (oracle)", losses[:, codes == c].var()),
        ):
            var[name] += w[c] ** 2 * float(v) / len(own)
    return {"offset": float(offset), **{name: float(offset / np.sqrt(v)) for name, v in var.items()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--references", type=int, default=25)
    args = ap.parse_args(argv)
    data = load_reuters_minilm()
    rows = []
    print("| seed | reference | offset D | z plug-in | z bound | z pool (oracle) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for seed in args.seeds:
        for r in range(args.references):
            out = reference_offsets(data, seed, r)
            rows.append(out)
            print(
                f"| {seed} | {r} | {out['offset']:+.4f} | {out['plug-in']:.2f} | {out['bound']:.2f} | "
                f"{out['pool (oracle)']:.2f} |",
                flush=True,
            )
    print(f"\nOver {len(rows)} references:\n")
    print("| variance | sd of z | max z | references with z > 2.5 | z > 3.2 |")
    print("| --- | --- | --- | --- | --- |")
    for name in ("plug-in", "bound", "pool (oracle)"):
        z = np.array([r[name] for r in rows])
        print(f"| {name} | {z.std(ddof=1):.2f} | {z.max():.2f} | {int((z > 2.5).sum())} | {int((z > 3.2).sum())} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
