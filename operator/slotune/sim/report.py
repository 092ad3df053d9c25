"""One scenario, several policies and the oracle: run them, tabulate, write JSON, plot.

The JSON is deterministic: the same inputs and seed give byte-identical output (nothing
measured on the wall clock goes into it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slotune.policy.types import PolicySpec, Setting
from slotune.sim.baselines import StaticPolicy
from slotune.sim.cluster import ClusterConfig
from slotune.sim.engine import Request
from slotune.sim.harness import HarnessConfig, RunResult, simulate
from slotune.sim.oracle import OracleConfig, OracleResult, run_oracle
from slotune.sim.perf import PerformanceModel, PerfProfile
from slotune.sim.policies import ORACLE, PolicyContext, build_policy
from slotune.sim.traces import Trace

REPORT_VERSION = 1
Progress = Callable[[str, float], None]


@dataclass(frozen=True)
class Scenario:
    """Everything a comparison depends on."""

    trace: Trace
    profile: PerfProfile
    spec: PolicySpec
    initial: Setting  # replicas 0: what the first window needs (see run_comparison)
    cluster: ClusterConfig
    harness: HarnessConfig = field(default_factory=HarnessConfig)
    oracle: OracleConfig = field(default_factory=OracleConfig)
    seed: int = 0
    overrides: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Comparison:
    scenario: Scenario
    initial: Setting
    initial_source: str
    runs: Mapping[str, RunResult]
    oracle: OracleResult | None
    order: tuple[str, ...]


def _first_window_replicas(
    scenario: Scenario, perf: PerformanceModel, requests: Sequence[Request], setting: Setting
) -> int:
    """What the oracle's search finds for the first window alone (a few probes)."""
    window = min(scenario.oracle.window_s, scenario.trace.duration_s)
    first = [r for r in requests if r.arrival_s < window + scenario.oracle.tail_s]
    result = run_oracle(
        first,
        scenario.spec,
        perf,
        initial=setting,
        duration_s=window,
        cluster_config=scenario.cluster,
        config=OracleConfig(
            window_s=scenario.oracle.window_s,
            warmup_s=scenario.oracle.warmup_s,
            tail_s=scenario.oracle.tail_s,
            settings=((setting.max_num_seqs, setting.max_batched_tokens),),
        ),
        slo_buckets=scenario.harness.slo_buckets,
    )
    return result.windows[0].initial_needs or scenario.spec.replica_ceiling


def _named(progress: Progress | None, name: str) -> Callable[[float], None] | None:
    if progress is None:
        return None
    report = progress

    def forward(fraction: float) -> None:
        report(name, fraction)

    return forward


def run_comparison(
    scenario: Scenario, names: Sequence[str], *, progress: Progress | None = None
) -> Comparison:
    """Run every named policy (and the oracle when named or needed) on the scenario."""
    perf = PerformanceModel(scenario.profile)
    requests = scenario.trace.requests()
    duration = scenario.trace.duration_s
    spec = scenario.spec
    base = scenario.initial
    oracle: OracleResult | None = None

    def get_oracle() -> OracleResult:
        nonlocal oracle
        if oracle is None:
            oracle = run_oracle(
                requests,
                spec,
                perf,
                initial=base,
                duration_s=duration,
                cluster_config=scenario.cluster,
                config=scenario.oracle,
                slo_buckets=scenario.harness.slo_buckets,
                progress=_named(progress, ORACLE),
            )
        return oracle

    static_given = "replicas" in scenario.overrides.get("static", {})
    if ORACLE in names or ("static" in names and not static_given):
        get_oracle()
    first_needs = oracle.windows[0].initial_needs if oracle is not None else None
    if base.replicas > 0:
        initial, source = base, "given"
    elif first_needs:
        initial = Setting(first_needs, base.max_num_seqs, base.max_batched_tokens)
        source = "the oracle's first window at the initial batch setting"
    else:
        replicas = _first_window_replicas(scenario, perf, requests, base)
        initial = Setting(replicas, base.max_num_seqs, base.max_batched_tokens)
        source = "the oracle's search on the first window at the initial batch setting"

    ctx = PolicyContext(
        spec=spec,
        initial=initial,
        peak_replicas=lambda: get_oracle().peak_replicas(spec.replica_ceiling),
    )
    runs: dict[str, RunResult] = {}
    for name in names:
        if name == ORACLE:
            continue
        policy = build_policy(name, ctx, scenario.overrides.get(name))
        start = initial
        if isinstance(policy, StaticPolicy) and policy.replicas:
            # Provisioned for the peak from the start, not scaled there at the first tick.
            start = Setting(policy.replicas, initial.max_num_seqs, initial.max_batched_tokens)
        runs[name] = simulate(
            policy,
            requests,
            spec,
            perf,
            initial=start,
            cluster_config=scenario.cluster,
            config=scenario.harness,
            duration_s=duration,
            progress=_named(progress, name),
        )
    return Comparison(scenario, initial, source, runs, oracle, tuple(names))


