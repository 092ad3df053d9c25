"""Speed, memory and determinism of `slotune sim`.

    .venv/bin/python bench/bench_sim.py            # every case (about 5 minutes on 2 cores)
    .venv/bin/python bench/bench_sim.py --case hpa # one case, in this process

Targets (issue 4): one policy over a 1-hour trace at 50 req/s on average with up to 20
replicas in <= 60 s and <= 2 GB; the full comparison with the oracle in <= 10 minutes;
the same seed gives byte-identical JSON.

The 1-hour trace is the Azure 2023 conversation trace superimposed 9 times (49.8 req/s on
average, 74 req/s in the busiest minute). Each case runs in a fresh process so that its
peak resident memory is its own.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

TRACE = ("azure-conv", 9.0)
SLO = ("500ms", "25ms")


def _scenario(policies: list[str], duration_s: float | None = None) -> tuple[object, list[str]]:
    from slotune.api.spec import LLMServiceSpec
    from slotune.policy.types import PolicySpec, Setting
    from slotune.sim.cluster import ClusterConfig
    from slotune.sim.profiles import get_profile
    from slotune.sim.report import Scenario
    from slotune.sim.traces import load_trace, superimpose

    spec = PolicySpec.from_spec(
        LLMServiceSpec.model_validate(
            {
                "model": {"name": "bench"},
                "slo": {"ttft": {"target": SLO[0]}, "itl": {"target": SLO[1]}},
                "scaling": {"minReplicas": 1, "maxReplicas": 20},
            }
        )
    )
    trace = superimpose(load_trace(TRACE[0]), TRACE[1], seed=0)
    if duration_s is not None:
        trace = trace.cut(duration_s)
    scenario = Scenario(
        trace=trace,
        profile=get_profile("llama-3-8b-h100"),
        spec=spec,
        initial=Setting(0, 128, 8192),
        cluster=ClusterConfig(),
        seed=0,
    )
    return scenario, policies


def run_case(case: str) -> dict[str, object]:
    """One measurement, in this process."""
    from slotune.policy.types import Setting
    from slotune.sim.baselines import HpaPolicy, StaticPolicy
    from slotune.sim.harness import simulate
    from slotune.sim.policies import PolicyContext, build_policy, known_names
    from slotune.sim.report import run_comparison, summaries, to_json

    started = time.perf_counter()
    out: dict[str, object] = {"case": case}
    if case in ("hpa", "static-20", "slotune"):
        scenario, _ = _scenario([])
        requests = scenario.trace.requests()  # type: ignore[attr-defined]
        ctx = PolicyContext(scenario.spec, Setting(8, 128, 8192), lambda: 20)  # type: ignore[attr-defined]
        policy = (
            StaticPolicy(20)
            if case == "static-20"
            else HpaPolicy()
            if case == "hpa"
            else build_policy("slotune", ctx)
        )
        replicas = 20 if case == "static-20" else 8
        result = simulate(
            policy,
            requests,
            scenario.spec,  # type: ignore[attr-defined]
            scenario.profile,  # type: ignore[attr-defined]
            initial=Setting(replicas, 128, 8192),
            duration_s=scenario.trace.duration_s,  # type: ignore[attr-defined]
        )
        summary = result.summary(scenario.spec)  # type: ignore[attr-defined]
        out.update(
            requests=len(requests),
            max_replicas=summary["max_replicas"],
            gpu_hours=round(summary["gpu_hours"], 3),
            window_attainment=round(summary["window_attainment"], 3),
        )
    elif case in ("full", "determinism"):
        duration = None if case == "full" else 900.0
        names = known_names()  # every policy and the oracle
        digests = []
        for _ in range(1 if case == "full" else 2):
            scenario, _ = _scenario(names, duration)
            comparison = run_comparison(scenario, names)  # type: ignore[arg-type]
            text = json.dumps(to_json(comparison), indent=1)
            digests.append(hashlib.sha256(text.encode()).hexdigest()[:16])
        out["json_sha256"] = digests
        if case == "determinism":
            out["identical"] = len(set(digests)) == 1
        else:
            out["policies"] = {
                name: {
                    "gpu_hours": round(row["gpu_hours"], 3),
                    "window_attainment": round(row["window_attainment"], 3),
                    "ratio_to_oracle": row["ratio_to_oracle"] and round(row["ratio_to_oracle"], 2),
                }
                for name, row in summaries(comparison).items()
            }
    else:
        raise SystemExit(f"unknown case {case!r}")
    out["wall_s"] = round(time.perf_counter() - started, 1)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", help="static-20, hpa, slotune, full or determinism")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case)))
        return 0
    print(f"$ {' '.join([os.path.basename(sys.executable), *sys.argv])}")
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    print(
        f"{platform.node()} {cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )
    print(f"trace: {TRACE[0]} superimposed x{TRACE[1]:g} (1 hour, ~50 req/s); SLO {SLO}")
    ok = True
    from slotune.sim.policies import known_names

    cases = ["static-20", "hpa", *(["slotune"] if "slotune" in known_names() else []), "full"]
    for case in (*cases, "determinism"):
        done = subprocess.run(
            [sys.executable, __file__, "--case", case],
            check=True,
            capture_output=True,
            text=True,
        )
        result = json.loads(done.stdout.strip().splitlines()[-1])
        print(json.dumps(result))
        if case in ("static-20", "hpa", "slotune"):
            ok &= result["wall_s"] <= 60 and result["peak_rss_mb"] <= 2048
        elif case == "full":
            ok &= result["wall_s"] <= 600
        else:
            ok &= bool(result["identical"])
    print("all targets met" if ok else "a target was missed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
