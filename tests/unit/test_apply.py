"""Pure parts of applying children: the drift check and the replicas handover."""

from __future__ import annotations

from typing import Any

from slotune.controller.apply import FIELD_MANAGER, is_subset, replicas_handover


def live_deployment(*owners: tuple[str, str]) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "chat",
            "namespace": "ns",
            "managedFields": [
                {"manager": m, "operation": op, "fieldsV1": {"f:spec": {"f:replicas": {}}}}
                for m, op in owners
            ],
        },
        "spec": {"replicas": 3, "template": {}},
    }


CHILD = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {}, "spec": {"template": {}}}


def test_replicas_are_handed_over_only_when_slotune_applied_them_and_stops() -> None:
    body = replicas_handover(CHILD, live_deployment((FIELD_MANAGER, "Apply")))
    assert body is not None and body["spec"] == {"replicas": 3}
    assert body["metadata"] == {"name": "chat", "namespace": "ns"}
    # Still applying replicas (auto mode): nothing to hand over.
    auto = {**CHILD, "spec": {"replicas": 2, "template": {}}}
    assert replicas_handover(auto, live_deployment((FIELD_MANAGER, "Apply"))) is None
    # Already let go (only the HPA or the handover manager owns them): nothing to do.
    assert replicas_handover(CHILD, live_deployment(("kube-controller-manager", "Update"))) is None
    assert replicas_handover({**CHILD, "kind": "Service"}, live_deployment()) is None


def test_is_subset_ignores_defaults_but_not_changes() -> None:
    live = {"spec": {"replicas": 3, "paused": False}, "metadata": {"name": "x"}}
    assert is_subset({"spec": {"replicas": 3}}, live)
    assert not is_subset({"spec": {"replicas": 2}}, live)
    assert not is_subset({"spec": {"args": ["a"]}}, {"spec": {"args": ["a", "b"]}})
