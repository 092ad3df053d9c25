"""Operator configuration from the environment."""

from __future__ import annotations

import pytest

from slotune.controller.config import OperatorConfig


def test_alert_windows_are_the_workbooks_unless_sped_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLOTUNE_ALERT_SPEEDUP", raising=False)
    assert OperatorConfig.from_env().alert_speedup == 1.0
    monkeypatch.setenv("SLOTUNE_ALERT_SPEEDUP", "60")
    assert OperatorConfig.from_env().alert_speedup == 60.0


@pytest.mark.parametrize("value", ["0", "0.5", "-1", "nan", "inf", "fast"])
def test_an_alert_speedup_below_one_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("SLOTUNE_ALERT_SPEEDUP", value)
    with pytest.raises(ValueError, match="SLOTUNE_ALERT_SPEEDUP"):
        OperatorConfig.from_env()
