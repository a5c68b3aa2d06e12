"""Speed-ups of ``bench/transfer_suite.py`` measured as ratios in one run (same process, same load):

- the EfficientNet heads' fine-tune: every (source, seed) trained one at a time
  (``finetune_correct``, the reference) against all seeds of a source as one stacked model
  (``finetune_logits_stacked``), CPU seconds and the largest test-logit difference;
- one window's product measures (``profile_arrays``, bootstrap on): each source's
  window-independent state recomputed (the suite before 2026-12-08) against handed in once
  (``source_memo``, as a cycle's ``SourceMemo`` does), CPU seconds and the largest measure difference.

    python bench/transfer_suite_speed.py --target digits-opencv --json docs/cpu/transfer_suite_speed_2026-12-08.json

Builds the images benchmark first (about a minute of CPU), which is not timed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import transfer_suite as ts
from suite_sources import build_images

from tasksim.metrics import catalog
from tasksim.profile import SourceArrays, SourceView, profile_arrays


def _cpu(fn: Callable[[], object]) -> tuple:
    c = time.process_time()
    out = fn()
    return out, time.process_time() - c


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="digits-opencv")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    bench = build_images("full", log=lambda s: None)
    tgt = next(t for t in bench.targets if t.name == args.target)
    p = ts.Protocol()
    classes = sorted(set(tgt.y.tolist()))
    y_all = torch.tensor([classes.index(v) for v in tgt.y])
    _, draws = ts._draws(tgt, classes, p)
    d0, test = torch.from_numpy(draws[0]), torch.from_numpy(tgt.test)
    out: dict[str, object] = {"target": args.target, "threads": args.threads, "machine": platform.platform(),
                              "load_start": os.getloadavg()}
    # --- fine-tune of the pointwise (EfficientNet) tops
    effs = [s for s in bench.sources if ts._pointwise_parts(s.top) is not None]
    pre = {s.name: (tgt.pre_cache.get(s.name) if s.name in tgt.pre_cache else s.pre(tgt.x)) for s in effs}
    ft = {}
    for s in effs:
        ref, ref_cpu = _cpu(lambda s=s: torch.stack([ts.finetune_logits(s.top, pre[s.name][d0], y_all[d0], pre[s.name][test],
                                                                        len(classes), seed, p) for seed in p.ft_seeds]))
        new, new_cpu = _cpu(lambda s=s: ts.finetune_logits_stacked([s.top], [pre[s.name][d0]], y_all[d0], [pre[s.name][test]],
                                                                  len(classes), p.ft_seeds, p)[0])
        # the reference again on inputs moved by 1e-7 (relative, float32 rounding's size): how far
        # float rounding alone carries this training (25 epochs of Adam with batch norm can amplify it)
        gen = torch.Generator().manual_seed(0)
        noisy = pre[s.name][d0] * (1 + 1e-7 * torch.randn(pre[s.name][d0].shape, generator=gen))
        pert = torch.stack([ts.finetune_logits(s.top, noisy, y_all[d0], pre[s.name][test], len(classes), seed, p)
                            for seed in p.ft_seeds])

        def acc(logits: torch.Tensor, yte: torch.Tensor = y_all[test]) -> list[float]:
            return (logits.argmax(-1) == yte).float().mean(1).tolist()
        ft[s.name] = {"one_at_a_time_cpu_s": ref_cpu, "stacked_cpu_s": new_cpu, "ratio": ref_cpu / new_cpu,
                      "max_abs_logit_diff": float((ref - new).abs().max()),
                      "test_predictions_equal": float((ref.argmax(-1) == new.argmax(-1)).float().mean()),
                      "accuracy_per_seed": {"one_at_a_time": acc(ref), "stacked": acc(new),
                                            "one_at_a_time_inputs_moved_1e-7": acc(pert)},
                      "reference_vs_moved_inputs": {"max_abs_logit_diff": float((ref - pert).abs().max()),
                                                    "test_predictions_equal":
                                                        float((ref.argmax(-1) == pert.argmax(-1)).float().mean())}}
        print(s.name, ft[s.name], flush=True)
    out["finetune"] = ft
    # --- one window's product measures, without and with the per-source memo
    views = {s.name: s.view(tgt.pre_cache[s.name] if s.name in tgt.pre_cache else s.pre(tgt.x)) for s in bench.sources}
    w = max(tgt.windows)
    rows = torch.from_numpy(ts._window(draws[0], tgt.y, w))
    labels = [str(v) for v in tgt.y[rows.numpy()]]

    def arrays(memo: dict | None) -> dict[str, SourceArrays]:
        return {s.name: SourceArrays(s.shared, s.labels,
                                     SourceView(views[s.name][0][rows], None if views[s.name][1] is None else views[s.name][1][rows]),
                                     missing_rate=0.0 if s.shared is not None else None,
                                     known=None if memo is None else memo[s.name][0],
                                     mmd_block=None if memo is None else memo[s.name][1]) for s in bench.sources}

    def measure(memo: dict | None) -> dict[str, dict[str, float]]:
        profs = profile_arrays(tgt.shared[rows], labels, arrays(memo), seed=p.seed, bootstrap_rounds=p.bootstrap_rounds,
                               bootstrap_measures=catalog.BOOTSTRAP_MEASURES)
        return {pr.source: pr.measures for pr in profs}
    plain, plain_cpu = _cpu(lambda: measure(None))
    memo, memo_cpu = _cpu(lambda: ts.source_memo(bench, p.seed))
    kept, kept_cpu = _cpu(lambda: measure(memo))
    gap = max(abs(plain[s][m] - kept[s][m]) / max(abs(plain[s][m]), 1e-12) for s in plain for m in plain[s])
    out["measures"] = {"window": w, "rows": len(labels), "recomputed_cpu_s": plain_cpu, "memo_once_cpu_s": memo_cpu,
                       "with_memo_cpu_s": kept_cpu, "ratio": plain_cpu / kept_cpu,
                       "largest_relative_measure_diff": gap,
                       "same_measures": sorted(plain[next(iter(plain))]) == sorted(kept[next(iter(kept))])}
    print(out["measures"], flush=True)
    out["load_end"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=float))
        print(f"saved {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
