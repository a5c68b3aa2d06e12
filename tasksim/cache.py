"""On-disk cache of embeddings, keyed by (data fingerprint, encoder fingerprint, layer).

Encoding a source with a text or vision model is the slowest step of a cycle and the inputs
rarely change between cycles, so embeddings are kept as Parquet files (one fixed-size-list
float32 column) under ``root``. Files are written to a temporary name and moved into place
with ``os.replace``, so a crash never leaves a half-written entry under a real key; a file
that cannot be read back (truncated, corrupt, wrong key) is deleted and recomputed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

__all__ = ["CacheKey", "EmbeddingCache"]

logger = logging.getLogger(__name__)

_COLUMN = "embedding"
_META_PREFIX = b"tasksim."
_SUFFIX = ".parquet"
_TMP_PREFIX = ".tmp-"
_STALE_TMP_SECONDS = 3600.0


@dataclass(frozen=True)
class CacheKey:
    """What an embedding depends on: the data, the encoder (model + settings) and the layer."""

    data_fingerprint: str
    encoder_fingerprint: str
    layer: str

    @property
    def digest(self) -> str:
        raw = f"{self.data_fingerprint}\x1f{self.encoder_fingerprint}\x1f{self.layer}"
        return hashlib.sha256(raw.encode()).hexdigest()

    def metadata(self) -> dict[bytes, bytes]:
        return {
            _META_PREFIX + b"data": self.data_fingerprint.encode(),
            _META_PREFIX + b"encoder": self.encoder_fingerprint.encode(),
            _META_PREFIX + b"layer": self.layer.encode(),
        }


KeyLike = CacheKey | tuple[str, str, str]


def _as_key(key: KeyLike) -> CacheKey:
    return key if isinstance(key, CacheKey) else CacheKey(*key)


class EmbeddingCache:
    """Embedding tensors on disk; ``hits``/``misses`` count lookups since creation."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.misses = 0

    def path_for(self, key: KeyLike) -> Path:
        """The file an entry lives in (two-level fan-out keeps directories small)."""
        digest = _as_key(key).digest
        return self.root / digest[:2] / f"{digest}{_SUFFIX}"

    def get_or_compute(self, *, data_fingerprint: str, encoder_fingerprint: str, layer: str,
                       compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The cached (N, D) float32 CPU tensor for this key, or ``compute()`` stored under it."""
        key = CacheKey(data_fingerprint, encoder_fingerprint, layer)
        path = self.path_for(key)
        cached = self._read(path, key)
        if cached is not None:
            self.hits += 1
            try:
                os.utime(path)  # recency for prune(max_bytes=...)
            except OSError:
                pass
            return cached
        self.misses += 1
        value = compute()
        tensor = _check_tensor(value)
        if tensor.shape[1] == 0:
            return tensor  # nothing worth storing (and Arrow cannot hold 0-wide fixed-size lists)
        try:
            self._write(path, key, tensor)
        except OSError as exc:  # a full or read-only disk must not fail the cycle
            logger.warning("embedding cache: cannot write %s (%s); continuing without caching", path, exc)
        return tensor

    def _read(self, path: Path, key: CacheKey) -> torch.Tensor | None:
        if not path.exists():
            return None
        try:
            table = pq.read_table(path)
            meta = table.schema.metadata or {}
            if any(meta.get(k) != v for k, v in key.metadata().items()):
                raise ValueError("entry belongs to a different key")
            if table.column_names != [_COLUMN]:
                raise ValueError(f"unexpected columns {table.column_names}")
            col = table.column(_COLUMN).combine_chunks()
            if not pa.types.is_fixed_size_list(col.type) or col.type.value_type != pa.float32():
                raise ValueError(f"unexpected type {col.type}")
            if col.null_count:
                raise ValueError("null rows")
            dim = col.type.list_size
            values = col.flatten().to_numpy(zero_copy_only=False)
            expected_rows = int(meta.get(_META_PREFIX + b"rows", b"-1"))
            if expected_rows != len(col):
                raise ValueError(f"{len(col)} rows, expected {expected_rows}")
            return torch.from_numpy(np.array(values, dtype=np.float32).reshape(len(col), dim))
        except Exception as exc:  # noqa: BLE001 - any unreadable entry is discarded and recomputed
            logger.warning("embedding cache: discarding unreadable entry %s (%s)", path, str(exc).splitlines()[0]
                           if str(exc) else type(exc).__name__)
            try:
                path.unlink()
            except OSError:
                pass
            return None

    def _write(self, path: Path, key: CacheKey, tensor: torch.Tensor) -> None:
        n, dim = tensor.shape
        flat = pa.array(tensor.reshape(-1).numpy(), type=pa.float32())
        col = pa.FixedSizeListArray.from_arrays(flat, dim)
        meta = {**key.metadata(), _META_PREFIX + b"rows": str(n).encode(), _META_PREFIX + b"dim": str(dim).encode()}
        table = pa.table({_COLUMN: col}).replace_schema_metadata(meta)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f"{_TMP_PREFIX}{uuid.uuid4().hex}{_SUFFIX}"
        try:
            pq.write_table(table, tmp, compression="zstd")
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()

    def entries(self) -> list[Path]:
        """Every committed entry file (temporary files excluded)."""
        return sorted(p for p in self.root.glob(f"*/*{_SUFFIX}") if not p.name.startswith(_TMP_PREFIX))

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.entries() if p.exists())

    def prune(self, keep: Iterable[KeyLike] | None = None, *, max_bytes: int | None = None) -> int:
        """Delete entries not in ``keep`` (when given), then least recently used ones beyond
        ``max_bytes`` (when given), and stale temp files. Returns the number of entries deleted."""
        removed = 0
        now = time.time()
        for tmp in self.root.glob(f"*/{_TMP_PREFIX}*"):
            try:
                if now - tmp.stat().st_mtime > _STALE_TMP_SECONDS:
                    tmp.unlink()
            except OSError:
                pass
        files = self.entries()
        if keep is not None:
            wanted = {self.path_for(k) for k in keep}
            for p in files:
                if p not in wanted:
                    removed += _unlink(p)
            files = [p for p in files if p in wanted]
        if max_bytes is not None:
            stats = []
            for p in files:
                try:
                    st = p.stat()
                except OSError:
                    continue
                stats.append((st.st_mtime_ns, st.st_size, p))
            total = sum(size for _, size, _ in stats)
            for _, size, p in sorted(stats, key=lambda t: (t[0], str(t[2]))):
                if total <= max_bytes:
                    break
                removed += _unlink(p)
                total -= size
        return removed


def _unlink(path: Path) -> int:
    try:
        path.unlink()
        return 1
    except OSError:
        return 0


def _check_tensor(value: torch.Tensor) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"compute() returned {type(value).__name__}; expected a torch.Tensor")
    if value.ndim != 2:
        raise ValueError(f"compute() returned shape {tuple(value.shape)}; expected (N, D)")
    return value.detach().to(device="cpu", dtype=torch.float32).contiguous()
