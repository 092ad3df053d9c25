"""The Helm chart, offline: lint, schema-valid manifests for the default and namespaced modes,
a values schema that rejects unknown keys, the CRD identical to crds/, RBAC from its single
source, the operator alerts under promtool, and a dashboard that reads only existing series."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from prometheus_client import REGISTRY

from slotune.api.crd import crd_yaml
from slotune.api.resource import parse_llmservice
from slotune.controller import telemetry
from slotune.render.alerts import slo_alerts, sped_up_burn_rates

from helm_tools import (
    CHART,
    MONITORING_API_VERSIONS,
    ROOT,
    by_kind,
    helm,
    one,
    template,
)

K8S_VERSION = "1.34.0"
CRD_SOURCE = ROOT / "crds" / "slotune.dev_llmservices.yaml"
CHART_CRD = CHART / "files" / "crd.yaml"
RBAC_RULES = yaml.safe_load((CHART / "files" / "rbac-rules.yaml").read_text())
NAMESPACED = {"watchNamespaces": "{team-a,team-b}"}
PROMTOOL = shutil.which("promtool")


def assert_valid_kubernetes(manifests: list[dict[str, Any]]) -> None:
    for manifest in manifests:
        if manifest["apiVersion"].startswith("monitoring.coreos.com/"):
            # CRs of the Prometheus operator: Kubernetes' schemas do not cover them (and
            # kubernetes-validate has no schema to check them against), so only their shape is
            # checked here; promtool checks the rules they hold.
            assert manifest["kind"] in ("ServiceMonitor", "PrometheusRule")
            assert manifest["spec"]
            continue
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)


# -- lint and schema validity ------------------------------------------------------------------


def test_helm_lint_is_clean() -> None:
    for values in ({}, NAMESPACED):
        result = helm("lint", "--strict", str(CHART), *_sets(values))
        assert "0 chart(s) failed" in result.stdout
        assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout


def _sets(values: dict[str, str]) -> list[str]:
    return [arg for k, v in values.items() for arg in ("--set", f"{k}={v}")]


def test_default_values_render_schema_valid_manifests() -> None:
    manifests = template()
    assert sorted(m["kind"] for m in manifests) == [
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "CustomResourceDefinition",
        "Deployment",
        "Service",
        "ServiceAccount",
    ]
    assert_valid_kubernetes(manifests)


def test_monitoring_objects_appear_where_the_cluster_serves_them() -> None:
    manifests = template(api_versions=MONITORING_API_VERSIONS)
    assert {"ServiceMonitor", "PrometheusRule"} <= {m["kind"] for m in manifests}
    assert_valid_kubernetes(manifests)
    monitor = one(manifests, "ServiceMonitor")
    service = one(manifests, "Service")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    off = template({"metrics.serviceMonitor.enabled": "false", "prometheusRule.enabled": "false"})
    assert not by_kind(off, "ServiceMonitor") and not by_kind(off, "PrometheusRule")


def test_namespaced_mode_grants_only_the_listed_namespaces() -> None:
    manifests = template(NAMESPACED, api_versions=MONITORING_API_VERSIONS)
    assert_valid_kubernetes(manifests)
    assert not by_kind(manifests, "ClusterRole") and not by_kind(manifests, "ClusterRoleBinding")
    roles = by_kind(manifests, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for role in roles:
        assert role["rules"] == RBAC_RULES["namespaced"]
    bindings = by_kind(manifests, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for binding in bindings:
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "slotune", "namespace": "slotune-system"}
        ]
    args = _container(manifests)["args"]
    assert args[-4:] == ["-n", "team-a", "-n", "team-b"]


def test_cluster_mode_grants_the_rules_of_the_single_source() -> None:
    manifests = template()
    role = one(manifests, "ClusterRole")
    assert role["rules"] == RBAC_RULES["namespaced"] + RBAC_RULES["clusterOnly"]
    binding = one(manifests, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["name"] == one(manifests, "ServiceAccount")["metadata"]["name"]
    assert "-n" not in _container(manifests)["args"]


# -- values.schema.json --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("replicaCount", "2", "additional properties 'replicaCount' not allowed"),
        ("crds.enable", "true", "additional properties 'enable' not allowed"),
        ("config.logLevel", "loud", "logLevel"),
        ("metrics.port", "http", "port"),
    ],
)
def test_values_schema_rejects_unknown_and_wrong_values(key: str, value: str, message: str) -> None:
    result = helm("template", "slotune", str(CHART), "--set", f"{key}={value}", check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_every_value_is_in_the_schema_with_a_description() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())

    def walk(value: Any, node: dict[str, Any], path: str) -> None:
        assert "description" in node or path == "", f"{path}: no description in the schema"
        if isinstance(value, dict) and node.get("additionalProperties") is False:
            for key, sub in value.items():
                assert key in node["properties"], f"{path}.{key} is not in values.schema.json"
                walk(sub, node["properties"][key], f"{path}.{key}")

    walk(values, schema, "")
    # And every documented key has a comment in values.yaml right above it.
    text = (CHART / "values.yaml").read_text().splitlines()
    for index, line in enumerate(text):
        match = re.match(r"^(\s*)([A-Za-z]\w*):", line)
        if match and not text[index - 1].lstrip().startswith("#"):
            # Plain groups (image:, crds:) and well-known subkeys need no comment of their own.
            assert line.rstrip().endswith(":") or match.group(2) in _SELF_EXPLANATORY, line


_SELF_EXPLANATORY = {
    "pullPolicy",
    "requests",
    "limits",
    "cpu",
    "memory",
    "runAsNonRoot",
    "runAsUser",
    "runAsGroup",
    "fsGroup",
    "type",
    "allowPrivilegeEscalation",
    "readOnlyRootFilesystem",
    "drop",
    "enabled",
    "port",
    "initialDelaySeconds",
    "periodSeconds",
    "timeoutSeconds",
    "failureThreshold",
    "grafana_dashboard",
}


# -- the CRD: one source of truth ----------------------------------------------------------


def test_the_charts_crd_file_is_the_generated_crd() -> None:
    # files/crd.yaml is a copy (Helm warns on every command about a symlink out of the chart);
    # `make crd` writes both files.
    assert CHART_CRD.read_bytes() == CRD_SOURCE.read_bytes(), "run `make crd`"
    assert CRD_SOURCE.read_text() == crd_yaml(), "run `make crd`"


def test_the_installed_crd_is_the_generated_crd_plus_release_metadata() -> None:
    rendered = one(template(), "CustomResourceDefinition")
    source = yaml.safe_load(CRD_SOURCE.read_text())
    assert rendered["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert source["metadata"]["labels"].items() <= rendered["metadata"]["labels"].items()
    assert rendered["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    for part in (rendered, source):
        part["metadata"].pop("labels")
        part["metadata"].pop("annotations", None)
    # fromYaml/toYaml in the template must not change a single value (numbers included).
    assert rendered == source

    not_kept = one(template({"crds.keep": "false"}), "CustomResourceDefinition")
    assert "annotations" not in not_kept["metadata"]
    assert not by_kind(template({"crds.enabled": "false"}), "CustomResourceDefinition")


# -- the operator Deployment -------------------------------------------------------------------


def _container(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    container: dict[str, Any] = one(manifests, "Deployment")["spec"]["template"]["spec"][
        "containers"
    ][0]
    return container


def test_the_operator_runs_once_unprivileged_with_a_liveness_probe() -> None:
    manifests = template()
    deployment = one(manifests, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = _container(manifests)
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert (
        container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
    )
    assert "--liveness=http://0.0.0.0:8080/healthz" in container["args"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert pod["serviceAccountName"] == one(manifests, "ServiceAccount")["metadata"]["name"]


def test_configuration_reaches_the_operator_as_environment() -> None:
    manifests = template(
        {
            "config.prometheusUrl": "http://prom.example:9090",
            "config.resyncSeconds": "7",
            "config.logLevel": "debug",
            "config.logFormat": "json",
        }
    )
    env = {e["name"]: e.get("value") for e in _container(manifests)["env"]}
    assert env["SLOTUNE_PROMETHEUS_URL"] == "http://prom.example:9090"
    assert env["SLOTUNE_RESYNC_SECONDS"] == "7"
    assert env["SLOTUNE_LOG_LEVEL"] == "debug"
    assert env["SLOTUNE_LOG_FORMAT"] == "json"
    assert env["SLOTUNE_METRICS_PORT"] == "8081"
    no_metrics = template({"metrics.enabled": "false"})
    assert "SLOTUNE_METRICS_PORT" not in {e["name"] for e in _container(no_metrics)["env"]}
    assert not by_kind(no_metrics, "Service")
    # A configuration change rolls the pod (the operator reads it once at start-up).
    checksum = "checksum/config"
    before = one(template(), "Deployment")["spec"]["template"]["metadata"]["annotations"]
    after = one(manifests, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert before[checksum] != after[checksum]


def test_image_digest_wins_over_the_tag() -> None:
    digest = "sha256:" + "a" * 64
    assert _container(template())["image"] == "slotune/slotune:0.1.0"
    image = _container(template({"image.digest": digest}))["image"]
    assert image == f"slotune/slotune@{digest}"


# -- the operator's alerts and the dashboard ------------------------------------------------------


def _operator_rules(tmp_path: Path) -> Path:
    rule = one(template(api_versions=MONITORING_API_VERSIONS), "PrometheusRule")
    path = tmp_path / "operator-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    return path


def _promtool(*args: str, cwd: Path) -> str:
    assert PROMTOOL, "promtool is required (`make tools` installs Debian's prometheus package)"
    result = subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_operator_alerts_pass_promtool(tmp_path: Path) -> None:
    _operator_rules(tmp_path)
    assert "SUCCESS: 4 rules found" in _promtool(
        "check", "rules", "operator-rules.yaml", cwd=tmp_path
    )


def test_operator_alerts_fire_when_they_should(tmp_path: Path) -> None:
    _operator_rules(tmp_path)
    job, ns = 'job="slotune-metrics"', 'namespace="slotune-system"'
    tests = {
        "rule_files": ["operator-rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    # Scraped for 20 minutes, then gone.
                    {"series": f"up{{{job},{ns}}}", "values": "1x20 _x40"},
                    {
                        "series": f'slotune_reconcile_total{{{job},{ns},result="error"}}',
                        "values": "0+2x60",
                    },
                    {
                        "series": f'slotune_reconcile_total{{{job},{ns},result="success"}}',
                        "values": "0+5x60",
                    },
                    {
                        "series": f'slotune_llmservice_condition{{{job},namespace="team-a",'
                        'llmservice="chat",type="MetricsAvailable",status="False"}',
                        "values": "1x60",
                    },
                    {
                        "series": f'slotune_prometheus_query_errors_total{{{job},{ns},query="ttft"}}',
                        "values": "0x60",
                    },
                ],
                "alert_rule_test": [
                    {"eval_time": "15m", "alertname": "SlotuneOperatorDown", "exp_alerts": []},
                    {
                        "eval_time": "40m",
                        "alertname": "SlotuneOperatorDown",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "critical",
                                    "job": "slotune-metrics",
                                    "namespace": "slotune-system",
                                }
                            }
                        ],
                    },
                    {
                        "eval_time": "40m",
                        "alertname": "SlotuneLLMServiceMetricsUnavailable",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "warning",
                                    "namespace": "team-a",
                                    "llmservice": "chat",
                                }
                            }
                        ],
                    },
                    {
                        "eval_time": "19m",
                        "alertname": "SlotuneReconcileErrors",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "warning",
                                    "job": "slotune-metrics",
                                    "namespace": "slotune-system",
                                }
                            }
                        ],
                    },
                    {
                        "eval_time": "40m",
                        "alertname": "SlotunePrometheusQueryErrors",
                        "exp_alerts": [],
                    },
                ],
            }
        ],
    }
    # Annotations are checked by promtool only when listed; labels are what routing uses.
    for case in tests["tests"][0]["alert_rule_test"]:  # type: ignore[index]
        for alert in case["exp_alerts"]:
            alert["exp_annotations"] = _annotations(
                tmp_path, case["alertname"], alert["exp_labels"]
            )
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests, sort_keys=False, width=1000))
    _promtool("test", "rules", "tests.yaml", cwd=tmp_path)


def _annotations(tmp_path: Path, alertname: str, labels: dict[str, str]) -> dict[str, str]:
    groups = yaml.safe_load((tmp_path / "operator-rules.yaml").read_text())["groups"]
    (rule,) = [r for g in groups for r in g["rules"] if r.get("alert") == alertname]
    annotations: dict[str, str] = {}
    for key, text in rule["annotations"].items():
        for name, value in labels.items():
            text = text.replace(f"{{{{ $labels.{name} }}}}", value)
        # Only the reconcile-errors alert shows its value: 2 errors a minute.
        annotations[key] = text.replace("{{ $value | humanize }}", "2")
    return annotations


def _dashboard_series(speedup: float) -> set[str]:
    """Series the dashboard may read: the SLO recording rules, the operator's own metrics."""
    example = yaml.safe_load((ROOT / "examples" / "llama-3-8b-h100.yaml").read_text())
    groups = slo_alerts(parse_llmservice(example), sped_up_burn_rates(speedup)).rule_groups
    names = {r["record"] for g in groups for r in g["rules"] if "record" in r}
    assert telemetry.SERVICES  # registers the operator's metrics in the default registry
    for family in REGISTRY.collect():
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names |= {f"{family.name}{suffix}" for suffix in ("_bucket", "_count", "_sum")}
        else:
            names.add(family.name)
    return names | {"ALERTS"}


