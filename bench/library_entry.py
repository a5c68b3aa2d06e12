"""Is the library as fast as the CLI? LogME called the way a notebook calls it, against the CLI's way.

Each case is a fresh Python process with a clean environment (no ``OMP_WAIT_POLICY``, no thread
variables) that uses numpy's BLAS first, as a notebook does, then times
``tasksim.metrics.logme`` on N x D float32 features with C classes (best of ``--repeat`` calls
after one warm-up):

- ``cli``: ``OMP_WAIT_POLICY=PASSIVE`` set in the environment, as ``tasksim``'s entry point had it;
- ``notebook``: nothing set; ``import numpy``, a BLAS product, then ``import tasksim.metrics``;
- ``notebook, torch first``: nothing set; ``import torch`` before tasksim (the policy can no longer
  be applied: libgomp reads it once, when torch loads).

The cases alternate over ``--rounds`` rounds so load from other processes hits them alike; the
ratio notebook / cli is the target (<= 1.2). ``--tree PATH`` runs another checkout (e.g. the
commit before a change) with the same driver, for a before / after in one run.

Run: ``python bench/library_entry.py [--quick] [--tree PATH ...] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_SNIPPET = r"""
import sys, time
sys.path.insert(0, {root!r})
if {torch_first}:
    import torch  # noqa: F401
import numpy as np
a = np.random.default_rng(0).standard_normal((800, 800))
(a @ a).sum()  # numpy's BLAS threads are up
import tasksim.metrics as M
import torch
g = torch.Generator().manual_seed(0)
x = torch.randn({n}, {d}, generator=g)
y = torch.arange({n}) % {c}
M.logme(x, y)
best = float("inf")
for _ in range({repeat}):
    t0 = time.perf_counter()
    M.logme(x, y)
    best = min(best, time.perf_counter() - t0)
print(best)
"""

CASES = {"cli": {"env": {"OMP_WAIT_POLICY": "PASSIVE"}, "torch_first": False},
         "notebook": {"env": {}, "torch_first": False},
         "notebook, torch first": {"env": {}, "torch_first": True}}


def _clean_env() -> dict[str, str]:
    drop = ("OMP_", "MKL_", "OPENBLAS_", "GOTO_", "PYTHONPATH")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


def time_case(tree: Path, case: str, n: int, d: int, c: int, repeat: int) -> float:
    spec = CASES[case]
    code = _SNIPPET.format(root=str(tree), torch_first=spec["torch_first"], n=n, d=d, c=c, repeat=repeat)
    env = {**_clean_env(), **spec["env"]}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd="/", capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="N=4000, D=512 instead of N=10k, D=1024")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tree", type=Path, action="append", default=[], help="another checkout to time as well")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    n, d, c = (4000, 512, 10) if args.quick else (10_000, 1024, 10)
    trees = [ROOT, *[t.resolve() for t in args.tree]]
    times: dict[str, dict[str, list[float]]] = {str(t): {k: [] for k in CASES} for t in trees}
    for _ in range(args.rounds):
        for tree in trees:
            for case in CASES:
                times[str(tree)][case].append(time_case(tree, case, n, d, c, args.repeat))
    print(f"LogME N={n} D={d} C={c} float32, best of {args.repeat} per process, {args.rounds} rounds; "
          f"load average {os.getloadavg()[0]:.1f}\n")
    print("| tree | case | best (s) | median (s) | best / best cli |")
    print("| --- | --- | --- | --- | --- |")
    for tree in trees:
        row = times[str(tree)]
        cli = min(row["cli"])
        for case, values in row.items():
            print(f"| {tree.name} | {case} | {min(values):.3f} | {statistics.median(values):.3f} | "
                  f"{min(values) / cli:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"n": n, "d": d, "c": c, "times": times}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
