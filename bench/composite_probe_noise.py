"""A noise estimate, and smoother scores, for the probe criteria of the composite (issue 12), on saved runs.

    python bench/composite_probe_noise.py docs/cpu/transfer_suite_four_2026-12-06.json.gz \
        --rows bench/.cache/probe_rows            # rebuilds each benchmark's views once (2-3 minutes here)

The composite's reliability weighting (``tasksim.rank``, ``mcda.reliability``) scales each
criterion's weight by the share of its spread across sources that is not sampling noise. The
re-scored transferability measures get their noise from the confidence bootstrap; the kNN and LDA
probes get none, so they are weighed as if noiseless, though at 10 rows a class their accuracies
are cross-validated on 60-260 rows. Two noise estimates for them, passed to ``rank_sources`` as the
``<criterion>_se`` measures it already reads:

- **binomial**: ``acc (1 - acc) / n``, each source on its own (session 13's try);
- **paired**: the sources are scored on the same rows, so what ranks them is how their per-row
  correctness differs, not its marginal spread: ``var_i(c_si - mean_s c_si) / n``, ``c_si`` 1 when
  source ``s``'s probe classifies row ``i`` (its kNN query, its LDA fold's test row) right.

And two smoother scores in their place (same criterion names, so the default's weights apply):
the kNN's **label agreement** (per query, the share of its 5 neighbours with its label, not the
vote's 0/1) and the LDA probe's **probability of the true class** (per row, the softmax of its
fold's discriminant scores, scikit-learn's ``predict_proba``), each also scored as a single measure.

The per-row values are rebuilt as ``transfer_suite.add_measures`` rebuilds the views (the same
windows, the sources retrained with 2 threads as the saved runs were), the correctness checked
against the saved accuracies (any difference: RuntimeError), and cached in ``--rows``. Neither
was adopted (docs/decisions.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import transfer_suite as suite

from tasksim.metrics._kernels import knn_neighbors, knn_vote, subsample_indices
from tasksim.metrics._validate import ACCUM_DTYPE, compute_dtype, prep_labels
from tasksim.metrics.transfer.extra import _fold_ids
from tasksim.metrics.transfer.lda import LDA_MAX_ROWS, _discriminant, _standardise, _stratified_rows

PROBES = {"knn_accuracy": "knn", "lda_probe_accuracy": "lda"}
NO_GUARD = "five + LDA probe, no guard; robust_z"


def _knn_rows(x: torch.Tensor, y: torch.Tensor, n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per query row (the product's kNN: k 5, cosine, 512 seeded queries): 1 if the vote classifies it
    right, and the share of its 5 neighbours with its label."""
    xx = x.unsqueeze(0)
    q = subsample_indices(xx.shape[1], 512, seed, xx.device)
    queries = torch.arange(xx.shape[1]) if q is None else q
    nb = knn_neighbors(xx, queries, 5, "cosine", compute_dtype(xx))
    correct = (knn_vote(y[nb], n_classes) == y[queries].unsqueeze(0))[0].numpy().astype(np.int8)
    agree = (y[nb] == y[queries].unsqueeze(0).unsqueeze(-1))[0].double().mean(-1).numpy()
    return correct, agree


