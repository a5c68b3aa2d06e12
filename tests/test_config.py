"""Config loading: valid files, and one clear line for each kind of bad input."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from tasksim.config import config_hash, load_config, parse_duration
from tasksim.errors import ConfigError

VALID = """
state_dir: state
production: {path: prod, timestamp_column: ts, feature_columns: [a, b], label_column: y}
reference: {end: 2026-01-01T00:00:00}
sources:
  - {name: s1, path: s1.parquet, feature_columns: [a, b], label_column: y, licence: mit, cost: 2}
  - {name: s2, path: /abs/s2.parquet, feature_columns: [a, b]}
deployed_source: s1
schedule: {interval: 30s}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tasksim.yaml"
    path.write_text(text)
    return path


def test_valid_config_resolves_relative_paths(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, VALID))
    assert config.state_dir == (tmp_path / "state").resolve()
    assert config.production.path == str((tmp_path / "prod").resolve())
    assert config.sources[1].path == "/abs/s2.parquet"
    assert config.schedule.interval == timedelta(seconds=30)
    assert config.metrics.host == "127.0.0.1" and config.metrics.port == 9108
    assert config.prefect.host == "127.0.0.1"


def test_config_is_frozen(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, VALID))
    with pytest.raises(Exception):
        config.deployed_source = "s2"  # type: ignore[misc]


def test_hash_changes_with_content(tmp_path: Path) -> None:
    a = load_config(write(tmp_path, VALID))
    b = load_config(write(tmp_path, VALID.replace("cost: 2", "cost: 3")))
    assert config_hash(a) != config_hash(b)
    assert config_hash(a) == config_hash(load_config(write(tmp_path, VALID)))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (VALID.replace("deployed_source: s1", "deployed_source: nope"), "deployed_source: 'nope' is not one of"),
        (VALID.replace("  - {name: s1, path: s1.parquet,", "  - {name: s1,"),
         "sources[0]: path: give the source's dataset (path), its model (encoder), or both"),
        (VALID.replace("interval: 30s", "interval: soon"), "schedule.interval: expected a duration"),
        (VALID.replace("schedule: {interval: 30s}", "schedule: {interval: 30s, cron: '* * * * *'}"),
         "exactly one of interval or cron"),
        (VALID.replace("cost: 2", "cost: -1"), "sources[0].cost: Input should be greater than or equal to 0"),
        (VALID.replace("name: s2", "name: s1"), "names must be unique"),
        (VALID + "\nunknown_key: 1\n", "unknown_key: Extra inputs are not permitted"),
        (VALID.replace("timestamp_column: ts,", ""), "production.timestamp_column: Field required"),
        ("production: [1, 2", "invalid YAML at line"),
        (VALID + "\nranking: {weights: {logme: 1, lgome: 2}}\n", "ranking.weights: unknown criteria ['lgome']; "
         "known: cost, coverage,"),
        ("- just\n- a list\n", "expected a YAML mapping"),
        (VALID + "\ndrift: {reference_delta: 0.7}\n", "drift.reference_delta: Input should be less than 0.5"),
    ],
)
def test_bad_config_gives_one_line(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    message = str(info.value)
    assert expected in message
    assert "\n" not in message
    assert str(tmp_path / "tasksim.yaml") in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_cli_bad_config_exit_code_2_without_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("deployed_source: s1", "deployed_source: nope"))
    proc = subprocess.run([sys.executable, "-m", "tasksim.cli", "run", "--config", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [f"tasksim: error: {path}: deployed_source: 'nope' is not one of the sources ['s1', 's2']"]


def test_cli_missing_config_exit_code_2(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "tasksim.cli", "validate", "--config", str(tmp_path / "x.yaml")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "config file not found" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), (90, 90), ("1.5m", 90), ("2h", 7200), ("500ms", 0.5)])
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("bad", ["0", "-1s", "1y", "", None, True])
def test_parse_duration_rejects(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)
