"""How well slotune's predicted quantiles match what the next window shows.

Every decision carries the window TTFT and ITL quantiles the policy predicts under the setting
it chose, at its forecast load (the LLMService status shows them). This runs `slotune sim`
with slotune alone on each scenario x SLO class and pairs each prediction with the window
quantile the policy saw one SLO window later, where the setting stayed the same and fully in
place for that whole window (a window that mixes settings describes neither). It prints, per
run and quantity, the pairs, the median of predicted / observed and the shares within 25%
and 50%, and plots each pair (DIR/predictions.png). Usage:

    .venv/bin/python bench/bench_predictions.py [--quick] [--seed N] [--out DIR] [--jobs N]

`--quick` keeps the two 1-hour synthetic scenarios; the default adds the Azure conversation
and code traces scaled x20.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
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
}
WINDOW_S = 300.0  # the LLMService default SLO window, which `slotune sim` uses
SETTING = ("replicas", "ready", "max_num_seqs", "max_batched_tokens")


def prediction_pairs(timeline: dict[str, list[Any]], quantity: str) -> list[tuple[float, float]]:
    """(predicted, observed) for `quantity` ("ttft" or "itl"): each report step's prediction
    against the window quantile seen one window later, where every step in between ran the
    same setting with every replica ready."""
    times = timeline["t_s"]
    predicted, seen = timeline[f"predicted_{quantity}"], timeline[f"seen_{quantity}"]
    pairs = []
    for i, t in enumerate(times):
        j = next((k for k in range(i, len(times)) if times[k] >= t + WINDOW_S), None)
        if j is None or predicted[i] is None or seen[j] is None or seen[j] <= 0:
            continue
        held = all(
            all(timeline[key][k] == timeline[key][i] for key in SETTING)
            and timeline["ready"][k] == timeline["replicas"][k]
            for k in range(i, j + 1)
        )
        if held:
            pairs.append((float(predicted[i]), float(seen[j])))
    return pairs


def accuracy(pairs: list[tuple[float, float]]) -> dict[str, float]:
    """Pairs, median predicted / observed, and the shares within 25% and 50% of observed."""
    if not pairs:
        return {"pairs": 0}
    ratios = [p / o for p, o in pairs]
    return {
        "pairs": len(pairs),
        "median_ratio": statistics.median(ratios),
        "within_25": sum(abs(r - 1) <= 0.25 for r in ratios) / len(ratios),
        "within_50": sum(abs(r - 1) <= 0.5 for r in ratios) / len(ratios),
    }


def _row(name: str, quantity: str, stats: dict[str, float]) -> str:
    if not stats["pairs"]:
        return f"| {name} | {quantity} | 0 | - | - | - |"
    return (
        f"| {name} | {quantity} | {stats['pairs']:.0f} | {stats['median_ratio']:.2f} | "
        f"{100 * stats['within_25']:.0f}% | {100 * stats['within_50']:.0f}% |"
    )


def plot_pairs(runs: dict[str, dict[str, list[tuple[float, float]]]], path: Path) -> None:
    """One panel per run: each prediction against the window seen one window later, TTFT and
    ITL in milliseconds on log axes; on the solid line they agree, between the dotted ones
    they are within 25%."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    columns = min(4, len(runs))
    rows = math.ceil(len(runs) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.8 * rows), squeeze=False)
    for ax in axes.flat[len(runs) :]:
        ax.set_visible(False)
    for ax, (title, quantities) in zip(axes.flat, runs.items(), strict=False):
        values = [1000 * v for pairs in quantities.values() for pair in pairs for v in pair]
        for quantity, pairs in quantities.items():
            ax.scatter(
                [1000 * o for _, o in pairs], [1000 * p for p, _ in pairs],
                s=9, alpha=0.6, label=quantity.upper(),
            )  # fmt: skip
        low, high = (min(values) / 1.5, max(values) * 1.5) if values else (1.0, 1000.0)
        for factor, style in ((1.0, "-"), (1.25, ":"), (0.75, ":")):
            ax.plot([low, high], [low * factor, high * factor], color="grey", ls=style, lw=1)
        ax.set_xlim(low, high)
        ax.set_ylim(low, high)
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
            axis.set_minor_formatter(NullFormatter())
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("observed one window later (ms)", fontsize=8)
        ax.set_ylabel("predicted (ms)", fontsize=8)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle("slotune's predicted window quantiles against the next window's")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_one(
    name: str, args: list[str], slo: str, out: Path, seed: int
) -> tuple[str, dict[str, list[tuple[float, float]]]]:
    ttft, itl = SLO_CLASSES[slo]
    path = out / f"{name}-{slo}.json"
    command = [
        sys.executable, "-m", "slotune.cli", "sim", *args, "--seed", str(seed),
        "--slo-ttft", ttft, "--slo-itl", itl, "--policies", "slotune", "--no-progress",
        "--json", str(path),
    ]  # fmt: skip
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    timeline = json.loads(path.read_text())["timelines"]["slotune"]
    return f"{name}, {slo}", {q: prediction_pairs(timeline, q) for q in ("ttft", "itl")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the synthetic scenarios only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench-predictions"))
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    scenarios = QUICK if args.quick else FULL
    runs = [(n, a, slo) for n, a in scenarios.items() for slo in SLO_CLASSES]
    started = time.monotonic()
    print(f"command: {' '.join(sys.argv)}")
    print(f"machine: {platform.node()}, {platform.processor() or platform.machine()}")
    print(f"date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, seed {args.seed}", flush=True)
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = dict(pool.map(lambda r: run_one(*r, args.out, args.seed), runs))
    print()
    print("| run | quantity | pairs | predicted / observed, median | within 25% | within 50% |")
    print("|---|---|---|---|---|---|")
    for label, quantities in results.items():
        for quantity, pairs in quantities.items():
            print(_row(label, quantity, accuracy(pairs)))
    plot = args.out / "predictions.png"
    plot_pairs(results, plot)
    print(f"\n{len(runs)} runs in {time.monotonic() - started:.0f} s; plot: {plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
