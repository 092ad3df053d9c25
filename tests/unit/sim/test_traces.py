"""Trace loading, scaling (always stated) and seeded synthetic generators."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from slotune.sim.traces import (
    BUILTIN_TRACES,
    TokenSampler,
    bursty_trace,
    compress,
    diurnal_trace,
    load_trace,
    parse_trace_csv,
    poisson_trace,
    resolve_trace,
    scale_trace,
    step_trace,
    superimpose,
    synthetic_from_spec,
)


def test_builtin_traces_ship_with_the_package() -> None:
    conv = load_trace("azure-conv")
    assert len(conv) == 19366 and conv.duration_s == pytest.approx(3502, abs=2)
    assert conv.arrival_s[0] == 0.0 and np.all(np.diff(conv.arrival_s) >= 0)
    assert conv.license == "CC-BY-4.0" and "Splitwise" in (conv.citation or "")
    assert conv.input_tokens.mean() == pytest.approx(1155, rel=0.01)
    code = load_trace("azure-code")
    assert len(code) == 8819 and code.mean_rps == pytest.approx(2.57, rel=0.02)
    moon = load_trace("mooncake-synthetic")
    assert len(moon) == 3993 and moon.license == "Apache-2.0"
    assert moon.duration_s == pytest.approx(1022, abs=2)
    assert set(BUILTIN_TRACES) == {"azure-conv", "azure-code", "mooncake-synthetic"}
    assert conv.describe()["scaling"] == ["none: the trace as recorded"]


def test_azure_timestamps_with_seven_fraction_digits() -> None:
    text = (
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:17:04.0319600,3180,8\n"
        "2023-11-16 18:17:03.9799600,4808,10\n"
        "2023-11-16 18:18:03.9799600,5,0\n"
    )
    t = parse_trace_csv(text, "x", "x.csv")
    assert t.arrival_s.tolist() == pytest.approx([0.0, 0.052, 60.0])
    assert t.input_tokens.tolist() == [4808, 3180, 5]
    assert t.output_tokens.tolist() == [10, 8, 1]  # raised to 1, and said so
    assert any("raised to 1" in n for n in t.notes)


def test_normalized_and_gzipped_files_by_path(tmp_path: Path) -> None:
    plain = tmp_path / "t.csv"
    plain.write_text("arrival_s,input_tokens,output_tokens\n2.0,10,5\n1.0,20,6\n")
    t = load_trace(str(plain))
    assert t.arrival_s.tolist() == [0.0, 1.0] and t.input_tokens.tolist() == [20, 10]
    packed = tmp_path / "m.csv.gz"
    packed.write_bytes(gzip.compress(b"timestamp_ms,input_tokens,output_tokens\n0,5,6\n1500,7,8\n"))
    assert load_trace(str(packed)).arrival_s.tolist() == [0.0, 1.5]
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="unknown trace format"):
        load_trace(str(bad))
    with pytest.raises(FileNotFoundError, match="not a built-in trace"):
        load_trace(str(tmp_path / "missing.csv"))


def test_superimposing_multiplies_the_rate_keeps_the_duration_and_says_so() -> None:
    base = load_trace("azure-code")
    tripled = superimpose(base, 3, seed=1)
    assert len(tripled) == 3 * len(base) and tripled.duration_s == base.duration_s
    assert np.all(np.diff(tripled.arrival_s) >= 0) and tripled.arrival_s.max() < base.duration_s
    assert "superimposed x3" in tripled.scaling[0] and "seed 1" in tripled.scaling[0]
    # The shape over minutes survives (shifts are under a minute).
    five_minutes = lambda t: np.bincount((t.arrival_s // 300).astype(int), minlength=12)[:11]  # noqa: E731
    assert np.corrcoef(five_minutes(base), five_minutes(tripled))[0, 1] > 0.8
    again = superimpose(base, 3, seed=1)
    assert np.array_equal(again.arrival_s, tripled.arrival_s)
    assert not np.array_equal(superimpose(base, 3, seed=2).arrival_s, tripled.arrival_s)
    half = superimpose(base, 2.5, seed=1)
    assert len(half) == pytest.approx(2.5 * len(base), rel=0.02)
    assert "thinned" in half.scaling[0]


def test_compressing_time_divides_the_duration() -> None:
    base = load_trace("azure-code")
    fast = compress(base, 4)
    assert len(fast) == len(base) and fast.duration_s == pytest.approx(base.duration_s / 4)
    assert fast.mean_rps == pytest.approx(4 * base.mean_rps)
    assert "time compressed x4" in fast.scaling[0]
    assert scale_trace(base, 1, "compress", seed=0) is base
    with pytest.raises(ValueError):
        scale_trace(base, 2, "stretch", seed=0)  # type: ignore[arg-type]


def test_cut_keeps_a_window_and_states_it() -> None:
    base = load_trace("azure-conv")
    part = base.cut(600.0, start_s=300.0)
    assert part.duration_s == 600.0 and part.arrival_s.min() >= 0 and part.arrival_s.max() < 600
    assert part.scaling[-1] == "cut to [300 s, 900 s)"


def test_synthetic_generators_are_seeded_and_have_their_rates() -> None:
    tokens = TokenSampler()
    p = poisson_trace(20.0, 600.0, seed=3, tokens=tokens)
    assert p.mean_rps == pytest.approx(20.0, rel=0.05)
    assert np.array_equal(p.arrival_s, poisson_trace(20.0, 600.0, seed=3).arrival_s)
    s = step_trace(5.0, 15.0, 300.0, 600.0, seed=3)
    before = np.count_nonzero(s.arrival_s < 300) / 300
    after = np.count_nonzero(s.arrival_s >= 300) / 300
    assert before == pytest.approx(5, rel=0.15) and after == pytest.approx(15, rel=0.1)
    d = diurnal_trace(10.0, 0.8, 1200.0, 1200.0, seed=3)
    trough = np.count_nonzero(d.arrival_s < 100)
    peak = np.count_nonzero((d.arrival_s >= 550) & (d.arrival_s < 650))
    assert peak > 4 * trough
    b = bursty_trace(40.0, 2.0, 30.0, 120.0, 3600.0, seed=3)
    per_minute = np.bincount((b.arrival_s // 60).astype(int))
    assert per_minute.max() > 10 * max(1, np.percentile(per_minute, 10))
    assert all("seed 3" in t.scaling[0] for t in (p, s, d, b))


def test_synthetic_specs() -> None:
    t = synthetic_from_spec("poisson:rate=5,duration=120,tokens=uniform", seed=1)
    assert t.duration_s == 120.0 and t.name == "poisson:rate=5,duration=120,tokens=uniform"
    assert t.input_tokens.min() >= 128 and t.input_tokens.max() <= 1024
    conv_lengths = synthetic_from_spec("step:low=1,high=2,at=60,duration=120", seed=1)
    assert "lengths drawn from azure-conv" in conv_lengths.scaling[0]
    assert resolve_trace("diurnal:mean=2,duration=600", seed=1).duration_s == 600.0
    for bad, message in (
        ("poisson:duration=10", "missing"),
        ("poisson:rate=1,speed=2", "unknown parameter"),
        ("poisson:rate", "key=value"),
        ("zipf:rate=1", "unknown synthetic"),
    ):
        with pytest.raises(ValueError, match=message):
            synthetic_from_spec(bad, seed=1)
