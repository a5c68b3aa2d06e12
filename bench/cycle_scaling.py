"""How a warm monitoring cycle scales with the number of sources, and where its time goes.

Why (issue 15): the marginal cost of a source in a warm cycle must be at most 50 ms at a 100-row
window. A synthetic workspace is built in a temporary directory per portfolio size: a production
stream of 100-row hourly windows and ``--sizes`` sources of 500 rows each, all 384-d features in
one fixed-size list column, seen through the identity encoder (so no model time hides the cycle's
own cost), 5 labelled classes per source from a pool of 20 (class means on a shared grid plus a
per-source domain shift). Cycles run in one process through the real code path: ``Cycle(config,
encoder=...)`` with the encoder kept between cycles, as ``tasksim.open(...).run()`` and the warm
daemon run them (sample, embed, drift, profile, rank, recommend, store).

Per size: the workspace's first cycle (cold: nothing cached anywhere, in a new process), then per
checkout (this one and each ``--tree``, e.g. the commit before a change, for a before / after in one
run), from a copy of the state the first cycle left: a new process's first cycle (disk caches warm,
process cold) and ``--warm`` warm cycles on the same windows; the table gives the median warm cycle
and its stages (``CycleResult.stage_seconds``), with the process's CPU time of the cycle (less
sensitive than wall time to other jobs on a shared machine, with one thread). The marginal cost of
a source is the slope between the smallest and the largest size. With ``--profile``, one more warm cycle per size runs under
cProfile: the cumulative seconds of the functions that carry a measure or a stage step (profiling
adds overhead: read them as shares).

``--demo`` adds the demo workspace (``tasksim.demo``, MiniLM text encoder): ``tasksim demo
--prebuild`` (source embeddings and heads) timed in a new process, then in another new process the
first cycle and the warm cycles against the floor, embedding the window alone, as a ratio.

    python bench/cycle_scaling.py                       # 10, 100, 1000 sources, 3 warm cycles each
    python bench/cycle_scaling.py --sizes 10 100 --profile
    python bench/cycle_scaling.py --sizes 10 100 --tree /tmp/before   # before / after
    python bench/cycle_scaling.py --sizes --demo                      # the demo only
    python bench/cycle_scaling.py --sizes 1000 --warm 1 --distinct 50   # 1000 sources, heads prefilled
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import json
import os
import platform
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# --tree runs the cycles with another checkout's code (a before / after in one run)
sys.path.insert(0, os.environ.get("TASKSIM_BENCH_TREE", str(REPO)))

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
DIM = 384
SOURCE_ROWS = 500
WINDOW_ROWS = 100
CLASS_POOL = 20
CLASSES_PER_SOURCE = 5

# Functions whose cumulative time is reported with --profile (name as cProfile shows it).
PROFILED = (
    # the profile stage's per-source steps
    "load_source", "table_fingerprint", "get_or_compute", "source_view", "load_or_fit_head", "missing_rate",
    "shared_space_measures", "mmd2", "frechet_distance", "coverage", "domain_classifier_auc", "duplicate_rate",
    "label_noise_rate", "label_shift", "label_overlap", "otdd", "target_basis",
    # the batched transferability and the confidence bootstrap
    "score_views", "profile_many", "transferability_profile", "bootstrap_profiles",
    # the other stages
    "check", "rank_sources", "_bootstrap_rounds", "_reliabilities", "top1_and_intervals", "recommend",
    "record_cycle",
)


def _matrix(rng: np.random.Generator, n: int, labels: np.ndarray, means: np.ndarray, shift: np.ndarray) -> np.ndarray:
    return (means[labels] + shift + rng.normal(size=(n, DIM))).astype(np.float32)


def _table(x: np.ndarray, labels: np.ndarray, ts: list[datetime] | None = None) -> pa.Table:
    cols: dict[str, Any] = {
        "x": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1), type=pa.float32()), DIM),
        "label": pa.array([f"class{v:02d}" for v in labels]),
    }
    if ts is not None:
        cols["ts"] = pa.array(ts, type=pa.timestamp("us", tz="UTC"))
    return pa.table(cols)


def build_workspace(root: Path, sources: int, windows: int, *, seed: int = 0, distinct: int | None = None) -> Path:
    """A production stream (window 0 is the reference) and ``sources`` sources; returns the config path.

    With ``distinct``, only the first ``distinct`` sources get their own rows: source ``i`` beyond
    them reads source ``i % distinct``'s file (another name and cost; every measure is still
    computed for it). The first ``distinct`` sources and the stream are those of a full build."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    means = rng.normal(scale=1.5, size=(CLASS_POOL, DIM))
    tables = []
    for w in range(windows):
        labels = rng.integers(0, CLASSES_PER_SOURCE, size=WINDOW_ROWS)
        ts = [T0 + timedelta(hours=w, seconds=int(s)) for s in rng.integers(0, 3600, WINDOW_ROWS)]
        tables.append(_table(_matrix(rng, WINDOW_ROWS, labels, means, np.zeros(DIM)), labels, ts))
    pq.write_table(pa.concat_tables(tables), root / "production.parquet")
    (root / "sources").mkdir(exist_ok=True)
    entries = []
    for i in range(sources):
        own = i if not distinct or i < distinct else i % distinct
        if own == i:
            first = (i * 3) % CLASS_POOL
            classes = np.array([(first + k) % CLASS_POOL for k in range(CLASSES_PER_SOURCE)])
            labels = classes[rng.integers(0, CLASSES_PER_SOURCE, size=SOURCE_ROWS)]
            shift = rng.normal(scale=0.1 * (i % 7), size=DIM)
            pq.write_table(_table(_matrix(rng, SOURCE_ROWS, labels, means, shift), labels),
                           root / "sources" / f"s{i}.parquet")
        entries.append({"name": f"s{i:04d}", "path": f"sources/s{own}.parquet", "feature_columns": ["x"],
                        "label_column": "label", "licence": "mit", "cost": 1.0 + (i % 3)})
    config = {
        "name": f"scaling-{sources}",
        "state_dir": "state",
        "production": {"path": "production.parquet", "timestamp_column": "ts", "label_column": "label",
                       "feature_columns": ["x"], "partitioning": None},
        "window": {"mode": "sequential", "length": "1h", "start": (T0 + timedelta(hours=1)).isoformat()},
        "reference": {"start": T0.isoformat(), "end": (T0 + timedelta(hours=1)).isoformat()},
        "encoder": {"kind": "identity"},
        "sources": entries,
        "deployed_source": "s0000",
        "schedule": {"interval": "1h"},
    }
    path = root / "tasksim.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _run_cycle(config: Any, encoder: Any) -> tuple[Any, Any]:
    from tasksim.cycle import Cycle

    cycle = Cycle(config, encoder=encoder)
    try:
        result = cycle.run()
    finally:
        cycle.store.close()
    if result.status != "success":
        raise RuntimeError(f"cycle {result.cycle_id}: {result.status}: {result.error}")
    return result, cycle._encoder


