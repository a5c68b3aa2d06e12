"""The label-prior ramps of ``bench/drift_benchmark.py`` over more streams, the accumulated label test
with one scale (``drift.label_fast_lambda: null``, the default) and with two (the opt-in, weight
``EWMA_LAMBDA_FAST``), on the same windows in one process.

    python bench/drift_label_ramp_paired.py --only mnist --streams 24 --json out.json
    python bench/drift_ramp_compare.py out_one.json out_two.json   # (--split writes the two records)

Each stream is ``drift_benchmark.ramp_delays``' own (the generator ``[seed, 7, ramp, stream]`` with the
ramp's index among all scenarios), so its first 8 streams are the benchmark's ``--ramp-repeats 8``.
One reference model and calibration serve both configurations (the fast scale enters neither).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import drift_benchmark as db

from tasksim.config import DriftConfig
from tasksim.drift import EWMA_LAMBDA_FAST

RAMPS = ("label prior (labels)", "label prior (no labels: BBSE)")
LOADERS = {"fashion-mnist": db.load_fashion, "letter": db.load_letter, "landsat": db.load_landsat,
           "mnist": db.load_mnist}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(LOADERS), required=True)
    parser.add_argument("--streams", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, required=True, help="writes JSON.one.json and JSON.two.json")
    args = parser.parse_args()
    t0, c0 = time.perf_counter(), time.process_time()
    data = LOADERS[args.only]()
    pre, post = 5, 10
    stream = db.Stream(data, np.random.default_rng([args.seed, 7]))
    methods = db.Methods(data, stream, DriftConfig())
    configs = {"one": DriftConfig(), "two": DriftConfig(label_fast_lambda=EWMA_LAMBDA_FAST)}
    out: dict[str, dict[str, list[int | None]]] = {k: {} for k in configs}
    for r_i, (name, (_, make)) in enumerate(db.scenarios(data, stream).items()):
        if name not in RAMPS:
            continue
        labelled = name != "label prior (no labels: BBSE)"
        for key, config in configs.items():
            methods.config = config
            delays = [db.stream_delay(methods, stream, make, labelled,
                                      np.random.default_rng([args.seed, 7, r_i, s_i]), pre=pre, post=post)
                      for s_i in range(args.streams)]
            out[key][name] = delays
            within = sum(d is not None and d <= 2 for d in delays)
            print(f"{data.name} | {name} | {key} scale(s) | within 2: {within}/{args.streams} | {delays}", flush=True)
    meta = {"streams": args.streams, "seed": args.seed, "wall_s": time.perf_counter() - t0,
            "cpu_s": time.process_time() - c0, "load_end": os.getloadavg()}
    for key, config in configs.items():
        path = args.json.with_suffix(f".{key}.json")
        path.write_text(json.dumps({"ramp_delays": {data.name: out[key]}, "label_fast_lambda":
                                    config.label_fast_lambda, **meta}, indent=1))
    print(json.dumps(meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
