"""The slotune operator on the real control plane, as a separate process with only its RBAC.

Used by the operator's integration tests: installs the CRD, a ServiceAccount bound to exactly
the rules in charts/slotune/files/rbac-rules.yaml, and starts `slotune run` with that
ServiceAccount's token (never as admin). Stopped by PID.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from slotune.api.crd import crd
from slotune.sandbox.controlplane import ControlPlane, service_account_kubeconfig

ROOT = Path(__file__).resolve().parents[2]
RBAC_RULES = ROOT / "charts" / "slotune" / "files" / "rbac-rules.yaml"
OPERATOR_NAMESPACE = "slotune-system"
OPERATOR_SA = "slotune"
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_SA}"
T = TypeVar("T")


def eventually(check: Callable[[], T], timeout: float = 60, what: str = "condition") -> T:
    """Poll `check` until it returns something truthy; fail with its last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            result = check()
        except ApiException as error:
            last = f"ApiException {error.status}: {error.reason}"
        else:
            if result:
                return result
            last = result
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def install_crd(api: Any) -> None:
    ext = client.ApiextensionsV1Api(api)
    body = crd()
    try:
        ext.create_custom_resource_definition(body)
    except ApiException as error:
        if error.status != 409:
            raise

    def established() -> bool:
        got = ext.read_custom_resource_definition(body["metadata"]["name"])
        return any(
            c.type == "Established" and c.status == "True" for c in got.status.conditions or []
        )

    eventually(established, 30, "the CRD to be established")


def rbac_rules() -> dict[str, list[dict[str, Any]]]:
    loaded: dict[str, list[dict[str, Any]]] = yaml.safe_load(RBAC_RULES.read_text())
    return loaded


def grant_operator_rbac(api: Any) -> None:
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    for create in (
        lambda: core.create_namespace({"metadata": {"name": OPERATOR_NAMESPACE}}),
        lambda: core.create_namespaced_service_account(
            OPERATOR_NAMESPACE, {"metadata": {"name": OPERATOR_SA}}
        ),
        lambda: rbac.create_cluster_role(
            {
                "metadata": {"name": "slotune-operator"},
                "rules": [*rbac_rules()["namespaced"], *rbac_rules()["clusterOnly"]],
            }
        ),
        lambda: rbac.create_cluster_role_binding(
            {
                "metadata": {"name": "slotune-operator"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "slotune-operator",
                },
                "subjects": [
                    {"kind": "ServiceAccount", "name": OPERATOR_SA, "namespace": OPERATOR_NAMESPACE}
                ],
            }
        ),
    ):
        try:
            create()
        except ApiException as error:
            if error.status != 409:
                raise


class OperatorProcess:
    """`slotune run` as a child process, with its log in a file."""

    def __init__(
        self,
        kubeconfig: Path,
        log_path: Path,
        resync_seconds: float = 2,
        prometheus_url: str | None = None,
    ) -> None:
        # Default: a loopback port nothing listens on, so metrics are honestly unavailable.
        self.prometheus_url = prometheus_url or f"http://127.0.0.1:{_free_port()}"
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.resync_seconds = resync_seconds
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "SLOTUNE_PROMETHEUS_URL": self.prometheus_url,
        }
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "slotune.cli",
                    "run",
                    "--resync-seconds",
                    str(self.resync_seconds),
                    "--verbose",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def operator_writes(audit_log: Path, since: float, namespace: str | None = None) -> list[str]:
    """Mutating requests the operator's ServiceAccount made after `since` (epoch seconds).

    Events are excluded: they report, they change nothing the operator owns.
    """
    writes = []
    if not audit_log.exists():
        return writes
    for line in audit_log.read_text().splitlines():
        entry = json.loads(line)
        if entry.get("user", {}).get("username") != OPERATOR_USER:
            continue
        if entry.get("verb") not in ("create", "update", "patch", "delete"):
            continue
        ref = entry.get("objectRef", {})
        if ref.get("resource") == "events":
            continue
        if namespace and ref.get("namespace") != namespace:
            continue
        stamp = entry.get("requestReceivedTimestamp", "")
        if _epoch(stamp) < since:
            continue
        writes.append(
            f"{entry['verb']} {ref.get('resource')}/{ref.get('subresource', '')}"
            f"{ref.get('name', '')}"
        )
    return writes


def _epoch(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def start_operator(cp: ControlPlane, api: Any, work_dir: Path) -> Iterator[OperatorProcess]:
    install_crd(api)
    grant_operator_rbac(api)
    kubeconfig = service_account_kubeconfig(
        cp.kubeconfig, OPERATOR_NAMESPACE, OPERATOR_SA, work_dir / "operator.kubeconfig"
    )
    operator = OperatorProcess(kubeconfig, work_dir / "operator.log")
    operator.start()
    try:
        yield operator
    finally:
        operator.stop()
