"""The files behind production, reference and sources: listing local paths, directories, globs and
fsspec URLs; opening them as one ``pyarrow.dataset`` with bad files skipped, counted and named
(or refused in strict mode); and content fingerprints of tables and datasets (cache keys).
"""

from __future__ import annotations

import glob as _glob
import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from tasksim.errors import DataError

logger = logging.getLogger(__name__)

_GLOB_CHARS = frozenset("*?[")
_UNIT_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}

__all__ = ["dataset_fingerprint", "table_fingerprint"]


@dataclass(frozen=True)
class _FileEntry:
    path: str
    size: int
    mtime: str


@dataclass(frozen=True)
class _Listing:
    """The files behind a path, URL or glob, sorted, with the filesystem to read them."""

    location: str
    filesystem: pafs.FileSystem
    files: tuple[_FileEntry, ...]
    base_dir: str | None


def _has_glob(path: str) -> bool:
    return any(ch in _GLOB_CHARS for ch in path)


def _glob_base(path: str, sep: str = "/") -> str:
    """The directory part of a glob before its first wildcard (the hive partition root)."""
    parts = path.split(sep)
    keep: list[str] = []
    for part in parts[:-1]:
        if _has_glob(part):
            break
        keep.append(part)
    return sep.join(keep) or sep


def _hidden(rel: str) -> bool:
    """Same rule as pyarrow's discovery: files or directories starting with '.' or '_'."""
    return any(part.startswith((".", "_")) for part in rel.replace(os.sep, "/").split("/") if part)


