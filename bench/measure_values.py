"""Every public measure's value on fixed seeded inputs, as JSON: run it on two checkouts and diff to
prove a refactor changed no number.

    python bench/measure_values.py > after.json
    python bench/measure_values.py --tree /tmp/before > before.json
    python bench/measure_values.py --compare before.json after.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def values(tree: Path) -> dict:
    sys.path.insert(0, str(tree))
    import torch

    import tasksim.metrics as M
    try:
        from tasksim.metrics import quality as Q
    except ImportError:  # checkouts before the metrics split kept these in tasksim.criteria
        from tasksim import criteria as Q

    g = torch.Generator().manual_seed(0)
    n, d = 400, 24
    y = torch.arange(n) % 4
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    x[:, :4] += 2 * torch.nn.functional.one_hot(y, 4)
    x2 = torch.randn(300, d, generator=g, dtype=torch.float64) + 0.3
    y2 = torch.arange(300) % 3
    probs = torch.softmax(torch.randn(n, 5, generator=g, dtype=torch.float64), 1)
    lab, lab2 = [f"c{int(v)}" for v in y], [f"c{int(v)}" for v in y2]
    out: dict = {name: getattr(M, name)(x, y) for name in (
        "logme", "hscore", "hscore_regularized", "transrate", "gbc", "knn_accuracy", "nleep", "sfda", "parc",
        "linear_probe_accuracy")}
    out.update(leep=M.leep(probs, y), nce=M.nce(probs, y), profile=M.transferability_profile(x, y, source_probs=probs),
               many=M.profile_many(torch.stack([x, x * 0.5 + 1]), y, source_probs=torch.stack([probs, probs.flip(1)])),
               many_streamed=M.profile_many(torch.stack([x, x * 0.5 + 1]), y, max_memory_bytes=1, chunk_rows=37),
               mmd2=M.mmd2(x, x2), frechet=M.frechet_distance(x, x2),
               mmd_test=M.mmd_test(x[:100], x2[:100], permutations=50), domain_auc=M.domain_classifier_auc(x, x2),
               label_shift=M.label_shift(lab, lab2), otdd=M.otdd(x[:200, :6], y[:200], x2[:150, :6], y2[:150]),
               cka=M.linear_cka(x[:100], x[:100] ** 2), svcca=M.svcca(x[:100], x[:100, :10] * 2 + 1),
               coverage=Q.coverage(x2, x), duplicates=Q.duplicate_rate(torch.cat([x, x[:10]])),
               label_noise=Q.label_noise_rate(x, lab), overlap=Q.label_overlap(lab2, lab))
    return out


def _flat(o: object, prefix: str = ""):
    if isinstance(o, dict):
        for k, v in o.items():
            yield from _flat(v, f"{prefix}.{k}")
    elif isinstance(o, list):
        for i, v in enumerate(o):
            yield from _flat(v, f"{prefix}[{i}]")
    else:
        yield prefix, o


def compare(a: dict, b: dict) -> int:
    fa, fb = dict(_flat(a)), dict(_flat(b))
    if fa.keys() != fb.keys():
        print("different keys:", sorted(set(fa) ^ set(fb)))
        return 1
    worst = max((abs(fa[k] - fb[k]) / max(abs(fa[k]), 1e-300) if fa[k] else abs(fb[k])) for k in fa)
    print(f"{len(fa)} values, worst relative difference {worst:.3g}")
    return 0 if worst == 0 else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", type=Path, default=Path(__file__).resolve().parents[1])
    ap.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    args = ap.parse_args(argv)
    if args.compare:
        return compare(*(json.loads(p.read_text()) for p in args.compare))
    print(json.dumps(values(args.tree.resolve()), default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
