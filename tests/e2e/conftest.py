"""The whole loop, for real: control plane + kwok GPU nodes + Prometheus + emulators + operator.

One sandbox per test module (started here, stopped by PID even when a test fails); the
operator runs as `slotune run` against it with the sandbox's Prometheus. A module that needs
the operator configured otherwise overrides `sandbox` (see test_slo_alert_sandbox.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sandbox_fixtures import running_sandbox

from slotune.sandbox.sandbox import Sandbox


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    with running_sandbox(tmp_path_factory.mktemp("sandbox")) as sb:
        yield sb


@pytest.fixture(scope="module")
def k8s(sandbox: Sandbox) -> Iterator[Any]:
    assert sandbox.control_plane is not None
    api = sandbox.control_plane.api_client()
    yield api
    api.close()