def _profiled(config: Any, encoder: Any) -> dict[str, float]:
    profiler = cProfile.Profile()
    profiler.enable()
    result, _ = _run_cycle(config, encoder)
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    out: dict[str, float] = {}
    for (filename, _, name), (_, _, _, cumulative, _) in stats.items():
        if name in PROFILED and "tasksim" in filename:
            key = f"{name} ({Path(filename).stem})"
            out[key] = out.get(key, 0.0) + cumulative
    # which kind of cycle it was: a drifted window measures every source's unweighted distances afresh
    out["(cycle: drifted)"] = float(bool(result.drift and result.drift.drifted))
    out["(cycle: sources carrying)"] = float(sum(1 for p in result.profiles if p.carried))
    return out


def child(config_path: Path, cycles: int, warm: int, profile: bool) -> dict[str, Any]:
    """In this process: ``cycles`` cycles (the first pays the process's cold start), the last
    ``warm`` of them reported as warm; then, with ``profile``, one more under cProfile."""
    from tasksim.config import load_config

    config = load_config(config_path)
    encoder = None
    runs = []
    for _ in range(cycles):
        t0, c0 = time.perf_counter(), time.process_time()
        result, encoder = _run_cycle(config, encoder)
        runs.append({"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0, **result.stage_seconds,
                     "window": str(result.window_start),
                     "drifted": bool(result.drift and result.drift.drifted),
                     "carrying": sum(1 for p in result.profiles if p.carried)})
    out: dict[str, Any] = {"runs": runs, "best": result.ranking.best().source if result.ranking else None}
    warm_runs = runs[-warm:] if warm else []
    if warm_runs:
        out["warm_median"] = {k: statistics.median(r.get(k, 0.0) for r in warm_runs) for k in warm_runs[0]
                              if isinstance(warm_runs[0][k], float)}
    if profile:
        out["profile"] = _profiled(config, encoder)
    return out


