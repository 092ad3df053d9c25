"""The cluster simulator: cold start, rolling restarts, the GPU budget, draining, balancing."""

from __future__ import annotations

import math

import pytest

from slotune.sim.cluster import Cluster, ClusterConfig, PodPhase, Template
from slotune.sim.engine import Engine, Request
from slotune.sim.perf import PerformanceModel
from slotune.sim.profiles import get_profile
from slotune.sim.synthetic import poisson_requests

PERF = PerformanceModel(get_profile("llama-3-8b-h100"))
T1 = Template(64, 2048)
T2 = Template(32, 2048)


def cluster(replicas: int = 2, *, template: Template = T1, **config: object) -> Cluster:
    return Cluster(PERF, ClusterConfig(**config), replicas=replicas, template=template)  # type: ignore[arg-type]


def loads(c: Cluster) -> list[int]:
    return [p.engine.num_outstanding for p in c.routable if p.engine is not None]


def test_warm_start_serves_at_once_and_counts_gpu_seconds() -> None:
    c = cluster(2, gpus_per_replica=4)
    assert c.ready_replicas == 2 and c.gpus_held == 8
    c.advance(100.0)
    assert c.gpu_seconds() == pytest.approx(800.0)


def test_a_new_replica_holds_its_gpu_during_the_cold_start_and_serves_after_it() -> None:
    c = cluster(1, cold_start_s=120.0)
    c.scale(2, 10.0)
    assert c.gpus_held == 2 and c.ready_replicas == 1 and c.count(PodPhase.STARTING) == 1
    c.advance(129.9)
    assert c.ready_replicas == 1
    c.advance(130.1)
    assert c.ready_replicas == 2
    assert c.gpu_seconds(130.1) == pytest.approx(130.1 + 120.1)


def test_the_cold_start_reads_as_the_operator_reads_it_from_the_pods() -> None:
    # Warm pods started cold before the simulated hour; a new one adds its own start.
    c = cluster(2, cold_start_s=300.0)
    assert c.observed_cold_start_s == pytest.approx(300.0)
    c = cluster(0, cold_start_s=120.0)
    assert c.observed_cold_start_s is None
    c.scale(1, 10.0)
    c.advance(200.0)
    assert c.observed_cold_start_s == pytest.approx(120.0)


def test_requests_wait_at_the_gateway_while_nothing_is_ready() -> None:
    c = cluster(0, cold_start_s=120.0)
    c.scale(1, 0.0)
    c.submit(Request("r", 1.0, 100, 5), 1.0)
    assert c.gateway_queue == 1
    c.advance(200.0)
    (done,) = c.drain_finished()
    assert done.ttft_s > 119.0 and c.gateway_queue == 0


def rollout_trace(c: Cluster, until: float) -> list[tuple[int, int, int]]:
    """(ready, pods not terminating, GPUs held) every second."""
    seen = []
    t = c.now
    while t < until:
        t += 1.0
        c.advance(t)
        live = [p for p in c.pods if p.phase is not PodPhase.TERMINATING]
        seen.append((c.ready_replicas, len(live), c.gpus_held))
    return seen


def test_a_small_fleet_rolls_one_pod_at_a_time_and_never_below_the_desired_count() -> None:
    c = cluster(3, cold_start_s=120.0)
    assert c.set_template(T2, 0.0) is True
    assert c.restarts == 1
    seen = rollout_trace(c, 500.0)
    assert min(ready for ready, _, _ in seen) >= 3  # maxUnavailable 0
    assert max(live for _, live, _ in seen) <= 4  # maxSurge 1
    assert all(p.template == T2 and p.phase is PodPhase.READY for p in c.pods)
    assert len(c.pods) == 3
    # One replacement per cold start: the third new pod is ready at 3 x 120 s.
    assert seen[3 * 120 - 2][0] == 3 and c.pods_created == 6


def test_a_large_fleet_rolls_a_quarter_at_a_time() -> None:
    c = cluster(8, cold_start_s=120.0)  # a warm start: all 8 serve at once
    assert c.set_template(T2, 0.0) is True
    done = None
    lowest_ready, most_live = 8, 8
    for t in range(1, 1000):
        c.advance(float(t))
        live = [p for p in c.pods if p.phase is not PodPhase.TERMINATING]
        lowest_ready = min(lowest_ready, c.ready_replicas)
        most_live = max(most_live, len(live))
        if done is None and all(p.template == T2 and p.phase is PodPhase.READY for p in live):
            done = t
    assert lowest_ready >= 8  # maxUnavailable 0
    assert most_live == 10  # maxSurge 25% of 8
    # Four rounds of two pods, a cold start each: 4 x 120 s, not 8 x 120 s.
    assert done is not None and 3 * 120 < done <= 4 * 120 + 2


def test_same_template_is_not_a_restart() -> None:
    c = cluster(2)
    assert c.set_template(T1, 0.0) is False and c.restarts == 0


def test_restart_without_a_spare_gpu_replaces_one_pod_at_a_time_with_a_dip() -> None:
    c = cluster(3, gpu_budget=3, cold_start_s=120.0)
    c.set_template(T2, 0.0)
    # The surge pod cannot be scheduled, so an old pod goes first.
    assert c.ready_replicas == 2 and c.gpus_held == 3
    seen = rollout_trace(c, 500.0)
    assert min(ready for ready, _, _ in seen) == 2  # a dip of one replica, never more
    assert max(gpus for _, _, gpus in seen) <= 3
    assert all(p.template == T2 and p.phase is PodPhase.READY for p in c.pods)
    assert len(c.pods) == 3


