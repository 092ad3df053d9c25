"""An iteration-level simulator of one vLLM V1 engine (one replica).

Scheduling follows ``vllm/v1/core/sched/scheduler.py``:

* one token budget (``max_num_batched_tokens``) per iteration; running requests are served
  first in admission order -- each decoding request takes one token, a request still in
  (chunked) prefill takes what is left of its prompt, capped by the budget -- then waiting
  requests are admitted first-come-first-served while budget, sequence slots
  (``max_num_seqs``) and KV blocks last; a waiting request whose first chunk cannot get KV
  blocks stops admission (no skipping ahead);
* the KV cache is paged in blocks of 16 tokens; a running request that cannot get a block
  preempts the most recently admitted running request (possibly itself), which frees all
  its blocks and goes back to the front of the waiting queue to be recomputed -- prompt plus
  the tokens generated so far -- when readmitted; no admission happens in an iteration that
  preempted;
* the iteration that completes a request's (re)prefill samples a token; afterwards every
  iteration produces one token for every decoding request.

Time is simulated and passed in. ``step(now)`` first commits the iteration that ends at
``now`` -- its tokens, first tokens, finished requests and metrics are stamped with that
time -- then schedules the next one and returns its duration from the performance model,
or ``None`` when the engine has nothing to do. The caller calls ``step`` again exactly when
that duration has elapsed, and after submitting work to an idle engine.

Cost per iteration is O(1) plus O(log n) per event (admission, completion, preemption):
decoding requests are not touched each iteration. A decoding request's progress is derived
from a global iteration counter, and the three aggregates an iteration needs -- how many
decoding requests cross a KV block boundary, the total context they attend to, which ones
finish -- are kept incrementally (a phase count modulo the block size, a running sum, and a
heap of finishing iterations).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass
from enum import Enum

from slotune.sim.perf import KV_BLOCK_TOKENS, PerformanceModel, PerfProfile
from slotune.sim.vllm_metrics import VllmMetrics


@dataclass(frozen=True, slots=True)
class Request:
    """One inference request as it reaches the engine."""

    request_id: Hashable
    arrival_s: float
    prompt_tokens: int
    output_tokens: int  # tokens to generate before it stops, >= 1
    finished_reason: str = "stop"

    def __post_init__(self) -> None:
        if self.prompt_tokens < 1 or self.output_tokens < 1:
            raise ValueError(
                f"request {self.request_id!r}: prompt and output need at least one token, "
                f"got {self.prompt_tokens} and {self.output_tokens}"
            )


@dataclass(frozen=True, slots=True)
class FinishedRequest:
    """A completed request with the timestamps vLLM's per-request metrics derive from."""

    request: Request
    first_scheduled_s: float
    first_token_s: float
    finished_s: float
    preemptions: int

    @property
    def ttft_s(self) -> float:
        return self.first_token_s - self.request.arrival_s

    @property
    def e2e_s(self) -> float:
        return self.finished_s - self.request.arrival_s

    @property
    def queue_s(self) -> float:
        return self.first_scheduled_s - self.request.arrival_s

    @property
    def prefill_s(self) -> float:
        return self.first_token_s - self.first_scheduled_s

    @property
    def decode_s(self) -> float:
        return self.finished_s - self.first_token_s

    @property
    def time_per_output_token_s(self) -> float:
        """Mean inter-token latency after the first token (vLLM's per-request TPOT)."""
        n = self.request.output_tokens
        return self.decode_s / (n - 1) if n > 1 else 0.0


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """Tokens produced by one iteration (recorded only when asked: it costs O(batch))."""

    time_s: float
    request_ids: tuple[Hashable, ...]
    finished_ids: tuple[Hashable, ...]


@dataclass(frozen=True, slots=True)
class BatchShape:
    """The batch of the iteration in flight (of each, for a run of decode iterations)."""

    decode_seqs: int
    prefill_seqs: int
    prefill_tokens: int
    iterations: int

    @property
    def num_seqs(self) -> int:
        return self.decode_seqs + self.prefill_seqs

    @property
    def num_tokens(self) -> int:
        return self.decode_seqs + self.prefill_tokens


