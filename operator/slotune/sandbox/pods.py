"""Pure: what the pod bridge reads from a Pod, and the emulator command line it makes of it."""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from slotune.render.render import LLMSERVICE_LABEL  # the label the operator puts on its pods
from slotune.sandbox.kwok import GPU_PRODUCT_LABEL, READY_DELAY_ANNOTATION

PROFILE_ANNOTATION = "sandbox.slotune.dev/model-profile"
SERVER_CONTAINER = "server"


@dataclass(frozen=True)
class PodView:
    namespace: str
    name: str
    uid: str
    llmservice: str
    phase: str
    ready: bool
    deleting: bool
    started_at: float | None  # epoch seconds the server container started
    command: tuple[str, ...]
    args: tuple[str, ...]
    gpu_product: str
    annotations: Mapping[str, str]

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def service_key(self) -> tuple[str, str]:
        return (self.namespace, self.llmservice)

    @property
    def serving(self) -> bool:
        """Its containers run (kwok's start stage has run) and it is not going away."""
        return self.phase == "Running" and self.started_at is not None and not self.deleting

    @property
    def is_vllm(self) -> bool:
        return self.command[:2] == ("vllm", "serve")


def _epoch(stamp: Any) -> float | None:
    if stamp is None:
        return None
    if isinstance(stamp, datetime):
        return stamp.timestamp()
    return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()


def pod_view(pod: Mapping[str, Any]) -> PodView | None:
    """A Pod (as JSON, camelCase) of an LLMService, or None if it is not one."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    llmservice = labels.get(LLMSERVICE_LABEL)
    if not llmservice:
        return None
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    containers = spec.get("containers") or []
    server = next((c for c in containers if c.get("name") == SERVER_CONTAINER), None)
    if server is None and containers:
        server = containers[0]
    server = server or {}
    started = None
    for cs in status.get("containerStatuses") or []:
        if cs.get("name") == server.get("name"):
            started = _epoch(((cs.get("state") or {}).get("running") or {}).get("startedAt"))
    conditions = status.get("conditions") or []
    return PodView(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        llmservice=str(llmservice),
        phase=str(status.get("phase", "")),
        ready=any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions),
        deleting=meta.get("deletionTimestamp") is not None,
        started_at=started,
        command=tuple(server.get("command") or ()),
        args=tuple(server.get("args") or ()),
        gpu_product=str((spec.get("nodeSelector") or {}).get(GPU_PRODUCT_LABEL, "")),
        annotations=dict(meta.get("annotations") or {}),
    )


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def go_duration_s(text: str) -> float | None:
    """A Go duration such as ``30s`` or ``1m30s`` (what kwok reads from the annotation)."""
    parts = _DURATION.findall(text.strip())
    if not parts or "".join(v + u for v, u in parts) != text.strip():
        return None
    return sum(float(v) * _UNIT_S[u] for v, u in parts)


def ready_delay_s(view: PodView, default_s: float) -> float:
    override = view.annotations.get(READY_DELAY_ANNOTATION)
    parsed = go_duration_s(override) if override else None
    return default_s if parsed is None else parsed


def _flag_value(args: Sequence[str], flag: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def model_profile(view: PodView) -> str:
    """The simulator profile for the pod's model and GPU (an annotation may name one)."""
    named = view.annotations.get(PROFILE_ANNOTATION)
    if named:
        return named
    model = (view.args[0] if view.args and not view.args[0].startswith("-") else "").lower()
    if "70b" in model:
        fp8 = (_flag_value(view.args, "--quantization") or "") == "fp8" or "fp8" in model
        return "llama-3-70b-h100x4-fp8" if fp8 else "llama-3-70b-h100x4"
    if "a100" in view.gpu_product.lower():
        return "llama-3-8b-a100"
    return "llama-3-8b-h100"


def emulator_flags(parser: argparse.ArgumentParser) -> tuple[set[str], set[str]]:
    """The emulator's flags: (those taking a value, switches)."""
    valued: set[str] = set()
    switches: set[str] = set()
    for action in parser._actions:
        for option in action.option_strings:
            (switches if action.nargs == 0 else valued).add(option)
    return valued, switches


# Set by the bridge for every emulator; the pod's own values are dropped.
_OWN = ("--host", "--port", "--model-profile", "--startup-delay", "--stream-interval")


def translate_args(
    args: Sequence[str], valued: set[str], switches: set[str]
) -> tuple[list[str], list[str]]:
    """The pod's `vllm serve` args the emulator understands, and those it does not (dropped)."""
    kept: list[str] = []
    dropped: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("-"):
            kept.append(arg)  # the model
            i += 1
            continue
        flag, has_value, _ = arg.partition("=")
        if flag in _OWN:
            i += 1 if has_value or flag not in valued else 2
            continue
        if flag in switches:
            kept.append(arg)
            i += 1
        elif flag in valued:
            if has_value:
                kept.append(arg)
                i += 1
            else:
                kept.extend(args[i : i + 2])
                i += 2
        else:
            dropped.append(arg)
            # A value that follows an unknown flag is dropped with it.
            if not has_value and i + 1 < len(args) and not args[i + 1].startswith("-"):
                dropped.append(args[i + 1])
                i += 1
            i += 1
    return kept, dropped
