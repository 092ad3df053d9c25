"""Emulator fidelity: the same workload through the emulator (real time, HTTP) and the simulator.

The simulator replays the arrivals exactly (``run_to_completion``); the emulator gets them from
the load generator over loopback HTTP, as a client would send them. Compared at the 95th
percentile: TTFT as the client measures it against the simulator's exact per-request TTFT;
ITL from the emulator's ``/metrics`` histogram against the simulator's histogram (same bucket
bounds, Prometheus' interpolation); and per-request time per output token, client against
simulator.
"""

from __future__ import annotations

import asyncio
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from slotune.sandbox import processes
from slotune.sandbox.loadgen import LoadGenerator, Scenario, percentile
from slotune.sim.engine import Engine, Request, run_to_completion
from slotune.sim.profiles import get_profile
from slotune.sim.vllm_metrics import (
    INTER_TOKEN_LATENCY,
    TIME_TO_FIRST_TOKEN,
    HistogramSnapshot,
)

MODEL = "fidelity-check"


@dataclass(frozen=True)
class Fidelity:
    requests: int
    failed: int
    sim_ttft_p95: float
    emu_ttft_p95: float  # client-side
    sim_itl_p95: float
    emu_itl_p95: float  # from the emulator's /metrics
    sim_tpot_p95: float
    emu_tpot_p95: float  # client-side
    sim_ttft_hist_p95: float
    emu_ttft_hist_p95: float

    @staticmethod
    def _error(emu: float, sim: float) -> float:
        return abs(emu - sim) / sim if sim else 0.0

    @property
    def ttft_error(self) -> float:
        return self._error(self.emu_ttft_p95, self.sim_ttft_p95)

    @property
    def itl_error(self) -> float:
        return self._error(self.emu_itl_p95, self.sim_itl_p95)

    @property
    def tpot_error(self) -> float:
        return self._error(self.emu_tpot_p95, self.sim_tpot_p95)

    def table(self) -> str:
        rows = [
            ("TTFT p95 (client vs exact)", self.sim_ttft_p95, self.emu_ttft_p95),
            ("TTFT p95 (histograms)", self.sim_ttft_hist_p95, self.emu_ttft_hist_p95),
            ("ITL p95 (histograms)", self.sim_itl_p95, self.emu_itl_p95),
            ("TPOT p95 (client vs exact)", self.sim_tpot_p95, self.emu_tpot_p95),
        ]
        lines = [f"{'quantity':<28} {'simulator':>10} {'emulator':>10} {'error':>7}"]
        for name, sim, emu in rows:
            lines.append(
                f"{name:<28} {sim * 1000:>8.1f}ms {emu * 1000:>8.1f}ms "
                f"{self._error(emu, sim) * 100:>6.1f}%"
            )
        lines.append(f"requests: {self.requests}, failed: {self.failed}")
        return "\n".join(lines)


def _histogram(text: str, name: str) -> HistogramSnapshot:
    """One histogram from a text exposition with a single label set (one engine)."""
    bounds: list[float] = []
    cumulative: list[float] = []
    total = 0.0
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket{{"):
            labels, value = line.rsplit(" ", 1)
            le = labels.split('le="', 1)[1].split('"', 1)[0]
            if le != "+Inf":
                bounds.append(float(le))
            cumulative.append(float(value))
        elif line.startswith(f"{name}_sum{{"):
            total = float(line.rsplit(" ", 1)[1])
    return HistogramSnapshot(tuple(bounds), tuple(cumulative), total)


def measure(
    scenario: Scenario,
    *,
    seed: int = 1,
    profile: str = "llama-3-8b-h100",
    max_num_seqs: int = 64,
    max_num_batched_tokens: int = 8192,
    work_dir: Path | None = None,
) -> Fidelity:
    arrivals = scenario.arrivals(seed)
    requests = [
        Request(i, a.at_s, a.prompt_tokens, a.output_tokens) for i, a in enumerate(arrivals)
    ]
    engine = Engine(get_profile(profile), max_num_seqs, max_num_batched_tokens)
    finished = run_to_completion(engine, requests)

    work = work_dir or Path(tempfile.mkdtemp(prefix="slotune-fidelity-"))
    port = processes.free_port()
    proc = processes.start(
        "emulator",
        processes.slotune_command(
            "emulate",
            f"--port={port}",
            f"--served-model-name={MODEL}",
            f"--model-profile={profile}",
            f"--max-num-seqs={max_num_seqs}",
            f"--max-num-batched-tokens={max_num_batched_tokens}",
        ),
        work / "emulator.log",
    )
    base = f"http://127.0.0.1:{port}"
    try:
        processes.wait_http_ok(f"{base}/health", proc, timeout=30)
        generator = LoadGenerator(base, MODEL)
        run = asyncio.run(
            generator.run(arrivals, max_duration_s=scenario.duration_s + 120, max_requests=5000)
        )
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
            exposition = response.read().decode()
    finally:
        processes.stop_all([proc])

    ok = [r for r in run.results if r.ok]
    emu_itl = _histogram(exposition, INTER_TOKEN_LATENCY)
    emu_ttft = _histogram(exposition, TIME_TO_FIRST_TOKEN)

    def p95(values: list[float]) -> float:
        value = percentile(values, 95)
        return float("nan") if value is None else value

    return Fidelity(
        requests=len(run.results),
        failed=len(run.results) - len(ok),
        sim_ttft_p95=p95([f.ttft_s for f in finished]),
        emu_ttft_p95=p95([r.ttft_s for r in ok if r.ttft_s is not None]),
        sim_itl_p95=engine.metrics.itl.quantile(0.95),
        emu_itl_p95=emu_itl.quantile(0.95),
        sim_tpot_p95=p95([f.time_per_output_token_s for f in finished]),
        emu_tpot_p95=p95([r.tpot_s for r in ok if r.tpot_s is not None]),
        sim_ttft_hist_p95=engine.metrics.ttft.quantile(0.95),
        emu_ttft_hist_p95=emu_ttft.quantile(0.95),
    )
