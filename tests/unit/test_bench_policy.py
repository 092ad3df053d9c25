"""bench/bench_policy.py's summary rule and sweep plot (the script itself is run by hand)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "bench_policy.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_policy", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_slotune_is_compared_with_the_cheapest_setting_that_holds_as_many_windows(
    bench: ModuleType,
) -> None:
    row = bench.cheapest_match(
        [
            ("slotune", "default", 3.0, 0.95),
            ("hpa", "target=0.9", 2.0, 0.50),  # cheaper, but holds fewer windows
            ("hpa", "target=0.3", 5.0, 1.00),
            ("static", "replicas=4", 4.0, 0.95),
        ]
    )
    assert "static replicas=4: 4.00 (95.0%)" in row
    assert "25% fewer GPU-h" in row


def test_where_no_setting_holds_as_many_windows_attainment_is_compared_at_equal_cost(
    bench: ModuleType,
) -> None:
    row = bench.cheapest_match(
        [
            ("slotune", "default", 3.0, 1.0),
            ("hpa", "target=0.5", 2.9, 0.75),
            ("hpa", "target=0.2", 6.0, 0.90),
        ]
    )
    assert "none reaches it" in row
    assert "hpa target=0.5: 2.90 (75.0%)" in row
    assert "+25.0 points of attainment" in row


def run(policy: str, label: str, gpu_hours: float, attainment: float) -> dict[str, Any]:
    return {
        "policy": policy,
        "label": label,
        "gpu_hours": gpu_hours,
        "window_attainment": attainment,
    }


def test_the_sweep_plot_has_a_panel_per_scenario(bench: ModuleType, tmp_path: Path) -> None:
    sweeps = {
        f"scenario {k}": [
            run("slotune", "default", 2.0 + k, 1.0),
            run("hpa", "target=0.5", 2.5 + k, 0.9),
            run("hpa", "target=0.2", 3.5 + k, 1.0),
            run("static", "replicas=3", 3.0 + k, 1.0),
        ]
        for k in range(3)
    }
    path = tmp_path / "sweep.png"
    bench.plot_sweeps(sweeps, path)
    import matplotlib.image

    image = matplotlib.image.imread(path)
    height, width = image.shape[:2]
    assert width > height  # three panels on two columns: two rows of wide panels
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_static_grid_is_filled_in_where_it_first_reaches_slotune(bench: ModuleType) -> None:
    grid = [
        run("hpa", "target=0.5", 9.0, 1.0),
        *(run("static", f"replicas={n}", n, 1.0 if n >= 21 else 0.75) for n in (13, 17, 21, 25)),
    ]
    assert bench.static_gap(grid, 1.0) == [18, 19, 20]
    assert bench.static_gap(grid, 0.5) == []  # the smallest fleet already reaches it
    assert bench.static_gap(grid[:3], 1.0) == []  # none reaches it: nothing to fill in
