"""Status conditions from what the reconcile saw. Pure: time is passed in.

Follows the API conventions: every condition type is present from the first visit (Unknown
if need be), `lastTransitionTime` moves only when the status flips, and `Ready` sums up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from slotune.api.status import CONDITION_TYPES, ConditionType
from slotune.controller.workload import WorkloadSummary


@dataclass(frozen=True)
class ConditionState:
    type: ConditionType
    status: str
    reason: str
    message: str


@dataclass(frozen=True)
class Observation:
    """Everything one reconcile learned that the conditions depend on."""

    spec_error: str | None = None
    conflict: str | None = None
    workload: WorkloadSummary | None = None
    paused: bool = False
    metrics: ConditionState | None = None
    slo: ConditionState | None = None


def rfc3339(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def _workload_ready(obs: Observation) -> ConditionState:
    w = obs.workload
    if w is None or not w.exists:
        return ConditionState("WorkloadReady", "False", "DeploymentMissing", "not created yet")
    counts = f"{w.ready}/{w.desired} replicas ready, {w.updated} up to date"
    if w.ready == 0:
        return ConditionState("WorkloadReady", "False", "NoReadyReplicas", counts)
    if not w.available:
        return ConditionState("WorkloadReady", "False", "DeploymentUnavailable", counts)
    if not w.rolled_out:
        return ConditionState("WorkloadReady", "True", "RollingUpdate", counts)
    return ConditionState("WorkloadReady", "True", "DeploymentAvailable", counts)


def _capacity(obs: Observation) -> ConditionState:
    w = obs.workload
    if w is None or not w.exists:
        return ConditionState("CapacityLimited", "Unknown", "DeploymentMissing", "")
    if w.pending:
        return ConditionState(
            "CapacityLimited",
            "True",
            "PodsUnschedulable",
            f"{w.pending} replica(s) Pending ({w.pending * w.gpus_per_replica} GPUs): "
            f"{w.pending_reason}",
        )
    return ConditionState("CapacityLimited", "False", "AllScheduled", "every replica has its GPUs")


def _ready(obs: Observation, workload: ConditionState) -> ConditionState:
    if obs.spec_error is not None:
        return ConditionState("Ready", "False", "InvalidSpec", obs.spec_error)
    if obs.conflict is not None:
        return ConditionState("Ready", "False", "ChildConflict", obs.conflict)
    if workload.status != "True":
        return ConditionState("Ready", "False", "WorkloadNotReady", workload.message)
    message = workload.message + (" (paused: slotune changes nothing)" if obs.paused else "")
    return ConditionState("Ready", "True", "Paused" if obs.paused else "Serving", message)


def evaluate(obs: Observation) -> list[ConditionState]:
    """The state of every condition type, in CONDITION_TYPES order."""
    if obs.spec_error is not None:
        unknown = "InvalidSpec"
        workload = ConditionState("WorkloadReady", "Unknown", unknown, "fix the spec first")
        capacity = ConditionState("CapacityLimited", "Unknown", unknown, "")
    else:
        workload = _workload_ready(obs)
        capacity = _capacity(obs)
    metrics = obs.metrics or ConditionState(
        "MetricsAvailable", "Unknown", "NotYetRead", "no metrics read yet"
    )
    slo = obs.slo or ConditionState("SLOMet", "Unknown", "NotYetMeasured", "no latency data yet")
    states = {s.type: s for s in (_ready(obs, workload), workload, metrics, slo, capacity)}
    return [states[t] for t in CONDITION_TYPES]


def merge(
    previous: Sequence[Mapping[str, Any]],
    states: Sequence[ConditionState],
    generation: int,
    now: datetime,
) -> tuple[list[dict[str, Any]], list[ConditionState]]:
    """The new conditions list, and the states whose status flipped (for Events)."""
    before = {c.get("type"): c for c in previous}
    merged: list[dict[str, Any]] = []
    flipped: list[ConditionState] = []
    for state in states:
        old = before.get(state.type)
        changed = old is None or old.get("status") != state.status
        if changed and not (old is None and state.status == "Unknown"):
            flipped.append(state)
        merged.append(
            {
                "type": state.type,
                "status": state.status,
                "reason": state.reason,
                "message": state.message,
                "lastTransitionTime": rfc3339(now)
                if changed or old is None
                else old.get("lastTransitionTime", rfc3339(now)),
                "observedGeneration": generation,
            }
        )
    return merged, flipped
