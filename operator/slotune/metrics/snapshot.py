"""Query results -> per-service series -> the policy's MetricsSnapshot. Pure.

Missing is never zero: a series that Prometheus did not return stays None all the way to the
policy, which holds instead of reading it as an idle service.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from slotune.metrics.queries import FRESHNESS, GAUGES, HISTOGRAMS, MEANS, RATES, RECENT_RATE
from slotune.policy.types import MetricsSnapshot, PolicySpec
from slotune.sim.vllm_metrics import HistogramSnapshot

ServiceKey = tuple[str, str]  # (namespace, llmservice)
STALE_AFTER_S = 60.0
"""Newest sample older than this: the servers stopped being scraped (4 scrape intervals)."""


@dataclass
class ServiceSeries:
    """Every value Prometheus returned for one LLMService."""

    buckets: dict[str, dict[float, float]] = field(default_factory=dict)
    scalars: dict[str, float] = field(default_factory=dict)


def _number(sample: Sequence[Any]) -> float | None:
    value = float(sample[1])
    return None if math.isnan(value) or math.isinf(value) else value


def group_by_service(
    results: Mapping[str, Sequence[Mapping[str, Any]]],
) -> dict[ServiceKey, ServiceSeries]:
    """Instant-query results keyed by metric name -> series per (namespace, llmservice)."""
    grouped: dict[ServiceKey, ServiceSeries] = {}
    for name, series_list in results.items():
        for series in series_list:
            labels = series.get("metric", {})
            if "namespace" not in labels or "llmservice" not in labels:
                continue
            key = (str(labels["namespace"]), str(labels["llmservice"]))
            value = _number(series["value"])
            if value is None:
                continue
            target = grouped.setdefault(key, ServiceSeries())
            if name in HISTOGRAMS:
                target.buckets.setdefault(name, {})[float(labels["le"])] = value
            else:
                target.scalars[name] = value
    return grouped


def quantile(bucket_rates: Mapping[float, float] | None, percentile: float) -> float | None:
    """`histogram_quantile(percentile/100, ...)` over bucket rates; None without traffic."""
    if not bucket_rates or math.inf not in bucket_rates:
        return None
    bounds = tuple(sorted(b for b in bucket_rates if b != math.inf))
    cumulative = (*(bucket_rates[b] for b in bounds), bucket_rates[math.inf])
    value = HistogramSnapshot(bounds, cumulative, 0.0).quantile(percentile / 100)
    return None if math.isnan(value) else value


def fraction_above(bucket_rates: Mapping[float, float] | None, target: float) -> float | None:
    """The fraction of observations above `target` (the SLO's budget burn); None without
    traffic. Interpolated inside a bucket as `histogram_quantile` does."""
    if not bucket_rates or math.inf not in bucket_rates:
        return None
    bounds = tuple(sorted(b for b in bucket_rates if b != math.inf))
    cumulative = (*(bucket_rates[b] for b in bounds), bucket_rates[math.inf])
    value = HistogramSnapshot(bounds, cumulative, 0.0).fraction_above(target)
    return None if math.isnan(value) else value


def to_snapshot(
    series: ServiceSeries | None,
    spec: PolicySpec,
    ready_replicas: int,
    pending_replicas: int,
    now_s: float,
    cold_start_s: float | None = None,
) -> MetricsSnapshot | None:
    """The policy's view of one service, or None when Prometheus has nothing for it."""
    if series is None or FRESHNESS not in series.scalars:
        return None
    scalars = series.scalars
    itl = series.buckets.get("itl")
    itl_over = fraction_above(itl, spec.itl_target_s)
    return MetricsSnapshot(
        time_s=now_s,
        age_s=max(0.0, now_s - scalars[FRESHNESS]),
        request_rate=scalars.get(RATES[0]),
        recent_request_rate=scalars.get(RECENT_RATE),
        prompt_token_rate=scalars.get(RATES[1]),
        generation_token_rate=scalars.get(RATES[2]),
        ttft=quantile(series.buckets.get("ttft"), spec.ttft_percentile),
        itl=quantile(series.buckets.get("itl"), spec.itl_percentile),
        e2e=quantile(series.buckets.get("e2e"), spec.e2e_percentile or 95.0)
        if spec.e2e_target_s is not None
        else None,
        waiting=scalars.get(GAUGES[0]),
        running=scalars.get(GAUGES[1]),
        kv_cache_usage=scalars.get(GAUGES[2]),
        ready_replicas=ready_replicas,
        pending_replicas=pending_replicas,
        cold_start_s=cold_start_s,
        ttft_over=fraction_above(series.buckets.get("ttft"), spec.ttft_target_s),
        itl_over=itl_over,
        itl_median=quantile(itl, 50.0),
        itl_over_median=quantile(itl, 100 * (1 - itl_over / 2)) if itl_over else None,
        itl_buckets=tuple(sorted(itl.items())) if itl else (),
        itl_mean=scalars.get(MEANS[0]),
        prefill_mean=scalars.get(MEANS[1]),
    )