class _Phase(Enum):
    WAITING = 0
    PREFILL = 1
    DECODE = 2
    DONE = 3


class _State:
    """Mutable per-request bookkeeping (one object per request, never per token)."""

    __slots__ = (
        "base",
        "blocks",
        "computed",
        "finish_iteration",
        "first_scheduled_s",
        "first_token_s",
        "generated",
        "last_token_s",
        "offset",
        "phase",
        "preemptions",
        "request",
        "slot",
        "target",
    )

    def __init__(self, request: Request) -> None:
        self.request = request
        self.phase = _Phase.WAITING
        self.slot = -1  # admission order; the highest running slot is preempted first
        self.computed = 0  # tokens whose KV exists (valid while not decoding)
        self.blocks = 0  # KV blocks held (valid while not decoding)
        self.generated = 0  # output tokens sampled so far (valid while not decoding)
        self.target = request.prompt_tokens  # tokens to (re)compute before sampling
        # While decoding: computed == base + (iteration - offset), generated likewise.
        self.base = 0
        self.offset = 0
        self.finish_iteration = -1
        self.first_scheduled_s = math.nan
        self.first_token_s = math.nan
        self.last_token_s = math.nan
        self.preemptions = 0


@dataclass(frozen=True, slots=True)
class _Chunk:
    state: _State
    tokens: int
    completes: bool  # the chunk finishes the (re)prefill, so the iteration samples a token


@dataclass(frozen=True, slots=True)
class _DecodeRun:
    """The decode-only iterations that follow the first one of a run, in closed form.

    The batch is the same in each, and each attends to ``batch`` more tokens than the one
    before, so iteration ``j`` (from 0) takes ``first + step * j`` seconds: a run of any
    length costs O(1) to extend, cut and commit.
    """

    count: int
    first: float
    step: float
    first_end: float  # when the run's first (scheduled) iteration ends

    def span(self, n: int) -> float:
        """Duration of the first ``n`` of these iterations."""
        return n * self.first + self.step * (n * (n - 1) / 2)

    def reach(self, start: float, target: float) -> int:
        """The fewest iterations ``n >= 0`` after ``start`` whose end is at or after
        ``target`` (may exceed ``count``)."""
        gap = target - start
        if gap <= 0:
            return 0
        a, b = self.step / 2, self.first - self.step / 2
        if a > 0:
            n = math.ceil((-b + math.sqrt(b * b + 4 * a * gap)) / (2 * a))
        else:
            n = math.ceil(gap / self.first)
        n = max(n, 1)
        # The root is exact up to rounding; settle on the definition.
        while n > 1 and start + self.span(n - 1) >= target:
            n -= 1
        while start + self.span(n) < target:
            n += 1
        return n


@dataclass(frozen=True, slots=True)
class _Iteration:
    """What is in flight: one iteration, or a run of identical-batch decode iterations."""

    first_index: int
    last_index: int
    start_s: float
    end_s: float
    decode_seqs: int
    chunks: tuple[_Chunk, ...]
    # The iterations after the first of a decode-only run (their ITL samples).
    run: _DecodeRun | None = None


