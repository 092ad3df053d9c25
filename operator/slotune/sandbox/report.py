"""The demo's report: what the operator saw and did through a surge, as markdown and a PNG."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from slotune.sandbox.loadgen import Result, Run, percentile

SCALE_ACTIONS = ("ScaleUp", "ScaleDown", "Retune", "ScaleAndRetune")


@dataclass(frozen=True)
class Sample:
    """One row of the live table; times in seconds from the start of the load."""

    t: float
    phase: str
    offered_rps: float
    client_ttft_p95: float | None
    ttft_p95: float | None  # the operator's view: status.observed (Prometheus, SLO window)
    itl_p95: float | None
    observed_rps: float | None
    replicas: int  # wanted (status.tuned)
    ready: int
    max_num_seqs: int
    decision: str
    decision_time: str | None = None


@dataclass
class DemoReport:
    plan_phases: Sequence[tuple[str, float, float]]  # (label, duration s, rate/s)
    ttft_target_s: float
    itl_target_s: float
    samples: list[Sample]
    run: Run
    events: list[dict[str, Any]] = field(default_factory=list)  # with "t" from load start
    ready_delay_s: float = 0.0
    scrape_interval_s: float = 0.0
    tuning_interval_s: float = 0.0

    # -- phases ----------------------------------------------------------------------------

    def phase_bounds(self) -> list[tuple[str, float, float]]:
        out, start = [], 0.0
        for label, duration, _ in self.plan_phases:
            out.append((label, start, start + duration))
            start += duration
        return out

    def _bound(self, label: str) -> tuple[float, float]:
        for name, start, end in self.phase_bounds():
            if name == label:
                return start, end
        return 0.0, 0.0

    # -- findings --------------------------------------------------------------------------

    def decisions(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["reason"] in SCALE_ACTIONS]

    def first_scale_up_after_surge_s(self) -> float | None:
        start, _ = self._bound("surge")
        for e in self.decisions():
            if e["t"] >= start and e["reason"] in ("ScaleUp", "ScaleAndRetune"):
                if "replicas" in e["message"]:
                    before, after = _replica_change(e["message"])
                    if after is not None and before is not None and after <= before:
                        continue
                return float(e["t"] - start)
        return None

    def ttft_recovered_after_surge_s(self) -> float | None:
        """Surge start -> the observed p95 TTFT is back under target after having exceeded it
        (None if it never exceeded it, or never came back during the run)."""
        start, _ = self._bound("surge")
        exceeded = False
        for s in self.samples:
            if s.t < start or s.ttft_p95 is None:
                continue
            if s.ttft_p95 > self.ttft_target_s:
                exceeded = True
            elif exceeded:
                return s.t - start
        return None

    def ttft_ever_exceeded(self) -> bool:
        return any(s.ttft_p95 is not None and s.ttft_p95 > self.ttft_target_s for s in self.samples)

    def peak_replicas(self) -> int:
        return max((s.replicas for s in self.samples), default=0)

    def scale_down_after_surge_s(self) -> tuple[float | None, float | None]:
        """(surge end -> first replica removed, surge end -> back to the pre-surge count)."""
        start, end = self._bound("surge")
        before = [s.replicas for s in self.samples if s.t < start]
        baseline = min(before) if before else 1
        peak = self.peak_replicas()
        first = back = None
        previous = peak
        for s in self.samples:
            if s.t < end:
                previous = s.replicas
                continue
            if first is None and s.replicas < previous:
                first = s.t - end
            if back is None and s.replicas <= baseline and peak > baseline:
                back = s.t - end
            previous = s.replicas
        return first, back

    def _scale_down_sentence(self, first_down: float | None, back: float | None) -> str:
        if back is not None:
            return (
                f"first replica removed {_secs(first_down)} after the surge ended; back to the "
                f"pre-surge count {_secs(back)} after."
            )
        # The run can end before the fleet is back: say where it stood and why, not "n/a".
        _, end = self._bound("surge")
        ran_s = sum(d for _, d, _ in self.plan_phases) - end
        final = self.samples[-1].replicas if self.samples else 0
        removed = (
            f"first replica removed {_secs(first_down)} after the surge ended"
            if first_down is not None
            else "no replica removed"
        )
        return (
            f"{removed}; {final} replicas when the load ended {ran_s:.0f}s after the surge "
            "(replicas go one bounded step at a time, each after the scale-down stabilisation "
            "window has seen the smaller count suffice)."
        )

    def client_stats(self, label: str) -> dict[str, float | None]:
        start, end = self._bound(label)
        done = [r for r in self.run.results if start <= r.sent_s < end]
        ok = [r for r in done if r.ok]
        ttfts = [r.ttft_s for r in ok if r.ttft_s is not None]
        tpots = [r.tpot_s for r in ok if r.tpot_s is not None]
        within = [t for t in ttfts if t <= self.ttft_target_s]
        return {
            "requests": float(len(done)),
            "failed": float(len(done) - len(ok)),
            "ttft_p95": percentile(ttfts, 95),
            "tpot_p95": percentile(tpots, 95),
            "ttft_attainment": len(within) / len(ttfts) if ttfts else None,
        }

    def gpu_seconds(self) -> float:
        total, last_t = 0.0, 0.0
        for s in self.samples:
            total += s.replicas * (s.t - last_t)
            last_t = s.t
        return total

    # -- text ------------------------------------------------------------------------------

    def _reaction_note(self) -> str:
        """How soon the operator can react at all: why two runs of the same load can differ."""
        if not (self.tuning_interval_s and self.scrape_interval_s):
            return ""
        latest = self.tuning_interval_s + self.scrape_interval_s
        return (
            f" The operator decides every {self.tuning_interval_s:g}s on samples scraped every "
            f"{self.scrape_interval_s:g}s, so its first look at a surge comes 0-{latest:g}s "
            f"after it begins, by chance of timing, and a replica it adds serves after its "
            f"{self.ready_delay_s:g}s model load; bench/demo_surge.py shows what that timing "
            f"does to the surge's TTFT."
        )

    def summary(self) -> str:
        lines = ["## Outcome", ""]
        up = self.first_scale_up_after_surge_s()
        recovered = self.ttft_recovered_after_surge_s()
        first_down, back = self.scale_down_after_surge_s()
        ttft_ms, itl_ms = self.ttft_target_s * 1000, self.itl_target_s * 1000
        lines.append(
            f"- Surge response: first scale-up decision {_secs(up)} after the surge began; "
            f"peak {self.peak_replicas()} replicas.{self._reaction_note()}"
        )
        if self.ttft_ever_exceeded():
            lines.append(
                f"- p95 TTFT (operator's {_window_note(self)} view) back under {ttft_ms:.0f} ms "
                f"{_secs(recovered)} after the surge began."
            )
        else:
            lines.append(f"- p95 TTFT (operator's view) stayed under {ttft_ms:.0f} ms throughout.")
        lines.append(f"- Scale-down: {self._scale_down_sentence(first_down, back)}")
        peak = self.peak_replicas()
        duration = sum(d for _, d, _ in self.plan_phases)
        lines.append(
            f"- GPU time: {self.gpu_seconds() / 3600:.3f} GPU-hours, against "
            f"{peak * duration / 3600:.3f} for {peak} replicas provisioned for the peak all along."
        )
        lines += [
            "",
            f"| phase | requests | failed | client p95 TTFT | TTFT <= {ttft_ms:.0f} ms "
            f"| client p95 TPOT (ITL target {itl_ms:.0f} ms) |",
            "|---|---|---|---|---|---|",
        ]
        for label, _, _ in self.phase_bounds():
            st = self.client_stats(label)
            attained = st["ttft_attainment"]
            lines.append(
                f"| {label} | {st['requests']:.0f} | {st['failed']:.0f} | "
                f"{_ms(st['ttft_p95'])} | "
                f"{'-' if attained is None else f'{attained * 100:.1f}%'} | "
                f"{_ms(st['tpot_p95'])} |"
            )
        return "\n".join(lines)

    def markdown(self, plot_name: str) -> str:
        phases = ", ".join(
            f"{label} {rate:g} req/s for {d:.0f}s" for label, d, rate in self.plan_phases
        )
        lines = [
            "# slotune demo report",
            "",
            f"Written {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `make demo`. Load: {phases} "
            "(Poisson arrivals; prompts 256-1024 tokens, outputs 200-600 tokens). Llama 3 8B on "
            "emulated H100s (the simulator's `llama-3-8b-h100` profile), model load "
            f"{self.ready_delay_s:g}s, Prometheus scraping every {self.scrape_interval_s:g}s.",
            "",
            f"![timeline]({plot_name})",
            "",
            self.summary(),
            "",
            "## Decisions applied (Kubernetes Events on the LLMService)",
            "",
            "| t (s) | action | message |",
            "|---|---|---|",
        ]
        for e in self.decisions():
            lines.append(f"| {e['t']:.0f} | {e['reason']} | {e['message']} |")
        lines += [
            "",
            "## Live table",
            "",
            "| t (s) | phase | req/s (1m) | p95 TTFT | p95 ITL | ready/replicas | max-num-seqs "
            "| last decision |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for s in self.samples:
            rps = "-" if s.observed_rps is None else f"{s.observed_rps:.1f}"
            lines.append(
                f"| {s.t:.0f} | {s.phase} | {rps} | {_ms(s.ttft_p95)} | {_ms(s.itl_p95)} | "
                f"{s.ready}/{s.replicas} | {s.max_num_seqs} | {s.decision} |"
            )
        return "\n".join(lines) + "\n"


def _window_note(report: DemoReport) -> str:
    return "SLO-window"


def _secs(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}s"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f} ms"


def _replica_change(message: str) -> tuple[int | None, int | None]:
    """'applied: replicas 1->2, ...' -> (1, 2)."""
    try:
        part = message.split("replicas ", 1)[1].split(",", 1)[0]
        before, after = part.split("->", 1)
        return int(before), int(after)
    except (IndexError, ValueError):
        return None, None


def _client_series(results: list[Result], bucket_s: float) -> tuple[list[float], list[float]]:
    buckets: dict[int, list[float]] = {}
    for r in results:
        if r.ttft_s is not None:
            buckets.setdefault(int(r.sent_s // bucket_s), []).append(r.ttft_s)
    ts, values = [], []
    for index in sorted(buckets):
        value = percentile(buckets[index], 95)
        if value is not None:
            ts.append((index + 0.5) * bucket_s)
            values.append(value)
    return ts, values


def plot(report: DemoReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = report.samples
    t = [s.t for s in samples]
    fig, axes = plt.subplots(4, 1, figsize=(10, 11), sharex=True)
    load, ttft, itl, knobs = axes
    for ax in axes:
        for label, start, end in report.phase_bounds():
            if label == "surge":
                ax.axvspan(start, end, color="tab:orange", alpha=0.08)
    sent = [r.sent_s for r in report.run.results]
    if sent:
        width = 10.0
        bins = [i * width for i in range(int(max(sent) // width) + 2)]
        load.hist(
            sent,
            bins=bins,
            weights=[1 / width] * len(sent),
            color="tab:gray",
            alpha=0.5,
            label="sent (client, 10 s bins)",
        )
    load.plot(
        t,
        [s.observed_rps for s in samples],
        color="tab:blue",
        label="finished (Prometheus, SLO window)",
    )
    load.set_ylabel("requests/s")
    load.legend(loc="upper left", fontsize=8)

    ct, cv = _client_series(report.run.results, 10.0)
    ttft.plot(ct, [v * 1000 for v in cv], ".", color="tab:gray", label="client p95 per 10 s")
    ttft.plot(
        t,
        [None if s.ttft_p95 is None else s.ttft_p95 * 1000 for s in samples],
        color="tab:red",
        label="p95 as the operator sees it",
    )
    ttft.axhline(report.ttft_target_s * 1000, color="black", linestyle="--", label="target")
    ttft.set_ylabel("TTFT (ms)")
    ttft.set_yscale("log")
    ttft.legend(loc="upper left", fontsize=8)

    itl.plot(
        t,
        [None if s.itl_p95 is None else s.itl_p95 * 1000 for s in samples],
        color="tab:purple",
        label="p95 as the operator sees it",
    )
    itl.axhline(report.itl_target_s * 1000, color="black", linestyle="--", label="target")
    itl.set_ylabel("ITL (ms)")
    itl.legend(loc="upper left", fontsize=8)

    knobs.step(
        t, [s.replicas for s in samples], where="post", color="tab:green", label="replicas wanted"
    )
    knobs.step(
        t, [s.ready for s in samples], where="post", color="tab:green", linestyle=":", label="ready"
    )
    knobs.set_ylabel("replicas")
    knobs.set_ylim(0, max([s.replicas for s in samples] + [1]) + 1)
    seqs = knobs.twinx()
    seqs.step(
        t, [s.max_num_seqs for s in samples], where="post", color="tab:brown", label="max-num-seqs"
    )
    seqs.set_ylabel("max-num-seqs")
    seqs.set_ylim(0, max([s.max_num_seqs for s in samples] + [1]) * 1.2)
    for e in report.decisions():
        knobs.axvline(e["t"], color="tab:gray", alpha=0.3, linewidth=0.8)
    handles = knobs.get_legend_handles_labels()[0] + seqs.get_legend_handles_labels()[0]
    knobs.legend(handles=handles, loc="upper left", fontsize=8)
    knobs.set_xlabel("seconds since the load started (surge shaded)")
    fig.suptitle("slotune holding a TTFT/ITL SLO through a 3x surge (emulated H100s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(report: DemoReport, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / "demo.png"
    md = out_dir / "report.md"
    plot(report, png)
    md.write_text(report.markdown(png.name))
    return md, png