# ------------------------------------------------------------------------------- JSON


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 6)
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_round(v) for v in value]
    return value


def summaries(comparison: Comparison) -> dict[str, dict[str, Any]]:
    spec = comparison.scenario.spec
    out: dict[str, dict[str, Any]] = {}
    oracle_hours = comparison.oracle.gpu_hours if comparison.oracle is not None else None
    for name in comparison.order:
        if name == ORACLE:
            if comparison.oracle is None:
                continue
            summary = comparison.oracle.summary(spec)
        else:
            summary = comparison.runs[name].summary(spec)
        summary["ratio_to_oracle"] = summary["gpu_hours"] / oracle_hours if oracle_hours else None
        out[name] = summary
    return out


def to_json(comparison: Comparison) -> dict[str, Any]:
    s = comparison.scenario
    spec = s.spec
    perf = PerformanceModel(s.profile)
    initial = comparison.initial
    timelines: dict[str, Any] = {}
    for name, run in comparison.runs.items():
        t = run.timeline
        timelines[name] = {
            "t_s": [p.t_s for p in t],
            "load_rps": [p.load_rps for p in t],
            "ttft": [p.ttft for p in t],
            "itl": [p.itl for p in t],
            "replicas": [p.replicas for p in t],
            "ready": [p.ready for p in t],
            "pending": [p.pending for p in t],
            "gpus": [p.gpus for p in t],
            "max_num_seqs": [p.max_num_seqs for p in t],
            "max_batched_tokens": [p.max_batched_tokens for p in t],
            "reason": [p.reason for p in t],
            # The window quantiles the policy saw at its latest tick, and what its latest
            # decision predicted them to be under the setting it chose.
            "seen_ttft": [p.seen_ttft for p in t],
            "seen_itl": [p.seen_itl for p in t],
            "predicted_ttft": [p.predicted_ttft for p in t],
            "predicted_itl": [p.predicted_itl for p in t],
        }
    oracle: dict[str, Any] | None = None
    if comparison.oracle is not None:
        o = comparison.oracle
        oracle = {
            "gpu_hours": o.gpu_hours,
            "fluid_gpu_hours": o.fluid_gpu_hours,
            "window_s": s.oracle.window_s,
            "method": (
                "per window, the fewest replicas meeting every SLO percentile in a simulation "
                "with no cold start, over a few batch settings; fluid: token rates over "
                "per-replica throughput at the ITL target"
            ),
            "windows": [
                {
                    "start_s": w.start_s,
                    "end_s": w.end_s,
                    "replicas": w.replicas,
                    "max_num_seqs": w.max_num_seqs,
                    "max_batched_tokens": w.max_batched_tokens,
                    "meets": w.meets,
                    "fluid_replicas": w.fluid_replicas,
                    "initial_setting_needs": w.initial_needs,
                }
                for w in o.windows
            ],
        }
    document = {
        "version": REPORT_VERSION,
        "seed": s.seed,
        "trace": s.trace.describe(),
        "model": {
            "profile": s.profile.name,
            "gpus_per_replica": s.cluster.gpus_per_replica,
            "kv_cache_tokens": perf.kv_cache_capacity(initial.max_batched_tokens).tokens,
        },
        "slo": {
            "ttft_target_s": spec.ttft_target_s,
            "ttft_percentile": spec.ttft_percentile,
            "itl_target_s": spec.itl_target_s,
            "itl_percentile": spec.itl_percentile,
            "e2e_target_s": spec.e2e_target_s,
            "e2e_percentile": spec.e2e_percentile,
            "window_s": spec.window_s,
        },
        "setup": {
            "initial": {
                "replicas": initial.replicas,
                "max_num_seqs": initial.max_num_seqs,
                "max_batched_tokens": initial.max_batched_tokens,
                "replicas_from": comparison.initial_source,
            },
            "min_replicas": spec.min_replicas,
            "max_replicas": spec.max_replicas,
            "gpu_budget": s.cluster.gpu_budget
            if s.cluster.gpu_budget is not None
            else spec.gpu_budget,
            "cold_start_s": s.cluster.cold_start_s,
            "termination_grace_s": s.cluster.termination_grace_s,
            "balancer": s.cluster.balancer,
            "tuning_interval_s": spec.interval_s,
            "scrape_interval_s": s.harness.scrape_interval_s,
            "slo_buckets": s.harness.slo_buckets,
            "attainment_window_s": s.harness.attainment_window_s,
            "policy_options": {k: dict(v) for k, v in sorted(s.overrides.items())},
        },
        "policies": summaries(comparison),
        "oracle": oracle,
        "timelines": timelines,
    }
    rounded: dict[str, Any] = _round(document)
    return rounded


