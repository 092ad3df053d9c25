"""(LLMService, tuned knobs) -> the child manifests slotune owns. Pure: no cluster, no clock.

Templates hold the shape of each object; this module computes the values. User strings reach
the templates only as data through the `j` filter (JSON, which YAML reads back verbatim), and
the output is parsed and checked, so a spec can never inject YAML or template code.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import jinja2
import yaml

from slotune import __version__
from slotune.api.resource import API_VERSION, KIND, LLMService
from slotune.api.spec import GPU_PRODUCTS, LLMServiceSpec
from slotune.api.status import Knobs
from slotune.policy.types import ROLLING_UPDATE_MAX_SURGE, surge_blocked
from slotune.render.engines import adapter_for

Manifest = dict[str, Any]

LLMSERVICE_LABEL = "slotune.dev/llmservice"
PAUSED_ANNOTATION = "slotune.dev/paused"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
SCRAPE_INTERVAL = "15s"
MODEL_CACHE_DIR = "/models-cache"

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("slotune.render", "templates"),
    undefined=jinja2.StrictUndefined,
    autoescape=False,
    keep_trailing_newline=True,
)
_ENV.filters["j"] = lambda value: json.dumps(value, sort_keys=False)


class RenderError(ValueError):
    """A template produced something that is not the manifest it should be (a bug, not input)."""


def _rollout(spec: LLMServiceSpec, knobs: Knobs) -> dict[str, int | str]:
    """The rolling update's surge: a quarter of the replicas, or none (one pod replaced in
    place) when the GPU budget has no room for even one more replica."""
    budget, gpus = spec.scaling.gpu_budget, spec.resources.gpus_per_replica
    if spec.scaling.mode == "auto" and surge_blocked(knobs.replicas, gpus, budget):
        return {"max_surge": 0, "max_unavailable": 1}
    return {"max_surge": f"{ROLLING_UPDATE_MAX_SURGE:.0%}", "max_unavailable": 0}


def initial_knobs(spec: LLMServiceSpec) -> Knobs:
    """The knobs before any tuning: the lowest replica count and the initial batch values."""
    return Knobs(
        replicas=spec.scaling.min_replicas,
        max_num_seqs=spec.batching.max_num_seqs.initial,
        max_batched_tokens=spec.batching.max_batched_tokens.initial,
    )


def selector_labels(service: LLMService) -> dict[str, str]:
    """Labels that pick the server pods. Stable for the object's life: selectors are immutable."""
    return {LLMSERVICE_LABEL: service.metadata.name, "app.kubernetes.io/component": "model-server"}


def common_labels(service: LLMService, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": service.spec.engine.kind,
        "app.kubernetes.io/instance": service.metadata.name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "slotune",
        "app.kubernetes.io/managed-by": "slotune",
        "app.kubernetes.io/version": __version__,
        LLMSERVICE_LABEL: service.metadata.name,
    }


