"""The operator against a real apiserver, controller-manager, scheduler and kwok GPU nodes.

It runs as its own process with a ServiceAccount token bound to the chart's RBAC rules only.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from operator_fixtures import (
    OperatorProcess,
    eventually,
    install_crd,
    operator_writes,
    start_operator,
)

from slotune.api.resource import SpecError, parse_llmservice
from slotune.sandbox.controlplane import ControlPlane

from strategies import broken_llmservices, llmservices

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
GROUP, VERSION, PLURAL = "slotune.dev", "v1alpha1", "llmservices"
GPU_NODES, GPUS_PER_NODE = 2, 4


@pytest.fixture(scope="module")
def gpu_cluster(control_plane: ControlPlane, k8s: Any) -> ControlPlane:
    control_plane.add_gpu_nodes(GPU_NODES, GPUS_PER_NODE, product="NVIDIA-H100-80GB-HBM3")
    install_crd(k8s)
    return control_plane


@pytest.fixture(scope="module")
def operator(
    gpu_cluster: ControlPlane, k8s: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    work = tmp_path_factory.mktemp("operator")
    yield from start_operator(gpu_cluster, k8s, work)


def service(name: str, namespace: str, **spec_changes: Any) -> dict[str, Any]:
    obj = yaml.safe_load((ROOT / "examples" / "llama-3-8b-h100.yaml").read_text())
    obj["metadata"] = {"name": name, "namespace": namespace}
    obj["spec"]["model"].pop("hubTokenSecret")
    obj["spec"]["resources"].pop("cpu")
    obj["spec"]["resources"].pop("memory")
    obj["spec"]["scaling"]["maxReplicas"] = 4
    for path, value in spec_changes.items():
        node = obj["spec"]
        *parents, leaf = path.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return obj


def custom(k8s: Any) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(k8s)


def create(k8s: Any, obj: dict[str, Any], dry_run: bool = False) -> dict[str, Any]:
    created: dict[str, Any] = custom(k8s).create_namespaced_custom_object(
        GROUP,
        VERSION,
        obj["metadata"]["namespace"],
        PLURAL,
        obj,
        dry_run="All" if dry_run else None,
        field_validation="Strict",
    )
    return created


def get(k8s: Any, namespace: str, name: str) -> dict[str, Any]:
    got: dict[str, Any] = custom(k8s).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name
    )
    return got


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    for found in obj.get("status", {}).get("conditions", []):
        if found["type"] == kind:
            return dict(found)
    return {}


def deployment(k8s: Any, namespace: str, name: str) -> Any:
    return client.AppsV1Api(k8s).read_namespaced_deployment(name, namespace)


def args_of(dep: Any) -> list[str]:
    return list(dep.spec.template.spec.containers[0].args)


# -- the CRD as the apiserver enforces it ---------------------------------------------------


def test_apiserver_rejects_broken_rules_with_the_cel_message(
    gpu_cluster: Any, k8s: Any, namespace: str
) -> None:
    bad = service("bad", namespace, resources={"gpusPerReplica": 4, "tensorParallel": 3})
    with pytest.raises(ApiException) as caught:
        create(k8s, bad)
    assert caught.value.status == 422
    assert "tensorParallel must divide gpusPerReplica" in caught.value.body
    assert "spec.resources.tensorParallel" in caught.value.body

    bad = service("bad", namespace, engine={"extraArgs": ["--max-num-seqs=4"]})
    with pytest.raises(ApiException) as caught:
        create(k8s, bad)
    assert "extraArgs must not set a flag slotune manages for vllm" in caught.value.body


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.stem)
def test_apiserver_accepts_the_examples(gpu_cluster: Any, k8s: Any, path: Path) -> None:
    obj = yaml.safe_load(path.read_text())
    obj["metadata"]["namespace"] = "default"
    created = create(k8s, obj, dry_run=True)
    # Defaults from the schema are applied by the apiserver.
    assert created["spec"]["tuning"]["interval"] == obj["spec"].get("tuning", {}).get(
        "interval", "30s"
    )


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(obj=llmservices())
def test_apiserver_and_models_accept_the_same_objects(
    gpu_cluster: Any, k8s: Any, obj: dict[str, Any]
) -> None:
    obj = copy.deepcopy(obj)
    obj["metadata"] = {"name": obj["metadata"]["name"], "namespace": "default"}
    parse_llmservice(obj)
    create(k8s, obj, dry_run=True)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=broken_llmservices())
def test_apiserver_and_models_reject_the_same_objects(
    gpu_cluster: Any, k8s: Any, case: tuple[dict[str, Any], str]
) -> None:
    obj = copy.deepcopy(case[0])
    obj["metadata"] = {**obj["metadata"], "namespace": "default"}
    obj["metadata"].pop("uid")
    with pytest.raises(SpecError):
        parse_llmservice(obj)
    with pytest.raises(ApiException) as caught:
        create(k8s, obj, dry_run=True)
    assert caught.value.status in (400, 422), caught.value.body


def kubectl(cp: ControlPlane, *args: str) -> str:
    return cp.kubectl(*args)


def test_kubectl_explains_and_prints_columns(
    gpu_cluster: ControlPlane, k8s: Any, namespace: str
) -> None:
    explained = eventually(
        lambda: (
            "percentile" in (out := kubectl(gpu_cluster, "explain", "llms.spec.slo.ttft")) and out
        ),
        30,
        "kubectl explain to know the CRD",
    )
    assert "Which percentile of requests must meet the target" in explained
    create(k8s, service("columns", namespace))
    header = kubectl(gpu_cluster, "get", "llms", "-n", namespace).splitlines()[0].split()
    assert header[:8] == ["NAME", "READY", "REPLICAS", "BATCH", "TTFT", "ITL", "SLO", "AGE"]


# -- the operator --------------------------------------------------------------------------


def test_create_renders_owned_children_and_turns_ready(
    operator: OperatorProcess, k8s: Any, namespace: str
) -> None:
    create(k8s, service("chat", namespace))
    ready = eventually(
        lambda: condition(o := get(k8s, namespace, "chat"), "Ready").get("status") == "True" and o,
        90,
        f"Ready=True\n{operator.log_tail()}",
    )
    dep = deployment(k8s, namespace, "chat")
    owner = dep.metadata.owner_references[0]
    assert owner.kind == "LLMService" and owner.controller and owner.uid == ready["metadata"]["uid"]
    svc = client.CoreV1Api(k8s).read_namespaced_service("chat", namespace)
    assert svc.metadata.owner_references[0].uid == owner.uid
    pdb = client.PolicyV1Api(k8s).read_namespaced_pod_disruption_budget("chat", namespace)
    assert pdb.metadata.owner_references[0].uid == owner.uid
    assert svc.metadata.labels["app.kubernetes.io/managed-by"] == "slotune"

    assert condition(ready, "WorkloadReady")["status"] == "True"
    assert condition(ready, "CapacityLimited")["status"] == "False"
    # No Prometheus listens in this test: said so, never read as zero.
    metrics = condition(ready, "MetricsAvailable")
    assert (metrics["status"], metrics["reason"]) == ("False", "PrometheusError")
    assert condition(ready, "SLOMet")["status"] == "Unknown"
    assert ready["status"]["lastDecision"]["reason"] == "MetricsMissing"
    assert ready["status"]["lastDecision"]["applied"] is False
    assert ready["status"]["observedGeneration"] == ready["metadata"]["generation"]
    assert ready["status"]["tuned"] == {"replicas": 1, "maxNumSeqs": 128, "maxBatchedTokens": 8192}
    assert ready["status"]["readyReplicas"] == 1 and ready["status"]["gpus"] == 1
    # 500 ms, 25 ms and 20 s are all vLLM bucket bounds: the alerts count exactly.
    offsets = {b["objective"]: b["offsetPercent"] for b in ready["status"]["alertBuckets"]}
    assert offsets == {"ttft": 0, "itl": 0, "e2e": 0}
    pods = client.CoreV1Api(k8s).list_namespaced_pod(namespace).items
    assert len(pods) == 1 and pods[0].status.phase == "Running"
    node = client.CoreV1Api(k8s).read_node(pods[0].spec.node_name)
    assert node.metadata.labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    events = client.CoreV1Api(k8s).list_namespaced_event(namespace).items
    reasons = {e.reason for e in events if e.involved_object.kind == "LLMService"}
    assert {"Applied", "Serving"} <= reasons, reasons


def test_not_enough_gpus_is_capacity_limited(
    operator: OperatorProcess, k8s: Any, namespace: str
) -> None:
    # 8 GPUs per replica on nodes that have 4 each: the pod can never be scheduled.
    create(
        k8s,
        service(
            "huge",
            namespace,
            resources={"gpusPerReplica": 8, "tensorParallel": 8, "gpuType": "nvidia-h100-80gb"},
        ),
    )
    limited = eventually(
        lambda: (
            condition(o := get(k8s, namespace, "huge"), "CapacityLimited").get("status") == "True"
            and o
        ),
        90,
        f"CapacityLimited=True\n{operator.log_tail()}",
    )
    assert "Insufficient nvidia.com/gpu" in condition(limited, "CapacityLimited")["message"]
    assert limited["status"]["pendingReplicas"] == 1
    assert condition(limited, "Ready")["status"] == "False"


def test_spec_update_rolls_out_new_args_and_delete_collects_children(
    operator: OperatorProcess, k8s: Any, namespace: str
) -> None:
    create(k8s, service("roll", namespace))
    eventually(lambda: deployment(k8s, namespace, "roll"), 60, "the Deployment")
    custom(k8s).patch_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        "roll",
        {
            "spec": {
                "model": {"maxModelLen": 4096},
                "engine": {"extraArgs": ["--enable-chunked-prefill"]},
            }
        },
    )
    dep = eventually(
        lambda: "--max-model-len=4096" in args_of(d := deployment(k8s, namespace, "roll")) and d,
        60,
        "the new args",
    )
    assert "--enable-chunked-prefill" in args_of(dep)
    assert dep.metadata.generation >= 2

    custom(k8s).delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "roll")

    def gone() -> bool:
        try:
            deployment(k8s, namespace, "roll")
        except ApiException as error:
            return error.status == 404
        return False

    eventually(gone, 60, "the garbage collector to delete the Deployment")


def test_drift_is_reverted_and_paused_objects_are_left_alone(
    operator: OperatorProcess, k8s: Any, namespace: str
) -> None:
    create(k8s, service("drift", namespace))
    dep = eventually(lambda: deployment(k8s, namespace, "drift"), 60, "the Deployment")
    apps = client.AppsV1Api(k8s)
    tampered = [
        a if not a.startswith("--max-num-seqs") else "--max-num-seqs=7" for a in args_of(dep)
    ]
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "server", "args": tampered}]}}}}
    apps.patch_namespaced_deployment("drift", namespace, patch)
    eventually(
        lambda: "--max-num-seqs=128" in args_of(deployment(k8s, namespace, "drift")),
        30,
        f"the drift to be reverted\n{operator.log_tail(150)}",
    )

    custom(k8s).patch_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        "drift",
        {"metadata": {"annotations": {"slotune.dev/paused": "true"}}},
    )
    time.sleep(3)
    apps.patch_namespaced_deployment("drift", namespace, patch)
    time.sleep(8)  # several resync intervals
    assert "--max-num-seqs=7" in args_of(deployment(k8s, namespace, "drift"))
    assert condition(get(k8s, namespace, "drift"), "Ready")["reason"] in (
        "Paused",
        "WorkloadNotReady",
    )

    custom(k8s).patch_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        "drift",
        {"metadata": {"annotations": {"slotune.dev/paused": None}}},
    )
    eventually(
        lambda: "--max-num-seqs=128" in args_of(deployment(k8s, namespace, "drift")),
        30,
        "the operator to resume",
    )


def test_steady_state_and_restart_write_nothing(
    operator: OperatorProcess, k8s: Any, namespace: str, control_plane: ControlPlane
) -> None:
    create(k8s, service("quiet", namespace))
    eventually(
        lambda: condition(get(k8s, namespace, "quiet"), "Ready").get("status") == "True",
        90,
        "Ready=True",
    )
    time.sleep(3)  # let the last status write land
    audit = control_plane.audit_log
    since = time.time()
    time.sleep(8)  # four resyncs
    assert operator_writes(audit, since, namespace) == []

    operator.stop()
    operator.start()
    since = time.time()
    time.sleep(10)  # start-up, resume handler, resyncs
    assert operator_writes(audit, since, namespace) == [], operator.log_tail()
    assert condition(get(k8s, namespace, "quiet"), "Ready")["status"] == "True"


def test_switching_to_external_keeps_the_replica_count(
    operator: OperatorProcess, k8s: Any, namespace: str
) -> None:
    create(k8s, service("handover", namespace, scaling={"minReplicas": 2, "maxReplicas": 4}))
    eventually(lambda: deployment(k8s, namespace, "handover").spec.replicas == 2, 90, "2 replicas")
    # Replicas go to an HPA that has not scaled yet, and the same edit changes the pod template,
    # so slotune re-applies the Deployment without replicas. Server-side apply would drop the
    # field it alone owned and the Deployment would default to 1 replica.
    custom(k8s).patch_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        "handover",
        {
            "spec": {
                "scaling": {"mode": "external"},
                "engine": {"env": [{"name": "X", "value": "1"}]},
            }
        },
    )

    def rolled() -> Any:
        dep = deployment(k8s, namespace, "handover")
        env = dep.spec.template.spec.containers[0].env or []
        return dep if any(e.name == "X" for e in env) else None

    dep = eventually(rolled, 60, "the new pod template")
    assert dep.spec.replicas == 2
    owners = {
        entry.manager
        for entry in dep.metadata.managed_fields
        if "f:replicas" in ((entry.fields_v1 or {}).get("f:spec") or {})
    }
    assert owners == {"slotune-handover"}, owners  # slotune let go; the value stayed
    time.sleep(6)  # resyncs change nothing
    assert deployment(k8s, namespace, "handover").spec.replicas == 2


def test_external_scaling_mode_never_writes_replicas(
    operator: OperatorProcess, k8s: Any, namespace: str, control_plane: ControlPlane
) -> None:
    create(k8s, service("hpa-owned", namespace, scaling={"mode": "external", "maxReplicas": 4}))
    eventually(
        lambda: condition(get(k8s, namespace, "hpa-owned"), "Ready").get("status") == "True",
        90,
        "Ready=True",
    )
    assert deployment(k8s, namespace, "hpa-owned").spec.replicas == 1  # default: none sent
    # An HPA (here: a person) scales the Deployment; slotune must leave the count alone.
    client.AppsV1Api(k8s).patch_namespaced_deployment_scale(
        "hpa-owned", namespace, {"spec": {"replicas": 3}}
    )
    since = time.time()
    time.sleep(8)  # several resyncs
    assert deployment(k8s, namespace, "hpa-owned").spec.replicas == 3
    writes = operator_writes(control_plane.audit_log, since, namespace)
    assert not [w for w in writes if "deployments" in w], writes
    # It still reports on the service and keeps tuning batch flags.
    status = get(k8s, namespace, "hpa-owned")["status"]
    assert status["tuned"] == {"replicas": 3, "maxNumSeqs": 128, "maxBatchedTokens": 8192}
    assert status["replicas"] == 3