# ------------------------------------------------------------------------------ table


def _fmt(value: Any, unit: str = "", digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if unit == "%":
            return f"{100 * value:.1f}%"
        if unit == "ms":
            return f"{1000 * value:.0f}ms" if value < 10 else f"{value:.1f}s"
        return f"{value:.{digits}g}"
    return str(value)


def format_table(comparison: Comparison) -> str:
    rows = summaries(comparison)
    header = (
        "policy", "GPU-h", "x oracle", "windows ok", "goodput", "TTFT p95",
        "ITL p95", "E2E p95", "scalings", "restarts",
    )  # fmt: skip
    lines = [header]
    for name, r in rows.items():
        lines.append(
            (
                name,
                _fmt(r["gpu_hours"], digits=4),
                _fmt(r["ratio_to_oracle"]),
                _fmt(r["window_attainment"], "%"),
                _fmt(r["request_goodput"], "%"),
                _fmt(r["ttft_p95"], "ms"),
                _fmt(r["itl_p95"], "ms"),
                _fmt(r["e2e_p95"], "ms"),
                _fmt(r["scale_actions"]),
                _fmt(r["restarts"]),
            )
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    text = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in lines
    ]
    text.insert(1, "  ".join("-" * w for w in widths))
    s = comparison.scenario
    spec = s.spec
    trace = s.trace
    head = [
        f"trace {trace.name}: {len(trace)} requests over {trace.duration_s:.0f} s "
        f"({trace.mean_rps:.1f} req/s, peak minute {trace.peak_rps():.1f} req/s)",
        *(f"  scaling: {step}" for step in trace.scaling),
        f"model {s.profile.name}; SLO TTFT p{spec.ttft_percentile:g} <= "
        f"{spec.ttft_target_s * 1000:g} ms, ITL p{spec.itl_percentile:g} <= "
        f"{spec.itl_target_s * 1000:g} ms"
        + (
            f", E2E p{spec.e2e_percentile or 95:g} <= {spec.e2e_target_s:g} s"
            if spec.e2e_target_s is not None
            else ""
        ),
        f"start: {comparison.initial.replicas} replicas ({comparison.initial_source}), "
        f"max_num_seqs {comparison.initial.max_num_seqs}, max_batched_tokens "
        f"{comparison.initial.max_batched_tokens}; cold start {s.cluster.cold_start_s:g} s",
    ]
    if comparison.oracle is not None:
        head.append(f"fluid lower bound: {comparison.oracle.fluid_gpu_hours:.4g} GPU-h")
    return "\n".join([*head, "", *text]) + "\n"


# ------------------------------------------------------------------------------- plot


def plot(comparison: Comparison, path: str | Path) -> None:
    """A PNG: load, p-TTFT and p-ITL against their targets, replicas and batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = comparison.scenario.spec
    fig, axes = plt.subplots(5, 1, figsize=(11, 13), sharex=True)
    ax_load, ax_ttft, ax_itl, ax_rep, ax_batch = axes
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    first = True
    for k, (name, run) in enumerate(comparison.runs.items()):
        color = colors[k % len(colors)]
        t = [p.t_s / 60 for p in run.timeline]
        if first:
            ax_load.plot(t, [p.load_rps for p in run.timeline], color="black", lw=1)
            first = False
        ax_ttft.plot(
            t,
            [math.nan if p.ttft is None else p.ttft for p in run.timeline],
            color=color,
            lw=1,
            label=name,
        )
        ax_itl.plot(
            t,
            [math.nan if p.itl is None else p.itl * 1000 for p in run.timeline],
            color=color,
            lw=1,
            label=name,
        )
        ax_rep.step(
            t,
            [p.replicas for p in run.timeline],
            where="post",
            color=color,
            lw=1.2,
            label=f"{name} (desired)",
        )
        ax_rep.plot(t, [p.ready for p in run.timeline], color=color, lw=0.8, ls=":")
        ax_batch.step(
            t, [p.max_num_seqs for p in run.timeline], where="post", color=color, lw=1.2, label=name
        )
    if comparison.oracle is not None:
        o = comparison.oracle
        edges = [w.start_s / 60 for w in o.windows] + [o.windows[-1].end_s / 60]
        reps = [w.replicas for w in o.windows]
        ax_rep.stairs(reps, edges, baseline=None, color="black", lw=1.5, ls="--", label="oracle")
        ax_batch.stairs(
            [w.max_num_seqs for w in o.windows],
            edges,
            baseline=None,
            color="black",
            lw=1.5,
            ls="--",
            label="oracle",
        )
        ttft_q = [
            o.latencies.quantile(
                "vllm:time_to_first_token_seconds", spec.ttft_percentile / 100, slice(i, i + 1)
            )
            for i in range(len(o.windows))
        ]
        itl_q = [
            o.latencies.quantile(
                "vllm:inter_token_latency_seconds", spec.itl_percentile / 100, slice(i, i + 1)
            )
            for i in range(len(o.windows))
        ]
        ax_ttft.stairs(
            [math.nan if v is None else v for v in ttft_q],
            edges,
            baseline=None,
            color="black",
            ls="--",
            label="oracle",
        )
        ax_itl.stairs(
            [math.nan if v is None else v * 1000 for v in itl_q],
            edges,
            baseline=None,
            color="black",
            ls="--",
            label="oracle",
        )
    ax_ttft.axhline(spec.ttft_target_s, color="red", lw=1, ls="-.", label="target")
    ax_itl.axhline(spec.itl_target_s * 1000, color="red", lw=1, ls="-.", label="target")
    ax_ttft.set_yscale("log")
    ax_load.set_ylabel("arrivals (req/s)")
    ax_ttft.set_ylabel(f"TTFT p{spec.ttft_percentile:g} (s)")
    ax_itl.set_ylabel(f"ITL p{spec.itl_percentile:g} (ms)")
    ax_rep.set_ylabel("replicas")
    ax_batch.set_ylabel("max_num_seqs")
    ax_batch.set_xlabel("time (min); latencies per 30 s step, oracle per window")
    for ax in axes[1:]:
        ax.legend(loc="upper left", fontsize=7, ncol=4)
        ax.grid(alpha=0.3)
    ax_load.grid(alpha=0.3)
    trace = comparison.scenario.trace
    fig.suptitle(f"{trace.name} on {comparison.scenario.profile.name}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
