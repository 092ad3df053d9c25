"""What the Deployment and its pods say about serving capacity. Pure: dicts in, summary out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

Obj = Mapping[str, Any]


@dataclass(frozen=True)
class WorkloadSummary:
    """The facts the status and the tuner need from the Deployment and its pods."""

    exists: bool
    desired: int
    replicas: int
    ready: int
    updated: int
    available: bool
    pending: int
    pending_reason: str
    gpus_per_replica: int
    cold_start_s: float | None = None

    @property
    def rolled_out(self) -> bool:
        return self.updated >= self.desired and self.replicas == self.desired


def _condition(obj: Obj, kind: str) -> Obj | None:
    for condition in obj.get("status", {}).get("conditions") or []:
        if condition.get("type") == kind:
            found: Obj = condition
            return found
    return None


def _unschedulable(pod: Obj) -> str | None:
    """The scheduler's message when a pod cannot be placed, else None."""
    if pod.get("status", {}).get("phase") != "Pending" or pod.get("metadata", {}).get(
        "deletionTimestamp"
    ):
        return None
    scheduled = _condition(pod, "PodScheduled")
    if (
        scheduled
        and scheduled.get("status") == "False"
        and scheduled.get("reason") == ("Unschedulable")
    ):
        return str(scheduled.get("message") or "Unschedulable")
    return None


def _transition(condition: Obj | None) -> datetime | None:
    stamp = condition.get("lastTransitionTime") if condition else None
    try:
        return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")) if stamp else None
    except ValueError:
        return None


def cold_start_s(pods: Sequence[Obj]) -> float | None:
    """The median time the pods that serve now took from being scheduled to Ready: the cold
    start (image pull, weight loading, warm-up) a replica asked for now will take. A pod that
    turned ready again after a restart reads a longer time; the median keeps one such out."""
    starts = []
    for pod in pods:
        ready, scheduled = _condition(pod, "Ready"), _condition(pod, "PodScheduled")
        if not ready or ready.get("status") != "True":
            continue
        since, until = _transition(scheduled), _transition(ready)
        if since is not None and until is not None and until > since:
            starts.append((until - since).total_seconds())
    starts.sort()
    return starts[len(starts) // 2] if starts else None


def summarize(
    deployment: Obj | None, pods: Sequence[Obj], gpus_per_replica: int
) -> WorkloadSummary:
    if deployment is None:
        return WorkloadSummary(False, 0, 0, 0, 0, False, 0, "", gpus_per_replica)
    status = deployment.get("status", {})
    available = _condition(deployment, "Available")
    reasons = [r for r in (_unschedulable(p) for p in pods) if r is not None]
    return WorkloadSummary(
        exists=True,
        desired=int(deployment.get("spec", {}).get("replicas", 1)),
        replicas=int(status.get("replicas") or 0),
        ready=int(status.get("readyReplicas") or 0),
        updated=int(status.get("updatedReplicas") or 0),
        available=bool(available and available.get("status") == "True"),
        pending=len(reasons),
        pending_reason=reasons[0] if reasons else "",
        gpus_per_replica=gpus_per_replica,
        cold_start_s=cold_start_s(pods),
    )
