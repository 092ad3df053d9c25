"""The CustomResourceDefinition, generated from the models so the two cannot disagree.

pydantic's own JSON Schema is not a Kubernetes structural schema (it uses `$ref`, `anyOf` with
null, `title`), so this walks the model fields directly and emits exactly what the apiserver
wants: a type at every level, descriptions for `kubectl explain`, defaults, bounds, enums and
the CEL rules each model declares.
"""

from __future__ import annotations

import json
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from slotune import __version__
from slotune.api.base import ApiModel, CelRule
from slotune.api.resource import (
    GROUP,
    KIND,
    NAME_RULE,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
)
from slotune.api.spec import LLMServiceSpec
from slotune.api.status import LLMServiceStatus

Schema = dict[str, Any]

# Fields whose schema needs Kubernetes extensions that have no pydantic spelling.
_EXTENSIONS: dict[tuple[type[BaseModel], str], Schema] = {
    (LLMServiceStatus, "conditions"): {
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
    },
    (LLMServiceStatus, "policy_memory"): {"x-kubernetes-preserve-unknown-fields": True},
}

PRINTER_COLUMNS: list[Schema] = [
    {
        "name": "Ready",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
        "description": "Serving, in spec, nothing pending.",
    },
    {
        "name": "Replicas",
        "type": "integer",
        "jsonPath": ".status.readyReplicas",
        "description": "Replicas ready to serve.",
    },
    {
        "name": "Desired",
        "type": "integer",
        "jsonPath": ".status.tuned.replicas",
        "description": "Replicas slotune wants.",
        "priority": 1,
    },
    {
        "name": "Batch",
        "type": "integer",
        "jsonPath": ".status.tuned.maxNumSeqs",
        "description": "Current max-num-seqs.",
    },
    {
        "name": "TTFT",
        "type": "number",
        "jsonPath": ".status.observed.ttft",
        "description": "Observed time to first token at the SLO percentile (p95 by default), s.",
    },
    {
        "name": "ITL",
        "type": "number",
        "jsonPath": ".status.observed.itl",
        "description": "Observed inter-token latency at the SLO percentile, s.",
    },
    {
        "name": "SLO",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="SLOMet")].status',
        "description": "True when every latency target is met.",
    },
    {
        "name": "Reason",
        "type": "string",
        "jsonPath": ".status.lastDecision.reason",
        "description": "Reason of the last tuning decision.",
        "priority": 1,
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def _strip_optional(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        if len(members) != 1:
            raise TypeError(f"only X | None unions are supported, got {annotation!r}")
        return members[0]
    return annotation


def _constraints(metadata: list[Any], kind: str) -> Schema:
    schema: Schema = {}
    for item in metadata:
        if isinstance(item, annotated_types.Ge):
            schema["minimum"] = item.ge
        elif isinstance(item, annotated_types.Le):
            schema["maximum"] = item.le
        elif isinstance(item, annotated_types.MinLen):
            schema["minItems" if kind == "array" else "minLength"] = item.min_length
        elif isinstance(item, annotated_types.MaxLen):
            key = {"array": "maxItems", "object": "maxProperties"}.get(kind, "maxLength")
            schema[key] = item.max_length
        elif getattr(item, "pattern", None):
            schema["pattern"] = item.pattern
        elif isinstance(item, FieldInfo):
            schema.update(_constraints(item.metadata, kind))
            if item.description:
                schema.setdefault("description", item.description)
    return schema


def type_schema(annotation: Any, metadata: list[Any] | None = None) -> Schema:
    """The structural schema of one Python type (with its Annotated constraints)."""
    annotation = _strip_optional(annotation)
    metadata = list(metadata or [])
    if get_origin(annotation) is Annotated:
        base, *extra = get_args(annotation)
        return type_schema(base, metadata + extra)
    origin = get_origin(annotation)
    schema: Schema
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        schema = model_schema(annotation)
    elif origin is Literal:
        values = list(get_args(annotation))
        schema = {"type": "string", "enum": values}
    elif origin is list:
        (item,) = get_args(annotation)
        schema = {"type": "array", "items": type_schema(item)}
    elif origin is dict:
        _, value = get_args(annotation)
        if value is Any:
            schema = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        else:
            schema = {"type": "object", "additionalProperties": type_schema(value)}
    elif annotation is bool:
        schema = {"type": "boolean"}
    elif annotation is int:
        schema = {"type": "integer"}
    elif annotation is float:
        schema = {"type": "number"}
    elif annotation is str:
        schema = {"type": "string"}
    else:
        raise TypeError(f"no CRD schema for {annotation!r}")
    constraints = _constraints(metadata, schema["type"])
    description = constraints.pop("description", None)
    schema.update(constraints)
    if description and "description" not in schema:
        schema["description"] = description
    return schema


def _default(field: FieldInfo) -> Any:
    if field.default_factory is not None:
        made = field.default_factory()  # type: ignore[call-arg]
        # The whole default object, not {}: the apiserver checks a default against the CEL
        # rules as written, before nested defaults would fill it.
        if isinstance(made, BaseModel):
            return json.loads(made.model_dump_json(by_alias=True, exclude_none=True))
        return PydanticUndefined
    if field.default is None or field.default is PydanticUndefined:
        return PydanticUndefined
    return json.loads(json.dumps(field.default))


def _validations(rules: tuple[CelRule, ...]) -> list[Schema]:
    out = []
    for rule in rules:
        entry: Schema = {"rule": rule.rule, "message": rule.message}
        if rule.field_path:
            entry["fieldPath"] = rule.field_path
        out.append(entry)
    return out


def model_schema(model: type[BaseModel]) -> Schema:
    """The structural schema of a model: properties, required, descriptions, CEL rules."""
    properties: Schema = {}
    required: list[str] = []
    for name, field in model.model_fields.items():
        wire_name = field.alias or name
        schema = type_schema(field.annotation, field.metadata)
        description = field.description or schema.get("description") or model_doc(field)
        schema = {
            "description": description,
            **{k: v for k, v in schema.items() if k != "description"},
        }
        default = _default(field)
        if default is not PydanticUndefined:
            schema["default"] = default
        elif field.is_required():
            required.append(wire_name)
        schema.update(_EXTENSIONS.get((model, name), {}))
        properties[wire_name] = schema
    out: Schema = {"type": "object", "description": _doc(model), "properties": properties}
    if required:
        out["required"] = required
    if issubclass(model, ApiModel) and model.cel_rules:
        out["x-kubernetes-validations"] = _validations(model.cel_rules)
    return out


def _doc(model: type[BaseModel]) -> str:
    return (model.__doc__ or model.__name__).strip().split("\n\n")[0].replace("\n", " ")


def model_doc(field: FieldInfo) -> str:
    annotation = _strip_optional(field.annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _doc(annotation)
    raise TypeError(f"field without a description: {field!r}")


def openapi_schema() -> Schema:
    """The openAPIV3Schema of the served version."""
    return {
        "type": "object",
        "description": (
            "An LLM served on GPUs and kept on a latency SLO: slotune renders its model-server "
            "Deployment, reads its latency metrics and retunes batch size and replicas."
        ),
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "slotune.dev/v1alpha1"},
            "kind": {"type": "string", "description": "LLMService"},
            "metadata": {"type": "object"},
            "spec": model_schema(LLMServiceSpec),
            "status": model_schema(LLMServiceStatus),
        },
        "x-kubernetes-validations": _validations((NAME_RULE,)),
    }


def crd() -> Schema:
    """The full CustomResourceDefinition object."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{GROUP}",
            "labels": {
                "app.kubernetes.io/name": "slotune",
                "app.kubernetes.io/part-of": "slotune",
                "app.kubernetes.io/version": __version__,
            },
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": ["slotune", "all"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                }
            ],
        },
    }


def crd_yaml() -> str:
    import yaml

    header = "# Generated by `slotune crd` from operator/slotune/api; do not edit by hand.\n"
    return header + yaml.safe_dump(crd(), sort_keys=False, width=100)
