"""What kwok needs to play kubelet for fake GPU nodes: its Stage config and the Node objects.

kwok v0.8 ships no built-in stages when run as a plain binary (it exits with "no stages
found"), so the lifecycle is written here. Stages are adapted from kwok's own
kustomize/stage/{node,pod} sets (Apache-2.0) with one change that matters for an LLM operator:
a pod first becomes Running but *not Ready*, and turns Ready only after a start-up delay, the
way a model server is up long before its model has loaded.
"""

from __future__ import annotations

from typing import Any

import yaml

# kwok manages only Nodes that carry this annotation (see --manage-nodes-with-annotation-selector).
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_NODE_SELECTOR = f"{KWOK_NODE_ANNOTATION}=fake"

# Per-pod override of the start-up delay, a Go duration such as "30s"; read by the pod-ready
# stage through kwok's delay.durationFrom (absent: the control plane's default).
READY_DELAY_ANNOTATION = "sandbox.slotune.dev/ready-delay"

GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_COUNT_LABEL = "nvidia.com/gpu.count"
DEFAULT_GPU_PRODUCT = "NVIDIA-H100-80GB-HBM3"

_NODE_INITIALIZE = """\
{{ $now := Now }}
{{ $lastTransitionTime := or .metadata.creationTimestamp $now }}
conditions:
{{ range NodeConditions }}
- lastHeartbeatTime: {{ $now | Quote }}
  lastTransitionTime: {{ $lastTransitionTime | Quote }}
  message: {{ .message | Quote }}
  reason: {{ .reason | Quote }}
  status: {{ .status | Quote }}
  type: {{ .type | Quote }}
{{ end }}
addresses:
{{ with .status.addresses }}
{{ YAML . 1 }}
{{ else }}
{{ with NodeIP }}
- address: {{ . | Quote }}
  type: InternalIP
{{ end }}
- address: {{ .metadata.name | Quote }}
  type: Hostname
{{ end }}
allocatable:
{{ with .status.allocatable }}
{{ YAML . 1 }}
{{ else }}
  cpu: 1k
  memory: 1Ti
  pods: 1M
{{ end }}
capacity:
{{ with .status.capacity }}
{{ YAML . 1 }}
{{ else }}
  cpu: 1k
  memory: 1Ti
  pods: 1M
{{ end }}
{{ $nodeInfo := .status.nodeInfo }}
{{ $kwokVersion := printf "kwok-%s" Version }}
nodeInfo:
  architecture: {{ or $nodeInfo.architecture "amd64" }}
  bootID: {{ or $nodeInfo.bootID `""` }}
  containerRuntimeVersion: {{ or $nodeInfo.containerRuntimeVersion $kwokVersion }}
  kernelVersion: {{ or $nodeInfo.kernelVersion $kwokVersion }}
  kubeProxyVersion: {{ or $nodeInfo.kubeProxyVersion $kwokVersion }}
  kubeletVersion: {{ or $nodeInfo.kubeletVersion $kwokVersion }}
  machineID: {{ or $nodeInfo.machineID `""` }}
  operatingSystem: {{ or $nodeInfo.operatingSystem "linux" }}
  osImage: {{ or $nodeInfo.osImage `""` }}
  systemUUID: {{ or $nodeInfo.systemUUID `""` }}
phase: Running
"""

# Keeps the Ready condition fresh; together with kwok's node leases it stops the node-lifecycle
# controller from marking the fake nodes NotReady and evicting their pods.
_NODE_HEARTBEAT = """\
{{ $now := Now }}
{{ $lastTransitionTime := or .metadata.creationTimestamp $now }}
conditions:
{{ range NodeConditions }}
- lastHeartbeatTime: {{ $now | Quote }}
  lastTransitionTime: {{ $lastTransitionTime | Quote }}
  message: {{ .message | Quote }}
  reason: {{ .reason | Quote }}
  status: {{ .status | Quote }}
  type: {{ .type | Quote }}
{{ end }}
"""

