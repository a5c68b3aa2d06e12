"""The drift stage's policy (``DriftMonitor``): the reference model and calibrations cached per
reference and window-size bucket, the CUSUM state committed with the cycle, and late labels
re-tested when they arrive.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa

from tasksim.config import DriftConfig, InputColumns
from tasksim.drift.checks import Calibration, calibrate, calibration_rows, check_window
from tasksim.drift.columns import DriftConfigError, _column_frame, _is_numeric_scalar, _is_vector
from tasksim.drift.reference import RESIDUAL, ZERO_SHARE, DriftReference
from tasksim.drift.verdict import MIN_CALIBRATION_ROWS, DriftVerdict
from tasksim.errors import DataError

log = logging.getLogger(__name__)


class StateStore(Protocol):
    def get_state(self, key: str) -> str | None: ...

    def set_state(self, key: str, value: str) -> None: ...


def _scalar_inputs(table: pa.Table, columns: InputColumns, which: str) -> tuple[list[str], bool]:
    """Numeric scalar input columns of ``table`` and whether it has text/vector inputs."""
    scalars: list[str] = []
    vector_inputs = bool(columns.text_column)
    for name in columns.feature_columns:
        if name == columns.label_column:
            continue
        if name not in table.column_names:
            raise DataError(f"drift: {which} window has no input column {name!r}")
        t = table.schema.field(name).type
        if _is_numeric_scalar(t):
            scalars.append(name)
        elif _is_vector(t):
            vector_inputs = True
    return scalars, vector_inputs


def _table_labels(table: pa.Table, columns: InputColumns) -> list[str | None] | None:
    if not columns.label_column or columns.label_column not in table.column_names:
        return None
    return [None if v is None else str(v) for v in table.column(columns.label_column).to_pylist()]


class DriftMonitor:
    """The drift stage: reference model and calibrations cached, CUSUM carried across windows.

    - the :class:`DriftReference` (principal-component basis, kernel features, reference model)
      is fitted once per reference and cached as ``<cache_dir>/reference-<key>.npz`` (written
      atomically, read without pickle);
    - calibrations are cached in the store's state per reference and window-size bucket;
    - the CUSUM state comes back in ``state_updates`` for the caller to commit with the cycle
      (a failed cycle does not advance it).
    """

    def __init__(self, config: DriftConfig, columns: InputColumns, *, cache_dir: Path, state: StateStore,
                 seed: int = 0) -> None:
        self.config = config
        self.columns = columns
        self.cache_dir = Path(cache_dir)
        self.state = state
        self.seed = seed
        self.state_updates: dict[str, str] = {}

    def key(self, reference_key: str) -> str:
        payload = json.dumps([reference_key, self.config.model_dump(mode="json"), self.columns.model_dump(mode="json"),
                              self.seed, "drift-reference-v8"], sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:24]

    def reference(self, reference_table: pa.Table, reference_features: Any, reference_key: str) -> DriftReference:
        path = self.cache_dir / f"reference-{self.key(reference_key)}.npz"
        cached = _REFERENCES.get(str(path))
        if cached is not None:
            return cached
        if path.exists():
            try:
                ref = DriftReference.load(path)
            except (OSError, ValueError, KeyError) as exc:  # a damaged cache file is refitted, not fatal
                log.warning("drift: cannot read the cached reference model %s (%s); refitting", path, exc)
            else:
                _REFERENCES[str(path)] = ref
                return ref
        ref = self._fit(reference_table, reference_features)
        ref.save(path)
        _REFERENCES[str(path)] = ref
        return ref

    def _selected(self, scalars: list[str], vector_inputs: bool) -> tuple[list[str], int]:
        pcs = ([f"pc{i + 1}" for i in range(self.config.embedding_components)] + [RESIDUAL, ZERO_SHARE]
               if vector_inputs else [])
        candidates = scalars + pcs
        if self.config.columns is not None:
            unknown = [c for c in self.config.columns if c not in candidates]
            if unknown:
                raise DriftConfigError(f"drift.columns: {unknown} are not monitorable here; available: "
                                       f"{candidates[:40]}")
            selected = list(dict.fromkeys(self.config.columns))
        else:
            selected = candidates
        if self.config.max_columns is not None and len(selected) > self.config.max_columns:
            raise DriftConfigError(f"drift.max_columns: {len(selected)} columns are monitored but max_columns is "
                                   f"{self.config.max_columns}; raise it, list drift.columns, or remove the limit")
        return [c for c in selected if c in scalars], sum(c in pcs for c in selected)

    def _fit(self, table: pa.Table, features: Any) -> DriftReference:
        if table.num_rows == 0:
            raise DataError("drift: the reference window is empty")
        scalars, vector_inputs = _scalar_inputs(table, self.columns, "reference")
        chosen, n_pcs = self._selected(scalars, vector_inputs)
        frame = _column_frame(table, chosen, "reference")
        cfg = self.config
        ref = DriftReference.fit(frame, features if vector_inputs else None, _table_labels(table, self.columns),
                                 cfg, seed=self.seed)
        if vector_inputs and n_pcs < ref.pc_count:
            keep = [c for c in ref.columns if not c.startswith("pc")
                    or c in (self.config.columns or ())]
            ref.frame = ref.frame[keep]
        return ref

    def calibration(self, ref: DriftReference, window_rows: int, reference_key: str) -> Calibration | None:
        if ref.rows < 2 * MIN_CALIBRATION_ROWS or not self.config.calibrate:
            return None
        m = calibration_rows(window_rows, ref.rows)
        key = f"drift_calibration:{self.key(reference_key)}:{m}"
        cached = self.state.get_state(key)
        if cached:
            return Calibration.from_dict(json.loads(cached))
        cal = calibrate(ref, window_rows, self.config, seed=self.seed)
        self.state.set_state(key, json.dumps(cal.to_dict()))
        return cal

    def check(self, reference_table: pa.Table, reference_features: Any, current_table: pa.Table,
              current_features: Any, *, reference_key: str, update_cusum: bool = True) -> DriftVerdict:
        """The verdict for one window (the CUSUM update, if any, is left in ``state_updates``)."""
        if current_table.num_rows == 0:
            raise DataError("drift: the current window is empty")
        ref = self.reference(reference_table, reference_features, reference_key)
        cal = self.calibration(ref, current_table.num_rows, reference_key)
        scalars = _column_frame(current_table, list(ref.scalar_columns), "current")
        cusum_key = f"drift_ewma:{self.key(reference_key)}:{cal.window_rows if cal else 0}"
        # a re-test of a past window (late labels) does not read or move the running CUSUM
        stored = self.state.get_state(cusum_key) if self.config.cusum and update_cusum else None
        try:
            state = json.loads(stored) if stored else None
        except ValueError:  # a damaged entry restarts the accumulation, it does not fail the cycle
            state = None
        verdict, new_state = check_window(ref, cal, scalars, current_features if ref.pca_axes is not None else None,
                                          _table_labels(current_table, self.columns), self.config,
                                          cusum_state=state, seed=self.seed,
                                          uncalibrated=None if self.config.calibrate else
                                          "drift.calibrate is off (the input tests need calibrated thresholds)")
        if update_cusum and new_state and self.config.cusum:
            self.state_updates[cusum_key] = json.dumps(new_state)
        return verdict


#: Reference models already loaded in this process (keyed by cache path; the content is keyed by hash).
_REFERENCES: dict[str, DriftReference] = {}
