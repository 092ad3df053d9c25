"""Server-side apply of child objects: only when something differs, only to what we own.

An unchanged resync must write nothing, so each child is compared with the live object first
and applied only when a field we manage differs (someone's drift is put back the same way).
A same-named object that another owner controls is never touched.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import NotFoundError, ResourceNotFoundError

FIELD_MANAGER = "slotune"
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


class Applier:
    """Applies rendered children through one dynamic client (its API discovery is cached)."""

    def __init__(self, client: DynamicClient) -> None:
        self.client = client
        self._missing_kinds: set[str] = set()

    def apply(self, children: list[dict[str, Any]], owner_uid: str) -> ApplyResult:
        result = ApplyResult([], [])
        for child in children:
            kind, meta = child["kind"], child["metadata"]
            try:
                api = self.client.resources.get(api_version=child["apiVersion"], kind=kind)
            except ResourceNotFoundError:
                # E.g. PodMonitor without the Prometheus operator: skip, say so once.
                if kind not in self._missing_kinds:
                    log.warning(
                        "%s (%s) is not served by this cluster: skipped", kind, child["apiVersion"]
                    )
                    self._missing_kinds.add(kind)
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
