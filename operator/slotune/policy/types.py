"""The contract every tuning policy implements, shared by the operator and the simulator.

A policy is a pure function of (metrics snapshot, current setting, spec, its own memory, now)
to a Decision. The operator builds the snapshot from Prometheus; the simulator builds it the
same way from simulated scrapes; both call the same object, so what `slotune sim` measures is
what runs. Memory is a small JSON-able dict that the operator keeps in the LLMService status, so
cooldowns and fitted models survive restarts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from slotune.api.durations import parse_duration
from slotune.api.spec import LLMServiceSpec

Reason = Literal[
    "TTFTAboveTarget",
    "ITLAboveTarget",
    "E2EAboveTarget",
    "OverProvisioned",
    "MetricsStale",
    "MetricsMissing",
    "CapacityLimited",
    "Stabilizing",
    "Steady",
    "Initial",
    "BaselineRule",
]
Action = Literal["ScaleUp", "ScaleDown", "Retune", "ScaleAndRetune", "Hold"]

# The rendered Deployment's rolling-update surge, as a share of the replicas (Kubernetes rounds
# it up): new batch flags restart every pod, and a quarter of the fleet at a time bounds a
# rollout to about four cold starts. The simulator rolls the same way; the policy uses it to
# know when a rollout is over.
ROLLING_UPDATE_MAX_SURGE = 0.25


RECENT_RATE_WINDOW_S = 60.0
"""The short range of `MetricsSnapshot.recent_request_rate` (PromQL `[60s]`)."""


def surge_blocked(replicas: int, gpus_per_replica: int, gpu_budget: int | None) -> bool:
    """Whether a rolling restart of `replicas` pods has no GPU for even one surge pod. The
    operator then renders maxSurge 0 / maxUnavailable 1 (Kubernetes would otherwise wait
    forever for the surge pod): pods are replaced one at a time, each round a replica short
    for a cold start. The simulator rolls the same way."""
    return gpu_budget is not None and (replicas + 1) * gpus_per_replica > gpu_budget


def rollout_rounds(replicas: int, surge: bool = True) -> int:
    """Cold starts, one after another, that a rolling restart of `replicas` pods takes (one
    per pod where the GPU budget leaves no room for a surge)."""
    if not surge:
        return max(1, replicas)
    per_round = max(1, math.ceil(ROLLING_UPDATE_MAX_SURGE * replicas))
    return max(1, math.ceil(replicas / per_round))


@dataclass(frozen=True)
class Setting:
    """The two knobs: replica count and the engine's batch limits."""

    replicas: int
    max_num_seqs: int
    max_batched_tokens: int


@dataclass(frozen=True)
class PodMetrics:
    """One server's gauges, for policies that reason per replica (llm-d's saturation rule).

    Values are the latest sample; ``*_peak`` are ``max_over_time(...[1m])``, the form llm-d's
    saturation analyzer queries.
    """

    pod: str
    running: float
    waiting: float
    kv_cache_usage: float
    waiting_peak: float
    kv_cache_usage_peak: float


@dataclass(frozen=True)
class MetricsSnapshot:
    """What Prometheus says about one LLMService over the SLO window, summed over its pods.

    Latencies are the quantiles at the SLO's percentiles (seconds); None means the series was
    absent, never zero. `age_s` is the age of the newest sample, for staleness checks.
    """

    time_s: float
    age_s: float
    request_rate: float | None
    prompt_token_rate: float | None
    generation_token_rate: float | None
    ttft: float | None
    itl: float | None
    e2e: float | None
    waiting: float | None
    running: float | None
    kv_cache_usage: float | None
    ready_replicas: int
    pending_replicas: int = 0
    # Per-server gauges; empty where the source does not break them down (the operator's
    # aggregated queries), so policies must not require them.
    pods: tuple[PodMetrics, ...] = ()
    # The fraction of the window's observations above the SLO target (the error budget's
    # burn: the SLO holds while it is at most 1 - percentile/100); None as for the quantiles.
    ttft_over: float | None = None
    itl_over: float | None = None
    # The ITL histogram's shape: its median (a decode step's time) and the median of the
    # observations over the target (the steps that break it: prefill chunks stalling the
    # decodes beside them). None without observations over the target.
    itl_median: float | None = None
    itl_over_median: float | None = None
    # The ITL histogram itself, summed over servers: (upper bound, cumulative rate) pairs
    # ending with +inf, for quantiles at ranks the policy derives; empty where not known.
    itl_buckets: tuple[tuple[float, float], ...] = ()
    # Finished requests per second over the last RECENT_RATE_WINDOW_S only: the window's rate
    # lags a change by half a window, this one by half a minute, so together they tell a
    # ramp (still climbing) from a step that has already happened. None where not known.
    recent_request_rate: float | None = None
    # Exact means over the window (a histogram's sum over its count: no bucket interpolation):
    # the ITL, and the time from a request's first scheduling to its first token (its prefill
    # steps). Together with the mean prompt they price a prefill token; None where the engine
    # does not export them.
    itl_mean: float | None = None
    prefill_mean: float | None = None
    # How long the service's pods took from being scheduled to Ready (the median over the
    # pods that exist now and started cold): the cold start a replica asked for now will take.
    # None where not known (no such pod).
    cold_start_s: float | None = None


