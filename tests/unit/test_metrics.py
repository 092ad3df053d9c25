"""Metrics collection: batched queries, caching, errors kept apart from empty data, quantiles."""

from __future__ import annotations

import math
from typing import Any

import pytest
import requests

from slotune.api.resource import parse_spec
from slotune.metrics.collector import MetricsCollector
from slotune.metrics.queries import query_set
from slotune.metrics.snapshot import group_by_service, quantile, to_snapshot
from slotune.policy.types import PolicySpec
from slotune.render.engines import ADAPTERS

SPEC = PolicySpec.from_spec(
    parse_spec(
        {"model": {"name": "m"}, "slo": {"ttft": {"target": "500ms"}, "itl": {"target": "25ms"}}}
    )
)


def series(ns: str, name: str, value: float, **labels: str) -> dict[str, Any]:
    return {"metric": {"namespace": ns, "llmservice": name, **labels}, "value": [0, str(value)]}


class FakePrometheus:
    def __init__(self, fail: bool = False) -> None:
        self.queries: list[str] = []
        self.fail = fail

    def custom_query(self, query: str) -> Any:
        self.queries.append(query)
        if self.fail:
            raise requests.ConnectionError("boom at 0x7f00deadbeef")
        if "_bucket" in query:
            return [
                series("a", "x", 5, le="0.1"),
                series("a", "x", 9, le="0.5"),
                series("a", "x", 10, le="+Inf"),
                series("b", "y", 1, le="0.1"),
                series("b", "y", 1, le="0.5"),
                series("b", "y", 1, le="+Inf"),
            ]
        if "[60s]" in query:  # the last minute's request rate
            return [series("a", "x", 4.5)]
        if "timestamp(" in query:
            return [series("a", "x", 990.0), series("b", "y", 900.0)]
        return [series("a", "x", 3.0), series("b", "y", 7.0)]


def test_one_query_per_metric_for_all_services_and_a_cache() -> None:
    fake = FakePrometheus()
    collector = MetricsCollector(refresh_s=10, connect=lambda url: fake)
    first = collector.read("http://p", "vllm", "5m", now_s=1000)
    assert set(first.series) == {("a", "x"), ("b", "y")}
    assert len(fake.queries) == len(query_set("vllm", ADAPTERS["vllm"].metrics, "5m").queries)
    assert collector.read("http://p", "vllm", "5m", now_s=1005) is first  # cached
    collector.read("http://p", "vllm", "5m", now_s=1011)
    assert len(fake.queries) == 2 * len(query_set("vllm", ADAPTERS["vllm"].metrics, "5m").queries)
    assert all(
        "sum by (namespace, llmservice" in q or "by (namespace, llmservice" in q
        for q in fake.queries
    )


def test_means_are_sum_over_count_and_only_where_the_engine_exports_them() -> None:
    vllm = query_set("vllm", ADAPTERS["vllm"].metrics, "5m").queries
    assert vllm["prefill_mean"] == (
        "sum by (namespace, llmservice) (rate(vllm:request_prefill_time_seconds_sum[5m])) / "
        "sum by (namespace, llmservice) (rate(vllm:request_prefill_time_seconds_count[5m]))"
    )
    assert "inter_token_latency_seconds_sum[5m]" in vllm["itl_mean"]
    sglang = query_set("sglang", ADAPTERS["sglang"].metrics, "5m").queries
    assert "itl_mean" in sglang and "prefill_mean" not in sglang
    # No traffic: Prometheus divides 0 by 0 and answers NaN, which is missing, not zero.
    grouped = group_by_service(
        {"itl_mean": [series("a", "x", math.nan)], "last_sample": [series("a", "x", 990.0)]}
    )
    snap = to_snapshot(grouped[("a", "x")], SPEC, ready_replicas=1, pending_replicas=0, now_s=1000)
    assert snap is not None and snap.itl_mean is None and snap.prefill_mean is None


def test_errors_are_reported_stably_and_counted() -> None:
    failed: list[str] = []
    collector = MetricsCollector(
        connect=lambda url: FakePrometheus(fail=True), on_query_error=failed.append
    )
    reading = collector.read("http://p:9090", "vllm", "5m", now_s=1000)
    assert reading.error == "cannot connect to Prometheus at http://p:9090"
    assert reading.series == {} and failed == ["ttft"]


def test_snapshot_quantiles_freshness_and_missing_is_none() -> None:
    fake = FakePrometheus()
    results = {
        name: fake.custom_query(q)
        for name, q in query_set("vllm", ADAPTERS["vllm"].metrics, "5m").queries.items()
    }
    grouped = group_by_service(results)
    snap = to_snapshot(grouped[("a", "x")], SPEC, ready_replicas=2, pending_replicas=0, now_s=1000)
    assert snap is not None and snap.age_s == 10 and snap.request_rate == 3.0
    assert snap.recent_request_rate == 4.5
    # 95% of 10 = 9.5 lies in (0.5, +Inf]: histogram_quantile answers the highest finite bound.
    assert snap.ttft == 0.5
    # 10 observations, 5 above 0.1, 1 above 0.5; 500 ms lies on a bound, 25 ms inside (0, 0.1].
    assert snap.ttft_over == 0.1
    assert snap.itl_over == pytest.approx(1 - 5 * 0.25 / 10)
    # The ITL histogram itself travels too, in bound order with +Inf last (for quantiles at
    # ranks the policy derives).
    assert snap.itl_buckets == ((0.1, 5.0), (0.5, 9.0), (math.inf, 10.0))
    # The exact means: a ratio of rates, one query each (the fake answers 3.0 for "a").
    assert snap.itl_mean == 3.0 and snap.prefill_mean == 3.0
    assert to_snapshot(None, SPEC, 1, 0, 1000) is None
    other = to_snapshot(grouped[("b", "y")], SPEC, ready_replicas=1, pending_replicas=0, now_s=1000)
    assert other is not None and other.recent_request_rate is None  # absent, not zero
    assert quantile({0.1: 0.0, math.inf: 0.0}, 95) is None  # no traffic is not zero latency