def _lda_rows(x: torch.Tensor, y: torch.Tensor, n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of the probe's (sub)sample: 1 if its cross-validation fold's LDA classifies it right,
    and that LDA's probability of its label (softmax of the discriminant scores)."""
    sub = _stratified_rows(y, LDA_MAX_ROWS, seed)
    xf = x.unsqueeze(0).to(ACCUM_DTYPE)
    yf = y
    if sub is not None:
        xf, yf = xf[:, sub], y[sub]
    fold, folds = _fold_ids(yf, 5, seed)
    correct = torch.zeros(yf.shape[0], dtype=torch.int8)
    p_true = torch.zeros(yf.shape[0], dtype=torch.float64)
    for f in range(folds):
        test = fold == f
        if not bool(test.any()):
            continue
        xtr, xte = _standardise(xf[:, ~test], xf[:, test])
        w, bias, present = _discriminant(xtr, yf[~test], n_classes)
        proba = torch.softmax((xte @ w + bias.unsqueeze(1))[0], -1)
        cols = torch.tensor(present)
        correct[test] = (cols[proba.argmax(-1)] == yf[test]).to(torch.int8)
        full = torch.zeros(proba.shape[0], n_classes, dtype=proba.dtype)
        full[:, cols] = proba
        p_true[test] = full[torch.arange(proba.shape[0]), yf[test]]
    return correct.numpy(), p_true.numpy()


def probe_rows(bench_name: str, runs: Sequence[suite.TargetRun], p: suite.Protocol) -> dict[str, np.ndarray]:
    """``"target|window/draw|source|knn"`` (and ``|lda``) -> per-row correctness; ``|knn_soft``: the
    neighbours' label agreement, ``|lda_soft``: the probability of the label."""
    bench = suite.builders()[bench_name]("full", log=lambda s: None)
    by_name = {t.name: t for t in bench.targets}
    out: dict[str, np.ndarray] = {}
    for run in runs:
        tgt = by_name[run.target]
        _, draws = suite._draws(tgt, run.classes, p)
        views = {}
        for src in bench.sources:
            cached = tgt.pre_cache.get(src.name)
            views[src.name] = src.view(src.pre(tgt.x) if cached is None else cached)[0]
        for key, per_source in run.measures.items():
            w, d = (int(v) for v in key.split("/"))
            rows = torch.from_numpy(suite._window(draws[d], tgt.y, w))
            labels = [str(v) for v in tgt.y[rows.numpy()]]
            for src_name, ms in per_source.items():
                x = torch.as_tensor(views[src_name][rows])
                y, n_classes, _ = prep_labels(labels, x.shape[0], x.device)
                for measure, tag in PROBES.items():
                    if measure not in ms:
                        continue
                    got, soft = (_knn_rows if tag == "knn" else _lda_rows)(x, y, n_classes, p.seed)
                    if abs(float(got.mean()) - ms[measure]) > 1e-9:
                        raise RuntimeError(f"{run.target} {key} {src_name}: rebuilt {measure} {got.mean()} != saved "
                                           f"{ms[measure]}: the views differ from the saved run's")
                    out[f"{run.target}|{key}|{src_name}|{tag}"] = got
                    out[f"{run.target}|{key}|{src_name}|{tag}_soft"] = soft
    return out


def with_probe_noise(measures: Mapping[str, Mapping[str, float]], rows: Mapping[str, np.ndarray], target: str,
                     key: str, mode: str) -> dict[str, dict[str, float]]:
    """``measures`` with ``<probe>_se`` added for every source whose per-row correctness is known."""
    out = {s: dict(v) for s, v in measures.items()}
    for measure, tag in PROBES.items():
        have = [s for s in measures if f"{target}|{key}|{s}|{tag}" in rows]
        if len(have) < 2:
            continue
        correct = np.stack([rows[f"{target}|{key}|{s}|{tag}"] for s in have]).astype(np.float64)
        n = correct.shape[1]
        if mode == "binomial":
            acc = correct.mean(1)
            se = np.sqrt(acc * (1 - acc) / n)
        else:  # paired: each source's row-wise departure from the sources' mean
            se = np.sqrt((correct - correct.mean(0, keepdims=True)).var(1, ddof=1) / n)
        for s, e in zip(have, se):
            out[s][f"{measure}_se"] = float(e)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, help="the suite's saved runs (one file with every benchmark)")
    ap.add_argument("--rows", type=Path, required=True, help="folder for the per-row correctness (built once)")
    ap.add_argument("--threads", type=int, default=2, help="as the saved runs were computed (the sources retrain)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    runs = suite._load(args.runs)[0]
    benches = [b for b in suite.BENCHMARKS if any(r.benchmark == b for r in runs)]
    args.rows.mkdir(parents=True, exist_ok=True)
    rows: dict[str, np.ndarray] = {}
    for b in benches:
        path = args.rows / f"probe_rows_{b}.npz"
        if not path.exists():
            t0 = time.perf_counter()
            built = probe_rows(b, [r for r in runs if r.benchmark == b], suite.Protocol())
            np.savez_compressed(path, **built)
            print(f"{b}: per-row correctness rebuilt and checked ({time.perf_counter() - t0:.0f} s)", flush=True)
        with np.load(path) as z:
            rows.update({k: z[k] for k in z.files})
    configs = {"default": None, NO_GUARD: suite.config_family()[NO_GUARD]}
    table_rows = {}
    for cname, cfg in configs.items():
        for mode in ("none", "binomial", "paired"):
            table_rows[f"{cname}, probe noise: {mode}"] = (
                lambda run, key, cfg=cfg, mode=mode: suite.product_composite(
                    run.measures[key] if mode == "none" else with_probe_noise(run.measures[key], rows, run.target,
                                                                                key, mode),
                    run.rounds.get(key), cfg))
    def softened(measures: Mapping[str, Mapping[str, float]], target: str, key: str) -> dict[str, dict[str, float]]:
        out = {s: dict(v) for s, v in measures.items()}
        for source, values in out.items():
            for measure, tag in PROBES.items():
                soft = rows.get(f"{target}|{key}|{source}|{tag}_soft")
                if measure in values and soft is not None:
                    values[measure] = float(soft.mean())
        return out

    for measure in PROBES:
        table_rows[f"{measure} (single)"] = lambda run, key, m=measure: suite.oriented(run.measures[key], m)
        table_rows[f"{measure}, smoother score (single)"] = (
            lambda run, key, m=measure: suite.oriented(softened(run.measures[key], run.target, key), m))
    table_rows["default, smoother probe scores"] = (
        lambda run, key: suite.product_composite(softened(run.measures[key], run.target, key), run.rounds.get(key)))
    table = suite.tau_table(runs, table_rows)
    print("\n| composite | " + " | ".join(f"{b} (at 10 a class)" for b in benches) + " |")
    print("|---" * (len(benches) + 1) + "|")
    for name in table_rows:
        cells = [f"{suite.bench_mean(table, runs, b)[name]:.3f} ({suite.bench_mean(table, runs, b, 'wtau@10')[name]:.3f})"
                 for b in benches]
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
