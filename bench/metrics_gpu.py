"""GPU benchmark of the similarity engine: one prepared run for a lent CUDA machine.

Prints a markdown report and writes ``--json PATH`` after every section (a run cut short still
leaves what it measured). Sections, each isolated so one failure does not lose the others:

- the device and torch matmul throughput (float64; float32 with TF32 off), the peaks;
- agreement: ``profile_many`` on CUDA against the same call on CPU (K=3, N=3000, D=256);
- ratio (a) profile / LogME and ratio (c) K=8 separate profiles / one ``profile_many`` at
  N=10k, D=1024 on CUDA, interleaved, median of the repeats;
- the large run: ``profile_many`` for 64 sources x N=50k x D=1024 (goal <= 10 s on an H100),
  plus the batched float64 ``eigh`` of 64 x 1024 x 1024 alone, with each linear-algebra
  backend, to show its share;
- distances and CKA on CUDA (OTDD N=2000 D=128 C=10, MMD^2 / Frechet / linear CKA at 10k x 1024).

Run: ``python bench/metrics_gpu.py [--json PATH] [--dry-run]``. ``--dry-run`` runs every
section at small sizes on the CPU (to check the script without a GPU).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch

from tasksim import metrics as Dist
from tasksim.metrics import representation as R
from tasksim.metrics import transfer as T


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn: Callable[[], object], dev: torch.device, repeat: int = 3) -> tuple[float, float, object]:
    """(median, best, last output) of ``repeat`` runs after one warm-up."""
    out = fn()
    times = []
    for _ in range(repeat):
        _sync(dev)
        t0 = time.perf_counter()
        out = fn()
        _sync(dev)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times), out


def interleaved(fns: dict[str, Callable[[], object]], dev: torch.device, repeat: int) -> dict[str, float]:
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            _sync(dev)
            t0 = time.perf_counter()
            fn()
            _sync(dev)
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def features(k: int, n: int, d: int, c: int, dev: torch.device, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """K sources' embedding-like float32 features of the same N target rows (ReLU of overlapping
    class clusters; each source has its own class means, so the sources differ)."""
    g = torch.Generator(device=dev).manual_seed(seed)
    y = torch.randint(0, c, (n,), device=dev, generator=g)
    x = torch.empty(k, n, d, device=dev, dtype=torch.float32)
    for i in range(k):  # generation only, source by source to bound the temporaries
        means = torch.randn(c, d, device=dev, generator=g) * (0.03 + 0.01 * (i % 8))
        x[i] = torch.relu(means[y] + torch.randn(n, d, device=dev, generator=g) + 0.3)
    return x, y


def section_matmul(dev: torch.device, small: bool) -> dict:
    n = 512 if small else 8192
    torch.backends.cuda.matmul.allow_tf32 = False
    out = {}
    for dtype in (torch.float64, torch.float32):
        a = torch.randn(n, n, device=dev, dtype=dtype)
        b = torch.randn(n, n, device=dev, dtype=dtype)
        med, best, _ = timed(lambda a=a, b=b: a @ b, dev, repeat=5)
        out[str(dtype).replace("torch.", "")] = 2.0 * n**3 / best / 1e12
    return {"square_n": n, "tflops_peak": out}


def section_agreement(dev: torch.device, small: bool) -> dict:
    k, n, d, c = 3, 3000, 256, 10
    x, y = features(k, n, d, c, torch.device("cpu"), seed=1)
    ref = T.profile_many(x, y, as_columns=True)
    got = T.profile_many(x.to(dev), y.to(dev), as_columns=True)
    streamed = T.profile_many(x.to(dev), y.to(dev), as_columns=True, max_memory_bytes=1)
    rel = {}
    for m, vals in ref.items():
        scale = max(1e-12, max(abs(v) for v in vals))
        rel[m] = max(max(abs(a - b) for a, b in zip(vals, got[m])),
                     max(abs(a - b) for a, b in zip(vals, streamed[m]))) / scale
    return {"K": k, "N": n, "D": d, "max_relative_difference_vs_cpu": rel}


def section_ratios(dev: torch.device, small: bool) -> dict:
    k, n, d, c = (4, 2000, 128, 10) if small else (8, 10_000, 1024, 10)
    x, y = features(k, n, d, c, dev, seed=2)
    g = torch.Generator(device=dev).manual_seed(5)
    probs = torch.softmax(torch.randn(k, n, 1000, device=dev, generator=g) * 2.0, -1)  # Z=1000 source classes
    big = 2**40
    t = interleaved({
        "logme": lambda: T.logme(x[0], y),
        "profile": lambda: T.transferability_profile(x[0], y, probs[0]),
        "separate": lambda: [T.transferability_profile(x[i], y, probs[i]) for i in range(k)],
        "profile_many_in_memory": lambda: T.profile_many(x, y, probs, max_memory_bytes=big),
        "profile_many_streamed": lambda: T.profile_many(x, y, probs, max_memory_bytes=1),
    }, dev, repeat=5)
    return {"K": k, "N": n, "D": d, "C": c, "Z": 1000, "seconds_median": t,
            "a_profile_over_logme": t["profile"] / t["logme"],
            "c_separate_over_profile_many_in_memory": t["separate"] / t["profile_many_in_memory"],
            "c_separate_over_profile_many_streamed": t["separate"] / t["profile_many_streamed"]}


def section_eigh(dev: torch.device, small: bool) -> dict:
    k, d = (4, 128) if small else (64, 1024)
    a = torch.randn(k, d, d, device=dev, dtype=torch.float64)
    a = a @ a.transpose(1, 2) / d
    out = {}
    libs = ["default"] + (["cusolver", "magma"] if dev.type == "cuda" else [])
    for lib in libs:
        try:
            if lib != "default":
                torch.backends.cuda.preferred_linalg_library(lib)
            med, best, _ = timed(lambda: torch.linalg.eigh(a), dev, repeat=1)
            out[lib] = {"median_s": med, "best_s": best}
        except Exception as exc:  # noqa: BLE001 - report and go on
            out[lib] = {"error": repr(exc)[:300]}
    if dev.type == "cuda":
        torch.backends.cuda.preferred_linalg_library("default")
    return {"K": k, "D": d, "eigh_float64": out}


def section_large(dev: torch.device, small: bool) -> dict:
    k, n, d, c = (8, 4000, 128, 10) if small else (64, 50_000, 1024, 10)
    x, y = features(k, n, d, c, dev, seed=3)
    T.profile_many(x[:2, :2000], y[:2000])  # warm-up: kernels, handles
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    runs = []
    res = None
    for _ in range(2):
        _sync(dev)
        t0 = time.perf_counter()
        res = T.profile_many(x, y, as_columns=True)
        _sync(dev)
        runs.append(time.perf_counter() - t0)
    single = T.transferability_profile(x[0], y)
    agree = {m: abs(res[m][0] - single[m]) / max(1e-12, abs(single[m])) for m in single if m in res}
    return {"K": k, "N": n, "D": d, "C": c, "seconds": runs, "seconds_per_source": min(runs) / k,
            "input_gib": x.numel() * 4 / 2**30,
            "peak_gpu_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else None,
            "source0_vs_single_profile_relative_difference": agree,
            "logme_first4": res["logme"][:4]}


def section_distances(dev: torch.device, small: bool) -> dict:
    n_ot, d_ot = (500, 32) if small else (2000, 128)
    g = torch.Generator(device=dev).manual_seed(4)
    xs = torch.randn(n_ot, d_ot, device=dev, generator=g)
    xt = torch.randn(n_ot, d_ot, device=dev, generator=g) + 0.3
    ys = torch.randint(0, 10, (n_ot,), device=dev, generator=g)
    yt = torch.randint(0, 10, (n_ot,), device=dev, generator=g)
    n, d = (1000, 64) if small else (10_000, 1024)
    a = torch.randn(n, d, device=dev, generator=g, dtype=torch.float64)
    b = torch.randn(n, d, device=dev, generator=g, dtype=torch.float64) * 1.1
    out = {}
    for name, fn in [("otdd N=%d D=%d C=10" % (n_ot, d_ot), lambda: Dist.otdd(xs, ys, xt, yt)),
                     ("mmd2 %dx%d" % (n, d), lambda: Dist.mmd2(a, b)),
                     ("frechet_distance %dx%d" % (n, d), lambda: Dist.frechet_distance(a, b)),
                     ("linear_cka %dx%d" % (n, d), lambda: R.linear_cka(a, b))]:
        med, best, val = timed(fn, dev, repeat=3)
        out[name] = {"median_s": med, "best_s": best, "value": val}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path)
    ap.add_argument("--dry-run", action="store_true", help="small sizes on CPU")
    args = ap.parse_args()
    if args.dry_run:
        dev = torch.device("cpu")
    elif torch.cuda.is_available():
        dev = torch.device("cuda")
    else:
        print("CUDA not available: nothing to measure (use --dry-run to check the script)")
        return 0
    small = args.dry_run
    report: dict = {"torch": torch.__version__, "cuda": torch.version.cuda,
                    "device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu (dry run)"}
    sections = [("matmul", section_matmul), ("agreement", section_agreement), ("ratios", section_ratios),
                ("eigh", section_eigh), ("large", section_large), ("distances", section_distances)]
    if dev.type == "cuda" and torch.cuda.get_device_properties(0).total_memory < 40 * 2**30:
        sections = [s for s in sections if s[0] != "large"]
    for name, fn in sections:
        t0 = time.perf_counter()
        try:
            report[name] = fn(dev, small)
        except Exception:  # noqa: BLE001 - one failed section must not lose the others
            report[name] = {"error": traceback.format_exc()[-2000:]}
        report[name]["section_wall_s"] = time.perf_counter() - t0
        print(f"## {name}\n```\n{json.dumps(report[name], indent=1, default=str)}\n```", flush=True)
        if args.json:
            args.json.write_text(json.dumps(report, indent=1, default=str))
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
