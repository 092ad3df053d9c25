"""The policies ``slotune sim --policies`` knows, by name: one registry, one line each.

A factory receives a :class:`PolicyContext` (the scenario's spec, initial setting and the
peak replica count from the oracle, computed only if asked for) and the user's overrides
(``--policy-option NAME.FIELD=VALUE``) and returns a :class:`~slotune.policy.types.Policy`.
``oracle`` is not a policy -- it is computed in hindsight by :mod:`slotune.sim.oracle` --
but is accepted in ``--policies`` next to them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from slotune.policy.slotune import SlotuneConfig, SlotunePolicy
from slotune.policy.types import Policy, PolicySpec, Setting
from slotune.sim.baselines import HpaPolicy, KpaPolicy, SaturationPolicy, StaticPolicy

ORACLE = "oracle"


@dataclass(frozen=True)
class PolicyContext:
    spec: PolicySpec
    initial: Setting
    # Replicas the worst window needs at the initial setting (runs the oracle if needed).
    peak_replicas: Callable[[], int]


Overrides = Mapping[str, str]
PolicyFactory = Callable[[PolicyContext, Overrides], Policy]


def _configured(cls: type[Any], overrides: Overrides, **fixed: Any) -> Any:
    """``cls(**fixed, **overrides)`` with each override converted to its field's type."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = dict(fixed)
    for key, text in overrides.items():
        if key not in fields or key == "name":
            settable = ", ".join(sorted(k for k in fields if k != "name"))
            raise ValueError(f"{cls.__name__} has no setting {key!r}; it has: {settable}")
        default = fields[key].default
        if isinstance(default, bool):
            kwargs[key] = text.lower() in ("1", "true", "yes")
        elif isinstance(default, int) and not isinstance(default, bool):
            kwargs[key] = int(text)
        elif isinstance(default, float):
            kwargs[key] = float(text)
        elif isinstance(default, tuple):
            kwargs[key] = tuple(float(part) for part in text.split(","))
        else:
            kwargs[key] = text
    return cls(**kwargs)


POLICIES: dict[str, PolicyFactory] = {
    "slotune": lambda ctx, o: SlotunePolicy(_configured(SlotuneConfig, o)),
    "hpa": lambda ctx, o: _configured(HpaPolicy, o),
    "kpa": lambda ctx, o: _configured(KpaPolicy, o),
    "saturation": lambda ctx, o: _configured(SaturationPolicy, o),
    "static": lambda ctx, o: _configured(
        StaticPolicy,
        {k: v for k, v in o.items() if k != "replicas"},
        replicas=int(o["replicas"]) if "replicas" in o else ctx.peak_replicas(),
    ),
}


def known_names() -> list[str]:
    return [*POLICIES, ORACLE]


def build_policy(name: str, ctx: PolicyContext, overrides: Overrides | None = None) -> Policy:
    try:
        factory = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; known: {', '.join(known_names())}") from None
    return factory(ctx, overrides or {})
