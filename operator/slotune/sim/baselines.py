"""The autoscalers people run today, as :class:`~slotune.policy.types.Policy` objects.

All of them scale replicas only and keep the engine's batch flags as they are (the batch
size is fixed at deployment time). Each follows its project's documented algorithm and
defaults; where the original reads a metric we do not have, the substitute is stated.

* :class:`HpaPolicy` -- the Kubernetes HorizontalPodAutoscaler (``autoscaling/v2``) on a
  Pods metric: ``desired = ceil(current_ratio * reporting_pods)`` with a 10 % tolerance,
  missing pods filled in conservatively (0 on a scale-up, the target on a scale-down),
  a 15 s sync period, the default behaviour (scale-up: no stabilisation, at most
  max(+100 %, +4 pods) per period; scale-down: a 300 s stabilisation window, i.e. the
  highest recommendation of the last 5 minutes). The utilisation metric is, by default,
  **batch-slot utilisation** ``num_requests_running / max_num_seqs`` averaged over pods
  (the "batch size" signal of GKE's LLM autoscaling guide); ``kv`` (KV-cache usage) and
  ``waiting`` (queue length per pod) are the alternatives.
* :class:`KpaPolicy` -- Knative's Pod Autoscaler: a concurrency target per replica
  (Knative's effective default 100 x 70 % = 70 in-flight requests), the average concurrency
  over a 60 s stable window and a 6 s panic window, ticks every 2 s on per-second samples
  (the queue-proxy feed; here running + waiting requests of each server), panic when the
  panic window wants twice the ready pods, no scale-down while panicking, panic ends after
  a stable window below the threshold; max scale-up rate 1000x, scale-down rate 2x.
* :class:`SaturationPolicy` -- llm-d's workload-variant-autoscaler saturation analyzer: a
  replica is saturated at KV usage >= 0.8 or >= 5 waiting requests (peaks over the last
  minute); scale up by one replica when the average spare capacity of the non-saturated
  replicas falls below 0.1 KV or 3 queue slots (or none is left); scale down by one only
  if the remaining non-saturated replicas would keep that headroom with the load spread
  over one fewer; nothing while replicas are still starting; every 60 s.
* :class:`StaticPolicy` -- a fixed replica count (provisioned for the peak by the caller).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from slotune.policy.types import Decision, MetricsSnapshot, PolicySpec, Reason, Setting


def _keep_batch(current: Setting, replicas: int) -> Setting:
    return Setting(replicas, current.max_num_seqs, current.max_batched_tokens)


def _bounded(replicas: int, spec: PolicySpec) -> int:
    return min(max(replicas, spec.min_replicas), spec.max_replicas)


def _decision(
    current: Setting,
    replicas: int,
    message: str,
    memory: Mapping[str, Any],
    *,
    reason: Reason | None = None,
) -> Decision:
    if reason is None:
        reason = "BaselineRule" if replicas != current.replicas else "Steady"
    return Decision(_keep_batch(current, replicas), reason, message, memory=dict(memory))


# ------------------------------------------------------------------------------ HPA

HpaMetric = Literal["batch", "kv", "waiting"]


@dataclass(frozen=True)
class HpaPolicy:
    """The Kubernetes HPA (see the module docstring)."""

    metric: HpaMetric = "batch"
    target: float = 0.5
    tolerance: float = 0.1
    interval_s: float = 15.0
    scale_up_window_s: float = 0.0
    scale_down_window_s: float = 300.0
    scale_up_percent: float = 100.0
    scale_up_pods: int = 4
    name: str = "hpa"

    def __post_init__(self) -> None:
        if self.target <= 0:
            raise ValueError("the HPA target must be positive")

    def pod_values(self, snapshot: MetricsSnapshot, current: Setting) -> list[float] | None:
        """The metric of every pod that reports it."""
        if snapshot.pods:
            if self.metric == "batch":
                return [p.running / current.max_num_seqs for p in snapshot.pods]
            if self.metric == "kv":
                return [p.kv_cache_usage for p in snapshot.pods]
            return [p.waiting for p in snapshot.pods]
        # No breakdown: every ready pod is taken to report the average.
        total = {
            "batch": None if snapshot.running is None else snapshot.running / current.max_num_seqs,
            "kv": None
            if snapshot.kv_cache_usage is None
            else snapshot.kv_cache_usage * snapshot.ready_replicas,
            "waiting": snapshot.waiting,
        }[self.metric]
        if total is None or snapshot.ready_replicas == 0:
            return None
        return [total / snapshot.ready_replicas] * snapshot.ready_replicas

    def recommend(self, values: list[float], current: int, missing: int) -> int:
        """``calcPlainMetricReplicas`` of the HPA's replica calculator."""
        ratio = sum(values) / len(values) / self.target
        if missing == 0:
            if abs(1.0 - ratio) <= self.tolerance:
                return current
            return math.ceil(ratio * len(values))
        # Pods without metrics yet (starting): 0 on a scale-up, the target on a scale-down.
        fill = self.target if ratio < 1.0 else 0.0
        filled = [*values, *([fill] * missing)]
        new_ratio = sum(filled) / len(filled) / self.target
        if (
            abs(1.0 - new_ratio) <= self.tolerance
            or (ratio > 1.0 > new_ratio)
            or (ratio < 1.0 < new_ratio)
        ):
            return current
        replicas = math.ceil(new_ratio * len(filled))
        if (new_ratio < 1.0 and replicas > current) or (new_ratio > 1.0 and replicas < current):
            return current
        return replicas

    def decide(
        self,
        snapshot: MetricsSnapshot | None,
        current: Setting,
        spec: PolicySpec,
        memory: Mapping[str, Any],
        now_s: float,
    ) -> Decision:
        history: list[list[float]] = [list(r) for r in memory.get("recommendations", [])]
        values = self.pod_values(snapshot, current) if snapshot is not None else None
        if snapshot is None or not values:
            return _decision(
                current,
                current.replicas,
                "HPA holds: the metric is missing (FailedGetPodsMetric)",
                {"recommendations": history},
                reason="MetricsMissing",
            )
        missing = max(0, current.replicas - snapshot.ready_replicas - snapshot.pending_replicas)
        raw = self.recommend(values, current.replicas, missing)

        # stabilizeRecommendationWithBehaviors: bounded by the recommendations of the windows.
        up_cut, down_cut = now_s - self.scale_up_window_s, now_s - self.scale_down_window_s
        up, down = raw, raw
        for t, rec in history:
            if t > up_cut:
                up = min(up, int(rec))
            if t > down_cut:
                down = max(down, int(rec))
        stabilized = min(max(current.replicas, up), down)
        keep = max(self.scale_up_window_s, self.scale_down_window_s)
        history = [[t, r] for t, r in history if t > now_s - keep] + [[now_s, float(raw)]]

        # Rate limits of the default behaviour (one sync period at a time).
        limit_up = max(
            math.ceil(current.replicas * (1 + self.scale_up_percent / 100)),
            current.replicas + self.scale_up_pods,
        )
        desired = _bounded(min(stabilized, limit_up), spec)
        average = sum(values) / len(values)
        message = (
            f"HPA: {self.metric} {average:.3f} per pod vs target {self.target:g} over "
            f"{len(values)} pods ({missing} starting) -> {raw}, stabilised {desired}"
        )
        return _decision(current, desired, message, {"recommendations": history})


