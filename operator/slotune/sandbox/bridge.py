"""The pod bridge: one emulator per Running pod of an LLMService, and a load balancer per service.

kwok's pods run nothing and get 10.x addresses that exist nowhere. The bridge watches them and,
for each pod whose containers have "started", runs ``slotune emulate`` on a free loopback port
with that pod's own engine flags, its model's start-up delay (the pod turns Ready through kwok
after the same delay), and registers it for Prometheus' file-based discovery with exactly the
labels the PodMonitor's relabelings give: ``namespace``, ``pod``, ``llmservice``. When the pod
goes (deleted, terminating, or no longer Running) its emulator leaves the load balancer and the
scrape targets at once, and is stopped by PID after its open requests drain.

Per LLMService, a loopback HTTP load balancer stands in for the Service: it sends each request to
the Ready pod with the fewest requests in flight. ``routes.json`` in the work dir says where
each balancer listens and which emulators are behind it.

Run as its own process (``python -m slotune.sandbox.bridge``); the sandbox starts and stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from slotune.emulator.cli import add_arguments
from slotune.render.render import LLMSERVICE_LABEL
from slotune.sandbox import processes
from slotune.sandbox.pods import (
    PodView,
    emulator_flags,
    model_profile,
    pod_view,
    ready_delay_s,
    translate_args,
)

log = logging.getLogger("slotune.sandbox.bridge")

TARGETS_FILE = "targets.json"
ROUTES_FILE = "routes.json"
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "host",
}


def _write_json(path: Path, data: Any) -> None:
    """Atomically: Prometheus and readers never see half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


@dataclass
class Backend:
    pod: PodView
    port: int
    proc: processes.ManagedProcess
    args: list[str]
    ready: bool = False
    outstanding: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Balancer:
    """Least outstanding requests over the Ready backends of one LLMService."""

    namespace: str
    llmservice: str
    backends: dict[str, Backend] = field(default_factory=dict)  # by pod name
    runner: web.AppRunner | None = None
    port: int = 0
    _turn: itertools.count[int] = field(default_factory=itertools.count)

    def pick(self, exclude: set[str] | frozenset[str] = frozenset()) -> Backend | None:
        ready = [b for b in self.backends.values() if b.ready and b.pod.name not in exclude]
        if not ready:
            return None
        low = min(b.outstanding for b in ready)
        best = [b for b in ready if b.outstanding == low]
        return best[next(self._turn) % len(best)]


