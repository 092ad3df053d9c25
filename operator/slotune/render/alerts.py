"""SLO recording rules and multi-window, multi-burn-rate alerts for one LLMService. Pure.

Each latency objective (TTFT, ITL, optional E2E) is an SLO of the form "`percentile`% of
requests within `target`", so its error budget is `1 - percentile/100` and the fraction of
requests over the target is the error rate. That fraction comes from the engine's histogram:
`1 - bucket{le=B} / count`, exact only when the target is a bucket boundary B. When it is
not, the alert counts against the nearest boundary *at or below* the target: requests between
the boundary and the target count as slow, so the alert is stricter than the SLO and may page
early, but a real burn is never missed. (Counting against the boundary above would hide every
slow request below it; interpolating inside the bucket would guess.) When the target is below
the smallest boundary, that boundary is the only choice and the alert is lenient. Either way
`AlertBucket` says which boundary is used and how far it is from the target, so the status can
tell the user; for vLLM, `--custom-histogram-buckets` in `engine.extraArgs` puts the target on a
boundary (SGLang: `--bucket-time-to-first-token` and friends), and is read here.

The alerts follow the Google SRE workbook (chapter "Alerting on SLOs"), for a 30-day SLO
period: page when 2% of the budget burns in 1 hour (14.4x, confirmed over 5 minutes) or 5% in
6 hours (6x, over 30 minutes); open a ticket when 10% burns in 3 days (1x, over 6 hours). The
short window makes an alert stop soon after the burn stops. A threshold above 100% (a 14.4x
burn of a budget over 6.9%, e.g. a p90 objective) is clamped to 100%: the alert then fires only
when every request is slow.

Series are selected by the `namespace` and `llmservice` labels the PodMonitor adds, so every
rule reads only this service's pods, and alert expressions select their own recording rules by
the same labels (recording rules of all services share names).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, Literal

from slotune.api.durations import format_duration
from slotune.api.resource import LLMService
from slotune.api.spec import LatencyTarget, LLMServiceSpec
from slotune.api.status import AlertBucket
from slotune.render.engines import adapter_for
from slotune.sim import vllm_metrics

Objective = Literal["ttft", "itl", "e2e"]
Manifest = dict[str, Any]

ALERT_PREFIX: Final = "SlotuneLLMService"
RULE_PREFIX: Final = "slotune:"
SLO_PERIOD_DAYS: Final = 30
RUNBOOK_BASE_URL: Final = "https://github.com/slotune/slotune/blob/main/docs/runbooks.md"

_TITLES: Final[Mapping[Objective, str]] = {"ttft": "TTFT", "itl": "ITL", "e2e": "E2E"}
_WHAT: Final[Mapping[Objective, str]] = {
    "ttft": "requests waited longer than {target} for their first token",
    # vLLM and SGLang observe ITL once per generated token, so this is a share of tokens.
    "itl": "generated tokens came more than {target} after the previous one",
    "e2e": "requests took longer than {target} end to end",
}


@dataclass(frozen=True)
class BurnRateAlert:
    """One tier: alert when both windows burn the budget `factor` times too fast."""

    severity: str
    long_window: str
    short_window: str
    factor: float
    for_: str


WORKBOOK_BURN_RATES: Final[tuple[BurnRateAlert, ...]] = (
    BurnRateAlert("critical", "1h", "5m", 14.4, "2m"),
    BurnRateAlert("critical", "6h", "30m", 6.0, "15m"),
    BurnRateAlert("warning", "3d", "6h", 1.0, "1h"),
)


def sped_up_burn_rates(
    speedup: float, tiers: Sequence[BurnRateAlert] = WORKBOOK_BURN_RATES
) -> tuple[BurnRateAlert, ...]:
    """`tiers` with every window and `for` divided by `speedup`, for tests and demos.

    The burn factors (so the thresholds) stay; only time runs faster: with 60, the first page
    reads 1m and 5s windows and fires after 2s. Durations round to whole seconds (1s at least).
    A short window must still hold a few scrapes or its `rate()` is empty and the alert never
    fires: 60 suits a scrape interval of 1-2 s. 1 returns the tiers unchanged.
    """
    if not math.isfinite(speedup) or speedup < 1:
        raise ValueError(f"the alert speedup must be a number >= 1, not {speedup!r}")
    if speedup == 1:
        return tuple(tiers)

    def faster(duration: str) -> str:
        return format_duration(max(1, round(window_seconds(duration) / speedup)))

    return tuple(
        BurnRateAlert(
            tier.severity,
            faster(tier.long_window),
            faster(tier.short_window),
            tier.factor,
            faster(tier.for_),
        )
        for tier in tiers
    )


# -- histogram buckets per engine ---------------------------------------------------------

# SGLang's defaults (python/sglang/srt/metrics/collector.py, TokenizerMetricsCollector).
SGLANG_TTFT_BUCKETS: Final[tuple[float, ...]] = (
    0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 20.0, 40.0, 60.0, 80.0, 100.0,
    200.0, 400.0,
)  # fmt: skip
SGLANG_ITL_BUCKETS: Final[tuple[float, ...]] = (
    0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.025, 0.03, 0.035, 0.04, 0.06, 0.08, 0.1,
    0.2, 0.4, 0.6, 0.8, 1.0, 2.0, 4.0, 6.0, 8.0,
)  # fmt: skip
SGLANG_E2E_BUCKETS: Final[tuple[float, ...]] = (
    0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 20.0, 40.0, 60.0, 80.0, 100.0,
    200.0, 400.0, 600.0, 1200.0, 1800.0, 2400.0,
)  # fmt: skip

_DEFAULT_BUCKETS: Final[Mapping[str, Mapping[Objective, tuple[float, ...]]]] = {
    "vllm": {
        "ttft": vllm_metrics.TTFT_BUCKETS,
        "itl": vllm_metrics.ITL_BUCKETS,
        "e2e": vllm_metrics.REQUEST_LATENCY_BUCKETS,
    },
    "sglang": {"ttft": SGLANG_TTFT_BUCKETS, "itl": SGLANG_ITL_BUCKETS, "e2e": SGLANG_E2E_BUCKETS},
}
# vLLM: one flag with a JSON object keyed by histogram; SGLang: one flag per histogram.
_VLLM_BUCKET_KEYS: Final[Mapping[Objective, str]] = {
    "ttft": "time_to_first_token",
    "itl": "inter_token_latency",
    "e2e": "e2e_request_latency",
}
_SGLANG_BUCKET_FLAGS: Final[Mapping[Objective, str]] = {
    "ttft": "--bucket-time-to-first-token",
    "itl": "--bucket-inter-token-latency",
    "e2e": "--bucket-e2e-request-latency",
}


def _flag_values(args: Sequence[str], flag: str) -> list[str] | None:
    """The values given to `flag` (as `--flag=v` or `--flag v1 v2 ...`); the last use wins."""
    found: list[str] | None = None
    for index, arg in enumerate(args):
        if arg.startswith(flag + "="):
            found = [arg[len(flag) + 1 :]]
        elif arg == flag:
            found = []
            for value in args[index + 1 :]:
                if value.startswith("--"):
                    break
                found.append(value)
    return found


def _positive_sorted(values: Sequence[Any]) -> tuple[float, ...] | None:
    try:
        bounds = sorted({float(v) for v in values})
    except (TypeError, ValueError):
        return None
    finite = tuple(b for b in bounds if 0 < b < math.inf)
    return finite or None


def histogram_buckets(spec: LLMServiceSpec) -> dict[Objective, tuple[float, ...]]:
    """The bucket boundaries the engine will use for each latency histogram.

    The engine's defaults, unless `engine.extraArgs` sets them; a value the engine would
    refuse anyway (not JSON, not numbers) is ignored here and left for the engine to report.
    """
    kind = spec.engine.kind
    buckets = dict(_DEFAULT_BUCKETS[kind])
    args = spec.engine.extra_args
    if kind == "vllm":
        raw = _flag_values(args, "--custom-histogram-buckets")
        if raw:
            try:
                custom = json.loads(" ".join(raw))
            except json.JSONDecodeError:
                custom = None
            if isinstance(custom, dict):
                for objective, key in _VLLM_BUCKET_KEYS.items():
                    values = custom.get(key)
                    bounds = _positive_sorted(values) if isinstance(values, list) else None
                    if bounds:
                        buckets[objective] = bounds
    else:
        for objective, flag in _SGLANG_BUCKET_FLAGS.items():
            raw = _flag_values(args, flag)
            bounds = _positive_sorted(raw) if raw else None
            if bounds:
                buckets[objective] = bounds
    return buckets


def _seconds_text(seconds: float) -> str:
    # format_duration works in whole milliseconds; finer bounds (1ms buckets) print as seconds.
    if abs(seconds * 1000 - round(seconds * 1000)) < 1e-9:
        return format_duration(seconds)
    return f"{seconds:g}s"


def choose_bucket(
    objective: Objective, metric: str, target: float, bounds: Sequence[float]
) -> AlertBucket:
    """The boundary an alert counts against for `target`: exact, else the nearest below."""
    title, shown = _TITLES[objective], _seconds_text(target)
    exact = [b for b in bounds if math.isclose(b, target, rel_tol=1e-9)]
    below = [b for b in bounds if b < target]
    bucket = exact[0] if exact else (below[-1] if below else bounds[0])
    offset = 0.0 if exact else round((bucket - target) / target * 100, 1)
    if exact:
        message = f"{title} target {shown} is a bucket boundary of {metric}: the alert is exact."
    else:
        side = (
            f"requests between {_seconds_text(bucket)} and {shown} count as slow, so the alert "
            "is stricter than the SLO"
            if bucket < target
            else f"the target is below the smallest bucket, so requests up to "
            f"{_seconds_text(bucket)} count as fast and the alert is more lenient than the SLO"
        )
        message = (
            f"{title} target {shown} is not a bucket boundary of {metric}; the alerts count "
            f"against le={_le(bucket)} ({offset:+.1f}%): {side}. Set the target to a boundary "
            "or add it to the engine's histogram buckets in engine.extraArgs."
        )
    return AlertBucket(
        objective=objective,
        metric=metric,
        target_seconds=target,
        bucket_seconds=bucket,
        offset_percent=offset,
        message=message,
    )


def _objectives(spec: LLMServiceSpec) -> list[tuple[Objective, LatencyTarget, str]]:
    names = adapter_for(spec).metrics
    found: list[tuple[Objective, LatencyTarget, str]] = [
        ("ttft", spec.slo.ttft, names.ttft_histogram),
        ("itl", spec.slo.itl, names.itl_histogram),
    ]
    if spec.slo.e2e is not None:
        found.append(("e2e", spec.slo.e2e, names.e2e_histogram))
    return found


def alert_buckets(spec: LLMServiceSpec) -> list[AlertBucket]:
    """For the status: per objective, the bucket its alerts use and its offset from target."""
    buckets = histogram_buckets(spec)
    return [
        choose_bucket(objective, metric, target.seconds, buckets[objective])
        for objective, target, metric in _objectives(spec)
    ]


# -- PromQL ---------------------------------------------------------------------------------


def _le(bound: float) -> str:
    return repr(float(bound))


def _go_float(value: float) -> str:
    """`strconv.FormatFloat(value, 'g', -1, 64)`: how Go clients and Prometheus 3 write le."""
    digits = Decimal(repr(float(value)))
    exponent = digits.adjusted()
    if exponent < -4 or exponent >= 6:
        mantissa = format(digits.scaleb(-exponent).normalize(), "f")
        return f"{mantissa}e{exponent:+03d}"
    return format(digits.normalize(), "f")


def _le_matcher(bound: float) -> str:
    # Python clients (vLLM, SGLang) write le="1.0", Go clients and Prometheus 3 (which
    # normalizes le when it ingests) write le="1": accept either spelling of the boundary.
    spellings = sorted({repr(float(bound)), _go_float(bound)})
    if len(spellings) == 1:
        return f"le={_string(spellings[0])}"
    return "le=~" + _string("|".join(re.escape(s) for s in spellings))


def _string(value: str) -> str:
    # A PromQL double-quoted string uses Go's escapes, which JSON's are a subset of.
    return json.dumps(value)


def _selector(namespace: str, name: str, *extra: str) -> str:
    matchers = [f"namespace={_string(namespace)}", f"llmservice={_string(name)}", *extra]
    return "{" + ",".join(matchers) + "}"


def _percent(value: float) -> str:
    return f"{value * 100:.4g}%"


def _quantile_text(percentile: float) -> str:
    return f"{percentile / 100:.6g}"


def _p(percentile: float) -> str:
    return f"p{percentile:g}"


def rule_name(objective: Objective, what: str) -> str:
    """Recording rule names, shared by every LLMService (the labels tell them apart)."""
    return f"{RULE_PREFIX}{objective}_{what}"


def alert_name(objective: Objective) -> str:
    return f"{ALERT_PREFIX}{_TITLES[objective]}BudgetBurn"


# The Grafana dashboard (charts/slotune/files/dashboard.json) plots the over-target ratios at
# these spans whatever the alert tiers are: sped-up tiers (`--alert-speedup`) use other windows,
# and without these the dashboard's panels would read series nobody records.
DASHBOARD_WINDOWS = ("5m", "1h")


def _windows(burn_rates: Sequence[BurnRateAlert]) -> list[str]:
    seen: dict[str, None] = dict.fromkeys(DASHBOARD_WINDOWS)
    for tier in burn_rates:
        seen[tier.short_window] = None
        seen[tier.long_window] = None
    return sorted(seen, key=window_seconds)


def window_seconds(window: str) -> float:
    """Seconds in a Prometheus duration of one unit (`5m`, `6h`, `3d`)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    return float(window[:-1]) * units[window[-1]]


