"""Transfer experiments: a recommendation tested by budgeted fine-tuning trials.

A *trial* is one source x one fine-tuning strategy x one seed on the labelled production rows:
the source's own model (TorchScript / torch.export, safetensors with the architecture registry,
the packaged MiniLM or another sentence-transformers model; a dataset-only source: the head the
profile stage fitted on its data) gets a new linear head for the target's classes and is trained
with the strategy's parameters unfrozen, early-stopped on validation accuracy, and scored by
accuracy on the held-out test rows.

    run_experiment(config)
      1. refuse without labelled rows of >= 2 classes (``ExperimentError``, with the reason);
      2. the prediction: the last recorded decision (else a ranking computed now): its order of
         the sources and its advised strategy; candidates = the deployed source + the top k;
      3. a stratified train / validation / test split, fixed for the experiment (its hash recorded);
      4. load each candidate's model (a missing, pickled or untrainable one is marked failed with
         its reason; the others go on); a budget too small for one trial is refused (``BudgetError``);
      5. preregistration, in the store, before any trial: predicted order, advised strategy,
         hypotheses, split hash, budget, seeds, code version;
      6. trials in rounds of seeds (round 1: every source x strategy once), each written to the store
         as it ends; a trial whose loss turns NaN/Inf or diverges is recorded failed and the others go
         on; trials past the wall-time or trial budget are recorded skipped;
      7. the outcome: per source the best strategy's mean test accuracy over seeds, the weighted
         Kendall tau between the predicted composite and the outcome, whether the advised strategy was
         best or within 1 point (0.01 accuracy) of it, and the verdict: ``validated`` when the
         recommended source is the best candidate or within 1 point of it, ``overturned`` when it is
         not, ``inconclusive`` when none of its trials succeeded.

Strategies (``STRATEGIES``): ``linear_probe`` (body frozen, head only), ``lp_ft`` (linear probe,
then everything at the low rate; Kumar et al., ICLR 2022), ``surgical_first`` / ``_middle`` /
``_last`` (one third of the model's blocks + head; Lee et al., ICLR 2023), ``full``, ``lora``
(rank-8 adapters on the attention projections, peft; transformer encoders only, else not
applicable). Blocks come from the model's named children (``parameter_blocks``). The body runs in
eval mode (batch-norm statistics and dropout fixed), so a frozen block is truly frozen.

An experiment killed mid-run (kill -9) leaves its preregistration and whole trials only (one
transaction each); the next run marks it ``interrupted``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tasksim.config import STRATEGIES, Config
from tasksim.errors import SourceError, TasksimError

__all__ = [
    "STRATEGIES",
    "BudgetError",
    "ExperimentError",
    "ExperimentResult",
    "Split",
    "TrainableModel",
    "TrialResult",
    "TrialSpec",
    "code_version",
    "gate_switch",
    "mark_interrupted",
    "parameter_blocks",
    "run_experiment",
    "run_trial",
    "stratified_split",
    "summarise_trials",
    "weighted_tau",
]

log = logging.getLogger(__name__)

ONE_POINT = 0.01
"""'Within 1 point': one percentage point of test accuracy."""
HEAD_LR = 1e-2  # the new head, body frozen (linear probe and the first phase of LP-FT)
# The new head trains at the same rate whatever else trains with it (and in LP-FT's probe phase): at
# 1e-3 a fresh head was under-trained with few rows (4 steps an epoch on 100 rows), which handicapped
# every fine-tuning strategy against the linear probe (bench/advice_benchmark.py; docs/decisions.md).
FT_HEAD_LR = HEAD_LR
BODY_LR = {"lp_ft": 1e-4, "surgical_first": 3e-4, "surgical_middle": 3e-4, "surgical_last": 3e-4, "full": 1e-4,
           "lora": 1e-3, "linear_probe": HEAD_LR}
WEIGHT_DECAY = 1e-4
DIVERGENCE_FACTOR = 50.0
"""A trial whose training loss exceeds this multiple of its first loss (or turns NaN/Inf) diverged."""
LORA_RANK = 8
MIN_CLASS_ROWS = 3  # one row per part of the split
# the recommendation's plan names -> the strategy that trains the same parameters
_PLAN_STRATEGY = {"head_refit": "linear_probe"}


class ExperimentError(TasksimError):
    """An experiment cannot run (no labelled rows, one class, another experiment running...)."""


class BudgetError(ExperimentError):
    """The configured budget is too small for one trial."""


class TrialDiverged(TasksimError):
    """A trial's loss turned NaN/Inf or diverged."""


# -- the split ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Split:
    """Stratified train / validation / test row indices into the labelled rows, fixed per experiment."""

    train: tuple[int, ...]
    val: tuple[int, ...]
    test: tuple[int, ...]
    classes: tuple[str, ...]
    targets: tuple[int, ...]  # class index per labelled row
    hash: str
    left_out: dict[str, int] = field(default_factory=dict)  # class -> rows, classes too small to split

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "validation": len(self.val), "test": len(self.test)}


def stratified_split(labels: Sequence[str], shares: tuple[float, float, float], seed: int,
                     data_key: str = "") -> Split:
    """Split per class (each class with >= ``MIN_CLASS_ROWS`` rows gets one row in every part at
    least); smaller classes are left out and named. Raises ``ExperimentError`` with no labelled rows
    or fewer than two classes to split."""
    if not labels:
        raise ExperimentError("no labelled rows in the production window: an experiment needs labelled rows "
                              "(production.label_column) to fine-tune on")
    by_class: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    left_out = {c: len(rows) for c, rows in sorted(by_class.items()) if len(rows) < MIN_CLASS_ROWS}
    kept = sorted(c for c in by_class if c not in left_out)
    if len(by_class) < 2:
        raise ExperimentError(f"the labelled rows have a single class ({next(iter(by_class))!r}, {len(labels)} "
                              "rows): fine-tuning needs at least two classes")
    if len(kept) < 2:
        raise ExperimentError(f"fewer than two classes have {MIN_CLASS_ROWS} labelled rows (train, validation, "
                              f"test need one each): rows per class {dict(sorted((c, len(r)) for c, r in by_class.items()))}")
    gen = torch.Generator().manual_seed(seed)
    train: list[int] = []
    val: list[int] = []
    test: list[int] = []
    for c in kept:
        rows = by_class[c]
        order = [rows[i] for i in torch.randperm(len(rows), generator=gen).tolist()]
        n_val = max(1, round(shares[1] * len(rows)))
        n_test = max(1, round(shares[2] * len(rows)))
        n_train = len(rows) - n_val - n_test
        if n_train < 1:
            n_train, n_val, n_test = 1, 1, len(rows) - 2
        train += order[:n_train]
        val += order[n_train:n_train + n_val]
        test += order[n_train + n_val:]
    index = {c: i for i, c in enumerate(kept)}
    targets = tuple(index.get(v, -1) for v in labels)
    parts = (tuple(sorted(train)), tuple(sorted(val)), tuple(sorted(test)))
    digest = hashlib.sha256(json.dumps([data_key, kept, *parts], separators=(",", ":")).encode()).hexdigest()[:16]
    return Split(*parts, classes=tuple(kept), targets=targets, hash=digest, left_out=left_out)


