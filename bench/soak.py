"""Store and /metrics soak: cycles with retention on, and scrape time against stored history.

Why (issue 16): the store grew ~14 KB a cycle without bound, and a scrape's time grew with the
number of stored cycles (1.5 ms at 4 cycles, 28 ms at 20k). This script checks what retention and
the indexed, counter-based snapshot promise, on the store and the exporter only (a full tasksim
cycle costs seconds of compute that have nothing to do with either):

1. soak: ``--cycles`` cycles (default 500) written through ``Store.record_cycle`` with
   ``retention_cycles`` on, each shaped like a real cycle (``--sources`` sources with ~25 measures,
   a 16-column drift result, a decision record carrying the whole profile: ~14 KB), each followed by
   one scrape (``generate_latest`` of the exporter's registry, which opens the store read-only as
   the daemon does). Reports the store's size on disk (database + WAL) along the way, RSS growth
   from the end of the warm-up to the end, and scrape p50 / p99.
2. scale: scrape time with 1k, 10k and 100k stored cycles (no retention; rows bulk-inserted with
   the same shape but a leaner decision record to keep the disk use modest), as the ratio of the
   100k median to the 1k median, measured in this one run.

    python bench/soak.py                          # 500 cycles, retention 100, then 1k/10k/100k
    python bench/soak.py --cycles 100 --scale 1000 10000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from prometheus_client import generate_latest

from tasksim.export import build_registry
from tasksim.store import STORE_FILENAME, CycleRecord, SourceRecord, Store

MEASURES = ["mmd2", "frechet", "coverage", "domain_classifier_auc", "duplicate_rate", "missing_rate",
            "label_noise_rate", "label_noise_rate_se", "label_shift", "label_overlap", "otdd", "logme",
            "hscore_regularized", "gbc", "transrate", "knn_accuracy", "leep", "nce", "logme_gain", "knn_gain",
            "negative_transfer", "modality_match", "granularity_ratio", "semantic_overlap", "exact_overlap"]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _store_bytes(state_dir: Path) -> int:
    return sum(p.stat().st_size for p in state_dir.glob(STORE_FILENAME + "*"))


def _db_bytes(state_dir: Path) -> int:
    """The database file alone (the WAL is reused after each checkpoint, so it plateaus by itself)."""
    return (state_dir / STORE_FILENAME).stat().st_size


def _record(i: int, sources: int, lean: bool = False) -> CycleRecord:
    names = [f"source{k}" for k in range(sources)]
    measures = {name: {m: 0.001 * ((i * 7 + k * 13 + j) % 997) for j, m in enumerate(MEASURES)}
                for k, name in enumerate(names)}
    records = tuple(SourceRecord(name, "ok", score=1.0 - k / sources, rank=k + 1, top1_probability=0.5 / (k + 1),
                                 similarity=measures[name]) for k, name in enumerate(names))
    drift = {"detected": i % 5 == 0, "share": 0.1, "method": "ks", "calibrated": True,
             "columns": [{"column": f"pc{c}", "score": 0.01 * c, "threshold": 0.05, "drifted": c < 2,
                          "method": "ks"} for c in range(16)]}
    decision = {"deployed_source": names[0], "recommended_source": names[0], "action": "keep",
                "rationale": "the deployed source still leads", "changed": i == 0}
    if not lean:
        decision.update(ranking=[{"source": r.source, "rank": r.rank, "score": r.score,
                                  "contributions": {m: 0.1 for m in MEASURES[:12]}} for r in records],
                        profile={n: {"status": "ok", "error": None, "measures": measures[n]} for n in names},
                        weights={m: 1.0 for m in MEASURES[:12]}, reliability={m: 0.9 for m in MEASURES[:12]})
    return CycleRecord(started_at=1e9 + 300 * i, finished_at=1e9 + 300 * i + 4, status="success",
                       config_hash="bench", window_start=f"w{i}", window_end=f"w{i + 1}", rows_sampled=1000,
                       rows_total=1200, drift=drift, device="cpu", sources=records, decision=decision,
                       state_updates={"window_cursor": f"w{i + 1}"})


def _scrape(state_dir: Path, names: list[str]) -> float:
    registry = build_registry(state_dir, sources=names, schedule_interval_seconds=300.0)
    t0 = time.perf_counter()
    text = generate_latest(registry)
    elapsed = time.perf_counter() - t0
    assert b"tasksim_store_up 1.0" in text, text[:300]
    return elapsed


def _snapshot(state_dir: Path) -> float:
    """The store's share of a scrape: open read-only and read the snapshot (what grows with history)."""
    t0 = time.perf_counter()
    with Store(state_dir, readonly=True) as store:
        store.snapshot()
    return time.perf_counter() - t0


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def soak(cycles: int, retention: int, sources: int, root: Path) -> dict:
    state = root / "soak"
    names = [f"source{k}" for k in range(sources)]
    store = Store(state, retention_cycles=retention)
    scrapes, sizes = [], {}
    warmup = min(50, cycles // 5)
    rss_start = None
    record_bytes = len(json.dumps(_record(0, sources).decision)) + 300 * sources
    t0 = time.perf_counter()
    for i in range(cycles):
        store.record_cycle(_record(i, sources))
        scrapes.append(_scrape(state, names))
        if i + 1 == warmup:
            rss_start = _rss_bytes()
        if (i + 1) in (retention, 2 * retention, cycles) or (i + 1) % max(1, cycles // 5) == 0:
            sizes[i + 1] = {"db": _db_bytes(state), "db_and_wal": _store_bytes(state)}
    wall = time.perf_counter() - t0
    stored = store.count_cycles()
    store.close()
    rss_end = _rss_bytes()
    measured = scrapes[warmup:]
    return {"cycles": cycles, "retention_cycles": retention, "sources": sources, "stored_cycles_at_end": stored,
            "approx_record_bytes": record_bytes, "store_bytes_by_cycle": sizes,
            "rss_start_bytes": rss_start, "rss_end_bytes": rss_end,
            "rss_growth_ratio": (rss_end - rss_start) / rss_start if rss_start else None,
            "scrape_p50_ms": 1e3 * statistics.median(measured), "scrape_p99_ms": 1e3 * _p(measured, 0.99),
            "scrape_max_ms": 1e3 * max(measured), "wall_seconds": wall}


def _bulk_fill(state: Path, target: int, sources: int, done: int) -> None:
    """Append cycles ``done .. target-1`` in one transaction, rows as record_cycle writes them."""
    import sqlite3

    conn = sqlite3.connect(state / STORE_FILENAME, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    for i in range(done, target):
        r = _record(i, sources, lean=True)
        cur = conn.execute(
            "INSERT INTO cycles(started_at, finished_at, status, config_hash, window_start, window_end, rows_sampled,"
            " rows_total, rows_dropped, error, drift_json, device) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, NULL, ?, ?)",
            (r.started_at, r.finished_at, r.status, r.config_hash, r.window_start, r.window_end, r.rows_sampled,
             r.rows_total, json.dumps(r.drift), r.device))
        cid = cur.lastrowid
        conn.executemany("INSERT INTO source_results VALUES (?, ?, ?, NULL, ?, ?, ?, ?)",
                         [(cid, s.source, s.status, s.score, s.rank, s.top1_probability, json.dumps(s.similarity))
                          for s in r.sources])
        d = r.decision
        conn.execute("INSERT INTO decisions(cycle_id, created_at, deployed_source, recommended_source, action,"
                     " rationale, record_json, window_start, window_end, changed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     (cid, r.finished_at, d["deployed_source"], d["recommended_source"], d["action"], d["rationale"],
                      json.dumps(d), r.window_start, r.window_end, int(d["changed"])))
    conn.execute("INSERT INTO counters VALUES ('cycles_total', 'success', ?) ON CONFLICT(name, label)"
                 " DO UPDATE SET value = excluded.value", (float(target),))
    conn.execute("COMMIT")
    conn.close()


def scale(sizes: list[int], sources: int, scrapes: int, root: Path) -> dict:
    state = root / "scale"
    Store(state).close()
    names = [f"source{k}" for k in range(sources)]
    out, done = {}, 0
    for n in sorted(sizes):
        t0 = time.perf_counter()
        _bulk_fill(state, n, sources, done)
        fill = time.perf_counter() - t0
        done = n
        _scrape(state, names)  # warm the page cache
        times = [_scrape(state, names) for _ in range(scrapes)]
        snaps = [_snapshot(state) for _ in range(scrapes)]
        out[n] = {"scrape_p50_ms": 1e3 * statistics.median(times), "scrape_p99_ms": 1e3 * _p(times, 0.99),
                  "snapshot_p50_ms": 1e3 * statistics.median(snaps), "snapshot_p99_ms": 1e3 * _p(snaps, 0.99),
                  "store_bytes": _store_bytes(state), "fill_seconds": fill}
        print(f"  {n:>7} stored cycles (filled in {fill:.1f} s): scrape p50 {out[n]['scrape_p50_ms']:.2f} ms, "
              f"p99 {out[n]['scrape_p99_ms']:.2f} ms; store open + snapshot p50 {out[n]['snapshot_p50_ms']:.2f} ms, "
              f"p99 {out[n]['snapshot_p99_ms']:.2f} ms; store {out[n]['store_bytes'] / 1e6:.1f} MB", flush=True)
    small, large = min(out), max(out)
    return {"by_stored_cycles": out, "p50_ratio_largest_to_smallest": out[large]["scrape_p50_ms"] /
            out[small]["scrape_p50_ms"],
            "snapshot_p50_ratio_largest_to_smallest": out[large]["snapshot_p50_ms"] / out[small]["snapshot_p50_ms"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=500)
    parser.add_argument("--retention", type=int, default=100)
    parser.add_argument("--sources", type=int, default=4)
    parser.add_argument("--scale", type=int, nargs="*", default=[1000, 10000, 100000])
    parser.add_argument("--scrapes", type=int, default=200)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    machine = f"{platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}, {platform.platform()}"
    print(f"machine: {machine}", flush=True)
    results: dict = {"machine": machine}
    with tempfile.TemporaryDirectory(prefix="tasksim-soak-") as tmp:
        root = Path(tmp)
        if args.cycles:
            s = soak(args.cycles, args.retention, args.sources, root)
            results["soak"] = s
            print(f"soak: {s['cycles']} cycles, retention {s['retention_cycles']}: {s['stored_cycles_at_end']} stored "
                  f"at the end; store bytes by cycle {s['store_bytes_by_cycle']}; RSS {s['rss_start_bytes'] / 1e6:.1f}"
                  f" -> {s['rss_end_bytes'] / 1e6:.1f} MB ({100 * s['rss_growth_ratio']:+.2f}%); scrape p50 "
                  f"{s['scrape_p50_ms']:.2f} ms, p99 {s['scrape_p99_ms']:.2f} ms, max {s['scrape_max_ms']:.2f} ms; "
                  f"{s['wall_seconds']:.1f} s", flush=True)
        if args.scale:
            print("scale:", flush=True)
            results["scale"] = scale(args.scale, args.sources, args.scrapes, root)
            print(f"p50 ratio {max(args.scale)} / {min(args.scale)} stored cycles: scrape "
                  f"{results['scale']['p50_ratio_largest_to_smallest']:.2f}, store open + snapshot "
                  f"{results['scale']['snapshot_p50_ratio_largest_to_smallest']:.2f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
