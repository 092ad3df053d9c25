"""The sandbox's rule sync without a cluster: PrometheusRules to rule files, and when to reload."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from slotune.api.resource import parse_llmservice
from slotune.render.alerts import slo_alerts, sped_up_burn_rates
from slotune.render.render import render_children
from slotune.sandbox.prometheus import config
from slotune.sandbox.rules import (
    PROMETHEUS_RULE_CRD,
    RuleFiles,
    RuleSync,
    promtool_checker,
    rule_file_name,
    rule_files,
)

ROOT = Path(__file__).resolve().parents[3]


def prometheus_rule(name: str = "chat", namespace: str = "default") -> dict[str, Any]:
    obj = yaml.safe_load((ROOT / "examples" / "demo-llama-3-8b-h100.yaml").read_text())
    obj["metadata"] = {"name": name, "namespace": namespace, "uid": "u-" + name}
    service = parse_llmservice(obj)
    groups = slo_alerts(service, sped_up_burn_rates(60)).rule_groups
    rule: dict[str, Any] = render_children(service, rule_groups=groups)[-1]
    assert rule["kind"] == "PrometheusRule"
    return rule


def test_each_prometheus_rule_becomes_one_file_of_its_groups() -> None:
    rules = [prometheus_rule("chat"), prometheus_rule("code", namespace="team-a")]
    files = rule_files(rules)
    assert sorted(files) == ["default.chat.yaml", "team-a.code.yaml"]
    assert yaml.safe_load(files["team-a.code.yaml"]) == {"groups": rules[1]["spec"]["groups"]}
    assert files["default.chat.yaml"].startswith("# PrometheusRule default/chat\n")
    # Namespaces hold no dots, so `<namespace>.<name>` never collides.
    assert rule_file_name("team-a", "code.v2") == "team-a.code.v2.yaml"


def test_an_object_without_groups_is_an_empty_file() -> None:
    files = rule_files([{"metadata": {"namespace": "ns", "name": "x"}, "spec": {}}])
    assert yaml.safe_load(files["ns.x.yaml"]) == {"groups": []}


def test_sync_writes_what_differs_and_removes_what_went(tmp_path: Path) -> None:
    files = RuleFiles(tmp_path / "rules")
    assert files.sync({"a.x.yaml": "groups: []\n", "a.y.yaml": "groups: []\n"})
    assert sorted(p.name for p in (tmp_path / "rules").iterdir()) == ["a.x.yaml", "a.y.yaml"]
    # Nothing changed: no write, no reload.
    mtime = (tmp_path / "rules" / "a.x.yaml").stat().st_mtime_ns
    assert not files.sync({"a.x.yaml": "groups: []\n", "a.y.yaml": "groups: []\n"})
    assert (tmp_path / "rules" / "a.x.yaml").stat().st_mtime_ns == mtime
    assert files.sync({"a.x.yaml": "groups: []\n# changed\n"})
    assert [p.name for p in (tmp_path / "rules").iterdir()] == ["a.x.yaml"]
    assert (tmp_path / "rules" / "a.x.yaml").read_text().endswith("# changed\n")


def test_a_refused_file_is_not_loaded_and_not_checked_again(tmp_path: Path) -> None:
    checked: list[str] = []

    def check(path: Path) -> str | None:
        checked.append(path.read_text())
        assert not path.name.endswith(".yaml"), "Prometheus' glob would load it"
        return "bad" if "bad" in path.read_text() else None

    files = RuleFiles(tmp_path, check)
    assert files.sync({"a.x.yaml": "good\n"})
    # An update Prometheus would refuse: the last good version stays loaded.
    assert not files.sync({"a.x.yaml": "bad\n"})
    assert not files.sync({"a.x.yaml": "bad\n"})
    assert (tmp_path / "a.x.yaml").read_text() == "good\n"
    assert checked == ["good\n", "bad\n"]
    assert [p.name for p in tmp_path.iterdir()] == ["a.x.yaml"]
    assert files.sync({"a.x.yaml": "good again\n"})
    assert files.rejected == {}


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_accepts_slotune_rules_and_refuses_broken_ones(tmp_path: Path) -> None:
    check = promtool_checker()
    assert check is not None
    good = tmp_path / "good"
    good.write_text(rule_files([prometheus_rule()])["default.chat.yaml"])
    assert check(good) is None
    bad = tmp_path / "bad"
    bad.write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": [{"record": "x"}]}]}))
    assert check(bad)


class Reloads:
    def __init__(self) -> None:
        self.calls = 0
        self.fail = False

    def __call__(self, url: str) -> None:
        self.calls += 1
        if self.fail:
            raise ConnectionRefusedError("Prometheus is down")


def test_prometheus_reloads_after_a_change_only_and_again_after_a_failed_reload(
    tmp_path: Path,
) -> None:
    reloads = Reloads()
    sync = RuleSync(tmp_path / "kubeconfig", RuleFiles(tmp_path / "rules"), "http://x", reloads)
    rule = prometheus_rule()
    sync.apply("ADDED", rule)
    sync.sync()
    assert reloads.calls == 1 and (tmp_path / "rules" / "default.chat.yaml").exists()
    sync.apply("MODIFIED", rule)  # e.g. only its metadata changed
    sync.sync()
    assert reloads.calls == 1
    reloads.fail = True
    sync.apply("DELETED", rule)
    sync.sync()
    assert reloads.calls == 2 and sync.reload_pending
    assert not (tmp_path / "rules" / "default.chat.yaml").exists()
    reloads.fail = False
    sync.sync()  # the next list retries
    assert reloads.calls == 3 and not sync.reload_pending


def test_prometheus_reads_the_rule_files_only_when_given_a_rules_dir(tmp_path: Path) -> None:
    assert "rule_files" not in config(tmp_path / "targets.json", 2.0)
    with_rules = config(tmp_path / "targets.json", 2.0, tmp_path / "rules")
    assert with_rules["rule_files"] == [str(tmp_path / "rules" / "*.yaml")]
    assert with_rules["global"]["evaluation_interval"] == "2s"


def test_the_stand_in_crd_is_the_prometheus_operators_api() -> None:
    spec = PROMETHEUS_RULE_CRD["spec"]
    assert PROMETHEUS_RULE_CRD["metadata"]["name"] == "prometheusrules.monitoring.coreos.com"
    assert (spec["group"], spec["names"]["kind"], spec["scope"]) == (
        "monitoring.coreos.com",
        "PrometheusRule",
        "Namespaced",
    )
    assert [v["name"] for v in spec["versions"] if v["served"] and v["storage"]] == ["v1"]
    # It is what the operator's RBAC grants.
    rbac = yaml.safe_load((ROOT / "charts" / "slotune" / "files" / "rbac-rules.yaml").read_text())
    granted = {
        (group, resource, verb)
        for rule in rbac["namespaced"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    for verb in ("get", "list", "watch", "create", "patch", "update"):
        assert (spec["group"], spec["names"]["plural"], verb) in granted