# -- the models --------------------------------------------------------------------------------
def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _kind(module: nn.Module) -> str:
    return str(getattr(module, "original_name", None) or type(module).__name__)


def parameter_blocks(module: nn.Module) -> list[tuple[str, tuple[str, ...]]]:
    """The model's blocks, input to output: ``[(block name, parameter names)]``.

    From the named children holding parameters: the only block is split into its children, and so
    is a block that leads (through a chain of single children) to a ``ModuleList`` / ``Sequential`` of
    several (the repeated layers of a transformer or an MLP), until none does. A module's own
    parameters (not in a child) form a block of their own, first. MiniLM: the embeddings, the six
    layers, the pooler."""

    def split(prefix: str, m: nn.Module) -> list[tuple[str, nn.Module | None, tuple[str, ...]]]:
        own = tuple(prefix + n for n, _ in m.named_parameters(recurse=False))
        kids = [(prefix + n, c) for n, c in m.named_children() if _count(c) > 0]
        out: list[tuple[str, nn.Module | None, tuple[str, ...]]] = [(prefix + "(own)", None, own)] if own else []
        return out + [(n, c, ()) for n, c in kids]

    def leads_to_layers(m: nn.Module) -> bool:
        while True:
            kids = [c for _, c in m.named_children() if _count(c) > 0]
            if isinstance(m, (nn.ModuleList, nn.Sequential)) and len(kids) >= 2:
                return True
            if len(kids) != 1 or any(True for _ in m.named_parameters(recurse=False)):
                return False
            m = kids[0]

    def names(prefix: str, m: nn.Module) -> tuple[str, ...]:
        return tuple(f"{prefix}.{n}" for n, _ in m.named_parameters())

    blocks = split("", module)
    for _ in range(64):
        changed = False
        new: list[tuple[str, nn.Module | None, tuple[str, ...]]] = []
        for name, m, own in blocks:
            if m is not None and (len(blocks) == 1 or leads_to_layers(m)):
                new += split(name + ".", m)
                changed = True
            else:
                new.append((name, m, own))
        blocks = new
        if not changed:
            break
    return [(name, own if m is None else names(name, m)) for name, m, own in blocks]


def _is_transformer(module: nn.Module) -> bool:
    return any("attention" in _kind(m).lower() or "attention" in n.lower().rsplit(".", 1)[-1]
               for n, m in module.named_modules())


def _lora_targets(module: nn.Module) -> list[str]:
    """Linear layers inside attention modules (query / key / value / output projections)."""
    return [n for n, m in module.named_modules() if isinstance(m, nn.Linear) and "attention" in n.lower()]


Forward = Callable[[nn.Module, torch.Tensor], torch.Tensor]