# Containers started, not ready: the model server is loading.
_POD_START = """\
{{ $now := Now }}
conditions:
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: PodReadyToStartContainers
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: Initialized
- lastTransitionTime: {{ $now | Quote }}
  status: "False"
  reason: ContainersNotReady
  type: ContainersReady
- lastTransitionTime: {{ $now | Quote }}
  status: "False"
  reason: ContainersNotReady
  type: Ready
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: false
  started: true
  restartCount: 0
  state:
    running:
      startedAt: {{ $now | Quote }}
{{ end }}
initContainerStatuses:
{{ range .spec.initContainers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: true
  restartCount: 0
  state:
    terminated:
      exitCode: 0
      finishedAt: {{ $now | Quote }}
      reason: Completed
      startedAt: {{ $now | Quote }}
{{ end }}
{{ $hostIPs := NodeIPsWith .spec.nodeName }}
{{ with $hostIPs }}
hostIP: {{ index . 0 | Quote }}
hostIPs:
{{ range . }}
- ip: {{ . | Quote }}
{{ end }}
{{ end }}
{{ $podIPs := PodIPsWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) \
( or .metadata.name "" ) ( or .metadata.namespace "" ) }}
{{ with $podIPs }}
podIP: {{ index . 0 | Quote }}
podIPs:
{{ range . }}
- ip: {{ . | Quote }}
{{ end }}
{{ end }}
phase: Running
startTime: {{ $now | Quote }}
"""

# The model has loaded. startedAt is carried over from the start stage. kwok sends a strategic
# merge patch, which merges conditions by type: the nulls remove the "not ready" reason.
_POD_READY = """\
{{ $now := Now }}
{{ $root := . }}
conditions:
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  reason: null
  type: ContainersReady
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  reason: null
  type: Ready
{{ range .spec.readinessGates }}
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: {{ .conditionType | Quote }}
{{ end }}
containerStatuses:
{{ range $index, $item := .spec.containers }}
{{ $origin := index $root.status.containerStatuses $index }}
- image: {{ $item.image | Quote }}
  name: {{ $item.name | Quote }}
  ready: true
  started: true
  restartCount: 0
  state:
    running:
      startedAt: {{ $origin.state.running.startedAt | Quote }}
{{ end }}
"""

_POD_COMPLETE = """\
{{ $now := Now }}
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: false
  restartCount: 0
  started: false
  state:
    terminated:
      exitCode: 0
      finishedAt: {{ $now | Quote }}
      reason: Completed
      startedAt: {{ $now | Quote }}
{{ end }}
phase: Succeeded
"""


def _expr(key: str, operator: str, *values: str) -> dict[str, Any]:
    out: dict[str, Any] = {"key": key, "operator": operator}
    if values:
        out["values"] = list(values)
    return out


def _stage(
    name: str,
    kind: str,
    selector: list[dict[str, Any]],
    next_: dict[str, Any],
    delay: dict[str, Any] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "resourceRef": {"apiGroup": "v1", "kind": kind},
        "selector": {"matchExpressions": selector},
        "next": next_,
    }
    if delay:
        spec["delay"] = delay
    return {
        "apiVersion": "kwok.x-k8s.io/v1alpha1",
        "kind": "Stage",
        "metadata": {"name": name},
        "spec": spec,
    }


_NOT_DELETING = _expr(".metadata.deletionTimestamp", "DoesNotExist")
_READY_STATUS = '.status.conditions.[] | select( .type == "Ready" ) | .status'


