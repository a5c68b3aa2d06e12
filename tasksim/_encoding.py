"""Shared machinery of the encoders (``tasksim.embed``, ``tasksim.model_encoders``): the
``Encoder`` protocol, the base class, table-to-tensor conversion, fingerprints, output pooling and
layer taps.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, Protocol, runtime_checkable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import nn

from tasksim.config import EncoderConfig, InputColumns
from tasksim.errors import DataError, SourceError

__all__ = [
    "MAX_CATEGORIES",
    "Encoder",
    "table_to_tensor",
]

logger = logging.getLogger(__name__)


MAX_CATEGORIES = 32
"""Tabular encoder: most frequent categories kept per column; the rest share one 'other' slot."""

_TEXT_MIN_BATCH = 128
_PROGRESS_MIN_BATCHES = 20


@runtime_checkable
class Encoder(Protocol):
    """What the cycle needs from an encoder; see ``build_encoder``."""

    name: str
    dim: int | None

    @property
    def fingerprint(self) -> str: ...

    def fit(self, table: pa.Table, columns: InputColumns) -> None: ...

    def encode(self, table: pa.Table, columns: InputColumns) -> torch.Tensor: ...

    def encode_layers(self, table: pa.Table, columns: InputColumns) -> dict[str, torch.Tensor]: ...


def _fail(source: str | None, message: str) -> NoReturn:
    """Raise the right error type: SourceError for a named source, DataError otherwise."""
    if source is not None:
        raise SourceError(source, message)
    raise DataError(message)


def _first_line(exc: BaseException) -> str:
    """One line for an exception; for TorchScript tracebacks, the final error line."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if len(lines) > 1 and "TorchScript interpreter" in lines[0]:
        return lines[-1].strip().removeprefix("builtins.")
    return lines[0]


def _describe(exc: BaseException) -> str:
    """``Type: message`` on one line, without doubling a type the message already names (TorchScript
    errors end in ``RuntimeError: ...`` of their own)."""
    line = _first_line(exc)
    if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Warning): ", line):
        return line
    return f"{type(exc).__name__}: {line}"


def _as_array(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _column_matrix(table: pa.Table, name: str) -> np.ndarray:
    """One column as an (N, k) float64 matrix; raises DataError on bad types or values."""
    if name not in table.column_names:
        raise DataError(f"column {name!r} not found (columns are: {', '.join(table.column_names)})")
    arr = _as_array(table.column(name))
    t = arr.type
    n = len(arr)
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        if not (pa.types.is_floating(t.value_type) or pa.types.is_integer(t.value_type)):
            raise DataError(f"column {name!r} has type {t}; expected a list of numbers")
        if arr.null_count:
            raise DataError(f"column {name!r} has {arr.null_count} null rows; drop invalid rows first")
        lengths = np.asarray(pc.list_value_length(arr).to_numpy(zero_copy_only=False))
        width = int(lengths[0]) if n else (t.list_size if pa.types.is_fixed_size_list(t) else 0)
        if n and not (lengths == width).all():
            raise DataError(f"column {name!r} has lists of lengths {sorted(set(lengths.tolist()))[:5]}; "
                            "expected one length for every row")
        values = pc.list_flatten(arr)
        if values.null_count:
            raise DataError(f"column {name!r} has null values inside its lists")
        out = np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float64).reshape(n, width)
    elif pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_decimal(t) or pa.types.is_boolean(t):
        if arr.null_count:
            raise DataError(f"column {name!r} has {arr.null_count} null rows; drop invalid rows first")
        out = np.asarray(arr.cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64).reshape(n, 1)
    else:
        raise DataError(f"column {name!r} has type {t}; expected numbers or a list of numbers")
    if not np.isfinite(out).all():
        bad = int((~np.isfinite(out)).any(axis=1).sum())
        raise DataError(f"column {name!r} has NaN/Inf in {bad} rows; drop invalid rows first")
    return out


def table_to_tensor(table: pa.Table, columns: Sequence[str]) -> torch.Tensor:
    """Numeric scalar and list columns side by side as an (N, D) float32 tensor."""
    if not columns:
        raise DataError("no feature columns to encode")
    mats = [_column_matrix(table, c) for c in columns]
    x = np.concatenate(mats, axis=1) if len(mats) > 1 else mats[0]
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def _progress(total: int, desc: str) -> Any:
    """A tqdm bar for long runs (>= 20 batches) when tqdm is installed; otherwise None."""
    if total < _PROGRESS_MIN_BATCHES:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="batch", leave=False)


_DIGESTS: dict[tuple[str, int, int], str] = {}


