"""Emulator fidelity: p95 TTFT, ITL and TPOT of the emulator (real time, over HTTP) against the
simulator on the same arrivals, at a light, a busy and a queueing load.

    .venv/bin/python bench/emulator_fidelity.py

Each case runs in real time (about 45 s); the target is every error within 15%.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from datetime import UTC, datetime

from slotune.sandbox.fidelity import measure
from slotune.sandbox.loadgen import steps

CASES = (
    # (label, rate/s, max-num-seqs)
    ("light", 4.0, 64),
    ("busy", 8.0, 128),
    ("queueing", 12.0, 48),
)


def main() -> int:
    print(f"$ {' '.join([os.path.basename(sys.executable), *sys.argv])}")
    print(
        f"{platform.node()} {platform.processor() or platform.machine()} "
        f"{os.cpu_count()} CPUs, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )
    worst = 0.0
    for label, rate, seqs in CASES:
        started = time.monotonic()
        result = measure(
            steps((40, rate), prompt_tokens=(500, 2000), output_tokens=(50, 300)),
            seed=1,
            max_num_seqs=seqs,
        )
        print(
            f"\n## {label}: Poisson {rate:g} req/s for 40 s, max-num-seqs {seqs} "
            f"({time.monotonic() - started:.0f}s)"
        )
        print(result.table())
        worst = max(worst, result.ttft_error, result.itl_error, result.tpot_error)
    print(f"\nworst error: {worst * 100:.1f}% (target <= 15%)")
    return 0 if worst <= 0.15 else 1


if __name__ == "__main__":
    sys.exit(main())
