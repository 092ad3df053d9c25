"""The LLMService models: defaults, camelCase, and every rule with the field it blames."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings

from slotune.api.resource import SpecError, parse_llmservice, parse_spec
from slotune.api.spec import LLMServiceSpec

from strategies import broken_llmservices, llmservices

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))
MINIMAL: dict[str, Any] = {
    "model": {"name": "meta-llama/Meta-Llama-3-8B-Instruct"},
    "slo": {"ttft": {"target": "500ms"}, "itl": {"target": "25ms"}},
}


def spec_with(path: str, value: Any) -> dict[str, Any]:
    spec = copy.deepcopy(MINIMAL)
    *parents, leaf = path.split(".")
    node = spec
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return spec


def test_minimal_spec_gets_documented_defaults() -> None:
    spec = parse_spec(MINIMAL)
    assert spec.engine.kind == "vllm"
    assert spec.slo.ttft.percentile == 95 and spec.slo.window == "5m"
    assert (spec.scaling.min_replicas, spec.scaling.max_replicas) == (1, 8)
    assert spec.scaling.scale_down_stabilization == "5m"
    assert spec.batching.max_num_seqs.initial == 128
    assert spec.batching.max_batched_tokens.initial == 8192
    assert spec.tuning.mode == "auto" and spec.tuning.interval == "30s"


def test_round_trips_in_camel_case() -> None:
    spec = parse_spec(spec_with("slo.e2e", {"target": "20s"}))
    dumped = spec.model_dump(by_alias=True, exclude_none=True)
    assert dumped["slo"]["e2e"]["target"] == "20s"
    assert "maxNumSeqs" in dumped["batching"] and "gpusPerReplica" in dumped["resources"]
    assert LLMServiceSpec.model_validate(dumped) == spec


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_valid(path: Path) -> None:
    parse_llmservice(yaml.safe_load(path.read_text()))


@pytest.mark.parametrize(
    ("path", "value", "where", "says"),
    [
        ("slo.ttft.target", "fast", "spec.slo.ttft.target", "not a duration"),
        ("slo.ttft.percentile", 49, "spec.slo.ttft.percentile", "greater than or equal to 50"),
        ("slo.window", "30s", "spec.slo", "window must be between 1m and 1h"),
        ("slo.e2e", {"target": "100ms"}, "spec.slo", "e2e.target must be greater than ttft"),
        ("scaling.minReplicas", 9, "spec.scaling", "minReplicas must be less than or equal"),
        (
            "batching.maxNumSeqs",
            {"initial": 4, "min": 8, "max": 16},
            "spec.batching.maxNumSeqs",
            "min must be less than or equal to initial",
        ),
        (
            "batching.maxNumSeqs",
            {"initial": 32, "min": 8, "max": 16},
            "spec.batching.maxNumSeqs",
            "initial must be less than or equal to max",
        ),
        (
            "batching.maxBatchedTokens",
            {"initial": 100, "min": 64, "max": 16384},
            "spec.batching",
            "maxBatchedTokens.initial must be at least maxNumSeqs.initial",
        ),
        (
            "resources",
            {"gpusPerReplica": 4, "tensorParallel": 3},
            "spec.resources",
            "tensorParallel must divide gpusPerReplica",
        ),
        ("engine.extraArgs", ["--max-num-seqs=8"], "spec.engine", "must not set a flag"),
        ("engine.extraArgs", ["-tp", "2"], "spec.engine", "must not set a flag"),
        ("engine.env", [{"name": "X"}], "spec.engine.env[0]", "exactly one of value"),
        ("scaling.gpuBudget", 0, "spec.scaling.gpuBudget", "greater than or equal to 1"),
        ("tuning.interval", "5s", "spec.tuning", "interval must be between 10s and 10m"),
        ("model.quantization", "int3", "spec.model.quantization", "'none'"),
        ("slo.itl.goal", "1s", "spec.slo.itl.goal", "unknown field"),
    ],
)
def test_each_rule_names_its_field(path: str, value: Any, where: str, says: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(spec_with(path, value))
    assert caught.value.first_path == where
    assert says in str(caught.value)


def test_gpu_budget_must_cover_min_replicas() -> None:
    spec = spec_with("scaling", {"minReplicas": 3, "gpuBudget": 4})
    spec["resources"] = {"gpusPerReplica": 2, "tensorParallel": 2}
    with pytest.raises(SpecError, match="gpuBudget must cover"):
        parse_spec(spec)


def test_sglang_needs_tensor_parallel_over_all_gpus() -> None:
    spec = spec_with("engine.kind", "sglang")
    spec["resources"] = {"gpusPerReplica": 2, "tensorParallel": 1}
    with pytest.raises(SpecError, match="sglang"):
        parse_spec(spec)


def test_reserved_flags_are_per_engine() -> None:
    # --max-running-requests is SGLang's knob; on vLLM it is just an unknown flag to pass on.
    parse_spec(spec_with("engine.extraArgs", ["--max-running-requests=4"]))


@settings(max_examples=500)
@given(llmservices())
def test_generated_valid_objects_parse(obj: dict[str, Any]) -> None:
    parse_llmservice(obj)


@settings(max_examples=500)
@given(broken_llmservices())
def test_generated_invalid_objects_give_a_clean_error_naming_the_field(
    case: tuple[dict[str, Any], str],
) -> None:
    obj, where = case
    with pytest.raises(SpecError) as caught:
        parse_llmservice(obj)
    assert caught.value.first_path.startswith(where), str(caught.value)
    assert caught.value.problems[0][1]


@pytest.mark.parametrize("bad", [None, [], "spec", 3])
def test_non_mappings_are_reported_not_raised(bad: Any) -> None:
    with pytest.raises(SpecError):
        parse_llmservice(bad)
