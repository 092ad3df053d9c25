"""The emulator against the simulator on the same workload: p95 TTFT and ITL within 15%.

Real time (about 30 s): the emulator runs as its own process, the load generator sends the
arrivals over loopback HTTP.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from slotune.sandbox.fidelity import measure
from slotune.sandbox.loadgen import steps

pytestmark = pytest.mark.e2e

TOLERANCE = 0.15


def test_emulator_matches_the_simulator_under_queueing_load(tmp_path: Path) -> None:
    # 10 req/s against max-num-seqs 48: the batch fills and requests queue, so TTFT is
    # dominated by waiting -- the regime where a real-time driver could drift most.
    fidelity = measure(
        steps((25, 10.0), prompt_tokens=(500, 2000), output_tokens=(50, 300)),
        seed=7,
        max_num_seqs=48,
        work_dir=tmp_path,
    )
    print("\n" + fidelity.table())
    assert fidelity.failed == 0
    assert fidelity.ttft_error <= TOLERANCE, fidelity.table()
    assert fidelity.itl_error <= TOLERANCE, fidelity.table()
    assert fidelity.tpot_error <= TOLERANCE, fidelity.table()
