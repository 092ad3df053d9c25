"""`LLMService.status`: what slotune observed, decided and did.

Shaped by the Kubernetes API conventions: `observedGeneration`, metav1.Condition-style
conditions with a top-level `Ready`, no `phase`. Times are RFC 3339 strings as the apiserver
stores them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from slotune.api.base import ApiModel

ConditionType = Literal["Ready", "WorkloadReady", "MetricsAvailable", "SLOMet", "CapacityLimited"]
CONDITION_TYPES: tuple[ConditionType, ...] = (
    "Ready",
    "WorkloadReady",
    "MetricsAvailable",
    "SLOMet",
    "CapacityLimited",
)
NonNegative = Annotated[int, Field(ge=0)]
Seconds = Annotated[float, Field(ge=0)]


class Condition(ApiModel):
    """One aspect of the service's state (metav1.Condition)."""

    type: ConditionType = Field(
        description=(
            "Ready: serving and in spec. WorkloadReady: the Deployment is available. "
            "MetricsAvailable: fresh latency metrics were read. SLOMet: every target is met. "
            "CapacityLimited: replicas are Pending for want of GPUs."
        )
    )
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: Annotated[str, Field(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")] = Field(
        description="CamelCase reason for the last transition."
    )
    message: Annotated[str, Field(max_length=32768)] = Field(
        default="", description="Human-readable details."
    )
    last_transition_time: str = Field(description="When status last changed (RFC 3339).")
    observed_generation: NonNegative = Field(
        default=0, description="The spec generation this condition was computed from."
    )


class Knobs(ApiModel):
    """The values of the two knobs slotune tunes."""

    replicas: NonNegative = Field(description="Replica count.")
    max_num_seqs: Annotated[int, Field(ge=1)] = Field(description="Engine sequence limit.")
    max_batched_tokens: Annotated[int, Field(ge=1)] = Field(description="Engine token budget.")


class Observed(ApiModel):
    """Latest metrics over the SLO window. Latencies are at the SLO's percentile, in seconds."""

    ttft: Seconds | None = Field(default=None, description="Time to first token (s).")
    itl: Seconds | None = Field(default=None, description="Inter-token latency (s).")
    e2e: Seconds | None = Field(default=None, description="End-to-end latency (s).")
    request_rate: Seconds | None = Field(default=None, description="Requests per second.")
    recent_request_rate: Seconds | None = Field(
        default=None,
        description=(
            "Requests per second over the last minute only: ahead of requestRate while the "
            "load ramps up, level with it once a step has passed, below it while it falls."
        ),
    )
    prompt_token_rate: Seconds | None = Field(default=None, description="Prompt tokens/s.")
    generation_token_rate: Seconds | None = Field(
        default=None, description="Generated tokens per second."
    )
    itl_mean: Seconds | None = Field(
        default=None,
        description=(
            "Mean inter-token latency (s), exact (the histogram's sum over its count). With "
            "prefillMean it prices a prefill token: their difference over the mean prompt."
        ),
    )
    prefill_mean: Seconds | None = Field(
        default=None,
        description=(
            "Mean time from a request's first scheduling to its first token (s); absent where "
            "the engine does not export it."
        ),
    )
    cold_start: Seconds | None = Field(
        default=None,
        description=(
            "How long the serving pods took from being scheduled to Ready (s, their median): "
            "the cold start a replica asked for now will take, and how far ahead the policy "
            "forecasts the load (at least 150 s)."
        ),
    )
    queue_depth: Seconds | None = Field(default=None, description="Requests waiting, all pods.")
    running: Seconds | None = Field(default=None, description="Requests running, all pods.")
    kv_cache_usage: Annotated[float, Field(ge=0, le=1)] | None = Field(
        default=None, description="Mean KV-cache usage over pods, 0 to 1."
    )
    sampled_at: str | None = Field(default=None, description="When the metrics were read.")


class Predicted(ApiModel):
    """What the policy predicts the window quantiles will be under the knobs it chose, at
    the load it forecasts, once they are in place. At the SLO's percentiles, in seconds; a
    quantile whose model is not learnt yet is absent."""

    ttft: Seconds | None = Field(
        default=None,
        description=(
            "Time to first token (s): the prefill queue's model (prefill capacity at the "
            "token budget, queueing at the forecast load, scaled to what calm windows showed)."
        ),
    )
    itl: Seconds | None = Field(
        default=None,
        description="Inter-token latency (s): the ITL fitted against requests per replica.",
    )


class Decision(ApiModel):
    """A tuning decision and whether it was applied."""

    time: str = Field(description="When it was made (RFC 3339).")
    action: Literal["ScaleUp", "ScaleDown", "Retune", "ScaleAndRetune", "Hold", "Initial"] = Field(
        description="What the decision changes."
    )
    from_: Knobs = Field(alias="from", description="Knobs before.")
    to: Knobs = Field(description="Knobs after.")
    reason: str = Field(description="Reason code, e.g. TTFTAboveTarget, OverProvisioned.")
    message: str = Field(default="", description="One sentence on why.")
    applied: bool = Field(default=False, description="False in advise mode or while paused.")
    predicted: Predicted | None = Field(
        default=None,
        description="The window quantiles the policy predicts under the knobs after (`to`).",
    )


class AlertBucket(ApiModel):
    """Which histogram bucket an SLO alert counts with, and how far it is from the target.

    Histograms only count requests per bucket, so an alert can measure "over the target"
    exactly only when the target is a bucket boundary of the engine; otherwise it counts
    against the nearest boundary below the target (stricter than the SLO).
    """

    objective: Literal["ttft", "itl", "e2e"] = Field(description="The latency objective.")
    metric: str = Field(description="The engine histogram the alert reads.")
    target_seconds: Seconds = Field(description="The objective's target, in seconds.")
    bucket_seconds: Seconds = Field(
        description="The bucket boundary (le) the alert counts with, in seconds."
    )
    offset_percent: float = Field(
        description=(
            "How far the bucket is from the target, in percent of the target: 0 is exact, "
            "negative means the alert is stricter than the SLO, positive more lenient."
        )
    )
    message: str = Field(default="", description="What the offset means, and how to remove it.")


class LLMServiceStatus(ApiModel):
    """Observed state of an LLMService."""

    observed_generation: NonNegative = Field(
        default=0, description="The spec generation the status describes."
    )
    conditions: list[Condition] = Field(
        default_factory=list, description="Current state, one entry per condition type."
    )
    replicas: NonNegative = Field(default=0, description="Replicas the Deployment has.")
    ready_replicas: NonNegative = Field(default=0, description="Replicas ready to serve.")
    pending_replicas: NonNegative = Field(
        default=0, description="Replicas whose pods cannot be scheduled."
    )
    gpus: NonNegative = Field(default=0, description="GPUs requested by the current replicas.")
    tuned: Knobs | None = Field(default=None, description="Knob values slotune set last.")
    observed: Observed | None = Field(default=None, description="Latest metrics.")
    last_decision: Decision | None = Field(default=None, description="The latest decision.")
    alert_buckets: list[AlertBucket] = Field(
        default_factory=list,
        description=(
            "Per objective, the histogram bucket the SLO burn-rate alerts count with and how far "
            "it is from the target (non-zero when the target is not a bucket boundary)."
        ),
    )
    policy_memory: dict[str, Any] = Field(
        default_factory=dict,
        description="The tuner's memory (cooldowns, fitted model); kept here to survive restarts.",
    )
