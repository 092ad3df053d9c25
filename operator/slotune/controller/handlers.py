"""Kopf handlers: thin. Parse, call `reconcile`, write the status that changed, post Events.

Run with `slotune run` or `kopf run -m slotune.controller.handlers`.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from typing import Any

import kopf
import kubernetes
import urllib3
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient

from slotune.api.durations import parse_duration
from slotune.api.resource import GROUP, PLURAL, VERSION
from slotune.controller import telemetry
from slotune.controller.apply import Applier
from slotune.controller.config import OperatorConfig
from slotune.controller.reconcile import Tuner, reconcile
from slotune.metrics.collector import MetricsCollector
from slotune.policy.slotune import SlotunePolicy
from slotune.render.alerts import sped_up_burn_rates

CONFIG = OperatorConfig.from_env()
PREFIX = "slotune.dev"
log = logging.getLogger(__name__)


def _client() -> DynamicClient:
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    return DynamicClient(kubernetes.client.ApiClient())


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Kopf's bookkeeping lives under our prefix, in annotations: nothing in status but ours.
    settings.persistence.finalizer = f"{PREFIX}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=PREFIX, key="last-handled-configuration"
    )
    # Only warnings become Events automatically; transitions and decisions are posted explicitly.
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    # The resync timer puts Kopf's finalizer on every LLMService, removed once the timer stops.
    # A deletion that lands while a resync runs finds the timer busy; Kopf then looks again
    # only after `cancellation_polling` (60 s by default), so the LLMService and everything it
    # owns lingered a minute. Wait for the running resync instead (it takes well under a
    # second), and look again soon if it is slower than that.
    settings.background.instant_exit_timeout = 5.0
    settings.background.cancellation_polling = 2.0
    memo.client = _client()
    memo.applier = Applier(memo.client)
    collector = MetricsCollector(on_query_error=telemetry.count_query_error)
    memo.tuner = Tuner(collector, SlotunePolicy(), CONFIG.prometheus_url)
    memo.burn_rates = sped_up_burn_rates(CONFIG.alert_speedup)
    if CONFIG.alert_speedup != 1:
        log.warning(
            "SLO alert windows and `for` durations are %gx shorter than the SRE workbook's "
            "(%s): for tests and demos only",
            CONFIG.alert_speedup,
            ", ".join(f"{t.long_window}/{t.short_window} for {t.for_}" for t in memo.burn_rates),
        )
    # When each object was last tuned, in this process. Not persisted: after a restart the
    # first cycle comes at once, and the policy's own memory (in status) keeps its cooldowns.
    memo.last_tuned = {}


def _tuning_due(body: kopf.Body, memo: kopf.Memo, now: datetime) -> bool:
    key = (body.get("metadata", {}).get("namespace"), body.get("metadata", {}).get("name"))
    try:
        interval = parse_duration(body.get("spec", {}).get("tuning", {}).get("interval", "30s"))
    except ValueError:
        return False
    last = memo.last_tuned.get(key)
    if last is not None and (now - last).total_seconds() < interval:
        return False
    memo.last_tuned[key] = now
    return True


@telemetry.timed_reconcile
def _sync(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo) -> None:
    now = datetime.now(UTC)
    try:
        outcome = reconcile(
            body,
            memo.applier,
            now,
            memo.tuner,
            _tuning_due(body, memo, now),
            burn_rates=memo.burn_rates,
        )
    except (ApiException, urllib3.exceptions.HTTPError) as error:
        # The apiserver hiccuped (or RBAC is missing): retry later, never crash the operator.
        reason = getattr(error, "reason", None) or type(error).__name__
        raise kopf.TemporaryError(f"Kubernetes API error: {reason}", delay=10) from error
    telemetry.observe_outcome(body, outcome.status_patch, outcome.applied)
    for key, value in outcome.status_patch.items():
        patch.status[key] = value
    for type_, reason, message in outcome.events:
        kopf.event(body, type=type_, reason=reason, message=message)


@kopf.on.startup()
def serve_metrics(**_: Any) -> None:
    # Only when SLOTUNE_METRICS_PORT is set (the chart sets it): a local run opens no port.
    telemetry.serve_from_env(os.environ)


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
def reconcile_llmservice(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    _sync(body, patch, memo)


@kopf.timer(GROUP, VERSION, PLURAL, interval=CONFIG.resync_seconds, idle=None)
def resync_llmservice(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    """Refresh the status and put back drift, writing only what changed."""
    _sync(body, patch, memo)
