"""Shared fixtures: a small synthetic tabular workspace (production stream + portfolio + config)."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
N_FEATURES = 6


def _domain(rng: np.random.Generator, n: int, shift: np.ndarray, label_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian classes: class k's mean is 2.5 * e_k plus a domain shift."""
    labels = rng.choice(len(label_weights), size=n, p=label_weights / label_weights.sum())
    x = rng.normal(size=(n, N_FEATURES)) + shift
    x[np.arange(n), labels] += 2.5
    return x.astype(np.float64), labels


def make_tabular_workspace(root: Path, *, windows: int = 4, rows_per_window: int = 300, shift_at: int = 2,
                           seed: int = 0, extra_sources: dict | None = None) -> Path:
    """A production stream whose domain moves from source 'near' to source 'moved' at ``shift_at``."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    before, after = np.zeros(N_FEATURES), np.r_[1.5, -1.0, 0.0, 0.0, 0.0, 0.0]
    balanced = np.ones(3)
    frames = []
    for w in range(windows):
        x, y = _domain(rng, rows_per_window, before if w < shift_at else after, balanced)
        ts = [T0 + timedelta(hours=w, seconds=int(s)) for s in rng.integers(0, 3600, rows_per_window)]
        frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(N_FEATURES)])
        frame["label"] = [f"class{v}" for v in y]
        frame["ts"] = pd.to_datetime(ts, utc=True)
        frames.append(frame)
    production = root / "production.parquet"
    pd.concat(frames, ignore_index=True).to_parquet(production, index=False)

    sources = {"near": (before, balanced), "moved": (after, balanced),
               "far": (np.full(N_FEATURES, 4.0), np.array([5.0, 1.0, 1.0]))}
    (root / "sources").mkdir(exist_ok=True)
    entries = []
    for name, (shift, weights) in sources.items():
        x, y = _domain(rng, 400, shift, weights)
        frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(N_FEATURES)])
        frame["label"] = [f"class{v}" for v in y]
        frame.to_parquet(root / "sources" / f"{name}.parquet", index=False)
        entries.append({"name": name, "path": f"sources/{name}.parquet", "label_column": "label",
                        "feature_columns": [f"f{i}" for i in range(N_FEATURES)], "licence": "mit",
                        "cost": 1.0})
    for name, entry in (extra_sources or {}).items():
        entries.append({"name": name, "label_column": "label",
                        "feature_columns": [f"f{i}" for i in range(N_FEATURES)], **entry})
    config = {
        "name": "synthetic",
        "state_dir": "state",
        "production": {"path": "production.parquet", "timestamp_column": "ts", "label_column": "label",
                       "feature_columns": [f"f{i}" for i in range(N_FEATURES)], "partitioning": None},
        "window": {"mode": "sequential", "length": "1h"},
        "reference": {"start": T0.isoformat(), "end": (T0 + timedelta(hours=1)).isoformat()},
        "sampling": {"max_rows": 1000, "source_max_rows": 1000, "seed": 0},
        "encoder": {"kind": "identity"},
        "sources": entries,
        "deployed_source": "near",
        "schedule": {"interval": "1h"},
        "drift": {"method": "ks", "drift_share": 0.25},
        "ranking": {"bootstrap_rounds": 20},
    }
    path = root / "tasksim.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture()
def tabular_workspace(tmp_path: Path) -> Path:
    return make_tabular_workspace(tmp_path / "ws")