def _is_url(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _list_local(path: str) -> _Listing:
    path = path.removeprefix("file://")
    fs = pafs.LocalFileSystem()
    if _has_glob(path):
        matches = sorted(p for p in _glob.glob(path, recursive=True) if os.path.isfile(p))
        base = _glob_base(path, os.sep)
        matches = [p for p in matches if not _hidden(os.path.relpath(p, base))]
        if not matches:
            raise DataError(f"{path}: no Parquet files match this pattern")
        return _Listing(path, fs, tuple(_stat(p) for p in matches), base)
    if os.path.isdir(path):
        found: list[str] = []
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_")))
            found.extend(os.path.join(root, f) for f in files if not f.startswith((".", "_")))
        if not found:
            raise DataError(f"{path}: directory contains no Parquet files")
        return _Listing(path, fs, tuple(_stat(p) for p in sorted(found)), path)
    if os.path.isfile(path):
        return _Listing(path, fs, (_stat(path),), None)
    if os.path.exists(path):
        raise DataError(f"{path}: not a regular file or directory")
    raise DataError(f"{path}: no such file or directory")


def _stat(path: str) -> _FileEntry:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not os.access(path, os.R_OK):
        raise DataError(f"{path}: permission denied (file is not readable)")
    return _FileEntry(os.path.abspath(path), int(st.st_size), str(st.st_mtime_ns))


def _fsspec_mtime(info: dict) -> str:
    for key in ("mtime", "LastModified", "last_modified", "updated", "modified", "created", "ETag", "etag"):
        if info.get(key) is not None:
            return str(info[key])
    return ""


def _list_url(url: str) -> _Listing:
    try:
        import fsspec
    except ImportError:  # pragma: no cover - fsspec is a dependency
        raise DataError(f"{url}: reading URLs needs fsspec (pip install fsspec)") from None
    try:
        fs, path = fsspec.core.url_to_fs(url)
    except (ValueError, ImportError) as exc:
        raise DataError(f"{url}: cannot open this URL ({str(exc).splitlines()[0]})") from None
    try:
        if _has_glob(path):
            infos = fs.glob(path, detail=True)
            base = _glob_base(path)
        elif fs.isdir(path):
            infos = fs.find(path, detail=True)
            base = path.rstrip("/")
        elif fs.isfile(path):
            infos = {path: fs.info(path)}
            base = None
        else:
            raise DataError(f"{url}: no such file or directory")
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - remote filesystems raise anything from OSError to ClientError
        raise DataError(f"{url}: cannot list ({type(exc).__name__}: {_first_line(exc)})") from None
    entries = []
    for p, info in sorted(infos.items()):
        if info.get("type", "file") != "file":
            continue
        if base is not None and _hidden(p[len(base):].lstrip("/")):
            continue
        entries.append(_FileEntry(p, int(info.get("size") or 0), _fsspec_mtime(info)))
    if not entries:
        raise DataError(f"{url}: no Parquet files found")
    handler = pafs.PyFileSystem(pafs.FSSpecHandler(fs))
    return _Listing(url, handler, tuple(entries), base)


def _list_files(path: str) -> _Listing:
    path = str(path)
    if not path:
        raise DataError("empty data path")
    return _list_url(path) if _is_url(path) else _list_local(path)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class _BadFile(Exception):
    """One file of a dataset cannot be used (internal: becomes a skip or a ``DataError``)."""


def _bad_file(path: str, reason: str, policy: str, skipped: list[tuple[str, str]]) -> None:
    """Skip a bad file (``policy`` "skip": recorded in ``skipped``) or stop with one line ("fail")."""
    if policy != "skip":
        raise DataError(f"{path}: {reason}")
    logger.warning("skipping %s: %s", path, reason)
    skipped.append((path, reason))


def _open_dataset(path: str, partitioning: str | None, *, on_bad_file: str = "fail",
                  skipped: list[tuple[str, str]] | None = None,
                  outside: Callable[[_FileEntry], bool] | None = None) -> tuple[ds.Dataset, _Listing]:
    """The dataset over ``path``'s files. Opening reads one footer (the first readable file's) for
    the schema; zero-byte files (a part file still being written) are never opened: with
    ``on_bad_file="skip"`` they and an unreadable first file are left out and recorded in ``skipped``.
    Files for which ``outside(entry)`` is true (known to lie outside the window) are left out unopened,
    unless every file is: then the first one still gives the schema (its footer only)."""
    listing = _list_files(path)
    skipped = [] if skipped is None else skipped
    part = ds.HivePartitioning.discover(infer_dictionary=False) if partitioning == "hive" else None
    files = []
    for f in listing.files:
        if f.size == 0:
            _bad_file(f.path, "zero bytes (a file still being written?)", on_bad_file, skipped)
        else:
            files.append(f.path)
    if outside is not None and files:
        by_path = {f.path: f for f in listing.files}
        inside = [p for p in files if not outside(by_path[p])]
        files = inside or files[:1]

    def build(paths: list[str]) -> ds.Dataset:
        return ds.dataset(paths, filesystem=listing.filesystem, format="parquet", partitioning=part,
                          partition_base_dir=listing.base_dir if part is not None else None)

    while True:
        if not files:
            first = f" ({skipped[0][0]}: {skipped[0][1]})" if skipped else ""
            raise DataError(f"{path}: no readable Parquet file{first}")
        try:
            return build(files), listing
        except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
            error = exc
        # the factory reads only the first file's footer: if that file alone fails, it is the bad one
        try:
            build(files[:1])
        except (pa.ArrowInvalid, pa.ArrowTypeError, OSError):
            _bad_file(files[0], f"cannot read as Parquet ({_first_line(error)})", on_bad_file, skipped)
            files = files[1:]
            continue
        raise DataError(f"{path}: cannot read as Parquet ({_first_line(error)})") from None


def _as_array(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col

def _bool_np(arr: pa.Array) -> np.ndarray:
    return np.asarray(pc.fill_null(arr, False).to_numpy(zero_copy_only=False), dtype=bool)

def _kind(t: pa.DataType) -> str | None:
    """Coarse kind of an Arrow type: float, int, bool, str, list (of numbers), ts, or None."""
    if pa.types.is_dictionary(t):
        inner = _kind(t.value_type)
        return inner if inner in ("str", "int", "bool") else None
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_integer(t) or pa.types.is_decimal(t):
        return "int"
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or (
            hasattr(pa.types, "is_string_view") and pa.types.is_string_view(t)):
        return "str"
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        inner = t.value_type
        if pa.types.is_floating(inner) or pa.types.is_integer(inner):
            return "list"
        return None
    if pa.types.is_timestamp(t):
        return "ts"
    return None


def _compatible(expected: pa.DataType, found: pa.DataType) -> bool:
    """Whether a file's column type can be read as the dataset's (cast without loss of meaning)."""
    if expected == found:
        return True
    if pa.types.is_fixed_size_list(expected):
        return pa.types.is_fixed_size_list(found) and found.list_size == expected.list_size \
            and _kind(found.value_type) == _kind(expected.value_type)
    return _kind(expected) is not None and _kind(expected) == _kind(found)

def _schema_problem(fragment: ds.Fragment, schema: pa.Schema, columns: list[str]) -> str | None:
    """One line naming the first needed column whose type in this file differs from the dataset's."""
    physical = fragment.physical_schema
    for name in columns:
        expected = schema.field(name).type
        if name not in physical.names:
            if f"/{name}=" in fragment.path.replace(os.sep, "/"):  # a hive partition key, not a file column
                continue
            shown = ", ".join(physical.names[:20]) + (", ..." if len(physical.names) > 20 else "")
            return f"column {name!r} not found (expected {expected}; the file has columns: {shown})"
        found = physical.field(name).type
        if not _compatible(expected, found):
            return f"column {name!r} has type {found}; expected {expected} (as in the dataset's first file)"
    return None

def _time_range_us(fragment: ds.Fragment, column: str) -> tuple[int, int] | None:
    """(min, max) of the timestamp column in microseconds since the epoch, from the Parquet footer's
    row-group statistics (already read by ``split_by_row_group``); None when they are missing."""
    try:
        meta = fragment.metadata
        unit = fragment.physical_schema.field(column).type.unit
        index = meta.schema.names.index(column)
    except (AttributeError, KeyError, ValueError, pa.ArrowInvalid, OSError):
        return None
    per_us = _UNIT_PER_SECOND[unit] / 1_000_000
    low = high = None
    for i in range(meta.num_row_groups):
        stats = meta.row_group(i).column(index).statistics
        if stats is None or not stats.has_min_max:
            return None
        lo, hi = stats.min_raw, stats.max_raw
        if not isinstance(lo, int) or not isinstance(hi, int):
            return None
        low = lo if low is None else min(low, lo)
        high = hi if high is None else max(high, hi)
    if low is None or high is None:
        return None
    return int(low // per_us), int(-((-high) // per_us))  # widened to whole microseconds


def _hash_array(h: hashlib._Hash, arr: pa.Array) -> None:
    """Feed a canonical encoding of ``arr`` (independent of chunking, offsets, bytes under nulls)."""
    t = arr.type
    h.update(f"|{t}|{len(arr)}|".encode())
    if pa.types.is_dictionary(t):
        _hash_array(h, arr.cast(t.value_type))
        return
    if arr.null_count:
        h.update(np.packbits(_bool_np(pc.is_valid(arr))).tobytes())
    if pa.types.is_null(t):
        return
    if pa.types.is_struct(t):
        for i in range(t.num_fields):
            _hash_array(h, arr.field(i))
        return
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False)
        h.update(np.ascontiguousarray(lengths, dtype=np.int64).tobytes())
        _hash_array(h, pc.list_flatten(arr))
        return
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t):
        arr = pc.fill_null(arr, "" if pa.types.is_string(t) or pa.types.is_large_string(t) else b"")
        width = np.int64 if pa.types.is_large_string(t) or pa.types.is_large_binary(t) else np.int32
        bufs = arr.buffers()
        offsets = np.frombuffer(bufs[1], dtype=width)[arr.offset: arr.offset + len(arr) + 1]
        h.update((offsets - offsets[0]).astype(np.int64).tobytes())
        if bufs[2] is not None and len(arr):
            h.update(memoryview(bufs[2])[int(offsets[0]): int(offsets[-1])])
        return
    try:
        values = arr.to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, TypeError):
        h.update(repr(arr.to_pylist()).encode())
        return
    if values.dtype == object:
        h.update(repr(values.tolist()).encode())
        return
    if arr.null_count:
        values = values.copy()
        valid = _bool_np(pc.is_valid(arr))
        values[~valid] = np.zeros(1, dtype=values.dtype)[0]
    h.update(np.ascontiguousarray(values).view(np.uint8).tobytes())


def table_fingerprint(table: pa.Table) -> str:
    """Content hash of a table (names, types, values): stable across runs and chunk layouts."""
    h = hashlib.sha256(b"tasksim-table-v1")
    h.update(str(table.num_rows).encode())
    for name, column in zip(table.column_names, table.columns, strict=True):
        h.update(f"|col:{name}|".encode())
        _hash_array(h, _as_array(column) if column.num_chunks != 1 else column.chunk(0))
    return h.hexdigest()[:32]


def dataset_fingerprint(path: str) -> str:
    """Cheap fingerprint of a dataset from its file paths, sizes and modification times."""
    listing = _list_files(str(path))
    h = hashlib.sha256(b"tasksim-dataset-v1|" + listing.location.encode())
    for f in listing.files:
        h.update(f"|{f.path}|{f.size}|{f.mtime}".encode())
    return h.hexdigest()[:32]
