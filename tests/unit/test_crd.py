"""The generated CRD: in sync with the checked-in file, self-explaining, and agreeing with the
models on which objects are valid."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings

from slotune.api.crd import crd, crd_yaml
from slotune.api.resource import SpecError, parse_llmservice

from crd_check import crd_problems, default_problems
from strategies import broken_llmservices, llmservices

ROOT = Path(__file__).resolve().parents[2]
CHECKED_IN = ROOT / "crds" / "slotune.dev_llmservices.yaml"
CRD = crd()


def test_checked_in_crd_matches_the_models() -> None:
    assert CHECKED_IN.read_text() == crd_yaml(), (
        "crds/ is stale: run `make crd` (slotune crd > crds/slotune.dev_llmservices.yaml)"
    )


def _walk(schema: dict[str, Any], path: str) -> list[str]:
    missing = [] if schema.get("description") or path.endswith("]") else [path]
    for name, sub in schema.get("properties", {}).items():
        missing += _walk(sub, f"{path}.{name}")
    if "items" in schema:
        missing += _walk(schema["items"], f"{path}[]")
    return missing


def test_every_spec_and_status_field_is_described_for_kubectl_explain() -> None:
    root = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert _walk(root["properties"]["spec"], "spec") == []
    assert _walk(root["properties"]["status"], "status") == []


def test_schema_is_structural() -> None:
    def check(schema: dict[str, Any], path: str) -> None:
        assert "type" in schema or schema.get("x-kubernetes-preserve-unknown-fields"), path
        for banned in ("$ref", "anyOf", "oneOf", "allOf", "title"):
            assert banned not in schema, f"{path} uses {banned}"
        for name, sub in schema.get("properties", {}).items():
            check(sub, f"{path}.{name}")
        if isinstance(schema.get("items"), dict):
            check(schema["items"], f"{path}[]")

    check(CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"], "")


def test_printer_columns_and_status_subresource() -> None:
    version = CRD["spec"]["versions"][0]
    names = [c["name"] for c in version["additionalPrinterColumns"]]
    for wanted in ("Ready", "Replicas", "Batch", "TTFT", "SLO", "Age"):
        assert wanted in names
    assert version["subresources"] == {"status": {}}
    assert CRD["spec"]["names"]["shortNames"] == ["llms"]


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_crd_accepts_the_examples(path: Path) -> None:
    assert crd_problems(CRD, yaml.safe_load(path.read_text())) == []


@settings(max_examples=200)
@given(llmservices())
def test_crd_and_models_accept_the_same_valid_objects(obj: dict[str, Any]) -> None:
    parse_llmservice(obj)
    assert crd_problems(CRD, obj) == []


@settings(max_examples=200)
@given(broken_llmservices())
def test_crd_and_models_reject_the_same_invalid_objects(case: tuple[dict[str, Any], str]) -> None:
    obj, _ = case
    with pytest.raises(SpecError) as caught:
        parse_llmservice(obj)
    problems = crd_problems(CRD, obj)
    assert problems, f"the CRD accepts what the models reject: {caught.value}"


def test_defaults_pass_their_own_rules() -> None:
    # The apiserver refuses a CRD whose defaults break a CEL rule of their field.
    root = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert default_problems(root) == []
