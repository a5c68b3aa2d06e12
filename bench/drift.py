"""Benchmark the drift stage: tasksim's detect_drift vs Evidently's DataDriftPreset, and calibration.

    python bench/drift.py                      # 100k x 20 reference, 2k current (defaults)
    python bench/drift.py --quick              # small sizes, a smoke run
    python bench/drift.py --false-alarms 100   # also: false alarms over 100 no-drift windows

Everything runs in one process on the same data; timings are wall-clock medians of ``--repeat``
runs after one warm-up (the Evidently import is timed separately). Prints a Markdown block for
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasksim.config import DriftConfig
from tasksim.drift import calibrate_thresholds, detect_drift


def make_frame(rng: np.random.Generator, rows: int, columns: int) -> pd.DataFrame:
    """Columns of different shapes: normal, correlated normal, lognormal, exponential, t(3), Poisson."""
    data = {}
    base = rng.normal(size=rows)
    for j in range(columns):
        kind = j % 6
        if kind == 0:
            v = rng.normal(size=rows)
        elif kind == 1:
            v = 0.8 * base + 0.6 * rng.normal(size=rows)
        elif kind == 2:
            v = np.exp(rng.normal(size=rows))
        elif kind == 3:
            v = rng.exponential(size=rows)
        elif kind == 4:
            v = rng.standard_t(3, size=rows)
        else:
            v = rng.poisson(3, size=rows).astype(float)
        data[f"f{j:02d}"] = v
    return pd.DataFrame(data)


def timed(fn, repeat: int) -> tuple[float, float, object]:
    """Median wall and CPU seconds of ``repeat`` runs after one warm-up, and the last result."""
    fn()  # warm-up
    walls, cpus, out = [], [], None
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus), out


def once(fn) -> tuple[float, float, object]:
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, out


def machine() -> str:
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines()
        keep = ("Architecture", "CPU(s):", "Model name", "Thread(s) per core", "Core(s) per socket")
        cpu = "; ".join(" ".join(line.split()) for line in lines if line.startswith(keep))
    except (OSError, subprocess.CalledProcessError):
        cpu = platform.processor() or "unknown CPU"
    return f"{cpu}; Python {platform.python_version()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference-rows", type=int, default=100_000)
    ap.add_argument("--current-rows", type=int, default=2_000)
    ap.add_argument("--columns", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=200, help="calibration rounds")
    ap.add_argument("--cap", type=int, default=20_000, help="max_reference_rows for the capped calibration")
    ap.add_argument("--false-alarms", type=int, default=0, metavar="N",
                    help="also count false alarms over N no-drift windows of --fa-window rows")
    ap.add_argument("--fa-window", type=int, default=200)
    ap.add_argument("--quick", action="store_true", help="10k x 10 reference, 500 rows, 1 repeat, 60 rounds")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.quick:
        args.reference_rows, args.current_rows, args.columns = 10_000, 500, 10
        args.repeat, args.rounds, args.cap = 1, 60, 5_000

    load_start = os.getloadavg()
    t0 = time.perf_counter()
    import evidently
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    from tasksim.drift import _evidently

    _evidently()
    import_s = time.perf_counter() - t0

    rng = np.random.default_rng(args.seed)
    ref = make_frame(rng, args.reference_rows, args.columns)
    cur = make_frame(rng, args.current_rows, args.columns)
    shifted = list(ref.columns[:3])
    for c in shifted:  # a real shift on three columns: 0.5 std
        cur[c] += 0.5 * ref[c].std()
    cfg = DriftConfig()

    fast_s, fast_cpu, fast = timed(lambda: detect_drift(ref, cur, cfg), args.repeat)
    report_s, report_cpu, report = timed(lambda: detect_drift(ref, cur, cfg, engine="report"), args.repeat)
    assert report == fast, "report engine and stattest engine disagree"

    definition = DataDefinition(numerical_columns=list(ref.columns))

    def preset() -> dict:
        snap = Report([DataDriftPreset()]).run(Dataset.from_pandas(cur, data_definition=definition),
                                               Dataset.from_pandas(ref, data_definition=definition))
        return snap.dict()

    preset_s, preset_cpu, preset_dict = timed(preset, args.repeat)
    preset_count = next(m["value"]["count"] for m in preset_dict["metrics"]
                        if m["config"]["type"].endswith("DriftedColumnsCount"))

    cal_full_s, cal_full_cpu, thr_full = once(
        lambda: calibrate_thresholds(ref, args.current_rows, cfg, rounds=args.rounds, seed=1))
    cal_cap_s, cal_cap_cpu, thr_cap = once(
        lambda: calibrate_thresholds(ref, args.current_rows, cfg, rounds=args.rounds, seed=1,
                                     max_reference_rows=args.cap))
    any_cfg = DriftConfig(drift_share=1 / args.columns)
    calibrated = detect_drift(ref, cur, any_cfg, thr_full)

    print("## Drift (bench/drift.py) - raw results")
    print(f"- machine: {machine()}")
    print(f"- versions: evidently {evidently.__version__}, pandas {pd.__version__}, numpy {np.__version__}")
    print(f"- data: reference {args.reference_rows} x {args.columns}, current {args.current_rows} rows "
          f"(0.5 std shift on {shifted}), method auto -> {fast.method}; repeat {args.repeat}, median")
    print(f"- Evidently import (package + Report/Dataset/presets + stattests): {import_s:.2f} s wall")
    print()
    print("| path | wall (s) | CPU (s) | wall vs DataDriftPreset | drifted columns |")
    print("|---|---|---|---|---|")
    print(f"| Evidently `DataDriftPreset` Report | {preset_s:.2f} | {preset_cpu:.2f} | 1.0x | {preset_count:g} |")
    print(f"| `detect_drift(engine='report')` ({args.columns} x ValueDrift, one Report) | {report_s:.2f} | "
          f"{report_cpu:.2f} | {preset_s / report_s:.1f}x faster | {len(report.drifted_columns)} |")
    print(f"| `detect_drift()` (Evidently stattests called directly) | {fast_s:.2f} | {fast_cpu:.2f} | "
          f"{preset_s / fast_s:.1f}x faster | {len(fast.drifted_columns)} |")
    print()
    print(f"| calibration ({args.rounds} rounds, window {args.current_rows}) | wall (s) | CPU (s) | thresholds (min-max) |")
    print("|---|---|---|---|")
    print(f"| full pseudo-reference ({args.reference_rows - args.current_rows} rows) | {cal_full_s:.1f} | "
          f"{cal_full_cpu:.1f} | {min(thr_full.values()):.4f}-{max(thr_full.values()):.4f} |")
    print(f"| max_reference_rows={args.cap} | {cal_cap_s:.1f} | {cal_cap_cpu:.1f} | "
          f"{min(thr_cap.values()):.4f}-{max(thr_cap.values()):.4f} |")
    print()
    print(f"- default thresholds flagged {list(fast.drifted_columns)}; calibrated (any-column, 5%) "
          f"flagged {list(calibrated.drifted_columns)}")

    if args.false_alarms:
        n, w = args.false_alarms, args.fa_window
        t0 = time.perf_counter()
        thr_w = calibrate_thresholds(ref, w, cfg, rounds=args.rounds, seed=2, max_reference_rows=args.cap)
        cal_w_s = time.perf_counter() - t0
        frng = np.random.default_rng(args.seed + 1000)
        default_hits = calibrated_hits = default_cols = 0
        t0 = time.perf_counter()
        for _ in range(n):
            window = make_frame(frng, w, args.columns)  # same distribution as the reference
            d = detect_drift(ref, window, any_cfg)
            k = detect_drift(ref, window, any_cfg, thr_w)
            default_hits += bool(d.drifted_columns)
            default_cols += len(d.drifted_columns)
            calibrated_hits += bool(k.drifted_columns)
        loop_s = time.perf_counter() - t0
        print(f"- no-drift windows of {w} rows, {n} fresh draws: at least one column flagged in "
              f"{default_hits / n:.0%} with Evidently defaults ({default_cols / (n * args.columns):.0%} of columns), "
              f"{calibrated_hits / n:.1%} with calibrated thresholds (target 5%; calibration "
              f"max_reference_rows={args.cap}: {cal_w_s:.1f} s; {loop_s:.0f} s for the {2 * n} detections)")
    print(f"- load average (1 min) at start {load_start[0]:.1f}, at end {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
