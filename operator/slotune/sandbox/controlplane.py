"""A real Kubernetes control plane on 127.0.0.1, with kwok playing kubelet for fake GPU nodes.

Used by the integration tests, `slotune sandbox` and the demo::

    with ControlPlane(ensure_binaries()) as cp:
        cp.add_gpu_nodes(2, gpus_per_node=8)
        client = cp.api_client()

Every process is started in its own session, logs to ``<work_dir>/logs/<name>.log`` and is stopped
by PID (SIGTERM, then SIGKILL) when the context exits, at interpreter exit, and — through
PR_SET_PDEATHSIG — killed when the Python process dies without running either (a SIGKILL, or
the default SIGTERM action, which skips atexit). Nothing listens on any
address but 127.0.0.1, and nothing here connects to pod or Service IPs (kwok hands out 10.x
addresses that exist nowhere).
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from slotune.sandbox import kwok
from slotune.sandbox.pki import PKI, KeyPair

LOOPBACK = "127.0.0.1"
# Only ever an address inside the apiserver (the `kubernetes` Service): never connected to.
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
POD_CIDR = "10.16.0.0/16"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
ADMIN_USER = "slotune-admin"
# Fake nodes' InternalIPs, outside the pod and Service ranges; never connected to.
_NODE_NETWORK = ipaddress.ip_network("10.15.0.0/16")

_LOG_TAIL_LINES = 40
_STOP_GRACE_S = 10.0
_PR_SET_PDEATHSIG = 1


# Writes only, at Metadata level: enough to count and attribute every change (who, verb,
# resource, name, response code) — e.g. to prove an operator's unchanged resync writes nothing —
# without the cost of logging every read and watch of the whole cluster.
_AUDIT_POLICY: dict[str, Any] = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {
            "level": "Metadata",
            "verbs": ["create", "update", "patch", "delete", "deletecollection"],
        },
        {"level": "None"},
    ],
}


def _rfc3339_to_epoch(stamp: str) -> float:
    # The apiserver writes microseconds and a Z suffix, e.g. 2026-11-25T15:44:08.123456Z.
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


class ControlPlaneError(RuntimeError):
    """A component failed to start or the cluster did not become usable."""


def _free_ports(count: int) -> list[int]:
    """Ports the kernel considers free on loopback, all distinct.

    Holding every socket until all are chosen stops the kernel handing out one port twice; the
    small race with other programs between close and the component's bind is accepted.
    """
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((LOOPBACK, 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGKILL it when the parent dies without stopping it.

    SIGKILL, not SIGTERM: the whole control plane gets the signal at once, and an apiserver
    that sees SIGTERM after etcd is gone was seen to hang in its graceful shutdown for good.
    Nobody is left to wait for a graceful exit anyway, and the data is throw-away.
    The kernel sends the signal when the *thread* that forked exits, so start control planes
    from a thread that lives as long as they should (the main thread in tests and the CLI).
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


@dataclass
class _Process:
    name: str
    args: list[str]
    log_path: Path
    env: dict[str, str] | None = None
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"$ {' '.join(self.args)}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                # Own session: a Ctrl-C in the terminal reaches only Python, which then stops
                # the components in order instead of all of them dying at once.
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def signal(self, sig: int) -> None:
        if self.running() and self.popen is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, sig)

    def wait(self, timeout: float) -> bool:
        if self.popen is None:
            return True
        try:
            self.popen.wait(timeout=max(timeout, 0.0))
        except subprocess.TimeoutExpired:
            return False
        return True

    def stop(self, grace: float = _STOP_GRACE_S) -> None:
        self.signal(signal.SIGTERM)
        if not self.wait(grace):
            self.signal(signal.SIGKILL)
            self.wait(5.0)


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(
    path: Path,
    server: str,
    ca: Path,
    user: str,
    *,
    client: KeyPair | None = None,
    token: str | None = None,
) -> Path:
    """A self-contained kubeconfig (certificates inlined) for one user of one cluster."""
    credentials: dict[str, str] = {}
    if client is not None:
        credentials["client-certificate-data"] = _b64(client.cert)
        credentials["client-key-data"] = _b64(client.key)
    if token is not None:
        credentials["token"] = token
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "slotune-sandbox",
                "cluster": {"server": server, "certificate-authority-data": _b64(ca)},
            }
        ],
        "users": [{"name": user, "user": credentials}],
        "contexts": [
            {"name": user, "context": {"cluster": "slotune-sandbox", "user": user}},
        ],
        "current-context": user,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written private first: it holds a key or a token.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        yaml.safe_dump(config, handle, sort_keys=False)
    return path


def new_api_client(kubeconfig: Path) -> Any:
    """A `kubernetes.client.ApiClient` for a kubeconfig file (close it when done)."""
    from kubernetes import config

    return config.new_client_from_config(config_file=str(kubeconfig))


def service_account_kubeconfig(
    admin_kubeconfig: Path,
    namespace: str,
    name: str,
    path: Path,
    *,
    expiration_seconds: int = 24 * 3600,
    audiences: Sequence[str] = (),
) -> Path:
    """Write a kubeconfig that authenticates as ServiceAccount `namespace/name` with a token.

    The token comes from the TokenRequest API (bound, expiring), as a pod's projected token
    would; the ServiceAccount must exist. Server and CA are taken from `admin_kubeconfig`.
    """
    from kubernetes import client

    with admin_kubeconfig.open() as handle:
        admin = yaml.safe_load(handle)
    cluster = admin["clusters"][0]["cluster"]
    api = new_api_client(admin_kubeconfig)
    try:
        spec = client.V1TokenRequestSpec(
            audiences=list(audiences) or None, expiration_seconds=expiration_seconds
        )
        request = client.AuthenticationV1TokenRequest(spec=spec)
        response = client.CoreV1Api(api).create_namespaced_service_account_token(
            name, namespace, request
        )
    finally:
        api.close()
    token = str(response.status.token) if response.status else ""
    if not token:
        raise ControlPlaneError(f"the TokenRequest for {namespace}/{name} returned no token")
    ca_file = path.with_suffix(".ca.crt")
    ca_file.write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
    try:
        return write_kubeconfig(
            path,
            cluster["server"],
            ca_file,
            f"system:serviceaccount:{namespace}:{name}",
            token=token,
        )
    finally:
        ca_file.unlink()


class ControlPlane:
    """etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok on loopback.

    `pod_ready_delay` is the default time from a pod's containers starting to it turning Ready
    (a model loading); annotate a pod with ``sandbox.slotune.dev/ready-delay: "30s"`` to
    override it per pod. `work_dir` holds certificates, etcd's data, kubeconfigs and logs; a
    temporary one is made and, unless `keep_work_dir` or a start failure, removed on stop.
    """

    def __init__(
        self,
        bin_dir: Path,
        work_dir: Path | None = None,
        *,
        pod_start_delay: float = 0.0,
        pod_ready_delay: float = 1.0,
        startup_timeout: float = 90.0,
        keep_work_dir: bool = False,
        extra_apiserver_args: Sequence[str] = (),
        audit: bool = True,
    ) -> None:
        self.bin_dir = Path(bin_dir)
        self._own_work_dir = work_dir is None
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="slotune-cp-"))
        self.pod_start_delay = pod_start_delay
        self.pod_ready_delay = pod_ready_delay
        self.startup_timeout = startup_timeout
        self.keep_work_dir = keep_work_dir
        self.extra_apiserver_args = list(extra_apiserver_args)
        self.audit = audit
        self.audit_log = self.work_dir / "logs" / "audit.jsonl"
        self._processes: list[_Process] = []
        self._started = False
        self._failed = False
        self.startup_seconds: float | None = None
        (
            self.etcd_port,
            self.etcd_peer_port,
            self.apiserver_port,
            self.controller_manager_port,
            self.scheduler_port,
            self.kwok_port,
        ) = _free_ports(6)
        self.server = f"https://{LOOPBACK}:{self.apiserver_port}"
        self.kubeconfig = self.work_dir / "kubeconfig"
        self._pki: PKI | None = None
        self._admin: KeyPair | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> ControlPlane:
        if self._started:
            return self
        self._started = True
        # Registered before the first process starts, so even a failure half-way stops what ran.
        atexit.register(self.stop)
        started = time.monotonic()
        try:
            self._start()
        except BaseException:
            self._failed = True
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def stop(self) -> None:
        """Stop every component by PID, newest first, so nothing outlives what it talks to."""
        atexit.unregister(self.stop)
        processes, self._processes = self._processes, []
        # Clients first, together (they only talk to the apiserver), then apiserver, then etcd.
        clients = [p for p in processes if p.name not in ("kube-apiserver", "etcd")]
        for proc in clients:
            proc.signal(signal.SIGTERM)
        deadline = time.monotonic() + _STOP_GRACE_S
        for proc in clients:
            if not proc.wait(deadline - time.monotonic()):
                proc.signal(signal.SIGKILL)
                proc.wait(5.0)
        for proc in reversed(processes):
            if proc not in clients:
                proc.stop()
        if self._own_work_dir and not self.keep_work_dir and not self._failed:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    @property
    def pids(self) -> dict[str, int]:
        return {p.name: p.pid for p in self._processes if p.pid is not None and p.running()}

    def audit_events(self, since: float | None = None) -> list[dict[str, Any]]:
        """The apiserver's audit events for writes (see `_AUDIT_POLICY`), oldest first.

        With `since` (a time.time() value), only events whose request arrived at or after it.
        The log backend is synchronous, so a write is here by the time its call returned. Other
        components' events may still be being written: the backend writes each JSON line with
        one write(2), but Linux copies a write into a regular file a page at a time and a
        concurrent read can end inside it (a CI run read a line cut after 238 characters), so
        a last line without its newline is left for the next read.
        """
        if not self.audit_log.exists():
            return []
        text = self.audit_log.read_text()
        complete = text[: text.rfind("\n") + 1]
        events = [json.loads(line) for line in complete.splitlines() if line]
        if since is None:
            return events
        return [e for e in events if _rfc3339_to_epoch(e["requestReceivedTimestamp"]) >= since]

    def log_path(self, component: str) -> Path:
        return self.work_dir / "logs" / f"{component}.log"

    # -- start-up --------------------------------------------------------------------------

    def _binary(self, name: str) -> str:
        path = self.bin_dir / name
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ControlPlaneError(
                f"{path} is missing; build it with `python -m slotune.sandbox.build`"
            )
        return str(path)

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> _Process:
        proc = _Process(name, [self._binary(name), *args], self.log_path(name), env)
        self._processes.append(proc)
        proc.start()
        return proc

    def _start(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        certs = self._make_certs()
        etcd = self._start_etcd()
        self._wait(etcd, deadline, self._etcd_healthy)
        apiserver = self._start_apiserver(certs)
        self._wait(apiserver, deadline, lambda: self._https_ok("/readyz", admin=True))
        controller_manager = self._start_controller_manager(certs)
        scheduler = self._start_scheduler(certs)
        kwok_proc = self._start_kwok(certs)
        self._wait(
            controller_manager,
            deadline,
            lambda: self._https_ok("/healthz", self.controller_manager_port),
        )
        self._wait(scheduler, deadline, lambda: self._https_ok("/healthz", self.scheduler_port))
        self._wait(kwok_proc, deadline, self._kwok_healthy)
        # Pods are refused until their namespace's `default` ServiceAccount exists, and that is
        # made by the controller-manager: waiting for it proves the controllers are working.
        self._wait(controller_manager, deadline, self._default_service_account_exists)

    def _wait(self, proc: _Process, deadline: float, ready: Callable[[], bool]) -> None:
        while True:
            if not proc.running():
                raise ControlPlaneError(
                    f"{proc.name} exited (code {proc.popen.returncode if proc.popen else '?'}) "
                    f"during start-up; last lines of {proc.log_path}:\n{proc.tail()}"
                )
            with contextlib.suppress(OSError, ssl.SSLError, urllib.error.URLError):
                if ready():
                    return
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"{proc.name} was not ready within {self.startup_timeout:.0f}s; "
                    f"last lines of {proc.log_path}:\n{proc.tail()}"
                )
            time.sleep(0.2)

    def _make_certs(self) -> dict[str, KeyPair]:
        self._pki = pki = PKI(self.work_dir / "pki")
        apiserver_names = [
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ]
        certs = {
            "apiserver": pki.leaf(
                "apiserver",
                "kube-apiserver",
                server_names=apiserver_names,
                # 10.0.0.1 is the `kubernetes` Service's ClusterIP: in the certificate only so
                # in-cluster clients (none here) would verify; nothing connects to it.
                server_ips=[LOOPBACK, "10.0.0.1"],
            ),
            # system:masters bypasses RBAC: for the test harness and kwok (which must write
            # any pod's and node's status, as kubelets collectively would).
            "admin": pki.leaf("admin", ADMIN_USER, ["system:masters"]),
            "kwok": pki.leaf("kwok", "kwok-controller", ["system:masters"]),
            # The identities the bootstrap RBAC policy already grants exactly what they need.
            "controller-manager": pki.leaf("controller-manager", "system:kube-controller-manager"),
            "scheduler": pki.leaf("scheduler", "system:kube-scheduler"),
            "service-account": pki.signing_key("service-account"),
        }
        # The aggregation layer's own CA, as kubeadm sets it up. Without it the apiserver
        # publishes no request-header CA, and every component that delegates authentication
        # (controller-manager, scheduler) logs an error for it several times a second.
        front_proxy = PKI(self.work_dir / "pki" / "front-proxy", "front-proxy-ca")
        certs["front-proxy-ca"] = front_proxy.ca
        certs["front-proxy-client"] = front_proxy.leaf("front-proxy-client", "front-proxy-client")
        self._admin = certs["admin"]
        write_kubeconfig(
            self.kubeconfig, self.server, pki.ca.cert, ADMIN_USER, client=certs["admin"]
        )
        for user in ("controller-manager", "scheduler", "kwok"):
            write_kubeconfig(
                self.work_dir / f"{user}.kubeconfig",
                self.server,
                pki.ca.cert,
                user,
                client=certs[user],
            )
        return certs

    def _start_etcd(self) -> _Process:
        client_url = f"http://{LOOPBACK}:{self.etcd_port}"
        peer_url = f"http://{LOOPBACK}:{self.etcd_peer_port}"
        # Plain HTTP is acceptable only because etcd listens on loopback alone.
        return self._spawn(
            "etcd",
            [
                "--name=slotune",
                f"--data-dir={self.work_dir / 'etcd'}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=slotune={peer_url}",
                "--initial-cluster-state=new",
                # Throw-away data: fsync only slows every write the tests make.
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
        )

    def _etcd_healthy(self) -> bool:
        url = f"http://{LOOPBACK}:{self.etcd_port}/health"
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(json.load(response).get("health") == "true")

    def _start_apiserver(self, certs: dict[str, KeyPair]) -> _Process:
        assert self._pki is not None
        sa = certs["service-account"]
        return self._spawn(
            "kube-apiserver",
            [
                f"--etcd-servers=http://{LOOPBACK}:{self.etcd_port}",
                f"--bind-address={LOOPBACK}",
                f"--advertise-address={LOOPBACK}",
                f"--secure-port={self.apiserver_port}",
                f"--cert-dir={self.work_dir / 'apiserver'}",
                f"--tls-cert-file={certs['apiserver'].cert}",
                f"--tls-private-key-file={certs['apiserver'].key}",
                f"--client-ca-file={self._pki.ca.cert}",
                # Node is there for parity with real clusters (kubelet identities); RBAC is what
                # the operator's ServiceAccount is judged by.
                "--authorization-mode=Node,RBAC",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={sa.cert}",
                f"--service-account-signing-key-file={sa.key}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                # The `kubernetes` Service would get 127.0.0.1 as its endpoint, which Endpoints
                # validation rejects (loopback), so the reconciler would log an error every 10s.
                # Nothing in this cluster reaches the apiserver through that Service anyway.
                "--endpoint-reconciler-type=none",
                f"--requestheader-client-ca-file={certs['front-proxy-ca'].cert}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={certs['front-proxy-client'].cert}",
                f"--proxy-client-key-file={certs['front-proxy-client'].key}",
                "--allow-privileged=true",
                "--profiling=false",
                "--event-ttl=1h",
                *self._audit_args(),
                *self.extra_apiserver_args,
            ],
        )

    def _audit_args(self) -> list[str]:
        if not self.audit:
            return []
        policy = self.work_dir / "audit-policy.yaml"
        policy.write_text(yaml.safe_dump(_AUDIT_POLICY, sort_keys=False))
        return [
            f"--audit-policy-file={policy}",
            f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json",
            # Blocking: each event is written before the response goes out, so a test can
            # count a controller's writes right after the controller acted.
            "--audit-log-mode=blocking",
            "--audit-log-maxbackup=1",
            "--audit-log-maxsize=200",
        ]

    def _start_controller_manager(self, certs: dict[str, KeyPair]) -> _Process:
        assert self._pki is not None
        kubeconfig = self.work_dir / "controller-manager.kubeconfig"
        return self._spawn(
            "kube-controller-manager",
            [
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                f"--bind-address={LOOPBACK}",
                f"--secure-port={self.controller_manager_port}",
                f"--cert-dir={self.work_dir / 'controller-manager'}",
                # Signs the tokens the serviceaccount controllers hand out and the GC and other
                # controllers use, each under its own ServiceAccount as in a real cluster.
                f"--service-account-private-key-file={certs['service-account'].key}",
                "--use-service-account-credentials=true",
                f"--root-ca-file={self._pki.ca.cert}",
                f"--cluster-signing-cert-file={self._pki.ca.cert}",
                f"--cluster-signing-key-file={self._pki.ca.key}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                # One instance: skipping the election saves its lease wait on every start.
                "--leader-elect=false",
            ],
        )

    def _start_scheduler(self, certs: dict[str, KeyPair]) -> _Process:
        kubeconfig = self.work_dir / "scheduler.kubeconfig"
        return self._spawn(
            "kube-scheduler",
            [
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                f"--bind-address={LOOPBACK}",
                f"--secure-port={self.scheduler_port}",
                f"--cert-dir={self.work_dir / 'scheduler'}",
                "--leader-elect=false",
            ],
        )

    def _start_kwok(self, certs: dict[str, KeyPair]) -> _Process:
        stages = self.work_dir / "kwok-stages.yaml"
        stages.write_text(kwok.stages_yaml(self.pod_start_delay, self.pod_ready_delay))
        home = self.work_dir / "kwok-home"
        home.mkdir(exist_ok=True)
        # kwok also loads ~/.kwok/kwok.yaml when it exists: a private HOME keeps a user's own
        # kwok settings out of the tests.
        env = {**os.environ, "HOME": str(home)}
        return self._spawn(
            "kwok",
            [
                f"--kubeconfig={self.work_dir / 'kwok.kubeconfig'}",
                f"--config={stages}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={kwok.KWOK_NODE_SELECTOR}",
                # kwok renews each fake node's Lease like a kubelet, so the node-lifecycle
                # controller keeps them Ready (40s is kubelet's default).
                "--node-lease-duration-seconds=40",
                f"--cidr={POD_CIDR}",
                # Its healthz server; also where logs/exec would be served. Loopback only.
                f"--server-address={LOOPBACK}:{self.kwok_port}",
            ],
            env=env,
        )

    def _kwok_healthy(self) -> bool:
        url = f"http://{LOOPBACK}:{self.kwok_port}/healthz"
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)

    def _ssl_context(self, admin: bool) -> ssl.SSLContext:
        if admin:
            assert self._pki is not None and self._admin is not None
            ctx = ssl.create_default_context(cafile=str(self._pki.ca.cert))
            ctx.load_cert_chain(str(self._admin.cert), str(self._admin.key))
            return ctx
        # controller-manager and scheduler serve self-signed certificates of their own; these
        # health checks go to loopback ports this object just chose, so skipping
        # verification exposes nothing.
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def _https_ok(self, path: str, port: int | None = None, admin: bool = False) -> bool:
        url = f"https://{LOOPBACK}:{port or self.apiserver_port}{path}"
        ctx = self._ssl_context(admin)
        try:
            with urllib.request.urlopen(url, timeout=3, context=ctx) as response:
                return bool(response.status == 200)
        except urllib.error.HTTPError:
            return False

    def _default_service_account_exists(self) -> bool:
        return self._get_json("/api/v1/namespaces/default/serviceaccounts/default") is not None

    def _get_json(self, path: str) -> Any:
        ctx = self._ssl_context(admin=True)
        try:
            with urllib.request.urlopen(self.server + path, timeout=5, context=ctx) as response:
                return json.load(response)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    # -- using it --------------------------------------------------------------------------

    def api_client(self) -> Any:
        """A `kubernetes.client.ApiClient` authenticated as the cluster admin."""
        return new_api_client(self.kubeconfig)

    def kubectl(self, *args: str, check: bool = True, input_: str | None = None) -> str:
        """Run kubectl against this cluster as admin and return its stdout."""
        # The kubectl built with the control plane matches its version; PATH's is a fallback.
        built = self.bin_dir / "kubectl"
        exe = str(built) if built.is_file() else shutil.which("kubectl")
        if exe is None:
            raise ControlPlaneError("kubectl is not built and not on PATH")
        proc = subprocess.run(
            [exe, f"--kubeconfig={self.kubeconfig}", *args],
            input=input_,
            capture_output=True,
            text=True,
            check=False,
        )
        if check and proc.returncode != 0:
            raise ControlPlaneError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc.stdout

    def service_account_kubeconfig(
        self, namespace: str, name: str, path: Path, *, expiration_seconds: int = 24 * 3600
    ) -> Path:
        return service_account_kubeconfig(
            self.kubeconfig, namespace, name, path, expiration_seconds=expiration_seconds
        )

    def add_gpu_nodes(
        self,
        count: int,
        gpus_per_node: int,
        product: str = kwok.DEFAULT_GPU_PRODUCT,
        *,
        name_prefix: str | None = None,
        labels: dict[str, str] | None = None,
        taints: list[dict[str, str]] | None = None,
        wait: bool = True,
        timeout: float = 60.0,
    ) -> list[str]:
        """Create `count` fake GPU nodes managed by kwok; by default wait until they are Ready.

        Names are `<prefix>-<n>`, numbered after any nodes that already carry the prefix, so
        calling this twice adds nodes rather than failing on a name clash.
        """
        from kubernetes import client

        prefix = name_prefix or f"gpu-{product.lower()}"
        api = self.api_client()
        try:
            core = client.CoreV1Api(api)
            nodes = core.list_node().items
            existing = {n.metadata.name for n in nodes if n.metadata}
            used_ips = {
                a.address
                for n in nodes
                for a in ((n.status.addresses if n.status else None) or [])
                if a.type == "InternalIP"
            }
            free_ips = (str(ip) for ip in _NODE_NETWORK.hosts() if str(ip) not in used_ips)
            names: list[str] = []
            index = 0
            while len(names) < count:
                name = f"{prefix}-{index}"
                index += 1
                if name in existing:
                    continue
                # The client takes a plain manifest as well as a V1Node.
                body: Any = kwok.gpu_node(
                    name,
                    gpus_per_node,
                    product,
                    internal_ip=next(free_ips),
                    labels=labels,
                    taints=taints,
                )
                core.create_node(body)
                names.append(name)
            if wait:
                self._wait_nodes_ready(core, names, timeout)
        finally:
            api.close()
        return names

    def delete_nodes(self, names: Sequence[str]) -> None:
        """Delete fake nodes (already gone is fine); their pods are then garbage-collected."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        api = self.api_client()
        try:
            core = client.CoreV1Api(api)
            for name in names:
                try:
                    core.delete_node(name)
                except ApiException as exc:
                    if exc.status != 404:
                        raise
        finally:
            api.close()

    def _wait_nodes_ready(self, core: Any, names: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = set(names)
        while pending:
            for node in core.list_node().items:
                conditions = node.status.conditions or []
                if any(c.type == "Ready" and c.status == "True" for c in conditions):
                    pending.discard(node.metadata.name)
            if not pending:
                return
            if time.monotonic() > deadline:
                kwok_proc = next((p for p in self._processes if p.name == "kwok"), None)
                tail = kwok_proc.tail() if kwok_proc else "(kwok not running)"
                raise ControlPlaneError(
                    f"fake nodes {sorted(pending)} not Ready after {timeout:.0f}s; "
                    f"kwok log:\n{tail}"
                )
            time.sleep(0.3)


@contextlib.contextmanager
def running_control_plane(**kwargs: Any) -> Iterator[ControlPlane]:
    """Build what is missing, then run a control plane for the duration of the block."""
    from slotune.sandbox.build import ensure_binaries

    with ControlPlane(ensure_binaries(), **kwargs) as cp:
        yield cp
