"""Seeded synthetic workloads (Poisson arrivals) for tests and quick experiments."""

from __future__ import annotations

import random

from slotune.sim.engine import Request


def poisson_requests(
    rate_per_s: float,
    duration_s: float,
    *,
    seed: int,
    prompt_tokens: tuple[int, int] = (128, 1024),
    output_tokens: tuple[int, int] = (32, 256),
    start_s: float = 0.0,
) -> list[Request]:
    """Requests arriving as a Poisson process of ``rate_per_s`` over ``duration_s``.

    Token counts are uniform over the inclusive ranges. The same seed gives the same list.
    """
    if rate_per_s <= 0 or duration_s <= 0:
        raise ValueError("rate and duration must be positive")
    for name, (lo, hi) in (("prompt", prompt_tokens), ("output", output_tokens)):
        if not 1 <= lo <= hi:
            raise ValueError(f"{name} token range must satisfy 1 <= lo <= hi, got {lo}..{hi}")
    rng = random.Random(seed)
    requests: list[Request] = []
    t = start_s + rng.expovariate(rate_per_s)
    end = start_s + duration_s
    while t < end:
        requests.append(
            Request(
                request_id=len(requests),
                arrival_s=t,
                prompt_tokens=rng.randint(*prompt_tokens),
                output_tokens=rng.randint(*output_tokens),
            )
        )
        t += rng.expovariate(rate_per_s)
    return requests