def prefill(config_path: Path, distinct: int) -> dict[str, Any]:
    """In this process: fit the heads of the first ``distinct`` sources into the workspace's head
    cache, exactly as a first cycle would (``load_or_fit_head`` on the source's shared-space rows,
    labels and seed, under the profile's key), and copy each to the keys of the sources that read
    the same file (a head depends only on the rows, the labels and the seed: the one their first
    cycle would fit). Their shared-space embeddings land in the embedding cache on the way. The
    window cursor then moves past the first window, the one a cold first cycle would have taken,
    so that the cycles after see the same windows as with a cold first cycle."""
    import torch

    from tasksim.config import load_config
    from tasksim.cycle import CURSOR_KEY, Cycle
    from tasksim.heads import _cache_path, load_or_fit_head
    from tasksim.profile import Target, _labels, _Profiler
    from tasksim.sample import load_source

    config = load_config(config_path)
    cycle = Cycle(config)
    fitted: dict[str, Path] = {}
    try:
        profiler = _Profiler(config, Target(pa.table({}), torch.zeros(1, DIM), None), cycle.encoder, cycle.cache,
                             cycle.device)
        for source in config.sources:
            data = load_source(source, config.sampling)
            dst = _cache_path(profiler.heads_dir, profiler.head_key(source, data))
            if str(source.path) in fitted:
                shutil.copyfile(fitted[str(source.path)], dst)
                continue
            labels = source.named_labels(_labels(data, source.label_column))
            shared = profiler.encode_source(source, data).to(cycle.device)
            load_or_fit_head(profiler.heads_dir, profiler.head_key(source, data), shared, labels,
                             seed=config.sampling.seed)
            fitted[str(source.path)] = dst
        cycle.store.set_state(CURSOR_KEY, (T0 + timedelta(hours=2)).isoformat())
    finally:
        cycle.store.close()
    return {"fitted": len(fitted), "copied": len(config.sources) - len(fitted)}


def _spawn(tree: Path, config_path: Path, cycles: int, warm: int, profile: bool) -> dict[str, Any]:
    env = {**os.environ, "TASKSIM_BENCH_TREE": str(tree), "PYTHONPATH": str(tree)}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(config_path), "--cycles", str(cycles),
           "--warm", str(warm)] + (["--profile"] if profile else [])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{tree}: child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_size(sources: int, warm: int, profile: bool, root: Path, trees: list[Path], *,
                 distinct: int | None = None) -> dict[str, Any]:
    """Build the workspace, run its first cycle (cold: nothing cached anywhere) with the first tree,
    then per tree, from a copy of the state after that first cycle: a new process's first cycle
    (disk caches warm, process cold) and ``warm`` warm cycles, on the same windows for every tree.

    With fewer ``distinct`` source files than sources, the heads are prefilled instead (:func:`prefill`,
    in a new process, timed) and the cold first cycle is not run: the new process's first cycle
    is then the first cycle of the workspace (heads and embeddings cached, nothing else)."""
    replicated = bool(distinct) and sources > int(distinct or 0)
    path = build_workspace(root / f"n{sources}", sources, windows=warm + 4 + int(profile),
                           distinct=distinct if replicated else None)
    state = path.parent / "state"
    out: dict[str, Any] = {"sources": sources, "trees": {}}
    if replicated:
        t0 = time.perf_counter()
        env = {**os.environ, "TASKSIM_BENCH_TREE": str(trees[0]), "PYTHONPATH": str(trees[0])}
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--prefill", str(path),
                               "--distinct", str(distinct)], env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"prefill failed:\n{proc.stderr[-3000:]}")
        out.update(first_wall=None, first_stages={}, distinct=distinct, prefill_wall=time.perf_counter() - t0,
                   prefill=json.loads(proc.stdout.strip().splitlines()[-1]))
    else:
        first = _spawn(trees[0], path, 1, 0, False)
        out.update(first_wall=first["runs"][0]["wall"], first_stages=first["runs"][0])
    primed = path.parent / "state.primed"
    shutil.copytree(state, primed)
    for tree in trees:
        shutil.rmtree(state)
        shutil.copytree(primed, state)
        out["trees"][str(tree)] = _spawn(tree, path, warm + 1, warm, profile)
    return out


