"""The estimators slotune's policy learns online, each small enough to live in its memory.

Pure and JSON-round-trippable (their fields are what the policy stores in the LLMService
status): an ITL line against the batch, the ITL error budget's burn against the load per
replica, and an engine step's time against the prefill tokens it carries.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from slotune.policy.types import MetricsSnapshot, Setting


@dataclass(frozen=True)
class ItlFit:
    """Weighted least-squares sums of ITL against batch per replica."""

    w: float = 0.0
    sx: float = 0.0
    sy: float = 0.0
    sxx: float = 0.0
    sxy: float = 0.0

    def add(self, x: float, y: float, weight: float, forgetting: float) -> ItlFit:
        f = forgetting
        return ItlFit(
            self.w * f + weight,
            self.sx * f + weight * x,
            self.sy * f + weight * y,
            self.sxx * f + weight * x * x,
            self.sxy * f + weight * x * y,
        )

    def spread(self) -> float:
        """The standard deviation of the batch sizes seen, over their mean (0 before any)."""
        if self.w <= 0 or self.sx <= 0:
            return 0.0
        mean = self.sx / self.w
        return math.sqrt(max(0.0, self.sxx / self.w - mean * mean)) / mean

    def line(self) -> tuple[float, float] | None:
        """(a, b) of ITL = a + b * n, or None before any data."""
        if self.w <= 0:
            return None
        det = self.w * self.sxx - self.sx * self.sx
        if det <= 1e-12:
            return None
        b = (self.w * self.sxy - self.sx * self.sy) / det
        a = (self.sy - b * self.sx) / self.w
        return a, b


@dataclass(frozen=True)
class BurnModel:
    """burn = k * x^beta, learned with forgetting from one (x, burn) pair per window.

    k is the ratio estimator sum(burn) / sum(x^beta) (each window's k_i = burn / x^beta,
    weighted by x^beta); `spread` is the weighted standard deviation of the k_i. Bursty
    traffic makes windows at the same load burn differently, so capacity is planned at
    k + z * spread: the margin grows with the burstiness the service has shown.
    """

    burn: float = 0.0  # sum of burn
    load: float = 0.0  # sum of x^beta
    burn_sq: float = 0.0  # sum of burn^2 / x^beta
    w: float = 0.0  # forgotten count of windows

    def add(self, x: float, burn: float, beta: float, forgetting: float) -> BurnModel:
        f = forgetting
        scaled = x**beta
        return BurnModel(
            self.burn * f + burn,
            self.load * f + scaled,
            self.burn_sq * f + burn * burn / scaled,
            self.w * f + 1.0,
        )

    @property
    def k(self) -> float:
        return self.burn / self.load if self.load > 0 else 0.0

    @property
    def spread(self) -> float:
        if self.load <= 0:
            return 0.0
        return math.sqrt(max(0.0, self.burn_sq / self.load - self.k**2))

    def capacity(self, budget: float, beta: float, z: float) -> float:
        """The load one replica takes before burning `budget`; inf before any burn."""
        k = self.k + z * self.spread
        if k <= 0:
            return math.inf
        return float((budget / k) ** (1 / beta))


@dataclass(frozen=True)
class BurnModels:
    """The budget model at a few exponents, learned side by side from the same windows.

    How fast the burn grows with the load depends on how the stalls combine: one long prompt
    stalls its step alone (burn ~ x), several short ones must land in the same step (burn ~
    x^2), and a prompt mix that shifts between windows steepens it further. The exponent
    that describes a service is the one under which its windows agree: the model with the
    smallest spread of k relative to k sizes the fleet (measured: 1.5 on the synthetic
    days, 2 on the 70B step, 2.5 on the Azure conversation trace; bench/RESULTS.md).
    """

    models: tuple[tuple[float, BurnModel], ...]

    @classmethod
    def from_memory(
        cls, stored: Mapping[str, Mapping[str, float]] | None, exponents: Sequence[float]
    ) -> BurnModels:
        stored = stored or {}
        return cls(tuple((e, BurnModel(**stored.get(f"{e:g}", {}))) for e in exponents))

    def to_memory(self) -> dict[str, dict[str, float]]:
        return {f"{e:g}": model.__dict__ for e, model in self.models}

    def add(self, x: float, burn: float, forgetting: float) -> BurnModels:
        return BurnModels(tuple((e, m.add(x, burn, e, forgetting)) for e, m in self.models))

    @property
    def w(self) -> float:
        """Forgotten count of windows (the same for every exponent)."""
        return self.models[0][1].w

    def best(self) -> tuple[float, BurnModel]:
        """(exponent, model) whose windows agree best; the first before any burn is seen."""
        burning = [(m.spread / m.k, e, m) for e, m in self.models if m.k > 0]
        if not burning:
            return self.models[0]
        _, exponent, model = min(burning, key=lambda item: item[0])
        return exponent, model


# An engine never spends less than this share of its time on decode steps in the model below:
# a price so high that prefill would take all of it is an estimate to distrust, not a load.
MIN_DECODE_SHARE = 0.2


@dataclass(frozen=True)
class StepModel:
    """An engine step's time: decode_s plus per_token_s per prefill token it carries."""

    decode_s: float
    per_token_s: float

    @classmethod
    def from_means(
        cls,
        snapshot: MetricsSnapshot,
        current: Setting,
        replicas: float,
        price: float | None = None,
    ) -> StepModel | None:
        """From exact means (histogram sums over counts: no bucket is interpolated), where
        the engine exports the request prefill time.

        While prompts are prefilled whole (the budget above the mean prompt), a request's
        prefill time is the step that carries its prompt, d + c x (that step's prefill
        tokens), and a mean ITL observation is any step, d + c x (the prefill tokens a step
        carries on average). The prompts that share the first step add about as many tokens
        as a step carries on average, so the two differ by c x the mean prompt. (The median
        of the stalled steps, the other estimate, selects the steps that carried the most
        and read 3.5x the simulator's price; this one reads within ~10%: bench/RESULTS.md,
        session 12.) Once prompts are chunked their prefill spans several steps and the
        difference no longer isolates c, so the price measured before (`price`) stands: a
        token costs what it costs whatever the chunk. The decode step follows from the time
        an engine that never idles spends: c x (prompt tokens/s) of each second on prefill,
        the rest on steps whose mean is the mean ITL, so d = ITL mean x (1 - c x prompt
        tokens/s per replica). None without the data, or with neither regime's price."""
        rate, prompt_rate = snapshot.request_rate, snapshot.prompt_token_rate
        itl, prefill = snapshot.itl_mean, snapshot.prefill_mean
        if not (rate and prompt_rate and itl and replicas > 0):
            return None
        prompt = prompt_rate / rate
        if current.max_batched_tokens >= prompt:
            price = (prefill - itl) / prompt if prefill else None
        if price is None or price <= 0:
            return None
        decode_share = max(MIN_DECODE_SHARE, 1 - price * prompt_rate / replicas)
        return cls(itl * decode_share, price)

    @classmethod
    def from_stalls(cls, snapshot: MetricsSnapshot, current: Setting) -> StepModel | None:
        """From the ITL histogram: its median is a decode step; the median of the
        observations over the target is a step carrying a chunk of min(budget, mean prompt)
        tokens. None unless such stalls are there to measure. (Several prompts can share a
        step, so this prices a token high: a safe side, but a pessimistic one. The policy
        prefers `from_means` where the engine exports what it needs.)"""
        decode, stall = snapshot.itl_median, snapshot.itl_over_median
        rate, prompt_rate = snapshot.request_rate, snapshot.prompt_token_rate
        if decode is None or stall is None or not rate or not prompt_rate or stall <= decode:
            return None
        chunk = min(float(current.max_batched_tokens), prompt_rate / rate)
        return cls(decode, (stall - decode) / chunk)

    @classmethod
    def from_chunked_steps(
        cls, snapshot: MetricsSnapshot, current: Setting, max_share: float = 0.5
    ) -> StepModel | None:
        """When the token budget is below the mean prompt, prompts are cut into full chunks
        of the budget, so the steps carrying one are countable: prompt tokens/s over the
        budget, against all steps (generated tokens/s over running requests, one token per
        request per step). Each step gives every running request one ITL observation, so
        that share of the observations are chunk steps: their median, at the rank
        1 - share/2 of the histogram, is a step carrying exactly the budget. Whether or not
        anything is over the target. None outside that regime or without the data."""
        rate, prompt_rate = snapshot.request_rate, snapshot.prompt_token_rate
        generated, running = snapshot.generation_token_rate, snapshot.running
        budget = float(current.max_batched_tokens)
        decode = snapshot.itl_median
        ready = snapshot.ready_replicas
        if not (rate and prompt_rate and generated and running and decode and ready > 0):
            return None
        if prompt_rate / rate <= budget or running < ready:
            return None
        # The decodes take their tokens out of the budget first: a chunk is what is left.
        chunk = budget - running / ready
        if chunk <= 0:
            return None
        share = prompt_rate * running / (ready * chunk * generated)
        if not 0 < share < max_share:
            return None
        step = histogram_quantile(snapshot.itl_buckets, 1 - share / 2)
        if step is None or step <= decode:
            return None
        return cls(decode, (step - decode) / chunk)

    def blend(self, other: StepModel, weight: float) -> StepModel:
        return StepModel(
            self.decode_s + weight * (other.decode_s - self.decode_s),
            self.per_token_s + weight * (other.per_token_s - self.per_token_s),
        )

    def fitting_chunk(self, goal_s: float) -> float:
        """The most prefill tokens a step may carry and still end within `goal_s`."""
        return (goal_s - self.decode_s) / self.per_token_s

    def prefill_time(self, prompt: float, tokens: int) -> float:
        """Seconds to prefill one `prompt`-token prompt on its own in steps of at most
        `tokens` tokens: a step per chunk, each a decode step plus the chunk's tokens."""
        return max(1.0, prompt / tokens) * self.decode_s + self.per_token_s * prompt

    def prefill_capacity(self, tokens: int, decoding: float = 0.0) -> float:
        """Prompt tokens/s one replica can prefill when every step is full: each decoding
        request takes one token of the step's budget first, prefill gets the rest."""
        chunk = tokens - decoding
        if not chunk > 0:
            return 0.0
        return chunk / (self.decode_s + self.per_token_s * chunk)


def histogram_quantile(buckets: tuple[tuple[float, float], ...], q: float) -> float | None:
    """Prometheus' `histogram_quantile` over (upper bound, cumulative) pairs ending with
    +inf: linear inside the bucket, the last finite bound for the +inf bucket; None empty."""
    if not buckets or buckets[-1][0] != math.inf or max(c for _, c in buckets) <= 0:
        return None
    rank = q * max(c for _, c in buckets)
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        cumulative = max(count, below)  # rates of separate buckets can cross; Prometheus
        # makes them monotonic first, so does this
        if cumulative >= rank:
            if bound == math.inf:
                return lower
            if cumulative <= below:
                return bound
            return lower + (bound - lower) * (rank - below) / (cumulative - below)
        lower, below = bound, cumulative
    return lower
