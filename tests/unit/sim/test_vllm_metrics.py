"""vLLM metric names, buckets, histogram arithmetic and the text exposition."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from slotune.sim import vllm_metrics as vm
from slotune.sim.vllm_metrics import Histogram, VllmMetrics, histogram_buckets

SAMPLE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)"
    r"\{(?P<labels>(?:[a-zA-Z_][a-zA-Z0-9_]*=\"(?:[^\"\\]|\\.)*\",?)*)\}"
    r" (?P<value>[-+]?(?:[0-9.]+(?:e[-+]?[0-9]+)?|Inf|NaN))$"
)
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_exposition(text: str) -> tuple[dict[str, str], list[tuple[str, dict[str, str], float]]]:
    """A strict little parser of the Prometheus text format (what we emit of it)."""
    types: dict[str, str] = {}
    helps: set[str] = set()
    samples: list[tuple[str, dict[str, str], float]] = []
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert name not in helps, f"duplicate HELP for {name}"
            helps.add(name)
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram"), line
            assert name in helps and name not in types, line
            types[name] = kind
        else:
            m = SAMPLE.match(line)
            assert m, f"not a sample line: {line!r}"
            labels = dict(LABEL.findall(m["labels"]))
            samples.append((m["name"], labels, float(m["value"])))
    return types, samples


def family(name: str, types: dict[str, str]) -> str:
    for suffix in ("_bucket", "_count", "_sum"):
        if name.endswith(suffix) and name[: -len(suffix)] in types:
            return name[: -len(suffix)]
    return name


def test_bucket_boundaries_are_vllms() -> None:
    assert vm.TTFT_BUCKETS[0] == 0.001 and vm.TTFT_BUCKETS[-1] == 2560.0
    assert len(vm.TTFT_BUCKETS) == 22
    assert vm.ITL_BUCKETS == (
        0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
        1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
    )  # fmt: skip
    assert len(vm.REQUEST_LATENCY_BUCKETS) == 21
    for bounds in vm.DEFAULT_BUCKETS.values():
        assert list(bounds) == sorted(set(bounds))


def test_exposition_parses_and_is_consistent() -> None:
    metrics = VllmMetrics()
    metrics.ttft.observe(0.03)
    metrics.ttft.observe(0.5)  # on a boundary: counted in le="0.5"
    metrics.ttft.observe(9999.0)  # beyond the last bound: only +Inf
    metrics.itl.observe(0.02, count=40)
    metrics.observe_finished(
        e2e=3.0, queue=0.1, prefill=0.2, decode=2.7, inference=2.9, time_per_output_token=0.02
    )
    metrics.prompt_tokens, metrics.generation_tokens = 1234, 41
    metrics.set_scheduler_state(running=7, waiting=2, kv_cache_usage=0.25)

    text = metrics.render(model_name='meta/llama "3"', engine="0")
    types, samples = parse_exposition(text)

    assert types[vm.TIME_TO_FIRST_TOKEN] == "histogram"
    assert types[vm.NUM_REQUESTS_RUNNING] == "gauge"
    assert types[vm.PROMPT_TOKENS] == "counter"
    for name, labels, _ in samples:
        assert family(name, types) in types, name
        assert labels["model_name"] == r"meta/llama \"3\"" and labels["engine"] == "0"

    def value(name: str, **labels: str) -> float:
        [v] = [
            v
            for n, ls, v in samples
            if n == name and all(ls.get(k) == x for k, x in labels.items())
        ]
        return v

    assert value(vm.NUM_REQUESTS_RUNNING) == 7
    assert value(vm.KV_CACHE_USAGE) == 0.25
    assert value(vm.PROMPT_TOKENS) == 1234
    assert value(vm.REQUEST_SUCCESS, finished_reason="stop") == 1
    assert value(vm.REQUEST_SUCCESS, finished_reason="length") == 0
    ttft = vm.TIME_TO_FIRST_TOKEN
    assert value(f"{ttft}_bucket", le="0.04") == 1
    assert value(f"{ttft}_bucket", le="0.5") == 2
    assert value(f"{ttft}_bucket", le="2560.0") == 2
    assert value(f"{ttft}_bucket", le="+Inf") == value(f"{ttft}_count") == 3
    assert value(f"{ttft}_sum") == pytest.approx(0.03 + 0.5 + 9999.0)
    assert value(f"{vm.INTER_TOKEN_LATENCY}_bucket", le="0.025") == 40
    assert value(f"{vm.INTER_TOKEN_LATENCY}_sum") == pytest.approx(0.8)

    # Every histogram: cumulative, non-decreasing, +Inf bucket equals the count.
    for name, kind in types.items():
        if kind != "histogram":
            continue
        buckets = [(ls["le"], v) for n, ls, v in samples if n == f"{name}_bucket"]
        assert buckets[-1][0] == "+Inf"
        bounds = [float(le) for le, _ in buckets]
        assert bounds == sorted(bounds)
        counts = [v for _, v in buckets]
        assert counts == sorted(counts)
        assert counts[-1] == value(f"{name}_count")


def test_custom_buckets_follow_vllms_flag() -> None:
    buckets = histogram_buckets({"time_to_first_token": [0.2, 0.5, 1.0]})
    assert buckets[vm.TIME_TO_FIRST_TOKEN] == (0.2, 0.5, 1.0)
    assert buckets[vm.INTER_TOKEN_LATENCY] == vm.ITL_BUCKETS
    metrics = VllmMetrics(buckets=buckets)
    _, samples = parse_exposition(metrics.render(model_name="m"))
    les = [ls["le"] for n, ls, _ in samples if n == f"{vm.TIME_TO_FIRST_TOKEN}_bucket"]
    assert les == ["0.2", "0.5", "1.0", "+Inf"]
    with pytest.raises(ValueError, match="unknown histogram"):
        histogram_buckets({"ttft": [1.0]})
    with pytest.raises(ValueError, match="strictly increasing"):
        histogram_buckets({"time_to_first_token": [1.0, 0.5]})


def test_quantile_matches_prometheus_histogram_quantile() -> None:
    h = Histogram((0.1, 0.2, 0.4))
    h.observe(0.05, 10)  # bucket le=0.1
    h.observe(0.15, 10)  # le=0.2
    h.observe(0.3, 20)  # le=0.4
    snap = h.snapshot()
    assert snap.quantile(0.25) == pytest.approx(0.1)  # rank 10: top of the first bucket
    assert snap.quantile(0.5) == pytest.approx(0.2)
    assert snap.quantile(0.75) == pytest.approx(0.3)  # halfway through (0.2, 0.4]
    h.observe(5.0, 60)  # +Inf bucket
    assert h.quantile(0.99) == 0.4  # Prometheus returns the highest finite bound
    assert math.isnan(Histogram((1.0,)).quantile(0.5))
    earlier = snap
    assert h.snapshot().minus(earlier).count == 60


def test_fraction_above_counts_the_budget_burn() -> None:
    h = Histogram((0.1, 0.2, 0.4))
    h.observe(0.05, 10)
    h.observe(0.15, 10)
    h.observe(0.3, 20)
    h.observe(5.0, 10)  # +Inf
    snap = h.snapshot()
    assert snap.fraction_above(0.2) == pytest.approx(30 / 50)  # a bound: exact
    assert snap.fraction_above(0.3) == pytest.approx(20 / 50)  # halfway through (0.2, 0.4]
    assert snap.fraction_above(0.05) == pytest.approx(45 / 50)  # the first bucket starts at 0
    assert snap.fraction_above(1.0) == pytest.approx(10 / 50)  # past the last bound: +Inf only
    assert math.isnan(Histogram((1.0,)).snapshot().fraction_above(0.5))


@given(
    st.lists(st.integers(0, 40), min_size=4, max_size=4).filter(lambda c: sum(c) > 0),
    st.floats(0.01, 0.99),
)
def test_fraction_above_inverts_the_quantile(counts: list[int], q: float) -> None:
    bounds = (0.1, 0.2, 0.4)
    h = Histogram(bounds)
    for value, count in zip((0.05, 0.15, 0.3, 1.0), counts, strict=True):
        h.observe(value, count)
    snap = h.snapshot()
    value = snap.quantile(q)
    # Inside the finite buckets the two are inverse interpolations of each other.
    if value < bounds[-1]:
        assert snap.fraction_above(value) == pytest.approx(1 - q, abs=1e-9)


@given(st.lists(st.tuples(st.floats(0, 100, allow_nan=False), st.integers(1, 50)), max_size=40))
def test_weighted_observations_equal_repeated_ones(observations: list[tuple[float, int]]) -> None:
    weighted, repeated = Histogram(vm.ITL_BUCKETS), Histogram(vm.ITL_BUCKETS)
    for value, count in observations:
        weighted.observe(value, count)
        for _ in range(count):
            repeated.observe(value)
    assert weighted.snapshot().cumulative == repeated.snapshot().cumulative
    assert weighted.sum == pytest.approx(repeated.sum)
