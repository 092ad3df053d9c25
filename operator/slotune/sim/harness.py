"""The control loop in simulated time: a policy tuning a simulated cluster on a request trace.

Every tuning interval the harness builds the :class:`MetricsSnapshot` the operator would get
from Prometheus (see :mod:`slotune.sim.prometheus`: 15 s scrapes, ``rate`` and
``histogram_quantile`` over the SLO window, gauges summed or averaged), calls the policy --
the very object the operator runs -- and applies its decision to the cluster with the
delays a Deployment has: new replicas serve after their cold start, new batch flags after
a rolling restart. Nothing sleeps; the loop jumps from event to event.

Policies may declare a different cadence with optional attributes (the baselines do, to
behave like the autoscalers they stand for): ``interval_s`` (how often ``decide`` runs;
default the spec's tuning interval) and ``gauge_interval_s`` (a faster feed of the
running/waiting/KV gauges, like Knative's per-second queue-proxy stats; default none).

Besides what the policy sees, the harness measures the truth: the engines record TTFT, ITL
and E2E in fine histograms (2 % wide buckets, with the SLO targets as exact bounds), which
the harness totals every report step (30 s) over all pods, live and gone. Window
attainment, the timeline's latencies and the ITL percentile come from those; TTFT and E2E
percentiles and the per-request goodput from the finished requests themselves.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from slotune.policy.types import Decision, MetricsSnapshot, Policy, PolicySpec, Setting
from slotune.sim.cluster import Cluster, ClusterConfig, FailedRequest, Template
from slotune.sim.engine import FinishedRequest, Request
from slotune.sim.perf import PerformanceModel, PerfProfile
from slotune.sim.prometheus import LATENCY_HISTOGRAMS, PrometheusView
from slotune.sim.vllm_metrics import (
    DEFAULT_BUCKETS,
    E2E_REQUEST_LATENCY,
    INTER_TOKEN_LATENCY,
    TIME_TO_FIRST_TOKEN,
    HistogramSnapshot,
    VllmMetrics,
)

FloatArray = npt.NDArray[np.float64]
FINE_BUCKET_RATIO = 1.02
_FINE_RANGE = {
    TIME_TO_FIRST_TOKEN: (1e-3, 1e4),
    INTER_TOKEN_LATENCY: (1e-3, 1e2),
    E2E_REQUEST_LATENCY: (1e-2, 1e4),
}


@dataclass(frozen=True)
class HarnessConfig:
    """How the simulated control loop observes and acts."""

    scrape_interval_s: float = 15.0
    report_step_s: float = 30.0
    attainment_window_s: float = 300.0
    # The operator's queries run a moment after the scrapes they read, so a snapshot is
    # never from the same instant; this also makes age_s realistic (> 0).
    tick_offset_s: float = 0.5
    # After the last arrival, keep running (and controlling) until every request is done,
    # but no longer than this; what is left then counts as unfinished.
    drain_limit_s: float = 1800.0
    # Put the SLO targets on histogram bucket bounds, as DESIGN.md asks of the rendered
    # server flags (--custom-histogram-buckets), so that quantile checks at the target are
    # exact rather than interpolated.
    slo_buckets: bool = True

    def __post_init__(self) -> None:
        ratio = self.attainment_window_s / self.report_step_s
        if abs(ratio - round(ratio)) > 1e-9 or ratio < 1:
            raise ValueError("attainment_window_s must be a multiple of report_step_s")


def _targets(spec: PolicySpec) -> dict[str, float]:
    out = {TIME_TO_FIRST_TOKEN: spec.ttft_target_s, INTER_TOKEN_LATENCY: spec.itl_target_s}
    if spec.e2e_target_s is not None:
        out[E2E_REQUEST_LATENCY] = spec.e2e_target_s
    return out


def bucket_layout(
    spec: PolicySpec, slo_buckets: bool = True
) -> tuple[dict[str, tuple[float, ...]], dict[str, tuple[float, ...]]]:
    """(engine buckets, visible buckets): what the simulated engines record, and the subset
    a real server exposes to Prometheus."""
    targets = _targets(spec)
    engine = dict(DEFAULT_BUCKETS)
    visible: dict[str, tuple[float, ...]] = {}
    for name in LATENCY_HISTOGRAMS:
        shown = set(DEFAULT_BUCKETS[name])
        if slo_buckets and name in targets:
            shown.add(targets[name])
        visible[name] = tuple(sorted(shown))
        lo, hi = _FINE_RANGE[name]
        grid = {
            float(f"{lo * FINE_BUCKET_RATIO**k:.6g}")
            for k in range(int(math.log(hi / lo) / math.log(FINE_BUCKET_RATIO)) + 1)
        }
        exact = set(targets.values()) if name in targets else set()
        engine[name] = tuple(sorted(grid | shown | exact | {targets.get(name, lo)}))
    return engine, visible


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class TimelinePoint:
    """One report step (30 s), ending at ``t_s``."""

    t_s: float
    load_rps: float  # arrivals in the step per second
    ttft: float | None  # the step's exact TTFT at the SLO percentile (None: no sample)
    itl: float | None
    replicas: int  # desired
    ready: int
    pending: int
    gpus: int
    max_num_seqs: int
    max_batched_tokens: int
    reason: str  # of the latest decision
    seen_ttft: float | None  # what the policy saw at its latest tick
    seen_itl: float | None
    # What its latest decision predicted the window quantiles would be under its setting.
    predicted_ttft: float | None = None
    predicted_itl: float | None = None


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    t_s: float
    action: str
    reason: str
    message: str
    replicas: int
    max_num_seqs: int
    max_batched_tokens: int


@dataclass(frozen=True)
class Outcomes:
    """Per-request results: finished requests as arrays, failed ones counted by reason."""

    arrival_s: FloatArray
    ttft_s: FloatArray
    e2e_s: FloatArray
    tpot_s: FloatArray
    submitted: int
    failed: Mapping[str, int]

    @staticmethod
    def build(
        finished: Sequence[FinishedRequest], failed: Sequence[FailedRequest], submitted: int
    ) -> Outcomes:
        ordered = sorted(finished, key=lambda f: (f.request.arrival_s, str(f.request.request_id)))
        counts: dict[str, int] = {}
        for f in failed:
            counts[f.reason] = counts.get(f.reason, 0) + 1
        return Outcomes(
            arrival_s=np.array([f.request.arrival_s for f in ordered], dtype=np.float64),
            ttft_s=np.array([f.ttft_s for f in ordered], dtype=np.float64),
            e2e_s=np.array([f.e2e_s for f in ordered], dtype=np.float64),
            tpot_s=np.array([f.time_per_output_token_s for f in ordered], dtype=np.float64),
            submitted=submitted,
            failed=dict(sorted(counts.items())),
        )

    def goodput(self, spec: PolicySpec) -> float:
        """Fraction of submitted requests that met every target individually (TTFT, mean
        inter-token latency, E2E); failed and unfinished requests count as misses."""
        if self.submitted == 0:
            return 1.0
        ok = (self.ttft_s <= spec.ttft_target_s) & (self.tpot_s <= spec.itl_target_s)
        if spec.e2e_target_s is not None:
            ok &= self.e2e_s <= spec.e2e_target_s
        return float(np.count_nonzero(ok)) / self.submitted


@dataclass(frozen=True)
class LatencyRecord:
    """Exact histograms per report step: cumulative counts at ``bounds`` then the total."""

    bounds: Mapping[str, tuple[float, ...]]
    steps: Mapping[str, FloatArray]  # name -> (steps, len(bounds) + 1)

    def quantile(self, name: str, q: float, rows: slice | None = None) -> float | None:
        data = self.steps[name]
        cumulative = data[rows].sum(axis=0) if rows is not None else data.sum(axis=0)
        if cumulative[-1] <= 0:
            return None
        snap = HistogramSnapshot(self.bounds[name], tuple(float(c) for c in cumulative), 0.0)
        return snap.quantile(q)

    def fraction_within(self, name: str, target: float, rows: slice) -> float | None:
        cumulative = self.steps[name][rows].sum(axis=0)
        if cumulative[-1] <= 0:
            return None
        index = self.bounds[name].index(target)
        return float(cumulative[index] / cumulative[-1])


def window_attainment(
    record: LatencyRecord, spec: PolicySpec, steps_per_window: int, windows: int
) -> tuple[float, list[bool]]:
    """Fraction of windows whose SLO percentiles meet every target (no sample: met)."""
    targets = _targets(spec)
    percentiles = {
        TIME_TO_FIRST_TOKEN: spec.ttft_percentile,
        INTER_TOKEN_LATENCY: spec.itl_percentile,
        E2E_REQUEST_LATENCY: spec.e2e_percentile or 95.0,
    }
    met: list[bool] = []
    for w in range(windows):
        last = w == windows - 1
        rows = slice(w * steps_per_window, None if last else (w + 1) * steps_per_window)
        ok = True
        for name, target in targets.items():
            within = record.fraction_within(name, target, rows)
            # A tiny tolerance: the fraction is a ratio of float sums of integer counts.
            if within is not None and within < percentiles[name] / 100 - 1e-12:
                ok = False
        met.append(ok)
    return (sum(met) / len(met) if met else 1.0), met


@dataclass(frozen=True)
class RunResult:
    """Everything one simulated run produced."""

    policy: str
    duration_s: float
    gpu_seconds: float
    timeline: tuple[TimelinePoint, ...]
    decisions: tuple[DecisionRecord, ...]
    latencies: LatencyRecord
    outcomes: Outcomes
    scale_actions: int
    restarts: int
    pods_created: int
    report_step_s: float
    attainment_window_s: float

    @property
    def gpu_hours(self) -> float:
        return self.gpu_seconds / 3600

    def summary(self, spec: PolicySpec) -> dict[str, Any]:
        steps_per_window = round(self.attainment_window_s / self.report_step_s)
        windows = max(1, math.ceil(self.duration_s / self.attainment_window_s - 1e-9))
        attainment, _ = window_attainment(self.latencies, spec, steps_per_window, windows)
        o = self.outcomes
        finished = len(o.ttft_s)
        replicas = [p.replicas for p in self.timeline]
        return {
            "gpu_hours": self.gpu_hours,
            "window_attainment": attainment,
            "request_goodput": o.goodput(spec),
            "ttft_p95": percentile_or_none(o.ttft_s, 95),
            "itl_p95": self.latencies.quantile(INTER_TOKEN_LATENCY, 0.95),
            "e2e_p95": percentile_or_none(o.e2e_s, 95),
            "scale_actions": self.scale_actions,
            "restarts": self.restarts,
            "requests": o.submitted,
            "finished": finished,
            "failed": dict(o.failed),
            "max_replicas": max(replicas, default=0),
            "pods_created": self.pods_created,
        }


def percentile_or_none(values: FloatArray, p: float) -> float | None:
    if len(values) == 0:
        return None
    return float(np.percentile(values, p))


# --------------------------------------------------------------------------- exact totals


class ExactTotals:
    """Cluster-wide cumulative fine histograms, differenced at every report step."""

    def __init__(self, bounds: Mapping[str, tuple[float, ...]]) -> None:
        self.bounds = {name: bounds[name] for name in LATENCY_HISTOGRAMS}
        self._retired = {n: np.zeros(len(b) + 1) for n, b in self.bounds.items()}
        self._retired_seen = 0
        self._previous = {n: np.zeros(len(b) + 1) for n, b in self.bounds.items()}
        self.steps: dict[str, list[FloatArray]] = {n: [] for n in self.bounds}

    @staticmethod
    def _cumulative(metrics: VllmMetrics, name: str) -> FloatArray:
        return np.fromiter(metrics.histograms[name].snapshot().cumulative, dtype=np.float64)

    def record(self, cluster: Cluster) -> dict[str, FloatArray]:
        retired = cluster.retired_metrics
        for m in retired[self._retired_seen :]:
            for name in self.bounds:
                self._retired[name] += self._cumulative(m, name)
        self._retired_seen = len(retired)
        delta: dict[str, FloatArray] = {}
        for name in self.bounds:
            total = self._retired[name].copy()
            for pod in cluster.pods:
                if pod.engine is not None:
                    total += self._cumulative(pod.engine.metrics, name)
            delta[name] = total - self._previous[name]
            self._previous[name] = total
            self.steps[name].append(delta[name])
        return delta

    def fold_last(self, into: int) -> None:
        """Add the steps after ``into`` (the drain after the trace) into step ``into``."""
        for _name, rows in self.steps.items():
            if len(rows) > into + 1:
                rows[into] = rows[into] + np.sum(rows[into + 1 :], axis=0)
                del rows[into + 1 :]

    def result(self) -> LatencyRecord:
        return LatencyRecord(
            bounds=self.bounds,
            steps={
                n: np.array(rows, dtype=np.float64).reshape(len(rows), len(self.bounds[n]) + 1)
                for n, rows in self.steps.items()
            },
        )


def _step_quantile(bounds: tuple[float, ...], cumulative: FloatArray, q: float) -> float | None:
    if cumulative[-1] <= 0:
        return None
    return HistogramSnapshot(bounds, tuple(float(c) for c in cumulative), 0.0).quantile(q)


# ---------------------------------------------------------------------------- the loop


def _memory_roundtrip(memory: Mapping[str, Any]) -> dict[str, Any]:
    """The operator keeps a policy's memory in the LLMService status: it must survive JSON."""
    restored: dict[str, Any] = json.loads(json.dumps(memory, sort_keys=True))
    return restored


