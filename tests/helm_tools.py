"""Running the project's helm (built by `slotune.sandbox.build`) against the chart.

Shared by the chart tests (lint, template) and the integration tests (install on the real
control plane). Helm's own cache, config and data live in a temporary directory, so the tests
neither read nor write the user's ~/.config/helm.
"""

from __future__ import annotations

import functools
import os
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "slotune"
MONITORING_KINDS = ("ServiceMonitor", "PrometheusRule", "PodMonitor")
MONITORING_API_VERSIONS = tuple(f"monitoring.coreos.com/v1/{kind}" for kind in MONITORING_KINDS)


@functools.cache
def helm_binary() -> str:
    from slotune.sandbox.build import ensure_binaries

    return str(ensure_binaries() / "helm")


@functools.cache
def _helm_home() -> Path:
    return Path(tempfile.mkdtemp(prefix="slotune-helm-"))


def helm(
    *args: str, kubeconfig: Path | None = None, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    home = _helm_home()
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    result = subprocess.run(
        [helm_binary(), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def set_args(values: dict[str, str]) -> list[str]:
    args: list[str] = []
    for key, value in values.items():
        args += ["--set", f"{key}={value}"]
    return args


def template(
    values: dict[str, str] | None = None,
    api_versions: Sequence[str] = (),
    namespace: str = "slotune-system",
    release: str = "slotune",
) -> list[dict[str, Any]]:
    """`helm template` of the chart, parsed into manifests."""
    args = ["template", release, str(CHART), "--namespace", namespace]
    for api_version in api_versions:
        args += ["--api-versions", api_version]
    out = helm(*args, *set_args(values or {})).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(manifests: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [m for m in manifests if m["kind"] == kind]


def one(manifests: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = by_kind(manifests, kind)
    return found
