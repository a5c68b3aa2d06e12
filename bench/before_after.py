"""bench/metrics.py ratios before and after a change, measured in one run.

Runs each checkout's own ``bench/metrics.py`` (which imports the ``tasksim`` next to it) in
alternation, ``--rounds`` times, and prints the engine's ratios side by side (median over the
rounds) with every measure's best time. Example, with the commit before a refactor checked out in
a worktree:

    git worktree add --detach /tmp/before <commit>
    python bench/before_after.py /tmp/before --quick
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RATIOS = ("a_profile_over_logme", "b_numpy_thuml_over_tasksim_logme", "c_separate_over_profile_many",
          "c_separate_over_profile_many_streamed")


def run_tree(tree: Path, extra: list[str], out: Path) -> dict:
    subprocess.run([sys.executable, str(tree / "bench" / "metrics.py"), "--json", str(out), *extra],
                   cwd=tree, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("before", type=Path, help="checkout of the code before the change")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    extra = ["--quick"] if args.quick else []
    trees = {"before": args.before.resolve(), "after": ROOT}
    runs: dict[str, list[dict]] = {k: [] for k in trees}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for label, tree in trees.items():
                runs[label].append(run_tree(tree, extra, Path(tmp) / f"{label}-{r}.json"))
    print(f"bench/metrics.py {'--quick ' if args.quick else ''}x {args.rounds} rounds, alternating\n")
    print("| ratio | before (median) | after (median) |")
    print("| --- | --- | --- |")
    for key in RATIOS:
        vals = {k: statistics.median(run["ratios"][key] for run in v) for k, v in runs.items()}
        print(f"| {key} | {vals['before']:.2f} | {vals['after']:.2f} |")
    print("\n| measure | before best (s) | after best (s) |")
    print("| --- | --- | --- |")
    names = [m["measure"] for m in runs["after"][0]["measures"]]
    for name in names:
        best = {k: min(next(m["seconds"] for m in run["measures"] if m["measure"] == name) for run in v)
                for k, v in runs.items()}
        print(f"| {name} | {best['before']:.3f} | {best['after']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
