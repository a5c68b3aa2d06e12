#!/usr/bin/env python3
"""Generate the tasksim Grafana dashboards from plain Python dicts.

    python grafana/build_dashboards.py           # (re)write grafana/dashboards/*.json
    python grafana/build_dashboards.py --check   # exit 1 if a committed JSON file is stale

The JSON under grafana/dashboards/ is generated: edit this script, run it, commit both.
tests/test_dashboards_and_rules.py fails when the JSON differs from what this script builds.
Only the standard library is used (no Grafana SDK). Target: Grafana 10/11 (schemaVersion 39).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

DASHBOARD_DIR = Path(__file__).resolve().parent / "dashboards"

#: Must match grafana/provisioning/datasources/tasksim.yaml.
DATASOURCE_UID = "tasksim-prometheus"
DATASOURCE = {"type": "prometheus", "uid": DATASOURCE_UID}

#: Scrape job name in deploy/prometheus/prometheus.yml.
JOB = 'job="tasksim"'
#: Selector fragment for the $source template variable (multi-value, "All" = .*).
SOURCES = f'{JOB}, source=~"$source"'

GRID_WIDTH = 24

Panel = dict[str, Any]


# --------------------------------------------------------------------------- building blocks


def target(
    expr: str,
    legend: str = "",
    *,
    instant: bool = False,
    table: bool = False,
) -> dict[str, Any]:
    """A Prometheus query; refIds are assigned by the panel helpers."""
    t: dict[str, Any] = {
        "datasource": DATASOURCE,
        "editorMode": "code",
        "expr": expr,
        "legendFormat": legend or "__auto",
        "range": not instant,
        "instant": instant,
    }
    if table:
        t["format"] = "table"
    return t


def _with_ref_ids(targets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**t, "refId": chr(ord("A") + i)} for i, t in enumerate(targets)]


def thresholds(*steps: tuple[float | None, str]) -> dict[str, Any]:
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for v, c in steps]}


def value_mappings(mapping: dict[str, tuple[str, str]]) -> list[dict[str, Any]]:
    """{raw value: (display text, color)} -> one Grafana "value" mapping."""
    return [
        {
            "type": "value",
            "options": {
                raw: {"text": text, "color": color, "index": i}
                for i, (raw, (text, color)) in enumerate(mapping.items())
            },
        }
    ]


def _panel(
    kind: str,
    title: str,
    targets: list[dict[str, Any]],
    *,
    description: str,
    size: tuple[int, int],
    defaults: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
    overrides: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> Panel:
    w, h = size
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": {"w": w, "h": h},
        "targets": _with_ref_ids(targets),
        "fieldConfig": {"defaults": defaults or {}, "overrides": overrides or []},
        "options": options or {},
        **extra,
    }


def timeseries(
    title: str,
    targets: list[dict[str, Any]],
    *,
    description: str,
    unit: str = "short",
    size: tuple[int, int] = (12, 8),
    minimum: float | None = None,
    maximum: float | None = None,
    decimals: int | None = None,
    step: bool = False,
    bars: bool = False,
    stack: bool = False,
    axis_label: str = "",
    **extra: Any,
) -> Panel:
    custom: dict[str, Any] = {
        "drawStyle": "bars" if bars else "line",
        "lineInterpolation": "stepAfter" if step else "linear",
        "fillOpacity": 80 if bars else 10,
        "showPoints": "never",
        "spanNulls": False,
        "axisLabel": axis_label,
        "stacking": {"mode": "normal" if stack else "none", "group": "A"},
    }
    defaults: dict[str, Any] = {"unit": unit, "custom": custom}
    if minimum is not None:
        defaults["min"] = minimum
    if maximum is not None:
        defaults["max"] = maximum
    if decimals is not None:
        defaults["decimals"] = decimals
    options = {
        "legend": {"displayMode": "table", "placement": "right", "calcs": ["lastNotNull"], "showLegend": True},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }
    return _panel(
        "timeseries",
        title,
        targets,
        description=description,
        size=size,
        defaults=defaults,
        options=options,
        **extra,
    )


def stat(
    title: str,
    targets: list[dict[str, Any]],
    *,
    description: str,
    unit: str = "short",
    size: tuple[int, int] = (4, 5),
    steps: tuple[tuple[float | None, str], ...] = ((None, "green"),),
    mappings: list[dict[str, Any]] | None = None,
    text_mode: str = "auto",
    color_mode: str = "background",
    decimals: int | None = None,
    no_value: str | None = None,
) -> Panel:
    defaults: dict[str, Any] = {
        "unit": unit,
        "thresholds": thresholds(*steps),
        "color": {"mode": "thresholds"},
        "mappings": mappings or [],
    }
    if decimals is not None:
        defaults["decimals"] = decimals
    if no_value is not None:
        defaults["noValue"] = no_value
    options = {
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "textMode": text_mode,
        "colorMode": color_mode,
        "graphMode": "none",
        "justifyMode": "auto",
        "orientation": "auto",
    }
    return _panel(
        "stat",
        title,
        targets,
        description=description,
        size=size,
        defaults=defaults,
        options=options,
    )


def table(
    title: str,
    targets: list[dict[str, Any]],
    *,
    description: str,
    size: tuple[int, int] = (12, 8),
    transformations: list[dict[str, Any]],
    overrides: list[dict[str, Any]] | None = None,
    sort_by: str | None = None,
) -> Panel:
    options: dict[str, Any] = {"showHeader": True, "cellHeight": "sm"}
    if sort_by:
        options["sortBy"] = [{"displayName": sort_by, "desc": False}]
    return _panel(
        "table",
        title,
        targets,
        description=description,
        size=size,
        defaults={"custom": {"align": "auto"}},
        options=options,
        overrides=overrides,
        transformations=transformations,
    )


def state_timeline(
    title: str,
    targets: list[dict[str, Any]],
    *,
    description: str,
    mappings: list[dict[str, Any]],
    size: tuple[int, int] = (12, 8),
) -> Panel:
    defaults = {
        "mappings": mappings,
        "color": {"mode": "thresholds"},
        "thresholds": thresholds((None, "green")),
        "custom": {"fillOpacity": 70, "lineWidth": 0},
    }
    options = {
        "mergeValues": True,
        "showValue": "never",
        "rowHeight": 0.9,
        "legend": {"displayMode": "list", "placement": "bottom", "showLegend": False},
        "tooltip": {"mode": "single", "sort": "none"},
    }
    return _panel(
        "state-timeline",
        title,
        targets,
        description=description,
        size=size,
        defaults=defaults,
        options=options,
    )


def organize(hide: list[str], rename: dict[str, str] | None = None, order: list[str] | None = None) -> dict[str, Any]:
    return {
        "id": "organize",
        "options": {
            "excludeByName": {name: True for name in hide},
            "renameByName": rename or {},
            "indexByName": {name: i for i, name in enumerate(order or [])},
        },
    }


def row(title: str) -> Panel:
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "gridPos": {"w": GRID_WIDTH, "h": 1}}


def layout(panels: list[Panel]) -> list[Panel]:
    """Assign ids and grid positions: left to right, wrapping at 24 columns; rows span the width."""
    out: list[Panel] = []
    x = y = row_height = 0
    for panel_id, panel in enumerate(panels, start=1):
        w, h = panel["gridPos"]["w"], panel["gridPos"]["h"]
        if panel["type"] == "row" or x + w > GRID_WIDTH:
            y += row_height
            x = row_height = 0
        out.append({**panel, "id": panel_id, "gridPos": {"x": x, "y": y, "w": w, "h": h}})
        x += w
        row_height = max(row_height, h)
        if panel["type"] == "row":
            x, y, row_height = 0, y + h, 0
    return out


def query_variable(name: str, label: str, query: str, description: str) -> dict[str, Any]:
    return {
        "type": "query",
        "name": name,
        "label": label,
        "description": description,
        "datasource": DATASOURCE,
        "definition": query,
        "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "refresh": 2,
        "regex": "",
        "sort": 1,
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
        "hide": 0,
    }


# --------------------------------------------------------------------------- overview dashboard

ACTION_MAPPINGS = value_mappings(
    {
        "keep": ("keep", "green"),
        "switch": ("switch", "orange"),
        "insufficient_data": ("insufficient data", "blue"),
    }
)


def cycle_health_panels() -> list[Panel]:
    return [
        row("Cycle health"),
        stat(
            "Last successful cycle",
            [
                target(
                    f"time() - (tasksim_cycle_last_success_timestamp_seconds{{{JOB}}} > 0)",
                    "{{instance}}",
                    instant=True,
                )
            ],
            description="Time since the last successful cycle. TasksimCycleStale fires above 3 schedule "
            "intervals (tasksim_schedule_interval_seconds; colours assume the default 5 minute schedule).",
            unit="s",
            steps=((None, "green"), (600, "orange"), (900, "red")),
            no_value="never",
        ),
        stat(
            "Exporter",
            [target(f"up{{{JOB}}}", "{{instance}}", instant=True)],
            description="Whether Prometheus can scrape the tasksim exporter (127.0.0.1:9108).",
            mappings=value_mappings({"0": ("down", "red"), "1": ("up", "green")}),
            no_value="no target",
        ),
        stat(
            "Version",
            [target(f"tasksim_build_info{{{JOB}}}", "{{version}}", instant=True)],
            description="tasksim_build_info{version}.",
            text_mode="name",
            color_mode="none",
        ),
        stat(
            "Cycles in range",
            [
                target(
                    f"sum by (status) (increase(tasksim_cycles_total{{{JOB}}}[$__range]))", "{{status}}", instant=True
                )
            ],
            description="Cycles finished in the selected time range, by status (success, failed, no_data, insufficient_data).",
            size=(12, 5),
            decimals=0,
            color_mode="none",
        ),
        timeseries(
            "Cycles by status",
            [target(f"sum by (status) (rate(tasksim_cycles_total{{{JOB}}}[$__rate_interval])) * 3600", "{{status}}")],
            description="Rate of finished cycles per hour, by status. TasksimCyclesFailing fires when more "
            "than half of the cycles in 30 minutes failed, for 10 minutes.",
            axis_label="cycles / hour",
            bars=True,
            stack=True,
            interval="15m",
        ),
        timeseries(
            "Cycle duration",
            [target(f"tasksim_cycle_duration_seconds{{{JOB}}}", "{{instance}}")],
            description="Duration of the last cycle. Cycles longer than the schedule interval overlap or are skipped.",
            unit="s",
            minimum=0,
            step=True,
        ),
        table(
            "Firing tasksim alerts",
            [target('ALERTS{alertname=~"Tasksim.+", alertstate="firing"}', instant=True, table=True)],
            description="Alerts from deploy/prometheus/rules/tasksim-alerts.yml that are firing now.",
            size=(24, 5),
            transformations=[organize(hide=["Time", "Value", "__name__", "alertstate"])],
        ),
    ]


def drift_panels() -> list[Panel]:
    return [
        row("Drift"),
        stat(
            "Drift (last cycle with data)",
            [target(f'max(tasksim_drift_detected{{{JOB},kind=""}})', instant=True)],
            description="1 if the last cycle with data detected drift. TasksimDriftDetected fires when drift "
            "persists for 15 minutes (several cycles).",
            mappings=value_mappings({"0": ("no drift", "green"), "1": ("DRIFT", "red")}),
        ),
        stat(
            "Drifted columns",
            [target(f"max(tasksim_drift_share_ratio{{{JOB}}})", instant=True)],
            description="Share of the monitored columns that drifted in the last cycle with data.",
            unit="percentunit",
            steps=((None, "green"), (0.1, "orange"), (0.3, "red")),
        ),
        stat(
            "Production window",
            [target(f"sum by (kind) (tasksim_window_rows{{{JOB}}})", "{{kind}}", instant=True)],
            description="Rows in the last sampled production window: sampled, and dropped as invalid.",
            size=(8, 5),
            color_mode="none",
            decimals=0,
        ),
        stat(
            "Drift cycles in range",
            [target(f'sum(count_over_time((tasksim_drift_detected{{{JOB},kind=""}} == 1)[$__range:5m]))',
                    instant=True)],
            description="Number of 5 minute steps in the selected range in which drift was reported.",
            size=(8, 5),
            color_mode="none",
            decimals=0,
        ),
        stat(
            "Kind of drift (last cycle with data)",
            [target(f'max by (kind) (tasksim_drift_detected{{{JOB},kind!=""}})', "{{kind}}", instant=True)],
            description="The kind of shift the last verdict named: input (covariate), label_prior (the class "
            "marginal moved) or concept (the reference model's loss rose on labelled rows). The fine-tuning "
            "advice follows it: first blocks, head, last blocks. TasksimDriftKind fires when one persists.",
            size=(12, 5),
            mappings=value_mappings({"0": ("no", "green"), "1": ("YES", "red")}),
        ),
        {
            **_panel(
                "table",
                "Drift tests (last cycle with data)",
                [target(f"max by (test) (tasksim_drift_test_{name}{{{JOB}}})", legend, instant=True, table=True)
                 for name, legend in (("fired", "fired"), ("testable", "testable"), ("statistic", "statistic"),
                                      ("threshold", "threshold"), ("p_value", "p-value"))],
                description="Each test family of the verdict: columns (calibrated max over columns), mmd "
                "(multivariate), cusum (accumulated over windows), label_prior / bbse (labels / predicted "
                "labels), concept. testable 0 = not testable (labels missing, reference too small...).",
                size=(12, 5),
                defaults={"unit": "short"},
                options={"showHeader": True},
            ),
            "transformations": [{"id": "merge", "options": {}}],
        },
        timeseries(
            "Drifted column share",
            [target(f"tasksim_drift_share_ratio{{{JOB}}}", "{{instance}}")],
            description="Share of monitored columns that drifted, per cycle with data.",
            unit="percentunit",
            minimum=0,
            maximum=1,
            step=True,
        ),
        timeseries(
            "Per-column drift score",
            [target(f"tasksim_drift_column_score{{{JOB}}}", "{{column}}")],
            description="Per-column drift statistic of the last cycle with data (KS p-value by default: lower is "
            "more drift; a column drifted when it is at or below tasksim_drift_column_threshold, calibrated "
            "for 1% false alarms per window over all columns).",
            step=True,
        ),
        timeseries(
            "Drifted columns",
            [target(f"tasksim_drift_column_drifted{{{JOB}}} == 1", "{{column}}")],
            description="Columns and principal components (pcN) flagged in each window; the flags are "
            "family-wise calibrated, so a quiet stream shows (almost) none.",
            step=True,
        ),
        timeseries(
            "Production window rows",
            [target(f"sum by (kind) (tasksim_window_rows{{{JOB}}})", "{{kind}}")],
            description="Rows in each sampled production window (sampled, dropped_invalid). Small windows make "
            "drift statistics noisy.",
            decimals=0,
            minimum=0,
            step=True,
        ),
        {
            **_panel(
                "bargauge",
                "Per-column drift score (latest)",
                [target(f"sort_desc(tasksim_drift_column_score{{{JOB}}})", "{{column}}", instant=True)],
                description="Latest per-column drift statistic, highest first.",
                size=(12, 8),
                defaults={"unit": "short", "min": 0, "color": {"mode": "continuous-GrYlRd"}},
                options={
                    "displayMode": "gradient",
                    "orientation": "horizontal",
                    "showUnfilled": True,
                    "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                },
            )
        },
    ]


def ranking_panels() -> list[Panel]:
    ranking_table_overrides = [
        {
            "matcher": {"id": "byName", "options": "Top-1 probability"},
            "properties": [{"id": "unit", "value": "percentunit"}, {"id": "decimals", "value": 1}],
        },
        {
            "matcher": {"id": "byName", "options": "Score"},
            "properties": [{"id": "decimals", "value": 3}],
        },
        {
            "matcher": {"id": "byName", "options": "Failed"},
            "properties": [
                {"id": "mappings", "value": value_mappings({"0": ("ok", "green"), "1": ("failed", "red")})},
                {"id": "custom.cellOptions", "value": {"type": "color-text"}},
            ],
        },
    ]
    return [
        row("Ranking"),
        table(
            "Current ranking",
            [
                target(f"tasksim_source_rank{{{SOURCES}}}", instant=True, table=True),
                target(f"tasksim_source_score{{{SOURCES}}}", instant=True, table=True),
                target(f"tasksim_source_top1_probability{{{SOURCES}}}", instant=True, table=True),
                target(f"tasksim_source_failed{{{SOURCES}}}", instant=True, table=True),
            ],
            description="Latest rank (1 = best), composite score in [0, 1], bootstrap probability of being the "
            "best source, and whether the source failed in the last cycle.",
            size=(24, 7),
            transformations=[
                {"id": "merge", "options": {}},
                organize(
                    hide=["Time", "__name__", "job", "instance"],
                    rename={
                        "Value #A": "Rank",
                        "Value #B": "Score",
                        "Value #C": "Top-1 probability",
                        "Value #D": "Failed",
                    },
                    order=["source", "Value #A", "Value #B", "Value #C", "Value #D"],
                ),
            ],
            overrides=ranking_table_overrides,
            sort_by="Rank",
        ),
        timeseries(
            "Rank per source (1 = best)",
            [target(f"tasksim_source_rank{{{SOURCES}}}", "{{source}}")],
            description="Rank of each candidate source over time; 1 is the best.",
            minimum=1,
            decimals=0,
            step=True,
            size=(8, 8),
        ),
        timeseries(
            "Composite score",
            [target(f"tasksim_source_score{{{SOURCES}}}", "{{source}}")],
            description="Composite score in [0, 1] (higher is better) that the ranking sorts by.",
            minimum=0,
            maximum=1,
            step=True,
            size=(8, 8),
        ),
        timeseries(
            "Top-1 probability",
            [target(f"tasksim_source_top1_probability{{{SOURCES}}}", "{{source}}")],
            description="Bootstrap probability that each source is the best one. Low values for every source mean "
            "the ranking is not settled.",
            unit="percentunit",
            minimum=0,
            maximum=1,
            step=True,
            size=(8, 8),
        ),
        timeseries(
            "Similarity: $metric",
            [target(f'tasksim_source_similarity{{{SOURCES}, metric=~"$metric"}}', "{{source}}")],
            description="Raw similarity / transferability measure per source (one panel per selected $metric). "
            "Directions differ: distances (mmd2, frechet) are lower-is-closer, transferability scores (logme, "
            "hscore, knn_accuracy) higher-is-better.",
            step=True,
            size=(8, 8),
            repeat="metric",
            repeatDirection="h",
            maxPerRow=3,
        ),
    ]


def recommendation_panels() -> list[Panel]:
    return [
        row("Recommendation"),
        stat(
            "Current recommendation",
            [
                target(
                    f"tasksim_recommendation_info{{{JOB}}}",
                    "{{action}}: {{deployed_source}} → {{recommended_source}}",
                    instant=True,
                )
            ],
            description="Latest recommendation: keep the deployed source, switch to the recommended one, or "
            "insufficient data. TasksimSourceSwitchRecommended fires after 10 minutes of action=switch.",
            text_mode="name",
            color_mode="none",
            size=(8, 6),
        ),
        table(
            "Recommendation",
            [target(f"tasksim_recommendation_info{{{JOB}}}", instant=True, table=True)],
            description="tasksim_recommendation_info labels of the latest cycle.",
            size=(16, 6),
            transformations=[
                organize(
                    hide=["Time", "Value", "__name__", "job"],
                    rename={"deployed_source": "Deployed", "recommended_source": "Recommended", "action": "Action"},
                    order=["instance", "action", "deployed_source", "recommended_source"],
                )
            ],
            overrides=[
                {
                    "matcher": {"id": "byName", "options": "Action"},
                    "properties": [
                        {"id": "mappings", "value": ACTION_MAPPINGS},
                        {"id": "custom.cellOptions", "value": {"type": "color-background"}},
                    ],
                }
            ],
        ),
        state_timeline(
            "Recommendation history",
            [
                target(
                    f"tasksim_recommendation_info{{{JOB}}}", "{{action}}: {{deployed_source}} → {{recommended_source}}"
                )
            ],
            description="Which recommendation was current when.",
            mappings=value_mappings({"1": ("current", "blue")}),
            size=(24, 6),
        ),
    ]


def experiment_panels() -> list[Panel]:
    return [
        row("Transfer experiments"),
        stat(
            "Recommendation validated",
            [target(f"tasksim_recommendation_validated{{{JOB}}}", "validated", instant=True)],
            description="Last finished transfer experiment (tasksim experiment): 1 if its fine-tuning trials "
            "validated the recommended source (best candidate, or within 1 point), 0 if they overturned it.",
            mappings=value_mappings({"0": ("overturned", "red"), "1": ("validated", "green")}),
            no_value="no experiment",
            size=(4, 6),
        ),
        stat(
            "Prediction tau",
            [target(f"tasksim_experiment_prediction_tau{{{JOB}}}", "tau", instant=True)],
            description="Weighted Kendall tau between the predicted order of the sources and the order of their "
            "fine-tuned test accuracy in the last experiment (1: same order, -1: reversed).",
            steps=((None, "red"), (0.0, "orange"), (0.5, "green")),
            decimals=2,
            size=(4, 6),
        ),
        stat(
            "Last experiment",
            [target(f"time() - tasksim_experiment_last_timestamp_seconds{{{JOB}}}", "age", instant=True)],
            description="Time since the last transfer experiment finished.",
            unit="s",
            color_mode="none",
            size=(4, 6),
        ),
        table(
            "Trial scores",
            [target(f"tasksim_trial_score{{{SOURCES}}}", instant=True, table=True)],
            description="Test accuracy per source and fine-tuning strategy in the last finished experiment, "
            "mean over seeds (tasksim_trial_score).",
            size=(12, 6),
            transformations=[
                organize(
                    hide=["Time", "__name__", "job", "instance"],
                    rename={"source": "Source", "strategy": "Strategy", "Value": "Test accuracy"},
                    order=["source", "strategy", "Value"],
                )
            ],
            sort_by="Source",
        ),
    ]


def source_error_panels() -> list[Panel]:
    return [
        row("Source errors"),
        timeseries(
            "Source errors",
            [
                target(
                    f"sum by (source) (rate(tasksim_source_errors_total{{{SOURCES}}}[$__rate_interval])) * 3600",
                    "{{source}}",
                )
            ],
            description="Errors per hour while scoring each candidate source.",
            axis_label="errors / hour",
            bars=True,
            interval="15m",
        ),
        state_timeline(
            "Source failed in cycle",
            [target(f"tasksim_source_failed{{{SOURCES}}}", "{{source}}")],
            description="1 if the source failed in the last cycle. TasksimSourceFailing fires after 10 minutes.",
            mappings=value_mappings({"0": ("ok", "green"), "1": ("failed", "red")}),
        ),
    ]


def overview_dashboard() -> dict[str, Any]:
    panels = [
        *cycle_health_panels(),
        *drift_panels(),
        *ranking_panels(),
        *recommendation_panels(),
        *experiment_panels(),
        *source_error_panels(),
    ]
    return {
        "uid": "tasksim-overview",
        "title": "tasksim overview",
        "description": "tasksim cycle health, drift, source ranking and keep/switch recommendation. "
        "Generated by grafana/build_dashboards.py: do not edit by hand.",
        "tags": ["tasksim", "generated"],
        "timezone": "browser",
        "editable": False,
        "graphTooltip": 1,
        "refresh": "1m",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-24h", "to": "now"},
        "timepicker": {},
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "links": [],
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                },
                {
                    "datasource": DATASOURCE,
                    "enable": True,
                    "hide": False,
                    "iconColor": "red",
                    "name": "tasksim alerts",
                    "expr": 'ALERTS{alertname=~"Tasksim.+", alertstate="firing"}',
                    "step": "60s",
                    "titleFormat": "{{alertname}}",
                    "textFormat": "{{instance}} {{source}}",
                    "tagKeys": "severity",
                    "useValueForTime": False,
                },
            ]
        },
        "templating": {
            "list": [
                query_variable(
                    "source",
                    "Source",
                    f"label_values(tasksim_source_score{{{JOB}}}, source)",
                    "Candidate fine-tuning sources.",
                ),
                query_variable(
                    "metric",
                    "Similarity metric",
                    f"label_values(tasksim_source_similarity{{{JOB}}}, metric)",
                    "Similarity / transferability measures (tasksim_source_similarity{metric}).",
                ),
            ]
        },
        "panels": layout(panels),
    }


# --------------------------------------------------------------------------- output

#: file name under grafana/dashboards/ -> builder
DASHBOARDS = {
    "tasksim-overview.json": overview_dashboard,
}


def render(dashboard: dict[str, Any]) -> str:
    return json.dumps(dashboard, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def build_all() -> dict[str, str]:
    """File name -> JSON text for every dashboard."""
    return {name: render(build()) for name, build in DASHBOARDS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 if any file is out of date")
    parser.add_argument("--out-dir", type=Path, default=DASHBOARD_DIR)
    args = parser.parse_args(argv)

    stale = []
    for name, text in build_all().items():
        path = args.out_dir / name
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        if args.check:
            stale.append(name)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    if stale:
        print(f"out of date: {', '.join(stale)}; run python grafana/build_dashboards.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