def test_replicas_beyond_the_gpu_budget_stay_pending_and_go_first_on_scale_down() -> None:
    c = cluster(1, gpu_budget=4, gpus_per_replica=2, cold_start_s=10.0)
    c.scale(4, 0.0)
    assert c.pending_replicas == 2 and c.gpus_held == 4
    c.advance(100.0)
    assert c.ready_replicas == 2 and c.pending_replicas == 2
    c.scale(2, 100.0)
    assert c.pending_replicas == 0 and c.ready_replicas == 2


def test_pending_replicas_are_scheduled_when_gpus_free_up() -> None:
    c = cluster(2, gpu_budget=2, cold_start_s=10.0, termination_grace_s=0.0)
    c.scale(3, 0.0)
    assert c.pending_replicas == 1
    c.set_template(T1, 0.0)
    c.scale(2, 1.0)  # the pending one is dropped, not a ready one
    assert c.pending_replicas == 0 and c.ready_replicas == 2


def test_scale_down_drains_in_flight_requests_and_routes_no_new_ones() -> None:
    c = cluster(2, termination_grace_s=600.0)
    for k in range(4):
        c.submit(Request(k, 0.0, 200, 400), 0.0)
    assert loads(c) == [2, 2]
    c.scale(1, 0.1)
    draining = [p for p in c.pods if p.phase is PodPhase.TERMINATING]
    assert len(draining) == 1 and c.gpus_held == 2
    c.submit(Request("late", 0.2, 100, 5), 0.2)
    assert draining[0].engine is not None and draining[0].engine.num_outstanding == 2
    c.advance(120.0)
    assert not c.failed
    assert {f.request.request_id for f in c.drain_finished()} == {0, 1, 2, 3, "late"}
    assert c.gpus_held == 1 and len(c.pods) == 1


def test_requests_still_running_when_the_grace_period_ends_are_aborted() -> None:
    c = cluster(1, termination_grace_s=1.0)
    c.submit(Request("long", 0.0, 100, 5000), 0.0)
    c.scale(0, 0.5)
    c.advance(10.0)
    assert [(f.request.request_id, f.reason) for f in c.failed] == [("long", "aborted")]
    assert c.gpus_held == 0 and not c.pods


def test_least_outstanding_balances_and_round_robin_rotates() -> None:
    c = cluster(3)
    for k in range(9):
        c.submit(Request(k, 0.0, 500, 50), 0.0)
    assert loads(c) == [3, 3, 3]
    # A replica with a backlog gets nothing until the others catch up.
    busy = cluster(2)
    for k in range(4):
        busy.routable[0].engine.submit(Request(k, 0.0, 500, 500), 0.0)  # type: ignore[union-attr]
    for k in range(4):
        busy.submit(Request(f"n{k}", 0.0, 500, 50), 0.0)
    assert loads(busy) == [4, 4]

    rr = cluster(3, balancer="round-robin")
    for k in range(4):
        rr.routable[0].engine.submit(Request(k, 0.0, 500, 500), 0.0)  # type: ignore[union-attr]
    for k in range(6):
        rr.submit(Request(f"n{k}", 0.0, 500, 50), 0.0)
    assert loads(rr) == [6, 2, 2]


def test_a_cluster_of_one_equals_one_engine() -> None:
    requests = poisson_requests(4.0, 120.0, seed=5)
    c = cluster(1)
    c.set_horizon(math.inf)
    for r in requests:
        c.advance(r.arrival_s)
        c.submit(r, r.arrival_s)
    c.advance(1e6)
    got = {f.request.request_id: f.finished_s for f in c.drain_finished()}

    e = Engine(PERF, T1.max_num_seqs, T1.max_batched_tokens)
    from slotune.sim.engine import run_to_completion

    want = {f.request.request_id: f.finished_s for f in run_to_completion(e, requests)}
    assert got.keys() == want.keys()
    assert max(abs(got[k] - want[k]) for k in got) < 1e-9


def test_cutting_a_decode_run_is_exact() -> None:
    """Runs extended to a far horizon and cut at arrivals give what stepping to each
    arrival gives."""
    requests = poisson_requests(
        3.0, 300.0, seed=3, prompt_tokens=(100, 2000), output_tokens=(10, 400)
    )

    def drive(cut: bool) -> tuple[dict[object, float], tuple[float, ...], int]:
        e = Engine(PERF, 64, 2048)
        busy: float | None = None
        i = 0
        while i < len(requests) or busy is not None:
            arrival = requests[i].arrival_s if i < len(requests) else math.inf
            if busy is not None and busy < arrival:
                until = (busy // 15 + 1) * 15 if cut else arrival
                d = e.step(busy, until=until)
                busy = busy + d if d is not None else None
                continue
            r = requests[i]
            i += 1
            e.submit(r, arrival)
            if busy is None:
                nxt = requests[i].arrival_s if i < len(requests) else math.inf
                d = e.step(arrival, until=(arrival // 15 + 1) * 15 if cut else nxt)
                busy = arrival + d if d is not None else None
            elif cut:
                busy = e.cut_run(arrival)
        e.audit()
        done = {f.request.request_id: f.finished_s for f in e.drain_finished()}
        return done, e.metrics.itl.snapshot().cumulative, e.iterations

    plain, cut = drive(False), drive(True)
    assert plain[0].keys() == cut[0].keys()
    assert max(abs(plain[0][k] - cut[0][k]) for k in plain[0]) < 1e-9
    assert plain[1] == cut[1] and plain[2] == cut[2]
