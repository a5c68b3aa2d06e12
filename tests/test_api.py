"""The Python API (tasksim.open / Monitor): the README's notebook example runs as written, and the typed
results agree with the store and the CLI's view of it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import tasksim
from tasksim.errors import ConfigError

README = Path(__file__).resolve().parent.parent / "README.md"


def _readme_example() -> str:
    text = README.read_text()
    block = re.search(r"<!-- notebook-example -->\s*```python\n(.*?)```\s*<!-- /notebook-example -->", text, re.DOTALL)
    assert block, "README.md has no notebook example between the markers"
    return block.group(1)


def test_readme_notebook_example_runs(tabular_workspace: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    code = _readme_example()
    assert '"demo-workspace/tasksim.yaml"' in code
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    example = code.replace('"demo-workspace/tasksim.yaml"', repr(str(tabular_workspace)))
    exec(compile(example, "README.md", "exec"), namespace)  # noqa: S102 - the README's own example
    cycle, ranking, table, decisions = (namespace[k] for k in ("cycle", "ranking", "table", "decisions"))
    assert isinstance(cycle, tasksim.CycleReport) and cycle.status == "success" and cycle.cycle_id == 1
    assert cycle.top_source == table.index[0] and list(table["rank"]) == [1, 2, 3]
    assert table.loc[cycle.top_source, "score"] == max(table["score"])
    assert "mmd2" in table.columns and cycle.raw["cycle_id"] == 1
    assert isinstance(ranking, tasksim.RankingResult) and ranking.rows > 0
    assert ranking.top_source in {"near", "moved", "far"} and ranking.to_pandas().index[0] == ranking.top_source
    # rank() recorded nothing: the history holds the one cycle that run() recorded
    assert list(decisions.index) == [1] and decisions.loc[1, "action"] == cycle.action
    assert (tmp_path / "report.html").stat().st_size > 1_000_000


def test_monitor_keeps_its_encoder_between_calls(tabular_workspace: Path) -> None:
    with tasksim.open(tabular_workspace) as monitor:
        first = monitor.run()
        encoder = monitor._encoder
        second = monitor.run()
        assert encoder is not None and monitor._encoder is encoder
        assert (first.cycle_id, second.cycle_id) == (1, 2)
        assert first.window_end == second.window_start  # sequential windows
        history = monitor.history()
    assert [d.cycle_id for d in history.decisions] == [2, 1] and len(history) == 2


def test_open_bad_config_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml"):
        tasksim.open(tmp_path / "nope.yaml")


def test_import_is_cheap_and_public_names_are_listed() -> None:
    import subprocess
    import sys

    code = ("import sys, tasksim; tasksim.Monitor; "
            "print(sorted(m for m in ('torch', 'pandas', 'evidently', 'prefect') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code],
                         check=True, capture_output=True, text=True).stdout.strip()
    assert out == "[]"
    assert set(tasksim.__all__) >= {"open", "Monitor", "CycleReport", "RankingResult", "History", "Decision"}
