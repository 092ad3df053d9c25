"""`make demo`'s surge in the simulator, at every phase of the operator's cycle against it.

The demo drives 4 req/s, a 3x surge and 4 req/s again at one emulated Llama 3 8B replica with
a tight SLO (p95 TTFT <= 500 ms), tuned every 10 s from Prometheus scraped every 5 s. One
replica at 64 sequences fills within about five seconds of the surge, so how many surge
requests keep their TTFT depends on when, within its 10 s cycle, the operator first sees the
surge: in real time that phase is chance, and two demo runs can tell different stories. This
runs the same load, example and policy in the simulator with the surge starting at each second
of the cycle and the cycle at several offsets from the scrapes, and prints what each run gives
and the spread. Usage:

    .venv/bin/python bench/demo_surge.py [--phases 10] [--offsets 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import numpy as np
import yaml

from slotune.api.spec import LLMServiceSpec
from slotune.demo import EXAMPLE, DemoPlan
from slotune.policy.slotune import SlotunePolicy
from slotune.policy.types import PolicySpec, Setting
from slotune.sim.cluster import ClusterConfig
from slotune.sim.engine import Request
from slotune.sim.harness import HarnessConfig, simulate
from slotune.sim.profiles import get_profile

SCRAPE_S = 5.0  # the demo sandbox's scrape interval
# A new pod serves after the demo's 10 s model load plus about two seconds for the
# scheduler, kwok and the pod bridge to start its emulator.
COLD_START_S = 12.0


@dataclass(frozen=True)
class SurgeRun:
    surge_at_s: float  # when the surge began, s from load start
    tick_offset_s: float  # the operator's cycle against the scrapes
    first_scale_up_s: float | None  # after the surge began
    peak_replicas: int
    surge_within_ttft: float  # share of surge requests with TTFT <= target
    surge_ttft_p95_s: float
    gpu_hours: float


def run_once(spec: PolicySpec, initial: Setting, plan: DemoPlan, tick_offset_s: float) -> SurgeRun:
    scenario = plan.scenario()
    arrivals = scenario.arrivals(plan.seed)
    requests = [
        Request(i, a.at_s, a.prompt_tokens, a.output_tokens) for i, a in enumerate(arrivals)
    ]
    result = simulate(
        SlotunePolicy(),
        requests,
        spec,
        get_profile("llama-3-8b-h100"),
        initial=initial,
        cluster_config=ClusterConfig(
            gpus_per_replica=spec.gpus_per_replica, cold_start_s=COLD_START_S
        ),
        config=HarnessConfig(
            scrape_interval_s=SCRAPE_S,
            report_step_s=SCRAPE_S,
            attainment_window_s=spec.window_s,
            tick_offset_s=tick_offset_s,
        ),
        duration_s=scenario.duration_s,
    )
    start, end = plan.before_s, plan.before_s + plan.surge_s
    ups = [
        d.t_s - start
        for d in result.decisions
        if d.t_s >= start and d.action in ("ScaleUp", "ScaleAndRetune") and d.replicas > 1
    ]
    outcomes = result.outcomes
    in_surge = (outcomes.arrival_s >= start) & (outcomes.arrival_s < end)
    ttft = outcomes.ttft_s[in_surge]
    return SurgeRun(
        surge_at_s=start,
        tick_offset_s=tick_offset_s,
        first_scale_up_s=ups[0] if ups else None,
        peak_replicas=max(d.replicas for d in result.decisions),
        surge_within_ttft=float(np.mean(ttft <= spec.ttft_target_s)),
        surge_ttft_p95_s=float(np.percentile(ttft, 95)),
        gpu_hours=result.gpu_hours,
    )


def _spread(values: list[float | None] | list[float] | list[int], fmt: str) -> str:
    """'low-high' over the cycle offsets of one surge start ('-' where none)."""
    known = [v for v in values if v is not None]
    if not known:
        return "-"
    low, high = fmt.format(min(known)), fmt.format(max(known))
    return low if low == high else f"{low}-{high}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--phases", type=int, default=10, help="surge starts, 1 s apart")
    parser.add_argument("--offsets", type=int, default=5, help="cycle offsets against scrapes")
    args = parser.parse_args()
    print(f"$ {' '.join([os.path.basename(sys.executable), *sys.argv])}")
    print(
        f"{platform.node()} {platform.processor() or platform.machine()} "
        f"{os.cpu_count()} CPUs, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )
    document = yaml.safe_load(EXAMPLE.read_text())
    service = LLMServiceSpec.model_validate(document["spec"])
    spec = PolicySpec.from_spec(service)
    batching = service.batching
    initial = Setting(
        service.scaling.min_replicas,
        batching.max_num_seqs.initial,
        batching.max_batched_tokens.initial,
    )
    base = DemoPlan()
    started = time.monotonic()
    runs = []
    for phase in range(args.phases):
        # A longer steady phase moves the surge against the operator's cycle (and draws other
        # Poisson arrivals for it: each run is another sample of the same load).
        plan = replace(base, before_s=base.before_s + phase)
        for k in range(args.offsets):
            offset = 0.5 + k * (SCRAPE_S - 1.0) / max(1, args.offsets - 1)
            runs.append(run_once(spec, initial, plan, offset))
    print(
        f"\n{len(runs)} runs ({time.monotonic() - started:.0f}s): the demo's load (seed "
        f"{base.seed}), {EXAMPLE.name}, scrapes every {SCRAPE_S:g} s, cold start "
        f"{COLD_START_S:g} s\n"
    )
    print(
        "| surge at (s) | first scale-up after (s) | peak replicas | surge TTFT <= target "
        "| surge p95 TTFT | GPU-h |"
    )
    print("|---|---|---|---|---|---|")
    for at in sorted({r.surge_at_s for r in runs}):
        rows = [r for r in runs if r.surge_at_s == at]
        print(
            f"| {at:g} | {_spread([r.first_scale_up_s for r in rows], '{:.1f}')} | "
            f"{_spread([r.peak_replicas for r in rows], '{}')} | "
            f"{_spread([r.surge_within_ttft for r in rows], '{:.1%}')} | "
            f"{_spread([r.surge_ttft_p95_s * 1000 for r in rows], '{:.0f}')} ms | "
            f"{_spread([r.gpu_hours for r in rows], '{:.3f}')} |"
        )
    shares = [r.surge_within_ttft for r in runs]
    ups = [r.first_scale_up_s for r in runs if r.first_scale_up_s is not None]
    peaks = sorted({r.peak_replicas for r in runs})
    print(
        f"\nsurge requests within the TTFT target: median {statistics.median(shares):.1%}, "
        f"range {min(shares):.1%}-{max(shares):.1%}; first scale-up median "
        f"{statistics.median(ups):.1f} s after the surge (range {min(ups):.1f}-{max(ups):.1f}); "
        f"peak replicas {', '.join(map(str, peaks))}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
