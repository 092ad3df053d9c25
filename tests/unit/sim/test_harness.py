"""The control-loop harness: Prometheus arithmetic, snapshots equal to the histograms, and
decisions applied with the delays of a Deployment."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from slotune.api.spec import LLMServiceSpec
from slotune.policy.models import histogram_quantile as policy_quantile
from slotune.policy.types import Decision, MetricsSnapshot, PolicySpec, Setting
from slotune.sim.cluster import Cluster, ClusterConfig, Template
from slotune.sim.harness import HarnessConfig, bucket_layout, simulate
from slotune.sim.perf import PerformanceModel
from slotune.sim.profiles import get_profile
from slotune.sim.prometheus import PrometheusView, extrapolated_rate, histogram_quantile
from slotune.sim.synthetic import poisson_requests
from slotune.sim.vllm_metrics import (
    E2E_REQUEST_LATENCY,
    INTER_TOKEN_LATENCY,
    REQUEST_PREFILL_TIME,
    TIME_TO_FIRST_TOKEN,
    HistogramSnapshot,
)

PERF = PerformanceModel(get_profile("llama-3-8b-h100"))


def make_spec(**scaling: Any) -> PolicySpec:
    return PolicySpec.from_spec(
        LLMServiceSpec.model_validate(
            {
                "model": {"name": "m"},
                "slo": {"ttft": {"target": "500ms"}, "itl": {"target": "25ms"}},
                "scaling": {"minReplicas": 1, "maxReplicas": 10, **scaling},
            }
        )
    )


SPEC = make_spec()


# ------------------------------------------------------------------ PromQL arithmetic


def test_rate_extrapolates_to_the_range_boundaries_like_prometheus() -> None:
    # 20 samples every 15 s in (0, 300]: the first is 15 s from the start (< 1.1 intervals),
    # so the increase over 285 s is stretched to 300 s.
    assert extrapolated_rate(15, 1000, 300, 1570, 20, 300, 300) == pytest.approx(
        570 * 300 / 285 / 300
    )
    # Samples far from both ends: half an interval on each side.
    assert extrapolated_rate(100, 1000, 200, 1100, 3, 300, 300) == pytest.approx(
        100 * (100 + 25 + 25) / 100 / 300
    )
    # A counter that started inside the range is not extrapolated below zero.
    assert extrapolated_rate(15, 1, 300, 571, 20, 300, 300) == pytest.approx(
        570 * (285 + 285 / 570) / 285 / 300
    )
    with pytest.raises(ValueError):
        extrapolated_rate(15, 1, 15, 2, 1, 300, 300)


def test_histogram_quantile_makes_buckets_monotonic_first() -> None:
    bounds = (0.1, 0.5, 1.0)
    assert histogram_quantile(0.5, bounds, (10, 9.9, 20, 20)) == pytest.approx(
        HistogramSnapshot(bounds, (10, 10, 20, 20), 0).quantile(0.5)
    )
    assert math.isnan(histogram_quantile(0.5, bounds, (0, 0, 0, 0)))


def test_bucket_layout_puts_targets_on_bounds_and_keeps_vllm_buckets_visible() -> None:
    engine, visible = bucket_layout(make_spec())
    assert 0.5 in visible[TIME_TO_FIRST_TOKEN] and 0.025 in visible[INTER_TOKEN_LATENCY]
    for name, shown in visible.items():
        assert set(shown) <= set(engine[name])
        assert len(engine[name]) > 10 * len(shown)  # fine buckets for exact reporting
    odd = PolicySpec.from_spec(
        LLMServiceSpec.model_validate(
            {"model": {"name": "m"}, "slo": {"ttft": {"target": "2s"}, "itl": {"target": "60ms"}}}
        )
    )
    engine, shown = bucket_layout(odd)
    _, plain = bucket_layout(odd, slo_buckets=False)
    assert 0.06 in shown[INTER_TOKEN_LATENCY] and 2.0 in shown[TIME_TO_FIRST_TOKEN]
    assert 0.06 not in plain[INTER_TOKEN_LATENCY] and 2.0 not in plain[TIME_TO_FIRST_TOKEN]
    assert 0.06 in engine[INTER_TOKEN_LATENCY]  # exact reporting needs it either way


# ------------------------------------------------------ the snapshot vs the histograms


@dataclass
class Copies:
    """What a test keeps of each pod at each scrape, independently of the view."""

    at: dict[float, dict[str, dict[str, Any]]] = field(default_factory=dict)


def drive_with_scrapes(
    cluster: Cluster, view: PrometheusView, until: float, copies: Copies
) -> None:
    requests = poisson_requests(12.0, until, seed=11)
    t_scrape = 15.0
    i = 0
    while t_scrape <= until:
        cluster.set_horizon(t_scrape)
        while i < len(requests) and requests[i].arrival_s < t_scrape:
            cluster.advance(requests[i].arrival_s)
            cluster.submit(requests[i], requests[i].arrival_s)
            i += 1
        cluster.advance(t_scrape)
        view.scrape(cluster.scraped_pods, t_scrape)
        copies.at[t_scrape] = {
            p.name: {
                "h": {
                    n: p.engine.metrics.histograms[n].snapshot()
                    for n in (
                        TIME_TO_FIRST_TOKEN,
                        INTER_TOKEN_LATENCY,
                        E2E_REQUEST_LATENCY,
                        REQUEST_PREFILL_TIME,
                    )
                },
                "gauges": (
                    p.engine.metrics.num_requests_running,
                    p.engine.metrics.num_requests_waiting,
                    p.engine.metrics.kv_cache_usage,
                ),
                "tokens": p.engine.metrics.prompt_tokens,
            }
            for p in cluster.scraped_pods
            if p.engine is not None
        }
        t_scrape += 15.0


def coarse(snapshot: HistogramSnapshot, visible: tuple[float, ...]) -> HistogramSnapshot:
    index = [snapshot.bounds.index(b) for b in visible]
    return HistogramSnapshot(
        visible, (*(snapshot.cumulative[k] for k in index), snapshot.cumulative[-1]), 0.0
    )


def test_the_snapshot_is_what_the_histograms_say() -> None:
    engine, visible = bucket_layout(SPEC)
    cluster = Cluster(
        PERF, ClusterConfig(histogram_buckets=engine), replicas=3, template=Template(64, 8192)
    )
    view = PrometheusView(visible, engine, retention_s=SPEC.window_s)
    copies = Copies()
    drive_with_scrapes(cluster, view, 600.0, copies)
    now = 600.5
    snap = view.snapshot(now, SPEC, cluster)
    assert snap is not None
    first, last = copies.at[315.0], copies.at[600.0]  # the samples in (300.5, 600.5]
    pods = sorted(last)
    assert len(pods) == 3 and snap.ready_replicas == 3 and snap.pending_replicas == 0
    for name, percentile, got in (
        (TIME_TO_FIRST_TOKEN, 95, snap.ttft),
        (INTER_TOKEN_LATENCY, 95, snap.itl),
    ):
        total: HistogramSnapshot | None = None
        for pod in pods:
            delta = coarse(last[pod]["h"][name], visible[name]).minus(
                coarse(first[pod]["h"][name], visible[name])
            )
            total = (
                delta
                if total is None
                else HistogramSnapshot(
                    delta.bounds,
                    tuple(a + b for a, b in zip(total.cumulative, delta.cumulative, strict=True)),
                    0,
                )
            )
        assert total is not None
        # Every pod's increase is stretched by the same 300/285: quantiles are unchanged.
        assert got == pytest.approx(total.quantile(percentile / 100), rel=1e-9)
    # The ITL histogram the policy gets agrees with the quantiles computed from it.
    assert [b for b, _ in snap.itl_buckets] == [*visible[INTER_TOKEN_LATENCY], math.inf]
    assert policy_quantile(snap.itl_buckets, 0.95) == pytest.approx(snap.itl, rel=1e-9)
    assert policy_quantile(snap.itl_buckets, 0.5) == pytest.approx(snap.itl_median, rel=1e-9)
    finished = sum(
        last[p]["h"][E2E_REQUEST_LATENCY].count - first[p]["h"][E2E_REQUEST_LATENCY].count
        for p in pods
    )
    # Samples at 315..600 s in the range (300.5, 600.5]: 285 s sampled, extrapolated by
    # 14.5 s toward the start and 0.5 s toward the end, to the whole 300 s.
    assert snap.request_rate == pytest.approx(finished * (285 + 14.5 + 0.5) / 285 / 300)
    # The last minute: samples at 555..600 s in (540.5, 600.5], extrapolated by 14.5 s
    # toward the start (under 1.1 intervals) and 0.5 s toward the end.
    recent_first = copies.at[555.0]
    recent = sum(
        last[p]["h"][E2E_REQUEST_LATENCY].count - recent_first[p]["h"][E2E_REQUEST_LATENCY].count
        for p in pods
    )
    assert snap.recent_request_rate == pytest.approx(recent * (45 + 14.5 + 0.5) / 45 / 60)
    prompt = sum(last[p]["tokens"] - first[p]["tokens"] for p in pods)
    assert snap.prompt_token_rate == pytest.approx(prompt / 285)
    assert snap.running == sum(last[p]["gauges"][0] for p in pods)
    assert snap.waiting == sum(last[p]["gauges"][1] for p in pods)
    assert snap.kv_cache_usage == pytest.approx(sum(last[p]["gauges"][2] for p in pods) / 3)
    assert snap.age_s == pytest.approx(0.5)
    assert [p.pod for p in snap.pods] == pods
    assert snap.e2e is None  # no E2E target: the operator does not query it
    # Means are sum over count, both rates stretched alike: exact, with no buckets involved.
    for name, got in (
        (INTER_TOKEN_LATENCY, snap.itl_mean),
        (REQUEST_PREFILL_TIME, snap.prefill_mean),
    ):
        total_sum = sum(last[p]["h"][name].sum - first[p]["h"][name].sum for p in pods)
        count = sum(last[p]["h"][name].count - first[p]["h"][name].count for p in pods)
        assert count > 0 and got == pytest.approx(total_sum / count, rel=1e-9)
    assert snap.prefill_mean is not None and snap.itl_mean is not None
    assert snap.prefill_mean > snap.itl_mean  # a prefill step carries the decodes too


def test_deleted_pods_leave_the_gauges_but_stay_in_the_rates() -> None:
    engine, visible = bucket_layout(SPEC)
    cluster = Cluster(
        PERF,
        ClusterConfig(histogram_buckets=engine, termination_grace_s=0.0),
        replicas=2,
        template=Template(64, 8192),
    )
    view = PrometheusView(visible, engine, retention_s=SPEC.window_s)
    copies = Copies()
    drive_with_scrapes(cluster, view, 300.0, copies)
    cluster.scale(1, 300.0)
    cluster.advance(315.0)  # the grace period (0 s) is over: the pod is gone
    view.scrape(cluster.scraped_pods, 315.0)
    snap = view.snapshot(315.5, SPEC, cluster)
    assert snap is not None
    assert len(snap.pods) == 1 and snap.ready_replicas == 1
    gone = (set(copies.at[300.0]) - {p.pod for p in snap.pods}).pop()
    finished_gone = copies.at[300.0][gone]["h"][E2E_REQUEST_LATENCY].count
    assert finished_gone > 0
    # Both pods' finished requests count in the rate.
    assert snap.request_rate is not None
    assert snap.request_rate * 300 > finished_gone


def test_no_scrape_means_no_snapshot_and_no_traffic_means_no_quantile() -> None:
    engine, visible = bucket_layout(SPEC)
    cluster = Cluster(
        PERF, ClusterConfig(histogram_buckets=engine), replicas=1, template=Template(64, 8192)
    )
    view = PrometheusView(visible, engine, retention_s=300)
    assert view.snapshot(10.0, SPEC, cluster) is None
    for t in (15.0, 30.0, 45.0):
        cluster.advance(t)
        view.scrape(cluster.scraped_pods, t)
    snap = view.snapshot(45.5, SPEC, cluster)
    assert snap is not None
    assert snap.ttft is None and snap.itl is None  # missing, never zero
    assert snap.request_rate == 0.0 and snap.running == 0.0


# ------------------------------------------------------------------------ the harness


@dataclass
class Scripted:
    """Asks for the given settings at the given times and records what it saw."""

    plan: dict[float, Setting]
    name: str = "scripted"
    interval_s: float = 10.0
    seen: list[tuple[float, MetricsSnapshot | None, Mapping[str, Any]]] = field(
        default_factory=list
    )

    def decide(
        self,
        snapshot: MetricsSnapshot | None,
        current: Setting,
        spec: PolicySpec,
        memory: Mapping[str, Any],
        now_s: float,
    ) -> Decision:
        self.seen.append((now_s, snapshot, memory))
        target = current
        for t, setting in self.plan.items():
            if now_s >= t:
                target = setting
        return Decision(target, "Steady", "scripted", memory={"calls": len(self.seen), "t": now_s})


def test_decisions_are_applied_with_cold_start_and_restart_delays() -> None:
    requests = poisson_requests(8.0, 900.0, seed=2)
    policy = Scripted({100.0: Setting(3, 64, 4096), 400.0: Setting(3, 32, 4096)})
    result = simulate(
        policy,
        requests,
        SPEC,
        PERF,
        initial=Setting(1, 64, 4096),
        cluster_config=ClusterConfig(cold_start_s=120.0),
        duration_s=900.0,
    )
    by_t = {p.t_s: p for p in result.timeline}
    assert by_t[210.0].replicas == 3 and by_t[210.0].ready == 1  # cold-starting
    assert by_t[240.0].ready == 3  # 100.5 + 120 s
    assert by_t[390.0].max_num_seqs == 64
    assert by_t[450.0].max_num_seqs == 32 and by_t[450.0].gpus == 4  # surging
    assert result.restarts == 1 and result.scale_actions == 1
    assert len(result.timeline) == 30 and result.timeline[-1].t_s == 900.0
    # Memory came back through JSON every time.
    assert policy.seen[5][2] == {"calls": 5, "t": policy.seen[4][0]}
    assert policy.seen[0][1] is None  # the first tick (10.5 s) precedes the first scrape (15 s)
    assert result.outcomes.submitted == len(requests)
    summary = result.summary(SPEC)
    assert 0 <= summary["window_attainment"] <= 1 and summary["gpu_hours"] > 0


def test_decisions_are_clamped_to_the_spec() -> None:
    requests = poisson_requests(2.0, 120.0, seed=2)
    policy = Scripted({0.0: Setting(50, 4, 10**6)})
    result = simulate(
        policy,
        requests,
        make_spec(maxReplicas=3),
        PERF,
        initial=Setting(1, 64, 4096),
        cluster_config=ClusterConfig(cold_start_s=1.0),
        config=HarnessConfig(),
    )
    last = result.timeline[-1]
    assert (last.replicas, last.max_num_seqs, last.max_batched_tokens) == (3, 8, 16384)
