"""What Prometheus would answer about a simulated cluster: scrapes, ``rate()`` and quantiles.

The operator builds a policy's :class:`~slotune.policy.types.MetricsSnapshot` from these
queries (``slotune.metrics.queries``), evaluated at the tuning tick ``T``:

* ``sum by (le) (rate(<histogram>_bucket[W]))`` for TTFT, ITL and E2E, then
  ``histogram_quantile`` at the SLO's percentile;
* ``sum(rate(<e2e>_count[W]))`` (finished requests/s), ``sum(rate(prompt_tokens_total[W]))``,
  ``sum(rate(generation_tokens_total[W]))``;
* ``sum(rate(<h>_sum[W])) / sum(rate(<h>_count[W]))``, the exact means of ITL and of the
  request prefill time;
* ``sum(num_requests_waiting)``, ``sum(num_requests_running)``, ``avg(kv_cache_usage_perc)``
  and ``max(timestamp(num_requests_running))`` for the snapshot's age.

:class:`PrometheusView` reproduces them from samples taken every scrape interval of every
pod that serves ``/metrics``: range selectors take the samples in ``(T - W, T]``, ``rate``
extrapolates like Prometheus' ``extrapolatedRate`` (to the range boundaries when the
samples come close to them, never below a counter's zero point), instant selectors see
only series still scraped (a deleted pod's series are marked stale), and histogram buckets
are summed over pods before the quantile -- including pods deleted within the window,
whose samples are still in the range.

The engines record histograms with fine buckets (for exact reporting); the view projects
them onto the buckets a real server exposes, which is exact because cumulative counts at a
subset of bounds are the coarse histogram.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from slotune.policy.types import RECENT_RATE_WINDOW_S, MetricsSnapshot, PodMetrics, PolicySpec
from slotune.sim.cluster import Cluster, Pod
from slotune.sim.vllm_metrics import (
    E2E_REQUEST_LATENCY,
    INTER_TOKEN_LATENCY,
    REQUEST_PREFILL_TIME,
    TIME_TO_FIRST_TOKEN,
    HistogramSnapshot,
)

LATENCY_HISTOGRAMS = (TIME_TO_FIRST_TOKEN, INTER_TOKEN_LATENCY, E2E_REQUEST_LATENCY)
MEAN_HISTOGRAMS = (INTER_TOKEN_LATENCY, REQUEST_PREFILL_TIME)  # read as sum / count
PEAK_WINDOW_S = 60.0  # max_over_time(...[1m]) of llm-d's saturation queries
LOOKBACK_S = 300.0  # Prometheus' default lookback for instant selectors


def extrapolated_rate(
    first_t: float,
    first_v: float,
    last_t: float,
    last_v: float,
    samples: int,
    range_end: float,
    range_s: float,
) -> float:
    """Prometheus' ``rate()`` of one counter series with no reset in the range.

    Follows ``extrapolatedRate`` in ``promql/functions.go``: the increase between the first
    and last samples is extrapolated to the range boundaries when they lie within 1.1 mean
    sample intervals, else by half an interval; toward the start never past the point where
    the counter would have been zero.
    """
    if samples < 2 or last_t <= first_t:
        raise ValueError("rate needs two samples at different times")
    increase = last_v - first_v
    sampled = last_t - first_t
    average = sampled / (samples - 1)
    threshold = average * 1.1
    to_start = first_t - (range_end - range_s)
    to_end = range_end - last_t
    if to_start >= threshold:
        to_start = average / 2
    if increase > 0 and first_v >= 0:
        to_zero = sampled * (first_v / increase)
        to_start = min(to_start, to_zero)
    if to_end >= threshold:
        to_end = average / 2
    return increase * (sampled + to_start + to_end) / sampled / range_s


def _monotonic(bounds: Sequence[float], cumulative: Sequence[float]) -> HistogramSnapshot:
    """Summed bucket rates as a histogram; like Prometheus, buckets made non-monotonic by
    extrapolation are first made monotonic."""
    fixed: list[float] = []
    running = 0.0
    for c in cumulative:
        running = max(running, c)
        fixed.append(running)
    return HistogramSnapshot(tuple(bounds), tuple(fixed), 0.0)


def histogram_quantile(q: float, bounds: Sequence[float], cumulative: Sequence[float]) -> float:
    """``histogram_quantile`` over summed bucket rates (NaN without observations)."""
    return _monotonic(bounds, cumulative).quantile(q)


def fraction_above(threshold: float, bounds: Sequence[float], cumulative: Sequence[float]) -> float:
    """The fraction of the summed bucket rates above ``threshold`` (NaN without observations)."""
    return _monotonic(bounds, cumulative).fraction_above(threshold)


@dataclass(frozen=True, slots=True)
class _Sample:
    t: float
    histograms: tuple[tuple[float, ...], ...]  # coarse cumulative, in LATENCY_HISTOGRAMS order
    requests: float  # the E2E histogram's count
    prompt_tokens: float
    generation_tokens: float
    running: float
    waiting: float
    kv_cache_usage: float
    sums: tuple[float, ...]  # (sum, count) of each of MEAN_HISTOGRAMS, flattened


@dataclass(frozen=True, slots=True)
class _Gauges:
    t: float
    running: float
    waiting: float
    kv_cache_usage: float


class _Series:
    """Everything scraped from one pod."""

    __slots__ = ("alive", "gauges", "samples")

    def __init__(self) -> None:
        self.samples: deque[_Sample] = deque()
        self.gauges: deque[_Gauges] = deque()  # fast gauge feed (KPA's queue-proxy stats)
        self.alive = True


class PrometheusView:
    """Samples of every pod, and the snapshot a policy gets at a tick.

    ``visible_buckets`` are the bounds a real server exposes for TTFT, ITL and E2E (vLLM's
    defaults, plus the SLO targets when the operator sets them with
    ``--custom-histogram-buckets``); the engines' own histograms must contain them.
    """

    def __init__(
        self,
        visible_buckets: Mapping[str, tuple[float, ...]],
        engine_buckets: Mapping[str, tuple[float, ...]],
        *,
        retention_s: float,
    ) -> None:
        self.visible = {name: tuple(visible_buckets[name]) for name in LATENCY_HISTOGRAMS}
        self._index: dict[str, tuple[int, ...]] = {}
        for name in LATENCY_HISTOGRAMS:
            fine = engine_buckets[name]
            position = {b: i for i, b in enumerate(fine)}
            missing = [b for b in self.visible[name] if b not in position]
            if missing:
                raise ValueError(f"{name}: engine buckets lack the visible bounds {missing}")
            self._index[name] = tuple(position[b] for b in self.visible[name])
        self.retention_s = max(retention_s, PEAK_WINDOW_S, LOOKBACK_S)
        self._series: dict[str, _Series] = {}
        self.last_scrape_s = -math.inf

    # ----------------------------------------------------------------------- scrape

    def _project(self, name: str, cumulative: tuple[float, ...]) -> tuple[float, ...]:
        return (*(cumulative[i] for i in self._index[name]), cumulative[-1])

    def scrape(self, pods: Iterable[Pod], t: float) -> None:
        """Scrape every pod in ``pods`` at ``t``; series of pods not among them go stale."""
        seen: set[str] = set()
        for pod in pods:
            engine = pod.engine
            if engine is None:
                continue
            m = engine.metrics
            hist = m.histograms
            series = self._series.get(pod.name)
            if series is None:
                series = self._series[pod.name] = _Series()
            e2e = hist[E2E_REQUEST_LATENCY].snapshot()
            series.samples.append(
                _Sample(
                    t,
                    (
                        self._project(
                            TIME_TO_FIRST_TOKEN, hist[TIME_TO_FIRST_TOKEN].snapshot().cumulative
                        ),
                        self._project(
                            INTER_TOKEN_LATENCY, hist[INTER_TOKEN_LATENCY].snapshot().cumulative
                        ),
                        self._project(E2E_REQUEST_LATENCY, e2e.cumulative),
                    ),
                    e2e.count,
                    float(m.prompt_tokens),
                    float(m.generation_tokens),
                    float(m.num_requests_running),
                    float(m.num_requests_waiting),
                    m.kv_cache_usage,
                    tuple(
                        value
                        for snap in (hist[name].snapshot() for name in MEAN_HISTOGRAMS)
                        for value in (snap.sum, snap.count)
                    ),
                )
            )
            series.alive = True
            seen.add(pod.name)
        for name, series in self._series.items():
            if name not in seen:
                series.alive = False
        self.last_scrape_s = t
        self._forget(t)

    def sample_gauges(self, pods: Iterable[Pod], t: float) -> None:
        """The fast gauge feed (every second, like Knative's queue-proxy reports)."""
        for pod in pods:
            engine = pod.engine
            series = self._series.get(pod.name)
            if engine is None or series is None:
                continue  # not scraped yet: the autoscaler does not know the pod either
            m = engine.metrics
            series.gauges.append(
                _Gauges(
                    t,
                    float(m.num_requests_running),
                    float(m.num_requests_waiting),
                    m.kv_cache_usage,
                )
            )
            while series.gauges and series.gauges[0].t <= t - PEAK_WINDOW_S:
                series.gauges.popleft()

    def _forget(self, t: float) -> None:
        horizon = t - self.retention_s
        for name in list(self._series):
            samples = self._series[name].samples
            while samples and samples[0].t <= horizon:
                samples.popleft()
            if not samples:
                del self._series[name]

    # -------------------------------------------------------------------- queries

    def snapshot(self, now: float, spec: PolicySpec, cluster: Cluster) -> MetricsSnapshot | None:
        """The policy's snapshot at ``now``; None when no series is fresh (nothing scraped)."""
        window = spec.window_s
        start = now - window
        alive = [(n, s) for n, s in self._series.items() if s.alive and s.samples]
        if not alive:
            return None

        sizes = [len(self.visible[name]) + 1 for name in LATENCY_HISTOGRAMS]
        bucket_rates = [[0.0] * size for size in sizes]
        rates = [0.0, 0.0, 0.0]
        sum_rates = [0.0] * (2 * len(MEAN_HISTOGRAMS))
        have_rate = False
        for series in self._series.values():
            in_range = [s for s in series.samples if start < s.t <= now]
            if len(in_range) < 2:
                continue
            first, last, n = in_range[0], in_range[-1], len(in_range)
            have_rate = True
            for h in range(len(LATENCY_HISTOGRAMS)):
                acc = bucket_rates[h]
                for i, (a, b) in enumerate(
                    zip(first.histograms[h], last.histograms[h], strict=True)
                ):
                    if b != a:
                        acc[i] += extrapolated_rate(first.t, a, last.t, b, n, now, window)
            for k, (a, b) in enumerate(
                (
                    (first.requests, last.requests),
                    (first.prompt_tokens, last.prompt_tokens),
                    (first.generation_tokens, last.generation_tokens),
                )
            ):
                if b != a:
                    rates[k] += extrapolated_rate(first.t, a, last.t, b, n, now, window)
            for k, (a, b) in enumerate(zip(first.sums, last.sums, strict=True)):
                if b != a:
                    sum_rates[k] += extrapolated_rate(first.t, a, last.t, b, n, now, window)

        # The same rate() over the last minute only, for the policy to tell a step from a ramp.
        recent_start = now - RECENT_RATE_WINDOW_S
        recent_rate: float | None = None
        for series in self._series.values():
            recent = [s for s in series.samples if recent_start < s.t <= now]
            if len(recent) < 2:
                continue
            recent_rate = (recent_rate or 0.0) + (
                extrapolated_rate(
                    recent[0].t,
                    recent[0].requests,
                    recent[-1].t,
                    recent[-1].requests,
                    len(recent),
                    now,
                    RECENT_RATE_WINDOW_S,
                )
                if recent[-1].requests != recent[0].requests
                else 0.0
            )

        def quantile(h: int, percentile: float) -> float | None:
            if not have_rate:
                return None
            name = LATENCY_HISTOGRAMS[h]
            value = histogram_quantile(percentile / 100, self.visible[name], bucket_rates[h])
            return None if math.isnan(value) else value

        def over(h: int, target: float) -> float | None:
            if not have_rate:
                return None
            value = fraction_above(target, self.visible[LATENCY_HISTOGRAMS[h]], bucket_rates[h])
            return None if math.isnan(value) else value

        def mean(m: int) -> float | None:
            total, count = sum_rates[2 * m], sum_rates[2 * m + 1]
            return total / count if have_rate and count > 0 else None

        itl_over = over(1, spec.itl_target_s)
        pods: list[PodMetrics] = []
        newest = -math.inf
        for name, series in alive:
            latest = series.samples[-1]
            newest = max(newest, latest.t)
            running, waiting, kv = latest.running, latest.waiting, latest.kv_cache_usage
            peak_from = now - PEAK_WINDOW_S
            waiting_peak = max(
                (s.waiting for s in series.samples if s.t > peak_from), default=waiting
            )
            kv_peak = max((s.kv_cache_usage for s in series.samples if s.t > peak_from), default=kv)
            if series.gauges and series.gauges[-1].t >= latest.t:
                g = series.gauges[-1]
                newest = max(newest, g.t)
                running, waiting, kv = g.running, g.waiting, g.kv_cache_usage
                waiting_peak = max(
                    [waiting_peak, *(x.waiting for x in series.gauges if x.t > peak_from)]
                )
                kv_peak = max(
                    [kv_peak, *(x.kv_cache_usage for x in series.gauges if x.t > peak_from)]
                )
            pods.append(PodMetrics(name, running, waiting, kv, waiting_peak, kv_peak))

        return MetricsSnapshot(
            time_s=now,
            age_s=max(0.0, now - newest),
            request_rate=rates[0] if have_rate else None,
            recent_request_rate=recent_rate,
            prompt_token_rate=rates[1] if have_rate else None,
            generation_token_rate=rates[2] if have_rate else None,
            ttft=quantile(0, spec.ttft_percentile),
            itl=quantile(1, spec.itl_percentile),
            e2e=quantile(2, spec.e2e_percentile or 95.0) if spec.e2e_target_s is not None else None,
            waiting=sum(p.waiting for p in pods),
            running=sum(p.running for p in pods),
            kv_cache_usage=sum(p.kv_cache_usage for p in pods) / len(pods),
            ready_replicas=cluster.ready_replicas,
            pending_replicas=cluster.pending_replicas,
            cold_start_s=cluster.observed_cold_start_s,
            pods=tuple(pods),
            ttft_over=over(0, spec.ttft_target_s),
            itl_over=itl_over,
            itl_median=quantile(1, 50.0),
            itl_buckets=tuple(
                zip(
                    (*self.visible[INTER_TOKEN_LATENCY], math.inf),
                    _monotonic(self.visible[INTER_TOKEN_LATENCY], bucket_rates[1]).cumulative,
                    strict=True,
                )
            )
            if have_rate
            else (),
            itl_over_median=quantile(1, 100 * (1 - itl_over / 2)) if itl_over else None,
            itl_mean=mean(0),
            prefill_mean=mean(1),
        )
