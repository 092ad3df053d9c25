"""Named PromQL templates, one batched query per metric for every LLMService at once.

Each query groups by the `namespace` and `llmservice` labels that the PodMonitor's relabelings
(or the sandbox's file discovery) attach to every scraped series, so one request answers for
all services of an engine and window. Quantiles are not computed in PromQL: the bucket rates
come back and `histogram_quantile`'s arithmetic is applied per service at that service's own
percentile, so services with different percentiles still share one query.
"""

from __future__ import annotations

from dataclasses import dataclass

from slotune.policy.types import RECENT_RATE_WINDOW_S
from slotune.render.engines import MetricNames

GROUP_LABELS = ("namespace", "llmservice")
_BY = ", ".join(GROUP_LABELS)

HISTOGRAMS = ("ttft", "itl", "e2e")
RATES = ("request_rate", "prompt_token_rate", "generation_token_rate")
GAUGES = ("waiting", "running", "kv_cache_usage")
MEANS = ("itl_mean", "prefill_mean")
RECENT_RATE = "recent_request_rate"
RECENT_RANGE = f"{RECENT_RATE_WINDOW_S:.0f}s"
FRESHNESS = "last_sample"


@dataclass(frozen=True)
class QuerySet:
    """The queries for one (engine, window): every metric slotune reads, by name."""

    engine: str
    window: str
    queries: dict[str, str]


def query_set(engine: str, names: MetricNames, window: str) -> QuerySet:
    def bucket_rate(histogram: str) -> str:
        return f"sum by ({_BY}, le) (rate({histogram}_bucket[{window}]))"

    def counter_rate(counter: str, range_: str = window) -> str:
        return f"sum by ({_BY}) (rate({counter}[{range_}]))"

    def mean(histogram: str) -> str:
        # No traffic divides 0 by 0: NaN, which the snapshot reads as missing.
        return f"{counter_rate(f'{histogram}_sum')} / {counter_rate(f'{histogram}_count')}"

    means = {"itl_mean": mean(names.itl_histogram)}
    if names.prefill_time_histogram is not None:
        means["prefill_mean"] = mean(names.prefill_time_histogram)
    return QuerySet(
        engine,
        window,
        {
            "ttft": bucket_rate(names.ttft_histogram),
            "itl": bucket_rate(names.itl_histogram),
            "e2e": bucket_rate(names.e2e_histogram),
            # Finished requests per second: the count of the E2E histogram.
            "request_rate": counter_rate(f"{names.e2e_histogram}_count"),
            # ... and over the last minute only, which tells a step from a ramp.
            RECENT_RATE: counter_rate(f"{names.e2e_histogram}_count", RECENT_RANGE),
            "prompt_token_rate": counter_rate(names.prompt_tokens_counter),
            "generation_token_rate": counter_rate(names.generation_tokens_counter),
            "waiting": f"sum by ({_BY}) ({names.waiting_gauge})",
            "running": f"sum by ({_BY}) ({names.running_gauge})",
            "kv_cache_usage": f"avg by ({_BY}) ({names.kv_usage_gauge})",
            # The newest sample's time: a gauge every server always exports.
            FRESHNESS: f"max by ({_BY}) (timestamp({names.running_gauge}))",
            **means,
        },
    )
