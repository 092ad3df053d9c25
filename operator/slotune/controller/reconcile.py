"""One reconcile of one LLMService: validate, render, apply what differs, compute the status.

Kopf-free so it can be called from any handler (change, resume, timer); the caller passes the
clock and receives the status fields that changed plus the Events to post.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kubernetes.dynamic.exceptions import NotFoundError
from pydantic import ValidationError

from slotune.api.resource import LLMService, ObjectMeta, SpecError, parse_llmservice
from slotune.api.spec import LLMServiceSpec
from slotune.api.status import Knobs
from slotune.controller.apply import Applier, ChildConflict, Resources
from slotune.controller.conditions import ConditionState, Observation, evaluate, merge
from slotune.controller.tuning import metrics_condition, observed_status, slo_condition, tune
from slotune.controller.workload import summarize
from slotune.metrics.collector import MetricsCollector
from slotune.metrics.snapshot import to_snapshot
from slotune.policy.types import Policy, PolicySpec
from slotune.render.alerts import WORKBOOK_BURN_RATES, BurnRateAlert, slo_alerts
from slotune.render.render import PAUSED_ANNOTATION, initial_knobs, render_children, selector_labels


@dataclass
class Outcome:
    """What the caller should write: changed status fields, and Events (type, reason, message)."""

    status_patch: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[str, str, str]] = field(default_factory=list)
    applied: list[str] = field(default_factory=list)


def is_paused(body: Mapping[str, Any]) -> bool:
    annotations = body.get("metadata", {}).get("annotations") or {}
    return str(annotations.get(PAUSED_ANNOTATION, "")).lower() == "true"


def current_knobs(spec: LLMServiceSpec, status: Mapping[str, Any]) -> Knobs:
    """The knobs last set (status.tuned), held inside the spec's current bounds."""
    start = initial_knobs(spec)
    try:
        tuned = Knobs.model_validate(status.get("tuned") or start.model_dump(by_alias=True))
    except ValidationError:
        tuned = start
    seqs, tokens, scaling = (
        spec.batching.max_num_seqs,
        spec.batching.max_batched_tokens,
        spec.scaling,
    )
    return Knobs(
        replicas=min(max(tuned.replicas, scaling.min_replicas), scaling.max_replicas),
        max_num_seqs=min(max(tuned.max_num_seqs, seqs.min), seqs.max),
        max_batched_tokens=min(max(tuned.max_batched_tokens, tokens.min), tokens.max),
    )


def _parse(body: Mapping[str, Any]) -> tuple[LLMService | None, str | None]:
    # The status is ours and may hold fields of newer slotune versions: validate the rest only.
    obj = {k: v for k, v in body.items() if k != "status"}
    try:
        return parse_llmservice(obj), None
    except SpecError as error:
        return None, str(error)


def _event_type(state: ConditionState) -> str:
    healthy = {
        "Ready": "True",
        "WorkloadReady": "True",
        "MetricsAvailable": "True",
        "SLOMet": "True",
        "CapacityLimited": "False",
    }
    return "Normal" if healthy[state.type] == state.status else "Warning"


@dataclass(frozen=True)
class Tuner:
    """What a tuning cycle needs: where metrics come from and which policy decides."""

    collector: MetricsCollector
    policy: Policy
    default_prometheus_url: str