class TrainableModel:
    """A source's own model made trainable: the module (its weights restored before every trial),
    the forward over labelled rows (row indices -> (n, D) features), its blocks, and whether it is a
    transformer (LoRA applies)."""

    def __init__(self, source: str, module: nn.Module, forward: Forward, device: torch.device, *,
                 description: str) -> None:
        self.source = source
        self.module = module.to(device).eval()
        self.forward = forward
        self.device = device
        self.description = description
        self.initial = {k: v.detach().clone() for k, v in self.module.state_dict().items()}
        self.blocks = parameter_blocks(self.module)
        self.transformer = _is_transformer(self.module)
        self.parameters = _count(self.module)
        self._frozen: torch.Tensor | None = None
        self.reuse_frozen_prefix = True  # False: every forward runs the whole model (the reference path)
        self._prefix: dict[tuple[str, int], tuple[list[torch.Tensor], bool, bool]] = {}

    def reset(self) -> nn.Module:
        self.module.load_state_dict(self.initial)
        for p in self.module.parameters():
            p.requires_grad_(False)
        return self.module.eval()

    def frozen_features(self, rows: int, batch_size: int) -> torch.Tensor:
        """The untouched model's features of every labelled row (computed once, for linear probes)."""
        if self._frozen is None:
            module = self.reset()
            with torch.no_grad():
                self._frozen = torch.cat([self.forward(module, torch.arange(i, min(i + batch_size, rows)))
                                          for i in range(0, rows, batch_size)]).float()
        return self._frozen

    def frozen_prefix(self, trained: set[str], rows: int, batch_size: int) -> Forward | None:
        """A forward that reuses the frozen leading layers' outputs, or None where it does not apply.

        Applies when the first block holding a trained parameter lies in child ``n`` of a
        ``ModuleList`` or ``Sequential`` (a transformer's or an MLP's repeated layers, a CNN's
        ``nn.Sequential`` of conv blocks), the block before it lies in an earlier child of the same
        container, and every block before it is frozen (``surgical_middle`` / ``_last``): the untouched
        model's output of child ``n - 1`` is computed once per row (per split, kept for every seed) and
        fed to the trained layers in place of running the frozen ones again. The layers run as before
        on the same values (a transformer's rows cropped or zero-padded to the batch's length: padded
        positions are masked, as they are in the full forward), so the trial's math is the same;
        floating-point sums may differ in the last bits (the cached rows were computed in other
        batches). The module stays in eval mode as in every trial (batch norm uses its running
        statistics), so a frozen block's output does not depend on the batch it ran in."""
        if not self.reuse_frozen_prefix or not trained:
            return None
        first = next((i for i, (_, params) in enumerate(self.blocks) if set(params) & trained), 0)
        if first < 1 or any(set(params) & trained for _, params in self.blocks[:first]):
            return None
        before, after = self.blocks[first - 1][0].split("."), self.blocks[first][0].split(".")
        k = 0  # the first part of the two names that differs: the children of their common container
        while k < min(len(before), len(after)) and before[k] == after[k]:
            k += 1
        if k >= min(len(before), len(after)) or not (before[k].isdigit() and after[k].isdigit()):
            return None
        n = int(after[k])
        if not 0 <= int(before[k]) < n:
            return None
        container = ".".join(after[:k])
        try:
            layers = self.module.get_submodule(container)
        except AttributeError:
            return None
        if not isinstance(layers, (nn.ModuleList, nn.Sequential)):
            return None
        key = (container, n)
        if key not in self._prefix:
            self._prefix[key] = self._prefix_outputs(layers, n, rows, batch_size)
        cached, as_tuple, pad = self._prefix[key]
        forward = self.forward

        def prefix_forward(module: nn.Module, idx: torch.Tensor) -> torch.Tensor:
            target = module.get_submodule(container)
            saved = [target[i] for i in range(n)]
            for i in range(n - 1):
                target[i] = _Pass(as_tuple)
            target[n - 1] = _Cached(cached, idx, as_tuple, pad)
            try:
                return forward(module, idx)
            finally:
                for i, m in enumerate(saved):
                    target[i] = m

        return prefix_forward

    def _prefix_outputs(self, layers: nn.ModuleList | nn.Sequential, n: int, rows: int,
                        batch_size: int) -> tuple[list[torch.Tensor], bool, bool]:
        """The untouched model's output of ``layers[n - 1]`` per row (the layers after it are not run),
        whether it is a tuple, and whether it keeps its input's shape (a transformer layer's rows:
        cropped or padded to each batch's sequence length)."""
        module = self.reset()
        outputs: list[torch.Tensor] = []
        kind: list[bool] = []
        same_shape: list[bool] = []

        def hook(_m: nn.Module, args: Any, kwargs: Any, out: Any) -> None:
            hidden = out[0] if isinstance(out, tuple) else out
            kind.append(isinstance(out, tuple))
            given = args[0] if args else kwargs.get("hidden_states", kwargs.get("input"))
            same_shape.append(isinstance(given, torch.Tensor) and given.shape == hidden.shape)
            outputs.extend(hidden.detach())
            raise _StopForward

        handle = layers[n - 1].register_forward_hook(hook, with_kwargs=True)
        try:
            with torch.no_grad():
                for i in range(0, rows, batch_size):
                    try:
                        self.forward(module, torch.arange(i, min(i + batch_size, rows)))
                    except _StopForward:
                        pass  # the hook stops the forward once the layer's output is kept
        finally:
            handle.remove()
        return outputs, bool(kind and kind[0]), bool(same_shape and same_shape[0])

    def applicable(self, strategy: str) -> str | None:
        """None when the strategy applies to this model, else why not."""
        if strategy == "linear_probe":
            return None
        if self.parameters == 0:
            return "the model has no trainable parameters"
        if strategy.startswith("surgical_") and len(self.blocks) < 3:
            return f"the model has {len(self.blocks)} block(s); surgical fine-tuning needs at least 3"
        if strategy == "lora":
            if not self.transformer:
                return "LoRA adapters apply to transformer encoders only"
            if not _lora_targets(self.module):
                return "no linear attention projections to adapt"
        return None

    def surgical_parameters(self, where: str) -> set[str]:
        """Parameters of the first, middle or last third of the blocks."""
        n = len(self.blocks)
        third = max(1, math.ceil(n / 3))
        chosen = {"first": self.blocks[:third], "middle": self.blocks[third:n - third] or self.blocks[third:third + 1],
                  "last": self.blocks[n - third:]}[where]
        return {p for _, params in chosen for p in params}


class _StopForward(Exception):
    """Raised by the prefix hook to end a forward once the frozen layers' output is kept."""


