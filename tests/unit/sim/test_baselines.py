"""The baselines reproduce their projects' documented formulas on hand-made snapshots."""

from __future__ import annotations

from typing import Any

import pytest

from slotune.api.spec import LLMServiceSpec
from slotune.policy.slotune import SlotunePolicy
from slotune.policy.types import MetricsSnapshot, PodMetrics, PolicySpec, Setting
from slotune.sim.baselines import HpaPolicy, KpaPolicy, SaturationPolicy, StaticPolicy
from slotune.sim.policies import PolicyContext, build_policy, known_names

SPEC = PolicySpec.from_spec(
    LLMServiceSpec.model_validate(
        {
            "model": {"name": "m"},
            "slo": {"ttft": {"target": "500ms"}, "itl": {"target": "25ms"}},
            "scaling": {"minReplicas": 1, "maxReplicas": 100},
        }
    )
)


def snapshot(
    running: list[float],
    *,
    waiting: list[float] | None = None,
    kv: list[float] | None = None,
    kv_peak: list[float] | None = None,
    waiting_peak: list[float] | None = None,
    ready: int | None = None,
    pending: int = 0,
) -> MetricsSnapshot:
    n = len(running)
    waiting = waiting or [0.0] * n
    kv = kv or [0.1] * n
    pods = tuple(
        PodMetrics(
            f"pod-{i}",
            running[i],
            waiting[i],
            kv[i],
            (waiting_peak or waiting)[i],
            (kv_peak or kv)[i],
        )
        for i in range(n)
    )
    return MetricsSnapshot(
        time_s=0.0,
        age_s=1.0,
        request_rate=1.0,
        prompt_token_rate=1.0,
        generation_token_rate=1.0,
        ttft=0.1,
        itl=0.01,
        e2e=None,
        waiting=sum(waiting),
        running=sum(running),
        kv_cache_usage=sum(kv) / n if n else None,
        ready_replicas=n if ready is None else ready,
        pending_replicas=pending,
        pods=pods,
    )


def at(replicas: int, seqs: int = 100) -> Setting:
    return Setting(replicas, seqs, 8192)


# ------------------------------------------------------------------------------ HPA


def test_hpa_desired_is_ceil_of_current_times_metric_over_target() -> None:
    hpa = HpaPolicy(target=0.5)
    # 4 pods at 80 running of 100 slots: 0.8 / 0.5 = 1.6 -> ceil(1.6 * 4) = 7
    d = hpa.decide(snapshot([80, 80, 80, 80]), at(4), SPEC, {}, 0.0)
    assert d.setting == at(7) and d.reason == "BaselineRule"


def test_hpa_tolerance_keeps_the_count_within_ten_percent() -> None:
    hpa = HpaPolicy(target=0.5)
    assert hpa.decide(snapshot([54, 54]), at(2), SPEC, {}, 0.0).setting.replicas == 2  # 1.08
    assert hpa.decide(snapshot([56, 56]), at(2), SPEC, {}, 0.0).setting.replicas == 3  # 1.12


def test_hpa_fills_in_starting_pods_conservatively() -> None:
    hpa = HpaPolicy(target=0.5)
    # Scale-up with 2 starting pods counted at 0: (80+80+0+0)/4/50 = 0.8 -> opposite
    # direction, so the HPA keeps 4.
    assert hpa.recommend([0.8, 0.8], current=4, missing=2) == 4
    # (100+100+0)/3 = 66.7 per pod -> ratio 1.33 -> ceil(1.33 * 3) = 4
    assert hpa.recommend([1.0, 1.0], current=3, missing=1) == 4
    # Scale-down with a starting pod counted at the target: (10+10+50)/3/50 = 0.47 -> 2
    assert hpa.recommend([0.1, 0.1], current=3, missing=1) == 2


def test_hpa_scale_down_takes_the_highest_recommendation_of_five_minutes() -> None:
    hpa = HpaPolicy(target=0.5)
    memory: dict[str, Any] = {}
    d = hpa.decide(snapshot([90] * 4), at(4), SPEC, memory, 0.0)  # -> 8
    assert d.setting.replicas == 8
    d = hpa.decide(snapshot([10] * 8), at(8), SPEC, d.memory, 15.0)  # wants 2
    assert d.setting.replicas == 8  # held by the 8 recommended 15 s ago
    d = hpa.decide(snapshot([10] * 8), at(8), SPEC, d.memory, 299.0)
    assert d.setting.replicas == 8
    d = hpa.decide(snapshot([10] * 8), at(8), SPEC, d.memory, 301.0)
    assert d.setting.replicas == 2  # the 8 left the window
    assert all(t > 1.0 for t, _ in d.memory["recommendations"])


