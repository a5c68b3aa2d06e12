"""False alarms of tasksim's drift verdict on long quiet streams, per reference, with the accumulated
input test (the EWMA of the columns' mean normal scores and the pooled MMD) re-evaluated offline
under several ``drift.benign_offset_sd`` values.

    python bench/drift_accumulated_null.py --data mnist --references 30 --windows 264 --json out.json.gz

Each reference: ``bench/drift_benchmark.py``'s single stream for ``--seed`` S = 0, 1, ... (the same
1,000-row reference and the same 100-row windows drawn from the other rows as ``drift_benchmark.py
--only DATA --seed S``, whose first 200 windows these are), then ``--windows`` labelled quiet windows
through ``check_window`` alone (no baselines), the accumulated state carried along the whole stream.
The pool of non-reference rows is small (MNIST: 4,000 rows; 264 windows use each row about 7 times),
so the windows share the pool's own sampling error: the situation ``benign_offset_sd`` is for.

The run uses the configuration's default (or ``--run-benign-offset-sd``); the input EWMA's state
(``e``, ``W``, ``s2``) is kept per window, so its statistic under any other tolerance is exact
offline: ``max_j |e_j| / sqrt(s2 + W^2 / n + W^2 sd^2)`` against the calibrated thresholds (which
do not depend on it). The accumulated label tests (``label_cusum``) are as run.
``--raw`` re-summarises a saved JSON instead of running.
"""

from __future__ import annotations

import argparse
import gzip
import json
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

from tasksim.config import DriftConfig


def run(data: db.Data, references: int, windows: int, config: DriftConfig) -> list[dict[str, Any]]:
    out = []
    for s in range(references):
        t0 = time.perf_counter()
        stream = db.Stream(data, np.random.default_rng(s))
        methods = db.Methods(data, stream, config)
        state, rows = None, []
        for _ in range(windows):
            x, y = stream.window()
            verdict, state = methods.tasksim(x, y, True, state)
            cols, phi = state["cols"], state["phi"]
            rows.append(
                {
                    "fired": [t.name for t in verdict.tests if t.fired],
                    "max_abs_e": float(np.abs(np.asarray(cols["e"])).max()),
                    "phi_e2": float(np.square(np.asarray(phi["e"])).sum()),
                    "s2": float(cols["s2"]),
                    "w": float(cols["w"]),
                }
            )
        out.append(
            {
                "seed": s,
                "reference_rows": methods.ref.rows,
                "ewma_z": methods.cal.ewma_z,
                "ewma_mmd": methods.cal.ewma_mmd,
                "run_benign_offset_sd": config.benign_offset_sd,
                "windows": rows,
            }
        )
        print(
            f"reference {s}: {sum(bool(r['fired']) for r in rows)} windows with an alarm "
            f"({time.perf_counter() - t0:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
    return out


def summarise(refs: list[dict[str, Any]], tolerances: list[float]) -> str:
    fired = Counter(f for d in refs for w in d["windows"] for f in w["fired"])
    total = sum(len(d["windows"]) for d in refs)
    lines = [
        f"{len(refs)} references x {len(refs[0]['windows'])} windows; tests that fired (as run, "
        f"benign_offset_sd {refs[0]['run_benign_offset_sd']}): " + ", ".join(f"{k} {v}" for k, v in fired.items()),
        "",
        "| benign_offset_sd | accumulated input test | any test | per reference | references above 1% |",
        "| --- | --- | --- | --- | --- |",
    ]
    for sd in tolerances:
        acc = alarms = over = 0
        per = []
        for d in refs:
            n, count = d["reference_rows"], 0
            for w in d["windows"]:
                c = w["s2"] + w["w"] ** 2 / n + w["w"] ** 2 * sd * sd
                cusum = w["max_abs_e"] / np.sqrt(c) > d["ewma_z"] or w["phi_e2"] / c > d["ewma_mmd"]
                acc += cusum
                count += bool(cusum or [f for f in w["fired"] if f != "cusum"])
            alarms += count
            per.append(count)
            over += count > 0.01 * len(d["windows"])
        lines.append(
            f"| {sd:g} | {acc} / {total} = {100 * acc / total:.2f}% | {alarms} / {total} = "
            f"{100 * alarms / total:.2f}% | {', '.join(map(str, per))} | {over} / {len(refs)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", choices=["mnist", "landsat", "fashion-mnist", "letter"], default="mnist")
    ap.add_argument("--references", type=int, default=30)
    ap.add_argument("--windows", type=int, default=264)
    ap.add_argument(
        "--run-benign-offset-sd",
        type=float,
        default=None,
        metavar="SD",
        help="the tolerance the run uses (default: the configuration's)",
    )
    ap.add_argument("--tolerances", type=float, nargs="+", default=[0.0, 0.0158, 0.02, 0.025, 0.03])
    ap.add_argument("--json", type=Path, default=None, help="write the per-window record here (.gz: compressed)")
    ap.add_argument("--raw", type=Path, default=None, help="re-summarise this saved record instead of running")
    args = ap.parse_args(argv)
    if args.raw:
        opener = gzip.open if args.raw.suffix == ".gz" else open
        with opener(args.raw, "rt") as fh:
            refs = json.load(fh)
    else:
        import torch

        torch.set_num_threads(1)
        loader = db.PIXEL_AND_TABULAR_LOADERS[args.data]
        config = (
            DriftConfig()
            if args.run_benign_offset_sd is None
            else DriftConfig(benign_offset_sd=args.run_benign_offset_sd)
        )
        refs = run(loader(), args.references, args.windows, config)
    if args.json:
        opener = gzip.open if args.json.suffix == ".gz" else open
        with opener(args.json, "wt") as fh:
            json.dump(refs, fh)
    print(summarise(refs, args.tolerances))
    return 0


if __name__ == "__main__":
    sys.exit(main())
