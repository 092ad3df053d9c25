"""bench/oracle_gap.py's accounting (the script itself is run by hand)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "oracle_gap.py"


@pytest.fixture(scope="module")
def gap() -> ModuleType:
    spec = importlib.util.spec_from_file_location("oracle_gap", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def timeline(steps: int, **columns: list[Any]) -> dict[str, list[Any]]:
    """30 s report steps on 2 ready replicas holding 2 GPUs, at one batch setting."""
    base: dict[str, list[Any]] = {
        "t_s": [30.0 * (i + 1) for i in range(steps)],
        "replicas": [2] * steps,
        "ready": [2] * steps,
        "gpus": [2] * steps,
        "max_num_seqs": [128] * steps,
        "max_batched_tokens": [8192] * steps,
    }
    return {**base, **columns}


def windows(*replicas: int, last_end: float | None = None) -> list[dict[str, Any]]:
    out = [
        {"start_s": 300.0 * i, "end_s": 300.0 * (i + 1), "replicas": r}
        for i, r in enumerate(replicas)
    ]
    if last_end is not None:
        out[-1]["end_s"] = last_end
    return out


def test_each_window_sums_the_gpus_its_steps_held_against_the_oracles(gap: ModuleType) -> None:
    # Window 1: 4 GPUs for 3 desired replicas (one surge pod); window 2: 2 GPUs for 2.
    t = timeline(20, gpus=[4] * 10 + [2] * 10, replicas=[3] * 10 + [2] * 10)
    first, second = gap.window_gaps(t, windows(2, 1), 1)
    assert (first.start_s, first.end_s) == (0.0, 300.0)
    assert first.slotune_gpu_h == pytest.approx(4 * 300 / 3600)
    assert first.oracle_gpu_h == pytest.approx(2 * 300 / 3600)
    assert first.beyond_desired_gpu_h == pytest.approx(300 / 3600)
    assert second.excess_gpu_h == pytest.approx(300 / 3600)
    assert second.beyond_desired_gpu_h == 0
    # A replica of 4 GPUs: the oracle's replicas count four times.
    assert gap.window_gaps(t, windows(2, 1), 4)[0].oracle_gpu_h == pytest.approx(8 * 300 / 3600)


def test_the_last_window_takes_the_steps_after_the_trace_ends(gap: ModuleType) -> None:
    # The trace ends at 540 s; slotune holds its GPUs until 600 s, while requests finish.
    last = gap.window_gaps(timeline(20), windows(2, 2, last_end=540.0), 1)[-1]
    assert last.slotune_gpu_h == pytest.approx(2 * 300 / 3600)
    assert last.oracle_gpu_h == pytest.approx(2 * 240 / 3600)


def test_the_split_is_at_the_first_retune_in_place(gap: ModuleType) -> None:
    assert gap.rolled_out_at(timeline(20), 1) == 0.0  # never retuned: no start
    tokens = [8192] * 4 + [512] * 16  # retuned: the new setting from the step ending at 150 s
    surge = [2] * 4 + [3] * 6 + [2] * 10  # ... a surge pod until the step ending at 330 s
    t = timeline(20, max_batched_tokens=tokens, gpus=surge)
    assert gap.rolled_out_at(t, 1) == 330.0
    # Without a surge pod (no GPU to spare: one pod replaced in place), a replica not ready.
    starting = timeline(20, max_batched_tokens=tokens, ready=[2] * 4 + [1] * 3 + [2] * 13)
    assert gap.rolled_out_at(starting, 1) == 240.0
    never = timeline(20, max_batched_tokens=tokens, gpus=[2] * 4 + [3] * 16)
    assert gap.rolled_out_at(never, 1) == 600.0

    parts = gap.split(gap.window_gaps(t, windows(1, 1), 1), 330.0)
    assert parts["before_windows"] == 2  # the rollout ended in the second window
    assert parts["before_excess"] == pytest.approx(parts["slotune"] - parts["oracle"])
    assert parts["after_excess"] == 0
    assert parts["beyond_desired"] == pytest.approx(6 * 30 / 3600)
    early = gap.split(gap.window_gaps(t, windows(1, 1), 1), 150.0)
    assert early["before_windows"] == 1
    assert early["after_excess"] == pytest.approx(300 / 3600)
    assert early["after_oracle"] == pytest.approx(300 / 3600)  # after it: 2x the oracle


def test_the_plot_has_a_panel_per_run(gap: ModuleType, tmp_path: Path) -> None:
    t = timeline(20, max_batched_tokens=[8192] * 4 + [512] * 16)
    runs = [
        gap.Run(name, gap.window_gaps(t, windows(1, 1), 1), 150.0, t, 1, 1.0)
        for name in ("a", "b", "c")
    ]
    path = tmp_path / "gap.png"
    gap.plot_runs(runs, path)
    assert path.stat().st_size > 10_000