def test_hpa_scale_up_is_limited_to_double_or_plus_four_per_period() -> None:
    hpa = HpaPolicy(target=0.1)
    assert hpa.decide(snapshot([100]), at(1), SPEC, {}, 0.0).setting.replicas == 5  # +4
    assert hpa.decide(snapshot([100] * 10), at(10), SPEC, {}, 0.0).setting.replicas == 20


def test_hpa_metrics_alternatives_and_missing_metrics() -> None:
    kv = HpaPolicy(metric="kv", target=0.6)
    assert kv.decide(snapshot([1, 1], kv=[0.9, 0.9]), at(2), SPEC, {}, 0).setting.replicas == 3
    queue = HpaPolicy(metric="waiting", target=2)
    assert queue.decide(snapshot([1, 1], waiting=[5, 7]), at(2), SPEC, {}, 0).setting.replicas == 6
    d = HpaPolicy().decide(None, at(3), SPEC, {}, 0.0)
    assert d.setting == at(3) and d.reason == "MetricsMissing"


# ------------------------------------------------------------------------------ KPA


def test_kpa_stable_mode_is_ceil_of_average_concurrency_over_target() -> None:
    kpa = KpaPolicy(target=10)
    memory: dict[str, Any] = {}
    for t in range(0, 60, 2):
        d = kpa.decide(snapshot([15.0, 15.0, 15.0]), at(3), SPEC, memory, float(t))
        memory = dict(d.memory)
    # 45 in flight / 10 per pod -> 5 pods; not panicking (5 / 3 ready < 2)
    assert d.setting.replicas == 5 and memory["panic_since"] is None


def test_kpa_panics_at_twice_the_ready_pods_and_never_scales_down_in_panic() -> None:
    kpa = KpaPolicy(target=10)
    memory: dict[str, Any] = {
        "samples": [[float(t), 10.0] for t in range(0, 54, 2)],
        "panic_since": None,
        "max_panic_pods": 0,
    }
    # A burst: 50 in flight in the 6 s panic window, the stable average barely moves.
    memory["samples"] += [[54.0, 50.0], [56.0, 50.0]]
    d = kpa.decide(snapshot([25, 25], ready=2), at(2), SPEC, memory, 58.0)
    assert d.memory["panic_since"] == 58.0  # dppc 5 / 2 ready >= 2
    assert d.setting.replicas == 5
    # The burst ends: still in panic, so no scale-down below the panic peak.
    d2 = kpa.decide(snapshot([1, 1], ready=5), at(5), SPEC, d.memory, 80.0)
    assert d2.setting.replicas == 5 and d2.memory["panic_since"] == 58.0
    # A stable window later, panic ends and the stable average rules (halving at most).
    memory3 = dict(d2.memory)
    memory3["samples"] = [[float(t), 2.0] for t in range(60, 120, 2)]
    d3 = kpa.decide(snapshot([1, 1], ready=5), at(5), SPEC, memory3, 120.0)
    assert d3.memory["panic_since"] is None
    assert d3.setting.replicas == 2  # ceil(2/10)=1, but floor(5 / 2) = 2 at most down


def test_kpa_scale_function_matches_knative() -> None:
    kpa = KpaPolicy(target=70, max_scale_up_rate=1000, max_scale_down_rate=2)
    assert kpa.scale(700, 700, 10, None, 0, 0.0) == (10, None, 0)
    assert kpa.scale(100, 100, 10, None, 0, 0.0) == (5, None, 0)  # halving at most
    assert kpa.scale(100, 1500, 10, None, 0, 0.0) == (22, 0.0, 22)  # 22/10 >= 2: panic
    assert kpa.scale(100, 100, 10, 0.0, 22, 30.0) == (22, 0.0, 22)  # still panicking
    assert kpa.scale(100, 100, 10, 0.0, 22, 61.0) == (5, None, 0)  # a stable window later


# ----------------------------------------------------------------------- saturation