class _Pass(nn.Module):
    """A frozen layer skipped: its input passes through (the cached layer after it ignores it)."""

    def __init__(self, as_tuple: bool) -> None:
        super().__init__()
        self.as_tuple = as_tuple

    def forward(self, hidden: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        return (hidden,) if self.as_tuple else hidden


class _Cached(nn.Module):
    """The last frozen layer: returns its cached output for the batch's rows; where the layer keeps
    its input's shape (``pad``: a transformer layer), each row cropped or zero-padded along the
    sequence to the batch's length (positions past a row's tokens are padding)."""

    def __init__(self, cached: list[torch.Tensor], idx: torch.Tensor, as_tuple: bool, pad: bool) -> None:
        super().__init__()
        self.cached, self.idx, self.as_tuple, self.pad = cached, idx, as_tuple, pad

    def forward(self, hidden: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        shape = tuple(hidden.shape[1:])
        rows = []
        for i in self.idx.tolist():
            row = self.cached[i]
            if self.pad and tuple(row.shape) != shape and row.dim() >= 1:
                row = row[: shape[0]]
                if row.shape[0] < shape[0]:
                    row = torch.cat([row, row.new_zeros((shape[0] - row.shape[0], *row.shape[1:]))])
            rows.append(row)
        out = torch.stack(rows).to(hidden.device, hidden.dtype)
        return (out,) if self.as_tuple else out


class _HeadBody(nn.Module):
    """A dataset-only source's model: the hidden layer of the head fitted on its data (``heads.py``)."""

    def __init__(self, weights: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.register_buffer("mean", weights["mean"].detach().clone().float())
        self.register_buffer("scale", weights["scale"].detach().clone().float())
        self.hidden = nn.Linear(weights["w1"].shape[1], weights["w1"].shape[0])
        with torch.no_grad():
            self.hidden.weight.copy_(weights["w1"])
            self.hidden.bias.copy_(weights["b1"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.hidden((x - self.mean) / self.scale))


def _tensor_forward(inputs: torch.Tensor, device: torch.device, dtype: torch.dtype = torch.float32) -> Forward:
    from tasksim._encoding import _first_tensor

    def forward(module: nn.Module, idx: torch.Tensor) -> torch.Tensor:
        out = _first_tensor(module(inputs[idx].to(device, dtype)))
        if out is None:
            raise TasksimError(f"the model returned {type(out).__name__}, expected a tensor")
        return out.reshape(len(idx), -1).float()

    return forward


def _text_forward(texts: list[str], device: torch.device) -> Forward:
    def forward(module: nn.Module, idx: torch.Tensor) -> torch.Tensor:
        tokenize = getattr(module, "preprocess", None) or module.tokenize  # type: ignore[operator]
        features = tokenize([texts[i] for i in idx.tolist()])
        features = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}
        return module(features)["sentence_embedding"].float()

    return forward


# -- one trial ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrialSpec:
    """One trial's full description (every hyperparameter is recorded with its outcome)."""

    source: str
    strategy: str
    seed: int
    learning_rate: float  # the body's (for linear_probe: the head's)
    head_learning_rate: float
    weight_decay: float
    max_epochs: int
    patience: int
    batch_size: int

    def hyperparameters(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in ("source", "strategy", "seed")}


@dataclass(frozen=True)
class TrialResult:
    """A trial's outcome: ``status`` ok | failed | not_applicable | skipped; ``score`` = test accuracy."""

    spec: TrialSpec
    status: str
    score: float | None = None
    val_score: float | None = None
    epochs: int = 0
    best_epoch: int | None = None
    seconds: float = 0.0
    trainable_parameters: int = 0
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.spec.source, "strategy": self.spec.strategy, "seed": self.spec.seed,
                "status": self.status, "score": self.score, "val_score": self.val_score, "epochs": self.epochs,
                "best_epoch": self.best_epoch, "seconds": round(self.seconds, 3),
                "trainable_parameters": self.trainable_parameters, "error": self.error,
                "hyperparameters": self.spec.hyperparameters()}


def _accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y).float().mean()) if len(y) else float("nan")


def _check_loss(loss: torch.Tensor, first: float | None, epoch: int, step: int) -> float:
    value = float(loss.detach())
    if not math.isfinite(value):
        raise TrialDiverged(f"the training loss became {value} at epoch {epoch + 1}, step {step + 1}")
    if first is not None and value > DIVERGENCE_FACTOR * max(first, 1e-3):
        raise TrialDiverged(f"the training loss diverged at epoch {epoch + 1}, step {step + 1}: {value:.4g} "
                            f"> {DIVERGENCE_FACTOR:g} x its first value {first:.4g}")
    return value


def _fit(spec: TrialSpec, head: nn.Linear, features: Callable[[torch.Tensor, bool], torch.Tensor],
         body_params: list[nn.Parameter], split: Split, y: torch.Tensor, *, head_lr: float,
         deadline: float | None) -> tuple[float, float, int, int]:
    """Train ``head`` (and ``body_params``) with early stopping on validation accuracy; restore the
    best epoch. Returns (validation accuracy, test accuracy, epochs run, best epoch)."""
    device = head.weight.device
    train = torch.tensor(split.train)
    val, test = torch.tensor(split.val), torch.tensor(split.test)
    groups = [{"params": list(head.parameters()), "lr": head_lr}]
    if body_params:
        groups.append({"params": body_params, "lr": spec.learning_rate})
    opt = torch.optim.AdamW(groups, weight_decay=spec.weight_decay)
    gen = torch.Generator().manual_seed(spec.seed)
    trained = [*head.parameters(), *body_params]

    def evaluate(idx: torch.Tensor) -> tuple[float, float]:
        with torch.no_grad():
            logits = head(features(idx, False))
            target = y[idx].to(device)
            return _accuracy(logits, target), float(nn.functional.cross_entropy(logits, target))

    best = (-1.0, math.inf)
    best_state = [p.detach().clone() for p in trained]
    best_epoch, stale, first, epoch = 0, 0, None, -1
    for epoch in range(spec.max_epochs):
        order = train[torch.randperm(len(train), generator=gen)]
        for step, i in enumerate(range(0, len(order), spec.batch_size)):
            idx = order[i: i + spec.batch_size]
            loss = nn.functional.cross_entropy(head(features(idx, True)), y[idx].to(device))
            value = _check_loss(loss, first, epoch, step)
            first = value if first is None else first
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        acc, vloss = evaluate(val)
        if not math.isfinite(vloss):
            raise TrialDiverged(f"the validation loss became {vloss} at epoch {epoch + 1}")
        if (acc, -vloss) > (best[0], -best[1]):
            best, best_epoch, stale = (acc, vloss), epoch + 1, 0
            best_state = [p.detach().clone() for p in trained]
        else:
            stale += 1
            if stale >= spec.patience:
                break
        if deadline is not None and time.monotonic() > deadline:
            log.info("trial %s/%s seed %d: stopped at epoch %d by the wall-time budget", spec.source, spec.strategy,
                     spec.seed, epoch + 1)
            break
    with torch.no_grad():
        for p, saved in zip(trained, best_state):
            p.copy_(saved)
    return best[0], evaluate(test)[0], epoch + 1, best_epoch


