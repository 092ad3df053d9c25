"""bench/bench_predictions.py's pairing rule (the script itself is run by hand)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "bench_predictions.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_predictions", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def timeline(steps: int, **columns: list[Any]) -> dict[str, list[Any]]:
    """30 s report steps on 2 ready replicas, predicting 0.2 s and seeing 0.25 s throughout."""
    base: dict[str, list[Any]] = {
        "t_s": [30.0 * (i + 1) for i in range(steps)],
        "replicas": [2] * steps,
        "ready": [2] * steps,
        "max_num_seqs": [128] * steps,
        "max_batched_tokens": [512] * steps,
        "predicted_ttft": [0.2] * steps,
        "seen_ttft": [0.25] * steps,
    }
    return {**base, **columns}


def test_a_prediction_meets_the_window_seen_one_window_later(bench: ModuleType) -> None:
    # 20 steps of 30 s: steps 0-9 have a step a whole window (300 s) later.
    pairs = bench.prediction_pairs(timeline(20), "ttft")
    assert pairs == [(0.2, 0.25)] * 10
    assert bench.accuracy(pairs) == {
        "pairs": 10, "median_ratio": 0.8, "within_25": 1.0, "within_50": 1.0,
    }  # fmt: skip


def test_a_window_that_mixes_settings_or_waits_for_replicas_is_left_out(
    bench: ModuleType,
) -> None:
    scaled = [2] * 12 + [3] * 8  # scaled up at step 12: windows from steps 2-9 include it
    assert len(bench.prediction_pairs(timeline(20, replicas=scaled), "ttft")) == 2
    starting = [2] * 5 + [1] + [2] * 14  # a replica not ready at step 5
    assert len(bench.prediction_pairs(timeline(20, ready=starting), "ttft")) == 4
    unknown = [None] * 20  # no model learnt: nothing to pair
    assert bench.prediction_pairs(timeline(20, predicted_ttft=unknown), "ttft") == []
    assert bench.accuracy([]) == {"pairs": 0}


def test_the_plot_has_a_panel_per_run_even_one_without_pairs(
    bench: ModuleType, tmp_path: Path
) -> None:
    runs = {
        "step, standard": {"ttft": [(0.2, 0.25), (0.3, 0.28)], "itl": [(0.02, 0.021)]},
        "day, interactive": {"ttft": [], "itl": []},
    }
    path = tmp_path / "predictions.png"
    bench.plot_pairs(runs, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
