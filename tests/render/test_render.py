"""Rendering: golden files, Kubernetes schema validity, ownership, and user strings as data."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from hypothesis import given, settings

from slotune.api.resource import LLMService, parse_llmservice
from slotune.api.spec import RESERVED_ENGINE_FLAGS
from slotune.api.status import Knobs
from slotune.render.render import render_children, to_yaml

from strategies import llmservices

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).resolve().parent / "golden"
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
K8S_VERSION = "1.34.0"
UID = "7d1c9a52-3f0e-4b8a-9c61-2a5e8f4b1d03"
# Kinds that are CRDs of the Prometheus operator: no Kubernetes schema covers them.
MONITORING_KINDS = {"PodMonitor", "PrometheusRule"}


def load(path: Path, uid: str = UID) -> LLMService:
    obj = yaml.safe_load(path.read_text())
    obj["metadata"]["uid"] = uid
    return parse_llmservice(obj)


def assert_valid_kubernetes(manifest: dict[str, Any]) -> None:
    if manifest["kind"] in MONITORING_KINDS:
        assert manifest["apiVersion"] == "monitoring.coreos.com/v1"
        assert manifest["spec"]
        return
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_examples_match_golden_files(path: Path) -> None:
    rendered = to_yaml(render_children(load(path)))
    golden = GOLDEN / f"{path.stem}.yaml"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(rendered)
    assert golden.exists(), f"missing {golden}: run with UPDATE_GOLDEN=1 once and review it"
    assert rendered == golden.read_text(), f"{golden.name} differs; UPDATE_GOLDEN=1 if intended"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_examples_render_schema_valid_owned_labelled_children(path: Path) -> None:
    service = load(path)
    children = render_children(service)
    assert [c["kind"] for c in children] == [
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "PodMonitor",
    ]
    for child in children:
        assert_valid_kubernetes(child)
        meta = child["metadata"]
        assert meta["namespace"] == service.metadata.namespace
        (owner,) = meta["ownerReferences"]
        assert owner["uid"] == UID and owner["controller"] is True
        assert owner["kind"] == "LLMService"
        for key in ("name", "instance", "component", "part-of", "managed-by"):
            assert meta["labels"][f"app.kubernetes.io/{key}"]


def server(children: list[dict[str, Any]]) -> dict[str, Any]:
    container: dict[str, Any] = children[0]["spec"]["template"]["spec"]["containers"][0]
    return container


def test_knobs_become_engine_flags_and_replicas() -> None:
    service = load(ROOT / "examples" / "llama-3-70b-fp8-h100x4.yaml")
    children = render_children(service, Knobs(replicas=5, max_num_seqs=96, max_batched_tokens=4096))
    args = server(children)["args"]
    assert children[0]["spec"]["replicas"] == 5
    for flag in (
        "--max-num-seqs=96",
        "--max-num-batched-tokens=4096",
        "--tensor-parallel-size=4",
        "--quantization=fp8",
        "--max-model-len=16384",
        "--port=8000",
    ):
        assert flag in args
    assert server(children)["resources"]["limits"]["nvidia.com/gpu"] == "4"


def test_rollouts_surge_a_quarter_unless_the_gpu_budget_is_full() -> None:
    service = load(ROOT / "examples" / "llama-3-70b-fp8-h100x4.yaml")  # gpuBudget 32, 4 per replica

    def rolling(replicas: int) -> dict[str, Any]:
        knobs = Knobs(replicas=replicas, max_num_seqs=96, max_batched_tokens=4096)
        deployment = render_children(service, knobs)[0]
        assert_valid_kubernetes(deployment)
        update: dict[str, Any] = deployment["spec"]["strategy"]["rollingUpdate"]
        return update

    assert rolling(7) == {"maxUnavailable": 0, "maxSurge": "25%"}  # 28 GPUs: room for one more
    # 32 GPUs held: a surge pod would stay Pending and the rollout stall; replace in place.
    assert rolling(8) == {"maxUnavailable": 1, "maxSurge": 0}


def test_external_scaling_leaves_replicas_to_the_autoscaler() -> None:
    children = render_children(load(ROOT / "examples" / "qwen-sglang-a100.yaml"))
    assert "replicas" not in children[0]["spec"]
    args = server(children)["args"]
    assert "--max-running-requests=64" in args and "--enable-metrics" in args


def test_pipeline_parallel_when_tensor_parallel_does_not_use_every_gpu() -> None:
    obj = yaml.safe_load((ROOT / "examples" / "llama-3-70b-fp8-h100x4.yaml").read_text())
    obj["spec"]["resources"]["tensorParallel"] = 2
    args = server(render_children(parse_llmservice(obj)))["args"]
    assert "--tensor-parallel-size=2" in args and "--pipeline-parallel-size=2" in args


def test_pvc_source_is_mounted_read_only() -> None:
    obj = yaml.safe_load((ROOT / "examples" / "llama-3-8b-h100.yaml").read_text())
    obj["spec"]["model"]["source"] = "pvc://weights/llama-3-8b"
    children = render_children(parse_llmservice(obj))
    assert server(children)["args"][0] == "/models/llama-3-8b"
    volumes = children[0]["spec"]["template"]["spec"]["volumes"]
    assert {
        "name": "model",
        "persistentVolumeClaim": {"claimName": "weights", "readOnly": True},
    } in volumes


def test_no_owner_reference_without_a_uid() -> None:
    children = render_children(load(ROOT / "examples" / "llama-3-8b-h100.yaml", uid=""))
    assert all(c["metadata"]["ownerReferences"] == [] for c in children)


def test_adapters_only_set_flags_users_may_not() -> None:
    for path in EXAMPLES:
        service = load(path)
        reserved = RESERVED_ENGINE_FLAGS[service.spec.engine.kind]
        extra = set(service.spec.engine.extra_args)
        for arg in server(render_children(service))["args"]:
            if arg.startswith("-") and arg not in extra:
                assert arg.split("=", 1)[0] in reserved, arg


HOSTILE = [
    "model: {{ 7 * 7 }}",
    "x\n  injected: true\n- evil",
    "'; kind: Secret",
    '"quoted" & <tagged> {% raw %}',
    "ünïcødé ✓ \u2028 line",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_user_strings_are_data_not_yaml_or_template(text: str) -> None:
    obj = yaml.safe_load((ROOT / "examples" / "llama-3-8b-h100.yaml").read_text())
    obj["metadata"]["uid"] = UID
    obj["spec"]["model"]["name"] = text
    obj["spec"]["engine"]["extraArgs"] = [text]
    obj["spec"]["engine"]["env"] = [{"name": "NOTE", "value": text}]
    children = render_children(parse_llmservice(obj))
    container = server(children)
    assert container["args"][0] == text and container["args"][-1] == text
    assert {"name": "NOTE", "value": text} in container["env"]
    assert f"--served-model-name={text}" in container["args"]
    # And it survives the YAML the CLI prints.
    assert list(yaml.safe_load_all(to_yaml(children))) == children


@settings(max_examples=500)
@given(llmservices())
def test_every_valid_spec_renders_schema_valid_manifests(obj: dict[str, Any]) -> None:
    service = parse_llmservice(copy.deepcopy(obj))
    for child in render_children(service):
        assert_valid_kubernetes(child)
