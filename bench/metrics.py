"""Benchmark of the similarity engine's transferability half (tasksim.metrics.transfer).

One run prints (markdown) and optionally saves (``--json PATH``):

- the machine (``lscpu | head``, torch version, threads, load average);
- torch matmul throughput in float64 and float32 at the sizes the measures use (the peak per
  dtype is the best of them);
- every measure's time at N=10k, D=1024, C=10 (``--quick``: N=2000, D=256) with a flop estimate
  and the fraction of the matmul peak it reaches (``sum_dtype flops/peak / time``);
- ratio (a): the whole transferability profile / LogME alone (target <= 2);
- ratio (b): a plain numpy port of thuml/LogME's classification path
  (``tests/metrics/reference_numpy.logme_thuml``, the tests' reference) / tasksim's LogME
  (target >= 3);
- ratio (c): K separate ``transferability_profile`` calls / one batched ``profile_many``;
- the rows of ``bench.metrics_distances.run(quick)`` when that module is importable;
- ``--gpu-large``: ``profile_many`` for 64 sources x N=50k x D=1024 on CUDA (skipped without CUDA).

Times are the best of ``--repeat`` runs; the timings that form a ratio are interleaved in the same
loop so load from other processes hits both sides alike.

Run: ``python bench/metrics.py [--quick] [--json PATH] [--gpu-large] [--threads N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning (read by libgomp when torch loads). On the shared
# 2-core machine of docs/benchmarks.md spinning threads made 2-thread timings 5-10x slower and
# erratic whenever another process was busy. Set OMP_WAIT_POLICY yourself to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np
import torch

from tasksim.metrics import transfer as T
from tests.metrics.reference_numpy import logme_thuml as logme_numpy_thuml  # the tests' independent port

EIGH_FLOPS = 4.0  # x D^3: tridiagonalisation (4/3 D^3) + divide & conquer + back-transformation (rough)


# =============================================================================================
# reference: thuml/LogME classification path, plain numpy
# =============================================================================================

# =============================================================================================
# helpers
# =============================================================================================

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_of(fn: Callable[[], object], repeat: int, device: torch.device) -> tuple[float, object]:
    out = None
    best = float("inf")
    for _ in range(repeat):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best, out


def interleaved(fns: dict[str, Callable[[], object]], repeat: int, device: torch.device,
                samples: dict[str, list[float]] | None = None) -> dict[str, float]:
    """Best time of each function, the functions run in turn ``repeat`` times (every time is
    appended to ``samples[name]`` when given, for per-round ratios)."""
    best = {k: float("inf") for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            dt = time.perf_counter() - t0
            best[k] = min(best[k], dt)
            if samples is not None:
                samples.setdefault(k, []).append(dt)
    return best


def round_ratios(samples: dict[str, list[float]], num: str, den: str) -> list[float]:
    """``num / den`` within each interleaving round (both ran back to back, under the same load)."""
    return [a / b for a, b in zip(samples[num], samples[den])]


def machine_info(threads: int) -> dict:
    try:
        lscpu = subprocess.run("lscpu | head -20", shell=True, capture_output=True, text=True, timeout=10,
                               check=False).stdout
    except (OSError, subprocess.SubprocessError) as exc:  # pragma: no cover
        lscpu = f"lscpu unavailable: {exc}"
    info = {
        "lscpu_head": lscpu.strip(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy_blas_threads": threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "cpu_count": os.cpu_count(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "loadavg_start": os.getloadavg(),
    }
    return info


def make_data(n: int, d: int, c: int, seed: int, device: torch.device,
              dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Embedding-like features: ReLU of overlapping Gaussian class clusters (float32, as encoders
    emit); class means 0.05 * N(0, I_D) apart, so no measure saturates."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    y = torch.randint(0, c, (n,), generator=g)
    means = torch.randn(c, d, generator=g) * 0.05
    x = torch.relu(means[y] + torch.randn(n, d, generator=g) + 0.3)
    return x.to(device=device, dtype=dtype), y.to(device)


def matmul_rows(device: torch.device, n: int, d: int, repeat: int) -> tuple[list[dict], dict]:
    rows = []
    peak: dict[str, float] = {}
    for dtype in (torch.float64, torch.float32):
        x = torch.randn(n, d, device=device, dtype=dtype)
        a = torch.randn(d, d, device=device, dtype=dtype)
        q = torch.randn(min(1024, n), d, device=device, dtype=dtype)
        cases = [
            (f"Gram X^T X ({n}x{d})", lambda x=x: x.T @ x, 2.0 * n * d * d),
            (f"square ({d}x{d}) @ ({d}x{d})", lambda a=a: a @ a, 2.0 * d**3),
            (f"kNN block ({q.shape[0]}x{d}) @ ({d}x{n})", lambda q=q, x=x: q @ x.T, 2.0 * q.shape[0] * n * d),
        ]
        for name, fn, flops in cases:
            fn()
            t, _ = best_of(fn, repeat, device)
            gf = flops / t / 1e9
            rows.append({"dtype": str(dtype).replace("torch.", ""), "op": name, "seconds": t, "gflops": gf})
            key = str(dtype).replace("torch.", "")
            peak[key] = max(peak.get(key, 0.0), gf)
    return rows, peak


def fraction(flops: dict[str, float] | None, seconds: float, peak: dict[str, float]) -> float | None:
    if not flops:
        return None
    ideal = sum(f / (peak[k] * 1e9) for k, f in flops.items())
    return ideal / seconds


def md_table(rows: list[dict], cols: list[tuple[str, str, str]]) -> str:
    head = "| " + " | ".join(c[1] for c in cols) + " |"
    sep = "|" + "|".join("---" for _ in cols) + "|"
    lines = [head, sep]
    for r in rows:
        cells = []
        for key, _, fmt in cols:
            v = r.get(key)
            cells.append("-" if v is None else (format(v, fmt) if fmt else str(v)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# =============================================================================================
# main benchmark
# =============================================================================================

def run(quick: bool, repeat: int, threads: int, gpu_large: bool, k_sources: int) -> dict:
    device = torch.device("cpu")
    n, d, c = (2000, 256, 10) if quick else (10_000, 1024, 10)
    z_src = 1000
    out: dict = {"config": {"quick": quick, "N": n, "D": d, "C": c, "Z_source_classes": z_src,
                            "repeat": repeat, "K_sources": k_sources}}
    out["machine"] = machine_info(threads)

    x, y = make_data(n, d, c, 0, device)
    g = torch.Generator().manual_seed(1)
    probs = torch.softmax(torch.randn(n, z_src, generator=g) * 2.0, 1)
    x_np, y_np = x.numpy(), y.numpy()

    # warm-up (lazy library initialisation)
    T.transferability_profile(x[:512, :64], y[:512])
    logme_numpy_thuml(x_np[:512, :64], y_np[:512])

    mm_rows, peak = matmul_rows(device, n, d, repeat)
    out["matmul"] = mm_rows
    out["peak_gflops"] = peak

    # ---- ratios (a) and (b): interleaved, twice as many rounds as the other timings (these
    # are the targets; on a shared machine one quiet round per function is what best-of needs)
    q = 512  # transferability_profile's default knn_max_queries
    rounds = 2 * repeat
    samples: dict[str, list[float]] = {}
    tm = interleaved({
        "logme": lambda: T.logme(x, y),
        "profile": lambda: T.transferability_profile(x, y, probs),
        "numpy_thuml_logme": lambda: logme_numpy_thuml(x_np, y_np),
    }, rounds, device, samples)
    out["ratio_rounds"] = {"rounds": rounds, "seconds": samples,
                           "a_per_round": round_ratios(samples, "profile", "logme"),
                           "b_per_round": round_ratios(samples, "numpy_thuml_logme", "logme")}

    f64 = "float64"
    f32 = "float32"
    gram = 2.0 * n * d * d
    eig = EIGH_FLOPS * d**3
    chol = c * d**3 / 3.0
    meas: list[tuple[str, Callable[[], object], dict | None, int]] = [
        ("precompute (centre, Gram, eigh)", lambda: T.precompute(x, y), {f64: gram + eig}, repeat),
        ("hscore", lambda: T.hscore(x, y), {f64: gram + eig}, repeat),
        ("hscore_regularized", lambda: T.hscore_regularized(x, y), {f64: gram + eig}, repeat),
        ("transrate", lambda: T.transrate(x, y), {f64: gram + eig + chol}, repeat),
        ("gbc (PCA-64)", lambda: T.gbc(x, y), {f64: gram + eig + 2.0 * n * d * 64}, repeat),
        (f"knn_accuracy k=5 ({q} queries)", lambda: T.knn_accuracy(x, y, max_queries=q), {f32: 2.0 * q * n * d},
         repeat),
        ("knn_accuracy k=5 (exact LOO)", lambda: T.knn_accuracy(x, y), {f32: 2.0 * n * n * d}, 1),
        (f"leep (Z={z_src})", lambda: T.leep(probs, y), None, repeat),
        (f"nce (Z={z_src})", lambda: T.nce(probs, y), None, repeat),
        ("sfda", lambda: T.sfda(x, y), {f64: 2 * gram + 2 * d**3 / 3.0}, 1),
        ("parc (PCA-32, 2000 samples)", lambda: T.parc(x, y), {f64: gram + eig}, 1),
        ("nleep (diag GMM, 5C comps)", lambda: T.nleep(x, y), None, 1),
        ("linear_probe_accuracy (5-fold)", lambda: T.linear_probe_accuracy(x, y), None, 1),
    ]
    rows = [
        {"measure": "logme", "seconds": tm["logme"], "fraction": fraction({f64: gram + eig}, tm["logme"], peak)},
        {"measure": "transferability_profile (default + leep/nce)", "seconds": tm["profile"],
         "fraction": fraction({f64: gram + eig + chol + 2.0 * n * d * 64, f32: 2.0 * q * n * d}, tm["profile"], peak)},
        {"measure": "numpy port of thuml/LogME", "seconds": tm["numpy_thuml_logme"],
         "fraction": fraction({f64: 2 * gram + 12.0 * d**3}, tm["numpy_thuml_logme"], peak)},
    ]
    for name, fn, flops, rep in meas:
        t, _ = best_of(fn, rep, device)
        rows.append({"measure": name, "seconds": t, "fraction": fraction(flops, t, peak)})
    out["measures"] = rows

    # ---- ratio (c): K separate profiles vs one profile_many
    xs = torch.stack([make_data(n, d, c, 10 + i, device)[0] for i in range(k_sources)])
    ps = probs.unsqueeze(0).expand(k_sources, -1, -1).contiguous()
    tk = interleaved({
        "separate": lambda: [T.transferability_profile(xs[i], y, ps[i]) for i in range(k_sources)],
        "profile_many": lambda: T.profile_many(xs, y, ps),
        "profile_many_streamed": lambda: T.profile_many(xs, y, ps, max_memory_bytes=1),
    }, min(repeat, 3), device)
    out["many"] = {"K": k_sources, **tk}

    load_end = os.getloadavg()
    out["machine"]["loadavg_end"] = load_end
    out["ratios"] = {
        "a_profile_over_logme": tm["profile"] / tm["logme"],
        "b_numpy_thuml_over_tasksim_logme": tm["numpy_thuml_logme"] / tm["logme"],
        "c_separate_over_profile_many": tk["separate"] / tk["profile_many"],
        "c_separate_over_profile_many_streamed": tk["separate"] / tk["profile_many_streamed"],
    }

    # ---- other engineers' distance benchmarks
    try:
        from bench import metrics_distances  # type: ignore
    except ImportError as exc:
        out["distances"] = {"skipped": f"bench.metrics_distances not importable: {exc}"}
    else:
        out["distances"] = metrics_distances.run(quick)

    # ---- large GPU run
    if gpu_large:
        out["gpu_large"] = gpu_large_run(quick)
    return out


def gpu_large_run(quick: bool) -> dict:
    if not torch.cuda.is_available():
        return {"skipped": "CUDA not available"}
    dev = torch.device("cuda")
    k, n, d, c = (8, 5_000, 1024, 10) if quick else (64, 50_000, 1024, 10)
    g = torch.Generator(device=dev).manual_seed(0)
    y = torch.randint(0, c, (n,), device=dev, generator=g)
    means = torch.randn(k, c, d, device=dev, generator=g) * 0.05
    x = torch.empty(k, n, d, device=dev, dtype=torch.float32)
    for i in range(k):  # data generation only
        x[i] = torch.relu(means[i][y] + torch.randn(n, d, device=dev, generator=g) + 0.3)
    T.profile_many(x[:2, :2000], y[:2000])  # warm-up
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    res = T.profile_many(x, y)
    torch.cuda.synchronize()
    t = time.perf_counter() - t0
    t0 = time.perf_counter()
    single = T.transferability_profile(x[0], y)
    torch.cuda.synchronize()
    t1 = time.perf_counter() - t0
    return {"K": k, "N": n, "D": d, "C": c, "device": torch.cuda.get_device_name(0), "seconds": t,
            "seconds_per_source": t / k, "one_transferability_profile_seconds": t1,
            "peak_gpu_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
            "logme_source0": res[0]["logme"], "logme_source0_single": single["logme"]}


def report(out: dict) -> str:
    cfg = out["config"]
    m = out["machine"]
    lines = [f"### Machine\n\n```\n{m['lscpu_head']}\n```\n",
             (f"python {m['python']}, torch {m['torch']}, numpy {m['numpy']}, torch threads {m['torch_threads']}, "
              f"numpy BLAS threads {m['numpy_blas_threads']}, OMP_WAIT_POLICY={m['omp_wait_policy']}, "
              f"CUDA: {m['cuda']}; load average at start "
              f"{', '.join(f'{v:.1f}' for v in m['loadavg_start'])}, at end "
              f"{', '.join(f'{v:.1f}' for v in m.get('loadavg_end', ()))}\n"),
             f"### Matmul throughput (torch, best of {cfg['repeat']})\n",
             md_table(out["matmul"], [("dtype", "dtype", ""), ("op", "op", ""), ("seconds", "s", ".4f"),
                                      ("gflops", "GFLOP/s", ".1f")]),
             "\nPeak used for the fractions: " + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in out["peak_gflops"].items()),
             f"\n### Measures (N={cfg['N']}, D={cfg['D']}, C={cfg['C']}, float32 features, CPU)\n",
             md_table(out["measures"], [("measure", "measure", ""), ("seconds", "time (s)", ".3f"),
                                        ("fraction", "fraction of matmul peak", ".2f")]),
             ("\nFlop estimates (algorithmic): Gram 2ND^2 (the CPU path is a symmetric rank-k update that "
              "performs half of it, so a fraction can exceed 1), eigh 4D^3, TransRate + C D^3/3 (Cholesky), GBC + 2ND*64, kNN "
              "2*queries*N*D (float32); '-' = iterative (no estimate).\n")]
    r = out["ratios"]
    many = out["many"]
    lines.append("### Ratios\n")
    lines.append(md_table([
        {"ratio": "(a) transferability_profile / logme alone", "value": r["a_profile_over_logme"], "target": "<= 2"},
        {"ratio": "(b) numpy thuml/LogME port / tasksim logme", "value": r["b_numpy_thuml_over_tasksim_logme"],
         "target": ">= 3"},
        {"ratio": f"(c) {many['K']} separate profiles / profile_many (in memory)",
         "value": r["c_separate_over_profile_many"], "target": "> 1"},
        {"ratio": f"(c') {many['K']} separate profiles / profile_many (streamed row chunks)",
         "value": r["c_separate_over_profile_many_streamed"], "target": "-"},
    ], [("ratio", "ratio", ""), ("value", "value", ".2f"), ("target", "target", "")]))
    rr = out["ratio_rounds"]
    lines.append(f"\n(a) and (b) are best time over best time, {rr['rounds']} interleaved rounds. Within each round: "
                 f"(a) median {statistics.median(rr['a_per_round']):.2f} (range {min(rr['a_per_round']):.2f}-"
                 f"{max(rr['a_per_round']):.2f}), (b) median {statistics.median(rr['b_per_round']):.2f} (range "
                 f"{min(rr['b_per_round']):.2f}-{max(rr['b_per_round']):.2f}).")
    lines.append(f"\nK={many['K']}: separate {many['separate']:.3f} s, profile_many {many['profile_many']:.3f} s, "
                 f"streamed {many['profile_many_streamed']:.3f} s\n")
    dist = out.get("distances")
    lines.append("### Distances (bench.metrics_distances)\n")
    if isinstance(dist, list) and dist:
        cols = list(dict.fromkeys(k for row in dist for k in row))
        lines.append(md_table(dist, [(k, k, ".4g" if isinstance(dist[0].get(k), float) else "") for k in cols]))
    else:
        lines.append(str(dist))
    if "gpu_large" in out:
        lines.append("\n### GPU large (profile_many)\n")
        lines.append(json.dumps(out["gpu_large"], indent=1))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (N=2000, D=256)")
    ap.add_argument("--json", type=Path, help="save the results as JSON")
    ap.add_argument("--gpu-large", action="store_true", help="64 sources x N=50k x D=1024 on CUDA when present")
    ap.add_argument("--repeat", type=int, default=None, help="best of this many runs (default 5; quick 3)")
    ap.add_argument("--threads", type=int, default=None, help="torch and numpy BLAS threads (default: torch's)")
    ap.add_argument("--sources", type=int, default=4, help="K for ratio (c)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    repeat = args.repeat or (3 if args.quick else 5)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        limits = None
    else:
        limits = threadpool_limits(threads)
    try:
        out = run(args.quick, repeat, threads, args.gpu_large, args.sources)
    finally:
        if limits is not None:
            limits.restore_original_limits()
    print(report(out))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
