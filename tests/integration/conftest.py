"""Fixtures for tests against the real local control plane (built on first use)."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from slotune.sandbox.build import ensure_binaries
from slotune.sandbox.controlplane import ControlPlane


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """One control plane for the whole session; stopped (by PID) even when tests fail."""
    # A cold cache builds everything here (many minutes); a warm one returns at once.
    bin_dir = ensure_binaries()
    with ControlPlane(bin_dir, pod_ready_delay=1.0) as cp:
        print(
            f"\ncontrol plane at {cp.server} up in {cp.startup_seconds:.1f}s "
            f"(work dir {cp.work_dir})",
            file=sys.stderr,
        )
        yield cp


@pytest.fixture(scope="session")
def k8s(control_plane: ControlPlane) -> Iterator[Any]:
    """An admin `kubernetes.client.ApiClient`."""
    api = control_plane.api_client()
    yield api
    api.close()


@pytest.fixture
def namespace(k8s: Any) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(k8s)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)
