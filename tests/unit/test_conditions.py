"""Status conditions: every type from the first visit, transitions, and Ready's summary."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from slotune.api.resource import parse_spec
from slotune.api.status import CONDITION_TYPES
from slotune.controller.conditions import Observation, evaluate, merge
from slotune.controller.reconcile import current_knobs, is_paused
from slotune.controller.tuning import memory_patch
from slotune.controller.workload import WorkloadSummary, cold_start_s, summarize

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
SPEC = {
    "model": {"name": "m"},
    "slo": {"ttft": {"target": "500ms"}, "itl": {"target": "25ms"}},
}


def workload(**changes: Any) -> WorkloadSummary:
    base = dict(
        exists=True,
        desired=2,
        replicas=2,
        ready=2,
        updated=2,
        available=True,
        pending=0,
        pending_reason="",
        gpus_per_replica=1,
    )
    return WorkloadSummary(**{**base, **changes})


def by_type(states: list[Any]) -> dict[str, Any]:
    return {s.type: s for s in states}


def test_every_condition_is_set_from_the_first_visit() -> None:
    states = evaluate(Observation())
    assert [s.type for s in states] == list(CONDITION_TYPES)
    assert by_type(states)["MetricsAvailable"].status == "Unknown"


def test_healthy_workload_is_ready() -> None:
    states = by_type(evaluate(Observation(workload=workload())))
    assert states["Ready"].status == "True" and states["Ready"].reason == "Serving"
    assert states["CapacityLimited"].status == "False"


def test_invalid_spec_names_the_field_and_leaves_the_rest_unknown() -> None:
    states = by_type(evaluate(Observation(spec_error="spec.slo.window: window must be ...")))
    assert (states["Ready"].status, states["Ready"].reason) == ("False", "InvalidSpec")
    assert "spec.slo.window" in states["Ready"].message
    assert states["WorkloadReady"].status == "Unknown"


def test_pending_pods_mean_capacity_limited() -> None:
    states = by_type(
        evaluate(
            Observation(
                workload=workload(
                    ready=1,
                    pending=1,
                    pending_reason="0/2 nodes are available: 2 Insufficient nvidia.com/gpu",
                )
            )
        )
    )
    assert states["CapacityLimited"].status == "True"
    assert "Insufficient nvidia.com/gpu" in states["CapacityLimited"].message


def test_conflict_and_missing_deployment_are_not_ready() -> None:
    assert (
        by_type(evaluate(Observation(conflict="taken", workload=workload())))["Ready"].reason
        == "ChildConflict"
    )
    missing = by_type(
        evaluate(Observation(workload=WorkloadSummary(False, 0, 0, 0, 0, False, 0, "", 1)))
    )
    assert missing["WorkloadReady"].reason == "DeploymentMissing"


def test_transition_time_moves_only_when_status_flips() -> None:
    first, flipped = merge([], evaluate(Observation(workload=workload(ready=0))), 1, T0)
    assert {s.type for s in flipped} == {"Ready", "WorkloadReady", "CapacityLimited"}
    later = T0 + timedelta(minutes=1)
    same, flipped = merge(
        first, evaluate(Observation(workload=workload(ready=0, updated=1))), 1, later
    )
    assert flipped == []
    assert [c["lastTransitionTime"] for c in same] == [c["lastTransitionTime"] for c in first]
    ready, flipped = merge(same, evaluate(Observation(workload=workload())), 2, later)
    assert {s.type for s in flipped} == {"Ready", "WorkloadReady"}
    stamps = {c["type"]: c["lastTransitionTime"] for c in ready}
    assert (
        stamps["Ready"] == "2026-11-25T12:01:00Z"
        and stamps["CapacityLimited"] == "2026-11-25T12:00:00Z"
    )
    assert all(c["observedGeneration"] == 2 for c in ready)


def test_summarize_counts_unschedulable_pods_only() -> None:
    dep = {
        "spec": {"replicas": 2},
        "status": {
            "replicas": 2,
            "readyReplicas": 1,
            "updatedReplicas": 2,
            "conditions": [{"type": "Available", "status": "True"}],
        },
    }
    pending = {
        "status": {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "no GPUs",
                }
            ],
        }
    }
    starting = {
        "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}]}
    }
    summary = summarize(dep, [pending, starting], gpus_per_replica=4)
    assert (summary.pending, summary.pending_reason, summary.ready) == (1, "no GPUs", 1)


def test_the_cold_start_is_read_from_the_serving_pods_conditions() -> None:
    def pod(scheduled: str, ready: str | None) -> dict[str, object]:
        conditions = [{"type": "PodScheduled", "status": "True", "lastTransitionTime": scheduled}]
        if ready is not None:
            conditions.append({"type": "Ready", "status": "True", "lastTransitionTime": ready})
        return {"status": {"phase": "Running", "conditions": conditions}}

    pods = [
        pod("2026-11-25T12:00:00Z", "2026-11-25T12:05:00Z"),  # 300 s to load the weights
        pod("2026-11-25T12:10:00Z", "2026-11-25T12:15:20Z"),  # 320 s
        pod("2026-11-25T12:20:00Z", "2026-11-25T13:20:00Z"),  # ready again after a restart
        pod("2026-11-25T12:30:00Z", None),  # still starting: says nothing yet
    ]
    assert cold_start_s(pods) == pytest.approx(320.0)
    assert summarize({"spec": {}, "status": {}}, pods, 1).cold_start_s == pytest.approx(320.0)
    assert cold_start_s(pods[3:]) is None
    assert cold_start_s([pod("not a time", "2026-11-25T12:05:00Z")]) is None


def test_tuned_knobs_are_held_inside_current_bounds() -> None:
    spec = parse_spec({**SPEC, "scaling": {"minReplicas": 2, "maxReplicas": 3}})
    knobs = current_knobs(
        spec, {"tuned": {"replicas": 9, "maxNumSeqs": 4, "maxBatchedTokens": 9000}}
    )
    assert (knobs.replicas, knobs.max_num_seqs, knobs.max_batched_tokens) == (3, 8, 9000)
    assert current_knobs(spec, {}).replicas == 2
    assert current_knobs(spec, {"tuned": {"replicas": "x"}}).max_num_seqs == 128


def test_pause_annotation() -> None:
    assert is_paused({"metadata": {"annotations": {"slotune.dev/paused": "true"}}})
    assert not is_paused({"metadata": {"annotations": {"slotune.dev/paused": "false"}}})
    assert not is_paused({"metadata": {}})


def test_memory_patch_removes_what_the_policy_forgot() -> None:
    stored = {"burn": {"w": 3.0}, "lastRetune": 10.0}
    assert memory_patch(stored, dict(stored)) == {}
    # A merge patch leaves absent keys alone: the forgotten model goes out as null.
    patch = memory_patch(stored, {"lastRetune": 20.0})
    assert patch == {"policyMemory": {"burn": None, "lastRetune": 20.0}}
