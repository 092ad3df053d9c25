"""vLLM's Prometheus metrics: names, bucket boundaries, accumulation and text exposition.

The single source of truth for every piece of slotune that speaks vLLM metrics: the engine
simulator fills a :class:`VllmMetrics`, the emulator serves :meth:`VllmMetrics.render`, the
operator's PromQL and the SLO alerts import the names and buckets from here.

Semantics follow vLLM V1 (``vllm/v1/metrics/stats.py`` and ``loggers.py``):

* TTFT is measured from the request's arrival, so it includes queueing;
* the inter-token latency histogram gets one sample per engine step per request that
  produced a token in that step (not for its first token), so a step with ``B`` decoding
  requests adds ``B`` samples of the same value -- hence :meth:`Histogram.observe` takes a
  count;
* per-request histograms (e2e, queue, prefill, decode, inference, time per output token) are
  observed when the request finishes; queue time runs from arrival to the first scheduling,
  prefill time from the first scheduling to the first token (preemptions included), decode
  time from the first to the last token, time per output token is decode time over
  ``generated - 1``;
* every series carries the labels ``model_name`` and ``engine``.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import accumulate, pairwise
from typing import Final

# ---------------------------------------------------------------------------- names

TIME_TO_FIRST_TOKEN: Final = "vllm:time_to_first_token_seconds"
INTER_TOKEN_LATENCY: Final = "vllm:inter_token_latency_seconds"
TIME_PER_OUTPUT_TOKEN: Final = "vllm:request_time_per_output_token_seconds"
E2E_REQUEST_LATENCY: Final = "vllm:e2e_request_latency_seconds"
REQUEST_QUEUE_TIME: Final = "vllm:request_queue_time_seconds"
REQUEST_PREFILL_TIME: Final = "vllm:request_prefill_time_seconds"
REQUEST_DECODE_TIME: Final = "vllm:request_decode_time_seconds"
REQUEST_INFERENCE_TIME: Final = "vllm:request_inference_time_seconds"

NUM_REQUESTS_RUNNING: Final = "vllm:num_requests_running"
NUM_REQUESTS_WAITING: Final = "vllm:num_requests_waiting"
KV_CACHE_USAGE: Final = "vllm:kv_cache_usage_perc"

PROMPT_TOKENS: Final = "vllm:prompt_tokens_total"
GENERATION_TOKENS: Final = "vllm:generation_tokens_total"
REQUEST_SUCCESS: Final = "vllm:request_success_total"
NUM_PREEMPTIONS: Final = "vllm:num_preemptions_total"

LABEL_MODEL_NAME: Final = "model_name"
LABEL_ENGINE: Final = "engine"
LABEL_FINISHED_REASON: Final = "finished_reason"

# -------------------------------------------------------------------------- buckets

TTFT_BUCKETS: Final[tuple[float, ...]] = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
# Shared by the inter-token latency and the per-request time per output token.
ITL_BUCKETS: Final[tuple[float, ...]] = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
# Shared by e2e, queue, prefill, decode and inference time.
REQUEST_LATENCY_BUCKETS: Final[tuple[float, ...]] = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
    120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip

DEFAULT_BUCKETS: Final[Mapping[str, tuple[float, ...]]] = {
    TIME_TO_FIRST_TOKEN: TTFT_BUCKETS,
    INTER_TOKEN_LATENCY: ITL_BUCKETS,
    TIME_PER_OUTPUT_TOKEN: ITL_BUCKETS,
    E2E_REQUEST_LATENCY: REQUEST_LATENCY_BUCKETS,
    REQUEST_QUEUE_TIME: REQUEST_LATENCY_BUCKETS,
    REQUEST_PREFILL_TIME: REQUEST_LATENCY_BUCKETS,
    REQUEST_DECODE_TIME: REQUEST_LATENCY_BUCKETS,
    REQUEST_INFERENCE_TIME: REQUEST_LATENCY_BUCKETS,
}

# ``--custom-histogram-buckets`` keys (vLLM names the histograms without prefix and unit).
CUSTOM_BUCKET_KEYS: Final[Mapping[str, str]] = {
    "time_to_first_token": TIME_TO_FIRST_TOKEN,
    "inter_token_latency": INTER_TOKEN_LATENCY,
    "request_time_per_output_token": TIME_PER_OUTPUT_TOKEN,
    "e2e_request_latency": E2E_REQUEST_LATENCY,
    "request_queue_time": REQUEST_QUEUE_TIME,
    "request_prefill_time": REQUEST_PREFILL_TIME,
    "request_decode_time": REQUEST_DECODE_TIME,
    "request_inference_time": REQUEST_INFERENCE_TIME,
}

HELP: Final[Mapping[str, str]] = {
    TIME_TO_FIRST_TOKEN: "Histogram of time to first token in seconds.",
    INTER_TOKEN_LATENCY: "Histogram of inter-token latency in seconds.",
    TIME_PER_OUTPUT_TOKEN: "Histogram of time_per_output_token_seconds per request.",
    E2E_REQUEST_LATENCY: "Histogram of e2e request latency in seconds.",
    REQUEST_QUEUE_TIME: "Histogram of time spent in WAITING phase for request.",
    REQUEST_PREFILL_TIME: "Histogram of time spent in PREFILL phase for request.",
    REQUEST_DECODE_TIME: "Histogram of time spent in DECODE phase for request.",
    REQUEST_INFERENCE_TIME: "Histogram of time spent in RUNNING phase for request.",
    NUM_REQUESTS_RUNNING: "Number of requests in model execution batches.",
    NUM_REQUESTS_WAITING: "Number of requests waiting to be processed.",
    KV_CACHE_USAGE: "KV-cache usage. 1 means 100 percent usage.",
    PROMPT_TOKENS: "Number of prefill tokens processed.",
    GENERATION_TOKENS: "Number of generation tokens processed.",
    REQUEST_SUCCESS: "Count of successfully processed requests.",
    NUM_PREEMPTIONS: "Cumulative number of preemption from the engine.",
}

FINISHED_REASONS: Final = ("stop", "length", "abort")


def histogram_buckets(
    custom: Mapping[str, Iterable[float]] | None = None,
) -> dict[str, tuple[float, ...]]:
    """Bucket bounds per histogram, vLLM's defaults overridden like
    ``--custom-histogram-buckets`` (keys as in :data:`CUSTOM_BUCKET_KEYS`)."""
    buckets = dict(DEFAULT_BUCKETS)
    for key, bounds in (custom or {}).items():
        if key not in CUSTOM_BUCKET_KEYS:
            known = ", ".join(sorted(CUSTOM_BUCKET_KEYS))
            raise ValueError(f"unknown histogram {key!r} in custom buckets; known: {known}")
        values = tuple(float(b) for b in bounds)
        if not values or any(b <= a for a, b in pairwise(values)):
            raise ValueError(f"buckets of {key!r} must be non-empty and strictly increasing")
        buckets[CUSTOM_BUCKET_KEYS[key]] = values
    return buckets


# ------------------------------------------------------------------------ histogram


@dataclass(frozen=True, slots=True)
class HistogramSnapshot:
    """A histogram's state at one instant, as Prometheus would scrape it."""

    bounds: tuple[float, ...]
    cumulative: tuple[float, ...]  # one per bound, then +Inf
    sum: float

    @property
    def count(self) -> float:
        return self.cumulative[-1]

    def minus(self, earlier: HistogramSnapshot) -> HistogramSnapshot:
        """The increase since ``earlier`` (what ``increase()`` over a window sees)."""
        if earlier.bounds != self.bounds:
            raise ValueError("snapshots of histograms with different buckets")
        return HistogramSnapshot(
            self.bounds,
            tuple(a - b for a, b in zip(self.cumulative, earlier.cumulative, strict=True)),
            self.sum - earlier.sum,
        )

    def quantile(self, q: float) -> float:
        """``histogram_quantile(q, ...)`` exactly as Prometheus computes it.

        Linear interpolation inside the bucket holding the rank, the lowest bucket starting
        at 0; a rank in the +Inf bucket returns the highest finite bound; NaN if empty.
        """
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must be in [0, 1], got {q}")
        total = self.count
        if total <= 0:
            return math.nan
        rank = q * total
        index = bisect_left(self.cumulative, rank)
        if index >= len(self.bounds):
            return self.bounds[-1]
        lower = 0.0 if index == 0 else self.bounds[index - 1]
        below = 0.0 if index == 0 else self.cumulative[index - 1]
        in_bucket = self.cumulative[index] - below
        if in_bucket <= 0:
            return self.bounds[index]
        return lower + (self.bounds[index] - lower) * (rank - below) / in_bucket

    def fraction_above(self, threshold: float) -> float:
        """The fraction of observations above ``threshold``; NaN if empty.

        The inverse of ``quantile``: linear inside the bucket holding ``threshold`` (exact when
        it is a bucket bound), everything past the highest finite bound counted as above it.
        It is the SLO's error-budget burn: the target quantile is met when this is at most
        ``1 - quantile``, and unlike the quantile it still says how much room is left.
        """
        total = self.count
        if total <= 0:
            return math.nan
        if threshold >= self.bounds[-1]:
            return (total - self.cumulative[len(self.bounds) - 1]) / total
        index = bisect_left(self.bounds, threshold)
        lower = 0.0 if index == 0 else self.bounds[index - 1]
        below = 0.0 if index == 0 else self.cumulative[index - 1]
        in_bucket = self.cumulative[index] - below
        width = self.bounds[index] - lower
        within = below + (in_bucket * (threshold - lower) / width if width > 0 else in_bucket)
        return max(0.0, total - within) / total


