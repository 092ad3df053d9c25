"""A spec the CRD let through but the models reject: reported in status, children untouched."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from slotune.controller.reconcile import reconcile


class Untouchable:
    """Stands in for the cluster: an invalid spec must not lead to a single API call."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the reconcile touched the cluster ({name}) for an invalid spec")


def test_invalid_spec_is_reported_with_its_field_and_nothing_is_applied() -> None:
    body = {
        "apiVersion": "slotune.dev/v1alpha1",
        "kind": "LLMService",
        "metadata": {"name": "x", "namespace": "ns", "uid": "u", "generation": 4},
        # What an older CRD without the window rule would have let through.
        "spec": {
            "model": {"name": "m"},
            "slo": {"ttft": {"target": "1s"}, "itl": {"target": "20ms"}, "window": "5s"},
        },
    }
    outcome = reconcile(body, Untouchable(), datetime(2026, 1, 1, tzinfo=UTC))  # type: ignore[arg-type]
    ready = outcome.status_patch["conditions"][0]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "False", "InvalidSpec")
    assert ready["message"].startswith("spec.slo: window must be between 1m and 1h")
    assert outcome.status_patch["observedGeneration"] == 4
    assert ("Warning", "InvalidSpec") in [(t, r) for t, r, _ in outcome.events]
    assert outcome.applied == []
