"""The local control plane behaves like a real cluster in the ways the operator relies on."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from slotune.sandbox.build import K8S_VERSION
from slotune.sandbox.controlplane import ControlPlane, new_api_client
from slotune.sandbox.kwok import GPU_PRODUCT_LABEL, GPU_RESOURCE, READY_DELAY_ANNOTATION

pytestmark = pytest.mark.integration

GPUS_PER_NODE = 8
T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 60.0) -> T:
    """Poll `probe` until it returns something truthy; fail naming `what` on time-out."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.25)


@pytest.fixture(scope="module")
def gpu_nodes(control_plane: ControlPlane) -> Iterator[list[str]]:
    names = control_plane.add_gpu_nodes(2, gpus_per_node=GPUS_PER_NODE, name_prefix="cp-test-gpu")
    yield names
    # The cluster is shared by the whole session: GPUs left here would let other modules'
    # "not enough GPUs" pods schedule.
    control_plane.delete_nodes(names)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def condition(obj: Any, kind: str) -> Any:
    return next((c for c in (obj.status.conditions or []) if c.type == kind), None)


def gpu_container(gpus: int) -> client.V1Container:
    # The image is never pulled: kwok only pretends to run it.
    return client.V1Container(
        name="server",
        image="registry.invalid/model-server:1",
        resources=client.V1ResourceRequirements(
            requests={GPU_RESOURCE: str(gpus)}, limits={GPU_RESOURCE: str(gpus)}
        ),
    )


def test_apiserver_reports_the_built_version(k8s: Any) -> None:
    info = client.VersionApi(k8s).get_code()
    assert info.git_version == K8S_VERSION
    assert (info.major, info.minor) == ("1", K8S_VERSION.split(".")[1])


def test_fake_gpu_nodes_are_ready_with_gpus(k8s: Any, gpu_nodes: list[str]) -> None:
    core = client.CoreV1Api(k8s)
    for name in gpu_nodes:
        node = core.read_node(name)
        assert condition(node, "Ready").status == "True"
        assert node.status.allocatable[GPU_RESOURCE] == str(GPUS_PER_NODE)
        assert node.status.capacity[GPU_RESOURCE] == str(GPUS_PER_NODE)
        assert node.metadata.labels[GPU_PRODUCT_LABEL] == "NVIDIA-H100-80GB-HBM3"


def test_gpu_deployment_is_scheduled_and_becomes_ready(
    k8s: Any, namespace: str, gpu_nodes: list[str]
) -> None:
    apps, core = client.AppsV1Api(k8s), client.CoreV1Api(k8s)
    labels = {"app": "model"}
    apps.create_namespaced_deployment(
        namespace,
        client.V1Deployment(
            metadata=client.V1ObjectMeta(name="model"),
            spec=client.V1DeploymentSpec(
                replicas=1,
                selector=client.V1LabelSelector(match_labels=labels),
                template=client.V1PodTemplateSpec(
                    metadata=client.V1ObjectMeta(labels=labels),
                    spec=client.V1PodSpec(containers=[gpu_container(1)]),
                ),
            ),
        ),
    )

    def ready_pod() -> Any:
        pods = core.list_namespaced_pod(namespace, label_selector="app=model").items
        return next(
            (
                p
                for p in pods
                if p.status.phase == "Running" and condition(p, "Ready").status == "True"
            ),
            None,
        )

    pod = wait_for("the model pod to be Running and Ready", ready_pod)
    assert pod.spec.node_name in gpu_nodes
    wait_for(
        "the Deployment to be available",
        lambda: (
            apps.read_namespaced_deployment_status("model", namespace).status.available_replicas
        ),
    )


def test_pod_readiness_waits_for_the_startup_delay(
    k8s: Any, namespace: str, gpu_nodes: list[str]
) -> None:
    core = client.CoreV1Api(k8s)
    delay = 3.0
    core.create_namespaced_pod(
        namespace,
        client.V1Pod(
            metadata=client.V1ObjectMeta(
                name="slow", annotations={READY_DELAY_ANNOTATION: f"{delay:.0f}s"}
            ),
            spec=client.V1PodSpec(containers=[gpu_container(1)]),
        ),
    )
    running = wait_for(
        "the pod to be Running",
        lambda: (p := core.read_namespaced_pod("slow", namespace)).status.phase == "Running" and p,
    )
    # Up but still "loading the model": Running, not Ready.
    assert condition(running, "Ready").status == "False"
    wait_for(
        "the pod to turn Ready",
        lambda: condition(core.read_namespaced_pod("slow", namespace), "Ready").status == "True",
    )
    ready = core.read_namespaced_pod("slow", namespace)
    started = running.status.container_statuses[0].state.running.started_at
    became_ready = condition(ready, "Ready").last_transition_time
    assert (became_ready - started).total_seconds() >= delay - 1.0  # timestamps are in seconds