def run_trial(model: TrainableModel, spec: TrialSpec, split: Split, deadline: float | None = None) -> TrialResult:
    """Train one source x strategy x seed; failures (divergence, a model error) become a failed result."""
    started = time.perf_counter()
    why_not = model.applicable(spec.strategy)
    if why_not is not None:
        return TrialResult(spec, "not_applicable", error=why_not)
    torch.manual_seed(spec.seed)
    y = torch.tensor(split.targets)
    rows = len(split.targets)
    try:
        with torch.enable_grad():
            frozen = model.frozen_features(rows, max(spec.batch_size, 64)).to(model.device)
            head = nn.Linear(frozen.shape[1], len(split.classes)).to(model.device)
            module = model.reset()
            probe = spec.strategy in ("linear_probe", "lp_ft")
            if probe:  # the head alone, on the frozen features
                head_lr = spec.learning_rate if spec.strategy == "linear_probe" else spec.head_learning_rate
                val_acc, test_acc, epochs, best_epoch = _fit(
                    spec, head, lambda idx, _train: frozen[idx], [], split, y, head_lr=head_lr, deadline=deadline)
                trainable = sum(p.numel() for p in head.parameters())
            if spec.strategy != "linear_probe":
                if spec.strategy == "lora":
                    from peft import LoraConfig, inject_adapter_in_model

                    module = copy.deepcopy(module)
                    module = inject_adapter_in_model(
                        LoraConfig(r=LORA_RANK, lora_alpha=2 * LORA_RANK, lora_dropout=0.0,
                                   target_modules=_lora_targets(module)), module).to(model.device).eval()
                    names = {n for n, _ in module.named_parameters() if "lora_" in n}
                elif spec.strategy.startswith("surgical_"):
                    names = model.surgical_parameters(spec.strategy.removeprefix("surgical_"))
                else:  # full, lp_ft's second phase
                    names = {n for n, _ in module.named_parameters()}
                # surgical_middle / _last: the frozen leading layers' outputs, computed once per split
                # (before the trained parameters are marked: computing them resets the module)
                prefix = (model.frozen_prefix(names, rows, max(spec.batch_size, 64))
                          if spec.strategy.startswith("surgical_") else None)
                forward = prefix or model.forward
                body = []
                for n, p in module.named_parameters():
                    p.requires_grad_(n in names)
                    if n in names:
                        body.append(p)

                def features(idx: torch.Tensor, train: bool, module: nn.Module = module) -> torch.Tensor:
                    if train:
                        return forward(module, idx)
                    with torch.no_grad():
                        return forward(module, idx)

                head_lr = spec.learning_rate if spec.strategy == "lp_ft" else spec.head_learning_rate
                val_acc, test_acc, epochs2, best_epoch = _fit(spec, head, features, body, split, y, head_lr=head_lr,
                                                              deadline=deadline)
                epochs = epochs2 + (epochs if probe else 0)
                trainable = sum(p.numel() for p in body) + sum(p.numel() for p in head.parameters())
    except TrialDiverged as exc:
        return TrialResult(spec, "failed", error=str(exc), seconds=time.perf_counter() - started)
    except Exception as exc:  # one trial's failure is recorded; the experiment goes on
        from tasksim._encoding import _describe

        log.warning("trial %s/%s seed %d failed", spec.source, spec.strategy, spec.seed, exc_info=exc)
        return TrialResult(spec, "failed", error=_describe(exc), seconds=time.perf_counter() - started)
    finally:
        model.reset()
    return TrialResult(spec, "ok", score=test_acc, val_score=val_acc, epochs=epochs, best_epoch=best_epoch,
                       seconds=time.perf_counter() - started, trainable_parameters=trainable)


# -- the outcome -------------------------------------------------------------------------------
def weighted_tau(predicted: dict[str, float], outcome: dict[str, float]) -> float | None:
    """Weighted Kendall tau (hyperbolic weights: agreement at the top counts most) between the
    predicted composite and the outcome, over sources with both; None with fewer than two or ties only."""
    from scipy.stats import weightedtau

    common = sorted(set(predicted) & set(outcome))
    if len(common) < 2:
        return None
    x = [predicted[s] for s in common]
    y = [outcome[s] for s in common]
    if len(set(x)) < 2 or len(set(y)) < 2:
        return None
    tau = float(weightedtau(x, y).statistic)
    return tau if math.isfinite(tau) else None


def summarise_trials(trials: Sequence[TrialResult]) -> dict[str, dict[str, float]]:
    """Mean test accuracy over seeds per source and strategy (successful trials only)."""
    scores: dict[str, dict[str, list[float]]] = {}
    for t in trials:
        if t.status == "ok" and t.score is not None:
            scores.setdefault(t.spec.source, {}).setdefault(t.spec.strategy, []).append(t.score)
    return {s: {k: sum(v) / len(v) for k, v in by.items()} for s, by in scores.items()}


@dataclass(frozen=True)
class ExperimentResult:
    """What one experiment found (``to_dict()``: the JSON of ``tasksim experiment --format json``)."""

    experiment_id: int | None
    status: str  # finished | failed
    verdict: str  # validated | overturned | inconclusive
    deployed_source: str
    recommended_source: str
    advised_strategy: str
    predicted_order: tuple[str, ...]
    outcome_order: tuple[str, ...]
    tau: float | None
    source_scores: dict[str, float]
    strategy_scores: dict[str, dict[str, float]]
    best_strategy: str | None
    advised_best: bool
    advised_within_one_point: bool
    split_hash: str
    seeds: int
    trials: tuple[TrialResult, ...]
    failed_sources: dict[str, str]
    code_version: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "trials"}
        out["predicted_order"] = list(self.predicted_order)
        out["outcome_order"] = list(self.outcome_order)
        out["trials"] = [t.to_dict() for t in self.trials]
        return out


def _outcome(trials: Sequence[TrialResult], predicted: dict[str, float], recommended: str,
             advised: str) -> dict[str, Any]:
    scores = summarise_trials(trials)
    per_source = {s: max(by.values()) for s, by in scores.items()}
    order = tuple(sorted(per_source, key=lambda s: (-per_source[s], s)))
    mine = scores.get(recommended, {})
    best_strategy = max(mine, key=lambda k: (mine[k], k == advised)) if mine else None
    advised_score = mine.get(advised)
    best_score = mine.get(best_strategy) if best_strategy else None
    advised_best = advised_score is not None and best_score is not None and advised_score >= best_score
    within = advised_score is not None and best_score is not None and best_score - advised_score <= ONE_POINT + 1e-12
    if recommended not in per_source:
        verdict = "inconclusive"
    elif per_source[recommended] >= max(per_source.values()) - ONE_POINT - 1e-12:
        verdict = "validated"
    else:
        verdict = "overturned"
    return {"strategy_scores": scores, "source_scores": per_source, "outcome_order": order,
            "tau": weighted_tau(predicted, per_source), "best_strategy": best_strategy, "advised_best": advised_best,
            "advised_within_one_point": within, "verdict": verdict}


