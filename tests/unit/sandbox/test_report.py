"""The demo report's findings, from a made-up run (no sandbox)."""

from __future__ import annotations

from pathlib import Path

from slotune.sandbox.loadgen import Arrival, Phase, Result, Run, Scenario, percentile, steps
from slotune.sandbox.report import DemoReport, Sample, write_report


def _sample(t: float, phase: str, ttft: float, replicas: int) -> Sample:
    return Sample(t, phase, 4.0, ttft, ttft, 0.01, 4.0, replicas, replicas, 64, "Hold (Steady)")


def _report() -> DemoReport:
    samples = [
        _sample(10, "steady", 0.05, 1),
        _sample(20, "surge", 0.9, 1),
        _sample(30, "surge", 0.8, 3),
        _sample(40, "surge", 0.3, 3),
        _sample(50, "after", 0.05, 2),
        _sample(60, "after", 0.05, 1),
    ]
    results = [
        Result(Arrival(5, 100, 10), sent_s=5, status=200, first_token_s=5.1, done_s=6, tokens=10),
        Result(Arrival(25, 100, 10), sent_s=25, status=200, first_token_s=26, done_s=27, tokens=10),
        Result(Arrival(26, 100, 10), sent_s=26, status=503, error="no ready replica"),
    ]
    events = [
        {"t": 22.0, "reason": "ScaleUp", "message": "applied: replicas 1->3, maxNumSeqs 64->64"},
        {"t": 52.0, "reason": "ScaleDown", "message": "applied: replicas 3->2, maxNumSeqs 64->64"},
    ]
    return DemoReport(
        [("steady", 15, 4), ("surge", 30, 12), ("after", 30, 4)],
        0.5,
        0.025,
        samples,
        Run(results),
        events,
    )


def test_findings() -> None:
    report = _report()
    assert report.first_scale_up_after_surge_s() == 7.0
    assert report.ttft_recovered_after_surge_s() == 25.0
    assert report.scale_down_after_surge_s() == (5.0, 15.0)
    assert report.peak_replicas() == 3
    surge = report.client_stats("surge")
    assert surge["requests"] == 2 and surge["failed"] == 1
    assert surge["ttft_attainment"] == 0.0


def test_a_run_that_ends_before_the_fleet_is_back_says_where_it_stood() -> None:
    report = _report()
    assert "back to the pre-surge count 15s after." in report.summary()
    report.samples = report.samples[:-1]  # the run ends at 2 replicas
    text = report.summary()
    assert "n/a" not in text
    assert "first replica removed 5s after the surge ended; 2 replicas when the load ended " in (
        text
    )
    report.samples = report.samples[:-1]  # ... at 3, nothing removed yet
    assert "no replica removed; 3 replicas when the load ended 30s after the surge" in (
        report.summary()
    )


def test_the_surge_response_says_how_soon_the_operator_could_react() -> None:
    report = _report()
    assert "first look" not in report.summary()  # the cycle unknown: nothing claimed
    report.tuning_interval_s, report.scrape_interval_s, report.ready_delay_s = 10.0, 5.0, 10.0
    assert (
        "The operator decides every 10s on samples scraped every 5s, so its first look at a "
        "surge comes 0-15s after it begins"
    ) in report.summary()
    assert "after its 10s model load" in report.summary()


def test_writes_markdown_and_png(tmp_path: Path) -> None:
    md, png = write_report(_report(), tmp_path)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = md.read_text()
    assert "![timeline](demo.png)" in text and "| 22 | ScaleUp |" in text


def test_scenarios_are_seeded_and_bounded() -> None:
    scenario = Scenario((Phase(60, 4.0), Phase(60, 12.0)))
    arrivals = scenario.arrivals(seed=1)
    assert arrivals == scenario.arrivals(seed=1)
    first = sum(1 for a in arrivals if a.at_s < 60)
    assert 180 < first < 300 and 540 < len(arrivals) - first < 900
    assert all(0 <= a.at_s < 120 for a in arrivals)
    assert steps((10, 1.0)).duration_s == 10
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0 and percentile([], 95) is None
