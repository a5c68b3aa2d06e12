"""Paired ramp delays of two ``drift_benchmark.py --ramp-repeats R --json`` records (same seed, so
the same windows: each ramp's streams draw from their own generators).

    python bench/drift_ramp_compare.py BEFORE.json AFTER.json [MORE_BEFORE.json MORE_AFTER.json ...]

Prints one Markdown row per ramp (delays before and after, medians, within 2 windows, how many
moved later or earlier) and the total within 2 windows; '-' is not found within the ramp's windows.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def _fmt(ds: list[int | None]) -> str:
    return ", ".join("-" if d is None else str(d) for d in ds)


def _median(ds: list[int | None]) -> str:
    vals = [np.inf if d is None else d for d in ds]
    m = float(np.median(vals))
    return "-" if not np.isfinite(m) else f"{m:g}"


def compare(before: dict, after: dict) -> tuple[list[str], int, int, int]:
    rows, within_b, within_a, total = [], 0, 0, 0
    for name, ramps in after["ramp_delays"].items():
        for ramp, a in ramps.items():
            b = before["ramp_delays"][name][ramp]
            wb = sum(d is not None and d <= 2 for d in b)
            wa = sum(d is not None and d <= 2 for d in a)
            key = lambda d: np.inf if d is None else d
            later = sum(key(y) > key(x) for x, y in zip(b, a, strict=True))
            earlier = sum(key(y) < key(x) for x, y in zip(b, a, strict=True))
            rows.append(
                f"| {name} | {ramp} | {_fmt(b)} | {_fmt(a)} | {_median(b)} -> {_median(a)} | "
                f"{wb}/{len(b)} -> {wa}/{len(a)} | {later} later, {earlier} earlier |"
            )
            within_b, within_a, total = within_b + wb, within_a + wa, total + len(a)
    return rows, within_b, within_a, total


def main(argv: list[str]) -> int:
    if len(argv) < 2 or len(argv) % 2:
        print(__doc__)
        return 2
    print("| data | ramp | before | after | median | within 2 | moved |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    wb = wa = n = 0
    for i in range(0, len(argv), 2):
        before, after = (json.loads(Path(p).read_text()) for p in argv[i : i + 2])
        rows, b, a, t = compare(before, after)
        print("\n".join(rows))
        wb, wa, n = wb + b, wa + a, n + t
    print(f"\nWithin 2 windows: {wb} of {n} before, {wa} of {n} after.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
