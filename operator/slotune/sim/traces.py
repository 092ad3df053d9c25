"""Request traces: loaders, rate scaling and seeded synthetic generators.

Built-in traces ship with the package (``slotune/sim/data``, see its README for sources and
licences): ``azure-conv`` and ``azure-code`` (Azure LLM inference trace 2023, CC-BY 4.0,
Patel et al., "Splitwise", ISCA 2024) and ``mooncake-synthetic`` (Mooncake FAST'25
synthetic trace, Apache-2.0, Qin et al., "Mooncake", FAST 2025).

Formats read by :func:`load_trace` (plain or gzipped CSV, recognised by the header):

* Azure 2023: ``TIMESTAMP,ContextTokens,GeneratedTokens`` (wall-clock timestamps);
* Mooncake: ``timestamp_ms,input_tokens,output_tokens[,...]``;
* normalized: ``arrival_s,input_tokens,output_tokens``.

The public traces carry a few requests per second; every scaling applied to a trace is
recorded in :attr:`Trace.scaling` and reported with the results:

* :func:`superimpose` overlays ``k`` copies of the trace, each shifted in time by a seeded
  random offset of up to ``max_shift_s`` (wrapping around the end), plus a thinned copy for
  a fractional ``k``: the rate is multiplied by ``k``, the minute-scale shape is kept and
  the duration is unchanged;
* :func:`compress` divides every arrival time by ``k``: the rate is multiplied by ``k``, the
  duration divided by it, and bursts get ``k`` times shorter.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from slotune.sim.engine import Request

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
ScaleMethod = Literal["superimpose", "compress"]
SCALE_METHODS: tuple[ScaleMethod, ...] = ("superimpose", "compress")


@dataclass(frozen=True)
class BuiltinTrace:
    name: str
    file: str
    description: str
    license: str
    citation: str


AZURE_LICENSE = "CC-BY-4.0"
AZURE_CITATION = (
    "Azure LLM inference trace 2023 (Azure/AzurePublicDataset); Patel et al., "
    '"Splitwise: Efficient Generative LLM Inference Using Phase Splitting", ISCA 2024'
)
BUILTIN_TRACES: dict[str, BuiltinTrace] = {
    t.name: t
    for t in (
        BuiltinTrace(
            "azure-conv",
            "azure2023_conv.csv.gz",
            "Azure LLM inference 2023, conversation (about 1 hour, 5.5 req/s)",
            AZURE_LICENSE,
            AZURE_CITATION,
        ),
        BuiltinTrace(
            "azure-code",
            "azure2023_code.csv.gz",
            "Azure LLM inference 2023, code (about 1 hour, 2.6 req/s)",
            AZURE_LICENSE,
            AZURE_CITATION,
        ),
        BuiltinTrace(
            "mooncake-synthetic",
            "mooncake_synthetic.csv.gz",
            "Mooncake FAST'25 synthetic trace (17 minutes, 3.9 req/s, long prompts)",
            "Apache-2.0",
            'kvcache-ai/Mooncake; Qin et al., "Mooncake: Trading More Storage for Less '
            'Computation - A KVCache-centric Architecture for Serving LLM Chatbot", FAST 2025',
        ),
    )
}


@dataclass(frozen=True)
class Trace:
    """Requests as three arrays sorted by arrival, and how they came to be."""

    name: str
    arrival_s: FloatArray
    input_tokens: IntArray
    output_tokens: IntArray
    source: str
    duration_s: float
    scaling: tuple[str, ...] = ()
    license: str | None = None
    citation: str | None = None
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        n = len(self.arrival_s)
        if len(self.input_tokens) != n or len(self.output_tokens) != n:
            raise ValueError("a trace's columns must have the same length")

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def mean_rps(self) -> float:
        return len(self) / self.duration_s if self.duration_s > 0 else 0.0

    def peak_rps(self, window_s: float = 60.0) -> float:
        """Highest arrival rate over consecutive windows of ``window_s``."""
        if not len(self):
            return 0.0
        bins = np.floor(self.arrival_s / window_s).astype(np.int64)
        return float(np.bincount(bins).max()) / window_s

    def requests(self) -> list[Request]:
        return [
            Request(i, float(a), int(p), int(o))
            for i, (a, p, o) in enumerate(
                zip(
                    self.arrival_s.tolist(),
                    self.input_tokens.tolist(),
                    self.output_tokens.tolist(),
                    strict=True,
                )
            )
        ]

    def cut(self, duration_s: float, start_s: float = 0.0) -> Trace:
        """The requests arriving in ``[start_s, start_s + duration_s)``, re-timed from 0."""
        keep = (self.arrival_s >= start_s) & (self.arrival_s < start_s + duration_s)
        step = f"cut to [{start_s:g} s, {start_s + duration_s:g} s)"
        return replace(
            self,
            arrival_s=self.arrival_s[keep] - start_s,
            input_tokens=self.input_tokens[keep],
            output_tokens=self.output_tokens[keep],
            duration_s=min(duration_s, max(0.0, self.duration_s - start_s)),
            scaling=(*self.scaling, step),
        )

    def describe(self) -> dict[str, Any]:
        """What the report says about the trace, scaling stated."""
        tokens_in = self.input_tokens.astype(np.float64)
        tokens_out = self.output_tokens.astype(np.float64)
        return {
            "name": self.name,
            "source": self.source,
            "requests": len(self),
            "duration_s": self.duration_s,
            "mean_rps": self.mean_rps,
            "peak_rps_1min": self.peak_rps(60.0),
            "input_tokens_mean": float(tokens_in.mean()) if len(self) else 0.0,
            "output_tokens_mean": float(tokens_out.mean()) if len(self) else 0.0,
            "scaling": list(self.scaling) or ["none: the trace as recorded"],
            "license": self.license,
            "citation": self.citation,
            "notes": list(self.notes),
        }


def _sorted_trace(
    name: str,
    arrivals: Sequence[float] | FloatArray,
    inputs: Sequence[int] | IntArray,
    outputs: Sequence[int] | IntArray,
    **kwargs: Any,
) -> Trace:
    a = np.asarray(arrivals, dtype=np.float64)
    order = np.argsort(a, kind="stable")
    i = np.asarray(inputs, dtype=np.int64)[order]
    o = np.asarray(outputs, dtype=np.int64)[order]
    notes = list(kwargs.pop("notes", ()))
    clamped = int(np.count_nonzero(i < 1) + np.count_nonzero(o < 1))
    if clamped:
        notes.append(f"{clamped} token counts below 1 raised to 1 (the engine needs >= 1)")
    a = a[order]
    if len(a):
        a = a - a[0]  # arrivals count from the first request
    duration = float(a[-1]) if len(a) else 0.0
    return Trace(
        name=name,
        arrival_s=a,
        input_tokens=np.maximum(i, 1),
        output_tokens=np.maximum(o, 1),
        duration_s=float(duration),
        notes=tuple(notes),
        **kwargs,
    )


# ---------------------------------------------------------------------------- loaders


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return data.decode("utf-8")


def _azure_seconds(stamp: str) -> float:
    """``2023-11-16 18:17:03.9799600`` -> seconds since the epoch (7 fraction digits)."""
    whole, _, fraction = stamp.strip().partition(".")
    base = datetime.fromisoformat(whole).timestamp()
    return base + (float("0." + fraction) if fraction else 0.0)


def parse_trace_csv(text: str, name: str, source: str) -> Trace:
    """Any of the three formats, recognised by the header."""
    reader = csv.reader(io.StringIO(text))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise ValueError(f"{source}: empty trace file") from None
    rows = [r for r in reader if r]
    columns = {h: k for k, h in enumerate(header)}

    def column(key: str, convert: Callable[[str], Any]) -> list[Any]:
        k = columns[key]
        try:
            return [convert(r[k]) for r in rows]
        except (ValueError, IndexError) as error:
            raise ValueError(f"{source}: bad value in column {key!r}: {error}") from None

    if {"TIMESTAMP", "ContextTokens", "GeneratedTokens"} <= columns.keys():
        arrivals = column("TIMESTAMP", _azure_seconds)
        inputs, outputs = column("ContextTokens", int), column("GeneratedTokens", int)
    elif {"timestamp_ms", "input_tokens", "output_tokens"} <= columns.keys():
        arrivals = [t / 1000 for t in column("timestamp_ms", float)]
        inputs, outputs = column("input_tokens", int), column("output_tokens", int)
    elif {"arrival_s", "input_tokens", "output_tokens"} <= columns.keys():
        arrivals = column("arrival_s", float)
        inputs, outputs = column("input_tokens", int), column("output_tokens", int)
    else:
        raise ValueError(
            f"{source}: unknown trace format (header {header}); expected "
            "arrival_s,input_tokens,output_tokens or the Azure 2023 or Mooncake columns"
        )
    return _sorted_trace(name, arrivals, inputs, outputs, source=source)


def load_builtin(name: str) -> Trace:
    builtin = BUILTIN_TRACES[name]
    data = resources.files("slotune.sim").joinpath("data", builtin.file).read_bytes()
    trace = parse_trace_csv(gzip.decompress(data).decode("utf-8"), name, f"builtin:{name}")
    return replace(trace, license=builtin.license, citation=builtin.citation)


def load_trace(name_or_path: str) -> Trace:
    """A built-in trace by name, or a CSV file (plain or gzipped) by path."""
    if name_or_path in BUILTIN_TRACES:
        return load_builtin(name_or_path)
    path = Path(name_or_path)
    if not path.is_file():
        known = ", ".join(BUILTIN_TRACES)
        raise FileNotFoundError(
            f"{name_or_path}: no such trace file, and not a built-in trace ({known})"
        )
    return parse_trace_csv(_read_text(path), path.stem, str(path))


# ---------------------------------------------------------------------------- scaling


def superimpose(trace: Trace, factor: float, *, seed: int, max_shift_s: float = 60.0) -> Trace:
    """``factor`` copies overlaid with seeded shifts (see the module docstring)."""
    if factor <= 0:
        raise ValueError("the scale factor must be positive")
    if trace.duration_s <= 0:
        raise ValueError("cannot superimpose a trace of zero duration")
    rng = np.random.default_rng(seed)
    whole = math.floor(factor)
    fraction = factor - whole
    parts_a: list[FloatArray] = []
    parts_i: list[IntArray] = []
    parts_o: list[IntArray] = []
    shift_limit = min(max_shift_s, trace.duration_s)
    copies = whole + (1 if fraction > 1e-9 else 0)
    for c in range(copies):
        shift = 0.0 if c == 0 else float(rng.uniform(0.0, shift_limit))
        keep = np.ones(len(trace), dtype=bool)
        if c == whole:  # the thinned copy of a fractional factor
            keep = rng.random(len(trace)) < fraction
        parts_a.append(np.mod(trace.arrival_s[keep] + shift, trace.duration_s))
        parts_i.append(trace.input_tokens[keep])
        parts_o.append(trace.output_tokens[keep])
    arrivals = np.concatenate(parts_a)
    order = np.argsort(arrivals, kind="stable")
    step = (
        f"superimposed x{factor:g}: {whole} copies"
        + (f" plus one thinned to {fraction:.0%}" if copies > whole else "")
        + f", each after the first shifted by a seeded uniform offset in [0, {shift_limit:g} s)"
        f" wrapping at the end (seed {seed}); rate x{factor:g}, duration kept"
    )
    return replace(
        trace,
        arrival_s=arrivals[order],
        input_tokens=np.concatenate(parts_i)[order],
        output_tokens=np.concatenate(parts_o)[order],
        scaling=(*trace.scaling, step),
    )


def compress(trace: Trace, factor: float) -> Trace:
    """Arrival times divided by ``factor`` (see the module docstring)."""
    if factor <= 0:
        raise ValueError("the scale factor must be positive")
    step = (
        f"time compressed x{factor:g}: arrival times divided by {factor:g}; "
        f"rate x{factor:g}, duration /{factor:g}"
    )
    return replace(
        trace,
        arrival_s=trace.arrival_s / factor,
        duration_s=trace.duration_s / factor,
        scaling=(*trace.scaling, step),
    )


def scale_trace(trace: Trace, factor: float, method: ScaleMethod, *, seed: int) -> Trace:
    if factor == 1:
        return trace
    if method == "superimpose":
        return superimpose(trace, factor, seed=seed)
    if method == "compress":
        return compress(trace, factor)
    raise ValueError(f"unknown scaling method {method!r}; known: {', '.join(SCALE_METHODS)}")


# -------------------------------------------------------------------------- synthetic


@dataclass(frozen=True)
class TokenSampler:
    """Draws (input, output) token counts: jointly from a trace's rows, or uniformly."""

    pairs: tuple[tuple[int, int], ...] = ()
    input_range: tuple[int, int] = (128, 1024)
    output_range: tuple[int, int] = (32, 256)
    label: str = "uniform"

    @staticmethod
    def from_trace(trace: Trace) -> TokenSampler:
        pairs = tuple(zip(trace.input_tokens.tolist(), trace.output_tokens.tolist(), strict=True))
        return TokenSampler(pairs=pairs, label=f"lengths drawn from {trace.name}")

    def sample(self, rng: random.Random, n: int) -> tuple[list[int], list[int]]:
        if self.pairs:
            picks = [self.pairs[rng.randrange(len(self.pairs))] for _ in range(n)]
            return [p for p, _ in picks], [o for _, o in picks]
        ins = [rng.randint(*self.input_range) for _ in range(n)]
        outs = [rng.randint(*self.output_range) for _ in range(n)]
        return ins, outs


