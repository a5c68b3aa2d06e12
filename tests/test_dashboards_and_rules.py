"""Static checks for the Grafana dashboards, Prometheus rules/config and Alertmanager example.

* every dashboard uid is unique, panels use the provisioned datasource uid;
* every PromQL expression (dashboards, template variables, annotations, alert rules) parses
  with promql_parser after Grafana variables are substituted, and names only metrics from the
  tasksim metrics contract (``tasksim.export.METRIC_NAMES``) or series Prometheus generates itself (``up``, ``ALERTS``);
* the committed dashboard JSON equals what ``grafana/build_dashboards.py`` generates;
* ``promtool check rules`` / ``promtool test rules`` / ``promtool check config`` pass and
  ``amtool check-config`` accepts the Alertmanager example (skipped when the binary is not
  installed; Debian packages ``prometheus`` and ``prometheus-alertmanager`` ship them).
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

promql_parser = pytest.importorskip("promql_parser")

ROOT = Path(__file__).resolve().parents[1]
GRAFANA = ROOT / "grafana"
DASHBOARD_DIR = GRAFANA / "dashboards"
DATASOURCE_PROVISIONING = GRAFANA / "provisioning" / "datasources" / "tasksim.yaml"
DASHBOARD_PROVISIONING = GRAFANA / "provisioning" / "dashboards" / "tasksim.yaml"
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULES = PROMETHEUS_DIR / "rules" / "tasksim-alerts.yml"
RULE_TESTS = PROMETHEUS_DIR / "rules" / "tasksim-alerts.test.yml"
ALERTMANAGER_CONFIG = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
SYSTEMD_UNIT = ROOT / "deploy" / "systemd" / "tasksim.service"

#: Series that Prometheus itself generates and that rules/dashboards may use.
PROMETHEUS_SERIES = frozenset({"up", "ALERTS"})

REQUIRED_ALERTS = {
    "TasksimCycleStale",
    "TasksimCyclesFailing",
    "TasksimDriftDetected",
    "TasksimSourceSwitchRecommended",
    "TasksimSourceFailing",
    "TasksimMetricsDown",
}

#: Grafana's built-in interval variables -> a duration that keeps the PromQL valid.
DURATION_VARIABLES = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}
#: Other built-ins that stand for numbers.
NUMBER_VARIABLES = {"__interval_ms": "60000", "__range_s": "3600", "__range_ms": "3600000"}
#: $var, ${var}, ${var:format}, [[var]]
VARIABLE_RE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\$(\w+)|\[\[(\w+)\]\]")
LABEL_VALUES_RE = re.compile(r"^\s*label_values\((?P<selector>.+),\s*(?P<label>\w+)\s*\)\s*$", re.DOTALL)


# --------------------------------------------------------------------------- helpers


def _load_module(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _contract() -> tuple[frozenset[str], str]:
    """Metric names of the contract: the exporter's own list."""
    from tasksim.export import METRIC_NAMES as names

    return frozenset(names), "tasksim.export.METRIC_NAMES"


METRIC_NAMES, METRIC_NAMES_SOURCE = _contract()


def _is_contract_metric(name: str) -> bool:
    if name in METRIC_NAMES or name in PROMETHEUS_SERIES:
        return True
    # A contract that lists counters by their base name (prometheus_client Counter("x") -> x_total).
    return name.endswith("_total") and name[: -len("_total")] in METRIC_NAMES


def substitute_variables(expr: str) -> str:
    def replace(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        if name in DURATION_VARIABLES:
            return DURATION_VARIABLES[name]
        if name in NUMBER_VARIABLES:
            return NUMBER_VARIABLES[name]
        # Template variables ($source, $metric, ...) only appear inside label matcher strings.
        return "x"

    return VARIABLE_RE.sub(replace, expr)


def referenced_metrics(expr: str) -> set[str]:
    """Parse (after variable substitution) and return every metric name the expression selects."""
    ast = promql_parser.parse(substitute_variables(expr))
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                names.add(node.name)
            for matcher in node.matchers.matchers:
                if matcher.name == "__name__":
                    names.add(matcher.value)

    promql_parser.walk(ast, visit)
    return names


def _walk_json(node: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, key, value
            yield from _walk_json(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk_json(value, f"{path}/{i}")


def _dashboard_files() -> list[Path]:
    return sorted(DASHBOARD_DIR.glob("*.json"))


def _dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text(encoding="utf-8")) for p in _dashboard_files()}


def dashboard_expressions() -> list[tuple[str, str]]:
    """(where, PromQL) for every query in every dashboard, template variables included."""
    out = []
    for name, dashboard in _dashboards().items():
        for path, key, value in _walk_json(dashboard):
            if key == "expr" and isinstance(value, str):
                out.append((f"{name}{path}", value))
        for variable in dashboard.get("templating", {}).get("list", []):
            if variable.get("type") != "query":
                continue
            query = variable["query"]
            query = query.get("query", "") if isinstance(query, dict) else query
            match = LABEL_VALUES_RE.match(query)
            if match:
                out.append((f"{name} variable ${variable['name']}", match["selector"]))
            elif query.startswith("query_result(") and query.endswith(")"):
                out.append((f"{name} variable ${variable['name']}", query[len("query_result(") : -1]))
            else:
                pytest.fail(f"{name} variable ${variable['name']}: unsupported query {query!r}")
    return out


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _provisioned_datasource_uid() -> str:
    doc = yaml.safe_load(DATASOURCE_PROVISIONING.read_text(encoding="utf-8"))
    (source,) = [d for d in doc["datasources"] if d["type"] == "prometheus"]
    return source["uid"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)


def _require(binary: str, package: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} is not installed (Debian package {package!r}); CI installs it")
    return path


# --------------------------------------------------------------------------- contract source


def test_metric_contract_is_loaded() -> None:
    assert METRIC_NAMES, f"empty metric contract from {METRIC_NAMES_SOURCE}"
    assert all(isinstance(n, str) and n.startswith("tasksim_") for n in METRIC_NAMES), METRIC_NAMES_SOURCE


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ('rate(tasksim_cycles_total{job="tasksim"}[$__rate_interval])', {"tasksim_cycles_total"}),
        ('tasksim_source_score{source=~"$source"} / on() group_left up', {"tasksim_source_score", "up"}),
        ("count_over_time((tasksim_drift_detected == 1)[${__range}:5m])", {"tasksim_drift_detected"}),
        ('{__name__="tasksim_build_info", version=~"[[version]]"}', {"tasksim_build_info"}),
    ],
)
def test_expression_helpers(expr: str, expected: set[str]) -> None:
    assert referenced_metrics(expr) == expected


