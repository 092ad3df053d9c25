"""The operator's own metrics: counting, per-service gauges that expire, and the HTTP server."""

from __future__ import annotations

import socket
import urllib.request

import pytest
from prometheus_client import REGISTRY, CollectorRegistry

from slotune.controller import telemetry


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_timed_reconcile_counts_success_and_error() -> None:
    @telemetry.timed_reconcile
    def reconcile(fail: bool) -> str:
        if fail:
            raise RuntimeError("apiserver hiccup")
        return "done"

    ok, err = (
        sample("slotune_reconcile_total", result="success"),
        sample("slotune_reconcile_total", result="error"),
    )
    assert reconcile(False) == "done"
    with pytest.raises(RuntimeError):
        reconcile(True)
    assert sample("slotune_reconcile_total", result="success") == ok + 1
    assert sample("slotune_reconcile_total", result="error") == err + 1
    assert sample("slotune_reconcile_duration_seconds_count", result="error") >= 1


def _body(name: str, status: dict[str, object] | None = None) -> dict[str, object]:
    return {"metadata": {"namespace": "team-a", "name": name}, "status": status or {}}


def test_outcome_counts_writes_and_each_decision_once() -> None:
    decision = {"action": "ScaleUp", "reason": "TTFTAboveTarget", "applied": True}
    labels = {
        "namespace": "team-a",
        "llmservice": "chat",
        "action": "ScaleUp",
        "reason": "TTFTAboveTarget",
        "applied": "true",
    }
    before = sample("slotune_decisions_total", **labels)
    writes = sample("slotune_applied_writes_total", kind="Deployment")
    telemetry.observe_outcome(_body("chat"), {"lastDecision": decision}, ["Deployment/chat"])
    # A resync that changes nothing: the decision is already in the status, not in the patch.
    telemetry.observe_outcome(_body("chat", {"lastDecision": decision}), {}, [])
    assert sample("slotune_decisions_total", **labels) == before + 1
    assert sample("slotune_applied_writes_total", kind="Deployment") == writes + 1


def test_gauges_follow_the_status_with_the_patch_applied() -> None:
    status = {
        "replicas": 2,
        "readyReplicas": 1,
        "tuned": {"replicas": 3, "maxNumSeqs": 96, "maxBatchedTokens": 8192},
        "conditions": [{"type": "MetricsAvailable", "status": "True"}],
    }
    patch = {
        "readyReplicas": 2,
        "conditions": [
            {"type": "MetricsAvailable", "status": "False"},
            {"type": "Ready", "status": "True"},
        ],
    }
    telemetry.observe_outcome(_body("gauged", status), patch, [])
    where = {"namespace": "team-a", "llmservice": "gauged"}
    assert sample("slotune_llmservice_replicas", **where) == 2
    assert sample("slotune_llmservice_ready_replicas", **where) == 2
    assert sample("slotune_llmservice_tuned_replicas", **where) == 3
    assert sample("slotune_llmservice_max_num_seqs", **where) == 96
    assert sample("slotune_llmservice_max_batched_tokens", **where) == 8192
    condition = {**where, "type": "MetricsAvailable"}
    assert sample("slotune_llmservice_condition", **condition, status="False") == 1
    assert (
        REGISTRY.get_sample_value("slotune_llmservice_condition", {**condition, "status": "True"})
        is None
    )


def test_a_service_not_seen_for_the_ttl_disappears() -> None:
    now = [1000.0]
    gauges = telemetry.ServiceGauges(ttl=60, clock=lambda: now[0])
    registry = CollectorRegistry()
    registry.register(gauges)
    gauges.update("ns", "old", telemetry.service_state({"replicas": 1}))
    now[0] += 30
    gauges.update("ns", "new", telemetry.service_state({"replicas": 4}))
    assert (
        registry.get_sample_value(
            "slotune_llmservice_replicas", {"namespace": "ns", "llmservice": "old"}
        )
        == 1
    )
    now[0] += 45  # "old" last seen 75 s ago, "new" 45 s ago
    assert (
        registry.get_sample_value(
            "slotune_llmservice_replicas", {"namespace": "ns", "llmservice": "old"}
        )
        is None
    )
    assert (
        registry.get_sample_value(
            "slotune_llmservice_replicas", {"namespace": "ns", "llmservice": "new"}
        )
        == 4
    )


def test_unparsable_status_values_are_left_out() -> None:
    state = telemetry.service_state({"replicas": "three", "tuned": {"maxNumSeqs": True}})
    assert state.replicas is None and state.max_num_seqs is None


def test_the_server_starts_only_when_a_port_is_set() -> None:
    assert telemetry.serve_from_env({}) is False
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert telemetry.serve_from_env(
        {"SLOTUNE_METRICS_PORT": str(port), "SLOTUNE_METRICS_ADDRESS": "127.0.0.1"}
    )
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    assert "# TYPE slotune_reconcile_total counter" in text
    assert "slotune_reconcile_created" not in text