@dataclass(frozen=True)
class SloAlerts:
    """What the reconcile needs: the PrometheusRule groups and the status's bucket report."""

    rule_groups: list[Manifest]
    buckets: list[AlertBucket]

    def status(self) -> list[dict[str, Any]]:
        """`status.alertBuckets`, as the API writes it."""
        return [bucket.model_dump(by_alias=True) for bucket in self.buckets]


def slo_alerts(
    service: LLMService,
    burn_rates: Sequence[BurnRateAlert] = WORKBOOK_BURN_RATES,
    runbook_base_url: str = RUNBOOK_BASE_URL,
) -> SloAlerts:
    """The recording rules and burn-rate alerts of `service`, for `render_children`.

    `burn_rates` may be shortened (`sped_up_burn_rates`: tests and demos use seconds and
    minutes instead of hours and days).
    """
    spec = service.spec
    ns, name = service.metadata.namespace, service.metadata.name
    window = spec.slo.window
    buckets = alert_buckets(spec)
    recording: list[Manifest] = []
    alerting: list[Manifest] = []
    static_labels = {"namespace": ns, "llmservice": name}

    for (objective, target, metric), bucket in zip(_objectives(spec), buckets, strict=True):
        budget = 1 - target.percentile / 100
        recording += [
            {
                "record": rule_name(objective, "seconds:quantile"),
                "expr": (
                    f"histogram_quantile({_quantile_text(target.percentile)}, "
                    f"sum by (namespace, llmservice, le) "
                    f"(rate({metric}_bucket{_selector(ns, name)}[{window}])))"
                ),
                "labels": {"quantile": _quantile_text(target.percentile)},
            },
            {
                "record": rule_name(objective, "target_seconds"),
                "expr": f"vector({target.seconds!r})",
                "labels": dict(static_labels),
            },
            {
                "record": rule_name(objective, "error_budget:ratio"),
                "expr": f"vector({budget:.6g})",
                "labels": dict(static_labels),
            },
        ]
        good = f"{metric}_bucket{_selector(ns, name, _le_matcher(bucket.bucket_seconds))}"
        total = f"{metric}_count{_selector(ns, name)}"
        for span in _windows(burn_rates):
            recording.append(
                {
                    "record": rule_name(objective, f"over_target:ratio_rate{span}"),
                    "expr": (
                        f"1 - (sum by (namespace, llmservice) (rate({good}[{span}])) / "
                        f"sum by (namespace, llmservice) (rate({total}[{span}])))"
                    ),
                }
            )
        for tier in burn_rates:
            alerting.append(
                _burn_alert(objective, target, bucket, budget, tier, ns, name, runbook_base_url)
            )

    # One group, recording rules first: rules of a group run in order, so every alert reads
    # the ratios recorded in the same evaluation (separate groups run in no fixed order, and
    # the alert would lag one interval behind, or not, from one evaluation to the next).
    return SloAlerts(
        rule_groups=[{"name": f"slotune.{ns}.{name}.slo", "rules": recording + alerting}],
        buckets=buckets,
    )


