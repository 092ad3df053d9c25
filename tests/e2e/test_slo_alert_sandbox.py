"""In the sandbox, load above the SLO pages: the operator applies its PrometheusRule, the rule
sync loads it into the sandbox's Prometheus, and the TTFT page goes pending, then firing.

Shortened for the test, and only that: the operator runs with `--alert-speedup 30`, so every
burn-rate window and `for` is 30 times shorter than the SRE workbook's (page 1: 2m and 10s at
14.4x, for 4s; page 2: 12m and 1m at 6x, for 30s; ticket: 144m and 12m at 1x, for 2m);
Prometheus scrapes and evaluates every 2 s. Thresholds, expressions, labels and the path from
LLMService to alert are the shipped ones.

The service: one replica (maxReplicas 1, tuning off) of at most 4 running requests of 200-600
output tokens (~3 s each: it serves ~1.3 req/s), p95 TTFT 500 ms (a vLLM bucket boundary: the
alert is exact). 0.25 req/s keeps it healthy (a request seldom waits for a slot); 4 req/s is
three times what it can serve, so requests queue and every first token comes seconds late.
Bounded: at most 40 s + 150 s of load (~600 requests), stopped as soon as the page fires.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client
from sandbox_fixtures import (
    E2E_CONFIG,
    BackgroundLoad,
    Service,
    eventually,
    prometheus_alerts,
    prometheus_api,
    promql,
    running_sandbox,
    service_manifest,
)

from slotune.render.alerts import alert_name, rule_name, sped_up_burn_rates, window_seconds
from slotune.sandbox.loadgen import Scenario, steps
from slotune.sandbox.rules import rule_file_name
from slotune.sandbox.sandbox import Sandbox

pytestmark = pytest.mark.e2e

SPEEDUP = 30
TIERS = sped_up_burn_rates(SPEEDUP)
PAGE_WINDOWS = {t.long_window for t in TIERS if t.severity == "critical"}
CONFIG = E2E_CONFIG  # scrapes and rule evaluations every 2 s: 5 samples in a 10 s window
HEALTHY_RATE, OVERLOAD_RATE = 0.25, 4.0
HEALTHY_S = 40.0  # of load before the burn, enough for a broken rule to show
FIRING_WITHIN_S = 150.0  # of the burn's start; seen: page 2 pending at ~10 s, firing at ~40 s
ALERT = alert_name("ttft")


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    with running_sandbox(tmp_path_factory.mktemp("sandbox"), CONFIG, alert_speedup=SPEEDUP) as sb:
        yield sb


def _alerts_history(url: str, service: str) -> dict[tuple[str, str], float]:
    """First time each (window, alertstate) of the TTFT page appears in the ALERTS series."""
    selector = f'ALERTS{{alertname="{ALERT}",llmservice="{service}",severity="critical"}}'
    first: dict[tuple[str, str], float] = {}
    for series in promql(url, f"{selector}[10m]"):
        key = (series["metric"]["window"], series["metric"]["alertstate"])
        first[key] = min(float(ts) for ts, _ in series["values"])
    return first


def test_load_above_the_slo_makes_the_page_pending_then_firing(sandbox: Sandbox, k8s: Any) -> None:
    url = sandbox.prometheus_url
    manifest = service_manifest(
        "burn",
        scaling={"minReplicas": 1, "maxReplicas": 1},
        batching={"maxNumSeqs": {"initial": 4, "min": 4, "max": 4}},
        tuning={"mode": "off"},
    )
    manifest["spec"]["slo"]["ttft"] = {"target": "500ms", "percentile": 95}
    service = Service(k8s, manifest)
    deleted = False
    group = f"slotune.{service.namespace}.{service.name}.slo"

    def read_rule() -> Any:
        return client.CustomObjectsApi(k8s).get_namespaced_custom_object(
            "monitoring.coreos.com", "v1", service.namespace, "prometheusrules", service.name
        )

    def rule_groups() -> list[dict[str, Any]]:
        return [g for g in prometheus_api(url, "rules")["groups"] if g["name"] == group]

    try:
        # The operator's PrometheusRule, applied for real, reaches Prometheus' rule files.
        rule = eventually(read_rule, 60, "the PrometheusRule")
        assert rule["metadata"]["ownerReferences"][0]["kind"] == "LLMService"
        rules = [r for g in rule["spec"]["groups"] for r in g["rules"]]
        windows = {r["labels"]["window"] for r in rules if r.get("alert") == ALERT}
        assert windows == {t.long_window for t in TIERS}, windows
        written = sandbox.rules_dir / rule_file_name(service.namespace, service.name)
        eventually(written.exists, 30, f"{written}")
        assert yaml.safe_load(written.read_text())["groups"] == rule["spec"]["groups"]
        loaded = eventually(rule_groups, 30, "Prometheus to load the rules")
        assert all(r["health"] != "err" for r in loaded[0]["rules"]), loaded

        balancer = sandbox.balancer_url(service.namespace, service.name, timeout=60)
        scenario: Scenario = steps((HEALTHY_S, HEALTHY_RATE), (FIRING_WITHIN_S, OVERLOAD_RATE))
        arrivals = scenario.arrivals(seed=7)
        with BackgroundLoad(balancer, arrivals, max_duration_s=scenario.duration_s) as load:
            # Healthy: the share of slow requests is recorded (the le="0.5" bucket is found:
            # a number, not NaN) and low, and no page is even pending.
            over = rule_name("ttft", f"over_target:ratio_rate{TIERS[0].long_window}")

            def share() -> float | None:
                found = promql(url, f'{over}{{llmservice="{service.name}"}}')
                value = float(found[0]["value"][1]) if found else math.nan
                return value if math.isfinite(value) else None

            eventually(lambda: share() is not None, HEALTHY_S, "the over-target share")
            time.sleep(max(0.0, HEALTHY_S - 2 - load.elapsed()))
            healthy_share, healthy_history = share(), _alerts_history(url, service.name)
            print(f"\nhealthy at {load.elapsed():.0f}s: over-target share {healthy_share}")
            assert healthy_share is not None and healthy_share < 0.2, healthy_share
            assert healthy_history == {}, healthy_history

            # The burn: the page goes pending, then fires.
            timeline: list[tuple[float, str, str]] = []

            def firing() -> list[dict[str, Any]]:
                alerts = prometheus_alerts(url, ALERT, llmservice=service.name)
                for alert in alerts:
                    seen = (alert["labels"]["window"], alert["state"])
                    if seen not in {(w, s) for _, w, s in timeline}:
                        timeline.append((round(load.elapsed() - HEALTHY_S, 1), *seen))
                return [
                    a
                    for a in alerts
                    if a["state"] == "firing" and a["labels"]["severity"] == "critical"
                ]

            fired = eventually(
                firing, FIRING_WITHIN_S - (load.elapsed() - HEALTHY_S), "the page to fire"
            )
            burn_s = load.elapsed() - HEALTHY_S
        print(f"(seconds into the burn, window, state): {timeline}; fired after {burn_s:.0f}s")
        page = fired[0]
        assert page["labels"]["severity"] == "critical", page
        assert page["labels"]["window"] in PAGE_WINDOWS, page
        assert page["labels"]["namespace"] == service.namespace
        assert "of requests waited longer than 500ms" in page["annotations"]["description"]
        # Pending came first, for at least the tier's `for` (less one evaluation interval):
        # from Prometheus' own record, so a pending state shorter than a poll still counts.
        history = _alerts_history(url, service.name)
        window = page["labels"]["window"]
        tier = next(t for t in TIERS if t.long_window == window)
        pending_at, firing_at = history[(window, "pending")], history[(window, "firing")]
        assert firing_at - pending_at >= window_seconds(tier.for_) - CONFIG.scrape_interval_s, (
            history
        )
        # Resyncs every 2 s left the PrometheusRule as it was created: nothing rewritten.
        assert read_rule()["metadata"]["generation"] == 1

        # Gone with its LLMService (garbage collection), and out of Prometheus.
        service.delete()
        deleted = True
        # Deleted at once, also when a resync was running (Kopf's finalizer is released).
        eventually(service.gone, 15, "the LLMService to be deleted")
        eventually(lambda: not written.exists(), 60, f"{written} removed")
        eventually(lambda: not rule_groups(), 30, "Prometheus to drop the rules")
    finally:
        if not deleted:
            service.delete()