def _thinned_poisson(
    rate: Callable[[float], float], peak: float, duration_s: float, rng: random.Random
) -> list[float]:
    """Arrivals of a Poisson process of intensity ``rate(t) <= peak`` (Lewis-Shedler)."""
    out: list[float] = []
    if peak <= 0:
        return out
    t = rng.expovariate(peak)
    while t < duration_s:
        if rng.random() * peak <= rate(t):
            out.append(t)
        t += rng.expovariate(peak)
    return out


def _synthetic(
    name: str,
    arrivals: list[float],
    duration_s: float,
    tokens: TokenSampler,
    rng: random.Random,
    description: str,
) -> Trace:
    inputs, outputs = tokens.sample(rng, len(arrivals))
    return Trace(
        name=name,
        arrival_s=np.asarray(arrivals, dtype=np.float64),
        input_tokens=np.maximum(np.asarray(inputs, dtype=np.int64), 1),
        output_tokens=np.maximum(np.asarray(outputs, dtype=np.int64), 1),
        source=f"synthetic:{name}",
        duration_s=duration_s,
        scaling=(f"synthetic, generated at full rate: {description}; {tokens.label}",),
    )


def poisson_trace(
    rate: float, duration_s: float, *, seed: int, tokens: TokenSampler | None = None
) -> Trace:
    rng = random.Random(seed)
    sampler = tokens or TokenSampler()
    arrivals = _thinned_poisson(lambda t: rate, rate, duration_s, rng)
    return _synthetic(
        "poisson", arrivals, duration_s, sampler, rng, f"Poisson {rate:g} req/s, seed {seed}"
    )


