"""Bounded, seeded sampling of production windows, the reference and portfolio sources.

Production data can be far larger than memory, so nothing here materialises a whole window:
record batches stream out of a ``pyarrow.dataset`` scan that reads only the needed columns,
with the time filter pushed down (row groups whose timestamp statistics miss the window are
never decoded), into a bounded reservoir. The reservoir is "bottom-k": every row gets an iid
uniform key from a seeded generator and the ``max_rows`` smallest keys are kept, which is a
uniformly random subset (the same distribution as Algorithm R), computed vectorised per
batch. Label-stratified sampling keeps one reservoir per class and allocates the final rows
in proportion to the class counts of the whole window.

Rows whose input columns hold null, NaN or Inf (or a list of the wrong length) are dropped
and counted, never passed on. Problems with production data raise ``DataError``; problems
with a source raise ``SourceError``; each is one line naming the file or column.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from tasksim.config import Config, ProductionConfig, SamplingConfig, SourceConfig
from tasksim.datafiles import (
    _UNIT_PER_SECOND,
    _as_array,
    _bad_file,
    _BadFile,
    _bool_np,
    _FileEntry,
    _first_line,
    _kind,
    _list_files,
    _open_dataset,
    _schema_problem,
    _time_range_us,
    dataset_fingerprint,
    table_fingerprint,
)
from tasksim.errors import DataError, SourceError

__all__ = [
    "Window",
    "check_production_schema",
    "check_source_schema",
    "dataset_fingerprint",
    "in_reference_period",
    "load_reference",
    "load_source",
    "production_time_range",
    "reference_cache_key",
    "sample_window",
    "table_fingerprint",
]

logger = logging.getLogger(__name__)

_BATCH_ROWS = 65_536
# Batches decoded ahead within one row group (pyarrow's default is 16).
_BATCH_READAHEAD = 2
# Above this many distinct labels, stratified sampling falls back to one uniform reservoir
# (which keeps class proportions in expectation) so memory stays bounded by max_rows x this.
_MAX_STRATA = 100
# Mixed into the user's seed so sample keys are not the very stream a user's own
# ``default_rng(seed)`` produced the data with (seed 0 for both correlated keys with labels).
_SEED_SALT = 0x7A5C_5A3D
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class Window:
    """A sampled window: the rows drift and profiling see, plus what was left out and why."""

    start: datetime | None
    end: datetime | None
    table: pa.Table
    total_rows: int
    dropped_invalid: int
    # (path, reason) of each file left out because it could not be read or has a changed schema
    skipped_files: tuple[tuple[str, str], ...] = ()


# ----------------------------------------------------------------------------------------
# Locating files
# ----------------------------------------------------------------------------------------
































# ----------------------------------------------------------------------------------------
# Column checks
# ----------------------------------------------------------------------------------------




@dataclass(frozen=True)
class _Spec:
    """What to read from one dataset and how strict to be about it."""

    path: str
    feature_columns: tuple[str, ...]
    text_column: str | None
    label_column: str | None
    timestamp_column: str | None
    partitioning: str | None = "hive"
    categorical_features: bool = True
    labels_required: bool = False
    on_bad_file: str = "fail"  # "skip": leave unreadable files out (production data), see _scan

    def columns(self) -> list[str]:
        cols: list[str] = []
        for c in (*self.feature_columns, self.text_column, self.label_column, self.timestamp_column):
            if c and c not in cols:
                cols.append(c)
        return cols


def _check_schema(schema: pa.Schema, spec: _Spec) -> dict[str, str]:
    """Raise DataError unless every needed column is present with a usable type."""
    available = schema.names
    kinds: dict[str, str] = {}

    def get(name: str, role: str) -> pa.DataType:
        if name not in available:
            shown = ", ".join(available[:20]) + (", ..." if len(available) > 20 else "")
            raise DataError(f"{spec.path}: {role} column {name!r} not found (columns are: {shown})")
        return schema.field(name).type

    for name in spec.feature_columns:
        t = get(name, "feature")
        k = _kind(t)
        ok = {"float", "int", "list"} | ({"str", "bool"} if spec.categorical_features else set())
        if k not in ok:
            expected = "numbers or a list of numbers"
            if spec.categorical_features:
                expected += " (or a string/bool category)"
            raise DataError(f"{spec.path}: feature column {name!r} has type {t}; expected {expected}")
        kinds[name] = k
    if spec.text_column:
        t = get(spec.text_column, "text")
        if _kind(t) != "str":
            raise DataError(f"{spec.path}: text column {spec.text_column!r} has type {t}; expected strings")
        kinds[spec.text_column] = "str"
    if spec.label_column:
        t = get(spec.label_column, "label")
        k = _kind(t)
        if k not in ("int", "str", "bool", "float"):
            raise DataError(f"{spec.path}: label column {spec.label_column!r} has type {t}; "
                            "expected integer, string or boolean class labels")
        kinds.setdefault(spec.label_column, "label:" + k)
    if spec.timestamp_column:
        t = get(spec.timestamp_column, "timestamp")
        if not pa.types.is_timestamp(t):
            raise DataError(f"{spec.path}: timestamp column {spec.timestamp_column!r} has type {t}; "
                            "expected a timestamp (timezone-aware, or naive meaning UTC)")
        kinds.setdefault(spec.timestamp_column, "ts")
    return kinds






class _RowChecker:
    """Vectorised per-batch validity: no null/NaN/Inf in inputs, uniform list lengths."""

    def __init__(self, spec: _Spec, kinds: dict[str, str], schema: pa.Schema) -> None:
        self.spec = spec
        self.kinds = kinds
        self.list_length: dict[str, int] = {}
        for name, kind in kinds.items():
            t = schema.field(name).type
            if kind == "list" and pa.types.is_fixed_size_list(t):
                self.list_length[name] = t.list_size
        self.inputs = [c for c in (*spec.feature_columns, spec.text_column) if c]

    def _list_ok(self, name: str, arr: pa.Array) -> np.ndarray:
        n = len(arr)
        lengths = np.asarray(pc.fill_null(pc.list_value_length(arr), -1).to_numpy(zero_copy_only=False))
        if name not in self.list_length:
            seen = lengths[lengths >= 0]
            if seen.size == 0:
                return np.zeros(n, dtype=bool)
            # The most common length in the first batch with data becomes the expected one.
            values, counts = np.unique(seen, return_counts=True)
            self.list_length[name] = int(values[np.argmax(counts)])
        ok = lengths == self.list_length[name]
        values = pc.list_flatten(arr)
        if len(values):
            bad = ~_bool_np(pc.is_valid(values))
            if pa.types.is_floating(values.type):
                bad |= ~_bool_np(pc.is_finite(values))
            if bad.any():
                parents = np.asarray(pc.list_parent_indices(arr).to_numpy(zero_copy_only=False))
                ok &= np.bincount(parents[bad], minlength=n)[:n] == 0
        return ok

    def valid(self, batch: pa.RecordBatch) -> np.ndarray:
        n = batch.num_rows
        ok = np.ones(n, dtype=bool)
        for name in self.inputs:
            arr = _as_array(batch.column(name))
            kind = self.kinds[name]
            if kind == "list":
                ok &= self._list_ok(name, arr)
            elif kind == "float":
                ok &= _bool_np(pc.is_finite(arr))
            elif name == self.spec.text_column:
                # a blank text carries no input: every one embeds to the same vector, so a window of
                # them would look like one point far from everything (a false "closest source")
                texts = arr.dictionary_decode() if pa.types.is_dictionary(arr.type) else arr
                ok &= _bool_np(pc.fill_null(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(texts)), 0), False))
            elif arr.null_count:
                ok &= _bool_np(pc.is_valid(arr))
        if self.spec.labels_required and self.spec.label_column:
            arr = _as_array(batch.column(self.spec.label_column))
            if pa.types.is_floating(arr.type):
                ok &= _bool_np(pc.is_finite(arr))
            elif arr.null_count:
                ok &= _bool_np(pc.is_valid(arr))
        return ok


# ----------------------------------------------------------------------------------------
# Time filter
# ----------------------------------------------------------------------------------------


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _ts_scalar(value: datetime, t: pa.TimestampType) -> pa.Scalar:
    """``value`` in the column's unit, rounded up so ``ts >= scalar`` means ``ts >= value``."""
    delta = _utc(value) - _EPOCH
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    per_second = _UNIT_PER_SECOND[t.unit]
    if per_second >= 1_000_000:
        ticks = micros * (per_second // 1_000_000)
    else:
        step = 1_000_000 // per_second
        ticks = -((-micros) // step)  # ceiling division
    return pa.scalar(ticks, type=t)


def _time_filter(schema: pa.Schema, column: str, start: datetime | None, end: datetime | None) -> ds.Expression | None:
    t = schema.field(column).type
    expr: ds.Expression | None = None
    if start is not None:
        expr = ds.field(column) >= _ts_scalar(start, t)
    if end is not None:
        upper = ds.field(column) < _ts_scalar(end, t)
        expr = upper if expr is None else expr & upper
    return expr


def _ticks_to_datetime(ticks: int, unit: str) -> datetime:
    per_second = _UNIT_PER_SECOND[unit]
    if per_second >= 1_000_000:
        micros = ticks // (per_second // 1_000_000)
    else:
        micros = ticks * (1_000_000 // per_second)
    return _EPOCH + timedelta(microseconds=micros)


# ----------------------------------------------------------------------------------------
# Reservoirs
# ----------------------------------------------------------------------------------------


@dataclass
class _Reservoir:
    """Bottom-k sample: keeps the ``k`` rows with the smallest iid uniform keys (a uniform k-subset)."""

    k: int
    seen: int = 0
    threshold: float = np.inf
    _tables: list[pa.Table] = field(default_factory=list)
    _keys: list[np.ndarray] = field(default_factory=list)
    _pos: list[np.ndarray] = field(default_factory=list)
    _size: int = 0

    def offer(self, batch: pa.RecordBatch | pa.Table | None, keys: np.ndarray, pos: np.ndarray, idx: np.ndarray,
              *, seen: int | None = None) -> None:
        """Consider rows ``idx`` of ``batch`` (``keys``/``pos`` are aligned with ``batch``).

        ``seen`` counts the valid rows of this stratum in the batch when ``idx`` was pre-filtered.
        """
        self.seen += int(idx.size) if seen is None else seen
        if self.k <= 0 or idx.size == 0 or batch is None:
            return
        sel = idx[keys[idx] < self.threshold]
        if sel.size == 0:
            return
        part = batch.take(pa.array(sel))
        self._tables.append(pa.Table.from_batches([part]) if isinstance(part, pa.RecordBatch) else part)
        self._keys.append(keys[sel])
        self._pos.append(pos[sel])
        self._size += int(sel.size)
        if self._size > 2 * self.k + 1024:
            self._compact()

    def absorb(self, other: _Reservoir) -> None:
        self.seen += other.seen
        self._tables += other._tables
        self._keys += other._keys
        self._pos += other._pos
        self._size += other._size
        self._compact()

    def _compact(self) -> None:
        if not self._tables:
            return
        table = pa.concat_tables(self._tables)
        keys = np.concatenate(self._keys)
        pos = np.concatenate(self._pos)
        if keys.size > self.k:
            keep = np.argpartition(keys, self.k - 1)[: self.k]
            table, keys, pos = table.take(pa.array(keep)), keys[keep], pos[keep]
            self.threshold = float(keys.max())
        self._tables, self._keys, self._pos, self._size = [table], [keys], [pos], int(keys.size)

    def smallest(self, m: int) -> tuple[pa.Table | None, np.ndarray]:
        """The ``m`` rows with the smallest keys (a uniform m-subset of everything seen)."""
        self._compact()
        if not self._tables or m <= 0:
            return None, np.empty(0, dtype=np.int64)
        table, keys, pos = self._tables[0], self._keys[0], self._pos[0]
        if m < keys.size:
            keep = np.argpartition(keys, m - 1)[:m]
            table, pos = table.take(pa.array(keep)), pos[keep]
        return table, pos


def _label_keys(arr: pa.Array) -> tuple[np.ndarray, list[object]]:
    """Per-row stratum ids (index into the returned label values; nulls get their own)."""
    if pa.types.is_dictionary(arr.type):
        arr = arr.cast(arr.type.value_type)
    enc = pc.dictionary_encode(arr, null_encoding="encode")
    values = enc.dictionary.to_pylist()
    values = [None if isinstance(v, float) and np.isnan(v) else v for v in values]
    return np.asarray(enc.indices.to_numpy(zero_copy_only=False), dtype=np.int64), values


def _allocate(counts: dict[object, int], total: int) -> dict[object, int]:
    """Largest-remainder proportional quotas summing to ``total``; every class gets >= 1 if it can."""
    n = sum(counts.values())
    exact = {c: total * v / n for c, v in counts.items()}
    quota = {c: int(np.floor(x)) for c, x in exact.items()}
    order = sorted(counts, key=lambda c: (-(exact[c] - quota[c]), repr(c)))
    for c in order[: total - sum(quota.values())]:
        quota[c] += 1
    if total >= len(counts):
        for c in counts:
            if quota[c] == 0:
                donors = [d for d in quota if quota[d] > 1]
                donor = max(donors, key=lambda d: (quota[d] - exact[d], quota[d], repr(d)))
                quota[donor] -= 1
                quota[c] = 1
    return {c: min(q, counts[c]) for c, q in quota.items()}


# ----------------------------------------------------------------------------------------
# The sampler
# ----------------------------------------------------------------------------------------






@dataclass
class _ScanReport:
    """What a scan left out: bad files (skipped), and whether any was left out for its schema."""

    policy: str = "fail"
    skipped: list[tuple[str, str]] = field(default_factory=list)
    schema_skips: int = 0
    # path -> (min, max) timestamp in microseconds of each file whose footer this scan read
    ranges: dict[str, tuple[int, int]] = field(default_factory=dict)
    timestamp_column: str | None = None




def _scan(dataset: ds.Dataset, columns: list[str], expr: ds.Expression | None,
          report: _ScanReport | None = None) -> Iterator[pa.RecordBatch]:
    """Batches of the filtered projection, one Parquet row group at a time, in file order.

    Row groups whose min/max statistics miss the filter are skipped without being read. Going
    row group by row group (rather than ``dataset.to_batches``, whose read-ahead grows while a
    slow consumer works) keeps memory at about one decoded row group, however large the window.

    A file that cannot be read, or whose needed columns changed type or name, is a bad file:
    skipped and recorded in ``report`` (policy "skip") or a ``DataError`` naming the file, the
    column, what was expected and what was found (policy "fail").
    """
    report = report or _ScanReport()
    for fragment in dataset.get_fragments(filter=expr):
        rows = 0
        try:
            pieces = fragment.split_by_row_group(filter=expr, schema=dataset.schema) \
                if isinstance(fragment, ds.ParquetFileFragment) else [fragment]
            if report.timestamp_column and isinstance(fragment, ds.ParquetFileFragment):
                span = _time_range_us(fragment, report.timestamp_column)
                if span is not None:
                    report.ranges[fragment.path] = span
            if not pieces:
                continue  # no row group overlaps the window
            problem = _schema_problem(fragment, dataset.schema, columns)
            if problem is not None:
                report.schema_skips += 1
                raise _BadFile(problem)
            for piece in pieces:
                for batch in piece.to_batches(schema=dataset.schema, columns=columns, filter=expr,
                                              batch_size=_BATCH_ROWS, batch_readahead=_BATCH_READAHEAD,
                                              use_threads=True):
                    rows += batch.num_rows
                    yield batch
        except (_BadFile, pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OSError) as exc:
            reason = str(exc) if isinstance(exc, _BadFile) else f"cannot read Parquet data ({_first_line(exc)})"
            if rows:
                reason += f" after {rows} rows (those rows were kept)"
            _bad_file(fragment.path, reason, report.policy, report.skipped)


def _us(value: datetime) -> int:
    delta = _utc(value) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _sample(spec: _Spec, start: datetime | None, end: datetime | None, *, max_rows: int, seed: int,
            stratify: bool, file_ranges: MutableMapping[str, list[int]] | None = None) -> Window:
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    start = _utc(start) if start is not None else None
    end = _utc(end) if end is not None else None
    report = _ScanReport(policy=spec.on_bad_file, timestamp_column=spec.timestamp_column)
    outside = None
    if file_ranges is not None and spec.timestamp_column and (start is not None or end is not None):
        lo_us = _us(start) if start is not None else None
        hi_us = _us(end) if end is not None else None

        def outside(entry: _FileEntry) -> bool:
            span = file_ranges.get(f"{entry.path}|{entry.size}|{entry.mtime}")
            return span is not None and ((hi_us is not None and span[0] >= hi_us)
                                         or (lo_us is not None and span[1] < lo_us))
    dataset, listing = _open_dataset(spec.path, spec.partitioning, on_bad_file=spec.on_bad_file,
                                     skipped=report.skipped, outside=outside)
    kinds = _check_schema(dataset.schema, spec)
    columns = spec.columns()
    out_schema = pa.schema([dataset.schema.field(c) for c in columns])
    expr = None
    if spec.timestamp_column and (start is not None or end is not None):
        expr = _time_filter(dataset.schema, spec.timestamp_column, start, end)
    checker = _RowChecker(spec, kinds, dataset.schema)
    stratify = stratify and spec.label_column is not None
    rng = np.random.default_rng([seed, _SEED_SALT])
    uniform = _Reservoir(max_rows)
    strata: dict[object, _Reservoir] | None = {} if stratify else None
    total = dropped = 0
    try:
        for batch in _scan(dataset, columns, expr, report):
            n = batch.num_rows
            if n == 0:
                continue
            keys = rng.random(n)
            pos = np.arange(total, total + n, dtype=np.int64)
            total += n
            ok = checker.valid(batch)
            dropped += int(n - ok.sum())
            if strata is None:
                uniform.offer(batch, keys, pos, np.flatnonzero(ok))
                continue
            ids, values = _label_keys(_as_array(batch.column(spec.label_column)))
            counts = np.bincount(ids[ok], minlength=len(values))
            # One take per batch for all classes: only rows under their class's current threshold.
            thresholds = np.array([strata[v].threshold if v in strata else np.inf for v in values])
            cand = np.flatnonzero(ok & (keys < thresholds[ids])) if len(values) else np.empty(0, np.int64)
            sub = batch.take(pa.array(cand)) if cand.size else None
            sub_ids, sub_keys, sub_pos = ids[cand], keys[cand], pos[cand]
            for i, value in enumerate(values):
                if counts[i]:
                    strata.setdefault(value, _Reservoir(max_rows)).offer(
                        sub, sub_keys, sub_pos, np.flatnonzero(sub_ids == i), seen=int(counts[i]))
            if len(strata) > _MAX_STRATA:
                logger.warning("%s: label column %r has more than %d classes; sampling uniformly instead "
                               "of per class", spec.path, spec.label_column, _MAX_STRATA)
                for res in strata.values():
                    uniform.absorb(res)
                strata = None
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OSError) as exc:
        raise DataError(f"{spec.path}: cannot read Parquet data ({_first_line(exc)})") from None

    parts: list[tuple[pa.Table | None, np.ndarray]] = []
    if strata is None:
        parts.append(uniform.smallest(max_rows))
    elif strata:
        quotas = _allocate({v: r.seen for v, r in strata.items()}, max_rows)
        parts.extend(strata[v].smallest(q) for v, q in quotas.items())
    tables = [t for t, _ in parts if t is not None and t.num_rows]
    if tables:
        table = pa.concat_tables(tables)
        order = np.argsort(np.concatenate([p for t, p in parts if t is not None and t.num_rows]), kind="stable")
        table = table.take(pa.array(order)).combine_chunks()
    else:
        table = out_schema.empty_table()
    if dropped:
        logger.info("%s: dropped %d of %d rows with null/NaN/Inf or blank-text inputs or wrong list lengths",
                    spec.path, dropped, total)
    if file_ranges is not None:
        # remember every file's time range (keyed by path, size and mtime, so a rewritten file is
        # read again) and forget files that are gone: the mapping stays as large as the listing
        current = {f"{f.path}|{f.size}|{f.mtime}": f.path for f in listing.files}
        for key in [k for k in file_ranges if k not in current]:
            del file_ranges[key]
        for key, path in current.items():
            if path in report.ranges:
                file_ranges[key] = list(report.ranges[path])
    if total == 0 and report.schema_skips:
        # every file of the window was left out for its schema: that is not an empty window
        path, reason = next((p, r) for p, r in report.skipped if "column" in r)
        raise DataError(f"{path}: {reason}; no file in the window has the expected columns "
                        f"({len(report.skipped)} file(s) skipped)")
    return Window(start=start, end=end, table=table, total_rows=total, dropped_invalid=dropped,
                  skipped_files=tuple(report.skipped))


def _production_spec(production: ProductionConfig, *, path: str | None = None,
                     with_timestamp: bool = True) -> _Spec:
    return _Spec(
        path=str(path or production.path),
        feature_columns=tuple(production.feature_columns),
        text_column=production.text_column,
        label_column=production.label_column,
        timestamp_column=production.timestamp_column if with_timestamp else None,
        partitioning=production.partitioning,
        on_bad_file=production.on_bad_file,
    )


def sample_window(production: ProductionConfig, start: datetime | None, end: datetime | None, *,
                  max_rows: int, seed: int, stratify_by_label: bool = False,
                  file_ranges: MutableMapping[str, list[int]] | None = None) -> Window:
    """Uniform (or label-stratified) sample of at most ``max_rows`` valid rows with start <= ts < end.

    Streams the window in bounded memory; an empty window gives an empty table, not an error.
    Naive ``start``/``end`` mean UTC. Raises ``DataError`` naming the path or column. A file that
    cannot be read is skipped and named in ``Window.skipped_files`` (``production.on_bad_file``).

    ``file_ranges`` (updated in place; the cycle keeps it in the state store): each file's
    timestamp range from its footer, keyed by path, size and mtime. A file whose known range lies
    outside the window is not opened at all.
    """
    return _sample(_production_spec(production), start, end, max_rows=max_rows, seed=seed,
                   stratify=stratify_by_label, file_ranges=file_ranges)


def production_time_range(production: ProductionConfig) -> tuple[datetime, datetime] | None:
    """(min, max) timestamp over all production data as aware UTC datetimes; None when empty.

    Streams only the timestamp column. Sub-microsecond precision is truncated.
    """
    spec = _Spec(path=str(production.path), feature_columns=(), text_column=None, label_column=None,
                 timestamp_column=production.timestamp_column, partitioning=production.partitioning)
    report = _ScanReport(policy=production.on_bad_file)
    dataset, _ = _open_dataset(spec.path, spec.partitioning, on_bad_file=report.policy, skipped=report.skipped)
    _check_schema(dataset.schema, spec)
    t = dataset.schema.field(spec.timestamp_column).type
    low: int | None = None
    high: int | None = None
    try:
        for batch in _scan(dataset, [spec.timestamp_column], None, report):
            if batch.num_rows == 0:
                continue
            mm = pc.min_max(batch.column(0))
            if not mm["min"].is_valid:
                continue
            lo, hi = mm["min"].value, mm["max"].value
            low = lo if low is None else min(low, lo)
            high = hi if high is None else max(high, hi)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        raise DataError(f"{spec.path}: cannot read Parquet data ({_first_line(exc)})") from None
    if low is None or high is None:
        return None
    return _ticks_to_datetime(low, t.unit), _ticks_to_datetime(high, t.unit)


def load_reference(config: Config, *, file_ranges: MutableMapping[str, list[int]] | None = None) -> Window:
    """The reference window: a time range of production data, or the separate reference dataset.

    ``file_ranges``: as for :func:`sample_window` (production files outside the reference range
    are then not opened)."""
    ref = config.reference
    sampling = config.sampling
    if ref.path:
        with_ts = ref.start is not None or ref.end is not None
        spec = _production_spec(config.production, path=ref.path, with_timestamp=with_ts)
    else:
        spec = _production_spec(config.production)
    return _sample(spec, ref.start, ref.end, max_rows=sampling.max_rows, seed=sampling.seed,
                   stratify=sampling.stratify_by_label, file_ranges=None if ref.path else file_ranges)


def in_reference_period(config: Config, table: pa.Table) -> np.ndarray | None:
    """Which rows of a production window lie in the reference period (``reference.start <= ts <
    reference.end``): they are the reference's own data, so testing them for drift against the
    reference tests the reference against itself (a window that shares rows with the reference
    looks *more* alike than a fresh one, and an accumulating test reads the difference as drift).
    None when the reference is a separate dataset (``reference.path``) or the table has no
    timestamp column."""
    ref = config.reference
    ts = config.production.timestamp_column
    if ref.path is not None or ts not in table.column_names:
        return None
    column = table.column(ts)
    if not pa.types.is_timestamp(column.type):
        return None
    ticks = column.cast(pa.timestamp("us", tz=column.type.tz)).cast(pa.int64()).to_numpy(zero_copy_only=False)
    inside = np.ones(len(ticks), dtype=bool)
    if ref.start is not None:
        inside &= ticks >= _us(ref.start)
    if ref.end is not None:
        inside &= ticks < _us(ref.end)
    return inside


def reference_cache_key(config: Config, *, file_ranges: Mapping[str, list[int]] | None = None) -> str:
    """A cheap key of what :func:`load_reference` would return: the reference's files (path, size,
    modification time; for a time range of the production data, the files not known to lie outside
    it, from ``file_ranges``), the columns, the range and the sampling. Listing files opens none of
    them, so a cycle whose key is unchanged can reuse the stored reference table and its fingerprint
    instead of re-reading and re-hashing it."""
    ref = config.reference
    spec = _production_spec(config.production, path=ref.path) if ref.path else _production_spec(config.production)
    listing = _list_files(spec.path)
    lo = _us(_utc(ref.start)) if ref.start is not None else None
    hi = _us(_utc(ref.end)) if ref.end is not None else None
    h = hashlib.sha256(b"tasksim-reference-v1|")
    h.update(json.dumps([repr(spec), str(ref.start), str(ref.end), config.sampling.max_rows, config.sampling.seed,
                         config.sampling.stratify_by_label], default=str).encode())
    for f in listing.files:
        entry = f"{f.path}|{f.size}|{f.mtime}"
        span = (file_ranges or {}).get(entry) if not ref.path else None
        if span is not None and ((hi is not None and span[0] >= hi) or (lo is not None and span[1] < lo)):
            continue  # known to hold no reference row
        h.update(f"|{entry}".encode())
    return h.hexdigest()[:32]


def _source_spec(source: SourceConfig, shared_kind: str | None = None) -> _Spec:
    """``shared_kind``: the shared encoder's kind, which embeds a source that has no model of its
    own (None: not known here, so string features are let through to the encoder)."""
    kind = source.encoder.kind if source.encoder is not None else shared_kind
    return _Spec(
        path=str(source.path),
        feature_columns=tuple(source.feature_columns),
        text_column=source.text_column,
        label_column=source.label_column,
        timestamp_column=None,
        partitioning="hive",
        # Strings as features only make sense for the tabular encoder (one-hot categories).
        categorical_features=kind in (None, "tabular"),
        labels_required=True,
    )


def check_source_schema(source: SourceConfig, shared_kind: str | None = None) -> None:
    """``tasksim validate``'s look at a source's data: its files open as Parquet and hold every
    configured column with a usable type (schema only: one footer is read, no rows). A problem
    raises ``SourceError`` with one line naming the file and column. A model-only source (no
    ``path``) has nothing to check."""
    if source.path is None:
        return
    spec = _source_spec(source, shared_kind)
    try:
        dataset, _ = _open_dataset(spec.path, spec.partitioning)
        _check_schema(dataset.schema, spec)
    except DataError as exc:
        raise SourceError(source.name, str(exc)) from None


def check_production_schema(production: ProductionConfig, encoder_kind: str | None = None) -> None:
    """The production data's columns and types, as :func:`check_source_schema` (schema only;
    string features only for the ``tabular`` encoder when ``encoder_kind`` is given). Raises
    ``DataError`` naming the path and column."""
    spec = replace(_production_spec(production), categorical_features=encoder_kind in (None, "tabular"))
    dataset, _ = _open_dataset(spec.path, spec.partitioning, on_bad_file=spec.on_bad_file, skipped=[])
    _check_schema(dataset.schema, spec)


def load_source(source: SourceConfig, sampling: SamplingConfig) -> pa.Table:
    """A source's data, checked and sampled; any problem raises ``SourceError`` with one line."""
    spec = _source_spec(source)
    try:
        window = _sample(spec, None, None, max_rows=sampling.source_max_rows, seed=sampling.seed,
                         stratify=sampling.stratify_by_label)
    except DataError as exc:
        raise SourceError(source.name, str(exc)) from None
    except SourceError:
        raise
    except Exception as exc:  # noqa: BLE001 - anything unexpected still becomes one line for this source
        raise SourceError(source.name, f"{source.path}: {type(exc).__name__}: {_first_line(exc)}") from None
    if window.table.num_rows == 0:
        if window.total_rows == 0:
            raise SourceError(source.name, f"{source.path}: contains no rows")
        raise SourceError(source.name, f"{source.path}: no usable rows: all {window.total_rows} rows have "
                                       "null/NaN/Inf or blank-text inputs or labels, or lists of the wrong length")
    return window.table


# ----------------------------------------------------------------------------------------
# Fingerprints
# ----------------------------------------------------------------------------------------