def demo_child(config_path: Path, warm: int) -> dict[str, Any]:
    """In this process: the demo's first cycle, then ``warm`` warm cycles, each followed by the
    floor: the same window's rows through the same (warm) encoder, nothing else."""
    from tasksim.config import load_config
    from tasksim.cycle import Cycle

    config = load_config(config_path)
    t0 = time.perf_counter()
    first, encoder = _run_cycle(config, None)
    first_wall = time.perf_counter() - t0
    cycles, floors = [], []
    for _ in range(warm):
        t0 = time.perf_counter()
        result, encoder = _run_cycle(config, encoder)
        cycles.append({"wall": time.perf_counter() - t0, **result.stage_seconds})
        probe = Cycle(config, encoder=encoder)
        try:  # the window this cycle just ranked: put the cursor back, sample it, restore the cursor
            probe.store.set_state("window_cursor", result.window_start.isoformat())
            window = probe.sample().window
            t0 = time.perf_counter()
            encoder.encode(window.table, config.production)
            floors.append(time.perf_counter() - t0)
            probe.store.set_state("window_cursor", result.window_end.isoformat())
        finally:
            probe.store.close()
    return {"first_wall": first_wall, "first_stages": dict(first.stage_seconds), "warm": cycles, "floor": floors,
            "ratio": statistics.median(c["wall"] for c in cycles) / statistics.median(floors),
            "warm_median": {k: statistics.median(c.get(k, 0.0) for c in cycles) for k in cycles[0]}}


def demo_floor(root: Path, warm: int) -> dict[str, Any]:
    """The demo workspace (``tasksim.demo``, MiniLM): its caches prebuilt in one process
    (``tasksim demo --prebuild``: source embeddings and heads), then, in a new process, the first
    cycle and ``warm`` warm cycles against the floor (embedding the window alone)."""
    from tasksim.demo import build_demo_workspace

    path = build_demo_workspace(root / "demo")
    env = {**os.environ, "PYTHONPATH": os.environ.get("TASKSIM_BENCH_TREE", str(REPO))}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tasksim.demo", "prebuild", str(path)], env=env, check=True,
                   capture_output=True, text=True)
    prebuild = time.perf_counter() - t0
    cmd = [sys.executable, str(Path(__file__).resolve()), "--demo-child", str(path), "--warm", str(warm)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"demo child failed:\n{proc.stderr[-3000:]}")
    return {"prebuild_wall": prebuild, **json.loads(proc.stdout.strip().splitlines()[-1])}