def test_saturation_spare_capacity_matches_the_documented_example() -> None:
    sat = SaturationPolicy()
    kv = [0.70, 0.75, 0.60, 0.65, 0.55]
    queue = [2, 3, 1, 2, 1]
    up, down, spare_kv, spare_q = sat.analyze(kv, queue)
    assert spare_kv == pytest.approx(0.8 - sum(kv) / 5)  # 0.15
    assert spare_q == pytest.approx(5 - 9 / 5)  # 3.2
    assert not up  # 0.15 >= 0.1 and 3.2 >= 3
    # Without one replica: kv 3.25 / 4 = 0.81 > 0.8 - 0.1 -> unsafe
    assert not down


def test_saturation_scales_up_by_one_when_spare_runs_out_or_everything_is_saturated() -> None:
    sat = SaturationPolicy()
    low_spare = snapshot([1, 1, 1], kv=[0.75, 0.74, 0.3], kv_peak=[0.75, 0.74, 0.85])
    # pod 3 peaks at 0.85 -> saturated; the others have 0.055 spare KV on average < 0.1
    assert sat.decide(low_spare, at(3), SPEC, {}, 0.0).setting.replicas == 4
    queue = snapshot([1, 1], waiting=[3, 3])  # spare queue 2 < 3
    assert sat.decide(queue, at(2), SPEC, {}, 0.0).setting.replicas == 3
    full = snapshot([1, 1], waiting=[6, 9])
    assert sat.decide(full, at(2), SPEC, {}, 0.0).setting.replicas == 3


def test_saturation_scales_down_only_if_one_fewer_keeps_the_headroom() -> None:
    sat = SaturationPolicy()
    quiet = snapshot([1, 1, 1], kv=[0.1, 0.1, 0.1], waiting=[0, 0, 0])
    assert sat.decide(quiet, at(3), SPEC, {}, 0.0).setting.replicas == 2
    busy = snapshot([1, 1, 1], kv=[0.5, 0.5, 0.5])  # 1.5 / 2 = 0.75: spare 0.05 < 0.1
    assert sat.decide(busy, at(3), SPEC, {}, 0.0).setting.replicas == 3
    one = snapshot([1], kv=[0.0])
    assert sat.decide(one, at(1), SPEC, {}, 0.0).setting.replicas == 1  # needs >= 2


def test_saturation_waits_while_replicas_start() -> None:
    sat = SaturationPolicy()
    starting = snapshot([1, 1], waiting=[9, 9], ready=2)
    assert sat.decide(starting, at(3), SPEC, {}, 0.0).setting.replicas == 3
    assert sat.decide(None, at(3), SPEC, {}, 0.0).reason == "MetricsMissing"


# ------------------------------------------------------------- static and the registry


def test_static_and_fixed_batch() -> None:
    d = StaticPolicy(6).decide(snapshot([1]), Setting(2, 64, 4096), SPEC, {}, 0.0)
    assert d.setting == Setting(6, 64, 4096)
    for policy in (HpaPolicy(), KpaPolicy(), SaturationPolicy()):
        d = policy.decide(snapshot([500, 500]), Setting(2, 64, 4096), SPEC, {}, 0.0)
        assert (d.setting.max_num_seqs, d.setting.max_batched_tokens) == (64, 4096)


def test_registry_builds_each_policy_with_overrides() -> None:
    ctx = PolicyContext(SPEC, Setting(2, 64, 4096), peak_replicas=lambda: 7)
    assert {"hpa", "kpa", "saturation", "static"} < set(known_names())
    assert known_names()[-1] == "oracle"
    hpa = build_policy("hpa", ctx, {"target": "0.7", "metric": "kv"})
    assert isinstance(hpa, HpaPolicy) and (hpa.target, hpa.metric) == (0.7, "kv")
    assert build_policy("static", ctx) == StaticPolicy(7)
    assert build_policy("static", ctx, {"replicas": "3"}) == StaticPolicy(3)
    slotune = build_policy("slotune", ctx, {"burn_exponents": "1.5,2"})
    assert isinstance(slotune, SlotunePolicy) and slotune.config.burn_exponents == (1.5, 2.0)
    with pytest.raises(ValueError, match="no setting 'nope'"):
        build_policy("kpa", ctx, {"nope": "1"})
    with pytest.raises(ValueError, match="unknown policy"):
        build_policy("slotune-x", ctx)