# ------------------------------------------------------------------------------ KPA


@dataclass(frozen=True)
class KpaPolicy:
    """Knative's Pod Autoscaler (see the module docstring)."""

    target: float = 70.0  # in-flight requests per replica
    stable_window_s: float = 60.0
    panic_window_percent: float = 10.0
    panic_threshold: float = 2.0
    max_scale_up_rate: float = 1000.0
    max_scale_down_rate: float = 2.0
    interval_s: float = 2.0
    gauge_interval_s: float = 1.0
    name: str = "kpa"

    def __post_init__(self) -> None:
        if self.target <= 0:
            raise ValueError("the KPA target must be positive")

    @property
    def panic_window_s(self) -> float:
        return self.stable_window_s * self.panic_window_percent / 100

    def scale(
        self,
        stable: float,
        panic: float,
        ready: int,
        panic_since: float | None,
        max_panic_pods: int,
        now_s: float,
    ) -> tuple[int, float | None, int]:
        """Knative's ``autoscaler.Scale``: (desired pods, panic start, max panic pods)."""
        ready_count = float(max(1, ready))
        max_up = math.ceil(self.max_scale_up_rate * ready_count)
        max_down = math.floor(ready_count / self.max_scale_down_rate)
        dspc = math.ceil(stable / self.target)
        dppc = math.ceil(panic / self.target)
        desired_stable = int(min(max(dspc, max_down), max_up))
        desired_panic = int(min(max(dppc, max_down), max_up))
        over = dppc / ready_count >= self.panic_threshold
        if over:
            panic_since = now_s  # start, or extend, the panic
        elif panic_since is not None and panic_since + self.stable_window_s < now_s:
            panic_since, max_panic_pods = None, 0
        desired = desired_stable
        if panic_since is not None:
            desired = max(desired, desired_panic)
            # Never scale down while panicking.
            max_panic_pods = max(max_panic_pods, desired)
            desired = max_panic_pods
        return desired, panic_since, max_panic_pods

    def decide(
        self,
        snapshot: MetricsSnapshot | None,
        current: Setting,
        spec: PolicySpec,
        memory: Mapping[str, Any],
        now_s: float,
    ) -> Decision:
        samples: list[list[float]] = [list(s) for s in memory.get("samples", [])]
        panic_since: float | None = memory.get("panic_since")
        max_panic: int = int(memory.get("max_panic_pods", 0))
        if snapshot is not None and snapshot.running is not None and snapshot.waiting is not None:
            samples.append([now_s, snapshot.running + snapshot.waiting])
        samples = [s for s in samples if s[0] > now_s - self.stable_window_s]
        state = {"samples": samples, "panic_since": panic_since, "max_panic_pods": max_panic}
        if snapshot is None or not samples:
            return _decision(
                current,
                current.replicas,
                "KPA: no concurrency data",
                state,
                reason="MetricsMissing",
            )
        stable = sum(c for _, c in samples) / len(samples)
        recent = [c for t, c in samples if t > now_s - self.panic_window_s] or [samples[-1][1]]
        panic = sum(recent) / len(recent)
        desired, panic_since, max_panic = self.scale(
            stable, panic, snapshot.ready_replicas, panic_since, max_panic, now_s
        )
        desired = _bounded(desired, spec)
        state = {"samples": samples, "panic_since": panic_since, "max_panic_pods": max_panic}
        mode = "panic" if panic_since is not None else "stable"
        message = (
            f"KPA ({mode}): concurrency {stable:.1f} stable / {panic:.1f} panic vs "
            f"{self.target:g} per pod -> {desired}"
        )
        return _decision(current, desired, message, state)


