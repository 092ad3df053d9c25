"""The operator's own metrics, served on `/metrics` for the chart's ServiceMonitor.

Counters and histograms say how the operator works (reconciles, writes, decisions, query
errors); the per-LLMService gauges mirror each service's status so the Grafana dashboard and the
chart's operator alerts can read replicas, knobs and conditions without a Kubernetes exporter.

Per-service series come from a collector that forgets a service it has not seen for `ttl`
seconds: a deleted LLMService stops being reconciled, so its series disappear instead of
lingering (and alerting) until the operator restarts. No Kopf here, only prometheus-client.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

P = ParamSpec("P")
R = TypeVar("R")

RECONCILES = Counter(
    "slotune_reconcile",
    "Reconciles of LLMServices, by result (success, or error: retried later).",
    ["result"],
)
RECONCILE_SECONDS = Histogram(
    "slotune_reconcile_duration_seconds",
    "Time one reconcile took, by result.",
    ["result"],
    # A reconcile is a few API calls; the upper buckets catch a slow or throttled apiserver.
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
DECISIONS = Counter(
    "slotune_decisions",
    "Tuning decisions, by LLMService, action, reason and whether they were applied.",
    ["namespace", "llmservice", "action", "reason", "applied"],
)
QUERY_ERRORS = Counter(
    "slotune_prometheus_query_errors",
    "Prometheus queries that failed (unreachable, HTTP error, unparsable answer), by query.",
    ["query"],
)
APPLIED_WRITES = Counter(
    "slotune_applied_writes",
    "Child objects written with server-side apply (drift repairs included), by kind.",
    ["kind"],
)

DEFAULT_SERIES_TTL_SECONDS = 300.0


@dataclass(frozen=True)
class ServiceState:
    """What the gauges show for one LLMService, taken from its (patched) status."""

    replicas: float | None
    ready_replicas: float | None
    tuned_replicas: float | None
    max_num_seqs: float | None
    max_batched_tokens: float | None
    conditions: tuple[tuple[str, str], ...]
    """(type, status) of every condition."""


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def service_state(status: Mapping[str, Any]) -> ServiceState:
    tuned = status.get("tuned") or {}
    return ServiceState(
        replicas=_number(status.get("replicas")),
        ready_replicas=_number(status.get("readyReplicas")),
        tuned_replicas=_number(tuned.get("replicas")),
        max_num_seqs=_number(tuned.get("maxNumSeqs")),
        max_batched_tokens=_number(tuned.get("maxBatchedTokens")),
        conditions=tuple(
            (str(c.get("type")), str(c.get("status")))
            for c in status.get("conditions") or []
            if isinstance(c, Mapping)
        ),
    )


class ServiceGauges(Collector):
    """Per-LLMService gauges, dropped `ttl` seconds after the service was last seen."""

    _GAUGES: tuple[tuple[str, str, str], ...] = (
        ("replicas", "slotune_llmservice_replicas", "Replicas the Deployment has."),
        ("ready_replicas", "slotune_llmservice_ready_replicas", "Replicas ready to serve."),
        ("tuned_replicas", "slotune_llmservice_tuned_replicas", "Replica count slotune set."),
        ("max_num_seqs", "slotune_llmservice_max_num_seqs", "Engine sequence limit (batch)."),
        (
            "max_batched_tokens",
            "slotune_llmservice_max_batched_tokens",
            "Engine token budget per step.",
        ),
    )

    def __init__(
        self,
        ttl: float = DEFAULT_SERIES_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._states: dict[tuple[str, str], tuple[float, ServiceState]] = {}

    def update(self, namespace: str, name: str, state: ServiceState) -> None:
        with self._lock:
            self._states[(namespace, name)] = (self._clock(), state)

    def _fresh(self) -> list[tuple[tuple[str, str], ServiceState]]:
        now = self._clock()
        with self._lock:
            for key in [k for k, (seen, _) in self._states.items() if now - seen > self.ttl]:
                del self._states[key]
            return [(key, state) for key, (_, state) in sorted(self._states.items())]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        fresh = self._fresh()
        labels = ["namespace", "llmservice"]
        for attribute, name, documentation in self._GAUGES:
            family = GaugeMetricFamily(name, documentation, labels=labels)
            for key, state in fresh:
                value = getattr(state, attribute)
                if value is not None:
                    family.add_metric(list(key), value)
            yield family
        conditions = GaugeMetricFamily(
            "slotune_llmservice_condition",
            "1 for the current status (True, False, Unknown) of each condition type.",
            labels=[*labels, "type", "status"],
        )
        for key, state in fresh:
            for type_, status in state.conditions:
                conditions.add_metric([*key, type_, status], 1.0)
        yield conditions


SERVICES = ServiceGauges()
REGISTRY.register(SERVICES)


def timed_reconcile(function: Callable[P, R]) -> Callable[P, R]:
    """Count and time each call of a reconcile function; an exception counts as an error."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        started = time.perf_counter()
        result = "error"
        try:
            value = function(*args, **kwargs)
            result = "success"
            return value
        finally:
            RECONCILES.labels(result).inc()
            RECONCILE_SECONDS.labels(result).observe(time.perf_counter() - started)

    return wrapper


def observe_outcome(
    body: Mapping[str, Any], status_patch: Mapping[str, Any], applied: Sequence[str]
) -> None:
    """Record what one reconcile did: writes, a new decision, and the service's gauges."""
    meta = body.get("metadata") or {}
    namespace, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
    for child in applied:
        APPLIED_WRITES.labels(child.split("/", 1)[0]).inc()
    decision = status_patch.get("lastDecision")
    if isinstance(decision, Mapping):
        # A decision reaches the status exactly once (it carries its time), so this counts
        # each decision once however often the service is resynced.
        DECISIONS.labels(
            namespace,
            name,
            str(decision.get("action", "")),
            str(decision.get("reason", "")),
            str(bool(decision.get("applied"))).lower(),
        ).inc()
    status = {**(body.get("status") or {}), **status_patch}
    SERVICES.update(namespace, name, service_state(status))


def count_query_error(query: str) -> None:
    """For the metrics layer: one failed Prometheus query, named by its template."""
    QUERY_ERRORS.labels(query).inc()


def start_metrics_server(
    port: int, address: str = "0.0.0.0", registry: CollectorRegistry = REGISTRY
) -> None:
    """Serve `/metrics` from a daemon thread; it ends with the process."""
    # The `_created` twin of every counter doubles the series and no dashboard or alert reads it.
    disable_created_metrics()
    start_http_server(port, addr=address, registry=registry)


def serve_from_env(environ: Mapping[str, str]) -> bool:
    """Start the server when SLOTUNE_METRICS_PORT is set (SLOTUNE_METRICS_ADDRESS: 0.0.0.0)."""
    port = environ.get("SLOTUNE_METRICS_PORT", "").strip()
    if not port:
        return False
    start_metrics_server(int(port), environ.get("SLOTUNE_METRICS_ADDRESS", "0.0.0.0"))
    return True
