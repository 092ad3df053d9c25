"""The base every API model shares, and the CEL rules that mirror its cross-field checks.

Each cross-field rule exists twice: as a CEL `x-kubernetes-validations` rule in the CRD (so the
apiserver rejects the object before anyone reads it) and as a pydantic validator (so `slotune
render`, the simulator and the operator reject the same objects with the same message). Tests
evaluate the CEL rules and the validators on the same objects to keep the two in step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pydantic import BaseModel, ConfigDict


@dataclass(frozen=True)
class CelRule:
    """A CEL validation rule attached to a model's schema.

    `field_path` (relative to the object the rule sits on, e.g. `.maxReplicas`) tells the
    apiserver which field to blame, so `kubectl apply` points at it.
    """

    rule: str
    message: str
    field_path: str = ""


def camel(name: str) -> str:
    """snake_case -> camelCase, leaving digits alone (pydantic's to_camel turns e2e into e2E)."""
    first, *rest = name.split("_")
    return first + "".join(part[:1].upper() + part[1:] for part in rest)


class ApiModel(BaseModel):
    """camelCase on the wire, snake_case in Python, unknown fields rejected, values immutable."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=camel,
        populate_by_name=True,
        frozen=True,
        validate_default=True,
    )

    cel_rules: ClassVar[tuple[CelRule, ...]] = ()
    """Cross-field rules of this object, in CEL; each has a twin in a model validator."""


def rule_error(rule: CelRule) -> ValueError:
    """The error a model validator raises for a broken rule: the CEL rule's own message."""
    return ValueError(rule.message)