def clamp_setting(setting: Setting, spec: PolicySpec) -> Setting:
    """What the operator would apply: replicas within [min, max], knobs within bounds."""
    lo_s, hi_s = spec.max_num_seqs_bounds
    lo_t, hi_t = spec.max_batched_tokens_bounds
    seqs = min(max(setting.max_num_seqs, lo_s), hi_s)
    tokens = max(min(max(setting.max_batched_tokens, lo_t), hi_t), seqs)
    replicas = min(max(setting.replicas, spec.min_replicas), spec.max_replicas)
    return Setting(replicas, seqs, tokens)


def simulate(
    policy: Policy,
    requests: Sequence[Request],
    spec: PolicySpec,
    profile: PerfProfile | PerformanceModel,
    *,
    initial: Setting,
    cluster_config: ClusterConfig | None = None,
    config: HarnessConfig | None = None,
    duration_s: float | None = None,
    progress: Callable[[float], None] | None = None,
    on_tick: Callable[[MetricsSnapshot | None, Decision], None] | None = None,
) -> RunResult:
    """Run ``policy`` over ``requests`` (sorted by arrival) and measure what happened.

    The cluster starts warm with ``initial`` (its replicas ready at t = 0). ``duration_s``
    (default: the last arrival) bounds the GPU-hours and the attainment windows.
    """
    cfg = config or HarnessConfig()
    perf = profile if isinstance(profile, PerformanceModel) else PerformanceModel(profile)
    engine_buckets, visible = bucket_layout(spec, cfg.slo_buckets)
    base = cluster_config or ClusterConfig(gpus_per_replica=spec.gpus_per_replica)
    cluster_cfg = ClusterConfig(
        gpus_per_replica=base.gpus_per_replica,
        gpu_budget=base.gpu_budget if base.gpu_budget is not None else spec.gpu_budget,
        cold_start_s=base.cold_start_s,
        termination_grace_s=base.termination_grace_s,
        balancer=base.balancer,
        histogram_buckets=engine_buckets,
        max_model_len=base.max_model_len,
        kv_cache_blocks=base.kv_cache_blocks,
    )
    start = clamp_setting(initial, spec)
    cluster = Cluster(
        perf,
        cluster_cfg,
        replicas=start.replicas,
        template=Template(start.max_num_seqs, start.max_batched_tokens),
    )
    prom = PrometheusView(visible, engine_buckets, retention_s=spec.window_s)
    exact = ExactTotals(engine_buckets)

    if any(b.arrival_s < a.arrival_s for a, b in itertools.pairwise(requests)):
        raise ValueError("requests must be sorted by arrival time")
    if duration_s is not None:
        requests = [r for r in requests if r.arrival_s < duration_s]
    end = duration_s if duration_s is not None else (requests[-1].arrival_s if requests else 0.0)
    end = max(end, cfg.report_step_s)
    interval = float(getattr(policy, "interval_s", None) or spec.interval_s)
    gauge_interval = getattr(policy, "gauge_interval_s", None)
    percentile_ttft = spec.ttft_percentile / 100
    percentile_itl = spec.itl_percentile / 100

    memory: dict[str, Any] = {}
    timeline: list[TimelinePoint] = []
    decisions: list[DecisionRecord] = []
    scale_actions = 0
    last_reason = "Initial"
    last_predicted: Mapping[str, float] = {}
    seen: MetricsSnapshot | None = None
    gpu_seconds: float | None = None

    t_scrape = cfg.scrape_interval_s
    t_gauge = float(gauge_interval) if gauge_interval else math.inf
    t_tick = interval + cfg.tick_offset_s
    t_report = cfg.report_step_s
    i, n = 0, len(requests)
    arrivals_in_step = 0
    last_step = max(1, math.ceil(end / cfg.report_step_s - 1e-9)) - 1  # index of the last one
    hard_stop = end + cfg.drain_limit_s
    cluster.set_horizon(min(t_scrape, t_gauge, t_tick, t_report, end))

    while True:
        t_sync = min(t_scrape, t_gauge, t_tick, t_report, end if gpu_seconds is None else math.inf)
        if i < n and requests[i].arrival_s < t_sync:
            r = requests[i]
            i += 1
            cluster.advance(r.arrival_s)
            cluster.submit(r, r.arrival_s)
            arrivals_in_step += 1
            continue
        cluster.advance(t_sync)
        if gpu_seconds is None and t_sync >= end:
            gpu_seconds = cluster.gpu_seconds(end)
        if t_scrape <= t_sync:
            prom.scrape(cluster.scraped_pods, t_sync)
            t_scrape += cfg.scrape_interval_s
        if t_gauge <= t_sync:
            prom.sample_gauges(cluster.scraped_pods, t_sync)
            t_gauge += float(gauge_interval or math.inf)
        if t_tick <= t_sync:
            snapshot = prom.snapshot(t_sync, spec, cluster)
            current = Setting(
                cluster.replicas, cluster.template.max_num_seqs, cluster.template.max_batched_tokens
            )
            decision = policy.decide(snapshot, current, spec, memory, t_sync)
            memory = _memory_roundtrip(decision.memory)
            target = clamp_setting(decision.setting, spec)
            template = Template(target.max_num_seqs, target.max_batched_tokens)
            cluster.set_template(template, t_sync)
            if target.replicas != cluster.replicas:
                cluster.scale(target.replicas, t_sync)
                scale_actions += 1
            action = decision.action(current)
            last_reason = decision.reason
            last_predicted = decision.predicted
            seen = snapshot
            decisions.append(
                DecisionRecord(
                    t_sync,
                    action,
                    decision.reason,
                    decision.message,
                    target.replicas,
                    target.max_num_seqs,
                    target.max_batched_tokens,
                )
            )
            if on_tick is not None:
                on_tick(snapshot, decision)
            t_tick += interval
        if t_report <= t_sync:
            delta = exact.record(cluster)
            timeline.append(
                TimelinePoint(
                    t_s=t_sync,
                    load_rps=arrivals_in_step / cfg.report_step_s,
                    ttft=_step_quantile(
                        exact.bounds[TIME_TO_FIRST_TOKEN],
                        delta[TIME_TO_FIRST_TOKEN],
                        percentile_ttft,
                    ),
                    itl=_step_quantile(
                        exact.bounds[INTER_TOKEN_LATENCY],
                        delta[INTER_TOKEN_LATENCY],
                        percentile_itl,
                    ),
                    replicas=cluster.replicas,
                    ready=cluster.ready_replicas,
                    pending=cluster.pending_replicas,
                    gpus=cluster.gpus_held,
                    max_num_seqs=cluster.template.max_num_seqs,
                    max_batched_tokens=cluster.template.max_batched_tokens,
                    reason=last_reason,
                    seen_ttft=seen.ttft if seen is not None else None,
                    seen_itl=seen.itl if seen is not None else None,
                    predicted_ttft=last_predicted.get("ttft"),
                    predicted_itl=last_predicted.get("itl"),
                )
            )
            arrivals_in_step = 0
            t_report += cfg.report_step_s
            if progress is not None:
                progress(min(1.0, t_sync / end))
            done = i >= n and gpu_seconds is not None and len(timeline) > last_step
            if done and (cluster.outstanding == 0 or t_sync >= hard_stop):
                break
        cluster.set_horizon(
            min(t_scrape, t_gauge, t_tick, t_report, end if gpu_seconds is None else math.inf)
        )

    failed = list(cluster.failed)
    unfinished: list[Request] = list(cluster.pending_requests())
    failed += [FailedRequest(r, cluster.now, "unfinished") for r in unfinished]
    exact.fold_last(last_step)
    return RunResult(
        policy=policy.name,
        duration_s=end,
        gpu_seconds=gpu_seconds if gpu_seconds is not None else cluster.gpu_seconds(end),
        timeline=tuple(timeline[: last_step + 1]),
        decisions=tuple(decisions),
        latencies=exact.result(),
        outcomes=Outcomes.build(cluster.drain_finished(), failed, n),
        scale_actions=scale_actions,
        restarts=cluster.restarts,
        pods_created=cluster.pods_created,
        report_step_s=cfg.report_step_s,
        attainment_window_s=cfg.attainment_window_s,
    )
