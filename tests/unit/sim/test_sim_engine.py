"""The iteration-level engine simulator: single requests, limits, KV, Little's law, metrics."""

from __future__ import annotations

import math
import statistics
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slotune.sim.engine import Engine, FinishedRequest, Request, run_to_completion
from slotune.sim.perf import KV_BLOCK_TOKENS, PerformanceModel
from slotune.sim.profiles import get_profile
from slotune.sim.synthetic import poisson_requests
from slotune.sim.vllm_metrics import (
    E2E_REQUEST_LATENCY,
    REQUEST_DECODE_TIME,
    REQUEST_PREFILL_TIME,
    REQUEST_QUEUE_TIME,
    TIME_PER_OUTPUT_TOKEN,
)

PROFILE = get_profile("llama-3-8b-h100")
PERF = PerformanceModel(PROFILE)


def engine(
    max_num_seqs: int = 64,
    max_num_batched_tokens: int = 2048,
    *,
    kv_cache_blocks: int | None = None,
    max_model_len: int | None = None,
) -> Engine:
    return Engine(
        PERF,
        max_num_seqs,
        max_num_batched_tokens,
        kv_cache_blocks=kv_cache_blocks,
        max_model_len=max_model_len,
    )


@dataclass
class Trace:
    """What a test driver saw at every scheduling decision."""

    samples: list[tuple[float, int]] = field(default_factory=list)  # (time, in system)
    iterations: int = 0


def drive(
    eng: Engine,
    requests: list[Request],
    *,
    multi_step: bool = True,
    on_step: Callable[[Engine], None] | None = None,
    sample_every_s: float | None = None,
) -> tuple[list[FinishedRequest], Trace]:
    """Run ``requests`` through ``eng`` like the cluster simulator will.

    With ``sample_every_s`` it records the number of requests in the system (waiting,
    running, or arrived but not yet handed over because an iteration was in flight) at
    regular instants, which is what a Prometheus scrape of the gauges would see.
    """
    ordered = sorted(requests, key=lambda r: r.arrival_s)
    arrivals = [r.arrival_s for r in ordered]
    submitted = 0
    trace = Trace()
    now = 0.0
    next_sample = 0.0 if sample_every_s is not None else math.inf
    finished: list[FinishedRequest] = []
    while True:
        while submitted < len(ordered) and arrivals[submitted] <= now:
            eng.submit(ordered[submitted], arrivals[submitted])
            submitted += 1
        more = submitted < len(ordered)
        until = arrivals[submitted] if more else math.inf
        duration = eng.step(now, until=until if multi_step else None)
        finished.extend(eng.drain_finished())
        trace.iterations += 1
        if on_step is not None:
            on_step(eng)
        if duration is None and not more:
            break
        end = now + duration if duration is not None else until
        # Sample instants inside [now, end): the engine's state is constant there, plus the
        # arrivals the driver has not handed over yet.
        while sample_every_s is not None and next_sample < end:
            not_handed_over = bisect_right(arrivals, next_sample) - submitted
            trace.samples.append((next_sample, eng.num_outstanding + max(0, not_handed_over)))
            next_sample += sample_every_s
        now = end
    return finished, trace


# --------------------------------------------------------------------- single request


def test_single_request_ttft_is_its_prefill_time() -> None:
    eng = engine(max_num_batched_tokens=4096)
    [done] = run_to_completion(eng, [Request("a", 1.5, prompt_tokens=1000, output_tokens=1)])
    assert done.ttft_s == pytest.approx(PERF.prefill_time(1000), rel=1e-12)
    assert done.queue_s == 0.0
    assert done.e2e_s == done.ttft_s


def test_chunked_prefill_ttft_is_the_sum_of_its_chunks() -> None:
    eng = engine(max_num_batched_tokens=2048)
    [done] = run_to_completion(eng, [Request("a", 0.0, prompt_tokens=5000, output_tokens=1)])
    assert done.ttft_s == pytest.approx(PERF.full_prefill_time(5000, 2048), rel=1e-12)


def test_single_request_decode_steps_follow_the_model() -> None:
    prompt, output = 300, 40
    eng = engine()
    [done] = run_to_completion(eng, [Request("a", 0.0, prompt, output)])
    # Decode step k computes the KV of token prompt+k-1 and reads prompt+k tokens.
    decode = sum(PERF.decode_step_time(1, prompt + k) for k in range(1, output))
    assert done.decode_s == pytest.approx(decode, rel=1e-9)
    assert done.e2e_s == pytest.approx(PERF.prefill_time(prompt) + decode, rel=1e-9)
    assert done.time_per_output_token_s == pytest.approx(decode / (output - 1), rel=1e-9)
    assert eng.used_blocks == 0


