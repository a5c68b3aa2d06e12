"""Advice benchmark: is the fine-tuning strategy tasksim advises the best one, measured by trials?

    python bench/advice_benchmark.py --quick             # 2 cores: a few minutes
    python bench/advice_benchmark.py --json out.json      # full size (more rows, epochs); a GPU helps

Data (no download): Fashion-MNIST from Debian ``dataset-fashion-mnist`` (/usr/share/datasets/
fashion-mnist). The source model is a small CNN (3 conv blocks, 64-d features) trained here on
clean images of classes 0-4. Scenarios (the target's labelled rows):

- ``noise``: classes 0-4 with Gaussian pixel noise (sd 0.5): an input-level shift;
- ``blur``: classes 0-4 blurred (5x5 box filter): an input-level shift;
- ``new-classes``: classes 5-9, clean: the label space changed (drift kind: label prior).

For each scenario the advice is ``tasksim.recommend.plan_fine_tuning`` fed what a cycle measures
for a source that ships its model with tapped layers: MMD² between source and target activations
after every block (``layer_mmd2:<block>``, input to output) and at the output, the label shift
(Jensen-Shannon of the label marginals), and the drift kind the scenario has (the drift stage's
verdict is benchmarked in bench/drift_benchmark.py; here it is given). Every strategy is then
fine-tuned with ``tasksim.experiment.run_trial`` (the code a ``tasksim experiment`` runs) with 3
seeds on one stratified split, and the advised strategy is compared with the best (mean test
accuracy over seeds; "within 1 point" = 0.01 accuracy). Two fixed baselines are reported alongside:
always ``linear_probe`` and always ``full``.

Not covered here (see docs/benchmarks.md): text with MiniLM, a domain-change scenario with
EfficientNet, and the tau between the pre-trial composite and trial outcomes over several sources.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tasksim.config import STRATEGIES
from tasksim.experiment import (
    _PLAN_STRATEGY,
    BODY_LR,
    FT_HEAD_LR,
    ONE_POINT,
    WEIGHT_DECAY,
    TrainableModel,
    TrialSpec,
    _tensor_forward,
    run_trial,
    stratified_split,
    summarise_trials,
)
from tasksim.metrics import label_shift, mmd2
from tasksim.recommend import plan_fine_tuning

FASHION = Path("/usr/share/datasets/fashion-mnist")


def load_fashion() -> tuple[torch.Tensor, torch.Tensor]:
    with gzip.open(FASHION / "train-images-idx3-ubyte.gz") as fh:
        x = np.frombuffer(fh.read(), dtype=np.uint8, offset=16).reshape(-1, 1, 28, 28).astype(np.float32) / 255.0
    with gzip.open(FASHION / "train-labels-idx1-ubyte.gz") as fh:
        y = np.frombuffer(fh.read(), dtype=np.uint8, offset=8).astype(np.int64)
    return torch.from_numpy(x), torch.from_numpy(y)


def cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def pretrain(x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    body = cnn()
    head = nn.Linear(64, int(y.max()) + 1)
    opt = torch.optim.Adam([*body.parameters(), *head.parameters()], lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(64):
            loss = nn.functional.cross_entropy(head(body(x[idx])), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        acc = float((head(body(x[:1000])).argmax(1) == y[:1000]).float().mean())
    print(f"source CNN: train accuracy {acc:.3f} on its own classes", file=sys.stderr)
    return body.eval()


def blur(x: torch.Tensor) -> torch.Tensor:
    return nn.functional.avg_pool2d(x, 5, stride=1, padding=2, count_include_pad=False)


def activations(body: nn.Sequential, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per block (the conv layers, input to output) and the output: flattened, spatially pooled."""
    out: dict[str, torch.Tensor] = {}
    h = x
    with torch.no_grad():
        for name, layer in body.named_children():
            h = layer(h)
            if isinstance(layer, nn.Conv2d):
                out[name] = nn.functional.adaptive_avg_pool2d(h, 4).flatten(1)
    out["output"] = h
    return out