@dataclass(frozen=True)
class PolicySpec:
    """The parts of an LLMService spec a policy reads, in seconds and plain numbers."""

    ttft_target_s: float
    ttft_percentile: float
    itl_target_s: float
    itl_percentile: float
    e2e_target_s: float | None
    e2e_percentile: float | None
    window_s: float
    min_replicas: int
    max_replicas: int
    gpus_per_replica: int
    gpu_budget: int | None
    max_num_seqs_bounds: tuple[int, int]
    max_batched_tokens_bounds: tuple[int, int]
    scale_up_stabilization_s: float
    scale_down_stabilization_s: float
    interval_s: float

    @classmethod
    def from_spec(cls, spec: LLMServiceSpec) -> PolicySpec:
        slo, scaling, batching = spec.slo, spec.scaling, spec.batching
        return cls(
            ttft_target_s=slo.ttft.seconds,
            ttft_percentile=slo.ttft.percentile,
            itl_target_s=slo.itl.seconds,
            itl_percentile=slo.itl.percentile,
            e2e_target_s=slo.e2e.seconds if slo.e2e else None,
            e2e_percentile=slo.e2e.percentile if slo.e2e else None,
            window_s=parse_duration(slo.window),
            min_replicas=scaling.min_replicas,
            max_replicas=scaling.max_replicas,
            gpus_per_replica=spec.resources.gpus_per_replica,
            gpu_budget=scaling.gpu_budget,
            max_num_seqs_bounds=(batching.max_num_seqs.min, batching.max_num_seqs.max),
            max_batched_tokens_bounds=(
                batching.max_batched_tokens.min,
                batching.max_batched_tokens.max,
            ),
            scale_up_stabilization_s=parse_duration(scaling.scale_up_stabilization),
            scale_down_stabilization_s=parse_duration(scaling.scale_down_stabilization),
            interval_s=parse_duration(spec.tuning.interval),
        )

    @property
    def replica_ceiling(self) -> int:
        """Most replicas allowed by maxReplicas and the GPU budget together."""
        if self.gpu_budget is None:
            return self.max_replicas
        return max(
            self.min_replicas, min(self.max_replicas, self.gpu_budget // self.gpus_per_replica)
        )


@dataclass(frozen=True)
class Decision:
    """A policy's answer: the setting it wants, why, and its memory for next time."""

    setting: Setting
    reason: Reason
    message: str
    # The window quantiles expected under `setting` at the forecast load, in seconds, by name
    # ("ttft", "itl"); a name is absent where the model behind it is not learnt.
    predicted: Mapping[str, float] = field(default_factory=dict)
    memory: Mapping[str, Any] = field(default_factory=dict)

    def action(self, current: Setting) -> Action:
        scale = self.setting.replicas != current.replicas
        retune = (self.setting.max_num_seqs, self.setting.max_batched_tokens) != (
            current.max_num_seqs,
            current.max_batched_tokens,
        )
        if scale and retune:
            return "ScaleAndRetune"
        if scale:
            return "ScaleUp" if self.setting.replicas > current.replicas else "ScaleDown"
        return "Retune" if retune else "Hold"


class Policy(Protocol):
    """Anything that decides a Setting from metrics; see the module docstring."""

    @property
    def name(self) -> str: ...

    def decide(
        self,
        snapshot: MetricsSnapshot | None,
        current: Setting,
        spec: PolicySpec,
        memory: Mapping[str, Any],
        now_s: float,
    ) -> Decision: ...
