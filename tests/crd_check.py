"""A local stand-in for the apiserver's CRD validation, for fast tests of many objects.

It does what the apiserver does, in its order: apply schema defaults, check the structural
schema (with `jsonschema`), then evaluate every `x-kubernetes-validations` CEL rule (with
cel-python) on the defaulted object. The integration tests check the same objects against a
real apiserver; this lets hypothesis try hundreds of them in seconds.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import celpy
import jsonschema

Schema = dict[str, Any]


def apply_defaults(schema: Schema, value: Any) -> Any:
    if schema.get("type") == "object" and isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = apply_defaults(sub, value[name])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name in value:
                value[name] = apply_defaults(extra, value[name])
    elif schema.get("type") == "array" and isinstance(value, list):
        return [apply_defaults(schema["items"], item) for item in value]
    return value


@functools.cache
def _program(rule: str) -> Any:
    env = celpy.Environment()
    return env.program(env.compile(rule))


def cel_violations(schema: Schema, value: Any, path: str = "") -> list[tuple[str, str]]:
    """(path, message) for every CEL rule the value breaks, depth first like the apiserver."""
    found: list[tuple[str, str]] = []
    if schema.get("type") == "object" and isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                found += cel_violations(sub, value[name], f"{path}.{name}" if path else name)
    elif schema.get("type") == "array" and isinstance(value, list):
        for index, item in enumerate(value):
            found += cel_violations(schema["items"], item, f"{path}[{index}]")
    for rule in schema.get("x-kubernetes-validations", []):
        result = _program(rule["rule"]).evaluate({"self": celpy.json_to_cel(value)})
        if isinstance(result, Exception) or not bool(result):
            found.append((path + rule.get("fieldPath", ""), rule["message"]))
    return found


def strict(schema: Schema) -> Schema:
    """The schema as `kubectl apply` enforces it: unknown fields are errors.

    A structural schema may not say `additionalProperties: false` next to `properties`; the
    apiserver instead rejects unknown fields when the client asks for strict field validation,
    which kubectl does by default (`--validate=strict`).
    """
    schema = dict(schema)
    if "properties" in schema:
        schema["properties"] = {k: strict(v) for k, v in schema["properties"].items()}
        schema.setdefault("additionalProperties", False)
    if isinstance(schema.get("items"), dict):
        schema["items"] = strict(schema["items"])
    return schema


def crd_problems(crd: Schema, obj: Any) -> list[str]:
    """Why the apiserver would reject `obj`; empty when it would accept it."""
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    obj = apply_defaults(schema, copy.deepcopy(obj))
    validator = jsonschema.Draft7Validator(strict(schema))
    problems = [
        f"{'.'.join(str(p) for p in error.absolute_path)}: {error.message}"
        for error in validator.iter_errors(obj)
    ]
    if problems:
        return problems
    return [f"{path}: {message}" for path, message in cel_violations(schema, obj)]


def default_problems(schema: Schema, path: str = "") -> list[str]:
    """Defaults the apiserver would refuse when the CRD is created.

    It validates each default, as written (nested defaults not applied), against the schema
    and the CEL rules of the field it sits on.
    """
    found: list[str] = []
    if "default" in schema:
        value = schema["default"]
        for error in jsonschema.Draft7Validator(strict(schema)).iter_errors(value):
            found.append(f"{path}: default: {error.message}")
        try:
            found += [f"{path}: default: {m}" for _, m in cel_violations(schema, value)]
        except celpy.CELEvalError as error:
            found.append(f"{path}: default: {error}")
    for name, sub in schema.get("properties", {}).items():
        found += default_problems(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        found += default_problems(schema["items"], f"{path}[]")
    return found