def test_ttft_includes_queueing_behind_a_full_engine() -> None:
    eng = engine(max_num_seqs=1, max_num_batched_tokens=4096)
    first = Request("first", 0.0, prompt_tokens=800, output_tokens=20)
    second = Request("second", 0.0, prompt_tokens=500, output_tokens=5)
    done = {f.request.request_id: f for f in run_to_completion(eng, [first, second])}
    assert done["second"].queue_s == pytest.approx(done["first"].e2e_s, rel=1e-12)
    assert done["second"].ttft_s == pytest.approx(
        done["first"].e2e_s + PERF.prefill_time(500), rel=1e-12
    )


def test_a_request_longer_than_max_model_len_is_rejected() -> None:
    eng = engine(max_model_len=1024)
    assert not eng.submit(Request("long", 0.0, 1000, 100), 0.0)
    assert eng.rejected and eng.num_outstanding == 0
    assert eng.step(0.0) is None


def test_step_before_the_iteration_ends_is_an_error() -> None:
    eng = engine()
    eng.submit(Request("a", 0.0, 100, 10), 0.0)
    duration = eng.step(0.0)
    assert duration is not None
    with pytest.raises(ValueError, match="before the iteration in flight ends"):
        eng.step(duration / 2)


def test_max_num_batched_tokens_below_max_num_seqs_is_refused() -> None:
    with pytest.raises(ValueError, match="must be >= max_num_seqs"):
        engine(max_num_seqs=512, max_num_batched_tokens=256)


# -------------------------------------------------------------------------- limits


def check_limits(eng: Engine) -> None:
    eng.audit()
    shape = eng.in_flight
    if shape is not None:
        assert shape.num_seqs <= eng.max_num_seqs
        assert shape.num_tokens <= eng.max_num_batched_tokens
        assert shape.num_seqs <= eng.num_running
    assert eng.num_running <= eng.max_num_seqs
    assert 0 <= eng.used_blocks <= eng.total_blocks


@settings(max_examples=25, deadline=None)
@given(
    max_num_seqs=st.integers(1, 24),
    extra_tokens=st.integers(0, 600),
    kv_blocks=st.integers(40, 400),
    seed=st.integers(0, 2**16),
    rate=st.floats(2.0, 60.0),
    multi_step=st.booleans(),
)
def test_batch_and_kv_limits_hold_at_every_iteration(
    max_num_seqs: int,
    extra_tokens: int,
    kv_blocks: int,
    seed: int,
    rate: float,
    multi_step: bool,
) -> None:
    max_tokens = max_num_seqs + extra_tokens
    eng = engine(max_num_seqs, max_tokens, kv_cache_blocks=kv_blocks)
    requests = poisson_requests(
        rate, 4.0, seed=seed, prompt_tokens=(1, 700), output_tokens=(1, 120)
    )
    fitting = [r for r in requests if r.prompt_tokens + r.output_tokens <= eng.max_model_len]
    finished, _ = drive(eng, requests, multi_step=multi_step, on_step=check_limits)
    assert sorted(f.request.request_id for f in finished) == sorted(  # type: ignore[type-var]
        r.request_id for r in fitting
    )
    assert eng.used_blocks == 0 and eng.num_outstanding == 0
    for f in finished:
        assert f.request.arrival_s <= f.first_scheduled_s <= f.first_token_s <= f.finished_s


def test_kv_pressure_preempts_and_every_request_still_finishes() -> None:
    requests = poisson_requests(
        40.0, 10.0, seed=7, prompt_tokens=(200, 800), output_tokens=(100, 400)
    )
    eng = engine(max_num_seqs=64, max_num_batched_tokens=2048, kv_cache_blocks=300)
    finished, _ = drive(eng, requests, on_step=check_limits)
    assert eng.metrics.num_preemptions > 0
    assert any(f.preemptions for f in finished)
    assert len(finished) == len(requests)
    # Recomputation never loses or duplicates a token.
    assert eng.metrics.generation_tokens == sum(r.output_tokens for r in requests)


def test_multi_iteration_steps_change_nothing_but_speed() -> None:
    requests = poisson_requests(8.0, 30.0, seed=3, prompt_tokens=(50, 1500), output_tokens=(5, 300))
    results = []
    for multi_step in (False, True):
        eng = engine(max_num_seqs=32, max_num_batched_tokens=1024, kv_cache_blocks=900)
        finished, trace = drive(eng, requests, multi_step=multi_step)
        results.append((finished, eng, trace))
    (single, e1, t1), (multi, e2, t2) = results
    assert [f.request.request_id for f in single] == [f.request.request_id for f in multi]
    for a, b in zip(single, multi, strict=True):
        assert (a.first_token_s, a.finished_s) == pytest.approx((b.first_token_s, b.finished_s))
    assert e1.iterations == e2.iterations
    assert e1.metrics.itl.snapshot().cumulative == e2.metrics.itl.snapshot().cumulative
    assert t2.iterations < t1.iterations  # fewer calls for the same iterations


