"""Durations as users write them (`500ms`, `30s`, `5m`, `1h30m`) and their value in seconds.

The same grammar is enforced by the CRD (a regex) and by the models (this parser), so both
reject the same strings. Go's `time.ParseDuration` is the model, minus the units no SLO needs
(ns, us) and minus negative values.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = r"(?:[0-9]+(?:\.[0-9]+)?(?:ms|s|m|h))"
DURATION_PATTERN = rf"^{_PART}+$"
_PART_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_WHOLE_RE = re.compile(DURATION_PATTERN)


def parse_duration(text: str) -> float:
    """Seconds in a duration string; raises ValueError with a hint on bad input."""
    if not _WHOLE_RE.match(text):
        raise ValueError(
            f"{text!r} is not a duration: write a number with a unit ms, s, m or h, "
            "for example 500ms, 30s, 5m or 1h30m"
        )
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in _PART_RE.findall(text))


def format_duration(seconds: float) -> str:
    """The shortest exact string for a duration, as used in defaults and messages."""
    millis = round(seconds * 1000)
    if millis % 3_600_000 == 0 and millis:
        return f"{millis // 3_600_000}h"
    if millis % 60_000 == 0 and millis:
        return f"{millis // 60_000}m"
    if millis % 1000 == 0:
        return f"{millis // 1000}s"
    return f"{millis}ms"


def _check(text: str) -> str:
    parse_duration(text)
    return text


Duration = Annotated[
    str,
    AfterValidator(_check),
    Field(pattern=DURATION_PATTERN),
]
"""A duration string; `parse_duration` gives its seconds."""