def step_trace(
    low: float,
    high: float,
    at_s: float,
    duration_s: float,
    *,
    seed: int,
    tokens: TokenSampler | None = None,
) -> Trace:
    rng = random.Random(seed)
    sampler = tokens or TokenSampler()
    arrivals = _thinned_poisson(
        lambda t: low if t < at_s else high, max(low, high), duration_s, rng
    )
    description = f"Poisson {low:g} req/s stepping to {high:g} req/s at {at_s:g} s, seed {seed}"
    return _synthetic("step", arrivals, duration_s, sampler, rng, description)


def diurnal_trace(
    mean: float,
    amplitude: float,
    period_s: float,
    duration_s: float,
    *,
    seed: int,
    tokens: TokenSampler | None = None,
) -> Trace:
    """Rate ``mean * (1 - amplitude * cos(2 pi t / period))``: the trough at t = 0."""
    if not 0 <= amplitude <= 1:
        raise ValueError("the diurnal amplitude must be in [0, 1]")
    rng = random.Random(seed)
    sampler = tokens or TokenSampler()

    def rate(t: float) -> float:
        return mean * (1 - amplitude * math.cos(2 * math.pi * t / period_s))

    arrivals = _thinned_poisson(rate, mean * (1 + amplitude), duration_s, rng)
    description = (
        f"diurnal mean {mean:g} req/s, amplitude {amplitude:g}, period {period_s:g} s, seed {seed}"
    )
    return _synthetic("diurnal", arrivals, duration_s, sampler, rng, description)


