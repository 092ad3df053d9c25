"""Server-side apply of child objects: only when something differs, only to what we own.

An unchanged resync must write nothing, so each child is compared with the live object first
and applied only when a field we manage differs (someone's drift is put back the same way).
A same-named object that another owner controls is never touched.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import NotFoundError, ResourceNotFoundError

FIELD_MANAGER = "slotune"
# Co-owns spec.replicas when slotune stops applying it (scaling.mode auto -> external).
HANDOVER_MANAGER = "slotune-handover"
log = logging.getLogger(__name__)


def is_subset(desired: Any, live: Any) -> bool:
    """True when every field of `desired` has the same value in `live`.

    Lists compare item by item (the apiserver keeps their order); extra fields in `live` are
    defaults or other managers' and do not count as differences.
    """
    if isinstance(desired, Mapping):
        return isinstance(live, Mapping) and all(
            key in live and is_subset(value, live[key]) for key, value in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(live, list)
            and len(desired) == len(live)
            and all(is_subset(d, lv) for d, lv in zip(desired, live, strict=True))
        )
    return bool(desired == live)


def replicas_handover(child: Mapping[str, Any], live: Mapping[str, Any]) -> dict[str, Any] | None:
    """An apply body that keeps a Deployment's replica count when slotune stops applying it.

    Server-side apply removes a field its last owner stops sending, and the Deployment then
    defaults to 1 replica: switching `scaling.mode` to external before the HPA first scaled
    would drop a serving fleet to one pod. Kubernetes' documented handover is to apply the field
    under another manager first (shared ownership), so it survives our manager letting go. None
    when not needed: the child still sets replicas, or slotune's apply does not own them.
    """
    if child.get("kind") != "Deployment" or "replicas" in (child.get("spec") or {}):
        return None
    meta = live.get("metadata") or {}
    ours = any(
        entry.get("manager") == FIELD_MANAGER
        and entry.get("operation") == "Apply"
        and "f:replicas" in ((entry.get("fieldsV1") or {}).get("f:spec") or {})
        for entry in meta.get("managedFields") or []
    )
    replicas = (live.get("spec") or {}).get("replicas")
    if not ours or replicas is None:
        return None
    return {
        "apiVersion": child["apiVersion"],
        "kind": "Deployment",
        "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace")},
        "spec": {"replicas": replicas},
    }


class ChildConflict(Exception):
    """A child's name is taken by an object this LLMService does not control."""


@dataclass
class ApplyResult:
    applied: list[str]
    skipped_kinds: list[str]


def _controlled_by(live: Mapping[str, Any], uid: str) -> bool:
    return any(
        ref.get("controller") and ref.get("uid") == uid
        for ref in live.get("metadata", {}).get("ownerReferences") or []
    )


class Resources:
    """Thread-safe, cached lookup of API resources.

    The kubernetes client's discoverer is not thread-safe: two Kopf handler threads looking up
    at once corrupted its cache (KeyError 'resources' in discovery.parse_api_groups). It also
    re-discovers every API group whenever a lookup misses, which a kind that is not served
    (PodMonitor without the Prometheus operator) would cause on every resync. So lookups go
    through one lock, and misses are remembered for `missing_ttl_s`.
    """

    def __init__(self, client: DynamicClient, missing_ttl_s: float = 300.0) -> None:
        self.client = client
        self.missing_ttl_s = missing_ttl_s
        self._found: dict[tuple[str, str], Any] = {}
        self._missing: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def get(self, api_version: str, kind: str) -> Any | None:
        key = (api_version, kind)
        with self._lock:
            if key in self._found:
                return self._found[key]
            missed = self._missing.get(key)
            if missed is not None and time.monotonic() - missed < self.missing_ttl_s:
                return None
            try:
                found = self.client.resources.get(api_version=api_version, kind=kind)
            except ResourceNotFoundError:
                log.warning("%s (%s) is not served by this cluster: skipped", kind, api_version)
                self._missing[key] = time.monotonic()
                return None
            self._found[key] = found
            return found


class Applier:
    """Applies rendered children through one dynamic client."""

    def __init__(self, client: DynamicClient) -> None:
        self.client = client
        self.resources = Resources(client)

    def apply(self, children: list[dict[str, Any]], owner_uid: str) -> ApplyResult:
        result = ApplyResult([], [])
        for child in children:
            kind, meta = child["kind"], child["metadata"]
            api = self.resources.get(child["apiVersion"], kind)
            if api is None:
                # E.g. PodMonitor without the Prometheus operator.
                result.skipped_kinds.append(kind)
                continue
            try:
                live = api.get(name=meta["name"], namespace=meta["namespace"]).to_dict()
            except NotFoundError:
                live = None
            if live is not None:
                if not _controlled_by(live, owner_uid):
                    raise ChildConflict(
                        f"{kind} {meta['namespace']}/{meta['name']} exists and is not controlled "
                        "by this LLMService; rename the LLMService or remove that object"
                    )
                if is_subset(child, live):
                    continue
                handover = replicas_handover(child, live)
                if handover is not None:
                    self.client.server_side_apply(
                        api,
                        body=handover,
                        name=meta["name"],
                        namespace=meta["namespace"],
                        field_manager=HANDOVER_MANAGER,
                        force_conflicts=False,
                    )
                    log.info(
                        "%s/%s: replicas handed over, kept at %s",
                        kind,
                        meta["name"],
                        handover["spec"]["replicas"],
                    )
            self.client.server_side_apply(
                api,
                body=child,
                name=meta["name"],
                namespace=meta["namespace"],
                field_manager=FIELD_MANAGER,
                force_conflicts=True,
            )
            result.applied.append(f"{kind}/{meta['name']}")
        return result
