"""A simulated Deployment of model-server replicas behind a load balancer.

Each replica (a pod) runs one :class:`~slotune.sim.engine.Engine`. The cluster reproduces
what the operator's Deployment does to the serving capacity:

* **Cold start.** A new pod holds its GPUs from the moment it is scheduled but serves only
  ``cold_start_s`` later (image pull, weight loading, CUDA graph capture); until then the
  load balancer does not route to it and Prometheus cannot scrape it (vLLM refuses
  connections until the model is loaded).
* **GPU budget.** Pods that would exceed ``gpu_budget`` GPUs stay ``Pending`` (unschedulable)
  and are scheduled first-come-first-served as GPUs free up.
* **Rolling restart.** The batch flags are command-line flags of ``vllm serve``, so changing
  them changes the pod template and the Deployment rolls: ``maxSurge: 25%`` (rounded up),
  ``maxUnavailable: 0`` (as the rendered Deployment says) -- that many new pods are
  created, and an old one is removed only once the ready count stays at or above the
  desired replicas without it. *Our choice when the surge cannot be scheduled* (the GPU
  budget is full): Kubernetes would stall the rollout forever; we replace one pod at a time
  instead -- an old pod is removed first, which dips the capacity by one replica for a cold
  start. This is what the operator gets by rendering ``maxSurge: 0, maxUnavailable: 1`` when
  one more replica would exceed the budget. No dip happens while a terminating pod
  is about to free a GPU.
* **Scale-down and drain.** A removed pod stops receiving requests at once (its endpoint
  goes), finishes what it holds, and releases its GPUs when the last request is done or
  when ``termination_grace_s`` runs out (the rendered ``terminationGracePeriodSeconds``,
  60 s), whichever comes first; requests still in it then are aborted and reported as
  failed. The ReplicaSet removes unschedulable pods first, then starting ones (newest
  first), then ready ones (the most recently ready first).
* **Load balancing.** Least outstanding requests (ties rotate) by default, round robin as
  an option. Requests that arrive while no pod is ready wait at the gateway (as Knative's
  activator or a retrying proxy would hold them) and are sent when the first pod is ready;
  their TTFT includes that wait.

Time is simulated. The caller drives the cluster with :meth:`Cluster.advance` (process
everything strictly before ``t``), :meth:`Cluster.submit` and the two control calls
:meth:`Cluster.scale` and :meth:`Cluster.set_template` (each advances to its time
first); :meth:`Cluster.set_horizon` tells the engines how far they may run decode-only
iterations ahead (the next scrape or control event). A request routed to a replica in the
middle of such a run cuts the run at the next iteration boundary (:meth:`Engine.cut_run`),
which is exact and keeps the cost per request independent of the number of replicas.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Literal

from slotune.policy.types import ROLLING_UPDATE_MAX_SURGE
from slotune.sim.engine import Engine, FinishedRequest, Request
from slotune.sim.perf import PerformanceModel, PerfProfile
from slotune.sim.vllm_metrics import VllmMetrics

Balancer = Literal["least-outstanding", "round-robin"]
BALANCERS: tuple[Balancer, ...] = ("least-outstanding", "round-robin")


@dataclass(frozen=True, slots=True)
class Template:
    """The batch flags of the pod template (what a rolling restart changes)."""

    max_num_seqs: int
    max_batched_tokens: int


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """How the Deployment and its surroundings behave."""

    gpus_per_replica: int = 1
    gpu_budget: int | None = None
    cold_start_s: float = 120.0
    termination_grace_s: float = 60.0
    balancer: Balancer = "least-outstanding"
    # Histogram buckets of every engine's metrics (None: vLLM's defaults).
    histogram_buckets: Mapping[str, tuple[float, ...]] | None = None
    max_model_len: int | None = None
    kv_cache_blocks: int | None = None

    def __post_init__(self) -> None:
        if self.gpus_per_replica < 1:
            raise ValueError("gpus_per_replica must be >= 1")
        if self.gpu_budget is not None and self.gpu_budget < self.gpus_per_replica:
            raise ValueError(
                f"a GPU budget of {self.gpu_budget} cannot hold one replica of "
                f"{self.gpus_per_replica} GPUs"
            )
        if self.cold_start_s < 0 or self.termination_grace_s < 0:
            raise ValueError("cold start and grace period must be >= 0")
        if self.balancer not in BALANCERS:
            raise ValueError(f"unknown balancer {self.balancer!r}; known: {', '.join(BALANCERS)}")


class PodPhase(Enum):
    PENDING = "Pending"  # not schedulable: no GPU within the budget
    STARTING = "Starting"  # scheduled, holds GPUs, loading the model
    READY = "Ready"  # serving and scraped
    TERMINATING = "Terminating"  # draining: no new requests, still scraped
    GONE = "Gone"


@dataclass(frozen=True, slots=True)
class FailedRequest:
    request: Request
    time_s: float
    reason: Literal["aborted", "rejected", "unfinished"]


class Pod:
    """One replica. Mutable bookkeeping; the engine exists once the pod is scheduled."""

    __slots__ = (
        "busy_until",
        "created_s",
        "engine",
        "gone_s",
        "name",
        "phase",
        "ready_s",
        "scheduled_s",
        "template",
        "terminating_s",
        "version",
    )

    def __init__(self, name: str, template: Template, created_s: float) -> None:
        self.name = name
        self.template = template
        self.phase = PodPhase.PENDING
        self.created_s = created_s
        self.scheduled_s = math.nan
        self.ready_s = math.nan
        self.terminating_s = math.nan
        self.gone_s = math.nan
        self.engine: Engine | None = None
        self.busy_until: float | None = None
        self.version = 0  # invalidates heap entries of a step that was cut or cancelled

    def __repr__(self) -> str:
        return f"Pod({self.name}, {self.phase.value}, {self.template})"


_STEP, _READY, _KILL = 0, 1, 2


class Cluster:
    """The Deployment, its pods, the GPU budget and the load balancer."""

    def __init__(
        self,
        profile: PerfProfile | PerformanceModel,
        config: ClusterConfig,
        *,
        replicas: int,
        template: Template,
        now: float = 0.0,
        warm: bool = True,
    ) -> None:
        """``warm``: the initial pods are ready at ``now`` (a service already running)."""
        if replicas < 0:
            raise ValueError("replicas must be >= 0")
        self.perf = profile if isinstance(profile, PerformanceModel) else PerformanceModel(profile)
        self.config = config
        self.replicas = replicas
        self.template = template
        self.now = now
        self.pods: list[Pod] = []  # live pods (not GONE), in creation order
        self.routable: list[Pod] = []  # READY pods, in the order they became ready
        self.failed: list[FailedRequest] = []
        self.finished: list[FinishedRequest] = []
        self.restarts = 0  # rollouts started
        self.pods_created = 0
        self.retired_metrics: list[VllmMetrics] = []  # of GONE pods, for exact accounting
        self._gateway: deque[Request] = deque()
        self._heap: list[tuple[float, int, int, Pod, int]] = []
        self._seq = 0
        self._rr = 0
        self._horizon = math.inf
        self._held_gpus = 0
        self._gpu_seconds = 0.0
        self._accounted_to = now
        for _ in range(replicas):
            pod = self._create(now)
            if warm:
                self._start(pod, now)
                self._become_ready(pod, now)
                # Started cold before the simulated hour, as a running service's pods did.
                pod.scheduled_s = now - config.cold_start_s
        self._reconcile(now)

    # ------------------------------------------------------------------ inspection

    @property
    def gpus_held(self) -> int:
        return self._held_gpus

    def gpu_seconds(self, until: float | None = None) -> float:
        """GPU-seconds held from the start to ``until`` (default: now)."""
        t = self.now if until is None else until
        return self._gpu_seconds + self._held_gpus * max(0.0, t - self._accounted_to)

    def count(self, phase: PodPhase) -> int:
        return sum(1 for p in self.pods if p.phase is phase)

    @property
    def ready_replicas(self) -> int:
        return len(self.routable)

    @property
    def pending_replicas(self) -> int:
        return self.count(PodPhase.PENDING)

    @property
    def observed_cold_start_s(self) -> float | None:
        """The median time from scheduled to ready of the live pods (the initial warm ones
        started a cold start before ``now``), as the operator reads it from the pods'
        conditions; None without a ready pod."""
        starts = sorted(p.ready_s - p.scheduled_s for p in self.pods if p.ready_s > p.scheduled_s)
        return starts[len(starts) // 2] if starts else None

    @property
    def scraped_pods(self) -> list[Pod]:
        """Pods whose server answers /metrics: ready and draining ones."""
        return [
            p for p in self.pods if p.phase is PodPhase.READY or p.phase is PodPhase.TERMINATING
        ]

    @property
    def gateway_queue(self) -> int:
        return len(self._gateway)

    @property
    def outstanding(self) -> int:
        """Requests in the system: in engines and waiting at the gateway."""
        n = len(self._gateway)
        for p in self.pods:
            if p.engine is not None:
                n += p.engine.num_outstanding
        return n

    @property
    def next_event_s(self) -> float:
        """Time of the next internal event (a finished iteration, a pod ready, a kill)."""
        return self._heap[0][0] if self._heap else math.inf

    def pending_requests(self) -> list[Request]:
        """Requests not finished: at the gateway, then in each pod."""
        out = list(self._gateway)
        for p in self.pods:
            if p.engine is not None:
                out += p.engine.outstanding_requests()
        return out

    def drain_finished(self) -> list[FinishedRequest]:
        for p in self.pods:
            if p.engine is not None and p.engine.finished:
                self.finished.extend(p.engine.drain_finished())
        done, self.finished = self.finished, []
        return done

    # ------------------------------------------------------------------- controls

    def set_horizon(self, t: float) -> None:
        """Engines may run decode-only iterations up to the first boundary at or after ``t``."""
        self._horizon = t

    def scale(self, replicas: int, now: float) -> None:
        if replicas < 0:
            raise ValueError("replicas must be >= 0")
        self.advance(now)
        self.replicas = replicas
        self._reconcile(now)

    def set_template(self, template: Template, now: float) -> bool:
        """Change the batch flags; True if that starts a rollout."""
        self.advance(now)
        if template == self.template:
            return False
        self.template = template
        self.restarts += 1
        self._reconcile(now)
        return True

    # ------------------------------------------------------------------- requests

    def submit(self, request: Request, now: float) -> None:
        """A request arrives at the load balancer at ``now``."""
        self.advance(now)
        if not self.routable:
            self._gateway.append(request)
            return
        self._route(request, now)

    def _route(self, request: Request, now: float) -> None:
        pods = self.routable
        n = len(pods)
        start = self._rr % n
        self._rr += 1
        if self.config.balancer == "round-robin" or n == 1:
            pod = pods[start]
        else:
            pod = pods[start]
            engine = pod.engine
            assert engine is not None
            best = engine.num_outstanding
            for k in range(1, n):
                candidate = pods[(start + k) % n]
                e = candidate.engine
                assert e is not None
                load = e.num_outstanding
                if load < best:
                    pod, best = candidate, load
        engine = pod.engine
        assert engine is not None
        if not engine.submit(request, now):
            self.failed.append(FailedRequest(request, now, "rejected"))
            return
        if pod.busy_until is None:
            self._step(pod, now)
        elif pod.busy_until > now:
            end = engine.cut_run(now)
            if end is not None and end != pod.busy_until:
                pod.busy_until = end
                pod.version += 1
                self._push(end, _STEP, pod)

    # ----------------------------------------------------------------- event loop

    def advance(self, t: float) -> None:
        """Process every internal event strictly before ``t``; the clock ends at ``t``."""
        heap = self._heap
        while heap and heap[0][0] < t:
            time, _, kind, pod, version = heapq.heappop(heap)
            if version != pod.version or pod.phase is PodPhase.GONE:
                continue
            self._clock(time)
            if kind == _STEP:
                self._step(pod, time)
                if (
                    pod.phase is PodPhase.TERMINATING
                    and pod.busy_until is None
                    and pod.engine is not None
                    and pod.engine.num_outstanding == 0
                ):
                    self._remove(pod, time)
                    self._reconcile(time)
            elif kind == _READY:
                self._become_ready(pod, time)
                self._reconcile(time)
            else:  # _KILL: the grace period is over
                engine = pod.engine
                if engine is not None:
                    for r in engine.outstanding_requests():
                        self.failed.append(FailedRequest(r, time, "aborted"))
                self._remove(pod, time)
                self._reconcile(time)
        self._clock(t)

    def _step(self, pod: Pod, now: float) -> None:
        engine = pod.engine
        assert engine is not None
        duration = engine.step(now, until=self._horizon)
        if duration is None:
            pod.busy_until = None
            return
        pod.busy_until = now + duration
        self._push(pod.busy_until, _STEP, pod)

    def _push(self, time: float, kind: int, pod: Pod) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (time, self._seq, kind, pod, pod.version))

    def _clock(self, now: float) -> None:
        if now < self.now - 1e-9:
            raise ValueError(f"time went backwards: {now} < {self.now}")
        if now > self._accounted_to:
            self._gpu_seconds += self._held_gpus * (now - self._accounted_to)
            self._accounted_to = now
        self.now = max(self.now, now)

    # --------------------------------------------------------------- pod lifecycle

    def _create(self, now: float) -> Pod:
        self.pods_created += 1
        pod = Pod(f"pod-{self.pods_created}", self.template, now)
        self.pods.append(pod)
        return pod

    def _free_gpus(self) -> float:
        if self.config.gpu_budget is None:
            return math.inf
        return self.config.gpu_budget - self._held_gpus

    def _start(self, pod: Pod, now: float) -> None:
        """Schedule ``pod``: it takes its GPUs and begins its cold start."""
        pod.phase = PodPhase.STARTING
        pod.scheduled_s = now
        self._held_gpus += self.config.gpus_per_replica
        c = self.config
        pod.engine = Engine(
            self.perf,
            pod.template.max_num_seqs,
            pod.template.max_batched_tokens,
            max_model_len=c.max_model_len,
            kv_cache_blocks=c.kv_cache_blocks,
            metrics=VllmMetrics(c.histogram_buckets)
            if c.histogram_buckets is not None
            else VllmMetrics(),
        )
        self._push(now + c.cold_start_s, _READY, pod)

    def _become_ready(self, pod: Pod, now: float) -> None:
        pod.phase = PodPhase.READY
        pod.ready_s = now
        pod.version += 1  # the pending _READY entry of a warm start is void
        self.routable.append(pod)
        while self._gateway:
            self._route(self._gateway.popleft(), now)

    def _terminate(self, pod: Pod, now: float) -> None:
        """Take ``pod`` out of service: drain it if it serves, drop it otherwise."""
        if pod.phase is PodPhase.READY:
            self.routable.remove(pod)
            pod.phase = PodPhase.TERMINATING
            pod.terminating_s = now
            engine = pod.engine
            assert engine is not None
            if engine.num_outstanding == 0 and pod.busy_until is None:
                self._remove(pod, now)
            else:
                self._push(now + self.config.termination_grace_s, _KILL, pod)
        elif pod.phase in (PodPhase.PENDING, PodPhase.STARTING):
            self._remove(pod, now)

    def _remove(self, pod: Pod, now: float) -> None:
        if pod.phase is PodPhase.GONE:
            return
        if pod.phase is not PodPhase.PENDING:
            self._held_gpus -= self.config.gpus_per_replica
        if pod in self.routable:
            self.routable.remove(pod)
        if pod.engine is not None:
            self.finished.extend(pod.engine.drain_finished())
            self.retired_metrics.append(pod.engine.metrics)
            pod.engine = None
        pod.phase = PodPhase.GONE
        pod.gone_s = now
        pod.busy_until = None
        pod.version += 1
        self.pods.remove(pod)

    def _schedule_pending(self, now: float) -> None:
        for pod in self.pods:
            if pod.phase is PodPhase.PENDING:
                if self._free_gpus() < self.config.gpus_per_replica:
                    break  # first come, first served: no overtaking
                self._start(pod, now)

    # ---------------------------------------------------------- deployment controller

    @staticmethod
    def _removal_order(pods: list[Pod]) -> list[Pod]:
        """The ReplicaSet's preference: unscheduled, then starting (newest first), then ready
        (most recently ready first)."""
        rank = {PodPhase.PENDING: 0, PodPhase.STARTING: 1, PodPhase.READY: 2}

        def key(p: Pod) -> tuple[int, float]:
            newest = p.ready_s if p.phase is PodPhase.READY else p.created_s
            return rank[p.phase], -newest

        return sorted(pods, key=key)

    def _reconcile(self, now: float) -> None:
        """Move the pods toward (replicas, template) the way the Deployment controller does."""
        live = [p for p in self.pods if p.phase is not PodPhase.TERMINATING]
        new = [p for p in live if p.template == self.template]
        old = [p for p in live if p.template != self.template]
        n = self.replicas
        if not old:
            if len(new) < n:
                for _ in range(n - len(new)):
                    self._create(now)
            elif len(new) > n:
                for p in self._removal_order(new)[: len(new) - n]:
                    self._terminate(p, now)
            self._schedule_pending(now)
            return

        # Rolling update, maxSurge 25% (rounded up) / maxUnavailable 0. Old pods that do not
        # serve count for nothing: remove them at once.
        for p in old:
            if p.phase is not PodPhase.READY:
                self._terminate(p, now)
        old_ready = [p for p in old if p.phase is PodPhase.READY]
        if len(new) > n:
            for p in self._removal_order(new)[: len(new) - n]:
                self._terminate(p, now)
            new = [p for p in new if p.phase not in (PodPhase.GONE, PodPhase.TERMINATING)]
        # Old pods go while the ready count stays at or above the desired one without them.
        ready = sum(1 for p in new if p.phase is PodPhase.READY) + len(old_ready)
        for p in self._removal_order(old_ready):
            if ready - 1 < n:
                break
            self._terminate(p, now)
            old_ready.remove(p)
            ready -= 1
        # New pods come while the total stays within desired + maxSurge (terminating pods
        # are not counted, as in the Deployment controller).
        surge = max(1, math.ceil(ROLLING_UPDATE_MAX_SURGE * n))
        while len(new) < n and len(new) + len(old_ready) < n + surge:
            new.append(self._create(now))
        self._schedule_pending(now)
        # The surge pod cannot get a GPU and nothing will free one soon: replace in place.
        surge_blocked = (
            old_ready
            and any(p.phase is PodPhase.PENDING for p in new)
            and not any(p.phase is PodPhase.STARTING for p in new)
            and not any(p.phase is PodPhase.TERMINATING for p in self.pods)
        )
        if surge_blocked:
            self._terminate(self._removal_order(old_ready)[0], now)
            self._schedule_pending(now)
