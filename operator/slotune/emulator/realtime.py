"""The simulator's engine, run against the wall clock inside an asyncio loop.

The engine keeps its own exact schedule (every iteration's start and end, in seconds since the
emulator started); this driver only decides *when the Python code catches up with it*. It wakes
when the iteration in flight ends -- never more often than ``min_tick_s`` -- commits every
iteration that has ended by then, and hands the tokens to the requests' streams. An arrival first
brings the engine up to the present, then joins its queue, exactly as
:func:`slotune.sim.engine.run_to_completion` submits arrivals before scheduling the next
iteration. So the engine's metrics are those the simulator would compute for the same arrival
times, and a slow wake-up delays only when a client sees its tokens, never the schedule.

Streams are told about progress sparingly: at the first token, at the end, and otherwise at most
once per ``stream_interval_s``, so a few hundred open streams cost a few events per second each.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from slotune.sim.engine import Engine, FinishedRequest, Request


class RejectedError(ValueError):
    """The request cannot be served (longer than the model's context)."""


@dataclass(eq=False)
class Stream:
    """What one request's HTTP handler waits on."""

    request: Request
    tokens: int = 0
    first_token_s: float | None = None
    finished: FinishedRequest | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    _notified_tokens: int = 0
    _notified_s: float = 0.0

    @property
    def done(self) -> bool:
        return self.finished is not None


class RealtimeEngine:
    """Drives one :class:`Engine` in real time; single-threaded (call from the event loop).

    The engine must be built with ``record_token_events=True``: streams are fed from them.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        stream_interval_s: float = 0.25,
        min_tick_s: float = 0.005,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.stream_interval_s = stream_interval_s
        self.min_tick_s = min_tick_s
        self._clock = clock
        self._origin = clock()
        self._streams: dict[Hashable, Stream] = {}
        self._ids = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self.submitted = 0

    def now(self) -> float:
        """Seconds since the engine started: the engine's clock."""
        return self._clock() - self._origin

    @property
    def outstanding(self) -> int:
        return len(self._streams)

    def submit(self, prompt_tokens: int, output_tokens: int, finished_reason: str) -> Stream:
        now = self.now()
        self.advance(now)
        request = Request(next(self._ids), now, prompt_tokens, output_tokens, finished_reason)
        if not self.engine.submit(request, now):
            raise RejectedError(
                f"This model's maximum context length is {self.engine.max_model_len} tokens. "
                f"However, you requested {prompt_tokens + output_tokens} tokens "
                f"({prompt_tokens} in the messages, {output_tokens} in the completion)."
            )
        stream = Stream(request)
        self._streams[request.request_id] = stream
        self.submitted += 1
        if self.engine.busy_until is None:
            self.engine.step(now)
        self._arm()
        return stream

    def forget(self, stream: Stream) -> None:
        """The client went away; the engine still computes the request (vLLM would abort it,
        the simulator has no abort), its tokens just go nowhere."""
        self._streams.pop(stream.request.request_id, None)

    def advance(self, now: float) -> None:
        """Commit every iteration that has ended by ``now`` and deliver its tokens."""
        engine = self.engine
        while True:
            end = engine.busy_until
            if end is None:
                if engine.num_outstanding and engine.step(now) is not None:
                    continue
                break
            if end > now:
                break
            engine.step(end)
        events = engine.drain_token_events()
        finished = engine.drain_finished()
        if not events and not finished:
            return
        streams = self._streams
        touched: set[Stream] = set()
        for event in events:
            for rid in event.request_ids:
                stream = streams.get(rid)
                if stream is None:
                    continue
                stream.tokens += 1
                if stream.first_token_s is None:
                    stream.first_token_s = event.time_s
                touched.add(stream)
        for done in finished:
            stream = streams.pop(done.request.request_id, None)
            if stream is not None:
                stream.finished = done
                stream.tokens = done.request.output_tokens
                touched.add(stream)
        for stream in touched:
            if (
                stream.done
                or stream._notified_tokens == 0
                or now - stream._notified_s >= self.stream_interval_s
            ):
                stream._notified_tokens = stream.tokens
                stream._notified_s = now
                stream.changed.set()

    # -- the wake-up timer ------------------------------------------------------------------

    def _arm(self) -> None:
        end = self.engine.busy_until
        if end is None:
            return
        at = max(end, self.now() + self.min_tick_s)
        if self._timer is not None and self._timer_at <= at:
            return
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer_at = at
        self._timer = loop.call_at(loop.time() + (at - self.now()), self._tick)

    def _tick(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        self.advance(self.now())
        self._arm()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
