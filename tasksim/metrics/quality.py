"""Profile dimensions beyond distance and transferability: label semantics, data quality, coverage.

Pure functions: numpy arrays or torch tensors (or plain label lists / a pyarrow table) in, Python
floats out. Feature inputs keep their device and are handled in float64 (``ACCUM_DTYPE``);
pairwise work is chunked so memory stays bounded (about ``_CHUNK_ELEMS`` float64 entries per
block) whatever the sample sizes. Invalid inputs raise :class:`tasksim.errors.MetricInputError`.

Directions (``tasksim.metrics.catalog``): ``label_exact_overlap``,
``label_semantic_overlap`` and ``coverage`` are higher-is-better; ``label_noise_rate``,
``duplicate_rate`` and ``missing_rate`` lower-is-better; ``granularity_ratio`` has no monotone
direction (0 = same number of classes; its absolute value measures the mismatch).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from tasksim.errors import MetricInputError
from tasksim.metrics._kernels import knn_search, stratified_folds
from tasksim.metrics._validate import ArrayLike, as_labels, check_same_length, features_on

__all__ = [
    "LABEL_NOISE_MAX_SAMPLES",
    "coverage",
    "duplicate_rate",
    "is_code_vocabulary",
    "label_noise_rate",
    "label_overlap",
    "missing_rate",
    "normalize_label_name",
]

# rows label_noise_rate estimates on by default (a seeded subsample above this)
LABEL_NOISE_MAX_SAMPLES = 5000


# Largest number of float64 distance entries materialised at once (2**22 * 8 B = 32 MiB).
_CHUNK_ELEMS = 2**22


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

def _knn(query: torch.Tensor, ref: torch.Tensor, k: int, *, exclude_self: bool = False
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest rows of ``ref`` for every row of ``query``: (distances, indices), ascending.

    Candidates come from the project's one kNN search (:func:`tasksim.metrics._kernels.knn_search`,
    Euclidean, blockwise with bounded memory); the returned distances are then recomputed exactly
    as ``||a - b||`` for the k winners, so identical rows are at distance exactly 0. With
    ``exclude_self`` (``query`` is ``ref``), row i never counts as its own neighbour (identical
    *other* rows still do).
    """
    nq, nr = query.shape[0], ref.shape[0]
    avail = nr - 1 if exclude_self else nr
    if k < 1 or k > avail:
        raise MetricInputError(f"need k in [1, {avail}] neighbours, got k={k}")
    self_rows = torch.arange(nq, device=query.device) if exclude_self else None
    best_i = knn_search(query.unsqueeze(0), ref.unsqueeze(0), k, "euclidean", query.dtype, self_rows=self_rows)[0]
    # exact distances for the winners, in sub-blocks of bounded size
    step = max(1, _CHUNK_ELEMS // max(1, k * query.shape[1]))
    exact = torch.empty(nq, k, dtype=query.dtype, device=query.device)
    for s0 in range(0, nq, step):
        diff = query[s0:s0 + step].unsqueeze(1) - ref[best_i[s0:s0 + step]]
        exact[s0:s0 + step] = torch.linalg.vector_norm(diff, dim=2)
    exact, order = torch.sort(exact, dim=1, stable=True)
    return exact, torch.gather(best_i, 1, order)


# --------------------------------------------------------------------------------------------
# Label semantics
# --------------------------------------------------------------------------------------------

def normalize_label_name(name: object) -> str:
    """Case- and whitespace-normalised class name: ``" ".join(str(name).split()).casefold()``."""
    return " ".join(str(name).split()).casefold()


def _class_names(labels: Sequence[object], name: str) -> dict[str, str]:
    """Normalised class name -> its first spelling in ``labels`` (stripped), in sorted key order."""
    if isinstance(labels, (str, bytes)):
        raise MetricInputError(f"{name}: expected a list of class names, got a single string")
    first: dict[str, str] = {}
    for v in labels:
        key = normalize_label_name(v)
        if not key:
            raise MetricInputError(f"{name}: empty class name {v!r}")
        first.setdefault(key, " ".join(str(v).split()))
    if not first:
        raise MetricInputError(f"{name}: no class names")
    return {k: first[k] for k in sorted(first)}


def is_code_vocabulary(names: Iterable[object]) -> bool:
    """True when every class name is an integer code (``"3"``, ``"-1"``, ``"07"``, ``4``, ``2.0``):
    such labels carry no meaning to compare by name."""
    seen = False
    for name in names:
        seen = True
        text = normalize_label_name(name)
        try:
            value = float(text)
        except ValueError:
            return False
        if not (math.isfinite(value) and value == int(value)):
            return False
    return seen


def label_overlap(source_labels: Sequence[str], target_labels: Sequence[str],
                  embed: Callable[[list[str]], torch.Tensor] | None = None,
                  threshold: float = 0.7) -> dict[str, float]:
    """How well the source's label vocabulary covers the target's classes.

    Inputs are class names or per-sample labels (repeats are ignored); names are compared after
    :func:`normalize_label_name`. With ``S`` / ``T`` the sets of normalised source / target class
    names:

    - ``label_exact_overlap = |T ∩ S| / |T|`` (1 when every target class exists in the source);
    - ``label_semantic_overlap`` (only when ``embed`` is given) ``= |{t in T : t in S or
      max_s cos(e(t), e(s)) >= threshold}| / |T|``, with ``e`` the supplied text encoder applied
      once to the source then target class names (first spelling seen, whitespace-collapsed):
      ``embed(names) -> (len(names), d)`` tensor. Exact matches always count, so it is >= the
      exact overlap; a zero embedding has cosine 0 with everything;
    - ``granularity_ratio = log2(|S| / |T|)``: > 0 when the source is finer-grained (more classes),
      < 0 coarser, 0 equal.

    The semantic match is the usual embedding-cosine matching of short texts (e.g. Sentence-BERT
    embeddings, Reimers & Gurevych, EMNLP 2019); ``threshold`` depends on the encoder.

    Integer class codes are not names: when either side's classes are all integers
    (:func:`is_code_vocabulary`; ``0..4`` says nothing about what the classes mean) the overlaps
    are left out and only the granularity is returned.
    """
    if not -1.0 <= float(threshold) <= 1.0:
        raise MetricInputError(f"threshold must be a cosine in [-1, 1], got {threshold!r}")
    src = _class_names(source_labels, "source_labels")
    tgt = _class_names(target_labels, "target_labels")
    if is_code_vocabulary(src) or is_code_vocabulary(tgt):
        return {"granularity_ratio": float(math.log2(len(src) / len(tgt)))}
    exact = np.array([t in src for t in tgt], dtype=bool)
    out = {"label_exact_overlap": float(exact.mean())}
    if embed is not None:
        names = list(src.values()) + list(tgt.values())
        emb = embed(names)
        emb = torch.as_tensor(emb.detach() if isinstance(emb, torch.Tensor) else np.asarray(emb))
        if emb.ndim != 2 or emb.shape[0] != len(names):
            raise MetricInputError(
                f"embed returned shape {tuple(emb.shape)} for {len(names)} names: expected (n_names, dims)")
        emb = emb.to(torch.float64)
        if not bool(torch.isfinite(emb).all()):
            raise MetricInputError("embed returned NaN or Inf")
        unit = torch.nn.functional.normalize(emb, dim=1)  # zero rows stay zero -> cosine 0
        cos = unit[len(src):] @ unit[:len(src)].T  # (|T|, |S|)
        sem = exact | (cos.max(dim=1).values >= float(threshold)).cpu().numpy()
        out["label_semantic_overlap"] = float(sem.mean())
    out["granularity_ratio"] = float(math.log2(len(src) / len(tgt)))
    return out


# --------------------------------------------------------------------------------------------
# Source data quality
# --------------------------------------------------------------------------------------------

def label_noise_rate(features: ArrayLike, labels: ArrayLike, folds: int = 5, seed: int = 0, *, k: int = 10,
                     method: Literal["disagreement", "confident_joint"] = "disagreement",
                     max_samples: int | None = LABEL_NOISE_MAX_SAMPLES) -> float:
    """Estimated share of wrong labels, from out-of-fold kNN predictions.

    Out-of-fold class probabilities: stratified ``folds``-fold CV (``stratified_folds``:
    each class, ascending, permuted by one ``np.random.default_rng(seed)`` and dealt
    round-robin); each held-out row gets the label shares among its ``k`` nearest training rows
    (Euclidean distance on the features as given: standardise first if columns have unrelated
    scales). Rows are first subsampled to ``max_samples`` (``default_rng(seed)``) if needed.

    - ``"disagreement"``: the share of rows whose label differs from the argmax prediction
      (ties go to the smallest class id, as in scikit-learn's ``KNeighborsClassifier``).
      Equals ``mean(cross_val_predict(KNeighborsClassifier(k), ...) != y)`` on the same folds.
    - ``"confident_joint"``: confident learning (Northcutt, Jiang & Chuang, JAIR 2021): per-class
      thresholds ``t_j = mean p(j|x)`` over the rows labelled j; a row labelled i is counted in
      ``C[i, j*]`` with ``j* = argmax_{j: p(j|x) >= t_j} p(j|x)`` (rows with no such j are not
      counted); rows of C are rescaled to the label counts and the result is the off-diagonal
      share ``1 - trace(C~) / sum(C~)``.

    Both measure label/neighbourhood disagreement: class overlap in the feature space (the Bayes
    error of kNN) reads as noise too, so the value is an upper-biased estimate of the noise rate
    unless classes are separable. On separable synthetic data with uniform label flips (tests):
    within 0.03 of the injected rate at 0 / 10 / 30 % noise.
    """
    folds = int(folds)
    k = int(k)
    if folds < 2:
        raise MetricInputError(f"folds must be >= 2, got {folds}")
    if k < 1:
        raise MetricInputError(f"k must be >= 1, got {k}")
    if method not in ("disagreement", "confident_joint"):
        raise MetricInputError(f"method must be 'disagreement' or 'confident_joint', got {method!r}")
    x = features_on(features, "features", None, min_rows=2)
    y, n_classes = as_labels(labels, "labels", device=x.device)
    check_same_length(x, y, ("features", "labels"))
    if n_classes < 2:
        raise MetricInputError(f"labels: need at least 2 classes, got {n_classes}")
    n = x.shape[0]
    if max_samples is not None and n > max_samples:
        keep = np.sort(np.random.default_rng(seed).permutation(n)[:max_samples])
        keep_t = torch.as_tensor(keep, device=x.device)
        x, y = x[keep_t], y[keep_t]
        n = x.shape[0]
    if n < 2 * folds:
        raise MetricInputError(f"label_noise_rate needs at least 2 * folds = {2 * folds} rows, got {n}")
    y_np = y.cpu().numpy()
    fold = torch.as_tensor(stratified_folds(y_np, folds, seed), device=x.device)
    probs = torch.zeros(n, n_classes, dtype=x.dtype, device=x.device)
    for f in range(folds):
        test = fold == f
        if not bool(test.any()):
            continue
        train = ~test
        kk = min(k, int(train.sum()))
        _, idx = _knn(x[test], x[train], kk)
        neigh = y[train][idx]  # (n_test, kk)
        votes = torch.zeros(neigh.shape[0], n_classes, dtype=x.dtype, device=x.device)
        votes.scatter_add_(1, neigh, torch.ones_like(neigh, dtype=x.dtype))
        probs[test] = votes / kk
    if method == "disagreement":
        return float((probs.argmax(dim=1) != y).to(x.dtype).mean())
    # confident joint
    onehot = torch.nn.functional.one_hot(y, n_classes).to(x.dtype)
    counts = onehot.sum(0)
    thresholds = (onehot * probs).sum(0) / counts
    above = probs >= thresholds.unsqueeze(0)
    masked = torch.where(above, probs, torch.full_like(probs, -1.0))
    assigned = masked.argmax(dim=1)
    counted = above.any(dim=1)
    joint = torch.zeros(n_classes, n_classes, dtype=x.dtype, device=x.device)
    joint.index_put_((y[counted], assigned[counted]), torch.ones(int(counted.sum()), dtype=x.dtype,
                                                                 device=x.device), accumulate=True)
    row = joint.sum(1, keepdim=True)  # > 0: the row of class i with the largest p(i|x) is counted
    calibrated = joint / row * counts.unsqueeze(1)
    return float(1.0 - torch.trace(calibrated) / calibrated.sum())


def duplicate_rate(features: ArrayLike, *, atol: float = 1e-6) -> float:
    """Share of rows that duplicate an earlier row: ``1 - (#distinct rows) / N``.

    Rows are compared after rounding every value to the grid of step ``atol``
    (``round(x / atol)``, half to even, as ``numpy.round``) and are hashed (BLAKE2b, 128 bit) block
    by block, so memory is one block plus one digest per distinct row. Two rows on the same grid
    point differ by at most ``atol`` per coordinate; two rows closer than ``atol`` can still land on
    adjacent grid points (rounding boundaries), so near-duplicates are caught approximately, exact
    duplicates always. ``atol=0`` compares the float64 values exactly (-0.0 == 0.0). A set
    concatenated with itself has rate >= 0.5 (exactly 0.5 if the set has no duplicates).
    """
    if not (atol >= 0.0 and math.isfinite(atol)):
        raise MetricInputError(f"atol must be a finite number >= 0, got {atol!r}")
    x = features_on(features, "features", None, min_rows=1)
    n, d = x.shape
    step = max(1, _CHUNK_ELEMS // max(1, d))
    seen: set[bytes] = set()
    width = d * 8
    for s0 in range(0, n, step):
        block = x[s0:s0 + step]
        q = torch.round(block / atol) if atol > 0 else block
        q = (q + 0.0).to(torch.float64).cpu().contiguous().numpy()  # + 0.0 turns -0.0 into 0.0
        buf = memoryview(q.tobytes())
        for i in range(q.shape[0]):
            seen.add(hashlib.blake2b(buf[i * width:(i + 1) * width], digest_size=16).digest())
    return float(1.0 - len(seen) / n)


def missing_rate(table: pa.Table, columns: Sequence[str] | None = None) -> float:
    """Share of missing cells over ``columns`` (all columns when None): nulls, plus NaN in floats.

    ``sum_c (nulls_c + NaNs_c) / (rows * len(columns))``; NaN is counted in floating-point columns
    only (a NaN inside a list/embedding cell does not make the cell missing).
    """
    if not isinstance(table, pa.Table):
        raise MetricInputError(f"missing_rate expects a pyarrow.Table, got {type(table).__name__}")
    if isinstance(columns, str):
        raise MetricInputError("columns: expected a list of column names, got a single string")
    cols = list(table.column_names if columns is None else columns)
    unknown = [c for c in cols if c not in table.column_names]
    if unknown:
        raise MetricInputError(f"columns {unknown} are not in the table (columns: {table.column_names})")
    if not cols or table.num_rows == 0:
        raise MetricInputError(f"no cells to check ({table.num_rows} rows, {len(cols)} columns)")
    missing = 0
    for c in cols:
        col = table.column(c)
        missing += col.null_count
        if pa.types.is_floating(col.type):
            missing += int(pc.sum(pc.is_nan(col)).as_py() or 0)  # is_nan(null) is null: not double-counted
    return float(missing / (table.num_rows * len(cols)))


# --------------------------------------------------------------------------------------------
# Coverage
# --------------------------------------------------------------------------------------------

def coverage(source_features: ArrayLike, target_features: ArrayLike, radius: float | None = None,
             k: int = 1) -> float:
    """Share of target samples with at least ``k`` source samples within ``radius`` (Euclidean).

    ``coverage = (1/M) sum_j 1[ d_k(t_j, S) <= r ]`` where ``d_k(t, S)`` is the distance from
    target sample t to its k-th nearest source sample. Default ``r`` (scale-free): the median over
    the target samples of the distance to their k-th nearest *other* target sample, i.e. the
    ball that typically holds k target neighbours must hold k source samples. With ``k=1`` a set
    covers itself fully (coverage 1); scaling both sets by c > 0 leaves the default-radius value
    unchanged. Duplicated target rows shrink the default radius (a duplicate is a neighbour at 0).

    Related: the k-NN-ball coverage of Naeem et al., "Reliable fidelity and diversity metrics for
    generative models", ICML 2020 (per-sample radii instead of one global radius).
    Cost: one chunked nearest-neighbour pass target x source (and target x target for the default
    radius); memory is bounded by ``_CHUNK_ELEMS`` entries per block.
    """
    k = int(k)
    if k < 1:
        raise MetricInputError(f"k must be >= 1, got {k}")
    dev = next((a.device for a in (target_features, source_features) if isinstance(a, torch.Tensor)), None)
    t = features_on(target_features, "target_features", device=dev, min_rows=1)
    s = features_on(source_features, "source_features", device=dev, min_rows=1)
    if s.shape[1] != t.shape[1]:
        raise MetricInputError(
            f"source_features has {s.shape[1]} features but target_features has {t.shape[1]}: widths must match")
    if s.shape[0] < k:
        raise MetricInputError(f"coverage with k={k} needs at least {k} source samples, got {s.shape[0]}")
    if radius is None:
        if t.shape[0] < k + 1:
            raise MetricInputError(
                f"the default radius with k={k} needs at least {k + 1} target samples, got {t.shape[0]}")
        d_tt, _ = _knn(t, t, k, exclude_self=True)
        kth = torch.sort(d_tt[:, k - 1]).values
        m = kth.shape[0]
        r = float((kth[(m - 1) // 2] + kth[m // 2]) / 2.0)  # median, numpy convention
    else:
        r = float(radius)
        if not (r >= 0.0 and math.isfinite(r)):
            raise MetricInputError(f"radius must be a finite number >= 0, got {radius!r}")
    d_ts, _ = _knn(t, s, k)
    return float((d_ts[:, k - 1] <= r).to(torch.float64).mean())
