"""Turning a metrics reading and a policy decision into status, conditions and new knobs. Pure.

The reconcile reads Prometheus (through the collector) and the cluster; this module decides
what that means: MetricsAvailable and SLOMet, `status.observed`, and — when a tuning cycle is
due — the policy's decision, whether it is applied (tuning.mode auto, not paused, replicas only
when slotune owns them), and the Event that reports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from slotune.api.spec import LLMServiceSpec
from slotune.api.status import Knobs
from slotune.controller.conditions import ConditionState, rfc3339
from slotune.metrics.collector import Reading
from slotune.metrics.snapshot import STALE_AFTER_S
from slotune.policy.types import Decision, MetricsSnapshot, Policy, PolicySpec, Setting


def metrics_condition(reading: Reading | None, snapshot: MetricsSnapshot | None) -> ConditionState:
    if reading is None:
        return ConditionState("MetricsAvailable", "Unknown", "NotYetRead", "no metrics read yet")
    if reading.error is not None:
        return ConditionState("MetricsAvailable", "False", "PrometheusError", reading.error)
    if snapshot is None:
        return ConditionState(
            "MetricsAvailable",
            "False",
            "MetricsMissing",
            "Prometheus has no series for this LLMService yet (are its pods scraped?)",
        )
    if snapshot.age_s > STALE_AFTER_S:
        return ConditionState(
            "MetricsAvailable",
            "False",
            "MetricsStale",
            f"newest sample is {snapshot.age_s:.0f}s old",
        )
    return ConditionState(
        "MetricsAvailable", "True", "MetricsFound", f"sampled {snapshot.age_s:.0f}s ago"
    )


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1000:.0f}ms"


def slo_condition(snapshot: MetricsSnapshot | None, spec: PolicySpec) -> ConditionState:
    if snapshot is None or snapshot.age_s > STALE_AFTER_S:
        return ConditionState("SLOMet", "Unknown", "MetricsUnavailable", "no fresh latency data")
    if not snapshot.request_rate or snapshot.ttft is None or snapshot.itl is None:
        return ConditionState("SLOMet", "Unknown", "NoTraffic", "no requests in the window")
    checks: list[tuple[str, float | None, float, float]] = [
        ("TTFT", snapshot.ttft, spec.ttft_target_s, spec.ttft_percentile),
        ("ITL", snapshot.itl, spec.itl_target_s, spec.itl_percentile),
    ]
    if spec.e2e_target_s is not None and spec.e2e_percentile is not None:
        checks.append(("E2E", snapshot.e2e, spec.e2e_target_s, spec.e2e_percentile))
    parts = [f"p{p:g} {name} {_fmt(v)} (target {_fmt(t)})" for name, v, t, p in checks]
    missed = [name for name, v, t, _ in checks if v is not None and v > t]
    message = ", ".join(parts)
    if missed:
        return ConditionState("SLOMet", "False", f"{missed[0]}AboveTarget", message)
    return ConditionState("SLOMet", "True", "WithinTarget", message)


def observed_status(snapshot: MetricsSnapshot, now: datetime) -> dict[str, Any]:
    values = {
        "ttft": snapshot.ttft,
        "itl": snapshot.itl,
        "e2e": snapshot.e2e,
        "requestRate": snapshot.request_rate,
        "recentRequestRate": snapshot.recent_request_rate,
        "promptTokenRate": snapshot.prompt_token_rate,
        "generationTokenRate": snapshot.generation_token_rate,
        "itlMean": snapshot.itl_mean,
        "prefillMean": snapshot.prefill_mean,
        "coldStart": snapshot.cold_start_s,
        "queueDepth": snapshot.waiting,
        "running": snapshot.running,
        "kvCacheUsage": snapshot.kv_cache_usage,
    }
    observed: dict[str, Any] = {k: round(v, 4) for k, v in values.items() if v is not None}
    observed["sampledAt"] = rfc3339(now)
    return observed


def _predicted_text(predicted: Mapping[str, float], spec: LLMServiceSpec) -> str:
    percentiles = {"ttft": spec.slo.ttft.percentile, "itl": spec.slo.itl.percentile}
    parts = [
        f"p{percentiles[name]:g} {name.upper()} {1000 * value:.{0 if value >= 0.1 else 1}f}ms"
        for name, value in predicted.items()
    ]
    return f"; predicted {', '.join(parts)}" if parts else ""


@dataclass
class TuningOutcome:
    knobs: Knobs
    status: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[str, str, str]] = field(default_factory=list)


def _knobs(setting: Setting) -> Knobs:
    return Knobs(
        replicas=setting.replicas,
        max_num_seqs=setting.max_num_seqs,
        max_batched_tokens=setting.max_batched_tokens,
    )


def memory_patch(stored: Mapping[str, Any], memory: Mapping[str, Any]) -> dict[str, Any]:
    """The status patch that makes `policyMemory` equal `memory`, or {} if it already is.

    Status is written with a JSON merge patch, in which an absent key means "unchanged": a key
    the policy dropped (a model it forgot after a retune) must be sent as null to be removed.
    """
    if dict(memory) == dict(stored):
        return {}
    return {"policyMemory": {**{k: None for k in stored if k not in memory}, **memory}}


def tune(
    policy: Policy,
    spec: LLMServiceSpec,
    knobs: Knobs,
    snapshot: MetricsSnapshot | None,
    status: Mapping[str, Any],
    now: datetime,
) -> TuningOutcome:
    """Run one policy cycle; apply its setting only in tuning mode auto."""
    current = Setting(knobs.replicas, knobs.max_num_seqs, knobs.max_batched_tokens)
    decision: Decision = policy.decide(
        snapshot,
        current,
        PolicySpec.from_spec(spec),
        status.get("policyMemory") or {},
        now.timestamp(),
    )
    wanted = decision.setting
    if spec.scaling.mode == "external":
        # An HPA or a person owns replicas: advise on them, never write them.
        wanted = Setting(current.replicas, wanted.max_num_seqs, wanted.max_batched_tokens)
    applied = spec.tuning.mode == "auto"
    action = replace(decision, setting=wanted).action(current)
    record = {
        "action": action,
        "from": _knobs(current).model_dump(by_alias=True),
        "to": _knobs(wanted).model_dump(by_alias=True),
        "reason": decision.reason,
        "message": decision.message,
        "applied": applied and action != "Hold",
    }
    # Rounded to a tenth of a millisecond: the record is rewritten only when it changes.
    predicted = {k: round(v, 4) for k, v in decision.predicted.items() if k in ("ttft", "itl")}
    if predicted:
        record["predicted"] = predicted
    outcome = TuningOutcome(_knobs(wanted) if applied else knobs)
    previous = dict(status.get("lastDecision") or {})
    previous.pop("time", None)
    if record != previous:
        outcome.status["lastDecision"] = {"time": rfc3339(now), **record}
    outcome.status.update(memory_patch(status.get("policyMemory") or {}, decision.memory))
    if action != "Hold":
        verb = "applied" if record["applied"] else "advised (tuning.mode " + spec.tuning.mode + ")"
        outcome.events.append(
            (
                "Normal",
                action,
                f"{verb}: replicas {current.replicas}->{wanted.replicas}, maxNumSeqs "
                f"{current.max_num_seqs}->{wanted.max_num_seqs} ({decision.reason}: "
                f"{decision.message}){_predicted_text(predicted, spec)}",
            )
        )
    return outcome