def bursty_trace(
    on_rate: float,
    off_rate: float,
    mean_on_s: float,
    mean_off_s: float,
    duration_s: float,
    *,
    seed: int,
    tokens: TokenSampler | None = None,
) -> Trace:
    """On-off (Markov-modulated) Poisson: exponential on and off periods."""
    rng = random.Random(seed)
    sampler = tokens or TokenSampler()
    edges: list[tuple[float, float]] = []  # (start, rate)
    t, on = 0.0, False
    while t < duration_s:
        edges.append((t, on_rate if on else off_rate))
        t += rng.expovariate(1.0 / (mean_on_s if on else mean_off_s))
        on = not on
    starts = [s for s, _ in edges]

    def rate(x: float) -> float:
        from bisect import bisect_right

        return edges[bisect_right(starts, x) - 1][1]

    arrivals = _thinned_poisson(rate, max(on_rate, off_rate), duration_s, rng)
    description = (
        f"on-off Poisson {on_rate:g}/{off_rate:g} req/s, mean periods {mean_on_s:g}/"
        f"{mean_off_s:g} s, seed {seed}"
    )
    return _synthetic("bursty", arrivals, duration_s, sampler, rng, description)


# ------------------------------------------------------------------------ spec strings

_GENERATORS: dict[str, tuple[Callable[..., Trace], dict[str, str], dict[str, float]]] = {
    # kind: (generator, {spec key: parameter}, defaults)
    "poisson": (poisson_trace, {"rate": "rate", "duration": "duration_s"}, {"duration": 3600}),
    "step": (
        step_trace,
        {"low": "low", "high": "high", "at": "at_s", "duration": "duration_s"},
        {"duration": 3600},
    ),
    "diurnal": (
        diurnal_trace,
        {"mean": "mean", "amplitude": "amplitude", "period": "period_s", "duration": "duration_s"},
        {"amplitude": 0.6, "duration": 7200},
    ),
    "bursty": (
        bursty_trace,
        {
            "on": "on_rate",
            "off": "off_rate",
            "on_s": "mean_on_s",
            "off_s": "mean_off_s",
            "duration": "duration_s",
        },
        {"on_s": 60, "off_s": 240, "duration": 3600},
    ),
}
SYNTHETIC_KINDS = tuple(_GENERATORS)


