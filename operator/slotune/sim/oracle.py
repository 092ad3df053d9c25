"""The hindsight oracle: the fewest GPUs that would have met the SLO, window by window.

For every window (5 minutes) the oracle knows the future: it simulates the window's requests
on a fixed number of replicas with a fixed batch setting, ready from the start (no cold
start, no restart), and searches for the fewest GPUs whose window meets every SLO
percentile. Summed over windows that is the GPU-hours floor of any policy with the same
window granularity (a policy could still undercut it by changing replicas within a window;
it cannot by much, and never while meeting the SLO on a steady window).

Each probe simulates ``warmup_s`` of the previous window's arrivals first (queues and
running batches carry over between windows), measures the latencies observed inside the
window with the exact fine histograms, counts requests still waiting at the window's end
past the TTFT (and E2E) target as misses, and lets arrivals continue ``tail_s`` past the
end so the window's own requests can finish (for the per-request goodput).

The search runs over replicas (galloping from the previous window's answer, with the fluid
bound below it) for a few batch settings (:func:`default_settings`); after the first
setting, the others are only asked whether they do with fewer replicas, which usually
takes one probe. Probes are cached per (window, setting, replicas).

Where even the replica ceiling cannot meet the SLO, the window counts as missed and the
oracle takes the fewest replicas (at the initial setting) whose within-target fractions
come within one point of what the ceiling reaches.

The fluid lower bound needs no simulation: per window, the prompt and output tokens that
arrive, divided by what one replica can process while meeting the ITL target (decode at
the largest batch whose step time stays under it, prefill at full token budget); the
larger of the two shares is the fraction of a replica the window needs at least.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from slotune.policy.types import PolicySpec, Setting
from slotune.sim.cluster import Cluster, ClusterConfig, FailedRequest, Template
from slotune.sim.engine import FinishedRequest, Request
from slotune.sim.harness import (
    ExactTotals,
    FloatArray,
    LatencyRecord,
    Outcomes,
    bucket_layout,
    percentile_or_none,
)
from slotune.sim.perf import KV_BLOCK_TOKENS, PerformanceModel, PerfProfile
from slotune.sim.prometheus import LATENCY_HISTOGRAMS
from slotune.sim.vllm_metrics import E2E_REQUEST_LATENCY, INTER_TOKEN_LATENCY, TIME_TO_FIRST_TOKEN

# Where the SLO cannot be met, replicas that bring every within-target fraction to within
# this of what the ceiling reaches count as enough.
CLOSE_ENOUGH = 0.01


@dataclass(frozen=True)
class OracleConfig:
    window_s: float = 300.0
    warmup_s: float = 60.0
    tail_s: float = 30.0
    # (max_num_seqs, max_batched_tokens) pairs; None: see default_settings.
    settings: tuple[tuple[int, int], ...] | None = None


@dataclass(frozen=True)
class Probe:
    """One simulated window at one setting."""

    replicas: int
    template: Template
    meets: bool
    fractions: dict[str, float]  # within-target fraction per histogram (late ones included)
    latencies: dict[str, FloatArray]  # fine cumulative deltas over the window
    finished: tuple[FinishedRequest, ...]  # of requests arriving in the window
    failed: tuple[FailedRequest, ...]


@dataclass(frozen=True)
class OracleWindow:
    start_s: float
    end_s: float
    replicas: int
    max_num_seqs: int
    max_batched_tokens: int
    meets: bool
    fluid_replicas: float
    probes: int
    # Fewest replicas meeting the SLO at the initial setting (where nothing meets it, the
    # fewest close to the best reachable; None when another setting met it and this one
    # did not); what a static deployment at that setting needs in this window.
    initial_needs: int | None = None


@dataclass(frozen=True)
class OracleResult:
    windows: tuple[OracleWindow, ...]
    gpus_per_replica: int
    duration_s: float
    latencies: LatencyRecord
    outcomes: Outcomes
    probes: int

    @property
    def gpu_hours(self) -> float:
        return (
            sum(w.replicas * (w.end_s - w.start_s) for w in self.windows)
            * self.gpus_per_replica
            / 3600
        )

    @property
    def fluid_gpu_hours(self) -> float:
        return (
            sum(w.fluid_replicas * (w.end_s - w.start_s) for w in self.windows)
            * self.gpus_per_replica
            / 3600
        )

    def peak_replicas(self, ceiling: int) -> int:
        """Replicas a static deployment at the initial setting needs for its worst window
        (``ceiling`` where even that is not enough)."""
        return max((w.initial_needs or ceiling for w in self.windows), default=1)

    def summary(self, spec: PolicySpec) -> dict[str, Any]:
        met = [w.meets for w in self.windows]
        changes = sum(
            1
            for a, b in zip(self.windows, self.windows[1:], strict=False)
            if a.replicas != b.replicas
        )
        retunes = sum(
            1
            for a, b in zip(self.windows, self.windows[1:], strict=False)
            if (a.max_num_seqs, a.max_batched_tokens) != (b.max_num_seqs, b.max_batched_tokens)
        )
        o = self.outcomes
        return {
            "gpu_hours": self.gpu_hours,
            "window_attainment": sum(met) / len(met) if met else 1.0,
            "request_goodput": o.goodput(spec),
            "ttft_p95": percentile_or_none(o.ttft_s, 95),
            "itl_p95": self.latencies.quantile(INTER_TOKEN_LATENCY, 0.95),
            "e2e_p95": percentile_or_none(o.e2e_s, 95),
            "scale_actions": changes,
            "restarts": retunes,
            "requests": o.submitted,
            "finished": len(o.ttft_s),
            "failed": dict(o.failed),
            "max_replicas": max((w.replicas for w in self.windows), default=0),
            "fluid_gpu_hours": self.fluid_gpu_hours,
            "probes": self.probes,
        }


# ------------------------------------------------------------------------ fluid bound


def fluid_replicas(
    perf: PerformanceModel,
    requests: Sequence[Request],
    seconds: float,
    spec: PolicySpec,
    *,
    max_num_seqs: int,
    max_batched_tokens: int,
    kv_tokens: int,
) -> float:
    """The fraction of replicas the requests need at least (see the module docstring)."""
    if not requests or seconds <= 0:
        return 0.0
    prompt = sum(r.prompt_tokens for r in requests)
    output = sum(r.output_tokens for r in requests)
    context = (prompt + output / 2) / len(requests)  # mean KV a decoding request attends to
    best_rate = 0.0
    b = 1
    while b <= max_num_seqs and b * context <= max(kv_tokens, context):
        step = perf.decode_step_time(b, int(b * context))
        if step > spec.itl_target_s and b > 1:
            break
        best_rate = max(best_rate, b / step)
        b += 1 if b < 16 else max(1, b // 16)
    chunk = max_batched_tokens
    prefill_rate = chunk / perf.prefill_time(chunk)
    return max(prompt / seconds / prefill_rate, output / seconds / best_rate)


# ------------------------------------------------------------------------------ probes


def _targets(spec: PolicySpec) -> dict[str, tuple[float, float]]:
    out = {
        TIME_TO_FIRST_TOKEN: (spec.ttft_target_s, spec.ttft_percentile / 100),
        INTER_TOKEN_LATENCY: (spec.itl_target_s, spec.itl_percentile / 100),
    }
    if spec.e2e_target_s is not None:
        out[E2E_REQUEST_LATENCY] = (spec.e2e_target_s, (spec.e2e_percentile or 95.0) / 100)
    return out


def probe_window(
    perf: PerformanceModel,
    requests: Sequence[Request],
    start_s: float,
    end_s: float,
    replicas: int,
    template: Template,
    spec: PolicySpec,
    cluster_config: ClusterConfig,
    engine_buckets: dict[str, tuple[float, ...]],
    config: OracleConfig,
) -> Probe:
    """Simulate ``requests`` (sorted; those arriving in [start - warmup, end + tail)) on a
    warm static cluster and judge the window [start, end)."""
    cluster = Cluster(
        perf, cluster_config, replicas=replicas, template=template, now=start_s - config.warmup_s
    )
    totals = ExactTotals(engine_buckets)
    stop = end_s + config.tail_s
    marks = [start_s, end_s, stop]
    latencies: dict[str, FloatArray] = {}
    late: dict[str, int] = {}
    k = 0
    cluster.set_horizon(marks[0])
    for r in requests:
        while r.arrival_s >= marks[k]:
            cluster.advance(marks[k])
            if k == 0:
                totals.record(cluster)
            elif k == 1:
                latencies, late = _close_window(cluster, totals, end_s, spec)
            k += 1
            if k == len(marks):
                break
            cluster.set_horizon(marks[k])
        if k == len(marks):
            break
        cluster.advance(r.arrival_s)
        cluster.submit(r, r.arrival_s)
    while k < len(marks):
        cluster.advance(marks[k])
        if k == 0:
            totals.record(cluster)
        elif k == 1:
            latencies, late = _close_window(cluster, totals, end_s, spec)
        k += 1
        if k < len(marks):
            cluster.set_horizon(marks[k])

    fractions: dict[str, float] = {}
    meets = True
    for name, (target, quantile) in _targets(spec).items():
        cumulative = latencies[name]
        total = float(cumulative[-1]) + late.get(name, 0)
        if total <= 0:
            continue
        within = float(cumulative[totals.bounds[name].index(target)])
        fractions[name] = within / total
        if within / total < quantile - 1e-12:
            meets = False
    in_window = [f for f in cluster.drain_finished() if start_s <= f.request.arrival_s < end_s]
    failed = [f for f in cluster.failed if start_s <= f.request.arrival_s < end_s]
    failed += [
        FailedRequest(r, stop, "unfinished")
        for r in cluster.pending_requests()
        if start_s <= r.arrival_s < end_s
    ]
    return Probe(replicas, template, meets, fractions, latencies, tuple(in_window), tuple(failed))


def _close_window(
    cluster: Cluster, totals: ExactTotals, end_s: float, spec: PolicySpec
) -> tuple[dict[str, FloatArray], dict[str, int]]:
    latencies = totals.record(cluster)
    late = {TIME_TO_FIRST_TOKEN: 0, E2E_REQUEST_LATENCY: 0}
    for pod in cluster.pods:
        if pod.engine is None:
            continue
        for r in pod.engine.awaiting_first_token():
            if end_s - r.arrival_s > spec.ttft_target_s:
                late[TIME_TO_FIRST_TOKEN] += 1
        if spec.e2e_target_s is not None:
            for r in pod.engine.outstanding_requests():
                if end_s - r.arrival_s > spec.e2e_target_s:
                    late[E2E_REQUEST_LATENCY] += 1
    for r in cluster.pending_requests()[: cluster.gateway_queue]:
        if end_s - r.arrival_s > spec.ttft_target_s:
            late[TIME_TO_FIRST_TOKEN] += 1
    return latencies, late


# ----------------------------------------------------------------------------- search


def default_settings(spec: PolicySpec, initial: Setting) -> tuple[tuple[int, int], ...]:
    """The initial setting first, then half and twice its ``max_num_seqs``, each with the
    initial token budget, the smallest one allowed and twice that (smaller prefill chunks,
    hence shorter decode steps next to them)."""
    lo_s, hi_s = spec.max_num_seqs_bounds
    lo_t = spec.max_batched_tokens_bounds[0]
    seqs = [initial.max_num_seqs]
    seqs += [s for s in (initial.max_num_seqs // 2, initial.max_num_seqs * 2) if lo_s <= s <= hi_s]
    out: list[tuple[int, int]] = []
    for tokens in (initial.max_batched_tokens, lo_t, 2 * lo_t):
        for s in seqs:
            pair = (s, max(tokens, s))
            if pair not in out:
                out.append(pair)
    return tuple(out)


def run_oracle(
    requests: Sequence[Request],
    spec: PolicySpec,
    profile: PerfProfile | PerformanceModel,
    *,
    initial: Setting,
    duration_s: float,
    cluster_config: ClusterConfig | None = None,
    config: OracleConfig | None = None,
    slo_buckets: bool = True,
    progress: Callable[[float], None] | None = None,
) -> OracleResult:
    """Search every window (see the module docstring); ``requests`` sorted by arrival."""
    cfg = config or OracleConfig()
    perf = profile if isinstance(profile, PerformanceModel) else PerformanceModel(profile)
    engine_buckets, _ = bucket_layout(spec, slo_buckets)
    base = cluster_config or ClusterConfig(gpus_per_replica=spec.gpus_per_replica)
    cluster_cfg = ClusterConfig(
        gpus_per_replica=base.gpus_per_replica,
        gpu_budget=None,  # the oracle is told the ceiling, it does not queue for GPUs
        cold_start_s=0.0,
        termination_grace_s=base.termination_grace_s,
        balancer=base.balancer,
        histogram_buckets=engine_buckets,
        max_model_len=base.max_model_len,
        kv_cache_blocks=base.kv_cache_blocks,
    )
    settings = cfg.settings or default_settings(spec, initial)
    templates = [Template(seqs, tokens) for seqs, tokens in settings]
    ceiling = spec.replica_ceiling
    arrivals = np.array([r.arrival_s for r in requests], dtype=np.float64)

    windows: list[OracleWindow] = []
    rows: dict[str, list[FloatArray]] = {name: [] for name in LATENCY_HISTOGRAMS}
    finished: list[FinishedRequest] = []
    failed: list[FailedRequest] = []
    previous: int | None = None
    total_probes = 0
    count = max(1, math.ceil(duration_s / cfg.window_s - 1e-9))
    for w in range(count):
        w0, w1 = w * cfg.window_s, min(duration_s, (w + 1) * cfg.window_s)
        lo_i = int(np.searchsorted(arrivals, w0 - cfg.warmup_s, side="left"))
        hi_i = int(np.searchsorted(arrivals, w1 + cfg.tail_s, side="left"))
        window_requests = requests[lo_i:hi_i]
        own = [r for r in window_requests if w0 <= r.arrival_s < w1]
        cache: dict[tuple[int, int], Probe] = {}

        def probe(
            k: int,
            r: int,
            w0: float = w0,
            w1: float = w1,
            reqs: Sequence[Request] = window_requests,
            cache: dict[tuple[int, int], Probe] = cache,
        ) -> Probe:
            if (k, r) not in cache:
                cache[(k, r)] = probe_window(
                    perf, reqs, w0, w1, r, templates[k], spec, cluster_cfg, engine_buckets, cfg
                )
            return cache[(k, r)]

        best: tuple[int, int] | None = None  # (replicas, setting index)
        initial_needs: int | None = None
        fluid_best = math.inf
        for k, template in enumerate(templates):
            kv = cluster_cfg.kv_cache_blocks
            kv_tokens = (
                kv * KV_BLOCK_TOKENS
                if kv is not None
                else perf.kv_cache_capacity(template.max_batched_tokens).tokens
            )
            fluid = fluid_replicas(
                perf,
                own,
                w1 - w0,
                spec,
                max_num_seqs=template.max_num_seqs,
                max_batched_tokens=template.max_batched_tokens,
                kv_tokens=kv_tokens,
            )
            fluid_best = min(fluid_best, fluid)
            lo = min(ceiling, max(spec.min_replicas, math.ceil(fluid - 1e-9)))
            # After the first setting only an improvement matters: search below the best.
            hi = ceiling if best is None else best[0] - 1
            guess = previous if previous is not None else lo
            if best is not None:
                guess = hi

            def meets(r: int, k: int = k) -> bool:
                return probe(k, r).meets

            need = _fewest(meets, lo, hi, guess)
            if k == 0:
                initial_needs = need
            if need is not None and (best is None or need < best[0]):
                best = (need, k)
        if best is None:
            # No count meets the SLO (a prompt too long to prefill in time, say): take the
            # fewest replicas that come within a point of what the ceiling achieves, so the
            # floor stays a floor of useful capacity rather than the ceiling.
            reachable = probe(0, ceiling).fractions

            def close_enough(r: int, reachable: dict[str, float] = reachable) -> bool:
                got = probe(0, r).fractions
                return all(got.get(n, 1.0) >= f - CLOSE_ENOUGH for n, f in reachable.items())

            floor = min(ceiling, max(spec.min_replicas, previous or spec.min_replicas))
            best = (_fewest(close_enough, spec.min_replicas, ceiling, floor) or ceiling, 0)
            initial_needs = best[0]
        total_probes += len(cache)
        chosen = probe(best[1], best[0])
        previous = best[0]
        for name in rows:
            rows[name].append(chosen.latencies[name])
        finished.extend(chosen.finished)
        failed.extend(chosen.failed)
        windows.append(
            OracleWindow(
                start_s=w0,
                end_s=w1,
                replicas=chosen.replicas,
                max_num_seqs=chosen.template.max_num_seqs,
                max_batched_tokens=chosen.template.max_batched_tokens,
                meets=chosen.meets,
                fluid_replicas=fluid_best if math.isfinite(fluid_best) else 0.0,
                probes=len(cache),
                initial_needs=initial_needs,
            )
        )
        if progress is not None:
            progress((w + 1) / count)

    latencies = LatencyRecord(
        bounds={n: engine_buckets[n] for n in rows},
        steps={
            n: np.array(v, dtype=np.float64).reshape(len(v), len(engine_buckets[n]) + 1)
            for n, v in rows.items()
        },
    )
    submitted = int(np.count_nonzero((arrivals >= 0) & (arrivals < duration_s)))
    return OracleResult(
        windows=tuple(windows),
        gpus_per_replica=cluster_cfg.gpus_per_replica,
        duration_s=duration_s,
        latencies=latencies,
        outcomes=Outcomes.build(finished, failed, submitted),
        probes=total_probes,
    )


def _fewest(meets: Callable[[int], bool], lo: int, hi: int, guess: int) -> int | None:
    """The smallest r in [lo, hi] with meets(r), assuming monotonicity; None if none."""
    if lo > hi:
        return None
    guess = min(max(guess, lo), hi)
    if meets(guess):
        r = guess
        while r - 1 >= lo and meets(r - 1):
            r -= 1
        return r
    # Gallop up, then bisect between the last failure and the first success.
    fail, step = guess, 1
    while True:
        candidate = min(hi, fail + step)
        if meets(candidate):
            break
        if candidate == hi:
            return None
        fail, step = candidate, step * 2
    ok = candidate
    while ok - fail > 1:
        mid = (ok + fail) // 2
        if meets(mid):
            ok = mid
        else:
            fail = mid
    return ok
