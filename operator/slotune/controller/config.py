"""Operator-wide configuration, from the environment (the Helm chart sets it) or `slotune run`."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

ALERT_SPEEDUP_ENV = "SLOTUNE_ALERT_SPEEDUP"


@dataclass(frozen=True)
class OperatorConfig:
    prometheus_url: str
    resync_seconds: float
    # Every SLO burn-rate window and `for` of the rendered PrometheusRules is divided by this,
    # so an alert shows within minutes: for tests and demos only (1, the default, renders the
    # SRE workbook's 1h/5m, 6h/30m and 3d/6h windows unchanged).
    alert_speedup: float = 1.0

    @classmethod
    def from_env(cls) -> OperatorConfig:
        speedup_text = os.environ.get(ALERT_SPEEDUP_ENV, "").strip() or "1"
        try:
            speedup = float(speedup_text)
        except ValueError:
            speedup = math.nan
        if not math.isfinite(speedup) or speedup < 1:
            raise ValueError(f"{ALERT_SPEEDUP_ENV}={speedup_text!r}: use a number >= 1")
        return cls(
            prometheus_url=os.environ.get("SLOTUNE_PROMETHEUS_URL", "http://127.0.0.1:9090"),
            # How often each LLMService is re-read: status refresh and drift repair.
            resync_seconds=float(os.environ.get("SLOTUNE_RESYNC_SECONDS", "15")),
            alert_speedup=speedup,
        )