class Histogram:
    """A Prometheus histogram that takes weighted observations.

    ``observe(value, count)`` is ``count`` observations of ``value`` in O(log buckets): the
    engine adds one ITL sample per running request per step without a Python loop.
    """

    __slots__ = ("_counts", "bounds", "count", "sum")

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds = tuple(float(b) for b in bounds)
        self._counts = [0] * (len(self.bounds) + 1)  # per bucket, not cumulative; last = +Inf
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float, count: int = 1) -> None:
        if count <= 0:
            return
        # Prometheus buckets are upper-inclusive: value v lands in the first bound >= v.
        self._counts[bisect_left(self.bounds, value)] += count
        self.count += count
        self.sum += value * count

    def observe_arithmetic(self, first: float, step: float, n: int, count: int = 1) -> None:
        """``count`` observations of each of ``first + step * j`` for ``j < n`` (step >= 0).

        O(buckets touched) instead of O(n): a run of decode iterations yields thousands of
        ITL samples, growing slowly with the context, that fall into a few buckets.
        """
        if n <= 0 or count <= 0:
            return
        if step < 0:
            raise ValueError("observe_arithmetic needs a non-decreasing sequence")
        bounds, counts = self.bounds, self._counts
        done = 0  # values placed so far: the first `done` of the sequence
        b = bisect_left(bounds, first)
        while done < n:
            if b >= len(bounds):
                counts[-1] += (n - done) * count
                break
            # Values up to bounds[b] are those with j <= (bounds[b] - first) / step.
            upto = n if step == 0 else min(n, math.floor((bounds[b] - first) / step) + 1)
            if upto > done:
                counts[b] += (upto - done) * count
                done = upto
            if done < n:
                b = bisect_left(bounds, first + step * done, b + 1)
        self.count += n * count
        self.sum += (n * first + step * (n * (n - 1) / 2)) * count

    def snapshot(self) -> HistogramSnapshot:
        # The simulator snapshots histograms of several hundred buckets at every scrape.
        return HistogramSnapshot(self.bounds, tuple(map(float, accumulate(self._counts))), self.sum)

    def quantile(self, q: float) -> float:
        return self.snapshot().quantile(q)


