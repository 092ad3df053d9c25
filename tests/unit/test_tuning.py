"""One tuning cycle's outcome: the decision recorded in status, its Event, what is applied."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from slotune.api.resource import parse_spec
from slotune.api.status import Knobs, LLMServiceStatus
from slotune.controller.tuning import tune
from slotune.policy.types import Decision, MetricsSnapshot, PolicySpec, Setting

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
KNOBS = Knobs(replicas=2, max_num_seqs=128, max_batched_tokens=8192)


def spec(mode: str = "auto") -> Any:
    return parse_spec(
        {
            "model": {"name": "m"},
            "slo": {"ttft": {"target": "500ms", "percentile": 99}, "itl": {"target": "25ms"}},
            "tuning": {"mode": mode},
        }
    )


@dataclass
class Fixed:
    """A policy that always answers the same."""

    setting: Setting
    predicted: Mapping[str, float] = field(default_factory=dict)
    name: str = "fixed"

    def decide(
        self,
        snapshot: MetricsSnapshot | None,
        current: Setting,
        spec: PolicySpec,
        memory: Mapping[str, Any],
        now_s: float,
    ) -> Decision:
        return Decision(self.setting, "TTFTAboveTarget", "why", self.predicted, {"k": 1})


def test_the_decision_records_its_predicted_quantiles() -> None:
    policy = Fixed(Setting(3, 128, 8192), {"ttft": 1.31234, "itl": 0.02149})
    outcome = tune(policy, spec(), KNOBS, None, {}, NOW)
    decision = outcome.status["lastDecision"]
    assert decision["predicted"] == {"ttft": 1.3123, "itl": 0.0215}
    assert decision["action"] == "ScaleUp" and decision["applied"] is True
    # The status schema takes it, and the Event says it at the SLO's percentiles.
    LLMServiceStatus.model_validate({"lastDecision": decision})
    (_, reason, message), *_ = outcome.events
    assert reason == "ScaleUp" and message.endswith("; predicted p99 TTFT 1312ms, p95 ITL 21.5ms")
    assert outcome.knobs.replicas == 3


def test_a_quantile_without_a_model_is_left_out() -> None:
    outcome = tune(Fixed(Setting(3, 128, 8192)), spec("advise"), KNOBS, None, {}, NOW)
    decision = outcome.status["lastDecision"]
    assert "predicted" not in decision and decision["applied"] is False
    assert "predicted" not in outcome.events[0][2]
    assert outcome.knobs == KNOBS  # advise mode applies nothing