def reconcile(
    body: Mapping[str, Any],
    applier: Applier,
    now: datetime,
    tuner: Tuner | None = None,
    tuning_due: bool = False,
    *,
    burn_rates: Sequence[BurnRateAlert] = WORKBOOK_BURN_RATES,
) -> Outcome:
    """One pass over one LLMService. With a `tuner`, metrics are read and, when `tuning_due`,
    the policy decides before the children are applied, so its knobs land in the same pass.
    `burn_rates` are the SLO alert tiers (shortened only for tests and demos)."""
    outcome = Outcome()
    status: Mapping[str, Any] = body.get("status") or {}
    meta = body.get("metadata", {})
    paused = is_paused(body)
    service, spec_error = _parse(body)
    observation = Observation(spec_error=spec_error, paused=paused)
    fields: dict[str, Any] = {"observedGeneration": int(meta.get("generation") or 0)}

    if service is not None:
        spec = service.spec
        knobs = current_knobs(spec, status)
        workload = summarize(
            _get(applier.resources, "apps/v1", "Deployment", service.metadata),
            _pods(applier.resources, service),
            spec.resources.gpus_per_replica,
        )
        if spec.scaling.mode == "external" and workload.exists:
            # Replicas belong to an HPA or a person: report and reason about their count.
            knobs = knobs.model_copy(update={"replicas": workload.desired})
        metrics_state = slo_state = None
        if tuner is not None:
            reading = tuner.collector.read(
                spec.metrics.prometheus_url or tuner.default_prometheus_url,
                spec.engine.kind,
                spec.slo.window,
                now.timestamp(),
            )
            snapshot = None
            if reading.error is None:
                snapshot = to_snapshot(
                    reading.series.get((service.metadata.namespace, service.metadata.name)),
                    PolicySpec.from_spec(spec),
                    workload.ready,
                    workload.pending,
                    now.timestamp(),
                    workload.cold_start_s,
                )
            metrics_state = metrics_condition(reading, snapshot)
            slo_state = slo_condition(snapshot, PolicySpec.from_spec(spec))
            if snapshot is not None:
                fields["observed"] = observed_status(snapshot, now)
            if tuning_due and not paused and spec.tuning.mode != "off":
                tuned = tune(tuner.policy, spec, knobs, snapshot, status, now)
                knobs = tuned.knobs
                fields.update(tuned.status)
                outcome.events += tuned.events
        alerts = slo_alerts(service, burn_rates)
        fields["alertBuckets"] = alerts.status()
        conflict = None
        if not paused:
            try:
                children = render_children(service, knobs, alerts.rule_groups)
                result = applier.apply(children, service.metadata.uid)
                outcome.applied = result.applied
            except ChildConflict as error:
                conflict = str(error)
        observation = Observation(
            spec_error=None,
            conflict=conflict,
            workload=workload,
            paused=paused,
            metrics=metrics_state,
            slo=slo_state,
        )
        fields.update(
            replicas=workload.replicas,
            readyReplicas=workload.ready,
            pendingReplicas=workload.pending,
            gpus=workload.replicas * workload.gpus_per_replica,
            tuned=knobs.model_dump(by_alias=True),
        )
        if outcome.applied:
            outcome.events.append(("Normal", "Applied", "applied " + ", ".join(outcome.applied)))

    conditions, flipped = merge(
        status.get("conditions") or [], evaluate(observation), fields["observedGeneration"], now
    )
    fields["conditions"] = conditions
    outcome.status_patch = {k: v for k, v in fields.items() if status.get(k) != v}
    outcome.events += [
        (_event_type(s), s.reason, f"{s.type}={s.status}: {s.message}") for s in flipped
    ]
    return outcome


def _served(resources: Resources, api_version: str, kind: str) -> Any:
    api = resources.get(api_version, kind)
    if api is None:
        raise RuntimeError(f"the apiserver does not serve {kind} ({api_version})")
    return api


def _get(resources: Resources, api_version: str, kind: str, meta: ObjectMeta) -> Any:
    api = _served(resources, api_version, kind)
    try:
        return api.get(name=meta.name, namespace=meta.namespace).to_dict()
    except NotFoundError:
        return None


def _pods(resources: Resources, service: LLMService) -> list[Any]:
    api = _served(resources, "v1", "Pod")
    selector = ",".join(f"{k}={v}" for k, v in selector_labels(service).items())
    pods = api.get(namespace=service.metadata.namespace, label_selector=selector).to_dict()
    return list(pods.get("items") or [])
