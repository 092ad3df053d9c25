"""Operator-wide configuration, from the environment (the Helm chart sets it) or `slotune run`."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class OperatorConfig:
    prometheus_url: str
    resync_seconds: float

    @classmethod
    def from_env(cls) -> OperatorConfig:
        return cls(
            prometheus_url=os.environ.get("SLOTUNE_PROMETHEUS_URL", "http://127.0.0.1:9090"),
            # How often each LLMService is re-read: status refresh and drift repair.
            resync_seconds=float(os.environ.get("SLOTUNE_RESYNC_SECONDS", "15")),
        )