def advice(body: nn.Sequential, source_x: torch.Tensor, source_y: torch.Tensor, target_x: torch.Tensor,
           target_y: torch.Tensor, drift_kind: str) -> tuple[str, dict[str, float], tuple[str, ...]]:
    src, tgt = activations(body, source_x), activations(body, target_x)
    measures = {f"layer_mmd2:{k}": mmd2(src[k], tgt[k]) for k in src}
    measures["mmd2"] = measures["layer_mmd2:output"]
    measures["label_shift"] = label_shift([str(v) for v in source_y.tolist()], [str(v) for v in target_y.tolist()])
    plan = plan_fine_tuning(measures, drift_kind=drift_kind, labelled_rows=len(target_y))
    return _PLAN_STRATEGY.get(plan.strategy, plan.strategy), measures, plan.reasons


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes for 2 CPU cores")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows, pre_rows, epochs, pre_epochs = (600, 3000, 12, 2) if args.quick else (3000, 20000, 30, 5)
    seeds = (0, 1, 2)
    x, y = load_fashion()
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(x), generator=gen)
    x, y = x[order], y[order]
    old, new = y < 5, y >= 5
    src_x, src_y = x[old][:pre_rows], y[old][:pre_rows]
    body = pretrain(src_x, src_y, pre_epochs).to(device)
    rest_old_x, rest_old_y = x[old][pre_rows:pre_rows + rows], y[old][pre_rows:pre_rows + rows]
    noise_gen = torch.Generator().manual_seed(1)
    scenarios = {
        "noise (input)": ((rest_old_x + 0.5 * torch.randn(rest_old_x.shape, generator=noise_gen)).clamp(0, 1),
                          rest_old_y, "input"),
        "blur (input)": (blur(rest_old_x), rest_old_y, "input"),
        "new-classes (label)": (x[new][:rows], y[new][:rows], "label_prior"),
    }
    report = []
    for name, (tx, ty, kind) in scenarios.items():
        advised, measures, reasons = advice(body.cpu(), src_x[:500], src_y[:500], tx[:500], ty[:500], kind)
        body.to(device)
        split = stratified_split([str(v) for v in ty.tolist()], (0.6, 0.2, 0.2), 0, name)
        model = TrainableModel("cnn", body, _tensor_forward(tx, device), device, description="source CNN")
        trials = []
        for strategy in STRATEGIES:
            for seed in seeds:
                spec = TrialSpec("cnn", strategy, seed, BODY_LR[strategy], FT_HEAD_LR, WEIGHT_DECAY, epochs, 3, 32)
                trials.append(run_trial(model, spec, split))
        scores = summarise_trials(trials).get("cnn", {})
        best = max(scores, key=scores.get)
        row = {"scenario": name, "drift_kind": kind, "advised": advised, "advised_score": scores.get(advised),
               "best": best, "best_score": scores[best],
               "advised_within_one_point": scores.get(advised, -1) >= scores[best] - ONE_POINT - 1e-12,
               "linear_probe_within_one_point": scores.get("linear_probe", -1) >= scores[best] - ONE_POINT - 1e-12,
               "full_within_one_point": scores.get("full", -1) >= scores[best] - ONE_POINT - 1e-12,
               "scores": scores, "measures": measures, "reasons": list(reasons),
               "not_applicable": sorted({t.spec.strategy for t in trials if t.status == "not_applicable"}),
               "failed": [t.to_dict() for t in trials if t.status == "failed"]}
        report.append(row)
        print(f"{name}: advised {advised} {scores.get(advised, float('nan')):.3f}, best {best} {scores[best]:.3f} "
              f"({time.perf_counter() - started:.0f}s)", file=sys.stderr)
    hits = sum(r["advised_within_one_point"] for r in report)
    print("\n| scenario | advised | advised acc. | best | best acc. | advised within 1 pt | "
          "always linear probe | always full |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in report:
        adv = r["advised_score"]
        print(f"| {r['scenario']} | {r['advised']} | {'-' if adv is None else f'{adv:.3f}'} | {r['best']} | "
              f"{r['best_score']:.3f} | {'yes' if r['advised_within_one_point'] else 'no'} | "
              f"{'yes' if r['linear_probe_within_one_point'] else 'no'} | {'yes' if r['full_within_one_point'] else 'no'} |")
    print(f"\nadvised strategy best or within 1 point in {hits} of {len(report)} scenarios; "
          f"always linear probe {sum(r['linear_probe_within_one_point'] for r in report)}, "
          f"always full {sum(r['full_within_one_point'] for r in report)}")
    print("\nmean test accuracy over 3 seeds per strategy:")
    for r in report:
        print(f"- {r['scenario']}: " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(r["scores"].items(),
                                                                                   key=lambda kv: -kv[1])))
    print(f"\n{time.perf_counter() - started:.0f}s on {device}, {torch.get_num_threads()} thread(s)")
    if args.json:
        args.json.write_text(json.dumps({"scenarios": report, "seconds": time.perf_counter() - started,
                                         "device": str(device)}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