def owner_references(service: LLMService) -> list[dict[str, Any]]:
    """The controller reference that lets the garbage collector delete children with the owner.

    Empty when the object has no uid yet (`slotune render` of a file): a reference with an
    empty uid would be rejected by the apiserver, so it is left for the operator to add.
    """
    if not service.metadata.uid:
        return []
    return [
        {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": service.metadata.name,
            "uid": service.metadata.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def _model_location(spec: LLMServiceSpec) -> tuple[str, list[Manifest], list[Manifest]]:
    """The path or id the engine loads, plus the volumes and mounts that provide it."""
    source = spec.model.source or f"hf://{spec.model.name}"
    scheme, _, rest = source.partition("://")
    if scheme == "pvc":
        claim, _, subpath = rest.partition("/")
        volume = {"name": "model", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        mount = {"name": "model", "mountPath": "/models", "readOnly": True}
        return f"/models/{subpath}".rstrip("/"), [volume], [mount]
    cache = {"name": "model-cache", "emptyDir": {}}
    mount = {"name": "model-cache", "mountPath": MODEL_CACHE_DIR}
    return rest, [cache], [mount]


def _env(spec: LLMServiceSpec) -> list[Manifest]:
    env: list[Manifest] = []
    if not (spec.model.source or "hf://").startswith("pvc://"):
        env.append({"name": "HF_HOME", "value": MODEL_CACHE_DIR})
    token = spec.model.hub_token_secret
    if token is not None:
        env.append(
            {
                "name": "HF_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": token.name, "key": token.key}},
            }
        )
    for var in spec.engine.env:
        env.append(var.model_dump(by_alias=True, exclude_none=True))
    return env


def _resources(spec: LLMServiceSpec) -> Manifest:
    gpus = str(spec.resources.gpus_per_replica)
    requests: dict[str, str] = {GPU_RESOURCE: gpus}
    limits: dict[str, str] = {GPU_RESOURCE: gpus}
    if spec.resources.cpu is not None:
        requests["cpu"] = spec.resources.cpu
    if spec.resources.memory is not None:
        requests["memory"] = spec.resources.memory
        limits["memory"] = spec.resources.memory
    return {"requests": requests, "limits": limits}


def _placement(spec: LLMServiceSpec) -> tuple[dict[str, str], list[Manifest]]:
    node_selector = dict(spec.resources.node_selector)
    if spec.resources.gpu_type is not None:
        node_selector[GPU_PRODUCT_LABEL] = GPU_PRODUCTS[spec.resources.gpu_type]
    # GPU nodes are commonly tainted nvidia.com/gpu:NoSchedule so that only GPU work lands there.
    tolerations: list[Manifest] = [
        {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
    ]
    tolerations += [
        t.model_dump(by_alias=True, exclude_none=True) for t in spec.resources.tolerations
    ]
    return node_selector, tolerations


def _render(template: str, **values: Any) -> Manifest:
    text = _ENV.get_template(template).render(**values)
    try:
        manifest = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise RenderError(f"{template} rendered invalid YAML: {error}") from error
    if not isinstance(manifest, dict) or not manifest.get("kind") or not manifest.get("metadata"):
        raise RenderError(f"{template} did not render a Kubernetes object")
    return manifest


def render_children(
    service: LLMService,
    knobs: Knobs | None = None,
    rule_groups: Sequence[Manifest] = (),
) -> list[Manifest]:
    """Every child object of `service`, in apply order, for the given knobs.

    `knobs` defaults to the initial ones. With `scaling.mode: external` the Deployment carries
    no replica count, so server-side apply never claims the field an HPA writes. A
    PrometheusRule is rendered when `rule_groups` are given.
    """
    spec = service.spec
    knobs = knobs or initial_knobs(spec)
    adapter = adapter_for(spec)
    name, namespace = service.metadata.name, service.metadata.namespace
    owners = owner_references(service)
    selector = selector_labels(service)
    model_path, volumes, mounts = _model_location(spec)
    node_selector, tolerations = _placement(spec)
    shm = {
        "name": "dshm",
        "emptyDir": {"medium": "Memory", "sizeLimit": spec.resources.shared_memory},
    }
    server_labels = common_labels(service, "model-server")

    children = [
        _render(
            "deployment.yaml.j2",
            name=name,
            namespace=namespace,
            labels=server_labels,
            owner_references=owners,
            replicas=knobs.replicas if spec.scaling.mode == "auto" else None,
            **_rollout(spec, knobs),
            selector=selector,
            # No version label on pods: upgrading slotune must not restart every model server.
            pod_labels={
                **{k: v for k, v in server_labels.items() if k != "app.kubernetes.io/version"},
                **selector,
            },
            node_selector=node_selector,
            tolerations=tolerations,
            image=spec.engine.image or adapter.default_image,
            command=adapter.command(),
            args=adapter.args(spec, knobs, model_path),
            env=_env(spec),
            port=adapter.port,
            resources=_resources(spec),
            probes=adapter.probes,
            volume_mounts=[{"name": "dshm", "mountPath": "/dev/shm"}, *mounts],
            volumes=[shm, *volumes],
        ),
        _render(
            "service.yaml.j2",
            name=name,
            namespace=namespace,
            labels=common_labels(service, "service"),
            owner_references=owners,
            selector=selector,
            port=adapter.port,
        ),
        _render(
            "pdb.yaml.j2",
            name=name,
            namespace=namespace,
            labels=common_labels(service, "disruption-budget"),
            owner_references=owners,
            selector=selector,
        ),
        _render(
            "podmonitor.yaml.j2",
            name=name,
            namespace=namespace,
            labels=common_labels(service, "monitoring"),
            owner_references=owners,
            selector=selector,
            scrape_interval=SCRAPE_INTERVAL,
        ),
    ]
    if rule_groups:
        children.append(
            _render(
                "prometheusrule.yaml.j2",
                name=name,
                namespace=namespace,
                labels=common_labels(service, "alerting"),
                owner_references=owners,
                groups=list(rule_groups),
            )
        )
    return children


def to_yaml(manifests: Sequence[Manifest]) -> str:
    """Multi-document YAML, as `kubectl apply -f -` reads it."""
    return yaml.safe_dump_all(manifests, sort_keys=False, width=100)
