"""A load generator: replays requests (a trace, or a synthetic scenario) against an OpenAI API.

Requests are sent at their arrival times (open loop: a slow server does not slow the arrivals),
streamed, and timed on the client: time to the first token, to the last one, tokens received.
Every run is bounded: by the number of requests, by wall-clock time (open requests are
cancelled at the deadline) and by a cap on requests in flight (beyond it new arrivals are
counted as dropped rather than piling up sockets).
"""

from __future__ import annotations

import asyncio
import csv
import json
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from slotune.emulator.server import PROMPT_TOKENS_HEADER


@dataclass(frozen=True)
class Arrival:
    """One request to send: when (seconds from the start) and how large."""

    at_s: float
    prompt_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class Phase:
    """Poisson arrivals at ``rate_per_s`` for ``duration_s``."""

    duration_s: float
    rate_per_s: float
    label: str = ""


@dataclass(frozen=True)
class Scenario:
    phases: tuple[Phase, ...]
    prompt_tokens: tuple[int, int] = (256, 1024)
    output_tokens: tuple[int, int] = (200, 600)

    @property
    def duration_s(self) -> float:
        return sum(p.duration_s for p in self.phases)

    def phase_at(self, t: float) -> Phase:
        for phase in self.phases:
            if t < phase.duration_s:
                return phase
            t -= phase.duration_s
        return self.phases[-1]

    def arrivals(self, seed: int = 0) -> list[Arrival]:
        rng = random.Random(seed)
        out: list[Arrival] = []
        start = 0.0
        for phase in self.phases:
            t = start
            while phase.rate_per_s > 0:
                t += rng.expovariate(phase.rate_per_s)
                if t >= start + phase.duration_s:
                    break
                out.append(
                    Arrival(t, rng.randint(*self.prompt_tokens), rng.randint(*self.output_tokens))
                )
            start += phase.duration_s
        return out


def steps(*spec: tuple[float, float], **kwargs: tuple[int, int]) -> Scenario:
    """``steps((60, 4), (90, 12), (90, 4))``: (duration s, rate/s) pairs."""
    return Scenario(tuple(Phase(d, r) for d, r in spec), **kwargs)


def read_trace(path: Path, *, speedup: float = 1.0, limit: int | None = None) -> list[Arrival]:
    """A ``*_norm.csv`` trace (``arrival_s,input_tokens,output_tokens``), time compressed by
    ``speedup`` (so its rate is multiplied by it)."""
    out: list[Arrival] = []
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            out.append(
                Arrival(
                    float(row["arrival_s"]) / speedup,
                    max(1, int(row["input_tokens"])),
                    max(1, int(row["output_tokens"])),
                )
            )
            if limit is not None and len(out) >= limit:
                break
    return out


@dataclass
class Result:
    """One request as the client saw it; times in seconds from the run's start."""

    arrival: Arrival
    sent_s: float
    status: int = 0
    first_token_s: float | None = None
    done_s: float | None = None
    tokens: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.done_s is not None and self.error is None

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_s is None else self.first_token_s - self.sent_s

    @property
    def tpot_s(self) -> float | None:
        """Mean time per output token after the first (vLLM's per-request TPOT)."""
        if self.first_token_s is None or self.done_s is None or self.tokens < 2:
            return None
        return (self.done_s - self.first_token_s) / (self.tokens - 1)


@dataclass
class Run:
    results: list[Result] = field(default_factory=list)
    dropped: int = 0
    started_at: float = 0.0  # time.time() of the start

    def window(self, start_s: float, end_s: float) -> list[Result]:
        return [r for r in self.results if start_s <= r.sent_s < end_s]


def percentile(values: Iterable[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


class LoadGenerator:
    """Sends ``arrivals`` to ``base_url`` (``/v1/completions``, streaming)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        max_in_flight: int = 400,
        request_timeout_s: float = 300.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.max_in_flight = max_in_flight
        self.request_timeout_s = request_timeout_s
        self.in_flight = 0

    async def run(
        self,
        arrivals: Sequence[Arrival],
        *,
        max_requests: int = 100_000,
        max_duration_s: float = 3600.0,
        on_result: Callable[[Result], None] | None = None,
        stop: asyncio.Event | None = None,
    ) -> Run:
        run = Run(started_at=time.time())
        origin = time.monotonic()
        deadline = origin + max_duration_s
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        timeout = aiohttp.ClientTimeout(total=self.request_timeout_s)
        tasks: set[asyncio.Task[None]] = set()
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            for arrival in arrivals[:max_requests]:
                wait = origin + arrival.at_s - time.monotonic()
                if origin + arrival.at_s >= deadline:
                    break
                if stop is not None and stop.is_set():
                    break
                if wait > 0:
                    if stop is None:
                        await asyncio.sleep(wait)
                    else:
                        try:
                            await asyncio.wait_for(stop.wait(), wait)
                            break
                        except TimeoutError:
                            pass
                if self.in_flight >= self.max_in_flight:
                    run.dropped += 1
                    continue
                result = Result(arrival, sent_s=time.monotonic() - origin)
                run.results.append(result)
                task = asyncio.create_task(self._one(session, result, origin, on_result))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            # Open requests finish, unless the deadline passes or the caller stops the run.
            while tasks and time.monotonic() < deadline and not (stop and stop.is_set()):
                await asyncio.wait(
                    list(tasks), timeout=min(1.0, max(0.0, deadline - time.monotonic()))
                )
            pending = list(tasks)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        return run

    async def _one(
        self,
        session: aiohttp.ClientSession,
        result: Result,
        origin: float,
        on_result: Callable[[Result], None] | None,
    ) -> None:
        body = {
            "model": self.model,
            "prompt": "x",
            "max_tokens": result.arrival.output_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        headers = {PROMPT_TOKENS_HEADER: str(result.arrival.prompt_tokens)}
        self.in_flight += 1
        try:
            async with session.post(
                f"{self.base_url}/v1/completions", json=body, headers=headers
            ) as response:
                result.status = response.status
                if response.status != 200:
                    result.error = (await response.text())[:200]
                    return
                async for line in response.content:
                    if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                        continue
                    chunk = json.loads(line[6:])
                    usage = chunk.get("usage")
                    if usage:
                        result.tokens = int(usage.get("completion_tokens", result.tokens))
                    choices = chunk.get("choices") or []
                    if not choices:
                        continue
                    if choices[0].get("text") and result.first_token_s is None:
                        result.first_token_s = time.monotonic() - origin
                    if choices[0].get("finish_reason") is not None:
                        result.done_s = time.monotonic() - origin
        except asyncio.CancelledError:
            result.error = "cancelled at the deadline"
            raise
        except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError) as error:
            result.error = f"{type(error).__name__}: {error}"[:200]
        finally:
            self.in_flight -= 1
            if on_result is not None:
                on_result(result)
