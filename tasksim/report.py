"""A report for people: one self-contained HTML page from the state store (``tasksim report``).

The page shows, up to a chosen cycle (default: the latest):

* the recommendation of that cycle with its rationale and fine-tuning plan;
* the ranking of that cycle (composite score, top-1 probability) and the rank of every source over
  the cycles before it;
* the profile of every source as a heatmap (each measure scaled to [0, 1] across sources, raw values
  on hover);
* drift over time: the share of drifted columns and, per monitored column, the drift statistic
  against its threshold, drifted cells marked.

The store is opened read-only (SQLite ``mode=ro``): a report never writes state, and can be made
while the daemon runs. Plotly draws the charts; its JavaScript is embedded once in the page, and
nothing is fetched from the network when the page is opened.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tasksim.errors import StoreError
from tasksim.store import STORE_FILENAME

__all__ = ["ReportData", "artifact_key", "cycle_line", "cycle_markdown", "cycle_table", "load_report_data",
           "recorded_cycles", "render_report", "write_report"]

# history shown in the charts: the last MAX_CYCLES cycles up to the chosen one
MAX_CYCLES = 500


@dataclass(frozen=True)
class ReportData:
    """What the page shows, read from the store in one read-only transaction."""

    store_path: Path
    cycle_id: int  # the cycle the page is "as of"
    cycles: list[dict[str, Any]]  # id, status, window_start, window_end, duration_seconds, drift (oldest first)
    ranks: list[dict[str, Any]]  # cycle_id, source, status, score, rank, top1_probability (oldest first)
    ranking_cycle_id: int | None  # the newest cycle <= cycle_id with a ranking
    profile: dict[str, dict[str, float]] = field(default_factory=dict)  # source -> measure -> value
    source_status: dict[str, dict[str, Any]] = field(default_factory=dict)  # source -> status, error, score...
    decision: dict[str, Any] | None = None  # the newest decision <= cycle_id


def _connect_read_only(state_dir: Path) -> sqlite3.Connection:
    path = state_dir / STORE_FILENAME
    if not path.is_file():
        raise StoreError(f"{path}: no state store (run a cycle first: tasksim run --config ...)")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30.0)
        conn.row_factory = sqlite3.Row
        conn.execute("SELECT 1 FROM cycles LIMIT 1")
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: cannot read the state store ({exc})") from None
    return conn


def load_report_data(state_dir: str | Path, *, cycle: int | None = None) -> ReportData:
    """Read everything the report shows, as of ``cycle`` (default: the latest cycle)."""
    state_dir = Path(state_dir)
    conn = _connect_read_only(state_dir)
    try:
        conn.execute("BEGIN")
        latest = conn.execute("SELECT MAX(id) AS c FROM cycles").fetchone()["c"]
        if latest is None:
            raise StoreError(f"{state_dir / STORE_FILENAME}: no cycle recorded yet (run a cycle first)")
        if cycle is None:
            cycle = int(latest)
        elif conn.execute("SELECT 1 FROM cycles WHERE id = ?", (cycle,)).fetchone() is None:
            raise StoreError(f"--cycle {cycle}: no such cycle in {state_dir / STORE_FILENAME} "
                             f"(cycles run from 1 to {latest})")
        cycles = [
            {"id": r["id"], "status": r["status"], "window_start": r["window_start"], "window_end": r["window_end"],
             "duration_seconds": r["finished_at"] - r["started_at"], "finished_at": r["finished_at"],
             "drift": json.loads(r["drift_json"]) if r["drift_json"] else None}
            for r in conn.execute("SELECT * FROM (SELECT * FROM cycles WHERE id <= ? ORDER BY id DESC LIMIT ?)"
                                  " ORDER BY id", (cycle, MAX_CYCLES))
        ]
        first = cycles[0]["id"]
        ranks = [dict(r) for r in conn.execute(
            "SELECT cycle_id, source, status, score, rank, top1_probability FROM source_results"
            " WHERE cycle_id BETWEEN ? AND ? ORDER BY cycle_id, source", (first, cycle))]
        row = conn.execute("SELECT MAX(cycle_id) AS c FROM source_results WHERE cycle_id <= ? AND status = 'ok'"
                           " AND rank IS NOT NULL", (cycle,)).fetchone()
        ranking_cycle = None if row["c"] is None else int(row["c"])
        profile: dict[str, dict[str, float]] = {}
        status: dict[str, dict[str, Any]] = {}
        if ranking_cycle is not None:
            for r in conn.execute("SELECT * FROM source_results WHERE cycle_id = ? ORDER BY COALESCE(rank, 1e9),"
                                  " source", (ranking_cycle,)):
                profile[r["source"]] = {k: v for k, v in json.loads(r["similarity_json"]).items()
                                        if isinstance(v, (int, float)) and not isinstance(v, bool)}
                status[r["source"]] = {"status": r["status"], "error": r["error"], "score": r["score"],
                                       "rank": r["rank"], "top1_probability": r["top1_probability"]}
        drow = conn.execute("SELECT cycle_id, record_json FROM decisions WHERE cycle_id <= ? ORDER BY id DESC"
                            " LIMIT 1", (cycle,)).fetchone()
        decision = None
        if drow is not None:
            decision = json.loads(drow["record_json"])
            decision["cycle_id"] = drow["cycle_id"]
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        raise StoreError(f"{state_dir / STORE_FILENAME}: cannot read the state store ({exc})") from None
    finally:
        conn.close()
    return ReportData(store_path=state_dir / STORE_FILENAME, cycle_id=cycle, cycles=cycles, ranks=ranks,
                      ranking_cycle_id=ranking_cycle, profile=profile, source_status=status, decision=decision)


# -- figures ------------------------------------------------------------------------------------

def _finite(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def _cycle_label(c: dict[str, Any]) -> str:
    return f"#{c['id']} {c['window_start'][:16].replace('T', ' ') if c.get('window_start') else ''}".strip()


def _ranking_figure(data: ReportData) -> Any:
    import plotly.graph_objects as go

    ok = [(s, v) for s, v in data.source_status.items() if v["status"] == "ok" and v["score"] is not None]
    ok.sort(key=lambda item: item[1]["rank"] or 1e9)
    names = [s for s, _ in ok]
    fig = go.Figure(go.Bar(
        x=[v["score"] for _, v in ok], y=names, orientation="h", name="composite score",
        text=[f"rank {v['rank']}" + (f", P(best) {v['top1_probability']:.2f}" if v["top1_probability"] is not None
                                     else "") for _, v in ok],
        textposition="auto", marker_color=["#d62728" if data.decision and s == data.decision.get("deployed_source")
                                           else "#1f77b4" for s in names]))
    fig.update_layout(title=f"Ranking at cycle #{data.ranking_cycle_id} (red: deployed)", xaxis_title="composite "
                      "score (higher is better)", yaxis={"autorange": "reversed"}, height=120 + 28 * len(ok),
                      margin={"l": 160, "r": 20, "t": 50, "b": 40})
    return fig


def _rank_history_figure(data: ReportData) -> Any:
    import plotly.graph_objects as go

    labels = {c["id"]: _cycle_label(c) for c in data.cycles}
    fig = go.Figure()
    for source in sorted({r["source"] for r in data.ranks}):
        rows = [r for r in data.ranks if r["source"] == source and r["rank"] is not None]
        fig.add_trace(go.Scatter(x=[labels.get(r["cycle_id"], str(r["cycle_id"])) for r in rows],
                                 y=[r["rank"] for r in rows], mode="lines+markers", name=source,
                                 customdata=[r["score"] for r in rows],
                                 hovertemplate=source + "<br>%{x}<br>rank %{y}<br>score %{customdata:.3f}"
                                                        "<extra></extra>"))
    fig.update_layout(title="Rank per cycle (1 = best)", yaxis={"autorange": "reversed", "dtick": 1},
                      xaxis_title="cycle (window start)", height=380, margin={"t": 50})
    return fig


def _profile_figure(data: ReportData) -> Any:
    import plotly.graph_objects as go

    sources = list(data.profile)
    measures = sorted({m for p in data.profile.values() for m in p})
    raw = [[_finite(data.profile[s].get(m)) for m in measures] for s in sources]
    scaled: list[list[float | None]] = [[None] * len(measures) for _ in sources]
    for j in range(len(measures)):
        col = [raw[i][j] for i in range(len(sources)) if raw[i][j] is not None]
        lo, hi = (min(col), max(col)) if col else (0.0, 0.0)
        for i in range(len(sources)):
            v = raw[i][j]
            scaled[i][j] = None if v is None else (0.5 if hi == lo else (v - lo) / (hi - lo))
    text = [["n/a" if v is None else f"{v:.4g}" for v in row] for row in raw]
    fig = go.Figure(go.Heatmap(z=scaled, x=measures, y=sources, text=text, colorscale="Viridis", zmin=0, zmax=1,
                               colorbar={"title": "scaled"},
                               hovertemplate="%{y}<br>%{x} = %{text}<extra></extra>"))
    fig.update_layout(title=f"Source profiles at cycle #{data.ranking_cycle_id} (each measure scaled across "
                      "sources; raw value on hover; directions differ per measure, see docs/decisions.md)",
                      height=300 + 40 * len(sources), margin={"l": 160, "b": 140, "t": 60},
                      xaxis={"tickangle": -45})
    return fig


def _drift_figures(data: ReportData) -> list[Any]:
    import plotly.graph_objects as go

    with_drift = [c for c in data.cycles if c["drift"]]
    labels = [_cycle_label(c) for c in with_drift]
    share = go.Figure()
    share.add_trace(go.Scatter(x=labels, y=[c["drift"].get("share") for c in with_drift], mode="lines+markers",
                               name="drifted share"))
    share.add_trace(go.Scatter(x=labels, y=[1 if c["drift"].get("detected") else 0 for c in with_drift],
                               mode="markers", name="drift detected (1/0)", marker={"symbol": "x", "size": 10}))
    share.update_layout(title="Share of monitored columns that drifted, and the verdict",
                        yaxis={"range": [-0.05, 1.05]}, height=340, margin={"t": 50})
    columns = sorted({col["column"] for c in with_drift for col in c["drift"].get("columns", [])})
    z: list[list[float | None]] = []
    text: list[list[str]] = []
    for name in columns:
        zr, tr = [], []
        for c in with_drift:
            col = next((x for x in c["drift"].get("columns", []) if x["column"] == name), None)
            zr.append(None if col is None else (1.0 if col["drifted"] else 0.0))
            tr.append("" if col is None else f"{col['method']} {col['score']:.3g} vs {col['threshold']:.3g}"
                      + (" DRIFT" if col["drifted"] else ""))
        z.append(zr)
        text.append(tr)
    per_column = go.Figure(go.Heatmap(z=z, x=labels, y=columns, text=text, zmin=0, zmax=1, showscale=False,
                                      colorscale=[[0, "#e8f1fa"], [1, "#d62728"]], xgap=1, ygap=1,
                                      hovertemplate="%{y}<br>%{x}<br>%{text}<extra></extra>"))
    per_column.update_layout(title="Drift per column over time (red: drifted; statistic and threshold on hover)",
                             height=160 + 22 * len(columns), margin={"l": 140, "t": 50})
    return [share, per_column]


# -- page --------------------------------------------------------------------------------------

# Collects script errors and console.error calls so that a test (or a person) can see them.
_ERROR_PROBE = """<script>
window.__tasksimErrors = [];
window.addEventListener('error', function (e) { window.__tasksimErrors.push(String(e.message)); });
(function () { var orig = console.error; console.error = function () {
  window.__tasksimErrors.push(Array.prototype.join.call(arguments, ' '));
  return orig.apply(console, arguments); }; })();
