"""Helpers for the end-to-end tests: a sandbox with the operator, LLMServices in it, load in a
thread, polling, and Prometheus' HTTP API."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from slotune.sandbox.loadgen import Arrival, LoadGenerator, Run
from slotune.sandbox.sandbox import Sandbox, SandboxConfig

ROOT = Path(__file__).resolve().parents[2]
GROUP, VERSION, PLURAL = "slotune.dev", "v1alpha1", "llmservices"
MODEL = "meta-llama/Meta-Llama-3-8B-Instruct"
T = TypeVar("T")

# Fast clocks so the loop shows itself in minutes: pods load in 4 s, Prometheus scrapes every
# 2 s, the operator refreshes status every 2 s (tuning every 10 s, the shortest the API allows).
E2E_CONFIG = SandboxConfig(
    gpu_nodes=2, gpus_per_node=4, ready_delay_s=4.0, scrape_interval_s=2.0, drain_timeout_s=10
)


@contextlib.contextmanager
def running_sandbox(
    work_dir: Path, config: SandboxConfig = E2E_CONFIG, *, alert_speedup: float = 1.0
) -> Iterator[Sandbox]:
    """A sandbox with the LLMService CRD and the operator (status every 2 s), stopped by PID."""
    started = time.monotonic()
    with Sandbox(work_dir, config) as sb:
        sb.install_crd()
        sb.start_operator(resync_seconds=2.0, alert_speedup=alert_speedup)
        print(
            f"\nsandbox up in {time.monotonic() - started:.0f}s at {sb.work_dir}", file=sys.stderr
        )
        yield sb


def prometheus_api(url: str, path: str, **params: str) -> Any:
    """`GET {url}/api/v1/{path}?{params}`: the answer's `data`."""
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    with urllib.request.urlopen(f"{url}/api/v1/{path}{query}", timeout=10) as response:
        answer = json.load(response)
    assert answer["status"] == "success", answer
    return answer["data"]


def promql(url: str, query: str) -> list[dict[str, Any]]:
    """An instant query's result: a vector (or a matrix, for a range selector)."""
    return list(prometheus_api(url, "query", query=query)["result"])


def prometheus_alerts(url: str, alertname: str, **labels: str) -> list[dict[str, Any]]:
    """Active (pending or firing) alerts of that name whose labels include `labels`."""
    return [
        alert
        for alert in prometheus_api(url, "alerts")["alerts"]
        if alert["labels"].get("alertname") == alertname
        and all(alert["labels"].get(key) == value for key, value in labels.items())
    ]


def eventually(check: Callable[[], T], timeout: float, what: str, every: float = 1.0) -> T:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            result = check()
        except ApiException as error:
            last = f"ApiException {error.status}"
        else:
            if result:
                return result
            last = result
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


def service_manifest(name: str, namespace: str = "default", **spec: Any) -> dict[str, Any]:
    """The demo example, renamed, with `spec` merged in (nested dicts merge)."""
    obj: dict[str, Any] = yaml.safe_load(
        (ROOT / "examples" / "demo-llama-3-8b-h100.yaml").read_text()
    )
    obj["metadata"] = {"name": name, "namespace": namespace}

    def merge(into: dict[str, Any], new: dict[str, Any]) -> None:
        for key, value in new.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = value

    merge(obj["spec"], spec)
    return obj


class Service:
    """An LLMService in the sandbox, and what the tests read about it."""

    def __init__(self, k8s: Any, manifest: dict[str, Any]) -> None:
        self.custom = client.CustomObjectsApi(k8s)
        self.apps = client.AppsV1Api(k8s)
        self.core = client.CoreV1Api(k8s)
        self.name = manifest["metadata"]["name"]
        self.namespace = manifest["metadata"]["namespace"]
        self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, manifest
        )

    def get(self) -> dict[str, Any]:
        obj: Any = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, self.name
        )
        return dict(obj)

    def status(self) -> dict[str, Any]:
        return dict(self.get().get("status") or {})

    def condition(self, type_: str) -> dict[str, Any]:
        return next((c for c in self.status().get("conditions") or [] if c["type"] == type_), {})

    def patch_spec(self, spec: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, self.name, {"spec": spec}
        )

    def deployment(self) -> Any:
        return self.apps.read_namespaced_deployment(self.name, self.namespace)

    def server_args(self) -> list[str]:
        return list(self.deployment().spec.template.spec.containers[0].args)

    def delete(self) -> None:
        self.custom.delete_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, self.name
        )

    def gone(self) -> bool:
        try:
            self.get()
        except ApiException as error:
            if error.status == 404:
                return True
            raise
        return False


def flag(args: list[str], name: str) -> str | None:
    return next((a.split("=", 1)[1] for a in args if a.startswith(f"{name}=")), None)


class BackgroundLoad:
    """The load generator in a thread of its own, bounded by its arrivals and a deadline."""

    def __init__(self, url: str, arrivals: list[Arrival], max_duration_s: float) -> None:
        self.url = url
        self.arrivals = arrivals
        self.max_duration_s = max_duration_s
        self.run: Run | None = None
        self.origin = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        async def go() -> Run:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            return await LoadGenerator(self.url, MODEL).run(
                self.arrivals, max_duration_s=self.max_duration_s, stop=self._stop
            )

        self.run = asyncio.run(go())

    def __enter__(self) -> BackgroundLoad:
        self.origin = time.monotonic()
        self._thread.start()
        return self

    def elapsed(self) -> float:
        return time.monotonic() - self.origin

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(self.max_duration_s + 30)