def synthetic_from_spec(text: str, *, seed: int) -> Trace:
    """``KIND:key=value,...`` -- e.g. ``poisson:rate=50,duration=3600``,
    ``step:low=10,high=30,at=1800``, ``diurnal:mean=30,amplitude=0.6,period=7200``,
    ``bursty:on=60,off=10,on_s=60,off_s=240``; ``tokens=azure-conv`` (default),
    ``azure-code``, ``mooncake-synthetic`` or ``tokens=uniform``; ``period`` defaults to
    the duration."""
    kind, _, rest = text.partition(":")
    if kind not in _GENERATORS:
        raise ValueError(f"unknown synthetic trace {kind!r}; known: {', '.join(_GENERATORS)}")
    generator, keys, defaults = _GENERATORS[kind]
    values: dict[str, str] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"{text!r}: expected key=value, got {item!r}")
        values[key.strip()] = value.strip()
    token_source = values.pop("tokens", "azure-conv")
    unknown = set(values) - set(keys)
    if unknown:
        raise ValueError(
            f"{text!r}: unknown parameter(s) {sorted(unknown)}; {kind} takes {sorted(keys)}"
        )
    numbers: dict[str, float] = {k: float(v) for k, v in defaults.items()}
    try:
        numbers.update({k: float(v) for k, v in values.items()})
    except ValueError as error:
        raise ValueError(f"{text!r}: {error}") from None
    if kind == "diurnal" and "period" not in numbers:
        numbers["period"] = numbers["duration"]
    missing = set(keys) - set(numbers)
    if missing:
        raise ValueError(f"{text!r}: missing parameter(s) {sorted(missing)}")
    tokens = (
        TokenSampler()
        if token_source == "uniform"
        else TokenSampler.from_trace(load_trace(token_source))
    )
    kwargs = {keys[k]: v for k, v in numbers.items()}
    trace = generator(**kwargs, seed=seed, tokens=tokens)
    return replace(trace, name=text, source=f"synthetic:{text}")


def resolve_trace(name_or_path: str, *, seed: int) -> Trace:
    """A built-in name, a synthetic spec (``KIND:...``) or a CSV path."""
    kind = name_or_path.partition(":")[0]
    if kind in _GENERATORS and not Path(name_or_path).exists():
        return synthetic_from_spec(name_or_path, seed=seed)
    return load_trace(name_or_path)


def builtin_names() -> Iterable[str]:
    return BUILTIN_TRACES.keys()