def test_pod_wanting_more_gpus_than_any_node_stays_pending(
    k8s: Any, namespace: str, gpu_nodes: list[str]
) -> None:
    core = client.CoreV1Api(k8s)
    core.create_namespaced_pod(
        namespace,
        client.V1Pod(
            metadata=client.V1ObjectMeta(name="greedy"),
            spec=client.V1PodSpec(containers=[gpu_container(64)]),
        ),
    )

    def unschedulable() -> Any:
        pod = core.read_namespaced_pod("greedy", namespace)
        scheduled = condition(pod, "PodScheduled")
        return scheduled if scheduled and scheduled.reason == "Unschedulable" else None

    scheduled = wait_for("the scheduler to mark the pod Unschedulable", unschedulable)
    assert scheduled.status == "False"
    assert "nvidia.com/gpu" in scheduled.message
    pod = core.read_namespaced_pod("greedy", namespace)
    assert pod.status.phase == "Pending"
    assert not pod.spec.node_name


def test_garbage_collector_deletes_dependents(k8s: Any, namespace: str) -> None:
    core = client.CoreV1Api(k8s)
    owner = core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner"))
    )
    ref = client.V1OwnerReference(
        api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid
    )
    core.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owned", owner_references=[ref])),
    )
    core.delete_namespaced_config_map("owner", namespace)

    def owned_gone() -> bool:
        try:
            core.read_namespaced_config_map("owned", namespace)
        except ApiException as exc:
            return exc.status == 404
        return False

    wait_for("the garbage collector to delete the owned ConfigMap", owned_gone)


def test_service_account_token_is_limited_by_rbac(
    control_plane: ControlPlane, k8s: Any, namespace: str, tmp_path: Path
) -> None:
    core, rbac = client.CoreV1Api(k8s), client.RbacAuthorizationV1Api(k8s)
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="narrow"))
    )
    rbac.create_namespaced_role(
        namespace,
        client.V1Role(
            metadata=client.V1ObjectMeta(name="read-configmaps"),
            rules=[
                client.V1PolicyRule(
                    api_groups=[""], resources=["configmaps"], verbs=["get", "list"]
                )
            ],
        ),
    )
    rbac.create_namespaced_role_binding(
        namespace,
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name="narrow-reads-configmaps"),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="Role", name="read-configmaps"
            ),
            subjects=[
                client.RbacV1Subject(kind="ServiceAccount", name="narrow", namespace=namespace)
            ],
        ),
    )
    kubeconfig = control_plane.service_account_kubeconfig(
        namespace, "narrow", tmp_path / "narrow.kubeconfig"
    )
    assert oct(os.stat(kubeconfig).st_mode & 0o777) == "0o600"
    api = new_api_client(kubeconfig)
    try:
        review = client.AuthenticationV1Api(api).create_self_subject_review(
            client.V1SelfSubjectReview()
        )
        assert review.status.user_info.username == f"system:serviceaccount:{namespace}:narrow"
        sa_core = client.CoreV1Api(api)
        sa_core.list_namespaced_config_map(namespace)  # allowed by the Role

        forbidden: list[Callable[[], object]] = [
            lambda: sa_core.list_namespaced_secret(namespace),
            lambda: sa_core.list_namespaced_config_map("kube-system"),
            lambda: sa_core.create_namespaced_config_map(
                namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="nope"))
            ),
            lambda: sa_core.list_node(),
        ]
        for call in forbidden:
            with pytest.raises(ApiException) as excinfo:
                call()
            assert excinfo.value.status == 403
    finally:
        api.close()


def test_audit_log_records_writes_not_reads(
    control_plane: ControlPlane, k8s: Any, namespace: str
) -> None:
    core = client.CoreV1Api(k8s)
    core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="audited"))
    )
    core.read_namespaced_config_map("audited", namespace)
    mine = [
        e
        for e in control_plane.audit_events()
        if e.get("objectRef", {}).get("namespace") == namespace
        and e["objectRef"].get("resource") == "configmaps"
        and e["objectRef"].get("name") == "audited"
    ]
    assert [(e["verb"], e["responseStatus"]["code"]) for e in mine] == [("create", 201)]
    assert mine[0]["user"]["username"] == "slotune-admin"


def test_stop_ends_every_process(control_plane: ControlPlane) -> None:
    """A second, short-lived control plane: an exception in the block still stops it all."""
    with pytest.raises(RuntimeError, match="boom"), ControlPlane(control_plane.bin_dir) as cp:
        pids = cp.pids
        work_dir = cp.work_dir
        assert set(pids) == {
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "kwok",
        }
        assert cp.apiserver_port != control_plane.apiserver_port
        raise RuntimeError("boom")
    still_running = [name for name, pid in pids.items() if alive(pid)]
    assert still_running == []
    assert not work_dir.exists()
