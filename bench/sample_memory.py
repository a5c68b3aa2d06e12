"""Peak memory of sampling a large production window (tasksim.sample.sample_window).

Why: a monitoring cycle must sample windows far larger than memory. This script writes a
hive-partitioned Parquet window (default 10M rows: timestamp + 8 float64 features + a label,
one partition per day, written in chunks so the generator itself stays small), then samples
the whole window in a fresh child process with ``sample_window(max_rows=5000)`` and reports:

- peak RSS of the child: ``resource.getrusage(RUSAGE_CHILDREN)`` in the parent, the child's own
  ``RUSAGE_SELF``, and ``/usr/bin/time -v`` when available;
- the same for a child that only imports tasksim (the interpreter + pyarrow/torch baseline);
- tracemalloc peak (Python and numpy allocations; Arrow's own buffers are not traced, so the
  Arrow memory pool's high-water mark is reported next to it), and wall time.

It asserts peak RSS <= --limit-gb (default 1.5 GB = 1.5e9 bytes) and prints PASS or FAIL.

    python bench/sample_memory.py                  # 10M rows, ~0.8 GB of Parquet in a temp dir
    python bench/sample_memory.py --rows 1000000   # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DAY0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
FEATURES = [f"f{i}" for i in range(8)]
CHUNK_ROWS = 250_000


def generate(root: Path, rows: int, days: int, seed: int) -> dict:
    """Write ``rows`` rows over ``days`` daily hive partitions, CHUNK_ROWS at a time."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("ts", pa.timestamp("us", tz="UTC")), *[(f, pa.float64()) for f in FEATURES],
                        ("label", pa.int32())])
    rng = np.random.default_rng(seed)
    per_day = [rows // days + (1 if d < rows % days else 0) for d in range(days)]
    t0 = time.perf_counter()
    for d, n_day in enumerate(per_day):
        day = DAY0 + timedelta(days=d)
        part = root / f"date={day.date()}"
        part.mkdir(parents=True, exist_ok=True)
        day_us = int(day.timestamp() * 1_000_000)
        with pq.ParquetWriter(part / "part-0.parquet", schema, compression="snappy") as writer:
            written = 0
            while written < n_day:
                n = min(CHUNK_ROWS, n_day - written)
                # timestamps increase within the day, as an append-only log would
                ts = day_us + np.sort(rng.integers(0, 86_400_000_000, n)) if n else np.empty(0, np.int64)
                cols = {"ts": pa.array(ts, pa.timestamp("us", tz="UTC"))}
                feats = rng.normal(size=(n, len(FEATURES)))
                feats[rng.random(n) < 0.001, 0] = np.nan  # a few invalid rows to drop
                for i, f in enumerate(FEATURES):
                    cols[f] = pa.array(feats[:, i])
                cols["label"] = pa.array(rng.choice(5, size=n, p=[0.5, 0.2, 0.15, 0.1, 0.05]).astype(np.int32))
                writer.write_table(pa.table(cols, schema=schema), row_group_size=CHUNK_ROWS)
                written += n
    size = sum(p.stat().st_size for p in root.rglob("*.parquet"))
    return {"rows": rows, "days": days, "bytes": size, "seconds": time.perf_counter() - t0}


CHILD_CODE = r"""
import json, resource, sys, time, tracemalloc
mode, root, start, end, max_rows, stratify = sys.argv[1:7]
t_import = time.perf_counter()
import pyarrow as pa
from datetime import datetime
from tasksim.config import ProductionConfig
from tasksim.sample import sample_window
import_s = time.perf_counter() - t_import
out = {"mode": mode, "import_seconds": import_s}
if mode == "sample":
    prod = ProductionConfig(path=root, timestamp_column="ts", feature_columns=tuple(f"f{i}" for i in range(8)),
                            label_column="label", partitioning="hive")
    tracemalloc.start()
    t0 = time.perf_counter()
    w = sample_window(prod, datetime.fromisoformat(start), datetime.fromisoformat(end), max_rows=int(max_rows),
                      seed=0, stratify_by_label=stratify == "1")
    out["seconds"] = time.perf_counter() - t0
    out["tracemalloc_peak_bytes"] = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    out.update(total_rows=w.total_rows, dropped_invalid=w.dropped_invalid, sampled_rows=w.table.num_rows)
    out["label_counts"] = {str(k): int(v) for k, v in zip(*[c.to_pylist() for c in
                           w.table.column("label").value_counts().flatten()])}
out["arrow_pool_max_bytes"] = pa.default_memory_pool().max_memory()
out["arrow_pool_backend"] = pa.default_memory_pool().backend_name
out["ru_maxrss_self_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print("RESULT " + json.dumps(out))
"""


def run_child(mode: str, root: Path, start: datetime, end: datetime, max_rows: int, stratify: bool,
              use_time: bool) -> dict:
    """Run one measurement in a fresh interpreter; RUSAGE_CHILDREN is read around it."""
    cmd = [sys.executable, "-c", CHILD_CODE, mode, str(root), start.isoformat(), end.isoformat(),
           str(max_rows), "1" if stratify else "0"]
    if use_time:
        cmd = ["/usr/bin/time", "-v", *cmd]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"child ({mode}) failed with exit code {proc.returncode}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    # RUSAGE_CHILDREN is a running maximum over all children: only meaningful when it grew
    result["ru_maxrss_children_bytes"] = after * 1024 if after > before else None
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    result["time_v_maxrss_bytes"] = int(m.group(1)) * 1024 if m else None
    return result


def mb(x: float | None) -> str:
    return "n/a" if x is None else f"{x / 1e6:,.0f} MB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument("--max-rows", type=int, default=5000)
    parser.add_argument("--limit-gb", type=float, default=1.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", type=Path, default=None, help="where to write the data (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the generated data")
    args = parser.parse_args()

    root = args.dir or Path(tempfile.mkdtemp(prefix="tasksim-bench-"))
    use_time = Path("/usr/bin/time").exists()
    try:
        if not any(root.rglob("*.parquet")):
            gen = generate(root, args.rows, args.days, args.seed)
            print(f"generated {gen['rows']:,} rows in {gen['days']} partitions: {mb(gen['bytes'])} of Parquet "
                  f"in {gen['seconds']:.1f} s at {root}")
        start, end = DAY0, DAY0 + timedelta(days=args.days)
        baseline = run_child("import", root, start, end, args.max_rows, False, use_time)
        runs = {
            "uniform": run_child("sample", root, start, end, args.max_rows, False, use_time),
            "stratified": run_child("sample", root, start, end, args.max_rows, True, use_time),
        }
    finally:
        if not args.keep and args.dir is None:
            shutil.rmtree(root, ignore_errors=True)

    limit = args.limit_gb * 1e9
    print(f"machine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, {platform.platform()}; load average at the end "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} (other work on the machine slows the timings)")
    print(f"baseline (import only): RSS {mb(baseline['ru_maxrss_self_bytes'])} "
          f"(/usr/bin/time {mb(baseline['time_v_maxrss_bytes'])}), import {baseline['import_seconds']:.1f} s")
    ok = True
    for name, r in runs.items():
        peak = max(v for v in (r["ru_maxrss_self_bytes"], r["ru_maxrss_children_bytes"], r["time_v_maxrss_bytes"])
                   if v is not None)
        ok &= peak <= limit
        print(f"{name}: {r['total_rows']:,} rows in window, {r['dropped_invalid']:,} dropped, "
              f"{r['sampled_rows']:,} sampled in {r['seconds']:.1f} s | peak RSS: getrusage(children) "
              f"{mb(r['ru_maxrss_children_bytes'])}, getrusage(self) {mb(r['ru_maxrss_self_bytes'])}, "
              f"/usr/bin/time -v {mb(r['time_v_maxrss_bytes'])} | tracemalloc peak "
              f"{mb(r['tracemalloc_peak_bytes'])} | Arrow pool ({r['arrow_pool_backend']}) max "
              f"{mb(r['arrow_pool_max_bytes'])} | labels {r['label_counts']}")
    print(f"{'PASS' if ok else 'FAIL'}: peak RSS {'<=' if ok else '>'} {args.limit_gb} GB")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