def test_unknown_metric_is_detected() -> None:
    assert not _is_contract_metric("tasksim_not_in_contract")
    with pytest.raises(ValueError):
        referenced_metrics("rate(tasksim_cycles_total[5m]")


# --------------------------------------------------------------------------- dashboards


def test_dashboards_exist_and_uids_unique() -> None:
    dashboards = _dashboards()
    assert "tasksim-overview.json" in dashboards
    uids = [d.get("uid") for d in dashboards.values()]
    assert all(uids), "every dashboard needs a fixed uid"
    assert len(uids) == len(set(uids)), f"duplicate dashboard uids: {uids}"
    titles = [d["title"] for d in dashboards.values()]
    assert len(titles) == len(set(titles)), f"duplicate dashboard titles: {titles}"


@pytest.mark.parametrize("name", [p.name for p in _dashboard_files()])
def test_panel_ids_unique_and_grid_valid(name: str) -> None:
    dashboard = _dashboards()[name]
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {name}"
    for panel in panels:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        ref_ids = [t["refId"] for t in panel.get("targets", [])]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]


def test_datasource_uid_matches_provisioning() -> None:
    uid = _provisioned_datasource_uid()
    assert uid == "tasksim-prometheus"
    doc = yaml.safe_load(DATASOURCE_PROVISIONING.read_text(encoding="utf-8"))
    assert doc["datasources"][0]["url"] == "http://127.0.0.1:9090"
    for name, dashboard in _dashboards().items():
        seen = 0
        for path, key, value in _walk_json(dashboard):
            if key != "datasource":
                continue
            assert isinstance(value, dict), f"{name}{path}: datasource must be a {{type, uid}} object, got {value!r}"
            if value.get("type") == "grafana":  # built-in annotations
                continue
            assert value == {"type": "prometheus", "uid": uid}, f"{name}{path}: {value!r}"
            seen += 1
        assert seen, f"{name} references no datasource"


def test_every_query_has_a_datasource() -> None:
    for name, dashboard in _dashboards().items():
        for panel in dashboard["panels"]:
            for t in panel.get("targets", []):
                assert t.get("datasource", {}).get("uid") == _provisioned_datasource_uid(), (name, panel["title"])


def test_dashboard_provisioning() -> None:
    doc = yaml.safe_load(DASHBOARD_PROVISIONING.read_text(encoding="utf-8"))
    (provider,) = doc["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"].startswith("/")


def test_dashboard_json_is_generated() -> None:
    builder = _load_module("tasksim_build_dashboards", GRAFANA / "build_dashboards.py")
    generated = builder.build_all()
    committed = {p.name: p.read_text(encoding="utf-8") for p in _dashboard_files()}
    assert set(committed) == set(generated), "dashboard files without a builder (or missing files)"
    for name, text in generated.items():
        assert committed[name] == text, f"{name} is stale: run python grafana/build_dashboards.py"
    assert builder.DATASOURCE_UID == _provisioned_datasource_uid()