def _burn_alert(
    objective: Objective,
    target: LatencyTarget,
    bucket: AlertBucket,
    budget: float,
    tier: BurnRateAlert,
    ns: str,
    name: str,
    runbook_base_url: str,
) -> Manifest:
    threshold = min(tier.factor * budget, 1.0)
    ratio = rule_name(objective, "over_target:ratio_rate")
    selector = _selector(ns, name)
    title = _TITLES[objective]
    slo_text = f"{target.percentile:g}% within {target.target}"
    exhausted = SLO_PERIOD_DAYS * 24 / tier.factor
    exhausted_text = f"{exhausted / 24:.3g} days" if exhausted >= 48 else f"{exhausted:.3g} hours"
    what = _WHAT[objective].format(target=_seconds_text(bucket.bucket_seconds))
    alert = alert_name(objective)
    return {
        "alert": alert,
        "expr": (
            f"{ratio}{tier.long_window}{selector} >= {threshold:.6g}\n"
            f"and {ratio}{tier.short_window}{selector} >= {threshold:.6g}"
        ),
        "for": tier.for_,
        "labels": {
            "severity": tier.severity,
            "slo": objective,
            "window": tier.long_window,
        },
        "annotations": {
            "summary": (
                f"LLMService {ns}/{name} burns its {title} error budget {tier.factor:g}x too fast "
                f"({tier.long_window} and {tier.short_window} windows)."
            ),
            "description": (
                f"{{{{ $value | humanizePercentage }}}} of {what} over the last "
                f"{tier.long_window} (and over {_percent(threshold)} in the last "
                f"{tier.short_window}). The SLO is {_p(target.percentile)} {title} within "
                f"{target.target} ({slo_text}), an error budget of {_percent(budget)}; at this "
                f"rate the {SLO_PERIOD_DAYS}-day budget is gone in {exhausted_text}."
            ),
            "runbook_url": f"{runbook_base_url}#{alert.lower()}",
        },
    }
