"""The whole loop, for real: control plane + kwok GPU nodes + Prometheus + emulators + operator.

One sandbox per test module (started here, stopped by PID even when a test fails); the
operator runs as `slotune run` against it with the sandbox's Prometheus.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sandbox_fixtures import E2E_CONFIG

from slotune.sandbox.sandbox import Sandbox


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    started = time.monotonic()
    with Sandbox(tmp_path_factory.mktemp("sandbox"), E2E_CONFIG) as sb:
        sb.install_crd()
        sb.start_operator(resync_seconds=2.0)
        print(
            f"\nsandbox up in {time.monotonic() - started:.0f}s at {sb.work_dir}", file=sys.stderr
        )
        yield sb


@pytest.fixture(scope="module")
def k8s(sandbox: Sandbox) -> Iterator[Any]:
    assert sandbox.control_plane is not None
    api = sandbox.control_plane.api_client()
    yield api
    api.close()