def _fmt_stages(stages: dict[str, float]) -> str:
    order = ("sample", "embed", "drift", "profile", "rank")
    return " | ".join(f"{stages.get(k, 0.0):.2f}" for k in order)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[10, 100, 1000])
    ap.add_argument("--warm", type=int, default=3, help="warm cycles per size (the median is reported)")
    ap.add_argument("--profile", action="store_true", help="one more warm cycle per size under cProfile")
    ap.add_argument("--demo", action="store_true", help="also the warm-cycle / embedding ratio on the demo")
    ap.add_argument("--tree", type=Path, action="append", default=[], help="another checkout to time as well")
    ap.add_argument("--json", type=Path, help="write the raw numbers here")
    ap.add_argument("--distinct", type=int, default=0,
                    help="sizes above this many sources reuse these sources' files (other names), with their "
                         "heads prefilled instead of a cold first cycle (0: every source its own file)")
    ap.add_argument("--prefill", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--demo-child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--cycles", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.cycles, args.warm, args.profile), default=str))
        return 0
    if args.prefill:
        print(json.dumps(prefill(args.prefill, args.distinct)))
        return 0
    if args.demo_child:
        print(json.dumps(demo_child(args.demo_child, args.warm), default=str))
        return 0

    trees = [REPO, *(t.resolve() for t in args.tree)]
    load_start = os.getloadavg()
    results: dict[str, Any] = {"sizes": [], "trees": [str(t) for t in trees]}
    with tempfile.TemporaryDirectory(prefix="tasksim-scaling-") as tmp:
        for n in args.sizes:
            results["sizes"].append(measure_size(n, args.warm, args.profile, Path(tmp), trees,
                                                 distinct=args.distinct or None))
            r = results["sizes"][-1]
            first = "n/a (heads prefilled)" if r["first_wall"] is None else f"{r['first_wall']:.1f} s"
            print(f"# {n} sources: first cycle {first}; warm median "
                  + ", ".join(f"{Path(t).name} {v['warm_median']['wall']:.2f} s" for t, v in r["trees"].items()),
                  file=sys.stderr, flush=True)
        if args.demo:
            results["demo"] = demo_floor(Path(tmp), args.warm)
    results["load"] = [load_start[0], os.getloadavg()[0]]

    print(f"## Cycle scaling ({platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"load average {load_start[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end)\n")
    print(f"{SOURCE_ROWS}-row sources, {WINDOW_ROWS}-row windows, {DIM}-d identity features, "
          f"{args.warm} warm cycles per size (median); trees: {', '.join(str(t) for t in trees)}\n")
    print("| tree | sources | first cycle, cold (s) | new process, 1st cycle (s) | warm cycle (s) "
          "| its CPU (s) | sample | embed | drift | profile | rank (s) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results["sizes"]:
        for t, v in r["trees"].items():
            first = "n/a" if r["first_wall"] is None else f"{r['first_wall']:.1f}"
            print(f"| {Path(t).name} | {r['sources']} | {first} | {v['runs'][0]['wall']:.1f} | "
                  f"{v['warm_median']['wall']:.2f} | {v['warm_median'].get('cpu', float('nan')):.2f} | "
                  f"{_fmt_stages(v['warm_median'])} |")
    sizes = results["sizes"]
    for r in sizes:
        if r.get("distinct"):
            print(f"\n{r['sources']} sources: {r['distinct']} distinct source files; heads prefilled in "
                  f"{r['prefill_wall']:.1f} s ({r['prefill']}); no cold first cycle run")
    for r in sizes:
        for t, v in r["trees"].items():
            print(f"\n{Path(t).name}, {r['sources']} sources, every cycle of the process (wall s, process CPU s, "
                  "drift verdict, sources carrying their unweighted distances): " + "; ".join(
                      f"{run['wall']:.2f} {run.get('cpu', float('nan')):.2f} "
                      f"{'drift' if run.get('drifted') else 'no drift'} {run.get('carrying', '?')}"
                      for run in v["runs"]))
    pairs = list(itertools.pairwise(sizes)) + ([(sizes[0], sizes[-1])] if len(sizes) > 2 else [])
    results["marginal_seconds"] = {}
    for lo, hi in pairs:
        span = hi["sources"] - lo["sources"]
        for t in results["trees"]:
            if t not in lo["trees"] or t not in hi["trees"]:
                continue
            a, b = lo["trees"][t]["warm_median"], hi["trees"][t]["warm_median"]
            marginal = (b["wall"] - a["wall"]) / span
            per_stage = {k: (b.get(k, 0.0) - a.get(k, 0.0)) / span for k in ("profile", "rank")}
            cpu = (b.get("cpu", float("nan")) - a.get("cpu", float("nan"))) / span
            results["marginal_seconds"][f"{t} {lo['sources']}->{hi['sources']}"] = marginal
            print(f"\nmarginal cost of a source in a warm cycle, {Path(t).name} ({lo['sources']} -> {hi['sources']}): "
                  f"{1000 * marginal:.1f} ms (profile {1000 * per_stage['profile']:.1f} ms, rank "
                  f"{1000 * per_stage['rank']:.1f} ms; process CPU time {1000 * cpu:.1f} ms); target <= 50 ms")
    for r in sizes:
        for t, v in r["trees"].items():
            if "profile" in v:
                print(f"\n### where a warm cycle's time goes, {Path(t).name}, {r['sources']} sources "
                      "(cProfile cumulative seconds)\n")
                kind = {k: v["profile"].pop(k) for k in list(v["profile"]) if k.startswith("(cycle")}
                print(f"the profiled cycle: {'drift' if kind.get('(cycle: drifted)') else 'no drift'}, "
                      f"{kind.get('(cycle: sources carrying)', 0):.0f} sources carrying their unweighted distances\n")
                for key, sec in sorted(v["profile"].items(), key=lambda kv: -kv[1]):
                    print(f"- {key}: {sec:.3f} s ({1000 * sec / r['sources']:.2f} ms per source)")
    if "demo" in results:
        d = results["demo"]
        print(f"\ndemo (MiniLM): prebuild {d['prebuild_wall']:.1f} s (a new process: sources embedded, heads "
              f"fitted); then in a new process the first cycle {d['first_wall']:.1f} s (stages sample|embed|drift|profile|rank "
              f"{_fmt_stages(d['first_stages'])}); warm cycle {d['warm_median']['wall']:.2f} s "
              f"({_fmt_stages(d['warm_median'])}); embedding the window alone "
              f"{statistics.median(d['floor']):.2f} s; ratio {d['ratio']:.2f} (target <= 3)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
