"""SLO alerts: golden files, `promtool check rules`, and `promtool test rules` scenarios that
show each burn-rate tier firing under its burn and staying silent when the service is healthy.

The scenarios keep the share of slow requests constant inside every window an alert reads, so
each alert's value (and so its description) is an exact fraction the test can spell out.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from slotune.api.resource import LLMService, parse_llmservice
from slotune.render.alerts import (
    ALERT_PREFIX,
    WORKBOOK_BURN_RATES,
    alert_buckets,
    alert_name,
    choose_bucket,
    histogram_buckets,
    rule_name,
    slo_alerts,
    sped_up_burn_rates,
    window_seconds,
)
from slotune.render.render import render_children, to_yaml
from slotune.sim import vllm_metrics

from strategies import llmservices

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).resolve().parent / "golden" / "alerts"
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None and not os.environ.get("CI"),
    reason="promtool is not installed (`make tools` installs Debian's prometheus package)",
)


def load(path: Path, **spec_changes: Any) -> LLMService:
    obj = yaml.safe_load(path.read_text())
    obj["metadata"]["uid"] = "7d1c9a52-3f0e-4b8a-9c61-2a5e8f4b1d03"
    for key, value in spec_changes.items():
        obj["spec"][key] = value
    return parse_llmservice(obj)


def prometheus_rule(service: LLMService) -> dict[str, Any]:
    children = render_children(service, rule_groups=slo_alerts(service).rule_groups)
    rule = children[-1]
    assert rule["kind"] == "PrometheusRule"
    return rule


def promtool(*args: str, cwd: Path) -> str:
    assert PROMTOOL, "promtool is required in CI (`make tools`)"
    result = subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


# -- the rules ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_prometheus_rules_match_golden_files(path: Path) -> None:
    rendered = to_yaml([prometheus_rule(load(path))])
    golden = GOLDEN / f"{path.stem}.yaml"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(rendered)
    assert golden.exists(), f"missing {golden}: run with UPDATE_GOLDEN=1 once and review it"
    assert rendered == golden.read_text(), f"{golden.name} differs; UPDATE_GOLDEN=1 if intended"


@needs_promtool
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_promtool_accepts_the_rendered_rules(path: Path, tmp_path: Path) -> None:
    rule = prometheus_rule(load(path))
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    assert "SUCCESS" in promtool("check", "rules", "rules.yaml", cwd=tmp_path)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_every_rule_reads_only_this_service(path: Path) -> None:
    service = load(path)
    ns, name = service.metadata.namespace, service.metadata.name
    alerts = [r for g in slo_alerts(service).rule_groups for r in g["rules"] if "alert" in r]
    records = [r for g in slo_alerts(service).rule_groups for r in g["rules"] if "record" in r]
    for rule in records + alerts:
        if not rule["expr"].startswith("vector("):
            assert f'namespace="{ns}"' in rule["expr"] and f'llmservice="{name}"' in rule["expr"]
        else:
            assert rule["labels"] == {"namespace": ns, "llmservice": name}
    objectives = 3 if service.spec.slo.e2e else 2
    assert len(alerts) == objectives * len(WORKBOOK_BURN_RATES)
    for alert in alerts:
        assert alert["alert"].startswith(ALERT_PREFIX)
        assert alert["labels"]["severity"] in ("critical", "warning")
        assert {"summary", "description", "runbook_url"} <= set(alert["annotations"])
        assert alert["annotations"]["runbook_url"].endswith("#" + alert["alert"].lower())


def test_workbook_tiers() -> None:
    tiers = [(t.long_window, t.short_window, t.factor, t.severity) for t in WORKBOOK_BURN_RATES]
    assert tiers == [
        ("1h", "5m", 14.4, "critical"),
        ("6h", "30m", 6.0, "critical"),
        ("3d", "6h", 1.0, "warning"),
    ]


def test_a_speedup_divides_every_window_and_for_and_keeps_the_burn_factors() -> None:
    tiers = [
        (t.severity, t.long_window, t.short_window, t.factor, t.for_)
        for t in sped_up_burn_rates(60)
    ]
    assert tiers == [
        ("critical", "1m", "5s", 14.4, "2s"),
        ("critical", "6m", "30s", 6.0, "15s"),
        ("warning", "72m", "6m", 1.0, "1m"),
    ]
    assert sped_up_burn_rates(1) == WORKBOOK_BURN_RATES


@pytest.mark.parametrize("speedup", [0, 0.5, -2, math.nan, math.inf])
def test_a_speedup_below_one_is_refused(speedup: float) -> None:
    with pytest.raises(ValueError, match="speedup"):
        sped_up_burn_rates(speedup)


@given(st.floats(min_value=1, max_value=1e6))
def test_sped_up_durations_are_whole_seconds_at_least_one(speedup: float) -> None:
    for old, new in zip(WORKBOOK_BURN_RATES, sped_up_burn_rates(speedup), strict=True):
        for before, after in (
            (old.long_window, new.long_window),
            (old.short_window, new.short_window),
            (old.for_, new.for_),
        ):
            seconds = window_seconds(after)
            assert seconds == max(1, round(window_seconds(before) / speedup)), (before, after)
        assert window_seconds(new.short_window) <= window_seconds(new.long_window)


@needs_promtool
def test_promtool_accepts_sped_up_rules_named_after_their_windows(tmp_path: Path) -> None:
    service = load(ROOT / "examples" / "llama-3-8b-h100.yaml")
    groups = slo_alerts(service, sped_up_burn_rates(60)).rule_groups
    records = {r["record"] for g in groups for r in g["rules"] if "record" in r}
    assert {
        rule_name("ttft", "over_target:ratio_rate5s"),
        rule_name("ttft", "over_target:ratio_rate72m"),
    } <= records
    alerts = [r for g in groups for r in g["rules"] if "alert" in r]
    assert {a["for"] for a in alerts} == {"2s", "15s", "1m"}
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    assert "SUCCESS" in promtool("check", "rules", "rules.yaml", cwd=tmp_path)


def test_thresholds_are_burn_factor_times_budget_capped_at_one() -> None:
    # qwen: TTFT p90 (budget 10%): 14.4x would be 144%, clamped; ITL p95 (budget 5%).
    service = load(ROOT / "examples" / "qwen-sglang-a100.yaml")
    alerts = [r for g in slo_alerts(service).rule_groups for r in g["rules"] if "alert" in r]
    thresholds = {
        (a["alert"], a["labels"]["window"]): a["expr"].split(">= ")[1].split("\n")[0]
        for a in alerts
    }
    assert thresholds[(alert_name("ttft"), "1h")] == "1"
    assert thresholds[(alert_name("ttft"), "6h")] == "0.6"
    assert thresholds[(alert_name("ttft"), "3d")] == "0.1"
    assert thresholds[(alert_name("itl"), "1h")] == "0.72"
    assert thresholds[(alert_name("itl"), "6h")] == "0.3"
    assert thresholds[(alert_name("itl"), "3d")] == "0.05"


# -- which bucket an alert counts with -------------------------------------------------------


def test_targets_on_a_boundary_are_exact() -> None:
    (ttft, itl, e2e) = alert_buckets(load(ROOT / "examples" / "llama-3-8b-h100.yaml").spec)
    assert (ttft.bucket_seconds, ttft.offset_percent) == (0.5, 0.0)
    assert (itl.bucket_seconds, itl.offset_percent) == (0.025, 0.0)
    assert (e2e.bucket_seconds, e2e.offset_percent) == (20.0, 0.0)
    assert "exact" in ttft.message


def test_a_target_between_boundaries_uses_the_one_below_and_says_how_far() -> None:
    ttft, itl = alert_buckets(load(ROOT / "examples" / "llama-3-70b-fp8-h100x4.yaml").spec)
    # vLLM's TTFT buckets go 1, 2.5: a 2 s target is counted against 1 s, 50% stricter.
    assert (ttft.bucket_seconds, ttft.offset_percent) == (1.0, -50.0)
    assert (itl.bucket_seconds, itl.offset_percent) == (0.05, -16.7)
    assert "le=0.05 (-16.7%)" in itl.message and "stricter" in itl.message


def test_a_target_below_every_boundary_uses_the_smallest() -> None:
    bucket = choose_bucket("ttft", "m", 0.0005, vllm_metrics.TTFT_BUCKETS)
    assert bucket.bucket_seconds == 0.001 and bucket.offset_percent == 100.0
    assert "lenient" in bucket.message


def test_vllm_custom_buckets_put_the_target_on_a_boundary() -> None:
    engine = {
        "kind": "vllm",
        "extraArgs": [
            '--custom-histogram-buckets={"time_to_first_token": [0.5, 2, 4], '
            '"inter_token_latency": [0.03, 0.06]}'
        ],
    }
    spec = load(ROOT / "examples" / "llama-3-70b-fp8-h100x4.yaml", engine=engine).spec
    assert histogram_buckets(spec)["ttft"] == (0.5, 2.0, 4.0)
    assert [b.offset_percent for b in alert_buckets(spec)] == [0.0, 0.0]
    # The two-argument spelling, as a shell would split it.
    engine["extraArgs"] = ["--custom-histogram-buckets", '{"time_to_first_token": [2]}']
    spec = load(ROOT / "examples" / "llama-3-70b-fp8-h100x4.yaml", engine=engine).spec
    assert histogram_buckets(spec)["ttft"] == (2.0,)
    assert histogram_buckets(spec)["itl"] == vllm_metrics.ITL_BUCKETS


def test_sglang_bucket_flags_are_read() -> None:
    engine = {"kind": "sglang", "extraArgs": ["--bucket-time-to-first-token", "0.5", "0.9"]}
    spec = load(ROOT / "examples" / "qwen-sglang-a100.yaml", engine=engine).spec
    assert histogram_buckets(spec)["ttft"] == (0.5, 0.9)


def test_unparsable_custom_buckets_fall_back_to_the_defaults() -> None:
    engine = {"kind": "vllm", "extraArgs": ["--custom-histogram-buckets=not json"]}
    spec = load(ROOT / "examples" / "llama-3-8b-h100.yaml", engine=engine).spec
    assert histogram_buckets(spec)["ttft"] == vllm_metrics.TTFT_BUCKETS


@given(
    target=st.floats(0.0001, 3600, allow_nan=False),
    bounds=st.lists(st.floats(0.001, 5000), min_size=1, max_size=30, unique=True).map(sorted),
)
def test_the_bucket_is_at_or_below_the_target_unless_none_is(
    target: float, bounds: list[float]
) -> None:
    bucket = choose_bucket("itl", "m", target, bounds)
    assert bucket.bucket_seconds in bounds
    below = [b for b in bounds if b <= target or math.isclose(b, target, rel_tol=1e-9)]
    if below:
        assert bucket.bucket_seconds == max(below)
        assert bucket.offset_percent <= 0
    else:
        assert bucket.bucket_seconds == bounds[0] and bucket.offset_percent >= 0


@given(obj=llmservices())
def test_any_valid_service_gets_rules_and_a_bucket_per_objective(obj: dict[str, Any]) -> None:
    service = parse_llmservice(obj)
    alerts = slo_alerts(service)
    assert [b.objective for b in alerts.buckets][:2] == ["ttft", "itl"]
    assert len(alerts.status()) == (3 if service.spec.slo.e2e else 2)
    assert prometheus_rule(service)["spec"]["groups"] == alerts.rule_groups


# -- promtool test rules: the alerts under burns ------------------------------------------

EXAMPLE = ROOT / "examples" / "llama-3-8b-h100.yaml"  # p95 everywhere: a 5% error budget
PER_MINUTE = 100


def _series(service: LLMService, slow: list[tuple[int, float]], go_le: bool) -> list[Any]:
    """Input series for every objective: `slow` is [(minutes, share of slow requests)]."""
    ns, name = service.metadata.namespace, service.metadata.name
    series = []
    for bucket in alert_buckets(service.spec):
        le = f"{bucket.bucket_seconds:g}" if go_le else repr(bucket.bucket_seconds)
        labels = f'namespace="{ns}",llmservice="{name}"'
        good, total = [0.0], [0.0]
        for minutes, share in slow:
            for _ in range(minutes):
                good.append(good[-1] + PER_MINUTE * (1 - share))
                total.append(total[-1] + PER_MINUTE)
        series += [
            {
                "series": f'{bucket.metric}_bucket{{{labels},le="{le}"}}',
                "values": " ".join(f"{v:g}" for v in good),
            },
            {
                "series": f"{bucket.metric}_count{{{labels}}}",
                "values": " ".join(f"{v:g}" for v in total),
            },
        ]
    return series


def _expected(service: LLMService, window: str, value: float) -> list[dict[str, Any]]:
    """The alert of tier `window` for every objective, firing with `value`."""
    rules = [r for g in slo_alerts(service).rule_groups for r in g["rules"] if "alert" in r]
    found = []
    for rule in rules:
        if rule["labels"]["window"] != window:
            continue
        annotations = dict(rule["annotations"])
        # Go's humanizePercentage is `%.4g%%` of value * 100.
        shown = f"{value * 100:.4g}%"
        annotations["description"] = annotations["description"].replace(
            "{{ $value | humanizePercentage }}", shown
        )
        found.append(
            {
                "alertname": rule["alert"],
                "exp_labels": {
                    **rule["labels"],
                    "namespace": service.metadata.namespace,
                    "llmservice": service.metadata.name,
                },
                "exp_annotations": annotations,
            }
        )
    return found


def _alert_tests(service: LLMService, at: str, firing: dict[str, float]) -> list[dict[str, Any]]:
    """One check per alert name at time `at`: exactly the tiers in `firing` ({window: value})."""
    by_name: dict[str, list[dict[str, Any]]] = {
        alert_name(b.objective): [] for b in alert_buckets(service.spec)
    }
    for window, value in firing.items():
        for alert in _expected(service, window, value):
            name = alert.pop("alertname")
            by_name[name].append(alert)
    return [{"eval_time": at, "alertname": n, "exp_alerts": a} for n, a in by_name.items()]


@needs_promtool
def test_promtool_burn_rate_scenarios(tmp_path: Path) -> None:
    service = load(EXAMPLE)
    groups = slo_alerts(service).rule_groups
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}, width=1000))
    tests = [
        {
            # Every request slow for 20 minutes, then every request fast again.
            "name": "fast burn pages at 14.4x, then 6x; the 5m window ends the fast page",
            "interval": "1m",
            "input_series": _series(service, [(20, 1.0), (60, 0.0)], go_le=False),
            "alert_rule_test": [
                # The fast page's `for` is 2m, the slow page's 15m, the ticket's 1h.
                *_alert_tests(service, "12m", {"1h": 1.0}),
                *_alert_tests(service, "19m", {"1h": 1.0, "6h": 1.0}),
                # 5 minutes after the burn stopped the 1h window is still at 77% (over the
                # 72% threshold) but the 5m window is clean: the fast page has resolved.
                *_alert_tests(service, "26m", {"6h": 1 - 6 / 26}),
                *_alert_tests(service, "58m", {}),
            ],
        },
        {
            "name": "a 40% slow share (8x) pages on the 6h window only",
            "interval": "1m",
            "input_series": _series(service, [(80, 0.4)], go_le=True),
            "alert_rule_test": [
                *_alert_tests(service, "20m", {"6h": 0.4}),
                *_alert_tests(service, "75m", {"6h": 0.4, "3d": 0.4}),
            ],
        },
        {
            "name": "a 10% slow share (2x) opens a ticket and pages nobody",
            "interval": "1m",
            "input_series": _series(service, [(80, 0.1)], go_le=False),
            "alert_rule_test": [
                *_alert_tests(service, "30m", {}),
                *_alert_tests(service, "75m", {"3d": 0.1}),
            ],
        },
        {
            "name": "healthy: a 4% slow share stays inside the 5% budget",
            "interval": "1m",
            "input_series": _series(service, [(120, 0.04)], go_le=True),
            "alert_rule_test": _alert_tests(service, "2h", {}),
            "promql_expr_test": [
                {
                    "expr": f"{rule_name('ttft', 'over_target:ratio_rate1h')}",
                    "eval_time": "2h",
                    "exp_samples": [
                        {
                            "labels": f"{rule_name('ttft', 'over_target:ratio_rate1h')}"
                            f'{{namespace="default",llmservice="llama-3-8b-chat"}}',
                            # 1 - good/total, as Prometheus computes it in float64.
                            "value": 1 - 96 / 100,
                        }
                    ],
                },
                {
                    "expr": rule_name("ttft", "error_budget:ratio"),
                    "eval_time": "1m",
                    "exp_samples": [
                        {
                            "labels": f"{rule_name('ttft', 'error_budget:ratio')}"
                            f'{{namespace="default",llmservice="llama-3-8b-chat"}}',
                            "value": 0.05,
                        }
                    ],
                },
            ],
        },
        {
            "name": "no traffic: no ratio, no alert",
            "interval": "1m",
            "input_series": [
                {"series": s["series"], "values": "0x90"}
                for s in _series(service, [(90, 0.0)], go_le=False)
            ],
            "alert_rule_test": _alert_tests(service, "85m", {}),
        },
    ]
    (tmp_path / "tests.yaml").write_text(
        yaml.safe_dump(
            {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests},
            width=1000,
            sort_keys=False,
        )
    )
    promtool("test", "rules", "tests.yaml", cwd=tmp_path)


@needs_promtool
def test_promtool_quantile_recording_rule(tmp_path: Path) -> None:
    service = load(EXAMPLE)
    groups = slo_alerts(service).rule_groups
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}, width=1000))
    labels = 'namespace="default",llmservice="llama-3-8b-chat"'
    metric = vllm_metrics.TIME_TO_FIRST_TOKEN
    # Per minute: 50 requests within 250 ms, 46 more within 500 ms, 4 slower.
    per_bucket = {"0.25": 50, "0.5": 96, "+Inf": 100}
    series = [
        {"series": f'{metric}_bucket{{{labels},le="{le}"}}', "values": f"0+{n}x10"}
        for le, n in per_bucket.items()
    ]
    series.append({"series": f"{metric}_count{{{labels}}}", "values": "0+100x10"})
    p95 = 0.25 + 0.25 * (95 - 50) / (96 - 50)  # histogram_quantile interpolates linearly
    tests = [
        {
            "interval": "1m",
            "input_series": series,
            "promql_expr_test": [
                {
                    "expr": rule_name("ttft", "seconds:quantile"),
                    "eval_time": "10m",
                    "exp_samples": [
                        {
                            "labels": f"{rule_name('ttft', 'seconds:quantile')}"
                            f'{{{labels},quantile="0.95"}}',
                            "value": p95,
                        }
                    ],
                },
                {
                    "expr": rule_name("ttft", "target_seconds"),
                    "eval_time": "10m",
                    "exp_samples": [
                        {
                            "labels": f"{rule_name('ttft', 'target_seconds')}{{{labels}}}",
                            "value": 0.5,
                        }
                    ],
                },
            ],
        }
    ]
    (tmp_path / "tests.yaml").write_text(
        yaml.safe_dump({"rule_files": ["rules.yaml"], "tests": tests}, width=1000, sort_keys=False)
    )
    promtool("test", "rules", "tests.yaml", cwd=tmp_path)