# ---------------------------------------------------------------------------- metrics


@dataclass
class VllmMetrics:
    """Everything one vLLM engine exposes on ``/metrics`` (the part slotune reads)."""

    buckets: Mapping[str, tuple[float, ...]] = field(default_factory=histogram_buckets)
    histograms: dict[str, Histogram] = field(init=False)
    num_requests_running: int = 0
    num_requests_waiting: int = 0
    kv_cache_usage: float = 0.0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    num_preemptions: int = 0
    request_success: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.histograms = {name: Histogram(bounds) for name, bounds in self.buckets.items()}

    # Named accessors for the hot path and for readers.
    @property
    def ttft(self) -> Histogram:
        return self.histograms[TIME_TO_FIRST_TOKEN]

    @property
    def itl(self) -> Histogram:
        return self.histograms[INTER_TOKEN_LATENCY]

    def observe_finished(
        self,
        *,
        e2e: float,
        queue: float,
        prefill: float,
        decode: float,
        inference: float,
        time_per_output_token: float,
        finished_reason: str = "stop",
    ) -> None:
        h = self.histograms
        h[E2E_REQUEST_LATENCY].observe(e2e)
        h[REQUEST_QUEUE_TIME].observe(queue)
        h[REQUEST_PREFILL_TIME].observe(prefill)
        h[REQUEST_DECODE_TIME].observe(decode)
        h[REQUEST_INFERENCE_TIME].observe(inference)
        h[TIME_PER_OUTPUT_TOKEN].observe(time_per_output_token)
        self.request_success[finished_reason] = self.request_success.get(finished_reason, 0) + 1

    def set_scheduler_state(self, running: int, waiting: int, kv_cache_usage: float) -> None:
        self.num_requests_running = running
        self.num_requests_waiting = waiting
        self.kv_cache_usage = kv_cache_usage

    def render(self, model_name: str, engine: str = "0") -> str:
        """The Prometheus text exposition (format 0.0.4) of every metric."""
        return render_exposition(self, model_name=model_name, engine=engine)


