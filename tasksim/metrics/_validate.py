"""One input validation for every measure and stage: tensors, dtypes, labels; one error type
(:class:`tasksim.errors.MetricInputError`).

Measures accept numpy arrays or torch tensors. Inputs keep their device; decompositions and
covariances run in float64 (``ACCUM_DTYPE``) because float32 loses the small eigenvalues that
LogME, H-score and TransRate depend on.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from tasksim.errors import MetricInputError

__all__ = [
    "ACCUM_DTYPE",
    "ArrayLike",
    "as_features",
    "as_labels",
    "check_classes",
    "check_finite",
    "check_pooled_range",
    "check_same_length",
    "check_same_width",
    "compute_dtype",
    "feature_range",
    "features_on",
    "float64_features",
    "prep_labels",
    "raw_tensor",
    "target_device",
]

ACCUM_DTYPE = torch.float64
ArrayLike = Any  # numpy.ndarray | torch.Tensor | nested sequences


def as_features(x: ArrayLike, name: str = "features", *, dtype: torch.dtype = ACCUM_DTYPE,
                device: torch.device | None = None, min_rows: int = 2) -> torch.Tensor:
    """Return ``x`` as a 2-D finite tensor of ``dtype`` on its own device (or ``device``)."""
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if t.ndim == 1:
        t = t.unsqueeze(1)
    if t.ndim != 2:
        raise MetricInputError(f"{name}: expected a 2-D array (samples x dims), got shape {tuple(t.shape)}")
    if t.shape[0] < min_rows:
        raise MetricInputError(f"{name}: expected at least {min_rows} samples, got {t.shape[0]}")
    t = t.to(device=device if device is not None else t.device, dtype=dtype)
    check_finite(t, name)  # one sum; the per-entry test only to word the error (2 ms -> 0.1 ms on 500 x 384)
    return t


def as_labels(y: ArrayLike, name: str = "labels", *, device: torch.device | None = None) -> tuple[torch.Tensor, int]:
    """Remap arbitrary label ids (ints or strings) to contiguous ``0..C-1``; return (labels, C)."""
    if isinstance(y, torch.Tensor):
        arr = y.detach().cpu().numpy()
    else:
        arr = np.asarray(y)
    if arr.ndim != 1:
        raise MetricInputError(f"{name}: expected a 1-D array of labels, got shape {arr.shape}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise MetricInputError(f"{name}: labels contain NaN or Inf")
    if arr.dtype.kind == "O":
        missing = sum(1 for v in arr if v is None or (isinstance(v, float) and not math.isfinite(v)))
        if missing:
            raise MetricInputError(f"{name}: {missing} labels are missing (None or NaN); drop those rows first")
    try:
        _, inverse = np.unique(arr, return_inverse=True)
    except TypeError as exc:  # e.g. ints mixed with strings
        raise MetricInputError(f"{name}: labels must be of one comparable type (all ints or all strings): {exc}") from exc
    n_classes = int(inverse.max()) + 1 if inverse.size else 0
    dev = device if device is not None else (y.device if isinstance(y, torch.Tensor) else None)
    return torch.as_tensor(inverse.reshape(-1), dtype=torch.long, device=dev), n_classes


def check_same_length(a: torch.Tensor, b: torch.Tensor, names: tuple[str, str]) -> None:
    if a.shape[0] != b.shape[0]:
        raise MetricInputError(
            f"{names[0]} has {a.shape[0]} samples but {names[1]} has {b.shape[0]}: lengths must match"
        )


def check_classes(labels: torch.Tensor, n_classes: int, *, min_per_class: int = 1, name: str = "labels") -> torch.Tensor:
    """Raise unless there are >= 2 classes and each has ``min_per_class`` samples; return class counts."""
    if n_classes < 2:
        raise MetricInputError(f"{name}: need at least 2 classes, got {n_classes}")
    counts = torch.bincount(labels, minlength=n_classes)
    if int(counts.min()) < min_per_class:
        small = int((counts < min_per_class).sum())
        raise MetricInputError(
            f"{name}: {small} classes have fewer than {min_per_class} samples (each class needs {min_per_class})"
        )
    return counts




def raw_tensor(x: ArrayLike, name: str = "features") -> torch.Tensor:
    """``x`` as a torch tensor without copying (numpy shares memory); 2-D (1-D becomes a column)."""
    t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.ndim == 1:
        t = t.unsqueeze(1)
    if t.ndim != 2:
        raise MetricInputError(f"{name}: expected a 2-D array (samples x dims), got shape {tuple(t.shape)}")
    return t


def check_finite(t: torch.Tensor, name: str) -> None:
    """Raise unless every entry is finite: one reduction (any NaN/Inf makes the sum non-finite);
    the exact per-row count runs only to word the error (or when finite values overflow the sum)."""
    low = t.dtype in (torch.float16, torch.bfloat16)
    if t.is_floating_point() and not bool(torch.isfinite(t.sum(dtype=torch.float32) if low else t.sum())):
        bad = int((~torch.isfinite(t)).reshape(t.shape[0], -1).any(dim=1).sum()) if t.ndim else 1
        if bad:
            raise MetricInputError(f"{name}: {bad} rows contain NaN or Inf")


MAX_POOLED_RANGE = 1e15  # squared, summed over hundreds of dimensions: still far below float32's 3.4e38


def feature_range(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each dimension's (min, max) over the rows of a 2-D ``x`` with rows (``amin`` and ``amax``:
    4x faster here than ``aminmax`` over dim 0, 2.6 against 10.9 ms on 5000 x 384)."""
    return x.amin(0), x.amax(0)