# 30: the e2e alert test's `--alert-speedup` (`slotune sandbox up` takes any); sped-up tiers
# record other windows than the workbook's.
@pytest.mark.parametrize("speedup", [1.0, 30.0])
def test_the_dashboard_reads_only_series_that_exist(speedup: float) -> None:
    configmap = one(template(), "ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(configmap["data"]["slotune.json"])
    known = _dashboard_series(speedup)
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 12
    used = set()
    for expr in exprs:
        used |= set(re.findall(r"([A-Za-z_:][A-Za-z0-9_:]*)\{", expr))
    assert used <= known, sorted(used - known)
    titles = " ".join(p["title"] for p in dashboard["panels"])
    for topic in ("TTFT", "ITL", "Replicas", "Batch size", "decisions", "error budget left"):
        assert topic in titles


def test_every_alert_has_a_runbook_section() -> None:
    runbooks = (ROOT / "docs" / "runbooks.md").read_text()
    example = yaml.safe_load((ROOT / "examples" / "llama-3-8b-h100.yaml").read_text())
    groups = slo_alerts(parse_llmservice(example)).rule_groups
    groups += one(template(api_versions=MONITORING_API_VERSIONS), "PrometheusRule")["spec"][
        "groups"
    ]
    for rule in (r for g in groups for r in g["rules"] if "alert" in r):
        assert f"\n## {rule['alert']}\n" in runbooks, rule["alert"]
        assert rule["annotations"]["runbook_url"].endswith("runbooks.md#" + rule["alert"].lower())
