"""slotune's policy: joint control of the engine batch knobs and the replica count.

The idea, in four steps each cycle:

1. Learn how inter-token latency grows with the batch on *this* model and GPU: fit
   ITL_p = a + b * n (n = requests running per replica) from the observed (n, ITL) pairs, with
   forgetting, starting from a weak prior (b = a / 100: a decode step's cost at ~1.5k tokens
   of context for 8B-70B models on H100) so the first decisions are sane before the load has
   varied. The percentile ITL includes the stalls that prefill chunks cause, which also grow
   with the load per replica, so the fit is empirical, not a decode-step model.
2. Choose the batch limit from the ITL target: the largest n whose predicted ITL stays under
   the target with a margin. Capping the batch there keeps ITL in check even during a surge;
   excess requests wait, TTFT rises, and step 3 adds replicas. Changing the limit restarts the
   servers, so it is changed only when the gain is large and not more often than a cooldown.
3. Choose the fewest replicas that keep every replica below a utilisation of that batch limit
   (demand = running + waiting, Little's law) and within the ITL error budget, within min/max
   and the GPU budget. The budget model: the fraction of inter-token latencies over the target
   (the SLO's burn, read from the histogram) grows with the prompt tokens per second each
   replica takes, x, as burn = k * x^beta (each prefill stalls the decodes running beside it
   for as long as its tokens take; measured in the simulator, burn/x grows ~1.4-1.8x from 2
   to 12 req/s per replica at a fixed prompt mix, more where the mix shifts). k is learned
   from every window at beta = 1.5, 2 and 2.5 side by side, and the exponent under which the
   windows agree best sizes the fleet, so this holds for models, GPUs and traffic no profile
   describes, and it still says how much room is left while the quantile is comfortably
   under target, which is what lets the policy scale before a violation instead of after
   it. Load is forecast one cold start ahead from the trend of the window's request rate;
   the last minute's rate says whether a climb is a ramp or a step already taken, and how
   far a fall has already gone. Scale up at once (bounded step) on a predicted or observed
   violation; scale down only when the smaller count has kept being enough for the whole
   stabilisation window, one bounded step at a time.
4. Choose the token budget (max-num-batched-tokens): a step carrying a prefill chunk stalls
   the decodes beside it, so when those stalls are what sizes the fleet, shrink the chunk to
   the largest that fits beside a decode step within the ITL goal (Sarathi-Serve's rule), and
   below the mean prompt (where a whole prompt fits, prompts sharing a step are what stall).
   A prefill token's price comes from exact means (the request prefill time's over the ITL's,
   per mean prompt) where the engine exports them, else from the ITL histogram (its median;
   the median of what is over target, or, once prompts are cut into chunks, the median of the
   steps that carry one), and the same step model caps the prompt tokens/s a replica can
   prefill at a given budget: at 70% of it, or busier (up to 85%) where a prompt's queueing
   for prefill at the TTFT percentile still fits in 60% of the target (an M/M/1 queue, scaled
   down to the TTFT that settled windows show where they show less; 80% of the target where
   the arrivals are Poisson-like, as M/M/1 assumes, from minute to minute).

Everything it needs to remember (fit statistics, recommendation history, cooldowns) is in the
small `memory` dict that the operator keeps in the LLMService status.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from slotune.policy.models import BurnModels, ItlFit, StepModel
from slotune.policy.types import (
    RECENT_RATE_WINDOW_S,
    Decision,
    MetricsSnapshot,
    PolicySpec,
    Reason,
    Setting,
    rollout_rounds,
    surge_blocked,
)

STALE_AFTER_S = 60.0
BACKLOG_DRAIN_S = 240.0  # drain a queue within about two (two-minute) cold starts


@dataclass(frozen=True)
class SlotuneConfig:
    """The one default configuration; not tuned per scenario."""

    itl_margin: float = 0.85  # aim the batch limit at 85% of the ITL target
    target_utilisation: float = 0.75  # demand per replica / batch limit when scaling up
    scale_down_utilisation: float = 0.6  # ... and the stricter bar for removing a replica
    ttft_scale_down_bar: float = 0.6  # observed TTFT must be under 60% of target to shrink
    ttft_floor_drift: float = 0.02  # the TTFT floor follows a higher TTFT by 2% a cycle
    ttft_floor_room: float = 0.3  # ... and a TTFT within 30% of the room above it may shrink
    max_step_up: float = 1.0  # at most double per decision (plus one)
    # At most a quarter fewer per decision: in the standard class nothing but TTFT says how
    # close a replica is to its prefill limit, and halving the fleet in a lull let the next
    # burst queue (bench/RESULTS.md, session 8).
    max_step_down: float = 0.25
    prior_slope_ratio: float = 1 / 100  # b = a * ratio before the data says otherwise
    prior_weight: float = 4.0  # pseudo-observations behind the prior
    forgetting: float = 0.97  # per observation
    retune_gain: float = 0.3  # change the batch limit only for a >= 30% move
    retune_cooldown_s: float = 900.0
    min_observed_batch: float = 0.5  # below this the ITL samples say little about the slope
    min_fit_samples: float = 5.0  # (forgotten-weighted) observations before any retune
    binding_fraction: float = 0.8  # retune only when replicas run at >= 80% of the limit
    # burn = k * (prompt tokens/s per replica) ** exponent, at the exponent whose windows
    # agree best; the first before any burn is seen.
    burn_exponents: tuple[float, ...] = (1.5, 2.0, 2.5)
    budget_use_up: float = 0.9  # size replicas to burn at most 90% of the error budget
    budget_use_down: float = 0.75  # ... and remove one only if it stays under 75%
    # Where arrivals are Poisson-like, 95% and 85%: their minutes swing little, so the
    # windows' burn at a load does too.
    budget_use_up_poisson: float = 0.95
    budget_use_down_poisson: float = 0.85
    burn_spread_z: float = 1.0  # plan for windows one standard deviation worse than the mean
    min_window_tokens: float = 2000.0  # ITL samples in a window before it teaches the model
    min_burn_samples: float = 3.0  # (forgotten-weighted) windows before the model sizes replicas
    max_load_change: float = 0.5  # learn only from windows whose load moved less than this
    lead_s: float = 150.0  # forecast at least this far ahead: a cold start and an interval
    trend_horizon_s: float = 180.0  # fit the request rate's trend over this much history
    max_trend_growth: float = 0.5  # ... and let it add at most half the rate to the forecast
    backlog_fraction: float = 0.1  # a queue this share of a window's requests hides the trend
    scale_down_spacing_s: float = 120.0  # between steps down once the budget model is trusted
    clear_burn: float = 0.25  # ... or while the burn is under a quarter of the budget
    prefill_utilisation: float = 0.7  # of the prefill capacity a token budget leaves, up
    prefill_utilisation_down: float = 0.6  # ... and to remove a replica
    prefill_utilisation_max: float = 0.85  # both up to 0.15 higher where TTFT allows
    prefill_utilisation_max_poisson: float = 0.9  # ... 0.2 where arrivals are Poisson-like
    prefill_ttft_share: float = 0.6  # ... by keeping the wait for prefill in this share
    prefill_ttft_share_poisson: float = 0.8  # ... or this one where arrivals are Poisson-like
    # E2E is planned within 85% of the room above its floor (itl_margin), and a replica
    # removed only if E2E stays within 60% of it.
    e2e_down_room: float = 0.6
    # ... and sized by the model only where that room is at least 10% of the target: closer,
    # a sliver of E2E is worth many replicas, and the model's slope decides them (on on/off
    # bursts at 2 s / 60 ms / 8 s E2E, a floor 2% under the target after a retune asked for
    # 26 replicas where 5 served; bench/RESULTS.md, session 23).
    e2e_min_room: float = 0.1
    mean_fit_spread: float = 0.2  # the batch sizes seen spread by 20% of their mean
    poisson_swing: float = 2.0  # ... a median minute's rate within 2 Poisson deviations
    # The queueing model's TTFT, scaled down to what calm windows showed (never up: the
    # floors stay where they are), learnt only from windows at least this busy in prefill,
    # where the queue's part of TTFT is what the scale is learnt from.
    ttft_calibration_load: float = 0.4
    ttft_calibration_weight: float = 0.3  # how fast the scale follows new windows
    step_model_weight: float = 0.3  # how fast the step model follows new measurements
    chunk_headroom: float = 1.5  # shrink prefill chunks only if the goal is >= 1.5 decode steps
    chunk_change: float = 0.7  # ... and only to at most 70% of the chunk they replace
    chunk_ttft_bar: float = 0.9  # ... while TTFT, lengthened by the extra chunk steps, fits
    ttft_growth_queue: float = 2.0  # waiting per replica before a broken TTFT grows the fleet
    unsettling_queue_s: float = 1.0  # a queue of a second's arrivals unsettles a window


def _e2e_model(
    snapshot: MetricsSnapshot,
    mean_line: tuple[float, float] | None,
    concurrency: Callable[[int], float],
    *,
    serving: float,
    price: float,
    prompt_share: float,
    forecast: float,
) -> tuple[Callable[[int], float], float] | None:
    """Predicted E2E at its percentile with `r` replicas, and the floor no count goes below.

    A request's time after its first token (the E2E quantile less the TTFT quantile) is its
    output length times the mean ITL, so it scales with the mean ITL at the batch each replica
    would run: by the line fitted to it where there is one (it holds the prefill steps beside
    the decodes too), else by what prefill takes of each second, at `price` per prompt token
    (a decode step stretched by 1 / (1 - busy)). Scaled from the window's own time, at the
    replicas it was served by (`serving`). TTFT as now: the prefill model sizes for it.
    None without the quantiles."""
    if snapshot.e2e is None or snapshot.ttft is None or serving <= 0:
        return None
    ttft = snapshot.ttft
    decoding = max(0.0, snapshot.e2e - ttft)
    if mean_line is not None:
        a, b = max(mean_line[0], 1e-6), max(mean_line[1], 0.0)
        now = (a + b * (snapshot.running or 0.0) / serving) / a

        def later(replicas: int) -> float:
            return (a + b * concurrency(replicas)) / a
    else:

        def stretch(replicas: float, load: float) -> float:
            return 1 / (1 - min(0.95, price * load * prompt_share / replicas))

        now = stretch(serving, snapshot.request_rate or 0.0)

        def later(replicas: int) -> float:
            return stretch(replicas, forecast)

    empty = decoding / now
    return (lambda replicas: ttft + empty * later(replicas)), ttft + empty


def _with_prior(fit: ItlFit, x: float, y: float, cfg: SlotuneConfig) -> ItlFit:
    """Pseudo-observations on the prior line through (x, y) with slope ratio b/a."""
    a = y / (1 + cfg.prior_slope_ratio * x)
    b = a * cfg.prior_slope_ratio
    prior = ItlFit()
    for n in (1.0, 256.0):
        prior = prior.add(n, a + b * n, cfg.prior_weight / 2, 1.0)
    return ItlFit(
        fit.w + prior.w,
        fit.sx + prior.sx,
        fit.sy + prior.sy,
        fit.sxx + prior.sxx,
        fit.sxy + prior.sxy,
    )


def _arrival_rate(
    snapshot: MetricsSnapshot, mem: dict[str, Any], now_s: float, drain_s: float, backlog_s: float
) -> tuple[float, bool]:
    """Requests per second arriving, not just finishing, plus what drains the backlog; and
    whether the replicas already serving drain the queue within `drain_s` on their own.

    The finished rate is capped by today's capacity; the queue's growth since the last
    snapshot is the part of the arrivals that did not get in. The backlog itself is drained
    over `backlog_s` (about two cold starts), not held in parallel (sizing for it would double
    replicas every cycle while new ones are still starting). A queue that shrinks fast enough
    to be gone before a new replica could serve (`drain_s`: a cold start) needs none: replicas
    added for it would arrive after it, to an idle fleet.
    """
    rate = snapshot.request_rate or 0.0
    waiting = snapshot.waiting or 0.0
    inflow = 0.0
    draining = False
    previous = mem.get("queue")
    if previous is not None and 0 < now_s - previous[0] <= 180:
        change = (waiting - previous[1]) / (now_s - previous[0])
        inflow = max(0.0, change)
        draining = change < 0 and waiting <= -change * drain_s
    mem["queue"] = [now_s, waiting]
    # The backlog a new replica will find: what waits now and what keeps joining it until
    # it serves.
    backlog = 0.0 if draining else (waiting + inflow * drain_s) / backlog_s
    return rate + inflow + backlog, draining


def _lead(snapshot: MetricsSnapshot, spec: PolicySpec, default_s: float) -> float:
    """How far ahead a replica asked for now serves: the cold start the service's pods showed
    and a tuning interval, never less than `default_s` (a two-minute cold start and one).
    (70B weights from network storage take five to ten minutes to load; with a 300 s cold
    start a forecast 150 s ahead lost a window of the diurnal day that 330 s holds;
    bench/RESULTS.md, session 20.)"""
    if snapshot.cold_start_s is None:
        return default_s
    return max(default_s, snapshot.cold_start_s + spec.interval_s)


def _concurrency_model(
    snapshot: MetricsSnapshot,
    line: tuple[float, float] | None,
    arrival: float,
    saturated: bool = False,
) -> Callable[[int], float]:
    """Predicted requests in flight per replica if there were `r` replicas.

    Little's law, anchored on what is observed: now each request spends T = running / rate
    in a server, at n0 = running / ready per replica. Its time scales with the per-token
    latency, ITL(n) = a + b n, so with r replicas and `arrival` requests per second,
    n = (arrival / r) * T * ITL(n) / ITL(n0), which has a closed form and grows faster than
    1/r as load concentrates. (Anchoring matters: the fitted line is of the percentile ITL,
    several times the mean when prefill chunks stall decodes, so it gives the shape of the
    growth, not absolute times.)

    Little's law holds in a steady state only. While requests queue behind full batches
    (`saturated`), the running gauge sits at the limit and the window's finished rate still
    reads the load before the surge: their ratio, grown further along the ITL line, sized a
    3x step's fleet for 5 replicas where the oracle serves it with 2 (bench/RESULTS.md,
    session 14). A replica with a full batch serves what it finishes now, at the latency it
    has now: the last minute's finished rate per full batch is its throughput, with no
    growth beyond.
    """
    rate = snapshot.request_rate or 0.0
    running = snapshot.running or 0.0
    ready = snapshot.ready_replicas
    if rate <= 0 or running <= 0 or ready <= 0:
        total = running + (snapshot.waiting or 0.0)
        return lambda r: total / r
    in_server = running / rate  # seconds per request, by Little's law
    if saturated:
        in_server = running / max(rate, snapshot.recent_request_rate or 0.0)
        return lambda r: arrival * in_server / r

    def per_replica(r: int) -> float:
        spread = arrival * in_server / r
        if line is None:
            return spread
        a, b = line
        b = max(b, 0.0)
        now_itl = a + b * running / ready
        if now_itl <= 0:
            return spread
        k = arrival / r * in_server / now_itl  # requests per unit of ITL, per replica
        denominator = 1 - k * b
        if denominator <= 0:
            return math.inf
        return max(spread, k * a / denominator)

    return per_replica


def _window_mean_ready(
    mem: dict[str, Any], now_s: float, ready: int, spec: PolicySpec
) -> float | None:
    """Ready replicas averaged over the SLO window (the window's quantiles and rates are
    averages too), or None until the remembered history spans the window."""
    history = [h for h in mem.get("readyHistory", []) if now_s - h[0] < spec.window_s]
    history.append([now_s, ready])
    mem["readyHistory"] = history[-32:]
    if now_s - history[0][0] < spec.window_s - 1.5 * spec.interval_s:
        return None
    return float(sum(h[1] for h in history)) / len(history)


def _trend(
    mem: dict[str, Any], now_s: float, rate: float, horizon_s: float, valid_from_s: float
) -> float:
    """The request rate's slope (1/s^2) over the last `horizon_s`, by least squares, from
    rates seen at or after `valid_from_s`."""
    points = [p for p in mem.get("rates", []) if 0 < now_s - p[0] <= horizon_s]
    if now_s >= valid_from_s:
        points.append([now_s, rate])
    points = [p for p in points if p[0] >= valid_from_s]
    mem["rates"] = points[-16:]
    if len(points) < 3:
        return 0.0
    mean_t = sum(p[0] for p in points) / len(points)
    mean_r = sum(p[1] for p in points) / len(points)
    sxx = sum((p[0] - mean_t) ** 2 for p in points)
    if sxx <= 0:
        return 0.0
    slope: float = sum((p[0] - mean_t) * (p[1] - mean_r) for p in points) / sxx
    return slope


def _ramp_share(recent: float | None, rate: float, slope: float, window_s: float) -> float:
    """How much of a surge's climb in the window's rate is a ramp still going on (1) rather
    than a step already taken (0), from the last minute's rate.

    A load ramping at `slope` keeps the last minute's rate above the window's by
    slope * (window - minute) / 2. A step shows its whole jump in the last minute at once,
    and that lead shrinks to nothing while the window's rate catches up over one window:
    extrapolating that catching-up as a trend sized a 3x step's fleet for 4.5x. A last
    minute below the window's rate is a lull between bursts, not the end of a step; bursty
    loads come back, so the trend stands (on the Azure code trace dropping it loses
    windows). Without the short rate, or with a window too short to tell them apart,
    every climb counts as a ramp."""
    if recent is None or slope <= 0 or window_s < 2 * RECENT_RATE_WINDOW_S or recent < rate:
        return 1.0
    expected_lead = slope * (window_s - RECENT_RATE_WINDOW_S) / 2
    return min(1.0, (recent - rate) / expected_lead)


def _fall_below_window(recent: float | None, rate: float, slope: float, window_s: float) -> float:
    """How far a falling load already is below the window's rate (requests/s, >= 0).

    A load falling at `slope` is slope * window / 2 under its window's average now, which is
    what the window's rate lags by; the last minute's rate, below the window's by
    slope * (window - minute) / 2 on such a fall, says how much of that has really happened.
    Only that confirmed share counts, and only the lag: a fall is not extrapolated ahead (a
    replica removed too early takes a cold start to come back). Nothing without the short rate.
    """
    if recent is None or slope >= 0 or recent >= rate or window_s < 2 * RECENT_RATE_WINDOW_S:
        return 0.0
    expected_gap = -slope * (window_s - RECENT_RATE_WINDOW_S) / 2
    return min(1.0, (rate - recent) / expected_gap) * -slope * window_s / 2


def _poisson_like(
    mem: dict[str, Any],
    recent: float | None,
    rate: float,
    slope: float,
    window_s: float,
    limit: float,
) -> bool:
    """Whether the arrivals vary from minute to minute no more than a Poisson process would
    (the M/M/1 queue behind the prefill bar assumes it): the median, over the last ten ticks,
    of the last minute's rate against the window's (the trend's expected lead taken out), in
    Poisson standard deviations of a minute's rate. A median: a step or a burst is a few
    ticks' outlier, bursty traffic is most ticks'."""
    swings = list(mem.get("minuteSwings", []))
    if recent is not None and rate * RECENT_RATE_WINDOW_S >= 30:
        lead = slope * (window_s - RECENT_RATE_WINDOW_S) / 2
        z = (recent - rate - lead) / math.sqrt(rate / RECENT_RATE_WINDOW_S)
        swings = [*swings, round(abs(z), 2)][-10:]
        mem["minuteSwings"] = swings
    return len(swings) >= 5 and sorted(swings)[len(swings) // 2] <= limit


def _fewest(concurrency: Callable[[int], float], limit: float, ceiling: int) -> int:
    """The fewest replicas (up to ceiling + 1, meaning "more than allowed") under `limit`."""
    for replicas in range(1, ceiling + 1):
        if concurrency(replicas) <= limit:
            return replicas
    return ceiling + 1


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


@dataclass(frozen=True)
class SlotunePolicy:
    config: SlotuneConfig = SlotuneConfig()

    @property
    def name(self) -> str:
        return "slotune"

    def decide(
        self,
        snapshot: MetricsSnapshot | None,
        current: Setting,
        spec: PolicySpec,
        memory: Mapping[str, Any],
        now_s: float,
    ) -> Decision:
        cfg = self.config
        mem = dict(memory)
        if snapshot is None:
            return Decision(current, "MetricsMissing", "no latency metrics: holding", memory=mem)
        if snapshot.age_s > STALE_AFTER_S:
            return Decision(
                current,
                "MetricsStale",
                f"newest sample is {snapshot.age_s:.0f}s old: holding",
                memory=mem,
            )
        ready = snapshot.ready_replicas
        if ready <= 0:
            return Decision(current, "Stabilizing", "no replica ready yet: holding", memory=mem)

        # 1. Fit ITL against batch per replica.
        fit = ItlFit(**mem.get("fit", {}))
        # No engine runs more than its batch limit: a gauge above it per ready replica counts
        # requests still finishing on pods that are no longer ready, not a bigger batch.
        per_replica = min((snapshot.running or 0.0) / ready, float(current.max_num_seqs))
        # The ITL is a quantile over the whole window but `running` is a gauge of now: the
        # pair only describes one operating point once the fleet has not changed for a window.
        last_change = float(mem.get("lastChange", -math.inf))
        steady_window = now_s - last_change >= spec.window_s
        if snapshot.itl is not None and per_replica >= cfg.min_observed_batch and steady_window:
            fit = fit.add(per_replica, snapshot.itl, 1.0, cfg.forgetting)
            mem["fit"] = fit.__dict__
            mem["anchor"] = [per_replica, snapshot.itl]
        anchor = mem.get("anchor")
        line = _with_prior(fit, anchor[0], anchor[1], cfg).line() if anchor else None
        # Where an E2E target is set, the mean ITL against batch per replica too (E2E scales
        # with it: see _e2e_model), from the exact means and without a prior; trusted only
        # once it has seen batch sizes apart (a fleet held at one count teaches no slope).
        mean_line = None
        if spec.e2e_target_s is not None:
            mean_fit = ItlFit(**mem.get("meanFit", {}))
            if (
                snapshot.itl_mean is not None
                and per_replica >= cfg.min_observed_batch
                and steady_window
            ):
                mean_fit = mean_fit.add(per_replica, snapshot.itl_mean, 1.0, cfg.forgetting)
                mem["meanFit"] = mean_fit.__dict__
            if mean_fit.w >= cfg.min_fit_samples and mean_fit.spread() >= cfg.mean_fit_spread:
                mean_line = mean_fit.line()

        # 1b. Learn the ITL budget model: this window's burn at its prompt tokens/s per
        # replica. (Its stalls grow with the tokens a step carries: on the Azure conversation
        # trace, windows at the same requests/s per replica burned up to 8x apart as the
        # prompt mix moved.)
        rate = snapshot.request_rate or 0.0
        prompt_rate = snapshot.prompt_token_rate or 0.0
        prompt_share = prompt_rate / rate if rate > 0 else 0.0  # the mean prompt
        mean_ready = _window_mean_ready(mem, now_s, ready, spec)
        mem.pop("burn", None)  # the requests/s-based model of sessions before, if stored
        burn_models = BurnModels.from_memory(mem.get("burnModels"), cfg.burn_exponents)
        # While the first window fills, a window rate climbs whatever the load does: the
        # trend counts from the first whole window on.
        since = float(mem.setdefault("since", now_s))
        # Nor while a drained backlog is still in the window: the finished rate then climbs
        # with the backlog and the new replicas, not with the load. (A backlog that adds a
        # tenth to the window's requests; a few waiting requests are noise.)
        waiting = snapshot.waiting or 0.0
        # A queue is one that holds more than a second's arrivals: with prompts cut into
        # chunks a few always wait their turn (on the Azure conversation trace 5-23 waited on
        # 12 replicas at 130 req/s with nothing over the ITL target), and counting those
        # kept the budget model from learning for 20 minutes (bench/RESULTS.md, session 13).
        real_queue = waiting > ready and waiting > cfg.unsettling_queue_s * rate
        if real_queue:
            mem["queuedAt"] = now_s
        if waiting > cfg.backlog_fraction * rate * spec.window_s:
            mem["backlogAt"] = now_s
        backlog_at = float(mem.get("backlogAt", -math.inf))
        slope = _trend(
            mem, now_s, rate, cfg.trend_horizon_s, max(since, backlog_at) + spec.window_s
        )
        # A retune rolls the pods a quarter at a time (maxSurge 25%), a cold start each round:
        # until the last new pod has served a whole window, the window mixes both settings.
        rolled_out = float(mem.get("rolloutEnd", mem.get("lastRetune", -math.inf)))
        retuned_in_window = now_s < rolled_out + spec.window_s
        window_tokens = (snapshot.generation_token_rate or 0.0) * spec.window_s
        # A window that saw a surge (load moving by half or more across it, or a queue at any
        # time in it) pairs a lagging rate with a transient burn: it would teach a capacity
        # far too low.
        settled_load = (
            abs(slope) * spec.window_s <= cfg.max_load_change * rate
            and now_s - float(mem.get("queuedAt", -math.inf)) >= spec.window_s
        )
        # The window's prompt tokens/s per replica, where its burn describes one operating
        # point.
        measured_load = (
            prompt_rate / mean_ready
            if mean_ready
            and prompt_rate > 0
            and settled_load
            and not retuned_in_window
            and window_tokens >= cfg.min_window_tokens
            else None
        )
        if measured_load is not None and snapshot.itl_over is not None:
            burn_models = burn_models.add(measured_load, snapshot.itl_over, cfg.forgetting)
            mem["burnModels"] = burn_models.to_memory()
        burn_trusted = burn_models.w >= cfg.min_burn_samples
        beta, burn_model = burn_models.best()
        # The step model: what a prefill token costs. From the exact means of ITL and prefill
        # time where the engine exports them (the price learnt while prompts are whole stays
        # once they are chunked); else from the histogram: the steps that carry a chunk once
        # prompts are chunked, or the stalls whenever they break the ITL target. Remembered
        # after a smaller token budget has made the stalls disappear.
        chunked = current.max_batched_tokens < prompt_share  # every prompt is cut into chunks
        material = (snapshot.itl_over or 0.0) > 0.2 * (1 - spec.itl_percentile / 100)
        means = StepModel.from_means(snapshot, current, mean_ready or ready, mem.get("tokenPrice"))
        observed_steps = (
            means
            or StepModel.from_chunked_steps(snapshot, current)
            or (StepModel.from_stalls(snapshot, current) if material else None)
        )
        steps = StepModel(**mem["steps"]) if "steps" in mem else None
        if observed_steps is not None and settled_load and not retuned_in_window:
            steps = (
                observed_steps
                if steps is None
                else steps.blend(observed_steps, cfg.step_model_weight)
            )
            mem["steps"] = steps.__dict__
            if means is not None and not chunked:
                mem["tokenPrice"] = steps.per_token_s

        # 2. The concurrency per replica at which the fitted ITL reaches the goal. It sizes
        # replicas, and becomes the batch limit when moving there is worth a restart.
        seqs_low, seqs_high = spec.max_num_seqs_bounds
        itl_goal = spec.itl_target_s * cfg.itl_margin
        capacity = float(current.max_num_seqs)
        if line is not None:
            a, b = line
            at_goal = (itl_goal - a) / b if b > 1e-9 else math.inf
            # Far outside the data the line is a guess: move at most 2x per decision.
            capacity = min(max(at_goal, current.max_num_seqs / 2), current.max_num_seqs * 2.0)
        batch_limit = _clamp(int(capacity), seqs_low, seqs_high)
        retune = batch_limit
        last_retune = float(mem.get("lastRetune", -math.inf))
        gain = abs(batch_limit - current.max_num_seqs) / max(current.max_num_seqs, 1)
        itl_violated = snapshot.itl is not None and snapshot.itl > spec.itl_target_s
        queued = (snapshot.waiting or 0.0) > ready  # more than one waiting per replica
        # A restart costs capacity for a cold start: only on a fitted line (not the prior
        # alone), and upward only while nothing queues (never as a surge begins).
        confident = fit.w >= cfg.min_fit_samples
        lowering = batch_limit < current.max_num_seqs
        # The limit only matters when replicas run near it; below it, a restart changes
        # nothing and replicas are the lever (ITL then comes from prefill stalls, not batch).
        binding = per_replica >= cfg.binding_fraction * current.max_num_seqs
        # A restart replaces every pod; never while replicas are still starting or requests
        # queue, when it would take away capacity that is already short.
        settled = ready >= current.replicas and snapshot.pending_replicas == 0
        if not (
            confident
            and binding
            and settled
            and steady_window
            and gain >= cfg.retune_gain
            and not queued
            and (now_s - last_retune >= cfg.retune_cooldown_s or (itl_violated and lowering))
        ):
            retune = current.max_num_seqs

        # 3. Replicas: the fewest whose predicted concurrency per replica stays below the
        # batch limit (beyond it requests queue) and whose forecast load keeps the ITL burn
        # within the budget (before the budget model is trusted: below the concurrency at
        # which the fitted ITL line reaches the goal).
        # Once every prompt is cut into chunks that fit beside a decode step within the ITL
        # goal, the window's ITL percentile is of those chunk steps whatever the batch, and a
        # line fitted to it says little about where the batch breaks the goal: where the
        # arrivals are Poisson-like, the budget model and the prefill model size the fleet
        # alone. (On the 8B 3x step the line fitted after the retune to 783-token chunks, 41
        # ms at 27 per replica, capped a replica at 64-75 requests and held 3 replicas for the
        # last sixteen minutes where 2 served; on bursty traces its cap is the headroom a
        # burst needs: Azure conversation standard lost a window without it; bench/RESULTS.md,
        # session 21.)
        poisson_like = _poisson_like(
            mem, snapshot.recent_request_rate, rate, slope, spec.window_s, cfg.poisson_swing
        )
        chunks_fit = (
            poisson_like
            and chunked
            and steps is not None
            and steps.decode_s + steps.per_token_s * current.max_batched_tokens <= itl_goal
        )
        if burn_trusted or chunks_fit:
            per_replica_cap = max(1.0, float(retune))
        else:
            per_replica_cap = max(1.0, min(float(retune), capacity))
        ceiling, floor = spec.replica_ceiling, spec.min_replicas
        demand = (snapshot.running or 0.0) + (snapshot.waiting or 0.0)
        lead = _lead(snapshot, spec, cfg.lead_s)
        arrival, draining = _arrival_rate(
            snapshot, mem, now_s, lead, BACKLOG_DRAIN_S * lead / cfg.lead_s
        )
        # The window's rate lags a ramp by half a window; a new replica serves a lead later.
        # (While requests queue, the finished rate climbs with the replicas that come up, and
        # the queue's growth already counts the arrivals that do not get in.)
        forecast = arrival
        if not queued:
            # A ramp, not a burst: a minute's burst steepens the window's rate for a while,
            # and extrapolating it five minutes would size for load that never comes.
            growth = max(0.0, slope) * (spec.window_s / 2 + lead)
            # In and for a window after a surge (the window's rate moving by half across
            # it), ask the last minute's rate whether the climb is still going on. Outside
            # surges the trend stays as it is: on noisy loads its small positive part is
            # headroom that windows depend on.
            if slope * spec.window_s > cfg.max_load_change * rate:
                mem["surgeAt"] = now_s
            if now_s - float(mem.get("surgeAt", -math.inf)) < spec.window_s:
                growth *= _ramp_share(snapshot.recent_request_rate, rate, slope, spec.window_s)
            forecast += min(growth, cfg.max_trend_growth * rate)
            # A falling load is below its window's rate already; the last minute says how far.
            fall = _fall_below_window(snapshot.recent_request_rate, rate, slope, spec.window_s)
            forecast -= min(fall, cfg.max_trend_growth * rate)
        concurrency = _concurrency_model(snapshot, line, forecast, saturated=queued and binding)
        needed_up = _fewest(concurrency, cfg.target_utilisation * per_replica_cap, ceiling)
        needed_down = _fewest(concurrency, cfg.scale_down_utilisation * per_replica_cap, ceiling)

        # Prefill throughput: a small token budget caps the prompt tokens a replica takes.
        def prefill_needs(load: float, tokens: int, utilisation: float) -> int:
            # Only a budget below the mean prompt chunks every prefill; above it, steps
            # carry whole prompts (several at a time) and the ITL burn says when it is full.
            if steps is None or prompt_share <= 0 or tokens >= prompt_share:
                return 0
            # The decodes running on a replica take their tokens out of every step's budget
            # first, so the fewer the replicas, the less of each step is left for prefill.
            for replicas in range(1, ceiling + 1):
                decoding = min(concurrency(replicas), float(current.max_num_seqs))
                capacity = steps.prefill_capacity(tokens, decoding)
                if load * prompt_share <= replicas * prefill_bar(capacity, utilisation) * capacity:
                    return replicas
            return ceiling + 1

        # The TTFT percentile p of an exponential distribution, in its means.
        tail = math.log(1 / (1 - spec.ttft_percentile / 100))

        def prefill_bar(capacity: float, utilisation: float) -> float:
            # How busy prefill may run. Prompts queue for it, so a prompt's wait at the TTFT
            # percentile p is ln(1 / (1 - p)) prefill times over (1 - utilisation) (M/M/1: a
            # bursty load and a long-tailed prompt mix). Where that stays within a share of
            # the TTFT target even at a higher utilisation (short prefills, a lenient target),
            # run busier than the floor; never busier than the ceiling. The share keeps 40% of
            # the target for what the model misses; where the arrivals are Poisson-like, as
            # M/M/1 assumes, 20% (on the 70B standard step the calibrated model predicted p95
            # TTFT 0.97 s at 6 replicas and 1.76 s at 5, the oracle's count, where the 60% held
            # 7 for 30 req/s; on the Azure traces, whose minutes swing far more than Poisson,
            # the bursts need the 40%: bench/RESULTS.md, session 19).
            if capacity <= 0:
                return utilisation
            # Poisson-like arrivals may also run busier at most (a minute's load swings by
            # ~2% at 30 req/s): on the 8B standard day 2.01 -> 1.94 GPU-h, on the 3x step
            # 2.19 -> 2.10, no window lost anywhere (bench/RESULTS.md, session 21).
            if poisson_like:
                share, highest = cfg.prefill_ttft_share_poisson, cfg.prefill_utilisation_max_poisson
            else:
                share, highest = cfg.prefill_ttft_share, cfg.prefill_utilisation_max
            wait = share * spec.ttft_target_s
            busiest = 1 - calibration * tail * (prompt_share / capacity) / wait
            room = highest - cfg.prefill_utilisation
            return utilisation + min(room, max(0.0, busiest - cfg.prefill_utilisation))

        queue_needs = needed_up
        budget = 1 - spec.itl_percentile / 100
        tokens_now = current.max_batched_tokens
        # How far prefill_bar's queueing model overstates TTFT. M/M/1 assumes exponential
        # prompts and arrivals; where they are more regular, the queue is shorter: on the 70B
        # diurnal day (1,150-token prompts in 418-token chunks) p95 TTFT was 0.66-0.8 of the
        # model's at 62-86% prefill load, and the fleet ran at 55% (bench/RESULTS.md, session
        # 16). Learnt from the window's own TTFT where prefill is busy enough for the queue to
        # matter, in a settled window of this batch setting.
        calibration = float(mem.get("ttftScale", 1.0))
        decoding = min(per_replica, float(current.max_num_seqs))
        capacity_here = steps.prefill_capacity(tokens_now, decoding) if steps else 0.0
        serving = mean_ready or ready
        prefill_load = prompt_rate / (serving * capacity_here) if capacity_here else 0.0
        if (
            measured_load is not None
            and snapshot.ttft is not None
            and snapshot.ttft <= spec.ttft_target_s
            and tokens_now < prompt_share
            and cfg.ttft_calibration_load <= prefill_load < 1
        ):
            modelled = tail * (prompt_share / capacity_here) / (1 - prefill_load)
            weight = cfg.ttft_calibration_weight
            calibration = (1 - weight) * calibration + weight * min(1.0, snapshot.ttft / modelled)
            mem["ttftScale"] = calibration
        prefill_up = prefill_needs(forecast, tokens_now, cfg.prefill_utilisation)
        needed_up = max(needed_up, prefill_up)
        needed_down = max(
            needed_down, prefill_needs(forecast, tokens_now, cfg.prefill_utilisation_down)
        )
        burn_needs = 0
        # Where minutes swing no more than Poisson arrivals do, the fleet may be planned
        # closer to the budget, and the gap between the two bars, which keeps one replica's
        # step from being taken back as the load swings, may be narrower (the 70B interactive
        # day came down from its peak at 1.3-1.9x the oracle's fleet, a replica at a time:
        # 50.49 -> 47.76 GPU-h, no window lost anywhere; on bursty traffic the narrower gap
        # alone lost a window: bench/RESULTS.md, session 22).
        if poisson_like:
            use_up, use_down = cfg.budget_use_up_poisson, cfg.budget_use_down_poisson
        else:
            use_up, use_down = cfg.budget_use_up, cfg.budget_use_down
        if burn_trusted:
            z = cfg.burn_spread_z
            up_capacity = burn_model.capacity(use_up * budget, beta, z)
            down_capacity = burn_model.capacity(use_down * budget, beta, z)
            burn_load = forecast * prompt_share  # prompt tokens/s
            burn_needs = min(ceiling + 1, math.ceil(burn_load / up_capacity))
            needed_up = max(needed_up, burn_needs)
            needed_down = max(needed_down, min(ceiling + 1, math.ceil(burn_load / down_capacity)))
        # A settled window that burns more than the whole budget is a capacity measured now:
        # size from it directly. The budget model takes it in as one window among its
        # (forgotten-weighted) thirty and would follow a slow ramp a replica a tick, and before
        # it is trusted only a broken quantile adds a replica at all. (Back to 90% of the
        # budget whatever the arrivals: this load broke the target once already.)
        burn_now = snapshot.itl_over or 0.0
        if measured_load is not None and burn_now > budget:
            capacity_now = measured_load * (cfg.budget_use_up * budget / burn_now) ** (1 / beta)
            now_needs = math.ceil(forecast * prompt_share / capacity_now)
            burn_needs = max(burn_needs, min(ceiling + 1, now_needs))
            needed_up = max(needed_up, burn_needs)
        # E2E: the fewest replicas whose predicted E2E keeps within its goal. The margins are
        # of the room above the floor no replica count lowers (long outputs take their
        # decode steps whatever the fleet), not of the target: a floor near the target would
        # read as a shortage at every count. Without an E2E model the fleet was sized for
        # TTFT and ITL alone and grew a replica per broken window: on a diurnal day at 2 s /
        # 60 ms and 8 s E2E it removed replicas into E2E violations and held 75% of the
        # windows (bench/RESULTS.md, session 23).
        e2e_needs = 0
        e2e_model = None
        if spec.e2e_target_s is not None and steps is not None:
            e2e_model = _e2e_model(
                snapshot,
                mean_line,
                concurrency,
                serving=mean_ready or ready,
                price=steps.per_token_s,
                prompt_share=prompt_share,
                forecast=forecast,
            )
        if e2e_model is not None and spec.e2e_target_s is not None:
            e2e_time, e2e_floor = e2e_model
            room = spec.e2e_target_s - e2e_floor
            if room > cfg.e2e_min_room * spec.e2e_target_s:
                e2e_needs = _fewest(e2e_time, e2e_floor + cfg.itl_margin * room, ceiling)
                needed_up = max(needed_up, e2e_needs)
                down_goal = e2e_floor + cfg.e2e_down_room * room
                needed_down = max(needed_down, _fewest(e2e_time, down_goal, ceiling))
            else:
                e2e_model = None
        ttft = snapshot.ttft
        reason: Reason = "Steady"
        message = "latencies within target"
        if ttft is not None and ttft > spec.ttft_target_s:
            # The window quantile lags: grow on it only while requests still queue now (and
            # would still queue when a new replica serves), and from the ready count, so
            # replicas already starting are not asked for twice. A waiting request or two per
            # replica is a burst the servers take within a step or two, not a queue: on the
            # Azure conversation trace it grew 15 replicas to 21 on a window quantile still
            # showing a queue gone three minutes before (bench/RESULTS.md, session 9).
            if waiting > cfg.ttft_growth_queue * ready and not draining:
                grow = math.ceil(ready * min(2.0, max(1.25, ttft / spec.ttft_target_s)))
                needed_up = max(needed_up, grow)
            reason = "TTFTAboveTarget"
            message = f"p{spec.ttft_percentile:g} TTFT {ttft:.3f}s > {spec.ttft_target_s:g}s"
        elif itl_violated:
            # The budget model already sizes for the burn it just saw; without it, one more.
            # Not while the window still holds steps of the setting before a retune: the
            # retune is what answers them (on the Azure conversation trace the old 8192-token
            # stalls grew the fleet a replica during the rollout to 463 tokens, held for ten
            # minutes after it; bench/RESULTS.md, session 10).
            if retune >= current.max_num_seqs and not burn_trusted and not retuned_in_window:
                needed_up = max(needed_up, ready + 1)
            reason = "ITLAboveTarget"
            message = f"p{spec.itl_percentile:g} ITL {snapshot.itl:.4f}s > {spec.itl_target_s:g}s"
            if retuned_in_window:
                message += " (the window still holds steps from before the last retune)"
        elif snapshot.e2e is not None and spec.e2e_target_s and snapshot.e2e > spec.e2e_target_s:
            # Without an E2E model (or where it says no count is enough), one more.
            if e2e_model is None or e2e_needs > ceiling:
                needed_up = max(needed_up, ready + 1)
            reason, message = "E2EAboveTarget", f"E2E {snapshot.e2e:.2f}s > {spec.e2e_target_s:g}s"

        # Scale-down stabilisation as HPA does it: act on the largest recommendation of the
        # window, so one quiet sample cannot undo a scale-up.
        history = [
            h for h in mem.get("history", []) if now_s - h[0] < spec.scale_down_stabilization_s
        ] or [[now_s, current.replicas]]
        # The window's TTFT lags a burst by a whole window; an empty queue and a current TTFT
        # under the bar is what says the burst is over.
        # Nor on a guess: with the ITL burn measured but no budget model yet, only when the
        # burn is far below the budget (a replica fewer raises it by a third or more).
        itl_over = snapshot.itl_over
        burn_clear = itl_over is not None and itl_over < cfg.clear_burn * budget
        # Until a token retune has rolled out and served a window, the burn is the old
        # setting's stalls. Where the new chunks fit beside a decode step within the ITL goal
        # by design, stalls cannot break it: the burn does not block a step down then, as
        # long as the last minute's load is no higher than the forecast the step is sized
        # for (on Azure code standard the fleet held 26 replicas through the rollout to
        # 1152-token chunks on the burn of the 8192-token steps; bench/RESULTS.md, session 14).
        chunk_fits = (
            retuned_in_window
            and chunked
            and steps is not None
            and steps.decode_s + steps.per_token_s * tokens_now <= itl_goal
            and (snapshot.recent_request_rate or 0.0) <= forecast
        )
        burn_known = burn_trusted or itl_over is None or burn_clear or chunk_fits
        # TTFT has a floor that no replica count lowers: a prompt's prefill. Only what is
        # above it (queueing) says a burst is not over, so where that floor is high the bar
        # counts from it. It is the lowest TTFT seen with this batch setting, followed
        # upwards slowly (the prompt mix changes), and learnt only while no request waits
        # and TTFT meets its target: a queue's TTFT says nothing about prefill. Nor while the
        # window still holds the setting before a retune, whose prefill it is; until then the
        # floor is the step model's: the prefill of the prompt at the TTFT percentile (an
        # exponential prompt mix: ln(1 / (1 - p)) mean prompts) in steps of the new budget.
        # (On Azure code interactive the floor learnt in the window of the rollout to
        # 390-token chunks was the 8192-token steps', 0.28 s, where chunked prompts take
        # ~0.4 s: for 15 minutes every waiting request held 32 replicas where the models
        # asked for 10-26; bench/RESULTS.md, session 15.)
        ttft_floor = mem.get("ttftFloor")
        calm = (
            ttft is not None
            and ttft <= spec.ttft_target_s
            and not snapshot.waiting
            and not retuned_in_window
        )
        if calm and ttft is not None:
            drift = cfg.ttft_floor_drift
            ttft_floor = (
                ttft if ttft_floor is None else min(ttft, ttft_floor + drift * (ttft - ttft_floor))
            )
            mem["ttftFloor"] = ttft_floor
        if retuned_in_window and steps is not None and prompt_share > 0:
            ttft_floor = steps.prefill_time(tail * prompt_share, tokens_now)
        ttft_floor = min(ttft_floor or 0.0, spec.ttft_target_s)
        ttft_bar = max(
            cfg.ttft_scale_down_bar * spec.ttft_target_s,
            ttft_floor + cfg.ttft_floor_room * (spec.ttft_target_s - ttft_floor),
        )
        # Nor while a queue waits; requests waiting their turn for a chunk are not one (on
        # the Azure conversation trace they held each step down of the second half hour
        # back by minutes; bench/RESULTS.md, session 17).
        # Where a real queue has drained within the window, the window's TTFT is that
        # queue's, and a request or two waiting now says nothing about a burst (on the 8B 3x
        # step one waiting request at a 135 s window TTFT, a minute after the backlog was
        # gone, held 4 replicas for five more minutes where 3 and then 2 served;
        # bench/RESULTS.md, session 21).
        queue_drained = now_s - float(mem.get("queuedAt", -math.inf)) < spec.window_s and not queued
        safe_to_shrink = (
            not real_queue
            and burn_known
            and (
                ttft is None or ttft < ttft_bar or (snapshot.waiting or 0.0) == 0.0 or queue_drained
            )
        )
        recommendation = max(needed_down, floor) if safe_to_shrink else current.replicas
        down_target = max([h[1] for h in history] + [recommendation])

        target = current.replicas
        if needed_up > current.replicas:
            step = current.replicas + max(1, math.ceil(current.replicas * cfg.max_step_up))
            target = min(needed_up, step)
            if reason == "Steady" and burn_needs >= needed_up:
                reason = "ITLAboveTarget"
                message = (
                    f"predicted: {forecast:.1f} req/s need {needed_up} replicas to keep the "
                    f"ITL burn under {use_up:.0%} of its budget"
                )
            elif reason == "Steady" and e2e_model is not None and e2e_needs >= needed_up:
                reason = "E2EAboveTarget"
                message = (
                    f"predicted: {forecast:.1f} req/s need {needed_up} replicas to keep "
                    f"p{spec.e2e_percentile or 95:g} E2E under {spec.e2e_target_s:g}s"
                )
            elif reason == "Steady" and prefill_up >= needed_up and steps is not None:
                reason = "TTFTAboveTarget"
                decoding = min(concurrency(needed_up), float(current.max_num_seqs))
                capacity_then = steps.prefill_capacity(tokens_now, decoding)
                busy = prefill_bar(capacity_then, cfg.prefill_utilisation)
                message = (
                    f"predicted: {forecast:.1f} req/s of {prompt_share:.0f}-token prompts need "
                    f"{needed_up} replicas to prefill in {tokens_now}-token steps at "
                    f"{busy:.0%} of capacity"
                )
            elif reason == "Steady":
                itl_bound = capacity < retune
                reason = "ITLAboveTarget" if itl_bound else "TTFTAboveTarget"
                message = (
                    f"predicted: {needed_up} replicas keep each below "
                    f"{per_replica_cap:.0f} concurrent requests"
                )
        elif down_target < current.replicas and (
            steady_window
            or (
                (burn_trusted or burn_clear)
                and not chunked
                and now_s - last_change >= cfg.scale_down_spacing_s
            )
        ):
            # Bounded steps, each after the last change has shown (a window) or, with a
            # trusted model or a burn far under budget, after a shorter spacing. Those speak
            # for the ITL budget only: where prompts are chunked, the prefill model sizes the
            # fleet and only TTFT tells whether it was right, so each step waits for a window
            # that shows it (on the Azure code trace two steps two minutes apart let the next
            # burst queue; bench/RESULTS.md, session 11).
            step = current.replicas - max(1, math.floor(current.replicas * cfg.max_step_down))
            target = max(down_target, step)
            reason = "OverProvisioned"
            message = (
                f"demand {demand:.0f} fits {down_target} replicas for "
                f"{spec.scale_down_stabilization_s:g}s"
            )
        # A scale-up is remembered as a recommendation too, so the next quiet sample cannot
        # take it back before the window has passed.
        history.append(
            [now_s, max(recommendation, target) if target > current.replicas else recommendation]
        )
        mem["history"] = history[-64:]

        # Capacity: never add replicas that cannot be scheduled.
        if target > current.replicas and snapshot.pending_replicas > 0:
            target = current.replicas
            reason, message = (
                "CapacityLimited",
                f"{snapshot.pending_replicas} replica(s) Pending: not adding more",
            )
        elif target > ceiling:
            target = ceiling
            if target <= current.replicas:
                reason = "CapacityLimited"
                message = (
                    f"needs {needed_up} replicas; limited to {ceiling} by maxReplicas/gpuBudget"
                )
        target = _clamp(target, floor, max(ceiling, floor))

        # At the GPU budget a rollout cannot surge: pods are replaced one at a time, each
        # round a replica short for a cold start. A restart is worth that only while the ITL
        # target is broken anyway (the new setting is the fix) or one replica fewer still
        # carries the forecast (at 3 of 3 budgeted replicas and 40 req/s, a token retune for
        # an ITL burn near its budget left 2 replicas serving for six minutes and lost three
        # windows the old setting held; bench/RESULTS.md, session 20).
        no_surge = surge_blocked(
            max(target, current.replicas), spec.gpus_per_replica, spec.gpu_budget
        )
        restart_dips = no_surge and not itl_violated and needed_up >= target
        deferred = restart_dips and retune != current.max_num_seqs
        if deferred:
            retune = current.max_num_seqs

        # The token budget: when prefill stalls are what burns the ITL budget and so sizes
        # the fleet (by the budget model, or by a violation it has seen), shrink the chunks
        # until a stalled step fits in the goal. Worth a restart only if it is predicted to
        # save a replica; like the batch limit, never while replicas start or requests queue.
        tokens_low, tokens_high = spec.max_batched_tokens_bounds
        tokens = current.max_batched_tokens
        stalls_size_fleet = burn_needs if burn_trusted else (ready + 1 if itl_violated else 0)
        if (
            steps is not None
            and itl_goal > cfg.chunk_headroom * steps.decode_s
            and stalls_size_fleet > 0
            and retune == current.max_num_seqs
            and settled
            and not queued
            and now_s - last_retune >= cfg.retune_cooldown_s
        ):
            mean_prompt = (snapshot.prompt_token_rate or 0.0) / (snapshot.request_rate or 1.0)
            chunk = min(current.max_batched_tokens, mean_prompt)
            # The largest chunk that fits beside a decode step within the goal, and small
            # enough to cut every prompt: where a whole mean prompt would fit, it is several
            # prompts sharing a step that stall the decodes, and only a budget below the mean
            # prompt stops them (the 60 ms classes, p99 most: bench/RESULTS.md, session 12).
            fitting = min(int(steps.fitting_chunk(itl_goal)), int(cfg.chunk_change * chunk))
            new_tokens = _clamp(max(fitting, current.max_num_seqs), tokens_low, tokens_high)
            # Worth a restart only if the fleet it predicts is at least a replica smaller.
            after = max(
                queue_needs, floor, prefill_needs(forecast, new_tokens, cfg.prefill_utilisation)
            )
            # Smaller chunks cost a long prompt one decode step more per extra chunk (its
            # tokens cost the same): the TTFT percentile must still fit after that. The prompt
            # at the percentile is the exponential mix's, as in the prefill floor (a fixed 4
            # mean prompts, a third longer at p95, held the retune of an interactive day of
            # 2,000-token prompts back from 870 s to 2,550 s while the fleet grew to 6 replicas
            # at 8,192 tokens; the oracle's peak is 4; bench/RESULTS.md, session 20).
            extra_steps = tail * mean_prompt * (1 / new_tokens - 1 / tokens)
            ttft_after = None if ttft is None else ttft + extra_steps * steps.decode_s
            worth_a_restart = (
                new_tokens <= cfg.chunk_change * chunk
                and after < stalls_size_fleet
                and (ttft_after is None or ttft_after <= cfg.chunk_ttft_bar * spec.ttft_target_s)
            )
            if worth_a_restart and restart_dips:
                deferred = True
            elif worth_a_restart:
                tokens = new_tokens
                reason = "ITLAboveTarget"
                stall = steps.decode_s + steps.per_token_s * chunk
                capped = steps.decode_s + steps.per_token_s * tokens
                if stall > itl_goal:
                    message = (
                        f"prefill chunks of {chunk:.0f} tokens stall decodes for "
                        f"{1000 * stall:.0f} ms: token budget {current.max_batched_tokens} -> "
                        f"{tokens} so a chunk fits in {1000 * itl_goal:.0f} ms"
                    )
                else:
                    message = (
                        f"prompts sharing a step stall decodes past the ITL target: token "
                        f"budget {current.max_batched_tokens} -> {tokens} cuts them into chunks "
                        f"of {1000 * capped:.0f} ms steps"
                    )
        if deferred and reason in ("Steady", "CapacityLimited"):
            reason = "CapacityLimited"
            message = (
                f"{message}; a batch retune waits: at the GPU budget ({spec.gpu_budget} GPUs) "
                f"its pods would be replaced one at a time, each a replica short, while the "
                f"load needs all {target}"
            )
        knobs_changed = retune != current.max_num_seqs or tokens != current.max_batched_tokens
        if target != current.replicas or knobs_changed:
            mem["lastChange"] = now_s
        if knobs_changed:
            mem["lastRetune"] = now_s
            rounds = rollout_rounds(max(target, current.replicas), surge=not no_surge)
            mem["rolloutEnd"] = now_s + rounds * lead
            mem.pop("burnModels", None)  # the budget model describes one batch setting
            mem.pop("ttftFloor", None)  # ... and so does the prefill time
            mem.pop("ttftScale", None)  # ... and its queue
        if tokens != current.max_batched_tokens:
            # Shorter stalls change ITL at every batch size: learn the line again too.
            mem.pop("fit", None)
            mem.pop("anchor", None)
            mem.pop("meanFit", None)
        if retune != current.max_num_seqs and reason == "Steady":
            reason = "ITLAboveTarget" if retune < current.max_num_seqs else "OverProvisioned"
            message = f"batch limit {current.max_num_seqs} -> {retune} from the fitted ITL model"
        # The engine refuses a token budget below its sequence limit.
        tokens = _clamp(max(tokens, retune), tokens_low, tokens_high)
        retune = min(retune, tokens)
        # What the chosen setting should show at the forecast load, once in place: the ITL
        # line at the concurrency a replica will carry, and the prefill queue's TTFT (an M/M/1
        # sojourn at the percentile, scaled as calm windows showed). Absent where the model
        # behind one is not learnt yet, never a guess.
        predicted = {}
        serving_then = max(target, 1)
        per_replica_then = min(float(retune), concurrency(serving_then))
        # (The ITL line is of the current token budget's steps; a new one changes the stalls.)
        if line is not None and tokens == current.max_batched_tokens:
            a, b = line
            predicted["itl"] = a + b * per_replica_then
        if steps is not None and prompt_share > 0:
            capacity_then = steps.prefill_capacity(tokens, per_replica_then)  # tokens/s
            busy = (
                forecast * prompt_share / (serving_then * capacity_then) if capacity_then else 1.0
            )
            if busy < 1:
                prefill_s = prompt_share / capacity_then
                predicted["ttft"] = calibration * tail * prefill_s / (1 - busy)
        setting = replace(current, replicas=target, max_num_seqs=retune, max_batched_tokens=tokens)
        return Decision(setting, reason, message, predicted=predicted, memory=mem)