def _file_digest(path: Path) -> str:
    """sha256 of a file's content, memoised per (path, size, mtime) so rebuilding is cheap."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def _path_digest(path: Path) -> str:
    if path.is_file():
        return _file_digest(path)
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file() and ".cache" not in q.parts):
        h.update(f"{p.relative_to(path).as_posix()}:{_file_digest(p)}|".encode())
    return h.hexdigest()


def _settings_fingerprint(kind: str, cfg: EncoderConfig, model_digest: str, extra: Any = None) -> str:
    """Hash of what changes the embeddings: kind, model content, input shape, architecture."""
    payload = {
        "v": 1,
        "kind": kind,
        "model": model_digest,
        "architecture": cfg.architecture,
        "input_shape": list(cfg.input_shape) if cfg.input_shape else None,
        "extra": extra,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _first_tensor(out: Any) -> torch.Tensor | None:
    """The main tensor of a module output (tensor, tuple/list, dict or HF ModelOutput)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict) or hasattr(out, "keys"):
        for key in ("sentence_embedding", "embedding", "output", "last_hidden_state", "logits"):
            if key in out and isinstance(out[key], torch.Tensor):
                return out[key]
        for value in out.values():
            if isinstance(value, torch.Tensor):
                return value
        return None
    if isinstance(out, (tuple, list)) and out:
        return _first_tensor(out[0])
    return None


def _pool(out: Any, mask: torch.Tensor | None) -> torch.Tensor | None:
    """A tapped activation as one row per sample: token outputs are mask-averaged, others flattened."""
    t = _first_tensor(out)
    if t is None or t.ndim == 0:
        return None
    t = t.detach()
    if t.ndim == 3 and mask is not None and tuple(t.shape[:2]) == tuple(mask.shape):
        m = mask.to(t.dtype).unsqueeze(-1)
        t = (t * m).sum(1) / m.sum(1).clamp(min=1)
    return t.reshape(t.shape[0], -1).float().cpu()


class _Taps:
    """Forward hooks on named submodules that collect one pooled row per sample."""

    def __init__(self, root: nn.Module, names: Sequence[str], fail: Callable[[str], None]) -> None:
        modules = dict(root.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            shown = ", ".join(n for n in list(modules)[1:25] if n)
            fail(f"layers {missing} not found in the model (some module names: {shown})")
        self.mask: torch.Tensor | None = None
        self.store: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        self._handles: list[Any] = []
        for name in names:
            self._handles.append(modules[name].register_forward_hook(self._hook(name)))

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            pooled = _pool(output, self.mask)
            if pooled is not None:
                self.store[name].append(pooled)
        return hook

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


class _BaseEncoder:
    """Shared plumbing: errors attributed to the right source, layer tapping, dim checks."""

    kind = "base"

    def __init__(self, cfg: EncoderConfig, device: torch.device, source: str | None) -> None:
        self.cfg = cfg
        self.device = device
        self.source = source
        self.name = cfg.kind
        self.dim: int | None = None
        self.field = "encoder"  # where cfg sits in the configuration (set by build_encoder)
        self._fingerprint = _settings_fingerprint(cfg.kind, cfg, "")

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def _fail(self, message: str) -> NoReturn:
        _fail(self.source, f"{self.name} encoder: {message}")

    def _features(self, table: pa.Table, columns: InputColumns) -> torch.Tensor:
        if not columns.feature_columns:
            self._fail("needs feature_columns (numeric or list-of-number columns)")
        try:
            return table_to_tensor(table, columns.feature_columns)
        except DataError as exc:
            self._fail(str(exc))

    def fit(self, table: pa.Table, columns: InputColumns) -> None:
        """No-op: only the tabular encoder learns statistics."""

    def encode(self, table: pa.Table, columns: InputColumns) -> torch.Tensor:
        raise NotImplementedError

    def encode_layers(self, table: pa.Table, columns: InputColumns) -> dict[str, torch.Tensor]:
        """{"output": encode(...)} for encoders without internal layers."""
        if self.cfg.layers:
            self._fail(f"layers {list(self.cfg.layers)} were configured but a {self.cfg.kind} encoder "
                       "has no internal layers to tap")
        return {"output": self.encode(table, columns)}


def _collect(taps: _Taps, outputs: list[torch.Tensor], n: int, dim: int,
             fail: Callable[[str], None]) -> dict[str, torch.Tensor]:
    result: dict[str, torch.Tensor] = {}
    for name, parts in taps.store.items():
        x = torch.cat(parts) if parts else torch.zeros((0, 0))
        if x.shape[0] != n:
            fail(f"layer {name!r} produced {x.shape[0]} rows for {n} inputs (is it called more than once "
                 "per forward, or not at all?)")
        result[name] = x
    result["output"] = torch.cat(outputs) if outputs else torch.zeros((0, dim), dtype=torch.float32)
    return result
