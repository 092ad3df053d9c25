"""The whole `LLMService` object, and turning raw input into it with errors that name the field."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from slotune.api.base import CelRule
from slotune.api.spec import LLMServiceSpec
from slotune.api.status import LLMServiceStatus

GROUP = "slotune.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "LLMService"
PLURAL = "llmservices"
SINGULAR = "llmservice"
SHORT_NAMES = ("llms",)

# Child objects are named after the LLMService and carry its name as a label value, and a
# Service name must be a DNS-1035 label; so the LLMService name must be one too.
NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
NAME_RULE = CelRule(
    "self.metadata.name.size() <= 63 && self.metadata.name.matches('" + NAME_PATTERN + "')",
    "metadata.name must be a DNS-1035 label (at most 63 characters: lower-case letters, digits "
    "and '-', starting with a letter), because the Service and labels reuse it",
)


class ObjectMeta(BaseModel):
    """The parts of metadata slotune reads; the apiserver owns the rest."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    name: Annotated[str, Field(pattern=NAME_PATTERN, max_length=63)]
    namespace: str = "default"
    uid: str = ""
    generation: int = 0
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class LLMService(BaseModel):
    """An `LLMService` as stored by the apiserver."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    api_version: Literal["slotune.dev/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["LLMService"]
    metadata: ObjectMeta
    spec: LLMServiceSpec
    status: LLMServiceStatus | None = None


class SpecError(ValueError):
    """An LLMService that breaks a rule; `problems` pairs each field path with what is wrong."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{path}: {message}" for path, message in problems))

    @property
    def first_path(self) -> str:
        return self.problems[0][0] if self.problems else ""


def _path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not part.startswith(("function-", "union[", "literal[")):
            path += f".{part}" if path else str(part)
    return path or "(object)"


def _message(error: Mapping[str, Any]) -> str:
    message = str(error["msg"])
    # pydantic prefixes messages raised from validators; the rule's own words are clearer.
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    if error["type"] == "extra_forbidden":
        return "unknown field (check the spelling; names are camelCase)"
    return message


def spec_errors(error: ValidationError, prefix: tuple[str, ...] = ()) -> SpecError:
    """A pydantic error rewritten as field paths in the user's camelCase spelling."""
    return SpecError(
        [(_path(prefix + tuple(e["loc"])), _message(e)) for e in error.errors(include_url=False)]
    )


def parse_llmservice(obj: Mapping[str, Any]) -> LLMService:
    """Validate a raw object (from YAML or the apiserver); raise SpecError naming each field."""
    if not isinstance(obj, Mapping):
        raise SpecError([("(object)", "expected a mapping with apiVersion, kind, metadata, spec")])
    try:
        return LLMService.model_validate(obj)
    except ValidationError as error:
        raise spec_errors(error) from None


def parse_spec(spec: Mapping[str, Any]) -> LLMServiceSpec:
    """Validate only a spec (as a Kopf handler receives it)."""
    try:
        return LLMServiceSpec.model_validate(spec)
    except ValidationError as error:
        raise spec_errors(error, ("spec",)) from None