# ------------------------------------------------------------------------ Little's law


def test_littles_law_on_a_steady_poisson_load() -> None:
    rate, duration = 6.0, 1200.0
    requests = poisson_requests(
        rate, duration, seed=11, prompt_tokens=(100, 1500), output_tokens=(20, 400)
    )
    eng = engine(max_num_seqs=128, max_num_batched_tokens=4096)
    finished, trace = drive(eng, requests, sample_every_s=0.25)
    assert len(finished) == len(requests)
    # Steady-state window: skip the warm-up and the drain at the end.
    lo, hi = 100.0, duration - 100.0
    in_system = statistics.fmean(n for t, n in trace.samples if lo <= t < hi)
    latency = statistics.fmean(f.e2e_s for f in finished if lo <= f.request.arrival_s < hi)
    assert in_system > 2  # a real queueing regime, not an idle engine
    assert in_system == pytest.approx(rate * latency, rel=0.05)


# ---------------------------------------------------------------------------- metrics


def test_metrics_agree_with_the_finished_requests() -> None:
    requests = poisson_requests(20.0, 20.0, seed=5, prompt_tokens=(10, 900), output_tokens=(1, 200))
    eng = engine(max_num_seqs=48, max_num_batched_tokens=2048, kv_cache_blocks=500)
    finished, _ = drive(eng, requests)
    m = eng.metrics
    n = len(finished)
    assert m.ttft.count == n and m.request_success == {"stop": n}
    assert m.ttft.sum == pytest.approx(sum(f.ttft_s for f in finished))
    assert m.prompt_tokens == sum(r.prompt_tokens for r in requests)
    assert m.generation_tokens == sum(r.output_tokens for r in requests)
    # Every token is either a first token (a TTFT sample) or an ITL sample.
    assert m.itl.count == m.generation_tokens - m.ttft.count
    per_request = {
        E2E_REQUEST_LATENCY: [f.e2e_s for f in finished],
        REQUEST_QUEUE_TIME: [f.queue_s for f in finished],
        REQUEST_PREFILL_TIME: [f.prefill_s for f in finished],
        REQUEST_DECODE_TIME: [f.decode_s for f in finished],
        TIME_PER_OUTPUT_TOKEN: [f.time_per_output_token_s for f in finished],
    }
    for name, values in per_request.items():
        h = m.histograms[name]
        assert h.count == n, name
        assert h.sum == pytest.approx(sum(values)), name
        snap = h.snapshot()
        for bound, cumulative in zip(snap.bounds, snap.cumulative, strict=False):
            assert cumulative == sum(1 for v in values if v <= bound), (name, bound)
    # A request's ITL samples add up to its decode time, the gap of a preemption included.
    assert m.num_preemptions > 0
    assert m.itl.sum == pytest.approx(sum(f.decode_s for f in finished))
    assert (m.num_requests_running, m.num_requests_waiting, m.kv_cache_usage) == (0, 0, 0.0)


def test_gauges_follow_the_scheduler() -> None:
    eng = engine(max_num_seqs=2, max_num_batched_tokens=4096)
    for i in range(5):
        eng.submit(Request(i, 0.0, 512, 50), 0.0)
    assert eng.metrics.num_requests_waiting == 5
    eng.step(0.0)
    m = eng.metrics
    assert (m.num_requests_running, m.num_requests_waiting) == (2, 3)
    expected_blocks = 2 * math.ceil(512 / KV_BLOCK_TOKENS)
    assert m.kv_cache_usage == pytest.approx(expected_blocks / eng.total_blocks)


def test_token_events_list_every_token() -> None:
    eng = Engine(PERF, 8, 1024, record_token_events=True)
    requests = [Request(i, 0.01 * i, 64 + i, 3 + i) for i in range(6)]
    run_to_completion(eng, requests)
    events = eng.drain_token_events()
    tokens: dict[object, int] = {}
    for e in events:
        for rid in e.request_ids:
            tokens[rid] = tokens.get(rid, 0) + 1
    assert tokens == {r.request_id: r.output_tokens for r in requests}
    assert {rid for e in events for rid in e.finished_ids} == set(range(6))
    assert all(a.time_s < b.time_s for a, b in pairwise(events))