def check_pooled_range(a: torch.Tensor, b: torch.Tensor, names: tuple[str, str], *,
                       limit: float = MAX_POOLED_RANGE,
                       b_range: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
    """Raise unless every feature dimension's range over both samples together is at most
    ``limit``. Pairwise distances run in the features' dtype (float32): a dimension spanning more
    (a raw epoch-nanosecond column is 1.7e18) overflows them or cancels every other dimension to
    zero, and a measure then fails with a message about its own arithmetic instead of the data.
    One min/max pass per side (``b_range``: :func:`feature_range` of ``b``, when the caller checks
    many ``a`` against one ``b``); samples of different widths are left to the measures to refuse."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or not a.shape[0] or not b.shape[0]:
        return
    lo_a, hi_a = feature_range(a)
    lo_b, hi_b = b_range if b_range is not None else feature_range(b)
    span = torch.maximum(hi_a, hi_b).double() - torch.minimum(lo_a, lo_b).double()
    worst = int(torch.argmax(torch.nan_to_num(span, nan=math.inf)))
    if not span[worst] <= limit:
        raise MetricInputError(
            f"feature dimension {worst} spans {float(span[worst]):.3g} over {names[0]} "
            f"({float(lo_a[worst]):.3g} .. {float(hi_a[worst]):.3g}) and {names[1]} "
            f"({float(lo_b[worst]):.3g} .. {float(hi_b[worst]):.3g}); expected at most {limit:.0e}, beyond which "
            "float32 distances overflow or lose every other dimension: rescale that input (the 'tabular' encoder "
            "standardises columns)")


def float64_features(raw: torch.Tensor, name: str = "features", min_rows: int = 2) -> torch.Tensor:
    """``raw`` (2-D) as a finite float64 tensor (copied only when the dtype differs)."""
    if raw.shape[0] < min_rows:
        raise MetricInputError(f"{name}: expected at least {min_rows} samples, got {raw.shape[0]}")
    check_finite(raw, name)
    return raw.to(ACCUM_DTYPE)


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """float64 inputs stay float64; every other dtype computes similarities in float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def prep_labels(labels: ArrayLike, n: int, device: torch.device, *, name: str = "labels",
                 min_per_class: int = 2) -> tuple[torch.Tensor, int, torch.Tensor]:
    y, c = as_labels(labels, name, device=device)
    if y.shape[0] != n:
        raise MetricInputError(f"features have {n} samples but {name} has {y.shape[0]}: lengths must match")
    counts = check_classes(y, c, min_per_class=min_per_class, name=name)
    return y, c, counts


def target_device(*arrays: ArrayLike) -> torch.device | None:
    """Device of the first torch tensor among ``arrays`` (numpy inputs follow it); None if none."""
    for a in arrays:
        if isinstance(a, torch.Tensor):
            return a.device
    return None


def features_on(x: ArrayLike, name: str, device: torch.device | None, min_rows: int = 2,
              dtype: torch.dtype = ACCUM_DTYPE) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        x = x.detach()
    return as_features(x, name, dtype=dtype, device=device, min_rows=min_rows)


def check_same_width(a: torch.Tensor, b: torch.Tensor, names: tuple[str, str]) -> None:
    if a.shape[1] != b.shape[1]:
        raise MetricInputError(
            f"{names[0]} has {a.shape[1]} features but {names[1]} has {b.shape[1]}: widths must match"
        )