# ------------------------------------------------------------------------ exposition


def _format_value(value: float) -> str:
    """Numbers as prometheus_client writes them (Go's float formatting)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _escape_label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    return "{" + ",".join(f'{k}="{_escape_label(v)}"' for k, v in pairs) + "}"


def render_exposition(metrics: VllmMetrics, *, model_name: str, engine: str = "0") -> str:
    base = ((LABEL_MODEL_NAME, model_name), (LABEL_ENGINE, engine))
    lines: list[str] = []

    def header(name: str, kind: str) -> None:
        lines.append(f"# HELP {name} {HELP[name]}")
        lines.append(f"# TYPE {name} {kind}")

    for name, value in (
        (NUM_REQUESTS_RUNNING, float(metrics.num_requests_running)),
        (NUM_REQUESTS_WAITING, float(metrics.num_requests_waiting)),
        (KV_CACHE_USAGE, metrics.kv_cache_usage),
    ):
        header(name, "gauge")
        lines.append(f"{name}{_labels(base)} {_format_value(value)}")

    for name, count in (
        (PROMPT_TOKENS, metrics.prompt_tokens),
        (GENERATION_TOKENS, metrics.generation_tokens),
        (NUM_PREEMPTIONS, metrics.num_preemptions),
    ):
        header(name, "counter")
        lines.append(f"{name}{_labels(base)} {_format_value(float(count))}")

    header(REQUEST_SUCCESS, "counter")
    for reason in FINISHED_REASONS:
        value = float(metrics.request_success.get(reason, 0))
        labels = _labels((*base, (LABEL_FINISHED_REASON, reason)))
        lines.append(f"{REQUEST_SUCCESS}{labels} {_format_value(value)}")

    for name, histogram in metrics.histograms.items():
        header(name, "histogram")
        snap = histogram.snapshot()
        for bound, cumulative in zip((*snap.bounds, math.inf), snap.cumulative, strict=True):
            labels = _labels((*base, ("le", _format_value(bound))))
            lines.append(f"{name}_bucket{labels} {_format_value(cumulative)}")
        lines.append(f"{name}_count{_labels(base)} {_format_value(snap.count)}")
        lines.append(f"{name}_sum{_labels(base)} {_format_value(snap.sum)}")
    return "\n".join(lines) + "\n"