window.addEventListener('load', function () { setTimeout(function () {
  var drawn = Array.prototype.filter.call(document.querySelectorAll('.js-plotly-plot'),
    function (d) { return d.querySelector('.main-svg .trace, .main-svg .hm') !== null; });
  document.body.setAttribute('data-plots', String(drawn.length));
  document.body.setAttribute('data-errors', JSON.stringify(window.__tasksimErrors)); }, 0); });
</script>"""

_STYLE = """<style>
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { margin-bottom: 0.2em; } .meta { color: #666; } .card { border: 1px solid #ddd; border-radius: 6px;
padding: 1em 1.4em; margin: 1em 0; } .switch { border-left: 6px solid #d62728; }
.keep { border-left: 6px solid #2ca02c; }
.insufficient_data { border-left: 6px solid #999; } table { border-collapse: collapse; } td, th { padding: 2px 10px;
text-align: left; border-bottom: 1px solid #eee; }
</style>"""


def _recommendation_html(data: ReportData) -> str:
    d = data.decision
    if d is None:
        return '<div class="card"><h2>Recommendation</h2><p>No decision recorded up to this cycle.</p></div>'
    e = html.escape
    action = str(d.get("action", ""))
    parts = [(f'<div class="card {e(action)}" id="recommendation"><h2>Recommendation (cycle #{d["cycle_id"]}): '
              f'<b>{e(action)}</b></h2>'),
             (f'<p>deployed <b>{e(str(d.get("deployed_source")))}</b>, recommended '
              f'<b>{e(str(d.get("recommended_source")))}</b></p>'),
             f'<p id="rationale">{e(str(d.get("rationale", "")))}</p>']
    plan = d.get("fine_tune")
    if plan:
        parts.append(f'<p>Fine-tuning plan: <b>{e(str(plan.get("strategy")))}</b>, trainable: '
                     f'{e(str(plan.get("trainable")))}, learning rate {e(str(plan.get("learning_rate")))}, '
                     f'weight decay {e(str(plan.get("weight_decay")))}, regularisation: '
                     f'{e(str(plan.get("regularisation")))}{", adapters" if plan.get("adapters") else ""}</p>')
        if plan.get("reasons"):
            parts.append("<ul>" + "".join(f"<li>{e(str(r))}</li>" for r in plan["reasons"]) + "</ul>")
    failed = [(s, v) for s, v in data.source_status.items() if v["status"] != "ok"]
    if failed:
        parts.append("<p>Not ranked: " + "; ".join(f"{e(s)} ({e(v['status'])}: {e(str(v['error'] or ''))})"
                                                   for s, v in failed) + "</p>")
    parts.append("</div>")
    return "".join(parts)


def _cycles_table(data: ReportData, last: int = 15) -> str:
    e = html.escape
    rows = []
    for c in reversed(data.cycles[-last:]):
        drift = c["drift"]
        verdict = "" if drift is None else ("drift" if drift.get("detected") else "no drift") + \
            f" ({drift.get('share', 0):.2f})"
        rows.append(f"<tr><td>#{c['id']}</td><td>{e(c['window_start'] or '')}</td><td>{e(c['status'])}</td>"
                    f"<td>{e(verdict)}</td><td>{c['duration_seconds']:.1f} s</td></tr>")
    return ('<div class="card"><h2>Recent cycles</h2><table><tr><th>cycle</th><th>window start</th><th>status</th>'
            "<th>drift</th><th>duration</th></tr>" + "".join(rows) + "</table></div>")


def render_report(data: ReportData) -> str:
    """The page as one HTML string, plotly.js embedded."""
    from plotly.offline import get_plotlyjs

    figures: list[tuple[str, Any]] = []
    if data.profile:
        figures += [("ranking", _ranking_figure(data)), ("rank-history", _rank_history_figure(data)),
                    ("profile", _profile_figure(data))]
    if any(c["drift"] for c in data.cycles):
        share, per_column = _drift_figures(data)
        figures += [("drift-share", share), ("drift-columns", per_column)]
    divs = [fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"plot-{name}",
                        config={"displaylogo": False, "responsive": True}) for name, fig in figures]
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    window = next((c for c in data.cycles if c["id"] == data.cycle_id), {})
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>tasksim report, cycle #{data.cycle_id}</title>", _ERROR_PROBE, _STYLE,
        f'<script type="text/javascript">{get_plotlyjs()}</script>', "</head><body>",
        f"<h1>tasksim report: cycle #{data.cycle_id}</h1>",
        (f'<p class="meta">store {html.escape(str(data.store_path))}; window '
         f'{html.escape(str(window.get("window_start")))} to {html.escape(str(window.get("window_end")))}; '
         f"{len(data.cycles)} cycles shown; generated {generated}</p>"),
        _recommendation_html(data),
        *(divs or ['<div class="card"><p>No ranking or drift result recorded up to this cycle.</p></div>']),
        _cycles_table(data),
        "</body></html>",
    ])


def write_report(state_dir: str | Path, out: str | Path, *, cycle: int | None = None) -> Path:
    """Write the report for ``state_dir`` as of ``cycle`` to ``out`` (atomically); return the path."""
    out = Path(out)
    page = render_report(load_report_data(state_dir, cycle=cycle))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    return out


# -- one cycle in words: the Prefect artifacts and the demo's terminal line ----------------------

def artifact_key(name: str, kind: str) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes) for deployment ``name``."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "tasksim"
    return f"tasksim-{slug}-{kind}"


def _verdict(summary: dict[str, Any]) -> str:
    drift = summary.get("drift")
    if not drift:
        return "no drift result"
    if drift.get("tested") is False:
        return "not tested (reference period)" if "reference period" in " ".join(drift.get("notes") or []) \
            else "not tested"
    return f"{'DRIFT' if drift.get('detected') else 'no drift'} (share {drift.get('share', 0):.2f})"


def cycle_line(summary: dict[str, Any]) -> str:
    """One terminal line for a cycle summary (``CycleResult.to_dict()``): window, drift verdict, top
    source, action, duration."""
    window = summary.get("window") or {}
    start = (window.get("start") or "-")[:16].replace("T", " ")
    ranking = summary.get("ranking") or []
    top = ranking[0]["source"] if ranking else "-"
    rec = summary.get("recommendation") or {}
    action = rec.get("action", "-")
    if action == "switch":
        action = f"SWITCH {rec.get('deployed_source')} -> {rec.get('recommended_source')}"
    status = summary.get("status", "?")
    head = f"cycle {summary.get('cycle_id')}: window {start}"
    if status != "success":
        note = f": {summary['error']}" if summary.get("error") else ""
        return f"{head} | {status}{note} | {summary.get('duration_seconds', 0):.1f}s"
    return (f"{head} | {_verdict(summary)} | top {top} | {action} | "
            f"{summary.get('duration_seconds', 0):.1f}s")


def cycle_table(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The ranking of one cycle as table rows (the Prefect table artifact)."""
    sources = {s["source"]: s for s in summary.get("sources", [])}
    rows = []
    for r in summary.get("ranking") or []:
        measures = sources.get(r["source"], {}).get("measures", {})
        row = {"rank": r["rank"], "source": r["source"], "score": round(r["score"], 4),
               "top1_probability": r.get("top1_probability"), "flags": ", ".join(r.get("flags", []))}
        for key in ("logme", "knn_accuracy", "mmd2", "label_shift"):
            value = _finite(measures.get(key))
            row[key] = None if value is None else round(value, 4)
        rows.append(row)
    for name, s in sources.items():
        if s.get("status") != "ok":
            rows.append({"rank": None, "source": name, "score": None, "top1_probability": None,
                         "flags": f"{s.get('status')}: {s.get('error')}"})
    return rows


def cycle_markdown(summary: dict[str, Any], name: str) -> str:
    """A markdown summary of one cycle (the Prefect markdown artifact)."""
    window = summary.get("window") or {}
    lines = [f"# tasksim {name}: cycle {summary.get('cycle_id')} ({summary.get('status')})", "",
             (f"- window: {window.get('start')} .. {window.get('end')}, {window.get('rows_sampled', 0)} rows "
              f"sampled of {window.get('rows_total', 0)}"),
             f"- drift: {_verdict(summary)}",
             f"- duration: {summary.get('duration_seconds', 0):.1f} s on {summary.get('device')}"]
    drift = summary.get("drift") or {}
    drifted = [c["column"] for c in drift.get("columns", []) if c.get("drifted")]
    if drifted:
        lines.append(f"- drifted columns: {', '.join(drifted[:20])}" + (" ..." if len(drifted) > 20 else ""))
    if summary.get("error"):
        lines.append(f"- note: {summary['error']}")
    rec = summary.get("recommendation")
    if rec:
        lines += ["", f"## Recommendation: **{rec['action']}**", "",
                  f"deployed `{rec['deployed_source']}`, recommended `{rec['recommended_source']}`", "",
                  str(rec.get("rationale", ""))]
        plan = rec.get("fine_tune")
        if plan:
            lines += ["", (f"Fine-tune: {plan['strategy']} ({plan['trainable']}), learning rate "
                           f"{plan['learning_rate']:g}, weight decay {plan['weight_decay']:g}")]
    table = cycle_table(summary)
    if table:
        lines += ["", "## Ranking", "", "| rank | source | score | P(best) |", "| --- | --- | --- | --- |"]
        lines += [f"| {r['rank'] if r['rank'] is not None else '-'} | {r['source']} | "
                  f"{'-' if r['score'] is None else r['score']} | "
                  f"{'-' if r['top1_probability'] is None else r['top1_probability']} |" for r in table]
    return "\n".join(lines) + "\n"


def recorded_cycles(state_dir: str | Path, *, after: int = 0) -> list[dict[str, Any]]:
    """Cycles with id > ``after`` from the store (read-only), oldest first, each as the subset of a
    cycle summary that ``cycle_line`` reads. An absent store gives []."""
    if not (Path(state_dir) / STORE_FILENAME).is_file():
        return []
    conn = _connect_read_only(Path(state_dir))
    try:
        rows = conn.execute("SELECT c.*, d.record_json FROM cycles c LEFT JOIN decisions d ON d.cycle_id = c.id"
                            " WHERE c.id > ? ORDER BY c.id", (after,)).fetchall()
    except sqlite3.Error as exc:
        raise StoreError(f"{Path(state_dir) / STORE_FILENAME}: cannot read the state store ({exc})") from None
    finally:
        conn.close()
    out = []
    for r in rows:
        decision = json.loads(r["record_json"]) if r["record_json"] else None
        out.append({
            "cycle_id": r["id"], "status": r["status"], "error": r["error"],
            "duration_seconds": r["finished_at"] - r["started_at"],
            "window": {"start": r["window_start"], "end": r["window_end"]},
            "drift": json.loads(r["drift_json"]) if r["drift_json"] else None,
            "ranking": (decision or {}).get("ranking"),
            "recommendation": None if decision is None else {
                k: decision.get(k) for k in ("action", "deployed_source", "recommended_source", "rationale",
                                            "details")},
        })
    return out