def test_dashboard_covers_required_views() -> None:
    dashboard = _dashboards()["tasksim-overview.json"]
    exprs = " ".join(e for _, e in dashboard_expressions())
    for metric in (
        "tasksim_cycle_last_success_timestamp_seconds",
        "tasksim_cycles_total",
        "tasksim_cycle_duration_seconds",
        "tasksim_drift_detected",
        "tasksim_drift_share_ratio",
        "tasksim_drift_column_score",
        "tasksim_source_rank",
        "tasksim_source_score",
        "tasksim_source_top1_probability",
        "tasksim_source_similarity",
        "tasksim_recommendation_info",
        "tasksim_source_errors_total",
    ):
        assert metric in exprs, f"no panel shows {metric}"
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"source", "metric"} <= variables
    (similarity,) = [p for p in dashboard["panels"] if "tasksim_source_similarity" in json.dumps(p.get("targets"))]
    target_exprs = " ".join(t["expr"] for t in similarity["targets"])
    assert "$metric" in target_exprs and "$source" in target_exprs
    tables = [p for p in dashboard["panels"] if p["type"] == "table"]
    assert any("tasksim_recommendation_info" in json.dumps(p["targets"]) for p in tables)


@pytest.mark.parametrize(("where", "expr"), dashboard_expressions())
def test_dashboard_promql_parses_and_uses_contract(where: str, expr: str) -> None:
    try:
        metrics = referenced_metrics(expr)
    except ValueError as err:
        pytest.fail(f"{where}: {expr!r} does not parse: {err}")
    assert metrics, f"{where}: {expr!r} selects no metric"
    unknown = {m for m in metrics if not _is_contract_metric(m)}
    assert not unknown, f"{where}: {sorted(unknown)} not in {METRIC_NAMES_SOURCE}"


# --------------------------------------------------------------------------- alert rules


def test_required_alerts_labels_and_annotations() -> None:
    rules = _rules()
    alerts = {r["alert"] for r in rules if "alert" in r}
    assert REQUIRED_ALERTS <= alerts, f"missing alerts: {REQUIRED_ALERTS - alerts}"
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        for key in ("summary", "description"):
            assert rule["annotations"].get(key, "").strip(), f"{rule['alert']}: no {key}"
    by_name = {r["alert"]: r for r in rules}
    assert by_name["TasksimSourceSwitchRecommended"]["for"] == "10m"
    assert "for" in by_name["TasksimDriftDetected"]
    assert 'action="switch"' in by_name["TasksimSourceSwitchRecommended"]["expr"]
    assert 'up{job="tasksim"} == 0' in by_name["TasksimMetricsDown"]["expr"]


@pytest.mark.parametrize("rule", _rules(), ids=lambda r: r.get("alert") or r.get("record"))
def test_rule_promql_parses_and_uses_contract(rule: dict[str, Any]) -> None:
    expr = rule["expr"]
    try:
        metrics = referenced_metrics(expr)
    except ValueError as err:
        pytest.fail(f"{expr!r} does not parse: {err}")
    unknown = {m for m in metrics if not _is_contract_metric(m)}
    assert not unknown, f"{sorted(unknown)} not in {METRIC_NAMES_SOURCE}"
    assert 'job="tasksim"' in expr, "select the tasksim scrape job explicitly"


def test_rule_unit_tests_cover_every_alert() -> None:
    doc = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in doc["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert REQUIRED_ALERTS <= fired, f"never shown firing: {REQUIRED_ALERTS - fired}"
    assert REQUIRED_ALERTS <= quiet, f"never shown quiet: {REQUIRED_ALERTS - quiet}"


def test_promtool_check_rules() -> None:
    promtool = _require("promtool", "prometheus")
    result = _run(promtool, "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules() -> None:
    promtool = _require("promtool", "prometheus")
    result = _run(promtool, "test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------- Prometheus / Alertmanager config


def test_prometheus_config_scrapes_tasksim() -> None:
    doc = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    (job,) = [j for j in doc["scrape_configs"] if j["job_name"] == "tasksim"]
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == ["127.0.0.1:9108"]
    rule_files = [(PROMETHEUS_CONFIG.parent / f).resolve() for f in doc["rule_files"]]
    assert RULES.resolve() in rule_files
    assert RULE_TESTS.resolve() not in rule_files


def test_promtool_check_config() -> None:
    promtool = _require("promtool", "prometheus")
    result = _run(promtool, "check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alertmanager_config_is_local_and_secret_free() -> None:
    text = ALERTMANAGER_CONFIG.read_text(encoding="utf-8")
    doc = yaml.safe_load(text)
    for receiver in doc["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            assert hook["url"].startswith("http://127.0.0.1:"), hook["url"]
            auth = hook.get("http_config", {}).get("authorization", {})
            assert "credentials" not in auth, "secrets must not be written in the config"
    urls = re.findall(r"https?://[^\s'\"]+", text)
    assert all(u.startswith(("http://127.0.0.1", "https://127.0.0.1")) for u in urls), urls


def test_amtool_check_config() -> None:
    amtool = _require("amtool", "prometheus-alertmanager")
    result = _run(amtool, "check-config", str(ALERTMANAGER_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------- systemd


def test_systemd_unit() -> None:
    settings: dict[str, list[str]] = {}
    for line in SYSTEMD_UNIT.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    (exec_start,) = settings["ExecStart"]
    assert exec_start.endswith("tasksim serve --config /etc/tasksim/tasksim.yaml")
    assert settings["Restart"] == ["on-failure"]
    assert settings["User"][0] not in {"root", "0"}
    for option in ("NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp"):
        assert option in settings, f"missing hardening option {option}"