# -- the experiment ----------------------------------------------------------------------------
def code_version() -> str:
    """``tasksim.__version__``, plus the git commit when tasksim runs from a checkout."""
    from tasksim import __version__

    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+git.{sha}" if sha else __version__


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def mark_interrupted(store: Any, *, stale_after: float, now: float | None = None) -> list[int]:
    """Give every experiment left without an outcome by a dead process (same host: its pid is gone;
    another host: older than ``stale_after`` seconds) the outcome ``interrupted``; return their ids.
    Raises ``ExperimentError`` when one is still running."""
    now = time.time() if now is None else now
    host = socket.gethostname()
    marked = []
    for e in store.open_experiments():
        same_host = e["host"] == host
        dead = (same_host and (e["pid"] == os.getpid() or not _alive(e["pid"]))) or (
            not same_host and now - e["created_at"] > stale_after)
        if not dead:
            raise ExperimentError(f"experiment {e['id']} is still running (pid {e['pid']} on {e['host']}); "
                                  "wait for it to finish")
        trials = len(store.experiment(e["id"])["trials"])
        store.finish_experiment(e["id"], status="interrupted", verdict=None, tau=None, finished_at=now,
                                outcome={"reason": "the process running it stopped before it finished "
                                                   f"(pid {e['pid']} on {e['host']})", "trials_recorded": trials})
        log.warning("experiment %d was interrupted (%d trials recorded); marked interrupted", e["id"], trials)
        marked.append(e["id"])
    return marked


@dataclass(frozen=True)
class _Prediction:
    deployed: str
    recommended: str
    action: str
    advised: str
    plan: dict[str, Any] | None
    scores: dict[str, float]  # composite score per ranked source
    order: tuple[str, ...]
    source: str  # where the prediction came from
    contributions: dict[str, dict[str, float]] = field(default_factory=dict)  # per source, per measure


def _prediction(config: Config, cycle: Any, sampled: Any) -> _Prediction:
    """The last recorded decision, else a ranking and recommendation computed now."""
    decisions = cycle.store.decisions(limit=1)
    if decisions and decisions[0].get("ranking"):
        d = decisions[0]
        ranking = d["ranking"]
        plan = d.get("fine_tune")
        origin = f"decision of cycle {d.get('cycle_id')}"
    else:
        features = cycle.embed(sampled)
        profiles = cycle.profile(sampled, features)
        rank = cycle.rank(profiles, sampled)
        if rank is None:
            raise ExperimentError("no source could be ranked against the current window: there is no prediction "
                                  "to test")
        rec = cycle.recommend(rank, profiles, sampled, None)
        d = rec.to_dict()
        ranking = rank.entries_to_dicts()
        plan = d.get("fine_tune")
        origin = "ranking computed now (no decision recorded yet)"
    recommended = d.get("recommended_source") or config.deployed_source
    strategy = (plan or {}).get("strategy") or "linear_probe"
    return _Prediction(deployed=config.deployed_source, recommended=recommended, action=d.get("action", "keep"),
                       advised=_PLAN_STRATEGY.get(strategy, strategy), plan=plan,
                       scores={e["source"]: float(e["score"]) for e in ranking if e.get("score") is not None},
                       order=tuple(e["source"] for e in ranking), source=origin,
                       contributions={e["source"]: {k: float(v) for k, v in (e.get("contributions") or {}).items()
                                                    if isinstance(v, (int, float))}
                                      for e in ranking if e.get("source")})


def _load_model(config: Config, name: str, cycle: Any, table: Any, features: Callable[[], torch.Tensor]) -> TrainableModel:
    """The source's own model, trainable (raises ``SourceError`` with the reason it cannot be)."""
    from tasksim.embed import build_encoder

    source = config.source(name)
    device = cycle.device
    if source.access in config.ranking.excluded_access:
        raise SourceError(name, f"access is {source.access!r}")
    if source.encoder is not None:
        enc: Any = build_encoder(source.encoder, device=device, source=name)
        kind = source.encoder.kind
        if kind in ("torchscript", "safetensors"):
            if not isinstance(enc.module, nn.Module):
                raise SourceError(name, f"its {kind} model is not a torch module")
            try:
                inputs = enc._inputs(table, config.production)
            except TasksimError as exc:
                raise SourceError(name, f"cannot read the production rows as its inputs: {exc}") from exc
            return TrainableModel(name, enc.module, _tensor_forward(inputs, device, enc.dtype), device,
                                  description=f"{kind} model {source.encoder.path}")
        if kind == "text":
            column = config.production.text_column
            if not column:
                raise SourceError(name, "its text model needs production.text_column")
            texts = [str(v) for v in table.column(column).to_pylist()]
            return TrainableModel(name, enc.model, _text_forward(texts, device), device,
                                  description=f"text model {enc.name}")
        raise SourceError(name, f"its encoder (kind {kind!r}) has no trainable parameters")
    # a dataset-only source: the head the profile stage fits on its data is its model
    from tasksim.heads import load_or_fit_head
    from tasksim.profile import Target, _labels, _Profiler
    from tasksim.sample import load_source

    target = features()
    profiler = _Profiler(config, Target(table, target, None), cycle.encoder, cycle.cache, device)
    data = load_source(source, config.sampling)
    labels = source.named_labels(_labels(data, source.label_column))
    if not labels or any(v is None for v in labels) or len(set(labels)) < 2:
        raise SourceError(name, "a dataset-only source needs labels of at least two classes to have a model "
                                "(its fitted head) to fine-tune")
    shared = profiler.encode_source(source, data).to(device)
    head = load_or_fit_head(profiler.heads_dir, profiler.head_key(source, data), shared, labels,
                            seed=config.sampling.seed)
    return TrainableModel(name, _HeadBody(head.weights), _tensor_forward(target.cpu(), device), device,
                          description="the head fitted on its data (shared encoder features)")


