"""The Helm chart on the real control plane: install, upgrade with a changed value, uninstall;
and the operator, run with the chart's ServiceAccount token and configuration, reconciling.

kwok cannot run the operator image, so the operator runs here as a local process, started the
way the chart's Deployment starts it: its args and env (ports moved to free loopback ones), and
a token of the ServiceAccount the chart created, bound only by the chart's (Cluster)Role.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from operator_fixtures import eventually, install_crd

from slotune.sandbox.controlplane import ControlPlane, new_api_client, service_account_kubeconfig

from helm_tools import CHART, ROOT, helm, set_args

pytestmark = pytest.mark.integration

RELEASE, RELEASE_NS = "slotune", "slotune-chart"
CRD_NAME = "llmservices.slotune.dev"
GROUP, VERSION, PLURAL = "slotune.dev", "v1alpha1", "llmservices"
# The resync is shortened so a reconcile shows within seconds; everything else is the chart's.
VALUES = {"config.resyncSeconds": "2", "config.prometheusUrl": "http://127.0.0.1:9"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ChartOperator:
    """`slotune run` with the args and env of the chart's Deployment."""

    def __init__(self, manifest: list[dict[str, Any]], kubeconfig: Path, log: Path) -> None:
        (deployment,) = [m for m in manifest if m["kind"] == "Deployment"]
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        self.metrics_port, self.liveness_port = _free_port(), _free_port()
        self.args = [
            f"--liveness=http://127.0.0.1:{self.liveness_port}/healthz"
            if arg.startswith("--liveness=")
            else arg
            for arg in container["args"]
        ]
        env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        assert env.pop("SLOTUNE_METRICS_PORT")  # the chart turns metrics on; moved to loopback
        self.env = {
            **os.environ,
            **env,
            "SLOTUNE_METRICS_PORT": str(self.metrics_port),
            "SLOTUNE_METRICS_ADDRESS": "127.0.0.1",
            "POD_NAMESPACE": RELEASE_NS,
            "KUBECONFIG": str(kubeconfig),
        }
        self.chart_env = env
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ChartOperator:
        with self.log.open("ab") as out:
            # The image's ENTRYPOINT is `slotune run`; the chart passes only flags.
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "slotune.cli", "run", *self.args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        return self

    def __exit__(self, *_: object) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def get(self, port: int, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            body: bytes = response.read()
            return body.decode()

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-60:])


def _manifest(cp: ControlPlane) -> list[dict[str, Any]]:
    out = helm("get", "manifest", RELEASE, "-n", RELEASE_NS, kubeconfig=cp.kubeconfig).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def _llmservice(name: str, namespace: str) -> dict[str, Any]:
    obj: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "llama-3-8b-h100.yaml").read_text())
    obj["metadata"] = {"name": name, "namespace": namespace}
    obj["spec"]["model"].pop("hubTokenSecret")
    return obj


def _reconciled(k8s: Any, namespace: str, name: str) -> dict[str, Any] | None:
    obj: dict[str, Any] = client.CustomObjectsApi(k8s).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name
    )
    status = obj.get("status") or {}
    types = {c["type"] for c in status.get("conditions", [])}
    done = status.get("observedGeneration") == obj["metadata"]["generation"] and "Ready" in types
    return obj if done else None


def _adopt_existing_crd(k8s: Any) -> None:
    """Let Helm take over a CRD another test installed, the documented way (else: conflict)."""
    ext = client.ApiextensionsV1Api(k8s)
    try:
        ext.read_custom_resource_definition(CRD_NAME)
    except ApiException as error:
        if error.status == 404:
            return
        raise
    ext.patch_custom_resource_definition(
        CRD_NAME,
        {
            "metadata": {
                "labels": {"app.kubernetes.io/managed-by": "Helm"},
                "annotations": {
                    "meta.helm.sh/release-name": RELEASE,
                    "meta.helm.sh/release-namespace": RELEASE_NS,
                },
            }
        },
    )


@pytest.fixture
def release(control_plane: ControlPlane, k8s: Any) -> Iterator[ControlPlane]:
    _adopt_existing_crd(k8s)
    yield control_plane
    # Leave nothing behind for the other modules but the CRD (which they install anyway).
    helm("uninstall", RELEASE, "-n", RELEASE_NS, kubeconfig=control_plane.kubeconfig, check=False)
    try:
        client.CoreV1Api(k8s).delete_namespace(RELEASE_NS)
    except ApiException as error:
        if error.status != 404:
            raise


