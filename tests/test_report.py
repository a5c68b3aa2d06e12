"""The HTML report (tasksim/report.py, ``tasksim report``): content, read-only use of the store, bad input,
and a real render in headless Chromium (Debian's ``chromium``; skipped when it is not installed) that
checks every plot draws, no script error or console error occurs with the network unreachable, and keeps
a screenshot (``$TASKSIM_ARTIFACTS_DIR`` or the test's tmp dir)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasksim.errors import StoreError
from tasksim.report import load_report_data, render_report, write_report
from tasksim.store import STORE_FILENAME, CycleRecord, SourceRecord, Store

SOURCES = ("near", "moved", "far")


def _drift(share: float, detected: bool) -> dict:
    columns = [{"column": f"f{i}", "score": 0.01 if i < share * 4 else 0.6, "threshold": 0.05,
                "drifted": i < share * 4, "method": "ks"} for i in range(4)]
    return {"detected": detected, "share": share, "columns": columns, "method": "ks", "reference_rows": 300,
            "current_rows": 300}


def _fill(state_dir: Path) -> None:
    """Four cycles: two calm ones with 'near' best, a no_data one, then a shift where 'moved' wins."""
    with Store(state_dir) as store:
        for i, (status, best, share) in enumerate([("success", "near", 0.0), ("success", "near", 0.25),
                                                   ("no_data", None, None), ("success", "moved", 0.5)]):
            t = 1_700_000_000 + 3600 * i
            sources: tuple[SourceRecord, ...] = ()
            decision = None
            if status == "success":
                order = [best, *[s for s in SOURCES if s != best]]
                sources = tuple(SourceRecord(source=s, status="ok", score=1.0 - 0.4 * r, rank=r + 1,
                                             top1_probability=1.0 if r == 0 else 0.0,
                                             similarity={"mmd2": 0.1 * (r + 1), "logme": 1.0 - r, "knn_accuracy": 0.9})
                                for r, s in enumerate(order))
                action = "keep" if best == "near" else "switch"
                decision = {"deployed_source": "near", "recommended_source": best, "action": action,
                            "rationale": f"'{best}' <scores> best & {action}",
                            "fine_tune": {"strategy": "lp_ft", "trainable": "all", "learning_rate": 1e-4,
                                          "weight_decay": 0.01, "regularisation": "L2-SP", "adapters": False,
                                          "reasons": ["a reason"]}}
            store.record_cycle(CycleRecord(
                started_at=t, finished_at=t + 5 + i, status=status, config_hash="h",
                window_start=f"2026-01-01T0{i}:00:00+00:00", window_end=f"2026-01-01T0{i + 1}:00:00+00:00",
                drift=None if share is None else _drift(share, share >= 0.5), sources=sources, decision=decision))


@pytest.fixture()
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    _fill(path)
    return path


def test_report_data_as_of_a_cycle(state_dir: Path) -> None:
    latest = load_report_data(state_dir)
    assert latest.cycle_id == 4 and latest.ranking_cycle_id == 4
    assert list(latest.profile) == ["moved", "near", "far"]  # rank order
    assert latest.decision["action"] == "switch" and latest.decision["cycle_id"] == 4
    # as of cycle 3 (no_data): the last ranking and decision before it stand
    as_of_3 = load_report_data(state_dir, cycle=3)
    assert as_of_3.cycle_id == 3 and as_of_3.ranking_cycle_id == 2
    assert as_of_3.decision["action"] == "keep" and [c["id"] for c in as_of_3.cycles] == [1, 2, 3]
    assert {r["cycle_id"] for r in as_of_3.ranks} == {1, 2}


def test_report_page_is_self_contained_and_escaped(state_dir: Path, tmp_path: Path) -> None:
    page = render_report(load_report_data(state_dir))
    assert page.count('class="plotly-graph-div') == 5
    for div in ("plot-ranking", "plot-rank-history", "plot-profile", "plot-drift-share", "plot-drift-columns"):
        assert f'id="{div}"' in page
    # nothing loaded from elsewhere: no external script, stylesheet, image or frame
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=", page)
    assert "&#x27;moved&#x27; &lt;scores&gt; best &amp; switch" in page  # the rationale, escaped
    assert "<scores>" not in page


def test_report_reads_the_store_read_only(state_dir: Path, tmp_path: Path) -> None:
    store_file = state_dir / STORE_FILENAME
    before = store_file.read_bytes()
    os.chmod(state_dir, 0o555)  # no journal or WAL file could be created either
    try:
        out = write_report(state_dir, tmp_path / "out" / "r.html", cycle=2)
    finally:
        os.chmod(state_dir, 0o755)
    assert out.exists() and "cycle #2" in out.read_text()
    assert store_file.read_bytes() == before


def test_report_bad_input_names_the_problem(tmp_path: Path, state_dir: Path) -> None:
    with pytest.raises(StoreError, match=r"tasksim\.sqlite: no state store"):
        load_report_data(tmp_path / "nowhere")
    with pytest.raises(StoreError, match=r"--cycle 99: no such cycle .*1 to 4"):
        load_report_data(state_dir, cycle=99)


def test_report_cli_exit_codes(state_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "tasksim.yaml"
    config.write_text(
        "name: r\nstate_dir: state\nproduction: {path: p.parquet, timestamp_column: ts, feature_columns: [f0]}\n"
        "reference: {start: 2026-01-01T00:00:00, end: 2026-01-01T01:00:00}\n"
        "sources: [{name: near, path: s.parquet, feature_columns: [f0]}]\ndeployed_source: near\n")
    cmd = [sys.executable, "-m", "tasksim.cli", "report", "--config", str(config)]
    ok = subprocess.run([*cmd, "--out", str(tmp_path / "r.html")], check=False, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "r.html").stat().st_size > 1_000_000  # plotly.js is embedded
    bad = subprocess.run([*cmd, "--cycle", "7", "--out", str(tmp_path / "x.html")], check=False, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("tasksim: error: --cycle 7: no such cycle")
    assert not (tmp_path / "x.html").exists()


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    pytest.skip("Debian's chromium is not installed (make test installs it when run as root)")


def test_report_renders_in_headless_chromium(state_dir: Path, tmp_path: Path) -> None:
    browser = _chromium()
    page = write_report(state_dir, tmp_path / "report.html")
    artifacts = Path(os.environ.get("TASKSIM_ARTIFACTS_DIR", tmp_path))
    artifacts.mkdir(parents=True, exist_ok=True)
    screenshot = artifacts / "report.png"
    base = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
            f"--user-data-dir={tmp_path / 'profile'}", "--host-resolver-rules=MAP * ~NOTFOUND",  # no network
            "--virtual-time-budget=15000", "--enable-logging=stderr", "--v=0"]
    url = page.resolve().as_uri()
    dom = subprocess.run([*base, "--dump-dom", url], check=False, capture_output=True, text=True, timeout=180)
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", dom.stdout)
    assert body, dom.stdout[:500]
    attrs = dict(re.findall(r'data-(plots|errors)="([^"]*)"', body.group(1)))
    assert attrs.get("plots") == "5", f"plots drawn: {attrs.get('plots')} of 5"
    assert json.loads(attrs["errors"].replace("&quot;", '"')) == []
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line and ("rror" in line or "Uncaught" in line)]
    assert console == [], console
    shot = subprocess.run([*base, "--window-size=1280,3000", f"--screenshot={screenshot}", url], check=False,
                          capture_output=True, text=True, timeout=180)
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert screenshot.stat().st_size > 50_000  # a drawn page, not a blank one
    print(f"screenshot: {screenshot} ({time.ctime()})")


SUMMARY = {
    "cycle_id": 7, "status": "success", "error": None, "duration_seconds": 12.34, "device": "cpu",
    "window": {"start": "2025-01-06T05:00:00+00:00", "end": "2025-01-06T06:00:00+00:00", "rows_total": 100,
               "rows_sampled": 100, "rows_dropped_invalid": 0},
    "drift": _drift(0.5, True),
    "sources": [{"source": "moved", "status": "ok", "error": None, "measures": {"logme": 1.5, "mmd2": 0.01}},
                {"source": "near", "status": "ok", "error": None, "measures": {"logme": 0.5, "mmd2": float("nan")}},
                {"source": "far", "status": "failed", "error": "cannot read x.parquet", "measures": {}}],
    "ranking": [{"rank": 1, "source": "moved", "score": 0.9, "top1_probability": 0.95, "flags": []},
                {"rank": 2, "source": "near", "score": 0.4, "top1_probability": 0.05, "flags": ["low_confidence"]}],
    "recommendation": {"action": "switch", "deployed_source": "near", "recommended_source": "moved",
                       "rationale": "moved is better", "fine_tune": None},
}


def test_cycle_line_names_window_verdict_top_action_and_duration() -> None:
    from tasksim.report import cycle_line

    line = cycle_line(SUMMARY)
    assert line == ("cycle 7: window 2025-01-06 05:00 | DRIFT (share 0.50) | top moved | SWITCH near -> moved | "
                    "12.3s")
    no_data = cycle_line({**SUMMARY, "status": "no_data", "error": "the stream is used up", "ranking": None})
    assert no_data == "cycle 7: window 2025-01-06 05:00 | no_data: the stream is used up | 12.3s"


def test_cycle_markdown_and_table() -> None:
    from tasksim.report import artifact_key, cycle_markdown, cycle_table

    rows = cycle_table(SUMMARY)
    assert [r["source"] for r in rows] == ["moved", "near", "far"]
    assert rows[1]["mmd2"] is None and rows[0]["logme"] == 1.5  # NaN is not put in the table
    assert rows[2]["flags"] == "failed: cannot read x.parquet"
    md = cycle_markdown(SUMMARY, "Support.Bot")
    assert md.startswith("# tasksim Support.Bot: cycle 7 (success)")
    assert "## Recommendation: **switch**" in md and "| 1 | moved | 0.9 | 0.95 |" in md
    assert "- drifted columns: f0, f1" in md
    assert artifact_key("Support.Bot_v2", "summary") == "tasksim-support-bot-v2-summary"
