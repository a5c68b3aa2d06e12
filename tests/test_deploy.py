"""Static checks of the production topology files (deploy/): nothing here starts a container.

Tools (the ``test`` extra installs them from PyPI; each check is skipped when its tool is missing):

* ``check-jsonschema --builtin-schema vendor.compose-spec``: deploy/compose.yaml against the Compose
  specification's JSON schema (vendored in check-jsonschema, works offline);
* ``yamllint``: every YAML file under deploy/compose*, deploy/k8s;
* ``kubernetes-validate --strict``: deploy/k8s/*.yaml against the Kubernetes 1.30 OpenAPI schemas
  (bundled, offline), rejecting unknown fields;
* ``hadolint``: deploy/Dockerfile (warnings fail);
* ``promtool check config`` on the compose Prometheus config.

Plus checks of our own: every file the compose file mounts exists, the compose Prometheus config
matches deploy/prometheus/prometheus.yml up to addresses, the compose Grafana datasource keeps the
uid the dashboards use, only loopback ports are published, no secret is written in a file, and the
kustomization lists every manifest.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
K8S = DEPLOY / "k8s"
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
YAMLLINT_CONFIG = ("{extends: default, rules: {line-length: {max: 140}, document-start: disable, "
                   "truthy: {check-keys: false}, comments: {min-spaces-from-content: 1}}}")


def _tool(name: str) -> str:
    """The tool next to this interpreter (the venv's bin), else on PATH; skip when absent."""
    local = Path(sys.executable).parent / name
    path = str(local) if local.exists() else shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[test]')")
    return path


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120, cwd=ROOT)


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_matches_the_compose_spec_schema() -> None:
    result = _run(_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_schema_check_rejects_a_broken_file(tmp_path: Path) -> None:
    """The schema check is not vacuous: a misspelt service key fails it."""
    doc = _compose()
    doc["services"]["tasksim"]["restart_policy"] = "always"  # not a service key
    bad = tmp_path / "compose.yaml"
    bad.write_text(yaml.safe_dump(doc))
    result = _run(_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(bad))
    assert result.returncode != 0 and "restart_policy" in result.stdout + result.stderr


def test_yamllint() -> None:
    files = [COMPOSE, *sorted((DEPLOY / "compose").glob("*.y*ml")), *sorted(K8S.glob("*.yaml"))]
    result = _run(_tool("yamllint"), "-s", "-d", YAMLLINT_CONFIG, *map(str, files))
    assert result.returncode == 0, result.stdout + result.stderr


def test_kubernetes_manifests_validate_strictly() -> None:
    result = _run(_tool("kubernetes-validate"), "-k", "1.30.0", "--strict", *map(str, MANIFESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    # every resource was checked, none skipped for an unknown kind
    kinds = [d["kind"] for p in MANIFESTS for d in yaml.safe_load_all(p.read_text()) if d]
    assert result.stdout.count("passed") == len(kinds), result.stdout


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == [p.name for p in MANIFESTS]


def test_dockerfile_hadolint() -> None:
    result = _run(_tool("hadolint"), "--no-color", "--failure-threshold", "warning", str(DEPLOY / "Dockerfile"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_has_cpu_and_cuda_variants() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert "ARG TORCH_VARIANT=cpu" in text
    assert 'download.pytorch.org/whl/${TORCH_VARIANT}' in text
    assert "USER 10001" in text  # not root
    assert _compose()["x-tasksim-image"]["build"]["args"]["TORCH_VARIANT"].startswith("${TASKSIM_TORCH_VARIANT")


def test_compose_services_and_mounted_files_exist() -> None:
    doc = _compose()
    assert {"postgres", "prefect-server", "tasksim", "prometheus", "alertmanager", "grafana"} <= set(doc["services"])
    for name, service in doc["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DEPLOY / source).resolve().exists(), f"{name}: mounts missing {source}"
    prefect = doc["services"]["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert prefect.startswith("postgresql+asyncpg://") and "@postgres:5432/" in prefect
    assert doc["services"]["tasksim"]["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"


def test_compose_publishes_loopback_only_and_keeps_secrets_in_the_environment() -> None:
    doc = _compose()
    for name, service in doc["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port} is not bound to loopback"
    text = COMPOSE.read_text()
    assert "${POSTGRES_PASSWORD:?" in text and "${GRAFANA_ADMIN_PASSWORD:?" in text
    assert doc["secrets"]["alert-webhook-token"] == {"environment": "TASKSIM_ALERT_WEBHOOK_TOKEN"}
    for path in [*MANIFESTS]:
        for d in yaml.safe_load_all(path.read_text()):
            assert d["kind"] != "Secret", f"{path.name}: a Secret is committed"


def test_compose_prometheus_config_mirrors_the_host_one() -> None:
    host = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    compose = yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text())
    assert compose["global"] == host["global"] and compose["rule_files"] == host["rule_files"]

    def jobs(doc: dict) -> dict[str, int]:
        return {j["job_name"]: len(j["static_configs"][0]["targets"]) for j in doc["scrape_configs"]}

    assert jobs(compose) == jobs(host)
    (tasksim,) = [j for j in compose["scrape_configs"] if j["job_name"] == "tasksim"]
    assert tasksim["static_configs"][0]["targets"] == ["tasksim:9108"]


def test_compose_prometheus_config_promtool(tmp_path: Path) -> None:
    promtool = _tool("promtool")
    (tmp_path / "rules").mkdir()
    shutil.copy(DEPLOY / "prometheus" / "rules" / "tasksim-alerts.yml", tmp_path / "rules")
    shutil.copy(DEPLOY / "compose" / "prometheus.yml", tmp_path / "prometheus.yml")
    result = _run(promtool, "check", "config", str(tmp_path / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_grafana_datasource_keeps_the_dashboards_uid() -> None:
    host = yaml.safe_load((ROOT / "grafana" / "provisioning" / "datasources" / "tasksim.yaml").read_text())
    compose = yaml.safe_load((DEPLOY / "compose" / "grafana-datasource.yaml").read_text())
    (h,), (c,) = host["datasources"], compose["datasources"]
    assert {k: v for k, v in c.items() if k != "url"} == {k: v for k, v in h.items() if k != "url"}
    assert c["url"] == "http://prometheus:9090"


def test_install_script_installs_what_the_e2e_tests_start() -> None:
    """CI runs deploy/install.sh (make test): it must install the servers tests/test_e2e.py starts
    (Prometheus; PostgreSQL's initdb/pg_ctl for the Prefect server), and both scripts parse."""
    import re

    text = (DEPLOY / "install.sh").read_text()
    packages = set(re.search(r'^DEBIAN_PACKAGES="([^"]*)"', text, re.MULTILINE).group(1).split())
    assert {"prometheus", "postgresql"} <= packages
    assert 'python${pyver}-venv' in text  # python3.12-venv on Ubuntu 24.04, python3.11-venv on Debian 12
    for script in ("install.sh", "check-fresh-debian.sh"):
        result = _run("bash", "-n", str(DEPLOY / script))
        assert result.returncode == 0, result.stderr
