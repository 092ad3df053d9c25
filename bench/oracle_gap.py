"""Where slotune's GPU-hours above the hindsight oracle's go, window by window.

The oracle (``slotune sim``'s floor) picks, for every SLO window, the fewest replicas and the
batch setting that would have met the SLO, ready from the window's start: it changes the
setting for free, from t = 0 on. Every policy starts from the engine's initial setting and
pays for a retune with a rolling restart. This runs `slotune sim --policies slotune,oracle`
on each scenario x SLO class and splits slotune's GPU-hours above the oracle's into the
windows until its first retune is in place (every pod on the new setting and ready: where the
initial setting is far from the right one, this is the start's cost) and the windows after,
and counts the GPUs held beyond the desired replicas (a rollout's surge pods, pods still
draining). It prints a table and plots slotune's GPUs over time against the oracle's per
window (DIR/oracle_gap.png). Usage:

    .venv/bin/python bench/oracle_gap.py [--quick] [--model M] [--seed N] [--out DIR] [--jobs N]
        [--reuse]

`--quick` keeps the two 1-hour synthetic scenarios; the default adds the Azure conversation
and code traces scaled x20 (their oracle takes minutes per run). `--reuse` reads the JSON a
previous run left in DIR instead of simulating again.
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
from dataclasses import dataclass
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
}
KNOBS = ("max_num_seqs", "max_batched_tokens")


@dataclass(frozen=True)
class WindowGap:
    start_s: float
    end_s: float
    slotune_gpu_h: float  # GPUs held in the window's report steps
    oracle_gpu_h: float
    beyond_desired_gpu_h: float  # GPUs held beyond the desired replicas' (surge, draining)

    @property
    def excess_gpu_h(self) -> float:
        return self.slotune_gpu_h - self.oracle_gpu_h


def window_gaps(
    timeline: dict[str, list[Any]], windows: list[dict[str, Any]], gpus_per_replica: int
) -> list[WindowGap]:
    """slotune's and the oracle's GPU-hours per oracle window. A report step (ending at t_s)
    counts in the window it ends in; the last window (which ends with the trace) also takes
    the steps after it, until the last request has finished."""
    times = timeline["t_s"]
    step_s = times[1] - times[0] if len(times) > 1 else times[0]
    gaps = []
    for n, window in enumerate(windows):
        start, end = float(window["start_s"]), float(window["end_s"])
        last = n == len(windows) - 1
        steps = [i for i, t in enumerate(times) if start < t and (last or t <= end)]
        held = sum(timeline["gpus"][i] for i in steps) * step_s / 3600
        beyond = sum(
            max(0, timeline["gpus"][i] - timeline["replicas"][i] * gpus_per_replica) for i in steps
        )
        oracle = window["replicas"] * gpus_per_replica * (end - start) / 3600
        gaps.append(WindowGap(start, end, held, oracle, beyond * step_s / 3600))
    return gaps


def rolled_out_at(timeline: dict[str, list[Any]], gpus_per_replica: int) -> float:
    """When slotune's first retune was in place: the first report step after the batch
    setting first changed with every desired replica ready and no GPU held beyond them; 0
    without a retune, the end where it never finished."""
    times = timeline["t_s"]
    first = next(
        (i for i in range(1, len(times)) if any(timeline[k][i] != timeline[k][0] for k in KNOBS)),
        None,
    )
    if first is None:
        return 0.0
    for i in range(first, len(times)):
        replicas = timeline["replicas"][i]
        if timeline["ready"][i] == replicas and timeline["gpus"][i] == replicas * gpus_per_replica:
            return float(times[i])
    return float(times[-1])


def split(gaps: list[WindowGap], rolled_out_s: float) -> dict[str, float]:
    """The excess over the oracle in the windows beginning before the first retune was in
    place and in the rest, and the GPU-hours held beyond the desired replicas."""
    before = [g for g in gaps if g.start_s < rolled_out_s]
    after = [g for g in gaps if g.start_s >= rolled_out_s]
    return {
        "slotune": sum(g.slotune_gpu_h for g in gaps),
        "oracle": sum(g.oracle_gpu_h for g in gaps),
        "before_windows": len(before),
        "before_excess": sum(g.excess_gpu_h for g in before),
        "after_excess": sum(g.excess_gpu_h for g in after),
        "after_oracle": sum(g.oracle_gpu_h for g in after),
        "beyond_desired": sum(g.beyond_desired_gpu_h for g in gaps),
    }


def _row(label: str, parts: dict[str, float], rolled_out_s: float, attainment: float) -> str:
    excess = parts["slotune"] - parts["oracle"]
    share = parts["before_excess"] / excess if excess > 0 else 0.0
    in_place = f"{rolled_out_s / 60:.0f} min" if rolled_out_s else "no retune"
    oracle_after = parts["after_oracle"]
    after_ratio = f"{1 + parts['after_excess'] / oracle_after:.2f}" if oracle_after else "-"
    return (
        f"| {label} | {parts['slotune']:.2f} | {parts['oracle']:.2f} | "
        f"{parts['slotune'] / parts['oracle']:.2f} | {100 * attainment:.1f}% | {in_place} | "
        f"{parts['before_windows']:.0f} | {parts['before_excess']:.2f} ({100 * share:.0f}%) | "
        f"{parts['after_excess']:.2f} | {after_ratio} | {parts['beyond_desired']:.2f} |"
    )


@dataclass(frozen=True)
class Run:
    label: str
    gaps: list[WindowGap]
    rolled_out_s: float
    timeline: dict[str, list[Any]]
    gpus_per_replica: int
    attainment: float


def plot_runs(runs: list[Run], path: Path) -> None:
    """One panel per run: slotune's GPUs over time, the oracle's per window, and the windows
    until slotune's first retune was in place shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(4, len(runs))
    rows = math.ceil(len(runs) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(runs) :]:
        ax.set_visible(False)
    for ax, run in zip(axes.flat, runs, strict=False):
        minutes = [t / 60 for t in run.timeline["t_s"]]
        ax.step(minutes, run.timeline["gpus"], where="pre", lw=1.2, label="slotune")
        oracle_x = [g.start_s / 60 for g in run.gaps] + [run.gaps[-1].end_s / 60]
        oracle_y = [g.oracle_gpu_h * 3600 / (g.end_s - g.start_s) for g in run.gaps]
        ax.step(oracle_x, oracle_y + oracle_y[-1:], where="post", lw=1.2, label="oracle")
        before = max((g.end_s for g in run.gaps if g.start_s < run.rolled_out_s), default=0)
        if before:
            ax.axvspan(0, before / 60, color="grey", alpha=0.15, label="until the first retune")
        ax.set_title(run.label, fontsize=9)
        ax.set_xlabel("minute", fontsize=8)
        ax.set_ylabel("GPUs", fontsize=8)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    # One legend for the figure: inside a panel it hides a fleet's tail.
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", ncol=3, fontsize=8)
    fig.suptitle("GPUs held: slotune against the hindsight oracle, per SLO window", x=0.35)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_one(
    name: str, args: list[str], slo: str, out: Path, model: str, seed: int, reuse: bool
) -> Run:
    ttft, itl = SLO_CLASSES[slo]
    path = out / f"{name}-{slo}.json"
    command = [
        sys.executable, "-m", "slotune.cli", "sim", *args, "--model", model,
        "--seed", str(seed), "--slo-ttft", ttft, "--slo-itl", itl,
        "--policies", "slotune,oracle", "--no-progress", "--json", str(path),
    ]  # fmt: skip
    if not (reuse and path.exists()):
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    result = json.loads(path.read_text())
    timeline = result["timelines"]["slotune"]
    per_replica = int(result["model"]["gpus_per_replica"])
    gaps = window_gaps(timeline, result["oracle"]["windows"], per_replica)
    attainment = float(result["policies"]["slotune"]["window_attainment"])
    print(f"  done: {name}, {slo}", flush=True)
    return Run(
        f"{name}, {slo}", gaps, rolled_out_at(timeline, per_replica), timeline, per_replica,
        attainment,
    )  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the synthetic scenarios only")
    parser.add_argument("--model", default="llama-3-8b-h100", help="performance profile")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("oracle-gap"))
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time")
    parser.add_argument("--reuse", action="store_true", help="read DIR's JSON where present")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    scenarios = QUICK if args.quick else FULL
    todo = [(n, a, slo) for n, a in scenarios.items() for slo in SLO_CLASSES]
    started = time.monotonic()
    print(f"command: {' '.join(sys.argv)}")
    print(f"machine: {platform.node()}, {platform.processor() or platform.machine()}")
    print(f"date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, model {args.model}, seed {args.seed}")
    print(f"{len(todo)} runs of slotune and the oracle, {args.jobs} at a time", flush=True)
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        runs = list(
            pool.map(lambda r: run_one(*r, args.out, args.model, args.seed, args.reuse), todo)
        )
    print()
    print(
        "| run | slotune GPU-h | oracle GPU-h | x oracle | windows ok | first retune in place | "
        "windows until then | excess in them | excess after | x oracle after | "
        "held beyond desired |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for run in runs:
        parts = split(run.gaps, run.rolled_out_s)
        print(_row(run.label, parts, run.rolled_out_s, run.attainment))
    plot = args.out / "oracle_gap.png"
    plot_runs(runs, plot)
    print(f"\n{len(runs)} runs in {time.monotonic() - started:.0f} s; plot: {plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