def _blocks_for(tokens: int) -> int:
    return -(-tokens // KV_BLOCK_TOKENS)


class Engine:
    """One vLLM V1 engine on one replica."""

    def __init__(
        self,
        profile: PerfProfile | PerformanceModel,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        *,
        max_model_len: int | None = None,
        kv_cache_blocks: int | None = None,
        metrics: VllmMetrics | None = None,
        record_token_events: bool = False,
    ) -> None:
        self.perf = profile if isinstance(profile, PerformanceModel) else PerformanceModel(profile)
        if max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {max_num_seqs}")
        if max_num_batched_tokens < max_num_seqs:
            # vLLM refuses this too: every running request must fit one decode token.
            raise ValueError(
                f"max_num_batched_tokens ({max_num_batched_tokens}) must be >= max_num_seqs "
                f"({max_num_seqs})"
            )
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        if kv_cache_blocks is None:
            kv_cache_blocks = self.perf.kv_cache_capacity(max_num_batched_tokens).blocks
        self.total_blocks = kv_cache_blocks
        self.max_model_len = (
            max_model_len if max_model_len is not None else kv_cache_blocks * KV_BLOCK_TOKENS
        )
        self.metrics = metrics if metrics is not None else VllmMetrics()
        self._record_tokens = record_token_events

        self._waiting: deque[_State] = deque()
        self._running: dict[int, _State] = {}  # by admission slot, in admission order
        self._prefilling: dict[int, _State] = {}  # the running ones not yet decoding
        self._next_slot = 0
        self._free_blocks = kv_cache_blocks

        # Aggregates over decoding requests (see the module docstring).
        self._iteration = 0  # index of the next iteration to schedule
        self._decoding = 0
        self._decode_phase_counts = [0] * KV_BLOCK_TOKENS
        self._decode_base_minus_offset = 0
        self._finishing: list[tuple[int, int, _State]] = []  # (iteration, slot, state)

        self._in_flight: _Iteration | None = None
        self.finished: list[FinishedRequest] = []
        self.rejected: list[Request] = []
        self.token_events: list[TokenEvent] = []
        self.iterations = 0
        self.busy_s = 0.0

    # ------------------------------------------------------------------ inspection

    @property
    def busy_until(self) -> float | None:
        """End of the iteration in flight, or None when idle."""
        return self._in_flight.end_s if self._in_flight is not None else None

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def num_outstanding(self) -> int:
        """Requests submitted and not yet finished (what a least-outstanding balancer counts)."""
        return len(self._running) + len(self._waiting)

    @property
    def used_blocks(self) -> int:
        return self.total_blocks - self._free_blocks

    @property
    def kv_cache_usage(self) -> float:
        return self.used_blocks / self.total_blocks if self.total_blocks else 0.0

    @property
    def in_flight(self) -> BatchShape | None:
        it = self._in_flight
        if it is None:
            return None
        return BatchShape(
            decode_seqs=it.decode_seqs,
            prefill_seqs=len(it.chunks),
            prefill_tokens=sum(c.tokens for c in it.chunks),
            iterations=it.last_index - it.first_index + 1,
        )

    def audit(self) -> None:
        """Recount the incremental bookkeeping from scratch; raise if anything disagrees.

        O(running): for tests, never called by the simulator itself.
        """
        next_index = self._iteration
        held = 0
        decoding = 0
        phase_counts = [0] * KV_BLOCK_TOKENS
        for slot, s in self._running.items():
            if s.slot != slot:
                raise AssertionError(f"request {s.request.request_id!r} filed under slot {slot}")
            if s.phase is _Phase.DECODE:
                decoding += 1
                phase_counts[(s.base - s.offset) % KV_BLOCK_TOKENS] += 1
                held += _blocks_for(s.base + next_index - s.offset)
            elif s.phase is _Phase.PREFILL:
                if s.blocks * KV_BLOCK_TOKENS < s.computed or s.computed > s.target:
                    raise AssertionError(f"prefill of {s.request.request_id!r} inconsistent")
                held += s.blocks
            else:
                raise AssertionError(f"running request in phase {s.phase}")
        checks = {
            "blocks held": (held, self.used_blocks),
            "decoding": (decoding, self._decoding),
            "phase counts": (phase_counts, self._decode_phase_counts),
            "prefilling": (
                [k for k, s in self._running.items() if s.phase is _Phase.PREFILL],
                list(self._prefilling),
            ),
        }
        for name, (recount, kept) in checks.items():
            if recount != kept:
                raise AssertionError(f"{name}: recounted {recount}, kept {kept}")
        if not 0 <= self.used_blocks <= self.total_blocks:
            raise AssertionError(f"{self.used_blocks} blocks used of {self.total_blocks}")
        if len(self._running) > self.max_num_seqs:
            raise AssertionError(f"{len(self._running)} running > {self.max_num_seqs}")
        if any(s.phase is not _Phase.WAITING or s.blocks for s in self._waiting):
            raise AssertionError("a waiting request holds KV blocks")

    def drain_finished(self) -> list[FinishedRequest]:
        done, self.finished = self.finished, []
        return done

    def drain_token_events(self) -> list[TokenEvent]:
        events, self.token_events = self.token_events, []
        return events

    # ---------------------------------------------------------------------- intake

    def submit(self, request: Request, now: float) -> bool:
        """Queue ``request`` (arrived at ``now``); False if rejected for its length.

        Like vLLM's API server, a request longer than ``max_model_len`` is refused outright.
        """
        if request.prompt_tokens + request.output_tokens > self.max_model_len:
            self.rejected.append(request)
            return False
        self._waiting.append(_State(request))
        self._publish_scheduler_state()
        return True

    # ------------------------------------------------------------------- iteration

    def step(self, now: float, until: float | None = None) -> float | None:
        """Commit the iteration ending at ``now`` and schedule the next one.

        Returns the next iteration's duration, or None when nothing is left to run.

        With ``until`` -- the caller's next event (an arrival, a scrape) -- the engine may run
        several decode-only iterations back to back as long as each starts before ``until``
        and nothing but the decodes themselves would happen in them (no waiting request, no
        prefill, no finish before the last, no preemption); the returned duration then
        covers them all. Results are identical to stepping one iteration at a time, and the
        simulation is several times faster.
        """
        flight = self._in_flight
        if flight is not None:
            if now < flight.end_s - 1e-12:
                raise ValueError(
                    f"step({now}) before the iteration in flight ends at {flight.end_s}"
                )
            self._commit(flight)
            self._in_flight = None
        if not self._running and not self._waiting:
            self._publish_scheduler_state()
            return None
        duration = self._schedule(now)
        if duration is not None and until is not None and not self._record_tokens:
            duration = self._extend_decode_run(now + duration, until) - now
        self._publish_scheduler_state()
        return duration

    def _extend_decode_run(self, end: float, until: float) -> float:
        """Append decode-only iterations to the one just scheduled; returns the new end."""
        flight = self._in_flight
        if flight is None or flight.chunks or self._waiting or self._prefilling:
            return end
        heap = self._finishing
        while heap and heap[0][2].finish_iteration != heap[0][0]:
            heapq.heappop(heap)  # stale: its request was preempted
        if not heap or end >= until:
            return end
        first = flight.last_index + 1
        # The run may include the first finishing iteration, but not go past it ...
        count = heap[0][0] - first + 1
        # ... nor an iteration that may preempt: leave that to the exact path.
        count = self._iterations_within(first, self._free_blocks, count)
        if count <= 0:
            return end
        b = flight.decode_seqs
        fixed, per_token = self.perf.decode_coefficients(b)
        # Iteration i attends to base_sum + b * (i + 1) tokens (see _schedule).
        context = self._decode_base_minus_offset + b * (first + 1)
        run = _DecodeRun(count, fixed + per_token * context, per_token * b, end)
        if not math.isinf(until):
            count = min(count, run.reach(end, until))
            run = _DecodeRun(count, run.first, run.step, end)
        self._free_blocks -= self._blocks_needed(first, count)
        new_end = end + run.span(count)
        self._in_flight = _Iteration(
            flight.first_index, first + count - 1, flight.start_s, new_end, b, (), run
        )
        self._iteration = first + count
        self.iterations += count
        self.busy_s += new_end - flight.end_s
        return new_end

    def _blocks_needed(self, first: int, count: int) -> int:
        """KV blocks the decode iterations ``first .. first + count - 1`` allocate.

        Each decoding request crosses a block boundary once every KV_BLOCK_TOKENS
        iterations, so the needs repeat with that period and a full period needs one block
        per decoding request.
        """
        counts = self._decode_phase_counts
        cycles, rest = divmod(count, KV_BLOCK_TOKENS)
        return cycles * self._decoding + sum(
            counts[-(first + j) % KV_BLOCK_TOKENS] for j in range(rest)
        )

    def _iterations_within(self, first: int, free: int, limit: int) -> int:
        """How many decode iterations from ``first`` (at most ``limit``) get their blocks."""
        counts = self._decode_phase_counts
        per_cycle = self._decoding
        cycles = limit // KV_BLOCK_TOKENS
        if per_cycle:
            cycles = min(cycles, free // per_cycle)
        n = cycles * KV_BLOCK_TOKENS
        free -= cycles * per_cycle
        while n < limit:  # less than a cycle's worth of blocks (or of iterations) is left
            need = counts[-(first + n) % KV_BLOCK_TOKENS]
            if need > free:
                break
            free -= need
            n += 1
        return n

    def cut_run(self, at: float) -> float | None:
        """End the decode-only run in flight at its first iteration boundary at or after ``at``.

        A cluster routes a request to a replica that may be in the middle of a long run
        (extended to the next scrape, not to the next arrival anywhere in the cluster, which
        would make runs a few iterations long); cutting the run there lets the replica see the
        request exactly when ``step(until=at)`` would have: results are identical and the
        simulation stays fast. Returns the new end of the iteration in flight (None if idle).
        """
        flight = self._in_flight
        if flight is None:
            return None
        run = flight.run
        if run is None:
            return flight.end_s
        keep = run.reach(run.first_end, at)
        if keep >= run.count:
            return flight.end_s
        first_dropped = flight.first_index + 1 + keep
        self._free_blocks += self._blocks_needed(first_dropped, run.count - keep)
        end = run.first_end + run.span(keep)
        self._iteration = first_dropped
        self.iterations -= run.count - keep
        self.busy_s -= flight.end_s - end
        self._in_flight = _Iteration(
            flight.first_index,
            first_dropped - 1,
            flight.start_s,
            end,
            flight.decode_seqs,
            (),
            _DecodeRun(keep, run.first, run.step, run.first_end) if keep else None,
        )
        return end

    def awaiting_first_token(self) -> list[Request]:
        """Requests submitted that have not produced their first token yet."""
        waiting = [s.request for s in self._waiting if math.isnan(s.first_token_s)]
        prefilling = [s.request for s in self._prefilling.values() if math.isnan(s.first_token_s)]
        return prefilling + waiting

    def outstanding_requests(self) -> list[Request]:
        """Requests submitted and not finished, running first (for aborting a killed replica)."""
        return [s.request for s in self._running.values()] + [s.request for s in self._waiting]

    def _schedule(self, now: float) -> float | None:
        j = self._iteration
        budget = self.max_num_batched_tokens
        decode_need = self._decode_phase_counts[-j % KV_BLOCK_TOKENS] if self._decoding else 0

        # Fast path: every running request gets its blocks, so no preemption can happen.
        chunks: list[_Chunk] = []
        need = decode_need
        budget -= self._decoding
        planned: list[tuple[_State, int, int]] = []
        for s in self._prefilling.values():
            if budget <= 0:
                break
            n = min(s.target - s.computed, budget)
            extra = _blocks_for(s.computed + n) - s.blocks
            planned.append((s, n, extra))
            need += extra
            budget -= n
        preempted = False
        if need <= self._free_blocks:
            self._free_blocks -= need
            for s, n, extra in planned:
                s.blocks += extra
                chunks.append(_Chunk(s, n, s.computed + n == s.target))
        else:
            budget, chunks = self._schedule_with_preemption(j, now)
            preempted = True

        if not preempted:
            self._admit_waiting(now, budget, chunks)

        decode_seqs = self._decoding
        if decode_seqs == 0 and not chunks:
            return None
        prefill_tokens = prefill_pairs = prefill_context = 0.0
        for c in chunks:
            prefill_tokens += c.tokens
            prefill_pairs += c.tokens * (c.state.computed + c.tokens / 2)
            prefill_context += c.state.computed + c.tokens
        duration = self.perf.iteration_time(
            decode_seqs=decode_seqs,
            # Each decoding request attends to its KV plus the token being computed.
            decode_context_tokens=(
                self._decode_base_minus_offset + decode_seqs * (j + 1) if decode_seqs else 0
            ),
            prefill_tokens=int(prefill_tokens),
            prefill_seqs=len(chunks),
            prefill_attention_pairs=prefill_pairs,
            prefill_context_tokens=int(prefill_context),
        )
        for c in chunks:
            c.state.computed += c.tokens
        self._in_flight = _Iteration(j, j, now, now + duration, decode_seqs, tuple(chunks))
        self._iteration = j + 1
        self.iterations += 1
        self.busy_s += duration
        return duration

    def _admit_waiting(self, now: float, budget: int, chunks: list[_Chunk]) -> None:
        while self._waiting and budget > 0 and len(self._running) < self.max_num_seqs:
            s = self._waiting[0]
            n = min(s.target, budget)  # a waiting request has no KV: computed == 0
            blocks = _blocks_for(n)
            if blocks > self._free_blocks:
                break
            self._waiting.popleft()
            self._free_blocks -= blocks
            s.blocks = blocks
            s.computed = 0
            s.phase = _Phase.PREFILL
            s.slot = self._next_slot
            self._next_slot += 1
            self._running[s.slot] = s
            self._prefilling[s.slot] = s
            if math.isnan(s.first_scheduled_s):
                s.first_scheduled_s = now
            chunks.append(_Chunk(s, n, n == s.target))
            budget -= n

    def _schedule_with_preemption(self, j: int, now: float) -> tuple[int, list[_Chunk]]:
        """vLLM's running loop, request by request, preempting from the tail as needed."""
        budget = self.max_num_batched_tokens
        chunks: list[_Chunk] = []
        for slot in list(self._running):
            s = self._running.get(slot)
            if s is None:  # preempted by a request ahead of it
                break
            if s.phase is _Phase.DECODE:
                n = 1
                kv = s.base + (j - s.offset)
                extra = 1 if kv % KV_BLOCK_TOKENS == 0 else 0
            else:
                if budget <= 0:
                    continue
                n = min(s.target - s.computed, budget)
                extra = _blocks_for(s.computed + n) - s.blocks
            while extra > self._free_blocks:
                victim_slot = next(reversed(self._running))
                self._preempt(self._running[victim_slot], j, now)
                if victim_slot == slot:
                    break
            if slot not in self._running:
                break
            self._free_blocks -= extra
            budget -= n
            if s.phase is _Phase.PREFILL:
                s.blocks += extra
                chunks.append(_Chunk(s, n, s.computed + n == s.target))
        return budget, chunks

    def _preempt(self, s: _State, j: int, now: float) -> None:
        if s.phase is _Phase.DECODE:
            computed = s.base + (j - s.offset)
            s.generated += j - s.offset
            self._leave_decode(s)
            s.blocks = _blocks_for(computed)
            s.last_token_s = now  # it decoded in every iteration up to the one ending now
        else:
            del self._prefilling[s.slot]
        del self._running[s.slot]
        self._free_blocks += s.blocks
        s.blocks = 0
        s.computed = 0
        s.target = s.request.prompt_tokens + s.generated
        s.phase = _Phase.WAITING
        s.preemptions += 1
        self.metrics.num_preemptions += 1
        self._waiting.appendleft(s)

    # ---------------------------------------------------------------- decode books

    def _enter_decode(self, s: _State, first_iteration: int) -> None:
        """``s`` has sampled ``s.generated`` tokens and decodes from ``first_iteration`` on."""
        del self._prefilling[s.slot]
        s.phase = _Phase.DECODE
        s.base = s.computed
        s.offset = first_iteration
        key = s.base - s.offset
        self._decoding += 1
        self._decode_phase_counts[key % KV_BLOCK_TOKENS] += 1
        self._decode_base_minus_offset += key
        # One token per iteration; the last one is sampled in this iteration:
        s.finish_iteration = first_iteration + (s.request.output_tokens - s.generated) - 1
        heapq.heappush(self._finishing, (s.finish_iteration, s.slot, s))

    def _leave_decode(self, s: _State) -> None:
        key = s.base - s.offset
        self._decoding -= 1
        self._decode_phase_counts[key % KV_BLOCK_TOKENS] -= 1
        self._decode_base_minus_offset -= key
        s.finish_iteration = -1  # the heap entry goes stale

    # ---------------------------------------------------------------------- commit

    def _commit(self, it: _Iteration) -> None:
        end = it.end_s
        m = self.metrics
        run = it.run
        first_duration = (run.first_end if run is not None else end) - it.start_s
        generated = it.decode_seqs * (1 + (run.count if run is not None else 0))
        # Every request that decoded in an iteration produced a token one iteration after its
        # previous one (the engine never idles while requests run).
        m.itl.observe(first_duration, it.decode_seqs)
        if run is not None:
            m.itl.observe_arithmetic(run.first, run.step, run.count, it.decode_seqs)
        token_ids: list[Hashable] = []
        if self._record_tokens:
            token_ids = [
                s.request.request_id for s in self._running.values() if s.phase is _Phase.DECODE
            ]
        finished_ids: list[Hashable] = []

        for c in it.chunks:
            s = c.state
            if not c.completes or s.phase is not _Phase.PREFILL:
                continue
            generated += 1
            s.generated += 1
            if math.isnan(s.first_token_s):
                s.first_token_s = end
                m.ttft.observe(end - s.request.arrival_s)
                m.prompt_tokens += s.request.prompt_tokens
            else:  # a recomputed request resumes: vLLM counts the gap as one ITL sample
                m.itl.observe(end - s.last_token_s)
            s.last_token_s = end
            if self._record_tokens:
                token_ids.append(s.request.request_id)
            if s.generated >= s.request.output_tokens:
                del self._prefilling[s.slot]
                self._finish(s, end, decoding=False)
                finished_ids.append(s.request.request_id)
            else:
                self._enter_decode(s, it.last_index + 1)
        m.generation_tokens += generated

        heap = self._finishing
        while heap and heap[0][0] <= it.last_index:
            index, _, s = heapq.heappop(heap)
            if s.phase is _Phase.DECODE and s.finish_iteration == index:
                self._finish(s, end, decoding=True)
                finished_ids.append(s.request.request_id)
        if self._record_tokens:
            self.token_events.append(TokenEvent(end, tuple(token_ids), tuple(finished_ids)))

    def _finish(self, s: _State, end: float, *, decoding: bool) -> None:
        if decoding:
            # Its last iteration computed the KV of one more token.
            s.blocks = _blocks_for(s.base + (s.finish_iteration - s.offset) + 1)
            self._leave_decode(s)
            s.generated = s.request.output_tokens
        del self._running[s.slot]
        self._free_blocks += s.blocks
        s.blocks = 0
        s.phase = _Phase.DONE
        s.last_token_s = end
        done = FinishedRequest(
            request=s.request,
            first_scheduled_s=s.first_scheduled_s,
            first_token_s=s.first_token_s,
            finished_s=end,
            preemptions=s.preemptions,
        )
        self.finished.append(done)
        self.metrics.observe_finished(
            e2e=done.e2e_s,
            queue=done.queue_s,
            prefill=done.prefill_s,
            decode=done.decode_s,
            inference=end - s.first_scheduled_s,
            time_per_output_token=done.time_per_output_token_s,
            finished_reason=s.request.finished_reason,
        )

    def _publish_scheduler_state(self) -> None:
        self.metrics.set_scheduler_state(
            len(self._running), len(self._waiting), self.kv_cache_usage
        )


def run_to_completion(engine: Engine, requests: list[Request]) -> list[FinishedRequest]:
    """Feed ``requests`` (sorted by arrival) to ``engine`` and run until all are done.

    The reference driver for one replica, used by tests and quick experiments: arrivals that
    fall inside an iteration are submitted before the next one is scheduled, as in vLLM.
    """
    pending = deque(sorted(requests, key=lambda r: r.arrival_s))
    now = 0.0
    while pending or engine.num_outstanding or engine.busy_until is not None:
        while pending and pending[0].arrival_s <= now:
            r = pending.popleft()
            engine.submit(r, r.arrival_s)
        duration = engine.step(now, until=pending[0].arrival_s if pending else math.inf)
        if duration is not None:
            now += duration
        elif pending:
            now = max(now, pending[0].arrival_s)
        else:
            break
    return engine.drain_finished()
