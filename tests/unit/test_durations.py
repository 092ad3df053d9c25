from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from slotune.api.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("30s", 30), ("5m", 300), ("1h30m", 5400), ("1.5s", 1.5), ("0s", 0)],
)
def test_parses_go_style_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "5 m", "-1s", "1d", "ms", "1s ", "5min"])
def test_rejects_what_is_not_a_duration_and_says_how_to_write_one(text: str) -> None:
    with pytest.raises(ValueError, match="for example 500ms"):
        parse_duration(text)


@given(st.integers(0, 10_000_000))
def test_format_round_trips(millis: int) -> None:
    assert parse_duration(format_duration(millis / 1000)) == pytest.approx(millis / 1000)