def _plan_trials(config: Config, candidates: Sequence[str], advised: str, seeds: int) -> list[TrialSpec]:
    e = config.experiment
    strategies = [advised] + [s for s in e.strategies if s != advised] if advised in e.strategies else list(e.strategies)
    specs = []
    for seed in range(seeds):
        for source in candidates:
            for strategy in strategies:
                lr = e.learning_rates.get(strategy, BODY_LR[strategy])
                specs.append(TrialSpec(source, strategy, config.sampling.seed + seed, lr, FT_HEAD_LR, WEIGHT_DECAY,
                                       e.max_epochs, e.patience, e.batch_size))
    return specs


TrialStep = Callable[..., Any]


def _direct(name: str, fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


def run_experiment(config: Config, *, trigger: str = "manual", now: datetime | None = None,
                   step: TrialStep | None = None, on_trial: Callable[[TrialResult], None] | None = None,
                   store: Any = None, map_step: Callable[[list[tuple[str, Callable[..., Any], tuple[Any, ...]]]],
                                                        list[Any]] | None = None,
                   workers: int = 1) -> ExperimentResult:
    """Run one experiment (module docstring); everything it decides is in the store.

    ``step(name, fn, *args)`` runs one trial (``flows/experiment.py``: a Prefect task);
    ``map_step([(name, fn, args), ...])`` instead runs a whole round of seeds at once and returns
    the results in order (the flow submits them to its task runner, e.g. Dask, ``workers`` at a
    time); the trials and their results are the same either way. ``on_trial`` is called after each
    recorded trial."""
    from tasksim.cycle import Cycle, _labels_of

    step = step or _direct
    started = time.time()
    clock0 = time.monotonic()
    budget = config.experiment.budget.total_seconds()
    deadline = clock0 + budget
    cycle = Cycle(config, now=now, store=store)
    try:
        mark_interrupted(cycle.store, stale_after=2 * budget + 600)
        sampled = cycle.sample()
        labels_all = _labels_of(sampled.window, config.production.label_column)
        rows = [i for i, v in enumerate(labels_all or []) if v is not None]
        if not rows:
            raise ExperimentError(f"no labelled rows in the production window {sampled.start} .. {sampled.end}"
                                  + ("" if config.production.label_column else
                                     " (production.label_column is not set)")
                                  + ": an experiment fine-tunes on labelled rows")
        from tasksim.sample import table_fingerprint

        table = sampled.window.table.take(rows)
        labels = [str(v) for v in config.production.named_labels([labels_all[i] for i in rows])]  # type: ignore[index]
        e = config.experiment
        split = stratified_split(labels, e.split, config.sampling.seed, table_fingerprint(table))
        if e.max_trials < 1:
            raise BudgetError("experiment.max_trials is 0: the budget is too small for one trial")
        prediction = _prediction(config, cycle, sampled)
        ranked = [s for s in prediction.order if s in {c.name for c in config.sources}]
        candidates = list(dict.fromkeys([prediction.deployed, prediction.recommended, *ranked[:e.top_k]]))

        shared: list[torch.Tensor] = []

        def target_features() -> torch.Tensor:
            if not shared:
                shared.append(cycle.embed(sampled).current_features[torch.tensor(rows)])
            return shared[0]

        models: dict[str, TrainableModel] = {}
        failed: dict[str, str] = {}
        probe_seconds = 0.0
        for name in candidates:
            try:
                model = _load_model(config, name, cycle, table, target_features)
                t0 = time.perf_counter()
                model.frozen_features(len(labels), max(e.batch_size, 64))
                probe_seconds = max(probe_seconds, time.perf_counter() - t0)
                models[name] = model
            except SourceError as exc:
                failed[name] = exc.reason
            except TasksimError as exc:
                failed[name] = str(exc)
            except Exception as exc:  # one source's model must not stop the experiment
                from tasksim._encoding import _describe

                log.warning("source %s: cannot load its model for training", name, exc_info=exc)
                failed[name] = f"cannot train its model ({_describe(exc)})"
        for name, why in failed.items():
            log.warning("experiment: source %s cannot be trained: %s", name, why)
        # one trial needs at least a forward and backward pass over the rows (~3 forwards) per epoch
        one_trial = 3 * probe_seconds * len(split.train) / max(1, len(labels))
        spent = time.monotonic() - clock0
        if models and spent + one_trial > budget:
            raise BudgetError(f"experiment.budget {budget:g}s is too small for one trial: preparing took {spent:.1f}s "
                              f"and one epoch of one trial over {len(split.train)} training rows takes about "
                              f"{one_trial:.1f}s; raise experiment.budget to at least {math.ceil(spent + 2 * one_trial)}s")
        pairs = sum(1 for m in models.values() for s in e.strategies if m.applicable(s) is None)
        seeds = e.seeds if pairs and e.max_trials >= pairs * e.seeds else 1
        specs = _plan_trials(config, candidates, prediction.advised, seeds)
        version = code_version()
        from tasksim.config import config_hash

        hypotheses = [
            (f"H1: the predicted order {list(prediction.order)} agrees with the fine-tuning outcome of the "
             "candidates (weighted Kendall tau > 0)"),
            (f"H2: {prediction.recommended!r} ({prediction.action}) reaches the best test accuracy among the "
             f"candidates {candidates}, or within {ONE_POINT * 100:g} point of it"),
            (f"H3: the advised strategy {prediction.advised!r} is the best for {prediction.recommended!r}, or "
             f"within {ONE_POINT * 100:g} point of it"),
        ]
        prereg = {
            "predicted_order": list(prediction.order), "predicted_scores": prediction.scores,
            "prediction_from": prediction.source, "action": prediction.action, "candidates": candidates,
            "advised_strategy": prediction.advised, "fine_tune_plan": prediction.plan, "hypotheses": hypotheses,
            "predicted_contributions": {c: prediction.contributions.get(c, {}) for c in candidates},
            "split": {"hash": split.hash, **split.sizes(), "classes": list(split.classes),
                      "left_out_classes": split.left_out, "seed": config.sampling.seed, "shares": list(e.split)},
            "window": {"start": str(sampled.start), "end": str(sampled.end)},
            "budget_seconds": budget, "max_trials": e.max_trials, "seeds": seeds, "strategies": list(e.strategies),
            "trials_planned": len(specs), "failed_sources": failed, "code_version": version,
            "config_hash": config_hash(config), "device": str(cycle.device),
            "models": {n: {"description": m.description, "parameters": m.parameters, "blocks": len(m.blocks),
                           "transformer": m.transformer} for n, m in models.items()},
        }
        experiment_id = cycle.store.preregister_experiment(
            created_at=time.time(), trigger=trigger, deployed_source=prediction.deployed,
            recommended_source=prediction.recommended, advised_strategy=prediction.advised, split_hash=split.hash,
            preregistration=prereg, pid=os.getpid(), host=socket.gethostname())
        log.info("experiment %d preregistered: %d candidates, %d trials planned, advised %s for %s", experiment_id,
                 len(candidates), len(specs), prediction.advised, prediction.recommended)
        results: list[TrialResult] = []
        seq = 0

        def record(result: TrialResult) -> None:
            nonlocal seq
            cycle.store.record_trial(experiment_id, seq, source=result.spec.source, strategy=result.spec.strategy,
                                     seed=result.spec.seed, status=result.status, score=result.score,
                                     record={**result.to_dict(), "split_hash": split.hash, "code_version": version},
                                     created_at=time.time())
            seq += 1
            results.append(result)
            if on_trial is not None:
                on_trial(result)

        for name, why in failed.items():
            record(TrialResult(TrialSpec(name, "*", config.sampling.seed, 0.0, 0.0, 0.0, 0, 0, 0), "failed",
                               error=why))
        durations: list[float] = []
        run = 0
        rounds = [[sp for sp in specs if sp.seed == seed] for seed in dict.fromkeys(sp.seed for sp in specs)]
        for round_specs in rounds if map_step is not None else [[sp] for sp in specs]:
            calls: list[TrialSpec] = []
            planned = 0.0
            for spec in round_specs:
                if spec.source not in models:
                    continue
                model = models[spec.source]
                why_not = model.applicable(spec.strategy)
                if why_not is not None:
                    if spec.seed == config.sampling.seed:
                        record(TrialResult(spec, "not_applicable", error=why_not))
                    continue
                expected = sum(durations) / len(durations) if durations else one_trial
                left = deadline - time.monotonic()
                planned += expected / (workers if map_step is not None else 1)
                if run >= e.max_trials or left < planned:
                    why = (f"trial budget reached ({e.max_trials} trials)" if run >= e.max_trials else
                           f"wall-time budget: {max(left, 0):.1f}s left, a trial takes about {expected:.1f}s")
                    record(TrialResult(spec, "skipped", error=why))
                    continue
                run += 1
                calls.append(spec)
            if not calls:
                continue
            if map_step is None:
                (spec,) = calls
                outs = [step(f"trial-{spec.source}-{spec.strategy}-{spec.seed}", run_trial, models[spec.source],
                             spec, split, deadline)]
            else:  # one round of seeds at once on the task runner (each trial bounded by its epochs)
                outs = map_step([(f"trial-{sp.source}-{sp.strategy}-{sp.seed}", run_trial,
                                  (models[sp.source], sp, split, None)) for sp in calls])
            for out in outs:
                durations.append(out.seconds)
                record(out)
        out = _outcome(results, prediction.scores, prediction.recommended, prediction.advised)
        finished = time.time()
        result = ExperimentResult(
            experiment_id=experiment_id, status="finished", verdict=out["verdict"],
            deployed_source=prediction.deployed, recommended_source=prediction.recommended,
            advised_strategy=prediction.advised, predicted_order=tuple(c for c in prediction.order if c in candidates),
            outcome_order=out["outcome_order"], tau=out["tau"], source_scores=out["source_scores"],
            strategy_scores=out["strategy_scores"], best_strategy=out["best_strategy"],
            advised_best=out["advised_best"], advised_within_one_point=out["advised_within_one_point"],
            split_hash=split.hash, seeds=seeds, trials=tuple(results), failed_sources=failed, code_version=version,
            seconds=finished - started)
        from tasksim import weightfit

        summary = {k: v for k, v in result.to_dict().items() if k != "trials"}
        # how well each measure of the composite predicted the outcome (tasksim.weightfit)
        summary["measure_taus"] = weightfit.measure_taus(
            {c: prediction.contributions.get(c, {}) for c in candidates}, result.source_scores)
        cycle.store.finish_experiment(experiment_id, status="finished", verdict=result.verdict, tau=result.tau,
                                      outcome=summary, finished_at=finished)
        factors = weightfit.update_factors(cycle.store)
        if factors:
            log.info("composite weight factors from %d measure(s): %s", len(factors),
                     {m: round(v["factor"], 3) for m, v in factors.items()})
        log.info("experiment %d: %s (tau %s); outcome order %s", experiment_id, result.verdict,
                 "n/a" if result.tau is None else f"{result.tau:.2f}", list(result.outcome_order))
        return result
    finally:
        if store is None:
            cycle.store.close()


def gate_switch(recommendation: Any, store: Any, require_validation: bool) -> Any:
    """The switch rule with evidence: with ``require_validation``, a switch stands only when the
    newest finished experiment on that switch (same deployed and recommended source) validated it;
    otherwise the deployed source is kept and the rationale says why."""
    if not require_validation or recommendation.action != "switch" or recommendation.recommended_source is None:
        return recommendation
    evidence = store.latest_verdict(recommendation.deployed_source, recommendation.recommended_source)
    if evidence is not None and evidence["verdict"] == "validated":
        return replace(recommendation, rationale=recommendation.rationale
                       + f"; validated by experiment {evidence['experiment_id']}",
                       details={**recommendation.details, "validated_by": evidence["experiment_id"]})
    if evidence is None:
        why = (f"switching to {recommendation.recommended_source!r} awaits validation by an experiment "
               "(experiment.require_validation; run `tasksim experiment`)")
    else:
        why = (f"switching to {recommendation.recommended_source!r} was {evidence['verdict']} by experiment "
               f"{evidence['experiment_id']} (experiment.require_validation)")
    return replace(recommendation, recommended_source=recommendation.deployed_source, action="keep",
                   rationale=f"{why}; the proposal was: {recommendation.rationale}",
                   details={**recommendation.details, "switch_proposed": recommendation.recommended_source,
                            "experiment": None if evidence is None else evidence["experiment_id"]})
