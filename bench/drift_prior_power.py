"""How much power can any test of the label marginal have on the benchmark's label-prior ramps?

    python bench/drift_prior_power.py

The ramps of ``bench/drift_benchmark.py`` make some classes ``1 + 4 k`` times as frequent at strength
``k`` (k = 0.1, 0.2, 0.3 in the first three shifted windows: "found within 2 windows" means
found by 30% strength). For 100-row windows and a 1,000-row reference this prints the chi-square
noncentrality of the class-frequency difference and the power at a 0.1% false-alarm share of:

- one window at 30% (the per-window G test);
- an oracle that knows the onset and the linear ramp, weighting the three windows by strength
  (the best an accumulated omnibus test can do; the reference's error is shared, W^2 / n);
- an oracle that also knows which classes grow (a one-sided z test in that direction).

Class frequencies: Fashion-MNIST uniform over 10 classes (classes 0-2 heavy), Letter's 26 from
its data file (classes 0-4 heavy), Reuters R8's 8 from the benchmark's cached MiniLM embeddings
(classes 3-5 heavy; run ``bench/drift_benchmark.py --only text`` first).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import chi2, ncx2, norm

LETTER = Path("/usr/share/doc/opencv-doc/examples/data/letter-recognition.data")
TEXT = Path(os.environ.get("TASKSIM_BENCH_CACHE", Path.home() / ".cache" / "tasksim-bench")) / (
    "reuters-minilm-None-200-0.npz"
)
WINDOW, REFERENCE, ALPHA = 100, 1000, 0.001


def main() -> int:
    letters = pd.read_csv(LETTER, header=None)[0]
    cases = {
        "fashion-mnist": (np.full(10, 0.1), [0, 1, 2]),
        "letter": (letters.value_counts(normalize=True).sort_index().to_numpy(), [0, 1, 2, 3, 4]),
    }
    if TEXT.exists():
        with np.load(TEXT, allow_pickle=False) as saved:
            y = saved["y"]
        cases["reuters-r8 (MiniLM)"] = (np.bincount(y) / len(y), [3, 4, 5])
    print("| data | classes | one window at 30%: noncentrality, power | oracle onset + ramp | + oracle direction |")
    print("| --- | --- | --- | --- | --- |")
    for name, (p, heavy) in cases.items():
        k = len(p)

        def shifted(s: float, p: np.ndarray = p, heavy: list[int] = heavy) -> np.ndarray:
            w = np.ones(len(p))
            w[heavy] = 1 + 4 * s
            return w * p / (w * p).sum()

        def power(nc: float, df: int) -> float:
            return float(ncx2.sf(chi2.isf(ALPHA, df), df, nc))

        dev = shifted(0.3) - p
        nc_one = float((dev**2 / p).sum() / (1 / WINDOW + 1 / REFERENCE))
        s = np.array([0.1, 0.2, 0.3])
        w = s / s.sum()
        e = sum(wi * (shifted(si) - p) for wi, si in zip(w, s, strict=True))
        nc_or = float((e**2 / p).sum() / ((w**2).sum() / WINDOW + 1 / REFERENCE))
        direction = float(norm.sf(norm.isf(ALPHA) - np.sqrt(nc_or)))
        print(
            f"| {name} | {k} | {nc_one:.1f}, {power(nc_one, k - 1):.0%} | {nc_or:.1f}, {power(nc_or, k - 1):.0%} | "
            f"{direction:.0%} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