# ----------------------------------------------------------------------- saturation


@dataclass(frozen=True)
class SaturationPolicy:
    """llm-d's saturation analyzer (see the module docstring)."""

    kv_cache_threshold: float = 0.8
    queue_length_threshold: float = 5.0
    kv_spare_trigger: float = 0.1
    queue_spare_trigger: float = 3.0
    interval_s: float = 60.0
    name: str = "saturation"

    def analyze(
        self, kv: list[float], queue: list[float]
    ) -> tuple[bool, bool, float | None, float | None]:
        """(scale up, scale down safe, average spare KV, average spare queue) over replicas
        with the given peak KV usage and queue length."""
        ok = [
            (k, q)
            for k, q in zip(kv, queue, strict=True)
            if k < self.kv_cache_threshold and q < self.queue_length_threshold
        ]
        if not ok:
            return True, False, None, None
        spare_kv = sum(self.kv_cache_threshold - k for k, _ in ok) / len(ok)
        spare_q = sum(self.queue_length_threshold - q for _, q in ok) / len(ok)
        up = spare_kv < self.kv_spare_trigger or spare_q < self.queue_spare_trigger
        down = False
        if len(ok) >= 2:
            remaining = len(ok) - 1
            kv_after = self.kv_cache_threshold - sum(k for k, _ in ok) / remaining
            q_after = self.queue_length_threshold - sum(q for _, q in ok) / remaining
            down = kv_after >= self.kv_spare_trigger and q_after >= self.queue_spare_trigger
        return up, down, spare_kv, spare_q

    def decide(
        self,
        snapshot: MetricsSnapshot | None,
        current: Setting,
        spec: PolicySpec,
        memory: Mapping[str, Any],
        now_s: float,
    ) -> Decision:
        if snapshot is None or not snapshot.pods:
            return _decision(
                current,
                current.replicas,
                "saturation: no per-replica metrics",
                {},
                reason="MetricsMissing",
            )
        ready = snapshot.ready_replicas
        if current.replicas != ready:
            # A previous decision is still being carried out (pods starting or pending):
            # the analyzer keeps the desired count rather than cascade.
            return _decision(
                current, current.replicas, f"saturation: waiting for {ready}/{current.replicas}", {}
            )
        up, down, spare_kv, spare_q = self.analyze(
            [p.kv_cache_usage_peak for p in snapshot.pods], [p.waiting_peak for p in snapshot.pods]
        )
        desired = ready + 1 if up else ready - 1 if down else ready
        desired = _bounded(desired, spec)
        spare = (
            "no replica unsaturated"
            if spare_kv is None or spare_q is None
            else f"spare KV {spare_kv:.2f}, spare queue {spare_q:.1f}"
        )
        return _decision(current, desired, f"saturation: {spare} -> {desired}", {})


# --------------------------------------------------------------------------- static


@dataclass(frozen=True)
class StaticPolicy:
    """A fixed replica count; None keeps whatever runs."""

    replicas: int | None = None
    name: str = "static"

    def decide(
        self,
        snapshot: MetricsSnapshot | None,
        current: Setting,
        spec: PolicySpec,
        memory: Mapping[str, Any],
        now_s: float,
    ) -> Decision:
        replicas = current.replicas if self.replicas is None else self.replicas
        return _decision(current, replicas, f"static: {replicas} replicas", {})
