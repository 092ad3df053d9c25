"""The local sandbox: control plane + fake GPU nodes + Prometheus + pod bridge (+ the operator).

The cluster also serves PrometheusRules (a minimal CRD, unless it has the real one), and a rule
sync loads every PrometheusRule into the sandbox's Prometheus, so the SLO alerts slotune applies
are evaluated for real.

::

    with Sandbox(work_dir) as sandbox:
        sandbox.install_crd()
        sandbox.start_operator()
        ...  # kubectl apply an LLMService; sandbox.balancer_url(ns, name) serves its API

Every process is a child started here and stopped here by PID, newest first, also when start-up
fails half-way or Python is interrupted; they all listen on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from slotune.sandbox import processes
from slotune.sandbox.bridge import ROUTES_FILE, TARGETS_FILE
from slotune.sandbox.controlplane import ControlPlane
from slotune.sandbox.kwok import DEFAULT_GPU_PRODUCT
from slotune.sandbox.prometheus import Prometheus
from slotune.sandbox.rules import PROMETHEUS_RULE_CRD

STATE_FILE = "sandbox.json"


@dataclass(frozen=True)
class SandboxConfig:
    gpu_nodes: int = 2
    gpus_per_node: int = 4
    gpu_product: str = DEFAULT_GPU_PRODUCT
    # Model load time: pods turn Ready (kwok) and emulators healthy this long after starting.
    ready_delay_s: float = 10.0
    scrape_interval_s: float = 5.0
    stream_interval_s: float = 0.5
    drain_timeout_s: float = 30.0


def default_work_dir() -> Path:
    from slotune.sandbox.build import cache_root

    return cache_root() / "sandbox"


class Sandbox:
    def __init__(
        self,
        work_dir: Path | None = None,
        config: SandboxConfig | None = None,
        *,
        progress: Callable[[str], None] = lambda message: None,
    ) -> None:
        self.work_dir = Path(work_dir or default_work_dir())
        self.config = config or SandboxConfig()
        self.progress = progress
        self.control_plane: ControlPlane | None = None
        self.prometheus: Prometheus | None = None
        self.bridge: processes.ManagedProcess | None = None
        self.rule_sync: processes.ManagedProcess | None = None
        self.operator: processes.ManagedProcess | None = None
        self.bin_dir: Path | None = None

    # -- paths -----------------------------------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        return self.work_dir / "kubeconfig"

    @property
    def bridge_dir(self) -> Path:
        return self.work_dir / "bridge"

    @property
    def rules_dir(self) -> Path:
        return self.work_dir / "prometheus" / "rules"

    @property
    def prometheus_url(self) -> str:
        assert self.prometheus is not None
        return self.prometheus.url

    @property
    def kubectl(self) -> str:
        local = self.bin_dir / "kubectl" if self.bin_dir else None
        return str(local) if local and local.exists() else (shutil.which("kubectl") or "kubectl")

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> Sandbox:
        from slotune.sandbox.build import ensure_binaries

        try:
            for leftover in ("cluster", "prometheus", "bridge"):
                shutil.rmtree(self.work_dir / leftover, ignore_errors=True)
            self.work_dir.mkdir(parents=True, exist_ok=True)
            self.progress("control plane: binaries (built on first use, cached after)")
            self.bin_dir = ensure_binaries()
            started = time.monotonic()
            self.control_plane = ControlPlane(
                self.bin_dir,
                self.work_dir / "cluster",
                pod_ready_delay=self.config.ready_delay_s,
                audit=False,
            )
            self.control_plane.start()
            shutil.copyfile(self.control_plane.kubeconfig, self.kubeconfig)
            os.chmod(self.kubeconfig, 0o600)
            self.progress(
                f"control plane up at {self.control_plane.server} "
                f"({time.monotonic() - started:.0f}s)"
            )
            self.control_plane.add_gpu_nodes(
                self.config.gpu_nodes,
                self.config.gpus_per_node,
                self.config.gpu_product,
                name_prefix="gpu-node",
            )
            self.progress(
                f"{self.config.gpu_nodes} fake GPU nodes x {self.config.gpus_per_node} "
                f"{self.config.gpu_product}"
            )
            if self._create_crd(PROMETHEUS_RULE_CRD, "the PrometheusRule CRD"):
                self.progress("PrometheusRule CRD installed (a minimal stand-in)")
            self.bridge_dir.mkdir(parents=True, exist_ok=True)
            self.prometheus = Prometheus(
                self.work_dir / "prometheus",
                self.bridge_dir / TARGETS_FILE,
                scrape_interval_s=self.config.scrape_interval_s,
                rules_dir=self.rules_dir,
            )
            self.prometheus.start()
            self.progress(f"prometheus at {self.prometheus.url}")
            self.rule_sync = processes.start(
                "rules",
                [
                    *processes.python_module("slotune.sandbox.rules"),
                    f"--kubeconfig={self.kubeconfig}",
                    f"--rules-dir={self.rules_dir}",
                    f"--prometheus-url={self.prometheus.url}",
                ],
                self.work_dir / "logs" / "rules.log",
            )
            self.progress("rule sync loading PrometheusRules into Prometheus")
            self.bridge = processes.start(
                "bridge",
                [
                    *processes.python_module("slotune.sandbox.bridge"),
                    f"--kubeconfig={self.kubeconfig}",
                    f"--work-dir={self.bridge_dir}",
                    f"--ready-delay={self.config.ready_delay_s:g}",
                    f"--stream-interval={self.config.stream_interval_s:g}",
                    f"--drain-timeout={self.config.drain_timeout_s:g}",
                ],
                self.work_dir / "logs" / "bridge.log",
            )
            self._wait_for(lambda: (self.bridge_dir / ROUTES_FILE).exists(), 30, "the pod bridge")
            self.progress("pod bridge watching LLMService pods")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Everything, by PID, newest first."""
        procs = [p for p in (self.operator, self.bridge, self.rule_sync) if p is not None]
        self.operator = self.bridge = self.rule_sync = None
        processes.stop_all(procs, grace=15.0)
        if self.prometheus is not None:
            self.prometheus.stop()
            self.prometheus = None
        if self.control_plane is not None:
            self.control_plane.stop()
            self.control_plane = None

    def pids(self) -> dict[str, int]:
        out: dict[str, int] = {}
        if self.control_plane is not None:
            out.update(self.control_plane.pids)
        for name, proc in (
            ("prometheus", self.prometheus.proc if self.prometheus else None),
            ("bridge", self.bridge),
            ("rules", self.rule_sync),
            ("operator", self.operator),
        ):
            if proc is not None and proc.pid is not None and proc.running():
                out[name] = proc.pid
        return out

    def write_state(self, **extra: Any) -> Path:
        assert self.control_plane is not None
        state = {
            "pid": os.getpid(),
            "kubeconfig": str(self.kubeconfig),
            "server": self.control_plane.server,
            "prometheus": self.prometheus_url,
            "kubectl": self.kubectl,
            "routes": str(self.bridge_dir / ROUTES_FILE),
            "rules": str(self.rules_dir),
            "config": asdict(self.config),
            "processes": self.pids(),
            **extra,
        }
        path = self.work_dir / STATE_FILE
        path.write_text(json.dumps(state, indent=1))
        return path

    # -- the operator ----------------------------------------------------------------------

    def install_crd(self) -> None:
        from slotune.api.crd import crd

        self._create_crd(crd(), "the LLMService CRD")

    def _create_crd(self, body: Any, what: str) -> bool:
        """Create a CRD unless one of that name exists; wait until it is Established.

        True if it was created here.
        """
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        assert self.control_plane is not None
        api = self.control_plane.api_client()
        created = True
        try:
            ext = client.ApiextensionsV1Api(api)
            try:
                ext.create_custom_resource_definition(body)
            except ApiException as error:
                if error.status != 409:
                    raise
                created = False

            def established() -> bool:
                got = ext.read_custom_resource_definition(body["metadata"]["name"])
                return any(
                    c.type == "Established" and c.status == "True"
                    for c in (got.status.conditions if got.status else None) or []
                )

            self._wait_for(established, 30, what)
        finally:
            api.close()
        return created

    def start_operator(
        self, resync_seconds: float = 5.0, alert_speedup: float = 1.0
    ) -> processes.ManagedProcess:
        """`slotune run` against the sandbox, reading the sandbox's Prometheus.

        `alert_speedup` divides the SLO alerts' windows and `for` durations (tests, demos).
        """
        from slotune.render.alerts import sped_up_burn_rates, window_seconds

        shortest = min(window_seconds(t.short_window) for t in sped_up_burn_rates(alert_speedup))
        if shortest < 3 * self.config.scrape_interval_s:
            # rate() over a window of fewer than two scrapes is empty: such an alert never fires.
            self.progress(
                f"warning: with --alert-speedup {alert_speedup:g} the shortest alert window is "
                f"{shortest:g}s, under three scrape intervals "
                f"({self.config.scrape_interval_s:g}s): its alerts may never fire"
            )
        self.operator = processes.start(
            "operator",
            processes.slotune_command(
                "run",
                f"--prometheus-url={self.prometheus_url}",
                f"--resync-seconds={resync_seconds:g}",
                f"--alert-speedup={alert_speedup:g}",
            ),
            self.work_dir / "logs" / "operator.log",
            env={**os.environ, "KUBECONFIG": str(self.kubeconfig)},
        )
        return self.operator

    def stop_operator(self) -> None:
        if self.operator is not None:
            processes.stop_all([self.operator])
            self.operator = None

    # -- what the bridge publishes ---------------------------------------------------------

    def routes(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads((self.bridge_dir / ROUTES_FILE).read_text())
        except (OSError, json.JSONDecodeError):
            return {}
        return data

    def balancer_url(self, namespace: str, name: str, timeout: float = 60.0) -> str:
        """Where the service's load balancer listens, once a replica is Ready behind it."""

        def ready() -> str | None:
            route = self.routes().get(f"{namespace}/{name}")
            if route and any(b["ready"] for b in route["backends"]):
                return str(route["url"])
            return None

        return str(self._wait_for(ready, timeout, f"a Ready replica of {namespace}/{name}"))

    def _wait_for(self, check: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(Exception):
                result = check()
                if result:
                    return result
            if self.bridge is not None and not self.bridge.running():
                raise RuntimeError(f"the pod bridge exited:\n{self.bridge.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(0.5)