def stages(pod_start_delay_s: float, pod_ready_delay_s: float) -> list[dict[str, Any]]:
    """kwok Stage objects for the fake nodes and the pods scheduled on them."""
    ready_delay: dict[str, Any] = {
        "durationMilliseconds": round(pod_ready_delay_s * 1000),
        "durationFrom": {"expressionFrom": f'.metadata.annotations["{READY_DELAY_ANNOTATION}"]'},
    }
    start_delay = (
        {"durationMilliseconds": round(pod_start_delay_s * 1000)} if pod_start_delay_s else None
    )
    return [
        _stage(
            "node-initialize",
            "Node",
            [_expr(_READY_STATUS, "NotIn", "True")],
            {"statusTemplate": _NODE_INITIALIZE},
        ),
        _stage(
            "node-heartbeat-with-lease",
            "Node",
            [_expr(".status.phase", "In", "Running"), _expr(_READY_STATUS, "In", "True")],
            {"statusTemplate": _NODE_HEARTBEAT},
            # kwok renews the node Lease on its own; this only refreshes the conditions now and
            # then, as kubelet does (kubelet: every 5 min unless something changed).
            {"durationMilliseconds": 60_000, "jitterDurationMilliseconds": 90_000},
        ),
        _stage(
            "pod-start",
            "Pod",
            [_NOT_DELETING, _expr(".status.podIP", "DoesNotExist")],
            {
                "event": {"type": "Normal", "reason": "Started", "message": "Started container"},
                "statusTemplate": _POD_START,
            },
            start_delay,
        ),
        _stage(
            "pod-ready",
            "Pod",
            [
                _NOT_DELETING,
                _expr(".status.phase", "In", "Running"),
                _expr(".status.podIP", "Exists"),
                _expr(_READY_STATUS, "NotIn", "True"),
                # Job pods never turn ready; they complete (below).
                _expr(".metadata.ownerReferences.[].kind", "NotIn", "Job"),
            ],
            {"statusTemplate": _POD_READY},
            ready_delay,
        ),
        _stage(
            "pod-complete",
            "Pod",
            [
                _NOT_DELETING,
                _expr(".status.phase", "In", "Running"),
                _expr(".metadata.ownerReferences.[].kind", "In", "Job"),
            ],
            {"statusTemplate": _POD_COMPLETE},
        ),
        # Without a kubelet nothing would ever finish a graceful pod deletion: the pod would
        # stay Terminating forever and Deployments could never roll.
        _stage(
            "pod-delete",
            "Pod",
            [_expr(".metadata.deletionTimestamp", "Exists")],
            {"delete": True},
        ),
    ]


def stages_yaml(pod_start_delay_s: float, pod_ready_delay_s: float) -> str:
    return yaml.safe_dump_all(stages(pod_start_delay_s, pod_ready_delay_s), sort_keys=False)


def gpu_node(
    name: str,
    gpus: int,
    product: str = DEFAULT_GPU_PRODUCT,
    *,
    internal_ip: str | None = None,
    cpu: str = "96",
    memory: str = "1024Gi",
    max_pods: int = 110,
    labels: dict[str, str] | None = None,
    taints: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """A fake Node with GPU capacity, as the NVIDIA device plugin and GFD would report it.

    The status is set on create (the Node API keeps it), and kwok's node-initialize stage keeps
    the given capacity and allocatable.
    """
    resources = {"cpu": cpu, "memory": memory, "pods": str(max_pods), GPU_RESOURCE: str(gpus)}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {
                KWOK_NODE_ANNOTATION: "fake",
                "node.alpha.kubernetes.io/ttl": "0",
            },
            "labels": {
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/os": "linux",
                "kubernetes.io/hostname": name,
                "type": "kwok",
                GPU_PRODUCT_LABEL: product,
                GPU_COUNT_LABEL: str(gpus),
                **(labels or {}),
            },
        },
        "spec": {"taints": taints or []},
        "status": {
            "capacity": dict(resources),
            "allocatable": dict(resources),
            # kwok gives each pod its node's first address as hostIP. A made-up address,
            # never connected to: only shown, like the 10.x pod IPs.
            "addresses": [
                *([{"type": "InternalIP", "address": internal_ip}] if internal_ip else []),
                {"type": "Hostname", "address": name},
            ],
        },
    }