class Bridge:
    def __init__(
        self,
        kubeconfig: Path,
        work_dir: Path,
        *,
        ready_delay_s: float,
        stream_interval_s: float = 0.5,
        drain_timeout_s: float = 20.0,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.work_dir = work_dir
        self.default_ready_delay_s = ready_delay_s
        self.stream_interval_s = stream_interval_s
        self.drain_timeout_s = drain_timeout_s
        self.logs = work_dir / "logs" / "emulators"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.targets_path = work_dir / TARGETS_FILE
        self.routes_path = work_dir / ROUTES_FILE
        parser = argparse.ArgumentParser(add_help=False)
        add_arguments(parser)
        self._valued, self._switches = emulator_flags(parser)
        self.balancers: dict[tuple[str, str], Balancer] = {}
        self.pods: dict[tuple[str, str], PodView] = {}
        self._draining: list[tuple[float, processes.ManagedProcess]] = []
        self._session: aiohttp.ClientSession | None = None
        self._events: queue.Queue[tuple[str, dict[str, Any]] | None] = queue.Queue()
        self._stop = threading.Event()

    # -- the watch (a thread: the kubernetes client blocks) ----------------------------------

    def _watch(self, loop: asyncio.AbstractEventLoop, wake: asyncio.Event) -> None:
        from kubernetes import client, config, watch

        api = config.new_client_from_config(config_file=str(self.kubeconfig))
        core = client.CoreV1Api(api)
        try:
            while not self._stop.is_set():
                try:
                    listed = core.list_pod_for_all_namespaces(label_selector=LLMSERVICE_LABEL)
                    self._events.put(
                        (
                            "SYNC",
                            {"items": [api.sanitize_for_serialization(p) for p in listed.items]},
                        )
                    )
                    loop.call_soon_threadsafe(wake.set)
                    stream = watch.Watch().stream(
                        core.list_pod_for_all_namespaces,
                        label_selector=LLMSERVICE_LABEL,
                        resource_version=listed.metadata.resource_version
                        if listed.metadata
                        else None,
                        timeout_seconds=30,
                    )
                    for event in stream:
                        if self._stop.is_set():
                            return
                        obj = api.sanitize_for_serialization(event["object"])
                        self._events.put((str(event["type"]), obj))
                        loop.call_soon_threadsafe(wake.set)
                except Exception as error:  # the apiserver went away, a 410, a timeout: relist
                    if self._stop.is_set():
                        return
                    log.warning("pod watch: %s; listing again", error)
                    time.sleep(1.0)
        finally:
            api.close()

    # -- reacting to pods ------------------------------------------------------------------

    def _apply(self, kind: str, obj: dict[str, Any]) -> None:
        if kind == "SYNC":
            seen: dict[tuple[str, str], PodView] = {}
            for item in obj["items"]:
                view = pod_view(item)
                if view is not None:
                    seen[view.key] = view
            self.pods = seen
            return
        view = pod_view(obj)
        if view is None:
            return
        if kind == "DELETED":
            self.pods.pop(view.key, None)
        else:
            self.pods[view.key] = view

    def _reconcile(self) -> bool:
        """Make the emulators match the pods; True if anything changed."""
        changed = False
        wanted = {k: v for k, v in self.pods.items() if v.serving and v.is_vllm}
        for balancer in list(self.balancers.values()):
            for name, backend in list(balancer.backends.items()):
                view = wanted.get((balancer.namespace, name))
                if view is None or view.uid != backend.pod.uid:
                    del balancer.backends[name]
                    self._retire(backend)
                    changed = True
                elif view.ready != backend.ready:
                    backend.ready = view.ready
                    backend.pod = view
                    changed = True
        for view in wanted.values():
            if view.service_key not in self.balancers:
                self.balancers[view.service_key] = Balancer(*view.service_key)
            balancer = self.balancers[view.service_key]
            if view.name not in balancer.backends:
                balancer.backends[view.name] = self._start_emulator(view)
                changed = True
        for view in self.pods.values():
            if view.serving and not view.is_vllm and view.key not in wanted:
                log.debug("pod %s/%s is not vLLM: not emulated", *view.key)
        return changed

    def _start_emulator(self, view: PodView) -> Backend:
        port = processes.free_port()
        started = view.started_at or time.time()
        remaining = ready_delay_s(view, self.default_ready_delay_s) - (time.time() - started)
        # Healthy a moment before kwok marks the pod Ready, as a probe would have seen it.
        delay = max(0.0, remaining - 0.5)
        kept, dropped = translate_args(view.args, self._valued, self._switches)
        args = [
            *kept,
            f"--port={port}",
            f"--model-profile={model_profile(view)}",
            f"--startup-delay={delay:.1f}",
            f"--stream-interval={self.stream_interval_s:g}",
            f"--drain-timeout={self.drain_timeout_s:g}",
        ]
        name = f"{view.namespace}.{view.name}"
        proc = processes.start(
            name, processes.slotune_command("emulate", *args), self.logs / f"{name}.log"
        )
        log.info(
            "pod %s/%s: emulator pid %s on 127.0.0.1:%d (%s)%s",
            view.namespace,
            view.name,
            proc.pid,
            port,
            " ".join(kept[1:]),
            f"; dropped {' '.join(dropped)}" if dropped else "",
        )
        return Backend(view, port, proc, args, ready=view.ready)

    def _retire(self, backend: Backend) -> None:
        log.info(
            "pod %s/%s gone: stopping emulator pid %s",
            backend.pod.namespace,
            backend.pod.name,
            backend.proc.pid,
        )
        backend.proc.signal(signal.SIGTERM)
        self._draining.append((time.monotonic() + self.drain_timeout_s + 5, backend.proc))

    def _reap(self) -> None:
        now = time.monotonic()
        still: list[tuple[float, processes.ManagedProcess]] = []
        for deadline, proc in self._draining:
            if not proc.running():
                proc.wait(0)
            elif now > deadline:
                proc.signal(signal.SIGKILL)
                proc.wait(2)
            else:
                still.append((deadline, proc))
        self._draining = still

    # -- outputs: scrape targets and routes ----------------------------------------------------

    def _backends(self) -> Iterable[Backend]:
        for balancer in self.balancers.values():
            yield from balancer.backends.values()

    def _publish(self) -> None:
        targets = [
            {
                "targets": [f"127.0.0.1:{b.port}"],
                "labels": {
                    "namespace": b.pod.namespace,
                    "pod": b.pod.name,
                    "llmservice": b.pod.llmservice,
                },
            }
            for b in sorted(self._backends(), key=lambda b: b.pod.key)
        ]
        _write_json(self.targets_path, targets)
        routes = {
            f"{ns}/{name}": {
                "url": f"http://127.0.0.1:{bal.port}",
                "backends": [
                    {
                        "pod": b.pod.name,
                        "url": b.url,
                        "pid": b.proc.pid,
                        "ready": b.ready,
                        "outstanding": b.outstanding,
                        "args": b.args,
                    }
                    for b in bal.backends.values()
                ],
            }
            for (ns, name), bal in self.balancers.items()
            if bal.port
        }
        _write_json(self.routes_path, routes)

    # -- the load balancers ----------------------------------------------------------------

    async def _open_balancers(self) -> bool:
        opened = False
        for balancer in self.balancers.values():
            if balancer.runner is None:
                app = web.Application(client_max_size=64 * 1024 * 1024)
                app.router.add_route("*", "/{tail:.*}", self._proxy_handler(balancer))
                runner = web.AppRunner(app, access_log=None, handle_signals=False)
                await runner.setup()
                port = processes.free_port()
                await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
                balancer.runner, balancer.port = runner, port
                log.info("load balancer for %s/%s on 127.0.0.1:%d", *balancer_key(balancer), port)
                opened = True
        return opened

    def _proxy_handler(self, balancer: Balancer) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            assert self._session is not None
            headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
            body = await request.read()
            tried: set[str] = set()
            while True:
                backend = balancer.pick(exclude=tried)
                if backend is None:
                    return web.json_response(
                        {"error": {"message": "no ready replica", "code": 503}}, status=503
                    )
                tried.add(backend.pod.name)
                backend.outstanding += 1
                response: web.StreamResponse | None = None
                try:
                    async with self._session.request(
                        request.method,
                        backend.url + request.rel_url.path_qs,
                        headers=headers,
                        data=body,
                    ) as upstream:
                        # A replica shutting down refuses work before doing any; until the
                        # bridge has seen its pod go, another replica takes the request.
                        if upstream.status == 503 and balancer.pick(exclude=tried) is not None:
                            continue
                        response = web.StreamResponse(
                            status=upstream.status,
                            headers={
                                k: v
                                for k, v in upstream.headers.items()
                                if k.lower() not in _HOP_BY_HOP
                            },
                        )
                        await response.prepare(request)
                        async for chunk in upstream.content.iter_any():
                            await response.write(chunk)
                        await response.write_eof()
                        return response
                except (aiohttp.ClientError, ConnectionResetError) as error:
                    if response is not None:  # mid-stream: the client sees the stream cut
                        return response
                    if balancer.pick(exclude=tried) is not None:
                        continue
                    message = f"upstream {backend.pod.name}: {error}"
                    return web.json_response(
                        {"error": {"message": message, "code": 502}}, status=502
                    )
                finally:
                    backend.outstanding -= 1

        return handle

    # -- main loop -------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
        )
        watcher = threading.Thread(target=self._watch, args=(loop, wake), daemon=True)
        watcher.start()
        self._publish()
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), 1.0)
                wake.clear()
                while True:
                    try:
                        item = self._events.get_nowait()
                    except queue.Empty:
                        break
                    if item is not None:
                        self._apply(*item)
                changed = self._reconcile()
                changed = await self._open_balancers() or changed
                self._reap()
                if changed:
                    self._publish()
                elif int(time.monotonic()) % 5 == 0:
                    self._publish()  # refresh the outstanding counts now and then
        finally:
            self._stop.set()
            await self._shutdown()

    async def _shutdown(self) -> None:
        backends = list(self._backends())
        for balancer in self.balancers.values():
            balancer.backends.clear()
            if balancer.runner is not None:
                await balancer.runner.cleanup()
        procs = [b.proc for b in backends] + [p for _, p in self._draining]
        # Emulators drain open requests on SIGTERM; at shutdown nobody waits for them.
        await asyncio.to_thread(processes.stop_all, procs, 3.0)
        if self._session is not None:
            await self._session.close()
        _write_json(self.targets_path, [])


def balancer_key(balancer: Balancer) -> tuple[str, str]:
    return (balancer.namespace, balancer.llmservice)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m slotune.sandbox.bridge")
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--ready-delay", type=float, required=True)
    parser.add_argument("--stream-interval", type=float, default=0.5)
    parser.add_argument("--drain-timeout", type=float, default=20.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    bridge = Bridge(
        args.kubeconfig,
        args.work_dir,
        ready_delay_s=args.ready_delay,
        stream_interval_s=args.stream_interval,
        drain_timeout_s=args.drain_timeout,
    )

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await bridge.run(stop)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