def test_install_upgrade_uninstall_and_the_operator_reconciles_with_the_charts_identity(
    release: ControlPlane, k8s: Any, namespace: str, tmp_path: Path
) -> None:
    cp = release
    installed = helm(
        "install",
        RELEASE,
        str(CHART),
        "-n",
        RELEASE_NS,
        "--create-namespace",
        *set_args(VALUES),
        kubeconfig=cp.kubeconfig,
    ).stdout
    assert "STATUS: deployed" in installed
    notes = installed.split("NOTES:", 1)[1]
    assert "watching the whole cluster" in notes and "kubectl get llms" in notes
    # The control plane has no Prometheus operator: the chart says what it left out.
    assert "ServiceMonitor was not created" in notes

    manifest = _manifest(cp)
    kinds = sorted(m["kind"] for m in manifest)
    assert "ClusterRole" in kinds and "CustomResourceDefinition" in kinds
    install_crd(k8s)  # waits until the CRD is established (it exists: a no-op create)
    rbac = client.RbacAuthorizationV1Api(k8s)
    assert rbac.read_cluster_role(RELEASE).rules

    # -- the operator as the chart's ServiceAccount, cluster-wide ----------------------------
    kubeconfig = service_account_kubeconfig(
        cp.kubeconfig, RELEASE_NS, RELEASE, tmp_path / "sa.kubeconfig"
    )
    with ChartOperator(manifest, kubeconfig, tmp_path / "operator.log") as operator:
        assert operator.chart_env["SLOTUNE_RESYNC_SECONDS"] == "2"
        custom = client.CustomObjectsApi(k8s)
        custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, _llmservice("chat", namespace)
        )
        obj = eventually(
            lambda: _reconciled(k8s, namespace, "chat"), 90, f"a reconcile\n{operator.tail()}"
        )
        dep = client.AppsV1Api(k8s).read_namespaced_deployment("chat", namespace)
        assert dep.metadata.owner_references[0].uid == obj["metadata"]["uid"]
        assert operator.get(operator.liveness_port, "/healthz")
        metrics = eventually(
            lambda: (
                'slotune_reconcile_total{result="success"}'
                in (text := operator.get(operator.metrics_port, "/metrics"))
                and text
            ),
            30,
            "the operator's /metrics",
        )
        assert f'slotune_llmservice_condition{{llmservice="chat",namespace="{namespace}"' in metrics
        assert 'slotune_applied_writes_total{kind="Deployment"}' in metrics

    # -- upgrade: watch one namespace only, and log at debug ---------------------------------
    upgraded = helm(
        "upgrade",
        RELEASE,
        str(CHART),
        "-n",
        RELEASE_NS,
        *set_args({**VALUES, "watchNamespaces": "{" + namespace + "}", "config.logLevel": "debug"}),
        kubeconfig=cp.kubeconfig,
    ).stdout
    assert "REVISION: 2" in upgraded and f"watching only: {namespace}" in upgraded
    manifest = _manifest(cp)
    assert not [m for m in manifest if m["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    with pytest.raises(ApiException) as gone:
        rbac.read_cluster_role(RELEASE)
    assert gone.value.status == 404
    assert rbac.read_namespaced_role(RELEASE, namespace).rules

    # The ServiceAccount now reads LLMServices in the watched namespace only.
    sa_api = new_api_client(kubeconfig)
    try:
        sa_custom = client.CustomObjectsApi(sa_api)
        assert sa_custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
        with pytest.raises(ApiException) as denied:
            sa_custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)
        assert denied.value.status == 403
    finally:
        sa_api.close()

    with ChartOperator(manifest, kubeconfig, tmp_path / "operator-ns.log") as operator:
        assert operator.args[-2:] == ["-n", namespace]
        assert operator.chart_env["SLOTUNE_LOG_LEVEL"] == "debug"
        client.CustomObjectsApi(k8s).create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, _llmservice("chat-2", namespace)
        )
        eventually(
            lambda: _reconciled(k8s, namespace, "chat-2"),
            90,
            f"a reconcile in namespaced mode\n{operator.tail()}",
        )
        assert client.AppsV1Api(k8s).read_namespaced_deployment("chat-2", namespace)
        # Nothing it tried was refused: the Role is all it needs in this mode.
        assert "forbidden" not in operator.log.read_text().lower(), operator.tail()

    # -- uninstall: everything goes but the CRD (crds.keep) and so the LLMServices ------------
    helm("uninstall", RELEASE, "-n", RELEASE_NS, kubeconfig=cp.kubeconfig)
    apps, core = client.AppsV1Api(k8s), client.CoreV1Api(k8s)
    for read in (
        lambda: apps.read_namespaced_deployment(RELEASE, RELEASE_NS),
        lambda: core.read_namespaced_service_account(RELEASE, RELEASE_NS),
        lambda: rbac.read_namespaced_role(RELEASE, namespace),
    ):
        with pytest.raises(ApiException) as removed:
            read()
        assert removed.value.status == 404
    crd = client.ApiextensionsV1Api(k8s).read_custom_resource_definition(CRD_NAME)
    assert crd.metadata.annotations["helm.sh/resource-policy"] == "keep"
    assert _reconciled(k8s, namespace, "chat")
