"""Tuning quality: slotune's policy against the baselines and the hindsight oracle.

Runs `slotune sim` on each scenario x SLO class with every policy (one default configuration
each, nothing tuned per scenario) and prints one markdown table per run, ready for
bench/RESULTS.md. Usage:

    .venv/bin/python bench/bench_policy.py [--quick | --sweep | --held-out] [--model PROFILE]
        [--scenarios a,b] [--slo standard|interactive] [--seed N] [--out DIR] [--jobs N]

`--quick` keeps the two 1-hour synthetic scenarios only (a few minutes on 2 cores); the full
set adds the Azure conversation and code traces scaled x20 and the Mooncake trace. `--sweep`
instead runs each baseline over its main setting (HPA utilisation target, KPA concurrency
target, static replica count as shares of slotune's peak) on the quick scenarios, or on those
`--scenarios` names, to draw its GPU-hours vs attainment curve (printed, and plotted into
DIR/sweep.png; `--jobs 2` runs two settings at a time). `--seed` draws another
superimposition of the scaled Azure traces (and other synthetic arrivals): one seed is one draw.
`--held-out` runs scenarios the policy was never tuned on (other GPUs, an FP8 model, SLO
classes between the two, p99 targets, vLLM's default buckets, on/off bursts, constant load)
with slotune, the default HPA and the oracle: a check that the one configuration generalises.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SLO_CLASSES = {"standard": ("2s", "60ms"), "interactive": ("500ms", "25ms")}
QUICK = {
    "step-3x": ["--trace", "step:low=10,high=30,at=1800,duration=3600"],
    "diurnal": ["--trace", "diurnal:mean=20,amplitude=0.6,duration=3600"],
}
FULL = {
    **QUICK,
    "azure-conv-x20": ["--trace", "azure-conv", "--scale", "20", "--duration", "1h"],
    "azure-code-x20": ["--trace", "azure-code", "--scale", "20", "--duration", "1h"],
    "mooncake": ["--trace", "mooncake-synthetic", "--duration", "1h"],
}
# Each with its own model and SLO: (name, sim arguments).
HELD_OUT = {
    "a100-diurnal-std": [
        "--trace", "diurnal:mean=12,amplitude=0.6,duration=3600", "--model", "llama-3-8b-a100",
        "--slo-ttft", "2s", "--slo-itl", "60ms",
    ],
    "70b-fp8-step-1s-40ms": [
        "--trace", "step:low=10,high=30,at=1500,duration=3600",
        "--model", "llama-3-70b-h100x4-fp8", "--slo-ttft", "1s", "--slo-itl", "40ms",
    ],
    "bursty-std": [
        "--trace", "bursty:on=40,off=10,on_s=120,off_s=480,duration=3600",
        "--slo-ttft", "2s", "--slo-itl", "60ms",
    ],
    "constant-int": [
        "--trace", "poisson:rate=40,duration=3600", "--slo-ttft", "500ms", "--slo-itl", "25ms",
    ],
    "azure-conv-x10-1s-40ms": [
        "--trace", "azure-conv", "--scale", "10", "--duration", "1h",
        "--slo-ttft", "1s", "--slo-itl", "40ms",
    ],
    "diurnal-int-default-buckets": [
        "--trace", "diurnal:mean=20,amplitude=0.6,duration=3600", "--no-slo-buckets",
        "--slo-ttft", "500ms", "--slo-itl", "25ms",
    ],
    "diurnal-std-p99": [
        "--trace", "diurnal:mean=20,amplitude=0.6,duration=3600", "--percentile", "99",
        "--slo-ttft", "2s", "--slo-itl", "60ms",
    ],
    "step-std-p99": [
        "--trace", "step:low=10,high=30,at=1800,duration=3600", "--percentile", "99",
        "--slo-ttft", "2s", "--slo-itl", "60ms",
    ],
    "code-lengths-step-1s-30ms": [
        "--trace", "step:low=5,high=15,at=1200,duration=3600,tokens=azure-code",
        "--slo-ttft", "1s", "--slo-itl", "30ms",
    ],
    # A GPU budget the load needs all of: a rollout cannot surge (session 20).
    "gpu-budget-3-constant-std": [
        "--trace", "poisson:rate=40,duration=3600", "--gpu-budget", "3",
        "--slo-ttft", "2s", "--slo-itl", "60ms",
    ],
}  # fmt: skip
HELD_OUT_POLICIES = "slotune,hpa,oracle"
POLICIES = "slotune,hpa,kpa,saturation,static,oracle"
MODEL = "llama-3-8b-h100"  # the default profile; --model changes it
SWEEPS = {
    "hpa": ("target", ("0.2", "0.3", "0.4", "0.5", "0.7", "0.9")),
    "kpa": ("target", ("5", "10", "20", "40", "70")),
}
# Static counts scale with the scenario: from 40% to 120% of slotune's own peak replica count,
# every count up to 8 of them, else evenly spaced (quick 8B scenarios, peak 5: 2..6 replicas).
STATIC_RANGE = (0.4, 1.2)
STATIC_COUNTS = 8
COLUMNS = (
    "gpu_hours",
    "ratio_to_oracle",
    "window_attainment",
    "request_goodput",
    "ttft_p95",
    "itl_p95",
)


def run(name: str, args: list[str], slo: str, out: Path, model: str, seed: int) -> str:
    ttft, itl = SLO_CLASSES[slo]
    return run_table(
        f"{name}, {slo} (TTFT p95 <= {ttft}, ITL p95 <= {itl})",
        [*args, "--slo-ttft", ttft, "--slo-itl", itl, "--model", model],
        out / f"{name}-{slo}.json",
        seed,
        POLICIES,
    )


def run_table(title: str, args: list[str], path: Path, seed: int, policies: str) -> str:
    command = [
        sys.executable, "-m", "slotune.cli", "sim", *args, "--seed", str(seed),
        "--policies", policies, "--no-progress", "--json", str(path),
    ]  # fmt: skip
    started = time.monotonic()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.monotonic() - started
    result = json.loads(path.read_text())["policies"]
    lines = [
        f"#### {title}; {wall:.0f} s wall",
        "",
        "| policy | GPU-h | x oracle | windows ok | goodput | TTFT p95 | ITL p95 |",
        "|---|---|---|---|---|---|---|",
    ]
    for policy, numbers in result.items():
        cells = []
        for column in COLUMNS:
            value = numbers.get(column)
            if value is None:
                cells.append("-")
            elif column in ("window_attainment", "request_goodput"):
                cells.append(f"{100 * value:.1f}%")
            elif column in ("ttft_p95", "itl_p95"):
                cells.append(f"{1000 * value:.0f} ms")
            else:
                cells.append(f"{value:.3g}")
        lines.append(f"| {policy} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def cheapest_match(results: list[tuple[str, str, float, float]]) -> str:
    """One summary row: slotune against the cheapest baseline setting reaching its attainment.

    `results` holds (policy, setting, GPU-hours, window attainment), slotune's first. Where no
    setting reaches slotune's attainment, the row compares attainment at about equal
    GPU-hours (the baseline setting whose GPU-hours are closest) instead, as the issue asks.
    """
    _, _, gpu_h, attained = results[0]
    baselines = results[1:]
    reaching = [r for r in baselines if r[3] >= attained - 1e-9]
    head = f"{gpu_h:.2f} ({100 * attained:.1f}%)"
    if reaching:
        policy, setting, cost, reached = min(reaching, key=lambda r: r[2])
        saving = 100 * (1 - gpu_h / cost)
        return f"| {head} | {policy} {setting}: {cost:.2f} ({100 * reached:.1f}%) | " + (
            f"{saving:.0f}% fewer GPU-h |" if saving >= 0 else f"{-saving:.0f}% more GPU-h |"
        )
    policy, setting, cost, reached = min(baselines, key=lambda r: abs(r[2] - gpu_h))
    return (
        f"| {head} | none reaches it; closest in GPU-h: {policy} {setting}: {cost:.2f} "
        f"({100 * reached:.1f}%) | {100 * (attained - reached):+.1f} points of attainment |"
    )


def sweep(
    name: str, args: list[str], slo: str, out: Path, model: str, seed: int, jobs: int = 1
) -> tuple[str, str, list[dict[str, Any]]]:
    """Each baseline setting on its own run (`jobs` at a time); slotune's default next to
    them. Returns the table, the summary row and the runs (for `plot_sweeps`)."""
    ttft, itl = SLO_CLASSES[slo]

    def one(policy: str, field: str = "", value: str = "") -> dict[str, Any]:
        label = f"{field}={value}" if field else "default"
        path = out / f"sweep-{name}-{slo}-{policy}-{label}.json"
        command = [
            sys.executable, "-m", "slotune.cli", "sim", *args, "--slo-ttft", ttft,
            "--slo-itl", itl, "--model", model, "--seed", str(seed), "--policies", policy,
            "--no-progress",
            "--json", str(path),
        ]  # fmt: skip
        if field:
            command += ["--policy-option", f"{policy}.{field}={value}"]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        numbers: dict[str, Any] = json.loads(path.read_text())["policies"][policy]
        return {"policy": policy, "label": label, **numbers}

    runs = [one("slotune")]
    peak = int(runs[0]["max_replicas"])
    low, high = (max(1, round(share * peak)) for share in STATIC_RANGE)
    static_counts = range(low, high + 1, max(1, math.ceil((high - low) / STATIC_COUNTS)))
    settings = [*SWEEPS.items(), ("static", ("replicas", tuple(map(str, static_counts))))]
    chosen = [(policy, field, value) for policy, (field, values) in settings for value in values]
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        runs += list(pool.map(lambda setting: one(*setting), chosen))
        # The grid steps by several replicas on large fleets; the cheapest static fleet that
        # holds slotune's attainment lies between the grid's last count short of it and its
        # first count reaching it, so every count in between is run too.
        between = static_gap(runs[1:], runs[0]["window_attainment"])
        extra = list(pool.map(lambda count: one("static", "replicas", str(count)), between))
    runs += extra
    runs[1:] = sorted(runs[1:], key=lambda r: (r["policy"], _setting_value(r["label"])))
    rows = ["| policy | setting | GPU-h | windows ok | goodput |", "|---|---|---|---|---|"]
    rows += [
        f"| {r['policy']} | {r['label']} | {r['gpu_hours']:.3g} | "
        f"{100 * r['window_attainment']:.1f}% | {100 * r['request_goodput']:.1f}% |"
        for r in runs
    ]
    results = [(r["policy"], r["label"], r["gpu_hours"], r["window_attainment"]) for r in runs]
    table = f"#### sweep: {name}, {slo}\n\n" + "\n".join(rows) + "\n"
    return table, f"| {name}, {slo} " + cheapest_match(results), runs


def _setting_value(label: str) -> float:
    return float(label.split("=", 1)[1]) if "=" in label else -math.inf


def static_gap(runs: list[dict[str, Any]], attainment: float) -> list[int]:
    """Static replica counts the grid skipped between its largest count short of
    `attainment` and its smallest count reaching it (static attainment grows with the count)."""
    counts = {int(_setting_value(r["label"])): r["window_attainment"] for r in runs
              if r["policy"] == "static"}  # fmt: skip
    reaching = [c for c, a in counts.items() if a >= attainment - 1e-9]
    if not reaching:
        return []
    first = min(reaching)
    short = [c for c in counts if c < first]
    if not short:  # the grid's smallest fleet already reaches it
        return []
    return list(range(max(short) + 1, first))


def plot_sweeps(sweeps: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """One panel per scenario x class: each baseline's GPU-hours against the windows it
    holds, one point per setting joined in the setting's order, and slotune's one default
    configuration as a star. Up and to the left is better; the dotted line is the 99%
    target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(2, len(sweeps))
    rows = math.ceil(len(sweeps) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(6.5 * columns, 4.6 * rows), squeeze=False)
    for ax in axes.flat[len(sweeps) :]:
        ax.set_visible(False)
    for ax, (title, runs) in zip(axes.flat, sweeps.items(), strict=False):
        for policy in dict.fromkeys(r["policy"] for r in runs[1:]):
            points = [r for r in runs[1:] if r["policy"] == policy]
            x = [r["gpu_hours"] for r in points]
            y = [100 * r["window_attainment"] for r in points]
            (line,) = ax.plot(x, y, marker="o", ms=4, lw=1, label=policy)
            for r, xi, yi in zip(points, x, y, strict=True):
                setting = r["label"].split("=", 1)[-1]
                ax.annotate(setting, (xi, yi), fontsize=7, color=line.get_color(),
                            xytext=(3, 3), textcoords="offset points")  # fmt: skip
        mine = runs[0]
        ax.plot(
            mine["gpu_hours"], 100 * mine["window_attainment"], marker="*", ms=16,
            color="crimson", ls="none", label="slotune (default)", zorder=5,
        )  # fmt: skip
        ax.axhline(99, color="grey", ls=":", lw=1)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("GPU-hours")
        ax.set_ylabel("windows meeting the SLO (%)")
        ax.set_ylim(-5, 105)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle("Baselines swept over their main setting against slotune's one configuration")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sweep", action="store_true", help="sweep the baselines' settings")
    parser.add_argument(
        "--held-out", action="store_true", help="scenarios the policy was not tuned on"
    )
    parser.add_argument("--out", type=Path, default=Path("out/bench-policy"))
    parser.add_argument("--model", default=MODEL, help="performance profile (llama-3-70b-h100x4)")
    parser.add_argument(
        "--scenarios", help="comma-separated subset of the scenarios (default: all of the set)"
    )
    parser.add_argument("--slo", choices=list(SLO_CLASSES), help="one SLO class (default: both)")
    parser.add_argument("--seed", type=int, default=0, help="the simulator's seed (default: 0)")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="sweep runs at a time (default: 1; one per core at most)",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"command: {' '.join(sys.argv)}")
    print(f"machine: {platform.node()} {platform.machine()}, python {platform.python_version()}")
    profile = "per scenario" if args.held_out else args.model
    print(f"date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, profile {profile}, seed {args.seed}\n")
    if args.held_out:
        for name, scenario in HELD_OUT.items():
            if not args.scenarios or name in args.scenarios.split(","):
                path = args.out / f"held-out-{name}.json"
                print(run_table(name, scenario, path, args.seed, HELD_OUT_POLICIES), flush=True)
        return 0
    chosen = QUICK if args.quick or args.sweep else FULL
    if args.scenarios:
        names = args.scenarios.split(",")
        unknown = [n for n in names if n not in FULL]
        if unknown:
            parser.error(f"unknown scenarios {unknown}; known: {', '.join(FULL)}")
        chosen = {n: FULL[n] for n in names}
    summary = [
        "| scenario | slotune GPU-h (windows) | cheapest baseline setting at >= that attainment "
        "| slotune against it |",
        "|---|---|---|---|",
    ]
    swept: dict[str, list[dict[str, Any]]] = {}
    for slo in [args.slo] if args.slo else SLO_CLASSES:
        for name, scenario in chosen.items():
            if args.sweep:
                table, row, runs = sweep(
                    name, scenario, slo, args.out, args.model, args.seed, args.jobs
                )
                print(table, flush=True)
                summary.append(row)
                swept[f"{name}, {slo} ({args.model})"] = runs
            else:
                print(run(name, scenario, slo, args.out, args.model, args.seed), flush=True)
    if args.sweep:
        print("\n".join(summary))
        figure = args.out / "sweep.png"
        plot_sweeps(swept, figure)
        print(f"\nplot: {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
